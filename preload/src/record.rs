//! What the tracer does for each event, top to bottom: find this thread's state, capture and intern
//! the stack, take the time, encode the record into the thread's chunk.
//!
//! Called from `hooks.rs` and `init.rs` with the re-entrancy guard held and tracing active. Safe
//! code: the unsafe parts live in the modules it calls.

use crate::modules::{self, ModuleMap};
use crate::thread::{self, ThreadState};
use crate::writer::{ChunkWriter, WriteError};
use crate::{clock, init, python, sample, stacks};
use memtrace_format::encode::{
    encode_alloc, encode_end, encode_free, encode_mark, encode_module, encode_module_unload,
    encode_py_code, encode_realloc, encode_stack, module_payload, py_code_payload,
};
use memtrace_format::{AllocKind, Frame};

fn check(result: Result<(), WriteError>) {
    if let Err(WriteError::Failed(msg)) = result {
        init::disable(&msg);
    }
}

#[inline(always)]
fn with<R>(f: impl FnOnce(&mut ThreadState, &mut ChunkWriter) -> R) -> R {
    thread::with(init::config_max_frames(), f)
}

/// The trace time, never before the thread's previous record (the clock's switch to the TSC may
/// step back by a few nanoseconds).
#[inline(always)]
fn now(w: &ChunkWriter) -> u64 {
    clock::now().max(w.last_time)
}

/// Whether this allocation is to be recorded: always, unless sampling is on (`sample.rs`).
#[inline(always)]
fn sampled(ts: &mut ThreadState, size: usize) -> bool {
    match sample::mean() {
        0 => true,
        mean => sample::take(&mut ts.sample_countdown, &mut ts.rng, size, mean),
    }
}

/// Records an allocation that returned `addr`.
#[inline(always)]
pub fn alloc(kind: AllocKind, size: usize, addr: usize) {
    with(|ts, w| {
        if !sampled(ts, size) {
            return;
        }
        let stack = stack_id(ts, w);
        let time = now(w);
        check(w.write(time, |buf, st| {
            encode_alloc(buf, st, time, kind, stack, size as u64, addr as u64)
        }));
    });
}

/// With sampling on (FORMAT.md §2), whether a realloc to `size` bytes is to be recorded, drawn
/// before the real realloc: one that is not is recorded as a free of its old block, before that
/// block is released, as `free` is (`hooks.rs`).
pub fn realloc_sampled(size: usize) -> bool {
    with(|ts, _| sampled(ts, size))
}

/// Records a realloc of `old` (0 for none) that returned `new`. With sampling on, only one that
/// [`realloc_sampled`] took.
#[inline(always)]
pub fn realloc(old: usize, size: usize, new: usize) {
    with(|ts, w| {
        let stack = stack_id(ts, w);
        let time = now(w);
        check(w.write(time, |buf, st| {
            encode_realloc(buf, st, time, stack, size as u64, old as u64, new as u64)
        }));
    });
}

/// Records that `addr` is about to be freed.
pub fn free(addr: usize) {
    with(|_, w| write_free(w, clock::now_early().max(w.last_time), addr));
}

#[inline(always)]
fn write_free(w: &mut ChunkWriter, time: u64, addr: usize) {
    check(w.write(time, |buf, st| encode_free(buf, st, time, addr as u64)));
}

/// Records a named point.
pub fn mark(label: &[u8]) {
    with(|_, w| {
        let time = now(w);
        check(w.write(time, |buf, st| encode_mark(buf, st, time, label)));
    });
}

/// Records the end of the process.
pub fn end() {
    with(|_, w| {
        let time = now(w);
        check(w.write(time, |buf, st| encode_end(buf, st, time)));
    });
}

/// Rescans the loaded modules if the loader's list changed, and records what changed. Called
/// outside the allocator (after `dlclose`), so it may wait for another thread's rescan.
pub fn modules_rescan() {
    if modules::changed_since_scan()
        && let Some(changes) = modules::rescan(true)
    {
        modules_changed(&changes);
    }
}

/// Writes module and unload records for what a rescan found, from the calling thread.
pub fn modules_changed(changes: &modules::Changes) {
    with(|_, w| write_module_changes(w, changes));
}

fn write_module_changes(w: &mut ChunkWriter, changes: &modules::Changes) {
    for info in &changes.added {
        let payload = module_payload(info);
        check(w.write(w.last_time, |buf, _| encode_module(buf, &payload)));
    }
    for &id in &changes.removed {
        let time = now(w);
        check(w.write(time, |buf, st| encode_module_unload(buf, st, time, id)));
    }
}

/// The id of the calling thread's current stack, defining it in the trace if it is new.
///
/// Inlined, with `stacks::capture`, into each hook: the unwinder then has a single frame of the
/// tracer to step over before it reaches the program's code.
#[inline(always)]
fn stack_id(ts: &mut ThreadState, w: &mut ChunkWriter) -> u32 {
    let Some(map) = modules::current() else {
        return 0;
    };
    stacks::capture(map, &mut ts.unwind_cache, ts.stack_hi, &mut ts.frames);
    let hash = with_python_frames(ts);
    match ts.stacks.get(hash) {
        Some(id) => id,
        None => new_stack(ts, w, map, hash),
    }
}

/// The hash of the stack just captured, with the thread's Python frames walked into `ts.python`.
#[inline(always)]
fn with_python_frames(ts: &mut ThreadState) -> u64 {
    let native = ts.frames.hash();
    match python::interp() {
        Some(interp) => match python::frames::capture(interp, &mut ts.python) {
            0 => native,
            py => stacks::with_python(native, py),
        },
        None => {
            if python::check_pending() {
                let cap = ts.frames.cap();
                let stack = ts.frames.outermost_first();
                if python::may_run_python(stack, stack.len() >= cap) {
                    self_check(ts);
                }
            }
            native
        }
    }
}

/// Runs the Python layout's self-check on this thread's frames, if no other thread is.
#[cold]
#[inline(never)]
fn self_check(ts: &mut ThreadState) {
    if let Some(interp) = python::claim_check() {
        python::finish_check(python::frames::check(interp, &mut ts.python));
        // The stack being recorded was hashed without Python frames: it must be written without.
        ts.python.clear();
    }
}

/// The slow path of [`stack_id`]: a stack this thread has not seen recently.
#[inline(never)]
#[cold]
fn new_stack(
    ts: &mut ThreadState,
    w: &mut ChunkWriter,
    mut map: &'static ModuleMap,
    mut hash: u64,
) -> u32 {
    // A stack the process has defined already: nothing to resolve or write. Unless modules were
    // loaded since the last scan, it is the very stack the path below would intern; a deep stack
    // that recurs after this thread's cache let it go (rounds of a recursive parser) would
    // otherwise have all its frames resolved again, for nothing. The loader is asked about new
    // modules (a lock of its own) only for such a stack.
    if let Some(id) = stacks::known(hash)
        && !modules::changed_since_scan()
    {
        ts.stacks.put(hash, id);
        return id;
    }
    let mut native = resolve_native(map, ts.frames.outermost_first());
    if native.iter().any(|&(_, f)| f.module == UNKNOWN_MODULE) && modules::changed_since_scan() {
        // A library loaded since the last scan: learn it, then unwind again with its tables.
        if let Some(changes) = modules::rescan(false) {
            write_module_changes(w, &changes);
            if let Some(m) = modules::current() {
                map = m;
            }
            ts.frames.clear();
            stacks::capture(map, &mut ts.unwind_cache, ts.stack_hi, &mut ts.frames);
            hash = with_python_frames(ts);
            native = resolve_native(map, ts.frames.outermost_first());
        }
    }
    let (id, new) = stacks::intern(&mut ts.stacks, hash);
    if new {
        let frames = match python::interp() {
            Some(interp) if !ts.python.frames().is_empty() => {
                let codes = code_ids(interp, ts, w);
                python::frames::splice(interp, &native, ts.python.frames(), &codes)
            }
            _ => native.into_iter().map(|(_, f)| f).collect(),
        };
        let prev = &ts.last_stack;
        check(w.write(w.last_time, |buf, st| {
            encode_stack(buf, st, id, &frames, prev)
        }));
        ts.last_stack.clear();
        ts.last_stack
            .extend_from_slice(&frames[..frames.len().min(memtrace_format::record::MAX_FRAMES)]);
    }
    id
}

/// The ids of the code objects of the thread's Python frames, writing a PyCode record for each one
/// new to the trace.
fn code_ids(interp: &python::Interp, ts: &mut ThreadState, w: &mut ChunkWriter) -> Vec<u32> {
    let ThreadState { python, codes, .. } = ts;
    python
        .frames()
        .iter()
        .map(|f| {
            let (id, new) = codes.id(f.code, f.table);
            if new {
                let payload = py_code_payload(&python::code::read(interp, f.code, id));
                check(w.write(w.last_time, |buf, _| encode_py_code(buf, &payload)));
            }
            id
        })
        .collect()
}

/// The module of a frame outside every known module (its offset is then the address itself).
const UNKNOWN_MODULE: u32 = 0;

/// The native frames of a stack given outermost first, innermost first, each with its return
/// address: resolved once, both to find frames of unknown modules and to write the stack.
fn resolve_native(map: &ModuleMap, outermost_first: &[u64]) -> Vec<(u64, Frame)> {
    let mut near = usize::MAX;
    outermost_first
        .iter()
        .rev()
        .map(|&a| match map.resolve_near(a, &mut near) {
            Some((module, offset)) => (a, Frame { module, offset }),
            None => (
                a,
                Frame {
                    module: UNKNOWN_MODULE,
                    offset: a,
                },
            ),
        })
        .collect()
}
