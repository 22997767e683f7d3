//! Python frames (format version 2) in every report: traces built in memory whose stacks mix the
//! native frames of a tiny C program built with gcc (named like CPython's functions, the
//! evaluation function `_PyEval_EvalFrameDefault` among them, so symbolization finds it by name)
//! with Python frames of real CPython 3.11 code objects, whose line tables come from
//! `tests/data/python_lines.json` (the interpreter's own tables and answers).
//!
//! GIVEN the trace below, WHEN a report runs with `--group-by line|function` or `--frames
//! merged|python|native`, THEN these bytes and counts per Python line, these frames and kinds.

use crate::python_lines::{fixture, unhex};
use crate::support::*;
use memtrace_analyzer::ExitCode;
use memtrace_format::builder::TraceBuilder;
use memtrace_format::record::PYTHON_MODULE;
use memtrace_format::{Frame, PyCodeInfo, PyFrame, Record};
use object::{Object, ObjectSymbol};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = r#"#include <stdlib.h>
__attribute__((noinline)) void *PyMem_RawMalloc(size_t n) {
    return malloc(n);
}
__attribute__((noinline)) void *_PyEval_EvalFrameDefault(void *f) {
    return PyMem_RawMalloc((size_t)f);
}
__attribute__((noinline)) void *PyEval_EvalCode(void *c) {
    return _PyEval_EvalFrameDefault(c);
}
int main(void) {
    free(PyEval_EvalCode(0));
    return 0;
}
"#;

/// The line of `PyMem_RawMalloc` and of `_PyEval_EvalFrameDefault` in [`SOURCE`] (the frames below
/// point at each function's first instruction, which is on the line that opens it).
const RAW_MALLOC_LINE: u64 = 2;
const EVAL_LINE: u64 = 5;

/// The C program, built with `-g -O0`, and the file address of each function.
struct Program {
    dir: tempfile::TempDir,
    bin: PathBuf,
    functions: BTreeMap<String, u64>,
}

fn program() -> Program {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("prog.c");
    std::fs::write(&src, SOURCE).unwrap();
    let bin = dir.path().join("prog");
    let out = Command::new("gcc")
        .args(["-g", "-O0", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("gcc is needed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data = std::fs::read(&bin).unwrap();
    let file = object::File::parse(data.as_slice()).unwrap();
    let functions = file
        .symbols()
        .filter_map(|s| Some((s.name().ok()?.to_owned(), s.address())))
        .collect();
    Program {
        dir,
        bin,
        functions,
    }
}

impl Program {
    /// A native frame whose return address is just inside `function` (one byte after its start:
    /// readers look up the byte before a return address).
    fn native(&self, function: &str) -> Frame {
        frame(1, self.functions[function] + 1)
    }

    /// `text` with the temp dir's path replaced by `DIR`.
    fn clean(&self, text: &str) -> String {
        text.replace(self.dir.path().to_str().unwrap(), "DIR")
    }
}

/// A Python code record of CPython 3.11 from the fixture (line table and first line as the
/// interpreter had them), under the id `id`.
fn code_311(id: u32, filename: &str, qualname: &str) -> PyCodeInfo {
    let doc = fixture();
    let version = doc["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == "3.11.7" && v["options"] == "")
        .expect("3.11.7 in the fixture");
    let code = version["codes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["filename"] == filename && c["qualname"] == qualname)
        .unwrap_or_else(|| panic!("no {qualname} of {filename} in the fixture"));
    PyCodeInfo {
        id,
        name: code["name"].as_str().unwrap().into(),
        qualname: qualname.into(),
        filename: filename.into(),
        first_line: code["first_line"].as_u64().unwrap() as u32,
        line_table_kind: version["line_table_kind"].as_u64().unwrap() as u8,
        line_table: unhex(code["table"].as_str().unwrap()),
    }
}

/// The line CPython 3.11 itself gave for `offset` in the fixture's code (None: no line).
fn truth(filename: &str, qualname: &str, offset: u64) -> Option<u64> {
    let doc = fixture();
    let version = doc["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == "3.11.7" && v["options"] == "")
        .unwrap();
    let code = version["codes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["filename"] == filename && c["qualname"] == qualname)
        .unwrap();
    let run = code["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r[0].as_u64().unwrap() <= offset && offset < r[1].as_u64().unwrap())
        .unwrap();
    run[2].as_u64()
}

fn py(code: u32, instruction: u32) -> Frame {
    Frame::python(PyFrame { code, instruction })
}

fn mark(b: &mut TraceBuilder, time: u64, label: &str) {
    b.push(
        1,
        &Record::Mark {
            time,
            label: label.into(),
        },
    );
}

/// The trace of these tests. Codes: 1 `Box.__init__` (control.py; offsets 4 and 10 are on line
/// 33, offset 40 on line 34), 2 `<module>` (control.py; offset 20: line 29), 3 `far` (far.py;
/// offset 14: line 203, more than 127 lines from the one before), 4 `chain` (multiline.py; offset
/// 0 has no line: its first line, 15). Code 99 is never defined.
///
/// | stack | frames, innermost first | allocations |
/// |---|---|---|
/// | 1 | RawMalloc, py 1@4, eval, py 2@20, eval, EvalCode, main | 100 @1, 100 @2 (freed @12) |
/// | 2 | RawMalloc, py 1@10, eval, py 2@20, eval, main | 50 @3 |
/// | 3 | RawMalloc, py 1@40, eval, py 2@20, eval, main | 30 @4, 30 @11 |
/// | 4 | RawMalloc, main (no Python frame) | 7 @6 |
/// | 5 | 0xdead (no module), py 99@4, eval, main | 9 @7 |
/// | 6 | RawMalloc, py 3@14, eval, py 4@0, eval, main | 1000 @8, freed @9 |
/// | 7 | RawMalloc, py 4@0, eval, main | 20 @10 |
///
/// Marks: `before` at 5, `after` at 13.
fn python_trace(p: &Program) -> TraceFile {
    for (file, qualname, offset, line) in [
        ("control.py", "Box.__init__", 4, Some(33)),
        ("control.py", "Box.__init__", 10, Some(33)),
        ("control.py", "Box.__init__", 40, Some(34)),
        ("control.py", "<module>", 20, Some(29)),
        ("far.py", "far", 14, Some(203)),
        ("multiline.py", "chain", 0, None),
    ] {
        assert_eq!(truth(file, qualname, offset), line, "{qualname}@{offset}");
    }
    let mut b = builder();
    b.module(1, module(1, &p.bin, vec![]));
    for c in [
        code_311(1, "control.py", "Box.__init__"),
        code_311(2, "control.py", "<module>"),
        code_311(3, "far.py", "far"),
        code_311(4, "multiline.py", "chain"),
    ] {
        b.push(1, &Record::PyCode(c));
    }
    let raw = p.native("PyMem_RawMalloc");
    let eval = p.native("_PyEval_EvalFrameDefault");
    let main = p.native("main");
    b.stack(
        1,
        1,
        &[
            raw,
            py(1, 4),
            eval,
            py(2, 20),
            eval,
            p.native("PyEval_EvalCode"),
            main,
        ],
    );
    b.stack(1, 2, &[raw, py(1, 10), eval, py(2, 20), eval, main]);
    b.stack(1, 3, &[raw, py(1, 40), eval, py(2, 20), eval, main]);
    b.stack(1, 4, &[raw, main]);
    b.stack(1, 5, &[frame(0, 0xdead), py(99, 4), eval, main]);
    b.stack(1, 6, &[raw, py(3, 14), eval, py(4, 0), eval, main]);
    b.stack(1, 7, &[raw, py(4, 0), eval, main]);
    b.malloc(1, 1, 1, 100, 0x1000);
    b.malloc(1, 2, 1, 100, 0x1100);
    b.malloc(1, 3, 2, 50, 0x1200);
    b.malloc(1, 4, 3, 30, 0x1300);
    mark(&mut b, 5, "before");
    b.malloc(1, 6, 4, 7, 0x1400);
    b.malloc(1, 7, 5, 9, 0x1500);
    b.malloc(1, 8, 6, 1000, 0x1600);
    b.free(1, 9, 0x1600);
    b.malloc(1, 10, 7, 20, 0x1700);
    b.malloc(1, 11, 3, 30, 0x1800);
    b.free(1, 12, 0x1100);
    mark(&mut b, 13, "after");
    end(&mut b, 1, 14);
    TraceFile::new(&b.finish())
}

fn run_json(args: &[&str]) -> Value {
    let mut argv = args.to_vec();
    argv.extend_from_slice(&["--format", "json"]);
    let out = analyze(&argv).assert_code(ExitCode::Success);
    assert_eq!(out.stderr, "", "{args:?}");
    out.json()
}

/// Per entry: (file name of the location, line, bytes, count, merged stacks).
fn by_location(v: &Value) -> Vec<(String, Option<u64>, u64, u64, u64)> {
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let l = &e["location"];
            let place = match (l["file"].as_str(), l["function"].as_str()) {
                (Some(file), _) => file.rsplit('/').next().unwrap().to_owned(),
                (None, Some(function)) => function.to_owned(),
                (None, None) => "null".to_owned(),
            };
            (
                place,
                l["line"].as_u64(),
                int(e, "bytes"),
                int(e, "count"),
                int(e, "merged_stacks"),
            )
        })
        .collect()
}

fn row(
    place: &str,
    line: Option<u64>,
    bytes: u64,
    count: u64,
    merged: u64,
) -> (String, Option<u64>, u64, u64, u64) {
    (place.to_owned(), line, bytes, count, merged)
}

/// `(function, kind)` of each frame of an entry's stack.
fn frames_of(e: &Value) -> Vec<(String, String)> {
    e["stack"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["function"].as_str().unwrap_or("?").to_owned(),
                f["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn entry_of(v: &Value, stack: u64) -> &Value {
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| int(e, "stack_id") == stack)
        .unwrap_or_else(|| panic!("no stack {stack} in {v:#}"))
}

#[test]
fn top_groups_by_python_line() {
    let p = program();
    let f = python_trace(&p);
    let v = run_json(&["top", f.arg(), "--group-by", "line", "-n", "0"]);
    assert_eq!(
        by_location(&v),
        vec![
            row("far.py", Some(203), 1000, 1, 1),
            row("control.py", Some(33), 250, 3, 2),
            row("control.py", Some(34), 60, 2, 1),
            row("multiline.py", Some(15), 20, 1, 1),
            row("<unknown python code 99>", None, 9, 1, 1),
            row("prog.c", Some(RAW_MALLOC_LINE), 7, 1, 1),
        ]
    );
    assert_eq!(v["group_by"], "line");
    assert_eq!((int(&v, "stacks"), int(&v, "groups")), (7, 6));
    assert_eq!((int(&v, "total_bytes"), int(&v, "total_count")), (1346, 9));
    let e = &v["entries"][1];
    // The representative is the group's biggest stack; its measures by name are the sums.
    assert_eq!(int(e, "stack_id"), 1);
    assert_eq!(
        (
            int(e, "allocated_bytes"),
            int(e, "leaked_bytes"),
            int(e, "leaked_count")
        ),
        (250, 150, 2)
    );
    assert_eq!(
        e["location"],
        serde_json::json!({"function": "Box.__init__", "file": "control.py", "line": 33,
                           "module": null, "kind": "python"})
    );
    // The stack is the key frame alone, the others counted as omitted.
    assert_eq!(frames_of(e), [("Box.__init__".into(), "python".into())]);
    assert_eq!(int(e, "frames_omitted"), 4);
    assert_eq!(v["entries"][0]["temporary_count"], 1);
    let native = &v["entries"][5]["location"];
    assert_eq!(
        (native["function"].as_str(), native["kind"].as_str()),
        (Some("PyMem_RawMalloc"), Some("native"))
    );
    let unknown = &v["entries"][4];
    assert_eq!(unknown["location"]["kind"], "python");
    assert_eq!(unknown["location"]["file"], Value::Null);

    // Text: one line per entry, a stacks column, the key frame under each row.
    let out =
        analyze(&["top", f.arg(), "--group-by", "line", "-n", "3"]).assert_code(ExitCode::Success);
    assert_eq!(
        p.clean(&out.stdout),
        "Top 3 of 6 lines (7 stacks) by allocated bytes; all stacks allocated 1.3 KiB in 9 calls

#  allocated  calls    peak  leaked  temporary  stacks
1     1000 B      1  1000 B     0 B          1       1
   far at far.py:203 [py]
   … 3 more frames
2      250 B      3   250 B   150 B          0       2
   Box.__init__ at control.py:33 [py]
   … 4 more frames
3       60 B      2    30 B    60 B          0       1
   Box.__init__ at control.py:34 [py]
   … 3 more frames
"
    );
}

#[test]
fn leaks_group_by_line_and_function() {
    let p = program();
    let f = python_trace(&p);
    let v = run_json(&["leaks", f.arg(), "--group-by", "line"]);
    assert_eq!(
        by_location(&v),
        vec![
            row("control.py", Some(33), 150, 2, 2),
            row("control.py", Some(34), 60, 2, 1),
            row("multiline.py", Some(15), 20, 1, 1),
            row("<unknown python code 99>", None, 9, 1, 1),
            row("prog.c", Some(RAW_MALLOC_LINE), 7, 1, 1),
        ]
    );
    assert_eq!(
        (
            int(&v, "leaked_bytes"),
            int(&v, "stacks"),
            int(&v, "groups")
        ),
        (246, 6, 5)
    );
    // The group's allocations over the run are summed too.
    assert_eq!(int(&v["entries"][0], "allocated_bytes"), 250);

    let v = run_json(&["leaks", f.arg(), "--group-by", "function"]);
    let got: Vec<(String, u64, u64, u64)> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["location"]["function"].as_str().unwrap().to_owned(),
                int(e, "bytes"),
                int(e, "count"),
                int(e, "merged_stacks"),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("Box.__init__".to_owned(), 210, 4, 3),
            ("chain".to_owned(), 20, 1, 1),
            ("<unknown python code 99>".to_owned(), 9, 1, 1),
            ("PyMem_RawMalloc".to_owned(), 7, 1, 1),
        ]
    );
    assert_eq!(v["group_by"], "function");

    let out = analyze(&["leaks", f.arg(), "--group-by", "line", "-n", "2"])
        .assert_code(ExitCode::Success);
    assert_eq!(
        out.stdout,
        "246 B leaked in 7 blocks from 6 stacks at 5 lines (showing 2)

#  leaked  blocks  allocated  calls  stacks
1   150 B       2      250 B      3       2
   Box.__init__ at control.py:33 [py]
   … 4 more frames
2    60 B       2       60 B      2       1
   Box.__init__ at control.py:34 [py]
   … 3 more frames
"
    );
}

#[test]
fn snapshot_and_diff_group_by_python_line() {
    let p = program();
    let f = python_trace(&p);
    let (before, after) = (format!("{}@before", f.arg()), format!("{}@after", f.arg()));
    let v = run_json(&["snapshot", &before, "--group-by", "line"]);
    assert_eq!(
        by_location(&v),
        vec![
            row("control.py", Some(33), 250, 3, 2),
            row("control.py", Some(34), 30, 1, 1),
        ]
    );
    assert_eq!((int(&v, "stacks"), int(&v, "groups")), (3, 2));
    let v = run_json(&[
        "snapshot",
        &after,
        "--group-by",
        "line",
        "--frames",
        "python",
    ]);
    assert_eq!(
        by_location(&v),
        vec![
            row("control.py", Some(33), 150, 2, 2),
            row("control.py", Some(34), 60, 2, 1),
            row("multiline.py", Some(15), 20, 1, 1),
            row("<unknown python code 99>", None, 9, 1, 1),
            // Stack 4 has no Python frame to show.
            row("null", None, 7, 1, 1),
        ]
    );
    assert_eq!(v["entries"][4]["stack_note"], "no python frames");
    assert_eq!(v["entries"][4]["location"], Value::Null);

    let v = run_json(&["diff", &before, &after, "--group-by", "line"]);
    let got: Vec<(String, i64, u64, u64, u64, u64)> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let l = &e["location"];
            (
                format!(
                    "{}:{}",
                    l["file"].as_str().or(l["function"].as_str()).unwrap(),
                    l["line"]
                ),
                e["bytes_delta"].as_i64().unwrap(),
                int(e, "bytes_before"),
                int(e, "bytes_after"),
                int(e, "stacks_before"),
                int(e, "stacks_after"),
            )
        })
        .collect();
    let prog_c = format!(
        "{}:{RAW_MALLOC_LINE}",
        p.dir.path().join("prog.c").display()
    );
    assert_eq!(
        got,
        [
            ("control.py:33".to_owned(), -100, 250, 150, 2, 2),
            ("control.py:34".to_owned(), 30, 30, 60, 1, 1),
            ("multiline.py:15".to_owned(), 20, 0, 20, 0, 1),
            ("<unknown python code 99>:null".to_owned(), 9, 0, 9, 0, 1),
            (prog_c, 7, 0, 7, 0, 1),
            // Allocated and freed between the points.
            ("far.py:203".to_owned(), 0, 0, 0, 0, 1),
        ]
    );
    assert!(v["entries"][0].get("merged_stacks").is_none());
    assert_eq!(
        frames_of(&v["entries"][0]),
        [("Box.__init__".into(), "python".into())]
    );
    let out = analyze(&["diff", &before, &after, "--group-by", "line", "-n", "1"])
        .assert_code(ExitCode::Success);
    assert!(
        out.stdout.contains("    1   250 B  150 B  -100 B              3      2     -1\n       Box.__init__ at control.py:33 [py]\n"),
        "{}",
        out.stdout
    );
}

#[test]
fn frames_views_and_kinds() {
    let p = program();
    let f = python_trace(&p);
    let n = |s: &str| (s.to_owned(), "native".to_owned());
    let y = |s: &str| (s.to_owned(), "python".to_owned());
    // Merged (the default): the evaluation frames give way to the Python frames they run.
    let v = run_json(&["leaks", f.arg()]);
    assert_eq!(
        frames_of(entry_of(&v, 1)),
        [
            n("PyMem_RawMalloc"),
            y("Box.__init__"),
            y("<module>"),
            n("PyEval_EvalCode"),
            n("main")
        ]
    );
    let py_frame = &entry_of(&v, 1)["stack"][1];
    assert_eq!(py_frame["file"], "control.py");
    assert_eq!(py_frame["line"], 33);
    assert_eq!(py_frame["module"], Value::Null);
    assert_eq!(py_frame["address"], "0x4");
    assert_eq!(py_frame["offset"], "0x4");
    assert_eq!(py_frame["inlined"], false);
    // No Python frame: nothing hidden.
    assert_eq!(
        frames_of(entry_of(&v, 4)),
        [n("PyMem_RawMalloc"), n("main")]
    );
    // An unknown code is named by its id.
    assert_eq!(
        frames_of(entry_of(&v, 5)),
        [n("?"), y("<unknown python code 99>"), n("main")]
    );
    assert_eq!(
        entry_of(&v, 7)["stack"][1]["line"],
        15,
        "no line: the first line"
    );
    assert!(v.get("groups").is_none());
    assert!(entry_of(&v, 1).get("location").is_none());
    assert!(entry_of(&v, 1).get("merged_stacks").is_none());

    let v = run_json(&["leaks", f.arg(), "--frames", "native"]);
    assert_eq!(
        frames_of(entry_of(&v, 1)),
        [
            n("PyMem_RawMalloc"),
            n("_PyEval_EvalFrameDefault"),
            n("_PyEval_EvalFrameDefault"),
            n("PyEval_EvalCode"),
            n("main")
        ]
    );
    assert_eq!(entry_of(&v, 1)["stack"][1]["line"], EVAL_LINE);
    let v = run_json(&["leaks", f.arg(), "--frames", "python"]);
    assert_eq!(
        frames_of(entry_of(&v, 1)),
        [y("Box.__init__"), y("<module>")]
    );
    assert_eq!(entry_of(&v, 4)["stack"], serde_json::json!([]));
    assert_eq!(entry_of(&v, 4)["stack_note"], "no python frames");

    // Native view, grouped: the innermost native frame with a line (the unknown code's stack
    // has no module for its innermost frame, so its evaluation frame's line).
    let v = run_json(&["leaks", f.arg(), "--frames", "native", "--group-by", "line"]);
    assert_eq!(
        by_location(&v),
        vec![
            row("prog.c", Some(RAW_MALLOC_LINE), 237, 6, 5),
            row("prog.c", Some(EVAL_LINE), 9, 1, 1),
        ]
    );

    // Text marks Python frames; growth takes --frames too.
    let out = analyze(&["leaks", f.arg(), "-n", "1"]).assert_code(ExitCode::Success);
    assert_eq!(
        p.clean(&out.stdout),
        "246 B leaked in 7 blocks from 6 stacks (showing 1)

#  leaked  blocks  allocated  calls
1   100 B       1      200 B      2
   PyMem_RawMalloc at DIR/prog.c:2 (prog)
   Box.__init__ at control.py:33 [py]
   <module> at control.py:29 [py]
   PyEval_EvalCode at DIR/prog.c:8 (prog)
   main at DIR/prog.c:11 (prog)
"
    );
    let out = analyze(&[
        "growth",
        f.arg(),
        "--points",
        "2",
        "--frames",
        "python",
        "-n",
        "1",
    ])
    .assert_code(ExitCode::Success);
    assert!(
        out.stdout.ends_with(
            "   Box.__init__ at control.py:34 [py]\n   <module> at control.py:29 [py]\n"
        ),
        "{}",
        out.stdout
    );
    for view in ["merged", "python", "native"] {
        for report in [
            &["top", f.arg()][..],
            &["snapshot", f.arg()],
            &["diff", f.arg(), f.arg()],
        ] {
            let mut args = report.to_vec();
            args.extend(["--frames", view]);
            let v = run_json(&args);
            for e in v["entries"].as_array().unwrap() {
                for fr in e["stack"].as_array().unwrap() {
                    let kind = fr["kind"].as_str().unwrap();
                    assert!(kind == "python" || kind == "native", "{fr:#}");
                    match view {
                        "python" => assert_eq!(kind, "python", "{args:?}"),
                        "native" => assert_eq!(kind, "native", "{args:?}"),
                        _ => assert_ne!(fr["function"], "_PyEval_EvalFrameDefault", "{args:?}"),
                    }
                }
            }
        }
    }
    let out = analyze(&["top", f.arg(), "--frames", "bogus"]).assert_code(ExitCode::Error);
    assert!(out.stderr.contains("--frames"), "{}", out.stderr);
}

#[test]
fn without_symbols_the_eval_frames_cannot_be_told_and_stay() {
    let p = program();
    let f = python_trace(&p);
    let v = run_json(&["leaks", f.arg(), "--no-symbols"]);
    let kinds: Vec<String> = frames_of(entry_of(&v, 2))
        .into_iter()
        .map(|x| x.1)
        .collect();
    assert_eq!(
        kinds,
        ["native", "python", "native", "python", "native", "native"]
    );
}

#[test]
fn python_frames_in_a_trace_without_code_records_do_not_break_reports() {
    let mut b = builder();
    b.stack(1, 1, &[py(5, 0), frame(0, 0x10)]);
    b.stack(1, 2, &[frame(PYTHON_MODULE, u64::MAX)]);
    b.malloc(1, 1, 1, 10, 0x100);
    b.malloc(1, 2, 2, 20, 0x200);
    end(&mut b, 1, 3);
    let f = TraceFile::new(&b.finish());
    for by in ["stack", "function", "line"] {
        for view in ["merged", "python", "native"] {
            for report in ["top", "leaks", "snapshot", "growth"] {
                let mut args = vec![report, f.arg(), "--frames", view];
                if report != "growth" {
                    args.extend(["--group-by", by]);
                }
                let out = analyze(&args).assert_code(ExitCode::Success);
                assert!(!out.stdout.is_empty());
            }
            let out = analyze(&["diff", f.arg(), f.arg(), "--group-by", by, "--frames", view])
                .assert_code(ExitCode::Success);
            assert!(!out.stdout.is_empty());
        }
    }
    let v = run_json(&["leaks", f.arg(), "--group-by", "line"]);
    let functions: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["location"]["function"].as_str().unwrap())
        .collect();
    assert_eq!(
        functions,
        [
            "<unknown python code 4294967295>",
            "<unknown python code 5>"
        ]
    );
}

/// A trace of format version 1 (no Python frames or code records): the bytes of a version-2 trace
/// built without them, with the version field set to 1.
fn version_1(b: TraceBuilder) -> TraceFile {
    let mut bytes = b.finish();
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    TraceFile::new(&bytes)
}

#[test]
fn version_1_traces_report_as_before() {
    let mut b = builder();
    b.module(1, module(1, Path::new("/nonexistent/libv1.so"), vec![]));
    b.stack(1, 1, &[frame(1, 0x1234), frame(1, 0x2000)]);
    b.stack(1, 2, &[frame(1, 0x1300), frame(1, 0x2000)]);
    b.malloc(1, 1, 1, 100, 0x100);
    b.malloc(1, 2, 2, 40, 0x200);
    mark(&mut b, 3, "m");
    b.malloc(1, 4, 1, 60, 0x300);
    b.free(1, 5, 0x200);
    end(&mut b, 1, 6);
    let f = version_1(b);
    let name = f.arg();
    // The text of the analyzer before Python frames existed, byte for byte, in every view.
    let top = "Top 2 of 2 stacks by allocated bytes; all stacks allocated 200 B in 3 calls

#  allocated  calls   peak  leaked  temporary
1      160 B      2  160 B   160 B          0
   0x1234 (libv1.so+0x1234)
   0x2000 (libv1.so+0x2000)
2       40 B      1   40 B     0 B          0
   0x1300 (libv1.so+0x1300)
   0x2000 (libv1.so+0x2000)
";
    let leaks = "160 B leaked in 2 blocks from 1 stack (showing 1)

#  leaked  blocks  allocated  calls
1   160 B       2      160 B      2
   0x1234 (libv1.so+0x1234)
   0x2000 (libv1.so+0x2000)
";
    let snapshot = format!(
        "Live at {name}@m (3 ns): 140 B in 2 blocks from 2 stacks (showing 2)

#   live  blocks
1  100 B       1
   0x1234 (libv1.so+0x1234)
   0x2000 (libv1.so+0x2000)
2   40 B       1
   0x1300 (libv1.so+0x1300)
   0x2000 (libv1.so+0x2000)
"
    );
    // Both stacks are `?` in libv1.so twice: one entry.
    let diff = format!(
        "{name}@m → {name}@end (stacks matched by function and module, file:line breaking ties)
1 of 1 entry changed (showing 1)

    #  before  after  delta  blocks before  after  delta
    1   140 B  160 B  +20 B              2      2      0
       0x1234 (libv1.so+0x1234)
       0x2000 (libv1.so+0x2000)
total   140 B  160 B  +20 B              2      2      0
"
    );
    let at_m = format!("{name}@m");
    for view in [&[][..], &["--frames", "merged"], &["--frames", "native"]] {
        for (args, want) in [
            (vec!["top", name], top),
            (vec!["leaks", name], leaks),
            (vec!["snapshot", &at_m], snapshot.as_str()),
            (vec!["diff", &at_m, name], diff.as_str()),
        ] {
            let mut args = args.clone();
            args.extend_from_slice(view);
            let out = analyze(&args).assert_code(ExitCode::Success);
            assert_eq!(out.stdout, want, "{args:?}");
            assert!(out.stderr.contains("cannot read module"), "{}", out.stderr);
        }
    }
    // JSON: the same documents, every frame `"kind": "native"`, grouping said.
    let v = run_json_lenient(&["top", name]);
    assert_eq!(v["group_by"], "stack");
    assert!(v.get("groups").is_none());
    for e in v["entries"].as_array().unwrap() {
        assert!(e.get("location").is_none() && e.get("merged_stacks").is_none());
        for fr in e["stack"].as_array().unwrap() {
            assert_eq!(fr["kind"], "native");
            assert_eq!(fr.as_object().unwrap().len(), 8, "{fr:#}");
        }
    }
    // The release's own version-1 files.
    let data = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../format/tests/data/v1-basic.bin"
    );
    let out = analyze(&["top", data]).assert_code(ExitCode::Success);
    assert_eq!(
        out.stdout,
        "Top 1 of 1 stack by allocated bytes; all stacks allocated 222 B in 3 calls

#  allocated  calls   peak  leaked  temporary
1      222 B      3  158 B   128 B          2
   0x555555551234 (example+0x1234)
   0x7fff0000 (unknown module)
"
    );
}

fn run_json_lenient(args: &[&str]) -> Value {
    let mut argv = args.to_vec();
    argv.extend_from_slice(&["--format", "json"]);
    analyze(&argv).assert_code(ExitCode::Success).json()
}
