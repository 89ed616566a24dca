//! Properties over random device profiles, patients, plans and telemetry:
//!
//! * no admitted command ever exceeds the profile or the patient-derated limit (checked by an
//!   oracle written from clinical-facts.md, independent of the governor's rule code);
//! * every e-stop, and every sequence where telemetry stops, ends with every source off.

use proptest::prelude::*;

use modalis_governor::testing::*;
use modalis_governor::*;
use modalis_sdk::{Measurement, Sensation};

use crate::common::*;

fn profile_text() -> impl Strategy<Value = String> {
    (
        0..5usize,
        any::<u64>(),
        0.0..1.0f64,
        0.0..1.0f64,
        0.0..1.0f64,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(m, seed, a, b, c, sensor, scan)| profile_toml(m, seed, a, b, c, sensor, scan))
}

fn sensation() -> impl Strategy<Value = Sensation> {
    prop_oneof![
        Just(Sensation::Normal),
        Just(Sensation::Reduced),
        Just(Sensation::Absent)
    ]
}

fn random_patient() -> impl Strategy<Value = PatientContext> {
    (
        sensation(),
        prop::collection::vec((0..SITES.len(), sensation()), 0..5),
        any::<bool>(),
    )
        .prop_map(|(default, entries, override_all)| patient(default, &entries, override_all))
}

fn raw_step() -> impl Strategy<Value = RawStep> {
    (
        0..SITES.len(),
        0.5..900.0f64,
        0.0..30.0f64,
        0..10usize,
        [0.0..1.0f64, 0.0..1.0f64, 0.0..1.0f64, 0.0..1.0f64],
        any::<bool>(),
    )
        .prop_map(|(site, duration_s, gap_s, kind, x, scan)| RawStep {
            site,
            duration_s,
            gap_s,
            kind,
            x,
            scan,
        })
}

fn command() -> impl Strategy<Value = CommandDraw> {
    (
        0..64usize,
        0.0..1.2f64,
        0.0..3.0f64,
        0.0..1.0f64,
        prop::option::of(30.0..45.0f64),
    )
        .prop_map(|(step, frac, factor, g, temp_c)| CommandDraw {
            step,
            frac,
            factor,
            g,
            temp_c,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// No admitted command exceeds the device profile or the patient-derated limit.
    #[test]
    fn no_admitted_command_exceeds_profile_or_derated_limits(
        texts in prop::collection::vec(profile_text(), 1..4),
        patient in random_patient(),
        raw in prop::collection::vec(prop::collection::vec(raw_step(), 1..5), 3),
        cmds in prop::collection::vec(command(), 1..40),
    ) {
        if let Err(why) = no_admitted_command_exceeds_limits(&texts, &patient, &raw, &cmds) {
            prop_assert!(false, "{why}");
        }
    }

    /// Every e-stop ends with every source off, and nothing is admitted until reset.
    #[test]
    fn estop_ends_with_every_source_off(
        raw in prop::collection::vec((0..64usize, 0.0..1.0f64), 1..30),
        at in 0u64..4_000_000,
    ) {
        let (gov, pre) = dpn_session();
        let Ok(mut sup) = gov.arm(&pre, 0) else { return Err(TestCaseError::fail("not armable")) };
        ready_all(&mut sup, gov.profiles());
        let approved: Vec<&StepVerdict> = pre.steps.iter().filter(|s| s.approved.is_some()).collect();
        for (k, frac) in &raw {
            let Some(s) = approved.get(k % approved.len()) else { continue };
            let Some(a) = s.approved else { continue };
            let now = s.start_ms + (a.duration_ms as f64 * frac) as u64;
            let cmd = Command { device_id: s.device_id.clone(), channel: s.channel.clone(), site: s.site.clone(), setpoint: a.setpoint, step: s.step.clone() };
            let _ = sup.admit(&cmd, now);
        }
        let actions = sup.estop("property", at);
        prop_assert!(!sup.any_energised(), "energised after e-stop: {:?}", sup.energised());
        prop_assert!(actions.iter().any(|a| matches!(a, Action::Alarm(al) if al.priority == AlarmPriority::High)));
        for s in &approved {
            let Some(a) = s.approved else { continue };
            let cmd = Command { device_id: s.device_id.clone(), channel: s.channel.clone(), site: s.site.clone(), setpoint: a.setpoint, step: s.step.clone() };
            prop_assert!(!sup.admit(&cmd, s.start_ms + 1).admitted());
        }
    }

    /// When telemetry stops, the sources are off within the staleness limit even while the
    /// runtime keeps renewing leases.
    #[test]
    fn stale_telemetry_ends_with_every_source_off(
        raw in prop::collection::vec((0..64usize, 0.0..0.5f64), 1..20),
        renew_every in 200u64..2_000,
        temps in prop::collection::vec(30.0..39.0f64, 1..10),
    ) {
        let (gov, pre) = dpn_session();
        let Ok(mut sup) = gov.arm(&pre, 0) else { return Err(TestCaseError::fail("not armable")) };
        ready_all(&mut sup, gov.profiles());
        // Admit steps that are running at t = 60 s (heat and TENS blocks).
        let t0 = 60_000;
        for (k, _) in &raw {
            let running: Vec<&StepVerdict> = pre.steps.iter().filter(|s| s.approved.is_some_and(|a| s.start_ms <= t0 && t0 < s.start_ms + a.duration_ms)).collect();
            let Some(s) = running.get(k % running.len().max(1)) else { continue };
            let Some(a) = s.approved else { continue };
            let cmd = Command { device_id: s.device_id.clone(), channel: s.channel.clone(), site: s.site.clone(), setpoint: a.setpoint, step: s.step.clone() };
            let _ = sup.admit(&cmd, t0);
        }
        // Some healthy telemetry, then silence.
        let mut now = t0;
        for t in &temps {
            now += 100;
            for (dev, ch) in sup.energised() {
                let m = if dev == TENS_ID { Measurement::ImpedanceOhm(800.0) } else { Measurement::SkinTempC(*t) };
                let _ = sup.observe(&Telemetry { device_id: dev, channel: ch, measured_at_ms: now, measurement: m }, now);
            }
        }
        let silence_from = now;
        while now <= silence_from + 5_000 + 2 * renew_every {
            now += renew_every;
            let _ = sup.renew_leases(now);
        }
        prop_assert!(!sup.any_energised(), "energised {} ms after the last reading: {:?}", now - silence_from, sup.energised());
    }
}

/// The DPN session of the examples (heat + TENS, then acupuncture), pre-checked.
fn dpn_session() -> (Governor, Precheck) {
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
    let acu_steps = ["ST36", "SP6", "LR3", "EX-LE10-1"]
        .iter()
        .enumerate()
        .map(|(i, p)| {
            step(
                25.0 * i as f64,
                20.0,
                "probe",
                &format!("{p}:left"),
                optical(808.0, 200.0, 1.0),
            )
        })
        .collect();
    let blocks = vec![
        block("heat", MIRE_ID, 0.0, heat_steps),
        block("tens", TENS_ID, 0.0, tens_steps),
        block("acu", ACU_ID, 1800.0, acu_steps),
    ];
    let pre = gov.precheck(&blocks);
    (gov, pre)
}
