//! Per-thread tracer state: the chunk writer, the unwinder's cache, the recent-stacks cache and the
//! thread's stack bounds. Created on a thread's first traced call, freed when the thread exits.
//!
//! The TLS slot is a `const`-initialized raw pointer (no lazy init, no TLS destructor: DESIGN.md §2).
//! Thread exit is seen through a pthread key destructor, which glibc runs without allocating.

use crate::stacks::{Frames, StackCache};
use crate::writer::ChunkWriter;
use core::cell::Cell;
use core::sync::atomic::{AtomicU32, Ordering};
use framehop::MayAllocateDuringUnwind;
use framehop::x86_64::CacheX86_64;

/// Everything one thread of the traced program needs inside the tracer.
pub struct ThreadState {
    /// Where this thread's records go.
    pub writer: ChunkWriter,
    /// framehop's per-thread rule cache.
    pub unwind_cache: CacheX86_64<MayAllocateDuringUnwind>,
    /// Recently seen stacks and their ids.
    pub stacks: StackCache,
    /// The last captured stack, the unwinding memo.
    pub frames: Frames,
    /// The thread's stack, `[lo, hi)`: the unwinder reads nothing outside it.
    pub stack_hi: u64,
    /// The sink epoch this state was last used with.
    pub epoch: u32,
}

thread_local! {
    static STATE: Cell<*mut ThreadState> = const { Cell::new(core::ptr::null_mut()) };
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

/// This thread's state, created on first use. The caller holds the re-entrancy guard, so the
/// allocations made here go to the real allocator untraced.
pub fn current(max_frames: usize) -> &'static mut ThreadState {
    let mut p = STATE.with(|s| s.get());
    if p.is_null() {
        let state = Box::new(ThreadState {
            writer: ChunkWriter::new(NEXT_THREAD.fetch_add(1, Ordering::Relaxed), gettid()),
            unwind_cache: CacheX86_64::new_in(),
            stacks: StackCache::new(),
            frames: Frames::new(max_frames),
            stack_hi: stack_top(),
            epoch: crate::sink::SINK.epoch(),
        });
        p = Box::into_raw(state);
        STATE.with(|s| s.set(p));
        let key = KEY.load(Ordering::Acquire);
        if key != u32::MAX {
            // SAFETY: `key` came from pthread_key_create; the value is this thread's state.
            unsafe { libc::pthread_setspecific(key, p.cast()) };
        }
    }
    // SAFETY: `p` is this thread's own state: only this thread reads the TLS slot, the guard held by
    // the caller keeps the tracer from re-entering on this thread, so no other reference is live.
    unsafe { &mut *p }
}

/// Called in a fork child: the forking thread's state must forget the parent's file and stacks.
pub fn reset_for_child() {
    let p = STATE.with(|s| s.get());
    // SAFETY: as in `current`; in a fork child this is the only thread.
    if let Some(state) = unsafe { p.as_mut() } {
        state.writer.reset(gettid());
        state.stacks.clear();
        state.frames.clear();
        state.stack_hi = stack_top();
        state.epoch = crate::sink::SINK.epoch();
    }
}
