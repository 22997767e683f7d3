//! The real allocator, where the hooks forward every call: glibc's exported `__libc_*` entry points
//! (reached without `dlsym`), or, when another allocator is loaded after libmemtrace.so
//! (`LD_PRELOAD=libmemtrace.so:libjemalloc.so.2`), that allocator's functions, found once with
//! `dlsym(RTLD_NEXT)` as soon as libc can answer. Until then, and while `dlsym` itself allocates,
//! blocks come from `bootstrap.rs`. Functions the next allocator lacks (`pvalloc`, say) are built
//! from its `memalign`, never taken from glibc: one allocator must own every block.
//!
//! There is no `__libc_posix_memalign` or public `__libc_reallocarray`: `hooks.rs` checks those
//! functions' arguments itself and calls `memalign` / `realloc` here. `dlclose` is resolved lazily
//! with `dlsym(RTLD_NEXT)`, the exec functions likewise at start-up; `_exit` is the `exit_group`
//! system call.

use crate::{bootstrap, loader};
use core::ffi::{CStr, c_int, c_void};
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
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

/// Which allocator the hooks forward to: not known yet, being found out, glibc's, or another one
/// loaded after libmemtrace.so (`LD_PRELOAD=libmemtrace.so:libjemalloc.so.2`).
static FORWARD: AtomicU8 = AtomicU8::new(UNKNOWN);
const UNKNOWN: u8 = 0;
const FINDING: u8 = 1;
const GLIBC: u8 = 2;
const NEXT: u8 = 3;

/// The next allocator's functions (see [`FORWARD`]); 0 where it has none of its own, which is then
/// built from its `memalign`.
struct Next {
    malloc: AtomicUsize,
    calloc: AtomicUsize,
    realloc: AtomicUsize,
    free: AtomicUsize,
    memalign: AtomicUsize,
    valloc: AtomicUsize,
    pvalloc: AtomicUsize,
}

static NEXT_FNS: Next = Next {
    malloc: AtomicUsize::new(0),
    calloc: AtomicUsize::new(0),
    realloc: AtomicUsize::new(0),
    free: AtomicUsize::new(0),
    memalign: AtomicUsize::new(0),
    valloc: AtomicUsize::new(0),
    pvalloc: AtomicUsize::new(0),
};

/// Whether `p` is 0 or a function of glibc's libc.so.6. Decided by the object that holds it, not
/// by comparing with `__libc_malloc` and friends: an allocator such as tcmalloc defines those too,
/// and a reference to them from here may be bound to its copies.
fn in_glibc(p: usize) -> bool {
    if p == 0 {
        return true;
    }
    let libc_fn = libc::gnu_get_libc_version as *const () as *const c_void;
    match (
        loader::object_of(p as *const c_void),
        loader::object_of(libc_fn),
    ) {
        (Some((a, _)), Some((b, _))) => a == b,
        _ => false,
    }
}

/// Finds out which allocator comes after ours, once, when libc can answer (`ready`). Until then,
/// and while one thread asks (`dlsym` allocates too), allocations come from `bootstrap.rs`.
#[cold]
#[inline(never)]
fn find_forward(ready: bool) {
    if !ready
        || FORWARD
            .compare_exchange(UNKNOWN, FINDING, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    // An allocator loaded before us owns every block from the start: forward to it, never mixing
    // in glibc's (plt.rs then takes the program's calls back from it). Otherwise, to the one after
    // us, if it is not glibc.
    let forwarded = match allocator_before_us() {
        Some(allocator) => {
            // SAFETY: RTLD_NOLOAD only looks the loaded library up; its reference is kept for good
            // (the forwarding uses its functions until exit); the name is NUL-terminated.
            let handle =
                unsafe { libc::dlopen(allocator.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD) };
            let ok = !handle.is_null() && forward_from(handle);
            if ok {
                let _ = IN_FRONT.set(allocator);
            }
            ok
        }
        None => forward_from(libc::RTLD_NEXT),
    };
    if !forwarded {
        FORWARD.store(GLIBC, Ordering::Release);
    }
}

/// Whether the real allocator is known, finding it out first if need be (libc must be ready).
/// `false` while it is being found out: `dlsym` allocates (its error strings), and those nested
/// calls must not start the tracer, since starting allocates more than the bootstrap arena holds.
pub fn resolve() -> bool {
    forward() >= GLIBC
}

/// The forwarding state, finding it out first if need be. `ready`: libc can be asked.
#[inline(always)]
fn forward() -> u8 {
    let f = FORWARD.load(Ordering::Acquire);
    if f >= GLIBC {
        return f;
    }
    find_forward(crate::init::libc_ready());
    FORWARD.load(Ordering::Acquire)
}

/// The next allocator's function in `slot`, as a function of type `F`.
///
/// # Safety
/// `F` is the C signature of the function `slot` holds, and `slot` is non-zero.
#[inline(always)]
unsafe fn next_fn<F: Copy>(slot: &AtomicUsize) -> F {
    let p = slot.load(Ordering::Relaxed);
    // SAFETY: the caller's `F` is a function pointer type matching the symbol's signature;
    // function pointers and usize have the same size on x86_64.
    unsafe { core::mem::transmute_copy(&p) }
}

/// `malloc` of the real allocator.
#[inline]
pub fn malloc(size: usize) -> *mut c_void {
    match forward() {
        // SAFETY: __libc_malloc accepts any size and returns NULL or a fresh block.
        GLIBC => unsafe { libc_malloc(size) },
        // SAFETY: the next allocator's malloc (always present in NEXT state), C signature.
        NEXT => unsafe { next_fn::<MallocFn>(&NEXT_FNS.malloc)(size) },
        _ => bootstrap::alloc(size, 16),
    }
}

type MallocFn = unsafe extern "C" fn(size_t) -> *mut c_void;
type CallocFn = unsafe extern "C" fn(size_t, size_t) -> *mut c_void;
type ReallocFn = unsafe extern "C" fn(*mut c_void, size_t) -> *mut c_void;
type FreeFn = unsafe extern "C" fn(*mut c_void);
type MemalignFn = unsafe extern "C" fn(size_t, size_t) -> *mut c_void;

/// `calloc` of the real allocator (it checks `nmemb * size` for overflow itself).
#[inline]
pub fn calloc(nmemb: usize, size: usize) -> *mut c_void {
    match forward() {
        // SAFETY: __libc_calloc accepts any arguments and returns NULL or a fresh zeroed block.
        GLIBC => unsafe { libc_calloc(nmemb, size) },
        NEXT if NEXT_FNS.calloc.load(Ordering::Relaxed) != 0 => {
            // SAFETY: the next allocator's calloc (checked non-zero), C signature.
            unsafe { next_fn::<CallocFn>(&NEXT_FNS.calloc)(nmemb, size) }
        }
        f => match nmemb.checked_mul(size) {
            Some(total) if f == NEXT => {
                let p = malloc(total);
                if !p.is_null() {
                    // SAFETY: `p` is a fresh block of `total` bytes.
                    unsafe { core::ptr::write_bytes(p.cast::<u8>(), 0, total) };
                }
                p
            }
            // Arena blocks are fresh, hence zero.
            Some(total) => bootstrap::alloc(total, 16),
            None => core::ptr::null_mut(),
        },
    }
}

/// `realloc` of the real allocator.
///
/// # Safety
/// `ptr` is NULL or a live block of the real allocator.
#[inline]
pub unsafe fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    if bootstrap::owns(ptr) {
        // SAFETY: `ptr` is an arena block.
        return unsafe { realloc_from_arena(ptr, size) };
    }
    match forward() {
        // SAFETY: the caller guarantees `ptr` is NULL or a live block.
        GLIBC => unsafe { libc_realloc(ptr, size) },
        // SAFETY: as above; the next allocator's realloc is always present in NEXT state (an
        // allocator that interposes malloc without realloc could not work at all).
        NEXT => unsafe { next_fn::<ReallocFn>(&NEXT_FNS.realloc)(ptr, size) },
        // Before any real allocator: `ptr` can only be NULL here.
        _ => bootstrap::alloc(size, 16),
    }
}

/// Moves an arena block into a block of the real allocator (or a new arena block, if there is no
/// real allocator yet).
///
/// # Safety
/// `ptr` is a block of the arena.
#[cold]
unsafe fn realloc_from_arena(ptr: *mut c_void, size: usize) -> *mut c_void {
    let p = malloc(size);
    if !p.is_null() {
        // SAFETY: `ptr` is an arena block of `size_of(ptr)` bytes, `p` a fresh block of `size`
        // bytes; distinct blocks never overlap.
        unsafe {
            let n = bootstrap::size_of(ptr).min(size);
            core::ptr::copy_nonoverlapping(ptr.cast::<u8>(), p.cast::<u8>(), n);
        }
    }
    p
}

/// `free` of the real allocator. Arena blocks are never freed.
///
/// # Safety
/// `ptr` is NULL or a live block of the real allocator.
#[inline]
pub unsafe fn free(ptr: *mut c_void) {
    if bootstrap::owns(ptr) {
        return;
    }
    match forward() {
        // SAFETY: the caller guarantees `ptr` is NULL or a live block.
        GLIBC => unsafe { libc_free(ptr) },
        // SAFETY: as above; the next allocator's free is always present in NEXT state.
        NEXT => unsafe { next_fn::<FreeFn>(&NEXT_FNS.free)(ptr) },
        // No real allocator yet, so `ptr` is NULL (or not ours to free).
        _ => {}
    }
}

/// `memalign` of the real allocator (also behind `posix_memalign` and `aligned_alloc`).
#[inline]
pub fn memalign(align: usize, size: usize) -> *mut c_void {
    match forward() {
        // SAFETY: __libc_memalign validates the alignment itself (EINVAL) and accepts any size.
        GLIBC => unsafe { libc_memalign(align, size) },
        NEXT if NEXT_FNS.memalign.load(Ordering::Relaxed) != 0 => {
            // SAFETY: the next allocator's memalign (checked non-zero), C signature.
            unsafe { next_fn::<MemalignFn>(&NEXT_FNS.memalign)(align, size) }
        }
        NEXT => {
            let mut p = core::ptr::null_mut();
            // SAFETY: an allocator without memalign has posix_memalign (C11/POSIX); found by name
            // like the others, with its C signature; `p` is a valid out-pointer.
            unsafe {
                let library = NEXT_LIBRARY.load(Ordering::Relaxed) as *mut c_void;
                let f = libc::dlsym(library, c"posix_memalign".as_ptr()) as usize;
                if f != 0 {
                    let f: unsafe extern "C" fn(*mut *mut c_void, size_t, size_t) -> c_int =
                        core::mem::transmute(f);
                    if f(&mut p, align.max(8), size) != 0 {
                        p = core::ptr::null_mut();
                    }
                }
            }
            p
        }
        _ => {
            if align > 4096 {
                core::ptr::null_mut()
            } else {
                bootstrap::alloc(size, align)
            }
        }
    }
}

/// `valloc` of the real allocator.
#[inline]
pub fn valloc(size: usize) -> *mut c_void {
    match forward() {
        // SAFETY: __libc_valloc accepts any size.
        GLIBC => unsafe { libc_valloc(size) },
        NEXT if NEXT_FNS.valloc.load(Ordering::Relaxed) != 0 => {
            // SAFETY: the next allocator's valloc (checked non-zero), C signature.
            unsafe { next_fn::<MallocFn>(&NEXT_FNS.valloc)(size) }
        }
        _ => memalign(PAGE, size),
    }
}

/// `pvalloc` of the real allocator.
#[inline]
pub fn pvalloc(size: usize) -> *mut c_void {
    match forward() {
        // SAFETY: __libc_pvalloc accepts any size.
        GLIBC => unsafe { libc_pvalloc(size) },
        NEXT if NEXT_FNS.pvalloc.load(Ordering::Relaxed) != 0 => {
            // SAFETY: the next allocator's pvalloc (checked non-zero), C signature.
            unsafe { next_fn::<MallocFn>(&NEXT_FNS.pvalloc)(size) }
        }
        _ => match size.checked_next_multiple_of(PAGE) {
            Some(rounded) => memalign(PAGE, rounded.max(PAGE)),
            None => core::ptr::null_mut(),
        },
    }
}

/// The page size on x86_64 Linux.
const PAGE: usize = 4096;

/// The library loaded before libmemtrace.so that defines `malloc`, if any
/// (`LD_PRELOAD=libjemalloc.so.2:libmemtrace.so`): it comes first in the symbol search order, so
/// the program's calls reach it, not memtrace (`plt.rs` takes them back).
///
/// Libraries are compared, not addresses: inside libmemtrace.so a reference to its own exported
/// `malloc` is itself resolved through the search order, and in a non-PIE executable that takes
/// `malloc`'s address the global `malloc` is the executable's PLT stub. The executable is not
/// checked (it is searched first but rarely defines `malloc`).
fn allocator_before_us() -> Option<std::ffi::CString> {
    let (ours, _) = loader::ourselves()?;
    loader::loaded_objects()
        .into_iter()
        .take_while(|o| o.bias != ours)
        .filter(|o| !o.name.is_empty())
        .map(|o| o.name)
        .find(|name| defines_malloc(name))
}

/// The allocator loaded before libmemtrace.so that the hooks forward to, if there is one.
static IN_FRONT: std::sync::OnceLock<std::ffi::CString> = std::sync::OnceLock::new();

/// The library of the allocator loaded before libmemtrace.so, which the hooks forward to (see
/// [`allocator_before_us`]); `None` when the allocator comes after us or is glibc's.
pub fn allocator_in_front() -> Option<&'static CStr> {
    forward();
    IN_FRONT.get().map(|c| c.as_c_str())
}

/// Forwards from now on to the allocator that `library` (a `dlopen` handle, or `RTLD_NEXT`)
/// leads `dlsym` to, if it has its own `malloc`, `free` and `realloc` (not glibc's).
fn forward_from(library: *mut c_void) -> bool {
    let sym = |n: &CStr| {
        // SAFETY: dlsym only looks a NUL-terminated name up from `library`, a live handle or
        // RTLD_NEXT.
        let p = unsafe { libc::dlsym(library, n.as_ptr()) } as usize;
        if in_glibc(p) { 0 } else { p }
    };
    let n = &NEXT_FNS;
    let (malloc, free, realloc) = (sym(c"malloc"), sym(c"free"), sym(c"realloc"));
    if malloc == 0 || free == 0 || realloc == 0 {
        return false;
    }
    n.malloc.store(malloc, Ordering::Relaxed);
    n.free.store(free, Ordering::Relaxed);
    n.realloc.store(realloc, Ordering::Relaxed);
    n.calloc.store(sym(c"calloc"), Ordering::Relaxed);
    n.memalign.store(sym(c"memalign"), Ordering::Relaxed);
    n.valloc.store(sym(c"valloc"), Ordering::Relaxed);
    n.pvalloc.store(sym(c"pvalloc"), Ordering::Relaxed);
    NEXT_LIBRARY.store(library as usize, Ordering::Relaxed);
    FORWARD.store(NEXT, Ordering::Release);
    true
}

/// The library [`forward_from`] forwards to (a `dlopen` handle, or `RTLD_NEXT`).
static NEXT_LIBRARY: AtomicUsize = AtomicUsize::new(0);

/// Whether the loaded library `name` (as the loader names it) itself defines `malloc`.
fn defines_malloc(name: &CStr) -> bool {
    // SAFETY: RTLD_NOLOAD only looks the loaded library up (it takes a reference, dropped below);
    // dlsym searches it and its dependencies; names are NUL-terminated.
    unsafe {
        let handle = libc::dlopen(name.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD);
        if handle.is_null() {
            return false;
        }
        let malloc = libc::dlsym(handle, c"malloc".as_ptr());
        let own = !malloc.is_null()
            && loader::object_of(malloc).is_some_and(|(_, object)| object.as_c_str() == name);
        libc::dlclose(handle);
        own
    }
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
