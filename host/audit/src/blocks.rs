//! How stored records sit in sled's records tree.
//!
//! **Layout 2, blocks** (every log created since this module exists): a key is the 8-byte
//! big-endian sequence number of the first record of a *block*, and its value is the block:
//! one or more stored records (`hash || body`, see [`crate::record`]) in sequence order, each
//! preceded by its length as a 4-byte big-endian integer. The records of one group commit are
//! packed into blocks of at most [`BLOCK_BYTES`] (a record larger than that is a block of its
//! own); a block is written once and never rewritten, like a record before it.
//!
//! Why: sled 0.34 keeps about 16 bytes of memory for every key it stores, beyond its page
//! cache and for as long as the database is open, also after a reopen (sled #986, #1410;
//! measured with `AUDIT_BENCH_SOAK`, BENCHMARKS.md). One key per record made a controller
//! under telemetry load grow by ~40 MiB a minute. Blocks divide sled's share by the records
//! per block (the soaks in BENCHMARKS.md: 17 bytes per record before, about 1 after the
//! first minutes).
//! The cap keeps sled's leaf nodes (up to 17 entries before a split, `Node::should_split`)
//! clear of its blob threshold (a quarter of its 512 KiB segment, less a header: just under
//! 128 KiB), above which every rewrite of the node becomes a file of its own. 17 blocks of
//! 4 KiB are ~70 KiB. At 8 KiB (until 2026-12-07) a full leaf was ~140 KiB, over it: a log
//! written at 40 000 records/s held 31 blob files, and the e2e soak processed 59-64 thousand
//! readings a second against 89-90 thousand at 4 KiB. Smaller blocks also shrink what sled
//! keeps in memory uncounted while reading (see `CACHE_BYTES` in `store.rs`): `verify` of a
//! 3.4 M-record log peaked at 1 GiB with 8 KiB blocks, 483 MiB with 4 KiB, 320-357 MiB with
//! 2 KiB. The price is more keys, i.e. more of sled's per-key bytes per record; 2 KiB was
//! not faster than 4 KiB and doubles that again (BENCHMARKS.md, 2026-12-07 evening).
//!
//! **Layout 1, one record per key** (logs written before): the key is the record's sequence
//! number and the value the stored record. Such a log is read as it is and appended to in
//! its own layout, so nothing already recorded is moved or rewritten.
//!
//! The meta tree's `layout` key says which; a log without it is layout 1 if it has records
//! and becomes layout 2 when it has none yet.

use crate::record;
use crate::verify::ProblemKind;

/// Meta key of the records layout (`b"2"` for blocks; absent means one record per key).
pub(crate) const LAYOUT_KEY: &[u8] = b"layout";
/// The value of [`LAYOUT_KEY`] for blocks.
pub(crate) const LAYOUT_BLOCKS: &[u8] = b"2";
/// The largest block the writer packs several records into.
pub(crate) const BLOCK_BYTES: usize = 4 * 1024;

/// How a log's records are keyed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Layout 1: one record per key.
    PerRecord,
    /// Layout 2: blocks of records under the first one's number.
    Blocks,
}

/// One stored record as read, `(seq, hash || body)`, or why it could not be read (the chain
/// walk reports that at the record it expected next).
pub(crate) type RawItem = Result<(u64, Vec<u8>), ProblemKind>;

/// The records tree with its layout: every record-level read and the writer's packing.
#[derive(Clone, Debug)]
pub(crate) struct Records {
    pub tree: sled::Tree,
    pub layout: Layout,
}

/// One entry of the tree as records: each `(seq, stored record)` in order, then an error in
/// place of the first one that cannot be cut out of the value.
pub(crate) fn split<'a>(
    layout: Layout,
    key: &[u8],
    value: &'a [u8],
) -> Vec<Result<(u64, &'a [u8]), ProblemKind>> {
    let Some(first) = record::seq_of(key) else {
        return vec![Err(ProblemKind::ForeignKey(hex::encode(key)))];
    };
    if layout == Layout::PerRecord {
        return vec![Ok((first, value))];
    }
    let mut out = Vec::new();
    let mut rest = value;
    let mut seq = first;
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            out.push(Err(ProblemKind::Undecodable(format!(
                "block {first}: {} stray bytes where a record's length belongs",
                rest.len()
            ))));
            return out;
        };
        let len = u32::from_be_bytes(*len) as usize;
        if len == 0 || len > tail.len() {
            out.push(Err(ProblemKind::Undecodable(format!(
                "block {first}: a {len}-byte record where {} bytes remain",
                tail.len()
            ))));
            return out;
        }
        let (stored, tail) = tail.split_at(len);
        out.push(Ok((seq, stored)));
        rest = tail;
        // Only a forged key gets here (a log never numbers that far).
        let Some(next) = seq.checked_add(1) else {
            if !rest.is_empty() {
                out.push(Err(ProblemKind::Undecodable(format!(
                    "block {first}: records numbered past {}",
                    u64::MAX
                ))));
            }
            return out;
        };
        seq = next;
    }
    if out.is_empty() {
        out.push(Err(ProblemKind::Undecodable(format!(
            "block {first} is empty"
        ))));
    }
    out
}

fn owned(items: Vec<Result<(u64, &[u8]), ProblemKind>>) -> Vec<RawItem> {
    items
        .into_iter()
        .map(|r| r.map(|(s, v)| (s, v.to_vec())))
        .collect()
}

impl Records {
    /// Every stored record in order, unchecked (the chain walk checks them).
    pub(crate) fn iter(&self) -> impl Iterator<Item = RawItem> + use<> {
        let layout = self.layout;
        self.tree.iter().flat_map(move |item| match item {
            Ok((k, v)) => owned(split(layout, &k, &v)),
            Err(e) => vec![Err(ProblemKind::Unreadable(e.to_string()))],
        })
    }

    /// Every stored record, newest first; an entry that cannot be read ends it with an error.
    pub(crate) fn iter_rev(&self) -> impl Iterator<Item = RawItem> + use<> {
        let layout = self.layout;
        self.tree.iter().rev().flat_map(move |item| match item {
            Ok((k, v)) => {
                let mut items = owned(split(layout, &k, &v));
                // An error ends a block's records; newest first it must still come last.
                let bad = items
                    .last()
                    .is_some_and(|r| r.is_err())
                    .then(|| items.pop())
                    .flatten();
                items.reverse();
                items.extend(bad);
                items
            }
            Err(e) => vec![Err(ProblemKind::Unreadable(e.to_string()))],
        })
    }

    /// Record `seq` as stored, if present.
    pub(crate) fn get(&self, seq: u64) -> Result<Option<Vec<u8>>, ProblemKind> {
        let unreadable = |e: sled::Error| ProblemKind::Unreadable(e.to_string());
        let entry = match self.layout {
            Layout::PerRecord => self
                .tree
                .get(record::key(seq))
                .map_err(unreadable)?
                .map(|v| (sled::IVec::from(&record::key(seq)), v)),
            // The block holding `seq` is the last one starting at or before it.
            Layout::Blocks => self
                .tree
                .range(..=record::key(seq))
                .next_back()
                .transpose()
                .map_err(unreadable)?,
        };
        let Some((k, v)) = entry else {
            return Ok(None);
        };
        for item in split(self.layout, &k, &v) {
            match item? {
                (s, stored) if s == seq => return Ok(Some(stored.to_vec())),
                (s, _) if s > seq => break,
                _ => {}
            }
        }
        Ok(None)
    }

    /// The stored records from `seq` to the end of the block holding it, in order: what a
    /// reader going forward (`follow`) needs next, for one lookup and one split instead of one
    /// of each per record. (The live feed does not use it: see BENCHMARKS.md.) Empty when `seq` is not stored (yet). A damaged
    /// block yields its records up to the damage; the damage is the error of the call that
    /// starts at it, as [`Records::get`] reports it.
    pub(crate) fn run_from(&self, seq: u64) -> Result<Vec<(u64, Vec<u8>)>, ProblemKind> {
        let (k, v) = match self.layout {
            Layout::PerRecord => {
                return Ok(self.get(seq)?.map(|v| (seq, v)).into_iter().collect());
            }
            Layout::Blocks => match self
                .tree
                .range(..=record::key(seq))
                .next_back()
                .transpose()
                .map_err(|e| ProblemKind::Unreadable(e.to_string()))?
            {
                Some(entry) => entry,
                None => return Ok(Vec::new()),
            },
        };
        let mut run: Vec<(u64, Vec<u8>)> = Vec::new();
        for item in split(self.layout, &k, &v) {
            match item {
                Ok((s, _)) if s < seq => {}
                // Only a run that starts at `seq` and has no gap (a block's records are
                // numbered from its key on, so a gap cannot occur, but say so here).
                Ok((s, stored)) if s == seq + run.len() as u64 => run.push((s, stored.to_vec())),
                Ok(_) => break,
                Err(kind) if run.is_empty() => return Err(kind),
                Err(_) => break,
            }
        }
        Ok(run)
    }

    /// The last stored record, if any.
    pub(crate) fn last(&self) -> Result<Option<(u64, Vec<u8>)>, ProblemKind> {
        let Some((k, v)) = self
            .tree
            .last()
            .map_err(|e| ProblemKind::Unreadable(e.to_string()))?
        else {
            return Ok(None);
        };
        match split(self.layout, &k, &v).pop() {
            Some(item) => item.map(|(s, stored)| Some((s, stored.to_vec()))),
            None => Ok(None),
        }
    }

    /// Puts stored records numbered from `first` into `batch` in this log's layout.
    pub(crate) fn pack(&self, batch: &mut sled::Batch, first: u64, stored: &[Vec<u8>]) {
        match self.layout {
            Layout::PerRecord => {
                for (seq, v) in (first..).zip(stored) {
                    batch.insert(&record::key(seq), v.as_slice());
                }
            }
            Layout::Blocks => {
                for (seq, block) in blocks(first, stored) {
                    batch.insert(&record::key(seq), block);
                }
            }
        }
    }
}

/// Stored records numbered from `first`, packed in order into blocks: `(first record's
/// number, block)`. At least one record per block, then as many as fit in [`BLOCK_BYTES`].
pub(crate) fn blocks(first: u64, stored: &[Vec<u8>]) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut seq = first;
    let mut rest = stored;
    while let Some(head) = rest.first() {
        let mut size = 4 + head.len();
        let mut n = 1;
        while let Some(next) = rest.get(n) {
            if size + 4 + next.len() > BLOCK_BYTES {
                break;
            }
            size += 4 + next.len();
            n += 1;
        }
        let mut block = Vec::with_capacity(size);
        for v in &rest[..n] {
            // MAX_RECORD_BYTES (1 MiB) keeps every length within u32.
            block.extend_from_slice(&(v.len() as u32).to_be_bytes());
            block.extend_from_slice(v);
        }
        out.push((seq, block));
        seq += n as u64;
        rest = &rest[n..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(i: u64, len: usize) -> Vec<u8> {
        let mut v = vec![(i % 251) as u8; len];
        v[..8].copy_from_slice(&i.to_be_bytes());
        v
    }

    /// The block value of records `seqs`, each `stored(i, 40)`, written by hand from the
    /// documented layout (`u32be length || record`, repeated).
    fn hand_block(seqs: std::ops::Range<u64>) -> Vec<u8> {
        let mut block = Vec::new();
        for i in seqs {
            let v = stored(i, 40);
            block.extend_from_slice(&(v.len() as u32).to_be_bytes());
            block.extend_from_slice(&v);
        }
        block
    }

    /// An empty records tree in `layout`, in a directory of its own.
    fn empty_records(layout: Layout) -> (tempfile::TempDir, Records) {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let db = sled::open(dir.path()).expect("sled");
        let tree = db.open_tree("records").expect("tree");
        (dir, Records { tree, layout })
    }

    #[test]
    fn packed_blocks_read_back_record_by_record_in_both_directions() {
        let (_dir, records) = empty_records(Layout::Blocks);
        // Two commits: small records, then one larger than a block between small ones.
        let first: Vec<Vec<u8>> = (0..50).map(|i| stored(i, 400)).collect();
        let second: Vec<Vec<u8>> = (50..53)
            .map(|i| stored(i, if i == 51 { BLOCK_BYTES * 2 } else { 300 }))
            .collect();
        for (at, commit) in [(0, &first), (50, &second)] {
            let mut batch = sled::Batch::default();
            records.pack(&mut batch, at, commit);
            records.tree.apply_batch(batch).expect("apply");
        }
        let all: Vec<Vec<u8>> = first.iter().chain(&second).cloned().collect();

        let keys = records.tree.len();
        assert!(
            keys < 15,
            "50 records of 404 bytes fit 20 to a block: {keys} keys"
        );
        for (k, v) in records.tree.iter().map(|r| r.expect("entry")) {
            let n = split(Layout::Blocks, &k, &v).len();
            assert!(
                v.len() <= BLOCK_BYTES || n == 1,
                "{} bytes, {n} records",
                v.len()
            );
        }
        let forward: Vec<(u64, Vec<u8>)> = records.iter().map(|r| r.expect("ok")).collect();
        assert_eq!(forward, (0..).zip(all.iter().cloned()).collect::<Vec<_>>());
        let mut backward: Vec<(u64, Vec<u8>)> =
            records.iter_rev().map(|r| r.expect("ok")).collect();
        backward.reverse();
        assert_eq!(backward, forward);
        for (seq, v) in &forward {
            assert_eq!(records.get(*seq).expect("get").as_ref(), Some(v), "{seq}");
        }
        assert_eq!(records.get(53).expect("get"), None);
        assert_eq!(records.last().expect("last"), forward.last().cloned());

        // Reading forward a block at a time gives the same records, each once, in fewer
        // lookups than records.
        let mut runs = 0;
        let mut ahead = Vec::new();
        let mut next = 0;
        loop {
            let run = records.run_from(next).expect("run");
            let Some(&(s, _)) = run.first() else { break };
            assert_eq!(s, next, "a run starts where it was asked to");
            runs += 1;
            next += run.len() as u64;
            ahead.extend(run);
        }
        assert_eq!(ahead, forward);
        assert!(
            runs < forward.len() / 4,
            "{runs} lookups for {} records",
            forward.len()
        );
        // From the middle of a block: the rest of that block.
        let mid = records.run_from(7).expect("run");
        assert_eq!(mid.first().map(|(s, _)| *s), Some(7));
        assert_eq!(mid, forward[7..7 + mid.len()].to_vec());
        assert!(records.run_from(53).expect("run").is_empty());
    }

    #[test]
    fn a_run_stops_at_damage_and_the_next_one_reports_it() {
        let (_dir, records) = empty_records(Layout::Blocks);
        let mut block = hand_block(10..14);
        // The third record's length says more than the block holds.
        block[88..92].copy_from_slice(&4000u32.to_be_bytes());
        records.tree.insert(record::key(10), block).expect("insert");
        let run = records.run_from(10).expect("the records before the damage");
        assert_eq!(
            run.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![10, 11]
        );
        assert_eq!(records.run_from(11).expect("run").len(), 1);
        let damage = records.run_from(12).expect_err("the damage");
        assert_eq!(Err(damage), records.get(12), "reported as get reports it");

        // One record per key (layout 1): a run is that record.
        let (_dir, old) = empty_records(Layout::PerRecord);
        old.tree
            .insert(record::key(3), stored(3, 40))
            .expect("insert");
        assert_eq!(old.run_from(3).expect("run"), vec![(3, stored(3, 40))]);
        assert!(old.run_from(4).expect("run").is_empty());
    }

    proptest::proptest! {
        #[test]
        fn blocks_split_back_into_the_records_packed(
            first in 0u64..u64::MAX / 2,
            sizes in proptest::collection::vec(1usize..3 * BLOCK_BYTES, 1..40),
        ) {
            let stored: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, n)| vec![i as u8; *n])
                .collect();
            let mut back = Vec::new();
            for (key, block) in blocks(first, &stored) {
                let items = split(Layout::Blocks, &record::key(key), &block);
                proptest::prop_assert!(block.len() <= BLOCK_BYTES || items.len() == 1);
                for item in items {
                    let (seq, v) = item.map_err(|e| {
                        proptest::test_runner::TestCaseError::fail(e.to_string())
                    })?;
                    back.push((seq, v.to_vec()));
                }
            }
            let expected: Vec<(u64, Vec<u8>)> = (first..).zip(stored).collect();
            proptest::prop_assert_eq!(back, expected);
        }

        #[test]
        fn any_stored_bytes_split_without_panicking(
            key in proptest::collection::vec(proptest::num::u8::ANY, 0..12),
            value in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
        ) {
            let items = split(Layout::Blocks, &key, &value);
            proptest::prop_assert!(!items.is_empty());
            let errors = items.iter().filter(|i| i.is_err()).count();
            proptest::prop_assert!(errors <= 1);
            proptest::prop_assert!(errors == 0 || items.last().is_some_and(|i| i.is_err()));
            let bytes: usize = items.iter().flatten().map(|(_, v)| 4 + v.len()).sum();
            proptest::prop_assert!(bytes <= value.len());
        }
    }

    #[test]
    fn a_bad_length_ends_the_block_at_that_record() {
        let block = hand_block(0..3);
        let mut cut = block.clone();
        cut[44..48].copy_from_slice(&4000u32.to_be_bytes());
        let items = split(Layout::Blocks, &7u64.to_be_bytes(), &cut);
        assert_eq!(items.len(), 2);
        assert!(matches!(items[0], Ok((7, _))));
        assert!(matches!(&items[1], Err(ProblemKind::Undecodable(m)) if m.contains("4000")));

        let items = split(
            Layout::Blocks,
            &7u64.to_be_bytes(),
            &block[..block.len() - 1],
        );
        assert!(matches!(
            items.last(),
            Some(Err(ProblemKind::Undecodable(_)))
        ));
        let items = split(Layout::Blocks, &u64::MAX.to_be_bytes(), &block);
        assert!(matches!(
            &items[..],
            [Ok((u64::MAX, _)), Err(ProblemKind::Undecodable(_))]
        ));
        let items = split(Layout::Blocks, b"x", &block);
        assert!(matches!(&items[..], [Err(ProblemKind::ForeignKey(k))] if k == "78"));
        let items = split(Layout::PerRecord, &7u64.to_be_bytes(), &block);
        assert!(matches!(&items[..], [Ok((7, v))] if v.len() == block.len()));
    }
}
