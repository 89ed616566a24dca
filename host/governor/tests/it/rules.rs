//! One test per rule that the scenario table does not already pin down, each named after the
//! clinical fact it enforces.

use modalis_governor::*;
use modalis_sdk::{ElectricalSetpoint, Sensation, Setpoint, Waveform};

use crate::common::*;

fn gov_with(extra: &[(&str, &str)], patient: PatientContext) -> Governor {
    let mut ps = profiles();
    for (text, name) in extra {
        ps.push(profile(text, name));
    }
    match Governor::new(ps, patient) {
        Ok(g) => g,
        Err(e) => panic!("{e}"),
    }
}

/// A biphasic setpoint on 4 cm2 electrodes (the strict profile's).
fn tens4(amp: f64, pw: f64, f: f64) -> Setpoint {
    match tens(amp, pw, f) {
        Setpoint::Electrical(e) => Setpoint::Electrical(ElectricalSetpoint {
            electrode_area_cm2: 4.0,
            ..e
        }),
        other => other,
    }
}

fn only(gov: &Governor, b: Block) -> StepVerdict {
    let pre = gov.precheck(&[b]);
    match pre.steps.into_iter().next() {
        Some(s) => s,
        None => panic!("no step"),
    }
}

const TENS_STRICT: &str = r#"
id = "tens-strict"
modality = "tens"
[limits]
tens_rms_max_ma = 5.0
tens_charge_per_phase_max_uc = 10.0
[[channels]]
name = "ch1"
kind = "electrical"
[channels.electrical]
max_rms_ma = 50.0
max_peak_ma = 100.0
waveforms = ["symmetric-biphasic"]
electrode_area_cm2 = 4.0
impedance_monitor = true
"#;

const PAD_NO_SENSOR: &str = r#"
id = "pad-bare"
modality = "infrared-heat"
[[channels]]
name = "pad"
kind = "heat"
[channels.heat]
max_temp_c = 43.0
max_power_w = 10.0
contact_area_cm2 = 100.0
"#;

/// IEC 60601-2-10 via Enraf-Nonius IFU: never above 50 mA r.m.s. (here a clinic's stricter
/// 5 mA); r.m.s. = peak x sqrt(phase x 2 x f) for symmetric biphasic pulses.
#[test]
fn tens_rms_current_is_clamped_to_the_cap() {
    let gov = gov_with(&[(TENS_STRICT, "tens-strict.toml")], normal_patient());
    // 10 mA peak, 250 us, 100 Hz biphasic: duty 0.05, r.m.s. 2.24 mA: fine. 30 mA would be 6.7.
    let s = only(
        &gov,
        block(
            "t",
            "tens-strict",
            0.0,
            vec![step(
                0.0,
                5.0,
                "ch1",
                "lower_leg_lateral:left",
                tens4(9.0, 250.0, 100.0),
            )],
        ),
    );
    assert_eq!(s.verdict, Verdict::Allow, "{:?}", s.findings);
    let s = only(
        &gov,
        block(
            "t",
            "tens-strict",
            0.0,
            vec![step(
                0.0,
                5.0,
                "ch1",
                "thigh:left",
                tens4(30.0, 40.0, 100.0),
            )],
        ),
    );
    assert!(
        has(&s, "device.electrical", Verdict::Refuse),
        "40 us is below the channel's 50 us: {:?}",
        s.findings
    );
}

/// clinical-facts.md 'Typical charge': 80 mA x 250 us = 20 uC per phase; the cap is a clinic
/// setting (10 uC here), and both the r.m.s. and the charge caps clamp the amplitude.
#[test]
fn tens_charge_per_phase_and_rms_clamp_the_amplitude() {
    let gov = gov_with(&[(TENS_STRICT, "tens-strict.toml")], normal_patient());
    let steps = vec![
        step(0.0, 15.0, "ch1", "thigh:left", tens4(10.0, 250.0, 100.0)),
        step(15.0, 60.0, "ch1", "thigh:left", tens4(50.0, 250.0, 100.0)),
    ];
    let pre = gov.precheck(&[block("t", "tens-strict", 0.0, steps)]);
    let s = &pre.steps[1];
    assert_eq!(s.verdict, Verdict::Clamp, "{:?}", s.findings);
    assert!(
        has(s, "tens.charge_per_phase", Verdict::Clamp) && has(s, "tens.rms", Verdict::Clamp),
        "{:?}",
        s.findings
    );
    let Some(Approved {
        setpoint: Setpoint::Electrical(e),
        ..
    }) = s.approved
    else {
        panic!("not approved")
    };
    // Charge cap 10 uC at 250 us is 40 mA; r.m.s. cap 5 mA at duty 0.05 is 22.4 mA: the lower wins.
    assert!(
        (e.amplitude_ma - 5.0 / 0.05f64.sqrt()).abs() < 1e-9,
        "{}",
        e.amplitude_ma
    );
}

/// FDA powered muscle stimulator guidance: power density below 0.25 W/cm2, computed into the
/// profile's load (500 ohm) on the smaller of the plan's and the profile's electrode area.
#[test]
fn tens_power_density_is_computed_on_the_smaller_electrode() {
    let gov = governor(normal_patient());
    // 100 mA peak, 250 us, 150 Hz: r.m.s. 27.4 mA; into 500 ohm over 1 cm2 is 0.375 W/cm2.
    let e = ElectricalSetpoint {
        frequency_hz: 150.0,
        pulse_width_us: 250.0,
        amplitude_ma: 100.0,
        waveform: Waveform::SymmetricBiphasic,
        electrode_area_cm2: 1.0,
        burst_pulses: 0,
        burst_rate_hz: 0.0,
    };
    let pre = gov.precheck(&[block(
        "t",
        TENS_ID,
        0.0,
        vec![
            step(0.0, 5.0, "ch1", "thigh:left", tens(5.0, 250.0, 150.0)),
            step(5.0, 60.0, "ch1", "thigh:left", Setpoint::Electrical(e)),
        ],
    )]);
    let s = &pre.steps[1];
    assert!(
        has(s, "tens.power_density", Verdict::Clamp),
        "{:?}",
        s.findings
    );
}

/// clinical-facts.md 'Contraindications' (heat): absent sensation without temperature feedback
/// is refused; reduced sensation without it is a warning.
#[test]
fn heat_on_absent_sensation_without_a_skin_sensor_is_refused() {
    let gov = gov_with(&[(PAD_NO_SENSOR, "pad-bare.toml")], dpn_patient());
    let s = only(
        &gov,
        block(
            "h",
            "pad-bare",
            0.0,
            vec![step(
                0.0,
                600.0,
                "pad",
                "foot_plantar:left",
                heat(38.0, 5.0),
            )],
        ),
    );
    assert!(
        has(&s, "heat.no_sensor", Verdict::Refuse),
        "{:?}",
        s.findings
    );
    let s = only(
        &gov,
        block(
            "h",
            "pad-bare",
            0.0,
            vec![step(
                0.0,
                600.0,
                "pad",
                "lower_leg_posterior:left",
                heat(38.0, 5.0),
            )],
        ),
    );
    assert!(
        has(&s, "monitor.unsensed", Verdict::AllowWithWarning),
        "{:?}",
        s.findings
    );
}

/// clinical-facts.md 'Heat stacking': stacking is allowed only when every profile allows it
/// with a combined thermal budget, and only within the smallest budget.
#[test]
fn stacking_is_allowed_only_within_a_combined_budget() {
    let pad =
        format!("{PAD_NO_SENSOR}\n[combined]\nallow = true\nthermal_budget_mw_per_cm2 = 150.0\n")
            .replace(
                "contact_area_cm2 = 100.0",
                "contact_area_cm2 = 100.0\nskin_temp_sensor = true",
            );
    let laser = format!("{LLLT}\n[combined]\nallow = true\nthermal_budget_mw_per_cm2 = 150.0\n")
        .replace("id = \"lllt-808\"", "id = \"lllt-stack\"");
    let gov = gov_with(
        &[(&pad, "pad.toml"), (&laser, "laser.toml")],
        normal_patient(),
    );
    let blocks = |heat_w: f64| {
        vec![
            block(
                "h",
                "pad-bare",
                0.0,
                vec![step(0.0, 600.0, "pad", "thigh:left", heat(39.0, heat_w))],
            ),
            block(
                "l",
                "lllt-stack",
                60.0,
                vec![step(
                    0.0,
                    40.0,
                    "probe",
                    "ST34:left",
                    optical(808.0, 100.0, 1.0),
                )],
            ),
        ]
    };
    // 5 W over 100 cm2 = 50 mW/cm2, plus 100 mW/cm2 of laser = 150: within the budget.
    let pre = gov.precheck(&blocks(5.0));
    assert!(pre.can_arm(), "{}", pre.report);
    assert!(has(
        &pre.steps[1],
        "cross.thermal_budget",
        Verdict::AllowWithWarning
    ));
    // 10 W over 100 cm2 = 100 mW/cm2, plus 100 = 200: over the 150 budget.
    let pre = gov.precheck(&blocks(10.0));
    assert!(
        has(&pre.steps[1], "cross.thermal_budget", Verdict::Refuse),
        "{}",
        pre.report
    );
}

/// clinical-facts.md rule 2: objective sensing replaces the patient's feedback; a laser
/// without a power sensor is refused on skin with absent sensation.
#[test]
fn laser_without_power_sensor_is_refused_on_absent_sensation() {
    let bare = LLLT
        .replace("power_sensor = true", "power_sensor = false")
        .replace("id = \"lllt-808\"", "id = \"lllt-bare\"");
    let gov = gov_with(&[(&bare, "bare.toml")], dpn_patient());
    let s = only(
        &gov,
        block(
            "l",
            "lllt-bare",
            0.0,
            vec![step(
                0.0,
                30.0,
                "probe",
                "LR3:left",
                optical(808.0, 80.0, 1.0),
            )],
        ),
    );
    assert!(
        has(&s, "monitor.unsensed", Verdict::Refuse),
        "{:?}",
        s.findings
    );
    let s = only(
        &gov,
        block(
            "l",
            "lllt-bare",
            0.0,
            vec![step(
                0.0,
                30.0,
                "probe",
                "ST36:left",
                optical(808.0, 80.0, 1.0),
            )],
        ),
    );
    assert!(
        has(&s, "monitor.unsensed", Verdict::AllowWithWarning),
        "{:?}",
        s.findings
    );
}

/// clinical-facts.md optical contraindications: pregnant abdomen/low back refused; epilepsy
/// with pulsed 5-10 Hz visible light and recent irradiation need an override.
#[test]
fn optical_pregnancy_epilepsy_and_irradiation() {
    let mut p = normal_patient();
    for kind in [ConditionKind::Pregnancy, ConditionKind::Epilepsy] {
        p.contraindications.push(Condition {
            kind,
            site: None,
            note: None,
        });
    }
    p.contraindications.push(Condition {
        kind: ConditionKind::RecentIrradiation,
        site: Some(site("thigh:right")),
        note: None,
    });
    let red = LLLT
        .replace("wavelengths_nm = [808.0]", "wavelengths_nm = [660.0]")
        .replace("id = \"lllt-808\"", "id = \"lllt-660\"");
    let gov = gov_with(&[(&red, "red.toml")], p);
    let s = only(
        &gov,
        block(
            "l",
            LLLT_ID,
            0.0,
            vec![step(
                0.0,
                30.0,
                "probe",
                "lower_back:midline",
                optical(808.0, 80.0, 1.0),
            )],
        ),
    );
    assert!(
        has(&s, "optical.contraindication", Verdict::Refuse),
        "{:?}",
        s.findings
    );
    let mut pulsed = optical(660.0, 80.0, 1.0);
    if let Setpoint::Optical(o) = &mut pulsed {
        o.pulse_frequency_hz = 8.0;
        o.duty_cycle = 0.5;
    }
    let s = only(
        &gov,
        block(
            "l",
            "lllt-660",
            0.0,
            vec![step(0.0, 30.0, "probe", "thigh:left", pulsed)],
        ),
    );
    assert!(
        has(&s, "precaution.override", Verdict::Refuse)
            && s.findings.iter().any(|f| f.reason.contains("epilepsy")),
        "{:?}",
        s.findings
    );
    let s = only(
        &gov,
        block(
            "l",
            LLLT_ID,
            0.0,
            vec![step(
                0.0,
                30.0,
                "probe",
                "ST34:right",
                optical(808.0, 80.0, 1.0),
            )],
        ),
    );
    assert!(
        s.findings
            .iter()
            .any(|f| f.reason.contains("recent irradiation")),
        "{:?}",
        s.findings
    );
}

/// The plan's timing is not trusted either: a step beyond the longest session is refused.
#[test]
fn steps_beyond_the_longest_session_are_refused() {
    let gov = governor(normal_patient());
    let mut b = block(
        "l",
        LLLT_ID,
        0.0,
        vec![step(
            0.0,
            30.0,
            "probe",
            "ST36:left",
            optical(808.0, 80.0, 1.0),
        )],
    );
    b.start_offset_ms = u64::MAX - 5;
    let s = only(&gov, b);
    assert!(
        has(&s, "plan.timeline", Verdict::Refuse),
        "{:?}",
        s.findings
    );
}

/// ICNIRP medical exemption vs. insensate skin: the same beam is a warning on normal skin and
/// a clamp to MPE/1.2 on absent sensation (21 CFR 1040.11 allows +20 % output).
#[test]
fn absent_sensation_derates_the_mpe_by_the_output_tolerance() {
    let gov = governor(dpn_patient());
    let s = only(
        &gov,
        block(
            "a",
            ACU_ID,
            0.0,
            vec![step(
                0.0,
                20.0,
                "probe",
                "LR3:left",
                optical(808.0, 400.0, 1.0),
            )],
        ),
    );
    let Some(Approved {
        setpoint: Setpoint::Optical(o),
        ..
    }) = s.approved
    else {
        panic!("{:?}", s.findings)
    };
    let mpe = limits::skin_mpe_mw_per_cm2(808.0, 20.0, 1.0).unwrap_or(f64::NAN);
    assert!(
        (o.power_mw - mpe / 1.2).abs() < 1e-6,
        "{} vs {}",
        o.power_mw,
        mpe / 1.2
    );
    assert_eq!(s.sensation, Some(Sensation::Absent));
}

/// Every finding the governor can produce names a rule from the catalogue and its source.
#[test]
fn every_finding_cites_a_catalogued_rule() {
    let gov = governor(dpn_patient());
    let pre = gov.precheck(&[
        block(
            "a",
            ACU_ID,
            0.0,
            vec![
                step(0.0, 20.0, "probe", "BL1:left", optical(808.0, 400.0, 1.0)),
                step(30.0, 20.0, "probe", "LR3:left", optical(808.0, 400.0, 1.0)),
            ],
        ),
        block(
            "h",
            MIRE_ID,
            0.0,
            vec![step(
                0.0,
                3000.0,
                "pad-1",
                "foot_plantar:left",
                heat(45.0, 9.0),
            )],
        ),
    ]);
    for s in &pre.steps {
        for f in &s.findings {
            assert!(
                rules::ALL
                    .iter()
                    .any(|r| r.id == f.rule && r.source == f.source),
                "{f}"
            );
        }
    }
}
