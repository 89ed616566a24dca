//! Reading a log back: the chain walk shared by verify and export, and live following.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::AuditError;
use crate::record::{self, ChainHash, Record};
use crate::store::Store;
use crate::verify::ProblemKind;

/// Read access to a log that no controller has open (sled allows one process at a time).
#[derive(Debug)]
pub struct AuditReader {
    pub(crate) store: Store,
}

impl AuditReader {
    /// Opens an existing log in `dir`. Fails with [`AuditError::NotFound`] if there is none
    /// and [`AuditError::Locked`] while a controller has it open.
    pub fn open(dir: &Path) -> Result<AuditReader, AuditError> {
        Ok(AuditReader {
            store: Store::open(dir, false)?,
        })
    }

    /// The controller id the log belongs to.
    pub fn controller(&self) -> Result<Option<String>, AuditError> {
        self.store.controller()
    }

    /// Number of records according to the chain head.
    pub fn len(&self) -> Result<u64, AuditError> {
        Ok(self.store.stored_head()?.map_or(0, |(n, _)| n))
    }

    /// Whether the log has no records.
    pub fn is_empty(&self) -> Result<bool, AuditError> {
        Ok(self.len()? == 0)
    }

    /// Every record from 0, each checked against the chain; stops at the first bad one.
    pub fn records(&self) -> impl Iterator<Item = Result<Record, AuditError>> + '_ {
        ChainWalk::new(&self.store.records).map(|r| {
            r.map_err(|(seq, kind)| AuditError::Corrupt {
                seq,
                reason: kind.to_string(),
            })
        })
    }

    /// Follows the log from `from` (see [`Follow`]).
    pub fn follow(&self, from: u64) -> Follow {
        Follow::new(self.store.records.clone(), from)
    }
}

/// Walks the records tree from 0, checking density, the chain and each hash.
pub(crate) struct ChainWalk {
    iter: sled::Iter,
    expected: u64,
    prev: ChainHash,
    done: bool,
}

impl ChainWalk {
    pub(crate) fn new(records: &sled::Tree) -> Self {
        ChainWalk {
            iter: records.iter(),
            expected: 0,
            prev: ChainHash::GENESIS,
            done: false,
        }
    }

    /// Records walked successfully so far, and the last one's hash.
    pub(crate) fn position(&self) -> (u64, ChainHash) {
        (self.expected, self.prev)
    }
}

impl Iterator for ChainWalk {
    type Item = Result<Record, (u64, ProblemKind)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.iter.next()?;
        let result = (|| {
            let seq = self.expected;
            let (k, v) = item.map_err(|e| (seq, ProblemKind::Unreadable(e.to_string())))?;
            let Some(found) = record::seq_of(&k) else {
                return Err((seq, ProblemKind::ForeignKey(hex::encode(&k))));
            };
            if found != seq {
                return Err((
                    seq,
                    ProblemKind::Missing {
                        next_present: found,
                    },
                ));
            }
            let record = check_one(seq, &v, &self.prev)?;
            self.prev = record.hash;
            self.expected += 1;
            Ok(record)
        })();
        if result.is_err() {
            self.done = true;
        }
        Some(result)
    }
}

/// Checks one stored value as record `seq` following `prev`.
fn check_one(seq: u64, value: &[u8], prev: &ChainHash) -> Result<Record, (u64, ProblemKind)> {
    // The hash is checked before anything else is read: a changed byte anywhere in the body
    // (or in the stored hash) shows up here with this record's number, whether or not the
    // body still parses.
    let Some((stored, computed)) = record::stored_and_computed(value, prev) else {
        return Err((
            seq,
            ProblemKind::Undecodable(format!("{} bytes", value.len())),
        ));
    };
    let record = record::decode(value).map_err(|e| {
        if stored == computed {
            (seq, ProblemKind::Undecodable(e))
        } else {
            (seq, ProblemKind::HashMismatch)
        }
    })?;
    if stored != computed {
        return Err((seq, ProblemKind::HashMismatch));
    }
    if record.seq != seq {
        return Err((seq, ProblemKind::WrongSeq { found: record.seq }));
    }
    if record.prev != *prev {
        return Err((seq, ProblemKind::PrevMismatch));
    }
    Ok(record)
}

/// A live tail: yields each record as it is appended, checked against the one before.
#[derive(Debug)]
pub struct Follow {
    records: sled::Tree,
    next: u64,
    prev: Option<ChainHash>,
}

impl Follow {
    pub(crate) fn new(records: sled::Tree, from: u64) -> Self {
        Follow {
            records,
            next: from,
            prev: None,
        }
    }

    /// Sequence number of the next record this will yield.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// The next record, waiting up to `timeout` for it to be appended.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Record>, AuditError> {
        // Polling is enough for a human-facing tail and, unlike sled's watch_prefix, needs
        // no care about events that arrive between a read and a subscription.
        const POLL: Duration = Duration::from_millis(20);
        let start = Instant::now();
        let err = |e: sled::Error, seq| AuditError::Corrupt {
            seq,
            reason: format!("unreadable: {e}"),
        };
        loop {
            let seq = self.next;
            if let Some(v) = self
                .records
                .get(record::key(seq))
                .map_err(|e| err(e, seq))?
            {
                let prev = match self.prev {
                    Some(p) => p,
                    None if seq == 0 => ChainHash::GENESIS,
                    None => {
                        let before = self
                            .records
                            .get(record::key(seq - 1))
                            .map_err(|e| err(e, seq - 1))?
                            .ok_or_else(|| AuditError::Corrupt {
                                seq: seq - 1,
                                reason: ProblemKind::Missing { next_present: seq }.to_string(),
                            })?;
                        before
                            .first_chunk::<32>()
                            .map(|h| ChainHash(*h))
                            .ok_or_else(|| AuditError::Corrupt {
                                seq: seq - 1,
                                reason: "shorter than its hash".into(),
                            })?
                    }
                };
                let record =
                    check_one(seq, &v, &prev).map_err(|(seq, kind)| AuditError::Corrupt {
                        seq,
                        reason: kind.to_string(),
                    })?;
                self.prev = Some(record.hash);
                self.next += 1;
                return Ok(Some(record));
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Ok(None);
            }
            std::thread::sleep(POLL.min(timeout - waited));
        }
    }
}
