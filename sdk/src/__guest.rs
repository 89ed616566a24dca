//! Guest-side glue, compiled only for WebAssembly: the wit-bindgen bindings for the contract and
//! the adapter functions that [`export_plugin!`](crate::export_plugin) wires to them.

#![allow(missing_docs, missing_debug_implementations, clippy::all)]

wit_bindgen::generate!({
    path: "wit",
    world: "modality-plugin",
    pub_export_macro: true,
    export_macro_name: "__export_modality_plugin",
    default_bindings_module: "modalis_sdk::__guest",
});

use self::modalis::plugin::types as wit;
use crate::plugin::{self, ModalityPlugin};

crate::__wit_conversions!(self::modalis::plugin::types);

pub fn describe<P: ModalityPlugin>() -> wit::Manifest {
    plugin::describe::<P>().into()
}

pub fn validate<P: ModalityPlugin>(params: String) -> Result<(), Vec<wit::FieldError>> {
    plugin::validate_json::<P>(&params).map_err(|v| v.into_iter().map(Into::into).collect())
}

pub fn plan<P: ModalityPlugin>(
    params: String,
    patient: wit::Patient,
) -> Result<wit::SessionPlan, wit::PlanError> {
    let patient: crate::types::Patient = patient.into();
    plugin::plan_json::<P>(&params, &patient)
        .map(Into::into)
        .map_err(Into::into)
}

pub fn on_telemetry<P: ModalityPlugin>(
    step: wit::PlanStep,
    sample: wit::TelemetrySample,
) -> Vec<wit::Adjustment> {
    let step: crate::types::PlanStep = step.into();
    let sample: crate::types::TelemetrySample = sample.into();
    P::on_telemetry(&step, &sample)
        .into_iter()
        .map(Into::into)
        .collect()
}
