//! Snapshots of the live heap at points of a trace, all taken in one streaming pass: what each stack
//! held live (bytes, blocks) right after a mark, at a time, at the peak and at the end. Used by
//! `snapshot`, `diff` and `growth`.
//!
//! Where a point falls, exactly:
//! - a mark: right after the mark record in the reader's merged order, so everything its thread did
//!   before calling `memtrace_snapshot` is in, and nothing after it;
//! - a time `t`: after every heap event with a time at or before `t`;
//! - the peak: the first moment the total of live bytes was highest (the lazy per-stack capture of
//!   [`StackTable`]); the end: after the last record.
//!
//! Memory: one [`StackTable`] (distinct stacks) plus, per snapshot, one entry per stack that had
//! anything live (and, with `keep_zeros`, per stack seen so far): never the number of events.
//! Points that the trace does not have (an unknown label, a time after its end) are an error that
//! lists the marks the trace has.

use crate::heap::StackTable;
use crate::point::{Point, time_text};
use crate::render;
use crate::replay::{Ctx, Definitions, Observer, Totals};
use crate::sampling::{Amount, Weights};
use anyhow::{Result, bail};
use memtrace_format::{Record, Trace};
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;

/// What one stack held live at a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Live {
    /// Stack id.
    pub stack: u32,
    /// Bytes of its live blocks.
    pub bytes: u64,
    /// Number of its live blocks.
    pub count: u64,
}

/// The live heap at one point, by stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The point (for every-mark captures, the mark as a label point).
    pub point: Point,
    /// When: the mark's time, the time asked for, the peak's, or the trace's duration.
    pub time_ns: u64,
    /// Total live bytes.
    pub live_bytes: u64,
    /// Total live blocks.
    pub live_count: u64,
    /// Per stack, by stack id. Stacks with nothing live are left out unless zeros were kept.
    pub stacks: Vec<Live>,
}

/// What to capture in one pass.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// Points, each captured once (in the order given in [`Captured::snapshots`]).
    pub points: Vec<Point>,
    /// Also capture right after every mark (into [`Captured::marks`]).
    pub every_mark: bool,
    /// Keep stacks that hold nothing at a snapshot but allocated before it (`diff` shows them with
    /// zeros, so a site that allocated and freed between two points is there, unchanged).
    pub keep_zeros: bool,
}

/// The result of a pass.
pub struct Captured {
    /// One snapshot per requested point, in request order.
    pub snapshots: Vec<Snapshot>,
    /// With `every_mark`: one snapshot after each mark, in order.
    pub marks: Vec<Snapshot>,
    /// The replay's totals.
    pub totals: Totals,
    /// Stack and module definitions, for symbolization.
    pub defs: Definitions,
    /// Warnings of the record stream.
    pub warnings: Vec<String>,
}

struct Capturer {
    table: StackTable,
    defs: Definitions,
    keep_zeros: bool,
    every_mark: bool,
    /// Label -> (nth, request index) wanted.
    labels: FxHashMap<String, Vec<(usize, usize)>>,
    /// Marks seen so far, per wanted label.
    seen: FxHashMap<String, usize>,
    /// Time points, sorted, with their request index.
    times: Vec<(u64, usize)>,
    next_time: usize,
    out: Vec<Option<Snapshot>>,
    marks: Vec<Snapshot>,
    mark_counts: FxHashMap<String, usize>,
}

impl Capturer {
    fn snapshot(&self, point: Point, time_ns: u64) -> Snapshot {
        // Each stack's amount and the total are rounded to whole numbers on their own (in a sampled
        // trace the entries may then add up to a little more or less than the total).
        let w = self.table.weights();
        let mut total = Amount::default();
        let mut stacks: Vec<Live> = self
            .table
            .live()
            .filter(|&(_, a)| self.keep_zeros || a != Amount::default())
            .map(|(stack, a)| {
                total = total.plus(a);
                Live {
                    stack,
                    bytes: w.bytes(a.bytes),
                    count: w.count(a.count),
                }
            })
            .collect();
        stacks.sort_unstable_by_key(|l| l.stack);
        Snapshot {
            point,
            time_ns,
            live_bytes: w.bytes(total.bytes),
            live_count: w.count(total.count),
            stacks,
        }
    }

    /// Takes the time snapshots due before a heap event at `time` changes anything.
    #[inline]
    fn before_event(&mut self, time: u64) {
        while let Some(&(t, i)) = self.times.get(self.next_time) {
            if t >= time {
                break;
            }
            self.out[i] = Some(self.snapshot(Point::Time(t), t));
            self.next_time += 1;
        }
    }
}

impl Observer for Capturer {
    #[inline]
    fn on_alloc(&mut self, ctx: &Ctx, stack: u32, amount: Amount) {
        self.before_event(ctx.time);
        self.table.on_alloc(ctx, stack, amount);
    }

    #[inline]
    fn on_release(&mut self, ctx: &Ctx, stack: u32, amount: Amount, temporary: bool) {
        self.before_event(ctx.time);
        self.table.on_release(ctx, stack, amount, temporary);
    }

    fn on_other(&mut self, ctx: &Ctx, record: &Record) {
        self.defs.on_other(ctx, record);
        let Record::Mark { label, time } = record else {
            return;
        };
        if self.every_mark {
            let n = self.mark_counts.entry(label.clone()).or_default();
            *n += 1;
            let point = Point::Label {
                label: label.clone(),
                nth: *n,
            };
            let snap = self.snapshot(point, *time);
            self.marks.push(snap);
        }
        if let Some(wanted) = self.labels.get(label) {
            let n = self.seen.entry(label.clone()).or_default();
            *n += 1;
            let n = *n;
            let due: Vec<(usize, usize)> = wanted.iter().copied().filter(|w| w.0 == n).collect();
            for (nth, i) in due {
                let point = Point::Label {
                    label: label.clone(),
                    nth,
                };
                self.out[i] = Some(self.snapshot(point, *time));
            }
        }
    }
}

/// Replays `trace` once and takes the snapshots `req` asks for. `name` names the trace in errors.
pub fn capture(trace: &Trace, name: &str, req: &Request) -> Result<Captured> {
    let mut c = Capturer {
        table: StackTable::new(Weights::new(trace.header().sample_bytes)),
        defs: Definitions::default(),
        keep_zeros: req.keep_zeros,
        every_mark: req.every_mark,
        labels: FxHashMap::default(),
        seen: FxHashMap::default(),
        times: Vec::new(),
        next_time: 0,
        out: vec![None; req.points.len()],
        marks: Vec::new(),
        mark_counts: FxHashMap::default(),
    };
    for (i, p) in req.points.iter().enumerate() {
        match p {
            Point::Label { label, nth } => {
                c.labels.entry(label.clone()).or_default().push((*nth, i));
            }
            Point::Time(t) => c.times.push((*t, i)),
            Point::End | Point::Peak => {}
        }
    }
    c.times.sort_unstable();

    let mut replayer = crate::report::new_replayer(trace, std::path::Path::new(name));
    let mut records = trace.records();
    replayer.run_records(&mut records, &mut c);
    let mut warnings = records.take_warnings();
    let (totals, _heap) = replayer.finish();

    // Time points with no heap event after them: the heap at the end, if they are within the run.
    let duration = totals.duration_ns;
    for &(t, i) in &c.times[c.next_time..] {
        if t > duration {
            bail!(
                "{name}@{} is after the end of the trace ({}); {}",
                time_text(t),
                render::duration(duration),
                describe_marks(&totals)
            );
        }
        c.out[i] = Some(c.snapshot(Point::Time(t), t));
    }
    c.next_time = c.times.len();

    for p in &req.points {
        if let Point::Label { label, nth: 1 } = p {
            let have = totals.marks.iter().filter(|m| &m.label == label).count();
            if have > 1 {
                warnings.push(format!(
                    "{name} has {have} marks named {label:?}: @{label} is the first ({label}#2 \
                     is the next)"
                ));
            }
        }
    }

    let end = c.snapshot(Point::End, duration);
    c.table.finalize(totals.peak_seq);
    let mut snapshots = Vec::with_capacity(req.points.len());
    for (i, p) in req.points.iter().enumerate() {
        let snap = match p {
            Point::End => end.clone(),
            Point::Peak => peak_snapshot(&c.table, &totals, req.keep_zeros),
            Point::Time(_) => c.out[i].take().expect("every time point is captured"),
            Point::Label { label, nth } => match c.out[i].take() {
                Some(s) => s,
                None => {
                    let have = totals.marks.iter().filter(|m| &m.label == label).count();
                    if have == 0 {
                        bail!("{name} has no mark {label:?}; {}", describe_marks(&totals));
                    }
                    bail!(
                        "{name} has {} named {label:?}, not {nth}; {}",
                        render::counted(have as u64, "mark"),
                        describe_marks(&totals)
                    );
                }
            },
        };
        snapshots.push(snap);
    }
    Ok(Captured {
        snapshots,
        marks: c.marks,
        totals,
        defs: c.defs,
        warnings,
    })
}

fn peak_snapshot(table: &StackTable, totals: &Totals, keep_zeros: bool) -> Snapshot {
    let mut stacks: Vec<Live> = table
        .iter()
        .filter(|(_, s)| keep_zeros || s.peak_bytes > 0 || s.peak_count > 0)
        .map(|(stack, s)| Live {
            stack,
            bytes: s.peak_bytes,
            count: s.peak_count,
        })
        .collect();
    stacks.sort_unstable_by_key(|l| l.stack);
    Snapshot {
        point: Point::Peak,
        time_ns: totals.peak_time_ns,
        live_bytes: totals.peak_live_bytes,
        live_count: totals.peak_live_count,
        stacks,
    }
}

/// `its marks are: before, after, tick (x3)`, or `it has no marks`, and what else a point can be.
pub fn describe_marks(totals: &Totals) -> String {
    const SHOWN: usize = 20;
    let mut order: Vec<&str> = Vec::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for m in &totals.marks {
        let n = counts.entry(&m.label).or_default();
        if *n == 0 {
            order.push(&m.label);
        }
        *n += 1;
    }
    let tail =
        "a point is a mark's label (LABEL#N for its N-th mark), a time such as 1.5s, peak or end";
    if order.is_empty() {
        return format!("the trace has no marks; {tail}");
    }
    let mut shown: Vec<String> = order
        .iter()
        .take(SHOWN)
        .map(|l| match counts[l] {
            1 => format!("{l:?}"),
            n => format!("{l:?} (x{n})"),
        })
        .collect();
    if order.len() > SHOWN {
        shown.push(format!("and {} more", order.len() - SHOWN));
    }
    format!("its marks are: {}; {tail}", shown.join(", "))
}
