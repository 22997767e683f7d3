//! Per-thread tracer state. Two parts, both reached through `const`-initialized TLS with no
//! destructor (no lazy init that could allocate: DESIGN.md §2):
//! - the chunk writer, kept in TLS itself for the thread's whole life, so the thread keeps one index
//!   and one chunk sequence even if it allocates after its exit callback ran;
//! - the caches (unwinder rules, recent stacks, the last stack, stack bounds), on the heap, created on
//!   the thread's first traced call and freed by a pthread key destructor when the thread exits
//!   (glibc runs those without allocating).

use crate::memo::Frames;
use crate::python::code::RecentCodes;
use crate::python::frames::PyFrames;
use crate::stacks::StackCache;
use crate::unwind::UnwindCaches;
use crate::writer::ChunkWriter;
use core::cell::{Cell, UnsafeCell};
use core::sync::atomic::{AtomicU32, Ordering};

/// The caches one thread of the traced program needs inside the tracer.
pub struct ThreadState {
    /// framehop's per-thread rule cache.
    pub unwind_cache: UnwindCaches,
    /// Recently seen stacks and their ids.
    pub stacks: StackCache,
    /// The last captured stack, the unwinding memo.
    pub frames: Frames,
    /// The Python frames of the last capture (none outside CPython).
    pub python: PyFrames,
    /// The code ids of the Python frames this thread looked up last.
    pub codes: RecentCodes,
    /// The frames of the last stack this thread defined: the base of its next one (FORMAT.md §4.12).
    pub last_stack: Vec<memtrace_format::Frame>,
    /// The thread's stack, `[lo, hi)`: the unwinder reads nothing outside it.
    pub stack_hi: u64,
    /// The sink epoch this state was last used with.
    pub epoch: u32,
    /// Sampling: bytes still to allocate before the next recorded allocation.
    pub sample_countdown: i64,
    /// Sampling: this thread's random state (xorshift64*), never 0.
    pub rng: u64,
}

thread_local! {
    static STATE: Cell<*mut ThreadState> = const { Cell::new(core::ptr::null_mut()) };
    static WRITER: UnsafeCell<ChunkWriter> = const { UnsafeCell::new(ChunkWriter::UNASSIGNED) };
}

static NEXT_THREAD: AtomicU32 = AtomicU32::new(1);
static KEY: AtomicU32 = AtomicU32::new(u32::MAX);

/// Registers the thread-exit callback. Called once from start-up.
pub fn init_key() {
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: `key` is a valid out-pointer and `on_thread_exit` has the destructor signature.
    if unsafe { libc::pthread_key_create(&mut key, Some(on_thread_exit)) } == 0 {
        KEY.store(key, Ordering::Release);
    }
}

unsafe extern "C" fn on_thread_exit(p: *mut libc::c_void) {
    let Some(_g) = crate::guard::enter() else {
        return;
    };
    STATE.with(|s| {
        if s.get() == p.cast() {
            s.set(core::ptr::null_mut());
        }
    });
    if !p.is_null() {
        // SAFETY: `p` is the Box::into_raw pointer stored by `current`, and this thread (the only
        // user of its state) is exiting: nothing else refers to it.
        drop(unsafe { Box::from_raw(p.cast::<ThreadState>()) });
    }
}

/// This thread's OS id.
pub fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// The top of this thread's stack (its highest address), or 0 if unknown.
fn stack_top() -> u64 {
    // SAFETY: pthread_getattr_np fills `attr` for the calling thread; we destroy it after reading.
    unsafe {
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return 0;
        }
        let mut addr: *mut libc::c_void = core::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let rc = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        if rc != 0 {
            return 0;
        }
        addr as u64 + size as u64
    }
}

/// Runs `f` with this thread's caches and writer, creating them on first use. The caller holds the
/// re-entrancy guard, so the allocations made here go to the real allocator untraced, and `f` must not
/// call `with` again (pass the references down instead).
#[inline(always)]
pub fn with<R>(max_frames: usize, f: impl FnOnce(&mut ThreadState, &mut ChunkWriter) -> R) -> R {
    let mut p = STATE.with(|s| s.get());
    if p.is_null() {
        p = create(max_frames);
    }
    // SAFETY: `p` is this thread's live state (see below); a plain read of one field.
    if unsafe { (*p).epoch } != crate::sink::SINK.epoch() {
        // First event of the forking thread in a fork child whose sink was replaced.
        reset_for_child();
    }
    let w = WRITER.with(|w| w.get());
    // SAFETY:
    // - `p` is this thread's own heap state and `w` its own TLS writer: no other thread can reach
    //   them, and only `with` hands out references to them;
    // - the guard held by the caller keeps the tracer from re-entering on this thread, and `f` does
    //   not call `with`, so these are the only live references;
    // - `p` stays allocated until this thread's exit callback, which cannot run during `f`.
    let (state, writer) = unsafe { (&mut *p, &mut *w) };
    if writer.thread == 0 {
        *writer = ChunkWriter::new(NEXT_THREAD.fetch_add(1, Ordering::Relaxed), gettid());
    }
    f(state, writer)
}

#[cold]
fn create(max_frames: usize) -> *mut ThreadState {
    let state = Box::new(ThreadState {
        unwind_cache: UnwindCaches::new(),
        stacks: StackCache::new(),
        frames: Frames::new(max_frames),
        python: PyFrames::new(),
        codes: RecentCodes::new(),
        last_stack: Vec::new(),
        stack_hi: stack_top(),
        epoch: crate::sink::SINK.epoch(),
        sample_countdown: crate::sample::UNDRAWN,
        rng: u64::from(gettid()).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
    });
    let p = Box::into_raw(state);
    STATE.with(|s| s.set(p));
    let key = KEY.load(Ordering::Acquire);
    if key != u32::MAX {
        // SAFETY: `key` came from pthread_key_create; the value is this thread's state.
        unsafe { libc::pthread_setspecific(key, p.cast()) };
    }
    p
}

/// Called in a fork child: the forking thread must forget the parent's file and stacks.
pub fn reset_for_child() {
    let w = WRITER.with(|w| w.get());
    // SAFETY: in a fork child this is the only thread, and no reference from `with` is live here
    // (we run in the atfork handler, or in `with` before it creates its references).
    let writer = unsafe { &mut *w };
    writer.reset(gettid());
    let p = STATE.with(|s| s.get());
    // SAFETY: as above, for this thread's heap state.
    if let Some(state) = unsafe { p.as_mut() } {
        state.stacks.clear();
        state.frames.clear();
        state.codes.clear();
        state.stack_hi = stack_top();
        state.epoch = crate::sink::SINK.epoch();
    }
}
