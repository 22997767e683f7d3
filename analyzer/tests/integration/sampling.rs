//! Sampled traces (`MEMTRACE_SAMPLE_BYTES`): every report weights each recorded allocation of `s`
//! bytes by `1/p(s)`, `p(s) = 1 - exp(-s/N)`, and says its numbers are estimates; the same records
//! without a sampling mean give the plain numbers.
//!
//! The trace (N = 4096): thread 1 mallocs 4096 bytes at A and B (stack 1), 64 at C (stack 2), frees
//! B, frees an unknown block, reallocs an unknown block to 1 MiB at D (stack 3), callocs 64 at E
//! (stack 2) and frees it (a temporary), then allocates 1000 blocks of 100..1099 bytes (stack 4) and
//! frees them all. Weights, as `1/p(s)` calls and `s/p(s)` bytes:
//!
//! | size | calls | bytes |
//! |---|---|---|
//! | 4096 | 1.58197 | 6479.777 |
//! | 64 | 64.50130 | 4128.082 |
//! | 1 MiB | 1 | 1,048,576 |
//! | 100..1099 (1000 blocks) | 10352.62 in all | 4,404,750.99 in all |
//!
//! so 10,485.79 calls (malloc 10,419.70, calloc 64.50, realloc 1) and 5,474,542.7 bytes were
//! allocated; the peak is right after the last block of stack 4 (event 1008): 5,463,934.85 bytes in
//! 10,419.70 blocks; A, C and D leak: 1,059,183.86 bytes in 67.08 blocks. Every number is that sum
//! rounded to the nearest whole (computed independently with Python's `math.expm1`).

use crate::support::*;
use memtrace_analyzer::ExitCode;
use memtrace_format::AllocKind;
use memtrace_format::builder::TraceBuilder;
use serde_json::Value;

const A: u64 = 0xa0;
const B: u64 = 0xb0;
const C: u64 = 0xc0;
const D: u64 = 0xd0;
const E: u64 = 0xe0;

fn trace(sample_bytes: Option<u64>) -> TraceBuilder {
    let mut header = TraceBuilder::test_header();
    header.sample_bytes = sample_bytes;
    let mut b = TraceBuilder::new(&header);
    b.malloc(1, 1, 1, 4096, A);
    b.malloc(1, 2, 1, 4096, B);
    b.malloc(1, 3, 2, 64, C);
    b.free(1, 4, B);
    b.free(1, 5, 0xdead);
    realloc(&mut b, 1, 6, 3, 1 << 20, 0xbeef, D);
    alloc(&mut b, 1, 7, AllocKind::Calloc, 2, 64, E);
    b.free(1, 8, E);
    let mut t = 8;
    for i in 0..1000 {
        t += 1;
        b.malloc(1, t, 4, 100 + i, 0x10_0000 + i * 0x1000);
    }
    for i in 0..1000 {
        t += 1;
        b.free(1, t, 0x10_0000 + i * 0x1000);
    }
    end(&mut b, 1, t + 1);
    b
}

fn sampled() -> TraceBuilder {
    trace(Some(4096))
}

/// Runs a text report on `b` and returns stdout (exit 0 asserted).
fn text_of(b: TraceBuilder, args: &[&str]) -> String {
    let f = TraceFile::new(&b.finish());
    let mut argv = vec![args[0], f.arg()];
    argv.extend_from_slice(&args[1..]);
    analyze(&argv).assert_code(ExitCode::Success).stdout
}

const LINE: &str = "estimates from a sampled trace (MEMTRACE_SAMPLE_BYTES=4096): each recorded \
                    allocation of s bytes counts 1/(1 - exp(-s/4096)) times";

fn entry(v: &Value, stack: u64) -> &Value {
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| int(e, "stack_id") == stack)
        .unwrap_or_else(|| panic!("no entry for stack {stack} in {v:#}"))
}

#[test]
fn summary_estimates_every_total() {
    let v = json_of(sampled(), &["summary"]);
    assert_eq!(int(&v, "alloc_calls"), 10_486);
    assert_eq!(int(&v["calls_by_kind"], "malloc"), 10_420);
    assert_eq!(int(&v["calls_by_kind"], "calloc"), 65);
    assert_eq!(int(&v["calls_by_kind"], "realloc"), 1);
    assert_eq!(int(&v, "realloc_calls"), 1);
    assert_eq!(int(&v, "total_allocated_bytes"), 5_474_543);
    assert_eq!(int(&v, "peak_live_bytes"), 5_463_935);
    assert_eq!(int(&v, "peak_live_count"), 10_420);
    assert_eq!(int(&v, "peak_time_ns"), 1008);
    assert_eq!(int(&v, "leaked_bytes"), 1_059_184);
    assert_eq!(int(&v, "leaked_count"), 67);
    // E's free is temporary (64.5013 calls); stack 4's blocks are freed after all 1000 were
    // allocated, so none of them is.
    assert_eq!(int(&v, "temporary_allocs"), 65);
    assert_eq!(int(&v, "temporary_allocs_strict"), 65);
    // Frees are all recorded and not weighted; frees of unrecorded blocks are normal.
    assert_eq!(int(&v, "free_calls"), 1003);
    assert_eq!(int(&v, "unmatched_frees"), 0);
    assert_eq!(int(&v, "unmatched_reallocs"), 0);
    assert_eq!(int(&v, "sample_bytes"), 4096);
    let s = &v["sampled"];
    assert_eq!(int(s, "sample_bytes"), 4096);
    assert_eq!(s["estimated"], true);
    assert_eq!(int(s, "recorded_alloc_calls"), 1005);
    assert_eq!(
        int(s, "recorded_allocated_bytes"),
        2 * 4096 + 2 * 64 + (1 << 20) + (100..1100).sum::<u64>()
    );
    assert_eq!(int(s, "unsampled_frees"), 1);
    assert_eq!(int(s, "unsampled_reallocs"), 1);
    assert!(v["warnings"].as_array().unwrap().is_empty(), "{v:#}");
}

#[test]
fn the_same_records_unsampled_count_as_recorded() {
    let v = json_of(trace(None), &["summary"]);
    assert_eq!(int(&v, "alloc_calls"), 1005);
    assert_eq!(int(&v, "peak_live_count"), 1003);
    assert_eq!(int(&v, "leaked_count"), 3);
    assert_eq!(int(&v, "leaked_bytes"), 4096 + 64 + (1 << 20));
    assert_eq!(int(&v, "unmatched_frees"), 1);
    assert_eq!(int(&v, "unmatched_reallocs"), 1);
    assert_eq!(v["sample_bytes"], Value::Null);
    assert!(v.get("sampled").is_none(), "{v:#}");
    for report in [&["top"][..], &["leaks"], &["snapshot"], &["growth"]] {
        let v = json_of(trace(None), report);
        assert!(v.get("sampled").is_none(), "{report:?}: {v:#}");
        assert!(
            !text_of(trace(None), report).contains("estimates"),
            "{report:?}"
        );
    }
    assert!(!text_of(trace(None), &["summary"]).contains("sampled"));
}

#[test]
fn top_weights_every_measure_per_stack() {
    let v = json_of(sampled(), &["top", "--by", "bytes"]);
    assert_eq!(v["sampled"]["sample_bytes"], 4096);
    assert_eq!(v["sampled"]["estimated"], true);
    // The entries' sum, each rounded on its own: 12,960 + 8,256 + 1,048,576 + 4,404,751.
    assert_eq!(int(&v, "total_bytes"), 5_474_543);
    assert_eq!(int(&v, "total_count"), 3 + 129 + 1 + 10_353);
    assert_eq!(int(&v, "peak_live_bytes"), 5_463_935);
    let e = entry(&v, 1);
    let measures = [
        "allocated_bytes",
        "allocated_count",
        "peak_bytes",
        "peak_count",
        "leaked_bytes",
        "leaked_count",
        "temporary_bytes",
        "temporary_count",
    ];
    let of = |e: &Value| measures.map(|m| int(e, m));
    assert_eq!(of(e), [12_960, 3, 6480, 2, 6480, 2, 0, 0]);
    assert_eq!(of(entry(&v, 2)), [8256, 129, 4128, 65, 4128, 65, 4128, 65]);
    assert_eq!(of(entry(&v, 3)), [1 << 20, 1, 1 << 20, 1, 1 << 20, 1, 0, 0]);
    assert_eq!(
        of(entry(&v, 4)),
        [4_404_751, 10_353, 4_404_751, 10_353, 0, 0, 0, 0]
    );
    // Ranked by the estimates: stack 4 allocated the most bytes.
    assert_eq!(int(&v["entries"][0], "stack_id"), 4);

    let v = json_of(sampled(), &["top", "--by", "count"]);
    let order: Vec<u64> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| int(e, "stack_id"))
        .collect();
    assert_eq!(order, [4, 2, 1, 3]);
}

#[test]
fn leaks_and_snapshots_are_estimates_and_freed_blocks_weigh_nothing() {
    let v = json_of(sampled(), &["leaks"]);
    assert_eq!(v["sampled"]["estimated"], true);
    assert_eq!(int(&v, "leaked_bytes"), 1_059_184);
    assert_eq!(int(&v, "leaked_count"), 67);
    // Stack 4's 1000 blocks of odd weights were all freed: exactly nothing is left of them.
    assert_eq!(int(&v, "stacks"), 3);
    let leaks: Vec<[u64; 3]> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| [int(e, "stack_id"), int(e, "bytes"), int(e, "count")])
        .collect();
    assert_eq!(leaks, [[3, 1 << 20, 1], [1, 6480, 2], [2, 4128, 65]]);

    let f = TraceFile::new(&sampled().finish());
    let at = |point: &str| {
        let arg = format!("{}@{point}", f.arg());
        analyze(&["snapshot", &arg, "--format", "json"])
            .assert_code(ExitCode::Success)
            .json()
    };
    // At the peak: the total is the rounded sum (10,419.70 blocks), its entries are each rounded
    // (2 + 65 + 1 + 10,353).
    let v = at("peak");
    assert_eq!(v["sampled"]["sample_bytes"], 4096);
    assert_eq!(int(&v, "time_ns"), 1008);
    assert_eq!(int(&v, "live_bytes"), 5_463_935);
    assert_eq!(int(&v, "live_count"), 10_420);
    assert_eq!(int(entry(&v, 4), "bytes"), 4_404_751);
    assert_eq!(int(entry(&v, 4), "count"), 10_353);
    // After event 3: A, B and C (6479.78 × 2 + 4128.08 bytes, 1.58 × 2 + 64.50 blocks).
    let v = at("3ns");
    assert_eq!(int(&v, "live_bytes"), 17_088);
    assert_eq!(int(&v, "live_count"), 68);
    assert_eq!(int(entry(&v, 1), "bytes"), 12_960);
    assert_eq!(int(entry(&v, 1), "count"), 3);
    // At the end, the leaks.
    let v = at("end");
    assert_eq!(int(&v, "live_bytes"), 1_059_184);
    assert_eq!(int(&v, "live_count"), 67);
}

#[test]
fn diff_and_growth_are_estimates() {
    let f = TraceFile::new(&sampled().finish());
    let (before, after) = (format!("{}@3ns", f.arg()), format!("{}@peak", f.arg()));
    let v = analyze(&["diff", &before, &after, "--format", "json"])
        .assert_code(ExitCode::Success)
        .json();
    assert_eq!(v["before"]["sampled"]["sample_bytes"], 4096);
    assert_eq!(v["after"]["sampled"]["estimated"], true);
    assert_eq!(int(&v, "bytes_before"), 17_088);
    assert_eq!(int(&v, "bytes_after"), 5_463_935);
    assert_eq!(int(&v, "bytes_delta"), 5_463_935 - 17_088);
    assert_eq!(int(&v, "count_after"), 10_420);

    let text = analyze(&["diff", &before, &after])
        .assert_code(ExitCode::Success)
        .stdout;
    assert_eq!(text.lines().next(), Some(LINE), "{text}");

    let v = json_of(sampled(), &["growth", "--points", "4"]);
    assert_eq!(v["sampled"]["sample_bytes"], 4096);
    let live: Vec<[u64; 3]> = v["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            [
                int(p, "time_ns"),
                int(p, "live_bytes"),
                int(p, "live_count"),
            ]
        })
        .collect();
    // A, C and D, with the first 494 blocks of stack 4, then the first 996, then the last 502 of
    // them, then none.
    assert_eq!(
        live,
        [
            [502, 3_169_604, 7633],
            [1004, 5_445_258, 10_403],
            [1506, 3_335_911, 2825],
            [2009, 1_059_184, 67]
        ]
    );
}

#[test]
fn text_reports_say_they_are_estimates() {
    let summary = text_of(sampled(), &["summary"]);
    assert!(
        summary.contains(&format!("sampled           {LINE}\n")),
        "{summary}"
    );
    assert!(
        summary.contains(
            "recorded          1,005 allocation calls (1.6 MiB); 1 free and 1 realloc of blocks \
             not recorded\n"
        ),
        "{summary}"
    );
    assert!(
        summary.contains("allocation calls  10,486 (malloc 10,420, calloc 65, realloc 1)\n"),
        "{summary}"
    );
    assert!(!summary.contains("unmatched"), "{summary}");
    for report in [&["top"][..], &["leaks"], &["snapshot"], &["growth"]] {
        let out = text_of(sampled(), report);
        assert_eq!(out.lines().next(), Some(LINE), "{report:?}: {out}");
    }
    let leaks = text_of(sampled(), &["leaks"]);
    assert!(
        leaks.contains("1.0 MiB leaked in 67 blocks from 3 stacks"),
        "{leaks}"
    );
}
