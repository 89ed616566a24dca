//! Several sessions append at once: numbers stay dense and the chain valid.

use std::collections::BTreeSet;

use modalis_audit::{Actor, AuditConfig, AuditLog, AuditReader, Entry, Event};
use serde_json::json;
use tempfile::TempDir;

use crate::support::report;

#[test]
fn concurrent_writers_keep_the_chain_dense_and_valid() {
    const THREADS: u64 = 6;
    const COMMANDS: u64 = 150;
    const TELEMETRY: u64 = 400;
    let dir = TempDir::new().expect("tempdir");
    let config = AuditConfig {
        // Small batches and checkpoints so that they happen in the middle of the race.
        telemetry_batch: 32,
        checkpoint_every_records: 500,
        ..AuditConfig::default()
    };
    let log = AuditLog::open_with(dir.path(), "clinic-1", config).expect("open");
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                let session = format!("s{t}");
                let mut seqs = Vec::new();
                for i in 0..COMMANDS {
                    for j in 0..TELEMETRY / COMMANDS + 1 {
                        log.append_telemetry("dev", Some(&session), json!({ "i": i, "j": j }))
                            .expect("telemetry");
                    }
                    let e = Entry::new(
                        Actor::Controller,
                        Event::Command {
                            command_id: format!("{session}-{i}"),
                        },
                    )
                    .session(session.clone());
                    seqs.push(log.append(e).expect("append"));
                }
                seqs
            })
        })
        .collect();
    let mut all = BTreeSet::new();
    for h in handles {
        let seqs = h.join().expect("writer thread");
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one writer's records stay in order"
        );
        all.extend(seqs);
    }
    assert_eq!(
        all.len() as u64,
        THREADS * COMMANDS,
        "no sequence number handed out twice"
    );
    let total = log.flush_pending().expect("flush");
    let per_thread = COMMANDS * (TELEMETRY / COMMANDS + 2);
    assert_eq!(total, THREADS * per_thread);
    log.close().expect("close");

    let r = report(dir.path());
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.records, total);
    assert_eq!(r.confirmed(), total);
    let reader = AuditReader::open(dir.path()).expect("open");
    for (i, rec) in reader.records().enumerate() {
        assert_eq!(rec.expect("record").seq, i as u64);
    }
}
