//! Packed chunks (FORMAT.md §3): the preload packs each full 64 KiB chunk with zstd and reuses it.
//! `fixtures/stress.c` on 4 threads fills hundreds of chunks, packed by threads at the same time.
//! A packed trace must hold exactly the records an unpacked one holds (the fixture's per-site calls
//! and bytes are fixed by its per-thread random sequence, whatever the interleaving), and stay
//! readable when the program is killed in the middle of packing. The fixture's random sizes and
//! addresses hardly compress, so the preload packs few chunks there (and the trace is barely
//! smaller, within the run-to-run variation of its interleaving); a CPython loop,
//! which repeats itself as real programs do, must come out at least 2.5x smaller (3.2-3.4x here).

use memtrace_format::decode::decode_chunk_header;
use memtrace_format::record::{GRANULE, HEADER_SIZE};
use memtrace_tests::{
    Program, artifacts, fixture, render, run_traced, sum_at_innermost, summary_of, which,
};
use std::path::Path;
use std::time::Duration;

const THREADS: u64 = 4;
const ALLOCS: u64 = 100_000;

/// (calls, bytes) allocated at stress_malloc and at stress_realloc, from `top --by bytes`.
fn site_totals(traced: &memtrace_tests::Traced) -> [(u64, u64); 2] {
    let top = traced.top("bytes");
    let sites = ["stress_malloc", "stress_realloc"].map(|f| sum_at_innermost(&top, f));
    assert!(
        sites[0].0 > 0,
        "no bytes at stress_malloc:\n{}",
        render(&top)
    );
    sites.map(|(bytes, calls)| (calls, bytes))
}

/// (packed, unpacked) chunks in the trace at `path`.
fn chunk_kinds(path: &Path) -> (usize, usize) {
    let bytes = std::fs::read(path).expect("trace");
    let (mut packed, mut plain, mut at) = (0, 0, HEADER_SIZE);
    while at < bytes.len() {
        match decode_chunk_header(&bytes[at..]) {
            Some(h) => {
                if h.packed == 0 {
                    plain += 1;
                } else {
                    packed += 1;
                }
                at += h.len as usize;
            }
            None => at += GRANULE,
        }
    }
    (packed, plain)
}

#[test]
fn packed_traces_hold_every_record() {
    let fx = fixture("stress.c");
    let program = fx.program(&[&THREADS.to_string(), &ALLOCS.to_string()]);
    let packed = run_traced(&program);
    packed.output.assert_code(0, "stress, packed");
    let plain = run_traced(&program.clone().env("MEMTRACE_COMPRESS", "0"));
    plain.output.assert_code(0, "stress, MEMTRACE_COMPRESS=0");
    for (traced, what) in [(&packed, "packed"), (&plain, "unpacked")] {
        traced.summary().assert_consistent(what);
    }
    let want = site_totals(&plain);
    assert_eq!(want[0].0, THREADS * ALLOCS, "stress_malloc calls");
    assert_eq!(
        want[1].0,
        THREADS * ALLOCS.div_ceil(8),
        "stress_realloc calls"
    );
    assert_eq!(
        site_totals(&packed),
        want,
        "packed against unpacked (calls, bytes) per site"
    );
    let (with, without) = (chunk_kinds(&packed.trace), chunk_kinds(&plain.trace));
    assert!(with.0 >= 2, "packed and unpacked chunks: {with:?}");
    assert_eq!(
        without.0, 0,
        "MEMTRACE_COMPRESS=0 packed chunks: {without:?}"
    );
}

#[test]
fn a_repetitive_program_packs_several_times_smaller() {
    let python = which("python3").expect("python3 on PATH (apt-get install python3)");
    let script = "rows = []\nfor i in range(200000):\n    rows.append({'id': i, 'name': 'row%d' % i})\n    if len(rows) > 1000:\n        rows = []\n";
    let program = Program::new(python)
        .args(["-c", script])
        .env("PYTHONMALLOC", "malloc");
    let packed = run_traced(&program);
    packed.output.assert_code(0, "python, packed");
    let plain = run_traced(&program.clone().env("MEMTRACE_COMPRESS", "0"));
    plain.output.assert_code(0, "python, MEMTRACE_COMPRESS=0");
    let size = |t: &memtrace_tests::Traced| std::fs::metadata(&t.trace).expect("trace").len();
    let (packed_len, plain_len) = (size(&packed), size(&plain));
    assert!(
        packed_len * 5 < plain_len * 2,
        "packed {packed_len} bytes, unpacked {plain_len}: not 2.5x smaller"
    );
    for (t, what) in [(&packed, "packed"), (&plain, "unpacked")] {
        t.summary().assert_consistent(what);
    }
    let calls = |t: &memtrace_tests::Traced| t.summary().get("alloc_calls");
    assert!(calls(&packed) > 400_000, "{} calls", calls(&packed));
}

#[test]
fn a_program_killed_while_packing_leaves_a_clean_trace() {
    let fx = fixture("stress.c");
    for delay_ms in [150, 300, 450] {
        let dir = tempfile::tempdir().expect("tempdir");
        let trace = dir.path().join("trace.bin");
        let mut child = fx
            .program(&["8", "1000000"])
            .env("LD_PRELOAD", &artifacts().preload)
            .env("MEMTRACE_OUTPUT", &trace)
            .env("MEMTRACE_QUIET", "1")
            .spawn();
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
        let (summary, stderr) = summary_of(&trace, "stress killed");
        // The only thing to warn about is the missing end record: no corrupt or skipped bytes.
        for line in stderr.lines().filter(|l| l.contains("warning")) {
            assert!(
                line.contains("end record") || line.contains("killed"),
                "killed after {delay_ms} ms: unexpected warning {line:?}\n{stderr}"
            );
        }
        for field in ["unmatched_frees", "unmatched_reallocs"] {
            assert_eq!(summary.get(field), 0, "killed after {delay_ms} ms: {field}");
        }
        assert!(
            summary.get("alloc_calls") > 10_000,
            "killed after {delay_ms} ms: only {} calls traced",
            summary.get("alloc_calls")
        );
    }
}
