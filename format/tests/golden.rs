//! The compatibility contract: a fixed trace encoded by this crate must equal the checked-in bytes of
//! `tests/data/v3-basic.bin`, and those bytes must decode to the same records; the same trace with
//! packed chunks, `tests/data/v3-packed.bin`, must decode to them too (its bytes depend on the zstd
//! library's version, so they are read, not compared). Set `MEMTRACE_BLESS=1` to rewrite both after
//! a deliberate format change (which also needs a version bump, FORMAT.md §7, unless it only appends
//! a header field). Traces of earlier versions and earlier writers stay readable:
//! `tests/data/v2-basic.bin` is the same trace as version 2 wrote it, `tests/data/v1-basic.bin`
//! (without its Python records) as version 1 did, and `tests/data/v1-first-release.bin` as the
//! first release did, before `fork_time_ns` was appended to the header (`sample_bytes` came with
//! version 2).

use memtrace_format::builder::TraceBuilder;
use memtrace_format::encode::encode_free_chunk;
use memtrace_format::record::HEADER_SIZE;
use memtrace_format::record::line_table;
use memtrace_format::{
    AllocKind, Frame, Header, ModuleInfo, PyCodeInfo, PyFrame, Record, Segment, Trace,
};

/// The golden trace's records as version 1 has them: no Python records, no shared stack (stack 3
/// is written as sharing its outer frames with stack 1).
fn records_v1() -> Vec<(u32, Record)> {
    records()
        .into_iter()
        .filter(|(_, r)| match r {
            Record::PyCode(_) => false,
            Record::Stack { id, .. } => *id == 1,
            _ => true,
        })
        .collect()
}

fn records() -> Vec<(u32, Record)> {
    vec![
        (
            1,
            Record::Module(ModuleInfo {
                id: 1,
                path: "/usr/bin/example".into(),
                bias: 0x5555_5555_0000,
                segments: vec![Segment {
                    vaddr: 0x1000,
                    memsz: 0x2000,
                    flags: 5,
                }],
                build_id: vec![0xab, 0xcd],
            }),
        ),
        (
            1,
            Record::Stack {
                id: 1,
                frames: vec![
                    Frame {
                        module: 1,
                        offset: 0x1234,
                    },
                    Frame {
                        module: 0,
                        offset: 0x7fff_0000,
                    },
                ],
            },
        ),
        (
            2,
            Record::PyCode(PyCodeInfo {
                id: 1,
                name: "load".into(),
                qualname: "Loader.load".into(),
                filename: "app.py".into(),
                first_line: 40,
                line_table_kind: line_table::LOCATIONS_311,
                line_table: vec![0x80, 0x00, 0xd8, 0x04, 0x05],
            }),
        ),
        (
            2,
            Record::Stack {
                id: 2,
                frames: vec![
                    Frame {
                        module: 1,
                        offset: 0x1234,
                    },
                    Frame::python(PyFrame {
                        code: 1,
                        instruction: 6,
                    }),
                    Frame {
                        module: 1,
                        offset: 0x1800,
                    },
                ],
            },
        ),
        (
            1,
            Record::Stack {
                id: 3,
                frames: vec![
                    Frame {
                        module: 1,
                        offset: 0x1999,
                    },
                    Frame {
                        module: 1,
                        offset: 0x1234,
                    },
                    Frame {
                        module: 0,
                        offset: 0x7fff_0000,
                    },
                ],
            },
        ),
        (
            1,
            Record::Alloc {
                time: 100,
                kind: AllocKind::Malloc,
                stack: 1,
                size: 64,
                addr: 0x5555_6000_0010,
            },
        ),
        (
            2,
            Record::Alloc {
                time: 150,
                kind: AllocKind::Calloc,
                stack: 1,
                size: 30,
                addr: 0x5555_6000_0100,
            },
        ),
        (
            1,
            Record::Realloc {
                time: 200,
                stack: 1,
                size: 128,
                old: 0x5555_6000_0010,
                new: 0x5555_6000_0200,
            },
        ),
        (
            2,
            Record::Free {
                time: 250,
                addr: 0x5555_6000_0100,
            },
        ),
        (
            1,
            Record::Mark {
                time: 300,
                label: "before".into(),
            },
        ),
        (
            2,
            Record::ThreadName {
                name: "worker".into(),
            },
        ),
        (2, Record::ModuleUnload { time: 350, id: 1 }),
        (1, Record::End { time: 400 }),
    ]
}

fn header() -> Header {
    Header {
        pid: 4242,
        ppid: 1,
        executable: "/usr/bin/example".into(),
        cmdline: vec!["example".into(), "--flag".into()],
        start_unix_ns: 1_700_000_000_000_000_000,
        parent_trace: None,
        tool_version: "golden".into(),
        fork_time_ns: Some(123_456),
        sample_bytes: Some(65_536),
    }
}

fn build(packed: bool) -> Vec<u8> {
    let mut b = TraceBuilder::new(&header());
    if packed {
        b = b.packed();
    }
    for (thread, r) in records() {
        b.push(thread, &r);
    }
    b.finish()
}

fn data_file(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

#[test]
fn v3_basic_matches_checked_in_bytes() {
    let bytes = build(false);
    let path = data_file("v3-basic.bin");
    if std::env::var_os("MEMTRACE_BLESS").is_some() {
        std::fs::write(&path, &bytes).unwrap();
    }
    let golden =
        std::fs::read(&path).expect("tests/data/v3-basic.bin (MEMTRACE_BLESS=1 creates it)");
    assert!(
        bytes == golden,
        "the encoding changed: if deliberate, bump FORMAT_VERSION and re-bless with MEMTRACE_BLESS=1"
    );
    let trace = Trace::from_bytes(golden, "v3-basic.bin").unwrap();
    assert_eq!(trace.version(), 3);
    assert_eq!(trace.header(), &header());
    assert!(trace.warnings().is_empty(), "{:?}", trace.warnings());
    assert_same_records(&trace, &records());
}

#[test]
fn a_packed_trace_reads_the_same() {
    let path = data_file("v3-packed.bin");
    if std::env::var_os("MEMTRACE_BLESS").is_some() {
        std::fs::write(&path, build(true)).unwrap();
    }
    let bytes = std::fs::read(&path).expect("tests/data/v3-packed.bin (MEMTRACE_BLESS=1)");
    let trace = Trace::from_bytes(bytes, "v3-packed.bin").unwrap();
    assert_eq!(trace.chunk_count(), 2);
    assert!(trace.warnings().is_empty(), "{:?}", trace.warnings());
    assert_same_records(&trace, &records());
    // What the preload's writer may leave: a free chunk, and a full chunk beside its packed copy.
    let plain = build(false);
    let mut both = plain.clone();
    both.extend_from_slice(&std::fs::read(&path).unwrap()[HEADER_SIZE..]);
    let mut free = vec![0u8; 1024];
    assert!(encode_free_chunk(&mut free, 1024));
    free[700] = 0xee;
    both.extend_from_slice(&free);
    let trace = Trace::from_bytes(both, "both").unwrap();
    assert_eq!(trace.chunk_count(), 2);
    assert!(trace.warnings().is_empty(), "{:?}", trace.warnings());
    assert_same_records(&trace, &records());
}

#[test]
fn a_version_2_trace_still_reads() {
    let trace = Trace::from_bytes(std::fs::read(data_file("v2-basic.bin")).unwrap(), "v2").unwrap();
    assert_eq!(trace.version(), 2);
    assert_eq!(trace.header(), &header());
    assert!(trace.warnings().is_empty(), "{:?}", trace.warnings());
    assert_same_records(&trace, &records());
}

#[test]
fn a_version_1_trace_still_reads() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/v1-basic.bin");
    let trace = Trace::from_bytes(std::fs::read(&path).unwrap(), "v1-basic.bin").unwrap();
    assert_eq!(trace.version(), 1);
    let want = Header {
        sample_bytes: None,
        ..header()
    };
    assert_eq!(trace.header(), &want);
    assert!(trace.warnings().is_empty(), "{:?}", trace.warnings());
    assert_same_records(&trace, &records_v1());
}

#[test]
fn python_frames_round_trip_through_the_frame_form() {
    let py = PyFrame {
        code: 0xffff_fffe,
        instruction: 0x1234_5678,
    };
    let f = Frame::python(py);
    assert_eq!(f.as_python(), Some(py));
    assert_eq!(
        Frame {
            module: 3,
            offset: 9
        }
        .as_python(),
        None
    );
}

/// The trace's records equal `want`, thread by thread.
fn assert_same_records(trace: &Trace, want: &[(u32, Record)]) {
    let got: Vec<(u32, Record)> = trace.records().map(|r| (r.thread, r.record)).collect();
    // Merged by time: untimed records take their thread's time, so compare per thread.
    for t in [1, 2] {
        let want: Vec<Record> = want
            .iter()
            .filter(|(th, _)| *th == t)
            .map(|(_, r)| r.clone())
            .collect();
        let have: Vec<Record> = got
            .iter()
            .filter(|(th, _)| *th == t)
            .map(|(_, r)| r.clone())
            .collect();
        assert_eq!(have, want, "thread {t}");
    }
}

#[test]
fn a_first_release_trace_still_reads() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/v1-first-release.bin");
    let bytes = std::fs::read(&path).expect("tests/data/v1-first-release.bin");
    let trace = Trace::from_bytes(bytes, "v1-first-release.bin").unwrap();
    let want = Header {
        fork_time_ns: None,
        sample_bytes: None,
        ..header()
    };
    assert_eq!(trace.header(), &want);
    let got: Vec<Record> = trace.records().map(|r| r.record).collect();
    assert_eq!(got.len(), records_v1().len());
    assert!(trace.warnings().is_empty(), "{:?}", trace.warnings());
}
