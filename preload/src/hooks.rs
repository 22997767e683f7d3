//! Every symbol libmemtrace.so exports: the malloc family, `_exit`/`_Exit`, the exec functions
//! (`execve`, `execv`, `execvp`, `execvpe`, `fexecve`, `execveat`), `dlclose`, and
//! `memtrace_snapshot`. Each is a thin trampoline: call the real function, keep libc's semantics
//! (NULL and errno on failure, posix_memalign's return codes), and record the event through
//! `record.rs` while holding the re-entrancy guard.
//!
//! Ordering rule (heaptrack's): a free is recorded before the memory is released, an allocation
//! after it is obtained, so an address reused by another thread is never recorded out of order.
//! The program's `errno` is saved before the tracer runs and restored after.

use crate::{guard, init, real, record};
use core::ffi::{c_char, c_int, c_void};
use libc::size_t;
use memtrace_format::AllocKind;

fn errno_location() -> *mut c_int {
    // SAFETY: __errno_location has no preconditions and returns this thread's errno slot.
    unsafe { libc::__errno_location() }
}

/// Runs `f` inside the tracer if tracing is on and this thread is not already inside it.
#[inline(always)]
fn trace(f: impl FnOnce()) {
    if let Some(_g) = guard::enter()
        && init::ensure_started()
    {
        let errno = errno_location();
        // SAFETY: `errno` points at this thread's errno, valid for the thread's lifetime.
        let saved = unsafe { *errno };
        f();
        // SAFETY: as above.
        unsafe { *errno = saved };
    }
}

/// Interposes `malloc`.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn malloc(size: size_t) -> *mut c_void {
    let p = real::malloc(size);
    if !p.is_null() {
        trace(|| record::alloc(AllocKind::Malloc, size, p as usize));
    }
    p
}

/// Interposes `calloc`. The real calloc checks `nmemb * size` for overflow (NULL, ENOMEM).
#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn calloc(nmemb: size_t, size: size_t) -> *mut c_void {
    let p = real::calloc(nmemb, size);
    if !p.is_null() {
        trace(|| record::alloc(AllocKind::Calloc, nmemb.wrapping_mul(size), p as usize));
    }
    p
}

/// Interposes `free`. Records the free before releasing the memory.
///
/// # Safety
/// `ptr` is NULL or a live block (free(3)'s contract).
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn free(ptr: *mut c_void) {
    if !ptr.is_null() {
        trace(|| record::free(ptr as usize));
    }
    // SAFETY: the caller's contract under free(3).
    unsafe { real::free(ptr) }
}

/// Interposes `realloc`. `realloc(p, 0)` frees `p` in glibc and is recorded as a free, before it
/// happens; `realloc(NULL, n)` is recorded as a realloc from address 0.
///
/// # Safety
/// `ptr` is NULL or a live block (realloc(3)'s contract).
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn realloc(ptr: *mut c_void, size: size_t) -> *mut c_void {
    if size == 0 && !ptr.is_null() {
        trace(|| record::free(ptr as usize));
        // SAFETY: the caller's contract under realloc(3).
        return unsafe { real::realloc(ptr, 0) };
    }
    if crate::sample::mean() != 0 {
        // SAFETY: the caller's contract under realloc(3), passed on.
        return unsafe { sampled_realloc(ptr, size) };
    }
    // SAFETY: the caller's contract under realloc(3).
    let p = unsafe { real::realloc(ptr, size) };
    if !p.is_null() {
        trace(|| record::realloc(ptr as usize, size, p as usize));
    }
    p
}

/// `realloc` with sampling on: whether the new block is recorded is drawn first; if it is not,
/// the old block's free is recorded before the real realloc may release it (to another thread).
/// Should the realloc then fail, the trace has that block freed early: it reads as a free of an
/// unknown block when the program frees it.
///
/// # Safety
/// As [`realloc`].
#[inline(never)]
unsafe fn sampled_realloc(ptr: *mut c_void, size: size_t) -> *mut c_void {
    let mut take = true;
    trace(|| {
        take = record::realloc_sampled(size);
        if !take && !ptr.is_null() {
            record::free(ptr as usize);
        }
    });
    // SAFETY: the caller's contract under realloc(3).
    let p = unsafe { real::realloc(ptr, size) };
    if take && !p.is_null() {
        trace(|| record::realloc(ptr as usize, size, p as usize));
    }
    p
}

/// Interposes `reallocarray`: realloc with an overflow check on `nmemb * size`.
///
/// # Safety
/// `ptr` is NULL or a live block.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn reallocarray(
    ptr: *mut c_void,
    nmemb: size_t,
    size: size_t,
) -> *mut c_void {
    match nmemb.checked_mul(size) {
        // SAFETY: the caller's contract, passed on.
        Some(total) => unsafe { realloc(ptr, total) },
        None => {
            // SAFETY: writing this thread's errno.
            unsafe { *errno_location() = libc::ENOMEM };
            core::ptr::null_mut()
        }
    }
}

fn aligned(kind: AllocKind, size: size_t, p: *mut c_void) -> *mut c_void {
    if !p.is_null() {
        trace(|| record::alloc(kind, size, p as usize));
    }
    p
}

/// Interposes `posix_memalign`: EINVAL for an alignment that is not a power of two multiple of
/// `sizeof(void *)`, ENOMEM when out of memory; `*memptr` is set only on success, `errno` untouched.
///
/// # Safety
/// `memptr` is valid for a pointer write.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn posix_memalign(
    memptr: *mut *mut c_void,
    align: size_t,
    size: size_t,
) -> c_int {
    if !align.is_power_of_two() || !align.is_multiple_of(core::mem::size_of::<*mut c_void>()) {
        return libc::EINVAL;
    }
    let errno = errno_location();
    // SAFETY: this thread's errno slot.
    let saved = unsafe { *errno };
    let p = real::memalign(align, size);
    // SAFETY: as above.
    unsafe { *errno = saved };
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: the caller guarantees `memptr` is writable.
    unsafe { *memptr = p };
    aligned(AllocKind::PosixMemalign, size, p);
    0
}

/// Interposes `aligned_alloc` (glibc 2.36 treats it as `memalign`).
#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn aligned_alloc(align: size_t, size: size_t) -> *mut c_void {
    aligned(AllocKind::AlignedAlloc, size, real::memalign(align, size))
}

/// Interposes `memalign`.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn memalign(align: size_t, size: size_t) -> *mut c_void {
    aligned(AllocKind::Memalign, size, real::memalign(align, size))
}

/// Interposes `valloc`.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn valloc(size: size_t) -> *mut c_void {
    aligned(AllocKind::Valloc, size, real::valloc(size))
}

/// Interposes `pvalloc`. The recorded size is the requested one, not the page-rounded one.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn pvalloc(size: size_t) -> *mut c_void {
    aligned(AllocKind::Pvalloc, size, real::pvalloc(size))
}

/// Interposes `_exit`: records the end of the process (everything else is on file already).
#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn _exit(status: c_int) -> ! {
    init::on_underscore_exit();
    real::exit_now(status)
}

/// Interposes `_Exit`, which is `_exit`.
#[cfg_attr(not(test), unsafe(no_mangle))]
#[allow(non_snake_case)]
pub extern "C" fn _Exit(status: c_int) -> ! {
    init::on_underscore_exit();
    real::exit_now(status)
}

/// An exec hook's common part: record the end of this image (`init::before_exec`), then call
/// libc's function `f` through `call`, which gets its address. When libc's function cannot be
/// found, fails as exec does, with ENOSYS.
fn exec(f: real::Exec, call: impl FnOnce(usize) -> c_int) -> c_int {
    init::before_exec();
    let next = real::exec_next(f);
    if next == 0 {
        // SAFETY: writing this thread's errno.
        unsafe { *errno_location() = libc::ENOSYS };
        return -1;
    }
    call(next)
}

type Argv = *const *const c_char;

/// Interposes `execve`. The image that calls it ends here if it succeeds: its trace gets an end
/// record first (the new image writes a trace of its own, see `sink.rs`). If exec fails, the
/// program goes on and so does its trace.
///
/// # Safety
/// The arguments are what `execve(2)` accepts.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn execve(path: *const c_char, argv: Argv, envp: Argv) -> c_int {
    exec(real::Exec::Execve, |f| {
        // SAFETY: `f` is libc's execve, whose signature this is; the caller's arguments.
        let f: unsafe extern "C" fn(*const c_char, Argv, Argv) -> c_int =
            unsafe { core::mem::transmute(f) };
        // SAFETY: the caller's contract under execve(2).
        unsafe { f(path, argv, envp) }
    })
}

/// Interposes `execv` (see [`execve`]).
///
/// # Safety
/// The arguments are what `execv(3)` accepts.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn execv(path: *const c_char, argv: Argv) -> c_int {
    exec(real::Exec::Execv, |f| {
        // SAFETY: `f` is libc's execv, whose signature this is.
        let f: unsafe extern "C" fn(*const c_char, Argv) -> c_int =
            unsafe { core::mem::transmute(f) };
        // SAFETY: the caller's contract under execv(3).
        unsafe { f(path, argv) }
    })
}

/// Interposes `execvp` (see [`execve`]).
///
/// # Safety
/// The arguments are what `execvp(3)` accepts.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: Argv) -> c_int {
    exec(real::Exec::Execvp, |f| {
        // SAFETY: `f` is libc's execvp, whose signature this is.
        let f: unsafe extern "C" fn(*const c_char, Argv) -> c_int =
            unsafe { core::mem::transmute(f) };
        // SAFETY: the caller's contract under execvp(3).
        unsafe { f(file, argv) }
    })
}

/// Interposes `execvpe` (see [`execve`]).
///
/// # Safety
/// The arguments are what `execvpe(3)` accepts.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn execvpe(file: *const c_char, argv: Argv, envp: Argv) -> c_int {
    exec(real::Exec::Execvpe, |f| {
        // SAFETY: `f` is libc's execvpe, whose signature this is.
        let f: unsafe extern "C" fn(*const c_char, Argv, Argv) -> c_int =
            unsafe { core::mem::transmute(f) };
        // SAFETY: the caller's contract under execvpe(3).
        unsafe { f(file, argv, envp) }
    })
}

/// Interposes `fexecve` (see [`execve`]).
///
/// # Safety
/// The arguments are what `fexecve(3)` accepts.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn fexecve(fd: c_int, argv: Argv, envp: Argv) -> c_int {
    exec(real::Exec::Fexecve, |f| {
        // SAFETY: `f` is libc's fexecve, whose signature this is.
        let f: unsafe extern "C" fn(c_int, Argv, Argv) -> c_int =
            unsafe { core::mem::transmute(f) };
        // SAFETY: the caller's contract under fexecve(3).
        unsafe { f(fd, argv, envp) }
    })
}

/// Interposes `execveat` (see [`execve`]).
///
/// # Safety
/// The arguments are what `execveat(2)` accepts.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn execveat(
    dirfd: c_int,
    path: *const c_char,
    argv: Argv,
    envp: Argv,
    flags: c_int,
) -> c_int {
    exec(real::Exec::Execveat, |f| {
        // SAFETY: `f` is libc's execveat, whose signature this is.
        let f: unsafe extern "C" fn(c_int, *const c_char, Argv, Argv, c_int) -> c_int =
            unsafe { core::mem::transmute(f) };
        // SAFETY: the caller's contract under execveat(2).
        unsafe { f(dirfd, path, argv, envp, flags) }
    })
}

/// Interposes `dlclose`: once the library is unmapped, the module map is rescanned and the unload
/// recorded, so that a library loaded later at the same addresses is never taken for the old one.
///
/// # Safety
/// `handle` is what `dlclose(3)` accepts.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn dlclose(handle: *mut c_void) -> c_int {
    // SAFETY: the caller's contract under dlclose(3).
    let rc = unsafe { real::dlclose(handle) };
    trace(record::modules_rescan);
    rc
}

/// Records a named point in the trace. Programs find it with `dlsym(RTLD_DEFAULT,
/// "memtrace_snapshot")` so that they still run without the preload. `label` may be NULL.
///
/// # Safety
/// `label` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memtrace_snapshot(label: *const c_char) {
    let bytes: &[u8] = if label.is_null() {
        b""
    } else {
        // SAFETY: the caller passes a NUL-terminated string.
        unsafe { core::ffi::CStr::from_ptr(label) }.to_bytes()
    };
    trace(|| record::mark(bytes));
}
