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
    // Faster than the README's default so the test suite stays short; everything else is the
    // README's command.
    let out = modalis()
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .arg("demo")
        .args(["--speed", "600", "--audit-dir"])
        .arg(dir.path().join("audit"))
        .output()
        .expect("run modalis demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "modalis demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for a in modalis_plugin_artifacts::FIRST_PARTY {
        assert!(
            stdout.contains(&format!("{:<20} passed every conformance check", a.package)),
            "{} checked:\n{stdout}",
            a.package
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
        assert!(stdout.contains(needle), "no {needle:?} in:\n{stdout}");
    }
    assert!(
        stdout.trim_end().ends_with("OK"),
        "audit log verified:\n{stdout}"
    );
    let report = modalis_audit::verify(&dir.path().join("audit")).expect("audit log readable");
    assert!(report.is_ok(), "{report}");
}
