//! The analyzer on input that is not a whole trace: one `error: ...` line and exit 2 for what it
//! cannot read, a warning and a report for a trace cut short; and for random bytes, a trace cut at
//! many offsets and traces with bytes changed at many positions, every report ends with 0, 1 or
//! 2, in bounded time, without a panic.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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

/// A small xorshift generator: the cases are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Every report on `path`, as JSON when `json` (else as text), with symbolization when `symbols`
/// (else `--no-symbols`): the exit code is 0, 1 or 2, nothing panics, and each run takes a
/// bounded time. `valid` is a sound trace for the other side of `diff`.
fn every_report_survives(path: &Path, valid: &Path, json: bool, symbols: bool, what: &str) {
    let p = path.as_os_str();
    let v = valid.as_os_str();
    let mut runs: Vec<Vec<&OsStr>> = vec![vec!["summary".as_ref(), p], vec!["dump".as_ref(), p]];
    let (a, b) = if json { (v, p) } else { (p, v) };
    for args in [
        &["top".as_ref(), p, "--by".as_ref(), "peak".as_ref()][..],
        &["leaks".as_ref(), p],
        &["snapshot".as_ref(), p],
        &["growth".as_ref(), p, "--points".as_ref(), "4".as_ref()],
        &["diff".as_ref(), a, b],
    ] {
        let mut args = args.to_vec();
        if !symbols {
            args.push("--no-symbols".as_ref());
        }
        runs.push(args);
    }
    for args in &mut runs {
        if json && args[0] != "dump" {
            args.extend([OsStr::new("--format"), OsStr::new("json")]);
        }
    }
    for args in runs {
        let start = Instant::now();
        let out = analyze(&args);
        let elapsed = start.elapsed();
        let cmd = args
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            matches!(out.status.code(), Some(0..=2)),
            "{what}: memtrace-analyze {cmd} exited with {}\n--- stderr\n{}",
            out.status,
            out.stderr
        );
        assert!(
            !out.stderr.contains("panicked"),
            "{what}: memtrace-analyze {cmd} panicked:\n{}",
            out.stderr
        );
        assert!(
            elapsed < Duration::from_secs(20),
            "{what}: memtrace-analyze {cmd} took {elapsed:?}"
        );
    }
}

/// Runs `cases` (path, description) on two threads.
fn survive_all(cases: &[(PathBuf, String)], valid: &Path) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((path, what)) = cases.get(i) else {
                        break;
                    };
                    // Symbolization (reading modules named by a corrupt trace) on every 4th case,
                    // JSON on every other; the decoder and the replay on all.
                    every_report_survives(path, valid, i % 2 == 1, i.is_multiple_of(4), what);
                }
            });
        }
    });
}

/// Files made from the valid trace `full`: cut at many offsets, with bytes changed at many
/// positions, with 0xffffffff written over a length or a count; written to `dir` as
/// `<prefix>...`.
fn corrupted(full: &[u8], dir: &Path, prefix: &str, rng: &mut Rng) -> Vec<(PathBuf, String)> {
    let data_len = full.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    assert!(
        data_len > 4096 + 1024,
        "{prefix}: the trace is too small to cut: {data_len} bytes"
    );
    let records = data_len - 4096;
    let mut cases = Vec::new();
    let mut add = |name: String, bytes: &[u8], what: String| {
        let path = dir.join(format!("{prefix}-{name}"));
        std::fs::write(&path, bytes).unwrap();
        cases.push((path, format!("{prefix}: {what}")));
    };
    // Random bytes behind the valid file header.
    for len in [1, 32, 4096, 70_000] {
        let mut bytes = full[..4096].to_vec();
        bytes.extend((0..len).map(|_| rng.next() as u8));
        add(
            format!("headed{len}"),
            &bytes,
            format!("a valid header and {len} random bytes"),
        );
    }
    // Cut in the header, at and around the first chunk's start, and inside the records.
    let mut cuts = vec![
        1,
        7,
        8,
        15,
        16,
        20,
        100,
        4095,
        4096,
        4097,
        4096 + 31,
        4096 + 32,
    ];
    cuts.extend((0..12).map(|_| 4096 + rng.below(records)));
    for cut in cuts {
        add(
            format!("cut{cut}"),
            &full[..cut],
            format!("the trace cut at byte {cut} of {data_len}"),
        );
    }
    // One byte changed at many positions (most in the records), and five at once.
    for k in 0..24 {
        let mut bytes = full.to_vec();
        let flips = if k % 8 == 7 { 5 } else { 1 };
        let mut at = Vec::new();
        for _ in 0..flips {
            let pos = if k % 5 == 0 {
                rng.below(4096)
            } else {
                4096 + rng.below(records)
            };
            bytes[pos] ^= (rng.below(255) + 1) as u8;
            at.push(pos);
        }
        add(
            format!("flip{k}"),
            &bytes,
            format!("the trace with bytes changed at {at:?}"),
        );
    }
    // A length or a count at its maximum.
    for k in 0..8 {
        let mut bytes = full.to_vec();
        let pos = 4096 + rng.below(records - 4);
        bytes[pos..pos + 4].fill(0xff);
        add(
            format!("ff{k}"),
            &bytes,
            format!("the trace with 0xffffffff at byte {pos}"),
        );
    }
    cases
}

#[test]
fn random_cut_and_corrupted_traces_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut cases: Vec<(PathBuf, String)> = Vec::new();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    cases.push((empty, "an empty file".into()));
    for len in [1, 16, 100, 4096, 4096 + 32, 70_000] {
        let path = dir.path().join(format!("random{len}"));
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        std::fs::write(&path, bytes).unwrap();
        cases.push((path, format!("{len} random bytes")));
    }
    // A single-threaded trace with every allocation function (module records, realloc chains),
    // and a 12-thread trace of many chunks.
    let mut valid = Vec::new();
    for (name, code) in [("alloc_kinds.c", 7), ("threads.c", 0)] {
        let fx = fixture(name);
        let traced = run_traced(&fx.program(&[]));
        traced.output.assert_code(code, name);
        let full = std::fs::read(&traced.trace).unwrap();
        cases.extend(corrupted(&full, dir.path(), name, &mut rng));
        valid.push(traced);
    }
    survive_all(&cases, &valid[0].trace);
}
