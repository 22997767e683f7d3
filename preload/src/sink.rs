//! The trace file: a `MAP_SHARED` mapping that threads claim chunks of with one atomic add.
//!
//! What a thread writes into its chunk is in the page cache at once, so it survives SIGKILL, a
//! crash, `_exit` and `exec` with no flush (DESIGN.md §3). The file is grown in doubling steps with
//! `posix_fallocate` before a step is mapped, so a full disk is an error here, never a SIGBUS later.
//! The mapping lives in one large address-space reservation, so chunk pointers never move.

use crate::spin::SpinMutex;
use core::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use memtrace_format::record::{FILE_MAGIC, HEADER_SIZE};
use std::ffi::CString;

/// Address space reserved for the mapping: the largest trace one process can write. Where that
/// much address space is not allowed (`ulimit -v`, valgrind), halves of it are tried down to
/// [`MIN_RESERVE`].
const RESERVE: usize = 1 << 40;
const MIN_RESERVE: usize = 64 << 20;
/// First and largest growth steps.
const FIRST_STEP: usize = 64 << 10;
const MAX_STEP: usize = 64 << 20;
/// `next` is pushed here on close, so later claims fail without a lock.
const CLOSED: usize = usize::MAX / 4;

/// The process's trace file.
pub struct Sink {
    fd: AtomicI32,
    base: AtomicUsize,
    /// Bytes reserved at `base`.
    reserved: AtomicUsize,
    mapped: AtomicUsize,
    next: AtomicUsize,
    /// Bumped when the file is replaced (fork child): chunks claimed before are no longer ours.
    epoch: AtomicU32,
    /// Device and inode of the trace file: the descriptor is checked against them before it is
    /// used, since the program may close it, or `dup2` another file over it.
    dev: AtomicU64,
    ino: AtomicU64,
    /// Held to grow, open or close the file; holds the file's path, to open it again if the
    /// program closes our descriptor.
    grow: SpinMutex<Option<CString>>,
}

/// The one sink of the process.
pub static SINK: Sink = Sink {
    fd: AtomicI32::new(-1),
    base: AtomicUsize::new(0),
    reserved: AtomicUsize::new(0),
    mapped: AtomicUsize::new(0),
    next: AtomicUsize::new(CLOSED),
    epoch: AtomicU32::new(0),
    dev: AtomicU64::new(0),
    ino: AtomicU64::new(0),
    grow: SpinMutex::new(None),
};

/// A claimed chunk: `len` bytes at `ptr`, valid while the sink's epoch is `epoch`.
#[derive(Clone, Copy)]
pub struct Claim {
    /// Start of the chunk in the mapping.
    pub ptr: *mut u8,
    /// Length in bytes.
    pub len: usize,
    /// The sink epoch it belongs to.
    pub epoch: u32,
}

/// Opens `path` for a new trace without following a symlink and without clobbering a file that is
/// not a memtrace trace. An existing trace is handled by who wrote it:
/// - this very process, before an `exec`: moved aside to `<path>.exec<N>`;
/// - another process that is still alive (a parent whose fork child exec'd): left alone, and this
///   process writes `<path>.<pid>` instead;
/// - a process that is gone (an earlier run): overwritten.
///
/// Returns the descriptor and the path actually used.
fn open_trace_file(path: &str) -> Result<(i32, String), String> {
    let cpath = CString::new(path).map_err(|_| format!("bad output path {path:?}"))?;
    let flags = libc::O_RDWR | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `cpath` is a valid NUL-terminated string; open has no other preconditions.
    let fd = unsafe { libc::open(cpath.as_ptr(), flags, 0o600) };
    if fd < 0 {
        return Err(format!(
            "cannot create {path}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `st` is a plain C struct that fstat fills; `fd` is open.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 || (st.st_mode & libc::S_IFMT) != libc::S_IFREG {
        close(fd);
        return Err(format!("{path} is not a regular file; not tracing"));
    }
    if st.st_size > 0 {
        let mut head = [0u8; 20];
        // SAFETY: reads at most 20 bytes into `head`, which is 20 bytes long.
        let n = unsafe { libc::pread(fd, head.as_mut_ptr().cast(), head.len(), 0) };
        if n < 8 || head[..8] != FILE_MAGIC {
            close(fd);
            return Err(format!(
                "{path} exists and is not a memtrace trace; not overwriting it"
            ));
        }
        let writer = u32::from_le_bytes([head[16], head[17], head[18], head[19]]);
        let me = std::process::id();
        if n == 20 && writer == me {
            close(fd);
            for k in 1..1000 {
                let aside = format!("{path}.exec{k}");
                if std::fs::symlink_metadata(&aside).is_err() {
                    let _ = std::fs::rename(path, &aside);
                    break;
                }
            }
            return open_trace_file(path);
        }
        if n == 20 && process_alive(writer) {
            close(fd);
            return open_trace_file(&format!("{path}.{me}"));
        }
        // SAFETY: `fd` is open for writing.
        if unsafe { libc::ftruncate(fd, 0) } != 0 {
            close(fd);
            return Err(format!(
                "cannot truncate {path}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok((fd, path.to_owned()))
}

/// Reserves address space for the mapping: [`RESERVE`] bytes, or the largest half of it down to
/// [`MIN_RESERVE`] that the process may have. Returns its start and size.
fn reserve() -> Option<(usize, usize)> {
    let mut size = RESERVE;
    while size >= MIN_RESERVE {
        // SAFETY: a fresh PROT_NONE reservation; MAP_NORESERVE keeps it out of the commit charge.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                size,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            return Some((p as usize, size));
        }
        size /= 2;
    }
    None
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists; it sends nothing.
    let rc = unsafe { libc::kill(pid, 0) };
    pid > 0 && (rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// The lowest descriptor number the trace file is moved to, out of the way of programs that
/// reuse or `dup2` onto small numbers.
const HIGH_FD: i32 = 512;

/// `fd` moved to a number of at least [`HIGH_FD`] (close-on-exec), or `fd` itself if that fails.
fn move_high(fd: i32) -> i32 {
    // SAFETY: F_DUPFD_CLOEXEC duplicates an open descriptor; no memory is involved.
    let high = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, HIGH_FD) };
    if high < 0 {
        return fd;
    }
    close(fd);
    high
}

/// Device and inode of the file open at `fd`, if any.
fn identity(fd: i32) -> Option<(u64, u64)> {
    // SAFETY: `st` is a plain C struct that fstat fills; a bad `fd` only makes fstat fail.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: as above.
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev, st.st_ino))
}

fn close(fd: i32) {
    // SAFETY: closing a descriptor we opened; errors are irrelevant here.
    unsafe { libc::close(fd) };
}

impl Sink {
    /// Creates the trace file at `path`, writes `header` (exactly `HEADER_SIZE` bytes) and maps
    /// the first step. Replaces any previous file of this sink (fork child). Returns the path
    /// actually written (see `open_trace_file`).
    pub fn open(&self, path: &str, header: &[u8]) -> Result<String, String> {
        let mut g = self.grow.lock();
        let (fd, path) = open_trace_file(path)?;
        *g = CString::new(path.clone()).ok();
        let fd = move_high(fd);
        let (dev, ino) = identity(fd).unwrap_or((0, 0));
        let mut base = self.base.load(Ordering::Relaxed);
        if base == 0 {
            let Some((p, size)) = reserve() else {
                close(fd);
                return Err("cannot reserve address space for the trace".into());
            };
            base = p;
            self.reserved.store(size, Ordering::Relaxed);
            self.base.store(base, Ordering::Relaxed);
        } else {
            // Fork child: drop the parent's file from our reservation without unreserving it.
            let mapped = self.mapped.load(Ordering::Relaxed);
            if mapped > 0 {
                // SAFETY: [base, base+mapped) is inside our reservation; MAP_FIXED replaces the
                // shared file mapping with inaccessible anonymous memory. No thread but this one
                // exists in a fork child, and chunk pointers are invalidated by the epoch bump.
                unsafe {
                    libc::mmap(
                        base as *mut libc::c_void,
                        mapped,
                        libc::PROT_NONE,
                        libc::MAP_PRIVATE
                            | libc::MAP_ANONYMOUS
                            | libc::MAP_NORESERVE
                            | libc::MAP_FIXED,
                        -1,
                        0,
                    )
                };
            }
            let old = self.fd.swap(-1, Ordering::Relaxed);
            if old >= 0 {
                close(old);
            }
        }
        self.epoch.fetch_add(1, Ordering::Release);
        self.mapped.store(0, Ordering::Relaxed);
        self.fd.store(fd, Ordering::Relaxed);
        self.dev.store(dev, Ordering::Relaxed);
        self.ino.store(ino, Ordering::Relaxed);
        self.grow_locked(&g, FIRST_STEP)?;
        // SAFETY: the first step (>= HEADER_SIZE bytes) is mapped at `base`, writable, and no
        // other thread writes below HEADER_SIZE.
        unsafe {
            core::ptr::copy_nonoverlapping(
                header.as_ptr(),
                base as *mut u8,
                header.len().min(HEADER_SIZE),
            );
        }
        self.next.store(HEADER_SIZE, Ordering::Release);
        Ok(path)
    }

    /// The current epoch; a [`Claim`] of another epoch must not be written.
    #[inline]
    pub fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Claims `len` bytes (a multiple of the granule) for one thread's chunk. `Err` with a message
    /// when the file cannot grow (disk full), `Ok(None)` after close.
    pub fn claim(&self, len: usize) -> Result<Option<Claim>, String> {
        let epoch = self.epoch();
        let off = self.next.fetch_add(len, Ordering::AcqRel);
        if off >= CLOSED {
            return Ok(None);
        }
        let end = off + len;
        let reserved = self.reserved.load(Ordering::Relaxed);
        if end > reserved {
            return Err(format!(
                "the trace reached its maximum size ({} MiB of address space could be reserved); \
                 tracing stops",
                reserved >> 20
            ));
        }
        if end > self.mapped.load(Ordering::Acquire) {
            let g = self.grow.lock();
            if self.epoch() != epoch {
                return Ok(None);
            }
            while self.mapped.load(Ordering::Relaxed) < end {
                let mapped = self.mapped.load(Ordering::Relaxed);
                self.grow_locked(&g, mapped.clamp(FIRST_STEP, MAX_STEP))?;
            }
        }
        let base = self.base.load(Ordering::Relaxed);
        Ok(Some(Claim {
            ptr: (base + off) as *mut u8,
            len,
            epoch,
        }))
    }

    /// Hands a finished chunk's pages back to the kernel. Its bytes stay in the page cache and the
    /// file (a shared file mapping refaults them from there), but no longer count as the traced
    /// program's resident memory: without this a long run's RSS would grow with its trace. The
    /// writer claims whole pages; were a chunk not page-aligned, only the pages wholly inside it
    /// would be handed back, since the pages at its ends would hold other threads' chunks.
    pub fn retire(&self, chunk: Claim) {
        if chunk.epoch != self.epoch() {
            return;
        }
        const PAGE: usize = 4096;
        let start = (chunk.ptr as usize).next_multiple_of(PAGE);
        let end = (chunk.ptr as usize + chunk.len) / PAGE * PAGE;
        if end > start {
            // SAFETY: [start, end) is a page-aligned range of our shared file mapping inside the
            // chunk, which only the retiring thread wrote; MADV_DONTNEED on a shared file mapping
            // drops page-table entries, never data.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        }
    }

    /// Whether `fd` is still our trace file (the program has not closed it or put another file
    /// in its place).
    fn fd_is_ours(&self, fd: i32) -> bool {
        identity(fd)
            == Some((
                self.dev.load(Ordering::Relaxed),
                self.ino.load(Ordering::Relaxed),
            ))
    }

    /// Our descriptor for the trace file. If the program closed it, or put another file at its
    /// number, the file is opened again by its path, provided the path still leads to our file;
    /// the old number is left alone (it is no longer ours). Caller holds `grow` (`path`).
    fn usable_fd(&self, path: &Option<CString>) -> Result<i32, String> {
        let fd = self.fd.load(Ordering::Relaxed);
        if self.fd_is_ours(fd) {
            return Ok(fd);
        }
        if let Some(path) = path {
            let flags = libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC;
            // SAFETY: `path` is a valid NUL-terminated string; open has no other preconditions.
            let again = unsafe { libc::open(path.as_ptr(), flags) };
            if again >= 0 {
                let again = move_high(again);
                if self.fd_is_ours(again) {
                    self.fd.store(again, Ordering::Relaxed);
                    return Ok(again);
                }
                close(again);
            }
        }
        Err(
            "the program closed the trace file's descriptor and its path no longer leads to the \
             trace; tracing stops, the program carries on"
                .into(),
        )
    }

    /// Extends the file by `step` bytes and maps them. Caller holds `grow` (`path`).
    fn grow_locked(&self, path: &Option<CString>, step: usize) -> Result<(), String> {
        let fd = self.usable_fd(path)?;
        let base = self.base.load(Ordering::Relaxed);
        let mapped = self.mapped.load(Ordering::Relaxed);
        // SAFETY: `fd` is our open trace file; the range is new space at its end.
        let rc = unsafe { libc::posix_fallocate(fd, mapped as libc::off_t, step as libc::off_t) };
        if rc != 0 {
            return Err(format!(
                "cannot grow the trace file: {}; tracing stops, the program carries on",
                std::io::Error::from_raw_os_error(rc)
            ));
        }
        // SAFETY: [base+mapped, base+mapped+step) lies inside our reservation (claim checks
        // the reservation); MAP_FIXED replaces only our own PROT_NONE placeholder there, and the file
        // range was just allocated, so touching the pages cannot SIGBUS.
        let p = unsafe {
            libc::mmap(
                (base + mapped) as *mut libc::c_void,
                step,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd,
                mapped as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!(
                "cannot map the trace file: {}; tracing stops",
                std::io::Error::last_os_error()
            ));
        }
        self.mapped.store(mapped + step, Ordering::Release);
        Ok(())
    }

    /// Stops all further claims and cuts the file to the claimed length. Chunks already claimed
    /// stay mapped and writable (threads still running may finish their records).
    pub fn close(&self) {
        let g = self.grow.lock();
        let end = self.next.swap(CLOSED, Ordering::AcqRel);
        if end >= CLOSED {
            return;
        }
        // Never truncate a file the program put at our descriptor's number.
        let Ok(fd) = self.usable_fd(&g) else {
            return;
        };
        // SAFETY: `end` is at or past the end of every claimed chunk, so no mapped page that a
        // thread may still touch lies beyond the new end of file.
        unsafe { libc::ftruncate(fd, end as libc::off_t) };
    }
}
