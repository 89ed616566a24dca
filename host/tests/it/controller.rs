//! The session runtime end to end, through real brokers: the controller with the bundled
//! plugins, the device simulator, a watcher subscribed to `modalis/#` as a dashboard would be,
//! and the audit log on disk.
//!
//! Sessions run time-compressed (the speed is in each test); leases and staleness stay in
//! wall time, so the lease bounds below are wall-clock bounds. Every wait is bounded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use modalis::bus::payload::{
    AlarmPriority, CommandAction, EstopInput, Inbound, Presence, SessionState, wall_clock_ms,
};
use modalis::bus::topics::Topics;
use modalis::bus::{Bus, BusConfig, BusEvent, Qos};
use modalis::controller::{Controller, ControllerConfig, ControllerHandle, Prepared};
use modalis::plugin::RuntimeConfig;
use modalis::protocol::Protocol;
use modalis::sim::{Faults, SimHandle, SimOptions, Simulator};
use modalis_audit::{AuditConfig, AuditReader, Event};
use modalis_governor::limits::LEASE_PERIOD_MS;
use modalis_sdk::{Measurement, Setpoint};

use crate::bus::{CONTROLLER_USER, DASHBOARD_USER, DEVICE_USER, TestBroker, WAIT};

/// Slack on wall-clock bounds for a loaded 2-core machine: only scheduling, never protocol
/// time.
const SLACK: Duration = Duration::from_millis(500);

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// A protocol over the example patient and profiles, with these blocks (TOML).
fn protocol_text(blocks: &str) -> String {
    let ex = examples();
    let ex = ex.display();
    format!(
        "[protocol]\nname = \"test\"\n\n[patient]\nfile = \"{ex}/patients/dpn-example.toml\"\n\n\
         [devices]\nheat = \"{ex}/profiles/mire-pads.toml\"\ntens = \"{ex}/profiles/tens-2ch.toml\"\n\
         laser-acu = \"{ex}/profiles/laser-acupuncture-probe.toml\"\n\n{blocks}"
    )
}

/// A protocol binding only the named roles (`heat`, `tens`, `laser-acu`), so that several
/// sessions can share one controller and one simulator.
fn protocol_for(roles: &[&str], blocks: &str) -> String {
    let ex = examples();
    let ex = ex.display();
    let devices: String = roles
        .iter()
        .map(|r| {
            let profile = match *r {
                "heat" => "mire-pads",
                "tens" => "tens-2ch",
                _ => "laser-acupuncture-probe",
            };
            format!("{r} = \"{ex}/profiles/{profile}.toml\"\n")
        })
        .collect();
    format!(
        "[protocol]\nname = \"test\"\n\n[patient]\nfile = \"{ex}/patients/dpn-example.toml\"\n\n\
         [devices]\n{devices}\n{blocks}"
    )
}

const HEAT: &str = r#"
[[block]]
id = "heat-feet"
plugin = "infrared-heat"
device = "heat"
start = { at_s = 0 }
[block.params]
session_minutes = 30
target_skin_temp_c = 39.0
ramp_s = 180
pads = [
    { channel = "pad-1", site = "foot_plantar:left", rated_power_w = 5.0 },
    { channel = "pad-2", site = "foot_dorsum:left", rated_power_w = 5.0 },
]
"#;

const TENS: &str = r#"
[[block]]
id = "tens-legs"
plugin = "tens"
device = "tens"
start = { at_s = 0 }
[block.params]
mode = "acupuncture_like"
frequency_hz = 14
pulse_width_us = 250
amplitude_ma = 25
session_minutes = 30
ramp_up_s = 60
ramp_down_s = 20
electrodes = [
    { channel = "ch1", site = "lower_leg_lateral:left", electrode_area_cm2 = 25 },
    { channel = "ch2", site = "lower_leg_lateral:right", electrode_area_cm2 = 25 },
]
"#;

const LASER_ACU: &str = r#"
[[block]]
id = "laser-acu"
plugin = "laser-acupuncture"
device = "laser-acu"
start = { at_s = 0 }
[block.params]
set = "dpn"
side = "left"
dose_j_per_point = 4.0
probe_power_mw = 200
wavelength_nm = 808
beam_area_cm2 = 1.0
reposition_s = 5
"#;

/// One message as the watcher saw it, and when.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    retained: bool,
    message: Inbound,
}

/// A dashboard: subscribed to everything of the controller, recording what arrives.
struct Watcher {
    seen: Arc<Mutex<Vec<Seen>>>,
    _bus: (modalis::bus::BusHandle, modalis::bus::BusTask),
}

impl Watcher {
    async fn start(
        broker: &TestBroker,
        topics: &Topics,
        id: &str,
        cancel: &CancellationToken,
    ) -> Watcher {
        let mut c = broker.config(id, topics, DASHBOARD_USER);
        c.subscriptions = vec![(topics.all_filter(), Qos::AtLeastOnce)];
        // It sees every message of a compressed run; on a loaded machine the default inbox
        // could fill and drop (by design, counted), which here would read as a missing message.
        c.inbound_capacity = 1 << 16;
        let Bus {
            handle,
            mut inbox,
            task,
        } = Bus::start(c, cancel.clone()).expect("watcher bus");
        handle.wait_connected(WAIT).await.expect("watcher connects");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        tokio::spawn(async move {
            while let Some(ev) = inbox.recv().await {
                if let BusEvent::Message { message, retained } = ev {
                    s.lock().expect("lock").push(Seen {
                        at: Instant::now(),
                        retained,
                        message,
                    });
                }
            }
        });
        Watcher {
            seen,
            _bus: (handle, task),
        }
    }

    fn all(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    /// Every alarm seen so far, one line each, for a failure message that names them.
    fn alarm_lines(&self) -> Vec<String> {
        self.all()
            .iter()
            .filter_map(|s| match &s.message {
                Inbound::Alarm(a) => Some(format!("{:?} {} {}", a.priority, a.rule, a.reason)),
                _ => None,
            })
            .collect()
    }

    async fn wait_for(&self, what: &str, pick: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = self.all().into_iter().find(|s| pick(s)) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the watcher saw no {what} within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Where a rig keeps its files (protocol, plugin cache, audit log) and its turn beside the
/// other tests.
struct Place {
    dir: tempfile::TempDir,
    turn: Turn,
}

impl Place {
    /// A temporary directory on disk, beside the other controller tests.
    async fn shared() -> Place {
        Place {
            dir: tempfile::tempdir().expect("tempdir"),
            turn: Turn::shared().await,
        }
    }
}

/// A rig's turn beside the other tests (`crate::HEAVY`).
#[allow(dead_code)] // held for its drop
enum Turn {
    /// Beside the other controller tests; no browser test meanwhile.
    Shared(tokio::sync::RwLockReadGuard<'static, ()>),
    /// Alone: for a test that loads both cores on purpose (a saturating flood), which would
    /// make the others miss their bounds.
    Alone(tokio::sync::RwLockWriteGuard<'static, ()>),
}

impl Turn {
    async fn shared() -> Turn {
        Turn::Shared(crate::HEAVY.read().await)
    }

    async fn alone() -> Turn {
        Turn::Alone(crate::HEAVY.write().await)
    }
}

/// Broker, simulator, controller and watcher for one test.
struct Rig {
    /// Keeps the browser tests out while this rig runs, or everything else (see `crate::HEAVY`).
    _turn: Turn,
    broker: TestBroker,
    dir: tempfile::TempDir,
    topics: Topics,
    protocol: Protocol,
    text: String,
    sim: Option<SimHandle>,
    sim_cancel: CancellationToken,
    ctl: Option<ControllerHandle>,
    ctl_cancel: CancellationToken,
    watcher: Watcher,
    watch_cancel: CancellationToken,
}

impl Rig {
    /// `text`: a protocol (see [`protocol_text`]), or `None` for the example protocol.
    async fn start(
        broker: TestBroker,
        name: &str,
        text: Option<String>,
        speed: u32,
        faults: BTreeMap<String, Faults>,
    ) -> Rig {
        Rig::start_with(broker, name, text, speed, faults, |_| {}).await
    }

    /// [`Rig::start`] with the controller's configuration changed by `tweak` (an injected
    /// full disk, a small inbox).
    async fn start_with(
        broker: TestBroker,
        name: &str,
        text: Option<String>,
        speed: u32,
        faults: BTreeMap<String, Faults>,
        tweak: impl FnOnce(&mut ControllerConfig),
    ) -> Rig {
        Rig::start_in(
            Place::shared().await,
            broker,
            name,
            text,
            speed,
            |o| o.faults = faults,
            tweak,
        )
        .await
    }

    /// [`Rig::start_with`] in a given [`Place`], with the simulator's options (its faults,
    /// whether its devices obey the e-stop topic) set by `sim`.
    async fn start_in(
        Place { dir, turn }: Place,
        broker: TestBroker,
        name: &str,
        text: Option<String>,
        speed: u32,
        sim: impl FnOnce(&mut SimOptions),
        tweak: impl FnOnce(&mut ControllerConfig),
    ) -> Rig {
        let (file, text) = match text {
            Some(text) => {
                let file = dir.path().join("protocol.toml");
                std::fs::write(&file, &text).expect("protocol written");
                (file, text)
            }
            None => {
                let file = examples().join("protocols/dpn-combined.toml");
                let text = std::fs::read_to_string(&file).expect("example protocol");
                (file, text)
            }
        };
        let protocol = Protocol::load(&file).expect("protocol loads");
        let topics = Topics::new(name).expect("controller id");
        let watch_cancel = CancellationToken::new();
        let watcher = Watcher::start(&broker, &topics, "watcher", &watch_cancel).await;
        let sim_cancel = CancellationToken::new();
        let mut sim_cfg = broker.config("sim", &topics, DEVICE_USER);
        sim_cfg.client_id = format!("{name}-sim");
        let mut options = SimOptions {
            thermal_time_constant: Duration::from_secs(20) / speed,
            ..SimOptions::default()
        };
        sim(&mut options);
        let sim = Simulator::spawn(
            sim_cfg,
            protocol.devices.values().cloned().collect(),
            options,
            sim_cancel.clone(),
        )
        .expect("simulator starts");
        assert!(sim.wait_connected(WAIT).await, "simulated devices connect");
        let ctl_cancel = CancellationToken::new();
        let devices = protocol.devices.values().map(|p| p.id.clone()).collect();
        let ctl = start_controller(
            &broker,
            &topics,
            dir.path(),
            speed,
            devices,
            tweak,
            &ctl_cancel,
        )
        .await;
        Rig {
            _turn: turn,
            broker,
            dir,
            topics,
            protocol,
            text,
            sim: Some(sim),
            sim_cancel,
            ctl: Some(ctl),
            ctl_cancel,
            watcher,
            watch_cancel,
        }
    }

    /// A bare client on the rig's broker with a device's credentials, subscribed to nothing:
    /// a misbehaving device, or someone who should not be there.
    async fn rogue(
        &self,
        name: &str,
        cancel: &CancellationToken,
        tweak: impl FnOnce(&mut BusConfig),
    ) -> Bus {
        let mut c: BusConfig = self.broker.config(name, &self.topics, DEVICE_USER);
        c.subscriptions = vec![];
        tweak(&mut c);
        let bus = Bus::start(c, cancel.clone()).expect("bus");
        bus.handle.wait_connected(WAIT).await.expect("connects");
        bus
    }

    fn ctl(&self) -> &ControllerHandle {
        self.ctl.as_ref().expect("controller running")
    }

    fn sim(&self) -> &SimHandle {
        self.sim.as_ref().expect("simulator running")
    }

    fn audit_dir(&self) -> PathBuf {
        self.dir.path().join("audit")
    }

    /// Prepares, arms and starts the protocol; returns what the operator read.
    async fn run(&self) -> Prepared {
        let p = self
            .ctl()
            .prepare(self.protocol.clone(), &self.text, None)
            .await
            .expect("prepares");
        assert!(p.armable, "{}", p.report_table);
        self.ctl().arm(&p.session, "tester").await.expect("arms");
        self.ctl()
            .start(&p.session, "tester")
            .await
            .expect("starts");
        p
    }

    /// Waits until any channel of `device` delivers.
    async fn energised(&self, device: &str) {
        let mut w = self.sim().watch(device).expect("simulated device");
        tokio::time::timeout(WAIT, w.wait_for(|s| s.any_energised()))
            .await
            .expect("the device starts delivering")
            .expect("simulator running");
    }

    /// Waits for a heat pad reading over the dpn patient's 41 C cut-off (their feet are
    /// insensate, clinical-facts.md) and for the stop of that pad that follows it: the reading,
    /// the stop and the pad's channel.
    async fn over_cutoff_and_its_stop(&self) -> (Seen, Seen, String) {
        let hot = self
            .watcher
            .wait_for("skin temperature over the 41 C cut-off", |s| {
                matches!(&s.message, Inbound::Telemetry(t)
                    if t.device == "mire-pads" && t.delivering && matches!(t.measurement, Measurement::SkinTempC(c) if c > 41.0))
            })
            .await;
        let Inbound::Telemetry(t) = &hot.message else {
            unreachable!()
        };
        let channel = t.channel.clone();
        let stop = self
            .watcher
            .wait_for("the stop", |s| {
                s.at >= hot.at && is_stop_for(s, "mire-pads", &channel)
            })
            .await;
        (hot, stop, channel)
    }

    fn any_energised(&self) -> bool {
        let sim = self.sim();
        sim.devices()
            .iter()
            .any(|d| sim.state(d).is_some_and(|s| s.any_energised()))
    }

    /// Polls until no simulated device delivers; the wall time it took from `since`.
    async fn all_off(&self, since: Instant, within: Duration) -> Duration {
        let deadline = Instant::now() + within + WAIT;
        while self.any_energised() {
            assert!(Instant::now() < deadline, "devices still delivering");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        since.elapsed()
    }

    /// Stops everything after the audit log failed: the controller reports that it could not
    /// close the log cleanly; what was written still verifies.
    async fn finish_after_audit_failure(mut self) -> (PathBuf, tempfile::TempDir) {
        self.ctl_cancel.cancel();
        if let Some(c) = self.ctl.take() {
            let r = tokio::time::timeout(WAIT, c.join())
                .await
                .expect("controller stops");
            let e = r.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("audit"), "the controller's exit: {e:?}");
        }
        self.sim_cancel.cancel();
        if let Some(s) = self.sim.take() {
            tokio::time::timeout(WAIT, s.join())
                .await
                .expect("sim stops");
        }
        self.watch_cancel.cancel();
        let dir = self.audit_dir();
        let report = modalis_audit::verify(&dir).expect("audit log readable");
        // The tail after the last checkpoint may be reported as unconfirmed; the chain itself
        // must be intact.
        assert!(report.records > 0, "{report}");
        drop(self.broker);
        (dir, self.dir)
    }

    /// Stops the controller and the simulator, and checks the audit log verifies.
    async fn finish(mut self) -> (PathBuf, tempfile::TempDir) {
        self.ctl_cancel.cancel();
        if let Some(c) = self.ctl.take() {
            tokio::time::timeout(WAIT, c.join())
                .await
                .expect("controller stops")
                .expect("controller stops cleanly");
        }
        self.sim_cancel.cancel();
        if let Some(s) = self.sim.take() {
            tokio::time::timeout(WAIT, s.join())
                .await
                .expect("sim stops");
        }
        self.watch_cancel.cancel();
        let dir = self.audit_dir();
        let report = modalis_audit::verify(&dir).expect("audit log readable");
        assert!(report.is_ok(), "{report}");
        drop(self.broker);
        (dir, self.dir)
    }
}

async fn start_controller(
    broker: &TestBroker,
    topics: &Topics,
    dir: &Path,
    speed: u32,
    devices: Vec<String>,
    tweak: impl FnOnce(&mut ControllerConfig),
    cancel: &CancellationToken,
) -> ControllerHandle {
    let bus = broker.config("unused", topics, CONTROLLER_USER);
    let mut cfg = ControllerConfig::new(
        topics.controller(),
        bus,
        dir.join("audit"),
        RuntimeConfig::for_tests(&dir.join("cache")),
        modalis::runner::bundled_plugins(),
    );
    cfg.plugin_trust = modalis::controller::PluginTrust::development().expect("dev key");
    cfg.speed = speed;
    cfg.devices = devices;
    tweak(&mut cfg);
    Controller::start(cfg, cancel.clone())
        .await
        .expect("controller starts")
}

/// A message exactly as given, bytes and all.
fn raw(topic: &str, payload: impl Into<Vec<u8>>, qos: Qos) -> modalis::bus::OutboundMessage {
    modalis::bus::OutboundMessage {
        topic: topic.to_string(),
        payload: payload.into(),
        qos,
        retain: false,
    }
}

fn audit_events(dir: &Path) -> Vec<modalis_audit::Record> {
    let r = AuditReader::open(dir).expect("audit log opens");
    r.records().map(|x| x.expect("record reads")).collect()
}

/// A session's alarm records (event and payload), for a failure message that names them.
fn session_alarms<'a>(
    recs: &'a [modalis_audit::Record],
    session: &str,
) -> Vec<(&'a Event, &'a serde_json::Value)> {
    recs.iter()
        .filter(|r| matches!(r.event, Event::Alarm { .. }) && r.session.as_deref() == Some(session))
        .map(|r| (&r.event, &r.payload))
        .collect()
}

fn is_stop_for(s: &Seen, device: &str, channel: &str) -> bool {
    matches!(&s.message, Inbound::Command(c)
        if c.device == device && c.channel == channel && matches!(c.action, CommandAction::Stop { .. }))
}

/// A directory in memory (tmpfs) where the machine has one, else an ordinary temporary one.
///
/// For the whole-protocol runs: they are time-compressed, so a step's slack is its length over
/// the speed (a 5 s step at 100x: 50 ms), and on a shared CI machine a sync of the audit log
/// behind other tests' writes has stalled the loop for 60 ms and more. Those steps are then
/// refused as late (rightly: `run.schedule`), which says nothing about the run. On tmpfs the
/// sync is immediate; the log is still a real sled directory, verified at the end. Durability
/// on a real disk is the crash tests' subject, not this one's.
fn memory_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = tempfile::Builder::new()
            .prefix("modalis-it-")
            .tempdir_in(shm)
    {
        return d;
    }
    tempfile::tempdir().expect("tempdir")
}

async fn demo_protocol(broker: TestBroker) {
    // 100x: the 56 min protocol in 34 s, 50 ms of slack for its shortest (5 s) steps. At 300x
    // (17 ms) CI failed on 60 ms stalls, and even on tmpfs a release build running beside it
    // made steps late; at 100x on tmpfs it passed with that build and a 3 GB `dd` beside it.
    let place = Place {
        dir: memory_tempdir(),
        turn: Turn::shared().await,
    };
    let rig = Rig::start_in(place, broker, "e2e-demo", None, 100, |_| {}, |_| {}).await;
    let p = rig.run().await;
    assert_eq!(p.blocks.len(), 4, "four enabled blocks: {:?}", p.blocks);
    let snap = rig
        .ctl()
        .wait_ended(&p.session, Duration::from_secs(60))
        .await
        .expect("snapshot");
    assert_eq!(snap.state, SessionState::Completed, "{snap:?}");
    assert_eq!(snap.emitted, snap.steps);
    let alarms = rig.watcher.alarm_lines();
    assert_eq!(snap.counters.refused, 0, "{snap:?}; alarms: {alarms:#?}");
    assert_eq!(
        snap.counters.alarms, 0,
        "a clean simulated run raises no alarm: {snap:?}; alarms: {alarms:#?}"
    );
    assert!(snap.energised.is_empty());

    // A dashboard that subscribes now still gets the retained state and session status.
    let late_cancel = CancellationToken::new();
    let late = Watcher::start(&rig.broker, &rig.topics, "late-watcher", &late_cancel).await;
    let state = late
        .wait_for("retained online state", |s| {
            s.retained && matches!(&s.message, Inbound::State(st) if st.state == Presence::Online)
        })
        .await;
    assert!(state.retained);
    late.wait_for("retained completed status", |s| {
        s.retained
            && matches!(&s.message, Inbound::SessionStatus(st)
                if st.session == p.session && st.state == SessionState::Completed && st.progress_percent >= 100.0)
    })
    .await;
    late.wait_for("retained dose report", |s| {
        s.retained && matches!(&s.message, Inbound::DoseReport(d) if d.session == p.session)
    })
    .await;
    late_cancel.cancel();

    // The live watcher saw commands with leases, acks, telemetry of every kind and the
    // status going through the states.
    let seen = rig.watcher.all();
    let count = |f: &dyn Fn(&Inbound) -> bool| seen.iter().filter(|s| f(&s.message)).count();
    // Every step's command (a set, or a stop for an `off` step) names its step.
    assert!(count(&|m| matches!(m, Inbound::Command(c) if c.step.is_some())) >= snap.steps);
    assert!(
        count(
            &|m| matches!(m, Inbound::Command(c) if matches!(c.action, CommandAction::RenewLease { .. }))
        ) > 0
    );
    assert!(count(&|m| matches!(m, Inbound::Ack(_))) > snap.steps);
    for kind in ["skin", "optical", "impedance"] {
        assert!(
            count(
                &|m| matches!(m, Inbound::Telemetry(t) if match t.measurement {
                    Measurement::SkinTempC(_) => kind == "skin",
                    Measurement::OpticalPowerMw(_) => kind == "optical",
                    Measurement::ImpedanceOhm(_) => kind == "impedance",
                })
            ) > 0,
            "no {kind} telemetry"
        );
    }
    for st in [
        SessionState::Checked,
        SessionState::Armed,
        SessionState::Running,
        SessionState::Completed,
    ] {
        // The last one may still be on its way.
        rig.watcher
            .wait_for(
                &format!("{st} status"),
                |s| matches!(&s.message, Inbound::SessionStatus(m) if m.state == st),
            )
            .await;
    }
    let (dir, _keep) = rig.finish().await;
    let recs = audit_events(&dir);
    let commands = recs
        .iter()
        .filter(|r| matches!(r.event, Event::Command { .. }))
        .count();
    let acks = recs
        .iter()
        .filter(|r| matches!(r.event, Event::CommandAck { .. }))
        .count();
    assert!(
        commands >= snap.steps && acks > 0,
        "{commands} commands, {acks} acks"
    );
    // Write-ahead: every command is in the log before its ack.
    let first_ack = recs
        .iter()
        .position(|r| matches!(r.event, Event::CommandAck { .. }));
    let first_cmd = recs
        .iter()
        .position(|r| matches!(r.event, Event::Command { .. }));
    assert!(first_cmd < first_ack);
    assert!(recs.iter().any(
        |r| matches!(&r.event, Event::SessionEnded { reason } if reason.starts_with("completed"))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_protocol_runs_to_completion_on_rumqttd() {
    demo_protocol(TestBroker::embedded().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_protocol_runs_to_completion_on_mosquitto() {
    demo_protocol(TestBroker::mosquitto()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_temperature_stops_that_source_within_one_telemetry_period() {
    let faults = BTreeMap::from([(
        "mire-pads".to_string(),
        Faults {
            // The pads' 5 W limit holds a normal site near 39 C; a site heating ten times
            // faster than the device's model overshoots even after the governor halves the
            // power at the 40 C alarm.
            overheating_gain: Some(10.0),
            ..Faults::default()
        },
    )]);
    let rig = Rig::start(
        TestBroker::embedded().await,
        "e2e-heat",
        Some(protocol_text(HEAT)),
        60,
        faults,
    )
    .await;
    let p = rig.run().await;
    let (hot, stop, channel) = rig.over_cutoff_and_its_stop().await;
    let Inbound::Command(stop_cmd) = &stop.message else {
        unreachable!()
    };
    let stop_id = stop_cmd.command_id.clone();
    let period = SimOptions::default().telemetry_period;
    let took = stop.at.duration_since(hot.at);
    println!("over-temperature: stop {took:?} after the reading (telemetry period {period:?})");
    assert!(took < period, "stop came {took:?} after the hot reading");
    rig.watcher
        .wait_for("the cut-off alarm", |s| {
            matches!(&s.message, Inbound::Alarm(a) if a.rule == "run.skin_temp_cutoff" && a.priority == AlarmPriority::High)
        })
        .await;
    // The channel stays off (latched trip): the next readings say not delivering.
    let mut w = rig.sim().watch("mire-pads").expect("device");
    tokio::time::timeout(
        WAIT,
        w.wait_for(|s| s.channel(&channel).is_some_and(|c| !c.energised)),
    )
    .await
    .expect("the pad stops")
    .expect("sim running");
    let alarms = rig.watcher.alarm_lines();
    // The trip is latched on that channel; the session goes on (and is aborted here).
    rig.ctl()
        .abort(&p.session, "test over")
        .await
        .unwrap_or_else(|e| panic!("abort: {e}; alarms: {alarms:#?}"));
    let (dir, _keep) = rig.finish().await;
    let recs = audit_events(&dir);
    assert!(recs.iter().any(|r| matches!(&r.event, Event::GovernorDecision { rule, .. } if rule == "run.skin_temp_cutoff")));
    // The stop went out before its record was on disk (a stop is never held back for the
    // disk), but it was recorded all the same, in the same loop turn: before its ack.
    let recorded = recs
        .iter()
        .position(|r| matches!(&r.event, Event::Command { command_id } if *command_id == stop_id))
        .unwrap_or_else(|| panic!("the stop {stop_id} the pads received is not in the audit log"));
    if let Some(acked) = recs.iter().position(
        |r| matches!(&r.event, Event::CommandAck { command_id, .. } if *command_id == stop_id),
    ) {
        assert!(
            recorded < acked,
            "the stop's ack was recorded before the stop"
        );
    }
}

/// A panel's e-stop over MQTT. `direct`: the devices also obey the e-stop topic themselves
/// (the device contract, the default); else only the controller's stops can stop them.
/// Either way every channel gets an audited stop from the controller and the session ends
/// e-stopped.
async fn estop_on_mqtt(direct: bool) {
    let broker = TestBroker::mosquitto();
    let rig = Rig::start_in(
        Place::shared().await,
        broker,
        &format!("e2e-estop-{}", if direct { "direct" } else { "controller" }),
        Some(protocol_text(&format!("{HEAT}{TENS}"))),
        60,
        |o| o.stop_on_estop = direct,
        |_| {},
    )
    .await;
    let p = rig.run().await;
    rig.energised("mire-pads").await;
    rig.energised("tens-2ch").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rig.any_energised());
    // A panel publishes the e-stop.
    let panel_cancel = CancellationToken::new();
    let mut c = rig.broker.config("panel-1", &rig.topics, DEVICE_USER);
    c.subscriptions = vec![];
    let panel = Bus::start(c, panel_cancel.clone()).expect("panel");
    panel
        .handle
        .wait_connected(WAIT)
        .await
        .expect("panel connects");
    let input = EstopInput {
        seq: 1,
        ts_ms: wall_clock_ms(),
        panel: "panel-1".into(),
        reason: "patient reports pain".into(),
    };
    let pressed = Instant::now();
    panel
        .handle
        .publish(&rig.topics.estop(), &input, Qos::AtLeastOnce, false)
        .await
        .expect("e-stop published");
    let took = rig.all_off(pressed, Duration::from_millis(100)).await;
    println!("e-stop: every source off {took:?} after the press");
    assert!(took <= Duration::from_millis(100), "{took:?}");
    let snap = rig
        .ctl()
        .wait_ended(&p.session, WAIT)
        .await
        .expect("snapshot");
    assert_eq!(snap.state, SessionState::EStopped);
    // Latched: nothing starts again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!rig.any_energised());
    // Who stopped the devices first: they themselves (one e-stop each), or only the
    // controller.
    for device in ["mire-pads", "tens-2ch"] {
        let obeyed = rig.sim().state(device).expect("simulated").estops;
        assert_eq!(obeyed, u64::from(direct), "{device}");
    }
    let channels: Vec<(String, String)> = rig
        .protocol
        .devices
        .values()
        .flat_map(|p| p.channels.iter().map(|c| (p.id.clone(), c.name.clone())))
        .collect();
    panel_cancel.cancel();
    let (dir, _keep) = rig.finish().await;
    let recs = audit_events(&dir);
    assert!(recs.iter().any(|r| matches!(
        &r.event,
        Event::OperatorAction {
            action: modalis_audit::OperatorAction::EStop
        }
    ) && matches!(&r.actor, modalis_audit::Actor::Operator { id } if id == "panel-1")));
    // The controller's audited stop for every channel, whether or not the device had already
    // stopped by itself.
    for (device, channel) in &channels {
        assert!(
            recs.iter().any(|r| matches!(r.event, Event::Command { .. })
                && r.payload["device"] == device.as_str()
                && r.payload["channel"] == channel.as_str()
                && r.payload["action"]["kind"] == "stop"
                && r.payload["action"]["reason"]
                    .as_str()
                    .is_some_and(|x| x.starts_with("e-stop"))),
            "no audited e-stop stop for {device}/{channel}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn estop_on_mqtt_stops_every_source_within_100_ms() {
    estop_on_mqtt(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn estop_on_mqtt_stops_devices_without_the_estop_subscription_within_100_ms() {
    estop_on_mqtt(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_broker_stops_every_source_within_one_lease_period() {
    let mut rig = Rig::start(
        TestBroker::mosquitto(),
        "e2e-broker",
        Some(protocol_text(&format!("{HEAT}{TENS}"))),
        60,
        BTreeMap::new(),
    )
    .await;
    let p = rig.run().await;
    rig.energised("mire-pads").await;
    rig.energised("tens-2ch").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(rig.any_energised());
    let killed = Instant::now();
    rig.broker.mosquitto_mut().kill();
    let took = rig
        .all_off(killed, Duration::from_millis(LEASE_PERIOD_MS))
        .await;
    println!("broker killed: every source off {took:?} later (lease {LEASE_PERIOD_MS} ms)");
    assert!(
        took <= Duration::from_millis(LEASE_PERIOD_MS) + SLACK,
        "{took:?}"
    );
    // The controller noticed and paused: nothing resumes by itself when the broker returns.
    let mut paused = false;
    for _ in 0..200 {
        if rig
            .ctl()
            .snapshot(&p.session)
            .await
            .expect("snapshot")
            .state
            == SessionState::Paused
        {
            paused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(paused, "the session pauses when the broker is lost");
    rig.broker.mosquitto_mut().restart();
    assert!(rig.sim().wait_connected(WAIT).await);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!rig.any_energised(), "nothing restarts without an operator");
    // An operator resumes; output comes back.
    rig.ctl()
        .resume(&p.session, "tester")
        .await
        .expect("resumes");
    rig.energised("mire-pads").await;
    rig.ctl()
        .abort(&p.session, "test over")
        .await
        .expect("abort");
    let (dir, _keep) = rig.finish().await;
    // The audit log records the gap: the connection lost, the session paused, the connection
    // back, in that order.
    let recs = audit_events(&dir);
    let at = |pick: &dyn Fn(&Event) -> bool| recs.iter().position(|r| pick(&r.event));
    let lost = at(&|e| {
        matches!(
            e,
            Event::BrokerConnection {
                connected: false,
                ..
            }
        )
    });
    let back = recs
        .iter()
        .enumerate()
        .skip(lost.unwrap_or(usize::MAX).saturating_add(1))
        .find(|(_, r)| {
            matches!(
                r.event,
                Event::BrokerConnection {
                    connected: true,
                    ..
                }
            )
        })
        .map(|(i, _)| i);
    assert!(
        lost.is_some() && back.is_some(),
        "the gap is not in the audit log: lost {lost:?}, back {back:?}"
    );
}

/// Runs the real `modalis run` binary against simulated devices, stops it with `signal` once
/// the heat pads deliver, and returns how long until every source was off, with the audit
/// log's directory.
async fn controller_process(signal: &str) -> (Duration, tempfile::TempDir, Watcher) {
    let broker = TestBroker::mosquitto();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("protocol.toml");
    let text = protocol_text(&format!("{HEAT}{TENS}"));
    std::fs::write(&file, &text).expect("written");
    let protocol = Protocol::load(&file).expect("loads");
    let topics = Topics::new(modalis::DEFAULT_CONTROLLER_ID).expect("id");
    let watch_cancel = CancellationToken::new();
    let watcher = Watcher::start(&broker, &topics, "watcher", &watch_cancel).await;
    let sim_cancel = CancellationToken::new();
    let mut sim_cfg = broker.config("sim", &topics, DEVICE_USER);
    sim_cfg.client_id = "kill-sim".into();
    let sim = Simulator::spawn(
        sim_cfg,
        protocol.devices.values().cloned().collect(),
        SimOptions::default(),
        sim_cancel.clone(),
    )
    .expect("sim");
    assert!(sim.wait_connected(WAIT).await);
    let TestBroker::Mosquitto(m) = &broker else {
        unreachable!()
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_modalis"))
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .arg("run")
        .arg(&file)
        .args(["--broker", &m.url(), "--username", CONTROLLER_USER.0])
        .env("MODALIS_MQTT_PASSWORD", CONTROLLER_USER.1)
        .args([
            "--operator",
            "tester",
            "--yes",
            "--trust-dev-key",
            "--audit-dir",
        ])
        .arg(dir.path().join("audit"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr")).expect("log file"))
        .spawn()
        .expect("modalis run starts");
    let mut w = sim.watch("mire-pads").expect("device");
    // The `Ref` that `wait_for` returns holds the state's read lock: drop it at once, or
    // the device task can never publish its state again.
    let started = tokio::time::timeout(Duration::from_secs(60), w.wait_for(|s| s.any_energised()))
        .await
        .map(|r| r.is_ok());
    if started != Ok(true) {
        let _ = child.kill();
        let log = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
        panic!("the controller never started the heat pads; its stderr:\n{log}");
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let killed = Instant::now();
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill runs");
    assert!(status.success());
    let exit_deadline = Instant::now() + WAIT;
    while child.try_wait().expect("child status").is_none() {
        assert!(
            Instant::now() < exit_deadline,
            "modalis run did not exit on SIG{signal}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let deadline = killed + Duration::from_millis(LEASE_PERIOD_MS) + SLACK + WAIT;
    while sim
        .devices()
        .iter()
        .any(|d| sim.state(d).is_some_and(|s| s.any_energised()))
    {
        assert!(Instant::now() < deadline, "still delivering");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = killed.elapsed();
    println!(
        "controller SIG{signal}: every source off {took:?} later (lease {LEASE_PERIOD_MS} ms)"
    );
    // Offline: the last will after a kill, the controller's own message after a SIGTERM.
    watcher
        .wait_for(
            "the offline state",
            |s| matches!(&s.message, Inbound::State(st) if st.state == Presence::Offline),
        )
        .await;
    sim_cancel.cancel();
    tokio::time::timeout(WAIT, sim.join())
        .await
        .expect("the simulator stops");
    watch_cancel.cancel();
    // What the controller wrote is intact.
    let report = modalis_audit::verify(&dir.path().join("audit")).expect("readable");
    assert!(report.is_ok(), "{report}");
    assert!(report.records > 0);
    (took, dir, watcher)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_controller_stops_every_source_within_one_lease_period() {
    // SIGKILL: no goodbye, no final stops; only the leases stop the devices.
    let (took, dir, watcher) = controller_process("KILL").await;
    assert!(
        took <= Duration::from_millis(LEASE_PERIOD_MS) + SLACK,
        "{took:?}"
    );
    // Every command a device could have received was in the audit log before it was sent.
    let audit = dir.path().join("audit");
    let recs = audit_events(&audit);
    let logged: std::collections::BTreeSet<&str> = recs
        .iter()
        .filter_map(|r| match &r.event {
            Event::Command { command_id } => Some(command_id.as_str()),
            _ => None,
        })
        .collect();
    let published: Vec<String> = watcher
        .all()
        .into_iter()
        .filter_map(|s| match s.message {
            Inbound::Command(c) => Some(c.command_id),
            _ => None,
        })
        .collect();
    assert!(!published.is_empty());
    let missing: Vec<&String> = published
        .iter()
        .filter(|id| !logged.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "published but not in the audit log: {missing:?}"
    );
    let session = recs
        .iter()
        .find(|r| {
            matches!(
                r.event,
                Event::OperatorAction {
                    action: modalis_audit::OperatorAction::Start
                }
            )
        })
        .and_then(|r| r.session.clone())
        .expect("the session was started");

    // A controller started on the same audit log reports the interrupted session.
    let broker = TestBroker::embedded().await;
    let topics = Topics::new(modalis::DEFAULT_CONTROLLER_ID).expect("id");
    let cancel = CancellationToken::new();
    let mut cfg = ControllerConfig::new(
        topics.controller(),
        broker.config("unused", &topics, CONTROLLER_USER),
        audit.clone(),
        RuntimeConfig::for_tests(&dir.path().join("cache")),
        modalis::runner::bundled_plugins(),
    );
    cfg.plugin_trust = modalis::controller::PluginTrust::development().expect("dev key");
    let ctl = Controller::start(cfg, cancel.clone())
        .await
        .expect("restarts on the same log");
    // The report is the first thing the restarted controller does; a stats round trip
    // through its loop comes after it.
    ctl.stats().await.expect("stats");
    cancel.cancel();
    ctl.join().await.expect("stops");
    let report = modalis_audit::verify(&audit).expect("readable");
    assert!(
        report.is_ok(),
        "the chain across the kill and the restart: {report}"
    );
    let recs = audit_events(&audit);
    assert!(
        recs.iter().any(
            |r| matches!(&r.event, Event::Alarm { code, .. } if code == "session.interrupted")
                && r.session.as_deref() == Some(session.as_str())
        ),
        "no session.interrupted alarm for {session}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_every_source_before_the_controller_exits() {
    let (took, dir, _w) = controller_process("TERM").await;
    // The controller's own stops, not the leases: far sooner than a lease period.
    assert!(
        took < Duration::from_millis(LEASE_PERIOD_MS / 2),
        "{took:?}"
    );
    let recs = audit_events(&dir.path().join("audit"));
    assert!(recs.iter().any(|r| matches!(&r.event, Event::SessionEnded { reason } if reason.contains("controller stopping"))));
    assert!(matches!(
        recs.last().map(|r| &r.event),
        Some(Event::ControllerStop { .. })
    ));
    let report = modalis_audit::verify(&dir.path().join("audit")).expect("readable");
    assert_eq!(
        report.confirmed(),
        report.records,
        "closed with a final checkpoint: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_ignores_stops_raises_a_high_alarm_and_estops_the_session() {
    let faults = BTreeMap::from([(
        "laser-acu-3b".to_string(),
        Faults {
            ignore_stop: true,
            ignore_leases: true,
            ..Faults::default()
        },
    )]);
    let rig = Rig::start(
        TestBroker::embedded().await,
        "e2e-ignore",
        // TENS after the laser keeps the session live when the laser's last stop is ignored.
        Some(protocol_text(&format!(
            "{LASER_ACU}{}",
            TENS.replace("start = { at_s = 0 }", "start = { after = \"laser-acu\" }")
        ))),
        60,
        faults,
    )
    .await;
    let p = rig.run().await;
    let alarm = rig
        .watcher
        .wait_for("the stop-ignored alarm", |s| {
            matches!(&s.message, Inbound::Alarm(a) if a.rule == "run.stop_ignored" && a.priority == AlarmPriority::High)
        })
        .await;
    println!("{alarm:?}");
    let snap = rig
        .ctl()
        .wait_ended(&p.session, WAIT)
        .await
        .expect("snapshot");
    assert_eq!(snap.state, SessionState::EStopped, "{snap:?}");
    let (dir, _keep) = rig.finish().await;
    assert!(audit_events(&dir).iter().any(
        |r| matches!(&r.event, Event::GovernorDecision { rule, .. } if rule == "run.stop_ignored")
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_and_unknown_device_messages_are_rejected_counted_and_audited() {
    let rig = Rig::start(
        TestBroker::embedded().await,
        "e2e-bad",
        Some(protocol_text(TENS)),
        60,
        BTreeMap::new(),
    )
    .await;
    let p = rig.run().await;
    rig.energised("tens-2ch").await;
    let cancel = CancellationToken::new();
    let bus = rig.rogue("intruder", &cancel, |_| {}).await;
    let tele = rig.topics.device_telemetry("tens-2ch").expect("topic");
    let raw = |topic: &str, body: &str| raw(topic, body, Qos::AtLeastOnce);
    bus.handle
        .publish_message(raw(&tele, "{not json"))
        .await
        .expect("sent");
    bus.handle
        .publish_message(raw(&tele, r#"{"seq":1,"ts_ms":1,"device":"tens-2ch","channel":"ch1","measurement":{"kind":"impedance_ohm","value":"low"},"delivering":true,"lease_id":null}"#))
        .await
        .expect("sent");
    let ghost = rig.topics.device_telemetry("ghost").expect("topic");
    bus.handle
        .publish_message(raw(&ghost, r#"{"seq":1,"ts_ms":1,"device":"ghost","channel":"ch1","measurement":{"kind":"impedance_ohm","value":500},"delivering":false,"lease_id":null}"#))
        .await
        .expect("sent");
    let deadline = Instant::now() + WAIT;
    loop {
        let st = rig.ctl().stats().await.expect("stats");
        if st.rejected_inbound >= 2 && st.unknown_device >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "not counted: {st:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The session was not disturbed by any of it.
    let snap = rig.ctl().snapshot(&p.session).await.expect("snapshot");
    assert_eq!(snap.state, SessionState::Running, "{snap:?}");
    rig.ctl()
        .abort(&p.session, "test over")
        .await
        .expect("abort");
    cancel.cancel();
    let (dir, _keep) = rig.finish().await;
    let recs = audit_events(&dir);
    // The bad messages are the intruder's, not the session's: it raised no alarm of its own.
    // (Checked after the audit log is closed so that a failure names the alarms.)
    assert_eq!(
        snap.counters.alarms,
        0,
        "{:#?}",
        session_alarms(&recs, &p.session)
    );
    let codes: Vec<&str> = recs
        .iter()
        .filter_map(|r| match &r.event {
            Event::Alarm { code, .. } => Some(code.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        codes
            .iter()
            .filter(|c| **c == "mqtt.invalid_payload")
            .count()
            >= 2,
        "{codes:?}"
    );
    assert!(codes.contains(&"mqtt.unknown_device"), "{codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_stamped_far_from_now_or_out_of_sequence_is_refused_and_audited() {
    let rig = Rig::start(
        TestBroker::embedded().await,
        "e2e-spoof",
        Some(protocol_text(TENS)),
        60,
        BTreeMap::new(),
    )
    .await;
    let p = rig.run().await;
    rig.energised("tens-2ch").await;
    let cancel = CancellationToken::new();
    let bus = rig.rogue("intruder", &cancel, |_| {}).await;
    let tele = rig.topics.device_telemetry("tens-2ch").expect("topic");
    // The replayed number must be one the controller has seen the device pass: wait for a
    // later reading, and give the controller a moment to take it in.
    rig.watcher
        .wait_for(
            "telemetry from tens-2ch past seq 2",
            |s| matches!(&s.message, Inbound::Telemetry(t) if t.device == "tens-2ch" && t.seq > 2),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now = modalis::bus::payload::wall_clock_ms();
    // Valid readings in every field but their stamps: a minute ahead, two minutes old, and a
    // sequence number the device passed long ago (it has sent acks and telemetry since).
    for (seq, ts) in [
        (1_000_000, now + 60_000),
        (1_000_001, now - 120_000),
        (2, now),
    ] {
        let body = format!(
            r#"{{"seq":{seq},"ts_ms":{ts},"device":"tens-2ch","channel":"ch1","measurement":{{"kind":"impedance_ohm","value":500}},"delivering":true,"lease_id":null}}"#
        );
        bus.handle
            .publish_message(raw(&tele, body, Qos::AtLeastOnce))
            .await
            .expect("sent");
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let st = rig.ctl().stats().await.expect("stats");
        if st.rejected_inbound >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "not refused: {st:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let snap = rig.ctl().snapshot(&p.session).await.expect("snapshot");
    assert_eq!(snap.state, SessionState::Running, "{snap:?}");
    rig.ctl()
        .abort(&p.session, "test over")
        .await
        .expect("abort");
    cancel.cancel();
    let (dir, _keep) = rig.finish().await;
    let recs = audit_events(&dir);
    // The forgeries are the intruder's, not the session's: it raised no alarm of its own.
    assert_eq!(
        snap.counters.alarms,
        0,
        "{:#?}",
        session_alarms(&recs, &p.session)
    );
    let count = |code: &str| {
        recs.iter()
            .filter(|r| matches!(&r.event, Event::Alarm { code: c, .. } if c == code))
            .count()
    };
    assert_eq!(count("mqtt.clock_skew"), 2);
    assert_eq!(count("mqtt.out_of_sequence"), 1);
    // None of the three reached the audit log as a reading.
    let forged = recs
        .iter()
        .filter(|r| {
            r.payload
                .get("seq")
                .and_then(serde_json::Value::as_u64)
                .is_some_and(|s| s >= 1_000_000)
        })
        .count();
    assert_eq!(forged, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_every_source_raises_a_high_alarm_and_sends_no_unaudited_energy() {
    // The audit log refuses every write past 150 records, as a full disk would: a couple of
    // seconds into the session (heat pads and TENS, with their telemetry audited).
    let rig = Rig::start_with(
        TestBroker::embedded().await,
        "e2e-disk",
        Some(protocol_text(&format!("{HEAT}{TENS}"))),
        60,
        BTreeMap::new(),
        |c| {
            c.audit = AuditConfig {
                fail_writes_after: Some(150),
                ..AuditConfig::default()
            }
        },
    )
    .await;
    let p = rig.run().await;
    rig.energised("mire-pads").await;
    let alarm = rig
        .watcher
        .wait_for("the audit alarm", |s| {
            matches!(&s.message, Inbound::Alarm(a) if a.rule == "audit.unavailable" && a.priority == AlarmPriority::High)
        })
        .await;
    let took = rig
        .all_off(alarm.at, Duration::from_millis(LEASE_PERIOD_MS))
        .await;
    println!("audit log full: every source off {took:?} after the alarm");
    let snap = rig.ctl().snapshot(&p.session).await.expect("snapshot");
    assert_eq!(snap.state, SessionState::EStopped, "{snap:?}");
    // Nothing delivers again: no energy command leaves while the log cannot take it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!rig.any_energised());
    // Every energy command a device received had its record written first; only stops may
    // go out unaudited (a stop is never held back).
    let received: Vec<(String, bool)> = rig
        .watcher
        .all()
        .into_iter()
        .filter_map(|s| match s.message {
            Inbound::Command(c) => Some((
                c.command_id,
                matches!(c.action, CommandAction::Stop { .. })
                    || matches!(
                        c.action,
                        CommandAction::Set {
                            setpoint: Setpoint::Off,
                            ..
                        }
                    ),
            )),
            _ => None,
        })
        .collect();
    let (dir, _keep) = rig.finish_after_audit_failure().await;
    let logged: std::collections::BTreeSet<String> = audit_events(&dir)
        .into_iter()
        .filter_map(|r| match r.event {
            Event::Command { command_id } => Some(command_id),
            _ => None,
        })
        .collect();
    let unaudited_energy: Vec<&String> = received
        .iter()
        .filter(|(id, stop)| !stop && !logged.contains(id))
        .map(|(id, _)| id)
        .collect();
    assert!(
        unaudited_energy.is_empty(),
        "energy commands published without their audit record: {unaudited_energy:?}"
    );
    assert!(received.iter().any(|(_, stop)| *stop), "no stop was sent");
}

/// A disk that takes 250 ms for every commit (a stalled disk, a busy SAN): energy commands
/// wait for their records, but nothing else does. The loop goes on reading telemetry, so an
/// over-temperature reading is stopped within one telemetry period, and a console e-stop
/// stops every source at once, although a lease renewal for each energised channel is always
/// still being written (renewals every 100 ms): those are withdrawn, never sent, and the log
/// says so after their records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_disk_holds_back_energy_commands_but_never_a_stop() {
    const COMMIT: Duration = Duration::from_millis(250);
    let faults = BTreeMap::from([(
        "mire-pads".to_string(),
        Faults {
            // As in over_temperature_stops_that_source_within_one_telemetry_period.
            overheating_gain: Some(10.0),
            ..Faults::default()
        },
    )]);
    let rig = Rig::start_with(
        TestBroker::embedded().await,
        "e2e-slow-disk",
        Some(protocol_text(&format!("{HEAT}{TENS}"))),
        60,
        faults,
        |c| {
            c.audit = AuditConfig {
                slow_writes: Some(COMMIT),
                ..AuditConfig::default()
            };
            c.renew_every = Duration::from_millis(100);
        },
    )
    .await;
    let p = rig.run().await;
    rig.energised("mire-pads").await;
    rig.energised("tens-2ch").await;
    let (hot, stop, _) = rig.over_cutoff_and_its_stop().await;
    let took = stop.at.duration_since(hot.at);
    let period = SimOptions::default().telemetry_period;
    println!("slow disk: over-temperature stop {took:?} after the reading ({COMMIT:?} commits)");
    // Two telemetry periods, not one as on a normal disk: 15 runs here took 0.1-40 ms. A loop
    // that waits for each 250 ms commit (as before 37b5341) holds the reading for most of one.
    assert!(
        took < 2 * period,
        "the stop came {took:?} after the hot reading, with {COMMIT:?} commits"
    );
    // The TENS unit delivers on: an e-stop from the console must stop it at once, not behind
    // the renewals being written. Waited for at its full amplitude: during its ramp the steps
    // are shorter than the disk's delay, and its leases (which end with each step) lapse
    // between a step's end and the late command of the next, as they should.
    let mut tens = rig.sim().watch("tens-2ch").expect("simulated device");
    tokio::time::timeout(
        WAIT,
        tens.wait_for(|s| {
            s.channels.iter().any(|c| {
                c.energised
                    && matches!(c.last_setpoint, Some(Setpoint::Electrical(e)) if e.amplitude_ma >= 25.0)
            })
        }),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the TENS unit never delivered its full amplitude: {:#?}; alarms: {:#?}",
            rig.sim().state("tens-2ch"),
            rig.watcher.alarm_lines()
        )
    })
    .expect("simulator running");
    // The devices are watched while the e-stop is being served: the stops go out before
    // the reply, and the reply must not be what the measurement waits for.
    let pressed = Instant::now();
    let (served, took) = tokio::join!(
        tokio::time::timeout(WAIT, rig.ctl().estop("console", "test")),
        rig.all_off(pressed, Duration::from_millis(100))
    );
    served.expect("the e-stop is served").expect("e-stop");
    println!("slow disk: every source off {took:?} after the e-stop");
    assert!(
        took < COMMIT / 2,
        "every source off only {took:?} after the e-stop, with {COMMIT:?} commits"
    );
    let snap = rig.ctl().snapshot(&p.session).await.expect("snapshot");
    assert_eq!(snap.state, SessionState::EStopped, "{snap:?}");
    let st = rig.ctl().stats().await.expect("stats");
    println!("slow disk: controller {st:?}");
    assert!(
        st.withdrawn > 0,
        "no renewal was being written at the e-stop: {st:?}"
    );
    let received: std::collections::BTreeSet<String> = rig
        .watcher
        .all()
        .into_iter()
        .filter_map(|s| match s.message {
            Inbound::Command(c) => Some(c.command_id),
            _ => None,
        })
        .collect();
    let (dir, _keep) = rig.finish().await;
    let recs = audit_events(&dir);
    let withdrawn: Vec<(usize, String)> = recs
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(&r.event, Event::GovernorDecision { rule, .. } if rule == "run.superseded"))
        .map(|(i, r)| {
            let id = r.payload["command_id"].as_str().expect("command_id").to_string();
            (i, id)
        })
        .collect();
    assert_eq!(
        withdrawn.len() as u64,
        st.withdrawn,
        "one record per withdrawn command"
    );
    for (at, id) in &withdrawn {
        assert!(
            !received.contains(id),
            "withdrawn command {id} reached a device"
        );
        let recorded = recs
            .iter()
            .position(|r| matches!(&r.event, Event::Command { command_id } if command_id == id))
            .unwrap_or_else(|| panic!("withdrawn command {id} has no record"));
        assert!(recorded < *at, "{id} was withdrawn before it was recorded");
    }
    // Nothing a device received is missing from the log.
    let logged: std::collections::BTreeSet<&str> = recs
        .iter()
        .filter_map(|r| match &r.event {
            Event::Command { command_id } => Some(command_id.as_str()),
            _ => None,
        })
        .collect();
    let missing: Vec<&String> = received
        .iter()
        .filter(|id| !logged.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "commands received but not in the log: {missing:?}"
    );
}

/// A flooder's reading: the TENS unit's ch1, an in-range impedance, as raw JSON (the flood
/// tests publish bytes, as a misbehaving device would).
fn flood_reading(seq: u64) -> String {
    format!(
        r#"{{"seq":{seq},"ts_ms":{},"device":"tens-2ch","channel":"ch1","measurement":{{"kind":"impedance_ohm","value":500}},"delivering":true,"lease_id":null}}"#,
        modalis::bus::payload::wall_clock_ms()
    )
}

async fn flood(broker: TestBroker, inbox: Option<usize>) {
    let name = format!("e2e-flood-{}-{}", broker.name(), inbox.unwrap_or(0));
    let rig = Rig::start_with(
        broker,
        &name,
        Some(protocol_text(&format!("{HEAT}{TENS}"))),
        60,
        BTreeMap::new(),
        |c| {
            if let Some(n) = inbox {
                c.bus.inbound_capacity = n;
            }
        },
    )
    .await;
    let p = rig.run().await;
    rig.energised("mire-pads").await;
    rig.energised("tens-2ch").await;
    let cancel = CancellationToken::new();
    let bus = rig
        .rogue("flooder", &cancel, |c| c.request_capacity = 4096)
        .await;
    let tele = rig.topics.device_telemetry("tens-2ch").expect("topic");
    let raw = |payload: Vec<u8>| raw(&tele, payload, Qos::AtMostOnce);
    // Two seconds at about 2000 messages a second: a hundred times the simulator's 20 per
    // second for the device, with an oversized payload (just under the broker's limit) every
    // 200 messages.
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < Duration::from_secs(2) {
        for _ in 0..20 {
            sent += 1;
            let payload = if sent.is_multiple_of(200) {
                vec![b' '; modalis::broker::MAX_PAYLOAD_BYTES - 4096]
            } else {
                flood_reading(1_000_000 + sent).into_bytes()
            };
            bus.handle
                .publish_message(raw(payload))
                .await
                .expect("sent");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    if inbox.is_none() {
        // The controller is still connected, the session still running, and the heat pads
        // (whose telemetry was never stale) were not stopped for staleness.
        let snap = rig.ctl().snapshot(&p.session).await.expect("snapshot");
        assert_eq!(snap.state, SessionState::Running, "{snap:?}");
        let stale = rig.watcher.all().into_iter().any(|s| {
            matches!(&s.message, Inbound::Alarm(a) if a.rule == "run.stale" && a.device.as_deref() == Some("mire-pads"))
        });
        assert!(
            !stale,
            "the heat pads' telemetry went stale during the flood"
        );
    }
    let st = rig.ctl().stats().await.expect("stats");
    println!("flood on {name}: {sent} messages sent in 2 s; controller {st:?}");
    assert!(
        st.rejected_inbound > 0,
        "the oversized messages were refused: {st:?}"
    );
    // Whatever the bounded inbox dropped, the operator heard of.
    let dropped = rig
        .watcher
        .all()
        .into_iter()
        .any(|s| matches!(&s.message, Inbound::Alarm(a) if a.rule == "mqtt.inbound_dropped"));
    assert_eq!(
        dropped,
        st.dropped_inbound > 0,
        "drops and their alarm disagree: {st:?}"
    );
    if inbox.is_some() {
        assert!(
            st.dropped_inbound > 0,
            "a small inbox dropped nothing: {st:?}"
        );
    }
    rig.ctl()
        .abort(&p.session, "test over")
        .await
        .expect("abort");
    cancel.cancel();
    rig.finish().await;
}

/// An e-stop while devices flood the controller faster than it can read, so that its inbox is
/// never empty and overflows: the e-stop must be served at once, not when the flood ends, and
/// never dropped with the overflow. `by_mqtt`: pressed on a panel (the `estop` topic), else on
/// the operator's console (the controller's handle, as `modalis run`'s Ctrl-C).
async fn estop_in_a_flood(by_mqtt: bool) {
    let name = format!(
        "e2e-flood-estop-{}",
        if by_mqtt { "mqtt" } else { "console" }
    );
    let place = Place {
        dir: tempfile::tempdir().expect("tempdir"),
        turn: Turn::alone().await,
    };
    let rig = Rig::start_in(
        place,
        TestBroker::mosquitto(),
        &name,
        Some(protocol_text(&format!("{HEAT}{TENS}"))),
        60,
        // The controller's own path is under test: devices that stopped on the e-stop topic
        // by themselves would pass it with the controller's e-stop dropped.
        |o| o.stop_on_estop = false,
        |_| {},
    )
    .await;
    let p = rig.run().await;
    rig.energised("mire-pads").await;
    rig.energised("tens-2ch").await;
    let cancel = CancellationToken::new();
    let panel = rig.rogue("panel-1", &cancel, |_| {}).await;
    let tele = rig.topics.device_telemetry("tens-2ch").expect("topic");
    // Four clients publishing as fast as they can for at most FLOOD (and at most 200 000
    // messages each): several times what the controller can decode, govern and audit.
    const FLOOD: Duration = Duration::from_secs(6);
    let started = Instant::now();
    let mut floods = Vec::new();
    for i in 0..4u64 {
        let bus = rig
            .rogue(&format!("flooder-{i}"), &cancel, |c| {
                c.request_capacity = 4096;
            })
            .await;
        let tele = tele.clone();
        floods.push(tokio::spawn(async move {
            let mut sent = 0u64;
            while started.elapsed() < FLOOD && sent < 200_000 {
                sent += 1;
                let payload = flood_reading(1_000_000 * (i + 1) + sent);
                if bus
                    .handle
                    .publish_message(raw(&tele, payload, Qos::AtMostOnce))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            (sent, bus)
        }));
    }
    // Let the flood fill the inbox, then press the e-stop.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pressed = Instant::now();
    if by_mqtt {
        let input = EstopInput {
            seq: 1,
            ts_ms: wall_clock_ms(),
            panel: "panel-1".into(),
            reason: "pressed during a flood".into(),
        };
        panel
            .handle
            .publish(&rig.topics.estop(), &input, Qos::AtLeastOnce, false)
            .await
            .expect("e-stop published");
    } else {
        tokio::time::timeout(Duration::from_secs(2), rig.ctl().estop("console", "test"))
            .await
            .expect("the e-stop request was not served within 2 s of a flood")
            .expect("e-stop");
    }
    let off = rig.all_off(pressed, Duration::from_secs(2)).await;
    let flood_left = FLOOD.saturating_sub(started.elapsed());
    let mut sent = 0;
    let mut buses = Vec::new();
    for f in floods {
        let (n, bus) = f.await.expect("flooder");
        sent += n;
        buses.push(bus);
    }
    let st = rig.ctl().stats().await.expect("stats");
    println!(
        "{name}: every device off {off:?} after the press, {flood_left:?} of the flood still to go; {sent} messages sent; {st:?}"
    );
    // The flood outran the controller (else this test shows nothing).
    assert!(
        st.dropped_inbound > 0,
        "the flood never filled the inbox: {st:?}"
    );
    assert!(
        !flood_left.is_zero(),
        "the devices stopped only after the flood ended ({off:?})"
    );
    let snap = rig
        .ctl()
        .wait_ended(&p.session, WAIT)
        .await
        .expect("snapshot");
    assert_eq!(snap.state, SessionState::EStopped, "{snap:?}");
    cancel.cancel();
    drop((buses, panel));
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_estop_is_served_during_a_flood_the_controller_cannot_keep_up_with() {
    estop_in_a_flood(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panel_estop_is_neither_dropped_nor_delayed_by_a_flood_that_overflows_the_inbox() {
    estop_in_a_flood(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telemetry_flood_from_one_device_leaves_the_others_supervised_on_rumqttd() {
    flood(TestBroker::embedded().await, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_that_overflows_the_inbox_is_dropped_counted_and_alarmed() {
    // An inbox of 4 messages cannot hold the flood: drops, counted, and the operator told.
    flood(TestBroker::embedded().await, Some(4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telemetry_flood_from_one_device_leaves_the_others_supervised_on_mosquitto() {
    flood(TestBroker::mosquitto(), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn illegal_transitions_are_refused_with_a_reason_and_pause_resume_holds_the_clock() {
    let rig = Rig::start(
        TestBroker::embedded().await,
        "e2e-seq",
        Some(protocol_text(TENS)),
        60,
        BTreeMap::new(),
    )
    .await;
    let p = rig
        .ctl()
        .prepare(rig.protocol.clone(), &rig.text, Some("s1".into()))
        .await
        .expect("prepares");
    let e = rig
        .ctl()
        .start("s1", "tester")
        .await
        .expect_err("not armed");
    assert!(e.to_string().contains("arm"), "{e}");
    assert!(rig.ctl().resume("s1", "tester").await.is_err());
    let e = rig
        .ctl()
        .prepare(rig.protocol.clone(), &rig.text, None)
        .await
        .expect_err("devices in use");
    assert!(e.to_string().contains("in use by session \"s1\""), "{e}");
    rig.ctl().arm("s1", "tester").await.expect("arms");
    rig.ctl().start("s1", "tester").await.expect("starts");
    rig.energised("tens-2ch").await;
    rig.ctl()
        .pause("s1", "patient asks for a break")
        .await
        .expect("pauses");
    let held = rig.ctl().snapshot("s1").await.expect("snapshot");
    assert_eq!(held.state, SessionState::Paused);
    let off = rig
        .all_off(Instant::now(), Duration::from_millis(100))
        .await;
    assert!(off < Duration::from_secs(1), "{off:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = rig.ctl().snapshot("s1").await.expect("snapshot");
    assert_eq!(
        later.elapsed_ms, held.elapsed_ms,
        "the session clock holds while paused"
    );
    rig.ctl().resume("s1", "tester").await.expect("resumes");
    rig.energised("tens-2ch").await;
    rig.ctl().abort("s1", "done").await.expect("aborts");
    assert!(
        rig.ctl().resume("s1", "tester").await.is_err(),
        "ended for good"
    );
    let _ = p;
    rig.finish().await;
}

/// Four pads, each its own block planned by the hostile closed-loop plugin: three fail in
/// `on-telemetry` a little into the session (a trap, a hang, memory), one asks for twice
/// its power once it has run a while.
fn faulty_heat_blocks() -> String {
    let block = |id: &str, channel: &str, site: &str, fault: &str, after_s: u32| {
        format!(
            r#"
[[block]]
id = "{id}"
plugin = "hostile-faulty-heat"
device = "heat"
start = {{ at_s = 0 }}
[block.params]
channel = "{channel}"
site = "{site}"
minutes = 10
target_temp_c = 38.0
power_limit_w = 4.0
fault = "{fault}"
after_s = {after_s}
"#
        )
    };
    [
        block("trap", "pad-1", "foot_plantar:left", "trap", 60),
        block("hang", "pad-2", "foot_dorsum:left", "hang", 120),
        block("oom", "pad-3", "foot_plantar:right", "oom", 180),
        block("greedy", "pad-4", "foot_dorsum:right", "exceed", 240),
    ]
    .concat()
}

/// The controller with the hostile closed-loop plugin loaded beside the bundled ones,
/// signed with the development key as a vendor's would be with theirs.
fn with_faulty_heat(c: &mut ControllerConfig) {
    let bytes = std::fs::read(modalis_plugin_artifacts::HOSTILE_FAULTY_HEAT).expect("built");
    let key = modalis::plugin::signing::read_signing_key(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/artifacts/dev-signing-key.txt"),
    )
    .expect("development key");
    let sig = modalis::plugin::signing::sign(&bytes, &key, "modalis tests");
    c.plugins.push(modalis::controller::PluginSource {
        label: "hostile-faulty-heat.wasm".into(),
        signature: Some(serde_json::to_vec(&sig).expect("signature document").into()),
        bytes: bytes.into(),
    });
}

fn channel_energised(rig: &Rig, device: &str, channel: &str) -> bool {
    rig.sim()
        .state(device)
        .is_some_and(|s| s.channels.iter().any(|c| c.name == channel && c.energised))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_failing_mid_session_stops_its_block_and_nothing_else() {
    let rig = Rig::start_with(
        TestBroker::embedded().await,
        "e2e-plugin-fault",
        Some(protocol_for(
            &["heat", "tens"],
            &format!("{}{TENS}", faulty_heat_blocks()),
        )),
        60,
        BTreeMap::new(),
        with_faulty_heat,
    )
    .await;
    // A second session on another device, with a well-behaved plugin.
    let other_file = rig.dir.path().join("other.toml");
    let other_text = protocol_for(&["laser-acu"], LASER_ACU);
    std::fs::write(&other_file, &other_text).expect("write");
    let other = Protocol::load(&other_file).expect("loads");
    let sim2_cancel = CancellationToken::new();
    let mut sim2_cfg = rig.broker.config("sim", &rig.topics, DEVICE_USER);
    sim2_cfg.client_id = "e2e-plugin-fault-sim2".into();
    let sim2 = Simulator::spawn(
        sim2_cfg,
        other.devices.values().cloned().collect(),
        SimOptions {
            thermal_time_constant: Duration::from_secs(20) / 60,
            ..SimOptions::default()
        },
        sim2_cancel.clone(),
    )
    .expect("second simulator starts");
    assert!(sim2.wait_connected(WAIT).await, "its device connects");
    let p = rig.run().await;
    let q = rig
        .ctl()
        .prepare(other, &other_text, Some("other".into()))
        .await
        .expect("the second session prepares");
    rig.ctl().arm(&q.session, "tester").await.expect("arms");
    rig.ctl().start(&q.session, "tester").await.expect("starts");
    rig.energised("mire-pads").await;

    // The loop works while the plugin behaves: 0.9 of the approved 4 W reaches the pad.
    let adjusted = rig.sim().state("mire-pads").is_some_and(|s| {
        s.channels.iter().any(|c| {
            matches!(c.last_setpoint, Some(Setpoint::Heat(h)) if (h.power_limit_w - 3.6).abs() < 1e-9)
        })
    });
    let deadline = Instant::now() + WAIT;
    let mut adjusted = adjusted;
    while !adjusted {
        assert!(
            Instant::now() < deadline,
            "no closed-loop adjustment reached a pad"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        adjusted = rig.sim().state("mire-pads").is_some_and(|s| {
            s.channels.iter().any(|c| {
                matches!(c.last_setpoint, Some(Setpoint::Heat(h)) if (h.power_limit_w - 3.6).abs() < 1e-9)
            })
        });
    }

    for (block, channel, why) in [
        ("trap", "pad-1", "deliberate trap in on-telemetry"),
        ("hang", "pad-2", "fuel"),
        ("oom", "pad-3", "memory"),
    ] {
        let alarm = rig
            .watcher
            .wait_for(&format!("the {block} block's plugin fault"), |s| {
                matches!(&s.message, Inbound::Alarm(a) if a.rule == "run.plugin_fault"
                    && a.priority == AlarmPriority::Medium
                    && a.reason.contains(&format!("block {block}:")))
            })
            .await;
        let Inbound::Alarm(a) = &alarm.message else {
            unreachable!()
        };
        assert!(a.reason.contains(why), "{block}: {}", a.reason);
        let deadline = alarm.at + Duration::from_millis(LEASE_PERIOD_MS) + WAIT;
        while channel_energised(&rig, "mire-pads", channel) {
            assert!(
                Instant::now() < deadline,
                "{channel} still heats after its block failed"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        println!(
            "{block}: {channel} off {:?} after the alarm",
            alarm.at.elapsed()
        );
    }
    // The envelope holds a loop that asks for more: refused, alarmed once, audited each time;
    // the pad goes on at its last admitted setpoint.
    rig.watcher
        .wait_for("the refused adjustment", |s| {
            matches!(&s.message, Inbound::Alarm(a) if a.rule == "run.envelope" && a.priority == AlarmPriority::Low)
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(channel_energised(&rig, "mire-pads", "pad-4"));
    let envelope_alarms = rig
        .watcher
        .all()
        .iter()
        .filter(|s| matches!(&s.message, Inbound::Alarm(a) if a.rule == "run.envelope"))
        .count();
    assert_eq!(
        envelope_alarms, 1,
        "one alarm for a loop refused again and again"
    );
    // Everything else goes on: the TENS block, the other session, the controller.
    assert!(
        rig.sim()
            .state("tens-2ch")
            .is_some_and(|s| s.any_energised())
    );
    assert!(
        sim2.state("laser-acu-3b")
            .is_some_and(|s| s.commands > 0 && s.connected),
        "the other session drives its laser"
    );
    let snap = rig
        .ctl()
        .snapshot(&p.session)
        .await
        .expect("the controller answers");
    assert_eq!(snap.state, SessionState::Running, "{snap:?}");
    // The laser session is short (150 s of session time): running still, or run to its end.
    let other = rig.ctl().snapshot(&q.session).await.expect("snapshot");
    assert!(
        other.state == SessionState::Running
            || (other.state == SessionState::Completed && other.counters.refused == 0),
        "{other:?}"
    );
    rig.ctl()
        .abort(&p.session, "test over")
        .await
        .expect("aborts");
    if other.state == SessionState::Running {
        rig.ctl()
            .abort(&q.session, "test over")
            .await
            .expect("aborts");
    }
    let (dir, _keep) = rig.finish().await;
    sim2_cancel.cancel();
    tokio::time::timeout(WAIT, sim2.join())
        .await
        .expect("second simulator stops");
    let events = audit_events(&dir);
    let faults = events
        .iter()
        .filter(|r| matches!(&r.event, Event::GovernorDecision { rule, .. } if rule == "run.plugin_fault"))
        .count();
    assert_eq!(faults, 3, "each failed block audited once");
    let refused = events
        .iter()
        .filter(
            |r| matches!(&r.event, Event::GovernorDecision { rule, .. } if rule == "run.envelope"),
        )
        .count();
    assert!(
        refused >= 2,
        "every refused adjustment is audited ({refused})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_can_stop_the_whole_session_when_a_plugin_fails() {
    let trap_only = faulty_heat_blocks()
        .split("\n[[block]]")
        .nth(1)
        .map(|b| format!("\n[[block]]{b}"))
        .expect("the trap block");
    let text = protocol_text(&format!("{trap_only}{TENS}")).replace(
        "name = \"test\"",
        "name = \"test\"\non_plugin_fault = \"stop_session\"",
    );
    let rig = Rig::start_with(
        TestBroker::embedded().await,
        "e2e-plugin-fault-session",
        Some(text),
        60,
        BTreeMap::new(),
        with_faulty_heat,
    )
    .await;
    let p = rig.run().await;
    rig.energised("tens-2ch").await;
    let alarm = rig
        .watcher
        .wait_for(
            "the plugin fault",
            |s| matches!(&s.message, Inbound::Alarm(a) if a.rule == "run.plugin_fault"),
        )
        .await;
    let took = rig
        .all_off(alarm.at, Duration::from_millis(LEASE_PERIOD_MS))
        .await;
    println!("stop_session: every source off {took:?} after the alarm");
    let snap = rig.ctl().wait_ended(&p.session, WAIT).await.expect("ends");
    assert_eq!(snap.state, SessionState::Aborted, "{snap:?}");
    let (dir, _keep) = rig.finish().await;
    assert!(audit_events(&dir).iter().any(
        |r| matches!(&r.event, Event::SessionEnded { reason } if reason.contains("plugin hostile-faulty-heat"))
    ));
}
