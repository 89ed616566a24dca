//! Plugin runtime benchmark: `cargo bench -p modalis --bench plugin_runtime`.
//!
//! Measures cold load (compile), load from the precompiled cache, instantiate, describe and
//! plan on a fresh instance, and a warm `on-telemetry` call, and prints each beside the native
//! cost of the same plugin logic compiled into this benchmark, so the sandbox overhead reads as
//! a ratio. Targets (foundation issue, 2-core machine): cache load <= 1 ms, instantiate + plan
//! <= 25 us, warm on-telemetry <= 1 us. Medians of many samples; the machine is shared and
//! noisy, so the spread (p10..p90) is printed too.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use modalis::plugin::{PluginRuntime, RuntimeConfig};
use modalis_plugin_artifacts as artifacts;
use modalis_sdk::{Measurement, Patient, TelemetrySample};

struct Stats {
    p10: Duration,
    median: Duration,
    p90: Duration,
}

fn measure(samples: usize, mut f: impl FnMut()) -> Stats {
    // Warm up caches and branch predictors.
    for _ in 0..samples.min(20) {
        f();
    }
    let mut times: Vec<Duration> = (0..samples)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort_unstable();
    Stats {
        p10: times[samples / 10],
        median: times[samples / 2],
        p90: times[samples * 9 / 10],
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn row(name: &str, s: &Stats, target_us: Option<f64>, native: Option<&Stats>) {
    let ratio = native
        .map(|n| format!("{:>8.1}x", us(s.median) / us(n.median).max(1e-3)))
        .unwrap_or_else(|| format!("{:>9}", "-"));
    let target = match target_us {
        Some(t) => format!(
            "<= {t:>7.1} us {}",
            if us(s.median) <= t { "met" } else { "MISSED" }
        ),
        None => String::from("-"),
    };
    println!(
        "{name:<34} {:>10.2} us  (p10 {:>9.2}, p90 {:>9.2})  {ratio}  {target}",
        us(s.median),
        us(s.p10),
        us(s.p90)
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let cache = tempfile::tempdir().expect("tempdir");
    let rt = PluginRuntime::new(RuntimeConfig::new(cache.path())).expect("runtime");
    let tens = std::fs::read(artifacts::TENS).expect("tens wasm");

    println!("modalis plugin runtime benchmark (medians; ratio = sandboxed / native)");
    println!(
        "{:<34} {:>13}  {:>28}  {:>9}  target",
        "measurement", "median", "spread", "ratio"
    );

    // `MODALIS_PROFILE=plan|native-plan|telemetry|cache`: loop one measurement for a profiler
    // (`perf record -g target/release/deps/plugin_runtime-* --bench`) instead of the report.
    if let Ok(what) = std::env::var("MODALIS_PROFILE") {
        profile_loop(&rt, &what);
        return;
    }
    let cold = measure(10, || {
        let d = tempfile::tempdir().expect("tempdir");
        let r = PluginRuntime::new(RuntimeConfig::new(d.path())).expect("runtime");
        black_box(r.compile("tens", &tens).expect("compile"));
    });
    row("cold load (compile + cache write)", &cold, None, None);

    rt.compile("tens", &tens).expect("prime the cache");
    let cached = measure(200, || {
        let (c, hit) = rt.compile("tens", &tens).expect("cached");
        assert!(hit);
        black_box(c);
    });
    row("load from precompiled cache", &cached, Some(1000.0), None);

    let full_load = measure(100, || {
        black_box(rt.load_file(Path::new(artifacts::TENS)).expect("load"));
    });
    row("load + link + describe + schema", &full_load, None, None);

    let mut p = rt.load_file(Path::new(artifacts::TENS)).expect("load");
    let params = p.manifest().sample_params.clone();
    let patient = Patient::default();

    let native_describe = measure(2000, || {
        black_box(modalis_sdk::plugin::describe::<modalis_plugin_tens::Tens>());
    });
    let describe = measure(2000, || {
        black_box(p.describe().expect("describe"));
    });
    row(
        "instantiate + describe",
        &describe,
        None,
        Some(&native_describe),
    );
    row("  native describe", &native_describe, None, None);

    let native_plan = measure(5000, || {
        black_box(
            modalis_sdk::plugin::plan_json::<modalis_plugin_tens::Tens>(&params, &patient)
                .expect("plan"),
        );
    });
    let plan = measure(5000, || {
        black_box(p.plan(&params, &patient).expect("no trap").expect("plan"));
    });
    row(
        "instantiate + plan (TENS sample)",
        &plan,
        Some(25.0),
        Some(&native_plan),
    );
    row("  native plan", &native_plan, None, None);
    let schema = measure(5000, || {
        black_box(p.schema_check(&params).is_ok());
    });
    row("  of which host JSON-Schema check", &schema, None, None);

    let mut heat = rt
        .load_file(Path::new(artifacts::INFRARED_HEAT))
        .expect("load heat");
    let hp = heat.manifest().sample_params.clone();
    let heat_plan = heat.plan(&hp, &patient).expect("no trap").expect("plan");
    let step = heat_plan
        .steps
        .iter()
        .find(|s| s.setpoint.is_energy())
        .expect("a heat step")
        .clone();
    let sample = TelemetrySample {
        channel: step.channel.clone(),
        elapsed_ms: step.offset_ms + 1000,
        measurement: Measurement::SkinTempC(38.5),
    };
    use modalis_sdk::ModalityPlugin as _;
    let native_tel = measure(20000, || {
        black_box(modalis_plugin_infrared_heat::InfraredHeat::on_telemetry(
            &step, &sample,
        ));
    });
    heat.on_telemetry(&step, &sample)
        .expect("warm up the instance");
    let tel = measure(20000, || {
        black_box(heat.on_telemetry(&step, &sample).expect("telemetry"));
    });
    row(
        "warm on-telemetry (infrared heat)",
        &tel,
        Some(1.0),
        Some(&native_tel),
    );
    row("  native on-telemetry", &native_tel, None, None);
    // Calls from inside a tokio runtime (WASI's blocking output cannot run on a runtime
    // thread): a current-thread runtime hands the call to the plugin worker thread; the
    // controller's multi-thread runtime leaves the runtime in place on its own thread.
    let rt_ctl = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let tel_rt = rt_ctl.block_on(async {
        measure(20000, || {
            black_box(heat.on_telemetry(&step, &sample).expect("telemetry"));
        })
    });
    row(
        "  from a current-thread runtime",
        &tel_rt,
        None,
        Some(&native_tel),
    );
    // The controller's own runtime: multi-thread, the loop in `block_on`.
    let rt_multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .expect("runtime");
    let tel_multi = rt_multi.block_on(async {
        measure(20000, || {
            black_box(heat.on_telemetry(&step, &sample).expect("telemetry"));
        })
    });
    row(
        "  from the controller's runtime",
        &tel_multi,
        None,
        Some(&native_tel),
    );
}

/// One measurement in a loop, long enough for a sampling profiler.
fn profile_loop(rt: &PluginRuntime, what: &str) {
    let patient = Patient::default();
    match what {
        "plan" | "native-plan" => {
            let mut p = rt.load_file(Path::new(artifacts::TENS)).expect("load");
            let params = p.manifest().sample_params.clone();
            for _ in 0..200_000 {
                if what == "plan" {
                    black_box(p.plan(&params, &patient).expect("no trap").expect("plan"));
                } else {
                    black_box(
                        modalis_sdk::plugin::plan_json::<modalis_plugin_tens::Tens>(
                            &params, &patient,
                        )
                        .expect("plan"),
                    );
                }
            }
        }
        "telemetry" => {
            let mut heat = rt
                .load_file(Path::new(artifacts::INFRARED_HEAT))
                .expect("load heat");
            let hp = heat.manifest().sample_params.clone();
            let plan = heat.plan(&hp, &patient).expect("no trap").expect("plan");
            let step = plan
                .steps
                .iter()
                .find(|s| s.setpoint.is_energy())
                .expect("a heat step")
                .clone();
            let sample = TelemetrySample {
                channel: step.channel.clone(),
                elapsed_ms: step.offset_ms + 1000,
                measurement: Measurement::SkinTempC(38.5),
            };
            for _ in 0..3_000_000 {
                black_box(heat.on_telemetry(&step, &sample).expect("telemetry"));
            }
        }
        "cache" => {
            let tens = std::fs::read(artifacts::TENS).expect("tens wasm");
            rt.compile("tens", &tens).expect("prime the cache");
            for _ in 0..3_000 {
                black_box(rt.compile("tens", &tens).expect("cached"));
            }
        }
        other => {
            eprintln!("MODALIS_PROFILE={other}: expected plan, native-plan, telemetry or cache")
        }
    }
}
