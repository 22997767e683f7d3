//! Packed chunks (FORMAT.md §3): the preload packs each full 64 KiB chunk with zstd and reuses it.
//! `fixtures/stress.c` on 4 threads fills hundreds of chunks while the threads contend for the one
//! compressor. A packed trace must hold exactly the records an unpacked one holds (the fixture's
//! per-site calls and bytes are fixed by its per-thread random sequence, whatever the interleaving),
//! be smaller, and stay readable when the program is killed in the middle of packing.

use memtrace_tests::{artifacts, fixture, render, run_traced, sum_at_innermost, summary_of};
use std::time::Duration;

const THREADS: u64 = 4;
const ALLOCS: u64 = 100_000;

/// (calls, bytes) allocated at stress_malloc and at stress_realloc, from `top --by bytes`.
fn site_totals(traced: &memtrace_tests::Traced) -> [(u64, u64); 2] {
    let top = traced.top("bytes");
    let sites = ["stress_malloc", "stress_realloc"].map(|f| sum_at_innermost(&top, f));
    assert!(
        sites[0].0 > 0,
        "no bytes at stress_malloc:\n{}",
        render(&top)
    );
    sites.map(|(bytes, calls)| (calls, bytes))
}

#[test]
fn packed_traces_hold_every_record_and_are_smaller() {
    let fx = fixture("stress.c");
    let program = fx.program(&[&THREADS.to_string(), &ALLOCS.to_string()]);
    let packed = run_traced(&program);
    packed.output.assert_code(0, "stress, packed");
    let plain = run_traced(&program.clone().env("MEMTRACE_COMPRESS", "0"));
    plain.output.assert_code(0, "stress, MEMTRACE_COMPRESS=0");
    for (traced, what) in [(&packed, "packed"), (&plain, "unpacked")] {
        traced.summary().assert_consistent(what);
    }
    let want = site_totals(&plain);
    assert_eq!(want[0].0, THREADS * ALLOCS, "stress_malloc calls");
    assert_eq!(
        want[1].0,
        THREADS * ALLOCS.div_ceil(8),
        "stress_realloc calls"
    );
    assert_eq!(
        site_totals(&packed),
        want,
        "packed against unpacked (calls, bytes) per site"
    );
    let size = |t: &memtrace_tests::Traced| std::fs::metadata(&t.trace).expect("trace").len();
    let (packed_len, plain_len) = (size(&packed), size(&plain));
    // The fixture's sizes and addresses are random: zstd saves little on them (real programs
    // repeat themselves and shrink 5-8x), but with a compressor per thread every chunk is packed.
    assert!(
        packed_len * 10 < plain_len * 9,
        "a packed trace of {packed_len} bytes is not much smaller than the unpacked {plain_len}"
    );
}

#[test]
fn a_program_killed_while_packing_leaves_a_clean_trace() {
    let fx = fixture("stress.c");
    for delay_ms in [150, 300, 450] {
        let dir = tempfile::tempdir().expect("tempdir");
        let trace = dir.path().join("trace.bin");
        let mut child = fx
            .program(&["8", "1000000"])
            .env("LD_PRELOAD", &artifacts().preload)
            .env("MEMTRACE_OUTPUT", &trace)
            .env("MEMTRACE_QUIET", "1")
            .spawn();
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
        let (summary, stderr) = summary_of(&trace, "stress killed");
        // The only thing to warn about is the missing end record: no corrupt or skipped bytes.
        for line in stderr.lines().filter(|l| l.contains("warning")) {
            assert!(
                line.contains("end record") || line.contains("killed"),
                "killed after {delay_ms} ms: unexpected warning {line:?}\n{stderr}"
            );
        }
        for field in ["unmatched_frees", "unmatched_reallocs"] {
            assert_eq!(summary.get(field), 0, "killed after {delay_ms} ms: {field}");
        }
        assert!(
            summary.get("alloc_calls") > 10_000,
            "killed after {delay_ms} ms: only {} calls traced",
            summary.get("alloc_calls")
        );
    }
}
