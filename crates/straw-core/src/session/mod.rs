//! The session: streams, credit, scheduling, cork/flush, acks and the replay
//! buffer, as one sans-IO state machine.
//!
//! The driver feeds it decrypted records ([`Session::handle_record`]) and local
//! stream bytes ([`Session::send`]), asks it for records to put on the link
//! ([`Session::poll_transmit`]) and for events ([`Session::poll_event`]), and
//! passes the current time in. Nothing here blocks or allocates per byte.

mod estimate;
mod stream;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use crate::codec::{CodecError, CodecId, CodecParams, DecoderLimits, RecordDecoder, RecordEncoder};
use crate::transform::{self, TransformError};
use crate::wire::{Frame, FrameDecoder, OpenFrame, WireError};

pub use estimate::LinkEstimate;
use stream::Stream;

/// Headroom for frame headers and codec overhead added when pending raw bytes
/// become a record, so that `held` stays under `held_bound`.
const FRAMING_RESERVE: u64 = 64;

/// Which side of the tunnel this is. Clients open odd stream ids, servers even,
/// so both may open streams without coordination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// Which path a stream's frames take to the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// Whole frames in records of their own, flushed per record.
    Interactive,
    /// Compressed in units, sliced into records between interactive ones.
    Bulk,
}

/// Codec tier of new records, chosen by the measured delivery rate so that
/// the codec is never slower than the link (docs/codec.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// `SessionConfig::codec` and the bulk lane: slow links.
    Strong,
    /// `SessionConfig::fast_codec` (LZ4).
    Fast,
    /// Faster than LZ4 codes: records go stored.
    Stored,
}

/// Scheduling class of a stream's data. Control frames always go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    Interactive,
    Bulk,
}

/// DATA frame flags (the frame's high nibble).
pub mod data_flags {
    /// The payload is part of the stream's base64-transformed byte stream
    /// ([`crate::transform`]); the receiver decodes it before delivery.
    pub const TRANSFORM: u8 = 0x1;
}

/// RESET codes.
pub mod reset_code {
    /// The stream was refused (unknown service, too many streams).
    pub const REFUSED: u64 = 1;
    /// The upstream server could not be reached.
    pub const UNREACHABLE: u64 = 2;
    /// A local socket failed or was aborted.
    pub const ABORTED: u64 = 3;
    /// The peer broke the protocol on this stream (e.g. sent beyond credit).
    pub const PROTOCOL: u64 = 4;
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub role: Role,
    /// Link rate assumed until measured, bytes per second.
    pub initial_rate: f64,
    /// Unacked bytes on the link are bounded by rate × this.
    pub inflight_secs: f64,
    /// A record occupies the link for about this long at most.
    pub record_secs: f64,
    /// Smallest and largest record target, in wire bytes.
    pub min_record: usize,
    pub max_record: usize,
    /// Per-stream receive window in raw bytes we grant the peer.
    pub stream_window: u64,
    /// The window the peer grants us (from its handshake).
    pub peer_stream_window: u64,
    pub max_streams: usize,
    /// Longest the cork timer may hold data that wasn't flushed.
    pub max_cork: Duration,
    /// Longest a received record waits for its ACK to be piggybacked.
    pub ack_delay: Duration,
    /// Codec for records worth compressing.
    pub codec: CodecId,
    pub codec_params: CodecParams,
    pub decoder_limits: DecoderLimits,
    /// Per-packet header cost the cork timer weighs against waiting.
    pub packet_overhead: usize,
    /// What the link layer adds to each record (Noise: length + AEAD tag).
    pub frame_overhead: usize,
    /// Bulk streams are compressed in units of about this many seconds of
    /// link time and cut into records ([`CodecId::ZstdBulk`]): a flush per
    /// small record costs ~25% on mail, a flush per unit far less, while
    /// interactive records still pass between the slices. 0 turns it off.
    pub bulk_unit_secs: f64,
    /// Bulk slices are records too, but slicing costs no compression, only
    /// headers. A link cut wastes the record in flight, so on links where a
    /// record is many KB the slices are kept to about this much link time,
    /// and never below `min_bulk_slice` bytes (header cost stays < 1%).
    pub bulk_slice_secs: f64,
    pub min_bulk_slice: usize,
    pub bulk_codec_params: CodecParams,
    pub bulk_decoder_limits: DecoderLimits,
    /// Services whose outgoing stream data goes through the base64
    /// transform (mail, HTTP). Each side decides for what it sends; the DATA
    /// flag tells the peer, so the two configs need not agree.
    pub transform_services: Vec<Vec<u8>>,
    /// After this long without a compressed record, the sender resets its
    /// compression contexts to their primed state and tells the peer
    /// ([`Frame::CodecReset`]), so an idle tunnel holds no codec state on
    /// either side. Zero: never.
    pub codec_idle_reset: Duration,
    /// The cheap codec for fast links ([`CodecId::Lz4`]); `None` keeps the
    /// strong codecs at any rate.
    pub fast_codec: Option<CodecId>,
    /// Measured delivery rate (wire bytes/s) above which new records use
    /// `fast_codec` and bulk streams skip the bulk lane, and below which the
    /// strong codecs come back (hysteresis). See docs/codec.md.
    pub fast_enter_rate: f64,
    pub fast_exit_rate: f64,
    /// Above this rate even `fast_codec` can't keep up: records go stored
    /// (back to `fast_codec` below `stored_exit_rate`).
    pub stored_enter_rate: f64,
    pub stored_exit_rate: f64,
    /// Hard cap on unacked wire bytes, whatever the rate: bounds the replay
    /// buffer (and so memory) on fast links.
    pub max_inflight: u64,
}

/// Default of [`SessionConfig::fast_enter_rate`]: 16 KB/s of wire (128
/// kbit/s, 66x Iridium). CM codes ~1.2 MB/s of mail per core (encoder and
/// decoder alike) and shrinks it ~4-6x: ~250 KB/s of wire. The rate we
/// measure includes the peer's decoding, so while CM is in use it can never
/// show more than CM's own speed: the threshold must sit far below that, or
/// a busy CPU would keep a fast link on CM for good. At 16 KB/s CM has a
/// 15x margin.
pub const FAST_ENTER_RATE: f64 = 16_000.0;
/// Default of [`SessionConfig::fast_exit_rate`]: back to the strong codec
/// only well below the entry point, so a noisy estimate doesn't flap.
pub const FAST_EXIT_RATE: f64 = 4_000.0;
/// Default of [`SessionConfig::stored_enter_rate`]: 100 MB/s of wire. LZ4
/// codes ~400 MB/s of mail on one core and halves it, ~200 MB/s of wire;
/// a link faster than about half that would wait for it.
pub const STORED_ENTER_RATE: f64 = 100e6;
pub const STORED_EXIT_RATE: f64 = 50e6;
/// Default of [`SessionConfig::max_inflight`].
pub const MAX_INFLIGHT: u64 = 4 << 20;

impl SessionConfig {
    pub fn new(role: Role) -> Self {
        Self {
            role,
            initial_rate: 300.0,
            inflight_secs: 2.0,
            record_secs: 0.5,
            min_record: 96,
            max_record: 60 * 1024,
            stream_window: 256 * 1024,
            peer_stream_window: 256 * 1024,
            max_streams: 1024,
            max_cork: Duration::from_millis(50),
            ack_delay: Duration::from_millis(100),
            codec: CodecId::Zstd,
            codec_params: CodecParams::default(),
            decoder_limits: DecoderLimits::default(),
            packet_overhead: 40,
            frame_overhead: 18,
            bulk_unit_secs: 2.0,
            bulk_slice_secs: 0.25,
            min_bulk_slice: 4096,
            bulk_codec_params: CodecParams::default(),
            bulk_decoder_limits: DecoderLimits::default(),
            transform_services: Vec::new(),
            codec_idle_reset: Duration::from_secs(300),
            fast_codec: Some(CodecId::Lz4),
            fast_enter_rate: FAST_ENTER_RATE,
            fast_exit_rate: FAST_EXIT_RATE,
            stored_enter_rate: STORED_ENTER_RATE,
            stored_exit_rate: STORED_EXIT_RATE,
            max_inflight: MAX_INFLIGHT,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer opened a stream.
    Opened {
        stream: u64,
        service: Bytes,
        meta: Bytes,
    },
    Data {
        stream: u64,
        flags: u8,
        payload: Bytes,
    },
    /// The peer will send no more data on this stream.
    Fin { stream: u64 },
    /// The peer aborted the stream; drop it.
    Reset { stream: u64, code: u64 },
}

#[derive(Debug, Error)]
pub enum SessionError {
    #[error("wire: {0}")]
    Wire(#[from] WireError),
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
    #[error("peer acked record {0} that was never sent")]
    BadAck(u64),
    #[error("peer sent {got} bytes on stream {stream} beyond its credit {limit}")]
    CreditExceeded { stream: u64, got: u64, limit: u64 },
    #[error("peer opened stream {0} with the wrong parity or twice")]
    BadStreamId(u64),
    #[error("too many streams ({0})")]
    TooManyStreams(usize),
    #[error("unknown stream {0}")]
    UnknownStream(u64),
    #[error("stream {stream}: bad transformed data: {error}")]
    Transform { stream: u64, error: TransformError },
    #[error(
        "peer resumes having received {peer} records, but we sent {first}..{next} and the rest were acked"
    )]
    BadResume { peer: u64, first: u64, next: u64 },
}

/// Counters the driver exports and tests assert on.
#[derive(Debug, Default, Clone)]
pub struct SessionStats {
    pub records_sent: u64,
    pub records_received: u64,
    pub wire_bytes_sent: u64,
    pub wire_bytes_received: u64,
    pub raw_bytes_sent: u64,
    pub raw_bytes_received: u64,
    /// Most bytes ever held ahead of the link: pending raw plus unacked wire.
    pub max_held: u64,
    /// The bound `max_held` is meant to respect, at the moment it peaked.
    pub held_bound_at_max: u64,
    /// Records re-sent after resumes, and their wire bytes (also counted in
    /// `wire_bytes_sent`).
    pub records_resent: u64,
    pub wire_bytes_resent: u64,
    /// Idle codec resets this side sent.
    pub codec_resets: u64,
    /// Raw stream bytes sent, by the codec byte of the record that carried
    /// them (bulk bytes under the bulk codec), indexed by `CodecId as usize`.
    pub raw_bytes_by_codec: [u64; 8],
    /// Raw stream bytes received, by the codec byte of their record.
    pub raw_bytes_received_by_codec: [u64; 8],
    /// Times the sender switched to the fast codec, and back.
    pub fast_switches: u64,
    pub slow_switches: u64,
}

struct SentRecord {
    seq: u64,
    wire: Bytes,
    sent_at: Instant,
    delivered_at_send: u64,
    delivered_time_at_send: Instant,
    /// When the newest record acked at this one's sending was itself sent.
    first_sent_at_send: Instant,
}

pub struct Session {
    cfg: SessionConfig,
    encoder: RecordEncoder,
    decoder: RecordDecoder,
    decode_buf: Vec<u8>,
    streams: BTreeMap<u64, Stream>,
    next_local_stream: u64,
    /// Control frames (OPEN, RESET, CREDIT, PONG) in order.
    control: VecDeque<Frame>,
    /// A queued control frame must leave now. OPEN alone may wait for the
    /// cork timer, so that a request written right after connecting joins it.
    urgent_control: bool,
    events: VecDeque<Event>,

    // Sending.
    next_send_seq: u64,
    replay: VecDeque<SentRecord>,
    /// After a resume: how many replay records (from the front) to re-send
    /// before any new record.
    resend: usize,
    /// PONGs for PINGs sent before this moment measure the outage, not the RTT.
    rtt_valid_from: Instant,
    unacked_bytes: u64,
    pending_raw: u64,
    /// Raw bytes taken from streams that their transform encoders hold.
    transform_held: u64,
    /// A compressed bulk unit not yet cut into records, and the streams whose
    /// frames it holds (they stay out of interactive records until it's sent).
    bulk_out: BytesMut,
    bulk_unit: BTreeSet<u64>,
    /// Received bulk bytes that don't yet make a whole frame.
    bulk_in: BytesMut,
    flush_requested: bool,
    cork_deadline: Option<Instant>,
    /// Total wire bytes acked, and when the last ack arrived (rate sampling).
    delivered: u64,
    delivered_time: Instant,
    /// Send time of the newest acked record (BBR's first_sent_time).
    last_acked_sent_at: Instant,
    estimate: LinkEstimate,
    /// Which codec new records use, by the measured rate.
    tier: Tier,
    /// Codec byte of the record being handled (for the received counters).
    rx_codec: u8,

    // Receiving.
    records_received: u64,
    /// The `records_received` our last ACK carried.
    last_ack_sent: u64,
    ack_due: Option<Instant>,
    ping_due: Option<Instant>,
    /// When a compressed record last left (the codec idle clock).
    last_codec_use: Instant,
    /// A CodecReset arrived in the record being handled.
    reset_decoder: bool,
    epoch: Instant,

    stats: SessionStats,
}

impl Session {
    pub fn new(cfg: SessionConfig, now: Instant) -> Self {
        let estimate = LinkEstimate::new(cfg.initial_rate);
        Self {
            encoder: RecordEncoder::with_bulk(&cfg.codec_params, &cfg.bulk_codec_params),
            decoder: RecordDecoder::with_bulk(&cfg.decoder_limits, &cfg.bulk_decoder_limits),
            decode_buf: Vec::new(),
            streams: BTreeMap::new(),
            next_local_stream: match cfg.role {
                Role::Client => 1,
                Role::Server => 2,
            },
            control: VecDeque::new(),
            urgent_control: false,
            events: VecDeque::new(),
            next_send_seq: 0,
            replay: VecDeque::new(),
            resend: 0,
            rtt_valid_from: now,
            unacked_bytes: 0,
            pending_raw: 0,
            transform_held: 0,
            bulk_out: BytesMut::new(),
            bulk_unit: BTreeSet::new(),
            bulk_in: BytesMut::new(),
            flush_requested: false,
            cork_deadline: None,
            delivered: 0,
            delivered_time: now,
            last_acked_sent_at: now,
            estimate,
            tier: Tier::Strong,
            rx_codec: 0,
            records_received: 0,
            last_ack_sent: 0,
            ack_due: None,
            ping_due: Some(now),
            last_codec_use: now,
            reset_decoder: false,
            epoch: now,
            stats: SessionStats::default(),
            cfg,
        }
    }

    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    pub fn estimate(&self) -> &LinkEstimate {
        &self.estimate
    }

    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Bytes of compression state held by this session (both directions).
    pub fn codec_memory_bytes(&self) -> usize {
        self.encoder.memory_bytes() + self.decoder.memory_bytes()
    }

    // ---- Local side: streams ------------------------------------------------

    /// Opens a stream to `service` on the peer.
    pub fn open_stream(
        &mut self,
        service: &[u8],
        meta: &[u8],
        priority: Priority,
    ) -> Result<u64, SessionError> {
        if self.streams.len() >= self.cfg.max_streams {
            return Err(SessionError::TooManyStreams(self.streams.len()));
        }
        let id = self.next_local_stream;
        self.next_local_stream += 2;
        self.streams.insert(
            id,
            Stream::new(
                priority,
                self.cfg.stream_window,
                self.cfg.peer_stream_window,
                self.transforms(service),
            ),
        );
        self.control.push_back(Frame::Open(OpenFrame {
            stream: id,
            service: Bytes::copy_from_slice(service),
            meta: Bytes::copy_from_slice(meta),
        }));
        Ok(id)
    }

    fn transforms(&self, service: &[u8]) -> bool {
        self.cfg.transform_services.iter().any(|s| s == service)
    }

    /// Unacked wire bytes allowed on the link: `inflight_secs` of link time,
    /// but never less than the ack loop needs to keep the link busy: the
    /// bytes in the pipe (rate × round trip) plus one record queued behind
    /// the one on the link. Any more only queues ahead of interactive records;
    /// any less starves the link, the delivery rate it measures falls, and
    /// the window with it (seen: 56% busy on Iridium at 2 s).
    pub fn inflight_limit(&self) -> u64 {
        let rate = self.estimate.rate();
        let by_rate = rate * self.cfg.inflight_secs;
        let record = self.record_target() as f64;
        // min_rtt comes from the smallest records (acks): the bare round trip.
        let ack_loop = self
            .estimate
            .min_rtt()
            .map_or(0.0, |rtt| rate * rtt.as_secs_f64() + record);
        (by_rate.max(ack_loop) as u64)
            .min(self.cfg.max_inflight)
            .max(2 * record as u64)
    }

    /// The most the session holds ahead of the link: the in-flight window plus
    /// one record's (or bulk unit's) worth of raw bytes waiting to be framed.
    pub fn held_bound(&self) -> u64 {
        self.inflight_limit() + self.record_target_raw().max(self.bulk_unit_raw()) as u64
    }

    /// Bytes currently held ahead of the link: waiting raw bytes, a compressed
    /// bulk unit not yet sent, and sent but unacked records.
    pub fn held(&self) -> u64 {
        self.unacked_bytes + self.pending_raw + self.transform_held + self.bulk_out.len() as u64
    }

    /// How many bytes the driver should read from the local socket of `stream`
    /// now. Zero means: stop reading, let backpressure reach the program.
    pub fn send_capacity(&self, stream: u64) -> usize {
        let Some(s) = self.streams.get(&stream) else {
            return 0;
        };
        if s.fin_queued || s.reset {
            return 0;
        }
        // Framing and codec bytes grow a batch a little when it becomes a record.
        let room = self
            .held_bound()
            .saturating_sub(self.held() + FRAMING_RESERVE);
        room.min(s.credit_room()) as usize
    }

    /// Queues local bytes on `stream`. Always accepted; the driver keeps to
    /// [`Session::send_capacity`] so that this stays bounded.
    pub fn send(&mut self, stream: u64, data: &[u8]) -> Result<(), SessionError> {
        let s = self
            .streams
            .get_mut(&stream)
            .ok_or(SessionError::UnknownStream(stream))?;
        if s.reset || s.fin_queued || data.is_empty() {
            return Ok(());
        }
        s.pending.extend_from_slice(data);
        s.tx_stale = false;
        self.pending_raw += data.len() as u64;
        self.note_held();
        Ok(())
    }

    /// The bytes queued so far form a unit that needs an answer: send them
    /// without waiting for the cork timer.
    pub fn flush(&mut self, stream: u64) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.flush = true;
            self.flush_requested = true;
        }
    }

    pub fn set_priority(&mut self, stream: u64, priority: Priority) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.priority = priority;
        }
    }

    /// Local end of input on `stream`: FIN follows the queued bytes.
    pub fn finish(&mut self, stream: u64) {
        if let Some(s) = self.streams.get_mut(&stream)
            && !s.fin_queued
            && !s.reset
        {
            s.fin_queued = true;
            s.flush = true;
            self.flush_requested = true;
        }
    }

    /// Aborts `stream` in both directions.
    pub fn reset(&mut self, stream: u64, code: u64) {
        if let Some(s) = self.streams.remove(&stream) {
            self.pending_raw -= s.pending.len() as u64;
            self.transform_held -= s.tx_held_lines() as u64;
            self.control.push_back(Frame::Reset { stream, code });
            self.urgent_control = true;
        }
    }

    /// The driver delivered `n` received bytes of `stream` to the local socket.
    /// Grants the peer more credit once half the window is used.
    pub fn consumed(&mut self, stream: u64, n: usize) {
        if let Some(s) = self.streams.get_mut(&stream) {
            if let Some(limit) = s.consume(n as u64, self.cfg.stream_window) {
                self.control.push_back(Frame::Credit { stream, limit });
                self.urgent_control = true;
            }
            self.maybe_forget(stream);
        }
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---- Link side: records in ------------------------------------------------

    /// Handles one decrypted record from the peer. An error means the peer is
    /// broken or hostile: the driver closes the tunnel.
    pub fn handle_record(&mut self, now: Instant, record: &[u8]) -> Result<(), SessionError> {
        if record
            .first()
            .and_then(|&c| CodecId::from_u8(c))
            .is_some_and(CodecId::is_bulk)
        {
            return self.handle_bulk_record(now, record);
        }
        self.decoder.decode(record, &mut self.decode_buf)?;
        self.rx_codec = record[0];
        self.records_received += 1;
        self.stats.records_received += 1;
        self.stats.wire_bytes_received += record.len() as u64;
        // Handed over, not copied: payloads are slices of it.
        let frames = Bytes::from(std::mem::take(&mut self.decode_buf));
        let mut ack_eliciting = false;
        for frame in FrameDecoder::new(frames) {
            let frame = frame?;
            ack_eliciting |= !matches!(frame, Frame::Ack { .. });
            self.handle_frame(now, frame)?;
        }
        if std::mem::take(&mut self.reset_decoder) {
            if !self.bulk_in.is_empty() {
                return Err(SessionError::Codec(CodecError::Corrupt(
                    "codec reset inside a bulk unit".into(),
                )));
            }
            self.decoder.reset();
        }
        // A record of ACKs alone is acked with the next real one: acking it
        // at once would make two idle peers ack each other's acks forever.
        if ack_eliciting {
            self.ack_due.get_or_insert(now + self.ack_delay());
        }
        Ok(())
    }

    /// `2 | varint n | n bytes of plain frames (ACK) | slice of a bulk unit`.
    fn handle_bulk_record(&mut self, now: Instant, record: &[u8]) -> Result<(), SessionError> {
        let mut rest = &record[1..];
        let n = crate::wire::get_varint(&mut rest)?;
        if n > rest.len() as u64 {
            return Err(WireError::BadLength(n).into());
        }
        let (plain, slice) = rest.split_at(n as usize);
        let mut body = Vec::with_capacity(slice.len() + 1);
        body.push(record[0]);
        body.extend_from_slice(slice);
        self.decoder.decode(&body, &mut self.decode_buf)?;
        self.rx_codec = record[0];
        self.records_received += 1;
        self.stats.records_received += 1;
        self.stats.wire_bytes_received += record.len() as u64;
        self.ack_due.get_or_insert(now + self.ack_delay());
        for frame in FrameDecoder::new(Bytes::copy_from_slice(plain)) {
            self.handle_frame(now, frame?)?;
        }
        self.handle_bulk_slice(now)?;
        if self.reset_decoder {
            return Err(SessionError::Codec(CodecError::Corrupt(
                "codec reset in a bulk record".into(),
            )));
        }
        Ok(())
    }

    /// A bulk slice: frames may straddle slices, so keep the tail.
    fn handle_bulk_slice(&mut self, now: Instant) -> Result<(), SessionError> {
        self.bulk_in.extend_from_slice(&self.decode_buf);
        let buf = self.bulk_in.split().freeze();
        let mut frames = FrameDecoder::new(buf.clone());
        let mut consumed = 0;
        while consumed < buf.len() {
            match frames.next() {
                Some(Ok(frame)) => {
                    consumed = buf.len() - frames.remaining();
                    self.handle_frame(now, frame)?;
                }
                // Not a whole frame yet: the rest comes in the next slice.
                Some(Err(WireError::Truncated | WireError::BadLength(_))) | None => break,
                Some(Err(e)) => return Err(e.into()),
            }
        }
        self.bulk_in.extend_from_slice(&buf[consumed..]);
        let cap = self.cfg.bulk_decoder_limits.max_record_bytes;
        if self.bulk_in.len() > cap {
            return Err(SessionError::Codec(CodecError::TooLarge(cap)));
        }
        Ok(())
    }

    fn handle_frame(&mut self, now: Instant, frame: Frame) -> Result<(), SessionError> {
        match frame {
            Frame::Data {
                stream,
                flags,
                payload,
            } => {
                let Some(s) = self.streams.get_mut(&stream) else {
                    return Ok(()); // late data for a stream we reset
                };
                let transformed = flags & data_flags::TRANSFORM != 0;
                let flags = flags & !data_flags::TRANSFORM;
                let payload = if transformed {
                    // Credit counts decoded bytes: the sender counted them
                    // before its encoder saw them.
                    let mut out = Vec::with_capacity(payload.len() * 4 / 3 + 8);
                    s.rx.get_or_insert_with(transform::Decoder::new)
                        .push(&payload, &mut out)
                        .map_err(|error| SessionError::Transform { stream, error })?;
                    Bytes::from(out)
                } else {
                    check_transform_clean(stream, s)?;
                    payload
                };
                if transformed && payload.is_empty() {
                    return Ok(()); // a chunk header split from its data
                }
                s.receive(payload.len() as u64)
                    .map_err(|limit| SessionError::CreditExceeded {
                        stream,
                        got: s.recv_offset + payload.len() as u64,
                        limit,
                    })?;
                self.stats.raw_bytes_received += payload.len() as u64;
                self.stats.raw_bytes_received_by_codec[self.rx_codec as usize % 8] +=
                    payload.len() as u64;
                self.events.push_back(Event::Data {
                    stream,
                    flags,
                    payload,
                });
            }
            Frame::Open(open) => {
                let remote_parity = match self.cfg.role {
                    Role::Client => 0,
                    Role::Server => 1,
                };
                if open.stream % 2 != remote_parity || self.streams.contains_key(&open.stream) {
                    return Err(SessionError::BadStreamId(open.stream));
                }
                if self.streams.len() >= self.cfg.max_streams {
                    self.control.push_back(Frame::Reset {
                        stream: open.stream,
                        code: reset_code::REFUSED,
                    });
                    self.urgent_control = true;
                    return Ok(());
                }
                let transform = self.transforms(&open.service);
                self.streams.insert(
                    open.stream,
                    Stream::new(
                        Priority::Interactive,
                        self.cfg.stream_window,
                        self.cfg.peer_stream_window,
                        transform,
                    ),
                );
                self.events.push_back(Event::Opened {
                    stream: open.stream,
                    service: open.service,
                    meta: open.meta,
                });
            }
            Frame::Fin { stream } => {
                if let Some(s) = self.streams.get_mut(&stream) {
                    check_transform_clean(stream, s)?;
                    s.fin_received = true;
                    self.events.push_back(Event::Fin { stream });
                    self.maybe_forget(stream);
                }
            }
            Frame::Reset { stream, code } => {
                if let Some(s) = self.streams.remove(&stream) {
                    self.pending_raw -= s.pending.len() as u64;
                    self.transform_held -= s.tx_held_lines() as u64;
                    self.events.push_back(Event::Reset { stream, code });
                }
            }
            Frame::Credit { stream, limit } => {
                if let Some(s) = self.streams.get_mut(&stream) {
                    s.send_limit = s.send_limit.max(limit);
                }
            }
            Frame::Ack { record } => self.handle_ack(now, record)?,
            Frame::Ping { stamp } => {
                self.control.push_back(Frame::Pong { stamp });
                self.urgent_control = true;
                self.flush_requested = true;
            }
            Frame::Pong { stamp } => {
                let sent = self.epoch + Duration::from_micros(stamp);
                if sent <= now && sent >= self.rtt_valid_from {
                    self.estimate.rtt_sample(now - sent);
                }
            }
            Frame::Caps { .. } => {}
            Frame::CodecReset => self.reset_decoder = true,
        }
        Ok(())
    }

    /// `received` is the number of records the peer has received in total.
    fn handle_ack(&mut self, now: Instant, received: u64) -> Result<(), SessionError> {
        if received > self.next_send_seq {
            return Err(SessionError::BadAck(received));
        }
        let mut newest: Option<SentRecord> = None;
        let mut oldest_sent = None;
        while self.replay.front().is_some_and(|r| r.seq < received) {
            let r = self.replay.pop_front().expect("checked");
            self.resend = self.resend.saturating_sub(1);
            self.unacked_bytes -= r.wire.len() as u64;
            self.delivered += self.link_bytes(&r.wire);
            oldest_sent.get_or_insert(r.sent_at);
            newest = Some(r);
        }
        if let Some(r) = newest {
            // Delivery rate as BBR samples it: bytes delivered since this record
            // left, over the time since the delivery count it saw was current.
            // Records here take seconds each and acks come every few records,
            // so a batch's oldest record was often on the link before that
            // count: the interval starts at its sending, not later (else the
            // estimate climbs 50% above the link).
            let ack_elapsed = now.saturating_duration_since(r.delivered_time_at_send);
            let send_elapsed = r.sent_at.saturating_duration_since(r.first_sent_at_send);
            let batch_elapsed =
                oldest_sent.map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
            let interval = ack_elapsed.max(send_elapsed).max(batch_elapsed);
            self.last_acked_sent_at = r.sent_at;
            self.estimate
                .rate_sample(self.delivered - r.delivered_at_send, interval);
            self.estimate
                .rtt_sample(now.saturating_duration_since(r.sent_at));
            self.delivered_time = now;
            self.update_fast();
        }
        Ok(())
    }

    /// Picks the codec tier from the measured rate, with hysteresis.
    fn update_fast(&mut self) {
        if self.cfg.fast_codec.is_none() {
            return;
        }
        let (rate, c) = (self.estimate.rate(), &self.cfg);
        let tier = match self.tier {
            Tier::Strong if rate > c.stored_enter_rate => Tier::Stored,
            Tier::Strong if rate > c.fast_enter_rate => Tier::Fast,
            Tier::Fast | Tier::Stored if rate < c.fast_exit_rate => Tier::Strong,
            Tier::Fast if rate > c.stored_enter_rate => Tier::Stored,
            Tier::Stored if rate < c.stored_exit_rate => Tier::Fast,
            t => t,
        };
        if (self.tier == Tier::Strong) != (tier == Tier::Strong) {
            if tier == Tier::Strong {
                self.stats.slow_switches += 1;
            } else {
                self.stats.fast_switches += 1;
            }
        }
        self.tier = tier;
    }

    /// Whether new records use a cheap codec (the link outruns the strong one).
    pub fn is_fast(&self) -> bool {
        self.tier != Tier::Strong
    }

    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// The codec of the next interactive record worth compressing.
    pub fn record_codec(&self) -> CodecId {
        match (self.tier, self.cfg.fast_codec) {
            (Tier::Strong, _) | (_, None) => self.cfg.codec,
            (Tier::Fast, Some(c)) => c,
            (Tier::Stored, Some(_)) => CodecId::Stored,
        }
    }

    /// How long a received record may wait for its ACK to ride on traffic.
    /// Never more than half the smoothed RTT: on a fast link a 100 ms delay
    /// would stall a sender whose window drains in a millisecond, while a
    /// satellite link's RTT leaves the configured delay as it is.
    fn ack_delay(&self) -> Duration {
        match self.estimate.srtt() {
            Some(rtt) => self.cfg.ack_delay.min(rtt / 2),
            None => self.cfg.ack_delay,
        }
    }

    // ---- Link side: records out -----------------------------------------------

    /// Target wire size of one record: about `record_secs` of link time,
    /// headers included.
    pub fn record_target(&self) -> usize {
        let t = (self.estimate.rate() * self.cfg.record_secs) as usize;
        t.saturating_sub(self.record_overhead())
            .clamp(self.cfg.min_record, self.cfg.max_record)
    }

    /// Wire bytes of one bulk slice: a record, but bounded so that a link cut
    /// (which wastes the record in flight) costs little on faster links.
    fn bulk_slice_target(&self) -> usize {
        let by_time = (self.estimate.rate() * self.cfg.bulk_slice_secs) as usize;
        self.record_target()
            .min(by_time.max(self.cfg.min_bulk_slice))
    }

    /// Link bytes each record costs beyond its own: packet and Noise headers.
    fn record_overhead(&self) -> usize {
        self.cfg.packet_overhead + self.cfg.frame_overhead
    }

    /// What a record costs on the link: the estimate's rate is measured in
    /// these, so that small records can't talk it down.
    fn link_bytes(&self, wire: &[u8]) -> u64 {
        (wire.len() + self.record_overhead()) as u64
    }

    /// The raw bytes that compress to about one record target.
    fn record_target_raw(&self) -> usize {
        let raw = self.record_target() as f64 / self.estimate.compression_ratio();
        (raw as usize).min(self.cfg.max_record)
    }

    /// How long unflushed data may wait to merge with more: a fraction of the
    /// link time one extra packet header would cost.
    pub fn cork_delay(&self) -> Duration {
        let header_time = self.cfg.packet_overhead as f64 / self.estimate.rate();
        Duration::from_secs_f64(header_time / 4.0).min(self.cfg.max_cork)
    }

    fn has_sendable_data(&self) -> bool {
        self.streams.values().any(Stream::has_output)
    }

    /// Which lane a stream's next frames take, if any may go now.
    fn lane_of(&self, id: u64, s: &Stream) -> Option<Lane> {
        // Fast links skip the bulk lane: its strong codec can't keep up.
        if self.cfg.bulk_unit_secs > 0.0 && s.priority == Priority::Bulk && !self.is_fast() {
            Some(Lane::Bulk)
        } else if self.bulk_unit.contains(&id) {
            None // its earlier frames are still in the unsent bulk unit
        } else {
            Some(Lane::Interactive)
        }
    }

    fn lane_streams(&self, lane: Lane) -> impl Iterator<Item = (&u64, &Stream)> {
        self.streams
            .iter()
            .filter(move |(id, s)| self.lane_of(**id, s) == Some(lane))
    }

    fn data_ready(&self, now: Instant, lane: Lane) -> bool {
        let mut any = false;
        let mut flush = lane == Lane::Interactive && self.flush_requested;
        let mut raw = 0;
        for (_, s) in self.lane_streams(lane) {
            if s.has_output() {
                any = true;
                flush |= s.flush || s.fin_ready() || (s.tx_flushable() && s.fin_queued);
                raw += s.sendable();
            }
        }
        let target = match lane {
            Lane::Interactive => self.record_target_raw(),
            Lane::Bulk => self.bulk_unit_raw(),
        };
        any && (flush || self.cork_deadline.is_some_and(|d| d <= now) || raw >= target)
    }

    /// Raw bytes compressed as one bulk unit: about `bulk_unit_secs` of link time.
    fn bulk_unit_raw(&self) -> usize {
        let raw =
            self.estimate.rate() * self.cfg.bulk_unit_secs / self.estimate.compression_ratio();
        (raw as usize).clamp(self.record_target_raw(), self.cfg.max_record)
    }

    /// The next record to put on the link, if one is due. The driver calls this
    /// whenever the socket can take more (its unsent queue is low).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Bytes> {
        if let Some(wire) = self.next_resend() {
            return Some(wire);
        }
        // The time test first keeps the rest off the per-record path.
        if now >= self.last_codec_use + self.cfg.codec_idle_reset
            && self.codec_reset_due().is_some_and(|t| t <= now)
        {
            return Some(self.send_codec_reset(now));
        }
        if (self.has_sendable_data() || !self.control.is_empty()) && self.cork_deadline.is_none() {
            self.cork_deadline = Some(now + self.cork_delay());
        }
        let window_open = self.unacked_bytes < self.inflight_limit();
        let want_data = window_open && self.data_ready(now, Lane::Interactive);
        let cork_expired = self.cork_deadline.is_some_and(|d| d <= now);
        let want_control = !self.control.is_empty()
            && (self.urgent_control || self.flush_requested || cork_expired || want_data);
        let want_ack = self.ack_due.is_some_and(|d| d <= now)
            || (self.ack_due.is_some() && (want_data || want_control));
        let ping = self.ping_due.is_some_and(|d| d <= now);
        if !want_data && !want_control && !want_ack && !ping {
            let record = if window_open {
                self.poll_bulk(now)
            } else {
                None
            };
            // The bulk lane may just have taken the last bytes the cork was
            // waiting on; a stale deadline would wake the driver forever.
            if !self.has_sendable_data() && self.control.is_empty() {
                self.cork_deadline = None;
            }
            return record;
        }

        let target_raw = self.record_target_raw();
        // Frames follow a codec byte, so a stored record needs no copy.
        let mut buf = Vec::with_capacity(target_raw.min(64 * 1024) + 64);
        buf.push(CodecId::Stored as u8);
        self.ack_due = None;
        self.encode_ack(&mut buf);
        if ping {
            self.ping_due = None;
            let stamp = now.saturating_duration_since(self.epoch).as_micros() as u64;
            Frame::Ping { stamp }.encode(&mut buf);
        }
        if want_control || want_data {
            while let Some(f) = self.control.pop_front() {
                f.encode(&mut buf);
            }
            self.urgent_control = false;
        }
        let mut raw_data = 0usize;
        if want_data {
            raw_data = self.fill_data(&mut buf, target_raw, Lane::Interactive, cork_expired);
        }
        self.flush_requested = self.streams.values().any(|s| s.flush && s.sendable() > 0);
        self.cork_deadline = None;
        if self.has_sendable_data() || !self.control.is_empty() {
            self.cork_deadline = Some(now + self.cork_delay());
        }
        let frames = &buf[1..];
        if frames.is_empty() {
            return None;
        }

        // Tiny records (acks, pongs) don't pay for a compressor's block header.
        let codec = if frames.len() < 24 {
            CodecId::Stored
        } else {
            self.record_codec()
        };
        let mut wire = match codec {
            CodecId::Stored => buf,
            _ => {
                let mut wire = Vec::with_capacity(frames.len() + 16);
                match self.encoder.encode(codec, frames, &mut wire) {
                    Ok(()) => wire,
                    Err(_) => buf,
                }
            }
        };
        // The replay buffer keeps the allocation, not just the bytes: a small
        // or well-compressed record must not hold a big buffer (shrinking
        // reallocs in place).
        if wire.capacity() > wire.len() + wire.len() / 4 + 256 {
            wire.shrink_to_fit();
        }
        if raw_data > 0 {
            self.estimate
                .compression_sample(raw_data + 4, wire.len().max(1));
        }
        self.stats.raw_bytes_sent += raw_data as u64;
        self.stats.raw_bytes_by_codec[wire[0] as usize % 8] += raw_data as u64;
        Some(self.finish_record(now, wire))
    }

    /// When the idle codec contexts are to be reset, if they hold anything
    /// and nothing waits to be sent (which would use them again).
    fn codec_reset_due(&self) -> Option<Instant> {
        let idle = self.cfg.codec_idle_reset;
        // Cheapest first: this runs on every poll_timeout.
        if idle.is_zero()
            || !self.bulk_out.is_empty()
            || self.has_sendable_data()
            || self.encoder.memory_bytes() == 0
        {
            return None;
        }
        Some(self.last_codec_use + idle)
    }

    /// A stored record with any pending control frames and a CodecReset;
    /// the encoder starts from its primed state with the next record.
    fn send_codec_reset(&mut self, now: Instant) -> Bytes {
        let mut wire = vec![CodecId::Stored as u8];
        self.ack_due = None;
        self.encode_ack(&mut wire);
        while let Some(f) = self.control.pop_front() {
            f.encode(&mut wire);
        }
        self.urgent_control = false;
        Frame::CodecReset.encode(&mut wire);
        self.encoder.reset();
        self.stats.codec_resets += 1;
        self.finish_record(now, wire)
    }

    /// The next slice of the bulk unit, compressing a new unit if the last
    /// one is sent and bulk data is due.
    fn poll_bulk(&mut self, now: Instant) -> Option<Bytes> {
        if self.bulk_out.is_empty() {
            self.bulk_unit.clear();
            if !self.data_ready(now, Lane::Bulk) {
                return None;
            }
            let mut frames = Vec::new();
            let idle = self.cork_deadline.is_some_and(|d| d <= now);
            let raw = self.fill_data(&mut frames, self.bulk_unit_raw(), Lane::Bulk, idle);
            if frames.is_empty() {
                // Only a transform's held bytes, not yet due: look again
                // after a cork delay rather than at once.
                self.cork_deadline = Some(now + self.cork_delay());
                return None;
            }
            self.stats.raw_bytes_sent += raw as u64;
            let mut unit = Vec::with_capacity(frames.len() / 2 + 64);
            if self.encoder.encode_bulk_unit(&frames, &mut unit).is_err() {
                // Whole frames, so they can travel as one stored record.
                let mut wire = vec![CodecId::Stored as u8];
                wire.extend_from_slice(&frames);
                self.bulk_unit.clear();
                self.stats.raw_bytes_by_codec[CodecId::Stored as usize] += raw as u64;
                return Some(self.finish_record(now, wire));
            }
            self.estimate.compression_sample(raw + 4, unit.len().max(1));
            self.stats.raw_bytes_by_codec[self.encoder.bulk_codec() as usize] += raw as u64;
            self.bulk_out.extend_from_slice(&unit);
        }
        // A short tail rides along rather than paying a packet of its own.
        let target = self.bulk_slice_target();
        let n = if self.bulk_out.len() <= target + target / 2 {
            self.bulk_out.len()
        } else {
            target
        };
        let mut plain = Vec::new();
        self.encode_ack(&mut plain);
        let mut wire = Vec::with_capacity(n + plain.len() + 2);
        wire.push(self.encoder.bulk_codec() as u8);
        crate::wire::put_varint(&mut wire, plain.len() as u64);
        wire.extend_from_slice(&plain);
        wire.extend_from_slice(&self.bulk_out.split_to(n));
        if self.bulk_out.is_empty() {
            self.bulk_unit.clear();
        }
        Some(self.finish_record(now, wire))
    }

    /// An ACK rides on every record while there is something new to ack, so
    /// even records of ACKs alone (which elicit none) get acked by traffic.
    fn encode_ack(&mut self, buf: &mut Vec<u8>) {
        if self.records_received > self.last_ack_sent {
            self.last_ack_sent = self.records_received;
            Frame::Ack {
                record: self.records_received,
            }
            .encode(buf);
        }
    }

    /// Numbers a record, keeps it for replay, and accounts it.
    fn finish_record(&mut self, now: Instant, wire: Vec<u8>) -> Bytes {
        if wire.first() != Some(&(CodecId::Stored as u8)) {
            self.last_codec_use = now;
        }
        let wire = Bytes::from(wire);
        self.replay.push_back(SentRecord {
            seq: self.next_send_seq,
            wire: wire.clone(),
            sent_at: now,
            delivered_at_send: self.delivered,
            first_sent_at_send: if self.unacked_bytes == 0 {
                now
            } else {
                self.last_acked_sent_at
            },
            delivered_time_at_send: if self.unacked_bytes == 0 {
                now
            } else {
                self.delivered_time
            },
        });
        if self.unacked_bytes == 0 {
            self.delivered_time = now;
        }
        self.next_send_seq += 1;
        self.unacked_bytes += wire.len() as u64;
        self.stats.records_sent += 1;
        self.stats.wire_bytes_sent += wire.len() as u64;
        self.note_held();
        wire
    }

    /// Moves up to `budget` raw bytes of stream data into `buf`: interactive
    /// streams first, round-robin within a class, FINs after their data.
    /// `idle`: the cork timer ran out, so transforms release held lines.
    fn fill_data(&mut self, buf: &mut Vec<u8>, budget: usize, lane: Lane, idle: bool) -> usize {
        let mut used = 0usize;
        for class in [Priority::Interactive, Priority::Bulk] {
            loop {
                let ids: Vec<u64> = self
                    .lane_streams(lane)
                    .filter(|(_, s)| s.priority == class && s.has_output())
                    .map(|(id, _)| *id)
                    .collect();
                if lane == Lane::Bulk {
                    self.bulk_unit.extend(ids.iter().copied());
                }
                if ids.is_empty() || used >= budget {
                    break;
                }
                // Round-robin: equal shares, at least a little each.
                let share = ((budget - used) / ids.len()).max(64);
                let mut progressed = false;
                for id in ids {
                    if used >= budget {
                        break;
                    }
                    // Could the source have given us more? (Stream::tx_stale)
                    let open = self.send_capacity(id) > 0;
                    let s = self.streams.get_mut(&id).expect("listed");
                    let n = s.sendable().min(share).min(budget - used);
                    let (held, held_lines) = (s.tx_held(), s.tx_held_lines());
                    if n > 0 || s.tx_flushable() {
                        let (payload, flags) = s.take(n, idle, open, lane == Lane::Interactive);
                        self.pending_raw -= n as u64;
                        self.transform_held =
                            self.transform_held + s.tx_held_lines() as u64 - held_lines as u64;
                        if !payload.is_empty() {
                            Frame::Data {
                                stream: id,
                                flags,
                                payload,
                            }
                            .encode(buf);
                        }
                        used += n;
                        progressed |= n > 0 || s.tx_held() < held;
                    }
                    if s.fin_ready() {
                        s.fin_sent = true;
                        Frame::Fin { stream: id }.encode(buf);
                        progressed = true;
                        self.maybe_forget(id);
                    }
                }
                if !progressed {
                    break;
                }
            }
        }
        used
    }

    fn maybe_forget(&mut self, stream: u64) {
        if self.streams.get(&stream).is_some_and(|s| s.finished()) {
            self.streams.remove(&stream);
        }
    }

    fn note_held(&mut self) {
        let held = self.held();
        if held > self.stats.max_held {
            self.stats.max_held = held;
            self.stats.held_bound_at_max = self.held_bound();
        }
    }

    // ---- Resume ----------------------------------------------------------------

    /// Records received from the peer so far, in total: what a reconnecting
    /// side tells its peer so that the peer re-sends exactly the rest.
    pub fn records_received(&self) -> u64 {
        self.records_received
    }

    /// The link was replaced and the peer says it has received
    /// `peer_received` records in total. Drops the replay records it has and
    /// schedules the others to be re-sent, byte for byte (the peer's decoder
    /// expects exactly those compressed bytes), before any new record.
    ///
    /// Control frames in the lost records travel again with them, so no other
    /// state needs re-sending. Rate and RTT samples skip the outage.
    pub fn resume(&mut self, now: Instant, peer_received: u64) -> Result<(), SessionError> {
        // Our last ACK may have been lost with the link: repeat it.
        self.last_ack_sent = 0;
        let first = self.replay.front().map_or(self.next_send_seq, |r| r.seq);
        if peer_received < first || peer_received > self.next_send_seq {
            return Err(SessionError::BadResume {
                peer: peer_received,
                first,
                next: self.next_send_seq,
            });
        }
        while self.replay.front().is_some_and(|r| r.seq < peer_received) {
            let r = self.replay.pop_front().expect("checked");
            self.unacked_bytes -= r.wire.len() as u64;
            self.delivered += self.link_bytes(&r.wire);
        }
        self.resend = self.replay.len();
        for r in &mut self.replay {
            r.sent_at = now;
            r.delivered_at_send = self.delivered;
            r.delivered_time_at_send = now;
            r.first_sent_at_send = now;
        }
        self.delivered_time = now;
        self.rtt_valid_from = now;
        // A fresh RTT sample on the new connection.
        self.ping_due = Some(now);
        // The peer learnt our count from the handshake; an ACK may wait.
        Ok(())
    }

    /// Records waiting to be re-sent after [`Session::resume`].
    pub fn resend_pending(&self) -> usize {
        self.resend
    }

    fn next_resend(&mut self) -> Option<Bytes> {
        if self.resend == 0 {
            return None;
        }
        let idx = self.replay.len() - self.resend;
        self.resend -= 1;
        let wire = self.replay[idx].wire.clone();
        self.stats.records_resent += 1;
        self.stats.wire_bytes_resent += wire.len() as u64;
        self.stats.wire_bytes_sent += wire.len() as u64;
        Some(wire)
    }

    // ---- Time ------------------------------------------------------------------

    /// When the driver should call [`Session::poll_transmit`] again even if
    /// nothing else happens.
    pub fn poll_timeout(&self) -> Option<Instant> {
        // A cork timer is only worth waking for if its record may be sent;
        // with the window closed, the next ACK is what moves things.
        let window_open = self.unacked_bytes < self.inflight_limit();
        if self.resend > 0 {
            return Some(self.epoch);
        }
        let cork = self
            .cork_deadline
            .filter(|_| window_open || !self.control.is_empty());
        [self.ack_due, cork, self.ping_due, self.codec_reset_due()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Schedules a PING (RTT measurement) for `at`.
    pub fn schedule_ping(&mut self, at: Instant) {
        self.ping_due = Some(at);
    }

    /// Records sent but not yet acknowledged, oldest first (the replay buffer).
    pub fn unacked_records(&self) -> impl Iterator<Item = &Bytes> {
        self.replay.iter().map(|r| &r.wire)
    }

    pub fn unacked_bytes(&self) -> u64 {
        self.unacked_bytes
    }
}

/// Untransformed DATA or FIN may not cut a transformed item in two.
fn check_transform_clean(stream: u64, s: &Stream) -> Result<(), SessionError> {
    match &s.rx {
        Some(d) => d
            .finish()
            .map_err(|error| SessionError::Transform { stream, error }),
        None => Ok(()),
    }
}
