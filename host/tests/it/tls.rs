//! MQTT over TLS on a real mosquitto with certificates made for the test (rcgen): the
//! controller's bus connects when the broker's certificate chains to the CA it was given,
//! presents a client certificate when the broker demands one, and refuses a broker signed by
//! another CA. Wrong or missing certificate files are start-up errors naming the file.

use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use tokio_util::sync::CancellationToken;

use modalis::bus::{Bus, BusConfig, BusEvent, TlsFiles};

use crate::bus::{WAIT, topics};

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A CA, a broker certificate for 127.0.0.1 and a client certificate, as PEM files; plus a
/// second, unrelated CA.
fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("pem written");
        // mosquitto started as root drops to the `mosquitto` user: it must read them.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    };
    let ca = |name: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        CertifiedIssuer::self_signed(params, key).expect("ca")
    };
    let clinic = ca("clinic test CA");
    write("ca.crt", clinic.pem());
    write("other-ca.crt", ca("some other CA").pem());
    let leaf = |san: &str, usage: ExtendedKeyUsagePurpose, stem: &str| {
        let mut params = CertificateParams::new(vec![san.to_string()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, san);
        params.extended_key_usages.push(usage);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &clinic).expect("signed");
        write(&format!("{stem}.crt"), cert.pem());
        write(&format!("{stem}.key"), key.serialize_pem());
    };
    leaf("127.0.0.1", ExtendedKeyUsagePurpose::ServerAuth, "broker");
    leaf("controller", ExtendedKeyUsagePurpose::ClientAuth, "client");
    let _ = std::fs::set_permissions(dir.path(), {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::Permissions::from_mode(0o755)
    });
    Pki { dir }
}

struct TlsMosquitto {
    child: Child,
    /// Server authentication only.
    port: u16,
    /// Clients must present a certificate from the CA.
    mutual_port: u16,
}

impl Drop for TlsMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    modalis::broker::free_port().expect("a free port").port()
}

fn mosquitto(pki: &Pki) -> TlsMosquitto {
    let (port, mutual_port) = (free_port(), free_port());
    let tls = |p: &Path| p.display().to_string();
    let conf = format!(
        "per_listener_settings false\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n\
         log_dest stderr\nlog_type error\n\
         listener {port} 127.0.0.1\ncafile {ca}\ncertfile {crt}\nkeyfile {key}\n\
         listener {mutual_port} 127.0.0.1\ncafile {ca}\ncertfile {crt}\nkeyfile {key}\n\
         require_certificate true\n",
        ca = tls(&pki.path("ca.crt")),
        crt = tls(&pki.path("broker.crt")),
        key = tls(&pki.path("broker.key")),
    );
    let conf_path = pki.path("mosquitto.conf");
    std::fs::write(&conf_path, conf).expect("conf");
    let bin = if Path::new("/usr/sbin/mosquitto").exists() {
        PathBuf::from("/usr/sbin/mosquitto")
    } else {
        PathBuf::from("mosquitto")
    };
    let mut child = Command::new(bin)
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("mosquitto starts (apt-get install mosquitto; .ci/run does)");
    let deadline = std::time::Instant::now() + WAIT;
    for p in [port, mutual_port] {
        while TcpStream::connect((Ipv4Addr::LOCALHOST, p)).is_err() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("mosquitto did not listen on 127.0.0.1:{p}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    TlsMosquitto {
        child,
        port,
        mutual_port,
    }
}

fn config(port: u16, tls: Option<TlsFiles>, id: &str) -> BusConfig {
    let mut c = BusConfig::new(&format!("mqtts://127.0.0.1:{port}"), id, topics("ctl-tls"))
        .expect("valid url");
    c.tls = tls;
    c
}

fn ca_only(pki: &Pki, ca: &str) -> Option<TlsFiles> {
    Some(TlsFiles {
        ca_file: pki.path(ca),
        client_cert: None,
        client_key: None,
    })
}

/// The first connection outcome: `Ok(())` on a ConnAck, `Err(why)` on a failure.
async fn first_outcome(bus: &mut Bus) -> Result<(), String> {
    let ev = tokio::time::timeout(WAIT, async {
        while let Some(ev) = bus.inbox.recv().await {
            match ev {
                BusEvent::Connected { .. } => return Some(Ok(())),
                BusEvent::Disconnected { error, .. } => return Some(Err(error)),
                _ => {}
            }
        }
        None
    })
    .await;
    match ev {
        Ok(Some(r)) => r,
        _ => Err("no connection outcome within the wait".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_speaks_tls_to_a_broker_its_ca_signed_and_refuses_any_other() {
    let pki = pki();
    let broker = mosquitto(&pki);
    let cancel = CancellationToken::new();

    let mut ok = Bus::start(
        config(broker.port, ca_only(&pki, "ca.crt"), "tls-ok"),
        cancel.clone(),
    )
    .expect("starts");
    first_outcome(&mut ok)
        .await
        .expect("TLS with the clinic's CA connects");

    let mut stranger = Bus::start(
        config(broker.port, ca_only(&pki, "other-ca.crt"), "tls-stranger"),
        cancel.clone(),
    )
    .expect("starts");
    let why = first_outcome(&mut stranger)
        .await
        .expect_err("a broker another CA signed is refused");
    assert!(why.to_lowercase().contains("certificate"), "{why}");

    // The mutual-TLS listener turns away a client without a certificate, and takes one with.
    let mut anonymous = Bus::start(
        config(broker.mutual_port, ca_only(&pki, "ca.crt"), "tls-anon"),
        cancel.clone(),
    )
    .expect("starts");
    assert!(first_outcome(&mut anonymous).await.is_err());
    let mut mutual = Bus::start(
        config(
            broker.mutual_port,
            Some(TlsFiles {
                ca_file: pki.path("ca.crt"),
                client_cert: Some(pki.path("client.crt")),
                client_key: Some(pki.path("client.key")),
            }),
            "tls-mutual",
        ),
        cancel.clone(),
    )
    .expect("starts");
    first_outcome(&mut mutual)
        .await
        .expect("a client certificate from the CA is accepted");
    cancel.cancel();
}

#[tokio::test]
async fn certificate_mistakes_are_start_up_errors_naming_the_file() {
    let pki = pki();
    let cancel = CancellationToken::new();
    let err = |c: BusConfig| match Bus::start(c, cancel.clone()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("started"),
    };
    // mqtts without a CA, and certificates for a plain broker.
    let e = err(config(8883, None, "x"));
    assert!(e.contains("--ca-file"), "{e}");
    let mut plain = BusConfig::new("mqtt://127.0.0.1:1883", "x", topics("ctl-tls")).expect("url");
    plain.tls = ca_only(&pki, "ca.crt");
    let e = err(plain);
    assert!(e.contains("use mqtts://"), "{e}");
    // A missing CA file, and a key file that is not a key.
    let e = err(config(8883, ca_only(&pki, "missing.crt"), "x"));
    assert!(e.contains("missing.crt"), "{e}");
    let e = err(config(
        8883,
        Some(TlsFiles {
            ca_file: pki.path("ca.crt"),
            client_cert: Some(pki.path("client.crt")),
            client_key: Some(pki.path("ca.crt")),
        }),
        "x",
    ));
    assert!(e.contains("client_key") && e.contains("ca.crt"), "{e}");
}
