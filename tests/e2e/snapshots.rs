//! `fixtures/snapshots.c` (and `snapshots.py`): named points, `snapshot`, `diff` within a trace and
//! across runs, `growth`, the CI gates, and signal marks. The fixture's header comment lists the
//! exact numbers asserted here.

use memtrace_tests::{
    Fixture, Frame, Program, Site, Traced, analyze, analyze_json, assert_frame_at, assert_no_site,
    assert_site, entries, fixture, fixtures_dir, run_plain, run_traced, workspace_root,
};
use serde_json::Value;

const FIXTURE: &str = "snapshots.c";

/// One `diff` entry: (bytes, count) before and after, the deltas, and the innermost frame.
#[derive(Debug)]
struct Row {
    before: (u64, u64),
    after: (u64, u64),
    delta: (i64, i64),
    innermost: Frame,
}

fn rows(report: &Value) -> Vec<Row> {
    let int = |e: &Value, k: &str| {
        e[k].as_u64()
            .unwrap_or_else(|| panic!("{k} is not a non-negative integer in {e:#}"))
    };
    let signed = |e: &Value, k: &str| {
        e[k].as_i64()
            .unwrap_or_else(|| panic!("{k} is not an integer in {e:#}"))
    };
    let s = |f: &Value, k: &str| f[k].as_str().map(str::to_owned);
    report["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("no entries in {report:#}"))
        .iter()
        .map(|e| {
            let f = &e["stack"][0];
            let row = Row {
                before: (int(e, "bytes_before"), int(e, "count_before")),
                after: (int(e, "bytes_after"), int(e, "count_after")),
                delta: (signed(e, "bytes_delta"), signed(e, "count_delta")),
                innermost: Frame {
                    function: s(f, "function"),
                    file: s(f, "file"),
                    line: f["line"].as_u64(),
                    module: s(f, "module"),
                    address: s(f, "address").unwrap_or_default(),
                },
            };
            assert_eq!(
                row.delta,
                (
                    row.after.0 as i64 - row.before.0 as i64,
                    row.after.1 as i64 - row.before.1 as i64
                ),
                "deltas of {e:#}"
            );
            row
        })
        .collect()
}

/// The one row whose innermost frame is `site`'s function, at its marked line.
#[track_caller]
fn row<'r>(rows: &'r [Row], fx: &Fixture, site: &str) -> &'r Row {
    let found: Vec<&Row> = rows
        .iter()
        .filter(|r| r.innermost.is_function(site))
        .collect();
    assert_eq!(found.len(), 1, "one entry for {site} in {rows:#?}");
    assert_frame_at(&found[0].innermost, fx, site, site);
    found[0]
}

fn diff(a: &str, b: &str, extra: &[&str]) -> Value {
    let mut args = vec!["diff", a, b, "--format", "json"];
    args.extend_from_slice(extra);
    analyze_json(&args)
}

fn point(t: &Traced, point: &str) -> String {
    format!("{}@{point}", t.trace.display())
}

fn snapshot(t: &Traced, p: &str) -> Vec<memtrace_tests::Entry> {
    entries(&analyze_json(&[
        "snapshot",
        &point(t, p),
        "--format",
        "json",
    ]))
}

fn traced(args: &[&str]) -> Traced {
    let t = run_traced(&fixture(FIXTURE).program(args));
    t.output.assert_code(0, &format!("snapshots {args:?}"));
    t
}

#[test]
fn diff_across_runs_shows_the_leak_and_nothing_else() {
    let fx = fixture(FIXTURE);
    let (r3, r7) = (traced(&["leak", "3"]), traced(&["leak", "7"]));
    let (a, b) = (r3.trace.to_str().unwrap(), r7.trace.to_str().unwrap());
    let v = diff(a, b, &[]);
    let rs = rows(&v);
    let leak = row(&rs, fx, "leak_site");
    assert_eq!(
        (leak.before, leak.after, leak.delta),
        ((300, 3), (700, 7), (400, 4))
    );
    let stable = row(&rs, fx, "stable_site");
    assert_eq!(
        (stable.before, stable.after, stable.delta),
        ((320, 5), (320, 5), (0, 0))
    );
    // Allocated and freed in both runs: present, zero on both sides.
    let temp = row(&rs, fx, "temp_site");
    assert_eq!((temp.before, temp.after), ((0, 0), (0, 0)));
    for r in &rs {
        if !r.innermost.is_function("leak_site") {
            assert_eq!(r.delta, (0, 0), "only leak_site changed: {r:?}");
        }
    }
    assert_eq!(v["bytes_delta"], 400);
    assert_eq!(v["count_delta"], 4);
    assert_eq!(v["changed"], 1);
    assert_eq!(v["group_by"], "stack");

    // The other way round, and grouped by function or by line: the same site, the same change.
    let back = rows(&diff(b, a, &[]));
    assert_eq!(row(&back, fx, "leak_site").delta, (-400, -4));
    for by in ["function", "line"] {
        let rs = rows(&diff(a, b, &["--group-by", by]));
        assert_eq!(row(&rs, fx, "leak_site").delta, (400, 4), "--group-by {by}");
        assert_eq!(row(&rs, fx, "stable_site").delta, (0, 0), "--group-by {by}");
    }

    // Text: sorted by change, a total line last.
    let text = analyze(&["diff", a, b]);
    text.assert_code(0, "diff text");
    let last = text.stdout.lines().last().unwrap_or("");
    assert!(
        last.starts_with("total") && last.contains("+400 B") && last.contains("+4"),
        "{}",
        text.stdout
    );

    // The CI gate: strictly more than SIZE fails.
    for (size, code) in [("399", 1), ("400", 0), ("1K", 0), ("0.3K", 1), ("1MiB", 0)] {
        analyze(&["diff", a, b, "--fail-on-growth", size])
            .assert_code(code, &format!("--fail-on-growth {size}"));
    }
    analyze(&["diff", b, a, "--fail-on-growth", "0"]).assert_code(0, "a shrinking heap passes");
    let bad = analyze(&["diff", a, b, "--fail-on-growth", "lots"]);
    bad.assert_code(2, "a bad size");
    assert_eq!(bad.stderr.lines().count(), 1, "{}", bad.stderr);
    assert!(bad.stderr.starts_with("error: "), "{}", bad.stderr);
}

#[test]
fn diff_between_marks_is_what_was_allocated_between_and_still_live() {
    let fx = fixture(FIXTURE);
    let t = traced(&["marks"]);
    let v = diff(&point(&t, "before"), &point(&t, "after"), &[]);
    let rs = rows(&v);
    let kept = row(&rs, fx, "kept_site");
    assert_eq!((kept.before, kept.after), ((0, 0), (600, 3)));
    // Live before the first mark and still live: unchanged.
    assert_eq!(row(&rs, fx, "before_site").delta, (0, 0));
    assert_eq!(row(&rs, fx, "before_site").after, (1000, 1));
    // Allocated and freed between the marks: zero.
    let freed = row(&rs, fx, "freed_site");
    assert_eq!((freed.before, freed.after), ((0, 0), (0, 0)));
    // Live at the first mark, freed before the second.
    assert_eq!(row(&rs, fx, "early_freed").delta, (-2000, -1));
    // After the second mark: not part of the diff.
    assert!(!rs.iter().any(|r| r.innermost.is_function("late_site")));
    assert_eq!(v["bytes_delta"], 600 - 2000);
    assert_eq!(v["changed"], 2);
    assert_eq!(v["before"]["point"], "before");
    assert_eq!(v["after"]["point"], "after");

    // The second "after" mark (after#2) sees late_site too.
    let rs = rows(&diff(&point(&t, "after"), &point(&t, "after#2"), &[]));
    assert_eq!(row(&rs, fx, "late_site").delta, (50, 1));
    assert_eq!(row(&rs, fx, "kept_site").delta, (0, 0));
}

#[test]
fn snapshots_at_marks_times_peak_and_end() {
    let fx = fixture(FIXTURE);
    let t = traced(&["marks"]);
    let at_before = snapshot(&t, "before");
    assert_site(&at_before, fx, "@before", Site::new("before_site", 1000, 1));
    assert_site(&at_before, fx, "@before", Site::new("early_freed", 2000, 1));
    assert_no_site(&at_before, "@before", "kept_site");

    let at_after = snapshot(&t, "after");
    assert_site(&at_after, fx, "@after", Site::new("before_site", 1000, 1));
    assert_site(&at_after, fx, "@after", Site::new("kept_site", 600, 3));
    for gone in ["early_freed", "freed_site", "late_site"] {
        assert_no_site(&at_after, "@after", gone);
    }

    for p in ["after#2", "end"] {
        let s = snapshot(&t, p);
        assert_site(&s, fx, p, Site::new("kept_site", 600, 3));
        assert_site(&s, fx, p, Site::new("late_site", 50, 1));
    }
    // A bare trace is @end.
    let bare = entries(&analyze_json(&[
        "snapshot",
        t.trace.to_str().unwrap(),
        "--format",
        "json",
    ]));
    assert_site(&bare, fx, "bare", Site::new("late_site", 50, 1));

    // The peak is before "before": before_site and early_freed both live.
    let peak = snapshot(&t, "peak");
    assert_site(&peak, fx, "@peak", Site::new("early_freed", 2000, 1));
    assert_site(&peak, fx, "@peak", Site::new("before_site", 1000, 1));
    assert_no_site(&peak, "@peak", "kept_site");

    // 100 ms before "after": the 200 ms sleep, after kept_site and freed_site.
    let summary = t.summary();
    let marks = summary.0["marks"].as_array().expect("marks").clone();
    let labels: Vec<&str> = marks.iter().filter_map(|m| m["label"].as_str()).collect();
    assert_eq!(labels, ["before", "after", "after"]);
    let after_ns = marks[1]["time_ns"].as_u64().unwrap();
    let mid = format!("{}ns", after_ns - 100_000_000);
    let at_time = snapshot(&t, &mid);
    assert_site(&at_time, fx, &mid, Site::new("kept_site", 600, 3));
    assert_site(&at_time, fx, &mid, Site::new("before_site", 1000, 1));
    assert_no_site(&at_time, &mid, "early_freed");
    let json = analyze_json(&["snapshot", &point(&t, &mid), "--format", "json"]);
    assert_eq!(json["time_ns"], after_ns - 100_000_000);
}

#[test]
fn unknown_points_are_errors_that_list_the_marks() {
    let t = traced(&["marks"]);
    for (p, needle) in [
        ("nope", "no mark \"nope\""),
        ("after#3", "2 marks named \"after\", not 3"),
        ("1h", "not a time"),
        ("999s", "after the end of the trace"),
    ] {
        for cmd in ["snapshot", "diff"] {
            let mut args = vec![cmd.to_owned(), point(&t, p)];
            if cmd == "diff" {
                args.push(t.trace.to_str().unwrap().to_owned());
            }
            let out = analyze(&args);
            out.assert_code(2, &format!("{cmd} @{p}"));
            assert_eq!(out.stdout, "", "{cmd} @{p}");
            let lines: Vec<&str> = out.stderr.lines().collect();
            assert_eq!(lines.len(), 1, "{cmd} @{p}: {}", out.stderr);
            assert!(lines[0].starts_with("error: "), "{}", lines[0]);
            assert!(lines[0].contains(needle), "{cmd} @{p}: {}", lines[0]);
            if needle != "not a time" {
                assert!(
                    lines[0].contains("\"before\", \"after\" (x2)"),
                    "lists the marks: {}",
                    lines[0]
                );
            }
        }
    }
}

#[test]
fn growth_ranks_the_growing_cache_first() {
    let fx = fixture(FIXTURE);
    let t = traced(&["growth"]);
    let v = t.report("growth", &[]);
    let ranked = entries(&v);
    assert!(!ranked.is_empty(), "{v:#}");
    // The last point is the end: all 60 blocks.
    assert_site(
        &ranked[..1],
        fx,
        "growth #1",
        Site::new("cache_grow", 60_000, 60),
    );
    let first = &v["entries"][0];
    assert!(first["steadiness"].as_f64().unwrap() > 0.9, "{first:#}");
    assert!(first["slope_bytes_per_sec"].as_f64().unwrap() > 0.0);
    assert_eq!(first["series_bytes"].as_array().unwrap().len(), 10);
    assert_eq!(v["points"].as_array().unwrap().len(), 10);
    // The startup cache never changes after the first point: not a suspect.
    assert_no_site(&ranked, "growth", "startup_cache");
    assert_no_site(&ranked, "growth", "temp_site");

    let v = t.report("growth", &["--points", "25"]);
    assert_site(
        &entries(&v)[..1],
        fx,
        "growth --points 25",
        Site::new("cache_grow", 60_000, 60),
    );

    let trace = t.trace.to_str().unwrap();
    // lazy_cache's 200,000 bytes are the largest growth among the ranked stacks.
    analyze(&["growth", trace, "--fail-above", "10K"]).assert_code(1, "--fail-above 10K");
    analyze(&["growth", trace, "--fail-above", "195.3125K"]).assert_code(0, "exactly 200,000");
    analyze(&["growth", trace, "--fail-above", "1M"]).assert_code(0, "--fail-above 1M");
    // No marks in this run.
    let out = analyze(&["growth", trace, "--marks"]);
    out.assert_code(2, "growth --marks without marks");
    assert!(out.stderr.contains("no marks"), "{}", out.stderr);
}

#[test]
fn growth_over_marks() {
    let fx = fixture(FIXTURE);
    let t = traced(&["marks"]);
    let v = t.report("growth", &["--marks"]);
    let points: Vec<&str> = v["points"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["point"].as_str())
        .collect();
    assert_eq!(points, ["before", "after", "after#2"]);
    let ranked = entries(&v);
    assert_site(
        &ranked,
        fx,
        "growth --marks",
        Site::new("kept_site", 600, 3),
    );
    assert_site(&ranked, fx, "growth --marks", Site::new("late_site", 50, 1));
}

#[test]
fn signal_marks_leave_the_programs_own_handlers_alone() {
    let fx = fixture(FIXTURE);
    let t = run_traced(
        &fx.program(&["signal"])
            .env("MEMTRACE_SNAPSHOT_SIGNAL", "USR2"),
    );
    t.output.assert_code(0, "snapshots signal");
    assert_eq!(t.output.stdout, "usr1 handled 1\n");
    let summary = t.summary();
    let labels: Vec<&str> = summary.0["marks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["label"].as_str())
        .collect();
    assert_eq!(labels, ["signal-1", "signal-2"]);
    let v = diff(&point(&t, "signal-1"), &point(&t, "signal-2"), &[]);
    let rs = rows(&v);
    assert_eq!(row(&rs, fx, "kept_site").delta, (600, 3));
    assert_eq!(v["bytes_delta"], 600);
    assert_eq!(v["count_delta"], 3);

    // A signal memtrace refuses: one line on stderr, and the program runs traced, without signal
    // marks.
    let t = run_traced(
        &fx.program(&["leak", "1"])
            .env("MEMTRACE_SNAPSHOT_SIGNAL", "KILL"),
    );
    t.output
        .assert_code(0, "snapshots leak 1, MEMTRACE_SNAPSHOT_SIGNAL=KILL");
    assert!(
        t.output.stderr.contains("MEMTRACE_SNAPSHOT_SIGNAL"),
        "{}",
        t.output.stderr
    );
}

#[test]
fn the_python_helper_marks_under_the_preload_and_is_a_no_op_without() {
    let python = if std::path::Path::new("/usr/bin/python3.11").exists() {
        "/usr/bin/python3.11"
    } else {
        "python3"
    };
    let program = Program::new(python)
        .args([fixtures_dir().join("snapshots.py")])
        .env("PYTHONMALLOC", "malloc");
    let plain = run_plain(&program);
    plain.assert_code(0, "snapshots.py");
    assert_eq!(plain.stdout, "marks recorded: False\n");
    let t = run_traced(&program);
    t.output.assert_code(0, "snapshots.py under the preload");
    assert_eq!(t.output.stdout, "marks recorded: True\n");
    let v = diff(&point(&t, "before"), &point(&t, "after"), &["-n", "20"]);
    // bytearray(n) allocates n + 1 bytes; the dropped one is gone by "after".
    let rs = rows(&v);
    assert_eq!(rs[0].delta, (1_234_568, 1), "{rs:#?}");
    assert!(workspace_root().join("python/memtrace.py").is_file());
}
