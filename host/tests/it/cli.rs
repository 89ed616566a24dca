//! The `modalis` binary, as a vendor runs it.

use std::process::{Command, Output};

use modalis_plugin_artifacts as artifacts;

fn modalis(args: &[&str]) -> Output {
    let cache = tempfile::tempdir().expect("tempdir");
    Command::new(env!("CARGO_BIN_EXE_modalis"))
        .args(args)
        .arg("--cache-dir")
        .arg(cache.path())
        .output()
        .expect("run modalis")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn check_passes_a_good_plugin() {
    let o = modalis(&["plugin", "check", artifacts::TENS]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}");
    for check in [
        "load",
        "describe.manifest",
        "describe.schema",
        "validate",
        "plan",
        "plan.well-formed",
        "plan.deterministic",
        "on-telemetry",
    ] {
        assert!(
            out.contains(&format!("PASS {check:<22}")),
            "{check} in:\n{out}"
        );
    }
    assert!(out.contains("8 checks passed"), "{out}");
}

#[test]
fn check_fails_each_hostile_plugin_with_its_reason() {
    let cases = [
        (artifacts::HOSTILE_SPIN, "FAIL plan", "fuel budget"),
        (artifacts::HOSTILE_HOG, "FAIL plan", "memory cap"),
        (
            artifacts::HOSTILE_PANICKER,
            "FAIL plan",
            "deliberate panic in plan",
        ),
        (
            artifacts::HOSTILE_BAD_SCHEMA,
            "FAIL describe.schema",
            "not a valid JSON Schema",
        ),
        (
            artifacts::HOSTILE_CONTRACT_NEXT,
            "FAIL load.contract",
            "modalis:plugin@0.2.0",
        ),
        (
            artifacts::HOSTILE_FOREIGN_IMPORT,
            "FAIL load.imports",
            "evil:exfil/net",
        ),
    ];
    for (path, line, reason) in cases {
        let o = modalis(&["plugin", "check", path]);
        let out = stdout(&o);
        assert_eq!(o.status.code(), Some(1), "{path}:\n{out}");
        assert!(
            out.contains(line) && out.contains(reason),
            "{path}: expected {line:?} and {reason:?} in:\n{out}"
        );
    }
}

#[test]
fn check_with_bad_params_names_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let params = dir.path().join("params.json");
    std::fs::write(
        &params,
        r#"{"electrodes":[{"channel":"ch1","site":"lower_leg_lateral:left"}],"mode":"conventional","frequency_hz":90,"pulse_width_us":999,"amplitude_ma":20,"session_minutes":30}"#,
    )
    .expect("write");
    let o = modalis(&[
        "plugin",
        "check",
        artifacts::TENS,
        "--params",
        &params.display().to_string(),
    ]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("FAIL validate") && out.contains("/pulse_width_us"),
        "{out}"
    );
}

#[test]
fn check_refuses_a_file_that_is_not_wasm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("notes.wasm");
    std::fs::write(&f, "hello").expect("write");
    let o = modalis(&["plugin", "check", &f.display().to_string()]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        out.contains("FAIL load") && out.contains("notes.wasm: not a WebAssembly file"),
        "{out}"
    );
}

#[test]
fn inspect_prints_the_manifest_and_schema() {
    let o = modalis(&["plugin", "inspect", artifacts::TENS]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("plugin    tens")
            && out.contains("modality  tens")
            && out.contains("amplitude_ma"),
        "{out}"
    );
    assert!(
        out.contains("parameter schema") && out.contains("\"electrodes\""),
        "{out}"
    );
    let o = modalis(&["plugin", "inspect", artifacts::TENS, "--json"]);
    let m: modalis_sdk::Manifest = serde_json::from_slice(&o.stdout).expect("manifest JSON");
    assert_eq!(m.id, "tens");
}

#[test]
fn inspect_of_a_missing_file_is_an_error_naming_it() {
    let o = modalis(&["plugin", "inspect", "/nonexistent/plugin.wasm"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("/nonexistent/plugin.wasm: cannot read plugin file"),
        "{err}"
    );
}

#[test]
fn bad_flags_are_usage_errors() {
    let o = modalis(&["plugin", "check"]);
    assert_eq!(o.status.code(), Some(2), "clap's usage exit code");
    assert!(String::from_utf8_lossy(&o.stderr).contains("<FILE>"));
}

#[test]
fn audit_verify_is_mounted_and_checks_a_real_log() {
    use modalis_audit::{Actor, AuditLog, Entry, Event};
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("audit");
    let log = AuditLog::open(&db, "ctrl-test").expect("open log");
    for i in 0..5 {
        log.append(Entry::new(
            Actor::Controller,
            Event::Command {
                command_id: format!("c{i}"),
            },
        ))
        .expect("append");
    }
    log.close().expect("close");
    let o = modalis(&["audit", "verify", "--db", &db.display().to_string()]);
    assert!(
        o.status.success(),
        "{}\n{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    let o = modalis(&[
        "audit",
        "verify",
        "--db",
        &dir.path().join("nothing").display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("holds no audit log"));
}

#[test]
fn schema_lists_prints_and_refuses_unknown_names() {
    let committed = |rel: &str| {
        std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../schemas")
                .join(rel),
        )
        .expect("committed schema")
    };

    // Without a name: every name, the plugins' parameter schemas included.
    let o = modalis(&["schema"]);
    assert_eq!(o.status.code(), Some(0));
    let names: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
    for name in [
        "protocol",
        "device-profile",
        "patient-context",
        "dose-report",
        "audit-export-record",
        "mqtt/device-telemetry",
        "plugins/tens.params",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }

    // A name: exactly the committed file, whether generated from a type or from a plugin.
    let o = modalis(&["schema", "protocol"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), committed("protocol.schema.json"));
    let o = modalis(&["schema", "plugins/tens.params"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), committed("plugins/tens.params.schema.json"));
    // The file's name works too.
    let o = modalis(&["schema", "schemas/mqtt/state.schema.json"]);
    assert_eq!(stdout(&o), committed("mqtt/state.schema.json"));

    // An unknown name: a usage error that lists the valid names.
    let o = modalis(&["schema", "protocl"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no schema named \"protocl\"")
            && err.contains("protocol, ")
            && err.contains("plugins/tens.params"),
        "{err}"
    );
    assert!(o.stdout.is_empty());
}
