//! The table of malformed inputs in `host/tests/malformed-inputs.md`: each protocol file, device
//! profile, patient context and MQTT payload below goes through the same loader or decoder
//! users hit, and the table holds the exact error each gets. The test fails, with the command
//! to refresh, when an error's wording changes:
//!
//!     MODALIS_BLESS=1 cargo test -p modalis --test it malformed

use std::path::{Path, PathBuf};

use modalis::bus::payload::decode;
use modalis::bus::topics::Topics;
use modalis::protocol::Protocol;
use modalis_governor::{DeviceProfile, PatientContext};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn example_protocol() -> String {
    std::fs::read_to_string(root().join("examples/protocols/dpn-combined.toml"))
        .expect("example protocol")
}

fn protocol_error(text: &str) -> String {
    // Placed beside the example so its relative profile and patient paths resolve.
    let path = Path::new("examples/protocols/malformed.toml");
    let abs = root().join(path);
    match Protocol::from_toml_str(text, &abs) {
        Ok(_) => "(accepted)".into(),
        Err(e) => e.to_string().replace(&root().display().to_string(), "."),
    }
}

fn one_line(s: &str) -> String {
    s.replace('|', "\\\\|").replace('\n', " ⏎ ")
}

fn table() -> String {
    let base = example_protocol();
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut protocol = |what: &str, text: String| {
        rows.push(("protocol".into(), what.into(), protocol_error(&text)));
    };
    protocol("not TOML", "[protocol\nname = 1".into());
    protocol(
        "a misspelt key",
        base.replacen("[protocol]\nname", "[protocol]\nnmae", 1),
    );
    protocol(
        "a device profile file that does not exist",
        base.replacen("../profiles/mire-pads.toml", "../profiles/nope.toml", 1),
    );
    protocol(
        "a block on a device role that is not bound",
        base.replacen("device = \"heat\"", "device = \"sauna\"", 1),
    );
    protocol(
        "a block starting with a block that does not exist",
        base.replacen(
            "start = { with = \"heat-feet\" }",
            "start = { with = \"warm-up\" }",
            1,
        ),
    );
    protocol(
        "a negative start time",
        base.replacen("start = { at_s = 0 }", "start = { at_s = -5 }", 1),
    );
    protocol(
        "an empty protocol name",
        base.replacen(
            "name = \"DPN combined: infrared pads + TENS, laser acupuncture, LLLT\"",
            "name = \"\"",
            1,
        ),
    );

    let profile = std::fs::read_to_string(root().join("examples/profiles/tens-2ch.toml"))
        .expect("example profile");
    let mut prof = |what: &str, text: String| {
        let e = match DeviceProfile::from_toml_str(&text, "tens-2ch.toml") {
            Ok(_) => "(accepted)".into(),
            Err(e) => e.to_string(),
        };
        rows.push(("device profile".into(), what.into(), e));
    };
    prof(
        "an unknown modality",
        profile.replacen("modality = \"tens\"", "modality = \"ems\"", 1),
    );
    prof(
        "a current limit as text",
        profile.replacen("max_rms_ma = ", "max_rms_ma = \"lots\" #", 1),
    );
    prof(
        "no channels",
        profile
            .lines()
            .take_while(|l| !l.starts_with("[[channels]]"))
            .collect::<Vec<_>>()
            .join("\n"),
    );

    let patient = std::fs::read_to_string(root().join("examples/patients/dpn-example.toml"))
        .expect("example patient");
    let mut pat = |what: &str, text: String| {
        let e = match PatientContext::from_toml_str(&text, "dpn-example.toml") {
            Ok(_) => "(accepted)".into(),
            Err(e) => e.to_string(),
        };
        rows.push(("patient context".into(), what.into(), e));
    };
    pat(
        "an unknown body site",
        patient.replacen("foot_plantar:left", "elbow_tip:left", 1),
    );
    pat(
        "a sensation that is not a level",
        patient.replacen("\"absent\"", "\"numb-ish\"", 1),
    );

    let t = Topics::new("controller-1").expect("id");
    let mut msg = |what: &str, topic: String, body: &str| {
        let e = match decode(&t, &topic, body.as_bytes()) {
            Ok(_) => "(accepted)".into(),
            Err(e) => e.to_string(),
        };
        rows.push(("MQTT payload".into(), format!("{what}: `{body}`"), e));
    };
    let tele = t.device_telemetry("tens-2ch").expect("topic");
    msg("not JSON", tele.clone(), "{not json");
    msg(
        "a reading as text",
        tele.clone(),
        r#"{"seq":1,"ts_ms":1,"device":"tens-2ch","channel":"ch1","measurement":{"kind":"impedance_ohm","value":"low"},"delivering":true,"lease_id":null}"#,
    );
    msg(
        "another device's id on this device's topic",
        tele.clone(),
        r#"{"seq":1,"ts_ms":1,"device":"mire-pads","channel":"ch1","measurement":{"kind":"impedance_ohm","value":500},"delivering":true,"lease_id":null}"#,
    );
    msg(
        "a missing field",
        tele,
        r#"{"seq":1,"ts_ms":1,"device":"tens-2ch","channel":"ch1","measurement":{"kind":"impedance_ohm","value":500},"lease_id":null}"#,
    );
    msg(
        "an e-stop without its panel",
        t.estop(),
        r#"{"seq":1,"ts_ms":1,"reason":"x"}"#,
    );

    let mut out = String::from(
        "# Malformed input and the exact error each gets\n\n\
         Generated by `host/tests/it/malformed.rs` from the same loaders and decoder users hit\n\
         (refresh: `MODALIS_BLESS=1 cargo test -p modalis --test it malformed`). Paths are\n\
         relative to the repository root.\n\n\
         | input | what is wrong | the error |\n|---|---|---|\n",
    );
    for (kind, what, err) in rows {
        out.push_str(&format!(
            "| {kind} | {} | {} |\n",
            one_line(&what),
            one_line(&err)
        ));
    }
    out
}

#[test]
fn every_malformed_input_gets_the_error_the_table_shows() {
    let path = root().join("host/tests/malformed-inputs.md");
    let fresh = table();
    assert!(
        !fresh.contains("(accepted)"),
        "a malformed input was accepted:\n{fresh}"
    );
    if std::env::var_os("MODALIS_BLESS").is_some() {
        std::fs::write(&path, &fresh).expect("write the table");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != fresh {
        let first = committed
            .lines()
            .zip(fresh.lines())
            .find(|(a, b)| a != b)
            .map(|(a, b)| format!("committed: {a}\nnow:       {b}"))
            .unwrap_or_else(|| "(the files differ in length)".into());
        panic!(
            "host/tests/malformed-inputs.md is stale; refresh with\n  MODALIS_BLESS=1 cargo test -p modalis --test it malformed\nfirst difference:\n{first}"
        );
    }
}
