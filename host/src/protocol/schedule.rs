//! The combined timeline: start offsets from `at`, `after` and `with`.

use std::collections::BTreeMap;

use super::{BlockSpec, Protocol, ProtocolError, ProtocolErrorKind, Start};

/// The first circle of `after`/`with` references, if any: the index of its first block in
/// file order and the ids round it (that block first, and again at the end).
///
/// Every block waits for at most one other, so following the references from each block
/// either ends (at a fixed start or an unknown id) or comes back round.
pub(super) fn find_cycle(blocks: &[BlockSpec]) -> Option<(usize, Vec<String>)> {
    let index: BTreeMap<&str, usize> = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| (b.id.as_str(), i))
        .collect();
    let next = |i: usize| {
        blocks[i]
            .start
            .reference()
            .and_then(|(_, id)| index.get(id).copied())
    };
    for first in 0..blocks.len() {
        let mut path = vec![first];
        let mut cur = first;
        while let Some(n) = next(cur) {
            if let Some(at) = path.iter().position(|&p| p == n) {
                // A circle, perhaps reached from outside it: report it from the member that
                // comes first in the file, so the same circle always reads the same way.
                let circle = &path[at..];
                let min = *circle.iter().min()?;
                let lead = circle.iter().position(|&p| p == min)?;
                let mut chain: Vec<String> = circle[lead..]
                    .iter()
                    .chain(&circle[..lead])
                    .map(|&i| blocks[i].id.clone())
                    .collect();
                chain.push(chain[0].clone());
                return Some((circle[lead], chain));
            }
            path.push(n);
            cur = n;
        }
    }
    None
}

impl Protocol {
    /// Start offsets (ms from the session start) of the enabled blocks, given each enabled
    /// block's plan duration in ms (from its plugin's plan). `at` is a fixed offset, `after`
    /// the other block's end, `with` the other block's start.
    pub fn schedule(
        &self,
        durations: &BTreeMap<String, u64>,
    ) -> Result<BTreeMap<String, u64>, ProtocolError> {
        let index: BTreeMap<&str, &BlockSpec> =
            self.blocks.iter().map(|b| (b.id.as_str(), b)).collect();
        for b in self.enabled_blocks() {
            if !durations.contains_key(&b.id) {
                return Err(self.error(
                    Some(b.spans.block),
                    Some(&b.id),
                    ProtocolErrorKind::MissingDuration,
                ));
            }
        }
        let mut starts: BTreeMap<String, u64> = BTreeMap::new();
        for b in self.enabled_blocks() {
            // Walk the references to a block already placed or with a fixed start, then place
            // the walked blocks back to front. `load` refused unknown and disabled targets and
            // circles; they are checked again because the fields are public.
            let mut chain = vec![b];
            let mut cur = b;
            while !starts.contains_key(&cur.id) {
                let Some((key, target)) = cur.start.reference() else {
                    break;
                };
                let err = |kind| self.error(Some(cur.spans.start), Some(&cur.id), kind);
                let Some(&t) = index.get(target) else {
                    return Err(err(ProtocolErrorKind::UnknownBlock {
                        key,
                        target: target.to_string(),
                        known: self.blocks.iter().map(|b| b.id.clone()).collect(),
                    }));
                };
                if !t.enabled {
                    return Err(err(ProtocolErrorKind::DisabledBlock {
                        key,
                        target: target.to_string(),
                    }));
                }
                if chain.iter().any(|c| c.id == t.id) {
                    let mut ids: Vec<String> = chain.iter().map(|c| c.id.clone()).collect();
                    ids.push(t.id.clone());
                    return Err(err(ProtocolErrorKind::Cycle { chain: ids }));
                }
                chain.push(t);
                cur = t;
            }
            for c in chain.into_iter().rev() {
                if starts.contains_key(&c.id) {
                    continue;
                }
                let start = match &c.start {
                    Start::At { offset_ms } => Some(*offset_ms),
                    Start::With(t) => starts.get(t).copied(),
                    Start::After(t) => match (starts.get(t), durations.get(t)) {
                        (Some(s), Some(d)) => s.checked_add(*d),
                        _ => None,
                    },
                };
                // `None` here can only be an overflow: the walk placed every target first
                // and every enabled block has a duration.
                let Some(start) = start else {
                    return Err(self.error(
                        Some(c.spans.start),
                        Some(&c.id),
                        ProtocolErrorKind::Overflow,
                    ));
                };
                starts.insert(c.id.clone(), start);
            }
        }
        Ok(starts)
    }
}
