//! Native stacks: capture with framehop from the current registers, cut the tracer's own frames,
//! and intern each distinct stack as a small id so that it is written to the trace only once.
//!
//! Interning has two levels: a per-thread direct-mapped cache (no lock, a few comparisons) in front
//! of a process-wide table behind a spin lock, taken only when a thread meets a stack it has not
//! seen recently. Stacks are identified by a 64-bit hash of their return addresses.

use crate::modules::ModuleMap;
use crate::spin::SpinMutex;
use core::hash::BuildHasherDefault;
use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64};
use framehop::{FrameAddress, MayAllocateDuringUnwind, Unwinder};
use std::collections::HashMap;

/// Slots in each thread's recent-stacks cache (a power of two).
const CACHE_SLOTS: usize = 1024;

/// A thread's recently seen stacks: hash → id, direct-mapped.
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

    /// Whether this thread saw the stack recently.
    #[inline]
    pub fn contains(&self, hash: u64) -> bool {
        self.get(hash).is_some()
    }

    #[inline]
    fn get(&self, hash: u64) -> Option<u32> {
        let (h, id) = self.slots[(hash as usize) & (CACHE_SLOTS - 1)];
        (h == hash).then_some(id)
    }

    #[inline]
    fn put(&mut self, hash: u64, id: u32) {
        self.slots[(hash as usize) & (CACHE_SLOTS - 1)] = (hash, id);
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

/// A 64-bit hash of a stack; never 0 (0 marks an empty cache slot).
pub fn hash_frames(frames: &[u64]) -> u64 {
    let mut h = frames.len() as u64;
    for &f in frames {
        h = (h.rotate_left(5) ^ f).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    // Final avalanche (murmur3's fmix64) so the low bits used by the cache are well mixed.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h.max(1)
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

/// The previous stack a thread captured, with the stack address each return address was read
/// from: the memo that lets the next capture stop unwinding as soon as it reaches a frame that has
/// not changed (DESIGN.md §4).
pub struct Frames {
    rets: [Box<[u64]>; 2],
    slots: [Box<[u64]>; 2],
    len: [usize; 2],
    cur: usize,
}

impl Frames {
    /// Room for `max` frames per stack.
    pub fn new(max: usize) -> Frames {
        let buf = || vec![0u64; max.max(1)].into_boxed_slice();
        Frames {
            rets: [buf(), buf()],
            slots: [buf(), buf()],
            len: [0, 0],
            cur: 0,
        }
    }

    /// The last captured stack, innermost first.
    pub fn last(&self) -> &[u64] {
        &self.rets[self.cur][..self.len[self.cur]]
    }

    /// Forgets the memo (fork child).
    pub fn clear(&mut self) {
        self.len = [0, 0];
    }
}

/// Captures the calling thread's stack into `frames` (read it with [`Frames::last`]), innermost
/// first, starting at the first frame outside the tracer: the return address into the function that
/// called malloc. Returns the number of frames.
///
/// Most allocations repeat the outer part of the previous stack. Each return address is read from a
/// stack slot; when a frame's slot and return address equal a frame of the previous capture, and
/// every outer slot of that capture still holds the same return address, the outer frames are the
/// same call chain and are copied instead of unwound.
#[inline(never)]
pub fn capture(
    map: &ModuleMap,
    cache: &mut CacheX86_64<MayAllocateDuringUnwind>,
    stack_hi: u64,
    frames: &mut Frames,
) -> usize {
    let (pc, sp, bp) = registers();
    let mut read_stack = |addr: u64| -> Result<u64, ()> {
        if addr < sp || addr.saturating_add(8) > stack_hi || addr % 8 != 0 {
            return Err(());
        }
        // SAFETY: `addr` is 8-aligned and inside [sp, stack_hi), this thread's own mapped stack
        // above the current stack pointer, which is live memory for the duration of this call.
        Ok(unsafe { core::ptr::read_volatile(addr as *const u64) })
    };
    let prev = frames.cur;
    let prev_len = frames.len[prev];
    let (rets_lo, rets_hi) = frames.rets.split_at_mut(1);
    let (slots_lo, slots_hi) = frames.slots.split_at_mut(1);
    let (out, out_slots, prev_rets, prev_slots) = if prev == 0 {
        (&mut rets_hi[0], &mut slots_hi[0], &rets_lo[0], &slots_lo[0])
    } else {
        (&mut rets_lo[0], &mut slots_lo[0], &rets_hi[0], &slots_hi[0])
    };
    let max = out.len();
    let mut regs = UnwindRegsX86_64::new(pc, sp, bp);
    let mut address = FrameAddress::from_instruction_pointer(pc);
    let mut n = 0;
    // Cursor into the previous capture, whose slots increase from inner to outer frames.
    let mut j = 0;
    while n < max {
        let Ok(Some(ra)) = map
            .unwinder
            .unwind_frame(address, &mut regs, cache, &mut read_stack)
        else {
            break;
        };
        let Some(next_address) = FrameAddress::from_return_address(ra) else {
            break;
        };
        address = next_address;
        if n == 0 && map.is_self(ra) {
            continue;
        }
        let slot = regs.sp().wrapping_sub(8);
        out[n] = ra;
        out_slots[n] = slot;
        n += 1;
        while j < prev_len && prev_slots[j] < slot {
            j += 1;
        }
        if j < prev_len && prev_slots[j] == slot && prev_rets[j] == ra {
            let outer = j + 1..prev_len;
            let unchanged = outer
                .clone()
                .all(|k| read_stack(prev_slots[k]) == Ok(prev_rets[k]));
            if unchanged {
                let take = (prev_len - j - 1).min(max - n);
                out[n..n + take].copy_from_slice(&prev_rets[j + 1..j + 1 + take]);
                out_slots[n..n + take].copy_from_slice(&prev_slots[j + 1..j + 1 + take]);
                n += take;
                break;
            }
        }
    }
    frames.cur = 1 - prev;
    frames.len[frames.cur] = n;
    n
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

    #[test]
    fn capture_walks_this_test() {
        crate::modules::rescan(true);
        let map = crate::modules::current().unwrap();
        let mut cache = CacheX86_64::new_in();
        let mut out = [0u64; 64];
        // In the unit-test binary the "tracer" is the whole test executable, so nothing is cut
        // but nothing is outside either: check that unwinding itself yields a deep stack.
        let n = capture_all(map, &mut cache, &mut out);
        assert!(n >= 4, "only {n} frames");
        // Every frame resolves to a module of this process.
        for &f in &out[..n] {
            assert!(map.resolve(f).is_some(), "{f:#x}");
        }
    }

    /// `capture` without cutting: the test binary is the tracer's own module.
    #[inline(never)]
    fn capture_all(
        map: &ModuleMap,
        cache: &mut CacheX86_64<MayAllocateDuringUnwind>,
        out: &mut [u64],
    ) -> usize {
        let (pc, sp, bp) = registers();
        let mut read = |addr: u64| -> Result<u64, ()> {
            if addr < sp || addr % 8 != 0 || addr > sp + (1 << 20) {
                return Err(());
            }
            // SAFETY: test only: within 1 MiB above sp on the test thread's 2 MiB+ stack.
            Ok(unsafe { core::ptr::read_volatile(addr as *const u64) })
        };
        let mut it =
            map.unwinder
                .iter_frames(pc, UnwindRegsX86_64::new(pc, sp, bp), cache, &mut read);
        let mut n = 0;
        while n < out.len() {
            let Ok(Some(f)) = it.next() else { break };
            out[n] = f.address();
            n += 1;
        }
        n
    }
}
