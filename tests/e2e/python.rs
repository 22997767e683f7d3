//! CPython under the preload: `python3` from `PATH` (pyenv's bash shim here, which execs the real
//! interpreter; Debian's `/usr/bin/python3` on CI) and Debian's packaged `/usr/bin/python3.11`.
//! The script's output and exit code must not change, and the trace must analyze.
//!
//! `fixtures/workload.py` ends holding a 7,654,321-byte bytearray, so its trace is recognisable
//! among the shell's traces that pyenv's shim leaves beside it.

use std::path::PathBuf;

use memtrace_tests::{Program, entries, fixtures_dir, render, run_plain, run_traced, which};

const BIG: u64 = 7_654_321;

fn workload(python: &str) -> Program {
    Program::new(python)
        .args([fixtures_dir().join("workload.py")])
        .env("PYTHONHASHSEED", "0")
}

/// Runs `program` plain and traced, compares, and returns the traced summary's `alloc_calls`.
fn check(program: &Program, what: &str, min_alloc_calls: u64, expect_big: bool) -> u64 {
    let plain = run_plain(program);
    plain.assert_code(0, what);
    let traced = run_traced(program);
    traced
        .output
        .assert_code(0, &format!("{what} under the preload"));
    assert_eq!(
        traced.output.stdout, plain.stdout,
        "{what}: stdout changed under the preload"
    );
    let summary = traced.summary();
    let calls = summary.get("alloc_calls");
    assert!(
        calls >= min_alloc_calls,
        "{what}: alloc_calls {calls}, expected at least {min_alloc_calls}:\n{:#}",
        summary.0
    );
    if expect_big {
        assert!(summary.get("total_allocated_bytes") >= BIG);
        // Only the largest stacks: symbolizing all of an interpreter's is needless work here.
        let top = entries(&traced.report("top", &["--by", "bytes", "-n", "10"]));
        assert!(
            top.iter().any(|e| e.bytes >= BIG),
            "{what}: no stack allocated the script's {BIG}-byte bytearray:\n{}",
            render(&top)
        );
    }
    calls
}

fn check_python(python: &str) {
    // PYTHONMALLOC=malloc turns every object into a malloc call: a couple of hundred thousand.
    check(
        &workload(python).env("PYTHONMALLOC", "malloc"),
        &format!("{python} workload.py (PYTHONMALLOC=malloc)"),
        100_000,
        true,
    );
    // Left alone, the preload sets PYTHONMALLOC=malloc itself: the same hundreds of thousands.
    check(
        &workload(python),
        &format!("{python} workload.py (PYTHONMALLOC set by the preload)"),
        100_000,
        true,
    );
    // With pymalloc kept (MEMTRACE_PYTHONMALLOC=keep), small objects live in its arenas; large
    // ones and the interpreter's own buffers still come from malloc.
    check(
        &workload(python).env("MEMTRACE_PYTHONMALLOC", "keep"),
        &format!("{python} workload.py (pymalloc kept)"),
        2_000,
        true,
    );
    check(
        &Program::new(python).args([
            "-c",
            "import json; print(json.dumps(sorted({3: 'a', 1: 'b'}.items())))",
        ]),
        &format!("{python} -c"),
        1_000,
        false,
    );
}

#[test]
fn python3_on_path() {
    let Some(python) = which("python3") else {
        panic!("python3 is not on PATH (apt-get install python3)");
    };
    check_python(python.to_str().unwrap());
}

#[test]
fn debian_python3_11() {
    let python = PathBuf::from("/usr/bin/python3.11");
    if !python.is_file() {
        eprintln!(
            "SKIPPED debian_python3_11: /usr/bin/python3.11 is not installed (apt-get install \
             python3.11)"
        );
        return;
    }
    check_python(python.to_str().unwrap());
}
