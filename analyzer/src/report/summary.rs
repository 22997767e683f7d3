//! `summary`: the whole run in numbers (calls, bytes, peak, leaks, temporary allocations, duration,
//! threads, marks), as aligned text or one JSON object. It replays without per-stack statistics, so it
//! is the fastest report. For a sampled trace the allocation totals are estimates, and it says so
//! (and what was recorded).

use crate::cli::SummaryArgs;
use crate::render::{self, Format};
use crate::replay::Totals;
use crate::{ExitCode, report};
use anyhow::Result;
use memtrace_format::{AllocKind, Header, Trace};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// What `summary` reports.
pub struct Summary {
    /// The trace's file header.
    pub header: Header,
    /// Threads that wrote records.
    pub threads: u64,
    /// The replay's counters.
    pub totals: Totals,
    /// Warnings of the record stream.
    pub warnings: Vec<String>,
}

/// Replays `trace` for its totals.
pub fn compute(trace: &Trace, path: &Path) -> Summary {
    let mut replayer = report::new_replayer(trace, path);
    let mut records = trace.records();
    replayer.run_records(&mut records, &mut ());
    let warnings = records.take_warnings();
    let (totals, _heap) = replayer.finish();
    Summary {
        header: trace.header().clone(),
        threads: trace.threads().len() as u64,
        totals,
        warnings,
    }
}

/// Runs `summary`.
pub fn run(args: &SummaryArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<ExitCode> {
    let trace = report::open(&args.trace.trace, err)?;
    let s = compute(&trace, &args.trace.trace);
    report::warn(err, &s.warnings);
    let name = args.trace.trace.display().to_string();
    match args.format {
        Format::Text => write_text(out, &name, &s)?,
        Format::Json => render::write_json(out, &to_json(&name, &s))?,
    }
    Ok(ExitCode::Success)
}

#[derive(Serialize)]
struct MarkJson<'a> {
    time_ns: u64,
    thread: u32,
    label: &'a str,
}

#[derive(Serialize)]
struct ThreadNameJson<'a> {
    thread: u32,
    name: &'a str,
}

/// The JSON contract of `summary`: fields may be added, never renamed or removed.
#[derive(Serialize)]
struct SummaryJson<'a> {
    trace: &'a str,
    pid: u32,
    ppid: u32,
    executable: &'a str,
    cmdline: &'a [String],
    start_unix_ns: u64,
    parent_trace: Option<&'a str>,
    tool_version: &'a str,
    sample_bytes: Option<u64>,
    /// Only for a sampled trace, whose allocation totals are then estimates.
    #[serde(skip_serializing_if = "Option::is_none")]
    sampled: Option<SampledSummaryJson>,
    duration_ns: u64,
    ended: bool,
    end_time_ns: Option<u64>,
    threads: u64,
    thread_names: Vec<ThreadNameJson<'a>>,
    alloc_calls: u64,
    calls_by_kind: BTreeMap<&'static str, u64>,
    realloc_calls: u64,
    free_calls: u64,
    total_allocated_bytes: u64,
    peak_live_bytes: u64,
    peak_live_count: u64,
    peak_time_ns: u64,
    leaked_bytes: u64,
    leaked_count: u64,
    temporary_allocs: u64,
    temporary_allocs_strict: u64,
    unmatched_frees: u64,
    unmatched_reallocs: u64,
    missed_frees: u64,
    reordered_reallocs: u64,
    inherited_blocks: u64,
    inherited_bytes: u64,
    inherited_freed: u64,
    stacks: u64,
    modules: u64,
    /// Python code records (format version 2).
    python_codes: u64,
    module_unloads: u64,
    records: u64,
    marks: Vec<MarkJson<'a>>,
    warnings: &'a [String],
}

/// `sampled` in `summary`: the common object and what the trace recorded.
#[derive(Serialize)]
struct SampledSummaryJson {
    #[serde(flatten)]
    sampled: report::SampledJson,
    /// Allocation records (alloc and realloc), unweighted.
    recorded_alloc_calls: u64,
    /// Their bytes, unweighted.
    recorded_allocated_bytes: u64,
    /// Frees of blocks whose allocation was not recorded.
    unsampled_frees: u64,
    /// Reallocs whose old block's allocation was not recorded.
    unsampled_reallocs: u64,
}

fn to_json<'a>(name: &'a str, s: &'a Summary) -> SummaryJson<'a> {
    let t = &s.totals;
    let mut calls_by_kind: BTreeMap<&'static str, u64> = AllocKind::ALL
        .iter()
        .map(|k| (k.name(), t.calls_by_kind[*k as usize]))
        .collect();
    calls_by_kind.insert("realloc", t.realloc_calls);
    SummaryJson {
        trace: name,
        pid: s.header.pid,
        ppid: s.header.ppid,
        executable: &s.header.executable,
        cmdline: &s.header.cmdline,
        start_unix_ns: s.header.start_unix_ns,
        parent_trace: s.header.parent_trace.as_deref(),
        tool_version: &s.header.tool_version,
        sample_bytes: s.header.sample_bytes,
        sampled: report::SampledJson::of(t.sample_bytes).map(|sampled| SampledSummaryJson {
            sampled,
            recorded_alloc_calls: t.recorded_alloc_calls,
            recorded_allocated_bytes: t.recorded_allocated_bytes,
            unsampled_frees: t.unsampled_frees,
            unsampled_reallocs: t.unsampled_reallocs,
        }),
        duration_ns: t.duration_ns,
        ended: t.end_time_ns.is_some(),
        end_time_ns: t.end_time_ns,
        threads: s.threads,
        thread_names: t
            .thread_names
            .iter()
            .map(|(thread, name)| ThreadNameJson {
                thread: *thread,
                name,
            })
            .collect(),
        alloc_calls: t.alloc_calls,
        calls_by_kind,
        realloc_calls: t.realloc_calls,
        free_calls: t.free_calls,
        total_allocated_bytes: t.total_allocated_bytes,
        peak_live_bytes: t.peak_live_bytes,
        peak_live_count: t.peak_live_count,
        peak_time_ns: t.peak_time_ns,
        leaked_bytes: t.leaked_bytes,
        leaked_count: t.leaked_count,
        temporary_allocs: t.temporary_allocs,
        temporary_allocs_strict: t.temporary_allocs_strict,
        unmatched_frees: t.unmatched_frees,
        unmatched_reallocs: t.unmatched_reallocs,
        missed_frees: t.missed_frees,
        reordered_reallocs: t.reordered_reallocs,
        inherited_blocks: t.inherited_blocks,
        inherited_bytes: t.inherited_bytes,
        inherited_freed: t.inherited_freed,
        stacks: t.stacks,
        modules: t.modules,
        python_codes: t.python_codes,
        module_unloads: t.module_unloads,
        records: t.records,
        marks: t
            .marks
            .iter()
            .map(|m| MarkJson {
                time_ns: m.time,
                thread: m.thread,
                label: &m.label,
            })
            .collect(),
        warnings: &s.warnings,
    }
}

/// `1.5 KiB (1,536 bytes)`.
fn bytes_exact(n: u64) -> String {
    if n < 1024 {
        render::bytes(n)
    } else {
        format!("{} ({} bytes)", render::bytes(n), render::count(n))
    }
}

fn write_text(out: &mut dyn Write, name: &str, s: &Summary) -> Result<()> {
    let t = &s.totals;
    let mut rows: Vec<(&str, String)> = Vec::new();
    rows.push(("trace", name.to_owned()));
    let mut process = format!("pid {}", s.header.pid);
    if !s.header.cmdline.is_empty() {
        process.push_str(&format!(": {}", s.header.cmdline.join(" ")));
    } else if !s.header.executable.is_empty() {
        process.push_str(&format!(": {}", s.header.executable));
    }
    rows.push(("process", process));
    if let Some(line) = report::sampled_line(t.sample_bytes, None) {
        rows.push(("sampled", line));
        rows.push((
            "recorded",
            format!(
                "{} ({}); {} and {} of blocks not recorded",
                render::counted(t.recorded_alloc_calls, "allocation call"),
                render::bytes(t.recorded_allocated_bytes),
                render::counted(t.unsampled_frees, "free"),
                render::counted(t.unsampled_reallocs, "realloc"),
            ),
        ));
    }
    if let Some(parent) = &s.header.parent_trace {
        rows.push(("forked from", parent.clone()));
    }
    let ending = match t.end_time_ns {
        Some(_) => "ended normally",
        None => "no end record: killed, crashed or still running",
    };
    rows.push((
        "duration",
        format!("{} ({ending})", render::duration(t.duration_ns)),
    ));
    rows.push(("threads", render::count(s.threads)));

    let mut kinds: Vec<String> = AllocKind::ALL
        .iter()
        .filter(|k| t.calls_by_kind[**k as usize] > 0)
        .map(|k| {
            format!(
                "{} {}",
                k.name(),
                render::count(t.calls_by_kind[*k as usize])
            )
        })
        .collect();
    if t.realloc_calls > 0 {
        kinds.push(format!("realloc {}", render::count(t.realloc_calls)));
    }
    let mut calls = render::count(t.alloc_calls);
    if !kinds.is_empty() {
        calls.push_str(&format!(" ({})", kinds.join(", ")));
    }
    rows.push(("allocation calls", calls));
    rows.push(("free calls", render::count(t.free_calls)));
    rows.push(("allocated", bytes_exact(t.total_allocated_bytes)));
    rows.push((
        "peak live",
        format!(
            "{} in {} at {}",
            bytes_exact(t.peak_live_bytes),
            render::counted(t.peak_live_count, "block"),
            render::duration(t.peak_time_ns)
        ),
    ));
    rows.push((
        "leaked",
        format!(
            "{} in {}",
            bytes_exact(t.leaked_bytes),
            render::counted(t.leaked_count, "block")
        ),
    ));
    rows.push((
        "temporary",
        format!(
            "{} ({} of calls)",
            render::counted(t.temporary_allocs, "allocation"),
            render::percent(t.temporary_allocs, t.alloc_calls)
        ),
    ));
    if t.inherited_blocks > 0 {
        rows.push((
            "inherited",
            format!(
                "{} in {} from the parent at the fork ({} freed here)",
                render::bytes(t.inherited_bytes),
                render::counted(t.inherited_blocks, "block"),
                render::count(t.inherited_freed)
            ),
        ));
    }
    if t.unmatched_frees > 0 {
        rows.push(("unmatched frees", render::count(t.unmatched_frees)));
    }
    if t.unmatched_reallocs > 0 {
        rows.push(("unmatched reallocs", render::count(t.unmatched_reallocs)));
    }
    if t.missed_frees > 0 {
        rows.push(("missed frees", render::count(t.missed_frees)));
    }
    if t.reordered_reallocs > 0 {
        rows.push(("late reallocs", render::count(t.reordered_reallocs)));
    }
    rows.push((
        "stacks, modules",
        format!("{}, {}", render::count(t.stacks), render::count(t.modules)),
    ));
    if !t.marks.is_empty() {
        let shown: Vec<String> = t
            .marks
            .iter()
            .take(10)
            .map(|m| format!("{:?} at {}", m.label, render::duration(m.time)))
            .collect();
        let mut marks = format!("{}: {}", t.marks.len(), shown.join(", "));
        if t.marks.len() > shown.len() {
            marks.push_str(", …");
        }
        rows.push(("marks", marks));
    }
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    for (k, v) in rows {
        writeln!(out, "{k:<width$}  {v}")?;
    }
    Ok(())
}
