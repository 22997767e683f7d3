//! The trace clock: nanoseconds since the trace started, one clock for all threads, which is what
//! lets the analyzer merge their streams in order.
//!
//! It starts on `CLOCK_MONOTONIC` (a vDSO call). When the kernel itself keeps time with the TSC
//! (its clocksource is `tsc`: the counter is invariant and synchronized across CPUs, or the kernel
//! would have refused it), the clock switches to reading the TSC directly once it has been
//! calibrated against `CLOCK_MONOTONIC` over [`CALIBRATION_NS`]: about half the cost per event,
//! which every allocation pays. The switch keeps the clock continuous and monotonic: the TSC
//! reading is anchored at a `CLOCK_MONOTONIC` time read together with it.

use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// `CLOCK_MONOTONIC` at start.
static START: AtomicU64 = AtomicU64::new(0);
/// TSC at start, for the calibration.
static START_TSC: AtomicU64 = AtomicU64::new(0);
/// Anchor of the TSC clock: trace time in ns and the TSC read with it.
static ANCHOR_NS: AtomicU64 = AtomicU64::new(0);
static ANCHOR_TSC: AtomicU64 = AtomicU64::new(0);
/// Nanoseconds per TSC tick, as a 32.32 fixed-point number.
static NS_PER_TICK_Q32: AtomicU64 = AtomicU64::new(0);
/// One of the `MODE_*` values.
static MODE: AtomicU8 = AtomicU8::new(MODE_MONOTONIC);

/// `CLOCK_MONOTONIC` for good (the kernel does not trust the TSC here).
const MODE_MONOTONIC: u8 = 0;
/// `CLOCK_MONOTONIC` until the TSC is calibrated.
const MODE_CALIBRATING: u8 = 1;
/// One thread is computing the calibration.
const MODE_SWITCHING: u8 = 2;
/// The TSC, anchored and calibrated.
const MODE_TSC: u8 = 3;

/// How long the TSC is measured against `CLOCK_MONOTONIC` before it is used: the rate is then
/// known to better than a part in a million.
const CALIBRATION_NS: u64 = 50_000_000;

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// The TSC, read after every earlier instruction has executed (`rdtscp`), so that a time taken
/// after an allocation returned is never earlier than the allocation.
#[inline(always)]
fn tsc() -> u64 {
    let mut aux = 0u32;
    // SAFETY: rdtscp exists on every x86_64 CPU whose kernel clocksource is `tsc` (checked before
    // MODE_TSC is ever set); it only reads the counter and writes `aux`.
    unsafe { core::arch::x86_64::__rdtscp(&mut aux) }
}

/// The TSC, possibly read ahead of earlier instructions (`rdtsc`): for times that must not be later
/// than what follows them (a free is stamped before the block is released), never for times that
/// must follow what came before.
#[inline(always)]
fn tsc_early() -> u64 {
    // SAFETY: rdtsc exists on every x86_64 CPU; it only reads the counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Whether the kernel keeps time with the TSC.
fn kernel_uses_tsc() -> bool {
    std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
        .is_ok_and(|s| s.trim() == "tsc")
        && has_rdtscp()
}

/// CPUID leaf 0x8000_0001, EDX bit 27.
fn has_rdtscp() -> bool {
    // SAFETY: cpuid is available on every x86_64 CPU and only reads identification registers.
    #[allow(unused_unsafe)]
    let max_ext = unsafe { core::arch::x86_64::__cpuid(0x8000_0000) }.eax;
    if max_ext < 0x8000_0001 {
        return false;
    }
    // SAFETY: as above; the leaf exists (checked).
    #[allow(unused_unsafe)]
    let edx = unsafe { core::arch::x86_64::__cpuid(0x8000_0001) }.edx;
    edx & (1 << 27) != 0
}

/// Starts the clock at zero.
pub fn start() {
    let use_tsc = kernel_uses_tsc();
    if use_tsc {
        START_TSC.store(tsc(), Ordering::Relaxed);
    }
    START.store(monotonic_ns(), Ordering::Relaxed);
    let mode = if use_tsc {
        MODE_CALIBRATING
    } else {
        MODE_MONOTONIC
    };
    MODE.store(mode, Ordering::Release);
}

/// Nanoseconds since [`start`], read after everything before it has executed: the time of an
/// allocation that has returned.
#[inline(always)]
pub fn now() -> u64 {
    if MODE.load(Ordering::Acquire) == MODE_TSC {
        return from_tsc(tsc());
    }
    now_slow()
}

/// Nanoseconds since [`start`], possibly read a little ahead of the instructions before it: the
/// time of a free, which only has to come before the release that follows it.
#[inline(always)]
pub fn now_early() -> u64 {
    if MODE.load(Ordering::Acquire) == MODE_TSC {
        return from_tsc(tsc_early());
    }
    now_slow()
}

#[inline(always)]
fn from_tsc(tsc: u64) -> u64 {
    let ticks = tsc.saturating_sub(ANCHOR_TSC.load(Ordering::Relaxed));
    let ns = (u128::from(ticks) * u128::from(NS_PER_TICK_Q32.load(Ordering::Relaxed))) >> 32;
    ANCHOR_NS.load(Ordering::Relaxed) + ns as u64
}

#[cold]
#[inline(never)]
fn now_slow() -> u64 {
    let t = monotonic_ns().saturating_sub(START.load(Ordering::Relaxed));
    if t >= CALIBRATION_NS
        && MODE
            .compare_exchange(
                MODE_CALIBRATING,
                MODE_SWITCHING,
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .is_ok()
    {
        switch_to_tsc();
    }
    t
}

/// Calibrates the TSC against `CLOCK_MONOTONIC` since start and anchors it now. Runs once, in the
/// thread that won the switch; the others keep reading `CLOCK_MONOTONIC` meanwhile.
fn switch_to_tsc() {
    // The anchor: a TSC reading bracketed by two monotonic readings close together.
    let before = monotonic_ns();
    let anchor_tsc = tsc();
    let after = monotonic_ns();
    let start = START.load(Ordering::Relaxed);
    let anchor_ns = (before / 2 + after / 2).saturating_sub(start);
    let ticks = anchor_tsc.saturating_sub(START_TSC.load(Ordering::Relaxed));
    if ticks == 0 || after - before > 10_000 {
        // A clock that did not move, or a reading disturbed by preemption: stay on the vDSO.
        MODE.store(MODE_MONOTONIC, Ordering::Release);
        return;
    }
    let q32 = ((u128::from(anchor_ns) << 32) / u128::from(ticks)) as u64;
    // Anchored at the middle of the bracket, the TSC clock agrees with CLOCK_MONOTONIC to within
    // half the bracket (tens of ns), far less than the time between a free and another thread's
    // allocation of the same block; a thread's own records are kept in order by `record.rs`.
    ANCHOR_NS.store(anchor_ns, Ordering::Relaxed);
    ANCHOR_TSC.store(anchor_tsc, Ordering::Relaxed);
    NS_PER_TICK_Q32.store(q32, Ordering::Relaxed);
    MODE.store(MODE_TSC, Ordering::Release);
}

/// Wall-clock time in nanoseconds since the Unix epoch, for the header.
pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The clock never runs backwards across the switch to the TSC, and keeps pace with
    /// `CLOCK_MONOTONIC` afterwards.
    #[test]
    fn monotonic_across_the_switch_and_accurate_after() {
        start();
        let mut last = 0;
        let begin = monotonic_ns();
        while monotonic_ns() - begin < CALIBRATION_NS + 20_000_000 {
            let t = now();
            assert!(t >= last, "clock went back from {last} to {t}");
            last = t;
        }
        if kernel_uses_tsc() {
            assert_eq!(
                MODE.load(Ordering::Acquire),
                MODE_TSC,
                "the clock did not switch"
            );
        }
        if MODE.load(Ordering::Acquire) == MODE_TSC {
            let m0 = monotonic_ns() - START.load(Ordering::Relaxed);
            let t0 = now();
            std::thread::sleep(std::time::Duration::from_millis(100));
            let m1 = monotonic_ns() - START.load(Ordering::Relaxed);
            let t1 = now();
            let drift = (t1 - t0).abs_diff(m1 - m0);
            assert!(drift < 100_000, "TSC clock drifted {drift} ns in 100 ms");
        }
    }
}
