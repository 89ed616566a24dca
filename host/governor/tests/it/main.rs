//! The governor's one integration-test binary (matklad's "delete cargo integration tests").

mod common;
mod examples;
mod props;
mod rules;
mod scenarios;
