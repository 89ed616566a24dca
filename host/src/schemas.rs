//! The JSON Schemas modalis publishes: one registry, generated with schemars from the code's
//! own types, that `schemas/` is written from, `modalis schema` prints, and the freshness
//! test compares with the committed files.
//!
//! | name | from |
//! |---|---|
//! | `protocol`, `device-profile`, `patient-context` | the files a clinic writes, from the loaders' own types |
//! | `dose-report`, `audit-export-record` | what the clinic and the auditor read |
//! | `plugin-*`, `session-plan`, `plan-error`, `field-error` | the plugin contract (`modalis-sdk`) |
//! | `mqtt/*` | every MQTT payload, named after its topic ([`crate::bus::payload::schemas`]) |
//! | `plugins/<id>.params` | each bundled plugin's parameters, as it describes itself in the sandbox |
//!
//! A schema's name is its path under `schemas/` without `.schema.json`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::plugin::{PluginError, PluginRuntime};

/// One published schema.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaEntry {
    /// What `modalis schema` calls it: the path without `.schema.json`, e.g. `mqtt/state`.
    pub name: String,
    /// Its file, relative to `schemas/`.
    pub path: PathBuf,
    /// The schema.
    pub schema: serde_json::Value,
}

impl SchemaEntry {
    fn new(name: &str, schema: schemars::Schema) -> SchemaEntry {
        SchemaEntry::from_value(name, schema.to_value())
    }

    fn from_value(name: &str, schema: serde_json::Value) -> SchemaEntry {
        SchemaEntry {
            name: name.to_string(),
            path: PathBuf::from(format!("{name}.schema.json")),
            schema,
        }
    }

    /// The file's text: pretty JSON with a final newline.
    pub fn text(&self) -> String {
        // A `serde_json::Value` always serialises.
        let mut s = serde_json::to_string_pretty(&self.schema).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// Every schema that needs no plugin loaded, by name.
pub fn all() -> Vec<SchemaEntry> {
    use modalis_sdk::{
        Adjustment, FieldError, Manifest, Patient, PlanError, SessionPlan, TelemetrySample,
    };
    let mut out = vec![
        // The files a clinic writes.
        SchemaEntry::new("protocol", crate::protocol::Protocol::file_schema()),
        SchemaEntry::new(
            "device-profile",
            modalis_governor::DeviceProfile::file_schema(),
        ),
        SchemaEntry::new(
            "patient-context",
            schemars::schema_for!(modalis_governor::PatientContext),
        ),
        // What the clinic and the auditor read.
        SchemaEntry::new(
            "dose-report",
            schemars::schema_for!(modalis_governor::DoseReport),
        ),
        SchemaEntry::new(
            "audit-export-record",
            schemars::schema_for!(modalis_audit::ExportLine<'static>),
        ),
        // The plugin contract.
        SchemaEntry::new("plugin-manifest", schemars::schema_for!(Manifest)),
        SchemaEntry::new("session-plan", schemars::schema_for!(SessionPlan)),
        SchemaEntry::new("plan-error", schemars::schema_for!(PlanError)),
        SchemaEntry::new("field-error", schemars::schema_for!(FieldError)),
        SchemaEntry::new("plugin-patient", schemars::schema_for!(Patient)),
        SchemaEntry::new(
            "plugin-telemetry-sample",
            schemars::schema_for!(TelemetrySample),
        ),
        SchemaEntry::new("plugin-adjustment", schemars::schema_for!(Adjustment)),
    ];
    // Every MQTT payload, named after its topic pattern without the id levels
    // (`device/{device}/telemetry` -> `mqtt/device-telemetry`).
    for (pattern, schema) in crate::bus::payload::schemas() {
        let levels: Vec<&str> = pattern
            .split('/')
            .filter(|level| !level.starts_with('{'))
            .collect();
        out.push(SchemaEntry::new(
            &format!("mqtt/{}", levels.join("-")),
            schema,
        ));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// A bundled plugin whose parameter schema cannot be published.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The plugin did not load.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// Its parameter schema is not JSON (the runtime refuses such a plugin at load, so this
    /// names a broken invariant rather than a user's mistake).
    #[error("plugin {plugin}: parameter schema is not JSON: {message}")]
    NotJson {
        /// The plugin id.
        plugin: String,
        /// The parser's message.
        message: String,
    },
}

/// Each bundled first-party plugin's parameter schema (`plugins/<id>.params`), as the plugin
/// describes itself through the sandbox.
pub fn plugin_params(rt: &PluginRuntime) -> Result<Vec<SchemaEntry>, RegistryError> {
    let mut out = Vec::new();
    for a in modalis_plugin_artifacts::FIRST_PARTY {
        let p = rt.load_bytes(a.package, a.bytes)?;
        let m = p.manifest();
        let schema =
            serde_json::from_str(&m.params_schema).map_err(|e| RegistryError::NotJson {
                plugin: m.id.clone(),
                message: e.to_string(),
            })?;
        out.push(SchemaEntry::from_value(
            &format!("plugins/{}.params", m.id),
            schema,
        ));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// [`all`] and [`plugin_params`]: everything `schemas/` holds, by name.
pub fn with_plugins(rt: &PluginRuntime) -> Result<Vec<SchemaEntry>, RegistryError> {
    let mut out = all();
    out.extend(plugin_params(rt)?);
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The name a user may give for a schema: its name, or its file (`mqtt/state.schema.json`,
/// `schemas/mqtt/state.schema.json`).
pub fn normalise_name(name: &str) -> &str {
    let name = name.strip_prefix("schemas/").unwrap_or(name);
    name.strip_suffix(".schema.json").unwrap_or(name)
}

/// Paths under `schemas/` that are not generated from this registry and are owned elsewhere:
/// the AsyncAPI document and the example payloads.
pub fn is_foreign(rel: &Path) -> bool {
    rel == Path::new("asyncapi.yaml") || rel.starts_with("examples")
}

/// What is wrong with a committed `schemas/` folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Staleness {
    /// A generated schema has no committed file.
    Missing(PathBuf),
    /// The committed file differs; `diff` shows the first differing lines.
    Differs {
        /// The file, relative to `schemas/`.
        path: PathBuf,
        /// A unified-style hunk around the first difference.
        diff: String,
    },
    /// A committed file that nothing generates any more (and no one else owns).
    Orphan(PathBuf),
}

impl std::fmt::Display for Staleness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Staleness::Missing(p) => write!(f, "schemas/{} is missing", p.display()),
            Staleness::Differs { path, diff } => {
                write!(f, "schemas/{} is stale:\n{diff}", path.display())
            }
            Staleness::Orphan(p) => write!(
                f,
                "schemas/{} is not generated by anything (remove it)",
                p.display()
            ),
        }
    }
}

/// Every file under `dir`, relative to it, sorted.
fn files_under(dir: &Path) -> std::io::Result<BTreeSet<PathBuf>> {
    let mut out = BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                todo.push(path);
            } else if let Ok(rel) = path.strip_prefix(dir) {
                out.insert(rel.to_path_buf());
            }
        }
    }
    Ok(out)
}

/// Compares `dir` (a committed `schemas/`) with `entries`: missing, differing and orphaned
/// files, leaving [`is_foreign`] paths out.
pub fn compare(dir: &Path, entries: &[SchemaEntry]) -> std::io::Result<Vec<Staleness>> {
    let committed = if dir.exists() {
        files_under(dir)?
    } else {
        BTreeSet::new()
    };
    let mut out = Vec::new();
    for e in entries {
        if !committed.contains(&e.path) {
            out.push(Staleness::Missing(e.path.clone()));
            continue;
        }
        let text = std::fs::read_to_string(dir.join(&e.path))?;
        let generated = e.text();
        if text != generated {
            out.push(Staleness::Differs {
                path: e.path.clone(),
                diff: first_hunk(&text, &generated),
            });
        }
    }
    let generated: BTreeSet<&Path> = entries.iter().map(|e| e.path.as_path()).collect();
    for rel in &committed {
        if !generated.contains(rel.as_path()) && !is_foreign(rel) {
            out.push(Staleness::Orphan(rel.clone()));
        }
    }
    Ok(out)
}

/// Writes every entry under `dir` and removes orphans (never [`is_foreign`] paths).
pub fn bless(dir: &Path, entries: &[SchemaEntry]) -> std::io::Result<()> {
    for problem in compare(dir, entries)? {
        if let Staleness::Orphan(rel) = problem {
            std::fs::remove_file(dir.join(rel))?;
        }
    }
    for e in entries {
        let path = dir.join(&e.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, e.text())?;
    }
    Ok(())
}

/// The first difference between two texts as a unified-diff hunk: up to three lines of
/// context, then the differing lines of each (at most twelve each; the common tail is
/// trimmed so that an inserted line shows as one `+`).
pub fn first_hunk(old: &str, new: &str) -> String {
    const CONTEXT: usize = 3;
    const MAX: usize = 12;
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let start = prefix.saturating_sub(CONTEXT);
    let mut out = format!(
        "--- committed\n+++ generated\n@@ -{} +{} @@\n",
        start + 1,
        start + 1
    );
    for line in &a[start..prefix] {
        out.push_str(&format!(" {line}\n"));
    }
    for (sign, lines) in [
        ('-', &a[prefix..a.len() - suffix]),
        ('+', &b[prefix..b.len() - suffix]),
    ] {
        for line in lines.iter().take(MAX) {
            out.push_str(&format!("{sign}{line}\n"));
        }
        if lines.len() > MAX {
            out.push_str(&format!("{sign}... ({} more lines)\n", lines.len() - MAX));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_match_their_paths() {
        let entries = all();
        let names: BTreeSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names.len(), entries.len());
        for e in &entries {
            assert_eq!(e.path, PathBuf::from(format!("{}.schema.json", e.name)));
        }
        for name in [
            "protocol",
            "device-profile",
            "patient-context",
            "mqtt/state",
        ] {
            assert!(names.contains(name), "{name}");
        }
    }

    #[test]
    fn a_hunk_shows_the_changed_lines_with_context() {
        let old = "a\nb\nc\nd\ne\nf\n";
        let new = "a\nb\nc\nd\nE\nf\n";
        assert_eq!(
            first_hunk(old, new),
            "--- committed\n+++ generated\n@@ -2 +2 @@\n b\n c\n d\n-e\n+E\n"
        );
        // An insertion is one `+` line.
        assert!(first_hunk("a\nc\n", "a\nb\nc\n").ends_with(" a\n+b\n"));
    }

    #[test]
    fn user_spellings_of_a_name() {
        assert_eq!(
            normalise_name("schemas/mqtt/state.schema.json"),
            "mqtt/state"
        );
        assert_eq!(normalise_name("protocol"), "protocol");
    }
}
