//! SQLite's record varint: 1 to 9 bytes, big-endian groups of 7 bits with the high bit
//! meaning "more follows"; a ninth byte contributes all 8 of its bits.

/// Appends `v` as a varint.
pub fn write(out: &mut Vec<u8>, v: u64) {
    if v <= 0x7f {
        out.push(v as u8);
        return;
    }
    if v > 0x00ff_ffff_ffff_ffff {
        // Nine-byte form: eight 7-bit groups carry the high 56 bits, the last byte the low 8.
        let hi = v >> 8;
        for i in (0..8).rev() {
            out.push(((hi >> (7 * i)) & 0x7f) as u8 | 0x80);
        }
        out.push(v as u8);
        return;
    }
    let n = len(v);
    for i in (0..n).rev() {
        let byte = ((v >> (7 * i)) & 0x7f) as u8;
        out.push(if i == 0 { byte } else { byte | 0x80 });
    }
}

/// Number of bytes [`write`] uses for `v`.
pub fn len(v: u64) -> usize {
    if v > 0x00ff_ffff_ffff_ffff {
        return 9;
    }
    let bits = 64 - v.leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

/// Reads a varint from the start of `buf`: the value and the number of bytes used, or
/// `None` if `buf` ends inside it.
pub fn read(buf: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for i in 0..9 {
        let b = *buf.get(i)?;
        if i == 8 {
            return Some(((v << 8) | u64::from(b), 9));
        }
        v = (v << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    unreachable!("the loop returns by its ninth byte")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings() {
        let cases: &[(u64, &[u8])] = &[
            (0, &[0]),
            (127, &[0x7f]),
            (128, &[0x81, 0x00]),
            (300, &[0x82, 0x2c]),
            (u64::MAX, &[0xff; 9]),
        ];
        for (v, bytes) in cases {
            let mut out = Vec::new();
            write(&mut out, *v);
            assert_eq!(&out[..], *bytes, "encoding {v}");
            assert_eq!(read(bytes), Some((*v, bytes.len())));
            assert_eq!(len(*v), bytes.len());
        }
    }

    #[test]
    fn truncated_is_none() {
        assert_eq!(read(&[]), None);
        assert_eq!(read(&[0x81]), None);
        assert_eq!(read(&[0xff; 8]), None);
    }

    proptest! {
        #[test]
        fn round_trip(v in any::<u64>()) {
            let mut out = Vec::new();
            write(&mut out, v);
            prop_assert_eq!(out.len(), len(v));
            prop_assert_eq!(read(&out), Some((v, out.len())));
        }
    }
}
