//! The host's integration tests: one binary (matklad's "delete cargo integration tests").

mod acl;
mod asyncapi;
mod bus;
mod cli;
mod controller;
mod dashboard;
mod first_party;
mod malformed;
mod plugin_new;
mod protocol;
mod runtime;
mod schemas;
mod signing;
mod sim;
mod tls;

/// The browser tests (two controllers, mosquitto and Chromium at once) take this for writing,
/// and every controller rig for reading, so they never run beside the controller tests, whose
/// bounds (leases renewed in time, no alarm in a clean run) a 2-core machine under that load
/// can miss: the fresh-clone CI run once saw a lease lapse there. The saturating-flood e-stop
/// tests take it for writing too (`Turn::Alone` in controller.rs).
pub static HEAVY: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());
