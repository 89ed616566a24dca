//! The audit log's one integration-test binary: everything goes through a real sled
//! directory in a temporary directory, the way the controller and the CLI use it.

mod api;
mod cli;
mod concurrency;
mod crash;
mod support;
mod tamper;
