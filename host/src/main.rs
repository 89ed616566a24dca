//! `modalis`: the controller's command line. Reads as a start-up script: parse, set up
//! logging, run the command, map the outcome to an exit code.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

// mimalloc, not glibc's malloc: at tens of thousands of readings a second the audit writer
// spent about a quarter of its time in malloc and free (memory allocated on the controller's
// thread is freed on the writer's). The end-to-end benchmark uses the same allocator, so its
// figures are this binary's (BENCHMARKS.md, "Throughput"). It is built without transparent
// huge pages (the `no_thp` feature, see the workspace Cargo.toml): with them the demo's peak
// memory was half as large again.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = modalis::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,modalis=info,modalis::sim=warn,rumqttd=off".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: CI logs and files captured by tests stay readable.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match modalis::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
