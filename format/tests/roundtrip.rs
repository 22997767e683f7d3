//! Round trips through the builder and the reader: what is written is read back, in time order,
//! across chunk boundaries and threads; truncated and corrupt files keep what precedes the damage.

use memtrace_format::builder::TraceBuilder;
use memtrace_format::{AllocKind, Frame, ReadError, Record, Trace};
use proptest::prelude::*;

fn arb_record(time: u64) -> impl Strategy<Value = Record> {
    prop_oneof![
        (0u8..7, any::<u32>(), any::<u64>(), any::<u64>()).prop_map(
            move |(k, stack, size, addr)| {
                Record::Alloc {
                    time,
                    kind: AllocKind::from_u8(k).unwrap(),
                    stack,
                    size,
                    addr,
                }
            }
        ),
        (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            move |(stack, size, old, new)| Record::Realloc {
                time,
                stack,
                size,
                old,
                new
            }
        ),
        any::<u64>().prop_map(move |addr| Record::Free { time, addr }),
        (
            any::<u32>(),
            prop::collection::vec((0u32..50, any::<u64>()), 0..40)
        )
            .prop_map(|(id, fr)| Record::Stack {
                id,
                frames: fr
                    .into_iter()
                    .map(|(module, offset)| Frame { module, offset })
                    .collect()
            }),
        "[a-z@ ]{0,40}".prop_map(move |label| Record::Mark { time, label }),
    ]
}

proptest! {
    #[test]
    fn one_thread_round_trips(records in prop::collection::vec(arb_record(0), 0..400)) {
        let mut b = TraceBuilder::new(&TraceBuilder::test_header());
        let records: Vec<Record> = records.into_iter().enumerate().map(|(i, r)| with_time(r, i as u64 * 7)).collect();
        for r in &records {
            b.push(1, r);
        }
        let trace = Trace::from_bytes(b.finish(), "t").unwrap();
        let got: Vec<Record> = trace.records().map(|r| r.record).collect();
        prop_assert_eq!(got, records);
    }
}

/// Stacks made of a few inner frames on one of three long outer parts, as real stacks are: most
/// are written as shared with the previous one (FORMAT.md §4.12), across chunk boundaries too.
fn arb_shared_stacks() -> impl Strategy<Value = Vec<Record>> {
    let tails: Vec<Vec<Frame>> = (0..3u64)
        .map(|t| {
            (0..20 + t * 5)
                .map(|i| Frame {
                    module: (i % 3) as u32 + 1,
                    offset: 0x1000 + i * 0x10 + t,
                })
                .collect()
        })
        .collect();
    prop::collection::vec(
        (
            0usize..3,
            prop::collection::vec((0u32..5, 0u64..4096), 0..6),
            0usize..25,
        ),
        1..300,
    )
    .prop_map(move |stacks| {
        stacks
            .into_iter()
            .enumerate()
            .map(|(i, (tail, inner, cut))| {
                let tail = &tails[tail];
                let mut frames: Vec<Frame> = inner
                    .into_iter()
                    .map(|(module, offset)| Frame { module, offset })
                    .collect();
                frames.extend_from_slice(&tail[cut.min(tail.len())..]);
                Record::Stack {
                    id: i as u32 + 1,
                    frames,
                }
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn shared_stacks_round_trip(stacks in arb_shared_stacks()) {
        let mut b = TraceBuilder::new(&TraceBuilder::test_header());
        for r in &stacks {
            b.push(1, r);
        }
        let bytes = b.finish();
        let trace = Trace::from_bytes(bytes, "t").unwrap();
        let got: Vec<Record> = trace.records().map(|r| r.record).collect();
        prop_assert_eq!(got, stacks);
        prop_assert!(trace.warnings().is_empty());
    }
}

#[test]
fn shared_stacks_are_smaller() {
    let outer: Vec<Frame> = (0..40)
        .map(|i| Frame {
            module: 1,
            offset: 0x4000 + i * 0x40,
        })
        .collect();
    let mut b = TraceBuilder::new(&TraceBuilder::test_header());
    for id in 1..=50u64 {
        let mut frames = vec![Frame {
            module: 2,
            offset: id,
        }];
        frames.extend_from_slice(&outer);
        b.push(
            1,
            &Record::Stack {
                id: id as u32,
                frames,
            },
        );
    }
    let bytes = b.finish();
    // 50 stacks of 41 frames in full would be about 50 * 41 * 3 = 6 KB; shared, the outer 40
    // frames are written once per chunk.
    let trace = Trace::from_bytes(bytes.clone(), "t").unwrap();
    assert_eq!(trace.records().count(), 50);
    assert!(
        bytes.len() <= 4096 + 2 * 4096,
        "{} bytes: stacks were not shared",
        bytes.len()
    );
}

fn with_time(r: Record, t: u64) -> Record {
    match r {
        Record::Alloc {
            kind,
            stack,
            size,
            addr,
            ..
        } => Record::Alloc {
            time: t,
            kind,
            stack,
            size,
            addr,
        },
        Record::Realloc {
            stack,
            size,
            old,
            new,
            ..
        } => Record::Realloc {
            time: t,
            stack,
            size,
            old,
            new,
        },
        Record::Free { addr, .. } => Record::Free { time: t, addr },
        Record::Mark { label, .. } => Record::Mark { time: t, label },
        other => other,
    }
}

#[test]
fn threads_merge_in_time_order() {
    let mut b = TraceBuilder::new(&TraceBuilder::test_header());
    // Thread 1 allocates at even times, thread 2 frees at odd times, across many chunks.
    for i in 0..5000u64 {
        b.malloc(1, i * 2, 1, 16, 0x1000 + i * 16);
        b.free(2, i * 2 + 1, 0x1000 + i * 16);
    }
    let bytes = b.finish();
    let trace = Trace::from_bytes(bytes, "t").unwrap();
    assert!(trace.chunk_count() > 4, "the test must cross chunks");
    let times: Vec<u64> = trace
        .records()
        .map(|r| match r.record {
            Record::Alloc { time, .. } | Record::Free { time, .. } => time,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(times, (0..10000).collect::<Vec<_>>());
}

#[test]
fn truncated_file_keeps_every_complete_record_and_warns() {
    let mut b = TraceBuilder::new(&TraceBuilder::test_header());
    for i in 0..3000u64 {
        b.malloc(1, i, 1, 100, 0x10000 + i * 128);
    }
    let bytes = b.finish();
    for cut in [
        4096 + 40,
        4096 + 4096 + 5,
        bytes.len() - 4096 + 60,
        bytes.len() - 1,
    ] {
        let trace = Trace::from_bytes(bytes[..cut].to_vec(), "t").unwrap();
        let mut recs = trace.records();
        let n = recs.by_ref().count() as u64;
        let warnings = recs.take_warnings();
        assert!(n > 0 && n <= 3000, "cut at {cut}: {n} records");
        if cut < bytes.len() - 4096 + 100 {
            assert!(n < 3000, "cut at {cut} must lose the records after it");
        }
        assert!(
            warnings.iter().any(|w| w.contains("no end record")),
            "{warnings:?}"
        );
        // The records kept are exactly the first n written.
        let trace = Trace::from_bytes(bytes[..cut].to_vec(), "t").unwrap();
        for (i, r) in trace.records().enumerate() {
            assert_eq!(
                r.record,
                Record::Alloc {
                    time: i as u64,
                    kind: AllocKind::Malloc,
                    stack: 1,
                    size: 100,
                    addr: 0x10000 + i as u64 * 128
                }
            );
        }
    }
}

#[test]
fn other_versions_are_refused_naming_both() {
    let mut bytes = TraceBuilder::new(&TraceBuilder::test_header()).finish();
    bytes[8] = 9;
    let err = Trace::from_bytes(bytes, "old.bin").err().unwrap();
    assert!(matches!(
        err,
        ReadError::UnsupportedVersion {
            found: 9,
            oldest: 1,
            newest: 3,
            ..
        }
    ));
    let msg = err.to_string();
    assert!(
        msg.contains("version 9") && msg.contains("versions 1 to 3"),
        "{msg}"
    );
}

#[test]
fn garbage_and_empty_inputs_are_errors() {
    assert!(matches!(
        Trace::from_bytes(vec![], "e"),
        Err(ReadError::Empty { .. })
    ));
    assert!(matches!(
        Trace::from_bytes(b"hello world, not a trace".to_vec(), "g"),
        Err(ReadError::BadMagic { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Flipped bytes anywhere: the reader never panics and never yields more records than were written.
    #[test]
    fn corrupt_bytes_never_panic(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..20)) {
        let mut b = TraceBuilder::new(&TraceBuilder::test_header());
        for i in 0..2000u64 {
            b.malloc(1 + (i % 3) as u32, i, (i % 5) as u32, i, 0x1000 + i * 32);
        }
        let mut bytes = b.finish();
        for (idx, v) in flips {
            let i = idx.index(bytes.len());
            bytes[i] ^= v | 1;
        }
        if let Ok(trace) = Trace::from_bytes(bytes, "c") {
            let mut recs = trace.records();
            let n = recs.by_ref().take(100_000).count();
            prop_assert!(n <= 2000 + 64);
        }
    }
}
