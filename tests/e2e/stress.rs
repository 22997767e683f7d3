//! `fixtures/stress.c`: 16 threads making 200,000 allocations each (a tenth of them grown with
//! realloc), handing every block to a shared ring from which other threads free them. The program
//! counts the blocks and bytes it still holds at the end; the trace must show exactly as much
//! leaked from its two allocation sites. Run it with `MEMTRACE_STRESS_ALLOCS=1000000` for the
//! full 16 x 1 M.

use memtrace_tests::{fixture, render, run_plain, run_traced, sum_at_innermost};

/// `live N blocks B bytes` → (B, N).
fn parse_live(stdout: &str) -> (u64, u64) {
    let words: Vec<&str> = stdout.split_whitespace().collect();
    match words.as_slice() {
        ["live", n, "blocks", b, "bytes"] => {
            (b.parse().expect("bytes"), n.parse().expect("blocks"))
        }
        _ => panic!("stress printed {stdout:?}"),
    }
}

#[test]
fn sixteen_threads_freeing_each_others_blocks_leave_exactly_the_live_set() {
    let fx = fixture("stress.c");
    let allocs = std::env::var("MEMTRACE_STRESS_ALLOCS").unwrap_or_else(|_| "200000".into());
    let program = fx.program(&["16", &allocs]);
    let plain = run_plain(&program);
    plain.assert_code(0, "stress");
    parse_live(&plain.stdout);
    let traced = run_traced(&program);
    traced.output.assert_code(0, "stress under the preload");
    let (bytes, count) = parse_live(&traced.output.stdout);
    let leaks = traced.leaks();
    let sites = ["stress_malloc", "stress_realloc"].map(|f| sum_at_innermost(&leaks, f));
    let leaked = (sites[0].0 + sites[1].0, sites[0].1 + sites[1].1);
    assert_eq!(
        leaked,
        (bytes, count),
        "leaked (bytes, blocks) from stress_malloc {:?} and stress_realloc {:?}, the program \
         counted {bytes} bytes in {count} blocks; leaks:\n{}",
        sites[0],
        sites[1],
        render(&leaks)
    );
    let summary = traced.summary();
    summary.assert_consistent("stress");
    let allocs: u64 = allocs.parse().expect("MEMTRACE_STRESS_ALLOCS is a number");
    // Every allocation, and the realloc of every 8th: the program's own calls, at least.
    assert!(summary.get("alloc_calls") >= 16 * (allocs + allocs.div_ceil(8)));
    assert_eq!(summary.get("missed_frees"), 0);
}
