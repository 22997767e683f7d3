//! Another allocator in the process, in either order: `LD_PRELOAD=libmemtrace.so:libjemalloc.so.2`
//! (memtrace forwards every call to that allocator, not to glibc's) and
//! `LD_PRELOAD=libjemalloc.so.2:libmemtrace.so` (memtrace takes the calls back through the PLT and
//! forwards them to it): the allocator serves the program, and the trace is exact. Skipped with a
//! note where the allocator is not installed (CI installs jemalloc and tcmalloc: see `.ci/run`).

use std::path::{Path, PathBuf};

use memtrace_tests::{
    Output, Program, Site, analyze_json, artifacts, assert_site, entries, fixture, run_plain,
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

/// Where the allocator goes in `LD_PRELOAD`, relative to libmemtrace.so.
#[derive(Clone, Copy)]
enum Order {
    AllocatorFirst,
    MemtraceFirst,
}

/// Runs `fixtures/exits.c` (mode `return`: leaks 4321 bytes, exits 6) with `allocator` and
/// libmemtrace.so in `LD_PRELOAD` in `order`, checks that it behaved and that the trace holds its
/// leak exactly, and returns what it printed.
fn traced_with(allocator: &Path, order: Order, extra_env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let (memtrace, allocator) = (artifacts().preload.display(), allocator.display());
    let preload = match order {
        Order::AllocatorFirst => format!("{allocator}:{memtrace}"),
        Order::MemtraceFirst => format!("{memtrace}:{allocator}"),
    };
    let trace = dir.path().join("trace.bin");
    let mut program: Program = fixture("exits.c")
        .program(&["return"])
        .env("LD_PRELOAD", &preload)
        .env("MEMTRACE_OUTPUT", &trace)
        .env("MEMTRACE_QUIET", "1");
    for (k, v) in extra_env {
        program = program.env(k, v);
    }
    let out = run_plain(&program);
    out.assert_code(6, &format!("exits return with LD_PRELOAD={preload}"));
    assert_eq!(out.stdout, "mode return\n");
    assert!(!out.stderr.contains("memtrace:"), "{}", out.stderr);
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
    let out = traced_with(
        &jemalloc,
        Order::MemtraceFirst,
        &[("MALLOC_CONF", "stats_print:true")],
    );
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
    traced_with(&tcmalloc, Order::MemtraceFirst, &[]);
}

#[test]
fn jemalloc_loaded_first_still_serves_and_is_traced() {
    let Some(jemalloc) = library("libjemalloc.so.2", "jemalloc first") else {
        return;
    };
    let out = traced_with(
        &jemalloc,
        Order::AllocatorFirst,
        &[("MALLOC_CONF", "stats_print:true")],
    );
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
    traced_with(&tcmalloc, Order::AllocatorFirst, &[]);
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
