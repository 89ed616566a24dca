//! # modalis-sdk
//!
//! Everything a device vendor needs to write a modalis modality plugin, and the contract types
//! the modalis host itself uses, so that host and plugins cannot drift apart.
//!
//! A plugin is an ordinary Rust type implementing [`ModalityPlugin`], exported with one call of
//! [`export_plugin!`], built for `wasm32-wasip2`:
//!
//! ```
//! use modalis_sdk::prelude::*;
//!
//! /// Parameters; doc comments become the JSON Schema's descriptions.
//! #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
//! pub struct Params {
//!     /// Where the pad goes, e.g. "foot_dorsum:left".
//!     pub site: BodySite,
//!     /// Skin temperature to hold.
//!     pub target_temp_c: f64,
//! }
//!
//! pub struct MyHeat;
//!
//! impl ModalityPlugin for MyHeat {
//!     type Params = Params;
//!     fn info() -> PluginInfo {
//!         PluginInfo {
//!             id: "my-heat",
//!             name: "My heat pad",
//!             version: "1.0.0",
//!             vendor: "ACME",
//!             modality: ModalityKind::InfraredHeat,
//!             channels: vec![ChannelInfo::new("pad", ChannelKind::Heat, "heat pad")],
//!         }
//!     }
//!     fn sample_params() -> Params {
//!         Params { site: BodySite::region(BodyRegion::FootDorsum, Side::Left), target_temp_c: 39.0 }
//!     }
//!     fn plan(p: &Params, _: &Patient) -> Result<SessionPlan, PlanError> {
//!         Ok(SessionPlan {
//!             steps: vec![PlanStep {
//!                 offset_ms: 0,
//!                 duration_ms: 30 * 60_000,
//!                 channel: "pad".into(),
//!                 site: p.site.clone(),
//!                 setpoint: Setpoint::Heat(HeatSetpoint { target_temp_c: p.target_temp_c, power_limit_w: 5.0 }),
//!                 label: "hold".into(),
//!             }],
//!             notes: vec![],
//!         })
//!     }
//! }
//!
//! export_plugin!(MyHeat);
//!
//! // The same plugin, unit-tested natively:
//! let h = Harness::<MyHeat>::new();
//! let plan = h.plan_sample(&Patient::default()).expect("plans");
//! h.assert_conforms(&plan);
//! assert!(h.validate(r#"{"site": "nowhere:left", "target_temp_c": 39}"#).is_err());
//! ```
//!
//! **New here? Read the [`guide`]**: the contract, types, units and sites, native tests,
//! building, `modalis plugin check`, the sandbox, and how the governor treats a plan.
//! `modalis plugin new <name> --modality <kind>` scaffolds a plugin crate that passes every check.
//!
//! * [`types`]: manifests, plans, setpoints (units in the field names), telemetry.
//! * [`sites`]: the shared body-site vocabulary (regions and WHO acupuncture points).
//! * [`dose`]: energy, fluence, irradiance, r.m.s. current, charge per phase.
//! * [`harness`]: unit-test a plugin natively with `cargo test`.
//! * [`conformance`]: the structural checks `modalis plugin check` applies.
//!
//! The contract itself is the WIT package in [`WIT`] (`modalis:plugin@0.1.0`).

// Every public item is documented: vendors read these docs, not our source (`cargo doc` with
// `RUSTDOCFLAGS="-D warnings"` must stay clean too).
#![deny(missing_docs)]

pub mod conformance;
pub mod dose;
#[doc = include_str!("../PLUGIN-GUIDE.md")]
pub mod guide {}
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
