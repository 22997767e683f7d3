//! `leaks`: the blocks still live when the trace ends, grouped by the stack that allocated them (for a
//! realloc chain, the stack of its last realloc: the chain is one block), largest first. With
//! `--fail-on-leak` it is also a check: exit status 1 when anything leaked.

use crate::ExitCode;
use crate::cli::{LeaksArgs, Measure};
use crate::render::{self, Align, Format, Table};
use crate::report::top::{Ranked, rank};
use crate::report::{self, EntryJson, PrintedStack};
use anyhow::Result;
use serde::Serialize;
use std::io::Write;

/// Runs `leaks`.
pub fn run(args: &LeaksArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<ExitCode> {
    let trace = report::open(&args.trace.trace, err)?;
    let analysis = report::analyze(&trace, &args.trace.trace);
    report::warn(err, &analysis.warnings);
    let ranked = rank(&analysis.stacks, Measure::Leaked);
    // Scripts want every leak; a terminal wants the biggest.
    let shown = report::shown(args.limit, args.format, ranked.len());
    let (stacks, sym_warnings) = report::print_stacks(
        &analysis.defs,
        &args.symbols,
        args.format,
        ranked[..shown].iter().map(|r| r.stack),
        err,
    );
    let t = &analysis.totals;
    let name = args.trace.trace.display().to_string();
    match args.format {
        Format::Text => write_text(out, t.leaked_bytes, t.leaked_count, &ranked, &stacks)?,
        Format::Json => {
            let mut warnings = analysis.warnings.clone();
            warnings.extend(sym_warnings);
            let doc = LeaksJson {
                trace: &name,
                leaked_bytes: t.leaked_bytes,
                leaked_count: t.leaked_count,
                stacks: ranked.len(),
                ended: t.end_time_ns.is_some(),
                entries: ranked[..shown]
                    .iter()
                    .zip(&stacks)
                    .enumerate()
                    .map(|(i, (r, s))| entry_json(i + 1, r, s))
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
    /// Bytes live at the end of the trace.
    leaked_bytes: u64,
    /// Blocks live at the end of the trace.
    leaked_count: u64,
    /// Stacks with leaked blocks (entries holds the first `-n` of them).
    stacks: usize,
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

fn entry_json<'a>(rank: usize, r: &Ranked, s: &'a PrintedStack) -> EntryJson<'a, LeakExtra> {
    EntryJson {
        rank,
        stack_id: r.stack,
        bytes: r.bytes,
        count: r.count,
        extra: LeakExtra {
            allocated_bytes: r.stats.alloc_bytes,
            allocated_count: r.stats.alloc_count,
        },
        stack: s.json(),
    }
}

fn write_text(
    out: &mut dyn Write,
    bytes: u64,
    count: u64,
    ranked: &[Ranked],
    stacks: &[PrintedStack],
) -> Result<()> {
    if ranked.is_empty() {
        writeln!(out, "No leaks: every block allocated was freed.")?;
        return Ok(());
    }
    writeln!(
        out,
        "{} leaked in {} from {} (showing {})",
        render::bytes(bytes),
        render::counted(count, "block"),
        render::counted(ranked.len() as u64, "stack"),
        stacks.len()
    )?;
    writeln!(out)?;
    let mut table = Table::new(&[
        ("#", Align::Right),
        ("leaked", Align::Right),
        ("blocks", Align::Right),
        ("allocated", Align::Right),
        ("calls", Align::Right),
    ]);
    for (i, r) in ranked.iter().take(stacks.len()).enumerate() {
        table.row(vec![
            (i + 1).to_string(),
            render::bytes(r.bytes),
            render::count(r.count),
            render::bytes(r.stats.alloc_bytes),
            render::count(r.stats.alloc_count),
        ]);
    }
    report::write_table_with_stacks(out, &table, stacks)
}
