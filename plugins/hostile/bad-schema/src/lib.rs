//! Hostile test plugin: describe() returns a parameter schema that is not valid JSON Schema.
//!
//! Built to wasm like the real plugins; the host's tests check that it is stopped with a clear
//! error and that the controller survives it.

use modalis_hostile_common::{info, one_step_plan};
use modalis_sdk::prelude::*;

/// The plugin.
#[derive(Debug)]
pub struct Hostile;

/// Parameters whose hand-written schema is invalid (`type` must be a string or an array).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BadParams {
    /// Unused.
    pub n: u32,
}

impl JsonSchema for BadParams {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "BadParams".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "banana", "minimum": "zero" })
    }
}

impl ModalityPlugin for Hostile {
    type Params = BadParams;
    fn info() -> PluginInfo {
        info("hostile-bad-schema")
    }
    fn sample_params() -> BadParams {
        BadParams::default()
    }
    fn plan(_: &BadParams, _: &Patient) -> Result<SessionPlan, PlanError> {
        Ok(one_step_plan(vec![]))
    }
}

export_plugin!(Hostile);
