//! Native stacks: capture from the current registers (one frame at a time through `unwind.rs`,
//! stopping early where the stack still holds the previous capture's outer frames), cut the
//! tracer's own frames, and intern each distinct stack as a small id so that it is written to the
//! trace only once.
//!
//! Interning has two levels: a per-thread direct-mapped cache (no lock, a few comparisons) in front
//! of a process-wide table behind a spin lock, taken only when a thread meets a stack it has not
//! seen recently. Stacks are identified by a 64-bit hash of their return addresses.

use crate::memo::{Frames, finish_hash};
use crate::modules::ModuleMap;
use crate::spin::SpinMutex;
use crate::unwind::{ReadStack, Regs, UnwindCaches};
use core::hash::BuildHasherDefault;

use std::collections::HashMap;

/// Slots in each thread's recent-stacks cache (a power of two), in sets of two.
const CACHE_SLOTS: usize = 4096;

/// A thread's recently seen stacks: hash → id, two-way set-associative, so that a few hundred
/// stacks in turn do not keep evicting each other.
pub struct StackCache {
    slots: Box<[(u64, u32)]>,
}

impl StackCache {
    /// An empty cache.
    pub fn new() -> StackCache {
        StackCache {
            slots: vec![(0u64, 0u32); CACHE_SLOTS].into_boxed_slice(),
        }
    }

    /// Forgets every entry (fork child: ids must be defined again in the new file).
    pub fn clear(&mut self) {
        self.slots.fill((0, 0));
    }

    #[inline(always)]
    fn set(hash: u64) -> usize {
        (hash as usize) & (CACHE_SLOTS - 2)
    }

    /// The id of a stack this thread saw recently.
    #[inline]
    pub fn get(&self, hash: u64) -> Option<u32> {
        let i = Self::set(hash);
        let (h0, id0) = self.slots[i];
        if h0 == hash {
            return Some(id0);
        }
        let (h1, id1) = self.slots[i + 1];
        (h1 == hash).then_some(id1)
    }

    /// Puts `hash` first in its set; the entry it displaces moves to the second place.
    #[inline]
    pub fn put(&mut self, hash: u64, id: u32) {
        let i = Self::set(hash);
        self.slots[i + 1] = self.slots[i];
        self.slots[i] = (hash, id);
    }
}

/// Hashes that are already hashes: the table's keys need no second hashing.
#[derive(Default)]
struct PassThrough(u64);

impl core::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

struct Table {
    ids: HashMap<u64, u32, BuildHasherDefault<PassThrough>>,
    next_id: u32,
}

static TABLE: SpinMutex<Table> = SpinMutex::new(Table {
    ids: HashMap::with_hasher(BuildHasherDefault::new()),
    next_id: 1,
});

/// The id of the stack with hash `hash` if the process has one: a stack another thread defined,
/// or one this thread's cache let go of. Put it in the cache with [`StackCache::put`] once used.
pub fn known(hash: u64) -> Option<u32> {
    TABLE.lock().ids.get(&hash).copied()
}

/// The id of the stack with hash `hash`, and whether it is new to the process (its definition must
/// then be written).
pub fn intern(cache: &mut StackCache, hash: u64) -> (u32, bool) {
    if let Some(id) = cache.get(hash) {
        return (id, false);
    }
    let (id, new) = {
        let mut t = TABLE.lock();
        match t.ids.get(&hash) {
            Some(&id) => (id, false),
            None => {
                let id = t.next_id;
                t.next_id += 1;
                t.ids.insert(hash, id);
                (id, true)
            }
        }
    };
    cache.put(hash, id);
    (id, new)
}

/// Takes the table's lock for `fork`.
pub fn before_fork() {
    TABLE.lock_forever();
}

/// Releases the lock taken by [`before_fork`]; in the child, also forgets every stack, since the
/// child's new trace must define them again.
pub fn after_fork(child: bool) {
    if child {
        TABLE.force_unlock();
        let mut t = TABLE.lock();
        t.ids.clear();
    } else {
        TABLE.force_unlock();
    }
}

/// Reads the current instruction pointer, stack pointer and frame pointer.
#[inline(always)]
fn registers() -> (u64, u64, u64) {
    let (pc, sp, bp): (u64, u64, u64);
    // SAFETY: reads three registers into outputs; touches no memory and no flags.
    unsafe {
        core::arch::asm!(
            "lea {pc}, [rip]",
            "mov {sp}, rsp",
            "mov {bp}, rbp",
            pc = out(reg) pc,
            sp = out(reg) sp,
            bp = out(reg) bp,
            options(nomem, nostack, preserves_flags),
        );
    }
    (pc, sp, bp)
}

/// The hash of a native stack (`native`, from [`Frames::hash`]) with Python frames (`python`, never
/// 0 when there are any).
#[inline]
pub fn with_python(native: u64, python: u64) -> u64 {
    finish_hash(native ^ python.rotate_left(29), 1)
}

/// The hash of a stack given outermost first, as [`Frames::hash`] computes it.
#[cfg(test)]
pub fn hash_frames(outermost_first: &[u64]) -> u64 {
    let h = outermost_first
        .iter()
        .fold(0, |h, &r| crate::memo::hash_step(h, r));
    if outermost_first.is_empty() {
        1
    } else {
        finish_hash(h, outermost_first.len())
    }
}

/// Captures the calling thread's stack into `frames`, starting at the first frame outside the
/// tracer: the return address into the function that called malloc. Returns the number of frames.
///
/// Most allocations repeat a stack captured recently: `frames` finds it by its innermost frame and
/// checks that it is still on the stack (`memo.rs`), and nothing is unwound. Otherwise the walk
/// unwinds frame by frame, and most allocations still repeat the outer part of the previous
/// stack. Each return address is read from a stack slot; when a frame's slot and return address
/// equal a frame of the previous capture, and every outer slot of that capture still holds the
/// same return address, the outer frames are the same call chain and are kept instead of unwound.
/// Each outer slot is read at most once per capture: a slot found changed rules out every match
/// outside it. A thread whose walks keep few frames that way stops looking for a while
/// ([`Frames::walked`]).
#[inline(always)]
pub fn capture(
    map: &ModuleMap,
    caches: &mut UnwindCaches,
    stack_hi: u64,
    frames: &mut Frames,
) -> usize {
    let (pc, sp, bp) = registers();
    // The readable words: 8-aligned `addr` inside [sp, stack_hi). With `lo` 8-aligned, that is
    // `addr - lo` a multiple of 8 and at most `words` words: one comparison once the difference
    // is rotated, since below `lo` it wraps around to a huge value and a misaligned one carries
    // its low bits into the top. An unknown or bad top, or a misaligned sp (which the ABI rules
    // out), gives `lo = u64::MAX`, from which nothing is readable.
    let (lo, words) = match stack_hi.checked_sub(sp).and_then(|s| s.checked_sub(8)) {
        Some(span) if sp.is_multiple_of(8) => (sp, span / 8),
        _ => (u64::MAX, 0),
    };
    let read_stack = move |addr: u64| -> Result<u64, ()> {
        if addr.wrapping_sub(lo).rotate_right(3) > words {
            return Err(());
        }
        // SAFETY: `addr` is 8-aligned and inside [sp, stack_hi), this thread's own mapped stack
        // above the current stack pointer, which is live memory for the duration of this call.
        Ok(unsafe { core::ptr::read_volatile(addr as *const u64) })
    };
    let regs = Regs { ip: pc, sp, bp };
    caches.prepare(map);
    frames.prepare(map as *const ModuleMap as usize);
    // The tracer's own frames: the first one, at `pc`, and any other before the program's.
    let Some(regs) = caches.leave_tracer(map, regs, read_stack) else {
        frames.store(NO_KEY, 0, 0);
        return 0;
    };
    let key = (regs.ip, regs.sp.wrapping_sub(8));
    if let Some(n) = frames.reuse(key, regs, caches, map, read_stack) {
        return n;
    }
    let (keep, n) = if frames.splicing() {
        walk::<true>(map, caches, regs, read_stack, frames)
    } else {
        walk::<false>(map, caches, regs, read_stack, frames)
    };
    frames.walked(keep, n);
    frames.store(key, keep, n);
    n + keep
}

/// The innermost frame of no stack.
const NO_KEY: (u64, u64) = (0, 0);

/// Unwinds from `regs` (the first frame of the program) into the scratch of `frames`, stopping at
/// the first frame that the previous capture shares if `SPLICE`: returns how many of the previous
/// capture's outer frames to keep, and how many frames were walked.
#[inline(always)]
fn walk<const SPLICE: bool>(
    map: &ModuleMap,
    caches: &mut UnwindCaches,
    mut regs: Regs,
    read_stack: impl ReadStack,
    frames: &mut Frames,
) -> (usize, usize) {
    let (memo, scratch) = frames.walk_parts();
    // Frames [0, intact) of the previous capture may still be on the stack: a match at index `i`
    // is only checked if `i < intact`. Matches come outward, at decreasing indexes.
    let mut intact = memo.rets.len();
    let max = scratch.len();
    let mut n = 0;
    while n < max {
        let (ra, slot) = (regs.ip, regs.sp.wrapping_sub(8));
        scratch[n] = (ra, slot);
        n += 1;
        if SPLICE
            && let Some(outer) = memo.at_slot(slot)
            && outer < intact
            && memo.rets[outer] == ra
        {
            match changed_outside(memo.slots, memo.rets, outer, read_stack) {
                // Frames [0, outer) stay; the matched frame and the new inner ones follow.
                None => return (outer, n),
                // Frame `i` changed: no match further out can keep it.
                Some(i) => intact = i,
            }
        }
        match caches.unwind_return(map, regs, read_stack) {
            Some(r) => regs = r,
            None => break,
        }
    }
    (0, n)
}

/// The innermost of the previous capture's frames outside frame `outer` whose slot no longer
/// holds its return address, or `None` if all of them still do: then the outer frames are the
/// same call chain. Read from the matched frame outward: in a recursion the same call site often
/// recurs at the same slot under a different chain, which then differs just above it.
#[inline(always)]
fn changed_outside(
    slots: &[u64],
    rets: &[u64],
    outer: usize,
    read_stack: impl Fn(u64) -> Result<u64, ()>,
) -> Option<usize> {
    slots[..outer]
        .iter()
        .zip(&rets[..outer])
        .rposition(|(&slot, &ret)| read_stack(slot) != Ok(ret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_differ_and_are_nonzero() {
        assert_ne!(hash_frames(&[1, 2, 3]), hash_frames(&[1, 2, 4]));
        assert_ne!(hash_frames(&[1, 2]), hash_frames(&[1, 2, 0]));
        assert_ne!(hash_frames(&[]), 0);
    }

    /// Stacks as alike as real ones: every sequence of up to 7 frames from 6 return addresses
    /// 16 bytes apart (335,922 stacks, all in the same few cache lines of code), and the same
    /// built from 2 addresses up to 18 frames deep (524,286), as a recursion gives. No two hash
    /// alike, and the low 32 bits of their hashes (the thread cache's index uses the low bits)
    /// collide about as often as random numbers would (about 30 times for 524,286 of them).
    #[test]
    fn alike_stacks_hash_apart() {
        for (alphabet, depth) in [(6u64, 7u32), (2, 18)] {
            let mut seen = std::collections::HashSet::new();
            let mut low = std::collections::HashSet::new();
            let mut stack = Vec::new();
            for len in 1..=depth {
                for n in 0..alphabet.pow(len) {
                    stack.clear();
                    let mut k = n;
                    for _ in 0..len {
                        stack.push(0x5555_5555_1000 + 16 * (k % alphabet));
                        k /= alphabet;
                    }
                    let h = hash_frames(&stack);
                    assert!(seen.insert(h), "{stack:x?} collides");
                    low.insert(h as u32);
                }
            }
            // 32-bit hashes of this many keys collide a few times by chance, not more.
            assert!(
                seen.len() - low.len() < 100,
                "{} low collisions",
                seen.len() - low.len()
            );
        }
    }

    #[test]
    fn interning_assigns_ids_once() {
        let mut a = StackCache::new();
        let mut b = StackCache::new();
        let h = hash_frames(&[0x1234, 0x5678]);
        let (id, new) = intern(&mut a, h);
        assert!(new);
        assert_eq!(intern(&mut a, h), (id, false));
        assert_eq!(intern(&mut b, h), (id, false));
        let (id2, new2) = intern(&mut b, hash_frames(&[9]));
        assert!(new2);
        assert_ne!(id, id2);
    }

    /// Captures from the same call sites give the same stacks whether the memo is used or not.
    #[test]
    fn memo_gives_the_same_stack_as_a_full_unwind() {
        crate::modules::rescan(true);
        let map = &crate::modules::current().unwrap().without_self();
        let mut cache = UnwindCaches::new();
        let hi = stack_hi_for_test();
        let mut memo = Frames::new(64);
        let mut full = Frames::new(64);
        let mut seen = Vec::new();
        // An opaque bound: an unrolled loop would call `nested` from a new site each time.
        for i in 0..core::hint::black_box(4) {
            nested(3 + i % 2, &mut || {
                full.clear();
                capture(map, &mut cache, hi, &mut full);
                capture(map, &mut cache, hi, &mut memo);
                seen.push((
                    full.outermost_first().to_vec(),
                    memo.outermost_first().to_vec(),
                ));
            });
        }
        for (full, memo) in &seen {
            assert!(full.len() >= 6, "{full:x?}");
            // The innermost frames are the two different call sites of `capture` above.
            assert_eq!(full[..full.len() - 1], memo[..memo.len() - 1]);
            assert_eq!(full.len(), memo.len());
        }
        assert_ne!(
            seen[0].0, seen[1].0,
            "different depths give different stacks"
        );
        assert_eq!(seen[0].0, seen[2].0);
        // Every frame resolves to a module of this process.
        for &f in &seen[0].0 {
            assert!(map.resolve(f).is_some(), "{f:#x}");
        }
    }

    /// The calling function's stack with framehop alone, frame by frame and no memo: what
    /// `capture` must give (outermost first).
    #[inline(always)]
    fn framehop_walk(map: &ModuleMap, stack_hi: u64) -> Vec<u64> {
        use framehop::Unwinder;
        let (pc, sp, bp) = registers();
        let mut read_stack = |addr: u64| -> Result<u64, ()> {
            if addr < sp || addr.saturating_add(8) > stack_hi || !addr.is_multiple_of(8) {
                return Err(());
            }
            // SAFETY: `addr` is 8-aligned and inside [sp, stack_hi), this thread's live stack.
            Ok(unsafe { core::ptr::read_volatile(addr as *const u64) })
        };
        let mut cache = framehop::x86_64::CacheX86_64::new();
        let mut regs = framehop::x86_64::UnwindRegsX86_64::new(pc, sp, bp);
        let mut address = framehop::FrameAddress::from_instruction_pointer(pc);
        let mut out = Vec::new();
        while let Ok(Some(ra)) =
            map.unwinder
                .unwind_frame(address, &mut regs, &mut cache, &mut read_stack)
        {
            out.push(ra);
            match framehop::FrameAddress::from_return_address(ra) {
                Some(a) => address = a,
                None => break,
            }
        }
        out.reverse();
        out
    }

    /// The learnt rules and the memo give what framehop alone gives, from the first capture (rules
    /// being learnt) to the later ones (rules applied, memo matches), at varied depths.
    #[test]
    fn captures_agree_with_framehop_alone() {
        crate::modules::rescan(true);
        let map = &crate::modules::current().unwrap().without_self();
        let mut cache = UnwindCaches::new();
        let hi = stack_hi_for_test();
        let mut frames = Frames::new(64);
        let mut seen = Vec::new();
        for i in 0..core::hint::black_box(24) {
            nested(2 + i % 5, &mut || {
                capture(map, &mut cache, hi, &mut frames);
                let ours = frames.outermost_first().to_vec();
                seen.push((ours, framehop_walk(map, hi)));
            });
        }
        assert!(cache.learnt() >= 6, "rules were learnt: {}", cache.learnt());
        // The depths recur: later captures are earlier stacks used whole.
        assert!(frames.whole_reuses >= 10, "{} reuses", frames.whole_reuses);
        for (ours, alone) in &seen {
            assert!(ours.len() >= 6, "{ours:x?}");
            // The innermost frames are the two call sites, in the closure above.
            assert_eq!(ours.len(), alone.len(), "{ours:x?} {alone:x?}");
            assert_eq!(ours[..ours.len() - 1], alone[..alone.len() - 1]);
        }
    }

    #[inline(never)]
    fn nested(depth: u32, f: &mut dyn FnMut()) {
        if depth == 0 {
            f();
        } else {
            nested(depth - 1, f);
        }
        core::hint::black_box(depth);
    }

    /// A bound for the unwinder's stack reads in tests: 256 KiB above a local of the test thread
    /// (whose stack is 2 MiB), enough for the test's frames.
    fn stack_hi_for_test() -> u64 {
        let local = 0u64;
        core::hint::black_box(&local) as *const u64 as u64 + (256 << 10)
    }
}
