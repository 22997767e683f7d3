//! Questions for the dynamic loader that `real.rs` and `plt.rs` both ask: which objects are loaded
//! and in what order, which object holds an address, and what libmemtrace.so is called.

use core::ffi::{CStr, c_int, c_void};
use std::ffi::CString;

/// A loaded object: the loader's name for it (empty for the executable) and its load bias, which
/// for a shared object is its base address.
pub struct Object {
    pub name: CString,
    pub bias: usize,
}

/// Every loaded object, in load order: the executable, the `LD_PRELOAD` libraries in order, then
/// the others.
pub fn loaded_objects() -> Vec<Object> {
    unsafe extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _: usize,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: dl_iterate_phdr passes a valid info; `data` is the Vec we gave it.
        unsafe {
            let objects = &mut *(data as *mut Vec<Object>);
            if !(*info).dlpi_name.is_null() {
                objects.push(Object {
                    name: CStr::from_ptr((*info).dlpi_name).to_owned(),
                    bias: (*info).dlpi_addr as usize,
                });
            }
        }
        0
    }
    let mut objects: Vec<Object> = Vec::new();
    // SAFETY: the callback only reads what the loader hands it and writes `objects`.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&mut objects as *mut Vec<Object>).cast()) };
    objects
}

/// The base address and name of the object that holds `addr`.
pub fn object_of(addr: *const c_void) -> Option<(usize, CString)> {
    // SAFETY: dladdr only reads the loader's tables and fills the plain struct we pass; its
    // dli_fname is a NUL-terminated string owned by the loader, read before we return.
    unsafe {
        let mut info: libc::Dl_info = core::mem::zeroed();
        if libc::dladdr(addr, &mut info) == 0 || info.dli_fname.is_null() {
            return None;
        }
        Some((
            info.dli_fbase as usize,
            CStr::from_ptr(info.dli_fname).to_owned(),
        ))
    }
}

/// libmemtrace.so: its base address and the loader's name for it.
pub fn ourselves() -> Option<(usize, CString)> {
    object_of(ourselves as *const () as *const c_void)
}
