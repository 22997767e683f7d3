//! Arbitrary bytes through the trace reader: index the file, compute its last time, read every
//! record both ways (the iterator and `for_each_ref`), and check that they agree. Any panic,
//! overflow (cargo-fuzz builds with overflow checks), endless loop or huge allocation is a bug.
//!
//! The first byte picks how the input is used: as the whole file, or behind a valid file header
//! (so that the fuzzer spends its time in chunks and records rather than in the header).
#![no_main]

use libfuzzer_sys::fuzz_target;
use memtrace_format::builder::TraceBuilder;
use memtrace_format::record::HEADER_SIZE;
use memtrace_format::{Record, Trace};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let mut bytes = TraceBuilder::new(&TraceBuilder::test_header()).finish();
        bytes.truncate(HEADER_SIZE);
        bytes.extend_from_slice(rest);
        bytes
    };
    let len = bytes.len();
    let Ok(trace) = Trace::from_bytes(bytes, "fuzz") else {
        return;
    };
    let _ = trace.last_time();
    let _ = trace.threads();
    let mut records = trace.records();
    let mut n = 0usize;
    for r in records.by_ref() {
        n += 1;
        assert!(n <= len, "more records than bytes");
        if let Record::Stack { frames, .. } = &r.record {
            assert!(frames.len() <= len);
        }
    }
    let _ = records.take_warnings();
    let mut m = 0usize;
    trace.records().for_each_ref(|_, _| m += 1);
    assert_eq!(n, m, "the iterator and for_each_ref disagree");
});
