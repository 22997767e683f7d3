//! `fixtures/edge_cases.c`: malloc(0), free(NULL), realloc(NULL, n), realloc(p, 0), overflowing
//! calloc and reallocarray, impossible sizes, bad alignments, and errno across traced calls. The
//! program prints what libc returned; the output must be the same traced and untraced, and the
//! trace must hold exactly the allocations that succeeded.

use memtrace_tests::{
    Site, assert_no_site, assert_site, fixture, render, run_plain, run_traced, sum_at_innermost,
};

const FIXTURE: &str = "edge_cases.c";

/// Lines whose content does not depend on the glibc version (aligned_alloc with a bad alignment
/// does: 2.36 rounds it up, 2.38 fails; that line is only compared with the untraced run).
const EXPECTED_LINES: &[&str] = &[
    "malloc(0) non-null=1",
    "realloc(NULL, 777) non-null=1 usable>=777: 1",
    "realloc(p, 0) null=1 errno=0",
    "errno after malloc: 1234",
    "errno after free: 4321",
    "errno after free(NULL): 1234",
    "calloc overflow null=1 errno=ENOMEM",
    "malloc(SIZE_MAX) null=1 errno=ENOMEM",
    "reallocarray overflow null=1 errno=ENOMEM",
    "posix_memalign(align 3) rc=EINVAL untouched=1 errno=0",
    "posix_memalign(align 24) rc=EINVAL untouched=1",
    "posix_memalign(huge) rc=ENOMEM untouched=1",
    "memalign(huge) null=1 errno=ENOMEM",
    "kept 2 blocks",
];

#[test]
fn libc_semantics_are_unchanged_under_the_preload() {
    let fx = fixture(FIXTURE);
    let plain = run_plain(&fx.program(&[]));
    plain.assert_code(3, "edge_cases");
    let traced = run_traced(&fx.program(&[]));
    traced.output.assert_code(3, "edge_cases under the preload");
    assert_eq!(
        traced.output.stdout, plain.stdout,
        "edge_cases printed something else under the preload"
    );
    for line in EXPECTED_LINES {
        assert!(
            traced.output.stdout.lines().any(|l| l == *line),
            "expected the line {line:?} from edge_cases under the preload:\n{}",
            traced.output.stdout
        );
    }
}

#[test]
fn edge_case_allocations_are_recorded_exactly() {
    let fx = fixture(FIXTURE);
    let traced = run_traced(&fx.program(&[]));
    traced.output.assert_code(3, "edge_cases under the preload");

    let leaks = traced.leaks();
    // A zero-byte block is still a block: live at exit, one of them, zero bytes.
    assert_site(&leaks, fx, "leaks", Site::new("leak_zero_malloc", 0, 1));
    assert_site(&leaks, fx, "leaks", Site::new("realloc_from_null", 777, 1));
    // realloc(p, 0) freed p; errno_kept freed its block.
    assert_no_site(&leaks, "leaks", "realloc_to_zero");
    assert_no_site(&leaks, "leaks", "errno_kept");

    let top = traced.top("count");
    assert_site(
        &top,
        fx,
        "top --by count",
        Site::new("realloc_to_zero", 3030, 1),
    );
    assert_site(&top, fx, "top --by count", Site::new("errno_kept", 4040, 1));
    // Failed calls allocate nothing and are not allocations. The one call in failures() that may
    // succeed is aligned_alloc(3, 48), depending on the glibc version.
    let aligned_alloc_succeeded = traced.output.stdout.contains("aligned_alloc(3, 48) null=0");
    let n = u64::from(aligned_alloc_succeeded);
    assert_eq!(
        sum_at_innermost(&top, "failures"),
        (48 * n, n),
        "top --by count: failures() made {n} successful allocation(s):\n{}",
        render(&top)
    );
}
