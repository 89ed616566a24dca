//! The wire contract: the JSON payload of every topic (see [`super::topics`]), and decoding of
//! inbound messages with errors that name the topic and the field.
//!
//! Conventions, Sparkplug-like but in our own JSON namespace:
//! - every message carries `seq` (per publisher, increasing by one per message, so gaps and
//!   reordering are visible) and `ts_ms` (the publisher's wall clock, Unix milliseconds; clocks
//!   differ between machines, so nothing safety-related is computed from another machine's
//!   `ts_ms`: leases are relative durations);
//! - units are in the field names;
//! - payloads are strict: unknown fields are refused, so a typo in a device's firmware shows
//!   up as a rejected message rather than a silently ignored reading.

use std::sync::LazyLock;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use modalis_sdk::{Measurement, Setpoint};

use super::topics::{Topic, TopicError, TopicKind, Topics, check_id};

/// Milliseconds since the Unix epoch on this machine's wall clock (0 if the clock is before
/// 1970, which only a broken clock is).
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The `seq` and `ts_ms` of one outgoing message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Sequence number.
    pub seq: u64,
    /// Wall clock, Unix ms.
    pub ts_ms: u64,
}

/// Hands out `seq` numbers for one publisher (1, 2, 3, ...) with the time.
#[derive(Debug, Default)]
pub struct Sequencer {
    next: std::sync::atomic::AtomicU64,
}

impl Sequencer {
    /// A sequencer whose first number is 1.
    pub fn new() -> Sequencer {
        Sequencer::default()
    }

    /// The next stamp.
    pub fn next(&self) -> Stamp {
        let seq = self
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .saturating_add(1);
        Stamp {
            seq,
            ts_ms: wall_clock_ms(),
        }
    }
}

/// Whether the controller is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// Connected and running.
    Online,
    /// Shut down, or its connection died (the broker publishes this as the last will).
    Offline,
}

/// `state`, retained: the controller's presence. The broker publishes the `offline` copy as
/// the controller's last will when its connection dies without a clean disconnect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ControllerState {
    /// Sequence number of this publisher's messages.
    pub seq: u64,
    /// Publisher's wall clock when sent, Unix milliseconds.
    pub ts_ms: u64,
    /// The controller id (the topic's `<controller>` level).
    pub controller: String,
    /// Online or offline.
    pub state: Presence,
    /// Counts the controller's MQTT sessions (Sparkplug's bdSeq): the `offline` will carries
    /// the counter of the `online` state it ends, so a dashboard can tell a stale `offline`
    /// from one that ends the current session.
    pub session_counter: u64,
    /// The controller's software version.
    pub version: String,
    /// Whether the plugins it runs had to be signed by a trusted key.
    pub plugin_trust: PluginTrustState,
}

/// Which plugins a controller loads, as its retained state tells every dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PluginTrustState {
    /// Only plugins signed by a key in the clinic's trust store.
    Enforced,
    /// Signatures are checked, but the development key (whose private half is public) is
    /// trusted: anyone can sign a plugin. Development and demos only.
    DevelopmentKeyTrusted,
    /// Plugins with a missing, broken or unknown signature are loaded too
    /// (`--allow-unsigned-plugins`). Development only.
    NotEnforced,
}

/// Where a therapy session is in its life cycle: the session state machine's own enum, so the
/// wire and the controller cannot disagree about names (kebab-case: `e-stopped`).
pub use crate::session::machine::SessionState;

/// A step of an approved plan: block id and step index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepRef {
    /// Block id in the protocol.
    pub block: String,
    /// Index into the block's planned steps (0-based).
    pub step_index: u64,
}

impl From<&modalis_governor::StepRef> for StepRef {
    fn from(s: &modalis_governor::StepRef) -> StepRef {
        StepRef {
            block: s.block_id.clone(),
            step_index: u64::try_from(s.step_index).unwrap_or(u64::MAX),
        }
    }
}

/// The next step due in a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NextStep {
    /// Which step.
    pub step: StepRef,
    /// Device that will deliver it.
    pub device: String,
    /// Device channel.
    pub channel: String,
    /// What the operator sees for it.
    pub label: String,
    /// Time until it is due, ms.
    pub due_in_ms: u64,
}

/// `session/<session>/status`, retained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionStatus {
    /// Sequence number of this publisher's messages.
    pub seq: u64,
    /// Publisher's wall clock when sent, Unix milliseconds.
    pub ts_ms: u64,
    /// Session id (the topic's `<session>` level).
    pub session: String,
    /// Life-cycle state.
    pub state: SessionState,
    /// The block running now, if one is.
    pub block: Option<String>,
    /// Share of the session's planned time elapsed, 0-100.
    pub progress_percent: f64,
    /// Session time elapsed since it started running, ms.
    pub elapsed_ms: u64,
    /// Planned session duration, ms.
    pub total_ms: u64,
    /// The next step due, if any.
    pub next_step: Option<NextStep>,
}

/// A time-limited grant to deliver energy. The duration is relative because device clocks
/// differ from the controller's: the device counts it from when it applies the command, and
/// stops by itself when it lapses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseGrant {
    /// Lease id, unique per controller; acks and telemetry name it.
    pub id: u64,
    /// How long the device may deliver from when it applies the command, ms (at least 1).
    pub valid_for_ms: u64,
}

impl LeaseGrant {
    /// The wire form of a governor lease at `now_ms` on the governor's monotonic clock.
    pub fn from_governor(lease: &modalis_governor::Lease, now_ms: u64) -> LeaseGrant {
        LeaseGrant {
            id: lease.id,
            valid_for_ms: lease.expires_at_ms.saturating_sub(now_ms),
        }
    }
}

/// What a device command asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CommandAction {
    /// Apply a setpoint under a lease (an `off` setpoint stops the channel).
    Set {
        /// The setpoint, with units in its field names.
        setpoint: Setpoint,
        /// The lease the output runs under.
        lease: LeaseGrant,
    },
    /// Extend the output already running on the channel under a new lease. A device that is
    /// not delivering (its lease lapsed, or it was stopped) answers `expired` and stays off: a
    /// renewal never starts an output.
    RenewLease {
        /// The new lease.
        lease: LeaseGrant,
    },
    /// Stop the channel now (no ramp-down).
    Stop {
        /// Why, for the device's log.
        reason: String,
    },
}

/// `device/<device>/command`, QoS 1, from the controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceCommand {
    /// Sequence number of this publisher's messages.
    pub seq: u64,
    /// Publisher's wall clock when sent, Unix milliseconds.
    pub ts_ms: u64,
    /// Unique id of this command; the ack names it.
    pub command_id: String,
    /// Device id (the topic's `<device>` level).
    pub device: String,
    /// Device channel.
    pub channel: String,
    /// Session the command belongs to, if any (an e-stop's stops belong to none).
    pub session: Option<String>,
    /// Approved plan step the command belongs to, if any.
    pub step: Option<StepRef>,
    /// What to do.
    pub action: CommandAction,
}

/// What a device did with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AckOutcome {
    /// Applied.
    Accepted,
    /// Not applied (unknown channel, wrong setpoint kind, out of range, ...).
    Rejected,
    /// A lease renewal for an output that had already stopped; nothing was started.
    Expired,
}

/// `device/<device>/ack`, from the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandAck {
    /// Sequence number of this publisher's messages.
    pub seq: u64,
    /// Device's wall clock when sent, Unix milliseconds.
    pub ts_ms: u64,
    /// The command answered.
    pub command_id: String,
    /// Device id (the topic's `<device>` level).
    pub device: String,
    /// Device channel.
    pub channel: String,
    /// What the device did.
    pub outcome: AckOutcome,
    /// Why, when rejected or expired.
    pub reason: Option<String>,
    /// The lease the channel runs under after the command, if it is delivering.
    pub lease_id: Option<u64>,
}

/// `device/<device>/telemetry`, from the device: one reading of one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceTelemetry {
    /// Sequence number of this publisher's messages.
    pub seq: u64,
    /// Device's wall clock when measured, Unix milliseconds.
    pub ts_ms: u64,
    /// Device id (the topic's `<device>` level).
    pub device: String,
    /// Device channel.
    pub channel: String,
    /// The reading, with its unit in its kind.
    pub measurement: Measurement,
    /// Whether the channel is delivering energy as the device sees it.
    pub delivering: bool,
    /// The lease the channel is delivering under, if any.
    pub lease_id: Option<u64>,
}

/// Alarm priority per IEC 60601-1-8.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AlarmPriority {
    /// Operator awareness.
    Low,
    /// Prompt response needed.
    Medium,
    /// Immediate response needed.
    High,
}

impl From<modalis_governor::AlarmPriority> for AlarmPriority {
    fn from(p: modalis_governor::AlarmPriority) -> AlarmPriority {
        match p {
            modalis_governor::AlarmPriority::Low => AlarmPriority::Low,
            modalis_governor::AlarmPriority::Medium => AlarmPriority::Medium,
            modalis_governor::AlarmPriority::High => AlarmPriority::High,
        }
    }
}

/// `alarm`, from the controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlarmMessage {
    /// Sequence number of this publisher's messages.
    pub seq: u64,
    /// Publisher's wall clock when sent, Unix milliseconds.
    pub ts_ms: u64,
    /// IEC 60601-1-8 priority.
    pub priority: AlarmPriority,
    /// The governor rule that raised it.
    pub rule: String,
    /// What happened, for the operator.
    pub reason: String,
    /// Session, if the alarm concerns one.
    pub session: Option<String>,
    /// Device, if the alarm concerns one.
    pub device: Option<String>,
    /// Channel, if the alarm concerns one.
    pub channel: Option<String>,
}

/// `session/<session>/dose-report`, retained, from the controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DoseReportMessage {
    /// Sequence number of this publisher's messages.
    pub seq: u64,
    /// Publisher's wall clock when sent, Unix milliseconds.
    pub ts_ms: u64,
    /// Session id (the topic's `<session>` level).
    pub session: String,
    /// The governor's dose report as JSON.
    pub report: serde_json::Value,
}

/// `estop`, from any authorised panel: stop every source now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EstopInput {
    /// Sequence number of this panel's messages.
    pub seq: u64,
    /// Panel's wall clock when pressed, Unix milliseconds.
    pub ts_ms: u64,
    /// Which panel.
    pub panel: String,
    /// Why, if the operator said.
    pub reason: String,
}

/// Largest overheating gain or power drift factor a fault may carry. The simulator's physics
/// stay finite and its readings plausible up to here; anything larger is a typo, not a test.
pub const MAX_FAULT_FACTOR: f64 = 100.0;

/// Fastest electrode lifting a fault may carry, ohm per second (1 Mohm/s reads as an open
/// circuit within a second; faster only risks non-finite readings over a long run).
pub const MAX_LIFTING_OHM_PER_S: f64 = 1.0e6;

/// The faults a simulated device shows (the wire form of the simulator's `Faults`). A field
/// left out is no fault of that kind, so `{}` is a healthy device; fields that are no fault
/// are left out when encoding, to keep hand-written examples short.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// Multiplies how much the skin heats per delivered power, unknown to the device's own
    /// regulation (e.g. 2.0: a heat channel overshoots its target). Greater than 0, at most
    /// 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overheating_gain: Option<f64>,
    /// Multiplies the actual output power; the power sensor measures the drifted power (e.g.
    /// 1.5 delivers and reports 150 % of the setpoint). Greater than 0, at most 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_drift: Option<f64>,
    /// Electrodes lifting off: the impedance rises by this many ohm per second from when the
    /// fault is set. 0 to 1000000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub electrode_lifting_ohm_per_s: Option<f64>,
    /// Publishes no telemetry at all (acks still go out).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub silent: bool,
    /// Acks stop commands (and `off` setpoints) as accepted but keeps delivering.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_stop: bool,
    /// Keeps delivering after a lease lapses.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_leases: bool,
}

impl FaultSpec {
    /// The first field out of range, as (field, what was expected and what came). Fields are
    /// named as in the JSON.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let factor = |field: &'static str, v: Option<f64>| match v {
            Some(v) if !(v.is_finite() && v > 0.0 && v <= MAX_FAULT_FACTOR) => Err((
                field,
                format!("expected a number > 0 and <= {MAX_FAULT_FACTOR}, got {v}"),
            )),
            _ => Ok(()),
        };
        factor("overheating_gain", self.overheating_gain)?;
        factor("power_drift", self.power_drift)?;
        match self.electrode_lifting_ohm_per_s {
            Some(v) if !(v.is_finite() && (0.0..=MAX_LIFTING_OHM_PER_S).contains(&v)) => Err((
                "electrode_lifting_ohm_per_s",
                format!("expected a number >= 0 and <= {MAX_LIFTING_OHM_PER_S}, got {v}"),
            )),
            _ => Ok(()),
        }
    }
}

/// `sim/<device>/fault`, from an operator or a test: replaces the simulated device's faults.
/// Only the simulator listens; a real device never subscribes to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimFaultMessage {
    /// Sequence number of this publisher's messages.
    pub seq: u64,
    /// Publisher's wall clock when sent, Unix milliseconds.
    pub ts_ms: u64,
    /// Simulated device id (the topic's `<device>` level).
    pub device: String,
    /// The faults from now on; they replace the previous ones entirely.
    pub faults: FaultSpec,
}

/// A decoded message and the topic it came on.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// `state`.
    State(ControllerState),
    /// `session/<session>/status`.
    SessionStatus(SessionStatus),
    /// `session/<session>/dose-report`.
    DoseReport(DoseReportMessage),
    /// `device/<device>/command`.
    Command(DeviceCommand),
    /// `device/<device>/ack`.
    Ack(CommandAck),
    /// `device/<device>/telemetry`.
    Telemetry(DeviceTelemetry),
    /// `alarm`.
    Alarm(AlarmMessage),
    /// `estop`.
    Estop(EstopInput),
    /// `sim/<device>/fault`.
    SimFault(SimFaultMessage),
}

/// Why an inbound message was rejected. Every variant names the topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not a topic of this controller.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// The payload does not match the topic's schema, or contradicts the topic.
    #[error(
        "topic {topic:?}: invalid payload at {}: {message}",
        pointer_display(field)
    )]
    Payload {
        /// The topic as received.
        topic: String,
        /// Where in the payload, as a JSON pointer (RFC 6901) such as `/measurement/value`;
        /// empty for the whole document (shown as `(document)`).
        field: String,
        /// What is wrong and what was expected.
        message: String,
    },
}

fn pointer_display(pointer: &str) -> &str {
    if pointer.is_empty() {
        "(document)"
    } else {
        pointer
    }
}

/// Longest error message kept from a validator. Its messages quote the offending value, and
/// a rejected message's error goes to the log and the audit trail: a 1 MiB payload must not.
const MAX_MESSAGE_CHARS: usize = 300;

fn clip(mut message: String) -> String {
    if let Some((cut, _)) = message.char_indices().nth(MAX_MESSAGE_CHARS) {
        message.truncate(cut);
        message.push_str("...");
    }
    message
}

/// Appends one reference token to a JSON pointer, escaped as RFC 6901 says.
fn push_token(pointer: &mut String, token: &str) {
    pointer.push('/');
    pointer.push_str(&token.replace('~', "~0").replace('/', "~1"));
}

/// Encodes a payload as JSON.
pub fn encode<T: Serialize>(payload: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(payload)
}

/// One compiled validator per kind of topic, built on first use from the same schemas that
/// are published in `schemas/mqtt/` ([`schema`]), never per message. A schema that does not
/// compile is a bug in this crate; it is kept as an error so that every message of that kind
/// is rejected (fail closed) rather than panicking in the bus.
static VALIDATORS: LazyLock<Vec<(TopicKind, Result<jsonschema::Validator, String>)>> =
    LazyLock::new(|| {
        TopicKind::ALL
            .iter()
            .map(|&kind| {
                let validator = jsonschema::validator_for(&schema(kind).to_value())
                    .map_err(|e| format!("the {} schema does not compile: {e}", kind.pattern()));
                (kind, validator)
            })
            .collect()
    });

/// Compiles every validator now (a few milliseconds, once per process) instead of on the first
/// message, which may be an e-stop; fails naming the first schema that does not compile.
pub fn compile_validators() -> Result<(), String> {
    for kind in TopicKind::ALL {
        validator(kind)?;
    }
    Ok(())
}

fn validator(kind: TopicKind) -> Result<&'static jsonschema::Validator, String> {
    match VALIDATORS.iter().find(|(k, _)| *k == kind) {
        Some((_, Ok(v))) => Ok(v),
        Some((_, Err(e))) => Err(e.clone()),
        None => Err(format!("no validator for {}", kind.pattern())),
    }
}

/// Checks `value` against the schema of `kind`; the error names the topic and the JSON
/// pointer of the first problem.
fn check_schema(
    topic: &str,
    kind: TopicKind,
    value: &serde_json::Value,
) -> Result<(), DecodeError> {
    let bad = |field: String, message: String| DecodeError::Payload {
        topic: topic.to_string(),
        field,
        message: clip(message),
    };
    let v = validator(kind).map_err(|e| bad(String::new(), e))?;
    // The fast path: `is_valid` stops at the first failure without building errors.
    if v.is_valid(value) {
        return Ok(());
    }
    match v.validate(value) {
        Ok(()) => Ok(()),
        Err(e) => {
            let (field, message) = locate(&e);
            Err(bad(field, message))
        }
    }
}

/// The JSON pointer and message that best name what is wrong. The validator reports a missing
/// or unexpected property at the object that holds it, and a failed `oneOf` at the value as a
/// whole; a device author wants the property, and the reason inside the variant the payload
/// meant (the branch with the fewest errors, when one has fewer than all the others).
fn locate(e: &jsonschema::ValidationError<'_>) -> (String, String) {
    use jsonschema::error::ValidationErrorKind as K;
    let mut pointer = e.instance_path().as_str().to_string();
    match e.kind() {
        K::AdditionalProperties { unexpected } => {
            if let Some(first) = unexpected.first() {
                push_token(&mut pointer, first);
            }
            (pointer, e.to_string())
        }
        K::Required { property } => {
            if let Some(name) = property.as_str() {
                push_token(&mut pointer, name);
            }
            (pointer, e.to_string())
        }
        K::OneOfNotValid { context } => {
            let fewest = context.iter().map(Vec::len).min();
            let mut best = context.iter().filter(|b| Some(b.len()) == fewest);
            match (best.next().and_then(|b| b.first()), best.next()) {
                (Some(inner), None) => locate(inner),
                _ => (pointer, e.to_string()),
            }
        }
        _ => (pointer, e.to_string()),
    }
}

/// Parses, checks against the schema of `kind` and only then deserialises: the published
/// schema is the contract, and serde's stricter reading (e.g. integers that overflow `u64`)
/// still applies on top of it.
fn from_json<T: DeserializeOwned>(
    topic: &str,
    kind: TopicKind,
    payload: &[u8],
) -> Result<T, DecodeError> {
    // `from_slice` refuses trailing bytes after the value (a corrupted or concatenated
    // message) as well as malformed JSON: either way the whole document is at fault.
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| DecodeError::Payload {
            topic: topic.to_string(),
            field: String::new(),
            message: e.to_string(),
        })?;
    check_schema(topic, kind, &value)?;
    // Plain serde first: tracking the path of every field costs a good share of a reading's
    // decode (BENCHMARKS.md), and the path is only wanted for the error. A failure is read
    // again with the path tracked; both see the same value, so they fail alike.
    if let Ok(m) = T::deserialize(&value) {
        return Ok(m);
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let mut pointer = String::new();
        for segment in e.path().iter() {
            use serde_path_to_error::Segment as S;
            match segment {
                S::Seq { index } => push_token(&mut pointer, &index.to_string()),
                S::Map { key } => push_token(&mut pointer, key),
                S::Enum { variant } => push_token(&mut pointer, variant),
                S::Unknown => {}
            }
        }
        DecodeError::Payload {
            topic: topic.to_string(),
            field: pointer,
            message: clip(e.into_inner().to_string()),
        }
    })
}

/// Decodes a message received on `topic`: the topic must be one of `topics`, the payload must
/// match that topic's schema, and the ids in the payload must agree with the topic's.
pub fn decode(topics: &Topics, topic: &str, payload: &[u8]) -> Result<Inbound, DecodeError> {
    let parsed = topics.parse(topic)?;
    let kind = parsed.kind();
    let bad = |field: &str, message: String| DecodeError::Payload {
        topic: topic.to_string(),
        field: field.to_string(),
        message,
    };
    let same = |field: &str, got: &str, want: &str| {
        if got == want {
            Ok(())
        } else {
            Err(bad(
                field,
                format!("the payload names {got:?} but the topic names {want:?}"),
            ))
        }
    };
    let nonempty = |field: &str, value: &str| {
        if value.trim().is_empty() {
            Err(bad(field, "expected a non-empty string".to_string()))
        } else {
            Ok(())
        }
    };
    let id = |field: &str, what: &'static str, value: &str| {
        check_id(what, value).map_err(|e| bad(field, e.to_string()))
    };
    Ok(match parsed {
        Topic::State => {
            let m: ControllerState = from_json(topic, kind, payload)?;
            same("/controller", &m.controller, topics.controller())?;
            Inbound::State(m)
        }
        Topic::SessionStatus { session } => {
            let m: SessionStatus = from_json(topic, kind, payload)?;
            same("/session", &m.session, &session)?;
            if !(m.progress_percent.is_finite() && (0.0..=100.0).contains(&m.progress_percent)) {
                return Err(bad(
                    "/progress_percent",
                    format!("expected 0-100, got {}", m.progress_percent),
                ));
            }
            Inbound::SessionStatus(m)
        }
        Topic::DoseReport { session } => {
            let m: DoseReportMessage = from_json(topic, kind, payload)?;
            same("/session", &m.session, &session)?;
            Inbound::DoseReport(m)
        }
        Topic::DeviceCommand { device } => {
            let m: DeviceCommand = from_json(topic, kind, payload)?;
            same("/device", &m.device, &device)?;
            nonempty("/command_id", &m.command_id)?;
            nonempty("/channel", &m.channel)?;
            if let Some(s) = &m.session {
                id("/session", "session", s)?;
            }
            match &m.action {
                CommandAction::Set { setpoint, lease } => {
                    if lease.valid_for_ms == 0 {
                        return Err(bad(
                            "/action/lease/valid_for_ms",
                            "expected at least 1 ms".to_string(),
                        ));
                    }
                    for (name, v) in setpoint.numbers() {
                        if !(v.is_finite() && v >= 0.0) {
                            return Err(bad(
                                &format!("/action/setpoint/{name}"),
                                format!("expected a finite number >= 0, got {v}"),
                            ));
                        }
                    }
                }
                CommandAction::RenewLease { lease } => {
                    if lease.valid_for_ms == 0 {
                        return Err(bad(
                            "/action/lease/valid_for_ms",
                            "expected at least 1 ms".to_string(),
                        ));
                    }
                }
                CommandAction::Stop { .. } => {}
            }
            Inbound::Command(m)
        }
        Topic::DeviceAck { device } => {
            let m: CommandAck = from_json(topic, kind, payload)?;
            same("/device", &m.device, &device)?;
            nonempty("/command_id", &m.command_id)?;
            nonempty("/channel", &m.channel)?;
            Inbound::Ack(m)
        }
        Topic::DeviceTelemetry { device } => {
            let m: DeviceTelemetry = from_json(topic, kind, payload)?;
            same("/device", &m.device, &device)?;
            nonempty("/channel", &m.channel)?;
            let v = match m.measurement {
                Measurement::SkinTempC(v)
                | Measurement::OpticalPowerMw(v)
                | Measurement::ImpedanceOhm(v) => v,
            };
            if !v.is_finite() {
                return Err(bad(
                    "/measurement/value",
                    format!("expected a finite number, got {v}"),
                ));
            }
            Inbound::Telemetry(m)
        }
        Topic::Alarm => Inbound::Alarm(from_json(topic, kind, payload)?),
        Topic::Estop => {
            let m: EstopInput = from_json(topic, kind, payload)?;
            nonempty("/panel", &m.panel)?;
            Inbound::Estop(m)
        }
        Topic::SimFault { device } => {
            let m: SimFaultMessage = from_json(topic, kind, payload)?;
            same("/device", &m.device, &device)?;
            m.faults
                .check()
                .map_err(|(field, message)| bad(&format!("/faults/{field}"), message))?;
            Inbound::SimFault(m)
        }
    })
}

/// The JSON Schema of the payload of `kind`: what inbound messages are validated against and
/// what `schemas/mqtt/` publishes.
pub fn schema(kind: TopicKind) -> schemars::Schema {
    match kind {
        TopicKind::State => schemars::schema_for!(ControllerState),
        TopicKind::SessionStatus => schemars::schema_for!(SessionStatus),
        TopicKind::DoseReport => schemars::schema_for!(DoseReportMessage),
        TopicKind::DeviceCommand => schemars::schema_for!(DeviceCommand),
        TopicKind::DeviceAck => schemars::schema_for!(CommandAck),
        TopicKind::DeviceTelemetry => schemars::schema_for!(DeviceTelemetry),
        TopicKind::Alarm => schemars::schema_for!(AlarmMessage),
        TopicKind::Estop => schemars::schema_for!(EstopInput),
        TopicKind::SimFault => schemars::schema_for!(SimFaultMessage),
    }
}

/// The JSON Schema of every payload, by topic pattern, for the generated `schemas/` and
/// dashboard authors.
pub fn schemas() -> Vec<(&'static str, schemars::Schema)> {
    TopicKind::ALL
        .iter()
        .map(|&kind| (kind.pattern(), schema(kind)))
        .collect()
}

/// The file under `schemas/` that holds the schema of `kind`, named after its pattern without
/// the id levels (`device/{device}/telemetry` -> `mqtt/device-telemetry.schema.json`).
pub fn schema_file(kind: TopicKind) -> String {
    let name: Vec<&str> = kind
        .pattern()
        .split('/')
        .filter(|level| !level.starts_with('{'))
        .collect();
    format!("mqtt/{}.schema.json", name.join("-"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use modalis_sdk::HeatSetpoint;

    fn topics() -> Topics {
        Topics::new("c1").expect("valid id")
    }

    #[test]
    fn command_round_trips() {
        let t = topics();
        let cmd = DeviceCommand {
            seq: 7,
            ts_ms: 1,
            command_id: "c1-7".into(),
            device: "pads".into(),
            channel: "pad-1".into(),
            session: Some("s1".into()),
            step: Some(StepRef {
                block: "heat".into(),
                step_index: 0,
            }),
            action: CommandAction::Set {
                setpoint: Setpoint::Heat(HeatSetpoint {
                    target_temp_c: 40.0,
                    power_limit_w: 10.0,
                }),
                lease: LeaseGrant {
                    id: 3,
                    valid_for_ms: 2000,
                },
            },
        };
        let bytes = encode(&cmd).expect("encodes");
        let topic = t.device_command("pads").expect("valid");
        assert_eq!(
            decode(&t, &topic, &bytes).expect("decodes"),
            Inbound::Command(cmd)
        );
    }

    #[test]
    fn errors_name_topic_and_field() {
        let t = topics();
        let topic = t.device_telemetry("pads").expect("valid");
        let check = |payload: &str, field: &str| {
            let e = decode(&t, &topic, payload.as_bytes()).expect_err(payload);
            let DecodeError::Payload { field: f, .. } = &e else {
                panic!("{e}")
            };
            assert_eq!(f, field, "{e}");
            assert!(e.to_string().contains(&topic), "{e}");
        };
        check("not json", "");
        check(
            r#"{"seq":1,"ts_ms":1,"device":"pads","channel":"p","measurement":{"kind":"skin_temp_c","value":"hot"},"delivering":true,"lease_id":null}"#,
            "/measurement/value",
        );
        check(
            r#"{"seq":1,"ts_ms":1,"device":"other","channel":"p","measurement":{"kind":"skin_temp_c","value":33.0},"delivering":true,"lease_id":null}"#,
            "/device",
        );
        check(
            r#"{"seq":1,"ts_ms":1,"device":"pads","channel":"p","measurement":{"kind":"skin_temp_c","value":33.0},"delivering":true,"lease_id":null,"extra":1}"#,
            "/extra",
        );
        check(
            r#"{"seq":1,"ts_ms":1,"device":"pads","channel":"p","measurement":{"kind":"skin_temp_c","value":33.0},"delivering":true,"lease_id":null} {}"#,
            "",
        );
    }

    #[test]
    fn every_validator_compiles_once() {
        for kind in TopicKind::ALL {
            let first = validator(kind).expect("compiles");
            let again = validator(kind).expect("compiles");
            // The same compiled validator each time, not one per message.
            assert!(std::ptr::eq(first, again), "{kind:?}");
        }
    }

    #[test]
    fn the_schema_check_names_the_json_pointer() {
        let t = topics();
        let topic = t.device_telemetry("pads").expect("valid");
        let reject = |payload: &str| {
            let e = decode(&t, &topic, payload.as_bytes()).expect_err(payload);
            let DecodeError::Payload { field, message, .. } = e.clone() else {
                panic!("{e}")
            };
            (field, message, e.to_string())
        };
        // A missing property is named where it should be, by the schema's `required`.
        let (field, message, _) = reject(
            r#"{"seq":1,"ts_ms":1,"device":"pads","channel":"p","measurement":{"kind":"skin_temp_c","value":33.0}}"#,
        );
        assert_eq!(field, "/delivering");
        assert!(message.contains("required"), "{message}");
        // An unknown measurement kind matches no variant: the pointer stops at the
        // measurement, which is where the choice is made.
        let (field, message, _) = reject(
            r#"{"seq":1,"ts_ms":1,"device":"pads","channel":"p","measurement":{"kind":"humidity","value":3.0},"delivering":true}"#,
        );
        assert_eq!(field, "/measurement");
        assert!(message.contains("oneOf"), "{message}");
        // A huge offending value is not copied whole into the error (it goes to the audit).
        let huge = "x".repeat(100_000);
        let (field, _, text) = reject(&format!(
            r#"{{"seq":"{huge}","ts_ms":1,"device":"pads","channel":"p","measurement":{{"kind":"skin_temp_c","value":33.0}},"delivering":true}}"#
        ));
        assert_eq!(field, "/seq");
        assert!(text.len() < 1000, "{} bytes", text.len());
        // Past the schema, serde still reads strictly: 2^64 is an integer to JSON Schema but
        // does not fit the u64 the field is.
        let (field, _, _) = reject(
            r#"{"seq":18446744073709551616,"ts_ms":1,"device":"pads","channel":"p","measurement":{"kind":"skin_temp_c","value":33.0},"delivering":true}"#,
        );
        assert_eq!(field, "/seq");
    }

    #[test]
    fn fault_messages_round_trip_and_bad_ones_name_the_field() {
        let t = topics();
        let topic = t.sim_fault("pads").expect("valid");
        let msg = SimFaultMessage {
            seq: 1,
            ts_ms: 2,
            device: "pads".into(),
            faults: FaultSpec {
                power_drift: Some(1.5),
                silent: true,
                ..FaultSpec::default()
            },
        };
        let bytes = encode(&msg).expect("encodes");
        assert_eq!(
            decode(&t, &topic, &bytes).expect("decodes"),
            Inbound::SimFault(msg)
        );
        // Everything is optional inside `faults`: `{}` is a healthy device.
        let healthy = decode(
            &t,
            &topic,
            br#"{"seq":1,"ts_ms":1,"device":"pads","faults":{}}"#,
        )
        .expect("decodes");
        assert!(
            matches!(&healthy, Inbound::SimFault(m) if m.faults == FaultSpec::default()),
            "{healthy:?}"
        );
        let check = |faults: &str, field: &str| {
            let payload = format!(r#"{{"seq":1,"ts_ms":1,"device":"pads","faults":{faults}}}"#);
            let e = decode(&t, &topic, payload.as_bytes()).expect_err(&payload);
            let DecodeError::Payload { field: f, .. } = &e else {
                panic!("{e}")
            };
            assert_eq!(f, field, "{e}");
            assert!(e.to_string().contains(&topic), "{e}");
        };
        check(r#"{"overheating_gain":0}"#, "/faults/overheating_gain");
        check(r#"{"overheating_gain":-2}"#, "/faults/overheating_gain");
        check(r#"{"power_drift":0.0}"#, "/faults/power_drift");
        check(r#"{"power_drift":1000}"#, "/faults/power_drift");
        check(
            r#"{"electrode_lifting_ohm_per_s":-1}"#,
            "/faults/electrode_lifting_ohm_per_s",
        );
        check(r#"{"silent":"yes"}"#, "/faults/silent");
        check(r#"{"slient":true}"#, "/faults/slient");
        let e = decode(
            &t,
            &topic,
            br#"{"seq":1,"ts_ms":1,"device":"other","faults":{}}"#,
        )
        .expect_err("another device's name");
        assert!(
            matches!(&e, DecodeError::Payload { field, .. } if field == "/device"),
            "{e}"
        );
        // Lifting may be 0 (an explicit "no lifting").
        let ok = FaultSpec {
            electrode_lifting_ohm_per_s: Some(0.0),
            ..FaultSpec::default()
        };
        assert_eq!(ok.check(), Ok(()));
    }

    #[test]
    fn every_payload_has_a_schema_with_descriptions() {
        for (topic, schema) in schemas() {
            let text = serde_json::to_string(&schema).expect("serialises");
            assert!(text.contains("\"description\""), "{topic}");
            assert!(text.contains("\"seq\""), "{topic}");
            assert!(text.contains("\"ts_ms\""), "{topic}");
        }
    }
}
