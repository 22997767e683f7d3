//! The stacks a thread captured recently, kept so that the next capture can skip unwinding: the
//! memo of DESIGN.md §4. `stacks.rs` walks the stack and consults it; this module owns the storage,
//! the lookup of a whole stack by its innermost frame, and the check that makes such a reuse exact.
//!
//! A thread keeps a few dozen stacks (fewer when stacks may be deeper), set-associative by their
//! innermost frame: its return address and the stack slot it was read from. Programs allocate
//! from a few call chains in turn (sqlite3 cycles through about 16, CPython's native stacks find
//! 9 in 10 among their last 16), so most captures find their stack here and unwind nothing.
//!
//! Finding it must be exact, not a guess. Each entry is checked the first time it matches
//! (`unwind::UnwindCaches::step_at`): its outermost frame must end the stack, and every other
//! frame's rule must be one the walk applies itself, which it then keeps.
//! - If every rule puts the caller's stack pointer at a constant offset from the callee's, each
//!   frame's slot is a function of the frame inside it, so the same return addresses at the same
//!   slots can only be the same walk: the entry is proved by reading its slots.
//! - If some rule places the caller by bp (frame-pointer code), the kept rules are replayed from the
//!   capture's registers, which reads the saved bp values too: the walk without its lookups.
//! - If some frame needs framehop's own evaluation, or the stack was cut at the depth limit, the
//!   entry is never used whole.
//!
//! A capture that finds no stack whole walks as before, stopping at the first frame it shares
//! with the entry it used last (the `current` one, which a matching but inexact entry becomes),
//! and the result replaces the least recently used entry of its set. Where that search keeps
//! fewer frames than the walks unwind (stacks that share only their outermost frames, in no
//! fixed order), its checks at every frame cost more than they save, mostly in mispredicted
//! branches, and the walks go without it for a while. A thread whose lookups
//! hardly ever find anything (stacks that recur less often than the entries can hold) stops
//! looking for a while and rewrites its current entry in place, as the single memo did; and if
//! its walks go without the search too, a walk is only hashed, its frames left in the scratch
//! until a stack new to the thread asks for them.
//!
//! Every stack is stored outermost first, with the slot each return address was read from and the
//! hash of the stack up to and including it, so the outer part two stacks share keeps its hashes.

use crate::modules::ModuleMap;
use crate::unwind::{ReadStack, Regs, Step, UnwindCaches};

/// Entries a thread keeps in all, for stacks of up to [`FRAMES_FOR_MAX_ENTRIES`] frames; fewer for
/// deeper ones, in the same memory. Powers of two.
const MAX_ENTRIES: usize = 32;
const FRAMES_FOR_MAX_ENTRIES: usize = 128;

/// Entries of [`Frames::by_slot`] (a power of two): slots are 8 bytes apart at least, so frames
/// in 4 KiB of stack never collide.
const BY_SLOT: usize = 512;

/// Entries per set (the ways).
const WAYS: usize = 4;

/// Lookups per window of [`Frames::reuse`]'s statistics, and the captures that skip the lookup
/// after a window in which fewer than one in eight found a stack.
const WINDOW: u32 = 64;
const BYPASS: u32 = 1024;

/// Walks per window of [`Frames::walked`]'s statistics, and the walks that skip the search for
/// shared outer frames after a window in which it kept fewer frames than the walks unwound.
const SPLICE_WINDOW: u32 = 64;
const NO_SPLICE: u32 = 4096;

/// Whether and how an entry's stack may be used whole (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exact {
    /// Not known yet: checked when it first matches.
    Unchecked,
    /// Every frame's caller is at a constant offset from it: the slots holding the return
    /// addresses prove the stack.
    Slots,
    /// Some frame's caller is placed by bp (a frame-pointer frame): the stored rules are replayed
    /// from the capture's registers, which checks the bp chain too.
    Replay,
    /// Some frame is unwound by framehop itself, or the stack was cut at the depth limit: the
    /// entry only serves as the walk's memo.
    No,
}

/// A capture left in the scratch: its innermost frame, its number of frames and its hash.
#[derive(Clone, Copy, Debug)]
struct Unstored {
    key: (u64, u64),
    len: usize,
    hash: u64,
}

/// A thread's recent stacks.
pub struct Frames {
    /// Frames of every entry: entry `e` owns `[e * cap, e * cap + cap)`, outermost first.
    rets: Box<[u64]>,
    slots: Box<[u64]>,
    hashes: Box<[u64]>,
    /// The rule at each return address, once the entry was checked.
    steps: Box<[Step]>,
    /// Per entry: the number of frames, the innermost frame (return address, slot) or (0, 0)
    /// for none, whether it is exact, and when it was last used.
    lens: Box<[usize]>,
    keys: Box<[(u64, u64)]>,
    exact: Box<[Exact]>,
    used: Box<[u32]>,
    /// The use counter behind `used`.
    clock: u32,
    /// Most frames per stack.
    cap: usize,
    /// Sets of [`WAYS`] entries (a power of two).
    sets: usize,
    /// The entry of the last capture.
    current: usize,
    /// Scratch for the inner frames of a capture, innermost first: (return address, slot).
    scratch: Box<[(u64, u64)]>,
    /// The index of the frame read from each slot in the entries stored last, direct-mapped by
    /// slot: entries may be stale or overwritten, and [`Memo::at_slot`] checks them.
    by_slot: Box<[u16; BY_SLOT]>,
    /// The module map the stacks were captured with (its address).
    map: usize,
    /// Captures left that skip the lookup and store in place of the current entry, after a
    /// window of lookups that hardly ever found a stack (a program whose stacks recur less often
    /// than the entries can hold): they then cost what the single memo did.
    bypass: u32,
    /// Lookups in the current window, and how many found a stack (whole or as the memo).
    window: u32,
    found: u32,
    /// Walks left that unwind to the end without looking for the frames they share with the
    /// current entry, after a window of walks in which that search kept fewer frames than the
    /// walks unwound (stacks that share little but their outermost frames, in a varied order:
    /// the search then costs more than it saves, mostly in mispredicted branches).
    no_splice: u32,
    /// Walks in the current window, the frames they unwound and those they kept.
    walks: u32,
    walked: usize,
    kept: usize,
    /// The last capture, when it was left in the scratch instead of stored (see [`Frames::store`]):
    /// the `current` entry then still holds the capture before, under its own key.
    unstored: Option<Unstored>,
    /// Captures answered by a whole stored stack (for tests).
    #[cfg(test)]
    pub whole_reuses: u64,
}

impl Frames {
    /// Room for stacks of up to `max` frames.
    pub fn new(max: usize) -> Frames {
        let cap = max.clamp(1, usize::from(u16::MAX));
        let entries = (MAX_ENTRIES * FRAMES_FOR_MAX_ENTRIES / cap).clamp(WAYS, MAX_ENTRIES);
        let entries = if entries.is_power_of_two() {
            entries
        } else {
            entries.next_power_of_two() / 2
        };
        Frames {
            rets: vec![0; entries * cap].into_boxed_slice(),
            slots: vec![0; entries * cap].into_boxed_slice(),
            hashes: vec![0; entries * cap].into_boxed_slice(),
            steps: vec![Step::NONE; entries * cap].into_boxed_slice(),
            lens: vec![0; entries].into_boxed_slice(),
            keys: vec![(0, 0); entries].into_boxed_slice(),
            exact: vec![Exact::Unchecked; entries].into_boxed_slice(),
            used: vec![0; entries].into_boxed_slice(),
            clock: 0,
            cap,
            sets: entries / WAYS,
            current: 0,
            scratch: vec![(0, 0); cap].into_boxed_slice(),
            by_slot: Box::new([0; BY_SLOT]),
            map: 0,
            bypass: 0,
            window: 0,
            found: 0,
            no_splice: 0,
            walks: 0,
            walked: 0,
            kept: 0,
            unstored: None,
            #[cfg(test)]
            whole_reuses: 0,
        }
    }

    /// The frames of entry `e`: return addresses and slots, outermost first.
    #[inline(always)]
    fn entry(&self, e: usize) -> (&[u64], &[u64]) {
        let start = e * self.cap;
        let end = start + self.lens[e];
        (&self.rets[start..end], &self.slots[start..end])
    }

    /// The most frames a stack keeps: a stack this long was cut at the depth limit.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// The last captured stack, outermost first.
    pub fn outermost_first(&mut self) -> &[u64] {
        if let Some(u) = self.unstored.take() {
            self.store_now(u.key, 0, u.len);
        }
        self.entry(self.current).0
    }

    /// What a walk works with: the last capture as its memo, and the scratch for the frames it
    /// walks.
    #[inline(always)]
    pub fn walk_parts(&mut self) -> (Memo<'_>, &mut [(u64, u64)]) {
        let start = self.current * self.cap;
        let end = start + self.lens[self.current];
        let memo = Memo {
            rets: &self.rets[start..end],
            slots: &self.slots[start..end],
            by_slot: &self.by_slot,
        };
        (memo, &mut self.scratch[..])
    }

    /// Readies the memo for a capture with the module map `map` (its address), forgetting every
    /// stack if the map changed: the unwind rules their exactness was checked with are forgotten
    /// too (`UnwindCaches::prepare`).
    #[inline(always)]
    pub fn prepare(&mut self, map: usize) {
        if self.map != map {
            self.clear();
            self.map = map;
        }
    }

    /// The hash of the last captured stack; never 0.
    pub fn hash(&self) -> u64 {
        if let Some(u) = &self.unstored {
            return u.hash;
        }
        match self.lens[self.current] {
            0 => 1,
            n => finish_hash(self.hashes[self.current * self.cap + n - 1], n),
        }
    }

    /// Forgets every stack (fork child, module rescan, new unwind rules).
    pub fn clear(&mut self) {
        self.lens.fill(0);
        self.keys.fill((0, 0));
        self.exact.fill(Exact::Unchecked);
        self.current = 0;
        self.unstored = None;
    }

    #[inline(always)]
    fn set(&self, key: (u64, u64)) -> usize {
        let h = (key.0 ^ key.1.rotate_left(17)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (h >> 40) as usize & (self.sets - 1)
    }

    /// Whether the next walk looks for the frames it shares with the current entry.
    #[inline(always)]
    pub fn splicing(&self) -> bool {
        self.no_splice == 0
    }

    /// Counts a walk that unwound `walked` frames and kept `kept` of the current entry's, and
    /// turns the search for shared frames off for a while if, over a window of walks, it kept
    /// fewer frames than the walks unwound.
    #[inline(always)]
    pub fn walked(&mut self, kept: usize, walked: usize) {
        if self.no_splice > 0 {
            self.no_splice -= 1;
            return;
        }
        self.walks += 1;
        self.walked += walked;
        self.kept += kept;
        if self.walks == SPLICE_WINDOW {
            if self.kept < self.walked {
                self.no_splice = NO_SPLICE;
            }
            (self.walks, self.walked, self.kept) = (0, 0, 0);
        }
    }

    /// Makes the stored stack whose innermost frame is `key` the current one, if one is and it
    /// is still on the stack (read with `read_stack`); `regs` are the registers of that innermost
    /// frame. Returns its number of frames if it is exact: it is then the stack. One that is not
    /// exact is still the best memo for the walk that follows, which then stops at its first
    /// frame.
    #[inline(always)]
    pub fn reuse(
        &mut self,
        key: (u64, u64),
        regs: Regs,
        caches: &mut UnwindCaches,
        map: &ModuleMap,
        read_stack: impl ReadStack,
    ) -> Option<usize> {
        if self.bypass > 0 {
            self.bypass -= 1;
            return None;
        }
        self.window += 1;
        if self.window == WINDOW {
            if self.found < WINDOW / 8 {
                self.bypass = BYPASS;
            }
            (self.window, self.found) = (0, 0);
        }
        let first = self.set(key) * WAYS;
        // The ways holding `key`, found without a branch per way: which of them match varies
        // from one capture to the next and would be mispredicted.
        let mut ways = 0u32;
        for (w, k) in self.keys[first..first + WAYS].iter().enumerate() {
            ways |= u32::from(*k == key) << w;
        }
        while ways != 0 {
            let e = first + ways.trailing_zeros() as usize;
            ways &= ways - 1;
            let whole = match self.exact[e] {
                Exact::Slots => self.holds(e, read_stack),
                Exact::Replay => self.replays(e, regs, read_stack),
                Exact::No => {
                    if self.holds(e, read_stack) {
                        self.make_current(e);
                        return None;
                    }
                    false
                }
                Exact::Unchecked => {
                    self.holds(e, read_stack)
                        && match self.check(e, caches, map) {
                            Exact::Slots => true,
                            Exact::Replay => self.replays(e, regs, read_stack),
                            _ => {
                                self.make_current(e);
                                return None;
                            }
                        }
                }
            };
            if whole {
                self.make_current(e);
                #[cfg(test)]
                {
                    self.whole_reuses += 1;
                }
                return Some(self.lens[e]);
            }
        }
        None
    }

    #[inline(always)]
    fn make_current(&mut self, e: usize) {
        self.found += 1;
        self.current = e;
        self.clock = self.clock.wrapping_add(1);
        self.used[e] = self.clock;
    }

    /// Whether every slot of entry `e` outside its innermost frame still holds its return address.
    #[inline(always)]
    fn holds(&self, e: usize, read_stack: impl ReadStack) -> bool {
        let start = e * self.cap;
        let outer = self.lens[e].saturating_sub(1);
        let rets = &self.rets[start..start + outer];
        let slots = &self.slots[start..start + outer];
        // From the inside outward: stacks with the same innermost frame part nearest to it.
        for j in (0..rets.len().min(slots.len())).rev() {
            match read_stack(slots[j]) {
                Ok(word) if word == rets[j] => {}
                _ => return false,
            }
        }
        true
    }

    /// Whether the rules stored with entry `e`, applied from `regs` (its innermost frame's
    /// registers), give its frames: the walk itself, without looking rules up.
    #[inline(never)]
    fn replays(&self, e: usize, mut regs: Regs, read_stack: impl ReadStack) -> bool {
        let (rets, slots) = self.entry(e);
        let start = e * self.cap;
        let steps = &self.steps[start..start + rets.len()];
        for j in (1..rets.len()).rev() {
            match steps[j].apply(regs, read_stack) {
                Some(r) if r.ip == rets[j - 1] && r.sp.wrapping_sub(8) == slots[j - 1] => regs = r,
                _ => return false,
            }
        }
        true
    }

    /// Decides how entry `e` may be used whole, storing the rule at each of its return addresses:
    /// the outermost frame must be the end of the stack, and every other frame's rule one the walk
    /// applies itself, whose result matches the stored caller.
    #[cold]
    #[inline(never)]
    fn check(&mut self, e: usize, caches: &mut UnwindCaches, map: &ModuleMap) -> Exact {
        let start = e * self.cap;
        let len = self.lens[e];
        let mut exact = if len == 0 || len >= self.cap {
            Exact::No
        } else {
            Exact::Slots
        };
        for j in 0..len {
            if exact == Exact::No {
                break;
            }
            let Some(step) = caches.step_at(map, self.rets[start + j]) else {
                exact = Exact::No;
                break;
            };
            self.steps[start + j] = step;
            if j == 0 {
                if !step.is_end() {
                    exact = Exact::No;
                }
                continue;
            }
            match step.sp_offset() {
                // Frame j's caller is frame j - 1 (outermost first).
                Some(cfa) => {
                    if self.slots[start + j].checked_add(cfa) != Some(self.slots[start + j - 1]) {
                        exact = Exact::No;
                    }
                }
                None if step.is_end() => exact = Exact::No,
                None => exact = Exact::Replay,
            }
        }
        self.exact[e] = exact;
        exact
    }

    /// Stores a walked stack: the current entry's outermost `keep` frames, then the first `inner`
    /// frames of the scratch (innermost first), as many as fit; the result, whose innermost frame
    /// is `key`, becomes the current entry, in place of the least recently used one of its set.
    ///
    /// Unless the next capture neither looks stacks up nor searches the current entry for shared
    /// frames (both turned off for a while, as on stacks that hardly ever recur): then a stack
    /// that kept nothing of the entry is only hashed, and left in the scratch. It is stored
    /// when its frames are asked for ([`Frames::outermost_first`], for a stack new to the thread),
    /// else the next capture's walk overwrites it. Storing every frame with its slot and hash
    /// costs about as much as unwinding it.
    #[inline(always)]
    pub fn store(&mut self, key: (u64, u64), keep: usize, inner: usize) {
        if keep == 0 && self.bypass > 0 && self.no_splice > 0 {
            let h = self.scratch[..inner]
                .iter()
                .rev()
                .fold(0, |h, &(ret, _)| hash_step(h, ret));
            let hash = if inner == 0 { 1 } else { finish_hash(h, inner) };
            self.unstored = Some(Unstored {
                key,
                len: inner,
                hash,
            });
            return;
        }
        self.unstored = None;
        self.store_now(key, keep, inner);
    }

    /// [`Frames::store`] into an entry.
    fn store_now(&mut self, key: (u64, u64), keep: usize, inner: usize) {
        let cap = self.cap;
        let (current, len) = (self.current, self.lens[self.current]);
        if keep + inner == len && self.keys[current] == key && inner == 1 {
            // The walk stopped at its first frame, the current stack's innermost: the same stack.
            return;
        }
        let first = self.set(key) * WAYS;
        let victim = if self.bypass > 0 {
            current
        } else {
            (first..first + WAYS)
                .filter(|&e| e != self.current)
                .min_by_key(|&e| {
                    let age = self.clock.wrapping_sub(self.used[e]);
                    core::cmp::Reverse(age)
                })
                .unwrap_or(first)
        };
        let (from, to) = (current * cap, victim * cap);
        if keep > 0 && from != to {
            self.rets.copy_within(from..from + keep, to);
            self.slots.copy_within(from..from + keep, to);
            self.hashes.copy_within(from..from + keep, to);
        }
        let mut h = if keep == 0 {
            0
        } else {
            self.hashes[to + keep - 1]
        };
        let take = inner.min(cap - keep);
        // Equal lengths, so that the loop needs no bounds checks.
        let new = &self.scratch[inner - take..inner];
        let rets = &mut self.rets[to + keep..to + keep + take];
        let slots = &mut self.slots[to + keep..to + keep + take];
        let hashes = &mut self.hashes[to + keep..to + keep + take];
        for j in 0..take {
            let (ret, slot) = new[take - 1 - j];
            h = hash_step(h, ret);
            rets[j] = ret;
            slots[j] = slot;
            hashes[j] = h;
            self.by_slot[slot_key(slot)] = (keep + j) as u16;
        }
        let len = keep + take;
        self.lens[victim] = len;
        // A stack cut at the depth limit lost its innermost frames: never looked up.
        self.keys[victim] = if len > 0 && take == inner {
            key
        } else {
            (0, 0)
        };
        self.exact[victim] = Exact::Unchecked;
        self.clock = self.clock.wrapping_add(1);
        self.used[victim] = self.clock;
        self.current = victim;
    }
}

/// The last capture, as the walk's memo.
pub struct Memo<'a> {
    /// Its return addresses and the slots they were read from, outermost first.
    pub rets: &'a [u64],
    pub slots: &'a [u64],
    by_slot: &'a [u16; BY_SLOT],
}

impl Memo<'_> {
    /// The index of its frame read from stack slot `slot`, if known.
    #[inline(always)]
    pub fn at_slot(&self, slot: u64) -> Option<usize> {
        let i = usize::from(self.by_slot[slot_key(slot)]);
        (i < self.slots.len() && self.slots[i] == slot).then_some(i)
    }
}

#[inline(always)]
fn slot_key(slot: u64) -> usize {
    (slot >> 3) as usize & (BY_SLOT - 1)
}

/// One step of the running stack hash: the hash so far, rotated, plus the frame multiplied by an
/// odd constant. The multiplication spreads the low bits in which nearby return addresses differ
/// over the word, and is off the chain from one frame to the next, which costs a rotation and an
/// addition (about 2 cycles, where a multiplication in the chain costs 5): a stack of 25 frames
/// is hashed in about 50 cycles. Each step is a bijection of the hash so far, so stacks that
/// differ in one frame never collide; [`finish_hash`] mixes the result.
#[inline]
pub fn hash_step(h: u64, ret: u64) -> u64 {
    h.rotate_left(5)
        .wrapping_add(ret.wrapping_mul(0x517c_c1b7_2722_0a95))
}

#[inline]
pub fn finish_hash(mut h: u64, len: usize) -> u64 {
    // murmur3's fmix64 over the running hash and the length, so the low bits (the thread cache's
    // index) are well mixed.
    h ^= len as u64;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stacks::hash_frames;

    fn walked(f: &mut Frames, innermost_first: &[(u64, u64)]) {
        f.scratch[..innermost_first.len()].copy_from_slice(innermost_first);
    }

    #[test]
    fn a_store_keeps_the_outer_part_and_its_hashes() {
        let mut f = Frames::new(8);
        walked(&mut f, &[(30, 3), (20, 2), (10, 1)]);
        f.store((30, 3), 0, 3);
        assert_eq!(f.outermost_first(), &[10, 20, 30]);
        assert_eq!(f.hash(), hash_frames(&[10, 20, 30]));
        let first = f.current;
        // The walk met frame 20 at its slot: 10 stays, 20 and a new 40 follow.
        walked(&mut f, &[(40, 3), (20, 2)]);
        f.store((40, 3), 1, 2);
        assert_eq!(f.outermost_first(), &[10, 20, 40]);
        assert_eq!(f.hash(), hash_frames(&[10, 20, 40]));
        assert_ne!(f.current, first, "a new entry, the first kept");
        assert_eq!(f.entry(first).0, &[10, 20, 30]);
    }

    /// Walks that keep fewer frames than they unwind turn the search for shared frames off for
    /// [`NO_SPLICE`] walks; walks that keep more leave it on.
    #[test]
    fn the_search_for_shared_frames_stops_when_it_keeps_little() {
        let mut f = Frames::new(8);
        for _ in 0..4 * SPLICE_WINDOW {
            assert!(f.splicing());
            // The outer 20 of 24 frames found in the current entry.
            f.walked(20, 4);
        }
        for _ in 0..SPLICE_WINDOW - 1 {
            f.walked(3, 19);
        }
        assert!(f.splicing(), "a window is judged when it is complete");
        f.walked(3, 19);
        assert!(!f.splicing());
        for _ in 0..NO_SPLICE - 1 {
            f.walked(0, 22);
        }
        assert!(!f.splicing());
        f.walked(0, 22);
        assert!(f.splicing(), "on again, for a new window");
        // A window that keeps exactly as many frames as it unwinds still pays.
        for _ in 0..SPLICE_WINDOW {
            f.walked(10, 10);
        }
        assert!(f.splicing());
    }

    /// With the lookups and the search for shared frames both off, a capture is only hashed:
    /// its hash and its frames are the ones a store gives, and the entries keep what they held.
    #[test]
    fn a_capture_nothing_will_look_up_is_stored_only_when_asked_for() {
        let mut f = Frames::new(8);
        walked(&mut f, &[(30, 3), (20, 2), (10, 1)]);
        f.store((30, 3), 0, 3);
        let first = f.current;
        (f.bypass, f.no_splice) = (2, 2);
        walked(&mut f, &[(50, 5), (40, 4), (10, 1)]);
        f.store((50, 5), 0, 3);
        assert!(f.unstored.is_some());
        assert_eq!(f.hash(), hash_frames(&[10, 40, 50]));
        assert_eq!(
            f.entry(first).0,
            &[10, 20, 30],
            "the entries are as they were"
        );
        assert_eq!(f.keys[first], (30, 3));
        assert_eq!(f.outermost_first(), &[10, 40, 50]);
        assert!(f.unstored.is_none());
        assert_eq!(f.hash(), hash_frames(&[10, 40, 50]));
        assert_eq!(f.keys[f.current], (50, 5));
        // Left unstored, then replaced by the next capture's frames; an empty one hashes as none.
        walked(&mut f, &[(60, 6), (10, 1)]);
        f.store((60, 6), 0, 2);
        walked(&mut f, &[(70, 7)]);
        f.store((70, 7), 0, 1);
        assert_eq!(f.hash(), hash_frames(&[70]));
        f.store((0, 0), 0, 0);
        assert_eq!(f.hash(), hash_frames(&[]));
        // The next capture will search the entry: stored at once.
        f.no_splice = 0;
        walked(&mut f, &[(80, 8), (10, 1)]);
        f.store((80, 8), 0, 2);
        assert!(f.unstored.is_none());
        assert_eq!(f.entry(f.current).0, &[10, 80]);
        assert_eq!(f.hash(), hash_frames(&[10, 80]));
    }

    #[test]
    fn a_stack_cut_at_the_depth_limit_is_never_looked_up() {
        let mut f = Frames::new(2);
        walked(&mut f, &[(30, 3), (20, 2)]);
        f.store((30, 3), 0, 2);
        // The previous capture's outer frame and two inner ones do not fit: the innermost go.
        walked(&mut f, &[(50, 5), (40, 4)]);
        f.store((50, 5), 1, 2);
        assert_eq!(f.outermost_first(), &[20, 40]);
        assert_eq!(f.keys[f.current], (0, 0));
    }

    /// A stored stack whose slots still hold its return addresses becomes the memo, but is used
    /// whole only if each frame's caller follows from a learnt rule, which these made-up return
    /// addresses (in no module) do not have.
    #[test]
    fn an_entry_is_used_whole_only_when_exact() {
        crate::modules::rescan(true);
        let map = crate::modules::current().unwrap();
        let mut caches = UnwindCaches::new();
        let stack: Vec<u64> = vec![0x1111, 0, 0x2222, 0, 0x3333];
        let base = stack.as_ptr() as u64;
        let read = |a: u64| {
            let i = a.checked_sub(base).ok_or(())? / 8;
            stack.get(i as usize).copied().ok_or(())
        };
        let mut f = Frames::new(8);
        let key = (0x1111, base);
        let regs = Regs {
            ip: 0x1111,
            sp: base + 8,
            bp: 0,
        };
        walked(&mut f, &[key, (0x2222, base + 16), (0x3333, base + 32)]);
        f.store(key, 0, 3);
        walked(&mut f, &[(0x9999, base + 8)]);
        f.store((0x9999, base + 8), 0, 1);
        let other = f.current;
        assert_eq!(f.reuse(key, regs, &mut caches, map, read), None);
        assert_ne!(f.current, other, "the matching entry is the memo now");
        assert_eq!(f.outermost_first(), &[0x3333, 0x2222, 0x1111]);
        assert_eq!(f.whole_reuses, 0);
        // A slot that no longer holds its return address: no match at all.
        f.current = other;
        let moved =
            |a: u64| -> Result<u64, ()> { if a == base + 32 { Ok(0x4444) } else { read(a) } };
        assert_eq!(f.reuse(key, regs, &mut caches, map, moved), None);
        assert_eq!(f.current, other);
    }
}
