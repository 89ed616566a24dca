//! Hostile test plugin: plan() panics.
//!
//! Built to wasm like the real plugins; the host's tests check that it is stopped with a clear
//! error and that the controller survives it.

use modalis_hostile_common::{Params, info};
use modalis_sdk::prelude::*;

/// The plugin.
#[derive(Debug)]
pub struct Hostile;

impl ModalityPlugin for Hostile {
    type Params = Params;
    fn info() -> PluginInfo {
        info("hostile-panicker")
    }
    fn sample_params() -> Params {
        Params::default()
    }
    #[allow(clippy::panic)]
    fn plan(_: &Params, _: &Patient) -> Result<SessionPlan, PlanError> {
        panic!("deliberate panic in plan");
    }
}

export_plugin!(Hostile);
