//! The analyzer's picture of the traced heap: [`LiveHeap`] (every block live at the current point of
//! the replay, keyed by address), [`StackMap`] (a table keyed by stack id, dense where ids are dense)
//! and [`StackStats`] (per-stack measures: allocated, live, live at the global peak, temporary),
//! summed as the [`Amount`]s the trace's [`Weights`] give its blocks (estimates in a sampled trace).
//!
//! These are the analyzer's only structures that grow while a trace streams by, so each is sized by
//! what it must hold (the live set, the distinct stacks) and never by the trace's length. Nothing here
//! reads files or knows about records: [`crate::replay`] drives them.

use crate::sampling::{Amount, Weights};
use rustc_hash::FxHashMap;
use std::collections::hash_map::Entry;

/// One live block: what the heap remembers about an address between its allocation and its free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    /// Requested size in bytes.
    pub size: u64,
    /// Stack id of the call that made the block (for a realloc chain, the latest realloc).
    pub stack: u32,
}

/// Every live block, by address, with running totals.
///
/// A plain hash map with FxHash: addresses are distinct, 16-byte aligned integers and the map is on
/// the hot path of every record, so a cryptographic hash would be most of the replay's cost.
#[derive(Default)]
pub struct LiveHeap {
    blocks: FxHashMap<u64, Block>,
    bytes: u64,
}

impl LiveHeap {
    /// Makes `addr` live. If it already was (a free the trace missed), the old block is replaced and
    /// returned so the caller can account for its release.
    #[inline]
    pub fn insert(&mut self, addr: u64, block: Block) -> Option<Block> {
        self.bytes = self.bytes.wrapping_add(block.size);
        match self.blocks.entry(addr) {
            Entry::Vacant(v) => {
                v.insert(block);
                None
            }
            Entry::Occupied(mut o) => {
                let old = o.insert(block);
                self.bytes = self.bytes.wrapping_sub(old.size);
                Some(old)
            }
        }
    }

    /// Releases `addr`, returning its block if it was live.
    #[inline]
    pub fn remove(&mut self, addr: u64) -> Option<Block> {
        let old = self.blocks.remove(&addr);
        if let Some(old) = old {
            self.bytes = self.bytes.wrapping_sub(old.size);
        }
        old
    }

    /// The block live at `addr`, if any.
    pub fn get(&self, addr: u64) -> Option<Block> {
        self.blocks.get(&addr).copied()
    }

    /// Number of live blocks.
    pub fn len(&self) -> u64 {
        self.blocks.len() as u64
    }

    /// Whether no block is live.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Sum of the live blocks' sizes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The live blocks, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Block)> + '_ {
        self.blocks.iter().map(|(&a, &b)| (a, b))
    }
}

/// A table keyed by stack id.
///
/// The preload hands out stack ids densely from 1, so most ids index a vector directly; an id far
/// beyond the vector (a corrupt trace, or a writer with another numbering) goes to a hash map instead,
/// so that memory stays proportional to the number of distinct ids whatever the ids are.
pub struct StackMap<T> {
    dense: Vec<Option<T>>,
    dense_used: usize,
    sparse: FxHashMap<u32, T>,
}

impl<T> Default for StackMap<T> {
    fn default() -> Self {
        StackMap {
            dense: Vec::new(),
            dense_used: 0,
            sparse: FxHashMap::default(),
        }
    }
}

impl<T> StackMap<T> {
    /// The entry for `id`, created with `make` if absent.
    #[inline]
    pub fn get_or_insert_with(&mut self, id: u32, make: impl FnOnce() -> T) -> &mut T {
        let i = id as usize;
        if i < self.dense.len() {
            let slot = &mut self.dense[i];
            if slot.is_none() {
                *slot = Some(make());
                self.dense_used += 1;
            }
            return slot.as_mut().expect("slot was just filled");
        }
        self.insert_slow(id, make)
    }

    #[cold]
    fn insert_slow(&mut self, id: u32, make: impl FnOnce() -> T) -> &mut T {
        let i = id as usize;
        // Grow the dense part only while it stays at least half full.
        if !self.sparse.contains_key(&id) && i < 2 * (self.dense_used + 4096) {
            let new_len = (i + 1)
                .max(self.dense.len() * 2)
                .min(2 * (self.dense_used + 4096));
            self.dense.resize_with(new_len, || None);
            self.dense[i] = Some(make());
            self.dense_used += 1;
            return self.dense[i].as_mut().expect("slot was just filled");
        }
        self.sparse.entry(id).or_insert_with(make)
    }

    /// The entry for `id`, if present.
    pub fn get(&self, id: u32) -> Option<&T> {
        match self.dense.get(id as usize) {
            Some(slot) => slot.as_ref(),
            None => self.sparse.get(&id),
        }
    }

    /// Every entry, dense ids in order first, then the sparse ones in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.dense
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|v| (i as u32, v)))
            .chain(self.sparse.iter().map(|(&k, v)| (k, v)))
    }

    /// Every entry, mutably, in the order of [`StackMap::iter`].
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u32, &mut T)> {
        self.dense
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| s.as_mut().map(|v| (i as u32, v)))
            .chain(self.sparse.iter_mut().map(|(&k, v)| (k, v)))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.dense_used + self.sparse.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one stack did over the whole trace. While a replay runs, these are sums of the fixed-point
/// [`Amount`]s of the trace's [`Weights`]; [`StackTable::finalize`] makes them whole bytes and counts
/// (estimates, in a sampled trace).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackStats {
    /// Bytes requested by allocation calls (realloc included) on this stack.
    pub alloc_bytes: u64,
    /// Allocation calls on this stack.
    pub alloc_count: u64,
    /// Bytes of this stack's blocks live now (at the end of the replay: leaked).
    pub live_bytes: u64,
    /// Number of this stack's blocks live now.
    pub live_count: u64,
    /// Bytes of this stack's blocks live at the global peak (valid once finalized).
    pub peak_bytes: u64,
    /// Number of this stack's blocks live at the global peak (valid once finalized).
    pub peak_count: u64,
    /// The peak (its event sequence number) that `peak_bytes`/`peak_count` describe.
    peak_seq: u64,
    /// Blocks of this stack freed as temporary (heaptrack's definition, see `replay::Replayer`).
    pub temporary_count: u64,
    /// Bytes of those temporary blocks.
    pub temporary_bytes: u64,
}

impl StackStats {
    /// A stack first seen while `peak_seq` is the latest peak: it had nothing live then.
    fn new(peak_seq: u64) -> StackStats {
        StackStats {
            peak_seq,
            ..StackStats::default()
        }
    }

    /// Brings the peak capture up to date before the live values change.
    ///
    /// The lazy peak: when the global live total reaches a new high at event `peak_seq`, copying every
    /// stack's live values would cost O(stacks) per new peak. Instead a stack whose capture is older
    /// than the latest peak has not changed since that peak (we are its first touch after it), so its
    /// live values right now are its values at the peak.
    #[inline]
    fn sync_peak(&mut self, peak_seq: u64) {
        if self.peak_seq != peak_seq {
            self.peak_bytes = self.live_bytes;
            self.peak_count = self.live_count;
            self.peak_seq = peak_seq;
        }
    }

    /// Adds `other`'s measures to these (finalized statistics of stacks a report merges into one
    /// entry: every measure is a sum over blocks, so the sums are the merged entry's measures).
    pub fn add(&mut self, other: &StackStats) {
        self.alloc_bytes = self.alloc_bytes.wrapping_add(other.alloc_bytes);
        self.alloc_count += other.alloc_count;
        self.live_bytes = self.live_bytes.wrapping_add(other.live_bytes);
        self.live_count += other.live_count;
        self.peak_bytes = self.peak_bytes.wrapping_add(other.peak_bytes);
        self.peak_count += other.peak_count;
        self.temporary_bytes = self.temporary_bytes.wrapping_add(other.temporary_bytes);
        self.temporary_count += other.temporary_count;
    }

    /// These measures, summed as fixed-point amounts, as whole bytes and counts.
    fn rounded(&self, w: &Weights) -> StackStats {
        StackStats {
            alloc_bytes: w.bytes(self.alloc_bytes),
            alloc_count: w.count(self.alloc_count),
            live_bytes: w.bytes(self.live_bytes),
            live_count: w.count(self.live_count),
            peak_bytes: w.bytes(self.peak_bytes),
            peak_count: w.count(self.peak_count),
            peak_seq: self.peak_seq,
            temporary_count: w.count(self.temporary_count),
            temporary_bytes: w.bytes(self.temporary_bytes),
        }
    }
}

/// Per-stack statistics over a replay, with the lazy capture of each stack's share of the peak.
#[derive(Default)]
pub struct StackTable {
    stats: StackMap<StackStats>,
    weights: Weights,
    finalized: bool,
}

impl StackTable {
    /// A table for a trace with these weights (`default()`: an unsampled trace).
    pub fn new(weights: Weights) -> StackTable {
        StackTable {
            weights,
            ..StackTable::default()
        }
    }

    #[inline]
    fn touch(&mut self, stack: u32, peak_seq: u64) -> &mut StackStats {
        let s = self
            .stats
            .get_or_insert_with(stack, || StackStats::new(peak_seq));
        s.sync_peak(peak_seq);
        s
    }

    /// A block worth `amount` became live on `stack`; `peak_seq` is the latest peak before this
    /// event.
    #[inline]
    pub fn alloc(&mut self, stack: u32, amount: Amount, peak_seq: u64) {
        let s = self.touch(stack, peak_seq);
        s.alloc_bytes = s.alloc_bytes.wrapping_add(amount.bytes);
        s.alloc_count += amount.count;
        s.live_bytes = s.live_bytes.wrapping_add(amount.bytes);
        s.live_count += amount.count;
    }

    /// A block of `stack` worth `amount` was released.
    #[inline]
    pub fn release(&mut self, stack: u32, amount: Amount, temporary: bool, peak_seq: u64) {
        let s = self.touch(stack, peak_seq);
        s.live_bytes = s.live_bytes.wrapping_sub(amount.bytes);
        s.live_count = s.live_count.saturating_sub(amount.count);
        if temporary {
            s.temporary_count += amount.count;
            s.temporary_bytes = s.temporary_bytes.wrapping_add(amount.bytes);
        }
    }

    /// Completes the peak capture once the replay is over and `peak_seq` is the final peak, and
    /// makes every measure whole bytes and counts.
    pub fn finalize(&mut self, peak_seq: u64) {
        let w = self.weights;
        for (_, s) in self.stats.iter_mut() {
            s.sync_peak(peak_seq);
            if w.sample_bytes().is_some() {
                *s = s.rounded(&w);
            }
        }
        self.finalized = true;
    }

    /// The statistics of `stack`.
    pub fn get(&self, stack: u32) -> Option<&StackStats> {
        debug_assert!(self.finalized, "StackTable read before finalize");
        self.stats.get(stack)
    }

    /// Every stack seen, with its statistics.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &StackStats)> {
        debug_assert!(self.finalized, "StackTable read before finalize");
        self.stats.iter()
    }

    /// Every stack seen so far with what it holds live now: `(stack, live amount)`, in the
    /// fixed-point units of [`StackTable::weights`]; zero for a stack that holds nothing. Unlike
    /// [`StackTable::iter`], valid in the middle of a replay (snapshots at marks and times).
    pub fn live(&self) -> impl Iterator<Item = (u32, Amount)> + '_ {
        self.stats.iter().map(|(id, s)| {
            let amount = Amount {
                bytes: s.live_bytes,
                count: s.live_count,
            };
            (id, amount)
        })
    }

    /// The weights the table's amounts are in.
    pub fn weights(&self) -> Weights {
        self.weights
    }

    /// Number of stacks seen.
    pub fn len(&self) -> usize {
        self.stats.len()
    }

    /// Whether no stack was seen.
    pub fn is_empty(&self) -> bool {
        self.stats.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_heap_tracks_bytes_and_replacement() {
        let mut h = LiveHeap::default();
        assert_eq!(h.insert(0x10, Block { size: 5, stack: 1 }), None);
        assert_eq!(h.insert(0x20, Block { size: 7, stack: 2 }), None);
        assert_eq!(h.bytes(), 12);
        assert_eq!(
            h.insert(0x10, Block { size: 1, stack: 3 }),
            Some(Block { size: 5, stack: 1 })
        );
        assert_eq!(h.bytes(), 8);
        assert_eq!(h.remove(0x20), Some(Block { size: 7, stack: 2 }));
        assert_eq!(h.remove(0x20), None);
        assert_eq!((h.len(), h.bytes()), (1, 1));
    }

    #[test]
    fn stack_map_is_dense_for_dense_ids_and_sparse_for_wild_ones() {
        let mut m: StackMap<u32> = StackMap::default();
        for id in 0..10_000u32 {
            *m.get_or_insert_with(id, || 0) += id;
        }
        *m.get_or_insert_with(u32::MAX, || 7) += 1;
        *m.get_or_insert_with(3_000_000_000, || 9) += 1;
        assert_eq!(m.len(), 10_002);
        assert!(m.dense.len() < 40_000, "dense part stays near the ids used");
        assert_eq!(m.get(9_999), Some(&9_999));
        assert_eq!(m.get(u32::MAX), Some(&8));
        assert_eq!(m.get(3_000_000_000), Some(&10));
        assert_eq!(m.get(20_000), None);
        assert_eq!(m.iter().count(), 10_002);
    }

    #[test]
    fn lazy_peak_capture_is_the_value_at_the_latest_peak() {
        let mut t = StackTable::default();
        let w = Weights::default();
        // Event 1: stack 1 +100 -> peak at seq 1.
        t.alloc(1, w.of(100), 0);
        // Event 2: stack 2 +50 -> peak at seq 2 (stack 1 untouched since, so its share is 100).
        t.alloc(2, w.of(50), 1);
        // Event 3: stack 2 releases 50 (after the peak at 2).
        t.release(2, w.of(50), false, 2);
        t.finalize(2);
        assert_eq!(t.get(1).unwrap().peak_bytes, 100);
        assert_eq!(t.get(2).unwrap().peak_bytes, 50);
        assert_eq!(t.get(2).unwrap().live_bytes, 0);
    }
}
