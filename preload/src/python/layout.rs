//! What differs between CPython versions, as data: for each supported minor version, where the
//! current frame hangs off the thread state, how frames link and where a frame's code object and
//! instruction are, and where a code object keeps its name, file, first line and line table.
//!
//! The offsets were read with `offsetof` from each version's own headers (`Py_BUILD_CORE`, x86_64),
//! 3.8.18 to 3.13.0; `python/mod.rs` checks them against the running interpreter before use.
//!
//! | version | current frame | frame | instruction | entry into the eval loop | line table |
//! |---|---|---|---|---|---|
//! | 3.8, 3.9 | `tstate->frame` | `PyFrameObject`, `f_back` | `f_lasti`, bytes | every frame | `co_lnotab` |
//! | 3.10 | `tstate->frame` | `PyFrameObject`, `f_back` | `f_lasti`, code units | every frame | `co_linetable` (3.10) |
//! | 3.11 | `tstate->cframe->current_frame` | `_PyInterpreterFrame`, `previous` | `prev_instr` | `is_entry` | locations |
//! | 3.12 | `tstate->cframe->current_frame` | `_PyInterpreterFrame`, `previous` | `prev_instr` | shim frame owned by the C stack | locations |
//! | 3.13 | `tstate->current_frame` | `_PyInterpreterFrame`, `previous` | `instr_ptr` | shim frame owned by the C stack | locations |

use memtrace_format::record::line_table;

/// How a version keeps its frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// 3.8-3.10: heap `PyFrameObject`s, one C call of the eval loop each; `f_lasti` is an int that
    /// counts bytes (3.8, 3.9) or code units (3.10).
    Object {
        /// Offset of `f_lasti`.
        lasti: usize,
        /// Bytes per unit of `f_lasti`.
        lasti_unit: u64,
    },
    /// 3.11+: `_PyInterpreterFrame`s in the thread's data stack, several per C call of the eval loop.
    Interpreter {
        /// Offset of the instruction pointer (`prev_instr`, or `instr_ptr` from 3.13).
        instr: usize,
        /// Offset of `owner` (a `char`).
        owner: usize,
        /// Offset of `is_entry` (a `bool`, 3.11 only).
        is_entry: Option<usize>,
        /// Offset of `co_code_adaptive` in the code object: where its bytecode starts.
        code_start: usize,
        /// Offset of `_co_firsttraceable` (an `int`, in code units).
        first_traceable: usize,
    },
}

/// The layout of one CPython minor version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `(3, minor)`.
    pub minor: u32,
    /// Offset in `PyThreadState` of the pointer to the current frame (3.8-3.10, 3.13), or of
    /// `cframe` (3.11, 3.12).
    pub tstate_frame: usize,
    /// For 3.11 and 3.12: offset of `current_frame` in `_PyCFrame`.
    pub cframe_current: Option<usize>,
    /// Offset of the frame's code object (`f_code`; `f_executable` from 3.13).
    pub frame_code: usize,
    /// Offset of the next outer frame (`f_back` or `previous`).
    pub frame_back: usize,
    /// The frame's kind and its own fields.
    pub frame: FrameKind,
    /// `co_name`.
    pub co_name: usize,
    /// `co_qualname` (3.11+).
    pub co_qualname: Option<usize>,
    /// `co_filename`.
    pub co_filename: usize,
    /// `co_firstlineno` (an `int`).
    pub co_firstlineno: usize,
    /// `co_lnotab` (3.8, 3.9) or `co_linetable`: a bytes object.
    pub co_line_table: usize,
    /// Which layout that table has (`memtrace_format::record::line_table`).
    pub line_table_kind: u8,
    /// `sizeof(PyASCIIObject)`: where a compact ASCII string's characters start.
    pub ascii_size: usize,
    /// `sizeof(PyCompactUnicodeObject)`: where a compact non-ASCII string's characters start.
    pub compact_size: usize,
}

/// `owner` of a frame that belongs to a generator (never "incomplete").
pub const OWNED_BY_GENERATOR: u8 = 1;
/// `owner` of the shim frame the eval loop pushes on entry (3.12+): not a Python frame.
pub const OWNED_BY_CSTACK: u8 = 3;

/// Offsets that every supported version shares: `ob_type` of any object, and a bytes object's size
/// and data, and a string's length and state bits.
pub const OB_TYPE: usize = 8;
/// `PyVarObject.ob_size` of a bytes object.
pub const BYTES_SIZE: usize = 16;
/// `PyBytesObject.ob_sval`.
pub const BYTES_DATA: usize = 32;
/// `PyASCIIObject.length`.
pub const STR_LENGTH: usize = 16;
/// `PyASCIIObject.state` (bits: interned 2, kind 3, compact 1, ascii 1).
pub const STR_STATE: usize = 32;

const fn object_frames(minor: u32, lasti: usize, lasti_unit: u64, line_table: usize) -> Layout {
    Layout {
        minor,
        tstate_frame: 24,
        cframe_current: None,
        frame_code: 32,
        frame_back: 24,
        frame: FrameKind::Object { lasti, lasti_unit },
        co_name: 112,
        co_qualname: None,
        co_filename: 104,
        co_firstlineno: 40,
        co_line_table: line_table,
        line_table_kind: if minor < 10 {
            line_table::LNOTAB
        } else {
            line_table::LINETABLE_310
        },
        ascii_size: 48,
        compact_size: 72,
    }
}

/// Every supported version.
pub const LAYOUTS: [Layout; 6] = [
    object_frames(8, 104, 1, 120),
    object_frames(9, 104, 1, 120),
    object_frames(10, 96, 2, 120),
    Layout {
        minor: 11,
        tstate_frame: 56,
        cframe_current: Some(8),
        frame_code: 32,
        frame_back: 48,
        frame: FrameKind::Interpreter {
            instr: 56,
            owner: 69,
            is_entry: Some(68),
            code_start: 184,
            first_traceable: 168,
        },
        co_name: 120,
        co_qualname: Some(128),
        co_filename: 112,
        co_firstlineno: 72,
        co_line_table: 136,
        line_table_kind: line_table::LOCATIONS_311,
        ascii_size: 48,
        compact_size: 72,
    },
    Layout {
        minor: 12,
        tstate_frame: 56,
        cframe_current: Some(0),
        frame_code: 0,
        frame_back: 8,
        frame: FrameKind::Interpreter {
            instr: 56,
            owner: 70,
            is_entry: None,
            code_start: 192,
            first_traceable: 176,
        },
        co_name: 120,
        co_qualname: Some(128),
        co_filename: 112,
        co_firstlineno: 68,
        co_line_table: 136,
        line_table_kind: line_table::LOCATIONS_311,
        ascii_size: 40,
        compact_size: 56,
    },
    Layout {
        minor: 13,
        tstate_frame: 72,
        cframe_current: None,
        frame_code: 0,
        frame_back: 8,
        frame: FrameKind::Interpreter {
            instr: 56,
            owner: 70,
            is_entry: None,
            code_start: 200,
            first_traceable: 184,
        },
        co_name: 120,
        co_qualname: Some(128),
        co_filename: 112,
        co_firstlineno: 68,
        co_line_table: 136,
        line_table_kind: line_table::LOCATIONS_311,
        ascii_size: 40,
        compact_size: 56,
    },
];

/// The layout of CPython `3.minor`, if supported.
pub fn for_version(major: u32, minor: u32) -> Option<&'static Layout> {
    if major != 3 {
        return None;
    }
    LAYOUTS.iter().find(|l| l.minor == minor)
}

/// `(major, minor)` from the start of `Py_GetVersion()`'s string, e.g. `3.11.7 (main, ...)`.
pub fn parse_version(s: &[u8]) -> Option<(u32, u32)> {
    let end = s.iter().position(|&c| c == b' ').unwrap_or(s.len());
    let text = core::str::from_utf8(&s[..end]).ok()?;
    let mut parts = text.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()?
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version(b"3.11.7 (main, Jan 1 2024)"), Some((3, 11)));
        assert_eq!(parse_version(b"3.13.0"), Some((3, 13)));
        assert_eq!(parse_version(b"3.14.0a1+ (heads/main)"), Some((3, 14)));
        assert_eq!(parse_version(b"junk"), None);
    }

    #[test]
    fn supported_range() {
        for minor in 8..=13 {
            assert_eq!(for_version(3, minor).map(|l| l.minor), Some(minor));
        }
        assert!(for_version(3, 7).is_none());
        assert!(for_version(3, 14).is_none());
        assert!(for_version(2, 7).is_none());
    }
}
