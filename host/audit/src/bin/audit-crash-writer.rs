//! Test helper for the crash test (`tests/it/crash.rs`): appends records to the audit log in
//! the directory given as the only argument until killed, printing each acknowledged record
//! as it is acknowledged:
//!
//! - `ack <seq> <command_id>` after a write-ahead append returned;
//! - `all <count>` after `flush_pending` returned (every record below `count` is durable).
//!
//! Frequent checkpoints make it likely that the kill lands inside one.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use modalis_audit::{Actor, AuditConfig, AuditLog, Entry, Event};
use serde_json::json;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: audit-crash-writer DIR");
        return ExitCode::from(2);
    };
    match run(std::path::Path::new(&dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("audit-crash-writer: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let config = AuditConfig {
        telemetry_batch: 64,
        telemetry_delay: Duration::from_millis(2),
        checkpoint_every_records: 100,
        checkpoint_interval: Duration::from_millis(20),
        ..AuditConfig::default()
    };
    let log = AuditLog::open_with(dir, "crash-test", config)?;
    let stdout = std::io::stdout();
    for i in 0u64.. {
        for j in 0..3 {
            log.append_telemetry("laser-1", Some("s1"), json!({ "i": i, "j": j, "mw": 500 }))?;
        }
        let id = format!("c{i}");
        let entry = Entry::new(
            Actor::Controller,
            Event::Command {
                command_id: id.clone(),
            },
        )
        .session("s1")
        .device("laser-1")
        .payload(json!({ "i": i, "power_mw": 500 }));
        let seq = log.append(entry)?;
        let mut out = stdout.lock();
        writeln!(out, "ack {seq} {id}")?;
        if i % 8 == 0 {
            let n = log.flush_pending()?;
            writeln!(out, "all {n}")?;
        }
        out.flush()?;
    }
    Ok(())
}
