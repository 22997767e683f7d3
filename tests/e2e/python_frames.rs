//! Python frames under plain `LD_PRELOAD`: `fixtures/python_frames.py` allocates at known lines (in
//! the main thread, a `threading` thread, a `concurrent.futures` pool and an imported module), then
//! records the mark `loaded`. Checked on every CPython found: Debian's `/usr/bin/python3.11`
//! (always, `.ci/run` installs it), `python3` on `PATH` (pyenv's bash shim here, which execs the
//! interpreter), and pyenv's 3.8 to 3.13 when they are installed.
//!
//! - The list built at line 20 (50,000 `bytes(100)`, 6.65 MB) is at least 5.5 MB of `top --by peak`
//!   on stacks whose innermost Python frame is that function at that file and line, and those stacks
//!   hold native frames too.
//! - At the mark, `snapshot --group-by line` gives, for every line tracemalloc counts over 1 MB (in
//!   a separate, untraced run of the same script), bytes within 5% of tracemalloc's.
//! - The script's output is the same traced and untraced.

use memtrace_tests::{Program, fixtures_dir, run_plain, run_traced, which};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

const LIST_LINE: u64 = 20;
const SCRIPT: &str = "python_frames.py";

fn script() -> PathBuf {
    fixtures_dir().join(SCRIPT)
}

/// Every interpreter to check: Debian's, `python3` on PATH, and pyenv's versions that exist.
fn interpreters() -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from("/usr/bin/python3.11")];
    assert!(
        out[0].is_file(),
        "/usr/bin/python3.11 is missing (apt-get install python3.11)"
    );
    out.extend(which("python3"));
    if let Some(home) = std::env::var_os("HOME") {
        let root = PathBuf::from(home).join(".pyenv/versions");
        for v in ["3.8.18", "3.9.18", "3.10.13", "3.11.7", "3.12.1", "3.13.0"] {
            let minor = &v[..v.rfind('.').unwrap_or(v.len())];
            let exe = root.join(v).join("bin").join(format!("python{minor}"));
            if exe.is_file() {
                out.push(exe);
            }
        }
    }
    out
}

/// A frame of the JSON contract: (kind, function, file, line).
fn frame(f: &Value) -> (&str, &str, &str, u64) {
    (
        f["kind"].as_str().unwrap_or("?"),
        f["function"].as_str().unwrap_or(""),
        f["file"].as_str().unwrap_or(""),
        f["line"].as_u64().unwrap_or(0),
    )
}

/// The innermost Python frame of a stack.
fn innermost_python(stack: &[Value]) -> Option<(&str, &str, u64)> {
    stack
        .iter()
        .map(frame)
        .find(|f| f.0 == "python")
        .map(|(_, function, file, line)| (function, file, line))
}

/// The list's frame: its function (`build_list`, or its comprehension, `<listcomp>` before 3.11
/// where code objects have no qualified name) in the script, at line 20.
fn is_list_frame((function, file, line): (&str, &str, u64)) -> bool {
    file.ends_with(SCRIPT)
        && line == LIST_LINE
        && (function.starts_with("build_list") || function == "<listcomp>")
}

fn traced_run(python: &PathBuf, env: &[(&str, &str)], flags: &[&str]) -> memtrace_tests::Traced {
    let mut program = Program::new(python)
        .args(flags.iter().map(|s| s.to_string()))
        .args([script()]);
    for (k, v) in env {
        program = program.env(k, v);
    }
    let plain = run_plain(&program);
    plain.assert_code(0, &program.display());
    let traced = run_traced(&program);
    traced
        .output
        .assert_code(0, &format!("{} under the preload", program.display()));
    assert_eq!(
        traced.output.stdout,
        plain.stdout,
        "{}: output changed under the preload",
        program.display()
    );
    traced
}

/// Bytes of `top --by peak` on stacks whose innermost Python frame is the list's line, and whether
/// each of those stacks also holds native frames.
fn list_peak_bytes(traced: &memtrace_tests::Traced) -> (u64, bool) {
    // The list's stacks hold the most bytes at the peak: the first 50 stacks include them all.
    let top = traced.report("top", &["--by", "peak", "-n", "50"]);
    let mut bytes = 0;
    let mut all_native = true;
    for e in top["entries"].as_array().expect("entries") {
        let stack = e["stack"].as_array().expect("stack");
        if innermost_python(stack).is_some_and(is_list_frame) {
            bytes += e["bytes"].as_u64().unwrap_or(0);
            all_native &= stack.iter().any(|f| frame(f).0 == "native");
        }
    }
    (bytes, all_native)
}

#[test]
fn the_list_is_on_its_line_with_native_frames() {
    for python in interpreters() {
        let what = python.display().to_string();
        let traced = traced_run(&python, &[], &[]);
        let (bytes, native) = list_peak_bytes(&traced);
        assert!(
            bytes >= 5_500_000,
            "{what}: {bytes} B at the peak on stacks whose innermost Python frame is \
             build_list at {SCRIPT}:{LIST_LINE}; expected at least 5.5 MB"
        );
        assert!(native, "{what}: those stacks have no native frames");
        let summary = traced.summary();
        assert!(summary.get("python_codes") > 50, "{what}: {:#}", summary.0);
    }
}

/// tracemalloc's `statistics('lineno')` at the same point of a separate run: `file:line` → bytes.
fn tracemalloc_lines(python: &PathBuf) -> BTreeMap<String, u64> {
    let program = Program::new(python).args([script().to_str().unwrap(), "tracemalloc"]);
    let out = run_plain(&program);
    out.assert_code(0, &program.display());
    out.stdout
        .lines()
        .filter_map(|l| {
            let (place, bytes) = l.rsplit_once(' ')?;
            Some((place.to_owned(), bytes.parse().ok()?))
        })
        .collect()
}

#[test]
fn lines_agree_with_tracemalloc() {
    for python in interpreters() {
        let what = python.display().to_string();
        let oracle = tracemalloc_lines(&python);
        let traced = traced_run(&python, &[], &[]);
        let arg = format!("{}@loaded", traced.trace.display());
        let snap = memtrace_tests::analyze_json(&[
            "snapshot",
            &arg,
            "--group-by",
            "line",
            "-n",
            "1000000",
            "--format",
            "json",
        ]);
        let mut ours: BTreeMap<String, u64> = BTreeMap::new();
        for e in snap["entries"].as_array().expect("entries") {
            let loc = &e["location"];
            if loc["kind"] == "python" {
                let key = format!("{}:{}", loc["file"].as_str().unwrap_or(""), loc["line"]);
                *ours.entry(key).or_default() += e["bytes"].as_u64().unwrap_or(0);
            }
        }
        let big: Vec<(&String, &u64)> = oracle.iter().filter(|(_, b)| **b > 1_000_000).collect();
        assert!(
            big.len() >= 4,
            "{what}: tracemalloc found {} lines over 1 MB: {oracle:?}",
            big.len()
        );
        for (place, &want) in big {
            let got = ours.get(place).copied().unwrap_or(0);
            let off = (got as f64 - want as f64).abs() / want as f64;
            assert!(
                off <= 0.05,
                "{what}: {place}: memtrace {got} B, tracemalloc {want} B ({:.1}% apart)",
                off * 100.0
            );
        }
    }
}

#[test]
fn pymalloc_is_seen_under_isolated_mode_and_kept_on_request() {
    let python = PathBuf::from("/usr/bin/python3.11");
    // -I ignores PYTHONMALLOC: pymalloc is wrapped instead, and the list is still seen.
    let isolated = traced_run(&python, &[], &["-I"]);
    let (bytes, _) = list_peak_bytes(&isolated);
    assert!(
        bytes >= 5_500_000,
        "-I: {bytes} B on the list's line; expected at least 5.5 MB"
    );
    // MEMTRACE_PYTHONMALLOC=keep: the 133-byte objects stay in pymalloc's arenas, unseen; only the
    // list's own array (400 KB, from malloc) is left on that line.
    let kept = traced_run(&python, &[("MEMTRACE_PYTHONMALLOC", "keep")], &[]);
    let (bytes, _) = list_peak_bytes(&kept);
    assert!(
        bytes < 1_000_000,
        "MEMTRACE_PYTHONMALLOC=keep: {bytes} B on the list's line; pymalloc's objects should be unseen"
    );
}

#[test]
fn python_frames_can_be_turned_off() {
    let python = PathBuf::from("/usr/bin/python3.11");
    let traced = traced_run(&python, &[("MEMTRACE_PYTHON", "0")], &[]);
    let top = traced.report("top", &["--by", "peak", "-n", "50"]);
    let entries = top["entries"].as_array().expect("entries");
    assert!(!entries.is_empty());
    for e in entries {
        for f in e["stack"].as_array().expect("stack") {
            assert_eq!(
                f["kind"], "native",
                "MEMTRACE_PYTHON=0 left a Python frame: {f}"
            );
        }
    }
    assert_eq!(traced.summary().get("python_codes"), 0);
}
