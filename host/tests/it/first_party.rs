//! The first-party plugins, compiled to wasm, through the host runtime.
//!
//! Each plugin is loaded from the artifact the normal build produced, checked as
//! `modalis plugin check` would, and made to validate and plan its example parameters from
//! `examples/params/<id>.json`; the plans are then held to the doses and shapes the plugin's
//! own unit tests expect natively, so a difference between the native and the sandboxed build
//! shows up here.

use std::path::Path;
use std::sync::OnceLock;

use modalis::plugin::{Plugin, PluginRuntime, RuntimeConfig};
use modalis_plugin_artifacts as artifacts;
use modalis_sdk::conformance::{check_manifest, check_plan};
use modalis_sdk::{
    BodySite, Location, Measurement, ModalityKind, Patient, PlanStep, Sensation, SessionPlan,
    Setpoint, SiteSensation, TelemetrySample, Waveform, dose,
};

/// One compile cache for this module's tests, so each plugin is compiled once.
fn cache_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("tempdir"))
        .path()
}

fn runtime() -> PluginRuntime {
    PluginRuntime::new(RuntimeConfig::for_tests(cache_dir())).expect("runtime starts")
}

/// The example parameters the plugin's id names.
fn example(id: &str) -> String {
    let path = format!(
        "{}/../examples/params/{id}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Loads the plugin, checks its manifest, validates and plans its example parameters, checks
/// the plan's form, and checks that planning twice gives the same plan.
fn load_and_plan(
    path: &str,
    id: &str,
    modality: ModalityKind,
    patient: &Patient,
) -> (Plugin, SessionPlan) {
    let rt = runtime();
    let mut p = rt
        .load_file(Path::new(path))
        .unwrap_or_else(|e| panic!("{id} loads: {e}"));
    let m = p.manifest().clone();
    assert_eq!(m.id, id);
    assert_eq!(m.modality, modality);
    assert!(
        check_manifest(&m).is_empty(),
        "{id}: {:?}",
        check_manifest(&m)
    );
    let params = example(id);
    p.validate(&params)
        .expect("no sandbox failure")
        .unwrap_or_else(|e| panic!("{id}: example params invalid: {e:?}"));
    let plan = p
        .plan(&params, patient)
        .expect("no sandbox failure")
        .unwrap_or_else(|e| panic!("{id}: example does not plan: {e}"));
    let issues = check_plan(&m, &plan);
    assert!(issues.is_empty(), "{id}: {issues:?}");
    let again = p
        .plan(&params, patient)
        .expect("no sandbox failure")
        .expect("plans again");
    assert_eq!(plan, again, "{id}: planning is deterministic");
    // The examples are meant to sit inside the usual clinical windows.
    assert!(
        !plan.notes.iter().any(|n| n.starts_with("WARNING")),
        "{id}: {:?}",
        plan.notes
    );
    (p, plan)
}

fn emissions(plan: &SessionPlan) -> Vec<&PlanStep> {
    plan.steps
        .iter()
        .filter(|s| s.setpoint.is_energy())
        .collect()
}

fn optical_energy_j(s: &PlanStep) -> f64 {
    match s.setpoint {
        Setpoint::Optical(o) => dose::energy_j(o.power_mw, s.duration_ms),
        _ => 0.0,
    }
}

#[test]
fn every_first_party_plugin_passes_plugin_check_with_its_example() {
    let rt = runtime();
    let ids = [
        ("modalis-plugin-lllt", "lllt"),
        ("modalis-plugin-class4-laser", "class4-laser"),
        ("modalis-plugin-infrared-heat", "infrared-heat"),
        ("modalis-plugin-tens", "tens"),
        ("modalis-plugin-laser-acupuncture", "laser-acupuncture"),
    ];
    for (package, id) in ids {
        let a = artifacts::FIRST_PARTY
            .iter()
            .find(|a| a.package == package)
            .unwrap_or_else(|| panic!("{package} is built by plugins/artifacts"));
        let params = example(id);
        for given in [None, Some(params.as_str())] {
            let report = modalis::plugin::check::check_file(&rt, Path::new(a.path), given);
            assert!(report.passed(), "{report}");
        }
    }
}

#[test]
fn lllt_plans_the_foot_grid_point_by_point() {
    let (_, plan) = load_and_plan(
        artifacts::LLLT,
        "lllt",
        ModalityKind::Photobiomodulation,
        &Patient::default(),
    );
    // 60 cm2 at 2 cm spacing = 15 points per foot, two feet; 3 J/cm2 on 1 cm2 at 100 mW = 30 s.
    let e = emissions(&plan);
    assert_eq!(e.len(), 30);
    assert_eq!(plan.steps.len(), 60, "a placing pause before each point");
    for s in &e {
        assert_eq!(s.duration_ms, 30_000);
        assert!((optical_energy_j(s) - 3.0).abs() < 1e-9);
        assert_eq!(s.channel, "probe");
    }
    assert_eq!(plan.duration_ms(), 30 * 35_000);
    // Inside every usual window (1-8 J, 20-300 s, at most 100 mW/cm2): no warning, no note.
    assert!(
        !plan
            .notes
            .iter()
            .any(|n| n.starts_with("WARNING") || n.starts_with("note")),
        "{:?}",
        plan.notes
    );
}

#[test]
fn class4_laser_leads_in_then_scans_the_fluence_over_each_area() {
    let (_, plan) = load_and_plan(
        artifacts::CLASS4_LASER,
        "class4-laser",
        ModalityKind::Class4Laser,
        &Patient::default(),
    );
    let first = &plan.steps[0];
    assert_eq!(first.setpoint, Setpoint::Off);
    assert!(
        first.label.starts_with("emission indicator lead-in, 3 s"),
        "{}",
        first.label
    );
    // 10 J/cm2 over 80 cm2 = 800 J per foot at 4 W: ten sweeps of 20 s, each scanned over 80 cm2.
    for site in ["foot_dorsum:left", "foot_dorsum:right"] {
        let j: f64 = plan
            .steps
            .iter()
            .filter(|s| s.site.to_string() == site)
            .map(optical_energy_j)
            .sum();
        assert!((j - 800.0).abs() < 1e-6, "{site}: {j} J");
    }
    for s in emissions(&plan) {
        assert!(s.duration_ms <= 20_000);
        let Setpoint::Optical(o) = s.setpoint else {
            panic!("optical")
        };
        assert_eq!(o.scan_area_cm2, Some(80.0));
    }
    assert_eq!(plan.steps.len(), 22);
}

#[test]
fn infrared_heat_ramps_holds_and_backs_off_through_the_sandbox() {
    let (mut p, plan) = load_and_plan(
        artifacts::INFRARED_HEAT,
        "infrared-heat",
        ModalityKind::InfraredHeat,
        &Patient::default(),
    );
    // Four pads, six warm-up steps and a hold each, 30 minutes.
    assert_eq!(plan.steps.len(), 28);
    assert_eq!(plan.duration_ms(), 30 * 60_000);
    let hold = plan
        .steps
        .iter()
        .rfind(|s| s.channel == "pad-1")
        .cloned()
        .expect("hold step");
    let Setpoint::Heat(h) = hold.setpoint else {
        panic!("heat setpoint")
    };
    let mut powers = Vec::new();
    for t in [33.0, 37.0, 37.5, 38.0, 38.5, 39.0, 40.0] {
        let sample = TelemetrySample {
            channel: "pad-1".into(),
            elapsed_ms: 900_000,
            measurement: Measurement::SkinTempC(t),
        };
        let adj = p.on_telemetry(&hold, &sample).expect("no sandbox failure");
        assert_eq!(adj.len(), 1);
        let Setpoint::Heat(a) = adj[0].setpoint else {
            panic!("heat adjustment")
        };
        assert_eq!(
            a.target_temp_c, h.target_temp_c,
            "the target is never changed"
        );
        assert!(
            a.power_limit_w <= h.power_limit_w,
            "inside the step's envelope"
        );
        powers.push(a.power_limit_w);
    }
    assert_eq!(powers, [5.0, 5.0, 3.75, 2.5, 1.25, 0.0, 0.0]);
}

#[test]
fn infrared_heat_plans_insensate_feet_below_the_alarm() {
    let patient = Patient {
        sensation: vec![SiteSensation {
            site: "foot_plantar:left".parse().expect("site"),
            sensation: Sensation::Absent,
        }],
        conditions: vec![],
    };
    let (mut p, _) = load_and_plan(
        artifacts::INFRARED_HEAT,
        "infrared-heat",
        ModalityKind::InfraredHeat,
        &patient,
    );
    let params = example("infrared-heat").replace(
        "\"target_skin_temp_c\": 39.0",
        "\"target_skin_temp_c\": 41.0",
    );
    let plan = p
        .plan(&params, &patient)
        .expect("no sandbox failure")
        .expect("plans");
    for s in plan.steps.iter().filter(|s| s.channel == "pad-1") {
        let Setpoint::Heat(h) = s.setpoint else {
            panic!("heat")
        };
        assert_eq!(h.target_temp_c, 39.0);
    }
}

#[test]
fn tens_ramps_a_charge_balanced_output_on_both_legs() {
    let (_, plan) = load_and_plan(
        artifacts::TENS,
        "tens",
        ModalityKind::Tens,
        &Patient::default(),
    );
    // Per channel: 12 ramp-up steps, a hold at 25 mA, 4 ramp-down steps.
    assert_eq!(plan.steps.len(), 34);
    assert_eq!(plan.duration_ms(), 30 * 60_000);
    for s in &plan.steps {
        let Setpoint::Electrical(e) = s.setpoint else {
            panic!("electrical")
        };
        assert_eq!(e.waveform, Waveform::SymmetricBiphasic);
        assert!(e.amplitude_ma <= 25.0);
    }
    let first = plan.steps.iter().find(|s| s.channel == "ch1").expect("ch1");
    let Setpoint::Electrical(e) = first.setpoint else {
        panic!("electrical")
    };
    assert!(
        e.amplitude_ma < 3.0,
        "starts near zero: {} mA",
        e.amplitude_ma
    );
}

#[test]
fn laser_acupuncture_reports_each_point_as_its_site() {
    let (mut p, plan) = load_and_plan(
        artifacts::LASER_ACUPUNCTURE,
        "laser-acupuncture",
        ModalityKind::LaserAcupuncture,
        &Patient::default(),
    );
    // The dpn set (6 points) plus Bafeng (4) on both sides, 4 J at 200 mW = 20 s each.
    let e = emissions(&plan);
    assert_eq!(e.len(), 20);
    for s in &e {
        assert!(
            matches!(s.site.location, Location::Acupoint(_)),
            "{}",
            s.site
        );
        assert_eq!(s.duration_ms, 20_000);
        assert!((optical_energy_j(s) - 4.0).abs() < 1e-9);
    }
    assert!(
        e.iter()
            .any(|s| s.site == BodySite::point("EX-LE10-1", modalis_sdk::Side::Right))
    );

    // A list naming a place twice (LR2 is Bafeng 1) gets it once; the periorbital points never.
    let params = example("laser-acupuncture").replace(
        "\"points\": [\"EX-LE10\"]",
        "\"points\": [\"EX-LE10\", \"LR2\"]",
    );
    let plan = p
        .plan(&params, &Patient::default())
        .expect("no sandbox failure")
        .expect("plans");
    let mut canon: Vec<BodySite> = emissions(&plan)
        .iter()
        .map(|s| s.site.canonical())
        .collect();
    let n = canon.len();
    canon.sort();
    canon.dedup();
    assert_eq!(canon.len(), n, "no place is dosed twice");
    let params = example("laser-acupuncture").replace(
        "\"points\": [\"EX-LE10\"]",
        "\"points\": [\"EX-LE10\", \"BL1\"]",
    );
    let errs = p
        .validate(&params)
        .expect("no sandbox failure")
        .expect_err("BL1 refused");
    assert_eq!(errs[0].pointer, "/points/1", "{errs:?}");
}

#[test]
fn validation_errors_cross_the_sandbox_with_their_pointers() {
    let rt = runtime();
    let mut lllt = rt.load_file(Path::new(artifacts::LLLT)).expect("loads");
    let params = example("lllt").replace("\"power_mw\": 100", "\"power_mw\": 900");
    let errs = lllt
        .validate(&params)
        .expect("no sandbox failure")
        .expect_err("too strong for Class 3B");
    assert_eq!(errs[0].pointer, "/power_mw", "{errs:?}");
    assert!(errs[0].message.contains("class4-laser"), "{errs:?}");
    // Unknown fields are refused by the host's schema check before the plugin runs.
    let params =
        example("lllt").replace("\"reposition_s\": 5", "\"reposition_s\": 5, \"power_w\": 1");
    assert!(lllt.validate(&params).expect("no sandbox failure").is_err());
}
