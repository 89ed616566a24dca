//! The device simulator: one simulated device per device profile, each with its own MQTT
//! connection through [`crate::bus`], as a real device would have.
//!
//! A simulated device
//! - obeys `set` commands only under a lease and stops by itself when the lease lapses; a
//!   `renew_lease` extends an output that is still running and never starts one (it answers
//!   `expired` instead);
//! - stops every output at once on a panel's e-stop (the controller's `estop` topic), without
//!   waiting for the controller's stops (unless [`SimOptions::stop_on_estop`] is off, as for a
//!   device that does not implement it);
//! - acks every command (`accepted`, `rejected` with a reason, or `expired`), and answers a
//!   repeated command id (an MQTT redelivery) with the first answer without applying it again;
//! - refuses setpoints beyond its own profile (a device has hardware limits of its own) and
//!   leases longer than [`SimOptions::max_lease`];
//! - publishes telemetry every [`SimOptions::telemetry_period`] for every sensor its profile
//!   declares: skin temperature (heat channels, and optical ones with a skin sensor) from a
//!   first-order thermal model driven by the delivered power, measured optical power with
//!   noise (optical channels with a power sensor), electrode impedance (electrical channels
//!   with an impedance monitor). Each message says whether the channel is delivering.
//!
//! Faults ([`Faults`]) are set per device at spawn, later with [`SimHandle::set_faults`], or
//! over MQTT by a [`SimFaultMessage`](crate::bus::payload::SimFaultMessage) on the device's
//! `sim/<device>/fault` topic (so a running `modalis sim` can be broken from another shell):
//! overheating, power drift, electrode lifting, going silent, ignoring stops and ignoring
//! leases. A device with the last two keeps delivering after a stop or a lapsed lease, and
//! its telemetry says so: that is what the controller must notice.

pub mod cli;
mod device;
pub mod model;

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use modalis_governor::DeviceProfile;
use modalis_sdk::{ChannelKind, Setpoint};

use crate::bus::payload::FaultSpec;
use crate::bus::topics::{TopicError, check_id};
use crate::bus::{Bus, BusConfig, BusError, BusTask, Qos};

/// Faults to inject into one simulated device. The default is a healthy device.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Multiplies how much the skin heats per delivered power, unknown to the device's own
    /// (feed-forward) regulation, so a heat channel overshoots its target: e.g. 2.0.
    pub overheating_gain: Option<f64>,
    /// Multiplies the actual output power; the power sensor measures the drifted power: e.g.
    /// 1.5 delivers and reports 150 % of the setpoint.
    pub power_drift: Option<f64>,
    /// Electrodes lifting off: the impedance rises by this many ohm per second from when the
    /// fault is set.
    pub electrode_lifting_ohm_per_s: Option<f64>,
    /// Publishes no telemetry at all (acks still go out).
    pub silent: bool,
    /// Acks stop commands (and `off` setpoints) as accepted but keeps delivering.
    pub ignore_stop: bool,
    /// Keeps delivering after a lease lapses.
    pub ignore_leases: bool,
}

impl From<FaultSpec> for Faults {
    fn from(f: FaultSpec) -> Faults {
        Faults {
            overheating_gain: f.overheating_gain,
            power_drift: f.power_drift,
            electrode_lifting_ohm_per_s: f.electrode_lifting_ohm_per_s,
            silent: f.silent,
            ignore_stop: f.ignore_stop,
            ignore_leases: f.ignore_leases,
        }
    }
}

impl From<Faults> for FaultSpec {
    fn from(f: Faults) -> FaultSpec {
        FaultSpec {
            overheating_gain: f.overheating_gain,
            power_drift: f.power_drift,
            electrode_lifting_ohm_per_s: f.electrode_lifting_ohm_per_s,
            silent: f.silent,
            ignore_stop: f.ignore_stop,
            ignore_leases: f.ignore_leases,
        }
    }
}

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Telemetry period of every device.
    pub telemetry_period: Duration,
    /// Seed of the noise; each device derives its own stream from it and its id.
    pub seed: u64,
    /// Skin temperature with no output, C.
    pub baseline_skin_temp_c: f64,
    /// Time constant of the skin temperature model.
    pub thermal_time_constant: Duration,
    /// Longest lease a device accepts; a longer one is rejected (a device trusts no
    /// controller with an unbounded grant).
    pub max_lease: Duration,
    /// Faults by device id.
    pub faults: BTreeMap<String, Faults>,
    /// Devices subscribe to the controller's `estop` topic and stop every output on a panel's
    /// e-stop themselves (the device contract: [`crate::bus::topics::Topics::device_filters`]).
    /// Off: they only obey the controller's stop commands, as a device that does not
    /// implement the e-stop subscription would (tests of the controller's own e-stop path).
    pub stop_on_estop: bool,
}

impl Default for SimOptions {
    fn default() -> SimOptions {
        SimOptions {
            telemetry_period: Duration::from_millis(100),
            seed: 0x006d_6f64_616c_6973, // "modalis"
            baseline_skin_temp_c: 32.0,
            thermal_time_constant: Duration::from_secs(20),
            max_lease: Duration::from_secs(60),
            faults: BTreeMap::new(),
            stop_on_estop: true,
        }
    }
}

/// Why the simulator could not start or answer.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A device id cannot be a topic level.
    #[error("device profile {device:?}: {source}")]
    DeviceId {
        /// The id.
        device: String,
        /// Why.
        source: TopicError,
    },
    /// Two profiles have the same id.
    #[error("device {0:?} is listed twice")]
    Duplicate(String),
    /// Faults named a device that is not simulated.
    #[error("no simulated device {0:?}")]
    UnknownDevice(String),
    /// A device's MQTT connection could not start.
    #[error("device {device:?}: {source}")]
    Bus {
        /// The device.
        device: String,
        /// Why.
        source: BusError,
    },
    /// The options are out of range.
    #[error("invalid simulator options: {0}")]
    Options(String),
}

/// One channel as the simulator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelState {
    /// Channel name.
    pub name: String,
    /// Channel kind.
    pub kind: ChannelKind,
    /// Whether it is delivering energy.
    pub energised: bool,
    /// The last setpoint applied by a `set` command (stays after a stop, for inspection).
    pub last_setpoint: Option<Setpoint>,
    /// The lease it delivers under, if delivering under one.
    pub lease_id: Option<u64>,
    /// Time left on that lease (0 once it has lapsed while ignoring leases).
    pub lease_remaining: Option<Duration>,
    /// True skin temperature at the site, C.
    pub skin_temp_c: f64,
    /// Actual output power, mW.
    pub output_power_mw: f64,
    /// Electrode impedance without noise, ohm.
    pub impedance_ohm: f64,
}

/// One device as the simulator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceState {
    /// Device id.
    pub device: String,
    /// Whether its MQTT connection is up.
    pub connected: bool,
    /// Its channels, in profile order.
    pub channels: Vec<ChannelState>,
    /// Valid commands received (duplicates included).
    pub commands: u64,
    /// Panel e-stops obeyed directly (see [`SimOptions::stop_on_estop`]).
    pub estops: u64,
    /// Acks sent.
    pub acks: u64,
    /// Telemetry messages sent.
    pub telemetry: u64,
    /// Invalid messages rejected.
    pub rejected: u64,
}

impl DeviceState {
    /// The channel called `name`.
    pub fn channel(&self, name: &str) -> Option<&ChannelState> {
        self.channels.iter().find(|c| c.name == name)
    }

    /// Whether any channel is delivering.
    pub fn any_energised(&self) -> bool {
        self.channels.iter().any(|c| c.energised)
    }
}

#[derive(Debug)]
struct DeviceHandle {
    state: watch::Receiver<DeviceState>,
    faults: watch::Sender<Faults>,
}

/// The running simulator.
#[derive(Debug)]
pub struct SimHandle {
    devices: BTreeMap<String, DeviceHandle>,
    tracker: TaskTracker,
    buses: Vec<BusTask>,
}

/// The simulator.
#[derive(Debug)]
pub struct Simulator;

impl Simulator {
    /// Starts one simulated device per profile, each on its own connection made from `bus`
    /// (the broker, credentials and timing; the client id becomes `<client_id>-<device>`, and
    /// the subscriptions are a device's, [`crate::bus::topics::Topics::device_filters`] (its
    /// command topic and the e-stop, the latter unless [`SimOptions::stop_on_estop`] is off),
    /// and its `sim/<device>/fault` topic).
    /// Everything stops when `cancel` fires.
    pub fn spawn(
        bus: BusConfig,
        profiles: Vec<DeviceProfile>,
        options: SimOptions,
        cancel: CancellationToken,
    ) -> Result<SimHandle, SimError> {
        if options.telemetry_period.is_zero() {
            return Err(SimError::Options(
                "telemetry_period: expected more than 0".into(),
            ));
        }
        if !options.baseline_skin_temp_c.is_finite() {
            return Err(SimError::Options(
                "baseline_skin_temp_c: expected a finite number".into(),
            ));
        }
        for id in options.faults.keys() {
            if !profiles.iter().any(|p| &p.id == id) {
                return Err(SimError::UnknownDevice(id.clone()));
            }
        }
        let mut devices = BTreeMap::new();
        let mut buses = Vec::new();
        let tracker = TaskTracker::new();
        for profile in profiles {
            let device = profile.id.clone();
            check_id("device", &device).map_err(|source| SimError::DeviceId {
                device: device.clone(),
                source,
            })?;
            if devices.contains_key(&device) {
                return Err(SimError::Duplicate(device));
            }
            let mut cfg = bus.clone();
            cfg.client_id = format!("{}-{device}", bus.client_id);
            let id_error = |source| SimError::DeviceId {
                device: device.clone(),
                source,
            };
            let mut filters = cfg.topics.device_filters(&device).map_err(id_error)?;
            if !options.stop_on_estop {
                let estop = cfg.topics.estop();
                filters.retain(|f| *f != estop);
            }
            filters.push(cfg.topics.sim_fault_filter(&device).map_err(id_error)?);
            cfg.subscriptions = filters.into_iter().map(|f| (f, Qos::AtLeastOnce)).collect();
            cfg.birth = None;
            cfg.last_will = None;
            let b = Bus::start(cfg, cancel.clone()).map_err(|source| SimError::Bus {
                device: device.clone(),
                source,
            })?;
            let faults = options.faults.get(&device).cloned().unwrap_or_default();
            // The device holds a sender too: a fault message it receives replaces its faults
            // just as `set_faults` does.
            let (faults_tx, _) = watch::channel(faults);
            let sim = device::SimDevice::new(profile, &options, b.handle, faults_tx.clone());
            let state_rx = sim.state();
            tracker.spawn(sim.run(b.inbox, cancel.clone()));
            buses.push(b.task);
            devices.insert(
                device,
                DeviceHandle {
                    state: state_rx,
                    faults: faults_tx,
                },
            );
        }
        tracker.close();
        Ok(SimHandle {
            devices,
            tracker,
            buses,
        })
    }
}

impl SimHandle {
    /// The simulated device ids.
    pub fn devices(&self) -> Vec<String> {
        self.devices.keys().cloned().collect()
    }

    /// The current state of `device`.
    pub fn state(&self, device: &str) -> Option<DeviceState> {
        self.devices.get(device).map(|d| d.state.borrow().clone())
    }

    /// A receiver that sees every change of `device`'s state (for `wait_for`).
    pub fn watch(&self, device: &str) -> Option<watch::Receiver<DeviceState>> {
        self.devices.get(device).map(|d| d.state.clone())
    }

    /// Replaces the faults of `device` from now on.
    pub fn set_faults(&self, device: &str, faults: Faults) -> Result<(), SimError> {
        let d = self
            .devices
            .get(device)
            .ok_or_else(|| SimError::UnknownDevice(device.to_string()))?;
        d.faults.send_replace(faults);
        Ok(())
    }

    /// Waits until every device is connected; false on timeout.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let all = async {
            for d in self.devices.values() {
                let mut rx = d.state.clone();
                if rx.wait_for(|s| s.connected).await.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(timeout, all).await.unwrap_or(false)
    }

    /// Kills every device's connection without a DISCONNECT, as a power cut would.
    pub fn abort_connections(&self) {
        for b in &self.buses {
            b.abort();
        }
    }

    /// Waits for every device task to end (after the cancellation token fired).
    pub async fn join(self) {
        self.tracker.wait().await;
        for b in self.buses {
            b.join().await;
        }
    }
}
