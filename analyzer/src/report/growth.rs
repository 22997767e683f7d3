//! `growth TRACE [--points N | --marks]`: the leak suspects of a long run. The live heap is looked
//! at, per stack, at N evenly spaced times (the end of each of N equal intervals) or right after each
//! mark, all in one pass; stacks whose live bytes kept rising rank first.
//!
//! For each stack's series of live bytes `x` at times `t`:
//! - *steadiness* is Kendall's tau of `x` against `t` (the Mann-Kendall trend statistic): over all
//!   pairs of points, (pairs that rose − pairs that fell) / pairs. 1 when it rose at every point,
//!   about 0 for churn around a level, low for a cache filled once;
//! - *slope* is the Theil-Sen estimate, the median of the pairs' slopes, in bytes per second: a
//!   one-off jump moves few pairs, so it barely moves the median;
//! - *rose* is the share of intervals (from one point to the next) in which they rose: a one-off
//!   jump rises in one;
//! - the rank is by `slope × steadiness² × rose` (stacks with a positive slope and steadiness
//!   only), so that a steady riser outranks a much bigger one-off or noisy one.
//!
//! With `--fail-above SIZE` it is a check: exit status 1 when a ranked stack grew by more than SIZE
//! from the first point to the last.

use crate::ExitCode;
use crate::capture::{self, Request, Snapshot, describe_marks};
use crate::cli::GrowthArgs;
use crate::point::{Point, parse_size};
use crate::render::{self, Align, Format, Table};
use crate::report::{self, EntryJson, PrintedStack, SampledJson};
use anyhow::{Result, bail};
use rustc_hash::FxHashMap;
use serde::Serialize;
use std::io::Write;

/// More points than this cost too much (every pair of points is compared, per stack): `--marks`
/// with more marks uses this many, evenly chosen.
pub const MAX_POINTS: usize = 1000;

/// How one series of live bytes moves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Trend {
    /// Theil-Sen slope: the median slope over all pairs of points, bytes per second.
    pub slope: f64,
    /// Kendall's tau of bytes against time, from -1 (fell at every point) to 1 (rose at every point).
    pub steadiness: f64,
    /// Share of the intervals between consecutive points in which the bytes rose (0 to 1).
    pub rose: f64,
    /// `slope × steadiness² × rose` when slope and steadiness are positive, else 0: the rank.
    pub score: f64,
}

/// The trend of `bytes[i]` at `times[i]` (ns, non-decreasing).
pub fn trend(times: &[u64], bytes: &[u64]) -> Trend {
    let n = times.len().min(bytes.len());
    let mut slopes = Vec::with_capacity(n * n.saturating_sub(1) / 2);
    let mut s: i64 = 0;
    for i in 0..n {
        for j in i + 1..n {
            s += match bytes[j].cmp(&bytes[i]) {
                std::cmp::Ordering::Greater => 1,
                std::cmp::Ordering::Less => -1,
                std::cmp::Ordering::Equal => 0,
            };
            if times[j] > times[i] {
                let dx = bytes[j] as f64 - bytes[i] as f64;
                let dt = (times[j] - times[i]) as f64 / 1e9;
                slopes.push(dx / dt);
            }
        }
    }
    let pairs = (n * n.saturating_sub(1) / 2) as f64;
    let steadiness = if pairs > 0.0 { s as f64 / pairs } else { 0.0 };
    let slope = if slopes.is_empty() {
        0.0
    } else {
        slopes.sort_by(f64::total_cmp);
        let m = slopes.len() / 2;
        if slopes.len() % 2 == 1 {
            slopes[m]
        } else {
            (slopes[m - 1] + slopes[m]) / 2.0
        }
    };
    let rose = if n > 1 {
        bytes[..n].windows(2).filter(|w| w[1] > w[0]).count() as f64 / (n - 1) as f64
    } else {
        0.0
    };
    let score = if slope > 0.0 && steadiness > 0.0 {
        slope * steadiness * steadiness * rose
    } else {
        0.0
    };
    Trend {
        slope,
        steadiness,
        rose,
        score,
    }
}

/// One ranked stack.
struct Ranked {
    stack: u32,
    /// Live bytes and blocks at each point.
    series: Vec<(u64, u64)>,
    trend: Trend,
}

impl Ranked {
    fn last(&self) -> (u64, u64) {
        self.series.last().copied().unwrap_or_default()
    }
    fn growth(&self) -> (i64, i64) {
        let first = self.series.first().copied().unwrap_or_default();
        let last = self.last();
        (
            render::delta(first.0, last.0),
            render::delta(first.1, last.1),
        )
    }
}

/// `MAX_POINTS` of `snaps`, evenly chosen, the first and the last included.
fn thin(snaps: Vec<Snapshot>) -> Vec<Snapshot> {
    let n = snaps.len();
    let keep: Vec<usize> = (0..MAX_POINTS)
        .map(|i| i * (n - 1) / (MAX_POINTS - 1))
        .collect();
    snaps
        .into_iter()
        .enumerate()
        .filter(|(i, _)| keep.binary_search(i).is_ok())
        .map(|(_, s)| s)
        .collect()
}

/// Runs `growth`.
pub fn run(args: &GrowthArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<ExitCode> {
    let limit = args.fail_above.as_deref().map(parse_size).transpose()?;
    if !args.marks && !(2..=MAX_POINTS).contains(&args.points) {
        bail!(
            "--points must be from 2 to {MAX_POINTS}, not {}",
            args.points
        );
    }
    let path = &args.trace.trace;
    let name = path.display().to_string();
    let trace = report::open(path, err)?;
    let mut req = Request::default();
    if args.marks {
        req.every_mark = true;
    } else {
        let last = trace.last_time();
        if last == 0 {
            bail!("{name} has no timed records: there is no run to split into points");
        }
        let n = args.points as u128;
        req.points = (1..=n)
            .map(|i| Point::Time((u128::from(last) * i / n) as u64))
            .collect();
    }
    let captured = capture::capture(&trace, &name, &req)?;
    let mut warnings = captured.warnings.clone();
    let snaps = if args.marks {
        if captured.marks.len() < 2 {
            bail!(
                "{name} has {}; growth --marks needs at least 2 ({})",
                render::counted(captured.marks.len() as u64, "mark"),
                describe_marks(&captured.totals)
            );
        }
        if captured.marks.len() > MAX_POINTS {
            warnings.push(format!(
                "the trace has {} marks; growth uses {MAX_POINTS} of them, evenly spaced",
                captured.marks.len()
            ));
            thin(captured.marks)
        } else {
            captured.marks
        }
    } else {
        captured.snapshots
    };
    report::warn(err, &warnings);

    let p = snaps.len();
    let times: Vec<u64> = snaps.iter().map(|s| s.time_ns).collect();
    let mut series: FxHashMap<u32, Vec<(u64, u64)>> = FxHashMap::default();
    for (i, snap) in snaps.iter().enumerate() {
        for l in &snap.stacks {
            series.entry(l.stack).or_insert_with(|| vec![(0, 0); p])[i] = (l.bytes, l.count);
        }
    }
    let total_stacks = series.len();
    let mut ranked: Vec<Ranked> = series
        .into_iter()
        .filter_map(|(stack, series)| {
            let bytes: Vec<u64> = series.iter().map(|x| x.0).collect();
            let trend = trend(&times, &bytes);
            (trend.score > 0.0).then_some(Ranked {
                stack,
                series,
                trend,
            })
        })
        .collect();
    ranked.sort_by(|a, b| {
        b.trend
            .score
            .total_cmp(&a.trend.score)
            .then(b.growth().0.cmp(&a.growth().0))
            .then(a.stack.cmp(&b.stack))
    });

    let shown = report::shown(args.limit, args.format, ranked.len());
    let (stacks, sym_warnings) = report::print_stacks(
        &captured.defs,
        &args.symbols,
        args.format,
        ranked[..shown].iter().map(|r| r.stack),
        err,
    );

    match args.format {
        Format::Text => {
            if let Some(line) = report::sampled_line(captured.totals.sample_bytes, None) {
                writeln!(out, "{line}")?;
            }
            write_text(
                out,
                &name,
                args.marks,
                &snaps,
                &ranked,
                &stacks,
                total_stacks,
            )?
        }
        Format::Json => {
            warnings.extend(sym_warnings);
            let doc = GrowthJson {
                trace: &name,
                sampled: SampledJson::of(captured.totals.sample_bytes),
                points: snaps
                    .iter()
                    .map(|s| PointJson {
                        point: s.point.to_string(),
                        time_ns: s.time_ns,
                        live_bytes: s.live_bytes,
                        live_count: s.live_count,
                    })
                    .collect(),
                stacks: ranked.len(),
                entries: ranked[..shown]
                    .iter()
                    .zip(&stacks)
                    .enumerate()
                    .map(|(i, (r, s))| {
                        let (bytes, count) = r.last();
                        let (growth_bytes, growth_count) = r.growth();
                        EntryJson {
                            rank: i + 1,
                            stack_id: r.stack,
                            bytes,
                            count,
                            extra: GrowthExtra {
                                growth_bytes,
                                growth_count,
                                slope_bytes_per_sec: r.trend.slope,
                                steadiness: r.trend.steadiness,
                                rose: r.trend.rose,
                                score: r.trend.score,
                                series_bytes: r.series.iter().map(|x| x.0).collect(),
                                series_count: r.series.iter().map(|x| x.1).collect(),
                            },
                            group: None,
                            stack: s.json(),
                        }
                    })
                    .collect(),
                warnings,
            };
            render::write_json(out, &doc)?;
        }
    }
    if let Some(limit) = limit
        && let Some(worst) = ranked.iter().map(|r| r.growth().0).max()
        && worst > 0
        && worst.unsigned_abs() > limit
    {
        let _ = writeln!(
            err,
            "check failed: a rising stack grew by {} ({worst} bytes), more than {} ({limit} bytes)",
            render::bytes(worst.unsigned_abs()),
            render::bytes(limit)
        );
        return Ok(ExitCode::CheckFailed);
    }
    Ok(ExitCode::Success)
}

#[derive(Serialize)]
struct PointJson {
    /// The point as `TRACE@POINT` writes it (a time such as `4500us`, or a mark's label).
    point: String,
    time_ns: u64,
    live_bytes: u64,
    live_count: u64,
}

/// The JSON contract of `growth`: fields may be added, never renamed or removed.
#[derive(Serialize)]
struct GrowthJson<'a> {
    trace: &'a str,
    /// Only for a sampled trace, whose bytes and counts are then estimates.
    #[serde(skip_serializing_if = "Option::is_none")]
    sampled: Option<SampledJson>,
    /// The points looked at, in order.
    points: Vec<PointJson>,
    /// Stacks that kept rising (entries holds the first `-n` of them).
    stacks: usize,
    entries: Vec<EntryJson<'a, GrowthExtra>>,
    warnings: Vec<String>,
}

/// `growth` entries: `bytes` and `count` are live at the last point; plus the trend.
#[derive(Serialize)]
struct GrowthExtra {
    /// Live bytes at the last point minus at the first.
    growth_bytes: i64,
    growth_count: i64,
    /// Theil-Sen slope of the live bytes.
    slope_bytes_per_sec: f64,
    /// Kendall's tau of the live bytes against time.
    steadiness: f64,
    /// Share of intervals in which the live bytes rose.
    rose: f64,
    /// The rank: slope × steadiness² × rose.
    score: f64,
    /// Live bytes at each point.
    series_bytes: Vec<u64>,
    series_count: Vec<u64>,
}

/// `▁▂▅█`: the series scaled to eight levels, at most 24 wide.
fn sparkline(series: &[(u64, u64)]) -> String {
    const LEVELS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let n = series.len();
    let width = n.min(24);
    let values: Vec<u64> = (0..width).map(|i| series[i * n / width].0).collect();
    let (lo, hi) = (
        values.iter().copied().min().unwrap_or(0),
        values.iter().copied().max().unwrap_or(0),
    );
    values
        .iter()
        .map(|&v| {
            let level = if hi == lo {
                0
            } else {
                ((v - lo) as u128 * 7 / (hi - lo) as u128) as usize
            };
            LEVELS[level]
        })
        .collect()
}

fn write_text(
    out: &mut dyn Write,
    name: &str,
    marks: bool,
    snaps: &[Snapshot],
    ranked: &[Ranked],
    stacks: &[PrintedStack],
    total_stacks: usize,
) -> Result<()> {
    let last = snaps.last().map_or(0, |s| s.time_ns);
    let how = if marks {
        format!("{} marks (to {})", snaps.len(), render::duration(last))
    } else {
        format!(
            "{} points (every {}, to {})",
            snaps.len(),
            render::duration(last / snaps.len().max(1) as u64),
            render::duration(last)
        )
    };
    if ranked.is_empty() {
        writeln!(
            out,
            "Growth of {name} over {how}: no stack's live bytes kept rising."
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "Growth of {name} over {how}: {} of {} kept rising (showing {})",
        render::count(ranked.len() as u64),
        render::counted(total_stacks as u64, "stack"),
        stacks.len()
    )?;
    writeln!(out)?;
    let mut table = Table::new(&[
        ("#", Align::Right),
        ("live", Align::Right),
        ("growth", Align::Right),
        ("slope", Align::Right),
        ("steadiness", Align::Right),
        ("trend", Align::Left),
    ]);
    for (i, r) in ranked.iter().take(stacks.len()).enumerate() {
        table.row(vec![
            (i + 1).to_string(),
            render::bytes(r.last().0),
            render::signed_bytes(r.growth().0),
            format!("{}/s", render::bytes(r.trend.slope.max(0.0) as u64)),
            format!("{:.2}", r.trend.steadiness),
            sparkline(&r.series),
        ]);
    }
    report::write_table_with_stacks(out, &table, stacks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(n: u64) -> Vec<u64> {
        (1..=n).map(|i| i * 1_000_000_000).collect()
    }

    #[test]
    fn steady_growth_is_steady_and_has_its_slope() {
        let tr = trend(&t(5), &[100, 200, 300, 400, 500]);
        assert_eq!(tr.steadiness, 1.0);
        assert_eq!(tr.slope, 100.0);
        assert_eq!((tr.rose, tr.score), (1.0, 100.0));
    }

    #[test]
    fn one_off_caches_and_churn_rank_below_a_small_steady_riser() {
        let steady = trend(&t(10), &[10, 20, 30, 40, 50, 60, 70, 80, 90, 100]);
        // A cache filled once in the middle of the run, 100 times larger.
        let one_off = trend(
            &t(10),
            &[0, 0, 0, 0, 0, 10_000, 10_000, 10_000, 10_000, 10_000],
        );
        // Churn around a level, much larger.
        let churn = trend(
            &t(10),
            &[5000, 9000, 4000, 8000, 6000, 9500, 3000, 7000, 8000, 5500],
        );
        // A cache filled before the first point: flat.
        let early = trend(&t(10), &[10_000; 10]);
        assert!(steady.score > 0.0);
        assert!(one_off.score < steady.score * 100.0 / 20.0, "{one_off:?}");
        assert_eq!(one_off.rose, 1.0 / 9.0);
        assert!(churn.score < steady.score, "{churn:?} vs {steady:?}");
        assert_eq!(early.score, 0.0);
        assert_eq!(early.steadiness, 0.0);
        let falling = trend(&t(3), &[30, 20, 10]);
        assert_eq!((falling.steadiness, falling.score), (-1.0, 0.0));
    }

    #[test]
    fn sparkline_scales() {
        assert_eq!(sparkline(&[(0, 0), (50, 0), (100, 0)]), "▁▄█");
        assert_eq!(sparkline(&[(7, 0), (7, 0)]), "▁▁");
    }
}
