//! `fixtures/dlopen.c`: blocks allocated inside a library loaded with `dlopen` (zlib's
//! `deflateInit_`) and leaked after the library was `dlclose`d still resolve to that library's
//! frames, below the fixture's calling line; the unload is recorded.

use memtrace_tests::{fixture, run_traced};

#[test]
fn frames_in_an_unloaded_library_still_symbolize() {
    let fx = fixture("dlopen.c");
    let traced = run_traced(&fx.program(&[]));
    traced.output.assert_code(0, "dlopen");
    let line = fx.site_line("open_and_leak");
    let leaks = traced.leaks();
    let from_zlib: Vec<_> = leaks
        .iter()
        .filter(|e| {
            e.stack
                .iter()
                .any(|f| f.module_name() == Some("libz.so.1") && f.is_function("deflateInit2_"))
                && e.stack
                    .iter()
                    .any(|f| f.is_function("open_and_leak") && f.line == Some(line))
        })
        .collect();
    // zlib 1.2.x's deflateInit allocates its state and four 64 KiB buffers (window, prev, head,
    // pending) at the default window and memory levels.
    let sizes: Vec<u64> = from_zlib.iter().map(|e| e.bytes).collect();
    let blocks: u64 = from_zlib.iter().map(|e| e.count).sum();
    assert_eq!(
        blocks, 5,
        "blocks leaked from deflateInit2_: {sizes:?}\n{leaks:#?}"
    );
    assert_eq!(
        sizes.iter().filter(|&&b| b == 65536).count(),
        4,
        "four 64 KiB buffers from deflateInit2_: {sizes:?}"
    );
    let summary = traced.summary();
    assert_eq!(summary.get("module_unloads"), 1, "{:#}", summary.0);
    summary.assert_consistent("dlopen");
}
