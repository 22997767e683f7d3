//! Times the trace reader alone, without any replay, to tell reader cost from analyzer cost:
//! `cargo run --release -p memtrace-analyzer --example read_only -- TRACE`. Prints the time of the
//! merged record stream (`Trace::records`), of its events in batches (`for_each_batch`) and of decoding every chunk in file order without merging.

use memtrace_format::decode::{Decoded, decode_chunk_header, decode_record};
use memtrace_format::encode::ChunkState;
use memtrace_format::record::{CHUNK_HEADER_SIZE, GRANULE, HEADER_SIZE};

fn main() {
    let path = std::env::args().nth(1).expect("usage: read_only TRACE");
    let t = std::time::Instant::now();
    let trace = memtrace_format::Trace::open(std::path::Path::new(&path)).unwrap();
    let n = trace.records().count();
    eprintln!("merged records: {n} in {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let mut sink = Count(0, 0);
    trace.records().for_each_batch(&mut sink);
    eprintln!(
        "merged events:  {} (+{} others) in {:?}",
        sink.0,
        sink.1,
        t.elapsed()
    );
    let bytes = std::fs::read(&path).unwrap();
    let t = std::time::Instant::now();
    let n = decode_all(&bytes);
    eprintln!("decode only:    {n} in {:?}", t.elapsed());
}

/// Counts what `for_each_batch` feeds it.
struct Count(usize, usize);

impl memtrace_format::RecordSink for Count {
    fn events(
        &mut self,
        events: &[memtrace_format::HeapEvent],
        _ahead: &[memtrace_format::HeapEvent],
    ) {
        std::hint::black_box(events);
        self.0 += events.len();
    }
    fn other(&mut self, _thread: u32, record: &memtrace_format::Record) {
        std::hint::black_box(record);
        self.1 += 1;
    }
}

/// Decodes every record of every chunk, in file order: the floor of any reader built on
/// `decode_record`.
fn decode_all(bytes: &[u8]) -> usize {
    let mut n = 0;
    let mut off = HEADER_SIZE;
    while off + CHUNK_HEADER_SIZE <= bytes.len() {
        let Some(h) = decode_chunk_header(&bytes[off..]) else {
            off += GRANULE;
            continue;
        };
        let end = (off + h.len as usize).min(bytes.len());
        let data = &bytes[off..end];
        let mut st = ChunkState::new(h.base_time);
        let mut stack = Vec::new();
        let mut pos = CHUNK_HEADER_SIZE;
        while let Decoded::Record(r, next) = decode_record(data, pos, &mut st, &mut stack) {
            std::hint::black_box(&r);
            n += 1;
            pos = next;
        }
        off += h.len as usize;
    }
    n
}
