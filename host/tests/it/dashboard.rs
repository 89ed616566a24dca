//! The monitoring dashboard (`examples/dashboard/`) in a real browser: headless Chromium
//! (Debian's `chromium`) driven by playwright-core from npm, against `modalis run --simulate
//! --dashboard` on a real mosquitto with a WebSockets listener and the example clinic ACL.
//! The browser side is `examples/dashboard/test/dashboard.test.mjs`; this test starts
//! everything it needs and fails with the script's output and a screenshot.
//!
//! Without node or chromium on the machine it says so and passes, except under CI (`CI` set),
//! where it fails: `.ci/run` installs both.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::bus::{CONTROLLER_USER, DASHBOARD_USER, Mosquitto};

const PANEL_USER: (&str, &str) = ("panel", "panel-secret");
const CHROMIUM: &str = "/usr/bin/chromium";

fn dashboard_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/dashboard")
}

fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Kills the controller if the test ends early.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads `modalis run`'s output up to the page's address (printed before the session
/// starts); returns it, and the output so far and to come, kept for a failure's message.
fn page_address(
    stdout: std::process::ChildStdout,
) -> (String, (mpsc::Receiver<String>, Vec<String>)) {
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(90))
            .unwrap_or_else(|e| {
                panic!(
                    "no dashboard address from modalis run ({e}):\n{}",
                    seen.join("\n")
                )
            });
        if let Some(rest) = line.trim_start().strip_prefix("dashboard") {
            let url = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            assert!(url.starts_with("http://127.0.0.1:"), "{url}");
            return (url, (rx, seen));
        }
        seen.push(line);
    }
}

/// `modalis run` of the example protocol on simulated devices, as the controller user.
fn controller_cmd(broker: &Mosquitto, tmp: &Path, controller: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modalis"));
    cmd.args([
        "run",
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/protocols/dpn-combined.toml")
            .display()
            .to_string(),
        "--broker",
        &broker.url(),
        "--username",
        CONTROLLER_USER.0,
        "--operator",
        "browser-test",
        "--yes",
        "--simulate",
        "--trust-dev-key",
        "--controller",
        controller,
        "--audit-dir",
        &tmp.join(controller).join("audit").display().to_string(),
    ])
    .env("MODALIS_MQTT_PASSWORD", CONTROLLER_USER.1)
    .env("MODALIS_CACHE_DIR", tmp.join("cache"))
    .stdin(Stdio::null())
    .stderr(Stdio::null());
    cmd
}

/// The dashboard directory with its npm packages installed, or `None` (after saying why)
/// when node or chromium is missing outside CI.
fn browser_ready() -> Option<PathBuf> {
    let missing: Vec<&str> = [
        ("node", have("node")),
        (CHROMIUM, Path::new(CHROMIUM).exists()),
    ]
    .into_iter()
    .filter(|(_, ok)| !ok)
    .map(|(what, _)| what)
    .collect();
    if !missing.is_empty() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the browser test, but {missing:?} is missing (.ci/run installs nodejs and chromium)"
        );
        eprintln!(
            "SKIPPED: the dashboard browser test needs {missing:?} (apt-get install nodejs npm chromium)"
        );
        return None;
    }
    let dir = dashboard_dir();
    // One `npm ci` at a time: the browser tests run in parallel.
    static NPM: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = NPM
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !dir.join("node_modules/playwright-core").exists() {
        let status = Command::new("npm")
            .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm runs");
        assert!(status.success(), "npm ci in examples/dashboard failed");
    }

    Some(dir)
}

#[test]
fn the_dashboard_shows_a_live_session_alarms_and_stops_everything_in_a_real_browser() {
    let Some(dir) = browser_ready() else {
        return;
    };
    let _heavy = crate::HEAVY.blocking_write();

    let acl = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mosquitto/acl"),
    )
    .expect("the example ACL");
    let broker =
        Mosquitto::start_with_websockets(&acl, &[CONTROLLER_USER, DASHBOARD_USER, PANEL_USER]);
    let ws_port = broker.ws_port.expect("a websockets listener");
    let tmp = tempfile::tempdir().expect("tempdir");
    let controller = "dash-test";

    let ws = format!("ws://127.0.0.1:{ws_port}");
    let dashboard = |cmd: &mut Command| {
        cmd.args([
            "--dashboard",
            "--dashboard-port",
            "0",
            "--dashboard-ws",
            &ws,
        ])
        .stdout(Stdio::piped());
    };
    let mut cmd = controller_cmd(&broker, tmp.path(), controller);
    cmd.args(["--speed", "20"]);
    dashboard(&mut cmd);
    let mut child = cmd.spawn().expect("modalis run starts");
    // A second controller, for the last will: the first one ends by itself once its session
    // is e-stopped (and then says "offline" itself), so a page watches this one die instead.
    // It serves its own page: the first one's server ends with it.
    let doomed = "dash-test-killed";
    let mut cmd = controller_cmd(&broker, tmp.path(), doomed);
    dashboard(&mut cmd);
    let mut killed = cmd.spawn().expect("modalis run starts");
    let doomed_pid = killed.id();
    // Its output is kept (and dropped at the end): a reader that stopped would block it.
    let (doomed_url, _doomed_out) = page_address(killed.stdout.take().expect("stdout"));
    let _doomed = Killed(killed);
    let pid = child.id();
    let (url, (rx, seen)) = page_address(child.stdout.take().expect("stdout"));
    let _controller = Killed(child);

    let screenshot = artifacts().join("dashboard-mid-session.png");
    let out = Command::new("node")
        .arg("test/dashboard.test.mjs")
        .current_dir(&dir)
        .env(
            "DASHBOARD_URL",
            format!("{url}?username={}&password={}", PANEL_USER.0, PANEL_USER.1),
        )
        .env("MQTT_URL", broker.url())
        .env("MQTT_USER", CONTROLLER_USER.0)
        .env("MQTT_PASSWORD", CONTROLLER_USER.1)
        .env("VIEWER_USER", DASHBOARD_USER.0)
        .env("VIEWER_PASSWORD", DASHBOARD_USER.1)
        .env("CONTROLLER", controller)
        .env("CONTROLLER_PID", pid.to_string())
        .env("DOOMED", doomed)
        .env(
            "DOOMED_URL",
            format!(
                "{doomed_url}?username={}&password={}",
                DASHBOARD_USER.0, DASHBOARD_USER.1
            ),
        )
        .env("DOOMED_PID", doomed_pid.to_string())
        .env("SCREENSHOT", &screenshot)
        .env("CHROMIUM", CHROMIUM)
        .output()
        .expect("node runs");
    browser_passed(&out, "modalis run", &rx, &seen);
    assert!(
        screenshot.exists(),
        "no screenshot at {}",
        screenshot.display()
    );
    println!(
        "screenshot of the page mid-session: {}",
        screenshot.display()
    );
}

#[test]
fn the_dashboard_works_over_the_embedded_brokers_websockets_listener() {
    let Some(dir) = browser_ready() else {
        return;
    };
    let _heavy = crate::HEAVY.blocking_write();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_modalis"))
        .args(["demo", "--speed", "20", "--port", "0"])
        .args(["--dashboard", "--dashboard-port", "0"])
        .arg("--audit-dir")
        .arg(tmp.path().join("audit"))
        .env("MODALIS_CACHE_DIR", tmp.path().join("cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("modalis demo starts");
    let (url, (rx, seen)) = page_address(child.stdout.take().expect("stdout"));
    let _demo = Killed(child);
    let screenshot = artifacts().join("dashboard-embedded-failure.png");
    let out = Command::new("node")
        .arg("test/embedded.test.mjs")
        .current_dir(&dir)
        .env("DASHBOARD_URL", &url)
        .env("SCREENSHOT", &screenshot)
        .env("CHROMIUM", CHROMIUM)
        .output()
        .expect("node runs");
    browser_passed(&out, "modalis demo", &rx, &seen);
}

/// Fails with the browser script's output and what `modalis` printed (so far and since),
/// unless the script passed; prints its output otherwise.
fn browser_passed(
    out: &std::process::Output,
    who: &str,
    rx: &mpsc::Receiver<String>,
    seen: &[String],
) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(
        out.status.success(),
        "the browser test failed:\n{text}\n--- {who} said:\n{}\n{}",
        seen.join("\n"),
        rest.join("\n")
    );
    println!("{text}");
}

/// `target/ci-artifacts/`, where CI keeps screenshots.
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
        .join("ci-artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts directory");
    dir
}
