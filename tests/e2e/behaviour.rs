//! What the traced program sees: the same output and exit code as without the preload, one line
//! on stderr at start (none with `MEMTRACE_QUIET=1`), and the trace where `MEMTRACE_OUTPUT` (with
//! `%p`) or the default name puts it.

use std::path::Path;

use memtrace_tests::{Program, artifacts, fixture, run_plain, run_traced};

/// Every fixture, its arguments, and the exit code it must return.
const FIXTURES: &[(&str, &[&str], i32)] = &[
    ("alloc_kinds.c", &[], 7),
    ("edge_cases.c", &[], 3),
    ("threads.c", &[], 0),
    ("cpp_new.cpp", &[], 0),
    ("workload.c", &[], 0),
    ("exits.c", &["exit"], 4),
];

#[test]
fn output_and_exit_code_are_unchanged() {
    for (name, args, code) in FIXTURES {
        let fx = fixture(name);
        let plain = run_plain(&fx.program(args));
        plain.assert_code(*code, name);
        let traced = run_traced(&fx.program(args));
        traced
            .output
            .assert_code(*code, &format!("{name} under the preload"));
        assert_eq!(
            traced.output.stdout, plain.stdout,
            "{name}: stdout changed under the preload"
        );
        assert_eq!(
            traced.output.stderr, plain.stderr,
            "{name}: stderr changed under the preload with MEMTRACE_QUIET=1"
        );
    }
}

/// Runs the fixture `alloc_kinds` under the preload with only `LD_PRELOAD` and `env` set, in `dir`.
fn run_in(dir: &Path, env: &[(&str, &str)]) -> memtrace_tests::Output {
    let fx = fixture("alloc_kinds.c");
    let mut program = Program::new(&fx.exe)
        .current_dir(dir)
        .env("LD_PRELOAD", &artifacts().preload);
    for (k, v) in env {
        program = program.env(k, v);
    }
    let out = run_plain(&program);
    out.assert_code(7, "alloc_kinds under the preload");
    out
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn one_line_on_stderr_says_where_the_trace_goes() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("here.bin");
    let out = run_in(dir.path(), &[("MEMTRACE_OUTPUT", trace.to_str().unwrap())]);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one line on stderr, got:\n{}",
        out.stderr
    );
    assert!(
        lines[0].contains("here.bin"),
        "the line should name the trace: {:?}",
        lines[0]
    );
    assert!(trace.is_file());
}

#[test]
fn quiet_means_nothing_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("quiet.bin");
    let out = run_in(
        dir.path(),
        &[
            ("MEMTRACE_OUTPUT", trace.to_str().unwrap()),
            ("MEMTRACE_QUIET", "1"),
        ],
    );
    assert_eq!(out.stderr, "");
    assert!(trace.is_file());
}

#[test]
fn percent_p_expands_to_the_pid() {
    let dir = tempfile::tempdir().unwrap();
    let pattern = dir.path().join("t.%p.bin");
    run_in(
        dir.path(),
        &[
            ("MEMTRACE_OUTPUT", pattern.to_str().unwrap()),
            ("MEMTRACE_QUIET", "1"),
        ],
    );
    let names = files_in(dir.path());
    assert!(
        names.len() == 1
            && names[0]
                .strip_prefix("t.")
                .and_then(|r| r.strip_suffix(".bin"))
                .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())),
        "expected one file t.<pid>.bin, found {names:?}"
    );
}

#[test]
fn default_output_is_named_after_program_and_pid_in_the_cwd() {
    let dir = tempfile::tempdir().unwrap();
    run_in(dir.path(), &[("MEMTRACE_QUIET", "1")]);
    let names = files_in(dir.path());
    let exe = fixture("alloc_kinds.c").exe_name();
    assert!(
        names.len() == 1
            && names[0]
                .strip_prefix(&format!("memtrace.{exe}."))
                .and_then(|r| r.strip_suffix(".bin"))
                .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())),
        "expected one file memtrace.{exe}.<pid>.bin, found {names:?}"
    );
}

/// Under `ulimit -v` the trace's 1 TiB address-space reservation is refused; a smaller one is taken
/// and every allocation is still traced (`fixtures/stress.c`: each thread's calls at its two sites
/// are fixed by its arguments).
#[test]
fn a_process_limited_in_address_space_is_still_traced() {
    let fx = fixture("stress.c");
    let exe = fx.exe.to_str().expect("utf-8 path");
    let traced = run_traced(&Program::new("sh").args([
        "-c",
        "ulimit -v 2000000 && exec \"$0\" 4 20000",
        exe,
    ]));
    traced.output.assert_code(0, "stress under ulimit -v");
    let top = traced.top("bytes");
    let calls =
        ["stress_malloc", "stress_realloc"].map(|f| memtrace_tests::sum_at_innermost(&top, f).1);
    assert_eq!(calls, [4 * 20_000, 4 * 2_500], "calls at the two sites");
    traced.summary().assert_consistent("stress under ulimit -v");
}
