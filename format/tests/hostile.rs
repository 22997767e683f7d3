//! The decoder and the reader on bytes nobody wrote: random record bytes inside valid chunks,
//! random chunk headers, random files behind a valid header. Nothing panics, every decode step
//! moves forward or stops (no loop without progress), and no count or length in the input makes
//! the reader allocate more than the input's own size allows.

use memtrace_format::builder::TraceBuilder;
use memtrace_format::decode::{Decoded, decode_record};
use memtrace_format::encode::{ChunkHeader, ChunkState, encode_chunk_header};
use memtrace_format::record::{CHUNK_HEADER_SIZE, GRANULE, HEADER_SIZE};
use memtrace_format::{Record, Trace};
use proptest::prelude::*;

/// A file: the test header, then chunks of `GRANULE` bytes each with a valid header and `bodies`
/// as their records (zero-padded or cut to fit).
fn file_with_chunk_bodies(bodies: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let mut bytes = TraceBuilder::new(&TraceBuilder::test_header()).finish();
    bytes.truncate(HEADER_SIZE);
    let mut seq = [0u32; 4];
    for (thread, body) in bodies {
        let mut chunk = vec![0u8; GRANULE];
        let s = &mut seq[*thread as usize % 4];
        assert!(encode_chunk_header(
            &mut chunk,
            &ChunkHeader {
                len: GRANULE as u32,
                thread: *thread,
                tid: 100 + thread,
                seq: *s,
                base_time: u64::from(*s) * 1000,
                packed: 0,
            }
        ));
        *s += 1;
        let n = body.len().min(GRANULE - CHUNK_HEADER_SIZE);
        chunk[CHUNK_HEADER_SIZE..CHUNK_HEADER_SIZE + n].copy_from_slice(&body[..n]);
        bytes.extend_from_slice(&chunk);
    }
    bytes
}

/// Reads every record of `bytes` both ways the reader offers; returns how many it yielded.
fn read_all(bytes: Vec<u8>) -> Option<usize> {
    let len = bytes.len();
    let trace = Trace::from_bytes(bytes, "hostile").ok()?;
    let _ = trace.last_time();
    let mut n = 0;
    let mut records = trace.records();
    for r in records.by_ref() {
        // A record takes at least one byte: more records than bytes would be a loop.
        n += 1;
        assert!(n <= len, "more records than bytes");
        if let Record::Stack { frames, .. } = &r.record {
            assert!(frames.len() <= len, "a stack of more frames than bytes");
        }
    }
    let _ = records.take_warnings();
    let mut m = 0;
    trace.records().for_each_ref(|_, _| m += 1);
    assert_eq!(n, m, "the iterator and for_each_ref disagree");
    Some(n)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// `decode_record` on any bytes from any position with any state: it returns a record and a
    /// position past the one it started from, within the data, or stops.
    #[test]
    fn decode_record_always_progresses_or_stops(
        data in prop::collection::vec(any::<u8>(), 0..600),
        start in 0usize..64,
        time: u64,
        addr: u64,
    ) {
        let mut st = ChunkState { time, addr, has_stack: false };
        let mut stack = Vec::new();
        let mut pos = start;
        let mut steps = 0;
        while let Decoded::Record(_, next) = decode_record(&data, pos, &mut st, &mut stack) {
            prop_assert!(next > pos, "no progress at {pos}");
            prop_assert!(next <= data.len(), "{next} past the end {}", data.len());
            pos = next;
            steps += 1;
            prop_assert!(steps <= data.len());
        }
    }

    /// Random record bytes in valid chunks of up to three threads: the reader never panics, and
    /// yields no more records than there are bytes.
    #[test]
    fn random_chunk_bodies_never_panic(
        bodies in prop::collection::vec(
            (1u32..4, prop::collection::vec(any::<u8>(), 0..700)), 0..6),
    ) {
        let bytes = file_with_chunk_bodies(&bodies);
        prop_assert!(read_all(bytes).is_some(), "a file with a valid header is a trace");
    }

    /// Random bytes (with the chunk magic sprinkled in, so that chunk headers with random lengths,
    /// threads and sequence numbers occur) behind a valid file header.
    #[test]
    fn random_files_behind_a_valid_header_never_panic(
        tail in prop::collection::vec(any::<u8>(), 0..20_000),
        magic_at in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut bytes = TraceBuilder::new(&TraceBuilder::test_header()).finish();
        bytes.truncate(HEADER_SIZE);
        let base = bytes.len();
        bytes.extend_from_slice(&tail);
        let chunk_magic = memtrace_format::record::CHUNK_MAGIC;
        for idx in magic_at {
            if tail.len() >= 4 {
                // Chunk headers are only looked for on granule boundaries.
                let at = base + (idx.index(tail.len() - 3) / GRANULE) * GRANULE;
                if at + 4 <= bytes.len() {
                    bytes[at..at + 4].copy_from_slice(&chunk_magic);
                }
            }
        }
        read_all(bytes);
    }

    /// A packed chunk whose frame is any bytes at all (FORMAT.md §3).
    #[test]
    fn random_packed_frames_never_panic(frame in prop::collection::vec(any::<u8>(), 0..2000)) {
        let mut bytes = file_with_chunk_bodies(&[(1, frame.clone())]);
        let packed = (frame.len() as u32).min((GRANULE - CHUNK_HEADER_SIZE) as u32);
        bytes[HEADER_SIZE + 20..HEADER_SIZE + 24].copy_from_slice(&packed.to_le_bytes());
        read_all(bytes);
    }

    /// Any bytes at all, header included.
    #[test]
    fn random_files_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..9000)) {
        read_all(bytes);
    }
}

#[test]
fn a_chunk_claiming_the_largest_length_reads_only_what_the_file_has() {
    // A header saying 16 MiB (the largest chunk) in a file of two granules: the reader must not
    // allocate or read past the file, and warns that the trace is cut.
    let mut bytes = file_with_chunk_bodies(&[(1, vec![0x7f, 0])]);
    let at = HEADER_SIZE + 4;
    let max = memtrace_format::record::MAX_CHUNK_SIZE as u32;
    bytes[at..at + 4].copy_from_slice(&max.to_le_bytes());
    let trace = Trace::from_bytes(bytes, "big").expect("a trace");
    assert!(
        trace.warnings().iter().any(|w| w.contains("truncated")),
        "{:?}",
        trace.warnings()
    );
    let mut records = trace.records();
    assert!(records.by_ref().count() <= 1);
}

#[test]
fn a_packed_chunk_that_does_not_unpack_is_skipped_with_a_warning() {
    let mut b = TraceBuilder::new(&TraceBuilder::test_header()).packed();
    b.malloc(1, 10, 0, 100, 0x1000)
        .malloc(2, 20, 0, 200, 0x2000);
    let good = b.finish();
    for at in [
        HEADER_SIZE + CHUNK_HEADER_SIZE,
        HEADER_SIZE + CHUNK_HEADER_SIZE + 9,
    ] {
        let mut bytes = good.clone();
        bytes[at] ^= 0x40;
        let trace = Trace::from_bytes(bytes, "flipped").expect("a trace");
        let sizes: Vec<Record> = trace.records().map(|r| r.record).collect();
        assert_eq!(
            sizes,
            vec![Record::Alloc {
                time: 20,
                kind: memtrace_format::AllocKind::Malloc,
                stack: 0,
                size: 200,
                addr: 0x2000
            }],
            "byte {at}"
        );
        let mut records = trace.records();
        records.by_ref().for_each(drop);
        let warnings = records.take_warnings();
        assert!(
            warnings.iter().any(|w| w.contains("does not unpack")),
            "byte {at}: {warnings:?}"
        );
    }
}
