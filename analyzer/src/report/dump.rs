//! `dump`: the trace as text, one line per record in merged time order, after a header line (like
//! `memray parse`). For debugging the preload and for golden tests, so the line format is stable:
//! `<kind> key=value …`, addresses in hex, strings quoted Rust-style.

use crate::cli::DumpArgs;
use crate::render::hex;
use crate::symbols::hex_bytes;
use crate::{ExitCode, report};
use anyhow::Result;
use memtrace_format::{Header, Record, ThreadRecord, Trace};
use std::io::Write;

/// Runs `dump`.
pub fn run(args: &DumpArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<ExitCode> {
    let trace = report::open(&args.trace.trace, err)?;
    write_dump(&trace, out, err)?;
    Ok(ExitCode::Success)
}

/// Writes the header line and every record of `trace`, then the stream's warnings to `err`.
pub fn write_dump(trace: &Trace, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    writeln!(out, "{}", header_line(trace.version(), trace.header()))?;
    for t in trace.threads() {
        writeln!(out, "thread index={} tid={}", t.thread, t.tid)?;
    }
    let mut records = trace.records();
    for r in records.by_ref() {
        writeln!(out, "{}", record_line(&r))?;
    }
    report::warn(err, &records.take_warnings());
    Ok(())
}

/// The header as one line.
pub fn header_line(version: u32, h: &Header) -> String {
    format!(
        "header version={} pid={} ppid={} executable={:?} cmdline={:?} start_unix_ns={} parent_trace={} tool_version={:?}",
        version,
        h.pid,
        h.ppid,
        h.executable,
        h.cmdline,
        h.start_unix_ns,
        h.parent_trace
            .as_ref()
            .map_or_else(|| "none".to_owned(), |p| format!("{p:?}")),
        h.tool_version,
    ) + &h
        .sample_bytes
        .map_or_else(String::new, |n| format!(" sample_bytes={n}"))
}

/// One record as one line.
pub fn record_line(r: &ThreadRecord) -> String {
    let thread = r.thread;
    match &r.record {
        Record::Alloc {
            time,
            kind,
            stack,
            size,
            addr,
        } => format!(
            "alloc t={time} thread={thread} kind={} stack={stack} size={size} addr={}",
            kind.name(),
            hex(*addr)
        ),
        Record::Realloc {
            time,
            stack,
            size,
            old,
            new,
        } => format!(
            "realloc t={time} thread={thread} stack={stack} size={size} old={} new={}",
            hex(*old),
            hex(*new)
        ),
        Record::Free { time, addr } => format!("free t={time} thread={thread} addr={}", hex(*addr)),
        Record::Stack { id, frames } => {
            let frames: Vec<String> = frames
                .iter()
                .map(|f| match f.as_python() {
                    Some(py) => format!("py:{}@{}", py.code, py.instruction),
                    None => format!("{}:{}", f.module, hex(f.offset)),
                })
                .collect();
            format!(
                "stack thread={thread} id={id} frames=[{}]",
                frames.join(" ")
            )
        }
        Record::Module(m) => {
            let segments: Vec<String> = m
                .segments
                .iter()
                .map(|s| {
                    let flags: String = [(4, 'r'), (2, 'w'), (1, 'x')]
                        .iter()
                        .map(|&(bit, c)| if s.flags & bit != 0 { c } else { '-' })
                        .collect();
                    format!("{}+{}:{flags}", hex(s.vaddr), hex(s.memsz))
                })
                .collect();
            format!(
                "module thread={thread} id={} path={:?} bias={} build_id={} segments=[{}]",
                m.id,
                m.path,
                hex(m.bias),
                if m.build_id.is_empty() {
                    "none".to_owned()
                } else {
                    hex_bytes(&m.build_id)
                },
                segments.join(" ")
            )
        }
        Record::PyCode(c) => format!(
            "py_code thread={thread} id={} name={:?} qualname={:?} file={:?} first_line={} line_table={}:{}",
            c.id,
            c.name,
            c.qualname,
            c.filename,
            c.first_line,
            c.line_table_kind,
            hex_bytes(&c.line_table)
        ),
        Record::ModuleUnload { time, id } => {
            format!("module_unload t={time} thread={thread} id={id}")
        }
        Record::Mark { time, label } => format!("mark t={time} thread={thread} label={label:?}"),
        Record::ThreadName { name } => format!("thread_name thread={thread} name={name:?}"),
        Record::End { time } => format!("end t={time} thread={thread}"),
    }
}
