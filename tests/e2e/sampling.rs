//! `MEMTRACE_SAMPLE_BYTES`: `fixtures/sampling.c` allocates 60,000 blocks each of 64, 4,000 and
//! 65,536 bytes. With a mean of 4,096 bytes, the trace must hold each size's allocations in the
//! proportion 1 - exp(-s/4096) (within 5 standard deviations of the binomial), every free, and
//! the sampling mean in its header; unsampled, every allocation.

use memtrace_tests::{analyze, fixture, run_traced};

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
