//! First-party LLLT (low-level laser therapy / photobiomodulation) plugin.
//!
//! Turns a list of sites, or a grid laid over an area, a dose (J per point or J/cm2) and the
//! probe's wavelength and power into a point-by-point plan: before each point an `Off` step for
//! placing the probe, then the emission for exactly the time the dose needs
//! (t = E / P, [`dose::time_for_energy_ms`]).
//!
//! The clinical ranges come from clinical-facts.md, "What clinics actually run" (WALT dose table
//! 780-860 nm; Acta Med Iran 2.5 J/cm2; Anju 2019 3.1 J/cm2) and "Optical" (therapeutic window,
//! irradiance below about 100 mW/cm2 after Hamblin and the WALT notes). A dose outside the usual
//! window is not refused here: the plan carries a warning for the clinician's dose report, and
//! the host's governor applies the limits.

use modalis_sdk::prelude::*;

/// Channel the probe is driven on.
pub const CHANNEL: &str = "probe";

/// Usual dose window per point, 1-8 J (clinical-facts.md, WALT dose table 780-860 nm). Too little
/// does nothing and too much inhibits (Arndt-Schulz, Huang et al. 2009), so both ends warn.
pub const USUAL_J_PER_POINT: (f64, f64) = (1.0, 8.0);

/// Irradiance above which LLLT starts heating tissue, 100 mW/cm2 (clinical-facts.md "LLLT
/// irradiance": Hamblin; WALT notes).
pub const HEATING_IRRADIANCE_MW_PER_CM2: f64 = 100.0;

/// Usual time per point, 20-300 s (clinical-facts.md, LLLT row).
pub const USUAL_S_PER_POINT: (f64, f64) = (20.0, 300.0);

/// Fluence used in the neuropathy trials, about 2.5-4 J/cm2 (clinical-facts.md: Acta Med Iran
/// 2.5 J/cm2; Anju 2019 3.1 J/cm2).
pub const NEUROPATHY_J_PER_CM2: (f64, f64) = (2.5, 4.0);

/// Photobiomodulation wavelengths, 600-1100 nm (issue 4; clinical-facts.md lists 630-660,
/// 780-860 and 904 nm in use).
pub const WAVELENGTH_NM: (f64, f64) = (600.0, 1100.0);

/// Above 0.5 W continuous a laser is Class 4 (IEC 60825-1, clinical-facts.md "Class 3B upper
/// bound"): that is the class4-laser plugin's job, with a scanned beam.
pub const CLASS_3B_MAX_MW: f64 = 500.0;

/// A grid laid over a body region: points `spacing_cm` apart covering `area_cm2` on each site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Grid {
    /// Body regions to cover, one grid each, e.g. `foot_dorsum:left`. Regions, not points.
    pub sites: Vec<BodySite>,
    /// Area covered on each site, e.g. about 60 cm2 for the dorsum of an adult foot.
    pub area_cm2: f64,
    /// Distance between neighbouring grid points; each point stands for spacing x spacing of skin.
    #[serde(default = "default_spacing_cm")]
    pub spacing_cm: f64,
}

fn default_spacing_cm() -> f64 {
    // Two centimetres keeps a foot dorsum to about 15 points; a workflow choice, not a dose.
    2.0
}

fn default_reposition_s() -> u32 {
    // Time to lift and place the probe; a workflow choice, not a dose.
    5
}

fn default_duty_cycle() -> f64 {
    1.0
}

/// Parameters of an LLLT session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LlltParams {
    /// Points to treat one by one, in order: body regions (`foot_dorsum:left`) or acupuncture
    /// points (`ST36:right`). Give either `sites` or `grid`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<BodySite>,
    /// A grid of points over an area, instead of `sites`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid: Option<Grid>,
    /// Energy per point. Usual window 1-8 J (WALT). Give this or `dose_j_per_cm2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dose_j_per_point: Option<f64>,
    /// Fluence under the beam (energy per point / beam area). Neuropathy trials used about
    /// 2.5-4 J/cm2. Give this or `dose_j_per_point`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dose_j_per_cm2: Option<f64>,
    /// Wavelength of the probe, 600-1100 nm (e.g. 660, 808, 850, 904).
    pub wavelength_nm: f64,
    /// Average output power of the probe (the mean power for a pulsed probe), at most 500 mW.
    pub power_mw: f64,
    /// Beam (spot) area on the skin, from the probe's manual.
    pub beam_area_cm2: f64,
    /// Pulse repetition rate; 0 for continuous wave.
    #[serde(default)]
    pub pulse_frequency_hz: f64,
    /// Fraction of time on, in (0, 1]; 1 for continuous wave.
    #[serde(default = "default_duty_cycle")]
    pub duty_cycle: f64,
    /// Pause before each point to place the probe (emission off).
    #[serde(default = "default_reposition_s")]
    pub reposition_s: u32,
}

/// One point of the plan: where, and what the operator reads.
#[derive(Debug, Clone, PartialEq)]
struct Point {
    site: BodySite,
    label: String,
}

/// The LLLT plugin.
#[derive(Debug)]
pub struct Lllt;

impl LlltParams {
    /// Energy per point the parameters ask for (J), if a dose is given.
    pub fn energy_per_point_j(&self) -> Option<f64> {
        match (self.dose_j_per_point, self.dose_j_per_cm2) {
            (Some(j), None) => Some(j),
            (None, Some(f)) => Some(f * self.beam_area_cm2),
            _ => None,
        }
    }

    /// Irradiance under the beam (mW/cm2).
    pub fn irradiance_mw_per_cm2(&self) -> f64 {
        dose::irradiance_mw_per_cm2(self.power_mw, self.beam_area_cm2)
    }
}

impl Grid {
    /// Grid points per site: one per spacing x spacing square, at least one.
    pub fn points_per_site(&self) -> u32 {
        let n = (self.area_cm2 / (self.spacing_cm * self.spacing_cm)).round();
        if n.is_finite() && n >= 1.0 {
            n.min(f64::from(u32::MAX)) as u32
        } else {
            1
        }
    }
}

/// Most grid points per site this plugin will plan; a larger grid is almost always a unit error
/// (mm2 entered as cm2) and would make a plan no operator can follow.
const MAX_GRID_POINTS_PER_SITE: u32 = 200;

fn points(p: &LlltParams) -> Vec<Point> {
    if let Some(g) = &p.grid {
        let n = g.points_per_site();
        g.sites
            .iter()
            .flat_map(|s| {
                (1..=n).map(move |k| Point {
                    site: s.clone(),
                    label: format!("{s} grid point {k}/{n}"),
                })
            })
            .collect()
    } else {
        p.sites
            .iter()
            .map(|s| Point {
                site: s.clone(),
                label: s.to_string(),
            })
            .collect()
    }
}

fn in_range(x: f64, (lo, hi): (f64, f64)) -> bool {
    x.is_finite() && x >= lo && x <= hi
}

impl ModalityPlugin for Lllt {
    type Params = LlltParams;

    fn info() -> PluginInfo {
        PluginInfo {
            id: "lllt",
            name: "LLLT / photobiomodulation (Class 3B lasers, LED clusters)",
            version: env!("CARGO_PKG_VERSION"),
            vendor: "modalis",
            modality: ModalityKind::Photobiomodulation,
            channels: vec![ChannelInfo::new(
                CHANNEL,
                ChannelKind::Optical,
                "LLLT probe or LED cluster, held on one point at a time",
            )],
        }
    }

    fn sample_params() -> LlltParams {
        // The dorsum of both feet as a grid, 3 J/cm2 (within the 2.5-4 J/cm2 of the neuropathy
        // trials, clinical-facts.md) with an 808 nm, 100 mW probe of 1 cm2: 3 J (1-8 J window)
        // in 30 s (20-300 s) per point at 100 mW/cm2 (not above the heating threshold).
        LlltParams {
            sites: Vec::new(),
            grid: Some(Grid {
                sites: vec![
                    BodySite::region(BodyRegion::FootDorsum, Side::Left),
                    BodySite::region(BodyRegion::FootDorsum, Side::Right),
                ],
                area_cm2: 60.0,
                spacing_cm: 2.0,
            }),
            dose_j_per_point: None,
            dose_j_per_cm2: Some(3.0),
            wavelength_nm: 808.0,
            power_mw: 100.0,
            beam_area_cm2: 1.0,
            pulse_frequency_hz: 0.0,
            duty_cycle: 1.0,
            reposition_s: default_reposition_s(),
        }
    }

    fn validate(p: &LlltParams) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        let mut check = |ok: bool, pointer: &str, msg: String| {
            if !ok {
                errs.push(FieldError::new(pointer, msg));
            }
        };
        // Where.
        match (&p.grid, p.sites.is_empty()) {
            (None, true) => check(
                false,
                "/sites",
                "give the sites to treat, or a grid over an area".into(),
            ),
            (Some(_), false) => check(
                false,
                "/grid",
                "give either sites or a grid, not both".into(),
            ),
            _ => {}
        }
        for (i, s) in p.sites.iter().enumerate() {
            check(
                !s.body_region().is_some_and(BodyRegion::is_ocular),
                &format!("/sites/{i}"),
                format!(
                    "{s} is on or around the eye: never a laser target (clinical-facts.md \"Eyes\"); expected a site away from the eyes"
                ),
            );
            // The same place twice would double its dose; points that are one place under two
            // names (Bafeng 1 and LR2) count as the same (BodySite::canonical).
            if let Some(j) = p.sites[..i]
                .iter()
                .position(|o| o.canonical() == s.canonical())
            {
                check(
                    false,
                    &format!("/sites/{i}"),
                    format!(
                        "{s} is the same place as /sites/{j} ({}); list each place once",
                        p.sites[j]
                    ),
                );
            }
        }
        if let Some(g) = &p.grid {
            check(
                !g.sites.is_empty(),
                "/grid/sites",
                "a grid needs at least one body region to cover".into(),
            );
            for (i, s) in g.sites.iter().enumerate() {
                let pointer = format!("/grid/sites/{i}");
                match &s.location {
                    Location::Acupoint(_) => check(
                        false,
                        &pointer,
                        format!(
                            "{s} is a point; a grid covers a body region, e.g. foot_dorsum:left"
                        ),
                    ),
                    Location::Region(r) => check(
                        !r.is_ocular(),
                        &pointer,
                        format!(
                            "{s} is on or around the eye: never a laser target; expected a region away from the eyes"
                        ),
                    ),
                }
            }
            check(
                in_range(g.area_cm2, (1.0, 1000.0)),
                "/grid/area_cm2",
                format!(
                    "{} cm2: expected the area covered on each site, 1-1000 cm2",
                    g.area_cm2
                ),
            );
            check(
                in_range(g.spacing_cm, (0.5, 5.0)),
                "/grid/spacing_cm",
                format!("{} cm: expected a grid spacing of 0.5-5 cm", g.spacing_cm),
            );
            if in_range(g.area_cm2, (1.0, 1000.0)) && in_range(g.spacing_cm, (0.5, 5.0)) {
                let n = g.points_per_site();
                check(
                    n <= MAX_GRID_POINTS_PER_SITE,
                    "/grid/spacing_cm",
                    format!(
                        "{n} points per site; expected at most {MAX_GRID_POINTS_PER_SITE}: widen the spacing"
                    ),
                );
            }
        }
        // Dose.
        match (p.dose_j_per_point, p.dose_j_per_cm2) {
            (None, None) => check(
                false,
                "/dose_j_per_point",
                "give the dose as dose_j_per_point or dose_j_per_cm2".into(),
            ),
            (Some(_), Some(_)) => check(
                false,
                "/dose_j_per_cm2",
                "give the dose once: dose_j_per_point or dose_j_per_cm2, not both".into(),
            ),
            (Some(j), None) => check(
                j.is_finite() && j > 0.0 && j <= 50.0,
                "/dose_j_per_point",
                format!(
                    "{j} J: expected a positive energy per point of at most 50 J (usual window 1-8 J)"
                ),
            ),
            (None, Some(f)) => check(
                f.is_finite() && f > 0.0 && f <= 50.0,
                "/dose_j_per_cm2",
                format!(
                    "{f} J/cm2: expected a positive fluence of at most 50 J/cm2 (neuropathy trials 2.5-4 J/cm2)"
                ),
            ),
        }
        // Probe.
        check(
            in_range(p.wavelength_nm, WAVELENGTH_NM),
            "/wavelength_nm",
            format!(
                "{} nm: expected a photobiomodulation wavelength of {}-{} nm",
                p.wavelength_nm, WAVELENGTH_NM.0, WAVELENGTH_NM.1
            ),
        );
        check(
            p.power_mw.is_finite() && p.power_mw > 0.0 && p.power_mw <= CLASS_3B_MAX_MW,
            "/power_mw",
            format!(
                "{} mW: expected a Class 3B probe above 0 and at most {CLASS_3B_MAX_MW} mW; above 0.5 W is Class 4 (IEC 60825-1), plan it with the class4-laser plugin",
                p.power_mw
            ),
        );
        check(
            in_range(p.beam_area_cm2, (0.01, 100.0)),
            "/beam_area_cm2",
            format!(
                "{} cm2: expected the beam area on the skin, 0.01-100 cm2 (probe or LED cluster)",
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
        // The time per point must be a plannable number of milliseconds.
        if errs.is_empty()
            && let Some(e) = p.energy_per_point_j()
        {
            let s = e / (p.power_mw / 1000.0);
            if s > 3600.0 {
                errs.push(FieldError::new(
                    "/power_mw",
                    format!("{e:.2} J at {} mW takes {s:.0} s per point; expected at most an hour: raise the power or lower the dose", p.power_mw),
                ));
            }
        }
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }

    fn plan(p: &LlltParams, patient: &Patient) -> Result<SessionPlan, PlanError> {
        let energy_j = p.energy_per_point_j().ok_or_else(|| {
            PlanError::from_fields(vec![FieldError::new(
                "/dose_j_per_point",
                "give the dose as dose_j_per_point or dose_j_per_cm2",
            )])
        })?;
        let emit_ms = dose::time_for_energy_ms(energy_j, p.power_mw);
        if emit_ms == 0 {
            return Err(PlanError::from_fields(vec![FieldError::new(
                "/dose_j_per_point",
                "the dose gives no emission time",
            )]));
        }
        let reposition_ms = u64::from(p.reposition_s) * 1000;
        let setpoint = Setpoint::Optical(OpticalSetpoint {
            wavelength_nm: p.wavelength_nm,
            power_mw: p.power_mw,
            beam_area_cm2: p.beam_area_cm2,
            pulse_frequency_hz: p.pulse_frequency_hz,
            duty_cycle: p.duty_cycle,
            // The probe is held still on each point.
            scan_area_cm2: None,
        });
        let pts = points(p);
        let n = pts.len();
        let mut steps = Vec::with_capacity(2 * n);
        let mut t = 0u64;
        for (i, pt) in pts.iter().enumerate() {
            if reposition_ms > 0 {
                steps.push(PlanStep {
                    offset_ms: t,
                    duration_ms: reposition_ms,
                    channel: CHANNEL.into(),
                    site: pt.site.clone(),
                    setpoint: Setpoint::Off,
                    label: format!("place probe: point {}/{n}, {}", i + 1, pt.label),
                });
                t += reposition_ms;
            }
            steps.push(PlanStep {
                offset_ms: t,
                duration_ms: emit_ms,
                channel: CHANNEL.into(),
                site: pt.site.clone(),
                setpoint,
                label: format!("point {}/{n}: {}, {energy_j:.2} J", i + 1, pt.label),
            });
            t += emit_ms;
        }
        Ok(SessionPlan {
            steps,
            notes: notes(p, patient, energy_j, emit_ms, n),
        })
    }
}

fn notes(p: &LlltParams, patient: &Patient, energy_j: f64, emit_ms: u64, n: usize) -> Vec<String> {
    let irradiance = p.irradiance_mw_per_cm2();
    let fluence = dose::fluence_j_per_cm2(energy_j, p.beam_area_cm2);
    let emit_s = emit_ms as f64 / 1000.0;
    let mut notes = vec![format!(
        "LLLT {} nm, {} mW on {} cm2 ({irradiance:.0} mW/cm2): {energy_j:.2} J per point ({fluence:.2} J/cm2) in {emit_s:.1} s, {n} points, {:.1} J in total",
        p.wavelength_nm,
        p.power_mw,
        p.beam_area_cm2,
        energy_j * n as f64,
    )];
    if let Some(g) = &p.grid {
        let mean = dose::fluence_j_per_cm2(energy_j * f64::from(g.points_per_site()), g.area_cm2);
        notes.push(format!(
            "grid: {} points {} cm apart on each {} cm2 site; mean fluence over the area {mean:.2} J/cm2",
            g.points_per_site(),
            g.spacing_cm,
            g.area_cm2
        ));
    }
    if !in_range(energy_j, USUAL_J_PER_POINT) {
        notes.push(format!(
            "WARNING: {energy_j:.2} J per point is outside the usual 1-8 J window (WALT dose table); too little does nothing and too much inhibits (biphasic dose response, Huang et al. 2009)"
        ));
    }
    if irradiance > HEATING_IRRADIANCE_MW_PER_CM2 {
        notes.push(format!(
            "WARNING: irradiance {irradiance:.0} mW/cm2 is above the 100 mW/cm2 that LLLT stays below to avoid heating (Hamblin; WALT notes)"
        ));
    }
    if !in_range(emit_s, USUAL_S_PER_POINT) {
        notes.push(format!(
            "note: {emit_s:.1} s per point is outside the usual 20-300 s (clinical-facts.md)"
        ));
    }
    let mut seen: Vec<&BodySite> = Vec::new();
    let sites: Vec<&BodySite> = match &p.grid {
        Some(g) => g.sites.iter().collect(),
        None => p.sites.iter().collect(),
    };
    for s in sites {
        if seen.contains(&s) {
            continue;
        }
        seen.push(s);
        let sensation = patient.sensation_at(s);
        if sensation != Sensation::Normal {
            notes.push(format!(
                "precaution: {sensation:?} sensation at {s}; laser IFUs list decreased sensation as a contraindication, so the governor needs an explicit override"
            ));
        }
    }
    notes
}

export_plugin!(Lllt);

#[cfg(test)]
mod tests {
    use super::*;

    fn h() -> Harness<Lllt> {
        Harness::new()
    }

    fn plan_of(p: &LlltParams) -> SessionPlan {
        let json = serde_json::to_string(p).expect("params serialise");
        h().plan(&json, &Patient::default()).expect("plans")
    }

    fn pointers(p: &LlltParams) -> Vec<String> {
        let json = serde_json::to_string(p).expect("params serialise");
        h().validate(&json)
            .expect_err("invalid")
            .into_iter()
            .map(|e| e.pointer)
            .collect()
    }

    /// Panics unless one of the plan's notes contains `needle`.
    #[track_caller]
    fn assert_note(plan: &SessionPlan, needle: &str) {
        assert!(
            plan.notes.iter().any(|n| n.contains(needle)),
            "no note contains {needle:?}: {:?}",
            plan.notes
        );
    }

    fn sites_params() -> LlltParams {
        LlltParams {
            sites: vec![
                "ST36:left".parse().expect("site"),
                "foot_dorsum:left".parse().expect("site"),
            ],
            grid: None,
            dose_j_per_point: Some(4.0),
            dose_j_per_cm2: None,
            wavelength_nm: 808.0,
            power_mw: 150.0,
            beam_area_cm2: 2.0,
            pulse_frequency_hz: 0.0,
            duty_cycle: 1.0,
            reposition_s: 5,
        }
    }

    fn optical(s: &PlanStep) -> Option<OpticalSetpoint> {
        match s.setpoint {
            Setpoint::Optical(o) => Some(o),
            _ => None,
        }
    }

    #[test]
    fn sample_plans_and_conforms() {
        let plan = h().plan_sample(&Patient::default()).expect("sample plans");
        h().assert_conforms(&plan);
    }

    #[test]
    fn sample_grid_has_fifteen_points_per_foot_at_three_joules() {
        let plan = h().plan_sample(&Patient::default()).expect("sample plans");
        // 60 cm2 / (2 cm)^2 = 15 points per foot, two feet, each preceded by a placing pause.
        assert_eq!(plan.steps.len(), 60);
        let emissions: Vec<&PlanStep> = plan
            .steps
            .iter()
            .filter(|s| s.setpoint.is_energy())
            .collect();
        assert_eq!(emissions.len(), 30);
        // 3 J/cm2 on 1 cm2 = 3 J; at 100 mW that is 30 s.
        for s in &emissions {
            assert_eq!(s.duration_ms, 30_000);
            let o = optical(s).expect("optical");
            assert!((dose::energy_j(o.power_mw, s.duration_ms) - 3.0).abs() < 1e-9);
            assert_eq!(o.scan_area_cm2, None);
        }
        assert_eq!(
            emissions[0].site,
            BodySite::region(BodyRegion::FootDorsum, Side::Left)
        );
        assert_eq!(
            emissions[29].site,
            BodySite::region(BodyRegion::FootDorsum, Side::Right)
        );
        assert_eq!(plan.duration_ms(), 30 * (5_000 + 30_000));
        // The sample sits inside every usual window: no warnings, no notes on time per point.
        assert_eq!(plan.notes.len(), 2, "{:?}", plan.notes);
    }

    #[test]
    fn time_per_point_is_energy_over_power_rounded_up() {
        // 4 J at 150 mW = 26.666.. s, rounded up to the next millisecond so the dose is never short.
        let plan = plan_of(&sites_params());
        let e: Vec<&PlanStep> = plan
            .steps
            .iter()
            .filter(|s| s.setpoint.is_energy())
            .collect();
        assert_eq!(e.len(), 2);
        assert!(e.iter().all(|s| s.duration_ms == 26_667));
        assert!(dose::energy_j(150.0, 26_667) >= 4.0);
    }

    #[test]
    fn dose_in_j_per_cm2_is_fluence_under_the_beam() {
        let mut p = sites_params();
        p.dose_j_per_point = None;
        p.dose_j_per_cm2 = Some(2.5);
        // 2.5 J/cm2 on a 2 cm2 beam = 5 J; at 150 mW = 33.334 s.
        assert_eq!(p.energy_per_point_j(), Some(5.0));
        let plan = plan_of(&p);
        let s = plan
            .steps
            .iter()
            .find(|s| s.setpoint.is_energy())
            .expect("emission");
        assert_eq!(s.duration_ms, 33_334);
    }

    #[test]
    fn points_alternate_placing_pauses_and_emissions_without_overlap() {
        let plan = plan_of(&sites_params());
        let kinds: Vec<bool> = plan.steps.iter().map(|s| s.setpoint.is_energy()).collect();
        assert_eq!(kinds, [false, true, false, true]);
        for w in plan.steps.windows(2) {
            assert_eq!(w[0].end_ms(), w[1].offset_ms);
            assert_eq!(w[0].channel, CHANNEL);
        }
        assert_eq!(plan.steps[0].duration_ms, 5_000);
        assert_eq!(plan.steps[0].site, plan.steps[1].site);
        h().assert_conforms(&plan);
    }

    #[test]
    fn zero_reposition_gives_back_to_back_points() {
        let mut p = sites_params();
        p.reposition_s = 0;
        let plan = plan_of(&p);
        assert!(plan.steps.iter().all(|s| s.setpoint.is_energy()));
        assert_eq!(plan.steps.len(), 2);
    }

    #[test]
    fn warns_outside_the_dose_window_and_above_100_mw_per_cm2() {
        let plan = plan_of(&sites_params());
        assert!(
            !plan.notes.iter().any(|n| n.starts_with("WARNING")),
            "{:?}",
            plan.notes
        );

        for dose in [12.0, 0.5] {
            let p = LlltParams {
                dose_j_per_point: Some(dose),
                ..sites_params()
            };
            assert_note(&plan_of(&p), "outside the usual 1-8 J");
        }

        let p = LlltParams {
            beam_area_cm2: 1.0, // 150 mW on 1 cm2
            power_mw: 150.0,
            ..sites_params()
        };
        assert_note(&plan_of(&p), "above the 100 mW/cm2");
    }

    #[test]
    fn notes_decreased_sensation_at_a_site() {
        let p = sites_params();
        let patient = Patient {
            sensation: vec![SiteSensation {
                site: "foot_dorsum:left".parse().expect("site"),
                sensation: Sensation::Absent,
            }],
            conditions: vec![],
        };
        let json = serde_json::to_string(&p).expect("serialise");
        let plan = h().plan(&json, &patient).expect("plans");
        assert_note(&plan, "Absent sensation at foot_dorsum:left");
    }

    #[test]
    fn validation_points_at_the_field() {
        let mut p = sites_params();
        p.sites.push("BL1:left".parse().expect("site"));
        p.dose_j_per_cm2 = Some(3.0);
        p.power_mw = 800.0;
        p.wavelength_nm = 450.0;
        p.duty_cycle = 0.5;
        let ptrs = pointers(&p);
        for expected in [
            "/sites/2",
            "/dose_j_per_cm2",
            "/power_mw",
            "/wavelength_nm",
            "/duty_cycle",
        ] {
            assert!(
                ptrs.iter().any(|x| x == expected),
                "{expected} missing from {ptrs:?}"
            );
        }

        let mut p = sites_params();
        p.dose_j_per_point = None;
        assert_eq!(pointers(&p), ["/dose_j_per_point"]);

        let mut p = sites_params();
        p.sites.clear();
        assert_eq!(pointers(&p), ["/sites"]);

        let mut p = sites_params();
        p.sites.push("EX-LE10-1:left".parse().expect("site"));
        p.sites.push("LR2:left".parse().expect("site"));
        p.sites.push("LR2:right".parse().expect("site"));
        assert_eq!(pointers(&p), ["/sites/3"]);

        let mut p = Lllt::sample_params();
        p.sites = vec!["ST36:left".parse().expect("site")];
        assert_eq!(pointers(&p), ["/grid"]);

        let mut p = Lllt::sample_params();
        if let Some(g) = p.grid.as_mut() {
            g.sites[1] = "ST36:left".parse().expect("site");
            g.spacing_cm = 0.5;
            g.area_cm2 = 1000.0;
        }
        let ptrs = pointers(&p);
        assert!(ptrs.contains(&"/grid/sites/1".to_string()), "{ptrs:?}");
        assert!(ptrs.contains(&"/grid/spacing_cm".to_string()), "{ptrs:?}");
    }

    #[test]
    fn messages_say_what_is_expected() {
        let mut p = sites_params();
        p.power_mw = 800.0;
        let json = serde_json::to_string(&p).expect("serialise");
        let errs = h().validate(&json).expect_err("invalid");
        assert!(errs[0].message.contains("class4-laser"), "{errs:?}");
    }

    #[test]
    fn unknown_fields_and_bad_sites_are_refused_at_their_pointer() {
        let json = r#"{"sites":["ST36:left"],"dose_j_per_point":4,"wavelength_nm":808,"power_mw":100,"beam_area_cm2":1,"power_w":1}"#;
        let errs = h().validate(json).expect_err("unknown field");
        assert!(errs[0].message.contains("power_w"), "{errs:?}");
        let json = r#"{"sites":["ST36:left","XX9:left"],"dose_j_per_point":4,"wavelength_nm":808,"power_mw":100,"beam_area_cm2":1}"#;
        let errs = h().validate(json).expect_err("unknown point");
        assert_eq!(errs[0].pointer, "/sites/1", "{errs:?}");
    }

    /// Every parameter, at every depth, carries a description in the JSON Schema (from its doc
    /// comment), and unknown fields are refused.
    #[test]
    fn every_parameter_has_a_schema_description() {
        h().assert_params_documented();
    }

    #[test]
    fn planning_is_deterministic() {
        assert_eq!(
            plan_of(&Lllt::sample_params()),
            plan_of(&Lllt::sample_params())
        );
    }

    #[test]
    fn example_params_file_validates_and_plans() {
        h().assert_example_file(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/params/lllt.json"
        ));
    }

    #[test]
    fn protocol_blocks_validate() {
        let n = protocol_blocks("lllt")
            .into_iter()
            .map(|json| h().validate(&json).map_err(|e| (json, e)))
            .map(|r| r.expect("block params validate"))
            .count();
        assert!(n >= 1, "the combined protocol has an lllt block");
    }

    /// The example protocol's shape: unique block ids, all five first-party plugins, start and
    /// alternative references to blocks that exist. (Each plugin's crate checks its own blocks'
    /// parameters.)
    #[test]
    fn protocol_file_names_all_five_plugins_and_valid_references() {
        let doc = protocol();
        let blocks = doc
            .get("block")
            .and_then(toml::Value::as_array)
            .cloned()
            .expect("blocks");
        let devices = doc
            .get("devices")
            .and_then(toml::Value::as_table)
            .cloned()
            .expect("[devices]");
        let ids: Vec<&str> = blocks
            .iter()
            .map(|b| b.get("id").and_then(toml::Value::as_str).expect("block id"))
            .collect();
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "block ids are unique: {ids:?}");
        let mut plugins: Vec<&str> = blocks
            .iter()
            .map(|b| {
                b.get("plugin")
                    .and_then(toml::Value::as_str)
                    .expect("block plugin")
            })
            .collect();
        plugins.sort_unstable();
        assert_eq!(
            plugins,
            [
                "class4-laser",
                "infrared-heat",
                "laser-acupuncture",
                "lllt",
                "tens"
            ]
        );
        for b in &blocks {
            let id = b
                .get("id")
                .and_then(toml::Value::as_str)
                .unwrap_or_default();
            let device = b
                .get("device")
                .and_then(toml::Value::as_str)
                .expect("block device");
            assert!(
                devices.contains_key(device),
                "block {id}: device role {device:?} is not in [devices]"
            );
            let start = b
                .get("start")
                .and_then(toml::Value::as_table)
                .expect("block start");
            assert_eq!(
                start.len(),
                1,
                "block {id}: start is one of at_s, after, with"
            );
            for key in ["after", "with"] {
                if let Some(other) = start.get(key).and_then(toml::Value::as_str) {
                    assert!(
                        ids.contains(&other) && other != id,
                        "block {id}: start.{key} = {other:?}"
                    );
                }
            }
            if let Some(other) = b.get("alternative_to").and_then(toml::Value::as_str) {
                assert!(
                    ids.contains(&other),
                    "block {id}: alternative_to = {other:?}"
                );
            }
        }
    }

    /// The example combined protocol, parsed.
    fn protocol() -> toml::Value {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/protocols/dpn-combined.toml"
        ))
        .expect("examples/protocols/dpn-combined.toml exists");
        toml::from_str(&text).expect("protocol is TOML")
    }

    /// The `[block.params]` of every block of `plugin` in the example combined protocol, as JSON.
    fn protocol_blocks(plugin: &str) -> Vec<String> {
        let doc = protocol();
        let blocks = doc
            .get("block")
            .and_then(toml::Value::as_array)
            .cloned()
            .unwrap_or_default();
        blocks
            .iter()
            .filter(|b| b.get("plugin").and_then(toml::Value::as_str) == Some(plugin))
            .map(|b| {
                serde_json::to_string(&b.get("params").cloned().expect("block has params"))
                    .expect("params to JSON")
            })
            .collect()
    }
}
