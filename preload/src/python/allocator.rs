//! pymalloc made visible when `PYTHONMALLOC=malloc` cannot be: under `-E` or `-I` the interpreter
//! ignores the variable, and objects of 512 bytes or less come from pymalloc's arenas, which
//! malloc never sees. Then, as tracemalloc does, the `PYMEM_DOMAIN_MEM` and `PYMEM_DOMAIN_OBJ`
//! allocators are wrapped with `PyMem_SetAllocator`: each wrapper calls the interpreter's own
//! allocator and records the call like a malloc-family call.
//!
//! The wrappers must be installed with the GIL held, so the tracer asks the interpreter to run the
//! installer itself (`Py_AddPendingCall`, which needs neither the GIL nor a thread state), once the
//! first Python frame has been seen. Blocks allocated before that and freed after are recorded as
//! frees of unknown blocks, which the analyzer counts and otherwise ignores.

use crate::{guard, init, record};
use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicBool, Ordering};
use memtrace_format::AllocKind;
use std::sync::OnceLock;

/// CPython's `PyMemAllocatorEx` (the same from 3.5 to 3.13).
#[repr(C)]
#[derive(Clone, Copy)]
struct PyMemAllocatorEx {
    ctx: *mut c_void,
    malloc: Option<unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void>,
    calloc: Option<unsafe extern "C" fn(*mut c_void, usize, usize) -> *mut c_void>,
    realloc: Option<unsafe extern "C" fn(*mut c_void, *mut c_void, usize) -> *mut c_void>,
    free: Option<unsafe extern "C" fn(*mut c_void, *mut c_void)>,
}

// SAFETY: the struct is plain data (function pointers and the interpreter's context pointer),
// written once before the wrappers that read it are installed.
unsafe impl Send for PyMemAllocatorEx {}
// SAFETY: as above; never written after it is published.
unsafe impl Sync for PyMemAllocatorEx {}

/// `PYMEM_DOMAIN_MEM` and `PYMEM_DOMAIN_OBJ`.
const DOMAINS: [c_int; 2] = [1, 2];

/// The interpreter's allocators, per domain, as they were before the wrappers.
static ORIGINAL: [OnceLock<PyMemAllocatorEx>; 2] = [OnceLock::new(), OnceLock::new()];
/// The wrapping is wanted (set at start-up for `-E`/`-I`).
static WANTED: AtomicBool = AtomicBool::new(false);

type GetSet = unsafe extern "C" fn(c_int, *mut PyMemAllocatorEx);

/// Asks for the wrappers (start-up, when the interpreter will ignore `PYTHONMALLOC`).
pub fn want() {
    WANTED.store(true, Ordering::Relaxed);
}

/// Schedules the installer in the interpreter, if the wrappers are wanted. Called once, from the
/// first allocation made while a Python frame runs.
pub fn schedule() {
    if !WANTED.swap(false, Ordering::Relaxed) {
        return;
    }
    let Some(add) = super::symbol(c"Py_AddPendingCall") else {
        return;
    };
    // SAFETY: `int Py_AddPendingCall(int (*func)(void *), void *arg)`, documented as callable
    // from any thread without the GIL; it queues `install` for the main thread's eval loop.
    unsafe {
        let add: unsafe extern "C" fn(extern "C" fn(*mut c_void) -> c_int, *mut c_void) -> c_int =
            core::mem::transmute(add);
        add(install, core::ptr::null_mut());
    }
}

/// Runs in the interpreter with the GIL held: saves each domain's allocator and installs ours.
extern "C" fn install(_: *mut c_void) -> c_int {
    let (Some(get), Some(set)) = (
        super::symbol(c"PyMem_GetAllocator"),
        super::symbol(c"PyMem_SetAllocator"),
    ) else {
        return 0;
    };
    // SAFETY: `void PyMem_GetAllocator(PyMemAllocatorEx_Domain, PyMemAllocatorEx *)` and its setter.
    let (get, set) = unsafe {
        (
            core::mem::transmute::<usize, GetSet>(get),
            core::mem::transmute::<usize, GetSet>(set),
        )
    };
    for (slot, &domain) in ORIGINAL.iter().zip(DOMAINS.iter()) {
        let mut old = PyMemAllocatorEx {
            ctx: core::ptr::null_mut(),
            malloc: None,
            calloc: None,
            realloc: None,
            free: None,
        };
        // SAFETY: `old` is a valid out-struct; the GIL is held (we run as a pending call).
        unsafe { get(domain, &mut old) };
        if slot.set(old).is_err() {
            continue;
        }
        let Some(saved) = slot.get() else { continue };
        let mut ours = PyMemAllocatorEx {
            ctx: (saved as *const PyMemAllocatorEx).cast_mut().cast(),
            malloc: Some(wrapped_malloc),
            calloc: Some(wrapped_calloc),
            realloc: Some(wrapped_realloc),
            free: Some(wrapped_free),
        };
        // SAFETY: as above; `ours.ctx` points at the saved allocator, which lives forever.
        unsafe { set(domain, &mut ours) };
    }
    0
}

/// The saved allocator a wrapper's `ctx` points at.
fn original<'a>(ctx: *mut c_void) -> &'a PyMemAllocatorEx {
    // SAFETY: `ctx` is the pointer `install` gave the interpreter: a `PyMemAllocatorEx` in a static
    // `OnceLock`, initialized before the wrappers were installed and never changed.
    unsafe { &*ctx.cast::<PyMemAllocatorEx>() }
}

/// Runs `call` (the interpreter's allocator) with this thread inside the tracer, so the malloc it
/// may make underneath is not recorded twice, then `record` if tracing is on.
#[inline(always)]
fn traced<T>(call: impl FnOnce() -> T, record: impl FnOnce(&T)) -> T {
    let g = guard::enter();
    let result = call();
    if g.is_some() && init::ensure_started() {
        // SAFETY: this thread's errno slot, valid for the thread's lifetime.
        let errno = unsafe { libc::__errno_location() };
        // SAFETY: as above.
        let saved = unsafe { *errno };
        record(&result);
        // SAFETY: as above.
        unsafe { *errno = saved };
    }
    result
}

unsafe extern "C" fn wrapped_malloc(ctx: *mut c_void, size: usize) -> *mut c_void {
    let o = original(ctx);
    traced(
        || {
            o.malloc.map_or(core::ptr::null_mut(), |f| {
                // SAFETY: the interpreter's own allocator with its own context, called as the
                // interpreter would have called it.
                unsafe { f(o.ctx, size) }
            })
        },
        |&p| {
            if !p.is_null() {
                record::alloc(AllocKind::Malloc, size, p as usize);
            }
        },
    )
}

unsafe extern "C" fn wrapped_calloc(ctx: *mut c_void, n: usize, size: usize) -> *mut c_void {
    let o = original(ctx);
    traced(
        || {
            o.calloc.map_or(core::ptr::null_mut(), |f| {
                // SAFETY: as in `wrapped_malloc`.
                unsafe { f(o.ctx, n, size) }
            })
        },
        |&p| {
            if !p.is_null() {
                record::alloc(AllocKind::Calloc, n.wrapping_mul(size), p as usize);
            }
        },
    )
}

unsafe extern "C" fn wrapped_realloc(
    ctx: *mut c_void,
    ptr: *mut c_void,
    size: usize,
) -> *mut c_void {
    let o = original(ctx);
    traced(
        || {
            o.realloc.map_or(core::ptr::null_mut(), |f| {
                // SAFETY: as in `wrapped_malloc`; `ptr` is the caller's block, passed on.
                unsafe { f(o.ctx, ptr, size) }
            })
        },
        |&p| {
            if !p.is_null() {
                record::realloc(ptr as usize, size, p as usize);
            }
        },
    )
}

unsafe extern "C" fn wrapped_free(ctx: *mut c_void, ptr: *mut c_void) {
    let o = original(ctx);
    // Held across the interpreter's free too: a large block goes back through free(), which must
    // not record it a second time.
    let g = guard::enter();
    if !ptr.is_null() && g.is_some() && init::ensure_started() {
        record::free(ptr as usize);
    }
    if let Some(f) = o.free {
        // SAFETY: as in `wrapped_malloc`.
        unsafe { f(o.ctx, ptr) }
    }
    drop(g);
}
