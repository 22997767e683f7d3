//! A small bump allocator for the moments before the real allocator is known: while `real.rs`
//! asks the dynamic loader (`dlsym`) which allocator comes after ours, `dlsym` itself may allocate,
//! and so may the loader before libc is ready to be asked.
//!
//! Blocks are never reused: `free` of a block here does nothing, `realloc` copies it out. Each
//! block is preceded by its size, so that a realloc knows how much to copy. The arena lives in
//! `.bss` (untouched pages cost nothing) and is only for a handful of early, small allocations.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Bytes in the arena.
const ARENA_SIZE: usize = 1 << 20;
/// Alignment of every block (as glibc's malloc on x86_64), and the size of the header before it.
const ALIGN: usize = 16;

#[repr(C, align(4096))]
struct Arena(UnsafeCell<[u8; ARENA_SIZE]>);

// SAFETY: blocks are handed out by an atomic bump, so no two threads ever get the same bytes.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; ARENA_SIZE]));
static NEXT: AtomicUsize = AtomicUsize::new(0);

fn base() -> usize {
    ARENA.0.get() as usize
}

/// Whether `p` is a block of the arena.
#[inline(always)]
pub fn owns(p: *mut core::ffi::c_void) -> bool {
    (p as usize).wrapping_sub(base()) < ARENA_SIZE
}

/// A zeroed block of `size` bytes aligned to `align` (at most 4096), or NULL when the arena is full.
pub fn alloc(size: usize, align: usize) -> *mut core::ffi::c_void {
    let align = align.clamp(ALIGN, 4096);
    let Some(need) = size.checked_add(align + ALIGN) else {
        return core::ptr::null_mut();
    };
    let start = NEXT.fetch_add(need, Ordering::Relaxed);
    if start.saturating_add(need) > ARENA_SIZE {
        return core::ptr::null_mut();
    }
    // The block starts at the first `align` boundary that leaves room for the header.
    let block = (base() + start + ALIGN).next_multiple_of(align);
    // SAFETY: [block - ALIGN, block + size) lies inside the bytes this call claimed, which no
    // other call can claim; the header slot is 16-aligned, so the usize write is aligned.
    unsafe { ((block - ALIGN) as *mut usize).write(size) };
    block as *mut core::ffi::c_void
}

/// The size a block of the arena was allocated with.
///
/// # Safety
/// `p` is a block returned by [`alloc`].
pub unsafe fn size_of(p: *mut core::ffi::c_void) -> usize {
    // SAFETY: the caller's `p` has its header 16 bytes before it (see `alloc`).
    unsafe { ((p as usize - ALIGN) as *const usize).read() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_aligned_distinct_and_remember_their_size() {
        let a = alloc(10, 16);
        let b = alloc(100, 64);
        assert!(owns(a) && owns(b));
        assert_eq!(a as usize % 16, 0);
        assert_eq!(b as usize % 64, 0);
        assert!(b as usize >= a as usize + 10);
        // SAFETY: both are blocks of the arena.
        unsafe {
            assert_eq!(size_of(a), 10);
            assert_eq!(size_of(b), 100);
        }
        assert!(!owns(core::ptr::null_mut()));
        assert!(alloc(ARENA_SIZE, 16).is_null());
    }
}
