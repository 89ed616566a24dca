//! Reading a log back: the chain walk shared by verify and export, and live following.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::blocks::{RawItem, Records};
use crate::error::AuditError;
use crate::feed::FeedClient;
use crate::record::{self, ChainHash, Record};
use crate::store::Store;
use crate::verify::ProblemKind;

#[derive(Debug)]
enum Source {
    /// The database itself (no controller has it open).
    Local(Store),
    /// A running controller's feed (see `feed.rs`).
    Live(PathBuf),
}

/// Read access to a log: directly when no controller has it open, otherwise through the
/// running controller's live feed (sled lets only one process open the database).
#[derive(Debug)]
pub struct AuditReader {
    source: Source,
}

impl AuditReader {
    /// Opens an existing log in `dir`. Fails with [`AuditError::NotFound`] if there is none
    /// and [`AuditError::Locked`] if another process holds it without serving a feed.
    pub fn open(dir: &Path) -> Result<AuditReader, AuditError> {
        // A feed socket means a controller may be writing: then a held lock is its lock, and
        // the reader switches to the feed at once instead of waiting for the lock.
        let patience = if FeedClient::socket(dir).exists() {
            std::time::Duration::ZERO
        } else {
            std::time::Duration::from_secs(1)
        };
        let source = match Store::open_waiting(dir, false, patience) {
            Ok(store) => Source::Local(store),
            Err(AuditError::Locked { path }) => {
                if FeedClient::socket(dir).exists() {
                    Source::Live(dir.to_path_buf())
                } else {
                    return Err(AuditError::Locked { path });
                }
            }
            Err(e) => return Err(e),
        };
        Ok(AuditReader { source })
    }

    /// Whether this reads through a running controller's feed.
    pub fn is_live(&self) -> bool {
        matches!(self.source, Source::Live(_))
    }

    /// The controller id stored with the log (unknown through the feed).
    pub fn controller(&self) -> Result<Option<String>, AuditError> {
        match &self.source {
            Source::Local(store) => store.controller(),
            Source::Live(_) => Ok(None),
        }
    }

    /// Number of records: the chain head, or what the controller has written so far.
    pub fn len(&self) -> Result<u64, AuditError> {
        match &self.source {
            Source::Local(store) => Ok(store.stored_head()?.map_or(0, |(n, _)| n)),
            Source::Live(dir) => Ok(FeedClient::connect(dir, u64::MAX, false)?.count),
        }
    }

    /// Whether the log has no records.
    pub fn is_empty(&self) -> Result<bool, AuditError> {
        Ok(self.len()? == 0)
    }

    /// The stored chain head `(count, hash)`; `Ok(None)` when it cannot be read here (through
    /// the feed, where the controller checked it at start).
    pub(crate) fn stored_head(&self) -> Result<Option<Option<(u64, ChainHash)>>, AuditError> {
        match &self.source {
            Source::Local(store) => Ok(Some(store.stored_head()?)),
            Source::Live(_) => Ok(None),
        }
    }

    /// Every stored record in order, unchecked.
    pub(crate) fn raw(&self) -> Result<Box<dyn Iterator<Item = RawItem> + '_>, AuditError> {
        match &self.source {
            Source::Local(store) => Ok(Box::new(store.records.iter())),
            Source::Live(dir) => {
                let mut client = FeedClient::connect(dir, 0, false)?;
                let mut done = false;
                Ok(Box::new(std::iter::from_fn(move || {
                    if done {
                        return None;
                    }
                    match client.next_value() {
                        Ok(Some((seq, v))) => Some(Ok((seq, v))),
                        Ok(None) => None,
                        Err(e) => {
                            done = true;
                            Some(Err(ProblemKind::Unreadable(e.to_string())))
                        }
                    }
                })))
            }
        }
    }

    /// Every record from 0, each checked against the chain; stops at the first bad one.
    pub fn records(&self) -> Box<dyn Iterator<Item = Result<Record, AuditError>> + '_> {
        let raw = match self.raw() {
            Ok(raw) => raw,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        Box::new(ChainWalk::new(raw).map(|r| {
            r.map_err(|(seq, kind)| AuditError::Corrupt {
                seq,
                reason: kind.to_string(),
            })
        }))
    }

    /// Follows the log from `from` (see [`Follow`]).
    pub fn follow(&self, from: u64) -> Result<Follow, AuditError> {
        match &self.source {
            Source::Local(store) => Ok(Follow::new(store.records.clone(), from)),
            Source::Live(dir) => Follow::live(dir, from),
        }
    }
}

/// Walks stored records from 0, checking density, the chain and each hash.
pub(crate) struct ChainWalk<'a> {
    iter: Box<dyn Iterator<Item = RawItem> + 'a>,
    expected: u64,
    prev: ChainHash,
    done: bool,
}

impl<'a> ChainWalk<'a> {
    pub(crate) fn new(iter: Box<dyn Iterator<Item = RawItem> + 'a>) -> Self {
        ChainWalk {
            iter,
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

impl Iterator for ChainWalk<'_> {
    type Item = Result<Record, (u64, ProblemKind)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.iter.next()?;
        let result = (|| {
            let seq = self.expected;
            let (found, v) = item.map_err(|kind| (seq, kind))?;
            if found > seq {
                return Err((
                    seq,
                    ProblemKind::Missing {
                        next_present: found,
                    },
                ));
            }
            if found < seq {
                // A block stored under a number the block before it already covers.
                return Err((seq, ProblemKind::WrongSeq { found }));
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
    source: FollowSource,
    next: u64,
    prev: Option<ChainHash>,
    /// Local only: the rest of the block `next` is in, read once ([`Records::run_from`]).
    ahead: std::collections::VecDeque<(u64, Vec<u8>)>,
}

#[derive(Debug)]
enum FollowSource {
    Local(Records),
    /// Values from a controller's feed, read by a thread so that waiting can time out
    /// without cutting a frame in half.
    Live(Receiver<Result<(u64, Vec<u8>), AuditError>>),
}

impl Follow {
    pub(crate) fn new(records: Records, from: u64) -> Self {
        Follow {
            source: FollowSource::Local(records),
            next: from,
            prev: None,
            ahead: std::collections::VecDeque::new(),
        }
    }

    fn live(dir: &Path, from: u64) -> Result<Self, AuditError> {
        // Ask for the record before `from` too: its hash is what `from` must chain to.
        let start = from.saturating_sub(1);
        let mut client = FeedClient::connect(dir, start, true)?;
        let (tx, rx) = mpsc::sync_channel(1024);
        std::thread::Builder::new()
            .name("modalis-audit-follow".into())
            .spawn(move || {
                loop {
                    let item = client
                        .next_value()
                        .and_then(|v| v.ok_or(AuditError::Closed));
                    let stop = item.is_err();
                    if tx.send(item).is_err() || stop {
                        return;
                    }
                }
            })
            .map_err(|e| AuditError::io(dir, e))?;
        let mut follow = Follow {
            source: FollowSource::Live(rx),
            next: start,
            prev: None,
            ahead: std::collections::VecDeque::new(),
        };
        if from > 0 {
            // Wait for the record before `from`, bounded: it exists unless `from` is past
            // the end, in which case the chain is checked from the first record that comes.
            if follow.next_timeout(Duration::from_secs(5))?.is_none() {
                follow.next = from;
            }
        }
        Ok(follow)
    }

    /// Sequence number of the next record this will yield.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// The next record, waiting up to `timeout` for it to be appended.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Record>, AuditError> {
        let Some((seq, value)) = self.next_value(timeout)? else {
            return Ok(None);
        };
        let prev = match self.prev {
            Some(p) => p,
            None if seq == 0 => ChainHash::GENESIS,
            None => match &self.source {
                FollowSource::Local(records) => {
                    let missing = || AuditError::Corrupt {
                        seq: seq - 1,
                        reason: ProblemKind::Missing { next_present: seq }.to_string(),
                    };
                    let before = records
                        .get(seq - 1)
                        .map_err(|kind| AuditError::Corrupt {
                            seq: seq - 1,
                            reason: kind.to_string(),
                        })?
                        .ok_or_else(missing)?;
                    before
                        .first_chunk::<32>()
                        .map(|h| ChainHash(*h))
                        .ok_or_else(missing)?
                }
                // The first record of a feed tail that starts past the end: nothing to
                // check its `prev` against here (verify does), so take its own word for it.
                FollowSource::Live(_) => record::decode(&value)
                    .map(|r| r.prev)
                    .map_err(|reason| AuditError::Corrupt { seq, reason })?,
            },
        };
        let record = check_one(seq, &value, &prev).map_err(|(seq, kind)| AuditError::Corrupt {
            seq,
            reason: kind.to_string(),
        })?;
        self.prev = Some(record.hash);
        self.next = seq + 1;
        Ok(Some(record))
    }

    fn next_value(&mut self, timeout: Duration) -> Result<Option<(u64, Vec<u8>)>, AuditError> {
        match &self.source {
            FollowSource::Local(records) => {
                // Polling is enough for a human-facing tail and, unlike sled's watch_prefix,
                // needs no care about events that arrive between a read and a subscription.
                const POLL: Duration = Duration::from_millis(20);
                let start = Instant::now();
                let seq = self.next;
                if self.ahead.front().is_some_and(|(s, _)| *s != seq) {
                    self.ahead.clear();
                }
                loop {
                    if self.ahead.is_empty() {
                        let run = records.run_from(seq).map_err(|kind| AuditError::Corrupt {
                            seq,
                            reason: kind.to_string(),
                        })?;
                        self.ahead.extend(run);
                    }
                    if let Some(found) = self.ahead.pop_front() {
                        return Ok(Some(found));
                    }
                    let waited = start.elapsed();
                    if waited >= timeout {
                        return Ok(None);
                    }
                    std::thread::sleep(POLL.min(timeout - waited));
                }
            }
            FollowSource::Live(rx) => match rx.recv_timeout(timeout) {
                Ok(item) => item.map(Some),
                Err(RecvTimeoutError::Timeout) => Ok(None),
                Err(RecvTimeoutError::Disconnected) => Err(AuditError::Closed),
            },
        }
    }
}
