//! First-party TENS plugin.
//!
//! Turns electrode pairs, a stimulation mode and a target amplitude into a session that ramps
//! up from near zero, holds a charge-balanced biphasic output, and optionally ramps down. The
//! clinical defaults come from clinical-facts.md ("TENS"): 1-150 Hz, 50-250 us per phase,
//! biphasic charge-balanced, amplitude ramped up from zero, 20-60 min sessions (Kumar 1997,
//! Forst 2004, Serry 2016). This plugin encodes that know-how; the host's governor still
//! enforces every limit (50 mA r.m.s., current density, impedance, contraindicated sites), and
//! a stop cuts the output at once: a planned ramp-down never delays it.

use modalis_sdk::prelude::*;

/// How the pulse train is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TensMode {
    /// Conventional (high-frequency) TENS, typically 80-100 Hz with short pulses.
    Conventional,
    /// Acupuncture-like (low-frequency) TENS, typically 2-4 Hz with long pulses.
    AcupunctureLike,
    /// Bursts of pulses at `frequency_hz`, repeated at `burst_rate_hz`.
    Burst,
    /// Frequency modulated: alternates between `frequency_hz` and a lower frequency every
    /// `modulation_period_s` to reduce accommodation.
    Modulated,
}

/// One electrode pair on one output channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ElectrodePair {
    /// Output channel: `ch1` or `ch2`.
    pub channel: String,
    /// Where the pair sits, e.g. `lower_leg_lateral:left` (over the common peroneal nerve).
    pub site: BodySite,
    /// Area of the smaller electrode of the pair.
    #[serde(default = "default_electrode_area_cm2")]
    pub electrode_area_cm2: f64,
}

fn default_electrode_area_cm2() -> f64 {
    // A common 5 x 5 cm self-adhesive electrode.
    25.0
}

fn default_waveform() -> Waveform {
    Waveform::SymmetricBiphasic
}

fn default_ramp_up_s() -> u32 {
    60
}

fn default_ramp_down_s() -> u32 {
    20
}

fn default_burst_pulses() -> u32 {
    7
}

fn default_burst_rate_hz() -> f64 {
    2.0
}

fn default_modulation_period_s() -> u32 {
    10
}

fn default_session_minutes() -> f64 {
    // Serry 2016 (clinical-facts.md): 30 min sessions.
    30.0
}

/// Usual session length, 20-60 min (clinical-facts.md "TENS").
pub const USUAL_SESSION_MIN: (f64, f64) = (20.0, 60.0);

/// Current density above which the operator's attention is needed, 2 mA r.m.s./cm2
/// (AS 60601.2.10:2018 201.7.9.2.101(g), clinical-facts.md). A warning here; the governor decides.
pub const ATTENTION_MA_RMS_PER_CM2: f64 = 2.0;

/// Output current never above 50 mA r.m.s. (IEC 60601-2-10, clinical-facts.md). A warning here;
/// the governor refuses.
pub const MAX_MA_RMS: f64 = 50.0;

/// Parameters of a TENS session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TensParams {
    /// Electrode pairs, at most one per channel.
    pub electrodes: Vec<ElectrodePair>,
    /// Stimulation mode.
    pub mode: TensMode,
    /// Pulse rate (within a burst, for burst mode). Conventional 50-150 Hz (typically 80-100),
    /// acupuncture-like 1-15 Hz (typically 2-4; Serry 2016 used 14), burst 50-150 Hz within the
    /// burst, modulated 4-150 Hz (alternating with half of it).
    pub frequency_hz: f64,
    /// Width of one phase. Clinical range 50-250 us.
    pub pulse_width_us: f64,
    /// Target peak amplitude of one phase after the ramp: strong but comfortable.
    pub amplitude_ma: f64,
    /// Session length including ramps. Typically 20-60 minutes; default 30 (Serry 2016).
    #[serde(default = "default_session_minutes")]
    pub session_minutes: f64,
    /// Pulse shape; must be charge balanced: `symmetric-biphasic` (default) or
    /// `asymmetric-biphasic`.
    #[serde(default = "default_waveform")]
    pub waveform: Waveform,
    /// Time to ramp from near zero to the target amplitude, in 5 s steps; at least 10 s.
    #[serde(default = "default_ramp_up_s")]
    pub ramp_up_s: u32,
    /// Time to ramp down at the end; 0 for none. A safety stop never waits for it.
    #[serde(default = "default_ramp_down_s")]
    pub ramp_down_s: u32,
    /// Burst mode: pulses per burst, 2-20.
    #[serde(default = "default_burst_pulses")]
    pub burst_pulses: u32,
    /// Burst mode: bursts per second, 0.5-10.
    #[serde(default = "default_burst_rate_hz")]
    pub burst_rate_hz: f64,
    /// Modulated mode: seconds between frequency changes, 1-60.
    #[serde(default = "default_modulation_period_s")]
    pub modulation_period_s: u32,
}

/// The TENS plugin.
#[derive(Debug)]
pub struct Tens;

/// Channels this plugin drives.
pub const CHANNELS: [&str; 2] = ["ch1", "ch2"];

/// Ramp granularity: the amplitude rises in steps of this length, so a 60 s ramp is 12 steps.
const RAMP_STEP_MS: u64 = 5_000;

impl ModalityPlugin for Tens {
    type Params = TensParams;

    fn info() -> PluginInfo {
        PluginInfo {
            id: "tens",
            name: "TENS (conventional, acupuncture-like, burst, modulated)",
            version: env!("CARGO_PKG_VERSION"),
            vendor: "modalis",
            modality: ModalityKind::Tens,
            channels: CHANNELS
                .iter()
                .map(|c| {
                    ChannelInfo::new(
                        *c,
                        ChannelKind::Electrical,
                        format!("stimulator output {c}"),
                    )
                })
                .collect(),
        }
    }

    fn sample_params() -> TensParams {
        // Serry 2016 (clinical-facts.md): 14 Hz, 250 us, 30 min; electrodes over the peroneal
        // nerve on both lower legs.
        TensParams {
            electrodes: vec![
                ElectrodePair {
                    channel: "ch1".into(),
                    site: BodySite::region(BodyRegion::LowerLegLateral, Side::Left),
                    electrode_area_cm2: 25.0,
                },
                ElectrodePair {
                    channel: "ch2".into(),
                    site: BodySite::region(BodyRegion::LowerLegLateral, Side::Right),
                    electrode_area_cm2: 25.0,
                },
            ],
            mode: TensMode::AcupunctureLike,
            frequency_hz: 14.0,
            pulse_width_us: 250.0,
            amplitude_ma: 25.0,
            session_minutes: 30.0,
            waveform: Waveform::SymmetricBiphasic,
            ramp_up_s: 60,
            ramp_down_s: 20,
            burst_pulses: default_burst_pulses(),
            burst_rate_hz: default_burst_rate_hz(),
            modulation_period_s: default_modulation_period_s(),
        }
    }

    fn validate(p: &TensParams) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        let mut check = |ok: bool, pointer: &str, msg: String| {
            if !ok {
                errs.push(FieldError::new(pointer, msg));
            }
        };
        check(
            !p.electrodes.is_empty(),
            "/electrodes",
            "at least one electrode pair is needed".into(),
        );
        let mut seen = Vec::new();
        for (i, e) in p.electrodes.iter().enumerate() {
            check(
                CHANNELS.contains(&e.channel.as_str()),
                &format!("/electrodes/{i}/channel"),
                format!(
                    "{:?} is not a channel of this stimulator; expected one of {CHANNELS:?}",
                    e.channel
                ),
            );
            check(
                !seen.contains(&e.channel),
                &format!("/electrodes/{i}/channel"),
                format!("channel {:?} already has an electrode pair", e.channel),
            );
            seen.push(e.channel.clone());
            check(
                e.electrode_area_cm2.is_finite()
                    && e.electrode_area_cm2 >= 1.0
                    && e.electrode_area_cm2 <= 200.0,
                &format!("/electrodes/{i}/electrode_area_cm2"),
                format!(
                    "{} cm2 is not a plausible electrode area; expected 1-200 cm2",
                    e.electrode_area_cm2
                ),
            );
            let region = e.site.body_region();
            check(
                region.is_some_and(|r| !r.is_tens_forbidden()),
                &format!("/electrodes/{i}/site"),
                format!(
                    "{} is not a TENS site: never across the head, eyes, mouth, anterior neck or chest (IEC 60601-2-10 warnings)",
                    e.site
                ),
            );
        }
        // Frequency windows per mode, inside the clinical 1-150 Hz (clinical-facts.md "TENS":
        // low frequency 2-14 Hz, high about 80-100 Hz). Modulated mode alternates with half the
        // set frequency, which must stay at or above 2 Hz.
        let (lo, hi) = match p.mode {
            TensMode::Conventional => (50.0, 150.0),
            TensMode::AcupunctureLike => (1.0, 15.0),
            TensMode::Burst => (50.0, 150.0),
            TensMode::Modulated => (4.0, 150.0),
        };
        check(
            p.frequency_hz.is_finite() && p.frequency_hz >= lo && p.frequency_hz <= hi,
            "/frequency_hz",
            format!(
                "{} Hz: expected {lo}-{hi} Hz for {} mode",
                p.frequency_hz,
                mode_name(p.mode)
            ),
        );
        check(
            p.pulse_width_us.is_finite() && (50.0..=250.0).contains(&p.pulse_width_us),
            "/pulse_width_us",
            format!(
                "{} us: expected 50-250 us per phase (clinical range)",
                p.pulse_width_us
            ),
        );
        check(
            p.amplitude_ma.is_finite() && p.amplitude_ma > 0.0 && p.amplitude_ma <= 100.0,
            "/amplitude_ma",
            format!(
                "{} mA: expected a peak amplitude above 0 and at most 100 mA",
                p.amplitude_ma
            ),
        );
        check(
            p.session_minutes.is_finite() && (1.0..=60.0).contains(&p.session_minutes),
            "/session_minutes",
            format!(
                "{} min: expected a session of 1-60 min (20-60 typical)",
                p.session_minutes
            ),
        );
        check(
            p.waveform != Waveform::Monophasic,
            "/waveform",
            "monophasic output is not charge balanced; use symmetric or asymmetric biphasic (ANSI/AAMI NS15)".into(),
        );
        let total_s = p.session_minutes * 60.0;
        check(
            f64::from(p.ramp_up_s) + f64::from(p.ramp_down_s) < total_s,
            "/ramp_up_s",
            format!(
                "ramps ({} s up + {} s down) leave no time at the target in a {total_s} s session",
                p.ramp_up_s, p.ramp_down_s
            ),
        );
        check(
            p.ramp_up_s >= 10,
            "/ramp_up_s",
            format!(
                "{} s: the amplitude must ramp up from zero over at least 10 s",
                p.ramp_up_s
            ),
        );
        if p.mode == TensMode::Burst {
            let pulses_ok = (2..=20).contains(&p.burst_pulses);
            let rate_ok = p.burst_rate_hz.is_finite() && (0.5..=10.0).contains(&p.burst_rate_hz);
            check(
                pulses_ok,
                "/burst_pulses",
                format!("{} pulses per burst: expected 2-20", p.burst_pulses),
            );
            check(
                rate_ok,
                "/burst_rate_hz",
                format!("{} bursts/s: expected 0.5-10", p.burst_rate_hz),
            );
            // A burst must end before the next one starts: pulses / f < 1 / burst rate.
            if pulses_ok && rate_ok && p.frequency_hz.is_finite() && p.frequency_hz > 0.0 {
                let burst_s = f64::from(p.burst_pulses) / p.frequency_hz;
                check(
                    burst_s < 1.0 / p.burst_rate_hz,
                    "/burst_pulses",
                    format!(
                        "{} pulses at {} Hz last {:.0} ms, longer than the {:.0} ms between bursts at {} bursts/s: expected fewer pulses or a higher frequency",
                        p.burst_pulses,
                        p.frequency_hz,
                        burst_s * 1000.0,
                        1000.0 / p.burst_rate_hz,
                        p.burst_rate_hz
                    ),
                );
            }
        }
        if p.mode == TensMode::Modulated {
            check(
                (1..=60).contains(&p.modulation_period_s),
                "/modulation_period_s",
                format!(
                    "{} s: expected 1-60 s between frequency changes",
                    p.modulation_period_s
                ),
            );
        }
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }

    fn plan(p: &TensParams, patient: &Patient) -> Result<SessionPlan, PlanError> {
        let total_ms = (p.session_minutes * 60_000.0).round() as u64;
        let ramp_up_ms = u64::from(p.ramp_up_s) * 1000;
        let ramp_down_ms = u64::from(p.ramp_down_s) * 1000;
        // `validate` has checked that the ramps leave time at the target; a direct caller that
        // skipped it gets an error instead of an underflow.
        let hold_ms = total_ms
            .saturating_sub(ramp_up_ms)
            .saturating_sub(ramp_down_ms);
        if hold_ms == 0 || ramp_up_ms == 0 {
            return Err(PlanError::from_fields(vec![FieldError::new(
                "/ramp_up_s",
                "the ramps must be longer than zero and leave time at the target amplitude",
            )]));
        }
        let mut steps = Vec::new();
        for e in &p.electrodes {
            let setpoint = |amplitude_ma: f64, frequency_hz: f64| {
                let (burst_pulses, burst_rate_hz) = if p.mode == TensMode::Burst {
                    (p.burst_pulses, p.burst_rate_hz)
                } else {
                    (0, 0.0)
                };
                Setpoint::Electrical(ElectricalSetpoint {
                    frequency_hz,
                    pulse_width_us: p.pulse_width_us,
                    amplitude_ma,
                    waveform: p.waveform,
                    electrode_area_cm2: e.electrode_area_cm2,
                    burst_pulses,
                    burst_rate_hz,
                })
            };
            let mut push = |offset_ms: u64,
                            duration_ms: u64,
                            amplitude_ma: f64,
                            frequency_hz: f64,
                            label: String| {
                steps.push(PlanStep {
                    offset_ms,
                    duration_ms,
                    channel: e.channel.clone(),
                    site: e.site.clone(),
                    setpoint: setpoint(amplitude_ma, frequency_hz),
                    label,
                });
            };
            // Ramp up from near zero in equal increments: the first step is 1/n of the target.
            let n_up = ramp_up_ms.div_ceil(RAMP_STEP_MS).max(1);
            for k in 0..n_up {
                let start = k * RAMP_STEP_MS;
                let dur = RAMP_STEP_MS.min(ramp_up_ms - start);
                let amp = p.amplitude_ma * (k + 1) as f64 / n_up as f64;
                let amp = round_ma(amp);
                push(
                    start,
                    dur,
                    amp,
                    p.frequency_hz,
                    format!("ramp up {}/{n_up}: {} mA", k + 1, Tenths(amp)),
                );
            }
            // Hold. Modulated mode alternates between the set frequency and half of it.
            let mut t = ramp_up_ms;
            if p.mode == TensMode::Modulated {
                let period = u64::from(p.modulation_period_s) * 1000;
                let mut high = true;
                while t < ramp_up_ms + hold_ms {
                    let dur = period.min(ramp_up_ms + hold_ms - t);
                    let f = if high {
                        p.frequency_hz
                    } else {
                        (p.frequency_hz / 2.0).max(2.0)
                    };
                    push(
                        t,
                        dur,
                        p.amplitude_ma,
                        f,
                        format!("hold {} mA, {f} Hz", p.amplitude_ma),
                    );
                    high = !high;
                    t += dur;
                }
            } else {
                push(
                    t,
                    hold_ms,
                    p.amplitude_ma,
                    p.frequency_hz,
                    format!("hold {} mA", p.amplitude_ma),
                );
                t += hold_ms;
            }
            // Optional ramp down.
            let n_down = ramp_down_ms.div_ceil(RAMP_STEP_MS);
            for k in 0..n_down {
                let start = t + k * RAMP_STEP_MS;
                let dur = RAMP_STEP_MS.min(ramp_down_ms - k * RAMP_STEP_MS);
                let amp = p.amplitude_ma * (n_down - k) as f64 / (n_down + 1) as f64;
                let amp = round_ma(amp);
                push(
                    start,
                    dur,
                    amp,
                    p.frequency_hz,
                    format!("ramp down {}/{n_down}: {} mA", k + 1, Tenths(amp)),
                );
            }
        }
        Ok(SessionPlan {
            steps,
            notes: notes(p, patient),
        })
    }
}

fn mode_name(mode: TensMode) -> &'static str {
    match mode {
        TensMode::Conventional => "conventional",
        TensMode::AcupunctureLike => "acupuncture-like",
        TensMode::Burst => "burst",
        TensMode::Modulated => "modulated",
    }
}

/// The dose report: r.m.s. current, charge and current density per pair, warnings, precautions.
fn notes(p: &TensParams, patient: &Patient) -> Vec<String> {
    let rms = dose::rms_current_ma(
        p.amplitude_ma,
        p.pulse_width_us,
        effective_rate(p),
        p.waveform,
    );
    let mut notes = vec![
        format!(
            "{} TENS {} Hz, {} us/phase, {} mA peak: {rms:.1} mA r.m.s., {:.2} uC per phase, {} min",
            mode_name(p.mode),
            p.frequency_hz,
            p.pulse_width_us,
            p.amplitude_ma,
            dose::charge_per_phase_uc(p.amplitude_ma, p.pulse_width_us),
            p.session_minutes,
        ),
        format!(
            "ramp up {} s from {:.1} mA, ramp down {} s; a stop cuts the output at once",
            p.ramp_up_s,
            round_ma(p.amplitude_ma / n_steps(p.ramp_up_s) as f64),
            p.ramp_down_s
        ),
    ];
    if rms > MAX_MA_RMS {
        notes.push(format!("WARNING: {rms:.1} mA r.m.s. is above the 50 mA r.m.s. that IEC 60601-2-10 allows; the governor will refuse it"));
    }
    for e in &p.electrodes {
        let density = dose::current_density_ma_per_cm2(rms, e.electrode_area_cm2);
        notes.push(format!(
            "{} on {}: {density:.3} mA r.m.s./cm2 on {} cm2",
            e.channel, e.site, e.electrode_area_cm2
        ));
        if density > ATTENTION_MA_RMS_PER_CM2 {
            notes.push(format!(
                "WARNING: {} on {}: {density:.2} mA r.m.s./cm2 is above 2 mA/cm2, which needs the operator's attention (AS 60601.2.10); use larger electrodes",
                e.channel, e.site
            ));
        }
        let sensation = patient.sensation_at(&e.site);
        if sensation != Sensation::Normal {
            notes.push(format!(
                "precaution: {sensation:?} sensation at {}: a poorly innervated area; the patient cannot judge the amplitude, so set it by the visible response and watch the electrode impedance",
                e.site
            ));
        }
    }
    for c in &patient.conditions {
        let c = c.trim().to_ascii_lowercase();
        let text = match c.as_str() {
            "epilepsy" => "precaution: epilepsy (TENS manuals); needs an explicit override",
            "heart disease" | "heart-disease" | "heart_disease" => {
                "precaution: heart disease (TENS manuals); needs an explicit override"
            }
            "pacemaker" | "icd" => {
                "contraindication: a demand pacemaker or ICD (IEC 60601-2-10 warnings); the governor refuses TENS"
            }
            "pregnancy" => {
                "precaution: pregnancy; never over the abdomen (IEC 60601-2-10 warnings)"
            }
            _ => continue,
        };
        notes.push(text.to_string());
    }
    if !(USUAL_SESSION_MIN.0..=USUAL_SESSION_MIN.1).contains(&p.session_minutes) {
        notes.push(format!(
            "note: {} min is outside the usual 20-60 min session",
            p.session_minutes
        ));
    }
    notes
}

fn n_steps(ramp_s: u32) -> u64 {
    (u64::from(ramp_s) * 1000).div_ceil(RAMP_STEP_MS).max(1)
}

fn effective_rate(p: &TensParams) -> f64 {
    if p.mode == TensMode::Burst {
        f64::from(p.burst_pulses) * p.burst_rate_hz
    } else {
        p.frequency_hz
    }
}

/// Amplitudes are set in 0.1 mA increments, the resolution of common stimulators.
fn round_ma(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// A value already rounded to 0.1, shown as `f64`'s `Display` shows it ("4.5", "5") but
/// through integer formatting: the shortest-float algorithm was 40 % of a plan's time (one
/// label per ramp step), in the sandbox as natively.
struct Tenths(f64);

impl std::fmt::Display for Tenths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = (self.0 * 10.0).round();
        if !t.is_finite() || t.abs() > 1e15 {
            return write!(f, "{}", self.0);
        }
        let t = t as i64;
        let sign = if t < 0 { "-" } else { "" };
        let (whole, tenth) = (t.unsigned_abs() / 10, t.unsigned_abs() % 10);
        if tenth == 0 {
            write!(f, "{sign}{whole}")
        } else {
            write!(f, "{sign}{whole}.{tenth}")
        }
    }
}

export_plugin!(Tens);

#[cfg(test)]
mod tests {
    use super::*;

    fn h() -> Harness<Tens> {
        Harness::new()
    }

    fn params() -> TensParams {
        Tens::sample_params()
    }

    fn plan(p: &TensParams) -> SessionPlan {
        let json = serde_json::to_string(p).expect("params serialise");
        h().plan(&json, &Patient::default()).expect("plans")
    }

    fn errors(p: &TensParams) -> Vec<FieldError> {
        let json = serde_json::to_string(p).expect("params serialise");
        h().validate(&json).expect_err("invalid")
    }

    /// The sample parameters in `mode` at `frequency_hz` and `pulse_width_us`.
    fn in_mode(mode: TensMode, frequency_hz: f64, pulse_width_us: f64) -> TensParams {
        TensParams {
            mode,
            frequency_hz,
            pulse_width_us,
            ..params()
        }
    }

    /// `field` of the setpoint of every ch1 step whose label starts with `label`, in order.
    fn ch1(plan: &SessionPlan, label: &str, field: fn(&ElectricalSetpoint) -> f64) -> Vec<f64> {
        plan.steps
            .iter()
            .filter(|s| s.channel == "ch1" && s.label.starts_with(label))
            .map(|s| match &s.setpoint {
                Setpoint::Electrical(e) => field(e),
                other => panic!("unexpected setpoint {other:?}"),
            })
            .collect()
    }

    #[test]
    fn tenths_show_as_the_float_does() {
        for x in [0.0, 0.1, 0.5, 1.0, 2.3, 4.5, 10.0, 12.7, 25.0, 49.9, -1.5] {
            assert_eq!(Tenths(x).to_string(), x.to_string(), "{x}");
        }
    }

    #[test]
    fn sample_plans_and_conforms() {
        let plan = h().plan_sample(&Patient::default()).expect("sample plans");
        h().assert_conforms(&plan);
    }

    #[test]
    fn ramps_up_from_near_zero_and_holds_the_target() {
        let p = params();
        let plan = plan(&p);
        let amps = ch1(&plan, "", |e| e.amplitude_ma);
        // 60 s ramp in 5 s steps: 12 steps, the first at 1/12 of 25 mA.
        assert_eq!(amps[0], round_ma(25.0 / 12.0));
        assert!(
            amps.windows(2).take(11).all(|w| w[1] > w[0]),
            "ramp rises: {amps:?}"
        );
        assert_eq!(amps[12], 25.0);
        // Session length is exactly 30 minutes, contiguous, no gaps.
        assert_eq!(plan.duration_ms(), 30 * 60_000);
        let steps: Vec<&PlanStep> = plan.steps.iter().filter(|s| s.channel == "ch1").collect();
        for w in steps.windows(2) {
            assert_eq!(w[0].end_ms(), w[1].offset_ms);
        }
        // Ramp down ends below the target.
        assert!(amps.last().is_some_and(|a| *a < 25.0));
    }

    #[test]
    fn output_is_charge_balanced_biphasic() {
        for s in plan(&params()).steps {
            match s.setpoint {
                Setpoint::Electrical(e) => assert_eq!(e.waveform, Waveform::SymmetricBiphasic),
                other => panic!("unexpected setpoint {other:?}"),
            }
        }
    }

    #[test]
    fn no_ramp_down_when_zero() {
        let mut p = params();
        p.ramp_down_s = 0;
        let plan = plan(&p);
        let last = plan
            .steps
            .iter()
            .rfind(|s| s.channel == "ch1")
            .expect("steps");
        assert_eq!(last.label, "hold 25 mA");
        assert_eq!(last.end_ms(), 30 * 60_000);
    }

    #[test]
    fn burst_mode_carries_burst_fields() {
        let plan = plan(&in_mode(TensMode::Burst, 100.0, 200.0));
        assert!(plan.steps.iter().all(|s| matches!(s.setpoint, Setpoint::Electrical(e) if e.burst_pulses == 7 && e.burst_rate_hz == 2.0)));
    }

    #[test]
    fn modulated_mode_alternates_frequency() {
        let plan = plan(&in_mode(TensMode::Modulated, 80.0, 100.0));
        let freqs = ch1(&plan, "hold", |e| e.frequency_hz);
        assert!(freqs.len() > 10);
        assert_eq!(&freqs[..2], &[80.0, 40.0]);
    }

    #[test]
    fn validation_points_at_the_field() {
        let mut p = params();
        p.electrodes[1].channel = "ch9".into();
        p.electrodes[0].site = BodySite::region(BodyRegion::AnteriorNeck, Side::Midline);
        p.pulse_width_us = 400.0;
        p.waveform = Waveform::Monophasic;
        let errs = errors(&p);
        let pointers: Vec<&str> = errs.iter().map(|e| e.pointer.as_str()).collect();
        assert!(pointers.contains(&"/electrodes/1/channel"), "{pointers:?}");
        assert!(pointers.contains(&"/electrodes/0/site"), "{pointers:?}");
        assert!(pointers.contains(&"/pulse_width_us"), "{pointers:?}");
        assert!(pointers.contains(&"/waveform"), "{pointers:?}");
    }

    #[test]
    fn type_errors_point_at_the_field() {
        let json = r#"{"electrodes":[{"channel":"ch1","site":"nowhere:left"}],"mode":"conventional","frequency_hz":"fast","pulse_width_us":100,"amplitude_ma":20,"session_minutes":30}"#;
        let errs = h().validate(json).expect_err("invalid");
        assert_eq!(errs[0].pointer, "/electrodes/0/site", "{errs:?}");
        let json = r#"{"electrodes":[],"mode":"conventional","frequency_hz":"fast","pulse_width_us":100,"amplitude_ma":20,"session_minutes":30}"#;
        let errs = h().validate(json).expect_err("invalid");
        assert_eq!(errs[0].pointer, "/frequency_hz", "{errs:?}");
    }

    /// Every parameter, at every depth, carries a description in the JSON Schema (from its doc
    /// comment), and unknown fields are refused.
    #[test]
    fn every_parameter_has_a_schema_description() {
        h().assert_params_documented();
    }

    #[test]
    fn planning_is_deterministic() {
        assert_eq!(plan(&params()), plan(&params()));
    }

    #[test]
    fn both_channels_follow_the_same_timeline() {
        let plan = plan(&params());
        let times = |ch: &str| -> Vec<(u64, u64)> {
            plan.steps
                .iter()
                .filter(|s| s.channel == ch)
                .map(|s| (s.offset_ms, s.duration_ms))
                .collect()
        };
        assert_eq!(times("ch1"), times("ch2"));
        // 12 ramp-up steps, one hold, 4 ramp-down steps.
        assert_eq!(times("ch1").len(), 17);
        assert!(
            plan.steps
                .iter()
                .any(|s| s.site == BodySite::region(BodyRegion::LowerLegLateral, Side::Right))
        );
    }

    #[test]
    fn ramp_down_never_reaches_the_target_and_ends_the_session() {
        let down = ch1(&plan(&params()), "ramp down", |e| e.amplitude_ma);
        // 20 s in 5 s steps: 4/5, 3/5, 2/5, 1/5 of 25 mA.
        assert_eq!(down, [20.0, 15.0, 10.0, 5.0]);
    }

    #[test]
    fn burst_must_fit_between_bursts() {
        let mut p = in_mode(TensMode::Burst, 50.0, 200.0);
        p.burst_pulses = 20; // 400 ms of pulses
        p.burst_rate_hz = 4.0; // every 250 ms
        let errs = errors(&p);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].pointer, "/burst_pulses");
        assert!(errs[0].message.contains("between bursts"), "{errs:?}");
    }

    #[test]
    fn modulated_mode_needs_room_to_halve_the_frequency() {
        let mut p = params();
        p.mode = TensMode::Modulated;
        p.frequency_hz = 3.0;
        p.modulation_period_s = 0;
        let ptrs: Vec<String> = errors(&p).into_iter().map(|e| e.pointer).collect();
        assert_eq!(ptrs, ["/frequency_hz", "/modulation_period_s"]);
    }

    #[test]
    fn notes_report_rms_density_and_warn_above_2_ma_per_cm2() {
        let plan = plan(&params());
        // 25 mA x sqrt(250 us x 2 x 14 Hz) = 2.09 mA r.m.s.; on 25 cm2 = 0.084 mA/cm2.
        assert!(plan.notes[0].contains("2.1 mA r.m.s."), "{:?}", plan.notes);
        assert!(
            plan.notes
                .iter()
                .any(|n| n.contains("ch1 on lower_leg_lateral:left: 0.084 mA r.m.s./cm2")),
            "{:?}",
            plan.notes
        );
        assert!(
            !plan.notes.iter().any(|n| n.starts_with("WARNING")),
            "{:?}",
            plan.notes
        );

        let mut p = params();
        p.mode = TensMode::Conventional;
        p.frequency_hz = 100.0;
        p.amplitude_ma = 80.0;
        p.electrodes[0].electrode_area_cm2 = 4.0;
        // 80 x sqrt(250e-6 x 2 x 100) = 17.9 mA r.m.s.; on 4 cm2 = 4.5 mA/cm2.
        let plan = super::tests::plan(&p);
        let warnings: Vec<&String> = plan
            .notes
            .iter()
            .filter(|n| n.starts_with("WARNING"))
            .collect();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("ch1") && warnings[0].contains("above 2 mA/cm2"),
            "{warnings:?}"
        );
    }

    #[test]
    fn notes_precautions_from_the_patient() {
        let patient = Patient {
            sensation: vec![SiteSensation {
                site: "lower_leg_lateral:left".parse().expect("site"),
                sensation: Sensation::Reduced,
            }],
            conditions: vec!["Epilepsy".into(), "pacemaker".into()],
        };
        let json = serde_json::to_string(&params()).expect("serialise");
        let plan = h().plan(&json, &patient).expect("plans");
        let notes = plan.notes.join("\n");
        assert!(
            notes.contains("Reduced sensation at lower_leg_lateral:left"),
            "{notes}"
        );
        assert!(
            !notes.contains("sensation at lower_leg_lateral:right"),
            "{notes}"
        );
        assert!(notes.contains("precaution: epilepsy"), "{notes}");
        assert!(notes.contains("the governor refuses TENS"), "{notes}");
    }

    #[test]
    fn direct_plan_calls_with_bad_ramps_error_instead_of_underflowing() {
        let mut p = params();
        p.ramp_up_s = 2000;
        let err = Tens::plan(&p, &Patient::default()).expect_err("no time at the target");
        assert_eq!(err.field_errors[0].pointer, "/ramp_up_s");
    }

    #[test]
    fn unknown_fields_are_refused_at_their_pointer() {
        let json = r#"{"electrodes":[{"channel":"ch1","site":"lower_leg_lateral:left","area":4}],"mode":"conventional","frequency_hz":100,"pulse_width_us":100,"amplitude_ma":20}"#;
        let errs = h().validate(json).expect_err("unknown field");
        assert_eq!(errs[0].pointer, "/electrodes/0/area", "{errs:?}");
        // session_minutes defaults to 30 (Serry 2016).
        let json = r#"{"electrodes":[{"channel":"ch1","site":"lower_leg_lateral:left"}],"mode":"conventional","frequency_hz":100,"pulse_width_us":100,"amplitude_ma":20}"#;
        let plan = h()
            .plan(json, &Patient::default())
            .expect("plans with defaults");
        assert_eq!(plan.duration_ms(), 30 * 60_000);
    }

    #[test]
    fn example_params_file_validates_and_plans() {
        h().assert_example_file(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/params/tens.json"
        ));
    }

    #[test]
    fn protocol_blocks_validate() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/protocols/dpn-combined.toml"
        ))
        .expect("examples/protocols/dpn-combined.toml exists");
        let doc: toml::Value = toml::from_str(&text).expect("protocol is TOML");
        let blocks = doc
            .get("block")
            .and_then(toml::Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut n = 0;
        for b in blocks
            .iter()
            .filter(|b| b.get("plugin").and_then(toml::Value::as_str) == Some("tens"))
        {
            let json = serde_json::to_string(&b.get("params").cloned().expect("block has params"))
                .expect("params to JSON");
            h().validate(&json)
                .unwrap_or_else(|e| panic!("block {:?}: {e:?}", b.get("id")));
            n += 1;
        }
        assert!(n >= 1, "the combined protocol has a tens block");
    }
}
