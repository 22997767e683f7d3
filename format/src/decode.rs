//! The reader's side of FORMAT.md for one chunk: its header and its records, decoded from bytes.
//!
//! Every length and count read from the file is checked against the format's limits before use,
//! so corrupt or hostile input can cost neither unbounded memory nor unbounded time.

use crate::encode::{ChunkHeader, ChunkState};
use crate::record::{
    AllocKind, CHUNK_HEADER_SIZE, CHUNK_MAGIC, Frame, GRANULE, MAX_CHUNK_SIZE, MAX_FRAMES,
    MAX_LABEL_LEN, MAX_MODULE_RECORD_LEN, ModuleInfo, Record, tag,
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
    let mut base = [0u8; 8];
    base.copy_from_slice(&h[24..32]);
    Some(ChunkHeader {
        len,
        thread: u32_at(8),
        tid: u32_at(12),
        seq: u32_at(16),
        base_time: u64::from_le_bytes(base),
    })
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

fn read_u32(data: &[u8], pos: &mut usize) -> Option<u32> {
    u32::try_from(read_u64(data, pos)?).ok()
}

/// Decodes the record at `data[pos..]`, where `data` is a chunk's bytes (header included) and `st`
/// its delta state, which is advanced on success.
pub fn decode_record(data: &[u8], pos: usize, st: &mut ChunkState) -> Decoded {
    let Some(&t) = data.get(pos) else {
        return Decoded::End;
    };
    if t == tag::PAD {
        return Decoded::End;
    }
    let mut p = pos + 1;
    let mut next = *st;
    let record = (|| -> Option<Record> {
        Some(match t {
            _ if (tag::ALLOC..tag::ALLOC + 7).contains(&t) => {
                next.time = next.time.wrapping_add(read_u64(data, &mut p)?);
                let stack = read_u32(data, &mut p)?;
                let size = read_u64(data, &mut p)?;
                next.addr = read_delta(data, &mut p, next.addr)?;
                Record::Alloc {
                    time: next.time,
                    kind: AllocKind::from_u8(t - tag::ALLOC)?,
                    stack,
                    size,
                    addr: next.addr,
                }
            }
            tag::REALLOC => {
                next.time = next.time.wrapping_add(read_u64(data, &mut p)?);
                let stack = read_u32(data, &mut p)?;
                let size = read_u64(data, &mut p)?;
                let old = read_delta(data, &mut p, next.addr)?;
                next.addr = read_delta(data, &mut p, old)?;
                Record::Realloc {
                    time: next.time,
                    stack,
                    size,
                    old,
                    new: next.addr,
                }
            }
            tag::FREE => {
                next.time = next.time.wrapping_add(read_u64(data, &mut p)?);
                next.addr = read_delta(data, &mut p, next.addr)?;
                Record::Free {
                    time: next.time,
                    addr: next.addr,
                }
            }
            tag::STACK => {
                let id = read_u32(data, &mut p)?;
                let n = usize::try_from(read_u64(data, &mut p)?).ok()?;
                if n > MAX_FRAMES {
                    return None;
                }
                let mut frames = Vec::with_capacity(n);
                let mut module = 0i64;
                for _ in 0..n {
                    module = module.checked_add(unzigzag(read_u64(data, &mut p)?))?;
                    let offset = read_u64(data, &mut p)?;
                    frames.push(Frame {
                        module: u32::try_from(module).ok()?,
                        offset,
                    });
                }
                Record::Stack { id, frames }
            }
            tag::MODULE => {
                let len = usize::try_from(read_u64(data, &mut p)?).ok()?;
                if len > MAX_MODULE_RECORD_LEN {
                    return None;
                }
                let end = p.checked_add(len)?;
                let module: ModuleInfo = bincode_read(data.get(p..end)?)?;
                p = end;
                Record::Module(module)
            }
            tag::MODULE_UNLOAD => {
                next.time = next.time.wrapping_add(read_u64(data, &mut p)?);
                Record::ModuleUnload {
                    time: next.time,
                    id: read_u32(data, &mut p)?,
                }
            }
            tag::MARK => {
                next.time = next.time.wrapping_add(read_u64(data, &mut p)?);
                let label = String::from_utf8_lossy(read_bytes(data, &mut p)?).into_owned();
                Record::Mark {
                    time: next.time,
                    label,
                }
            }
            tag::THREAD_NAME => Record::ThreadName {
                name: String::from_utf8_lossy(read_bytes(data, &mut p)?).into_owned(),
            },
            tag::END => {
                next.time = next.time.wrapping_add(read_u64(data, &mut p)?);
                Record::End { time: next.time }
            }
            _ => return None,
        })
    })();
    match record {
        Some(r) => {
            *st = next;
            Decoded::Record(r, p)
        }
        None => Decoded::Invalid,
    }
}
