//! # modalis-sdk
//!
//! Everything a device vendor needs to write a modalis modality plugin, and the contract types
//! the modalis host itself uses, so that host and plugins cannot drift apart.
//!
//! A plugin is an ordinary Rust type implementing [`ModalityPlugin`], exported with one call of
//! [`export_plugin!`], built for `wasm32-wasip2`:
//!
//! ```ignore
//! use modalis_sdk::prelude::*;
//!
//! /// Parameters; doc comments become the JSON Schema's descriptions.
//! #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
//! pub struct Params { /* ... */ }
//!
//! pub struct MyPlugin;
//! impl ModalityPlugin for MyPlugin { /* info, sample_params, validate, plan */ }
//! export_plugin!(MyPlugin);
//! ```
//!
//! * [`types`]: manifests, plans, setpoints (units in the field names), telemetry.
//! * [`sites`]: the shared body-site vocabulary (regions and WHO acupuncture points).
//! * [`dose`]: energy, fluence, irradiance, r.m.s. current, charge per phase.
//! * [`harness`]: unit-test a plugin natively with `cargo test`.
//! * [`conformance`]: the structural checks `modalis plugin check` applies.
//!
//! The contract itself is the WIT package in [`WIT`] (`modalis:plugin@0.1.0`).

#![warn(missing_docs)]

pub mod conformance;
pub mod dose;
pub mod harness;
pub mod plugin;
pub mod sites;
pub mod types;
#[doc(hidden)]
pub mod wit_convert;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod __guest;

pub use plugin::{ModalityPlugin, PluginInfo};
pub use sites::{BodyRegion, BodySite, Location, Side};
pub use types::*;

/// The WIT text of the contract this SDK speaks.
pub const WIT: &str = include_str!("../wit/plugin.wit");

/// Exports a [`ModalityPlugin`] implementation as the plugin's WebAssembly component.
///
/// Call it once, at the crate root, with the plugin type. On native targets it expands to
/// nothing, so the same crate unit-tests with plain `cargo test`.
#[macro_export]
macro_rules! export_plugin {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __ModalisExport;
            impl $crate::__guest::exports::modalis::plugin::plugin::Guest for __ModalisExport {
                fn describe() -> $crate::__guest::modalis::plugin::types::Manifest {
                    $crate::__guest::describe::<$ty>()
                }
                fn validate(
                    params: ::std::string::String,
                ) -> ::std::result::Result<(), ::std::vec::Vec<$crate::__guest::modalis::plugin::types::FieldError>> {
                    $crate::__guest::validate::<$ty>(params)
                }
                fn plan(
                    params: ::std::string::String,
                    patient: $crate::__guest::modalis::plugin::types::Patient,
                ) -> ::std::result::Result<
                    $crate::__guest::modalis::plugin::types::SessionPlan,
                    $crate::__guest::modalis::plugin::types::PlanError,
                > {
                    $crate::__guest::plan::<$ty>(params, patient)
                }
                fn on_telemetry(
                    step: $crate::__guest::modalis::plugin::types::PlanStep,
                    sample: $crate::__guest::modalis::plugin::types::TelemetrySample,
                ) -> ::std::vec::Vec<$crate::__guest::modalis::plugin::types::Adjustment> {
                    $crate::__guest::on_telemetry::<$ty>(step, sample)
                }
            }
            $crate::__guest::__export_modality_plugin!(__ModalisExport with_types_in $crate::__guest);
        };
    };
}

/// Everything a plugin needs: `use modalis_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::conformance::Issue;
    pub use crate::dose;
    pub use crate::export_plugin;
    pub use crate::harness::Harness;
    pub use crate::plugin::{ModalityPlugin, PluginInfo};
    pub use crate::sites::{BodyRegion, BodySite, Location, Side, acupoint, expand_point_group};
    pub use crate::types::*;
    pub use schemars::{self, JsonSchema};
    pub use serde::{self, Deserialize, Serialize};
}
