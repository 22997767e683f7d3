//! Points (`TRACE@LABEL`, times, `@peak`, `@end`), `snapshot`, `diff` matching and `growth` on traces
//! built in memory (GIVEN a trace, WHEN the report runs, THEN these numbers).

use crate::support::*;
use memtrace_analyzer::ExitCode;
use memtrace_format::Record;
use memtrace_format::builder::TraceBuilder;
use serde_json::Value;
use std::path::Path;

fn mark(b: &mut TraceBuilder, thread: u32, time: u64, label: &str) {
    b.push(
        thread,
        &Record::Mark {
            time,
            label: label.into(),
        },
    );
}

/// `(bytes, count)` per stack id of a `snapshot` report.
fn by_stack(v: &Value) -> Vec<(u64, u64, u64)> {
    let mut out: Vec<(u64, u64, u64)> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (int(e, "stack_id"), int(e, "bytes"), int(e, "count")))
        .collect();
    out.sort();
    out
}

fn run_json(args: &[&str]) -> Value {
    let mut argv = args.to_vec();
    argv.extend_from_slice(&["--format", "json"]);
    analyze(&argv).assert_code(ExitCode::Success).json()
}

/// Two threads; marks "a" (thread 1, at 5, right after its allocation at 5 and before its next
/// one, also at 5) and "b" (at 30); a peak of 700 at 20.
fn two_marks() -> TraceFile {
    let mut b = builder();
    b.malloc(1, 5, 1, 100, 0x100);
    mark(&mut b, 1, 5, "a");
    b.malloc(1, 5, 2, 200, 0x200);
    b.malloc(2, 10, 3, 400, 0x300);
    b.free(2, 25, 0x300);
    b.malloc(2, 26, 3, 40, 0x400);
    mark(&mut b, 1, 30, "b");
    b.free(1, 40, 0x100);
    end(&mut b, 1, 50);
    TraceFile::new(&b.finish())
}

#[test]
fn a_mark_is_its_position_in_the_merged_order() {
    let f = two_marks();
    let at = |p: &str| by_stack(&run_json(&["snapshot", &format!("{}@{p}", f.arg())]));
    // The allocation before the mark in the same thread and time is in; the one after is not.
    assert_eq!(at("a"), vec![(1, 100, 1)]);
    assert_eq!(at("b"), vec![(1, 100, 1), (2, 200, 1), (3, 40, 1)]);
    assert_eq!(at("peak"), vec![(1, 100, 1), (2, 200, 1), (3, 400, 1)]);
    assert_eq!(at("end"), vec![(2, 200, 1), (3, 40, 1)]);
    assert_eq!(by_stack(&run_json(&["snapshot", f.arg()])), at("end"));
    // A time includes every heap event at or before it.
    assert_eq!(at("25ns"), vec![(1, 100, 1), (2, 200, 1)]);
    assert_eq!(at("24ns"), at("peak"));
    assert_eq!(at("0ns"), vec![]);
    assert_eq!(at("50ns"), at("end"));
    let v = run_json(&["snapshot", &format!("{}@peak", f.arg())]);
    assert_eq!((int(&v, "time_ns"), int(&v, "live_bytes")), (10, 700));
    assert_eq!(v["point"], "peak");
}

#[test]
fn points_the_trace_does_not_have_are_errors_listing_its_marks() {
    let f = two_marks();
    for (p, needle) in [
        ("c", "has no mark \"c\"; its marks are: \"a\", \"b\""),
        ("a#2", "has 1 mark named \"a\", not 2"),
        (
            "51ns",
            "is after the end of the trace (50 ns); its marks are: \"a\", \"b\"",
        ),
        ("label:peak", "has no mark \"peak\""),
        ("12", "not a time"),
    ] {
        let out = analyze(&["snapshot", &format!("{}@{p}", f.arg())]);
        let out = out.assert_code(ExitCode::Error);
        assert_eq!(out.stdout, "");
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
        assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
        assert!(out.stderr.contains(needle), "@{p}: {}", out.stderr);
    }
    // A missing trace with a point names the file, not the point.
    let out = analyze(&["snapshot", "/nonexistent/x.trace@a"]).assert_code(ExitCode::Error);
    assert!(
        out.stderr.contains("/nonexistent/x.trace"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("x.trace@a"), "{}", out.stderr);
    // A label that looks like a keyword is reachable with label:.
    let mut b = builder();
    b.malloc(1, 1, 1, 8, 0x10);
    mark(&mut b, 1, 2, "peak");
    let g = TraceFile::new(&b.finish());
    let v = run_json(&["snapshot", &format!("{}@label:peak", g.arg())]);
    assert_eq!(int(&v, "live_bytes"), 8);
}

/// A trace whose module is at `dir/libfoo.so` (not on disk: frames stay unresolved), with stacks
/// `(id, offset, size, count)`, all live at the end.
fn run_in(dir: &str, stacks: &[(u32, u64, u64, u64)]) -> TraceFile {
    let mut b = builder();
    b.module(1, module(1, Path::new(&format!("{dir}/libfoo.so")), vec![]));
    let mut addr = 0x1000;
    for &(id, offset, size, count) in stacks {
        b.stack(1, id, &[frame(1, offset), frame(1, 0x5000)]);
        for _ in 0..count {
            b.malloc(1, addr, id, size, addr);
            addr += 0x100;
        }
    }
    end(&mut b, 1, addr);
    TraceFile::new(&b.finish())
}

fn diff_entries(v: &Value) -> Vec<(i64, i64, u64, u64)> {
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["bytes_delta"].as_i64().unwrap(),
                e["count_delta"].as_i64().unwrap(),
                int(e, "bytes_before"),
                int(e, "bytes_after"),
            )
        })
        .collect()
}

#[test]
fn diff_matches_by_module_name_not_path_or_address() {
    // GIVEN two runs from different build directories, different offsets, ids in another order.
    let a = run_in("/build1", &[(1, 0x10, 100, 2)]);
    let b = run_in("/build2", &[(7, 0x99, 100, 5)]);
    // WHEN
    let v = run_json(&["diff", a.arg(), b.arg()]);
    // THEN one entry: same module name, unknown functions in both.
    assert_eq!(diff_entries(&v), vec![(300, 3, 200, 500)]);
    assert_eq!(int(&v["before"], "live_bytes"), 200);
    assert_eq!(v["before"]["point"], "end");
    let e = &v["entries"][0];
    assert_eq!((int(e, "stacks_before"), int(e, "stacks_after")), (1, 1));
    // The stack shown is the after side's.
    assert_eq!(e["stack"][0]["module"], "/build2/libfoo.so");
    assert_eq!(e["stack"][0]["offset"], "0x99");
}

#[test]
fn a_stack_on_one_side_only_has_zeros_on_the_other() {
    let a = run_in("/x", &[(1, 0x10, 100, 2)]);
    let mut b = builder();
    b.module(1, module(1, Path::new("/x/libbar.so"), vec![]));
    b.stack(1, 1, &[frame(1, 0x10)]);
    b.malloc(1, 1, 1, 64, 0x100);
    // An allocation with no stack captured.
    b.malloc(1, 2, 0, 8, 0x200);
    end(&mut b, 1, 3);
    let b = TraceFile::new(&b.finish());
    let v = run_json(&["diff", a.arg(), b.arg()]);
    assert_eq!(
        diff_entries(&v),
        vec![(-200, -2, 200, 0), (64, 1, 0, 64), (8, 1, 0, 8)]
    );
    assert_eq!(v["entries"][2]["stack_note"], "no stack captured");
    assert_eq!(v["bytes_delta"], -128);
    // Text: the total line ends the output.
    let out = analyze(&["diff", a.arg(), b.arg()]).assert_code(ExitCode::Success);
    let last = out.stdout.lines().last().unwrap();
    assert!(last.starts_with("total"), "{}", out.stdout);
    assert!(last.contains("-128 B"), "{last}");
}

#[test]
fn group_by_function_merges_the_stacks_of_one_innermost_function() {
    // Two stacks through the same innermost (unknown) function of libfoo.so, differing outside.
    let mut b = builder();
    b.module(1, module(1, Path::new("/x/libfoo.so"), vec![]));
    b.module(1, module(2, Path::new("/x/app"), vec![]));
    b.stack(1, 1, &[frame(1, 0x10), frame(2, 0x20)]);
    b.stack(1, 2, &[frame(1, 0x10), frame(1, 0x30)]);
    b.malloc(1, 1, 1, 10, 0x100);
    mark(&mut b, 1, 2, "m");
    b.malloc(1, 3, 2, 20, 0x200);
    end(&mut b, 1, 4);
    let f = TraceFile::new(&b.finish());
    let (m, e) = (format!("{}@m", f.arg()), format!("{}@end", f.arg()));
    let v = run_json(&["diff", &m, &e]);
    assert_eq!(diff_entries(&v), vec![(20, 1, 0, 20), (0, 0, 10, 10)]);
    let v = run_json(&["diff", &m, &e, "--group-by", "function"]);
    assert_eq!(diff_entries(&v), vec![(20, 1, 10, 30)]);
    let entry = &v["entries"][0];
    assert_eq!(
        (int(entry, "stacks_before"), int(entry, "stacks_after")),
        (1, 2)
    );
    assert_eq!(
        entry["stack"].as_array().unwrap().len(),
        1,
        "the key's frame only"
    );
    assert_eq!(v["group_by"], "function");
    // The gate is on the whole heap's growth.
    analyze(&["diff", &m, &e, "--fail-on-growth", "19"]).assert_code(ExitCode::CheckFailed);
    analyze(&["diff", &m, &e, "--fail-on-growth", "20"]).assert_code(ExitCode::Success);
}

#[test]
fn growth_points_split_the_run_evenly_and_rank_steady_growth_first() {
    // GIVEN stack 1 growing by 10 bytes every 100 ns, stack 2 a 500-byte cache filled once at
    // 450 ns (7 times stack 1's growth over the run), stack 3 churning, stack 4 freed and re-allocated at a constant size.
    let mut b = builder();
    let mut churn: Option<u64> = None;
    for i in 0..10u64 {
        let t = i * 100 + 50;
        b.malloc(1, t, 1, 10, 0x1000 + i * 0x10);
        if let Some(addr) = churn.take() {
            b.free(1, t, addr);
        }
        let addr = 0x9000 + i * 0x10;
        b.malloc(
            1,
            t,
            3,
            [900, 100, 700, 300, 800, 200, 600, 400, 500, 650][i as usize],
            addr,
        );
        churn = Some(addr);
        b.malloc(1, t, 4, 64, 0x20000 + i * 0x10);
        b.free(1, t, 0x20000 + i * 0x10);
        if i == 4 {
            b.malloc(1, t, 2, 500, 0x50000);
        }
    }
    end(&mut b, 1, 1000);
    let f = TraceFile::new(&b.finish());
    let v = run_json(&["growth", f.arg(), "--points", "4"]);
    let times: Vec<u64> = v["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| int(p, "time_ns"))
        .collect();
    assert_eq!(times, [250, 500, 750, 1000]);
    let e = &v["entries"][0];
    assert_eq!(int(e, "stack_id"), 1);
    assert_eq!((int(e, "bytes"), int(e, "count")), (100, 10));
    assert_eq!(e["growth_bytes"], 70);
    assert_eq!(e["series_bytes"], serde_json::json!([30, 50, 80, 100]));
    assert_eq!(e["steadiness"], 1.0);
    assert_eq!(e["rose"], 1.0);
    let ranked: Vec<u64> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| int(e, "stack_id"))
        .collect();
    assert!(
        !ranked.contains(&4),
        "a constant size is no growth: {ranked:?}"
    );
    assert_eq!(ranked[0], 1, "{v:#}");

    assert_eq!(ranked, [1, 2], "churn (stack 3) fell overall: {v:#}");

    // --fail-above: the largest growth among ranked stacks (stack 2's 500 bytes).
    let out = analyze(&["growth", f.arg(), "--points", "4", "--fail-above", "499"]);
    out.assert_code(ExitCode::CheckFailed);
    analyze(&["growth", f.arg(), "--points", "4", "--fail-above", "500"])
        .assert_code(ExitCode::Success);
    for bad in [
        ["--points", "1"],
        ["--points", "1001"],
        ["--fail-above", "x"],
    ] {
        let out = analyze(&["growth", f.arg(), bad[0], bad[1]]).assert_code(ExitCode::Error);
        assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
    }
}
