//! The generic `tcp` service: bytes pass unchanged. With no protocol to
//! parse, the best flush signal is "the local socket has nothing more to read".

use crate::{Accelerator, Hints};

/// Streams that have moved this much without a pause are treated as bulk.
const BULK_AFTER: u64 = 16 * 1024;

#[derive(Debug, Default)]
pub struct Passthrough {
    burst: u64,
}

impl Accelerator for Passthrough {
    fn from_local(&mut self, data: &[u8], drained: bool, out: &mut Vec<u8>) -> Hints {
        out.extend_from_slice(data);
        self.burst += data.len() as u64;
        let bulk = self.burst > BULK_AFTER;
        if drained {
            self.burst = 0;
        }
        Hints {
            flush: drained,
            bulk,
        }
    }

    fn from_tunnel(&mut self, data: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_bytes_and_flushes_when_drained() {
        let mut p = Passthrough::default();
        let mut out = Vec::new();
        let h = p.from_local(b"abc", false, &mut out);
        assert!(!h.flush && !h.bulk);
        let h = p.from_local(&[7u8; 20_000], true, &mut out);
        assert!(h.flush && h.bulk);
        assert_eq!(out.len(), 20_003);
        let h = p.from_local(b"x", true, &mut out);
        assert!(!h.bulk, "a pause ends the burst");
        let mut back = Vec::new();
        p.from_tunnel(b"reply", &mut back);
        assert_eq!(back, b"reply");
    }
}
