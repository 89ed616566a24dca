//! What checking inbound MQTT payloads against their JSON Schema costs per message:
//! `cargo bench -p modalis --bench decode`.
//!
//! For each payload, the time of [`modalis::bus::payload::decode`] (parse to a JSON value,
//! check against the topic's compiled validator, deserialise, check against the topic) is
//! printed against a floor measured in the same run: serde alone reading the same bytes into
//! the same type, which is what decoding did before the schema check. The ratio is the price
//! of the check; the absolute numbers say whether it matters next to the broker round trip
//! (hundreds of microseconds) and the telemetry rate (a few messages per second per channel).
//!
//! The first decode of each kind compiles its validator (once per process); it is timed
//! separately and kept out of the medians.

use std::hint::black_box;
use std::time::{Duration, Instant};

use modalis::bus::payload::{
    self, CommandAction, DeviceCommand, DeviceTelemetry, LeaseGrant, SessionStatus, StepRef,
};
use modalis::bus::topics::Topics;
use modalis_sdk::{HeatSetpoint, Measurement, Setpoint};

/// Messages per timed batch, and batches per measurement (the median batch is quoted).
const BATCH: usize = 2_000;
const BATCHES: usize = 15;

fn per_message(mut f: impl FnMut()) -> Duration {
    let mut batches: Vec<Duration> = (0..BATCHES)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..BATCH {
                f();
            }
            start.elapsed() / u32::try_from(BATCH).unwrap_or(u32::MAX)
        })
        .collect();
    batches.sort_unstable();
    batches[BATCHES / 2]
}

fn row<T: serde::de::DeserializeOwned>(topics: &Topics, name: &str, topic: &str, bytes: &[u8]) {
    let first = Instant::now();
    payload::decode(topics, topic, bytes).expect("the sample is valid");
    let first = first.elapsed();
    let floor = per_message(|| {
        let mut de = serde_json::Deserializer::from_slice(black_box(bytes));
        let v: T = serde_path_to_error::deserialize(&mut de).expect("valid");
        black_box(v);
    });
    let checked = per_message(|| {
        black_box(payload::decode(topics, black_box(topic), black_box(bytes)).expect("valid"));
    });
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{name:<16} {:>5} B  serde only {:>7.2} us  with schema check {:>7.2} us  ratio {:>5.2}  (first decode, compiling the validator: {:>8.1} us)",
        bytes.len(),
        us(floor),
        us(checked),
        checked.as_secs_f64() / floor.as_secs_f64().max(1e-12),
        us(first),
    );
}

fn main() {
    let topics = Topics::new("bench").expect("valid id");
    let telemetry = DeviceTelemetry {
        seq: 123_456,
        ts_ms: 1_763_800_000_000,
        device: "mire-pads".into(),
        channel: "pad-1".into(),
        measurement: Measurement::SkinTempC(36.72),
        delivering: true,
        lease_id: Some(42),
    };
    let command = DeviceCommand {
        seq: 77,
        ts_ms: 1_763_800_000_000,
        command_id: "bench-77".into(),
        device: "mire-pads".into(),
        channel: "pad-1".into(),
        session: Some("s-1".into()),
        step: Some(StepRef {
            block: "heat".into(),
            step_index: 3,
        }),
        action: CommandAction::Set {
            setpoint: Setpoint::Heat(HeatSetpoint {
                target_temp_c: 40.0,
                power_limit_w: 10.0,
            }),
            lease: LeaseGrant {
                id: 9,
                valid_for_ms: 2_000,
            },
        },
    };
    let status = SessionStatus {
        seq: 5,
        ts_ms: 1_763_800_000_000,
        session: "s-1".into(),
        state: payload::SessionState::Running,
        block: Some("heat".into()),
        progress_percent: 12.5,
        elapsed_ms: 60_000,
        total_ms: 480_000,
        next_step: None,
    };
    println!("per message, median of {BATCHES} batches of {BATCH}");
    row::<DeviceTelemetry>(
        &topics,
        "telemetry",
        &topics.device_telemetry("mire-pads").expect("valid"),
        &payload::encode(&telemetry).expect("encodes"),
    );
    row::<DeviceCommand>(
        &topics,
        "command",
        &topics.device_command("mire-pads").expect("valid"),
        &payload::encode(&command).expect("encodes"),
    );
    row::<SessionStatus>(
        &topics,
        "session status",
        &topics.session_status("s-1").expect("valid"),
        &payload::encode(&status).expect("encodes"),
    );
}
