//! Writes a synthetic trace for benchmarking the analyzer: `cargo run --release -p memtrace-analyzer
//! --example synth_trace -- OUT.trace [ALLOC_CALLS] [THREADS] [pairs]`.
//!
//! With `pairs`, every allocation is freed by the next record (the cheapest possible replay). Otherwise
//! the workload looks like a busy program: mostly short-lived blocks (freed a few calls later), a
//! slowly growing long-lived set, some reallocs, a few thousand distinct stacks, and addresses reused
//! the way an allocator's free lists reuse them.

use memtrace_format::builder::TraceBuilder;
use memtrace_format::{AllocKind, Frame, Record};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let out = args
        .next()
        .expect("usage: synth_trace OUT [ALLOC_CALLS] [THREADS]");
    let calls: u64 = args.next().map_or(20_000_000, |s| s.parse().unwrap());
    let threads: u32 = args.next().map_or(4, |s| s.parse().unwrap());
    let pairs = args.next().as_deref() == Some("pairs");
    let stacks = 4000u32;

    let mut b = TraceBuilder::new(&TraceBuilder::test_header());
    for id in 1..=stacks {
        let frames: Vec<Frame> = (0..20)
            .map(|i| Frame {
                module: 0,
                offset: 0x40_0000 + u64::from(id) * 64 + i * 4096,
            })
            .collect();
        b.stack(1, id, &frames);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut free_list: Vec<u64> = Vec::new();
    let mut next_addr = 0x5555_0000_0000u64;
    // Per thread: recently allocated blocks (short-lived) and a long-lived set.
    let mut recent: Vec<Vec<(u64, u64)>> = vec![Vec::new(); threads as usize];
    let mut long: Vec<(u64, u64)> = Vec::new();
    let mut time = 0u64;
    let mut made = 0u64;
    while pairs && made < calls {
        let t = (made % u64::from(threads)) as u32 + 1;
        let stack = 1 + (made % u64::from(stacks)) as u32;
        let addr = 0x5555_0000_0000 + (made % 64) * 64;
        b.malloc(t, made * 2, stack, 16 + made % 512, addr);
        b.free(t, made * 2 + 1, addr);
        made += 1;
    }
    while made < calls {
        let t = rng.below(u64::from(threads)) as u32;
        let r = &mut recent[t as usize];
        time += 1 + rng.below(50);
        let roll = rng.below(100);
        if roll < 45 || r.is_empty() {
            let addr = free_list.pop().unwrap_or_else(|| {
                next_addr += 64;
                next_addr
            });
            let size = 8 + rng.below(256) * if rng.below(10) == 0 { 64 } else { 1 };
            let stack = 1 + (rng.below(u64::from(stacks)) as u32);
            b.push(
                t + 1,
                &Record::Alloc {
                    time,
                    kind: AllocKind::Malloc,
                    stack,
                    size,
                    addr,
                },
            );
            made += 1;
            if rng.below(50) == 0 {
                long.push((addr, size));
            } else {
                r.push((addr, size));
            }
        } else if roll < 50 {
            let i = rng.below(r.len() as u64) as usize;
            let (old, size) = r[i];
            let new = if rng.below(2) == 0 {
                old
            } else {
                free_list.push(old);
                next_addr += 64;
                next_addr
            };
            let stack = 1 + (rng.below(u64::from(stacks)) as u32);
            b.push(
                t + 1,
                &Record::Realloc {
                    time,
                    stack,
                    size: size * 2,
                    old,
                    new,
                },
            );
            r[i] = (new, size * 2);
            made += 1;
        } else {
            let i = r.len() - 1 - (rng.below(r.len().min(8) as u64) as usize);
            let (addr, _) = r.swap_remove(i);
            b.free(t + 1, time, addr);
            free_list.push(addr);
        }
        if long.len() > 200_000 {
            let (addr, _) = long.swap_remove(rng.below(long.len() as u64) as usize);
            b.free(1, time, addr);
            free_list.push(addr);
        }
    }
    b.push(1, &Record::End { time: time + 1 });
    let bytes = b.finish();
    std::fs::write(&out, &bytes).unwrap();
    eprintln!("{out}: {made} allocation calls, {} MiB", bytes.len() >> 20);
}
