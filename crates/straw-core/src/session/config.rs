//! What a session is configured with, and the defaults.

use std::time::Duration;

use super::Role;
use crate::codec::{CodecId, CodecParams, DecoderLimits, Direction, Lane};

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
    /// Payload of one link segment (the path's TCP MSS; 536 is TCP's
    /// default, an MTU of 576). On a slow link a bulk slice fills one, so
    /// bulk pays one packet header and one record's framing per full
    /// segment instead of per second of goodput.
    pub segment_payload: usize,
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
    /// Most raw bytes in one bulk unit: the strong codec compresses a unit
    /// in one go on the runtime's thread (CM: ~2.5 ms per KB), so this
    /// bounds how long any other tunnel's reply can wait behind it. Units
    /// share their history, so smaller ones cost only a flush each.
    pub max_bulk_unit: usize,
    pub bulk_codec_params: CodecParams,
    pub bulk_decoder_limits: DecoderLimits,
    /// Services whose outgoing stream data goes through the base64
    /// transform (mail, HTTP). Each side decides for what it sends; the DATA
    /// flag tells the peer, so the two configs need not agree.
    pub transform_services: Vec<Vec<u8>>,
    /// Services whose wire bytes are counted apart
    /// ([`SessionStats::wire_bytes_sent_by_class`](super::SessionStats)):
    /// the n-th is class `WIRE_CLASS_FIRST_SERVICE + n`; past the 14th, and
    /// any service not listed, count as `WIRE_CLASS_OTHER`.
    pub accounting_services: Vec<Vec<u8>>,
    /// After this long without a compressed record, the sender resets its
    /// compression contexts to their primed state and tells the peer
    /// ([`crate::wire::Frame::CodecReset`]), so an idle tunnel holds no codec state on
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
    /// Receive credit this side may have granted over all its streams at
    /// once, in raw bytes: the most stream data the peer can make it hold.
    /// Each stream's grant is at most `stream_window`, so a peer's OPEN is
    /// refused when one more full window would not fit (the effective
    /// stream cap is `recv_budget / stream_window`). `u64::MAX`: no bound.
    pub recv_budget: u64,
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
            segment_payload: 536,
            frame_overhead: 18,
            bulk_unit_secs: 2.0,
            bulk_slice_secs: 0.25,
            min_bulk_slice: 4096,
            max_bulk_unit: 8 * 1024,
            bulk_codec_params: CodecParams::default(),
            bulk_decoder_limits: DecoderLimits::default(),
            transform_services: Vec::new(),
            accounting_services: Vec::new(),
            codec_idle_reset: Duration::from_secs(300),
            fast_codec: Some(CodecId::Lz4),
            fast_enter_rate: FAST_ENTER_RATE,
            fast_exit_rate: FAST_EXIT_RATE,
            stored_enter_rate: STORED_ENTER_RATE,
            stored_exit_rate: STORED_EXIT_RATE,
            max_inflight: MAX_INFLIGHT,
            recv_budget: u64::MAX,
        }
    }

    /// The shipped zstd profile: interactive records in a small default
    /// context, bulk in a 512 KiB window.
    pub fn use_slow_link_zstd(&mut self) {
        self.codec = CodecId::Zstd;
        self.codec_params = CodecParams::default();
        self.decoder_limits = DecoderLimits::default();
        let mut bulk = CodecParams::slow_link();
        bulk.window_log = 19;
        (bulk.hash_log, bulk.chain_log) = CodecParams::tables_for_window(19);
        self.bulk_codec_params = bulk;
        self.bulk_decoder_limits = DecoderLimits {
            max_window_log: 19,
            ..DecoderLimits::slow_link()
        };
    }

    /// The shipped CM profile for both lanes, sized per direction: what this
    /// side sends and what it receives differ by `role`.
    pub fn use_slow_link_cm(&mut self) {
        let (send, recv) = match self.role {
            Role::Client => (Direction::ClientToServer, Direction::ServerToClient),
            Role::Server => (Direction::ServerToClient, Direction::ClientToServer),
        };
        self.codec = CodecId::Cm;
        self.codec_params = CodecParams::slow_link_cm(send, Lane::Interactive);
        self.decoder_limits = DecoderLimits::slow_link_cm(recv, Lane::Interactive);
        self.bulk_codec_params = CodecParams::slow_link_cm(send, Lane::Bulk);
        self.bulk_decoder_limits = DecoderLimits::slow_link_cm(recv, Lane::Bulk);
    }
}
