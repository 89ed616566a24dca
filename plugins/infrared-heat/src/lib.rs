//! First-party infrared heat plugin: MIRE pads (about 890 nm) and infrared lamps.
//!
//! Pads mode: each pad is a heat channel on a body site (the feet and legs in neuropathy
//! clinics). Lamp mode: one lamp at a distance over a site (back, neck), at most 20 minutes.
//! Either way the plan ramps the power limit up in steps at the start, then holds the target
//! skin temperature for the rest of the session.
//!
//! Closed loop: [`InfraredHeat::on_telemetry`] reads the skin temperature under a pad or lamp and
//! returns the running step's setpoint with a lower power limit as the skin nears the target: full
//! power until [`PROPORTIONAL_BAND_C`] below the target, then linearly less, and none at or
//! above it. It never raises the target or the power limit above the step's, so every adjustment
//! stays inside the envelope the governor approved.
//!
//! Figures come from clinical-facts.md: sessions ("pads 30-40 min; cap 45 min", heat lamps "up to
//! 20 min": Leonard 2004, Clifft 2005, Lavery 2008, Ammar 2012), contact temperature (IEC 60601-1
//! Table 24: 43 C maximum for 10 min or more, above 41 C disclosed [K]) and insensate skin
//! ("alarm at 40 C, stop at 41 C"). The governor enforces the limits; this plugin only plans
//! below them.

use modalis_sdk::prelude::*;

/// Pad channels of a four-pad MIRE unit (two per foot or leg).
pub const PAD_CHANNELS: [&str; 4] = ["pad-1", "pad-2", "pad-3", "pad-4"];

/// The lamp's channel.
pub const LAMP_CHANNEL: &str = "lamp";

/// Usual pad session, 30-40 min; at most 45 (clinical-facts.md "Heat / Session").
pub const USUAL_PAD_MIN: (f64, f64) = (30.0, 40.0);
/// Longest pad session, 45 min (clinical-facts.md "Heat / Session").
pub const MAX_PAD_MIN: f64 = 45.0;
/// Longest heat-lamp session, 20 min (clinical-facts.md, infrared row: "heat lamps on back/neck
/// up to 20 min").
pub const MAX_LAMP_MIN: f64 = 20.0;

/// Highest contact temperature for 10 min or more, 43 C (IEC 60601-1 Table 24 [K]).
pub const CONTACT_MAX_C: f64 = 43.0;
/// Above 41 C a contact temperature must be disclosed (IEC 60601-1 11.1.2.2 [K]).
pub const DISCLOSE_ABOVE_C: f64 = 41.0;
/// On insensate skin the governor alarms at 40 C (clinical-facts.md "Insensate skin"); plans on
/// sites with reduced or absent sensation aim 1 C below that [C].
pub const INSENSATE_TARGET_C: f64 = 39.0;

/// Width of the proportional band below the target: full power until the skin is this far below
/// the target, linearly less after, none at the target. 2 C is an engineering choice: wide
/// enough that a pad's thermal lag does not overshoot, narrow enough to reach the target.
pub const PROPORTIONAL_BAND_C: f64 = 2.0;

/// Ramp granularity: the power limit rises in steps of this length.
const RAMP_STEP_MS: u64 = 30_000;

/// One pad and where it lies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pad {
    /// Output channel: `pad-1` to `pad-4`.
    pub channel: String,
    /// Where the pad lies, e.g. `foot_plantar:left`.
    pub site: BodySite,
    /// Rated output of the pad, from the device's manual; the plan never asks for more.
    pub rated_power_w: f64,
}

/// An infrared lamp over one site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Lamp {
    /// Where the lamp is aimed, e.g. `lower_back:midline` or `posterior_neck:midline`.
    pub site: BodySite,
    /// Distance from the lamp to the skin, as the lamp's manual prescribes.
    pub distance_cm: f64,
    /// Rated power of the lamp, from its manual; the plan never asks for more.
    pub rated_power_w: f64,
}

fn default_target_skin_temp_c() -> f64 {
    INSENSATE_TARGET_C
}

fn default_ramp_s() -> u32 {
    // Three minutes in six steps: the skin warms gradually and the closed loop has time to see
    // the trend before full power; a workflow choice, not a dose.
    180
}

/// Parameters of an infrared heat session. Give `pads` or `lamp`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InfraredHeatParams {
    /// MIRE pads and their sites, at most one pad per channel.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pads: Vec<Pad>,
    /// An infrared lamp instead of pads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lamp: Option<Lamp>,
    /// Session length including the ramp. Omit for the default: 30 min for pads (30-40 typical,
    /// at most 45), 20 min for a lamp (at most 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_minutes: Option<f64>,
    /// Skin temperature to hold. Default 39 C, 1 C below the 40 C alarm for insensate skin; sites
    /// with reduced or absent sensation are never planned above 39 C.
    #[serde(default = "default_target_skin_temp_c")]
    pub target_skin_temp_c: f64,
    /// Warm-up at the start: the power limit rises in 30 s steps to the pads' (or lamp's) rating.
    #[serde(default = "default_ramp_s")]
    pub ramp_s: u32,
}

impl InfraredHeatParams {
    /// The session length in minutes, with the default for the mode.
    pub fn minutes(&self) -> f64 {
        self.session_minutes.unwrap_or(if self.lamp.is_some() {
            MAX_LAMP_MIN
        } else {
            30.0
        })
    }
}

/// The infrared heat plugin.
#[derive(Debug)]
pub struct InfraredHeat;

/// The power limit that holds `target_c` given the measured skin temperature: `max_w` below the
/// proportional band, linearly less inside it, 0 at or above the target (and for a reading that
/// is not a number, since then the loop is blind).
pub fn proportional_power_w(max_w: f64, target_c: f64, skin_c: f64) -> f64 {
    if !skin_c.is_finite() || !max_w.is_finite() || max_w <= 0.0 {
        return 0.0;
    }
    let fraction = ((target_c - skin_c) / PROPORTIONAL_BAND_C).clamp(0.0, 1.0);
    // Round down to 10 mW so rounding never lifts it above the step's limit.
    ((max_w * fraction) * 100.0).floor() / 100.0
}

fn in_range(x: f64, (lo, hi): (f64, f64)) -> bool {
    x.is_finite() && x >= lo && x <= hi
}

/// One heated channel: where, and how much power it may use.
struct Emitter {
    channel: String,
    site: BodySite,
    rated_power_w: f64,
    what: String,
}

fn emitters(p: &InfraredHeatParams) -> Vec<Emitter> {
    match &p.lamp {
        Some(l) => vec![Emitter {
            channel: LAMP_CHANNEL.into(),
            site: l.site.clone(),
            rated_power_w: l.rated_power_w,
            what: format!("lamp at {} cm", l.distance_cm),
        }],
        None => p
            .pads
            .iter()
            .map(|pad| Emitter {
                channel: pad.channel.clone(),
                site: pad.site.clone(),
                rated_power_w: pad.rated_power_w,
                what: pad.channel.clone(),
            })
            .collect(),
    }
}

impl ModalityPlugin for InfraredHeat {
    type Params = InfraredHeatParams;

    fn info() -> PluginInfo {
        let mut channels: Vec<ChannelInfo> = PAD_CHANNELS
            .iter()
            .map(|c| {
                ChannelInfo::new(
                    *c,
                    ChannelKind::Heat,
                    format!("MIRE pad {c} (about 890 nm) with skin temperature sensor"),
                )
            })
            .collect();
        channels.push(ChannelInfo::new(
            LAMP_CHANNEL,
            ChannelKind::Heat,
            "infrared heat lamp with skin temperature sensor",
        ));
        PluginInfo {
            id: "infrared-heat",
            name: "Infrared heat (MIRE pads, IR lamps), closed loop on skin temperature",
            version: env!("CARGO_PKG_VERSION"),
            vendor: "modalis",
            modality: ModalityKind::InfraredHeat,
            channels,
        }
    }

    fn sample_params() -> InfraredHeatParams {
        // Four pads, sole and dorsum of each foot, 30 min (Leonard 2004 / Lavery 2008 style
        // sessions, clinical-facts.md), held at 39 C.
        let pad = |channel: &str, region: BodyRegion, side: Side| Pad {
            channel: channel.into(),
            site: BodySite::region(region, side),
            // An illustrative rating: the clinic enters its own pads' rating from their manual.
            rated_power_w: 5.0,
        };
        InfraredHeatParams {
            pads: vec![
                pad("pad-1", BodyRegion::FootPlantar, Side::Left),
                pad("pad-2", BodyRegion::FootDorsum, Side::Left),
                pad("pad-3", BodyRegion::FootPlantar, Side::Right),
                pad("pad-4", BodyRegion::FootDorsum, Side::Right),
            ],
            lamp: None,
            session_minutes: Some(30.0),
            target_skin_temp_c: default_target_skin_temp_c(),
            ramp_s: default_ramp_s(),
        }
    }

    fn validate(p: &InfraredHeatParams) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        let mut check = |ok: bool, pointer: &str, msg: String| {
            if !ok {
                errs.push(FieldError::new(pointer, msg));
            }
        };
        match (&p.lamp, p.pads.is_empty()) {
            (None, true) => check(
                false,
                "/pads",
                "give the pads and their sites, or a lamp".into(),
            ),
            (Some(_), false) => check(
                false,
                "/lamp",
                "give either pads or a lamp, not both".into(),
            ),
            _ => {}
        }
        let mut seen: Vec<&str> = Vec::new();
        for (i, pad) in p.pads.iter().enumerate() {
            let at = |f: &str| format!("/pads/{i}/{f}");
            check(
                PAD_CHANNELS.contains(&pad.channel.as_str()),
                &at("channel"),
                format!(
                    "{:?} is not a pad channel; expected one of {PAD_CHANNELS:?}",
                    pad.channel
                ),
            );
            check(
                !seen.contains(&pad.channel.as_str()),
                &at("channel"),
                format!("channel {:?} already has a pad", pad.channel),
            );
            seen.push(pad.channel.as_str());
            let region = pad.site.body_region();
            check(
                region.is_some_and(|r| {
                    !r.is_ocular()
                        && !matches!(
                            r,
                            BodyRegion::Head | BodyRegion::Face | BodyRegion::AnteriorNeck
                        )
                }),
                &at("site"),
                format!(
                    "{} is not a pad site; expected a limb or trunk region such as foot_plantar:left",
                    pad.site
                ),
            );
            check(
                pad.rated_power_w.is_finite()
                    && pad.rated_power_w > 0.0
                    && pad.rated_power_w <= 100.0,
                &at("rated_power_w"),
                format!(
                    "{} W: expected the pad's rated output from its manual, above 0 and at most 100 W",
                    pad.rated_power_w
                ),
            );
        }
        if let Some(l) = &p.lamp {
            let region = l.site.body_region();
            check(
                region.is_some_and(|r| {
                    !r.is_ocular() && !matches!(r, BodyRegion::Head | BodyRegion::Face)
                }),
                "/lamp/site",
                format!(
                    "{}: an infrared lamp is never aimed at the head, face or eyes; expected e.g. lower_back:midline",
                    l.site
                ),
            );
            // Not from clinical-facts.md: a plausibility range that catches millimetres typed as
            // centimetres. The lamp's manual sets the actual distance.
            check(
                in_range(l.distance_cm, (20.0, 150.0)),
                "/lamp/distance_cm",
                format!(
                    "{} cm: expected the lamp-to-skin distance from the lamp's manual, 20-150 cm",
                    l.distance_cm
                ),
            );
            check(
                l.rated_power_w.is_finite() && l.rated_power_w > 0.0 && l.rated_power_w <= 1000.0,
                "/lamp/rated_power_w",
                format!(
                    "{} W: expected the lamp's rated power, above 0 and at most 1000 W",
                    l.rated_power_w
                ),
            );
        }
        let minutes = p.minutes();
        let max = if p.lamp.is_some() {
            MAX_LAMP_MIN
        } else {
            MAX_PAD_MIN
        };
        check(
            in_range(minutes, (1.0, max)),
            "/session_minutes",
            if p.lamp.is_some() {
                format!("{minutes} min: a heat lamp session is 1-{max} min")
            } else {
                format!("{minutes} min: a pad session is 1-{max} min (30-40 typical)")
            },
        );
        check(
            in_range(p.target_skin_temp_c, (30.0, CONTACT_MAX_C)),
            "/target_skin_temp_c",
            format!(
                "{} C: expected a skin temperature of 30-{CONTACT_MAX_C} C (43 C is the contact maximum, IEC 60601-1)",
                p.target_skin_temp_c
            ),
        );
        check(
            p.ramp_s >= 30,
            "/ramp_s",
            format!("{} s: the output ramps up over at least 30 s", p.ramp_s),
        );
        if in_range(minutes, (1.0, max)) {
            check(
                f64::from(p.ramp_s) <= minutes * 60.0 / 2.0,
                "/ramp_s",
                format!(
                    "{} s: expected a ramp of at most half the {minutes} min session",
                    p.ramp_s
                ),
            );
        }
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }

    fn plan(p: &InfraredHeatParams, patient: &Patient) -> Result<SessionPlan, PlanError> {
        let total_ms = (p.minutes() * 60_000.0).round() as u64;
        let ramp_ms = (u64::from(p.ramp_s) * 1000).min(total_ms / 2);
        let n_ramp = ramp_ms.div_ceil(RAMP_STEP_MS).max(1);
        let hold_ms = total_ms.saturating_sub(ramp_ms);
        if hold_ms == 0 {
            return Err(PlanError::from_fields(vec![FieldError::new(
                "/session_minutes",
                "the session has no time at the target",
            )]));
        }
        let mut steps = Vec::new();
        let mut notes = Vec::new();
        for e in emitters(p) {
            let sensation = patient.sensation_at(&e.site);
            let target = if sensation != Sensation::Normal
                && p.target_skin_temp_c > INSENSATE_TARGET_C
            {
                notes.push(format!(
                    "{}: {sensation:?} sensation at {}: target lowered from {} C to {INSENSATE_TARGET_C} C (the governor alarms at 40 C on insensate skin)",
                    e.what, e.site, p.target_skin_temp_c
                ));
                INSENSATE_TARGET_C
            } else {
                p.target_skin_temp_c
            };
            if sensation == Sensation::Absent {
                notes.push(format!(
                    "{}: absent sensation at {}: heat is refused without skin temperature feedback; the sensor on {} must report",
                    e.what, e.site, e.channel
                ));
            }
            let setpoint = |power_limit_w: f64| {
                Setpoint::Heat(HeatSetpoint {
                    target_temp_c: target,
                    power_limit_w,
                })
            };
            // Ramp: the power limit rises in n equal steps of 1/(n+1) of rated, so the hold that
            // follows is the first step at the full rating.
            for k in 0..n_ramp {
                let start = k * RAMP_STEP_MS;
                let dur = RAMP_STEP_MS.min(ramp_ms - start);
                let w = ((e.rated_power_w * (k + 1) as f64 / (n_ramp + 1) as f64) * 100.0).floor()
                    / 100.0;
                steps.push(PlanStep {
                    offset_ms: start,
                    duration_ms: dur,
                    channel: e.channel.clone(),
                    site: e.site.clone(),
                    setpoint: setpoint(w),
                    label: format!(
                        "{} warm-up {}/{n_ramp}: up to {w} W, target {target} C",
                        e.what,
                        k + 1
                    ),
                });
            }
            steps.push(PlanStep {
                offset_ms: ramp_ms,
                duration_ms: hold_ms,
                channel: e.channel.clone(),
                site: e.site.clone(),
                setpoint: setpoint(e.rated_power_w),
                label: format!("{} hold {target} C on {}", e.what, e.site),
            });
        }
        let minutes = p.minutes();
        notes.insert(
            0,
            format!(
                "infrared heat {}: {minutes} min at {} C skin temperature, {} s ramp; closed loop backs the power off over the last {PROPORTIONAL_BAND_C} C",
                if p.lamp.is_some() { "lamp" } else { "pads" },
                p.target_skin_temp_c,
                ramp_ms / 1000,
            ),
        );
        if p.lamp.is_none() && !in_range(minutes, USUAL_PAD_MIN) {
            notes.push(format!(
                "note: {minutes} min is outside the usual 30-40 min pad session"
            ));
        }
        if p.target_skin_temp_c > DISCLOSE_ABOVE_C {
            notes.push(format!(
                "WARNING: a target above {DISCLOSE_ABOVE_C} C must be disclosed to the patient (IEC 60601-1 11.1.2.2)"
            ));
        }
        Ok(SessionPlan { steps, notes })
    }

    fn on_telemetry(step: &PlanStep, sample: &TelemetrySample) -> Vec<Adjustment> {
        let (Setpoint::Heat(h), Measurement::SkinTempC(skin_c)) =
            (step.setpoint, sample.measurement)
        else {
            return Vec::new();
        };
        if sample.channel != step.channel {
            return Vec::new();
        }
        let power_limit_w = proportional_power_w(h.power_limit_w, h.target_temp_c, skin_c)
            .min(h.power_limit_w)
            .max(0.0);
        vec![Adjustment {
            channel: step.channel.clone(),
            setpoint: Setpoint::Heat(HeatSetpoint {
                target_temp_c: h.target_temp_c,
                power_limit_w,
            }),
        }]
    }
}

export_plugin!(InfraredHeat);

#[cfg(test)]
mod tests {
    use super::*;

    fn h() -> Harness<InfraredHeat> {
        Harness::new()
    }

    fn plan_of(p: &InfraredHeatParams) -> SessionPlan {
        let json = serde_json::to_string(p).expect("params serialise");
        h().plan(&json, &Patient::default()).expect("plans")
    }

    fn errors(p: &InfraredHeatParams) -> Vec<FieldError> {
        let json = serde_json::to_string(p).expect("params serialise");
        h().validate(&json).expect_err("invalid")
    }

    fn heat(s: &Setpoint) -> HeatSetpoint {
        match s {
            Setpoint::Heat(h) => *h,
            other => panic!("expected a heat setpoint, got {other:?}"),
        }
    }

    fn lamp_params() -> InfraredHeatParams {
        InfraredHeatParams {
            pads: Vec::new(),
            lamp: Some(Lamp {
                site: "lower_back:midline".parse().expect("site"),
                distance_cm: 50.0,
                rated_power_w: 150.0,
            }),
            session_minutes: None,
            target_skin_temp_c: 39.0,
            ramp_s: 60,
        }
    }

    fn hold_step(plan: &SessionPlan, channel: &str) -> PlanStep {
        plan.steps
            .iter()
            .rfind(|s| s.channel == channel)
            .cloned()
            .expect("a hold step")
    }

    fn sample(channel: &str, skin_c: f64) -> TelemetrySample {
        TelemetrySample {
            channel: channel.into(),
            elapsed_ms: 600_000,
            measurement: Measurement::SkinTempC(skin_c),
        }
    }

    #[test]
    fn sample_plans_and_conforms() {
        let plan = h().plan_sample(&Patient::default()).expect("sample plans");
        h().assert_conforms(&plan);
    }

    #[test]
    fn pads_ramp_then_hold_for_the_whole_session() {
        let plan = h().plan_sample(&Patient::default()).expect("sample plans");
        // Four pads x (6 ramp steps of 30 s + 1 hold) = 28 steps, 30 minutes exactly.
        assert_eq!(plan.steps.len(), 28);
        assert_eq!(plan.duration_ms(), 30 * 60_000);
        for ch in PAD_CHANNELS {
            let steps: Vec<&PlanStep> = plan.steps.iter().filter(|s| s.channel == ch).collect();
            assert_eq!(steps.len(), 7, "{ch}");
            let w: Vec<f64> = steps
                .iter()
                .map(|s| heat(&s.setpoint).power_limit_w)
                .collect();
            assert!(w.windows(2).all(|x| x[1] > x[0]), "{ch} ramps up: {w:?}");
            assert!((w[0] - 5.0 / 7.0).abs() < 0.01, "{w:?}");
            assert_eq!(w[6], 5.0);
            assert!(
                steps
                    .iter()
                    .all(|s| heat(&s.setpoint).target_temp_c == 39.0)
            );
            for x in steps.windows(2) {
                assert_eq!(x[0].end_ms(), x[1].offset_ms);
            }
            assert_eq!(steps[0].offset_ms, 0);
            assert_eq!(steps[6].duration_ms, 30 * 60_000 - 180_000);
        }
    }

    #[test]
    fn lamp_mode_defaults_to_twenty_minutes_and_refuses_longer() {
        let plan = plan_of(&lamp_params());
        assert_eq!(plan.duration_ms(), 20 * 60_000);
        assert!(plan.steps.iter().all(|s| s.channel == LAMP_CHANNEL));
        assert!(
            plan.steps[0].label.contains("lamp at 50 cm"),
            "{}",
            plan.steps[0].label
        );
        h().assert_conforms(&plan);
        let mut p = lamp_params();
        p.session_minutes = Some(25.0);
        assert_eq!(errors(&p)[0].pointer, "/session_minutes");
        let mut p = lamp_params();
        p.lamp = Some(Lamp {
            site: "face:left".parse().expect("site"),
            distance_cm: 5.0,
            rated_power_w: 150.0,
        });
        let ptrs: Vec<String> = errors(&p).into_iter().map(|e| e.pointer).collect();
        assert_eq!(ptrs, ["/lamp/site", "/lamp/distance_cm"]);
    }

    #[test]
    fn telemetry_backs_off_as_the_skin_nears_the_target() {
        let plan = h().plan_sample(&Patient::default()).expect("sample plans");
        let step = hold_step(&plan, "pad-1");
        let limit = heat(&step.setpoint).power_limit_w;
        // A warming foot: 33, 36, 37, 37.5, 38, 38.5, 39, 39.5 C against a 39 C target.
        let temps = [33.0, 36.0, 37.0, 37.5, 38.0, 38.5, 39.0, 39.5];
        let mut last = f64::INFINITY;
        let mut powers = Vec::new();
        for t in temps {
            let adj = InfraredHeat::on_telemetry(&step, &sample("pad-1", t));
            assert_eq!(adj.len(), 1);
            assert_eq!(adj[0].channel, "pad-1");
            let hs = heat(&adj[0].setpoint);
            // Inside the step's envelope: target unchanged, power never above the step's limit.
            assert_eq!(hs.target_temp_c, 39.0);
            assert!(hs.power_limit_w <= limit && hs.power_limit_w >= 0.0);
            assert!(hs.power_limit_w <= last, "never rises while the skin warms");
            last = hs.power_limit_w;
            powers.push(hs.power_limit_w);
        }
        assert_eq!(powers, [5.0, 5.0, 5.0, 3.75, 2.5, 1.25, 0.0, 0.0]);
    }

    #[test]
    fn telemetry_restores_power_as_the_skin_cools_but_never_above_the_step() {
        let plan = h().plan_sample(&Patient::default()).expect("sample plans");
        let ramp = plan
            .steps
            .iter()
            .find(|s| s.channel == "pad-2")
            .cloned()
            .expect("ramp step");
        let limit = heat(&ramp.setpoint).power_limit_w;
        for t in [39.5, 38.9, 38.0, 36.0, 20.0, -5.0] {
            let adj = InfraredHeat::on_telemetry(&ramp, &sample("pad-2", t));
            let hs = heat(&adj[0].setpoint);
            assert!(
                hs.power_limit_w <= limit,
                "{t} C: {} W > {limit} W",
                hs.power_limit_w
            );
            assert_eq!(hs.target_temp_c, heat(&ramp.setpoint).target_temp_c);
        }
        let cold = InfraredHeat::on_telemetry(&ramp, &sample("pad-2", 30.0));
        assert_eq!(heat(&cold[0].setpoint).power_limit_w, limit);
    }

    #[test]
    fn telemetry_ignores_other_channels_measurements_and_off_steps_and_goes_dark_when_blind() {
        let plan = h().plan_sample(&Patient::default()).expect("sample plans");
        let step = hold_step(&plan, "pad-1");
        assert!(InfraredHeat::on_telemetry(&step, &sample("pad-3", 45.0)).is_empty());
        let impedance = TelemetrySample {
            channel: "pad-1".into(),
            elapsed_ms: 0,
            measurement: Measurement::ImpedanceOhm(500.0),
        };
        assert!(InfraredHeat::on_telemetry(&step, &impedance).is_empty());
        let mut off = step.clone();
        off.setpoint = Setpoint::Off;
        assert!(InfraredHeat::on_telemetry(&off, &sample("pad-1", 30.0)).is_empty());
        let blind = InfraredHeat::on_telemetry(&step, &sample("pad-1", f64::NAN));
        assert_eq!(heat(&blind[0].setpoint).power_limit_w, 0.0);
    }

    #[test]
    fn insensate_sites_are_planned_at_39_c_at_most() {
        let mut p = InfraredHeat::sample_params();
        p.target_skin_temp_c = 41.5;
        let patient = Patient {
            sensation: vec![SiteSensation {
                site: "foot_plantar:left".parse().expect("site"),
                sensation: Sensation::Absent,
            }],
            conditions: vec![],
        };
        let json = serde_json::to_string(&p).expect("serialise");
        let plan = h().plan(&json, &patient).expect("plans");
        let t1 = heat(&hold_step(&plan, "pad-1").setpoint).target_temp_c;
        let t2 = heat(&hold_step(&plan, "pad-2").setpoint).target_temp_c;
        assert_eq!((t1, t2), (39.0, 41.5));
        let notes = plan.notes.join("\n");
        assert!(
            notes.contains("target lowered from 41.5 C to 39 C"),
            "{notes}"
        );
        assert!(notes.contains("must be disclosed"), "{notes}");
    }

    #[test]
    fn validation_points_at_the_field() {
        let mut p = InfraredHeat::sample_params();
        p.pads[1].channel = "pad-1".into();
        p.pads[2].channel = "pad-9".into();
        p.pads[3].site = "eye:right".parse().expect("site");
        p.pads[0].rated_power_w = 0.0;
        p.session_minutes = Some(50.0);
        p.target_skin_temp_c = 45.0;
        p.ramp_s = 10;
        let errs = errors(&p);
        let ptrs: Vec<&str> = errs.iter().map(|e| e.pointer.as_str()).collect();
        for expected in [
            "/pads/1/channel",
            "/pads/2/channel",
            "/pads/3/site",
            "/pads/0/rated_power_w",
            "/session_minutes",
            "/target_skin_temp_c",
            "/ramp_s",
        ] {
            assert!(ptrs.contains(&expected), "{expected} missing from {ptrs:?}");
        }
        let mut p = InfraredHeat::sample_params();
        p.pads.clear();
        assert_eq!(errors(&p)[0].pointer, "/pads");
        let mut p = lamp_params();
        p.pads = InfraredHeat::sample_params().pads;
        assert_eq!(errors(&p)[0].pointer, "/lamp");
    }

    /// Every parameter, at every depth, carries a description in the JSON Schema (from its doc
    /// comment), and unknown fields are refused.
    #[test]
    fn every_parameter_has_a_schema_description() {
        h().assert_params_documented();
    }

    #[test]
    fn planning_is_deterministic() {
        let p = InfraredHeat::sample_params();
        assert_eq!(plan_of(&p), plan_of(&p));
    }

    #[test]
    fn example_params_file_validates_and_plans() {
        h().assert_example_file(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/params/infrared-heat.json"
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
            .filter(|b| b.get("plugin").and_then(toml::Value::as_str) == Some("infrared-heat"))
        {
            let json = serde_json::to_string(&b.get("params").cloned().expect("block has params"))
                .expect("params to JSON");
            h().validate(&json)
                .unwrap_or_else(|e| panic!("block {:?}: {e:?}", b.get("id")));
            n += 1;
        }
        assert!(n >= 1, "the combined protocol has an infrared-heat block");
    }
}
