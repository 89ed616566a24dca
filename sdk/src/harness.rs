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
//!
//! Beyond planning, the harness carries the checks every plugin crate wants once:
//! [`Harness::assert_params_documented`] (every parameter described, unknown fields refused) and
//! [`Harness::assert_example_file`] (a shipped parameters file validates, plans and conforms).

use std::marker::PhantomData;
use std::path::Path;

use serde_json::Value;

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

    /// Every property of the parameter schema, at any depth, that has no `description`, as a
    /// JSON-pointer path into the schema (e.g. `/$defs/Electrode/properties/channel`).
    ///
    /// The descriptions come from the doc comments on `P::Params` and its fields, and they are
    /// what clinics read in the schema when they write a protocol: a parameter without one is a
    /// bare name and number nobody can check against the device's manual. An empty list means
    /// every field at every depth is documented.
    ///
    /// # Panics
    ///
    /// If the manifest's `params_schema` is not JSON (the host's check would refuse the plugin).
    pub fn undocumented_params(&self) -> Vec<String> {
        let schema = self.params_schema();
        let mut missing = Vec::new();
        collect_undocumented(&schema, "", &mut missing);
        missing
    }

    /// Panics, listing every path [`undocumented_params`](Self::undocumented_params) reports,
    /// unless every parameter carries a description; and panics unless the root schema has
    /// `additionalProperties: false`, i.e. `P::Params` is `#[serde(deny_unknown_fields)]`.
    ///
    /// Together these are what a vendor owes the clinic: each parameter is explained in the
    /// schema, and a misspelt field in a protocol is an error rather than silently ignored (a
    /// typo in `"amplitude_ma"` must not fall back to a default dose).
    #[track_caller]
    pub fn assert_params_documented(&self) {
        let missing = self.undocumented_params();
        assert!(
            missing.is_empty(),
            "fields without a description: {missing:?}"
        );
        let schema = self.params_schema();
        assert_eq!(
            schema.get("additionalProperties"),
            Some(&Value::Bool(false)),
            "the parameter schema must refuse unknown fields (#[serde(deny_unknown_fields)])"
        );
    }

    /// Reads a parameters file (JSON, as a protocol block's parameters reach the plugin), and
    /// panics unless it validates, plans for [`Patient::default()`] and the plan conforms
    /// ([`assert_conforms`](Self::assert_conforms)). Returns the plan for further checks.
    ///
    /// Use it on the example parameters a vendor ships, so the file clinics copy from is known
    /// to work with this exact build of the plugin.
    #[track_caller]
    pub fn assert_example_file(&self, path: impl AsRef<Path>) -> SessionPlan {
        let path = path.as_ref();
        let json = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{} exists: {e}", path.display()));
        if let Err(errs) = self.validate(&json) {
            panic!("{} validates: {errs:?}", path.display());
        }
        let plan = self
            .plan(&json, &Patient::default())
            .unwrap_or_else(|e| panic!("{} plans: {e:?}", path.display()));
        self.assert_conforms(&plan);
        plan
    }

    fn params_schema(&self) -> Value {
        serde_json::from_str(&self.describe().params_schema).expect("params_schema is JSON")
    }
}

/// Walks `v` (at `path`), pushing the path of every entry of a `properties` object that has no
/// `description`.
fn collect_undocumented(v: &Value, path: &str, missing: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(props)) = m.get("properties") {
                for (k, p) in props {
                    if p.get("description").is_none() {
                        missing.push(format!("{path}/properties/{}", pointer_token(k)));
                    }
                }
            }
            for (k, c) in m {
                collect_undocumented(c, &format!("{path}/{}", pointer_token(k)), missing);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                collect_undocumented(c, &format!("{path}/{i}"), missing);
            }
        }
        _ => {}
    }
}

/// A key as a JSON-pointer reference token (RFC 6901: `~` as `~0`, `/` as `~1`).
fn pointer_token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prelude::*;

    /// Documented at every depth, unknown fields refused.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Documented {
        /// Where the pad goes.
        site: BodySite,
        /// The pad.
        pad: DocumentedPad,
    }

    /// A pad.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct DocumentedPad {
        /// Skin temperature to hold.
        target_temp_c: f64,
    }

    /// One field at the root and one nested lack a description.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Undocumented {
        /// Where the pad goes.
        site: BodySite,
        pad: UndocumentedPad,
    }

    /// A pad.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    struct UndocumentedPad {
        target_temp_c: f64,
    }

    /// Documented, but unknown fields are ignored.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    struct Open {
        /// Where the pad goes.
        site: BodySite,
    }

    #[derive(Debug)]
    struct Heat<T>(PhantomData<T>);

    fn site() -> BodySite {
        BodySite::region(BodyRegion::FootDorsum, Side::Left)
    }

    /// The sample parameters of each test type.
    trait Sample {
        fn sample() -> Self;
    }

    impl Sample for Documented {
        fn sample() -> Self {
            Documented {
                site: site(),
                pad: DocumentedPad {
                    target_temp_c: 39.0,
                },
            }
        }
    }

    impl Sample for Undocumented {
        fn sample() -> Self {
            Undocumented {
                site: site(),
                pad: UndocumentedPad {
                    target_temp_c: 39.0,
                },
            }
        }
    }

    impl Sample for Open {
        fn sample() -> Self {
            Open { site: site() }
        }
    }

    impl<T> ModalityPlugin for Heat<T>
    where
        T: Sample + serde::de::DeserializeOwned + Serialize + JsonSchema,
    {
        type Params = T;
        fn info() -> PluginInfo {
            PluginInfo {
                id: "test-heat",
                name: "Test heat pad",
                version: "1.0.0",
                vendor: "ACME",
                modality: ModalityKind::InfraredHeat,
                channels: vec![ChannelInfo::new("pad", ChannelKind::Heat, "heat pad")],
            }
        }
        fn sample_params() -> T {
            T::sample()
        }
        fn plan(_: &T, _: &Patient) -> Result<SessionPlan, PlanError> {
            Ok(SessionPlan {
                steps: vec![PlanStep {
                    offset_ms: 0,
                    duration_ms: 60_000,
                    channel: "pad".into(),
                    site: site(),
                    setpoint: Setpoint::Heat(HeatSetpoint {
                        target_temp_c: 39.0,
                        power_limit_w: 5.0,
                    }),
                    label: "hold".into(),
                }],
                notes: vec![],
            })
        }
    }

    #[test]
    fn documented_params_pass() {
        let h = Harness::<Heat<Documented>>::new();
        assert_eq!(h.undocumented_params(), Vec::<String>::new());
        h.assert_params_documented();
    }

    #[test]
    fn undocumented_params_are_reported_with_their_paths() {
        let h = Harness::<Heat<Undocumented>>::new();
        assert_eq!(
            h.undocumented_params(),
            [
                "/properties/pad",
                "/$defs/UndocumentedPad/properties/target_temp_c"
            ]
        );
    }

    #[test]
    #[should_panic(
        expected = "fields without a description: [\"/properties/pad\", \"/$defs/UndocumentedPad/properties/target_temp_c\"]"
    )]
    fn assert_params_documented_lists_the_undocumented() {
        Harness::<Heat<Undocumented>>::new().assert_params_documented();
    }

    #[test]
    #[should_panic(expected = "must refuse unknown fields")]
    fn assert_params_documented_requires_deny_unknown_fields() {
        let h = Harness::<Heat<Open>>::new();
        assert!(h.undocumented_params().is_empty());
        h.assert_params_documented();
    }

    #[test]
    fn pointer_tokens_are_escaped() {
        let schema = serde_json::json!({
            "properties": { "a/b": {}, "c~d": { "description": "ok" } }
        });
        let mut missing = Vec::new();
        collect_undocumented(&schema, "", &mut missing);
        assert_eq!(missing, ["/properties/a~1b"]);
    }

    #[test]
    fn example_file_validates_plans_and_conforms() {
        let dir = std::env::temp_dir().join(format!("modalis-harness-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let good = dir.join("good.json");
        std::fs::write(
            &good,
            r#"{"site": "foot_dorsum:left", "pad": {"target_temp_c": 39}}"#,
        )
        .expect("write");
        let plan = Harness::<Heat<Documented>>::new().assert_example_file(&good);
        assert_eq!(plan.duration_ms(), 60_000);

        let bad = dir.join("bad.json");
        std::fs::write(&bad, r#"{"site": "foot_dorsum:left", "pad": {"temp": 39}}"#)
            .expect("write");
        let caught = std::panic::catch_unwind(|| {
            Harness::<Heat<Documented>>::new().assert_example_file(&bad);
        });
        let _ = std::fs::remove_dir_all(&dir);
        let message = caught
            .expect_err("an invalid example file panics")
            .downcast::<String>()
            .expect("a formatted message");
        assert!(
            message.contains("bad.json validates") && message.contains("/pad/temp"),
            "{message}"
        );
    }
}
