//! The server side of the HTTP pair: talks to the origin. Rewrites each
//! request to origin form, asks for gzip and decodes it (so the tunnel codec
//! sees plain bytes), and frames every response with `Content-Length` or
//! chunks. CONNECT is tunnelled raw.

use std::collections::VecDeque;
use std::io::Write;

use super::message::{
    BodyEv, Chunk, Framing, Head, HttpError, Input, Relayed, ReqState, body_step, chunk,
    local_reply, relay_body, request_framing, response_shape, status_of,
};
use super::policy::{HttpPolicy, absolute_uri, split_authority};
use super::{BULK_BODY, GZ_STEP, HOLD_DECODED};
use crate::{Accelerator, Output};

/// How the current origin response body goes to the client.
pub(super) enum Relay {
    /// Plain, same length: bytes as they come.
    Length,
    /// Plain, re-chunked.
    Chunked,
    /// Gzip: decoded; held (head + data) until the end or HOLD_DECODED.
    Gzip {
        dec: Box<flate2::write::GzDecoder<Vec<u8>>>,
        held: Option<Head>,
        total: u64,
    },
}

pub(super) enum SResp {
    Head,
    Body(Framing, Relay),
    Raw,
}

/// Server side: talks to the origin.
pub struct ServerAccel {
    policy: HttpPolicy,
    origin: Option<(String, u16)>,
    req: Input,
    req_state: ReqState,
    methods: VecDeque<bool>,
    resp: Input,
    resp_state: SResp,
    failed: bool,
}

impl ServerAccel {
    pub fn new(policy: HttpPolicy) -> Self {
        ServerAccel {
            policy,
            origin: None,
            req: Input::default(),
            req_state: ReqState::Head,
            methods: VecDeque::new(),
            resp: Input::default(),
            resp_state: SResp::Head,
            failed: false,
        }
    }

    fn fail(&mut self, out: &mut Output, why: impl std::fmt::Display) {
        self.failed = true;
        out.fail_once(why);
    }

    /// A 403 for a target the policy keeps out; the connection ends.
    fn refuse_private_target(&mut self, out: &mut Output) {
        out.to_tunnel.extend_from_slice(&local_reply(
            "403 Forbidden",
            "Private targets are not allowed.",
        ));
        out.flush = true;
        self.req_state = ReqState::Closed;
    }

    fn on_req_head(&mut self, mut h: Head, out: &mut Output) -> Result<(), HttpError> {
        let mut parts = h.start.splitn(3, ' ');
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let version = parts.next().unwrap_or("HTTP/1.1").to_string();
        if method.eq_ignore_ascii_case("CONNECT") {
            let (host, _) = split_authority(&target, 443)
                .ok_or_else(|| HttpError::BadConnectTarget(target.clone()))?;
            if !self.policy.permits_target(&host) {
                self.refuse_private_target(out);
                return Ok(());
            }
            out.to_tunnel
                .extend_from_slice(b"HTTP/1.1 200 Connection established\r\n\r\n");
            out.flush = true;
            self.req_state = ReqState::Raw;
            self.resp_state = SResp::Raw;
            return Ok(());
        }
        let (host, port, path) =
            absolute_uri(&target).ok_or_else(|| HttpError::NotAbsoluteUri(target.clone()))?;
        if !self.policy.permits_target(&host) {
            self.refuse_private_target(out);
            return Ok(());
        }
        match &self.origin {
            None => self.origin = Some((host.clone(), port)),
            Some(o) if *o == (host.clone(), port) => {}
            Some(o) => {
                return Err(HttpError::OtherOrigin {
                    host,
                    port,
                    origin: o.clone(),
                });
            }
        }
        let framing = request_framing(&h)?;
        h.start = format!("{method} {path} {version}");
        h.remove("Proxy-Connection");
        h.remove("Proxy-Authorization");
        h.set("Accept-Encoding", "gzip".into());
        if h.get("Host").is_none() {
            let host_hdr = if port == 80 {
                host
            } else {
                format!("{host}:{port}")
            };
            h.headers.insert(0, ("Host".into(), host_hdr));
        }
        out.to_local.extend_from_slice(&h.bytes());
        self.methods.push_back(method.eq_ignore_ascii_case("HEAD"));
        if let Some(f) = framing {
            self.req_state = ReqState::Body(f);
        }
        Ok(())
    }

    fn pump_req(&mut self, out: &mut Output) -> Result<(), HttpError> {
        loop {
            if let Some(raw) = self.req_state.unparsed(&mut self.req) {
                out.to_local.extend_from_slice(&raw);
                return Ok(());
            }
            match &mut self.req_state {
                ReqState::Closed | ReqState::Raw => unreachable!("unparsed above"),
                ReqState::Head => {
                    let Some(h) = self.req.head(self.policy.max_head)? else {
                        return Ok(());
                    };
                    self.on_req_head(h, out)?;
                }
                ReqState::Body(f) => match relay_body(f, &mut self.req, &mut out.to_local)? {
                    Relayed::Waiting => return Ok(()),
                    Relayed::Data => {}
                    Relayed::End => self.req_state = ReqState::Head,
                },
            }
        }
    }

    fn on_resp_head(&mut self, mut h: Head, out: &mut Output) -> Result<(), HttpError> {
        let status = status_of(&h)?;
        let head_req = self.methods.front().copied().unwrap_or(false);
        let (body, fin) = response_shape(status, head_req);
        if status == 101 {
            out.to_tunnel.extend_from_slice(&h.bytes());
            out.flush = true;
            self.resp_state = SResp::Raw;
            self.req_state = ReqState::Raw;
            return Ok(());
        }
        if !body {
            out.to_tunnel.extend_from_slice(&h.bytes());
            out.flush = true;
            if fin {
                self.methods.pop_front();
            }
            return Ok(());
        }
        let framing = if h.chunked() {
            Framing::Chunked(Chunk::Size)
        } else {
            match h.content_length()? {
                Some(n) => Framing::Length(n),
                None => Framing::Close,
            }
        };
        let gzip = h
            .get("Content-Encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("gzip") || v.eq_ignore_ascii_case("x-gzip"));
        let relay = if gzip {
            h.remove("Content-Encoding");
            h.remove("Content-Length");
            h.remove("Transfer-Encoding");
            Relay::Gzip {
                dec: Box::new(flate2::write::GzDecoder::new(Vec::new())),
                held: Some(h),
                total: 0,
            }
        } else if let Framing::Length(n) = framing {
            out.bulk |= n > BULK_BODY;
            out.to_tunnel.extend_from_slice(&h.bytes());
            Relay::Length
        } else {
            h.remove("Content-Length");
            h.set("Transfer-Encoding", "chunked".into());
            out.to_tunnel.extend_from_slice(&h.bytes());
            Relay::Chunked
        };
        self.resp_state = SResp::Body(framing, relay);
        Ok(())
    }

    /// Decoded gzip output so far: held, or sent as chunks once too big.
    fn gz_emit(relay: &mut Relay, out: &mut Output, max: u64, end: bool) -> Result<(), HttpError> {
        let Relay::Gzip { dec, held, total } = relay else {
            return Ok(());
        };
        let produced = dec.get_ref().len();
        if *total + produced as u64 > max {
            return Err(HttpError::GzipBomb { max });
        }
        if held.is_some() && !end && produced <= HOLD_DECODED {
            return Ok(());
        }
        let data = std::mem::take(dec.get_mut());
        *total += data.len() as u64;
        out.bulk |= *total > BULK_BODY;
        if let Some(mut h) = held.take() {
            if end {
                h.set("Content-Length", data.len().to_string());
                out.to_tunnel.extend_from_slice(&h.bytes());
                out.to_tunnel.extend_from_slice(&data);
                return Ok(());
            }
            h.set("Transfer-Encoding", "chunked".into());
            out.to_tunnel.extend_from_slice(&h.bytes());
        }
        chunk(&mut out.to_tunnel, &data);
        if end {
            out.to_tunnel.extend_from_slice(b"0\r\n\r\n");
        }
        Ok(())
    }

    fn finish_body(&mut self, out: &mut Output) -> Result<(), HttpError> {
        let state = std::mem::replace(&mut self.resp_state, SResp::Head);
        if let SResp::Body(_, mut relay) = state {
            match &mut relay {
                Relay::Length => {}
                Relay::Chunked => out.to_tunnel.extend_from_slice(b"0\r\n\r\n"),
                Relay::Gzip { dec, .. } => {
                    dec.try_finish()
                        .map_err(|e| HttpError::CorruptGzip(e.to_string()))?;
                    Self::gz_emit(&mut relay, out, self.policy.max_decoded, true)?;
                }
            }
        }
        self.methods.pop_front();
        out.flush = true;
        Ok(())
    }

    fn pump_resp(&mut self, out: &mut Output) -> Result<(), HttpError> {
        loop {
            match &mut self.resp_state {
                SResp::Raw => {
                    let n = self.resp.avail().len();
                    out.to_tunnel.extend_from_slice(&self.resp.take(n));
                    out.flush |= n > 0;
                    return Ok(());
                }
                SResp::Head => {
                    let Some(h) = self.resp.head(self.policy.max_head)? else {
                        return Ok(());
                    };
                    self.on_resp_head(h, out)?;
                }
                SResp::Body(f, relay) => match body_step(f, &mut self.resp)? {
                    None => return Ok(()),
                    Some(BodyEv::End) => self.finish_body(out)?,
                    Some(BodyEv::Data(d)) => match relay {
                        Relay::Length => {
                            out.to_tunnel.extend_from_slice(&d);
                        }
                        Relay::Chunked => {
                            out.bulk |= d.len() as u64 > BULK_BODY;
                            chunk(&mut out.to_tunnel, &d);
                        }
                        Relay::Gzip { .. } => {
                            let max = self.policy.max_decoded;
                            for piece in d.chunks(GZ_STEP) {
                                if let Relay::Gzip { dec, .. } = relay {
                                    dec.write_all(piece)
                                        .map_err(|e| HttpError::CorruptGzip(e.to_string()))?;
                                }
                                Self::gz_emit(relay, out, max, false)?;
                            }
                        }
                    },
                },
            }
        }
    }

    /// The origin closed its side: ends a body delimited by the close.
    pub fn local_closed(&mut self, out: &mut Output) {
        if self.failed {
            return;
        }
        if let SResp::Body(Framing::Close, _) = self.resp_state {
            if let Err(e) = self.finish_body(out) {
                self.fail(out, e);
            }
        } else if let SResp::Body(..) = self.resp_state {
            self.fail(out, HttpError::OriginClosedMidResponse);
        }
    }
}

impl Accelerator for ServerAccel {
    fn local_eof(&mut self, out: &mut Output) {
        self.local_closed(out)
    }

    fn from_local(&mut self, data: &[u8], _drained: bool, out: &mut Output) {
        if self.failed {
            return;
        }
        self.resp.push(data);
        if let Err(e) = self.pump_resp(out) {
            self.fail(out, format!("HTTP response from the origin: {e}"));
        }
    }

    fn from_tunnel(&mut self, data: &[u8], out: &mut Output) {
        if self.failed {
            return;
        }
        self.req.push(data);
        if let Err(e) = self.pump_req(out) {
            self.fail(out, format!("HTTP request from the client side: {e}"));
        }
    }

    fn tunnel_bytes_held(&self) -> usize {
        self.req.avail().len()
    }
}
