//! Hostile test plugin: built against contract `modalis:plugin@0.0.9`, which this host does not
//! speak. The host must refuse it by naming both versions.

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)] // wit-bindgen's generated glue is unsafe by nature.
mod imp {
    wit_bindgen::generate!({
        inline: "
            package modalis:plugin@0.0.9;
            interface plugin { describe: func() -> string; }
            world modality-plugin { export plugin; }
        ",
    });

    struct Plugin;

    impl exports::modalis::plugin::plugin::Guest for Plugin {
        fn describe() -> String {
            "a plugin for another contract".into()
        }
    }

    export!(Plugin);
}
