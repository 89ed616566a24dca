//! The per-step rules: device envelope and physical limits (used by the pre-check and again,
//! as defence in depth, at every `admit`), and the patient's contraindications and
//! precautions (pre-check only: the patient context does not change during a session).
//!
//! Rules push a [`Finding`] only when they have something to say, so the path of a setpoint
//! inside every limit allocates nothing.

use modalis_sdk::{
    BodyRegion, ElectricalSetpoint, HeatSetpoint, ModalityKind, OpticalSetpoint, Sensation,
    Setpoint, Waveform, dose,
};

use crate::limits::{LaserClass, Limits, ca, skin_mpe_mw_per_cm2};
use crate::patient::{ConditionKind, PatientContext, Precaution};
use crate::profile::{
    ChannelProfile, ChannelSpec, DeviceProfile, ElectricalChannel, Emitter, HeatChannel,
    OpticalChannel,
};
use crate::rules::{self, Rule};
use crate::site::SiteInfo;
use crate::verdict::{Finding, Value, Verdict, v};

/// Relative slack on comparisons, so that a value clamped exactly to a cap passes the same cap
/// when re-checked after floating-point round trips.
const EPS: f64 = 1e-9;

/// Whether `value` is above `cap` by more than rounding noise.
pub(crate) fn exceeds(value: f64, cap: f64) -> bool {
    value > cap * (1.0 + EPS) + 1e-12
}

/// Everything the per-step rules need about where and on what a step runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepCtx<'a> {
    pub profile: &'a DeviceProfile,
    pub channel: &'a ChannelProfile,
    pub limits: &'a Limits,
    pub sensation: Sensation,
    pub region: BodyRegion,
    pub duration_ms: u64,
}

fn push(out: &mut Vec<Finding>, rule: Rule, verdict: Verdict, reason: String, values: Vec<Value>) {
    out.push(Finding::new(rule, verdict, reason, values));
}

fn sensation_str(s: Sensation) -> &'static str {
    match s {
        Sensation::Normal => "normal",
        Sensation::Reduced => "reduced",
        Sensation::Absent => "absent",
    }
}

/// The area safety ceilings are computed on: the scan area when the beam is scanned, else the
/// smallest spot the device's optics produce (the plan's own figure is not believed).
pub(crate) fn optical_safety_area_cm2(o: &OpticalChannel, sp: &OpticalSetpoint) -> f64 {
    sp.scan_area_cm2.unwrap_or(o.min_beam_area_cm2)
}

/// Checks the numbers of a setpoint: finite, non-negative, positive where they divide.
/// Returns false (with a refusal) when they cannot be used at all.
pub(crate) fn check_numbers(sp: &Setpoint, duration_ms: u64, out: &mut Vec<Finding>) -> bool {
    let mut ok = true;
    for (name, value) in sp.numbers() {
        if !(value.is_finite() && value >= 0.0) {
            push(
                out,
                rules::PLAN_NUMBER,
                Verdict::Refuse,
                format!("{name} = {value}: expected a finite number >= 0"),
                vec![v(name, value, "")],
            );
            ok = false;
        }
    }
    if !ok {
        return false;
    }
    let must_be_positive: &[(&'static str, f64)] = match sp {
        Setpoint::Optical(o) => &[
            ("wavelength_nm", o.wavelength_nm),
            ("beam_area_cm2", o.beam_area_cm2),
            ("duty_cycle", o.duty_cycle),
        ],
        Setpoint::Electrical(e) => &[
            ("frequency_hz", e.frequency_hz),
            ("pulse_width_us", e.pulse_width_us),
            ("electrode_area_cm2", e.electrode_area_cm2),
        ],
        Setpoint::Heat(_) | Setpoint::Off => &[],
    };
    for &(name, value) in must_be_positive {
        if value <= 0.0 {
            push(
                out,
                rules::PLAN_NUMBER,
                Verdict::Refuse,
                format!("{name} = {value}: expected a number > 0"),
                vec![v(name, value, "")],
            );
            ok = false;
        }
    }
    if let Setpoint::Optical(o) = sp {
        if o.duty_cycle > 1.0 {
            push(
                out,
                rules::PLAN_NUMBER,
                Verdict::Refuse,
                format!(
                    "duty_cycle = {}: expected a fraction in (0, 1]",
                    o.duty_cycle
                ),
                vec![v("duty_cycle", o.duty_cycle, "")],
            );
            ok = false;
        }
        if o.scan_area_cm2.is_some_and(|a| a <= 0.0) {
            push(
                out,
                rules::PLAN_NUMBER,
                Verdict::Refuse,
                "scan_area_cm2 must be > 0 when given".into(),
                vec![],
            );
            ok = false;
        }
    }
    if sp.is_energy() && duration_ms == 0 {
        push(
            out,
            rules::PLAN_NUMBER,
            Verdict::Refuse,
            "an energy step must last longer than 0 ms".into(),
            vec![],
        );
        ok = false;
    }
    ok
}

/// Device envelope and physical limits for one setpoint; clamps `sp` in place and records why.
/// Call [`check_numbers`] first.
pub(crate) fn check_setpoint(ctx: &StepCtx<'_>, sp: &mut Setpoint, out: &mut Vec<Finding>) {
    match (sp, &ctx.channel.spec) {
        (Setpoint::Off, _) => {}
        (Setpoint::Optical(o), ChannelSpec::Optical(ch)) => check_optical(ctx, ch, o, out),
        (Setpoint::Heat(h), ChannelSpec::Heat(ch)) => check_heat(ctx, ch, h, out),
        (Setpoint::Electrical(e), ChannelSpec::Electrical(ch)) => check_electrical(ctx, ch, e, out),
        (sp, spec) => {
            let kind = sp.channel_kind().map_or("off", |k| k.as_str());
            let ch = match spec {
                ChannelSpec::Optical(_) => "optical",
                ChannelSpec::Heat(_) => "heat",
                ChannelSpec::Electrical(_) => "electrical",
            };
            push(
                out,
                rules::PLAN_KIND,
                Verdict::Refuse,
                format!(
                    "a {kind} setpoint on {} channel {:?}, which is {ch} (device modality {})",
                    ctx.profile.id, ctx.channel.name, ctx.profile.modality
                ),
                vec![],
            );
        }
    }
}

fn check_optical(
    ctx: &StepCtx<'_>,
    ch: &OpticalChannel,
    sp: &mut OpticalSetpoint,
    out: &mut Vec<Finding>,
) {
    let lim = ctx.limits;
    if ctx.region.is_ocular() {
        push(
            out,
            rules::OPTICAL_OCULAR,
            Verdict::Refuse,
            format!(
                "optical emission aimed at the {} region is never allowed",
                ctx.region
            ),
            vec![],
        );
        return;
    }
    if !ch.emits(sp.wavelength_nm) {
        push(
            out,
            rules::DEVICE_WAVELENGTH,
            Verdict::Refuse,
            format!(
                "{} nm is not a wavelength of {} channel {:?} ({:?} nm +/- {} nm)",
                sp.wavelength_nm,
                ctx.profile.id,
                ctx.channel.name,
                ch.wavelengths_nm,
                ch.wavelength_tolerance_nm
            ),
            vec![v("wavelength", sp.wavelength_nm, "nm")],
        );
        return;
    }
    if ca(sp.wavelength_nm).is_none() {
        push(
            out,
            rules::OPTICAL_MPE,
            Verdict::Refuse,
            format!(
                "no skin MPE is known at {} nm (table covers 400-1400 nm)",
                sp.wavelength_nm
            ),
            vec![v("wavelength", sp.wavelength_nm, "nm")],
        );
        return;
    }
    let mut refused = false;
    if sp.beam_area_cm2 < ch.min_beam_area_cm2 * (1.0 - EPS)
        || exceeds(sp.beam_area_cm2, ch.max_beam_area_cm2)
    {
        push(
            out,
            rules::DEVICE_BEAM_AREA,
            Verdict::Refuse,
            format!(
                "beam area {} cm2 is outside what the optics produce ({}-{} cm2)",
                sp.beam_area_cm2, ch.min_beam_area_cm2, ch.max_beam_area_cm2
            ),
            vec![
                v("beam_area", sp.beam_area_cm2, "cm2"),
                v("min", ch.min_beam_area_cm2, "cm2"),
                v("max", ch.max_beam_area_cm2, "cm2"),
            ],
        );
        refused = true;
    }
    if sp.pulse_frequency_hz == 0.0 {
        if sp.duty_cycle < 1.0 {
            push(
                out,
                rules::DEVICE_PULSE,
                Verdict::Refuse,
                format!(
                    "continuous wave (pulse_frequency_hz = 0) must have duty_cycle 1, got {}",
                    sp.duty_cycle
                ),
                vec![v("duty_cycle", sp.duty_cycle, "")],
            );
            refused = true;
        }
    } else {
        match ch.max_pulse_frequency_hz {
            None => {
                push(
                    out,
                    rules::DEVICE_PULSE,
                    Verdict::Refuse,
                    format!(
                        "{} Hz pulsing asked of a continuous-wave channel",
                        sp.pulse_frequency_hz
                    ),
                    vec![v("pulse_frequency", sp.pulse_frequency_hz, "Hz")],
                );
                refused = true;
            }
            Some(max) if exceeds(sp.pulse_frequency_hz, max) => {
                push(
                    out,
                    rules::DEVICE_PULSE,
                    Verdict::Refuse,
                    format!(
                        "{} Hz is above the channel's {} Hz",
                        sp.pulse_frequency_hz, max
                    ),
                    vec![
                        v("pulse_frequency", sp.pulse_frequency_hz, "Hz"),
                        v("max", max, "Hz"),
                    ],
                );
                refused = true;
            }
            Some(_) => {}
        }
    }
    if let Some(scan) = sp.scan_area_cm2 {
        match ch.max_scan_area_cm2 {
            None => {
                push(
                    out,
                    rules::DEVICE_SCAN_AREA,
                    Verdict::Refuse,
                    format!("a scan over {scan} cm2 asked of a channel that cannot scan"),
                    vec![v("scan_area", scan, "cm2")],
                );
                refused = true;
            }
            Some(max) if exceeds(scan, max) || scan < sp.beam_area_cm2 * (1.0 - EPS) => {
                push(
                    out,
                    rules::DEVICE_SCAN_AREA,
                    Verdict::Refuse,
                    format!(
                        "scan area {scan} cm2 must be at least the beam ({} cm2) and at most {max} cm2",
                        sp.beam_area_cm2
                    ),
                    vec![v("scan_area", scan, "cm2"), v("max", max, "cm2")],
                );
                refused = true;
            }
            Some(_) => {}
        }
    }
    if refused {
        return;
    }

    // Power ceilings: the device's maximum, the skin MPE (derated by sensation), the Class 4
    // irradiance cap, the LLLT irradiance cap. The lowest wins; each one exceeded is reported.
    let area = optical_safety_area_cm2(ch, sp);
    let requested = sp.power_mw;
    let mut cap = f64::INFINITY;
    if exceeds(requested, ch.max_power_mw) {
        push(
            out,
            rules::DEVICE_POWER,
            Verdict::Clamp,
            format!(
                "{requested} mW is above the channel's maximum {} mW",
                ch.max_power_mw
            ),
            vec![v("power", requested, "mW"), v("max", ch.max_power_mw, "mW")],
        );
        cap = cap.min(ch.max_power_mw);
    }
    let exposure_s = ctx.duration_ms as f64 / 1000.0;
    let irradiance = requested / area;
    if let Some(mpe) = skin_mpe_mw_per_cm2(sp.wavelength_nm, exposure_s, area) {
        let fraction = lim.mpe_fraction(ctx.sensation);
        let mpe_cap = mpe * fraction;
        if exceeds(irradiance, mpe_cap) {
            let class = ctx.channel.laser_class();
            let values = vec![
                v("irradiance", irradiance, "mW/cm2"),
                v("mpe", mpe, "mW/cm2"),
                v("cap", mpe_cap, "mW/cm2"),
                v("area", area, "cm2"),
                v("exposure", exposure_s, "s"),
            ];
            if ctx.sensation != Sensation::Normal {
                push(
                    out,
                    rules::OPTICAL_MPE,
                    Verdict::Clamp,
                    format!(
                        "{irradiance:.1} mW/cm2 at {} nm for {exposure_s} s is above the skin MPE cap {mpe_cap:.1} mW/cm2 on skin with {} sensation; power clamped",
                        sp.wavelength_nm,
                        sensation_str(ctx.sensation)
                    ),
                    values,
                );
                cap = cap.min(mpe_cap * area);
            } else if class == Some(LaserClass::Class4) {
                let how = if sp.scan_area_cm2.is_some() {
                    "averaged over the scan area"
                } else {
                    "with the beam held still (no scan_area_cm2)"
                };
                push(
                    out,
                    rules::OPTICAL_CLASS4,
                    Verdict::Clamp,
                    format!(
                        "Class 4 beam {how}: {irradiance:.1} mW/cm2 is above the skin MPE {mpe:.1} mW/cm2; power clamped to the irradiance cap"
                    ),
                    values,
                );
                cap = cap.min(mpe_cap * area);
            } else {
                push(
                    out,
                    rules::OPTICAL_MPE,
                    Verdict::AllowWithWarning,
                    format!(
                        "{irradiance:.1} mW/cm2 is above the skin MPE {mpe:.1} mW/cm2; allowed as deliberate treatment of sensate target skin (ICNIRP medical exemption)"
                    ),
                    values,
                );
            }
        }
    }
    if ctx.profile.modality == ModalityKind::Photobiomodulation
        && exceeds(irradiance, lim.lllt_irradiance_max_mw_per_cm2)
    {
        push(
            out,
            rules::OPTICAL_LLLT_IRRADIANCE,
            Verdict::Clamp,
            format!(
                "{irradiance:.1} mW/cm2 is above the LLLT cap {} mW/cm2 (heating); power clamped",
                lim.lllt_irradiance_max_mw_per_cm2
            ),
            vec![
                v("irradiance", irradiance, "mW/cm2"),
                v("cap", lim.lllt_irradiance_max_mw_per_cm2, "mW/cm2"),
            ],
        );
        cap = cap.min(lim.lllt_irradiance_max_mw_per_cm2 * area);
    }
    if requested > cap {
        sp.power_mw = cap;
    }
}

fn check_heat(ctx: &StepCtx<'_>, ch: &HeatChannel, sp: &mut HeatSetpoint, out: &mut Vec<Finding>) {
    let lim = ctx.limits;
    if ctx.region.is_ocular() {
        push(
            out,
            rules::OPTICAL_OCULAR,
            Verdict::Refuse,
            format!(
                "a heat source on the {} region is never allowed",
                ctx.region
            ),
            vec![],
        );
        return;
    }
    if ctx.sensation == Sensation::Absent && !ch.skin_temp_sensor {
        push(
            out,
            rules::HEAT_NO_SENSOR,
            Verdict::Refuse,
            format!(
                "heat on skin with absent sensation needs a skin temperature sensor; {} channel {:?} has none",
                ctx.profile.id, ctx.channel.name
            ),
            vec![],
        );
        return;
    }
    let requested = sp.target_temp_c;
    let mut cap = f64::INFINITY;
    if exceeds(requested, ch.max_temp_c) {
        push(
            out,
            rules::DEVICE_HEAT,
            Verdict::Clamp,
            format!(
                "target {requested} C is above the device's {} C",
                ch.max_temp_c
            ),
            vec![v("target", requested, "C"), v("max", ch.max_temp_c, "C")],
        );
        cap = cap.min(ch.max_temp_c);
    }
    let site_cap = lim.heat_target_max_c(ctx.sensation);
    if exceeds(requested, site_cap) {
        push(
            out,
            rules::HEAT_TEMPERATURE,
            Verdict::Clamp,
            format!(
                "target {requested} C is above {site_cap} C allowed on skin with {} sensation; clamped",
                sensation_str(ctx.sensation)
            ),
            vec![v("target", requested, "C"), v("cap", site_cap, "C")],
        );
        cap = cap.min(site_cap);
    }
    if requested > cap {
        sp.target_temp_c = cap;
    }
    if ctx.sensation == Sensation::Normal && exceeds(sp.target_temp_c, lim.heat_disclose_above_c) {
        push(
            out,
            rules::HEAT_DISCLOSURE,
            Verdict::AllowWithWarning,
            format!(
                "target {} C is above {} C: disclose to the patient",
                sp.target_temp_c, lim.heat_disclose_above_c
            ),
            vec![
                v("target", sp.target_temp_c, "C"),
                v("disclose_above", lim.heat_disclose_above_c, "C"),
            ],
        );
    }
    if exceeds(sp.power_limit_w, ch.max_power_w) {
        push(
            out,
            rules::DEVICE_HEAT,
            Verdict::Clamp,
            format!(
                "power limit {} W is above the device's {} W",
                sp.power_limit_w, ch.max_power_w
            ),
            vec![
                v("power_limit", sp.power_limit_w, "W"),
                v("max", ch.max_power_w, "W"),
            ],
        );
        sp.power_limit_w = ch.max_power_w;
    }
}

/// r.m.s. current per mA of peak amplitude for an electrical setpoint (0 when the pulses
/// would overlap, which the envelope check refuses).
pub(crate) fn rms_per_peak_ma(sp: &ElectricalSetpoint) -> f64 {
    dose::rms_current_ma(
        1.0,
        sp.pulse_width_us,
        sp.effective_pulse_rate_hz(),
        sp.waveform,
    )
}

/// The electrode area the governor believes: the smaller of the plan's and the profile's.
pub(crate) fn electrode_area_cm2(ch: &ElectricalChannel, sp: &ElectricalSetpoint) -> f64 {
    sp.electrode_area_cm2.min(ch.electrode_area_cm2)
}

fn check_electrical(
    ctx: &StepCtx<'_>,
    ch: &ElectricalChannel,
    sp: &mut ElectricalSetpoint,
    out: &mut Vec<Finding>,
) {
    let lim = ctx.limits;
    if ctx.region.is_tens_forbidden() {
        push(
            out,
            rules::TENS_PLACEMENT,
            Verdict::Refuse,
            format!(
                "electrical stimulation on the {} region is never allowed",
                ctx.region
            ),
            vec![],
        );
        return;
    }
    if sp.waveform == Waveform::Monophasic {
        push(
            out,
            rules::TENS_BALANCE,
            Verdict::Refuse,
            "monophasic output is not charge balanced (net d.c.)".into(),
            vec![],
        );
        return;
    }
    let mut refused = false;
    if !ch.waveforms.contains(&sp.waveform) {
        push(
            out,
            rules::DEVICE_ELECTRICAL,
            Verdict::Refuse,
            format!(
                "waveform {:?} is not one the channel produces ({:?})",
                sp.waveform, ch.waveforms
            ),
            vec![],
        );
        refused = true;
    }
    if sp.frequency_hz < ch.min_frequency_hz * (1.0 - EPS)
        || exceeds(sp.frequency_hz, ch.max_frequency_hz)
    {
        push(
            out,
            rules::DEVICE_ELECTRICAL,
            Verdict::Refuse,
            format!(
                "{} Hz is outside the channel's {}-{} Hz",
                sp.frequency_hz, ch.min_frequency_hz, ch.max_frequency_hz
            ),
            vec![v("frequency", sp.frequency_hz, "Hz")],
        );
        refused = true;
    }
    if sp.pulse_width_us < ch.min_pulse_width_us * (1.0 - EPS)
        || exceeds(sp.pulse_width_us, ch.max_pulse_width_us)
    {
        push(
            out,
            rules::DEVICE_ELECTRICAL,
            Verdict::Refuse,
            format!(
                "{} us per phase is outside the channel's {}-{} us",
                sp.pulse_width_us, ch.min_pulse_width_us, ch.max_pulse_width_us
            ),
            vec![v("pulse_width", sp.pulse_width_us, "us")],
        );
        refused = true;
    }
    let phases = dose::phases_per_pulse(sp.waveform);
    let duty =
        sp.pulse_width_us * phases * sp.frequency_hz.max(sp.effective_pulse_rate_hz()) * 1e-6;
    if duty >= 1.0 {
        push(
            out,
            rules::DEVICE_ELECTRICAL,
            Verdict::Refuse,
            format!(
                "{} us phases at {} Hz overlap",
                sp.pulse_width_us, sp.frequency_hz
            ),
            vec![v("duty", duty, "")],
        );
        refused = true;
    }
    if refused {
        return;
    }

    let area = electrode_area_cm2(ch, sp);
    if sp.electrode_area_cm2 > ch.electrode_area_cm2 * (1.0 + 0.05) {
        push(
            out,
            rules::DEVICE_ELECTRICAL,
            Verdict::AllowWithWarning,
            format!(
                "the plan claims {} cm2 electrodes; the profile's fitted electrodes are {} cm2, which the governor uses",
                sp.electrode_area_cm2, ch.electrode_area_cm2
            ),
            vec![
                v("plan_area", sp.electrode_area_cm2, "cm2"),
                v("profile_area", ch.electrode_area_cm2, "cm2"),
            ],
        );
    }
    let k = rms_per_peak_ma(sp);
    let amp = sp.amplitude_ma;
    let rms = amp * k;
    let mut cap = f64::INFINITY;
    if exceeds(amp, ch.max_peak_ma) {
        push(
            out,
            rules::DEVICE_ELECTRICAL,
            Verdict::Clamp,
            format!("{amp} mA peak is above the channel's {} mA", ch.max_peak_ma),
            vec![v("amplitude", amp, "mA"), v("max", ch.max_peak_ma, "mA")],
        );
        cap = cap.min(ch.max_peak_ma);
    }
    if k > 0.0 {
        let rms_cap = lim.tens_rms_max_ma.min(ch.max_rms_ma);
        if exceeds(rms, rms_cap) {
            push(
                out,
                rules::TENS_RMS,
                Verdict::Clamp,
                format!("{rms:.2} mA r.m.s. is above {rms_cap} mA r.m.s.; amplitude clamped"),
                vec![
                    v("rms", rms, "mA"),
                    v("cap", rms_cap, "mA"),
                    v("amplitude", amp, "mA"),
                ],
            );
            cap = cap.min(rms_cap / k);
        }
        let density = rms / area;
        if exceeds(density, lim.tens_density_warn_ma_per_cm2) {
            let values = vec![
                v("density", density, "mA/cm2"),
                v("limit", lim.tens_density_warn_ma_per_cm2, "mA/cm2"),
                v("area", area, "cm2"),
            ];
            if ctx.sensation == Sensation::Normal {
                push(
                    out,
                    rules::TENS_DENSITY,
                    Verdict::AllowWithWarning,
                    format!(
                        "{density:.2} mA r.m.s./cm2 is above {} mA/cm2: operator attention (skin irritation)",
                        lim.tens_density_warn_ma_per_cm2
                    ),
                    values,
                );
            } else {
                push(
                    out,
                    rules::TENS_DENSITY,
                    Verdict::Clamp,
                    format!(
                        "{density:.2} mA r.m.s./cm2 is above {} mA/cm2 on skin with {} sensation, which cannot report irritation; clamped",
                        lim.tens_density_warn_ma_per_cm2,
                        sensation_str(ctx.sensation)
                    ),
                    values,
                );
                cap = cap.min(lim.tens_density_warn_ma_per_cm2 * area / k);
            }
        }
        // Power density into the nominal load: P = I_rms^2 R / A.
        let power_density_w = (rms / 1000.0).powi(2) * ch.load_ohm / area;
        if exceeds(power_density_w, lim.tens_power_density_max_w_per_cm2) {
            let rms_max =
                (lim.tens_power_density_max_w_per_cm2 * area / ch.load_ohm).sqrt() * 1000.0;
            push(
                out,
                rules::TENS_POWER_DENSITY,
                Verdict::Clamp,
                format!(
                    "{power_density_w:.3} W/cm2 into {} ohm is above {} W/cm2; amplitude clamped",
                    ch.load_ohm, lim.tens_power_density_max_w_per_cm2
                ),
                vec![
                    v("power_density", power_density_w, "W/cm2"),
                    v("cap", lim.tens_power_density_max_w_per_cm2, "W/cm2"),
                ],
            );
            cap = cap.min(rms_max / k);
        }
    }
    let charge = dose::charge_per_phase_uc(amp, sp.pulse_width_us);
    if exceeds(charge, lim.tens_charge_per_phase_max_uc) {
        push(
            out,
            rules::TENS_CHARGE,
            Verdict::Clamp,
            format!(
                "{charge:.1} uC per phase is above {} uC; amplitude clamped",
                lim.tens_charge_per_phase_max_uc
            ),
            vec![
                v("charge", charge, "uC"),
                v("cap", lim.tens_charge_per_phase_max_uc, "uC"),
            ],
        );
        cap = cap.min(lim.tens_charge_per_phase_max_uc * 1000.0 / sp.pulse_width_us);
    }
    // Energy per pulse into the load: E = I^2 R t over all phases.
    let pulse_s = sp.pulse_width_us * 1e-6 * phases;
    let energy_mj = (amp / 1000.0).powi(2) * ch.load_ohm * pulse_s * 1000.0;
    if exceeds(energy_mj, lim.tens_energy_per_pulse_max_mj) {
        push(
            out,
            rules::TENS_ENERGY,
            Verdict::Clamp,
            format!(
                "{energy_mj:.1} mJ per pulse is above {} mJ; amplitude clamped",
                lim.tens_energy_per_pulse_max_mj
            ),
            vec![
                v("energy", energy_mj, "mJ"),
                v("cap", lim.tens_energy_per_pulse_max_mj, "mJ"),
            ],
        );
        cap = cap.min(
            (lim.tens_energy_per_pulse_max_mj / 1000.0 / (ch.load_ohm * pulse_s)).sqrt() * 1000.0,
        );
    }
    if amp > cap {
        sp.amplitude_ma = cap;
    }
}

/// Power density the source puts into the skin, mW/cm2, for a combined thermal budget.
pub(crate) fn power_density_mw_per_cm2(channel: &ChannelProfile, sp: &Setpoint) -> f64 {
    match (sp, &channel.spec) {
        (Setpoint::Optical(o), ChannelSpec::Optical(ch)) => {
            o.power_mw / optical_safety_area_cm2(ch, o)
        }
        (Setpoint::Heat(h), ChannelSpec::Heat(ch)) => {
            h.power_limit_w * 1000.0 / ch.contact_area_cm2
        }
        (Setpoint::Electrical(e), ChannelSpec::Electrical(ch)) => {
            let rms_a = e.amplitude_ma * rms_per_peak_ma(e) / 1000.0;
            rms_a * rms_a * ch.load_ohm / electrode_area_cm2(ch, e) * 1000.0
        }
        _ => 0.0,
    }
}

/// What the pre-check knows about the patient at one step's site.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PatientAt<'a> {
    pub patient: &'a PatientContext,
    /// The patient's sited conditions resolved once, in the order of `contraindications`.
    pub condition_sites: &'a [Option<SiteInfo>],
    /// The patient's overrides' sites, in the order of `precaution_overrides`.
    pub override_sites: &'a [Option<SiteInfo>],
    pub site: &'a SiteInfo,
    pub sensation: Sensation,
}

impl PatientAt<'_> {
    fn condition(&self, kind: ConditionKind) -> bool {
        self.patient
            .contraindications
            .iter()
            .zip(self.condition_sites)
            .any(|(c, s)| c.kind == kind && s.as_ref().is_none_or(|s| s.overlaps(self.site)))
    }

    fn precaution(
        &self,
        precaution: Precaution,
        modality: ModalityKind,
        what: &str,
        out: &mut Vec<Finding>,
    ) {
        let found = self
            .patient
            .precaution_overrides
            .iter()
            .zip(self.override_sites)
            .find(|(o, s)| {
                o.precaution == precaution
                    && o.modality.is_none_or(|m| m == modality)
                    && s.as_ref().is_none_or(|s| s.overlaps(self.site))
            })
            .map(|(o, _)| o);
        match found {
            Some(o) => push(
                out,
                rules::PRECAUTION,
                Verdict::AllowWithWarning,
                format!(
                    "{what}: precaution {} overridden by {}: {}",
                    precaution.as_str(),
                    o.clinician,
                    o.reason
                ),
                vec![],
            ),
            None => push(
                out,
                rules::PRECAUTION,
                Verdict::Refuse,
                format!(
                    "{what}: precaution {} needs an explicit override in the patient context ([[precaution_overrides]] precaution = \"{}\", with a reason)",
                    precaution.as_str(),
                    precaution.as_str()
                ),
                vec![],
            ),
        }
    }
}

fn pregnant_trunk(region: BodyRegion) -> bool {
    matches!(region, BodyRegion::Abdomen | BodyRegion::LowerBack)
}

/// Contraindications, precautions and monitoring for one step (pre-check only).
pub(crate) fn check_patient(
    ctx: &StepCtx<'_>,
    p: &PatientAt<'_>,
    sp: &Setpoint,
    out: &mut Vec<Finding>,
) {
    let modality = ctx.profile.modality;
    let site = &p.site.site;
    let refuse = |out: &mut Vec<Finding>, rule: Rule, reason: String| {
        push(out, rule, Verdict::Refuse, reason, vec![])
    };
    let insensate = p.sensation != Sensation::Normal;
    match (sp, &ctx.channel.spec) {
        (Setpoint::Optical(o), ChannelSpec::Optical(ch)) => {
            let r = rules::OPTICAL_CONTRAINDICATION;
            if p.patient.has(ConditionKind::Photosensitivity) {
                refuse(
                    out,
                    r,
                    "photosensitivity disorder: no optical treatment".into(),
                );
            }
            if p.condition(ConditionKind::Malignancy) {
                refuse(out, r, format!("known malignancy at {site}"));
            }
            if p.patient.has(ConditionKind::Pregnancy) && pregnant_trunk(ctx.region) {
                refuse(
                    out,
                    r,
                    format!(
                        "pregnancy: no optical treatment over the abdomen or low back ({site})"
                    ),
                );
            }
            if p.condition(ConditionKind::ActiveHaemorrhage) {
                refuse(out, r, format!("active haemorrhage at {site}"));
            }
            let class4 = ctx.channel.laser_class() == Some(LaserClass::Class4);
            if class4 && p.condition(ConditionKind::TopicalHeatingAgent) {
                refuse(
                    out,
                    rules::HEAT_CONTRAINDICATION,
                    format!("topical heating agent at {site}: no Class 4 laser (heat stacking)"),
                );
            }
            if insensate {
                p.precaution(
                    Precaution::ReducedSensation,
                    modality,
                    &format!("{site} has decreased sensation"),
                    out,
                );
            }
            if p.condition(ConditionKind::RecentIrradiation) {
                p.precaution(
                    Precaution::RecentIrradiation,
                    modality,
                    &format!("recent irradiation at {site}"),
                    out,
                );
            }
            if p.patient.has(ConditionKind::DemandPacemaker) || p.patient.has(ConditionKind::Icd) {
                p.precaution(
                    Precaution::Pacemaker,
                    modality,
                    "pacemaker or ICD (sources disagree for optical)",
                    out,
                );
            }
            // Visible light: below about 780 nm. Pulsed 5-10 Hz visible light is the epilepsy risk.
            if p.patient.has(ConditionKind::Epilepsy)
                && o.wavelength_nm < 780.0
                && (5.0..=10.0).contains(&o.pulse_frequency_hz)
            {
                p.precaution(
                    Precaution::Epilepsy,
                    modality,
                    "epilepsy with pulsed 5-10 Hz visible light",
                    out,
                );
            }
            if ch.emitter == Emitter::Laser && !ch.safety.power_sensor {
                monitor(
                    out,
                    p.sensation,
                    &format!(
                        "{} channel {:?} has no output power sensor",
                        ctx.profile.id, ctx.channel.name
                    ),
                );
            }
        }
        (Setpoint::Heat(_), ChannelSpec::Heat(ch)) => {
            let r = rules::HEAT_CONTRAINDICATION;
            if p.condition(ConditionKind::OpenWound) {
                refuse(out, r, format!("open wound at {site}: no heat"));
            }
            if p.condition(ConditionKind::TopicalHeatingAgent) {
                refuse(
                    out,
                    r,
                    format!("topical heating agent at {site}: no heat (heat stacking)"),
                );
            }
            if p.condition(ConditionKind::Malignancy) {
                refuse(out, r, format!("known malignancy at {site}: no heat"));
            }
            if insensate {
                p.precaution(
                    Precaution::ReducedSensation,
                    modality,
                    &format!("{site} has decreased sensation"),
                    out,
                );
            }
            if insensate && !ch.skin_temp_sensor && p.sensation == Sensation::Reduced {
                monitor(
                    out,
                    p.sensation,
                    &format!(
                        "{} channel {:?} has no skin temperature sensor",
                        ctx.profile.id, ctx.channel.name
                    ),
                );
            }
        }
        (Setpoint::Electrical(_), ChannelSpec::Electrical(ch)) => {
            let r = rules::TENS_CONTRAINDICATION;
            if p.patient.has(ConditionKind::DemandPacemaker) || p.patient.has(ConditionKind::Icd) {
                refuse(
                    out,
                    r,
                    "demand pacemaker or ICD: no electrical stimulation".into(),
                );
            }
            if p.patient.has(ConditionKind::Pregnancy) && pregnant_trunk(ctx.region) {
                refuse(
                    out,
                    r,
                    format!("pregnancy: no stimulation over the abdomen or low back ({site})"),
                );
            }
            for (kind, what) in [
                (ConditionKind::Malignancy, "malignancy"),
                (ConditionKind::OpenWound, "broken skin"),
                (ConditionKind::Dvt, "deep vein thrombosis"),
            ] {
                if p.condition(kind) {
                    refuse(out, r, format!("{what} at {site}: no stimulation"));
                }
            }
            if p.patient.has(ConditionKind::Epilepsy) {
                p.precaution(Precaution::Epilepsy, modality, "epilepsy", out);
            }
            if p.patient.has(ConditionKind::HeartDisease) {
                p.precaution(Precaution::HeartDisease, modality, "heart disease", out);
            }
            if insensate {
                p.precaution(
                    Precaution::ReducedSensation,
                    modality,
                    &format!("{site} is poorly innervated"),
                    out,
                );
            }
            if !ch.impedance_monitor {
                monitor(
                    out,
                    p.sensation,
                    &format!(
                        "{} channel {:?} has no impedance monitoring",
                        ctx.profile.id, ctx.channel.name
                    ),
                );
            }
        }
        _ => {}
    }
}

/// Missing objective sensing: refused on absent sensation, a warning otherwise.
fn monitor(out: &mut Vec<Finding>, sensation: Sensation, what: &str) {
    let (verdict, tail) = if sensation == Sensation::Absent {
        (
            Verdict::Refuse,
            "the patient cannot feel a fault there and nothing else would",
        )
    } else {
        (
            Verdict::AllowWithWarning,
            "faults are detected only by the patient",
        )
    };
    push(
        out,
        rules::MONITOR_UNSENSED,
        verdict,
        format!("{what}: {tail}"),
        vec![],
    );
}
