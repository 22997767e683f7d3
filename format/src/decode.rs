//! The reader's side of FORMAT.md for one chunk: its header and its records, decoded from bytes.
//!
//! Every length and count read from the file is checked against the format's limits before use,
//! so corrupt or hostile input can cost neither unbounded memory nor unbounded time.

use crate::encode::{ChunkHeader, ChunkState};
use crate::record::{
    AllocKind, CHUNK_HEADER_SIZE, CHUNK_MAGIC, FREE_CHUNK_MAGIC, Frame, GRANULE, MAX_CHUNK_SIZE,
    MAX_FRAMES, MAX_LABEL_LEN, MAX_MODULE_RECORD_LEN, MAX_PY_CODE_RECORD_LEN, Record, tag,
};
use crate::varint::{read_delta, read_u64, unzigzag};

/// Parses a chunk header at the start of `bytes`. `None` if there is no valid header there.
pub fn decode_chunk_header(bytes: &[u8]) -> Option<ChunkHeader> {
    let h = bytes.get(..CHUNK_HEADER_SIZE)?;
    if h[..4] != CHUNK_MAGIC {
        return None;
    }
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let len = u32_at(4);
    let lenz = len as usize;
    if lenz < GRANULE || !lenz.is_multiple_of(GRANULE) || lenz > MAX_CHUNK_SIZE {
        return None;
    }
    let packed = u32_at(20);
    if packed as usize > lenz - CHUNK_HEADER_SIZE {
        return None;
    }
    let mut base = [0u8; 8];
    base.copy_from_slice(&h[24..32]);
    Some(ChunkHeader {
        len,
        thread: u32_at(8),
        tid: u32_at(12),
        seq: u32_at(16),
        base_time: u64::from_le_bytes(base),
        packed,
    })
}

/// The length of the free chunk at the start of `bytes` (FORMAT.md §3), if there is one there.
pub fn decode_free_chunk(bytes: &[u8]) -> Option<usize> {
    let h = bytes.get(..8)?;
    if h[..4] != FREE_CHUNK_MAGIC {
        return None;
    }
    let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
    (len >= GRANULE && len.is_multiple_of(GRANULE) && len <= MAX_CHUNK_SIZE).then_some(len)
}

/// What came out of decoding at one position of a chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole record, and the position after it.
    Record(Record, usize),
    /// Padding or the end of the chunk's bytes: no more records in this chunk.
    End,
    /// The bytes at this position are not a valid record (corrupt, or cut by the end of the file).
    Invalid,
}

/// The bincode options of the header and module records: fixed-width integers, as
/// `bincode::serialize` writes them, with a size limit for untrusted input.
pub(crate) fn bincode_read<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(MAX_MODULE_RECORD_LEN as u64)
        .deserialize(bytes)
        .ok()
}

fn read_bytes<'a>(data: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let len = usize::try_from(read_u64(data, pos)?).ok()?;
    if len > MAX_LABEL_LEN {
        return None;
    }
    let end = pos.checked_add(len)?;
    let bytes = data.get(*pos..end)?;
    *pos = end;
    Some(bytes)
}

/// A length-prefixed bincode payload of at most `limit` bytes (module and Python code records).
fn read_payload<T: serde::de::DeserializeOwned>(
    data: &[u8],
    pos: &mut usize,
    limit: usize,
) -> Option<T> {
    let len = usize::try_from(read_u64(data, pos)?).ok()?;
    if len > limit {
        return None;
    }
    let end = pos.checked_add(len)?;
    let value = bincode_read(data.get(*pos..end)?)?;
    *pos = end;
    Some(value)
}

#[inline(always)]
fn read_u32(data: &[u8], pos: &mut usize) -> Option<u32> {
    u32::try_from(read_u64(data, pos)?).ok()
}

/// Decodes the record at `data[pos..]`, where `data` is a chunk's bytes (header included), `st` its
/// delta state and `stack` the frames of the last stack defined in the chunk so far (empty at its
/// start), both advanced on success.
#[inline]
pub fn decode_record(
    data: &[u8],
    pos: usize,
    st: &mut ChunkState,
    stack: &mut Vec<Frame>,
) -> Decoded {
    match decode_step(data, pos, st, stack) {
        Step::Event(e, next) => Decoded::Record(e.record(st), next),
        Step::Other(r, next) => Decoded::Record(*r, next),
        Step::End => Decoded::End,
        Step::Invalid => Decoded::Invalid,
    }
}

/// A heap event as the reader's hot path decodes it: small and `Copy`, without its time and (new)
/// address, which are the chunk state's after decoding it. [`Event::record`] makes the [`Record`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Event {
    Alloc {
        kind: AllocKind,
        stack: u32,
        size: u64,
    },
    Realloc {
        stack: u32,
        size: u64,
        old: u64,
    },
    Free,
}

impl Event {
    /// The record, given the chunk state right after the event was decoded.
    #[inline(always)]
    pub(crate) fn record(self, st: &ChunkState) -> Record {
        match self {
            Event::Alloc { kind, stack, size } => Record::Alloc {
                time: st.time,
                kind,
                stack,
                size,
                addr: st.addr,
            },
            Event::Realloc { stack, size, old } => Record::Realloc {
                time: st.time,
                stack,
                size,
                old,
                new: st.addr,
            },
            Event::Free => Record::Free {
                time: st.time,
                addr: st.addr,
            },
        }
    }
}

/// [`Decoded`] for the reader's hot path: heap events stay small ([`Event`]), and the rare records
/// are boxed so that no step carries a whole [`Record`] around.
#[derive(Debug)]
pub(crate) enum Step {
    Event(Event, usize),
    Other(Box<Record>, usize),
    End,
    Invalid,
}

/// [`decode_record`], as a [`Step`].
#[inline(always)]
pub(crate) fn decode_step(
    data: &[u8],
    pos: usize,
    st: &mut ChunkState,
    stack: &mut Vec<Frame>,
) -> Step {
    let Some(&t) = data.get(pos) else {
        return Step::End;
    };
    if t == tag::PAD {
        return Step::End;
    }
    let mut p = pos + 1;
    // The state changes only once the whole record has decoded.
    let mut next = *st;
    let event = decode_event(data, &mut p, t, &mut next);
    match event {
        Some(e) => {
            *st = next;
            Step::Event(e, p)
        }
        None => decode_other(data, pos + 1, t, st, stack),
    }
}

/// The body of a heap event with tag `t` at `data[*p..]`, advancing `p` and `next`; `None` for any
/// other tag, and for a heap event that does not decode.
#[inline(always)]
fn decode_event(data: &[u8], p: &mut usize, t: u8, next: &mut ChunkState) -> Option<Event> {
    Some(match t {
        tag::FREE => {
            next.time = next.time.wrapping_add(read_u64(data, p)?);
            next.addr = read_delta(data, p, next.addr)?;
            Event::Free
        }
        _ if (tag::ALLOC..tag::ALLOC + 7).contains(&t) => {
            next.time = next.time.wrapping_add(read_u64(data, p)?);
            let stack = read_u32(data, p)?;
            let size = read_u64(data, p)?;
            next.addr = read_delta(data, p, next.addr)?;
            Event::Alloc {
                kind: AllocKind::from_u8(t - tag::ALLOC)?,
                stack,
                size,
            }
        }
        tag::REALLOC => {
            next.time = next.time.wrapping_add(read_u64(data, p)?);
            let stack = read_u32(data, p)?;
            let size = read_u64(data, p)?;
            let old = read_delta(data, p, next.addr)?;
            next.addr = read_delta(data, p, old)?;
            Event::Realloc { stack, size, old }
        }
        _ => return None,
    })
}

/// Every record that is not a heap event (stacks, modules, marks, names, the end), and any record
/// that does not decode: out of line, off the hot path.
#[cold]
#[inline(never)]
fn decode_other(
    data: &[u8],
    mut p: usize,
    t: u8,
    st: &mut ChunkState,
    stack: &mut Vec<Frame>,
) -> Step {
    let mut time = st.time;
    match decode_other_record(data, &mut p, t, &mut time, stack) {
        Some(r) => {
            st.time = time;
            Step::Other(Box::new(r), p)
        }
        None => Step::Invalid,
    }
}

fn decode_other_record(
    data: &[u8],
    p: &mut usize,
    t: u8,
    time: &mut u64,
    stack: &mut Vec<Frame>,
) -> Option<Record> {
    if matches!(t, tag::FREE | tag::REALLOC) || (tag::ALLOC..tag::ALLOC + 7).contains(&t) {
        // A heap event that did not decode.
        return None;
    }
    Some(match t {
        tag::STACK | tag::STACK_SHARED => {
            let id = read_u32(data, p)?;
            let shared = if t == tag::STACK_SHARED {
                usize::try_from(read_u64(data, p)?).ok()?
            } else {
                0
            };
            if shared > stack.len() {
                return None;
            }
            let n = usize::try_from(read_u64(data, p)?).ok()?;
            if n > MAX_FRAMES || n + shared > MAX_FRAMES {
                return None;
            }
            let mut frames = Vec::with_capacity(n + shared);
            let mut module = 0i64;
            for _ in 0..n {
                module = module.checked_add(unzigzag(read_u64(data, p)?))?;
                let offset = read_u64(data, p)?;
                frames.push(Frame {
                    module: u32::try_from(module).ok()?,
                    offset,
                });
            }
            frames.extend_from_slice(&stack[stack.len() - shared..]);
            stack.clone_from(&frames);
            Record::Stack { id, frames }
        }
        tag::MODULE => Record::Module(read_payload(data, p, MAX_MODULE_RECORD_LEN)?),
        tag::PY_CODE => Record::PyCode(read_payload(data, p, MAX_PY_CODE_RECORD_LEN)?),
        tag::MODULE_UNLOAD => {
            *time = time.wrapping_add(read_u64(data, p)?);
            Record::ModuleUnload {
                time: *time,
                id: read_u32(data, p)?,
            }
        }
        tag::MARK => {
            *time = time.wrapping_add(read_u64(data, p)?);
            let label = String::from_utf8_lossy(read_bytes(data, p)?).into_owned();
            Record::Mark { time: *time, label }
        }
        tag::THREAD_NAME => Record::ThreadName {
            name: String::from_utf8_lossy(read_bytes(data, p)?).into_owned(),
        },
        tag::END => {
            *time = time.wrapping_add(read_u64(data, p)?);
            Record::End { time: *time }
        }
        _ => return None,
    })
}
