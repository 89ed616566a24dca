//! Sessions: one protocol run for one patient at one station.
//!
//! [`machine`] is the state machine every session follows (pure; the controller task owns the
//! states). The scheduler and the controller task that drive sessions over MQTT are the
//! session-runtime issue's remaining work.

pub mod machine;
