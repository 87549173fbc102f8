//! zstd streaming contexts with explicit parameters.
//!
//! One frame per context lifetime: every record is a `ZSTD_e_flush`, never an
//! end of frame, so the window (history) carries over to the next record.

use ::zstd::zstd_safe::zstd_sys::ZSTD_EndDirective;
use ::zstd::zstd_safe::{
    self, CCtx, CParameter, DCtx, DParameter, ErrorCode, FrameFormat, InBuffer, OutBuffer,
};

use super::{CodecError, CodecParams, DecoderLimits, DictKind};

/// zstd's block header size: the decoder asks for exactly this much next when
/// it stands on a block boundary, which is where every record must end.
const BLOCK_HEADER_SIZE: usize = 3;

fn err_name(code: ErrorCode) -> String {
    zstd_safe::get_error_name(code).to_string()
}

pub(super) struct ZstdEncoder {
    cctx: CCtx<'static>,
}

impl ZstdEncoder {
    pub(super) fn new(p: &CodecParams) -> Result<Self, CodecError> {
        let mut cctx =
            CCtx::try_create().ok_or_else(|| CodecError::Internal("out of memory".into()))?;
        let params = [
            CParameter::CompressionLevel(p.zstd_level),
            // Explicit tables: the level alone would size them for a huge window.
            CParameter::WindowLog(p.window_log),
            CParameter::HashLog(p.hash_log),
            CParameter::ChainLog(p.chain_log),
            // The codec byte already says "zstd"; save the 4-byte magic.
            CParameter::Format(FrameFormat::Magicless),
            CParameter::ContentSizeFlag(false),
            CParameter::ChecksumFlag(false),
            CParameter::DictIdFlag(false),
        ];
        for param in params {
            cctx.set_parameter(param)
                .map_err(|c| CodecError::Params(format!("{param:?}: {}", err_name(c))))?;
        }
        if let Some(d) = p.dictionary {
            let res = match d.kind() {
                DictKind::Prefix => cctx.ref_prefix(d.bytes()),
                DictKind::Trained => cctx.load_dictionary(d.bytes()),
            };
            res.map_err(|c| CodecError::Params(format!("dictionary {}: {}", d.id(), err_name(c))))?;
        }
        Ok(Self { cctx })
    }

    /// Appends the compressed `input` to `out`, flushed to a block boundary.
    pub(super) fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
        let mut inb = InBuffer::around(input);
        loop {
            let want = zstd_safe::compress_bound(input.len() - inb.pos()).max(64);
            out.reserve(want);
            let pos = out.len();
            let mut outb = OutBuffer::around_pos(out, pos);
            let left = self
                .cctx
                .compress_stream2(&mut outb, &mut inb, ZSTD_EndDirective::ZSTD_e_flush)
                .map_err(|c| CodecError::Internal(err_name(c)))?;
            if left == 0 && inb.pos() == input.len() {
                return Ok(());
            }
        }
    }

    pub(super) fn memory_bytes(&self) -> usize {
        self.cctx.sizeof()
    }
}

pub(super) struct ZstdDecoder {
    dctx: DCtx<'static>,
}

impl ZstdDecoder {
    pub(super) fn new(l: &DecoderLimits) -> Result<Self, CodecError> {
        let mut dctx =
            DCtx::try_create().ok_or_else(|| CodecError::Internal("out of memory".into()))?;
        for param in [
            DParameter::WindowLogMax(l.max_window_log),
            DParameter::Format(FrameFormat::Magicless),
        ] {
            dctx.set_parameter(param)
                .map_err(|c| CodecError::Params(format!("{param:?}: {}", err_name(c))))?;
        }
        if let Some(d) = l.dictionary {
            let res = match d.kind() {
                DictKind::Prefix => dctx.ref_prefix(d.bytes()),
                DictKind::Trained => dctx.load_dictionary(d.bytes()),
            };
            res.map_err(|c| CodecError::Params(format!("dictionary {}: {}", d.id(), err_name(c))))?;
        }
        Ok(Self { dctx })
    }

    /// Decodes one record body into `out` (empty on entry), producing at most
    /// `max` bytes. The output grows as needed, so a bomb never allocates more
    /// than about `max`.
    pub(super) fn decode(
        &mut self,
        body: &[u8],
        max: usize,
        out: &mut Vec<u8>,
        whole_blocks: bool,
    ) -> Result<(), CodecError> {
        debug_assert!(out.is_empty());
        if body.is_empty() {
            return Ok(());
        }
        // One byte beyond the limit tells "exactly max" from "more than max".
        let cap = max.saturating_add(1);
        let mut filled = 0;
        let mut inb = InBuffer::around(body);
        let mut hint;
        loop {
            if filled == out.len() {
                let grow =
                    (out.len().max(body.len().saturating_mul(4)).max(4096)).min(cap - out.len());
                out.resize(out.len() + grow, 0);
            }
            let before_in = inb.pos();
            let mut outb = OutBuffer::around_pos(&mut out[..], filled);
            hint = self
                .dctx
                .decompress_stream(&mut outb, &mut inb)
                .map_err(|c| CodecError::Corrupt(err_name(c)))?;
            let produced = outb.pos() - filled;
            filled = outb.pos();
            if filled >= cap {
                out.clear();
                return Err(CodecError::TooLarge(max));
            }
            let out_full = filled == out.len();
            if inb.pos() == body.len() && !out_full {
                break;
            }
            if produced == 0 && inb.pos() == before_in && !out_full {
                out.clear();
                return Err(CodecError::Corrupt("decoder made no progress".into()));
            }
        }
        out.truncate(filled);
        if hint == 0 {
            out.clear();
            return Err(CodecError::Corrupt(
                "zstd frame ended inside the stream".into(),
            ));
        }
        if whole_blocks && hint != BLOCK_HEADER_SIZE {
            out.clear();
            return Err(CodecError::Corrupt(if hint == 0 {
                "zstd frame ended inside the stream".into()
            } else {
                "record does not end on a zstd block boundary".into()
            }));
        }
        Ok(())
    }

    pub(super) fn memory_bytes(&self) -> usize {
        self.dctx.sizeof()
    }
}
