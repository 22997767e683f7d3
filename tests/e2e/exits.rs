//! `fixtures/exits.c`: the trace keeps everything recorded however the program ends: a return
//! from main, exit() with an atexit handler that still allocates, _exit(), SIGKILL, and a program
//! that closes every descriptor but stdout (as `ls` closes stderr) before allocating again.

use std::os::unix::process::ExitStatusExt;

use memtrace_tests::{Site, analyze, assert_site, fixture, run_plain, run_traced};

const FIXTURE: &str = "exits.c";
const BEFORE_EXIT: Site<'static> = Site::new("leak_before_exit", 4321, 1);

#[test]
fn return_from_main() {
    let fx = fixture(FIXTURE);
    let traced = run_traced(&fx.program(&["return"]));
    traced.output.assert_code(6, "exits return");
    assert_site(&traced.leaks(), fx, "leaks", BEFORE_EXIT);
}

#[test]
fn exit_runs_atexit_handlers_that_are_still_traced() {
    let fx = fixture(FIXTURE);
    let traced = run_traced(&fx.program(&["exit"]));
    traced.output.assert_code(4, "exits exit");
    let leaks = traced.leaks();
    assert_site(&leaks, fx, "leaks", BEFORE_EXIT);
    assert_site(&leaks, fx, "leaks", Site::new("leak_in_atexit", 5432, 1));
}

#[test]
fn underscore_exit() {
    let fx = fixture(FIXTURE);
    let traced = run_traced(&fx.program(&["_exit"]));
    traced.output.assert_code(5, "exits _exit");
    assert_eq!(traced.output.stdout, "mode _exit\n");
    assert_site(&traced.leaks(), fx, "leaks", BEFORE_EXIT);
}

#[test]
fn sigkill_loses_nothing_recorded() {
    let fx = fixture(FIXTURE);
    let traced = run_traced(&fx.program(&["kill"]));
    assert_eq!(
        traced.output.status.signal(),
        Some(9),
        "exits kill should die of SIGKILL: {}",
        traced.output.status
    );
    // No end record: the analyzer warns, but reports everything up to the kill.
    assert_site(&traced.leaks(), fx, "leaks", BEFORE_EXIT);
    let out = analyze(&["summary".as_ref(), traced.trace.as_os_str()]);
    out.assert_code(0, "summary of a killed program's trace");
    assert!(
        out.stderr.contains("warning"),
        "a trace without an end record deserves a warning, stderr was:\n{}",
        out.stderr
    );
}

#[test]
fn closed_descriptors_do_not_stop_tracing() {
    let fx = fixture(FIXTURE);
    let plain = run_plain(&fx.program(&["closefds"]));
    plain.assert_code(0, "exits closefds");
    let traced = run_traced(&fx.program(&["closefds"]));
    traced
        .output
        .assert_code(0, "exits closefds under the preload");
    assert_eq!(traced.output.stdout, plain.stdout);
    let leaks = traced.leaks();
    assert_site(&leaks, fx, "leaks", BEFORE_EXIT);
    assert_site(&leaks, fx, "leaks", Site::new("leak_after_close", 6543, 1));
}
