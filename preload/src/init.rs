//! Start-up, shut-down and fork: the tracer's global state machine.
//!
//! The tracer starts from its ELF constructor, or earlier from the first hook call once libc is
//! initialized (libstdc++ allocates before our constructor runs). Until it is active, and after it
//! is disabled, every hook just forwards to the real allocator. Exit writes an end record from an
//! `atexit` handler registered at start (it runs after the program's own handlers); the file is cut
//! to its used length from our ELF destructor, which runs after the program's libraries' ones.

use crate::config::{self, Config};
use crate::sink::SINK;
use crate::{clock, guard, modules, python, real, record, signal, stacks, thread};
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use memtrace_format::Header;
use memtrace_format::encode::encode_file_header;
use std::sync::OnceLock;

const UNINIT: u8 = 0;
const STARTING: u8 = 1;
const ACTIVE: u8 = 2;
const OFF: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(UNINIT);
static CONFIG: OnceLock<Config> = OnceLock::new();
static OUTPUT: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());
/// Set once the process is exiting: nothing may be written to stderr any more.
static EXITING: AtomicBool = AtomicBool::new(false);
static WARNED: AtomicBool = AtomicBool::new(false);
/// When the latest fork began, on the trace clock: the child's header says so, so that the analyzer
/// can start the child's heap from its parent's at that moment.
static FORK_TIME: AtomicU64 = AtomicU64::new(0);
/// The pid whose trace the sink holds (set at start and in a fork child).
static PID: AtomicU32 = AtomicU32::new(0);

unsafe extern "C" {
    static environ: *const *const libc::c_char;
}

/// Whether tracing is on. The hooks' fast check.
#[inline]
pub fn active() -> bool {
    STATE.load(Ordering::Acquire) == ACTIVE
}

/// Starts the tracer if it has not started and libc is ready; true if tracing is on.
#[inline]
pub fn ensure_started() -> bool {
    match STATE.load(Ordering::Acquire) {
        ACTIVE => {
            // Signal marks are written here, by the next hook call (signal.rs says why).
            if signal::pending() {
                signal::record_pending();
            }
            true
        }
        UNINIT if libc_ready() && crate::real::resolve() => {
            start();
            active()
        }
        _ => false,
    }
}

/// libc has run its own initialization (it sets `environ` then): before that, getenv and stdio
/// cannot be trusted, and the hooks only forward.
pub fn libc_ready() -> bool {
    // SAFETY: reading a pointer-sized global that libc exports.
    !unsafe { core::ptr::read_volatile(core::ptr::addr_of!(environ)) }.is_null()
}

/// The configured frame cap.
pub fn config_max_frames() -> usize {
    CONFIG
        .get()
        .map_or(config::DEFAULT_MAX_FRAMES, |c| c.max_frames)
}

/// Says `msg` once on stderr (unless the process is exiting) and turns tracing off for good.
pub fn disable(msg: &str) {
    STATE.store(OFF, Ordering::Release);
    say(msg);
}

/// One line on stderr, at most once per process, never during exit.
fn say(msg: &str) {
    if EXITING.load(Ordering::Relaxed) || WARNED.swap(true, Ordering::Relaxed) {
        return;
    }
    write_stderr(&format!("memtrace: {msg}\n"));
}

/// One line on stderr about a limit of this run (tracing goes on), unless the process is exiting.
pub fn note(msg: &str) {
    if !EXITING.load(Ordering::Relaxed) {
        write_stderr(&format!("memtrace: {msg}\n"));
    }
}

fn write_stderr(line: &str) {
    // SAFETY: writes a valid buffer to fd 2; a closed or redirected fd just makes write fail.
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
}

fn getenv(name: &core::ffi::CStr) -> Option<String> {
    // SAFETY: `name` is NUL-terminated; getenv returns NULL or a NUL-terminated string that stays
    // valid while the environment is not modified, and we copy it at once.
    unsafe {
        let p = libc::getenv(name.as_ptr());
        (!p.is_null()).then(|| core::ffi::CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

fn read_cmdline() -> Vec<String> {
    std::fs::read("/proc/self/cmdline")
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn header(parent_trace: Option<String>, fork_time_ns: Option<u64>) -> Vec<u8> {
    let executable = std::fs::read_link("/proc/self/exe")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    encode_file_header(&Header {
        pid: std::process::id(),
        // SAFETY: getppid has no preconditions.
        ppid: unsafe { libc::getppid() } as u32,
        executable,
        cmdline: read_cmdline(),
        start_unix_ns: clock::unix_ns(),
        parent_trace,
        tool_version: env!("CARGO_PKG_VERSION").into(),
        fork_time_ns,
        sample_bytes: CONFIG.get().and_then(|c| c.sample_bytes),
    })
}

/// Starts tracing: reads the configuration, scans the modules, creates the trace file and
/// registers the exit and fork handlers. On failure, says why once and leaves tracing off.
fn start() {
    if STATE
        .compare_exchange(UNINIT, STARTING, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return;
    }
    // First, so that the exec hooks never need dlsym later (in a vfork child), even if tracing
    // cannot start.
    real::resolve_exec();
    if let Some(allocator) = real::allocator_in_front()
        && let Err(msg) = crate::plt::take_over(allocator)
    {
        disable(&msg);
        return;
    }
    let pid = std::process::id();
    PID.store(pid, Ordering::Relaxed);
    let cmdline = read_cmdline();
    let program = cmdline.first().cloned().unwrap_or_default();
    let config = Config::from_env(
        getenv(c"MEMTRACE_OUTPUT").as_deref(),
        getenv(c"MEMTRACE_QUIET").as_deref(),
        getenv(c"MEMTRACE_MAX_FRAMES").as_deref(),
        getenv(c"MEMTRACE_SAMPLE_BYTES").as_deref(),
        &program,
        pid,
    );
    let output = config.output.clone();
    let quiet = config.quiet;
    python::start(
        getenv(c"MEMTRACE_PYTHON").as_deref(),
        getenv(c"MEMTRACE_PYTHONMALLOC").as_deref(),
        &cmdline,
    );
    let parent_trace = exec_parent_trace(&config);
    if let Some(n) = config.sample_bytes {
        crate::sample::set_mean(n);
    }
    crate::pack::set_enabled(getenv(c"MEMTRACE_COMPRESS").as_deref() != Some("0"));
    let _ = CONFIG.set(config);
    clock::start();
    let changes = modules::rescan(true);
    let output = match SINK.open(&output, &header(parent_trace, None)) {
        Ok(path) => path,
        Err(msg) => {
            disable(&format!("{msg}; the program runs untraced"));
            return;
        }
    };
    if let Ok(mut o) = OUTPUT.lock() {
        *o = output.clone();
    }
    thread::init_key();
    if let Some(sig) = getenv(c"MEMTRACE_SNAPSHOT_SIGNAL").filter(|s| !s.is_empty())
        && let Err(msg) = signal::install(&sig)
    {
        write_stderr(&format!("memtrace: {msg}\n"));
    }
    // SAFETY: registering plain extern "C" handlers with no preconditions.
    unsafe {
        libc::atexit(on_exit);
        libc::pthread_atfork(
            Some(before_fork),
            Some(after_fork_parent),
            Some(after_fork_child),
        );
    }
    STATE.store(ACTIVE, Ordering::Release);
    if let Some(changes) = changes {
        record::modules_changed(&changes);
    }
    python::after_start();
    if !quiet {
        write_stderr(&format!("memtrace: writing trace to {output}\n"));
    }
}

/// The trace of the traced process that started this one with fork (or vfork, posix_spawn) and
/// exec, if there is one: a trace that the parent process is writing at a name this process's
/// configuration gives the parent (the same `MEMTRACE_OUTPUT`, the pattern expanded with the
/// parent's pid, or the default name with the parent's pid). Such a process writes
/// `<name>.<pid>` beside it (see `sink::open_trace_file`), and its header names the parent's trace
/// as a forked child's does.
fn exec_parent_trace(config: &Config) -> Option<String> {
    // SAFETY: getppid has no preconditions.
    let ppid = unsafe { libc::getppid() } as u32;
    if ppid <= 1 || ppid == std::process::id() {
        return None;
    }
    let mut candidates = vec![config.output.clone()];
    if let Some(pattern) = &config.output_pattern {
        candidates.push(config::expand_pattern(pattern, ppid));
    } else {
        candidates.push(config::default_output(&config.program, ppid));
    }
    candidates
        .into_iter()
        .find(|path| trace_writer(path) == Some(ppid))
}

/// The pid in the header of the memtrace trace at `path` (not following a symlink), if it is one.
fn trace_writer(path: &str) -> Option<u32> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut head = [0u8; 20];
    file.read_exact(&mut head).ok()?;
    (head[..8] == memtrace_format::record::FILE_MAGIC)
        .then(|| u32::from_le_bytes([head[16], head[17], head[18], head[19]]))
}

/// The ELF constructor: start as early as libc allows even if nothing has allocated yet.
extern "C" fn constructor() {
    if let Some(_g) = guard::enter() {
        ensure_started();
    }
}

/// The ELF destructor: runs after the program's libraries' destructors; cuts the file.
extern "C" fn destructor() {
    if let Some(_g) = guard::enter() {
        EXITING.store(true, Ordering::Relaxed);
        if STATE.load(Ordering::Acquire) == ACTIVE {
            SINK.close();
        }
    }
}

// Not in unit tests: the test binary must not trace itself.
#[cfg(not(test))]
#[used]
#[unsafe(link_section = ".init_array")]
static CONSTRUCTOR: extern "C" fn() = constructor;

#[cfg(not(test))]
#[used]
#[unsafe(link_section = ".fini_array")]
static DESTRUCTOR: extern "C" fn() = destructor;

extern "C" fn on_exit() {
    EXITING.store(true, Ordering::Relaxed);
    if let Some(_g) = guard::enter()
        && active()
    {
        signal::record_pending();
        record::end();
    }
}

/// Whether this process is the one whose trace the sink holds. It is not in a child that no fork
/// handler ran for: a `vfork` child (as `posix_spawn` and CPython's `subprocess` make), which
/// shares the parent's memory and thread state until it execs or calls `_exit`, or a child of a raw
/// `clone`, whose mapping of the trace file is still the parent's. Such a child must record nothing:
/// its records would land in the parent's trace.
fn own_process() -> bool {
    // SAFETY: getpid has no preconditions (glibc caches nothing: it is the system call).
    let pid = unsafe { libc::getpid() } as u32;
    PID.load(Ordering::Relaxed) == pid
}

/// `_exit` / `_Exit`: the process ends now; record the end (everything else is already on file).
pub fn on_underscore_exit() {
    if !own_process() {
        return;
    }
    EXITING.store(true, Ordering::Relaxed);
    if let Some(_g) = guard::enter()
        && active()
    {
        signal::record_pending();
        record::end();
    }
}

/// An exec function is about to replace this image: record its end (the new image writes a trace
/// of its own, and the old trace is complete). If the exec fails, the program goes on and so does
/// its trace (records after an end record are valid, FORMAT.md §4.10).
pub fn before_exec() {
    if !own_process() {
        return;
    }
    if let Some(_g) = guard::enter()
        && active()
    {
        signal::record_pending();
        record::end();
    }
}

extern "C" fn before_fork() {
    // This thread stays "inside the tracer" until the fork is over, so that its own allocations
    // in between cannot wait for the locks it holds.
    guard::hold();
    FORK_TIME.store(clock::now(), Ordering::Relaxed);
    modules::before_fork();
    stacks::before_fork();
    python::before_fork();
}

extern "C" fn after_fork_parent() {
    python::after_fork(false);
    stacks::after_fork(false);
    modules::after_fork();
    guard::release();
}

extern "C" fn after_fork_child() {
    crate::pack::after_fork_child();
    python::after_fork(true);
    stacks::after_fork(true);
    modules::after_fork();
    PID.store(std::process::id(), Ordering::Relaxed);
    if STATE.load(Ordering::Acquire) == ACTIVE {
        let parent = OUTPUT.lock().map(|o| o.clone()).unwrap_or_default();
        let pid = std::process::id();
        let child = CONFIG
            .get()
            .map(|c| config::child_output(c, &parent, pid))
            .unwrap_or_else(|| format!("{parent}.{pid}"));
        match SINK.open(
            &child,
            &header(Some(parent), Some(FORK_TIME.load(Ordering::Relaxed))),
        ) {
            Ok(child) => {
                if let Ok(mut o) = OUTPUT.lock() {
                    *o = child;
                }
                record::modules_changed(&modules::Changes {
                    added: modules::all_infos(),
                    removed: Vec::new(),
                });
            }
            Err(msg) => disable(&format!("fork child: {msg}; the child runs untraced")),
        }
    }
    guard::release();
}
