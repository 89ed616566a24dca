//! The `modalis audit ...` commands, parsed by clap and run through `cli::run_to`, the way
//! the host binary mounts them.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use modalis_audit::AuditLog;
use modalis_audit::cli::{AuditCommand, run_to};
use tempfile::TempDir;

use crate::support::{delete, replace, stored, with_sled, write_log};

/// Stand-in for the host binary's `audit` subcommand.
#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: AuditCommand,
}

fn run(args: &[&str]) -> (anyhow::Result<ExitCode>, String) {
    let cli = Cli::try_parse_from(std::iter::once("audit").chain(args.iter().copied()))
        .expect("arguments parse");
    let mut out = Vec::new();
    let code = run_to(cli.cmd, &mut out);
    (code, String::from_utf8(out).expect("utf-8 output"))
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

#[test]
fn verify_exits_zero_on_a_good_log_and_one_with_the_bad_record() {
    let dir = TempDir::new().expect("tempdir");
    write_log(dir.path(), 12);
    let (code, out) = run(&["verify", "--db", path(dir.path())]);
    assert_eq!(code.expect("runs"), ExitCode::SUCCESS, "{out}");
    assert!(out.contains("records: 12"), "{out}");
    assert!(out.trim_end().ends_with("OK"), "{out}");

    with_sled(dir.path(), |records, _| {
        let mut v = stored(records, 7);
        let last = v.len() - 3;
        v[last] ^= 0x20;
        replace(records, 7, v);
    });
    let (code, out) = run(&["verify", "--db", path(dir.path())]);
    assert_eq!(code.expect("runs"), ExitCode::FAILURE, "{out}");
    assert!(out.contains("FAILED at record 7: hash mismatch"), "{out}");
}

#[test]
fn verify_with_a_pinned_public_key() {
    let dir = TempDir::new().expect("tempdir");
    write_log(dir.path(), 3);
    let (code, key) = run(&["public-key", "--db", path(dir.path())]);
    assert_eq!(code.expect("runs"), ExitCode::SUCCESS);
    let key = key.trim().to_owned();
    assert_eq!(key.len(), 64);
    let (code, out) = run(&["verify", "--db", path(dir.path()), "--public-key", &key]);
    assert_eq!(code.expect("runs"), ExitCode::SUCCESS, "{out}");

    let other = TempDir::new().expect("tempdir");
    let other_key = hex::encode(
        AuditLog::open(other.path(), "x")
            .expect("open")
            .public_key()
            .as_bytes(),
    );
    let (code, out) = run(&[
        "verify",
        "--db",
        path(dir.path()),
        "--public-key",
        &other_key,
    ]);
    assert_eq!(code.expect("runs"), ExitCode::FAILURE, "{out}");
    assert!(out.contains("bad signature"), "{out}");

    let (code, _) = run(&["verify", "--db", path(dir.path()), "--public-key", "zz"]);
    let err = code.expect_err("a malformed key is an error");
    assert!(err.to_string().contains("--public-key"), "{err}");
}

#[test]
fn verify_of_a_missing_log_is_an_error_not_a_pass() {
    let dir = TempDir::new().expect("tempdir");
    let (code, _) = run(&["verify", "--db", path(&dir.path().join("nope"))]);
    let err = code.expect_err("missing");
    assert!(format!("{err:#}").contains("holds no audit log"), "{err:#}");
}

#[test]
fn verify_and_export_of_a_running_log_go_through_its_feed() {
    let dir = TempDir::new().expect("tempdir");
    let log = AuditLog::open(dir.path(), "clinic-1").expect("open");
    for i in 0..7 {
        log.append(crate::support::entry(i)).expect("append");
    }
    let (code, out) = run(&["verify", "--db", path(dir.path())]);
    assert_eq!(code.expect("runs"), ExitCode::SUCCESS, "{out}");
    assert!(out.contains("read live"), "{out}");
    assert!(out.contains("controller clinic-1"), "{out}");
    assert!(out.contains("records: 7"), "{out}");
    assert!(out.contains("unconfirmed: records 0..=6"), "{out}");
    let (code, out) = run(&["export", "--db", path(dir.path()), "--format", "csv"]);
    assert_eq!(code.expect("runs"), ExitCode::SUCCESS);
    assert_eq!(out.lines().count(), 8, "{out}");
    // The public key is readable while the controller runs.
    let (code, out) = run(&["public-key", "--db", path(dir.path())]);
    assert_eq!(code.expect("runs"), ExitCode::SUCCESS);
    assert_eq!(out.trim(), hex::encode(log.public_key().as_bytes()));
    log.close().expect("close");
    assert!(
        !dir.path().join(modalis_audit::layout::FEED_SOCKET).exists(),
        "the socket goes with the controller"
    );
    let (code, out) = run(&["verify", "--db", path(dir.path())]);
    assert_eq!(code.expect("runs"), ExitCode::SUCCESS, "{out}");
    assert!(!out.contains("read live"), "{out}");
}

#[test]
fn export_jsonl_filters_by_session_and_time() {
    let dir = TempDir::new().expect("tempdir");
    write_log(dir.path(), 30);
    let (code, out) = run(&["export", "--db", path(dir.path())]);
    assert_eq!(code.expect("runs"), ExitCode::SUCCESS);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 30);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["seq"], i as u64);
        assert_eq!(l["controller"], "clinic-1");
        assert!(l["time"].as_str().expect("time").ends_with('Z'));
        assert_eq!(l["hash"].as_str().expect("hash").len(), 64);
    }

    let (code, out) = run(&["export", "--db", path(dir.path()), "--session", "s1"]);
    assert_eq!(code.expect("runs"), ExitCode::SUCCESS);
    let n = out.lines().count();
    assert!(n > 0 && n < 30, "{n}");
    assert!(
        out.lines().all(|l| l.contains(r#""session":"s1""#)),
        "{out}"
    );

    let (_, out) = run(&["export", "--db", path(dir.path()), "--since", "1h"]);
    assert_eq!(out.lines().count(), 30);
    let (_, out) = run(&[
        "export",
        "--db",
        path(dir.path()),
        "--since",
        "2999-01-01T00:00:00Z",
    ]);
    assert_eq!(out.lines().count(), 0);
    assert!(Cli::try_parse_from(["audit", "export", "--since", "yesterday-ish"]).is_err());
}

#[test]
fn export_csv_has_a_header_and_quotes_what_needs_quoting() {
    let dir = TempDir::new().expect("tempdir");
    write_log(dir.path(), 10);
    let (code, out) = run(&["export", "--db", path(dir.path()), "--format", "csv"]);
    assert_eq!(code.expect("runs"), ExitCode::SUCCESS);
    let mut rows = csv::Reader::from_reader(out.as_bytes());
    let header = rows.headers().expect("header").clone();
    assert_eq!(&header[0], "seq");
    assert_eq!(&header[8], "event");
    let rows: Vec<csv::StringRecord> = rows.records().collect::<Result<_, _>>().expect("rows");
    assert_eq!(rows.len(), 10);
    // Entry 8 is an override whose reason has quotes, a comma and non-ASCII text.
    assert_eq!(&rows[8][8], "override");
    let fields: serde_json::Value = serde_json::from_str(&rows[8][9]).expect("json");
    assert_eq!(
        fields["reason"],
        "patient in a hurry, \"signed\" consent, ümlaut"
    );
    assert_eq!(&rows[8][10], "warning");
    assert_eq!(&rows[3][8], "telemetry");
    assert_eq!(&rows[3][3], "device");
}

#[test]
fn export_stops_at_a_damaged_record() {
    let dir = TempDir::new().expect("tempdir");
    write_log(dir.path(), 10);
    with_sled(dir.path(), |records, _| {
        delete(records, 4);
    });
    let (code, out) = run(&["export", "--db", path(dir.path())]);
    let err = code.expect_err("refuses");
    assert!(format!("{err:#}").contains("record 4"), "{err:#}");
    assert_eq!(
        out.lines().count(),
        4,
        "the intact records before it were written"
    );
}
