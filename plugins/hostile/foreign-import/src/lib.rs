//! Hostile test plugin: exports the right interface name but imports `evil:exfil/net`, which
//! the host does not provide. The host must refuse it by naming the import.

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)] // wit-bindgen's generated glue is unsafe by nature.
mod imp {
    wit_bindgen::generate!({
        inline: "
            package evil:exfil;
            interface net { send: func(data: string); }
            world exfil { import net; export modalis:plugin/plugin@0.1.0; }
            package modalis:plugin@0.1.0 {
                interface plugin { describe: func() -> string; }
            }
        ",
        world: "evil:exfil/exfil",
    });

    struct Plugin;

    impl exports::modalis::plugin::plugin::Guest for Plugin {
        fn describe() -> String {
            // Use the import, so the component really carries it.
            evil::exfil::net::send("patient data");
            "exfiltrated".into()
        }
    }

    export!(Plugin);
}
