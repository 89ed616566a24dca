//! The example mosquitto ACL (`examples/mosquitto/acl`) on a real mosquitto: only the
//! controller commands devices, a device speaks only for itself, dashboards only read, and
//! panels may press the e-stop. Each refusal is shown twice: the publisher hears "not
//! authorized" (MQTT v5 reason code 135), and the would-be receiver never gets the message,
//! while the allowed message on the same path does arrive.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use modalis::bus::payload::{CommandAction, DeviceCommand, Inbound};
use modalis::bus::{Bus, BusEvent, Inbox, Qos};

use crate::bus::{Mosquitto, TestBroker, WAIT, recv_until, topics};

const CONTROLLER: (&str, &str) = ("controller", "controller-pw");
const DASHBOARD: (&str, &str) = ("dashboard", "dashboard-pw");
const PANEL: (&str, &str) = ("panel", "panel-pw");
const TENS: (&str, &str) = ("tens-2ch", "tens-pw");
const PADS: (&str, &str) = ("mire-pads", "pads-pw");

fn example_acl() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mosquitto/acl");
    std::fs::read_to_string(&path).expect("examples/mosquitto/acl")
}

/// Waits a while and returns the first message `pick` accepts, if any arrives.
async fn maybe<T>(
    inbox: &mut Inbox,
    within: Duration,
    mut pick: impl FnMut(BusEvent) -> Option<T>,
) -> Option<T> {
    tokio::time::timeout(within, async {
        while let Some(ev) = inbox.recv().await {
            if let Some(t) = pick(ev) {
                return Some(t);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

fn refused(ev: BusEvent) -> Option<String> {
    match ev {
        BusEvent::PublishRefused { reason } => Some(reason),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_acl_lets_only_the_controller_command_and_devices_speak_for_themselves() {
    let broker = TestBroker::Mosquitto(Mosquitto::start_with(
        &example_acl(),
        &[CONTROLLER, DASHBOARD, PANEL, TENS, PADS],
    ));
    let t = topics("clinic-1");
    let cancel = CancellationToken::new();
    let start = |id: &str, user: (&str, &str), subs: Vec<String>| {
        let mut c = broker.config(id, &t, user);
        c.subscriptions = subs.into_iter().map(|f| (f, Qos::AtLeastOnce)).collect();
        Bus::start(c, cancel.clone()).expect("bus starts")
    };
    let mut ctl = start("ctl", CONTROLLER, t.controller_filters());
    let mut tens = start("dev-tens", TENS, t.device_filters("tens-2ch").expect("id"));
    let mut dash = start("dash", DASHBOARD, vec![t.all_filter()]);
    let mut panel = start("panel", PANEL, vec![]);
    let mut pads = start("dev-pads", PADS, vec![]);
    for b in [&ctl, &tens, &dash, &panel, &pads] {
        b.handle.wait_connected(WAIT).await.expect("connects");
    }
    let command = t.device_command("tens-2ch").expect("topic");
    let stop = |id: &str| DeviceCommand {
        seq: 1,
        ts_ms: modalis::bus::payload::wall_clock_ms(),
        command_id: id.to_string(),
        device: "tens-2ch".into(),
        channel: "ch1".into(),
        session: None,
        step: None,
        action: CommandAction::Stop {
            reason: "acl test".into(),
        },
    };

    // A dashboard's command is refused and never reaches the device...
    dash.handle
        .publish(&command, &stop("from-dashboard"), Qos::AtLeastOnce, false)
        .await
        .expect("queued");
    let why = recv_until(&mut dash.inbox, "the dashboard's refusal", refused).await;
    assert!(why.contains("NotAuthorized"), "{why}");
    // ...while the controller's, sent after it, is the first the device gets.
    ctl.handle
        .publish(&command, &stop("from-controller"), Qos::AtLeastOnce, false)
        .await
        .expect("queued");
    let first = recv_until(&mut tens.inbox, "a command at the device", |ev| match ev {
        BusEvent::Message {
            message: Inbound::Command(c),
            ..
        } => Some(c.command_id),
        _ => None,
    })
    .await;
    assert_eq!(
        first, "from-controller",
        "the dashboard's command reached the device"
    );

    // A device publishing another device's telemetry is refused; its own goes through.
    let theirs = t.device_telemetry("mire-pads").expect("topic");
    let own = t.device_telemetry("tens-2ch").expect("topic");
    let reading = |device: &str| {
        serde_json::json!({"seq": 1, "ts_ms": modalis::bus::payload::wall_clock_ms(),
            "device": device, "channel": "ch1",
            "measurement": {"kind": "impedance_ohm", "value": 500.0},
            "delivering": false, "lease_id": null})
    };
    tens.handle
        .publish(&theirs, &reading("mire-pads"), Qos::AtLeastOnce, false)
        .await
        .expect("queued");
    let why = recv_until(&mut tens.inbox, "the spoofed telemetry's refusal", refused).await;
    assert!(why.contains("NotAuthorized"), "{why}");
    tens.handle
        .publish(&own, &reading("tens-2ch"), Qos::AtLeastOnce, false)
        .await
        .expect("queued");
    let first = recv_until(
        &mut ctl.inbox,
        "telemetry at the controller",
        |ev| match ev {
            BusEvent::Message {
                message: Inbound::Telemetry(x),
                ..
            } => Some(x.device),
            _ => None,
        },
    )
    .await;
    assert_eq!(
        first, "tens-2ch",
        "the spoofed reading reached the controller"
    );
    // The pads' own user may publish its telemetry (the pattern is per user, not per device
    // kind), and nothing else about mire-pads arrives.
    pads.handle
        .publish(&theirs, &reading("mire-pads"), Qos::AtLeastOnce, false)
        .await
        .expect("queued");
    assert!(
        maybe(&mut pads.inbox, Duration::from_millis(500), refused)
            .await
            .is_none(),
        "mire-pads may publish its own telemetry"
    );

    // The e-stop: a panel may press it, a dashboard may not.
    let estop = |reason: &str| {
        serde_json::json!({"seq": 1, "ts_ms": modalis::bus::payload::wall_clock_ms(),
            "panel": "panel-1", "reason": reason})
    };
    dash.handle
        .publish(
            &t.estop(),
            &estop("from-dashboard"),
            Qos::AtLeastOnce,
            false,
        )
        .await
        .expect("queued");
    let why = recv_until(&mut dash.inbox, "the dashboard's e-stop refusal", refused).await;
    assert!(why.contains("NotAuthorized"), "{why}");
    panel
        .handle
        .publish(&t.estop(), &estop("from-panel"), Qos::AtLeastOnce, false)
        .await
        .expect("queued");
    assert!(
        maybe(&mut panel.inbox, Duration::from_millis(500), refused)
            .await
            .is_none(),
        "the panel's e-stop was refused"
    );
    let source = recv_until(&mut ctl.inbox, "the panel's e-stop", |ev| match ev {
        BusEvent::Message {
            message: Inbound::Estop(e),
            ..
        } => Some(e.panel),
        _ => None,
    })
    .await;
    assert_eq!(source, "panel-1");
    // Every device reads the e-stop too (it stops on it by itself), and the first it gets is
    // the panel's: the dashboard's never reached it.
    let at_device = recv_until(
        &mut tens.inbox,
        "the panel's e-stop at a device",
        |ev| match ev {
            BusEvent::Message {
                message: Inbound::Estop(e),
                ..
            } => Some(e.reason),
            _ => None,
        },
    )
    .await;
    assert_eq!(at_device, "from-panel");
    cancel.cancel();
}
