//! Scale benchmark: `cargo bench -p modalis --bench stations`.
//!
//! Sixteen stations run at once on one controller: each its own session with its own device
//! profiles (infrared pads + TENS together, then laser acupuncture: 148 approved steps, 740 s
//! of session time), all started together, time-compressed x30, against one embedded broker
//! and one simulator for all 48 devices.
//!
//! Prints the step start jitter across all stations (how late each step was emitted against
//! its session-clock time, wall clock, as the controller measures it in
//! `SessionSnapshot::counters.jitter_us`) against the scale issue's target, p99 <= 5 ms, and
//! as a ratio against floors measured in the same run before the stations start:
//! - the broker's QoS 1 round trip through [`modalis::bus::Bus`] (the ratio the issue asks
//!   for: p99 jitter / median round trip);
//! - an idle tokio timer on a current-thread runtime (how the controller's loop is woken);
//! - one write-ahead audit append (every command waits for one before it is published).
//!
//! Besides: the jitter per block, how late each step's command reached an MQTT subscriber
//! (the controller's lateness plus its audit append and publish, as a device would see it),
//! commands, alarms (a clean simulated run has none), the controller's counters, the audit
//! log's record count and whether it verifies, and the process CPU time.
//!
//! One run is one sample of a noisy 2-core machine: run it a few times and quote medians.
//! `RUST_LOG` sets the log filter (default `warn`: alarms are logged).

// The controller binary's allocator (src/main.rs), so that the controller measured here
// allocates as the shipped one does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// The e2e benchmark's helpers; this one uses only the profile renaming.
#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use modalis::broker::EmbeddedBroker;
use modalis::bus::payload::{
    AlarmMessage, AlarmPriority, CommandAction, Inbound, SessionState, wall_clock_ms,
};
use modalis::bus::topics::Topics;
use modalis::bus::{Bus, BusConfig, BusEvent, Qos};
use modalis::controller::{Controller, ControllerConfig, ControllerEvent, SessionSnapshot};
use modalis::plugin::RuntimeConfig;
use modalis::protocol::Protocol;
use modalis::sim::{SimOptions, Simulator};
use modalis_audit::{Actor, AuditLog, Entry, Event};

/// Stations on the one controller.
const STATIONS: usize = 16;
/// Time compression: the 740 s session plays in about 25 s.
const SPEED: u32 = 30;
/// Broker round trips for the floor.
const RTT_SAMPLES: usize = 200;
/// Idle timer sleeps for the second floor.
const TIMER_SAMPLES: usize = 200;
/// Write-ahead audit appends for the third floor.
const AUDIT_SAMPLES: usize = 200;
/// Scale issue: step start jitter p99 at most 5 ms.
const TARGET_P99_MS: f64 = 5.0;
const CONTROLLER_ID: &str = "bench-stations";
const OPERATOR: &str = "bench";

/// The device profiles each station gets its own copy of: (role, example file).
const PROFILES: [(&str, &str); 3] = [
    ("heat", "mire-pads.toml"),
    ("tens", "tens-2ch.toml"),
    ("laser-acu", "laser-acupuncture-probe.toml"),
];

/// One station's protocol: MIRE pads (4 min) with modulated TENS (a new frequency every 5 s),
/// then laser acupuncture on the DPN point set plus Bafeng, both sides (20 points, 20 s each
/// after 5 s to place the probe). 12 + 96 + 40 = 148 steps over 740 s of session time.
fn protocol_toml(station: usize) -> String {
    let s = format!("s{station:02}");
    format!(
        r#"[protocol]
name = "scale station {station:02}: infrared pads + TENS, then laser acupuncture"

[patient]
file = "patient.toml"

[devices]
heat = "heat-{s}.toml"
tens = "tens-{s}.toml"
laser-acu = "laser-acu-{s}.toml"

[[block]]
id = "heat-feet"
plugin = "infrared-heat"
device = "heat"
start = {{ at_s = 0 }}

[block.params]
session_minutes = 4
target_skin_temp_c = 39.0
ramp_s = 60
pads = [
    {{ channel = "pad-1", site = "foot_plantar:left", rated_power_w = 5.0 }},
    {{ channel = "pad-2", site = "foot_dorsum:left", rated_power_w = 5.0 }},
    {{ channel = "pad-3", site = "foot_plantar:right", rated_power_w = 5.0 }},
    {{ channel = "pad-4", site = "foot_dorsum:right", rated_power_w = 5.0 }},
]

[[block]]
id = "tens-legs"
plugin = "tens"
device = "tens"
start = {{ with = "heat-feet" }}

[block.params]
mode = "modulated"
frequency_hz = 14
pulse_width_us = 250
amplitude_ma = 25
session_minutes = 4
ramp_up_s = 20
ramp_down_s = 10
modulation_period_s = 5
electrodes = [
    {{ channel = "ch1", site = "lower_leg_lateral:left", electrode_area_cm2 = 25 }},
    {{ channel = "ch2", site = "lower_leg_lateral:right", electrode_area_cm2 = 25 }},
]

[[block]]
id = "laser-acu"
plugin = "laser-acupuncture"
device = "laser-acu"
start = {{ after = "heat-feet" }}

[block.params]
set = "dpn"
points = ["EX-LE10"]
side = "both"
dose_j_per_point = 4.0
probe_power_mw = 200
wavelength_nm = 808
beam_area_cm2 = 1.0
reposition_s = 5
"#
    )
}

/// Writes every station's protocol, profiles and the patient into `dir`; returns the
/// protocol files.
fn write_stations(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let read = |p: PathBuf| std::fs::read_to_string(&p).with_context(|| p.display().to_string());
    std::fs::write(
        dir.join("patient.toml"),
        read(examples.join("patients/dpn-example.toml"))?,
    )?;
    let profiles: Vec<(&str, String)> = PROFILES
        .iter()
        .map(|(role, file)| Ok((*role, read(examples.join("profiles").join(file))?)))
        .collect::<anyhow::Result<_>>()?;
    let mut files = Vec::new();
    for n in 1..=STATIONS {
        let suffix = format!("s{n:02}");
        for (role, text) in &profiles {
            std::fs::write(
                dir.join(format!("{role}-{suffix}.toml")),
                common::with_id_suffix(text, &suffix)?,
            )?;
        }
        let f = dir.join(format!("station-{n:02}.toml"));
        std::fs::write(&f, protocol_toml(n))?;
        files.push(f);
    }
    Ok(files)
}

/// Sorted samples and nearest-rank percentiles (the controller's own rounding).
struct Dist(Vec<u64>);

impl Dist {
    fn new(mut v: Vec<u64>) -> Dist {
        v.sort_unstable();
        Dist(v)
    }

    fn pct(&self, p: f64) -> u64 {
        let i = ((self.0.len().saturating_sub(1)) as f64 * p).round() as usize;
        self.0.get(i).copied().unwrap_or(0)
    }

    fn max(&self) -> u64 {
        self.0.last().copied().unwrap_or(0)
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// One QoS 1 round trip of the probe: publish on its own alarm topic, wait for it to come
/// back decoded; `None` when it did not within `timeout`.
async fn round_trip(
    bus: &mut Bus,
    topics: &Topics,
    seq: u64,
    timeout: Duration,
) -> anyhow::Result<Option<Duration>> {
    let msg = AlarmMessage {
        seq,
        ts_ms: wall_clock_ms(),
        priority: AlarmPriority::Low,
        rule: "bench.rtt".into(),
        reason: "broker round trip probe".into(),
        session: None,
        device: None,
        channel: None,
    };
    let t0 = Instant::now();
    bus.handle
        .publish(&topics.alarm(), &msg, Qos::AtLeastOnce, false)
        .await?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, bus.inbox.recv()).await {
            Err(_) => return Ok(None),
            Ok(None) => bail!("the round-trip probe's bus ended"),
            Ok(Some(BusEvent::Message {
                message: Inbound::Alarm(a),
                ..
            })) if a.seq == seq => return Ok(Some(t0.elapsed())),
            Ok(Some(_)) => {}
        }
    }
}

/// The first floor: the broker's QoS 1 round trip through [`modalis::bus::Bus`] (publish to
/// a topic the same client subscribes to, until it is back and decoded). Microseconds.
async fn broker_rtt(url: &str, samples: usize) -> anyhow::Result<Dist> {
    let topics = Topics::new("bench-rtt-probe")?;
    let mut cfg = BusConfig::new(url, "bench-rtt-probe", topics.clone())?;
    cfg.subscriptions = vec![(topics.alarm(), Qos::AtLeastOnce)];
    let cancel = CancellationToken::new();
    let mut bus = Bus::start(cfg, cancel.clone())?;
    bus.handle.wait_connected(Duration::from_secs(10)).await?;
    let mut seq = 0;
    // The subscription goes out after the ConnAck: probe until the first echo, then warm up.
    loop {
        seq += 1;
        if round_trip(&mut bus, &topics, seq, Duration::from_millis(500))
            .await?
            .is_some()
        {
            break;
        }
        ensure!(seq < 20, "the broker never echoed the round-trip probe");
    }
    let mut v = Vec::with_capacity(samples);
    for i in 0..samples + 20 {
        seq += 1;
        let d = round_trip(&mut bus, &topics, seq, Duration::from_secs(2))
            .await?
            .context("a round-trip probe was not echoed within 2 s")?;
        if i >= 20 {
            v.push(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        }
    }
    cancel.cancel();
    bus.task.join().await;
    Ok(Dist::new(v))
}

/// The second floor: how late `sleep_until` wakes on an idle current-thread runtime on a
/// thread of its own, which is how the controller's loop is woken. Microseconds.
fn timer_lateness(samples: usize) -> anyhow::Result<Dist> {
    std::thread::spawn(move || -> anyhow::Result<Dist> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let v = rt.block_on(async {
            let mut v = Vec::with_capacity(samples);
            for i in 0..samples as u64 {
                // 2-9 ms ahead, off the millisecond grid, as step times on a compressed clock.
                let due = tokio::time::Instant::now()
                    + Duration::from_micros(2_000 + (i * 1_337) % 7_000);
                tokio::time::sleep_until(due).await;
                let late = tokio::time::Instant::now().saturating_duration_since(due);
                v.push(u64::try_from(late.as_micros()).unwrap_or(u64::MAX));
            }
            v
        });
        Ok(Dist::new(v))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the timer thread panicked"))?
}

/// Process CPU time (user + system) so far, from /proc; `None` where there is none.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name is in parentheses and may hold spaces: count fields after it.
    let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime, fields 14 and 15 of the line, in clock ticks (USER_HZ, 100 on Linux).
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// The third floor: one write-ahead audit append (the record flushed before it returns), one
/// caller at a time as the controller appends, in a fresh log on the same disk. Microseconds.
fn audit_append(dir: &Path, samples: usize) -> anyhow::Result<Dist> {
    let log = AuditLog::open(dir, "bench-audit-floor")?;
    let mut v = Vec::with_capacity(samples);
    for i in 0..samples + 20 {
        let e = Entry::new(
            Actor::Controller,
            Event::Command {
                command_id: format!("floor-c{i}"),
            },
        )
        .session("station-00")
        .device("laser-acu-3b-s00")
        .payload(serde_json::json!({"channel": "probe", "power_mw": 200, "lease_ms": 2000}));
        let t = Instant::now();
        log.append(e)?;
        if i >= 20 {
            v.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
        }
    }
    log.close()?;
    Ok(Dist::new(v))
}

/// A step: session, block, index in the block's plan.
type StepKey = (String, String, u64);

/// A subscriber to every command of the controller, as a device would see them: when each
/// step's command arrived.
struct CommandProbe {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Vec<(StepKey, Instant)>>,
    bus: modalis::bus::BusTask,
}

impl CommandProbe {
    async fn start(url: &str, topics: &Topics) -> anyhow::Result<CommandProbe> {
        let mut cfg = BusConfig::new(url, "bench-command-probe", topics.clone())?;
        cfg.subscriptions = vec![(
            format!("{}/device/+/command", topics.root()),
            Qos::AtLeastOnce,
        )];
        cfg.inbound_capacity = 16 * 1024;
        let cancel = CancellationToken::new();
        let Bus {
            handle,
            mut inbox,
            task: bus,
        } = Bus::start(cfg, cancel.clone())?;
        handle.wait_connected(Duration::from_secs(10)).await?;
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            let mut v = Vec::new();
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    ev = inbox.recv() => match ev {
                        None => break,
                        Some(BusEvent::Message { message: Inbound::Command(c), .. }) => {
                            let at = Instant::now();
                            let renewal = matches!(c.action, CommandAction::RenewLease { .. });
                            if let (Some(step), Some(session), false) = (c.step, c.session, renewal) {
                                v.push(((session, step.block, step.step_index), at));
                            }
                        }
                        Some(_) => {}
                    },
                }
            }
            v
        });
        Ok(CommandProbe { cancel, task, bus })
    }

    async fn finish(self) -> Vec<(StepKey, Instant)> {
        self.cancel.cancel();
        let v = self.task.await.unwrap_or_default();
        self.bus.join().await;
        v
    }
}

/// What the controller's events said during the run.
#[derive(Default)]
struct Seen {
    alarms: Vec<AlarmMessage>,
    /// Every emitted step: its start jitter as the controller measured it and when the event
    /// was seen here.
    steps: Vec<(StepKey, u64, Instant)>,
    lagged: u64,
}

/// Follows the controller's events (alarms, emitted steps) as they come.
fn follow_events(
    mut events: broadcast::Receiver<ControllerEvent>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<Seen> {
    tokio::spawn(async move {
        let mut seen = Seen::default();
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                ev = events.recv() => match ev {
                    Ok(ControllerEvent::Alarm(a)) => seen.alarms.push(a),
                    Ok(ControllerEvent::Step { session, step, jitter_us, .. }) => {
                        seen.steps.push(((session, step.block, step.step_index), jitter_us, Instant::now()));
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => seen.lagged += n,
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
        seen
    })
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else to parse.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rumqttd=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let timer = timer_lateness(TIMER_SAMPLES)?;
    let floor_dir = tempfile::tempdir()?;
    let audit_floor = audit_append(floor_dir.path(), AUDIT_SAMPLES)?;
    drop(floor_dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(timer, audit_floor))
}

async fn run(timer: Dist, audit_floor: Dist) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let protocols_dir = tmp.path().join("protocols");
    let audit_dir = tmp.path().join("audit");
    let cache_dir = tmp.path().join("cache");
    std::fs::create_dir_all(&protocols_dir)?;
    let files = write_stations(&protocols_dir)?;
    let mut protocols = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f)?;
        let p = Protocol::from_toml_str(&text, f).map_err(|e| anyhow::anyhow!("{e}"))?;
        protocols.push((p, text));
    }

    let broker = EmbeddedBroker::start().await?;
    let url = broker.url();
    let rtt = broker_rtt(&url, RTT_SAMPLES).await?;

    let topics = Topics::new(CONTROLLER_ID)?;
    let bus = BusConfig::new(&url, "modalis", topics.clone())?;
    let profiles: Vec<_> = protocols
        .iter()
        .flat_map(|(p, _)| p.devices.values().cloned())
        .collect();
    let devices = profiles.len();
    let device_ids: Vec<String> = profiles.iter().map(|p| p.id.clone()).collect();
    let sim_options = SimOptions {
        // The skin's thermal time constant is compressed with the session (as `modalis demo`).
        thermal_time_constant: Duration::from_secs(20) / SPEED,
        ..SimOptions::default()
    };
    let telemetry_period = sim_options.telemetry_period;
    let sim_cancel = CancellationToken::new();
    let mut sim_bus = bus.clone();
    sim_bus.client_id = "modalis-sim".into();
    let sim = Simulator::spawn(sim_bus, profiles, sim_options, sim_cancel.clone())?;

    let ctl_cancel = CancellationToken::new();
    let mut cfg = ControllerConfig::new(
        CONTROLLER_ID,
        bus,
        audit_dir.clone(),
        RuntimeConfig::new(&cache_dir),
        modalis::runner::bundled_plugins(),
    );
    cfg.plugin_trust = modalis::controller::PluginTrust::development()?;
    cfg.speed = SPEED;
    // The clinic's devices: their telemetry before and after their session is expected.
    cfg.devices = device_ids;
    let ctl = Controller::start(cfg, ctl_cancel.clone()).await?;
    ensure!(
        sim.wait_connected(Duration::from_secs(20)).await,
        "the {devices} simulated devices did not connect within 20 s"
    );
    let probe = CommandProbe::start(&url, &topics).await?;
    let events_cancel = CancellationToken::new();
    let events_task = follow_events(ctl.subscribe(), events_cancel.clone());

    let mut sessions = Vec::new();
    let mut planned_steps = 0;
    let mut total_ms = 0;
    for (n, (p, text)) in protocols.into_iter().enumerate() {
        let id = format!("station-{:02}", n + 1);
        let prepared = ctl.prepare(p, &text, Some(id.clone())).await?;
        if !prepared.armable {
            bail!(
                "{id}: the governor refused a step:\n{}",
                prepared.report_table
            );
        }
        planned_steps += prepared.steps;
        total_ms = total_ms.max(prepared.total_ms);
        ctl.arm(&id, OPERATOR).await?;
        sessions.push(id);
    }

    // Start every station at once: the requests are queued together, so the controller takes
    // them back to back.
    let ctl = Arc::new(ctl);
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let mut starts = tokio::task::JoinSet::new();
    for id in &sessions {
        let (ctl, id) = (Arc::clone(&ctl), id.clone());
        starts.spawn(async move { ctl.start(&id, OPERATOR).await.map(|()| Instant::now()) });
    }
    let mut last_started = t0;
    while let Some(r) = starts.join_next().await {
        last_started = last_started.max(r??);
    }
    let start_spread = last_started - t0;
    let expected = Duration::from_millis(total_ms / u64::from(SPEED));
    let deadline = Instant::now() + expected * 3 + Duration::from_secs(60);
    let mut snaps: Vec<SessionSnapshot> = Vec::new();
    for id in &sessions {
        let left = deadline.saturating_duration_since(Instant::now());
        snaps.push(ctl.wait_ended(id, left).await?);
    }
    let wall = t0.elapsed();
    let cpu = cpu0.zip(cpu_time()).map(|(a, b)| b.saturating_sub(a));
    let stats = ctl.stats().await?;

    ctl_cancel.cancel();
    let ctl = Arc::into_inner(ctl).context("the controller handle is still shared")?;
    ctl.join().await?;
    events_cancel.cancel();
    let seen = events_task.await?;
    let arrivals = probe.finish().await;
    sim_cancel.cancel();
    sim.join().await;
    let audit = modalis_audit::verify(&audit_dir)?;

    // Report.
    let jitter = Dist::new(
        snaps
            .iter()
            .flat_map(|s| s.counters.jitter_us.iter().copied())
            .collect(),
    );
    let station_p99: Vec<u64> = snaps
        .iter()
        .filter_map(|s| s.jitter_us.map(|(_, p99, _)| p99))
        .collect();
    let emitted: usize = snaps.iter().map(|s| s.emitted).sum();
    let commands: u64 = snaps.iter().map(|s| s.counters.commands).sum();
    let refused: u64 = snaps.iter().map(|s| s.counters.refused).sum();
    let alarm_count: u64 = snaps.iter().map(|s| s.counters.alarms).sum();
    let completed = snaps
        .iter()
        .filter(|s| s.state == SessionState::Completed)
        .count();
    let p99 = ms(jitter.pct(0.99));
    let rtt_median = ms(rtt.pct(0.5));
    let over = jitter.0.iter().filter(|&&j| ms(j) > TARGET_P99_MS).count();

    println!(
        "modalis stations benchmark: {STATIONS} stations on one controller, x{SPEED} time compression"
    );
    println!(
        "  floor: broker QoS 1 round trip   median {:.3} ms (p10 {:.3}, p90 {:.3}, max {:.3}; {RTT_SAMPLES} round trips before the stations)",
        rtt_median,
        ms(rtt.pct(0.1)),
        ms(rtt.pct(0.9)),
        ms(rtt.max())
    );
    println!(
        "  floor: idle timer lateness       median {:.3} ms, p99 {:.3} ms, max {:.3} ms (tokio sleep_until, current-thread runtime, {TIMER_SAMPLES} sleeps)",
        ms(timer.pct(0.5)),
        ms(timer.pct(0.99)),
        ms(timer.max())
    );
    println!(
        "  floor: audit write-ahead append  median {:.3} ms, p90 {:.3} ms, p99 {:.3} ms (one caller, fresh log, same disk, {AUDIT_SAMPLES} appends)",
        ms(audit_floor.pct(0.5)),
        ms(audit_floor.pct(0.9)),
        ms(audit_floor.pct(0.99))
    );
    println!(
        "  stations                         {STATIONS} ({completed} completed), {devices} simulated devices, telemetry every {} ms per sensor",
        telemetry_period.as_millis()
    );
    println!(
        "  run                              {:.1} s session time each, {:.1} s wall (expected {:.1} s); starts spread over {:.1} ms",
        total_ms as f64 / 1000.0,
        wall.as_secs_f64(),
        expected.as_secs_f64(),
        start_spread.as_secs_f64() * 1000.0
    );
    println!(
        "  steps emitted                    {emitted} of {planned_steps} approved (refused at emission: {refused})"
    );
    println!(
        "  step start jitter, all stations  p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({over} of {} steps over {TARGET_P99_MS} ms)",
        ms(jitter.pct(0.5)),
        ms(jitter.pct(0.9)),
        p99,
        ms(jitter.max()),
        jitter.0.len()
    );
    if let (Some(lo), Some(hi)) = (station_p99.iter().min(), station_p99.iter().max()) {
        println!(
            "    p99 per station                {:.3} .. {:.3} ms",
            ms(*lo),
            ms(*hi)
        );
    }
    // Due -> the command at a subscriber: the controller's lateness, plus from its event
    // (sent before the step's audit append and publish) to the command's arrival here.
    let arrived: std::collections::HashMap<&StepKey, Instant> =
        arrivals.iter().map(|(k, at)| (k, *at)).collect();
    let mut by_block: std::collections::BTreeMap<&str, Vec<u64>> = Default::default();
    let mut delivered = Vec::new();
    for (key, jitter_us, seen_at) in &seen.steps {
        by_block.entry(key.1.as_str()).or_default().push(*jitter_us);
        if let Some(at) = arrived.get(key) {
            let path = at.saturating_duration_since(*seen_at);
            delivered.push(jitter_us + u64::try_from(path.as_micros()).unwrap_or(u64::MAX));
        }
    }
    for (block, v) in by_block {
        let d = Dist::new(v);
        println!(
            "    {block:<30} p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} steps)",
            ms(d.pct(0.5)),
            ms(d.pct(0.99)),
            ms(d.max()),
            d.0.len()
        );
    }
    println!(
        "  target                           p99 <= {TARGET_P99_MS} ms: {}",
        if p99 <= TARGET_P99_MS { "PASS" } else { "MISS" }
    );
    println!(
        "  ratio                            p99 jitter / broker round-trip median = {:.1}x (p99 jitter / audit append median = {:.1}x)",
        p99 / rtt_median.max(1e-3),
        p99 / ms(audit_floor.pct(0.5)).max(1e-3)
    );
    let delivered = Dist::new(delivered);
    println!(
        "  step due -> command at a client  p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} of {emitted} steps matched; includes the audit write-ahead and MQTT)",
        ms(delivered.pct(0.5)),
        ms(delivered.pct(0.99)),
        ms(delivered.max()),
        delivered.0.len()
    );
    println!("  commands                         {commands} (sets, renewals, stops)");
    if alarm_count == 0 && seen.alarms.is_empty() {
        println!("  alarms                           0");
    } else {
        println!(
            "  ALARMS                           {alarm_count} counted by the stations, {} seen as events: THE SIMULATED RUN WAS NOT CLEAN",
            seen.alarms.len()
        );
        let mut by_rule = std::collections::BTreeMap::new();
        for a in &seen.alarms {
            *by_rule.entry(a.rule.as_str()).or_insert(0u32) += 1;
        }
        for (rule, n) in &by_rule {
            println!("    {n:>5} x {rule}");
        }
        for a in seen.alarms.iter().take(10) {
            println!(
                "    {} {:?} {}: {}",
                a.session.as_deref().unwrap_or("-"),
                a.priority,
                a.rule,
                a.reason
            );
        }
    }
    if seen.lagged > 0 {
        println!(
            "  (the event follower lagged: {} controller events missed)",
            seen.lagged
        );
    }
    println!(
        "  controller counters              rejected inbound {}, unknown device {}, idle device {}, unknown acks {}, publish failures {}, audit failures {}",
        stats.rejected_inbound,
        stats.unknown_device,
        stats.idle_device,
        stats.unknown_acks,
        stats.publish_failures,
        stats.audit_failures
    );
    println!(
        "  audit log                        {} records, {} checkpoints, verifies: {}",
        audit.records,
        audit.checkpoints,
        if audit.is_ok() { "yes" } else { "NO" }
    );
    if let Some(cpu) = cpu {
        println!(
            "  process CPU                      {:.1} s in {:.1} s wall ({:.2} of {} cores)",
            cpu.as_secs_f64(),
            wall.as_secs_f64(),
            cpu.as_secs_f64() / wall.as_secs_f64().max(1e-3),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
    }
    for s in snaps.iter().filter(|s| s.state != SessionState::Completed) {
        println!(
            "  {} ended {} ({}): {} of {} steps",
            s.session,
            s.state,
            s.ended.as_deref().unwrap_or("not ended"),
            s.emitted,
            s.steps
        );
    }
    ensure!(
        completed == STATIONS,
        "{} of {STATIONS} stations did not complete",
        STATIONS - completed
    );
    ensure!(audit.is_ok(), "the audit log does not verify: {audit}");
    Ok(())
}
