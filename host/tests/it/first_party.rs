//! The first-party plugins, compiled to wasm, through the host runtime.
