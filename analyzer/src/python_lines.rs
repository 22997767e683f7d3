//! Line numbers of Python frames: decodes the interpreter's own line table, copied byte for byte into
//! a trace's PyCode record (FORMAT.md §4.11), exactly as CPython's `PyCode_Addr2Line` does for each
//! layout, so an instruction offset maps to the line a traceback (or tracemalloc) would show.
//!
//! - [`line_table::LNOTAB`] (3.8, 3.9 `co_lnotab`): pairs (byte offset increment, signed line
//!   increment); the line of an offset is that of the last pair starting at or before it. Never
//!   "no line".
//! - [`line_table::LINETABLE_310`] (3.10 `co_linetable`, CPython's `Objects/lnotab_notes.txt`):
//!   pairs (byte length of a range, signed line delta); a delta of -128 means the range has no line.
//! - [`line_table::LOCATIONS_311`] (3.11+, `Objects/locations.md`): entries whose first byte has
//!   bit 7 set, code `(b >> 3) & 15`, length `(b & 7) + 1` code units; codes 0-9 (short form) and
//!   10-12 (one line, delta 0, 1, 2) carry column bytes, 13 (no column) and 14 (long form) a signed
//!   varint line delta, 15 means no location.
//! - [`line_table::NONE`]: every instruction is on the first line.
//!
//! "No line" (CPython's -1) is `None`; reports show such a frame at its code's first line. Nothing
//! here panics or loops without bound on a malformed table: a table that ends early, a varint cut
//! short or an unknown kind give what the bytes so far say, or `None`.
//!
//! [`line_table::LNOTAB`]: memtrace_format::record::line_table::LNOTAB
//! [`line_table::LINETABLE_310`]: memtrace_format::record::line_table::LINETABLE_310
//! [`line_table::LOCATIONS_311`]: memtrace_format::record::line_table::LOCATIONS_311
//! [`line_table::NONE`]: memtrace_format::record::line_table::NONE

use memtrace_format::record::line_table;

/// The line of the instruction at byte offset `instruction` in a code object whose line table has
/// layout `kind` and bytes `table`, and whose first line is `first_line`: what CPython's
/// `PyCode_Addr2Line(code, instruction)` returns, `None` for its -1 (no line; also a negative
/// line a corrupt table could produce, and an unknown `kind`).
///
/// `instruction` is taken as CPython's `int addrq`: a value with bit 31 set is negative (a frame
/// that has not started executing), whose line is the first line.
pub fn line_of(kind: u8, table: &[u8], first_line: u32, instruction: u32) -> Option<u32> {
    let addr = instruction as i32;
    let first = i64::from(first_line);
    let line = if addr < 0 {
        Some(first)
    } else {
        let addr = i64::from(addr);
        match kind {
            line_table::NONE => Some(first),
            line_table::LNOTAB => Some(lnotab(table, first, addr)),
            line_table::LINETABLE_310 => linetable_310(table, first, addr),
            line_table::LOCATIONS_311 => locations_311(table, first, addr),
            _ => None,
        }
    };
    line.and_then(|l| u32::try_from(l).ok())
}

/// 3.8 and 3.9 `PyCode_Addr2Line` over `co_lnotab`.
fn lnotab(table: &[u8], first: i64, addr: i64) -> i64 {
    let mut line = first;
    let mut at = 0i64;
    for pair in table.chunks_exact(2) {
        at += i64::from(pair[0]);
        if at > addr {
            break;
        }
        line += i64::from(pair[1] as i8);
    }
    line
}

/// An address range of a line table with its line (`None`: no line), as CPython's
/// `PyCodeAddressRange` walks them.
struct Range {
    start: i64,
    end: i64,
    line: Option<i64>,
}

/// `_PyCode_CheckLineNumber` from a fresh `PyCodeAddressRange`: walk ranges until one ends after
/// `addr`; `None` when the table ends first. `next` advances to the next range, `None` at the end.
fn check_line_number(addr: i64, mut next: impl FnMut(&mut Range) -> bool) -> Option<i64> {
    let mut range = Range {
        start: -1,
        end: 0,
        line: None,
    };
    while range.end <= addr {
        if !next(&mut range) {
            return None;
        }
    }
    // `range.start <= addr` always holds here: ranges are walked forward from -1.
    range.line
}

/// 3.10 `PyCode_Addr2Line` over `co_linetable`.
fn linetable_310(table: &[u8], first: i64, addr: i64) -> Option<i64> {
    let mut pos = 0usize;
    let mut computed = first;
    let mut advance = |r: &mut Range, pos: &mut usize| {
        let (len, delta) = (table[*pos], table[*pos + 1] as i8);
        *pos += 2;
        r.start = r.end;
        r.end += i64::from(len);
        if delta == -128 {
            r.line = None;
        } else {
            computed += i64::from(delta);
            r.line = Some(computed);
        }
    };
    check_line_number(addr, |r| {
        // `PyLineTable_NextAddressRange`: one entry, then past empty ranges. A lone trailing byte
        // is no entry.
        if pos + 2 > table.len() {
            return false;
        }
        advance(r, &mut pos);
        while r.start == r.end && pos + 2 <= table.len() {
            advance(r, &mut pos);
        }
        true
    })
}

/// 3.11+ `PyCode_Addr2Line` over the location table.
fn locations_311(table: &[u8], first: i64, addr: i64) -> Option<i64> {
    let mut pos = 0usize;
    let mut computed = first;
    check_line_number(addr, |r| {
        // `_PyLineTable_NextAddressRange`: at the end when no byte is left. CPython asserts that
        // each entry starts with bit 7 set; a table that does not is taken as it comes.
        let Some(&b) = table.get(pos) else {
            return false;
        };
        let code = (b >> 3) & 15;
        computed += match code {
            13 | 14 => signed_varint(&table[pos + 1..]),
            11 => 1,
            12 => 2,
            _ => 0,
        };
        r.line = if b >> 3 == 0x1f { None } else { Some(computed) };
        r.start = r.end;
        r.end += (i64::from(b & 7) + 1) * 2;
        pos += 1;
        while pos < table.len() && table[pos] & 0x80 == 0 {
            pos += 1;
        }
        true
    })
}

/// CPython's `scan_varint`: 6-bit chunks, least significant first, 0x40 meaning more follow. Stops
/// at the end of `bytes`; a chunk beyond 32 bits (only a corrupt table has one) adds nothing.
fn varint(bytes: &[u8]) -> u64 {
    let mut value = 0u64;
    let mut shift = 0u32;
    for &b in bytes {
        if shift < 32 {
            value |= u64::from(b & 63) << shift;
        }
        shift += 6;
        if b & 64 == 0 {
            break;
        }
    }
    value & u64::from(u32::MAX)
}

/// CPython's `scan_signed_varint`: the low bit is the sign.
fn signed_varint(bytes: &[u8]) -> i64 {
    let v = varint(bytes);
    if v & 1 == 1 {
        -((v >> 1) as i64)
    } else {
        (v >> 1) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use line_table::{LINETABLE_310, LNOTAB, LOCATIONS_311, NONE};

    #[test]
    fn lnotab_pairs_and_signed_increments() {
        // Line 10 at 0; +2 bytes: line 11; +4 bytes: line 9 (a line going back); +255 bytes on the
        // same line, then +1 more with +200 lines (split as 127 + 73 in the table).
        let t = [2, 1, 4, 0xfe, 255, 0, 1, 127, 0, 73];
        let at = |o| line_of(LNOTAB, &t, 10, o);
        assert_eq!(
            [at(0), at(1), at(2), at(5), at(6)],
            [10, 10, 11, 11, 9].map(Some)
        );
        assert_eq!(at(261), Some(9));
        assert_eq!(at(262), Some(209));
        assert_eq!(at(10_000), Some(209), "past the table: its last line");
        // A lone trailing byte is ignored.
        assert_eq!(line_of(LNOTAB, &[2], 10, 4), Some(10));
    }

    #[test]
    fn linetable_310_ranges_and_no_line() {
        // [0, 4): line 5 (+0); [4, 6): no line; [6, 8): line 8 (+3); an empty range (+1) merged
        // into the next, [8, 10): line 7 (-2 after +1).
        let t = [4, 0, 2, 0x80, 2, 3, 0, 1, 2, 0xfe];
        let at = |o| line_of(LINETABLE_310, &t, 5, o);
        assert_eq!(
            [at(0), at(2), at(4), at(6), at(8), at(10)],
            [Some(5), Some(5), None, Some(8), Some(7), None]
        );
        assert_eq!(line_of(LINETABLE_310, &[], 5, 0), None);
        assert_eq!(
            line_of(LINETABLE_310, &[2, 0, 0], 5, 2),
            None,
            "a lone byte"
        );
    }

    #[test]
    fn locations_311_forms() {
        // Short form (code 0, 1 unit, column byte), one-line +1 (code 11, 2 units, 2 column
        // bytes), no-column with delta -3 (varint 7), long form +100 over two varint chunks (200 =
        // 0b11_001000: 0x48, 0x03) with its 3 column varints, no location (code 15).
        let t = [
            0x80, 0x05, // line 20, [0, 2)
            0xd9, 0x01, 0x02, // line 21, [2, 6)
            0xe8, 0x07, // line 18, [6, 8)
            0xf0, 0x48, 0x03, 0x00, 0x01, 0x02, // line 118, [8, 10)
            0xf8, // no line, [10, 12)
        ];
        let at = |o| line_of(LOCATIONS_311, &t, 20, o);
        assert_eq!(
            [at(0), at(2), at(4), at(6), at(8), at(10), at(12)],
            [
                Some(20),
                Some(21),
                Some(21),
                Some(18),
                Some(118),
                None,
                None
            ]
        );
    }

    #[test]
    fn negative_offsets_unknown_kinds_and_negative_lines() {
        assert_eq!(line_of(LOCATIONS_311, &[0xf8], 7, u32::MAX), Some(7));
        assert_eq!(line_of(NONE, &[1, 2, 3], 7, 100), Some(7));
        assert_eq!(line_of(9, &[], 7, 0), None);
        // Line 1 and -3: not a line.
        assert_eq!(line_of(LNOTAB, &[0, 0xfd], 1, 0), None);
    }

    #[test]
    fn malformed_tables_end_quietly() {
        // A varint cut short, continuation bits forever, no bit 7 on the first byte.
        for t in [
            &[0xe8u8, 0x47][..],
            &[0xf0, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f],
            &[0x05],
        ] {
            for o in [0, 2, 100] {
                let _ = line_of(LOCATIONS_311, t, 1, o);
            }
        }
        assert_eq!(line_of(LOCATIONS_311, &[0x05, 0x80], 3, 0), Some(3));
    }
}
