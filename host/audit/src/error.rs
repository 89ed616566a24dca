//! The crate's typed errors. Each names the file or directory it concerns.

use std::path::{Path, PathBuf};

/// Everything that can go wrong opening, writing or reading an audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    // The cause is part of the message and deliberately not a `#[source]`, so that
    // printing the error chain (anyhow's `{:#}`) does not say it twice.
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    #[error("audit database {}: {error}", path.display())]
    Db { path: PathBuf, error: sled::Error },

    #[error(
        "audit database {} is in use by another process (sled allows one; is the controller \
         running?)",
        path.display()
    )]
    Locked { path: PathBuf },

    #[error("{} holds no audit log (no {})", dir.display(), crate::layout::SLED_DIR)]
    NotFound { dir: PathBuf },

    #[error(
        "{} is accessible to group or others (mode {mode:03o}); the checkpoint signing key \
         must be private: chmod 600 {}",
        path.display(),
        path.display()
    )]
    KeyPermissions { path: PathBuf, mode: u32 },

    #[error("{}: {reason}", path.display())]
    BadKeyFile { path: PathBuf, reason: String },

    #[error("audit log {} belongs to controller {found:?}, not {expected:?}", dir.display())]
    ControllerMismatch {
        dir: PathBuf,
        expected: String,
        found: String,
    },

    #[error(
        "audit log {} is inconsistent: {problem}; run `modalis audit verify --db {}` \
         and keep the directory as evidence",
        dir.display(),
        dir.display()
    )]
    Inconsistent { dir: PathBuf, problem: String },

    #[error("record {seq}: {reason}")]
    Corrupt { seq: u64, reason: String },

    #[error("record is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },

    #[error("encoding a record: {0}")]
    Encode(serde_json::Error),

    #[error("writing the audit log failed: {0}")]
    Write(String),

    #[error("the audit log is closed")]
    Closed,
}

impl AuditError {
    pub(crate) fn io(path: &Path, error: std::io::Error) -> Self {
        AuditError::Io {
            path: path.to_path_buf(),
            error,
        }
    }

    pub(crate) fn db(path: &Path, error: sled::Error) -> Self {
        AuditError::Db {
            path: path.to_path_buf(),
            error,
        }
    }
}
