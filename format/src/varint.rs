//! LEB128 varints and zigzag deltas: the integer encoding of every event record (FORMAT.md §4.1).
//!
//! Writing never allocates and never panics: the writer returns `None` when the buffer is too small,
//! so the preload can call it on its hot path. Reading returns `None` on a torn or overlong varint.

/// The longest LEB128 encoding of a `u64`.
pub const MAX_VARINT_LEN: usize = 10;

/// Writes `value` as LEB128 at `buf[*pos..]` and advances `pos`. `None` if it does not fit.
#[inline]
pub fn write_u64(buf: &mut [u8], pos: &mut usize, mut value: u64) -> Option<()> {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        let slot = buf.get_mut(*pos)?;
        *pos += 1;
        if value == 0 {
            *slot = byte;
            return Some(());
        }
        *slot = byte | 0x80;
    }
}

/// Reads a LEB128 `u64` from `buf[*pos..]` and advances `pos`. `None` if the buffer ends first or the
/// encoding is longer than ten bytes.
///
/// This is the innermost loop of every reader, so the common cases take no loop and no branch on
/// the varint's length, which varies from one record to the next and would be mispredicted: with
/// eight bytes of buffer behind it, a varint of up to four bytes (every field a writer produces but
/// the rare large ones) is decoded from one 64-bit load with a few masks and shifts, as is one of
/// up to eight bytes a little more slowly. Anything else takes the byte loop.
#[inline(always)]
pub fn read_u64(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let p = *pos;
    if let Some(bytes) = buf.get(p..p.wrapping_add(8)) {
        let word = u64::from_le_bytes(bytes.try_into().ok()?);
        // A clear high bit marks the last byte of the varint.
        let ends = !word & 0x8080_8080_8080_8080;
        let bits = ends.trailing_zeros() + 1; // 8 * length in bytes (65 when no byte ends it)
        if bits <= 32 {
            *pos = p + (bits / 8) as usize;
            // Keep the varint's bytes, drop their high bits, then close the gaps between the 7-bit
            // groups: pairs, then the two halves.
            let mut x = (word as u32) & (u32::MAX >> (32 - bits)) & 0x7f7f_7f7f;
            x = (x & 0x007f_007f) | ((x & 0x7f00_7f00) >> 1);
            x = (x & 0x0000_3fff) | ((x & 0x3fff_0000) >> 2);
            return Some(u64::from(x));
        }
        if bits <= 64 {
            *pos = p + (bits / 8) as usize;
            let mut x = word & (u64::MAX >> (64 - bits)) & 0x7f7f_7f7f_7f7f_7f7f;
            x = (x & 0x007f_007f_007f_007f) | ((x & 0x7f00_7f00_7f00_7f00) >> 1);
            x = (x & 0x0000_3fff_0000_3fff) | ((x & 0x3fff_0000_3fff_0000) >> 2);
            x = (x & 0x0000_0000_0fff_ffff) | ((x & 0x0fff_ffff_0000_0000) >> 4);
            return Some(x);
        }
    }
    read_u64_loop(buf, pos)
}

/// [`read_u64`] a byte at a time: long varints, and varints near the end of the buffer.
#[cold]
#[inline(never)]
fn read_u64_loop(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    let mut shift = 0u32;
    loop {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        if shift == 63 && byte > 1 {
            return None;
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
}

/// Maps a signed delta to an unsigned one so that small magnitudes encode short (0, -1, 1, -2, ...).
#[inline]
pub fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// The inverse of [`zigzag`].
#[inline]
pub fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// Writes `value - base` (wrapping) as a zigzag varint.
#[inline]
pub fn write_delta(buf: &mut [u8], pos: &mut usize, base: u64, value: u64) -> Option<()> {
    write_u64(buf, pos, zigzag(value.wrapping_sub(base) as i64))
}

/// Reads a zigzag varint delta and applies it to `base` (wrapping).
#[inline(always)]
pub fn read_delta(buf: &[u8], pos: &mut usize, base: u64) -> Option<u64> {
    read_u64(buf, pos).map(|d| base.wrapping_add(unzigzag(d) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings() {
        let mut buf = [0u8; 16];
        let mut pos = 0;
        write_u64(&mut buf, &mut pos, 300).unwrap();
        assert_eq!(&buf[..pos], &[0xac, 0x02]);
        let mut pos = 0;
        write_u64(&mut buf, &mut pos, u64::MAX).unwrap();
        assert_eq!(pos, MAX_VARINT_LEN);
        assert_eq!(zigzag(0), 0);
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
        assert_eq!(zigzag(i64::MIN), u64::MAX);
    }

    #[test]
    fn too_small_buffer_is_refused() {
        let mut buf = [0u8; 1];
        let mut pos = 0;
        assert!(write_u64(&mut buf, &mut pos, 128).is_none());
    }

    #[test]
    fn overlong_and_torn_varints_are_rejected() {
        let mut pos = 0;
        assert!(read_u64(&[0xff; 11], &mut pos).is_none());
        let mut pos = 0;
        assert!(read_u64(&[0x80, 0x80], &mut pos).is_none());
    }

    proptest! {
        #[test]
        fn varint_round_trip(v: u64) {
            let mut buf = [0u8; MAX_VARINT_LEN];
            let mut pos = 0;
            write_u64(&mut buf, &mut pos, v).unwrap();
            let mut rpos = 0;
            prop_assert_eq!(read_u64(&buf, &mut rpos), Some(v));
            prop_assert_eq!(rpos, pos);
        }

        #[test]
        fn fast_and_byte_loop_reads_agree(bytes: Vec<u8>, start in 0usize..16) {
            // Any bytes at all, read at any position: the one-load path and the byte loop must agree
            // on the value, the length and on what they refuse.
            let start = start.min(bytes.len());
            let mut fast = start;
            let mut slow = start;
            let a = read_u64(&bytes, &mut fast);
            let b = read_u64_loop(&bytes, &mut slow);
            prop_assert_eq!(a, b);
            if a.is_some() {
                prop_assert_eq!(fast, slow);
            }
        }

        #[test]
        fn delta_round_trip(base: u64, v: u64) {
            let mut buf = [0u8; MAX_VARINT_LEN];
            let mut pos = 0;
            write_delta(&mut buf, &mut pos, base, v).unwrap();
            let mut rpos = 0;
            prop_assert_eq!(read_delta(&buf, &mut rpos, base), Some(v));
        }
    }
}
