//! `modalis sim`: simulated devices on a broker, one per device profile, for demos and for
//! testing a controller without hardware.
//!
//! Faults can be set at start with `--fault DEVICE:KIND[=VALUE]` and changed while it runs by
//! publishing a [`SimFaultMessage`] on `modalis/v1/<controller>/sim/<device>/fault`; `run`
//! prints the exact `mosquitto_pub` line for that.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio_util::sync::CancellationToken;

use modalis_governor::{ChannelSpec, DeviceProfile};

use super::{Faults, SimOptions, Simulator};
use crate::bus::payload::{FaultSpec, SimFaultMessage};
use crate::bus::topics::Topics;
use crate::bus::{BusConfig, Credentials};

/// What `--fault` expects, for its help and its errors.
const FAULT_SYNTAX: &str = "DEVICE:KIND[=VALUE] with KIND one of overheating[=GAIN] (default 2.0), \
     power-drift[=FACTOR] (default 1.5), electrode-lifting[=OHM_PER_S] (default 500), silent, \
     ignore-stop, ignore-leases";

/// Default overheating gain: the skin heats twice as fast as the device believes.
pub const DEFAULT_OVERHEATING_GAIN: f64 = 2.0;
/// Default power drift: 150 % of the setpoint delivered and measured.
pub const DEFAULT_POWER_DRIFT: f64 = 1.5;
/// Default electrode lifting, ohm per second: a 500 ohm load doubles within a second.
pub const DEFAULT_LIFTING_OHM_PER_S: f64 = 500.0;

/// `modalis sim`: simulate one device per profile over MQTT.
#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// The MQTT broker (mqtt://host:port).
    #[arg(long, value_name = "URL", default_value = crate::DEFAULT_BROKER_URL)]
    pub broker: String,
    /// Username for the broker.
    #[arg(long, value_name = "USER")]
    pub username: Option<String>,
    /// Password for the broker (needs --username).
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "MODALIS_MQTT_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// The controller whose topics the devices use (modalis/v1/<ID>/...).
    #[arg(long, value_name = "ID", default_value = crate::DEFAULT_CONTROLLER_ID)]
    pub controller: String,
    /// A device profile (TOML) to simulate; repeat for more devices.
    #[arg(
        long = "profile",
        value_name = "FILE",
        required_unless_present = "protocol",
        conflicts_with = "protocol"
    )]
    pub profiles: Vec<PathBuf>,
    /// Simulate every device profile a protocol file names (its [devices]).
    #[arg(long, value_name = "FILE")]
    pub protocol: Option<PathBuf>,
    /// How often every device publishes telemetry, milliseconds.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 100,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub telemetry_period_ms: u64,
    /// Seed of the measurement noise, for reproducible runs.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Inject a fault from the start: DEVICE:KIND[=VALUE], KIND one of overheating[=GAIN]
    /// (default 2.0), power-drift[=FACTOR] (default 1.5), electrode-lifting[=OHM_PER_S]
    /// (default 500), silent, ignore-stop, ignore-leases. Repeat for more.
    #[arg(long = "fault", value_name = "DEVICE:KIND[=VALUE]", value_parser = parse_fault)]
    pub faults: Vec<FaultArg>,
}

/// One `--fault`.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultArg {
    /// The device id.
    pub device: String,
    /// The fault.
    pub kind: FaultKind,
}

/// One kind of fault, with its value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FaultKind {
    /// `overheating[=GAIN]`.
    Overheating(f64),
    /// `power-drift[=FACTOR]`.
    PowerDrift(f64),
    /// `electrode-lifting[=OHM_PER_S]`.
    ElectrodeLifting(f64),
    /// `silent`.
    Silent,
    /// `ignore-stop`.
    IgnoreStop,
    /// `ignore-leases`.
    IgnoreLeases,
}

impl FaultKind {
    /// Adds this fault to `faults` (a later value of the same kind wins).
    pub fn apply(self, faults: &mut Faults) {
        match self {
            FaultKind::Overheating(g) => faults.overheating_gain = Some(g),
            FaultKind::PowerDrift(d) => faults.power_drift = Some(d),
            FaultKind::ElectrodeLifting(r) => faults.electrode_lifting_ohm_per_s = Some(r),
            FaultKind::Silent => faults.silent = true,
            FaultKind::IgnoreStop => faults.ignore_stop = true,
            FaultKind::IgnoreLeases => faults.ignore_leases = true,
        }
    }
}

/// Parses one `--fault` value. Clap puts the flag and the value in front of the message, so
/// the message says what is wrong and what was expected.
pub fn parse_fault(s: &str) -> Result<FaultArg, String> {
    let expected = || format!("expected {FAULT_SYNTAX}");
    let (device, fault) = s
        .split_once(':')
        .ok_or_else(|| format!("no ':' after the device; {}", expected()))?;
    crate::bus::topics::check_id("device", device).map_err(|e| e.to_string())?;
    let (kind, value) = match fault.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (fault, None),
    };
    // A number for the kinds that take one, checked against the same ranges the fault topic
    // enforces, so the command line cannot set what a fault message would be refused for.
    let number = |default: f64, spec: fn(f64) -> FaultSpec| -> Result<f64, String> {
        let v = match value {
            None => default,
            Some(v) => v
                .trim()
                .parse::<f64>()
                .map_err(|_| format!("{kind}={v}: expected a number"))?,
        };
        spec(v)
            .check()
            .map_err(|(_, why)| format!("{kind}={v}: {why}"))?;
        Ok(v)
    };
    let flag = |k: FaultKind| -> Result<FaultKind, String> {
        match value {
            None => Ok(k),
            Some(_) => Err(format!("{kind} takes no value")),
        }
    };
    let kind = match kind {
        "overheating" => FaultKind::Overheating(number(DEFAULT_OVERHEATING_GAIN, |v| FaultSpec {
            overheating_gain: Some(v),
            ..FaultSpec::default()
        })?),
        "power-drift" => FaultKind::PowerDrift(number(DEFAULT_POWER_DRIFT, |v| FaultSpec {
            power_drift: Some(v),
            ..FaultSpec::default()
        })?),
        "electrode-lifting" => {
            FaultKind::ElectrodeLifting(number(DEFAULT_LIFTING_OHM_PER_S, |v| FaultSpec {
                electrode_lifting_ohm_per_s: Some(v),
                ..FaultSpec::default()
            })?)
        }
        "silent" => flag(FaultKind::Silent)?,
        "ignore-stop" => flag(FaultKind::IgnoreStop)?,
        "ignore-leases" => flag(FaultKind::IgnoreLeases)?,
        other => return Err(format!("unknown fault kind {other:?}; {}", expected())),
    };
    Ok(FaultArg {
        device: device.to_string(),
        kind,
    })
}

/// Runs the simulator until `cancel` fires.
pub async fn run(args: SimArgs, cancel: CancellationToken) -> anyhow::Result<()> {
    let profiles = load_profiles(&args)?;
    let faults = collect_faults(&args.faults, &profiles)?;
    let topics = Topics::new(&args.controller).context("--controller")?;
    // One client id per controller and device: two simulators for two controllers on one
    // broker must not take each other's connections over.
    let client_id = format!("modalis-sim-{}", args.controller);
    let mut bus = BusConfig::new(&args.broker, &client_id, topics.clone()).context("--broker")?;
    bus.credentials = match (&args.username, &args.password) {
        (Some(u), p) => Some(Credentials {
            username: u.clone(),
            password: p.clone().unwrap_or_default(),
        }),
        (None, Some(_)) => {
            bail!("--password (or MODALIS_MQTT_PASSWORD) is set but --username is not")
        }
        (None, None) => None,
    };
    let options = SimOptions {
        telemetry_period: Duration::from_millis(args.telemetry_period_ms),
        seed: args.seed.unwrap_or(SimOptions::default().seed),
        faults: faults.clone(),
        ..SimOptions::default()
    };
    let broker = bus.broker.clone();
    let sim = Simulator::spawn(bus, profiles.clone(), options, cancel.clone())
        .context("starting the simulator")?;

    println!(
        "simulating {} device(s) on {broker} for controller {:?}",
        profiles.len(),
        topics.controller()
    );
    for p in &profiles {
        println!("{}", device_line(&topics, p, faults.get(&p.id))?);
    }
    if let Some(first) = profiles.first() {
        println!("{}", fault_hint(&topics, &args, &broker, &first.id)?);
    }

    // Say so when the broker is not there, instead of sitting silent: the devices keep
    // retrying in the background either way.
    tokio::select! {
        () = cancel.cancelled() => {}
        up = sim.wait_connected(Duration::from_secs(5)) => {
            if up {
                tracing::info!(%broker, "every simulated device is connected");
            } else {
                tracing::warn!(%broker, "not every simulated device is connected yet; retrying (is the broker running?)");
            }
        }
    }
    cancel.cancelled().await;
    sim.join().await;
    Ok(())
}

/// The device profiles to simulate, from `--profile` files or the `--protocol`'s devices.
fn load_profiles(args: &SimArgs) -> anyhow::Result<Vec<DeviceProfile>> {
    // (profile, where it came from), to name both files when two share an id.
    let mut loaded: Vec<(DeviceProfile, String)> = Vec::new();
    if let Some(path) = &args.protocol {
        let protocol = crate::protocol::Protocol::load(path).context("--protocol")?;
        for (role, profile) in protocol.devices {
            let from = match protocol.device_files.get(&role) {
                Some(f) => format!("{} (role {role:?})", f.display()),
                None => format!("role {role:?}"),
            };
            loaded.push((profile, from));
        }
    }
    for path in &args.profiles {
        loaded.push((load_profile(path)?, path.display().to_string()));
    }
    let mut profiles: Vec<DeviceProfile> = Vec::new();
    let mut origins: Vec<String> = Vec::new();
    for (profile, from) in loaded {
        match profiles.iter().position(|p| p.id == profile.id) {
            // Two protocol roles may well name the same device (one unit, two uses): it is
            // simulated once.
            Some(i) if profiles.get(i) == Some(&profile) => {}
            Some(i) => bail!(
                "device id {:?} is in both {} and {}, with different profiles",
                profile.id,
                origins.get(i).map_or("?", String::as_str),
                from
            ),
            None => {
                profiles.push(profile);
                origins.push(from);
            }
        }
    }
    if profiles.is_empty() {
        bail!("no device profiles to simulate: give --profile FILE or --protocol FILE");
    }
    Ok(profiles)
}

fn load_profile(path: &Path) -> anyhow::Result<DeviceProfile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--profile: cannot read {}", path.display()))?;
    // The loader's error names the file, the line and the field.
    DeviceProfile::from_toml_str(&text, &path.display().to_string()).context("--profile")
}

/// The `--fault`s merged per device; every device must be one that is simulated.
fn collect_faults(
    args: &[FaultArg],
    profiles: &[DeviceProfile],
) -> anyhow::Result<BTreeMap<String, Faults>> {
    let mut faults: BTreeMap<String, Faults> = BTreeMap::new();
    for a in args {
        if !profiles.iter().any(|p| p.id == a.device) {
            let known: Vec<&str> = profiles.iter().map(|p| p.id.as_str()).collect();
            bail!(
                "--fault {}: no simulated device {:?} (simulated: {})",
                a.device,
                a.device,
                known.join(", ")
            );
        }
        a.kind.apply(faults.entry(a.device.clone()).or_default());
    }
    Ok(faults)
}

fn device_line(
    topics: &Topics,
    p: &DeviceProfile,
    faults: Option<&Faults>,
) -> anyhow::Result<String> {
    let channels: Vec<String> = p
        .channels
        .iter()
        .map(|c| {
            let kind = match c.spec {
                ChannelSpec::Heat(_) => "heat",
                ChannelSpec::Optical(_) => "optical",
                ChannelSpec::Electrical(_) => "electrical",
            };
            format!("{} ({kind})", c.name)
        })
        .collect();
    let injected = match faults.filter(|f| **f != Faults::default()) {
        Some(f) => format!(
            "; injected {}",
            serde_json::to_string(&FaultSpec::from(f.clone()))?
        ),
        None => String::new(),
    };
    Ok(format!(
        "  {}: channels {}; commands {}, acks {}, telemetry {}, faults {}{injected}",
        p.id,
        channels.join(", "),
        topics.device_command(&p.id)?,
        topics.device_ack(&p.id)?,
        topics.device_telemetry(&p.id)?,
        topics.sim_fault(&p.id)?,
    ))
}

/// How to change a device's faults while it runs, with a message that decodes.
fn fault_hint(
    topics: &Topics,
    args: &SimArgs,
    broker: &crate::bus::BrokerAddr,
    device: &str,
) -> anyhow::Result<String> {
    let example = SimFaultMessage {
        seq: 1,
        ts_ms: 0,
        device: device.to_string(),
        faults: FaultSpec {
            power_drift: Some(DEFAULT_POWER_DRIFT),
            ..FaultSpec::default()
        },
    };
    let login = match &args.username {
        Some(u) => format!(" -u {u} -P \"$MODALIS_MQTT_PASSWORD\""),
        None => String::new(),
    };
    Ok(format!(
        "inject a fault at run time (QoS 1, not retained; each message replaces the device's \
         faults, \"faults\":{{}} heals it; fields: overheating_gain, power_drift, \
         electrode_lifting_ohm_per_s, silent, ignore_stop, ignore_leases):\n  \
         mosquitto_pub -h {} -p {}{login} -q 1 -t '{}' -m '{}'",
        broker.host,
        broker.port,
        topics.sim_fault(device)?,
        serde_json::to_string(&example)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    fn ok(s: &str) -> FaultArg {
        parse_fault(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn fault(device: &str, kind: FaultKind) -> FaultArg {
        FaultArg {
            device: device.into(),
            kind,
        }
    }

    #[test]
    fn fault_values_parse_with_their_defaults() {
        assert_eq!(
            ok("pads:overheating"),
            fault("pads", FaultKind::Overheating(2.0))
        );
        assert_eq!(
            ok("pads:overheating=3.5"),
            fault("pads", FaultKind::Overheating(3.5))
        );
        assert_eq!(
            ok("lllt-808:power-drift"),
            fault("lllt-808", FaultKind::PowerDrift(1.5))
        );
        assert_eq!(
            ok("lllt-808:power-drift=0.5"),
            fault("lllt-808", FaultKind::PowerDrift(0.5))
        );
        assert_eq!(
            ok("tens-2ch:electrode-lifting"),
            fault("tens-2ch", FaultKind::ElectrodeLifting(500.0))
        );
        assert_eq!(
            ok("tens-2ch:electrode-lifting=0"),
            fault("tens-2ch", FaultKind::ElectrodeLifting(0.0))
        );
        assert_eq!(ok("a.b_c:silent"), fault("a.b_c", FaultKind::Silent));
        assert_eq!(ok("x:ignore-stop"), fault("x", FaultKind::IgnoreStop));
        assert_eq!(ok("x:ignore-leases"), fault("x", FaultKind::IgnoreLeases));
    }

    #[test]
    fn bad_faults_say_what_was_expected() {
        for (bad, says) in [
            ("pads", "no ':'"),
            ("pads:", "unknown fault kind \"\""),
            (":silent", "invalid device id"),
            ("a/b:silent", "invalid device id"),
            ("pads:melting", "unknown fault kind \"melting\""),
            ("pads:Silent", "unknown fault kind"),
            ("pads:silent=1", "silent takes no value"),
            ("pads:ignore-stop=yes", "ignore-stop takes no value"),
            ("pads:overheating=hot", "overheating=hot: expected a number"),
            ("pads:overheating=", "expected a number"),
            ("pads:overheating=0", "expected a number > 0"),
            ("pads:overheating=-1", "expected a number > 0"),
            ("pads:overheating=NaN", "expected a number > 0"),
            ("pads:power-drift=inf", "expected a number > 0"),
            ("pads:power-drift=101", "<= 100"),
            ("pads:electrode-lifting=-5", "expected a number >= 0"),
        ] {
            let e = parse_fault(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
        // Unknown kinds list the ones there are.
        let e = parse_fault("pads:melting").expect_err("unknown kind");
        assert!(
            e.contains("power-drift") && e.contains("ignore-leases"),
            "{e}"
        );
    }

    #[test]
    fn clap_names_the_flag_and_merges_repeats() {
        let e = Cli::try_parse_from(["sim", "--profile", "p.toml", "--fault", "pads:melting"])
            .expect_err("bad fault");
        let text = e.to_string();
        assert!(
            text.contains("--fault") && text.contains("pads:melting"),
            "{text}"
        );

        let cli = Cli::try_parse_from([
            "sim",
            "--profile",
            "a.toml",
            "--profile",
            "b.toml",
            "--fault",
            "pads:silent",
            "--fault",
            "pads:overheating=3",
            "--telemetry-period-ms",
            "50",
            "--seed",
            "7",
        ])
        .expect("valid");
        assert_eq!(cli.sim.profiles.len(), 2);
        assert_eq!(cli.sim.faults.len(), 2);
        assert_eq!(cli.sim.telemetry_period_ms, 50);
        assert_eq!(cli.sim.seed, Some(7));
        assert_eq!(cli.sim.broker, crate::DEFAULT_BROKER_URL);
        assert_eq!(cli.sim.controller, crate::DEFAULT_CONTROLLER_ID);

        // Profiles come from one place: files or a protocol, and at least one of them.
        assert!(Cli::try_parse_from(["sim"]).is_err());
        assert!(
            Cli::try_parse_from(["sim", "--profile", "a.toml", "--protocol", "p.toml"]).is_err()
        );
        assert!(Cli::try_parse_from(["sim", "--protocol", "p.toml"]).is_ok());
        assert!(
            Cli::try_parse_from(["sim", "--profile", "a", "--telemetry-period-ms", "0"]).is_err()
        );
    }

    fn example_profile(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../examples/profiles/{name}.toml"))
    }

    fn args(profiles: Vec<PathBuf>, protocol: Option<PathBuf>, faults: &[&str]) -> SimArgs {
        SimArgs {
            broker: crate::DEFAULT_BROKER_URL.into(),
            username: None,
            password: None,
            controller: crate::DEFAULT_CONTROLLER_ID.into(),
            profiles,
            protocol,
            telemetry_period_ms: 100,
            seed: None,
            faults: faults.iter().map(|f| ok(f)).collect(),
        }
    }

    #[test]
    fn profiles_come_from_files_or_a_protocol() {
        let a = args(
            vec![example_profile("tens-2ch"), example_profile("lllt-808")],
            None,
            &[],
        );
        let ids: Vec<String> = load_profiles(&a)
            .expect("loads")
            .into_iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(ids, ["tens-2ch", "lllt-808"]);

        let protocol =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/protocols/dpn-combined.toml");
        let p = load_profiles(&args(Vec::new(), Some(protocol), &[])).expect("loads");
        assert!(p.iter().any(|p| p.id == "tens-2ch"), "{p:?}");

        // A file twice is one device; a missing or broken file is named.
        let twice = args(
            vec![example_profile("tens-2ch"), example_profile("tens-2ch")],
            None,
            &[],
        );
        assert_eq!(load_profiles(&twice).expect("loads").len(), 1);
        let missing = args(vec![PathBuf::from("/nonexistent/x.toml")], None, &[]);
        let e = format!("{:#}", load_profiles(&missing).expect_err("missing"));
        assert!(
            e.contains("--profile") && e.contains("/nonexistent/x.toml"),
            "{e}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let broken = dir.path().join("broken.toml");
        std::fs::write(&broken, "id = \"x\"\n").expect("write");
        let e = format!(
            "{:#}",
            load_profiles(&args(vec![broken.clone()], None, &[])).expect_err("broken")
        );
        assert!(e.contains(&broken.display().to_string()), "{e}");
    }

    #[test]
    fn faults_merge_per_device_and_name_unknown_devices() {
        let a = args(
            vec![example_profile("tens-2ch")],
            None,
            &["tens-2ch:silent", "tens-2ch:electrode-lifting=900"],
        );
        let profiles = load_profiles(&a).expect("loads");
        let f = collect_faults(&a.faults, &profiles).expect("known device");
        assert_eq!(
            f.get("tens-2ch"),
            Some(&Faults {
                silent: true,
                electrode_lifting_ohm_per_s: Some(900.0),
                ..Faults::default()
            })
        );
        let e = collect_faults(&[ok("pads:silent")], &profiles)
            .expect_err("unknown device")
            .to_string();
        assert!(
            e.contains("--fault") && e.contains("\"pads\"") && e.contains("tens-2ch"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn bad_broker_and_controller_are_named() {
        let mut a = args(vec![example_profile("tens-2ch")], None, &[]);
        a.broker = "http://nowhere".into();
        let e = format!(
            "{:#}",
            run(a, CancellationToken::new()).await.expect_err("bad url")
        );
        assert!(
            e.contains("--broker") && e.contains("http://nowhere"),
            "{e}"
        );

        let mut a = args(vec![example_profile("tens-2ch")], None, &[]);
        a.controller = "a/b".into();
        let e = format!(
            "{:#}",
            run(a, CancellationToken::new()).await.expect_err("bad id")
        );
        assert!(e.contains("--controller"), "{e}");

        let mut a = args(vec![example_profile("tens-2ch")], None, &[]);
        a.password = Some("secret".into());
        let e = format!(
            "{:#}",
            run(a, CancellationToken::new()).await.expect_err("no user")
        );
        assert!(e.contains("--username") && !e.contains("secret"), "{e}");
    }
}
