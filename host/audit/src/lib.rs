//! The modalis audit log: append-only, hash-chained, write-ahead records in sled, with
//! Ed25519-signed checkpoints in a separate fsync'd file, and the tools to verify, export
//! and follow it.
//!
//! This crate is the only code in modalis that touches sled. The session runtime opens one
//! [`AuditLog`] per controller and
//!
//! - calls [`AuditLog::append`] for every command *before* publishing it (it returns once
//!   the record is flushed), and for every other event that must not be lost (operator
//!   actions, governor decisions, alarms, ...);
//! - calls [`AuditLog::append_telemetry`] for telemetry, which is group-committed;
//! - calls [`AuditLog::checkpoint`] at session end and [`AuditLog::close`] at shutdown.
//!
//! See `README.md` beside this crate for what survives a crash and a power loss.
//!
//! # Directory layout
//!
//! ```text
//! <dir>/sled/              the sled database (records and chain head)
//! <dir>/checkpoints.jsonl  signed checkpoints, one per line, fsync'd
//! <dir>/controller.key     Ed25519 signing key, hex, mode 0600
//! <dir>/controller.pub     its public key, hex
//! ```

mod blocks;
mod checkpoint;
pub mod cli;
mod error;
mod export;
mod feed;
mod keys;
mod log;
mod reader;
mod record;
mod store;
mod verify;

pub use checkpoint::{CHECKPOINT_DOMAIN, Checkpoint};
pub use ed25519_dalek::VerifyingKey;
pub use error::AuditError;
pub use export::{ExportFilter, ExportFormat, ExportLine, export, rfc3339};
pub use keys::parse_public;
pub use log::{AuditConfig, AuditLog, BatchReceipt, PreviousRun};
pub use reader::{AuditReader, Follow};
pub use record::{
    Actor, CHAIN_DOMAIN, ChainHash, Decision, Entry, Event, FORMAT_VERSION, MAX_RECORD_BYTES,
    OperatorAction, Outcome, Record, Severity, Verdict, chain_hash,
};
/// sled's page cache size for an audit log (see the constant in `store.rs` for why); public
/// so that the audit benchmark's raw-sled floor uses the same.
pub use store::CACHE_BYTES as SLED_CACHE_BYTES;
pub use verify::{Problem, ProblemKind, VerifyOptions, VerifyReport, verify, verify_with};

/// File and tree names inside an audit directory (public so that tools and tests can find
/// them; nothing outside this crate should write there).
pub mod layout {
    /// The sled database directory.
    pub const SLED_DIR: &str = "sled";
    /// The sled tree of records: blocks keyed by their first record's 8-byte big-endian
    /// sequence number (one record per key in logs written before blocks).
    pub const RECORDS_TREE: &str = "records";
    /// The sled tree holding the controller id and the chain head.
    pub const META_TREE: &str = "meta";
    /// The signed checkpoint file.
    pub const CHECKPOINTS_FILE: &str = "checkpoints.jsonl";
    /// The secret signing key (mode 0600).
    pub const KEY_FILE: &str = "controller.key";
    /// The public key.
    pub const PUBLIC_KEY_FILE: &str = "controller.pub";
    /// The running controller's live feed (a Unix socket, mode 0600).
    pub const FEED_SOCKET: &str = "feed.sock";
}

/// The public key of the log in `dir`, from its `controller.pub` (readable while the
/// controller runs).
pub fn public_key(dir: &std::path::Path) -> Result<VerifyingKey, AuditError> {
    keys::read_public(dir)
}
