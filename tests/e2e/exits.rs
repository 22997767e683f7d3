//! `fixtures/exits.c`: the trace keeps everything recorded however the program ends: a return
//! from main, exit() with an atexit handler that still allocates, _exit(), SIGKILL, abort(), exit()
//! and _exit() while other threads are still allocating, an exec (the old image's trace ends), and
//! a program that closes every descriptor but stdout (as `ls` closes stderr) before allocating
//! again. A vfork child's _exit must not end its parent's trace.

use std::os::unix::process::ExitStatusExt;

use memtrace_tests::{
    Site, Summary, analyze, analyze_json, assert_site, entries, fixture, run_plain, run_traced,
    sum_at_innermost,
};

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

#[test]
fn abort_loses_nothing_recorded() {
    let fx = fixture(FIXTURE);
    let traced = run_traced(&fx.program(&["abort"]));
    assert_eq!(
        traced.output.status.signal(),
        Some(libc_sigabrt()),
        "exits abort should die of SIGABRT: {}",
        traced.output.status
    );
    assert_eq!(traced.output.stdout, "mode abort\n");
    assert_site(&traced.leaks(), fx, "leaks", BEFORE_EXIT);
    // Killed by a signal: no end record, and a warning that says so.
    let summary = traced.summary();
    assert_eq!(summary.0["ended"].as_bool(), Some(false));
    assert_eq!(summary.get("unmatched_frees"), 0);
}

const fn libc_sigabrt() -> i32 {
    6
}

/// Threads that are still allocating when the process ends: every block each of them leaked
/// before it told main to end is in the trace, and their allocations and frees during the exit
/// leave at most the one block each thread had between its malloc and its free.
fn threads_at_exit(mode: &str) {
    let fx = fixture(FIXTURE);
    for attempt in 1..=3 {
        let what = format!("exits {mode}, run {attempt}");
        let traced = run_traced(&fx.program(&[mode]));
        traced.output.assert_code(0, &what);
        assert_eq!(traced.output.stdout, format!("mode {mode}\n"));
        let leaks = traced.leaks();
        assert_site(&leaks, fx, &format!("leaks ({what})"), BEFORE_EXIT);
        assert_site(
            &leaks,
            fx,
            &format!("leaks ({what})"),
            Site::new("thread_leak_before_exit", 4 * 777, 4),
        );
        let (bytes, count) = sum_at_innermost(&leaks, "thread_churn");
        assert!(
            count <= 4 && bytes == 64 * count,
            "{what}: thread_churn leaked {count} blocks ({bytes} bytes), at most one per thread"
        );
        let summary = traced.summary();
        assert_eq!(summary.0["ended"].as_bool(), Some(true), "{what}");
        summary.assert_consistent(&what);
    }
}

#[test]
fn threads_still_running_at_exit_lose_nothing() {
    threads_at_exit("threads");
}

#[test]
fn threads_still_running_at_underscore_exit_lose_nothing() {
    threads_at_exit("threads_");
}

#[test]
fn a_vfork_childs_exit_does_not_end_the_parents_trace() {
    let fx = fixture(FIXTURE);
    let traced = run_traced(&fx.program(&["vfork"]));
    assert_eq!(traced.output.status.signal(), Some(9));
    assert_eq!(traced.output.stdout, "mode vfork\nvfork child exited 7\n");
    let leaks = traced.leaks();
    assert_site(&leaks, fx, "leaks", BEFORE_EXIT);
    assert_site(&leaks, fx, "leaks", Site::new("after_vfork", 2345, 1));
    // The vfork child shares the parent's memory: had its _exit been recorded, the parent's trace
    // would claim an end the parent never reached.
    let summary = traced.summary();
    assert_eq!(
        summary.0["ended"].as_bool(),
        Some(false),
        "the parent was killed, yet its trace has an end record: the vfork child's _exit"
    );
}

#[test]
fn exec_ends_the_old_images_trace() {
    let fx = fixture(FIXTURE);
    let traced = run_traced(&fx.program(&["exec"]));
    traced.output.assert_code(6, "exits exec");
    assert_eq!(traced.output.stdout, "mode exec\nmode return\n");
    // The new image: `trace.bin`; the image that exec'd: moved aside to `trace.bin.exec1`.
    assert_site(&traced.leaks(), fx, "leaks", BEFORE_EXIT);
    let summary = traced.summary();
    assert_eq!(summary.0["ended"].as_bool(), Some(true));
    summary.assert_consistent("the new image's trace");
    let old = traced.trace.with_file_name("trace.bin.exec1");
    let old_summary = Summary(analyze_json(&[
        "summary".as_ref(),
        old.as_os_str(),
        "--format".as_ref(),
        "json".as_ref(),
    ]));
    assert_eq!(
        old_summary.0["ended"].as_bool(),
        Some(true),
        "the image that called execv has no end record"
    );
    old_summary.assert_consistent("the old image's trace");
    assert_eq!(old_summary.get("pid"), summary.get("pid"));
    assert_eq!(old_summary.0["cmdline"][1].as_str(), Some("exec"));
    let old_leaks = entries(&analyze_json(&[
        "leaks".as_ref(),
        old.as_os_str(),
        "--format".as_ref(),
        "json".as_ref(),
    ]));
    assert_site(&old_leaks, fx, "leaks of the old image", BEFORE_EXIT);
}
