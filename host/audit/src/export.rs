//! `export`: records as JSON Lines or CSV, filtered by session and time.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use schemars::JsonSchema;
use serde::Serialize;

use crate::error::AuditError;
use crate::reader::AuditReader;
use crate::record::{Actor, ChainHash, Event, Outcome, Record};

/// Output format of [`export`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line, fields as in [`ExportLine`].
    Jsonl,
    /// A header and one row per record; structured fields as JSON text.
    Csv,
}

/// Which records [`export`] writes. Empty: all.
#[derive(Clone, Debug, Default)]
pub struct ExportFilter {
    /// Only records concerning this session.
    pub session: Option<String>,
    /// Only records appended at or after this Unix millisecond.
    pub since_ms: Option<u64>,
}

impl ExportFilter {
    fn admits(&self, r: &Record) -> bool {
        self.session
            .as_deref()
            .is_none_or(|s| r.session.as_deref() == Some(s))
            && self.since_ms.is_none_or(|t| r.wall_ms >= t)
    }
}

/// One exported record (JSON Lines). The chain fields come last so that a reader can check
/// the chain with the layout documented in `record.rs`.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "AuditExportRecord")]
pub struct ExportLine<'a> {
    /// Position in the log, dense from 0.
    pub seq: u64,
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    /// Wall-clock time the event was appended, Unix milliseconds.
    pub wall_ms: u64,
    /// Monotonic time the event was appended, nanoseconds since this controller run opened
    /// the log.
    pub mono_ns: u64,
    /// The controller id that wrote the record.
    pub controller: &'a str,
    /// Who caused the event.
    pub actor: &'a Actor,
    /// The session the record concerns, if any.
    pub session: &'a Option<String>,
    /// The device the record concerns, if any.
    pub device: &'a Option<String>,
    /// What happened.
    pub event: &'a Event,
    /// How it came out.
    pub outcome: Outcome,
    /// Details that differ by modality or plugin.
    pub payload: &'a serde_json::Value,
    /// Hash of record `seq - 1` (64 zeros for record 0).
    pub prev: ChainHash,
    /// This record's chain hash.
    pub hash: ChainHash,
}

impl<'a> ExportLine<'a> {
    pub fn of(r: &'a Record) -> Self {
        ExportLine {
            seq: r.seq,
            time: rfc3339(r.wall_ms),
            wall_ms: r.wall_ms,
            mono_ns: r.mono_ns,
            controller: &r.controller,
            actor: &r.actor,
            session: &r.session,
            device: &r.device,
            event: &r.event,
            outcome: r.outcome,
            payload: &r.payload,
            prev: r.prev,
            hash: r.hash,
        }
    }
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339(wall_ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(wall_ms)).to_string()
}

const CSV_HEADER: [&str; 15] = [
    "seq",
    "time",
    "controller",
    "actor_type",
    "actor_id",
    "actor_wasm_sha256",
    "session",
    "device",
    "event",
    "event_fields",
    "outcome",
    "payload",
    "mono_ns",
    "prev",
    "hash",
];

fn json_text<T: Serialize>(v: &T) -> Result<String, AuditError> {
    serde_json::to_string(v).map_err(AuditError::Encode)
}

fn csv_row(r: &Record) -> Result<Vec<String>, AuditError> {
    let (actor_type, actor_id, wasm) = match &r.actor {
        Actor::Operator { id } => ("operator", id.as_str(), ""),
        Actor::Plugin { id, wasm_sha256 } => ("plugin", id.as_str(), wasm_sha256.as_str()),
        Actor::Device { id } => ("device", id.as_str(), ""),
        Actor::Controller => ("controller", "", ""),
    };
    // The event's own fields without the `kind` tag, which has its own column.
    let mut fields = serde_json::to_value(&r.event).map_err(AuditError::Encode)?;
    if let Some(map) = fields.as_object_mut() {
        map.remove("kind");
    }
    let outcome = json_text(&r.outcome)?;
    Ok(vec![
        r.seq.to_string(),
        rfc3339(r.wall_ms),
        r.controller.clone(),
        actor_type.into(),
        actor_id.into(),
        wasm.into(),
        r.session.clone().unwrap_or_default(),
        r.device.clone().unwrap_or_default(),
        r.event.kind().into(),
        json_text(&fields)?,
        outcome.trim_matches('"').into(),
        json_text(&r.payload)?,
        r.mono_ns.to_string(),
        r.prev.to_hex(),
        r.hash.to_hex(),
    ])
}

/// Writes the records of the log in `dir` that pass `filter` to `out`; returns how many.
///
/// Every record is checked against the chain as it is read; export stops with
/// [`AuditError::Corrupt`] at the first bad one (run `verify` for the full diagnosis), so an
/// export never silently includes a changed record.
pub fn export(
    dir: &Path,
    filter: &ExportFilter,
    format: ExportFormat,
    out: &mut dyn Write,
) -> Result<u64, AuditError> {
    let reader = AuditReader::open(dir)?;
    let mut written = 0;
    let io = |e: std::io::Error| AuditError::io(Path::new("<export output>"), e);
    match format {
        ExportFormat::Jsonl => {
            for r in reader.records() {
                let r = r?;
                if filter.admits(&r) {
                    serde_json::to_writer(&mut *out, &ExportLine::of(&r))
                        .map_err(AuditError::Encode)?;
                    out.write_all(b"\n").map_err(io)?;
                    written += 1;
                }
            }
            out.flush().map_err(io)?;
        }
        ExportFormat::Csv => {
            let mut w = csv::Writer::from_writer(out);
            let csv_err = |e: csv::Error| AuditError::io(Path::new("<export output>"), e.into());
            w.write_record(CSV_HEADER).map_err(csv_err)?;
            for r in reader.records() {
                let r = r?;
                if filter.admits(&r) {
                    w.write_record(csv_row(&r)?).map_err(csv_err)?;
                    written += 1;
                }
            }
            w.flush().map_err(io)?;
        }
    }
    Ok(written)
}
