//! One step of native unwinding, fast: a per-thread table of framehop's unwind rules by code
//! address, in front of framehop itself. Owns the thread's unwinder caches; `stacks.rs` owns the
//! walk. Safe code: stack reads go through the caller's bounds-checked `read_stack`.
//!
//! framehop already caches a rule per address, but a cached step still costs about 150
//! instructions (a 64-bit division to index the cache, statistics, a generation check, the
//! generic rule interpreter), and a stack has 20 to 30 of them. Every rule framehop caches has one
//! of a few shapes: the caller's stack pointer (the CFA) is this frame's `sp` plus a constant or
//! its `bp` plus 16, and the caller's `bp` is unchanged or read from a fixed offset of `sp` or
//! from `bp` (`framehop::x86_64::UnwindRuleX86_64`). This module learns which shape framehop uses
//! at each address the first time the thread meets it, by running framehop there on two made-up
//! register sets over a made-up stack whose every word tells where it was read from, and then
//! applies that shape itself with the same checks framehop makes. A rule is only learnt when
//! framehop served both runs from its own rule cache (so it is one of those shapes, not a one-off
//! DWARF evaluation) and the second run agrees with what the learnt shape predicts; everything
//! else (DWARF expressions, a bp restored from below sp in the first frame) stays framehop's, frame
//! by frame, so every stack is exactly the one framehop alone would give.
//!
//! Two uses of the learnt rules beyond the walk: the tracer's own frames, the same few at every
//! capture site, are composed into one shortcut per site and caller ([`UnwindCaches::leave_tracer`]);
//! and the memo of recent stacks keeps the rule of each of their frames to prove or replay them
//! ([`UnwindCaches::step_at`], `memo.rs`).

use crate::modules::{ModuleMap, NativeUnwinder};
use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64};
use framehop::{FrameAddress, MayAllocateDuringUnwind, Unwinder};

/// The registers unwinding reads: framehop's rules and DWARF evaluation read no others (it may
/// restore more, which nothing then reads). Small, so the walk keeps them in machine registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Regs {
    /// Instruction pointer (a return address after the first frame).
    pub ip: u64,
    /// Stack pointer.
    pub sp: u64,
    /// Frame pointer (rbp).
    pub bp: u64,
}

/// What the thread knows of the rule at one code address, in 8 bytes: with a non-zero `cfa`,
/// CFA = sp + `cfa` and bp is unchanged (`bp` is [`SAME_BP`]) or was saved at sp + `bp`; with a
/// zero `cfa`, one of the constants below.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rule {
    cfa: u32,
    bp: u32,
}

/// A CFA rule's `bp` when the frame leaves bp alone.
const SAME_BP: u32 = u32::MAX;

/// Largest CFA offset learnt (framehop's own limit is `u16::MAX * 8`).
const MAX_CFA: u64 = 1 << 20;

impl Rule {
    /// Not learnable: framehop unwinds this frame every time.
    const FRAMEHOP: Rule = Rule { cfa: 0, bp: 0 };
    /// The outermost frame (its return address is undefined): the walk ends.
    const END: Rule = Rule { cfa: 0, bp: 1 };
    /// A frame-pointer frame: CFA = bp + 16, the caller's bp saved at bp.
    const FP: Rule = Rule { cfa: 0, bp: 2 };

    /// Unwinds one frame as framehop's cached rule does (`UnwindRuleX86_64::exec`): the caller's
    /// registers, `ip` being the return address; `None` where framehop stops or fails, which both
    /// end the walk, and for [`Rule::FRAMEHOP`] and [`Rule::END`].
    #[inline(always)]
    fn exec(self, regs: Regs, read_stack: impl ReadStack) -> Option<Regs> {
        let sp = regs.sp;
        let (new_sp, new_bp) = if self.cfa != 0 {
            let new_sp = sp.checked_add(u64::from(self.cfa))?;
            let new_bp = if self.bp == SAME_BP {
                regs.bp
            } else {
                read_stack(sp.checked_add(u64::from(self.bp))?).ok()?
            };
            (new_sp, new_bp)
        } else if self == Rule::FP {
            let bp = regs.bp;
            if bp == 0 {
                return None;
            }
            let new_sp = bp.checked_add(16)?;
            if new_sp <= sp {
                return None;
            }
            (new_sp, read_stack(bp).ok()?)
        } else {
            return None;
        };
        let ra = read_stack(new_sp - 8).ok()?;
        // framehop also stops when the frame did not advance (same sp, same ip): impossible
        // here, where the new sp is always above the old one.
        (ra != 0).then_some(Regs {
            ip: ra,
            sp: new_sp,
            bp: new_bp,
        })
    }
}

/// A learnt rule as the memo keeps it: the walk's step from one frame to its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step(Rule);

impl Step {
    /// A step that never applies (an empty slot of the memo).
    pub const NONE: Step = Step(Rule::FRAMEHOP);

    /// The caller's registers, exactly as the walk computes them (`None` where it stops).
    #[inline(always)]
    pub fn apply(self, regs: Regs, read_stack: impl ReadStack) -> Option<Regs> {
        self.0.exec(regs, read_stack)
    }

    /// The constant the caller's stack pointer is above the callee's, for a rule that reads
    /// neither bp nor anything but the return address to place the caller.
    pub fn sp_offset(self) -> Option<u64> {
        (self.0.cfa != 0).then_some(u64::from(self.0.cfa))
    }

    /// Whether the frame is the outermost: the walk ends there.
    pub fn is_end(self) -> bool {
        self.0 == Rule::END
    }
}

/// How the walk reads the stack: the word at an address, or `Err` outside the readable stack.
/// A small `Copy` closure, passed by value so that its bounds stay in registers.
pub trait ReadStack: Fn(u64) -> Result<u64, ()> + Copy {}
impl<F: Fn(u64) -> Result<u64, ()> + Copy> ReadStack for F {}

/// Entries in a thread's rule table (a power of two); 16 bytes each.
const RULES: usize = 2048;

/// framehop rule caches per thread (a power of two); about 16 KiB each.
const FRAMEHOP_CACHES: usize = 8;

/// One thread's unwinding state: learnt rules by address, framehop's rule caches behind them.
pub struct UnwindCaches {
    /// Direct-mapped by [`Self::key`]; key 0 is an empty slot (no return address is 0).
    rules: Box<[(u64, Rule); RULES]>,
    /// The module map the rules were learnt with (its address; maps are never freed): a new map
    /// may put other code at the same addresses.
    map: usize,
    /// framehop's caches. One holds 509 rules, direct-mapped by address; a program with deep,
    /// varied stacks (sqlite, an interpreter) has more return addresses in play than that, and
    /// every miss re-parses the module's CFI. Frames are spread over the caches by another
    /// function of the address, multiplying the capacity.
    framehop: Box<[CacheX86_64<MayAllocateDuringUnwind>]>,
    /// How the tracer's own frames are left from each capture site and caller (one capture site
    /// inlined into a function that several hooks call has a shortcut for each), and the entry
    /// the next one replaces.
    shortcuts: [Shortcut; SHORTCUTS],
    next_shortcut: usize,
}

/// Ways out of the tracer a thread keeps.
const SHORTCUTS: usize = 8;

/// Most tracer frames a [`Shortcut`] steps over.
const SHORTCUT_FRAMES: usize = 4;

/// The tracer's own frames from one capture site (the `pc` where the registers were read) to the
/// program's first frame, when each of them is unwound by a learnt constant-offset rule: that
/// frame's stack pointer is the capture's plus `offset`, its return address is read just below it,
/// and its bp is the capture's or was saved at the capture's sp plus `bp`. The return addresses
/// into the tracer on the way must still be at their slots: a capture site reached from another
/// caller takes the long way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shortcut {
    /// The capture site; 0 for none.
    pc: u64,
    offset: u32,
    bp: u32,
    /// Return addresses into the tracer, and their slots as offsets from the capture's sp.
    inner: [(u32, u64); SHORTCUT_FRAMES],
    inner_len: u8,
}

impl Shortcut {
    const NONE: Shortcut = Shortcut {
        pc: 0,
        offset: 0,
        bp: SAME_BP,
        inner: [(0, 0); SHORTCUT_FRAMES],
        inner_len: 0,
    };

    /// The program's first frame from the capture's registers, if the tracer's frames are still
    /// the ones this shortcut was composed from: every return address on the way into the tracer
    /// where it was, and the one it leads to outside the tracer (a shortcut composed for a caller
    /// with fewer tracer frames would otherwise stop inside the tracer).
    #[inline(always)]
    fn apply(&self, map: &ModuleMap, regs: Regs, read_stack: impl ReadStack) -> Option<Regs> {
        let sp = regs.sp;
        for &(slot, ra) in &self.inner[..usize::from(self.inner_len)] {
            if read_stack(sp + u64::from(slot)).ok()? != ra {
                return None;
            }
        }
        let new_sp = sp.checked_add(u64::from(self.offset))?;
        let bp = if self.bp == SAME_BP {
            regs.bp
        } else {
            read_stack(sp + u64::from(self.bp)).ok()?
        };
        let ra = read_stack(new_sp - 8).ok()?;
        (ra != 0 && !map.is_self(ra)).then_some(Regs {
            ip: ra,
            sp: new_sp,
            bp,
        })
    }
}

impl UnwindCaches {
    /// Empty caches.
    pub fn new() -> UnwindCaches {
        UnwindCaches {
            // Made on the heap, never on the stack first (32 KiB): a thread's caches are made on
            // its first allocation, on its own stack, which may be as small as `PTHREAD_STACK_MIN`
            // (glibc's timer helper threads). `Box::new` of the array only avoids the stack copy
            // where the optimizer sees through it.
            rules: match vec![(0, Rule::FRAMEHOP); RULES]
                .into_boxed_slice()
                .try_into()
            {
                Ok(rules) => rules,
                Err(_) => unreachable!("a vector of RULES rules is an array of them"),
            },
            map: 0,
            framehop: (0..FRAMEHOP_CACHES)
                .map(|_| CacheX86_64::new_in())
                .collect(),
            shortcuts: [Shortcut::NONE; SHORTCUTS],
            next_shortcut: 0,
        }
    }

    /// Readies the caches for a walk with `map`, forgetting the rules learnt with another map.
    #[inline(always)]
    pub fn prepare(&mut self, map: &ModuleMap) {
        let id = map as *const ModuleMap as usize;
        if self.map != id {
            self.forget(id);
        }
    }

    #[cold]
    #[inline(never)]
    fn forget(&mut self, map: usize) {
        self.rules.fill((0, Rule::FRAMEHOP));
        self.shortcuts = [Shortcut::NONE; SHORTCUTS];
        self.map = map;
    }

    /// The registers of the program's first frame, unwound from `regs` (read at the capture site
    /// `regs.ip`) past the tracer's own frames; `None` where the stack cannot be unwound that far.
    /// Exactly what unwinding frame by frame gives, which the first capture at a site does,
    /// learning the shortcut later ones take.
    #[inline(always)]
    pub fn leave_tracer(
        &mut self,
        map: &ModuleMap,
        regs: Regs,
        read_stack: impl ReadStack,
    ) -> Option<Regs> {
        for cut in &self.shortcuts {
            if cut.pc == regs.ip
                && let Some(out) = cut.apply(map, regs, read_stack)
            {
                return Some(out);
            }
        }
        self.leave_tracer_slowly(map, regs, read_stack)
    }

    #[inline(never)]
    fn leave_tracer_slowly(
        &mut self,
        map: &ModuleMap,
        regs: Regs,
        read_stack: impl ReadStack,
    ) -> Option<Regs> {
        let first = FrameAddress::from_instruction_pointer(regs.ip);
        let mut out = self.unwind_frame(map, first, regs, read_stack)?;
        while map.is_self(out.ip) {
            out = self.unwind_return(map, out, read_stack)?;
        }
        // Every rule on the way is in the table now, unless displaced by another on the way.
        if let Some(cut) = self.compose(map, regs, read_stack)
            && cut.apply(map, regs, read_stack) == Some(out)
        {
            self.shortcuts[self.next_shortcut] = cut;
            self.next_shortcut = (self.next_shortcut + 1) % SHORTCUTS;
        }
        Some(out)
    }

    /// The shortcut from the capture site `regs.ip` out of the tracer, composed from the learnt
    /// rules of its frames; `None` if one of them is not a constant-offset rule.
    fn compose(&self, map: &ModuleMap, regs: Regs, read_stack: impl ReadStack) -> Option<Shortcut> {
        let mut cut = Shortcut {
            pc: regs.ip,
            ..Shortcut::NONE
        };
        let mut key = Self::key(FrameAddress::from_instruction_pointer(regs.ip));
        let mut offset = 0u64;
        loop {
            let (k, rule) = self.rules[Self::slot(key)];
            if k != key || rule.cfa == 0 {
                return None;
            }
            if rule.bp != SAME_BP {
                cut.bp = u32::try_from(offset + u64::from(rule.bp)).ok()?;
            }
            offset += u64::from(rule.cfa);
            let ra = read_stack(regs.sp.checked_add(offset)? - 8).ok()?;
            if !map.is_self(ra) {
                cut.offset = u32::try_from(offset).ok()?;
                return Some(cut);
            }
            let i = usize::from(cut.inner_len);
            *cut.inner.get_mut(i)? = (u32::try_from(offset - 8).ok()?, ra);
            cut.inner_len += 1;
            key = ra;
        }
    }

    /// The rule learnt at return address `ret`, for the memo to keep and replay (`memo.rs`),
    /// learning it if the table does not hold it (it may have been displaced since the walk that
    /// used it); `None` where framehop unwinds the frame itself.
    pub fn step_at(&mut self, map: &ModuleMap, ret: u64) -> Option<Step> {
        let address = FrameAddress::from_return_address(ret)?;
        let (key, mut rule) = self.rules[Self::slot(ret)];
        if key != ret {
            let cache = self.framehop_cache(address.address_for_lookup());
            // Puts the rule in framehop's cache first, as the walk's own unwinding would have.
            let _ = probe(&map.unwinder, cache, address, PROBE_SP, PROBE_BP);
            rule = learn_rule(&map.unwinder, cache, address);
            self.rules[Self::slot(ret)] = (ret, rule);
        }
        (rule != Rule::FRAMEHOP).then_some(Step(rule))
    }

    /// How many addresses have a learnt rule (for tests).
    #[cfg(test)]
    pub fn learnt(&self) -> usize {
        self.rules
            .iter()
            .filter(|&&(k, r)| k != 0 && r != Rule::FRAMEHOP)
            .count()
    }

    /// The table slot of a code address: its low bits. Hot return addresses cluster in a few
    /// stretches of code (an interpreter's evaluation loop holds hundreds), and consecutive
    /// addresses never collide this way, where a hash makes them collide at random: in CPython,
    /// eight times fewer rules are learnt again after being displaced. It is also the shortest
    /// step from a return address to its rule, which the walk waits for at every frame.
    #[inline(always)]
    fn slot(address: u64) -> usize {
        address as usize & (RULES - 1)
    }

    /// The table key of `address`: the address itself, with the top bit set for an instruction
    /// pointer (the first frame, whose rule may differ from a return address's), which no user
    /// space address has.
    #[inline(always)]
    fn key(address: FrameAddress) -> u64 {
        match address {
            FrameAddress::ReturnAddress(a) => a.get(),
            FrameAddress::InstructionPointer(a) => a | 1 << 63,
        }
    }

    /// Unwinds the frame executing at `address` with registers `regs`: the caller's registers
    /// (`ip` is the return address), or `None` at the end of the stack or when the frame cannot be
    /// unwound. Exactly what `framehop`'s `unwind_frame` gives with `map`'s unwinder (whose
    /// `prepare` was called), where it gives a non-zero return address.
    #[inline(always)]
    pub fn unwind_frame(
        &mut self,
        map: &ModuleMap,
        address: FrameAddress,
        regs: Regs,
        read_stack: impl ReadStack,
    ) -> Option<Regs> {
        let key = Self::key(address);
        let (k, rule) = self.rules[Self::slot(key)];
        if k != key {
            return self.learn(&map.unwinder, address, regs, read_stack);
        }
        if rule == Rule::FRAMEHOP {
            return self.framehop(&map.unwinder, address, regs, read_stack);
        }
        rule.exec(regs, read_stack)
    }

    /// [`Self::unwind_frame`] at the return address `regs.ip` (every frame but the first): the
    /// hot path, with the rare cases out of line.
    #[inline(always)]
    pub fn unwind_return(
        &mut self,
        map: &ModuleMap,
        regs: Regs,
        read_stack: impl ReadStack,
    ) -> Option<Regs> {
        let (key, rule) = self.rules[Self::slot(regs.ip)];
        if key == regs.ip && (rule.cfa != 0 || rule == Rule::FP) {
            return rule.exec(regs, read_stack);
        }
        // Through memory, on this path only: the walk keeps `regs` in machine registers.
        let mut out = regs;
        self.unwind_cold(map, &mut out, read_stack).then_some(out)
    }

    #[inline(never)]
    fn unwind_cold(
        &mut self,
        map: &ModuleMap,
        regs: &mut Regs,
        read_stack: impl ReadStack,
    ) -> bool {
        let Some(address) = FrameAddress::from_return_address(regs.ip) else {
            return false;
        };
        match self.unwind_frame(map, address, *regs, read_stack) {
            Some(r) => {
                *regs = r;
                true
            }
            None => false,
        }
    }

    /// framehop's cache for rules at `address`: framehop indexes within a cache by
    /// `address % 509`, so the quotient picks the cache.
    fn framehop_cache(&mut self, address: u64) -> &mut CacheX86_64<MayAllocateDuringUnwind> {
        &mut self.framehop[((address / 509) as usize) & (FRAMEHOP_CACHES - 1)]
    }

    /// Unwinds one frame with framehop.
    #[inline(never)]
    fn framehop(
        &mut self,
        unwinder: &NativeUnwinder,
        address: FrameAddress,
        regs: Regs,
        mut read_stack: impl ReadStack,
    ) -> Option<Regs> {
        let cache = self.framehop_cache(address.address_for_lookup());
        let mut r = UnwindRegsX86_64::new(regs.ip, regs.sp, regs.bp);
        // A DWARF evaluation may give a return address of 0: the end, as for the rules.
        unwinder
            .unwind_frame(address, &mut r, cache, &mut read_stack)
            .ok()
            .flatten()
            .filter(|&ra| ra != 0)?;
        Some(Regs {
            ip: r.ip(),
            sp: r.sp(),
            bp: r.bp(),
        })
    }

    /// An address met for the first time: unwinds it with framehop, then learns its rule.
    #[cold]
    #[inline(never)]
    fn learn(
        &mut self,
        unwinder: &NativeUnwinder,
        address: FrameAddress,
        regs: Regs,
        read_stack: impl ReadStack,
    ) -> Option<Regs> {
        let result = self.framehop(unwinder, address, regs, read_stack);
        let rule = learn_rule(
            unwinder,
            self.framehop_cache(address.address_for_lookup()),
            address,
        );
        let key = Self::key(address);
        self.rules[Self::slot(key)] = (key, rule);
        result
    }
}

/// Made-up stack pointer and frame pointer of the first probe (the second adds [`PROBE_SHIFT`]),
/// far apart, and the mark on every word of the made-up stack: the word at `a` reads `a ^ WORD`.
const PROBE_SP: u64 = 0x1000_0000_0000;
const PROBE_BP: u64 = 0x2000_0000_0000;
const PROBE_SHIFT: u64 = 0x10_0000;
const WORD: u64 = 0x4000_0000_0000_0000;

/// Runs framehop at `address` over the made-up stack from (`sp`, `bp`).
fn probe(
    unwinder: &NativeUnwinder,
    cache: &mut CacheX86_64<MayAllocateDuringUnwind>,
    address: FrameAddress,
    sp: u64,
    bp: u64,
) -> Result<Option<Regs>, ()> {
    let mut regs = UnwindRegsX86_64::new(address.address(), sp, bp);
    let mut read = |a: u64| Ok(a ^ WORD);
    match unwinder.unwind_frame(address, &mut regs, cache, &mut read) {
        Ok(Some(_)) => Ok(Some(Regs {
            ip: regs.ip(),
            sp: regs.sp(),
            bp: regs.bp(),
        })),
        Ok(None) => Ok(None),
        Err(_) => Err(()),
    }
}

/// The shape of framehop's rule at `address`, from a probe that started at (`sp`, `bp`) and gave
/// `out`.
fn shape(sp: u64, bp: u64, out: &Regs) -> Option<Rule> {
    let new_sp = out.sp;
    if out.ip != (new_sp.wrapping_sub(8) ^ WORD) {
        return None;
    }
    if new_sp == bp + 16 {
        return (out.bp == bp ^ WORD).then_some(Rule::FP);
    }
    // Multiples of 8, as framehop's are: an 8-aligned stack pointer stays aligned.
    let cfa = new_sp
        .checked_sub(sp)
        .filter(|&c| (8..MAX_CFA).contains(&c) && c % 8 == 0)?;
    let saved_bp = if out.bp == bp {
        SAME_BP
    } else {
        let at = (out.bp ^ WORD)
            .checked_sub(sp)
            .filter(|&o| o < MAX_CFA && o % 8 == 0)?;
        at as u32
    };
    Some(Rule {
        cfa: cfa as u32,
        bp: saved_bp,
    })
}

/// Learns the rule framehop applies at `address` (see the module docs); [`Rule::FRAMEHOP`] when
/// it is not one of the shapes, or not cached by framehop. `cache` is framehop's cache for the
/// address, which has just unwound it.
fn learn_rule(
    unwinder: &NativeUnwinder,
    cache: &mut CacheX86_64<MayAllocateDuringUnwind>,
    address: FrameAddress,
) -> Rule {
    let hits = cache.stats().hit_count;
    let first = probe(unwinder, cache, address, PROBE_SP, PROBE_BP);
    let (sp2, bp2) = (PROBE_SP + PROBE_SHIFT, PROBE_BP + 2 * PROBE_SHIFT + 8);
    let second = probe(unwinder, cache, address, sp2, bp2);
    if cache.stats().hit_count != hits + 2 {
        // Not from framehop's rule cache: a DWARF evaluation done afresh each time.
        return Rule::FRAMEHOP;
    }
    let rule = match first {
        Ok(None) => Rule::END,
        Ok(Some(out)) => match shape(PROBE_SP, PROBE_BP, &out) {
            Some(rule) => rule,
            None => return Rule::FRAMEHOP,
        },
        Err(()) => return Rule::FRAMEHOP,
    };
    // The learnt shape must predict the second probe exactly.
    let start = Regs {
        ip: address.address(),
        sp: sp2,
        bp: bp2,
    };
    if second == Ok(rule.exec(start, |a: u64| Ok(a ^ WORD))) {
        rule
    } else {
        Rule::FRAMEHOP
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use framehop::x86_64::UnwindRuleX86_64;

    /// The shapes above cover every rule framehop can cache: this match stops compiling when
    /// framehop adds one, and the module docs must then be checked again.
    #[test]
    fn every_framehop_rule_has_a_shape() {
        let rules = [
            UnwindRuleX86_64::EndOfStack,
            UnwindRuleX86_64::JustReturn,
            UnwindRuleX86_64::JustReturnIfFirstFrameOtherwiseFp,
            UnwindRuleX86_64::OffsetSp { sp_offset_by_8: 3 },
            UnwindRuleX86_64::OffsetSpAndRestoreBp {
                sp_offset_by_8: 3,
                bp_storage_offset_from_sp_by_8: 1,
            },
            UnwindRuleX86_64::UseFramePointer,
            UnwindRuleX86_64::OffsetSpAndPopRegisters {
                sp_offset_by_8: 1,
                register_count: 0,
                encoded_registers_to_pop: 0,
            },
        ];
        for r in rules {
            let shape = match r {
                UnwindRuleX86_64::EndOfStack => "end",
                UnwindRuleX86_64::JustReturn
                | UnwindRuleX86_64::OffsetSp { .. }
                | UnwindRuleX86_64::OffsetSpAndRestoreBp { .. }
                | UnwindRuleX86_64::OffsetSpAndPopRegisters { .. } => "sp",
                UnwindRuleX86_64::JustReturnIfFirstFrameOtherwiseFp
                | UnwindRuleX86_64::UseFramePointer => "sp or fp",
            };
            assert!(!shape.is_empty());
        }
    }

    #[test]
    fn shapes_are_read_from_probes() {
        let (sp, bp) = (PROBE_SP, PROBE_BP);
        let out = |new_sp: u64, new_bp: u64| Regs {
            ip: (new_sp - 8) ^ WORD,
            sp: new_sp,
            bp: new_bp,
        };
        assert_eq!(
            shape(sp, bp, &out(sp + 8, bp)),
            Some(Rule {
                cfa: 8,
                bp: SAME_BP
            })
        );
        assert_eq!(
            shape(sp, bp, &out(sp + 48, (sp + 32) ^ WORD)),
            Some(Rule { cfa: 48, bp: 32 })
        );
        assert_eq!(shape(sp, bp, &out(bp + 16, bp ^ WORD)), Some(Rule::FP));
        // A bp saved below sp, a CFA that does not move, a return address from elsewhere.
        assert_eq!(shape(sp, bp, &out(sp + 16, (sp - 8) ^ WORD)), None);
        assert_eq!(shape(sp, bp, &out(sp, bp)), None);
        let odd = Regs {
            ip: sp ^ WORD,
            sp: sp + 16,
            bp,
        };
        assert_eq!(shape(sp, bp, &odd), None);
    }

    #[test]
    fn rules_stop_where_framehop_stops() {
        let stack: Vec<u64> = vec![0x11, 0x22, 0x33, 0x44, 0, 0x66];
        let base = stack.as_ptr() as u64;
        let stack = &stack;
        let read = move |a: u64| {
            let i = a.checked_sub(base).ok_or(())? / 8;
            stack.get(i as usize).copied().ok_or(())
        };
        let at = |sp, bp| Regs { ip: 1, sp, bp };
        let r = Rule { cfa: 16, bp: 16 };
        let caller = r.exec(at(base, base + 8), read);
        assert_eq!(
            caller,
            Some(Regs {
                ip: 0x22,
                sp: base + 16,
                bp: 0x33
            })
        );
        // The return address read is 0: the end.
        assert_eq!(Rule::FP.exec(at(base, base + 24), read), None);
        // Out of the stack.
        let far = Rule {
            cfa: 64,
            bp: SAME_BP,
        };
        assert_eq!(far.exec(at(base, 0), read), None);
        assert_eq!(Rule::FP.exec(at(base, 0), read), None, "bp 0 ends");
        assert_eq!(Rule::END.exec(at(base, base), read), None);
    }
}
