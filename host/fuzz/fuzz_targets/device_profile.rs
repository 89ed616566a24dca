#![no_main]
//! Any text given as a device profile: an error or a profile, never a panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = modalis_governor::DeviceProfile::from_toml_str(text, "fuzz.toml");
    }
});
