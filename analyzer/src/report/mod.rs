//! The subcommands, one file each, and what they share: opening a trace (index warnings included),
//! the full single-pass analysis behind `top` and `leaks`, turning stack ids into printable,
//! symbolized frames, and the stack-table layout of the text reports.

pub mod diff;
pub mod dump;
pub mod growth;
pub mod leaks;
pub mod snapshot;
pub mod summary;
pub mod top;

use crate::cli::SymbolArgs;
use crate::heap::StackTable;
use crate::render::{self, Format};
use crate::replay::{Definitions, Replayer, Totals};
use crate::symbols::{ResolvedFrame, SymbolOptions, Symbolizer};
use anyhow::Result;
use memtrace_format::Trace;
use serde::Serialize;
use std::io::Write;
use std::path::Path;

/// Opens the trace at `path` and prints the reader's index-time warnings.
pub fn open(path: &Path, err: &mut dyn Write) -> Result<Trace> {
    // The reader's messages already name the file; no context to add.
    let trace = Trace::open(path)?;
    warn(err, trace.warnings());
    Ok(trace)
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
    let mut replayer = Replayer::new();
    replayer.inherit(crate::inherit::inherited_blocks(trace, path));
    replayer
}

/// Replays `trace` (read from `path`) once with per-stack statistics and definitions.
pub fn analyze(trace: &Trace, path: &Path) -> Analysis {
    let mut replayer = new_replayer(trace, path);
    let mut obs = (StackTable::default(), Definitions::default());
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
/// bytes and count the report ranks by), the report's own fields (`extra`), then the stack.
#[derive(Serialize)]
pub struct EntryJson<'a, X: Serialize> {
    /// From 1.
    pub rank: usize,
    /// The stack's id in the trace.
    pub stack_id: u32,
    /// The report's bytes (its measure).
    pub bytes: u64,
    /// The report's count (blocks or calls).
    pub count: u64,
    /// The report's own fields.
    #[serde(flatten)]
    pub extra: X,
    /// The stack.
    #[serde(flatten)]
    pub stack: StackJson<'a>,
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

/// Resolves the stacks a report prints.
pub struct StackPrinter<'a> {
    defs: &'a Definitions,
    symbolizer: Symbolizer<'a>,
    depth: usize,
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
            symbolizer: Symbolizer::new(&defs.modules, options),
            depth,
        }
    }

    /// Every frame of stack `id`, innermost first, inlined frames expanded, never cut (empty for
    /// stack 0 or an undefined id): what symbolic keys are made of.
    pub fn resolve(&mut self, id: u32) -> Vec<ResolvedFrame> {
        match self.defs.stacks.get(&id) {
            Some(frames) if id != 0 => self.symbolizer.resolve_stack(frames),
            _ => Vec::new(),
        }
    }

    /// [`StackPrinter::stack`] with at most `frames` frames (0: the printer's depth).
    pub fn stack_cut(&mut self, id: u32, frames: usize) -> PrintedStack {
        let mut s = self.stack(id);
        if frames > 0 && s.frames.len() > frames {
            s.omitted += s.frames.len() - frames;
            s.frames.truncate(frames);
        }
        s
    }

    /// The printable form of stack `id`.
    pub fn stack(&mut self, id: u32) -> PrintedStack {
        if id == 0 {
            return PrintedStack {
                frames: Vec::new(),
                omitted: 0,
                note: Some("no stack captured"),
            };
        }
        let Some(frames) = self.defs.stacks.get(&id) else {
            return PrintedStack {
                frames: Vec::new(),
                omitted: 0,
                note: Some("stack not defined in the trace"),
            };
        };
        let mut frames = self.symbolizer.resolve_stack(frames);
        let omitted = frames.len().saturating_sub(self.depth);
        frames.truncate(self.depth);
        PrintedStack {
            frames,
            omitted,
            note: None,
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
    let stacks = ids.into_iter().map(|id| printer.stack(id)).collect();
    let warnings = printer.take_warnings();
    warn(err, &warnings);
    (stacks, warnings)
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
