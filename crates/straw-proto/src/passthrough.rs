//! The generic `tcp` service: bytes pass unchanged. With no protocol to
//! parse, the best flush signal is "the local socket has nothing more to read".

use crate::{Accelerator, Output};

/// Streams that have moved this much without a pause are treated as bulk.
const BULK_AFTER: u64 = 16 * 1024;

#[derive(Debug, Default)]
pub struct Passthrough {
    burst: u64,
}

impl Accelerator for Passthrough {
    fn from_local(&mut self, data: &[u8], drained: bool, out: &mut Output) {
        out.to_tunnel.extend_from_slice(data);
        self.burst += data.len() as u64;
        out.bulk = self.burst > BULK_AFTER;
        out.flush = drained;
        if drained {
            self.burst = 0;
        }
    }

    fn from_tunnel(&mut self, data: &[u8], out: &mut Output) {
        out.to_local.extend_from_slice(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_bytes_and_flushes_when_drained() {
        let mut p = Passthrough::default();
        let mut out = Output::default();
        p.from_local(b"abc", false, &mut out);
        assert!(!out.flush && !out.bulk);
        p.from_local(&[7u8; 20_000], true, &mut out);
        assert!(out.flush && out.bulk);
        assert_eq!(out.to_tunnel.len(), 20_003);
        p.from_local(b"x", true, &mut out);
        assert!(!out.bulk, "a pause ends the burst");
        let mut back = Output::default();
        p.from_tunnel(b"reply", &mut back);
        assert_eq!(back.to_local, b"reply");
        assert!(back.to_tunnel.is_empty());
    }
}
