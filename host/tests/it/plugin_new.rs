//! `modalis plugin new`, the way a vendor uses it: the real binary scaffolds a crate in a
//! temporary directory outside the repository; `cargo test` runs its native unit tests; `cargo
//! build --release --target wasm32-wasip2` builds the component; `modalis plugin check` passes
//! it; and the governor's pre-check accepts its sample plan with the example device profile for
//! its modality and the example patient.
//!
//! The scaffolds' builds share one target directory inside the workspace's
//! (`target/plugin-new-test`), so the SDK and its dependencies are compiled once per machine,
//! not once per scaffold or per run. They run `--offline` with the lock file the scaffold seeds
//! from the workspace's `Cargo.lock`: every crate they need was fetched by the outer build, so
//! the test needs no network. Timings go to stderr (`--nocapture` shows them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use modalis::plugin::{PluginRuntime, RuntimeConfig};
use modalis_governor::{Block, DeviceProfile, Governor, PatientContext, Verdict};
use modalis_sdk::ModalityKind;

fn modalis_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_modalis"))
        .current_dir(cwd)
        .args(args)
        .output()
        .expect("run modalis")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The workspace's target directory: the binary under test is `<target>/<profile>/modalis`.
fn workspace_target() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_modalis"))
        .ancestors()
        .nth(2)
        .expect("the modalis binary sits in <target>/<profile>/")
        .to_path_buf()
}

/// The target directory every scaffold builds into.
fn scaffold_target() -> PathBuf {
    workspace_target().join("plugin-new-test")
}

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// Runs cargo in the scaffold with the shared target directory and without the outer build's
/// flags, which are not the vendor's.
fn cargo(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(dir)
        .args(args)
        // One job: the test binary's other tests (real brokers, timing bounds) keep a core.
        .args(["--offline", "--jobs", "1"])
        .env("CARGO_TARGET_DIR", scaffold_target())
        .env("CARGO_TERM_COLOR", "never");
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    cmd.output().expect("run cargo")
}

#[test]
fn every_modality_scaffolds_tests_builds_passes_check_and_precheck() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    let cache = cache.display().to_string();
    let rt = PluginRuntime::new(RuntimeConfig::for_tests(&tmp.path().join("rt-cache")))
        .expect("runtime starts");
    let patient = PatientContext::from_toml_str(
        &std::fs::read_to_string(repo("examples/patients/dpn-example.toml")).expect("patient"),
        "dpn-example.toml",
    )
    .expect("example patient");
    let started = Instant::now();
    let mut timings = Vec::new();

    for (i, modality) in ModalityKind::ALL.into_iter().enumerate() {
        let name = format!("acme-{}", modality.as_str());
        let t0 = Instant::now();
        // The first scaffold goes to the default directory (./<name>) with the default SDK; the
        // others name both, as a vendor outside a checkout would.
        let out = if i == 0 {
            modalis_in(
                tmp.path(),
                &["plugin", "new", &name, "--modality", modality.as_str()],
            )
        } else {
            let dir = tmp.path().join("vendor").join(&name);
            let sdk = repo("sdk");
            modalis_in(
                tmp.path(),
                &[
                    "plugin",
                    "new",
                    &name,
                    "--modality",
                    modality.as_str(),
                    "--dir",
                    &dir.display().to_string(),
                    "--sdk",
                    &sdk.display().to_string(),
                ],
            )
        };
        assert!(out.status.success(), "{modality}: {}", text(&out));
        let dir = if i == 0 {
            tmp.path().join(&name)
        } else {
            tmp.path().join("vendor").join(&name)
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let sdk = repo("sdk").canonicalize().expect("sdk");
        assert!(
            stdout.contains(&format!("modalis SDK: {}", sdk.display())),
            "{stdout}"
        );
        assert!(
            !stdout.contains("inside the modalis source tree"),
            "a temporary directory is outside it:\n{stdout}"
        );
        let wasm_rel = format!(
            "target/wasm32-wasip2/release/{}.wasm",
            name.replace('-', "_")
        );
        for step in [
            "cargo test".to_string(),
            "cargo build --release --target wasm32-wasip2".to_string(),
            format!("modalis plugin check {wasm_rel}"),
        ] {
            assert!(stdout.contains(&step), "next step {step:?} in:\n{stdout}");
        }
        for f in [
            "Cargo.toml",
            "Cargo.lock",
            "README.md",
            "src/lib.rs",
            "params.example.json",
        ] {
            assert!(dir.join(f).is_file(), "{modality}: {f}");
        }

        let t1 = Instant::now();
        let o = cargo(&dir, &["test"]);
        assert!(o.status.success(), "{modality}: cargo test\n{}", text(&o));
        let tests = String::from_utf8_lossy(&o.stdout);
        assert!(
            tests.contains("5 passed; 0 failed"),
            "{modality}: the scaffold's unit tests ran\n{tests}"
        );

        let t2 = Instant::now();
        let o = cargo(&dir, &["build", "--release", "--target", "wasm32-wasip2"]);
        assert!(o.status.success(), "{modality}: cargo build\n{}", text(&o));
        let wasm = scaffold_target()
            .join("wasm32-wasip2/release")
            .join(format!("{}.wasm", name.replace('-', "_")));
        assert!(wasm.is_file(), "{}", wasm.display());

        let t3 = Instant::now();
        let wasm_arg = wasm.display().to_string();
        let params = dir.join("params.example.json").display().to_string();
        for extra in [&[][..], &["--params", params.as_str()][..]] {
            let mut args = vec!["plugin", "check", wasm_arg.as_str(), "--cache-dir", &cache];
            args.extend_from_slice(extra);
            let o = modalis_in(tmp.path(), &args);
            assert!(o.status.success(), "{modality}: plugin check\n{}", text(&o));
            assert!(
                String::from_utf8_lossy(&o.stdout).contains("8 checks passed"),
                "{}",
                text(&o)
            );
        }

        // The governor: the component's sample plan against the example device profile whose
        // channel the scaffold drives, for the example neuropathy patient.
        let mut plugin = rt.load_file(&wasm).expect("loads");
        let m = plugin.manifest().clone();
        assert_eq!((m.id.as_str(), m.modality), (name.as_str(), modality));
        let plan = plugin
            .plan(&m.sample_params, &modalis_sdk::Patient::default())
            .expect("no sandbox failure")
            .expect("the sample plans");
        let profile = match modality {
            ModalityKind::Photobiomodulation => Some("lllt-808.toml"),
            ModalityKind::Class4Laser => Some("class4-15w.toml"),
            ModalityKind::InfraredHeat => Some("mire-pads.toml"),
            ModalityKind::Tens => Some("tens-2ch.toml"),
            ModalityKind::LaserAcupuncture => Some("laser-acupuncture-probe.toml"),
            ModalityKind::Other => None,
        };
        match profile {
            Some(file) => {
                let path = repo("examples/profiles").join(file);
                let text = std::fs::read_to_string(&path).expect("profile");
                let profile = DeviceProfile::from_toml_str(&text, file).expect("profile");
                assert!(
                    stdout.contains(&format!("examples/profiles/{file}")),
                    "names the profile:\n{stdout}"
                );
                let device_id = profile.id.clone();
                let governor = Governor::new(vec![profile], patient.clone()).expect("governor");
                let pre = governor.precheck(&[Block {
                    block_id: "scaffold".into(),
                    plugin_id: m.id.clone(),
                    device_id,
                    start_offset_ms: 0,
                    plan,
                }]);
                let unhappy: Vec<_> = pre
                    .steps
                    .iter()
                    .filter(|s| s.verdict > Verdict::AllowWithWarning)
                    .collect();
                assert!(
                    pre.can_arm() && unhappy.is_empty(),
                    "{modality}: the governor does not accept the sample plan as is:\n{}",
                    pre.report
                );
            }
            None => assert!(
                stdout.contains("no safety rules for `other`"),
                "says plainly that `other` drives nothing:\n{stdout}"
            ),
        }
        timings.push(format!(
            "{modality}: new {:.1} s, cargo test {:.1} s, wasm build {:.1} s, check {:.1} s",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64(),
            t3.elapsed().as_secs_f64()
        ));
    }
    eprintln!(
        "plugin new, {} modalities in {:.1} s (shared target {}):\n  {}",
        ModalityKind::ALL.len(),
        started.elapsed().as_secs_f64(),
        scaffold_target().display(),
        timings.join("\n  ")
    );
}

#[test]
fn bad_names_are_usage_errors_that_say_what_is_expected() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for name in ["Acme", "2heat", "acme lllt", "acme-", "test", "modalis-sdk"] {
        let o = modalis_in(tmp.path(), &["plugin", "new", name]);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("{name:?}"))
                && (err.contains("expected 1-64 lower-case letters") || err.contains("reserved")),
            "{name}: {err}"
        );
    }
    assert_eq!(
        std::fs::read_dir(tmp.path()).expect("tempdir").count(),
        0,
        "nothing written"
    );
}

#[test]
fn an_unknown_modality_is_a_usage_error_listing_the_kinds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let o = modalis_in(
        tmp.path(),
        &["plugin", "new", "acme", "--modality", "laser"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("unknown modality \"laser\"")
            && err.contains(
                "photobiomodulation, class-4-laser, infrared-heat, tens, laser-acupuncture, other"
            ),
        "{err}"
    );
    assert!(!tmp.path().join("acme").exists());
}

#[test]
fn an_existing_directory_is_never_touched() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("acme");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("keep.txt"), "mine").expect("write");
    for args in [
        &["plugin", "new", "acme"][..],
        &["plugin", "new", "other-name", "--dir", "acme"][..],
    ] {
        let o = modalis_in(tmp.path(), args);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("acme: already exists") && err.contains("never writes"),
            "{err}"
        );
    }
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(entries, ["keep.txt"]);
}

#[test]
fn a_directory_that_is_not_the_sdk_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let not_sdk = repo("host");
    for (sdk, reason) in [
        (tmp.path().join("nowhere"), "cannot open the SDK directory"),
        (not_sdk, "expected \"modalis-sdk\""),
    ] {
        let o = modalis_in(
            tmp.path(),
            &["plugin", "new", "acme", "--sdk", &sdk.display().to_string()],
        );
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(reason) && err.contains("pass --sdk PATH"),
            "{err}"
        );
        assert!(!tmp.path().join("acme").exists());
    }
}
