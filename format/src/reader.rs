//! Opens a trace file, indexes its chunks per thread, and merges the threads' record streams into
//! one stream in time order (FORMAT.md §5, §6).
//!
//! The file is read a chunk at a time with positioned reads and decoded lazily: memory grows with the
//! number of chunks and threads, never with the number of records, so multi-gigabyte traces stream. Everything that is wrong inside
//! an opened trace (a torn tail, a corrupt chunk) becomes a warning, and the records before it are kept.

use crate::decode::{Decoded, bincode_read, decode_chunk_header, decode_record};
use crate::encode::{ChunkHeader, ChunkState};
use crate::error::ReadError;
use crate::record::{
    CHUNK_HEADER_SIZE, FILE_MAGIC, FORMAT_VERSION, GRANULE, HEADER_SIZE, Header, Record,
};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::path::Path;

/// The bytes of a trace: a file read with positioned reads, or an owned buffer (tests).
enum Bytes {
    File { file: std::fs::File, len: usize },
    Owned(Vec<u8>),
}

impl Bytes {
    fn len(&self) -> usize {
        match self {
            Bytes::File { len, .. } => *len,
            Bytes::Owned(v) => v.len(),
        }
    }

    /// Fills `buf` with bytes from `offset`, fewer where the file ends (or shrank under us).
    fn read_at(&self, offset: usize, buf: &mut Vec<u8>, len: usize) {
        buf.clear();
        let end = offset.saturating_add(len).min(self.len());
        if offset >= end {
            return;
        }
        match self {
            Bytes::Owned(v) => buf.extend_from_slice(&v[offset..end]),
            Bytes::File { file, .. } => {
                use std::os::unix::fs::FileExt;
                buf.resize(end - offset, 0);
                let mut done = 0;
                while done < buf.len() {
                    match file.read_at(&mut buf[done..], (offset + done) as u64) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => done += n,
                    }
                }
                buf.truncate(done);
            }
        }
    }
}

/// Where one chunk lies in the file.
#[derive(Clone, Copy, Debug)]
struct ChunkRef {
    offset: usize,
    /// Bytes of the chunk present in the file (less than the header's length when the file was cut).
    len: usize,
    header: ChunkHeader,
}

/// All chunks of one thread, in sequence order.
#[derive(Debug)]
struct ThreadChunks {
    thread: u32,
    tid: u32,
    chunks: Vec<ChunkRef>,
}

/// An opened trace: its header and its chunk index.
pub struct Trace {
    bytes: Bytes,
    header: Header,
    threads: Vec<ThreadChunks>,
    warnings: Vec<String>,
}

/// A thread of the traced process, as the trace names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadInfo {
    /// Index within the trace, from 1.
    pub thread: u32,
    /// OS thread id.
    pub tid: u32,
}

impl Trace {
    /// Opens and indexes the trace at `path`.
    pub fn open(path: &Path) -> Result<Trace, ReadError> {
        let name = path.display().to_string();
        let io = |source| ReadError::Io {
            path: name.clone(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if meta.is_dir() {
            return Err(io(std::io::Error::other("is a directory")));
        }
        if meta.len() == 0 {
            return Err(ReadError::Empty { path: name });
        }
        let len = usize::try_from(meta.len()).unwrap_or(usize::MAX);
        Self::index(Bytes::File { file, len }, name)
    }

    /// Indexes a trace held in memory; `name` is used in messages.
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> Result<Trace, ReadError> {
        if bytes.is_empty() {
            return Err(ReadError::Empty { path: name.into() });
        }
        Self::index(Bytes::Owned(bytes), name.into())
    }

    fn index(bytes: Bytes, path: String) -> Result<Trace, ReadError> {
        let mut head = Vec::new();
        bytes.read_at(0, &mut head, HEADER_SIZE);
        if head.len() < 16 || head[..8] != FILE_MAGIC {
            return Err(ReadError::BadMagic { path });
        }
        let version = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        if version != FORMAT_VERSION {
            return Err(ReadError::UnsupportedVersion {
                path,
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let hlen = u32::from_le_bytes([head[12], head[13], head[14], head[15]]) as usize;
        if 16 + hlen > HEADER_SIZE {
            return Err(ReadError::BadHeader {
                path,
                reason: format!("header length {hlen} exceeds {HEADER_SIZE} bytes"),
            });
        }
        let header: Header = head
            .get(16..16 + hlen)
            .and_then(bincode_read)
            .ok_or_else(|| ReadError::BadHeader {
                path: path.clone(),
                reason: "cut short or undecodable".into(),
            })?;

        let mut warnings = Vec::new();
        let mut by_thread: BTreeMap<u32, ThreadChunks> = BTreeMap::new();
        let mut skipped = 0usize;
        let mut off = HEADER_SIZE;
        let mut buf = Vec::new();
        while off + CHUNK_HEADER_SIZE <= bytes.len() {
            bytes.read_at(off, &mut buf, CHUNK_HEADER_SIZE);
            match decode_chunk_header(&buf) {
                Some(h) => {
                    let want = h.len as usize;
                    let len = want.min(bytes.len() - off);
                    if len < want {
                        warnings.push(format!(
                            "the trace is truncated: its last chunk (at byte {off}) is cut short; \
                             records up to the cut are used"
                        ));
                    }
                    by_thread
                        .entry(h.thread)
                        .or_insert_with(|| ThreadChunks {
                            thread: h.thread,
                            tid: h.tid,
                            chunks: Vec::new(),
                        })
                        .chunks
                        .push(ChunkRef {
                            offset: off,
                            len,
                            header: h,
                        });
                    off += want;
                }
                None => {
                    bytes.read_at(off, &mut buf, GRANULE);
                    if buf.iter().any(|&b| b != 0) {
                        skipped += buf.len();
                    }
                    off += GRANULE;
                }
            }
        }
        if skipped > 0 {
            warnings.push(format!(
                "skipped {skipped} bytes of the trace that are not valid chunks (corrupt data)"
            ));
        }
        let mut threads: Vec<ThreadChunks> = by_thread.into_values().collect();
        for t in &mut threads {
            t.chunks.sort_by_key(|c| (c.header.seq, c.offset));
        }
        Ok(Trace {
            bytes,
            header,
            threads,
            warnings,
        })
    }

    /// The file header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The threads that wrote records, by trace index.
    pub fn threads(&self) -> Vec<ThreadInfo> {
        self.threads
            .iter()
            .map(|t| ThreadInfo {
                thread: t.thread,
                tid: t.tid,
            })
            .collect()
    }

    /// Size of the trace in bytes.
    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Number of chunks in the trace.
    pub fn chunk_count(&self) -> usize {
        self.threads.iter().map(|t| t.chunks.len()).sum()
    }

    /// Problems found while indexing (a truncated tail, corrupt regions).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// All records of all threads, merged in time order (FORMAT.md §6).
    pub fn records(&self) -> Records<'_> {
        let mut cursors: Vec<Cursor> = self
            .threads
            .iter()
            .map(|t| Cursor {
                thread: t.thread,
                chunks: &t.chunks,
                chunk: 0,
                pos: CHUNK_HEADER_SIZE,
                st: ChunkState::default(),
                data: Vec::new(),
                loaded: false,
                pending: None,
            })
            .collect();
        let mut records = Records {
            bytes: &self.bytes,
            heap: BinaryHeap::with_capacity(cursors.len()),
            warnings: Vec::new(),
            saw_end: false,
            finished: false,
            cursors: Vec::new(),
        };
        for (i, c) in cursors.iter_mut().enumerate() {
            if let Some(r) = c.advance(&self.bytes, &mut records.warnings) {
                records.heap.push(Reverse((c.st.time, c.thread, i)));
                c.pending = Some(r);
            }
        }
        records.cursors = cursors;
        records
    }
}

/// A thread's read position.
struct Cursor<'a> {
    thread: u32,
    chunks: &'a [ChunkRef],
    chunk: usize,
    pos: usize,
    st: ChunkState,
    /// The current chunk's bytes.
    data: Vec<u8>,
    loaded: bool,
    pending: Option<Record>,
}

impl Cursor<'_> {
    /// Decodes this thread's next record, moving on to its next chunk at the end of one.
    fn advance(&mut self, bytes: &Bytes, warnings: &mut Vec<String>) -> Option<Record> {
        loop {
            let c = self.chunks.get(self.chunk)?;
            if !self.loaded {
                bytes.read_at(c.offset, &mut self.data, c.len);
                self.st = ChunkState::new(c.header.base_time);
                self.pos = CHUNK_HEADER_SIZE;
                self.loaded = true;
            }
            match decode_record(&self.data, self.pos, &mut self.st) {
                Decoded::Record(r, next) => {
                    self.pos = next;
                    return Some(r);
                }
                Decoded::End => {}
                Decoded::Invalid => {
                    let at = c.offset + self.pos;
                    if c.len < c.header.len as usize && self.pos + 32 >= c.len {
                        // Cut by the end of the file; the truncation warning is already given.
                    } else {
                        warnings.push(format!(
                            "corrupt record at byte {at} (thread {}): the rest of its chunk is skipped",
                            self.thread
                        ));
                    }
                }
            }
            self.chunk += 1;
            self.loaded = false;
        }
    }
}

/// One record and the thread that wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadRecord {
    /// Thread index (see [`ThreadInfo`]).
    pub thread: u32,
    /// The record.
    pub record: Record,
}

/// Iterator over the merged records of a trace. Untimed records (stacks, modules, thread names) come
/// out in their thread's order, stamped with that thread's time.
pub struct Records<'a> {
    bytes: &'a Bytes,
    cursors: Vec<Cursor<'a>>,
    heap: BinaryHeap<Reverse<(u64, u32, usize)>>,
    warnings: Vec<String>,
    saw_end: bool,
    finished: bool,
}

impl Records<'_> {
    /// Problems met while decoding so far, including (once the iterator is exhausted) a missing end
    /// record. Taking them clears them.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }
}

impl Iterator for Records<'_> {
    type Item = ThreadRecord;

    fn next(&mut self) -> Option<ThreadRecord> {
        let Some(Reverse((_, thread, i))) = self.heap.pop() else {
            if !self.finished {
                self.finished = true;
                if !self.saw_end {
                    self.warnings.push(
                        "the trace has no end record: the program was killed or crashed (or is \
                         still running); records up to the last complete one are used"
                            .into(),
                    );
                }
            }
            return None;
        };
        let cursor = &mut self.cursors[i];
        let record = cursor.pending.take()?;
        if let Some(next) = cursor.advance(self.bytes, &mut self.warnings) {
            cursor.pending = Some(next);
            self.heap.push(Reverse((cursor.st.time, cursor.thread, i)));
        }
        if matches!(record, Record::End { .. }) {
            self.saw_end = true;
        }
        Some(ThreadRecord { thread, record })
    }
}
