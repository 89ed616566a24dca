//! Verdicts and findings: every decision the governor makes, as data.
//!
//! The session runtime audits and publishes these, so they carry everything a reviewer needs:
//! the rule that decided, the reason in words, the numbers involved and the source of the limit.

use schemars::JsonSchema;
use serde::Serialize;

use crate::rules::Rule;

/// What the governor says about one step (or one finding), from mildest to hardest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Nothing to say.
    Allow,
    /// Allowed, but the clinician must read the warning before arming.
    AllowWithWarning,
    /// Allowed only with a smaller setpoint or a shorter duration, which the governor fixes.
    Clamp,
    /// Not allowed at all; a protocol with a refused step cannot be armed.
    Refuse,
}

impl Verdict {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::AllowWithWarning => "warn",
            Verdict::Clamp => "clamp",
            Verdict::Refuse => "refuse",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One named number involved in a decision, with its unit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, JsonSchema)]
pub struct Value {
    /// What the number is, e.g. `irradiance` or `limit`.
    pub name: &'static str,
    /// The number. Non-finite numbers serialise as JSON `null`.
    pub value: f64,
    /// Its unit, e.g. `mW/cm2`.
    pub unit: &'static str,
}

/// Shorthand for a [`Value`].
pub(crate) fn v(name: &'static str, value: f64, unit: &'static str) -> Value {
    Value { name, value, unit }
}

/// One rule's judgement on one step.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Finding {
    /// Stable rule id, e.g. `optical.mpe`.
    pub rule: &'static str,
    /// What this finding does to the step.
    pub verdict: Verdict,
    /// Why, in words, naming the site, the values and the limit.
    pub reason: String,
    /// The numbers involved.
    pub values: Vec<Value>,
    /// Where the limit comes from (clinical-facts.md row and the standard or paper it names).
    pub source: &'static str,
}

impl Finding {
    pub(crate) fn new(rule: Rule, verdict: Verdict, reason: String, values: Vec<Value>) -> Self {
        Finding {
            rule: rule.id,
            verdict,
            reason,
            values,
            source: rule.source,
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{}] {}: {} (source: {})",
            self.verdict, self.rule, self.reason, self.source
        )
    }
}
