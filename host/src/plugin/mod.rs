//! The plugin runtime: the only module in modalis that touches wasmtime.
//!
//! It loads modality plugins (WebAssembly components built for `wasm32-wasip2` against the WIT
//! contract in `sdk/wit`), runs them in a sandbox and converts everything they return into the
//! SDK's types. It knows nothing about MQTT, sled or the governor: what it returns is a
//! proposal, and deciding whether it is safe is someone else's job.
//!
//! The sandbox (settings measured with wasmtime 48, design brief):
//! * WASI with an empty context: no files, no network, no environment, no arguments, closed
//!   stdin, frozen clocks, deterministic randomness; stdout/stderr captured, bounded, into
//!   tracing.
//! * The pooling allocator (instantiation in ~15 us instead of ~100 us), `concurrency_support
//!   (false)` (the async machinery triples plain call cost).
//! * On every call: an epoch deadline, a fuel budget, and a memory cap through `StoreLimits`
//!   with `trap_on_grow_failure(true)` (otherwise a Rust guest dies in its OOM handler with no
//!   word of the limit).
//! * A trap poisons the store: the instance is dropped and the next call gets a fresh one. A
//!   plugin whose calls keep failing is quarantined.

mod cache;
pub mod check;
mod error;
mod output;
pub mod signing;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    StoreLimits, StoreLimitsBuilder,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use modalis_sdk::types::{
    Adjustment, FieldError, Manifest, Patient, PlanError, PlanStep, SessionPlan, TelemetrySample,
};
use modalis_sdk::{CONTRACT_VERSION, conformance};

pub use error::PluginError;
use output::BoundedPipe;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        world: "modality-plugin",
    });
}

modalis_sdk::__wit_conversions!(bindings::modalis::plugin::types);

/// The exported interface name, without and with the version.
const PLUGIN_INTERFACE: &str = "modalis:plugin/plugin";

/// Sandbox limits applied to every call.
#[derive(Debug, Clone)]
pub struct SandboxLimits {
    /// Fuel (roughly, wasm instructions) per call.
    pub fuel_per_call: u64,
    /// Wall-clock deadline per call.
    pub deadline: Duration,
    /// Linear memory a plugin instance may have, in bytes.
    pub memory_bytes: usize,
    /// stdout + stderr bytes kept per call; the rest is counted and dropped.
    pub output_bytes: usize,
    /// Fuel per closed-loop `on-telemetry` call. Far less than a plan: the call runs in the
    /// controller's loop for every reading, so a plugin that hangs there must be cut off
    /// before it delays the other sessions' commands.
    pub telemetry_fuel_per_call: u64,
    /// Wall-clock deadline of an `on-telemetry` call (the backstop for time outside wasm).
    pub telemetry_deadline: Duration,
    /// Failed calls (traps, fuel, deadline, memory) since load or release after which a plugin
    /// is quarantined. Successes in between do not reset the count: a plugin that fails every
    /// other call is as unfit as one that always fails.
    pub quarantine_after: u32,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            // A TENS plan (JSON parse, validate, ~150 steps) takes well under 5 M units; an
            // endless loop burns 100 M units in tens of milliseconds on these machines, which is
            // what keeps a hung plugin under the 100 ms the foundation issue allows.
            fuel_per_call: 100_000_000,
            // The wall-clock backstop for time spent outside wasm code (host calls). Fuel is
            // the CPU bound; this one must tolerate a loaded machine descheduling the thread.
            deadline: Duration::from_millis(500),
            // Plugins are small planners; 64 MiB leaves a hundredfold headroom.
            memory_bytes: 64 << 20,
            output_bytes: 16 << 10,
            quarantine_after: 3,
            // The heat plugin's proportional step uses about 20 thousand units; 2 M is a
            // hundredfold headroom and burns out in about a millisecond when a plugin spins.
            telemetry_fuel_per_call: 2_000_000,
            // Fuel bounds the CPU (2 M units is about a millisecond); this wall-clock backstop
            // must tolerate a loaded machine descheduling the thread, and the first call of a
            // block instantiates the plugin. 20 ms was tried and failed `plugin check` on a
            // busy 2-core machine with a debug build: a false deadline stops a block.
            telemetry_deadline: Duration::from_millis(100),
        }
    }
}

/// How to build a [`PluginRuntime`].
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where precompiled plugins are cached.
    pub cache_dir: PathBuf,
    /// Per-call limits.
    pub limits: SandboxLimits,
    /// Instances the pooling allocator reserves room for.
    pub max_instances: u32,
}

impl RuntimeConfig {
    /// Defaults with the cache in `cache_dir`.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        RuntimeConfig {
            cache_dir: cache_dir.into(),
            limits: SandboxLimits::default(),
            max_instances: 64,
        }
    }

    /// Defaults for tests, with the cache in a (temporary) directory.
    pub fn for_tests(cache_dir: &Path) -> Self {
        Self::new(cache_dir)
    }
}

/// Epoch granularity: deadlines are whole numbers of ticks.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Increments the engine's epoch every tick, so deadlines can fire; stops when dropped.
#[derive(Debug)]
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Result<Self, PluginError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("modalis-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .map_err(|e| PluginError::Engine(format!("cannot start the epoch thread: {e}")))?;
        Ok(EpochTicker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Loads and sandboxes plugins. One per controller; cheap to share by reference.
pub struct PluginRuntime {
    engine: Engine,
    linker: Linker<HostState>,
    cache: cache::ArtifactCache,
    limits: SandboxLimits,
    _ticker: EpochTicker,
}

impl std::fmt::Debug for PluginRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRuntime")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Per-store state: the WASI context and the limits.
struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: CapLimiter,
    stdout: BoundedPipe,
    stderr: BoundedPipe,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// `StoreLimits` plus a note of the growth it refused, so a memory-cap trap can be reported
/// as such rather than as an anonymous trap.
struct CapLimiter {
    inner: StoreLimits,
    cap: usize,
    refused: Option<usize>,
    /// Largest memory size granted, for the conformance report.
    peak: usize,
}

impl ResourceLimiter for CapLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let r = self.inner.memory_growing(current, desired, maximum);
        if matches!(r, Ok(true)) {
            self.peak = self.peak.max(desired);
        } else {
            self.refused = Some(desired);
        }
        r
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// A wall clock stopped at the Unix epoch: plugins must not behave differently by time of day.
struct FrozenWallClock;

impl wasmtime_wasi::HostWallClock for FrozenWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

/// A monotonic clock that never advances, for the same reason.
struct FrozenMonotonicClock;

impl wasmtime_wasi::HostMonotonicClock for FrozenMonotonicClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }

    fn now(&self) -> u64 {
        0
    }
}

/// A pollable that is always ready.
struct ReadyNow;

#[wasmtime_wasi_io::async_trait]
impl wasmtime_wasi_io::poll::Pollable for ReadyNow {
    async fn ready(&mut self) {}
}

/// The WASI version of `wasi:clocks` that wasmtime-wasi 48 defines (it serves older 0.2.x
/// imports through semver matching, so shadowing this one covers them all).
const WASI_CLOCKS: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// Replaces the monotonic clock's timers with ones that are ready at once.
///
/// wasmtime-wasi's timers sleep for real inside host code, where neither the epoch deadline
/// nor fuel can interrupt them: a plugin calling `std::thread::sleep` for an hour would hold
/// the controller's thread for an hour. With the clock frozen and timers ready at once, a
/// sleep returns immediately and a plugin that loops waiting for time to pass burns fuel until
/// its budget stops it.
fn forbid_sleeping(linker: &mut Linker<HostState>) -> Result<(), PluginError> {
    use wasmtime::component::Resource;
    use wasmtime_wasi_io::poll::DynPollable;
    fn ready(table: &mut ResourceTable) -> wasmtime::Result<Resource<DynPollable>> {
        let r = table.push(ReadyNow)?;
        wasmtime_wasi_io::poll::subscribe(table, r)
    }
    let err = |e: wasmtime::Error| PluginError::Engine(format!("shadowing {WASI_CLOCKS}: {e:#}"));
    linker.allow_shadowing(true);
    let mut clocks = linker.instance(WASI_CLOCKS).map_err(err)?;
    clocks
        .func_wrap(
            "subscribe-duration",
            |mut cx: wasmtime::StoreContextMut<'_, HostState>, (_d,): (u64,)| {
                Ok((ready(&mut cx.data_mut().table)?,))
            },
        )
        .map_err(err)?;
    clocks
        .func_wrap(
            "subscribe-instant",
            |mut cx: wasmtime::StoreContextMut<'_, HostState>, (_t,): (u64,)| {
                Ok((ready(&mut cx.data_mut().table)?,))
            },
        )
        .map_err(err)?;
    linker.allow_shadowing(false);
    Ok(())
}

/// A deterministic "random" source: plugins must plan the same way every time.
struct ZeroRng;

impl rand_core::TryRng for ZeroRng {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(0)
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(0)
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Self::Error> {
        dest.fill(0);
        Ok(())
    }
}

impl PluginRuntime {
    /// Builds the engine, the sandboxed linker and opens the compile cache.
    pub fn new(cfg: RuntimeConfig) -> Result<Self, PluginError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.concurrency_support(false);
        config.consume_fuel(true);
        config.epoch_interruption(true);
        config.memory_init_cow(false);
        let mut pool = PoolingAllocationConfig::default();
        // A Rust wasip2 component is a handful of core instances (the program, the WASI
        // adapter and shims), each with at most a memory and a table or two.
        pool.total_component_instances(cfg.max_instances);
        pool.total_core_instances(cfg.max_instances * 8);
        pool.total_memories(cfg.max_instances * 4);
        pool.total_tables(cfg.max_instances * 8);
        pool.total_stacks(cfg.max_instances);
        pool.max_memory_size(cfg.limits.memory_bytes);
        // A fresh instance per plan is the rule (plans are a function of their inputs), so
        // instantiation is on the hot path. Copying the data segments into memory that stays
        // resident between instances, instead of mapping a copy-on-write image whose pages
        // then fault in one by one, took instantiate + plan from 71 to 46 us (TENS sample,
        // `cargo bench -p modalis --bench plugin_runtime`). The first MiB of each used memory
        // slot stays resident (zeroed on reuse): the guest's stack and data segments.
        pool.linear_memory_keep_resident(1 << 20);
        pool.table_keep_resident(64 << 10);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| PluginError::Engine(format!("{e:#}")))?;

        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| PluginError::Engine(format!("linking WASI: {e:#}")))?;
        forbid_sleeping(&mut linker)?;
        // The contract's `types` interface carries only types; define it so components that
        // list it as an import link.
        linker
            .instance(&format!("modalis:plugin/types@{CONTRACT_VERSION}"))
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;

        let cache = cache::ArtifactCache::open(&cfg.cache_dir, &engine)?;
        let ticker = EpochTicker::start(engine.clone())?;
        Ok(PluginRuntime {
            engine,
            linker,
            cache,
            limits: cfg.limits,
            _ticker: ticker,
        })
    }

    /// The limits applied to every call.
    pub fn limits(&self) -> &SandboxLimits {
        &self.limits
    }

    /// Loads a plugin file.
    pub fn load_file(&self, path: &Path) -> Result<Plugin, PluginError> {
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let label = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        self.load_bytes(&label, &bytes)
    }

    /// Loads a plugin from bytes; `label` names it in errors until it has described itself.
    pub fn load_bytes(&self, label: &str, bytes: &[u8]) -> Result<Plugin, PluginError> {
        let wasm_sha256 = hex::encode(Sha256::digest(bytes));
        let component = self.compile_hashed(label, bytes, &wasm_sha256)?.0;
        self.prepare(label, wasm_sha256, component)
    }

    /// Compiles (or loads from the cache) without instantiating. Returns whether the cache hit.
    pub fn compile(&self, label: &str, bytes: &[u8]) -> Result<(Component, bool), PluginError> {
        self.compile_hashed(label, bytes, &hex::encode(Sha256::digest(bytes)))
    }

    fn compile_hashed(
        &self,
        label: &str,
        bytes: &[u8],
        wasm_sha256: &str,
    ) -> Result<(Component, bool), PluginError> {
        if !bytes.starts_with(b"\0asm") {
            return Err(PluginError::NotWasm {
                plugin: label.to_string(),
            });
        }
        // Byte 4..8 is the version/layer field: 0x01 0x00 0x00 0x00 for a core module, layer 1
        // for components.
        if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
            return Err(PluginError::CoreModule {
                plugin: label.to_string(),
            });
        }
        if let Some(c) = self.cache.get(&self.engine, wasm_sha256) {
            return Ok((c, true));
        }
        let artifact =
            self.engine
                .precompile_component(bytes)
                .map_err(|e| PluginError::Invalid {
                    plugin: label.to_string(),
                    message: format!("{e:#}"),
                })?;
        if let Err(e) = self.cache.put(wasm_sha256, &artifact) {
            // A cache we cannot write costs start-up time, not correctness.
            tracing::warn!(error = %e, "plugin not cached");
        }
        // Deserialise what we just produced ourselves (never foreign bytes): the same path the
        // cache takes, so a cold and a warm start run identical code.
        self.cache
            .get(&self.engine, wasm_sha256)
            .map(|c| (c, false))
            .map_or_else(
                || {
                    Component::new(&self.engine, bytes)
                        .map(|c| (c, false))
                        .map_err(|e| PluginError::Invalid {
                            plugin: label.to_string(),
                            message: format!("{e:#}"),
                        })
                },
                Ok,
            )
    }

    fn prepare(
        &self,
        label: &str,
        wasm_sha256: String,
        component: Component,
    ) -> Result<Plugin, PluginError> {
        self.check_exports(label, &component)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| self.import_error(label, &component, e))?;
        let pre = bindings::ModalityPluginPre::new(pre).map_err(|e| PluginError::Invalid {
            plugin: label.to_string(),
            message: format!("{e:#}"),
        })?;
        let imports = component
            .component_type()
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let mut plugin = Plugin {
            imports,
            label: label.to_string(),
            wasm_sha256,
            engine: self.engine.clone(),
            pre,
            limits: self.limits.clone(),
            manifest: None,
            validator: None,
            warm: None,
            last_checked: None,
            telemetry_step: None,
            failures: 0,
            quarantined: None,
            last_call: None,
        };
        let manifest = plugin.describe()?;
        plugin.accept_manifest(manifest)?;
        Ok(plugin)
    }

    /// Checks that the component exports this host's contract version, and names the version
    /// it was built against if not.
    fn check_exports(&self, label: &str, component: &Component) -> Result<(), PluginError> {
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let wanted = format!("{PLUGIN_INTERFACE}@{CONTRACT_VERSION}");
        if exports.contains(&wanted) {
            return Ok(());
        }
        if let Some(other) = exports.iter().find(|e| e.starts_with(PLUGIN_INTERFACE)) {
            let found = other
                .split_once('@')
                .map(|(_, v)| v.to_string())
                .unwrap_or_else(|| "(unversioned)".into());
            return Err(PluginError::ContractVersion {
                plugin: label.to_string(),
                found,
                expected: CONTRACT_VERSION.to_string(),
            });
        }
        Err(PluginError::NotAPlugin {
            plugin: label.to_string(),
            expected: CONTRACT_VERSION.to_string(),
            exports: if exports.is_empty() {
                "none".into()
            } else {
                exports.join(", ")
            },
        })
    }

    /// Turns a link failure into a typed error naming the import the host does not provide.
    fn import_error(&self, label: &str, component: &Component, e: wasmtime::Error) -> PluginError {
        let text = format!("{e:#}");
        let ty = component.component_type();
        let missing = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .find(|n| text.contains(n.as_str()))
            .or_else(|| {
                // wasmtime names the import between backquotes.
                text.split('`').nth(1).map(str::to_string)
            });
        match missing {
            Some(import) => PluginError::MissingImport {
                plugin: label.to_string(),
                import,
            },
            None => PluginError::Invalid {
                plugin: label.to_string(),
                message: text,
            },
        }
    }
}

/// A warm instance kept for cheap repeated calls (closed-loop telemetry).
struct Warm {
    store: Store<HostState>,
    instance: bindings::ModalityPlugin,
}

/// A loaded plugin. Not `Sync`: one caller at a time (each session owns its plugin handle).
pub struct Plugin {
    imports: Vec<String>,
    label: String,
    wasm_sha256: String,
    engine: Engine,
    pre: bindings::ModalityPluginPre<HostState>,
    limits: SandboxLimits,
    manifest: Option<Manifest>,
    /// Shared by the handles [`Plugin::fork`] makes: compiled once per plugin.
    validator: Option<std::sync::Arc<jsonschema::Validator>>,
    warm: Option<Warm>,
    /// The last parameter text that passed the schema check.
    last_checked: Option<String>,
    /// The last step fed to `on-telemetry`, and its contract form.
    telemetry_step: Option<(PlanStep, Arc<bindings::modalis::plugin::types::PlanStep>)>,
    failures: u32,
    quarantined: Option<String>,
    last_call: Option<CallStats>,
}

/// What the last call cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallStats {
    /// Fuel consumed by the call.
    pub fuel_used: u64,
    /// The instance's largest linear memory so far, in bytes.
    pub peak_memory_bytes: usize,
    /// Wall-clock time of a call on a fresh instance, including instantiation. Zero for a
    /// warm call (`on-telemetry`): reading the clock twice was 4 % of such a call.
    pub elapsed: Duration,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("label", &self.label)
            .field("wasm_sha256", &self.wasm_sha256)
            .field("failures", &self.failures)
            .field("quarantined", &self.quarantined)
            .finish_non_exhaustive()
    }
}

/// The calls of the contract, for error messages.
#[derive(Debug, Clone, Copy)]
enum Call {
    Describe,
    Validate,
    Plan,
    OnTelemetry,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::Describe => "describe",
            Call::Validate => "validate",
            Call::Plan => "plan",
            Call::OnTelemetry => "on-telemetry",
        }
    }
}

impl Plugin {
    /// `id@version` once described, else the file label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// SHA-256 of the component's bytes, hex.
    pub fn wasm_sha256(&self) -> &str {
        &self.wasm_sha256
    }

    /// The manifest returned by `describe()` at load time.
    pub fn manifest(&self) -> &Manifest {
        // `prepare` refuses to hand out a plugin without a manifest.
        static EMPTY: std::sync::OnceLock<Manifest> = std::sync::OnceLock::new();
        self.manifest.as_ref().unwrap_or_else(|| {
            EMPTY.get_or_init(|| Manifest {
                id: String::new(),
                name: String::new(),
                version: String::new(),
                vendor: String::new(),
                modality: modalis_sdk::ModalityKind::Other,
                params_schema: String::new(),
                channels: Vec::new(),
                sample_params: String::new(),
            })
        })
    }

    /// The component's imports (all satisfied by the sandbox's empty WASI context).
    pub fn imports(&self) -> &[String] {
        &self.imports
    }

    /// What the last call cost (fuel, memory, time).
    pub fn last_call(&self) -> Option<CallStats> {
        self.last_call
    }

    /// A new handle on the same compiled plugin for one session's closed loop: its own warm
    /// instance (no state shared with other sessions or blocks), its own failure count and
    /// quarantine, and the same manifest and parameter validator.
    pub fn fork(&self) -> Plugin {
        Plugin {
            imports: self.imports.clone(),
            label: self.label.clone(),
            wasm_sha256: self.wasm_sha256.clone(),
            engine: self.engine.clone(),
            pre: self.pre.clone(),
            limits: self.limits.clone(),
            manifest: self.manifest.clone(),
            validator: self.validator.clone(),
            warm: None,
            last_checked: None,
            telemetry_step: None,
            failures: 0,
            quarantined: None,
            last_call: None,
        }
    }

    /// Why the plugin is quarantined, if it is.
    pub fn quarantine_reason(&self) -> Option<&str> {
        self.quarantined.as_deref()
    }

    /// Lifts a quarantine (an operator decision, to be audited by the caller).
    pub fn release_quarantine(&mut self) {
        self.quarantined = None;
        self.failures = 0;
    }

    fn accept_manifest(&mut self, m: Manifest) -> Result<(), PluginError> {
        let label = format!("{}@{}", m.id, m.version);
        let issues = conformance::check_manifest(&m);
        if !issues.is_empty() {
            return Err(PluginError::BadManifest {
                plugin: label,
                message: issues
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            });
        }
        let schema: serde_json::Value =
            serde_json::from_str(&m.params_schema).map_err(|e| PluginError::BadSchema {
                plugin: label.clone(),
                message: e.to_string(),
            })?;
        let validator = compile_schema(&schema).map_err(|message| PluginError::BadSchema {
            plugin: label.clone(),
            message,
        })?;
        self.label = label;
        self.manifest = Some(m);
        self.validator = Some(std::sync::Arc::new(validator));
        Ok(())
    }

    fn new_store(&self) -> Store<HostState> {
        let stdout = BoundedPipe::new(self.limits.output_bytes);
        let stderr = BoundedPipe::new(self.limits.output_bytes);
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .wall_clock(FrozenWallClock)
            .monotonic_clock(FrozenMonotonicClock)
            .secure_random(ZeroRng)
            .insecure_random(ZeroRng)
            .insecure_random_seed(0)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let limiter = CapLimiter {
            inner: StoreLimitsBuilder::new()
                .memory_size(self.limits.memory_bytes)
                .trap_on_grow_failure(true)
                .build(),
            cap: self.limits.memory_bytes,
            refused: None,
            peak: 0,
        };
        let mut store = Store::new(
            &self.engine,
            HostState {
                wasi,
                table: ResourceTable::new(),
                limiter,
                stdout,
                stderr,
            },
        );
        store.limiter(|s| &mut s.limiter);
        store
    }

    /// Runs `f` on an instance with fresh limits. `fresh` forces a new instance (plans are a
    /// pure function of their inputs: no state from earlier calls); otherwise the warm instance
    /// is reused. Any trap discards the instance.
    ///
    /// WASI's blocking output (a plugin writing to stdout or stderr, as a panic does) is built
    /// on wasmtime-wasi's `in_tokio`, which blocks on the ambient tokio runtime and panics on
    /// a thread that is already driving one. Called from inside a multi-thread runtime (the
    /// controller's loop), the call leaves the runtime where it is (`block_in_place`, no
    /// thread hand-off: a warm call stays about a microsecond); from inside a current-thread
    /// runtime, it runs on the plugin worker thread (tens of microseconds for the wake-up).
    fn with_instance<R: Send + 'static>(
        &mut self,
        call: Call,
        fresh: bool,
        f: impl FnOnce(&bindings::ModalityPlugin, &mut Store<HostState>) -> wasmtime::Result<R>
        + Send
        + 'static,
    ) -> Result<R, PluginError> {
        match tokio::runtime::Handle::try_current() {
            Err(_) => return self.with_instance_here(call, fresh, f),
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                return tokio::task::block_in_place(|| self.with_instance_here(call, fresh, f));
            }
            Ok(_) => {}
        }
        // The plugin travels to the worker and back; a fresh handle stands in meanwhile.
        let placeholder = self.fork();
        let mut me = std::mem::replace(self, placeholder);
        let label = me.label.clone();
        match worker::run(move || {
            let r = me.with_instance_here(call, fresh, f);
            (me, r)
        }) {
            Some((me, r)) => {
                *self = me;
                r
            }
            None => Err(PluginError::Engine(format!(
                "{label}: the plugin worker thread is gone"
            ))),
        }
    }

    fn with_instance_here<R>(
        &mut self,
        call: Call,
        fresh: bool,
        f: impl FnOnce(&bindings::ModalityPlugin, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        if let Some(reason) = &self.quarantined {
            return Err(PluginError::Quarantined {
                plugin: self.label.clone(),
                failures: self.failures,
                last: reason.clone(),
            });
        }
        let started = fresh.then(std::time::Instant::now);
        let warm = match (fresh, self.warm.take()) {
            (false, Some(w)) => w,
            _ => {
                let mut store = self.new_store();
                // Instantiation runs start-up code under the plan budget, whatever the call.
                store
                    .set_fuel(self.limits.fuel_per_call)
                    .map_err(|e| PluginError::Engine(e.to_string()))?;
                store.set_epoch_deadline(deadline_ticks(self.limits.deadline));
                let instance = match self.pre.instantiate(&mut store) {
                    Ok(i) => i,
                    Err(e) => {
                        let stderr = self.drain_output(&store, call);
                        return Err(self.classify(call, &mut store, e, stderr));
                    }
                };
                Warm { store, instance }
            }
        };
        let Warm {
            mut store,
            instance,
        } = warm;
        let (fuel, deadline) = self.budget(call);
        store
            .set_fuel(fuel)
            .map_err(|e| PluginError::Engine(e.to_string()))?;
        store.set_epoch_deadline(deadline_ticks(deadline));
        store.data_mut().limiter.refused = None;
        let result = f(&instance, &mut store);
        self.last_call = Some(CallStats {
            fuel_used: fuel.saturating_sub(store.get_fuel().unwrap_or(0)),
            peak_memory_bytes: store.data().limiter.peak,
            elapsed: started.map(|t| t.elapsed()).unwrap_or_default(),
        });
        let stderr = self.drain_output(&store, call);
        match result {
            Ok(v) => {
                if !fresh {
                    self.warm = Some(Warm { store, instance });
                }
                Ok(v)
            }
            Err(e) => {
                // The store is poisoned by a trap: drop it (and the instance with it).
                let err = self.classify(call, &mut store, e, stderr);
                if err.is_runtime_failure() {
                    self.failures += 1;
                    if self.failures >= self.limits.quarantine_after {
                        tracing::error!(plugin = %self.label, failures = self.failures, error = %err, "plugin quarantined");
                        self.quarantined = Some(err.to_string());
                    }
                }
                Err(err)
            }
        }
    }

    /// The fuel and wall-clock deadline of one call.
    fn budget(&self, call: Call) -> (u64, Duration) {
        match call {
            Call::OnTelemetry => (
                self.limits.telemetry_fuel_per_call,
                self.limits.telemetry_deadline,
            ),
            _ => (self.limits.fuel_per_call, self.limits.deadline),
        }
    }

    /// Moves the call's captured output into tracing; returns its stderr for error reports.
    fn drain_output(&self, store: &Store<HostState>, call: Call) -> String {
        let mut stderr = String::new();
        for (stream, pipe) in [
            ("stdout", &store.data().stdout),
            ("stderr", &store.data().stderr),
        ] {
            let (text, dropped) = pipe.take();
            for line in text.lines() {
                tracing::info!(plugin = %self.label, call = call.name(), stream, "{line}");
            }
            if dropped > 0 {
                tracing::warn!(plugin = %self.label, call = call.name(), stream, dropped, "plugin output over the limit was dropped");
            }
            if stream == "stderr" {
                stderr = text;
            }
        }
        stderr
    }

    fn classify(
        &self,
        call: Call,
        store: &mut Store<HostState>,
        e: wasmtime::Error,
        stderr: String,
    ) -> PluginError {
        let plugin = self.label.clone();
        let call_name = call.name();
        if let Some(requested) = store.data().limiter.refused {
            return PluginError::MemoryCap {
                plugin,
                call: call_name,
                cap_bytes: store.data().limiter.cap,
                requested_bytes: requested,
            };
        }
        if let Some(full) = e
            .chain()
            .find_map(|c| c.downcast_ref::<wasmtime::PoolConcurrencyLimitError>())
        {
            return PluginError::PoolFull {
                plugin,
                call: call_name,
                message: full.to_string(),
            };
        }
        match e.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::OutOfFuel) => PluginError::FuelExhausted {
                plugin,
                call: call_name,
                fuel: self.budget(call).0,
            },
            Some(wasmtime::Trap::Interrupt) => PluginError::Deadline {
                plugin,
                call: call_name,
                deadline_ms: u64::try_from(self.budget(call).1.as_millis()).unwrap_or(u64::MAX),
            },
            _ => {
                // Keep the tail: a panic message comes last.
                let stderr = tail(&stderr, 2048);
                PluginError::Trap {
                    plugin,
                    call: call_name,
                    message: format!("{e:#}"),
                    stderr,
                }
            }
        }
    }

    /// Calls `describe()` on a fresh instance.
    pub fn describe(&mut self) -> Result<Manifest, PluginError> {
        self.with_instance(Call::Describe, true, |i, s| {
            i.modalis_plugin_plugin().call_describe(s).map(Into::into)
        })
    }

    /// Checks parameters: first against the plugin's own JSON Schema (in the host, with the
    /// validator compiled once at load), then with the plugin's `validate`. The outer error is
    /// a sandbox failure; the inner one lists the field errors.
    pub fn validate(
        &mut self,
        params_json: &str,
    ) -> Result<Result<(), Vec<FieldError>>, PluginError> {
        if let Err(errors) = self.checked(params_json) {
            return Ok(Err(errors));
        }
        let params = params_json.to_string();
        let r = self.with_instance(Call::Validate, true, move |i, s| {
            i.modalis_plugin_plugin().call_validate(s, &params)
        })?;
        Ok(r.map_err(|v| v.into_iter().map(Into::into).collect()))
    }

    /// Plans a session from parameters already checked by [`Plugin::validate`] (it re-checks
    /// the schema: plans are never built from unchecked input).
    pub fn plan(
        &mut self,
        params_json: &str,
        patient: &Patient,
    ) -> Result<Result<SessionPlan, PlanError>, PluginError> {
        if let Err(errors) = self.checked(params_json) {
            return Ok(Err(PlanError::from_fields(errors)));
        }
        let params = params_json.to_string();
        let patient: bindings::modalis::plugin::types::Patient = patient.clone().into();
        let r = self.with_instance(Call::Plan, true, move |i, s| {
            i.modalis_plugin_plugin().call_plan(s, &params, &patient)
        })?;
        Ok(r.map(Into::into).map_err(Into::into))
    }

    /// Feeds one telemetry sample to the plugin's closed loop (on the warm instance).
    pub fn on_telemetry(
        &mut self,
        step: &PlanStep,
        sample: &TelemetrySample,
    ) -> Result<Vec<Adjustment>, PluginError> {
        // A loop sees the same step for every reading of it: convert it once.
        let lowered = match &self.telemetry_step {
            Some((seen, lowered)) if seen == step => Arc::clone(lowered),
            _ => {
                let lowered = Arc::new(bindings::modalis::plugin::types::PlanStep::from(
                    step.clone(),
                ));
                self.telemetry_step = Some((step.clone(), Arc::clone(&lowered)));
                lowered
            }
        };
        let sample: bindings::modalis::plugin::types::TelemetrySample = sample.clone().into();
        let r = self.with_instance(Call::OnTelemetry, false, move |i, s| {
            i.modalis_plugin_plugin()
                .call_on_telemetry(s, &lowered, &sample)
        })?;
        Ok(r.into_iter().map(Into::into).collect())
    }

    /// [`Plugin::schema_check`], remembering the last parameters that passed: `validate` then
    /// `plan` on the same text (the controller's order) checks it once. The check is a pure
    /// function of the text, so an identical text needs no second look.
    fn checked(&mut self, params_json: &str) -> Result<(), Vec<FieldError>> {
        if self.last_checked.as_deref() == Some(params_json) {
            return Ok(());
        }
        self.schema_check(params_json)?;
        self.last_checked = Some(params_json.to_string());
        Ok(())
    }

    /// Validates parameters against the plugin's JSON Schema.
    pub fn schema_check(&self, params_json: &str) -> Result<(), Vec<FieldError>> {
        let value: serde_json::Value = serde_json::from_str(params_json).map_err(|e| {
            vec![FieldError::new(
                "",
                format!("parameters are not valid JSON: {e}"),
            )]
        })?;
        let Some(v) = &self.validator else {
            return Err(vec![FieldError::new(
                "",
                "plugin has no usable parameter schema",
            )]);
        };
        let errors: Vec<FieldError> = v
            .iter_errors(&value)
            .map(|e| FieldError::new(e.instance_path().to_string(), e.to_string()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// One thread, outside every tokio runtime, for plugin calls made from inside one.
mod worker {
    use std::sync::mpsc;
    use std::sync::{Mutex, OnceLock};

    type Job = Box<dyn FnOnce() + Send>;

    static JOBS: OnceLock<Option<Mutex<mpsc::Sender<Job>>>> = OnceLock::new();

    /// Runs `f` on the worker and waits for it; `None` if the worker could not be started or
    /// `f` panicked there.
    pub(super) fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let jobs = JOBS.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name("modalis-plugin-worker".into())
                .spawn(move || {
                    for job in rx {
                        // A panic in one job must not end the worker for every later caller.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                })
                .ok()
                .map(|_| Mutex::new(tx))
        });
        let jobs = jobs.as_ref()?;
        let (done, wait) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = done.send(f());
        });
        jobs.lock().ok()?.send(job).ok()?;
        wait.recv().ok()
    }
}

fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &s[start..])
}

fn deadline_ticks(d: Duration) -> u64 {
    let tick = EPOCH_TICK.as_millis().max(1);
    u64::try_from(d.as_millis().div_ceil(tick))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Compiles a plugin's schema after checking it against its meta-schema.
pub fn compile_schema(schema: &serde_json::Value) -> Result<jsonschema::Validator, String> {
    if let Err(e) = jsonschema::meta::validate(schema) {
        return Err(format!(
            "at {}: {e}",
            display_pointer(&e.instance_path().to_string())
        ));
    }
    jsonschema::validator_for(schema).map_err(|e| {
        format!(
            "at {}: {e}",
            display_pointer(&e.instance_path().to_string())
        )
    })
}

fn display_pointer(p: &str) -> &str {
    if p.is_empty() { "the schema root" } else { p }
}
