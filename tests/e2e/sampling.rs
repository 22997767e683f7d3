//! `MEMTRACE_SAMPLE_BYTES`: `fixtures/sampling.c` allocates 60,000 blocks each of 64, 4,000 and
//! 65,536 bytes (in `small_site`, `medium_site`, `large_site`) and reallocs one block 20,000 times
//! (`grow_site`). With a mean of 4,096 bytes, the trace must hold each size's allocations in the
//! proportion 1 - exp(-s/4096) (within 5 standard deviations of the binomial), every free, and
//! the sampling mean in its header; the analyzer's estimates per call site must land within a
//! bound from the known sizes and counts of the fixture's exact totals; unsampled, every
//! allocation is recorded.

use memtrace_tests::{analyze, assert_no_site, fixture, run_traced, sum_at_innermost};

const ROUNDS: f64 = 60_000.0;

/// Alloc records per size, and free records, from `dump`.
fn counts(trace: &std::path::Path) -> (Vec<(u64, u64)>, u64, String) {
    let out = analyze(&["dump".as_ref(), trace.as_os_str()]);
    out.assert_code(0, "dump");
    let mut per_size = vec![(64u64, 0u64), (4000, 0), (65536, 0)];
    let mut frees = 0;
    for line in out.stdout.lines() {
        if line.starts_with("free ") {
            frees += 1;
        } else if line.starts_with("alloc ") {
            for (size, n) in &mut per_size {
                if line.contains(&format!(" size={size} ")) {
                    *n += 1;
                }
            }
        }
    }
    let header = out.stdout.lines().next().unwrap_or("").to_owned();
    (per_size, frees, header)
}

#[test]
fn allocations_are_sampled_by_bytes() {
    let fx = fixture("sampling.c");
    let traced = run_traced(&fx.program(&[]).env("MEMTRACE_SAMPLE_BYTES", "4096"));
    traced.output.assert_code(0, "sampling");
    let (per_size, frees, header) = counts(&traced.trace);
    for (size, n) in per_size {
        let p = 1.0 - (-(size as f64) / 4096.0).exp();
        let mean = ROUNDS * p;
        let sd = (ROUNDS * p * (1.0 - p)).sqrt().max(1.0);
        assert!(
            (n as f64 - mean).abs() <= 5.0 * sd,
            "{size}-byte allocations: {n} recorded, expected {mean:.0} ± {:.0}",
            5.0 * sd
        );
    }
    // Every free of the 180,000 blocks and the grown block is recorded, sampled or not, and each
    // unsampled realloc that moved the block records the free of its old address.
    assert!(frees >= 180_001, "{frees} frees recorded");
    assert!(header.contains("sample_bytes=4096"), "{header}");
}

#[test]
fn without_sampling_every_allocation_is_recorded() {
    let fx = fixture("sampling.c");
    let traced = run_traced(&fx.program(&[]));
    traced.output.assert_code(0, "sampling");
    let (per_size, _, _) = counts(&traced.trace);
    for (size, n) in per_size {
        assert_eq!(n, 60_000, "{size}-byte allocations");
    }
}

/// What a sampled run of a call site estimates: `(bytes, calls)` with their standard deviations,
/// for a site whose allocation calls have the sizes `sizes`.
struct Site {
    name: &'static str,
    sizes: Vec<u64>,
}

impl Site {
    /// The truth: every allocation's bytes, and their number.
    fn truth(&self) -> (f64, f64) {
        (
            self.sizes.iter().sum::<u64>() as f64,
            self.sizes.len() as f64,
        )
    }

    /// The bound on |estimate - truth| for bytes and for calls.
    ///
    /// Each allocation of s bytes is recorded with probability p = 1 - exp(-s/N), independently
    /// (a Poisson process over the thread's bytes), and counts 1/p calls and s/p bytes if it is:
    /// its contribution has variance (1-p)/p calls² and s²(1-p)/p bytes². The bound is 5 standard
    /// deviations of the sum (a normal tail of 6e-7), plus the weight of 2 allocations, for sites
    /// where the estimate moves by whole rare misses (65,536 bytes are missed with probability
    /// 1.1e-7, 0.007 of 60,000 expected: 3 misses have probability 5e-8), plus 1 for the rounding
    /// to whole numbers.
    fn bounds(&self, mean: f64) -> (f64, f64) {
        let (mut var_bytes, mut var_calls, mut weight_bytes, mut weight_calls) =
            (0.0, 0.0, 0f64, 0f64);
        for &s in &self.sizes {
            let s = s as f64;
            let p = -(-s / mean).exp_m1();
            var_calls += (1.0 - p) / p;
            var_bytes += s * s * (1.0 - p) / p;
            weight_calls = weight_calls.max(1.0 / p);
            weight_bytes = weight_bytes.max(s / p);
        }
        (
            5.0 * var_bytes.sqrt() + 2.0 * weight_bytes + 1.0,
            5.0 * var_calls.sqrt() + 2.0 * weight_calls + 1.0,
        )
    }
}

#[test]
fn estimates_per_call_site_are_within_bounds_of_the_truth() {
    let fx = fixture("sampling.c");
    let traced = run_traced(&fx.program(&[]).env("MEMTRACE_SAMPLE_BYTES", "4096"));
    traced.output.assert_code(0, "sampling");
    let summary = traced.summary();
    assert_eq!(
        summary.0["sampled"]["sample_bytes"], 4096,
        "{:#}",
        summary.0
    );
    assert_eq!(summary.0["sampled"]["estimated"], true);
    assert_eq!(summary.get("unmatched_frees"), 0);
    // Most 64-byte blocks were not recorded, but all their frees were.
    assert!(summary.0["sampled"]["unsampled_frees"].as_u64().unwrap() > 50_000);

    let top = traced.top("bytes");
    let sites = [
        Site {
            name: "small_site",
            sizes: vec![64; 60_000],
        },
        Site {
            name: "medium_site",
            sizes: vec![4000; 60_000],
        },
        Site {
            name: "large_site",
            sizes: vec![65_536; 60_000],
        },
        Site {
            name: "grow_site",
            sizes: (1..=20_000).map(|i| i * 16).collect(),
        },
    ];
    for site in &sites {
        let (bytes, calls) = sum_at_innermost(&top, site.name);
        let (true_bytes, true_calls) = site.truth();
        let (bound_bytes, bound_calls) = site.bounds(4096.0);
        assert!(
            (bytes as f64 - true_bytes).abs() <= bound_bytes,
            "{}: estimated {bytes} bytes, truth {true_bytes} ± {bound_bytes:.0}",
            site.name
        );
        assert!(
            (calls as f64 - true_calls).abs() <= bound_calls,
            "{}: estimated {calls} calls, truth {true_calls} ± {bound_calls:.0}",
            site.name
        );
    }
    // Every block was freed: a freed block takes off exactly what it added.
    let leaks = traced.leaks();
    for site in &sites {
        assert_no_site(&leaks, "leaks of a sampled run", site.name);
    }
}
