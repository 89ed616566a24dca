//! Structural checks on manifests and plans that every plugin must pass.
//!
//! These are the checks `modalis plugin check` runs on a compiled plugin and that the native
//! [`harness`](crate::harness) runs in a vendor's `cargo test`, so a vendor sees the same verdict
//! in both places. They are about form, not safety: a well-formed plan can still be refused by
//! the governor.

use std::collections::{BTreeMap, HashSet};

use crate::types::{Manifest, SessionPlan, Setpoint};

/// One failed check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Short name of the check, e.g. `plan.overlap`.
    pub check: &'static str,
    /// Where: a manifest field or `steps[3]`.
    pub at: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}: {}", self.check, self.at, self.message)
    }
}

fn issue(check: &'static str, at: impl Into<String>, message: impl Into<String>) -> Issue {
    Issue {
        check,
        at: at.into(),
        message: message.into(),
    }
}

fn is_kebab_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Checks a manifest's own fields (not the schema's validity as JSON Schema, which needs a
/// validator the SDK does not carry; the host checks that).
pub fn check_manifest(m: &Manifest) -> Vec<Issue> {
    let mut out = Vec::new();
    if !is_kebab_id(&m.id) {
        out.push(issue(
            "manifest.id",
            "id",
            format!(
                "{:?} must be 1-64 characters of a-z, 0-9 and '-', not starting or ending with '-'",
                m.id
            ),
        ));
    }
    for (field, value) in [
        ("name", &m.name),
        ("version", &m.version),
        ("vendor", &m.vendor),
    ] {
        if value.trim().is_empty() {
            out.push(issue("manifest.field", field, "must not be empty"));
        }
    }
    if m.channels.is_empty() {
        out.push(issue(
            "manifest.channels",
            "channels",
            "a plugin must declare at least one channel",
        ));
    }
    let mut seen = HashSet::new();
    for (i, c) in m.channels.iter().enumerate() {
        if !is_kebab_id(&c.name) {
            out.push(issue(
                "manifest.channel-name",
                format!("channels[{i}].name"),
                format!("{:?} must be lower-case kebab", c.name),
            ));
        }
        if !seen.insert(c.name.as_str()) {
            out.push(issue(
                "manifest.channel-name",
                format!("channels[{i}].name"),
                format!("duplicate channel {:?}", c.name),
            ));
        }
        let expected: Vec<&str> = c.kind.units().to_vec();
        if c.units.iter().map(String::as_str).collect::<Vec<_>>() != expected {
            out.push(issue(
                "manifest.channel-units",
                format!("channels[{i}].units"),
                format!("{} channels take {:?}", c.kind, expected),
            ));
        }
    }
    match serde_json::from_str::<serde_json::Value>(&m.params_schema) {
        Ok(serde_json::Value::Object(_)) => {}
        Ok(_) => out.push(issue(
            "manifest.schema",
            "params_schema",
            "must be a JSON object (a JSON Schema document)",
        )),
        Err(e) => out.push(issue(
            "manifest.schema",
            "params_schema",
            format!("is not JSON: {e}"),
        )),
    }
    if let Err(e) = serde_json::from_str::<serde_json::Value>(&m.sample_params) {
        out.push(issue(
            "manifest.sample-params",
            "sample_params",
            format!("is not JSON: {e}"),
        ));
    }
    out
}

/// Checks a plan's form against the manifest: steps present, channels declared, setpoint kinds
/// matching their channels, finite non-negative numbers, positive durations, known sites, no
/// overlapping steps on one channel and no offset overflow.
pub fn check_plan(m: &Manifest, plan: &SessionPlan) -> Vec<Issue> {
    let mut out = Vec::new();
    if plan.steps.is_empty() {
        out.push(issue(
            "plan.empty",
            "steps",
            "a plan must have at least one step",
        ));
    }
    let mut by_channel: BTreeMap<&str, Vec<(u64, u64, usize)>> = BTreeMap::new();
    for (i, s) in plan.steps.iter().enumerate() {
        let at = format!("steps[{i}]");
        match m.channel(&s.channel) {
            None => out.push(issue(
                "plan.channel",
                &at,
                format!("channel {:?} is not declared in the manifest", s.channel),
            )),
            Some(c) => {
                if let Some(kind) = s.setpoint.channel_kind()
                    && kind != c.kind
                {
                    out.push(issue(
                        "plan.setpoint-kind",
                        &at,
                        format!("{kind} setpoint on {} channel {:?}", c.kind, c.name),
                    ));
                }
            }
        }
        if s.duration_ms == 0 {
            out.push(issue("plan.duration", &at, "duration_ms must be positive"));
        }
        if s.offset_ms.checked_add(s.duration_ms).is_none() {
            out.push(issue(
                "plan.overflow",
                &at,
                "offset_ms + duration_ms overflows",
            ));
        }
        if !s.site.is_known() {
            out.push(issue(
                "plan.site",
                &at,
                format!("site {} is not in the SDK's site vocabulary", s.site),
            ));
        }
        for (name, v) in s.setpoint.numbers() {
            if !v.is_finite() {
                out.push(issue(
                    "plan.finite",
                    format!("{at}.setpoint.{name}"),
                    format!("{v} is not a finite number"),
                ));
            } else if v < 0.0 {
                out.push(issue(
                    "plan.negative",
                    format!("{at}.setpoint.{name}"),
                    format!("{v} is negative"),
                ));
            }
        }
        if let Setpoint::Optical(o) = &s.setpoint
            && o.duty_cycle.is_finite()
            && (o.duty_cycle <= 0.0 || o.duty_cycle > 1.0)
        {
            out.push(issue(
                "plan.duty",
                format!("{at}.setpoint.duty_cycle"),
                "must be in (0, 1]",
            ));
        }
        by_channel
            .entry(s.channel.as_str())
            .or_default()
            .push((s.offset_ms, s.end_ms(), i));
    }
    for (ch, mut spans) in by_channel {
        spans.sort_unstable();
        for w in spans.windows(2) {
            let (a, b) = (w[0], w[1]);
            if b.0 < a.1 {
                out.push(issue(
                    "plan.overlap",
                    format!("steps[{}]", b.2),
                    format!(
                        "overlaps steps[{}] on channel {ch:?} ({}..{} ms and {}..{} ms)",
                        a.2, a.0, a.1, b.0, b.1
                    ),
                ));
            }
        }
    }
    out
}
