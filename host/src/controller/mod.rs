//! The controller: one task that owns every session (station) and is the only path from an
//! approved plan to a device.
//!
//! [`Controller::start`] opens the audit log, loads the plugins, connects to the broker and
//! runs the controller loop on a thread of its own (with its own single-threaded tokio
//! runtime), so the step timer does not compete with the simulator or a UI. The MQTT
//! connection itself runs on the caller's runtime for the same reason. Commands due together
//! (steps across stations, lease renewals) are audited as one batch, one group commit, which a
//! second thread waits for (the loop goes on meanwhile); then all are published.
//!
//! The loop is fed by a closed set of inputs: finished audit commits, operator requests
//! through the [`ControllerHandle`], bus events (telemetry, acks, e-stops, connection changes)
//! and its own timer. Every energy command goes **governor → audit (write-ahead) → MQTT**:
//! the supervisor admits it, the audit log has it on disk, and only then is it published.
//! Stops are the exception to the middle step: a stop is published first and written after
//! (stopping is always safe, and waiting for the disk was most of a reaction's latency; a
//! batch of stops only is even committed a moment later, [`STOP_RECORD_HOLD`]); it
//! withdraws an energy command for its channel still waiting for the disk, so nothing it
//! stops can arrive after it; and when the audit log fails a stop is still sent, energy
//! commands are not.
//!
//! Shutdown is the [`CancellationToken`] passed in: every session is stopped (stop commands
//! to every energised source), the retained state goes `offline`, the audit log is closed,
//! and then the MQTT connection.

mod clock;
mod station;
mod wake;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use modalis_audit::{
    Actor, AuditLog, Decision as AuditDecision, Entry, Event, OperatorAction, Outcome, Severity,
};
use modalis_governor::{
    Action, AlarmPriority as GovPriority, Command, Interlock, StepRef as GovStepRef, rules,
};
use modalis_sdk::Setpoint;

use crate::bus::payload::{
    AckOutcome, AlarmMessage, AlarmPriority, CommandAck, CommandAction, ControllerState,
    DeviceCommand, DeviceTelemetry, DoseReportMessage, Inbound, LeaseGrant, NextStep,
    PluginTrustState, Presence, Sequencer, SessionState, SessionStatus, StepRef, wall_clock_ms,
};
use crate::bus::topics::{TopicKind, Topics, check_id};
use crate::bus::{Bus, BusConfig, BusEvent, BusHandle, Inbox, OutboundMessage, Qos};
use crate::plugin::signing::{SignatureError, TrustStore};
use crate::plugin::{Plugin, PluginRuntime, RuntimeConfig};
use crate::protocol::{PluginFaultPolicy, Protocol, ProtocolError};
use crate::session::machine::{self, SessionEvent};

pub use clock::SessionClock;
use station::Station;
pub use station::{BlockTimeline, StationCounters};

/// A plugin for the controller to load.
#[derive(Debug, Clone)]
pub struct PluginSource {
    /// A name for messages (the file or package name).
    pub label: String,
    /// The component's bytes.
    pub bytes: Cow<'static, [u8]>,
    /// Its detached signature document (`<file>.wasm.sig`), if it has one.
    pub signature: Option<Cow<'static, [u8]>>,
}

/// Which plugins the controller loads.
#[derive(Debug, Clone, Default)]
pub struct PluginTrust {
    /// Keys whose signatures are accepted.
    pub store: TrustStore,
    /// Development only: load plugins whose signature is missing, broken or by an unknown
    /// key. Logged, audited and shown in the retained controller state.
    pub allow_unsigned: bool,
}

impl PluginTrust {
    /// Trusts the development key the bundled plugins are signed with, and nothing else:
    /// for the demo, simulations and tests (the state says `development_key_trusted`).
    pub fn development() -> Result<PluginTrust, SignatureError> {
        let mut store = TrustStore::new();
        store.add(crate::plugin::signing::development_key()?);
        Ok(PluginTrust {
            store,
            allow_unsigned: false,
        })
    }

    /// What the retained controller state says about it.
    pub fn state(&self) -> PluginTrustState {
        if self.allow_unsigned {
            PluginTrustState::NotEnforced
        } else if self.store.trusts_development_key() {
            PluginTrustState::DevelopmentKeyTrusted
        } else {
            PluginTrustState::Enforced
        }
    }
}

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// The controller id: the `<controller>` topic level and the audit log's controller id.
    pub controller_id: String,
    /// The broker and credentials. The controller sets its own client id, subscriptions,
    /// birth and last will.
    pub bus: BusConfig,
    /// The audit log's directory.
    pub audit_dir: PathBuf,
    /// The plugin runtime (cache directory, sandbox limits).
    pub runtime: RuntimeConfig,
    /// The plugins sessions may use, by the id their manifest gives.
    pub plugins: Vec<PluginSource>,
    /// Whose plugin signatures are accepted. The default trusts no key: every plugin is
    /// refused.
    pub plugin_trust: PluginTrust,
    /// Audit log batching and checkpoints (and, in tests, an injected full disk).
    pub audit: modalis_audit::AuditConfig,
    /// The ids of the clinic's devices this controller expects to hear from. Messages from
    /// these while no session uses them are ignored (counted); messages from any other
    /// device are rejected, counted and audited. Devices of prepared sessions are added.
    pub devices: Vec<String>,
    /// Time compression of every session: 1 is real time (the only speed for real patients);
    /// more plays a simulation faster. See [`modalis_governor::Governor::time_compressed`].
    pub speed: u32,
    /// How often leases are renewed, wall clock (a quarter of the 2 s lease period: three
    /// renewals may be lost before a device stops).
    pub renew_every: Duration,
    /// How often the supervisor's watchdog runs while a session runs, wall clock.
    pub watchdog_every: Duration,
    /// How often the retained session status is refreshed while a session runs.
    pub status_every: Duration,
    /// How long after a stop a device may still report that it is delivering (the stop in
    /// flight, a telemetry message already sent), wall clock. Longer than that is a device
    /// ignoring its stop.
    pub stop_grace: Duration,
}

impl ControllerConfig {
    /// Defaults for a controller `controller_id` on the broker of `bus`.
    pub fn new(
        controller_id: &str,
        bus: BusConfig,
        audit_dir: PathBuf,
        runtime: RuntimeConfig,
        plugins: Vec<PluginSource>,
    ) -> ControllerConfig {
        ControllerConfig {
            controller_id: controller_id.to_string(),
            bus,
            audit_dir,
            runtime,
            plugins,
            plugin_trust: PluginTrust::default(),
            audit: modalis_audit::AuditConfig::default(),
            devices: Vec::new(),
            speed: 1,
            renew_every: Duration::from_millis(500),
            watchdog_every: Duration::from_millis(20),
            status_every: Duration::from_millis(500),
            stop_grace: Duration::from_millis(400),
        }
    }
}

/// Why the controller refused a request or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The protocol's parameters or timeline are wrong; every problem, each at its
    /// file:line:column.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Protocol(Vec<ProtocolError>),
    /// A block names a plugin the controller has not loaded.
    #[error("block {block:?}: no plugin {plugin:?} is loaded")]
    UnknownPlugin {
        /// Block.
        block: String,
        /// Plugin id.
        plugin: String,
    },
    /// A block's plugin is for another modality than its device.
    #[error(transparent)]
    Modality(Box<ModalityMismatch>),
    /// A plugin refused to plan.
    #[error("block {block:?}: plugin {plugin:?} could not plan: {message}")]
    Plan {
        /// Block.
        block: String,
        /// Plugin id.
        plugin: String,
        /// Its error.
        message: String,
    },
    /// A plugin failed in the sandbox (trap, fuel, deadline, quarantine).
    #[error("block {block:?}: plugin {plugin:?} failed: {message}")]
    Plugin {
        /// Block.
        block: String,
        /// Plugin id.
        plugin: String,
        /// What happened.
        message: String,
    },
    /// A plugin file could not be loaded at start.
    #[error("plugin {label}: {message}")]
    PluginLoad {
        /// The plugin's label.
        label: String,
        /// Why.
        message: String,
    },
    /// The governor refused the profiles or the patient context.
    #[error("governor: {0}")]
    Governor(String),
    /// The pre-check refused something: the session cannot be armed.
    #[error("{0}")]
    Arm(String),
    /// A device is already used by another live session.
    #[error("device {device:?} is in use by session {session:?}")]
    DeviceBusy {
        /// Device.
        device: String,
        /// The session using it.
        session: String,
    },
    /// No session with that id.
    #[error("no session {0:?}")]
    UnknownSession(String),
    /// A session id that cannot be a topic level, or is taken.
    #[error("session id {id:?}: {reason}")]
    SessionId {
        /// The id.
        id: String,
        /// Why.
        reason: String,
    },
    /// The state machine refused the request.
    #[error(transparent)]
    Refused(#[from] machine::Refused),
    /// The audit log failed; nothing unrecorded was sent.
    #[error("audit log: {0}")]
    Audit(#[from] modalis_audit::AuditError),
    /// The MQTT connection could not start.
    #[error("MQTT: {0}")]
    Bus(#[from] crate::bus::BusError),
    /// The controller is not running any more.
    #[error("the controller has stopped")]
    Stopped,
    /// The controller thread could not start.
    #[error("could not start the controller: {0}")]
    Start(String),
}

/// A protocol block whose plugin plans for another modality than its device delivers.
#[derive(Debug, thiserror::Error)]
#[error(
    "{file}: block {block:?}: plugin {plugin:?} plans {plugin_modality}, but device {device:?} delivers {device_modality}"
)]
pub struct ModalityMismatch {
    /// Protocol file.
    pub file: String,
    /// Block.
    pub block: String,
    /// Plugin id.
    pub plugin: String,
    /// The plugin's modality.
    pub plugin_modality: String,
    /// Device id.
    pub device: String,
    /// The device's modality.
    pub device_modality: String,
}

/// A session after loading, planning and the pre-check: what the operator reads before
/// arming.
#[derive(Debug, Clone, Serialize)]
pub struct Prepared {
    /// Session id.
    pub session: String,
    /// The protocol's name.
    pub protocol: String,
    /// Whether it can be armed (nothing refused).
    pub armable: bool,
    /// The dose report as a table, for a terminal.
    pub report_table: String,
    /// The dose report as JSON.
    pub report: serde_json::Value,
    /// The blocks on the session timeline.
    pub blocks: Vec<BlockTimeline>,
    /// Planned duration, session ms.
    pub total_ms: u64,
    /// Approved steps.
    pub steps: usize,
}

/// A session's state as the controller sees it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionSnapshot {
    /// Session id.
    pub session: String,
    /// State.
    pub state: SessionState,
    /// Session time, ms.
    pub elapsed_ms: u64,
    /// Planned duration, ms.
    pub total_ms: u64,
    /// Steps emitted so far.
    pub emitted: usize,
    /// Approved steps.
    pub steps: usize,
    /// Counters.
    pub counters: StationCounters,
    /// Start jitter percentiles of the emitted steps, microseconds: (p50, p99, max).
    pub jitter_us: Option<(u64, u64, u64)>,
    /// Why it ended, once it has.
    pub ended: Option<String>,
    /// Sources energised now (device, channel).
    pub energised: Vec<(String, String)>,
}

/// Controller-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ControllerStats {
    /// Inbound messages that failed the wire contract (never acted on).
    pub rejected_inbound: u64,
    /// Valid messages from devices the controller does not know (never acted on).
    pub unknown_device: u64,
    /// Valid messages from known devices no live session uses (ignored: an idle device
    /// still reports).
    pub idle_device: u64,
    /// Acks for command ids the controller does not know.
    pub unknown_acks: u64,
    /// Publishes that failed (connection down, queue full).
    pub publish_failures: u64,
    /// Audit appends that failed.
    pub audit_failures: u64,
    /// Inbound messages the bus's bounded inbox dropped (a flood), as of this snapshot.
    pub dropped_inbound: u64,
    /// Turns of the controller loop (one input handled, its commands audited and
    /// published) that took longer than 10 ms: each delayed every station's due steps.
    pub slow_turns: u64,
    /// The longest turn of the controller loop so far, microseconds.
    pub longest_turn_us: u64,
    /// Energy commands withdrawn unsent because a stop for their channel came while their
    /// audit records were being written (`run.superseded`).
    pub withdrawn: u64,
}

/// What a UI can follow.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ControllerEvent {
    /// A session changed state.
    State {
        /// Session.
        session: String,
        /// New state.
        state: SessionState,
        /// Why, when it ended.
        reason: Option<String>,
    },
    /// A step was emitted (or refused at emission).
    Step {
        /// Session.
        session: String,
        /// Which step.
        step: StepRef,
        /// Its label.
        label: String,
        /// Whether the supervisor admitted it.
        admitted: bool,
        /// How late it went out, wall clock, microseconds.
        jitter_us: u64,
    },
    /// Session time advanced (a few times a second while running).
    Progress {
        /// Session.
        session: String,
        /// Session time, ms.
        elapsed_ms: u64,
        /// Planned duration, ms.
        total_ms: u64,
    },
    /// An alarm.
    Alarm(AlarmMessage),
    /// The broker connection changed.
    Broker {
        /// Up or down.
        connected: bool,
    },
}

/// An operator's act on one session.
#[derive(Debug, Clone, Copy)]
enum Op {
    Arm,
    Start,
    Pause,
    Resume,
    Abort,
}

/// A loop turn longer than this is counted as slow ([`ControllerStats::slow_turns`]): twice
/// the step-start jitter target of the scale benchmark (BENCHMARKS.md).
const SLOW_TURN: Duration = Duration::from_millis(10);

/// How long the records of a batch of stops wait before their group commit
/// ([`AuditLog::append_batch_held`]): about the time a stop takes from the controller through
/// the broker to a device on loopback at idle (0.2-0.4 ms, BENCHMARKS.md), with margin. The
/// reading and the decision behind a stop are themselves group-committed within the audit
/// log's telemetry delay, so this does not widen what a crash can lose in a way that matters.
const STOP_RECORD_HOLD: Duration = Duration::from_millis(1);

/// At most this many already-queued bus events join one loop turn ([`Core::drain_inbox`]),
/// and only while the turn is younger than [`DRAIN_TIME`]: a reading costs tens of
/// microseconds, so a full drain stays well inside the 5 ms step-start jitter target.
const DRAIN_EVENTS: usize = 32;
const DRAIN_TIME: Duration = Duration::from_millis(1);

enum Request {
    Prepare {
        protocol: Box<Protocol>,
        protocol_text_sha256: String,
        session: Option<String>,
        reply: oneshot::Sender<Result<Prepared, ControllerError>>,
    },
    Session {
        op: Op,
        session: String,
        /// The operator, or the reason for a pause or an abort.
        who: String,
        reply: oneshot::Sender<Result<(), ControllerError>>,
    },
    Estop {
        source: String,
        reason: String,
        reply: oneshot::Sender<()>,
    },
    Snapshot {
        session: String,
        reply: oneshot::Sender<Option<SessionSnapshot>>,
    },
    Stats {
        reply: oneshot::Sender<ControllerStats>,
    },
}

impl Request {
    /// What the request is, for the slow-turn log.
    fn kind(&self) -> &'static str {
        match self {
            Request::Prepare { .. } => "prepare",
            Request::Session { op, .. } => match op {
                Op::Arm => "arm",
                Op::Start => "start",
                Op::Pause => "pause",
                Op::Resume => "resume",
                Op::Abort => "abort",
            },
            Request::Estop { .. } => "e-stop request",
            Request::Snapshot { .. } => "snapshot",
            Request::Stats { .. } => "stats",
        }
    }
}

/// What a bus event is, for the slow-turn log.
fn bus_event_kind(ev: &BusEvent) -> &'static str {
    match ev {
        BusEvent::Message { message, .. } => match message {
            Inbound::Telemetry(_) => "telemetry",
            Inbound::Ack(_) => "ack",
            Inbound::Estop(_) => "e-stop",
            _ => "bus message",
        },
        BusEvent::Rejected(_) => "rejected message",
        _ => "connection event",
    }
}

/// The running controller, to send operator requests to and follow.
#[derive(Debug)]
pub struct ControllerHandle {
    tx: mpsc::Sender<Request>,
    events: broadcast::Sender<ControllerEvent>,
    done: Option<oneshot::Receiver<Result<(), String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    audit_dir: PathBuf,
    topics: Topics,
}

/// The controller.
#[derive(Debug)]
pub struct Controller;

impl Controller {
    /// Opens the audit log, loads the plugins, starts the controller thread and connects to
    /// the broker (the connection keeps retrying in the background; sessions can be prepared
    /// meanwhile). Stops when `cancel` fires.
    pub async fn start(
        config: ControllerConfig,
        cancel: CancellationToken,
    ) -> Result<ControllerHandle, ControllerError> {
        check_id("controller", &config.controller_id).map_err(|e| ControllerError::SessionId {
            id: config.controller_id.clone(),
            reason: e.to_string(),
        })?;
        let topics =
            Topics::new(&config.controller_id).map_err(|e| ControllerError::SessionId {
                id: config.controller_id.clone(),
                reason: e.to_string(),
            })?;
        let (tx, rx) = mpsc::channel(64);
        let (events, _) = broadcast::channel(4096);
        let (ready_tx, ready_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let audit_dir = config.audit_dir.clone();
        let ev = events.clone();
        // The MQTT connection runs on the caller's runtime, not on the controller thread:
        // the controller blocks on the audit log's group commits, and the connection's
        // keep-alives and outgoing queue must not wait for that.
        let io = tokio::runtime::Handle::current();
        let thread = std::thread::Builder::new()
            .name(format!("controller-{}", config.controller_id))
            .spawn(move || {
                // A multi-thread runtime (its one worker idles: the loop runs here, in
                // `block_on`) so that a plugin call can leave the runtime in place
                // (`block_in_place`) instead of crossing to another thread: see
                // `Plugin::with_instance`.
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("controller-rt")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(ControllerError::Start(e.to_string())));
                        return;
                    }
                };
                let result = rt.block_on(async move {
                    let core = match Core::open(config, ev, io).await {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return Ok(());
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    core.run(rx, cancel).await
                });
                let _ = done_tx.send(result);
            })
            .map_err(|e| ControllerError::Start(e.to_string()))?;
        match ready_rx.await {
            Ok(Ok(())) => Ok(ControllerHandle {
                tx,
                events,
                done: Some(done_rx),
                thread: Some(thread),
                audit_dir,
                topics,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(ControllerError::Start("the controller thread ended".into()))
            }
        }
    }
}

impl ControllerHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, ControllerError> {
        let (reply, wait) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| ControllerError::Stopped)?;
        wait.await.map_err(|_| ControllerError::Stopped)
    }

    /// Loads a protocol as a new session, has the plugins plan it and the governor pre-check
    /// it: loaded → planned → checked (or aborted when the pre-check refuses something).
    /// `protocol_text` is the file's text, whose SHA-256 goes in the audit log. `session` is
    /// the id, or `None` for the next `session-<n>`.
    pub async fn prepare(
        &self,
        protocol: Protocol,
        protocol_text: &str,
        session: Option<String>,
    ) -> Result<Prepared, ControllerError> {
        let protocol_text_sha256 = sha256_hex(protocol_text.as_bytes());
        self.ask(|reply| Request::Prepare {
            protocol: Box::new(protocol),
            protocol_text_sha256,
            session,
            reply,
        })
        .await?
    }

    async fn session_op(&self, op: Op, session: &str, who: &str) -> Result<(), ControllerError> {
        let (session, who) = (session.to_string(), who.to_string());
        self.ask(|reply| Request::Session {
            op,
            session,
            who,
            reply,
        })
        .await?
    }

    /// An operator arms a checked session after reading the dose report, confirming the
    /// laser interlocks (key switch, door, emission indicator) and eyewear for every laser
    /// device of the session.
    pub async fn arm(&self, session: &str, operator: &str) -> Result<(), ControllerError> {
        self.session_op(Op::Arm, session, operator).await
    }

    /// An operator starts an armed session: its clock starts and steps go out on time.
    pub async fn start(&self, session: &str, operator: &str) -> Result<(), ControllerError> {
        self.session_op(Op::Start, session, operator).await
    }

    /// Pauses a running session: every source stops, its clock holds.
    pub async fn pause(&self, session: &str, reason: &str) -> Result<(), ControllerError> {
        self.session_op(Op::Pause, session, reason).await
    }

    /// An operator resumes a paused session where it stopped.
    pub async fn resume(&self, session: &str, operator: &str) -> Result<(), ControllerError> {
        self.session_op(Op::Resume, session, operator).await
    }

    /// Aborts a session: every source stops, for good.
    pub async fn abort(&self, session: &str, reason: &str) -> Result<(), ControllerError> {
        self.session_op(Op::Abort, session, reason).await
    }

    /// Emergency stop of every session, as the MQTT e-stop input does.
    pub async fn estop(&self, source: &str, reason: &str) -> Result<(), ControllerError> {
        let (source, reason) = (source.to_string(), reason.to_string());
        self.ask(|reply| Request::Estop {
            source,
            reason,
            reply,
        })
        .await
    }

    /// A session's state now.
    pub async fn snapshot(&self, session: &str) -> Result<SessionSnapshot, ControllerError> {
        let s = session.to_string();
        self.ask(|reply| Request::Snapshot { session: s, reply })
            .await?
            .ok_or_else(|| ControllerError::UnknownSession(session.to_string()))
    }

    /// Controller-wide counters.
    pub async fn stats(&self) -> Result<ControllerStats, ControllerError> {
        self.ask(|reply| Request::Stats { reply }).await
    }

    /// Follows the controller's events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ControllerEvent> {
        self.events.subscribe()
    }

    /// Waits until `session` has ended (completed, aborted or e-stopped), or `timeout`.
    pub async fn wait_ended(
        &self,
        session: &str,
        timeout: Duration,
    ) -> Result<SessionSnapshot, ControllerError> {
        let mut rx = self.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            let snap = self.snapshot(session).await?;
            if snap.state.is_final() {
                return Ok(snap);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(snap);
            }
            // Any event (or a lag, or a quiet second) is a reason to look again.
            let _ = tokio::time::timeout(left.min(Duration::from_secs(1)), rx.recv()).await;
        }
    }

    /// The audit log's directory.
    pub fn audit_dir(&self) -> &std::path::Path {
        &self.audit_dir
    }

    /// The controller's topics.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Waits for the controller to finish after its cancellation token fired: sessions
    /// stopped, state offline, audit log closed.
    pub async fn join(mut self) -> Result<(), ControllerError> {
        let r = match self.done.take() {
            Some(d) => d.await.unwrap_or(Ok(())),
            None => Ok(()),
        };
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        r.map_err(ControllerError::Start)
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn priority(p: GovPriority) -> (AlarmPriority, Severity) {
    match p {
        GovPriority::Low => (AlarmPriority::Low, Severity::Info),
        GovPriority::Medium => (AlarmPriority::Medium, Severity::Warning),
        GovPriority::High => (AlarmPriority::High, Severity::Critical),
    }
}

/// What a published command was, to make sense of its ack.
#[derive(Debug, Clone)]
struct Pending {
    session: Option<String>,
    device: String,
    channel: String,
    energy: bool,
    sent: Instant,
}

/// When a step was due, to measure how late its command left.
#[derive(Debug, Clone)]
struct Due {
    session: String,
    step: StepRef,
    label: String,
    at: Instant,
}

/// A command queued for the next [`Core::flush`].
#[derive(Debug)]
struct Outgoing {
    entry: Entry,
    cmd: DeviceCommand,
    energy: bool,
    due: Option<Due>,
}

/// A batch of commands whose audit records the writer has and is committing
/// ([`Core::flush`]). Its energy commands are published when the records are on disk
/// ([`Core::on_audited`]); its stops are already out.
struct InFlight {
    id: u64,
    cmds: Vec<Queued>,
    /// The records' results, once the writer has them; batches are published in order, so
    /// a finished batch waits for the ones before it.
    results: Option<Vec<Result<u64, modalis_audit::AuditError>>>,
}

/// One command of an [`InFlight`] batch.
struct Queued {
    cmd: DeviceCommand,
    /// An energy command, published once its record is written; else a stop, published
    /// before.
    energy: bool,
    due: Option<Due>,
    /// An energy command a stop for its channel superseded before it was published: never
    /// sent ([`rules::RUN_SUPERSEDED`]).
    withdrawn: bool,
}

impl Queued {
    /// An energy command not yet out, that a stop for `ch` would have to wait for.
    fn pending_energy_for(&self, ch: (&str, &str)) -> bool {
        self.energy
            && !self.withdrawn
            && (self.cmd.device.as_str(), self.cmd.channel.as_str()) == ch
    }
}

/// A batch's results, from the controller's audit waiter thread to its loop.
type Audited = (u64, Vec<Result<u64, modalis_audit::AuditError>>);

/// Waits, on a thread of its own, for each batch the loop hands to the audit log, in the
/// order they were handed (the writer's order too), and passes the results back to the
/// loop. The loop must not wait for the disk itself: while it did, every station's readings
/// and due steps waited with it (at 64 stations, 41-47 % of each second, BENCHMARKS.md).
fn spawn_audit_waiter(
    done: mpsc::UnboundedSender<Audited>,
) -> std::io::Result<std::sync::mpsc::Sender<(u64, modalis_audit::BatchReceipt)>> {
    let (tx, rx) = std::sync::mpsc::channel::<(u64, modalis_audit::BatchReceipt)>();
    std::thread::Builder::new()
        .name("modalis-audit-wait".into())
        .spawn(move || {
            // Ends when the loop drops its sender (the controller is gone).
            while let Ok((id, receipt)) = rx.recv() {
                if done.send((id, receipt.wait())).is_err() {
                    return;
                }
            }
        })?;
    Ok(tx)
}

/// The controller loop's state. Only the controller thread touches it.
struct Core {
    id: String,
    topics: Topics,
    speed: u32,
    renew_every: Duration,
    watchdog_every: Duration,
    status_every: Duration,
    stop_grace_ms: u64,
    bus: BusHandle,
    inbox: Option<Inbox>,
    bus_task: Option<crate::bus::BusTask>,
    bus_cancel: CancellationToken,
    audit: AuditLog,
    events: broadcast::Sender<ControllerEvent>,
    seq: Sequencer,
    plugins: BTreeMap<String, Plugin>,
    stations: BTreeMap<String, Station>,
    /// Device id -> the session that has it, for the sessions not yet ended: every inbound
    /// message asks, and `stations` keeps ended sessions (their reports and snapshots) for
    /// the controller's lifetime, so scanning it made each message cost more the longer the
    /// controller ran. Filled when a session is prepared, emptied when it ends.
    device_owner: HashMap<String, String>,
    /// Station number per session, for lease ids unique per controller.
    station_numbers: HashMap<String, u64>,
    pending: HashMap<String, Pending>,
    outbox: Vec<Outgoing>,
    next_command: u64,
    sessions_created: u64,
    boot_counter: u64,
    connected: bool,
    stats: ControllerStats,
    /// Devices the controller expects (configured, or in a prepared session).
    known_devices: std::collections::BTreeSet<String>,
    /// Rejections audited in the current second, and that second: a flood of bad input is
    /// counted in full but audited at a bounded rate.
    reject_window: (u64, u64),
    /// The last telemetry accepted from each device in a session: (seq, ts_ms).
    last_telemetry: HashMap<String, (u64, u64)>,
    /// Session-end checkpoints still being written, joined before the controller ends.
    checkpoints: Vec<std::thread::JoinHandle<()>>,
    /// Command batches being written ahead, oldest first ([`InFlight`]).
    in_flight: std::collections::VecDeque<InFlight>,
    next_batch: u64,
    /// To the audit waiter thread ([`spawn_audit_waiter`]).
    audit_waiter: std::sync::mpsc::Sender<(u64, modalis_audit::BatchReceipt)>,
    /// From it; the loop takes it while it runs, [`Core::settle`] after.
    audited: Option<mpsc::UnboundedReceiver<Audited>>,
    /// Which plugins were admitted, for the retained state.
    plugin_trust: PluginTrustState,
    /// How the run before this one ended, reported once at start.
    previous: modalis_audit::PreviousRun,
    /// The first audit write that failed, not yet acted on.
    audit_failure: Option<String>,
    /// The audit log failed (why, the first time): every source was stopped; no energy
    /// command goes out, and the controller's exit reports it.
    audit_broken: Option<String>,
    /// Inbound messages the bus had dropped at the last alarm about it, and when.
    drops: (u64, Option<Instant>),
}

/// An e-stop between its stops (queued) and the rest of it (see `Core::estop`).
struct EstopStaged {
    /// What the supervisor decided besides the stops.
    actions: Vec<Action>,
    /// Session time of the e-stop.
    t: u64,
    /// The channels already sent a stop.
    stopped: Vec<(String, String)>,
}

/// Most rejected inbound messages audited one by one per second; the rest are counted.
const REJECTS_AUDITED_PER_S: u64 = 20;

/// How far a device's clock may run ahead of the controller's. Controller and devices share
/// one machine or one NTP-synchronised network; a stamp further ahead is a wrong clock or a
/// forged message, and its reading would count as brand new however old it is.
const MAX_TELEMETRY_AHEAD_MS: u64 = 2_000;

/// How old a reading may be on arrival before it is refused as a replay or a dead clock
/// rather than judged. Readings up to this age still reach the governor, which treats one
/// older than its staleness limit (5 s) as unsafe and stops the source: a slow network is a
/// condition to act on. Older than this, the message says nothing about the patient now.
const MAX_TELEMETRY_AGE_MS: u64 = 60_000;

impl Core {
    async fn open(
        config: ControllerConfig,
        events: broadcast::Sender<ControllerEvent>,
        io: tokio::runtime::Handle,
    ) -> Result<Core, ControllerError> {
        let audit = AuditLog::open_with(
            &config.audit_dir,
            &config.controller_id,
            config.audit.clone(),
        )?;
        // Before this run writes anything: how did the last one end?
        let previous = audit.previous_run()?;
        let runtime = PluginRuntime::new(config.runtime.clone()).map_err(|e| {
            ControllerError::PluginLoad {
                label: "(runtime)".into(),
                message: e.to_string(),
            }
        })?;
        let mut plugins = BTreeMap::new();
        let mut hashes = Vec::new();
        let trust = &config.plugin_trust;
        match trust.state() {
            PluginTrustState::Enforced => {}
            PluginTrustState::DevelopmentKeyTrusted => tracing::warn!(
                "the development plugin-signing key is trusted: anyone can sign a plugin this controller loads (development only)"
            ),
            PluginTrustState::NotEnforced => tracing::warn!(
                "plugin signatures are NOT enforced (--allow-unsigned-plugins): development only"
            ),
        }
        if trust.state() != PluginTrustState::Enforced {
            audit.append(
                Entry::new(
                    Actor::Controller,
                    Event::Alarm {
                        code: "plugin.trust_relaxed".into(),
                        severity: Severity::Warning,
                    },
                )
                .payload(serde_json::json!({"plugin_trust": trust.state()})),
            )?;
        }
        for src in &config.plugins {
            // The signature is checked before wasmtime sees a byte of the component.
            let verdict = match &src.signature {
                Some(sig) => trust.store.verify(&src.bytes, sig),
                None => Err(SignatureError::Missing(format!(
                    "no {}.sig beside it",
                    src.label
                ))),
            };
            let signature = match verdict {
                Ok(v) => {
                    serde_json::json!({"key": v.key_name, "key_id": v.key_id, "development": v.development})
                }
                Err(e) if trust.allow_unsigned => {
                    tracing::warn!(plugin = %src.label, error = %e, "loading a plugin whose signature was refused (--allow-unsigned-plugins)");
                    serde_json::json!({"refused": e.to_string(), "loaded_because": "--allow-unsigned-plugins"})
                }
                Err(e) => {
                    audit.append(
                        Entry::new(
                            Actor::Controller,
                            Event::Alarm {
                                code: "plugin.untrusted".into(),
                                severity: Severity::Critical,
                            },
                        )
                        .outcome(Outcome::Rejected)
                        .payload(serde_json::json!({"label": src.label, "reason": e.to_string()})),
                    )?;
                    return Err(ControllerError::PluginLoad {
                        label: src.label.clone(),
                        message: format!("refused: {e}"),
                    });
                }
            };
            let p = runtime.load_bytes(&src.label, &src.bytes).map_err(|e| {
                ControllerError::PluginLoad {
                    label: src.label.clone(),
                    message: e.to_string(),
                }
            })?;
            let m = p.manifest().clone();
            audit.append(
                Entry::new(
                    Actor::Plugin {
                        id: m.id.clone(),
                        wasm_sha256: p.wasm_sha256().to_string(),
                    },
                    Event::PluginLoaded {
                        plugin_id: m.id.clone(),
                        version: m.version.clone(),
                        wasm_sha256: p.wasm_sha256().to_string(),
                    },
                )
                .payload(serde_json::json!({"label": src.label, "vendor": m.vendor, "signature": signature})),
            )?;
            hashes.push(format!("{}={}", m.id, p.wasm_sha256()));
            plugins.insert(m.id.clone(), p);
        }
        let topics =
            Topics::new(&config.controller_id).map_err(|e| ControllerError::SessionId {
                id: config.controller_id.clone(),
                reason: e.to_string(),
            })?;
        // The session counter of the retained state (Sparkplug's bdSeq): the boot time makes
        // every controller run's `online`/`offline` pair tell apart from an earlier run's.
        let boot_counter = wall_clock_ms();
        let mut bus_cfg = config.bus.clone();
        bus_cfg.topics = topics.clone();
        bus_cfg.client_id = format!("modalis-{}", config.controller_id);
        bus_cfg.subscriptions = topics
            .controller_filters()
            .into_iter()
            .map(|f| (f, Qos::AtLeastOnce))
            .collect();
        let state = |presence| ControllerState {
            seq: 0,
            ts_ms: wall_clock_ms(),
            controller: config.controller_id.clone(),
            state: presence,
            session_counter: boot_counter,
            version: env!("CARGO_PKG_VERSION").to_string(),
            plugin_trust: config.plugin_trust.state(),
        };
        bus_cfg.last_will = Some(OutboundMessage::json(
            topics.state(),
            &state(Presence::Offline),
            TopicKind::State.qos(),
            TopicKind::State.retained(),
        )?);
        bus_cfg.birth = Some(OutboundMessage::json(
            topics.state(),
            &state(Presence::Online),
            TopicKind::State.qos(),
            TopicKind::State.retained(),
        )?);
        let (audited_tx, audited) = mpsc::unbounded_channel();
        let audit_waiter = spawn_audit_waiter(audited_tx)
            .map_err(|e| ControllerError::Start(format!("the audit waiter thread: {e}")))?;
        let broker = bus_cfg.broker.to_string();
        let bus_cancel = CancellationToken::new();
        let bus = {
            let _on_io = io.enter();
            Bus::start(bus_cfg, bus_cancel.clone())?
        };
        let config_json = serde_json::json!({
            "controller": config.controller_id,
            "broker": broker,
            "speed": config.speed,
            "renew_every_ms": config.renew_every.as_millis() as u64,
            "watchdog_every_ms": config.watchdog_every.as_millis() as u64,
            "plugins": hashes,
        });
        audit.append(
            Entry::new(
                Actor::Controller,
                Event::ControllerStart {
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    config_sha256: sha256_hex(config_json.to_string().as_bytes()),
                    // Profiles arrive with each protocol; their hashes are in the protocol's
                    // record. None are configured at start.
                    profiles_sha256: sha256_hex(b""),
                },
            )
            .payload(config_json),
        )?;
        if previous.found && !previous.ended_cleanly {
            tracing::error!(
                interrupted = ?previous.interrupted_sessions,
                last_seq = ?previous.last_seq,
                "the previous controller run ended without a shutdown"
            );
        }
        Ok(Core {
            previous,
            audit_failure: None,
            audit_broken: None,
            drops: (0, None),
            id: config.controller_id,
            topics,
            speed: config.speed.max(1),
            renew_every: config.renew_every,
            watchdog_every: config.watchdog_every,
            status_every: config.status_every,
            stop_grace_ms: u64::try_from(config.stop_grace.as_millis()).unwrap_or(u64::MAX),
            bus: bus.handle,
            inbox: Some(bus.inbox),
            bus_task: Some(bus.task),
            bus_cancel,
            audit,
            events,
            seq: Sequencer::new(),
            plugins,
            stations: BTreeMap::new(),
            device_owner: HashMap::new(),
            station_numbers: HashMap::new(),
            pending: HashMap::new(),
            outbox: Vec::new(),
            next_command: 0,
            sessions_created: 0,
            boot_counter,
            connected: false,
            stats: ControllerStats::default(),
            known_devices: config.devices.iter().cloned().collect(),
            reject_window: (0, 0),
            last_telemetry: HashMap::new(),
            checkpoints: Vec::new(),
            in_flight: std::collections::VecDeque::new(),
            next_batch: 0,
            audit_waiter,
            audited: Some(audited),
            plugin_trust: config.plugin_trust.state(),
        })
    }

    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        cancel: CancellationToken,
    ) -> Result<(), String> {
        let Some(mut inbox) = self.inbox.take() else {
            return Err("the bus inbox is gone".into());
        };
        let Some(mut audited) = self.audited.take() else {
            return Err("the audit waiter is gone".into());
        };
        let mut requests_open = true;
        let mut inbox_open = true;
        let mut timer = wake::WakeTimer::new();
        self.report_previous_run().await;
        loop {
            let wake = self.next_wake();
            let began;
            let what = tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                // First: it only publishes what is already decided and on disk, and a due
                // step's lateness runs until its command is out.
                Some((id, results)) = audited.recv() => {
                    began = Instant::now();
                    self.on_audited(id, results).await;
                    "audit written"
                }
                () = timer.sleep_until(wake) => {
                    began = Instant::now();
                    self.on_timer().await;
                    "step timer"
                }
                // Requests before bus events: they are the operator's (e-stop, abort, pause
                // from the console), few and bounded, while the bus can stay busy as long as
                // a device floods it; in the other order a flood held a console e-stop until
                // it ended (a_console_estop_is_served_during_a_flood_...).
                req = requests.recv(), if requests_open => {
                    began = Instant::now();
                    match req {
                        Some(r) => {
                            let what = r.kind();
                            self.on_request(r).await;
                            what
                        }
                        None => {
                            requests_open = false;
                            "requests closed"
                        }
                    }
                },
                ev = inbox.recv(), if inbox_open => {
                    began = Instant::now();
                    match ev {
                        Some(ev) => {
                            let what = bus_event_kind(&ev);
                            self.on_bus(ev).await;
                            self.drain_inbox(&mut inbox, &mut audited, began).await;
                            what
                        }
                        None => {
                            inbox_open = false;
                            "bus closed"
                        }
                    }
                },
            };
            self.flush().await;
            self.note_turn(what, began.elapsed());
            self.on_audit_failure().await;
            self.check_inbound_drops().await;
        }
        self.audited = Some(audited);
        self.shutdown().await
    }

    /// Handles bus events that are already waiting in the same turn, so the commands they
    /// cause (closed-loop adjustments, mostly) share one audit commit: one batch for the
    /// writer instead of one per adjustment (when the loop still waited for each commit, this
    /// was what kept an over-limit reading from queueing behind them). Bounded in count and
    /// time so a due step is not held up, and ended at once by a queued stop, which must not
    /// wait for the next reading.
    async fn drain_inbox(
        &mut self,
        inbox: &mut Inbox,
        audited: &mut mpsc::UnboundedReceiver<Audited>,
        began: Instant,
    ) {
        for _ in 0..DRAIN_EVENTS {
            if began.elapsed() >= DRAIN_TIME || self.outbox.iter().any(|o| !o.energy) {
                return;
            }
            // Commands whose records are written go out now, not after the drain: a due
            // step's lateness runs until its command is published.
            while let Ok((id, results)) = audited.try_recv() {
                self.on_audited(id, results).await;
            }
            let Some(ev) = inbox.try_recv() else {
                return;
            };
            self.on_bus(ev).await;
        }
    }

    /// Every turn of the loop holds up every station: a step due during a 30 ms turn starts
    /// 30 ms late. Turns longer than [`SLOW_TURN`] are counted (`ControllerStats`) and
    /// logged with what they handled, so a jitter tail can be traced to its cause (it was
    /// how a per-step audit wait in `prepare` was found).
    fn note_turn(&mut self, what: &'static str, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        if us > self.stats.longest_turn_us {
            self.stats.longest_turn_us = us;
        }
        if took > SLOW_TURN {
            self.stats.slow_turns += 1;
            tracing::debug!(
                what,
                took_ms = took.as_secs_f64() * 1e3,
                "slow controller loop turn"
            );
        }
    }

    /// A flood (a device gone mad, or an attack) fills the bus's bounded inbox, which drops
    /// and counts rather than grow: memory stays bounded and the loop keeps up with the
    /// devices it supervises. The operator is told, at most once every 10 s, with the count.
    async fn check_inbound_drops(&mut self) {
        const EVERY: Duration = Duration::from_secs(10);
        let now = Instant::now();
        if self
            .drops
            .1
            .is_some_and(|at| now.duration_since(at) < EVERY)
        {
            return;
        }
        let dropped = self.bus.stats().dropped_inbound;
        if dropped <= self.drops.0 {
            return;
        }
        let new = dropped - self.drops.0;
        self.drops = (dropped, Some(now));
        self.alarm(
            None,
            None,
            None,
            AlarmPriority::Medium,
            "mqtt.inbound_dropped",
            format!(
                "{new} inbound messages dropped: they arrived faster than the controller takes them (a flood); every device's staleness limit still applies"
            ),
        )
        .await;
    }

    // ---------------------------------------------------------------------------------
    // Time
    // ---------------------------------------------------------------------------------

    fn next_wake(&self) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        let mut at = |i: Option<Instant>| {
            if let Some(i) = i {
                wake = Some(wake.map_or(i, |w| w.min(i)));
            }
        };
        for s in self.stations.values() {
            if s.state != SessionState::Running {
                continue;
            }
            at(s.steps
                .get(s.next)
                .and_then(|st| s.clock.instant_of(st.start_ms)));
            at(s.ends.first().and_then(|&e| s.clock.instant_of(e)));
            at(s.next_renew);
            at(s.next_status);
            at(Some(Instant::now() + self.watchdog_every));
            if s.next >= s.steps.len() {
                at(s.clock.instant_of(s.end_ms()));
            }
        }
        wake
    }

    async fn on_timer(&mut self) {
        let ids: Vec<String> = self
            .stations
            .iter()
            .filter(|(_, s)| s.state == SessionState::Running)
            .map(|(k, _)| k.clone())
            .collect();
        for id in ids {
            self.run_station(&id).await;
        }
    }

    /// Emits what is due, runs the watchdog, renews leases when due, finishes the session
    /// when its last step is over.
    async fn run_station(&mut self, id: &str) {
        let now = Instant::now();
        let Some(s) = self.stations.get_mut(id) else {
            return;
        };
        let t = s.clock.at(now);
        // Steps due now, in timeline order.
        let mut due = Vec::new();
        while let Some(st) = s.steps.get(s.next) {
            if st.start_ms > t {
                break;
            }
            // A block stopped after its plugin failed runs no further step.
            if !s.block_failed(&st.step.block_id) {
                due.push((st.clone(), s.clock.instant_of(st.start_ms)));
            }
            s.next += 1;
        }
        for (st, at) in due {
            self.emit(id, &st, t, at).await;
        }
        let Some(s) = self.stations.get_mut(id) else {
            return;
        };
        while s.ends.first().is_some_and(|&e| e <= t) {
            s.ends.pop_first();
        }
        let renew = s.next_renew.is_some_and(|r| r <= now);
        let actions = match s.supervisor.as_mut() {
            Some(sup) if renew => {
                s.next_renew = Some(now + self.renew_every);
                sup.renew_leases(t)
            }
            Some(sup) => sup.tick(t),
            None => Vec::new(),
        };
        self.carry_out(Some(id), actions, t).await;
        let Some(s) = self.stations.get_mut(id) else {
            return;
        };
        let finished = s.next >= s.steps.len()
            && t >= s.end_ms()
            && !s.supervisor.as_ref().is_some_and(|sup| sup.any_energised());
        if finished {
            self.transition(
                id,
                SessionEvent::Finished,
                Some("every step ran to its end".into()),
            )
            .await;
            return;
        }
        if s.next_status.is_none_or(|n| n <= now) {
            s.next_status = Some(now + self.status_every);
            let total_ms = s.total_ms;
            self.publish_status(id).await;
            let _ = self.events.send(ControllerEvent::Progress {
                session: id.to_string(),
                elapsed_ms: t,
                total_ms,
            });
        }
    }

    // ---------------------------------------------------------------------------------
    // Commands
    // ---------------------------------------------------------------------------------

    /// Emits one approved step: supervisor, audit, MQTT.
    /// `due` is when the step was due on the wall clock (`None` for a step resumed after a
    /// pause, which is not a scheduling event).
    async fn emit(&mut self, id: &str, st: &station::Sched, t: u64, due: Option<Instant>) {
        let Some(s) = self.stations.get_mut(id) else {
            return;
        };
        let Some(sup) = s.supervisor.as_mut() else {
            return;
        };
        let cmd = Command {
            device_id: st.device.clone(),
            channel: st.channel.clone(),
            site: st.site.clone(),
            setpoint: st.setpoint,
            step: st.step.clone(),
        };
        let d = sup.admit(&cmd, t);
        if !d.admitted() {
            s.counters.refused += 1;
            let late_us = due.map_or(0, |at| {
                u64::try_from(Instant::now().saturating_duration_since(at).as_micros())
                    .unwrap_or(u64::MAX)
            });
            let _ = self.events.send(ControllerEvent::Step {
                session: id.to_string(),
                step: StepRef::from(&st.step),
                label: st.label.clone(),
                admitted: false,
                jitter_us: late_us,
            });
            self.audit_decision(
                id,
                &st.device,
                d.rule,
                AuditDecision::Reject,
                serde_json::json!({"step": st.step, "reason": d.reason, "values": d.values, "source": d.source}),
            );
            self.alarm(
                Some(id),
                Some(&st.device),
                Some(&st.channel),
                AlarmPriority::Medium,
                d.rule,
                format!("step {} refused at emission: {}", st.step, d.reason),
            )
            .await;
            return;
        }
        s.ends.insert(st.end_ms);
        let action = match (st.setpoint, d.lease) {
            (Setpoint::Off, _) => CommandAction::Stop {
                reason: format!("step {}: off", st.step),
            },
            (sp, Some(lease)) => {
                let grant = self.grant(id, &lease, t);
                if let Some(s) = self.stations.get_mut(id) {
                    let key = (st.device.clone(), st.channel.clone());
                    s.set_lease.insert(key.clone(), grant.id);
                    // Delivering from now on is what was asked for.
                    s.stopped_at.remove(&key);
                    s.leases.insert(key, lease);
                }
                CommandAction::Set {
                    setpoint: sp,
                    lease: grant,
                }
            }
            (_, None) => {
                // An admitted energy command always carries a lease; without one the device
                // could not deliver safely, so nothing is sent and the source is stopped.
                tracing::error!(step = %st.step, "admitted without a lease: not sent");
                return;
            }
        };
        let is_stop = matches!(action, CommandAction::Stop { .. });
        if is_stop && let Some(s) = self.stations.get_mut(id) {
            s.stopped_at
                .entry((st.device.clone(), st.channel.clone()))
                .or_insert_with(wall_clock_ms);
        }
        let due = due.map(|at| Due {
            session: id.to_string(),
            step: StepRef::from(&st.step),
            label: st.label.clone(),
            at,
        });
        self.send(
            Some(id),
            &st.device,
            &st.channel,
            Some(StepRef::from(&st.step)),
            action,
            due,
        );
    }

    /// The wire form of a lease: an id unique per controller and the time left in wall ms.
    fn grant(&self, session: &str, lease: &modalis_governor::Lease, t: u64) -> LeaseGrant {
        let n = self.station_numbers.get(session).copied().unwrap_or(0);
        let speed = self.speed;
        LeaseGrant {
            id: n.saturating_mul(1_000_000_000).saturating_add(lease.id),
            valid_for_ms: lease
                .expires_at_ms
                .saturating_sub(t)
                .div_ceil(u64::from(speed))
                .max(1),
        }
    }

    /// Carries out the supervisor's actions: stops, reductions, renewals, alarms.
    async fn carry_out(&mut self, session: Option<&str>, actions: Vec<Action>, t: u64) {
        for a in actions {
            match a {
                Action::Stop {
                    device_id,
                    channel,
                    rule,
                    reason,
                    values,
                    source,
                    latched,
                    ..
                } => {
                    if let Some(id) = session {
                        self.audit_decision(
                            id,
                            &device_id,
                            rule,
                            AuditDecision::Stop,
                            serde_json::json!({"channel": channel, "reason": reason, "values": values, "source": source, "latched": latched}),
                        );
                    }
                    self.stop_source(session, &device_id, &channel, format!("{rule}: {reason}"))
                        .await;
                }
                Action::Reduce {
                    device_id,
                    channel,
                    setpoint,
                    rule,
                    reason,
                    values,
                    source,
                    ..
                } => {
                    let Some(id) = session else { continue };
                    self.audit_decision(
                        id,
                        &device_id,
                        rule,
                        AuditDecision::Admit,
                        serde_json::json!({"channel": channel, "reduce_to": setpoint, "reason": reason, "values": values, "source": source}),
                    );
                    let lease = self
                        .stations
                        .get(id)
                        .and_then(|s| s.leases.get(&(device_id.clone(), channel.clone())))
                        .cloned();
                    // No lease means not energised: nothing to reduce.
                    if let Some(lease) = lease {
                        let grant = self.grant(id, &lease, t);
                        if let Some(s) = self.stations.get_mut(id) {
                            s.set_lease
                                .insert((device_id.clone(), channel.clone()), grant.id);
                        }
                        self.send(
                            Some(id),
                            &device_id,
                            &channel,
                            None,
                            CommandAction::Set {
                                setpoint,
                                lease: grant,
                            },
                            None,
                        );
                    }
                }
                Action::RenewLease { lease } => {
                    let Some(id) = session else { continue };
                    let grant = self.grant(id, &lease, t);
                    let (device, channel) = (lease.device_id.clone(), lease.channel.clone());
                    if let Some(s) = self.stations.get_mut(id) {
                        s.leases.insert((device.clone(), channel.clone()), lease);
                    }
                    self.send(
                        Some(id),
                        &device,
                        &channel,
                        None,
                        CommandAction::RenewLease { lease: grant },
                        None,
                    );
                }
                Action::Alarm(a) => {
                    let (p, _) = priority(a.priority);
                    let reason = if a.values.is_empty() {
                        a.reason.clone()
                    } else {
                        format!(
                            "{} ({})",
                            a.reason,
                            a.values
                                .iter()
                                .map(|v| format!("{} {} {}", v.name, v.value, v.unit))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    };
                    self.alarm(
                        session,
                        a.device_id.as_deref(),
                        a.channel.as_deref(),
                        p,
                        a.rule,
                        reason,
                    )
                    .await;
                }
            }
        }
    }

    /// Sends a stop to one source and remembers when (a device still delivering well after
    /// that is ignoring it).
    async fn stop_source(
        &mut self,
        session: Option<&str>,
        device: &str,
        channel: &str,
        reason: String,
    ) {
        if let Some(s) = session.and_then(|id| self.stations.get_mut(id)) {
            let key = (device.to_string(), channel.to_string());
            s.leases.remove(&key);
            // The first stop since the source was last started counts: repeated stops to a
            // device that keeps delivering must not restart its grace period.
            s.stopped_at.entry(key).or_insert_with(wall_clock_ms);
        }
        self.send(
            session,
            device,
            channel,
            None,
            CommandAction::Stop { reason },
            None,
        );
    }

    /// Queues a command. [`Core::flush`] audits everything queued as one batch (one group
    /// commit for a burst of commands due together; write-ahead for energy commands) and
    /// publishes it. Every handler flushes before it returns, and before any slow work (an
    /// alarm, a checkpoint), so a queued stop is never held up.
    fn send(
        &mut self,
        session: Option<&str>,
        device: &str,
        channel: &str,
        step: Option<StepRef>,
        action: CommandAction,
        due: Option<Due>,
    ) {
        self.next_command += 1;
        let command_id = format!("{}-c{}", session.unwrap_or(&self.id), self.next_command);
        let energy = !matches!(action, CommandAction::Stop { .. });
        let stamp = self.seq.next();
        let cmd = DeviceCommand {
            seq: stamp.seq,
            ts_ms: stamp.ts_ms,
            command_id: command_id.clone(),
            device: device.to_string(),
            channel: channel.to_string(),
            session: session.map(str::to_string),
            step,
            action,
        };
        let mut entry = Entry::new(
            Actor::Controller,
            Event::Command {
                command_id: command_id.clone(),
            },
        )
        .device(device)
        .payload(serde_json::to_value(&cmd).unwrap_or(serde_json::Value::Null));
        if let Some(s) = session {
            entry = entry.session(s);
        }
        self.outbox.push(Outgoing {
            entry,
            cmd,
            energy,
            due,
        });
    }

    /// Hands every queued command's record to the audit log in one batch and publishes the
    /// commands in order. An energy command is published only once the audit log has it on
    /// disk ([`Core::on_audited`]), and is not sent at all if the log did not take it. The
    /// loop does not wait for the disk meanwhile: it goes on with readings and due steps, and
    /// the batch is published when its records are written, after every batch before it.
    ///
    /// Stops (a reaction's stop, every stop of an e-stop) are published at once, *before*
    /// their records are written: a stop takes energy away, so holding it back for the disk
    /// protects nobody, and the disk write was most of a reaction's latency (BENCHMARKS.md).
    /// Nor does a stop wait behind an energy command for its channel that is queued before it
    /// and not yet out (in this batch or one still being written): that command is withdrawn
    /// and never sent, and the log says so (`run.superseded`) after its record. The window
    /// this opens: a crash between a stop's publish and its write loses the stop's record
    /// (never an energy command's); the device's telemetry and its ack still say it stopped.
    async fn flush(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        let out = std::mem::take(&mut self.outbox);
        let mut batch: Vec<Queued> = Vec::with_capacity(out.len());
        let mut entries = Vec::with_capacity(out.len());
        let mut withdrawn: Vec<Entry> = Vec::new();
        for o in out {
            if !o.energy {
                let ch = (o.cmd.device.as_str(), o.cmd.channel.as_str());
                let earlier = self
                    .in_flight
                    .iter_mut()
                    .flat_map(|b| b.cmds.iter_mut())
                    .chain(batch.iter_mut());
                for q in earlier.filter(|q| q.pending_energy_for(ch)) {
                    q.withdrawn = true;
                    withdrawn.push(superseded_entry(q, &o.cmd.command_id));
                }
            }
            entries.push(o.entry);
            batch.push(Queued {
                cmd: o.cmd,
                energy: o.energy,
                due: o.due,
                withdrawn: false,
            });
        }
        for q in batch.iter_mut().filter(|q| !q.energy) {
            self.publish_command(&q.cmd, q.energy, q.due.take()).await;
        }
        let id = self.next_batch;
        self.next_batch += 1;
        // A batch of stops only (already published above) is committed a moment later, so
        // that the commit's CPU and disk work does not compete with the stops on their way to
        // the devices; a batch with an energy command waits for nothing but the disk.
        let receipt = if batch.iter().all(|q| !q.energy) {
            self.audit.append_batch_held(entries, STOP_RECORD_HOLD)
        } else {
            self.audit.append_batch_deferred(entries)
        };
        let results = match self.audit_waiter.send((id, receipt)) {
            Ok(()) => None,
            // The waiter thread is gone (it cannot be, short of a panic in it): wait here, as
            // the loop did before it had one.
            Err(std::sync::mpsc::SendError((_, receipt))) => {
                tracing::error!("the audit waiter thread has ended; waiting in the loop");
                Some(receipt.wait())
            }
        };
        self.in_flight.push_back(InFlight {
            id,
            cmds: batch,
            results,
        });
        // After the batch: each withdrawn command's record comes before the note that it was
        // never sent.
        for e in withdrawn {
            self.stats.withdrawn += 1;
            self.note(e);
        }
        if self.in_flight.back().is_some_and(|b| b.results.is_some()) {
            self.publish_audited().await;
        }
    }

    /// A batch's records are written (or failed): publishes it, and every finished batch
    /// after it, once the batches before it are out.
    async fn on_audited(&mut self, id: u64, results: Vec<Result<u64, modalis_audit::AuditError>>) {
        match self.in_flight.iter_mut().find(|b| b.id == id) {
            Some(b) => b.results = Some(results),
            None => tracing::error!(batch = id, "results for an audit batch nobody waits for"),
        }
        self.publish_audited().await;
    }

    async fn publish_audited(&mut self) {
        while self.in_flight.front().is_some_and(|b| b.results.is_some()) {
            let Some(b) = self.in_flight.pop_front() else {
                return;
            };
            let results = b.results.unwrap_or_default();
            let mut results = results.into_iter();
            for q in b.cmds {
                let Queued {
                    cmd,
                    energy,
                    due,
                    withdrawn,
                } = q;
                let result = results
                    .next()
                    .unwrap_or(Err(modalis_audit::AuditError::Closed));
                if let Err(e) = result {
                    self.stats.audit_failures += 1;
                    tracing::error!(error = %e, command = %cmd.command_id, "audit append failed");
                    self.audit_failed(e.to_string());
                    if energy {
                        continue;
                    }
                } else if energy && (self.audit_broken.is_some() || self.audit_failure.is_some()) {
                    // Written this time, but the log failed before: stay stopped.
                    continue;
                }
                // Stops went out before their records.
                if energy && !withdrawn {
                    self.publish_command(&cmd, energy, due).await;
                }
            }
        }
        // A failure found here holds back every later energy command (above) until the loop
        // acts on it at the end of the turn (`on_audit_failure`: every source stopped).
    }

    /// Waits until every batch handed to the audit log is written and published (or
    /// refused): before the controller says it is offline and closes the log.
    async fn settle(&mut self) {
        let Some(mut audited) = self.audited.take() else {
            return;
        };
        while !self.in_flight.is_empty() {
            match audited.recv().await {
                Some((id, results)) => self.on_audited(id, results).await,
                None => break,
            }
        }
        self.audited = Some(audited);
    }

    /// Publishes one command and tracks it for its ack (and, for a step, its lateness).
    async fn publish_command(&mut self, cmd: &DeviceCommand, energy: bool, due: Option<Due>) {
        let topic = match self.topics.device_command(&cmd.device) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "no command topic");
                return;
            }
        };
        if let Some(s) = cmd
            .session
            .as_ref()
            .and_then(|id| self.stations.get_mut(id))
        {
            s.counters.commands += 1;
        }
        match self
            .bus
            .publish_as(TopicKind::DeviceCommand, &topic, cmd)
            .await
        {
            Ok(()) => {
                let now = Instant::now();
                if let Some(d) = due {
                    // Lateness as a device sees it: when the command left (an energy
                    // command after its record was on disk).
                    let late_us = u64::try_from(now.saturating_duration_since(d.at).as_micros())
                        .unwrap_or(u64::MAX);
                    if let Some(s) = self.stations.get_mut(&d.session) {
                        s.counters.jitter_us.push(late_us);
                    }
                    let _ = self.events.send(ControllerEvent::Step {
                        session: d.session,
                        step: d.step,
                        label: d.label,
                        admitted: true,
                        jitter_us: late_us,
                    });
                }
                self.pending.insert(
                    cmd.command_id.clone(),
                    Pending {
                        session: cmd.session.clone(),
                        device: cmd.device.clone(),
                        channel: cmd.channel.clone(),
                        energy,
                        sent: now,
                    },
                );
                // Acks that never come (a dead device) must not grow the table forever.
                if self.pending.len() > 4096 {
                    let cutoff = now - Duration::from_secs(60);
                    self.pending.retain(|_, p| p.sent > cutoff);
                }
            }
            Err(e) => {
                self.stats.publish_failures += 1;
                tracing::warn!(error = %e, "command not published; the device's lease is the backstop");
            }
        }
    }

    fn audit_decision(
        &mut self,
        session: &str,
        device: &str,
        rule: &str,
        decision: AuditDecision,
        payload: serde_json::Value,
    ) {
        let outcome = match decision {
            AuditDecision::Admit => Outcome::Ok,
            AuditDecision::Reject => Outcome::Rejected,
            AuditDecision::Stop => Outcome::Warning,
        };
        let e = Entry::new(
            Actor::Controller,
            Event::GovernorDecision {
                rule: rule.to_string(),
                decision,
            },
        )
        .session(session)
        .device(device)
        .outcome(outcome)
        .payload(payload);
        self.note(e);
    }

    /// Raises an alarm: audit, MQTT `alarm`, UI event.
    /// A previous run that ended without a shutdown (killed, crashed, power lost) left its
    /// devices to stop by their leases and its sessions unfinished: say so, loudly, in the
    /// audit log, on the alarm topic and to the operator, once per interrupted session.
    async fn report_previous_run(&mut self) {
        let p = std::mem::take(&mut self.previous);
        if !p.found || p.ended_cleanly {
            return;
        }
        let when = p
            .last_wall_ms
            .map(|ms| {
                format!(
                    " (its last record, #{}, at {} Unix ms)",
                    p.last_seq.unwrap_or(0),
                    ms
                )
            })
            .unwrap_or_default();
        if p.interrupted_sessions.is_empty() {
            self.alarm(
                None,
                None,
                None,
                AlarmPriority::Medium,
                "controller.unclean_restart",
                format!("the previous controller run ended without a shutdown{when}; no session was running"),
            )
            .await;
        }
        for id in &p.interrupted_sessions {
            self.alarm(
                Some(id),
                None,
                None,
                AlarmPriority::High,
                "session.interrupted",
                format!(
                    "session {id} was interrupted: the previous controller run ended without a shutdown{when}; its devices stopped when their leases lapsed, and what it delivered is in the audit log"
                ),
            )
            .await;
        }
    }

    async fn alarm(
        &mut self,
        session: Option<&str>,
        device: Option<&str>,
        channel: Option<&str>,
        p: AlarmPriority,
        rule: &str,
        reason: String,
    ) {
        // Commands queued so far (a stop, typically) go out before the alarm's own work.
        self.flush().await;
        let severity = match p {
            AlarmPriority::Low => Severity::Info,
            AlarmPriority::Medium => Severity::Warning,
            AlarmPriority::High => Severity::Critical,
        };
        let stamp = self.seq.next();
        let msg = AlarmMessage {
            seq: stamp.seq,
            ts_ms: stamp.ts_ms,
            priority: p,
            rule: rule.to_string(),
            reason,
            session: session.map(str::to_string),
            device: device.map(str::to_string),
            channel: channel.map(str::to_string),
        };
        let mut e = Entry::new(
            Actor::Controller,
            Event::Alarm {
                code: rule.to_string(),
                severity,
            },
        )
        .outcome(Outcome::Warning)
        .payload(serde_json::to_value(&msg).unwrap_or(serde_json::Value::Null));
        if let Some(s) = session {
            e = e.session(s);
        }
        if let Some(d) = device {
            e = e.device(d);
        }
        self.note(e);
        if let Some(s) = session.and_then(|id| self.stations.get_mut(id)) {
            s.counters.alarms += 1;
        }
        match p {
            AlarmPriority::High => tracing::error!(rule, reason = %msg.reason, "alarm"),
            AlarmPriority::Medium => tracing::warn!(rule, reason = %msg.reason, "alarm"),
            AlarmPriority::Low => tracing::info!(rule, reason = %msg.reason, "alarm"),
        }
        if self
            .bus
            .publish_as(TopicKind::Alarm, &self.topics.alarm(), &msg)
            .await
            .is_err()
        {
            self.stats.publish_failures += 1;
        }
        let _ = self.events.send(ControllerEvent::Alarm(msg));
    }

    // ---------------------------------------------------------------------------------
    // Bus
    // ---------------------------------------------------------------------------------

    async fn on_bus(&mut self, ev: BusEvent) {
        match ev {
            BusEvent::Connected { connection, .. } => {
                self.connected = true;
                self.audit_connection(true, format!("connection {connection}"));
                let _ = self
                    .events
                    .send(ControllerEvent::Broker { connected: true });
                // A restarted broker may have lost its retained messages.
                let ids: Vec<String> = self.stations.keys().cloned().collect();
                for id in ids {
                    self.publish_report(&id).await;
                    self.publish_status(&id).await;
                }
            }
            BusEvent::Disconnected { error, .. } => {
                if self.connected {
                    self.connected = false;
                    self.audit_connection(false, error.clone());
                    let _ = self
                        .events
                        .send(ControllerEvent::Broker { connected: false });
                    // Devices stop by themselves within a lease period; the sessions hold
                    // until an operator decides (resuming is never automatic).
                    let running: Vec<String> = self
                        .stations
                        .iter()
                        .filter(|(_, s)| s.state == SessionState::Running)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for id in running {
                        self.pause(&id, &format!("broker connection lost: {error}"))
                            .await;
                    }
                }
            }
            BusEvent::PublishRefused { reason } | BusEvent::SubscribeRefused { reason } => {
                self.alarm(
                    None,
                    None,
                    None,
                    AlarmPriority::Medium,
                    "mqtt.refused",
                    format!("the broker refused: {reason}"),
                )
                .await;
            }
            BusEvent::Rejected(err) => {
                self.stats.rejected_inbound += 1;
                tracing::warn!(error = %err, "inbound message rejected");
                self.audit_rejection("mqtt.invalid_payload", err.to_string());
            }
            BusEvent::Message { message, .. } => match message {
                Inbound::Telemetry(t) => self.on_telemetry(t).await,
                Inbound::Ack(a) => self.on_ack(a).await,
                Inbound::Estop(e) => {
                    let reason = if e.reason.is_empty() {
                        format!("e-stop input from panel {}", e.panel)
                    } else {
                        e.reason.clone()
                    };
                    self.estop(&e.panel, &reason).await;
                }
                // Not subscribed to: the controller's own messages and others'.
                _ => {}
            },
        }
    }

    fn audit_connection(&mut self, connected: bool, detail: String) {
        let e = Entry::new(
            Actor::Controller,
            Event::BrokerConnection {
                broker: self.bus.topics().root().to_string(),
                connected,
            },
        )
        .outcome(if connected {
            Outcome::Ok
        } else {
            Outcome::Failed
        })
        .payload(serde_json::json!({ "detail": detail }));
        self.note(e);
    }

    /// Records what happened (an ack, an alarm, a decision already acted on, an operator act,
    /// a session's end): group commit, no wait. The loop never waits on the disk for these:
    /// on a 250 ms disk one e-stop's records held every other station's loop for 709 ms
    /// while they were written one by one. The writer commits in order, so a record noted
    /// here is on disk before any command queued after it is published (a command waits for
    /// its own commit). A crash within the few milliseconds before the commit can lose it;
    /// a lost session end makes the next start report that session as interrupted, the
    /// cautious reading. A log that is gone is reported here and stops every source; a
    /// record the disk refuses is logged by the writer, and the next command's commit fails
    /// the same way and stops every source (`on_audited`).
    fn note(&mut self, e: Entry) {
        if let Err(err) = self.audit.append_queued(e) {
            self.stats.audit_failures += 1;
            tracing::error!(error = %err, "audit append failed");
            self.audit_failed(err.to_string());
        }
    }

    /// Remembers the first audit failure; the loop acts on it (`on_audit_failure`) once the
    /// current input is handled.
    fn audit_failed(&mut self, why: String) {
        if self.audit_broken.is_none() && self.audit_failure.is_none() {
            self.audit_failure = Some(why);
        }
    }

    /// The audit log cannot be written (a full disk, a lost directory): nothing more may be
    /// delivered that the log cannot show. Every source of every session is stopped (stops go
    /// out whether or not they are audited), a high alarm is raised, and from now on no energy
    /// command is sent.
    async fn on_audit_failure(&mut self) {
        let Some(why) = self.audit_failure.take() else {
            return;
        };
        self.audit_broken = Some(why.clone());
        tracing::error!(error = %why, "the audit log cannot be written: stopping every source");
        self.estop(
            "controller",
            &format!("the audit log cannot be written: {why}"),
        )
        .await;
        self.alarm(
            None,
            None,
            None,
            AlarmPriority::High,
            "audit.unavailable",
            format!(
                "the audit log cannot be written ({why}): every source was stopped, and no energy command will be sent until the controller is restarted on a writable log"
            ),
        )
        .await;
    }

    /// Audits a rejected inbound message, at most [`REJECTS_AUDITED_PER_S`] a second one by
    /// one; the rest are summed into the next audited one.
    fn audit_rejection(&mut self, code: &str, detail: String) {
        let second = wall_clock_ms() / 1000;
        if self.reject_window.0 != second {
            self.reject_window = (second, 0);
        }
        self.reject_window.1 += 1;
        if self.reject_window.1 > REJECTS_AUDITED_PER_S {
            return;
        }
        let e = Entry::new(
            Actor::Controller,
            Event::Alarm {
                code: code.to_string(),
                severity: Severity::Warning,
            },
        )
        .outcome(Outcome::Rejected)
        .payload(serde_json::json!({
            "detail": detail,
            "rejected_total": self.stats.rejected_inbound + self.stats.unknown_device,
        }));
        self.note(e);
    }

    /// A device of an ended session says it is still delivering. Its session stopped every
    /// source when it ended; well after that, this is a device not obeying: a high-priority
    /// alarm (once per source), audited, and another stop.
    async fn delivering_after_session(&mut self, t: &DeviceTelemetry) {
        let grace = self.stop_grace_ms;
        let key = (t.device.clone(), t.channel.clone());
        // The most recent session that had the device.
        let Some(id) = self
            .stations
            .iter()
            .filter(|(_, s)| s.has_device(&t.device))
            .max_by_key(|(k, _)| self.station_numbers.get(*k).copied().unwrap_or(0))
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        let Some(s) = self.stations.get_mut(&id) else {
            return;
        };
        let stopped = s.stopped_at.get(&key).copied();
        if stopped.is_some_and(|at| t.ts_ms <= at.saturating_add(grace))
            || !s.ignoring.insert(key.clone())
        {
            return;
        }
        let reason = format!(
            "device {} channel {} is still delivering after session {id} ended: the device is not obeying stops or leases",
            t.device, t.channel
        );
        self.audit_decision(
            &id,
            &t.device,
            rules::RUN_STOP_IGNORED.id,
            AuditDecision::Stop,
            serde_json::json!({"channel": t.channel, "reason": reason, "source": rules::RUN_STOP_IGNORED.source, "telemetry": t}),
        );
        self.stop_source(Some(&id), &t.device, &t.channel, reason.clone())
            .await;
        self.alarm(
            Some(&id),
            Some(&t.device),
            Some(&t.channel),
            AlarmPriority::High,
            rules::RUN_STOP_IGNORED.id,
            reason,
        )
        .await;
    }

    /// A valid message from a device no live session uses: ignored when the device is one
    /// of the clinic's (an idle device still reports), rejected and audited otherwise.
    fn not_in_session(&mut self, device: &str, what: &str) {
        if self.known_devices.contains(device) {
            self.stats.idle_device += 1;
            return;
        }
        self.stats.unknown_device += 1;
        self.audit_rejection(
            "mqtt.unknown_device",
            format!("{what} from device {device:?}, which this controller does not know"),
        );
    }

    /// Refuses (counts and audits) telemetry stamped far from now or older in sequence than
    /// what the device already sent: a replayed or forged message must not reach the
    /// governor, where an old "cool skin" reading could stand in for a hot one.
    ///
    /// A device that restarts numbers its messages from 1 again (the SDK's and simulator's
    /// `Sequencer`): seq 1 is accepted and audited as a restart.
    fn telemetry_in_order(&mut self, t: &DeviceTelemetry) -> bool {
        let now = wall_clock_ms();
        let skew = if t.ts_ms > now.saturating_add(MAX_TELEMETRY_AHEAD_MS) {
            Some(format!(
                "{} ms ahead of the controller's clock (at most {MAX_TELEMETRY_AHEAD_MS} ms)",
                t.ts_ms - now
            ))
        } else if now.saturating_sub(t.ts_ms) > MAX_TELEMETRY_AGE_MS {
            Some(format!(
                "{} ms old on arrival (at most {MAX_TELEMETRY_AGE_MS} ms)",
                now.saturating_sub(t.ts_ms)
            ))
        } else {
            None
        };
        if let Some(why) = skew {
            self.stats.rejected_inbound += 1;
            self.audit_rejection(
                "mqtt.clock_skew",
                format!(
                    "telemetry from device {} channel {} (seq {}) stamped {why}: refused",
                    t.device, t.channel, t.seq
                ),
            );
            return false;
        }
        match self.last_telemetry.get(&t.device).copied() {
            // Seq 1 after a later number is a restart; seq 1 twice is a duplicate.
            Some((last_seq, _)) if t.seq <= last_seq && !(t.seq == 1 && last_seq > 1) => {
                self.stats.rejected_inbound += 1;
                self.audit_rejection(
                    "mqtt.out_of_sequence",
                    format!(
                        "telemetry from device {} channel {} has seq {}, not after {last_seq} already received: a duplicate or a replay, refused",
                        t.device, t.channel, t.seq
                    ),
                );
                false
            }
            last => {
                if let Some((last_seq, _)) = last
                    && t.seq <= last_seq
                {
                    self.note(
                        Entry::new(
                            Actor::Device {
                                id: t.device.clone(),
                            },
                            Event::Alarm {
                                code: "mqtt.sequence_restart".to_string(),
                                severity: Severity::Info,
                            },
                        )
                        .device(&t.device)
                        .payload(serde_json::json!({
                            "detail": format!("device {} numbers its messages from 1 again (after {last_seq}): it restarted", t.device),
                        })),
                    );
                }
                self.last_telemetry
                    .insert(t.device.clone(), (t.seq, t.ts_ms));
                true
            }
        }
    }

    fn owner(&self, device: &str) -> Option<String> {
        let owner = self.device_owner.get(device).cloned();
        // The index must say what a scan of the sessions says; the tests (debug builds)
        // check that on every message.
        debug_assert_eq!(
            owner,
            self.stations
                .iter()
                .find(|(_, s)| !s.state.is_final() && s.has_device(device))
                .map(|(k, _)| k.clone()),
            "device_owner disagrees with the sessions about {device}"
        );
        owner
    }

    async fn on_telemetry(&mut self, t: DeviceTelemetry) {
        let Some(id) = self.owner(&t.device) else {
            if t.delivering {
                self.delivering_after_session(&t).await;
            }
            self.not_in_session(&t.device, "telemetry");
            return;
        };
        if !self.telemetry_in_order(&t) {
            return;
        }
        if let Err(e) = self.audit.append_telemetry_typed(&t.device, Some(&id), &t) {
            self.stats.audit_failures += 1;
            tracing::error!(error = %e, "telemetry not audited");
        }
        let now = Instant::now();
        let speed = u64::from(self.speed);
        let grace = self.stop_grace_ms;
        let Some(s) = self.stations.get_mut(&id) else {
            return;
        };
        let ts = s.clock.at(now);
        let Some(sup) = s.supervisor.as_mut() else {
            return;
        };
        // The device's stamp says how old the reading is (device and controller clocks are
        // both wall clocks; a device clock ahead counts as age 0). On the session clock that
        // age is `speed` times longer, as the staleness limit is.
        let age_ms = wall_clock_ms().saturating_sub(t.ts_ms);
        let measured_at_ms = ts.saturating_sub(age_ms.saturating_mul(speed));
        let sample = modalis_governor::Telemetry {
            device_id: t.device.clone(),
            channel: t.channel.clone(),
            measured_at_ms,
            measurement: t.measurement,
        };
        let key = (t.device.clone(), t.channel.clone());
        // A measured output power is compared with the setpoint the supervisor admitted last,
        // so it must describe that setpoint: a sample under an older lease was measured
        // before the device applied the command, and one saying "delivering" just after a
        // stop was measured before the stop arrived. Such samples are not evidence of a fault
        // (the stop-ignored check below handles a stop that never takes). Skin temperature
        // and impedance describe the patient, whatever the command: always observed.
        let before_command = matches!(t.measurement, modalis_sdk::Measurement::OpticalPowerMw(_))
            && if sup.is_energised(&t.device, &t.channel) {
                let want = s.set_lease.get(&key).copied().unwrap_or(0);
                t.lease_id.is_none_or(|l| l < want)
            } else {
                t.delivering
                    && s.stopped_at
                        .get(&key)
                        .is_some_and(|&at| t.ts_ms <= at.saturating_add(grace))
            };
        let actions = if before_command {
            Vec::new()
        } else {
            sup.observe(&sample, ts)
        };
        // The closed loop sees only readings that describe the setpoint now running.
        let feed_loop = !before_command;
        // The supervisor's stops (this very sample may have tripped the source) go out
        // first; only then is the sample judged against them.
        self.carry_out(Some(&id), actions, ts).await;
        let Some(s) = self.stations.get_mut(&id) else {
            return;
        };
        let energised = s
            .supervisor
            .as_ref()
            .is_some_and(|sup| sup.is_energised(&t.device, &t.channel));
        // A device saying it delivers while the controller has it stopped, well after the
        // stop went out (or with no command at all): it is not obeying.
        let ignoring = t.delivering
            && !energised
            && s.stopped_at
                .get(&key)
                .is_none_or(|&at| t.ts_ms > at.saturating_add(grace))
            && !s.ignoring.contains(&key);
        if ignoring {
            if let Some(s) = self.stations.get_mut(&id) {
                s.ignoring.insert(key.clone());
            }
            let reason = format!(
                "device {} channel {} is still delivering after it was stopped: the device is not obeying stops or leases",
                t.device, t.channel
            );
            self.alarm(
                Some(&id),
                Some(&t.device),
                Some(&t.channel),
                AlarmPriority::High,
                rules::RUN_STOP_IGNORED.id,
                reason.clone(),
            )
            .await;
            self.audit_decision(
                &id,
                &t.device,
                rules::RUN_STOP_IGNORED.id,
                AuditDecision::Stop,
                serde_json::json!({"channel": t.channel, "reason": reason, "source": rules::RUN_STOP_IGNORED.source, "telemetry": t}),
            );
            self.estop_station(&id, "controller", &reason).await;
            // One more stop to the disobeying channel, in case only that message was lost.
            self.stop_source(
                Some(&id),
                &t.device,
                &t.channel,
                "still delivering after a stop".into(),
            )
            .await;
        } else if feed_loop {
            self.closed_loop(&id, &t).await;
        }
    }

    /// Feeds a reading to the closed loop of the block whose step is running on its channel
    /// (the plugin's `on-telemetry`, on that block's own instance). Adjustments go the way
    /// every command goes: supervisor (only inside the approved step's envelope), audit,
    /// MQTT. A plugin that fails here (trap, hang, memory) stops its block, or the session,
    /// per the protocol's `on_plugin_fault`; the controller and the other blocks go on.
    async fn closed_loop(&mut self, id: &str, t: &DeviceTelemetry) {
        let now = Instant::now();
        let Some(s) = self.stations.get_mut(id) else {
            return;
        };
        if s.state != SessionState::Running
            || !s
                .supervisor
                .as_ref()
                .is_some_and(|sup| sup.is_energised(&t.device, &t.channel))
        {
            return;
        }
        let ts = s.clock.at(now);
        let Some(st) = s.running_step(&t.device, &t.channel, ts).cloned() else {
            return;
        };
        let Some(lp) = s.loops.get_mut(&st.step.block_id) else {
            return;
        };
        if lp.failed.is_some() {
            return;
        }
        // The plugin sees its step as it planned it: offsets from its block's start.
        let step = modalis_sdk::PlanStep {
            offset_ms: st.start_ms.saturating_sub(lp.start_ms),
            duration_ms: st.end_ms.saturating_sub(st.start_ms),
            channel: st.channel.clone(),
            site: st.site.clone(),
            setpoint: st.setpoint,
            label: st.label.clone(),
        };
        let sample = modalis_sdk::TelemetrySample {
            channel: t.channel.clone(),
            elapsed_ms: ts.saturating_sub(lp.start_ms),
            measurement: t.measurement,
        };
        match lp.plugin.on_telemetry(&step, &sample) {
            Ok(adjustments) => {
                let label = lp.plugin.label().to_string();
                self.adjust(id, &st, &label, adjustments, ts).await;
            }
            Err(e) => {
                let label = lp.plugin.label().to_string();
                self.plugin_fault(id, &st, &label, e.to_string(), ts).await;
            }
        }
    }

    /// Sends a block's closed-loop adjustments that change its channel's setpoint by enough
    /// to matter, each admitted by the supervisor first.
    async fn adjust(
        &mut self,
        id: &str,
        st: &station::Sched,
        plugin: &str,
        adjustments: Vec<modalis_sdk::Adjustment>,
        t: u64,
    ) {
        for adj in adjustments {
            let Some(s) = self.stations.get_mut(id) else {
                return;
            };
            let Some(sup) = s.supervisor.as_mut() else {
                return;
            };
            let d = if adj.channel == st.channel {
                if !material_change(&sup.current(&st.device, &st.channel), &adj.setpoint) {
                    continue;
                }
                let cmd = Command {
                    device_id: st.device.clone(),
                    channel: st.channel.clone(),
                    site: st.site.clone(),
                    setpoint: adj.setpoint,
                    step: st.step.clone(),
                };
                sup.admit(&cmd, t)
            } else {
                // A loop may adjust only the step whose reading it was given.
                modalis_governor::Decision {
                    admission: modalis_governor::Admission::Refuse,
                    rule: rules::RUN_NOT_IN_PLAN.id,
                    reason: format!(
                        "an adjustment for channel {:?} from the loop of {:?}",
                        adj.channel, st.channel
                    )
                    .into(),
                    values: Vec::new(),
                    source: rules::RUN_NOT_IN_PLAN.source,
                    lease: None,
                    at_ms: t,
                }
            };
            if !d.admitted() {
                s.counters.refused += 1;
                let first = s.loops.get_mut(&st.step.block_id).is_some_and(|lp| {
                    lp.refused += 1;
                    lp.refused == 1
                });
                self.audit_decision(
                    id,
                    &st.device,
                    d.rule,
                    AuditDecision::Reject,
                    serde_json::json!({"step": st.step, "plugin": plugin, "adjustment": adj, "reason": d.reason, "values": d.values, "source": d.source}),
                );
                if first {
                    self.alarm(
                        Some(id),
                        Some(&st.device),
                        Some(&st.channel),
                        AlarmPriority::Low,
                        d.rule,
                        format!(
                            "plugin {plugin}: closed-loop adjustment of step {} refused ({}); the step goes on at its last admitted setpoint, and further refusals are audited without an alarm",
                            st.step, d.reason
                        ),
                    )
                    .await;
                }
                continue;
            }
            match (adj.setpoint, d.lease) {
                (Setpoint::Off, _) => {
                    self.stop_source(
                        Some(id),
                        &st.device,
                        &st.channel,
                        format!("step {}: off by its closed loop", st.step),
                    )
                    .await;
                }
                (sp, Some(lease)) => {
                    let grant = self.grant(id, &lease, t);
                    if let Some(s) = self.stations.get_mut(id) {
                        let key = (st.device.clone(), st.channel.clone());
                        s.set_lease.insert(key.clone(), grant.id);
                        s.leases.insert(key, lease);
                    }
                    self.send(
                        Some(id),
                        &st.device,
                        &st.channel,
                        Some(StepRef::from(&st.step)),
                        CommandAction::Set {
                            setpoint: sp,
                            lease: grant,
                        },
                        None,
                    );
                }
                (_, None) => {
                    tracing::error!(step = %st.step, "adjustment admitted without a lease: not sent");
                }
            }
        }
    }

    /// A block's plugin failed in its closed loop: the block stops (its energised channels
    /// now, its later steps never), or the whole session does, per the protocol. A medium
    /// alarm: the source is already safe, but the operator must know the therapy changed.
    async fn plugin_fault(
        &mut self,
        id: &str,
        st: &station::Sched,
        plugin: &str,
        why: String,
        t: u64,
    ) {
        let block = st.step.block_id.clone();
        let Some(s) = self.stations.get_mut(id) else {
            return;
        };
        let policy = s.on_plugin_fault;
        if let Some(lp) = s.loops.get_mut(&block) {
            lp.failed = Some(why.clone());
            // Drop the failed instance now; nothing of it is called again.
            lp.plugin = lp.plugin.fork();
        }
        // The block's channels that are running one of its steps now.
        let channels: Vec<(String, String)> = s
            .supervisor
            .as_ref()
            .map(|sup| sup.energised())
            .unwrap_or_default()
            .into_iter()
            .filter(|(d, c)| {
                s.running_step(d, c, t)
                    .is_some_and(|r| r.step.block_id == block)
            })
            .collect();
        let stops = match policy {
            PluginFaultPolicy::StopBlock => "its block was stopped",
            PluginFaultPolicy::StopSession => "the session was stopped (on_plugin_fault)",
        };
        let reason =
            format!("block {block}: plugin {plugin} failed mid-session and {stops}: {why}");
        tracing::error!(session = id, %block, %plugin, error = %why, "plugin fault mid-session");
        self.audit_decision(
            id,
            &st.device,
            rules::RUN_PLUGIN_FAULT.id,
            AuditDecision::Stop,
            serde_json::json!({"block": block, "plugin": plugin, "error": why, "policy": format!("{policy:?}"), "channels": channels, "source": rules::RUN_PLUGIN_FAULT.source}),
        );
        if let Some(sup) = self
            .stations
            .get_mut(id)
            .and_then(|s| s.supervisor.as_mut())
        {
            for (d, c) in &channels {
                let _ = sup.admit(&off_command(d, c), t);
            }
        }
        for (d, c) in &channels {
            self.stop_source(
                Some(id),
                d,
                c,
                format!("{}: {reason}", rules::RUN_PLUGIN_FAULT.id),
            )
            .await;
        }
        self.flush().await;
        self.alarm(
            Some(id),
            Some(&st.device),
            None,
            AlarmPriority::Medium,
            rules::RUN_PLUGIN_FAULT.id,
            reason.clone(),
        )
        .await;
        if policy == PluginFaultPolicy::StopSession {
            self.stop_all(id, &reason).await;
            self.transition(
                id,
                SessionEvent::Abort {
                    reason: reason.clone(),
                },
                Some(reason),
            )
            .await;
        }
    }

    async fn on_ack(&mut self, a: CommandAck) {
        let pending = self.pending.remove(&a.command_id);
        let Some(p) = pending else {
            if self.owner(&a.device).is_none() {
                self.not_in_session(&a.device, "ack");
            } else {
                // A redelivered ack (QoS 1) or one for a command of an ended session.
                self.stats.unknown_acks += 1;
            }
            return;
        };
        if p.device != a.device || p.channel != a.channel {
            self.stats.rejected_inbound += 1;
            self.audit_rejection(
                "mqtt.ack_mismatch",
                format!(
                    "ack for {} names {}/{}, the command went to {}/{}",
                    a.command_id, a.device, a.channel, p.device, p.channel
                ),
            );
            return;
        }
        let outcome = match a.outcome {
            AckOutcome::Accepted => Outcome::Ok,
            AckOutcome::Rejected => Outcome::Rejected,
            AckOutcome::Expired => Outcome::Warning,
        };
        let mut e = Entry::new(
            Actor::Device {
                id: a.device.clone(),
            },
            Event::CommandAck {
                command_id: a.command_id.clone(),
            },
        )
        .device(&a.device)
        .outcome(outcome)
        .payload(serde_json::to_value(&a).unwrap_or(serde_json::Value::Null));
        if let Some(s) = &p.session {
            e = e.session(s);
        }
        self.note(e);
        if a.outcome == AckOutcome::Accepted || !p.energy {
            return;
        }
        // The device is not delivering what the supervisor admitted: tell the supervisor the
        // source is off, so its picture matches the device's.
        let Some(id) = p.session else { return };
        let now = Instant::now();
        if let Some(s) = self.stations.get_mut(&id)
            && let Some(sup) = s.supervisor.as_mut()
        {
            let t = s.clock.at(now);
            let _ = sup.admit(&off_command(&a.device, &a.channel), t);
            s.leases.remove(&(a.device.clone(), a.channel.clone()));
            s.stopped_at
                .entry((a.device.clone(), a.channel.clone()))
                .or_insert_with(wall_clock_ms);
        }
        let what = match a.outcome {
            AckOutcome::Expired => "its lease had lapsed; it stopped by itself",
            _ => "it refused the command",
        };
        self.alarm(
            Some(&id),
            Some(&a.device),
            Some(&a.channel),
            AlarmPriority::Medium,
            "device.ack",
            format!(
                "device {} channel {} is not delivering: {what}{}",
                a.device,
                a.channel,
                a.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
        )
        .await;
    }

    // ---------------------------------------------------------------------------------
    // Sessions
    // ---------------------------------------------------------------------------------

    async fn on_request(&mut self, r: Request) {
        match r {
            Request::Prepare {
                protocol,
                protocol_text_sha256,
                session,
                reply,
            } => {
                let r = self
                    .prepare(&protocol, &protocol_text_sha256, session)
                    .await;
                let _ = reply.send(r);
            }
            Request::Session {
                op,
                session,
                who,
                reply,
            } => {
                let r = match op {
                    Op::Arm => self.arm(&session, &who).await,
                    Op::Start => self.start(&session, &who).await,
                    Op::Resume => self.resume(&session, &who).await,
                    Op::Pause => self.pause_request(&session, &who).await,
                    Op::Abort => self.abort(&session, &who).await,
                };
                let _ = reply.send(r);
            }
            Request::Estop {
                source,
                reason,
                reply,
            } => {
                self.estop(&source, &reason).await;
                let _ = reply.send(());
            }
            Request::Snapshot { session, reply } => {
                let _ = reply.send(self.snapshot(&session));
            }
            Request::Stats { reply } => {
                let mut st = self.stats;
                st.dropped_inbound = self.bus.stats().dropped_inbound;
                let _ = reply.send(st);
            }
        }
    }

    async fn prepare(
        &mut self,
        protocol: &Protocol,
        protocol_sha256: &str,
        session: Option<String>,
    ) -> Result<Prepared, ControllerError> {
        let id = match session {
            Some(id) => id,
            None => format!("session-{}", self.sessions_created + 1),
        };
        check_id("session", &id).map_err(|e| ControllerError::SessionId {
            id: id.clone(),
            reason: e.to_string(),
        })?;
        if self.stations.contains_key(&id) {
            return Err(ControllerError::SessionId {
                id,
                reason: "a session with this id exists on this controller".into(),
            });
        }
        for p in protocol.devices.values() {
            if let Some(other) = self.owner(&p.id) {
                return Err(ControllerError::DeviceBusy {
                    device: p.id.clone(),
                    session: other,
                });
            }
        }
        let mut st = station::prepare(protocol, &mut self.plugins, self.speed)?;
        self.sessions_created += 1;
        self.station_numbers
            .insert(id.clone(), self.sessions_created);
        let profiles_json = serde_json::to_string(&st.profiles).unwrap_or_default();
        st.state = machine::next(st.state, &SessionEvent::Planned)?;
        let report: serde_json::Value =
            serde_json::from_str(&st.precheck.report.to_json()).unwrap_or(serde_json::Value::Null);
        // The protocol, every step's pre-check verdict and the dose report go on record in
        // one group commit, all or none: one write-ahead wait instead of one per step. Per
        // step, a 150-record station held the controller loop (and every other station's step
        // starts) for 27-67 ms (`MODALIS_BENCH_ONLY=scale`, BENCHMARKS.md).
        let mut entries = Vec::with_capacity(st.precheck.steps.len() + 2);
        entries.push(
            Entry::new(
                Actor::Controller,
                Event::ProtocolLoaded {
                    protocol_id: protocol.name.clone(),
                    protocol_sha256: protocol_sha256.to_string(),
                },
            )
            .session(&id)
            .payload(serde_json::json!({
                "file": protocol.path.display().to_string(),
                "patient": protocol.patient.id,
                "devices": st.profiles.iter().map(|p| &p.id).collect::<Vec<_>>(),
                "profiles_sha256": sha256_hex(profiles_json.as_bytes()),
                "speed": self.speed,
            })),
        );
        for v in &st.precheck.steps {
            let verdict = match v.verdict {
                modalis_governor::Verdict::Allow => modalis_audit::Verdict::Pass,
                modalis_governor::Verdict::AllowWithWarning | modalis_governor::Verdict::Clamp => {
                    modalis_audit::Verdict::Warn
                }
                modalis_governor::Verdict::Refuse => modalis_audit::Verdict::Fail,
            };
            entries.push(
                Entry::new(
                    Actor::Controller,
                    Event::PreCheck {
                        check: v.step.to_string(),
                        verdict,
                    },
                )
                .session(&id)
                .device(&v.device_id)
                .payload(serde_json::to_value(v).unwrap_or(serde_json::Value::Null)),
            );
        }
        entries.push(
            Entry::new(Actor::Controller, Event::DoseReport)
                .session(&id)
                .payload(report.clone()),
        );
        for written in self.audit.append_batch(entries) {
            written?;
        }
        self.known_devices
            .extend(st.profiles.iter().map(|p| p.id.clone()));
        let armable = st.precheck.can_arm();
        let prepared = Prepared {
            session: id.clone(),
            protocol: st.protocol.clone(),
            armable,
            report_table: st.precheck.report.to_string(),
            report: report.clone(),
            blocks: st.blocks.clone(),
            total_ms: st.total_ms,
            steps: st.steps.len(),
        };
        st.report = report;
        for p in &st.profiles {
            self.device_owner.insert(p.id.clone(), id.clone());
        }
        self.stations.insert(id.clone(), st);
        self.publish_report(&id).await;
        let reason = (!armable).then(|| "the governor's pre-check refused a step".to_string());
        self.transition(&id, SessionEvent::Checked { armable }, reason)
            .await;
        Ok(prepared)
    }

    async fn arm(&mut self, id: &str, operator: &str) -> Result<(), ControllerError> {
        let s = self
            .stations
            .get_mut(id)
            .ok_or_else(|| ControllerError::UnknownSession(id.to_string()))?;
        let ev = SessionEvent::Arm {
            operator: operator.to_string(),
        };
        machine::next(s.state, &ev)?;
        let mut sup = s
            .governor
            .arm(&s.precheck, 0)
            .map_err(|e| ControllerError::Arm(e.to_string()))?;
        // The operator's arming confirms the laser safety inputs (key switch, door, emission
        // indicator) and eyewear for the session's laser devices; the supervisor still
        // enforces the indicator's lead time and drops output the moment one is withdrawn.
        let mut confirmed = Vec::new();
        for p in &s.profiles {
            if p.channels
                .iter()
                .any(|c| c.laser_class().is_some_and(|k| k.needs_controls()))
            {
                for input in [
                    Interlock::KeySwitch,
                    Interlock::DoorClosed,
                    Interlock::EmissionIndicator,
                ] {
                    let _ = sup.interlock(&p.id, input, true, 0);
                }
                confirmed.push(p.id.clone());
            }
        }
        if !confirmed.is_empty() {
            let _ = sup.confirm_eyewear(true, 0);
        }
        s.supervisor = Some(sup);
        let e = Entry::new(
            Actor::Operator {
                id: operator.to_string(),
            },
            Event::OperatorAction {
                action: OperatorAction::Arm,
            },
        )
        .session(id)
        .payload(serde_json::json!({
            "confirmed": "dose report read; key switch, door interlock, emission indicator and eyewear for the laser devices",
            "laser_devices": confirmed,
        }));
        self.audit.append(e)?;
        self.transition(id, ev, None).await;
        Ok(())
    }

    async fn start(&mut self, id: &str, operator: &str) -> Result<(), ControllerError> {
        let ev = SessionEvent::Start {
            operator: operator.to_string(),
        };
        self.legal(id, &ev)?;
        self.operator_action(id, operator, OperatorAction::Start, "start");
        self.run_clock(id);
        self.transition(id, ev, None).await;
        // The first steps may be due at once.
        self.run_station(id).await;
        Ok(())
    }

    /// Starts (or resumes) a session's clock now, with its lease renewals and status.
    fn run_clock(&mut self, id: &str) {
        let now = Instant::now();
        if let Some(s) = self.stations.get_mut(id) {
            s.clock.run(now);
            s.next_renew = Some(now + self.renew_every);
            s.next_status = Some(now);
        }
    }

    async fn resume(&mut self, id: &str, operator: &str) -> Result<(), ControllerError> {
        let ev = SessionEvent::Resume {
            operator: operator.to_string(),
        };
        self.legal(id, &ev)?;
        self.operator_action(id, operator, OperatorAction::Resume, "resume");
        self.run_clock(id);
        let Some(s) = self.stations.get_mut(id) else {
            return Ok(());
        };
        let t = s.clock.at(Instant::now());
        // The steps that were running when the session paused continue for the rest of
        // their window: the held clock means none of their time was spent.
        let mut again: BTreeMap<(String, String), station::Sched> = BTreeMap::new();
        for st in &s.steps[..s.next] {
            if st.start_ms <= t && t < st.end_ms {
                again.insert((st.device.clone(), st.channel.clone()), st.clone());
            }
        }
        self.transition(id, ev, None).await;
        for st in again.into_values() {
            self.emit(id, &st, t, None).await;
        }
        self.run_station(id).await;
        Ok(())
    }

    /// Whether `ev` is legal for session `id` now.
    fn legal(&self, id: &str, ev: &SessionEvent) -> Result<(), ControllerError> {
        let s = self
            .stations
            .get(id)
            .ok_or_else(|| ControllerError::UnknownSession(id.to_string()))?;
        machine::next(s.state, ev)?;
        Ok(())
    }

    async fn pause_request(&mut self, id: &str, reason: &str) -> Result<(), ControllerError> {
        self.legal(
            id,
            &SessionEvent::Pause {
                reason: reason.to_string(),
            },
        )?;
        self.pause(id, reason).await;
        Ok(())
    }

    async fn abort(&mut self, id: &str, reason: &str) -> Result<(), ControllerError> {
        let ev = SessionEvent::Abort {
            reason: reason.to_string(),
        };
        self.legal(id, &ev)?;
        self.operator_action(id, "operator", OperatorAction::Abort, reason);
        self.stop_all(id, &format!("aborted: {reason}")).await;
        self.transition(id, ev, Some(reason.to_string())).await;
        Ok(())
    }

    async fn pause(&mut self, id: &str, reason: &str) {
        let ev = SessionEvent::Pause {
            reason: reason.to_string(),
        };
        let Some(s) = self.stations.get(id) else {
            return;
        };
        if machine::next(s.state, &ev).is_err() {
            return;
        }
        self.stop_all(id, &format!("paused: {reason}")).await;
        if let Some(s) = self.stations.get_mut(id) {
            s.clock.hold(Instant::now());
            s.next_renew = None;
            // Release the closed loops' warm instances (pool slots); what failed is kept.
            for lp in s.loops.values_mut() {
                lp.plugin = lp.plugin.fork();
            }
        }
        self.operator_action(id, "controller", OperatorAction::Pause, reason);
        self.transition(id, ev, None).await;
    }

    /// Stops every energised source of a session (through the supervisor, so it agrees).
    async fn stop_all(&mut self, id: &str, reason: &str) {
        let now = Instant::now();
        let Some(s) = self.stations.get_mut(id) else {
            return;
        };
        let t = s.clock.at(now);
        let mut off = Vec::new();
        if let Some(sup) = s.supervisor.as_mut() {
            for (device, channel) in sup.energised() {
                let _ = sup.admit(&off_command(&device, &channel), t);
                off.push((device, channel));
            }
        }
        for (device, channel) in off {
            self.stop_source(Some(id), &device, &channel, reason.to_string())
                .await;
        }
    }

    async fn estop(&mut self, source: &str, reason: &str) {
        let live: Vec<String> = self
            .stations
            .iter()
            .filter(|(_, s)| !s.state.is_final())
            .map(|(k, _)| k.clone())
            .collect();
        if live.is_empty() {
            let e = Entry::new(
                Actor::Operator {
                    id: source.to_string(),
                },
                Event::OperatorAction {
                    action: OperatorAction::EStop,
                },
            )
            .payload(serde_json::json!({"reason": reason, "sessions": []}));
            self.note(e);
        }
        // Every session's stops first, audited in one batch (one group commit) and published
        // together; only then each session's alarm, records and transition. Stopping one
        // session after another (stops, commit, alarm, transition, next session) put the last
        // of 16 stations' stops ~85 ms after the e-stop (benches/e2e.rs).
        let mut staged = Vec::new();
        for id in live {
            if let Some(st) = self.estop_stops(&id, reason).await {
                staged.push((id, st));
            }
        }
        self.flush().await;
        for (id, st) in staged {
            self.estop_rest(&id, source, reason, st).await;
        }
    }

    /// E-stops one session: the supervisor latches and stops every source; every channel of
    /// the session's devices gets a stop, energised or not (a device that missed a command
    /// must not be left running).
    async fn estop_station(&mut self, id: &str, source: &str, reason: &str) {
        let Some(st) = self.estop_stops(id, reason).await else {
            return;
        };
        self.flush().await;
        self.estop_rest(id, source, reason, st).await;
    }

    /// The first half of an e-stop: latches the supervisor and queues a stop for every
    /// channel of the session's devices (not flushed). `None` when the session has ended.
    async fn estop_stops(&mut self, id: &str, reason: &str) -> Option<EstopStaged> {
        let now = Instant::now();
        let s = self.stations.get_mut(id)?;
        if s.state.is_final() {
            return None;
        }
        let t = s.clock.at(now);
        let actions = s
            .supervisor
            .as_mut()
            .map(|sup| sup.estop(reason, t))
            .unwrap_or_default();
        let channels = s.all_channels();
        // Stops first, before any audit record other than the commands themselves.
        let mut stopped = Vec::new();
        for (device, channel) in &channels {
            self.stop_source(Some(id), device, channel, format!("e-stop: {reason}"))
                .await;
            stopped.push((device.clone(), channel.clone()));
        }
        Some(EstopStaged {
            actions,
            t,
            stopped,
        })
    }

    /// The rest of an e-stop, once its stops went out: the supervisor's other actions, the
    /// record, the alarm and the transition.
    async fn estop_rest(&mut self, id: &str, source: &str, reason: &str, st: EstopStaged) {
        let EstopStaged {
            actions,
            t,
            stopped,
        } = st;
        let rest: Vec<Action> = actions
            .into_iter()
            .filter(|a| !matches!(a, Action::Stop { device_id, channel, .. } if stopped.contains(&(device_id.clone(), channel.clone()))))
            .collect();
        self.carry_out(Some(id), rest, t).await;
        let e = Entry::new(
            Actor::Operator {
                id: source.to_string(),
            },
            Event::OperatorAction {
                action: OperatorAction::EStop,
            },
        )
        .session(id)
        .payload(serde_json::json!({"reason": reason}));
        self.note(e);
        self.alarm(
            Some(id),
            None,
            None,
            AlarmPriority::High,
            rules::RUN_ESTOP.id,
            format!("e-stop from {source}: {reason}"),
        )
        .await;
        self.transition(
            id,
            SessionEvent::EStop {
                source: source.to_string(),
            },
            Some(format!("e-stop from {source}: {reason}")),
        )
        .await;
    }

    fn operator_action(&mut self, id: &str, who: &str, action: OperatorAction, detail: &str) {
        let e = Entry::new(
            Actor::Operator {
                id: who.to_string(),
            },
            Event::OperatorAction { action },
        )
        .session(id)
        .payload(serde_json::json!({ "detail": detail }));
        self.note(e);
    }

    /// Moves a session through the state machine, publishes its status and, when it ends,
    /// records why and releases its devices.
    async fn transition(&mut self, id: &str, ev: SessionEvent, reason: Option<String>) {
        let Some(s) = self.stations.get_mut(id) else {
            return;
        };
        let state = match machine::next(s.state, &ev) {
            Ok(st) => st,
            Err(e) => {
                tracing::warn!(session = id, error = %e, "transition refused");
                return;
            }
        };
        s.state = state;
        if state.is_final() {
            for p in &s.profiles {
                if self.device_owner.get(&p.id).is_some_and(|o| o == id) {
                    self.device_owner.remove(&p.id);
                }
            }
            // The final stops leave before the checkpoint's fsync.
            self.flush().await;
            let Some(s) = self.stations.get_mut(id) else {
                return;
            };
            s.clock.hold(Instant::now());
            s.next_renew = None;
            // Release the closed loops' warm instances (pool slots); what failed is kept.
            for lp in s.loops.values_mut() {
                lp.plugin = lp.plugin.fork();
            }
            let why = reason.clone().unwrap_or_else(|| state.as_str().to_string());
            s.ended = Some(why.clone());
            let counters = s.counters.clone();
            let e = Entry::new(
                Actor::Controller,
                Event::SessionEnded {
                    reason: format!("{state}: {why}"),
                },
            )
            .session(id)
            .outcome(match state {
                SessionState::Completed => Outcome::Ok,
                _ => Outcome::Warning,
            })
            .payload(serde_json::json!({"state": state, "counters": counters}));
            self.note(e);
            // A checkpoint bounds what a power loss can take; its fsync must not hold up the
            // other stations' steps, so the controller does not wait for it.
            let log = self.audit.clone();
            let spawned = std::thread::Builder::new()
                .name("audit-checkpoint".into())
                .spawn(move || {
                    match log.checkpoint() {
                        // Closed: the controller is stopping, and closing checkpoints.
                        Ok(_) | Err(modalis_audit::AuditError::Closed) => {}
                        Err(e) => tracing::error!(error = %e, "audit checkpoint failed"),
                    }
                });
            match spawned {
                Ok(t) => {
                    self.checkpoints.retain(|t| !t.is_finished());
                    self.checkpoints.push(t);
                }
                Err(e) => tracing::error!(error = %e, "could not start the audit checkpoint"),
            }
        }
        self.publish_status(id).await;
        let _ = self.events.send(ControllerEvent::State {
            session: id.to_string(),
            state,
            reason,
        });
    }

    /// Publishes a session's dose report, retained (again after every reconnect: the
    /// broker may have restarted without its retained store, or the first publish may have
    /// come before the connection).
    async fn publish_report(&mut self, id: &str) {
        let Some(s) = self.stations.get(id) else {
            return;
        };
        let stamp = self.seq.next();
        let Ok(topic) = self.topics.dose_report(id) else {
            return;
        };
        let msg = DoseReportMessage {
            seq: stamp.seq,
            ts_ms: stamp.ts_ms,
            session: id.to_string(),
            report: s.report.clone(),
        };
        if self
            .bus
            .publish_as(TopicKind::DoseReport, &topic, &msg)
            .await
            .is_err()
        {
            self.stats.publish_failures += 1;
        }
    }

    async fn publish_status(&mut self, id: &str) {
        let Some(s) = self.stations.get(id) else {
            return;
        };
        let t = s.clock.at(Instant::now());
        let next_step = s.steps.get(s.next).map(|st| NextStep {
            step: StepRef::from(&st.step),
            device: st.device.clone(),
            channel: st.channel.clone(),
            label: st.label.clone(),
            due_in_ms: st.start_ms.saturating_sub(t),
        });
        let progress = if s.total_ms == 0 {
            if s.state == SessionState::Completed {
                100.0
            } else {
                0.0
            }
        } else {
            (t as f64 / s.total_ms as f64 * 100.0).clamp(0.0, 100.0)
        };
        let stamp = self.seq.next();
        let msg = SessionStatus {
            seq: stamp.seq,
            ts_ms: stamp.ts_ms,
            session: id.to_string(),
            state: s.state,
            block: s.current_block(t).map(str::to_string),
            progress_percent: progress,
            elapsed_ms: t,
            total_ms: s.total_ms,
            next_step: if s.state.is_final() { None } else { next_step },
        };
        let Ok(topic) = self.topics.session_status(id) else {
            return;
        };
        if self
            .bus
            .publish_as(TopicKind::SessionStatus, &topic, &msg)
            .await
            .is_err()
        {
            self.stats.publish_failures += 1;
        }
    }

    fn snapshot(&self, id: &str) -> Option<SessionSnapshot> {
        let s = self.stations.get(id)?;
        let mut j = s.counters.jitter_us.clone();
        j.sort_unstable();
        let pct = |p: f64| {
            let i = ((j.len() as f64 - 1.0) * p).round() as usize;
            j.get(i).copied().unwrap_or(0)
        };
        Some(SessionSnapshot {
            session: id.to_string(),
            state: s.state,
            elapsed_ms: s.clock.at(Instant::now()),
            total_ms: s.total_ms,
            emitted: s.next,
            steps: s.steps.len(),
            counters: s.counters.clone(),
            jitter_us: (!j.is_empty())
                .then(|| (pct(0.5), pct(0.99), j.last().copied().unwrap_or(0))),
            ended: s.ended.clone(),
            energised: s
                .supervisor
                .as_ref()
                .map(|sup| sup.energised())
                .unwrap_or_default(),
        })
    }

    async fn shutdown(mut self) -> Result<(), String> {
        let live: Vec<String> = self
            .stations
            .iter()
            .filter(|(_, s)| !s.state.is_final())
            .map(|(k, _)| k.clone())
            .collect();
        for id in live {
            // Every channel, energised or not: nothing may run on after the controller.
            let channels = self
                .stations
                .get(&id)
                .map(Station::all_channels)
                .unwrap_or_default();
            self.stop_all(&id, "controller stopping").await;
            for (d, c) in channels {
                self.stop_source(Some(&id), &d, &c, "controller stopping".into())
                    .await;
            }
            self.transition(
                &id,
                SessionEvent::Abort {
                    reason: "controller stopping".into(),
                },
                Some("controller stopping".into()),
            )
            .await;
        }
        self.flush().await;
        self.settle().await;
        let state = ControllerState {
            seq: self.seq.next().seq,
            ts_ms: wall_clock_ms(),
            controller: self.id.clone(),
            state: Presence::Offline,
            session_counter: self.boot_counter,
            version: env!("CARGO_PKG_VERSION").to_string(),
            plugin_trust: self.plugin_trust,
        };
        let _ = self
            .bus
            .publish_as(TopicKind::State, &self.topics.state(), &state)
            .await;
        let e = Entry::new(
            Actor::Controller,
            Event::ControllerStop {
                reason: "cancelled".into(),
            },
        )
        .payload(serde_json::to_value(self.stats).unwrap_or(serde_json::Value::Null));
        // A log that failed during the run is reported even if the last records fit: the
        // record of this run has a gap, and whoever restarts the controller must know.
        let mut result = match self.audit_broken.as_ref().or(self.audit_failure.as_ref()) {
            Some(why) => Err(format!(
                "audit: the log could not be written during this run: {why}"
            )),
            None => Ok(()),
        };
        // The first failure is the one worth reading; later ones follow from it.
        if let Err(e) = self.audit.append(e)
            && result.is_ok()
        {
            result = Err(format!("audit: {e}"));
        }
        if let Err(e) = self.audit.close()
            && result.is_ok()
        {
            result = Err(format!("audit close: {e}"));
        }
        // A checkpoint thread holds a handle on the log, and with it sled's lock on the
        // directory: the log is released only when they have seen it closed and ended.
        for t in self.checkpoints.drain(..) {
            let _ = t.join();
        }
        // Only now does the MQTT connection go (it flushes what is queued first).
        self.bus_cancel.cancel();
        if let Some(t) = self.bus_task.take() {
            t.join().await;
        }
        result
    }
}

/// The record that energy command `q` was withdrawn unsent, superseded by stop `by`
/// ([`rules::RUN_SUPERSEDED`]); written after `q`'s own record.
fn superseded_entry(q: &Queued, by: &str) -> Entry {
    let payload = serde_json::json!({
        "command_id": q.cmd.command_id,
        "channel": q.cmd.channel,
        "superseded_by": by,
        "reason": "a stop for its channel came while its audit record was being written; it was never sent",
        "source": rules::RUN_SUPERSEDED.source,
    });
    let e = Entry::new(
        Actor::Controller,
        Event::GovernorDecision {
            rule: rules::RUN_SUPERSEDED.id.to_string(),
            decision: AuditDecision::Stop,
        },
    )
    .device(q.cmd.device.clone())
    .outcome(Outcome::Warning)
    .payload(payload);
    match &q.cmd.session {
        Some(s) => e.session(s.clone()),
        None => e,
    }
}

/// Whether a closed-loop adjustment changes a setpoint enough to be sent: another kind, a
/// changed target or waveform, or an output more than 2 % (and more than the device's
/// resolution floor) away. Each command costs a write-ahead audit record and a message; a
/// proportional loop fed 10-20 readings a second would otherwise send one for every
/// reading, for changes no device can resolve.
fn material_change(current: &Setpoint, new: &Setpoint) -> bool {
    fn off(a: f64, b: f64, floor: f64) -> bool {
        (a - b).abs() > (0.02 * b.abs()).max(floor)
    }
    // Every field but the output must be equal; the output must move by enough.
    match (*current, *new) {
        (Setpoint::Heat(mut a), Setpoint::Heat(b)) => {
            let moved = off(b.power_limit_w, a.power_limit_w, 0.05);
            a.power_limit_w = b.power_limit_w;
            a != b || moved
        }
        (Setpoint::Optical(mut a), Setpoint::Optical(b)) => {
            let moved = off(b.power_mw, a.power_mw, 1.0);
            a.power_mw = b.power_mw;
            a != b || moved
        }
        (Setpoint::Electrical(mut a), Setpoint::Electrical(b)) => {
            let moved = off(b.amplitude_ma, a.amplitude_ma, 0.1);
            a.amplitude_ma = b.amplitude_ma;
            a != b || moved
        }
        (a, b) => a != b,
    }
}

/// A stop as the supervisor takes it: an `Off` setpoint, which it always admits without
/// looking at the step or the site (a stop needs neither).
fn off_command(device: &str, channel: &str) -> Command {
    Command {
        device_id: device.to_string(),
        channel: channel.to_string(),
        site: modalis_sdk::BodySite::region(
            modalis_sdk::BodyRegion::Thigh,
            modalis_sdk::Side::Left,
        ),
        setpoint: Setpoint::Off,
        step: GovStepRef {
            block_id: String::new(),
            step_index: 0,
        },
    }
}
