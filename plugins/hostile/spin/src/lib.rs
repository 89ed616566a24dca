//! Hostile test plugin: plan() loops forever.
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
        info("hostile-spin")
    }
    fn sample_params() -> Params {
        Params::default()
    }
    fn plan(_: &Params, _: &Patient) -> Result<SessionPlan, PlanError> {
        let mut x = 0u64;
        loop {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }
}

export_plugin!(Hostile);
