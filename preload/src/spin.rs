//! A tiny spin mutex for the tracer's rare slow paths (new stacks, module rescans, file growth).
//!
//! Not `std::sync::Mutex`: after `fork` the child must be able to reset a lock that a thread which
//! no longer exists was holding, and a spin lock is just a flag we can clear.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering};

/// A test-and-set mutex that yields the CPU while it waits.
pub struct SpinMutex<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` is serialized by `locked` (acquire on lock, release on unlock).
unsafe impl<T: Send> Sync for SpinMutex<T> {}

/// Holds a [`SpinMutex`] until dropped.
pub struct SpinGuard<'a, T>(&'a SpinMutex<T>);

impl<T> SpinMutex<T> {
    /// An unlocked mutex holding `value`.
    pub const fn new(value: T) -> SpinMutex<T> {
        SpinMutex {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Waits for the lock.
    pub fn lock(&self) -> SpinGuard<'_, T> {
        let mut spins = 0u32;
        loop {
            if let Some(g) = self.try_lock() {
                return g;
            }
            spins += 1;
            if spins < 64 {
                core::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Takes the lock if it is free.
    pub fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| SpinGuard(self))
    }

    /// Takes the lock and keeps it past the current scope (fork's prepare handler).
    pub fn lock_forever(&self) {
        core::mem::forget(self.lock());
    }

    /// Clears the lock whatever its state: after [`lock_forever`](Self::lock_forever), or in the
    /// child of `fork`, where the holder is gone.
    pub fn force_unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock, so no other reference to the value exists.
        unsafe { &*self.0.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the lock exclusively.
        unsafe { &mut *self.0.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        self.0.locked.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_and_releases() {
        let l = SpinMutex::new(5);
        let mut g = l.lock();
        *g += 1;
        assert!(l.try_lock().is_none());
        drop(g);
        assert_eq!(*l.try_lock().unwrap(), 6);
        l.lock_forever();
        assert!(l.try_lock().is_none());
        l.force_unlock();
        assert!(l.try_lock().is_some());
    }
}
