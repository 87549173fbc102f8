//! What the client knows about its link, its money and its connections,
//! for `straw status` ([`crate::control`] serves it).
//!
//! The [`Board`] is written by the redialler (link up, down, dialling; the
//! calls and their cost) and by the tunnel task (each program connection's
//! [`Activity`], a few times a second), and read by the control socket and
//! the web page ([`crate::web`]), which turn it into a [`Snapshot`] at the
//! moment they are asked. It also keeps a day of per-minute link bytes and
//! money ([`History`]) for the page's chart.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use straw_tunnel::StreamActivity;

use crate::tunnel::TunnelStats;

/// Finished transfers kept for the screen.
pub const RECENT_MAX: usize = 20;
/// Open connections listed in a snapshot (more are counted, not listed).
pub const STREAMS_MAX: usize = 100;
/// The tunnel task publishes activities at most this often (and when a
/// connection comes or goes).
pub const PUBLISH_EVERY: Duration = Duration::from_millis(250);
/// The receive rate is measured over this much recent time (the session's
/// window grows at the start of a transfer: a long one lags behind it).
const RATE_WINDOW: Duration = Duration::from_secs(5);
/// Samples of the receive counter kept for it (one per publication).
const RATE_SAMPLES: usize = 64;

/// How the estimate of the cost without straw is made, in the snapshot.
pub const WITHOUT_STRAW_HOW: &str = "the raw bytes (up + down, as the programs sent and received them) sent one after the other at the measured link rate, rounded up to started minutes; the round trips the programs would have waited for are left out";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    Up,
    Down,
    Dialling,
}

/// All `straw status` shows, as the control socket answers it (`--json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The layout of this answer; bumped when a field changes meaning.
    pub version: u32,
    pub taken_unix_ms: u64,
    pub server: String,
    pub link: LinkView,
    pub money: MoneyView,
    /// Open program connections, oldest first.
    pub streams: Vec<StreamView>,
    /// Connections open but past [`STREAMS_MAX`], not listed.
    pub streams_not_listed: usize,
    /// The last finished transfers, newest first.
    pub recent: Vec<Finished>,
    /// POP3 messages held ashore or released, not fetched yet, newest
    /// first (`[pop3] hold_over_bytes`; empty when off).
    #[serde(default)]
    pub held: Vec<crate::holds::HeldEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkView {
    pub state: LinkState,
    pub since_unix_ms: u64,
    pub for_secs: f64,
    /// Why it is down, when it is.
    pub note: Option<String>,
    /// The link rate the estimates use (wire bytes/s): the best of the
    /// session's delivery-rate estimate and the receive rate measured so
    /// far, and until one is measured the configured `initial_rate_bps`.
    pub rate_bytes_per_sec: u64,
    /// The session's delivery-rate estimate: what we send gets through at
    /// (low while we send little: it is measured on our own data).
    pub send_bytes_per_sec: u64,
    /// Wire bytes/s received over the last 10 s while something arrived.
    pub down_bytes_per_sec: Option<u64>,
    pub rtt_ms: Option<u64>,
    /// Bytes this call (since the link last came up): on the wire (what is
    /// billed) and raw (what the programs sent and received).
    pub call: Bytes,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bytes {
    pub wire_up: u64,
    pub wire_down: u64,
    pub raw_up: u64,
    pub raw_down: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoneyView {
    pub cost_per_minute: f64,
    /// This call (0 when down).
    pub call_secs: f64,
    pub call_minutes: u64,
    pub call_cost: f64,
    /// Since the client started, this call included.
    pub since_unix_ms: u64,
    pub calls: u64,
    pub total_secs: f64,
    pub total_minutes: u64,
    pub total_cost: f64,
    /// What the same raw bytes would have cost without straw
    /// ([`WITHOUT_STRAW_HOW`]); None until a rate is measured.
    pub without_straw_call: Option<f64>,
    pub without_straw_total: Option<f64>,
    pub without_straw_how: String,
    /// `[link] budget_per_call`, if set.
    #[serde(default)]
    pub budget_per_call: Option<f64>,
    /// Seconds of this call left before new bulk transfers wait (see
    /// [`Board::bulk_hold`]); None without a budget or a call.
    #[serde(default)]
    pub budget_left_secs: Option<f64>,
    /// The budget is reached: new bulk transfers wait for the next call.
    #[serde(default)]
    pub budget_reached: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamView {
    pub stream: u64,
    pub service: String,
    /// What the program is doing, in the protocol's words (empty: idle).
    pub what: String,
    pub done: u64,
    pub total: Option<u64>,
    pub upload: bool,
    pub percent: Option<f64>,
    /// Wire bytes per raw byte in the transfer's direction so far (the
    /// tunnel's; streams share the compressor).
    pub ratio: Option<f64>,
    /// Seconds left: the bytes left × `ratio` ÷ the rate of the direction.
    pub eta_secs: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finished {
    pub ended_unix_ms: u64,
    pub service: String,
    pub what: String,
    /// Raw bytes it moved (its size if it completed on a connection that
    /// lives on, else the last count seen).
    pub bytes: u64,
    pub total: Option<u64>,
    /// Its share of the airtime: its wire bytes (raw × ratio) at the
    /// measured rate, priced per second at `cost_per_minute`.
    pub cost: Option<f64>,
}

/// Minutes of link history kept (one sample per minute: a day).
pub const HISTORY_MINUTES: u64 = 24 * 60;

/// One minute of the link: wire bytes each way and the airtime billed in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Minute {
    /// Unix time of the minute's start, in minutes.
    pub unix_min: u64,
    pub wire_up: u64,
    pub wire_down: u64,
    pub cost: f64,
}

/// A bounded ring of [`Minute`]s for the web page's chart. Time is passed
/// in (unix seconds); minutes when nothing moved are not stored.
#[derive(Debug, Clone, Default)]
pub struct History {
    minutes: VecDeque<Minute>,
    /// The totals at the last record (the client starts at zero).
    last: (u64, u64, f64),
}

impl History {
    /// Counts what the running totals (wire bytes up and down, money spent)
    /// grew by since the last call into the minute of `unix_secs`. A clock
    /// that steps back counts into the newest minute.
    pub fn record(&mut self, unix_secs: u64, wire_up: u64, wire_down: u64, cost: f64) {
        let cost = if cost.is_finite() { cost } else { self.last.2 };
        let up = wire_up.saturating_sub(self.last.0);
        let down = wire_down.saturating_sub(self.last.1);
        let spent = (cost - self.last.2).max(0.0);
        self.last = (wire_up, wire_down, cost.max(self.last.2));
        if up == 0 && down == 0 && spent == 0.0 {
            return;
        }
        let m = unix_secs / 60;
        match self.minutes.back_mut() {
            Some(b) if b.unix_min >= m => {
                b.wire_up = b.wire_up.saturating_add(up);
                b.wire_down = b.wire_down.saturating_add(down);
                b.cost += spent;
            }
            _ => self.minutes.push_back(Minute {
                unix_min: m,
                wire_up: up,
                wire_down: down,
                cost: spent,
            }),
        }
        let newest = self.minutes.back().map_or(m, |b| b.unix_min);
        while self
            .minutes
            .front()
            .is_some_and(|f| f.unix_min + HISTORY_MINUTES <= newest)
            || self.minutes.len() > HISTORY_MINUTES as usize
        {
            self.minutes.pop_front();
        }
    }

    /// Minutes stored.
    pub fn len(&self) -> usize {
        self.minutes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.minutes.is_empty()
    }

    /// The last `count` buckets of `bucket_mins` minutes each up to the one
    /// holding `unix_secs`, oldest first, every bucket present (zero when
    /// nothing moved); `unix_min` is each bucket's first minute.
    pub fn buckets(&self, unix_secs: u64, bucket_mins: u64, count: usize) -> Vec<Minute> {
        let bucket_mins = bucket_mins.max(1);
        let count = count.min(HISTORY_MINUTES as usize);
        let last = unix_secs / 60 / bucket_mins * bucket_mins;
        let first = last.saturating_sub((count as u64).saturating_sub(1) * bucket_mins);
        let mut out: Vec<Minute> = (0..count as u64)
            .map(|k| Minute {
                unix_min: first + k * bucket_mins,
                ..Minute::default()
            })
            .filter(|b| b.unix_min <= last)
            .collect();
        for m in &self.minutes {
            if m.unix_min < first || m.unix_min >= last + bucket_mins {
                continue;
            }
            let b = &mut out[((m.unix_min - first) / bucket_mins) as usize];
            b.wire_up = b.wire_up.saturating_add(m.wire_up);
            b.wire_down = b.wire_down.saturating_add(m.wire_down);
            b.cost += m.cost;
        }
        out
    }
}

/// Minutes billed for a call of `secs` and what they cost: every started
/// minute, and at least one for any call (as satellite airtime is billed).
pub fn billed(secs: f64, cost_per_minute: f64) -> (u64, f64) {
    let minutes = if secs.is_finite() && secs > 0.0 {
        (secs / 60.0).ceil().min(u64::MAX as f64) as u64
    } else {
        0
    }
    .max(1);
    (minutes, minutes as f64 * cost_per_minute)
}

/// What carrying `raw` bytes at `rate` (bytes/s) would cost: nothing if
/// there was nothing to carry, else [`billed`]. None without a rate.
pub fn airtime_cost(raw: u64, rate: f64, cost_per_minute: f64) -> Option<f64> {
    if raw == 0 {
        return Some(0.0);
    }
    (rate >= 1.0).then(|| billed(raw as f64 / rate, cost_per_minute).1)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(u64::MAX as u128) as u64)
}

/// The counters at the start of a call.
#[derive(Debug, Clone, Copy)]
struct CallMark {
    start: Instant,
    at: Bytes,
}

fn counters(stats: &TunnelStats) -> Bytes {
    Bytes {
        wire_up: stats.wire_bytes_sent.load(Ordering::Relaxed),
        wire_down: stats.wire_bytes_received.load(Ordering::Relaxed),
        raw_up: stats.raw_bytes_sent.load(Ordering::Relaxed),
        raw_down: stats.raw_bytes_received.load(Ordering::Relaxed),
    }
}

impl Bytes {
    fn since(self, then: Bytes) -> Bytes {
        Bytes {
            wire_up: self.wire_up.saturating_sub(then.wire_up),
            wire_down: self.wire_down.saturating_sub(then.wire_down),
            raw_up: self.raw_up.saturating_sub(then.raw_up),
            raw_down: self.raw_down.saturating_sub(then.raw_down),
        }
    }

    fn raw(self) -> u64 {
        self.raw_up.saturating_add(self.raw_down)
    }
}

#[derive(Debug)]
struct Inner {
    state: LinkState,
    since: Instant,
    since_unix_ms: u64,
    note: Option<String>,
    call: Option<CallMark>,
    /// Ended calls: count, connected seconds, billed minutes and cost, and
    /// the cost without straw of their raw bytes (None: a call had no rate).
    calls: u64,
    past_secs: f64,
    past_minutes: u64,
    past_cost: f64,
    past_without: Option<f64>,
    streams: Vec<StreamActivity>,
    /// Per connection: its current activity and (time, bytes done) samples
    /// over the last [`PROGRESS_WINDOW`] (its own progress rate, for the ETA).
    progress: std::collections::HashMap<u64, (String, VecDeque<(Instant, u64)>)>,
    /// (time, wire bytes received): the receive rate.
    received: VecDeque<(Instant, u64)>,
    /// The best rate measured either way (bytes/s).
    best_rate: f64,
    recent: VecDeque<Finished>,
    /// This call's "budget reached" was logged.
    budget_told: bool,
    /// Link bytes and money per minute (the web page's chart).
    history: History,
}

/// The client's live state for the status screen; shared between the
/// redialler, the tunnel task and the control socket.
#[derive(Debug)]
pub struct Board {
    server: String,
    cost_per_minute: f64,
    /// The configured link rate, bytes/s: the estimates' rate until a
    /// better one is measured.
    nominal_rate: f64,
    started_unix_ms: u64,
    stats: Arc<TunnelStats>,
    /// `[link] budget_per_call` (0: none).
    budget: f64,
    inner: Mutex<Inner>,
    /// The POP3 hold record, if holding is on.
    holds: std::sync::OnceLock<Arc<crate::holds::HoldFile>>,
}

impl Board {
    /// `nominal_rate`: the configured link rate in bytes/s.
    pub fn new(
        server: String,
        cost_per_minute: f64,
        nominal_rate: f64,
        stats: Arc<TunnelStats>,
        now: Instant,
    ) -> Self {
        let t = unix_ms(SystemTime::now());
        Self {
            server,
            cost_per_minute: if cost_per_minute.is_finite() {
                cost_per_minute.max(0.0)
            } else {
                0.0
            },
            nominal_rate: if nominal_rate.is_finite() {
                nominal_rate.max(0.0)
            } else {
                0.0
            },
            started_unix_ms: t,
            stats,
            budget: 0.0,
            inner: Mutex::new(Inner {
                state: LinkState::Down,
                since: now,
                since_unix_ms: t,
                note: Some("not dialled yet".into()),
                call: None,
                calls: 0,
                past_secs: 0.0,
                past_minutes: 0,
                past_cost: 0.0,
                past_without: Some(0.0),
                streams: Vec::new(),
                received: VecDeque::new(),
                progress: std::collections::HashMap::new(),
                best_rate: 0.0,
                recent: VecDeque::new(),
                budget_told: false,
                history: History::default(),
            }),
            holds: std::sync::OnceLock::new(),
        }
    }

    /// Money one call may cost before new bulk transfers wait (0: none).
    pub fn with_budget(mut self, per_call: f64) -> Self {
        self.budget = if per_call.is_finite() {
            per_call.max(0.0)
        } else {
            0.0
        };
        self
    }

    /// Connected seconds a call may use before its budget is reached: the
    /// whole minutes the budget pays for (billing is per started minute,
    /// so those minutes are used to their end). None: no budget.
    fn budget_secs(&self) -> Option<f64> {
        (self.budget > 0.0 && self.cost_per_minute > 0.0)
            .then(|| (self.budget / self.cost_per_minute + 1e-9).floor() * 60.0)
    }

    /// `Some(words)` while this call has used what its budget pays for:
    /// new bulk transfers wait for the next call (the words go into the
    /// programs' temporary errors). Logged once per call.
    pub fn bulk_hold(&self, now: Instant) -> Option<String> {
        let allowed = self.budget_secs()?;
        let mut i = self.lock();
        let call = i.call?;
        let secs = now.saturating_duration_since(call.start).as_secs_f64();
        if secs < allowed {
            return None;
        }
        let (_, cost) = billed(secs, self.cost_per_minute);
        if !std::mem::replace(&mut i.budget_told, true) {
            tracing::warn!(
                "call budget {} reached after {} (billed {}): new bulk transfers (POP3 RETR, IMAP body FETCH, SMTP MAIL) wait for the next call",
                money(self.budget),
                duration(secs),
                money(cost)
            );
        }
        Some(format!(
            "this call's budget of {} is spent; new transfers wait for the next call",
            money(self.budget)
        ))
    }

    /// Shows (and lets the control socket change) the POP3 hold record.
    pub fn set_holds(&self, holds: Arc<crate::holds::HoldFile>) {
        let _ = self.holds.set(holds);
    }

    pub fn holds(&self) -> Option<&Arc<crate::holds::HoldFile>> {
        self.holds.get()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding it leaves plain numbers: go on.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_state(inner: &mut Inner, state: LinkState, note: Option<String>, now: Instant) {
        if inner.state != state {
            inner.since = now;
            inner.since_unix_ms = unix_ms(SystemTime::now());
        }
        inner.state = state;
        inner.note = note;
    }

    pub fn dialling(&self, now: Instant) {
        Self::set_state(&mut self.lock(), LinkState::Dialling, None, now);
    }

    /// The link is down and straw waits (`why`: for what, or what happened).
    pub fn waiting(&self, why: &str, now: Instant) {
        let mut i = self.lock();
        if i.call.is_none() {
            Self::set_state(&mut i, LinkState::Down, Some(why.to_owned()), now);
        }
    }

    /// A call starts: the link is up.
    pub fn call_started(&self, now: Instant) {
        let mut i = self.lock();
        i.call = Some(CallMark {
            start: now,
            at: counters(&self.stats),
        });
        i.budget_told = false;
        Self::set_state(&mut i, LinkState::Up, None, now);
        self.sample_history(&mut i, now);
    }

    /// Adds what crossed and what was billed since the last sample to the
    /// history (wall-clock minutes).
    fn sample_history(&self, i: &mut Inner, now: Instant) {
        let call_cost = i.call.map_or(0.0, |c| {
            billed(
                now.saturating_duration_since(c.start).as_secs_f64(),
                self.cost_per_minute,
            )
            .1
        });
        let c = counters(&self.stats);
        let secs = unix_ms(SystemTime::now()) / 1000;
        i.history
            .record(secs, c.wire_up, c.wire_down, i.past_cost + call_cost);
    }

    /// The link's history up to now: `count` buckets of `bucket_mins`
    /// minutes, oldest first.
    pub fn history(&self, now: Instant, bucket_mins: u64, count: usize) -> Vec<Minute> {
        let mut i = self.lock();
        self.sample_history(&mut i, now);
        i.history
            .buckets(unix_ms(SystemTime::now()) / 1000, bucket_mins, count)
    }

    /// The call ended (`why`): its billed minutes go to the totals.
    pub fn call_ended(&self, why: &str, now: Instant) {
        let mut i = self.lock();
        let rate = self.link_rate(&i);
        if let Some(c) = i.call.take() {
            let secs = now.saturating_duration_since(c.start).as_secs_f64();
            let (minutes, cost) = billed(secs, self.cost_per_minute);
            let raw = counters(&self.stats).since(c.at).raw();
            let without = airtime_cost(raw, rate, self.cost_per_minute);
            i.calls += 1;
            i.past_secs += secs;
            i.past_minutes = i.past_minutes.saturating_add(minutes);
            i.past_cost += cost;
            i.past_without = i.past_without.zip(without).map(|(a, b)| a + b);
        }
        self.sample_history(&mut i, now);
        Self::set_state(&mut i, LinkState::Down, Some(why.to_owned()), now);
    }

    /// The session's delivery-rate estimate, bytes/s.
    fn rate(&self) -> f64 {
        self.stats.rate_estimate.load(Ordering::Relaxed) as f64
    }

    /// The rate the estimates use: the best measured, else the configured.
    fn link_rate(&self, i: &Inner) -> f64 {
        let best = i.best_rate.max(self.rate());
        if i.best_rate > 0.0 {
            best
        } else {
            best.max(self.nominal_rate)
        }
    }

    /// The tunnel task's news: what each program connection is doing.
    /// Transfers that ended since the last call go to the recent list.
    pub fn publish(&self, now: Instant, streams: Vec<StreamActivity>) {
        let ratio_down = ratio(&self.stats, false);
        let ratio_up = ratio(&self.stats, true);
        let rate = self.rate();
        let down = self.down_rate_now(now);
        let received = self.stats.wire_bytes_received.load(Ordering::Relaxed);
        let mut i = self.lock();
        i.best_rate = i.best_rate.max(down.unwrap_or(0.0));
        let link_rate = self.link_rate(&i);
        let ended_ms = unix_ms(SystemTime::now());
        let old = std::mem::take(&mut i.streams);
        for o in &old {
            let Some(a) = &o.activity else { continue };
            let now_doing = streams.iter().find(|s| s.stream == o.stream);
            if now_doing.is_some_and(|s| s.activity.as_ref().is_some_and(|b| b.what == a.what)) {
                continue;
            }
            if a.done == 0 {
                continue;
            }
            // Another activity on a connection that lives on: this one
            // completed (a cut ends the connection).
            let bytes = match (now_doing, a.total) {
                (Some(_), Some(t)) => t,
                _ => a.done,
            };
            let r = if a.upload { ratio_up } else { ratio_down };
            let dir_rate = if a.upload {
                rate
            } else {
                down.unwrap_or(link_rate)
            };
            let cost = r
                .filter(|_| dir_rate >= 1.0)
                .map(|r| bytes as f64 * r / dir_rate / 60.0 * self.cost_per_minute);
            i.recent.push_front(Finished {
                ended_unix_ms: ended_ms,
                service: o.service.clone(),
                what: a.what.clone(),
                bytes,
                total: a.total,
                cost,
            });
            i.recent.truncate(RECENT_MAX);
        }
        i.progress.retain(|id, (what, _)| {
            streams
                .iter()
                .any(|s| s.stream == *id && s.activity.as_ref().is_some_and(|a| a.what == *what))
        });
        for s in &streams {
            if let Some(a) = &s.activity {
                let (_, samples) = i
                    .progress
                    .entry(s.stream)
                    .or_insert_with(|| (a.what.clone(), VecDeque::new()));
                samples.push_back((now, a.done));
                while samples.len() > 2
                    && now.saturating_duration_since(samples[1].0) >= PROGRESS_WINDOW
                {
                    samples.pop_front();
                }
            }
        }
        i.streams = streams;
        self.sample_history(&mut i, now);
        i.received.push_back((now, received));
        while i.received.len() > RATE_SAMPLES
            || i.received
                .front()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) > RATE_WINDOW)
        {
            i.received.pop_front();
        }
    }

    /// Wire bytes/s received over the recent samples, if enough time and
    /// bytes went by to say.
    fn down_rate_now(&self, now: Instant) -> Option<f64> {
        let i = self.lock();
        let received = self.stats.wire_bytes_received.load(Ordering::Relaxed);
        down_rate(&i.received, now, received)
    }

    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let stats = &self.stats;
        let rate = self.rate();
        let srtt = stats.srtt_us.load(Ordering::Relaxed);
        let received = stats.wire_bytes_received.load(Ordering::Relaxed);
        let (r_down, r_up) = (ratio(stats, false), ratio(stats, true));
        let cpm = self.cost_per_minute;
        let i = self.lock();
        let down = down_rate(&i.received, now, received);
        let link_rate = self.link_rate(&i);
        let call = i.call.map(|c| (c, counters(stats).since(c.at)));
        let call_secs = call.map_or(0.0, |(c, _)| {
            now.saturating_duration_since(c.start).as_secs_f64()
        });
        let (call_minutes, call_cost) = match call {
            Some(_) => billed(call_secs, cpm),
            None => (0, 0.0),
        };
        let without_call = match call {
            Some((_, b)) => airtime_cost(b.raw(), link_rate, cpm),
            None => Some(0.0),
        };
        // Transfers under way (not finished, total known): one alone on the
        // link gets all of it.
        let moving = i
            .streams
            .iter()
            .filter(|s| {
                s.activity
                    .as_ref()
                    .is_some_and(|a| a.total.is_some_and(|t| a.done < t))
            })
            .count();
        let mut streams: Vec<StreamView> = i
            .streams
            .iter()
            .map(|s| {
                let a = s.activity.as_ref();
                let upload = a.is_some_and(|a| a.upload);
                let r = if upload { r_up } else { r_down };
                let dir_rate = if upload {
                    rate
                } else {
                    down.unwrap_or(link_rate)
                };
                let own = i.progress.get(&s.stream).and_then(|(_, p)| own_rate(p));
                let pace = if moving == 1 {
                    Pace::Alone(link_rate)
                } else {
                    Pace::Shared {
                        rate: dir_rate,
                        own,
                    }
                };
                stream_view(s, r, pace)
            })
            .collect();
        let not_listed = streams.len().saturating_sub(STREAMS_MAX);
        streams.truncate(STREAMS_MAX);
        Snapshot {
            version: 1,
            taken_unix_ms: unix_ms(SystemTime::now()),
            server: self.server.clone(),
            link: LinkView {
                state: i.state,
                since_unix_ms: i.since_unix_ms,
                for_secs: now.saturating_duration_since(i.since).as_secs_f64(),
                note: i.note.clone(),
                rate_bytes_per_sec: link_rate as u64,
                send_bytes_per_sec: rate as u64,
                down_bytes_per_sec: down.map(|d| d as u64),
                rtt_ms: (srtt > 0).then_some(srtt / 1000),
                call: call.map(|(_, b)| b).unwrap_or_default(),
            },
            money: MoneyView {
                cost_per_minute: cpm,
                call_secs,
                call_minutes,
                call_cost,
                since_unix_ms: self.started_unix_ms,
                calls: i.calls + u64::from(call.is_some()),
                total_secs: i.past_secs + call_secs,
                total_minutes: i.past_minutes.saturating_add(call_minutes),
                total_cost: i.past_cost + call_cost,
                without_straw_call: without_call,
                without_straw_total: i.past_without.zip(without_call).map(|(a, b)| a + b),
                without_straw_how: WITHOUT_STRAW_HOW.into(),
                budget_per_call: (self.budget > 0.0).then_some(self.budget),
                budget_left_secs: self
                    .budget_secs()
                    .filter(|_| call.is_some())
                    .map(|a| (a - call_secs).max(0.0)),
                budget_reached: call.is_some()
                    && self.budget_secs().is_some_and(|a| call_secs >= a),
            },
            streams,
            streams_not_listed: not_listed,
            recent: i.recent.iter().cloned().collect(),
            held: self.holds.get().map(|h| h.pending()).unwrap_or_default(),
        }
    }
}

/// Wire bytes per raw byte so far in one direction, over the client's life.
fn ratio(stats: &TunnelStats, up: bool) -> Option<f64> {
    let (wire, raw) = if up {
        (&stats.wire_bytes_sent, &stats.raw_bytes_sent)
    } else {
        (&stats.wire_bytes_received, &stats.raw_bytes_received)
    };
    let (wire, raw) = (wire.load(Ordering::Relaxed), raw.load(Ordering::Relaxed));
    // Too few bytes say more about headers and pings than compression.
    (raw >= 1024).then(|| wire as f64 / raw as f64)
}

/// The receive rate from `samples` to `received` now, from the last sample
/// before bytes started to arrive (an idle time before a transfer is not
/// the link's speed): at least 2 s and 1 KB, so that a burst alone doesn't
/// make it.
fn down_rate(samples: &VecDeque<(Instant, u64)>, now: Instant, received: u64) -> Option<f64> {
    let idle = samples
        .iter()
        .zip(samples.iter().skip(1))
        .take_while(|(a, b)| a.1 == b.1)
        .count();
    let (t0, r0) = samples.get(idle)?;
    let secs = now.saturating_duration_since(*t0).as_secs_f64();
    let bytes = received.saturating_sub(*r0);
    (secs >= 2.0 && bytes >= 1024).then(|| bytes as f64 / secs)
}

/// How far back a transfer's own progress rate looks: long enough to span
/// a few bulk units (progress comes in steps of ~2 s of link time), short
/// enough to forget the session's first seconds of learning the link.
const PROGRESS_WINDOW: Duration = Duration::from_secs(6);

/// How fast a transfer itself has moved lately (raw bytes/s), once its
/// samples span 3 s and 2 KB. It knows what the link-wide figures can't:
/// how well this message compresses and what share of the link it gets.
fn own_rate(samples: &VecDeque<(Instant, u64)>) -> Option<f64> {
    let (&(t0, d0), &(t1, d1)) = (samples.front()?, samples.back()?);
    let secs = t1.saturating_duration_since(t0).as_secs_f64();
    let bytes = d1.saturating_sub(d0);
    (secs >= 3.0 && bytes >= 2048).then(|| bytes as f64 / secs)
}

/// What a transfer's ETA goes by.
#[derive(Clone, Copy, Debug)]
enum Pace {
    /// The only transfer moving: the link's rate (wire bytes/s) is all its
    /// own. Its own progress rate would lag: it comes in steps of a bulk
    /// unit, and it climbs while the compressor learns the message (ratio
    /// 0.24 -> 0.13 on a 67 KB mail), so from the past it foresaw up to 40%
    /// too long; its wire bytes left (at the ratio so far) over the rate
    /// were within 21% from a quarter on.
    Alone(f64),
    /// Others share the link: `own` is the transfer's own progress rate,
    /// raw bytes/s, if known (what share it gets only it can tell);
    /// `rate` is the direction's, for a transfer not started yet.
    Shared { rate: f64, own: Option<f64> },
}

/// A transfer that has not started yet, or one alone on the link, gets its
/// bytes on the wire (at the direction's ratio so far) over the link's rate;
/// one sharing the link goes by its own progress rate, and while too new
/// for that gets no ETA (the link-wide guess was off by up to 7x while the
/// session was still learning the link).
fn stream_view(s: &StreamActivity, ratio: Option<f64>, pace: Pace) -> StreamView {
    let Some(a) = &s.activity else {
        return StreamView {
            stream: s.stream,
            service: s.service.clone(),
            what: String::new(),
            done: 0,
            total: None,
            upload: false,
            percent: None,
            ratio: None,
            eta_secs: None,
        };
    };
    let percent = a
        .total
        .filter(|&t| t > 0)
        .map(|t| a.done.min(t) as f64 * 100.0 / t as f64);
    let left = a.total.map(|t| t.saturating_sub(a.done) as f64);
    let eta_secs = match (left, ratio, pace) {
        (Some(left), Some(r), Pace::Alone(rate)) if rate >= 1.0 => Some(left * r / rate),
        (Some(left), _, Pace::Shared { own: Some(own), .. }) => Some(left / own),
        (Some(left), Some(r), Pace::Shared { rate, own: None }) if rate >= 1.0 && a.done == 0 => {
            Some(left * r / rate)
        }
        _ => None,
    };
    StreamView {
        stream: s.stream,
        service: s.service.clone(),
        what: a.what.clone(),
        done: a.done,
        total: a.total,
        upload: a.upload,
        percent,
        ratio,
        eta_secs,
    }
}

// ---- the text screen ----

/// `12.3 KB`, `1.2 MB`, `512 B` (decimal units, as link rates are quoted).
pub fn size(n: u64) -> String {
    match n {
        0..1_000 => format!("{n} B"),
        1_000..1_000_000 => format!("{:.1} KB", n as f64 / 1e3),
        _ => format!("{:.1} MB", n as f64 / 1e6),
    }
}

/// `45 s`, `3 min 12 s`, `2 h 05 min`.
pub fn duration(secs: f64) -> String {
    let s = if secs.is_finite() { secs.max(0.0) } else { 0.0 } as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    }
}

/// `[#####.....]`, `width` cells.
pub fn bar(percent: Option<f64>, width: usize) -> String {
    let Some(p) = percent.filter(|p| p.is_finite()) else {
        return format!("[{}]", "?".repeat(width));
    };
    let full = ((p.clamp(0.0, 100.0) / 100.0) * width as f64).round() as usize;
    format!("[{}{}]", "#".repeat(full), ".".repeat(width - full))
}

/// `HH:MM:SS` UTC of a unix time in ms.
pub fn clock(unix_ms: u64) -> String {
    let s = unix_ms / 1000;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

fn money(x: f64) -> String {
    format!("${x:.2}")
}

/// Cuts `s` to `n` characters for a table column.
fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_owned();
    }
    let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
    t.push('~');
    t
}

/// One screen of plain text.
pub fn render(s: &Snapshot) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let l = &s.link;
    let m = &s.money;
    let _ = writeln!(
        o,
        "straw client -> {}    {} UTC",
        s.server,
        clock(s.taken_unix_ms)
    );
    let state = match l.state {
        LinkState::Up => "up",
        LinkState::Down => "DOWN",
        LinkState::Dialling => "dialling",
    };
    let mut line = format!(
        "link   {state} for {} (since {} UTC)",
        duration(l.for_secs),
        clock(l.since_unix_ms)
    );
    if let Some(n) = &l.note {
        let _ = write!(line, ": {n}");
    }
    let _ = writeln!(o, "{line}");
    let down = l
        .down_bytes_per_sec
        .map_or(String::new(), |d| format!(", receiving {} B/s", d));
    let rtt = l.rtt_ms.map_or("RTT ?".to_owned(), |r| {
        format!("RTT {:.1} s", r as f64 / 1e3)
    });
    let _ = writeln!(
        o,
        "       rate {} B/s ({} bit/s){down}, sending {} B/s, {rtt}",
        l.rate_bytes_per_sec,
        l.rate_bytes_per_sec.saturating_mul(8),
        l.send_bytes_per_sec
    );
    let c = &l.call;
    let _ = writeln!(
        o,
        "       this call: {} up, {} down on the wire ({} up, {} down raw)",
        size(c.wire_up),
        size(c.wire_down),
        size(c.raw_up),
        size(c.raw_down)
    );
    let call = if m.call_minutes > 0 {
        format!(
            "this call {} -> {} min billed = {}",
            duration(m.call_secs),
            m.call_minutes,
            money(m.call_cost)
        )
    } else {
        "no call now".to_owned()
    };
    let _ = writeln!(
        o,
        "money  {call}; since {} UTC: {} call(s), {} min = {}  (at {}/min)",
        clock(m.since_unix_ms),
        m.calls,
        m.total_minutes,
        money(m.total_cost),
        money(m.cost_per_minute)
    );
    let opt = |x: Option<f64>| x.map_or("?".to_owned(), money);
    let _ = writeln!(
        o,
        "       without straw ~ {} this call, {} since start (raw bytes at the measured rate, per started minute)",
        opt(m.without_straw_call),
        opt(m.without_straw_total)
    );
    if let Some(b) = m.budget_per_call {
        let state = match m.budget_left_secs {
            _ if m.budget_reached => {
                "REACHED: new transfers (RETR, body FETCH, MAIL) wait for the next call".to_owned()
            }
            Some(left) => format!("{} of transfers left this call", duration(left)),
            None => "no call now".to_owned(),
        };
        let _ = writeln!(o, "budget {} per call: {state}", money(b));
    }
    let _ = writeln!(o);
    if s.streams.is_empty() {
        let _ = writeln!(o, "no connections open");
    } else {
        let _ = writeln!(
            o,
            "{:<8} {:<34} {:<18} {:>21} {:>9} {:>5}",
            "service", "doing", "progress", "done / total", "ETA", "ratio"
        );
        for st in &s.streams {
            let what = if st.what.is_empty() {
                "(idle)"
            } else {
                &st.what
            };
            let arrow = match (st.what.is_empty(), st.upload) {
                (true, _) => " ",
                (false, true) => "^",
                (false, false) => "v",
            };
            let progress = match st.percent {
                Some(p) => format!("{} {:>3.0}%", bar(Some(p), 10), p),
                None if st.what.is_empty() => String::new(),
                None => format!("{}   ?", bar(None, 10)),
            };
            let amount = match (st.what.is_empty(), st.total) {
                (true, _) => String::new(),
                (false, Some(t)) => format!("{} / {}", size(st.done), size(t)),
                (false, None) => format!("{} / ?", size(st.done)),
            };
            let eta = st.eta_secs.map_or(String::new(), duration);
            let ratio = st.ratio.map_or(String::new(), |r| format!("{r:.2}"));
            let _ = writeln!(
                o,
                "{:<8} {arrow} {:<32} {:<18} {:>21} {:>9} {:>5}",
                cut(&st.service, 8),
                cut(what, 32),
                progress,
                amount,
                eta,
                ratio
            );
        }
        if s.streams_not_listed > 0 {
            let _ = writeln!(o, "... and {} more", s.streams_not_listed);
        }
    }
    if !s.recent.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(o, "recent transfers (cost: their airtime share)");
        for f in &s.recent {
            let _ = writeln!(
                o,
                "  {}  {:<8} {:<40} {:>10} {:>7}",
                clock(f.ended_unix_ms),
                cut(&f.service, 8),
                cut(&f.what, 40),
                size(f.bytes),
                f.cost.map_or("?".to_owned(), money)
            );
        }
    }
    if !s.held.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(o, "held ashore (straw hold release ID)");
        for h in &s.held {
            let state = match h.state {
                crate::holds::HoldState::Held => "held",
                _ => "released",
            };
            let _ = writeln!(
                o,
                "  {}  {:<8} {:>10}  {:<30} {}",
                h.id,
                state,
                size(h.size),
                cut(&h.from, 30),
                cut(&h.subject, 40)
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use straw_proto::Activity;

    #[test]
    fn calls_are_billed_per_started_minute() {
        assert_eq!(billed(0.0, 1.5), (1, 1.5), "any call costs a minute");
        assert_eq!(billed(0.4, 1.5), (1, 1.5));
        assert_eq!(billed(60.0, 1.5), (1, 1.5));
        assert_eq!(billed(60.1, 1.5), (2, 3.0));
        assert_eq!(billed(179.9, 2.0), (3, 6.0));
        assert_eq!(billed(f64::NAN, 1.0), (1, 1.0), "bad input costs no panic");
    }

    #[test]
    fn airtime_without_straw_is_raw_bytes_at_the_rate_per_started_minute() {
        // 300 B/s: 18,000 B is one minute, one more byte starts the second.
        assert_eq!(airtime_cost(18_000, 300.0, 1.5), Some(1.5));
        assert_eq!(airtime_cost(18_001, 300.0, 1.5), Some(3.0));
        assert_eq!(airtime_cost(0, 300.0, 1.5), Some(0.0), "nothing to carry");
        assert_eq!(airtime_cost(10, 0.0, 1.5), None, "no rate yet");
    }

    fn board() -> (Board, Arc<TunnelStats>, Instant) {
        let stats = Arc::new(TunnelStats::default());
        let t0 = Instant::now();
        (
            Board::new("sat:7000".into(), 1.5, 300.0, stats.clone(), t0),
            stats,
            t0,
        )
    }

    fn pop(stream: u64, what: &str, done: u64, total: Option<u64>) -> StreamActivity {
        StreamActivity {
            stream,
            service: "pop3".into(),
            activity: Some(Activity::new(what, done, total)),
        }
    }

    #[test]
    fn a_call_is_billed_live_and_summed_when_it_ends() {
        let (b, stats, t0) = board();
        stats.rate_estimate.store(300, Ordering::Relaxed);
        b.call_started(t0);
        stats.raw_bytes_received.store(36_000, Ordering::Relaxed);
        let s = b.snapshot(t0 + Duration::from_secs(61));
        assert_eq!(s.link.state, LinkState::Up);
        assert_eq!((s.money.call_minutes, s.money.call_cost), (2, 3.0));
        assert_eq!(s.money.without_straw_call, Some(3.0));
        b.call_ended("idle", t0 + Duration::from_secs(70));
        b.call_started(t0 + Duration::from_secs(100));
        let s = b.snapshot(t0 + Duration::from_secs(110));
        assert_eq!(s.money.calls, 2);
        assert_eq!((s.money.total_minutes, s.money.total_cost), (3, 4.5));
        assert_eq!(s.link.call.raw_down, 0, "counted from this call's start");
    }

    #[test]
    fn eta_before_a_transfer_moves_is_its_wire_bytes_over_the_rate() {
        let (b, stats, t0) = board();
        stats.rate_estimate.store(300, Ordering::Relaxed);
        stats.raw_bytes_received.store(10_000, Ordering::Relaxed);
        stats.wire_bytes_received.store(5_000, Ordering::Relaxed);
        b.publish(t0, vec![pop(1, "POP3 RETR 1 of 2", 0, Some(6_000))]);
        let s = b.snapshot(t0);
        let st = &s.streams[0];
        assert_eq!(st.ratio, Some(0.5));
        // Not started: 6,000 raw bytes, half that on the wire, at 300 B/s.
        assert_eq!(st.eta_secs, Some(10.0));
        b.publish(t0, vec![pop(1, "POP3 RETR 1 of 2", 2_400, Some(6_000))]);
        let s = b.snapshot(t0);
        assert_eq!(s.streams[0].percent, Some(40.0));
        assert!(render(&s).contains("[####......]  40%"), "{}", render(&s));
    }

    #[test]
    fn eta_of_a_transfer_sharing_the_link_follows_its_own_progress() {
        let (b, stats, t0) = board();
        stats.rate_estimate.store(300, Ordering::Relaxed);
        stats.raw_bytes_received.store(10_000, Ordering::Relaxed);
        stats.wire_bytes_received.store(5_000, Ordering::Relaxed);
        // Another transfer moves on the link too.
        let other = || pop(2, "POP3 RETR 1 of 1", 100, Some(1_000_000));
        let publish = |t, what, done, total| b.publish(t, vec![pop(1, what, done, total), other()]);
        publish(t0, "POP3 RETR 1 of 2", 1_000, Some(41_000));
        // 10 s later 20,000 more bytes: 2,000 B/s of its own, 20,000 left.
        let t1 = t0 + Duration::from_secs(10);
        publish(t1, "POP3 RETR 1 of 2", 21_000, Some(41_000));
        assert_eq!(b.snapshot(t1).streams[0].eta_secs, Some(10.0));
        // Only the last 6 s count: it slowed to 500 B/s.
        let t2 = t1 + Duration::from_secs(6);
        publish(t2, "POP3 RETR 1 of 2", 24_000, Some(41_000));
        assert_eq!(b.snapshot(t2).streams[0].eta_secs, Some(17_000.0 / 500.0));
        // The next message starts its own clock: link figures until it
        // moves, then none until it has moved for 3 s.
        publish(t2, "POP3 RETR 2 of 2", 0, Some(6_000));
        let eta = b.snapshot(t2).streams[0].eta_secs.unwrap();
        assert_eq!(eta, 6_000.0 * 0.5 / 300.0);
        let t3 = t2 + Duration::from_secs(1);
        publish(t3, "POP3 RETR 2 of 2", 3_000, Some(6_000));
        assert_eq!(b.snapshot(t3).streams[0].eta_secs, None);
    }

    #[test]
    fn eta_of_a_transfer_alone_on_the_link_is_its_wire_bytes_left_over_the_rate() {
        let (b, stats, t0) = board();
        stats.rate_estimate.store(300, Ordering::Relaxed);
        stats.raw_bytes_received.store(10_000, Ordering::Relaxed);
        stats.wire_bytes_received.store(2_000, Ordering::Relaxed);
        b.publish(t0, vec![pop(1, "POP3 RETR 1 of 2", 1_000, Some(41_000))]);
        // Its own progress (1,000 B/s) says 20 s; the link's whole rate at
        // the ratio so far says 20,000 * 0.2 / 300 = 13.3 s.
        let t1 = t0 + Duration::from_secs(20);
        b.publish(t1, vec![pop(1, "POP3 RETR 1 of 2", 21_000, Some(41_000))]);
        let eta = b.snapshot(t1).streams[0].eta_secs.unwrap();
        assert!((eta - 20_000.0 * 0.2 / 300.0).abs() < 1e-9, "{eta}");
        // A finished transfer or one of unknown size does not share it.
        b.publish(
            t1,
            vec![
                pop(1, "POP3 RETR 1 of 2", 21_000, Some(41_000)),
                pop(2, "POP3 RETR 1 of 1", 500, Some(500)),
                pop(3, "GET http://x/", 500, None),
            ],
        );
        let eta = b.snapshot(t1).streams[0].eta_secs.unwrap();
        assert!((eta - 20_000.0 * 0.2 / 300.0).abs() < 1e-9, "{eta}");
    }

    #[test]
    fn finished_transfers_are_kept_newest_first_and_bounded() {
        let (b, _stats, t0) = board();
        b.publish(t0, vec![pop(1, "POP3 RETR 1 of 30", 10, Some(500))]);
        // Next message on the same connection: the first one completed.
        b.publish(t0, vec![pop(1, "POP3 RETR 2 of 30", 0, Some(700))]);
        let s = b.snapshot(t0);
        assert_eq!(s.recent.len(), 1);
        assert_eq!(
            (s.recent[0].what.as_str(), s.recent[0].bytes),
            ("POP3 RETR 1 of 30", 500)
        );
        for n in 3..40 {
            b.publish(t0, vec![pop(1, &format!("POP3 RETR {n} of 40"), 1, None)]);
        }
        let s = b.snapshot(t0);
        assert_eq!(s.recent.len(), RECENT_MAX);
        assert_eq!(s.recent[0].what, "POP3 RETR 38 of 40");
        // The connection went: the last one counts what was seen.
        b.publish(t0, Vec::new());
        assert_eq!(b.snapshot(t0).recent[0].bytes, 1);
    }

    #[test]
    fn the_snapshot_reads_back_from_json() {
        let (b, _stats, t0) = board();
        b.publish(t0, vec![pop(1, "POP3 RETR 1 of 1", 1, Some(2))]);
        let s = b.snapshot(t0);
        let back: Snapshot = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}

#[cfg(test)]
mod rate_tests {
    use super::*;

    #[test]
    fn the_receive_rate_leaves_out_the_idle_time_before_a_transfer() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let samples: VecDeque<_> = [(at(0), 100), (at(1), 100), (at(2), 100), (at(3), 1_100)]
            .into_iter()
            .collect();
        // 3,000 bytes from t=2 to t=5: 1,000 B/s, not 600.
        assert_eq!(down_rate(&samples, at(5), 3_100), Some(1_000.0));
        // Too short or too little to say.
        assert_eq!(down_rate(&samples, at(3), 1_100), None);
        assert_eq!(down_rate(&samples, at(5), 600), None);
        assert_eq!(down_rate(&VecDeque::new(), at(5), 600), None);
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    fn board(budget: f64) -> (Board, Instant) {
        let t0 = Instant::now();
        let stats = Arc::new(TunnelStats::default());
        let b = Board::new("sat:7000".into(), 1.5, 300.0, stats, t0).with_budget(budget);
        (b, t0)
    }

    #[test]
    fn the_budget_is_reached_when_the_minutes_it_pays_for_are_used() {
        let (b, t0) = board(3.0); // two minutes at $1.50
        assert_eq!(b.bulk_hold(t0), None, "no call: nothing to hold");
        b.call_started(t0);
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(b.bulk_hold(at(119)), None, "the second paid minute runs");
        let m = b.snapshot(at(119)).money;
        assert_eq!(m.budget_per_call, Some(3.0));
        assert_eq!(m.budget_left_secs, Some(1.0));
        assert!(!m.budget_reached);

        let why = b.bulk_hold(at(120)).expect("reached at 120 s");
        assert!(why.contains("$3.00"), "{why}");
        let m = b.snapshot(at(150)).money;
        assert!(m.budget_reached);
        assert_eq!(m.budget_left_secs, Some(0.0));
        let text = render(&b.snapshot(at(150)));
        assert!(text.contains("budget $3.00 per call: REACHED"), "{text}");

        // The next call has its own budget.
        b.call_ended("hung up", at(200));
        assert_eq!(b.bulk_hold(at(200)), None);
        b.call_started(at(300));
        assert_eq!(b.bulk_hold(at(301)), None);
    }

    #[test]
    fn a_budget_below_one_minute_holds_from_the_start_and_none_never_holds() {
        let (b, t0) = board(1.0);
        b.call_started(t0);
        assert!(
            b.bulk_hold(t0).is_some(),
            "the first minute already costs $1.50"
        );
        let (b, t0) = board(0.0);
        b.call_started(t0);
        assert_eq!(b.bulk_hold(t0 + Duration::from_secs(86_400)), None);
        assert_eq!(b.snapshot(t0).money.budget_per_call, None);
    }
}

#[cfg(test)]
mod history_tests {
    use super::*;

    #[test]
    fn minutes_sum_the_growth_of_the_totals() {
        let mut h = History::default();
        let t = 1_000 * 60; // the start of a minute, unix seconds
        h.record(t, 100, 1_000, 1.5);
        h.record(t + 30, 150, 3_000, 1.5);
        h.record(t + 61, 160, 3_500, 3.0);
        // Nothing moved for a while: no minutes stored for it.
        h.record(t + 300, 160, 3_500, 3.0);
        assert_eq!(h.len(), 2);
        let b = h.buckets(t + 300, 1, 6);
        assert_eq!(b.len(), 6);
        assert_eq!(b[0].unix_min, 1_000);
        assert_eq!((b[0].wire_up, b[0].wire_down, b[0].cost), (150, 3_000, 1.5));
        assert_eq!((b[1].wire_up, b[1].wire_down, b[1].cost), (10, 500, 1.5));
        assert!(b[2..].iter().all(|m| m.wire_down == 0 && m.cost == 0.0));
        // Five-minute buckets, aligned on multiples of five: both minutes
        // in the first, the one now in the second.
        let b = h.buckets(t + 300, 5, 2);
        assert_eq!(
            b.iter().map(|m| m.unix_min).collect::<Vec<_>>(),
            [1_000, 1_005]
        );
        assert_eq!((b[0].wire_down, b[0].cost), (3_500, 3.0));
        assert_eq!(b[1].wire_down, 0);
    }

    #[test]
    fn the_ring_keeps_a_day_and_survives_odd_clocks_and_counters() {
        let mut h = History::default();
        let t0 = 50_000 * 60;
        for k in 0..3 * HISTORY_MINUTES {
            h.record(t0 + k * 60, k * 10, k * 100, k as f64);
        }
        assert_eq!(h.len(), HISTORY_MINUTES as usize);
        let now = t0 + (3 * HISTORY_MINUTES - 1) * 60;
        // Hours on the hour: the last one has 20 minutes so far.
        let b = h.buckets(now, 60, 24);
        assert!(b[..23].iter().all(|m| m.wire_down == 6_000), "{b:?}");
        assert_eq!(b[23].wire_down, 2_000);
        // Asking for more than a day, or from before the epoch, is bounded.
        assert_eq!(
            h.buckets(now, 1, usize::MAX).len(),
            HISTORY_MINUTES as usize
        );
        assert_eq!(h.buckets(30, 60, 10).len(), 1);
        // The clock steps back: counted in the newest minute. Counters that
        // go down (a restart of the tunnel's counts) or a NaN cost add nothing.
        let newest = h.buckets(now, 1, 1)[0];
        h.record(now - 3_600, 3 * HISTORY_MINUTES * 10 + 5, 0, f64::NAN);
        let after = h.buckets(now, 1, 1)[0];
        assert_eq!(after.wire_up, newest.wire_up + 15);
        assert_eq!(after.wire_down, newest.wire_down);
        assert_eq!(after.cost, newest.cost);
    }
}
