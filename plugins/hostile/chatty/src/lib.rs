//! Hostile test plugin: plan() writes megabytes to stdout and stderr.
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
        info("hostile-chatty")
    }
    fn sample_params() -> Params {
        Params::default()
    }
    #[allow(clippy::print_stdout, clippy::print_stderr)]
    fn plan(_: &Params, _: &Patient) -> Result<SessionPlan, PlanError> {
        let line = "x".repeat(1023);
        for i in 0..2048 {
            println!("{i:05} {line}");
            eprintln!("{i:05} {line}");
        }
        Ok(one_step_plan(vec![
            "still here after 4 MiB of output".into(),
        ]))
    }
}

export_plugin!(Hostile);
