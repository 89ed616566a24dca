//! Hostile test plugin: plan() allocates without bound.
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
        info("hostile-hog")
    }
    fn sample_params() -> Params {
        Params::default()
    }
    fn plan(_: &Params, _: &Patient) -> Result<SessionPlan, PlanError> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // Touch the memory so it is really used.
            hoard.push(vec![1u8; 1 << 20]);
            std::hint::black_box(&hoard);
        }
    }
}

export_plugin!(Hostile);
