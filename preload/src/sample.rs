//! Sampling by bytes (`MEMTRACE_SAMPLE_BYTES=N`, off by default): allocations are recorded by a
//! Poisson process over allocated bytes with mean interval `N`, as jemalloc's and Go's heap
//! profilers do, so an allocation of `s` bytes is recorded with probability `1 - exp(-s/N)`
//! whatever came before it, and the analyzer's estimates (each recorded allocation weighted by the
//! inverse of that probability) are unbiased (FORMAT.md §2).
//!
//! Each thread counts down the bytes left to its next sample point, drawn from an exponential
//! distribution; an allocation that reaches the point is recorded and a new point is drawn. An
//! unrecorded allocation costs a subtraction: no stack is unwound.

use core::sync::atomic::{AtomicU64, Ordering};

/// The mean interval in bytes; 0 when every allocation is recorded.
static MEAN: AtomicU64 = AtomicU64::new(0);

/// A countdown that has not been drawn yet (a thread's first allocation draws it).
pub const UNDRAWN: i64 = i64::MIN;

/// Turns sampling on (start-up).
pub fn set_mean(bytes: u64) {
    MEAN.store(bytes, Ordering::Relaxed);
}

/// The mean interval, 0 when sampling is off.
#[inline(always)]
pub fn mean() -> u64 {
    MEAN.load(Ordering::Relaxed)
}

/// Whether an allocation of `size` bytes is recorded, given the thread's countdown and random
/// state, which it advances.
#[inline(always)]
pub fn take(countdown: &mut i64, rng: &mut u64, size: usize, mean: u64) -> bool {
    if *countdown == UNDRAWN {
        *countdown = draw(rng, mean);
    }
    *countdown = countdown.saturating_sub(i64::try_from(size).unwrap_or(i64::MAX));
    if *countdown > 0 {
        return false;
    }
    *countdown = draw(rng, mean);
    true
}

/// An exponentially distributed number of bytes with mean `mean`, rounded up (at least 1).
fn draw(rng: &mut u64, mean: u64) -> i64 {
    // xorshift64*: a full-period generator, plenty for sample points.
    let mut x = *rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *rng = x;
    let bits = x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
    // Uniform in (0, 1]: never 0, so the logarithm is finite.
    let u = (bits as f64 + 1.0) / (1u64 << 53) as f64;
    let d = -u.ln() * mean as f64;
    // Rounded up: an allocation of s bytes (a whole number) reaches the point exactly when the
    // continuous draw is at most s, so it is taken with probability 1 - exp(-s/N), not
    // 1 - exp(-(s+1)/N) as rounding down would make it.
    (d.ceil() as i64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fraction of allocations of each size that are taken matches 1 - exp(-s/N).
    #[test]
    fn allocations_are_taken_with_the_poisson_probability() {
        let mean = 4096u64;
        let mut countdown = UNDRAWN;
        let mut rng = 0x1234_5678_9abc_def1;
        for size in [64usize, 1024, 4096, 20_000] {
            let n = 200_000;
            let taken = (0..n)
                .filter(|_| take(&mut countdown, &mut rng, size, mean))
                .count();
            let want = 1.0 - (-(size as f64) / mean as f64).exp();
            let got = taken as f64 / n as f64;
            assert!(
                (got - want).abs() < 0.01,
                "size {size}: taken {got:.4}, expected {want:.4}"
            );
        }
    }

    /// Exact for tiny sizes too, where rounding the draw down would take an allocation of s bytes
    /// with probability 1 - exp(-(s+1)/N) (0.22 here instead of 0.12).
    #[test]
    fn one_byte_allocations_are_taken_with_the_poisson_probability() {
        let (mean, n) = (8u64, 400_000);
        let mut countdown = UNDRAWN;
        let mut rng = 7;
        let taken = (0..n)
            .filter(|_| take(&mut countdown, &mut rng, 1, mean))
            .count();
        let want = 1.0 - (-1.0 / mean as f64).exp();
        let got = taken as f64 / n as f64;
        assert!(
            (got - want).abs() < 0.003,
            "taken {got:.4}, expected {want:.4}"
        );
    }

    /// Weighting each taken allocation by 1/p estimates the total bytes without bias.
    #[test]
    fn weighted_totals_estimate_the_truth() {
        let mean = 65_536u64;
        let mut countdown = UNDRAWN;
        let mut rng = 42;
        let sizes = [16usize, 100, 700, 5000, 100_000];
        let (mut truth, mut estimate) = (0f64, 0f64);
        for i in 0..500_000 {
            let s = sizes[i % sizes.len()];
            truth += s as f64;
            if take(&mut countdown, &mut rng, s, mean) {
                estimate += s as f64 / (1.0 - (-(s as f64) / mean as f64).exp());
            }
        }
        assert!(
            (estimate / truth - 1.0).abs() < 0.02,
            "estimate {estimate} vs {truth}"
        );
    }
}
