//! CPython in the traced process: finding the interpreter at start-up, making its small objects
//! visible to malloc, and the switch that says whether Python frames are recorded.
//!
//! - `layout.rs`: the per-version offsets.
//! - `frames.rs`: walking the calling thread's interpreter frames at each allocation (hot path), the
//!   start-up self-check, and splicing Python frames into the native stack.
//! - `code.rs`: code objects, read once each and written to the trace as PyCode records.
//! - `allocator.rs`: pymalloc's allocators wrapped, when `-E`/`-I` make Python ignore
//!   `PYTHONMALLOC`.
//!
//! Works under plain `LD_PRELOAD`, with no import and no launcher: the interpreter's own exported
//! symbols (`Py_GetVersion`, `PyGILState_GetThisThreadState`, `PyCode_Type`, ...) are found with
//! `dlsym(RTLD_DEFAULT)`, in a shared libpython or in a statically linked `python3` alike
//! (DESIGN.md §5). An unsupported version or a failed self-check leaves stacks native-only, with
//! one line on stderr.

pub mod allocator;
pub mod code;
pub mod frames;
pub mod layout;

use core::ffi::{CStr, c_void};
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use layout::Layout;
use std::sync::OnceLock;

/// What the tracer knows of the process's interpreter.
pub struct Interp {
    /// The version's layout.
    pub layout: &'static Layout,
    /// `PyGILState_GetThisThreadState`: the calling thread's thread state, or NULL (no interpreter
    /// yet or any more, or a thread Python does not know).
    get_tstate: unsafe extern "C" fn() -> *mut c_void,
    /// `&PyCode_Type`.
    pub code_type: u64,
    /// `&PyUnicode_Type`.
    pub unicode_type: u64,
    /// `&PyBytes_Type`.
    pub bytes_type: u64,
    /// `[start, end)` of `_PyEval_EvalFrameDefault`'s code: the native frames that run Python frames.
    pub eval: (u64, u64),
    /// The hot-path frame walk compiled for this version's layout (`frames::walker`).
    pub walker: frames::Walker,
}

impl Interp {
    /// The calling thread's `PyThreadState*`, 0 if none.
    #[inline(always)]
    pub fn tstate(&self) -> u64 {
        // SAFETY: a function the interpreter exports, taking no arguments; it only reads the
        // runtime's thread-specific key (no lock, no allocation) and returns NULL before the
        // interpreter is initialized and after it is finalized.
        unsafe { (self.get_tstate)() as u64 }
    }
}

/// Not a Python process, Python frames turned off, or the self-check failed.
const OFF: u8 = 0;
/// Found; the layout has not been checked against a real frame yet.
const UNCHECKED: u8 = 1;
/// One thread is running the self-check.
const CHECKING: u8 = 2;
/// Checked: frames are walked at every allocation.
const ON: u8 = 3;

static STATUS: AtomicU8 = AtomicU8::new(OFF);
static INTERP: OnceLock<Interp> = OnceLock::new();

/// The interpreter, when Python frames are being recorded.
#[inline(always)]
pub fn interp() -> Option<&'static Interp> {
    if STATUS.load(Ordering::Acquire) == ON {
        INTERP.get()
    } else {
        None
    }
}

/// Finds the interpreter. Called once from start-up, before the trace file exists, with the values
/// of `MEMTRACE_PYTHON` and `MEMTRACE_PYTHONMALLOC`. Returns whether this is a Python process.
pub fn start(frames_setting: Option<&str>, pymalloc_setting: Option<&str>, cmdline: &[String]) {
    let Some(version) = version_string() else {
        return;
    };
    if pymalloc_setting != Some("keep") && env_unset(c"PYTHONMALLOC") {
        WANT_MALLOC.store(true, Ordering::Relaxed);
        if ignores_environment(cmdline) {
            allocator::want();
        }
    }
    if frames_setting == Some("0") {
        return;
    }
    let text = String::from_utf8_lossy(&version);
    let Some(layout) = layout::parse_version(&version)
        .and_then(|(major, minor)| layout::for_version(major, minor))
    else {
        crate::init::note(&format!(
            "Python {} is not supported for Python frames (3.8 to 3.13 are): stacks are native only",
            text.split(' ').next().unwrap_or("")
        ));
        return;
    };
    match find_interp(layout) {
        Some(interp) => {
            if INTERP.set(interp).is_ok() {
                STATUS.store(UNCHECKED, Ordering::Release);
            }
        }
        None => crate::init::note(
            "this Python does not export the symbols Python frames need: stacks are native only",
        ),
    }
}

/// Whether the layout still has to be checked; if so, the caller becomes the checker when this
/// returns the interpreter.
#[cold]
pub fn claim_check() -> Option<&'static Interp> {
    STATUS
        .compare_exchange(UNCHECKED, CHECKING, Ordering::AcqRel, Ordering::Acquire)
        .ok()?;
    INTERP.get()
}

/// The self-check's verdict: `Some(true)` passed, `Some(false)` failed (turn off, say why),
/// `None` undecided (no Python frame to check yet).
#[cold]
pub fn finish_check(verdict: Option<bool>) {
    let next = match verdict {
        Some(true) => {
            allocator::schedule();
            ON
        }
        Some(false) => {
            crate::init::note(
                "the running Python's frames do not have the expected layout: stacks are native only",
            );
            OFF
        }
        None => UNCHECKED,
    };
    STATUS.store(next, Ordering::Release);
}

/// Whether a check is pending (cheap: one load).
#[inline(always)]
pub fn check_pending() -> bool {
    STATUS.load(Ordering::Relaxed) == UNCHECKED
}

/// Pending checks skipped so far (see [`may_run_python`]).
static SKIPPED_CHECKS: AtomicU32 = AtomicU32::new(0);

/// A pending check runs at least once in this many allocations, whatever the native stack shows.
const CHECK_AT_LEAST_EVERY: u32 = 256;

/// Whether a thread whose native stack is `outermost_first` may have Python frames to check: some
/// return address is in the evaluation function (which runs every Python frame), or the stack was
/// `cut` at the depth limit and may have lost it. Until the interpreter runs its first Python frame
/// (tens of thousands of allocations while it starts), a check finds nothing, at the cost of two
/// `process_vm_readv` calls per allocation; this scan of the native frames costs far less. Where
/// the unwinder cannot reach the evaluation function at all (Python run on a stack of its own, or
/// from code without unwind tables), every `CHECK_AT_LEAST_EVERY`th call says yes anyway, so
/// that the check still happens.
#[cold]
pub fn may_run_python(outermost_first: &[u64], cut: bool) -> bool {
    let Some(interp) = INTERP.get() else {
        return false;
    };
    let (start, end) = interp.eval;
    cut || outermost_first
        .iter()
        .any(|&ret| (start..end).contains(&ret.wrapping_sub(1)))
        || SKIPPED_CHECKS.fetch_add(1, Ordering::Relaxed) % CHECK_AT_LEAST_EVERY
            == CHECK_AT_LEAST_EVERY - 1
}

/// Whether the process looks like CPython: its executable is named `python...` or it has loaded a
/// `libpython...`. Only then is the interpreter looked up: a `dlsym` that fails leaves an error
/// string allocated by glibc, which the program would later free without our having seen it.
fn looks_like_python() -> bool {
    let named_python = |path: &[u8]| {
        let name = path.rsplit(|&c| c == b'/').next().unwrap_or(path);
        name.starts_with(b"python") || name.starts_with(b"libpython")
    };
    let exe = std::fs::read_link("/proc/self/exe")
        .map(|p| named_python(p.as_os_str().as_encoded_bytes()))
        .unwrap_or(false);
    exe || crate::loader::loaded_objects()
        .iter()
        .any(|o| named_python(o.name.as_bytes()))
}

/// `Py_GetVersion()`'s string, if the process has a Python interpreter.
fn version_string() -> Option<Vec<u8>> {
    if !looks_like_python() {
        return None;
    }
    let f = symbol(c"Py_GetVersion")?;
    // SAFETY: `Py_GetVersion` takes no arguments and returns a pointer to a NUL-terminated string
    // in a static buffer (it formats into it; it does not allocate and needs no interpreter).
    let s = unsafe {
        let f: unsafe extern "C" fn() -> *const libc::c_char = core::mem::transmute(f);
        let p = f();
        if p.is_null() {
            return None;
        }
        CStr::from_ptr(p)
    };
    Some(s.to_bytes().to_vec())
}

fn find_interp(layout: &'static Layout) -> Option<Interp> {
    let get_tstate = symbol(c"PyGILState_GetThisThreadState")?;
    let eval = symbol(c"_PyEval_EvalFrameDefault")?;
    Some(Interp {
        layout,
        // SAFETY: the interpreter's `PyThreadState *PyGILState_GetThisThreadState(void)`.
        get_tstate: unsafe {
            core::mem::transmute::<usize, unsafe extern "C" fn() -> *mut c_void>(get_tstate)
        },
        code_type: symbol(c"PyCode_Type")? as u64,
        unicode_type: symbol(c"PyUnicode_Type")? as u64,
        bytes_type: symbol(c"PyBytes_Type")? as u64,
        eval: (eval as u64, eval as u64 + symbol_size(eval)?),
        walker: frames::walker(layout),
    })
}

/// The address of an exported symbol anywhere in the process.
fn symbol(name: &CStr) -> Option<usize> {
    // SAFETY: dlsym looks a NUL-terminated name up in the global scope.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    if p.is_null() {
        // A failed lookup leaves an error string that glibc frees at the next dlerror (or dl*)
        // call, maybe the program's, traced: release it now, inside the tracer.
        // SAFETY: dlerror takes no arguments; the first call hands the string over, the second
        // frees it.
        unsafe {
            libc::dlerror();
            libc::dlerror();
        }
        return None;
    }
    Some(p as usize)
}

/// The size of the function at `addr`, from its symbol table entry.
fn symbol_size(addr: usize) -> Option<u64> {
    /// `dladdr1`'s flag asking for the symbol's `ElfW(Sym)`.
    const RTLD_DL_SYMENT: libc::c_int = 1;
    let mut info: libc::Dl_info = libc::Dl_info {
        dli_fname: core::ptr::null(),
        dli_fbase: core::ptr::null_mut(),
        dli_sname: core::ptr::null(),
        dli_saddr: core::ptr::null_mut(),
    };
    let mut sym: *mut libc::Elf64_Sym = core::ptr::null_mut();
    // SAFETY: `info` and `sym` are valid out-pointers; with RTLD_DL_SYMENT, dladdr1 stores a pointer
    // to the loader's own (read-only, live while the object is loaded) symbol entry in `sym`.
    let ok = unsafe {
        libc::dladdr1(
            addr as *const c_void,
            &mut info,
            (&mut sym as *mut *mut libc::Elf64_Sym).cast(),
            RTLD_DL_SYMENT,
        )
    };
    if ok == 0 || sym.is_null() || info.dli_saddr as usize != addr {
        return None;
    }
    // SAFETY: `sym` points at the symbol entry dladdr1 found, see above.
    let size = unsafe { (*sym).st_size };
    (size > 0).then_some(size)
}

/// `PYTHONMALLOC=malloc` is to be set once tracing is on (`start` found a Python process and the
/// variable unset).
static WANT_MALLOC: AtomicBool = AtomicBool::new(false);

fn env_unset(name: &CStr) -> bool {
    // SAFETY: getenv with a NUL-terminated name, at start-up.
    unsafe { libc::getenv(name.as_ptr()).is_null() }
}

/// Small objects come from pymalloc's own arenas, which malloc never sees: unless the user chose an
/// allocator, `PYTHONMALLOC=malloc` makes the interpreter (which reads it after our constructor)
/// serve them with malloc. `-E` and `-I` make it ignore the variable: then pymalloc is wrapped
/// instead, once the interpreter runs (`allocator.rs`).
///
/// Called once tracing is on, from inside the tracer: `setenv` allocates the new environment array,
/// which the program may later `realloc` (by setting a variable of its own), so its allocation must
/// be in the trace like any other. It is made with the tracer's guard lifted.
pub fn after_start() {
    if !WANT_MALLOC.swap(false, Ordering::Relaxed) {
        return;
    }
    crate::guard::release();
    // SAFETY: setenv with NUL-terminated strings, from start-up: the program's main has not run
    // and no other thread reads the environment yet.
    unsafe { libc::setenv(c"PYTHONMALLOC".as_ptr(), c"malloc".as_ptr(), 0) };
    crate::guard::hold();
}

/// Whether a Python command line has `-E` or `-I` among the interpreter's options (those before the
/// script, `-c` or `-m`).
pub fn ignores_environment(cmdline: &[String]) -> bool {
    let mut i = 1;
    while let Some(arg) = cmdline.get(i) {
        i += 1;
        let Some(flags) = arg.strip_prefix('-') else {
            return false;
        };
        if flags.is_empty() || flags.starts_with('-') {
            return false;
        }
        for (j, c) in flags.char_indices() {
            match c {
                'E' | 'I' => return true,
                // The rest of the command line belongs to the program.
                'c' | 'm' => return false,
                // The rest of the argument, or the next one, is the option's value.
                'W' | 'X' => {
                    if j + 1 == flags.len() {
                        i += 1;
                    }
                    break;
                }
                _ => {}
            }
        }
    }
    false
}

/// Forgets the code ids (fork child: its new trace must define them again).
pub fn after_fork(child: bool) {
    code::after_fork(child);
}

/// Takes the code registry's lock for `fork`.
pub fn before_fork() {
    code::before_fork();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn isolated_and_no_environment_are_found() {
        assert!(ignores_environment(&args(&["python3", "-I", "app.py"])));
        assert!(ignores_environment(&args(&["python3", "-sE", "app.py"])));
        assert!(ignores_environment(&args(&[
            "python3", "-X", "dev", "-I", "-c", "x"
        ])));
        assert!(!ignores_environment(&args(&["python3", "app.py", "-E"])));
        assert!(!ignores_environment(&args(&["python3", "-c", "-E"])));
        assert!(!ignores_environment(&args(&["python3", "-cE"])));
        assert!(!ignores_environment(&args(&["python3", "-m", "mod", "-I"])));
        assert!(!ignores_environment(&args(&[
            "python3", "-Wignore", "a.py"
        ])));
        assert!(!ignores_environment(&args(&["python3"])));
    }
}
