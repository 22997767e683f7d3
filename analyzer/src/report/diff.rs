//! `diff A B`: what changed in the live heap between two points, each `TRACE` or `TRACE@POINT`, of
//! one trace (one pass captures both) or of two runs (one pass each). Stacks are matched by their
//! symbolic key (`key.rs`), never by address, so runs with different ASLR or a rebuilt binary
//! compare. Entries are ordered by the size of the change; a stack on one side only shows zeros
//! on the other; a stack that allocated but held nothing at either point shows zeros on both. With
//! `--fail-on-growth SIZE` it is a check: exit status 1 when the live heap grew by more than SIZE.

use crate::ExitCode;
use crate::capture::{self, Captured, Request, Snapshot};
use crate::cli::DiffArgs;
use crate::key::{self, GroupBy, Key};
use crate::point::{TracePoint, parse_size, parse_trace_point};
use crate::render::{self, Align, Format, Table};
use crate::report::{self, GroupJson, PrintedStack, SampledJson, StackJson, StackPrinter};
use anyhow::Result;
use rustc_hash::FxHashMap;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;

/// What one side holds for one key.
#[derive(Clone, Copy, Debug, Default)]
struct Held {
    bytes: u64,
    count: u64,
    /// Stacks merged into the key.
    stacks: usize,
    /// The stack shown for the key: the one holding most bytes (then blocks), lowest id on ties.
    rep: u32,
    rep_size: (u64, u64),
}

/// One matched entry.
#[derive(Clone, Debug)]
struct Entry {
    before: Held,
    after: Held,
    /// The side whose stack is shown (0 before, 1 after) and its key (for ordering ties).
    shown: usize,
    key: Key,
}

impl Entry {
    fn bytes_delta(&self) -> i64 {
        render::delta(self.before.bytes, self.after.bytes)
    }
    fn count_delta(&self) -> i64 {
        render::delta(self.before.count, self.after.count)
    }
}

/// Groups one side's snapshot by key.
fn by_key(
    snap: &Snapshot,
    printer: &mut StackPrinter<'_>,
    keys: &mut FxHashMap<u32, Key>,
    by: GroupBy,
    executable: &str,
) -> BTreeMap<Key, Held> {
    let mut out: BTreeMap<Key, Held> = BTreeMap::new();
    for l in &snap.stacks {
        let k = keys
            .entry(l.stack)
            .or_insert_with(|| printer.key(l.stack, by, executable))
            .clone();
        let h = out.entry(k).or_default();
        h.bytes = h.bytes.wrapping_add(l.bytes);
        h.count += l.count;
        h.stacks += 1;
        let size = (l.bytes, l.count);
        if h.stacks == 1 || size > h.rep_size {
            h.rep = l.stack;
            h.rep_size = size;
        }
    }
    out
}

fn same_file(a: &TracePoint, b: &TracePoint) -> bool {
    match (
        std::fs::canonicalize(&a.path),
        std::fs::canonicalize(&b.path),
    ) {
        (Ok(x), Ok(y)) => x == y,
        _ => a.path == b.path,
    }
}

/// Runs `diff`.
pub fn run(args: &DiffArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<ExitCode> {
    let sides = [
        parse_trace_point(&args.before)?,
        parse_trace_point(&args.after)?,
    ];
    let limit_growth = args.fail_on_growth.as_deref().map(parse_size).transpose()?;
    let by = args.group_by;

    // One pass per distinct trace; `snap_of[side]` is (source, snapshot index).
    let mut sources: Vec<Captured> = Vec::new();
    let mut executables: Vec<String> = Vec::new();
    let mut snap_of = [(0usize, 0usize); 2];
    let req = |points: Vec<crate::point::Point>| Request {
        points,
        keep_zeros: true,
        ..Request::default()
    };
    if same_file(&sides[0], &sides[1]) {
        let trace = report::open(&sides[0].path, err)?;
        let name = sides[0].path.display().to_string();
        let c = capture::capture(
            &trace,
            &name,
            &req(vec![sides[0].point.clone(), sides[1].point.clone()]),
        )?;
        report::warn(err, &c.warnings);
        sources.push(c);
        executables.push(trace.header().executable.clone());
        snap_of = [(0, 0), (0, 1)];
    } else {
        for (i, side) in sides.iter().enumerate() {
            let trace = report::open(&side.path, err)?;
            let name = side.path.display().to_string();
            let c = capture::capture(&trace, &name, &req(vec![side.point.clone()]))?;
            report::warn(err, &c.warnings);
            sources.push(c);
            executables.push(trace.header().executable.clone());
            snap_of[i] = (i, 0);
        }
    }
    let mut printers: Vec<StackPrinter<'_>> = sources
        .iter()
        .map(|c| StackPrinter::new(&c.defs, &args.symbols, args.format))
        .collect();
    let mut keys: Vec<FxHashMap<u32, Key>> = vec![FxHashMap::default(); sources.len()];
    let snap = |side: usize| &sources[snap_of[side].0].snapshots[snap_of[side].1];
    let held: Vec<BTreeMap<Key, Held>> = (0..2)
        .map(|side| {
            let src = snap_of[side].0;
            by_key(
                snap(side),
                &mut printers[src],
                &mut keys[src],
                by,
                &executables[src],
            )
        })
        .collect();

    let a: Vec<Key> = held[0].keys().cloned().collect();
    let b: Vec<Key> = held[1].keys().cloned().collect();
    let mut entries: Vec<Entry> = key::pair(&a, &b)
        .into_iter()
        .map(|(ka, kb)| {
            let before = ka.as_ref().map(|k| held[0][k]).unwrap_or_default();
            let after = kb.as_ref().map(|k| held[1][k]).unwrap_or_default();
            let (shown, key) = match (kb, ka) {
                (Some(k), _) => (1, k),
                (None, Some(k)) => (0, k),
                (None, None) => unreachable!("pair returns at least one key per pair"),
            };
            Entry {
                before,
                after,
                shown,
                key,
            }
        })
        .collect();
    entries.sort_by(|x, y| {
        let order = |e: &Entry| {
            (
                e.bytes_delta().unsigned_abs(),
                e.count_delta().unsigned_abs(),
                e.after.bytes,
                e.before.bytes,
            )
        };
        order(y).cmp(&order(x)).then_with(|| x.key.cmp(&y.key))
    });

    let changed = entries
        .iter()
        .filter(|e| e.bytes_delta() != 0 || e.count_delta() != 0)
        .count();
    let (listed, limit) = match args.format {
        // A terminal wants the changes; scripts get every entry, unchanged ones included.
        Format::Text => (changed, args.limit.unwrap_or(10)),
        Format::Json => (entries.len(), args.limit.unwrap_or(0)),
    };
    let shown = match limit {
        0 => listed,
        n => n.min(listed),
    };
    let stacks: Vec<PrintedStack> = entries[..shown]
        .iter()
        .map(|e| {
            let side = e.shown;
            let h = if side == 0 { &e.before } else { &e.after };
            printers[snap_of[side].0].entry_stack(h.rep, by)
        })
        .collect();
    let mut warnings: Vec<String> = sources.iter().flat_map(|c| c.warnings.clone()).collect();
    for p in &mut printers {
        let w = p.take_warnings();
        report::warn(err, &w);
        warnings.extend(w);
    }

    let (sa, sb) = (snap(0), snap(1));
    let total = Totals {
        bytes_before: sa.live_bytes,
        bytes_after: sb.live_bytes,
        bytes_delta: render::delta(sa.live_bytes, sb.live_bytes),
        count_before: sa.live_count,
        count_after: sb.live_count,
        count_delta: render::delta(sa.live_count, sb.live_count),
    };
    // Which side's numbers are estimates: one line for one trace, a line per sampled trace of two.
    let sampled_lines: Vec<String> = if sources.len() == 1 {
        report::sampled_line(sources[0].totals.sample_bytes, None)
            .into_iter()
            .collect()
    } else {
        (0..2)
            .filter_map(|i| {
                let name = sides[i].path.display().to_string();
                report::sampled_line(sources[i].totals.sample_bytes, Some(&name))
            })
            .collect()
    };
    let names: Vec<String> = (0..2)
        .map(|i| {
            let s = snap(i);
            format!("{}@{}", sides[i].path.display(), s.point)
        })
        .collect();
    match args.format {
        Format::Text => {
            for line in &sampled_lines {
                writeln!(out, "{line}")?;
            }
            write_text(out, &names, by, &entries, &stacks, changed, &total)?
        }
        Format::Json => {
            let point = |i: usize| PointJson {
                trace: sides[i].path.display().to_string(),
                sampled: SampledJson::of(sources[snap_of[i].0].totals.sample_bytes),
                point: snap(i).point.to_string(),
                time_ns: snap(i).time_ns,
                live_bytes: snap(i).live_bytes,
                live_count: snap(i).live_count,
            };
            let doc = DiffJson {
                before: point(0),
                after: point(1),
                group_by: by.name(),
                totals: &total,
                changed,
                entries: entries[..shown]
                    .iter()
                    .zip(&stacks)
                    .enumerate()
                    .map(|(i, (e, s))| EntryJson {
                        rank: i + 1,
                        bytes_before: e.before.bytes,
                        bytes_after: e.after.bytes,
                        bytes_delta: e.bytes_delta(),
                        count_before: e.before.count,
                        count_after: e.after.count,
                        count_delta: e.count_delta(),
                        stacks_before: e.before.stacks,
                        stacks_after: e.after.stacks,
                        group: GroupJson::of(by, s, None),
                        stack: s.json(),
                    })
                    .collect(),
                warnings,
            };
            render::write_json(out, &doc)?;
        }
    }
    if let Some(limit) = limit_growth
        && total.bytes_delta > 0
        && total.bytes_delta.unsigned_abs() > limit
    {
        let _ = writeln!(
            err,
            "check failed: the live heap grew by {} ({} bytes), more than {} ({limit} bytes)",
            render::bytes(total.bytes_delta.unsigned_abs()),
            total.bytes_delta,
            render::bytes(limit)
        );
        return Ok(ExitCode::CheckFailed);
    }
    Ok(ExitCode::Success)
}

/// The whole heap at both points.
#[derive(Serialize)]
struct Totals {
    bytes_before: u64,
    bytes_after: u64,
    bytes_delta: i64,
    count_before: u64,
    count_after: u64,
    count_delta: i64,
}

#[derive(Serialize)]
struct PointJson {
    trace: String,
    /// Only for a sampled trace, whose bytes and counts are then estimates.
    #[serde(skip_serializing_if = "Option::is_none")]
    sampled: Option<SampledJson>,
    point: String,
    time_ns: u64,
    live_bytes: u64,
    live_count: u64,
}

/// The JSON contract of `diff`: fields may be added, never renamed or removed.
#[derive(Serialize)]
struct DiffJson<'a> {
    before: PointJson,
    after: PointJson,
    group_by: &'static str,
    /// Live bytes and blocks of the whole heap at both points, and their change.
    #[serde(flatten)]
    totals: &'a Totals,
    /// Entries whose bytes or blocks changed.
    changed: usize,
    entries: Vec<EntryJson<'a>>,
    warnings: Vec<String>,
}

#[derive(Serialize)]
struct EntryJson<'a> {
    rank: usize,
    bytes_before: u64,
    bytes_after: u64,
    bytes_delta: i64,
    count_before: u64,
    count_after: u64,
    count_delta: i64,
    /// Stacks of each side merged into this entry.
    stacks_before: usize,
    stacks_after: usize,
    /// With `--group-by function|line`: `location`, the key frame.
    #[serde(flatten)]
    group: Option<GroupJson<'a>>,
    #[serde(flatten)]
    stack: StackJson<'a>,
}

fn write_text(
    out: &mut dyn Write,
    names: &[String],
    by: GroupBy,
    entries: &[Entry],
    stacks: &[PrintedStack],
    changed: usize,
    t: &Totals,
) -> Result<()> {
    let how = match by {
        GroupBy::Stack => "stacks matched by function and module, file:line breaking ties",
        GroupBy::Function => "grouped by innermost function",
        GroupBy::Line => "grouped by innermost source line",
    };
    writeln!(out, "{} → {} ({how})", names[0], names[1])?;
    writeln!(
        out,
        "{} of {} changed (showing {})",
        render::count(changed as u64),
        match entries.len() {
            1 => "1 entry".to_owned(),
            n => format!("{} entries", render::count(n as u64)),
        },
        stacks.len()
    )?;
    writeln!(out)?;
    let mut table = Table::new(&[
        ("#", Align::Right),
        ("before", Align::Right),
        ("after", Align::Right),
        ("delta", Align::Right),
        ("blocks before", Align::Right),
        ("after", Align::Right),
        ("delta", Align::Right),
    ]);
    for (i, e) in entries.iter().take(stacks.len()).enumerate() {
        table.row(vec![
            (i + 1).to_string(),
            render::bytes(e.before.bytes),
            render::bytes(e.after.bytes),
            render::signed_bytes(e.bytes_delta()),
            render::count(e.before.count),
            render::count(e.after.count),
            render::signed_count(e.count_delta()),
        ]);
    }
    table.row(vec![
        "total".into(),
        render::bytes(t.bytes_before),
        render::bytes(t.bytes_after),
        render::signed_bytes(t.bytes_delta),
        render::count(t.count_before),
        render::count(t.count_after),
        render::signed_count(t.count_delta),
    ]);
    report::write_table_with_stacks(out, &table, stacks)
}
