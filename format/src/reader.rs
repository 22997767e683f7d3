//! Opens a trace file, indexes its chunks per thread, and merges the threads' record streams into
//! one stream in time order (FORMAT.md §5, §6).
//!
//! The file is read a chunk at a time with positioned reads and decoded lazily: memory grows with the
//! number of chunks and threads, never with the number of records, so multi-gigabyte traces stream. Everything that is wrong inside
//! an opened trace (a torn tail, a corrupt chunk) becomes a warning, and the records before it are kept.

use crate::decode::{
    FAST_WINDOW, HeapEvent, Step, bincode_read, decode_chunk_header, decode_event_fast,
    decode_free_chunk, decode_step,
};
use crate::encode::{ChunkHeader, ChunkState};
use crate::error::ReadError;
use crate::record::{
    CHUNK_HEADER_SIZE, FILE_MAGIC, FORMAT_VERSION, Frame, GRANULE, HEADER_PADDING, HEADER_SIZE,
    Header, MAX_CHUNK_SIZE, OLDEST_READABLE_VERSION, Record,
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

    /// The `len` bytes from `offset`, fewer where the file ends (or shrank under us): a file's read
    /// into `scratch`, which keeps its length from one call to the next (the bytes past the answer
    /// are stale), so that a buffer reused for chunks of varying sizes is zeroed only as it grows;
    /// an owned buffer's bytes in place.
    fn slice_at<'s>(&'s self, offset: usize, len: usize, scratch: &'s mut Vec<u8>) -> &'s [u8] {
        let end = offset.saturating_add(len).min(self.len());
        if offset >= end {
            return &[];
        }
        match self {
            Bytes::Owned(v) => &v[offset..end],
            Bytes::File { file, .. } => {
                use std::os::unix::fs::FileExt;
                let want = end - offset;
                if scratch.len() < want {
                    scratch.resize(want, 0);
                }
                let mut done = 0;
                while done < want {
                    match file.read_at(&mut scratch[done..want], (offset + done) as u64) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => done += n,
                    }
                }
                &scratch[..done]
            }
        }
    }

    /// Fills `buf` with bytes from `offset`, fewer where the file ends (or shrank under us).
    fn read_at(&self, offset: usize, buf: &mut Vec<u8>, len: usize) {
        let end = offset.saturating_add(len).min(self.len());
        if offset >= end {
            buf.clear();
            return;
        }
        match self {
            Bytes::Owned(v) => {
                buf.clear();
                buf.extend_from_slice(&v[offset..end]);
            }
            Bytes::File { file, .. } => {
                use std::os::unix::fs::FileExt;
                // The read overwrites what the buffer held (the previous chunk): only its growth
                // is zeroed, not every chunk again.
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
    version: u32,
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
        let io = |error| ReadError::Io {
            path: name.clone(),
            error,
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
        if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(ReadError::UnsupportedVersion {
                path,
                found: version,
                oldest: OLDEST_READABLE_VERSION,
                newest: FORMAT_VERSION,
            });
        }
        let hlen = u32::from_le_bytes([head[12], head[13], head[14], head[15]]) as usize;
        if 16 + hlen > HEADER_SIZE {
            return Err(ReadError::BadHeader {
                path,
                reason: format!("header length {hlen} exceeds {HEADER_SIZE} bytes"),
            });
        }
        // Fields appended to the header since a file was written read as `None`: see HEADER_PADDING.
        let payload = head.get(16..16 + hlen).map(|p| {
            let mut padded = p.to_vec();
            padded.resize(p.len() + HEADER_PADDING, 0);
            padded
        });
        let header: Header = payload
            .as_deref()
            .and_then(bincode_read::<Header>)
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
                    if let Some(len) = decode_free_chunk(&buf) {
                        off += len;
                        continue;
                    }
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
            // A full chunk and its packed copy may both be in the file (the writer was stopped
            // between writing the copy and freeing the original): they hold the same records.
            t.chunks
                .sort_by_key(|c| (c.header.seq, c.header.packed == 0, c.offset));
            t.chunks.dedup_by_key(|c| c.header.seq);
        }
        Ok(Trace {
            bytes,
            version,
            header,
            threads,
            warnings,
        })
    }

    /// The file's format version, between [`OLDEST_READABLE_VERSION`] and [`FORMAT_VERSION`].
    pub fn version(&self) -> u32 {
        self.version
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

    /// The time of the trace's last timed record (ns since start), found by decoding only the last
    /// readable chunk of each thread: what a full replay calls the duration, known before it. Reports
    /// that place points evenly over the run need it up front.
    pub fn last_time(&self) -> u64 {
        let mut warnings = Vec::new();
        let mut last = 0;
        for t in &self.threads {
            for k in (0..t.chunks.len()).rev() {
                let mut c = Cursor {
                    thread: t.thread,
                    chunks: &t.chunks[k..=k],
                    chunk: 0,
                    pos: CHUNK_HEADER_SIZE,
                    st: ChunkState::default(),
                    stack: Vec::new(),
                    data: Vec::new(),
                    loaded: false,
                    pending: None,
                };
                let mut any = false;
                while c.step(&self.bytes, &mut warnings).is_some() {
                    any = true;
                    last = last.max(c.st.time);
                }
                if any {
                    break;
                }
            }
        }
        last
    }

    /// All records of all threads, merged in time order (FORMAT.md §6).
    pub fn records(&self) -> Records<'_> {
        let mut records = Records {
            bytes: &self.bytes,
            cursors: Vec::with_capacity(self.threads.len()),
            current: None,
            heap: BinaryHeap::with_capacity(self.threads.len()),
            warnings: Vec::new(),
            saw_end: false,
            finished: false,
        };
        for t in &self.threads {
            let mut c = Cursor {
                thread: t.thread,
                chunks: &t.chunks,
                chunk: 0,
                pos: CHUNK_HEADER_SIZE,
                st: ChunkState::default(),
                stack: Vec::new(),
                data: Vec::new(),
                loaded: false,
                pending: None,
            };
            if let Some(next) = c.step(&self.bytes, &mut records.warnings) {
                c.pending = Some(next);
                let i = records.cursors.len();
                records.heap.push(Reverse((c.st.time, c.thread, i)));
            }
            records.cursors.push(c);
        }
        records.current = records.heap.pop().map(|Reverse((_, _, i))| i);
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
    /// The last stack defined in the current chunk (the base of a shared stack).
    stack: Vec<Frame>,
    /// The current chunk's bytes.
    data: Vec<u8>,
    loaded: bool,
    /// The thread's next record when it was decoded before its turn (its time is `st.time`).
    pending: Option<Next>,
}

/// A thread's next record as the merge's hot path sees it: a heap event as plain data, anything
/// else decoded and boxed.
enum Next {
    Event(HeapEvent),
    Other(Box<Record>),
}

impl Next {
    /// The record.
    #[inline(always)]
    fn record(self) -> Record {
        match self {
            Next::Event(e) => e.record(),
            Next::Other(r) => *r,
        }
    }
}

/// Why [`Cursor::fill`] stopped.
enum Fill {
    /// The batch is full.
    Full,
    /// The thread's next record is not a heap event, and comes before the bound: the caller takes it.
    Other(Box<Record>),
    /// The thread's next record (decoded, the cursor past it) comes after the bound.
    After(Next),
    /// The thread has no more records.
    Done,
}

impl Cursor<'_> {
    /// Decodes this thread's next record, moving on to its next chunk at the end of one.
    #[inline(always)]
    fn step(&mut self, bytes: &Bytes, warnings: &mut Vec<String>) -> Option<Next> {
        if self.loaded {
            match decode_step(
                &self.data,
                self.pos,
                &mut self.st,
                &mut self.stack,
                self.thread,
            ) {
                Step::Event(e, next) => {
                    self.pos = next;
                    return Some(Next::Event(e));
                }
                Step::Other(r, next) => {
                    self.pos = next;
                    return Some(Next::Other(r));
                }
                Step::End | Step::Invalid => {}
            }
        }
        self.next_chunk(bytes, warnings)
    }

    /// Decodes this thread's records into `batch` for as long as they are heap events that come
    /// before `bound` (a `(time, thread)` key of another thread) and the batch has room.
    #[inline(always)]
    fn fill(
        &mut self,
        batch: &mut EventBatch,
        bound: (u64, u32),
        bytes: &Bytes,
        warnings: &mut Vec<String>,
    ) -> Fill {
        loop {
            if batch.len >= BATCH {
                return Fill::Full;
            }
            // The hot loop: heap events one after another, the cursor's state in locals, each
            // read from a whole window of the chunk (all but the last few records of a chunk).
            if let (true, Some(limit)) = (self.loaded, time_limit(bound, self.thread)) {
                let start = Run {
                    pos: self.pos,
                    time: self.st.time,
                    addr: self.st.addr,
                    n: batch.len,
                };
                let run = if limit == u64::MAX {
                    // No time to stop at: no other thread has a record left (a trace of one
                    // thread, or the last thread left in a trace).
                    decode_run::<false>(&self.data, start, limit, self.thread, &mut batch.events)
                } else {
                    decode_run::<true>(&self.data, start, limit, self.thread, &mut batch.events)
                };
                let Run { pos, time, addr, n } = run.0;
                batch.len = n;
                self.pos = pos;
                self.st.time = time;
                self.st.addr = addr;
                match run.1 {
                    RunEnd::Full => return Fill::Full,
                    RunEnd::After(e) => return Fill::After(Next::Event(e)),
                    RunEnd::Slow => {}
                }
            }
            // Anything else, one record: the last records of a chunk, the end of a chunk, a
            // record that is not a heap event or does not decode, a time past the bound.
            match self.step(bytes, warnings) {
                None => return Fill::Done,
                Some(next) => {
                    if (self.st.time, self.thread) > bound {
                        return Fill::After(next);
                    }
                    match next {
                        Next::Event(e) => {
                            batch.events[batch.len] = e;
                            batch.len += 1;
                        }
                        Next::Other(r) => return Fill::Other(r),
                    }
                }
            }
        }
    }

    /// [`Cursor::step`] at the end of a chunk (or before the first): the end or the corruption
    /// that stopped the current chunk is dealt with, then the next chunks are read until one yields
    /// a record.
    #[cold]
    #[inline(never)]
    fn next_chunk(&mut self, bytes: &Bytes, warnings: &mut Vec<String>) -> Option<Next> {
        loop {
            let c = self.chunks.get(self.chunk)?;
            if !self.loaded {
                let unpacked = match c.header.packed {
                    0 => {
                        bytes.read_at(c.offset, &mut self.data, c.len);
                        true
                    }
                    packed => unpack(bytes, c, packed as usize, &mut self.data),
                };
                if !unpacked {
                    warnings.push(format!(
                        "packed chunk at byte {} (thread {}) does not unpack: its records are skipped",
                        c.offset, self.thread
                    ));
                    self.data.truncate(CHUNK_HEADER_SIZE);
                }
                self.st = ChunkState::new(c.header.base_time);
                self.stack.clear();
                self.pos = CHUNK_HEADER_SIZE;
                self.loaded = true;
            }
            match decode_step(
                &self.data,
                self.pos,
                &mut self.st,
                &mut self.stack,
                self.thread,
            ) {
                Step::Event(e, next) => {
                    self.pos = next;
                    return Some(Next::Event(e));
                }
                Step::Other(r, next) => {
                    self.pos = next;
                    return Some(Next::Other(r));
                }
                Step::End => {}
                Step::Invalid => {
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

/// Where [`decode_run`] is: the position in the chunk, the chunk's delta bases, and the number of
/// events in the batch.
#[derive(Clone, Copy)]
struct Run {
    pos: usize,
    time: u64,
    addr: u64,
    n: usize,
}

/// Why [`decode_run`] stopped.
enum RunEnd {
    /// The batch is full.
    Full,
    /// The next event (decoded, the position past it) comes after the time limit.
    After(HeapEvent),
    /// The next record needs the slow path (the end of the chunk, a record that is not a heap
    /// event or not one the fast path reads).
    Slow,
}

/// The reader's hot loop: decodes heap events from `data` at `run.pos` into `events[run.n..]`
/// for as long as the fast path reads them, the batch has room and their times are at most
/// `limit`. A function of its own, with the loop's state in a few locals, so that they stay in
/// registers; compiled without the test of `limit` for a caller that has none (`BOUNDED` false,
/// `limit` then `u64::MAX`, which no time exceeds).
#[inline(never)]
fn decode_run<const BOUNDED: bool>(
    data: &[u8],
    run: Run,
    limit: u64,
    thread: u32,
    events: &mut [HeapEvent; BATCH],
) -> (Run, RunEnd) {
    let Run {
        mut pos,
        mut time,
        mut addr,
        mut n,
    } = run;
    let end = loop {
        if n >= BATCH {
            break RunEnd::Full;
        }
        let Some(win) = data.get(pos..).and_then(|d| d.first_chunk::<FAST_WINDOW>()) else {
            break RunEnd::Slow;
        };
        let Some((e, len)) = decode_event_fast(win, time, addr, thread) else {
            break RunEnd::Slow;
        };
        pos += len;
        time = e.time;
        addr = e.addr;
        if BOUNDED && time > limit {
            break RunEnd::After(e);
        }
        events[n] = e;
        n += 1;
    };
    (Run { pos, time, addr, n }, end)
}

/// The latest time at which a record of `thread` comes before `bound`, the `(time, thread)` key of
/// another thread's next record (records are ordered by time, then thread): `None` if none does.
#[inline(always)]
fn time_limit(bound: (u64, u32), thread: u32) -> Option<u64> {
    if thread <= bound.1 {
        Some(bound.0)
    } else {
        bound.0.checked_sub(1)
    }
}

/// Heap events handed to a [`RecordSink`] at a time, at most.
pub const BATCH: usize = 64;

/// Up to [`BATCH`] heap events.
struct EventBatch {
    events: [HeapEvent; BATCH],
    len: usize,
}

/// The run being decoded and the run decoded before it, which waits for it: a run's events are
/// shown to a sink (the `ahead` of [`RecordSink::events`]) one run before they are handed over,
/// without a copy.
struct Runs {
    batches: [EventBatch; 2],
    /// The batch being filled; the other holds the run that waits, if any.
    filling: usize,
}

impl Runs {
    fn new() -> Runs {
        let empty = || EventBatch {
            events: [HeapEvent::EMPTY; BATCH],
            len: 0,
        };
        Runs {
            batches: [empty(), empty()],
            filling: 0,
        }
    }

    /// The batch being filled.
    #[inline(always)]
    fn batch(&mut self) -> &mut EventBatch {
        &mut self.batches[self.filling & 1]
    }

    /// Hands `sink` the run that waited (if any) with the batch being filled shown ahead, and
    /// makes the filled batch the one that waits.
    #[inline]
    fn hand(&mut self, sink: &mut impl RecordSink) {
        let [a, b] = &mut self.batches;
        let (filled, waiting) = if self.filling & 1 == 0 {
            (a, b)
        } else {
            (b, a)
        };
        if filled.len == 0 {
            return;
        }
        sink.events(&waiting.events[..waiting.len], &filled.events[..filled.len]);
        waiting.len = 0;
        self.filling ^= 1;
    }

    /// Hands `sink` every event decoded so far (before a record that is not a heap event, and at
    /// the end).
    #[inline]
    fn drain(&mut self, sink: &mut impl RecordSink) {
        self.hand(sink);
        let waiting = &mut self.batches[(self.filling ^ 1) & 1];
        if waiting.len > 0 {
            sink.events(&waiting.events[..waiting.len], &[]);
            waiting.len = 0;
        }
    }
}

/// What [`Records::for_each_batch`] feeds: runs of heap events, and every other record, in the
/// stream's order.
pub trait RecordSink {
    /// The next heap events, in order (up to [`BATCH`] of them; none when only `ahead` is new),
    /// and `ahead`: the heap events that the next call gets, shown ahead of time (empty when the
    /// stream goes on with another record, or ends). Every run of events is shown as `ahead` once,
    /// then handed over as `events` by the next call, and the run after it is decoded in between,
    /// so a sink can start slow work on a run early (a hint: bring the memory it will touch into
    /// the caches), spread over its work on the run before.
    fn events(&mut self, events: &[HeapEvent], ahead: &[HeapEvent]);
    /// The next record, which is not a heap event, and its thread.
    fn other(&mut self, thread: u32, record: &Record);
}

/// Reads the packed chunk `c` (header, then a zstd frame of `packed` bytes) and puts into `data`
/// its header followed by the records the frame holds (FORMAT.md §3). `false` if the frame is cut
/// short, corrupt, or holds more than a chunk may; `data` then holds the header alone (no records).
///
/// This runs once per chunk of a packed trace, and unpacking is a quarter of a `summary`: the
/// frame is decompressed straight into `data`, behind its header, with one decompression context
/// and one buffer for the frames, both reused for every chunk (a frame's bytes read from the file
/// land in the buffer; nothing is zeroed but the buffers' growth).
fn unpack(bytes: &Bytes, c: &ChunkRef, packed: usize, data: &mut Vec<u8>) -> bool {
    thread_local! {
        static UNPACK: std::cell::RefCell<(Option<zstd::bulk::Decompressor<'static>>, Vec<u8>)> =
            const { std::cell::RefCell::new((None, Vec::new())) };
    }
    UNPACK.with_borrow_mut(|(dctx, scratch)| {
        let chunk = bytes.slice_at(c.offset, c.len, scratch);
        data.clear();
        data.extend_from_slice(&chunk[..CHUNK_HEADER_SIZE.min(chunk.len())]);
        let Some(frame) = chunk.get(CHUNK_HEADER_SIZE..CHUNK_HEADER_SIZE + packed) else {
            return false;
        };
        let size = match zstd::zstd_safe::get_frame_content_size(frame) {
            Ok(Some(n)) if n <= (MAX_CHUNK_SIZE - CHUNK_HEADER_SIZE) as u64 => n as usize,
            _ => return false,
        };
        if dctx.is_none() {
            *dctx = zstd::bulk::Decompressor::new().ok();
        }
        let Some(dctx) = dctx else {
            return false;
        };
        // The records go after the header, into the buffer's spare capacity (the cursor's
        // position): the decompressor writes them and sets the length, nothing is zeroed first.
        data.reserve(size);
        let mut out = std::io::Cursor::new(&mut *data);
        out.set_position(CHUNK_HEADER_SIZE as u64);
        let done = dctx.decompress_to_buffer(frame, &mut out);
        if matches!(done, Ok(n) if n == size) {
            true
        } else {
            data.truncate(CHUNK_HEADER_SIZE);
            false
        }
    })
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
///
/// The thread whose record is next stays out of the heap of the others, and its records are decoded
/// only when asked for: while its following record is still earlier than every other thread's next
/// one, which is most of the time (threads run in stretches), the merge costs one comparison with
/// the heap's top per record and the record goes straight to the caller; otherwise the record waits
/// in its cursor and that thread and the heap's top swap places with a single sift-down.
pub struct Records<'a> {
    bytes: &'a Bytes,
    cursors: Vec<Cursor<'a>>,
    /// The cursor holding the next record (the least `(time, thread)`), if any is left.
    current: Option<usize>,
    /// The other cursors that still have a record, by `(time, thread, cursor)`.
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

    /// Calls `f` with every remaining record and its thread, in the iterator's order, and ends the
    /// stream as the iterator's end does: [`Records::for_each_batch`] with each heap event made a
    /// [`Record`].
    pub fn for_each_ref(&mut self, f: impl FnMut(u32, &Record)) {
        struct Each<F>(F);
        impl<F: FnMut(u32, &Record)> RecordSink for Each<F> {
            fn events(&mut self, events: &[HeapEvent], _ahead: &[HeapEvent]) {
                for e in events {
                    (self.0)(e.thread, &e.record());
                }
            }
            fn other(&mut self, thread: u32, record: &Record) {
                (self.0)(thread, record);
            }
        }
        self.for_each_batch(&mut Each(f));
    }

    /// Feeds every remaining record to `sink`, in the iterator's order, and ends the stream as the
    /// iterator's end does. It is iteration without a [`Record`] per heap event: the thread that is
    /// next runs in a tight loop, its heap events decoded into an array that `sink` gets whole,
    /// for as long as they come before every other thread's next record. Each run is shown to
    /// [`RecordSink::events`] (as `ahead`) one call before it is handed over (two arrays take
    /// turns), and any other record first hands over every event before it.
    pub fn for_each_batch(&mut self, sink: &mut impl RecordSink) {
        let Records {
            bytes,
            cursors,
            current,
            heap,
            warnings,
            saw_end,
            ..
        } = self;
        let mut runs = Runs::new();
        while let Some(i) = *current {
            let cursor = &mut cursors[i];
            let thread = cursor.thread;
            match cursor.pending.take() {
                Some(Next::Event(e)) => {
                    if runs.batch().len == BATCH {
                        runs.hand(sink);
                    }
                    let batch = runs.batch();
                    batch.events[batch.len] = e;
                    batch.len += 1;
                }
                Some(Next::Other(r)) => {
                    runs.drain(sink);
                    *saw_end |= matches!(*r, Record::End { .. });
                    sink.other(thread, &r);
                }
                None => {}
            }
            // Keys of distinct threads never tie, so "not after the heap's top" means "before it";
            // with an empty heap no key is after the bound.
            let bound = heap
                .peek()
                .map_or((u64::MAX, u32::MAX), |Reverse((t, th, _))| (*t, *th));
            loop {
                match cursor.fill(runs.batch(), bound, bytes, warnings) {
                    Fill::Full => runs.hand(sink),
                    Fill::Other(r) => {
                        runs.drain(sink);
                        *saw_end |= matches!(*r, Record::End { .. });
                        sink.other(thread, &r);
                    }
                    Fill::After(next) => {
                        cursor.pending = Some(next);
                        if let Some(mut top) = heap.peek_mut() {
                            *current = Some(top.0.2);
                            *top = Reverse((cursor.st.time, thread, i));
                        }
                        break;
                    }
                    Fill::Done => {
                        *current = heap.pop().map(|Reverse((_, _, j))| j);
                        break;
                    }
                }
            }
        }
        runs.drain(sink);
        self.finish();
    }

    #[cold]
    fn finish(&mut self) {
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
    }
}

impl Iterator for Records<'_> {
    type Item = ThreadRecord;

    #[inline]
    fn next(&mut self) -> Option<ThreadRecord> {
        loop {
            let Some(i) = self.current else {
                self.finish();
                return None;
            };
            let cursor = &mut self.cursors[i];
            let thread = cursor.thread;
            // A record decoded while another thread was next: it is the least now.
            let record = match cursor.pending.take() {
                Some(next) => next.record(),
                None => {
                    let Some(next) = cursor.step(self.bytes, &mut self.warnings) else {
                        self.current = self.heap.pop().map(|Reverse((_, _, j))| j);
                        continue;
                    };
                    let key = (cursor.st.time, thread);
                    if let Some(mut top) = self.heap.peek_mut() {
                        let Reverse((time, other, j)) = *top;
                        if (time, other) < key {
                            // Another thread is next: this one takes its place in the heap.
                            cursor.pending = Some(next);
                            *top = Reverse((key.0, key.1, i));
                            self.current = Some(j);
                            continue;
                        }
                    }
                    next.record()
                }
            };
            if let Record::End { .. } = record {
                self.saw_end = true;
            }
            return Some(ThreadRecord { thread, record });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::TraceBuilder;
    use crate::record::{AllocKind, Frame};
    use proptest::prelude::*;

    /// The records of a read, with their threads, and its warnings.
    type Read = (Vec<(u32, Record)>, Vec<String>);

    /// Both ways of reading a trace: the iterator, and `for_each_ref`.
    fn both_ways(bytes: Vec<u8>) -> Option<[Read; 2]> {
        let trace = Trace::from_bytes(bytes, "t").ok()?;
        let mut it = trace.records();
        let a: Vec<(u32, Record)> = it.by_ref().map(|r| (r.thread, r.record)).collect();
        let wa = it.take_warnings();
        let mut fe = trace.records();
        let mut b = Vec::new();
        fe.for_each_ref(|thread, r| b.push((thread, r.clone())));
        let wb = fe.take_warnings();
        Some([(a, wa), (b, wb)])
    }

    #[test]
    fn time_limit_is_the_key_order() {
        let times = [0, 1, 4, 5, 6, u64::MAX - 1, u64::MAX];
        for bound in [(0, 2), (5, 2), (u64::MAX, 2), (5, 0), (5, u32::MAX)] {
            for thread in [0, 1, 2, 3, u32::MAX] {
                for t in times {
                    let before = time_limit(bound, thread).is_some_and(|limit| t <= limit);
                    assert_eq!(before, (t, thread) <= bound, "{t} {thread} {bound:?}");
                }
            }
        }
    }

    /// A packed trace of two threads whose chunks unpack to different sizes (a chunk closes when
    /// its next record does not fit, and the records are of many lengths).
    /// Returns the bytes and the records pushed, by thread.
    fn varied_packed_trace() -> (Vec<u8>, Vec<(u32, Record)>) {
        let mut b = TraceBuilder::new(&TraceBuilder::test_header()).packed();
        let mut pushed = Vec::new();
        for i in 0..3000u64 {
            let thread = 1 + (i / 7 % 2) as u32;
            let r = match i % 5 {
                0 => Record::Mark {
                    time: i,
                    label: "x".repeat((i * 37 % 200) as usize),
                },
                1 | 2 => Record::Alloc {
                    time: i,
                    kind: AllocKind::Malloc,
                    stack: (i % 11) as u32,
                    size: i * i,
                    addr: 0x1000 + i * 16,
                },
                _ => Record::Free {
                    time: i,
                    addr: 0x1000 + (i - 1) * 16,
                },
            };
            b.push(thread, &r);
            pushed.push((thread, r));
        }
        (b.finish(), pushed)
    }

    /// The records and warnings of the trace at `path`, read from the file, and those of the same
    /// bytes read from memory: they must be the same.
    fn read_file_and_bytes(bytes: &[u8], name: &str) -> Read {
        let path = std::env::temp_dir().join(format!("memtrace-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).expect("a temporary file");
        let from_file = Trace::open(&path).expect("a trace");
        std::fs::remove_file(&path).expect("the temporary file goes");
        let mut it = from_file.records();
        let records: Vec<(u32, Record)> = it.by_ref().map(|r| (r.thread, r.record)).collect();
        let read = (records, it.take_warnings());
        let [a, b] = both_ways(bytes.to_vec()).expect("a trace");
        assert_eq!(read, a);
        assert_eq!(read, b);
        read
    }

    #[test]
    fn packed_chunks_of_every_size_unpack_through_one_reused_buffer() {
        let (bytes, pushed) = varied_packed_trace();
        // The chunks unpack to many different sizes, in both orders (growing and shrinking).
        let trace = Trace::from_bytes(bytes.clone(), "t").expect("a trace");
        let sizes: std::collections::BTreeSet<usize> = trace
            .threads
            .iter()
            .flat_map(|t| &t.chunks)
            .map(|c| {
                assert_ne!(c.header.packed, 0);
                let frame = &bytes[c.offset + CHUNK_HEADER_SIZE..][..c.header.packed as usize];
                zstd::zstd_safe::get_frame_content_size(frame)
                    .expect("a frame")
                    .expect("its size") as usize
            })
            .collect();
        assert!(sizes.len() > 5, "{sizes:?}");
        let (records, warnings) = read_file_and_bytes(&bytes, "varied");
        let mut want = pushed;
        let time = |r: &Record| match r {
            Record::Mark { time, .. } | Record::Alloc { time, .. } | Record::Free { time, .. } => {
                *time
            }
            _ => unreachable!("only these are pushed"),
        };
        want.sort_by_key(|(thread, r)| (time(r), *thread));
        assert_eq!(records, want);
        assert_eq!(
            warnings.len(),
            1,
            "only the missing end record: {warnings:?}"
        );
    }

    #[test]
    fn a_corrupt_packed_chunk_among_good_ones_is_skipped_with_a_warning() {
        let (good, pushed) = varied_packed_trace();
        let trace = Trace::from_bytes(good.clone(), "t").expect("a trace");
        let chunks: Vec<ChunkRef> = trace.threads[0].chunks.clone();
        assert!(chunks.len() > 3);
        let bad = chunks[chunks.len() / 2];
        let mut bytes = good.clone();
        // Inside the frame's compressed blocks: the frame header still parses.
        bytes[bad.offset + CHUNK_HEADER_SIZE + bad.header.packed as usize / 2] ^= 0x55;
        let (records, warnings) = read_file_and_bytes(&bytes, "corrupt");
        assert!(
            warnings.iter().any(|w| w
                == &format!(
                    "packed chunk at byte {} (thread 1) does not unpack: its records are skipped",
                    bad.offset
                )),
            "{warnings:?}"
        );
        // Every other chunk's records are read, those of the thread's later chunks included.
        let (good_records, _) = read_file_and_bytes(&good, "good");
        assert!(records.len() < good_records.len());
        assert!(records.iter().all(|r| good_records.contains(r)));
        let last = pushed
            .iter()
            .rev()
            .find(|(t, _)| *t == 1)
            .expect("thread 1 wrote");
        assert!(records.contains(last));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Threads interleaved in every way (long stretches, a switch every record, equal times),
        /// all kinds of records, chunks packed or not, with or without flipped bytes:
        /// `for_each_ref` (`for_each_batch`, its heap events made records) is the iterator.
        #[test]
        fn for_each_ref_is_the_iterator(
            steps in prop::collection::vec((1u32..5, 0u64..3, 0u8..10, any::<u64>()), 0..3000),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            end: bool,
            packed: bool,
        ) {
            let mut b = TraceBuilder::new(&TraceBuilder::test_header());
            if packed {
                b = b.packed();
            }
            let mut times = [0u64; 5];
            for (thread, dt, what, x) in steps {
                let t = &mut times[thread as usize];
                *t += dt;
                let time = *t;
                let r = match what {
                    0..=3 => Record::Alloc {
                        time,
                        kind: AllocKind::from_u8((x % 7) as u8).unwrap(),
                        stack: (x >> 8) as u32 % 100,
                        size: x >> 20,
                        addr: x.rotate_left(17),
                    },
                    4 => Record::Realloc { time, stack: 3, size: x >> 40, old: x, new: x >> 3 },
                    5..=7 => Record::Free { time, addr: x.rotate_left(17) },
                    8 => Record::Stack {
                        id: (x % 50) as u32 + 1,
                        frames: vec![Frame { module: 0, offset: x }; (x % 5) as usize],
                    },
                    _ => Record::Mark { time, label: format!("m{x}") },
                };
                b.push(thread, &r);
            }
            if end {
                b.push(1, &Record::End { time: times[1] });
            }
            let mut bytes = b.finish();
            for (idx, v) in flips {
                let i = idx.index(bytes.len());
                bytes[i] ^= v | 1;
            }
            if let Some([a, b]) = both_ways(bytes) {
                prop_assert_eq!(a, b);
            }
        }
    }
}
