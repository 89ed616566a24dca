//! The MQTT bus through real brokers: the embedded rumqttd and a real mosquitto started here on
//! a free 127.0.0.1 port (with a password file and an ACL, as a clinic would run it).
//!
//! Every wait is bounded; the bounds are generous (seconds) because they guard against hangs,
//! not speed.

use std::io::Write;
use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use modalis::broker::EmbeddedBroker;
use modalis::bus::payload::{ControllerState, DeviceTelemetry, Inbound, Presence};
use modalis::bus::topics::Topics;
use modalis::bus::{
    Backoff, Bus, BusConfig, BusError, BusEvent, Credentials, Inbox, OutboundMessage, Qos,
};
use modalis_sdk::Measurement;
use tokio_util::sync::CancellationToken;

/// Long enough for anything that should happen, short enough that a hang fails the test.
pub const WAIT: Duration = Duration::from_secs(10);

/// A mosquitto process on 127.0.0.1 with a temporary configuration, password file and ACL.
/// Killed on drop.
pub struct Mosquitto {
    child: Option<Child>,
    port: u16,
    conf: PathBuf,
    /// The MQTT-over-WebSockets listener, when asked for.
    pub ws_port: Option<u16>,
    _dir: tempfile::TempDir,
}

/// Users in the password file: (user, password).
pub const CONTROLLER_USER: (&str, &str) = ("controller", "controller-secret");
/// A device, which may publish its telemetry and acks.
pub const DEVICE_USER: (&str, &str) = ("device", "device-secret");
/// A dashboard, which may only read.
pub const DASHBOARD_USER: (&str, &str) = ("dashboard", "dashboard-secret");

/// From the library's pool, so that a mosquitto and an embedded broker started at once in
/// this process are never told the same port.
fn free_port() -> u16 {
    modalis::broker::free_port().expect("a free port").port()
}

impl Mosquitto {
    /// Starts mosquitto on a free port and waits until it accepts connections.
    pub fn start() -> Mosquitto {
        Mosquitto::start_with(
            "user controller\ntopic readwrite modalis/#\n\n\
             user device\ntopic readwrite modalis/#\n\n\
             user dashboard\ntopic read modalis/#\n",
            &[CONTROLLER_USER, DEVICE_USER, DASHBOARD_USER],
        )
    }

    /// Starts mosquitto with this ACL and these users.
    pub fn start_with(acl_text: &str, users: &[(&str, &str)]) -> Mosquitto {
        Mosquitto::start_inner(acl_text, users, false)
    }

    /// [`Mosquitto::start_with`], plus an MQTT-over-WebSockets listener for browsers (the same
    /// users and ACL).
    pub fn start_with_websockets(acl_text: &str, users: &[(&str, &str)]) -> Mosquitto {
        Mosquitto::start_inner(acl_text, users, true)
    }

    fn start_inner(acl_text: &str, users: &[(&str, &str)], websockets: bool) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        // mosquitto started as root drops to the `mosquitto` user and then refuses files it
        // cannot read (design brief): make the directory and files readable.
        set_mode(dir.path(), 0o755);
        let passwd = dir.path().join("passwd");
        for (i, (user, pass)) in users.iter().enumerate() {
            let mut cmd = Command::new("mosquitto_passwd");
            cmd.arg("-b");
            if i == 0 {
                cmd.arg("-c");
            }
            let status = cmd
                .arg(&passwd)
                .arg(user)
                .arg(pass)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("mosquitto_passwd runs (apt-get install mosquitto; .ci/run does)");
            assert!(status.success(), "mosquitto_passwd failed");
        }
        set_mode(&passwd, 0o644);
        let acl = dir.path().join("acl");
        std::fs::write(&acl, acl_text).expect("acl written");
        set_mode(&acl, 0o644);
        let port = free_port();
        let ws_port = websockets.then(free_port);
        let conf = dir.path().join("mosquitto.conf");
        let mut f = std::fs::File::create(&conf).expect("conf created");
        write!(
            f,
            "listener {port} 127.0.0.1\n\
             allow_anonymous false\n\
             password_file {}\n\
             acl_file {}\n\
             persistence false\n\
             set_tcp_nodelay true\n\
             log_dest stderr\n\
             log_type error\n\
             log_type warning\n",
            passwd.display(),
            acl.display()
        )
        .expect("conf written");
        if let Some(ws) = ws_port {
            writeln!(f, "listener {ws} 127.0.0.1\nprotocol websockets").expect("conf written");
        }
        set_mode(&conf, 0o644);
        let mut m = Mosquitto {
            child: None,
            port,
            conf,
            ws_port,
            _dir: dir,
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("mosquitto starts (apt-get install mosquitto; .ci/run does)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + WAIT;
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto did not listen on 127.0.0.1:{}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Whatever answered must be this mosquitto: one that failed to bind exits at once.
        std::thread::sleep(Duration::from_millis(50));
        if let Some(c) = self.child.as_mut() {
            let exited = c.try_wait().ok().flatten();
            assert!(
                exited.is_none(),
                "mosquitto exited ({exited:?}) although something listens on 127.0.0.1:{}",
                self.port
            );
        }
    }

    /// Kills the broker (SIGKILL: no goodbye to the clients).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// `mqtt://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Debian installs the broker in /usr/sbin, which a non-root PATH may lack.
fn mosquitto_bin() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/mosquitto");
    if sbin.exists() {
        sbin
    } else {
        PathBuf::from("mosquitto")
    }
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A broker for one test: embedded or mosquitto.
pub enum TestBroker {
    /// rumqttd in-process (lives until the test binary exits).
    Embedded(EmbeddedBroker),
    /// A mosquitto process.
    Mosquitto(Mosquitto),
}

impl TestBroker {
    pub async fn embedded() -> TestBroker {
        TestBroker::Embedded(EmbeddedBroker::start().await.expect("embedded broker"))
    }

    pub fn mosquitto() -> TestBroker {
        TestBroker::Mosquitto(Mosquitto::start())
    }

    /// The mosquitto process, to kill and restart it.
    pub fn mosquitto_mut(&mut self) -> &mut Mosquitto {
        match self {
            TestBroker::Mosquitto(m) => m,
            TestBroker::Embedded(_) => panic!("rumqttd cannot be stopped; use mosquitto"),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            TestBroker::Embedded(_) => "rumqttd",
            TestBroker::Mosquitto(_) => "mosquitto",
        }
    }

    /// A bus configuration for `client_id` logging in as `user` (on mosquitto).
    pub fn config(&self, client_id: &str, topics: &Topics, user: (&str, &str)) -> BusConfig {
        let url = match self {
            TestBroker::Embedded(b) => b.url(),
            TestBroker::Mosquitto(m) => m.url(),
        };
        let mut c = BusConfig::new(&url, client_id, topics.clone()).expect("valid config");
        if matches!(self, TestBroker::Mosquitto(_)) {
            c.credentials = Some(Credentials {
                username: user.0.to_string(),
                password: user.1.to_string(),
            });
        }
        // Reconnect quickly in tests; the cap keeps a restarted broker found within a second.
        c.backoff = Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
        };
        c
    }
}

pub fn topics(name: &str) -> Topics {
    Topics::new(name).expect("valid controller id")
}

pub fn controller_state(t: &Topics, presence: Presence, counter: u64) -> ControllerState {
    ControllerState {
        seq: counter,
        ts_ms: 1,
        controller: t.controller().to_string(),
        state: presence,
        session_counter: counter,
        version: env!("CARGO_PKG_VERSION").to_string(),
        plugin_trust: modalis::bus::payload::PluginTrustState::Enforced,
    }
}

/// A controller's bus: retained `online` birth, `offline` will, subscribed to acks,
/// telemetry and e-stop.
pub fn controller_config(broker: &TestBroker, t: &Topics, client_id: &str) -> BusConfig {
    let mut c = broker.config(client_id, t, CONTROLLER_USER);
    c.birth = Some(
        OutboundMessage::json(
            t.state(),
            &controller_state(t, Presence::Online, 1),
            Qos::AtLeastOnce,
            true,
        )
        .expect("encodes"),
    );
    c.last_will = Some(
        OutboundMessage::json(
            t.state(),
            &controller_state(t, Presence::Offline, 1),
            Qos::AtLeastOnce,
            true,
        )
        .expect("encodes"),
    );
    c.subscriptions = t
        .controller_filters()
        .into_iter()
        .map(|f| (f, Qos::AtLeastOnce))
        .collect();
    c
}

/// Receives until `pick` returns something, or fails the test after `WAIT`.
pub async fn recv_until<T>(
    inbox: &mut Inbox,
    what: &str,
    mut pick: impl FnMut(BusEvent) -> Option<T>,
) -> T {
    let found = tokio::time::timeout(WAIT, async {
        while let Some(ev) = inbox.recv().await {
            if let Some(t) = pick(ev) {
                return Some(t);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(t)) => t,
        Ok(None) => panic!("the bus ended while waiting for {what}"),
        Err(_) => panic!("no {what} within {WAIT:?}"),
    }
}

fn state_of(ev: BusEvent) -> Option<(ControllerState, bool)> {
    match ev {
        BusEvent::Message {
            message: Inbound::State(s),
            retained,
        } => Some((s, retained)),
        _ => None,
    }
}

/// A plain subscriber to the state topic (a dashboard).
fn dashboard(broker: &TestBroker, t: &Topics, id: &str, cancel: &CancellationToken) -> Bus {
    let mut c = broker.config(id, t, DASHBOARD_USER);
    c.subscriptions = vec![(t.state(), Qos::AtLeastOnce)];
    Bus::start(c, cancel.clone()).expect("dashboard bus starts")
}

/// A dashboard connected and past the controller's retained `online` state.
async fn online_dashboard(
    broker: &TestBroker,
    t: &Topics,
    id: &str,
    cancel: &CancellationToken,
) -> Bus {
    let mut dash = dashboard(broker, t, id, cancel);
    dash.handle.wait_connected(WAIT).await.expect("connects");
    recv_until(&mut dash.inbox, "online", |ev| {
        state_of(ev).filter(|(s, _)| s.state == Presence::Online)
    })
    .await;
    dash
}

/// A burst of QoS 1 `online` states, their session counters `counters`, queued back to back.
async fn publish_states(ctl: &Bus, t: &Topics, counters: std::ops::RangeInclusive<u64>) {
    for counter in counters {
        ctl.handle
            .publish(
                &t.state(),
                &controller_state(t, Presence::Online, counter),
                Qos::AtLeastOnce,
                false,
            )
            .await
            .expect("queued");
    }
}

async fn retained_state_and_will(broker: TestBroker) {
    let name = broker.name();
    let t = topics(&format!("ctl-retained-{name}"));
    let cancel = CancellationToken::new();
    let ctl = Bus::start(controller_config(&broker, &t, "ctl"), cancel.clone()).expect("starts");
    ctl.handle.wait_connected(WAIT).await.expect("connects");
    // Give the birth time to reach the broker before the late subscriber arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut late = dashboard(&broker, &t, "late", &cancel);
    let (state, retained) = recv_until(&mut late.inbox, "the retained state", state_of).await;
    assert_eq!(state.state, Presence::Online, "{name}");
    assert!(retained, "{name}: a late subscriber gets the retained copy");

    // The controller dies without a DISCONNECT: the broker publishes the will.
    ctl.task.abort();
    let (state, _) = recv_until(&mut late.inbox, "the offline will", |ev| {
        state_of(ev).filter(|(s, _)| s.state == Presence::Offline)
    })
    .await;
    assert_eq!(state.session_counter, 1, "{name}");

    // The will was retained: a second late subscriber sees `offline`.
    let mut later = dashboard(&broker, &t, "later", &cancel);
    let (state, retained) = recv_until(&mut later.inbox, "the retained will", state_of).await;
    assert_eq!((state.state, retained), (Presence::Offline, true), "{name}");
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_state_and_last_will_on_rumqttd() {
    retained_state_and_will(TestBroker::embedded().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_state_and_last_will_on_mosquitto() {
    retained_state_and_will(TestBroker::mosquitto()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_shutdown_publishes_offline_too() {
    let broker = TestBroker::mosquitto();
    let t = topics("ctl-clean");
    let ctl_cancel = CancellationToken::new();
    let ctl = Bus::start(controller_config(&broker, &t, "ctl"), ctl_cancel.clone()).expect("ok");
    ctl.handle.wait_connected(WAIT).await.expect("connects");
    let cancel = CancellationToken::new();
    let mut dash = dashboard(&broker, &t, "dash", &cancel);
    recv_until(&mut dash.inbox, "online", |ev| {
        state_of(ev).filter(|(s, _)| s.state == Presence::Online)
    })
    .await;
    // A clean DISCONNECT makes the broker discard the will, so the bus publishes it itself.
    ctl_cancel.cancel();
    tokio::time::timeout(WAIT, ctl.task.join())
        .await
        .expect("the bus task ends after cancel");
    recv_until(&mut dash.inbox, "offline after a clean shutdown", |ev| {
        state_of(ev).filter(|(s, _)| s.state == Presence::Offline)
    })
    .await;
    assert!(!ctl.handle.is_connected());
    let e = ctl
        .handle
        .publish(&t.alarm(), &1, Qos::AtLeastOnce, false)
        .await
        .expect_err("no publish after shutdown");
    assert!(matches!(e, BusError::NotConnected { .. }), "{e}");
    cancel.cancel();
}

/// The messages published just before a clean shutdown reach subscribers: the bus does not
/// drop its connection until the broker has read the DISCONNECT and everything before it. (It
/// used to stop at the DISCONNECT's write; closing a socket with unread PUBACKs sends a
/// reset, and mosquitto dropped what it had not read yet: a dashboard missed a session's
/// final `e-stopped` status.)
async fn last_messages_before_a_clean_shutdown(broker: TestBroker) {
    let cancel = CancellationToken::new();
    for round in 0..5 {
        let t = topics(&format!("ctl-last-{round}"));
        let ctl_cancel = CancellationToken::new();
        // Client ids of their own: a second "dash" would take the first one's session over.
        let ctl = Bus::start(
            controller_config(&broker, &t, &format!("ctl-{round}")),
            ctl_cancel.clone(),
        )
        .expect("ok");
        ctl.handle.wait_connected(WAIT).await.expect("connects");
        let mut dash = online_dashboard(&broker, &t, &format!("dash-{round}"), &cancel).await;
        // A burst of QoS 1 messages, the last one then the shutdown at once: their PUBACKs
        // are still arriving when the bus disconnects.
        const LAST: u64 = 400;
        publish_states(&ctl, &t, 2..=LAST).await;
        let stopping = std::time::Instant::now();
        ctl_cancel.cancel();
        tokio::time::timeout(WAIT, ctl.task.join())
            .await
            .expect("the bus task ends after cancel");
        println!("{}: shutdown took {:?}", broker.name(), stopping.elapsed());
        recv_until(
            &mut dash.inbox,
            &format!("round {round}: the last message before the shutdown"),
            |ev| state_of(ev).filter(|(s, _)| s.session_counter == LAST),
        )
        .await;
        recv_until(&mut dash.inbox, "offline after the shutdown", |ev| {
            state_of(ev).filter(|(s, _)| s.state == Presence::Offline)
        })
        .await;
    }
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_messages_before_a_clean_shutdown_reach_subscribers_on_mosquitto() {
    last_messages_before_a_clean_shutdown(TestBroker::mosquitto()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_messages_before_a_clean_shutdown_reach_subscribers_on_rumqttd() {
    last_messages_before_a_clean_shutdown(TestBroker::embedded().await).await;
}

/// With fewer publishes allowed in flight than a burst holds, the bus waits for acks instead
/// of dropping or reordering: every message of the burst arrives, in order. (A deployment
/// that lowers `max_inflight` to save memory gets flow control, not loss.)
async fn a_small_inflight_window_delays_but_delivers_in_order(broker: TestBroker) {
    let name = broker.name();
    let t = topics(&format!("ctl-window-{name}"));
    let cancel = CancellationToken::new();
    let mut cfg = controller_config(&broker, &t, "ctl");
    cfg.max_inflight = 4;
    let ctl = Bus::start(cfg, cancel.clone()).expect("starts");
    ctl.handle.wait_connected(WAIT).await.expect("connects");
    let mut dash = online_dashboard(&broker, &t, "dash", &cancel).await;
    const LAST: u64 = 300;
    publish_states(&ctl, &t, 2..=LAST).await;
    let mut seen = Vec::new();
    while seen.last() != Some(&LAST) {
        let counter = recv_until(&mut dash.inbox, &format!("{name}: message {LAST}"), |ev| {
            state_of(ev)
                .filter(|(s, _)| s.session_counter >= 2)
                .map(|(s, _)| s.session_counter)
        })
        .await;
        seen.push(counter);
    }
    assert_eq!(seen, (2..=LAST).collect::<Vec<_>>(), "{name}");
    // Neither side lost its connection nor shed a message on the way.
    assert_eq!(ctl.handle.stats().connections, 1, "{name}");
    assert_eq!(dash.handle.stats().dropped_inbound, 0, "{name}");
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_inflight_window_delays_but_delivers_in_order_on_mosquitto() {
    a_small_inflight_window_delays_but_delivers_in_order(TestBroker::mosquitto()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_inflight_window_delays_but_delivers_in_order_on_rumqttd() {
    a_small_inflight_window_delays_but_delivers_in_order(TestBroker::embedded().await).await;
}

fn telemetry(device: &str, value: f64) -> DeviceTelemetry {
    DeviceTelemetry {
        seq: 1,
        ts_ms: 1,
        device: device.to_string(),
        channel: "pad-1".to_string(),
        measurement: Measurement::SkinTempC(value),
        delivering: true,
        lease_id: Some(1),
    }
}

async fn invalid_payload_rejected(broker: TestBroker) {
    let name = broker.name();
    let t = topics(&format!("ctl-invalid-{name}"));
    let cancel = CancellationToken::new();
    let mut ctl = Bus::start(controller_config(&broker, &t, "ctl"), cancel.clone()).expect("ok");
    let dev = Bus::start(broker.config("dev", &t, DEVICE_USER), cancel.clone()).expect("ok");
    ctl.handle.wait_connected(WAIT).await.expect("connects");
    dev.handle.wait_connected(WAIT).await.expect("connects");
    // The subscriptions go out after the ConnAck: probe with valid messages until one
    // arrives, so that the bad ones below cannot be lost to a subscription not yet made.
    let topic = t.device_telemetry("pads").expect("valid");
    let probe = async {
        loop {
            dev.handle
                .publish(&topic, &telemetry("pads", 33.0), Qos::AtLeastOnce, false)
                .await
                .expect("published");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        () = probe => {}
        () = recv_until(&mut ctl.inbox, "a first valid telemetry message", |ev| match ev {
            BusEvent::Message { message: Inbound::Telemetry(_), .. } => Some(()),
            _ => None,
        }) => {}
    }
    // Drain the probes still in flight, then send the bad ones.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), ctl.inbox.recv()).await
    {
    }
    let before = ctl.handle.stats().rejected;

    // (where, as the error shows the JSON pointer; the payload). The schema check at the
    // boundary names the pointer; the checks against the topic come after it.
    let bad: [(&str, &[u8]); 4] = [
        ("at (document)", b"{not json"),
        (
            "at /measurement/value",
            br#"{"seq":1,"ts_ms":1,"device":"pads","channel":"pad-1","measurement":{"kind":"skin_temp_c","value":"hot"},"delivering":true,"lease_id":null}"#,
        ),
        (
            "at /delivering",
            br#"{"seq":1,"ts_ms":1,"device":"pads","channel":"pad-1","measurement":{"kind":"skin_temp_c","value":33.0},"lease_id":null}"#,
        ),
        (
            "at /device",
            br#"{"seq":1,"ts_ms":1,"device":"lamp","channel":"pad-1","measurement":{"kind":"skin_temp_c","value":33.0},"delivering":true,"lease_id":null}"#,
        ),
    ];
    for (field, payload) in bad {
        dev.handle
            .publish_message(OutboundMessage {
                topic: topic.clone(),
                payload: payload.to_vec(),
                qos: Qos::AtLeastOnce,
                retain: false,
            })
            .await
            .expect("published");
        let err = recv_until(&mut ctl.inbox, "the rejection", |ev| match ev {
            BusEvent::Rejected(e) => Some(e),
            BusEvent::Message {
                message: Inbound::Telemetry(m),
                ..
            } => panic!("{name}: an invalid message was delivered as valid: {m:?}"),
            _ => None,
        })
        .await;
        let text = err.to_string();
        assert!(text.contains(&topic), "{name}: {text}");
        assert!(text.contains(field), "{name}: {text}");
    }
    assert_eq!(ctl.handle.stats().rejected - before, 4, "{name}");

    // A valid message still comes through afterwards.
    dev.handle
        .publish(&topic, &telemetry("pads", 34.5), Qos::AtLeastOnce, false)
        .await
        .expect("published");
    let m = recv_until(&mut ctl.inbox, "valid telemetry", |ev| match ev {
        BusEvent::Message {
            message: Inbound::Telemetry(m),
            ..
        } if m.measurement == Measurement::SkinTempC(34.5) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(m.device, "pads");
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_telemetry_is_rejected_and_counted_on_rumqttd() {
    invalid_payload_rejected(TestBroker::embedded().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_telemetry_is_rejected_and_counted_on_mosquitto() {
    invalid_payload_rejected(TestBroker::mosquitto()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_and_resubscribes_after_a_mosquitto_restart() {
    let mut broker = TestBroker::mosquitto();
    let t = topics("ctl-restart");
    let cancel = CancellationToken::new();
    let mut ctl = Bus::start(controller_config(&broker, &t, "ctl"), cancel.clone()).expect("ok");
    recv_until(&mut ctl.inbox, "the first connection", |ev| match ev {
        BusEvent::Connected { connection: 1, .. } => Some(()),
        _ => None,
    })
    .await;

    broker.mosquitto_mut().kill();
    let error = recv_until(&mut ctl.inbox, "the disconnection", |ev| match ev {
        BusEvent::Disconnected { error, .. } => Some(error),
        _ => None,
    })
    .await;
    assert!(!error.is_empty());
    assert!(!ctl.handle.is_connected());
    let e = ctl
        .handle
        .publish(&t.alarm(), &1, Qos::AtLeastOnce, false)
        .await
        .expect_err("a publish while down fails fast instead of queueing");
    assert!(matches!(e, BusError::NotConnected { .. }), "{e}");
    // Stay down for a few back-off rounds.
    tokio::time::sleep(Duration::from_millis(600)).await;

    broker.mosquitto_mut().restart();
    recv_until(&mut ctl.inbox, "the reconnection", |ev| match ev {
        BusEvent::Connected { connection, .. } if connection >= 2 => Some(()),
        _ => None,
    })
    .await;

    // Subscriptions were restored: a device's telemetry reaches the controller.
    let dev = Bus::start(broker.config("dev", &t, DEVICE_USER), cancel.clone()).expect("ok");
    dev.handle.wait_connected(WAIT).await.expect("connects");
    let topic = t.device_telemetry("pads").expect("valid");
    let probe = async {
        loop {
            dev.handle
                .publish(&topic, &telemetry("pads", 35.0), Qos::AtLeastOnce, false)
                .await
                .expect("published");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        () = probe => {}
        () = recv_until(&mut ctl.inbox, "telemetry after the restart", |ev| match ev {
            BusEvent::Message { message: Inbound::Telemetry(_), .. } => Some(()),
            _ => None,
        }) => {}
    }
    // The birth was published again: the restarted broker (no persistence) knows the
    // controller is online.
    let mut late = dashboard(&broker, &t, "late", &cancel);
    let (state, retained) = recv_until(&mut late.inbox, "the state after restart", state_of).await;
    assert_eq!((state.state, retained), (Presence::Online, true));
    assert!(ctl.handle.stats().connections >= 2);
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_the_acl_refuses_is_reported() {
    let broker = TestBroker::mosquitto();
    let t = topics("ctl-acl");
    let cancel = CancellationToken::new();
    let mut dash = dashboard(&broker, &t, "dash", &cancel);
    dash.handle.wait_connected(WAIT).await.expect("connects");
    // A dashboard may read, not command: MQTT v5 brings the refusal back as a reason code.
    dash.handle
        .publish(
            &t.device_command("pads").expect("valid"),
            &serde_json::json!({"not": "allowed"}),
            Qos::AtLeastOnce,
            false,
        )
        .await
        .expect("queued");
    let reason = recv_until(&mut dash.inbox, "the refusal", |ev| match ev {
        BusEvent::PublishRefused { reason } => Some(reason),
        _ => None,
    })
    .await;
    assert!(reason.contains("NotAuthorized"), "{reason}");
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_inbound_queue_drops_and_counts_without_stalling() {
    let broker = TestBroker::embedded().await;
    let t = topics("ctl-full");
    let cancel = CancellationToken::new();
    let mut cfg = controller_config(&broker, &t, "ctl");
    cfg.inbound_capacity = 2;
    let ctl = Bus::start(cfg, cancel.clone()).expect("ok");
    let dev = Bus::start(broker.config("dev", &t, DEVICE_USER), cancel.clone()).expect("ok");
    ctl.handle.wait_connected(WAIT).await.expect("connects");
    dev.handle.wait_connected(WAIT).await.expect("connects");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let topic = t.device_telemetry("pads").expect("valid");
    // Nobody reads the controller's inbox.
    let deadline = tokio::time::Instant::now() + WAIT;
    while ctl.handle.stats().dropped_inbound < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no drops counted: {:?}",
            ctl.handle.stats()
        );
        dev.handle
            .publish(&topic, &telemetry("pads", 33.0), Qos::AtMostOnce, false)
            .await
            .expect("published");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The poller is not stalled: the controller still publishes and stays connected.
    ctl.handle
        .publish(&t.alarm(), &1, Qos::AtLeastOnce, false)
        .await
        .expect("the controller can still publish");
    assert!(ctl.handle.is_connected());
    cancel.cancel();
}
