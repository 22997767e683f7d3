//! `top`: stacks ranked by one measure (allocated bytes, allocation calls, bytes live at the global
//! peak, bytes leaked, temporary allocations), each with its other measures and its symbolized stack.
//! Ranking order is fixed: the measure descending, then count, then bytes descending, then stack id.
//! With `--group-by function|line` the stacks of one key frame (`key.rs`) are one entry, their
//! measures summed, ranked the same way (by the id of the group's best-ranked stack last).

use crate::ExitCode;
use crate::cli::{Measure, TopArgs};
use crate::heap::{StackStats, StackTable};
use crate::key::GroupBy;
use crate::render::{self, Align, Format, Table};
use crate::report::{
    self, Analysis, EntryJson, GroupJson, PrintedStack, SampledJson, StackPrinter,
};
use anyhow::Result;
use serde::Serialize;
use std::io::Write;

/// One stack's place in a ranking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ranked {
    /// Stack id.
    pub stack: u32,
    /// Bytes of the measure (allocated, at peak, leaked, or of the temporary blocks).
    pub bytes: u64,
    /// Count of the measure (calls, blocks at peak, leaked blocks, temporary allocations).
    pub count: u64,
    /// All of the stack's statistics.
    pub stats: StackStats,
    /// Stacks merged into this entry (1 for a stack of its own).
    pub merged: usize,
}

/// `(bytes, count)` of `by` for one stack.
pub fn measure(by: Measure, s: &StackStats) -> (u64, u64) {
    match by {
        Measure::Bytes | Measure::Count => (s.alloc_bytes, s.alloc_count),
        Measure::Peak => (s.peak_bytes, s.peak_count),
        Measure::Leaked => (s.live_bytes, s.live_count),
        Measure::Temporary => (s.temporary_bytes, s.temporary_count),
    }
}

/// Every stack with a non-zero measure, best first.
pub fn rank(stacks: &StackTable, by: Measure) -> Vec<Ranked> {
    let mut v: Vec<Ranked> = stacks
        .iter()
        .filter_map(|(stack, s)| {
            let (bytes, count) = measure(by, s);
            (bytes > 0 || count > 0).then_some(Ranked {
                stack,
                bytes,
                count,
                stats: *s,
                merged: 1,
            })
        })
        .collect();
    sort(&mut v, by);
    v
}

fn sort(v: &mut [Ranked], by: Measure) {
    let by_count = matches!(by, Measure::Count | Measure::Temporary);
    v.sort_by(|a, b| {
        let key = |r: &Ranked| {
            if by_count {
                (r.count, r.bytes)
            } else {
                (r.bytes, r.count)
            }
        };
        key(b).cmp(&key(a)).then(a.stack.cmp(&b.stack))
    });
}

/// `ranked` (by `by`) with the stacks of one key (`group_by`, in the printer's view) merged into
/// one entry, its statistics summed, represented by its best-ranked stack; ranked again. Unchanged
/// for `--group-by stack`.
pub fn group(
    ranked: Vec<Ranked>,
    by: Measure,
    group_by: GroupBy,
    printer: &mut StackPrinter<'_>,
    executable: &str,
) -> Vec<Ranked> {
    if !group_by.by_location() {
        return ranked;
    }
    let ids: Vec<u32> = ranked.iter().map(|r| r.stack).collect();
    let mut grouped: Vec<Ranked> = report::group(printer, &ids, group_by, executable)
        .into_iter()
        .map(|members| {
            let mut g = ranked[members[0]];
            for &i in &members[1..] {
                g.stats.add(&ranked[i].stats);
            }
            (g.bytes, g.count) = measure(by, &g.stats);
            g.merged = members.len();
            g
        })
        .collect();
    sort(&mut grouped, by);
    grouped
}

/// Runs `top`.
pub fn run(args: &TopArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<ExitCode> {
    let trace = report::open(&args.trace.trace, err)?;
    let analysis = report::analyze(&trace, &args.trace.trace);
    report::warn(err, &analysis.warnings);
    let ranked = rank(&analysis.stacks, args.by);
    let stack_count = ranked.len();
    let (total_bytes, total_count) = ranked.iter().fold((0u64, 0u64), |(b, c), r| {
        (b.wrapping_add(r.bytes), c + r.count)
    });
    let mut printer = StackPrinter::new(&analysis.defs, &args.symbols, args.format);
    let executable = &trace.header().executable;
    let ranked = group(ranked, args.by, args.group_by, &mut printer, executable);
    let shown = report::shown(Some(args.limit), args.format, ranked.len());
    let (stacks, sym_warnings) = report::print_entries(
        &mut printer,
        ranked[..shown].iter().map(|r| r.stack),
        args.group_by,
        err,
    );
    let name = args.trace.trace.display().to_string();
    match args.format {
        Format::Text => write_text(
            out,
            args.by,
            args.group_by,
            &analysis,
            (&ranked, stack_count),
            &stacks,
            (total_bytes, total_count),
        )?,
        Format::Json => {
            let mut warnings = analysis.warnings.clone();
            warnings.extend(sym_warnings);
            let grouped = args.group_by.by_location();
            let doc = TopJson {
                trace: &name,
                sampled: SampledJson::of(analysis.totals.sample_bytes),
                measure: args.by.name(),
                group_by: args.group_by.name(),
                total_bytes,
                total_count,
                stacks: stack_count,
                groups: grouped.then_some(ranked.len()),
                peak_live_bytes: analysis.totals.peak_live_bytes,
                peak_time_ns: analysis.totals.peak_time_ns,
                entries: ranked[..shown]
                    .iter()
                    .zip(&stacks)
                    .enumerate()
                    .map(|(i, (r, s))| entry_json(i + 1, r, s, args.group_by))
                    .collect(),
                warnings,
            };
            render::write_json(out, &doc)?;
        }
    }
    Ok(ExitCode::Success)
}

/// The JSON contract of `top`: fields may be added, never renamed or removed.
#[derive(Serialize)]
struct TopJson<'a> {
    trace: &'a str,
    /// Only for a sampled trace, whose bytes and counts are then estimates.
    #[serde(skip_serializing_if = "Option::is_none")]
    sampled: Option<SampledJson>,
    /// The measure ranked by.
    measure: &'static str,
    /// `stack`, `function` or `line`.
    group_by: &'static str,
    /// Sum of the measure's bytes over all stacks.
    total_bytes: u64,
    /// Sum of the measure's counts over all stacks.
    total_count: u64,
    /// Stacks with a non-zero measure (entries holds the first `-n` of them, or of `groups`).
    stacks: usize,
    /// With `--group-by function|line`: the entries those stacks make.
    #[serde(skip_serializing_if = "Option::is_none")]
    groups: Option<usize>,
    peak_live_bytes: u64,
    peak_time_ns: u64,
    entries: Vec<EntryJson<'a, TopExtra>>,
    warnings: Vec<String>,
}

/// `top` entries: `bytes` and `count` go with the measure ranked by; every measure by name too.
#[derive(Serialize)]
struct TopExtra {
    allocated_bytes: u64,
    allocated_count: u64,
    peak_bytes: u64,
    peak_count: u64,
    leaked_bytes: u64,
    leaked_count: u64,
    temporary_bytes: u64,
    temporary_count: u64,
}

fn entry_json<'a>(
    rank: usize,
    r: &Ranked,
    s: &'a PrintedStack,
    by: GroupBy,
) -> EntryJson<'a, TopExtra> {
    EntryJson {
        rank,
        stack_id: r.stack,
        bytes: r.bytes,
        count: r.count,
        extra: TopExtra {
            allocated_bytes: r.stats.alloc_bytes,
            allocated_count: r.stats.alloc_count,
            peak_bytes: r.stats.peak_bytes,
            peak_count: r.stats.peak_count,
            leaked_bytes: r.stats.live_bytes,
            leaked_count: r.stats.live_count,
            temporary_bytes: r.stats.temporary_bytes,
            temporary_count: r.stats.temporary_count,
        },
        group: GroupJson::of(by, s, Some(r.merged)),
        stack: s.json(),
    }
}

fn write_text(
    out: &mut dyn Write,
    by: Measure,
    group_by: GroupBy,
    a: &Analysis,
    (ranked, stack_count): (&[Ranked], usize),
    stacks: &[PrintedStack],
    (total_bytes, total_count): (u64, u64),
) -> Result<()> {
    let t = &a.totals;
    if let Some(line) = report::sampled_line(t.sample_bytes, None) {
        writeln!(out, "{line}")?;
    }
    let what = match by {
        Measure::Bytes => "allocated bytes".to_owned(),
        Measure::Count => "allocation calls".to_owned(),
        Measure::Peak => format!(
            "bytes live at the peak ({} in {} at {})",
            render::bytes(t.peak_live_bytes),
            render::counted(t.peak_live_count, "block"),
            render::duration(t.peak_time_ns)
        ),
        Measure::Leaked => format!(
            "bytes leaked ({} in {})",
            render::bytes(total_bytes),
            render::counted(total_count, "block")
        ),
        Measure::Temporary => format!(
            "temporary allocations ({} of {} calls)",
            render::count(total_count),
            render::count(t.alloc_calls)
        ),
    };
    if ranked.is_empty() {
        writeln!(out, "No stack has any {what}.")?;
        return Ok(());
    }
    let of = match group_by {
        GroupBy::Stack => render::counted(stack_count as u64, "stack"),
        _ => format!(
            "{} ({})",
            render::counted(ranked.len() as u64, group_by.noun()),
            render::counted(stack_count as u64, "stack")
        ),
    };
    writeln!(
        out,
        "Top {} of {of} by {what}; all stacks allocated {} in {}",
        stacks.len(),
        render::bytes(t.total_allocated_bytes),
        render::counted(t.alloc_calls, "call")
    )?;
    writeln!(out)?;
    let mut columns = vec![
        ("#", Align::Right),
        ("allocated", Align::Right),
        ("calls", Align::Right),
        ("peak", Align::Right),
        ("leaked", Align::Right),
        ("temporary", Align::Right),
    ];
    if group_by.by_location() {
        columns.push(("stacks", Align::Right));
    }
    let mut table = Table::new(&columns);
    for (i, r) in ranked.iter().take(stacks.len()).enumerate() {
        let s = &r.stats;
        let mut row = vec![
            (i + 1).to_string(),
            render::bytes(s.alloc_bytes),
            render::count(s.alloc_count),
            render::bytes(s.peak_bytes),
            render::bytes(s.live_bytes),
            render::count(s.temporary_count),
        ];
        if group_by.by_location() {
            row.push(render::count(r.merged as u64));
        }
        table.row(row);
    }
    report::write_table_with_stacks(out, &table, stacks)
}
