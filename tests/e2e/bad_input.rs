//! The analyzer on input that is not a whole trace: one `error: ...` line and exit 2 for what it
//! cannot read, a warning and a report for a trace cut short.

use memtrace_tests::{Site, analyze, assert_site, fixture, run_traced};

#[test]
fn unreadable_input_is_one_error_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.bin");
    std::fs::write(&empty, b"").unwrap();
    let garbage = dir.path().join("garbage.bin");
    std::fs::write(
        &garbage,
        b"this is not a memtrace trace, just some text\n".repeat(50),
    )
    .unwrap();
    let missing = dir.path().join("missing.bin");
    for path in [&empty, &garbage, &missing] {
        for report in ["summary", "top", "leaks"] {
            let out = analyze(&[report.as_ref(), path.as_os_str()]);
            let what = format!("memtrace-analyze {report} {}", path.display());
            out.assert_code(2, &what);
            let lines: Vec<&str> = out.stderr.lines().collect();
            assert!(
                lines.len() == 1 && lines[0].starts_with("error: "),
                "{what}: expected one line `error: ...` on stderr, got:\n{}",
                out.stderr
            );
            assert!(
                !out.stderr.contains("panicked"),
                "{what} panicked:\n{}",
                out.stderr
            );
        }
    }
}

#[test]
fn a_truncated_trace_is_read_up_to_its_last_complete_record() {
    let fx = fixture("threads.c");
    let traced = run_traced(&fx.program(&[]));
    traced.output.assert_code(0, "threads under the preload");
    let full = std::fs::read(&traced.trace).unwrap();
    // The file may end in zero padding (it grows in page-sized steps): cut inside the data.
    let data_len = full.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let cut = traced.dir.path().join("cut.bin");
    std::fs::write(&cut, &full[..data_len * 6 / 10]).unwrap();
    for report in ["summary", "top", "leaks"] {
        let out = analyze(&[report.as_ref(), cut.as_os_str()]);
        out.assert_code(
            0,
            &format!("memtrace-analyze {report} on a truncated trace"),
        );
        assert!(
            out.stderr.contains("warning"),
            "{report} on a truncated trace should warn, stderr:\n{}",
            out.stderr
        );
    }
    // The full trace still reads without a warning.
    let out = analyze(&["leaks".as_ref(), traced.trace.as_os_str()]);
    out.assert_code(0, "leaks on the full trace");
    assert!(
        !out.stderr.contains("warning"),
        "the full trace should read cleanly:\n{}",
        out.stderr
    );
    assert_site(
        &traced.leaks(),
        fx,
        "leaks",
        Site::new("thread_leak", 9100, 21),
    );
}
