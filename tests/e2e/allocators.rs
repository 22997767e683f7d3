//! Another allocator in the process, in either order: `LD_PRELOAD=libmemtrace.so:libjemalloc.so.2`
//! (memtrace forwards every call to that allocator, not to glibc's) and
//! `LD_PRELOAD=libjemalloc.so.2:libmemtrace.so` (memtrace takes the calls back through the PLT and
//! forwards them to it): the allocator serves the program, and the trace is exact. Skipped with a
//! note where the allocator is not installed (CI installs jemalloc and tcmalloc: see `.ci/run`).

use std::path::{Path, PathBuf};

use memtrace_tests::{
    Program, Site, analyze_json, artifacts, assert_site, entries, fixture, run_plain,
};

const LIB_DIR: &str = "/usr/lib/x86_64-linux-gnu";
const BEFORE_EXIT: Site<'static> = Site::new("leak_before_exit", 4321, 1);

fn library(name: &str, test: &str) -> Option<PathBuf> {
    let path = Path::new(LIB_DIR).join(name);
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "SKIPPED {test}: {} is not installed; nothing was checked",
            path.display()
        );
        None
    }
}

/// Runs `fixtures/exits.c` (mode `return`: leaks 4321 bytes, exits 6) with `preload` as
/// `LD_PRELOAD`, writing its trace into `dir`.
fn run_exits(preload: &str, dir: &Path, extra_env: &[(&str, &str)]) -> memtrace_tests::Output {
    let fx = fixture("exits.c");
    let mut program: Program = fx
        .program(&["return"])
        .env("LD_PRELOAD", preload)
        .env("MEMTRACE_OUTPUT", dir.join("trace.bin"))
        .env("MEMTRACE_QUIET", "1");
    for (k, v) in extra_env {
        program = program.env(k, v);
    }
    run_plain(&program)
}

fn forwarded_and_traced(allocator: &Path, extra_env: &[(&str, &str)]) -> memtrace_tests::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let preload = format!("{}:{}", artifacts().preload.display(), allocator.display());
    let out = run_exits(&preload, dir.path(), extra_env);
    out.assert_code(6, "exits return with another allocator");
    assert_eq!(out.stdout, "mode return\n");
    let trace = dir.path().join("trace.bin");
    let leaks = entries(&analyze_json(&[
        "leaks".as_ref(),
        trace.as_os_str(),
        "--format".as_ref(),
        "json".as_ref(),
    ]));
    assert_site(&leaks, fixture("exits.c"), "leaks", BEFORE_EXIT);
    out
}

#[test]
fn calls_are_forwarded_to_jemalloc_and_traced() {
    let Some(jemalloc) = library("libjemalloc.so.2", "jemalloc") else {
        return;
    };
    // jemalloc prints its statistics at exit when asked: the number of allocations it served
    // shows that it served the program (forwarded to glibc instead, it serves its own 2).
    let out = forwarded_and_traced(&jemalloc, &[("MALLOC_CONF", "stats_print:true")]);
    let served = jemalloc_served(&out.stderr);
    assert!(
        served > 100,
        "jemalloc served {served} allocations: the calls did not reach it"
    );
}

#[test]
fn calls_are_forwarded_to_tcmalloc_and_traced() {
    let Some(tcmalloc) = library("libtcmalloc_minimal.so.4", "tcmalloc") else {
        return;
    };
    forwarded_and_traced(&tcmalloc, &[]);
}

/// Runs `fixtures/exits.c` with `allocator` before libmemtrace.so in `LD_PRELOAD`.
fn allocator_first(allocator: &Path, extra_env: &[(&str, &str)]) -> memtrace_tests::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let preload = format!("{}:{}", allocator.display(), artifacts().preload.display());
    let out = run_exits(&preload, dir.path(), extra_env);
    out.assert_code(6, "exits return with the allocator first");
    assert_eq!(out.stdout, "mode return\n");
    assert!(!out.stderr.contains("memtrace:"), "{}", out.stderr);
    let trace = dir.path().join("trace.bin");
    let leaks = entries(&analyze_json(&[
        "leaks".as_ref(),
        trace.as_os_str(),
        "--format".as_ref(),
        "json".as_ref(),
    ]));
    assert_site(&leaks, fixture("exits.c"), "leaks", BEFORE_EXIT);
    out
}

#[test]
fn jemalloc_loaded_first_still_serves_and_is_traced() {
    let Some(jemalloc) = library("libjemalloc.so.2", "jemalloc first") else {
        return;
    };
    let out = allocator_first(&jemalloc, &[("MALLOC_CONF", "stats_print:true")]);
    assert!(
        jemalloc_served(&out.stderr) > 100,
        "jemalloc did not serve the program:\n{}",
        out.stderr
    );
}

#[test]
fn tcmalloc_loaded_first_is_traced() {
    let Some(tcmalloc) = library("libtcmalloc_minimal.so.4", "tcmalloc first") else {
        return;
    };
    allocator_first(&tcmalloc, &[]);
}

/// The number of allocations jemalloc's exit statistics say it served.
fn jemalloc_served(stderr: &str) -> u64 {
    stderr
        .lines()
        .find(|l| l.starts_with("total:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no jemalloc statistics on stderr:\n{stderr}"))
}
