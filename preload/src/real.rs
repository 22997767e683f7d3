//! The real allocator: glibc's exported `__libc_*` entry points, reached without `dlsym`.
//!
//! glibc exports `__libc_malloc` and friends precisely so that an interposer can forward to them
//! before anything is initialized. There is no `__libc_posix_memalign` or public
//! `__libc_reallocarray`: `hooks.rs` checks those functions' arguments itself and calls
//! `memalign` / `realloc` here. `dlclose` is resolved lazily
//! with `dlsym(RTLD_NEXT)`, the exec functions likewise at start-up; `_exit` is the `exit_group` system call.

use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicUsize, Ordering};
use libc::size_t;

unsafe extern "C" {
    #[link_name = "__libc_malloc"]
    fn libc_malloc(size: size_t) -> *mut c_void;
    #[link_name = "__libc_calloc"]
    fn libc_calloc(nmemb: size_t, size: size_t) -> *mut c_void;
    #[link_name = "__libc_realloc"]
    fn libc_realloc(ptr: *mut c_void, size: size_t) -> *mut c_void;
    #[link_name = "__libc_free"]
    fn libc_free(ptr: *mut c_void);
    #[link_name = "__libc_memalign"]
    fn libc_memalign(align: size_t, size: size_t) -> *mut c_void;
    #[link_name = "__libc_valloc"]
    fn libc_valloc(size: size_t) -> *mut c_void;
    #[link_name = "__libc_pvalloc"]
    fn libc_pvalloc(size: size_t) -> *mut c_void;
}

/// `malloc` of the real allocator.
#[inline]
pub fn malloc(size: usize) -> *mut c_void {
    // SAFETY: __libc_malloc accepts any size and returns NULL or a fresh block.
    unsafe { libc_malloc(size) }
}

/// `calloc` of the real allocator (it checks `nmemb * size` for overflow itself).
#[inline]
pub fn calloc(nmemb: usize, size: usize) -> *mut c_void {
    // SAFETY: __libc_calloc accepts any arguments and returns NULL or a fresh zeroed block.
    unsafe { libc_calloc(nmemb, size) }
}

/// `realloc` of the real allocator.
///
/// # Safety
/// `ptr` is NULL or a live block of the real allocator.
#[inline]
pub unsafe fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: the caller guarantees `ptr` is NULL or a live block.
    unsafe { libc_realloc(ptr, size) }
}

/// `free` of the real allocator.
///
/// # Safety
/// `ptr` is NULL or a live block of the real allocator.
#[inline]
pub unsafe fn free(ptr: *mut c_void) {
    // SAFETY: the caller guarantees `ptr` is NULL or a live block.
    unsafe { libc_free(ptr) }
}

/// `memalign` of the real allocator (also behind `posix_memalign` and `aligned_alloc`).
#[inline]
pub fn memalign(align: usize, size: usize) -> *mut c_void {
    // SAFETY: __libc_memalign validates the alignment itself (EINVAL) and accepts any size.
    unsafe { libc_memalign(align, size) }
}

/// `valloc` of the real allocator.
#[inline]
pub fn valloc(size: usize) -> *mut c_void {
    // SAFETY: __libc_valloc accepts any size.
    unsafe { libc_valloc(size) }
}

/// `pvalloc` of the real allocator.
#[inline]
pub fn pvalloc(size: usize) -> *mut c_void {
    // SAFETY: __libc_pvalloc accepts any size.
    unsafe { libc_pvalloc(size) }
}

/// The next `dlclose` after ours (libc's), found with `dlsym(RTLD_NEXT)` on first use.
///
/// # Safety
/// `handle` is what `dlclose(3)` accepts.
pub unsafe fn dlclose(handle: *mut c_void) -> c_int {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let mut f = NEXT.load(Ordering::Acquire);
    if f == 0 {
        // SAFETY: a NUL-terminated name; RTLD_NEXT resolves past this library.
        f = unsafe { libc::dlsym(libc::RTLD_NEXT, c"dlclose".as_ptr()) } as usize;
        if f == 0 {
            return -1;
        }
        NEXT.store(f, Ordering::Release);
    }
    // SAFETY: `f` is the address of libc's dlclose, whose signature this is.
    let next: unsafe extern "C" fn(*mut c_void) -> c_int = unsafe { core::mem::transmute(f) };
    // SAFETY: the caller's contract under dlclose(3).
    unsafe { next(handle) }
}

/// The exec functions of libc that `hooks.rs` interposes, in the order of [`Exec`].
const EXEC_NAMES: [&core::ffi::CStr; 6] = [
    c"execve",
    c"execv",
    c"execvp",
    c"execvpe",
    c"fexecve",
    c"execveat",
];

/// An exec function of libc, by its index in `EXEC_NAMES`.
#[derive(Clone, Copy)]
pub enum Exec {
    Execve = 0,
    Execv,
    Execvp,
    Execvpe,
    Fexecve,
    Execveat,
}

static EXEC_NEXT: [AtomicUsize; 6] = [const { AtomicUsize::new(0) }; 6];

/// Resolves libc's exec functions (called at start-up, so that the hooks never call `dlsym` in a
/// `vfork` child, which shares the parent's memory and loader locks).
pub fn resolve_exec() {
    for f in [
        Exec::Execve,
        Exec::Execv,
        Exec::Execvp,
        Exec::Execvpe,
        Exec::Fexecve,
        Exec::Execveat,
    ] {
        exec_next(f);
    }
}

/// The address of libc's exec function `f` (0 if `dlsym` cannot find it).
pub fn exec_next(f: Exec) -> usize {
    let slot = &EXEC_NEXT[f as usize];
    let mut p = slot.load(Ordering::Acquire);
    if p == 0 {
        // SAFETY: a NUL-terminated name; RTLD_NEXT resolves past this library.
        p = unsafe { libc::dlsym(libc::RTLD_NEXT, EXEC_NAMES[f as usize].as_ptr()) } as usize;
        slot.store(p, Ordering::Release);
    }
    p
}

/// Ends the process as `_exit(status)` does, without running our hook again.
pub fn exit_now(status: i32) -> ! {
    // SAFETY: exit_group never returns and takes a plain integer.
    unsafe {
        libc::syscall(libc::SYS_exit_group, status);
    }
    // exit_group cannot fail; satisfy the type checker without UB if it somehow did.
    loop {
        core::hint::spin_loop();
    }
}

/// The preload's own Rust allocations go straight to the real allocator, never through the hooks.
pub struct RealAllocator;

// SAFETY: forwards to glibc's allocator, which satisfies GlobalAlloc's contract; alignments above
// 16 (glibc's malloc alignment on x86_64) go through memalign.
unsafe impl core::alloc::GlobalAlloc for RealAllocator {
    unsafe fn alloc(&self, layout: core::alloc::Layout) -> *mut u8 {
        if layout.align() <= 16 {
            malloc(layout.size()).cast()
        } else {
            memalign(layout.align(), layout.size()).cast()
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: core::alloc::Layout) {
        // SAFETY: `ptr` was returned by `alloc` above, i.e. by the real allocator.
        unsafe { free(ptr.cast()) }
    }

    unsafe fn alloc_zeroed(&self, layout: core::alloc::Layout) -> *mut u8 {
        if layout.align() <= 16 {
            calloc(1, layout.size()).cast()
        } else {
            let p = memalign(layout.align(), layout.size()).cast::<u8>();
            if !p.is_null() {
                // SAFETY: `p` is a fresh block of `layout.size()` bytes.
                unsafe { core::ptr::write_bytes(p, 0, layout.size()) };
            }
            p
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: core::alloc::Layout, new: usize) -> *mut u8 {
        if layout.align() <= 16 {
            // SAFETY: `ptr` is a live block of the real allocator (GlobalAlloc contract).
            unsafe { realloc(ptr.cast(), new).cast() }
        } else {
            let p = memalign(layout.align(), new).cast::<u8>();
            if !p.is_null() {
                // SAFETY: both blocks are live and at least min(old, new) bytes long; they are
                // distinct allocations, so they do not overlap.
                unsafe {
                    core::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new));
                    free(ptr.cast());
                }
            }
            p
        }
    }
}
