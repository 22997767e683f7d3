//! The writer's side of FORMAT.md: the file header, chunk headers and every record, encoded into
//! caller-owned byte slices.
//!
//! The record encoders never allocate and never panic, so the preload calls them from inside malloc.
//! Each one writes the record's body first and its tag byte last, behind a compiler fence: a process
//! killed in the middle of a record leaves a zero tag, which a reader takes as the end of the chunk
//! (FORMAT.md §5). On `None` (no room) nothing observable was written and the state is unchanged.

use crate::record::{
    AllocKind, CHUNK_HEADER_SIZE, CHUNK_MAGIC, FILE_MAGIC, FORMAT_VERSION, FREE_CHUNK_MAGIC, Frame,
    HEADER_SIZE, Header, MAX_FRAMES, MAX_LABEL_LEN, MAX_PY_CODE_RECORD_LEN, ModuleInfo, PyCodeInfo,
    tag,
};
use crate::varint::{write_delta, write_u64};
use core::sync::atomic::{Ordering, compiler_fence};

/// The delta bases of one chunk: the previous record's time and address (FORMAT.md §4.1), and
/// whether a stack has been defined in it (the base of a shared-stack record, §4.12).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkState {
    /// Time of the previous timed record, or the chunk's base time.
    pub time: u64,
    /// Address of the previous address-bearing record, or 0.
    pub addr: u64,
    /// A stack record is in the chunk: the next stack may be written as shared with it.
    pub has_stack: bool,
}

impl ChunkState {
    /// The state at the start of a chunk whose header carries `base_time`.
    pub fn new(base_time: u64) -> ChunkState {
        ChunkState {
            time: base_time,
            addr: 0,
            has_stack: false,
        }
    }
}

/// Fields of a chunk header (FORMAT.md §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Length of the chunk in bytes, header included; a multiple of `GRANULE`.
    pub len: u32,
    /// Thread index within the trace, from 1 in order of first event.
    pub thread: u32,
    /// The thread's OS id.
    pub tid: u32,
    /// Sequence number of this chunk within its thread, from 0.
    pub seq: u32,
    /// Time base of the chunk's first record.
    pub base_time: u64,
    /// 0: the records follow the header as they are. Otherwise the length of the zstd frame that
    /// follows the header and holds them (FORMAT.md §3, version 3).
    pub packed: u32,
}

/// Writes a chunk header into `out[..CHUNK_HEADER_SIZE]`, magic last. `false` if `out` is too short.
pub fn encode_chunk_header(out: &mut [u8], h: &ChunkHeader) -> bool {
    let Some(dst) = out.get_mut(..CHUNK_HEADER_SIZE) else {
        return false;
    };
    dst[4..8].copy_from_slice(&h.len.to_le_bytes());
    dst[8..12].copy_from_slice(&h.thread.to_le_bytes());
    dst[12..16].copy_from_slice(&h.tid.to_le_bytes());
    dst[16..20].copy_from_slice(&h.seq.to_le_bytes());
    dst[20..24].copy_from_slice(&h.packed.to_le_bytes());
    dst[24..32].copy_from_slice(&h.base_time.to_le_bytes());
    compiler_fence(Ordering::Release);
    dst[..4].copy_from_slice(&CHUNK_MAGIC);
    true
}

/// Marks the chunk at the start of `out` free (FORMAT.md §3): readers skip its `len` bytes.
/// Written before a chunk's space is reused, so that a reader never sees it half rewritten.
pub fn encode_free_chunk(out: &mut [u8], len: u32) -> bool {
    let Some(dst) = out.get_mut(..8) else {
        return false;
    };
    dst[4..8].copy_from_slice(&len.to_le_bytes());
    compiler_fence(Ordering::Release);
    dst[..4].copy_from_slice(&FREE_CHUNK_MAGIC);
    true
}

/// Finishes a record whose body is in `out[1..end]`: fence, then the tag. Returns the length.
#[inline]
fn seal(out: &mut [u8], record_tag: u8, end: usize) -> Option<usize> {
    compiler_fence(Ordering::Release);
    *out.first_mut()? = record_tag;
    Some(end)
}

/// Encodes an allocation record (FORMAT.md §4.2).
#[inline(always)]
pub fn encode_alloc(
    out: &mut [u8],
    st: &mut ChunkState,
    time: u64,
    kind: AllocKind,
    stack: u32,
    size: u64,
    addr: u64,
) -> Option<usize> {
    let mut pos = 1;
    write_u64(out, &mut pos, time.wrapping_sub(st.time))?;
    write_u64(out, &mut pos, u64::from(stack))?;
    write_u64(out, &mut pos, size)?;
    write_delta(out, &mut pos, st.addr, addr)?;
    let n = seal(out, tag::ALLOC + kind as u8, pos)?;
    st.time = time;
    st.addr = addr;
    Some(n)
}

/// Encodes a realloc record (FORMAT.md §4.3). `old` is 0 for `realloc(NULL, n)`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn encode_realloc(
    out: &mut [u8],
    st: &mut ChunkState,
    time: u64,
    stack: u32,
    size: u64,
    old: u64,
    new: u64,
) -> Option<usize> {
    let mut pos = 1;
    write_u64(out, &mut pos, time.wrapping_sub(st.time))?;
    write_u64(out, &mut pos, u64::from(stack))?;
    write_u64(out, &mut pos, size)?;
    write_delta(out, &mut pos, st.addr, old)?;
    write_delta(out, &mut pos, old, new)?;
    let n = seal(out, tag::REALLOC, pos)?;
    st.time = time;
    st.addr = new;
    Some(n)
}

/// Encodes a free record (FORMAT.md §4.4).
#[inline(always)]
pub fn encode_free(out: &mut [u8], st: &mut ChunkState, time: u64, addr: u64) -> Option<usize> {
    let mut pos = 1;
    write_u64(out, &mut pos, time.wrapping_sub(st.time))?;
    write_delta(out, &mut pos, st.addr, addr)?;
    let n = seal(out, tag::FREE, pos)?;
    st.time = time;
    st.addr = addr;
    Some(n)
}

/// Fewest outer frames a stack must share with the chunk's previous one to be written as a shared
/// stack (§4.12) rather than in full.
const MIN_SHARED_FRAMES: usize = 2;

/// Encodes a stack definition: in full (FORMAT.md §4.5), or, when it shares at least two outer
/// frames with `prev`, the previous stack defined in this chunk, as a shared stack (§4.12). Frames
/// past [`MAX_FRAMES`] are dropped; the caller keeps `frames[..MAX_FRAMES]` as the next `prev`.
pub fn encode_stack(
    out: &mut [u8],
    st: &mut ChunkState,
    id: u32,
    frames: &[Frame],
    prev: &[Frame],
) -> Option<usize> {
    let frames = &frames[..frames.len().min(MAX_FRAMES)];
    let shared = if st.has_stack {
        frames
            .iter()
            .rev()
            .zip(prev.iter().rev())
            .take_while(|(a, b)| a == b)
            .count()
    } else {
        0
    };
    let mut pos = 1;
    write_u64(out, &mut pos, u64::from(id))?;
    let (record_tag, own) = if shared >= MIN_SHARED_FRAMES {
        write_u64(out, &mut pos, shared as u64)?;
        (tag::STACK_SHARED, &frames[..frames.len() - shared])
    } else {
        (tag::STACK, frames)
    };
    write_u64(out, &mut pos, own.len() as u64)?;
    let mut prev_module = 0u32;
    for f in own {
        // Module ids repeat from frame to frame: a zigzag delta keeps them to one byte.
        write_u64(
            out,
            &mut pos,
            crate::varint::zigzag(i64::from(f.module) - i64::from(prev_module)),
        )?;
        write_u64(out, &mut pos, f.offset)?;
        prev_module = f.module;
    }
    let n = seal(out, record_tag, pos)?;
    st.has_stack = true;
    Some(n)
}

/// Encodes a record that is a length-prefixed bincode payload (modules, Python code).
fn encode_payload(out: &mut [u8], record_tag: u8, payload: &[u8]) -> Option<usize> {
    let mut pos = 1;
    write_u64(out, &mut pos, payload.len() as u64)?;
    let end = pos.checked_add(payload.len())?;
    out.get_mut(pos..end)?.copy_from_slice(payload);
    seal(out, record_tag, end)
}

/// Encodes a module record (FORMAT.md §4.6) from its bincode payload ([`module_payload`]).
pub fn encode_module(out: &mut [u8], payload: &[u8]) -> Option<usize> {
    encode_payload(out, tag::MODULE, payload)
}

/// The bincode payload of a module record.
pub fn module_payload(module: &ModuleInfo) -> Vec<u8> {
    // Serializing a plain struct into a Vec cannot fail.
    bincode::serialize(module).unwrap_or_default()
}

/// Encodes a Python code record (FORMAT.md §4.11) from its bincode payload ([`py_code_payload`]).
pub fn encode_py_code(out: &mut [u8], payload: &[u8]) -> Option<usize> {
    encode_payload(out, tag::PY_CODE, payload)
}

/// The bincode payload of a Python code record; a line table that would make it longer than
/// [`MAX_PY_CODE_RECORD_LEN`] is left out (lines then read as the first line).
pub fn py_code_payload(code: &PyCodeInfo) -> Vec<u8> {
    // Serializing a plain struct into a Vec cannot fail.
    let payload = bincode::serialize(code).unwrap_or_default();
    if payload.len() <= MAX_PY_CODE_RECORD_LEN {
        return payload;
    }
    let mut short = code.clone();
    short.line_table = Vec::new();
    short.line_table_kind = crate::record::line_table::NONE;
    short.filename.truncate(4096);
    short.qualname.truncate(4096);
    short.name.truncate(4096);
    bincode::serialize(&short).unwrap_or_default()
}

/// Encodes a module-unload record (FORMAT.md §4.7).
pub fn encode_module_unload(
    out: &mut [u8],
    st: &mut ChunkState,
    time: u64,
    id: u32,
) -> Option<usize> {
    let mut pos = 1;
    write_u64(out, &mut pos, time.wrapping_sub(st.time))?;
    write_u64(out, &mut pos, u64::from(id))?;
    let n = seal(out, tag::MODULE_UNLOAD, pos)?;
    st.time = time;
    Some(n)
}

/// Writes a length-prefixed byte string (cut to [`MAX_LABEL_LEN`]).
fn write_bytes(out: &mut [u8], pos: &mut usize, bytes: &[u8]) -> Option<()> {
    let bytes = &bytes[..bytes.len().min(MAX_LABEL_LEN)];
    write_u64(out, pos, bytes.len() as u64)?;
    let end = pos.checked_add(bytes.len())?;
    out.get_mut(*pos..end)?.copy_from_slice(bytes);
    *pos = end;
    Some(())
}

/// Encodes a mark record (FORMAT.md §4.8). Labels longer than [`MAX_LABEL_LEN`] bytes are cut.
pub fn encode_mark(out: &mut [u8], st: &mut ChunkState, time: u64, label: &[u8]) -> Option<usize> {
    let mut pos = 1;
    write_u64(out, &mut pos, time.wrapping_sub(st.time))?;
    write_bytes(out, &mut pos, label)?;
    let n = seal(out, tag::MARK, pos)?;
    st.time = time;
    Some(n)
}

/// Encodes a thread-name record (FORMAT.md §4.9).
pub fn encode_thread_name(out: &mut [u8], name: &[u8]) -> Option<usize> {
    let mut pos = 1;
    write_bytes(out, &mut pos, name)?;
    seal(out, tag::THREAD_NAME, pos)
}

/// Encodes the end record (FORMAT.md §4.10).
pub fn encode_end(out: &mut [u8], st: &mut ChunkState, time: u64) -> Option<usize> {
    let mut pos = 1;
    write_u64(out, &mut pos, time.wrapping_sub(st.time))?;
    let n = seal(out, tag::END, pos)?;
    st.time = time;
    Some(n)
}

/// Encodes the file header region (FORMAT.md §2): exactly [`HEADER_SIZE`] bytes. The command line is
/// cut, last arguments first, until the header fits.
pub fn encode_file_header(header: &Header) -> Vec<u8> {
    let mut header = header.clone();
    let mut payload = bincode::serialize(&header).unwrap_or_default();
    while 16 + payload.len() > HEADER_SIZE {
        if header.cmdline.pop().is_none() {
            header.executable.truncate(1024);
            header.parent_trace = header.parent_trace.map(|mut p| {
                p.truncate(1024);
                p
            });
        }
        payload = bincode::serialize(&header).unwrap_or_default();
    }
    let mut out = vec![0u8; HEADER_SIZE];
    out[..8].copy_from_slice(&FILE_MAGIC);
    out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    out[16..16 + payload.len()].copy_from_slice(&payload);
    out
}
