//! memtrace's `summary` against heaptrack's totals on the same program: allocation calls within
//! 0.5% and temporary allocations within 2% (the acceptance bounds of issue 2). heaptrack runs
//! the program separately; the workloads are deterministic, so the two runs allocate alike.
//!
//! heaptrack 1.4 calls a free temporary when no other allocation came between it and the
//! allocation of a block of the same size from the same stack (it compares its allocation-info
//! index, not the address). For single-threaded C code both readings agree; for CPython they
//! differ by a third, so only heaptrack's reading passes the CPython comparison.
//!
//! Skipped, with a message, when heaptrack is not installed; `.ci/run` installs it.

use memtrace_tests::{
    Program, check_close, fixture, fixtures_dir, heaptrack_available, heaptrack_counts, run_traced,
    which,
};

/// Runs `program` under both tools; returns what disagrees beyond the bounds.
fn compare(program: &Program, what: &str) -> Vec<String> {
    let traced = run_traced(program);
    assert!(
        traced.output.status.success(),
        "{what} under the preload: {}\n{}",
        traced.output.status,
        traced.output.stderr
    );
    let summary = traced.summary();
    let heaptrack = heaptrack_counts(program);
    eprintln!(
        "{what}: alloc_calls memtrace {} heaptrack {}; temporary memtrace {} heaptrack {}",
        summary.get("alloc_calls"),
        heaptrack.alloc_calls,
        summary.get("temporary_allocs"),
        heaptrack.temporary
    );
    [
        check_close(
            &format!("{what}: alloc_calls"),
            summary.get("alloc_calls"),
            heaptrack.alloc_calls,
            0.005,
        ),
        check_close(
            &format!("{what}: temporary_allocs"),
            summary.get("temporary_allocs"),
            heaptrack.temporary,
            0.02,
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

#[test]
fn c_workload_with_threads_agrees_with_heaptrack() {
    if !heaptrack_available("c_workload_with_threads_agrees_with_heaptrack") {
        return;
    }
    let fx = fixture("workload.c");
    let failures = compare(&fx.program(&[]), "workload.c");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The interpreter itself, not a launcher script: heaptrack would trace the script's shell.
fn real_interpreter(python: &str) -> Option<String> {
    let out = memtrace_tests::run_plain(
        &Program::new(python).args(["-c", "import sys; print(sys.executable)"]),
    );
    out.status
        .success()
        .then(|| out.stdout.trim().to_string())
        .filter(|exe| !exe.is_empty())
}

#[test]
fn cpython_agrees_with_heaptrack() {
    if !heaptrack_available("cpython_agrees_with_heaptrack") {
        return;
    }
    let mut interpreters: Vec<String> = Vec::new();
    if let Some(python3) = which("python3").and_then(|p| real_interpreter(p.to_str()?)) {
        interpreters.push(python3);
    }
    if std::path::Path::new("/usr/bin/python3.11").is_file() {
        interpreters.push("/usr/bin/python3.11".into());
    }
    interpreters.dedup();
    assert!(!interpreters.is_empty(), "no python3 to compare with");
    let mut failures = Vec::new();
    for python in interpreters {
        let program = Program::new(&python)
            .args([fixtures_dir().join("workload.py")])
            .env("PYTHONHASHSEED", "0")
            .env("PYTHONMALLOC", "malloc");
        failures.extend(compare(&program, &format!("{python} workload.py")));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
