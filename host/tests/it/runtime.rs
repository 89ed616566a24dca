//! The plugin runtime through its public API, on real plugins compiled to wasm by the normal
//! build. Every hostile plugin must be stopped with a typed error naming the plugin, the call
//! and the cause, and the runtime (the controller process) must carry on.

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use modalis::plugin::{Plugin, PluginError, PluginRuntime, RuntimeConfig};
use modalis_plugin_artifacts as artifacts;
use modalis_sdk::Patient;
use modalis_sdk::conformance::{check_manifest, check_plan};

/// One compile cache for the whole test binary, so each plugin is compiled once.
fn shared_cache() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("tempdir"))
        .path()
}

pub fn runtime() -> PluginRuntime {
    PluginRuntime::new(RuntimeConfig::for_tests(shared_cache())).expect("runtime starts")
}

fn load(rt: &PluginRuntime, path: &str) -> Plugin {
    rt.load_file(Path::new(path)).expect("plugin loads")
}

fn load_err(rt: &PluginRuntime, path: &str) -> PluginError {
    rt.load_file(Path::new(path))
        .expect_err("plugin must be refused")
}

/// CPU time this thread has used, from the kernel's scheduler statistics.
fn thread_cpu() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    let ns: u64 = text
        .split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .expect("cpu ns");
    Duration::from_nanos(ns)
}

#[test]
fn tens_loads_validates_and_plans_through_the_sandbox() {
    let rt = runtime();
    let mut p = load(&rt, artifacts::TENS);
    assert_eq!(p.label(), format!("tens@{}", p.manifest().version));
    assert_eq!(p.wasm_sha256().len(), 64);
    assert!(check_manifest(p.manifest()).is_empty());
    let sample = p.manifest().sample_params.clone();
    p.validate(&sample)
        .expect("no trap")
        .expect("sample is valid");
    let plan = p
        .plan(&sample, &Patient::default())
        .expect("no trap")
        .expect("plans");
    assert!(
        check_plan(p.manifest(), &plan).is_empty(),
        "{:?}",
        check_plan(p.manifest(), &plan)
    );
    assert_eq!(plan.duration_ms(), 30 * 60_000);
    let stats = p.last_call().expect("stats");
    assert!(stats.fuel_used > 0 && stats.fuel_used < rt.limits().fuel_per_call);
    assert!(stats.peak_memory_bytes > 0 && stats.peak_memory_bytes < rt.limits().memory_bytes);
}

#[test]
fn host_schema_check_points_at_the_field_before_the_plugin_runs() {
    let rt = runtime();
    let mut p = load(&rt, artifacts::TENS);
    let errs = p
        .validate(r#"{"electrodes": 5, "mode": "conventional"}"#)
        .expect("no trap")
        .expect_err("invalid");
    assert!(errs.iter().any(|e| e.pointer == "/electrodes"), "{errs:?}");
    assert!(
        errs.iter().any(|e| e.message.contains("frequency_hz")),
        "missing required field named: {errs:?}"
    );
    let errs = p
        .validate("{not json")
        .expect("no trap")
        .expect_err("invalid");
    assert!(errs[0].message.contains("not valid JSON"), "{errs:?}");
    // The plugin's own rules come after the schema.
    let mut v: serde_json::Value = serde_json::from_str(&p.manifest().sample_params).expect("json");
    v["pulse_width_us"] = serde_json::json!(900.0);
    let errs = p
        .validate(&v.to_string())
        .expect("no trap")
        .expect_err("invalid");
    assert_eq!(errs[0].pointer, "/pulse_width_us", "{errs:?}");
    // And plan refuses unchecked parameters too.
    let err = p
        .plan(r#"{"electrodes": 5}"#, &Patient::default())
        .expect("no trap")
        .expect_err("refused");
    assert!(!err.field_errors.is_empty());
}

#[test]
fn a_file_that_is_not_wasm_is_refused_by_name() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("plugin.wasm");
    std::fs::write(&path, "#!/bin/sh\necho not wasm\n").expect("write");
    let e = rt.load_file(&path).expect_err("refused");
    assert!(
        matches!(e, PluginError::NotWasm { ref plugin } if plugin == "plugin.wasm"),
        "{e}"
    );
    assert!(e.to_string().contains("not a WebAssembly file"), "{e}");
    let missing = rt
        .load_file(&dir.path().join("absent.wasm"))
        .expect_err("refused");
    assert!(matches!(missing, PluginError::Read { .. }), "{missing}");
    assert!(missing.to_string().contains("absent.wasm"), "{missing}");
}

#[test]
fn a_core_module_is_refused_as_not_a_component() {
    let rt = runtime();
    let core = wat::parse_str("(module (func (export \"plan\")))").expect("wat");
    let e = rt.load_bytes("core.wasm", &core).expect_err("refused");
    assert!(matches!(e, PluginError::CoreModule { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("core WebAssembly module, not a component"),
        "{e}"
    );
}

#[test]
fn newer_and_older_contract_versions_are_refused_naming_both_versions() {
    let rt = runtime();
    for (path, found) in [
        (artifacts::HOSTILE_CONTRACT_NEXT, "0.2.0"),
        (artifacts::HOSTILE_CONTRACT_OLD, "0.0.9"),
    ] {
        let e = load_err(&rt, path);
        match &e {
            PluginError::ContractVersion {
                found: f, expected, ..
            } => {
                assert_eq!(f, found);
                assert_eq!(expected, modalis_sdk::CONTRACT_VERSION);
            }
            other => panic!("expected a contract version error, got {other}"),
        }
        assert!(
            e.to_string().contains(&format!("modalis:plugin@{found}")),
            "{e}"
        );
    }
}

#[test]
fn an_import_the_host_does_not_provide_is_named() {
    let rt = runtime();
    let e = load_err(&rt, artifacts::HOSTILE_FOREIGN_IMPORT);
    match &e {
        PluginError::MissingImport { import, .. } => {
            assert!(import.starts_with("evil:exfil/net"), "{import}")
        }
        other => panic!("expected a missing import, got {other}"),
    }
}

#[test]
fn an_endless_plan_is_stopped_within_100ms_of_cpu_and_quarantined_after_repeats() {
    let rt = runtime();
    let mut p = load(&rt, artifacts::HOSTILE_SPIN);
    let limit = rt.limits().quarantine_after;
    for attempt in 1..=limit {
        let cpu = thread_cpu();
        let wall = Instant::now();
        let e = p.plan("{}", &Patient::default()).expect_err("stopped");
        let (cpu, wall) = (thread_cpu() - cpu, wall.elapsed());
        assert!(
            matches!(
                e,
                PluginError::FuelExhausted { .. } | PluginError::Deadline { .. }
            ),
            "{e}"
        );
        assert!(
            e.to_string().contains("hostile-spin@0.0.1: plan:"),
            "names plugin and call: {e}"
        );
        // The foundation issue's bound: stopped within 100 ms of CPU.
        eprintln!("attempt {attempt}: stopped after {cpu:?} of CPU ({wall:?} wall)");
        assert!(
            cpu <= Duration::from_millis(100),
            "attempt {attempt}: {cpu:?} of CPU ({wall:?} wall)"
        );
        if attempt < limit {
            // A fresh instance serves the next call.
            p.describe()
                .expect("describe still works on a fresh instance");
        }
    }
    let q = p.plan("{}", &Patient::default()).expect_err("quarantined");
    assert!(
        matches!(q, PluginError::Quarantined { failures, .. } if failures == limit),
        "{q}"
    );
    assert!(
        q.to_string().contains("quarantined after 3 failed calls"),
        "{q}"
    );
    assert!(p.quarantine_reason().is_some());
    assert!(
        p.describe().is_err(),
        "a quarantined plugin is refused every call"
    );
    p.release_quarantine();
    p.describe().expect("released by the operator");
}

#[test]
fn unbounded_allocation_is_stopped_at_the_memory_cap() {
    let rt = runtime();
    let mut p = load(&rt, artifacts::HOSTILE_HOG);
    let e = p.plan("{}", &Patient::default()).expect_err("stopped");
    match &e {
        PluginError::MemoryCap {
            cap_bytes,
            requested_bytes,
            call,
            ..
        } => {
            assert_eq!(*cap_bytes, rt.limits().memory_bytes);
            assert!(*requested_bytes > *cap_bytes);
            assert_eq!(*call, "plan");
        }
        other => panic!("expected the memory cap, got {other}"),
    }
    assert!(
        e.to_string().contains("memory cap of 67108864 bytes"),
        "{e}"
    );
    p.describe().expect("the next call gets a fresh instance");
}

#[test]
fn a_panic_is_a_trap_carrying_the_panic_message() {
    let rt = runtime();
    let mut p = load(&rt, artifacts::HOSTILE_PANICKER);
    let e = p.plan("{}", &Patient::default()).expect_err("trapped");
    match &e {
        PluginError::Trap { stderr, call, .. } => {
            assert_eq!(*call, "plan");
            assert!(stderr.contains("deliberate panic in plan"), "{stderr}");
        }
        other => panic!("expected a trap, got {other}"),
    }
    assert!(e.to_string().contains("deliberate panic in plan"), "{e}");
}

#[test]
fn a_schema_that_is_not_json_schema_is_refused_at_load() {
    let rt = runtime();
    let e = load_err(&rt, artifacts::HOSTILE_BAD_SCHEMA);
    assert!(matches!(e, PluginError::BadSchema { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("hostile-bad-schema@0.0.1") && text.contains("not a valid JSON Schema"),
        "{text}"
    );
    assert!(text.contains(" at /"), "says where in the schema: {text}");
}

#[test]
fn megabytes_of_output_are_bounded_and_do_not_break_the_plugin() {
    let rt = runtime();
    let mut p = load(&rt, artifacts::HOSTILE_CHATTY);
    let plan = p
        .plan("{}", &Patient::default())
        .expect("no trap")
        .expect("plans");
    assert_eq!(
        plan.notes,
        vec!["still here after 4 MiB of output".to_string()]
    );
    eprintln!(
        "4 MiB of output took {:?}",
        p.last_call().map(|c| c.elapsed)
    );
}

#[test]
fn sleeping_returns_at_once_instead_of_holding_the_host() {
    let rt = runtime();
    let mut p = load(&rt, artifacts::HOSTILE_SLEEPER);
    let t = Instant::now();
    let plan = p
        .plan("{}", &Patient::default())
        .expect("no trap")
        .expect("plans");
    // It asked for an hour. Generous bound: the point is "not an hour".
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(
        plan.notes,
        vec!["slept; clock advanced 0ns".to_string()],
        "frozen monotonic clock"
    );
}

#[test]
fn the_sandbox_has_no_files_environment_clock_or_network() {
    let rt = runtime();
    let mut p = load(&rt, artifacts::HOSTILE_SNOOP);
    let plan = p
        .plan("{}", &Patient::default())
        .expect("no trap")
        .expect("plans");
    let notes = plan.notes.join("\n");
    for expect in [
        "read_dir(/): Err",
        "read(/etc/passwd): Err",
        "write(/tmp/x): Err",
        "env: 0",
        "args: 0",
        "time: Ok(0)",
        "connect: Err",
    ] {
        assert!(notes.contains(expect), "expected {expect:?} in:\n{notes}");
    }
    assert!(!Path::new("/tmp/modalis-snoop").exists());
}

#[test]
fn the_compile_cache_is_reused_and_never_trusts_foreign_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = PluginRuntime::new(RuntimeConfig::for_tests(dir.path())).expect("runtime");
    let wasm = std::fs::read(artifacts::TENS).expect("read");
    let (_, hit) = rt.compile("tens", &wasm).expect("compiles");
    assert!(!hit, "cold");
    let (_, hit) = rt.compile("tens", &wasm).expect("loads");
    assert!(hit, "warm from the cache");
    // Tamper with the cached artifact: it must be discarded and recompiled, not deserialised.
    let entry = std::fs::read_dir(dir.path())
        .expect("list")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .expect("a cache entry");
    let mut bytes = std::fs::read(&entry).expect("read entry");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&entry, &bytes).expect("tamper");
    let (_, hit) = rt.compile("tens", &wasm).expect("recompiles");
    assert!(!hit, "a tampered entry is not used");
    let (_, hit) = rt.compile("tens", &wasm).expect("loads");
    assert!(hit, "and is replaced by a good one");
    // The key is private to the controller.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("cache-key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "key mode {mode:o}");
}

/// The TENS sample plan's first step and an in-range impedance reading on its channel.
fn tens_first_step_and_reading(
    p: &mut Plugin,
) -> (modalis_sdk::PlanStep, modalis_sdk::TelemetrySample) {
    let sample = p.manifest().sample_params.clone();
    let plan = p
        .plan(&sample, &Patient::default())
        .expect("no trap")
        .expect("plans");
    let step = plan.steps[0].clone();
    let telemetry = modalis_sdk::TelemetrySample {
        channel: step.channel.clone(),
        elapsed_ms: 1000,
        measurement: modalis_sdk::Measurement::ImpedanceOhm(900.0),
    };
    (step, telemetry)
}

#[test]
fn closed_loop_calls_reuse_a_warm_instance() {
    let rt = runtime();
    let mut p = load(&rt, artifacts::TENS);
    let (step, telemetry) = tens_first_step_and_reading(&mut p);
    // TENS has no closed loop: no adjustments, and the second call is served warm.
    assert!(
        p.on_telemetry(&step, &telemetry)
            .expect("no trap")
            .is_empty()
    );
    let first = p.last_call().expect("stats");
    assert!(
        p.on_telemetry(&step, &telemetry)
            .expect("no trap")
            .is_empty()
    );
    let second = p.last_call().expect("stats");
    assert!(second.fuel_used <= first.fuel_used);
}

#[test]
fn with_fuel_to_spare_the_wall_clock_deadline_stops_an_endless_plan() {
    let mut cfg = RuntimeConfig::for_tests(shared_cache());
    cfg.limits.fuel_per_call = u64::MAX / 4;
    cfg.limits.deadline = Duration::from_millis(30);
    let rt = PluginRuntime::new(cfg).expect("runtime");
    let mut p = load(&rt, artifacts::HOSTILE_SPIN);
    let t = Instant::now();
    let e = p.plan("{}", &Patient::default()).expect_err("stopped");
    assert!(
        matches!(
            e,
            PluginError::Deadline {
                deadline_ms: 30,
                call: "plan",
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("stopped at its deadline of 30 ms"),
        "{e}"
    );
    // Generous: the point is that a deadline fires at all, not its precision.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    p.describe().expect("a fresh instance serves the next call");
}

#[test]
fn a_full_instance_pool_is_named_as_such_and_never_quarantines_the_plugin() {
    // Room for one instance: a closed loop's warm instance takes it.
    let mut cfg = RuntimeConfig::for_tests(shared_cache());
    cfg.max_instances = 1;
    let rt = PluginRuntime::new(cfg).expect("runtime");
    let mut looping = load(&rt, artifacts::TENS);
    let mut other = looping.fork();
    let sample = looping.manifest().sample_params.clone();
    let (step, telemetry) = tens_first_step_and_reading(&mut looping);
    looping.on_telemetry(&step, &telemetry).expect("warm");
    // More attempts than the quarantine threshold: a full pool is not the plugin's fault.
    for _ in 0..5 {
        let e = other
            .plan(&sample, &Patient::default())
            .expect_err("no slot left");
        assert!(
            matches!(e, PluginError::PoolFull { call: "plan", .. }),
            "{e}"
        );
        assert!(
            e.to_string().contains("RuntimeConfig::max_instances"),
            "{e}"
        );
    }
    // Released, the slot serves the other handle, which was never quarantined.
    drop(looping);
    other
        .plan(&sample, &Patient::default())
        .expect("no trap")
        .expect("plans once a slot is free");
}
