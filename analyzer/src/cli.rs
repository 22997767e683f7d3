//! The command line of `memtrace-analyze`: clap derive types only. Parsing and help text live here;
//! what each subcommand does lives in `report/<name>.rs`.

use crate::key::GroupBy;
use crate::render::Format;
use crate::view::FrameView;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const EXAMPLES: &str = "\
EXAMPLES:
    memtrace-analyze summary app.trace
    memtrace-analyze top app.trace --by peak -n 5
    memtrace-analyze top app.trace --by temporary --format json
    memtrace-analyze top py.trace --group-by line --frames python
    memtrace-analyze leaks app.trace --fail-on-leak
    memtrace-analyze snapshot app.trace@before
    memtrace-analyze diff app.trace@before app.trace@after
    memtrace-analyze diff old.trace new.trace --fail-on-growth 1M
    memtrace-analyze growth app.trace --points 20
    memtrace-analyze dump app.trace | head

POINTS:
    TRACE@LABEL (a mark; LABEL#N its N-th), TRACE@2.5s or @1500ms (time since start),
    TRACE@peak, TRACE@end; a bare TRACE is TRACE@end

EXIT STATUS:
    0 success, 1 a requested check failed (leaks --fail-on-leak, diff --fail-on-growth,
    growth --fail-above), 2 error";

/// Reports on a memtrace heap trace.
#[derive(Debug, Parser)]
#[command(name = "memtrace-analyze", version, after_help = EXAMPLES)]
pub struct Cli {
    /// What to report.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Totals: allocation and free calls, bytes, peak, leaks, temporary allocations, duration.
    Summary(SummaryArgs),
    /// Stacks ranked by a measure (allocated bytes or calls, share of the peak, leaked, temporary).
    Top(TopArgs),
    /// Blocks still live when the trace ends, grouped by the stack that allocated them.
    Leaks(LeaksArgs),
    /// The live heap at a point of a trace (a mark, a time, the peak, the end), by stack.
    Snapshot(SnapshotArgs),
    /// What changed between two points, of one trace or of two runs, stacks matched by symbols.
    Diff(DiffArgs),
    /// Stacks whose live bytes kept rising over the run: the leak suspects.
    Growth(GrowthArgs),
    /// Every record, one line each, in merged time order (for debugging and golden tests).
    Dump(DumpArgs),
}

/// The trace to read.
#[derive(Debug, Args)]
pub struct TraceArg {
    /// Trace file written by libmemtrace.so.
    #[arg(value_name = "TRACE")]
    pub trace: PathBuf,
}

/// How stacks are symbolized.
#[derive(Debug, Args)]
pub struct SymbolArgs {
    /// Do not read module files: print frames as module+offset only.
    #[arg(long)]
    pub no_symbols: bool,
    /// Directory searched for separate debug files (`.build-id/xx/rest.debug`, debuglink); may be
    /// repeated; replaces the default /usr/lib/debug.
    #[arg(long, value_name = "DIR")]
    pub debug_dir: Vec<PathBuf>,
    /// Frames printed per stack, inlined frames included (0: all) [default: 12 for text, all for
    /// JSON].
    #[arg(long, value_name = "N")]
    pub depth: Option<usize>,
    /// Which frames of a Python program's stacks to show: Python frames in place of the
    /// interpreter's evaluation frames, Python frames only, or native frames only.
    #[arg(long, value_enum, value_name = "VIEW", default_value_t = FrameView::Merged)]
    pub frames: FrameView,
}

/// `summary` options.
#[derive(Debug, Args)]
pub struct SummaryArgs {
    #[command(flatten)]
    pub trace: TraceArg,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// What `top` ranks stacks by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Measure {
    /// Bytes allocated over the whole run.
    #[default]
    Bytes,
    /// Allocation calls over the whole run.
    Count,
    /// Bytes live at the moment of the global peak.
    Peak,
    /// Bytes live at the end of the trace.
    Leaked,
    /// Temporary allocations, as heaptrack counts them (freed before any other allocation).
    Temporary,
}

impl Measure {
    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Measure::Bytes => "bytes",
            Measure::Count => "count",
            Measure::Peak => "peak",
            Measure::Leaked => "leaked",
            Measure::Temporary => "temporary",
        }
    }
}

/// `top` options.
#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub trace: TraceArg,
    /// Measure to rank stacks by.
    #[arg(long, value_enum, default_value_t = Measure::Bytes)]
    pub by: Measure,
    /// Number of stacks to show (0: all).
    #[arg(short = 'n', long = "limit", value_name = "N", default_value_t = 10)]
    pub limit: usize,
    /// One entry per stack, or per innermost function or source line (a Python program's
    /// innermost Python function or line, like tracemalloc's lineno statistics), stacks merged.
    #[arg(long, value_enum, default_value_t = GroupBy::Stack)]
    pub group_by: GroupBy,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub symbols: SymbolArgs,
}

/// `leaks` options.
#[derive(Debug, Args)]
pub struct LeaksArgs {
    #[command(flatten)]
    pub trace: TraceArg,
    /// Number of stacks to show (0: all) [default: 10 for text, all for JSON].
    #[arg(short = 'n', long = "limit", value_name = "N")]
    pub limit: Option<usize>,
    /// Exit with status 1 if any block is still live at the end of the trace.
    #[arg(long)]
    pub fail_on_leak: bool,
    /// One entry per stack, or per innermost function or source line (a Python program's
    /// innermost Python function or line, like tracemalloc's lineno statistics), stacks merged.
    #[arg(long, value_enum, default_value_t = GroupBy::Stack)]
    pub group_by: GroupBy,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub symbols: SymbolArgs,
}

/// `dump` options.
#[derive(Debug, Args)]
pub struct DumpArgs {
    #[command(flatten)]
    pub trace: TraceArg,
}

/// `snapshot` options.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The point: TRACE@LABEL, TRACE@LABEL#N, TRACE@2.5s, TRACE@peak, TRACE@end or TRACE (the end).
    #[arg(value_name = "TRACE[@POINT]")]
    pub point: String,
    /// Number of stacks to show (0: all) [default: 10 for text, all for JSON].
    #[arg(short = 'n', long = "limit", value_name = "N")]
    pub limit: Option<usize>,
    /// One entry per stack, or per innermost function or source line (a Python program's
    /// innermost Python function or line, like tracemalloc's lineno statistics), stacks merged.
    #[arg(long, value_enum, default_value_t = GroupBy::Stack)]
    pub group_by: GroupBy,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub symbols: SymbolArgs,
}

/// `diff` options.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The earlier point: TRACE or TRACE@POINT.
    #[arg(value_name = "BEFORE")]
    pub before: String,
    /// The later point: TRACE or TRACE@POINT (the same trace or another run).
    #[arg(value_name = "AFTER")]
    pub after: String,
    /// What makes two stacks the same: the whole stack (function and module of each frame,
    /// file:line breaking ties), the innermost (Python) function, or the innermost (Python) source
    /// line.
    #[arg(long, value_enum, default_value_t = GroupBy::Stack)]
    pub group_by: GroupBy,
    /// Number of entries to show (0: all) [default: 10 for text, all for JSON].
    #[arg(short = 'n', long = "limit", value_name = "N")]
    pub limit: Option<usize>,
    /// Exit with status 1 if the live heap grew by more than SIZE (1024, 10K, 5MiB, 1.5M).
    #[arg(long, value_name = "SIZE")]
    pub fail_on_growth: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub symbols: SymbolArgs,
}

/// `growth` options.
#[derive(Debug, Args)]
pub struct GrowthArgs {
    #[command(flatten)]
    pub trace: TraceArg,
    /// Split the run into N equal intervals and look at the heap at the end of each.
    #[arg(long, value_name = "N", default_value_t = 10, conflicts_with = "marks")]
    pub points: usize,
    /// Look at the heap right after each mark instead (memtrace_snapshot, signal marks).
    #[arg(long)]
    pub marks: bool,
    /// Number of stacks to show (0: all) [default: 10 for text, all for JSON].
    #[arg(short = 'n', long = "limit", value_name = "N")]
    pub limit: Option<usize>,
    /// Exit with status 1 if a rising stack grew by more than SIZE from the first point to the
    /// last (1024, 10K, 5MiB, 1.5M).
    #[arg(long, value_name = "SIZE")]
    pub fail_above: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub symbols: SymbolArgs,
}
