//! The MQTT edge: the only module that touches rumqttc.
//!
//! [`Bus::start`] returns three parts:
//! - a [`BusHandle`] (cheap to clone) to publish and subscribe from any task;
//! - an [`Inbox`] with everything that arrives, decoded and checked against the wire contract
//!   ([`payload`]: the topic's JSON Schema, then serde, then the ids against the topic), plus
//!   the connection's state changes, so the runtime can audit them;
//! - a [`BusTask`], the one tokio task that polls rumqttc's event loop.
//!
//! The rumqttc pitfalls this module exists to contain (design brief, "MQTT client"):
//! - the event loop is polled in its own task and nothing else ever runs in that loop: a
//!   publish awaited inside the polling loop deadlocks once the request channel fills
//!   (rumqttc #910). Re-subscribing and the birth message on every ConnAck are issued by a
//!   second future joined with the poller, which may wait on the channel while the poller
//!   keeps draining it;
//! - rumqttc reconnects on the next poll with no delay at all, so this module sleeps with a
//!   capped, jittered exponential back-off between failed attempts;
//! - rumqttc does not restore subscriptions after a reconnect (rumqttc #250), and the session
//!   is clean anyway (see below), so every ConnAck re-subscribes;
//! - `TCP_NODELAY` is set (without it QoS 0 shows ~40 ms tails) and the 10 KiB default packet
//!   limit is raised (a dose report is bigger);
//! - MQTT v5, so a refused publish comes back with a reason code (135, not authorised) that is
//!   reported as [`BusEvent::PublishRefused`] instead of silence.
//!
//! Sessions are clean (`clean_start`) on purpose: a command queued while the connection was
//! down must not be delivered late, when the situation it was meant for has passed. For the
//! same reason [`BusHandle::publish`] fails fast with [`BusError::NotConnected`] instead of
//! queueing; the lease on every energy command is what keeps a device safe meanwhile.
//!
//! The inbound queue to the consumer is bounded; when it is full new messages are dropped and
//! counted ([`BusStats::dropped_inbound`]) so a slow consumer can never stall the poller (and
//! with it keep-alives and outgoing commands). Connection events travel on a separate queue
//! and are delivered first; e-stops (the `estop` topic) on another, delivered next, so that a
//! flood of telemetry that fills the inbound queue neither drops nor delays one.

pub mod asyncapi;
pub mod payload;
pub mod topics;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS as RQoS;
use rumqttc::v5::mqttbytes::v5::{
    Filter, LastWill, Packet, PubAckReason, Publish, SubscribeReasonCode,
};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::payload::{DecodeError, Inbound};
use self::topics::{TopicKind, Topics};

/// MQTT delivery guarantee. QoS 2 is not offered: commands carry their own ids and are acked
/// at the application level, so its extra round trip buys nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Qos {
    /// Fire and forget (telemetry).
    AtMostOnce,
    /// Delivered at least once (commands, acks, state, alarms).
    AtLeastOnce,
}

impl Qos {
    fn to_rumqttc(self) -> RQoS {
        match self {
            Qos::AtMostOnce => RQoS::AtMostOnce,
            Qos::AtLeastOnce => RQoS::AtLeastOnce,
        }
    }
}

/// Where the broker listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BrokerAddr {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// MQTT over TLS (`mqtts://`): the broker's certificate is checked against
    /// [`BusConfig::tls`]'s CA.
    pub tls: bool,
}

impl BrokerAddr {
    /// The default MQTT port.
    pub const DEFAULT_PORT: u16 = 1883;

    /// The default MQTT-over-TLS port.
    pub const DEFAULT_TLS_PORT: u16 = 8883;

    /// Parses `mqtt://host:port` (or `tcp://`; the port defaults to 1883) and
    /// `mqtts://host:port` (or `ssl://`; TLS, the port defaults to 8883).
    pub fn parse(url: &str) -> Result<BrokerAddr, BusError> {
        let bad = |reason: &str| BusError::BrokerUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let (rest, tls) = if let Some(r) = url.strip_prefix("mqtt://") {
            (r, false)
        } else if let Some(r) = url.strip_prefix("tcp://") {
            (r, false)
        } else if let Some(r) = url.strip_prefix("mqtts://") {
            (r, true)
        } else if let Some(r) = url.strip_prefix("ssl://") {
            (r, true)
        } else {
            return Err(bad("expected mqtt://host:port or mqtts://host:port"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('?') || rest.contains('@') {
            return Err(bad(
                "expected only host and port (credentials go in the username/password options)",
            ));
        }
        // An IPv6 literal is written in brackets: mqtt://[::1]:1883.
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed '[' in IPv6 host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(bad("expected ':port' after the IPv6 host")),
            };
            (h, port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(bad("the host is empty"));
        }
        let port = match port {
            None if tls => BrokerAddr::DEFAULT_TLS_PORT,
            None => BrokerAddr::DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad(&format!("invalid port {p:?}: expected 1-65535")))?,
        };
        Ok(BrokerAddr {
            host: host.to_string(),
            port,
            tls,
        })
    }
}

impl std::fmt::Display for BrokerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// Certificates for MQTT over TLS, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA that signed the broker's certificate: the only root trusted (a clinic network
    /// runs its own CA; the system's public roots are not consulted).
    pub ca_file: PathBuf,
    /// The client's certificate chain, when the broker asks clients for one.
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key.
    pub client_key: Option<PathBuf>,
}

impl TlsFiles {
    /// A rustls client configuration (ring provider, TLS 1.2 and 1.3) from the files.
    fn client_config(&self) -> Result<rustls::ClientConfig, BusError> {
        use rustls_pki_types::pem::PemObject as _;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |field: &'static str, path: &Path, why: String| BusError::Config {
            field,
            reason: format!("{}: {why}", path.display()),
        };
        let mut roots = rustls::RootCertStore::empty();
        let cas = CertificateDer::pem_file_iter(&self.ca_file)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| bad("tls.ca_file", &self.ca_file, e.to_string()))?;
        if cas.is_empty() {
            return Err(bad(
                "tls.ca_file",
                &self.ca_file,
                "no PEM certificate in it".into(),
            ));
        }
        for ca in cas {
            roots
                .add(ca)
                .map_err(|e| bad("tls.ca_file", &self.ca_file, e.to_string()))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| BusError::Config {
            field: "tls",
            reason: e.to_string(),
        })?
        .with_root_certificates(roots);
        match (&self.client_cert, &self.client_key) {
            (None, None) => Ok(builder.with_no_client_auth()),
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| bad("tls.client_cert", cert, e.to_string()))?;
                let key_der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| bad("tls.client_key", key, e.to_string()))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| bad("tls.client_key", key, e.to_string()))
            }
            _ => Err(BusError::Config {
                field: "tls",
                reason: "a client certificate needs its key, and a key its certificate".into(),
            }),
        }
    }
}

/// Username and password for the broker.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Username.
    pub username: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    // The password never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A message to publish: topic, encoded payload, QoS and retain flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    /// Full topic.
    pub topic: String,
    /// Encoded payload.
    pub payload: Vec<u8>,
    /// Delivery guarantee.
    pub qos: Qos,
    /// Whether the broker keeps it for late subscribers.
    pub retain: bool,
}

impl OutboundMessage {
    /// `payload` encoded as JSON.
    pub fn json<T: Serialize>(
        topic: impl Into<String>,
        payload: &T,
        qos: Qos,
        retain: bool,
    ) -> Result<OutboundMessage, BusError> {
        let topic = topic.into();
        let payload = payload::encode(payload).map_err(|e| BusError::Encode {
            topic: topic.clone(),
            message: e.to_string(),
        })?;
        Ok(OutboundMessage {
            topic,
            payload,
            qos,
            retain,
        })
    }
}

/// Reconnect back-off: `initial`, doubling per failed attempt up to `max`, with +/-20 %
/// jitter so that many clients of a restarted broker do not reconnect in lock step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The delay before attempt `failures + 1` (without jitter).
    pub fn nominal(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.min(20)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    fn jittered(&self, failures: u32) -> Duration {
        let nominal = self.nominal(failures);
        // A per-process random hash is all the randomness jitter needs.
        let mut h = RandomState::new().build_hasher();
        h.write_u32(failures);
        let unit = (h.finish() % 1000) as f64 / 1000.0; // [0, 1)
        nominal.mul_f64(0.8 + 0.4 * unit).min(self.max)
    }
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// The broker.
    pub broker: BrokerAddr,
    /// MQTT client id; unique per broker (a second client with the same id disconnects the
    /// first).
    pub client_id: String,
    /// Username and password, if the broker wants them.
    pub credentials: Option<Credentials>,
    /// Certificates for an `mqtts://` broker (required for one, refused for `mqtt://`).
    pub tls: Option<TlsFiles>,
    /// Keep-alive interval (at least 5 s, rumqttc's floor). The broker declares the client dead,
    /// and publishes its last will, after 1.5 times this without a packet.
    pub keep_alive: Duration,
    /// Published by the broker when the connection dies without a clean disconnect; also
    /// published by the bus itself before a clean shutdown.
    pub last_will: Option<OutboundMessage>,
    /// Published after every ConnAck (e.g. the retained `online` state), so that it survives a
    /// broker restart that lost retained messages.
    pub birth: Option<OutboundMessage>,
    /// Filters subscribed on every ConnAck.
    pub subscriptions: Vec<(String, Qos)>,
    /// Reconnect back-off.
    pub backoff: Backoff,
    /// Largest packet accepted from the broker, bytes (rumqttc's default is 10 KiB).
    pub max_packet_bytes: u32,
    /// Inbound messages queued for the consumer before new ones are dropped and counted.
    pub inbound_capacity: usize,
    /// Outgoing requests queued for the event loop.
    pub request_capacity: usize,
    /// QoS 1 publishes sent and not yet acknowledged before the next one waits for an ack
    /// (a broker that announces a lower receive maximum lowers it further). rumqttc keeps a
    /// slot per packet id up to this bound for the whole connection, about 220 bytes each:
    /// 14 MiB resident per client at the default, 65 535.
    pub max_inflight: u16,
    /// How long [`BusHandle::publish`] waits for room in the outgoing queue.
    pub publish_timeout: Duration,
    /// How long a clean shutdown waits for the `offline` state and the DISCONNECT to go out.
    pub shutdown_grace: Duration,
    /// The controller namespace inbound messages are decoded against.
    pub topics: Topics,
}

impl BusConfig {
    /// A configuration with the defaults: keep-alive 5 s, back-off 100 ms to 5 s, 1 MiB
    /// packets, 1024 inbound messages, 65 535 QoS 1 publishes in flight, no will, no birth, no
    /// subscriptions.
    pub fn new(broker_url: &str, client_id: &str, topics: Topics) -> Result<BusConfig, BusError> {
        Ok(BusConfig {
            broker: BrokerAddr::parse(broker_url)?,
            client_id: client_id.to_string(),
            credentials: None,
            tls: None,
            keep_alive: Duration::from_secs(5),
            last_will: None,
            birth: None,
            subscriptions: Vec::new(),
            backoff: Backoff::default(),
            max_packet_bytes: 1024 * 1024,
            inbound_capacity: 1024,
            request_capacity: 256,
            // rumqttc's own default. 1024 would save about 14 MiB per client (the demo's
            // peak RSS fell from 223-225 to 139-143 MiB) and is never the limit in practice
            // (mosquitto 2.0 announces a receive maximum of 20), but in the benchmark it made
            // the reaction's p99 under load worse, 12 A/B runs alternating: median 2.6 ms
            // against 1.6 (BENCHMARKS.md, 2026-12-07 afternoon). Not explained, so not taken.
            max_inflight: u16::MAX,
            publish_timeout: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(2),
            topics,
        })
    }

    fn validate(&self) -> Result<(), BusError> {
        let bad = |field: &'static str, reason: String| Err(BusError::Config { field, reason });
        // MQTT 3.1.1 guarantees 1-23 characters; brokers accept more but ids stay short and
        // topic-safe so they show up readably in broker logs.
        if self.client_id.is_empty()
            || self.client_id.len() > 128
            || !self
                .client_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return bad(
                "client_id",
                format!(
                    "expected 1-128 letters, digits, '-', '_' or '.', got {:?}",
                    self.client_id
                ),
            );
        }
        match (&self.tls, self.broker.tls) {
            (None, true) => {
                return bad(
                    "tls",
                    format!(
                        "{} is a TLS broker: give the CA that signed its certificate (--ca-file)",
                        self.broker
                    ),
                );
            }
            (Some(_), false) => {
                return bad(
                    "tls",
                    format!(
                        "certificates were given but {} is plain MQTT: use mqtts://",
                        self.broker
                    ),
                );
            }
            _ => {}
        }
        if self.keep_alive < Duration::from_secs(5) || self.keep_alive > Duration::from_secs(65535)
        {
            return bad(
                "keep_alive",
                format!("expected 5-65535 s, got {:?}", self.keep_alive),
            );
        }
        if self.backoff.initial.is_zero() || self.backoff.max < self.backoff.initial {
            return bad(
                "backoff",
                format!(
                    "expected 0 < initial <= max, got {:?}",
                    (self.backoff.initial, self.backoff.max)
                ),
            );
        }
        if self.max_packet_bytes < 10 * 1024 {
            return bad(
                "max_packet_bytes",
                format!("expected at least 10240, got {}", self.max_packet_bytes),
            );
        }
        if self.inbound_capacity == 0 || self.request_capacity == 0 {
            return bad(
                "inbound_capacity/request_capacity",
                "expected at least 1".to_string(),
            );
        }
        if self.max_inflight == 0 {
            return bad("max_inflight", "expected 1-65535, got 0".to_string());
        }
        Ok(())
    }
}

/// Why the bus could not do something. Every variant names the broker, topic or field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The broker URL is not one the bus can use.
    #[error("invalid broker url {url:?}: {reason}")]
    BrokerUrl {
        /// As given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A configuration field is out of range.
    #[error("invalid bus configuration: {field}: {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The payload could not be encoded.
    #[error("publish to {topic:?}: cannot encode the payload: {message}")]
    Encode {
        /// Topic.
        topic: String,
        /// Encoder's message.
        message: String,
    },
    /// The broker connection is down; nothing was queued.
    #[error("publish to {topic:?}: not connected to the broker")]
    NotConnected {
        /// Topic.
        topic: String,
    },
    /// The outgoing queue stayed full.
    #[error("publish to {topic:?}: the outgoing queue stayed full for {waited_ms} ms")]
    QueueFull {
        /// Topic.
        topic: String,
        /// How long it waited.
        waited_ms: u64,
    },
    /// rumqttc refused the request (invalid topic, or the bus task has ended).
    #[error("{what} {topic:?}: {message}")]
    Client {
        /// `publish to` or `subscribe to`.
        what: &'static str,
        /// Topic or filter.
        topic: String,
        /// rumqttc's message.
        message: String,
    },
    /// [`Bus::start`] was called outside a tokio runtime.
    #[error("the MQTT bus needs a tokio runtime to run its task in")]
    NoRuntime,
    /// No ConnAck within the wait.
    #[error("not connected to {broker} within {waited_ms} ms")]
    ConnectTimeout {
        /// The broker.
        broker: String,
        /// How long it waited.
        waited_ms: u64,
    },
}

/// Something that happened on the bus, in the order it happened (connection events first).
#[derive(Debug, Clone, PartialEq)]
pub enum BusEvent {
    /// The broker accepted the connection (subscriptions and the birth message follow).
    Connected {
        /// Counts ConnAcks since the bus started: 1 for the first connection.
        connection: u64,
        /// Whether the broker kept a session (never, with clean sessions).
        session_present: bool,
    },
    /// The connection failed or dropped; the bus retries after `retry_in`.
    Disconnected {
        /// What happened, as rumqttc (or the broker's DISCONNECT) said.
        error: String,
        /// The back-off before the next attempt.
        retry_in: Duration,
    },
    /// The broker refused a QoS 1 publish (MQTT v5 reason code), e.g. not authorised by its
    /// ACL.
    PublishRefused {
        /// The reason code.
        reason: String,
    },
    /// The broker refused a subscription.
    SubscribeRefused {
        /// The reason code.
        reason: String,
    },
    /// A valid message.
    Message {
        /// What arrived, decoded and checked.
        message: Inbound,
        /// Whether the broker delivered it from its retained store.
        retained: bool,
    },
    /// An invalid message: never to be acted on. Counted in [`BusStats::rejected`].
    Rejected(DecodeError),
}

/// Counters since the bus started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusStats {
    /// ConnAcks received.
    pub connections: u64,
    /// Messages received from the broker.
    pub received: u64,
    /// Messages dropped because the consumer's queue was full.
    pub dropped_inbound: u64,
    /// Connection events dropped because their queue was full.
    pub dropped_events: u64,
    /// Messages rejected by decoding.
    pub rejected: u64,
    /// Messages handed to the event loop.
    pub published: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    received: AtomicU64,
    dropped_inbound: AtomicU64,
    dropped_events: AtomicU64,
    rejected: AtomicU64,
    published: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> BusStats {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BusStats {
            connections: r(&self.connections),
            received: r(&self.received),
            dropped_inbound: r(&self.dropped_inbound),
            dropped_events: r(&self.dropped_events),
            rejected: r(&self.rejected),
            published: r(&self.published),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Link {
    connected: bool,
    /// ConnAcks so far.
    connection: u64,
}

#[derive(Debug)]
struct Shared {
    link: watch::Sender<Link>,
    subscriptions: Mutex<Vec<(String, Qos)>>,
    birth: Mutex<Option<OutboundMessage>>,
    will: Mutex<Option<OutboundMessage>>,
    counters: Counters,
    broker: BrokerAddr,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The data behind these locks are plain values replaced whole; a panic elsewhere cannot
    // leave them half-written, so a poisoned lock is still good to use.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A raw message from the poller, decoded on the consumer's side so that JSON parsing never
/// delays the event loop.
#[derive(Debug)]
struct RawMessage {
    topic: String,
    payload: Vec<u8>,
    retained: bool,
}

/// Publishes and subscribes; cheap to clone, usable from any task.
#[derive(Clone)]
pub struct BusHandle {
    client: AsyncClient,
    shared: Arc<Shared>,
    topics: Topics,
    publish_timeout: Duration,
}

impl std::fmt::Debug for BusHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusHandle")
            .field("broker", &self.shared.broker)
            .field("topics", &self.topics)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl BusHandle {
    /// Publishes `payload` as JSON on `topic`. Fails at once when the connection is down (a
    /// command must not be delivered late), and after the configured wait when the outgoing
    /// queue stays full. Success means handed to the event loop, not delivered: delivery of
    /// commands is confirmed by the device's ack.
    pub async fn publish<T: Serialize>(
        &self,
        topic: &str,
        payload: &T,
        qos: Qos,
        retain: bool,
    ) -> Result<(), BusError> {
        self.publish_message(OutboundMessage::json(topic, payload, qos, retain)?)
            .await
    }

    /// Publishes `payload` on `topic`, a topic of `kind`, with the QoS and retain flag the
    /// topic table ([`TopicKind`]) gives that kind: what the AsyncAPI document promises.
    pub async fn publish_as<T: Serialize>(
        &self,
        kind: TopicKind,
        topic: &str,
        payload: &T,
    ) -> Result<(), BusError> {
        self.publish(topic, payload, kind.qos(), kind.retained())
            .await
    }

    /// Publishes an already encoded message; see [`BusHandle::publish`].
    pub async fn publish_message(&self, msg: OutboundMessage) -> Result<(), BusError> {
        if !self.is_connected() {
            return Err(BusError::NotConnected { topic: msg.topic });
        }
        let topic = msg.topic.clone();
        let sent = tokio::time::timeout(
            self.publish_timeout,
            self.client
                .publish(msg.topic, msg.qos.to_rumqttc(), msg.retain, msg.payload),
        )
        .await;
        match sent {
            Err(_) => Err(BusError::QueueFull {
                topic,
                waited_ms: u64::try_from(self.publish_timeout.as_millis()).unwrap_or(u64::MAX),
            }),
            Ok(Err(e)) => Err(BusError::Client {
                what: "publish to",
                topic,
                message: e.to_string(),
            }),
            Ok(Ok(())) => {
                self.shared
                    .counters
                    .published
                    .fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// Subscribes to `filter` now (if connected) and after every reconnect.
    pub async fn subscribe(&self, filter: &str, qos: Qos) -> Result<(), BusError> {
        {
            let mut subs = lock(&self.shared.subscriptions);
            if !subs.iter().any(|(f, _)| f == filter) {
                subs.push((filter.to_string(), qos));
            }
        }
        if self.is_connected() {
            self.client
                .subscribe(filter, qos.to_rumqttc())
                .await
                .map_err(|e| BusError::Client {
                    what: "subscribe to",
                    topic: filter.to_string(),
                    message: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// Replaces the message published after every ConnAck (it is not published now).
    pub fn set_birth(&self, birth: Option<OutboundMessage>) {
        *lock(&self.shared.birth) = birth;
    }

    /// Replaces the last will; it takes effect from the next connection (MQTT fixes the will
    /// at CONNECT) and at a clean shutdown.
    pub fn set_last_will(&self, will: OutboundMessage) {
        *lock(&self.shared.will) = Some(will);
    }

    /// Whether the broker connection is up.
    pub fn is_connected(&self) -> bool {
        self.shared.link.borrow().connected
    }

    /// Waits until the broker connection is up.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), BusError> {
        let mut rx = self.shared.link.subscribe();
        match tokio::time::timeout(timeout, rx.wait_for(|l| l.connected)).await {
            Ok(Ok(_)) => Ok(()),
            // The sender lives in `shared`, which this handle holds: it cannot be closed, but
            // a timeout is the honest answer either way.
            Ok(Err(_)) | Err(_) => Err(BusError::ConnectTimeout {
                broker: self.shared.broker.to_string(),
                waited_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }

    /// The counters.
    pub fn stats(&self) -> BusStats {
        self.shared.counters.snapshot()
    }

    /// The controller namespace.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }
}

/// Everything that arrives: connection events and decoded messages.
#[derive(Debug)]
pub struct Inbox {
    events: mpsc::Receiver<BusEvent>,
    /// Messages on the `estop` topic, ahead of [`Inbox::messages`].
    estops: mpsc::Receiver<RawMessage>,
    messages: mpsc::Receiver<RawMessage>,
    shared: Arc<Shared>,
    topics: Topics,
}

impl Inbox {
    /// The next event; `None` once the bus task has ended and everything was read.
    /// Connection events come before messages that arrived after them, and e-stops before
    /// any other message. Invalid messages come back as [`BusEvent::Rejected`] (and are
    /// counted), never as messages.
    pub async fn recv(&mut self) -> Option<BusEvent> {
        let raw = tokio::select! {
            biased;
            Some(ev) = self.events.recv() => return Some(ev),
            Some(raw) = self.estops.recv() => raw,
            Some(raw) = self.messages.recv() => raw,
            else => return None,
        };
        Some(self.decode(raw))
    }

    /// The next event if one is already queued, without waiting; same order as
    /// [`Inbox::recv`].
    pub fn try_recv(&mut self) -> Option<BusEvent> {
        if let Ok(ev) = self.events.try_recv() {
            return Some(ev);
        }
        let raw = match self.estops.try_recv() {
            Ok(raw) => raw,
            Err(_) => self.messages.try_recv().ok()?,
        };
        Some(self.decode(raw))
    }

    fn decode(&self, raw: RawMessage) -> BusEvent {
        match payload::decode(&self.topics, &raw.topic, &raw.payload) {
            Ok(message) => BusEvent::Message {
                message,
                retained: raw.retained,
            },
            Err(e) => {
                self.shared
                    .counters
                    .rejected
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "rejected an inbound MQTT message");
                BusEvent::Rejected(e)
            }
        }
    }

    /// The counters.
    pub fn stats(&self) -> BusStats {
        self.shared.counters.snapshot()
    }
}

/// The task polling the event loop.
#[derive(Debug)]
pub struct BusTask {
    join: JoinHandle<()>,
}

impl BusTask {
    /// Kills the task without a DISCONNECT, as a crash would: the socket closes and the broker
    /// publishes the last will.
    pub fn abort(&self) {
        self.join.abort();
    }

    /// Waits for the task to end (after the cancellation token fired).
    pub async fn join(self) {
        // A JoinError here is a panic or an abort; either way the task is gone, which is what
        // the caller waits for.
        let _ = self.join.await;
    }
}

/// A running MQTT connection.
#[derive(Debug)]
pub struct Bus {
    /// Publish and subscribe.
    pub handle: BusHandle,
    /// What arrives.
    pub inbox: Inbox,
    /// The polling task.
    pub task: BusTask,
}

impl Bus {
    /// Starts the connection in its own task (needs a tokio runtime). Returns at once; the
    /// first [`BusEvent::Connected`] (or [`BusHandle::wait_connected`]) says when it is up.
    /// When `cancel` fires the bus publishes the last will's message itself (a clean shutdown
    /// is still an `offline`), disconnects cleanly and ends.
    pub fn start(config: BusConfig, cancel: CancellationToken) -> Result<Bus, BusError> {
        config.validate()?;
        payload::compile_validators().map_err(|reason| BusError::Config {
            field: "payload schemas",
            reason,
        })?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BusError::NoRuntime)?;
        let mut options = MqttOptions::new(
            config.client_id.clone(),
            config.broker.host.clone(),
            config.broker.port,
        );
        options.set_keep_alive(config.keep_alive);
        options.set_clean_start(true);
        options.set_max_packet_size(Some(config.max_packet_bytes));
        options.set_request_channel_capacity(config.request_capacity);
        options.set_outgoing_inflight_upper_limit(config.max_inflight);
        if let Some(c) = &config.credentials {
            options.set_credentials(c.username.clone(), c.password.clone());
        }
        if let Some(w) = &config.last_will {
            options.set_last_will(to_last_will(w));
        }
        if let Some(tls) = &config.tls {
            // Read the certificates now: a wrong file is a start-up error naming it, not a
            // connection that keeps failing.
            let cfg = tls.client_config()?;
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(Arc::new(cfg)),
            ));
        }
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        // The TCP connect and the ConnAck together; a dead host must not hold up a retry.
        net.set_connection_timeout(5);
        options.set_network_options(net);

        let (client, eventloop) = AsyncClient::new(options, config.request_capacity);
        let (link, _) = watch::channel(Link::default());
        let shared = Arc::new(Shared {
            link,
            subscriptions: Mutex::new(config.subscriptions.clone()),
            birth: Mutex::new(config.birth.clone()),
            will: Mutex::new(config.last_will.clone()),
            counters: Counters::default(),
            broker: config.broker.clone(),
        });
        // Connection events are rare (at most two per back-off period), so a modest bound
        // only matters for a consumer that never reads.
        let (event_tx, event_rx) = mpsc::channel(256);
        let (msg_tx, msg_rx) = mpsc::channel(config.inbound_capacity);
        // E-stops are rare and each one matters; 64 queued is far more than panels press.
        let (estop_tx, estop_rx) = mpsc::channel(ESTOP_CAPACITY);

        let poller = Poller {
            eventloop,
            client: client.clone(),
            shared: shared.clone(),
            event_tx,
            msg_tx,
            estop_tx,
            estop_topic: config.topics.estop(),
            backoff: config.backoff,
            grace: config.shutdown_grace,
        };
        let join = runtime.spawn(poller.run(cancel));
        Ok(Bus {
            handle: BusHandle {
                client,
                shared: shared.clone(),
                topics: config.topics.clone(),
                publish_timeout: config.publish_timeout,
            },
            inbox: Inbox {
                events: event_rx,
                estops: estop_rx,
                messages: msg_rx,
                shared,
                topics: config.topics,
            },
            task: BusTask { join },
        })
    }
}

fn to_last_will(m: &OutboundMessage) -> LastWill {
    LastWill::new(
        m.topic.clone(),
        m.payload.clone(),
        m.qos.to_rumqttc(),
        m.retain,
        None,
    )
}

struct Poller {
    eventloop: EventLoop,
    client: AsyncClient,
    shared: Arc<Shared>,
    event_tx: mpsc::Sender<BusEvent>,
    msg_tx: mpsc::Sender<RawMessage>,
    estop_tx: mpsc::Sender<RawMessage>,
    /// The `estop` topic of this bus's root, whose messages go to `estop_tx`.
    estop_topic: String,
    backoff: Backoff,
    grace: Duration,
}

/// Queued e-stops before one waits with the other messages.
const ESTOP_CAPACITY: usize = 64;

impl Poller {
    async fn run(self, cancel: CancellationToken) {
        // The resubscriber ends when the poller does, on cancel or otherwise.
        let done = CancellationToken::new();
        let resubscriber =
            resubscribe_on_connack(self.client.clone(), self.shared.clone(), done.clone());
        let poller = async move {
            self.poll_until(cancel).await;
            done.cancel();
        };
        // Joined in one task: the resubscriber may wait for room in the request channel while
        // the poller goes on draining it (rumqttc #910), and aborting the task ends both.
        tokio::join!(poller, resubscriber);
    }

    fn event(&self, ev: BusEvent) {
        if self.event_tx.try_send(ev).is_err() {
            self.shared
                .counters
                .dropped_events
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn set_link(&self, connected: bool, connection: u64) {
        self.shared.link.send_replace(Link {
            connected,
            connection,
        });
    }

    async fn poll_until(mut self, cancel: CancellationToken) {
        let mut failures: u32 = 0;
        let mut connection: u64 = 0;
        let mut broker_said: Option<String> = None;
        loop {
            let polled = tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                p = self.eventloop.poll() => p,
            };
            match polled {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    failures = 0;
                    connection += 1;
                    broker_said = None;
                    self.shared
                        .counters
                        .connections
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(broker = %self.shared.broker, connection, "MQTT connected");
                    self.event(BusEvent::Connected {
                        connection,
                        session_present: ack.session_present,
                    });
                    self.set_link(true, connection);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => self.forward(p),
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if !matches!(
                        ack.reason,
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                    ) {
                        tracing::warn!(reason = ?ack.reason, "broker refused a publish");
                        self.event(BusEvent::PublishRefused {
                            reason: format!("{:?}", ack.reason),
                        });
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    for code in &ack.return_codes {
                        if !matches!(code, SubscribeReasonCode::Success(_)) {
                            tracing::warn!(reason = ?code, "broker refused a subscription");
                            self.event(BusEvent::SubscribeRefused {
                                reason: format!("{code:?}"),
                            });
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Disconnect(d))) => {
                    // The error from the next poll reports it, with this reason attached.
                    broker_said = Some(format!("broker sent DISCONNECT ({:?})", d.reason_code));
                }
                Ok(_) => {}
                Err(e) => {
                    self.set_link(false, connection);
                    let retry_in = self.backoff.jittered(failures);
                    failures = failures.saturating_add(1);
                    let error = match broker_said.take() {
                        Some(said) => format!("{said}: {e}"),
                        None => e.to_string(),
                    };
                    tracing::warn!(broker = %self.shared.broker, %error, ?retry_in, "MQTT connection lost");
                    self.event(BusEvent::Disconnected { error, retry_in });
                    // A will changed since the last CONNECT applies from the next one.
                    let will = lock(&self.shared.will).as_ref().map(to_last_will);
                    if let Some(w) = will {
                        self.eventloop.options.set_last_will(w);
                    }
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(retry_in) => {}
                    }
                }
            }
        }
        self.shutdown().await;
    }

    fn forward(&self, p: Publish) {
        self.shared
            .counters
            .received
            .fetch_add(1, Ordering::Relaxed);
        let raw = RawMessage {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload.to_vec(),
            retained: p.retain,
        };
        // An e-stop takes its own queue; only if that is full too (a panel gone mad) does it
        // queue with everything else.
        let raw = if raw.topic == self.estop_topic {
            match self.estop_tx.try_send(raw) {
                Ok(()) => return,
                Err(
                    mpsc::error::TrySendError::Full(raw) | mpsc::error::TrySendError::Closed(raw),
                ) => raw,
            }
        } else {
            raw
        };
        match self.msg_tx.try_send(raw) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(raw)) => {
                let n = self
                    .shared
                    .counters
                    .dropped_inbound
                    .fetch_add(1, Ordering::Relaxed);
                // Log the first drop and then every 1024th, not every one.
                if n.is_multiple_of(1024) {
                    tracing::warn!(topic = %raw.topic, dropped = n + 1, "inbound queue full: message dropped");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.shared
                    .counters
                    .dropped_inbound
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A clean end: publish the will's message ourselves (the broker discards the will on a
    /// clean DISCONNECT), disconnect, and keep polling until the broker has closed the
    /// connection or the grace period is over.
    async fn shutdown(mut self) {
        if !self.shared.link.borrow().connected {
            return;
        }
        // The will's message and the DISCONNECT go behind everything already queued. try_*:
        // this is the polling task, which must never wait on its own channel; while the
        // channel is full, polling sends what is queued and makes room.
        let mut will = lock(&self.shared.will).clone();
        let mut disconnect_queued = false;
        // Not done when the DISCONNECT is written either: dropping the event loop then
        // closes a socket that still holds unread PUBACKs, and Linux answers that close with
        // a reset, which makes the broker discard what it has not read yet: the last
        // messages before the DISCONNECT (a session's final `e-stopped` status, lost in the
        // dashboard test) and the DISCONNECT itself, so the broker published the will. The
        // broker closes the connection once it has read the DISCONNECT, and with it
        // everything before; the poll that reports that close ends this.
        let deadline = tokio::time::Instant::now() + self.grace;
        loop {
            if let Some(w) = &will {
                let queued = self.client.try_publish(
                    w.topic.clone(),
                    w.qos.to_rumqttc(),
                    w.retain,
                    w.payload.clone(),
                );
                if queued.is_ok() {
                    will = None;
                }
            }
            if will.is_none() && !disconnect_queued {
                disconnect_queued = self.client.try_disconnect().is_ok();
            }
            match tokio::time::timeout_at(deadline, self.eventloop.poll()).await {
                Ok(Err(_)) => break,
                Err(_) => {
                    if !disconnect_queued {
                        tracing::warn!(
                            grace = ?self.grace,
                            "the outgoing queue did not drain at shutdown: the offline state \
                             or the DISCONNECT was not sent, and the broker will publish the will"
                        );
                    }
                    break;
                }
                Ok(Ok(_)) => {}
            }
        }
        let connection = self.shared.link.borrow().connection;
        self.set_link(false, connection);
    }
}

/// After every ConnAck: subscribe to every filter, then publish the birth message. Runs beside
/// the poller, never inside it.
async fn resubscribe_on_connack(client: AsyncClient, shared: Arc<Shared>, done: CancellationToken) {
    let mut link = shared.link.subscribe();
    let mut served = 0u64;
    loop {
        let current = *link.borrow_and_update();
        if current.connected && current.connection != served {
            served = current.connection;
            let subs = lock(&shared.subscriptions).clone();
            if !subs.is_empty() {
                let filters = subs
                    .iter()
                    .map(|(f, q)| Filter::new(f.clone(), q.to_rumqttc()));
                let sent = tokio::select! {
                    () = done.cancelled() => return,
                    r = client.subscribe_many(filters) => r,
                };
                if let Err(e) = sent {
                    tracing::warn!(error = %e, "could not queue the subscriptions");
                }
            }
            let birth = lock(&shared.birth).clone();
            if let Some(b) = birth {
                let sent = tokio::select! {
                    () = done.cancelled() => return,
                    r = client.publish(b.topic, b.qos.to_rumqttc(), b.retain, b.payload) => r,
                };
                match sent {
                    Ok(()) => {
                        shared.counters.published.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!(error = %e, "could not queue the birth message"),
                }
            }
        }
        tokio::select! {
            () = done.cancelled() => return,
            changed = link.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        let ok = |u: &str, host: &str, port: u16| {
            assert_eq!(
                BrokerAddr::parse(u).expect(u),
                BrokerAddr {
                    host: host.into(),
                    port,
                    tls: u.starts_with("mqtts") || u.starts_with("ssl"),
                }
            );
        };
        ok("mqtt://127.0.0.1:1884", "127.0.0.1", 1884);
        ok("mqtt://broker.local", "broker.local", 1883);
        ok("tcp://h:1/", "h", 1);
        ok("mqtt://[::1]:1883", "::1", 1883);
        ok("mqtts://h", "h", 8883);
        ok("ssl://h:9999", "h", 9999);
        for bad in [
            "127.0.0.1:1883",
            "mqtt://:1883",
            "mqtt://h:0",
            "mqtt://h:99999",
            "mqtt://u:p@h:1",
            "mqtt://h:1/path",
        ] {
            let e = BrokerAddr::parse(bad).expect_err(bad);
            assert!(e.to_string().contains(bad), "{e}");
        }
        assert_eq!(
            BrokerAddr::parse("mqtt://[::1]:7")
                .expect("valid")
                .to_string(),
            "mqtt://[::1]:7"
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff::default();
        assert_eq!(b.nominal(0), Duration::from_millis(100));
        assert_eq!(b.nominal(1), Duration::from_millis(200));
        assert_eq!(b.nominal(10), Duration::from_secs(5));
        assert_eq!(b.nominal(u32::MAX), Duration::from_secs(5));
        for f in 0..40 {
            let j = b.jittered(f);
            assert!(j <= b.max && j >= b.nominal(f).mul_f64(0.8), "{f}: {j:?}");
        }
    }

    #[test]
    fn config_is_checked() {
        let topics = Topics::new("c").expect("valid");
        let mut c = BusConfig::new("mqtt://127.0.0.1:1", "ctl", topics).expect("valid");
        assert!(c.validate().is_ok());
        c.keep_alive = Duration::from_secs(1);
        assert!(matches!(
            c.validate(),
            Err(BusError::Config {
                field: "keep_alive",
                ..
            })
        ));
        c.keep_alive = Duration::from_secs(5);
        c.client_id = "a/b".into();
        assert!(matches!(
            c.validate(),
            Err(BusError::Config {
                field: "client_id",
                ..
            })
        ));
        c.client_id = "ctl".into();
        c.max_inflight = 0;
        assert!(matches!(
            c.validate(),
            Err(BusError::Config {
                field: "max_inflight",
                ..
            })
        ));
    }

    #[test]
    fn credentials_never_print_the_password() {
        let c = Credentials {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
