//! One simulated device: its command handling, lease clock, physics tick and telemetry.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use modalis_governor::{ChannelSpec, DeviceProfile};
use modalis_sdk::{Measurement, Setpoint};

use super::model::{self, Output, Site, SplitMix64};
use super::{ChannelState, DeviceState, Faults, SimOptions};
use crate::bus::payload::{
    AckOutcome, CommandAck, CommandAction, DeviceCommand, DeviceTelemetry, Inbound, LeaseGrant,
    Sequencer, SimFaultMessage,
};
use crate::bus::topics::TopicKind;
use crate::bus::{BusEvent, BusHandle, Inbox};

/// How many recent command ids a device remembers to answer MQTT redeliveries.
const REMEMBERED_COMMANDS: usize = 256;

#[derive(Debug)]
struct Lease {
    id: u64,
    expires: Instant,
}

#[derive(Debug)]
struct Channel {
    name: String,
    spec: ChannelSpec,
    energised: bool,
    /// What it is delivering (or last delivered).
    setpoint: Setpoint,
    last_setpoint: Option<Setpoint>,
    lease: Option<Lease>,
    site: Site,
    output: Output,
    lifting_since: Option<Instant>,
}

impl Channel {
    fn stop(&mut self) {
        self.energised = false;
        self.lease = None;
        self.setpoint = Setpoint::Off;
    }

    /// (skin temperature sensor, power sensor, impedance monitor) fitted.
    fn sensors(&self) -> (bool, bool, bool) {
        match &self.spec {
            ChannelSpec::Heat(h) => (h.skin_temp_sensor, false, false),
            ChannelSpec::Optical(o) => (o.safety.skin_temp_sensor, o.safety.power_sensor, false),
            ChannelSpec::Electrical(e) => (false, false, e.impedance_monitor),
        }
    }

    /// Why the device's own hardware refuses `setpoint`, if it does.
    fn refuses(&self, setpoint: &Setpoint) -> Option<String> {
        match (&self.spec, setpoint) {
            (_, Setpoint::Off) => None,
            (ChannelSpec::Heat(h), Setpoint::Heat(s)) => {
                if s.target_temp_c > h.max_temp_c {
                    Some(format!(
                        "target_temp_c {} is above the device's {} C",
                        s.target_temp_c, h.max_temp_c
                    ))
                } else if s.power_limit_w > h.max_power_w {
                    Some(format!(
                        "power_limit_w {} is above the device's {} W",
                        s.power_limit_w, h.max_power_w
                    ))
                } else {
                    None
                }
            }
            (ChannelSpec::Optical(o), Setpoint::Optical(s)) => {
                if s.power_mw > o.max_power_mw {
                    Some(format!(
                        "power_mw {} is above the device's {} mW",
                        s.power_mw, o.max_power_mw
                    ))
                } else if !o.emits(s.wavelength_nm) {
                    Some(format!(
                        "wavelength_nm {} is not one the device emits ({:?})",
                        s.wavelength_nm, o.wavelengths_nm
                    ))
                } else {
                    None
                }
            }
            (ChannelSpec::Electrical(e), Setpoint::Electrical(s)) => {
                if s.amplitude_ma > e.max_peak_ma {
                    Some(format!(
                        "amplitude_ma {} is above the device's {} mA peak",
                        s.amplitude_ma, e.max_peak_ma
                    ))
                } else if !e.waveforms.contains(&s.waveform) {
                    Some(format!(
                        "waveform {:?} is not one the device makes",
                        s.waveform
                    ))
                } else {
                    None
                }
            }
            (spec, sp) => Some(format!(
                "a {} setpoint on a {} channel",
                sp.channel_kind().map_or("off", |k| k.as_str()),
                match spec {
                    ChannelSpec::Heat(_) => "heat",
                    ChannelSpec::Optical(_) => "optical",
                    ChannelSpec::Electrical(_) => "electrical",
                }
            )),
        }
    }
}

/// A simulated device.
pub(super) struct SimDevice {
    id: String,
    channels: Vec<Channel>,
    bus: BusHandle,
    /// The faults in effect: read on every tick, replaced by [`super::SimHandle::set_faults`]
    /// or by a fault message on the device's fault topic.
    faults: watch::Sender<Faults>,
    seq: Sequencer,
    rng: SplitMix64,
    period: Duration,
    baseline_c: f64,
    tau_s: f64,
    max_lease: Duration,
    answered: VecDeque<(String, CommandAck)>,
    /// Whether a panel's e-stop on the controller's `estop` topic stops this device by itself
    /// ([`SimOptions::stop_on_estop`]).
    stop_on_estop: bool,
    state: watch::Sender<DeviceState>,
    connected: bool,
    commands: u64,
    estops: u64,
    acks: u64,
    telemetry: u64,
    rejected: u64,
}

impl SimDevice {
    pub(super) fn new(
        profile: DeviceProfile,
        options: &SimOptions,
        bus: BusHandle,
        faults: watch::Sender<Faults>,
    ) -> SimDevice {
        let channels: Vec<Channel> = profile
            .channels
            .into_iter()
            .map(|c| {
                let impedance_ohm = match &c.spec {
                    ChannelSpec::Electrical(e) => e.load_ohm,
                    _ => 0.0,
                };
                Channel {
                    name: c.name,
                    spec: c.spec,
                    energised: false,
                    setpoint: Setpoint::Off,
                    last_setpoint: None,
                    lease: None,
                    site: Site {
                        skin_temp_c: options.baseline_skin_temp_c,
                        impedance_ohm,
                    },
                    output: Output::default(),
                    lifting_since: None,
                }
            })
            .collect();
        let (state, _) = watch::channel(DeviceState {
            device: profile.id.clone(),
            connected: false,
            channels: Vec::new(),
            commands: 0,
            estops: 0,
            acks: 0,
            telemetry: 0,
            rejected: 0,
        });
        let mut d = SimDevice {
            rng: SplitMix64::new(options.seed ^ model::fnv1a(&profile.id)),
            id: profile.id,
            channels,
            bus,
            faults,
            seq: Sequencer::new(),
            period: options.telemetry_period,
            baseline_c: options.baseline_skin_temp_c,
            tau_s: options.thermal_time_constant.as_secs_f64(),
            max_lease: options.max_lease,
            answered: VecDeque::new(),
            stop_on_estop: options.stop_on_estop,
            state,
            connected: false,
            commands: 0,
            estops: 0,
            acks: 0,
            telemetry: 0,
            rejected: 0,
        };
        d.publish_state(Instant::now());
        d
    }

    pub(super) fn state(&self) -> watch::Receiver<DeviceState> {
        self.state.subscribe()
    }

    pub(super) async fn run(mut self, mut inbox: Inbox, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_tick = Instant::now();
        let mut inbox_open = true;
        loop {
            // The earliest lease to lapse, unless this device ignores leases.
            let ignore_leases = self.faults.borrow().ignore_leases;
            let next_expiry = if ignore_leases {
                None
            } else {
                self.channels
                    .iter()
                    .filter_map(|c| c.lease.as_ref().map(|l| l.expires))
                    .min()
            };
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                () = tokio::time::sleep_until(next_expiry.unwrap_or(far)), if next_expiry.is_some() => {
                    self.expire_leases(Instant::now());
                }
                ev = inbox.recv(), if inbox_open => match ev {
                    Some(ev) => self.on_event(ev).await,
                    // The connection task is gone (aborted): the device keeps running on
                    // its own, leases and all, as a real one would.
                    None => {
                        inbox_open = false;
                        self.connected = false;
                    }
                },
                now = tick.tick() => {
                    let dt = now.saturating_duration_since(last_tick);
                    last_tick = now;
                    self.step(now, dt);
                    self.send_telemetry().await;
                }
            }
            self.publish_state(Instant::now());
        }
        for c in &mut self.channels {
            c.stop();
        }
        self.publish_state(Instant::now());
    }

    async fn on_event(&mut self, ev: BusEvent) {
        match ev {
            BusEvent::Connected { .. } => self.connected = true,
            BusEvent::Disconnected { .. } => self.connected = false,
            BusEvent::Message {
                message: Inbound::Command(cmd),
                ..
            } => {
                self.commands += 1;
                self.on_command(cmd).await;
            }
            BusEvent::Message {
                message: Inbound::SimFault(m),
                retained,
            } => self.on_fault(m, retained),
            BusEvent::Message {
                message: Inbound::Estop(e),
                ..
            } if self.stop_on_estop => self.on_estop(&e.panel, &e.reason),
            // Anything else on the device's topics is neither a command nor a fault: rejected,
            // never acted on. Invalid fault messages (bad JSON, out-of-range numbers) arrive
            // here as `Rejected` too, so they change nothing.
            BusEvent::Message { .. } => self.rejected += 1,
            BusEvent::Rejected(e) => {
                tracing::warn!(device = %self.id, error = %e, "invalid message ignored");
                self.rejected += 1;
            }
            BusEvent::PublishRefused { .. } | BusEvent::SubscribeRefused { .. } => {}
        }
    }

    /// A panel's e-stop (decoded and schema-checked by the bus): every output off at once,
    /// without waiting for the controller's stops, which follow on the command topic and are
    /// then acked as usual. Retained or not, it is obeyed: stopping is always safe. Nothing is
    /// latched: a command the controller sent before it saw the e-stop can still arrive after
    /// it and start a channel again, but the controller's stop for that channel comes after
    /// that command on the same topic (MQTT keeps one publisher's order), so the device ends
    /// stopped either way, no later than it would without this path. A latch would leave a
    /// device the controller never stops (one in no session) refusing every later session.
    fn on_estop(&mut self, panel: &str, reason: &str) {
        if self.faults.borrow().ignore_stop {
            // The fault: a device whose stop path is broken ignores this one too.
            tracing::warn!(device = %self.id, panel, "e-stop ignored (ignore-stop fault)");
            return;
        }
        self.estops += 1;
        let was: Vec<&str> = self
            .channels
            .iter()
            .filter(|c| c.energised)
            .map(|c| c.name.as_str())
            .collect();
        tracing::warn!(device = %self.id, panel, reason, stopped = ?was, "e-stop: every output off");
        for c in &mut self.channels {
            c.stop();
        }
    }

    /// Replaces the faults with those of a (decoded and range-checked) fault message.
    fn on_fault(&mut self, m: SimFaultMessage, retained: bool) {
        // A retained fault would come back on every restart of the simulator, long after
        // whoever set it has moved on, and silently break a healthy run: refused.
        if retained {
            tracing::warn!(
                device = %self.id,
                "retained fault message ignored: publish faults without the retain flag"
            );
            self.rejected += 1;
            return;
        }
        // The topic named this device (decode checked the payload against it); a message for
        // another device can only come from a broker that routes wrongly.
        if m.device != self.id {
            self.rejected += 1;
            return;
        }
        let faults = Faults::from(m.faults);
        tracing::warn!(device = %self.id, seq = m.seq, ?faults, "faults injected over MQTT");
        self.faults.send_replace(faults);
    }

    async fn on_command(&mut self, cmd: DeviceCommand) {
        // An MQTT redelivery of a command already handled gets the same answer again and
        // changes nothing: applying a `set` twice would restart its lease.
        if let Some((_, ack)) = self.answered.iter().find(|(id, _)| *id == cmd.command_id) {
            let mut ack = ack.clone();
            let stamp = self.seq.next();
            ack.seq = stamp.seq;
            ack.ts_ms = stamp.ts_ms;
            self.send_ack(ack).await;
            return;
        }
        let now = Instant::now();
        let (outcome, reason, lease_id) = self.apply(&cmd, now);
        let stamp = self.seq.next();
        let ack = CommandAck {
            seq: stamp.seq,
            ts_ms: stamp.ts_ms,
            command_id: cmd.command_id.clone(),
            device: self.id.clone(),
            channel: cmd.channel.clone(),
            outcome,
            reason,
            lease_id,
        };
        if self.answered.len() >= REMEMBERED_COMMANDS {
            self.answered.pop_front();
        }
        self.answered.push_back((cmd.command_id, ack.clone()));
        // The state the ack reports is visible before the ack leaves: whoever reads the
        // simulator's state on receiving it (a test, `modalis sim`'s display) must not see the
        // channel as it was before the command. With TCP_NODELAY on the broker the ack could
        // arrive before the loop's own publish after this handler.
        self.publish_state(now);
        self.send_ack(ack).await;
    }

    fn apply(
        &mut self,
        cmd: &DeviceCommand,
        now: Instant,
    ) -> (AckOutcome, Option<String>, Option<u64>) {
        let faults = self.faults.borrow().clone();
        let max_lease = self.max_lease;
        let Some(ch) = self.channels.iter_mut().find(|c| c.name == cmd.channel) else {
            return (
                AckOutcome::Rejected,
                Some(format!(
                    "no channel {:?} on device {:?}",
                    cmd.channel, self.id
                )),
                None,
            );
        };
        let lease_ok = |l: &LeaseGrant| -> Result<Duration, String> {
            let d = Duration::from_millis(l.valid_for_ms);
            if d > max_lease {
                Err(format!(
                    "lease of {} ms is longer than the device accepts ({} ms)",
                    l.valid_for_ms,
                    max_lease.as_millis()
                ))
            } else {
                Ok(d)
            }
        };
        let held = |ch: &Channel| ch.lease.as_ref().map(|l| l.id);
        match &cmd.action {
            CommandAction::Set {
                setpoint: Setpoint::Off,
                ..
            }
            | CommandAction::Stop { .. } => {
                if faults.ignore_stop {
                    // The fault: claims to have stopped, keeps going.
                    return (AckOutcome::Accepted, None, held(ch));
                }
                ch.stop();
                (AckOutcome::Accepted, None, None)
            }
            CommandAction::Set { setpoint, lease } => {
                if let Some(why) = ch.refuses(setpoint) {
                    return (AckOutcome::Rejected, Some(why), held(ch));
                }
                let valid_for = match lease_ok(lease) {
                    Ok(d) => d,
                    Err(why) => return (AckOutcome::Rejected, Some(why), held(ch)),
                };
                ch.energised = true;
                ch.setpoint = *setpoint;
                ch.last_setpoint = Some(*setpoint);
                ch.lease = Some(Lease {
                    id: lease.id,
                    expires: now + valid_for,
                });
                (AckOutcome::Accepted, None, Some(lease.id))
            }
            CommandAction::RenewLease { lease } => {
                if !ch.energised {
                    return (
                        AckOutcome::Expired,
                        Some("the channel is not delivering; a renewal starts nothing".into()),
                        None,
                    );
                }
                let valid_for = match lease_ok(lease) {
                    Ok(d) => d,
                    Err(why) => return (AckOutcome::Rejected, Some(why), held(ch)),
                };
                ch.lease = Some(Lease {
                    id: lease.id,
                    expires: now + valid_for,
                });
                (AckOutcome::Accepted, None, Some(lease.id))
            }
        }
    }

    fn expire_leases(&mut self, now: Instant) {
        if self.faults.borrow().ignore_leases {
            return;
        }
        for c in &mut self.channels {
            if c.lease.as_ref().is_some_and(|l| l.expires <= now) {
                tracing::info!(device = %self.id, channel = %c.name, "lease lapsed: output stopped");
                c.stop();
            }
        }
    }

    /// Advances the physics by `dt`.
    fn step(&mut self, now: Instant, dt: Duration) {
        let faults = self.faults.borrow().clone();
        // The lease check runs here too, so that a lapse is never later than one tick even if
        // the lease timer and the tick race.
        if !faults.ignore_leases {
            self.expire_leases(now);
        }
        let drift = faults.power_drift.unwrap_or(1.0);
        let gain = faults.overheating_gain.unwrap_or(1.0);
        let dt_s = dt.as_secs_f64();
        for c in &mut self.channels {
            c.output = if c.energised {
                model::output(&c.spec, &c.setpoint, self.baseline_c, drift)
            } else {
                Output::default()
            };
            model::step_temperature(
                &mut c.site,
                c.output,
                self.baseline_c,
                gain,
                dt_s,
                self.tau_s,
            );
            if let ChannelSpec::Electrical(e) = &c.spec {
                match faults.electrode_lifting_ohm_per_s {
                    Some(rate) => {
                        let since = *c.lifting_since.get_or_insert(now);
                        let lifted = now.saturating_duration_since(since).as_secs_f64();
                        c.site.impedance_ohm = e.load_ohm + rate * lifted;
                    }
                    None => {
                        c.lifting_since = None;
                        c.site.impedance_ohm = e.load_ohm;
                    }
                }
            }
        }
    }

    async fn send_telemetry(&mut self) {
        if self.faults.borrow().silent || !self.bus.is_connected() {
            return;
        }
        let mut readings = Vec::new();
        for i in 0..self.channels.len() {
            let Some(c) = self.channels.get(i) else {
                continue;
            };
            let (temp, power, impedance) = c.sensors();
            let (skin, out_mw, ohm) = (c.site.skin_temp_c, c.output.power_mw, c.site.impedance_ohm);
            let (name, delivering, lease) =
                (c.name.clone(), c.energised, c.lease.as_ref().map(|l| l.id));
            if temp {
                let v = skin + 0.05 * self.rng.noise();
                readings.push((name.clone(), Measurement::SkinTempC(v), delivering, lease));
            }
            if power {
                let v = (out_mw * (1.0 + model::NOISE_FRACTION * self.rng.noise())).max(0.0);
                readings.push((
                    name.clone(),
                    Measurement::OpticalPowerMw(v),
                    delivering,
                    lease,
                ));
            }
            if impedance {
                let v = (ohm * (1.0 + 2.0 * model::NOISE_FRACTION * self.rng.noise())).max(0.0);
                readings.push((name, Measurement::ImpedanceOhm(v), delivering, lease));
            }
        }
        let Ok(topic) = self.bus.topics().device_telemetry(&self.id) else {
            return;
        };
        for (channel, measurement, delivering, lease_id) in readings {
            let stamp = self.seq.next();
            let msg = DeviceTelemetry {
                seq: stamp.seq,
                ts_ms: stamp.ts_ms,
                device: self.id.clone(),
                channel,
                measurement,
                delivering,
                lease_id,
            };
            match self
                .bus
                .publish_as(TopicKind::DeviceTelemetry, &topic, &msg)
                .await
            {
                Ok(()) => self.telemetry += 1,
                Err(e) => tracing::debug!(device = %self.id, error = %e, "telemetry not sent"),
            }
        }
    }

    async fn send_ack(&mut self, ack: CommandAck) {
        let Ok(topic) = self.bus.topics().device_ack(&self.id) else {
            return;
        };
        match self
            .bus
            .publish_as(TopicKind::DeviceAck, &topic, &ack)
            .await
        {
            Ok(()) => self.acks += 1,
            Err(e) => tracing::warn!(device = %self.id, error = %e, "ack not sent"),
        }
    }

    fn publish_state(&mut self, now: Instant) {
        let channels = self
            .channels
            .iter()
            .map(|c| ChannelState {
                name: c.name.clone(),
                kind: match c.spec {
                    ChannelSpec::Heat(_) => modalis_sdk::ChannelKind::Heat,
                    ChannelSpec::Optical(_) => modalis_sdk::ChannelKind::Optical,
                    ChannelSpec::Electrical(_) => modalis_sdk::ChannelKind::Electrical,
                },
                energised: c.energised,
                last_setpoint: c.last_setpoint,
                lease_id: c.lease.as_ref().map(|l| l.id),
                lease_remaining: c
                    .lease
                    .as_ref()
                    .map(|l| l.expires.saturating_duration_since(now)),
                skin_temp_c: c.site.skin_temp_c,
                output_power_mw: c.output.power_mw,
                impedance_ohm: c.site.impedance_ohm,
            })
            .collect();
        let (connected, commands, estops, acks, telemetry, rejected) = (
            self.connected,
            self.commands,
            self.estops,
            self.acks,
            self.telemetry,
            self.rejected,
        );
        self.state.send_modify(|s| {
            s.connected = connected;
            s.channels = channels;
            s.commands = commands;
            s.estops = estops;
            s.acks = acks;
            s.telemetry = telemetry;
            s.rejected = rejected;
        });
    }
}
