//! The sled database: the only place in modalis that touches sled.
//!
//! Two trees: [`layout::RECORDS_TREE`] (blocks of records under the first one's 8-byte
//! big-endian sequence number, see [`crate::blocks`] and [`crate::record`]) and
//! [`layout::META_TREE`] (the controller id, the records layout and the chain head, i.e. the
//! record count and the last record's hash). A batch of records and the new head are written
//! in one sled transaction, so after any crash the head matches the records.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use sled::Transactional as _;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::blocks::{self, Layout, Records};
use crate::error::AuditError;
use crate::keys::sync_dir;
use crate::layout;
use crate::record::ChainHash;

/// Meta key of the chain head: `u64be(count) || hash of record count-1`.
pub(crate) const HEAD_KEY: &[u8] = b"head";
/// Meta key of the controller id the log belongs to.
pub(crate) const CONTROLLER_KEY: &[u8] = b"controller";

#[derive(Debug)]
pub(crate) struct Store {
    pub db: sled::Db,
    pub records: Records,
    pub meta: sled::Tree,
    /// The audit directory (not the sled directory inside it).
    pub dir: PathBuf,
    pub sled_dir: PathBuf,
}

/// sled's page cache. sled's default is 1 GiB, and an audit log is written far more than it is
/// read back, so the cache just fills with records nobody will read while the controller runs:
/// a 60 s telemetry soak (`MODALIS_BENCH_SOAK_S=60 cargo bench -p modalis --bench e2e`) grew
/// the process from 339 to 1420 MiB. The writer never reads a block back (each batch writes
/// whole new blocks), and `verify`, export and the live feed read sequentially, so they gain
/// nothing from a cache larger than the blocks they are reading.
///
/// 16 MiB, not the 64 MiB used before: in 120 s e2e soaks the controller's first minute grew
/// by 81-93 MiB instead of 115-125 at the same throughput (BENCHMARKS.md, "sled's cache:
/// 16 MiB"). That
/// difference used to be hidden by mimalloc's transparent huge pages (since turned off), under
/// which caches of 8, 16 and 64 MiB had looked the same.
///
/// It is not a bound on sled's memory: sled 0.34 counts page accesses into its LRU through 256
/// shards, each with a queue of 64 accesses that is only counted (and pages evicted) when it
/// fills (`lru.rs`, `N_SHARDS`, `MAX_QUEUE_ITEMS`), so up to 16 384 pages read or written
/// recently stay in memory uncounted, bounded by the size of a leaf, i.e. of a block
/// (`blocks.rs`): `verify` of a 3.4 M-record log peaked at 1 GiB with 8 KiB blocks and 483 MiB
/// with 4 KiB ones (BENCHMARKS.md, 2026-12-07 evening).
pub const CACHE_BYTES: u64 = 16 * 1024 * 1024;

impl Store {
    /// Opens the database in `dir`. With `create` false, a directory without one is an error
    /// rather than a new empty log (so `verify` of a mistyped path does not pass).
    pub(crate) fn open(dir: &Path, create: bool) -> Result<Store, AuditError> {
        Store::open_waiting(dir, create, std::time::Duration::from_secs(1))
    }

    /// [`Store::open`], waiting at most `patience` for a lock held by a handle just closed.
    pub(crate) fn open_waiting(
        dir: &Path,
        create: bool,
        patience: std::time::Duration,
    ) -> Result<Store, AuditError> {
        let sled_dir = dir.join(layout::SLED_DIR);
        if !create && !sled_dir.join("db").is_file() {
            return Err(AuditError::NotFound {
                dir: dir.to_path_buf(),
            });
        }
        // sled releases its file lock when the last handle on a database goes, and its
        // flusher thread can hold one for a moment after the owner closed it: reopening in
        // the same process right after a close (a restarted controller, `verify` after a
        // session) may find the lock still held. A lock held that briefly is waited for; one
        // held for longer belongs to a live writer and is reported.
        let started = std::time::Instant::now();
        let db = loop {
            match sled::Config::new()
                .path(&sled_dir)
                .cache_capacity(CACHE_BYTES)
                .open()
            {
                Ok(db) => break db,
                // sled reports its exclusive file lock only as an I/O error with this text.
                Err(e) if e.to_string().contains("could not acquire lock") => {
                    if started.elapsed() >= patience {
                        return Err(AuditError::Locked {
                            path: sled_dir.clone(),
                        });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(AuditError::db(&sled_dir, e)),
            }
        };
        let records = db
            .open_tree(layout::RECORDS_TREE)
            .map_err(|e| AuditError::db(&sled_dir, e))?;
        let meta = db
            .open_tree(layout::META_TREE)
            .map_err(|e| AuditError::db(&sled_dir, e))?;
        let db_err = |e| AuditError::db(&sled_dir, e);
        let layout = match meta.get(blocks::LAYOUT_KEY).map_err(db_err)? {
            Some(v) if v == blocks::LAYOUT_BLOCKS => Layout::Blocks,
            Some(v) => {
                return Err(AuditError::Inconsistent {
                    dir: dir.to_path_buf(),
                    problem: format!(
                        "records layout {:?} is not one this modalis knows (2, or none for one \
                         record per key)",
                        String::from_utf8_lossy(&v)
                    ),
                });
            }
            None if records.is_empty() => {
                // Recorded before the first record is written (and flushed, so that sled's
                // log holds it ahead of any record): a log with records and no layout key is
                // always one written before blocks existed.
                if create {
                    meta.insert(blocks::LAYOUT_KEY, blocks::LAYOUT_BLOCKS)
                        .map_err(db_err)?;
                    db.flush().map_err(db_err)?;
                }
                Layout::Blocks
            }
            None => Layout::PerRecord,
        };
        Ok(Store {
            db,
            records: Records {
                tree: records,
                layout,
            },
            meta,
            dir: dir.to_path_buf(),
            sled_dir,
        })
    }

    fn err(&self, e: sled::Error) -> AuditError {
        AuditError::db(&self.sled_dir, e)
    }

    fn inconsistent(&self, problem: String) -> AuditError {
        AuditError::Inconsistent {
            dir: self.dir.clone(),
            problem,
        }
    }

    /// The controller id recorded in the log, if any.
    pub(crate) fn controller(&self) -> Result<Option<String>, AuditError> {
        Ok(self
            .meta
            .get(CONTROLLER_KEY)
            .map_err(|e| self.err(e))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Records `id` as the log's controller on first use; refuses another id later.
    pub(crate) fn claim_controller(&self, id: &str) -> Result<(), AuditError> {
        match self.controller()? {
            Some(found) if found == id => Ok(()),
            Some(found) => Err(AuditError::ControllerMismatch {
                dir: self.dir.clone(),
                expected: id.to_owned(),
                found,
            }),
            None => {
                if !self.records.tree.is_empty() {
                    return Err(self.inconsistent("records present but no controller id".into()));
                }
                self.meta
                    .insert(CONTROLLER_KEY, id.as_bytes())
                    .map_err(|e| self.err(e))?;
                self.db.flush().map_err(|e| self.err(e))?;
                Ok(())
            }
        }
    }

    /// The stored chain head as `(count, hash)`, if the meta tree has one.
    pub(crate) fn stored_head(&self) -> Result<Option<(u64, ChainHash)>, AuditError> {
        let Some(v) = self.meta.get(HEAD_KEY).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let Some((count, hash)) = v.split_first_chunk::<8>() else {
            return Err(self.inconsistent(format!("chain head is {} bytes, not 40", v.len())));
        };
        let hash = <[u8; 32]>::try_from(hash)
            .map_err(|_| self.inconsistent(format!("chain head is {} bytes, not 40", v.len())))?;
        Ok(Some((u64::from_be_bytes(*count), ChainHash(hash))))
    }

    /// The chain head, checked against the last record.
    pub(crate) fn head(&self) -> Result<(u64, ChainHash), AuditError> {
        let (count, hash) = self.stored_head()?.unwrap_or((0, ChainHash::GENESIS));
        let last = self
            .records
            .last()
            .map_err(|kind| self.inconsistent(format!("the last record: {kind}")))?;
        match (count, last) {
            (0, None) => Ok((0, ChainHash::GENESIS)),
            (0, Some((seq, _))) => {
                Err(self.inconsistent(format!("no chain head but a record numbered {seq}")))
            }
            (n, None) => Err(self.inconsistent(format!(
                "the chain head says {n} records but there are none"
            ))),
            (n, Some((last_seq, v))) => {
                let stored = v.first_chunk::<32>().map(|h| ChainHash(*h));
                if last_seq != n - 1 || stored != Some(hash) {
                    return Err(self.inconsistent(format!(
                        "the chain head says {n} records ending in {hash}, but the last record \
                         is number {last_seq} with hash {}",
                        stored.map_or_else(|| "(none)".into(), |h| h.to_hex())
                    )));
                }
                Ok((n, hash))
            }
        }
    }

    /// Hash of record `count - 1` (the head after `count` records).
    pub(crate) fn hash_at(&self, count: u64) -> Result<ChainHash, AuditError> {
        if count == 0 {
            return Ok(ChainHash::GENESIS);
        }
        let v = self
            .records
            .get(count - 1)
            .map_err(|kind| self.inconsistent(format!("record {}: {kind}", count - 1)))?
            .ok_or_else(|| self.inconsistent(format!("record {} is missing", count - 1)))?;
        v.first_chunk::<32>()
            .map(|h| ChainHash(*h))
            .ok_or_else(|| self.inconsistent(format!("record {} is truncated", count - 1)))
    }

    /// Writes a batch of records and the new head atomically (not yet flushed). On `Err`
    /// nothing was written.
    pub(crate) fn apply(
        &self,
        batch: &sled::Batch,
        count: u64,
        head: &ChainHash,
    ) -> Result<(), AuditError> {
        let mut head_value = Vec::with_capacity(40);
        head_value.extend_from_slice(&count.to_be_bytes());
        head_value.extend_from_slice(&head.0);
        (&self.records.tree, &self.meta)
            .transaction(|(r, m)| {
                r.apply_batch(batch)?;
                m.insert(HEAD_KEY, head_value.as_slice())?;
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => self.err(e),
                TransactionError::Abort(()) => AuditError::Write("transaction aborted".into()),
            })
    }

    /// Flushes everything applied so far to sled's file (process-crash safe, see the
    /// README for power loss).
    pub(crate) fn flush(&self) -> Result<(), AuditError> {
        self.db.flush().map(|_| ()).map_err(|e| self.err(e))
    }

    /// fsyncs every file sled keeps (its log `db`, `conf`, snapshots and large-value blobs)
    /// and their directories. sled's own flush uses sync_file_range, which does not reach
    /// the disk's cache nor the file's metadata (sled #1452); fsync of any descriptor of a
    /// file covers all of its written data.
    pub(crate) fn sync_files(&self) -> Result<(), AuditError> {
        self.db.flush().map_err(|e| self.err(e))?;
        sync_tree(&self.sled_dir)
    }
}

fn sync_tree(dir: &Path) -> Result<(), AuditError> {
    let entries = fs::read_dir(dir).map_err(|e| AuditError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| AuditError::io(dir, e))?;
        let path = entry.path();
        let kind = match entry.file_type() {
            Ok(k) => k,
            // sled may delete a blob or an old snapshot while we walk; nothing to sync then.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(AuditError::io(&path, e)),
        };
        if kind.is_dir() {
            sync_tree(&path)?;
        } else if kind.is_file() {
            match File::open(&path).and_then(|f| f.sync_all()) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(AuditError::io(&path, e)),
            }
        }
    }
    sync_dir(dir)
}
