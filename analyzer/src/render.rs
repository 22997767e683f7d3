//! Output helpers shared by the reports: human-readable numbers (sizes, counts, durations), aligned
//! text tables, the compact text form of a stack frame, and the JSON form of frames and documents.
//!
//! Everything here is deterministic (no wall-clock time, no hash-map order) so output can be compared
//! in tests. Nothing here computes statistics.

use crate::symbols::ResolvedFrame;
use serde::Serialize;
use std::io::Write;

/// Output format of a report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned text for a terminal.
    #[default]
    Text,
    /// One JSON document (the stable contract for scripts).
    Json,
}

/// `1023 B`, `1.5 KiB`, `12.0 MiB`, `3.2 GiB`, `1.0 TiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `1 block`, `1,000 blocks`: a count and a noun, plural when the count is not one.
pub fn counted(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{} {noun}s", count(n))
    }
}

/// `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `850 ns`, `12.5 µs`, `3.2 ms`, `1.234 s`, `2m 05.1s`.
pub fn duration(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{:.1} µs", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} ms", ns as f64 / 1e6),
        1_000_000_000..60_000_000_000 => format!("{:.3} s", ns as f64 / 1e9),
        _ => {
            let s = ns as f64 / 1e9;
            let m = (s / 60.0).floor();
            format!("{m:.0}m {:04.1}s", s - m * 60.0)
        }
    }
}

/// A change in bytes: `+1.5 KiB`, `-300 B`, `0 B`.
pub fn signed_bytes(delta: i64) -> String {
    match delta {
        0 => "0 B".into(),
        d if d > 0 => format!("+{}", bytes(d.unsigned_abs())),
        d => format!("-{}", bytes(d.unsigned_abs())),
    }
}

/// A change in a count: `+1,000`, `-3`, `0`.
pub fn signed_count(delta: i64) -> String {
    match delta {
        0 => "0".into(),
        d if d > 0 => format!("+{}", count(d.unsigned_abs())),
        d => format!("-{}", count(d.unsigned_abs())),
    }
}

/// `after - before`, saturated to `i64`.
pub fn delta(before: u64, after: u64) -> i64 {
    let d = i128::from(after) - i128::from(before);
    d.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// `0x1f`.
pub fn hex(n: u64) -> String {
    format!("{n:#x}")
}

/// `part` of `whole` as `12.5%`.
pub fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "0.0%".into();
    }
    format!("{:.1}%", part as f64 * 100.0 / whole as f64)
}

/// The last component of a path: `libc.so.6` for `/usr/lib/x86_64-linux-gnu/libc.so.6`.
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// One frame in a line: `function at file:line (module)`, with what is missing left out, and the
/// module offset where there is no line to go by; a Python frame is `qualname at file:line [py]`.
pub fn frame_text(f: &ResolvedFrame) -> String {
    if f.is_python() {
        let mut s = f.function.clone().unwrap_or_else(|| "?".to_owned());
        if let Some(file) = &f.file {
            s.push_str(" at ");
            s.push_str(file);
            if let Some(line) = f.line {
                s.push_str(&format!(":{line}"));
            }
        }
        s.push_str(" [py]");
        return s;
    }
    let module = f.module.as_deref().map(basename);
    let mut s = match (&f.function, &f.file) {
        (Some(func), Some(file)) => match f.line {
            Some(line) => format!("{func} at {file}:{line}"),
            None => format!("{func} at {file}"),
        },
        (Some(func), None) => func.clone(),
        (None, Some(file)) => format!("{} at {file}:{}", hex(f.address), f.line.unwrap_or(0)),
        (None, None) => hex(f.address),
    };
    match (module, f.file.is_some()) {
        (Some(m), true) => s.push_str(&format!(" ({m})")),
        (Some(m), false) => s.push_str(&format!(" ({m}+{})", hex(f.offset))),
        (None, _) => s.push_str(" (unknown module)"),
    }
    if f.inlined {
        s.push_str(" [inlined]");
    }
    s
}

/// A frame in the JSON contract.
#[derive(Serialize)]
pub struct FrameJson<'a> {
    /// Demangled function, or null.
    pub function: Option<&'a str>,
    /// Source file, or null.
    pub file: Option<&'a str>,
    /// Source line, or null.
    pub line: Option<u32>,
    /// Module path, or null.
    pub module: Option<&'a str>,
    /// Return address in the traced process, `0x…`.
    pub address: String,
    /// Return address as a file address of the module, `0x…`.
    pub offset: String,
    /// Whether this function was inlined into the next frame.
    pub inlined: bool,
    /// `"native"` (a return address) or `"python"` (a Python frame: `function` is its qualified
    /// name, `file` its `co_filename`, `module` null, `address` and `offset` the instruction's byte
    /// offset in its code object).
    pub kind: &'static str,
}

impl<'a> From<&'a ResolvedFrame> for FrameJson<'a> {
    fn from(f: &'a ResolvedFrame) -> Self {
        FrameJson {
            function: f.function.as_deref(),
            file: f.file.as_deref(),
            line: f.line,
            module: f.module.as_deref(),
            address: hex(f.address),
            offset: hex(f.offset),
            inlined: f.inlined,
            kind: f.kind.name(),
        }
    }
}

/// Frames in the JSON contract.
pub fn frames_json(frames: &[ResolvedFrame]) -> Vec<FrameJson<'_>> {
    frames.iter().map(FrameJson::from).collect()
}

/// Writes `value` as pretty JSON and a newline.
pub fn write_json(out: &mut dyn Write, value: &impl Serialize) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

/// Column alignment.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Pad on the right.
    Left,
    /// Pad on the left (numbers).
    Right,
}

/// A text table whose columns are as wide as their widest cell, two spaces apart.
pub struct Table {
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers and alignments.
    pub fn new(columns: &[(&str, Align)]) -> Table {
        Table {
            align: columns.iter().map(|c| c.1).collect(),
            rows: vec![columns.iter().map(|c| c.0.to_owned()).collect()],
        }
    }

    /// Adds a row (one cell per column).
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.align.len());
        self.rows.push(cells);
    }

    /// The header and every row as lines, with no trailing spaces; row `i` (from 0, header excluded)
    /// is `lines[i + 1]`.
    pub fn lines(&self, indent: &str) -> Vec<String> {
        let mut width = vec![0usize; self.align.len()];
        for r in &self.rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        self.rows
            .iter()
            .map(|r| {
                let mut line = String::from(indent);
                for (i, (c, w)) in r.iter().zip(&width).enumerate() {
                    if i > 0 {
                        line.push_str("  ");
                    }
                    let pad = w - c.chars().count();
                    match self.align[i] {
                        Align::Left => {
                            line.push_str(c);
                            line.extend(std::iter::repeat_n(' ', pad));
                        }
                        Align::Right => {
                            line.extend(std::iter::repeat_n(' ', pad));
                            line.push_str(c);
                        }
                    }
                }
                line.truncate(line.trim_end().len());
                line
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbols::FrameKind;

    #[test]
    fn human_numbers() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(counted(1, "block"), "1 block");
        assert_eq!(counted(1000, "block"), "1,000 blocks");
        assert_eq!(duration(999), "999 ns");
        assert_eq!(duration(1_500), "1.5 µs");
        assert_eq!(duration(2_500_000), "2.5 ms");
        assert_eq!(duration(1_234_000_000), "1.234 s");
        assert_eq!(duration(125_100_000_000), "2m 05.1s");
        assert_eq!(percent(1, 8), "12.5%");
        assert_eq!(signed_bytes(0), "0 B");
        assert_eq!(signed_bytes(1536), "+1.5 KiB");
        assert_eq!(signed_bytes(-300), "-300 B");
        assert_eq!(signed_count(-1000), "-1,000");
        assert_eq!(signed_count(7), "+7");
        assert_eq!(delta(10, 4), -6);
        assert_eq!(delta(0, u64::MAX), i64::MAX);
        assert_eq!(basename("/a/b/libc.so.6"), "libc.so.6");
    }

    #[test]
    fn table_aligns() {
        let mut t = Table::new(&[
            ("#", Align::Right),
            ("name", Align::Left),
            ("n", Align::Right),
        ]);
        t.row(vec!["1".into(), "ab".into(), "1,000".into()]);
        t.row(vec!["10".into(), "abcdef".into(), "5".into()]);
        assert_eq!(
            t.lines(" "),
            vec![
                "  #  name        n",
                "  1  ab      1,000",
                " 10  abcdef      5"
            ]
        );
    }

    #[test]
    fn frame_text_forms() {
        let mut f = ResolvedFrame {
            function: Some("foo".into()),
            file: Some("x.c".into()),
            line: Some(3),
            module: Some("/bin/prog".into()),
            address: 0x1234,
            offset: 0x234,
            inlined: false,
            kind: FrameKind::Native,
        };
        assert_eq!(frame_text(&f), "foo at x.c:3 (prog)");
        f.inlined = true;
        assert_eq!(frame_text(&f), "foo at x.c:3 (prog) [inlined]");
        f.inlined = false;
        f.file = None;
        assert_eq!(frame_text(&f), "foo (prog+0x234)");
        f.function = None;
        assert_eq!(frame_text(&f), "0x1234 (prog+0x234)");
        f.module = None;
        assert_eq!(frame_text(&f), "0x1234 (unknown module)");
        let py = ResolvedFrame {
            function: Some("Loader.load".into()),
            file: Some("app/loader.py".into()),
            line: Some(42),
            module: None,
            address: 0x1c,
            offset: 0x1c,
            inlined: false,
            kind: FrameKind::Python,
        };
        assert_eq!(frame_text(&py), "Loader.load at app/loader.py:42 [py]");
        let unknown = ResolvedFrame {
            function: Some("<unknown python code 7>".into()),
            file: None,
            line: None,
            ..py
        };
        assert_eq!(frame_text(&unknown), "<unknown python code 7> [py]");
    }
}
