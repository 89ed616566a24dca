//! The example device profiles and patient load, validate and behave as documented; profile
//! errors name the file, the field and what was expected.

use modalis_governor::*;
use modalis_sdk::{Sensation, Setpoint};

use crate::common::*;

#[test]
fn example_profiles_load_with_derived_laser_classes() {
    let ps = profiles();
    let class = |id: &str, ch: &str| {
        ps.iter()
            .find(|p| p.id == id)
            .and_then(|p| p.channel(ch))
            .and_then(ChannelProfile::laser_class)
    };
    // IEC 60825-1: above 0.5 W is Class 4; 0.5 W itself is still 3B.
    assert_eq!(class(LLLT_ID, "probe"), Some(LaserClass::Class3B));
    assert_eq!(class(ACU_ID, "probe"), Some(LaserClass::Class3B));
    assert_eq!(class(CLASS4_ID, "handpiece"), Some(LaserClass::Class4));
    assert_eq!(class(MIRE_ID, "pad-1"), None);
    // The Class IV profile's clinic overrides are in force (stricter than the defaults).
    let c4 = ps
        .iter()
        .find(|p| p.id == CLASS4_ID)
        .map(|p| p.limits.clone());
    assert_eq!(
        c4.map(|l| (l.interlock_lead_time_ms, l.lease_period_ms)),
        Some((3000, 1000))
    );
    // Every channel of the examples reports something the governor watches.
    for p in &ps {
        for c in &p.channels {
            assert!(c.monitored(), "{}/{} is unmonitored", p.id, c.name);
        }
    }
}

#[test]
fn example_patient_has_absent_feet_and_reduced_legs() {
    let p = dpn_patient();
    assert_eq!(
        p.sensation_at(&site("foot_dorsum:left")),
        Some(Sensation::Absent)
    );
    assert_eq!(p.sensation_at(&site("LR3:right")), Some(Sensation::Absent));
    assert_eq!(p.sensation_at(&site("ST36:left")), Some(Sensation::Reduced));
    assert_eq!(p.sensation_at(&site("thigh:left")), Some(Sensation::Normal));
    assert_eq!(p.precaution_overrides.len(), 1);
}

/// A DPN session like examples/protocols/dpn-combined.toml: pads on both feet with TENS on
/// both lower legs, then laser acupuncture, then an LLLT grid on the foot dorsum.
#[test]
fn dpn_combined_protocol_can_be_armed_and_reports_every_site() {
    let gov = governor(dpn_patient());
    let mut heat_steps = Vec::new();
    for (ch, at) in [
        ("pad-1", "foot_plantar:left"),
        ("pad-2", "foot_dorsum:left"),
        ("pad-3", "foot_plantar:right"),
        ("pad-4", "foot_dorsum:right"),
    ] {
        heat_steps.push(step(0.0, 1800.0, ch, at, heat(39.0, 5.0)));
    }
    let mut tens_steps = tens_ramp("ch1", "lower_leg_lateral:left", 25.0, 1740.0);
    tens_steps.extend(tens_ramp("ch2", "lower_leg_lateral:right", 25.0, 1740.0));
    let mut acu_steps = Vec::new();
    let mut t = 0.0;
    for side in ["left", "right"] {
        for p in [
            "ST36",
            "SP9",
            "SP6",
            "GB39",
            "LR3",
            "GB41",
            "EX-LE10-1",
            "EX-LE10-2",
            "EX-LE10-3",
            "EX-LE10-4",
        ] {
            acu_steps.push(step(
                t,
                20.0,
                "probe",
                &format!("{p}:{side}"),
                optical(808.0, 200.0, 1.0),
            ));
            t += 25.0;
        }
    }
    let mut lllt_steps = Vec::new();
    let mut t = 0.0;
    for side in ["left", "right"] {
        for _ in 0..20 {
            lllt_steps.push(step(
                t,
                30.0,
                "probe",
                &format!("foot_dorsum:{side}"),
                optical(808.0, 100.0, 1.0),
            ));
            t += 35.0;
        }
    }
    let blocks = vec![
        block("heat-feet", MIRE_ID, 0.0, heat_steps),
        block("tens-legs", TENS_ID, 0.0, tens_steps),
        block("laser-acu", ACU_ID, 1800.0, acu_steps),
        block("lllt-feet", LLLT_ID, 2400.0, lllt_steps),
    ];
    let pre = gov.precheck(&blocks);
    let table = pre.report.to_string();
    println!("{table}");
    assert!(pre.can_arm(), "{table}");
    // Bafeng 1 is counted as LR2 in the ledger, and the report says which names it had.
    let lr2 = pre.report.site(&site("LR2:left"));
    assert!(
        lr2.is_some_and(|s| s.names.contains(&"EX-LE10-1:left".to_string())),
        "{table}"
    );
    // A finding about a step on EX-LE10-1 names the site as written; its line is labelled as
    // the table's row is, so a reader sees that LR2 and EX-LE10-1 are the one place.
    let about_bafeng: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("  ") && l.contains("EX-LE10-1:left has"))
        .collect();
    assert!(!about_bafeng.is_empty(), "{table}");
    for line in about_bafeng {
        assert!(
            line.starts_with("  LR2:left (= EX-LE10-1:left) laser-acu#"),
            "{line}"
        );
    }
    // The feet are absent-sensation sites: the report shows the 40/41 C alarm and cut-off.
    let plantar = pre.report.site(&site("foot_plantar:left"));
    assert_eq!(plantar.and_then(|s| s.skin_alarm_c), Some(40.0));
    assert_eq!(plantar.and_then(|s| s.skin_cutoff_c), Some(41.0));
    // 20 grid spots of 3 J on the dorsum: 60 J on the region, 3 J/cm2 at the worst spot.
    let dorsum = pre.report.site(&site("foot_dorsum:left"));
    assert!(
        dorsum.is_some_and(
            |s| (s.energy_j - 60.0).abs() < 1e-6 && (s.fluence_j_per_cm2 - 3.0).abs() < 1e-6
        ),
        "{table}"
    );
    let json = pre.report.to_json();
    let parsed: Result<serde_json::Value, _> = serde_json::from_str(&json);
    assert!(
        parsed.is_ok_and(|v| v["armable"] == serde_json::Value::Bool(true)),
        "{json}"
    );
    let sup = gov.arm(&pre, 1_000);
    assert!(sup.is_ok());
}

fn profile_error(text: &str) -> String {
    match DeviceProfile::from_toml_str(text, "profiles/bad.toml") {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn profile_errors_name_the_file_the_field_and_the_expectation() {
    // A looser clinic override is rejected, naming the field (limits only get stricter).
    let looser = LLLT.replace(
        "[[channels]]",
        "[limits]\nlllt_irradiance_max_mw_per_cm2 = 150.0\n\n[[channels]]",
    );
    let e = profile_error(&looser);
    assert!(
        e.contains("profiles/bad.toml")
            && e.contains("lllt_irradiance_max_mw_per_cm2")
            && e.contains("looser"),
        "{e}"
    );

    // 21 CFR 1040.10(f): a Class 3B laser without a key switch is not a valid profile.
    let e = profile_error(&LLLT.replace("key_switch = true", "key_switch = false"));
    assert!(
        e.contains("channels[0].optical.safety.key_switch") && e.contains("1040.10(f)"),
        "{e}"
    );

    // A wrong type: the TOML field path plus line and column from the parser.
    let e = profile_error(&LLLT.replace("max_power_mw = 500.0", "max_power_mw = \"lots\""));
    assert!(
        e.contains("channels[0].optical.max_power_mw") && e.contains("profiles/bad.toml:"),
        "{e}"
    );
    let err = DeviceProfile::from_toml_str(
        &LLLT.replace("max_power_mw = 500.0", "max_power_mw = \"lots\""),
        "x",
    );
    assert!(err.is_err_and(|e| e.line.is_some() && e.column.is_some()));

    // An unknown key (a typo) is an error, not silently ignored.
    let e = profile_error(&LLLT.replace("power_sensor = true", "power_sensr = true"));
    assert!(e.contains("power_sensr"), "{e}");

    // A Class 4 device must exceed 0.5 W (IEC 60825-1).
    let e = profile_error(&CLASS4.replace("max_power_mw = 15000.0", "max_power_mw = 400.0"));
    assert!(e.contains("max_power_mw") && e.contains("500 mW"), "{e}");

    // A heat channel on a TENS device.
    let e = profile_error(&TENS.replacen("kind = \"electrical\"", "kind = \"heat\"", 1));
    assert!(e.contains("channels[0].kind"), "{e}");

    // A combined budget above the hard ceiling (lowest skin MPE).
    let e = profile_error(&format!(
        "{LLLT}\n[combined]\nallow = true\nthermal_budget_mw_per_cm2 = 500.0\n"
    ));
    assert!(e.contains("combined.thermal_budget_mw_per_cm2"), "{e}");

    // A declared class lower than the derived one.
    let e = profile_error(&CLASS4.replace(
        "max_pulse_frequency_hz = 10000.0",
        "max_pulse_frequency_hz = 10000.0\ndeclared_class = \"3b\"",
    ));
    assert!(e.contains("declared_class"), "{e}");

    // Modality "other" has no safety rules: refused.
    let e =
        profile_error(&LLLT.replace("modality = \"photobiomodulation\"", "modality = \"other\""));
    assert!(e.contains("modality"), "{e}");
}

#[test]
fn patient_errors_name_the_field() {
    let e = PatientContext::from_toml_str(
        "id = \"P\"\n[[contraindications]]\nkind = \"malignancy\"\n",
        "patients/p.toml",
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(
        e.contains("patients/p.toml") && e.contains("contraindications[0].site"),
        "{e}"
    );
    let e = PatientContext::from_toml_str(
        "id = \"P\"\n[[sensation]]\nsite = \"ZZ9:left\"\nsensation = \"absent\"\n",
        "p.toml",
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(e.contains("sensation[0].site") && e.contains("ZZ9"), "{e}");
    let e = PatientContext::from_toml_str("id = \"P\"\n[[precaution_overrides]]\nprecaution = \"epilepsy\"\nreason = \" \"\nclinician = \"Dr\"\n", "p.toml").err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("precaution_overrides[0].reason"), "{e}");
}

#[test]
fn duplicate_device_ids_are_refused() {
    let mut ps = profiles();
    ps.push(profile(LLLT, "copy.toml"));
    let e = Governor::new(ps, normal_patient())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("lllt-808") && e.contains("copy.toml"), "{e}");
}

#[test]
fn report_table_lists_sites_and_refusals() {
    let gov = governor(normal_patient());
    let pre = gov.precheck(&[block(
        "b",
        LLLT_ID,
        0.0,
        vec![
            step(
                0.0,
                30.0,
                "probe",
                "periorbital:left",
                optical(808.0, 50.0, 1.0),
            ),
            step(40.0, 30.0, "probe", "ST36:left", optical(808.0, 200.0, 1.0)),
        ],
    )]);
    let table = pre.report.to_string();
    assert!(table.contains("CANNOT BE ARMED"), "{table}");
    assert!(
        table.contains("optical.ocular") && table.contains("optical.lllt_irradiance"),
        "{table}"
    );
    assert!(pre.steps.get(1).and_then(|s| s.approved).is_some_and(
        |a| matches!(a.setpoint, Setpoint::Optical(o) if (o.power_mw - 100.0).abs() < 1e-9)
    ));
}

#[test]
fn time_compression_keeps_leases_and_staleness_in_wall_time_only() {
    let steps = vec![step(0.0, 1800.0, "pad-1", "thigh:left", heat(39.0, 5.0))];
    let blocks = [block("b", MIRE_ID, 0.0, steps)];
    let plain = governor(normal_patient());
    let fast = governor(normal_patient()).time_compressed(60);
    let lim = |g: &Governor| g.device_limits(MIRE_ID).cloned().expect("profile");
    assert_eq!(lim(&fast).lease_period_ms, 60 * lim(&plain).lease_period_ms);
    assert_eq!(
        lim(&fast).staleness_limit_ms,
        60 * lim(&plain).staleness_limit_ms
    );
    // Every treatment limit, and so the pre-check and the dose report, is unchanged.
    let mut a = lim(&fast);
    a.lease_period_ms = lim(&plain).lease_period_ms;
    a.staleness_limit_ms = lim(&plain).staleness_limit_ms;
    assert_eq!(a, lim(&plain));
    let (pa, pb) = (plain.precheck(&blocks), fast.precheck(&blocks));
    assert_eq!(pa.report.to_json(), pb.report.to_json());
    // The lease granted on the session clock lasts the wall-clock period times the speed.
    let cmd = Command {
        device_id: MIRE_ID.into(),
        channel: "pad-1".into(),
        site: site("thigh:left"),
        setpoint: heat(39.0, 5.0),
        step: StepRef {
            block_id: "b".into(),
            step_index: 0,
        },
    };
    let lease = |g: &Governor, pre: &Precheck| {
        let mut s = g.arm(pre, 0).expect("armable");
        let d = s.admit(&cmd, 1_000);
        assert!(d.admitted(), "{d:?}");
        d.lease.map(|l| l.expires_at_ms)
    };
    assert_eq!(lease(&plain, &pa), Some(1_000 + limits::LEASE_PERIOD_MS));
    assert_eq!(
        lease(&fast, &pb),
        Some(1_000 + 60 * limits::LEASE_PERIOD_MS)
    );
    // Speed 0 or 1 is real time.
    assert_eq!(
        lim(&governor(normal_patient()).time_compressed(0)),
        lim(&plain)
    );
}

#[test]
fn load_errors_carry_the_json_pointer_of_the_field() {
    // A wrong type: serde's message (it says what was expected), located by the parser, and
    // the pointer into the file's schema.
    let text = LLLT.replace("max_power_mw = 500.0", "max_power_mw = \"lots\"");
    let e = DeviceProfile::from_toml_str(&text, "profiles/bad.toml").err();
    assert!(
        e.as_ref()
            .is_some_and(|e| e.pointer() == "/channels/0/optical/max_power_mw"),
        "{e:?}"
    );
    let shown = e.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        shown.contains("(at /channels/0/optical/max_power_mw)") && shown.contains("expected f64"),
        "{shown}"
    );

    // A non-finite number: serde takes it as an f64, the schema does not (a JSON number is
    // finite). The schema's pointer, and the line and column where it is written.
    let text = LLLT.replace("max_power_mw = 500.0", "max_power_mw = nan");
    let line = text
        .lines()
        .position(|l| l.starts_with("max_power_mw"))
        .map(|i| i + 1);
    let e = DeviceProfile::from_toml_str(&text, "profiles/bad.toml").err();
    assert!(
        e.as_ref()
            .is_some_and(|e| e.pointer() == "/channels/0/optical/max_power_mw"
                && e.field == "channels[0].optical.max_power_mw"
                && e.line == line
                && e.message.contains("non-finite")),
        "{e:?}"
    );

    // A check after parsing (a Class 3B laser needs a key switch) names the pointer too.
    let e = DeviceProfile::from_toml_str(
        &LLLT.replace("key_switch = true", "key_switch = false"),
        "p.toml",
    )
    .err();
    assert!(
        e.is_some_and(|e| e.pointer() == "/channels/0/optical/safety/key_switch"),
        "key switch"
    );

    // The patient context: an unknown variant deep in an array.
    let e = PatientContext::from_toml_str(
        "id = \"P\"\n[[sensation]]\nsite = \"foot_dorsum:left\"\nsensation = \"numb\"\n",
        "patients/p.toml",
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(
        e.starts_with("patients/p.toml:4:13: sensation[0].sensation (at /sensation/0/sensation):")
            && e.contains("unknown variant `numb`"),
        "{e}"
    );
    // ... and a non-finite dose already delivered, which only the schema refuses.
    let e = PatientContext::from_toml_str(
        "id = \"P\"\n[[delivered_today]]\nsite = \"ST36:left\"\nmodality = \"laser-acupuncture\"\nenergy_j = inf\n",
        "patients/p.toml",
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(
        e.starts_with(
            "patients/p.toml:5:12: delivered_today[0].energy_j (at /delivered_today/0/energy_j):"
        ),
        "{e}"
    );

    // The schema accepts what the site parser accepts: a lenient spelling still loads.
    let p = PatientContext::from_toml_str(
        "id = \"P\"\n[[sensation]]\nsite = \"st36:Left\"\nsensation = \"absent\"\n",
        "patients/p.toml",
    );
    assert!(p.is_ok(), "{p:?}");
}
