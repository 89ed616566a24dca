//! The host's integration tests: one binary (matklad's "delete cargo integration tests").

mod first_party;
mod runtime;
