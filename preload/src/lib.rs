//! libmemtrace.so: an LD_PRELOAD heap tracer. It interposes the malloc family, records every
//! allocation with its native stack and every free, and writes them to a trace file that
//! `memtrace-analyze` reads (format: `format/FORMAT.md`).
//!
//! Rules for everything in this crate, because it runs inside the traced program's malloc:
//! - Never crash, deadlock or change the program's behaviour: on an internal failure, say so once
//!   and keep forwarding calls untraced (`init::disable`). Panics abort (`panic = "abort"`), and no
//!   code here calls `unwrap` on a path that can fail at run time.
//! - The tracer's own allocations go straight to glibc (`real::RealAllocator`), and the re-entrancy
//!   guard (`guard.rs`) keeps anything the tracer calls from being traced.
//! - No lock that threads contend for on every event: each thread writes its own chunk of the
//!   mapped file (`writer.rs`, `sink.rs`); locks are taken only for new stacks, module rescans and
//!   file growth.
//! - `unsafe` stays at the edges: `hooks.rs` (exports), `real.rs` (glibc), `sink.rs` (mmap),
//!   `modules.rs` (loader), `stacks.rs` (registers, stack reads), `thread.rs` (TLS), `spin.rs`,
//!   `signal.rs` (sigaction), `python/` (reading the interpreter's frames and objects).
//!
//! The hot path, top to bottom: `hooks::malloc` → `record::alloc` → `stacks::capture` +
//! `stacks::intern` → `writer::ChunkWriter::write` → the mapped file.
#![deny(clippy::undocumented_unsafe_blocks)]
// Unit tests do not export the hooks (they must not trace the test runner), so much is unused there.
#![cfg_attr(test, allow(dead_code, unused_imports))]

mod bootstrap;
mod clock;
mod config;
mod guard;
mod hooks;
mod init;
mod loader;
mod memo;
mod modules;
mod pack;
mod plt;
mod python;
mod real;
mod record;
mod sample;
mod signal;
mod sink;
mod spin;
mod stacks;
mod thread;
mod unwind;
mod writer;

#[cfg(not(test))]
#[global_allocator]
static ALLOCATOR: real::RealAllocator = real::RealAllocator;
