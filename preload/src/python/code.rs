//! Python code objects: each one the trace meets gets a small id, and its name, qualified name,
//! file, first line and line table are read once, straight from the object's memory (no Python API:
//! we may be inside malloc, without the GIL), for the PyCode record (FORMAT.md §4.11).
//!
//! A code object is known by its address together with its line table's address: a code object
//! freed and another allocated at the same place almost never also gets its line table at the same
//! place, so a recycled address does not inherit the old code's name.

use super::Interp;
use super::layout::{BYTES_DATA, BYTES_SIZE, OB_TYPE, STR_LENGTH, STR_STATE};
use crate::spin::SpinMutex;
use memtrace_format::PyCodeInfo;
use memtrace_format::record::line_table;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Longest name or file name kept, in characters.
const MAX_STR: usize = 4096;
/// Longest line table kept, in bytes (the record's limit is 64 KiB).
const MAX_TABLE: usize = 60 << 10;

/// The registry's keys are pairs of heap addresses, not chosen by anyone: a multiply per word and a
/// final fold (so that the table's index, its low bits, depends on every bit) spread them well, at a
/// small part of SipHash's cost. Each new stack looks up every one of its Python frames here.
#[derive(Default)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

struct Registry {
    ids: HashMap<(u64, u64), u32, BuildHasherDefault<AddrHasher>>,
    next_id: u32,
}

static REGISTRY: SpinMutex<Registry> = SpinMutex::new(Registry {
    ids: HashMap::with_hasher(BuildHasherDefault::new()),
    next_id: 1,
});

/// The id of the code object at `code` (line table at `table`), and whether it is new to the trace
/// (its record must then be written, before any stack that uses it).
pub fn id(code: u64, table: u64) -> (u32, bool) {
    let mut r = REGISTRY.lock();
    if let Some(&id) = r.ids.get(&(code, table)) {
        return (id, false);
    }
    let id = r.next_id;
    r.next_id += 1;
    r.ids.insert((code, table), id);
    (id, true)
}

/// Entries of a thread's [`RecentCodes`] (a power of two).
const RECENT: usize = 1024;

/// The code ids one thread looked up last, in front of the registry. Each new stack looks up every
/// one of its Python frames, mostly frames of the stacks before it, and the registry's lock and hash
/// map cost several times a look at this small direct-mapped table. The registry never changes an
/// id it gave, so an entry stays true until a fork child forgets every id: its forking thread then
/// calls [`RecentCodes::clear`].
///
/// The entries (24 KiB) are on the heap: a thread's state is made on its first allocation, on that
/// thread's stack, which may be as small as `PTHREAD_STACK_MIN` (glibc's timer helper threads).
pub struct RecentCodes {
    /// `(code, table, id)` per entry, key and id in one cache line; code objects are at 4096 or
    /// above, so a code of 0 marks an empty entry.
    entries: Box<[(u64, u64, u32)]>,
}

impl RecentCodes {
    pub fn new() -> RecentCodes {
        RecentCodes {
            entries: vec![(0, 0, 0); RECENT].into_boxed_slice(),
        }
    }

    /// [`id`], answered from this thread's recent look-ups where it can be.
    pub fn id(&mut self, code: u64, table: u64) -> (u32, bool) {
        // Code objects are a few hundred bytes apart: the bits above their alignment, mixed with the
        // next ones so that strides of a power of two spread too.
        let i = ((code >> 4) ^ (code >> 14)) as usize & (RECENT - 1);
        let e = &mut self.entries[i];
        if (e.0, e.1) == (code, table) {
            return (e.2, false);
        }
        let (id, new) = id(code, table);
        *e = (code, table, id);
        (id, new)
    }

    /// Forgets every entry.
    pub fn clear(&mut self) {
        self.entries.fill((0, 0, 0));
    }
}

/// Reads the code object at `code` for its record.
pub fn read(interp: &Interp, code: u64, id: u32) -> PyCodeInfo {
    let l = interp.layout;
    let name = read_str(interp, read_u64(code + l.co_name as u64));
    let qualname = match l.co_qualname {
        Some(o) => read_str(interp, read_u64(code + o as u64)),
        None => name.clone(),
    };
    let table = read_bytes(interp, read_u64(code + l.co_line_table as u64));
    PyCodeInfo {
        id,
        name,
        qualname,
        filename: read_str(interp, read_u64(code + l.co_filename as u64)),
        first_line: read_u64(code + l.co_firstlineno as u64) as u32,
        line_table_kind: if table.is_some() {
            l.line_table_kind
        } else {
            line_table::NONE
        },
        line_table: table.unwrap_or_default(),
    }
}

fn read_u64(addr: u64) -> u64 {
    super::frames::read_direct(addr).unwrap_or(0)
}

/// A `str` object's text; `?` for anything else, and for the legacy (non-compact) representation.
fn read_str(interp: &Interp, obj: u64) -> String {
    if obj < 4096 || read_u64(obj + OB_TYPE as u64) != interp.unicode_type {
        return "?".into();
    }
    let len = (read_u64(obj + STR_LENGTH as u64) as usize).min(MAX_STR);
    let state = read_u64(obj + STR_STATE as u64) as u32;
    let kind = ((state >> 2) & 7) as usize;
    let compact = (state >> 5) & 1 == 1;
    let ascii = (state >> 6) & 1 == 1;
    if !compact || !matches!(kind, 1 | 2 | 4) {
        return "?".into();
    }
    let data = obj
        + if ascii {
            interp.layout.ascii_size
        } else {
            interp.layout.compact_size
        } as u64;
    // SAFETY: a compact str object (its type checked above) keeps its `len` characters of `kind`
    // bytes each right after its header, immutable for the object's life; the object is referenced
    // by a code object that a frame of this thread is running, so it is alive.
    let bytes = unsafe { core::slice::from_raw_parts(data as *const u8, len * kind) };
    match kind {
        1 => bytes.iter().map(|&b| char::from(b)).collect(),
        2 => bytes
            .chunks_exact(2)
            .map(|c| char::from_u32(u32::from(u16::from_ne_bytes([c[0], c[1]]))).unwrap_or('?'))
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_ne_bytes([c[0], c[1], c[2], c[3]])).unwrap_or('?'))
            .collect(),
    }
}

/// A `bytes` object's contents, if it is one and not too long.
fn read_bytes(interp: &Interp, obj: u64) -> Option<Vec<u8>> {
    if obj < 4096 || read_u64(obj + OB_TYPE as u64) != interp.bytes_type {
        return None;
    }
    let len = read_u64(obj + BYTES_SIZE as u64) as usize;
    if len > MAX_TABLE {
        return None;
    }
    // SAFETY: a bytes object (type checked above) holds `ob_size` bytes at `ob_sval`, immutable
    // and alive with the code object that refers to it (see `read_str`).
    Some(
        unsafe { core::slice::from_raw_parts((obj + BYTES_DATA as u64) as *const u8, len) }
            .to_vec(),
    )
}

/// Takes the registry's lock for `fork`.
pub fn before_fork() {
    REGISTRY.lock_forever();
}

/// Releases the lock; in the child, forgets every id (the child's trace defines its own).
pub fn after_fork(child: bool) {
    REGISTRY.force_unlock();
    if child {
        let mut r = REGISTRY.lock();
        r.ids.clear();
        r.next_id = 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_codes_give_the_registry_s_ids_and_report_each_code_new_once() {
        let holds = |r: &RecentCodes, code: u64, table: u64| {
            r.entries.iter().any(|e| (e.0, e.1) == (code, table))
        };
        let mut a = RecentCodes::new();
        let mut b = RecentCodes::new();
        // Addresses no other test uses, which share an entry of the table.
        let (x, y) = (0x7e57_0000_0100, 0x7e57_0000_4110);
        let (id_x, new_x) = a.id(x, 8);
        assert!(new_x);
        assert_eq!(a.id(x, 8), (id_x, false));
        // Another thread's table learns the same id from the registry, as not new.
        assert_eq!(b.id(x, 8), (id_x, false));
        // The same code address with another line table is another code object.
        let (id_x2, new_x2) = a.id(x, 16);
        assert!(new_x2);
        assert_ne!(id_x2, id_x);
        // A code object that takes over the entry, then the first one again: its old id.
        assert!(holds(&a, x, 16));
        let (id_y, new_y) = a.id(y, 8);
        assert!(new_y);
        assert_ne!(id_y, id_x);
        assert!(!holds(&a, x, 16), "y took x's entry");
        assert_eq!(a.id(x, 8), (id_x, false));
        assert_eq!(a.id(y, 8), (id_y, false));
        // Cleared (a fork child), the entries are gone and the registry answers again.
        a.clear();
        assert!(a.entries.iter().all(|&e| e == (0, 0, 0)));
        assert_eq!(a.id(y, 8), (id_y, false));
    }
}
