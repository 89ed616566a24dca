//! Scaffolding shared by the hostile test plugins, so each one is only its misbehaviour.

use modalis_sdk::prelude::*;

/// Parameters of every hostile plugin: one number, so the schema is trivially valid.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Params {
    /// Unused.
    #[serde(default)]
    pub n: u32,
}

/// Info for a hostile plugin with one optical channel.
pub fn info(id: &'static str) -> PluginInfo {
    PluginInfo {
        id,
        name: "hostile test plugin",
        version: "0.0.1",
        vendor: "modalis tests",
        modality: ModalityKind::Other,
        channels: vec![ChannelInfo::new("out", ChannelKind::Optical, "test output")],
    }
}

/// A well-formed one-step plan carrying `notes`.
pub fn one_step_plan(notes: Vec<String>) -> SessionPlan {
    SessionPlan {
        steps: vec![PlanStep {
            offset_ms: 0,
            duration_ms: 1000,
            channel: "out".into(),
            site: BodySite::region(BodyRegion::FootDorsum, Side::Left),
            setpoint: Setpoint::Off,
            label: "nothing".into(),
        }],
        notes,
    }
}
