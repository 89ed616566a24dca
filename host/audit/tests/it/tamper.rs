//! Verification of intact and damaged logs: every kind of damage is reported at the exact
//! sequence number.

use std::io::Write as _;

use modalis_audit::{
    AuditLog, ChainHash, ProblemKind, VerifyOptions, chain_hash, layout, verify_with,
};
use rand::{Rng as _, SeedableRng as _};
use tempfile::TempDir;

use crate::support::{
    blocks, copy_dir, delete, key, manual_checkpoints, problem, replace, report, stored,
    try_stored, with_sled, write_block, write_log,
};

const N: u64 = 24;

fn pristine() -> TempDir {
    let dir = TempDir::new().expect("tempdir");
    write_log(dir.path(), N);
    dir
}

#[test]
fn an_intact_log_verifies() {
    let dir = pristine();
    let r = report(dir.path());
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.records, N);
    assert_eq!(r.confirmed(), N, "close() checkpoints everything");
    assert!(r.unconfirmed().is_empty());
    assert_eq!(r.controller.as_deref(), Some("clinic-1"));
    assert!(r.to_string().ends_with("OK"), "{r}");
}

#[test]
fn flipping_any_byte_of_any_record_names_that_record() {
    let base = pristine();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut cases = 0;
    for seq in 0..N {
        let mut len = 0;
        with_sled(base.path(), |records, _| {
            len = stored(records, seq).len();
        });
        // The stored hash, the first and last body bytes, and a few random ones.
        let mut positions = vec![0, 31, 32, len - 1];
        positions.extend((0..3).map(|_| rng.gen_range(33..len - 1)));
        for pos in positions {
            let case = TempDir::new().expect("tempdir");
            copy_dir(base.path(), case.path());
            with_sled(case.path(), |records, _| {
                let mut v = stored(records, seq);
                v[pos] ^= 0x01;
                replace(records, seq, v);
            });
            let p = problem(case.path()).expect("a flipped byte is detected");
            assert_eq!(p.seq, Some(seq), "byte {pos} of record {seq}: {p}");
            cases += 1;
        }
    }
    assert!(cases >= N * 7);
}

#[test]
fn deleting_a_record_is_a_gap_at_its_number() {
    for seq in [0, 1, 11, N - 2] {
        let dir = pristine();
        with_sled(dir.path(), |records, _| delete(records, seq));
        let p = problem(dir.path()).expect("detected");
        assert_eq!(p.seq, Some(seq), "{p}");
        assert_eq!(
            p.kind,
            ProblemKind::Missing {
                next_present: seq + 1
            }
        );
    }
}

#[test]
fn truncating_the_tail_is_reported_where_it_was_cut() {
    // Only the records removed: the log's own chain head still says N.
    let dir = pristine();
    with_sled(dir.path(), |records, _| {
        for seq in 20..N {
            delete(records, seq);
        }
    });
    let p = problem(dir.path()).expect("detected");
    assert_eq!(p.seq, Some(20), "{p}");
    assert!(
        matches!(
            p.kind,
            ProblemKind::RecordsMissing {
                checkpoint_count: N,
                ..
            }
        ),
        "{p}"
    );

    // Records removed and the chain head rewritten to match: the signed checkpoint catches it.
    let dir = pristine();
    with_sled(dir.path(), |records, meta| {
        let last = stored(records, 16);
        for seq in 17..N {
            delete(records, seq);
        }
        let mut head = 17u64.to_be_bytes().to_vec();
        head.extend_from_slice(&last[..32]);
        meta.insert("head", head).expect("insert");
    });
    let p = problem(dir.path()).expect("detected");
    assert_eq!(p.seq, Some(17), "{p}");
    assert!(
        matches!(
            p.kind,
            ProblemKind::RecordsMissing {
                line: 1,
                checkpoint_count: N
            }
        ),
        "{p}"
    );
}

#[test]
fn a_truncated_tail_without_checkpoint_is_caught_by_the_chain_head() {
    let dir = TempDir::new().expect("tempdir");
    // No checkpoint file at all: the chain head is the only witness.
    write_log(dir.path(), N);
    std::fs::remove_file(dir.path().join(layout::CHECKPOINTS_FILE)).expect("rm");
    with_sled(dir.path(), |records, _| {
        delete(records, N - 1);
    });
    let p = problem(dir.path()).expect("detected");
    assert_eq!(p.seq, Some(N - 1), "{p}");
    assert_eq!(p.kind, ProblemKind::TruncatedTail { head_count: N });
}

/// Rewrites record `from` with a new payload and re-chains every later record and the head,
/// as someone who knows the format but not the signing key would.
fn rewrite_and_rechain(records: &sled::Tree, meta: &sled::Tree, from: u64) {
    let mut prev = if from == 0 {
        ChainHash::GENESIS
    } else {
        let v = stored(records, from - 1);
        ChainHash(v[..32].try_into().expect("32 bytes"))
    };
    let mut seq = from;
    while let Some(v) = try_stored(records, seq) {
        let mut body: serde_json::Value = serde_json::from_slice(&v[32..]).expect("json");
        body["prev"] = serde_json::Value::String(prev.to_hex());
        if seq == from {
            body["payload"] = serde_json::json!({ "power_mw": 50 });
        }
        let bytes = serde_json::to_vec(&body).expect("encode");
        let hash = chain_hash(&prev, &bytes);
        let mut value = hash.0.to_vec();
        value.extend_from_slice(&bytes);
        replace(records, seq, value);
        prev = hash;
        seq += 1;
    }
    let mut head = seq.to_be_bytes().to_vec();
    head.extend_from_slice(&prev.0);
    meta.insert("head", head).expect("insert");
}

#[test]
fn a_consistently_rewritten_log_fails_at_the_checkpoint() {
    let dir = TempDir::new().expect("tempdir");
    let log = AuditLog::open_with(dir.path(), "clinic-1", manual_checkpoints()).expect("open");
    for i in 0..10 {
        log.append(crate::support::entry(i)).expect("append");
    }
    log.checkpoint().expect("checkpoint"); // line 1: 10 records
    for i in 10..N {
        log.append(crate::support::entry(i)).expect("append");
    }
    log.close().expect("close"); // line 2: N records

    let case = TempDir::new().expect("tempdir");
    copy_dir(dir.path(), case.path());
    with_sled(case.path(), |records, meta| {
        rewrite_and_rechain(records, meta, 4)
    });
    let p = problem(case.path()).expect("detected");
    assert_eq!(
        p.seq,
        Some(9),
        "the first checkpoint after the rewrite: {p}"
    );
    assert_eq!(p.kind, ProblemKind::CheckpointMismatch { line: 1 });

    let case = TempDir::new().expect("tempdir");
    copy_dir(dir.path(), case.path());
    with_sled(case.path(), |records, meta| {
        rewrite_and_rechain(records, meta, 15)
    });
    let p = problem(case.path()).expect("detected");
    assert_eq!(p.seq, Some(N - 1), "{p}");
    assert_eq!(p.kind, ProblemKind::CheckpointMismatch { line: 2 });

    // And the controller refuses to append to it.
    let err = AuditLog::open(case.path(), "clinic-1").expect_err("refused");
    assert!(err.to_string().contains("checkpoint head"), "{err}");
}

#[test]
fn a_rolled_back_database_is_detected_and_refused() {
    let dir = TempDir::new().expect("tempdir");
    let backup = TempDir::new().expect("tempdir");
    write_log(dir.path(), 10);
    copy_dir(&dir.path().join(layout::SLED_DIR), backup.path());
    let log = AuditLog::open_with(dir.path(), "clinic-1", manual_checkpoints()).expect("open");
    for i in 10..N {
        log.append(crate::support::entry(i)).expect("append");
    }
    log.close().expect("close");

    let sled_dir = dir.path().join(layout::SLED_DIR);
    std::fs::remove_dir_all(&sled_dir).expect("rm");
    copy_dir(backup.path(), &sled_dir);
    let p = problem(dir.path()).expect("detected");
    assert_eq!(p.seq, Some(10), "{p}");
    assert!(
        matches!(
            p.kind,
            ProblemKind::RecordsMissing {
                line: 2,
                checkpoint_count: N
            }
        ),
        "{p}"
    );

    let err = AuditLog::open(dir.path(), "clinic-1").expect_err("refused");
    assert!(err.to_string().contains("inconsistent"), "{err}");
}

#[test]
fn records_after_the_last_checkpoint_are_unconfirmed_not_bad() {
    // A power loss between two checkpoints looks like this: the last checkpoint line never
    // reached the disk, the records after the previous one may or may not have.
    let dir = TempDir::new().expect("tempdir");
    let log = AuditLog::open_with(dir.path(), "clinic-1", manual_checkpoints()).expect("open");
    for i in 0..10 {
        log.append(crate::support::entry(i)).expect("append");
    }
    log.checkpoint().expect("checkpoint");
    for i in 10..15 {
        log.append(crate::support::entry(i)).expect("append");
    }
    log.close().expect("close");
    let path = dir.path().join(layout::CHECKPOINTS_FILE);
    let text = std::fs::read_to_string(&path).expect("read");
    let first_line = text.lines().next().expect("a line");
    std::fs::write(&path, format!("{first_line}\n")).expect("write");

    let r = report(dir.path());
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.confirmed(), 10);
    assert_eq!(r.unconfirmed(), 10..15);
    assert!(
        r.to_string().contains("unconfirmed: records 10..=14"),
        "{r}"
    );

    // Even if the power loss took those records too, nothing is reported as tampering.
    with_sled(dir.path(), |records, meta| {
        let last = stored(records, 9);
        for seq in 10..15 {
            delete(records, seq);
        }
        let mut head = 10u64.to_be_bytes().to_vec();
        head.extend_from_slice(&last[..32]);
        meta.insert("head", head).expect("insert");
    });
    let r = report(dir.path());
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.records, 10);
}

#[test]
fn a_torn_checkpoint_line_is_ignored_and_cut_off_on_reopen() {
    let dir = pristine();
    let path = dir.path().join(layout::CHECKPOINTS_FILE);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open");
    f.write_all(br#"{"v":1,"controller":"clinic-1","cou"#)
        .expect("write");
    drop(f);
    let r = report(dir.path());
    assert!(r.is_ok(), "{r}");
    assert!(r.torn_checkpoint_line);

    let log = AuditLog::open_with(dir.path(), "clinic-1", manual_checkpoints()).expect("reopen");
    log.append(crate::support::entry(0)).expect("append");
    log.close().expect("close");
    let r = report(dir.path());
    assert!(r.is_ok(), "{r}");
    assert!(!r.torn_checkpoint_line);
    assert_eq!(r.checkpoints, 2);
    assert_eq!(r.confirmed(), N + 1);
}

#[test]
fn a_forged_or_foreign_checkpoint_fails_its_signature() {
    let dir = pristine();
    let path = dir.path().join(layout::CHECKPOINTS_FILE);
    let text = std::fs::read_to_string(&path).expect("read");
    let mut cp: serde_json::Value = serde_json::from_str(text.trim()).expect("json");
    cp["count"] = serde_json::json!(N + 5);
    std::fs::write(&path, format!("{cp}\n")).expect("write");
    let p = problem(dir.path()).expect("detected");
    assert_eq!(p.kind, ProblemKind::BadSignature { line: 1 });
    assert_eq!(p.seq, Some(N + 4));

    // The intact log checked against a key the clinic wrote down for another controller.
    let dir = pristine();
    let other = TempDir::new().expect("tempdir");
    let other_key = AuditLog::open(other.path(), "clinic-2")
        .expect("open")
        .public_key();
    let r = verify_with(
        dir.path(),
        &VerifyOptions {
            public_key: Some(other_key),
        },
    )
    .expect("verify");
    assert_eq!(
        r.problem.expect("detected").kind,
        ProblemKind::BadSignature { line: 1 }
    );
}

#[test]
fn a_record_copied_to_another_key_is_caught() {
    // Copied as is: its hash covers its old predecessor.
    let dir = pristine();
    with_sled(dir.path(), |records, _| {
        let v5 = stored(records, 5);
        replace(records, 6, v5);
    });
    let p = problem(dir.path()).expect("detected");
    assert_eq!(p.seq, Some(6), "{p}");
    assert_eq!(p.kind, ProblemKind::HashMismatch);

    // Re-linked and re-hashed to fit at 6: its body still says 5.
    let dir = pristine();
    with_sled(dir.path(), |records, _| {
        let v5 = stored(records, 5);
        let prev = ChainHash(v5[..32].try_into().expect("32 bytes"));
        let mut body: serde_json::Value = serde_json::from_slice(&v5[32..]).expect("json");
        body["prev"] = serde_json::Value::String(prev.to_hex());
        let bytes = serde_json::to_vec(&body).expect("encode");
        let mut value = chain_hash(&prev, &bytes).0.to_vec();
        value.extend_from_slice(&bytes);
        replace(records, 6, value);
    });
    let p = problem(dir.path()).expect("detected");
    assert_eq!(p.seq, Some(6), "{p}");
    assert_eq!(p.kind, ProblemKind::WrongSeq { found: 5 });
}

#[test]
fn a_changed_length_inside_a_block_names_the_record_it_cuts() {
    // write_log's telemetry is committed with the durable append after it, so records 3
    // and 4 share a block.
    let base = pristine();
    with_sled(base.path(), |records, _| {
        let b = blocks(records);
        assert!(b.contains(&(3, 2)), "{b:?}");
    });
    let mut cases = 0;
    for seq in [3u64, 4] {
        for byte in 0..4 {
            let case = TempDir::new().expect("tempdir");
            copy_dir(base.path(), case.path());
            with_sled(case.path(), |records, _| {
                let mut block = records.get(key(3)).expect("get").expect("present").to_vec();
                let at = if seq == 3 {
                    0
                } else {
                    4 + stored(records, 3).len()
                };
                block[at + byte] ^= 0x01;
                records.insert(key(3), block).expect("insert");
            });
            let p = problem(case.path()).expect("a changed length is detected");
            assert_eq!(
                p.seq,
                Some(seq),
                "byte {byte} of record {seq}'s length: {p}"
            );
            cases += 1;
        }
    }
    assert_eq!(cases, 8);
}

#[test]
fn a_record_cut_out_of_its_block_is_caught_at_its_number() {
    // Removed without moving the next record to a new key: that record now sits at the
    // removed one's place, and its hash covers another predecessor.
    let dir = pristine();
    with_sled(dir.path(), |records, _| {
        let four = stored(records, 4);
        write_block(records, 3, &[four]);
    });
    let p = problem(dir.path()).expect("detected");
    assert_eq!(p.seq, Some(3), "{p}");
    assert_eq!(p.kind, ProblemKind::HashMismatch);

    // A block stored again under a number inside the one before it.
    let dir = pristine();
    with_sled(dir.path(), |records, _| {
        let four = stored(records, 4);
        write_block(records, 4, &[four]);
    });
    let p = problem(dir.path()).expect("detected");
    assert_eq!(p.seq, Some(5), "{p}");
    assert_eq!(p.kind, ProblemKind::WrongSeq { found: 4 });
}

#[test]
fn a_records_layout_this_version_does_not_know_is_refused() {
    let dir = pristine();
    with_sled(dir.path(), |_, meta| {
        meta.insert("layout", "3").expect("insert");
    });
    let err = AuditLog::open(dir.path(), "clinic-1").expect_err("refused");
    assert!(err.to_string().contains("layout \"3\""), "{err}");
    let err = modalis_audit::verify(dir.path()).expect_err("refused");
    assert!(err.to_string().contains("layout \"3\""), "{err}");
}
