//! What the Noise handshake carries: each side's [`Hello`] (protocol
//! version, stream window, codec model, resume ticket), the checks on the
//! peer's, and the codec profile both sides must agree on.

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
        assert!(ct_eq(b"abc", b"abc") && !ct_eq(b"abc", b"abd") && !ct_eq(b"ab", b"abc"));
    }
}
