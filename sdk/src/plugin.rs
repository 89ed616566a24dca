//! The vendor-facing trait and the JSON glue around it.

use schemars::JsonSchema;
use serde::{Serialize, de::DeserializeOwned};

use crate::types::{
    Adjustment, ChannelInfo, FieldError, Manifest, ModalityKind, Patient, PlanError, PlanStep,
    SessionPlan, TelemetrySample,
};

/// What a plugin says about itself, apart from what the SDK derives (schema, sample params).
#[derive(Debug, Clone, PartialEq)]
pub struct PluginInfo {
    /// Stable identifier, lower-case kebab.
    pub id: &'static str,
    /// Human-readable name.
    pub name: &'static str,
    /// The plugin's version; `env!("CARGO_PKG_VERSION")` is the usual choice.
    pub version: &'static str,
    /// Who wrote it.
    pub vendor: &'static str,
    /// The modality family.
    pub modality: ModalityKind,
    /// The channels it drives.
    pub channels: Vec<ChannelInfo>,
}

/// A modality plugin: an ordinary Rust type that turns parameters into a session plan.
///
/// Implement this, then call [`export_plugin!`](crate::export_plugin) once. Everything here is
/// plain Rust and can be unit-tested natively (see [`crate::harness`]).
///
/// Plugins propose; the host's governor disposes. Nothing returned here is trusted: the host
/// recomputes every dose from the setpoints and checks it against device profiles, the patient
/// and clinical limits. Encode clinical know-how here; never rely on it for safety.
pub trait ModalityPlugin {
    /// The parameters. Derive `Deserialize`, `Serialize` and `JsonSchema`; doc comments on the
    /// fields become the schema's descriptions that vendors and clinics read.
    type Params: DeserializeOwned + Serialize + JsonSchema;

    /// Identity and channels.
    fn info() -> PluginInfo;

    /// Parameters that plan successfully; `modalis plugin check` uses them.
    fn sample_params() -> Self::Params;

    /// Checks beyond what the schema can say (cross-field rules, clinical plausibility).
    /// Point each error at its field with a JSON pointer.
    fn validate(params: &Self::Params) -> Result<(), Vec<FieldError>> {
        let _ = params;
        Ok(())
    }

    /// Turns valid parameters into timed steps. Must be deterministic for the same input.
    fn plan(params: &Self::Params, patient: &Patient) -> Result<SessionPlan, PlanError>;

    /// Closed-loop modalities adjust the running step from telemetry. The default does nothing.
    fn on_telemetry(step: &PlanStep, sample: &TelemetrySample) -> Vec<Adjustment> {
        let _ = (step, sample);
        Vec::new()
    }
}

/// The manifest `describe()` returns: the plugin's info plus its parameter schema and sample
/// parameters, both derived from `P::Params`.
pub fn describe<P: ModalityPlugin>() -> Manifest {
    let info = P::info();
    let schema = schemars::schema_for!(P::Params);
    Manifest {
        id: info.id.to_string(),
        name: info.name.to_string(),
        version: info.version.to_string(),
        vendor: info.vendor.to_string(),
        modality: info.modality,
        // Serialising a schemars schema or a `Serialize` value to JSON only fails for maps with
        // non-string keys, which neither has; an empty document would fail the host's check.
        params_schema: serde_json::to_string(&schema).unwrap_or_default(),
        channels: info.channels,
        sample_params: serde_json::to_string(&P::sample_params()).unwrap_or_default(),
    }
}

/// Parses parameters, turning a deserialisation error into a field error at the exact JSON
/// pointer where it happened.
pub fn parse_params<P: ModalityPlugin>(json: &str) -> Result<P::Params, Vec<FieldError>> {
    let de = &mut serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize::<_, P::Params>(de).map_err(|e| {
        let pointer = pointer_of(e.path());
        let inner = e.into_inner();
        vec![FieldError::new(pointer, inner.to_string())]
    })
}

fn pointer_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => {
                out.push('/');
                out.push_str(&index.to_string());
            }
            Segment::Map { key } => {
                out.push('/');
                out.push_str(&key.replace('~', "~0").replace('/', "~1"));
            }
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    out
}

/// `validate` on JSON parameters: parse, then the plugin's own rules.
pub fn validate_json<P: ModalityPlugin>(json: &str) -> Result<(), Vec<FieldError>> {
    let params = parse_params::<P>(json)?;
    P::validate(&params)
}

/// `plan` on JSON parameters: parse, validate, plan.
pub fn plan_json<P: ModalityPlugin>(
    json: &str,
    patient: &Patient,
) -> Result<SessionPlan, PlanError> {
    let params = parse_params::<P>(json).map_err(PlanError::from_fields)?;
    P::validate(&params).map_err(PlanError::from_fields)?;
    P::plan(&params, patient)
}
