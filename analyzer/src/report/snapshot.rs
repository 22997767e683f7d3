//! `snapshot TRACE@POINT`: the live heap at one point of a trace (a mark, a time, the peak, the
//! end), grouped by the stack that allocated each block, largest first; text or JSON shaped like
//! `leaks`. The replay stops mattering after the point, but the pass reads the whole trace, since
//! a label's absence is only known at the end. With `--group-by function|line` the stacks of one
//! key frame are one entry (as in `top`).

use crate::ExitCode;
use crate::capture::{self, Live, Request};
use crate::cli::SnapshotArgs;
use crate::point::parse_trace_point;
use crate::render::{self, Align, Format, Table};
use crate::report::{self, EntryJson, GroupJson, SampledJson, StackPrinter};
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
    let mut ranked: Vec<(Live, usize)> = snap.stacks.iter().map(|&l| (l, 1)).collect();
    sort(&mut ranked);
    let stack_count = ranked.len();
    let mut printer = StackPrinter::new(&captured.defs, &args.symbols, args.format);
    if args.group_by.by_location() {
        let ids: Vec<u32> = ranked.iter().map(|l| l.0.stack).collect();
        let executable = &trace.header().executable;
        ranked = report::group(&mut printer, &ids, args.group_by, executable)
            .into_iter()
            .map(|members| {
                let mut g = ranked[members[0]].0;
                for &i in &members[1..] {
                    g.bytes = g.bytes.wrapping_add(ranked[i].0.bytes);
                    g.count += ranked[i].0.count;
                }
                (g, members.len())
            })
            .collect();
        sort(&mut ranked);
    }
    let shown = report::shown(args.limit, args.format, ranked.len());
    let (stacks, sym_warnings) = report::print_entries(
        &mut printer,
        ranked[..shown].iter().map(|l| l.0.stack),
        args.group_by,
        err,
    );
    let point = snap.point.to_string();
    match args.format {
        Format::Text => {
            if let Some(line) = report::sampled_line(captured.totals.sample_bytes, None) {
                writeln!(out, "{line}")?;
            }
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
                report::stacks_text(stack_count, ranked.len(), args.group_by),
                stacks.len()
            )?;
            writeln!(out)?;
            let grouped = args.group_by.by_location();
            let mut columns = vec![
                ("#", Align::Right),
                ("live", Align::Right),
                ("blocks", Align::Right),
            ];
            if grouped {
                columns.push(("stacks", Align::Right));
            }
            let mut table = Table::new(&columns);
            for (i, (l, merged)) in ranked[..shown].iter().enumerate() {
                let mut row = vec![
                    (i + 1).to_string(),
                    render::bytes(l.bytes),
                    render::count(l.count),
                ];
                if grouped {
                    row.push(render::count(*merged as u64));
                }
                table.row(row);
            }
            report::write_table_with_stacks(out, &table, &stacks)?;
        }
        Format::Json => {
            let mut warnings = captured.warnings.clone();
            warnings.extend(sym_warnings);
            let doc = SnapshotJson {
                trace: &name,
                sampled: SampledJson::of(captured.totals.sample_bytes),
                point: &point,
                group_by: args.group_by.name(),
                time_ns: snap.time_ns,
                live_bytes: snap.live_bytes,
                live_count: snap.live_count,
                stacks: stack_count,
                groups: args.group_by.by_location().then_some(ranked.len()),
                entries: ranked[..shown]
                    .iter()
                    .zip(&stacks)
                    .enumerate()
                    .map(|(i, ((l, merged), s))| EntryJson {
                        rank: i + 1,
                        stack_id: l.stack,
                        bytes: l.bytes,
                        count: l.count,
                        extra: NoExtra {},
                        group: GroupJson::of(args.group_by, s, Some(*merged)),
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
    /// Only for a sampled trace, whose bytes and counts are then estimates.
    #[serde(skip_serializing_if = "Option::is_none")]
    sampled: Option<SampledJson>,
    /// The point as written after `@` (`end` for a bare trace).
    point: &'a str,
    /// `stack`, `function` or `line`.
    group_by: &'static str,
    /// When the point is, ns since the start.
    time_ns: u64,
    /// Bytes live at the point.
    live_bytes: u64,
    /// Blocks live at the point.
    live_count: u64,
    /// Stacks with live blocks (entries holds the first `-n` of them, or of `groups`).
    stacks: usize,
    /// With `--group-by function|line`: the entries those stacks make.
    #[serde(skip_serializing_if = "Option::is_none")]
    groups: Option<usize>,
    entries: Vec<EntryJson<'a, NoExtra>>,
    warnings: Vec<String>,
}

/// `snapshot` entries have no fields of their own: `bytes` and `count` are live at the point.
#[derive(Serialize)]
struct NoExtra {}

/// Largest first (bytes, then blocks), then by stack id.
fn sort(ranked: &mut [(Live, usize)]) {
    ranked.sort_by(|(a, _), (b, _)| {
        (b.bytes, b.count)
            .cmp(&(a.bytes, a.count))
            .then(a.stack.cmp(&b.stack))
    });
}
