//! The pre-check: a verdict for every step of a combined protocol, and the dose report.
//!
//! Order of work: each step alone (its numbers, its device and channel, its site, the
//! physical limits, the patient's contraindications); then the timeline in start order (one
//! setpoint per channel at a time, TENS ramps, time caps per site, two sources on one site,
//! heat sessions per day); then the per-site optical ledger (energy and fluence per session
//! and per day, across optical modalities, including what the patient already had today).

use std::collections::HashMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use modalis_sdk::{BodyRegion, BodySite, ModalityKind, Sensation, SessionPlan, Setpoint, dose};

use crate::checks::{self, PatientAt, StepCtx, exceeds};
use crate::limits::{LimitError, LimitOverrides, Limits};
use crate::load::LoadError;
use crate::patient::PatientContext;
use crate::profile::{ChannelSpec, DeviceProfile};
use crate::report::{DoseReport, ReportFinding, SiteReport};
use crate::rules::{self, Rule};
use crate::site::SiteInfo;
use crate::verdict::{Finding, Value, Verdict, v};

/// One block of a combined protocol: a plugin's plan for one device, placed on the combined
/// timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Block {
    /// Block id, unique in the protocol.
    pub block_id: String,
    /// The plugin that planned it (for the audit trail).
    pub plugin_id: String,
    /// The device profile it runs on.
    pub device_id: String,
    /// Where the block starts on the combined timeline.
    pub start_offset_ms: u64,
    /// The plugin's plan (untrusted).
    pub plan: SessionPlan,
}

/// A reference to one step: its block and its index in that block's plan.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub struct StepRef {
    /// Block id.
    pub block_id: String,
    /// Index into the block's `plan.steps`.
    pub step_index: usize,
}

impl std::fmt::Display for StepRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.block_id, self.step_index)
    }
}

/// The values the governor approved for a step (clamped where needed).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Approved {
    /// The setpoint, possibly clamped.
    pub setpoint: Setpoint,
    /// The duration, possibly shortened.
    pub duration_ms: u64,
}

/// The verdict on one step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepVerdict {
    /// Which step.
    pub step: StepRef,
    /// The plugin that proposed it.
    pub plugin_id: String,
    /// Device.
    pub device_id: String,
    /// Channel.
    pub channel: String,
    /// Site as the plan named it.
    pub site: BodySite,
    /// The step's label.
    pub label: String,
    /// The device's modality (`None` when the device is unknown).
    pub modality: Option<ModalityKind>,
    /// Start on the combined timeline.
    pub start_ms: u64,
    /// What the plan asked for.
    pub requested: Setpoint,
    /// How long the plan asked for.
    pub requested_duration_ms: u64,
    /// The verdict: the hardest of the findings.
    pub verdict: Verdict,
    /// What may run (absent when refused).
    pub approved: Option<Approved>,
    /// Sensation at the site, from the patient context.
    pub sensation: Option<Sensation>,
    /// Every rule that had something to say.
    pub findings: Vec<Finding>,
}

/// The result of a pre-check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Precheck {
    /// One verdict per step, in protocol order (blocks in order, steps in plan order).
    pub steps: Vec<StepVerdict>,
    /// Findings about the protocol as a whole (duplicate block ids, nothing to run).
    pub protocol: Vec<Finding>,
    /// The dose report the clinic reads before arming.
    pub report: DoseReport,
}

impl Precheck {
    /// Whether the protocol may be armed: nothing refused, anywhere.
    pub fn can_arm(&self) -> bool {
        self.report.armable
    }

    /// The verdict of a step.
    pub fn step(&self, r: &StepRef) -> Option<&StepVerdict> {
        self.steps.iter().find(|s| &s.step == r)
    }
}

/// Why a governor could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GovernorError {
    /// Two profiles share an id.
    #[error("device id {id:?} is used by two profiles ({first} and {second})")]
    DuplicateDevice {
        /// The id.
        id: String,
        /// First profile's origin.
        first: String,
        /// Second profile's origin.
        second: String,
    },
    /// The patient context is invalid.
    #[error(transparent)]
    Patient(#[from] LoadError),
    /// Governor-wide overrides loosen a limit.
    #[error("governor limits: {0}")]
    Limits(#[from] LimitError),
}

/// The safety governor: trusted profiles, the trusted patient context and the limits.
#[derive(Debug, Clone)]
pub struct Governor {
    pub(crate) profiles: Vec<DeviceProfile>,
    pub(crate) patient: PatientContext,
    pub(crate) limits: Limits,
    /// Per profile: the governor's limits with the profile's overrides, the stricter of each.
    pub(crate) device_limits: Vec<Limits>,
    pub(crate) sensation_sites: Vec<SiteInfo>,
    pub(crate) condition_sites: Vec<Option<SiteInfo>>,
    pub(crate) override_sites: Vec<Option<SiteInfo>>,
}

impl Governor {
    /// A governor over these device profiles and this patient, with the default limits.
    pub fn new(
        profiles: Vec<DeviceProfile>,
        patient: PatientContext,
    ) -> Result<Governor, GovernorError> {
        Governor::with_limits(profiles, patient, &LimitOverrides::default())
    }

    /// As [`Governor::new`], with clinic-wide overrides (stricter only) on top of the defaults.
    pub fn with_limits(
        profiles: Vec<DeviceProfile>,
        patient: PatientContext,
        overrides: &LimitOverrides,
    ) -> Result<Governor, GovernorError> {
        for (i, a) in profiles.iter().enumerate() {
            if let Some(b) = profiles.iter().skip(i + 1).find(|b| b.id == a.id) {
                return Err(GovernorError::DuplicateDevice {
                    id: a.id.clone(),
                    first: a.origin.clone(),
                    second: b.origin.clone(),
                });
            }
        }
        patient.validate("patient context")?;
        let limits = Limits::default().tightened(overrides)?;
        let device_limits = profiles
            .iter()
            .map(|p| limits.stricter_with(&p.overrides))
            .collect();
        let sensation_sites = patient
            .sensation
            .iter()
            .map(|s| SiteInfo::new(&s.site))
            .collect();
        let condition_sites = patient
            .contraindications
            .iter()
            .map(|c| c.site.as_ref().map(SiteInfo::new))
            .collect();
        let override_sites = patient
            .precaution_overrides
            .iter()
            .map(|o| o.site.as_ref().map(SiteInfo::new))
            .collect();
        Ok(Governor {
            profiles,
            patient,
            limits,
            device_limits,
            sensation_sites,
            condition_sites,
            override_sites,
        })
    }

    /// This governor for a session played `speed` times faster than real time (a simulation,
    /// such as the demo; `speed` 1 changes nothing).
    ///
    /// On a compressed clock every treatment time (steps, session caps, dose) is compressed
    /// with the plan, which is the point. Two periods are not treatment times: the lease
    /// period and the telemetry staleness limit bound how long a *real* device may run on
    /// without hearing from the controller, and how old a reading may be, over a real
    /// network. They keep their wall-clock length, so on the session clock they are `speed`
    /// times longer. Nothing else changes, and nothing gets looser in wall time.
    pub fn time_compressed(mut self, speed: u32) -> Governor {
        let speed = u64::from(speed.max(1));
        for lim in std::iter::once(&mut self.limits).chain(self.device_limits.iter_mut()) {
            lim.lease_period_ms = lim.lease_period_ms.saturating_mul(speed);
            lim.staleness_limit_ms = lim.staleness_limit_ms.saturating_mul(speed);
        }
        self
    }

    /// The profile with this id.
    pub fn profile(&self, id: &str) -> Option<&DeviceProfile> {
        self.profiles.iter().find(|p| p.id == id)
    }

    /// All profiles.
    pub fn profiles(&self) -> &[DeviceProfile] {
        &self.profiles
    }

    /// The patient context.
    pub fn patient(&self) -> &PatientContext {
        &self.patient
    }

    /// The governor-wide limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The limits in force for a device: the governor's, tightened by the profile's overrides.
    pub fn device_limits(&self, device_id: &str) -> Option<&Limits> {
        self.profiles
            .iter()
            .position(|p| p.id == device_id)
            .and_then(|i| self.device_limits.get(i))
    }

    pub(crate) fn device_index(&self, id: &str) -> Option<usize> {
        self.profiles.iter().position(|p| p.id == id)
    }

    /// The worst sensation recorded at a site, or the default.
    pub(crate) fn sensation_at(&self, site: &SiteInfo) -> Option<Sensation> {
        self.patient
            .sensation
            .iter()
            .zip(&self.sensation_sites)
            .filter(|(_, s)| s.overlaps(site))
            .map(|(e, _)| e.sensation)
            .max()
            .or(self.patient.default_sensation)
    }

    /// Checks a combined protocol. Pure: the same input gives the same verdicts.
    pub fn precheck(&self, blocks: &[Block]) -> Precheck {
        Run::new(self, blocks).run()
    }
}

/// Index of a modality in per-modality arrays.
pub(crate) fn modality_index(m: ModalityKind) -> usize {
    match m {
        ModalityKind::Photobiomodulation => 0,
        ModalityKind::Class4Laser => 1,
        ModalityKind::InfraredHeat => 2,
        ModalityKind::Tens => 3,
        ModalityKind::LaserAcupuncture => 4,
        ModalityKind::Other => 5,
    }
}

pub(crate) const MODALITIES: [ModalityKind; 6] = [
    ModalityKind::Photobiomodulation,
    ModalityKind::Class4Laser,
    ModalityKind::InfraredHeat,
    ModalityKind::Tens,
    ModalityKind::LaserAcupuncture,
    ModalityKind::Other,
];

/// The distinct sites of a protocol, each resolved once, with their canonical (ledger) sites.
#[derive(Debug, Default)]
struct Sites {
    infos: Vec<SiteInfo>,
    index: HashMap<BodySite, usize>,
    canon_of: Vec<usize>,
    canon: Vec<SiteInfo>,
    canon_index: HashMap<BodySite, usize>,
}

impl Sites {
    fn intern(&mut self, site: &BodySite) -> usize {
        if let Some(&i) = self.index.get(site) {
            return i;
        }
        let info = SiteInfo::new(site);
        let c = match self.canon_index.get(&info.canonical) {
            Some(&c) => c,
            None => {
                let c = self.canon.len();
                self.canon.push(SiteInfo::new(&info.canonical));
                self.canon_index.insert(info.canonical.clone(), c);
                c
            }
        };
        let i = self.infos.len();
        self.infos.push(info);
        self.index.insert(site.clone(), i);
        self.canon_of.push(c);
        i
    }
}

/// Per canonical site: the optical ledger and what the report shows.
///
/// Held beams on an acupuncture point all land on that one spot, so their fluence adds up.
/// Held beams on a *region* are grid spots somewhere in it: the site vocabulary has no finer
/// position, so each such step is counted as its own spot and the region keeps the most-dosed
/// one (`spot_max_fluence`), while scanned beams spread evenly over the region
/// (`scan_fluence`). Doses from earlier today are assumed to lie under every spot.
#[derive(Debug, Clone, Default)]
struct Ledger {
    is_point: bool,
    prior_energy_j: f64,
    prior_fluence: f64,
    prior_heat_sessions: u32,
    energy_j: f64,
    scan_fluence: f64,
    spot_sum_fluence: f64,
    spot_max_fluence: f64,
    held_steps: usize,
    energy_by_mod: [f64; 6],
    fluence_by_mod: [f64; 6],
    time_by_mod: [u64; 6],
    peak_irradiance: f64,
    max_target_c: Option<f64>,
    max_rms_ma: Option<f64>,
    energised_ms: u64,
    modalities: [bool; 6],
    steps_here: bool,
}

impl Ledger {
    /// Fluence everywhere on the site: earlier today plus scanned beams.
    fn uniform(&self) -> f64 {
        self.prior_fluence + self.scan_fluence
    }

    /// The most-dosed single spot of the site today.
    fn level(&self) -> f64 {
        if self.is_point {
            self.uniform() + self.spot_sum_fluence
        } else {
            self.uniform() + self.spot_max_fluence
        }
    }

    /// Session fluence on the site as the report shows it (most-dosed spot).
    fn session_fluence(&self) -> f64 {
        self.scan_fluence
            + if self.is_point {
                self.spot_sum_fluence
            } else {
                self.spot_max_fluence
            }
    }

    fn own_energy_day(&self) -> f64 {
        self.prior_energy_j + self.energy_j
    }
}

/// The working state of one step during a pre-check.
#[derive(Debug)]
struct Work {
    block: usize,
    step_index: usize,
    device: Option<usize>,
    channel: Option<usize>,
    site: Option<usize>,
    sensation: Option<Sensation>,
    start: u64,
    duration: u64,
    setpoint: Setpoint,
    findings: Vec<Finding>,
    /// Optical energy (J) and fluence (J/cm2) this step delivers, once the ledger ran.
    dose: Option<(f64, f64)>,
}

impl Work {
    fn refused(&self) -> bool {
        self.findings.iter().any(|f| f.verdict == Verdict::Refuse)
    }
    fn end(&self) -> u64 {
        self.start.saturating_add(self.duration)
    }
    fn refuse(&mut self, rule: Rule, reason: String, values: Vec<Value>) {
        self.findings
            .push(Finding::new(rule, Verdict::Refuse, reason, values));
    }
}

struct Run<'g> {
    gov: &'g Governor,
    blocks: &'g [Block],
    sites: Sites,
    work: Vec<Work>,
    protocol: Vec<Finding>,
    /// Overlap matrix of canonical sites (row-major), computed once.
    canon_overlap: Vec<bool>,
    ledger: Vec<Ledger>,
}

impl<'g> Run<'g> {
    fn new(gov: &'g Governor, blocks: &'g [Block]) -> Self {
        Run {
            gov,
            blocks,
            sites: Sites::default(),
            work: Vec::new(),
            protocol: Vec::new(),
            canon_overlap: Vec::new(),
            ledger: Vec::new(),
        }
    }

    fn run(mut self) -> Precheck {
        self.protocol_checks();
        self.per_step();
        self.prepare_ledger();
        let mut order: Vec<usize> = (0..self.work.len()).collect();
        order.sort_by_key(|&i| (self.work[i].start, i));
        self.channel_overlap(&order);
        self.tens_ramp(&order);
        self.session_caps(&order);
        self.heat_sessions_per_day();
        self.cross_modality(&order);
        self.optical_ledger(&order);
        self.dose_window_minimum();
        self.finish()
    }

    fn protocol_checks(&mut self) {
        for (i, b) in self.blocks.iter().enumerate() {
            if self.blocks[..i].iter().any(|a| a.block_id == b.block_id) {
                self.protocol.push(Finding::new(
                    rules::PLAN_TIMELINE,
                    Verdict::Refuse,
                    format!(
                        "block id {:?} appears twice: steps could not be told apart",
                        b.block_id
                    ),
                    vec![],
                ));
            }
        }
        if self.blocks.iter().all(|b| b.plan.steps.is_empty()) {
            self.protocol.push(Finding::new(
                rules::PLAN_TIMELINE,
                Verdict::Refuse,
                "the protocol has no steps: nothing to arm".into(),
                vec![],
            ));
        }
    }

    fn per_step(&mut self) {
        let gov = self.gov;
        let n: usize = self.blocks.iter().map(|b| b.plan.steps.len()).sum();
        self.work.reserve(n);
        for (bi, block) in self.blocks.iter().enumerate() {
            let device = gov.device_index(&block.device_id);
            for (si, step) in block.plan.steps.iter().enumerate() {
                let mut w = Work {
                    block: bi,
                    step_index: si,
                    device,
                    channel: None,
                    site: None,
                    sensation: None,
                    start: 0,
                    duration: step.duration_ms,
                    setpoint: step.setpoint,
                    findings: Vec::new(),
                    dose: None,
                };
                match block.start_offset_ms.checked_add(step.offset_ms) {
                    Some(start)
                        if start.saturating_add(step.duration_ms)
                            <= gov.limits.session_span_max_ms =>
                    {
                        w.start = start
                    }
                    _ => {
                        w.start = block.start_offset_ms.saturating_add(step.offset_ms);
                        w.refuse(
                            rules::PLAN_TIMELINE,
                            format!(
                                "step runs from {} ms for {} ms: beyond the longest session ({} ms)",
                                w.start, step.duration_ms, gov.limits.session_span_max_ms
                            ),
                            vec![v("start", w.start as f64, "ms"), v("duration", step.duration_ms as f64, "ms")],
                        );
                    }
                }
                let numbers_ok = checks::check_numbers(&w.setpoint, w.duration, &mut w.findings);
                if step.site.is_known() {
                    let site = self.sites.intern(&step.site);
                    w.site = Some(site);
                    w.sensation = self.sites.infos.get(site).and_then(|s| gov.sensation_at(s));
                } else {
                    w.refuse(
                        rules::PLAN_SITE,
                        format!("site {} is not in the site vocabulary", step.site),
                        vec![],
                    );
                }
                let Some(di) = device else {
                    w.refuse(
                        rules::PLAN_DEVICE,
                        format!(
                            "block {:?} names device {:?}, which has no profile",
                            block.block_id, block.device_id
                        ),
                        vec![],
                    );
                    self.work.push(w);
                    continue;
                };
                let Some(profile) = gov.profiles.get(di) else {
                    self.work.push(w);
                    continue;
                };
                w.channel = profile.channels.iter().position(|c| c.name == step.channel);
                let Some(channel) = w.channel.and_then(|c| profile.channels.get(c)) else {
                    let names: Vec<&str> =
                        profile.channels.iter().map(|c| c.name.as_str()).collect();
                    w.refuse(
                        rules::PLAN_CHANNEL,
                        format!(
                            "device {} has no channel {:?} (it has {:?})",
                            profile.id, step.channel, names
                        ),
                        vec![],
                    );
                    self.work.push(w);
                    continue;
                };
                if let Some(kind) = w.setpoint.channel_kind()
                    && kind != channel.kind()
                {
                    w.refuse(
                        rules::PLAN_KIND,
                        format!(
                            "a {kind} setpoint on channel {:?} of {} ({} device, {} channel)",
                            channel.name,
                            profile.id,
                            profile.modality,
                            channel.kind()
                        ),
                        vec![],
                    );
                }
                let (Some(site), true) = (w.site, numbers_ok) else {
                    self.work.push(w);
                    continue;
                };
                if w.refused() {
                    self.work.push(w);
                    continue;
                }
                let Some(sensation) = w.sensation else {
                    if w.setpoint.is_energy() {
                        w.refuse(
                            rules::PATIENT_SENSATION,
                            format!(
                                "the patient context records no sensation at {} and no default_sensation: record it before treating there",
                                step.site
                            ),
                            vec![],
                        );
                    }
                    self.work.push(w);
                    continue;
                };
                let Some(site_info) = self.sites.infos.get(site) else {
                    self.work.push(w);
                    continue;
                };
                let limits = gov.device_limits.get(di).unwrap_or(&gov.limits);
                let ctx = StepCtx {
                    profile,
                    channel,
                    limits,
                    sensation,
                    region: site_info.region.unwrap_or(BodyRegion::Eye),
                    duration_ms: w.duration,
                };
                checks::check_setpoint(&ctx, &mut w.setpoint, &mut w.findings);
                let at = PatientAt {
                    patient: &gov.patient,
                    condition_sites: &gov.condition_sites,
                    override_sites: &gov.override_sites,
                    site: site_info,
                    sensation,
                };
                checks::check_patient(&ctx, &at, &w.setpoint, &mut w.findings);
                self.work.push(w);
            }
        }
    }

    fn prepare_ledger(&mut self) {
        // Sites of doses delivered earlier today join the canonical table too.
        for d in &self.gov.patient.delivered_today {
            if d.site.is_known() {
                self.sites.intern(&d.site);
            }
        }
        let n = self.sites.canon.len();
        self.canon_overlap = vec![false; n * n];
        for a in 0..n {
            for b in 0..n {
                if let (Some(x), Some(y)) = (self.sites.canon.get(a), self.sites.canon.get(b)) {
                    self.canon_overlap[a * n + b] = x.overlaps(y);
                }
            }
        }
        self.ledger = self
            .sites
            .canon
            .iter()
            .map(|s| Ledger {
                is_point: s.is_point(),
                ..Ledger::default()
            })
            .collect();
        for d in &self.gov.patient.delivered_today {
            let Some(&i) = self.sites.index.get(&d.site) else {
                continue;
            };
            let Some(&c) = self.sites.canon_of.get(i) else {
                continue;
            };
            if let Some(l) = self.ledger.get_mut(c) {
                l.prior_energy_j += d.energy_j;
                l.prior_fluence += d.fluence_j_per_cm2;
                l.prior_heat_sessions += d.heat_sessions;
            }
        }
    }

    fn overlap(&self, a: usize, b: usize) -> bool {
        let n = self.sites.canon.len();
        self.canon_overlap.get(a * n + b).copied().unwrap_or(true)
    }

    fn canon(&self, w: &Work) -> Option<usize> {
        w.site.and_then(|s| self.sites.canon_of.get(s).copied())
    }

    fn modality(&self, w: &Work) -> Option<ModalityKind> {
        w.device
            .and_then(|d| self.gov.profiles.get(d))
            .map(|p| p.modality)
    }

    fn limits(&self, w: &Work) -> &'g Limits {
        let gov: &'g Governor = self.gov;
        w.device
            .and_then(|d| gov.device_limits.get(d))
            .unwrap_or(&gov.limits)
    }

    /// A channel carries one setpoint at a time.
    fn channel_overlap(&mut self, order: &[usize]) {
        let mut last: HashMap<(usize, usize), (usize, u64)> = HashMap::new();
        let mut clash: Vec<(usize, usize)> = Vec::new();
        for &i in order {
            let w = &self.work[i];
            let (Some(d), Some(c)) = (w.device, w.channel) else {
                continue;
            };
            if w.duration == 0 {
                continue;
            }
            if let Some(&(j, end)) = last.get(&(d, c))
                && w.start < end
            {
                clash.push((j, i));
            }
            let end = w.end();
            let e = last.entry((d, c)).or_insert((i, end));
            if end >= e.1 {
                *e = (i, end);
            }
        }
        for (a, b) in clash {
            let (ra, rb) = (self.step_ref(a), self.step_ref(b));
            let ch = self
                .blocks
                .get(self.work[a].block)
                .map(|bl| bl.device_id.clone())
                .unwrap_or_default();
            self.work[a].refuse(
                rules::PLAN_CHANNEL_OVERLAP,
                format!("{ra} and {rb} drive the same channel of {ch} at the same time"),
                vec![],
            );
            self.work[b].refuse(
                rules::PLAN_CHANNEL_OVERLAP,
                format!("{rb} and {ra} drive the same channel of {ch} at the same time"),
                vec![],
            );
        }
    }

    fn step_ref(&self, i: usize) -> StepRef {
        let w = &self.work[i];
        StepRef {
            block_id: self
                .blocks
                .get(w.block)
                .map(|b| b.block_id.clone())
                .unwrap_or_default(),
            step_index: w.step_index,
        }
    }

    /// TENS starts from (near) zero and rises at a bounded rate; after a gap or an off step it
    /// starts from zero again.
    fn tens_ramp(&mut self, order: &[usize]) {
        // Per channel: (amplitude, end) of the last energised electrical step.
        let mut last: HashMap<(usize, usize), (f64, u64, u64)> = HashMap::new();
        for &i in order {
            let (Some(d), Some(c)) = (self.work[i].device, self.work[i].channel) else {
                continue;
            };
            let lim = self.limits(&self.work[i]);
            let w = &mut self.work[i];
            let Setpoint::Electrical(e) = w.setpoint else {
                if w.setpoint == Setpoint::Off {
                    last.remove(&(d, c));
                }
                continue;
            };
            if w.refused() {
                last.remove(&(d, c));
                continue;
            }
            let amp = e.amplitude_ma;
            match last.get(&(d, c)).copied() {
                Some((prev_amp, prev_end, prev_dur)) if prev_end == w.start => {
                    let allowed =
                        prev_amp + lim.tens_ramp_rise_max_ma_per_s * prev_dur as f64 / 1000.0;
                    if exceeds(amp, allowed) {
                        w.refuse(
                            rules::TENS_RAMP,
                            format!(
                                "amplitude rises from {prev_amp:.1} to {amp:.1} mA after a {prev_dur} ms step: more than {} mA/s",
                                lim.tens_ramp_rise_max_ma_per_s
                            ),
                            vec![v("from", prev_amp, "mA"), v("to", amp, "mA"), v("allowed", allowed, "mA")],
                        );
                        last.remove(&(d, c));
                        continue;
                    }
                }
                _ => {
                    if exceeds(amp, lim.tens_ramp_start_max_ma) {
                        w.refuse(
                            rules::TENS_RAMP,
                            format!(
                                "the channel starts at {amp:.1} mA: the first energised step must start at or below {} mA and ramp up",
                                lim.tens_ramp_start_max_ma
                            ),
                            vec![v("amplitude", amp, "mA"), v("start_max", lim.tens_ramp_start_max_ma, "mA")],
                        );
                        last.remove(&(d, c));
                        continue;
                    }
                }
            }
            last.insert((d, c), (amp, w.end(), w.duration));
        }
    }

    /// Time per site per session for heat, TENS and Class IV.
    fn session_caps(&mut self, order: &[usize]) {
        for &i in order {
            let (Some(c), Some(m)) = (self.canon(&self.work[i]), self.modality(&self.work[i]))
            else {
                continue;
            };
            let lim = self.limits(&self.work[i]);
            let Some(cap) = lim.session_cap_ms(m) else {
                continue;
            };
            let mi = modality_index(m);
            let Some(used) = self.ledger.get(c).map(|l| l.time_by_mod[mi]) else {
                continue;
            };
            let w = &mut self.work[i];
            if !w.setpoint.is_energy() || w.refused() {
                continue;
            }
            let rule = match m {
                ModalityKind::InfraredHeat => rules::HEAT_SESSION_CAP,
                ModalityKind::Tens => rules::TENS_SESSION_CAP,
                _ => rules::CLASS4_SESSION_CAP,
            };
            let remaining = cap.saturating_sub(used);
            if remaining == 0 {
                w.refuse(
                    rule,
                    format!(
                        "the {m} time at this site already reaches the {} min cap",
                        cap / 60_000
                    ),
                    vec![v("used", used as f64, "ms"), v("cap", cap as f64, "ms")],
                );
                continue;
            }
            if w.duration > remaining {
                w.findings.push(Finding::new(
                    rule,
                    Verdict::Clamp,
                    format!(
                        "{m} for {} ms more at this site would pass the {} min cap; shortened to {remaining} ms",
                        w.duration,
                        cap / 60_000
                    ),
                    vec![v("requested", w.duration as f64, "ms"), v("remaining", remaining as f64, "ms"), v("cap", cap as f64, "ms")],
                ));
                w.duration = remaining;
            }
            if let Some(l) = self.ledger.get_mut(c) {
                l.time_by_mod[mi] += self.work[i].duration;
            }
        }
    }

    fn heat_sessions_per_day(&mut self) {
        for i in 0..self.work.len() {
            let w = &self.work[i];
            if !matches!(w.setpoint, Setpoint::Heat(_)) || w.refused() {
                continue;
            }
            let Some(c) = self.canon(w) else { continue };
            let lim = self.limits(w);
            let prior: u32 = (0..self.ledger.len())
                .filter(|&o| self.overlap(c, o))
                .filter_map(|o| self.ledger.get(o))
                .map(|l| l.prior_heat_sessions)
                .sum();
            if prior >= lim.heat_sessions_per_site_per_day {
                self.work[i].refuse(
                    rules::HEAT_SESSIONS_PER_DAY,
                    format!(
                        "{prior} heat sessions at this site already today; at most {}",
                        lim.heat_sessions_per_site_per_day
                    ),
                    vec![
                        v("prior", f64::from(prior), "sessions"),
                        v(
                            "max",
                            f64::from(lim.heat_sessions_per_site_per_day),
                            "sessions",
                        ),
                    ],
                );
            }
        }
    }

    /// Two energy sources on overlapping sites at overlapping times: refused unless every
    /// profile involved allows stacking and the combined power density is within the smallest
    /// budget among them.
    fn cross_modality(&mut self, order: &[usize]) {
        let energy: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&i| {
                let w = &self.work[i];
                w.setpoint.is_energy() && !w.refused() && w.site.is_some() && w.channel.is_some()
            })
            .collect();
        let mut partners: Vec<Vec<usize>> = vec![Vec::new(); self.work.len()];
        for (k, &i) in energy.iter().enumerate() {
            let (wi_end, ci) = (self.work[i].end(), self.canon(&self.work[i]));
            for &j in &energy[k + 1..] {
                if self.work[j].start >= wi_end {
                    break;
                }
                let same_source = self.work[i].device == self.work[j].device
                    && self.work[i].channel == self.work[j].channel;
                if same_source {
                    continue;
                }
                if let (Some(a), Some(b)) = (ci, self.canon(&self.work[j]))
                    && self.overlap(a, b)
                {
                    partners[i].push(j);
                    partners[j].push(i);
                }
            }
        }
        for &i in &energy {
            let Some(others) = partners.get(i).filter(|p| !p.is_empty()) else {
                continue;
            };
            let mut involved: Vec<usize> = others.clone();
            involved.push(i);
            let mut budget = self.limits(&self.work[i]).combined_budget_max_mw_per_cm2;
            let mut all_allow = true;
            let mut total = 0.0;
            let mut names: Vec<String> = Vec::new();
            for &j in &involved {
                let w = &self.work[j];
                let Some(p) = w.device.and_then(|d| self.gov.profiles.get(d)) else {
                    continue;
                };
                match p.combined {
                    Some(c) if c.allow => budget = budget.min(c.thermal_budget_mw_per_cm2),
                    _ => all_allow = false,
                }
                if let Some(ch) = w.channel.and_then(|c| p.channels.get(c)) {
                    total += checks::power_density_mw_per_cm2(ch, &w.setpoint);
                }
                if j != i {
                    names.push(format!("{} ({} {})", self.step_ref(j), p.id, p.modality));
                }
            }
            let site = self
                .blocks
                .get(self.work[i].block)
                .and_then(|b| b.plan.steps.get(self.work[i].step_index))
                .map(|s| s.site.to_string())
                .unwrap_or_default();
            if !all_allow {
                self.work[i].refuse(
                    rules::CROSS_OVERLAP,
                    format!(
                        "another energy source acts on an overlapping site ({site}) at the same time: {}; allowed only when every profile involved has [combined] allow = true with a thermal budget",
                        names.join(", ")
                    ),
                    vec![],
                );
            } else if exceeds(total, budget) {
                self.work[i].refuse(
                    rules::CROSS_BUDGET,
                    format!("stacked sources at {site} put {total:.1} mW/cm2 into the skin, above the combined thermal budget {budget:.1} mW/cm2 ({})", names.join(", ")),
                    vec![v("combined", total, "mW/cm2"), v("budget", budget, "mW/cm2")],
                );
            } else {
                self.work[i].findings.push(Finding::new(
                    rules::CROSS_BUDGET,
                    Verdict::AllowWithWarning,
                    format!("stacked with {} at {site}: {total:.1} mW/cm2 within the combined budget {budget:.1} mW/cm2", names.join(", ")),
                    vec![v("combined", total, "mW/cm2"), v("budget", budget, "mW/cm2")],
                ));
            }
        }
    }

    /// Hot-spot fluence estimate at canonical site `c` for the day: its most-dosed spot plus
    /// every other region covering it; for a region, the most-dosed point inside it counts as
    /// a spot too.
    fn peak_fluence(&self, c: usize) -> f64 {
        let Some(me) = self.ledger.get(c) else {
            return 0.0;
        };
        let mut covering = 0.0;
        let mut max_point: f64 = 0.0;
        for (o, l) in self.ledger.iter().enumerate() {
            if o == c || !self.overlap(c, o) {
                continue;
            }
            if l.is_point {
                if !me.is_point {
                    max_point = max_point.max(l.level());
                }
            } else {
                covering += l.level();
            }
        }
        if me.is_point {
            me.level() + covering
        } else {
            me.uniform() + covering + me.spot_max_fluence.max(max_point)
        }
    }

    /// The per-site optical ledger, in start order: energy per point and fluence per site per
    /// day (prior doses included), clamping a step's duration to what is left.
    fn optical_ledger(&mut self, order: &[usize]) {
        for &i in order {
            let w = &self.work[i];
            let Setpoint::Optical(o) = w.setpoint else {
                continue;
            };
            if w.refused() || o.power_mw <= 0.0 {
                continue;
            }
            let (Some(c), Some(m)) = (self.canon(w), self.modality(w)) else {
                continue;
            };
            let Some(ChannelSpec::Optical(ch)) = w
                .device
                .and_then(|d| self.gov.profiles.get(d))
                .and_then(|p| w.channel.and_then(|k| p.channels.get(k)))
                .map(|c| &c.spec)
            else {
                continue;
            };
            let is_point = self.ledger.get(c).is_some_and(|l| l.is_point);
            let held = o.scan_area_cm2.is_none();
            let lim = self.limits(w);
            let window = lim.dose_window(m);
            let area = checks::optical_safety_area_cm2(ch, &o);
            let energy_per_ms = o.power_mw / 1e6;
            let fluence_per_ms = energy_per_ms / area;
            // Rounding slack so that a dose planned exactly at a cap is not cut by 1 ms.
            let ms_for =
                |headroom: f64, per_ms: f64| ((headroom.max(0.0) / per_ms) * (1.0 + 1e-9)).floor();
            let mut allowed_ms = w.duration as f64;
            let mut binding: Option<(Rule, String, Vec<Value>)> = None;
            // Energy per point: held beams only (a scanned beam has no single point). On a point
            // site everything held there adds up; on a region each step is its own spot.
            if let (Some((_, max_e)), true) = (window.point_energy_j, held) {
                let have = if is_point {
                    self.ledger.get(c).map_or(0.0, Ledger::own_energy_day)
                } else {
                    0.0
                };
                let ms = ms_for(max_e - have, energy_per_ms);
                if ms < allowed_ms {
                    allowed_ms = ms;
                    binding = Some((
                        rules::OPTICAL_DOSE_WINDOW,
                        format!(
                            "energy at this point today would pass the {max_e} J per point maximum ({have:.2} J already)"
                        ),
                        vec![v("already", have, "J"), v("max", max_e, "J")],
                    ));
                }
            }
            // Fluence: the hot spot of this site and of every site it overlaps.
            let worst_peak = (0..self.ledger.len())
                .filter(|&d| d == c || self.overlap(c, d))
                .map(|d| self.peak_fluence(d))
                .fold(0.0, f64::max);
            let mut fluence_caps: Vec<(Rule, f64, &'static str)> = vec![(
                rules::OPTICAL_DAILY,
                lim.optical_site_daily_fluence_max_j_per_cm2,
                "daily optical fluence cap",
            )];
            if let Some((_, max_f)) = window.fluence_j_per_cm2 {
                fluence_caps.push((rules::OPTICAL_DOSE_WINDOW, max_f, "fluence window maximum"));
            }
            for (rule, cap, what) in fluence_caps {
                let ms = ms_for(cap - worst_peak, fluence_per_ms);
                if ms < allowed_ms {
                    allowed_ms = ms;
                    binding = Some((
                        rule,
                        format!(
                            "fluence at this site today would pass the {what} {cap} J/cm2 ({worst_peak:.2} J/cm2 already, counting overlapping sites)"
                        ),
                        vec![v("already", worst_peak, "J/cm2"), v("cap", cap, "J/cm2")],
                    ));
                }
            }
            let w = &mut self.work[i];
            if let Some((rule, reason, values)) = binding {
                let allowed = allowed_ms.max(0.0) as u64;
                if allowed == 0 {
                    w.refuse(rule, format!("{reason}: no time left"), values);
                    continue;
                }
                if allowed < w.duration {
                    w.findings.push(Finding::new(
                        rule,
                        Verdict::Clamp,
                        format!("{reason}: shortened from {} to {allowed} ms", w.duration),
                        values,
                    ));
                    w.duration = allowed;
                }
            }
            let energy = dose::energy_j(o.power_mw, w.duration);
            let fluence = dose::fluence_j_per_cm2(energy, area);
            w.dose = Some((energy, fluence));
            if let Some(l) = self.ledger.get_mut(c) {
                let mi = modality_index(m);
                l.energy_j += energy;
                if held {
                    l.spot_sum_fluence += fluence;
                    l.spot_max_fluence = l.spot_max_fluence.max(fluence);
                    l.held_steps += 1;
                } else {
                    l.scan_fluence += fluence;
                }
                l.energy_by_mod[mi] += energy;
                l.fluence_by_mod[mi] += fluence;
            }
        }
    }

    /// The minimum of the dose window: per point (all held steps on an acupuncture point,
    /// each held step on a region), per site for scanned beams. Under-dosing is warned, not
    /// refused: it is no hazard, but the biphasic response means too little does nothing.
    fn dose_window_minimum(&mut self) {
        for i in 0..self.work.len() {
            let w = &self.work[i];
            let (Setpoint::Optical(o), Some((step_e, step_f))) = (w.setpoint, w.dose) else {
                continue;
            };
            if w.refused() {
                continue;
            }
            let (Some(c), Some(m)) = (self.canon(w), self.modality(w)) else {
                continue;
            };
            let Some(l) = self.ledger.get(c) else {
                continue;
            };
            let window = self.limits(w).dose_window(m);
            let mi = modality_index(m);
            let held = o.scan_area_cm2.is_none();
            let (energy, fluence) = if held && !l.is_point {
                (step_e, step_f)
            } else {
                (l.energy_by_mod[mi], l.fluence_by_mod[mi])
            };
            let mut msgs: Vec<(String, Vec<Value>)> = Vec::new();
            if let (Some((min_e, _)), true) = (window.point_energy_j, held)
                && energy < min_e * (1.0 - 1e-9)
            {
                msgs.push((
                    format!("{m} energy at this point this session is {energy:.2} J, below the {min_e} J minimum of the window"),
                    vec![v("energy", energy, "J"), v("min", min_e, "J")],
                ));
            }
            if let Some((min_f, _)) = window.fluence_j_per_cm2
                && fluence < min_f * (1.0 - 1e-9)
            {
                msgs.push((
                    format!("{m} fluence at this site this session is {fluence:.2} J/cm2, below the {min_f} J/cm2 minimum of the window"),
                    vec![v("fluence", fluence, "J/cm2"), v("min", min_f, "J/cm2")],
                ));
            }
            for (reason, values) in msgs {
                self.work[i].findings.push(Finding::new(
                    rules::OPTICAL_DOSE_WINDOW,
                    Verdict::AllowWithWarning,
                    reason,
                    values,
                ));
            }
        }
        // Several held beams on one region: say plainly what the governor assumed.
        let mut told = vec![false; self.ledger.len()];
        for i in 0..self.work.len() {
            let w = &self.work[i];
            let (Setpoint::Optical(o), Some(_)) = (w.setpoint, w.dose) else {
                continue;
            };
            let Some(c) = self.canon(w) else { continue };
            let Some(l) = self.ledger.get(c) else {
                continue;
            };
            if o.scan_area_cm2.is_some()
                || l.is_point
                || l.held_steps < 2
                || told.get(c).copied().unwrap_or(true)
            {
                continue;
            }
            if let Some(t) = told.get_mut(c) {
                *t = true;
            }
            let n = l.held_steps;
            self.work[i].findings.push(Finding::new(
                rules::OPTICAL_DOSE_WINDOW,
                Verdict::AllowWithWarning,
                format!(
                    "{n} held-beam steps on this region are counted as {n} distinct grid spots: the site vocabulary cannot say where in the region each lies, so the governor cannot check that they do not overlap"
                ),
                vec![v("held_steps", n as f64, "")],
            ));
        }
    }

    fn finish(mut self) -> Precheck {
        // Report figures from what will actually run.
        for i in 0..self.work.len() {
            let w = &self.work[i];
            let Some(c) = self.canon(w) else { continue };
            let m = self.modality(w);
            let refused = w.refused();
            let channel = w
                .device
                .and_then(|d| self.gov.profiles.get(d))
                .and_then(|p| w.channel.and_then(|k| p.channels.get(k)));
            let Some(l) = self.ledger.get_mut(c) else {
                continue;
            };
            l.steps_here = true;
            if refused || !w.setpoint.is_energy() {
                continue;
            }
            if let Some(m) = m {
                l.modalities[modality_index(m)] = true;
            }
            l.energised_ms += w.duration;
            match (w.setpoint, channel.map(|c| &c.spec)) {
                (Setpoint::Optical(o), Some(ChannelSpec::Optical(ch))) => {
                    let e = o.power_mw / checks::optical_safety_area_cm2(ch, &o);
                    l.peak_irradiance = l.peak_irradiance.max(e);
                }
                (Setpoint::Heat(h), _) => {
                    l.max_target_c = Some(
                        l.max_target_c
                            .map_or(h.target_temp_c, |t| t.max(h.target_temp_c)),
                    );
                }
                (Setpoint::Electrical(e), _) => {
                    let rms = dose::setpoint_rms_ma(&e);
                    l.max_rms_ma = Some(l.max_rms_ma.map_or(rms, |r| r.max(rms)));
                }
                _ => {}
            }
        }
        let peaks: Vec<f64> = (0..self.ledger.len())
            .map(|c| self.peak_fluence(c))
            .collect();

        let mut steps = Vec::with_capacity(self.work.len());
        let mut site_findings: Vec<Vec<ReportFinding>> = vec![Vec::new(); self.ledger.len()];
        let mut site_names: Vec<Vec<String>> = vec![Vec::new(); self.ledger.len()];
        let mut site_sensation: Vec<Option<Sensation>> = vec![None; self.ledger.len()];
        let work = std::mem::take(&mut self.work);
        for w in work {
            let step_ref = StepRef {
                block_id: self
                    .blocks
                    .get(w.block)
                    .map(|b| b.block_id.clone())
                    .unwrap_or_default(),
                step_index: w.step_index,
            };
            let block = self.blocks.get(w.block);
            let plan_step = block.and_then(|b| b.plan.steps.get(w.step_index));
            let verdict = w
                .findings
                .iter()
                .map(|f| f.verdict)
                .max()
                .unwrap_or(Verdict::Allow);
            if let Some(c) = w.site.and_then(|s| self.sites.canon_of.get(s).copied()) {
                if let (Some(list), Some(step)) = (site_findings.get_mut(c), plan_step) {
                    for f in &w.findings {
                        list.push(ReportFinding {
                            step: step_ref.clone(),
                            rule: f.rule,
                            verdict: f.verdict,
                            reason: f.reason.clone(),
                            source: f.source,
                        });
                    }
                    if let Some(names) = site_names.get_mut(c) {
                        let name = step.site.to_string();
                        if !names.contains(&name) {
                            names.push(name);
                        }
                    }
                }
                if let Some(s) = site_sensation.get_mut(c) {
                    *s = (*s).max(w.sensation);
                }
            }
            let modality = w
                .device
                .and_then(|d| self.gov.profiles.get(d))
                .map(|p| p.modality);
            steps.push(StepVerdict {
                step: step_ref,
                plugin_id: block.map(|b| b.plugin_id.clone()).unwrap_or_default(),
                device_id: block.map(|b| b.device_id.clone()).unwrap_or_default(),
                channel: plan_step.map(|s| s.channel.clone()).unwrap_or_default(),
                site: plan_step.map_or_else(
                    || BodySite::region(BodyRegion::Eye, modalis_sdk::Side::Midline),
                    |s| s.site.clone(),
                ),
                label: plan_step.map(|s| s.label.clone()).unwrap_or_default(),
                modality,
                start_ms: w.start,
                requested: plan_step.map_or(Setpoint::Off, |s| s.setpoint),
                requested_duration_ms: plan_step.map_or(0, |s| s.duration_ms),
                verdict,
                approved: (verdict != Verdict::Refuse).then_some(Approved {
                    setpoint: w.setpoint,
                    duration_ms: w.duration,
                }),
                sensation: w.sensation,
                findings: w.findings,
            });
        }

        let mut sites = Vec::new();
        for (c, l) in self.ledger.iter().enumerate() {
            let prior =
                l.prior_energy_j > 0.0 || l.prior_fluence > 0.0 || l.prior_heat_sessions > 0;
            if !l.steps_here && !prior {
                continue;
            }
            let Some(info) = self.sites.canon.get(c) else {
                continue;
            };
            let sensation = site_sensation
                .get(c)
                .copied()
                .flatten()
                .or_else(|| self.gov.sensation_at(info));
            let findings = site_findings
                .get_mut(c)
                .map(std::mem::take)
                .unwrap_or_default();
            let verdict = findings
                .iter()
                .map(|f| f.verdict)
                .max()
                .unwrap_or(Verdict::Allow);
            let lim = &self.gov.limits;
            sites.push(SiteReport {
                site: info.site.clone(),
                names: site_names
                    .get_mut(c)
                    .map(std::mem::take)
                    .unwrap_or_default(),
                sensation,
                modalities: MODALITIES
                    .iter()
                    .zip(l.modalities)
                    .filter(|(_, on)| *on)
                    .map(|(m, _)| *m)
                    .collect(),
                energy_j: l.energy_j,
                fluence_j_per_cm2: l.session_fluence(),
                prior_energy_j: l.prior_energy_j,
                prior_fluence_j_per_cm2: l.prior_fluence,
                day_energy_j: l.own_energy_day(),
                day_fluence_j_per_cm2: l.level(),
                peak_fluence_j_per_cm2: peaks.get(c).copied().unwrap_or(0.0),
                peak_irradiance_mw_per_cm2: l.peak_irradiance,
                energised_ms: l.energised_ms,
                max_target_temp_c: l.max_target_c,
                skin_alarm_c: sensation.map(|s| lim.skin_alarm_c(s)),
                skin_cutoff_c: sensation.map(|s| lim.skin_cutoff_c(s)),
                max_tens_rms_ma: l.max_rms_ma,
                prior_heat_sessions: l.prior_heat_sessions,
                verdict,
                findings,
            });
        }
        let report = DoseReport::new(self.gov.patient.id.clone(), &steps, &self.protocol, sites);
        Precheck {
            steps,
            protocol: self.protocol,
            report,
        }
    }
}
