//! The plugin runtime through its public API, on real compiled plugins.

use modalis::plugin::{PluginRuntime, RuntimeConfig};
use modalis_sdk::Patient;

#[test]
fn smoke_tens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = PluginRuntime::new(RuntimeConfig::for_tests(dir.path())).expect("runtime");
    let t = std::time::Instant::now();
    let mut p = rt.load_file(std::path::Path::new(modalis_plugin_artifacts::TENS)).expect("loads");
    eprintln!("load {:?}", t.elapsed());
    eprintln!("{:#?}", p.manifest().channels);
    let sample = p.manifest().sample_params.clone();
    p.validate(&sample).expect("no trap").expect("valid");
    let plan = p.plan(&sample, &Patient::default()).expect("no trap").expect("plans");
    eprintln!("{} steps; first {:?}", plan.steps.len(), plan.steps[0]);
    let t = std::time::Instant::now();
    let _ = rt.load_file(std::path::Path::new(modalis_plugin_artifacts::TENS)).expect("loads");
    eprintln!("load cached {:?}", t.elapsed());
}
