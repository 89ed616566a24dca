//! The embedded MQTT broker (rumqttd, in-process) for the single-machine default and tests.
//!
//! **For one machine and tests only, never for a clinic network.** rumqttd has no ACL (any
//! client may publish commands to any device), this setup has no authentication, and rumqttd
//! has no clean shutdown: the broker's threads live until the process ends. For anything that
//! leaves the machine, run mosquitto with a password file and an ACL and pass
//! `--broker mqtt://host:port` (design brief, "Brokers").
//!
//! What this module guarantees: the broker listens on 127.0.0.1 only (rumqttd's sample
//! configuration binds 0.0.0.0), on a port the OS picked, speaking MQTT v5 (and, for browser
//! dashboards on request, MQTT 3.1.1 over WebSockets on a second port); rumqttd's HTTP
//! console (port 3030 in its samples), Prometheus exporter, bridge and cluster are off.

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Mutex;
use std::time::Duration;

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Largest MQTT payload the embedded broker accepts, bytes: room for a dose report.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// How long [`EmbeddedBroker::start`] waits for the listener.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the embedded broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The OS gave no free port on 127.0.0.1.
    #[error("no free port on 127.0.0.1 for the embedded broker: {0}")]
    NoPort(#[source] std::io::Error),
    /// The broker thread could not be spawned.
    #[error("cannot spawn the embedded broker's thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The broker did not accept connections in time.
    #[error(
        "the embedded broker did not listen on {addr} within {waited_ms} ms (after {attempts} attempt(s); see the log for rumqttd's error)"
    )]
    NotListening {
        /// The address tried last.
        addr: SocketAddr,
        /// How long it waited on the last attempt.
        waited_ms: u64,
        /// Ports tried.
        attempts: u32,
    },
}

/// A running embedded broker. Dropping it does not stop the broker (rumqttd cannot stop); it
/// lives until the process ends.
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
    /// The MQTT-over-WebSockets listener (MQTT 3.1.1, rumqttd's only protocol there), for
    /// browser dashboards, when one was asked for.
    ws: Option<SocketAddr>,
}

impl EmbeddedBroker {
    /// Starts a broker on 127.0.0.1 and a free port, and returns once it accepts connections.
    pub async fn start() -> Result<EmbeddedBroker, BrokerError> {
        Self::start_with(false).await
    }

    /// [`EmbeddedBroker::start`], with a WebSockets listener on another free 127.0.0.1 port
    /// when `websockets` is set (browser dashboards connect there).
    pub async fn start_with(websockets: bool) -> Result<EmbeddedBroker, BrokerError> {
        // The port is asked of the OS and released for rumqttd to bind, so another process
        // may take it in between; a failed start is retried on a new port.
        const ATTEMPTS: u32 = 3;
        let mut last = None;
        for attempt in 1..=ATTEMPTS {
            let addr = free_port()?;
            let ws = if websockets { Some(free_port()?) } else { None };
            let thread = spawn(addr, ws)?;
            let ready = match wait_all_listening(addr, ws, &thread).await {
                Ok(()) => still_ours(&thread).await,
                Err(waited) => Err(waited),
            };
            match ready {
                Ok(()) => {
                    tracing::info!(%addr, ?ws, "embedded MQTT broker listening (127.0.0.1 only, no ACL)");
                    return Ok(EmbeddedBroker { addr, ws });
                }
                Err(waited) => {
                    tracing::warn!(%addr, attempt, "embedded MQTT broker did not start");
                    last = Some((addr, waited));
                }
            }
        }
        let (addr, waited) = last.unwrap_or((
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)),
            Duration::ZERO,
        ));
        Err(BrokerError::NotListening {
            addr,
            waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            attempts: ATTEMPTS,
        })
    }

    /// Starts a broker on 127.0.0.1:`port` (1883 lets `mosquitto_sub` find it without `-p`).
    /// Fails when the port is taken, so the caller can fall back to [`EmbeddedBroker::start`].
    pub async fn start_on(port: u16) -> Result<EmbeddedBroker, BrokerError> {
        Self::start_on_with(port, false).await
    }

    /// [`EmbeddedBroker::start_on`], with a WebSockets listener on a free port when
    /// `websockets` is set.
    pub async fn start_on_with(port: u16, websockets: bool) -> Result<EmbeddedBroker, BrokerError> {
        // Bind first: if another broker already listens there, waiting for "listening" would
        // find *that* broker and report success.
        let addr = {
            let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
                .map_err(BrokerError::NoPort)?;
            l.local_addr().map_err(BrokerError::NoPort)?
        };
        let ws = if websockets { Some(free_port()?) } else { None };
        let thread = spawn(addr, ws)?;
        match wait_all_listening(addr, ws, &thread).await {
            Ok(()) => {
                tracing::info!(%addr, ?ws, "embedded MQTT broker listening (127.0.0.1 only, no ACL)");
                Ok(EmbeddedBroker { addr, ws })
            }
            Err(waited) => Err(BrokerError::NotListening {
                addr,
                waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
                attempts: 1,
            }),
        }
    }

    /// The listening address (always 127.0.0.1).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `mqtt://127.0.0.1:<port>`, for [`crate::bus::BusConfig::new`].
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }

    /// `ws://127.0.0.1:<port>/mqtt`, the WebSockets listener, if it has one.
    pub fn ws_url(&self) -> Option<String> {
        self.ws.map(|a| format!("ws://{a}/mqtt"))
    }
}

/// [`wait_listening`] for the MQTT listener, then for the WebSockets one if there is one.
async fn wait_all_listening(
    addr: SocketAddr,
    ws: Option<SocketAddr>,
    thread: &std::thread::JoinHandle<()>,
) -> Result<(), Duration> {
    wait_listening(addr, thread).await?;
    match ws {
        Some(ws) => wait_listening(ws, thread).await,
        None => Ok(()),
    }
}

/// A port the OS calls free that this process has not handed to another broker yet.
///
/// The OS may give a just-released port to the next caller. Two brokers started at once in
/// one process (parallel tests) could then both be told port P: one binds it, the other
/// fails to, and the second's readiness probe reaches the *first* broker and reports
/// success. Two tests then share a broker, and clients with the same id knock each other off
/// (seen as a client that never gets its ConnAck).
///
/// Public so that tests starting other brokers (mosquitto) draw from the same pool.
pub fn free_port() -> Result<SocketAddr, BrokerError> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut last = None;
    for _ in 0..64 {
        let l =
            std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(BrokerError::NoPort)?;
        let addr = l.local_addr().map_err(BrokerError::NoPort)?;
        // A poisoned lock only means another thread panicked while inserting; the set is
        // still a valid set of ports.
        let mut taken = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if taken.insert(addr.port()) {
            return Ok(addr);
        }
        last = Some(addr);
    }
    // Every port offered was one this process already used: take the last (the OS says it is
    // free; the bind-failure check in `start` still catches a clash).
    last.ok_or_else(|| BrokerError::NoPort(std::io::Error::other("no port offered")))
}

/// The broker that answered the readiness probe is this one only if this one's listener
/// thread is still running: rumqttd's server thread ends at once when its bind fails, while
/// another process's listener on the same port would still accept the probe.
async fn still_ours(thread: &std::thread::JoinHandle<()>) -> Result<(), Duration> {
    const BIND_SETTLE: Duration = Duration::from_millis(50);
    tokio::time::sleep(BIND_SETTLE).await;
    if thread.is_finished() {
        Err(BIND_SETTLE)
    } else {
        Ok(())
    }
}

fn config(addr: SocketAddr, ws: Option<SocketAddr>) -> Config {
    let settings = |name: &str, listen: SocketAddr| ServerSettings {
        name: name.to_string(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: MAX_PAYLOAD_BYTES,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let server = settings("modalis-v5", addr);
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 1000,
            max_outgoing_packet_count: 200,
            // The router keeps a commit log per filter in memory, segment by segment.
            max_segment_size: 10 * 1024 * 1024,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: None,
        v5: Some(HashMap::from([("1".to_string(), server)])),
        ws: ws.map(|ws| HashMap::from([("1".to_string(), settings("modalis-ws", ws))])),
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    }
}

fn spawn(
    addr: SocketAddr,
    ws: Option<SocketAddr>,
) -> Result<std::thread::JoinHandle<()>, BrokerError> {
    let cfg = config(addr, ws);
    std::thread::Builder::new()
        .name("rumqttd".to_string())
        .spawn(move || {
            let mut broker = Broker::new(cfg);
            // start() returns only when every listener thread has ended (a failed bind, say).
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker failed");
            }
        })
        .map_err(BrokerError::Spawn)
}

async fn wait_listening(
    addr: SocketAddr,
    thread: &std::thread::JoinHandle<()>,
) -> Result<(), Duration> {
    let started = tokio::time::Instant::now();
    while started.elapsed() < READY_TIMEOUT {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if thread.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(started.elapsed())
}
