//! Helpers shared by the test modules.

use std::path::Path;
use std::time::Duration;

use modalis_audit::{
    Actor, AuditConfig, AuditLog, Decision, Entry, Event, OperatorAction, Outcome, Problem,
    VerifyReport, layout, verify,
};
use serde_json::json;

/// A config that never checkpoints on its own, so tests decide when checkpoints happen.
pub fn manual_checkpoints() -> AuditConfig {
    AuditConfig {
        checkpoint_every_records: u64::MAX,
        checkpoint_interval: Duration::from_secs(3600),
        ..AuditConfig::default()
    }
}

/// The `i`-th entry of a varied, realistic sequence of events.
pub fn entry(i: u64) -> Entry {
    let session = format!("s{}", i % 3);
    match i % 5 {
        0 => Entry::new(
            Actor::Plugin {
                id: "lllt".into(),
                wasm_sha256: "ab".repeat(32),
            },
            Event::Command {
                command_id: format!("cmd-{i}"),
            },
        )
        .session(session)
        .device("laser-1")
        .payload(json!({ "power_mw": 500, "duration_ms": 30_000, "i": i })),
        1 => Entry::new(
            Actor::Operator { id: "op-7".into() },
            Event::OperatorAction {
                action: OperatorAction::Arm,
            },
        )
        .session(session),
        2 => Entry::new(
            Actor::Controller,
            Event::GovernorDecision {
                rule: "fluence-per-site".into(),
                decision: Decision::Reject,
            },
        )
        .session(session)
        .outcome(Outcome::Rejected)
        .payload(json!({ "fluence_j_cm2": 9.5, "limit": 8.0 })),
        3 => Entry::new(
            Actor::Operator { id: "op-7".into() },
            Event::Override {
                what: "warm-up skip".into(),
                reason: "patient in a hurry, \"signed\" consent, ümlaut".into(),
            },
        )
        .session(session)
        .outcome(Outcome::Warning),
        _ => Entry::new(
            Actor::Device {
                id: "tens-2".into(),
            },
            Event::CommandAck {
                command_id: format!("cmd-{}", i - 4),
            },
        )
        .device("tens-2"),
    }
}

/// Writes `n` records (durable appends with some telemetry in between) and closes the log,
/// which writes a checkpoint covering all of them. Returns the number of records written.
pub fn write_log(dir: &Path, n: u64) -> u64 {
    let log = AuditLog::open_with(dir, "clinic-1", manual_checkpoints()).expect("open");
    let mut written = 0;
    for i in 0..n {
        if i % 4 == 3 {
            log.append_telemetry("laser-1", Some("s0"), json!({ "mw": 498, "i": i }))
                .expect("telemetry");
        } else {
            log.append(entry(i)).expect("append");
        }
        written += 1;
    }
    log.close().expect("close");
    written
}

/// Runs `f` on the records and meta trees of the log, opened directly with sled (the way
/// an attacker with file access, or a bit flip, would change it).
pub fn with_sled(dir: &Path, f: impl FnOnce(&sled::Tree, &sled::Tree)) {
    let db = sled::open(dir.join(layout::SLED_DIR)).expect("sled open");
    let records = db.open_tree(layout::RECORDS_TREE).expect("records");
    let meta = db.open_tree(layout::META_TREE).expect("meta");
    f(&records, &meta);
    db.flush().expect("flush");
}

pub fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

// The records tree as the README documents it (layout 2): under each key, the 8-byte
// big-endian number of its first record, a block of `u32be length || hash || body` records.
// Written here from the documentation rather than with the crate's code, so that the tests
// also check that the crate writes what the README says.

/// The block holding record `seq`: its first record's number and its records.
fn block_of(records: &sled::Tree, seq: u64) -> Option<(u64, Vec<Vec<u8>>)> {
    let (k, v) = records.range(..=key(seq)).next_back()?.expect("read");
    let first = u64::from_be_bytes(k.as_ref().try_into().expect("8-byte key"));
    let mut out = Vec::new();
    let mut rest = v.as_ref();
    while !rest.is_empty() {
        let (len, tail) = rest.split_at(4);
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        out.push(tail[..len].to_vec());
        rest = &tail[len..];
    }
    (seq < first + out.len() as u64).then_some((first, out))
}

/// Stores `records` as one block under `first`.
pub fn write_block(tree: &sled::Tree, first: u64, records: &[Vec<u8>]) {
    let mut block = Vec::new();
    for r in records {
        block.extend_from_slice(&(r.len() as u32).to_be_bytes());
        block.extend_from_slice(r);
    }
    tree.insert(key(first), block).expect("insert");
}

/// Every block: `(first record's number, its records)`.
pub fn blocks(records: &sled::Tree) -> Vec<(u64, usize)> {
    records
        .iter()
        .map(|e| {
            let (k, _) = e.expect("read");
            let first = u64::from_be_bytes(k.as_ref().try_into().expect("8-byte key"));
            (first, block_of(records, first).expect("a block").1.len())
        })
        .collect()
}

/// Record `seq` as stored (`hash || body`), if present.
pub fn try_stored(records: &sled::Tree, seq: u64) -> Option<Vec<u8>> {
    let (first, block) = block_of(records, seq)?;
    Some(block[(seq - first) as usize].clone())
}

/// Record `seq` as stored (`hash || body`).
pub fn stored(records: &sled::Tree, seq: u64) -> Vec<u8> {
    try_stored(records, seq).unwrap_or_else(|| panic!("record {seq} is present"))
}

/// Replaces the stored bytes of record `seq` (its block rewritten around it).
pub fn replace(records: &sled::Tree, seq: u64, value: Vec<u8>) {
    let (first, mut block) = block_of(records, seq).expect("present");
    block[(seq - first) as usize] = value;
    write_block(records, first, &block);
}

/// Deletes record `seq` the way someone who wants the rest to stay readable would: its block
/// is cut in two around it, the records after it keeping their numbers.
pub fn delete(records: &sled::Tree, seq: u64) {
    let (first, block) = block_of(records, seq).expect("present");
    records.remove(key(first)).expect("remove");
    let at = (seq - first) as usize;
    if at > 0 {
        write_block(records, first, &block[..at]);
    }
    if at + 1 < block.len() {
        write_block(records, seq + 1, &block[at + 1..]);
    }
}

/// Verifies and returns the first problem, if any.
pub fn problem(dir: &Path) -> Option<Problem> {
    report(dir).problem
}

pub fn report(dir: &Path) -> VerifyReport {
    verify(dir).expect("verify could read the log")
}

/// Copies a closed log directory (to tamper with copies of one pristine log).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}
