//! Every way a plugin can fail, each naming the plugin, the call and the cause.

use std::path::PathBuf;

/// A plugin-runtime failure. `plugin` is the plugin's label: its file name until it has
/// described itself, then `id@version`.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file could not be read.
    #[error("{}: cannot read plugin file: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not WebAssembly at all.
    #[error(
        "{plugin}: not a WebAssembly file (expected the bytes \\0asm at the start); build the plugin with `cargo build --target wasm32-wasip2 --release`"
    )]
    NotWasm {
        /// The plugin.
        plugin: String,
    },
    /// A core module, not a component.
    #[error(
        "{plugin}: is a core WebAssembly module, not a component; plugins must be components built for wasm32-wasip2 with the modalis SDK"
    )]
    CoreModule {
        /// The plugin.
        plugin: String,
    },
    /// wasmtime rejected the component.
    #[error("{plugin}: invalid component: {message}")]
    Invalid {
        /// The plugin.
        plugin: String,
        /// wasmtime's reason.
        message: String,
    },
    /// Built against another version of the contract.
    #[error(
        "{plugin}: built against contract modalis:plugin@{found}, but this host speaks modalis:plugin@{expected}; rebuild it with a modalis-sdk for contract {expected}"
    )]
    ContractVersion {
        /// The plugin.
        plugin: String,
        /// The version it exports.
        found: String,
        /// The version the host speaks.
        expected: String,
    },
    /// Exports no plugin interface at all.
    #[error(
        "{plugin}: does not export modalis:plugin/plugin@{expected}; is it a modalis plugin? (exports: {exports})"
    )]
    NotAPlugin {
        /// The plugin.
        plugin: String,
        /// The version the host speaks.
        expected: String,
        /// What it does export.
        exports: String,
    },
    /// Imports something the sandbox does not provide.
    #[error(
        "{plugin}: imports `{import}`, which the host does not provide; plugins get WASI with an empty context and nothing else"
    )]
    MissingImport {
        /// The plugin.
        plugin: String,
        /// The import's name.
        import: String,
    },
    /// Ran out of fuel.
    #[error(
        "{plugin}: {call}: stopped after exhausting its fuel budget of {fuel} units (an endless or too-expensive computation)"
    )]
    FuelExhausted {
        /// The plugin.
        plugin: String,
        /// The call.
        call: &'static str,
        /// The budget.
        fuel: u64,
    },
    /// Ran past its wall-clock deadline.
    #[error("{plugin}: {call}: stopped at its deadline of {deadline_ms} ms")]
    Deadline {
        /// The plugin.
        plugin: String,
        /// The call.
        call: &'static str,
        /// The deadline.
        deadline_ms: u64,
    },
    /// Tried to grow memory past the cap.
    #[error(
        "{plugin}: {call}: stopped at the memory cap of {cap_bytes} bytes (it asked for {requested_bytes})"
    )]
    MemoryCap {
        /// The plugin.
        plugin: String,
        /// The call.
        call: &'static str,
        /// The cap.
        cap_bytes: usize,
        /// What it asked for.
        requested_bytes: usize,
    },
    /// Any other trap (a panic shows up here, with its message from stderr).
    #[error("{plugin}: {call}: trapped: {message}{}", if stderr.is_empty() { String::new() } else { format!("; plugin stderr: {}", stderr.trim()) })]
    Trap {
        /// The plugin.
        plugin: String,
        /// The call.
        call: &'static str,
        /// wasmtime's trap message.
        message: String,
        /// What the plugin wrote to stderr during the call (bounded).
        stderr: String,
    },
    /// Refused because it kept trapping.
    #[error("{plugin}: quarantined after {failures} failed calls; last failure: {last}")]
    Quarantined {
        /// The plugin.
        plugin: String,
        /// How many.
        failures: u32,
        /// The last failure.
        last: String,
    },
    /// The plugin's parameter schema is not a valid JSON Schema.
    #[error("{plugin}: its parameter schema is not a valid JSON Schema: {message}")]
    BadSchema {
        /// The plugin.
        plugin: String,
        /// The validator's reason, with the location in the schema.
        message: String,
    },
    /// The manifest broke a structural rule.
    #[error("{plugin}: describe() returned an unusable manifest: {message}")]
    BadManifest {
        /// The plugin.
        plugin: String,
        /// What is wrong.
        message: String,
    },
    /// The compile cache could not be used.
    #[error("plugin cache {}: {message}", dir.display())]
    Cache {
        /// The cache directory.
        dir: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Every instance slot of the runtime's pool is taken (each running block with a closed
    /// loop holds one). The controller's capacity, not the plugin's fault: it does not count
    /// towards quarantine.
    #[error(
        "{plugin}: `{call}` could not get a sandbox instance: {message}; every slot of the \
         plugin runtime's pool is in use (each running block keeps one): end a session or \
         raise RuntimeConfig::max_instances"
    )]
    PoolFull {
        /// The plugin.
        plugin: String,
        /// The call.
        call: &'static str,
        /// wasmtime's words, naming the limit that was reached.
        message: String,
    },
    /// The engine could not be set up.
    #[error("plugin runtime: {0}")]
    Engine(String),
}

impl PluginError {
    /// Whether this failure counts towards quarantine (the plugin misbehaved while running).
    pub fn is_runtime_failure(&self) -> bool {
        matches!(
            self,
            PluginError::FuelExhausted { .. }
                | PluginError::Deadline { .. }
                | PluginError::MemoryCap { .. }
                | PluginError::Trap { .. }
        )
    }
}
