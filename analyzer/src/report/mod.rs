//! The subcommands, one file each, and what they share: opening a trace (index warnings included),
//! the full single-pass analysis behind `top` and `leaks`, turning stack ids into printable,
//! symbolized frames (in the `--frames` view), grouping a report's stacks by `--group-by`, and the
//! stack-table layout of the text reports.

pub mod diff;
pub mod dump;
pub mod growth;
pub mod leaks;
pub mod snapshot;
pub mod summary;
pub mod top;

use crate::cli::SymbolArgs;
use crate::heap::StackTable;
use crate::key::{self, GroupBy, Key};
use crate::render::{self, Format};
use crate::replay::{Definitions, Replayer, Totals};
use crate::sampling::Weights;
use crate::symbols::{ResolvedFrame, SymbolOptions, Symbolizer};
use crate::view::{self, FrameView};
use anyhow::Result;
use memtrace_format::Trace;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Opens the trace at `path` and prints the reader's index-time warnings.
pub fn open(path: &Path, err: &mut dyn Write) -> Result<Trace> {
    // The reader's messages already name the file; no context to add.
    let trace = Trace::open(path)?;
    warn(err, trace.warnings());
    Ok(trace)
}

/// The line a text report starts with when its numbers are estimates from a sampled trace
/// (`name`: which trace, when a report reads two).
pub fn sampled_line(sample_bytes: Option<u64>, name: Option<&str>) -> Option<String> {
    let n = Weights::new(sample_bytes).sample_bytes()?;
    let which = name.map_or_else(String::new, |name| format!("{name}: "));
    Some(format!(
        "{which}estimates from a sampled trace (MEMTRACE_SAMPLE_BYTES={n}): each recorded \
         allocation of s bytes counts 1/(1 - exp(-s/{n})) times"
    ))
}

/// The `sampled` object of a report's JSON, present when its numbers are estimates.
#[derive(Clone, Copy, Serialize)]
pub struct SampledJson {
    /// The sampling mean (`MEMTRACE_SAMPLE_BYTES`).
    pub sample_bytes: u64,
    /// Always true: the report's bytes and counts are estimates of all allocations.
    pub estimated: bool,
}

impl SampledJson {
    /// The object for a trace whose header says `sample_bytes`; `None` when it is not sampled.
    pub fn of(sample_bytes: Option<u64>) -> Option<SampledJson> {
        Weights::new(sample_bytes)
            .sample_bytes()
            .map(|sample_bytes| SampledJson {
                sample_bytes,
                estimated: true,
            })
    }
}

/// Prints `warning: …` lines. A failing stderr is no reason to fail the report.
pub fn warn(err: &mut dyn Write, warnings: &[String]) {
    for w in warnings {
        let _ = writeln!(err, "warning: {w}");
    }
}

/// Everything one pass over a trace yields: the totals, per-stack statistics (finalized) and the
/// stack and module definitions.
pub struct Analysis {
    /// Global counters.
    pub totals: Totals,
    /// Per-stack statistics, peak shares final.
    pub stacks: StackTable,
    /// Stacks and modules, for symbolization.
    pub defs: Definitions,
    /// Warnings of the record stream (truncation, corruption, no end record).
    pub warnings: Vec<String>,
}

/// A replayer for the trace at `path`, holding the blocks a fork child inherited (see
/// `inherit.rs`).
pub fn new_replayer(trace: &Trace, path: &Path) -> Replayer {
    let mut replayer = Replayer::with_weights(Weights::new(trace.header().sample_bytes));
    replayer.inherit(crate::inherit::inherited_blocks(trace, path));
    replayer
}

/// Replays `trace` (read from `path`) once with per-stack statistics and definitions.
pub fn analyze(trace: &Trace, path: &Path) -> Analysis {
    let mut replayer = new_replayer(trace, path);
    let weights = Weights::new(trace.header().sample_bytes);
    let mut obs = (StackTable::new(weights), Definitions::default());
    let mut records = trace.records();
    replayer.run_records(&mut records, &mut obs);
    let warnings = records.take_warnings();
    let (totals, _heap) = replayer.finish();
    let (mut stacks, defs) = obs;
    stacks.finalize(totals.peak_seq);
    Analysis {
        totals,
        stacks,
        defs,
        warnings,
    }
}

/// A stack ready to print.
pub struct PrintedStack {
    /// Its frames, innermost first, inlined frames expanded, cut to the depth asked for.
    pub frames: Vec<ResolvedFrame>,
    /// Frames left out by the depth limit.
    pub omitted: usize,
    /// Why there are no frames, if there are none: stack 0, or an id the trace never defined.
    pub note: Option<&'static str>,
}

impl PrintedStack {
    /// The stack's part of a report entry in JSON.
    pub fn json(&self) -> StackJson<'_> {
        StackJson {
            stack: render::frames_json(&self.frames),
            frames_omitted: self.omitted,
            stack_note: self.note,
        }
    }
}

/// One entry of a ranked report in JSON: what every report's entries share (rank, stack id, the
/// bytes and count the report ranks by), the report's own fields (`extra`), what a grouped entry
/// adds, then the stack.
#[derive(Serialize)]
pub struct EntryJson<'a, X: Serialize> {
    /// From 1.
    pub rank: usize,
    /// The stack's id in the trace (of a grouped entry: its representative stack's).
    pub stack_id: u32,
    /// The report's bytes (its measure).
    pub bytes: u64,
    /// The report's count (blocks or calls).
    pub count: u64,
    /// The report's own fields.
    #[serde(flatten)]
    pub extra: X,
    /// With `--group-by function|line`: the key frame and the stacks merged.
    #[serde(flatten)]
    pub group: Option<GroupJson<'a>>,
    /// The stack.
    #[serde(flatten)]
    pub stack: StackJson<'a>,
}

/// What an entry grouped by `--group-by function|line` adds in JSON.
#[derive(Serialize)]
pub struct GroupJson<'a> {
    /// The key frame (the innermost Python frame, else the innermost native frame with a line,
    /// else the innermost frame), or null for an entry of stacks with no frame to show.
    pub location: Option<LocationJson<'a>>,
    /// How many stacks the entry merges (`diff` has `stacks_before`/`stacks_after` instead).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merged_stacks: Option<usize>,
}

impl<'a> GroupJson<'a> {
    /// The group fields of an entry whose printed stack is `stack` (its key frame only), when
    /// grouped by `by`.
    pub fn of(by: GroupBy, stack: &'a PrintedStack, merged: Option<usize>) -> Option<Self> {
        by.by_location().then(|| GroupJson {
            location: stack.frames.first().map(LocationJson::from),
            merged_stacks: merged,
        })
    }
}

/// Where a grouped entry's stacks meet, in JSON.
#[derive(Serialize)]
pub struct LocationJson<'a> {
    /// Function (a Python frame: its qualified name), or null.
    pub function: Option<&'a str>,
    /// Source file (a Python frame: its `co_filename`), or null.
    pub file: Option<&'a str>,
    /// Line, or null.
    pub line: Option<u32>,
    /// Module path (null for a Python frame).
    pub module: Option<&'a str>,
    /// `"python"` or `"native"`.
    pub kind: &'static str,
}

impl<'a> From<&'a ResolvedFrame> for LocationJson<'a> {
    fn from(f: &'a ResolvedFrame) -> Self {
        LocationJson {
            function: f.function.as_deref(),
            file: f.file.as_deref(),
            line: f.line,
            module: f.module.as_deref(),
            kind: f.kind.name(),
        }
    }
}

/// The stack fields of every report entry in JSON (the contract's `stack`, innermost first, and
/// why it is short or empty); flattened into each entry.
#[derive(Serialize)]
pub struct StackJson<'a> {
    /// The frames, innermost first.
    pub stack: Vec<render::FrameJson<'a>>,
    /// Frames left out by `--depth`.
    pub frames_omitted: usize,
    /// Why there are no frames, if there are none.
    pub stack_note: Option<&'static str>,
}

/// Resolves the stacks a report prints, in the `--frames` view.
pub struct StackPrinter<'a> {
    defs: &'a Definitions,
    symbolizer: Symbolizer<'a>,
    depth: usize,
    view: FrameView,
}

impl<'a> StackPrinter<'a> {
    /// A printer for `defs`, with the symbol options and depth of `args` (the depth default depends on
    /// the format: short stacks in a terminal, whole ones in JSON).
    pub fn new(defs: &'a Definitions, args: &SymbolArgs, format: Format) -> Self {
        let mut options = SymbolOptions {
            enabled: !args.no_symbols,
            ..SymbolOptions::default()
        };
        if !args.debug_dir.is_empty() {
            options.debug_dirs = args.debug_dir.clone();
        }
        let depth = match (args.depth, format) {
            (Some(0), _) | (None, Format::Json) => usize::MAX,
            (Some(n), _) => n,
            (None, Format::Text) => 12,
        };
        StackPrinter {
            defs,
            symbolizer: Symbolizer::new(&defs.modules, options)
                .with_python_codes(&defs.python_codes),
            depth,
            view: args.frames,
        }
    }

    /// Every frame of stack `id` the view shows, innermost first, inlined frames expanded, never
    /// cut; and, when there is none, why.
    fn shown(&mut self, id: u32) -> (Vec<ResolvedFrame>, Option<&'static str>) {
        if id == 0 {
            return (Vec::new(), Some("no stack captured"));
        }
        let Some(frames) = self.defs.stacks.get(&id) else {
            return (Vec::new(), Some("stack not defined in the trace"));
        };
        let all = self.symbolizer.resolve_stack(frames);
        let had_frames = !all.is_empty();
        let shown = view::apply(self.view, all);
        let note = (had_frames && shown.is_empty()).then(|| self.view.empty_note());
        (shown, note)
    }

    /// Every frame of stack `id` the view shows, innermost first, inlined frames expanded, never
    /// cut (empty for stack 0 or an undefined id).
    pub fn resolve(&mut self, id: u32) -> Vec<ResolvedFrame> {
        self.shown(id).0
    }

    /// The symbolic key of stack `id` (`key.rs`) in the view: `(no stack)` for stack 0 or an
    /// undefined id, `(no python frames)` for a stack the view leaves empty.
    pub fn key(&mut self, id: u32, by: GroupBy, executable: &str) -> Key {
        if by.by_location() && id != 0 && self.defs.stacks.contains_key(&id) {
            // Only the key frame matters: resolve no more of the stack than it takes to find it
            // (grouping resolves every stack of a report, often deep Python ones).
            let found = self.location_frame(id, by);
            debug_assert_eq!(
                found,
                {
                    let (frames, _) = self.shown(id);
                    key::location(&frames, by).map(|at| frames[at].clone())
                },
                "stack {id}"
            );
            return match found {
                Some(frame) => key::key(std::slice::from_ref(&frame), by, executable),
                None => match self.defs.stacks.get(&id) {
                    Some(raw) if !raw.is_empty() => {
                        key::note_key(&format!("({})", self.view.empty_note()))
                    }
                    _ => key::key(&[], by, executable),
                },
            };
        }
        match self.shown(id) {
            (frames, Some(note)) if frames.is_empty() && self.defs.stacks.contains_key(&id) => {
                key::note_key(&format!("({note})"))
            }
            (frames, _) => key::key(&frames, by, executable),
        }
    }

    /// [`key::location`]'s frame of the view of stack `id` (a defined one), resolving only the
    /// frames before it. In a stack with Python frames shown, it is the first of them (hiding
    /// evaluation frames never hides one); otherwise nothing is hidden among the frames shown,
    /// so it is their first frame (`function`), or the first with a file and a line (`line`) and
    /// failing that their first.
    fn location_frame(&mut self, id: u32, by: GroupBy) -> Option<ResolvedFrame> {
        let raw = self.defs.stacks.get(&id)?;
        let has_python = raw.iter().any(|f| f.as_python().is_some());
        let python_first = has_python && self.view != FrameView::Native;
        let mut first = None;
        for &f in raw.iter() {
            let is_python = f.as_python().is_some();
            let shown = match self.view {
                FrameView::Python => is_python,
                FrameView::Native => !is_python,
                FrameView::Merged => true,
            };
            if !shown || (python_first && !is_python) {
                continue;
            }
            let resolved = self.symbolizer.resolve(f);
            if python_first || by == GroupBy::Function {
                return resolved.first().cloned();
            }
            if let Some(r) = resolved
                .iter()
                .find(|r| r.file.is_some() && r.line.is_some())
            {
                return Some(r.clone());
            }
            if first.is_none() {
                first = resolved.first().cloned();
            }
        }
        first
    }

    /// The printable form of stack `id`.
    pub fn stack(&mut self, id: u32) -> PrintedStack {
        let (mut frames, note) = self.shown(id);
        let omitted = frames.len().saturating_sub(self.depth);
        frames.truncate(self.depth);
        PrintedStack {
            frames,
            omitted,
            note,
        }
    }

    /// What an entry of stack `id` prints when grouped `by`: the whole stack for `stack`, else its
    /// key frame alone ([`key::location`]), the other frames counted as omitted.
    pub fn entry_stack(&mut self, id: u32, by: GroupBy) -> PrintedStack {
        if !by.by_location() {
            return self.stack(id);
        }
        let (frames, note) = self.shown(id);
        let total = frames.len();
        match key::location(&frames, by) {
            Some(at) => PrintedStack {
                frames: vec![frames[at].clone()],
                omitted: total - 1,
                note,
            },
            None => PrintedStack {
                frames: Vec::new(),
                omitted: 0,
                note,
            },
        }
    }

    /// Warnings of symbolization (unreadable modules, build-id mismatches).
    pub fn take_warnings(&mut self) -> Vec<String> {
        self.symbolizer.take_warnings()
    }
}

/// How many of `available` ranked entries a report shows: `-n` when given (0: all), else the
/// ten biggest in text and everything in JSON.
pub fn shown(limit: Option<usize>, format: Format, available: usize) -> usize {
    let limit = limit.unwrap_or(match format {
        Format::Text => 10,
        Format::Json => 0,
    });
    match limit {
        0 => available,
        n => n.min(available),
    }
}

/// Symbolizes the stacks `ids` (the entries a report shows, in order). What the symbolizer had
/// to warn about goes to `err` and is returned too, for the JSON's `warnings`.
pub fn print_stacks(
    defs: &Definitions,
    symbols: &SymbolArgs,
    format: Format,
    ids: impl IntoIterator<Item = u32>,
    err: &mut dyn Write,
) -> (Vec<PrintedStack>, Vec<String>) {
    let mut printer = StackPrinter::new(defs, symbols, format);
    print_entries(&mut printer, ids, GroupBy::Stack, err)
}

/// [`print_stacks`] with a printer already in use, for entries grouped `by`
/// ([`StackPrinter::entry_stack`]).
pub fn print_entries(
    printer: &mut StackPrinter<'_>,
    ids: impl IntoIterator<Item = u32>,
    by: GroupBy,
    err: &mut dyn Write,
) -> (Vec<PrintedStack>, Vec<String>) {
    let stacks = ids
        .into_iter()
        .map(|id| printer.entry_stack(id, by))
        .collect();
    let warnings = printer.take_warnings();
    warn(err, &warnings);
    (stacks, warnings)
}

/// Groups a report's stacks `ids` (in rank order) by their key in `by`: the indices into `ids` of
/// each group's stacks, groups in order of their first (best ranked) stack, which represents the
/// group. The keys come from the printer's view; `executable` names the traced program (`key.rs`).
pub fn group(
    printer: &mut StackPrinter<'_>,
    ids: &[u32],
    by: GroupBy,
    executable: &str,
) -> Vec<Vec<usize>> {
    let mut index: BTreeMap<Key, usize> = BTreeMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        let k = printer.key(id, by, executable);
        let g = *index.entry(k).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    groups
}

/// The report's entries in text: `5 stacks`, or grouped `5 stacks in 3 functions`, `5 stacks at
/// 3 lines`.
pub fn stacks_text(stacks: usize, groups: usize, by: GroupBy) -> String {
    let s = render::counted(stacks as u64, "stack");
    match by {
        GroupBy::Stack => s,
        GroupBy::Function => format!("{s} in {}", render::counted(groups as u64, "function")),
        GroupBy::Line => format!("{s} at {}", render::counted(groups as u64, "line")),
    }
}

/// Writes a stack's lines under a table row.
pub fn write_stack_text(out: &mut dyn Write, stack: &PrintedStack, indent: &str) -> Result<()> {
    if let Some(note) = stack.note {
        writeln!(out, "{indent}({note})")?;
    }
    for f in &stack.frames {
        writeln!(out, "{indent}{}", render::frame_text(f))?;
    }
    if stack.omitted > 0 {
        let n = stack.omitted;
        writeln!(
            out,
            "{indent}… {n} more frame{}",
            if n == 1 { "" } else { "s" }
        )?;
    }
    Ok(())
}

/// Writes a ranked table: the header, then each row with its stack's lines under it (indented to
/// the first column after the rank); rows beyond `stacks` (a total line) come last, with none.
pub fn write_table_with_stacks(
    out: &mut dyn Write,
    table: &render::Table,
    stacks: &[PrintedStack],
) -> Result<()> {
    let lines = table.lines("");
    let indent = " ".repeat(lines[0].find('#').unwrap_or(0) + 3);
    writeln!(out, "{}", lines[0])?;
    for (i, line) in lines[1..].iter().enumerate() {
        writeln!(out, "{line}")?;
        if let Some(stack) = stacks.get(i) {
            write_stack_text(out, stack, &indent)?;
        }
    }
    Ok(())
}
