//! `fixtures/threads.c`: six threads allocating known amounts, blocks handed to another thread
//! that frees them while the allocating thread gets the same address back at once, four
//! threads freeing each other's blocks concurrently, and a thread on the smallest stack allowed. Exact per-site totals prove that the
//! threads' records were merged in the order the events happened: a free replayed after the
//! reallocation of the same address would drop a live block or keep a dead one.
//! `fixtures/realloc_race.c` does the same for a realloc that moves its block: glibc releases the
//! old address inside realloc, where another thread can take it before realloc returns.

use memtrace_tests::{
    Fixture, Program, Site, Traced, assert_no_site, assert_site, fixture, run_plain, run_traced,
};

const FIXTURE: &str = "threads.c";

const LEAKED: [Site<'static>; 4] = [
    Site::new("thread_leak", 9100, 21),
    Site::new("handoff_alloc", 72, 1),
    Site::new("ring_alloc", 64 * (200 + 201 + 202 + 203), 256),
    Site::new("small_stack_leak", 5 * 24, 5),
];

const ALLOCATED: [Site<'static>; 5] = [
    Site::new("thread_leak", 9100, 21),
    Site::new("thread_churn", 912_000, 12_000),
    Site::new("handoff_alloc", 72_000, 1000),
    Site::new("ring_alloc", 200 * 64 * (200 + 201 + 202 + 203), 51_200),
    Site::new("small_stack_leak", 5 * 24, 5),
];

fn check(fx: &Fixture, traced: &Traced, what: &str) {
    let leaks = traced.leaks();
    for site in LEAKED {
        assert_site(&leaks, fx, &format!("leaks ({what})"), site);
    }
    assert_no_site(&leaks, &format!("leaks ({what})"), "thread_churn");
    let top = traced.top("count");
    for site in ALLOCATED {
        assert_site(&top, fx, &format!("top --by count ({what})"), site);
    }
    // Not in the contract's minimum, but if summary reports threads it must count them all:
    // main, 6 workers, the consumer, 4 ring members and the small-stack thread.
    let summary = traced.summary();
    // A free replayed out of order would show up as a free of an unknown block.
    summary.assert_consistent(what);
    if let Some(threads) = summary.optional("threads") {
        assert!(threads >= 13, "summary threads {threads}, expected >= 13");
    }
}

fn run_both(program: &Program, what: &str) {
    let fx = fixture(FIXTURE);
    let plain = run_plain(program);
    plain.assert_code(0, what);
    assert!(
        plain.stdout.contains("address reused at once: yes"),
        "{what}: the fixture no longer exercises address reuse:\n{}",
        plain.stdout
    );
    // Races show up as flaky counts, so look more than once.
    for attempt in 1..=3 {
        let traced = run_traced(program);
        traced.output.assert_code(0, what);
        assert_eq!(
            traced.output.stdout, plain.stdout,
            "{what}: output changed under the preload"
        );
        check(fx, &traced, &format!("{what}, run {attempt}"));
    }
}

#[test]
fn threads_are_exact_with_glibc_defaults() {
    let fx = fixture(FIXTURE);
    run_both(&fx.program(&[]), "threads");
}

#[test]
fn threads_are_exact_when_freed_blocks_are_reused_immediately() {
    // Without the per-thread cache, a block that the consumer frees goes straight back to the
    // allocating thread's arena and is handed out again by its next malloc: the same address is
    // freed in one thread and allocated in another within microseconds, every time.
    let fx = fixture(FIXTURE);
    let program = fx
        .program(&[])
        .env("GLIBC_TUNABLES", "glibc.malloc.tcache_count=0");
    run_both(&program, "threads with tcache_count=0");
}

#[test]
fn a_moving_realloc_is_ordered_against_other_threads() {
    // See: fixtures/realloc_race.c. glibc frees the old block inside realloc, before realloc
    // returns, and the keeper thread is handed that address at once; if the trace puts the
    // realloc after the keeper's malloc of the same address, the replay frees the keeper's block
    // instead and its leak goes missing.
    let fx = fixture("realloc_race.c");
    let program = fx.program(&[]).env(
        "GLIBC_TUNABLES",
        "glibc.malloc.arena_max=1:glibc.malloc.tcache_count=0",
    );
    for attempt in 1..=3 {
        let what = format!("realloc_race, run {attempt}");
        let traced = run_traced(&program);
        traced.output.assert_code(0, &what);
        let leaks = traced.leaks();
        assert_site(
            &leaks,
            fx,
            &format!("leaks ({what})"),
            Site::new("race_keep", 40 * 100_000, 100_000),
        );
        assert_no_site(&leaks, &format!("leaks ({what})"), "race_small");
        assert_no_site(&leaks, &format!("leaks ({what})"), "race_grow");
        let top = traced.top("count");
        assert_site(
            &top,
            fx,
            &format!("top --by count ({what})"),
            Site::new("race_grow", 4000 * 100_000, 100_000),
        );
        traced.summary().assert_consistent(&what);
    }
}
