//! The `modalis` command line: argument definitions and the commands behind them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

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
    /// The end-to-end demo. Until the session runtime lands, it loads every bundled plugin,
    /// runs the conformance checks and prints each plugin's sample plan.
    Demo,
}

/// `modalis plugin ...`
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
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
        Command::Plugin(PluginCommand::Inspect { file, json }) => {
            inspect(&runtime(&cache)?, &file, json)
        }
        Command::Plugin(PluginCommand::Check { file, params }) => {
            check_cmd(&runtime(&cache)?, &file, params.as_deref())
        }
        Command::Audit(cmd) => modalis_audit::cli::run(cmd),
        Command::Demo => demo(&runtime(&cache)?),
    }
}

fn runtime(cache: &Path) -> anyhow::Result<PluginRuntime> {
    PluginRuntime::new(RuntimeConfig::new(cache)).context("starting the plugin runtime")
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

fn demo(rt: &PluginRuntime) -> anyhow::Result<ExitCode> {
    let mut ok = true;
    for a in modalis_plugin_artifacts::FIRST_PARTY {
        let report = check::check_bytes(rt, a.package, a.bytes, None);
        println!("{report}\n");
        ok &= report.passed();
        if let Ok(mut p) = rt.load_bytes(a.package, a.bytes) {
            let sample = p.manifest().sample_params.clone();
            if let Ok(Ok(plan)) = p.plan(&sample, &modalis_sdk::Patient::default()) {
                println!("  sample plan of {}: {} steps", p.label(), plan.steps.len());
                for s in plan.steps.iter().take(6) {
                    println!(
                        "    {:>8} ms +{:>7} ms  {:<6} {:<24} {}",
                        s.offset_ms,
                        s.duration_ms,
                        s.channel,
                        s.site.to_string(),
                        s.label
                    );
                }
                if plan.steps.len() > 6 {
                    println!("    ... {} more", plan.steps.len() - 6);
                }
                for n in &plan.notes {
                    println!("  note: {n}");
                }
                println!();
            }
        }
    }
    println!(
        "{} bundled plugin(s) {}",
        modalis_plugin_artifacts::FIRST_PARTY.len(),
        if ok {
            "passed every check"
        } else {
            "FAILED a check"
        }
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
