//! Signal marks: with `MEMTRACE_SNAPSHOT_SIGNAL=USR2` (a name, with or without `SIG`, or a number),
//! each delivery of that signal records a mark `signal-1`, `signal-2`, ... so that a running
//! service can be snapshotted from outside (`kill -USR2 <pid>`).
//!
//! The handler does one thing: it adds one to an atomic counter (async-signal-safe, no errno
//! change). It must not write the mark itself: the record path takes the thread's writer, which the
//! interrupted code may be using (the guard could be held mid-record), may allocate its per-thread
//! state on a thread's first event, and may take the sink's lock to grow the file, none of which is
//! safe in a signal handler. Instead the next hook call on any thread, inside the tracer's guard,
//! sees the counter (one relaxed load on the hot path, in `init::ensure_started`) and writes the
//! pending marks before its own event; the exit handlers write any still pending. A mark thus
//! carries the time of the first allocator call after the delivery, and since no heap event can
//! come between the delivery and that call, the heap at the mark is the heap at the delivery.
//! Marks delivered while the program makes no allocator call at all until it is killed are lost.
//!
//! The handler is installed with `SA_RESTART` (system calls the signal interrupts resume, as if
//! nothing happened: the program must not see `EINTR` because of us) and `SA_ONSTACK` (it runs on
//! the thread's alternate signal stack when there is one; Go's runtime, for one, insists on it).
//! Only the chosen signal is touched; a handler the program installs later for it replaces ours.

use crate::record;
use core::ffi::c_int;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Deliveries not yet recorded.
static PENDING: AtomicU32 = AtomicU32::new(0);
/// Marks recorded so far (the number in the next label is one more).
static RECORDED: AtomicU64 = AtomicU64::new(0);

/// The signal number `value` names: `USR2`, `SIGUSR2`, `usr2`, `RTMIN+3`, or `1` to `64`. Signals
/// that cannot be caught (KILL, STOP) or that report faults (SEGV, BUS, FPE, ILL, TRAP, ABRT, SYS)
/// are refused.
pub fn parse(value: &str) -> Result<c_int, String> {
    let v = value.trim();
    let upper = v.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let named: &[(&str, c_int)] = &[
        ("HUP", libc::SIGHUP),
        ("INT", libc::SIGINT),
        ("QUIT", libc::SIGQUIT),
        ("USR1", libc::SIGUSR1),
        ("USR2", libc::SIGUSR2),
        ("PIPE", libc::SIGPIPE),
        ("ALRM", libc::SIGALRM),
        ("TERM", libc::SIGTERM),
        ("CHLD", libc::SIGCHLD),
        ("CONT", libc::SIGCONT),
        ("TSTP", libc::SIGTSTP),
        ("TTIN", libc::SIGTTIN),
        ("TTOU", libc::SIGTTOU),
        ("URG", libc::SIGURG),
        ("XCPU", libc::SIGXCPU),
        ("XFSZ", libc::SIGXFSZ),
        ("VTALRM", libc::SIGVTALRM),
        ("PROF", libc::SIGPROF),
        ("WINCH", libc::SIGWINCH),
        ("IO", libc::SIGIO),
        ("PWR", libc::SIGPWR),
    ];
    let bad = || {
        format!(
            "MEMTRACE_SNAPSHOT_SIGNAL={v:?} is not a signal memtrace can use (try USR2, or a \
             number); no signal marks"
        )
    };
    let sig = if let Some(&(_, n)) = named.iter().find(|(n, _)| *n == name) {
        n
    } else if let Some(k) = name.strip_prefix("RTMIN+") {
        // glibc keeps the first two real-time signals for itself: SIGRTMIN is 34.
        34 + k.parse::<c_int>().map_err(|_| bad())?
    } else if name == "RTMIN" {
        34
    } else {
        name.parse::<c_int>().map_err(|_| bad())?
    };
    let faults = [
        libc::SIGKILL,
        libc::SIGSTOP,
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGFPE,
        libc::SIGILL,
        libc::SIGTRAP,
        libc::SIGABRT,
        libc::SIGSYS,
    ];
    if !(1..=64).contains(&sig) || faults.contains(&sig) {
        return Err(bad());
    }
    Ok(sig)
}

extern "C" fn on_signal(_sig: c_int) {
    PENDING.fetch_add(1, Ordering::Relaxed);
}

/// Installs the mark handler for the signal `value` names. Called once, from start-up, when
/// `MEMTRACE_SNAPSHOT_SIGNAL` is set; `Err` says why not (for one line on stderr).
pub fn install(value: &str) -> Result<(), String> {
    let sig = parse(value)?;
    // SAFETY:
    // - `sa` is a zeroed `sigaction`, a valid value (no handler, empty mask, no flags) that we then
    //   fill; `sigemptyset` initializes its mask;
    // - `on_signal` has the `void (*)(int)` signature the kernel calls without SA_SIGINFO, and only
    //   does an atomic add, which is async-signal-safe;
    // - a NULL old-action pointer is allowed.
    let rc = unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = libc::SA_RESTART | libc::SA_ONSTACK;
        libc::sigaction(sig, &sa, core::ptr::null_mut())
    };
    if rc != 0 {
        return Err(format!(
            "MEMTRACE_SNAPSHOT_SIGNAL={value}: cannot install a handler for signal {sig}; no \
             signal marks"
        ));
    }
    Ok(())
}

/// Whether a delivery waits to be recorded: the hot path's check, one relaxed load.
#[inline(always)]
pub fn pending() -> bool {
    PENDING.load(Ordering::Relaxed) != 0
}

/// Records the pending marks from the calling thread. The caller holds the re-entrancy guard,
/// tracing is active, and no `thread::with` is in progress on this thread.
#[cold]
#[inline(never)]
pub fn record_pending() {
    let n = PENDING.swap(0, Ordering::Relaxed);
    for _ in 0..n {
        let k = RECORDED.fetch_add(1, Ordering::Relaxed) + 1;
        let mut buf = [0u8; 32];
        let len = label(k, &mut buf);
        record::mark(&buf[..len]);
    }
}

/// Writes `signal-<k>` into `buf` without allocating; returns its length.
fn label(k: u64, buf: &mut [u8; 32]) -> usize {
    const PREFIX: &[u8] = b"signal-";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 20];
    let mut n = k;
    let mut d = 0;
    loop {
        digits[d] = b'0' + (n % 10) as u8;
        d += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..d {
        buf[PREFIX.len() + i] = digits[d - 1 - i];
    }
    PREFIX.len() + d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_and_numbers() {
        assert_eq!(parse("USR2"), Ok(libc::SIGUSR2));
        assert_eq!(parse("SIGUSR2"), Ok(libc::SIGUSR2));
        assert_eq!(parse(" usr1 "), Ok(libc::SIGUSR1));
        assert_eq!(parse("12"), Ok(12));
        assert_eq!(parse("RTMIN+2"), Ok(36));
        for bad in ["", "KILL", "9", "SIGSTOP", "SEGV", "0", "65", "USR3", "-1"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn labels() {
        let mut buf = [0u8; 32];
        let n = label(1, &mut buf);
        assert_eq!(&buf[..n], b"signal-1");
        let n = label(u64::MAX, &mut buf);
        assert_eq!(&buf[..n], b"signal-18446744073709551615");
    }
}
