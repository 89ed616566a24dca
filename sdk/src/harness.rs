//! A native test harness: unit-test a plugin's logic with plain `cargo test`, no host needed.
//!
//! ```text
//! #[test]
//! fn sample_plans_and_conforms() {
//!     let h = Harness::<MyPlugin>::new();
//!     let plan = h.plan_sample(&Patient::default()).expect("plans");
//!     h.assert_conforms(&plan);
//! }
//! ```
//!
//! The crate-level example shows the same thing end to end, as a doctest that runs.

use std::marker::PhantomData;

use crate::conformance::{self, Issue};
use crate::plugin::{self, ModalityPlugin};
use crate::types::{FieldError, Manifest, Patient, PlanError, SessionPlan};

/// Drives a [`ModalityPlugin`] the way the host does, through JSON, natively.
#[derive(Debug)]
pub struct Harness<P>(PhantomData<P>);

impl<P: ModalityPlugin> Default for Harness<P> {
    fn default() -> Self {
        Harness(PhantomData)
    }
}

impl<P: ModalityPlugin> Harness<P> {
    /// A harness for `P`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The manifest the host would receive from `describe()`.
    pub fn describe(&self) -> Manifest {
        plugin::describe::<P>()
    }

    /// `validate` as the host calls it.
    pub fn validate(&self, params_json: &str) -> Result<(), Vec<FieldError>> {
        plugin::validate_json::<P>(params_json)
    }

    /// `plan` as the host calls it.
    pub fn plan(&self, params_json: &str, patient: &Patient) -> Result<SessionPlan, PlanError> {
        plugin::plan_json::<P>(params_json, patient)
    }

    /// `plan` on the manifest's sample parameters.
    pub fn plan_sample(&self, patient: &Patient) -> Result<SessionPlan, PlanError> {
        self.plan(&self.describe().sample_params, patient)
    }

    /// The conformance issues `modalis plugin check` would report for this plan (apart from the
    /// JSON Schema meta-validation the host adds).
    pub fn conformance(&self, plan: &SessionPlan) -> Vec<Issue> {
        let m = self.describe();
        let mut issues = conformance::check_manifest(&m);
        issues.extend(conformance::check_plan(&m, plan));
        issues
    }

    /// Panics with every issue listed when the manifest or plan would fail the host's check.
    #[track_caller]
    pub fn assert_conforms(&self, plan: &SessionPlan) {
        let issues = self.conformance(plan);
        assert!(
            issues.is_empty(),
            "plugin does not conform:\n{}",
            issues
                .iter()
                .map(|i| format!("  {i}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
