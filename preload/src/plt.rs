//! Taking the allocation calls back from an allocator loaded before libmemtrace.so
//! (`LD_PRELOAD=libjemalloc.so.2:libmemtrace.so`). Such an allocator comes first in the symbol
//! search order, so every object's calls to `malloc` were bound to it, not to our hooks. At start,
//! the PLT/GOT entries of the allocation functions in every loaded object (the executable, libc,
//! and the rest) are pointed at our hooks, with the [plthook](https://crates.io/crates/plthook)
//! crate; the hooks forward to that allocator (`real.rs` finds it first thing), which keeps
//! serving every block. Objects loaded later with `dlopen` still call the allocator directly: their calls are not
//! traced (and their frees of traced blocks count as missed).
//!
//! Not patched: libmemtrace.so itself, the allocator's own library (its internal calls stay its
//! own), the dynamic loader (it calls the allocator through a pointer, not a PLT) and the vDSO.

use crate::loader;
use core::ffi::{CStr, c_void};

/// The functions taken back, each with the name of our hook that replaces it.
const FUNCTIONS: [&CStr; 10] = [
    c"malloc",
    c"calloc",
    c"realloc",
    c"free",
    c"reallocarray",
    c"posix_memalign",
    c"aligned_alloc",
    c"memalign",
    c"valloc",
    c"pvalloc",
];

/// Points the allocation calls of every loaded object but `allocator`'s at our hooks (which
/// `real.rs` already forwards to `allocator`). `Err` says why memtrace cannot trace this process.
pub fn take_over(allocator: &CStr) -> Result<usize, String> {
    let fail = || {
        format!(
            "{} comes before libmemtrace.so in LD_PRELOAD and memtrace could not take the \
             allocation calls back from it; put libmemtrace.so first. Nothing is traced",
            allocator.to_string_lossy()
        )
    };
    let (_, ours) = loader::ourselves().ok_or_else(fail)?;
    let hooks = our_hooks(&ours).ok_or_else(fail)?;
    let mut patched = 0;
    for loader::Object { name, .. } in loader::loaded_objects() {
        let skip = name.as_c_str() == ours.as_c_str()
            || name.as_c_str() == allocator
            || name.to_bytes().is_empty()
            || contains(name.to_bytes(), b"ld-linux")
            || contains(name.to_bytes(), b"linux-vdso");
        if skip {
            continue;
        }
        if patch(&name, &hooks) {
            patched += 1;
        }
    }
    // The executable has no name in the loader's list.
    if let Ok(main) = plthook::ObjectFile::open_main_program() {
        patched += usize::from(replace_all(&main, &hooks));
    }
    Ok(patched)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Patches the loaded library `name`; whether any entry was replaced.
fn patch(name: &CStr, hooks: &[(&CStr, usize)]) -> bool {
    // SAFETY: RTLD_NOLOAD only looks the loaded library up, taking a reference that keeps it
    // loaded while plthook reads its tables (it stays loaded anyway: it was loaded before us).
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD) };
    if handle.is_null() {
        return false;
    }
    // SAFETY: `handle` is a live handle from dlopen, which is what plthook expects.
    let done = match unsafe { plthook::ObjectFile::open_by_handle(handle) } {
        Ok(object) => replace_all(&object, hooks),
        Err(_) => false,
    };
    // SAFETY: drops the reference taken above.
    unsafe { libc::dlclose(handle) };
    done
}

/// Replaces every entry of `hooks` that `object` imports; whether any was.
fn replace_all(object: &plthook::ObjectFile, hooks: &[(&CStr, usize)]) -> bool {
    let mut any = false;
    for &(name, hook) in hooks {
        let Ok(name) = name.to_str() else { continue };
        // SAFETY: `hook` is our exported function of that name, with the same C signature as the
        // function the entry pointed to; patching happens at start, before other threads run
        // (a rare program that starts threads earlier may race with an entry being rewritten,
        // which is one aligned pointer store).
        if let Ok(mut replacement) = unsafe { object.replace(name, hook as *const c_void) } {
            replacement.discard();
            any = true;
        }
    }
    any
}

/// Our hooks' addresses, looked up in our own library (a reference from our code would be bound
/// through the search order, to the other allocator's functions).
fn our_hooks(ours: &CStr) -> Option<Vec<(&'static CStr, usize)>> {
    // SAFETY: RTLD_NOLOAD only looks our loaded library up; the reference is kept for good (our
    // library is never unloaded).
    let handle = unsafe { libc::dlopen(ours.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD) };
    if handle.is_null() {
        return None;
    }
    let mut hooks = Vec::with_capacity(FUNCTIONS.len());
    for name in FUNCTIONS {
        // SAFETY: dlsym only looks the name up in our library (which defines it) first.
        let p = unsafe { libc::dlsym(handle, name.as_ptr()) } as usize;
        if p == 0 {
            return None;
        }
        hooks.push((name, p));
    }
    Some(hooks)
}
