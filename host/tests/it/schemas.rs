//! `schemas/` is generated from the code and must never drift: this test regenerates every
//! schema and fails, naming the stale files and the command to refresh them, when a committed
//! copy differs. Refresh with:
//!
//!     MODALIS_BLESS=1 cargo test -p modalis --test it schemas

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use modalis_sdk::{
    Adjustment, FieldError, Manifest, Patient, PlanError, SessionPlan, TelemetrySample,
};

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas")
}

fn pretty(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("serialise schema");
    s.push('\n');
    s
}

fn generate() -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut add = |name: &str, schema: schemars::Schema| {
        out.insert(PathBuf::from(name), pretty(&schema.to_value()));
    };
    add(
        "plugin-manifest.schema.json",
        schemars::schema_for!(Manifest),
    );
    add(
        "session-plan.schema.json",
        schemars::schema_for!(SessionPlan),
    );
    add("plan-error.schema.json", schemars::schema_for!(PlanError));
    add("field-error.schema.json", schemars::schema_for!(FieldError));
    add("plugin-patient.schema.json", schemars::schema_for!(Patient));
    add(
        "plugin-telemetry-sample.schema.json",
        schemars::schema_for!(TelemetrySample),
    );
    add(
        "plugin-adjustment.schema.json",
        schemars::schema_for!(Adjustment),
    );
    // Every MQTT payload, named after its topic pattern without the id levels
    // (`device/{device}/telemetry` -> `mqtt/device-telemetry.schema.json`).
    for (pattern, schema) in modalis::bus::payload::schemas() {
        let name: Vec<&str> = pattern
            .split('/')
            .filter(|level| !level.starts_with('{'))
            .collect();
        out.insert(
            PathBuf::from(format!("mqtt/{}.schema.json", name.join("-"))),
            pretty(&schema.to_value()),
        );
    }
    // Each first-party plugin's parameter schema, as it describes itself through the sandbox.
    let rt = super::runtime::runtime();
    for a in modalis_plugin_artifacts::FIRST_PARTY {
        let p = rt
            .load_bytes(a.package, a.bytes)
            .expect("bundled plugin loads");
        let schema: serde_json::Value =
            serde_json::from_str(&p.manifest().params_schema).expect("schema JSON");
        out.insert(
            PathBuf::from(format!("plugins/{}.params.schema.json", p.manifest().id)),
            pretty(&schema),
        );
    }
    out
}

#[test]
fn committed_schemas_are_fresh() {
    let dir = schemas_dir();
    let generated = generate();
    if std::env::var_os("MODALIS_BLESS").is_some() {
        for (rel, text) in &generated {
            let path = dir.join(rel);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, text).expect("write schema");
        }
        return;
    }
    let mut stale = Vec::new();
    for (rel, text) in &generated {
        match std::fs::read_to_string(dir.join(rel)) {
            Ok(committed) if committed == *text => {}
            Ok(committed) => {
                let first = committed
                    .lines()
                    .zip(text.lines())
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                stale.push(format!(
                    "  {} differs from line {}:\n    committed: {}\n    generated: {}",
                    rel.display(),
                    first + 1,
                    committed.lines().nth(first).unwrap_or("<end>"),
                    text.lines().nth(first).unwrap_or("<end>")
                ));
            }
            Err(_) => stale.push(format!("  {} is missing", rel.display())),
        }
    }
    assert!(
        stale.is_empty(),
        "schemas/ is stale:\n{}\nrefresh with: MODALIS_BLESS=1 cargo test -p modalis --test it schemas",
        stale.join("\n")
    );
}

#[test]
fn example_params_validate_against_the_committed_plugin_schemas() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/params");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).expect("examples/params") {
        let path = entry.expect("entry").path();
        let id = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("name")
            .to_string();
        let schema_path = schemas_dir().join(format!("plugins/{id}.params.schema.json"));
        let schema: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&schema_path).expect("schema exists for every example"),
        )
        .expect("schema JSON");
        let params: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read example"))
                .expect("example JSON");
        let v = jsonschema::validator_for(&schema).expect("compiles");
        let errors: Vec<String> = v
            .iter_errors(&params)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
        checked += 1;
    }
    assert_eq!(
        checked,
        modalis_plugin_artifacts::FIRST_PARTY.len(),
        "one example per plugin"
    );
}
