//! Exact numbers from `summary`, `top` and `leaks` on traces built in memory (GIVEN a trace, WHEN the
//! report runs, THEN these numbers).

use crate::support::*;
use memtrace_analyzer::ExitCode;
use memtrace_format::{AllocKind, Record};
use serde_json::Value;

#[test]
fn summary_counts_every_kind_of_call() {
    // GIVEN
    let mut b = builder();
    alloc(&mut b, 1, 10, AllocKind::Malloc, 1, 100, 0x1000);
    alloc(&mut b, 1, 20, AllocKind::Calloc, 1, 50, 0x2000);
    alloc(&mut b, 1, 30, AllocKind::PosixMemalign, 2, 64, 0x3000);
    realloc(&mut b, 1, 40, 2, 200, 0x1000, 0x4000); // moves: frees 100, allocates 200
    realloc(&mut b, 1, 50, 2, 10, 0, 0x5000); // realloc(NULL, 10)
    b.free(1, 60, 0x2000);
    b.free(1, 70, 0x9999); // never allocated
    b.push(
        1,
        &Record::Mark {
            time: 75,
            label: "checkpoint".into(),
        },
    );
    end(&mut b, 1, 80);
    // WHEN
    let v = json_of(b, &["summary"]);
    // THEN
    assert_eq!(int(&v, "alloc_calls"), 5);
    assert_eq!(int(&v, "realloc_calls"), 2);
    assert_eq!(int(&v, "free_calls"), 2);
    assert_eq!(int(&v, "unmatched_frees"), 1);
    assert_eq!(int(&v, "unmatched_reallocs"), 0);
    assert_eq!(int(&v, "total_allocated_bytes"), 100 + 50 + 64 + 200 + 10);
    // Live: 100, 150, 214, then realloc: 214-100+200 = 314, then 324, then free 50 -> 274.
    assert_eq!(int(&v, "peak_live_bytes"), 324);
    assert_eq!(int(&v, "peak_live_count"), 4);
    assert_eq!(int(&v, "peak_time_ns"), 50);
    assert_eq!(int(&v, "leaked_bytes"), 274);
    assert_eq!(int(&v, "leaked_count"), 3);
    assert_eq!(int(&v, "duration_ns"), 80);
    assert_eq!(int(&v, "end_time_ns"), 80);
    assert_eq!(v["ended"], Value::Bool(true));
    assert_eq!(int(&v, "threads"), 1);
    assert_eq!(int(&v["calls_by_kind"], "malloc"), 1);
    assert_eq!(int(&v["calls_by_kind"], "calloc"), 1);
    assert_eq!(int(&v["calls_by_kind"], "posix_memalign"), 1);
    assert_eq!(int(&v["calls_by_kind"], "realloc"), 2);
    assert_eq!(v["marks"][0]["label"], "checkpoint");
    assert_eq!(int(&v["marks"][0], "time_ns"), 75);
}

#[test]
fn temporary_follows_heaptracks_definition_including_realloc() {
    // heaptrack records realloc(old) -> new as free(old) then malloc(new): the free part is temporary
    // when `old` is the most recent allocation, in place or not.
    let mut b = builder();
    b.malloc(1, 1, 1, 10, 0xa0); // A
    realloc(&mut b, 1, 2, 2, 20, 0xa0, 0xa0); // A in place: free(A) is temporary (1)
    realloc(&mut b, 1, 3, 3, 30, 0xa0, 0xb0); // A -> B: free(A) temporary again (2)
    b.malloc(1, 4, 4, 40, 0xc0); // C
    b.free(1, 5, 0xb0); // B: C came in between, not temporary
    b.free(1, 6, 0xc0); // C: the free of B closed the window, not temporary
    b.malloc(1, 7, 5, 50, 0xd0); // D
    b.free(1, 8, 0xeeee); // unknown address: ignored, window stays open
    b.free(1, 9, 0xd0); // D: temporary (3)
    b.malloc(1, 10, 6, 8, 0xe0); // E
    b.malloc(1, 11, 6, 8, 0xf0); // F, same size and stack as E
    b.free(1, 12, 0xe0); // E: heaptrack compares (size, stack) with the last allocation: temporary (4)
    b.free(1, 13, 0xf0); // F: window closed
    let v = json_of(b, &["summary"]);
    assert_eq!(int(&v, "temporary_allocs"), 4);
    // The literal definition (that very block) does not count E.
    assert_eq!(int(&v, "temporary_allocs_strict"), 3);
    assert_eq!(int(&v, "leaked_count"), 0);

    let mut b = builder();
    b.malloc(1, 1, 1, 10, 0xa0);
    realloc(&mut b, 1, 2, 2, 20, 0xa0, 0xa0);
    realloc(&mut b, 1, 3, 3, 30, 0xa0, 0xb0);
    b.free(1, 4, 0xb0);
    b.malloc(1, 5, 1, 10, 0xa0);
    b.free(1, 6, 0xa0);
    let v = json_of(b, &["top", "--by", "temporary"]);
    // Stack 1's blocks were freed temporary twice (10 + 10 bytes), stacks 2 and 3 once each.
    let e = v["entries"].as_array().unwrap();
    let got: Vec<(u64, u64, u64)> = e
        .iter()
        .map(|x| (int(x, "stack_id"), int(x, "count"), int(x, "bytes")))
        .collect();
    assert_eq!(got, vec![(1, 2, 20), (3, 1, 30), (2, 1, 20)]);
    assert_eq!(int(&v, "total_count"), 4);
}

#[test]
fn temporary_is_judged_per_thread() {
    // Two threads each allocate and free at once, interleaved in time: each free is temporary for
    // its own thread, whatever the other thread did in between.
    let mut b = builder();
    b.malloc(1, 1, 1, 10, 0xa0); // thread 1: A
    b.malloc(2, 2, 2, 20, 0xb0); // thread 2: B
    b.free(1, 3, 0xa0); // thread 1 frees A: its last allocation (1)
    b.free(2, 4, 0xb0); // thread 2 frees B: its last allocation (2)
    b.malloc(1, 5, 1, 10, 0xc0); // thread 1: C
    b.free(2, 6, 0xc0); // thread 2 frees C: not its own last allocation
    let v = json_of(b, &["summary"]);
    assert_eq!(int(&v, "temporary_allocs"), 2);
    assert_eq!(int(&v, "temporary_allocs_strict"), 2);
}

#[test]
fn realloc_chain_is_one_leaked_block_on_its_last_stack() {
    let mut b = builder();
    b.malloc(1, 1, 1, 10, 0x100);
    realloc(&mut b, 1, 2, 2, 20, 0x100, 0x200);
    realloc(&mut b, 1, 3, 3, 30, 0x200, 0x200);
    b.malloc(1, 4, 4, 7, 0x300);
    b.malloc(1, 5, 4, 7, 0x310);
    b.push(
        1,
        &Record::Free {
            time: 6,
            addr: 0x999,
        },
    );
    let v = json_of(b, &["leaks"]);
    assert_eq!(int(&v, "leaked_bytes"), 44);
    assert_eq!(int(&v, "leaked_count"), 3);
    assert_eq!(int(&v, "stacks"), 2);
    let e = v["entries"].as_array().unwrap();
    assert_eq!(e.len(), 2);
    assert_eq!(
        (
            int(&e[0], "stack_id"),
            int(&e[0], "bytes"),
            int(&e[0], "count")
        ),
        (3, 30, 1)
    );
    assert_eq!(
        (
            int(&e[1], "stack_id"),
            int(&e[1], "bytes"),
            int(&e[1], "count")
        ),
        (4, 14, 2)
    );
    assert_eq!(v["ended"], Value::Bool(false));
}

#[test]
fn realloc_to_zero_is_a_free_and_realloc_of_unknown_is_an_allocation() {
    let mut b = builder();
    b.malloc(1, 1, 1, 10, 0x100);
    b.free(1, 2, 0x100); // what realloc(p, 0) is recorded as
    realloc(&mut b, 1, 3, 2, 20, 0x5000, 0x6000); // old never seen
    let v = json_of(b, &["summary"]);
    assert_eq!(int(&v, "unmatched_reallocs"), 1);
    assert_eq!(int(&v, "leaked_bytes"), 20);
    assert_eq!(int(&v, "alloc_calls"), 2);
}

#[test]
fn a_realloc_recorded_after_another_thread_reused_its_old_address() {
    // glibc frees the old block inside realloc; thread 2 gets that address and records its malloc
    // before thread 1 records the realloc (fixtures/realloc_race.c in the e2e tests).
    let mut b = builder();
    b.malloc(1, 1, 1, 40, 0x100); // race_small
    b.malloc(2, 2, 2, 40, 0x100); // race_keep, at the address realloc just released
    realloc(&mut b, 1, 3, 3, 4000, 0x100, 0x900); // race_grow, recorded late
    b.free(1, 4, 0x900);
    let v = json_of(b, &["leaks"]);
    let e = v["entries"].as_array().unwrap();
    assert_eq!(e.len(), 1, "{v:#}");
    assert_eq!((int(&e[0], "stack_id"), int(&e[0], "bytes")), (2, 40));
    let mut b = builder();
    b.malloc(1, 1, 1, 40, 0x100);
    b.malloc(2, 2, 2, 40, 0x100);
    realloc(&mut b, 1, 3, 3, 4000, 0x100, 0x900);
    let v = json_of(b, &["summary"]);
    assert_eq!(int(&v, "reordered_reallocs"), 1);
    assert_eq!(int(&v, "missed_frees"), 0);
    assert_eq!(int(&v, "unmatched_reallocs"), 0);
}

#[test]
fn a_block_freed_by_another_thread_and_reused_is_ordered_by_time() {
    // Thread 1 allocates p, thread 2 frees it, thread 1 gets p again. Each thread's records sit in
    // its own chunks; only the merge by time puts the free between the two allocations.
    let mut b = builder();
    b.malloc(1, 10, 1, 100, 0x7000);
    b.malloc(1, 30, 1, 5, 0x7000);
    b.free(2, 20, 0x7000);
    b.free(2, 40, 0x8000); // unmatched
    let v = json_of(b, &["summary"]);
    assert_eq!(int(&v, "unmatched_frees"), 1);
    assert_eq!(int(&v, "missed_frees"), 0);
    assert_eq!(int(&v, "leaked_bytes"), 5);
    assert_eq!(int(&v, "leaked_count"), 1);
    assert_eq!(int(&v, "threads"), 2);
    assert_eq!(int(&v, "peak_live_bytes"), 100);
}

#[test]
fn an_address_allocated_twice_without_a_free_counts_a_missed_free() {
    let mut b = builder();
    b.malloc(1, 1, 1, 100, 0x7000);
    b.malloc(1, 2, 2, 30, 0x7000);
    let v = json_of(b, &["summary"]);
    assert_eq!(int(&v, "missed_frees"), 1);
    assert_eq!(int(&v, "leaked_bytes"), 30);
    assert_eq!(int(&v, "leaked_count"), 1);
    assert_eq!(int(&v, "peak_live_bytes"), 100);
}

/// Peak shares of `top --by peak`: (stack, bytes, count) in rank order.
fn peak_shares(b: memtrace_format::builder::TraceBuilder) -> (u64, u64, Vec<(u64, u64, u64)>) {
    let v = json_of(b, &["top", "--by", "peak", "-n", "0"]);
    let shares = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (int(e, "stack_id"), int(e, "bytes"), int(e, "count")))
        .collect();
    (int(&v, "peak_live_bytes"), int(&v, "total_bytes"), shares)
}

/// Interleaved stacks with successive peaks, cut after step `upto`: (thread, time, stack, size,
/// addr), size 0 meaning a free of addr.
fn peaks_trace(upto: usize) -> memtrace_format::builder::TraceBuilder {
    let steps: [(u32, u64, u32, u64, u64); 10] = [
        (1, 1, 1, 100, 0xa),   // live 100, peak
        (2, 2, 2, 200, 0xb),   // 300, peak
        (1, 3, 0, 0, 0xa),     // 200
        (1, 4, 3, 150, 0xc),   // 350, peak: s2 200, s3 150
        (2, 5, 1, 300, 0xd),   // 650, peak: s1 300, s2 200, s3 150
        (1, 6, 0, 0, 0xb),     // 450
        (2, 7, 3, 100, 0xe),   // 550
        (1, 8, 2, 50, 0xf),    // 600
        (2, 9, 0, 0, 0xd),     // 300
        (1, 10, 3, 400, 0x10), // 700, peak: s2 50, s3 650
    ];
    let mut b = builder();
    for &(thread, time, stack, size, addr) in &steps[..upto] {
        if size == 0 {
            b.free(thread, time, addr);
        } else {
            b.malloc(thread, time, stack, size, addr);
        }
    }
    b
}

#[test]
fn peak_shares_are_captured_lazily_at_the_latest_peak() {
    let (peak, total, shares) = peak_shares(peaks_trace(9));
    assert_eq!((peak, total), (650, 650));
    assert_eq!(shares, vec![(1, 300, 1), (2, 200, 1), (3, 150, 1)]);

    let (peak, total, shares) = peak_shares(peaks_trace(10));
    assert_eq!((peak, total), (700, 700));
    assert_eq!(shares, vec![(3, 650, 3), (2, 50, 1)]);

    let (peak, total, shares) = peak_shares(peaks_trace(4));
    assert_eq!((peak, total), (350, 350));
    assert_eq!(shares, vec![(2, 200, 1), (3, 150, 1)]);
}

#[test]
fn top_ranks_by_each_measure_with_fixed_tie_breaks() {
    let mut b = builder();
    // Stacks 5 and 6 allocate the same bytes in the same calls: the lower id ranks first.
    b.malloc(1, 1, 6, 64, 0x100);
    b.malloc(1, 2, 5, 64, 0x200);
    // Stack 7: the most calls and the fewest bytes, each freed at once (temporary).
    for i in 0..5u64 {
        b.malloc(1, 3 + i * 2, 7, 1, 0x1000 + i * 16);
        b.free(1, 4 + i * 2, 0x1000 + i * 16);
    }
    // Stack 8: one big allocation, freed at once.
    b.malloc(1, 20, 8, 1000, 0x9000);
    b.free(1, 21, 0x9000);
    let f = TraceFile::new(&b.finish());
    let order = |by: &str| -> Vec<u64> {
        let v = analyze(&["top", f.arg(), "--by", by, "--format", "json"])
            .assert_code(ExitCode::Success)
            .json();
        assert_eq!(v["measure"], by);
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| int(e, "stack_id"))
            .collect()
    };
    assert_eq!(order("bytes"), vec![8, 5, 6, 7]);
    // Equal counts: more bytes first, then the lower id.
    assert_eq!(order("count"), vec![7, 8, 5, 6]);
    assert_eq!(order("leaked"), vec![5, 6]);
    assert_eq!(order("peak"), vec![8, 5, 6]);
    assert_eq!(order("temporary"), vec![7, 8]);
}

#[test]
fn stacks_defined_after_their_use_resolve_at_report_time() {
    let mut b = builder();
    b.malloc(1, 1, 3, 100, 0x100);
    // Thread 2 interned stack 3 a moment earlier, but its record comes later in the merged order.
    b.malloc(2, 2, 9, 1, 0x200);
    b.stack(2, 3, &[frame(0, 0x4444), frame(0, 0x5555)]);
    let v = json_of(b, &["leaks"]);
    let e = &v["entries"][0];
    assert_eq!(int(e, "stack_id"), 3);
    let stack = e["stack"].as_array().unwrap();
    assert_eq!(stack.len(), 2);
    assert_eq!(stack[0]["address"], "0x4444");
    assert_eq!(stack[1]["address"], "0x5555");
    assert_eq!(stack[0]["module"], Value::Null);
    // Stack 9 was never defined.
    let e = &v["entries"][1];
    assert_eq!(int(e, "stack_id"), 9);
    assert_eq!(e["stack"].as_array().unwrap().len(), 0);
    assert_eq!(e["stack_note"], "stack not defined in the trace");
}

#[test]
fn fail_on_leak_is_a_check() {
    let mut b = builder();
    b.malloc(1, 1, 1, 100, 0x100);
    let f = TraceFile::new(&b.finish());
    let out = analyze(&["leaks", f.arg(), "--fail-on-leak"]).assert_code(ExitCode::CheckFailed);
    assert!(
        out.stdout.contains("100 B leaked in 1 block"),
        "{}",
        out.stdout
    );
    analyze(&["leaks", f.arg()]).assert_code(ExitCode::Success);

    let mut b = builder();
    b.malloc(1, 1, 1, 100, 0x100);
    b.free(1, 2, 0x100);
    let f = TraceFile::new(&b.finish());
    let out = analyze(&["leaks", f.arg(), "--fail-on-leak"]).assert_code(ExitCode::Success);
    assert!(out.stdout.starts_with("No leaks"), "{}", out.stdout);
}

#[test]
fn truncated_trace_warns_and_reports_what_it_has() {
    let mut b = builder();
    for i in 0..3000u64 {
        b.malloc(1, i, 1, 10, 0x10000 + i * 16);
    }
    let bytes = b.finish();
    let f = TraceFile::new(&bytes[..bytes.len() - 3000]);
    let out = analyze(&["summary", f.arg(), "--format", "json"]).assert_code(ExitCode::Success);
    let v = out.json();
    let n = int(&v, "alloc_calls");
    assert!(n > 0 && n < 3000, "{n}");
    assert_eq!(int(&v, "leaked_bytes"), n * 10);
    assert!(
        out.stderr.lines().all(|l| l.starts_with("warning: ")),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("truncated"), "{}", out.stderr);
    assert!(out.stderr.contains("no end record"), "{}", out.stderr);
    let warnings = v["warnings"].as_array().unwrap();
    assert!(!warnings.is_empty());
}

#[test]
fn text_reports_read_well() {
    let mut b = builder();
    b.module(
        1,
        module(1, std::path::Path::new("/nonexistent/prog"), vec![]),
    );
    b.stack(1, 1, &[frame(1, 0x1234), frame(0, 0x7fff0000)]);
    b.malloc(1, 1_000, 1, 3 << 20, 0x100);
    b.malloc(1, 2_000, 0, 1000, 0x200);
    b.free(1, 3_000, 0x200);
    end(&mut b, 1, 1_500_000_000);
    let f = TraceFile::new(&b.finish());

    let out = analyze(&["summary", f.arg()]).assert_code(ExitCode::Success);
    let expected = format!(
        "\
trace             {}
process           pid 1: /test
duration          1.500 s (ended normally)
threads           1
allocation calls  2 (malloc 2)
free calls        1
allocated         3.0 MiB (3,146,728 bytes)
peak live         3.0 MiB (3,146,728 bytes) in 2 blocks at 2.0 µs
leaked            3.0 MiB (3,145,728 bytes) in 1 block
temporary         1 allocation (50.0% of calls)
stacks, modules   1, 1
",
        f.arg()
    );
    assert_eq!(out.stdout, expected);

    let out = analyze(&["top", f.arg()]).assert_code(ExitCode::Success);
    let expected = "\
Top 2 of 2 stacks by allocated bytes; all stacks allocated 3.0 MiB in 2 calls

#  allocated  calls     peak   leaked  temporary
1    3.0 MiB      1  3.0 MiB  3.0 MiB          0
   0x1234 (prog+0x1234)
   0x7fff0000 (unknown module)
2     1000 B      1   1000 B      0 B          1
   (no stack captured)
";
    assert_eq!(out.stdout, expected);
    // The missing module file is a warning, not an error.
    assert!(
        out.stderr
            .contains("warning: cannot read module /nonexistent/prog"),
        "{}",
        out.stderr
    );

    let out = analyze(&["leaks", f.arg(), "--no-symbols"]).assert_code(ExitCode::Success);
    let expected = "\
3.0 MiB leaked in 1 block from 1 stack (showing 1)

#   leaked  blocks  allocated  calls
1  3.0 MiB       1    3.0 MiB      1
   0x1234 (prog+0x1234)
   0x7fff0000 (unknown module)
";
    assert_eq!(out.stdout, expected);
    assert_eq!(out.stderr, "");
}

#[test]
fn depth_limits_printed_frames() {
    let mut b = builder();
    let frames: Vec<_> = (0..20).map(|i| frame(0, 0x1000 + i)).collect();
    b.stack(1, 1, &frames);
    b.malloc(1, 1, 1, 8, 0x100);
    let f = TraceFile::new(&b.finish());
    let out = analyze(&["leaks", f.arg()]).assert_code(ExitCode::Success);
    assert!(out.stdout.contains("… 8 more frames"), "{}", out.stdout);
    let v = analyze(&["leaks", f.arg(), "--format", "json"]).json();
    assert_eq!(v["entries"][0]["stack"].as_array().unwrap().len(), 20);
    let v = analyze(&["leaks", f.arg(), "--format", "json", "--depth", "3"]).json();
    assert_eq!(v["entries"][0]["stack"].as_array().unwrap().len(), 3);
    assert_eq!(int(&v["entries"][0], "frames_omitted"), 17);
}

#[test]
fn leaks_lists_ten_stacks_in_text_and_all_in_json() {
    let mut b = builder();
    for i in 0..15u64 {
        b.malloc(1, i, i as u32 + 1, 100 + i, 0x1000 + i * 0x100);
    }
    let f = TraceFile::new(&b.finish());
    let out = analyze(&["leaks", f.arg(), "--no-symbols"]).assert_code(ExitCode::Success);
    assert!(
        out.stdout.contains("from 15 stacks (showing 10)"),
        "{}",
        out.stdout
    );
    let v = analyze(&["leaks", f.arg(), "--format", "json"]).json();
    assert_eq!(v["entries"].as_array().unwrap().len(), 15);
    let v = analyze(&["leaks", f.arg(), "--format", "json", "-n", "2"]).json();
    assert_eq!(v["entries"].as_array().unwrap().len(), 2);
    // Largest first.
    assert_eq!(int(&v["entries"][0], "bytes"), 114);
}
