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
    match decode_step(data, pos, st, stack, 0) {
        Step::Event(e, next) => Decoded::Record(e.record(), next),
        Step::Other(r, next) => Decoded::Record(*r, next),
        Step::End => Decoded::End,
        Step::Invalid => Decoded::Invalid,
    }
}

/// What a heap event did: its record's tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// An allocation (FORMAT.md §4.2), by the function that made it.
    Alloc(AllocKind),
    /// A realloc (§4.3): `old` released, `addr` live.
    Realloc,
    /// A free (§4.4) of `addr`.
    Free,
}

/// A heap event (an alloc, realloc or free record) as the reader's hot path hands it out: plain
/// `Copy` data, so that runs of them are decoded into and read from flat arrays
/// ([`crate::Records::for_each_batch`]). [`HeapEvent::record`] and [`HeapEvent::of`] convert from
/// and to the [`Record`] of the same event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapEvent {
    /// Time of the call, ns since the trace start.
    pub time: u64,
    /// The block allocated (an alloc), returned (a realloc's new block) or freed (a free).
    pub addr: u64,
    /// Requested size in bytes (0 for a free).
    pub size: u64,
    /// A realloc's old block (0 for `realloc(NULL, n)`, and for anything but a realloc).
    pub old: u64,
    /// Stack id (0 for a free).
    pub stack: u32,
    /// The thread that wrote it (its index in the trace; 0 when decoded outside a trace).
    pub thread: u32,
    /// Which event.
    pub kind: EventKind,
}

impl HeapEvent {
    /// A free of address 0 at time 0: a placeholder.
    pub const EMPTY: HeapEvent = HeapEvent {
        time: 0,
        addr: 0,
        size: 0,
        old: 0,
        stack: 0,
        thread: 0,
        kind: EventKind::Free,
    };

    /// The event's [`Record`].
    #[inline(always)]
    pub fn record(&self) -> Record {
        match self.kind {
            EventKind::Alloc(kind) => Record::Alloc {
                time: self.time,
                kind,
                stack: self.stack,
                size: self.size,
                addr: self.addr,
            },
            EventKind::Realloc => Record::Realloc {
                time: self.time,
                stack: self.stack,
                size: self.size,
                old: self.old,
                new: self.addr,
            },
            EventKind::Free => Record::Free {
                time: self.time,
                addr: self.addr,
            },
        }
    }

    /// The heap event of `record`, written by `thread`, if it is one.
    #[inline(always)]
    pub fn of(thread: u32, record: &Record) -> Option<HeapEvent> {
        Some(match *record {
            Record::Alloc {
                time,
                kind,
                stack,
                size,
                addr,
            } => HeapEvent {
                time,
                addr,
                size,
                old: 0,
                stack,
                thread,
                kind: EventKind::Alloc(kind),
            },
            Record::Realloc {
                time,
                stack,
                size,
                old,
                new,
            } => HeapEvent {
                time,
                addr: new,
                size,
                old,
                stack,
                thread,
                kind: EventKind::Realloc,
            },
            Record::Free { time, addr } => HeapEvent {
                time,
                addr,
                size: 0,
                old: 0,
                stack: 0,
                thread,
                kind: EventKind::Free,
            },
            _ => return None,
        })
    }
}

/// [`Decoded`] for the reader's hot path: heap events stay small ([`HeapEvent`]), and the rare
/// records are boxed so that no step carries a whole [`Record`] around.
#[derive(Debug)]
pub(crate) enum Step {
    Event(HeapEvent, usize),
    Other(Box<Record>, usize),
    End,
    Invalid,
}

/// [`decode_record`], as a [`Step`]; heap events are stamped with `thread`.
#[inline(always)]
pub(crate) fn decode_step(
    data: &[u8],
    pos: usize,
    st: &mut ChunkState,
    stack: &mut Vec<Frame>,
    thread: u32,
) -> Step {
    let Some(&t) = data.get(pos) else {
        return Step::End;
    };
    if t == tag::PAD {
        return Step::End;
    }
    let mut p = pos + 1;
    match decode_event(data, &mut p, t, st.time, st.addr, thread) {
        Some(e) => {
            st.time = e.time;
            st.addr = e.addr;
            Step::Event(e, p)
        }
        None => decode_other(data, pos + 1, t, st, stack),
    }
}

/// The body of a heap event with tag `t` at `data[*p..]`, whose chunk's delta bases are `time` and
/// `addr`, advancing `p`; `None` for any other tag, and for a heap event that does not decode.
/// The event's time and address are the chunk's next delta bases.
#[inline(always)]
pub(crate) fn decode_event(
    data: &[u8],
    p: &mut usize,
    t: u8,
    time: u64,
    addr: u64,
    thread: u32,
) -> Option<HeapEvent> {
    Some(match t {
        tag::FREE => {
            let time = time.wrapping_add(read_u64(data, p)?);
            HeapEvent {
                time,
                addr: read_delta(data, p, addr)?,
                size: 0,
                old: 0,
                stack: 0,
                thread,
                kind: EventKind::Free,
            }
        }
        _ if (tag::ALLOC..tag::ALLOC + 7).contains(&t) => {
            let time = time.wrapping_add(read_u64(data, p)?);
            let stack = read_u32(data, p)?;
            let size = read_u64(data, p)?;
            HeapEvent {
                time,
                addr: read_delta(data, p, addr)?,
                size,
                old: 0,
                stack,
                thread,
                kind: EventKind::Alloc(AllocKind::from_u8(t - tag::ALLOC)?),
            }
        }
        tag::REALLOC => {
            let time = time.wrapping_add(read_u64(data, p)?);
            let stack = read_u32(data, p)?;
            let size = read_u64(data, p)?;
            let old = read_delta(data, p, addr)?;
            HeapEvent {
                time,
                addr: read_delta(data, p, old)?,
                size,
                old,
                stack,
                thread,
                kind: EventKind::Realloc,
            }
        }
        _ => return None,
    })
}

/// Bytes from a record's tag on that [`decode_event_fast`] reads: every field of a heap event it
/// decodes starts within the first 32, and is read as the 8 bytes from there.
pub(crate) const FAST_WINDOW: usize = 40;

/// [`decode_event`] for a record whose tag and next [`FAST_WINDOW`] - 1 bytes are `win`: the event
/// and its length, the very ones [`decode_event`] gives. `None` is not a verdict: the record is
/// something else, or has a field longer than this path reads (a time delta, size or address delta
/// of over eight bytes, a stack id of over four), and [`decode_event`] must decide.
///
/// This is the reader's innermost loop, and what bounds it is the chain from one record's position
/// to the next one's, and the work per field. So the fields of an alloc or a free are not found
/// one after the other (a load, then a decode to learn its length, per field): the high bits of
/// the eight bytes after the tag mark where the fields in them end (a clear high bit ends a
/// varint), and each field's position is that of one of those bits (the lowest, once the bits
/// before are cleared). A free, whose two fields take eight bytes at most but for a free of the
/// whole address space, ends at its second mark; an alloc's first three fields (time delta, stack
/// id and size: five to eight bytes in practice) end at the first three marks and its address
/// delta, found there, is read with its own length. The fields are then read side by side, each
/// from one 8-byte load with neither a bounds check nor a branch on its length (see
/// [`varint_short`] and [`varint_long`]). Anything else (a realloc, a tenth of the events at most,
/// and longer allocs and frees) reads its fields one after the other
/// ([`decode_event_chained`]).
#[inline(always)]
pub(crate) fn decode_event_fast(
    win: &[u8; FAST_WINDOW],
    time: u64,
    addr: u64,
    thread: u32,
) -> Option<(HeapEvent, usize)> {
    let t = win[0];
    // Bit 8i + 7 set: byte 1 + i is the last byte of a varint (its high bit is clear).
    let c0 = !word_at(win, 1) & 0x8080_8080_8080_8080;
    // The marks of the fields after the first, and after the second.
    let c1 = c0 & c0.wrapping_sub(1);
    let c2 = c1 & c1.wrapping_sub(1);
    // The position after the field whose last byte the lowest set bit of `c` marks.
    let after = |c: u64| (c.trailing_zeros() >> 3) as usize + 2;
    if t == tag::FREE && c1 != 0 {
        let (dt, _) = varint_long(win, 1)?;
        let (d, _) = varint_long(win, after(c0))?;
        let e = HeapEvent {
            time: time.wrapping_add(dt),
            addr: addr.wrapping_add(unzigzag(d) as u64),
            size: 0,
            old: 0,
            stack: 0,
            thread,
            kind: EventKind::Free,
        };
        return Some((e, after(c1)));
    }
    if c2 != 0 && t.wrapping_sub(tag::ALLOC) < 7 {
        let kind = EventKind::Alloc(AllocKind::from_u8(t - tag::ALLOC)?);
        let (dt, _) = varint_long(win, 1)?;
        let (stack, _) = varint_short(win, after(c0))?;
        let (size, _) = varint_long(win, after(c1))?;
        let (d, next) = varint_long(win, after(c2))?;
        let e = HeapEvent {
            time: time.wrapping_add(dt),
            addr: addr.wrapping_add(unzigzag(d) as u64),
            size,
            old: 0,
            stack: stack as u32,
            thread,
            kind,
        };
        return Some((e, next));
    }
    decode_event_chained(win, time, addr, thread)
}

/// [`decode_event_fast`] for a realloc, and for an alloc or a free whose marks are not all in the
/// first eight bytes: each field's position from the end of the one before.
#[inline(always)]
fn decode_event_chained(
    win: &[u8; FAST_WINDOW],
    time: u64,
    addr: u64,
    thread: u32,
) -> Option<(HeapEvent, usize)> {
    let t = win[0];
    let (dt, mut at) = varint_long(win, 1)?;
    let time = time.wrapping_add(dt);
    if t == tag::FREE {
        let (d, at) = varint_long(win, at)?;
        let e = HeapEvent {
            time,
            addr: addr.wrapping_add(unzigzag(d) as u64),
            size: 0,
            old: 0,
            stack: 0,
            thread,
            kind: EventKind::Free,
        };
        return Some((e, at));
    }
    let kind = match t {
        tag::REALLOC => EventKind::Realloc,
        _ => EventKind::Alloc(AllocKind::from_u8(t.wrapping_sub(tag::ALLOC))?),
    };
    let stack;
    (stack, at) = varint_short(win, at)?;
    let size;
    (size, at) = varint_long(win, at)?;
    let d;
    (d, at) = varint_long(win, at)?;
    let mut new = addr.wrapping_add(unzigzag(d) as u64);
    let mut old = 0;
    if kind == EventKind::Realloc {
        old = new;
        let d;
        (d, at) = varint_long(win, at)?;
        new = old.wrapping_add(unzigzag(d) as u64);
    }
    let e = HeapEvent {
        time,
        addr: new,
        size,
        old,
        stack: stack as u32,
        thread,
        kind,
    };
    Some((e, at))
}

/// The eight bytes of `win` from `at`, which is below 32: the fields [`decode_event_fast`] reads
/// all start there (the tag, then at most four fields before the last, none longer than eight
/// bytes: 1 + 4 * 8 = 33, of which the stack id's at most four), and the mask, which keeps it so,
/// spares a bounds check on every field.
#[inline(always)]
fn word_at(win: &[u8; FAST_WINDOW], at: usize) -> u64 {
    debug_assert!(at < 32);
    let at = at & 31;
    let mut w = [0u8; 8];
    w.copy_from_slice(&win[at..at + 8]);
    u64::from_le_bytes(w)
}

/// The varint of at most four bytes at `win[at..]`, and the position after it; `None` if it is
/// longer. Its length comes from the lowest clear high bit: no branch on it.
#[inline(always)]
fn varint_short(win: &[u8; FAST_WINDOW], at: usize) -> Option<(u64, usize)> {
    let word = word_at(win, at) as u32;
    // A clear high bit marks the last byte of the varint.
    let ends = !word & 0x8080_8080;
    if ends == 0 {
        return None;
    }
    Some(gather_short(word, ends, at))
}

/// The value and end of a varint of at most four bytes in `word`, whose lowest clear high bit,
/// the last byte's, is the lowest bit of `ends` (not 0).
#[inline(always)]
fn gather_short(word: u32, ends: u32, at: usize) -> (u64, usize) {
    // Every bit up to the last byte's high bit, which is clear in `word`.
    let keep = ends ^ (ends - 1);
    let len = (ends.trailing_zeros() as usize + 1) / 8;
    // Drop the high bits, then close the gaps between the 7-bit groups: pairs, then halves.
    let mut x = word & keep & 0x7f7f_7f7f;
    x = (x & 0x007f_007f) | ((x & 0x7f00_7f00) >> 1);
    x = (x & 0x0000_3fff) | ((x & 0x3fff_0000) >> 2);
    (u64::from(x), at + len)
}

/// [`varint_short`] for a varint of at most eight bytes, the short ones still the fastest.
#[inline(always)]
fn varint_long(win: &[u8; FAST_WINDOW], at: usize) -> Option<(u64, usize)> {
    let word = word_at(win, at);
    let ends = !word & 0x8080_8080_8080_8080;
    if ends as u32 != 0 {
        return Some(gather_short(word as u32, ends as u32, at));
    }
    varint_upper(word, ends, at)
}

/// [`varint_long`] for a varint of five to eight bytes.
#[cold]
#[inline(never)]
fn varint_upper(word: u64, ends: u64, at: usize) -> Option<(u64, usize)> {
    if ends == 0 {
        return None;
    }
    let keep = ends ^ (ends - 1);
    let len = (ends.trailing_zeros() as usize + 1) / 8;
    let mut x = word & keep & 0x7f7f_7f7f_7f7f_7f7f;
    x = (x & 0x007f_007f_007f_007f) | ((x & 0x7f00_7f00_7f00_7f00) >> 1);
    x = (x & 0x0000_3fff_0000_3fff) | ((x & 0x3fff_0000_3fff_0000) >> 2);
    x = (x & 0x0000_0000_0fff_ffff) | ((x & 0x0fff_ffff_0000_0000) >> 4);
    Some((x, at + len))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::{encode_alloc, encode_free, encode_realloc};
    use proptest::prelude::*;

    /// `decode_event_fast` on `win`, checked against `decode_event` on the same bytes: where the
    /// fast path answers, it is the slow path's answer, and so is the chained path's (for every
    /// kind of event). Returns the fast path's.
    fn fast_is_slow(win: &[u8; FAST_WINDOW], time: u64, addr: u64) -> Option<(HeapEvent, usize)> {
        let mut p = 1;
        let slow = decode_event(win, &mut p, win[0], time, addr, 7);
        let fast = decode_event_fast(win, time, addr, 7);
        if let Some((e, len)) = fast {
            assert_eq!(slow, Some(e));
            assert_eq!(p, len);
        }
        if let Some((e, len)) = decode_event_chained(win, time, addr, 7) {
            assert_eq!(slow, Some(e));
            assert_eq!(p, len);
        }
        fast
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any bytes at all, any tag: the fast path agrees with the slow one or leaves it to it.
        #[test]
        fn fast_path_agrees_on_any_bytes(
            bytes in prop::collection::vec(any::<u8>(), FAST_WINDOW),
            tag_byte in prop::sample::select(vec![0x10u8, 0x11, 0x16, 0x17, 0x20, 0x30, 0x40, 0]),
            // Bytes with their high bit set more often, so that long varints are common.
            long_bits in any::<u64>(),
            time: u64,
            addr: u64,
        ) {
            let mut win = [0u8; FAST_WINDOW];
            win.copy_from_slice(&bytes);
            win[0] = tag_byte;
            for (i, b) in win.iter_mut().enumerate().skip(1).take(32) {
                if long_bits >> (i % 64) & 1 == 1 {
                    *b |= 0x80;
                }
            }
            fast_is_slow(&win, time, addr);
        }

        /// Every heap event a writer produces with fields the fast path reads (a stack id below
        /// 2^28, every other field of at most eight bytes) decodes on the fast path, to itself.
        #[test]
        fn fast_path_decodes_written_events(
            what in 0u8..3,
            kind in 0u8..7,
            stack in 0u32..(1 << 28),
            size_bits in 0u32..57,
            size: u64,
            dt_bits in 0u32..57,
            dt: u64,
            st_time: u64,
            st_addr: u64,
            delta_bits in 0u32..55,
            deltas: (i64, i64),
        ) {
            let size = size & ((1u64 << size_bits) - 1);
            let time = st_time.wrapping_add(dt & ((1u64 << dt_bits) - 1));
            let short = |d: i64| d >> (63 - delta_bits);
            let addr = st_addr.wrapping_add(short(deltas.0) as u64);
            let new = addr.wrapping_add(short(deltas.1) as u64);
            let mut win = [0u8; FAST_WINDOW];
            let mut st = ChunkState { time: st_time, addr: st_addr, has_stack: false };
            let kind = AllocKind::from_u8(kind).unwrap();
            let (len, want) = match what {
                0 => (
                    encode_alloc(&mut win, &mut st, time, kind, stack, size, addr),
                    Record::Alloc { time, kind, stack, size, addr },
                ),
                1 => (
                    encode_realloc(&mut win, &mut st, time, stack, size, addr, new),
                    Record::Realloc { time, stack, size, old: addr, new },
                ),
                _ => (encode_free(&mut win, &mut st, time, addr), Record::Free { time, addr }),
            };
            let len = len.expect("every event fits the window");
            let Some((e, n)) = fast_is_slow(&win, st_time, st_addr) else {
                // Allocs and frees whose marks are not all in the first eight bytes take the
                // chained path, which reads these fields too: nothing is left to the slow path.
                return Err(TestCaseError::fail(format!("the fast path refused {want:?}")));
            };
            prop_assert_eq!(n, len);
            prop_assert_eq!(e.record(), want.clone());
            prop_assert_eq!(HeapEvent::of(7, &want), Some(e));
            prop_assert_eq!((e.time, e.addr), (st.time, st.addr));
        }
    }

    #[test]
    fn long_fields_are_left_to_the_slow_path() {
        let mut win = [0u8; FAST_WINDOW];
        let mut st = ChunkState::default();
        // A stack id of five bytes, a size of nine: both valid, both for the slow path.
        encode_alloc(&mut win, &mut st, 5, AllocKind::Malloc, u32::MAX, 1, 16).unwrap();
        assert_eq!(fast_is_slow(&win, 0, 0), None);
        let mut p = 1;
        assert!(decode_event(&win, &mut p, win[0], 0, 0, 7).is_some());
        let mut st = ChunkState::default();
        encode_alloc(&mut win, &mut st, 5, AllocKind::Malloc, 1, u64::MAX, 16).unwrap();
        assert_eq!(fast_is_slow(&win, 0, 0), None);
        let mut p = 1;
        assert!(decode_event(&win, &mut p, win[0], 0, 0, 7).is_some());
    }
}
