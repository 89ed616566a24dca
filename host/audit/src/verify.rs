//! `verify`: walks the chain and the signed checkpoints and names the first bad record.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;

use crate::checkpoint::{self, Checkpoint};
use crate::error::AuditError;
use crate::keys;
use crate::layout;
use crate::reader::{AuditReader, ChainWalk};

/// Options for [`verify_with`].
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Check checkpoint signatures against this key instead of `controller.pub` in the log
    /// directory. Pass the key the clinic wrote down at installation: a key file kept beside
    /// the log proves nothing against someone who can replace both.
    pub public_key: Option<VerifyingKey>,
}

/// What is wrong, at [`Problem::seq`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// sled could not read the entry.
    Unreadable(String),
    /// A key in the records tree that is not an 8-byte sequence number.
    ForeignKey(String),
    /// The record is absent; the next one present has this number.
    Missing { next_present: u64 },
    /// The stored value is not a record (and its hash does match, so it was written so).
    Undecodable(String),
    /// The record's body names another sequence number than its key.
    WrongSeq { found: u64 },
    /// The record's `prev` is not the hash of the record before it.
    PrevMismatch,
    /// The record's bytes do not hash to its stored hash: it was changed after writing.
    HashMismatch,
    /// The record names another controller than the log.
    ForeignController { found: String },
    /// A checkpoint line that does not parse, names another controller or goes backwards.
    BadCheckpoint { line: usize, reason: String },
    /// A checkpoint whose signature does not verify with the controller's public key.
    BadSignature { line: usize },
    /// The chain at this record differs from what a signed checkpoint recorded: the log was
    /// rewritten up to here.
    CheckpointMismatch { line: usize },
    /// The log ends here but a signed checkpoint covers more records: it was truncated or
    /// rolled back.
    RecordsMissing { line: usize, checkpoint_count: u64 },
    /// The log ends here but its own chain head says more records: the tail was cut off.
    TruncatedTail { head_count: u64 },
    /// The stored chain head does not match the records.
    HeadMismatch { head_count: u64 },
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cps = layout::CHECKPOINTS_FILE;
        match self {
            ProblemKind::Unreadable(e) => write!(f, "unreadable: {e}"),
            ProblemKind::ForeignKey(k) => write!(f, "a key that is not a sequence number: {k}"),
            ProblemKind::Missing { next_present } => write!(
                f,
                "gap: the record is missing (deleted); the next one present is {next_present}"
            ),
            ProblemKind::Undecodable(e) => write!(f, "not a valid record: {e}"),
            ProblemKind::WrongSeq { found } => {
                write!(f, "the record says it is number {found} (moved or copied)")
            }
            ProblemKind::PrevMismatch => write!(
                f,
                "chain broken: prev is not the hash of the record before (inserted, replaced \
                 or reordered)"
            ),
            ProblemKind::HashMismatch => {
                write!(
                    f,
                    "hash mismatch: the record's bytes were changed after writing"
                )
            }
            ProblemKind::ForeignController { found } => {
                write!(f, "the record belongs to controller {found:?}")
            }
            ProblemKind::BadCheckpoint { line, reason } => write!(f, "{cps} line {line}: {reason}"),
            ProblemKind::BadSignature { line } => write!(
                f,
                "{cps} line {line}: bad signature (not signed by this controller's key)"
            ),
            ProblemKind::CheckpointMismatch { line } => write!(
                f,
                "checkpoint mismatch: {cps} line {line} signed a different chain head here \
                 (the log was rewritten at or before this record)"
            ),
            ProblemKind::RecordsMissing {
                line,
                checkpoint_count,
            } => write!(
                f,
                "records missing after a checkpoint: {cps} line {line} covers \
                 {checkpoint_count} records but the log ends before this one (truncated or \
                 rolled back)"
            ),
            ProblemKind::TruncatedTail { head_count } => write!(
                f,
                "truncated tail: the chain head says {head_count} records but the log ends \
                 before this one"
            ),
            ProblemKind::HeadMismatch { head_count } => write!(
                f,
                "the stored chain head ({head_count} records) does not match the records"
            ),
        }
    }
}

/// The first thing wrong with a log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The first bad record's sequence number; `None` for a checkpoint line that names none.
    pub seq: Option<u64>,
    pub kind: ProblemKind,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.seq {
            Some(seq) => write!(f, "record {seq}: {}", self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

/// What [`verify`] found.
#[derive(Clone, Debug)]
pub struct VerifyReport {
    pub dir: PathBuf,
    pub controller: Option<String>,
    /// Hex of the public key the checkpoints were checked against.
    pub public_key: String,
    /// Records found intact, from 0.
    pub records: u64,
    /// Checkpoint lines that verified.
    pub checkpoints: usize,
    /// The last checkpoint, if any.
    pub last_checkpoint: Option<Checkpoint>,
    /// The checkpoint file ended in a line cut short by a crash (ignored, never signed
    /// anything that was acknowledged).
    pub torn_checkpoint_line: bool,
    /// Read through a running controller's live feed rather than from the database; the
    /// stored chain head was not compared (the controller checks it when it starts).
    pub live: bool,
    /// The first problem; `None` when the log is intact.
    pub problem: Option<Problem>,
}

impl VerifyReport {
    /// Whether the log is intact.
    pub fn is_ok(&self) -> bool {
        self.problem.is_none()
    }

    /// Records covered by the last signed checkpoint.
    pub fn confirmed(&self) -> u64 {
        self.last_checkpoint.as_ref().map_or(0, |c| c.count)
    }

    /// Records after the last checkpoint. They chain correctly, but nothing fsync'd vouches
    /// for them yet: a power loss may take them without that being tampering.
    pub fn unconfirmed(&self) -> Range<u64> {
        self.confirmed().min(self.records)..self.records
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "audit log {} (controller {})",
            self.dir.display(),
            self.controller.as_deref().unwrap_or("unknown")
        )?;
        writeln!(f, "public key: {}", self.public_key)?;
        if self.live {
            writeln!(f, "read live through the running controller's feed")?;
        }
        writeln!(
            f,
            "records: {}, checkpoints: {}, confirmed by the last checkpoint: {}",
            self.records,
            self.checkpoints,
            self.confirmed()
        )?;
        let un = self.unconfirmed();
        if !un.is_empty() {
            writeln!(
                f,
                "unconfirmed: records {}..={} are after the last checkpoint; a power loss could \
                 have taken them (that alone is not tampering)",
                un.start,
                un.end - 1
            )?;
        }
        if self.torn_checkpoint_line {
            writeln!(
                f,
                "note: the last checkpoint line was cut short by a crash and is ignored"
            )?;
        }
        match &self.problem {
            None => write!(f, "OK"),
            Some(p) => write!(f, "FAILED at {p}"),
        }
    }
}

/// Verifies the log in `dir` with its own `controller.pub`.
pub fn verify(dir: &Path) -> Result<VerifyReport, AuditError> {
    verify_with(dir, &VerifyOptions::default())
}

/// Verifies the log in `dir`. `Err` means it could not be read at all (missing, locked by a
/// running controller, I/O); a log that reads but is damaged gives `Ok` with a problem.
pub fn verify_with(dir: &Path, options: &VerifyOptions) -> Result<VerifyReport, AuditError> {
    let reader = AuditReader::open(dir)?;
    let key = match options.public_key {
        Some(k) => k,
        None => keys::read_public(dir)?,
    };
    let mut controller = reader.controller()?;
    // Read the checkpoints before the records: through a running controller's feed, a
    // checkpoint written after this point could cover records the walk has not seen.
    let file = checkpoint::read(&dir.join(layout::CHECKPOINTS_FILE))?;
    let mut report = VerifyReport {
        dir: dir.to_path_buf(),
        controller: controller.clone(),
        public_key: hex::encode(key.as_bytes()),
        records: 0,
        checkpoints: 0,
        last_checkpoint: None,
        torn_checkpoint_line: file.torn_tail,
        live: reader.is_live(),
        problem: None,
    };

    // The checkpoints first: each must parse, be signed by the key, name this controller and
    // never go backwards. They are then matched against the chain during the walk.
    let mut cps: Vec<(usize, Checkpoint)> = Vec::new();
    for line in &file.lines {
        let bad = |reason: String| Problem {
            seq: None,
            kind: ProblemKind::BadCheckpoint {
                line: line.number,
                reason,
            },
        };
        let cp = match &line.parsed {
            Ok(cp) => cp,
            Err(e) => return Ok(report.fail(bad(e.clone()))),
        };
        if !cp.signature_valid(&key) {
            return Ok(report.fail(Problem {
                seq: cp.count.checked_sub(1),
                kind: ProblemKind::BadSignature { line: line.number },
            }));
        }
        if controller.as_deref().is_some_and(|c| c != cp.controller) {
            return Ok(report.fail(bad(format!("names controller {:?}", cp.controller))));
        }
        if let Some((prev_line, prev)) = cps.last() {
            if cp.count < prev.count {
                return Ok(report.fail(bad(format!(
                    "covers {} records, fewer than line {prev_line} ({})",
                    cp.count, prev.count
                ))));
            }
            if cp.count == prev.count && cp.head != prev.head {
                return Ok(report.fail(bad(format!(
                    "a different head than line {prev_line} for the same {} records",
                    cp.count
                ))));
            }
        }
        cps.push((line.number, cp.clone()));
    }
    report.checkpoints = cps.len();
    report.last_checkpoint = cps.last().map(|(_, c)| c.clone());

    let mut next_cp = 0;
    // A checkpoint of an empty log must name the genesis hash.
    while let Some((line, cp)) = cps.get(next_cp).filter(|(_, c)| c.count == 0) {
        if cp.head != crate::record::ChainHash::GENESIS {
            return Ok(report.fail(Problem {
                seq: None,
                kind: ProblemKind::CheckpointMismatch { line: *line },
            }));
        }
        next_cp += 1;
    }

    let mut walk = ChainWalk::new(reader.raw()?);
    for item in walk.by_ref() {
        let record = match item {
            Ok(r) => r,
            Err((seq, kind)) => {
                report.records = seq;
                return Ok(report.fail(Problem {
                    seq: Some(seq),
                    kind,
                }));
            }
        };
        // Through the feed the log's controller id is unknown; the first record names it.
        let c = controller.get_or_insert_with(|| record.controller.clone());
        if *c != record.controller {
            report.records = record.seq;
            return Ok(report.fail(Problem {
                seq: Some(record.seq),
                kind: ProblemKind::ForeignController {
                    found: record.controller,
                },
            }));
        }
        while let Some((line, cp)) = cps.get(next_cp).filter(|(_, c)| c.count == record.seq + 1) {
            if cp.head != record.hash {
                report.records = record.seq;
                return Ok(report.fail(Problem {
                    seq: Some(record.seq),
                    kind: ProblemKind::CheckpointMismatch { line: *line },
                }));
            }
            next_cp += 1;
        }
    }
    let (count, head) = walk.position();
    report.records = count;

    if let Some((line, cp)) = cps.get(next_cp) {
        return Ok(report.fail(Problem {
            seq: Some(count),
            kind: ProblemKind::RecordsMissing {
                line: *line,
                checkpoint_count: cp.count,
            },
        }));
    }
    // Through the feed the chain head cannot be read; the controller checked it at start.
    let Some(stored_head) = reader.stored_head()? else {
        report.controller = controller;
        return Ok(report);
    };
    match stored_head {
        Some((n, _)) if n > count => {
            return Ok(report.fail(Problem {
                seq: Some(count),
                kind: ProblemKind::TruncatedTail { head_count: n },
            }));
        }
        Some((n, h)) if n < count || h != head => {
            return Ok(report.fail(Problem {
                seq: Some(n.min(count.saturating_sub(1))),
                kind: ProblemKind::HeadMismatch { head_count: n },
            }));
        }
        None if count > 0 => {
            return Ok(report.fail(Problem {
                seq: Some(0),
                kind: ProblemKind::HeadMismatch { head_count: 0 },
            }));
        }
        _ => {}
    }
    report.controller = controller;
    Ok(report)
}

impl VerifyReport {
    fn fail(mut self, problem: Problem) -> Self {
        self.problem = Some(problem);
        self
    }
}
