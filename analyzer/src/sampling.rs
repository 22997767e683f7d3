//! Estimates from sampled traces (`MEMTRACE_SAMPLE_BYTES=N`, FORMAT.md §2 "Sampling"): what one
//! recorded allocation stands for. An allocation of `s` bytes was recorded with probability
//! `p(s) = 1 - exp(-s/N)`, so weighting it by `1/p(s)` makes every sum over recorded allocations an
//! unbiased estimate of the same sum over all of them: `1/p(s)` calls and `s/p(s)` bytes.
//!
//! Weights are fixed-point integers ([`Amount`]), so a block released later removes exactly the
//! weight it added (it is a function of the block's size alone) and sums never drift. In an
//! unsampled trace an allocation is exactly one call of `s` bytes and the scale is 1: every amount is
//! the plain count and byte total, bit for bit. This module only computes weights and converts
//! amounts back to whole numbers; `replay.rs` and `heap.rs` do the summing.

/// Fixed-point bits of a byte amount in a sampled trace: a weight is exact to 1/256 byte, and sums
/// reach 2^56 bytes (64 PiB) before they wrap.
const BYTES_SHIFT: u32 = 8;
/// Fixed-point bits of a count amount in a sampled trace: a weight is exact to 1/65536 call, and
/// sums reach 2^48 calls before they wrap.
const COUNT_SHIFT: u32 = 16;

/// What some allocations amount to: bytes and calls (or blocks), in the fixed-point units of the
/// trace's [`Weights`] (plain bytes and counts in an unsampled trace).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Amount {
    /// Bytes, in units of `1 / 2^bytes_shift`.
    pub bytes: u64,
    /// Calls or blocks, in units of `1 / 2^count_shift`.
    pub count: u64,
}

impl Amount {
    /// `self + other`, wrapping like the byte totals always have.
    #[inline]
    pub fn plus(self, other: Amount) -> Amount {
        Amount {
            bytes: self.bytes.wrapping_add(other.bytes),
            count: self.count.wrapping_add(other.count),
        }
    }

    /// `self - other`, wrapping: an amount added earlier comes off exactly.
    #[inline]
    pub fn minus(self, other: Amount) -> Amount {
        Amount {
            bytes: self.bytes.wrapping_sub(other.bytes),
            count: self.count.wrapping_sub(other.count),
        }
    }
}

/// The weights of one trace: the identity for an unsampled trace, `1/p(s)` for a sampled one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Weights {
    /// The sampling mean `N` in bytes; 0 when every allocation is recorded.
    mean: u64,
}

impl Weights {
    /// The weights of a trace whose header says `sample_bytes` (`None`: unsampled). A mean of 0
    /// would record every allocation of at least one byte: it is read as unsampled.
    pub fn new(sample_bytes: Option<u64>) -> Weights {
        Weights {
            mean: sample_bytes.unwrap_or(0),
        }
    }

    /// The sampling mean, if the trace is sampled (then every amount is an estimate).
    pub fn sample_bytes(&self) -> Option<u64> {
        (self.mean != 0).then_some(self.mean)
    }

    /// What one recorded allocation of `size` bytes stands for.
    ///
    /// Sampling never records an allocation of 0 bytes (`p(0) = 0`); one in a trace anyway counts
    /// as the calls of a 1-byte allocation and `N` bytes (the limit of `s/p(s)`), so no weight is
    /// infinite.
    #[inline]
    pub fn of(&self, size: u64) -> Amount {
        if self.mean == 0 {
            self.of_known::<false>(size)
        } else {
            self.of_known::<true>(size)
        }
    }

    /// [`Weights::of`] for a caller that knows whether the trace is sampled (`SAMPLED` is
    /// `self.sample_bytes().is_some()`): a constant there, so an unsampled replay's hot loop has no
    /// branch on it.
    #[inline(always)]
    pub fn of_known<const SAMPLED: bool>(&self, size: u64) -> Amount {
        debug_assert_eq!(SAMPLED, self.mean != 0);
        if SAMPLED {
            self.sampled(size)
        } else {
            Amount {
                bytes: size,
                count: 1,
            }
        }
    }

    #[inline(never)]
    fn sampled(&self, size: u64) -> Amount {
        let n = self.mean as f64;
        // p = 1 - exp(-s/N), computed without cancellation for small s/N.
        let p = |s: f64| -(-s / n).exp_m1();
        let count = f64::from(1u32 << COUNT_SHIFT) / p(size.max(1) as f64);
        let bytes = if size == 0 {
            n * f64::from(1u32 << BYTES_SHIFT)
        } else {
            size as f64 * f64::from(1u32 << BYTES_SHIFT) / p(size as f64)
        };
        // `as` saturates: an absurd size cannot wrap its own weight.
        Amount {
            bytes: bytes.round() as u64,
            count: count.round() as u64,
        }
    }

    /// A byte amount as whole bytes, rounded to the nearest.
    #[inline]
    pub fn bytes(&self, amount: u64) -> u64 {
        if self.mean == 0 {
            amount
        } else {
            round_shift(amount, BYTES_SHIFT)
        }
    }

    /// A count amount as a whole count, rounded to the nearest.
    #[inline]
    pub fn count(&self, amount: u64) -> u64 {
        if self.mean == 0 {
            amount
        } else {
            round_shift(amount, COUNT_SHIFT)
        }
    }
}

/// `v / 2^shift`, rounded to the nearest (halves up), without overflow.
fn round_shift(v: u64, shift: u32) -> u64 {
    (v >> shift) + ((v >> (shift - 1)) & 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsampled_weights_are_the_identity() {
        let w = Weights::new(None);
        assert_eq!(w.sample_bytes(), None);
        assert_eq!(
            w.of(100),
            Amount {
                bytes: 100,
                count: 1
            }
        );
        assert_eq!(w.of(0), Amount { bytes: 0, count: 1 });
        assert_eq!((w.bytes(u64::MAX), w.count(7)), (u64::MAX, 7));
        assert_eq!(Weights::new(Some(0)), w);
    }

    #[test]
    fn sampled_weights_are_the_inverse_probability() {
        let w = Weights::new(Some(4096));
        assert_eq!(w.sample_bytes(), Some(4096));
        // 4096 bytes: p = 1 - 1/e = 0.6321..., so 1.5820 calls and 6479.8 bytes.
        let a = w.of(4096);
        assert_eq!(w.count(a.count * 1000), 1582);
        assert_eq!(w.bytes(a.bytes * 10), 64_798);
        // Large blocks are (almost) always recorded: one call, their own size.
        let big = w.of(1 << 30);
        assert_eq!((w.count(big.count), w.bytes(big.bytes)), (1, 1 << 30));
        // Small ones stand for about N/s calls of s bytes, N bytes in all (1/p(1) = 4096.50002).
        let small = w.of(1);
        assert_eq!((w.count(small.count), w.bytes(small.bytes)), (4097, 4097));
        assert_eq!(w.of(0).count, small.count);
        assert_eq!(w.bytes(w.of(0).bytes), 4096);
        // A huge size saturates instead of wrapping.
        assert_eq!(w.of(u64::MAX).bytes, u64::MAX);
    }

    #[test]
    fn rounding_is_to_the_nearest() {
        let w = Weights::new(Some(1));
        assert_eq!(w.bytes(383), 1);
        assert_eq!(w.bytes(384), 2);
        assert_eq!(w.count((3 << 16) - 1), 3);
        assert_eq!(w.count(u64::MAX), 1 << 48);
    }
}
