//! The replay agrees with a trivial model (a HashMap of live blocks and a copy of every stack's live
//! bytes at each new peak) on random alloc/realloc/free sequences spread over threads, written with
//! the real encoder and read back through the real reader (Fil's model-based test). The sequences
//! are deliberately sloppy (frees of unknown addresses, allocations at live addresses, reallocs from
//! other threads), so the model spells out the replay's rules for those too.

use memtrace_analyzer::report::analyze;
use memtrace_format::builder::TraceBuilder;
use memtrace_format::{AllocKind, Record, Trace};
use proptest::prelude::*;
use std::collections::HashMap;

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        slot: u64,
        size: u64,
        stack: u32,
    },
    Realloc {
        old: Option<u64>,
        new: u64,
        size: u64,
        stack: u32,
    },
    Free {
        slot: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0u64..12;
    let size = 0u64..5000;
    let stack = 0u32..6;
    prop_oneof![
        4 => (slot.clone(), size.clone(), stack.clone()).prop_map(|(slot, size, stack)| Op::Alloc { slot, size, stack }),
        2 => (prop::option::of(slot.clone()), slot.clone(), size, stack)
            .prop_map(|(old, new, size, stack)| Op::Realloc { old, new, size, stack }),
        4 => slot.prop_map(|slot| Op::Free { slot }),
    ]
}

fn addr(slot: u64) -> u64 {
    0x10_0000 + slot * 0x40
}

#[derive(Default, Debug, PartialEq, Eq, Clone, Copy)]
struct PerStack {
    alloc_bytes: u64,
    alloc_count: u64,
    live_bytes: u64,
    live_count: u64,
    peak_bytes: u64,
    peak_count: u64,
    temporary_count: u64,
    temporary_bytes: u64,
}

#[derive(Default)]
struct Model {
    live: HashMap<u64, (u64, u32)>,
    stacks: HashMap<u32, PerStack>,
    /// Per thread, heaptrack's last allocation info (size, stack) and its address.
    last: HashMap<u32, ((u64, u32), u64)>,
    displaced: HashMap<u64, u32>,
    alloc_calls: u64,
    free_calls: u64,
    total: u64,
    peak: u64,
    peak_count: u64,
    peak_time: u64,
    peak_shares: HashMap<u32, (u64, u64)>,
    temporary: u64,
    temporary_strict: u64,
    unmatched_frees: u64,
    unmatched_reallocs: u64,
    missed_frees: u64,
    reordered_reallocs: u64,
}

impl Model {
    fn live_bytes(&self) -> u64 {
        self.live.values().map(|b| b.0).sum()
    }

    fn release(&mut self, a: u64, temporary: bool) {
        let (size, stack) = self.live.remove(&a).unwrap();
        let s = self.stacks.entry(stack).or_default();
        s.live_bytes -= size;
        s.live_count -= 1;
        if temporary {
            s.temporary_count += 1;
            s.temporary_bytes += size;
            self.temporary += 1;
        }
    }

    fn free(&mut self, thread: u32, a: u64) -> bool {
        let Some(&block) = self.live.get(&a) else {
            return false;
        };
        let last = self.last.remove(&thread);
        let temporary = last.is_some_and(|(info, _)| info == block);
        if last.is_some_and(|(_, addr)| addr == a) {
            self.temporary_strict += 1;
        }
        self.release(a, temporary);
        true
    }

    fn realloc(&mut self, thread: u32, old: u64) {
        match self.displaced.get(&old) {
            Some(&t) if t != thread => {
                self.displaced.remove(&old);
                self.missed_frees -= 1;
                self.reordered_reallocs += 1;
            }
            _ => {
                if !self.free(thread, old) {
                    self.unmatched_reallocs += 1;
                }
            }
        }
    }

    fn alloc(&mut self, time: u64, thread: u32, a: u64, size: u64, stack: u32) {
        if self.live.contains_key(&a) {
            self.release(a, false);
            self.missed_frees += 1;
            self.displaced.insert(a, thread);
        }
        self.live.insert(a, (size, stack));
        let s = self.stacks.entry(stack).or_default();
        s.alloc_bytes += size;
        s.alloc_count += 1;
        s.live_bytes += size;
        s.live_count += 1;
        self.alloc_calls += 1;
        self.total += size;
        self.last.insert(thread, ((size, stack), a));
        let live = self.live_bytes();
        if live > self.peak {
            self.peak = live;
            self.peak_count = self.live.len() as u64;
            self.peak_time = time;
            self.peak_shares = self
                .stacks
                .iter()
                .map(|(k, s)| (*k, (s.live_bytes, s.live_count)))
                .collect();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn replay_matches_the_model(ops in prop::collection::vec((op(), 1u32..4), 0..300)) {
        let mut b = TraceBuilder::new(&TraceBuilder::test_header());
        let mut m = Model::default();
        for (i, (op, thread)) in ops.iter().enumerate() {
            let time = i as u64 * 3 + 1;
            match *op {
                Op::Alloc { slot, size, stack } => {
                    b.push(*thread, &Record::Alloc { time, kind: AllocKind::Malloc, stack, size, addr: addr(slot) });
                    m.alloc(time, *thread, addr(slot), size, stack);
                }
                Op::Realloc { old, new, size, stack } => {
                    let old = old.map_or(0, addr);
                    b.push(*thread, &Record::Realloc { time, stack, size, old, new: addr(new) });
                    if old != 0 {
                        m.realloc(*thread, old);
                    }
                    m.alloc(time, *thread, addr(new), size, stack);
                }
                Op::Free { slot } => {
                    b.free(*thread, time, addr(slot));
                    m.free_calls += 1;
                    if !m.free(*thread, addr(slot)) {
                        m.unmatched_frees += 1;
                    }
                }
            }
        }
        let trace = Trace::from_bytes(b.finish(), "model").unwrap();
        let a = analyze(&trace, std::path::Path::new("model.bin"));
        let t = &a.totals;
        prop_assert_eq!(t.alloc_calls, m.alloc_calls);
        prop_assert_eq!(t.free_calls, m.free_calls);
        prop_assert_eq!(t.total_allocated_bytes, m.total);
        prop_assert_eq!(t.peak_live_bytes, m.peak);
        prop_assert_eq!(t.peak_live_count, m.peak_count);
        prop_assert_eq!(t.peak_time_ns, m.peak_time);
        prop_assert_eq!(t.leaked_bytes, m.live_bytes());
        prop_assert_eq!(t.leaked_count, m.live.len() as u64);
        prop_assert_eq!(t.temporary_allocs, m.temporary);
        prop_assert_eq!(t.unmatched_frees, m.unmatched_frees);
        prop_assert_eq!(t.unmatched_reallocs, m.unmatched_reallocs);
        prop_assert_eq!(t.temporary_allocs_strict, m.temporary_strict);
        prop_assert_eq!(t.missed_frees, m.missed_frees);
        prop_assert_eq!(t.reordered_reallocs, m.reordered_reallocs);
        prop_assert_eq!(a.stacks.len(), m.stacks.len());
        for (id, want) in &m.stacks {
            let got = a.stacks.get(*id).unwrap();
            let (pb, pc) = m.peak_shares.get(id).copied().unwrap_or((0, 0));
            let want = PerStack { peak_bytes: pb, peak_count: pc, ..*want };
            let got = PerStack {
                alloc_bytes: got.alloc_bytes,
                alloc_count: got.alloc_count,
                live_bytes: got.live_bytes,
                live_count: got.live_count,
                peak_bytes: got.peak_bytes,
                peak_count: got.peak_count,
                temporary_count: got.temporary_count,
                temporary_bytes: got.temporary_bytes,
            };
            prop_assert_eq!(got, want, "stack {}", id);
        }
    }
}
