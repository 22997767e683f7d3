//! `fixtures/alloc_kinds.c`: every interposed allocation function, each from its own function.
//! Asserts exact bytes and counts per site in `leaks` and in `top` by every measure, the innermost
//! frame's function, file and line, and that `summary` agrees with the per-stack reports.

use memtrace_tests::{
    Entry, Site, Traced, assert_no_site, assert_site, fixture, fixture_with, render, run_traced,
    sum_at_innermost,
};

const FIXTURE: &str = "alloc_kinds.c";

/// Live at exit, per site (see the fixture's header).
const LEAKED: [Site<'static>; 9] = [
    Site::new("leak_malloc", 3003, 3),
    Site::new("leak_calloc", 2040, 2),
    Site::new("grow_buffer", 1600, 1),
    Site::new("leak_reallocarray", 143, 1),
    Site::new("leak_posix_memalign", 2222, 2),
    Site::new("leak_aligned_alloc", 1280, 1),
    Site::new("leak_memalign", 1333, 1),
    Site::new("leak_valloc", 1444, 1),
    Site::new("leak_pvalloc", 1555, 1),
];

/// Every allocation call per site: total requested bytes and calls. A realloc is an allocation
/// call of its new size, as in heaptrack.
const ALLOCATED: [Site<'static>; 12] = [
    Site::new("leak_malloc", 3003, 3),
    Site::new("leak_calloc", 2040, 2),
    Site::new("grow_buffer", 100 + 200 + 400 + 800 + 1600, 5),
    Site::new("leak_reallocarray", 143, 1),
    Site::new("leak_posix_memalign", 2222, 2),
    Site::new("leak_aligned_alloc", 1280, 1),
    Site::new("leak_memalign", 1333, 1),
    Site::new("leak_valloc", 1444, 1),
    Site::new("leak_pvalloc", 1555, 1),
    Site::new("temp_malloc", 5 * 2002, 5),
    Site::new("freed_calloc", 4 * 3030, 4),
    Site::new("peak_burst", 20 * 50000, 20),
];

/// Freed before exit: no leak may be attributed to them.
const FREED: [&str; 3] = ["temp_malloc", "freed_calloc", "peak_burst"];

fn run() -> (Traced, &'static memtrace_tests::Fixture) {
    let fx = fixture(FIXTURE);
    let traced = run_traced(&fx.program(&[]));
    traced
        .output
        .assert_code(7, "alloc_kinds under the preload");
    (traced, fx)
}

fn sum(entries: &[Entry]) -> (u64, u64) {
    entries
        .iter()
        .fold((0, 0), |(b, c), e| (b + e.bytes, c + e.count))
}

#[test]
fn leaks_are_exact_per_allocation_function() {
    let (traced, fx) = run();
    let leaks = traced.leaks();
    for site in LEAKED {
        assert_site(&leaks, fx, "leaks", site);
    }
    for function in FREED {
        assert_no_site(&leaks, "leaks", function);
    }
}

#[test]
fn leaks_are_exact_in_a_non_pie_executable() {
    // Symbolization must not assume a PIE executable (load bias 0 here).
    let fx = fixture_with(FIXTURE, &["-no-pie"]);
    let traced = run_traced(&fx.program(&[]));
    traced
        .output
        .assert_code(7, "alloc_kinds -no-pie under the preload");
    let leaks = traced.leaks();
    for site in LEAKED {
        assert_site(&leaks, fx, "leaks (-no-pie)", site);
    }
}

#[test]
fn leaks_are_sorted_largest_first() {
    let (traced, _) = run();
    let leaks = traced.leaks();
    assert!(
        leaks.windows(2).all(|w| w[0].bytes >= w[1].bytes),
        "leaks are not sorted by bytes, largest first:\n{}",
        render(&leaks)
    );
}

#[test]
fn top_by_bytes_and_by_count_are_exact_per_site() {
    let (traced, fx) = run();
    for by in ["bytes", "count"] {
        let top = traced.top(by);
        for site in ALLOCATED {
            assert_site(&top, fx, &format!("top --by {by}"), site);
        }
    }
}

#[test]
fn top_by_leaked_matches_leaks() {
    let (traced, fx) = run();
    let top = traced.top("leaked");
    for site in LEAKED {
        assert_site(&top, fx, "top --by leaked", site);
    }
    for function in FREED {
        let (bytes, _) = sum_at_innermost(&top, function);
        assert_eq!(
            bytes,
            0,
            "top --by leaked: {function} leaks nothing:\n{}",
            render(&top)
        );
    }
}

#[test]
fn top_by_temporary_counts_blocks_freed_right_after_allocation() {
    let (traced, fx) = run();
    let top = traced.top("temporary");
    // 5 malloc/free pairs, and 4 reallocs that each freed the block allocated just before.
    assert_site(
        &top,
        fx,
        "top --by temporary",
        Site::new("temp_malloc", 5 * 2002, 5),
    );
    assert_site(
        &top,
        fx,
        "top --by temporary",
        Site::new("grow_buffer", 100 + 200 + 400 + 800, 4),
    );
    // Freed later, after other allocations: never temporary.
    for function in ["freed_calloc", "peak_burst", "leak_malloc"] {
        assert_eq!(
            sum_at_innermost(&top, function),
            (0, 0),
            "top --by temporary: {function} has no temporary allocation:\n{}",
            render(&top)
        );
    }
}

#[test]
fn top_by_peak_shows_the_live_set_at_the_peak() {
    let (traced, fx) = run();
    let top = traced.top("peak");
    // The peak is right after the last peak_burst(): the burst, the 4 callocs freed after it,
    // and every leak so far are live; temp_malloc's blocks are not.
    assert_site(
        &top,
        fx,
        "top --by peak",
        Site::new("peak_burst", 20 * 50000, 20),
    );
    assert_site(
        &top,
        fx,
        "top --by peak",
        Site::new("freed_calloc", 4 * 3030, 4),
    );
    for site in LEAKED {
        assert_site(&top, fx, "top --by peak", site);
    }
    assert_eq!(
        sum_at_innermost(&top, "temp_malloc"),
        (0, 0),
        "top --by peak: temp_malloc holds nothing at the peak:\n{}",
        render(&top)
    );
}

#[test]
fn top_limits_and_orders_its_entries() {
    let (traced, _) = run();
    let top = memtrace_tests::entries(&traced.report("top", &["--by", "bytes", "-n", "3"]));
    assert_eq!(top.len(), 3, "top -n 3:\n{}", render(&top));
    assert!(
        top.windows(2).all(|w| w[0].bytes >= w[1].bytes),
        "top --by bytes is not sorted:\n{}",
        render(&top)
    );
    // The burst is by far the largest site.
    assert!(
        top[0].innermost().is_function("peak_burst"),
        "top --by bytes -n 3 should start with peak_burst:\n{}",
        render(&top)
    );
}

#[test]
fn summary_agrees_with_the_fixture_and_the_per_stack_reports() {
    let (traced, _) = run();
    let summary = traced.summary();
    summary.assert_consistent("alloc_kinds");
    let known_calls: u64 = ALLOCATED.iter().map(|s| s.count).sum();
    let known_bytes: u64 = ALLOCATED.iter().map(|s| s.bytes).sum();
    let known_leaked: u64 = LEAKED.iter().map(|s| s.bytes).sum();
    let known_leaks: u64 = LEAKED.iter().map(|s| s.count).sum();

    // What the fixture itself does is a lower bound: libc allocates a little on its own.
    assert!(summary.get("alloc_calls") >= known_calls, "{:#}", summary.0);
    assert!(
        summary.get("total_allocated_bytes") >= known_bytes,
        "{:#}",
        summary.0
    );
    assert!(
        summary.get("leaked_bytes") >= known_leaked,
        "{:#}",
        summary.0
    );
    assert!(
        summary.get("leaked_count") >= known_leaks,
        "{:#}",
        summary.0
    );
    assert!(summary.get("temporary_allocs") >= 9, "{:#}", summary.0);
    // 5 temp_malloc + 4 freed_calloc + 20 peak_burst frees (reallocs may count too).
    assert!(summary.get("free_calls") >= 29, "{:#}", summary.0);
    let peak_floor = 20 * 50000 + 4 * 3030 + known_leaked;
    let peak = summary.get("peak_live_bytes");
    assert!(
        (peak_floor..peak_floor + 64 * 1024).contains(&peak),
        "peak_live_bytes {peak}: expected the fixture's {peak_floor} plus at most 64 KiB from libc"
    );

    // And the totals are the sums of the per-stack reports, libc's stacks included.
    let (leaked_bytes, leaked_count) = sum(&traced.leaks());
    assert_eq!(
        (leaked_bytes, leaked_count),
        (summary.get("leaked_bytes"), summary.get("leaked_count")),
        "leaks entries vs summary"
    );
    let (bytes, calls) = sum(&traced.top("bytes"));
    assert_eq!(
        (bytes, calls),
        (
            summary.get("total_allocated_bytes"),
            summary.get("alloc_calls")
        ),
        "top --by bytes vs summary"
    );
    let (_, temporary) = sum(&traced.top("temporary"));
    assert_eq!(
        temporary,
        summary.get("temporary_allocs"),
        "top --by temporary vs summary"
    );
    let (peak_bytes, _) = sum(&traced.top("peak"));
    assert_eq!(peak_bytes, peak, "top --by peak vs summary peak_live_bytes");
}

#[test]
fn text_reports_name_the_sites() {
    let (traced, fx) = run();
    for report in ["summary", "top", "leaks"] {
        let out = memtrace_tests::analyze(&[report.as_ref(), traced.trace.as_os_str()]);
        out.assert_code(0, &format!("memtrace-analyze {report} (text)"));
        assert!(!out.stdout.trim().is_empty(), "{report} printed nothing");
    }
    let leaks = memtrace_tests::analyze(&["leaks".as_ref(), traced.trace.as_os_str()]);
    let line = fx.site_line("leak_malloc");
    assert!(
        leaks.stdout.contains("leak_malloc") && leaks.stdout.contains(&format!("{FIXTURE}:{line}")),
        "the text leaks report should name leak_malloc at {FIXTURE}:{line}:\n{}",
        leaks.stdout
    );
}

#[test]
fn dump_prints_every_record() {
    let (traced, _) = run();
    let out = memtrace_tests::analyze(&["dump".as_ref(), traced.trace.as_os_str()]);
    out.assert_code(0, "memtrace-analyze dump");
    let calls = traced.summary().get("alloc_calls");
    let lines = out.stdout.lines().count() as u64;
    assert!(
        lines >= calls,
        "dump printed {lines} lines for {calls} allocation calls"
    );
    for size in [
        "1001", "1020", "1600", "143", "1111", "1280", "1333", "1444", "1555",
    ] {
        assert!(
            out.stdout
                .split(|c: char| !c.is_ascii_alphanumeric())
                .any(|token| token == size),
            "dump shows no allocation of {size} bytes"
        );
    }
}
