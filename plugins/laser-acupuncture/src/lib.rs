//! First-party laser acupuncture plugin.
//!
//! A Class 3B probe is held on one acupuncture point at a time. The plugin turns a named point
//! set (see [`sets`]) or an explicit list of WHO point codes, a side, a dose per point and the
//! probe's power into a point-by-point plan: an `Off` step to place the probe on the point, then
//! the emission for t = E / P ([`dose::time_for_energy_ms`]).
//!
//! Every step's site is the point itself (`EX-LE10-1:left`, not `foot_dorsum:left`), so the
//! governor's dose ledger can merge points that are the same place under two names (Bafeng 1, 2
//! and 4 are LR2, ST44 and GB43; `BodySite::canonical`). The plugin also treats such a place
//! only once per session when a list names it twice.
//!
//! Figures come from clinical-facts.md, laser acupuncture row: Class 3B probe, 100-400 mW,
//! 10-50 s per point, 0.5-8 J per point, about 4 J/cm2 (Litscher 2012; ACUDIN, BMC Neurol
//! 2018;18:40; Trials 2013;14:225; Cho & Kim 2021). The periorbital points BL1 and ST1 are never
//! a laser target ("Eyes").

use modalis_sdk::prelude::*;

pub mod sets;

/// Channel the probe is driven on.
pub const CHANNEL: &str = "probe";

/// Usual energy per point, 0.5-8 J (clinical-facts.md, laser acupuncture row).
pub const USUAL_J_PER_POINT: (f64, f64) = (0.5, 8.0);

/// Usual probe power, 100-400 mW (clinical-facts.md, laser acupuncture row).
pub const USUAL_PROBE_MW: (f64, f64) = (100.0, 400.0);

/// Usual time per point, 10-50 s (clinical-facts.md, laser acupuncture row).
pub const USUAL_S_PER_POINT: (f64, f64) = (10.0, 50.0);

/// Above 0.5 W continuous a laser is Class 4 (IEC 60825-1); an acupuncture probe is Class 3B.
pub const CLASS_3B_MAX_MW: f64 = 500.0;

/// Which side(s) of the body to treat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Sides {
    /// The patient's left only.
    Left,
    /// The patient's right only.
    Right,
    /// Left, then right.
    Both,
}

impl Sides {
    fn sides(self) -> &'static [Side] {
        match self {
            Sides::Left => &[Side::Left],
            Sides::Right => &[Side::Right],
            Sides::Both => &[Side::Left, Side::Right],
        }
    }
}

fn default_sides() -> Sides {
    Sides::Both
}

fn default_reposition_s() -> u32 {
    // Time to find the next point and place the probe; a workflow choice, not a dose.
    5
}

fn default_duty_cycle() -> f64 {
    1.0
}

/// Parameters of a laser acupuncture session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LaserAcupunctureParams {
    /// A named point set: `dpn` (Trials 2013;14:225), `dpn-extended`, `dpn-foot`, `bafeng`,
    /// `qiduan`, `upper-limb`. Give `set`, `points`, or both (the points follow the set's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<String>,
    /// Explicit WHO point codes, e.g. `ST36`, `EX-LE10` (all four Bafeng points) or `EX-LE10-3`
    /// (one of them). A code with a side (`LR3:left`) is treated on that side only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub points: Vec<String>,
    /// Side(s) to treat the points on: `left`, `right` or `both` (left first).
    #[serde(default = "default_sides")]
    pub side: Sides,
    /// Energy per point; usually 0.5-8 J (about 4 J/cm2).
    pub dose_j_per_point: f64,
    /// Average output power of the probe; usually 100-400 mW (Class 3B, at most 500 mW).
    pub probe_power_mw: f64,
    /// Wavelength of the probe, 600-1100 nm (e.g. 660, 785, 808, 830).
    pub wavelength_nm: f64,
    /// Beam (spot) area on the skin, from the probe's manual.
    pub beam_area_cm2: f64,
    /// Pulse repetition rate; 0 for continuous wave.
    #[serde(default)]
    pub pulse_frequency_hz: f64,
    /// Fraction of time on, in (0, 1]; 1 for continuous wave.
    #[serde(default = "default_duty_cycle")]
    pub duty_cycle: f64,
    /// Pause before each point to find it and place the probe (emission off).
    #[serde(default = "default_reposition_s")]
    pub reposition_s: u32,
}

/// The laser acupuncture plugin.
#[derive(Debug)]
pub struct LaserAcupuncture;

/// One entry of `points`, read: the point codes it stands for and an optional side.
fn read_entry(entry: &str) -> Result<(Vec<&'static str>, Option<Side>), String> {
    let (code, side) = match entry.rsplit_once(':') {
        Some((code, side)) => match side.trim().to_ascii_lowercase().as_str() {
            "left" | "l" => (code, Some(Side::Left)),
            "right" | "r" => (code, Some(Side::Right)),
            _ => {
                return Err(format!(
                    "{entry:?}: side {side:?} is not left or right (limb points have no midline)"
                ));
            }
        },
        None => (entry, None),
    };
    let codes = expand_point_group(code).ok_or_else(|| {
        format!("{code:?} is not a WHO point code this plugin knows; expected e.g. ST36, SP6, LR3, EX-LE10 (Bafeng) or EX-LE12-1 (Qiduan, toe 1)")
    })?;
    Ok((codes, side))
}

/// The point codes a parameter set names, in order (set first, then `points`), before sides.
fn entries(p: &LaserAcupunctureParams) -> Vec<(&'static str, Option<Side>)> {
    let mut out = Vec::new();
    if let Some(set) = p.set.as_deref().and_then(sets::set) {
        for code in set.points {
            for c in expand_point_group(code).unwrap_or_default() {
                out.push((c, None));
            }
        }
    }
    for e in &p.points {
        if let Ok((codes, side)) = read_entry(e) {
            out.extend(codes.into_iter().map(|c| (c, side)));
        }
    }
    out
}

/// The sites to treat, in order, each place once: by side (left first), then in list order. A
/// point that is the same place as one already listed (Bafeng 1 and LR2) is dropped, with a note.
fn sites(p: &LaserAcupunctureParams) -> (Vec<BodySite>, Vec<String>) {
    let entries = entries(p);
    let mut out: Vec<BodySite> = Vec::new();
    let mut notes = Vec::new();
    for side in [Side::Left, Side::Right] {
        for &(code, entry_side) in &entries {
            // An entry with its own side is treated on that side only, whatever `side` says.
            let wanted = match entry_side {
                Some(s) => s == side,
                None => p.side.sides().contains(&side),
            };
            if !wanted {
                continue;
            }
            let site = BodySite::point(code, side);
            if out.contains(&site) {
                continue;
            }
            if let Some(first) = out.iter().find(|s| s.canonical() == site.canonical()) {
                notes.push(format!("{site} is the same place as {first}: treated once"));
                continue;
            }
            out.push(site);
        }
    }
    (out, notes)
}

fn in_range(x: f64, (lo, hi): (f64, f64)) -> bool {
    x.is_finite() && x >= lo && x <= hi
}

impl ModalityPlugin for LaserAcupuncture {
    type Params = LaserAcupunctureParams;

    fn info() -> PluginInfo {
        PluginInfo {
            id: "laser-acupuncture",
            name: "Laser acupuncture (WHO standard points)",
            version: env!("CARGO_PKG_VERSION"),
            vendor: "modalis",
            modality: ModalityKind::LaserAcupuncture,
            channels: vec![ChannelInfo::new(
                CHANNEL,
                ChannelKind::Optical,
                "Class 3B acupuncture probe, held on one point at a time",
            )],
        }
    }

    fn sample_params() -> LaserAcupunctureParams {
        // The `dpn` set on both legs; 4 J per point at 200 mW = 20 s per point, on a 1 cm2 spot
        // = 4 J/cm2: all inside the usual ranges of clinical-facts.md.
        LaserAcupunctureParams {
            set: Some("dpn".into()),
            points: Vec::new(),
            side: Sides::Both,
            dose_j_per_point: 4.0,
            probe_power_mw: 200.0,
            wavelength_nm: 808.0,
            beam_area_cm2: 1.0,
            pulse_frequency_hz: 0.0,
            duty_cycle: 1.0,
            reposition_s: default_reposition_s(),
        }
    }

    fn validate(p: &LaserAcupunctureParams) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        let mut check = |ok: bool, pointer: &str, msg: String| {
            if !ok {
                errs.push(FieldError::new(pointer, msg));
            }
        };
        check(
            p.set.is_some() || !p.points.is_empty(),
            "/set",
            format!(
                "give a point set ({}) or a list of points",
                sets::names().join(", ")
            ),
        );
        if let Some(name) = &p.set {
            check(
                sets::set(name).is_some(),
                "/set",
                format!(
                    "{name:?} is not a known point set; expected one of {}",
                    sets::names().join(", ")
                ),
            );
        }
        let mut seen: Vec<(&str, Option<Side>)> = Vec::new();
        for (i, entry) in p.points.iter().enumerate() {
            let pointer = format!("/points/{i}");
            match read_entry(entry) {
                Err(msg) => check(false, &pointer, msg),
                Ok((codes, side)) => {
                    for code in &codes {
                        let ocular = acupoint(code).is_some_and(|pt| pt.region.is_ocular());
                        check(
                            !ocular,
                            &pointer,
                            format!(
                                "{code} is periorbital: never a laser target (clinical-facts.md \"Eyes\"); choose a point away from the eyes"
                            ),
                        );
                    }
                    check(
                        !seen.contains(&(entry.as_str(), side)),
                        &pointer,
                        format!("{entry:?} is listed twice"),
                    );
                    seen.push((entry.as_str(), side));
                }
            }
        }
        check(
            p.dose_j_per_point.is_finite()
                && p.dose_j_per_point > 0.0
                && p.dose_j_per_point <= 20.0,
            "/dose_j_per_point",
            format!(
                "{} J: expected a positive energy per point of at most 20 J (usually 0.5-8 J)",
                p.dose_j_per_point
            ),
        );
        check(
            p.probe_power_mw.is_finite()
                && p.probe_power_mw > 0.0
                && p.probe_power_mw <= CLASS_3B_MAX_MW,
            "/probe_power_mw",
            format!(
                "{} mW: expected a Class 3B probe above 0 and at most {CLASS_3B_MAX_MW} mW (usually 100-400 mW)",
                p.probe_power_mw
            ),
        );
        check(
            in_range(p.wavelength_nm, (600.0, 1100.0)),
            "/wavelength_nm",
            format!("{} nm: expected 600-1100 nm", p.wavelength_nm),
        );
        check(
            in_range(p.beam_area_cm2, (0.001, 5.0)),
            "/beam_area_cm2",
            format!(
                "{} cm2: expected the probe's spot on the skin, 0.001-5 cm2",
                p.beam_area_cm2
            ),
        );
        check(
            in_range(p.pulse_frequency_hz, (0.0, 100_000.0)),
            "/pulse_frequency_hz",
            format!(
                "{} Hz: expected 0 (continuous) up to 100 kHz",
                p.pulse_frequency_hz
            ),
        );
        let duty_ok = p.duty_cycle.is_finite() && p.duty_cycle > 0.0 && p.duty_cycle <= 1.0;
        check(
            duty_ok,
            "/duty_cycle",
            format!("{}: expected a fraction in (0, 1]", p.duty_cycle),
        );
        if duty_ok && p.pulse_frequency_hz == 0.0 {
            check(
                p.duty_cycle == 1.0,
                "/duty_cycle",
                "a continuous-wave probe (pulse_frequency_hz 0) has duty_cycle 1".into(),
            );
        }
        check(
            p.reposition_s <= 120,
            "/reposition_s",
            format!(
                "{} s: expected at most 120 s to place the probe",
                p.reposition_s
            ),
        );
        if errs.is_empty() {
            let s = p.dose_j_per_point / (p.probe_power_mw / 1000.0);
            if s > 600.0 {
                errs.push(FieldError::new(
                    "/probe_power_mw",
                    format!("{} J at {} mW takes {s:.0} s per point; expected at most 600 s: raise the power or lower the dose", p.dose_j_per_point, p.probe_power_mw),
                ));
            }
            if sites(p).0.is_empty() {
                errs.push(FieldError::new(
                    "/points",
                    "no point is left to treat on the chosen side",
                ));
            }
        }
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }

    fn plan(p: &LaserAcupunctureParams, patient: &Patient) -> Result<SessionPlan, PlanError> {
        let emit_ms = dose::time_for_energy_ms(p.dose_j_per_point, p.probe_power_mw);
        if emit_ms == 0 {
            return Err(PlanError::from_fields(vec![FieldError::new(
                "/dose_j_per_point",
                "the dose gives no emission time",
            )]));
        }
        let (sites, mut merged) = sites(p);
        if sites.is_empty() {
            return Err(PlanError::from_fields(vec![FieldError::new(
                "/points",
                "no point to treat",
            )]));
        }
        let setpoint = Setpoint::Optical(OpticalSetpoint {
            wavelength_nm: p.wavelength_nm,
            power_mw: p.probe_power_mw,
            beam_area_cm2: p.beam_area_cm2,
            pulse_frequency_hz: p.pulse_frequency_hz,
            duty_cycle: p.duty_cycle,
            // The probe is held still on the point.
            scan_area_cm2: None,
        });
        let reposition_ms = u64::from(p.reposition_s) * 1000;
        let n = sites.len();
        let mut steps = Vec::with_capacity(2 * n);
        let mut t = 0u64;
        for (i, site) in sites.iter().enumerate() {
            let name = site
                .acupoint()
                .map(|pt| format!(" ({}, {})", pt.name, pt.location))
                .unwrap_or_default();
            if reposition_ms > 0 {
                steps.push(PlanStep {
                    offset_ms: t,
                    duration_ms: reposition_ms,
                    channel: CHANNEL.into(),
                    site: site.clone(),
                    setpoint: Setpoint::Off,
                    label: format!("place probe on {site}{name}, point {}/{n}", i + 1),
                });
                t += reposition_ms;
            }
            steps.push(PlanStep {
                offset_ms: t,
                duration_ms: emit_ms,
                channel: CHANNEL.into(),
                site: site.clone(),
                setpoint,
                label: format!(
                    "{site}{name}, {:.2} J, point {}/{n}",
                    p.dose_j_per_point,
                    i + 1
                ),
            });
            t += emit_ms;
        }
        let mut notes = vec![format!(
            "laser acupuncture {} nm, {} mW on {} cm2: {:.2} J ({:.2} J/cm2) in {:.1} s per point, {n} points: {}",
            p.wavelength_nm,
            p.probe_power_mw,
            p.beam_area_cm2,
            p.dose_j_per_point,
            dose::fluence_j_per_cm2(p.dose_j_per_point, p.beam_area_cm2),
            emit_ms as f64 / 1000.0,
            sites
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        )];
        notes.append(&mut merged);
        if !in_range(p.dose_j_per_point, USUAL_J_PER_POINT) {
            notes.push(format!(
                "WARNING: {} J per point is outside the usual 0.5-8 J for laser acupuncture",
                p.dose_j_per_point
            ));
        }
        if !in_range(p.probe_power_mw, USUAL_PROBE_MW) {
            notes.push(format!(
                "note: {} mW is outside the usual 100-400 mW acupuncture probe",
                p.probe_power_mw
            ));
        }
        let s = emit_ms as f64 / 1000.0;
        if !in_range(s, USUAL_S_PER_POINT) {
            notes.push(format!(
                "note: {s:.1} s per point is outside the usual 10-50 s"
            ));
        }
        let pregnant = patient
            .conditions
            .iter()
            .any(|c| c.trim().eq_ignore_ascii_case("pregnancy"));
        for site in &sites {
            if pregnant && site.acupoint().is_some_and(|pt| pt.pregnancy_caution) {
                notes.push(format!(
                    "precaution: {site} carries a traditional caution in pregnancy"
                ));
            }
            let sensation = patient.sensation_at(site);
            if sensation != Sensation::Normal {
                notes.push(format!(
                    "precaution: {sensation:?} sensation at {site}; laser IFUs list decreased sensation as a contraindication, so the governor needs an explicit override"
                ));
            }
        }
        Ok(SessionPlan { steps, notes })
    }
}

export_plugin!(LaserAcupuncture);

#[cfg(test)]
mod tests {
    use super::*;

    fn h() -> Harness<LaserAcupuncture> {
        Harness::new()
    }

    fn plan_of(p: &LaserAcupunctureParams) -> SessionPlan {
        let json = serde_json::to_string(p).expect("params serialise");
        h().plan(&json, &Patient::default()).expect("plans")
    }

    fn errors(p: &LaserAcupunctureParams) -> Vec<FieldError> {
        let json = serde_json::to_string(p).expect("params serialise");
        h().validate(&json).expect_err("invalid")
    }

    fn with_points(points: &[&str], side: Sides) -> LaserAcupunctureParams {
        LaserAcupunctureParams {
            set: None,
            points: points.iter().map(|s| (*s).to_string()).collect(),
            side,
            ..LaserAcupuncture::sample_params()
        }
    }

    fn emitted_sites(plan: &SessionPlan) -> Vec<String> {
        plan.steps
            .iter()
            .filter(|s| s.setpoint.is_energy())
            .map(|s| s.site.to_string())
            .collect()
    }

    #[test]
    fn sample_plans_and_conforms() {
        let plan = h().plan_sample(&Patient::default()).expect("sample plans");
        h().assert_conforms(&plan);
    }

    #[test]
    fn dpn_set_is_the_trials_2013_points_on_both_sides() {
        let plan = h().plan_sample(&Patient::default()).expect("sample plans");
        let sites = emitted_sites(&plan);
        // Trials 2013;14:225: bilateral ST36, GB39, SP9, SP6, LR3 and GB41 = 12 points.
        assert_eq!(sites.len(), 12);
        assert_eq!(
            &sites[..6],
            [
                "ST36:left",
                "SP9:left",
                "SP6:left",
                "GB39:left",
                "LR3:left",
                "GB41:left"
            ]
        );
        assert!(sites[6..].iter().all(|s| s.ends_with(":right")));
        // 4 J at 200 mW = 20 s per point, each after a 5 s placing pause.
        assert_eq!(plan.steps.len(), 24);
        assert!(
            plan.steps
                .iter()
                .filter(|s| s.setpoint.is_energy())
                .all(|s| s.duration_ms == 20_000)
        );
        assert!(
            plan.steps
                .iter()
                .filter(|s| !s.setpoint.is_energy())
                .all(|s| s.duration_ms == 5_000)
        );
        assert_eq!(plan.duration_ms(), 12 * 25_000);
        for w in plan.steps.windows(2) {
            assert_eq!(w[0].end_ms(), w[1].offset_ms);
        }
    }

    #[test]
    fn every_point_has_its_own_site_and_delivers_its_dose() {
        let plan = h().plan_sample(&Patient::default()).expect("sample plans");
        for s in plan.steps.iter().filter(|s| s.setpoint.is_energy()) {
            assert!(
                matches!(s.site.location, Location::Acupoint(_)),
                "{}",
                s.site
            );
            let Setpoint::Optical(o) = s.setpoint else {
                panic!("optical")
            };
            assert!((dose::energy_j(o.power_mw, s.duration_ms) - 4.0).abs() < 1e-9);
            assert_eq!(o.scan_area_cm2, None);
        }
    }

    #[test]
    fn point_map_has_every_point_of_clinical_facts() {
        // clinical-facts.md, "Acupuncture points", with Bafeng and Qiduan as individual points.
        let codes = [
            "ST34", "ST36", "ST40", "ST41", "ST44", "SP3", "SP4", "SP6", "SP9", "SP10", "LR2",
            "LR3", "KI1", "KI3", "KI7", "BL40", "BL57", "BL60", "GB34", "GB39", "GB41", "GB43",
            "LI4", "LI11", "PC6", "HT7",
        ];
        for c in codes {
            assert!(acupoint(c).is_some(), "{c}");
        }
        assert_eq!(expand_point_group("EX-LE10").map(|v| v.len()), Some(4));
        assert_eq!(expand_point_group("EX-LE12").map(|v| v.len()), Some(5));
        assert_eq!(expand_point_group("EX-UE9").map(|v| v.len()), Some(4));
        // Every set names only known, non-ocular points.
        for set in sets::SETS {
            for code in set.points {
                let pts = expand_point_group(code)
                    .unwrap_or_else(|| panic!("{} names unknown {code}", set.name));
                assert!(
                    pts.iter()
                        .all(|c| acupoint(c).is_some_and(|p| !p.region.is_ocular())),
                    "{}",
                    set.name
                );
            }
        }
    }

    #[test]
    fn bafeng_and_qiduan_expand_to_individual_toe_points() {
        let plan = plan_of(&with_points(&["EX-LE10", "EX-LE12"], Sides::Right));
        let sites = emitted_sites(&plan);
        assert_eq!(
            sites,
            [
                "EX-LE10-1:right",
                "EX-LE10-2:right",
                "EX-LE10-3:right",
                "EX-LE10-4:right",
                "EX-LE12-1:right",
                "EX-LE12-2:right",
                "EX-LE12-3:right",
                "EX-LE12-4:right",
                "EX-LE12-5:right",
            ]
        );
    }

    #[test]
    fn coincident_points_are_treated_once_and_reported_for_the_ledger() {
        // LR2, ST44 and GB43 are Bafeng 1, 2 and 4: one place each, one dose each.
        let plan = plan_of(&with_points(
            &["LR2", "ST44", "EX-LE10", "GB43"],
            Sides::Left,
        ));
        let sites = emitted_sites(&plan);
        assert_eq!(
            sites,
            ["LR2:left", "ST44:left", "EX-LE10-3:left", "EX-LE10-4:left"]
        );
        assert!(
            plan.notes
                .iter()
                .any(|n| n.contains("EX-LE10-1:left is the same place as LR2:left")),
            "{:?}",
            plan.notes
        );
        assert!(
            plan.notes
                .iter()
                .any(|n| n.contains("GB43:left is the same place as EX-LE10-4:left")),
            "{:?}",
            plan.notes
        );
        // The ledger sees the sites by their canonical names: no place twice.
        let canon: Vec<BodySite> = plan
            .steps
            .iter()
            .filter(|s| s.setpoint.is_energy())
            .map(|s| s.site.canonical())
            .collect();
        let mut unique = canon.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), canon.len());
        assert_eq!(
            BodySite::point("EX-LE10-4", Side::Left).canonical(),
            BodySite::point("GB43", Side::Left)
        );
    }

    #[test]
    fn side_choice_and_sided_entries() {
        let plan = plan_of(&with_points(&["ST36", "LR3:right"], Sides::Left));
        assert_eq!(emitted_sites(&plan), ["ST36:left", "LR3:right"]);
        let plan = plan_of(&with_points(&["ST36", "LR3:right"], Sides::Both));
        assert_eq!(
            emitted_sites(&plan),
            ["ST36:left", "ST36:right", "LR3:right"]
        );
        let mut p = with_points(&["SP6"], Sides::Right);
        p.set = Some("bafeng".into());
        assert_eq!(emitted_sites(&plan_of(&p)).len(), 5);
    }

    #[test]
    fn periorbital_points_are_refused() {
        for code in ["BL1", "ST1", "st1:left"] {
            let errs = errors(&with_points(&["ST36", code], Sides::Both));
            assert_eq!(errs[0].pointer, "/points/1", "{errs:?}");
            assert!(errs[0].message.contains("never a laser target"), "{errs:?}");
        }
    }

    #[test]
    fn validation_points_at_the_field() {
        let mut p = with_points(&["ST36", "XX1", "ST36"], Sides::Both);
        p.set = Some("nope".into());
        p.dose_j_per_point = 0.0;
        p.probe_power_mw = 900.0;
        p.duty_cycle = 0.5;
        let errs = errors(&p);
        let ptrs: Vec<&str> = errs.iter().map(|e| e.pointer.as_str()).collect();
        for expected in [
            "/set",
            "/points/1",
            "/points/2",
            "/dose_j_per_point",
            "/probe_power_mw",
            "/duty_cycle",
        ] {
            assert!(ptrs.contains(&expected), "{expected} missing from {ptrs:?}");
        }
        let set_err = errs
            .iter()
            .find(|e| e.pointer == "/set")
            .expect("set error");
        assert!(
            set_err.message.contains("dpn"),
            "lists the known sets: {set_err:?}"
        );

        let p = with_points(&[], Sides::Both);
        assert_eq!(errors(&p)[0].pointer, "/set");
        let p = with_points(&["ST36:midline"], Sides::Both);
        assert_eq!(errors(&p)[0].pointer, "/points/0");
    }

    #[test]
    fn warns_outside_the_usual_ranges_and_notes_precautions() {
        let mut p = LaserAcupuncture::sample_params();
        p.dose_j_per_point = 10.0;
        p.probe_power_mw = 50.0;
        let patient = Patient {
            sensation: vec![SiteSensation {
                site: "lower_leg_medial:left".parse().expect("site"),
                sensation: Sensation::Reduced,
            }],
            conditions: vec!["pregnancy".into()],
        };
        let json = serde_json::to_string(&p).expect("serialise");
        let plan = h().plan(&json, &patient).expect("plans");
        let notes = plan.notes.join("\n");
        assert!(notes.contains("outside the usual 0.5-8 J"), "{notes}");
        assert!(notes.contains("outside the usual 100-400 mW"), "{notes}");
        assert!(notes.contains("outside the usual 10-50 s"), "{notes}");
        assert!(
            notes.contains("SP6:left carries a traditional caution in pregnancy"),
            "{notes}"
        );
        assert!(notes.contains("Reduced sensation at SP9:left"), "{notes}");
        assert!(!notes.contains("Reduced sensation at ST36:left"), "{notes}");
    }

    /// Every parameter, at every depth, carries a description in the JSON Schema (from its doc
    /// comment), and unknown fields are refused.
    #[test]
    fn every_parameter_has_a_schema_description() {
        h().assert_params_documented();
    }

    #[test]
    fn planning_is_deterministic() {
        let p = LaserAcupuncture::sample_params();
        assert_eq!(plan_of(&p), plan_of(&p));
    }

    #[test]
    fn example_params_file_validates_and_plans() {
        h().assert_example_file(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/params/laser-acupuncture.json"
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
            .filter(|b| b.get("plugin").and_then(toml::Value::as_str) == Some("laser-acupuncture"))
        {
            let json = serde_json::to_string(&b.get("params").cloned().expect("block has params"))
                .expect("params to JSON");
            h().validate(&json)
                .unwrap_or_else(|e| panic!("block {:?}: {e:?}", b.get("id")));
            n += 1;
        }
        assert!(
            n >= 1,
            "the combined protocol has a laser-acupuncture block"
        );
    }
}
