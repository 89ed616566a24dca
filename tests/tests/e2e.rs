//! End to end through the `modalis` binary, exactly as the README tells a newcomer to run it.

use std::process::Command;

/// The `modalis` binary of this workspace.
///
/// Under `cargo test --workspace` (the README's test command) cargo has just built it, with
/// the workspace's features, next to this test's own executable (`target/<profile>/deps/..`):
/// use that one. Building it again through a nested `cargo build -p modalis` would select a
/// different set of packages, unify features differently and rebuild half the dependency tree.
/// Run alone (`cargo test -p modalis-e2e`), the binary may be missing (then it is built here)
/// or left from an earlier build: run the workspace's tests, as the README says, to be sure.
fn modalis() -> Command {
    let beside = std::env::current_exe().ok().and_then(|exe| {
        exe.parent()
            .and_then(|deps| deps.parent())
            .map(|dir| dir.join("modalis"))
    });
    if let Some(bin) = beside.filter(|b| b.is_file()) {
        return Command::new(bin);
    }
    escargot::CargoBuild::new()
        .package("modalis")
        .bin("modalis")
        .run()
        .expect("build the modalis binary")
        .command()
}

#[test]
fn the_readme_main_command_runs_the_example_protocol_to_completion() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The README's command at its own speed (x90, about 40 s). At x600 the 5 s TENS steps
    // last 8 ms of wall time, and a loaded machine that wakes the scheduler that late makes
    // the controller rightly refuse the step after its end: an alarm, and a failed test that
    // says nothing about the product. Only the cache and audit directories are private.
    let out = modalis()
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .arg("demo")
        .args(["--audit-dir"])
        .arg(dir.path().join("audit"))
        .output()
        .expect("run modalis demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let check = |ok: bool, what: &str| {
        if !ok {
            fail(what, &stdout, &stderr);
        }
    };
    check(
        out.status.success(),
        &format!("modalis demo exited with {}", out.status),
    );
    for a in modalis_plugin_artifacts::FIRST_PARTY {
        check(
            stdout.contains(&format!("{:<20} passed every conformance check", a.package)),
            &format!("{} was not checked", a.package),
        );
    }
    for needle in [
        "mosquitto_sub",
        "CAN BE ARMED",
        "session session-1 completed",
        "every step ran to its end",
        "alarms       0",
        "records:",
    ] {
        check(
            stdout.contains(needle),
            &format!("no {needle:?} in the output"),
        );
    }
    check(
        stdout.trim_end().ends_with("OK"),
        "the audit log was not verified OK",
    );
    let report = modalis_audit::verify(&dir.path().join("audit")).expect("audit log readable");
    assert!(report.is_ok(), "{report}");
}

/// Fails with what went wrong and the end of both streams (where a run says why it stopped),
/// and keeps the whole output in a file: CI shows only part of a long panic message.
fn fail(what: &str, stdout: &str, stderr: &str) -> ! {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let saved = dir.join("e2e-demo-output.txt");
    let kept = std::fs::write(
        &saved,
        format!("--- stdout\n{stdout}\n--- stderr\n{stderr}"),
    )
    .map_or_else(
        |e| format!("(could not save the output: {e})"),
        |()| format!("whole output in {}", saved.display()),
    );
    panic!(
        "{what}; {kept}\n--- last lines of stdout\n{}\n--- last lines of stderr\n{}",
        tail(stdout, 30),
        tail(stderr, 40)
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
