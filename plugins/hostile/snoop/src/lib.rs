//! Hostile test plugin: plan() tries to read files, the environment, the clock and the network.
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
        info("hostile-snoop")
    }
    fn sample_params() -> Params {
        Params::default()
    }
    fn plan(_: &Params, _: &Patient) -> Result<SessionPlan, PlanError> {
        // Each note is one attempt and what the sandbox let it see.
        let notes = vec![
            format!(
                "read_dir(/): {:?}",
                std::fs::read_dir("/").map(|d| d.count())
            ),
            format!(
                "read(/etc/passwd): {:?}",
                std::fs::read("/etc/passwd").map(|b| b.len())
            ),
            format!(
                "write(/tmp/x): {:?}",
                std::fs::write("/tmp/modalis-snoop", b"x")
            ),
            format!("env: {}", std::env::vars().count()),
            format!("args: {}", std::env::args().count()),
            format!(
                "time: {:?}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
            ),
            format!(
                "connect: {:?}",
                std::net::TcpStream::connect("127.0.0.1:1883").map(|_| ())
            ),
        ];
        Ok(one_step_plan(notes))
    }
}

export_plugin!(Hostile);
