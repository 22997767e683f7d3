//! One thread's chunk writer: appends encoded records to the chunk the thread owns, and when it is
//! full, packs it into a new chunk and starts over in the same one, or claims a new chunk.
//!
//! A thread's chunks grow from one granule to [`MAX_NORMAL_CHUNK`]; from then on the thread keeps
//! that one chunk. When it is full its records are packed (`pack.rs`) into a new chunk of the
//! packed size, and the full chunk is emptied for the next records, so the file holds packed
//! chunks plus one unpacked chunk per thread. The steps are ordered so that a process stopped
//! between any two of them leaves a readable file (FORMAT.md §3): the packed copy is complete
//! before its magic is written; the full chunk is marked free before it is cleared; a reader that
//! finds both the full chunk and its copy takes one of them.
//!
//! Safe code over the raw chunk memory handed out by `sink.rs`; the single `unsafe` block turns a
//! claim into a byte slice.

use crate::pack;
use crate::sink::{Claim, SINK};
use memtrace_format::encode::{ChunkHeader, ChunkState, encode_chunk_header, encode_free_chunk};
use memtrace_format::record::{CHUNK_HEADER_SIZE, GRANULE, MAX_CHUNK_SIZE};

/// Packing that leaves more than this fraction (3/4) of a chunk is poor: the next 1, 3, 7, then
/// at most [`MAX_SKIP_AFTER_POOR_PACKING`] full chunks (as poor packings follow one another) are
/// kept as they are, then packing is tried again.
const POOR_PACKING: (usize, usize) = (3, 4);
const MAX_SKIP_AFTER_POOR_PACKING: u16 = 15;

/// The unit of every chunk this writer claims: a page, not the format's smaller granule, so that
/// every chunk is whole pages and a finished one leaves none of them resident (`Sink::retire`).
const PAGE: usize = 4096;
const _: () = assert!(PAGE.is_multiple_of(GRANULE));

/// Largest chunk claimed for ordinary growth (bigger only for a record that needs it), and the
/// size of the chunk a thread keeps and packs from.
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
    /// Full chunks still to be kept as they are before packing is tried again: set when packing
    /// hardly shrank one (random sizes and addresses), where it would cost time for nothing.
    pack_skip: u8,
    /// Poor packings in a row: each doubles the number of chunks skipped after it, up to
    /// [`MAX_SKIP_AFTER_POOR_PACKING`], so one poor chunk among good ones costs little.
    poor_streak: u8,
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
        next_len: PAGE,
        seq: 0,
        pack_skip: 0,
        poor_streak: 0,
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
            next_len: PAGE,
            seq: 0,
            pack_skip: 0,
            poor_streak: 0,
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
        self.next_len = PAGE;
        self.tid = tid;
    }

    /// The free space of the current chunk.
    fn chunk_slice(&mut self) -> Option<&mut [u8]> {
        let used = self.used;
        self.claim.and_then(whole).map(|c| &mut c[used..])
    }

    /// Writes one record with `encode`, which gets the free space and the chunk's delta state and
    /// returns the bytes written (`None` when it does not fit, the state unchanged). `time` is the
    /// record's time (for untimed records, the thread's last time).
    ///
    /// Inlined into each hook: a record that fits in the current chunk costs the encoding and a
    /// few stores; a full chunk, or none, takes [`ChunkWriter::write_slow`].
    #[inline(always)]
    pub fn write(
        &mut self,
        time: u64,
        mut encode: impl FnMut(&mut [u8], &mut ChunkState) -> Option<usize>,
    ) -> Result<(), WriteError> {
        let used = self.used;
        if let Some(buf) = self.claim.and_then(whole)
            && let Some(free) = buf.get_mut(used..)
            && let Some(n) = encode(free, &mut self.state)
        {
            self.used = used + n;
            self.last_time = self.last_time.max(self.state.time);
            return Ok(());
        }
        self.write_slow(time, encode)
    }

    /// [`ChunkWriter::write`] when the record needs a new chunk.
    #[cold]
    #[inline(never)]
    fn write_slow(
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
            if done.len == len
                && len == MAX_NORMAL_CHUNK
                && self.pack_due()
                && self.pack_and_reuse(done, base_time)
            {
                return Ok(());
            }
            SINK.retire(done);
        }
        let claim = match SINK.claim(len) {
            Ok(Some(c)) => c,
            Ok(None) => return Err(WriteError::Closed),
            Err(msg) => return Err(WriteError::Failed(msg)),
        };
        self.claim = Some(claim);
        self.used = 0;
        self.start_chunk(claim, base_time);
        if self.next_len < MAX_NORMAL_CHUNK {
            self.next_len *= 2;
        }
        Ok(())
    }

    /// Makes `claim` (zero after its header) the current chunk, with the next sequence number.
    fn start_chunk(&mut self, claim: Claim, base_time: u64) {
        self.claim = Some(claim);
        let header = ChunkHeader {
            len: claim.len as u32,
            thread: self.thread,
            tid: self.tid,
            seq: self.seq,
            base_time,
            packed: 0,
        };
        self.seq += 1;
        self.state = ChunkState::new(base_time);
        self.last_time = base_time;
        if let Some(buf) = whole(claim) {
            encode_chunk_header(buf, &header);
        }
        self.used = CHUNK_HEADER_SIZE;
    }

    /// Whether this full chunk is to be packed: not while `pack_skip` counts down.
    fn pack_due(&mut self) -> bool {
        if self.pack_skip > 0 {
            self.pack_skip -= 1;
            return false;
        }
        true
    }

    /// Packs the full chunk `done` into a new chunk and empties `done` to be the current chunk
    /// again. `false` (nothing changed) when packing is off or busy, or would not save space.
    fn pack_and_reuse(&mut self, done: Claim, base_time: u64) -> bool {
        let Some(full) = whole(done) else {
            return false;
        };
        let used = self.used;
        let header = ChunkHeader {
            len: 0,
            thread: self.thread,
            tid: self.tid,
            seq: self.seq.wrapping_sub(1),
            base_time: decode_base_time(full),
            packed: 0,
        };
        let mut poor = false;
        let copied = pack::pack(
            &full[CHUNK_HEADER_SIZE..used],
            self.thread as usize,
            |frame| {
                poor = frame.len() * POOR_PACKING.1 > used * POOR_PACKING.0;
                let len = (CHUNK_HEADER_SIZE + frame.len()).next_multiple_of(PAGE);
                if len >= done.len {
                    return false;
                }
                let Ok(Some(copy)) = SINK.claim(len) else {
                    return false;
                };
                let Some(out) = whole(copy) else {
                    return false;
                };
                // Free until complete: a reader skips it if the process stops before the magic.
                encode_free_chunk(out, len as u32);
                out[CHUNK_HEADER_SIZE..CHUNK_HEADER_SIZE + frame.len()].copy_from_slice(frame);
                let packed = ChunkHeader {
                    len: len as u32,
                    packed: frame.len() as u32,
                    ..header
                };
                encode_chunk_header(out, &packed);
                SINK.retire(copy);
                true
            },
        );
        if poor {
            self.poor_streak = self.poor_streak.saturating_add(1);
            self.pack_skip =
                ((1u16 << self.poor_streak.min(8)) - 1).min(MAX_SKIP_AFTER_POOR_PACKING) as u8;
        } else if copied.is_some() {
            self.poor_streak = 0;
        }
        if copied != Some(true) {
            return false;
        }
        encode_free_chunk(full, done.len as u32);
        // All of it: a record that did not fit left bytes past `used` (its tag unwritten).
        full[CHUNK_HEADER_SIZE..].fill(0);
        self.start_chunk(done, base_time);
        true
    }
}

/// The time base written in the chunk header at the start of `chunk`.
fn decode_base_time(chunk: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&chunk[24..32]);
    u64::from_le_bytes(b)
}

/// All of a claimed chunk's bytes, while its sink epoch is current.
#[inline(always)]
fn whole<'a>(c: Claim) -> Option<&'a mut [u8]> {
    if c.epoch != SINK.epoch() {
        return None;
    }
    // SAFETY: the sink handed this chunk to this thread alone (one atomic claim), it is mapped
    // and writable for the sink's epoch `c.epoch` (checked above; only a fork child changes it,
    // and then this thread is the only one). Callers hold one such slice at a time.
    Some(unsafe { core::slice::from_raw_parts_mut(c.ptr, c.len) })
}
