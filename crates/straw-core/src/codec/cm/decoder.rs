//! The receiving side of one CM context: whole records, or bulk units whose
//! slices may end anywhere.

use super::coder::SegDecoder;
use super::params::CmParams;
use super::primed::Slot;
use super::segment::{check_ratio, is_binary, take_varint};
use crate::codec::CodecError;

/// One CM context on the receiving side, for whole records.
pub(crate) struct CmDecoder {
    slot: Slot,
}

impl CmDecoder {
    pub(crate) fn new(p: &CmParams) -> Result<Self, CodecError> {
        Ok(Self {
            slot: Slot::new(*p)?,
        })
    }

    pub(crate) fn decode_record(
        &mut self,
        body: &[u8],
        max: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let mut ip = 0;
        let head = take_varint(body, &mut ip)?
            .ok_or_else(|| CodecError::Corrupt("truncated cm record".into()))?;
        let n = head >> 1;
        if n > max as u64 {
            return Err(CodecError::TooLarge(max));
        }
        let n = n as usize;
        let m = self.slot.get()?;
        let rest = &body[ip..];
        if head & 1 == 1 {
            if rest.len() != n {
                return Err(CodecError::Corrupt(
                    "raw cm record of the wrong length".into(),
                ));
            }
            if !is_binary(rest) {
                m.learn(rest);
            }
            out.extend_from_slice(rest);
            return Ok(());
        }
        check_ratio(n as u64, rest.len() as u64)?;
        let mut seg = SegDecoder::new(n, rest.len());
        let mut rp = 0;
        let mut room = n;
        // All coded bytes are here and the rest reads as zeros: it completes.
        if !seg.run(m, rest, &mut rp, out, &mut room) {
            return Err(CodecError::Internal("cm record decoder stalled".into()));
        }
        Ok(())
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.slot.memory_bytes()
    }
}

enum BulkState {
    Header,
    Coded(SegDecoder),
    Raw(usize),
    Skip(usize),
}

/// One CM context on the receiving side, for bulk units cut into slices
/// that may end anywhere: decodes as far as the bytes so far allow.
pub(crate) struct CmBulkDecoder {
    slot: Slot,
    state: BulkState,
    /// Received bytes not yet consumed (a header's start, coder lookahead).
    pending: Vec<u8>,
    /// The raw segment being received (at most one unit).
    raw_segment: Vec<u8>,
}

impl CmBulkDecoder {
    pub(crate) fn new(p: &CmParams) -> Result<Self, CodecError> {
        Ok(Self {
            slot: Slot::new(*p)?,
            state: BulkState::Header,
            pending: Vec::new(),
            raw_segment: Vec::new(),
        })
    }

    /// Feeds one slice; appends what it decodes to `out` (at most `max`
    /// bytes, beyond that `TooLarge`; a unit may not exceed `max` either).
    pub(crate) fn decode_slice(
        &mut self,
        slice: &[u8],
        max: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        self.pending.extend_from_slice(slice);
        let inp = std::mem::take(&mut self.pending);
        let mut ip = 0;
        let res = self.run(&inp, &mut ip, max, out);
        self.pending = inp;
        self.pending.drain(..ip);
        res
    }

    fn run(
        &mut self,
        inp: &[u8],
        ip: &mut usize,
        max: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let mut room = max;
        loop {
            match &mut self.state {
                BulkState::Header => {
                    let start = *ip;
                    let Some(head) = take_varint(inp, ip)? else {
                        return Ok(());
                    };
                    let n = head >> 1;
                    if n > max as u64 {
                        return Err(CodecError::TooLarge(max));
                    }
                    if head & 1 == 1 {
                        self.state = BulkState::Raw(n as usize);
                    } else {
                        let Some(clen) = take_varint(inp, ip)? else {
                            *ip = start;
                            return Ok(());
                        };
                        if clen > (n + 1) * 2 {
                            return Err(CodecError::Corrupt(
                                "cm unit longer coded than plain".into(),
                            ));
                        }
                        check_ratio(n, clen)?;
                        self.state = BulkState::Coded(SegDecoder::new(n as usize, clen as usize));
                    }
                }
                BulkState::Raw(left) => {
                    let k = (*left).min(inp.len() - *ip);
                    if k > room {
                        return Err(CodecError::TooLarge(max));
                    }
                    let bytes = &inp[*ip..*ip + k];
                    // Learnt (or not) as a whole once complete: the class
                    // is decided on the whole segment, as the sender did.
                    self.raw_segment.extend_from_slice(bytes);
                    out.extend_from_slice(bytes);
                    room -= k;
                    *ip += k;
                    *left -= k;
                    if *left > 0 {
                        return Ok(());
                    }
                    let seg = std::mem::take(&mut self.raw_segment);
                    if !is_binary(&seg) {
                        self.slot.get()?.learn(&seg);
                    }
                    self.state = BulkState::Header;
                }
                BulkState::Coded(seg) => {
                    let m = self.slot.get()?;
                    if room == 0 && seg.left > 0 {
                        return Err(CodecError::TooLarge(max));
                    }
                    if !seg.run(m, inp, ip, out, &mut room) {
                        if seg.left > 0 && room == 0 {
                            return Err(CodecError::TooLarge(max));
                        }
                        return Ok(());
                    }
                    self.state = BulkState::Skip(seg.unread());
                }
                BulkState::Skip(left) => {
                    let k = (*left).min(inp.len() - *ip);
                    *ip += k;
                    *left -= k;
                    if *left > 0 {
                        return Ok(());
                    }
                    self.state = BulkState::Header;
                }
            }
            if *ip == inp.len() && matches!(self.state, BulkState::Header) {
                return Ok(());
            }
        }
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.slot.memory_bytes() + self.pending.capacity() + self.raw_segment.capacity()
    }
}
