//! # modalis
//!
//! The controller: the sandboxed plugin runtime ([`plugin`]), the plugin scaffold ([`scaffold`])
//! and the command line ([`cli`]).
//! The safety governor lives in the `modalis-governor` crate and the audit log in
//! `modalis-audit`; see ARCHITECTURE.md for the map.

pub mod broker;
pub mod bus;
pub mod cli;
pub mod controller;
pub mod dashboard;
pub mod plugin;
pub mod protocol;
pub mod runner;
pub mod scaffold;
pub mod schemas;
pub mod session;
pub mod shutdown;
pub mod signing_cli;
pub mod sim;

/// The controller id used when none is given: the `<controller>` level of every topic
/// (`modalis/v1/<controller>/...`) and the audit log's controller id.
pub const DEFAULT_CONTROLLER_ID: &str = "controller-1";

/// The broker used when none is given: the embedded one `modalis run` starts, or a local
/// mosquitto.
pub const DEFAULT_BROKER_URL: &str = "mqtt://127.0.0.1:1883";
