//! Hostile test plugin: plan() sleeps for an hour.
//!
//! Built to wasm like the real plugins; the host's tests check that it is stopped with a clear
//! error and that the controller survives it.

use modalis_hostile_common::{Params, info, one_step_plan};
use modalis_sdk::prelude::*;

/// The plugin.
#[derive(Debug)]
pub struct Hostile;

impl ModalityPlugin for Hostile {
    type Params = Params;
    fn info() -> PluginInfo {
        info("hostile-sleeper")
    }
    fn sample_params() -> Params {
        Params::default()
    }
    fn plan(_: &Params, _: &Patient) -> Result<SessionPlan, PlanError> {
        let before = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_secs(3600));
        Ok(one_step_plan(vec![format!(
            "slept; clock advanced {:?}",
            before.elapsed()
        )]))
    }
}

export_plugin!(Hostile);
