//! First-party Class IV ("deep tissue") laser plugin.
//!
//! Class IV units emit more than 0.5 W (IEC 60825-1), typically 10-15 W, often at 810 and 980 nm
//! together. A beam that strong is never held on one spot: a 10 W beam on 1 cm2 is about 14 times
//! the 980 nm skin MPE (clinical-facts.md "Class IV technique"). So this plugin plans a scanning
//! pattern: the energy for the target fluence over each area is split into sweep segments of
//! bounded length that alternate direction (a crosshatch) and, on large areas, zone, and every
//! emitting step carries the area the beam is scanned over (`scan_area_cm2`) so the governor can
//! judge the average irradiance. Before any emission there is an `Off` step for the emission
//! indicator (21 CFR 1040.10(f): the indicator comes on *before* emission; Class 4 adds an
//! emission delay), and again before each new area.
//!
//! Figures come from clinical-facts.md ("What clinics actually run", Class IV row: BMC Geriatrics
//! 2019;19:218 and the MLS pilot; "Optical" table for the MPE and the large-area rule).

use modalis_sdk::prelude::*;

/// Channel the handpiece is driven on.
pub const CHANNEL: &str = "handpiece";

/// Above 0.5 W continuous a laser is Class 4 (IEC 60825-1, clinical-facts.md "Class 3B upper
/// bound"); lower powers are planned by the lllt plugin.
pub const CLASS_4_MIN_W: f64 = 0.5;

/// Usual emission time per session, 5-15 min (clinical-facts.md, Class IV row).
pub const USUAL_SESSION_MIN: (f64, f64) = (5.0, 15.0);

/// Above about 100 cm2 the skin limit falls with area (ICNIRP / ANSI, clinical-facts.md "Large
/// areas" [K]); the default zone size keeps each scanned zone at or below it.
pub const LARGE_AREA_CM2: f64 = 100.0;

/// Skin MPE for exposures of 10 s or more, E = 0.2 * CA W/cm2 (ICNIRP / Directive 2006/25/EC
/// Annex II, clinical-facts.md "Skin MPE"): CA = 1 below 700 nm, 10^(0.002(lambda-700)) for
/// 700-1050 nm, 5 for 1050-1400 nm. Used here only to warn in the plan's notes; the governor
/// applies its own.
pub fn skin_mpe_w_per_cm2(wavelength_nm: f64) -> f64 {
    let ca = if wavelength_nm < 700.0 {
        1.0
    } else if wavelength_nm <= 1050.0 {
        10f64.powf(0.002 * (wavelength_nm - 700.0))
    } else {
        5.0
    };
    0.2 * ca
}

/// One area to treat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Area {
    /// The body region, e.g. `foot_dorsum:left`.
    pub site: BodySite,
    /// Skin area the beam is spread over, e.g. 56-150 cm2 in the neuropathy pilot.
    pub area_cm2: f64,
}

/// Continuous or pulsed output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PulseMode {
    /// Continuous wave.
    Continuous,
    /// Pulsed at `pulse_frequency_hz` with `duty_cycle`; `power_w` is the average power.
    Pulsed,
}

fn default_wavelengths_nm() -> Vec<f64> {
    // Dual 810/980 nm is the common Class IV configuration (clinical-facts.md, Class IV row).
    vec![810.0, 980.0]
}

fn default_pulse_mode() -> PulseMode {
    PulseMode::Continuous
}

fn default_duty_cycle() -> f64 {
    1.0
}

fn default_sweep_segment_s() -> u32 {
    // Change direction or zone every 20 s: short enough that the operator keeps the pattern
    // even, long enough to cover a foot once. A workflow choice, not a dose.
    20
}

fn default_max_zone_cm2() -> f64 {
    LARGE_AREA_CM2
}

fn default_emission_lead_in_s() -> u32 {
    3
}

fn default_reposition_s() -> u32 {
    5
}

/// Parameters of a Class IV laser session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Class4Params {
    /// Areas to treat, in order, each scanned to the target fluence.
    pub areas: Vec<Area>,
    /// Energy per area to deliver over each whole area.
    pub fluence_j_per_cm2: f64,
    /// Average output power, above 0.5 W (Class 4); typical units go to 10-15 W.
    pub power_w: f64,
    /// Wavelengths of the unit; with two (810 and 980 nm, the default) the sweep segments
    /// alternate between them, so every emitting step names the wavelength it emits.
    #[serde(default = "default_wavelengths_nm")]
    pub wavelengths_nm: Vec<f64>,
    /// Beam (spot) area of the handpiece on the skin, from the unit's manual.
    pub beam_area_cm2: f64,
    /// Continuous or pulsed output.
    #[serde(default = "default_pulse_mode")]
    pub pulse_mode: PulseMode,
    /// Pulse repetition rate in pulsed mode; 0 in continuous mode.
    #[serde(default)]
    pub pulse_frequency_hz: f64,
    /// Fraction of time on in pulsed mode, in (0, 1); 1 in continuous mode.
    #[serde(default = "default_duty_cycle")]
    pub duty_cycle: f64,
    /// Longest single sweep step: after each, the pattern turns (horizontal, vertical) or moves
    /// to the next zone, so the energy spreads evenly and no spot is dwelt on.
    #[serde(default = "default_sweep_segment_s")]
    pub sweep_segment_s: u32,
    /// Largest zone one sweep covers; a larger area is split into equal zones swept in turn.
    #[serde(default = "default_max_zone_cm2")]
    pub max_zone_cm2: f64,
    /// Emission indicator lead-in before the first emission (and before each new area).
    #[serde(default = "default_emission_lead_in_s")]
    pub emission_lead_in_s: u32,
    /// Pause to move the handpiece to the next area (at least the lead-in).
    #[serde(default = "default_reposition_s")]
    pub reposition_s: u32,
}

/// The Class IV laser plugin.
#[derive(Debug)]
pub struct Class4Laser;

/// How an area is swept: zones of equal size, each getting `segments` sweep steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    /// Number of equal zones.
    pub zones: u32,
    /// Area of each zone.
    pub zone_area_cm2: f64,
    /// Emission time per zone, rounded up so the fluence is never short.
    pub zone_ms: u64,
    /// Durations of the sweep segments of one zone (near-equal; they add up to `zone_ms`).
    pub segments_ms: Vec<u64>,
}

impl Class4Params {
    /// The sweep pattern for one area.
    pub fn pattern(&self, area_cm2: f64) -> Pattern {
        let zones = (area_cm2 / self.max_zone_cm2).ceil().clamp(1.0, 1000.0) as u32;
        let zone_area_cm2 = area_cm2 / f64::from(zones);
        let zone_ms = dose::time_for_energy_ms(
            self.fluence_j_per_cm2 * zone_area_cm2,
            self.power_w * 1000.0,
        );
        let seg_ms = (u64::from(self.sweep_segment_s) * 1000).max(1);
        let k = zone_ms.div_ceil(seg_ms).max(1);
        let (base, extra) = (zone_ms / k, zone_ms % k);
        let segments_ms = (0..k).map(|i| base + u64::from(i < extra)).collect();
        Pattern {
            zones,
            zone_area_cm2,
            zone_ms,
            segments_ms,
        }
    }
}

fn in_range(x: f64, (lo, hi): (f64, f64)) -> bool {
    x.is_finite() && x >= lo && x <= hi
}

impl ModalityPlugin for Class4Laser {
    type Params = Class4Params;

    fn info() -> PluginInfo {
        PluginInfo {
            id: "class4-laser",
            name: "Class IV laser, scanned (810/980 nm)",
            version: env!("CARGO_PKG_VERSION"),
            vendor: "modalis",
            modality: ModalityKind::Class4Laser,
            channels: vec![ChannelInfo::new(
                CHANNEL,
                ChannelKind::Optical,
                "Class IV handpiece, kept moving over the area",
            )],
        }
    }

    fn sample_params() -> Class4Params {
        // The dorsum of both feet, 80 cm2 each, 10 J/cm2 at 4 W: 200 s per foot, 6.7 min in all.
        // 10 J/cm2 is [C] from the neuropathy pilot in clinical-facts.md (about 1.7 W average
        // for 5-15 min over 56-150 cm2, e.g. 1.7 W x 10 min / 100 cm2 = 10.2 J/cm2).
        Class4Params {
            areas: vec![
                Area {
                    site: BodySite::region(BodyRegion::FootDorsum, Side::Left),
                    area_cm2: 80.0,
                },
                Area {
                    site: BodySite::region(BodyRegion::FootDorsum, Side::Right),
                    area_cm2: 80.0,
                },
            ],
            fluence_j_per_cm2: 10.0,
            power_w: 4.0,
            wavelengths_nm: default_wavelengths_nm(),
            beam_area_cm2: 3.0,
            pulse_mode: PulseMode::Continuous,
            pulse_frequency_hz: 0.0,
            duty_cycle: 1.0,
            sweep_segment_s: default_sweep_segment_s(),
            max_zone_cm2: default_max_zone_cm2(),
            emission_lead_in_s: default_emission_lead_in_s(),
            reposition_s: default_reposition_s(),
        }
    }

    fn validate(p: &Class4Params) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        let mut check = |ok: bool, pointer: &str, msg: String| {
            if !ok {
                errs.push(FieldError::new(pointer, msg));
            }
        };
        check(
            !p.areas.is_empty(),
            "/areas",
            "at least one area to treat is needed".into(),
        );
        let beam_ok = in_range(p.beam_area_cm2, (0.1, 50.0));
        for (i, a) in p.areas.iter().enumerate() {
            match &a.site.location {
                Location::Acupoint(_) => check(
                    false,
                    &format!("/areas/{i}/site"),
                    format!(
                        "{} is a point; a Class IV beam is scanned over a body region, e.g. foot_dorsum:left",
                        a.site
                    ),
                ),
                Location::Region(r) => check(
                    !r.is_ocular() && !matches!(r, BodyRegion::Head | BodyRegion::Face),
                    &format!("/areas/{i}/site"),
                    format!(
                        "{}: a Class IV beam is never scanned over the head, face or eyes (clinical-facts.md \"Eyes\"); expected a region away from them",
                        a.site
                    ),
                ),
            }
            let area_ok = in_range(a.area_cm2, (1.0, 2000.0));
            check(
                area_ok,
                &format!("/areas/{i}/area_cm2"),
                format!("{} cm2: expected the treated area, 1-2000 cm2", a.area_cm2),
            );
            if area_ok && beam_ok {
                // A "scan" over fewer than five beam areas keeps the beam on the same skin.
                check(
                    a.area_cm2 >= 5.0 * p.beam_area_cm2,
                    &format!("/areas/{i}/area_cm2"),
                    format!(
                        "{} cm2 is too small to scan a {} cm2 beam over; expected at least five beam areas ({} cm2)",
                        a.area_cm2,
                        p.beam_area_cm2,
                        5.0 * p.beam_area_cm2
                    ),
                );
            }
        }
        check(
            p.fluence_j_per_cm2.is_finite()
                && p.fluence_j_per_cm2 > 0.0
                && p.fluence_j_per_cm2 <= 100.0,
            "/fluence_j_per_cm2",
            format!(
                "{} J/cm2: expected a positive fluence over the area of at most 100 J/cm2",
                p.fluence_j_per_cm2
            ),
        );
        check(
            p.power_w.is_finite() && p.power_w > CLASS_4_MIN_W && p.power_w <= 30.0,
            "/power_w",
            format!(
                "{} W: expected more than {CLASS_4_MIN_W} W (Class 4, IEC 60825-1) and at most 30 W; plan lower powers with the lllt plugin",
                p.power_w
            ),
        );
        check(
            (1..=2).contains(&p.wavelengths_nm.len()),
            "/wavelengths_nm",
            format!(
                "{} wavelengths: expected one or two, e.g. [810, 980]",
                p.wavelengths_nm.len()
            ),
        );
        for (i, w) in p.wavelengths_nm.iter().enumerate() {
            check(
                in_range(*w, (600.0, 1100.0)),
                &format!("/wavelengths_nm/{i}"),
                format!("{w} nm: expected 600-1100 nm (typically 810 or 980)"),
            );
        }
        check(
            beam_ok,
            "/beam_area_cm2",
            format!(
                "{} cm2: expected the handpiece's beam area on the skin, 0.1-50 cm2",
                p.beam_area_cm2
            ),
        );
        match p.pulse_mode {
            PulseMode::Continuous => {
                check(
                    p.pulse_frequency_hz == 0.0,
                    "/pulse_frequency_hz",
                    "continuous mode: expected 0 (or pulse_mode \"pulsed\")".into(),
                );
                check(
                    p.duty_cycle == 1.0,
                    "/duty_cycle",
                    "continuous mode: expected a duty cycle of 1".into(),
                );
            }
            PulseMode::Pulsed => {
                check(
                    in_range(p.pulse_frequency_hz, (1.0, 100_000.0)),
                    "/pulse_frequency_hz",
                    format!(
                        "{} Hz: pulsed mode needs a pulse rate of 1 Hz to 100 kHz",
                        p.pulse_frequency_hz
                    ),
                );
                check(
                    p.duty_cycle.is_finite() && p.duty_cycle > 0.0 && p.duty_cycle < 1.0,
                    "/duty_cycle",
                    format!(
                        "{}: pulsed mode needs a duty cycle strictly between 0 and 1",
                        p.duty_cycle
                    ),
                );
            }
        }
        check(
            (5..=120).contains(&p.sweep_segment_s),
            "/sweep_segment_s",
            format!(
                "{} s: expected 5-120 s per sweep segment",
                p.sweep_segment_s
            ),
        );
        check(
            in_range(p.max_zone_cm2, (10.0, 1000.0)),
            "/max_zone_cm2",
            format!(
                "{} cm2: expected 10-1000 cm2 per zone (default 100, where the skin limit starts to fall with area)",
                p.max_zone_cm2
            ),
        );
        check(
            (1..=30).contains(&p.emission_lead_in_s),
            "/emission_lead_in_s",
            format!(
                "{} s: the emission indicator must come on before emission; expected 1-30 s",
                p.emission_lead_in_s
            ),
        );
        check(
            p.reposition_s <= 120,
            "/reposition_s",
            format!(
                "{} s: expected at most 120 s to move to the next area",
                p.reposition_s
            ),
        );
        if errs.is_empty() {
            let total_s: f64 = p
                .areas
                .iter()
                .map(|a| p.fluence_j_per_cm2 * a.area_cm2 / p.power_w)
                .sum();
            if total_s > 3600.0 {
                errs.push(FieldError::new(
                    "/fluence_j_per_cm2",
                    format!("the areas need {total_s:.0} s of emission at {} W; expected at most an hour: lower the fluence or raise the power", p.power_w),
                ));
            }
        }
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }

    fn plan(p: &Class4Params, patient: &Patient) -> Result<SessionPlan, PlanError> {
        let Some(first) = p.areas.first() else {
            return Err(PlanError::from_fields(vec![FieldError::new(
                "/areas",
                "at least one area to treat is needed",
            )]));
        };
        let wavelengths = if p.wavelengths_nm.is_empty() {
            default_wavelengths_nm()
        } else {
            p.wavelengths_nm.clone()
        };
        let lead_in_ms = u64::from(p.emission_lead_in_s.max(1)) * 1000;
        let mut steps = Vec::new();
        let mut notes = Vec::new();
        let mut t = 0u64;
        let mut segment_no = 0usize;
        let mut emission_ms = 0u64;
        steps.push(PlanStep {
            offset_ms: t,
            duration_ms: lead_in_ms,
            channel: CHANNEL.into(),
            site: first.site.clone(),
            setpoint: Setpoint::Off,
            label: format!(
                "emission indicator lead-in, {} s: handpiece on {}, start moving before emission",
                lead_in_ms / 1000,
                first.site
            ),
        });
        t += lead_in_ms;
        for (i, a) in p.areas.iter().enumerate() {
            if i > 0 {
                let pause_ms = (u64::from(p.reposition_s) * 1000).max(lead_in_ms);
                steps.push(PlanStep {
                    offset_ms: t,
                    duration_ms: pause_ms,
                    channel: CHANNEL.into(),
                    site: a.site.clone(),
                    setpoint: Setpoint::Off,
                    label: format!(
                        "move to {}; emission indicator lead-in, {} s",
                        a.site,
                        pause_ms / 1000
                    ),
                });
                t += pause_ms;
            }
            let pat = p.pattern(a.area_cm2);
            let k = pat.segments_ms.len();
            for (round, &seg_ms) in pat.segments_ms.iter().enumerate() {
                // A crosshatch: each round sweeps at right angles to the one before.
                let direction = if round % 2 == 0 {
                    "horizontal"
                } else {
                    "vertical"
                };
                for zone in 0..pat.zones {
                    let wavelength_nm = wavelengths[segment_no % wavelengths.len()];
                    segment_no += 1;
                    let zone_label = if pat.zones > 1 {
                        format!(
                            " zone {}/{} ({:.0} cm2)",
                            zone + 1,
                            pat.zones,
                            pat.zone_area_cm2
                        )
                    } else {
                        String::new()
                    };
                    steps.push(PlanStep {
                        offset_ms: t,
                        duration_ms: seg_ms,
                        channel: CHANNEL.into(),
                        site: a.site.clone(),
                        setpoint: Setpoint::Optical(OpticalSetpoint {
                            wavelength_nm,
                            power_mw: p.power_w * 1000.0,
                            beam_area_cm2: p.beam_area_cm2,
                            pulse_frequency_hz: p.pulse_frequency_hz,
                            duty_cycle: p.duty_cycle,
                            scan_area_cm2: Some(pat.zone_area_cm2),
                        }),
                        label: format!("sweep {direction} over {}{zone_label}, {wavelength_nm} nm, segment {}/{k}", a.site, round + 1),
                    });
                    t += seg_ms;
                    emission_ms += seg_ms;
                }
            }
            let energy = dose::energy_j(p.power_w * 1000.0, pat.zone_ms) * f64::from(pat.zones);
            notes.push(format!(
                "{}: {} cm2 at {} J/cm2 = {energy:.0} J in {:.0} s, {} zone(s) of {:.0} cm2, {k} sweep segment(s) per zone; average irradiance over a zone {:.0} mW/cm2",
                a.site,
                a.area_cm2,
                p.fluence_j_per_cm2,
                pat.zone_ms as f64 * f64::from(pat.zones) / 1000.0,
                pat.zones,
                pat.zone_area_cm2,
                dose::irradiance_mw_per_cm2(p.power_w * 1000.0, pat.zone_area_cm2),
            ));
            for w in &wavelengths {
                let avg = p.power_w / pat.zone_area_cm2;
                let mpe = skin_mpe_w_per_cm2(*w);
                if avg > mpe {
                    notes.push(format!(
                        "WARNING: {}: average {avg:.2} W/cm2 over a {:.0} cm2 zone is above the {w} nm skin MPE of {mpe:.2} W/cm2 (ICNIRP); lower the power or enlarge the area",
                        a.site, pat.zone_area_cm2
                    ));
                }
            }
            let sensation = patient.sensation_at(&a.site);
            if sensation != Sensation::Normal {
                notes.push(format!(
                    "precaution: {sensation:?} sensation at {}; laser IFUs list decreased sensation as a contraindication, so the governor needs an explicit override",
                    a.site
                ));
            }
        }
        let beam = p.power_w / p.beam_area_cm2;
        notes.insert(
            0,
            format!(
                "Class IV {} W on a {} cm2 beam ({beam:.2} W/cm2 at the beam: keep the handpiece moving), {}, {:.1} min of emission",
                p.power_w,
                p.beam_area_cm2,
                wavelengths.iter().map(|w| format!("{w} nm")).collect::<Vec<_>>().join(" / "),
                emission_ms as f64 / 60_000.0,
            ),
        );
        let minutes = emission_ms as f64 / 60_000.0;
        if !in_range(minutes, USUAL_SESSION_MIN) {
            notes.push(format!("note: {minutes:.1} min of emission is outside the usual 5-15 min per session (BMC Geriatrics 2019;19:218)"));
        }
        Ok(SessionPlan { steps, notes })
    }
}

export_plugin!(Class4Laser);

#[cfg(test)]
mod tests {
    use super::*;

    fn h() -> Harness<Class4Laser> {
        Harness::new()
    }

    fn plan_of(p: &Class4Params) -> SessionPlan {
        let json = serde_json::to_string(p).expect("params serialise");
        h().plan(&json, &Patient::default()).expect("plans")
    }

    fn errors(p: &Class4Params) -> Vec<FieldError> {
        let json = serde_json::to_string(p).expect("params serialise");
        h().validate(&json).expect_err("invalid")
    }

    fn optical(s: &PlanStep) -> Option<OpticalSetpoint> {
        match s.setpoint {
            Setpoint::Optical(o) => Some(o),
            _ => None,
        }
    }

    fn energy_on(plan: &SessionPlan, site: &str) -> f64 {
        plan.steps
            .iter()
            .filter(|s| s.site.to_string() == site)
            .filter_map(|s| optical(s).map(|o| dose::energy_j(o.power_mw, s.duration_ms)))
            .sum()
    }

    #[test]
    fn sample_plans_and_conforms() {
        let plan = h().plan_sample(&Patient::default()).expect("sample plans");
        h().assert_conforms(&plan);
    }

    #[test]
    fn mpe_matches_clinical_facts() {
        // clinical-facts.md: 0.20 W/cm2 at 633-660 nm, 0.33 at 810, 0.73 at 980, 1.0 at 1064.
        for (nm, mpe) in [
            (650.0, 0.20),
            (810.0, 0.33),
            (850.0, 0.40),
            (980.0, 0.73),
            (1064.0, 1.0),
        ] {
            assert!(
                (skin_mpe_w_per_cm2(nm) - mpe).abs() < 0.01,
                "{nm} nm: {}",
                skin_mpe_w_per_cm2(nm)
            );
        }
    }

    #[test]
    fn starts_with_an_emission_indicator_lead_in() {
        let plan = plan_of(&Class4Laser::sample_params());
        let first = &plan.steps[0];
        assert_eq!(first.setpoint, Setpoint::Off);
        assert_eq!(first.offset_ms, 0);
        assert_eq!(first.duration_ms, 3_000);
        assert!(
            first.label.starts_with("emission indicator lead-in, 3 s"),
            "{}",
            first.label
        );
        let first_emission = plan
            .steps
            .iter()
            .find(|s| s.setpoint.is_energy())
            .expect("emits");
        assert!(first_emission.offset_ms >= 3_000);
    }

    #[test]
    fn sample_delivers_the_fluence_over_each_foot_in_bounded_sweeps() {
        let p = Class4Laser::sample_params();
        let plan = plan_of(&p);
        // 10 J/cm2 x 80 cm2 = 800 J per foot; at 4 W that is 200 s, in ten 20 s sweeps.
        for site in ["foot_dorsum:left", "foot_dorsum:right"] {
            assert!((energy_on(&plan, site) - 800.0).abs() < 1e-6, "{site}");
        }
        let emissions: Vec<&PlanStep> = plan
            .steps
            .iter()
            .filter(|s| s.setpoint.is_energy())
            .collect();
        assert_eq!(emissions.len(), 20);
        for s in &emissions {
            assert!(s.duration_ms <= 20_000);
            let o = optical(s).expect("optical");
            assert_eq!(o.scan_area_cm2, Some(80.0));
            assert_eq!(o.power_mw, 4_000.0);
        }
        // Dual wavelength: segments alternate 810 / 980 nm.
        let wl: Vec<f64> = emissions
            .iter()
            .filter_map(|s| optical(s).map(|o| o.wavelength_nm))
            .collect();
        assert_eq!(&wl[..4], &[810.0, 980.0, 810.0, 980.0]);
        // Lead-in, 10 sweeps, move (with a fresh lead-in), 10 sweeps.
        assert_eq!(plan.steps.len(), 22);
        assert_eq!(plan.steps[11].setpoint, Setpoint::Off);
        assert!(
            plan.steps[11].label.contains("emission indicator lead-in"),
            "{}",
            plan.steps[11].label
        );
        assert_eq!(plan.duration_ms(), 3_000 + 200_000 + 5_000 + 200_000);
        for w in plan.steps.windows(2) {
            assert_eq!(w[0].end_ms(), w[1].offset_ms);
        }
        // The crosshatch turns every segment.
        assert!(
            emissions[0].label.contains("horizontal") && emissions[1].label.contains("vertical")
        );
    }

    #[test]
    fn large_areas_are_split_into_zones_swept_in_turn() {
        let mut p = Class4Laser::sample_params();
        p.areas = vec![Area {
            site: "lower_leg_posterior:left".parse().expect("site"),
            area_cm2: 250.0,
        }];
        p.power_w = 10.0;
        let pat = p.pattern(250.0);
        assert_eq!(pat.zones, 3);
        assert!((pat.zone_area_cm2 - 250.0 / 3.0).abs() < 1e-9);
        // 10 J/cm2 x 83.3 cm2 = 833.3 J per zone at 10 W = 83.334 s, in five segments <= 20 s.
        assert_eq!(pat.zone_ms, 83_334);
        assert_eq!(pat.segments_ms.len(), 5);
        assert_eq!(pat.segments_ms.iter().sum::<u64>(), pat.zone_ms);
        assert!(pat.segments_ms.iter().all(|&s| s <= 20_000));
        let plan = plan_of(&p);
        assert!(energy_on(&plan, "lower_leg_posterior:left") >= 2500.0);
        let labels: Vec<&str> = plan
            .steps
            .iter()
            .filter(|s| s.setpoint.is_energy())
            .map(|s| s.label.as_str())
            .collect();
        assert!(
            labels[0].contains("zone 1/3")
                && labels[1].contains("zone 2/3")
                && labels[2].contains("zone 3/3"),
            "{labels:?}"
        );
        h().assert_conforms(&plan);
    }

    #[test]
    fn warns_when_the_average_over_a_zone_is_above_the_mpe() {
        let mut p = Class4Laser::sample_params();
        p.areas = vec![Area {
            site: "knee:left".parse().expect("site"),
            area_cm2: 20.0,
        }];
        p.power_w = 10.0; // 0.5 W/cm2 over 20 cm2: above 0.33 at 810, below 0.73 at 980
        let plan = plan_of(&p);
        let warnings: Vec<&String> = plan
            .notes
            .iter()
            .filter(|n| n.starts_with("WARNING"))
            .collect();
        assert_eq!(warnings.len(), 1, "{:?}", plan.notes);
        assert!(warnings[0].contains("810 nm"), "{warnings:?}");
        assert!(
            !plan_of(&Class4Laser::sample_params())
                .notes
                .iter()
                .any(|n| n.starts_with("WARNING"))
        );
    }

    #[test]
    fn pulsed_mode_carries_the_pulse_fields() {
        let mut p = Class4Laser::sample_params();
        p.pulse_mode = PulseMode::Pulsed;
        p.pulse_frequency_hz = 500.0;
        p.duty_cycle = 0.5;
        p.wavelengths_nm = vec![980.0];
        let plan = plan_of(&p);
        for o in plan.steps.iter().filter_map(optical) {
            assert_eq!(
                (o.pulse_frequency_hz, o.duty_cycle, o.wavelength_nm),
                (500.0, 0.5, 980.0)
            );
        }
    }

    #[test]
    fn validation_points_at_the_field() {
        let mut p = Class4Laser::sample_params();
        p.areas[1].site = "ST36:right".parse().expect("site");
        p.areas[0].area_cm2 = 10.0; // smaller than five 3 cm2 beams
        p.power_w = 0.4;
        p.wavelengths_nm = vec![810.0, 1300.0];
        p.pulse_frequency_hz = 10.0;
        p.emission_lead_in_s = 0;
        let errs = errors(&p);
        let ptrs: Vec<&str> = errs.iter().map(|e| e.pointer.as_str()).collect();
        for expected in [
            "/areas/1/site",
            "/areas/0/area_cm2",
            "/power_w",
            "/wavelengths_nm/1",
            "/pulse_frequency_hz",
            "/emission_lead_in_s",
        ] {
            assert!(ptrs.contains(&expected), "{expected} missing from {ptrs:?}");
        }
        let power = errs
            .iter()
            .find(|e| e.pointer == "/power_w")
            .expect("power error");
        assert!(power.message.contains("lllt"), "{power:?}");

        let mut p = Class4Laser::sample_params();
        p.areas[0].site = "face:left".parse().expect("site");
        assert_eq!(errors(&p)[0].pointer, "/areas/0/site");

        let mut p = Class4Laser::sample_params();
        p.pulse_mode = PulseMode::Pulsed;
        let ptrs: Vec<String> = errors(&p).into_iter().map(|e| e.pointer).collect();
        assert_eq!(ptrs, ["/pulse_frequency_hz", "/duty_cycle"]);
    }

    /// Every parameter, at every depth, carries a description in the JSON Schema (from its doc
    /// comment), and unknown fields are refused.
    #[test]
    fn every_parameter_has_a_schema_description() {
        h().assert_params_documented();
    }

    #[test]
    fn planning_is_deterministic() {
        let p = Class4Laser::sample_params();
        assert_eq!(plan_of(&p), plan_of(&p));
    }

    #[test]
    fn example_params_file_validates_and_plans() {
        h().assert_example_file(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/params/class4-laser.json"
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
            .filter(|b| b.get("plugin").and_then(toml::Value::as_str) == Some("class4-laser"))
        {
            let json = serde_json::to_string(&b.get("params").cloned().expect("block has params"))
                .expect("params to JSON");
            h().validate(&json)
                .unwrap_or_else(|e| panic!("block {:?}: {e:?}", b.get("id")));
            n += 1;
        }
        assert!(n >= 1, "the combined protocol has a class4-laser block");
    }
}
