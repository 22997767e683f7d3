//! The calling thread's Python frames, walked at each allocation: from the thread state through the
//! interpreter's frame chain, innermost first, keeping for each frame its code object, its line
//! table and the byte offset of the instruction it is executing. No Python API is called but the
//! thread-state lookup, and nothing is allocated: a frame chain is only changed by its own thread,
//! which is here, inside malloc.
//!
//! Also here: the start-up self-check, which walks the first non-empty chain with reads that cannot
//! fault (`process_vm_readv` on ourselves) and requires every frame's code object to be a real code
//! object; and the splice that puts the Python frames into the native stack just inside the native
//! frames of the evaluation function that run them (FORMAT.md §4.5).

use super::Interp;
use super::layout::{FrameKind, OB_TYPE, OWNED_BY_CSTACK, OWNED_BY_GENERATOR};
use memtrace_format::{Frame, PyFrame};

/// Deepest Python stack recorded; deeper frames (the outermost) are left out.
pub const MAX_PY_FRAMES: usize = 256;
/// Longest frame chain followed, Python frames or not (a bound against a corrupt chain).
const MAX_CHAIN: usize = 4096;

/// One Python frame as found in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawFrame {
    /// The code object's address.
    pub code: u64,
    /// Its line table's address (with `code`, the code object's identity: `code.rs`).
    pub table: u64,
    /// Byte offset of the executing instruction.
    pub instruction: u32,
    /// The outermost frame of one call of the evaluation function.
    pub entry: bool,
}

/// A thread's last walk: its Python frames, innermost first.
pub struct PyFrames {
    frames: Box<[RawFrame]>,
    len: usize,
}

impl PyFrames {
    /// Room for [`MAX_PY_FRAMES`].
    pub fn new() -> PyFrames {
        PyFrames {
            frames: vec![RawFrame::default(); MAX_PY_FRAMES].into_boxed_slice(),
            len: 0,
        }
    }

    /// Forgets the last walk.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The frames of the last walk, innermost first.
    pub fn frames(&self) -> &[RawFrame] {
        &self.frames[..self.len]
    }

    fn push(&mut self, f: RawFrame) -> bool {
        if self.len == self.frames.len() {
            return false;
        }
        self.frames[self.len] = f;
        self.len += 1;
        true
    }

    /// Marks the frame pushed last as the outermost of its evaluation call.
    fn mark_entry(&mut self) {
        if let Some(f) = self.frames[..self.len].last_mut() {
            f.entry = true;
        }
    }
}

/// Reads 8 bytes at `addr`, trusting that it is mapped; `None` for an address that cannot be a
/// pointer into an object.
#[inline(always)]
pub fn read_direct(addr: u64) -> Option<u64> {
    if addr < 4096 {
        return None;
    }
    // SAFETY: the addresses read are fields of the interpreter's live thread state, frames and code
    // objects of this thread, at offsets of the version's layout (checked once by `check`); objects
    // are larger than the 8 bytes read at any field offset, so an unaligned read of a narrow field
    // stays inside its object.
    Some(unsafe { core::ptr::read_unaligned(addr as *const u64) })
}

/// Reads 8 bytes at `addr`, a field of an object whose address `walk` found to be at least 4096.
#[inline(always)]
fn read_field(addr: u64) -> Option<u64> {
    // SAFETY: as in `read_direct`; `walk` reads only at small field offsets from object addresses
    // it has compared with 4096 itself, so the null page is never read.
    Some(unsafe { core::ptr::read_unaligned(addr as *const u64) })
}

/// Reads 8 bytes at `addr` through the kernel, which fails instead of faulting on an unmapped
/// address: the self-check's reader.
fn read_checked(addr: u64) -> Option<u64> {
    if addr < 4096 {
        return None;
    }
    let mut value = 0u64;
    let local = libc::iovec {
        iov_base: (&mut value as *mut u64).cast(),
        iov_len: 8,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: 8,
    };
    // SAFETY: `local` describes our own 8-byte variable; the kernel reads `remote` on our behalf and
    // reports an unmapped address as an error instead of faulting.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    (n == 8).then_some(value)
}

/// Walks the calling thread's Python frames into `out`; returns a hash of them (0 for none).
#[inline(always)]
pub fn capture(interp: &Interp, out: &mut PyFrames) -> u64 {
    out.clear();
    let tstate = interp.tstate();
    if tstate == 0 {
        return 0;
    }
    walk(interp, tstate, read_field, false, out).unwrap_or(0)
}

/// Walks the chain with `read`. `strict`: any frame whose code is not a code object fails the walk
/// (`None`) instead of being skipped.
///
/// Every address read is a small field offset from an object address (thread state, frame, code
/// object) that was first compared with 4096 here: one comparison per object, none per read, so
/// `read` need not check for the null page. An object address below 4096 fails the walk.
#[inline(always)]
fn walk(
    interp: &Interp,
    tstate: u64,
    read: impl Fn(u64) -> Option<u64>,
    strict: bool,
    out: &mut PyFrames,
) -> Option<u64> {
    let l = interp.layout;
    let object = |p: u64| (p >= 4096).then_some(p);
    let mut frame = read(object(tstate)? + l.tstate_frame as u64)?;
    if let Some(current) = l.cframe_current {
        if frame == 0 {
            return Some(0);
        }
        frame = read(object(frame)? + current as u64)?;
    }
    let mut steps = 0;
    while frame != 0 && steps < MAX_CHAIN {
        steps += 1;
        let at = object(frame)?;
        let code = read(at + l.frame_code as u64)?;
        let back = read(at + l.frame_back as u64)?;
        let is_code = code >= 4096 && read(code + OB_TYPE as u64)? == interp.code_type;
        let (instruction, entry) = match l.frame {
            FrameKind::Object { lasti, lasti_unit } => {
                if !is_code {
                    if strict {
                        return None;
                    }
                    frame = back;
                    continue;
                }
                let lasti = read(at + lasti as u64)? as u32 as i32;
                (u64::from(lasti.max(0) as u32) * lasti_unit, true)
            }
            FrameKind::Interpreter {
                instr,
                owner,
                is_entry,
                code_start,
                first_traceable,
            } => {
                let owner = read(at + owner as u64)? as u8;
                let entry = match is_entry {
                    Some(o) => read(at + o as u64)? as u8 != 0,
                    None => false,
                };
                if owner == OWNED_BY_CSTACK {
                    // The shim frame below the frames one evaluation call runs.
                    out.mark_entry();
                    frame = back;
                    continue;
                }
                if !is_code {
                    if strict {
                        return None;
                    }
                    if entry {
                        out.mark_entry();
                    }
                    frame = back;
                    continue;
                }
                let ip = read(at + instr as u64)?;
                let start = code + code_start as u64;
                let traceable = u64::from(read(code + first_traceable as u64)? as u32) * 2;
                if owner != OWNED_BY_GENERATOR && ip < start + traceable {
                    // Incomplete: still setting up, not yet running a line of its own.
                    if entry {
                        out.mark_entry();
                    }
                    frame = back;
                    continue;
                }
                (ip.saturating_sub(start), entry)
            }
        };
        let table = read(code + l.co_line_table as u64)?;
        let f = RawFrame {
            code,
            table,
            instruction: instruction.min(u64::from(u32::MAX)) as u32,
            entry,
        };
        if !out.push(f) {
            break;
        }
        frame = back;
    }
    // Hashed once the walk is done: a shim frame marks the frame before it as an entry.
    let mut hash = 0u64;
    for f in out.frames() {
        // One multiply per frame: code and table addresses are 8-aligned heap pointers (their
        // low bits carry nothing), the instruction offset is below 2^32.
        let word =
            f.code ^ f.table.rotate_left(32) ^ u64::from(f.instruction) << 1 ^ u64::from(f.entry);
        hash = crate::memo::hash_step(hash, word);
    }
    Some(if out.len == 0 { 0 } else { hash.max(1) })
}

/// The start-up self-check, on the calling thread's chain: `Some(true)` when it holds Python frames
/// and every one is sound, `Some(false)` when a read fails or a frame is not what the layout says,
/// `None` when there is nothing to check yet.
#[cold]
pub fn check(interp: &Interp, scratch: &mut PyFrames) -> Option<bool> {
    scratch.clear();
    let tstate = interp.tstate();
    if tstate == 0 {
        return None;
    }
    match walk(interp, tstate, read_checked, true, scratch) {
        None => Some(false),
        Some(_) if scratch.len == 0 => None,
        Some(_) => {
            // Every code object must also have a readable line table object.
            let sound = scratch
                .frames()
                .iter()
                .all(|f| f.table >= 4096 && read_checked(f.table + OB_TYPE as u64).is_some());
            Some(sound)
        }
    }
}

/// Puts Python frames into a native stack (both innermost first): each evaluation call's Python
/// frames go just before (inside) the native frame of `_PyEval_EvalFrameDefault` that runs them;
/// frames left over go after the outermost native frame. `native` holds the return addresses and
/// their resolved frames; `codes` the code ids of `python`'s frames.
pub fn splice(
    interp: &Interp,
    native: &[(u64, Frame)],
    python: &[RawFrame],
    codes: &[u32],
) -> Vec<Frame> {
    let mut out = Vec::with_capacity(native.len() + python.len());
    let mut next = 0;
    let (eval_start, eval_end) = interp.eval;
    let emit_group = |out: &mut Vec<Frame>, next: &mut usize| {
        while *next < python.len() {
            let f = python[*next];
            out.push(Frame::python(PyFrame {
                code: codes[*next],
                instruction: f.instruction,
            }));
            *next += 1;
            if f.entry {
                break;
            }
        }
    };
    for &(ret, frame) in native {
        // A return address points after the call: look up the call itself.
        let call = ret.wrapping_sub(1);
        if call >= eval_start && call < eval_end {
            emit_group(&mut out, &mut next);
        }
        out.push(frame);
    }
    while next < python.len() {
        emit_group(&mut out, &mut next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(code: u64, entry: bool) -> RawFrame {
        RawFrame {
            code,
            table: 0,
            instruction: code as u32 * 2,
            entry,
        }
    }

    fn native(module: u32, offset: u64) -> Frame {
        Frame { module, offset }
    }

    #[test]
    fn python_frames_go_inside_their_evaluation_frames() {
        let interp = Interp {
            layout: &super::super::layout::LAYOUTS[3],
            get_tstate: no_tstate,
            code_type: 0,
            unicode_type: 0,
            bytes_type: 0,
            eval: (0x1000, 0x2000),
        };
        // malloc's caller, eval (runs 2 frames), a C function, eval (runs 1), main.
        let stack = [
            (0x500, native(1, 1)),
            (0x1100, native(1, 2)),
            (0x600, native(1, 3)),
            (0x1200, native(1, 4)),
            (0x700, native(1, 5)),
        ];
        let py = [raw(1, false), raw(2, true), raw(3, true)];
        let codes = [11, 12, 13];
        let out = splice(&interp, &stack, &py, &codes);
        let shape: Vec<String> = out
            .iter()
            .map(|f| match f.as_python() {
                Some(p) => format!("py{}", p.code),
                None => format!("n{}", f.offset),
            })
            .collect();
        assert_eq!(
            shape,
            ["n1", "py11", "py12", "n2", "n3", "py13", "n4", "n5"]
        );
        // No evaluation frame found: the Python frames follow the native ones.
        let out = splice(&interp, &stack[..1], &py, &codes);
        assert_eq!(out.len(), 4);
        assert_eq!(out[3].as_python().map(|p| p.code), Some(13));
    }

    unsafe extern "C" fn no_tstate() -> *mut core::ffi::c_void {
        core::ptr::null_mut()
    }

    #[test]
    fn checked_reads_fail_instead_of_faulting() {
        let x = 0x1234_5678_u64;
        assert_eq!(read_checked(&x as *const u64 as u64), Some(x));
        assert_eq!(read_checked(8), None);
        assert_eq!(read_checked(u64::MAX - 16), None);
    }
}
