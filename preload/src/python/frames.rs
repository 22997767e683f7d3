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
use super::layout::{FrameKind, LAYOUTS, Layout, OB_TYPE, OWNED_BY_CSTACK, OWNED_BY_GENERATOR};
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
    (interp.walker)(interp, out)
}

/// [`capture`] for one layout, with that layout's offsets compiled in.
pub type Walker = fn(&Interp, &mut PyFrames) -> u64;

/// The walker for `layout`, one of [`LAYOUTS`]: its offsets are constants in the walker's code, so
/// a frame costs its reads and little else (the layout is not consulted field by field).
pub fn walker(layout: &'static Layout) -> Walker {
    match LAYOUTS.iter().position(|l| l == layout) {
        Some(0) => capture_as::<0>,
        Some(1) => capture_as::<1>,
        Some(2) => capture_as::<2>,
        Some(3) => capture_as::<3>,
        Some(4) => capture_as::<4>,
        Some(5) => capture_as::<5>,
        _ => capture_any,
    }
}

/// [`capture`] for the layout `LAYOUTS[I]`. Not inlined: it runs after the native stack was
/// captured, so it adds no frame for the unwinder to step over.
#[inline(never)]
fn capture_as<const I: usize>(interp: &Interp, out: &mut PyFrames) -> u64 {
    capture_with(const { &LAYOUTS[I] }, interp, out)
}

/// [`capture`] reading the offsets from the interpreter's layout (one not in [`LAYOUTS`]).
#[inline(never)]
fn capture_any(interp: &Interp, out: &mut PyFrames) -> u64 {
    capture_with(interp.layout, interp, out)
}

#[inline(always)]
fn capture_with(l: &Layout, interp: &Interp, out: &mut PyFrames) -> u64 {
    out.clear();
    let tstate = interp.tstate();
    if tstate == 0 {
        return 0;
    }
    match walk(l, interp.code_type, tstate, read_field, false, out) {
        Some(hash) => hash,
        None => {
            // A walk that failed partway hashes as no Python frames: it must keep none either, or
            // the frames it found would be spliced into a stack whose hash lacks them.
            out.clear();
            0
        }
    }
}

/// Walks the chain with `read`. `strict`: any frame whose code is not a code object fails the walk
/// (`None`) instead of being skipped.
///
/// Every address read is a small field offset from an object address (thread state, frame, code
/// object) that was first compared with 4096 here: one comparison per object, none per read, so
/// `read` need not check for the null page. An object address below 4096 fails the walk.
#[inline(always)]
fn walk(
    l: &Layout,
    code_type: u64,
    tstate: u64,
    read: impl Fn(u64) -> Option<u64>,
    strict: bool,
    out: &mut PyFrames,
) -> Option<u64> {
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
        let is_code = code >= 4096 && read(code + OB_TYPE as u64)? == code_type;
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
                // `owner` and `is_entry` are bytes of one aligned word: one read for both.
                let word = owner & !7;
                let flags = read(at + word as u64)?;
                let byte_at = |offset: usize| (flags >> ((offset - word) * 8)) as u8;
                let owner = byte_at(owner);
                let entry = match is_entry {
                    Some(o) if o & !7 == word => byte_at(o) != 0,
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
    match walk(
        interp.layout,
        interp.code_type,
        tstate,
        read_checked,
        true,
        scratch,
    ) {
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
    let (eval_start, eval_end) = interp.eval;
    let as_frame = |(f, &code): (&RawFrame, &u32)| {
        Frame::python(PyFrame {
            code,
            instruction: f.instruction,
        })
    };
    let mut python = python.iter().zip(codes);
    for &(ret, frame) in native {
        // A return address points after the call: look up the call itself.
        if (eval_start..eval_end).contains(&ret.wrapping_sub(1)) {
            // The frames this evaluation call runs: up to and including its entry frame.
            for f in python.by_ref() {
                let entry = f.0.entry;
                out.push(as_frame(f));
                if entry {
                    break;
                }
            }
        }
        out.push(frame);
    }
    out.extend(python.map(as_frame));
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
            walker: capture_any,
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

    thread_local! {
        static FAKE_TSTATE: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
    }

    unsafe extern "C" fn fake_tstate() -> *mut core::ffi::c_void {
        FAKE_TSTATE.with(|t| t.get()) as *mut core::ffi::c_void
    }

    /// Objects laid out in one zeroed buffer, as an interpreter of a given layout would have them.
    struct Memory {
        words: Vec<u64>,
        next: usize,
    }

    impl Memory {
        fn new() -> Memory {
            Memory {
                words: vec![0; 8192],
                next: 8,
            }
        }

        /// A zeroed object of 512 bytes; its address.
        fn object(&mut self) -> u64 {
            let at = self.next;
            self.next += 64;
            &self.words[at] as *const u64 as u64
        }

        fn put(&mut self, addr: u64, offset: usize, value: u64, bytes: usize) {
            let base = self.words.as_mut_ptr() as u64;
            let i = (addr + offset as u64 - base) as usize;
            // SAFETY: a test buffer: `i + bytes` is inside `words` (objects are 512 bytes, fields
            // are at smaller offsets).
            let b = unsafe {
                core::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), 8 * 8192)
            };
            b[i..i + bytes].copy_from_slice(&value.to_le_bytes()[..bytes]);
        }
    }

    /// A chain of frames for `l` covering each case of the walk (innermost first): a running frame,
    /// an incomplete one, the eval loop's shim, a generator's frame not yet past its prologue, a
    /// frame whose code is not a code object, and an entry frame. Returns the thread state and
    /// what a walk must find.
    fn fake_chain(m: &mut Memory, l: &Layout, code_type: u64) -> (u64, Vec<RawFrame>) {
        let mut codes = [0u64; 3];
        for (k, code) in codes.iter_mut().enumerate() {
            *code = m.object();
            m.put(*code, OB_TYPE, code_type, 8);
            m.put(*code, l.co_line_table, 0x7000_0000 + k as u64 * 0x100, 8);
        }
        let table = |k: u64| 0x7000_0000 + k * 0x100;
        let not_code = m.object();
        m.put(not_code, OB_TYPE, code_type + 8, 8);
        let mut frames = Vec::new();
        let expected = match l.frame {
            FrameKind::Object { lasti, lasti_unit } => {
                // (code, f_lasti)
                for (code, at) in [
                    (codes[0], 10u64),
                    (not_code, 3),
                    (codes[1], u64::from(u32::MAX)),
                ] {
                    let f = m.object();
                    m.put(f, l.frame_code, code, 8);
                    m.put(f, lasti, at, 4);
                    frames.push(f);
                }
                vec![
                    RawFrame {
                        code: codes[0],
                        table: table(0),
                        instruction: (10 * lasti_unit) as u32,
                        entry: true,
                    },
                    // f_lasti -1: not started.
                    RawFrame {
                        code: codes[1],
                        table: table(1),
                        instruction: 0,
                        entry: true,
                    },
                ]
            }
            FrameKind::Interpreter {
                instr,
                owner,
                is_entry,
                code_start,
                first_traceable,
            } => {
                for code in codes {
                    m.put(code, first_traceable, 3, 4);
                }
                let start = |code: u64| code + code_start as u64;
                // (code, instruction pointer, owner, is_entry)
                let chain = [
                    (codes[0], start(codes[0]) + 20, 0, false),
                    (codes[1], start(codes[1]) + 2, 0, false),
                    (codes[2], 0, OWNED_BY_CSTACK, false),
                    (codes[2], start(codes[2]), OWNED_BY_GENERATOR, false),
                    (not_code, 0, 0, true),
                    (codes[0], start(codes[0]) + 40, 0, true),
                ];
                for (code, ip, own, entry) in chain {
                    let f = m.object();
                    m.put(f, l.frame_code, code, 8);
                    m.put(f, instr, ip, 8);
                    m.put(f, owner, u64::from(own), 1);
                    if let Some(o) = is_entry {
                        m.put(f, o, u64::from(entry), 1);
                    }
                    frames.push(f);
                }
                let with_flag = is_entry.is_some();
                vec![
                    // Marked as an entry by the shim frame outside it.
                    RawFrame {
                        code: codes[0],
                        table: table(0),
                        instruction: 20,
                        entry: true,
                    },
                    // Before its first traceable instruction, but a generator's.
                    RawFrame {
                        code: codes[2],
                        table: table(2),
                        instruction: 0,
                        entry: with_flag,
                    },
                    RawFrame {
                        code: codes[0],
                        table: table(0),
                        instruction: 40,
                        entry: with_flag,
                    },
                ]
            }
        };
        for w in frames.windows(2) {
            m.put(w[0], l.frame_back, w[1], 8);
        }
        let tstate = m.object();
        match l.cframe_current {
            Some(current) => {
                let cframe = m.object();
                m.put(tstate, l.tstate_frame, cframe, 8);
                m.put(cframe, current, frames[0], 8);
            }
            None => m.put(tstate, l.tstate_frame, frames[0], 8),
        }
        (tstate, expected)
    }

    /// An interpreter of layout `l` whose calling thread's state is `tstate`, with its compiled-in
    /// walker.
    fn fake_interp(l: &'static Layout, code_type: u64, tstate: u64) -> Interp {
        FAKE_TSTATE.with(|t| t.set(tstate));
        Interp {
            layout: l,
            get_tstate: fake_tstate,
            code_type,
            unicode_type: 0,
            bytes_type: 0,
            eval: (0, 0),
            walker: walker(l),
        }
    }

    /// Each version's compiled-in walker finds exactly the frames (and hash) that the walk reading
    /// the offsets from the layout finds, and both are what the chain holds.
    #[test]
    fn compiled_walkers_agree_with_the_layout_walk() {
        let code_type = 0x5555_0000_u64;
        for l in &LAYOUTS {
            let mut m = Memory::new();
            let (tstate, expected) = fake_chain(&mut m, l, code_type);
            let interp = fake_interp(l, code_type, tstate);
            assert!(
                !core::ptr::fn_addr_eq(interp.walker, capture_any as Walker),
                "3.{}",
                l.minor
            );
            let mut fast = PyFrames::new();
            let mut generic = PyFrames::new();
            let h_fast = capture(&interp, &mut fast);
            let h_generic = capture_any(&interp, &mut generic);
            assert_eq!(fast.frames(), &expected[..], "3.{}", l.minor);
            assert_eq!(generic.frames(), &expected[..], "3.{}", l.minor);
            assert_eq!(h_fast, h_generic, "3.{}", l.minor);
            assert_ne!(h_fast, 0);
            FAKE_TSTATE.with(|t| t.set(0));
            assert_eq!(capture(&interp, &mut fast), 0);
            assert!(fast.frames().is_empty());
        }
    }

    /// A chain that breaks partway (a frame's `back` is a pointer into the null page) walks as no
    /// Python frames at all: none of the frames before the break are kept.
    #[test]
    fn a_walk_that_fails_partway_keeps_no_frames() {
        let code_type = 0x5555_0000_u64;
        for l in &LAYOUTS {
            let mut m = Memory::new();
            let (tstate, expected) = fake_chain(&mut m, l, code_type);
            let interp = fake_interp(l, code_type, tstate);
            let mut frames = PyFrames::new();
            assert_ne!(capture(&interp, &mut frames), 0, "3.{}", l.minor);
            assert_eq!(frames.frames(), &expected[..], "3.{}", l.minor);
            // Break the chain after its first frame.
            let first = match l.cframe_current {
                Some(current) => {
                    let cframe = read_direct(tstate + l.tstate_frame as u64).unwrap();
                    read_direct(cframe + current as u64).unwrap()
                }
                None => read_direct(tstate + l.tstate_frame as u64).unwrap(),
            };
            m.put(first, l.frame_back, 8, 8);
            for walker in [interp.walker, capture_any as Walker] {
                frames.clear();
                assert_eq!(walker(&interp, &mut frames), 0, "3.{}", l.minor);
                assert!(frames.frames().is_empty(), "3.{}", l.minor);
            }
            FAKE_TSTATE.with(|t| t.set(0));
        }
    }
}
