//! `fixtures/descriptors.c`: a program that closes the tracer's descriptor and puts its own file
//! at every descriptor number. The tracer must never write to the program's file, and keeps
//! tracing by opening its trace again by path.

use memtrace_tests::{Site, assert_site, fixture, run_traced};

#[test]
fn a_file_put_at_every_descriptor_number_is_never_written() {
    let fx = fixture("descriptors.c");
    let dir = tempfile::tempdir().expect("tempdir");
    let victim = dir.path().join("victim.txt");
    let content = "the program's own data\n".repeat(100);
    std::fs::write(&victim, &content).expect("write victim");
    let traced = run_traced(&fx.program(&[victim.to_str().expect("utf-8 path")]));
    traced.output.assert_code(0, "descriptors");
    assert_eq!(traced.output.stdout, "done\n");
    assert_eq!(
        std::fs::read_to_string(&victim).expect("read victim"),
        content,
        "the program's file was modified under the preload"
    );
    let summary = traced.summary();
    summary.assert_consistent("descriptors");
    assert_eq!(summary.get("free_calls"), 400_000);
    assert_site(
        &traced.leaks(),
        fx,
        "leaks",
        Site::new("leak_after_dup2", 7777, 1),
    );
}
