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
