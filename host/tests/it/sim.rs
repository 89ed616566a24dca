//! The device simulator through real brokers, driven the way the controller will drive it:
//! commands on `device/<id>/command`, acks and telemetry read back over MQTT.

use std::collections::BTreeMap;
use std::time::Duration;

use modalis::bus::payload::{
    AckOutcome, CommandAck, CommandAction, DeviceCommand, DeviceTelemetry, EstopInput, FaultSpec,
    Inbound, LeaseGrant, SimFaultMessage,
};
use modalis::bus::topics::Topics;
use modalis::bus::{Bus, BusEvent, OutboundMessage, Qos};
use modalis::sim::{DeviceState, Faults, SimHandle, SimOptions, Simulator};
use modalis_governor::DeviceProfile;
use modalis_sdk::{HeatSetpoint, Measurement, OpticalSetpoint, Setpoint};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::bus::{
    CONTROLLER_USER, DEVICE_USER, TestBroker, WAIT, controller_config, recv_until, topics,
};

const PERIOD: Duration = Duration::from_millis(50);

fn profile(name: &str) -> DeviceProfile {
    let path = format!(
        "{}/../examples/profiles/{name}.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).expect("example profile");
    DeviceProfile::from_toml_str(&text, &path).expect("valid profile")
}

fn heat(target_temp_c: f64) -> Setpoint {
    Setpoint::Heat(HeatSetpoint {
        target_temp_c,
        power_limit_w: 6.0,
    })
}

fn laser(power_mw: f64) -> Setpoint {
    Setpoint::Optical(OpticalSetpoint {
        wavelength_nm: 808.0,
        power_mw,
        beam_area_cm2: 1.0,
        pulse_frequency_hz: 0.0,
        duty_cycle: 1.0,
        scan_area_cm2: None,
    })
}

fn set(setpoint: Setpoint, id: u64, valid_for_ms: u64) -> CommandAction {
    CommandAction::Set {
        setpoint,
        lease: LeaseGrant { id, valid_for_ms },
    }
}

fn renew(id: u64, valid_for_ms: u64) -> CommandAction {
    CommandAction::RenewLease {
        lease: LeaseGrant { id, valid_for_ms },
    }
}

fn stop() -> CommandAction {
    CommandAction::Stop {
        reason: "test".into(),
    }
}

/// A broker, a simulator on it, and a controller-side bus that reads acks and telemetry.
struct Rig {
    broker: TestBroker,
    t: Topics,
    cancel: CancellationToken,
    ctl: Bus,
    sim: SimHandle,
    seq: u64,
}

impl Rig {
    /// `profiles` are file names under examples/profiles; `faults` are by device id.
    async fn start(
        broker: TestBroker,
        name: &str,
        profiles: &[&str],
        faults: &[(&str, Faults)],
    ) -> Rig {
        Rig::start_with(broker, name, profiles, faults, |_| {}).await
    }

    /// [`Rig::start`] with the simulator's options changed by `tweak`.
    async fn start_with(
        broker: TestBroker,
        name: &str,
        profiles: &[&str],
        faults: &[(&str, Faults)],
        tweak: impl FnOnce(&mut SimOptions),
    ) -> Rig {
        let t = topics(name);
        let cancel = CancellationToken::new();
        let ctl = Bus::start(controller_config(&broker, &t, "ctl"), cancel.clone()).expect("ok");
        let mut options = SimOptions {
            telemetry_period: PERIOD,
            faults: faults
                .iter()
                .map(|(d, f)| (d.to_string(), f.clone()))
                .collect::<BTreeMap<_, _>>(),
            ..SimOptions::default()
        };
        tweak(&mut options);
        let profiles: Vec<DeviceProfile> = profiles.iter().map(|p| profile(p)).collect();
        let ids: Vec<String> = profiles.iter().map(|p| p.id.clone()).collect();
        let sim = Simulator::spawn(
            broker.config("sim", &t, DEVICE_USER),
            profiles,
            options,
            cancel.clone(),
        )
        .expect("simulator starts");
        assert!(sim.wait_connected(WAIT).await, "every device connects");
        let mut rig = Rig {
            broker,
            t,
            cancel,
            ctl,
            sim,
            seq: 0,
        };
        // Telemetry from every device means the controller's subscriptions are in place.
        for id in &ids {
            rig.telemetry(id, |_| true).await;
        }
        rig
    }

    /// Sends a command (again and again with the same id until acked: the device answers a
    /// repeat without applying it twice) and returns the ack.
    async fn command(&mut self, device: &str, channel: &str, action: CommandAction) -> CommandAck {
        self.seq += 1;
        let cmd = DeviceCommand {
            seq: self.seq,
            ts_ms: 1,
            command_id: format!("cmd-{}", self.seq),
            device: device.to_string(),
            channel: channel.to_string(),
            session: Some("s1".into()),
            step: None,
            action,
        };
        let topic = self.t.device_command(device).expect("valid");
        let id = cmd.command_id.clone();
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "no ack for {id}");
            self.ctl
                .handle
                .publish(&topic, &cmd, Qos::AtLeastOnce, false)
                .await
                .expect("published");
            let got = tokio::time::timeout(Duration::from_millis(500), async {
                loop {
                    match self.ctl.inbox.recv().await {
                        Some(BusEvent::Message {
                            message: Inbound::Ack(a),
                            ..
                        }) if a.command_id == id => return Some(a),
                        Some(_) => {}
                        None => return None,
                    }
                }
            })
            .await;
            match got {
                Ok(Some(a)) => return a,
                Ok(None) => panic!("the controller bus ended"),
                Err(_) => {}
            }
        }
    }

    /// The next telemetry message from `device` for which `pick` holds.
    async fn telemetry(
        &mut self,
        device: &str,
        mut pick: impl FnMut(&DeviceTelemetry) -> bool,
    ) -> DeviceTelemetry {
        recv_until(
            &mut self.ctl.inbox,
            &format!("telemetry from {device}"),
            |ev| match ev {
                BusEvent::Message {
                    message: Inbound::Telemetry(m),
                    ..
                } if m.device == device && pick(&m) => Some(m),
                _ => None,
            },
        )
        .await
    }

    /// Publishes `payload` on `device`'s fault topic as an operator would (QoS 1, not
    /// retained unless `retain`), from the controller's connection.
    async fn fault_raw(&self, device: &str, payload: Vec<u8>, retain: bool) {
        let topic = self.t.sim_fault(device).expect("valid");
        self.ctl
            .handle
            .publish_message(OutboundMessage {
                topic,
                payload,
                qos: Qos::AtLeastOnce,
                retain,
            })
            .await
            .expect("published");
    }

    /// Publishes a fault message for `device`.
    async fn fault(&mut self, device: &str, faults: FaultSpec) {
        self.seq += 1;
        let msg = fault_message(self.seq, device, faults);
        self.fault_raw(device, serde_json::to_vec(&msg).expect("encodes"), false)
            .await;
    }

    /// Waits until `device`'s state satisfies `pick`.
    async fn wait_state(&self, device: &str, what: &str, pick: impl FnMut(&DeviceState) -> bool) {
        let mut state = self.sim.watch(device).expect("simulated");
        tokio::time::timeout(WAIT, state.wait_for(pick))
            .await
            .unwrap_or_else(|_| panic!("{device}: no {what} within {WAIT:?}"))
            .expect("simulator running");
    }

    /// `device`'s actual output power on `channel`, mW (the model's, without noise).
    fn output_mw(&self, device: &str, channel: &str) -> f64 {
        self.sim
            .state(device)
            .and_then(|s| s.channel(channel).map(|c| c.output_power_mw))
            .expect("simulated channel")
    }

    fn energised(&self, device: &str, channel: &str) -> bool {
        self.sim
            .state(device)
            .and_then(|s| s.channel(channel).map(|c| c.energised))
            .expect("simulated channel")
    }
}

fn fault_message(seq: u64, device: &str, faults: FaultSpec) -> SimFaultMessage {
    SimFaultMessage {
        seq,
        ts_ms: 1,
        device: device.to_string(),
        faults,
    }
}

async fn acks_and_telemetry(broker: TestBroker) {
    let name = format!("sim-acks-{}", broker.name());
    let mut rig = Rig::start(broker, &name, &["mire-pads", "lllt-808", "tens-2ch"], &[]).await;

    let ack = rig
        .command("mire-pads", "pad-1", set(heat(40.0), 1, 5_000))
        .await;
    assert_eq!(
        (ack.outcome, ack.lease_id),
        (AckOutcome::Accepted, Some(1)),
        "{ack:?}"
    );
    assert!(rig.energised("mire-pads", "pad-1"));
    let state = rig.sim.state("mire-pads").expect("simulated");
    assert_eq!(
        state.channel("pad-1").and_then(|c| c.last_setpoint),
        Some(heat(40.0))
    );
    assert!(!state.channel("pad-2").expect("pad-2").energised);

    // Telemetry at its rate: count one channel's readings over a second.
    let started = Instant::now();
    let mut count = 0;
    let mut delivering = 0;
    while started.elapsed() < Duration::from_secs(1) {
        let m = rig.telemetry("mire-pads", |m| m.channel == "pad-1").await;
        assert!(matches!(m.measurement, Measurement::SkinTempC(_)));
        count += 1;
        if m.delivering {
            delivering += 1;
            assert_eq!(m.lease_id, Some(1));
        }
    }
    // 20 expected at 50 ms; the bounds only catch a device that is far off its rate.
    assert!(
        (5..=40).contains(&count),
        "{count} readings in 1 s at a 50 ms period"
    );
    assert_eq!(delivering, count, "pad-1 delivers throughout its lease");

    // Each sensor the profile declares reports: optical power, impedance.
    let m = rig.telemetry("lllt-808", |m| m.channel == "probe").await;
    assert!(matches!(m.measurement, Measurement::OpticalPowerMw(p) if p == 0.0));
    let m = rig.telemetry("tens-2ch", |m| m.channel == "ch1").await;
    assert!(
        matches!(m.measurement, Measurement::ImpedanceOhm(z) if (400.0..600.0).contains(&z)),
        "{m:?}"
    );

    // Refusals name the reason; nothing starts.
    let ack = rig
        .command("mire-pads", "pad-9", set(heat(40.0), 2, 5_000))
        .await;
    assert_eq!(ack.outcome, AckOutcome::Rejected);
    assert!(ack.reason.unwrap_or_default().contains("pad-9"));
    let ack = rig
        .command("mire-pads", "pad-2", set(laser(100.0), 3, 5_000))
        .await;
    assert_eq!(ack.outcome, AckOutcome::Rejected, "{ack:?}");
    let ack = rig
        .command("mire-pads", "pad-2", set(heat(60.0), 4, 5_000))
        .await;
    assert_eq!(
        ack.outcome,
        AckOutcome::Rejected,
        "above the pad's 43 C: {ack:?}"
    );
    let ack = rig
        .command("mire-pads", "pad-2", set(heat(40.0), 5, 3_600_000))
        .await;
    assert_eq!(
        ack.outcome,
        AckOutcome::Rejected,
        "an hour's lease: {ack:?}"
    );
    assert!(!rig.energised("mire-pads", "pad-2"));

    // Stop, and the telemetry says so; a renewal afterwards starts nothing.
    let ack = rig.command("mire-pads", "pad-1", stop()).await;
    assert_eq!(ack.outcome, AckOutcome::Accepted);
    assert!(!rig.energised("mire-pads", "pad-1"));
    rig.telemetry("mire-pads", |m| m.channel == "pad-1" && !m.delivering)
        .await;
    let ack = rig.command("mire-pads", "pad-1", renew(6, 5_000)).await;
    assert_eq!(ack.outcome, AckOutcome::Expired, "{ack:?}");
    assert!(!rig.energised("mire-pads", "pad-1"));
    let state = rig.sim.state("mire-pads").expect("simulated");
    assert!(
        state.acks >= 7 && state.telemetry > 0 && state.rejected == 0,
        "{state:?}"
    );
    rig.cancel.cancel();
    tokio::time::timeout(WAIT, rig.sim.join())
        .await
        .expect("the simulator ends after cancel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_acks_and_publishes_telemetry_on_rumqttd() {
    acks_and_telemetry(TestBroker::embedded().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_acks_and_publishes_telemetry_on_mosquitto() {
    acks_and_telemetry(TestBroker::mosquitto()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_stops_within_one_lease_period_without_renewals() {
    let broker = TestBroker::embedded().await;
    let mut rig = Rig::start(broker, "sim-lease", &["lllt-808"], &[]).await;
    const LEASE_MS: u64 = 400;
    let started = Instant::now();
    let ack = rig
        .command("lllt-808", "probe", set(laser(100.0), 1, LEASE_MS))
        .await;
    assert_eq!(ack.outcome, AckOutcome::Accepted);
    // Renewed for three lease periods: it keeps delivering past the first lease.
    let mut lease = 1;
    while started.elapsed() < Duration::from_millis(3 * LEASE_MS) {
        tokio::time::sleep(Duration::from_millis(LEASE_MS / 4)).await;
        lease += 1;
        let ack = rig
            .command("lllt-808", "probe", renew(lease, LEASE_MS))
            .await;
        assert_eq!(
            (ack.outcome, ack.lease_id),
            (AckOutcome::Accepted, Some(lease))
        );
        assert!(rig.energised("lllt-808", "probe"));
    }
    let m = rig
        .telemetry("lllt-808", |m| {
            matches!(m.measurement, Measurement::OpticalPowerMw(_)) && m.delivering
        })
        .await;
    // 100 mW with 1 % noise.
    assert!(
        matches!(m.measurement, Measurement::OpticalPowerMw(p) if (90.0..110.0).contains(&p)),
        "{m:?}"
    );

    // No more renewals: off within one lease period (plus slack for a loaded machine: the
    // device's own timer fires at the lapse; the slack is only scheduling).
    let last_renewal = Instant::now();
    let mut state = rig.sim.watch("lllt-808").expect("simulated");
    tokio::time::timeout(WAIT, state.wait_for(|s| !s.any_energised()))
        .await
        .expect("the device stops by itself")
        .expect("simulator running");
    let off_after = last_renewal.elapsed();
    assert!(
        off_after <= Duration::from_millis(LEASE_MS) + Duration::from_secs(1),
        "stopped {off_after:?} after the last renewal, lease {LEASE_MS} ms"
    );
    let m = rig.telemetry("lllt-808", |m| !m.delivering).await;
    assert_eq!(m.lease_id, None);
    // Late renewal: expired, stays off.
    let ack = rig
        .command("lllt-808", "probe", renew(lease + 1, LEASE_MS))
        .await;
    assert_eq!(ack.outcome, AckOutcome::Expired);
    assert!(!rig.energised("lllt-808", "probe"));
    rig.cancel.cancel();
}

/// A panel's e-stop, published on the controller's `estop` topic with no controller running
/// (nobody sends a stop command): every device stops by itself, except one with the
/// ignore-stop fault (its stop path is broken, this one included), and none when the option is
/// off (a device that does not implement the subscription waits for the controller).
async fn estop_without_a_controller(stop_on_estop: bool) {
    let name = format!("sim-estop-{stop_on_estop}");
    let broken = Faults {
        ignore_stop: true,
        ..Faults::default()
    };
    let mut rig = Rig::start_with(
        TestBroker::mosquitto(),
        &name,
        &["mire-pads", "lllt-808", "laser-acupuncture-probe"],
        &[("laser-acu-3b", broken)],
        |o| o.stop_on_estop = stop_on_estop,
    )
    .await;
    for (device, channel, setpoint) in [
        ("mire-pads", "pad-1", heat(40.0)),
        ("mire-pads", "pad-2", heat(40.0)),
        ("lllt-808", "probe", laser(200.0)),
        ("laser-acu-3b", "probe", laser(200.0)),
    ] {
        let ack = rig.command(device, channel, set(setpoint, 1, 30_000)).await;
        assert_eq!(
            ack.outcome,
            AckOutcome::Accepted,
            "{device}/{channel}: {ack:?}"
        );
    }
    let commands_before: Vec<u64> = ["mire-pads", "lllt-808", "laser-acu-3b"]
        .iter()
        .map(|d| rig.sim.state(d).expect("simulated").commands)
        .collect();
    let input = EstopInput {
        seq: 1,
        ts_ms: 1,
        panel: "panel-1".into(),
        reason: "test".into(),
    };
    rig.ctl
        .handle
        .publish(&rig.t.estop(), &input, Qos::AtLeastOnce, false)
        .await
        .expect("published");
    if stop_on_estop {
        for device in ["mire-pads", "lllt-808"] {
            rig.wait_state(device, "stop on the e-stop", |s| {
                !s.any_energised() && s.estops == 1
            })
            .await;
        }
    } else {
        // Nothing to wait for but time: a device that listened would have stopped well within.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(rig.energised("mire-pads", "pad-1"));
        assert!(rig.energised("lllt-808", "probe"));
    }
    // Stopped by the e-stop alone: no command reached any device meanwhile.
    let commands_after: Vec<u64> = ["mire-pads", "lllt-808", "laser-acu-3b"]
        .iter()
        .map(|d| rig.sim.state(d).expect("simulated").commands)
        .collect();
    assert_eq!(commands_before, commands_after);
    // The broken device still delivers, as a device with a broken stop path would: the
    // controller's `stop_ignored` check is what catches it.
    assert!(rig.energised("laser-acu-3b", "probe"));
    assert_eq!(rig.sim.state("laser-acu-3b").expect("simulated").estops, 0);
    // The telemetry says so too.
    if stop_on_estop {
        let m = rig.telemetry("lllt-808", |m| m.channel == "probe").await;
        assert!(!m.delivering, "{m:?}");
    }
    // Not latched: the next session's command starts the channel again.
    let ack = rig
        .command("lllt-808", "probe", set(laser(200.0), 2, 30_000))
        .await;
    assert_eq!(ack.outcome, AckOutcome::Accepted, "{ack:?}");
    assert!(rig.energised("lllt-808", "probe"));
    rig.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_devices_stop_on_a_panel_estop_with_no_controller_running() {
    estop_without_a_controller(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_devices_without_the_estop_subscription_wait_for_the_controller() {
    estop_without_a_controller(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_stops_when_the_broker_dies() {
    let broker = TestBroker::mosquitto();
    let mut rig = Rig::start(broker, "sim-broker-dies", &["mire-pads"], &[]).await;
    const LEASE_MS: u64 = 500;
    let ack = rig
        .command(
            "mire-pads",
            "lamp",
            set(
                Setpoint::Heat(HeatSetpoint {
                    target_temp_c: 40.0,
                    power_limit_w: 100.0,
                }),
                1,
                LEASE_MS,
            ),
        )
        .await;
    assert_eq!(ack.outcome, AckOutcome::Accepted);
    let killed = Instant::now();
    rig.broker.mosquitto_mut().kill();
    let mut state = rig.sim.watch("mire-pads").expect("simulated");
    tokio::time::timeout(WAIT, state.wait_for(|s| !s.any_energised()))
        .await
        .expect("the device stops by itself")
        .expect("simulator running");
    assert!(
        killed.elapsed() <= Duration::from_millis(LEASE_MS + 1_000),
        "{:?}",
        killed.elapsed()
    );
    rig.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_faults_show_in_telemetry() {
    let broker = TestBroker::embedded().await;
    let rogue = Faults {
        ignore_leases: true,
        ignore_stop: true,
        ..Faults::default()
    };
    let drifting = Faults {
        electrode_lifting_ohm_per_s: Some(2_000.0),
        ..Faults::default()
    };
    let mut rig = Rig::start(
        broker,
        "sim-faults",
        &["lllt-808", "laser-acupuncture-probe", "tens-2ch"],
        &[("lllt-808", rogue), ("tens-2ch", drifting)],
    )
    .await;

    // Ignoring leases: still delivering long after a 200 ms lease, and says so.
    let ack = rig
        .command("lllt-808", "probe", set(laser(100.0), 1, 200))
        .await;
    assert_eq!(ack.outcome, AckOutcome::Accepted);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(rig.energised("lllt-808", "probe"));
    let m = rig.telemetry("lllt-808", |_| true).await;
    assert!(m.delivering, "{m:?}");

    // Ignoring stops: acks the stop as accepted and carries on.
    let ack = rig.command("lllt-808", "probe", stop()).await;
    assert_eq!(ack.outcome, AckOutcome::Accepted);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = rig.telemetry("lllt-808", |_| true).await;
    assert!(m.delivering, "a stop was acked but energy continues: {m:?}");

    // Fixed at run time: the same device now obeys.
    rig.sim
        .set_faults("lllt-808", Faults::default())
        .expect("simulated device");
    let ack = rig.command("lllt-808", "probe", stop()).await;
    assert_eq!(ack.outcome, AckOutcome::Accepted);
    rig.telemetry("lllt-808", |m| !m.delivering).await;

    // Power drift, set at run time: measured power 1.5 times the setpoint.
    rig.sim
        .set_faults(
            "laser-acu-3b",
            Faults {
                power_drift: Some(1.5),
                ..Faults::default()
            },
        )
        .expect("simulated device");
    let ack = rig
        .command("laser-acu-3b", "probe", set(laser(200.0), 2, 5_000))
        .await;
    assert_eq!(ack.outcome, AckOutcome::Accepted, "{ack:?}");
    let m = rig.telemetry("laser-acu-3b", |m| m.delivering).await;
    let m = if matches!(m.measurement, Measurement::OpticalPowerMw(p) if p > 0.0) {
        m
    } else {
        // The first reading after the ack may predate the next physics tick.
        rig.telemetry(
            "laser-acu-3b",
            |m| matches!(m.measurement, Measurement::OpticalPowerMw(p) if p > 0.0),
        )
        .await
    };
    assert!(
        matches!(m.measurement, Measurement::OpticalPowerMw(p) if (270.0..330.0).contains(&p)),
        "{m:?}"
    );

    // Electrodes lifting: the impedance climbs past twice the nominal 500 ohm.
    rig.telemetry(
        "tens-2ch",
        |m| matches!(m.measurement, Measurement::ImpedanceOhm(z) if z > 1_000.0),
    )
    .await;

    // Silence: no telemetry from a silent device for several periods.
    rig.sim
        .set_faults(
            "laser-acu-3b",
            Faults {
                silent: true,
                ..Faults::default()
            },
        )
        .expect("simulated device");
    tokio::time::sleep(PERIOD * 3).await;
    let before = rig.sim.state("laser-acu-3b").expect("simulated").telemetry;
    tokio::time::sleep(PERIOD * 6).await;
    assert_eq!(
        rig.sim.state("laser-acu-3b").expect("simulated").telemetry,
        before,
        "a silent device sends nothing"
    );
    rig.cancel.cancel();
}

/// Faults over MQTT, as `modalis sim` prints how to: a fault message on
/// `sim/<device>/fault` replaces the device's faults; an invalid one is counted and changes
/// nothing.
async fn faults_from_the_fault_topic(broker: TestBroker) {
    let name = format!("sim-fault-topic-{}", broker.name());
    let mut rig = Rig::start(broker, &name, &["lllt-808"], &[]).await;
    let power = |lo: f64, hi: f64| move |m: &DeviceTelemetry| matches!(m.measurement, Measurement::OpticalPowerMw(p) if (lo..hi).contains(&p));
    let ack = rig
        .command("lllt-808", "probe", set(laser(100.0), 1, 30_000))
        .await;
    assert_eq!(ack.outcome, AckOutcome::Accepted, "{ack:?}");
    rig.telemetry("lllt-808", power(90.0, 110.0)).await;

    // Power drift from the topic: the device delivers, and measures, 150 %.
    rig.fault(
        "lllt-808",
        FaultSpec {
            power_drift: Some(1.5),
            ..FaultSpec::default()
        },
    )
    .await;
    rig.telemetry("lllt-808", power(135.0, 165.0)).await;
    assert!((rig.output_mw("lllt-808", "probe") - 150.0).abs() < 1e-9);

    // Invalid fault messages: out of range, a misspelt field, another device's name, not
    // JSON. Each is counted and none changes the faults.
    let before = rig.sim.state("lllt-808").expect("simulated").rejected;
    rig.fault(
        "lllt-808",
        FaultSpec {
            power_drift: Some(0.0),
            ..FaultSpec::default()
        },
    )
    .await;
    rig.fault_raw(
        "lllt-808",
        br#"{"seq":90,"ts_ms":1,"device":"lllt-808","faults":{"slient":true}}"#.to_vec(),
        false,
    )
    .await;
    rig.fault_raw(
        "lllt-808",
        serde_json::to_vec(&fault_message(91, "tens-2ch", FaultSpec::default())).expect("encodes"),
        false,
    )
    .await;
    rig.fault_raw("lllt-808", b"silent please".to_vec(), false)
        .await;
    rig.wait_state("lllt-808", "four rejected fault messages", |s| {
        s.rejected >= before + 4
    })
    .await;
    assert_eq!(
        rig.sim.state("lllt-808").expect("simulated").rejected,
        before + 4
    );
    rig.telemetry("lllt-808", power(135.0, 165.0)).await;
    assert!(
        (rig.output_mw("lllt-808", "probe") - 150.0).abs() < 1e-9,
        "the drift is still 1.5"
    );

    // Silence from the topic: the telemetry count stops. The message replaces the drift.
    rig.fault(
        "lllt-808",
        FaultSpec {
            silent: true,
            ..FaultSpec::default()
        },
    )
    .await;
    rig.wait_state("lllt-808", "the drift cleared", |s| {
        s.channel("probe")
            .is_some_and(|c| (c.output_power_mw - 100.0).abs() < 1e-9)
    })
    .await;
    tokio::time::sleep(PERIOD * 3).await;
    let silent_from = rig.sim.state("lllt-808").expect("simulated").telemetry;
    tokio::time::sleep(PERIOD * 6).await;
    assert_eq!(
        rig.sim.state("lllt-808").expect("simulated").telemetry,
        silent_from,
        "a silent device sends nothing"
    );

    // `{}` heals it: telemetry again, at the setpoint.
    rig.fault("lllt-808", FaultSpec::default()).await;
    rig.telemetry("lllt-808", power(90.0, 110.0)).await;
    rig.cancel.cancel();
    tokio::time::timeout(WAIT, rig.sim.join())
        .await
        .expect("the simulator ends after cancel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_takes_faults_from_its_fault_topic_on_rumqttd() {
    faults_from_the_fault_topic(TestBroker::embedded().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_takes_faults_from_its_fault_topic_on_mosquitto() {
    faults_from_the_fault_topic(TestBroker::mosquitto()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_refuses_a_retained_fault_left_on_the_broker() {
    let broker = TestBroker::mosquitto();
    let t = topics("sim-fault-retained");
    let cancel = CancellationToken::new();
    // Someone published a fault with the retain flag, before the simulator started.
    let mut cfg = broker.config("panel", &t, CONTROLLER_USER);
    let topic = t.sim_fault("lllt-808").expect("valid");
    cfg.subscriptions = vec![(topic.clone(), Qos::AtLeastOnce)];
    let mut panel = Bus::start(cfg, cancel.clone()).expect("ok");
    panel.handle.wait_connected(WAIT).await.expect("connected");
    let silent = fault_message(
        1,
        "lllt-808",
        FaultSpec {
            silent: true,
            ..FaultSpec::default()
        },
    );
    panel
        .handle
        .publish(&topic, &silent, Qos::AtLeastOnce, true)
        .await
        .expect("published");
    // Its own copy back means the broker has it (and keeps it): the devices, which subscribe
    // only after this, get it from the retained store.
    recv_until(&mut panel.inbox, "the fault message back", |ev| match ev {
        BusEvent::Message {
            message: Inbound::SimFault(m),
            ..
        } => Some(m),
        _ => None,
    })
    .await;
    // Rig::start waits for telemetry from the device: a device that took the retained fault
    // would never send any.
    let mut rig = Rig::start(broker, "sim-fault-retained", &["lllt-808"], &[]).await;
    rig.wait_state("lllt-808", "the retained fault rejected", |s| {
        s.rejected >= 1
    })
    .await;
    rig.telemetry("lllt-808", |_| true).await;
    cancel.cancel();
    rig.cancel.cancel();
}

/// `modalis sim` as the command line runs it: profiles from files, a `--fault` from the
/// start, stopped by the cancellation token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_command_runs_devices_with_faults_from_flags() {
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        sim: modalis::sim::cli::SimArgs,
    }

    let broker = TestBroker::embedded().await;
    let TestBroker::Embedded(embedded) = &broker else {
        unreachable!("embedded")
    };
    let t = topics("sim-command");
    let profile = format!(
        "{}/../examples/profiles/lllt-808.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let cli = Cli::try_parse_from([
        "sim",
        "--broker",
        &embedded.url(),
        "--controller",
        t.controller(),
        "--profile",
        &profile,
        "--telemetry-period-ms",
        "50",
        "--fault",
        "lllt-808:power-drift=2",
    ])
    .expect("valid arguments");
    let cancel = CancellationToken::new();
    let sim = tokio::spawn(modalis::sim::cli::run(cli.sim, cancel.clone()));

    let mut ctl = Bus::start(controller_config(&broker, &t, "ctl"), cancel.clone()).expect("ok");
    let cmd = DeviceCommand {
        seq: 1,
        ts_ms: 1,
        command_id: "cmd-1".into(),
        device: "lllt-808".into(),
        channel: "probe".into(),
        session: None,
        step: None,
        action: set(laser(100.0), 1, 30_000),
    };
    let topic = t.device_command("lllt-808").expect("valid");
    // Until acked: the device may not have subscribed yet when the first copy goes out.
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "no ack from the simulated device"
        );
        if ctl.handle.is_connected() {
            ctl.handle
                .publish(&topic, &cmd, Qos::AtLeastOnce, false)
                .await
                .expect("published");
        }
        let acked = tokio::time::timeout(Duration::from_millis(500), async {
            while let Some(ev) = ctl.inbox.recv().await {
                if let BusEvent::Message {
                    message: Inbound::Ack(a),
                    ..
                } = ev
                {
                    return Some(a);
                }
            }
            None
        })
        .await;
        if let Ok(Some(a)) = acked {
            assert_eq!(a.outcome, AckOutcome::Accepted, "{a:?}");
            break;
        }
    }
    // The drift from --fault: 200 mW measured for a 100 mW setpoint.
    recv_until(&mut ctl.inbox, "drifted optical power", |ev| match ev {
        BusEvent::Message {
            message: Inbound::Telemetry(m),
            ..
        } if matches!(m.measurement, Measurement::OpticalPowerMw(p) if (180.0..220.0).contains(&p)) => {
            Some(())
        }
        _ => None,
    })
    .await;

    cancel.cancel();
    tokio::time::timeout(WAIT, sim)
        .await
        .expect("modalis sim ends after cancel")
        .expect("no panic")
        .expect("no error");
}
