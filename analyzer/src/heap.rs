//! The analyzer's picture of the traced heap: [`LiveHeap`] (every block live at the current point of
//! the replay, keyed by address), [`StackMap`] (a table keyed by stack id, dense where ids are dense)
//! and [`StackStats`] (per-stack measures: allocated, live, live at the global peak, temporary),
//! summed as the [`Amount`]s the trace's [`Weights`] give its blocks (estimates in a sampled trace).
//!
//! These are the analyzer's only structures that grow while a trace streams by, so each is sized by
//! what it must hold (the live set, the distinct stacks) and never by the trace's length. Nothing here
//! reads files or knows about records: [`crate::replay`] drives them.

use crate::sampling::{Amount, Weights};
use memmap2::{MmapMut, MmapOptions};
use rustc_hash::FxHashMap;
use std::ops::{Deref, DerefMut};

/// One live block: what the heap remembers about an address between its allocation and its free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    /// Requested size in bytes.
    pub size: u64,
    /// Stack id of the call that made the block (for a realloc chain, the latest realloc).
    pub stack: u32,
}

/// Every live block, by address.
///
/// The map every record of a trace goes through, so it is built for that one job rather than taken
/// from a general hash map (which cost about half of a `summary` on a trace with a million live
/// blocks):
///
/// - one 16-byte slot per block (address, size, stack) in a single array, open addressing with
///   linear probing, removals by backward shift (no tombstones, so a table never fills with dead
///   entries and never grows but with the live set); a lookup touches one cache line, rarely two.
///   A table small enough for the core's own cache ([`SMALL_SLOTS`]) is kept at most a quarter
///   full: there, a collision costs more in mispredicted branches than the memory; a larger one at
///   most half full, where memory and cache misses dominate;
/// - the home slot of an address keeps neighbours together: the page (4 KiB) of address space
///   around it lands at a pseudo-random place (a Fibonacci hash of `addr >> 12`), and the 16-byte
///   steps within it on consecutive slots, so each page of the heap has a page of the table.
///   Allocators hand out neighbouring addresses close in time, so a run of allocations or frees
///   walks the table instead of jumping around it, and the table's pages in use at any time are
///   about as few as the heap's (a table of millions of blocks outgrows the TLB's reach, and a
///   lookup on a page it does not map waits for a page walk; the previous layout, which placed
///   each 256 bytes of address space anywhere, made nearly every lookup of a large table one),
///   while any set of addresses still spreads over the whole table;
/// - a wide window crowds the table where pages of the heap are dense and two of their windows
///   overlap (an allocator of 16-byte blocks fills every slot of its pages). Probes far from home
///   are counted, and once they add up to the number of live blocks the table is laid out again
///   with narrow windows (256 bytes of address space each, 16 slots), for good: the cost of the
///   crowding stays within that of one rehash;
/// - sizes from `u32::MAX` bytes up, and the block at address 0 (which marks an empty slot), live
///   on the side, in maps as small as such blocks are rare;
/// - the slots live in memory of their own (`Slots`), backed by huge pages where the system
///   offers them, so that a large table needs few TLB entries at all.
pub struct LiveHeap {
    /// A power-of-two number of slots; `addr == 0` marks an empty one.
    slots: Slots,
    /// `slots.len() - 1`.
    mask: usize,
    /// `64 - log2(slots.len())`: the Fibonacci hash keeps the product's top bits.
    shift: u32,
    /// The window of address space whose 16-byte steps take consecutive slots: its address bits.
    window: Window,
    /// Probes beyond [`FAR`] of their home since the table was laid out, summed.
    far: usize,
    /// Occupied slots.
    len: usize,
    /// Occupied slots beyond which the table grows.
    limit: usize,
    /// Sizes that do not fit a slot's 32 bits, by address (the slot says [`BIG`]).
    big: FxHashMap<u64, u64>,
    /// The block at address 0, if any.
    zero: Option<Block>,
}

/// One slot of [`LiveHeap`]. Plain bytes ([`bytemuck::Pod`]), all zero when empty, so that
/// [`Slots`] can lay them over zeroed memory.
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Slot {
    addr: u64,
    /// The size, or [`BIG`] for a size kept in `LiveHeap::big`.
    size: u32,
    stack: u32,
}

/// The address bits of a window of [`LiveHeap`]: `addr >> bits` picks the window (hashed), and
/// the 16-byte steps within it (`(addr >> 4) & within`) consecutive slots. The table's hot paths
/// are compiled once for each of the two (see [`LiveHeap::with_window`]), so that these are
/// constants there.
#[derive(Clone, Copy, Debug, Eq)]
struct Window {
    bits: u32,
    within: usize,
}

/// The windows differ in `bits` (`within` follows from it): one comparison on the hot paths.
impl PartialEq for Window {
    #[inline(always)]
    fn eq(&self, other: &Window) -> bool {
        self.bits == other.bits
    }
}

impl Window {
    /// A page of address space: its table usage follows the heap's pages.
    const WIDE: Window = Window {
        bits: 12,
        within: (1 << 8) - 1,
    };
    /// 256 bytes of address space: for heaps dense enough to crowd wide windows.
    const NARROW: Window = Window {
        bits: 8,
        within: (1 << 4) - 1,
    };
}

/// Where the lookups of a [`LiveHeap`] start, as of when it was taken ([`LiveHeap::homes`]): plain
/// values, which a loop that prefetches while it changes the heap keeps in registers. Once the table
/// is laid out again they are stale, and a prefetch with them loads the wrong slot: a wasted hint,
/// never a wrong result.
#[derive(Clone, Copy)]
pub struct Homes {
    shift: u32,
    mask: usize,
    window: Window,
}

/// Probes this far from home (or further) count as crowding.
const FAR: usize = 16;

/// A slot's size that says "look in the big map".
const BIG: u32 = u32::MAX;

/// Slots of a new table: 16 KiB.
const MIN_SLOTS: usize = 1 << 10;

/// Tables of fewer slots than this (2 MiB, the size of a core's L2 cache) are kept at most a
/// quarter full, larger ones at most half full.
pub const SMALL_SLOTS: usize = 1 << 17;

impl Default for LiveHeap {
    fn default() -> Self {
        LiveHeap::with_slots(MIN_SLOTS)
    }
}

impl LiveHeap {
    fn with_slots(n: usize) -> LiveHeap {
        debug_assert!(n.is_power_of_two());
        LiveHeap {
            slots: Slots::zeroed(n),
            mask: n - 1,
            shift: 64 - n.trailing_zeros(),
            window: Window::WIDE,
            far: 0,
            len: 0,
            limit: if n < SMALL_SLOTS { n / 4 } else { n / 2 },
            big: FxHashMap::default(),
            zero: None,
        }
    }

    /// The slot where the search for `addr` starts (see [`LiveHeap`]).
    #[inline(always)]
    fn home(&self, addr: u64) -> usize {
        self.with_window(|w| home_of(addr, self.shift, self.mask, w))
    }

    /// `f` of the table's [`Window`], as a constant: each call site is compiled once for each.
    #[inline(always)]
    fn with_window<T>(&self, f: impl FnOnce(Window) -> T) -> T {
        if self.window == Window::WIDE {
            f(Window::WIDE)
        } else {
            f(Window::NARROW)
        }
    }

    /// The slot holding `addr`, if it is live (`addr != 0`).
    #[inline(always)]
    fn find(&self, addr: u64) -> Option<usize> {
        let mut i = self.home(addr);
        loop {
            let a = self.slots[i].addr;
            if a == addr {
                return Some(i);
            }
            if a == 0 {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// The block in slot `i`, its size from the big map if need be (taken out of it with `take`).
    #[inline(always)]
    fn block_at(&mut self, i: usize, take: bool) -> Block {
        let s = self.slots[i];
        let size = match s.size {
            BIG => self.big_size(s.addr, take),
            n => u64::from(n),
        };
        Block {
            size,
            stack: s.stack,
        }
    }

    #[cold]
    fn big_size(&mut self, addr: u64, take: bool) -> u64 {
        let size = if take {
            self.big.remove(&addr)
        } else {
            self.big.get(&addr).copied()
        };
        size.expect("a BIG slot has its size in the big map")
    }

    /// Writes `block` at `addr` into slot `i`.
    #[inline(always)]
    fn put(&mut self, i: usize, addr: u64, block: Block) {
        self.slots[i] = slot_of(&mut self.big, addr, block);
    }

    /// Whether the table has outgrown a core's own cache ([`SMALL_SLOTS`]): its lookups then miss.
    #[inline(always)]
    pub fn is_large(&self) -> bool {
        self.mask >= SMALL_SLOTS - 1
    }

    /// Where the table's lookups start, for [`LiveHeap::prefetch`].
    #[inline(always)]
    pub fn homes(&self) -> Homes {
        Homes {
            shift: self.shift,
            mask: self.mask,
            window: self.window,
        }
    }

    /// Starts loading the slot where a lookup of `addr` starts (as of `homes`), without waiting
    /// for it: for a caller that is about to look up many addresses and wants their cache misses
    /// to overlap, with each other and with its other work.
    ///
    /// A hint, which changes no result: a prefetch instruction where the processor has one (no-op
    /// elsewhere), which reads nothing the program sees and never faults, so the index needs no
    /// bounds check (stale `homes` are of a table no larger than this one anyway). A plain load
    /// instead, or no hint, made a `summary` of a large trace 10 to 15% slower.
    #[inline(always)]
    pub fn prefetch(&self, homes: Homes, addr: u64) {
        let home = home_of(addr, homes.shift, homes.mask, homes.window);
        // The slot's first byte, found in the bytes: no cast to check on this path.
        prefetch_index::prefetch_index(self.slots.bytes(), home * size_of::<Slot>());
    }

    /// Makes `addr` live. If it already was (a free the trace missed), the old block is replaced and
    /// returned so the caller can account for its release.
    #[inline(always)]
    pub fn insert(&mut self, addr: u64, block: Block) -> Option<Block> {
        if addr == 0 {
            return self.zero.replace(block);
        }
        if self.len >= self.limit {
            self.grow();
        }
        if self.window == Window::WIDE {
            self.insert_in(addr, block, Window::WIDE)
        } else {
            self.insert_in(addr, block, Window::NARROW)
        }
    }

    /// [`LiveHeap::insert`] of an address that is not 0 into a table with room, laid out with
    /// `window`.
    #[inline(always)]
    fn insert_in(&mut self, addr: u64, block: Block, window: Window) -> Option<Block> {
        let (home, mask) = (home_of(addr, self.shift, self.mask, window), self.mask);
        // Every index below is masked, and the slice is `mask + 1` slots long: no bounds checks
        // in the loop. The slots are looked up once: each look checks that the mapping holds
        // whole, aligned slots, a few instructions worth saving on the hottest path.
        let slots = &mut self.slots[..=mask];
        let mut i = home;
        loop {
            let a = slots[i & mask].addr;
            if a == 0 {
                slots[i & mask] = slot_of(&mut self.big, addr, block);
                self.len += 1;
                return None;
            }
            if a == addr {
                let old = self.block_at(i & mask, true);
                self.put(i & mask, addr, block);
                return Some(old);
            }
            i = (i + 1) & mask;
        }
    }

    /// Releases `addr`, returning its block if it was live.
    #[inline(always)]
    pub fn remove(&mut self, addr: u64) -> Option<Block> {
        if addr == 0 {
            return self.zero.take();
        }
        if self.window == Window::WIDE {
            self.remove_in(addr, Window::WIDE)
        } else {
            self.remove_in(addr, Window::NARROW)
        }
    }

    /// [`LiveHeap::remove`] of an address that is not 0 from a table laid out with `window`.
    #[inline(always)]
    fn remove_in(&mut self, addr: u64, window: Window) -> Option<Block> {
        let (mask, shift) = (self.mask, self.shift);
        let home = home_of(addr, shift, mask, window);
        let slots = &mut self.slots[..=mask];
        let mut i = home;
        let s = loop {
            let s = slots[i & mask];
            if s.addr == addr {
                break s;
            }
            if s.addr == 0 {
                return None;
            }
            i = (i + 1) & mask;
        };
        // Backward shift: move later entries of the run into the hole when their home slot allows
        // (the hole lies between their home and where they are), so every entry stays reachable
        // from its home without tombstones.
        let found = i & mask;
        let mut hole = found;
        let mut j = (hole + 1) & mask;
        loop {
            let next = slots[j & mask];
            if next.addr == 0 {
                break;
            }
            let home = home_of(next.addr, shift, mask, window);
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                slots[hole & mask] = next;
                hole = j;
            }
            j = (j + 1) & mask;
        }
        slots[hole & mask] = Slot::default();
        self.len -= 1;
        // The rest of the run, which every insert and remove in it walks: crowding shows here.
        let run = j.wrapping_sub(found) & mask;
        if run >= FAR {
            self.crowded(run);
        }
        let size = match s.size {
            BIG => self.big_size(addr, true),
            n => u64::from(n),
        };
        Some(Block {
            size,
            stack: s.stack,
        })
    }

    /// A lookup went `probes` slots from home: crowding, which narrows the windows once it adds
    /// up to the live blocks (see [`LiveHeap`]).
    #[cold]
    #[inline(never)]
    fn crowded(&mut self, probes: usize) {
        self.far += probes;
        if self.far > self.len + 4 * FAR && self.window != Window::NARROW {
            self.window = Window::NARROW;
            self.relayout(self.slots.len());
        }
    }

    /// Doubles the table (it is as full as it may be).
    #[cold]
    #[inline(never)]
    fn grow(&mut self) {
        self.relayout(self.slots.len() * 2);
    }

    /// Moves every block into a new table of `n` slots, laid out with the current windows.
    fn relayout(&mut self, n: usize) {
        let fresh = LiveHeap::with_slots(n);
        let old = std::mem::replace(&mut self.slots, fresh.slots);
        self.mask = fresh.mask;
        self.shift = fresh.shift;
        self.limit = fresh.limit;
        self.far = 0;
        for &s in old.iter().filter(|s| s.addr != 0) {
            let mut i = self.home(s.addr);
            while self.slots[i].addr != 0 {
                i = (i + 1) & self.mask;
            }
            self.slots[i] = s;
        }
    }

    /// The block live at `addr`, if any.
    pub fn get(&self, addr: u64) -> Option<Block> {
        if addr == 0 {
            return self.zero;
        }
        let s = self.slots[self.find(addr)?];
        let size = match s.size {
            BIG => self.big[&addr],
            n => u64::from(n),
        };
        Some(Block {
            size,
            stack: s.stack,
        })
    }

    /// Number of live blocks.
    pub fn len(&self) -> u64 {
        (self.len + usize::from(self.zero.is_some())) as u64
    }

    /// Whether no block is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The live blocks, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Block)> + '_ {
        let slots = self.slots.iter().filter(|s| s.addr != 0).map(|s| {
            let size = match s.size {
                BIG => self.big[&s.addr],
                n => u64::from(n),
            };
            let block = Block {
                size,
                stack: s.stack,
            };
            (s.addr, block)
        });
        self.zero.map(|b| (0, b)).into_iter().chain(slots)
    }
}

/// The slot that holds `block` at `addr`, its size put in `big` if it does not fit.
#[inline(always)]
fn slot_of(big: &mut FxHashMap<u64, u64>, addr: u64, block: Block) -> Slot {
    let size = match u32::try_from(block.size) {
        Ok(n) if n != BIG => n,
        _ => {
            big.insert(addr, block.size);
            BIG
        }
    };
    Slot {
        addr,
        size,
        stack: block.stack,
    }
}

/// [`LiveHeap::home`] of a table with this `shift`, `mask` and `window`.
#[inline(always)]
fn home_of(addr: u64, shift: u32, mask: usize, window: Window) -> usize {
    let place = (addr >> window.bits).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> shift;
    (place as usize).wrapping_add((addr >> 4) as usize & window.within) & mask
}

/// The memory of a [`LiveHeap`]'s table: zeroed (empty) slots in an anonymous mapping of their
/// own, which the kernel is asked to back with transparent huge pages (2 MiB each on x86_64).
///
/// A large table is looked up at random places, so on 4 KiB pages a lookup of one is likely to
/// need a page walk; on huge pages, 32 MiB of table take 16 TLB entries (a `summary` of a CPython
/// trace whose table reached 32 MiB took about 5% less time). A table smaller than a huge page
/// cannot get one and stays on small pages. Where the system does not do huge pages (other
/// kernels, `never` in `/sys/kernel/mm/transparent_hugepage/enabled`), the advice is ignored and
/// nothing else changes.
struct Slots {
    map: MmapMut,
}

impl Slots {
    /// `n` empty slots. Out of memory, the program ends as it would for a `Vec`.
    fn zeroed(n: usize) -> Slots {
        let layout = std::alloc::Layout::array::<Slot>(n).expect("a table that fits in memory");
        let map = match MmapOptions::new().len(layout.size()).map_anon() {
            Ok(map) => map,
            Err(_) => std::alloc::handle_alloc_error(layout),
        };
        // A hint: a kernel without huge pages refuses it, and the table works as well without.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        Slots { map }
    }

    /// The slots' bytes, as they are: for the prefetch, which needs no [`Slot`]s (and so no
    /// check that the bytes make whole, aligned ones).
    #[inline(always)]
    fn bytes(&self) -> &[u8] {
        &self.map
    }
}

impl Deref for Slots {
    type Target = [Slot];

    #[inline(always)]
    fn deref(&self) -> &[Slot] {
        // A mapping starts on a page boundary and holds whole slots: the cast always succeeds.
        bytemuck::cast_slice(&self.map)
    }
}

impl DerefMut for Slots {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut [Slot] {
        bytemuck::cast_slice_mut(&mut self.map)
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
    fn live_heap_replaces_and_removes() {
        let mut h = LiveHeap::default();
        assert_eq!(h.insert(0x10, Block { size: 5, stack: 1 }), None);
        assert_eq!(h.insert(0x20, Block { size: 7, stack: 2 }), None);
        assert_eq!(
            h.insert(0x10, Block { size: 1, stack: 3 }),
            Some(Block { size: 5, stack: 1 })
        );
        assert_eq!(h.remove(0x20), Some(Block { size: 7, stack: 2 }));
        assert_eq!(h.remove(0x20), None);
        assert_eq!(h.len(), 1);
        assert_eq!(h.get(0x10), Some(Block { size: 1, stack: 3 }));
    }

    #[test]
    fn live_heap_keeps_address_zero_and_huge_sizes_aside() {
        let mut h = LiveHeap::default();
        let huge = Block {
            size: 5 << 32,
            stack: 9,
        };
        let edge = Block {
            size: u64::from(u32::MAX),
            stack: 8,
        };
        assert_eq!(h.insert(0, Block { size: 3, stack: 1 }), None);
        assert_eq!(h.insert(0x40, huge), None);
        assert_eq!(h.insert(0x50, edge), None);
        assert_eq!(h.len(), 3);
        assert_eq!(h.get(0), Some(Block { size: 3, stack: 1 }));
        assert_eq!(h.get(0x40), Some(huge));
        let mut all: Vec<(u64, Block)> = h.iter().collect();
        all.sort_by_key(|e| e.0);
        assert_eq!(
            all,
            [(0, Block { size: 3, stack: 1 }), (0x40, huge), (0x50, edge)]
        );
        // Replacing a huge block by a small one, and the other way round.
        assert_eq!(h.insert(0x40, Block { size: 1, stack: 2 }), Some(huge));
        assert_eq!(h.insert(0x50, huge), Some(edge));
        assert_eq!(h.remove(0x50), Some(huge));
        assert_eq!(h.remove(0), Some(Block { size: 3, stack: 1 }));
        assert!(h.big.is_empty());
        assert_eq!(h.len(), 1);
    }

    /// A table that grows through sizes on small pages into ones the kernel may back with huge
    /// pages (from 2 MiB: 131072 slots) keeps every block, and its fresh slots start empty.
    #[test]
    fn grown_table_keeps_every_block() {
        let mut h = LiveHeap::default();
        let addr = |k: u64| 0x5555_0000_0000 + k * 48;
        for k in 0..300_000u64 {
            let block = Block {
                size: k,
                stack: k as u32,
            };
            assert_eq!(h.insert(addr(k), block), None);
        }
        assert!(h.slots.len() >= 1 << 19, "the table grew past a huge page");
        assert_eq!(h.len(), 300_000);
        assert_eq!(h.slots.iter().filter(|s| s.addr != 0).count(), 300_000);
        for k in 0..300_000u64 {
            let block = Block {
                size: k,
                stack: k as u32,
            };
            assert_eq!(h.get(addr(k)), Some(block));
        }
        assert!(
            Slots::zeroed(1 << 17)
                .iter()
                .all(|s| s.addr == 0 && s.size == 0)
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Any sequence of inserts and removes, over addresses that crowd a few windows (so runs
        /// collide, wrap around the table's end and shift back) or spread anywhere, leaves the heap
        /// agreeing with a plain map on every address, through growth.
        #[test]
        fn live_heap_is_a_map(
            ops in proptest::collection::vec((0u8..3, 0u64..4096, 0u8..4, 0u64..100), 0..5000),
        ) {
            let mut h = LiveHeap::default();
            let mut model: std::collections::HashMap<u64, Block> = Default::default();
            for (op, x, spread, size) in ops {
                let addr = match spread {
                    0 => x * 16,
                    1 => x << 8,
                    2 => x.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    _ => x,
                };
                let block = Block { size: if size == 99 { 1 << 40 } else { size }, stack: x as u32 };
                if op == 0 {
                    proptest::prop_assert_eq!(h.remove(addr), model.remove(&addr));
                } else {
                    proptest::prop_assert_eq!(h.insert(addr, block), model.insert(addr, block));
                }
                proptest::prop_assert_eq!(h.len(), model.len() as u64);
            }
            for (&addr, &block) in &model {
                proptest::prop_assert_eq!(h.get(addr), Some(block));
            }
            let mut all: Vec<(u64, Block)> = h.iter().collect();
            all.sort_by_key(|e| e.0);
            let mut want: Vec<(u64, Block)> = model.into_iter().collect();
            want.sort_by_key(|e| e.0);
            proptest::prop_assert_eq!(all, want);
        }
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

    /// An allocator that packs 16-byte blocks fills every slot of its pages' windows, and wide
    /// windows that overlap then make runs of hundreds of slots: the table notices and narrows
    /// its windows, and stays a map throughout. Blocks a glibc heap's distance apart do not.
    #[test]
    fn dense_pages_narrow_the_windows() {
        let mut h = LiveHeap::default();
        let mut model: std::collections::HashMap<u64, Block> = Default::default();
        // Pages 64 MiB apart (where thread arenas start), each packed with 16-byte blocks.
        let addrs = (0..64u64).flat_map(|page| {
            (0..256u64).map(move |k| 0x7f00_0000_0000 + (page << 26) + ((page % 7) << 12) + k * 16)
        });
        for (n, addr) in addrs.enumerate() {
            let block = Block {
                size: n as u64,
                stack: 1,
            };
            assert_eq!(h.insert(addr, block), model.insert(addr, block));
            // Free every third block, and take it again.
            if n % 3 == 0 {
                assert_eq!(h.remove(addr), model.remove(&addr));
                assert_eq!(h.insert(addr, block), model.insert(addr, block));
            }
        }
        let some: Vec<u64> = model.keys().take(5000).copied().collect();
        for addr in some {
            assert_eq!(h.remove(addr), model.remove(&addr));
        }
        assert_eq!(h.window, Window::NARROW);
        assert_eq!(h.len(), model.len() as u64);
        for (&addr, &block) in &model {
            assert_eq!(h.get(addr), Some(block));
        }

        let mut h = LiveHeap::default();
        for k in 0..100_000u64 {
            let addr = 0x5555_0000_0000 + k * 48;
            h.insert(addr, Block { size: 40, stack: 2 });
            if k % 2 == 1 {
                h.remove(addr - 48);
            }
        }
        assert_eq!(h.window, Window::WIDE);
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
