//! Helpers of the end-to-end benchmark (`host/benches/e2e.rs`; `stations.rs` shares the
//! profile renaming): a mosquitto on a free
//! loopback port, a raw MQTT client on the same library the controller uses (rumqttc, MQTT 5,
//! `TCP_NODELAY`) for the floors and for the devices the benchmark plays itself, percentiles,
//! and the process counters read from /proc.
//!
//! Bench code cannot import the integration tests' helpers (`host/tests/it/bus.rs`), hence a
//! launcher of its own; it runs mosquitto anonymous and without an ACL because the benchmark
//! measures the broker's speed, not its access control (`host/tests/it/acl.rs` tests that).

use std::io::Write as _;
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use modalis::bus::Qos;

/// A mosquitto process on 127.0.0.1, killed (by its own pid) on drop.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

fn mosquitto_bin() -> PathBuf {
    // Debian installs the broker in /usr/sbin, which a non-root PATH may lack.
    let sbin = PathBuf::from("/usr/sbin/mosquitto");
    if sbin.exists() {
        sbin
    } else {
        PathBuf::from("mosquitto")
    }
}

impl Mosquitto {
    /// Starts mosquitto on a free loopback port and waits until it accepts connections.
    /// `nodelay`: `set_tcp_nodelay true`. mosquitto's default is false, and then its sends
    /// wait on Nagle's algorithm against the client's delayed ACK: every two-hop exchange on
    /// loopback takes 10-40 ms instead of a fraction of one.
    pub fn start(nodelay: bool) -> anyhow::Result<Mosquitto> {
        let dir = tempfile::tempdir()?;
        // mosquitto started as root drops to the `mosquitto` user and then refuses files it
        // cannot read: make the directory and the file readable.
        set_mode(dir.path(), 0o755)?;
        let port = modalis::broker::free_port()?.port();
        let conf = dir.path().join("mosquitto.conf");
        let mut f = std::fs::File::create(&conf)?;
        // No limit on the queue per client: the throughput floor must measure the broker
        // moving messages, not its default cap of 1000 queued messages dropping them.
        write!(
            f,
            "listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence false\n\
             max_queued_messages 0\n\
             log_dest stderr\n\
             log_type error\n\
             set_tcp_nodelay {nodelay}\n"
        )?;
        drop(f);
        set_mode(&conf, 0o644)?;
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting mosquitto (apt-get install mosquitto)")?;
        let mut m = Mosquitto {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            ensure!(
                Instant::now() < deadline,
                "mosquitto did not listen on 127.0.0.1:{port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Whatever answered must be this mosquitto: one that failed to bind exits at once.
        std::thread::sleep(Duration::from_millis(50));
        if let Some(st) = m.child.try_wait()? {
            bail!("mosquitto exited ({st}) although something listens on 127.0.0.1:{port}");
        }
        Ok(m)
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One message as a raw client received it, stamped when its poll task saw it.
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub at: Instant,
}

/// A bare rumqttc MQTT 5 client, set up as `modalis::bus::Bus` sets up its own (TCP_NODELAY,
/// clean start), but with no schema check and no logic: what the floors are measured with, and
/// what the benchmark's own devices and panel speak through.
pub struct Raw {
    pub client: AsyncClient,
    pub rx: mpsc::UnboundedReceiver<Received>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

pub fn qos(q: Qos) -> QoS {
    match q {
        Qos::AtMostOnce => QoS::AtMostOnce,
        Qos::AtLeastOnce => QoS::AtLeastOnce,
    }
}

impl Raw {
    /// Connects to 127.0.0.1:`port` as `id` and subscribes to `filters`; returns once the
    /// broker acknowledged every subscription.
    pub async fn connect(port: u16, id: &str, filters: &[(String, Qos)]) -> anyhow::Result<Raw> {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_clean_start(true);
        o.set_max_packet_size(Some(1 << 20));
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        o.set_network_options(net);
        // The controller's own request capacity (BusConfig's default). A blast fills the
        // channel, and its queue keeps the size it grew to: at 8192 the eight blasting
        // devices held ~42 MiB of queued publishes (heaptrack, BENCHMARKS.md), counted in the
        // process's RSS as if the controller had grown.
        let (client, mut el) = AsyncClient::new(o, 256);
        let (tx, rx) = mpsc::unbounded_channel();
        // (connected, subscriptions acknowledged)
        let (acks_tx, mut acks) = watch::channel((false, 0usize));
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        // Publishing happens elsewhere: never from the task that polls (rumqttc #910).
        let task = tokio::spawn(async move {
            loop {
                let ev = tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    ev = el.poll() => ev,
                };
                match ev {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let at = Instant::now();
                        let _ = tx.send(Received {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.to_vec(),
                            at,
                        });
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        acks_tx.send_modify(|a| a.0 = true);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        acks_tx.send_modify(|a| a.1 += 1);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        let deadline = Duration::from_secs(10);
        tokio::time::timeout(deadline, acks.wait_for(|a| a.0))
            .await
            .with_context(|| format!("{id}: no ConnAck from 127.0.0.1:{port} within 10 s"))??;
        for (f, q) in filters {
            client.subscribe(f.clone(), qos(*q)).await?;
        }
        let n = filters.len();
        tokio::time::timeout(deadline, acks.wait_for(|a| a.1 >= n))
            .await
            .with_context(|| format!("{id}: subscriptions not acknowledged within 10 s"))??;
        Ok(Raw {
            client,
            rx,
            cancel,
            task,
        })
    }

    pub async fn publish(&self, topic: &str, q: Qos, payload: Vec<u8>) -> anyhow::Result<()> {
        self.client
            .publish(topic.to_string(), qos(q), false, payload)
            .await
            .with_context(|| format!("publishing on {topic}"))
    }

    /// Everything already received, dropped.
    pub fn drain(&mut self) {
        while self.rx.try_recv().is_ok() {}
    }

    pub async fn close(self) {
        let _ = self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// Sorted samples (microseconds) and nearest-rank percentiles.
pub struct Dist(pub Vec<u64>);

impl Dist {
    pub fn new(mut v: Vec<u64>) -> Dist {
        v.sort_unstable();
        Dist(v)
    }

    pub fn pct(&self, p: f64) -> u64 {
        let i = ((self.0.len().saturating_sub(1)) as f64 * p).round() as usize;
        self.0.get(i).copied().unwrap_or(0)
    }

    pub fn max(&self) -> u64 {
        self.0.last().copied().unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `p50 .. p99 .. p99.9 .. max` in ms, with the count.
    pub fn line(&self) -> String {
        format!(
            "p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms (n = {})",
            ms(self.pct(0.5)),
            ms(self.pct(0.9)),
            ms(self.pct(0.99)),
            ms(self.pct(0.999)),
            ms(self.max()),
            self.len()
        )
    }
}

pub fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

pub fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// CPU time (user + system) of a process so far, from /proc; `None` where there is none.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: count fields after it.
    let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime, fields 14 and 15 of the line, in clock ticks (USER_HZ, 100 on Linux).
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Resident set size of a process, KiB, from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// `text` (a device profile) with its top-level `id = "..."` made `<id>-<suffix>`.
pub fn with_id_suffix(text: &str, suffix: &str) -> anyhow::Result<String> {
    let mut found = false;
    let mut out = String::with_capacity(text.len() + 8);
    for line in text.lines() {
        match line.strip_prefix("id = \"").and_then(|r| r.split_once('"')) {
            Some((id, rest)) if !found => {
                found = true;
                out.push_str(&format!("id = \"{id}-{suffix}\"{rest}"));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    ensure!(found, "no top-level `id = \"...\"` line in the profile");
    Ok(out)
}

/// A file of the repository's `examples/`.
pub fn example(rel: &str) -> anyhow::Result<String> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(rel);
    std::fs::read_to_string(&p).with_context(|| p.display().to_string())
}
