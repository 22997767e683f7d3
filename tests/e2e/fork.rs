//! `fixtures/fork.c`: a forked child is traced into its own file, next to its parent's, and the
//! two traces never share an event: the parent's holds what the parent did before and after the
//! fork, the child's holds the child's allocations and names the parent's trace in its header. The
//! child's analysis starts from the heap it inherited, so its frees of inherited blocks match.

use memtrace_tests::{Site, analyze_json, assert_site, at_innermost, entries, fixture, run_traced};

const FIXTURE: &str = "fork.c";
const BEFORE: Site<'static> = Site::new("before_fork", 1111, 1);
const CHILD: Site<'static> = Site::new("in_child", 2 * 2222, 2);
const AFTER: Site<'static> = Site::new("after_fork", 3333, 1);

#[test]
fn a_forked_child_has_its_own_trace_and_the_parent_none_of_its_events() {
    let fx = fixture(FIXTURE);
    let traced = run_traced(&fx.program(&[]));
    traced.output.assert_code(0, "fork");
    let child_pid: u32 = traced
        .output
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("child "))
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("fork printed no child pid:\n{}", traced.output.stdout));
    assert!(
        traced.output.stdout.contains("parent: child exited 3"),
        "the child's exit status changed under the preload:\n{}",
        traced.output.stdout
    );

    let parent = traced.leaks();
    assert_site(&parent, fx, "parent leaks", BEFORE);
    assert_site(&parent, fx, "parent leaks", AFTER);
    assert!(
        at_innermost(&parent, CHILD.function).is_empty(),
        "the parent's trace holds the child's allocations"
    );

    // MEMTRACE_OUTPUT has no %p: the child writes `<output>.<child pid>`.
    let child_trace = traced
        .trace
        .with_file_name(format!("trace.bin.{child_pid}"));
    assert!(
        child_trace.is_file(),
        "no child trace at {}",
        child_trace.display()
    );
    let child = entries(&analyze_json(&[
        "leaks".as_ref(),
        child_trace.as_os_str(),
        "--format".as_ref(),
        "json".as_ref(),
    ]));
    assert_site(&child, fx, "child leaks", CHILD);
    for site in [BEFORE, AFTER] {
        assert!(
            at_innermost(&child, site.function).is_empty(),
            "the child's trace holds {}, which it did not allocate",
            site.function
        );
    }
    let summary = analyze_json(&[
        "summary".as_ref(),
        child_trace.as_os_str(),
        "--format".as_ref(),
        "json".as_ref(),
    ]);
    assert_eq!(summary["pid"].as_u64(), Some(u64::from(child_pid)));
    assert_eq!(
        summary["parent_trace"].as_str(),
        traced.trace.to_str(),
        "the child's header names its parent's trace"
    );
    assert_eq!(summary["ended"].as_bool(), Some(true));
    // The child inherited the parent's heap at the fork (before_fork's block and the 3 shared
    // ones) and freed two shared blocks: matched, not unmatched.
    let int = |name: &str| {
        summary[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name}: {summary:#}"))
    };
    assert_eq!(
        (int("inherited_blocks"), int("inherited_bytes")),
        (4, 1111 + 3 * 3000)
    );
    assert_eq!(int("inherited_freed"), 2);
    assert_eq!(int("unmatched_frees"), 0);
    assert_eq!(int("free_calls"), 2);
}
