//! `fixtures/recurring_stacks.c`: one allocation site reached through five call chains in turn,
//! which share their innermost frames and differ further out. Most of these captures are answered
//! by a stack the thread captured recently (`preload/src/memo.rs`); each chain must still get
//! exactly its own calls and bytes. Run as the fixtures are built (frame pointers: the memo
//! replays the rules) and optimized without frame pointers (constant offsets: it reads the slots).

use memtrace_tests::{Entry, Fixture, at_innermost, fixture_with, render, run_traced};

const ROUNDS: u64 = 20000;

/// (bytes, calls) of the entries at `site` whose stack passes through `via`.
fn through(top: &[Entry], via: &str) -> (u64, u64) {
    at_innermost(top, "site")
        .into_iter()
        .filter(|e| e.stack.iter().any(|f| f.is_function(via)))
        .fold((0, 0), |(b, c), e| (b + e.bytes, c + e.count))
}

fn check(fx: &Fixture) {
    let traced = run_traced(&fx.program(&[&ROUNDS.to_string()]));
    traced
        .output
        .assert_code(0, "recurring_stacks under the preload");
    let top = traced.top("count");
    let n = ROUNDS;
    for (via, bytes, calls) in [
        ("via_a", 2 * n * 16, 2 * n),
        ("via_b", n * 32, n),
        ("via_vla", n * (48 + 64), 2 * n),
        ("via_deep", n * 80, n),
    ] {
        assert_eq!(
            through(&top, via),
            (bytes, calls),
            "{}: (bytes, calls) through {via}; entries:\n{}",
            fx.name,
            render(&top)
        );
    }
    // One stack per chain and call site in main: via_a is called from two lines, via_vla with
    // two pads. Each of them is called once a round.
    let at_site = at_innermost(&top, "site");
    assert_eq!(
        at_site.len(),
        6,
        "{}: stacks at site:\n{}",
        fx.name,
        render(at_site.iter().copied())
    );
    for e in &at_site {
        assert_eq!(e.count, n, "{}: {}", fx.name, render([*e]));
    }
    let leaks = traced.leaks();
    let leaked = at_innermost(&leaks, "site")
        .iter()
        .fold((0, 0), |(b, c), e| (b + e.bytes, c + e.count));
    assert_eq!(leaked, (16 + 32 + 48 + 16 + 64 + 80, 6), "{}", fx.name);
}

#[test]
fn each_chain_keeps_its_own_calls_with_frame_pointers() {
    check(fixture_with("recurring_stacks.c", &[]));
}

#[test]
fn each_chain_keeps_its_own_calls_without_frame_pointers() {
    check(fixture_with(
        "recurring_stacks.c",
        &["-O2", "-fomit-frame-pointer", "-fno-optimize-sibling-calls"],
    ));
}
