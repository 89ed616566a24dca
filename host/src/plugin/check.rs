//! `modalis plugin check`: the conformance checks a vendor can rely on.
//!
//! A plugin that passes loads in the sandbox, describes itself with a usable manifest and a
//! valid JSON Schema, validates and plans its sample (or given) parameters within the fuel and
//! memory budgets, returns a well-formed plan (no negative or overlapping steps on a channel,
//! finite numbers, known sites, declared channels), plans deterministically, and answers
//! `on-telemetry` with well-formed adjustments. Passing says nothing about safety: the
//! governor judges every plan against device profiles and the patient.

use std::fmt;
use std::path::Path;

use modalis_sdk::conformance::check_plan;
use modalis_sdk::{ChannelKind, Measurement, Patient, Setpoint, TelemetrySample};

use super::{Plugin, PluginError, PluginRuntime};

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckItem {
    /// Short name, e.g. `plan.well-formed`.
    pub name: &'static str,
    /// Passed?
    pub ok: bool,
    /// What was measured or what failed.
    pub detail: String,
}

/// All checks run on one plugin file.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// The plugin's label (`id@version`, or the file name if it never described itself).
    pub plugin: String,
    /// The checks, in the order run. A failed load ends the list.
    pub items: Vec<CheckItem>,
}

impl CheckReport {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        !self.items.is_empty() && self.items.iter().all(|i| i.ok)
    }

    fn push(&mut self, name: &'static str, ok: bool, detail: impl Into<String>) {
        self.items.push(CheckItem {
            name,
            ok,
            detail: detail.into(),
        });
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "plugin check: {}", self.plugin)?;
        for i in &self.items {
            writeln!(
                f,
                "  {} {:<22} {}",
                if i.ok { "PASS" } else { "FAIL" },
                i.name,
                i.detail
            )?;
        }
        let failed = self.items.iter().filter(|i| !i.ok).count();
        if failed == 0 {
            write!(f, "{} checks passed", self.items.len())
        } else {
            write!(f, "{failed} of {} checks failed", self.items.len())
        }
    }
}

/// Runs every check on the plugin at `path`, with `params` (JSON) or the plugin's own sample.
pub fn check_file(rt: &PluginRuntime, path: &Path, params: Option<&str>) -> CheckReport {
    let label = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    match std::fs::read(path) {
        Ok(bytes) => check_bytes(rt, &label, &bytes, params),
        Err(e) => {
            let mut r = CheckReport {
                plugin: label,
                items: Vec::new(),
            };
            r.push(
                "load",
                false,
                format!("cannot read {}: {e}", path.display()),
            );
            r
        }
    }
}

/// Runs every check on a plugin's bytes.
pub fn check_bytes(
    rt: &PluginRuntime,
    label: &str,
    bytes: &[u8],
    params: Option<&str>,
) -> CheckReport {
    let mut r = CheckReport {
        plugin: label.to_string(),
        items: Vec::new(),
    };
    let mut plugin = match rt.load_bytes(label, bytes) {
        Ok(p) => p,
        Err(e) => {
            let name = match &e {
                PluginError::BadSchema { .. } => "describe.schema",
                PluginError::BadManifest { .. } => "describe.manifest",
                PluginError::ContractVersion { .. } | PluginError::NotAPlugin { .. } => {
                    "load.contract"
                }
                PluginError::MissingImport { .. } => "load.imports",
                PluginError::FuelExhausted { .. }
                | PluginError::Deadline { .. }
                | PluginError::MemoryCap { .. }
                | PluginError::Trap { .. } => "describe",
                _ => "load",
            };
            r.push(name, false, e.to_string());
            return r;
        }
    };
    r.plugin = plugin.label().to_string();
    let m = plugin.manifest().clone();
    r.push(
        "load",
        true,
        format!(
            "component for modalis:plugin@{}, sha256 {}",
            modalis_sdk::CONTRACT_VERSION,
            &plugin.wasm_sha256()[..16]
        ),
    );
    r.push(
        "describe.manifest",
        true,
        format!(
            "{} ({}), {} channel(s)",
            m.name,
            m.modality,
            m.channels.len()
        ),
    );
    r.push(
        "describe.schema",
        true,
        "parameter schema is a valid JSON Schema",
    );

    let (params, source) = match params {
        Some(p) => (p.to_string(), "given parameters"),
        None => (m.sample_params.clone(), "sample parameters"),
    };
    match plugin.validate(&params) {
        Ok(Ok(())) => r.push(
            "validate",
            true,
            format!("{source} are valid{}", budget(&plugin, rt)),
        ),
        Ok(Err(errs)) => {
            let list = errs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            r.push("validate", false, format!("{source} rejected: {list}"));
            return r;
        }
        Err(e) => {
            r.push("validate", false, e.to_string());
            return r;
        }
    }
    let patient = Patient::default();
    let plan = match plugin.plan(&params, &patient) {
        Ok(Ok(plan)) => {
            r.push(
                "plan",
                true,
                format!(
                    "{} steps over {:.1} min{}",
                    plan.steps.len(),
                    plan.duration_ms() as f64 / 60_000.0,
                    budget(&plugin, rt)
                ),
            );
            plan
        }
        Ok(Err(e)) => {
            r.push("plan", false, format!("plan error: {e}"));
            return r;
        }
        Err(e) => {
            r.push("plan", false, e.to_string());
            return r;
        }
    };
    let issues = check_plan(&m, &plan);
    r.push(
        "plan.well-formed",
        issues.is_empty(),
        if issues.is_empty() {
            "declared channels, matching setpoint kinds, finite non-negative numbers, known sites, no overlaps".to_string()
        } else {
            issues.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
        },
    );
    match plugin.plan(&params, &patient) {
        Ok(Ok(again)) if again == plan => r.push(
            "plan.deterministic",
            true,
            "the same input planned twice gives the same plan",
        ),
        Ok(Ok(_)) => r.push(
            "plan.deterministic",
            false,
            "the same input planned twice gave different plans",
        ),
        Ok(Err(e)) => r.push(
            "plan.deterministic",
            false,
            format!("second plan failed: {e}"),
        ),
        Err(e) => r.push("plan.deterministic", false, e.to_string()),
    }
    check_telemetry(&mut r, &mut plugin, &plan);
    r
}

fn budget(p: &Plugin, rt: &PluginRuntime) -> String {
    match p.last_call() {
        Some(s) => format!(
            " (fuel {} of {}, memory {} KiB of {} KiB, {:.1} ms)",
            s.fuel_used,
            rt.limits().fuel_per_call,
            s.peak_memory_bytes / 1024,
            rt.limits().memory_bytes / 1024,
            s.elapsed.as_secs_f64() * 1000.0
        ),
        None => String::new(),
    }
}

/// Feeds the first energy step a plausible sample of its kind and checks the adjustments name
/// the step's channel and keep its setpoint kind.
fn check_telemetry(r: &mut CheckReport, plugin: &mut Plugin, plan: &modalis_sdk::SessionPlan) {
    let Some(step) = plan.steps.iter().find(|s| s.setpoint.is_energy()) else {
        r.push("on-telemetry", true, "no energy step to feed telemetry to");
        return;
    };
    let measurement = match step.setpoint {
        Setpoint::Heat(h) => Measurement::SkinTempC(h.target_temp_c - 0.5),
        Setpoint::Optical(o) => Measurement::OpticalPowerMw(o.power_mw),
        _ => Measurement::ImpedanceOhm(1000.0),
    };
    let sample = TelemetrySample {
        channel: step.channel.clone(),
        elapsed_ms: step.offset_ms + step.duration_ms / 2,
        measurement,
    };
    match plugin.on_telemetry(step, &sample) {
        Ok(adj) => {
            let kind: Option<ChannelKind> = step.setpoint.channel_kind();
            let bad: Vec<String> = adj
                .iter()
                .filter(|a| {
                    a.channel != step.channel
                        || (a.setpoint.is_energy() && a.setpoint.channel_kind() != kind)
                })
                .map(|a| {
                    format!(
                        "adjustment for {:?} with a {:?} setpoint",
                        a.channel,
                        a.setpoint.channel_kind()
                    )
                })
                .collect();
            r.push(
                "on-telemetry",
                bad.is_empty(),
                if bad.is_empty() {
                    format!(
                        "{} adjustment(s), all for the running step's channel and kind",
                        adj.len()
                    )
                } else {
                    bad.join("; ")
                },
            );
        }
        Err(e) => r.push("on-telemetry", false, e.to_string()),
    }
}
