//! LEB128 varints: 1 byte below 128, which is what most stream ids and lengths are.

use super::WireError;

pub fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a varint from the front of `buf`, advancing it. Rejects overlong
/// encodings so that every value has exactly one encoding.
pub fn get_varint(buf: &mut &[u8]) -> Result<u64, WireError> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let Some((&b, rest)) = buf.split_first() else {
            return Err(WireError::Truncated);
        };
        *buf = rest;
        let bits = (b & 0x7f) as u64;
        if i == 9 && b > 1 {
            return Err(WireError::BadVarint);
        }
        v |= bits << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                return Err(WireError::BadVarint);
            }
            return Ok(v);
        }
    }
    Err(WireError::BadVarint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn roundtrip(v: u64) {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            prop_assert_eq!(out.len(), varint_len(v));
            let mut s = &out[..];
            prop_assert_eq!(get_varint(&mut s).unwrap(), v);
            prop_assert!(s.is_empty());
        }

        #[test]
        fn never_panics(bytes: Vec<u8>) {
            let mut s = &bytes[..];
            let _ = get_varint(&mut s);
        }
    }

    #[test]
    fn rejects_overlong_and_overflow() {
        assert_eq!(
            get_varint(&mut &[0x80, 0x00][..]),
            Err(WireError::BadVarint)
        );
        assert_eq!(get_varint(&mut &[0xff; 10][..]), Err(WireError::BadVarint));
        assert_eq!(get_varint(&mut &[0x80][..]), Err(WireError::Truncated));
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(get_varint(&mut &max[..]), Ok(u64::MAX));
    }
}
