//! Builds whole trace files in memory from records: the reference writer for tests of the format
//! and of the analyzer's reports (no process, no preload needed).
//!
//! It lays out chunks exactly as the preload does (FORMAT.md §3), with small chunks so that tests
//! cross chunk boundaries.

use crate::encode::{self, ChunkHeader, ChunkState};
use crate::record::{AllocKind, CHUNK_HEADER_SIZE, Frame, GRANULE, Header, ModuleInfo, Record};
use std::collections::BTreeMap;

struct OpenChunk {
    tid: u32,
    seq: u32,
    buf: Vec<u8>,
    used: usize,
    st: ChunkState,
    /// The last stack defined in this chunk (the base of a shared stack).
    last_stack: Vec<Frame>,
}

/// An in-memory trace writer. Records are appended per thread; [`TraceBuilder::finish`] returns the
/// file's bytes.
pub struct TraceBuilder {
    out: Vec<u8>,
    chunk_len: usize,
    open: BTreeMap<u32, OpenChunk>,
    last_time: BTreeMap<u32, u64>,
}

impl TraceBuilder {
    /// A trace with this header and one-granule chunks.
    pub fn new(header: &Header) -> TraceBuilder {
        TraceBuilder {
            out: encode::encode_file_header(header),
            chunk_len: GRANULE,
            open: BTreeMap::new(),
            last_time: BTreeMap::new(),
        }
    }

    /// A header for tests: pid 1, executable `/test`.
    pub fn test_header() -> Header {
        Header {
            pid: 1,
            ppid: 0,
            executable: "/test".into(),
            cmdline: vec!["/test".into()],
            start_unix_ns: 0,
            parent_trace: None,
            tool_version: "test".into(),
            fork_time_ns: None,
            sample_bytes: None,
        }
    }

    fn flush(&mut self, thread: u32) {
        if let Some(c) = self.open.remove(&thread) {
            self.out.extend_from_slice(&c.buf);
            self.open_next(thread, c.tid, c.seq + 1);
        }
    }

    fn open_next(&mut self, thread: u32, tid: u32, seq: u32) {
        let base_time = self.last_time.get(&thread).copied().unwrap_or(0);
        let mut buf = vec![0u8; self.chunk_len];
        let header = ChunkHeader {
            len: self.chunk_len as u32,
            thread,
            tid,
            seq,
            base_time,
        };
        encode::encode_chunk_header(&mut buf, &header);
        self.open.insert(
            thread,
            OpenChunk {
                tid,
                seq,
                buf,
                used: CHUNK_HEADER_SIZE,
                st: ChunkState::new(base_time),
                last_stack: Vec::new(),
            },
        );
    }

    /// Appends `record` to `thread`'s stream (tid = 1000 + thread). Panics if one record does not fit
    /// in an empty chunk (only huge stacks or payloads, which tests do not build).
    pub fn push(&mut self, thread: u32, record: &Record) -> &mut Self {
        if !self.open.contains_key(&thread) {
            self.open_next(thread, 1000 + thread, 0);
        }
        for attempt in 0..2 {
            let c = self.open.get_mut(&thread).expect("chunk is open");
            let out = &mut c.buf[c.used..];
            let st = &mut c.st;
            let n = match record {
                Record::Alloc {
                    time,
                    kind,
                    stack,
                    size,
                    addr,
                } => encode::encode_alloc(out, st, *time, *kind, *stack, *size, *addr),
                Record::Realloc {
                    time,
                    stack,
                    size,
                    old,
                    new,
                } => encode::encode_realloc(out, st, *time, *stack, *size, *old, *new),
                Record::Free { time, addr } => encode::encode_free(out, st, *time, *addr),
                Record::Stack { id, frames } => {
                    let n = encode::encode_stack(out, st, *id, frames, &c.last_stack);
                    if n.is_some() {
                        c.last_stack =
                            frames[..frames.len().min(crate::record::MAX_FRAMES)].to_vec();
                    }
                    n
                }
                Record::Module(m) => encode::encode_module(out, &encode::module_payload(m)),
                Record::PyCode(c) => encode::encode_py_code(out, &encode::py_code_payload(c)),
                Record::ModuleUnload { time, id } => {
                    encode::encode_module_unload(out, st, *time, *id)
                }
                Record::Mark { time, label } => {
                    encode::encode_mark(out, st, *time, label.as_bytes())
                }
                Record::ThreadName { name } => encode::encode_thread_name(out, name.as_bytes()),
                Record::End { time } => encode::encode_end(out, st, *time),
            };
            match n {
                Some(n) => {
                    c.used += n;
                    let t = c.st.time;
                    self.last_time.insert(thread, t);
                    return self;
                }
                None => {
                    assert!(attempt == 0, "record does not fit in an empty chunk");
                    self.flush(thread);
                }
            }
        }
        self
    }

    /// Appends an allocation by `malloc`.
    pub fn malloc(
        &mut self,
        thread: u32,
        time: u64,
        stack: u32,
        size: u64,
        addr: u64,
    ) -> &mut Self {
        self.push(
            thread,
            &Record::Alloc {
                time,
                kind: AllocKind::Malloc,
                stack,
                size,
                addr,
            },
        )
    }

    /// Appends a free.
    pub fn free(&mut self, thread: u32, time: u64, addr: u64) -> &mut Self {
        self.push(thread, &Record::Free { time, addr })
    }

    /// Appends a stack definition.
    pub fn stack(&mut self, thread: u32, id: u32, frames: &[Frame]) -> &mut Self {
        self.push(
            thread,
            &Record::Stack {
                id,
                frames: frames.to_vec(),
            },
        )
    }

    /// Appends a module record.
    pub fn module(&mut self, thread: u32, module: ModuleInfo) -> &mut Self {
        self.push(thread, &Record::Module(module))
    }

    /// The file's bytes: every open chunk is closed in thread order.
    pub fn finish(mut self) -> Vec<u8> {
        let open = std::mem::take(&mut self.open);
        for (_, c) in open {
            self.out.extend_from_slice(&c.buf);
        }
        self.out
    }
}
