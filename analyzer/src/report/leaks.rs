//! `leaks`: the blocks still live when the trace ends, grouped by the stack that allocated them (for a
//! realloc chain, the stack of its last realloc: the chain is one block), largest first. With
//! `--fail-on-leak` it is also a check: exit status 1 when anything leaked. With `--group-by
//! function|line` the stacks of one key frame are one entry (as in `top`).

use crate::ExitCode;
use crate::cli::{LeaksArgs, Measure};
use crate::key::GroupBy;
use crate::render::{self, Align, Format, Table};
use crate::report::top::{Ranked, group, rank};
use crate::report::{self, EntryJson, GroupJson, PrintedStack, SampledJson, StackPrinter};
use anyhow::Result;
use serde::Serialize;
use std::io::Write;

/// Runs `leaks`.
pub fn run(args: &LeaksArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<ExitCode> {
    let trace = report::open(&args.trace.trace, err)?;
    let analysis = report::analyze(&trace, &args.trace.trace);
    report::warn(err, &analysis.warnings);
    let ranked = rank(&analysis.stacks, Measure::Leaked);
    let stack_count = ranked.len();
    let mut printer = StackPrinter::new(&analysis.defs, &args.symbols, args.format);
    let executable = &trace.header().executable;
    let ranked = group(
        ranked,
        Measure::Leaked,
        args.group_by,
        &mut printer,
        executable,
    );
    // Scripts want every leak; a terminal wants the biggest.
    let shown = report::shown(args.limit, args.format, ranked.len());
    let (stacks, sym_warnings) = report::print_entries(
        &mut printer,
        ranked[..shown].iter().map(|r| r.stack),
        args.group_by,
        err,
    );
    let t = &analysis.totals;
    let name = args.trace.trace.display().to_string();
    match args.format {
        Format::Text => write_text(
            out,
            t.sample_bytes,
            (t.leaked_bytes, t.leaked_count),
            args.group_by,
            (&ranked, stack_count),
            &stacks,
        )?,
        Format::Json => {
            let mut warnings = analysis.warnings.clone();
            warnings.extend(sym_warnings);
            let doc = LeaksJson {
                trace: &name,
                sampled: SampledJson::of(t.sample_bytes),
                group_by: args.group_by.name(),
                leaked_bytes: t.leaked_bytes,
                leaked_count: t.leaked_count,
                stacks: stack_count,
                groups: args.group_by.by_location().then_some(ranked.len()),
                ended: t.end_time_ns.is_some(),
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
    if args.fail_on_leak && t.leaked_count > 0 {
        return Ok(ExitCode::CheckFailed);
    }
    Ok(ExitCode::Success)
}

/// The JSON contract of `leaks`: fields may be added, never renamed or removed.
#[derive(Serialize)]
struct LeaksJson<'a> {
    trace: &'a str,
    /// Only for a sampled trace, whose bytes and counts are then estimates.
    #[serde(skip_serializing_if = "Option::is_none")]
    sampled: Option<SampledJson>,
    /// `stack`, `function` or `line`.
    group_by: &'static str,
    /// Bytes live at the end of the trace.
    leaked_bytes: u64,
    /// Blocks live at the end of the trace.
    leaked_count: u64,
    /// Stacks with leaked blocks (entries holds the first `-n` of them, or of `groups`).
    stacks: usize,
    /// With `--group-by function|line`: the entries those stacks make.
    #[serde(skip_serializing_if = "Option::is_none")]
    groups: Option<usize>,
    /// Whether the trace has an end record (without one, "leaked" means "live when the trace stops").
    ended: bool,
    entries: Vec<EntryJson<'a, LeakExtra>>,
    warnings: Vec<String>,
}

/// `leaks` entries: `bytes` and `count` are what is still live at the end; plus what the stack
/// allocated over the run.
#[derive(Serialize)]
struct LeakExtra {
    allocated_bytes: u64,
    allocated_count: u64,
}

fn entry_json<'a>(
    rank: usize,
    r: &Ranked,
    s: &'a PrintedStack,
    by: GroupBy,
) -> EntryJson<'a, LeakExtra> {
    EntryJson {
        rank,
        stack_id: r.stack,
        bytes: r.bytes,
        count: r.count,
        extra: LeakExtra {
            allocated_bytes: r.stats.alloc_bytes,
            allocated_count: r.stats.alloc_count,
        },
        group: GroupJson::of(by, s, Some(r.merged)),
        stack: s.json(),
    }
}

fn write_text(
    out: &mut dyn Write,
    sample_bytes: Option<u64>,
    (bytes, count): (u64, u64),
    by: GroupBy,
    (ranked, stack_count): (&[Ranked], usize),
    stacks: &[PrintedStack],
) -> Result<()> {
    if let Some(line) = report::sampled_line(sample_bytes, None) {
        writeln!(out, "{line}")?;
    }
    if ranked.is_empty() {
        writeln!(out, "No leaks: every block allocated was freed.")?;
        return Ok(());
    }
    writeln!(
        out,
        "{} leaked in {} from {} (showing {})",
        render::bytes(bytes),
        render::counted(count, "block"),
        report::stacks_text(stack_count, ranked.len(), by),
        stacks.len()
    )?;
    writeln!(out)?;
    let mut columns = vec![
        ("#", Align::Right),
        ("leaked", Align::Right),
        ("blocks", Align::Right),
        ("allocated", Align::Right),
        ("calls", Align::Right),
    ];
    if by.by_location() {
        columns.push(("stacks", Align::Right));
    }
    let mut table = Table::new(&columns);
    for (i, r) in ranked.iter().take(stacks.len()).enumerate() {
        let mut row = vec![
            (i + 1).to_string(),
            render::bytes(r.bytes),
            render::count(r.count),
            render::bytes(r.stats.alloc_bytes),
            render::count(r.stats.alloc_count),
        ];
        if by.by_location() {
            row.push(render::count(r.merged as u64));
        }
        table.row(row);
    }
    report::write_table_with_stacks(out, &table, stacks)
}
