//! `schemas/` is generated from the code (`modalis::schemas`) and must never drift: this test
//! regenerates every schema and fails, with a diff and the command to refresh, when a
//! committed copy is stale, missing or no longer generated. Refresh with:
//!
//!     MODALIS_BLESS=1 cargo test -p modalis --test it schemas
//!
//! The examples a newcomer copies from must satisfy the committed schemas.

use std::path::{Path, PathBuf};

use modalis::schemas::{self, SchemaEntry, Staleness};

const REFRESH: &str = "MODALIS_BLESS=1 cargo test -p modalis --test it schemas";

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas")
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn generate() -> Vec<SchemaEntry> {
    schemas::with_plugins(&super::runtime::runtime()).expect("bundled plugins describe themselves")
}

fn report(problems: &[Staleness]) -> String {
    let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
    format!(
        "schemas/ is stale:\n{}\nrefresh with: {REFRESH}",
        list.join("\n")
    )
}

#[test]
fn committed_schemas_are_fresh() {
    let dir = schemas_dir();
    let generated = generate();
    if std::env::var_os("MODALIS_BLESS").is_some() {
        schemas::bless(&dir, &generated).expect("write schemas/");
        return;
    }
    let problems = schemas::compare(&dir, &generated).expect("read schemas/");
    assert!(problems.is_empty(), "{}", report(&problems));
}

/// The check above can fail: on a copy of `schemas/` with one file edited, one removed and
/// one added, it names each, with a diff for the edit.
#[test]
fn a_stale_copy_is_named_with_a_diff() {
    let generated = schemas::all();
    let tmp = tempfile::tempdir().expect("tempdir");
    schemas::bless(tmp.path(), &generated).expect("write");
    assert_eq!(schemas::compare(tmp.path(), &generated).expect("read"), []);

    let edited = tmp.path().join("protocol.schema.json");
    let text = std::fs::read_to_string(&edited).expect("read");
    std::fs::write(
        &edited,
        text.replacen("\"title\": \"Protocol\"", "\"title\": \"Old\"", 1),
    )
    .expect("edit");
    std::fs::remove_file(tmp.path().join("mqtt/state.schema.json")).expect("remove");
    std::fs::write(tmp.path().join("mqtt/old-topic.schema.json"), "{}\n").expect("add");
    // Owned by others: never orphans.
    std::fs::write(tmp.path().join("asyncapi.yaml"), "asyncapi: 3.0.0\n").expect("add");
    std::fs::create_dir_all(tmp.path().join("examples/mqtt")).expect("mkdir");
    std::fs::write(tmp.path().join("examples/mqtt/state.json"), "{}\n").expect("add");

    let problems = schemas::compare(tmp.path(), &generated).expect("read");
    let shown = report(&problems);
    assert_eq!(problems.len(), 3, "{shown}");
    assert!(
        shown.contains("schemas/protocol.schema.json is stale")
            && shown.contains("-  \"title\": \"Old\"")
            && shown.contains("+  \"title\": \"Protocol\"")
            && shown.contains("schemas/mqtt/state.schema.json is missing")
            && shown.contains("schemas/mqtt/old-topic.schema.json is not generated")
            && shown.contains(REFRESH),
        "{shown}"
    );

    // Blessing repairs it and leaves the others' files alone.
    schemas::bless(tmp.path(), &generated).expect("bless");
    assert_eq!(schemas::compare(tmp.path(), &generated).expect("read"), []);
    assert!(tmp.path().join("asyncapi.yaml").exists());
    assert!(tmp.path().join("examples/mqtt/state.json").exists());
    assert!(!tmp.path().join("mqtt/old-topic.schema.json").exists());
}

/// A validator for a committed schema file.
fn committed_validator(rel: &str) -> jsonschema::Validator {
    let path = schemas_dir().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let schema: serde_json::Value = serde_json::from_str(&text).expect("schema JSON");
    jsonschema::validator_for(&schema).expect("committed schema compiles")
}

fn violations(v: &jsonschema::Validator, value: &serde_json::Value) -> Vec<String> {
    v.iter_errors(value)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// The files of one examples folder with that extension, sorted; never none.
fn example_files(sub: &str, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(examples_dir().join(sub))
        .expect("examples folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no examples/{sub}/*.{ext}");
    out
}

fn toml_file(path: &Path) -> serde_json::Value {
    toml::from_str(&std::fs::read_to_string(path).expect("read example")).expect("example TOML")
}

#[test]
fn examples_validate_against_the_committed_schemas() {
    let mut errors = Vec::new();
    let mut check = |path: &Path, v: &jsonschema::Validator, value: &serde_json::Value| {
        for e in violations(v, value) {
            errors.push(format!("{}: {e}", path.display()));
        }
    };

    let profile = committed_validator("device-profile.schema.json");
    for path in example_files("profiles", "toml") {
        check(&path, &profile, &toml_file(&path));
    }
    let patient = committed_validator("patient-context.schema.json");
    for path in example_files("patients", "toml") {
        check(&path, &patient, &toml_file(&path));
    }
    let mut params_checked = 0;
    for path in example_files("params", "json") {
        let id = path.file_stem().and_then(|s| s.to_str()).expect("name");
        let v = committed_validator(&format!("plugins/{id}.params.schema.json"));
        let params: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("JSON");
        check(&path, &v, &params);
        params_checked += 1;
    }
    assert_eq!(
        params_checked,
        modalis_plugin_artifacts::FIRST_PARTY.len(),
        "one parameter example per bundled plugin"
    );
    let protocol = committed_validator("protocol.schema.json");
    for path in example_files("protocols", "toml") {
        let value = toml_file(&path);
        check(&path, &protocol, &value);
        // Each block's parameters against its plugin's schema.
        for block in value["block"].as_array().into_iter().flatten() {
            let plugin = block["plugin"].as_str().expect("block plugin");
            let v = committed_validator(&format!("plugins/{plugin}.params.schema.json"));
            check(&path, &v, &block["params"]);
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));

    // And the check can fail: an example with a misspelt key does not validate.
    let lllt = example_files("profiles", "toml")
        .into_iter()
        .find(|p| p.ends_with("lllt-808.toml"))
        .expect("examples/profiles/lllt-808.toml");
    let text = std::fs::read_to_string(&lllt).expect("read");
    assert!(text.contains("key_switch"));
    let bad: serde_json::Value =
        toml::from_str(&text.replacen("key_switch", "key_swich", 1)).expect("TOML");
    assert!(
        violations(&profile, &bad)
            .iter()
            .any(|e| e.contains("key_swich")),
        "a misspelt key must not validate"
    );
}
