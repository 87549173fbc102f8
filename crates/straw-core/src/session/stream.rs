//! Per-stream state: queued bytes, credit in both directions, FIN/RESET.

use bytes::{Bytes, BytesMut};

use super::{Priority, data_flags};
use crate::transform;

/// A bulk unit's budget for one take, in link bytes: what the codec will
/// shrink costs `ratio` wire bytes per raw byte (the measured ratio), what
/// it won't (a JPEG's decoded bytes) one each. Sized in raw bytes alone, a
/// unit cut after mail text (ratio 0.1) took 6 KB of a base64 PNG: 20 s of
/// a 2,400 bit/s link that nothing could drop once compressed.
#[derive(Debug, Clone, Copy)]
pub(super) struct WireBudget {
    pub wire: f64,
    pub ratio: f64,
}

/// What [`Stream::take`] took.
pub(super) struct Take {
    pub payload: Bytes,
    pub flags: u8,
    /// Queued bytes taken (and counted against credit).
    pub taken: usize,
    /// What they cost against the caller's budget, in raw bytes.
    pub cost: usize,
    /// The payload's first opaque chunk starts here (bulk takes, after
    /// some text): end a frame there, so the text is delivered without
    /// waiting for the chunk.
    pub split: Option<usize>,
}

/// Pushes up to `n` of `pending`'s bytes through `enc` in slices of the
/// budget left, until the budget is spent: a slice costs `ratio` per byte,
/// plus one per opaque byte it made the encoder emit (a base64 run of a
/// compressed class), and chunks are kept to the budget left, so a unit
/// ends within about one budget of link time whatever its bytes turn out
/// to be. Returns the bytes taken and their cost in raw bytes.
fn push_within(
    enc: &mut transform::Encoder,
    pending: &mut BytesMut,
    n: usize,
    w: WireBudget,
    out: &mut Vec<u8>,
) -> (usize, usize) {
    let ratio = w.ratio.max(0.01);
    let opaque_before = enc.opaque_emitted();
    enc.set_chunk_limit(w.wire as usize);
    let mut taken = 0usize;
    let mut spent = 0.0;
    while taken < n && spent < w.wire {
        let slice = ((w.wire - spent) as usize).max(64).min(n - taken);
        enc.push(&pending.split_to(slice), out);
        taken += slice;
        let opaque = (enc.opaque_emitted() - opaque_before) as f64;
        spent = taken as f64 * ratio + opaque;
    }
    (taken, ((spent / ratio) as usize).max(taken))
}

pub(super) struct Stream {
    pub priority: Priority,
    /// Its service's wire accounting class (see `accounting`).
    pub class: u8,
    /// Local bytes not yet framed.
    pub pending: BytesMut,
    /// Raw bytes framed so far, and how far the peer lets us go.
    pub send_offset: u64,
    pub send_limit: u64,
    /// The pending bytes end a unit that needs an answer.
    pub flush: bool,
    pub fin_queued: bool,
    pub fin_sent: bool,
    pub reset: bool,

    /// Outgoing bytes go through the base64 transform (set by the sender).
    pub tx: Option<transform::Encoder>,
    /// At the last take (a cork delay ago or more) everything was taken and
    /// the session would have accepted more, and no bytes came since: the
    /// source has paused.
    pub tx_stale: bool,
    /// The peer's transformed DATA is decoded here.
    pub rx: Option<transform::Decoder>,

    pub recv_offset: u64,
    pub recv_consumed: u64,
    pub recv_limit: u64,
    pub fin_received: bool,
}

impl Stream {
    pub fn new(priority: Priority, recv_window: u64, send_window: u64, transform: bool) -> Self {
        Self {
            class: super::WIRE_CLASS_OTHER as u8,
            tx: transform.then(transform::Encoder::new),
            rx: None,
            tx_stale: false,
            priority,
            pending: BytesMut::new(),
            send_offset: 0,
            send_limit: send_window,
            flush: false,
            fin_queued: false,
            fin_sent: false,
            reset: false,
            recv_offset: 0,
            recv_consumed: 0,
            recv_limit: recv_window,
            fin_received: false,
        }
    }

    /// Credit left after what is already queued.
    pub fn credit_room(&self) -> u64 {
        self.send_limit
            .saturating_sub(self.send_offset + self.pending.len() as u64)
    }

    /// Queued bytes the peer's credit lets us frame now.
    pub fn sendable(&self) -> usize {
        let credit = self.send_limit.saturating_sub(self.send_offset);
        (self.pending.len() as u64).min(credit) as usize
    }

    pub fn fin_ready(&self) -> bool {
        self.fin_queued && !self.fin_sent && self.pending.is_empty() && self.tx_held() == 0
    }

    /// Bytes taken (and counted against credit) that the transform still holds.
    pub fn tx_held(&self) -> usize {
        self.tx.as_ref().map_or(0, |t| t.held())
    }

    /// Raw lines the transform holds, counted in `Session::held`. The
    /// decoded bytes of an unfinished chunk (≤ `MAX_CHUNK`) are not: the
    /// source must go on to complete it, and a bound of ~2 KB on a slow link
    /// would stop it first.
    pub fn tx_held_lines(&self) -> usize {
        self.tx.as_ref().map_or(0, |t| t.held_lines())
    }

    /// Everything queued is taken but the transform holds some of it.
    pub fn tx_flushable(&self) -> bool {
        self.pending.is_empty() && self.tx_held() > 0
    }

    /// Something may be framed now (given a reason to flush the transform).
    pub fn has_output(&self) -> bool {
        self.sendable() > 0 || self.fin_ready() || self.tx_flushable()
    }

    /// Takes up to `n` queued bytes as a DATA payload and its flags; returns
    /// them with the bytes taken and what they cost against the caller's
    /// budget, in raw bytes. Credit counts the bytes taken; with the
    /// transform the payload may be shorter or longer, and the encoder may
    /// hold the end of a run back unless a flush or FIN says that nothing
    /// follows soon, or the cork timer ran out (`idle`) while the source is
    /// paused ([`Stream::tx_stale`]): on a slow link the timer runs out all
    /// the time, and a flush cuts the run at its open line (that cost 10% on
    /// a base64 attachment).
    /// `open`: the session would have accepted more bytes before this take.
    /// `cut`: the payload goes into a record of its own size, so the encoder
    /// may not gather a chunk across takes (bulk units are sliced anyway).
    /// `wire`: a bulk unit's budget in link bytes (see [`WireBudget`]).
    pub fn take(
        &mut self,
        n: usize,
        idle: bool,
        open: bool,
        cut: bool,
        wire: Option<WireBudget>,
    ) -> Take {
        let Some(enc) = &mut self.tx else {
            self.send_offset += n as u64;
            let payload = self.pending.split_to(n).freeze();
            let drained = self.pending.is_empty();
            self.tx_stale = drained && open;
            if drained {
                self.flush = false;
            }
            return Take {
                payload,
                flags: 0,
                taken: n,
                cost: n,
                split: None,
            };
        };
        let mut out = Vec::with_capacity(n + 16);
        enc.take_opaque_start();
        let (taken, cost) = match wire {
            None => {
                enc.push(&self.pending.split_to(n), &mut out);
                (n, n)
            }
            Some(w) => push_within(enc, &mut self.pending, n, w, &mut out),
        };
        let split = enc
            .take_opaque_start()
            .filter(|&at| wire.is_some() && at > 0);
        self.send_offset += taken as u64;
        let drained = self.pending.is_empty();
        let stale = std::mem::replace(&mut self.tx_stale, drained && open);
        if drained && ((idle && stale) || self.flush || self.fin_queued) {
            enc.flush(&mut out);
        } else if cut {
            enc.cut(&mut out);
        }
        if drained && self.tx_held() == 0 {
            self.flush = false;
        }
        Take {
            payload: Bytes::from(out),
            flags: data_flags::TRANSFORM,
            taken,
            cost,
            split,
        }
    }

    /// Accounts `n` received bytes; `Err(limit)` if the peer overran its credit.
    pub fn receive(&mut self, n: u64) -> Result<(), u64> {
        if self.recv_offset + n > self.recv_limit || self.fin_received {
            return Err(self.recv_limit);
        }
        self.recv_offset += n;
        Ok(())
    }

    /// Accounts `n` bytes delivered locally; returns a new credit limit to
    /// announce once less than half the window is left (if `grant`).
    pub fn consume(&mut self, n: u64, window: u64, grant: bool) -> Option<u64> {
        self.recv_consumed = (self.recv_consumed + n).min(self.recv_offset);
        if self.fin_received || !grant {
            return None;
        }
        let left = self.recv_limit - self.recv_consumed;
        if left < window / 2 {
            self.recv_limit = self.recv_consumed + window;
            Some(self.recv_limit)
        } else {
            None
        }
    }

    /// Both directions are done and everything received was delivered.
    pub fn finished(&self) -> bool {
        self.fin_sent && self.fin_received && self.recv_consumed == self.recv_offset
    }
}
