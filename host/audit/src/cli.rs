//! The `modalis audit ...` subcommands. The host binary mounts [`AuditCommand`] and calls
//! [`run`]; everything else lives here.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

use crate::export::{ExportFilter, ExportFormat, ExportLine, export};
use crate::keys;
use crate::reader::AuditReader;
use crate::verify::{VerifyOptions, verify_with};

/// Where the controller keeps its audit log unless told otherwise, relative to the working
/// directory it runs in.
pub const DEFAULT_DB: &str = "./modalis-data/audit";

/// `modalis audit <command>`.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain and the signed checkpoints; exit 1 at the first bad record.
    ///
    /// Needs the controller stopped (sled lets one process open the log).
    Verify {
        /// The audit log directory.
        #[arg(long, default_value = DEFAULT_DB)]
        db: PathBuf,
        /// Check checkpoint signatures against this public key (64 hex characters) instead
        /// of the controller.pub file beside the log.
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Write records as JSON Lines or CSV to stdout; stops with an error at a bad record.
    Export {
        /// The audit log directory.
        #[arg(long, default_value = DEFAULT_DB)]
        db: PathBuf,
        /// Only records concerning this session id.
        #[arg(long)]
        session: Option<String>,
        /// Only records from this time on: RFC 3339 (2026-03-01T09:00:00Z) or a duration
        /// ago (90m, 2h, 7days).
        #[arg(long, value_parser = parse_since)]
        since: Option<u64>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
    },
    /// Print the last records as JSON Lines, then new ones as they are appended, until
    /// interrupted.
    Tail {
        /// The audit log directory.
        #[arg(long, default_value = DEFAULT_DB)]
        db: PathBuf,
        /// Start at this sequence number instead of the last --lines records.
        #[arg(long)]
        from: Option<u64>,
        /// How many existing records to show first.
        #[arg(long, default_value_t = 10)]
        lines: u64,
    },
    /// Print the controller's checkpoint-signing public key (hex). Works while the
    /// controller runs; write it down somewhere the controller cannot change.
    PublicKey {
        /// The audit log directory.
        #[arg(long, default_value = DEFAULT_DB)]
        db: PathBuf,
    },
}

/// Runs a command, writing to stdout.
pub fn run(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    run_to(cmd, &mut out)
}

/// Runs a command, writing its output to `out`. `verify` returns exit code 1 for a damaged
/// log; errors (log missing, locked, unreadable) come back as `Err`.
pub fn run_to(cmd: AuditCommand, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Verify { db, public_key } => {
            let public_key = public_key
                .map(|k| keys::parse_public(&k))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--public-key: {e}"))?;
            let report = verify_with(&db, &VerifyOptions { public_key })
                .with_context(|| format!("verifying the audit log in {}", db.display()))?;
            writeln!(out, "{report}")?;
            Ok(if report.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        AuditCommand::Export {
            db,
            session,
            since,
            format,
        } => {
            let filter = ExportFilter {
                session,
                since_ms: since,
            };
            export(&db, &filter, format, out)
                .with_context(|| format!("exporting the audit log in {}", db.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Tail { db, from, lines } => {
            let reader = AuditReader::open(&db)
                .with_context(|| format!("opening the audit log in {}", db.display()))?;
            let start = match from {
                Some(f) => f,
                None => reader.len()?.saturating_sub(lines),
            };
            let mut follow = reader.follow(start)?;
            loop {
                if let Some(r) = follow.next_timeout(Duration::from_secs(1))? {
                    serde_json::to_writer(&mut *out, &ExportLine::of(&r))?;
                    writeln!(out)?;
                    out.flush()?;
                }
            }
        }
        AuditCommand::PublicKey { db } => {
            let key = keys::read_public(&db)?;
            writeln!(out, "{}", hex::encode(key.as_bytes()))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `--since`: an RFC 3339 time or a duration before now, as Unix milliseconds.
pub fn parse_since(s: &str) -> Result<u64, String> {
    let t = match humantime::parse_rfc3339_weak(s) {
        Ok(t) => t,
        Err(_) => {
            let ago = humantime::parse_duration(s).map_err(|_| {
                format!("expected an RFC 3339 time (2026-03-01T09:00:00Z) or a duration (90m), got {s:?}")
            })?;
            SystemTime::now()
                .checked_sub(ago)
                .ok_or_else(|| format!("{s:?} reaches before 1970"))?
        }
    };
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("{s:?} is before 1970"))?
        .as_millis();
    u64::try_from(ms).map_err(|_| format!("{s:?} is too far in the future"))
}
