//! Signed checkpoints: one JSON line per checkpoint in an append-only file beside the sled
//! database, fsync'd on every append.
//!
//! A line looks like
//!
//! ```text
//! {"v":1,"controller":"clinic-1","count":1200,"head":"<64 hex>","wall_ms":1767225600000,"sig":"<128 hex>"}
//! ```
//!
//! and `sig` is the Ed25519 signature over the fixed binary message
//!
//! ```text
//! CHECKPOINT_DOMAIN || u32be(len(controller)) || controller || u64be(count) || head || u64be(wall_ms)
//! ```
//!
//! A binary message (rather than the JSON line) keeps the signed bytes independent of how
//! any JSON library formats the line.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::error::AuditError;
use crate::keys::sync_dir;
use crate::record::ChainHash;

/// Domain tag of the signed checkpoint message.
pub const CHECKPOINT_DOMAIN: &[u8] = b"modalis-audit-checkpoint-v1\0";

/// One signed statement: "this controller's log had `count` records, the last with hash
/// `head`, at `wall_ms`".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub v: u32,
    pub controller: String,
    /// Number of records covered (records `0..count`).
    pub count: u64,
    /// Hash of record `count - 1` ([`ChainHash::GENESIS`] when `count` is 0).
    pub head: ChainHash,
    /// Unix milliseconds when the checkpoint was written.
    pub wall_ms: u64,
    /// Ed25519 signature, hex.
    pub sig: String,
}

impl Checkpoint {
    pub(crate) fn sign(
        key: &SigningKey,
        controller: &str,
        count: u64,
        head: ChainHash,
        wall_ms: u64,
    ) -> Self {
        let sig = key.sign(&message(controller, count, &head, wall_ms));
        Checkpoint {
            v: 1,
            controller: controller.to_owned(),
            count,
            head,
            wall_ms,
            sig: hex::encode(sig.to_bytes()),
        }
    }

    /// Whether `sig` is this controller key's signature over the checkpoint's fields.
    pub fn signature_valid(&self, key: &VerifyingKey) -> bool {
        let mut bytes = [0u8; 64];
        if hex::decode_to_slice(&self.sig, &mut bytes).is_err() {
            return false;
        }
        let sig = Signature::from_bytes(&bytes);
        key.verify(
            &message(&self.controller, self.count, &self.head, self.wall_ms),
            &sig,
        )
        .is_ok()
    }
}

fn message(controller: &str, count: u64, head: &ChainHash, wall_ms: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 4 + controller.len() + 48);
    m.extend_from_slice(CHECKPOINT_DOMAIN);
    // The controller id is user-chosen text; a length prefix keeps it from running into the
    // fixed-size fields that follow.
    let len = u32::try_from(controller.len()).unwrap_or(u32::MAX);
    m.extend_from_slice(&len.to_be_bytes());
    m.extend_from_slice(controller.as_bytes());
    m.extend_from_slice(&count.to_be_bytes());
    m.extend_from_slice(&head.0);
    m.extend_from_slice(&wall_ms.to_be_bytes());
    m
}

/// One line of the checkpoint file, parsed or not.
#[derive(Debug)]
pub(crate) struct Line {
    /// 1-based line number.
    pub number: usize,
    pub parsed: Result<Checkpoint, String>,
}

/// The checkpoint file's lines, and whether it ended in a torn (unterminated) line.
#[derive(Debug, Default)]
pub(crate) struct CheckpointFile {
    pub lines: Vec<Line>,
    /// A last line without its newline: a checkpoint write cut short by a crash or power
    /// loss. It was never acknowledged, so it is ignored, not treated as tampering.
    pub torn_tail: bool,
}

/// Reads every line of the checkpoint file; a missing file has no lines.
pub(crate) fn read(path: &Path) -> Result<CheckpointFile, AuditError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CheckpointFile::default()),
        Err(e) => return Err(AuditError::io(path, e)),
    };
    let mut out = CheckpointFile::default();
    let mut rest = &bytes[..];
    let mut number = 0;
    while !rest.is_empty() {
        number += 1;
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            out.torn_tail = true;
            break;
        };
        let line = &rest[..end];
        rest = &rest[end + 1..];
        let parsed = serde_json::from_slice::<Checkpoint>(line)
            .map_err(|e| format!("not a checkpoint: {e}"))
            .and_then(|cp| {
                if cp.v == 1 {
                    Ok(cp)
                } else {
                    Err(format!(
                        "checkpoint format version {} (this build reads 1)",
                        cp.v
                    ))
                }
            });
        out.lines.push(Line { number, parsed });
    }
    Ok(out)
}

/// The open checkpoint file, for appending.
#[derive(Debug)]
pub(crate) struct Writer {
    file: File,
    path: PathBuf,
}

impl Writer {
    /// Opens (or creates) the checkpoint file for appending. A torn last line left by a
    /// crash mid-append is cut off first, so the next checkpoint starts on a line of its own.
    pub(crate) fn open(dir: &Path, path: &Path) -> Result<Self, AuditError> {
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(|e| AuditError::io(path, e))?;
        if existed {
            let bytes = fs::read(path).map_err(|e| AuditError::io(path, e))?;
            if bytes.last().is_some_and(|&b| b != b'\n') {
                let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                tracing::warn!(
                    path = %path.display(),
                    torn_bytes = bytes.len() - keep,
                    "cutting off a checkpoint line torn by a crash during its write"
                );
                file.set_len(keep as u64)
                    .map_err(|e| AuditError::io(path, e))?;
                file.sync_all().map_err(|e| AuditError::io(path, e))?;
            }
        } else {
            file.sync_all().map_err(|e| AuditError::io(path, e))?;
            sync_dir(dir)?;
        }
        file.seek(SeekFrom::End(0))
            .map_err(|e| AuditError::io(path, e))?;
        Ok(Writer {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Appends one checkpoint line and fsyncs it.
    pub(crate) fn append(&mut self, cp: &Checkpoint) -> Result<(), AuditError> {
        let mut line = serde_json::to_vec(cp).map_err(AuditError::Encode)?;
        line.push(b'\n');
        // One write call for the whole line keeps a torn line to a crash inside the write.
        self.file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| AuditError::io(&self.path, e))
    }
}
