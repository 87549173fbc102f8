//! The client side of the HTTP pair: the browser's forward proxy. Blocked
//! hosts get a local 403 that never crosses the link; one origin per
//! connection.

use std::collections::VecDeque;

use super::BULK_BODY;
use super::message::{
    Chunk, Framing, Head, HttpError, Input, Relayed, ReqState, local_reply, relay_body,
    request_framing, response_shape, status_of,
};
use super::policy::{HttpPolicy, absolute_uri, split_authority};
use crate::{AccelStats, Accelerator, Activity, Output, activity_text};

#[derive(Debug)]
pub(super) enum RespState {
    Head,
    Body(Framing),
}

/// Client side: the browser's forward proxy.
#[derive(Debug)]
pub struct ClientAccel {
    policy: HttpPolicy,
    req: Input,
    req_state: ReqState,
    origin: Option<(String, u16)>,
    /// Outstanding requests: is it HEAD, and `GET http://...` for the
    /// status screen.
    outstanding: VecDeque<(bool, String)>,
    /// The response under way: body bytes passed to the browser, and its
    /// Content-Length.
    resp_done: u64,
    resp_total: Option<u64>,
    /// A local reply waiting for earlier responses to finish.
    deferred: Option<Vec<u8>>,
    resp: Input,
    resp_state: RespState,
    raw: bool,
    unflushed: bool,
    stats: AccelStats,
    failed: bool,
}

impl ClientAccel {
    pub fn new(policy: HttpPolicy) -> Self {
        ClientAccel {
            policy,
            req: Input::default(),
            req_state: ReqState::Head,
            origin: None,
            outstanding: VecDeque::new(),
            resp_done: 0,
            resp_total: None,
            deferred: None,
            resp: Input::default(),
            resp_state: RespState::Head,
            raw: false,
            unflushed: false,
            stats: AccelStats::default(),
            failed: false,
        }
    }

    fn reply_locally(&mut self, out: &mut Output, status: &str, why: &str) {
        let r = local_reply(status, why);
        self.stats.local_replies += 1;
        if self.outstanding.is_empty() {
            out.to_local.extend_from_slice(&r);
        } else {
            self.deferred = Some(r);
        }
        self.req_state = ReqState::Closed;
    }

    fn forward(&mut self, out: &mut Output, bytes: &[u8], head_req: bool, what: String) {
        if self.outstanding.is_empty() {
            self.stats.link_waits += 1;
        }
        self.outstanding.push_back((head_req, activity_text(&what)));
        out.to_tunnel.extend_from_slice(bytes);
    }

    fn on_head(&mut self, h: Head, out: &mut Output) -> Result<(), HttpError> {
        let mut parts = h.start.split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        if method.eq_ignore_ascii_case("CONNECT") {
            let Some((host, _)) = split_authority(&target, 443) else {
                self.reply_locally(out, "400 Bad Request", "Malformed CONNECT target.");
                return Ok(());
            };
            if self.policy.is_blocked(&host) {
                let why = format!("{host} is blocked by the straw host policy.");
                self.reply_locally(out, "403 Forbidden", &why);
                return Ok(());
            }
            self.forward(out, &h.bytes(), false, format!("CONNECT {target}"));
            self.req_state = ReqState::Raw;
            self.raw = true;
            self.unflushed = true;
            return Ok(());
        }
        let Some((host, port, _)) = absolute_uri(&target) else {
            self.reply_locally(
                out,
                "400 Bad Request",
                "straw is a forward proxy: requests need an absolute http:// URI.",
            );
            return Ok(());
        };
        if self.policy.is_blocked(&host) {
            let why = format!("{host} is blocked by the straw host policy.");
            self.reply_locally(out, "403 Forbidden", &why);
            return Ok(());
        }
        match &self.origin {
            None => self.origin = Some((host.clone(), port)),
            Some(o) if *o == (host.clone(), port) => {}
            Some(_) => {
                self.reply_locally(
                    out,
                    "502 Bad Gateway",
                    "One origin per proxy connection; please reconnect.",
                );
                return Ok(());
            }
        }
        let framing = request_framing(&h)?;
        let head_req = method.eq_ignore_ascii_case("HEAD");
        self.forward(out, &h.bytes(), head_req, format!("{method} {target}"));
        match framing {
            Some(f) => self.req_state = ReqState::Body(f),
            None => self.unflushed = true,
        }
        Ok(())
    }

    /// Gives up on the connection, saying why.
    fn fail(&mut self, out: &mut Output, why: String) {
        out.fail = Some(why);
        self.failed = true;
    }

    fn pump_req(&mut self, out: &mut Output) -> Result<(), HttpError> {
        loop {
            if let Some(raw) = self.req_state.unparsed(&mut self.req) {
                self.unflushed |= !raw.is_empty();
                out.to_tunnel.extend_from_slice(&raw);
                return Ok(());
            }
            match &mut self.req_state {
                ReqState::Closed | ReqState::Raw => unreachable!("unparsed above"),
                ReqState::Head => {
                    let h = match self.req.head(self.policy.max_head) {
                        Ok(Some(h)) => h,
                        Ok(None) => return Ok(()),
                        Err(e) => {
                            self.reply_locally(out, "400 Bad Request", &e.to_string());
                            continue;
                        }
                    };
                    self.on_head(h, out)?;
                }
                ReqState::Body(f) => match relay_body(f, &mut self.req, &mut out.to_tunnel)? {
                    Relayed::Waiting => return Ok(()),
                    Relayed::Data => {}
                    Relayed::End => {
                        self.req_state = ReqState::Head;
                        self.unflushed = true;
                    }
                },
            }
        }
    }

    fn pump_resp(&mut self, out: &mut Output) -> Result<(), HttpError> {
        loop {
            if self.raw {
                let n = self.resp.avail().len();
                self.resp_done = self.resp_done.saturating_add(n as u64);
                out.to_local.extend_from_slice(&self.resp.take(n));
                return Ok(());
            }
            match &mut self.resp_state {
                RespState::Head => {
                    let Some(h) = self.resp.head(self.policy.max_head)? else {
                        return Ok(());
                    };
                    let status = status_of(&h)?;
                    let head_req = self.outstanding.front().is_some_and(|r| r.0);
                    let (body, fin) = response_shape(status, head_req);
                    out.to_local.extend_from_slice(&h.bytes());
                    if status == 101 {
                        self.raw = true;
                        continue;
                    }
                    self.resp_done = 0;
                    self.resp_total = None;
                    let framing = if !body {
                        Framing::Length(0)
                    } else if h.chunked() {
                        Framing::Chunked(Chunk::Size)
                    } else {
                        match h.content_length()? {
                            Some(n) => {
                                out.bulk |= n > BULK_BODY;
                                self.resp_total = Some(n);
                                Framing::Length(n)
                            }
                            None => {
                                return Err(HttpError::Unframed);
                            }
                        }
                    };
                    if !fin {
                        continue;
                    }
                    self.resp_state = RespState::Body(framing);
                }
                RespState::Body(f) => {
                    let before = out.to_local.len();
                    let relayed = relay_body(f, &mut self.resp, &mut out.to_local)?;
                    let n = out.to_local.len().saturating_sub(before);
                    self.resp_done = self.resp_done.saturating_add(n as u64);
                    match relayed {
                        Relayed::Waiting => return Ok(()),
                        Relayed::Data => {}
                        Relayed::End => {
                            self.resp_state = RespState::Head;
                            self.outstanding.pop_front();
                            if self.outstanding.is_empty()
                                && let Some(r) = self.deferred.take()
                            {
                                out.to_local.extend_from_slice(&r);
                            }
                        }
                    }
                }
            }
        }
    }
}

impl Accelerator for ClientAccel {
    /// A request still waiting for its response head gets a 502 page; a
    /// response already under way is cut (the browser sees it short).
    fn link_lost(&mut self, out: &mut Output) {
        if self.failed {
            return;
        }
        self.failed = true;
        if !self.raw && matches!(self.resp_state, RespState::Head) && !self.outstanding.is_empty() {
            self.stats.local_replies += 1;
            out.to_local.extend_from_slice(&local_reply(
                "502 Bad Gateway",
                "straw: the link to the server was lost before the response came. Try again later.",
            ));
        }
    }

    fn from_local(&mut self, data: &[u8], drained: bool, out: &mut Output) {
        if self.failed {
            return;
        }
        self.req.push(data);
        match self.pump_req(out) {
            Ok(()) => out.flush_if_drained(drained, &mut self.unflushed),
            Err(e) => self.fail(out, format!("HTTP request from the program: {e}")),
        }
    }

    fn from_tunnel(&mut self, data: &[u8], out: &mut Output) {
        if self.failed {
            return;
        }
        self.resp.push(data);
        if let Err(e) = self.pump_resp(out) {
            out.fail = Some(format!("HTTP response from the server side: {e}"));
            self.failed = true;
        }
    }

    fn stats(&self) -> AccelStats {
        self.stats
    }

    /// The request whose response is awaited or arriving, with the body
    /// bytes so far and Content-Length (a CONNECT tunnel: bytes down).
    fn activity(&self) -> Option<Activity> {
        let (_, what) = self.outstanding.front()?;
        let started = self.raw || matches!(self.resp_state, RespState::Body(_));
        let (done, total) = if started {
            (self.resp_done, self.resp_total)
        } else {
            (0, None)
        };
        Some(Activity::new(what.clone(), done, total))
    }
}

#[cfg(test)]
mod activity_tests {
    use super::*;

    #[test]
    fn get_shows_the_url_and_content_length_progress() {
        let mut c = ClientAccel::new(HttpPolicy::default());
        let mut out = Output::default();
        assert_eq!(c.activity(), None);
        c.from_local(
            b"GET http://example.org/a.txt HTTP/1.1\r\nHost: example.org\r\n\r\n",
            true,
            &mut out,
        );
        let want = |done, total| Some(Activity::new("GET http://example.org/a.txt", done, total));
        assert_eq!(c.activity(), want(0, None));
        c.from_tunnel(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123",
            &mut out,
        );
        assert_eq!(c.activity(), want(4, Some(10)));
        c.from_tunnel(b"456789", &mut out);
        assert_eq!(c.activity(), None);
    }

    #[test]
    fn long_urls_are_cut() {
        let mut c = ClientAccel::new(HttpPolicy::default());
        let mut out = Output::default();
        let req = format!(
            "GET http://example.org/{} HTTP/1.1\r\nHost: example.org\r\n\r\n",
            "a".repeat(500)
        );
        c.from_local(req.as_bytes(), true, &mut out);
        let a = c.activity().unwrap();
        assert_eq!(a.what.chars().count(), crate::ACTIVITY_MAX);
        assert!(a.what.ends_with("..."));
    }
}
