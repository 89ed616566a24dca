//! The dose report: what the clinic reads before arming. JSON through `serde`, a table
//! through `Display`.

use std::fmt;

use schemars::JsonSchema;
use serde::Serialize;

use modalis_sdk::{BodySite, ModalityKind, Sensation};

use crate::precheck::{StepRef, StepVerdict};
use crate::verdict::{Finding, Verdict};

/// One finding, attached to the site it concerns.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ReportFinding {
    /// The step.
    pub step: StepRef,
    /// Rule id.
    pub rule: &'static str,
    /// What it did.
    pub verdict: Verdict,
    /// Why.
    pub reason: String,
    /// Source of the limit.
    pub source: &'static str,
}

/// Everything delivered at one (canonical) site.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct SiteReport {
    /// The site the ledger counts (Bafeng 1 is counted as LR2).
    pub site: BodySite,
    /// The names the plans used for it.
    pub names: Vec<String>,
    /// Sensation there.
    pub sensation: Option<Sensation>,
    /// Modalities that will act there.
    pub modalities: Vec<ModalityKind>,
    /// Optical energy this session, J.
    pub energy_j: f64,
    /// Optical fluence this session, J/cm2 (on the worst-case spot or the scan area).
    pub fluence_j_per_cm2: f64,
    /// Optical energy delivered earlier today, J.
    pub prior_energy_j: f64,
    /// Optical fluence delivered earlier today, J/cm2.
    pub prior_fluence_j_per_cm2: f64,
    /// Energy today including this session, J.
    pub day_energy_j: f64,
    /// Fluence today including this session, J/cm2.
    pub day_fluence_j_per_cm2: f64,
    /// Hot-spot estimate for today: this site plus overlapping regions (and the most-dosed
    /// point inside a region), J/cm2.
    pub peak_fluence_j_per_cm2: f64,
    /// Highest irradiance of any optical step, mW/cm2.
    pub peak_irradiance_mw_per_cm2: f64,
    /// Energised time, all modalities, ms.
    pub energised_ms: u64,
    /// Highest heat target, C.
    pub max_target_temp_c: Option<f64>,
    /// Skin temperature alarm level that will apply, C.
    pub skin_alarm_c: Option<f64>,
    /// Skin temperature cut-off that will apply, C.
    pub skin_cutoff_c: Option<f64>,
    /// Highest TENS r.m.s. current, mA.
    pub max_tens_rms_ma: Option<f64>,
    /// Heat sessions earlier today.
    pub prior_heat_sessions: u32,
    /// Hardest verdict among the findings here.
    pub verdict: Verdict,
    /// Every warning, clamp and refusal here.
    pub findings: Vec<ReportFinding>,
}

/// Counts of step verdicts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Counts {
    /// Allowed.
    pub allow: usize,
    /// Allowed with a warning.
    pub warn: usize,
    /// Clamped.
    pub clamp: usize,
    /// Refused.
    pub refuse: usize,
}

/// The dose report.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct DoseReport {
    /// Pseudonymous patient id.
    pub patient_id: String,
    /// Whether the protocol may be armed (nothing refused).
    pub armable: bool,
    /// The hardest verdict of all.
    pub verdict: Verdict,
    /// Step verdict counts.
    pub counts: Counts,
    /// Protocol-level findings.
    pub protocol_findings: Vec<Finding>,
    /// Per site.
    pub sites: Vec<SiteReport>,
}

impl DoseReport {
    pub(crate) fn new(
        patient_id: String,
        steps: &[StepVerdict],
        protocol: &[Finding],
        sites: Vec<SiteReport>,
    ) -> Self {
        let mut counts = Counts::default();
        for s in steps {
            match s.verdict {
                Verdict::Allow => counts.allow += 1,
                Verdict::AllowWithWarning => counts.warn += 1,
                Verdict::Clamp => counts.clamp += 1,
                Verdict::Refuse => counts.refuse += 1,
            }
        }
        let verdict = steps
            .iter()
            .map(|s| s.verdict)
            .chain(protocol.iter().map(|f| f.verdict))
            .max()
            .unwrap_or(Verdict::Allow);
        DoseReport {
            patient_id,
            armable: verdict != Verdict::Refuse,
            verdict,
            counts,
            protocol_findings: protocol.to_vec(),
            sites,
        }
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        // Serialising plain data with string keys cannot fail; fall back to a marker anyway
        // rather than panic.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// The site report for a site (by its canonical name).
    pub fn site(&self, site: &BodySite) -> Option<&SiteReport> {
        let c = site.canonical();
        self.sites.iter().find(|s| s.site == c)
    }
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.prec$}"))
}

impl fmt::Display for DoseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Dose report for patient {}: {} ({} allowed, {} with warnings, {} clamped, {} refused)",
            self.patient_id,
            if self.armable {
                "CAN BE ARMED"
            } else {
                "CANNOT BE ARMED"
            },
            self.counts.allow,
            self.counts.warn,
            self.counts.clamp,
            self.counts.refuse
        )?;
        writeln!(
            f,
            "{:<26} {:<9} {:<34} {:>8} {:>8} {:>8} {:>9} {:>8} {:>7} {:>11} {:>7}  verdict",
            "site",
            "sensation",
            "modalities",
            "E J",
            "F J/cm2",
            "day F",
            "peak mW/cm2",
            "time s",
            "T max",
            "alarm/stop",
            "I rms"
        )?;
        for s in &self.sites {
            let mods: Vec<&str> = s.modalities.iter().map(|m| m.as_str()).collect();
            let sens = s.sensation.map_or("?", |x| match x {
                Sensation::Normal => "normal",
                Sensation::Reduced => "reduced",
                Sensation::Absent => "absent",
            });
            let name = site_label(s);
            writeln!(
                f,
                "{:<26} {:<9} {:<34} {:>8.2} {:>8.2} {:>8.2} {:>9.1} {:>8.0} {:>7} {:>11} {:>7}  {}",
                name,
                sens,
                if mods.is_empty() {
                    "-".to_string()
                } else {
                    mods.join(",")
                },
                s.energy_j,
                s.fluence_j_per_cm2,
                s.peak_fluence_j_per_cm2,
                s.peak_irradiance_mw_per_cm2,
                s.energised_ms as f64 / 1000.0,
                opt(s.max_target_temp_c, 1),
                format!("{}/{}", opt(s.skin_alarm_c, 0), opt(s.skin_cutoff_c, 0)),
                opt(s.max_tens_rms_ma, 1),
                s.verdict
            )?;
        }
        for p in &self.protocol_findings {
            writeln!(f, "  protocol: {p}")?;
        }
        for s in &self.sites {
            // Named as in the table: a finding's reason names the site as the step wrote it,
            // which for an alias (a step on EX-LE10-1 counted under LR2) is not the canonical
            // name alone.
            let name = site_label(s);
            for (x, steps) in group_findings(&s.findings) {
                writeln!(
                    f,
                    "  {} {} [{}] {}: {} (source: {})",
                    name, steps, x.verdict, x.rule, x.reason, x.source
                )?;
            }
        }
        Ok(())
    }
}

/// A site's canonical name, with the other names its steps used: `LR2:left (= EX-LE10-1:left)`
/// (Bafeng 1, 2 and 4 are LR2, ST44 and GB43, one place, one ledger).
fn site_label(s: &SiteReport) -> String {
    let name = s.site.to_string();
    let aliases: Vec<&str> = s
        .names
        .iter()
        .filter(|n| **n != name)
        .map(String::as_str)
        .collect();
    if aliases.is_empty() {
        name
    } else {
        format!("{name} (= {})", aliases.join(", "))
    }
}

/// Findings that say the same thing (rule, verdict, reason, source) about several steps at one
/// site, printed once with the steps listed: a 30-step heat block otherwise repeats one
/// precaution override 30 times and buries the findings a clinician must read.
fn group_findings(findings: &[ReportFinding]) -> Vec<(&ReportFinding, String)> {
    let mut groups: Vec<(&ReportFinding, Vec<&StepRef>)> = Vec::new();
    for x in findings {
        match groups.iter_mut().find(|(g, _)| {
            g.rule == x.rule
                && g.verdict == x.verdict
                && g.reason == x.reason
                && g.source == x.source
        }) {
            Some((_, steps)) => steps.push(&x.step),
            None => groups.push((x, vec![&x.step])),
        }
    }
    groups
        .into_iter()
        .map(|(x, steps)| (x, step_ranges(&steps)))
        .collect()
}

/// `heat#0-6, lllt#1, lllt#3` from step references: runs of consecutive indices in one block
/// become a range.
fn step_ranges(steps: &[&StepRef]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < steps.len() {
        let first = steps[i];
        let mut last = first;
        while let Some(next) = steps.get(i + 1) {
            if next.block_id == last.block_id && next.step_index == last.step_index + 1 {
                last = next;
                i += 1;
            } else {
                break;
            }
        }
        out.push(if last.step_index == first.step_index {
            first.to_string()
        } else {
            format!("{first}-{}", last.step_index)
        });
        i += 1;
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(block: &str, index: usize, rule: &'static str) -> ReportFinding {
        ReportFinding {
            step: StepRef {
                block_id: block.to_string(),
                step_index: index,
            },
            rule,
            verdict: Verdict::AllowWithWarning,
            reason: "same words".to_string(),
            source: "clinical-facts.md",
        }
    }

    #[test]
    fn repeated_findings_print_once_with_their_steps_as_ranges() {
        let findings = vec![
            finding("heat", 0, "precaution.override"),
            finding("heat", 1, "precaution.override"),
            finding("heat", 2, "precaution.override"),
            finding("lllt", 1, "optical.dose_window"),
            finding("lllt", 1, "precaution.override"),
            finding("lllt", 3, "precaution.override"),
        ];
        let grouped: Vec<(&'static str, String)> = group_findings(&findings)
            .into_iter()
            .map(|(x, steps)| (x.rule, steps))
            .collect();
        assert_eq!(
            grouped,
            vec![
                (
                    "precaution.override",
                    "heat#0-2, lllt#1, lllt#3".to_string()
                ),
                ("optical.dose_window", "lllt#1".to_string()),
            ]
        );
    }
}
