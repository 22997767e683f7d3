//! Builds whole trace files in memory from records: the reference writer for tests of the format
//! and of the analyzer's reports (no process, no preload needed).
//!
//! It lays out chunks exactly as the preload does (FORMAT.md §3), with small chunks so that tests
//! cross chunk boundaries.

use crate::encode::{self, ChunkHeader, ChunkState};
use crate::record::{AllocKind, CHUNK_HEADER_SIZE, Frame, GRANULE, Header, ModuleInfo, Record};
use std::collections::BTreeMap;

struct OpenChunk {
    header: ChunkHeader,
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
    /// Write full chunks packed (FORMAT.md §3), as the preload does.
    pack: bool,
}

impl TraceBuilder {
    /// A trace with this header and 4096-byte chunks (small, so tests cross chunk boundaries; big
    /// enough for any record a test builds).
    pub fn new(header: &Header) -> TraceBuilder {
        TraceBuilder {
            out: encode::encode_file_header(header),
            chunk_len: 4096,
            open: BTreeMap::new(),
            last_time: BTreeMap::new(),
            pack: false,
        }
    }

    /// The same trace with every chunk packed with zstd (FORMAT.md §3).
    pub fn packed(mut self) -> TraceBuilder {
        self.pack = true;
        self
    }

    /// Appends a closed chunk to the file, packed if asked.
    fn write_chunk(&mut self, mut c: OpenChunk) {
        if self.pack {
            let mut zstd = zstd::bulk::Compressor::new(1).expect("a zstd context");
            zstd.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))
                .expect("zstd takes the checksum flag");
            let frame = zstd
                .compress(&c.buf[CHUNK_HEADER_SIZE..c.used])
                .expect("zstd compresses in memory");
            let len = (CHUNK_HEADER_SIZE + frame.len()).next_multiple_of(GRANULE);
            let mut header = c.header;
            header.len = len as u32;
            header.packed = frame.len() as u32;
            c.buf = vec![0u8; len];
            encode::encode_chunk_header(&mut c.buf, &header);
            c.buf[CHUNK_HEADER_SIZE..CHUNK_HEADER_SIZE + frame.len()].copy_from_slice(&frame);
        }
        self.out.extend_from_slice(&c.buf);
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
            let (tid, seq) = (c.header.tid, c.header.seq);
            self.write_chunk(c);
            self.open_next(thread, tid, seq + 1);
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
            packed: 0,
        };
        encode::encode_chunk_header(&mut buf, &header);
        self.open.insert(
            thread,
            OpenChunk {
                header,
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
            self.write_chunk(c);
        }
        self.out
    }
}
