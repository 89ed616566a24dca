//! Throughput of the audit log against sled's own floor, measured in the same run on the
//! same disk:
//!
//! - group-committed telemetry (`append_telemetry` + one `flush_pending`) against raw sled
//!   inserts of values of the same size (target: at least 50,000 records/s);
//! - flushed write-ahead records (`append`, one caller, and four concurrent callers) against
//!   raw sled insert + flush per record (target: at least 2,000 records/s).
//!
//! Each figure is the median of several runs, each in a fresh directory. Run with
//! `cargo bench -p modalis-audit --bench audit`. Set `AUDIT_BENCH_DIR` to measure on another
//! disk (default: the system temporary directory).
//!
//! - reading forward from record 0 as `follow` does, from the sled directory and through a
//!   running controller's live feed, against sled's own scan of the same tree.
//!
//! Memory instead: `AUDIT_BENCH_SOAK=log` (or `=sled`, the floor) runs one long soak at a
//! fixed rate and prints the process's RSS as it goes (`AUDIT_BENCH_SOAK_S`, default 60;
//! `AUDIT_BENCH_SOAK_RATE`, default 40 000 records/s; `AUDIT_BENCH_KEEP=1` keeps the log).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use modalis_audit::{Actor, AuditConfig, AuditLog, AuditReader, Entry, Event, layout};
use serde_json::{Value, json};
use tempfile::TempDir;

const RUNS: usize = 5;
const TELEMETRY: u64 = 100_000;
const COMMANDS: u64 = 3_000;
const WRITERS: u64 = 4;

fn base_dir() -> PathBuf {
    std::env::var_os("AUDIT_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

fn fresh() -> TempDir {
    TempDir::new_in(base_dir()).expect("a temporary directory for the benchmark")
}

fn telemetry_payload(i: u64) -> Value {
    json!({ "t_ms": i * 10, "channel": 1, "power_mw": 498.7, "temp_c": 36.4, "seq": i })
}

fn command(i: u64) -> Entry {
    Entry::new(
        Actor::Plugin {
            id: "lllt".into(),
            wasm_sha256: "ab".repeat(32),
        },
        Event::Command {
            command_id: format!("cmd-{i}"),
        },
    )
    .session("s-1")
    .device("laser-1")
    .payload(json!({ "power_mw": 500, "duration_ms": 30000, "lease_ms": 2000 }))
}

/// Bytes of a typical stored telemetry record, so the raw floor writes values as big.
fn record_size() -> usize {
    // Hash, JSON body envelope (seq, prev, times, controller, actor, ...) and the payload.
    32 + 330 + telemetry_payload(0).to_string().len()
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn sled_raw_insert(n: u64, value: &[u8]) -> f64 {
    let dir = fresh();
    let db = sled::open(dir.path().join("sled")).expect("sled");
    let tree = db.open_tree("records").expect("tree");
    let start = Instant::now();
    for i in 0..n {
        tree.insert(i.to_be_bytes(), value).expect("insert");
    }
    let r = rate(n, start.elapsed());
    db.flush().expect("flush");
    r
}

fn sled_raw_insert_flush(n: u64, value: &[u8]) -> f64 {
    let dir = fresh();
    let db = sled::open(dir.path().join("sled")).expect("sled");
    let tree = db.open_tree("records").expect("tree");
    let start = Instant::now();
    for i in 0..n {
        tree.insert(i.to_be_bytes(), value).expect("insert");
        db.flush().expect("flush");
    }
    rate(n, start.elapsed())
}

fn open(dir: &TempDir) -> AuditLog {
    let config = AuditConfig {
        // Checkpoints as in production would add a handful of fsyncs per run; keep them
        // out of the append figures and let close() write the only one.
        checkpoint_every_records: u64::MAX,
        checkpoint_interval: Duration::from_secs(3600),
        ..AuditConfig::default()
    };
    AuditLog::open_with(dir.path(), "bench", config).expect("open the audit log")
}

fn audit_telemetry(n: u64) -> f64 {
    let dir = fresh();
    let log = open(&dir);
    let start = Instant::now();
    for i in 0..n {
        log.append_telemetry("laser-1", Some("s-1"), telemetry_payload(i))
            .expect("telemetry");
    }
    let written = log.flush_pending().expect("flush");
    let r = rate(n, start.elapsed());
    assert_eq!(written, n);
    log.close().expect("close");
    r
}

/// Records read forward from 0 per second, as `follow` reads them: (through the feed of the
/// open log, from the directory after close, sled's own scan of the records tree).
fn follow_forward(n: u64) -> (f64, f64, f64) {
    let dir = fresh();
    let log = open(&dir);
    for i in 0..n {
        log.append_telemetry("laser-1", Some("s-1"), telemetry_payload(i))
            .expect("telemetry");
    }
    assert_eq!(log.flush_pending().expect("flush"), n);
    let follow_all = || {
        let reader = AuditReader::open(dir.path()).expect("reader");
        let mut follow = reader.follow(0).expect("follow");
        let start = Instant::now();
        for seq in 0..n {
            let r = follow
                .next_timeout(Duration::from_secs(5))
                .expect("a good record")
                .expect("stored");
            assert_eq!(r.seq, seq);
        }
        rate(n, start.elapsed())
    };
    let live = follow_all();
    log.close().expect("close");
    let local = follow_all();
    let db = sled::open(dir.path().join(layout::SLED_DIR)).expect("sled");
    let tree = db.open_tree(layout::RECORDS_TREE).expect("tree");
    let start = Instant::now();
    let bytes: usize = tree.iter().map(|kv| kv.expect("entry").1.len()).sum();
    let floor = rate(n, start.elapsed());
    assert!(bytes as u64 > n);
    (live, local, floor)
}

fn audit_commands(n: u64, writers: u64) -> f64 {
    let dir = fresh();
    let log = open(&dir);
    let start = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..n / writers {
                    log.append(command(w * n + i)).expect("append");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("writer");
    }
    let r = rate(n / writers * writers, start.elapsed());
    log.close().expect("close");
    r
}

/// Milliseconds one checkpoint (fsync of sled's files, signature, fsync'd line) holds the
/// writer, after 1,000 new records.
fn checkpoint_ms() -> f64 {
    let dir = fresh();
    let log = open(&dir);
    let mut times = Vec::new();
    for round in 0..5u64 {
        for i in 0..1_000 {
            log.append_telemetry("laser-1", None, telemetry_payload(round * 1_000 + i))
                .expect("telemetry");
        }
        log.flush_pending().expect("flush");
        let start = Instant::now();
        log.checkpoint().expect("checkpoint");
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    log.close().expect("close");
    median(times)
}

/// Resident memory of this process, MiB (Linux).
fn rss_mib() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096.0 / (1024.0 * 1024.0))
}

/// A reading as the controller audits it (`append_telemetry_typed` of the MQTT payload).
#[derive(serde::Serialize)]
struct Reading<'a> {
    seq: u64,
    ts_ms: u64,
    device: &'a str,
    channel: &'a str,
    measurement: Measurement<'a>,
    delivering: bool,
    lease_id: Option<u64>,
}

#[derive(serde::Serialize)]
struct Measurement<'a> {
    kind: &'a str,
    value: f64,
}

/// Memory over a long run at a fixed rate: `AUDIT_BENCH_SOAK=log` appends telemetry through
/// the audit log, `AUDIT_BENCH_SOAK=sled` inserts values of the same size straight into a
/// sled tree with the log's cache size, group-committed the same way. One per process, so
/// neither inherits the other's freed memory. Prints RSS every few seconds and the growth
/// after the first 10 s (sled's cache fills in the first seconds), per second and per record.
fn soak(kind: &str) {
    let secs: u64 = std::env::var("AUDIT_BENCH_SOAK_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let per_s: u64 = std::env::var("AUDIT_BENCH_SOAK_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40_000);
    const BATCH: u64 = 400;
    let dir = fresh();
    let mut append: Box<dyn FnMut(u64)> = match kind {
        "log" => {
            let log = AuditLog::open(dir.path(), "bench").expect("open the audit log");
            Box::new(move |i| {
                let r = Reading {
                    seq: i,
                    ts_ms: 1_765_000_000_000 + i,
                    device: "tens-2ch-tp00",
                    channel: "ch1",
                    measurement: Measurement {
                        kind: "impedance_ohm",
                        value: 1200.0,
                    },
                    delivering: true,
                    lease_id: Some(3),
                };
                log.append_telemetry_typed("tens-2ch-tp00", Some("throughput-tp00"), &r)
                    .expect("telemetry");
                if i % BATCH == BATCH - 1 {
                    log.flush_pending().expect("flush");
                }
            })
        }
        "sled" => {
            // The audit log's own cache size, not sled's 1 GiB default.
            let db = sled::Config::new()
                .path(dir.path().join("sled"))
                .cache_capacity(modalis_audit::SLED_CACHE_BYTES)
                .open()
                .expect("sled");
            let tree = db.open_tree("records").expect("tree");
            let value = vec![b'x'; record_size()];
            let mut batch = sled::Batch::default();
            Box::new(move |i| {
                batch.insert(&i.to_be_bytes(), value.as_slice());
                if i % BATCH == BATCH - 1 {
                    tree.apply_batch(std::mem::take(&mut batch)).expect("batch");
                    db.flush().expect("flush");
                }
            })
        }
        other => {
            eprintln!("AUDIT_BENCH_SOAK={other}: expected `log` or `sled`");
            std::process::exit(2);
        }
    };
    println!(
        "soak ({kind}): {per_s} records/s for {secs} s, directory {}",
        base_dir().display()
    );
    let start = Instant::now();
    let mut n = 0u64;
    let mut samples: Vec<(f64, u64, f64)> = Vec::new();
    let mut next_sample = 0.0;
    while start.elapsed() < Duration::from_secs(secs) {
        for _ in 0..BATCH {
            append(n);
            n += 1;
        }
        // Hold the rate: sleep while ahead of it.
        let due = Duration::from_secs_f64(n as f64 / per_s as f64);
        if let Some(ahead) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(ahead);
        }
        let t = start.elapsed().as_secs_f64();
        if t >= next_sample {
            if let Some(mib) = rss_mib() {
                samples.push((t, n, mib));
            }
            next_sample += 5.0;
        }
    }
    drop(append);
    // `AUDIT_BENCH_KEEP=1` leaves the log in place, e.g. to measure `modalis audit verify` on
    // a log of a known size.
    if std::env::var_os("AUDIT_BENCH_KEEP").is_some() {
        println!("  kept           {}", dir.keep().display());
    }
    let line: Vec<String> = samples
        .iter()
        .map(|(t, _, mib)| format!("{t:.0} s {mib:.0}"))
        .collect();
    println!("  RSS over time  {} (MiB)", line.join(", "));
    let after = samples.iter().find(|s| s.0 >= 10.0);
    if let (Some(a), Some(b)) = (after, samples.last())
        && b.1 > a.1
    {
        let grew = b.2 - a.2;
        println!(
            "  after 10 s     {:+.1} MiB over {:.0} s ({:+.2} MiB/s), {} records: {:.1} bytes per record",
            grew,
            b.0 - a.0,
            grew / (b.0 - a.0),
            b.1 - a.1,
            grew * 1024.0 * 1024.0 / (b.1 - a.1) as f64
        );
    }
    println!(
        "  achieved       {:.0} records/s",
        n as f64 / start.elapsed().as_secs_f64()
    );
}

fn runs(f: impl Fn() -> f64) -> f64 {
    median((0..RUNS).map(|_| f()).collect())
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing and should
    // not spend a minute here.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if let Ok(kind) = std::env::var("AUDIT_BENCH_SOAK") {
        soak(&kind);
        return;
    }
    let value = vec![b'x'; record_size()];
    println!(
        "audit log benchmark: median of {RUNS} runs, directory {}",
        base_dir().display()
    );

    let raw = runs(|| sled_raw_insert(TELEMETRY, &value));
    let tele = runs(|| audit_telemetry(TELEMETRY));
    println!(
        "telemetry, group-committed: {tele:>10.0} records/s   sled raw insert: {raw:>10.0}/s   ratio {:.2}   target >= 50000/s: {}",
        tele / raw,
        if tele >= 50_000.0 { "met" } else { "MISSED" }
    );

    let reads: Vec<(f64, f64, f64)> = (0..RUNS).map(|_| follow_forward(TELEMETRY)).collect();
    let live = median(reads.iter().map(|r| r.0).collect());
    let local = median(reads.iter().map(|r| r.1).collect());
    let scan = median(reads.iter().map(|r| r.2).collect());
    println!(
        "follow from 0, live feed:   {live:>10.0} records/s   from the directory: {local:>10.0}/s   sled scan of the tree: {scan:>10.0}/s   ratios {:.2} / {:.2}",
        live / scan,
        local / scan
    );

    let raw_flush = runs(|| sled_raw_insert_flush(COMMANDS, &value));
    let one = runs(|| audit_commands(COMMANDS, 1));
    let many = runs(|| audit_commands(COMMANDS, WRITERS));
    println!(
        "write-ahead, 1 writer:      {one:>10.0} records/s   sled insert+flush: {raw_flush:>8.0}/s   ratio {:.2}   target >= 2000/s: {}",
        one / raw_flush,
        if one >= 2_000.0 { "met" } else { "MISSED" }
    );
    println!(
        "write-ahead, {WRITERS} writers:     {many:>10.0} records/s   sled insert+flush: {raw_flush:>8.0}/s   ratio {:.2}   (group commit)",
        many / raw_flush
    );
    println!(
        "checkpoint (fsync sled files + signed fsync'd line): {:.2} ms",
        runs(checkpoint_ms)
    );
}
