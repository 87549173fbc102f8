//! The sending side of one CM context.

use super::params::CmParams;
use super::primed::Slot;
use super::segment::{content_runs, put_segment};
use crate::codec::CodecError;

pub(crate) struct CmEncoder {
    slot: Slot,
}

impl CmEncoder {
    pub(crate) fn new(p: &CmParams) -> Result<Self, CodecError> {
        Ok(Self {
            slot: Slot::new(*p)?,
        })
    }

    /// A whole record's body: `varint (n<<1|raw)` and the coded bytes.
    pub(crate) fn encode_record(
        &mut self,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        put_segment(self.slot.get()?, data, false, out);
        Ok(())
    }

    /// A bulk unit, one segment per run of like content ([`content_runs`]):
    /// `varint (n<<1|raw)`, `varint clen` if coded, the bytes.
    pub(crate) fn encode_unit(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
        self.encode_unit_parts(&[data], out)
    }

    /// One unit whose segments also end at each part's end, so the peer
    /// decodes a part without waiting for the ones after it.
    pub(crate) fn encode_unit_parts(
        &mut self,
        parts: &[&[u8]],
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let m = self.slot.get()?;
        for part in parts {
            for run in content_runs(part) {
                put_segment(m, run, true, out);
            }
        }
        Ok(())
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.slot.memory_bytes()
    }
}
