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
#[inline]
pub fn read_u64(buf: &[u8], pos: &mut usize) -> Option<u64> {
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
#[inline]
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
        fn delta_round_trip(base: u64, v: u64) {
            let mut buf = [0u8; MAX_VARINT_LEN];
            let mut pos = 0;
            write_delta(&mut buf, &mut pos, base, v).unwrap();
            let mut rpos = 0;
            prop_assert_eq!(read_delta(&buf, &mut rpos, base), Some(v));
        }
    }
}
