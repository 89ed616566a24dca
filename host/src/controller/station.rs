//! One station: a protocol turned into plans, a pre-check, a schedule and (once armed) a
//! supervisor. Preparing a station calls the plugins; everything after is the controller's.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use modalis_governor::{
    Block, DeviceProfile, Governor, Lease, PatientContext, Precheck, StepRef, Supervisor,
};
use modalis_sdk::{BodySite, Patient, SessionPlan, Setpoint, SiteSensation};
use serde::Serialize;
use tokio::time::Instant;

use super::ControllerError;
use super::clock::SessionClock;
use crate::bus::payload::SessionState;
use crate::plugin::Plugin;
use crate::protocol::{PluginFaultPolicy, Protocol};

/// One approved step on the session timeline.
#[derive(Debug, Clone)]
pub(super) struct Sched {
    pub step: StepRef,
    pub device: String,
    pub channel: String,
    pub site: BodySite,
    pub setpoint: Setpoint,
    pub start_ms: u64,
    pub end_ms: u64,
    pub label: String,
}

/// Where a block sits on the session timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockTimeline {
    /// Block id.
    pub block: String,
    /// The plugin that planned it.
    pub plugin: String,
    /// The device it runs on (profile id).
    pub device: String,
    /// Start, session ms.
    pub start_ms: u64,
    /// End of its last step, session ms.
    pub end_ms: u64,
    /// Steps in its plan.
    pub steps: usize,
}

/// Counters a station keeps for its summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StationCounters {
    /// Commands published (sets, renewals, stops).
    pub commands: u64,
    /// Steps the supervisor refused at emission time.
    pub refused: u64,
    /// Alarms raised.
    pub alarms: u64,
    /// Start jitter of every emitted step, microseconds late (wall clock).
    #[serde(skip)]
    pub jitter_us: Vec<u64>,
}

/// A block's closed loop: its own handle on the plugin that planned it (its own warm
/// instance, so neither state nor a failure is shared with another block or session).
pub(super) struct BlockLoop {
    pub plugin: Plugin,
    /// Where the block starts on the session timeline, session ms.
    pub start_ms: u64,
    /// Why the block was stopped after its plugin failed mid-session.
    pub failed: Option<String>,
    /// Adjustments the supervisor refused (the first raises an alarm, all are audited).
    pub refused: u64,
}

pub(super) struct Station {
    pub protocol: String,
    /// What a plugin failing mid-session stops.
    pub on_plugin_fault: PluginFaultPolicy,
    /// Closed loops by block id, while the session can still run.
    pub loops: BTreeMap<String, BlockLoop>,
    pub state: SessionState,
    pub governor: Governor,
    pub precheck: Precheck,
    pub supervisor: Option<Supervisor>,
    pub steps: Vec<Sched>,
    /// Index of the next step to emit.
    pub next: usize,
    /// End times (session ms) of emitted steps not yet passed: the watchdog must run then.
    pub ends: BTreeSet<u64>,
    pub total_ms: u64,
    pub clock: SessionClock,
    pub profiles: Vec<DeviceProfile>,
    pub blocks: Vec<BlockTimeline>,
    /// Wall-clock ms at which each (device, channel) was last told to stop.
    pub stopped_at: HashMap<(String, String), u64>,
    /// The lease each energised (device, channel) runs under.
    pub leases: HashMap<(String, String), Lease>,
    /// The wire lease id of the last setpoint sent to each (device, channel): telemetry under
    /// an older lease was measured before the device applied it.
    pub set_lease: HashMap<(String, String), u64>,
    /// Sources already reported for ignoring a stop (one alarm per source).
    pub ignoring: BTreeSet<(String, String)>,
    pub next_renew: Option<Instant>,
    pub next_status: Option<Instant>,
    pub counters: StationCounters,
    pub ended: Option<String>,
    /// The dose report as published (retained), to publish again after a reconnect.
    pub report: serde_json::Value,
}

impl Station {
    /// Whether `device` is one of this station's.
    pub fn has_device(&self, device: &str) -> bool {
        self.profiles.iter().any(|p| p.id == device)
    }

    /// Every (device, channel) of the station's profiles.
    pub fn all_channels(&self) -> Vec<(String, String)> {
        self.profiles
            .iter()
            .flat_map(|p| p.channels.iter().map(|c| (p.id.clone(), c.name.clone())))
            .collect()
    }

    /// Whether `block` was stopped after its plugin failed.
    pub fn block_failed(&self, block: &str) -> bool {
        self.loops.get(block).is_some_and(|l| l.failed.is_some())
    }

    /// When the session's work ends: the end of its last block that was not stopped after a
    /// plugin fault (a stopped block's remaining time is not waited out).
    pub fn end_ms(&self) -> u64 {
        self.blocks
            .iter()
            .filter(|b| !self.block_failed(&b.block))
            .map(|b| b.end_ms)
            .max()
            .unwrap_or(0)
    }

    /// The emitted step whose window contains `t` on `device`/`channel`.
    pub fn running_step(&self, device: &str, channel: &str, t: u64) -> Option<&Sched> {
        self.steps[..self.next]
            .iter()
            .rev()
            .find(|s| s.device == device && s.channel == channel && s.start_ms <= t && t < s.end_ms)
    }

    /// The block of the latest emitted step whose window contains `t`.
    pub fn current_block(&self, t: u64) -> Option<&str> {
        self.steps[..self.next]
            .iter()
            .rev()
            .find(|s| s.start_ms <= t && t < s.end_ms)
            .map(|s| s.step.block_id.as_str())
    }
}

/// What the plugins see of the patient: sensation per site and the condition names. The
/// governor keeps the trusted copy.
pub(super) fn plugin_patient(p: &PatientContext) -> Patient {
    Patient {
        sensation: p
            .sensation
            .iter()
            .map(|s| SiteSensation {
                site: s.site.clone(),
                sensation: s.sensation,
            })
            .collect(),
        conditions: p
            .contraindications
            .iter()
            .map(|c| c.kind.as_str().to_string())
            .collect(),
    }
}

/// Turns a protocol into a checked station: parameters validated by the plugins, one plan
/// per enabled block, the blocks on one timeline, the governor's pre-check.
pub(super) fn prepare(
    protocol: &Protocol,
    plugins: &mut BTreeMap<String, Plugin>,
    speed: u32,
) -> Result<Station, ControllerError> {
    protocol
        .check_params(plugins)
        .map_err(ControllerError::Protocol)?;
    // A plugin planning for a device of another modality would have its steps refused one by
    // one; say it once, by block.
    for b in protocol.enabled_blocks() {
        let (Some(plugin), Some(profile)) =
            (plugins.get(&b.plugin), protocol.devices.get(&b.device))
        else {
            continue;
        };
        let want = plugin.manifest().modality;
        if want != profile.modality {
            return Err(ControllerError::Modality(Box::new(
                super::ModalityMismatch {
                    file: protocol.path.display().to_string(),
                    block: b.id.clone(),
                    plugin: b.plugin.clone(),
                    plugin_modality: want.as_str().to_string(),
                    device: profile.id.clone(),
                    device_modality: profile.modality.as_str().to_string(),
                },
            )));
        }
    }
    let patient = plugin_patient(&protocol.patient);
    let mut plans: BTreeMap<String, SessionPlan> = BTreeMap::new();
    let mut durations = BTreeMap::new();
    for b in protocol.enabled_blocks() {
        let plugin = plugins
            .get_mut(&b.plugin)
            .ok_or_else(|| ControllerError::UnknownPlugin {
                block: b.id.clone(),
                plugin: b.plugin.clone(),
            })?;
        let plan = match plugin.plan(&b.params.to_string(), &patient) {
            Ok(Ok(plan)) => plan,
            Ok(Err(e)) => {
                return Err(ControllerError::Plan {
                    block: b.id.clone(),
                    plugin: b.plugin.clone(),
                    message: e.to_string(),
                });
            }
            Err(e) => {
                return Err(ControllerError::Plugin {
                    block: b.id.clone(),
                    plugin: b.plugin.clone(),
                    message: e.to_string(),
                });
            }
        };
        let duration = plan
            .steps
            .iter()
            .map(|s| s.offset_ms.saturating_add(s.duration_ms))
            .max()
            .unwrap_or(0);
        durations.insert(b.id.clone(), duration);
        plans.insert(b.id.clone(), plan);
    }
    let starts = protocol
        .schedule(&durations)
        .map_err(|e| ControllerError::Protocol(vec![e]))?;
    let profiles: Vec<DeviceProfile> = protocol.devices.values().cloned().collect();
    let governor = Governor::new(profiles.clone(), protocol.patient.clone())
        .map_err(|e| ControllerError::Governor(e.to_string()))?
        .time_compressed(speed);
    let mut blocks = Vec::new();
    let mut timeline = Vec::new();
    let mut loops = BTreeMap::new();
    for b in protocol.enabled_blocks() {
        let (Some(plan), Some(profile), Some(&start)) = (
            plans.remove(&b.id),
            protocol.devices.get(&b.device),
            starts.get(&b.id),
        ) else {
            continue;
        };
        let duration = durations.get(&b.id).copied().unwrap_or(0);
        if let Some(plugin) = plugins.get(&b.plugin) {
            loops.insert(
                b.id.clone(),
                BlockLoop {
                    plugin: plugin.fork(),
                    start_ms: start,
                    failed: None,
                    refused: 0,
                },
            );
        }
        timeline.push(BlockTimeline {
            block: b.id.clone(),
            plugin: b.plugin.clone(),
            device: profile.id.clone(),
            start_ms: start,
            end_ms: start.saturating_add(duration),
            steps: plan.steps.len(),
        });
        blocks.push(Block {
            block_id: b.id.clone(),
            plugin_id: b.plugin.clone(),
            device_id: profile.id.clone(),
            start_offset_ms: start,
            plan,
        });
    }
    let precheck = governor.precheck(&blocks);
    let mut steps: Vec<Sched> = precheck
        .steps
        .iter()
        .filter_map(|v| {
            let a = v.approved.as_ref()?;
            Some(Sched {
                step: v.step.clone(),
                device: v.device_id.clone(),
                channel: v.channel.clone(),
                site: v.site.clone(),
                setpoint: a.setpoint,
                start_ms: v.start_ms,
                end_ms: v.start_ms.saturating_add(a.duration_ms),
                label: v.label.clone(),
            })
        })
        .collect();
    // Stable: steps starting together keep protocol order.
    steps.sort_by_key(|s| s.start_ms);
    let total_ms = timeline.iter().map(|b| b.end_ms).max().unwrap_or(0);
    timeline.sort_by_key(|b| b.start_ms);
    Ok(Station {
        protocol: protocol.name.clone(),
        on_plugin_fault: protocol.on_plugin_fault,
        loops,
        state: SessionState::Loaded,
        governor,
        precheck,
        supervisor: None,
        steps,
        next: 0,
        ends: BTreeSet::new(),
        total_ms,
        clock: SessionClock::new(speed),
        profiles,
        blocks: timeline,
        stopped_at: HashMap::new(),
        leases: HashMap::new(),
        set_lease: HashMap::new(),
        ignoring: BTreeSet::new(),
        next_renew: None,
        next_status: None,
        counters: StationCounters::default(),
        ended: None,
        report: serde_json::Value::Null,
    })
}
