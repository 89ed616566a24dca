//! Protocol files through real files: the example combined protocol loads, schedules and
//! validates through the real compiled plugins; malformed protocols (written into a temporary
//! folder next to copies of the example patient and profiles) give the exact error text a
//! clinician sees, with file, line, column and what was expected.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use modalis::plugin::{Plugin, PluginRuntime};
use modalis::protocol::{Protocol, ProtocolError, Start};
use modalis_plugin_artifacts as artifacts;
use modalis_sdk::Patient;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn example_protocol() -> PathBuf {
    examples().join("protocols/dpn-combined.toml")
}

/// The first-party plugins by id. The runtime is returned too: it owns the epoch ticker that
/// enforces the plugins' deadlines.
fn plugins() -> (PluginRuntime, BTreeMap<String, Plugin>) {
    let rt = super::runtime::runtime();
    let plugins = artifacts::FIRST_PARTY
        .iter()
        .map(|a| {
            let p = rt.load_bytes(a.package, a.bytes).expect("plugin loads");
            (p.manifest().id.clone(), p)
        })
        .collect();
    (rt, plugins)
}

#[test]
fn example_protocol_loads_with_its_patient_and_profiles() {
    let p = Protocol::load(&example_protocol()).expect("example protocol loads");
    assert_eq!(
        p.name,
        "DPN combined: infrared pads + TENS, laser acupuncture, LLLT"
    );
    assert_eq!(p.patient.id, "DPN-EXAMPLE-01");
    assert_eq!(
        p.devices.keys().collect::<Vec<_>>(),
        ["class4", "heat", "laser-acu", "lllt", "tens"]
    );
    assert_eq!(p.devices["heat"].id, "mire-pads");
    let blocks: Vec<(&str, &str, &str, &Start, bool)> = p
        .blocks
        .iter()
        .map(|b| {
            (
                b.id.as_str(),
                b.plugin.as_str(),
                b.device.as_str(),
                &b.start,
                b.enabled,
            )
        })
        .collect();
    assert_eq!(
        blocks,
        [
            (
                "heat-feet",
                "infrared-heat",
                "heat",
                &Start::At { offset_ms: 0 },
                true
            ),
            (
                "tens-legs",
                "tens",
                "tens",
                &Start::With("heat-feet".into()),
                true
            ),
            (
                "laser-acu",
                "laser-acupuncture",
                "laser-acu",
                &Start::After("heat-feet".into()),
                true
            ),
            (
                "lllt-feet",
                "lllt",
                "lllt",
                &Start::After("laser-acu".into()),
                true
            ),
            (
                "class4-feet",
                "class4-laser",
                "class4",
                &Start::After("laser-acu".into()),
                false
            ),
        ]
    );
    let class4 = p.block("class4-feet").expect("class4 block");
    assert_eq!(class4.alternative_to.as_deref(), Some("lllt-feet"));
    // Params arrive as JSON, integers as integers, and each key keeps its place in the file.
    let tens = p.block("tens-legs").expect("tens block");
    assert_eq!(tens.params["frequency_hz"], serde_json::json!(14));
    assert_eq!(
        tens.params["electrodes"][1]["site"],
        "lower_leg_lateral:right"
    );
    assert_eq!(tens.spans.params.line, 61);
    assert_eq!(tens.spans.params_position("/frequency_hz").line, 63);
    assert_eq!(tens.spans.params_position("/electrodes/1/site").line, 71);
}

#[test]
fn example_protocol_schedules_from_real_plan_durations() {
    let p = Protocol::load(&example_protocol()).expect("example protocol loads");
    let (_rt, mut plugins) = plugins();
    let mut durations = BTreeMap::new();
    for b in p.enabled_blocks() {
        let plugin = plugins.get_mut(&b.plugin).expect("plugin is first-party");
        let plan = plugin
            .plan(&b.params.to_string(), &Patient::default())
            .expect("sandbox")
            .expect("example params plan");
        durations.insert(b.id.clone(), plan.duration_ms());
    }
    let heat = durations["heat-feet"];
    let acu = durations["laser-acu"];
    assert_eq!(heat, 30 * 60 * 1000, "30 min of heat");
    let starts = p.schedule(&durations).expect("schedules");
    assert_eq!(
        starts,
        BTreeMap::from([
            ("heat-feet".to_string(), 0),
            ("tens-legs".to_string(), 0),
            ("laser-acu".to_string(), heat),
            ("lllt-feet".to_string(), heat + acu),
        ])
    );
}

#[test]
fn example_protocol_params_validate_through_the_real_plugins() {
    let p = Protocol::load(&example_protocol()).expect("example protocol loads");
    let (_rt, mut plugins) = plugins();
    if let Err(errors) = p.check_params(&mut plugins) {
        panic!("{}", lines(&errors));
    }
}

#[test]
fn schedule_needs_every_enabled_duration_and_ignores_disabled_blocks() {
    let p = Protocol::load(&example_protocol()).expect("example protocol loads");
    let durations = BTreeMap::from([
        ("heat-feet".to_string(), 1_000),
        ("tens-legs".to_string(), 2_000),
        ("laser-acu".to_string(), 3_000),
    ]);
    let err = p
        .schedule(&durations)
        .expect_err("lllt-feet has no duration");
    assert_eq!(
        rel(&err.to_string(), &examples()),
        "<dir>/protocols/dpn-combined.toml:94:1: block \"lllt-feet\": no plan duration given \
         for this block (expected one for every enabled block)"
    );
    let mut durations = durations;
    durations.insert("lllt-feet".into(), 4_000);
    let starts = p.schedule(&durations).expect("schedules");
    assert_eq!(
        starts.get("class4-feet"),
        None,
        "disabled blocks are not scheduled"
    );
    assert_eq!(starts["lllt-feet"], 4_000);
}

fn lines(errors: &[ProtocolError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// `text` with the temporary folder written as `<dir>`, so expected texts are stable.
fn rel(text: &str, dir: &Path) -> String {
    text.replace(&dir.display().to_string(), "<dir>")
}

/// A small valid protocol the malformed cases are edits of.
const BASE: &str = r#"[protocol]
name = "Test"

[patient]
file = "../patients/dpn-example.toml"

[devices]
heat = "../profiles/mire-pads.toml"
tens = "../profiles/tens-2ch.toml"

[[block]]
id = "heat-feet"
plugin = "infrared-heat"
device = "heat"
start = { at_s = 0 }

[block.params]
session_minutes = 30
target_skin_temp_c = 39.0
ramp_s = 180
pads = [
    { channel = "pad-1", site = "foot_plantar:left", rated_power_w = 5.0 },
]

[[block]]
id = "tens-legs"
plugin = "tens"
device = "tens"
start = { with = "heat-feet" }

[block.params]
mode = "acupuncture_like"
frequency_hz = 14
pulse_width_us = 250
amplitude_ma = 25
session_minutes = 30
ramp_up_s = 60
ramp_down_s = 20
electrodes = [
    { channel = "ch1", site = "lower_leg_lateral:left", electrode_area_cm2 = 25 },
]
"#;

/// A folder with copies of the example patient and profiles, and `protocols/p.toml`.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        for sub in ["patients", "profiles", "protocols"] {
            std::fs::create_dir(dir.path().join(sub)).expect("mkdir");
        }
        for sub in ["patients", "profiles"] {
            for entry in std::fs::read_dir(examples().join(sub)).expect("examples") {
                let entry = entry.expect("entry");
                std::fs::copy(entry.path(), dir.path().join(sub).join(entry.file_name()))
                    .expect("copy");
            }
        }
        Fixture { dir }
    }

    fn write(&self, rel_path: &str, text: &str) {
        std::fs::write(self.dir.path().join(rel_path), text).expect("write");
    }

    fn protocol(&self) -> PathBuf {
        self.dir.path().join("protocols/p.toml")
    }
}

/// One malformed case: edits of [`BASE`] (or a whole text), extra files, the error expected.
struct Case {
    name: &'static str,
    /// `(from, to)` replacements applied to BASE, each of which must match.
    edits: &'static [(&'static str, &'static str)],
    /// Extra files to write: `(path relative to the fixture, text)`.
    files: &'static [(&'static str, &'static str)],
    /// The error text, with the fixture folder as `<dir>`.
    expected: &'static str,
}

fn text_of(case: &Case) -> String {
    let mut text = BASE.to_string();
    for (from, to) in case.edits {
        assert!(text.contains(from), "{}: {from:?} is in BASE", case.name);
        text = text.replacen(from, to, 1);
    }
    text
}

/// Loads the case's protocol; when it loads, checks its params with `plugins`. Returns the
/// errors' texts.
fn check(case: &Case, plugins: &mut BTreeMap<String, Plugin>) -> Vec<String> {
    let f = Fixture::new();
    f.write("protocols/p.toml", &text_of(case));
    for (path, text) in case.files {
        f.write(path, text);
    }
    let errors = match Protocol::load(&f.protocol()) {
        Err(e) => vec![e],
        Ok(p) => match p.check_params(plugins) {
            Ok(()) => Vec::new(),
            Err(errors) => errors,
        },
    };
    errors
        .iter()
        .map(|e| rel(&e.to_string(), f.dir.path()))
        .collect()
}

#[test]
fn base_protocol_is_valid() {
    let (_rt, mut plugins) = plugins();
    let case = Case {
        name: "base",
        edits: &[],
        files: &[],
        expected: "",
    };
    assert_eq!(check(&case, &mut plugins), Vec::<String>::new());
}

const CASES: &[Case] = &[
    Case {
        name: "bad TOML syntax",
        edits: &[("name = \"Test\"", "name = \"Test")],
        files: &[],
        expected: r#"<dir>/protocols/p.toml:2:13: invalid basic string, expected `"`"#,
    },
    Case {
        name: "unknown key in a block",
        edits: &[(
            "device = \"heat\"\n",
            "device = \"heat\"\nenabeld = false\n",
        )],
        files: &[],
        expected: "<dir>/protocols/p.toml:15:1: unknown field `enabeld`, expected one of `id`, `plugin`, `device`, `start`, `enabled`, `alternative_to`, `params` (at /block/0/enabeld)",
    },
    Case {
        name: "unknown top-level table",
        edits: &[("[devices]", "[device]")],
        files: &[],
        expected: "<dir>/protocols/p.toml:7:2: unknown field `device`, expected one of `protocol`, `patient`, `devices`, `block` (at /device)",
    },
    Case {
        name: "missing block id",
        edits: &[("id = \"tens-legs\"\n", "")],
        files: &[],
        expected: "<dir>/protocols/p.toml:25:1: missing field `id` (at /block/1)",
    },
    Case {
        name: "invalid block id",
        edits: &[("id = \"tens-legs\"", "id = \"tens legs\"")],
        files: &[],
        expected: r#"<dir>/protocols/p.toml:26:6: block id "tens legs" is not valid (expected a non-empty id of letters, digits, '-' or '_') (at /block/1/id)"#,
    },
    Case {
        name: "duplicate block id",
        edits: &[("id = \"tens-legs\"", "id = \"heat-feet\"")],
        files: &[],
        expected: r#"<dir>/protocols/p.toml:26:6: duplicate block id "heat-feet", first used on line 12 (expected each block id once) (at /block/1/id)"#,
    },
    Case {
        name: "unknown device role",
        edits: &[("device = \"tens\"", "device = \"tens-unit\"")],
        files: &[],
        expected: r#"<dir>/protocols/p.toml:28:10: block "tens-legs": device "tens-unit" is not a role in [devices] (expected one of: heat, tens) (at /block/1/device)"#,
    },
    Case {
        name: "start with two forms",
        edits: &[(
            "start = { with = \"heat-feet\" }",
            "start = { with = \"heat-feet\", at_s = 10 }",
        )],
        files: &[],
        expected: r#"<dir>/protocols/p.toml:29:9: block "tens-legs": start has at_s and with (expected exactly one of at_s, at_ms, after, with) (at /block/1/start)"#,
    },
    Case {
        name: "negative offset",
        edits: &[("start = { at_s = 0 }", "start = { at_s = -5 }")],
        files: &[],
        expected: r#"<dir>/protocols/p.toml:15:9: block "heat-feet": start at_s = -5 is not a usable offset (expected a finite number of seconds >= 0) (at /block/0/start)"#,
    },
    Case {
        name: "after names an unknown block",
        edits: &[(
            "start = { with = \"heat-feet\" }",
            "start = { after = \"heat-foot\" }",
        )],
        files: &[],
        expected: r#"<dir>/protocols/p.toml:29:9: block "tens-legs": start.after = "heat-foot" names no block (expected one of: heat-feet, tens-legs) (at /block/1/start)"#,
    },
    Case {
        name: "with names a disabled block",
        edits: &[(
            "device = \"heat\"\n",
            "device = \"heat\"\nenabled = false\n",
        )],
        files: &[],
        expected: r#"<dir>/protocols/p.toml:30:9: block "tens-legs": start.with = "heat-feet" names a disabled block (expected an enabled block) (at /block/1/start)"#,
    },
    Case {
        name: "cycle of after and with",
        edits: &[("start = { at_s = 0 }", "start = { after = \"tens-legs\" }")],
        files: &[],
        expected: r#"<dir>/protocols/p.toml:15:9: block "heat-feet": start order is circular: heat-feet -> tens-legs -> heat-feet (expected the after/with chain to end at a block with a fixed at_s start) (at /block/0/start)"#,
    },
    Case {
        name: "alternative_to names an unknown block",
        edits: &[(
            "device = \"tens\"\n",
            "device = \"tens\"\nalternative_to = \"lllt\"\n",
        )],
        files: &[],
        expected: r#"<dir>/protocols/p.toml:29:18: block "tens-legs": alternative_to = "lllt" names no block (expected one of: heat-feet, tens-legs) (at /block/1/alternative_to)"#,
    },
    Case {
        name: "a block and its alternative both enabled",
        edits: &[(
            "device = \"tens\"\n",
            "device = \"tens\"\nalternative_to = \"heat-feet\"\n",
        )],
        files: &[],
        expected: r#"<dir>/protocols/p.toml:29:18: block "tens-legs": this block and its alternative "heat-feet" are both enabled (expected at most one of them enabled) (at /block/1/alternative_to)"#,
    },
    Case {
        name: "missing profile file",
        edits: &[("../profiles/tens-2ch.toml", "../profiles/tens-4ch.toml")],
        files: &[],
        expected: r#"<dir>/protocols/p.toml:9:8: devices.tens = "../profiles/tens-4ch.toml": cannot read <dir>/protocols/../profiles/tens-4ch.toml: No such file or directory (os error 2) (at /devices/tens)"#,
    },
    Case {
        name: "missing patient file",
        edits: &[("../patients/dpn-example.toml", "../patients/nobody.toml")],
        files: &[],
        expected: r#"<dir>/protocols/p.toml:5:8: patient.file = "../patients/nobody.toml": cannot read <dir>/protocols/../patients/nobody.toml: No such file or directory (os error 2) (at /patient/file)"#,
    },
    Case {
        name: "profile file with a bad field",
        edits: &[("../profiles/tens-2ch.toml", "../profiles/tens-bad.toml")],
        files: &[(
            "profiles/tens-bad.toml",
            "id = \"tens-bad\"\nname = \"bad\"\nmodality = \"tens\"\n\n[[channels]]\n\
             name = \"ch1\"\nkind = \"electrical\"\n[channels.electrical]\nmax_rms_ma = \"lots\"\n",
        )],
        expected: r#"<dir>/protocols/p.toml:9:8: devices.tens: <dir>/protocols/../profiles/tens-bad.toml:9:14: channels[0].electrical.max_rms_ma (at /channels/0/electrical/max_rms_ma): invalid type: string "lots", expected f64"#,
    },
    Case {
        name: "patient file with a bad field",
        edits: &[("../patients/dpn-example.toml", "../patients/bad.toml")],
        files: &[(
            "patients/bad.toml",
            "id = \"P-1\"\ndefault_sensation = \"numb\"\n",
        )],
        expected: "<dir>/protocols/p.toml:5:8: patient.file: <dir>/protocols/../patients/bad.toml:2:21: default_sensation (at /default_sensation): unknown variant `numb`, expected one of `normal`, `reduced`, `absent`",
    },
    Case {
        name: "patient given both ways",
        edits: &[(
            "file = \"../patients/dpn-example.toml\"",
            "file = \"../patients/dpn-example.toml\"\nid = \"P-1\"",
        )],
        files: &[],
        expected: r#"<dir>/protocols/p.toml:4:1: [patient] has `file` and other keys (expected either file = "..." alone or an inline patient context) (at /patient)"#,
    },
    Case {
        name: "inline patient with a bad field",
        edits: &[(
            "file = \"../patients/dpn-example.toml\"",
            "id = \"P-1\"\ndefault_sensation = \"numb\"",
        )],
        files: &[],
        expected: "<dir>/protocols/p.toml:6:21: patient: unknown variant `numb`, expected one of `normal`, `reduced`, `absent` (at /patient/default_sensation)",
    },
    Case {
        name: "params that fail the plugin schema",
        edits: &[("frequency_hz = 14", "frequency_hz = \"fast\"")],
        files: &[],
        expected: r#"<dir>/protocols/p.toml:33:1: block "tens-legs": params /frequency_hz: "fast" is not of type "number""#,
    },
    Case {
        name: "params that fail the schema deep inside an array",
        edits: &[(
            "site = \"lower_leg_lateral:left\"",
            "site = \"lower_leg_lateral:left\", gel = true",
        )],
        files: &[],
        expected: r#"<dir>/protocols/p.toml:40:5: block "tens-legs": params /electrodes/0: Additional properties are not allowed ('gel' was unexpected)"#,
    },
    Case {
        name: "params that fail the plugin's own validate",
        edits: &[("frequency_hz = 14", "frequency_hz = 140")],
        files: &[],
        expected: r#"<dir>/protocols/p.toml:33:1: block "tens-legs": params /frequency_hz: 140 Hz: expected 1-15 Hz for acupuncture-like mode"#,
    },
    Case {
        name: "a date-time parameter",
        edits: &[("ramp_s = 180", "ramp_s = 2026-01-01")],
        files: &[],
        expected: r#"<dir>/protocols/p.toml:20:10: block "heat-feet": params /ramp_s: date-time 2026-01-01 cannot be a plugin parameter (expected a string, number, boolean, array or table) (at /block/0/params/ramp_s)"#,
    },
    Case {
        // serde takes an empty name; the schema (the contract published to integrators)
        // does not, and its pointer locates it.
        name: "empty protocol name (refused by the schema alone)",
        edits: &[("name = \"Test\"", "name = \"\"")],
        files: &[],
        expected: r#"<dir>/protocols/p.toml:2:8: "" is shorter than 1 character (at /protocol/name)"#,
    },
    Case {
        name: "unknown plugin id",
        edits: &[("plugin = \"tens\"", "plugin = \"tens-pro\"")],
        files: &[],
        expected: r#"<dir>/protocols/p.toml:27:10: block "tens-legs": plugin "tens-pro" is not loaded (expected one of: class4-laser, infrared-heat, laser-acupuncture, lllt, tens)"#,
    },
];

#[test]
fn malformed_protocols_name_file_line_column_and_what_was_expected() {
    let (_rt, mut plugins) = plugins();
    let mut failures = Vec::new();
    for case in CASES {
        let got = check(case, &mut plugins).join("\n");
        if got != case.expected {
            failures.push(format!(
                "{}:\n  expected: {}\n  got:      {got}",
                case.name, case.expected
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
