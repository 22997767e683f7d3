//! A fork child's inherited heap. A child created by `fork` starts with a copy of its parent's
//! heap, and frees blocks it never allocated; its trace header names the parent's trace and the
//! fork's time on the parent's clock. Replaying the parent's trace up to that time gives the blocks
//! the child inherited, so that the child's frees of them match instead of counting as unmatched.
//!
//! This module finds and replays the parent (and its own parent, for a child of a child); it does
//! not decide what an inherited block means for the reports: `replay.rs` does.

use crate::replay::Replayer;
use memtrace_format::{Record, Trace};
use std::path::{Path, PathBuf};

/// How many generations of fork parents are followed.
const MAX_GENERATIONS: usize = 8;

/// The blocks (address, size) a fork child inherited. Empty for a trace that is not a fork
/// child's, or whose parent's trace cannot be found.
pub fn inherited_blocks(trace: &Trace, trace_path: &Path) -> Vec<(u64, u64)> {
    blocks_at_fork(trace, trace_path, MAX_GENERATIONS)
}

fn blocks_at_fork(trace: &Trace, trace_path: &Path, generations: usize) -> Vec<(u64, u64)> {
    let header = trace.header();
    let (Some(parent), Some(fork_time)) = (&header.parent_trace, header.fork_time_ns) else {
        return Vec::new();
    };
    if generations == 0 {
        return Vec::new();
    }
    let Some((path, parent_trace)) = locate(parent, trace_path, header.ppid, header.start_unix_ns)
    else {
        // Gone (deleted, or still being moved by a parent that exec'd): the child's frees of
        // inherited blocks count as unmatched, which `unmatched_frees` says; no warning.
        return Vec::new();
    };
    let mut replayer = Replayer::new();
    replayer.inherit(blocks_at_fork(&parent_trace, &path, generations - 1));
    for r in parent_trace.records() {
        if time_of(&r.record).is_some_and(|t| t > fork_time) {
            break;
        }
        replayer.apply(r.thread, &r.record, &mut ());
    }
    replayer.live_blocks().collect()
}

/// The parent's trace: the file the header names, or, if the parent exec'd since (its trace was
/// then moved to `<name>.execN`), the one of those that was being written at the fork: written by
/// the parent's pid and started last before the child. Looked for where the header says, then
/// beside the child's trace (traces moved together to another directory).
fn locate(
    parent: &str,
    trace_path: &Path,
    ppid: u32,
    child_start: u64,
) -> Option<(PathBuf, Trace)> {
    let given = PathBuf::from(parent);
    let mut bases = vec![given.clone()];
    if let (Some(dir), Some(name)) = (trace_path.parent(), given.file_name()) {
        bases.push(dir.join(name));
    }
    for base in bases {
        let mut best: Option<(PathBuf, Trace)> = None;
        let execs = (1..=MAX_EXECS).map(|k| {
            let mut n = base.clone().into_os_string();
            n.push(format!(".exec{k}"));
            PathBuf::from(n)
        });
        for path in std::iter::once(base.clone()).chain(execs) {
            if !path.is_file() {
                continue;
            }
            let Ok(t) = Trace::open(&path) else { continue };
            let h = t.header();
            if h.pid != ppid || h.start_unix_ns > child_start {
                continue;
            }
            if best
                .as_ref()
                .is_none_or(|(_, b)| b.header().start_unix_ns < h.start_unix_ns)
            {
                best = Some((path, t));
            }
        }
        if best.is_some() {
            return best;
        }
    }
    None
}

/// How many `.execN` generations of a parent's trace are looked at.
const MAX_EXECS: usize = 16;

fn time_of(record: &Record) -> Option<u64> {
    match *record {
        Record::Alloc { time, .. }
        | Record::Realloc { time, .. }
        | Record::Free { time, .. }
        | Record::ModuleUnload { time, .. }
        | Record::Mark { time, .. }
        | Record::End { time } => Some(time),
        Record::Stack { .. }
        | Record::Module(_)
        | Record::PyCode(_)
        | Record::ThreadName { .. } => None,
    }
}
