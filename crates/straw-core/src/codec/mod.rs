//! Compression contexts, one streaming context per codec per direction.
//!
//! A record is `codec byte || compressed frames`. The encoder flushes at the end
//! of every record, so the peer can decode it at once, while the history stays
//! shared across records and streams.
//!
//! Contexts are created lazily on first use (an unused codec costs nothing)
//! and dropped by `reset()`, which both peers call at the same record
//! boundary so that idle tunnels hold no compression state.

mod cm;
mod dict;
mod lz4;
mod zstd;

pub use self::cm::{
    CM_ALGORITHM_VERSION, CmParams, PRIMING_DIALOGUE_V1, PRIMING_MAIL_V1, PRIMING_MAIL_V2,
    model_id, priming_text, register_priming_text, register_priming_with_static,
    shared_static_bytes,
};
pub use self::dict::{DictKind, Dictionary, MAIL_V1, MAIL_V1_ID};

use thiserror::Error;

use self::cm::{CmBulkDecoder, CmDecoder, CmEncoder};
use self::zstd::{ZstdDecoder, ZstdEncoder};
use crate::byte_enum::byte_enum;

byte_enum! {
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodecId {
    Stored = 0,
    /// Records that each hold whole frames, flushed per record.
    Zstd = 1,
    /// Slices of a bulk stream compressed in larger units: a record may end
    /// mid-block and mid-frame; frames complete across records. A context of
    /// its own, so interactive records can pass between the slices.
    ZstdBulk = 2,
    /// Context mixing ([`CmParams`]), one flushed segment per record.
    Cm = 3,
    /// Slices of bulk units coded by a CM context of their own, like
    /// [`CodecId::ZstdBulk`].
    CmBulk = 4,
    /// LZ4 block per record, no shared history: the cheap codec for fast
    /// links. A record that would not shrink goes out [`CodecId::Stored`].
    Lz4 = 5,
}
}

impl CodecId {
    /// Records of this codec carry slices of bulk units
    /// (`id | varint n | n bytes of plain frames | slice`).
    pub fn is_bulk(self) -> bool {
        matches!(self, Self::ZstdBulk | Self::CmBulk)
    }
}

#[derive(Debug, Error)]
pub enum CodecError {
    #[error("empty record")]
    Empty,
    #[error("unknown codec byte {0}")]
    UnknownCodec(u8),
    #[error("record decompresses to more than {0} bytes")]
    TooLarge(usize),
    /// A CM segment declares more output than its coded bytes may yield
    /// (see `cm::segment::MAX_CM_RATIO`): decoding it would cost far more
    /// CPU per wire byte than any real data does.
    #[error("cm segment declares {declared} bytes from {coded} coded bytes")]
    RatioTooHigh { declared: u64, coded: u64 },
    #[error("corrupt compressed data: {0}")]
    Corrupt(String),
    /// A parameter in `CodecParams` / `DecoderLimits` is out of zstd's range.
    #[error("invalid codec parameter: {0}")]
    Params(String),
    /// The compressor itself failed (out of memory, or a bug).
    #[error("compressor failure: {0}")]
    Internal(String),
}

#[derive(Debug, Clone)]
pub struct CodecParams {
    pub zstd_level: i32,
    pub window_log: u32,
    pub hash_log: u32,
    pub chain_log: u32,
    /// Primes the context; the peer's `DecoderLimits::dictionary` must be the
    /// same one (agreed by id in the handshake).
    pub dictionary: Option<Dictionary>,
    /// The CM context: used for [`CodecId::Cm`] records, and for bulk units
    /// instead of zstd when set. The peer's `DecoderLimits::cm` must match.
    pub cm: Option<CmParams>,
}

impl Default for CodecParams {
    fn default() -> Self {
        Self {
            zstd_level: 19,
            window_log: 16,
            hash_log: 15,
            chain_log: 15,
            dictionary: None,
            cm: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DecoderLimits {
    pub max_window_log: u32,
    pub max_record_bytes: usize,
    /// Must be the dictionary the peer's encoder uses.
    pub dictionary: Option<Dictionary>,
    /// Must be the CM parameters the peer's encoder uses.
    pub cm: Option<CmParams>,
}

impl Default for DecoderLimits {
    fn default() -> Self {
        Self {
            max_window_log: 16,
            max_record_bytes: 256 * 1024,
            dictionary: None,
            cm: None,
        }
    }
}

impl CodecParams {
    /// The tuned profile for slow links (mail): see docs/codec.md for the
    /// measurements behind it. Pair with [`DecoderLimits::slow_link`].
    pub fn slow_link() -> Self {
        let window_log = SLOW_LINK_WINDOW_LOG;
        let (hash_log, chain_log) = Self::tables_for_window(window_log);
        Self {
            zstd_level: 19,
            window_log,
            hash_log,
            chain_log,
            dictionary: Some(MAIL_V1),
            cm: None,
        }
    }

    /// The slow-link profile with the CM codec for `dir` and `lane` (sizes
    /// from docs/codec.md). Pair with [`DecoderLimits::slow_link_cm`].
    pub fn slow_link_cm(dir: Direction, lane: Lane) -> Self {
        Self {
            cm: Some(CmParams::slow_link(dir, lane)),
            ..Self::slow_link()
        }
    }

    /// Hash and chain logs that go with a window: sized so that the tables
    /// cost about as much as the window itself.
    pub fn tables_for_window(window_log: u32) -> (u32, u32) {
        (window_log.saturating_sub(2), window_log.saturating_sub(1))
    }

    /// Checks the parameters against zstd's (and CM's) ranges without compressing.
    pub fn validate(&self) -> Result<(), CodecError> {
        if let Some(cm) = &self.cm {
            cm.validate()?;
        }
        ZstdEncoder::new(self).map(drop)
    }

    /// The codec of this context's bulk slices.
    pub fn bulk_codec(&self) -> CodecId {
        if self.cm.is_some() {
            CodecId::CmBulk
        } else {
            CodecId::ZstdBulk
        }
    }
}

/// Which way data flows, for the per-direction CM sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Mostly commands and uploads: small contexts.
    ClientToServer,
    /// Mail downloads: the big bulk context.
    ServerToClient,
}

/// Which session lane a context serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Interactive,
    Bulk,
}

impl CmParams {
    /// Sizes for the slow-link profile: together at most 8 MiB per tunnel
    /// on the server (both directions, both lanes; see docs/codec.md).
    pub fn slow_link(dir: Direction, lane: Lane) -> Self {
        let (table_log, match_log) = match (dir, lane) {
            (Direction::ServerToClient, Lane::Bulk) => (22, 20),
            (Direction::ServerToClient, Lane::Interactive) => (17, 16),
            (Direction::ClientToServer, Lane::Bulk) => (17, 16),
            (Direction::ClientToServer, Lane::Interactive) => (16, 15),
        };
        Self {
            table_log,
            match_log,
            priming: Some(match lane {
                Lane::Bulk => PRIMING_MAIL_V2,
                Lane::Interactive => PRIMING_DIALOGUE_V1,
            }),
        }
    }
}

/// Window of the slow-link profile (see docs/codec.md).
pub const SLOW_LINK_WINDOW_LOG: u32 = 20;

impl DecoderLimits {
    /// Decodes what [`CodecParams::slow_link`] produces.
    pub fn slow_link() -> Self {
        Self {
            max_window_log: SLOW_LINK_WINDOW_LOG,
            dictionary: Some(MAIL_V1),
            ..Self::default()
        }
    }

    /// Decodes what [`CodecParams::slow_link_cm`] produces.
    pub fn slow_link_cm(dir: Direction, lane: Lane) -> Self {
        Self {
            cm: Some(CmParams::slow_link(dir, lane)),
            ..Self::slow_link()
        }
    }

    /// Checks the limits against zstd's (and CM's) ranges without decoding.
    pub fn validate(&self) -> Result<(), CodecError> {
        if let Some(cm) = &self.cm {
            cm.validate()?;
        }
        ZstdDecoder::new(self).map(drop)
    }
}

/// The sending half: one compression context per codec.
pub struct RecordEncoder {
    params: CodecParams,
    zstd: Option<ZstdEncoder>,
    cm: Option<CmEncoder>,
    /// The bulk lane's context; `None` while a [`BulkJob`] has it out.
    bulk: Option<BulkEncoder>,
    bulk_codec: CodecId,
}

/// The bulk lane's compression context ([`CodecId::CmBulk`] or
/// [`CodecId::ZstdBulk`]), apart from the record contexts so that it can be
/// lent to another thread for a unit ([`BulkJob`]) while records go on.
pub struct BulkEncoder {
    params: CodecParams,
    zstd: Option<ZstdEncoder>,
    cm: Option<CmEncoder>,
}

impl BulkEncoder {
    fn new(params: &CodecParams) -> Self {
        Self {
            params: params.clone(),
            zstd: None,
            cm: None,
        }
    }

    fn encode_unit_cut(
        &mut self,
        frames: &[u8],
        cut: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let start = out.len();
        let res = if let Some(p) = &self.params.cm {
            let enc = match &mut self.cm {
                Some(enc) => enc,
                slot => slot.insert(CmEncoder::new(p)?),
            };
            if cut > 0 && cut < frames.len() {
                let (a, b) = frames.split_at(cut);
                enc.encode_unit_parts(&[a, b], out)
            } else {
                enc.encode_unit(frames, out)
            }
        } else {
            let enc = match &mut self.zstd {
                Some(enc) => enc,
                slot => slot.insert(ZstdEncoder::new(&self.params)?),
            };
            enc.encode(frames, out)
        };
        if res.is_err() {
            out.truncate(start);
        }
        res
    }

    fn reset(&mut self) {
        self.zstd = None;
        self.cm = None;
    }

    fn memory_bytes(&self) -> usize {
        self.zstd.as_ref().map_or(0, ZstdEncoder::memory_bytes)
            + self.cm.as_ref().map_or(0, CmEncoder::memory_bytes)
    }
}

/// One bulk unit to compress anywhere (a server's codec threads): it holds
/// the bulk context meanwhile, and goes back with
/// [`RecordEncoder::bulk_job_done`]. Pure CPU, no I/O.
pub struct BulkJob {
    encoder: BulkEncoder,
    frames: Vec<u8>,
    cut: usize,
    out: Vec<u8>,
    result: Option<Result<(), CodecError>>,
}

impl BulkJob {
    /// Compresses the unit (once; later calls do nothing).
    pub fn run(&mut self) {
        if self.result.is_none() {
            let res = self
                .encoder
                .encode_unit_cut(&self.frames, self.cut, &mut self.out);
            self.result = Some(res);
        }
    }

    /// Raw bytes of frames in the unit.
    pub fn raw_len(&self) -> usize {
        self.frames.len()
    }
}

/// A [`BulkJob`] back: the compressed unit, or the frames it could not
/// compress (to send stored).
pub enum BulkOutcome {
    Compressed(Vec<u8>),
    Failed { frames: Vec<u8>, error: CodecError },
}

impl RecordEncoder {
    pub fn new(params: &CodecParams) -> Self {
        Self::with_bulk(params, params)
    }

    /// With separate parameters for the bulk context ([`CodecId::ZstdBulk`]).
    pub fn with_bulk(params: &CodecParams, bulk: &CodecParams) -> Self {
        Self {
            params: params.clone(),
            zstd: None,
            cm: None,
            bulk: Some(BulkEncoder::new(bulk)),
            bulk_codec: bulk.bulk_codec(),
        }
    }

    /// The codec byte of the records that carry [`Self::encode_bulk_unit`]'s
    /// output: [`CodecId::CmBulk`] if the bulk parameters have a CM context.
    pub fn bulk_codec(&self) -> CodecId {
        self.bulk_codec
    }

    /// Lends the bulk context out with one unit to compress, as
    /// [`Self::encode_bulk_unit_cut`] would; until [`Self::bulk_job_done`]
    /// the bulk lane can't be used (`Err` gives the frames back if it is
    /// out already).
    pub fn bulk_job(&mut self, frames: Vec<u8>, cut: usize) -> Result<BulkJob, Vec<u8>> {
        let Some(encoder) = self.bulk.take() else {
            return Err(frames);
        };
        let out = Vec::with_capacity(frames.len() / 2 + 64);
        Ok(BulkJob {
            encoder,
            frames,
            cut,
            out,
            result: None,
        })
    }

    /// Takes the bulk context back from a job, and hands out its result
    /// (running it here if no one did).
    pub fn bulk_job_done(&mut self, mut job: BulkJob) -> BulkOutcome {
        job.run();
        self.bulk = Some(job.encoder);
        match job.result {
            Some(Ok(())) => BulkOutcome::Compressed(job.out),
            Some(Err(error)) => BulkOutcome::Failed {
                frames: job.frames,
                error,
            },
            None => unreachable!("run() sets the result"),
        }
    }

    /// Whether a [`BulkJob`] has the bulk context out.
    pub fn bulk_job_out(&self) -> bool {
        self.bulk.is_none()
    }

    /// Compresses a bulk unit in the bulk context, flushed at its end, and
    /// appends the bytes (no codec byte: they are cut into records later).
    pub fn encode_bulk_unit(&mut self, frames: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
        self.encode_bulk_unit_cut(frames, 0, out)
    }

    /// As [`Self::encode_bulk_unit`], and with CM a segment also ends at
    /// `cut` (0: nowhere), so the peer decodes the frames before it without
    /// waiting for the rest of the unit (zstd: one flush, as before).
    pub fn encode_bulk_unit_cut(
        &mut self,
        frames: &[u8],
        cut: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        match &mut self.bulk {
            Some(bulk) => bulk.encode_unit_cut(frames, cut, out),
            None => Err(CodecError::Internal(
                "the bulk context is out with a job".into(),
            )),
        }
    }

    /// Appends `codec byte || compressed(frames)` to `out`, flushed, so the
    /// peer can decode the record on arrival. On error `out` is left as it was.
    pub fn encode(
        &mut self,
        codec: CodecId,
        frames: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let start = out.len();
        let res = self.encode_inner(codec, frames, out);
        if res.is_err() {
            out.truncate(start);
        }
        res
    }

    fn encode_inner(
        &mut self,
        codec: CodecId,
        frames: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        out.push(codec as u8);
        match codec {
            CodecId::Stored => {
                out.extend_from_slice(frames);
                Ok(())
            }
            CodecId::Zstd => {
                let enc = match &mut self.zstd {
                    Some(enc) => enc,
                    slot => slot.insert(ZstdEncoder::new(&self.params)?),
                };
                enc.encode(frames, out)
            }
            CodecId::Cm => {
                let p = self
                    .params
                    .cm
                    .as_ref()
                    .ok_or_else(|| CodecError::Params("no cm parameters".into()))?;
                let enc = match &mut self.cm {
                    Some(enc) => enc,
                    slot => slot.insert(CmEncoder::new(p)?),
                };
                enc.encode_record(frames, out)
            }
            CodecId::Lz4 => {
                if !lz4::encode(frames, out) {
                    let at = out.len() - 1;
                    out[at] = CodecId::Stored as u8;
                    out.extend_from_slice(frames);
                }
                Ok(())
            }
            CodecId::ZstdBulk | CodecId::CmBulk => Err(CodecError::Internal(
                "bulk slices come from encode_bulk_unit".into(),
            )),
        }
    }

    /// Drops all compression state. The peer's decoder must be reset at the
    /// same record boundary. Not while a [`BulkJob`] is out: its context
    /// would come back with the old state (callers wait for it).
    pub fn reset(&mut self) {
        debug_assert!(self.bulk.is_some(), "reset with a bulk job out");
        self.zstd = None;
        self.cm = None;
        if let Some(bulk) = &mut self.bulk {
            bulk.reset();
        }
    }

    /// Bytes of compression state currently allocated (here, not out with
    /// a job).
    pub fn memory_bytes(&self) -> usize {
        self.zstd.as_ref().map_or(0, ZstdEncoder::memory_bytes)
            + self.cm.as_ref().map_or(0, CmEncoder::memory_bytes)
            + self.bulk.as_ref().map_or(0, BulkEncoder::memory_bytes)
    }
}

/// The receiving half: one decompression context per codec.
pub struct RecordDecoder {
    limits: DecoderLimits,
    zstd: Option<ZstdDecoder>,
    bulk_limits: DecoderLimits,
    zstd_bulk: Option<ZstdDecoder>,
    cm: Option<CmDecoder>,
    cm_bulk: Option<CmBulkDecoder>,
    /// Set by the first error: the stream is out of step from then on, so
    /// nothing more is decoded (not even a lucky-looking garbage record).
    failed: bool,
}

impl RecordDecoder {
    pub fn new(limits: &DecoderLimits) -> Self {
        Self::with_bulk(limits, limits)
    }

    /// With separate limits (and dictionary) for the bulk context.
    pub fn with_bulk(limits: &DecoderLimits, bulk: &DecoderLimits) -> Self {
        Self {
            limits: limits.clone(),
            zstd: None,
            bulk_limits: bulk.clone(),
            zstd_bulk: None,
            cm: None,
            cm_bulk: None,
            failed: false,
        }
    }

    /// Decodes one record into `out` (which is cleared first). At most
    /// `max_record_bytes` are produced; beyond that it is `TooLarge`. Any
    /// error is final: later records fail too (until `reset`), since the
    /// decoder is out of step with the peer. Close the tunnel.
    pub fn decode(&mut self, record: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.clear();
        if self.failed {
            return Err(CodecError::Corrupt(
                "decoder failed on an earlier record".into(),
            ));
        }
        let res = self.decode_inner(record, out);
        if res.is_err() {
            self.failed = true;
            out.clear();
        }
        res
    }

    fn decode_inner(&mut self, record: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
        let (&codec, body) = record.split_first().ok_or(CodecError::Empty)?;
        match CodecId::from_u8(codec) {
            Some(CodecId::Stored) => {
                if body.len() > self.limits.max_record_bytes {
                    return Err(CodecError::TooLarge(self.limits.max_record_bytes));
                }
                out.extend_from_slice(body);
                Ok(())
            }
            Some(CodecId::Zstd) => {
                let dec = match &mut self.zstd {
                    Some(dec) => dec,
                    slot => slot.insert(ZstdDecoder::new(&self.limits)?),
                };
                dec.decode(body, self.limits.max_record_bytes, out, true)
            }
            Some(CodecId::ZstdBulk) => {
                let dec = match &mut self.zstd_bulk {
                    Some(dec) => dec,
                    slot => slot.insert(ZstdDecoder::new(&self.bulk_limits)?),
                };
                // A slice may end anywhere inside the compressed unit.
                dec.decode(body, self.bulk_limits.max_record_bytes, out, false)
            }
            Some(CodecId::Cm) => {
                let p = self
                    .limits
                    .cm
                    .as_ref()
                    .ok_or(CodecError::UnknownCodec(codec))?;
                let dec = match &mut self.cm {
                    Some(dec) => dec,
                    slot => slot.insert(CmDecoder::new(p)?),
                };
                dec.decode_record(body, self.limits.max_record_bytes, out)
            }
            Some(CodecId::CmBulk) => {
                let p = self
                    .bulk_limits
                    .cm
                    .as_ref()
                    .ok_or(CodecError::UnknownCodec(codec))?;
                let dec = match &mut self.cm_bulk {
                    Some(dec) => dec,
                    slot => slot.insert(CmBulkDecoder::new(p)?),
                };
                dec.decode_slice(body, self.bulk_limits.max_record_bytes, out)
            }
            Some(CodecId::Lz4) => lz4::decode(body, self.limits.max_record_bytes, out),
            None => Err(CodecError::UnknownCodec(codec)),
        }
    }

    /// Drops all decompression state, see [`RecordEncoder::reset`].
    pub fn reset(&mut self) {
        self.zstd = None;
        self.zstd_bulk = None;
        self.cm = None;
        self.cm_bulk = None;
        self.failed = false;
    }

    /// Bytes of decompression state currently allocated.
    pub fn memory_bytes(&self) -> usize {
        self.zstd.as_ref().map_or(0, ZstdDecoder::memory_bytes)
            + self.zstd_bulk.as_ref().map_or(0, ZstdDecoder::memory_bytes)
            + self.cm.as_ref().map_or(0, CmDecoder::memory_bytes)
            + self.cm_bulk.as_ref().map_or(0, CmBulkDecoder::memory_bytes)
    }
}

#[cfg(test)]
mod ratio_tests;
#[cfg(test)]
mod tests;
