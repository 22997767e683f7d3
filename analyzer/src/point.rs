//! Points in a trace, as the command line writes them: `TRACE`, `TRACE@LABEL`, `TRACE@LABEL#N`,
//! `TRACE@2.5s` (a time since the start: `ns`, `us`, `ms`, `s`, `min`), `TRACE@peak`, `TRACE@end`;
//! also sizes (`1024`, `10K`, `5MiB`, `1.5M`) for the CI gates. Parsing only: which record a point
//! falls on is decided while the trace replays (`capture.rs`), because only the replay knows the
//! trace's marks, peak and end.

use anyhow::{Result, bail};
use std::fmt;
use std::path::{Path, PathBuf};

/// A moment of a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Point {
    /// After the last record.
    End,
    /// The moment the total of live bytes was highest (its first occurrence).
    Peak,
    /// After every record with a time at or before this one (ns since the trace's start).
    Time(u64),
    /// Right after the `nth` (from 1) mark with this label, in the trace's merged record order.
    Label {
        /// The mark's label.
        label: String,
        /// Which of the marks with this label (1: the first).
        nth: usize,
    },
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Point::End => write!(f, "end"),
            Point::Peak => write!(f, "peak"),
            Point::Time(ns) => write!(f, "{}", time_text(*ns)),
            Point::Label { label, nth: 1 } => write!(f, "{label}"),
            Point::Label { label, nth } => write!(f, "{label}#{nth}"),
        }
    }
}

/// A trace file and a point in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracePoint {
    /// The trace file.
    pub path: PathBuf,
    /// The point (`End` for a bare `TRACE`).
    pub point: Point,
}

impl fmt::Display for TracePoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.path.display(), self.point)
    }
}

/// Parses `TRACE` or `TRACE@POINT`.
///
/// A path may itself contain `@`: an argument that names an existing file is a bare trace, and
/// otherwise the point starts at the first `@` whose left part is an existing file (so labels may
/// contain `@` too). When no left part exists, the split is at the last `@` after the last `/`,
/// and opening the trace reports the missing file.
pub fn parse_trace_point(arg: &str) -> Result<TracePoint> {
    if arg.is_empty() {
        bail!("empty trace argument");
    }
    if Path::new(arg).exists() || !arg.contains('@') {
        return Ok(TracePoint {
            path: arg.into(),
            point: Point::End,
        });
    }
    let split = arg
        .match_indices('@')
        .map(|(i, _)| i)
        .find(|&i| Path::new(&arg[..i]).exists())
        .or_else(|| {
            let file_start = arg.rfind('/').map_or(0, |i| i + 1);
            arg[file_start..].rfind('@').map(|i| file_start + i)
        });
    let Some(i) = split else {
        return Ok(TracePoint {
            path: arg.into(),
            point: Point::End,
        });
    };
    let (path, point) = (&arg[..i], &arg[i + 1..]);
    if path.is_empty() {
        bail!("{arg:?}: no trace file before '@'");
    }
    Ok(TracePoint {
        path: path.into(),
        point: parse_point(point)?,
    })
}

/// Parses what follows `@`: `peak`, `end`, a time (`2.5s`, `1500ms`), `label:NAME` (a label that
/// looks like a keyword or a time), `NAME#N` (the N-th mark named NAME), or a label.
pub fn parse_point(s: &str) -> Result<Point> {
    if s.is_empty() {
        bail!("empty point after '@' (use a mark's label, a time such as 2.5s, peak or end)");
    }
    if let Some(label) = s.strip_prefix("label:") {
        return label_point(label);
    }
    match s {
        "end" => return Ok(Point::End),
        "peak" => return Ok(Point::Peak),
        _ => {}
    }
    if s.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return match parse_time(s) {
            Some(ns) => Ok(Point::Time(ns)),
            None => bail!(
                "{s:?} is not a time: write a number and a unit (ns, us, ms, s, min), such as \
                 2.5s or 1500ms (a label that starts with a digit is written label:{s})"
            ),
        };
    }
    label_point(s)
}

fn label_point(s: &str) -> Result<Point> {
    if let Some((label, n)) = s.rsplit_once('#')
        && let Ok(nth) = n.parse::<usize>()
    {
        if nth == 0 {
            bail!("{s:?}: marks are counted from 1 (#1 is the first)");
        }
        return Ok(Point::Label {
            label: label.to_owned(),
            nth,
        });
    }
    Ok(Point::Label {
        label: s.to_owned(),
        nth: 1,
    })
}

/// Splits `12.5ms` into the number and the unit.
fn number_and_unit(s: &str) -> (&str, &str) {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    (&s[..end], s[end..].trim())
}

/// A non-negative decimal number times `scale`, rounded down; `None` if it is not a number or does
/// not fit.
fn scaled(number: &str, scale: u64) -> Option<u64> {
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return None;
    }
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut value = whole.checked_mul(scale)?;
    // Exact decimal arithmetic on the fraction: 1.5M is 1,572,864 bytes, not a float's guess.
    let mut denom = 1u128;
    let mut num = 0u128;
    for c in frac.chars().take(30) {
        num = num * 10 + u128::from(c.to_digit(10)?);
        denom *= 10;
    }
    value = value.checked_add(u64::try_from(num * u128::from(scale) / denom).ok()?)?;
    Some(value)
}

/// `2.5s`, `1500ms`, `10us` (or `µs`), `250ns`, `1min`, as nanoseconds. A unit is required.
pub fn parse_time(s: &str) -> Option<u64> {
    let (number, unit) = number_and_unit(s);
    let scale = match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "min" => 60_000_000_000,
        _ => return None,
    };
    scaled(number, scale)
}

/// A time as a point writes it: `1500ms` for 1.5 s, the largest unit that keeps it whole.
pub fn time_text(ns: u64) -> String {
    for (scale, unit) in [(1_000_000_000, "s"), (1_000_000, "ms"), (1_000, "us")] {
        if ns != 0 && ns.is_multiple_of(scale) {
            return format!("{}{unit}", ns / scale);
        }
    }
    format!("{ns}ns")
}

/// A size: `1024`, `10K`, `5MiB`, `1.5M`, `2G`, `100B`. Units are binary whatever their spelling
/// (`K`, `KB`, `KiB` are all 1024 bytes), case-insensitive; fractions round down to whole bytes.
pub fn parse_size(s: &str) -> Result<u64> {
    let (number, unit) = number_and_unit(s.trim());
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => bail!("{s:?} is not a size (examples: 1024, 10K, 5MiB, 1.5M; K = KiB = 1024 bytes)"),
    };
    scaled(number, scale).ok_or_else(|| {
        anyhow::anyhow!(
            "{s:?} is not a size (examples: 1024, 10K, 5MiB, 1.5M; K = KiB = 1024 bytes)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(s: &str, nth: usize) -> Point {
        Point::Label {
            label: s.into(),
            nth,
        }
    }

    #[test]
    fn points() {
        assert_eq!(parse_point("end").unwrap(), Point::End);
        assert_eq!(parse_point("peak").unwrap(), Point::Peak);
        assert_eq!(parse_point("2.5s").unwrap(), Point::Time(2_500_000_000));
        assert_eq!(parse_point("1500ms").unwrap(), Point::Time(1_500_000_000));
        assert_eq!(parse_point("0.5ms").unwrap(), Point::Time(500_000));
        assert_eq!(parse_point("10us").unwrap(), Point::Time(10_000));
        assert_eq!(parse_point("7ns").unwrap(), Point::Time(7));
        assert_eq!(parse_point("1min").unwrap(), Point::Time(60_000_000_000));
        assert_eq!(parse_point("before").unwrap(), label("before", 1));
        assert_eq!(parse_point("tick#3").unwrap(), label("tick", 3));
        assert_eq!(parse_point("a#b").unwrap(), label("a#b", 1));
        assert_eq!(parse_point("label:peak").unwrap(), label("peak", 1));
        assert_eq!(parse_point("label:2s").unwrap(), label("2s", 1));
        assert!(parse_point("").is_err());
        assert!(parse_point("12").is_err());
        assert!(parse_point("1.2.3s").is_err());
        assert!(parse_point("5 parsecs").is_err());
        assert!(parse_point("x#0").is_err());
    }

    #[test]
    fn point_text_round_trips() {
        for s in [
            "end", "peak", "1500ms", "2s", "7ns", "10us", "before", "tick#3",
        ] {
            assert_eq!(parse_point(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn trace_points() {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("odd@name.bin");
        std::fs::write(&at, b"x").unwrap();
        let at = at.to_str().unwrap();
        assert_eq!(
            parse_trace_point(at).unwrap(),
            TracePoint {
                path: at.into(),
                point: Point::End
            }
        );
        assert_eq!(
            parse_trace_point(&format!("{at}@before")).unwrap().point,
            label("before", 1)
        );
        assert_eq!(
            parse_trace_point(&format!("{at}@me@home")).unwrap().point,
            label("me@home", 1)
        );
        let missing = parse_trace_point("/nowhere/t.bin@peak").unwrap();
        assert_eq!(missing.path, PathBuf::from("/nowhere/t.bin"));
        assert_eq!(missing.point, Point::Peak);
        assert_eq!(
            parse_trace_point("t.bin").unwrap().point,
            Point::End,
            "a bare trace is @end"
        );
        assert!(parse_trace_point("@end").is_err());
        assert!(parse_trace_point("").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("100B").unwrap(), 100);
        assert_eq!(parse_size("10K").unwrap(), 10 * 1024);
        assert_eq!(parse_size("10kb").unwrap(), 10 * 1024);
        assert_eq!(parse_size("5MiB").unwrap(), 5 << 20);
        assert_eq!(parse_size("1.5M").unwrap(), 1_572_864);
        assert_eq!(parse_size("0.5k").unwrap(), 512);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        for bad in ["", "K", "-1", "1.5.5K", "10X", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
