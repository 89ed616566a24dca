//! What one audit record says, and how its bytes are laid out and chained.
//!
//! # Stored layout
//!
//! Every record is one value in the sled tree [`crate::layout::RECORDS_TREE`], under the
//! 8-byte big-endian sequence number as key, so sled's key order is the log order. The value
//! is
//!
//! ```text
//! hash (32 bytes) || body (UTF-8 JSON, the record's canonical bytes)
//! ```
//!
//! and `hash = SHA-256(CHAIN_DOMAIN || prev_hash || body)`, where `prev_hash` is the hash of
//! record `seq - 1` (32 zero bytes for record 0). The body carries `seq` and `prev` itself, so
//! a record moved to another key or spliced after another record no longer matches.
//!
//! The canonical bytes are the stored body bytes *exactly as written*. The writer produces
//! them once with serde_json from a struct with a fixed field order; a verifier never
//! re-encodes a record, it hashes the bytes it finds. So the chain does not depend on
//! serde_json's map ordering or number formatting staying the same across versions, and an
//! independent tool needs only SHA-256 and the layout above to check a log.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// Domain tag hashed before every record, so a record hash can never be confused with any
/// other SHA-256 the controller computes (wasm hashes, config hashes).
pub const CHAIN_DOMAIN: &[u8] = b"modalis-audit-v1\0";

/// Version of the record body format, stored in every body as `v`.
pub const FORMAT_VERSION: u32 = 1;

/// Largest stored value accepted (hash plus body). Far above any dose report or command;
/// it only keeps a runaway payload from bloating the log.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// A SHA-256 chain hash. Shown and serialized as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChainHash(pub [u8; 32]);

impl ChainHash {
    /// The `prev` of record 0.
    pub const GENESIS: ChainHash = ChainHash([0; 32]);

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|e| format!("bad hash {s:?}: {e}"))?;
        Ok(ChainHash(out))
    }
}

impl fmt::Display for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainHash({})", self.to_hex())
    }
}

impl Serialize for ChainHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChainHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ChainHash::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

// By hand: the derive would describe the byte array, not the hex string it serialises as.
impl JsonSchema for ChainHash {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ChainHash".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A SHA-256 chain hash as 64 lowercase hex characters.",
            "type": "string",
            "pattern": "^[0-9a-f]{64}$"
        })
    }
}

/// `SHA-256(CHAIN_DOMAIN || prev || body)`.
pub fn chain_hash(prev: &ChainHash, body: &[u8]) -> ChainHash {
    let mut h = Sha256::new();
    h.update(CHAIN_DOMAIN);
    h.update(prev.0);
    h.update(body);
    ChainHash(h.finalize().into())
}

/// Who caused the event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Actor {
    /// A person at the controller, by their operator id.
    Operator {
        /// The operator id.
        id: String,
    },
    /// A modality plugin, with the SHA-256 of the exact wasm it ran.
    Plugin {
        /// The plugin id.
        id: String,
        /// SHA-256 of the plugin's wasm, lowercase hex.
        wasm_sha256: String,
    },
    /// A device, by its id (telemetry, acks).
    Device {
        /// The device id.
        id: String,
    },
    /// The controller itself (start, stop, governor decisions, alarms).
    Controller,
}

/// Operator actions that need no reason (an override does, see [`Event::Override`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperatorAction {
    Arm,
    Start,
    Pause,
    Resume,
    Abort,
    EStop,
    Reset,
}

/// A pre-check verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

/// What the governor decided about a command or a running session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The command may go to the device as proposed.
    Admit,
    /// The command was refused; nothing reached the device.
    Reject,
    /// The governor stopped output (over limit, stale telemetry, e-stop).
    Stop,
}

/// How bad an alarm is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// The closed set of things the audit log records. Details that differ by modality or
/// plugin go in the record's JSON payload; the fields here are what an auditor filters on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// The controller started, with hashes of the configuration and device profiles it runs.
    ControllerStart {
        /// The controller's version.
        version: String,
        /// SHA-256 of its configuration, lowercase hex.
        config_sha256: String,
        /// SHA-256 of the device profiles it runs, lowercase hex.
        profiles_sha256: String,
    },
    /// The controller is stopping.
    ControllerStop {
        /// Why.
        reason: String,
    },
    /// A plugin was loaded.
    PluginLoaded {
        /// The plugin id.
        plugin_id: String,
        /// The plugin's version.
        version: String,
        /// SHA-256 of the plugin's wasm, lowercase hex.
        wasm_sha256: String,
    },
    /// A protocol file was loaded.
    ProtocolLoaded {
        /// The protocol's name or id.
        protocol_id: String,
        /// SHA-256 of the protocol file, lowercase hex.
        protocol_sha256: String,
    },
    /// One pre-check verdict on a session plan (the rule and details in the payload).
    PreCheck {
        /// The check (rule id).
        check: String,
        /// Its verdict.
        verdict: Verdict,
    },
    /// The dose report shown to the operator before arming (the report in the payload).
    DoseReport,
    /// An operator action on a session.
    OperatorAction {
        /// Which.
        action: OperatorAction,
    },
    /// An operator override of a warning or limit; the reason is mandatory.
    Override {
        /// What was overridden.
        what: String,
        /// Why (mandatory).
        reason: String,
    },
    /// A command to a device. An energy command is recorded before it is published; a stop
    /// is published first and handed to the log in the same controller loop turn. An energy
    /// command withdrawn unsent is followed by a `run.superseded` governor decision.
    Command {
        /// The command's id, as in the MQTT command and its ack.
        command_id: String,
    },
    /// A device acknowledged (or refused) a command.
    CommandAck {
        /// The acknowledged command's id.
        command_id: String,
    },
    /// A governor decision.
    GovernorDecision {
        /// The rule id that decided.
        rule: String,
        /// What it decided.
        decision: Decision,
    },
    /// An alarm was raised.
    Alarm {
        /// The alarm code.
        code: String,
        /// How bad it is.
        severity: Severity,
    },
    /// Telemetry from a device (one sample or a device's own batch, in the payload).
    Telemetry,
    /// The MQTT broker connection went up or down.
    BrokerConnection {
        /// The broker's address.
        broker: String,
        /// Whether the connection is now up.
        connected: bool,
    },
    /// A session ended (completed, aborted, failed); the reason says which.
    SessionEnded {
        /// Why it ended.
        reason: String,
    },
}

impl Event {
    /// The `kind` tag as stored (`"command"`, `"telemetry"`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::ControllerStart { .. } => "controller_start",
            Event::ControllerStop { .. } => "controller_stop",
            Event::PluginLoaded { .. } => "plugin_loaded",
            Event::ProtocolLoaded { .. } => "protocol_loaded",
            Event::PreCheck { .. } => "pre_check",
            Event::DoseReport => "dose_report",
            Event::OperatorAction { .. } => "operator_action",
            Event::Override { .. } => "override",
            Event::Command { .. } => "command",
            Event::CommandAck { .. } => "command_ack",
            Event::GovernorDecision { .. } => "governor_decision",
            Event::Alarm { .. } => "alarm",
            Event::Telemetry => "telemetry",
            Event::BrokerConnection { .. } => "broker_connection",
            Event::SessionEnded { .. } => "session_ended",
        }
    }
}

/// How the event came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It happened as intended.
    Ok,
    /// It happened, with a warning worth reading.
    Warning,
    /// It was refused (by the governor, a device, a check).
    Rejected,
    /// It was attempted and failed.
    Failed,
}

/// What a caller hands to [`crate::AuditLog`]; the log adds sequence number, times,
/// controller id and chain hashes.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub actor: Actor,
    pub event: Event,
    pub session: Option<String>,
    pub device: Option<String>,
    pub outcome: Outcome,
    pub payload: Value,
}

impl Entry {
    /// An entry with outcome `Ok`, no session or device and a `null` payload.
    pub fn new(actor: Actor, event: Event) -> Self {
        Entry {
            actor,
            event,
            session: None,
            device: None,
            outcome: Outcome::Ok,
            payload: Value::Null,
        }
    }

    /// Sets the session the event concerns.
    pub fn session(mut self, id: impl Into<String>) -> Self {
        self.session = Some(id.into());
        self
    }

    /// Sets the device the event concerns.
    pub fn device(mut self, id: impl Into<String>) -> Self {
        self.device = Some(id.into());
        self
    }

    /// Sets the outcome.
    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    /// Sets the JSON payload.
    pub fn payload(mut self, payload: Value) -> Self {
        self.payload = payload;
        self
    }
}

/// A record as read back from the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Body format version ([`FORMAT_VERSION`]).
    pub v: u32,
    /// Position in the log, dense from 0.
    pub seq: u64,
    /// Hash of record `seq - 1`.
    pub prev: ChainHash,
    /// Wall-clock time the event was appended, Unix milliseconds. Taken when `append` was
    /// called, so records of concurrent callers can be out of order by microseconds; `seq`
    /// is the order.
    pub wall_ms: u64,
    /// Monotonic time the event was appended, nanoseconds since this controller run opened
    /// the log (it restarts at each `controller_start`; use it to order and time events
    /// within a run even when the wall clock steps).
    pub mono_ns: u64,
    pub controller: String,
    pub actor: Actor,
    pub session: Option<String>,
    pub device: Option<String>,
    pub event: Event,
    pub outcome: Outcome,
    pub payload: Value,
    /// This record's chain hash. Not part of the body (it is stored in front of it).
    #[serde(skip)]
    pub hash: ChainHash,
}

/// The body as written: same fields and order as [`Record`], borrowed.
#[derive(Serialize)]
struct BodyRef<'a> {
    v: u32,
    seq: u64,
    prev: ChainHash,
    wall_ms: u64,
    mono_ns: u64,
    controller: &'a str,
    actor: &'a Actor,
    session: &'a Option<String>,
    device: &'a Option<String>,
    event: &'a Event,
    outcome: Outcome,
    payload: PayloadRef<'a>,
}

/// A body's payload as the caller gave it: a JSON value, or JSON text serialised from a typed
/// struct on the caller's thread (telemetry, tens of thousands a second: building a `Value`
/// map only to serialise it again was a large share of the controller's loop and of the
/// writer per reading, see BENCHMARKS.md). Both serialise to the same JSON document.
#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum PayloadRef<'a> {
    Value(&'a Value),
    Json(&'a serde_json::value::RawValue),
}

/// Encodes a record into its stored value and returns it with its hash.
pub(crate) fn encode(
    seq: u64,
    prev: &ChainHash,
    wall_ms: u64,
    mono_ns: u64,
    controller: &str,
    entry: &Entry,
    json: Option<&serde_json::value::RawValue>,
) -> Result<(Vec<u8>, ChainHash), serde_json::Error> {
    let body = BodyRef {
        v: FORMAT_VERSION,
        seq,
        prev: *prev,
        wall_ms,
        mono_ns,
        controller,
        actor: &entry.actor,
        session: &entry.session,
        device: &entry.device,
        event: &entry.event,
        outcome: entry.outcome,
        payload: json.map_or(PayloadRef::Value(&entry.payload), PayloadRef::Json),
    };
    let mut value = vec![0u8; 32];
    serde_json::to_writer(&mut value, &body)?;
    let hash = chain_hash(prev, &value[32..]);
    value[..32].copy_from_slice(&hash.0);
    Ok((value, hash))
}

/// Why a stored value is not a well-formed record. Chain checks (prev, hash) are separate.
pub(crate) fn decode(value: &[u8]) -> Result<Record, String> {
    let Some((stored, body)) = value.split_first_chunk::<32>() else {
        return Err(format!(
            "value is {} bytes, shorter than its 32-byte hash",
            value.len()
        ));
    };
    let mut record: Record =
        serde_json::from_slice(body).map_err(|e| format!("body does not decode: {e}"))?;
    if record.v != FORMAT_VERSION {
        return Err(format!(
            "body format version {} (this build reads {FORMAT_VERSION})",
            record.v
        ));
    }
    record.hash = ChainHash(*stored);
    Ok(record)
}

/// The record's stored hash and the hash recomputed from its bytes and `prev`.
pub(crate) fn stored_and_computed(
    value: &[u8],
    prev: &ChainHash,
) -> Option<(ChainHash, ChainHash)> {
    let (stored, body) = value.split_first_chunk::<32>()?;
    Some((ChainHash(*stored), chain_hash(prev, body)))
}

/// Sequence number to sled key.
pub(crate) fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// sled key to sequence number, if it is one.
pub(crate) fn seq_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(<[u8; 8]>::try_from(key).ok()?))
}
