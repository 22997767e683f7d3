//! `snapshot TRACE@POINT`: the live heap at one point of a trace (a mark, a time, the peak, the
//! end), grouped by the stack that allocated each block, largest first; text or JSON shaped like
//! `leaks`. The replay stops mattering after the point, but the pass reads the whole trace, since
//! a label's absence is only known at the end.

use crate::ExitCode;
use crate::capture::{self, Live, Request};
use crate::cli::SnapshotArgs;
use crate::point::parse_trace_point;
use crate::render::{self, Align, Format, Table};
use crate::report::{self, EntryJson};
use anyhow::Result;
use serde::Serialize;
use std::io::Write;

/// Runs `snapshot`.
pub fn run(args: &SnapshotArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<ExitCode> {
    let at = parse_trace_point(&args.point)?;
    let trace = report::open(&at.path, err)?;
    let name = at.path.display().to_string();
    let req = Request {
        points: vec![at.point.clone()],
        ..Request::default()
    };
    let captured = capture::capture(&trace, &name, &req)?;
    report::warn(err, &captured.warnings);
    let snap = &captured.snapshots[0];
    let mut ranked: Vec<Live> = snap.stacks.clone();
    ranked.sort_by(|a, b| {
        (b.bytes, b.count)
            .cmp(&(a.bytes, a.count))
            .then(a.stack.cmp(&b.stack))
    });
    let shown = report::shown(args.limit, args.format, ranked.len());
    let (stacks, sym_warnings) = report::print_stacks(
        &captured.defs,
        &args.symbols,
        args.format,
        ranked[..shown].iter().map(|l| l.stack),
        err,
    );
    let point = snap.point.to_string();
    match args.format {
        Format::Text => {
            if ranked.is_empty() {
                writeln!(
                    out,
                    "Nothing live at {name}@{point} ({}).",
                    render::duration(snap.time_ns)
                )?;
                return Ok(ExitCode::Success);
            }
            writeln!(
                out,
                "Live at {name}@{point} ({}): {} in {} from {} (showing {})",
                render::duration(snap.time_ns),
                render::bytes(snap.live_bytes),
                render::counted(snap.live_count, "block"),
                render::counted(ranked.len() as u64, "stack"),
                stacks.len()
            )?;
            writeln!(out)?;
            let mut table = Table::new(&[
                ("#", Align::Right),
                ("live", Align::Right),
                ("blocks", Align::Right),
            ]);
            for (i, l) in ranked[..shown].iter().enumerate() {
                table.row(vec![
                    (i + 1).to_string(),
                    render::bytes(l.bytes),
                    render::count(l.count),
                ]);
            }
            report::write_table_with_stacks(out, &table, &stacks)?;
        }
        Format::Json => {
            let mut warnings = captured.warnings.clone();
            warnings.extend(sym_warnings);
            let doc = SnapshotJson {
                trace: &name,
                point: &point,
                time_ns: snap.time_ns,
                live_bytes: snap.live_bytes,
                live_count: snap.live_count,
                stacks: ranked.len(),
                entries: ranked[..shown]
                    .iter()
                    .zip(&stacks)
                    .enumerate()
                    .map(|(i, (l, s))| EntryJson {
                        rank: i + 1,
                        stack_id: l.stack,
                        bytes: l.bytes,
                        count: l.count,
                        extra: NoExtra {},
                        stack: s.json(),
                    })
                    .collect(),
                warnings,
            };
            render::write_json(out, &doc)?;
        }
    }
    Ok(ExitCode::Success)
}

/// The JSON contract of `snapshot`: fields may be added, never renamed or removed.
#[derive(Serialize)]
struct SnapshotJson<'a> {
    trace: &'a str,
    /// The point as written after `@` (`end` for a bare trace).
    point: &'a str,
    /// When the point is, ns since the start.
    time_ns: u64,
    /// Bytes live at the point.
    live_bytes: u64,
    /// Blocks live at the point.
    live_count: u64,
    /// Stacks with live blocks (entries holds the first `-n` of them).
    stacks: usize,
    entries: Vec<EntryJson<'a, NoExtra>>,
    warnings: Vec<String>,
}

/// `snapshot` entries have no fields of their own: `bytes` and `count` are live at the point.
#[derive(Serialize)]
struct NoExtra {}
