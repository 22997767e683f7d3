//! One thread's chunk writer: appends encoded records to the chunk the thread owns and claims a
//! new chunk from the sink when the current one is full.
//!
//! Safe code over the raw chunk memory handed out by `sink.rs`; the single `unsafe` block turns a
//! claim into a byte slice.

use crate::sink::{Claim, SINK};
use memtrace_format::encode::{ChunkHeader, ChunkState, encode_chunk_header};
use memtrace_format::record::{CHUNK_HEADER_SIZE, GRANULE, MAX_CHUNK_SIZE};

/// Largest chunk claimed for ordinary growth (bigger only for a record that needs it).
const MAX_NORMAL_CHUNK: usize = 64 << 10;

/// Why a record could not be written.
pub enum WriteError {
    /// The sink is closed (the process is exiting) or was replaced (fork); drop the record.
    Closed,
    /// The sink failed (disk full); tracing must stop. Carries the message.
    Failed(String),
}

/// A thread's position in its current chunk.
pub struct ChunkWriter {
    claim: Option<Claim>,
    used: usize,
    state: ChunkState,
    next_len: usize,
    seq: u32,
    /// This thread's index in the trace.
    pub thread: u32,
    /// This thread's OS id.
    pub tid: u32,
    /// Time of the last timed record written.
    pub last_time: u64,
}

impl ChunkWriter {
    /// The writer of a thread that has not been given an index yet (`thread == 0`).
    pub const UNASSIGNED: ChunkWriter = ChunkWriter {
        claim: None,
        used: 0,
        state: ChunkState {
            time: 0,
            addr: 0,
            has_stack: false,
        },
        next_len: GRANULE,
        seq: 0,
        thread: 0,
        tid: 0,
        last_time: 0,
    };

    /// A writer with no chunk yet.
    pub fn new(thread: u32, tid: u32) -> ChunkWriter {
        ChunkWriter {
            claim: None,
            used: 0,
            state: ChunkState::default(),
            next_len: GRANULE,
            seq: 0,
            thread,
            tid,
            last_time: 0,
        }
    }

    /// Forgets the current chunk (it belongs to a replaced sink) and starts over.
    pub fn reset(&mut self, tid: u32) {
        self.claim = None;
        self.used = 0;
        self.seq = 0;
        self.next_len = GRANULE;
        self.tid = tid;
    }

    fn chunk_slice(&mut self) -> Option<&mut [u8]> {
        let c = self.claim?;
        if c.epoch != SINK.epoch() {
            return None;
        }
        // SAFETY: the sink handed this chunk to this thread alone (one atomic claim), it is mapped
        // and writable for the sink's epoch `c.epoch` (checked above; only a fork child changes
        // it, and then this thread is the only one), and `used <= len`.
        Some(unsafe { core::slice::from_raw_parts_mut(c.ptr.add(self.used), c.len - self.used) })
    }

    /// Writes one record with `encode`, which gets the free space and the chunk's delta state and
    /// returns the bytes written (`None` when it does not fit). `time` is the record's time (for
    /// untimed records, the thread's last time).
    pub fn write(
        &mut self,
        time: u64,
        mut encode: impl FnMut(&mut [u8], &mut ChunkState) -> Option<usize>,
    ) -> Result<(), WriteError> {
        let mut fresh = false;
        loop {
            let mut state = self.state;
            let has_chunk = self.claim.is_some();
            let written = self.chunk_slice().and_then(|buf| encode(buf, &mut state));
            if let Some(n) = written {
                self.used += n;
                self.state = state;
                self.last_time = self.last_time.max(state.time);
                return Ok(());
            }
            if has_chunk && fresh {
                // Did not fit in a fresh chunk: claim a bigger one.
                self.next_len = (self.next_len * 4).min(MAX_CHUNK_SIZE);
                if self.claim.is_some_and(|c| c.len >= MAX_CHUNK_SIZE) {
                    return Err(WriteError::Closed);
                }
            }
            self.new_chunk(time.max(self.last_time))?;
            fresh = true;
        }
    }

    fn new_chunk(&mut self, base_time: u64) -> Result<(), WriteError> {
        let len = self.next_len;
        if let Some(done) = self.claim.take() {
            SINK.retire(done);
        }
        let claim = match SINK.claim(len) {
            Ok(Some(c)) => c,
            Ok(None) => return Err(WriteError::Closed),
            Err(msg) => return Err(WriteError::Failed(msg)),
        };
        self.claim = Some(claim);
        self.used = 0;
        let header = ChunkHeader {
            len: len as u32,
            thread: self.thread,
            tid: self.tid,
            seq: self.seq,
            base_time,
        };
        self.seq += 1;
        self.state = ChunkState::new(base_time);
        self.last_time = base_time;
        if let Some(buf) = self.chunk_slice() {
            encode_chunk_header(buf, &header);
        }
        self.used = CHUNK_HEADER_SIZE;
        if self.next_len < MAX_NORMAL_CHUNK {
            self.next_len *= 2;
        }
        Ok(())
    }
}
