//! Random scenarios for the governor, shared by its property tests (`tests/it/props.rs`,
//! proptest) and its fuzz target (`host/fuzz/fuzz_targets/governor.rs`, libFuzzer), so that
//! both check the one property with the one oracle:
//!
//! **No admitted command ever exceeds the device profile or the patient-derated limit.**
//!
//! The oracle ([`oracle`]) is written from clinical-facts.md, independently of the governor's
//! rule code. Only with the `testing` feature; nothing here is used in production.

use modalis_sdk::{
    BodySite, ElectricalSetpoint, HeatSetpoint, Measurement, ModalityKind, OpticalSetpoint,
    PlanStep, Sensation, SessionPlan, Setpoint, Waveform, dose,
};

use crate::{
    Block, ChannelProfile, ChannelSpec, Command, DeviceProfile, Governor, Interlock, LaserClass,
    PatientContext, Precaution, PrecautionOverride, Precheck, SensationEntry, StepVerdict,
    Supervisor, Telemetry, Verdict, limits,
};

/// Sites the scenarios use: feet, legs, acupuncture points, and sites no energy may reach.
pub const SITES: &[&str] = &[
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

/// Wavelengths of the random optical devices.
pub const WAVELENGTHS: &[f64] = &[660.0, 808.0, 810.0, 904.0, 980.0, 1064.0];

/// A site of [`SITES`] (or any valid site text).
///
/// # Panics
/// On a site the vocabulary does not know (a bug in the scenario, not an input).
pub fn site(s: &str) -> BodySite {
    match s.parse() {
        Ok(x) => x,
        Err(e) => panic!("site {s}: {e}"),
    }
}

/// A continuous optical setpoint.
pub fn optical(wavelength_nm: f64, power_mw: f64, beam_area_cm2: f64) -> Setpoint {
    Setpoint::Optical(OpticalSetpoint {
        wavelength_nm,
        power_mw,
        beam_area_cm2,
        pulse_frequency_hz: 0.0,
        duty_cycle: 1.0,
        scan_area_cm2: None,
    })
}

/// A heat setpoint.
pub fn heat(target_temp_c: f64, power_limit_w: f64) -> Setpoint {
    Setpoint::Heat(HeatSetpoint {
        target_temp_c,
        power_limit_w,
    })
}

/// A symmetric biphasic TENS setpoint on 25 cm2 electrodes.
pub fn tens(amplitude_ma: f64, pulse_width_us: f64, frequency_hz: f64) -> Setpoint {
    Setpoint::Electrical(ElectricalSetpoint {
        frequency_hz,
        pulse_width_us,
        amplitude_ma,
        waveform: Waveform::SymmetricBiphasic,
        electrode_area_cm2: 25.0,
        burst_pulses: 0,
        burst_rate_hz: 0.0,
    })
}

/// A plan step, times in seconds.
pub fn step(
    offset_s: f64,
    duration_s: f64,
    channel: &str,
    at: &str,
    setpoint: Setpoint,
) -> PlanStep {
    PlanStep {
        offset_ms: (offset_s * 1000.0) as u64,
        duration_ms: (duration_s * 1000.0) as u64,
        channel: channel.to_string(),
        site: site(at),
        setpoint,
        label: String::new(),
    }
}

/// A block on `device` starting at `start_s`.
pub fn block(id: &str, device: &str, start_s: f64, steps: Vec<PlanStep>) -> Block {
    Block {
        block_id: id.to_string(),
        plugin_id: format!("{device}-plugin"),
        device_id: device.to_string(),
        start_offset_ms: (start_s * 1000.0) as u64,
        plan: SessionPlan {
            steps,
            notes: vec![],
        },
    }
}

/// A random one-channel device profile, as TOML (so the loader is exercised too), from a
/// modality selector `m` (0-2 optical, 3 heat, 4 TENS), a seed and three numbers in [0, 1].
pub fn profile_toml(
    m: usize,
    seed: u64,
    a: f64,
    b: f64,
    c: f64,
    sensor: bool,
    scan: bool,
) -> String {
    let id = format!("dev-{}", seed % 1_000_000);
    match m % 5 {
        m @ 0..=2 => {
            let modality = ["photobiomodulation", "class-4-laser", "laser-acupuncture"][m];
            let wl = WAVELENGTHS[(seed % WAVELENGTHS.len() as u64) as usize];
            let max_power = if m == 1 {
                600.0 + a * 15_000.0
            } else {
                10.0 + a * 490.0
            };
            let min_beam = 0.05 + b * 4.0;
            let max_beam = min_beam * (1.0 + c);
            let scan = if scan {
                format!("max_scan_area_cm2 = {}\n", max_beam * 10.0 + 200.0 * c)
            } else {
                String::new()
            };
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
}

/// A patient: a default sensation, sensation per site (indices into [`SITES`]), and
/// optionally a clinician's override of the reduced-sensation precaution everywhere.
pub fn patient(
    default: Sensation,
    entries: &[(usize, Sensation)],
    override_all: bool,
) -> PatientContext {
    let mut p = PatientContext::new("PROP", Some(default));
    for &(i, s) in entries {
        p.sensation.push(SensationEntry {
            site: site(SITES[i % SITES.len()]),
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
}

/// A raw step: a site index, a duration, a gap before it, a kind selector and numbers in [0, 1]
/// mapped into wide ranges (some out of every range, some invalid).
#[derive(Debug, Clone)]
pub struct RawStep {
    /// Index into [`SITES`].
    pub site: usize,
    /// Seconds.
    pub duration_s: f64,
    /// Seconds after the previous step.
    pub gap_s: f64,
    /// 0: the wrong kind of output; 9: a NaN; else ordinary.
    pub kind: usize,
    /// Numbers in [0, 1].
    pub x: [f64; 4],
    /// Scanned, for optical outputs.
    pub scan: bool,
}

/// One command the runtime tries once armed: an approved step (index modulo their number),
/// when in it, a factor on its output, a geometry selector, and a skin temperature reading.
#[derive(Debug, Clone, Copy)]
pub struct CommandDraw {
    /// Which approved step.
    pub step: usize,
    /// Where in its window, 0-1.
    pub frac: f64,
    /// Output factor, 0-3.
    pub factor: f64,
    /// Over 0.9 changes the geometry (beam area, frequency).
    pub g: f64,
    /// A skin temperature reading after the command.
    pub temp_c: Option<f64>,
}

/// The setpoint a raw step asks of profile `p`.
pub fn setpoint_for(p: &DeviceProfile, r: &RawStep) -> Setpoint {
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

/// One block per profile from its raw steps, placed 40 s apart.
pub fn build_blocks(profiles: &[DeviceProfile], raw: &[Vec<RawStep>]) -> Vec<Block> {
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
                SITES[r.site % SITES.len()],
                setpoint_for(p, r),
            ));
            t += r.duration_s;
        }
        blocks.push(block(&format!("b{i}"), &p.id, 5.0 + 40.0 * i as f64, plan));
    }
    blocks
}

/// Keeps only the steps the pre-check did not refuse, and repeats until the rest can be armed.
pub fn armable_subset(gov: &Governor, mut blocks: Vec<Block>) -> Option<(Precheck, Vec<Block>)> {
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
pub fn oracle(
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

/// Every interlock closed and eyewear confirmed: only the limits stand between a command and
/// a device.
pub fn ready_all(sup: &mut Supervisor, profiles: &[DeviceProfile]) {
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

/// An approved setpoint with its output scaled by `f` (and its geometry changed when `g` is
/// over 0.9): what a runtime or a closed loop might ask for instead.
pub fn scale(sp: &Setpoint, f: f64, g: f64) -> Setpoint {
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

/// The property. Loads the profiles, pre-checks the plans, arms what can be armed, then tries
/// every drawn command (with skin temperature readings between them): `Err` names the first
/// admitted command the oracle finds over a limit, or a generated profile the loader refused.
/// Scenarios that cannot be armed pass (there is nothing to admit).
pub fn no_admitted_command_exceeds_limits(
    profile_texts: &[String],
    patient: &PatientContext,
    raw: &[Vec<RawStep>],
    cmds: &[CommandDraw],
) -> Result<(), String> {
    let mut profiles: Vec<DeviceProfile> = Vec::new();
    for (i, t) in profile_texts.iter().enumerate() {
        let t = t.replacen("id = \"dev-", &format!("id = \"d{i}-"), 1);
        match DeviceProfile::from_toml_str(&t, "random.toml") {
            Ok(p) => profiles.push(p),
            Err(e) => return Err(format!("generated profile rejected: {e}\n{t}")),
        }
    }
    let gov = Governor::new(profiles.clone(), patient.clone()).map_err(|e| e.to_string())?;
    let blocks = build_blocks(&profiles, raw);
    let Some((pre, _)) = armable_subset(&gov, blocks) else {
        return Ok(());
    };
    let Ok(mut sup) = gov.arm(&pre, 0) else {
        return Ok(());
    };
    ready_all(&mut sup, &profiles);
    let approved: Vec<&StepVerdict> = pre.steps.iter().filter(|s| s.approved.is_some()).collect();
    if approved.is_empty() {
        return Ok(());
    }
    for c in cmds {
        let Some(s) = approved.get(c.step % approved.len()) else {
            continue;
        };
        let Some(a) = s.approved else { continue };
        let now = 3_000 + s.start_ms + (a.duration_ms as f64 * c.frac.clamp(0.0, 1.0)) as u64;
        let sp = scale(&a.setpoint, c.factor, c.g);
        let cmd = Command {
            device_id: s.device_id.clone(),
            channel: s.channel.clone(),
            site: s.site.clone(),
            setpoint: sp,
            step: s.step.clone(),
        };
        let d = sup.admit(&cmd, now);
        if d.admitted() {
            let Some(p) = gov.profile(&s.device_id) else {
                continue;
            };
            oracle(p, patient, &s.site, &sp, a.duration_ms).map_err(|why| {
                format!("admitted {sp:?} at {} on {}: {why}", s.site, s.device_id)
            })?;
            if !(sup.is_energised(&s.device_id, &s.channel) || sp == Setpoint::Off) {
                return Err(format!(
                    "admitted {sp:?} but {} is not energised",
                    s.device_id
                ));
            }
        }
        if let Some(t) = c.temp_c {
            let tel = Telemetry {
                device_id: s.device_id.clone(),
                channel: s.channel.clone(),
                measured_at_ms: now,
                measurement: Measurement::SkinTempC(t),
            };
            let _ = sup.observe(&tel, now);
        }
    }
    Ok(())
}
