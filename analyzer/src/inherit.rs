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

/// The blocks (address, size) a fork child inherited, and warnings about what could not be read.
/// Empty for a trace that is not a fork child's.
pub fn inherited_blocks(trace: &Trace, trace_path: &Path) -> (Vec<(u64, u64)>, Vec<String>) {
    let mut warnings = Vec::new();
    let blocks = blocks_at_fork(trace, trace_path, MAX_GENERATIONS, &mut warnings);
    (blocks, warnings)
}

fn blocks_at_fork(
    trace: &Trace,
    trace_path: &Path,
    generations: usize,
    warnings: &mut Vec<String>,
) -> Vec<(u64, u64)> {
    let header = trace.header();
    let (Some(parent), Some(fork_time)) = (&header.parent_trace, header.fork_time_ns) else {
        return Vec::new();
    };
    if generations == 0 {
        return Vec::new();
    }
    let Some(path) = locate(parent, trace_path) else {
        warnings.push(format!(
            "the parent's trace {parent} is not found: frees of blocks inherited at the fork \
             count as unmatched"
        ));
        return Vec::new();
    };
    let parent_trace = match Trace::open(&path) {
        Ok(t) if t.header().pid == header.ppid => t,
        Ok(_) => {
            warnings.push(format!(
                "{} is not the trace of this process's parent (pid {}): frees of inherited \
                 blocks count as unmatched",
                path.display(),
                header.ppid
            ));
            return Vec::new();
        }
        Err(e) => {
            warnings.push(format!(
                "{e}: frees of blocks inherited at the fork count as unmatched"
            ));
            return Vec::new();
        }
    };
    let mut replayer = Replayer::new();
    replayer.inherit(blocks_at_fork(
        &parent_trace,
        &path,
        generations - 1,
        warnings,
    ));
    for r in parent_trace.records() {
        if time_of(&r.record).is_some_and(|t| t > fork_time) {
            break;
        }
        replayer.apply(r.thread, &r.record, &mut ());
    }
    replayer.live_blocks().collect()
}

/// The parent's trace: the path as the header gives it, else a file of that name beside the
/// child's trace (traces moved together to another directory).
fn locate(parent: &str, trace_path: &Path) -> Option<PathBuf> {
    let given = PathBuf::from(parent);
    if given.is_file() {
        return Some(given);
    }
    let beside = trace_path.parent()?.join(given.file_name()?);
    beside.is_file().then_some(beside)
}

fn time_of(record: &Record) -> Option<u64> {
    match *record {
        Record::Alloc { time, .. }
        | Record::Realloc { time, .. }
        | Record::Free { time, .. }
        | Record::ModuleUnload { time, .. }
        | Record::Mark { time, .. }
        | Record::End { time } => Some(time),
        Record::Stack { .. } | Record::Module(_) | Record::ThreadName { .. } => None,
    }
}
