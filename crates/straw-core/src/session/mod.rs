//! The session: streams, credit, scheduling, cork/flush, acks and the replay
//! buffer, as one sans-IO state machine.
//!
//! The driver feeds it decrypted records ([`Session::handle_record`]) and local
//! stream bytes ([`Session::send`]), asks it for records to put on the link
//! ([`Session::poll_transmit`]) and for events ([`Session::poll_event`]), and
//! passes the current time in. Nothing here blocks or allocates per byte.
//!
//! `Session` and its types are here; its methods are grouped by concern:
//! - `local`: the driver's side of streams (open, send, flush, FIN, reset,
//!   consumed bytes → credit; per-stream state in `stream`);
//! - `budget`: how much may be held ahead of the link, record and unit sizes;
//! - `scheduler`: what the next record holds and when (priorities, lanes,
//!   cork timer, bulk units and slices, `poll_timeout`);
//! - `receive`: records and frames in; `ack`: acks both ways and the rate
//!   samples they give (`estimate`); `replay`: unacked records and resume;
//! - `tier`: the codec by measured rate; `codec_reset`: the idle reset;
//! - `offload`: bulk units compressed on the driver's threads;
//! - `config`: [`SessionConfig`] and its defaults.

mod accounting;
mod ack;
mod budget;
mod codec_reset;
mod config;
mod estimate;
mod flood;
mod link_clock;
mod local;
mod offload;
mod receive;
mod replay;
mod scheduler;
mod stream;
mod tier;

#[cfg(test)]
mod flood_tests;
#[cfg(test)]
mod memory_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use crate::codec::{BulkJob, CodecError, RecordDecoder, RecordEncoder};
use crate::transform::TransformError;
use crate::wire::{Frame, WireError};

pub use accounting::{
    WIRE_CLASS_CONTROL, WIRE_CLASS_FIRST_SERVICE, WIRE_CLASS_OTHER, WIRE_CLASSES,
};
pub use config::{
    FAST_ENTER_RATE, FAST_EXIT_RATE, MAX_INFLIGHT, STORED_ENTER_RATE, STORED_EXIT_RATE,
    SessionConfig,
};
pub use estimate::LinkEstimate;
pub use flood::{FloodKind, MAX_EMPTY_DATA_PER_RECORD, MIN_FREE_FRAMES_PER_RECORD};
pub use tier::Tier;

use flood::RecordBudget;
use offload::PendingUnit;
use replay::SentRecord;
use stream::Stream;

/// Which side of the tunnel this is. Clients open odd stream ids, servers even,
/// so both may open streams without coordination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
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
    /// The peer sent more frames that cost it nothing than any real peer
    /// does (see `flood`): it is hostile.
    #[error("peer flood: more than {limit} {what}")]
    Flood { what: FloodKind, limit: usize },
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
    /// Times the driver said the host's codec CPU was saturated with this
    /// session among its users ([`Session::set_cpu_degraded`]).
    pub cpu_degraded: u64,
    /// Wire bytes sent and received (records, before the link layer's
    /// framing), by service class ([`SessionConfig::accounting_services`],
    /// [`WIRE_CLASS_CONTROL`], [`WIRE_CLASS_OTHER`]); each sums to its total.
    pub wire_bytes_sent_by_class: [u64; WIRE_CLASSES],
    pub wire_bytes_received_by_class: [u64; WIRE_CLASSES],
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
    /// Where the one PONG that may wait sits in `control`, if queued.
    pong_slot: Option<usize>,
    /// Refused OPENs in `control`.
    refusals_queued: usize,
    events: VecDeque<Event>,
    /// Frames without stream bytes in the record being handled.
    rx_budget: RecordBudget,
    /// Memory is short (the driver's global account): no new credit, no
    /// new streams from the peer, until it is lifted.
    credit_hold: bool,

    // Sending.
    next_send_seq: u64,
    replay: VecDeque<SentRecord>,
    /// After a resume, the records `resend_next..resend_end` (sequence
    /// numbers) are re-sent before any new record. By sequence, not by
    /// count: acks leaving from the replay's front and new records joining
    /// its back move no re-send.
    resend_next: u64,
    resend_end: u64,
    /// PONGs for PINGs sent before this moment measure the outage, not the RTT.
    rtt_valid_from: Instant,
    unacked_bytes: u64,
    /// When what was handed to the link will have left it (pacing).
    link_clock: link_clock::LinkClock,
    /// A record waits for the link clock, not an ack: when to look again.
    pace_wake: Option<Instant>,
    /// Unacked records the peer will answer (see `replay::ack_eliciting`).
    unacked_eliciting: usize,
    pending_raw: u64,
    /// Raw bytes taken from streams that their transform encoders hold.
    transform_held: u64,
    /// A compressed bulk unit not yet cut into records, and the streams whose
    /// frames it holds (they stay out of interactive records until it's sent).
    bulk_out: BytesMut,
    bulk_unit: BTreeSet<u64>,
    /// Since when what is left of the unit is read by no one (see
    /// `bulk_unit_dead` and `poll_bulk`).
    bulk_dead_since: Option<Instant>,
    /// Bulk units leave as [`BulkJob`]s for the driver to compress on other
    /// threads, instead of inside `poll_transmit` (see `set_bulk_offload`).
    bulk_offload: bool,
    /// A unit's job, for the driver to take.
    bulk_job: Option<BulkJob>,
    /// The unit out with its job, until `bulk_job_done`.
    bulk_pending: Option<PendingUnit>,
    /// A unit whose compression failed, as one stored record to send.
    bulk_stored: Option<Vec<u8>>,
    /// Where in the bulk unit being filled text ends and a stream's opaque
    /// chunk begins (see `Stream::take`): a segment ends there.
    bulk_cut: Option<usize>,
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
    /// The codec tier the measured rate picks (with its hysteresis); new
    /// records use it unless [`Self::cpu_degraded`] forces the fast one
    /// ([`Session::tier`]).
    rate_tier: Tier,
    /// The host's codec CPU is saturated and this session is among those
    /// that use it: at least the fast tier, whatever the rate says.
    cpu_degraded: bool,
    /// Codec byte of the record being handled (for the received counters).
    rx_codec: u8,
    /// Stream bytes by class in the record being built, the bulk unit being
    /// compressed, and the record (or bulk slices) being handled.
    tx_class_raw: accounting::ClassBytes,
    rx_class_raw: accounting::ClassBytes,
    /// Bulk slices received whose frames have not ended yet: their wire
    /// bytes go to the streams of the frames that end them.
    rx_bulk_unattributed: u64,

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
    /// Our encoder's state was dropped (`drop_encoder_state`): a CodecReset
    /// must reach the peer before any new record.
    codec_reset_owed: bool,
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
            pong_slot: None,
            refusals_queued: 0,
            events: VecDeque::new(),
            rx_budget: RecordBudget::default(),
            credit_hold: false,
            next_send_seq: 0,
            replay: VecDeque::new(),
            resend_next: 0,
            resend_end: 0,
            rtt_valid_from: now,
            unacked_bytes: 0,
            link_clock: link_clock::LinkClock::default(),
            pace_wake: None,
            unacked_eliciting: 0,
            pending_raw: 0,
            transform_held: 0,
            bulk_out: BytesMut::new(),
            bulk_unit: BTreeSet::new(),
            bulk_dead_since: None,
            bulk_offload: false,
            bulk_job: None,
            bulk_pending: None,
            bulk_stored: None,
            bulk_cut: None,
            bulk_in: BytesMut::new(),
            flush_requested: false,
            cork_deadline: None,
            delivered: 0,
            delivered_time: now,
            last_acked_sent_at: now,
            estimate,
            rate_tier: Tier::Strong,
            cpu_degraded: false,
            rx_codec: 0,
            tx_class_raw: [0; WIRE_CLASSES],
            rx_class_raw: [0; WIRE_CLASSES],
            rx_bulk_unattributed: 0,
            records_received: 0,
            last_ack_sent: 0,
            ack_due: None,
            ping_due: Some(now),
            last_codec_use: now,
            reset_decoder: false,
            codec_reset_owed: false,
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
}
