//! The trace clock: nanoseconds since the trace started, from `CLOCK_MONOTONIC` (a vDSO call, no
//! syscall). One clock for all threads is what lets the analyzer merge their streams in order.

use core::sync::atomic::{AtomicU64, Ordering};

static START: AtomicU64 = AtomicU64::new(0);

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Starts the clock at zero.
pub fn start() {
    START.store(monotonic_ns(), Ordering::Relaxed);
}

/// Nanoseconds since [`start`].
#[inline]
pub fn now() -> u64 {
    monotonic_ns().saturating_sub(START.load(Ordering::Relaxed))
}

/// Wall-clock time in nanoseconds since the Unix epoch, for the header.
pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
