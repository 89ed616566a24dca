#![no_main]
//! Any text given as a patient context: an error naming the field, or a context; never a panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = modalis_governor::PatientContext::from_toml_str(text, "fuzz.toml");
    }
});
