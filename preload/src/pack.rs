//! Packing of full chunks (FORMAT.md §3, version 3): a thread whose chunk is full compresses its
//! records with zstd (level 1, with a checksum) into a new, smaller chunk and reuses the full one
//! (`writer.rs`). Real programs repeat themselves, so their traces shrink five to eight times.
//!
//! A few compressors serve the process, each behind a lock that is only ever tried: a thread that
//! finds them all busy (other threads are packing, or this thread is inside one in a signal
//! handler) keeps its chunk as it is, so packing never waits and never deadlocks. zstd allocates its context with
//! `malloc` on first use; that happens inside the tracer, where allocations are not traced.
//! `MEMTRACE_COMPRESS=0` turns packing off.

use crate::spin::SpinMutex;
use core::sync::atomic::{AtomicBool, Ordering};

/// zstd's fastest regular level: about 6x on a CPython trace at a few hundred MB/s.
const LEVEL: i32 = 1;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// The process's compressor and its output buffer, made on first use.
struct Packer {
    zstd: Option<zstd::bulk::Compressor<'static>>,
    out: Vec<u8>,
    /// zstd could not be set up: stop trying.
    broken: bool,
}

/// How many threads can pack at once; a compressor costs a few hundred KB once used.
const PACKERS: usize = 4;

#[allow(clippy::declare_interior_mutable_const)] // only to repeat the initializer
const IDLE: SpinMutex<Packer> = SpinMutex::new(Packer {
    zstd: None,
    out: Vec::new(),
    broken: false,
});

static PACKER: [SpinMutex<Packer>; PACKERS] = [IDLE; PACKERS];

/// Turns packing on or off (start-up).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether full chunks are packed.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Compresses `records` into one zstd frame and hands it to `write`. `None` when packing is off,
/// every compressor is busy, or zstd fails: the caller keeps the records as they are. `hint` (the
/// thread's index) spreads threads over the compressors.
pub fn pack<R>(records: &[u8], hint: usize, write: impl FnOnce(&[u8]) -> R) -> Option<R> {
    if !enabled() {
        return None;
    }
    let mut p = (0..PACKERS).find_map(|k| PACKER[(hint + k) % PACKERS].try_lock())?;
    if p.broken {
        return None;
    }
    if p.zstd.is_none() {
        let made = zstd::bulk::Compressor::new(LEVEL).and_then(|mut z| {
            z.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
            Ok(z)
        });
        match made {
            Ok(z) => p.zstd = Some(z),
            Err(_) => {
                p.broken = true;
                return None;
            }
        }
    }
    let Packer { zstd, out, .. } = &mut *p;
    let zstd = zstd.as_mut()?;
    out.clear();
    out.reserve(zstd::zstd_safe::compress_bound(records.len()));
    zstd.compress_to_buffer(records, out).ok()?;
    Some(write(out))
}

/// In the child of `fork`: a thread that was packing is gone, so the lock is cleared, and the
/// compressor and buffer it may have left half changed are dropped unused (leaked: freeing them
/// could touch that state) for fresh ones.
pub fn after_fork_child() {
    for packer in &PACKER {
        packer.force_unlock();
        if let Some(mut p) = packer.try_lock() {
            core::mem::forget(p.zstd.take());
            core::mem::forget(core::mem::take(&mut p.out));
        }
    }
}
