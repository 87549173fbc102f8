//! `SELECT INBOX` asked for with the login (see the [module docs](super)
//! for the rule): the client side's half. The command crosses as any
//! other (or as [`COND_SELECT`]); the server side holds LOGIN's reply
//! until the SELECT's response starts.

use super::client::{ClientAccel, PendKind, Pending};
use super::framer::content;
use super::reply::{caps_of, rewrite_line, show, upper, word};
use super::resume::{self, TAG_PREFIX};
use crate::Output;

/// The prefetched response (with the INBOX updates held after it) is kept
/// up to this size; beyond, it is dropped and the program's own `SELECT
/// INBOX` crosses as usual.
pub(crate) const PREFETCH_MAX: usize = 64 * 1024;

/// The prefetch when UNSELECT is not known to be there (a fresh install:
/// the cached capabilities are the pre-login ones, and servers list
/// UNSELECT only once logged in). The server side keeps it, and what
/// follows, from the real server until LOGIN's tagged reply: if that is OK
/// and its `[CAPABILITY ...]` lists UNSELECT, it sends `SELECT INBOX` under
/// the same tag; else it answers [`COND_SELECT_DECLINED`] itself. An older
/// server side passes it on, and the real server's `BAD` means the same.
pub(crate) const COND_SELECT: &str = "XSTRAW-SELECT 1 INBOX";
pub(crate) const COND_SELECT_VERB: &str = "XSTRAW-SELECT";
/// The server side's answer when it did not select (after the tag).
pub(crate) const COND_SELECT_DECLINED: &str = "NO [XSTRAW-NOT-SELECTED] straw: not selected";

/// What becomes of the prefetched selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Mode {
    /// The program has not yet said which mailbox it wants.
    Held,
    /// The program's `SELECT INBOX` (this tag) gets the rest as it comes.
    Claimed(Vec<u8>),
    /// Too big to keep: the response is swallowed, but the server may still
    /// have INBOX selected.
    Overflow,
    /// Of no more use (the login failed, or the program selected something
    /// else, logged out, or we sent UNSELECT): the rest is swallowed.
    Dropped,
}

#[derive(Debug)]
pub(super) struct Prefetch {
    pub(super) tag: Vec<u8>,
    login_tag: Vec<u8>,
    /// LOGIN's result, once its tagged reply came.
    login_ok: Option<bool>,
    /// Our SELECT's tagged reply came: was it OK?
    status: Option<bool>,
    /// That tagged reply after its tag (CRLF included).
    done: Vec<u8>,
    /// Untagged responses for the program: the SELECT's own, then updates
    /// about INBOX that came while it was held.
    buf: Vec<u8>,
    pub(super) mode: Mode,
    uidvalidity: Option<u32>,
}

impl Prefetch {
    /// Our SELECT's own untagged responses are coming (LOGIN answered, our
    /// tagged reply not yet).
    fn in_response(&self) -> bool {
        self.login_ok.is_some() && self.status.is_none()
    }

    /// The server may have INBOX selected without the program knowing.
    fn live(&self) -> bool {
        matches!(self.mode, Mode::Held | Mode::Overflow)
            && self.login_ok != Some(false)
            && self.status != Some(false)
    }
}

/// What a program command means for a selection it does not know of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Same meaning and answer with INBOX selected (unsolicited INBOX
    /// updates aside, which are held).
    Same,
    /// Replaces or ends the selection by itself, never expunging: SELECT,
    /// EXAMINE, LOGOUT.
    Switch,
    /// Meant for no mailbox selected: UNSELECT first, pipelined.
    Unselect,
    /// Acts on the selected mailbox (CLOSE would expunge): UNSELECT first,
    /// and only once it is done does the command go.
    UnselectAndWait,
}

fn class(verb: &str) -> Class {
    match verb {
        "CAPABILITY" | "NOOP" | "ID" | "NAMESPACE" | "LIST" | "LSUB" | "XLIST" | "STATUS"
        | "CREATE" | "SUBSCRIBE" | "UNSUBSCRIBE" | "APPEND" | "GETQUOTA" | "GETQUOTAROOT"
        | "MYRIGHTS" | "GETACL" | "LISTRIGHTS" | "GETMETADATA" => Class::Same,
        "SELECT" | "EXAMINE" | "LOGOUT" => Class::Switch,
        "CLOSE" | "UNSELECT" | "EXPUNGE" | "CHECK" | "FETCH" | "STORE" | "COPY" | "MOVE"
        | "SEARCH" | "SORT" | "THREAD" | "UID" => Class::UnselectAndWait,
        _ => Class::Unselect,
    }
}

/// An untagged response about the selected mailbox: `* n EXISTS`,
/// `RECENT`, `EXPUNGE`, `FETCH`, `* FLAGS`, `* VANISHED`.
fn mailbox_update(line: &[u8]) -> bool {
    let (_, rest) = word(line);
    let (a, b) = word(rest);
    let b = upper(word(b).0);
    let numbered = !a.is_empty() && a.iter().all(u8::is_ascii_digit);
    (numbered && matches!(b.as_str(), "EXISTS" | "RECENT" | "EXPUNGE" | "FETCH"))
        || a.eq_ignore_ascii_case(b"FLAGS")
        || a.eq_ignore_ascii_case(b"VANISHED")
}

/// Answer to [`ClientAccel::prefetch_tagged`].
pub(super) enum Tagged {
    /// Not ours: the usual handling.
    Other,
    /// Ours: swallowed.
    Ours,
    /// The claimed SELECT's completion, retagged for the program: handle
    /// it as the program's own.
    As(Vec<u8>),
}

impl ClientAccel {
    /// Whether the server is known to offer UNSELECT once logged in (the
    /// prefetch is only made then: it is how a selection the program never
    /// asked for is undone without expunging).
    fn unselect_known(&self) -> bool {
        let has = |c: &Option<Vec<String>>| {
            c.as_ref()
                .is_some_and(|c| c.iter().any(|a| a.eq_ignore_ascii_case("UNSELECT")))
        };
        has(&self.authed_caps) || has(&self.cached_caps)
    }

    /// At a program `LOGIN` (no literal, not logged in): whether to ask for
    /// INBOX right behind it: when UNSELECT is known to be there, or the
    /// post-login capabilities are not known yet (the server side then
    /// checks LOGIN's, [`COND_SELECT`]).
    pub(super) fn want_prefetch(&mut self) -> bool {
        let go = self.prefetch_select
            && !self.prefetch_tried
            && (self.unselect_known() || (self.authed_caps.is_none() && !self.cond_declined));
        self.prefetch_tried |= go;
        go
    }

    /// Sends our `SELECT INBOX` behind the LOGIN with tag `login_tag`, or
    /// [`COND_SELECT`] when UNSELECT is not known to be there.
    pub(super) fn send_prefetch(&mut self, login_tag: &[u8], out: &mut Output) {
        self.own_seq += 1;
        let tag = format!("{}{}", TAG_PREFIX, self.own_seq);
        let cmd = if self.unselect_known() {
            "SELECT INBOX"
        } else {
            COND_SELECT
        };
        out.to_tunnel
            .extend_from_slice(format!("{tag} {cmd}\r\n").as_bytes());
        self.prefetch = Some(Prefetch {
            tag: tag.into_bytes(),
            login_tag: login_tag.to_vec(),
            login_ok: None,
            status: None,
            done: Vec::new(),
            buf: Vec::new(),
            mode: Mode::Held,
            uidvalidity: None,
        });
    }

    /// Post-login capabilities (LOGIN's `[CAPABILITY ...]` code, a
    /// `* CAPABILITY` once logged in): cached for the next connection.
    pub(super) fn learn_authed_caps(&mut self, line: &[u8], out: &mut Output) {
        let Some(caps) = caps_of(line) else { return };
        self.unselect_now = Some(caps.iter().any(|a| a.eq_ignore_ascii_case("UNSELECT")));
        if self.authed_caps.as_ref() != Some(&caps) {
            let v = format!("* CAPABILITY {}", caps.join(" ")).into_bytes();
            out.cache_put.push((super::AUTHED_CAPABILITY_KEY.into(), v));
            self.authed_caps = Some(caps);
        }
    }

    /// Every tagged reply passing the end of what came before a switch.
    fn tagged_seen(&mut self) {
        self.stale = self.stale.saturating_sub(1);
    }

    /// Tagged replies still due for what was sent so far: until they are
    /// in, untagged mailbox updates are about the prefetched INBOX.
    fn due(&self) -> usize {
        let ours = self.prefetch.as_ref().is_some_and(|p| p.status.is_none());
        self.pending.len()
            + self.lookups.len()
            + self.offers.len()
            + usize::from(ours)
            + usize::from(self.unselecting.is_some())
    }

    /// A program command while a prefetched selection may be live on the
    /// server. True if it is taken care of here (claimed, or held until
    /// UNSELECT is done).
    pub(super) fn prefetch_cmd(&mut self, raw: &[u8], has_lit: bool, out: &mut Output) -> bool {
        let Some(p) = &self.prefetch else {
            return false;
        };
        if !p.live() {
            return false;
        }
        let line = content(raw);
        let (tag, rest) = word(line);
        let (verb, args) = word(rest);
        let verb = upper(verb);
        let inbox = verb == "SELECT"
            && !has_lit
            && !tag.is_empty()
            && resume::astring(args)
                .is_some_and(|(m, rest)| rest.is_empty() && m.eq_ignore_ascii_case("INBOX"));
        if inbox && p.mode == Mode::Held && p.login_ok == Some(true) {
            self.claim(tag, out);
            return true;
        }
        match class(&verb) {
            Class::Same => false,
            Class::Switch => {
                self.stale = self.due();
                self.drop_prefetch();
                false
            }
            c @ (Class::Unselect | Class::UnselectAndWait) => {
                if self.unselect_now == Some(false) {
                    self.fail(
                        out,
                        format!(
                            "IMAP: straw selected INBOX ahead, the program's {verb} wants no mailbox selected, and the server no longer offers UNSELECT to undo it"
                        ),
                    );
                    return true;
                }
                let select_ok = p.status;
                self.own_seq += 1;
                let utag = format!("{}{}", TAG_PREFIX, self.own_seq);
                out.to_tunnel
                    .extend_from_slice(format!("{utag} UNSELECT\r\n").as_bytes());
                self.unselecting = Some((utag.into_bytes(), select_ok));
                self.stale = self.due();
                self.drop_prefetch();
                if c == Class::UnselectAndWait && !has_lit {
                    // Sent once the UNSELECT is done (see from_tunnel).
                    if self.awaited == 0 {
                        self.stats.link_waits += 1;
                    }
                    self.last_verb = "UNSELECT (straw)".into();
                    self.stashed = Some(raw.to_vec());
                    self.unselect_wait = true;
                    out.flush = true;
                    return true;
                }
                false
            }
        }
    }

    fn drop_prefetch(&mut self) {
        if let Some(p) = &mut self.prefetch {
            if p.status.is_some() {
                self.prefetch = None;
            } else {
                p.mode = Mode::Dropped;
                p.buf = Vec::new();
            }
        }
    }

    /// The program's `SELECT INBOX` with tag `tag`: it gets the prefetched
    /// response, what has come and the rest as it comes.
    fn claim(&mut self, tag: &[u8], out: &mut Output) {
        let Some(p) = &mut self.prefetch else { return };
        self.last_verb = "SELECT".into();
        let arrived = !p.buf.is_empty() || p.status.is_some();
        out.to_local.append(&mut p.buf);
        if arrived {
            self.stats.local_replies += 1;
        } else if self.awaited == 0 {
            self.stats.link_waits += 1;
        }
        if p.status.is_some() {
            out.to_local.extend_from_slice(tag);
            out.to_local.extend_from_slice(&p.done);
            let uv = p.uidvalidity;
            self.prefetch = None;
            self.seq_uids.clear();
            if self.store.is_some() {
                self.mailbox = uv.map(|uv| ("INBOX".to_string(), uv));
            }
            return;
        }
        p.mode = Mode::Claimed(tag.to_vec());
        if self.store.is_some() {
            self.selecting = Some((tag.to_vec(), "INBOX".into(), p.uidvalidity));
        }
        self.pending.push(Pending {
            tag: tag.to_vec(),
            kind: PendKind::Plain { auth: false },
        });
        self.awaited += 1;
    }

    /// A tagged reply: ours (the prefetch's, our UNSELECT's) or the LOGIN's
    /// the prefetch rides on.
    pub(super) fn prefetch_tagged(&mut self, raw: &[u8], out: &mut Output) -> Tagged {
        self.tagged_seen();
        let line = content(raw);
        let (tag, rest) = word(line);
        let ok = word(rest).0.eq_ignore_ascii_case(b"OK");
        if let Some((utag, select_ok)) = &self.unselecting
            && utag.as_slice() == tag
        {
            if !ok && *select_ok != Some(false) {
                self.fail(
                    out,
                    format!(
                        "IMAP: the server refused UNSELECT of the INBOX straw selected ahead ({:?}); stopping before a command meant for no mailbox acts on it",
                        show(line)
                    ),
                );
            }
            self.unselecting = None;
            self.unselect_wait = false;
            return Tagged::Ours;
        }
        let Some(p) = &mut self.prefetch else {
            return Tagged::Other;
        };
        if p.login_tag == tag && p.login_ok.is_none() {
            p.login_ok = Some(ok);
            if !ok {
                // The server answers our SELECT with BAD: swallowed.
                p.mode = Mode::Dropped;
                p.buf = Vec::new();
            }
            return Tagged::Other;
        }
        if p.tag != tag {
            return Tagged::Other;
        }
        if let Some((_, s @ None)) = &mut self.unselecting {
            *s = Some(ok);
        }
        if !ok
            && p.login_ok == Some(true)
            && self.authed_caps.is_none()
            && line.ends_with(COND_SELECT_DECLINED.as_bytes())
        {
            // A good login and still no capability list: this server never
            // shows one, and would be asked in vain at every login.
            self.cond_declined = true;
            out.cache_put
                .push((super::COND_SELECT_DECLINED_KEY.into(), b"1".to_vec()));
        }
        match std::mem::replace(&mut p.mode, Mode::Dropped) {
            Mode::Claimed(ptag) => {
                self.prefetch = None;
                let mut v = ptag;
                v.extend_from_slice(&raw[tag.len()..]);
                Tagged::As(v)
            }
            mode @ (Mode::Held | Mode::Overflow) if ok => {
                p.mode = mode;
                p.status = Some(true);
                p.done = raw[tag.len()..].to_vec();
                Tagged::Ours
            }
            _ => {
                self.prefetch = None;
                Tagged::Ours
            }
        }
    }

    /// An untagged response while a prefetch is on: Some(false) if it is
    /// the prefetch's (kept or swallowed), None for the usual handling.
    /// Sets `resp_keep` when the rest of the response is to be kept too.
    pub(super) fn prefetch_untagged(&mut self, raw: &[u8], out: &mut Output) -> Option<bool> {
        let line = content(raw);
        let (_, rest) = word(line);
        if word(rest).0.eq_ignore_ascii_case(b"BYE") {
            return None;
        }
        let update = mailbox_update(line);
        if let Some(p) = &mut self.prefetch {
            let ours = p.in_response() || (update && p.status == Some(true));
            match p.mode {
                Mode::Claimed(_) => return None,
                Mode::Held if ours => {
                    if p.in_response()
                        && let Some(uv) = resume::uidvalidity_in(line)
                        && word(rest).0.eq_ignore_ascii_case(b"OK")
                    {
                        p.uidvalidity = Some(uv);
                    }
                    self.resp_keep = true;
                    self.keep_prefetched(&rewrite_line(raw), out);
                    return Some(false);
                }
                _ if ours => return Some(false),
                _ => {}
            }
        }
        (update && self.stale > 0).then_some(false)
    }

    /// More of a response kept for the prefetch.
    pub(super) fn keep_prefetched(&mut self, data: &[u8], out: &mut Output) {
        let Some(p) = &mut self.prefetch else { return };
        match p.mode {
            Mode::Held => {
                p.buf.extend_from_slice(data);
                if p.buf.len() > PREFETCH_MAX {
                    p.mode = Mode::Overflow;
                    p.buf = Vec::new();
                    out.notes.push(format!(
                        "IMAP SELECT INBOX asked ahead: response over {PREFETCH_MAX} bytes, not kept; the program's SELECT crosses"
                    ));
                }
            }
            // Claimed within this response: the rest goes on.
            Mode::Claimed(_) => out.to_local.extend_from_slice(data),
            Mode::Overflow | Mode::Dropped => {}
        }
    }
}
