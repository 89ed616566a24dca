#![no_main]
//! Any text given as a protocol file: an error naming the file, line and field, or a protocol;
//! never a panic. The file is placed beside the example protocols, so the profile and patient
//! files it references by relative path are the real examples.
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let path =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/protocols/fuzz.toml");
        let _ = modalis::protocol::Protocol::from_toml_str(text, &path);
    }
});
