//! The `modalis` command line: argument definitions and the commands behind them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::plugin::{PluginRuntime, RuntimeConfig, check};

/// modalis: run combined neuropathy therapy protocols (laser, infrared heat, TENS, laser
/// acupuncture) from sandboxed modality plugins under one safety governor.
#[derive(Debug, Parser)]
#[command(name = "modalis", version, about, long_about = None)]
pub struct Cli {
    /// Where precompiled plugins are cached [default: $XDG_CACHE_HOME/modalis/plugins].
    #[arg(long, global = true, env = "MODALIS_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Work with plugin files: inspect their manifest, check their conformance.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// The tamper-evident audit log: verify, export, tail, print the public key.
    #[command(subcommand)]
    Audit(modalis_audit::cli::AuditCommand),
    /// The end-to-end demo: checks the bundled plugins, starts an embedded broker, simulated
    /// devices and the controller, and runs the example combined neuropathy protocol,
    /// time-compressed, to its end.
    Demo(DemoArgs),
    /// Run a protocol file on real devices (or, with --simulate, on simulated ones).
    Run(RunArgs),
    /// Simulate the devices of a protocol or of device profiles over MQTT.
    Sim(crate::sim::cli::SimArgs),
    /// Print a published JSON Schema (protocol files, device profiles, patient contexts, MQTT
    /// payloads, ...); without NAME, list the names.
    Schema {
        /// The schema, e.g. `protocol` or `mqtt/device-telemetry` (as listed).
        name: Option<String>,
    },
}

/// `modalis demo`
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Time compression: the default plays the 56-minute example protocol in 37 s.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub speed: u32,
    /// The protocol file [default: examples/protocols/dpn-combined.toml].
    #[arg(long, value_name = "FILE")]
    pub protocol: Option<PathBuf>,
    /// Where the audit log goes [default: a new directory under the system temp dir].
    #[arg(long, value_name = "DIR")]
    pub audit_dir: Option<PathBuf>,
    /// Port of the embedded broker on 127.0.0.1 (a free one is used when it is taken).
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// Inject a fault into a simulated device: DEVICE:KIND[=VALUE], KIND one of overheating,
    /// power-drift, electrode-lifting, silent, ignore-stop, ignore-leases. Repeatable.
    #[arg(long = "fault", value_name = "DEVICE:KIND[=VALUE]", value_parser = crate::sim::cli::parse_fault)]
    pub faults: Vec<crate::sim::cli::FaultArg>,
    /// Controller id (the `<controller>` topic level).
    #[arg(long, default_value = crate::DEFAULT_CONTROLLER_ID)]
    pub controller: String,
    #[command(flatten)]
    pub dashboard: DashboardArgs,
}

/// The monitoring dashboard (`examples/dashboard/`).
#[derive(Debug, clap::Args)]
pub struct DashboardArgs {
    /// Serve the monitoring dashboard on 127.0.0.1 while the protocol runs, and print its
    /// address. With the embedded broker the page connects to its WebSockets listener.
    #[arg(long)]
    pub dashboard: bool,
    /// Port of the dashboard on 127.0.0.1 (a free one is used when it is taken).
    #[arg(long, default_value_t = 8090, requires = "dashboard")]
    pub dashboard_port: u16,
    /// The broker's MQTT-over-WebSockets URL for the page, e.g. ws://127.0.0.1:9001 (needed
    /// with --broker; the embedded broker's own listener otherwise).
    #[arg(long, value_name = "URL", requires = "dashboard")]
    pub dashboard_ws: Option<String>,
}

impl DashboardArgs {
    fn options(&self) -> Option<crate::runner::DashboardOptions> {
        self.dashboard.then(|| crate::runner::DashboardOptions {
            port: self.dashboard_port,
            ws_url: self.dashboard_ws.clone(),
        })
    }
}

/// `modalis run`
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The protocol file.
    pub protocol: PathBuf,
    /// An external broker, mqtt://host:port [default: an embedded one on 127.0.0.1:1883].
    #[arg(long, value_name = "URL")]
    pub broker: Option<String>,
    /// Broker user name.
    #[arg(long, requires = "broker")]
    pub username: Option<String>,
    /// Broker password (better from the environment than the command line).
    #[arg(
        long,
        env = "MODALIS_MQTT_PASSWORD",
        hide_env_values = true,
        requires = "username"
    )]
    pub password: Option<String>,
    /// For an mqtts:// broker: the CA that signed its certificate (PEM). Only this CA is
    /// trusted.
    #[arg(long, value_name = "FILE", requires = "broker")]
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM), for a broker that asks for one.
    #[arg(long, value_name = "FILE", requires_all = ["ca_file", "client_key"])]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Who arms and starts the session (recorded in the audit log).
    #[arg(long)]
    pub operator: String,
    /// Arm without asking (the dose report is still printed and audited).
    #[arg(long)]
    pub yes: bool,
    /// Audit log directory.
    #[arg(long, value_name = "DIR", default_value = "modalis-audit")]
    pub audit_dir: PathBuf,
    /// Simulate the protocol's devices instead of driving real ones.
    #[arg(long)]
    pub simulate: bool,
    /// Time compression; only with --simulate (real patients are treated in real time).
    #[arg(long, default_value_t = 1, requires = "simulate", value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub speed: u32,
    /// Controller id (the `<controller>` topic level).
    #[arg(long, default_value = crate::DEFAULT_CONTROLLER_ID)]
    pub controller: String,
    /// A vendor's plugin to load besides the bundled ones; its signature is read from
    /// FILE.sig. Repeatable.
    #[arg(long = "plugin", value_name = "FILE.wasm")]
    pub plugins: Vec<PathBuf>,
    #[command(flatten)]
    pub trust: crate::signing_cli::TrustArgs,
    #[command(flatten)]
    pub dashboard: DashboardArgs,
}

/// `modalis plugin ...`
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Scaffold a plugin crate that builds for wasm32-wasip2 and passes `plugin check` as it
    /// stands: Cargo.toml, parameters, the trait impl, unit tests, example parameters.
    New {
        /// Crate name: lower-case letters, digits, '-' and '_', starting with a letter (e.g.
        /// acme-lllt). The plugin id is the name with '_' as '-'.
        #[arg(value_parser = crate::scaffold::parse_name)]
        name: String,
        /// The modality: photobiomodulation, class-4-laser, infrared-heat, tens,
        /// laser-acupuncture or other. It picks the plan skeleton.
        #[arg(
            long,
            value_name = "KIND",
            default_value = "photobiomodulation",
            value_parser = crate::scaffold::parse_modality
        )]
        modality: modalis_sdk::ModalityKind,
        /// Directory to create; it must not exist [default: ./<NAME>].
        #[arg(long, value_name = "PATH")]
        dir: Option<PathBuf>,
        /// The modalis SDK (the sdk/ directory of a modalis source tree) [default: the one this
        /// binary was built from].
        #[arg(long, value_name = "PATH")]
        sdk: Option<PathBuf>,
    },
    /// Print a plugin's manifest, channels, imports and parameter schema.
    Inspect {
        /// The plugin component (.wasm).
        file: PathBuf,
        /// Print the manifest as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run the conformance checks a vendor can rely on; exits non-zero when any fails.
    Check {
        /// The plugin component (.wasm).
        file: PathBuf,
        /// Parameters to validate and plan with (JSON file) instead of the plugin's sample.
        #[arg(long, value_name = "FILE")]
        params: Option<PathBuf>,
    },
    /// Make a new Ed25519 key for signing plugins.
    Keygen(crate::signing_cli::KeygenArgs),
    /// Sign a plugin: writes FILE.sig beside it.
    Sign(crate::signing_cli::SignArgs),
    /// Check a plugin's signature against a trust store, as the controller will.
    Verify(crate::signing_cli::VerifyArgs),
}

fn default_cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("modalis/plugins");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".cache/modalis/plugins");
    }
    PathBuf::from(".modalis-cache")
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let cache = cli.cache_dir.clone().unwrap_or_else(default_cache_dir);
    match cli.command {
        Command::Plugin(PluginCommand::New {
            name,
            modality,
            dir,
            sdk,
        }) => new_plugin(name, modality, dir, sdk),
        Command::Plugin(PluginCommand::Inspect { file, json }) => {
            inspect(&runtime(&cache)?, &file, json)
        }
        Command::Plugin(PluginCommand::Check { file, params }) => {
            check_cmd(&runtime(&cache)?, &file, params.as_deref())
        }
        Command::Plugin(PluginCommand::Keygen(a)) => crate::signing_cli::keygen(&a),
        Command::Plugin(PluginCommand::Sign(a)) => crate::signing_cli::sign(&a),
        Command::Plugin(PluginCommand::Verify(a)) => crate::signing_cli::verify(&a),
        Command::Audit(cmd) => modalis_audit::cli::run(cmd),
        Command::Demo(args) => demo(&runtime(&cache)?, args, &cache),
        Command::Run(args) => run_cmd(args, &cache),
        Command::Schema { name } => schema_cmd(&cache, name.as_deref()),
        Command::Sim(args) => tokio_runtime()?.block_on(async {
            let cancel = CancellationToken::new();
            crate::shutdown::cancel_on_signals(cancel.clone());
            crate::sim::cli::run(args, cancel).await?;
            Ok(ExitCode::SUCCESS)
        }),
    }
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Runs a protocol to its end; Ctrl-C or SIGTERM stops every source first.
fn run_protocol(opts: crate::runner::RunOptions) -> anyhow::Result<ExitCode> {
    tokio_runtime()?.block_on(async move {
        let cancel = CancellationToken::new();
        crate::shutdown::cancel_on_signals(cancel.clone());
        let ok = crate::runner::run(opts, cancel).await?;
        Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}

fn run_cmd(args: RunArgs, cache: &Path) -> anyhow::Result<ExitCode> {
    let broker = match args.broker {
        None => crate::runner::BrokerChoice::Embedded { port: 1883 },
        Some(url) => crate::runner::BrokerChoice::External {
            url,
            credentials: args.username.map(|username| crate::bus::Credentials {
                username,
                password: args.password.unwrap_or_default(),
            }),
            tls: args.ca_file.map(|ca_file| crate::bus::TlsFiles {
                ca_file,
                client_cert: args.client_cert,
                client_key: args.client_key,
            }),
        },
    };
    let mut plugins = crate::runner::bundled_plugins();
    for p in &args.plugins {
        plugins.push(crate::runner::plugin_from_file(p)?);
    }
    run_protocol(crate::runner::RunOptions {
        protocol: args.protocol,
        broker,
        simulate: args.simulate,
        faults: Default::default(),
        speed: args.speed,
        controller_id: args.controller,
        audit_dir: args.audit_dir,
        cache_dir: cache.to_path_buf(),
        operator: args.operator,
        yes: args.yes,
        plugins,
        plugin_trust: args.trust.policy()?,
        dashboard: args.dashboard.options(),
    })
}

/// The example protocol: from the working directory (a checkout), else from the source tree
/// this binary was built from.
fn example_protocol() -> PathBuf {
    let rel = PathBuf::from("examples/protocols/dpn-combined.toml");
    if rel.is_file() {
        return rel;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/protocols/dpn-combined.toml")
}

fn runtime(cache: &Path) -> anyhow::Result<PluginRuntime> {
    PluginRuntime::new(RuntimeConfig::new(cache)).context("starting the plugin runtime")
}

/// `modalis schema [NAME]`. The bundled plugins are loaded only when their parameter
/// schemas are needed (listing, or a name that is not one of the others).
fn schema_cmd(cache: &Path, name: Option<&str>) -> anyhow::Result<ExitCode> {
    let with_plugins = || -> anyhow::Result<Vec<crate::schemas::SchemaEntry>> {
        Ok(crate::schemas::with_plugins(&runtime(cache)?)?)
    };
    let Some(name) = name else {
        for e in with_plugins()? {
            println!("{}", e.name);
        }
        return Ok(ExitCode::SUCCESS);
    };
    let wanted = crate::schemas::normalise_name(name);
    let mut entries = crate::schemas::all();
    if !entries.iter().any(|e| e.name == wanted) {
        entries = with_plugins()?;
    }
    match entries.iter().find(|e| e.name == wanted) {
        Some(e) => {
            print!("{}", e.text());
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
            eprintln!(
                "error: no schema named {name:?} (expected one of: {})",
                names.join(", ")
            );
            // A usage error, like clap's own.
            Ok(ExitCode::from(2))
        }
    }
}

fn inspect(rt: &PluginRuntime, file: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let p = rt.load_file(file)?;
    let m = p.manifest();
    if json {
        println!("{}", serde_json::to_string_pretty(m)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("plugin    {} {} ({})", m.id, m.version, m.name);
    println!("vendor    {}", m.vendor);
    println!("modality  {}", m.modality);
    println!("contract  modalis:plugin@{}", modalis_sdk::CONTRACT_VERSION);
    println!("sha256    {}", p.wasm_sha256());
    println!("channels");
    for c in &m.channels {
        println!(
            "  {:<12} {:<10} {}  [{}]",
            c.name,
            c.kind.as_str(),
            c.description,
            c.units.join(", ")
        );
    }
    println!("imports (served by an empty WASI context)");
    for i in p.imports() {
        println!("  {i}");
    }
    let schema: serde_json::Value = serde_json::from_str(&m.params_schema)?;
    println!(
        "parameter schema\n{}",
        serde_json::to_string_pretty(&schema)?
    );
    let sample: serde_json::Value = serde_json::from_str(&m.sample_params)?;
    println!(
        "sample parameters\n{}",
        serde_json::to_string_pretty(&sample)?
    );
    Ok(ExitCode::SUCCESS)
}

fn new_plugin(
    name: String,
    modality: modalis_sdk::ModalityKind,
    dir: Option<PathBuf>,
    sdk: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    use crate::scaffold;
    let sdk_given = sdk.is_some();
    let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
    let done = scaffold::create(&scaffold::NewPlugin {
        name: name.clone(),
        modality,
        dir,
        sdk: sdk.unwrap_or_else(scaffold::default_sdk_dir),
    })?;
    println!(
        "Created plugin crate {name} ({modality}) in {}",
        done.dir.display()
    );
    for f in &done.files {
        println!("  {}", f.display());
    }
    println!();
    println!(
        "modalis SDK: {} ({})",
        done.sdk.display(),
        if sdk_given {
            "from --sdk"
        } else {
            "the source tree this modalis was built from; --sdk PATH to change it"
        }
    );
    println!("  a path dependency in Cargo.toml: the SDK is not on crates.io");
    if let Some(lock) = &done.lock_seeded_from {
        println!(
            "Cargo.lock: seeded from {} (the dependency versions modalis is tested with)",
            lock.display()
        );
    }
    match done.example_profile {
        Some(p) => println!(
            "Device profile: the sample plan passes the governor's pre-check with {}",
            done.sdk.parent().unwrap_or(&done.sdk).join(p).display()
        ),
        None => println!(
            "Note: the governor has no safety rules for `{modality}` and refuses device profiles that declare it; \
             choose the closest --modality before you ship (see README.md)"
        ),
    }
    if done.inside_source_tree {
        println!(
            "Note: {} is inside the modalis source tree; it builds there (it is a workspace of its own), \
             but a vendor's plugin belongs in its own repository (--dir PATH)",
            done.dir.display()
        );
    }
    println!();
    println!("Next steps:");
    println!("  cd {}", done.dir.display());
    println!("  cargo test                                      # native unit tests (SDK harness)");
    println!(
        "  cargo build --release --target wasm32-wasip2    # the component (rustup target add wasm32-wasip2 once)"
    );
    println!("  modalis plugin check {}", done.wasm.display());
    println!(
        "The plugin guide: {} (or cargo doc -p modalis-sdk --open, module `guide`)",
        done.sdk.join("PLUGIN-GUIDE.md").display()
    );
    Ok(ExitCode::SUCCESS)
}

fn check_cmd(rt: &PluginRuntime, file: &Path, params: Option<&Path>) -> anyhow::Result<ExitCode> {
    let params = match params {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading parameters {}", p.display()))?,
        ),
        None => None,
    };
    let report = check::check_file(rt, file, params.as_deref());
    println!("{report}");
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn demo(rt: &PluginRuntime, args: DemoArgs, cache: &Path) -> anyhow::Result<ExitCode> {
    let mut ok = true;
    println!("Checking the bundled plugins in the sandbox:");
    for a in modalis_plugin_artifacts::FIRST_PARTY {
        let report = check::check_bytes(rt, a.package, a.bytes, None);
        if report.passed() {
            println!("  {:<20} passed every conformance check", a.package);
        } else {
            println!("{report}");
        }
        ok &= report.passed();
    }
    if !ok {
        println!("A bundled plugin FAILED a check: not running the demo.");
        return Ok(ExitCode::FAILURE);
    }
    println!();
    let mut faults: std::collections::BTreeMap<String, crate::sim::Faults> = Default::default();
    for f in args.faults {
        let device = f.device.clone();
        f.kind.apply(faults.entry(device).or_default());
    }
    let audit_dir = args.audit_dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "modalis-demo-{}-{}",
            std::process::id(),
            crate::bus::payload::wall_clock_ms()
        ))
    });
    run_protocol(crate::runner::RunOptions {
        protocol: args.protocol.unwrap_or_else(example_protocol),
        broker: crate::runner::BrokerChoice::Embedded { port: args.port },
        simulate: true,
        faults,
        speed: args.speed,
        controller_id: args.controller,
        audit_dir,
        cache_dir: cache.to_path_buf(),
        operator: "demo".into(),
        yes: true,
        plugins: crate::runner::bundled_plugins(),
        // The demo runs the bundled plugins, signed with the development key, and says so.
        plugin_trust: crate::controller::PluginTrust::development()?,
        dashboard: args.dashboard.options(),
    })
}
