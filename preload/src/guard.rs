//! The per-thread re-entrancy guard: while a thread is inside the tracer, its own allocations (and
//! those of anything the tracer calls, such as `dl_iterate_phdr`) go straight to the real allocator.
//!
//! The flag is a `const`-initialized `Cell<bool>` in TLS: no lazy set-up and no destructor, so
//! touching it can never allocate (the redhook#15 recursion). It is a real memory flag, not a
//! counter the optimizer could see through.

use core::cell::Cell;

thread_local! {
    static IN_TRACER: Cell<bool> = const { Cell::new(false) };
}

/// Proof that this thread is inside the tracer; leaving the scope clears the flag.
pub struct Guard(());

/// Enters the tracer, or `None` if this thread is already inside it.
#[inline]
pub fn enter() -> Option<Guard> {
    IN_TRACER.with(|f| {
        if f.get() {
            None
        } else {
            f.set(true);
            Some(Guard(()))
        }
    })
}

/// Marks this thread as inside the tracer without a scope (fork's prepare handler, `_exit`).
pub fn hold() {
    IN_TRACER.with(|f| f.set(true));
}

/// Undoes [`hold`].
pub fn release() {
    IN_TRACER.with(|f| f.set(false));
}

impl Drop for Guard {
    #[inline]
    fn drop(&mut self) {
        IN_TRACER.with(|f| f.set(false));
    }
}
