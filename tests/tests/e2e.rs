//! End to end through the `modalis` binary, exactly as the README tells a newcomer to run it.

use std::process::Command;

/// The `modalis` binary of this workspace, built if it is not yet.
fn modalis() -> Command {
    escargot::CargoBuild::new()
        .package("modalis")
        .bin("modalis")
        .run()
        .expect("build the modalis binary")
        .command()
}

#[test]
fn the_readme_main_command_runs_the_bundled_plugins() {
    let cache = tempfile::tempdir().expect("tempdir");
    let out = modalis()
        .arg("demo")
        .arg("--cache-dir")
        .arg(cache.path())
        .output()
        .expect("run modalis demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "modalis demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for a in modalis_plugin_artifacts::FIRST_PARTY {
        let id = a.package.trim_start_matches("modalis-plugin-");
        assert!(
            stdout.contains(&format!("plugin check: {id}@")),
            "{id} checked:\n{stdout}"
        );
        assert!(
            stdout.contains(&format!("sample plan of {id}@")),
            "{id} planned:\n{stdout}"
        );
    }
    assert!(stdout.contains("passed every check"), "{stdout}");
}
