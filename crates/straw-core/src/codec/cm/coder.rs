//! The binary arithmetic coder: 32-bit, carry-less, 12-bit probabilities
//! from the model. Flushed at the end of each segment with one byte.

use super::model::Model;

struct ArithEncoder {
    x1: u32,
    x2: u32,
}

impl ArithEncoder {
    fn new() -> Self {
        Self {
            x1: 0,
            x2: u32::MAX,
        }
    }

    #[inline]
    fn encode(&mut self, bit: u32, p: u32, out: &mut Vec<u8>) {
        let xmid = self.x1 + ((self.x2 - self.x1) >> 12) * p;
        if bit != 0 {
            self.x2 = xmid;
        } else {
            self.x1 = xmid + 1;
        }
        while (self.x1 ^ self.x2) & 0xFF00_0000 == 0 {
            out.push((self.x2 >> 24) as u8);
            self.x1 <<= 8;
            self.x2 = self.x2 << 8 | 0xFF;
        }
    }

    /// One byte whose value, followed by zeros, lies in [x1, x2]: the decoder
    /// reads zeros past the end of a segment.
    fn flush(&self, out: &mut Vec<u8>) {
        let top = self.x1 >> 24;
        out.push(if self.x1 & 0xFF_FFFF == 0 {
            top
        } else {
            top + 1
        } as u8);
    }
}

/// Encodes `data` with `m` as one segment. Returns false (and leaves `out`
/// as it was) if coding did not pay, in which case the caller sends it raw;
/// the model has learnt `data` either way.
pub(super) fn encode_segment(m: &mut Model, data: &[u8], out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let mut ac = ArithEncoder::new();
    for &b in data {
        for i in (0..8).rev() {
            let bit = ((b >> i) & 1) as u32;
            ac.encode(bit, m.p(), out);
            m.update(bit);
        }
    }
    ac.flush(out);
    if out.len() - start >= data.len() {
        out.truncate(start);
        return false;
    }
    true
}

/// Decoding state of one segment whose coded bytes arrive piecemeal.
pub(super) struct SegDecoder {
    /// Plain bytes still to produce.
    pub(super) left: usize,
    /// Coded bytes in the segment; past them the decoder reads zeros.
    clen: usize,
    /// Coded bytes consumed (real or virtual).
    read: usize,
    x1: u32,
    x2: u32,
    x: u32,
    /// Bytes still to load into `x` before the first bit.
    fill: u8,
    byte: u32,
    bits: u32,
}

impl SegDecoder {
    pub(super) fn new(n: usize, clen: usize) -> Self {
        Self {
            left: n,
            clen,
            read: 0,
            x1: 0,
            x2: u32::MAX,
            x: 0,
            fill: 4,
            byte: 0,
            bits: 0,
        }
    }

    fn next_byte(&mut self, inp: &[u8], ip: &mut usize) -> Option<u32> {
        let b = if self.read >= self.clen {
            0
        } else {
            let b = *inp.get(*ip)?;
            *ip += 1;
            b as u32
        };
        self.read += 1;
        Some(b)
    }

    /// Decodes while input lasts, appending plain bytes to `out` (at most
    /// `room` of them). Returns true when the segment's bytes are all out.
    pub(super) fn run(
        &mut self,
        m: &mut Model,
        inp: &[u8],
        ip: &mut usize,
        out: &mut Vec<u8>,
        room: &mut usize,
    ) -> bool {
        while self.fill > 0 {
            let Some(b) = self.next_byte(inp, ip) else {
                return false;
            };
            self.x = self.x << 8 | b;
            self.fill -= 1;
        }
        while self.left > 0 && *room > 0 {
            // Normalise lazily, so a bit is decoded only once its bytes are here.
            while (self.x1 ^ self.x2) & 0xFF00_0000 == 0 {
                let Some(b) = self.next_byte(inp, ip) else {
                    return false;
                };
                self.x1 <<= 8;
                self.x2 = self.x2 << 8 | 0xFF;
                self.x = self.x << 8 | b;
            }
            let xmid = self.x1 + ((self.x2 - self.x1) >> 12) * m.p();
            let bit = (self.x <= xmid) as u32;
            if bit != 0 {
                self.x2 = xmid;
            } else {
                self.x1 = xmid + 1;
            }
            m.update(bit);
            self.byte = self.byte << 1 | bit;
            self.bits += 1;
            if self.bits == 8 {
                out.push(self.byte as u8);
                self.byte = 0;
                self.bits = 0;
                self.left -= 1;
                *room -= 1;
            }
        }
        self.left == 0
    }

    /// Coded bytes of the segment not consumed by decoding.
    pub(super) fn unread(&self) -> usize {
        self.clen.saturating_sub(self.read)
    }
}
