//! # modalis
//!
//! The controller: the sandboxed plugin runtime ([`plugin`]) and the command line ([`cli`]).
//! The safety governor lives in the `modalis-governor` crate and the audit log in
//! `modalis-audit`; see ARCHITECTURE.md for the map.

pub mod broker;
pub mod bus;
pub mod cli;
pub mod plugin;
pub mod protocol;
pub mod session;
pub mod sim;
