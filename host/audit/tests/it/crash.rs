//! A writer process killed with SIGKILL at a random point loses nothing it acknowledged,
//! and the log it leaves verifies and can be appended to.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use modalis_audit::{AuditReader, Event, verify};
use rand::Rng as _;
use tempfile::TempDir;

use crate::support::report;

const WRITER: &str = env!("CARGO_BIN_EXE_audit-crash-writer");

/// What the child said it had made durable before it died.
#[derive(Default)]
struct Acked {
    commands: Vec<(u64, String)>,
    all_below: u64,
}

fn run_and_kill(dir: &std::path::Path, after: Duration) -> Acked {
    run_and_kill_with(dir, after, |_| {})
}

/// Runs the writer, calls `meanwhile` once it has acknowledged a record, then waits `after`
/// and kills it.
fn run_and_kill_with(
    dir: &std::path::Path,
    after: Duration,
    meanwhile: impl FnOnce(&std::path::Path),
) -> Acked {
    let mut child = Command::new(WRITER)
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the crash writer");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Wait until it has acknowledged something (it is past opening the log), bounded.
    let first = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the writer acknowledged a record");
    meanwhile(dir);
    std::thread::sleep(after);
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "killed, not exited: {status:?}");
    reader.join().expect("reader thread");

    let mut acked = Acked::default();
    for line in std::iter::once(first).chain(rx.try_iter()) {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["ack", seq, id] => acked
                .commands
                .push((seq.parse().expect("seq"), (*id).to_owned())),
            ["all", n] => acked.all_below = acked.all_below.max(n.parse().expect("count")),
            _ => panic!("unexpected line from the writer: {line:?}"),
        }
    }
    acked
}

#[test]
fn every_acknowledged_record_survives_sigkill() {
    let dir = TempDir::new().expect("tempdir");
    let mut rng = rand::thread_rng();
    let mut total_acked = 0;
    // Several crashes into the same log: each run recovers what the last one left.
    for round in 0..4 {
        let after = Duration::from_millis(rng.gen_range(5..400));
        let acked = run_and_kill(dir.path(), after);
        assert!(!acked.commands.is_empty(), "round {round}");
        total_acked += acked.commands.len();

        let r = report(dir.path());
        assert!(r.is_ok(), "round {round}, killed after {after:?}: {r}");
        let reader = AuditReader::open(dir.path()).expect("open");
        let len = reader.len().expect("len");
        assert!(
            len >= acked.all_below,
            "round {round}: {len} < {}",
            acked.all_below
        );
        let (last_seq, _) = acked.commands.last().expect("some");
        assert!(
            len > *last_seq,
            "round {round}: acknowledged {last_seq}, log has {len}"
        );
        let records: Vec<_> = reader
            .records()
            .collect::<Result<_, _>>()
            .expect("every record reads");
        for (seq, id) in &acked.commands {
            let r = &records[usize::try_from(*seq).expect("fits")];
            assert_eq!(
                r.event,
                Event::Command {
                    command_id: id.clone()
                },
                "round {round}, record {seq}"
            );
        }
    }
    assert!(total_acked > 0);
}

#[test]
fn another_process_reads_the_running_log_through_its_feed() {
    let dir = TempDir::new().expect("tempdir");
    run_and_kill_with(dir.path(), Duration::from_millis(1), |dir| {
        // The writer is another process holding sled's lock: everything below goes through
        // its feed socket.
        let r = verify(dir).expect("verify a running log");
        assert!(r.is_ok(), "{r}");
        assert!(r.live, "{r}");
        assert!(r.records > 0);
        assert_eq!(r.controller.as_deref(), Some("crash-test"));

        let reader = AuditReader::open(dir).expect("open");
        assert!(reader.is_live());
        let start = reader.len().expect("len");
        let mut follow = reader.follow(start).expect("follow");
        for seq in start..start + 50 {
            let rec = follow
                .next_timeout(Duration::from_secs(10))
                .expect("reads")
                .expect("the writer keeps appending");
            assert_eq!(rec.seq, seq);
        }
    });
    // After the kill the socket file is stale; readers open the database directly.
    let r = verify(dir.path()).expect("verify after the crash");
    assert!(r.is_ok() && !r.live, "{r}");
}
