//! Input that is not a readable trace is an error: exactly one `error:` line on stderr, nothing on
//! stdout, exit status 2, never a panic. A closed stdout is not an error.

use crate::support::*;
use memtrace_analyzer::ExitCode;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn bad_inputs() -> (tempfile::TempDir, Vec<(String, &'static str)>) {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    std::fs::write(p("empty"), b"").unwrap();
    std::fs::write(
        p("garbage"),
        b"this is not a trace at all, just some text\n",
    )
    .unwrap();
    let mut v4 = builder().finish();
    v4[8] = 4;
    std::fs::write(p("v4"), &v4).unwrap();
    let mut bad_header = builder().finish();
    bad_header[12..16].copy_from_slice(&5000u32.to_le_bytes());
    std::fs::write(p("badheader"), &bad_header).unwrap();
    let cases = vec![
        (p("missing"), "No such file"),
        (p("empty"), "is empty"),
        (dir.path().to_str().unwrap().to_owned(), "is a directory"),
        (p("garbage"), "not a memtrace trace"),
        (p("v4"), "format version 4"),
        (p("badheader"), "corrupt header"),
    ];
    (dir, cases)
}

#[test]
fn bad_input_is_one_error_line_and_status_2() {
    let (_dir, cases) = bad_inputs();
    for (path, needle) in &cases {
        for cmd in ["summary", "top", "leaks", "dump", "snapshot", "growth"] {
            let out = analyze(&[cmd, path]);
            assert_eq!(out.code, ExitCode::Error, "{cmd} {path}");
            assert_eq!(out.stdout, "", "{cmd} {path}");
            let lines: Vec<&str> = out.stderr.lines().collect();
            assert_eq!(lines.len(), 1, "{cmd} {path}: {}", out.stderr);
            assert!(lines[0].starts_with("error: "), "{}", lines[0]);
            assert!(lines[0].contains(needle), "{cmd} {path}: {}", lines[0]);
        }
    }
}

#[test]
fn the_binary_exits_2_without_a_panic() {
    let (_dir, cases) = bad_inputs();
    for (path, needle) in &cases {
        let out = Command::new(env!("CARGO_BIN_EXE_memtrace-analyze"))
            .args(["summary", path, "--format", "json"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{path}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(needle),
            "{stderr}"
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn the_wrong_version_names_both_versions() {
    let mut v9 = builder().finish();
    v9[8] = 9;
    let f = TraceFile::new(&v9);
    let out = analyze(&["summary", f.arg()]);
    assert!(
        out.stderr.contains("version 9") && out.stderr.contains("versions 1 to 3"),
        "{}",
        out.stderr
    );
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let out = analyze(&["frobnicate"]);
    assert_eq!(out.code, ExitCode::Error);
    assert!(out.stderr.starts_with("error:"), "{}", out.stderr);
    let out = analyze(&["top", "x", "--by", "nonsense"]);
    assert_eq!(out.code, ExitCode::Error);
    let out = analyze(&["--help"]).assert_code(ExitCode::Success);
    assert!(out.stdout.contains("EXAMPLES:"), "{}", out.stdout);
    let out = analyze(&["top", "--help"]).assert_code(ExitCode::Success);
    assert!(out.stdout.contains("--by"), "{}", out.stdout);
}

#[test]
fn a_closed_pipe_ends_quietly_with_success() {
    let mut b = builder();
    for i in 0..200_000u64 {
        b.malloc(1, i, 1, 16, 0x10000 + i * 16);
    }
    let f = TraceFile::new(&b.finish());
    let mut child = Command::new(env!("CARGO_BIN_EXE_memtrace-analyze"))
        .args(["dump", f.arg()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("header "), "{first}");
    // The read end is dropped here: the analyzer's next writes fail with EPIPE.
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}
