//! Runtime supervision of an armed session: `admit` every command, `observe` every telemetry
//! sample, `tick` the watchdog, renew leases only while healthy, laser interlocks, e-stop and
//! trips that latch until an operator resets them.
//!
//! The supervisor's picture of the world is what it has admitted: a source is *energised*
//! from an admitted energy command until a stop (its own, an `Off` command, the step's end or
//! the lease lapsing). Every stop it decides is returned as an [`Action::Stop`] for the
//! runtime to send; the device's own lease expiry is the backstop when that message is lost.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use modalis_sdk::{
    BodyRegion, BodySite, ElectricalSetpoint, HeatSetpoint, Measurement, OpticalSetpoint,
    Sensation, Setpoint,
};

use crate::checks::{self, StepCtx, exceeds};
use crate::limits::Limits;
use crate::precheck::{Governor, Precheck, StepRef};
use crate::profile::ChannelSpec;
use crate::rules::{self, Rule};
use crate::site::SiteInfo;
use crate::verdict::{Finding, Value, Verdict, v};

/// A command the runtime wants to send to a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Device id.
    pub device_id: String,
    /// Channel name.
    pub channel: String,
    /// Site.
    pub site: BodySite,
    /// The setpoint to apply.
    pub setpoint: Setpoint,
    /// The approved step it belongs to.
    pub step: StepRef,
}

/// Telemetry from a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// Device id.
    pub device_id: String,
    /// Channel name.
    pub channel: String,
    /// When the device measured it (same monotonic clock as `now_ms`).
    pub measured_at_ms: u64,
    /// The reading.
    pub measurement: Measurement,
}

/// A time-limited grant to deliver energy; the device stops by itself when it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// Unique per supervisor.
    pub id: u64,
    /// Device id.
    pub device_id: String,
    /// Channel.
    pub channel: String,
    /// Expiry on the monotonic clock.
    pub expires_at_ms: u64,
}

/// Whether a command was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Admission {
    /// Send it.
    Admit,
    /// Do not send it.
    Refuse,
}

/// The governor's answer to a command or an operator action.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// Admit or refuse.
    pub admission: Admission,
    /// The rule that decided.
    pub rule: &'static str,
    /// Why.
    pub reason: Cow<'static, str>,
    /// Numbers involved.
    pub values: Vec<Value>,
    /// Source of the rule.
    pub source: &'static str,
    /// The lease for an admitted energy command.
    pub lease: Option<Lease>,
    /// When.
    pub at_ms: u64,
}

impl Decision {
    /// Whether the command may be sent.
    pub fn admitted(&self) -> bool {
        self.admission == Admission::Admit
    }

    fn refuse(
        rule: Rule,
        reason: impl Into<Cow<'static, str>>,
        values: Vec<Value>,
        at_ms: u64,
    ) -> Decision {
        Decision {
            admission: Admission::Refuse,
            rule: rule.id,
            reason: reason.into(),
            values,
            source: rule.source,
            lease: None,
            at_ms,
        }
    }

    fn admit(rule: Rule, reason: &'static str, lease: Option<Lease>, at_ms: u64) -> Decision {
        Decision {
            admission: Admission::Admit,
            rule: rule.id,
            reason: Cow::Borrowed(reason),
            values: Vec::new(),
            source: rule.source,
            lease,
            at_ms,
        }
    }
}

/// IEC 60601-1-8 alarm priority [K].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmPriority {
    /// Cyan or yellow, steady.
    Low,
    /// Yellow, flashing 0.4-0.8 Hz, 3-pulse tone.
    Medium,
    /// Red, flashing 1.4-2.8 Hz, 10-pulse tone: immediate response.
    High,
}

/// An alarm for the operator.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alarm {
    /// Priority.
    pub priority: AlarmPriority,
    /// Rule.
    pub rule: &'static str,
    /// Why.
    pub reason: String,
    /// Device, if one.
    pub device_id: Option<String>,
    /// Channel, if one.
    pub channel: Option<String>,
    /// Numbers.
    pub values: Vec<Value>,
    /// Source.
    pub source: &'static str,
    /// When.
    pub at_ms: u64,
}

/// Something the runtime must do now.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Stop this channel at once (no ramp-down).
    Stop {
        /// Device.
        device_id: String,
        /// Channel.
        channel: String,
        /// Rule.
        rule: &'static str,
        /// Why.
        reason: String,
        /// Numbers.
        values: Vec<Value>,
        /// Source.
        source: &'static str,
        /// Whether it stays off until an operator re-enables it (or resets the e-stop).
        latched: bool,
        /// When.
        at_ms: u64,
    },
    /// Lower the output to this setpoint.
    Reduce {
        /// Device.
        device_id: String,
        /// Channel.
        channel: String,
        /// The reduced setpoint.
        setpoint: Setpoint,
        /// Rule.
        rule: &'static str,
        /// Why.
        reason: String,
        /// Numbers.
        values: Vec<Value>,
        /// Source.
        source: &'static str,
        /// When.
        at_ms: u64,
    },
    /// Send this lease renewal.
    RenewLease {
        /// The renewed lease.
        lease: Lease,
    },
    /// Raise this alarm.
    Alarm(Alarm),
}

/// Laser interlock inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interlock {
    /// Key switch on.
    KeySwitch,
    /// Door (remote interlock) closed.
    DoorClosed,
    /// Emission indicator lit.
    EmissionIndicator,
}

/// Why a protocol could not be armed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ArmError {
    /// Something was refused.
    #[error("the protocol cannot be armed: {} step(s) refused ({}), {protocol} protocol finding(s)", refused.len(), refused.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    NotArmable {
        /// Refused steps.
        refused: Vec<StepRef>,
        /// Refusing protocol findings.
        protocol: usize,
    },
    /// The pre-check names a device or channel this governor does not have.
    #[error("step {step}: {reason}; was the pre-check made by another governor?")]
    Mismatch {
        /// Step.
        step: StepRef,
        /// What does not match.
        reason: String,
    },
}

#[derive(Debug, Clone)]
struct ArmedStep {
    device: usize,
    channel: usize,
    source: usize,
    site: BodySite,
    site_idx: usize,
    sensation: Sensation,
    region: BodyRegion,
    start_ms: u64,
    end_ms: u64,
    duration_ms: u64,
    approved: Setpoint,
}

#[derive(Debug, Clone)]
struct Trip {
    rule: &'static str,
    at_ms: u64,
}

#[derive(Debug, Clone)]
struct Source {
    device: usize,
    channel: usize,
    laser_controls: bool,
    monitored: bool,
    energised: bool,
    active: Option<usize>,
    last_step: Option<usize>,
    current: Setpoint,
    lease_expires_ms: Option<u64>,
    last_seen_ms: Option<u64>,
    tripped: Option<Trip>,
    reduced: bool,
}

#[derive(Debug, Clone, Default)]
struct DeviceState {
    key_on: bool,
    door_closed: bool,
    indicator_since: Option<u64>,
    /// First source index of this device (sources are laid out device by device).
    first_source: usize,
    sources: usize,
}

/// The runtime supervisor of one armed session.
#[derive(Debug, Clone)]
pub struct Supervisor {
    gov: Governor,
    steps: Vec<ArmedStep>,
    /// Block id, and per step index of that block the armed step.
    blocks: Vec<(String, Vec<Option<usize>>)>,
    /// Row-major overlap matrix of the distinct sites of the armed steps.
    site_overlap: Vec<bool>,
    n_sites: usize,
    sources: Vec<Source>,
    devices: Vec<DeviceState>,
    eyewear: bool,
    estop: Option<u64>,
    next_lease: u64,
    scratch: Vec<Finding>,
}

impl Governor {
    /// Arms a pre-checked protocol: the supervisor admits only its approved steps.
    /// `session_start_ms` is the monotonic time at which the combined timeline starts.
    pub fn arm(&self, precheck: &Precheck, session_start_ms: u64) -> Result<Supervisor, ArmError> {
        if !precheck.can_arm() {
            return Err(ArmError::NotArmable {
                refused: precheck
                    .steps
                    .iter()
                    .filter(|s| s.verdict == Verdict::Refuse)
                    .map(|s| s.step.clone())
                    .collect(),
                protocol: precheck
                    .protocol
                    .iter()
                    .filter(|f| f.verdict == Verdict::Refuse)
                    .count(),
            });
        }
        let mut devices = Vec::with_capacity(self.profiles.len());
        let mut sources = Vec::new();
        for (di, p) in self.profiles.iter().enumerate() {
            devices.push(DeviceState {
                first_source: sources.len(),
                sources: p.channels.len(),
                ..DeviceState::default()
            });
            for (ci, c) in p.channels.iter().enumerate() {
                sources.push(Source {
                    device: di,
                    channel: ci,
                    laser_controls: c.laser_class().is_some_and(|k| k.needs_controls()),
                    monitored: c.monitored(),
                    energised: false,
                    active: None,
                    last_step: None,
                    current: Setpoint::Off,
                    lease_expires_ms: None,
                    last_seen_ms: None,
                    tripped: None,
                    reduced: false,
                });
            }
        }
        let mut sup = Supervisor {
            gov: self.clone(),
            steps: Vec::new(),
            blocks: Vec::new(),
            site_overlap: Vec::new(),
            n_sites: 0,
            sources,
            devices,
            eyewear: false,
            estop: None,
            next_lease: 1,
            scratch: Vec::new(),
        };
        let mut site_infos: Vec<SiteInfo> = Vec::new();
        for s in &precheck.steps {
            let Some(approved) = s.approved else { continue };
            let mismatch = |reason: String| ArmError::Mismatch {
                step: s.step.clone(),
                reason,
            };
            let di = self
                .device_index(&s.device_id)
                .ok_or_else(|| mismatch(format!("unknown device {:?}", s.device_id)))?;
            let ci = self
                .profiles
                .get(di)
                .and_then(|p| p.channels.iter().position(|c| c.name == s.channel))
                .ok_or_else(|| mismatch(format!("unknown channel {:?}", s.channel)))?;
            let source = sup.devices.get(di).map_or(0, |d| d.first_source) + ci;
            let info = SiteInfo::new(&s.site);
            let site_idx = match site_infos.iter().position(|x| x.site == s.site) {
                Some(i) => i,
                None => {
                    site_infos.push(info.clone());
                    site_infos.len() - 1
                }
            };
            // An energy step was refused unless the sensation was known; an off step carries
            // no energy, so the strictest reading is safe for it.
            let sensation = s.sensation.unwrap_or(Sensation::Absent);
            let start = session_start_ms.saturating_add(s.start_ms);
            let idx = sup.steps.len();
            sup.steps.push(ArmedStep {
                device: di,
                channel: ci,
                source,
                site: s.site.clone(),
                site_idx,
                sensation,
                region: info.region.unwrap_or(BodyRegion::Eye),
                start_ms: start,
                end_ms: start.saturating_add(approved.duration_ms),
                duration_ms: approved.duration_ms,
                approved: approved.setpoint,
            });
            let bi = match sup.blocks.iter().position(|(b, _)| *b == s.step.block_id) {
                Some(i) => i,
                None => {
                    sup.blocks.push((s.step.block_id.clone(), Vec::new()));
                    sup.blocks.len() - 1
                }
            };
            if let Some((_, v)) = sup.blocks.get_mut(bi) {
                if v.len() <= s.step.step_index {
                    v.resize(s.step.step_index + 1, None);
                }
                if let Some(slot) = v.get_mut(s.step.step_index) {
                    *slot = Some(idx);
                }
            }
        }
        let n = site_infos.len();
        sup.n_sites = n;
        sup.site_overlap = site_infos
            .iter()
            .flat_map(|a| site_infos.iter().map(move |b| a.overlaps(b)))
            .collect();
        Ok(sup)
    }
}

/// Whether `sp` stays inside the approved envelope `env`: same geometry and waveform, and no
/// quantity that raises the dose above the approved value.
fn within(sp: &Setpoint, env: &Setpoint) -> bool {
    fn same(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
    }
    fn le(a: f64, b: f64) -> bool {
        !exceeds(a, b)
    }
    match (sp, env) {
        (Setpoint::Optical(a), Setpoint::Optical(b)) => optical_within(a, b, same, le),
        (Setpoint::Heat(a), Setpoint::Heat(b)) => heat_within(a, b, le),
        (Setpoint::Electrical(a), Setpoint::Electrical(b)) => electrical_within(a, b, same, le),
        (Setpoint::Off, _) => true,
        _ => false,
    }
}

fn optical_within(
    a: &OpticalSetpoint,
    b: &OpticalSetpoint,
    same: fn(f64, f64) -> bool,
    le: fn(f64, f64) -> bool,
) -> bool {
    same(a.wavelength_nm, b.wavelength_nm)
        && same(a.beam_area_cm2, b.beam_area_cm2)
        && same(a.pulse_frequency_hz, b.pulse_frequency_hz)
        && same(a.duty_cycle, b.duty_cycle)
        && match (a.scan_area_cm2, b.scan_area_cm2) {
            (None, None) => true,
            (Some(x), Some(y)) => same(x, y),
            _ => false,
        }
        && le(a.power_mw, b.power_mw)
}

fn heat_within(a: &HeatSetpoint, b: &HeatSetpoint, le: fn(f64, f64) -> bool) -> bool {
    le(a.target_temp_c, b.target_temp_c) && le(a.power_limit_w, b.power_limit_w)
}

fn electrical_within(
    a: &ElectricalSetpoint,
    b: &ElectricalSetpoint,
    same: fn(f64, f64) -> bool,
    le: fn(f64, f64) -> bool,
) -> bool {
    a.waveform == b.waveform
        && same(a.electrode_area_cm2, b.electrode_area_cm2)
        && a.burst_pulses == b.burst_pulses
        && same(a.burst_rate_hz, b.burst_rate_hz)
        && le(a.frequency_hz, b.frequency_hz)
        && le(a.pulse_width_us, b.pulse_width_us)
        && le(a.amplitude_ma, b.amplitude_ma)
}

/// The output while a skin temperature alarm is in force: heat held below the alarm level at
/// half power, light at half power. Electrical output is not a heat source and is unchanged.
fn reduced_setpoint(sp: &Setpoint, alarm_c: f64, hysteresis_c: f64) -> Option<Setpoint> {
    match sp {
        Setpoint::Heat(h) => Some(Setpoint::Heat(HeatSetpoint {
            target_temp_c: h.target_temp_c.min(alarm_c - hysteresis_c),
            power_limit_w: h.power_limit_w * 0.5,
        })),
        Setpoint::Optical(o) => Some(Setpoint::Optical(OpticalSetpoint {
            power_mw: o.power_mw * 0.5,
            ..*o
        })),
        Setpoint::Electrical(_) | Setpoint::Off => None,
    }
}

impl Supervisor {
    fn source_index(&self, device_id: &str, channel: &str) -> Option<usize> {
        let di = self.gov.profiles.iter().position(|p| p.id == device_id)?;
        let ci = self
            .gov
            .profiles
            .get(di)?
            .channels
            .iter()
            .position(|c| c.name == channel)?;
        Some(self.devices.get(di)?.first_source + ci)
    }

    fn names(&self, src: usize) -> (String, String) {
        let s = &self.sources[src];
        let p = self.gov.profiles.get(s.device);
        (
            p.map(|p| p.id.clone()).unwrap_or_default(),
            p.and_then(|p| p.channels.get(s.channel))
                .map(|c| c.name.clone())
                .unwrap_or_default(),
        )
    }

    fn limits_of(&self, src: usize) -> &Limits {
        self.sources
            .get(src)
            .and_then(|s| self.gov.device_limits.get(s.device))
            .unwrap_or(&self.gov.limits)
    }

    fn step_of(&self, r: &StepRef) -> Option<usize> {
        self.blocks
            .iter()
            .find(|(b, _)| *b == r.block_id)
            .and_then(|(_, v)| v.get(r.step_index).copied().flatten())
    }

    fn interlocks_ok(&self, src: usize, now_ms: u64) -> Result<(), String> {
        let Some(s) = self.sources.get(src) else {
            return Err("unknown source".into());
        };
        if !s.laser_controls {
            return Ok(());
        }
        let Some(d) = self.devices.get(s.device) else {
            return Err("unknown device".into());
        };
        let lead = self.limits_of(src).interlock_lead_time_ms;
        let mut missing = Vec::new();
        if !d.key_on {
            missing.push("key switch off".to_string());
        }
        if !d.door_closed {
            missing.push("door interlock open".to_string());
        }
        if !self.eyewear {
            missing.push("eyewear not confirmed".to_string());
        }
        match d.indicator_since {
            None => missing.push("emission indicator not lit".to_string()),
            Some(t) if now_ms.saturating_sub(t) < lead => {
                missing.push(format!(
                    "emission indicator lit {} ms, less than the {lead} ms lead time",
                    now_ms.saturating_sub(t)
                ));
            }
            Some(_) => {}
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing.join(", "))
        }
    }

    /// Checks a command at emission time. Stops (`Off`) are always admitted.
    pub fn admit(&mut self, cmd: &Command, now_ms: u64) -> Decision {
        let src = self.source_index(&cmd.device_id, &cmd.channel);
        if cmd.setpoint == Setpoint::Off {
            if let Some(s) = src.and_then(|i| self.sources.get_mut(i)) {
                s.energised = false;
                s.active = None;
                s.current = Setpoint::Off;
                s.lease_expires_ms = None;
            }
            return Decision::admit(rules::RUN_OFF, "a stop is always admitted", None, now_ms);
        }
        if self.estop.is_some() {
            return Decision::refuse(
                rules::RUN_ESTOP,
                "e-stop is latched: an operator must reset it",
                vec![],
                now_ms,
            );
        }
        let Some(src) = src else {
            return Decision::refuse(
                rules::RUN_NOT_IN_PLAN,
                format!(
                    "no device {:?} with channel {:?}",
                    cmd.device_id, cmd.channel
                ),
                vec![],
                now_ms,
            );
        };
        let Some(si) = self.step_of(&cmd.step) else {
            return Decision::refuse(
                rules::RUN_NOT_IN_PLAN,
                format!("step {} is not in the armed plan", cmd.step),
                vec![],
                now_ms,
            );
        };
        let Some(step) = self.steps.get(si) else {
            return Decision::refuse(
                rules::RUN_NOT_IN_PLAN,
                "step index out of range",
                vec![],
                now_ms,
            );
        };
        if step.source != src || step.site != cmd.site {
            return Decision::refuse(
                rules::RUN_NOT_IN_PLAN,
                format!(
                    "step {} is for another channel or site than {}/{} at {}",
                    cmd.step, cmd.device_id, cmd.channel, cmd.site
                ),
                vec![],
                now_ms,
            );
        }
        // Field-level borrows (not `limits_of`) so that `scratch` stays mutable below.
        let lim = self
            .sources
            .get(src)
            .and_then(|s| self.gov.device_limits.get(s.device))
            .unwrap_or(&self.gov.limits);
        if now_ms.saturating_add(lim.schedule_early_ms) < step.start_ms || now_ms >= step.end_ms {
            return Decision::refuse(
                rules::RUN_SCHEDULE,
                format!(
                    "step {} runs from {} to {} ms; now is {now_ms} ms",
                    cmd.step, step.start_ms, step.end_ms
                ),
                vec![
                    v("now", now_ms as f64, "ms"),
                    v("start", step.start_ms as f64, "ms"),
                    v("end", step.end_ms as f64, "ms"),
                ],
                now_ms,
            );
        }
        if let Some(t) = self.sources.get(src).and_then(|s| s.tripped.as_ref()) {
            return Decision::refuse(
                rules::RUN_TRIPPED,
                format!(
                    "the channel tripped on {} at {} ms and stays off until re-enabled",
                    t.rule, t.at_ms
                ),
                vec![],
                now_ms,
            );
        }
        if !within(&cmd.setpoint, &step.approved) {
            return Decision::refuse(
                rules::RUN_ENVELOPE,
                format!(
                    "setpoint {:?} leaves the approved envelope {:?}",
                    cmd.setpoint, step.approved
                ),
                vec![],
                now_ms,
            );
        }
        if self.sources.get(src).is_some_and(|s| s.reduced) {
            let alarm = lim.skin_alarm_c(step.sensation);
            let hyst = lim.skin_temp_hysteresis_c;
            if let Some(ceiling) = reduced_setpoint(&step.approved, alarm, hyst)
                && !within(&cmd.setpoint, &ceiling)
            {
                return Decision::refuse(
                    rules::RUN_SKIN_ALARM,
                    "a skin temperature alarm holds this source at reduced output",
                    vec![],
                    now_ms,
                );
            }
        }
        // Defence in depth: the same physical rules as the pre-check, on the command itself.
        let (Some(profile), Some(channel)) = (
            self.gov.profiles.get(step.device),
            self.gov
                .profiles
                .get(step.device)
                .and_then(|p| p.channels.get(step.channel)),
        ) else {
            return Decision::refuse(
                rules::RUN_NOT_IN_PLAN,
                "device profile missing",
                vec![],
                now_ms,
            );
        };
        let ctx = StepCtx {
            profile,
            channel,
            limits: lim,
            sensation: step.sensation,
            region: step.region,
            duration_ms: step.duration_ms,
        };
        let mut sp = cmd.setpoint;
        self.scratch.clear();
        let mut scratch = std::mem::take(&mut self.scratch);
        if checks::check_numbers(&sp, step.duration_ms, &mut scratch) {
            checks::check_setpoint(&ctx, &mut sp, &mut scratch);
        }
        let worst = scratch
            .iter()
            .filter(|f| f.verdict >= Verdict::Clamp)
            .max_by_key(|f| f.verdict)
            .cloned();
        self.scratch = scratch;
        if let Some(f) = worst {
            return Decision::refuse(
                rules::RUN_RECHECK,
                format!("{}: {}", f.rule, f.reason),
                f.values,
                now_ms,
            );
        }
        if let Err(why) = self.interlocks_ok(src, now_ms) {
            return Decision::refuse(rules::RUN_INTERLOCK, why, vec![], now_ms);
        }
        let (end_ms, lease_period) = (step.end_ms, lim.lease_period_ms);
        let staleness = lim.staleness_limit_ms;
        let Some(s) = self.sources.get_mut(src) else {
            return Decision::refuse(rules::RUN_NOT_IN_PLAN, "unknown source", vec![], now_ms);
        };
        if s.monitored
            && s.energised
            && let Some(seen) = s.last_seen_ms
            && now_ms.saturating_sub(seen) > staleness
        {
            return Decision::refuse(
                rules::RUN_STALE,
                format!(
                    "last telemetry {} ms ago, over the {staleness} ms limit",
                    now_ms.saturating_sub(seen)
                ),
                vec![],
                now_ms,
            );
        }
        if !s.energised {
            // A source starting up has the staleness limit to send its first reading.
            s.last_seen_ms = Some(s.last_seen_ms.map_or(now_ms, |t| t.max(now_ms)));
        }
        let expires = now_ms.saturating_add(lease_period).min(end_ms);
        s.energised = true;
        s.active = Some(si);
        s.last_step = Some(si);
        s.current = cmd.setpoint;
        s.lease_expires_ms = Some(expires);
        let id = self.next_lease;
        self.next_lease += 1;
        let lease = Lease {
            id,
            device_id: cmd.device_id.clone(),
            channel: cmd.channel.clone(),
            expires_at_ms: expires,
        };
        Decision::admit(
            rules::RUN_ADMIT,
            "inside the approved step and every limit",
            Some(lease),
            now_ms,
        )
    }

    /// De-energises a source and returns the stop action; `latch` trips it.
    #[allow(clippy::too_many_arguments)]
    fn stop(
        &mut self,
        src: usize,
        rule: Rule,
        reason: String,
        values: Vec<Value>,
        latch: bool,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        let (device_id, channel) = self.names(src);
        if let Some(s) = self.sources.get_mut(src) {
            s.energised = false;
            s.active = None;
            s.current = Setpoint::Off;
            s.lease_expires_ms = None;
            if latch && s.tripped.is_none() {
                s.tripped = Some(Trip {
                    rule: rule.id,
                    at_ms: now_ms,
                });
            }
        }
        out.push(Action::Stop {
            device_id,
            channel,
            rule: rule.id,
            reason,
            values,
            source: rule.source,
            latched: latch,
            at_ms: now_ms,
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn alarm(
        &self,
        priority: AlarmPriority,
        rule: Rule,
        reason: String,
        src: Option<usize>,
        values: Vec<Value>,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        let (device_id, channel) = match src {
            Some(s) => {
                let (d, c) = self.names(s);
                (Some(d), Some(c))
            }
            None => (None, None),
        };
        out.push(Action::Alarm(Alarm {
            priority,
            rule: rule.id,
            reason,
            device_id,
            channel,
            values,
            source: rule.source,
            at_ms: now_ms,
        }));
    }

    fn device_sources(&self, device: usize) -> std::ops::Range<usize> {
        self.devices
            .get(device)
            .map_or(0..0, |d| d.first_source..d.first_source + d.sources)
    }

    /// Energised sources whose active step's site overlaps armed step `si`'s site.
    fn sources_on_site_of(&self, si: usize) -> Vec<usize> {
        let Some(site) = self.steps.get(si).map(|s| s.site_idx) else {
            return Vec::new();
        };
        (0..self.sources.len())
            .filter(|&k| {
                self.sources[k]
                    .active
                    .and_then(|a| self.steps.get(a))
                    .is_some_and(|a| {
                        self.site_overlap
                            .get(site * self.n_sites + a.site_idx)
                            .copied()
                            .unwrap_or(true)
                    })
            })
            .collect()
    }

    /// Takes one telemetry sample. Returns what must happen now (empty when all is well).
    pub fn observe(&mut self, t: &Telemetry, now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(src) = self.source_index(&t.device_id, &t.channel) else {
            self.alarm(
                AlarmPriority::Low,
                rules::RUN_TELEMETRY,
                format!(
                    "telemetry from unknown source {}/{}",
                    t.device_id, t.channel
                ),
                None,
                vec![],
                now_ms,
                &mut out,
            );
            return out;
        };
        let lim = self.limits_of(src).clone_needed();
        if t.measured_at_ms > now_ms {
            self.alarm(
                AlarmPriority::Low,
                rules::RUN_TELEMETRY,
                format!(
                    "telemetry stamped {} ms, after now ({now_ms} ms): ignored",
                    t.measured_at_ms
                ),
                Some(src),
                vec![],
                now_ms,
                &mut out,
            );
            return out;
        }
        let energised = self.sources.get(src).is_some_and(|s| s.energised);
        let age = now_ms - t.measured_at_ms;
        if age > lim.staleness_limit_ms {
            if energised {
                self.stop(
                    src,
                    rules::RUN_STALE,
                    format!(
                        "a reading {age} ms old is over the {} ms staleness limit",
                        lim.staleness_limit_ms
                    ),
                    vec![
                        v("age", age as f64, "ms"),
                        v("limit", lim.staleness_limit_ms as f64, "ms"),
                    ],
                    true,
                    now_ms,
                    &mut out,
                );
                self.alarm(
                    AlarmPriority::High,
                    rules::RUN_STALE,
                    format!("stale telemetry ({age} ms)"),
                    Some(src),
                    vec![],
                    now_ms,
                    &mut out,
                );
            }
            return out;
        }
        let (value, name, unit) = match t.measurement {
            Measurement::SkinTempC(x) => (x, "skin_temp", "C"),
            Measurement::OpticalPowerMw(x) => (x, "optical_power", "mW"),
            Measurement::ImpedanceOhm(x) => (x, "impedance", "ohm"),
        };
        let plausible = value.is_finite() && (value >= 0.0 || name == "skin_temp") && value > -50.0;
        if !plausible {
            if energised {
                self.stop(
                    src,
                    rules::RUN_TELEMETRY,
                    format!("{name} reading {value} {unit} cannot be believed: sensor fault"),
                    vec![v(name, value, unit)],
                    true,
                    now_ms,
                    &mut out,
                );
                self.alarm(
                    AlarmPriority::High,
                    rules::RUN_TELEMETRY,
                    format!("sensor fault: {name} = {value}"),
                    Some(src),
                    vec![],
                    now_ms,
                    &mut out,
                );
            } else {
                self.alarm(
                    AlarmPriority::Low,
                    rules::RUN_TELEMETRY,
                    format!("sensor fault: {name} = {value}"),
                    Some(src),
                    vec![],
                    now_ms,
                    &mut out,
                );
            }
            return out;
        }
        if let Some(s) = self.sources.get_mut(src) {
            s.last_seen_ms = Some(
                s.last_seen_ms
                    .map_or(t.measured_at_ms, |x| x.max(t.measured_at_ms)),
            );
        }
        match t.measurement {
            Measurement::SkinTempC(c) => self.skin_temp(src, c, &lim, now_ms, &mut out),
            Measurement::OpticalPowerMw(p) => self.optical_power(src, p, &lim, now_ms, &mut out),
            Measurement::ImpedanceOhm(z) => {
                if energised && (z < lim.tens_impedance_min_ohm || z > lim.tens_impedance_max_ohm) {
                    let values = vec![
                        v("impedance", z, "ohm"),
                        v("min", lim.tens_impedance_min_ohm, "ohm"),
                        v("max", lim.tens_impedance_max_ohm, "ohm"),
                    ];
                    let why = if z > lim.tens_impedance_max_ohm {
                        "electrode lifting: current density rising"
                    } else {
                        "short or wet bridge between electrodes"
                    };
                    self.stop(
                        src,
                        rules::RUN_IMPEDANCE,
                        format!("impedance {z} ohm out of range ({why})"),
                        values.clone(),
                        true,
                        now_ms,
                        &mut out,
                    );
                    self.alarm(
                        AlarmPriority::Medium,
                        rules::RUN_IMPEDANCE,
                        format!("impedance {z} ohm: {why}"),
                        Some(src),
                        values,
                        now_ms,
                        &mut out,
                    );
                }
            }
        }
        out
    }

    fn skin_temp(
        &mut self,
        src: usize,
        c: f64,
        lim: &LimitsCopy,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        let step = self.sources.get(src).and_then(|s| s.active.or(s.last_step));
        // Without a step there is no site: read it as insensate skin, the strictest.
        let sensation = step
            .and_then(|i| self.steps.get(i))
            .map_or(Sensation::Absent, |s| s.sensation);
        let cutoff = lim.cutoff(sensation);
        let alarm = lim.alarm(sensation);
        let affected: Vec<usize> = match step {
            Some(si) => {
                let mut a = self.sources_on_site_of(si);
                if !a.contains(&src) && self.sources.get(src).is_some_and(|s| s.energised) {
                    a.push(src);
                }
                a
            }
            None => vec![src],
        };
        let values = vec![
            v("skin_temp", c, "C"),
            v("alarm", alarm, "C"),
            v("cutoff", cutoff, "C"),
        ];
        if c > cutoff {
            for k in affected {
                if self.sources.get(k).is_some_and(|s| s.energised) {
                    self.stop(
                        k,
                        rules::RUN_SKIN_CUTOFF,
                        format!("skin {c} C is over the {cutoff} C cut-off"),
                        values.clone(),
                        true,
                        now_ms,
                        out,
                    );
                }
            }
            self.alarm(
                AlarmPriority::High,
                rules::RUN_SKIN_CUTOFF,
                format!("skin {c} C over the {cutoff} C cut-off: sources on the site stopped"),
                Some(src),
                values,
                now_ms,
                out,
            );
        } else if c > alarm {
            let mut any = false;
            for k in affected {
                let Some(s) = self.sources.get(k) else {
                    continue;
                };
                if !s.energised || s.reduced {
                    continue;
                }
                let Some(approved) = s
                    .active
                    .and_then(|a| self.steps.get(a))
                    .map(|st| st.approved)
                else {
                    continue;
                };
                let Some(reduced) = reduced_setpoint(&approved, alarm, lim.hysteresis) else {
                    continue;
                };
                let (device_id, channel) = self.names(k);
                if let Some(s) = self.sources.get_mut(k) {
                    s.reduced = true;
                    s.current = reduced;
                }
                any = true;
                out.push(Action::Reduce {
                    device_id,
                    channel,
                    setpoint: reduced,
                    rule: rules::RUN_SKIN_ALARM.id,
                    reason: format!("skin {c} C is over the {alarm} C alarm level: output reduced"),
                    values: values.clone(),
                    source: rules::RUN_SKIN_ALARM.source,
                    at_ms: now_ms,
                });
            }
            if any {
                self.alarm(
                    AlarmPriority::Medium,
                    rules::RUN_SKIN_ALARM,
                    format!("skin {c} C over the {alarm} C alarm level"),
                    Some(src),
                    values,
                    now_ms,
                    out,
                );
            }
        } else if c <= alarm - lim.hysteresis {
            for k in affected {
                if let Some(s) = self.sources.get_mut(k) {
                    s.reduced = false;
                }
            }
        }
    }

    fn optical_power(
        &mut self,
        src: usize,
        p: f64,
        lim: &LimitsCopy,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        let Some(s) = self.sources.get(src) else {
            return;
        };
        let device = s.device;
        let set = match (s.energised, s.current) {
            (true, Setpoint::Optical(o)) => Some(o.power_mw),
            _ => None,
        };
        let (rule, reason, values) = match set {
            Some(set) => {
                let dev = (p - set).abs();
                if dev <= lim.tolerance * set {
                    return;
                }
                (
                    rules::RUN_OPTICAL_POWER,
                    format!(
                        "measured {p} mW against a {set} mW setpoint: off by more than {:.0} %",
                        lim.tolerance * 100.0
                    ),
                    vec![
                        v("measured", p, "mW"),
                        v("setpoint", set, "mW"),
                        v("tolerance", lim.tolerance, ""),
                    ],
                )
            }
            None => {
                if p <= lim.stray_mw {
                    return;
                }
                (
                    rules::RUN_STRAY_EMISSION,
                    format!("{p} mW measured while the channel should be dark"),
                    vec![v("measured", p, "mW"), v("threshold", lim.stray_mw, "mW")],
                )
            }
        };
        for k in self.device_sources(device) {
            self.stop(k, rule, reason.clone(), values.clone(), true, now_ms, out);
        }
        self.alarm(
            AlarmPriority::High,
            rule,
            reason,
            Some(src),
            values,
            now_ms,
            out,
        );
    }

    /// The watchdog: stops sources whose step is over, whose lease lapsed or whose telemetry
    /// went stale. Call it periodically (more often than the staleness limit).
    pub fn tick(&mut self, now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        for k in 0..self.sources.len() {
            let Some(s) = self.sources.get(k) else {
                continue;
            };
            if !s.energised {
                continue;
            }
            let end = s
                .active
                .and_then(|a| self.steps.get(a))
                .map_or(0, |st| st.end_ms);
            let lim = self.limits_of(k);
            let staleness = lim.staleness_limit_ms;
            if now_ms >= end {
                self.stop(
                    k,
                    rules::RUN_STEP_END,
                    "the step's time is over".into(),
                    vec![],
                    false,
                    now_ms,
                    &mut out,
                );
            } else if s.lease_expires_ms.is_none_or(|e| now_ms >= e) {
                self.stop(
                    k,
                    rules::RUN_LEASE,
                    "the lease lapsed without renewal: the device has stopped".into(),
                    vec![],
                    false,
                    now_ms,
                    &mut out,
                );
                self.alarm(
                    AlarmPriority::Medium,
                    rules::RUN_LEASE,
                    "lease lapsed".into(),
                    Some(k),
                    vec![],
                    now_ms,
                    &mut out,
                );
            } else if s.monitored
                && s.last_seen_ms
                    .is_none_or(|t| now_ms.saturating_sub(t) > staleness)
            {
                let age = s
                    .last_seen_ms
                    .map_or(f64::INFINITY, |t| now_ms.saturating_sub(t) as f64);
                self.stop(
                    k,
                    rules::RUN_STALE,
                    format!("no telemetry for {age} ms, over the {staleness} ms staleness limit (watchdog)"),
                    vec![v("age", age, "ms"), v("limit", staleness as f64, "ms")],
                    true,
                    now_ms,
                    &mut out,
                );
                self.alarm(
                    AlarmPriority::High,
                    rules::RUN_STALE,
                    "telemetry stale: source stopped".into(),
                    Some(k),
                    vec![],
                    now_ms,
                    &mut out,
                );
            }
        }
        out
    }

    /// Renews the leases of energised sources that are healthy (no e-stop, no trip, interlocks
    /// made, telemetry fresh, step not over); stops the others. Runs the watchdog first.
    pub fn renew_leases(&mut self, now_ms: u64) -> Vec<Action> {
        let mut out = self.tick(now_ms);
        for k in 0..self.sources.len() {
            let Some(s) = self.sources.get(k) else {
                continue;
            };
            if !s.energised {
                continue;
            }
            if self.estop.is_some() || s.tripped.is_some() {
                let rule = if self.estop.is_some() {
                    rules::RUN_ESTOP
                } else {
                    rules::RUN_TRIPPED
                };
                self.stop(
                    k,
                    rule,
                    "not healthy: no lease renewal".into(),
                    vec![],
                    true,
                    now_ms,
                    &mut out,
                );
                continue;
            }
            if let Err(why) = self.interlocks_ok(k, now_ms) {
                self.stop(k, rules::RUN_INTERLOCK, why, vec![], true, now_ms, &mut out);
                continue;
            }
            let end = s
                .active
                .and_then(|a| self.steps.get(a))
                .map_or(now_ms, |st| st.end_ms);
            let expires = now_ms
                .saturating_add(self.limits_of(k).lease_period_ms)
                .min(end);
            // A lease already running to the step's end cannot be extended. Renewing it anyway
            // sends the device a grant that lands as the step ends, after the device has
            // rightly stopped by itself, and the device answers "expired" for a source that
            // did nothing wrong (seen as a false alarm with time-compressed steps).
            if s.lease_expires_ms.is_some_and(|current| expires <= current) {
                continue;
            }
            let (device_id, channel) = self.names(k);
            let id = self.next_lease;
            self.next_lease += 1;
            if let Some(s) = self.sources.get_mut(k) {
                s.lease_expires_ms = Some(expires);
            }
            out.push(Action::RenewLease {
                lease: Lease {
                    id,
                    device_id,
                    channel,
                    expires_at_ms: expires,
                },
            });
        }
        out
    }

    /// Sets a laser interlock input. Any input dropping stops (and trips) every Class 3B/4
    /// channel of the device at once; a manual reset ([`Supervisor::reenable`]) is needed
    /// after (21 CFR 1040.10(f)(10) [K]).
    pub fn interlock(
        &mut self,
        device_id: &str,
        input: Interlock,
        on: bool,
        now_ms: u64,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(di) = self.gov.device_index(device_id) else {
            self.alarm(
                AlarmPriority::Low,
                rules::RUN_INTERLOCK,
                format!("interlock signal from unknown device {device_id:?}"),
                None,
                vec![],
                now_ms,
                &mut out,
            );
            return out;
        };
        let Some(d) = self.devices.get_mut(di) else {
            return out;
        };
        let was = match input {
            Interlock::KeySwitch => std::mem::replace(&mut d.key_on, on),
            Interlock::DoorClosed => std::mem::replace(&mut d.door_closed, on),
            Interlock::EmissionIndicator => {
                let was = d.indicator_since.is_some();
                d.indicator_since = if on {
                    d.indicator_since.or(Some(now_ms))
                } else {
                    None
                };
                was
            }
        };
        if was && !on {
            let what = match input {
                Interlock::KeySwitch => "key switch turned off",
                Interlock::DoorClosed => "door interlock opened",
                Interlock::EmissionIndicator => "emission indicator went out",
            };
            self.interlock_break(Some(di), what, now_ms, &mut out);
        }
        out
    }

    /// The operator confirms (or withdraws) that everyone in the room wears eyewear.
    pub fn confirm_eyewear(&mut self, confirmed: bool, now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        let was = std::mem::replace(&mut self.eyewear, confirmed);
        if was && !confirmed {
            self.interlock_break(None, "eyewear confirmation withdrawn", now_ms, &mut out);
        }
        out
    }

    fn interlock_break(
        &mut self,
        device: Option<usize>,
        what: &str,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        let mut any = false;
        for k in 0..self.sources.len() {
            let s = &self.sources[k];
            if !s.laser_controls || device.is_some_and(|d| d != s.device) {
                continue;
            }
            any = true;
            self.stop(
                k,
                rules::RUN_INTERLOCK,
                format!("{what}: emission stopped, manual reset required"),
                vec![],
                true,
                now_ms,
                out,
            );
        }
        if any {
            let src = device
                .and_then(|d| self.devices.get(d))
                .map(|d| d.first_source);
            self.alarm(
                AlarmPriority::High,
                rules::RUN_INTERLOCK,
                format!("{what}: laser emission stopped"),
                src,
                vec![],
                now_ms,
                out,
            );
        }
    }

    /// Emergency stop: every source off at once, latched until [`Supervisor::reset_estop`].
    pub fn estop(&mut self, reason: &str, now_ms: u64) -> Vec<Action> {
        let mut out = Vec::with_capacity(self.sources.len() + 1);
        self.estop = Some(now_ms);
        for k in 0..self.sources.len() {
            self.stop(
                k,
                rules::RUN_ESTOP,
                format!("e-stop: {reason}"),
                vec![],
                true,
                now_ms,
                &mut out,
            );
        }
        self.alarm(
            AlarmPriority::High,
            rules::RUN_ESTOP,
            format!("e-stop: {reason}"),
            None,
            vec![],
            now_ms,
            &mut out,
        );
        out
    }

    /// Resets a latched e-stop. Sources stay off (and tripped) until each is re-enabled and
    /// a new command is admitted.
    pub fn reset_estop(&mut self, operator: &str, now_ms: u64) -> Decision {
        if operator.trim().is_empty() {
            return Decision::refuse(
                rules::RUN_OPERATOR,
                "a reset must name the operator",
                vec![],
                now_ms,
            );
        }
        if self.estop.take().is_none() {
            return Decision::refuse(rules::RUN_OPERATOR, "no e-stop is latched", vec![], now_ms);
        }
        Decision {
            admission: Admission::Admit,
            rule: rules::RUN_OPERATOR.id,
            reason: Cow::Owned(format!("e-stop reset by {operator}")),
            values: vec![],
            source: rules::RUN_OPERATOR.source,
            lease: None,
            at_ms: now_ms,
        }
    }

    /// Re-enables a tripped channel (operator action).
    pub fn reenable(
        &mut self,
        device_id: &str,
        channel: &str,
        operator: &str,
        now_ms: u64,
    ) -> Decision {
        if operator.trim().is_empty() {
            return Decision::refuse(
                rules::RUN_OPERATOR,
                "a re-enable must name the operator",
                vec![],
                now_ms,
            );
        }
        if self.estop.is_some() {
            return Decision::refuse(rules::RUN_ESTOP, "reset the e-stop first", vec![], now_ms);
        }
        let Some(src) = self.source_index(device_id, channel) else {
            return Decision::refuse(
                rules::RUN_OPERATOR,
                format!("no channel {device_id}/{channel}"),
                vec![],
                now_ms,
            );
        };
        let Some(s) = self.sources.get_mut(src) else {
            return Decision::refuse(rules::RUN_OPERATOR, "unknown source", vec![], now_ms);
        };
        match s.tripped.take() {
            Some(t) => Decision {
                admission: Admission::Admit,
                rule: rules::RUN_OPERATOR.id,
                reason: Cow::Owned(format!(
                    "{device_id}/{channel} re-enabled by {operator} after {} at {} ms",
                    t.rule, t.at_ms
                )),
                values: vec![],
                source: rules::RUN_OPERATOR.source,
                lease: None,
                at_ms: now_ms,
            },
            None => Decision::refuse(
                rules::RUN_OPERATOR,
                format!("{device_id}/{channel} is not tripped"),
                vec![],
                now_ms,
            ),
        }
    }

    /// Whether the channel is delivering energy as far as the governor knows.
    pub fn is_energised(&self, device_id: &str, channel: &str) -> bool {
        self.source_index(device_id, channel)
            .and_then(|k| self.sources.get(k))
            .is_some_and(|s| s.energised)
    }

    /// Every energised channel as (device, channel).
    pub fn energised(&self) -> Vec<(String, String)> {
        (0..self.sources.len())
            .filter(|&k| self.sources[k].energised)
            .map(|k| self.names(k))
            .collect()
    }

    /// Whether any channel is energised.
    pub fn any_energised(&self) -> bool {
        self.sources.iter().any(|s| s.energised)
    }

    /// Whether the e-stop is latched.
    pub fn estop_latched(&self) -> bool {
        self.estop.is_some()
    }

    /// Whether a channel is tripped.
    pub fn is_tripped(&self, device_id: &str, channel: &str) -> bool {
        self.source_index(device_id, channel)
            .and_then(|k| self.sources.get(k))
            .is_some_and(|s| s.tripped.is_some())
    }

    /// The setpoint in force on a channel (after any reduction), `Off` when not energised.
    pub fn current(&self, device_id: &str, channel: &str) -> Setpoint {
        self.source_index(device_id, channel)
            .and_then(|k| self.sources.get(k))
            .map_or(Setpoint::Off, |s| s.current)
    }

    /// The approved setpoint and absolute window of a step.
    pub fn approved(&self, step: &StepRef) -> Option<(Setpoint, u64, u64)> {
        self.step_of(step)
            .and_then(|i| self.steps.get(i))
            .map(|s| (s.approved, s.start_ms, s.end_ms))
    }

    /// The channel kind and laser class of a channel, for the runtime's display.
    pub fn channel_spec(&self, device_id: &str, channel: &str) -> Option<&ChannelSpec> {
        self.gov
            .profile(device_id)
            .and_then(|p| p.channel(channel))
            .map(|c| &c.spec)
    }
}

/// The few limits `observe` needs, copied out so the borrow of the governor ends.
#[derive(Debug, Clone, Copy)]
struct LimitsCopy {
    staleness_limit_ms: u64,
    tolerance: f64,
    stray_mw: f64,
    hysteresis: f64,
    tens_impedance_min_ohm: f64,
    tens_impedance_max_ohm: f64,
    alarm_normal: f64,
    alarm_insensate: f64,
    cutoff_normal: f64,
    cutoff_insensate: f64,
}

impl LimitsCopy {
    fn alarm(&self, s: Sensation) -> f64 {
        if s == Sensation::Normal {
            self.alarm_normal
        } else {
            self.alarm_insensate
        }
    }
    fn cutoff(&self, s: Sensation) -> f64 {
        if s == Sensation::Normal {
            self.cutoff_normal
        } else {
            self.cutoff_insensate
        }
    }
}

trait CloneNeeded {
    fn clone_needed(&self) -> LimitsCopy;
}

impl CloneNeeded for Limits {
    fn clone_needed(&self) -> LimitsCopy {
        LimitsCopy {
            staleness_limit_ms: self.staleness_limit_ms,
            tolerance: self.optical_output_tolerance,
            stray_mw: self.stray_emission_mw,
            hysteresis: self.skin_temp_hysteresis_c,
            tens_impedance_min_ohm: self.tens_impedance_min_ohm,
            tens_impedance_max_ohm: self.tens_impedance_max_ohm,
            alarm_normal: self.skin_alarm_c(Sensation::Normal),
            alarm_insensate: self.skin_alarm_c(Sensation::Absent),
            cutoff_normal: self.skin_cutoff_c(Sensation::Normal),
            cutoff_insensate: self.skin_cutoff_c(Sensation::Absent),
        }
    }
}
