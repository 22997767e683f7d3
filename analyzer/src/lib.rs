//! `memtrace-analyze`: reads a trace written by `libmemtrace.so` and reports on it, offline.
//!
//! The pipeline is `replay` → `symbols` → `report`: the trace's records stream once, in the reader's
//! merged time order, through a [`replay::Replayer`] that keeps the live heap and the counters and
//! feeds observers (per-stack statistics, stack and module definitions, [`capture`]'s snapshots at
//! the [`point`]s asked for); then only the stacks a report prints (or, for `diff`, matches by
//! [`key`]) are symbolized, Python frames named from their code records with lines from
//! [`python_lines`], and cut to the `--frames` [`view`]; then [`render`] writes text or JSON. In a
//! sampled trace every block counts as the allocations it stands for ([`sampling`]), so each report
//! prints estimates of the whole run.
//!
//! Rules this crate keeps:
//! - Memory grows with the live set and the number of distinct stacks, modules and Python code
//!   objects, never with the length of the trace.
//! - Problems inside a trace are warnings (`warning: …` on stderr) and the report still prints;
//!   input that is not a readable trace is an error: one `error: …` line, exit status 2.
//! - Exit status: 0 success, 1 a requested check failed, 2 error. A closed stdout (`| head`) is a
//!   success.
//! - No `unsafe` (the live heap's prefetch hint and huge-page memory come from crates with safe
//!   calls: `prefetch-index`, `memmap2`, `bytemuck`); output is deterministic.
//!
//! [`run`] is the whole program minus process plumbing, so tests drive it in-process.
#![forbid(unsafe_code)]

pub mod capture;
pub mod cli;
pub mod heap;
pub mod inherit;
pub mod key;
pub mod point;
pub mod python_lines;
pub mod render;
pub mod replay;
pub mod report;
pub mod sampling;
pub mod symbols;
pub mod view;

use clap::Parser;
use std::ffi::OsString;
use std::io::Write;

/// How the program ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    /// Status 0: the report was written.
    Success,
    /// Status 1: the run worked but a requested check failed (`leaks --fail-on-leak`,
    /// `diff --fail-on-growth`, `growth --fail-above`).
    CheckFailed,
    /// Status 2: an error (bad input, bad usage).
    Error,
}

impl ExitCode {
    /// The process exit status.
    pub fn code(self) -> u8 {
        match self {
            ExitCode::Success => 0,
            ExitCode::CheckFailed => 1,
            ExitCode::Error => 2,
        }
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(c: ExitCode) -> Self {
        std::process::ExitCode::from(c.code())
    }
}

/// Parses `args` (program name first) and runs the subcommand, writing the report to `out` and
/// warnings to `err`. Errors are returned, not printed: see [`main_with`].
pub fn run<I, T>(args: I, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                write!(out, "{}", e.render())?;
                out.flush()?;
                return Ok(ExitCode::Success);
            }
            _ => return Err(e.into()),
        },
    };
    let code = match &cli.command {
        cli::Command::Summary(a) => report::summary::run(a, out, err)?,
        cli::Command::Top(a) => report::top::run(a, out, err)?,
        cli::Command::Leaks(a) => report::leaks::run(a, out, err)?,
        cli::Command::Snapshot(a) => report::snapshot::run(a, out, err)?,
        cli::Command::Diff(a) => report::diff::run(a, out, err)?,
        cli::Command::Growth(a) => report::growth::run(a, out, err)?,
        cli::Command::Dump(a) => report::dump::run(a, out, err)?,
    };
    out.flush()?;
    Ok(code)
}

/// [`run`], with errors printed the program's way: a usage error as clap renders it, any other error
/// as one `error: …` line; a closed output pipe ends quietly with success.
pub fn main_with<I, T>(args: I, out: &mut dyn Write, err: &mut dyn Write) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    match run(args, out, err) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::Success,
        Err(e) => {
            if let Some(usage) = e.downcast_ref::<clap::Error>() {
                let _ = write!(err, "{}", usage.render());
            } else {
                let msg = format!("{e:#}").replace('\n', " ");
                let _ = writeln!(err, "error: {msg}");
            }
            let _ = err.flush();
            ExitCode::Error
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
