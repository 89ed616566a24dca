//! Signed plugins through the binary a vendor and a clinic run (`modalis plugin keygen | sign |
//! verify`), and through the controller, which refuses what its trust store does not vouch
//! for before wasmtime sees a byte of it.

use std::path::Path;
use std::process::{Command, Output};

use tokio_util::sync::CancellationToken;

use modalis::controller::{Controller, ControllerConfig, PluginSource, PluginTrust};
use modalis::plugin::RuntimeConfig;
use modalis::plugin::signing::{TrustStore, TrustedKey};
use modalis_audit::{AuditReader, Event};

use crate::bus::{CONTROLLER_USER, TestBroker, topics};

fn modalis(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_modalis"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run modalis")
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn a_vendor_signs_and_a_clinic_verifies_and_tampering_or_a_stranger_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::copy(modalis_plugin_artifacts::TENS, d.join("tens.wasm")).expect("copy plugin");

    let o = modalis(
        d,
        &["plugin", "keygen", "--out", "vendor.key", "--name", "Acme"],
    );
    assert!(o.status.success(), "{}", out(&o));
    let printed = out(&o);
    let entry = &printed[printed.find("[[keys]]").expect("a trust store entry")..];
    std::fs::write(d.join("trust.toml"), entry).expect("trust store");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(d.join("vendor.key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the private key is readable by others: {mode:o}"
        );
    }
    // A second keygen never overwrites the first key.
    let o = modalis(d, &["plugin", "keygen", "--out", "vendor.key"]);
    assert!(!o.status.success());
    assert!(out(&o).contains("never overwritten"), "{}", out(&o));

    // Unsigned: refused, saying so.
    let o = modalis(
        d,
        &["plugin", "verify", "tens.wasm", "--trust", "trust.toml"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(out(&o).contains("unsigned"), "{}", out(&o));

    let o = modalis(
        d,
        &[
            "plugin",
            "sign",
            "tens.wasm",
            "--key",
            "vendor.key",
            "--signer",
            "Acme",
        ],
    );
    assert!(o.status.success(), "{}", out(&o));
    assert!(d.join("tens.wasm.sig").is_file());

    let o = modalis(
        d,
        &["plugin", "verify", "tens.wasm", "--trust", "trust.toml"],
    );
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        out(&o).contains("OK tens.wasm: signed by \"Acme\""),
        "{}",
        out(&o)
    );

    // A store without the vendor's key: untrusted, and told which key to add.
    let o = modalis(d, &["plugin", "verify", "tens.wasm", "--trust-dev-key"]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(out(&o).contains("not in the trust store"), "{}", out(&o));

    // One byte changed after signing: tampered.
    let mut bytes = std::fs::read(d.join("tens.wasm")).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(d.join("tens.wasm"), &bytes).expect("tamper");
    let o = modalis(
        d,
        &["plugin", "verify", "tens.wasm", "--trust", "trust.toml"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(out(&o).contains("tampered"), "{}", out(&o));

    // A trust store with a broken key names the entry and the field.
    std::fs::write(
        d.join("bad.toml"),
        "[[keys]]\nname = \"X\"\npublic_key = \"abcd\"\n",
    )
    .expect("bad store");
    let o = modalis(d, &["plugin", "verify", "tens.wasm", "--trust", "bad.toml"]);
    assert!(!o.status.success());
    assert!(
        out(&o).contains("bad.toml") && out(&o).contains("keys[0] (X): public_key"),
        "{}",
        out(&o)
    );
}

fn tens(signature: Option<Vec<u8>>, bytes: Vec<u8>) -> PluginSource {
    PluginSource {
        label: "tens.wasm".into(),
        bytes: bytes.into(),
        signature: signature.map(Into::into),
    }
}

async fn start(
    broker: &TestBroker,
    dir: &Path,
    plugin: PluginSource,
    trust: PluginTrust,
    cancel: &CancellationToken,
) -> Result<modalis::controller::ControllerHandle, modalis::controller::ControllerError> {
    let t = topics("ctl-sign");
    let mut cfg = ControllerConfig::new(
        t.controller(),
        broker.config("unused", &t, CONTROLLER_USER),
        dir.join("audit"),
        RuntimeConfig::for_tests(&dir.join("cache")),
        vec![plugin],
    );
    cfg.plugin_trust = trust;
    Controller::start(cfg, cancel.clone()).await
}

fn alarm_codes(dir: &Path) -> Vec<String> {
    let r = AuditReader::open(&dir.join("audit")).expect("audit log opens");
    r.records()
        .filter_map(|x| match x.expect("record reads").event {
            Event::Alarm { code, .. } => Some(code),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_refuses_unsigned_tampered_and_untrusted_plugins_and_audits_it() {
    let broker = TestBroker::embedded().await;
    let a = modalis_plugin_artifacts::FIRST_PARTY
        .iter()
        .find(|a| a.package == "modalis-plugin-tens")
        .expect("bundled TENS");
    let signed = a.signature.as_bytes().to_vec();
    let mut tampered = a.bytes.to_vec();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let stranger = {
        let mut s = TrustStore::new();
        s.add(TrustedKey {
            name: "someone else".into(),
            key: ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key(),
            development: false,
        });
        PluginTrust {
            store: s,
            allow_unsigned: false,
        }
    };
    let dev = || PluginTrust::development().expect("dev key");
    for (what, plugin, trust, expect) in [
        ("unsigned", tens(None, a.bytes.to_vec()), dev(), "unsigned"),
        (
            "tampered",
            tens(Some(signed.clone()), tampered),
            dev(),
            "tampered",
        ),
        (
            "untrusted",
            tens(Some(signed.clone()), a.bytes.to_vec()),
            stranger,
            "not in the trust store",
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = start(
            &broker,
            dir.path(),
            plugin,
            trust,
            &CancellationToken::new(),
        )
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("tens.wasm") && e.contains(expect), "{what}: {e}");
        assert!(
            alarm_codes(dir.path())
                .iter()
                .any(|c| c == "plugin.untrusted"),
            "{what}: not audited"
        );
    }
    // The development flag loads it anyway, and says so in the log.
    let dir = tempfile::tempdir().expect("tempdir");
    let cancel = CancellationToken::new();
    let ctl = start(
        &broker,
        dir.path(),
        tens(None, a.bytes.to_vec()),
        PluginTrust {
            store: TrustStore::new(),
            allow_unsigned: true,
        },
        &cancel,
    )
    .await
    .expect("starts with --allow-unsigned-plugins");
    cancel.cancel();
    ctl.join().await.expect("stops");
    assert!(
        alarm_codes(dir.path())
            .iter()
            .any(|c| c == "plugin.trust_relaxed")
    );
}
