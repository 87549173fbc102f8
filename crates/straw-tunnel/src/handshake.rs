//! What the Noise handshake carries: each side's [`Hello`] (protocol
//! version, stream window, codec model, resume ticket), the checks on the
//! peer's, the codec profile both sides must agree on, and the replay guard
//! on the client's first message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use straw_core::codec::DecoderLimits;
use straw_core::session::{Role, SessionConfig};
use straw_core::wire::{Hello, PROTOCOL_VERSION, Resume, WireError};
use thiserror::Error;

/// Which codec family a tunnel's records use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkCodec {
    /// zstd: interactive records in a small default context; bulk in a
    /// 512 KiB window primed with the shipped MAIL_V1 dictionary.
    Zstd,
    /// Context mixing for both lanes, primed with the shipped mail text,
    /// sized per direction and lane (docs/codec.md).
    Cm,
}

/// Sets the codec of both lanes for `role`'s side of the tunnel.
pub fn set_codec(c: &mut SessionConfig, role: Role, codec: LinkCodec) {
    debug_assert_eq!(c.role, role);
    match codec {
        LinkCodec::Zstd => c.use_slow_link_zstd(),
        LinkCodec::Cm => c.use_slow_link_cm(),
    }
}

/// The codec model id this side announces in its Hello: both peers must
/// have the same CM model (algorithm, priming text, sizes per direction).
pub fn codec_model_id(c: &SessionConfig) -> u32 {
    let (sent, received) = (
        [c.codec_params.cm, c.bulk_codec_params.cm],
        [c.decoder_limits.cm, c.bulk_decoder_limits.cm],
    );
    let (c2s, s2c) = match c.role {
        Role::Client => (sent, received),
        Role::Server => (received, sent),
    };
    straw_core::codec::model_id(&[c2s[0], c2s[1], s2c[0], s2c[1]])
}

/// The Hello this side sends with session config `c` (a client offers
/// `resume` to take its session back; a server grants one).
pub fn our_hello(c: &SessionConfig, resume: Option<Resume>) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        stream_window: c.stream_window,
        max_record: DecoderLimits::default().max_record_bytes as u64,
        resume,
        codec_model: Some(codec_model_id(c)),
        timestamp: None,
    }
}

/// A client's Hello: [`our_hello`] with the timestamp the server's
/// [`ReplayGuard`] checks (from [`Timestamps::next`]).
pub fn client_hello(c: &SessionConfig, resume: Option<Resume>, timestamp: u64) -> Hello {
    Hello {
        timestamp: Some(timestamp),
        ..our_hello(c, resume)
    }
}

/// The client's handshake timestamps: wall-clock nanoseconds since the Unix
/// epoch, made strictly increasing for the life of the process. A clock
/// stepped back while the client runs changes nothing (each timestamp is
/// one more than the last until the clock catches up); across a restart the
/// wall clock carries the order, so a clock stepped back by X between two
/// runs is refused by the server for up to X (or until the server
/// restarts), unless the server's `max_clock_skew_secs` is below X.
#[derive(Debug, Default)]
pub struct Timestamps {
    last: AtomicU64,
}

impl Timestamps {
    pub const fn new() -> Self {
        Self {
            last: AtomicU64::new(0),
        }
    }

    /// The next timestamp given the wall clock `now_ns` (see [`unix_nanos`]).
    pub fn next(&self, now_ns: u64) -> u64 {
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let t = now_ns.max(last.saturating_add(1));
            match self
                .last
                .compare_exchange_weak(last, t, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return t,
                Err(seen) => last = seen,
            }
        }
    }
}

/// Nanoseconds since the Unix epoch by `now` (0 before it; saturates in 2554).
pub fn unix_nanos(now: std::time::SystemTime) -> u64 {
    now.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Why a client's first message was refused by the [`ReplayGuard`].
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReplayError {
    #[error("client hello carries no timestamp")]
    NoTimestamp,
    #[error(
        "handshake timestamp not newer than the last accepted from this key ({behind_ms} ms older): a replayed first message, or the client's clock went back across a restart"
    )]
    NotNewer { behind_ms: u64 },
    #[error(
        "client clock is {off_secs} s {dir} ours, more than max_clock_skew_secs = {max_secs}",
        dir = if *.ahead { "ahead of" } else { "behind" }
    )]
    Skew {
        off_secs: u64,
        ahead: bool,
        max_secs: u64,
    },
}

/// The server's replay rule on first handshake messages (WireGuard's
/// TAI64N rule): per client key, the greatest timestamp accepted; a first
/// message whose timestamp is not greater is refused, so a captured message
/// replayed any number of times does nothing. Memory: one entry per key that
/// ever passed authentication (so per authorised key).
///
/// The table lives in memory: after a server restart the first message seen
/// from a key is accepted whatever its age (as in WireGuard), unless
/// `max_skew` refuses timestamps that far from the server's clock, which
/// also bounds how long a client whose clock was far ahead and then
/// corrected stays locked out.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    last: HashMap<[u8; 32], u64>,
    max_skew: Option<Duration>,
}

impl ReplayGuard {
    /// `max_skew`: refuse timestamps further than this from our clock.
    pub fn new(max_skew: Option<Duration>) -> Self {
        Self {
            last: HashMap::new(),
            max_skew,
        }
    }

    /// Checks `client`'s first-message timestamp against the last one it
    /// had accepted and our clock `now_ns`; on success it becomes the last.
    pub fn check(
        &mut self,
        client: &[u8; 32],
        timestamp: Option<u64>,
        now_ns: u64,
    ) -> Result<(), ReplayError> {
        let t = timestamp.ok_or(ReplayError::NoTimestamp)?;
        if let Some(&last) = self.last.get(client)
            && t <= last
        {
            return Err(ReplayError::NotNewer {
                behind_ms: (last - t) / 1_000_000,
            });
        }
        if let Some(max) = self.max_skew {
            let off = t.abs_diff(now_ns);
            if u128::from(off) > max.as_nanos() {
                return Err(ReplayError::Skew {
                    off_secs: off / 1_000_000_000,
                    ahead: t > now_ns,
                    max_secs: max.as_secs(),
                });
            }
        }
        self.last.insert(*client, t);
        Ok(())
    }

    /// Keys remembered (one per client key that ever got through).
    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

/// Why a peer's Hello was refused.
#[derive(Debug, Error)]
pub enum HelloError {
    #[error("bad {peer} hello: {source}")]
    Malformed {
        peer: &'static str,
        source: WireError,
    },
    #[error("{peer} speaks protocol {theirs}, we speak {PROTOCOL_VERSION}")]
    Version { peer: &'static str, theirs: u8 },
    #[error(
        "peer's codec model {theirs:08x} differs from ours {ours:08x}: run the same straw version on both ends"
    )]
    CodecModel { ours: u32, theirs: u32 },
    #[error("peer announced no codec model (older straw?); ours is {ours:08x}")]
    NoCodecModel { ours: u32 },
}

/// Refuses a peer whose codec model differs from ours.
pub fn check_codec_model(ours: u32, theirs: Option<u32>) -> Result<(), HelloError> {
    match theirs {
        Some(id) if id == ours => Ok(()),
        Some(theirs) => Err(HelloError::CodecModel { ours, theirs }),
        None => Err(HelloError::NoCodecModel { ours }),
    }
}

/// Decodes the peer's Hello and checks that we can talk to it: the same
/// protocol version and codec model as `ours` (this side's config).
pub fn check_peer_hello(ours: &SessionConfig, payload: &[u8]) -> Result<Hello, HelloError> {
    let peer = match ours.role {
        Role::Client => "server",
        Role::Server => "client",
    };
    let hello = Hello::decode(payload).map_err(|source| HelloError::Malformed { peer, source })?;
    if hello.version != PROTOCOL_VERSION {
        return Err(HelloError::Version {
            peer,
            theirs: hello.version,
        });
    }
    check_codec_model(codec_model_id(ours), hello.codec_model)?;
    Ok(hello)
}

/// Client side of resume: what to do with the session kept from the last
/// link, given what the server's Hello granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumePlan {
    /// The server keeps no sessions: drop ours; the new one can't survive a drop.
    NoTickets,
    /// The server still has our session: resume it.
    Resume,
    /// A fresh session (the server lost ours, or we had none).
    Fresh,
}

/// Decides [`ResumePlan`] from the session we kept (if any) and the ticket
/// the server granted.
pub fn plan_client_resume(kept: Option<&Resume>, granted: Option<&Resume>) -> ResumePlan {
    match (kept, granted) {
        (_, None) => ResumePlan::NoTickets,
        (Some(k), Some(g)) if k.session_id == g.session_id => ResumePlan::Resume,
        _ => ResumePlan::Fresh,
    }
}

/// Compares secrets (resume tickets) without an early exit.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use straw_core::wire::RESUME_ID_LEN;

    fn cm(role: Role) -> SessionConfig {
        let mut c = SessionConfig::new(role);
        set_codec(&mut c, role, LinkCodec::Cm);
        c
    }

    #[test]
    fn both_sides_announce_the_same_model_and_accept_each_other() {
        let (client, server) = (cm(Role::Client), cm(Role::Server));
        assert_eq!(codec_model_id(&client), codec_model_id(&server));
        let h = our_hello(&client, None).encode();
        let got = check_peer_hello(&server, &h).unwrap();
        assert_eq!(got.stream_window, client.stream_window);
        assert!(check_peer_hello(&client, &our_hello(&server, None).encode()).is_ok());
    }

    #[test]
    fn wrong_version_model_or_bytes_are_refused_with_a_reason() {
        let server = cm(Role::Server);
        let mut h = our_hello(&cm(Role::Client), None);
        h.codec_model = h.codec_model.map(|m| m ^ 1);
        let e = check_peer_hello(&server, &h.encode()).unwrap_err();
        assert!(e.to_string().contains("codec model"), "{e}");
        h.codec_model = None;
        assert!(matches!(
            check_peer_hello(&server, &h.encode()),
            Err(HelloError::NoCodecModel { .. })
        ));
        let mut raw = our_hello(&cm(Role::Client), None).encode();
        raw[0] = 99;
        let e = check_peer_hello(&server, &raw).unwrap_err();
        assert!(
            e.to_string().starts_with("client speaks protocol 99"),
            "{e}"
        );
        assert!(matches!(
            check_peer_hello(&server, b""),
            Err(HelloError::Malformed { .. })
        ));
    }

    #[test]
    fn client_resumes_only_the_session_the_server_still_has() {
        let r = |id: u8| Resume {
            session_id: [id; RESUME_ID_LEN],
            ticket: [0; RESUME_ID_LEN],
            records_received: 0,
        };
        assert_eq!(plan_client_resume(Some(&r(1)), None), ResumePlan::NoTickets);
        assert_eq!(
            plan_client_resume(Some(&r(1)), Some(&r(1))),
            ResumePlan::Resume
        );
        assert_eq!(
            plan_client_resume(Some(&r(1)), Some(&r(2))),
            ResumePlan::Fresh
        );
        assert_eq!(plan_client_resume(None, Some(&r(2))), ResumePlan::Fresh);
        // A resume grants a new ticket for the same session: still ours (the
        // client keeps the granted block, so the new ticket, for next time).
        let rotated = Resume {
            ticket: [5; RESUME_ID_LEN],
            ..r(1)
        };
        assert_eq!(
            plan_client_resume(Some(&r(1)), Some(&rotated)),
            ResumePlan::Resume
        );
        assert!(ct_eq(b"abc", b"abc") && !ct_eq(b"abc", b"abd") && !ct_eq(b"ab", b"abc"));
    }

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_replayed_first_message_is_refused_every_time() {
        let (alice, bob) = ([1u8; 32], [2u8; 32]);
        let now = 1_800_000_000 * SEC;
        let mut g = ReplayGuard::new(None);
        assert_eq!(g.check(&alice, Some(now), now), Ok(()));
        for _ in 0..1000 {
            assert!(matches!(
                g.check(&alice, Some(now), now + SEC),
                Err(ReplayError::NotNewer { behind_ms: 0 })
            ));
        }
        // Older ones too; newer ones pass, once each.
        assert!(g.check(&alice, Some(now - SEC), now).is_err());
        assert_eq!(g.check(&alice, Some(now + 1), now), Ok(()));
        assert!(g.check(&alice, Some(now + 1), now).is_err());
        // Per key: bob's first message is not compared with alice's.
        assert_eq!(g.check(&bob, Some(now - 5 * SEC), now), Ok(()));
        assert_eq!(g.check(&alice, None, now), Err(ReplayError::NoTimestamp));
        assert_eq!(g.len(), 2, "one entry per key, whatever the traffic");
    }

    #[test]
    fn clock_skew_bound_is_optional_and_both_ways() {
        let alice = [1u8; 32];
        let now = 1_800_000_000 * SEC;
        let mut g = ReplayGuard::new(Some(Duration::from_secs(3600)));
        let e = g.check(&alice, Some(now + 7200 * SEC), now).unwrap_err();
        assert_eq!(
            e,
            ReplayError::Skew {
                off_secs: 7200,
                ahead: true,
                max_secs: 3600
            }
        );
        assert!(e.to_string().contains("7200 s ahead of ours"), "{e}");
        // Refused ones are not remembered: a later, sane one still passes.
        assert!(g.check(&alice, Some(now - 7200 * SEC), now).is_err());
        assert_eq!(g.check(&alice, Some(now - 3000 * SEC), now), Ok(()));
        // Without the bound a timestamp from 1970 is fine (only order counts).
        let mut g = ReplayGuard::new(None);
        assert_eq!(g.check(&alice, Some(1), now), Ok(()));
    }

    #[test]
    fn timestamps_strictly_increase_even_when_the_clock_steps_back() {
        let ts = Timestamps::new();
        let a = ts.next(100 * SEC);
        let b = ts.next(100 * SEC);
        let c = ts.next(50 * SEC);
        let d = ts.next(200 * SEC);
        assert!(a < b && b < c && c < d, "{a} {b} {c} {d}");
        assert_eq!((a, d), (100 * SEC, 200 * SEC));
        let now = std::time::SystemTime::now();
        assert!(unix_nanos(now) > 1_700_000_000 * SEC);
        assert_eq!(unix_nanos(std::time::UNIX_EPOCH), 0);
    }

    #[test]
    fn a_client_hello_carries_its_timestamp_and_the_server_sees_it() {
        let (client, server) = (cm(Role::Client), cm(Role::Server));
        let h = client_hello(&client, None, 42).encode();
        assert_eq!(check_peer_hello(&server, &h).unwrap().timestamp, Some(42));
        assert_eq!(our_hello(&server, None).timestamp, None);
    }
}
