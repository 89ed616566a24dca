//! Properties over random device profiles, patients, plans and telemetry:
//!
//! * no admitted command ever exceeds the profile or the patient-derated limit (checked by an
//!   oracle written from clinical-facts.md, independent of the governor's rule code);
//! * every e-stop, and every sequence where telemetry stops, ends with every source off.

use proptest::prelude::*;

use modalis_governor::*;
use modalis_sdk::{BodySite, Measurement, ModalityKind, Sensation, Setpoint, Waveform, dose};

use crate::common::*;

const SITES: &[&str] = &[
    "foot_dorsum:left",
    "foot_plantar:right",
    "LR3:left",
    "EX-LE10-1:left",
    "LR2:left",
    "ST36:left",
    "GB34:right",
    "lower_leg_lateral:left",
    "thigh:left",
    "lower_back:midline",
    "abdomen:midline",
    "periorbital:left",
    "BL1:right",
    "chest:left",
    "anterior_neck:midline",
];

const WAVELENGTHS: &[f64] = &[660.0, 808.0, 810.0, 904.0, 980.0, 1064.0];

/// A random device profile as TOML (so the loader is exercised too).
fn profile_toml() -> impl Strategy<Value = String> {
    (0..5usize, any::<u64>(), 0.0..1.0f64, 0.0..1.0f64, 0.0..1.0f64, any::<bool>(), any::<bool>()).prop_map(|(m, seed, a, b, c, sensor, scan)| {
        let id = format!("dev-{}", seed % 1_000_000);
        match m {
            0..=2 => {
                let modality = ["photobiomodulation", "class-4-laser", "laser-acupuncture"][m];
                let wl = WAVELENGTHS[(seed % WAVELENGTHS.len() as u64) as usize];
                let max_power = if m == 1 { 600.0 + a * 15_000.0 } else { 10.0 + a * 490.0 };
                let min_beam = 0.05 + b * 4.0;
                let max_beam = min_beam * (1.0 + c);
                let scan = if scan { format!("max_scan_area_cm2 = {}\n", max_beam * 10.0 + 200.0 * c) } else { String::new() };
                format!(
                    "id = \"{id}\"\nmodality = \"{modality}\"\n[[channels]]\nname = \"out\"\nkind = \"optical\"\n[channels.optical]\nwavelengths_nm = [{wl}]\nmax_power_mw = {max_power}\nmin_beam_area_cm2 = {min_beam}\nmax_beam_area_cm2 = {max_beam}\n{scan}max_pulse_frequency_hz = 1000.0\n[channels.optical.safety]\nkey_switch = true\ndoor_interlock = true\nemission_indicator = true\nshutter = true\npower_sensor = {sensor}\n"
                )
            }
            3 => format!(
                "id = \"{id}\"\nmodality = \"infrared-heat\"\n[[channels]]\nname = \"out\"\nkind = \"heat\"\n[channels.heat]\nmax_temp_c = {}\nmax_power_w = {}\ncontact_area_cm2 = {}\nskin_temp_sensor = {sensor}\n",
                35.0 + a * 15.0,
                1.0 + b * 100.0,
                10.0 + c * 400.0
            ),
            _ => format!(
                "id = \"{id}\"\nmodality = \"tens\"\n[[channels]]\nname = \"out\"\nkind = \"electrical\"\n[channels.electrical]\nmax_rms_ma = {}\nmax_peak_ma = {}\nwaveforms = [\"symmetric-biphasic\", \"asymmetric-biphasic\", \"monophasic\"]\nelectrode_area_cm2 = {}\nimpedance_monitor = {sensor}\n",
                5.0 + a * 75.0,
                10.0 + b * 140.0,
                1.0 + c * 49.0
            ),
        }
    })
}

fn sensation() -> impl Strategy<Value = Sensation> {
    prop_oneof![
        Just(Sensation::Normal),
        Just(Sensation::Reduced),
        Just(Sensation::Absent)
    ]
}

fn patient() -> impl Strategy<Value = PatientContext> {
    (
        sensation(),
        prop::collection::vec((0..SITES.len(), sensation()), 0..5),
        any::<bool>(),
    )
        .prop_map(|(default, entries, override_all)| {
            let mut p = PatientContext::new("PROP", Some(default));
            for (i, s) in entries {
                p.sensation.push(SensationEntry {
                    site: site(SITES[i]),
                    sensation: s,
                });
            }
            if override_all {
                p.precaution_overrides.push(PrecautionOverride {
                    precaution: Precaution::ReducedSensation,
                    modality: None,
                    site: None,
                    reason: "property test".into(),
                    clinician: "prop".into(),
                });
            }
            p
        })
}

/// A raw step: site index, duration, a kind selector and numbers in wide ranges (some out of
/// every range, some invalid).
#[derive(Debug, Clone)]
struct RawStep {
    site: usize,
    duration_s: f64,
    gap_s: f64,
    kind: usize,
    x: [f64; 4],
    scan: bool,
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

fn setpoint_for(p: &DeviceProfile, r: &RawStep) -> Setpoint {
    let [a, b, c, d] = r.x;
    let kind = match p.channels.first().map(ChannelProfile::kind) {
        // One step in ten asks for the wrong kind of output.
        Some(k) if r.kind != 0 => k,
        _ => modalis_sdk::ChannelKind::Heat,
    };
    let bad = if r.kind == 9 { f64::NAN } else { 1.0 };
    match (kind, &p.channels.first().map(|c| &c.spec)) {
        (modalis_sdk::ChannelKind::Optical, Some(ChannelSpec::Optical(o))) => {
            let beam = o.min_beam_area_cm2 + (o.max_beam_area_cm2 - o.min_beam_area_cm2) * b;
            let mut sp = optical(
                o.wavelengths_nm.first().copied().unwrap_or(808.0),
                a * o.max_power_mw * 1.5 * bad,
                beam,
            );
            if let (Setpoint::Optical(x), true) = (&mut sp, r.scan) {
                x.scan_area_cm2 = Some(beam + c * 250.0);
            }
            if d > 0.8
                && let Setpoint::Optical(x) = &mut sp
            {
                x.pulse_frequency_hz = 10.0;
                x.duty_cycle = 0.5;
            }
            sp
        }
        (modalis_sdk::ChannelKind::Electrical, _) => {
            let mut sp = tens(a * 60.0 * bad, 50.0 + b * 200.0, 1.0 + c * 149.0);
            if let Setpoint::Electrical(e) = &mut sp {
                e.electrode_area_cm2 = 0.5 + d * 50.0;
                e.waveform = if d > 0.9 {
                    Waveform::Monophasic
                } else {
                    Waveform::SymmetricBiphasic
                };
            }
            sp
        }
        _ => heat(30.0 + a * 20.0 * bad, b * 50.0),
    }
}

fn build_blocks(profiles: &[DeviceProfile], raw: &[Vec<RawStep>]) -> Vec<Block> {
    let mut blocks = Vec::new();
    for (i, (p, steps)) in profiles.iter().zip(raw).enumerate() {
        let mut t = 0.0;
        let mut plan = Vec::new();
        for r in steps {
            t += r.gap_s;
            plan.push(step(
                t,
                r.duration_s,
                "out",
                SITES[r.site],
                setpoint_for(p, r),
            ));
            t += r.duration_s;
        }
        blocks.push(block(&format!("b{i}"), &p.id, 5.0 + 40.0 * i as f64, plan));
    }
    blocks
}

/// Keeps only the steps the pre-check did not refuse, and repeats until the rest can be armed.
fn armable_subset(gov: &Governor, mut blocks: Vec<Block>) -> Option<(Precheck, Vec<Block>)> {
    for _ in 0..6 {
        let pre = gov.precheck(&blocks);
        if pre.can_arm() {
            return Some((pre, blocks));
        }
        let mut next = Vec::new();
        for b in &blocks {
            let mut nb = b.clone();
            nb.plan.steps = b
                .plan
                .steps
                .iter()
                .enumerate()
                .filter(|(i, _)| {
                    pre.steps
                        .iter()
                        .find(|s| s.step.block_id == b.block_id && s.step.step_index == *i)
                        .is_some_and(|s| s.verdict != Verdict::Refuse)
                })
                .map(|(_, s)| s.clone())
                .collect();
            if !nb.plan.steps.is_empty() && !next.iter().any(|x: &Block| x.block_id == nb.block_id)
            {
                next.push(nb);
            }
        }
        blocks = next;
    }
    None
}

/// The oracle: limits straight from clinical-facts.md, for one admitted setpoint.
fn oracle(
    p: &DeviceProfile,
    patient: &PatientContext,
    at: &BodySite,
    sp: &Setpoint,
    duration_ms: u64,
) -> Result<(), String> {
    let tol = |x: f64| x * (1.0 + 1e-6) + 1e-9;
    let sensation = patient.sensation_at(at).unwrap_or(Sensation::Absent);
    let region = at.body_region().ok_or("unknown site")?;
    let ch = p.channels.first().ok_or("no channel")?;
    match (sp, &ch.spec) {
        (Setpoint::Optical(o), ChannelSpec::Optical(c)) => {
            if region.is_ocular() {
                return Err("optical at the eye".into());
            }
            if o.power_mw > tol(c.max_power_mw) {
                return Err(format!(
                    "{} mW above the device's {}",
                    o.power_mw, c.max_power_mw
                ));
            }
            let area = o.scan_area_cm2.unwrap_or(c.min_beam_area_cm2);
            let irr = o.power_mw / area;
            let mpe =
                limits::skin_mpe_mw_per_cm2(o.wavelength_nm, duration_ms as f64 / 1000.0, area)
                    .ok_or("no MPE")?;
            let cap = match sensation {
                Sensation::Absent => mpe / 1.2,
                Sensation::Reduced => mpe,
                Sensation::Normal if ch.laser_class() == Some(LaserClass::Class4) => mpe,
                Sensation::Normal => f64::INFINITY,
            };
            if irr > tol(cap) {
                return Err(format!(
                    "{irr} mW/cm2 above the derated MPE {cap} ({sensation:?})"
                ));
            }
            if p.modality == ModalityKind::Photobiomodulation && irr > tol(100.0) {
                return Err(format!("LLLT {irr} mW/cm2 above 100"));
            }
        }
        (Setpoint::Heat(h), ChannelSpec::Heat(c)) => {
            let cap: f64 = if sensation == Sensation::Normal {
                43.0
            } else {
                40.0
            };
            if h.target_temp_c > tol(cap.min(c.max_temp_c)) {
                return Err(format!("{} C above {cap} ({sensation:?})", h.target_temp_c));
            }
            if h.power_limit_w > tol(c.max_power_w) {
                return Err("heat power above the device".into());
            }
            if sensation == Sensation::Absent && !c.skin_temp_sensor {
                return Err("heat on absent sensation without a sensor".into());
            }
        }
        (Setpoint::Electrical(e), ChannelSpec::Electrical(c)) => {
            if region.is_tens_forbidden() {
                return Err("TENS at a forbidden site".into());
            }
            if e.waveform == Waveform::Monophasic {
                return Err("monophasic".into());
            }
            let rms = dose::setpoint_rms_ma(e);
            if rms > tol(50.0_f64.min(c.max_rms_ma)) {
                return Err(format!("{rms} mA r.m.s."));
            }
            if dose::charge_per_phase_uc(e.amplitude_ma, e.pulse_width_us) > tol(40.0) {
                return Err("charge per phase".into());
            }
            let area = e.electrode_area_cm2.min(c.electrode_area_cm2);
            if sensation != Sensation::Normal && rms / area > tol(2.0) {
                return Err(format!("{} mA/cm2 on {sensation:?} skin", rms / area));
            }
        }
        (Setpoint::Off, _) => {}
        _ => return Err("setpoint kind does not match the channel".into()),
    }
    Ok(())
}

fn ready_all(sup: &mut Supervisor, profiles: &[DeviceProfile]) {
    for p in profiles {
        for input in [
            Interlock::KeySwitch,
            Interlock::DoorClosed,
            Interlock::EmissionIndicator,
        ] {
            let _ = sup.interlock(&p.id, input, true, 0);
        }
    }
    let _ = sup.confirm_eyewear(true, 0);
}

fn scale(sp: &Setpoint, f: f64, g: f64) -> Setpoint {
    match *sp {
        Setpoint::Optical(mut o) => {
            o.power_mw *= f;
            if g > 0.9 {
                o.beam_area_cm2 *= 0.5;
            }
            Setpoint::Optical(o)
        }
        Setpoint::Heat(mut h) => {
            h.target_temp_c *= 0.9 + 0.2 * f / 3.0;
            h.power_limit_w *= f;
            Setpoint::Heat(h)
        }
        Setpoint::Electrical(mut e) => {
            e.amplitude_ma *= f;
            if g > 0.9 {
                e.frequency_hz *= 2.0;
            }
            Setpoint::Electrical(e)
        }
        Setpoint::Off => Setpoint::Off,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// No admitted command exceeds the device profile or the patient-derated limit.
    #[test]
    fn no_admitted_command_exceeds_profile_or_derated_limits(
        texts in prop::collection::vec(profile_toml(), 1..4),
        patient in patient(),
        raw in prop::collection::vec(prop::collection::vec(raw_step(), 1..5), 3),
        cmds in prop::collection::vec((0..64usize, 0.0..1.2f64, 0.0..3.0f64, 0.0..1.0f64, prop::option::of(30.0..45.0f64)), 1..40),
    ) {
        let mut profiles: Vec<DeviceProfile> = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            let t = t.replacen("id = \"dev-", &format!("id = \"d{i}-"), 1);
            match DeviceProfile::from_toml_str(&t, "random.toml") {
                Ok(p) => profiles.push(p),
                Err(e) => prop_assert!(false, "generated profile rejected: {e}\n{t}"),
            }
        }
        let gov = match Governor::new(profiles.clone(), patient.clone()) {
            Ok(g) => g,
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
        };
        let blocks = build_blocks(&profiles, &raw);
        let Some((pre, _)) = armable_subset(&gov, blocks) else { return Ok(()) };
        let Ok(mut sup) = gov.arm(&pre, 0) else { return Ok(()) };
        ready_all(&mut sup, &profiles);
        let approved: Vec<&StepVerdict> = pre.steps.iter().filter(|s| s.approved.is_some()).collect();
        if approved.is_empty() {
            return Ok(());
        }
        for (k, frac, factor, g, temp) in cmds {
            let Some(s) = approved.get(k % approved.len()) else { continue };
            let Some(a) = s.approved else { continue };
            let now = 3_000 + s.start_ms + (a.duration_ms as f64 * frac) as u64;
            let sp = scale(&a.setpoint, factor, g);
            let cmd = Command { device_id: s.device_id.clone(), channel: s.channel.clone(), site: s.site.clone(), setpoint: sp, step: s.step.clone() };
            let d = sup.admit(&cmd, now);
            if d.admitted() {
                let Some(p) = gov.profile(&s.device_id) else { continue };
                if let Err(why) = oracle(p, &patient, &s.site, &sp, a.duration_ms) {
                    prop_assert!(false, "admitted {sp:?} at {} on {}: {why}", s.site, s.device_id);
                }
                prop_assert!(sup.is_energised(&s.device_id, &s.channel) || sp == Setpoint::Off);
            }
            if let Some(t) = temp {
                let tel = Telemetry { device_id: s.device_id.clone(), channel: s.channel.clone(), measured_at_ms: now, measurement: Measurement::SkinTempC(t) };
                let _ = sup.observe(&tel, now);
            }
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
