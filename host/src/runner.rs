//! Running one protocol from the command line: `modalis demo` and `modalis run`.
//!
//! Starts what the run needs (an embedded broker or a connection to an external one,
//! optionally the device simulator, the controller), prepares the protocol, shows the dose
//! report, arms and starts it, follows it with a progress bar per block and the alarms as
//! they come, prints a summary and verifies the audit log at the end.

use std::collections::BTreeMap;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::broker::EmbeddedBroker;
use crate::bus::payload::{AlarmPriority, SessionState};
use crate::bus::topics::Topics;
use crate::bus::{BusConfig, Credentials};
use crate::controller::{
    Controller, ControllerConfig, ControllerEvent, PluginSource, PluginTrust, Prepared,
    SessionSnapshot,
};
use crate::plugin::RuntimeConfig;
use crate::protocol::Protocol;
use crate::sim::{Faults, SimOptions, Simulator};

/// Which broker to use.
#[derive(Debug, Clone)]
pub enum BrokerChoice {
    /// Start one in-process on 127.0.0.1: on this port if it is free, else on any.
    Embedded {
        /// Preferred port.
        port: u16,
    },
    /// Connect to this one.
    External {
        /// `mqtt://host:port`.
        url: String,
        /// Login.
        credentials: Option<Credentials>,
        /// Certificates, for an `mqtts://` broker.
        tls: Option<crate::bus::TlsFiles>,
    },
}

/// What to run and how.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The protocol file.
    pub protocol: PathBuf,
    /// The broker.
    pub broker: BrokerChoice,
    /// Simulate the protocol's devices (one simulated device per profile).
    pub simulate: bool,
    /// Faults to inject into simulated devices, by device id.
    pub faults: BTreeMap<String, Faults>,
    /// Time compression (1 = real time).
    pub speed: u32,
    /// Controller id.
    pub controller_id: String,
    /// Audit log directory.
    pub audit_dir: PathBuf,
    /// Plugin cache directory.
    pub cache_dir: PathBuf,
    /// Who arms and starts.
    pub operator: String,
    /// Arm without asking (the demo; `run --yes`).
    pub yes: bool,
    /// The plugins to load.
    pub plugins: Vec<PluginSource>,
    /// Whose signatures they need.
    pub plugin_trust: PluginTrust,
    /// Serve the monitoring dashboard while the protocol runs.
    pub dashboard: Option<DashboardOptions>,
}

/// `--dashboard`: where to serve it and where its page finds the broker.
#[derive(Debug, Clone)]
pub struct DashboardOptions {
    /// Port on 127.0.0.1 (0: a free one; a free one too when this one is taken).
    pub port: u16,
    /// The broker's MQTT-over-WebSockets URL. `None` with the embedded broker: its own
    /// WebSockets listener. Required with an external broker.
    pub ws_url: Option<String>,
}

/// How long simulated devices may take to apply the controller's final stops before the
/// simulator ends (longer than any lease the controller grants).
const SIM_SETTLE: Duration = Duration::from_secs(2);

/// The bundled first-party plugins.
pub fn bundled_plugins() -> Vec<PluginSource> {
    modalis_plugin_artifacts::FIRST_PARTY
        .iter()
        .map(|a| PluginSource {
            label: a.package.to_string(),
            bytes: std::borrow::Cow::Borrowed(a.bytes),
            signature: Some(std::borrow::Cow::Borrowed(a.signature.as_bytes())),
        })
        .collect()
}

/// A vendor's plugin from a file, with its signature from `<file>.sig` when there is one.
pub fn plugin_from_file(path: &Path) -> anyhow::Result<PluginSource> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading plugin {}", path.display()))?;
    let sig_path = crate::plugin::signing::signature_path(path);
    let signature = match std::fs::read(&sig_path) {
        Ok(s) => Some(std::borrow::Cow::Owned(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(e).with_context(|| format!("reading signature {}", sig_path.display()));
        }
    };
    Ok(PluginSource {
        label: path.display().to_string(),
        bytes: std::borrow::Cow::Owned(bytes),
        signature,
    })
}

/// Runs the protocol to its end (or until Ctrl-C/SIGTERM); returns whether it completed and
/// the audit log verified.
pub async fn run(opts: RunOptions, cancel: CancellationToken) -> anyhow::Result<bool> {
    let text = std::fs::read_to_string(&opts.protocol)
        .with_context(|| format!("reading protocol file {}", opts.protocol.display()))?;
    let protocol = Protocol::from_toml_str(&text, &opts.protocol)?;

    let (url, credentials, tls, _broker) = match &opts.broker {
        BrokerChoice::Embedded { port } => {
            let ws = opts.dashboard.is_some();
            let b = match EmbeddedBroker::start_on_with(*port, ws).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::info!(error = %e, port, "port taken; the embedded broker takes a free one");
                    EmbeddedBroker::start_with(ws)
                        .await
                        .context("starting the embedded MQTT broker")?
                }
            };
            (b.url(), None, None, Some(b))
        }
        BrokerChoice::External {
            url,
            credentials,
            tls,
        } => (url.clone(), credentials.clone(), tls.clone(), None),
    };
    let topics = Topics::new(&opts.controller_id)
        .map_err(|e| anyhow::anyhow!("--controller {:?}: {e}", opts.controller_id))?;
    // Lives as long as this run: the page is of no use without the controller.
    let dashboard_cancel = cancel.child_token();
    let _stop_dashboard = dashboard_cancel.clone().drop_guard();
    let dashboard = match &opts.dashboard {
        Some(d) => {
            let ws_url = match (&d.ws_url, &_broker) {
                (Some(u), _) => u.clone(),
                (None, Some(b)) => b
                    .ws_url()
                    .context("the embedded broker has no WebSockets listener")?,
                (None, None) => bail!(
                    "--dashboard with --broker needs --dashboard-ws ws://HOST:PORT, the broker's MQTT-over-WebSockets listener (see examples/mosquitto/mosquitto.conf)"
                ),
            };
            let config = crate::dashboard::DashboardConfig {
                ws_url: ws_url.clone(),
                controller: opts.controller_id.clone(),
                estop: true,
            };
            let server =
                match crate::dashboard::serve(d.port, config.clone(), dashboard_cancel.clone()) {
                    Ok(s) => s,
                    Err(e) if d.port != 0 => {
                        tracing::info!(error = %e, "dashboard port taken; serving on a free one");
                        crate::dashboard::serve(0, config, dashboard_cancel.clone())?
                    }
                    Err(e) => return Err(e.into()),
                };
            Some((server.url(), ws_url))
        }
        None => None,
    };
    let mut bus = BusConfig::new(&url, "modalis", topics.clone())
        .with_context(|| format!("--broker {url}"))?;
    bus.credentials = credentials;
    bus.tls = tls;

    println!("modalis {} — {}", env!("CARGO_PKG_VERSION"), protocol.name);
    println!("  protocol   {}", opts.protocol.display());
    println!("  broker     {url}");
    let port = url.rsplit(':').next().unwrap_or("1883");
    let watch = if port == "1883" && url.contains("127.0.0.1") {
        "mosquitto_sub -t 'modalis/#' -v".to_string()
    } else {
        let host = url
            .trim_start_matches("mqtt://")
            .rsplit_once(':')
            .map_or("127.0.0.1", |(h, _)| h);
        format!("mosquitto_sub -h {host} -p {port} -t 'modalis/#' -v")
    };
    println!("  watch it   {watch}");
    if let Some((page, ws)) = &dashboard {
        println!("  dashboard  {page}  (broker over WebSockets: {ws})");
    }
    println!("  audit log  {}", opts.audit_dir.display());
    println!(
        "  plugins    {}",
        match opts.plugin_trust.state() {
            crate::bus::payload::PluginTrustState::Enforced => format!(
                "{} signed by a trusted key ({} key(s) in the trust store)",
                opts.plugins.len(),
                opts.plugin_trust.store.keys().len()
            ),
            crate::bus::payload::PluginTrustState::DevelopmentKeyTrusted => format!(
                "{} signed; the DEVELOPMENT key is trusted (anyone can sign with it)",
                opts.plugins.len()
            ),
            crate::bus::payload::PluginTrustState::NotEnforced =>
                "signatures NOT enforced (--allow-unsigned-plugins, development only)".to_string(),
        }
    );
    println!(
        "  speed      x{}{}",
        opts.speed,
        if opts.speed > 1 {
            " (time-compressed simulation; leases and staleness stay in wall time)"
        } else {
            ""
        }
    );

    // The simulator gets its own token: it must outlive the controller's shutdown (which
    // sends the final stops) and stop after it.
    let sim_cancel = CancellationToken::new();
    let sim = if opts.simulate {
        let options = SimOptions {
            // The skin's thermal time constant is compressed with the session.
            thermal_time_constant: Duration::from_secs(20) / opts.speed.max(1),
            faults: opts.faults.clone(),
            ..SimOptions::default()
        };
        let profiles = protocol.devices.values().cloned().collect();
        let mut sim_bus = bus.clone();
        // Per controller: simulators of two controllers on one broker must not take each
        // other's connections over (MQTT client ids are unique per broker).
        sim_bus.client_id = format!("modalis-sim-{}", opts.controller_id);
        let s = Simulator::spawn(sim_bus, profiles, options, sim_cancel.clone())
            .context("starting the device simulator")?;
        println!(
            "  simulator  {} device(s): {}",
            s.devices().len(),
            s.devices().join(", ")
        );
        Some(s)
    } else {
        None
    };

    let ctl_cancel = cancel.child_token();
    let mut cfg = ControllerConfig::new(
        &opts.controller_id,
        bus,
        opts.audit_dir.clone(),
        RuntimeConfig::new(&opts.cache_dir),
        opts.plugins.clone(),
    );
    cfg.speed = opts.speed;
    cfg.plugin_trust = opts.plugin_trust.clone();
    cfg.devices = protocol.devices.values().map(|p| p.id.clone()).collect();
    let ctl = Controller::start(cfg, ctl_cancel.clone())
        .await
        .context("starting the controller")?;
    if let Some(s) = &sim
        && !s.wait_connected(Duration::from_secs(10)).await
    {
        bail!("the simulated devices did not connect to {url} within 10 s");
    }

    let outcome = drive(&ctl, protocol, &text, &opts, &cancel).await;

    ctl_cancel.cancel();
    ctl.join().await.context("stopping the controller")?;
    if let Some(s) = &sim {
        // The controller's last stops are on their way: let the simulated devices receive,
        // apply and acknowledge them (or their leases lapse) before they disappear, as real
        // devices would, so a dashboard or a test sees every source stop. Bounded: a device
        // with the ignore-stop fault keeps delivering until its lease ends, or forever when
        // it also ignores leases.
        let deadline = tokio::time::Instant::now() + SIM_SETTLE;
        while s
            .devices()
            .iter()
            .any(|d| s.state(d).is_some_and(|st| st.any_energised()))
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    sim_cancel.cancel();
    if let Some(s) = sim {
        s.join().await;
    }

    let report = modalis_audit::verify(&opts.audit_dir)
        .with_context(|| format!("verifying the audit log in {}", opts.audit_dir.display()))?;
    println!();
    println!("audit log: {report}");
    let snap = outcome?;
    let Some(snap) = snap else {
        return Ok(false);
    };
    Ok(snap.state == SessionState::Completed && report.is_ok())
}

/// Prepares, shows, arms, starts and follows the session.
async fn drive(
    ctl: &crate::controller::ControllerHandle,
    protocol: Protocol,
    text: &str,
    opts: &RunOptions,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<SessionSnapshot>> {
    let prepared = ctl
        .prepare(protocol, text, None)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", opts.protocol.display()))?;
    println!();
    println!("{}", prepared.report_table);
    if !prepared.armable {
        println!("The governor refused a step: the session cannot be armed.");
        return Ok(None);
    }
    if !opts.yes && !confirm(&prepared)? {
        println!("Not armed.");
        ctl.abort(&prepared.session, "not confirmed by the operator")
            .await?;
        return Ok(None);
    }
    let id = prepared.session.clone();
    let mut events = ctl.subscribe();
    ctl.arm(&id, &opts.operator).await?;
    ctl.start(&id, &opts.operator).await?;

    let mp = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
    let style = ProgressStyle::with_template("{prefix:>14} [{bar:32.cyan/blue}] {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let bars: Vec<(crate::controller::BlockTimeline, ProgressBar)> = prepared
        .blocks
        .iter()
        .map(|b| {
            let len = b.end_ms.saturating_sub(b.start_ms).max(1);
            let bar = mp.add(ProgressBar::new(len));
            bar.set_style(style.clone());
            bar.set_prefix(b.block.clone());
            bar.set_message(format!("waiting ({} steps, {})", b.steps, minutes(len)));
            (b.clone(), bar)
        })
        .collect();
    let update = |t: u64| {
        for (b, bar) in &bars {
            let len = b.end_ms.saturating_sub(b.start_ms).max(1);
            let done = t.saturating_sub(b.start_ms).min(len);
            bar.set_position(done);
            if t >= b.end_ms {
                bar.set_message(format!("done ({})", minutes(len)));
            } else if t >= b.start_ms {
                bar.set_message(format!("{} of {}", minutes(done), minutes(len)));
            }
        }
    };
    let mut interrupted = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => {
                interrupted = true;
                break;
            }
            ev = events.recv() => match ev {
                Ok(ControllerEvent::Progress { session, elapsed_ms, .. }) if session == id => update(elapsed_ms),
                Ok(ControllerEvent::Alarm(a)) => {
                    let tag = match a.priority {
                        AlarmPriority::High => "ALARM (high)",
                        AlarmPriority::Medium => "alarm (medium)",
                        AlarmPriority::Low => "note",
                    };
                    say(&mp, format!("{tag} {}: {}", a.rule, a.reason));
                }
                Ok(ControllerEvent::Broker { connected }) => {
                    say(&mp, if connected { "broker connected".into() } else { "broker connection LOST: sessions pause; devices stop within one lease period".into() });
                }
                Ok(ControllerEvent::State { session, state, reason }) if session == id => {
                    say(&mp, format!("session {id}: {state}{}", reason.map(|r| format!(" ({r})")).unwrap_or_default()));
                    if state.is_final() {
                        break;
                    }
                    if state == SessionState::Paused {
                        say(&mp, "paused: a resume needs an operator (press Ctrl-C to stop)".into());
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    }
    let snap = ctl.snapshot(&id).await?;
    update(snap.elapsed_ms);
    for (_, bar) in &bars {
        bar.abandon();
    }
    println!();
    if interrupted {
        println!("Interrupted: every source is being stopped.");
    }
    summary(&prepared, &snap);
    Ok(Some(snap))
}

/// A line above the progress bars, or on stdout when they are not drawn (not a terminal):
/// an alarm must never be lost because nobody is looking at the bars.
fn say(mp: &MultiProgress, line: String) {
    if mp.is_hidden() {
        println!("{line}");
    } else {
        let _ = mp.println(line);
    }
}

fn confirm(p: &Prepared) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "session {}: arming needs an operator's confirmation; run in a terminal or pass --yes",
            p.session
        );
    }
    print!(
        "Arm session {} ({} steps)? Type 'arm' to confirm: ",
        p.session, p.steps
    );
    std::io::stdout().flush().ok();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim() == "arm")
}

fn summary(p: &Prepared, s: &SessionSnapshot) {
    println!("session {} {}", s.session, s.state);
    if let Some(why) = &s.ended {
        println!("  ended        {why}");
    }
    println!(
        "  session time {} of {} planned",
        minutes(s.elapsed_ms),
        minutes(p.total_ms)
    );
    println!("  steps        {} of {} emitted", s.emitted, s.steps);
    println!(
        "  commands     {} (refused at emission: {})",
        s.counters.commands, s.counters.refused
    );
    println!("  alarms       {}", s.counters.alarms);
    if let Some((p50, p99, max)) = s.jitter_us {
        println!(
            "  step start   late by {:.2} ms median, {:.2} ms p99, {:.2} ms max (wall clock)",
            p50 as f64 / 1000.0,
            p99 as f64 / 1000.0,
            max as f64 / 1000.0
        );
    }
    if !s.energised.is_empty() {
        println!("  STILL ENERGISED per the governor: {:?}", s.energised);
    }
}

fn minutes(ms: u64) -> String {
    let s = ms / 1000;
    format!("{}:{:02}", s / 60, s % 60)
}
