//! The writer: [`AuditLog`] and its single background thread, which owns the chain head.
//!
//! All appends from all sessions go through one bounded channel to one thread. That thread
//! assigns sequence numbers in arrival order (so they are dense and the chain is linear
//! without any lock dance), encodes and hashes the records, writes each batch and the new
//! chain head in one sled transaction, flushes, and only then answers the callers waiting on
//! it. Commands arriving while a flush runs are written together in the next batch (group
//! commit), which is what keeps flushed appends cheap under load.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::blocks::Records;
use crate::checkpoint::{self, Checkpoint};
use crate::error::AuditError;
use crate::feed::Feed;
use crate::keys;
use crate::layout;
use crate::reader::Follow;
use crate::record::{
    self, Actor, ChainHash, Entry, Event, MAX_RECORD_BYTES, OperatorAction, Outcome,
};
use crate::store::Store;

/// Tuning of batching and checkpoints. [`AuditConfig::default`] suits a clinic controller.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// Telemetry records written per batch at most before the batch is committed.
    pub telemetry_batch: usize,
    /// How long a telemetry record may wait for its batch to fill.
    pub telemetry_delay: Duration,
    /// Write a checkpoint after this many new records.
    pub checkpoint_every_records: u64,
    /// Write a checkpoint this long after the last one if there are new records. This bounds
    /// what a power loss can take (see the README).
    pub checkpoint_interval: Duration,
    /// Capacity of the channel to the writer thread. When it is full, appends block: the
    /// log slows the callers down rather than dropping records.
    pub queue: usize,
    /// Fault injection for tests of what the caller does when the disk fills: the first batch
    /// that would take the log past this many records fails as a full disk does
    /// (`AuditError::Write`), nothing of it is written, and every later batch fails too (a
    /// full disk stays full; a smaller batch must not slip in under the limit). `None` (the
    /// default) in use.
    pub fail_writes_after: Option<u64>,
    /// Fault injection for tests of a slow disk: every commit takes at least this long
    /// before its flush returns (a stalled disk holds a write-ahead record for hundreds of
    /// milliseconds). `None` (the default) in use.
    pub slow_writes: Option<Duration>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            telemetry_batch: 1024,
            telemetry_delay: Duration::from_millis(5),
            checkpoint_every_records: 10_000,
            checkpoint_interval: Duration::from_secs(10),
            queue: 16 * 1024,
            fail_writes_after: None,
            slow_writes: None,
        }
    }
}

/// Reply channel to one waiting caller.
type Reply<T> = SyncSender<Result<T, AuditError>>;

/// The records of one [`AuditLog::append_batch_deferred`] call, being written.
#[derive(Debug)]
#[must_use = "a write-ahead record's result must be waited for before acting on it"]
pub struct BatchReceipt {
    /// One reply per record, or (the writer was gone) how many records were refused.
    waits: Result<Vec<Receiver<Result<u64, AuditError>>>, usize>,
}

impl BatchReceipt {
    /// Waits until the batch is written (or failed) and returns each record's result in
    /// order, as [`AuditLog::append_batch`] does.
    pub fn wait(self) -> Vec<Result<u64, AuditError>> {
        match self.waits {
            Ok(waits) => waits
                .into_iter()
                .map(|w| w.recv().map_err(|_| AuditError::Closed)?)
                .collect(),
            Err(n) => (0..n).map(|_| Err(AuditError::Closed)).collect(),
        }
    }
}

// Nearly every message is an Append; boxing it would add an allocation per record to make
// the rare control messages smaller.
#[expect(clippy::large_enum_variant, reason = "Append is the common case")]
enum Msg {
    Append {
        entry: Entry,
        /// The payload as JSON text, in place of `entry.payload` (see
        /// [`AuditLog::append_telemetry_typed`]).
        json: Option<Box<RawValue>>,
        wall_ms: u64,
        mono_ns: u64,
        /// `None` for group-committed telemetry nobody waits for.
        done: Option<Reply<u64>>,
    },
    /// Several records that go into one group commit together: all are written or none.
    /// `hold_until`: not committed before then unless something else forces a commit (see
    /// [`AuditLog::append_batch_held`]).
    AppendBatch {
        items: Vec<Pending>,
        hold_until: Option<Instant>,
    },
    Flush(Reply<u64>),
    Checkpoint(Reply<Checkpoint>),
    Shutdown(Reply<()>),
}

/// The controller's audit log. Cheap to clone; all clones append to the same chain.
#[derive(Clone, Debug)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tx: SyncSender<Msg>,
    controller: String,
    public: VerifyingKey,
    dir: PathBuf,
    origin: Instant,
    records: Records,
    writer: Mutex<Option<JoinHandle<()>>>,
    feed: Mutex<Option<Feed>>,
}

impl AuditLog {
    /// Opens the audit log in `dir` (created with mode 0700 if missing) for controller
    /// `controller_id`, with the default [`AuditConfig`].
    ///
    /// On first start this generates the controller's signing key. It refuses a log that
    /// belongs to another controller id, a key file others can read, and a log whose chain
    /// head or last checkpoint does not match its records.
    pub fn open(dir: &Path, controller_id: &str) -> Result<AuditLog, AuditError> {
        Self::open_with(dir, controller_id, AuditConfig::default())
    }

    /// [`AuditLog::open`] with explicit tuning.
    pub fn open_with(
        dir: &Path,
        controller_id: &str,
        config: AuditConfig,
    ) -> Result<AuditLog, AuditError> {
        if controller_id.is_empty() {
            return Err(AuditError::ControllerMismatch {
                dir: dir.to_path_buf(),
                expected: String::new(),
                found: "(an empty controller id is not allowed)".into(),
            });
        }
        create_private_dir(dir)?;
        let key = keys::load_or_create(dir)?;
        let store = Store::open(dir, true)?;
        store.claim_controller(controller_id)?;
        let (count, head) = store.head()?;
        let cp_path = dir.join(layout::CHECKPOINTS_FILE);
        let last_cp = check_last_checkpoint(&store, &cp_path, &key.verifying_key(), count)?;
        let cps = checkpoint::Writer::open(dir, &cp_path)?;

        let (tx, rx) = mpsc::sync_channel(config.queue.max(1));
        let records = store.records.clone();
        let writer = Writer {
            rx,
            store,
            controller: controller_id.to_owned(),
            key: key.clone(),
            cps,
            count,
            head,
            last_cp,
            last_cp_at: Instant::now(),
            lost: 0,
            injected_full: false,
            config,
        };
        let handle = std::thread::Builder::new()
            .name("modalis-audit-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| AuditError::io(dir, e))?;
        // The feed is how verify/export/tail read the log while this process holds it. The
        // log works without it, so a failure to start it (a socket path over the 108-byte
        // limit, say) is reported and not fatal.
        let feed = match Feed::start(dir, records.clone()) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(error = %e, "audit live feed not available");
                None
            }
        };
        tracing::info!(dir = %dir.display(), records = count, "audit log open");
        Ok(AuditLog {
            inner: Arc::new(Inner {
                tx,
                controller: controller_id.to_owned(),
                public: key.verifying_key(),
                dir: dir.to_path_buf(),
                origin: Instant::now(),
                records,
                writer: Mutex::new(Some(handle)),
                feed: Mutex::new(feed),
            }),
        })
    }

    /// Appends a record and returns its sequence number once it is written and flushed to
    /// sled: the write-ahead step. Publish a command only after this returned `Ok`; on `Err`
    /// the command must not be sent.
    ///
    /// Blocks for one group commit (typically well under a millisecond, see the benchmark);
    /// call it from a blocking context, not from inside an async task's poll.
    pub fn append(&self, entry: Entry) -> Result<u64, AuditError> {
        let (done, wait) = mpsc::sync_channel(1);
        self.send(Msg::Append {
            entry,
            json: None,
            wall_ms: now_ms(),
            mono_ns: self.mono_ns(),
            done: Some(done),
        })?;
        wait.recv().map_err(|_| AuditError::Closed)?
    }

    /// Appends several records in order with one wait, in one group commit: all of them are
    /// written or none is (a burst of stop commands costs one flush, and a stop for one
    /// device is never on record while the stop beside it is not). Returns each record's
    /// result in order; a record whose result is `Err` must not be acted on.
    pub fn append_batch(&self, entries: Vec<Entry>) -> Vec<Result<u64, AuditError>> {
        self.append_batch_deferred(entries).wait()
    }

    /// [`AuditLog::append_batch`] without the wait: the records are handed to the writer
    /// (blocking only while its queue is full) and the returned receipt waits for them. A
    /// caller that must not stall while the disk writes (the controller's loop) hands the
    /// receipt to a thread of its own and acts on the results when they come. Receipts
    /// complete in the order their batches were appended: the writer is one thread.
    pub fn append_batch_deferred(&self, entries: Vec<Entry>) -> BatchReceipt {
        self.append_batch_with(entries, None)
    }

    /// [`AuditLog::append_batch_deferred`] for records of an act already carried out (stop
    /// commands, which are published before they are written): their group commit waits
    /// `hold` so that its CPU and disk work does not compete with the act itself on its way
    /// out (on a 2-core machine the commit ran beside the stop's delivery; see BENCHMARKS.md).
    /// Order with every other append is kept. Anything that needs a commit sooner (a flush, a
    /// checkpoint, a close, a full batch, a record appended later by someone waiting for it)
    /// takes these records with it, so a hold only ever delays these records, by at most
    /// `hold`.
    pub fn append_batch_held(&self, entries: Vec<Entry>, hold: Duration) -> BatchReceipt {
        self.append_batch_with(entries, Instant::now().checked_add(hold))
    }

    fn append_batch_with(&self, entries: Vec<Entry>, hold_until: Option<Instant>) -> BatchReceipt {
        // One message, not one per record: sent separately, the writer could pick up the
        // first records before the rest arrived and commit them on their own.
        let (items, waits): (Vec<Pending>, Vec<_>) = entries
            .into_iter()
            .map(|entry| {
                let (done, wait) = mpsc::sync_channel(1);
                let item = Pending {
                    entry,
                    json: None,
                    wall_ms: now_ms(),
                    mono_ns: self.mono_ns(),
                    done: Some(done),
                };
                (item, wait)
            })
            .unzip();
        if items.is_empty() {
            return BatchReceipt { waits: Ok(waits) };
        }
        if self.send(Msg::AppendBatch { items, hold_until }).is_err() {
            return BatchReceipt {
                waits: Err(waits.len()),
            };
        }
        BatchReceipt { waits: Ok(waits) }
    }

    /// Queues one telemetry record from `device` for the next group commit and returns at
    /// once. It is written within [`AuditConfig::telemetry_delay`] or when the batch fills,
    /// whichever comes first; [`AuditLog::flush_pending`] waits for it.
    ///
    /// Blocks only when the writer's queue is full (backpressure instead of loss).
    pub fn append_telemetry(
        &self,
        device: &str,
        session: Option<&str>,
        payload: Value,
    ) -> Result<(), AuditError> {
        self.queue(telemetry_entry(device, session, payload), None)
    }

    /// [`AuditLog::append_telemetry`] for a reading the caller holds as a typed struct: it is
    /// serialised straight to JSON text here, on the caller's thread, and the record's
    /// payload is that text. The record reads back as if the struct had been converted to a
    /// `serde_json::Value` first (same document; object keys in the struct's field order), but
    /// no `Value` map is built and then serialised again, which at tens of thousands of
    /// readings a second was a large share of the controller's and the writer's time.
    pub fn append_telemetry_typed<T: Serialize + ?Sized>(
        &self,
        device: &str,
        session: Option<&str>,
        payload: &T,
    ) -> Result<(), AuditError> {
        let json = serde_json::value::to_raw_value(payload).map_err(AuditError::Encode)?;
        self.queue(telemetry_entry(device, session, Value::Null), Some(json))
    }

    /// Queues a record for the next group commit and returns at once, as telemetry does:
    /// for records that document what happened (an ack, an alarm, a decision already acted
    /// on) rather than gate an action. Order with every other append is kept. It is written
    /// within [`AuditConfig::telemetry_delay`]; [`AuditLog::flush_pending`] waits for it.
    ///
    /// Blocks only when the writer's queue is full (backpressure instead of loss).
    pub fn append_queued(&self, entry: Entry) -> Result<(), AuditError> {
        self.queue(entry, None)
    }

    /// Hands one record nobody waits for to the writer (telemetry, and `append_queued`);
    /// `json`, when given, is its payload in place of `entry.payload`.
    fn queue(&self, entry: Entry, json: Option<Box<RawValue>>) -> Result<(), AuditError> {
        self.send(Msg::Append {
            entry,
            json,
            wall_ms: now_ms(),
            mono_ns: self.mono_ns(),
            done: None,
        })
    }

    /// Writes and flushes everything queued before this call; returns the number of records
    /// in the log. Fails if queued telemetry could not be written since the last call.
    pub fn flush_pending(&self) -> Result<u64, AuditError> {
        let (done, wait) = mpsc::sync_channel(1);
        self.send(Msg::Flush(done))?;
        wait.recv().map_err(|_| AuditError::Closed)?
    }

    /// Flushes, makes sled's files durable (fsync) and appends a signed checkpoint of the
    /// current head to the checkpoint file. Call it at session end; it also runs
    /// periodically and on [`AuditLog::close`]. Returns the last checkpoint unchanged when
    /// no record was added since.
    pub fn checkpoint(&self) -> Result<Checkpoint, AuditError> {
        let (done, wait) = mpsc::sync_channel(1);
        self.send(Msg::Checkpoint(done))?;
        wait.recv().map_err(|_| AuditError::Closed)?
    }

    /// Writes everything queued, checkpoints and stops the writer. Later appends through any
    /// clone fail with [`AuditError::Closed`].
    ///
    /// Closed through its last handle, the log's database is released when this returns: the
    /// log can be opened again at once, by this process or another (`verify`, a restarted
    /// controller).
    pub fn close(self) -> Result<(), AuditError> {
        let result = self.inner.shutdown();
        if let Ok(inner) = Arc::try_unwrap(self.inner) {
            let db = inner.dir.join(layout::SLED_DIR).join(SLED_LOCK_FILE);
            drop(inner);
            wait_until_unlocked(&db, Duration::from_secs(5));
        }
        result
    }

    /// The public half of the checkpoint signing key.
    pub fn public_key(&self) -> VerifyingKey {
        self.inner.public
    }

    /// The controller id every record carries.
    pub fn controller_id(&self) -> &str {
        &self.inner.controller
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// What the log says about the controller run before this one: read newest first, back
    /// to that run's `ControllerStart`, so a restart costs one run's records, not the whole
    /// log. Call it before this run appends anything.
    pub fn previous_run(&self) -> Result<PreviousRun, AuditError> {
        let mut run = PreviousRun::default();
        let mut ended: std::collections::BTreeSet<String> = Default::default();
        let mut started: Vec<String> = Vec::new();
        for item in self.inner.records.iter_rev() {
            let (seq, value) = item.map_err(|kind| AuditError::Corrupt {
                seq: run.last_seq.unwrap_or(0),
                reason: kind.to_string(),
            })?;
            let r = crate::record::decode(&value)
                .map_err(|reason| AuditError::Corrupt { seq, reason })?;
            if run.last_seq.is_none() {
                run.last_seq = Some(r.seq);
                run.last_wall_ms = Some(r.wall_ms);
            }
            match &r.event {
                Event::ControllerStart { .. } => {
                    run.found = true;
                    break;
                }
                Event::ControllerStop { .. } => run.ended_cleanly = true,
                Event::SessionEnded { .. } => {
                    if let Some(s) = &r.session {
                        ended.insert(s.clone());
                    }
                }
                Event::OperatorAction {
                    action: OperatorAction::Start,
                } => {
                    if let Some(s) = &r.session
                        && !ended.contains(s)
                        && !started.contains(s)
                    {
                        started.push(s.clone());
                    }
                }
                _ => {}
            }
        }
        started.reverse();
        run.interrupted_sessions = started;
        Ok(run)
    }

    /// Follows the log from sequence number `from`, in this process (sled lets only one
    /// process open the database, so a live tail must go through the writer's process).
    pub fn follow(&self, from: u64) -> Follow {
        Follow::new(self.inner.records.clone(), from)
    }

    fn send(&self, msg: Msg) -> Result<(), AuditError> {
        self.inner.tx.send(msg).map_err(|_| AuditError::Closed)
    }

    fn mono_ns(&self) -> u64 {
        u64::try_from(self.inner.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl Inner {
    fn shutdown(&self) -> Result<(), AuditError> {
        // Feed connections hold the database open; end them first so that the database is
        // released when the writer is done.
        let feed = match self.feed.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        drop(feed);
        let handle = match self.writer.lock() {
            Ok(mut guard) => guard.take(),
            // A panic while holding this lock can only have been in another shutdown; the
            // handle is still usable.
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let Some(handle) = handle else {
            return Ok(());
        };
        let (done, wait) = mpsc::sync_channel(1);
        let result = match self.tx.send(Msg::Shutdown(done)) {
            Ok(()) => wait.recv().map_err(|_| AuditError::Closed).and_then(|r| r),
            Err(_) => Err(AuditError::Closed),
        };
        if handle.join().is_err() {
            return Err(AuditError::Write("the audit writer thread panicked".into()));
        }
        result
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "closing the audit log");
        }
    }
}

/// The file in sled's directory that sled 0.34 holds an exclusive `flock` on while the
/// database is open.
const SLED_LOCK_FILE: &str = "db";

/// Waits, at most `bound`, until nothing holds `file`'s lock. sled 0.34 can still hold it for
/// a moment after its last handle is dropped (a write of its own finishing on a background
/// thread); an open right then fails with "could not acquire lock" (seen once in CI, in a
/// test that edits a log right after closing it). Best effort: if the lock cannot be probed
/// the wait is skipped, and after `bound` it gives up silently (the next open reports it).
fn wait_until_unlocked(file: &Path, bound: Duration) {
    let Ok(f) = std::fs::File::open(file) else {
        return;
    };
    let until = Instant::now() + bound;
    loop {
        match f.try_lock() {
            // Ours is released when `f` is dropped.
            Ok(()) => return,
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return,
        }
    }
}

/// The writer thread's state. It alone writes records and checkpoints.
struct Writer {
    rx: Receiver<Msg>,
    store: Store,
    controller: String,
    key: SigningKey,
    cps: checkpoint::Writer,
    /// Committed record count and head hash.
    count: u64,
    head: ChainHash,
    last_cp: Option<Checkpoint>,
    last_cp_at: Instant,
    /// Telemetry records that failed to be written since the last `flush_pending`.
    lost: u64,
    config: AuditConfig,
    /// Set once `fail_writes_after` has tripped.
    injected_full: bool,
}

struct Pending {
    entry: Entry,
    json: Option<Box<RawValue>>,
    wall_ms: u64,
    mono_ns: u64,
    done: Option<Reply<u64>>,
}

enum Waiter {
    Flush(Reply<u64>),
    Checkpoint(Reply<Checkpoint>),
    Shutdown(Reply<()>),
}

impl Writer {
    fn run(mut self) {
        let mut pending: Vec<Pending> = Vec::new();
        let mut waiters: Vec<Waiter> = Vec::new();
        // When the oldest unwritten telemetry record arrived.
        let mut oldest: Option<Instant> = None;
        let max_drain = self.config.telemetry_batch.max(1) * 4;
        // The latest `hold_until` of the held batches pending, and whether a record someone
        // waits for arrived outside any hold (which ends the hold: it is committed at once).
        let mut hold: Option<Instant> = None;
        let mut unheld = false;
        loop {
            let mut disconnected = false;
            let first = match self.deadline(oldest, hold) {
                Some(at) => match self
                    .rx
                    .recv_timeout(at.saturating_duration_since(Instant::now()))
                {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => {
                        disconnected = true;
                        None
                    }
                },
                None => match self.rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => {
                        disconnected = true;
                        None
                    }
                },
            };
            let mut next = first;
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Append {
                        entry,
                        json,
                        wall_ms,
                        mono_ns,
                        done,
                    } => {
                        if done.is_none() && oldest.is_none() {
                            oldest = Some(Instant::now());
                        }
                        unheld |= done.is_some();
                        pending.push(Pending {
                            entry,
                            json,
                            wall_ms,
                            mono_ns,
                            done,
                        });
                    }
                    Msg::AppendBatch { items, hold_until } => {
                        match hold_until {
                            Some(t) => hold = Some(hold.map_or(t, |h| h.max(t))),
                            None => unheld = true,
                        }
                        pending.extend(items);
                    }
                    Msg::Flush(r) => waiters.push(Waiter::Flush(r)),
                    Msg::Checkpoint(r) => waiters.push(Waiter::Checkpoint(r)),
                    Msg::Shutdown(r) => waiters.push(Waiter::Shutdown(r)),
                }
                if pending.len() >= max_drain {
                    break;
                }
                next = match self.rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => {
                        disconnected = true;
                        None
                    }
                };
            }

            let someone_waits =
                !waiters.is_empty() || pending.iter().any(|p| p.done.is_some()) || disconnected;
            let full = pending.len() >= self.config.telemetry_batch;
            let due = oldest.is_some_and(|t| t.elapsed() >= self.config.telemetry_delay);
            let held = hold.is_some_and(|t| Instant::now() < t)
                && !unheld
                && waiters.is_empty()
                && !disconnected
                && !full;
            if !pending.is_empty() && !held && (someone_waits || full || due) {
                self.commit(&mut pending);
                oldest = None;
                hold = None;
                unheld = false;
            }

            let wants_checkpoint = waiters
                .iter()
                .any(|w| matches!(w, Waiter::Checkpoint(_) | Waiter::Shutdown(_)))
                || disconnected;
            let mut cp_result = None;
            if wants_checkpoint || self.checkpoint_due() {
                let r = self.checkpoint();
                if let Err(e) = &r {
                    tracing::error!(error = %e, "writing an audit checkpoint");
                    // Retry after a full interval rather than in a tight loop.
                    self.last_cp_at = Instant::now();
                }
                cp_result = Some(r);
            }

            let mut stop = disconnected;
            for w in waiters.drain(..) {
                match w {
                    Waiter::Flush(r) => {
                        let res = if self.lost > 0 {
                            let lost = std::mem::take(&mut self.lost);
                            Err(AuditError::Write(format!(
                                "{lost} telemetry records could not be written"
                            )))
                        } else {
                            Ok(self.count)
                        };
                        let _ = r.send(res);
                    }
                    Waiter::Checkpoint(r) => {
                        let _ = r.send(clone_result(&cp_result));
                    }
                    Waiter::Shutdown(r) => {
                        let _ = r.send(clone_result(&cp_result).map(|_| ()));
                        stop = true;
                    }
                }
            }
            if stop {
                if let Err(e) = self.store.db.flush() {
                    tracing::error!(error = %e, "flushing the audit database at shutdown");
                }
                return;
            }
        }
    }

    /// When the writer must wake up without a message: to commit waiting telemetry, to
    /// commit held batches when their hold ends, or to write a time-based checkpoint.
    fn deadline(&self, oldest: Option<Instant>, hold: Option<Instant>) -> Option<Instant> {
        let batch = oldest.map(|t| t + self.config.telemetry_delay);
        let cp = (self.count > self.cp_count())
            .then(|| self.last_cp_at + self.config.checkpoint_interval);
        [batch, hold, cp].into_iter().flatten().min()
    }

    fn cp_count(&self) -> u64 {
        self.last_cp.as_ref().map_or(0, |c| c.count)
    }

    fn checkpoint_due(&self) -> bool {
        let new = self.count - self.cp_count().min(self.count);
        new > 0
            && (new >= self.config.checkpoint_every_records
                || self.last_cp_at.elapsed() >= self.config.checkpoint_interval)
    }

    /// Encodes, writes and flushes `pending` as one atomic batch, then answers its waiters.
    fn commit(&mut self, pending: &mut Vec<Pending>) {
        let mut stored = Vec::with_capacity(pending.len());
        let mut seq = self.count;
        let mut head = self.head;
        let mut results: Vec<Result<u64, AuditError>> = Vec::with_capacity(pending.len());
        for p in pending.iter() {
            let encoded = record::encode(
                seq,
                &head,
                p.wall_ms,
                p.mono_ns,
                &self.controller,
                &p.entry,
                p.json.as_deref(),
            );
            results.push(match encoded {
                Ok((value, _)) if value.len() > MAX_RECORD_BYTES => Err(AuditError::TooLarge {
                    size: value.len(),
                    limit: MAX_RECORD_BYTES,
                }),
                Ok((value, hash)) => {
                    stored.push(value);
                    head = hash;
                    seq += 1;
                    Ok(seq - 1)
                }
                Err(e) => Err(AuditError::Encode(e)),
            });
        }
        if seq > self.count {
            self.injected_full |= self
                .config
                .fail_writes_after
                .is_some_and(|limit| seq > limit);
            let injected = self
                .injected_full
                .then(|| AuditError::Write("injected fault: no space left on device".into()));
            if let Some(d) = self.config.slow_writes {
                std::thread::sleep(d);
            }
            let mut batch = sled::Batch::default();
            self.store.records.pack(&mut batch, self.count, &stored);
            let written = match injected {
                Some(e) => Err(e),
                None => self.store.apply(&batch, seq, &head),
            }
            .and_then(|()| {
                // Applied means the records are in the tree and take these numbers whether
                // or not the flush below succeeds: the chain must go on from them.
                self.count = seq;
                self.head = head;
                self.store.flush()
            });
            if let Err(e) = written {
                let msg = e.to_string();
                tracing::error!(error = %msg, "writing an audit batch");
                for r in &mut results {
                    if r.is_ok() {
                        *r = Err(AuditError::Write(msg.clone()));
                    }
                }
            }
        }
        for (p, r) in pending.drain(..).zip(results) {
            match p.done {
                Some(done) => {
                    // The caller may have given up waiting; the record stays written.
                    let _ = done.send(r);
                }
                None => {
                    if let Err(e) = r {
                        self.lost += 1;
                        tracing::error!(error = %e, "a telemetry record could not be written");
                    }
                }
            }
        }
    }

    fn checkpoint(&mut self) -> Result<Checkpoint, AuditError> {
        if let Some(cp) = &self.last_cp
            && cp.count == self.count
        {
            return Ok(cp.clone());
        }
        if self.injected_full {
            // A full disk takes the checkpoint file's append as well.
            return Err(AuditError::Write(
                "injected fault: no space left on device (checkpoint)".into(),
            ));
        }
        // The records are flushed (every commit flushes), but sled's flush is not an fsync
        // (sled #1452). fsync its files now so that a checkpoint never covers a record a
        // power loss could still take.
        self.store.sync_files()?;
        let cp = Checkpoint::sign(&self.key, &self.controller, self.count, self.head, now_ms());
        self.cps.append(&cp)?;
        self.last_cp = Some(cp.clone());
        self.last_cp_at = Instant::now();
        Ok(cp)
    }
}

/// The record of one reading from `device`.
fn telemetry_entry(device: &str, session: Option<&str>, payload: Value) -> Entry {
    Entry {
        actor: Actor::Device { id: device.into() },
        event: Event::Telemetry,
        session: session.map(str::to_owned),
        device: Some(device.into()),
        outcome: Outcome::Ok,
        payload,
    }
}

fn clone_result(r: &Option<Result<Checkpoint, AuditError>>) -> Result<Checkpoint, AuditError> {
    match r {
        Some(Ok(cp)) => Ok(cp.clone()),
        Some(Err(e)) => Err(AuditError::Write(e.to_string())),
        None => Err(AuditError::Write("no checkpoint was attempted".into())),
    }
}

/// Checks the last complete checkpoint against the records before writing anything, so a
/// controller never appends to a log that already lost checkpointed records or was signed
/// by another key.
fn check_last_checkpoint(
    store: &Store,
    path: &Path,
    key: &VerifyingKey,
    count: u64,
) -> Result<Option<Checkpoint>, AuditError> {
    let file = checkpoint::read(path)?;
    let Some(line) = file.lines.last() else {
        return Ok(None);
    };
    let bad = |problem: String| AuditError::Inconsistent {
        dir: store.dir.clone(),
        problem: format!(
            "{} line {}: {problem}",
            layout::CHECKPOINTS_FILE,
            line.number
        ),
    };
    let cp = line.parsed.clone().map_err(&bad)?;
    if !cp.signature_valid(key) {
        return Err(bad("signature does not verify with controller.pub".into()));
    }
    if cp.count > count {
        return Err(bad(format!(
            "checkpoint covers {} records but the log holds {count}",
            cp.count
        )));
    }
    let head_then = store.hash_at(cp.count)?;
    if head_then != cp.head {
        return Err(bad(format!(
            "checkpoint head {} differs from the hash of record {} ({head_then})",
            cp.head,
            cp.count.saturating_sub(1)
        )));
    }
    Ok(Some(cp))
}

fn create_private_dir(dir: &Path) -> Result<(), AuditError> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.is_dir() {
        return Ok(());
    }
    // The log holds patient session data: only the controller's user may read it.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| AuditError::io(dir, e))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        keys::sync_dir(parent)?;
    }
    Ok(())
}

/// Wall-clock time in Unix milliseconds (0 for a clock set before 1970).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

// The session runtime shares one log across sessions and threads.
const _: () = {
    const fn shareable<T: Send + Sync + Clone>() {}
    shareable::<AuditLog>();
};

/// The controller run before this one, as its records tell it ([`AuditLog::previous_run`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreviousRun {
    /// The log holds an earlier run.
    pub found: bool,
    /// That run ended with a `ControllerStop` record (a clean shutdown, which ends every
    /// session first). False after a kill, a crash or a power loss.
    pub ended_cleanly: bool,
    /// Sessions an operator started in that run that never ended, oldest first.
    pub interrupted_sessions: Vec<String>,
    /// The last record of the log: its sequence number and wall clock (Unix ms), i.e. when
    /// the earlier run went silent.
    pub last_seq: Option<u64>,
    /// See `last_seq`.
    pub last_wall_ms: Option<u64>,
}
