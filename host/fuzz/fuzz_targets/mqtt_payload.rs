#![no_main]
//! Any bytes on any of the controller's topics: a typed message or a rejection naming the
//! topic and the JSON pointer; never a panic. The first byte picks the topic.
use libfuzzer_sys::fuzz_target;
use modalis::bus::topics::Topics;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let Ok(t) = Topics::new("fuzz") else { return };
    let topic = match pick % 9 {
        0 => t.state(),
        1 => t.alarm(),
        2 => t.estop(),
        3 => t.session_status("s-1").unwrap_or_default(),
        4 => t.dose_report("s-1").unwrap_or_default(),
        5 => t.device_command("pads").unwrap_or_default(),
        6 => t.device_ack("pads").unwrap_or_default(),
        7 => t.device_telemetry("pads").unwrap_or_default(),
        _ => t.sim_fault("pads").unwrap_or_default(),
    };
    let _ = modalis::bus::payload::decode(&t, &topic, payload);
});
