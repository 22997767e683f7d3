//! Replays a trace's records, in the merged time order the reader produces, against a [`LiveHeap`]:
//! the one place that decides what an allocation, a realloc and a free mean for the heap (which block
//! is released, which is temporary, when the peak is). It keeps the global counters ([`Totals`]) and
//! tells an [`Observer`] about every block that becomes live or is released, so reports can aggregate
//! whatever they need in the same single pass. Each block counts as the [`Amount`] the trace's
//! [`Weights`] give it: itself in an unsampled trace, the allocations it stands for in a sampled one,
//! so that every total, the peak included, is an estimate of the whole run's.
//!
//! Replay never resolves stacks: a stack or module record may come after the records that use its id
//! (another thread interned it a moment earlier), so stacks are resolved at report time only.

use crate::heap::{Block, Homes, LiveHeap, StackTable};
use crate::sampling::{Amount, Weights};
use memtrace_format::{
    EventKind, Frame, HeapEvent, ModuleInfo, PyCodeInfo, Record, RecordSink, Records, ThreadRecord,
};
use rustc_hash::FxHashMap;

/// Where the replay is when an observer is called.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ctx {
    /// Sequence number of the current heap event (alloc, realloc or free), from 1.
    pub seq: u64,
    /// Sequence number of the event that set the latest peak before the current event (0: none yet).
    pub peak_seq: u64,
    /// Time of the current record, ns since trace start.
    pub time: u64,
    /// Thread that wrote the current record.
    pub thread: u32,
}

/// Receives the heap's changes during a replay. Every callback defaults to doing nothing, so an
/// observer implements only what it needs (tracing-subscriber's `Layer` style).
pub trait Observer {
    /// A block became live on `stack` (an allocation, or a realloc's new block); `amount` is what it
    /// stands for (its size and one block, in an unsampled trace).
    #[inline]
    fn on_alloc(&mut self, _ctx: &Ctx, _stack: u32, _amount: Amount) {}

    /// A live block of `stack` was released (a free, or the old block of a realloc): `amount` is
    /// exactly what its `on_alloc` added. `temporary` when no other allocation happened since this
    /// block's own.
    #[inline]
    fn on_release(&mut self, _ctx: &Ctx, _stack: u32, _amount: Amount, _temporary: bool) {}

    /// A record that is not a heap event (stack, module, mark, thread name, end, module unload).
    #[inline]
    fn on_other(&mut self, _ctx: &Ctx, _record: &Record) {}
}

/// The observer that observes nothing: `summary` needs only the replay's own totals.
impl Observer for () {}

impl<A: Observer, B: Observer> Observer for (A, B) {
    #[inline]
    fn on_alloc(&mut self, ctx: &Ctx, stack: u32, amount: Amount) {
        self.0.on_alloc(ctx, stack, amount);
        self.1.on_alloc(ctx, stack, amount);
    }
    #[inline]
    fn on_release(&mut self, ctx: &Ctx, stack: u32, amount: Amount, temporary: bool) {
        self.0.on_release(ctx, stack, amount, temporary);
        self.1.on_release(ctx, stack, amount, temporary);
    }
    #[inline]
    fn on_other(&mut self, ctx: &Ctx, record: &Record) {
        self.0.on_other(ctx, record);
        self.1.on_other(ctx, record);
    }
}

impl Observer for StackTable {
    #[inline]
    fn on_alloc(&mut self, ctx: &Ctx, stack: u32, amount: Amount) {
        self.alloc(stack, amount, ctx.peak_seq);
    }
    #[inline]
    fn on_release(&mut self, ctx: &Ctx, stack: u32, amount: Amount, temporary: bool) {
        self.release(stack, amount, temporary, ctx.peak_seq);
    }
}

/// Keeps the stack, module and Python code definitions, for resolving the stacks a report prints.
/// Memory grows with the number of distinct stacks, modules and code objects, never with the number
/// of heap events.
#[derive(Default)]
pub struct Definitions {
    /// Stack id to frames, innermost first.
    pub stacks: FxHashMap<u32, Box<[Frame]>>,
    /// Module id to module.
    pub modules: FxHashMap<u32, ModuleInfo>,
    /// Python code id to code (format version 2).
    pub python_codes: FxHashMap<u32, PyCodeInfo>,
}

impl Observer for Definitions {
    fn on_other(&mut self, _ctx: &Ctx, record: &Record) {
        match record {
            Record::Stack { id, frames } => {
                self.stacks
                    .entry(*id)
                    .or_insert_with(|| frames.as_slice().into());
            }
            Record::Module(m) => {
                self.modules.entry(m.id).or_insert_with(|| m.clone());
            }
            Record::PyCode(c) => {
                self.python_codes.entry(c.id).or_insert_with(|| c.clone());
            }
            _ => {}
        }
    }
}

/// A named point in time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    /// ns since trace start.
    pub time: u64,
    /// Thread that set it.
    pub thread: u32,
    /// The label.
    pub label: String,
}

/// The replay's global counters: everything `summary` reports.
///
/// In a sampled trace (`sample_bytes` set) the calls, bytes and blocks of allocations are estimates
/// (recorded allocations weighted by `sampling.rs`), rounded to whole numbers: `alloc_calls`,
/// `calls_by_kind`, `realloc_calls`, `total_allocated_bytes`, the peak's and the leak's bytes and
/// blocks, the temporary allocations and the inherited blocks, bytes and frees. Everything else is
/// counted as recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// The sampling mean of a sampled trace (its amounts are estimates), else `None`.
    pub sample_bytes: Option<u64>,
    /// Successful allocation calls, realloc included (heaptrack's "calls to allocation functions").
    pub alloc_calls: u64,
    /// Allocation calls by kind, indexed by `AllocKind as usize` (realloc not included).
    pub calls_by_kind: [u64; 7],
    /// Realloc calls (each also counted in `alloc_calls`).
    pub realloc_calls: u64,
    /// Free records (`free`, and `realloc(p, 0)`), matched or not.
    pub free_calls: u64,
    /// Bytes requested by all allocation calls.
    pub total_allocated_bytes: u64,
    /// Highest total of live bytes.
    pub peak_live_bytes: u64,
    /// Live blocks at that moment.
    pub peak_live_count: u64,
    /// When it was first reached, ns since trace start.
    pub peak_time_ns: u64,
    /// Heap event sequence number of the peak (0 if no allocation).
    pub peak_seq: u64,
    /// Bytes live at the end of the trace.
    pub leaked_bytes: u64,
    /// Blocks live at the end of the trace.
    pub leaked_count: u64,
    /// Temporary allocations as heaptrack counts them: a free of a block whose size and stack equal
    /// those of the most recent allocation, with no other free in between (see [`Replayer`]).
    pub temporary_allocs: u64,
    /// Temporary allocations by the literal definition: a free of the most recently allocated block
    /// itself, with no other allocation or free in between.
    pub temporary_allocs_strict: u64,
    /// Frees of addresses that were not live (allocated before tracing started, or records lost).
    /// In a sampled trace such frees are `unsampled_frees` instead.
    pub unmatched_frees: u64,
    /// Reallocs whose old block was not live (counted as plain allocations). In a sampled trace
    /// such reallocs are `unsampled_reallocs` instead.
    pub unmatched_reallocs: u64,
    /// In a sampled trace: frees of addresses that were not live, normal there (their allocation
    /// was not recorded).
    pub unsampled_frees: u64,
    /// In a sampled trace: reallocs whose old block was not live (its allocation was not recorded).
    pub unsampled_reallocs: u64,
    /// Allocation records (alloc and realloc), as recorded: `alloc_calls` of an unsampled trace.
    pub recorded_alloc_calls: u64,
    /// Bytes of those records, as recorded.
    pub recorded_allocated_bytes: u64,
    /// Allocations that returned an address still live, not explained by a late realloc: the trace
    /// missed a free.
    pub missed_frees: u64,
    /// Reallocs recorded after another thread was already handed their old block's address (see
    /// [`Replayer`]); their old block was released when that thread got the address.
    pub reordered_reallocs: u64,
    /// For a fork child: the blocks it inherited (its parent's live heap at the fork).
    pub inherited_blocks: u64,
    /// Their bytes.
    pub inherited_bytes: u64,
    /// Inherited blocks this process freed (or reallocated).
    pub inherited_freed: u64,
    /// Stack definitions.
    pub stacks: u64,
    /// Module records.
    pub modules: u64,
    /// Python code records.
    pub python_codes: u64,
    /// Module unload records.
    pub module_unloads: u64,
    /// Marks, in time order.
    pub marks: Vec<Mark>,
    /// Thread names seen, by thread index.
    pub thread_names: Vec<(u32, String)>,
    /// Time of the end record, if the trace has one.
    pub end_time_ns: Option<u64>,
    /// Time of the last timed record (the trace's duration).
    pub duration_ns: u64,
    /// Records replayed.
    pub records: u64,
}

/// Applies records to a live heap, keeping [`Totals`] and telling an observer.
///
/// Two rules need explaining:
///
/// - *Temporary* follows what heaptrack 1.4 computes (`AccumulatedTraceData`, which sees a realloc
///   as a free of the old block followed by an allocation of the new one): a free is temporary when
///   no free came after the most recent allocation and the freed block has the same size and stack
///   as that allocation (heaptrack compares its (size, trace) "allocation info", not the block).
///   Frees of unknown addresses are ignored, as heaptrack's interpreter drops them. The literal
///   definition (that very block) is counted too, as `temporary_allocs_strict`. The rule is applied
///   to each thread's own sequence of calls: heaptrack applies it to its one serialized stream, where
///   the answer depends on how the threads happened to interleave, while "freed before this code
///   allocated anything else" is a property of the code.
/// - *Late reallocs*: glibc releases a moved block inside `realloc`, before the tracer can record
///   the realloc, so another thread may be handed the old address, and record that, first. The
///   replay then sees an allocation at a live address: it releases the old block there (the free
///   the trace seems to have missed) and remembers the address and the allocating thread. A later
///   realloc of that address from another thread is that late realloc: its old block is already
///   released, so only its new block is applied, and the other thread's block stays live.
#[derive(Default)]
pub struct Replayer {
    heap: LiveHeap,
    totals: Totals,
    /// The trace's weights; the sums below are in their fixed-point units until `finish`.
    weights: Weights,
    sums: Sums,
    ctx: Ctx,
    /// The current thread's most recent allocation, until that thread's next matched free.
    window: Window,
    /// The other threads' windows, by thread index (`window`'s own entry is stale).
    windows: Vec<Window>,
    /// The index in `windows` of the thread whose window is `window`.
    window_slot: usize,
    /// Addresses allocated while still live, with the allocating thread: candidates for a late
    /// realloc. Only as large as the number of such anomalies.
    displaced: FxHashMap<u64, u32>,
    /// A fork child's inherited blocks still live (address -> size): its frees of them match, but
    /// they belong to no stack of this trace and count in none of its measures.
    inherited: FxHashMap<u64, u64>,
}

/// The estimated totals while a replay runs, in the fixed-point units of its [`Weights`] (in an
/// unsampled trace, plain bytes and counts: the same numbers as ever).
#[derive(Clone, Copy, Default)]
struct Sums {
    alloc_calls: u64,
    calls_by_kind: [u64; 7],
    realloc_calls: u64,
    allocated_bytes: u64,
    live: Amount,
    peak: Amount,
    temporary: u64,
    temporary_strict: u64,
    inherited: Amount,
    inherited_freed: u64,
}

/// A thread's most recent allocation, until that thread's next matched free: heaptrack's
/// `lastAllocationPtr`, kept per thread.
#[derive(Clone, Copy, Default)]
struct Window {
    /// Whether there is such an allocation (the fields below are its).
    open: bool,
    /// Its size and stack: heaptrack compares this "allocation info".
    size: u64,
    stack: u32,
    /// Its address, for the strict count.
    addr: u64,
}

/// Threads with a window of their own.
const MAX_WINDOWS: usize = 1 << 16;

/// Beyond this many unexplained re-allocations of live addresses, forget the oldest evidence (the
/// trace is then missing frees wholesale, and late reallocs are the least of its problems).
const MAX_DISPLACED: usize = 1 << 20;

impl Replayer {
    /// A replayer with an empty heap, for an unsampled trace.
    pub fn new() -> Replayer {
        Replayer::default()
    }

    /// A replayer with an empty heap, for a trace whose blocks weigh `weights`.
    pub fn with_weights(weights: Weights) -> Replayer {
        Replayer {
            weights,
            totals: Totals {
                sample_bytes: weights.sample_bytes(),
                ..Totals::default()
            },
            ..Replayer::default()
        }
    }

    /// The heap as of the records applied so far.
    pub fn heap(&self) -> &LiveHeap {
        &self.heap
    }

    /// Starts the heap with a fork child's inherited blocks (address, size).
    pub fn inherit(&mut self, blocks: impl IntoIterator<Item = (u64, u64)>) {
        self.inherited.extend(blocks);
        let w = self.weights;
        self.sums.inherited = self
            .inherited
            .values()
            .fold(Amount::default(), |a, &size| a.plus(w.of(size)));
    }

    /// The blocks live now, inherited ones included (address, size): a fork child's heap at a
    /// point of its parent's trace.
    pub fn live_blocks(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.heap
            .iter()
            .map(|(a, b)| (a, b.size))
            .chain(self.inherited.iter().map(|(&a, &s)| (a, s)))
    }

    /// Releases an inherited block at `addr`, if there is one.
    #[cold]
    fn release_inherited(&mut self, addr: u64) -> bool {
        match self.inherited.remove(&addr) {
            Some(size) => {
                self.sums.inherited_freed += self.weights.of(size).count;
                true
            }
            None => false,
        }
    }

    /// Applies every record of `records`.
    pub fn run<O: Observer>(&mut self, records: impl Iterator<Item = ThreadRecord>, obs: &mut O) {
        for r in records {
            self.apply(r.thread, &r.record, obs);
        }
    }

    /// Applies every remaining record of a trace's stream: [`Replayer::run`] over [`Records`], the
    /// fast way ([`Records::for_each_batch`]: heap events come in runs, no [`Record`] made).
    ///
    /// Once the live heap has outgrown the caches ([`LiveHeap::is_large`]), the home slots of a
    /// run's lookups start loading ([`LiveHeap::prefetch`]) when the reader shows the run ahead
    /// (the `ahead` of [`RecordSink::events`]): one with each event of the run before as it is
    /// applied, so the loads are spread over that work rather than issued in a burst (a burst of
    /// misses fills the core's miss buffers, and the prefetches then wait for each other). Each
    /// lookup would otherwise miss alone, the whole replay waiting behind it; started a run ahead,
    /// the misses overlap with each other and with the work. Observers see the exact order of the
    /// trace: the reader hands over runs, and any other record, in order.
    pub fn run_records<O: Observer>(&mut self, records: &mut Records<'_>, obs: &mut O) {
        struct Sink<'a, O> {
            replayer: &'a mut Replayer,
            obs: &'a mut O,
        }
        impl<O: Observer> RecordSink for Sink<'_, O> {
            #[inline]
            fn events(&mut self, events: &[HeapEvent], ahead: &[HeapEvent]) {
                match self.replayer.weights.sample_bytes() {
                    None => self.run::<false>(events, ahead),
                    Some(_) => self.run::<true>(events, ahead),
                }
            }
            fn other(&mut self, thread: u32, record: &Record) {
                self.replayer.apply_other(thread, record, self.obs);
            }
        }
        impl<O: Observer> Sink<'_, O> {
            #[inline(always)]
            fn run<const SAMPLED: bool>(&mut self, events: &[HeapEvent], ahead: &[HeapEvent]) {
                let r = &mut *self.replayer;
                if !r.heap.is_large() {
                    for e in events {
                        r.apply_event::<O, SAMPLED>(e, self.obs);
                    }
                    return;
                }
                let homes = r.heap.homes();
                let mut ahead = ahead.iter();
                for e in events {
                    if let Some(next) = ahead.next() {
                        r.prefetch_event(homes, next);
                    }
                    r.apply_event::<O, SAMPLED>(e, self.obs);
                }
                for next in ahead {
                    r.prefetch_event(homes, next);
                }
            }
        }
        records.for_each_batch(&mut Sink {
            replayer: self,
            obs,
        });
    }

    /// Starts loading the slots that applying `e` looks up (see [`Replayer::run_records`]).
    #[inline(always)]
    fn prefetch_event(&self, homes: Homes, e: &HeapEvent) {
        self.heap.prefetch(homes, e.addr);
        if e.kind == EventKind::Realloc {
            self.heap.prefetch(homes, e.old);
        }
    }

    /// Makes `block` live at `addr`; returns what it amounts to. `SAMPLED`: whether the trace is
    /// (see [`Replayer::apply_event`]).
    #[inline(always)]
    fn new_block<const SAMPLED: bool>(
        &mut self,
        addr: u64,
        block: Block,
        obs: &mut impl Observer,
    ) -> Amount {
        if !self.inherited.is_empty() {
            // An inherited block here was freed unseen (a parent's event after the fork time).
            self.inherited.remove(&addr);
        }
        if let Some(old) = self.heap.insert(addr, block) {
            self.displaced_block(addr, old, obs);
        }
        let amount = self.weights.of_known::<SAMPLED>(block.size);
        obs.on_alloc(&self.ctx, block.stack, amount);
        self.sums.alloc_calls += amount.count;
        self.sums.allocated_bytes = self.sums.allocated_bytes.wrapping_add(amount.bytes);
        self.sums.live = self.sums.live.plus(amount);
        if SAMPLED {
            // Unsampled, the sums are these very counts (`finish`).
            self.totals.recorded_alloc_calls += 1;
            self.totals.recorded_allocated_bytes = self
                .totals
                .recorded_allocated_bytes
                .wrapping_add(block.size);
        }
        self.window = Window {
            open: true,
            size: block.size,
            stack: block.stack,
            addr,
        };
        if self.sums.live.bytes > self.sums.peak.bytes {
            self.sums.peak = self.sums.live;
            self.totals.peak_time_ns = self.ctx.time;
            self.totals.peak_seq = self.ctx.seq;
        }
        amount
    }

    /// An allocation returned `addr` while `old` was live there: a missed free, or a late realloc
    /// (see [`Replayer`]). Either way `old` is gone now.
    #[cold]
    fn displaced_block(&mut self, addr: u64, old: Block, obs: &mut impl Observer) {
        self.totals.missed_frees += 1;
        if self.displaced.len() >= MAX_DISPLACED {
            self.displaced.clear();
        }
        self.displaced.insert(addr, self.ctx.thread);
        let amount = self.weights.of(old.size);
        self.sums.live = self.sums.live.minus(amount);
        obs.on_release(&self.ctx, old.stack, amount, false);
    }

    /// Whether a realloc of `old` is a late one whose old block was already released.
    #[inline]
    fn is_late_realloc(&mut self, old: u64) -> bool {
        if self.displaced.is_empty() {
            return false;
        }
        match self.displaced.get(&old) {
            Some(&thread) if thread != self.ctx.thread => {
                self.displaced.remove(&old);
                self.totals.missed_frees -= 1;
                self.totals.reordered_reallocs += 1;
                true
            }
            _ => false,
        }
    }

    /// Makes `thread` the current thread: its temporary-allocation window becomes `window`.
    /// Thread indices are small and dense; past [`MAX_WINDOWS`] (only a corrupt trace gets there)
    /// threads share the last slot.
    #[cold]
    fn switch_thread(&mut self, thread: u32) {
        let slot = (thread as usize).min(MAX_WINDOWS - 1);
        if slot != self.window_slot {
            let need = slot.max(self.window_slot) + 1;
            if self.windows.len() < need {
                self.windows.resize(need, Window::default());
            }
            self.windows[self.window_slot] = self.window;
            self.window = self.windows[slot];
            self.window_slot = slot;
        }
        self.ctx.thread = thread;
    }

    /// Releases `addr` if it is live; returns whether it was. `SAMPLED`: whether the trace is.
    #[inline(always)]
    fn release<const SAMPLED: bool>(&mut self, addr: u64, obs: &mut impl Observer) -> bool {
        match self.heap.remove(addr) {
            Some(block) => {
                let amount = self.weights.of_known::<SAMPLED>(block.size);
                self.sums.live = self.sums.live.minus(amount);
                let window = core::mem::take(&mut self.window);
                let temporary =
                    window.open && window.size == block.size && window.stack == block.stack;
                if window.open && window.addr == addr {
                    self.sums.temporary_strict += amount.count;
                }
                // Like heaptrack, any matched free ends the "most recent allocation" window (of the
                // freeing thread).
                if temporary {
                    self.sums.temporary += amount.count;
                }
                obs.on_release(&self.ctx, block.stack, amount, temporary);
                true
            }
            None => false,
        }
    }

    /// Applies one record written by `thread`.
    #[inline(always)]
    pub fn apply<O: Observer>(&mut self, thread: u32, record: &Record, obs: &mut O) {
        match HeapEvent::of(thread, record) {
            Some(event) => match self.weights.sample_bytes() {
                None => self.apply_event::<O, false>(&event, obs),
                Some(_) => self.apply_event::<O, true>(&event, obs),
            },
            None => self.apply_other(thread, record, obs),
        }
    }

    /// Applies one heap event. `SAMPLED` is whether the trace is sampled: a constant in the replay's
    /// loops, so that an unsampled trace's events are applied without a branch on it.
    #[inline(always)]
    fn apply_event<O: Observer, const SAMPLED: bool>(&mut self, e: &HeapEvent, obs: &mut O) {
        // Counted in `records` by `finish`: heap events are `ctx.seq`.
        if e.thread != self.ctx.thread {
            self.switch_thread(e.thread);
        }
        let (time, stack, size) = (e.time, e.stack, e.size);
        match e.kind {
            EventKind::Alloc(kind) => {
                let addr = e.addr;
                self.begin_event(time);
                let amount = self.new_block::<SAMPLED>(addr, Block { size, stack }, obs);
                self.sums.calls_by_kind[kind as usize] += amount.count;
            }
            EventKind::Realloc => {
                let (old, new) = (e.old, e.addr);
                // heaptrack records a realloc as a free of `old` followed by a malloc of `new`, and so
                // do we: the old block (its stack, its size) is released, possibly as temporary, and
                // the new block belongs to the realloc's stack. In place (`old == new`) is the same.
                self.begin_event(time);
                if old != 0
                    && !self.is_late_realloc(old)
                    && !self.release::<SAMPLED>(old, obs)
                    && (self.inherited.is_empty() || !self.release_inherited(old))
                {
                    // In a sampled trace, the old block's own allocation was most likely not
                    // recorded: nothing is amiss.
                    if SAMPLED {
                        self.totals.unsampled_reallocs += 1;
                    } else {
                        self.totals.unmatched_reallocs += 1;
                    }
                }
                let amount = self.new_block::<SAMPLED>(new, Block { size, stack }, obs);
                self.sums.realloc_calls += amount.count;
            }
            EventKind::Free => {
                let addr = e.addr;
                self.begin_event(time);
                self.totals.free_calls += 1;
                if !self.release::<SAMPLED>(addr, obs)
                    && (self.inherited.is_empty() || !self.release_inherited(addr))
                {
                    // heaptrack's interpreter drops frees of unknown pointers, so they neither count
                    // as temporary nor end the temporary window. In a sampled trace they are the
                    // frees of the blocks whose allocations were not recorded.
                    if SAMPLED {
                        self.totals.unsampled_frees += 1;
                    } else {
                        self.totals.unmatched_frees += 1;
                    }
                }
            }
        }
    }

    /// Applies a record that is not a heap event.
    fn apply_other<O: Observer>(&mut self, thread: u32, record: &Record, obs: &mut O) {
        self.totals.records += 1;
        if thread != self.ctx.thread {
            self.switch_thread(thread);
        }
        match record {
            Record::Stack { .. } => self.totals.stacks += 1,
            Record::Module(_) => self.totals.modules += 1,
            Record::PyCode(_) => self.totals.python_codes += 1,
            Record::ModuleUnload { time, .. } => {
                self.set_time(*time);
                self.totals.module_unloads += 1;
            }
            Record::Mark { time, label } => {
                self.set_time(*time);
                self.totals.marks.push(Mark {
                    time: *time,
                    thread,
                    label: label.clone(),
                });
            }
            Record::ThreadName { name } => {
                match self
                    .totals
                    .thread_names
                    .iter_mut()
                    .find(|(t, _)| *t == thread)
                {
                    Some(entry) => entry.1 = name.clone(),
                    None => self.totals.thread_names.push((thread, name.clone())),
                }
            }
            Record::End { time } => {
                self.set_time(*time);
                self.totals.end_time_ns.get_or_insert(*time);
            }
            Record::Alloc { .. } | Record::Realloc { .. } | Record::Free { .. } => {}
        }
        obs.on_other(&self.ctx, record);
    }

    #[inline]
    fn begin_event(&mut self, time: u64) {
        // The peak as of the previous event: a peak set by this event is seen from the next one on.
        self.ctx.peak_seq = self.totals.peak_seq;
        self.ctx.seq += 1;
        self.set_time(time);
    }

    #[inline]
    fn set_time(&mut self, time: u64) {
        self.ctx.time = time;
        self.totals.duration_ns = self.totals.duration_ns.max(time);
    }

    /// Ends the replay: the totals with the estimated amounts made whole numbers and the leaked
    /// bytes and count filled in, and the final heap.
    pub fn finish(mut self) -> (Totals, LiveHeap) {
        let (w, s, t) = (self.weights, self.sums, &mut self.totals);
        t.records += self.ctx.seq;
        if w.sample_bytes().is_none() {
            t.recorded_alloc_calls = s.alloc_calls;
            t.recorded_allocated_bytes = s.allocated_bytes;
        }
        t.alloc_calls = w.count(s.alloc_calls);
        t.calls_by_kind = s.calls_by_kind.map(|n| w.count(n));
        t.realloc_calls = w.count(s.realloc_calls);
        t.total_allocated_bytes = w.bytes(s.allocated_bytes);
        t.peak_live_bytes = w.bytes(s.peak.bytes);
        t.peak_live_count = w.count(s.peak.count);
        t.leaked_bytes = w.bytes(s.live.bytes);
        t.leaked_count = w.count(s.live.count);
        t.temporary_allocs = w.count(s.temporary);
        t.temporary_allocs_strict = w.count(s.temporary_strict);
        t.inherited_blocks = w.count(s.inherited.count);
        t.inherited_bytes = w.bytes(s.inherited.bytes);
        t.inherited_freed = w.count(s.inherited_freed);
        (self.totals, self.heap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memtrace_format::AllocKind;

    fn alloc(time: u64, stack: u32, size: u64, addr: u64) -> Record {
        Record::Alloc {
            time,
            kind: AllocKind::Malloc,
            stack,
            size,
            addr,
        }
    }

    #[test]
    fn temporary_follows_heaptrack() {
        let mut r = Replayer::new();
        let mut t = StackTable::default();
        // a = malloc; free(a): temporary.
        r.apply(1, &alloc(1, 1, 10, 0xa), &mut t);
        r.apply(1, &Record::Free { time: 2, addr: 0xa }, &mut t);
        // b = malloc; c = malloc (same size and stack); free(b): temporary for heaptrack, whose last
        // allocation info (size, stack) is b's too, though not by the strict definition; free(c):
        // not temporary (the free of b closed the window).
        r.apply(1, &alloc(3, 2, 10, 0xb), &mut t);
        r.apply(1, &alloc(4, 2, 10, 0xc), &mut t);
        r.apply(1, &Record::Free { time: 5, addr: 0xb }, &mut t);
        r.apply(1, &Record::Free { time: 6, addr: 0xc }, &mut t);
        // d = malloc; free(unknown); free(d): still temporary (unknown frees are ignored).
        r.apply(1, &alloc(7, 3, 10, 0xd), &mut t);
        r.apply(
            1,
            &Record::Free {
                time: 8,
                addr: 0x999,
            },
            &mut t,
        );
        r.apply(1, &Record::Free { time: 9, addr: 0xd }, &mut t);
        // e = malloc; f = malloc (other size); free(e): not temporary in either definition.
        r.apply(1, &alloc(10, 4, 8, 0xe), &mut t);
        r.apply(1, &alloc(11, 4, 9, 0xf), &mut t);
        r.apply(
            1,
            &Record::Free {
                time: 12,
                addr: 0xe,
            },
            &mut t,
        );
        r.apply(
            1,
            &Record::Free {
                time: 13,
                addr: 0xf,
            },
            &mut t,
        );
        let (totals, _) = r.finish();
        assert_eq!(totals.temporary_allocs, 3);
        assert_eq!(totals.temporary_allocs_strict, 2);
        assert_eq!(totals.unmatched_frees, 1);
        t.finalize(totals.peak_seq);
        assert_eq!(t.get(1).unwrap().temporary_count, 1);
        assert_eq!(t.get(2).unwrap().temporary_count, 1);
        assert_eq!(t.get(3).unwrap().temporary_count, 1);
        assert_eq!(t.get(4).unwrap().temporary_count, 0);
    }

    #[test]
    fn a_late_realloc_from_another_thread_keeps_the_new_owner_live() {
        let mut r = Replayer::new();
        let mut t = StackTable::default();
        // Thread 1: p = malloc(40). Thread 1 reallocs p -> q, but glibc freed p inside realloc and
        // thread 2's malloc got p, recorded before thread 1's realloc.
        r.apply(1, &alloc(1, 1, 40, 0x100), &mut t);
        r.apply(2, &alloc(2, 2, 40, 0x100), &mut t);
        r.apply(
            1,
            &Record::Realloc {
                time: 3,
                stack: 3,
                size: 4000,
                old: 0x100,
                new: 0x900,
            },
            &mut t,
        );
        r.apply(
            1,
            &Record::Free {
                time: 4,
                addr: 0x900,
            },
            &mut t,
        );
        let (totals, heap) = r.finish();
        assert_eq!((totals.missed_frees, totals.reordered_reallocs), (0, 1));
        assert_eq!(totals.unmatched_reallocs, 0);
        assert_eq!(heap.get(0x100), Some(Block { size: 40, stack: 2 }));
        assert_eq!((totals.leaked_bytes, totals.leaked_count), (40, 1));
        t.finalize(totals.peak_seq);
        assert_eq!(t.get(1).unwrap().live_count, 0);
        assert_eq!(t.get(2).unwrap().live_count, 1);
        assert_eq!(t.get(3).unwrap().live_count, 0);

        // The same thread reallocating its own block at a re-used address is an ordinary realloc.
        let mut r = Replayer::new();
        r.apply(1, &alloc(1, 1, 40, 0x100), &mut ());
        r.apply(2, &alloc(2, 2, 40, 0x100), &mut ());
        r.apply(
            2,
            &Record::Realloc {
                time: 3,
                stack: 3,
                size: 80,
                old: 0x100,
                new: 0x200,
            },
            &mut (),
        );
        let (totals, heap) = r.finish();
        assert_eq!((totals.missed_frees, totals.reordered_reallocs), (1, 0));
        assert_eq!((totals.leaked_bytes, heap.len()), (80, 1));
    }
}
