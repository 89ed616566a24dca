//! Paths and bytes of the plugins built by this crate's build script.
//!
//! `cargo build` compiles every crate under `plugins/` to `wasm32-wasip2` (see `build.rs`).
//! First-party plugins are also embedded, so the `modalis` binary carries its bundled plugins.
//! Hostile plugins are test fixtures: only their paths are exported.

/// One built plugin.
#[derive(Debug, Clone, Copy)]
pub struct Artifact {
    /// Cargo package name.
    pub package: &'static str,
    /// Absolute path of the `.wasm` component in the build directory.
    pub path: &'static str,
    /// The component's bytes, embedded at build time.
    pub bytes: &'static [u8],
    /// Its signature by the development key (`dev-signing-key.txt`), as a `.wasm.sig`
    /// document.
    pub signature: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
