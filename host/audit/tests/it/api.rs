//! Opening, keys, following and the typed errors of the library API.

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use modalis_audit::{
    Actor, AuditError, AuditLog, AuditReader, Entry, Event, MAX_RECORD_BYTES, Outcome, layout,
};
use serde_json::json;
use tempfile::TempDir;

use crate::support::{
    blocks, entry, key, manual_checkpoints, report, stored, with_sled, write_log,
};

#[test]
fn first_start_creates_a_private_key_and_a_public_one() {
    let dir = TempDir::new().expect("tempdir");
    let log_dir = dir.path().join("audit");
    let log = AuditLog::open(&log_dir, "clinic-1").expect("open");
    let mode = |p| {
        std::fs::metadata(log_dir.join(p))
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(layout::KEY_FILE), 0o600);
    assert_eq!(mode(layout::PUBLIC_KEY_FILE), 0o644);
    assert_eq!(mode(""), 0o700, "the log directory is private");
    let key = log.public_key();
    log.close().expect("close");
    let log = AuditLog::open(&log_dir, "clinic-1").expect("reopen");
    assert_eq!(log.public_key(), key, "the key is kept across starts");
    assert_eq!(modalis_audit::public_key(&log_dir).expect("read"), key);
}

#[test]
fn a_key_readable_by_others_is_refused() {
    let dir = TempDir::new().expect("tempdir");
    AuditLog::open(dir.path(), "clinic-1")
        .expect("open")
        .close()
        .expect("close");
    let key = dir.path().join(layout::KEY_FILE);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = AuditLog::open(dir.path(), "clinic-1").expect_err("refused");
    assert!(
        matches!(err, AuditError::KeyPermissions { mode: 0o644, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

#[test]
fn a_log_belongs_to_one_controller() {
    let dir = TempDir::new().expect("tempdir");
    write_log(dir.path(), 2);
    let err = AuditLog::open(dir.path(), "clinic-2").expect_err("refused");
    assert!(
        matches!(err, AuditError::ControllerMismatch { .. }),
        "{err}"
    );
}

#[test]
fn a_second_writer_process_is_refused_while_one_runs() {
    let dir = TempDir::new().expect("tempdir");
    let log = AuditLog::open(dir.path(), "clinic-1").expect("open");
    let err = AuditLog::open(dir.path(), "clinic-1").expect_err("locked");
    assert!(matches!(err, AuditError::Locked { .. }), "{err}");
    log.close().expect("close");
}

#[test]
fn append_returns_dense_numbers_and_records_read_back_as_written() {
    let dir = TempDir::new().expect("tempdir");
    let log = AuditLog::open_with(dir.path(), "clinic-1", manual_checkpoints()).expect("open");
    let mut written = Vec::new();
    for i in 0..10 {
        let e = entry(i);
        assert_eq!(log.append(e.clone()).expect("append"), i);
        written.push(e);
    }
    log.close().expect("close");
    let reader = AuditReader::open(dir.path()).expect("open");
    for (r, e) in reader.records().zip(&written) {
        let r = r.expect("record");
        assert_eq!(
            (&r.actor, &r.event, &r.outcome),
            (&e.actor, &e.event, &e.outcome)
        );
        assert_eq!(
            (&r.session, &r.device, &r.payload),
            (&e.session, &e.device, &e.payload)
        );
        assert_eq!(r.controller, "clinic-1");
        assert!(r.wall_ms > 1_600_000_000_000);
    }
}

#[test]
fn a_batch_is_written_in_order_and_an_oversized_member_alone_is_refused() {
    let dir = TempDir::new().expect("tempdir");
    let log = AuditLog::open_with(dir.path(), "clinic-1", manual_checkpoints()).expect("open");
    let big = Entry::new(Actor::Controller, Event::DoseReport)
        .payload(json!({ "blob": "x".repeat(MAX_RECORD_BYTES) }));
    let batch = vec![entry(0), entry(1), big, entry(2)];
    let results = log.append_batch(batch);
    assert_eq!(results.len(), 4);
    assert_eq!(results[0].as_ref().ok(), Some(&0));
    assert_eq!(results[1].as_ref().ok(), Some(&1));
    assert!(matches!(results[2], Err(AuditError::TooLarge { .. })));
    assert_eq!(results[3].as_ref().ok(), Some(&2));
    log.close().expect("close");
    let reader = AuditReader::open(dir.path()).expect("open");
    let events: Vec<_> = reader.records().map(|r| r.expect("record").event).collect();
    drop(reader);
    assert_eq!(events, vec![entry(0).event, entry(1).event, entry(2).event]);
    assert!(report(dir.path()).is_ok());
}

#[test]
fn queued_records_keep_their_order_with_write_ahead_ones() {
    let dir = TempDir::new().expect("tempdir");
    let log = AuditLog::open_with(dir.path(), "clinic-1", manual_checkpoints()).expect("open");
    log.append_queued(entry(0)).expect("queued");
    assert_eq!(log.append(entry(1)).expect("append"), 1);
    log.append_queued(entry(2)).expect("queued");
    assert_eq!(log.flush_pending().expect("flush"), 3);
    log.close().expect("close");
    let reader = AuditReader::open(dir.path()).expect("open");
    let events: Vec<_> = reader.records().map(|r| r.expect("record").event).collect();
    drop(reader);
    assert_eq!(events, vec![entry(0).event, entry(1).event, entry(2).event]);
}

#[test]
fn an_oversized_record_is_refused_and_takes_no_number() {
    let dir = TempDir::new().expect("tempdir");
    let log = AuditLog::open(dir.path(), "clinic-1").expect("open");
    let big = Entry::new(Actor::Controller, Event::DoseReport)
        .payload(json!({ "blob": "x".repeat(MAX_RECORD_BYTES) }));
    let err = log.append(big).expect_err("too large");
    assert!(matches!(err, AuditError::TooLarge { .. }), "{err}");
    assert_eq!(log.append(entry(0)).expect("append"), 0);
    log.close().expect("close");
    assert!(report(dir.path()).is_ok());
}

#[test]
fn telemetry_is_written_within_the_batch_delay_and_by_flush_pending() {
    let dir = TempDir::new().expect("tempdir");
    let log = AuditLog::open(dir.path(), "clinic-1").expect("open");
    let mut follow = log.follow(0);
    log.append_telemetry("tens-2", Some("s9"), json!({ "ma": 12.5 }))
        .expect("queued");
    // Nobody flushes: the group commit timer alone writes it.
    let r = follow
        .next_timeout(Duration::from_secs(5))
        .expect("reads")
        .expect("written by the timer");
    assert_eq!(r.event, Event::Telemetry);
    assert_eq!(
        r.actor,
        Actor::Device {
            id: "tens-2".into()
        }
    );
    assert_eq!(r.session.as_deref(), Some("s9"));
    for i in 0..100 {
        log.append_telemetry("tens-2", None, json!({ "i": i }))
            .expect("queued");
    }
    assert_eq!(log.flush_pending().expect("flush"), 101);
    log.close().expect("close");
}

#[test]
fn typed_telemetry_reads_back_as_its_value_and_keeps_its_place() {
    #[derive(serde::Serialize)]
    struct Reading {
        seq: u64,
        channel: &'static str,
        measurement: Measurement,
        lease_id: Option<u64>,
    }
    #[derive(serde::Serialize)]
    #[serde(tag = "kind", content = "value", rename_all = "snake_case")]
    enum Measurement {
        ImpedanceOhm(f64),
    }
    let dir = TempDir::new().expect("tempdir");
    let log = AuditLog::open(dir.path(), "clinic-1").expect("open");
    let reading = Reading {
        seq: 7,
        channel: "ch1",
        measurement: Measurement::ImpedanceOhm(1234.5),
        lease_id: None,
    };
    log.append(entry(0)).expect("write-ahead record");
    log.append_telemetry_typed("tens-2", Some("s9"), &reading)
        .expect("queued");
    log.append_queued(entry(5)).expect("queued record");
    log.append_telemetry("tens-2", Some("s9"), json!({ "seq": 8 }))
        .expect("queued");
    assert_eq!(log.flush_pending().expect("flush"), 4);
    // A payload serde cannot write is refused at the call, not lost in the writer.
    let bad: std::collections::HashMap<(u8, u8), u8> = [((1, 2), 3)].into();
    assert!(matches!(
        log.append_telemetry_typed("tens-2", None, &bad),
        Err(AuditError::Encode(_))
    ));
    log.close().expect("close");

    let records: Vec<_> = AuditReader::open(dir.path())
        .expect("reader")
        .records()
        .collect::<Result<_, _>>()
        .expect("records read back");
    let kinds: Vec<_> = records.iter().map(|r| (r.seq, r.event.kind())).collect();
    assert_eq!(
        kinds,
        vec![
            (0, "command"),
            (1, "telemetry"),
            (2, "command"),
            (3, "telemetry")
        ],
        "{records:#?}"
    );
    let typed = &records[1];
    assert_eq!(
        typed.actor,
        Actor::Device {
            id: "tens-2".into()
        }
    );
    assert_eq!(typed.session.as_deref(), Some("s9"));
    assert_eq!(typed.device.as_deref(), Some("tens-2"));
    assert_eq!(typed.outcome, Outcome::Ok);
    assert_eq!(
        typed.payload,
        serde_json::to_value(&reading).expect("the same reading as a Value"),
    );
    assert_eq!(
        typed.payload,
        json!({"seq": 7, "channel": "ch1", "measurement": {"kind": "impedance_ohm", "value": 1234.5}, "lease_id": null})
    );
    let report = report(dir.path());
    assert_eq!(report.problem, None);
    assert_eq!(report.records, 4);
}

#[test]
fn follow_sees_records_as_they_are_appended() {
    let dir = TempDir::new().expect("tempdir");
    let log = AuditLog::open(dir.path(), "clinic-1").expect("open");
    log.append(entry(0)).expect("append");
    let mut follow = log.follow(0);
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for i in 1..5 {
                std::thread::sleep(Duration::from_millis(10));
                log.append(entry(i).outcome(Outcome::Ok)).expect("append");
            }
        })
    };
    for seq in 0..5 {
        let r = follow
            .next_timeout(Duration::from_secs(5))
            .expect("reads")
            .expect("arrives");
        assert_eq!(r.seq, seq);
    }
    writer.join().expect("writer");
    assert!(
        follow
            .next_timeout(Duration::from_millis(50))
            .expect("reads")
            .is_none()
    );
    log.close().expect("close");
}

#[test]
fn appends_after_close_fail_with_closed() {
    let dir = TempDir::new().expect("tempdir");
    let log = AuditLog::open(dir.path(), "clinic-1").expect("open");
    let other = log.clone();
    log.close().expect("close");
    let err = other.append(entry(0)).expect_err("closed");
    assert!(matches!(err, AuditError::Closed), "{err}");
}

#[test]
fn periodic_checkpoints_follow_the_record_count() {
    let dir = TempDir::new().expect("tempdir");
    let config = modalis_audit::AuditConfig {
        checkpoint_every_records: 10,
        ..manual_checkpoints()
    };
    let log = AuditLog::open_with(dir.path(), "clinic-1", config).expect("open");
    for i in 0..35 {
        log.append(entry(i)).expect("append");
    }
    let cp = log.checkpoint().expect("checkpoint");
    assert_eq!(cp.count, 35);
    assert_eq!(
        log.checkpoint().expect("again"),
        cp,
        "nothing new, no new line"
    );
    drop(log); // dropping the last handle closes the log too
    let r = report(dir.path());
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.checkpoints, 4, "at 10, 20, 30 and the explicit one at 35");
}

#[test]
fn an_injected_full_disk_stays_full_and_loses_nothing_already_written() {
    // The fault knob stands in for a full disk in the controller's tests, so it must behave
    // like one: once a batch fails, a smaller record that would still fit under the limit
    // fails too, and so does the checkpoint; what was written before stays and verifies.
    let dir = TempDir::new().expect("tempdir");
    let config = modalis_audit::AuditConfig {
        fail_writes_after: Some(5),
        ..manual_checkpoints()
    };
    let log = AuditLog::open_with(dir.path(), "clinic-1", config).expect("open");
    for i in 0..3 {
        assert_eq!(log.append(entry(i)).expect("append"), i);
    }
    log.checkpoint().expect("checkpoint before the fault");
    assert_eq!(log.append(entry(3)).expect("still under the limit"), 3);
    let batch = log.append_batch((4..8).map(entry).collect());
    assert!(
        batch.iter().all(|r| matches!(r, Err(AuditError::Write(_)))),
        "{batch:?}"
    );
    let one = log.append(entry(4)).expect_err("the disk is still full");
    assert!(matches!(one, AuditError::Write(_)), "{one}");
    log.append_queued(entry(4)).expect("queued");
    assert!(log.flush_pending().is_err(), "the queued record was lost");
    assert!(
        log.close().is_err(),
        "the closing checkpoint (record 3 is not covered yet) cannot be written"
    );
    let reader = AuditReader::open(dir.path()).expect("open");
    let events: Vec<_> = reader.records().map(|r| r.expect("record").event).collect();
    drop(reader);
    assert_eq!(events, (0..4).map(|i| entry(i).event).collect::<Vec<_>>());
    let r = report(dir.path());
    assert!(r.is_ok(), "{r}");
    assert_eq!((r.confirmed(), r.records), (3, 4), "{r}");
}

#[test]
fn deferred_batches_return_at_once_and_complete_in_order_on_a_slow_disk() {
    // The controller hands its command batches to the log without waiting and publishes each
    // when its receipt completes: the hand-over must not wait for the disk, and receipts must
    // complete in the order the batches were appended, with the numbers a plain batch gets.
    const COMMIT: Duration = Duration::from_millis(100);
    let dir = TempDir::new().expect("tempdir");
    let config = modalis_audit::AuditConfig {
        slow_writes: Some(COMMIT),
        ..manual_checkpoints()
    };
    let log = AuditLog::open_with(dir.path(), "clinic-1", config).expect("open");
    let handed = std::time::Instant::now();
    let first = log.append_batch_deferred((0..3).map(entry).collect());
    let second = log.append_batch_deferred((3..5).map(entry).collect());
    let took = handed.elapsed();
    assert!(
        took < COMMIT,
        "handing two batches over waited {took:?}, as long as a commit ({COMMIT:?})"
    );
    let (tx, rx) = std::sync::mpsc::channel();
    // Waited for on two threads, the second batch first: each gets its own numbers.
    let t2 = {
        let tx = tx.clone();
        std::thread::spawn(move || tx.send((2, second.wait())))
    };
    let t1 = std::thread::spawn(move || tx.send((1, first.wait())));
    let got: Vec<(u8, Vec<Result<u64, AuditError>>)> = rx.iter().take(2).collect();
    t1.join().expect("thread").expect("sent");
    t2.join().expect("thread").expect("sent");
    let numbers = |k: u8| -> Vec<u64> {
        got.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, r)| r.iter().map(|r| *r.as_ref().expect("written")).collect())
            .unwrap_or_default()
    };
    assert_eq!(numbers(1), vec![0, 1, 2]);
    assert_eq!(numbers(2), vec![3, 4]);
    assert!(
        handed.elapsed() >= COMMIT,
        "the receipts completed before a commit could have"
    );
    // An empty batch completes at once, with nothing.
    assert!(log.append_batch_deferred(Vec::new()).wait().is_empty());
    log.close().expect("close");
    let r = report(dir.path());
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.records, 5);
}

#[test]
fn a_closed_log_is_released_at_once() {
    // sled can hold its lock for a moment after its last handle is gone (a write finishing
    // on a background thread); `close` waits for that, so a reopen right after never fails
    // with "could not acquire lock" (seen once in CI before it did).
    let dir = TempDir::new().expect("tempdir");
    for round in 0..30u64 {
        let log = AuditLog::open_with(dir.path(), "clinic-1", manual_checkpoints())
            .unwrap_or_else(|e| panic!("round {round}: reopen right after close: {e}"));
        for i in 0..20 {
            log.append_telemetry("pads", Some("s-1"), json!({"i": i}))
                .expect("telemetry");
        }
        log.close().expect("close");
        // Straight into sled, as verify or an editing tool would open it.
        with_sled(dir.path(), |records, _| {
            assert!(!records.is_empty());
        });
    }
    let r = report(dir.path());
    assert!(r.is_ok(), "{r}");
}

/// A batch's record numbers, every record written.
fn written(results: Vec<Result<u64, AuditError>>) -> Vec<u64> {
    results.into_iter().map(|r| r.expect("written")).collect()
}

#[test]
fn a_held_batch_waits_out_its_hold_unless_something_needs_a_commit_sooner() {
    // The controller holds the records of stops it has already published for a moment, so
    // their commit does not run beside the stops' delivery. The hold only ever delays those
    // records: order is kept, and a flush or a record someone waits for takes them along.
    let dir = TempDir::new().expect("tempdir");
    let log = AuditLog::open_with(dir.path(), "clinic-1", manual_checkpoints()).expect("open");

    // Alone, a held batch is committed no sooner than its hold.
    const HOLD: Duration = Duration::from_millis(150);
    let handed = std::time::Instant::now();
    let held = log.append_batch_held((0..2).map(entry).collect(), HOLD);
    assert_eq!(written(held.wait()), vec![0, 1]);
    assert!(
        handed.elapsed() >= HOLD,
        "committed after {:?}, inside its {HOLD:?} hold",
        handed.elapsed()
    );

    // A batch someone waits for, appended during a long hold, is committed at once and takes
    // the held records with it, in order.
    const LONG: Duration = Duration::from_secs(60);
    let handed = std::time::Instant::now();
    let held = log.append_batch_held((2..4).map(entry).collect(), LONG);
    let plain = log.append_batch((4..5).map(entry).collect());
    assert_eq!(written(plain), vec![4]);
    assert_eq!(written(held.wait()), vec![2, 3]);
    // So does a flush, and a close.
    let held = log.append_batch_held((5..6).map(entry).collect(), LONG);
    assert_eq!(log.flush_pending().expect("flush"), 6);
    assert!(held.wait().iter().all(Result::is_ok));
    let last = log.append_batch_held((6..7).map(entry).collect(), LONG);
    log.close().expect("close");
    assert!(last.wait().iter().all(Result::is_ok));
    assert!(
        handed.elapsed() < LONG / 2,
        "a {LONG:?} hold held up a commit someone needed: {:?}",
        handed.elapsed()
    );
    let r = report(dir.path());
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.records, 7);
}

/// Follows the open log over `seqs` and checks each record comes with its number. The
/// follower is dropped before returning: it holds the database open, as the log does.
fn follows_in_order(log: &AuditLog, seqs: std::ops::Range<u64>) {
    let mut follow = log.follow(seqs.start);
    for seq in seqs {
        let r = follow
            .next_timeout(Duration::from_secs(5))
            .expect("read")
            .expect("present");
        assert_eq!(r.seq, seq);
    }
}

#[test]
fn telemetry_is_stored_in_blocks_and_read_back_record_by_record() {
    let dir = TempDir::new().expect("tempdir");
    // Telemetry committed only when flushed: one group commit of 600, however slowly this
    // thread runs on a loaded machine.
    let config = modalis_audit::AuditConfig {
        telemetry_delay: Duration::from_secs(600),
        ..manual_checkpoints()
    };
    let log = AuditLog::open_with(dir.path(), "clinic-1", config).expect("open");
    for i in 0..600 {
        log.append_telemetry("laser-1", Some("s0"), json!({ "mw": 498, "i": i }))
            .expect("telemetry");
    }
    log.flush_pending().expect("flush");
    assert_eq!(log.append(entry(0)).expect("append"), 600);
    // In this process, from the open log.
    follows_in_order(&log, 0..601);
    log.close().expect("close");

    with_sled(dir.path(), |records, meta| {
        assert_eq!(meta.get("layout").expect("get").as_deref(), Some(&b"2"[..]));
        let b = blocks(records);
        assert_eq!(b.iter().map(|(_, n)| n).sum::<usize>(), 601);
        assert!(b.len() <= 60, "601 records in {} blocks", b.len());
        // Packed greedily: each block of the commit is full, i.e. the next record would
        // not have fitted; the durable append after it is a block of its own.
        assert_eq!(b.last(), Some(&(600, 1)));
        for pair in b.windows(2) {
            let [(first, n), (next, _)] = pair else {
                unreachable!()
            };
            let size = records
                .get(key(*first))
                .expect("get")
                .expect("present")
                .len();
            assert!(size <= 4 * 1024 || *n == 1, "block {first}: {size} bytes");
            if *next < 600 {
                let following = stored(records, *next).len();
                assert!(
                    size + 4 + following > 4 * 1024,
                    "block {first} ({size} bytes) had room for record {next} ({following})"
                );
            }
        }
    });
    let r = report(dir.path());
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.records, 601);
    let reader = AuditReader::open(dir.path()).expect("reader");
    let seqs: Vec<u64> = reader.records().map(|r| r.expect("record").seq).collect();
    assert_eq!(seqs, (0..601).collect::<Vec<_>>());
}

#[test]
fn a_log_written_one_record_per_key_is_read_and_extended_in_its_own_layout() {
    let dir = TempDir::new().expect("tempdir");
    write_log(dir.path(), 12);
    // Rewritten as modalis wrote logs before blocks: one record per key, no layout key.
    with_sled(dir.path(), |records, meta| {
        let all: Vec<Vec<u8>> = (0..12).map(|s| stored(records, s)).collect();
        records.clear().expect("clear");
        for (s, v) in (0u64..).zip(all) {
            records.insert(key(s), v).expect("insert");
        }
        meta.remove("layout").expect("remove");
    });
    let r = report(dir.path());
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.records, 12);

    let log = AuditLog::open_with(dir.path(), "clinic-1", manual_checkpoints()).expect("reopen");
    assert_eq!(log.previous_run().expect("read").last_seq, Some(11));
    for i in 0..6 {
        log.append_telemetry("laser-1", Some("s0"), json!({ "i": i }))
            .expect("telemetry");
    }
    assert_eq!(log.append(entry(12)).expect("append"), 18);
    follows_in_order(&log, 10..19);
    log.close().expect("close");

    with_sled(dir.path(), |records, meta| {
        assert_eq!(meta.get("layout").expect("get"), None);
        assert_eq!(records.len(), 19, "one key per record");
        for s in 0..19 {
            let v = records.get(key(s)).expect("get").expect("present");
            let body: serde_json::Value = serde_json::from_slice(&v[32..]).expect("hash || json");
            assert_eq!(body["seq"], json!(s));
        }
    });
    let r = report(dir.path());
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.records, 19);
}
