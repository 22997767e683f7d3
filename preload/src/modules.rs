//! The modules (executable, shared libraries, vdso) mapped into the process: found with
//! `dl_iterate_phdr`, described for the trace (path, load bias, segments, build-id), and handed to
//! framehop with a copy of their unwind tables (`.eh_frame_hdr` and `.eh_frame`).
//!
//! Readers never lock: the current [`ModuleMap`] is published through an atomic pointer and replaced
//! whole on a rescan; replaced maps are leaked on purpose (rescans are rare and a thread may still be
//! unwinding with the old one). Unwind data is copied, so a `dlclose` cannot leave it dangling.

use crate::spin::SpinMutex;
use core::ffi::{CStr, c_int, c_void};
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use framehop::x86_64::UnwinderX86_64;
use framehop::{ExplicitModuleSectionInfo, MayAllocateDuringUnwind, Module, Unwinder};
use memtrace_format::{ModuleInfo, Segment};
use std::sync::Arc;

/// The unwinder type: owned unwind data; may allocate (from the real allocator) on a rule-cache
/// miss, which keeps gimli's large evaluation buffers off the traced thread's stack.
pub type NativeUnwinder = UnwinderX86_64<Arc<[u8]>, MayAllocateDuringUnwind>;

/// An address range of one module.
#[derive(Clone, Copy, Debug)]
struct Range {
    start: u64,
    end: u64,
    id: u32,
    bias: u64,
}

/// One snapshot of the process's modules.
pub struct ModuleMap {
    /// framehop's view, with unwind data.
    pub unwinder: NativeUnwinder,
    /// Sorted by start, non-overlapping.
    ranges: Vec<Range>,
    /// The address range of libmemtrace.so itself: frames there are the tracer's, and are cut.
    self_range: (u64, u64),
    /// `dlpi_adds` / `dlpi_subs` when this map was made.
    adds: u64,
    subs: u64,
}

impl ModuleMap {
    /// Whether `addr` is inside the tracer's own code.
    #[inline]
    pub fn is_self(&self, addr: u64) -> bool {
        addr >= self.self_range.0 && addr < self.self_range.1
    }

    /// A copy that cuts no frames: in unit tests the "tracer" module is the test binary itself.
    #[cfg(test)]
    pub fn without_self(&self) -> ModuleMap {
        ModuleMap {
            unwinder: self.unwinder.clone(),
            ranges: self.ranges.clone(),
            self_range: (0, 0),
            adds: self.adds,
            subs: self.subs,
        }
    }

    /// The module id and offset from its bias for `addr`; `None` if no known module holds it.
    #[cfg(test)]
    pub fn resolve(&self, addr: u64) -> Option<(u32, u64)> {
        let mut near = usize::MAX;
        self.resolve_near(addr, &mut near)
    }

    /// The module id and offset from its bias for `addr`, one of a run of addresses that mostly
    /// fall in the module of the one before (the frames of a stack); `None` if no known module
    /// holds it. `near` is the index of the range the one before fell in, tried before a search;
    /// it is set to the range found (`usize::MAX` to start).
    pub fn resolve_near(&self, addr: u64, near: &mut usize) -> Option<(u32, u64)> {
        let r = match self.ranges.get(*near) {
            Some(r) if r.start <= addr && addr < r.end => r,
            _ => {
                let i = self.ranges.partition_point(|r| r.start <= addr);
                *near = i.checked_sub(1)?;
                &self.ranges[*near]
            }
        };
        (addr < r.end).then(|| (r.id, addr.wrapping_sub(r.bias)))
    }
}

/// A module known to the tracer.
struct Known {
    info: ModuleInfo,
    start: u64,
    end: u64,
    framehop: Option<Module<Arc<[u8]>>>,
    seen: bool,
}

struct Registry {
    known: Vec<Known>,
    next_id: u32,
}

static CURRENT: AtomicPtr<ModuleMap> = AtomicPtr::new(core::ptr::null_mut());
static REGISTRY: SpinMutex<Registry> = SpinMutex::new(Registry {
    known: Vec::new(),
    next_id: 1,
});
/// `dlpi_adds + dlpi_subs` at the last check, to make "did anything change?" cheap to answer.
static LAST_GENERATION: AtomicU64 = AtomicU64::new(u64::MAX);

/// The current module map, if the tracer has scanned at least once.
#[inline]
pub fn current() -> Option<&'static ModuleMap> {
    let p = CURRENT.load(Ordering::Acquire);
    // SAFETY: published maps are never freed (see the module docs), so a non-null pointer stays
    // valid for the rest of the process.
    unsafe { p.as_ref() }
}

/// What a rescan found: records to write into the trace.
pub struct Changes {
    /// Modules seen for the first time.
    pub added: Vec<ModuleInfo>,
    /// Ids of modules that are gone.
    pub removed: Vec<u32>,
}

/// Whether the loader's module list changed since the current map was made.
pub fn changed_since_scan() -> bool {
    let (adds, subs) = loader_generation();
    match current() {
        Some(m) => m.adds != adds || m.subs != subs,
        None => true,
    }
}

unsafe extern "C" fn generation_cb(
    info: *mut libc::dl_phdr_info,
    size: usize,
    data: *mut c_void,
) -> c_int {
    // SAFETY: dl_iterate_phdr passes a valid info of `size` bytes; `data` is the (u64, u64) we gave.
    unsafe {
        let out = &mut *(data as *mut (u64, u64));
        if size >= core::mem::offset_of!(libc::dl_phdr_info, dlpi_subs) + 8 {
            *out = ((*info).dlpi_adds, (*info).dlpi_subs);
        }
    }
    1
}

fn loader_generation() -> (u64, u64) {
    let mut g = (0u64, 0u64);
    // SAFETY: the callback only writes the tuple we pass and returns 1 to stop after one module.
    unsafe { libc::dl_iterate_phdr(Some(generation_cb), (&mut g as *mut (u64, u64)).cast()) };
    g
}

/// Rescans the loader's modules and publishes a new map. With `wait == false`, gives up (returns
/// `None`) if another thread is rescanning: a hook must never block on a thread that may itself be
/// waiting for the loader lock.
pub fn rescan(wait: bool) -> Option<Changes> {
    let mut guard = if wait {
        Some(REGISTRY.lock())
    } else {
        REGISTRY.try_lock()
    }?;
    let reg = &mut *guard;
    for k in &mut reg.known {
        k.seen = false;
    }
    let mut scan = Scan {
        reg,
        added: Vec::new(),
        adds: 0,
        subs: 0,
    };
    // SAFETY: the callback reads only what the loader hands it, while the loader holds its lock.
    unsafe { libc::dl_iterate_phdr(Some(scan_cb), (&mut scan as *mut Scan).cast()) };
    let Scan {
        reg,
        added,
        adds,
        subs,
    } = scan;
    let mut removed = Vec::new();
    reg.known.retain(|k| {
        if !k.seen {
            removed.push(k.info.id);
        }
        k.seen
    });
    let self_addr = rescan as *const () as u64;
    let mut unwinder = NativeUnwinder::new();
    let mut ranges = Vec::with_capacity(reg.known.len());
    let mut self_range = (0, 0);
    for k in &reg.known {
        if let Some(m) = &k.framehop {
            unwinder.add_module(m.clone());
        }
        ranges.push(Range {
            start: k.start,
            end: k.end,
            id: k.info.id,
            bias: k.info.bias,
        });
        if self_addr >= k.start && self_addr < k.end {
            self_range = (k.start, k.end);
        }
    }
    ranges.sort_by_key(|r| r.start);
    let map = Box::new(ModuleMap {
        unwinder,
        ranges,
        self_range,
        adds,
        subs,
    });
    CURRENT.store(Box::into_raw(map), Ordering::Release);
    LAST_GENERATION.store(adds.wrapping_add(subs), Ordering::Relaxed);
    Some(Changes {
        added: added
            .into_iter()
            .map(|i| reg.known[i].info.clone())
            .collect(),
        removed,
    })
}

/// Every known module, for a fork child's new trace.
pub fn all_infos() -> Vec<ModuleInfo> {
    REGISTRY
        .lock()
        .known
        .iter()
        .map(|k| k.info.clone())
        .collect()
}

/// Takes the lock for `fork` (released in both processes by [`after_fork`]).
pub fn before_fork() {
    REGISTRY.lock_forever();
}

/// Releases the lock taken by [`before_fork`].
pub fn after_fork() {
    REGISTRY.force_unlock();
}

struct Scan<'a> {
    reg: &'a mut Registry,
    /// Indexes into `reg.known` of modules added by this scan.
    added: Vec<usize>,
    adds: u64,
    subs: u64,
}

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PT_GNU_EH_FRAME: u32 = 0x6474_e550;
const NT_GNU_BUILD_ID: u32 = 3;

unsafe extern "C" fn scan_cb(
    info: *mut libc::dl_phdr_info,
    size: usize,
    data: *mut c_void,
) -> c_int {
    // SAFETY: dl_iterate_phdr passes a valid `info` and our `Scan` as `data`; the module's program
    // headers and its readable segments stay mapped while the loader runs this callback.
    unsafe {
        let scan = &mut *(data as *mut Scan);
        let info = &*info;
        if size >= core::mem::offset_of!(libc::dl_phdr_info, dlpi_subs) + 8 {
            scan.adds = info.dlpi_adds;
            scan.subs = info.dlpi_subs;
        }
        let phdrs = core::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum));
        let bias = info.dlpi_addr;
        let name = if info.dlpi_name.is_null() {
            String::new()
        } else {
            CStr::from_ptr(info.dlpi_name)
                .to_string_lossy()
                .into_owned()
        };
        let mut segments = Vec::new();
        let (mut start, mut end) = (u64::MAX, 0u64);
        for ph in phdrs.iter().filter(|p| p.p_type == PT_LOAD) {
            segments.push(Segment {
                vaddr: ph.p_vaddr,
                memsz: ph.p_memsz,
                flags: ph.p_flags,
            });
            start = start.min(bias.wrapping_add(ph.p_vaddr));
            end = end.max(bias.wrapping_add(ph.p_vaddr + ph.p_memsz));
        }
        if segments.is_empty() {
            return 0;
        }
        if let Some(k) = scan
            .reg
            .known
            .iter_mut()
            .find(|k| k.info.bias == bias && k.start == start && k.end == end)
        {
            k.seen = true;
            return 0;
        }
        let path = if name.is_empty() {
            std::fs::read_link("/proc/self/exe")
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            name
        };
        let build_id = phdrs
            .iter()
            .filter(|p| p.p_type == PT_NOTE)
            .find_map(|p| {
                let notes = core::slice::from_raw_parts(
                    bias.wrapping_add(p.p_vaddr) as *const u8,
                    p.p_memsz as usize,
                );
                find_build_id(notes)
            })
            .unwrap_or_default();
        let framehop = phdrs
            .iter()
            .find(|p| p.p_type == PT_GNU_EH_FRAME)
            .and_then(|hdr| {
                framehop_module(&path, bias, start, end, hdr.p_vaddr, hdr.p_memsz, phdrs)
            });
        let id = scan.reg.next_id;
        scan.reg.next_id += 1;
        scan.reg.known.push(Known {
            info: ModuleInfo {
                id,
                path,
                bias,
                segments,
                build_id,
            },
            start,
            end,
            framehop,
            seen: true,
        });
        scan.added.push(scan.reg.known.len() - 1);
    }
    0
}

/// The GNU build-id in a PT_NOTE segment's bytes.
fn find_build_id(mut notes: &[u8]) -> Option<Vec<u8>> {
    let u32_at = |b: &[u8], i: usize| -> Option<u32> {
        Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?))
    };
    let align4 = |n: usize| (n + 3) & !3;
    while notes.len() >= 12 {
        let namesz = u32_at(notes, 0)? as usize;
        let descsz = u32_at(notes, 4)? as usize;
        let kind = u32_at(notes, 8)?;
        let name_end = 12 + align4(namesz);
        let desc_end = name_end + align4(descsz);
        if desc_end > notes.len() {
            return None;
        }
        if kind == NT_GNU_BUILD_ID && notes.get(12..12 + namesz)? == b"GNU\0" {
            return Some(notes[name_end..name_end + descsz].to_vec());
        }
        notes = &notes[desc_end..];
    }
    None
}

/// Builds framehop's module from the in-memory `.eh_frame_hdr` and `.eh_frame`.
///
/// # Safety
/// The module described by `bias` and `phdrs` is mapped and its PT_LOAD segments are readable.
unsafe fn framehop_module(
    path: &str,
    bias: u64,
    start: u64,
    end: u64,
    hdr_vaddr: u64,
    hdr_len: u64,
    phdrs: &[libc::Elf64_Phdr],
) -> Option<Module<Arc<[u8]>>> {
    // SAFETY: PT_GNU_EH_FRAME lies inside a mapped, readable segment (caller's contract).
    let hdr = unsafe {
        core::slice::from_raw_parts(bias.wrapping_add(hdr_vaddr) as *const u8, hdr_len as usize)
    };
    let eh_frame_vaddr = eh_frame_address(hdr, hdr_vaddr)?;
    // .eh_frame has no length of its own in memory: take the rest of the segment holding it.
    let seg = phdrs.iter().find(|p| {
        p.p_type == PT_LOAD && p.p_vaddr <= eh_frame_vaddr && eh_frame_vaddr < p.p_vaddr + p.p_memsz
    })?;
    let seg_end = seg.p_vaddr + seg.p_filesz.min(seg.p_memsz);
    if eh_frame_vaddr >= seg_end {
        return None;
    }
    // SAFETY: [eh_frame, end of the segment's file-backed part) is mapped and readable.
    let eh_frame = unsafe {
        core::slice::from_raw_parts(
            bias.wrapping_add(eh_frame_vaddr) as *const u8,
            (seg_end - eh_frame_vaddr) as usize,
        )
    };
    let info = ExplicitModuleSectionInfo {
        base_svma: 0,
        eh_frame_hdr_svma: Some(hdr_vaddr..hdr_vaddr + hdr_len),
        eh_frame_hdr: Some(Arc::<[u8]>::from(hdr)),
        eh_frame_svma: Some(eh_frame_vaddr..seg_end),
        eh_frame: Some(Arc::<[u8]>::from(eh_frame)),
        ..Default::default()
    };
    Some(Module::new(path.to_owned(), start..end, bias, info))
}

/// Decodes `eh_frame_ptr` from an `.eh_frame_hdr` at file address `hdr_vaddr`.
fn eh_frame_address(hdr: &[u8], hdr_vaddr: u64) -> Option<u64> {
    const DW_EH_PE_UDATA4: u8 = 0x03;
    const DW_EH_PE_SDATA4: u8 = 0x0b;
    const DW_EH_PE_UDATA8: u8 = 0x04;
    const DW_EH_PE_SDATA8: u8 = 0x0c;
    const DW_EH_PE_PCREL: u8 = 0x10;
    const DW_EH_PE_DATAREL: u8 = 0x30;
    if *hdr.first()? != 1 {
        return None;
    }
    let enc = *hdr.get(1)?;
    let field = hdr_vaddr + 4;
    let raw: i64 = match enc & 0x0f {
        DW_EH_PE_UDATA4 => i64::from(u32::from_le_bytes(hdr.get(4..8)?.try_into().ok()?)),
        DW_EH_PE_SDATA4 => i64::from(i32::from_le_bytes(hdr.get(4..8)?.try_into().ok()?)),
        DW_EH_PE_UDATA8 | DW_EH_PE_SDATA8 => i64::from_le_bytes(hdr.get(4..12)?.try_into().ok()?),
        _ => return None,
    };
    match enc & 0x70 {
        0 => Some(raw as u64),
        DW_EH_PE_PCREL => Some(field.wrapping_add(raw as u64)),
        DW_EH_PE_DATAREL => Some(hdr_vaddr.wrapping_add(raw as u64)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_id_note_is_found() {
        let mut note = Vec::new();
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&3u32.to_le_bytes());
        note.extend_from_slice(&1u32.to_le_bytes()); // some other note first
        note.extend_from_slice(b"XYZ\0abc\0");
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&NT_GNU_BUILD_ID.to_le_bytes());
        note.extend_from_slice(b"GNU\0");
        note.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(find_build_id(&note), Some(vec![0xde, 0xad, 0xbe, 0xef]));
        assert_eq!(find_build_id(&note[..20]), None);
    }

    #[test]
    fn eh_frame_pointer_decodes_pcrel_sdata4() {
        // version 1, pcrel|sdata4, then -0x10 relative to the field at hdr+4.
        let mut hdr = vec![1u8, 0x1b, 0x03, 0x3b];
        hdr.extend_from_slice(&(-0x10i32).to_le_bytes());
        assert_eq!(eh_frame_address(&hdr, 0x1000), Some(0x1000 + 4 - 0x10));
    }

    #[test]
    fn this_process_scans() {
        // Other tests may have scanned first: check the registry, not this scan's additions.
        rescan(true).expect("a waiting scan always runs");
        let infos = all_infos();
        assert!(infos.len() >= 2, "the test binary and libc at least");
        assert!(
            infos.iter().any(|m| m.path.contains("libc.so")),
            "{infos:?}"
        );
        let map = current().unwrap();
        let here = this_process_scans as *const () as u64;
        assert!(map.resolve(here).is_some());
        assert!(!changed_since_scan());
    }

    #[test]
    fn resolving_near_the_last_range_agrees_with_a_search() {
        rescan(true).expect("a waiting scan always runs");
        let map = current().unwrap();
        let here = resolving_near_the_last_range_agrees_with_a_search as *const () as u64;
        let libc = libc::malloc as *const () as u64;
        // Runs within one module, jumps between modules, and addresses no module holds.
        let addrs = [
            here,
            here + 16,
            libc,
            libc + 8,
            here,
            0,
            here,
            u64::MAX,
            u64::MAX - 1,
            libc,
        ];
        let mut near = usize::MAX;
        for a in addrs {
            let found = map.resolve_near(a, &mut near);
            assert_eq!(found, map.resolve(a), "{a:#x}");
            assert_eq!(found.is_some(), a != 0 && a < u64::MAX - 1, "{a:#x}");
        }
    }
}
