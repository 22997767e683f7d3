//! A trace is untrusted input. Module paths in it name files the symbolizer opens: a corrupt or
//! crafted trace naming `/dev/zero` (endless), a FIFO (open waits for a writer) or a directory must
//! leave that module's frames unresolved, with a warning, in bounded time and memory.

use crate::support::*;
use memtrace_analyzer::ExitCode;
use memtrace_format::{AllocKind, Frame};
use std::path::Path;
use std::time::{Duration, Instant};

fn trace_with_module_at(path: &Path) -> TraceFile {
    let mut b = builder();
    b.module(1, module(1, path, vec![]));
    b.stack(
        1,
        1,
        &[Frame {
            module: 1,
            offset: 0x1234,
        }],
    );
    alloc(&mut b, 1, 10, AllocKind::Malloc, 1, 100, 0x1000);
    end(&mut b, 1, 20);
    TraceFile::new(&b.finish())
}

fn check(path: &Path) {
    let trace = trace_with_module_at(path);
    for cmd in ["top", "leaks", "snapshot", "growth", "diff"] {
        let start = Instant::now();
        let mut args = vec![cmd, trace.arg()];
        if cmd == "diff" {
            args.push(trace.arg());
        }
        args.extend(["--format", "json"]);
        let out = analyze(&args).assert_code(ExitCode::Success);
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{cmd} with a module at {} took {:?}",
            path.display(),
            start.elapsed()
        );
        let json = out.json();
        let frame = &json["entries"][0]["stack"][0];
        assert_eq!(
            frame["function"],
            serde_json::Value::Null,
            "{cmd}: {json:#}"
        );
        assert!(
            out.stderr.contains("cannot read module"),
            "{cmd}: no warning about {}:\n{}",
            path.display(),
            out.stderr
        );
    }
}

#[test]
fn a_module_path_naming_dev_zero_is_not_read() {
    check(Path::new("/dev/zero"));
}

#[test]
fn a_module_path_naming_a_directory_is_not_read() {
    check(Path::new("/"));
}

#[test]
fn a_module_path_naming_a_fifo_is_not_opened() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        eprintln!("SKIPPED a_module_path_naming_a_fifo_is_not_opened: mkfifo failed");
        return;
    }
    check(&fifo);
}

/// Sizes near 2^64 in a corrupt trace: the totals saturate or wrap, but nothing overflows into a
/// panic (tests run with overflow checks) and every report still runs.
#[test]
fn sizes_near_the_maximum_do_not_overflow() {
    let mut b = builder();
    b.stack(1, 1, &[]);
    for i in 0..4u64 {
        alloc(
            &mut b,
            1,
            10 + i,
            AllocKind::Malloc,
            1,
            u64::MAX - i,
            0x1000 + 64 * i,
        );
    }
    realloc(&mut b, 1, 20, 1, u64::MAX, 0x1000, 0x9000);
    alloc(&mut b, 2, 21, AllocKind::Calloc, 7, u64::MAX / 3, 0x5000);
    b.free(1, 22, 0x1040);
    b.free(1, 23, 0x7777);
    end(&mut b, 1, 30);
    let trace = TraceFile::new(&b.finish());
    for args in [
        &["summary", trace.arg(), "--format", "json"][..],
        &["top", trace.arg(), "--by", "peak", "--no-symbols"],
        &["top", trace.arg(), "--by", "temporary", "--no-symbols"],
        &["leaks", trace.arg(), "--no-symbols", "--format", "json"],
        &["snapshot", trace.arg(), "--no-symbols"],
        &["growth", trace.arg(), "--no-symbols", "--format", "json"],
        &["diff", trace.arg(), trace.arg(), "--no-symbols"],
        &["dump", trace.arg()],
    ] {
        let out = analyze(args);
        assert!(
            matches!(out.code, ExitCode::Success | ExitCode::CheckFailed),
            "{args:?}: {:?}\n{}",
            out.code,
            out.stderr
        );
    }
}
