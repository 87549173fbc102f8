//! The pair back to back with a scripted Dovecot-like real server.

use super::framer::{content, parse_literal};
use super::reply::*;
use super::*;
use crate::{Accelerator, Cache, Output};
use proptest::prelude::*;

const CAPS: &str = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE STARTTLS AUTH=PLAIN";
const GREETING: &str = "* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE STARTTLS AUTH=PLAIN] Dovecot ready.";
const POST_CAPS: &str =
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT THREAD=REFS MOVE COMPRESS=DEFLATE";

/// The untagged part of the fake's SELECT INBOX response.
const SELECT_INBOX: &str = "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n* 2 EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY 1] UIDs valid\r\n";
const SELECT_OTHER: &str =
    "* FLAGS ()\r\n* 0 EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY 7] UIDs valid\r\n";

/// A scripted real server: answers whole commands, honours synchronising
/// literals (and refuses APPEND to "Refuse"), records everything it reads.
struct FakeDovecot {
    inbuf: Vec<u8>,
    /// Every byte the real server read.
    seen: Vec<u8>,
    out: Vec<u8>,
    literal_plus: bool,
    lit_left: usize,
    /// Current command, literals included.
    cur: Vec<u8>,
    commands: Vec<Vec<u8>>,
    body: Vec<u8>,
    /// Capabilities in LOGIN's OK.
    post_caps: String,
    /// As Dovecot: once a CAPABILITY was asked before LOGIN, the post-login
    /// list comes as `* CAPABILITY` ahead of a plain OK.
    caps_asked: Option<bool>,
    /// LOGIN's OK shows no capability list in either form.
    login_caps_hidden: bool,
    logged_in: bool,
    /// Selected mailbox, and whether read-write.
    selected: Option<(String, bool)>,
    /// Mailboxes a CLOSE expunged.
    expunged: Vec<String>,
    /// Untagged updates sent with the next NOOP while a mailbox is selected.
    updates: Vec<u8>,
    /// More untagged lines in the response to SELECT INBOX.
    select_extra: Vec<u8>,
}

impl FakeDovecot {
    fn new(literal_plus: bool) -> Self {
        let mut f = FakeDovecot {
            inbuf: Vec::new(),
            seen: Vec::new(),
            out: Vec::new(),
            literal_plus,
            lit_left: 0,
            cur: Vec::new(),
            commands: Vec::new(),
            body: b"Subject: hi\r\n\r\nHello there.\r\n".to_vec(),
            post_caps: POST_CAPS.into(),
            caps_asked: None,
            login_caps_hidden: false,
            logged_in: false,
            selected: None,
            expunged: Vec::new(),
            updates: Vec::new(),
            select_extra: Vec::new(),
        };
        f.out.extend_from_slice(GREETING.as_bytes());
        f.out.extend_from_slice(b"\r\n");
        f
    }

    fn feed(&mut self, data: &[u8]) {
        self.seen.extend_from_slice(data);
        self.inbuf.extend_from_slice(data);
        loop {
            if self.lit_left > 0 {
                let k = self.lit_left.min(self.inbuf.len());
                if k == 0 {
                    return;
                }
                self.cur.extend(self.inbuf.drain(..k));
                self.lit_left -= k;
                continue;
            }
            let Some(i) = self.inbuf.iter().position(|&b| b == b'\n') else {
                return;
            };
            let line: Vec<u8> = self.inbuf.drain(..=i).collect();
            let first = self.cur.is_empty();
            self.cur.extend_from_slice(&line);
            let l = content(&line);
            if let Some(lit) = parse_literal(l).unwrap() {
                let tag = word(content(&self.cur)).0.to_vec();
                if first && content(&self.cur).windows(7).any(|w| w == b"Refuse ") {
                    self.reply(&[&tag, b" NO [TRYCREATE] Mailbox doesn't exist: Refuse\r\n"]);
                    self.commands.push(std::mem::take(&mut self.cur));
                    continue;
                }
                if !lit.plus {
                    self.out.extend_from_slice(b"+ OK\r\n");
                } else {
                    assert!(self.literal_plus, "LITERAL+ used with a server lacking it");
                }
                self.lit_left = lit.n as usize;
                continue;
            }
            let cmd = std::mem::take(&mut self.cur);
            self.answer(&cmd);
            self.commands.push(cmd);
        }
    }

    fn reply(&mut self, parts: &[&[u8]]) {
        for p in parts {
            self.out.extend_from_slice(p);
        }
    }

    fn answer(&mut self, cmd: &[u8]) {
        let line = content(cmd);
        let (tag, rest) = word(line);
        let (verb, args) = word(rest);
        let t = tag;
        let verb = if line.eq_ignore_ascii_case(b"DONE") {
            "DONE".to_string()
        } else {
            upper(verb)
        };
        match verb.as_str() {
            "CAPABILITY" => {
                if let Some(asked) = &mut self.caps_asked {
                    *asked = true;
                }
                self.reply(&[
                b"* CAPABILITY ",
                CAPS.as_bytes(),
                b"\r\n",
                t,
                b" OK Pre-login capabilities listed, post-login capabilities have more.\r\n",
                ])
            }
            "LOGIN" if args.ends_with(b" wrong") => {
                self.reply(&[t, b" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"])
            }
            "LOGIN" => {
                self.logged_in = true;
                let caps = self.post_caps.clone();
                if self.login_caps_hidden {
                    self.reply(&[t, b" OK Logged in\r\n"])
                } else if self.caps_asked == Some(true) {
                    self.reply(&[b"* CAPABILITY ", caps.as_bytes(), b"\r\n"]);
                    self.reply(&[t, b" OK Logged in\r\n"])
                } else {
                    self.reply(&[t, b" OK [CAPABILITY ", caps.as_bytes(), b"] Logged in\r\n"])
                }
            }
            "SELECT" | "EXAMINE" | "UNSELECT" | "CLOSE" if !self.logged_in => {
                self.reply(&[t, b" BAD Error in IMAP command received by server.\r\n"])
            }
            "SELECT" | "EXAMINE" => {
                let rw = verb == "SELECT";
                let name = super::resume::astring(args).map(|(m, _)| m.to_ascii_uppercase());
                self.selected = None;
                match name.as_deref() {
                    Some("INBOX") => {
                        let extra = self.select_extra.clone();
                        self.reply(&[SELECT_INBOX.as_bytes(), &extra, t]);
                    }
                    Some("OTHER") => self.reply(&[SELECT_OTHER.as_bytes(), t]),
                    _ => {
                        return self.reply(&[t, b" NO Mailbox doesn't exist\r\n"]);
                    }
                }
                self.selected = Some((name.unwrap_or_default(), rw));
                self.reply(&[if rw {
                    b" OK [READ-WRITE] Select completed.\r\n"
                } else {
                    b" OK [READ-ONLY] Examine completed.\r\n"
                }]);
            }
            "UNSELECT" | "CLOSE" => match self.selected.take() {
                None => self.reply(&[t, b" BAD No mailbox selected.\r\n"]),
                Some((name, rw)) => {
                    if verb == "CLOSE" && rw {
                        self.expunged.push(name);
                    }
                    self.reply(&[t, b" OK Done.\r\n"])
                }
            },
            "ENABLE" => self.reply(&[t, b" OK Enabled.\r\n"]),
            "LIST" => self.reply(&[b"* LIST (\\HasNoChildren) \".\" INBOX\r\n", t, b" OK List completed.\r\n"]),
            "FETCH" if args.windows(6).any(|w| w == b"BODY[]") => {
                let body = self.body.clone();
                self.reply(&[
                    b"* 1 FETCH (BODY[] {",
                    body.len().to_string().as_bytes(),
                    b"}\r\n",
                    &body,
                    b")\r\n",
                    t,
                    b" OK Fetch completed.\r\n",
                ])
            }
            "FETCH" => self.reply(&[
                b"* 1 FETCH (ENVELOPE (\"Mon, 1 Jan 2024\" \"hi\" NIL NIL NIL NIL NIL NIL NIL \"<a@b>\"))\r\n",
                b"* 2 FETCH (ENVELOPE (\"Tue, 2 Jan 2024\" \"yo\" NIL NIL NIL NIL NIL NIL NIL \"<c@d>\"))\r\n",
                t,
                b" OK Fetch completed.\r\n",
            ]),
            "APPEND" => self.reply(&[t, b" OK [APPENDUID 1 3] Append completed.\r\n"]),
            "IDLE" => self.reply(&[b"+ idling\r\n"]),
            "DONE" => {
                let idle = self
                    .commands
                    .iter()
                    .rev()
                    .find(|c| upper(word(word(content(c)).1).0) == "IDLE")
                    .map(|c| word(content(c)).0.to_vec())
                    .unwrap();
                self.reply(&[&idle, b" OK Idle completed.\r\n"])
            }
            "LOGOUT" => self.reply(&[b"* BYE Logging out\r\n", t, b" OK Logout completed.\r\n"]),
            "NOOP" => {
                if self.selected.is_some() {
                    let u = std::mem::take(&mut self.updates);
                    self.reply(&[&u]);
                }
                self.reply(&[t, b" OK NOOP completed.\r\n"])
            }
            _ => self.reply(&[t, b" BAD Error in IMAP command received by server.\r\n"]),
        }
    }
}

/// Client, server and real server wired back to back, pumped until quiet.
struct Rig {
    client: ClientAccel,
    server: ServerAccel,
    real: FakeDovecot,
    /// What the mail program received.
    prog: Vec<u8>,
    fails: Vec<String>,
    puts: Vec<(String, Vec<u8>)>,
    c2s: Vec<u8>,
    s2c: Vec<u8>,
    flushes: usize,
    bulk: bool,
}

impl Rig {
    fn new(cache: &Cache, literal_plus: bool) -> Self {
        Self::with_client(ClientAccel::new(cache), literal_plus)
    }

    fn with_client(client: ClientAccel, literal_plus: bool) -> Self {
        let mut r = Rig {
            client,
            server: ServerAccel::default(),
            real: FakeDovecot::new(literal_plus),
            prog: Vec::new(),
            fails: Vec::new(),
            puts: Vec::new(),
            c2s: Vec::new(),
            s2c: Vec::new(),
            flushes: 0,
            bulk: false,
        };
        let mut o = Output::default();
        r.client.start(&mut o);
        r.take(o, true);
        r.pump();
        r
    }

    fn take(&mut self, o: Output, client: bool) {
        if client {
            self.prog.extend_from_slice(&o.to_local);
            self.c2s.extend_from_slice(&o.to_tunnel);
        } else {
            self.real.feed(&o.to_local);
            self.s2c.extend_from_slice(&o.to_tunnel);
            self.flushes += o.flush as usize;
        }
        self.bulk |= o.bulk;
        self.fails.extend(o.fail);
        self.puts.extend(o.cache_put);
    }

    fn send(&mut self, data: &[u8]) {
        let mut o = Output::default();
        self.client.from_local(data, true, &mut o);
        self.take(o, true);
        self.pump();
    }

    fn pump(&mut self) {
        while self.hop() {}
    }

    /// Carries the first batch of bytes waiting (client to server side, real
    /// server to server side, server side to client side) one hop; false
    /// when none waits.
    fn hop(&mut self) -> bool {
        let mut o = Output::default();
        let to_client = if !self.c2s.is_empty() {
            self.server
                .from_tunnel(&std::mem::take(&mut self.c2s), &mut o);
            false
        } else if !self.real.out.is_empty() {
            let d = std::mem::take(&mut self.real.out);
            self.server.from_local(&d, true, &mut o);
            false
        } else if !self.s2c.is_empty() {
            self.client
                .from_tunnel(&std::mem::take(&mut self.s2c), &mut o);
            true
        } else {
            return false;
        };
        self.take(o, to_client);
        true
    }

    fn prog_take(&mut self) -> String {
        String::from_utf8(std::mem::take(&mut self.prog)).unwrap()
    }

    /// The client side takes `data` from the program; returns its output,
    /// carried nowhere yet.
    fn client_takes(&mut self, data: &[u8]) -> Output {
        let mut o = Output::default();
        self.client.from_local(data, true, &mut o);
        o
    }

    /// The program sends `data`; returns what it has received since it
    /// last looked.
    fn says(&mut self, data: &[u8]) -> String {
        self.send(data);
        self.prog_take()
    }
}

fn warm_cache() -> Cache {
    let mut c = Cache::new();
    c.insert(GREETING_KEY.into(), GREETING.as_bytes().to_vec());
    c.insert(
        CAPABILITY_KEY.into(),
        format!("* CAPABILITY {CAPS}").into_bytes(),
    );
    c
}

/// [`warm_cache`] with `greeting` cached instead of the real one.
fn warm_cache_greeting(greeting: &[u8]) -> Cache {
    let mut c = warm_cache();
    c.insert(GREETING_KEY.into(), greeting.to_vec());
    c
}

const SHOWN_CAPS: &str = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE AUTH=PLAIN LITERAL+";

#[test]
fn cold_start_passes_real_greeting_and_caches_it() {
    let mut r = Rig::new(&Cache::new(), false);
    assert_eq!(
        r.prog_take(),
        format!("* OK [CAPABILITY {SHOWN_CAPS}] Dovecot ready.\r\n")
    );
    assert_eq!(
        r.says(b"a1 CAPABILITY\r\n"),
        format!(
            "* CAPABILITY {SHOWN_CAPS}\r\na1 OK Pre-login capabilities listed, post-login capabilities have more.\r\n"
        )
    );
    assert_eq!(r.puts.len(), 2);
    assert_eq!(
        r.puts[0],
        (GREETING_KEY.into(), GREETING.as_bytes().to_vec())
    );
    assert_eq!(
        r.puts[1],
        (
            CAPABILITY_KEY.into(),
            format!("* CAPABILITY {CAPS}").into_bytes()
        )
    );
    assert!(r.fails.is_empty());
    // Greeting and CAPABILITY both crossed the link.
    assert_eq!(r.client.stats().link_waits, 2);
}

#[test]
fn warm_session_exact_bytes_and_three_link_waits() {
    let mut r = Rig::new(&warm_cache(), false);
    assert_eq!(
        r.prog_take(),
        format!("* OK [CAPABILITY {SHOWN_CAPS}] Dovecot ready.\r\n")
    );
    // Served before the real greeting crosses; the real one is swallowed.
    assert_eq!(
        r.says(b"a1 CAPABILITY\r\n"),
        format!("* CAPABILITY {SHOWN_CAPS}\r\na1 OK CAPABILITY completed\r\n")
    );
    assert_eq!(
        r.says(b"a2 LOGIN bob secret\r\n"),
        "a2 OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT THREAD=REFS MOVE LITERAL+] Logged in\r\n"
    );
    assert_eq!(
        r.says(b"a3 SELECT INBOX\r\n"),
        "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n* 2 EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY 1] UIDs valid\r\na3 OK [READ-WRITE] Select completed.\r\n"
    );
    r.send(b"a4 FETCH 1:* (ENVELOPE)\r\n");
    assert!(r.prog_take().ends_with("a4 OK Fetch completed.\r\n"));
    assert_eq!(
        r.says(b"a5 LOGOUT\r\n"),
        "* BYE Logging out\r\na5 OK Logout completed.\r\n"
    );
    assert!(r.fails.is_empty(), "{:?}", r.fails);
    // Nothing changed but the post-login list, cached the first time.
    let keys: Vec<&str> = r.puts.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(keys, [AUTHED_CAPABILITY_KEY]);
    assert_eq!(
        r.puts[0].1,
        format!("* CAPABILITY {POST_CAPS}").into_bytes()
    );
    let s = r.client.stats();
    assert_eq!(s.link_waits, 3, "LOGIN, SELECT, FETCH");
    assert_eq!(s.local_replies, 3, "greeting, CAPABILITY, LOGOUT");
    // The real server still saw every command, LOGOUT included.
    let cmds: Vec<String> = r.real.commands.iter().map(|c| show(c)).collect();
    assert_eq!(
        cmds,
        [
            "a1 CAPABILITY\r\n",
            "a2 LOGIN bob secret\r\n",
            "a3 SELECT INBOX\r\n",
            "a4 FETCH 1:* (ENVELOPE)\r\n",
            "a5 LOGOUT\r\n"
        ]
    );
    // Server side flushed at each tagged reply (and the greeting) but
    // LOGOUT's: the real server closes behind it, and the stream's end
    // joins it in one record.
    assert_eq!(r.flushes, 5);
}

#[test]
fn logout_with_commands_outstanding_is_not_local() {
    let mut r = Rig::new(&warm_cache(), false);
    r.prog_take();
    let o = r.client_takes(b"a1 NOOP\r\na2 LOGOUT\r\n");
    assert!(o.to_local.is_empty(), "must wait for NOOP's real result");
    assert!(o.flush);
    r.take(o, true);
    r.pump();
    assert_eq!(
        r.prog_take(),
        "a1 OK NOOP completed.\r\n* BYE Logging out\r\na2 OK Logout completed.\r\n"
    );
    assert_eq!(r.client.stats().link_waits, 1, "one pipelined wait");
}

#[test]
fn greeting_mismatch_fails_and_updates_cache() {
    let r = Rig::new(
        &warm_cache_greeting(b"* OK [CAPABILITY IMAP4rev1 IDLE] Old server ready."),
        false,
    );
    assert_eq!(r.fails.len(), 1);
    assert!(r.fails[0].contains("greeting changed"), "{}", r.fails[0]);
    assert_eq!(
        r.puts,
        vec![(GREETING_KEY.into(), GREETING.as_bytes().to_vec())]
    );
}

#[test]
fn greeting_text_change_alone_is_fine() {
    let greeting = GREETING.replace("Dovecot ready.", "Dovecot (Debian) ready.");
    let r = Rig::new(&warm_cache_greeting(greeting.as_bytes()), false);
    assert!(r.fails.is_empty());
}

#[test]
fn capability_mismatch_fails_and_updates_cache() {
    let mut cache = warm_cache();
    cache.insert(
        CAPABILITY_KEY.into(),
        b"* CAPABILITY IMAP4rev1 IDLE".to_vec(),
    );
    let mut r = Rig::new(&cache, false);
    r.prog_take();
    assert_eq!(
        r.says(b"a1 CAPABILITY\r\n"),
        "* CAPABILITY IMAP4rev1 IDLE LITERAL+\r\na1 OK CAPABILITY completed\r\n"
    );
    assert_eq!(r.fails.len(), 1);
    assert!(
        r.fails[0].contains("capabilities changed"),
        "{}",
        r.fails[0]
    );
    assert_eq!(
        r.puts,
        vec![(
            CAPABILITY_KEY.into(),
            format!("* CAPABILITY {CAPS}").into_bytes()
        )]
    );
}

#[test]
fn capability_after_login_crosses() {
    let mut r = Rig::new(&warm_cache(), false);
    r.send(b"a1 LOGIN bob secret\r\n");
    r.prog_take();
    r.send(b"a2 CAPABILITY\r\n");
    // The real (pre-login in this fake) list, rewritten, not the cache.
    assert!(
        r.prog_take().ends_with(
            "a2 OK Pre-login capabilities listed, post-login capabilities have more.\r\n"
        )
    );
    // Post-login caps are not taken for the pre-login ones (LOGIN's
    // [CAPABILITY] code is kept under its own key).
    assert!(
        r.puts.iter().all(|p| p.0 == AUTHED_CAPABILITY_KEY),
        "{:?}",
        r.puts
    );
    assert_eq!(r.client.stats().link_waits, 2);
}

#[test]
fn literal_plus_emulation_against_server_without_it() {
    let mut r = Rig::new(&warm_cache(), false);
    r.prog_take();
    let o = r.client_takes(b"a1 APPEND INBOX {11}\r\n");
    assert_eq!(o.to_local, b"+ OK\r\n", "continuation answered at once");
    assert_eq!(o.to_tunnel, b"a1 APPEND INBOX {11+}\r\n");
    r.take(o, true);
    r.prog_take();
    r.pump();
    assert_eq!(
        r.says(b"Hello world\r\n"),
        "a1 OK [APPENDUID 1 3] Append completed.\r\n"
    );
    // The real server got a synchronising literal, after its own `+`.
    assert_eq!(r.real.seen, b"a1 APPEND INBOX {11}\r\nHello world\r\n");
    assert!(!show(&r.prog).contains("+ OK"), "real `+` swallowed");
    assert_eq!(r.client.stats().link_waits, 1);
}

/// The literal came with its command (LITERAL+ emulated): the server side
/// sends it on the real server's `+`, a wait over the link saved.
#[test]
fn a_literal_sent_ahead_counts_a_wait_saved() {
    let mut r = Rig::new(&warm_cache(), false);
    r.prog_take();
    assert_eq!(
        r.says(b"a1 APPEND INBOX {11}\r\nHello world\r\n"),
        "+ OK\r\na1 OK [APPENDUID 1 3] Append completed.\r\n"
    );
    assert_eq!(r.server.stats().link_waits_saved, 1);
}

#[test]
fn literal_plus_passes_when_server_has_it() {
    let mut r = Rig::new(&warm_cache(), true);
    // Teach the server side that the real server has LITERAL+.
    let mut o = Output::default();
    r.server
        .from_local(b"* CAPABILITY IMAP4rev1 LITERAL+\r\n", true, &mut o);
    r.prog_take();
    r.send(b"a1 APPEND INBOX {5+}\r\nhello\r\n");
    assert_eq!(r.real.seen, b"a1 APPEND INBOX {5+}\r\nhello\r\n");
    assert_eq!(r.prog_take(), "a1 OK [APPENDUID 1 3] Append completed.\r\n");
}

#[test]
fn refused_literal_is_swallowed_and_no_returned() {
    let mut r = Rig::new(&warm_cache(), false);
    r.prog_take();
    assert_eq!(
        r.says(b"a1 APPEND Refuse {11}\r\nHello world\r\na2 NOOP\r\n"),
        "+ OK\r\na1 NO [TRYCREATE] Mailbox doesn't exist: Refuse\r\na2 OK NOOP completed.\r\n"
    );
    assert_eq!(r.real.seen, b"a1 APPEND Refuse {11}\r\na2 NOOP\r\n");
    assert!(r.fails.is_empty());
}

#[test]
fn refused_literal_swallows_whole_multi_literal_command() {
    let mut r = Rig::new(&warm_cache(), false);
    r.prog_take();
    r.send(b"a1 APPEND Refuse {3}\r\nabc {2}\r\nde\r\na2 NOOP\r\n");
    assert_eq!(r.real.seen, b"a1 APPEND Refuse {3}\r\na2 NOOP\r\n");
    assert_eq!(
        r.prog_take(),
        "+ OK\r\n+ OK\r\na1 NO [TRYCREATE] Mailbox doesn't exist: Refuse\r\na2 OK NOOP completed.\r\n"
    );
}

#[test]
fn idle_keepalives_never_cross() {
    let mut r = Rig::new(&warm_cache(), false);
    r.prog_take();
    assert_eq!(r.says(b"a1 IDLE\r\n"), "+ idling\r\n");
    let mut o = Output::default();
    r.server.from_local(b"* OK Still here\r\n", true, &mut o);
    assert!(o.to_tunnel.is_empty() && !o.flush, "keep-alive dropped");
    r.server
        .from_local(b"* OK [ALERT] Disk full\r\n* 3 EXISTS\r\n", true, &mut o);
    assert_eq!(o.to_tunnel, b"* OK [ALERT] Disk full\r\n* 3 EXISTS\r\n");
    assert!(o.flush, "news during IDLE goes at once");
    r.take(o, false);
    r.pump();
    assert_eq!(r.prog_take(), "* OK [ALERT] Disk full\r\n* 3 EXISTS\r\n");
    assert_eq!(r.says(b"DONE\r\n"), "a1 OK Idle completed.\r\n");
    // After IDLE, untagged OK passes again.
    let mut o = Output::default();
    r.server.from_local(b"* OK Still here\r\n", true, &mut o);
    assert_eq!(o.to_tunnel, b"* OK Still here\r\n");
    r.send(b"a2 NOOP\r\n");
    assert!(r.prog_take().ends_with("a2 OK NOOP completed.\r\n"));
    assert!(r.fails.is_empty());
}

#[test]
fn a_program_leaving_mid_fetch_abandons_the_stream() {
    let start = |cmd: &[u8]| {
        let mut c = ClientAccel::new(&warm_cache());
        let mut o = Output::default();
        c.start(&mut o);
        c.from_tunnel(format!("{GREETING}\r\n").as_bytes(), &mut o);
        c.from_local(cmd, true, &mut o);
        c.from_tunnel(b"* 1 FETCH (BODY[] {300000}\r\nSubj", &mut o);
        c
    };
    let mut c = start(b"a1 FETCH 1 BODY[]\r\n");
    let mut o = Output::default();
    c.local_eof(&mut o);
    assert!(o.abandoned, "closed mid-FETCH without LOGOUT");
    let mut c = start(b"a1 FETCH 1 BODY[]\r\na2 LOGOUT\r\n");
    let mut o = Output::default();
    c.local_eof(&mut o);
    assert!(!o.abandoned, "after LOGOUT: a goodbye");
    let mut c = ClientAccel::new(&warm_cache());
    let mut o = Output::default();
    c.start(&mut o);
    c.local_eof(&mut o);
    assert!(!o.abandoned, "nothing awaited");
}

#[test]
fn fetch_literal_streams_incrementally() {
    let mut c = ClientAccel::new(&warm_cache());
    let mut s = ServerAccel::default();
    let mut o = Output::default();
    c.start(&mut o);
    s.from_local(format!("{GREETING}\r\n").as_bytes(), true, &mut o);
    let mut o2 = Output::default();
    c.from_tunnel(&o.to_tunnel, &mut o2);
    let mut o = Output::default();
    c.from_local(b"a1 FETCH 1 BODY[]\r\n", true, &mut o);
    let mut o2 = Output::default();
    s.from_tunnel(&o.to_tunnel, &mut o2);
    let n = 100_000usize;
    let mut head = format!("* 1 FETCH (BODY[] {{{n}}}\r\n").into_bytes();
    let mut delivered = 0usize;
    let chunk = vec![b'x'; 1000];
    for i in 0..n / 1000 {
        let mut so = Output::default();
        let mut piece = std::mem::take(&mut head);
        piece.extend_from_slice(&chunk);
        s.from_local(&piece, true, &mut so);
        assert!(so.bulk, "big literal is bulk");
        assert!(!so.flush, "no flush mid-response");
        let mut co = Output::default();
        c.from_tunnel(&so.to_tunnel, &mut co);
        delivered += co.to_local.len();
        assert!(delivered >= (i + 1) * 1000, "chunk {i} held back");
    }
    let mut so = Output::default();
    s.from_local(b")\r\na1 OK Fetch completed.\r\n", true, &mut so);
    assert!(so.flush);
    let mut co = Output::default();
    c.from_tunnel(&so.to_tunnel, &mut co);
    assert_eq!(co.to_local, b")\r\na1 OK Fetch completed.\r\n");
}

/// A message body goes through the bulk lane (the big mail context) even
/// when small; a header field's literal stays interactive.
#[test]
fn message_sized_literals_are_bulk_small_ones_are_not() {
    for (n, bulk) in [(3000usize, true), (1025, true), (1024, false), (300, false)] {
        let mut s = ServerAccel::default();
        let mut o = Output::default();
        s.from_local(format!("{GREETING}\r\n").as_bytes(), true, &mut o);
        s.from_tunnel(b"a1 FETCH 1 BODY[]\r\n", &mut Output::default());
        let mut so = Output::default();
        let mut resp = format!("* 1 FETCH (BODY[] {{{n}}}\r\n").into_bytes();
        resp.extend(std::iter::repeat_n(b'x', n));
        s.from_local(&resp, true, &mut so);
        assert_eq!(so.bulk, bulk, "literal of {n} bytes");
    }
}

#[test]
fn oversized_literal_fails_clearly() {
    let cfg = ImapConfig {
        max_literal: 1000,
        ..ImapConfig::default()
    };
    let mut c = ClientAccel::with_config(&warm_cache(), cfg);
    let mut o = Output::default();
    c.from_local(b"a1 APPEND INBOX {1001}\r\n", true, &mut o);
    assert!(o.fail.as_deref().unwrap().contains("exceeds the limit"));
    assert!(o.to_tunnel.is_empty() && o.to_local.is_empty());
    let mut s = ServerAccel::new(cfg);
    let mut o = Output::default();
    s.from_local(b"* OK hi\r\n* 1 FETCH (BODY[] {5000}\r\n", true, &mut o);
    assert!(o.fail.as_deref().unwrap().contains("exceeds the limit"));
}

#[test]
fn garbage_fails_without_panic() {
    let cfg = ImapConfig {
        max_line: 100,
        ..ImapConfig::default()
    };
    let mut c = ClientAccel::with_config(&Cache::new(), cfg);
    let mut o = Output::default();
    c.from_local(&[0xffu8; 200], true, &mut o);
    assert!(o.fail.as_deref().unwrap().contains("line longer"));
    let mut c = ClientAccel::new(&Cache::new());
    let mut o = Output::default();
    c.from_local(b"a {999999999999999999999999}\r\n", true, &mut o);
    assert!(o.fail.is_some());
    // Once failed, further input is ignored.
    let mut o = Output::default();
    c.from_local(b"a NOOP\r\n", true, &mut o);
    assert_eq!(o, Output::default());
}

fn session_script() -> Vec<u8> {
    b"a1 CAPABILITY\r\na2 LOGIN {3}\r\nbob {6}\r\nsecret\r\na3 SELECT INBOX\r\n\
a4 APPEND INBOX {11}\r\nHello world\r\na5 APPEND Refuse {4}\r\nnope\r\n\
a6 FETCH 1 BODY[]\r\na7 IDLE\r\nDONE\r\na8 NOOP\r\n"
        .to_vec()
}

fn run_split(cuts: &[usize]) -> (Vec<u8>, Vec<u8>, Vec<String>) {
    let script = session_script();
    let mut r = Rig::new(&warm_cache(), false);
    let mut last = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (script.len() + 1)).collect();
    cuts.sort();
    cuts.push(script.len());
    for c in cuts {
        r.send(&script[last..c]);
        last = c;
    }
    (r.prog, r.real.seen, r.fails)
}

fn without_conts(b: &[u8]) -> (String, usize) {
    let s = show(b);
    (s.replace("+ OK\r\n", ""), s.matches("+ OK\r\n").count())
}

#[test]
fn whole_script_in_one_go() {
    let (prog, seen, fails) = run_split(&[]);
    assert!(fails.is_empty(), "{fails:?}");
    assert_eq!(
        show(&seen),
        "a1 CAPABILITY\r\na2 LOGIN {3}\r\nbob {6}\r\nsecret\r\na3 SELECT INBOX\r\n\
a4 APPEND INBOX {11}\r\nHello world\r\na5 APPEND Refuse {4}\r\n\
a6 FETCH 1 BODY[]\r\na7 IDLE\r\nDONE\r\na8 NOOP\r\n"
    );
    let (p, conts) = without_conts(&prog);
    assert_eq!(conts, 4);
    assert!(p.contains("a5 NO [TRYCREATE]"));
    assert!(
        p.ends_with("+ idling\r\na7 OK Idle completed.\r\na8 OK NOOP completed.\r\n"),
        "{p}"
    );
}

proptest! {
    #[test]
    fn program_stream_split_anywhere(cuts in proptest::collection::vec(0usize..400, 0..8)) {
        let (prog0, seen0, _) = run_split(&[]);
        let (prog, seen, fails) = run_split(&cuts);
        prop_assert!(fails.is_empty(), "{:?}", fails);
        prop_assert_eq!(show(&seen), show(&seen0));
        // Local continuations may interleave differently with real replies.
        prop_assert_eq!(without_conts(&prog), without_conts(&prog0));
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut c = ClientAccel::new(&warm_cache());
        let mut s = ServerAccel::default();
        let mut o = Output::default();
        c.start(&mut o);
        c.from_local(&data, true, &mut o);
        c.from_tunnel(&data, &mut o);
        s.from_tunnel(&data, &mut o);
        s.from_local(&data, true, &mut o);
    }
}

#[test]
fn greeting_without_capability_code_is_no_mismatch() {
    // Dovecot greets so when its auth process is slow; it says nothing
    // about capabilities, so it contradicts neither side.
    let r = Rig::new(
        &warm_cache_greeting(b"* OK Waiting for authentication process to respond.."),
        false,
    );
    assert!(r.fails.is_empty(), "{:?}", r.fails);
    // The real greeting, which names capabilities, replaces the cached one.
    assert!(
        r.puts
            .iter()
            .any(|(k, v)| k == GREETING_KEY && v.as_slice() == GREETING.as_bytes()),
        "{:?}",
        r.puts
    );
}

// ---------------------------------------------------------------- link lost

/// A client side with no cache, started: what it said so far in `out`.
fn started() -> (ClientAccel, Output) {
    let mut c = ClientAccel::new(&Cache::new());
    let mut out = Output::default();
    c.start(&mut out);
    (c, out)
}

fn lost(c: &mut ClientAccel) -> Vec<u8> {
    let mut out = Output::default();
    Accelerator::link_lost(c, &mut out);
    out.to_local
}

#[test]
fn link_lost_with_a_command_in_flight_is_bye_without_tagged_reply() {
    let (mut c, mut out) = started();
    c.from_tunnel(format!("{GREETING}\r\n").as_bytes(), &mut out);
    out.clear();
    c.from_local(b"a1 LOGIN bob pw\r\n", true, &mut out);
    assert!(out.to_local.is_empty());
    assert_eq!(lost(&mut c), LINK_LOST);
}

#[test]
fn link_lost_before_greeting_is_a_bye_greeting() {
    let (mut c, _) = started();
    assert_eq!(lost(&mut c), LINK_LOST);
}

#[test]
fn link_lost_inside_a_fetch_literal_just_closes() {
    let (mut c, mut out) = started();
    c.from_tunnel(format!("{GREETING}\r\n").as_bytes(), &mut out);
    c.from_local(b"a1 LOGIN bob pw\r\n", true, &mut out);
    c.from_tunnel(
        b"a1 OK Logged in\r\nxstraw.1 NO [XSTRAW-NOT-SELECTED] straw: not selected\r\n",
        &mut out,
    );
    c.from_local(b"a2 FETCH 1 BODY[]\r\n", true, &mut out);
    out.clear();
    c.from_tunnel(b"* 1 FETCH (BODY[] {100}\r\nSubject: half", &mut out);
    assert!(out.fail.is_none(), "{:?}", out.fail);
    assert!(out.to_local.ends_with(b"half"));
    assert!(lost(&mut c).is_empty());
}

// SELECT INBOX asked for with the login (see the module docs).

const POST_CAPS_UNSELECT: &str = "IMAP4rev1 SASL-IR ID ENABLE IDLE UNSELECT SORT MOVE";

/// [`warm_cache`] plus a post-login list with UNSELECT.
fn unselect_cache() -> Cache {
    let mut c = warm_cache();
    c.insert(
        AUTHED_CAPABILITY_KEY.into(),
        format!("* CAPABILITY {POST_CAPS_UNSELECT}").into_bytes(),
    );
    c
}

/// A warm session whose server offers UNSELECT: the prefetch is on.
fn pf_rig() -> Rig {
    let mut r = Rig::new(&unselect_cache(), false);
    r.real.post_caps = POST_CAPS_UNSELECT.into();
    r.prog_take();
    r
}

fn select_inbox_reply(tag: &str) -> String {
    format!("{SELECT_INBOX}{tag} OK [READ-WRITE] Select completed.\r\n")
}

fn commands(r: &Rig) -> Vec<String> {
    r.real.commands.iter().map(|c| show(c)).collect()
}

/// LOGIN, then SELECT INBOX once LOGIN's OK is in: with the prefetch the
/// program's SELECT never crosses.
fn login_then_select(r: &mut Rig) -> String {
    let login = r.says(b"a1 LOGIN bob secret\r\n");
    assert!(login.starts_with("a1 OK [CAPABILITY ") && login.ends_with("Logged in\r\n"));
    r.says(b"a2 SELECT INBOX\r\n")
}

#[test]
fn prefetched_select_inbox_answers_the_program_and_saves_a_wait() {
    let mut r = pf_rig();
    let o = r.client_takes(b"a1 LOGIN bob secret\r\n");
    assert_eq!(
        show(&o.to_tunnel),
        "a1 LOGIN bob secret\r\nxstraw.1 SELECT INBOX\r\n",
        "in the same flush"
    );
    assert!(o.flush);
    let flushes = r.flushes;
    r.take(o, true);
    r.pump();
    r.prog_take();
    assert_eq!(
        r.flushes,
        flushes + 1,
        "LOGIN's reply leaves with the SELECT's"
    );
    let seen = r.real.commands.len();
    let o = r.client_takes(b"a2 SELECT INBOX\r\n");
    assert!(o.to_tunnel.is_empty(), "nothing crosses");
    assert_eq!(show(&o.to_local), select_inbox_reply("a2"));
    r.take(o, true);
    r.pump();
    assert_eq!(r.real.commands.len(), seen);
    r.send(b"a3 FETCH 1:* (ENVELOPE)\r\n");
    assert!(r.prog_take().ends_with("a3 OK Fetch completed.\r\n"));
    assert!(r.fails.is_empty(), "{:?}", r.fails);
    let with = r.client.stats();

    // The same without the prefetch: one wait more, one local reply less.
    let mut cache = unselect_cache();
    let off = ImapConfig {
        prefetch_select: false,
        ..Default::default()
    };
    let mut plain = Rig::with_client(ClientAccel::with_config(&cache, off), false);
    plain.real.post_caps = POST_CAPS_UNSELECT.into();
    plain.prog.clear();
    assert_eq!(login_then_select(&mut plain), select_inbox_reply("a2"));
    plain.send(b"a3 FETCH 1:* (ENVELOPE)\r\n");
    assert!(!commands(&plain).iter().any(|c| c.starts_with("xstraw")));
    let without = plain.client.stats();
    assert_eq!(
        with.link_waits + 1,
        without.link_waits,
        "{with:?} {without:?}"
    );
    assert_eq!(with.local_replies, without.local_replies + 1);
    assert_eq!(with.link_waits, 2, "LOGIN, FETCH");

    // Without UNSELECT known, no prefetch.
    cache.remove(AUTHED_CAPABILITY_KEY);
    let mut r = Rig::new(&cache, false);
    r.prog_take();
    assert_eq!(login_then_select(&mut r), select_inbox_reply("a2"));
    assert_eq!(
        commands(&r),
        ["a1 LOGIN bob secret\r\n", "a2 SELECT INBOX\r\n"]
    );
}

#[test]
fn quoted_any_case_inbox_is_claimed_and_the_tag_is_the_programs() {
    for sel in ["\"INBOX\"", "inbox", "\"InBoX\""] {
        let mut r = pf_rig();
        r.says(b"t1 LOGIN bob secret\r\n");
        let cmd = format!("t.2 SELECT {sel}\r\n");
        assert_eq!(r.says(cmd.as_bytes()), select_inbox_reply("t.2"), "{sel}");
        assert_eq!(r.real.commands.len(), 2, "{sel}");
    }
}

#[test]
fn a_refused_login_swallows_the_prefetch_and_asks_once() {
    let mut r = pf_rig();
    assert_eq!(
        r.says(b"a1 LOGIN bob wrong\r\n"),
        "a1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
    );
    let login = r.says(b"a2 LOGIN bob secret\r\n");
    assert!(login.starts_with("a2 OK"), "{login}");
    assert_eq!(r.says(b"a3 SELECT INBOX\r\n"), select_inbox_reply("a3"));
    assert_eq!(
        commands(&r),
        [
            "a1 LOGIN bob wrong\r\n",
            "xstraw.1 SELECT INBOX\r\n",
            "a2 LOGIN bob secret\r\n",
            "a3 SELECT INBOX\r\n"
        ]
    );
    assert!(r.fails.is_empty(), "{:?}", r.fails);
}

#[test]
fn selecting_another_mailbox_or_examine_just_replaces_the_prefetch() {
    for (cmd, reply) in [
        (
            "a2 SELECT Other\r\n",
            format!("{SELECT_OTHER}a2 OK [READ-WRITE] Select completed.\r\n"),
        ),
        (
            "a2 EXAMINE INBOX\r\n",
            format!("{SELECT_INBOX}a2 OK [READ-ONLY] Examine completed.\r\n"),
        ),
        (
            "a2 SELECT INBOX (CONDSTORE)\r\n",
            format!("{SELECT_INBOX}a2 OK [READ-WRITE] Select completed.\r\n"),
        ),
    ] {
        let mut r = pf_rig();
        r.says(b"a1 LOGIN bob secret\r\n");
        // An INBOX update still to come is not the new mailbox's.
        r.real.updates = b"* 3 EXISTS\r\n".to_vec();
        assert_eq!(r.says(b"a0 NOOP\r\n"), "a0 OK NOOP completed.\r\n");
        assert_eq!(r.says(cmd.as_bytes()), reply, "{cmd}");
        let c = commands(&r);
        assert_eq!(c[3], cmd);
        assert!(!c.iter().any(|c| c.contains("UNSELECT")), "{c:?}");
        r.send(b"a3 CLOSE\r\n");
        assert_eq!(r.prog_take(), "a3 OK Done.\r\n");
        assert!(r.fails.is_empty(), "{:?}", r.fails);
    }
}

#[test]
fn a_select_pipelined_behind_login_crosses_and_the_prefetch_is_swallowed() {
    let mut r = pf_rig();
    let got = r.says(b"a1 LOGIN bob secret\r\na2 SELECT INBOX\r\n");
    assert!(got.starts_with("a1 OK"), "{got}");
    assert!(got.ends_with(&select_inbox_reply("a2")), "{got}");
    assert_eq!(got.matches("EXISTS").count(), 1, "{got}");
    assert_eq!(
        commands(&r),
        [
            "a1 LOGIN bob secret\r\n",
            "xstraw.1 SELECT INBOX\r\n",
            "a2 SELECT INBOX\r\n"
        ]
    );
}

#[test]
fn close_before_any_select_unselects_first_and_never_expunges_inbox() {
    let mut r = pf_rig();
    r.says(b"a1 LOGIN bob secret\r\n");
    let o = r.client_takes(b"a2 CLOSE\r\n");
    assert_eq!(show(&o.to_tunnel), "xstraw.2 UNSELECT\r\n", "CLOSE waits");
    assert!(o.flush);
    assert_eq!(
        r.client.activity(),
        Some(crate::Activity::new("IMAP UNSELECT (straw)", 0, None))
    );
    r.take(o, true);
    r.pump();
    // The answer the server gives with no mailbox selected.
    assert_eq!(r.prog_take(), "a2 BAD No mailbox selected.\r\n");
    assert!(r.real.expunged.is_empty(), "{:?}", r.real.expunged);
    let c = commands(&r);
    assert_eq!(&c[2..], ["xstraw.2 UNSELECT\r\n", "a2 CLOSE\r\n"]);
    // The program's own SELECT crosses now, and its CLOSE acts.
    assert_eq!(r.says(b"a3 SELECT INBOX\r\n"), select_inbox_reply("a3"));
    assert_eq!(r.says(b"a4 CLOSE\r\n"), "a4 OK Done.\r\n");
    assert_eq!(r.real.expunged, ["INBOX"]);
    assert!(r.fails.is_empty(), "{:?}", r.fails);
    assert_eq!(
        r.client.stats().link_waits,
        5,
        "LOGIN, UNSELECT, CLOSE, SELECT, CLOSE"
    );
}

#[test]
fn close_pipelined_behind_login_waits_for_the_unselect_too() {
    let mut r = pf_rig();
    let got = r.says(b"a1 LOGIN bob secret\r\na2 CLOSE\r\n");
    assert!(
        got.ends_with("Logged in\r\na2 BAD No mailbox selected.\r\n"),
        "{got}"
    );
    assert!(r.real.expunged.is_empty());
    // A refused LOGIN: our SELECT and UNSELECT fail, and that is fine.
    let mut r = pf_rig();
    let got = r.says(b"a1 LOGIN bob wrong\r\na2 CLOSE\r\n");
    assert_eq!(
        got,
        "a1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\na2 BAD Error in IMAP command received by server.\r\n"
    );
    assert!(r.fails.is_empty(), "{:?}", r.fails);
}

#[test]
fn commands_meant_for_no_mailbox_get_an_unselect_pipelined_before_them() {
    let mut r = pf_rig();
    r.says(b"a1 LOGIN bob secret\r\n");
    let o = r.client_takes(b"a2 ENABLE QRESYNC\r\n");
    assert_eq!(
        show(&o.to_tunnel),
        "xstraw.2 UNSELECT\r\na2 ENABLE QRESYNC\r\n"
    );
    r.take(o, true);
    r.pump();
    assert_eq!(r.prog_take(), "a2 OK Enabled.\r\n");
    assert_eq!(r.says(b"a3 SELECT INBOX\r\n"), select_inbox_reply("a3"));
    assert!(r.fails.is_empty(), "{:?}", r.fails);
}

#[test]
fn a_refused_unselect_after_a_good_select_fails_the_connection() {
    let mut r = pf_rig();
    r.says(b"a1 LOGIN bob secret\r\n");
    // The server forgets the selection behind the pair's back.
    r.real.selected = None;
    r.send(b"a2 CLOSE\r\n");
    assert_eq!(r.prog_take(), "");
    assert!(r.fails[0].contains("refused UNSELECT"), "{:?}", r.fails);
    assert!(!commands(&r).contains(&"a2 CLOSE\r\n".to_string()));
}

#[test]
fn a_server_without_unselect_after_login_fails_rather_than_guess() {
    let mut r = pf_rig();
    r.real.post_caps = POST_CAPS.into();
    r.says(b"a1 LOGIN bob secret\r\n");
    assert!(
        r.puts.iter().any(|p| p.0 == AUTHED_CAPABILITY_KEY),
        "relearned"
    );
    // What needs no undoing still works.
    assert_eq!(r.says(b"a2 LIST \"\" *\r\n").matches("a2 OK").count(), 1);
    r.send(b"a3 CLOSE\r\n");
    assert!(
        r.fails[0].contains("no longer offers UNSELECT"),
        "{:?}",
        r.fails
    );
    assert!(r.real.expunged.is_empty());
}

#[test]
fn inbox_updates_while_held_reach_the_program_with_its_select() {
    let mut r = pf_rig();
    r.says(b"a1 LOGIN bob secret\r\n");
    r.real.updates = b"* 3 EXISTS\r\n* 1 RECENT\r\n* 1 FETCH (FLAGS (\\Seen))\r\n".to_vec();
    // Neither NOOP nor LIST shows an update about a mailbox not selected.
    assert_eq!(r.says(b"a2 NOOP\r\n"), "a2 OK NOOP completed.\r\n");
    assert_eq!(
        r.says(b"a3 LIST \"\" *\r\n"),
        "* LIST (\\HasNoChildren) \".\" INBOX\r\na3 OK List completed.\r\n"
    );
    assert_eq!(
        r.says(b"a4 SELECT INBOX\r\n"),
        format!(
            "{SELECT_INBOX}* 3 EXISTS\r\n* 1 RECENT\r\n* 1 FETCH (FLAGS (\\Seen))\r\na4 OK [READ-WRITE] Select completed.\r\n"
        )
    );
    // Once selected, updates pass.
    r.real.updates = b"* 4 EXISTS\r\n".to_vec();
    assert_eq!(
        r.says(b"a5 NOOP\r\n"),
        "* 4 EXISTS\r\na5 OK NOOP completed.\r\n"
    );
    assert_eq!(commands(&r).len(), 5, "a4 never crossed");
}

#[test]
fn an_oversized_prefetch_is_dropped_and_the_programs_select_crosses() {
    let mut r = pf_rig();
    let line = format!("* OK [X-PAD] {}\r\n", "x".repeat(100));
    let extra = line.repeat(PREFETCH_LINES);
    r.real.select_extra = extra.clone().into_bytes();
    r.says(b"a1 LOGIN bob secret\r\n");
    let got = r.says(b"a2 SELECT INBOX\r\n");
    assert_eq!(
        got,
        format!("{SELECT_INBOX}{extra}a2 OK [READ-WRITE] Select completed.\r\n")
    );
    assert_eq!(commands(&r)[2], "a2 SELECT INBOX\r\n");
    assert!(r.fails.is_empty(), "{:?}", r.fails);
    assert_eq!(r.client.stats().link_waits, 2);
}

/// Lines of 116 bytes: just over the 64 KiB kept.
const PREFETCH_LINES: usize = 580;

#[test]
fn logout_with_the_prefetch_unclaimed_is_answered_and_checked() {
    let mut r = pf_rig();
    r.says(b"a1 LOGIN bob secret\r\n");
    assert_eq!(
        r.says(b"a2 LOGOUT\r\n"),
        "* BYE Logging out\r\na2 OK Logout completed.\r\n"
    );
    assert!(r.fails.is_empty(), "{:?}", r.fails);
    assert!(!commands(&r).iter().any(|c| c.contains("UNSELECT")));
}

/// The bytes the client side gets from the server side for LOGIN and the
/// prefetch, a literal in the SELECT response included (a hostile server's
/// odd line), and what the program should get for its SELECT INBOX.
fn prefetch_stream() -> (Vec<u8>, String) {
    let mut real = FakeDovecot::new(false);
    real.post_caps = POST_CAPS_UNSELECT.into();
    real.select_extra = b"* OK [X-ODD] {5}\r\nhello\r\n".to_vec();
    let mut s = ServerAccel::default();
    let mut o = Output::default();
    s.from_local(&std::mem::take(&mut real.out), true, &mut o);
    let mut o = Output::default();
    s.from_tunnel(b"a1 LOGIN bob secret\r\nxstraw.1 SELECT INBOX\r\n", &mut o);
    real.feed(&o.to_local);
    let mut o = Output::default();
    s.from_local(&std::mem::take(&mut real.out), true, &mut o);
    let want = format!(
        "{SELECT_INBOX}* OK [X-ODD] {{5}}\r\nhello\r\na2 OK [READ-WRITE] Select completed.\r\n"
    );
    (o.to_tunnel, want)
}

#[test]
fn split_reads_at_every_byte_boundary_give_the_same_bytes() {
    let (down, want) = prefetch_stream();
    let login_end = down
        .windows(11)
        .position(|w| w == b"Logged in\r\n")
        .unwrap()
        + 11;
    let first_line_end = login_end + SELECT_INBOX.find("\r\n").unwrap() + 2;
    for k in 0..=down.len() {
        for bytewise in [false, true] {
            let mut c = ClientAccel::new(&unselect_cache());
            let mut o = Output::default();
            c.start(&mut o);
            c.from_tunnel(format!("{GREETING}\r\n").as_bytes(), &mut o);
            c.from_local(b"a1 LOGIN bob secret\r\n", true, &mut o);
            o.to_local.clear();
            let pieces: Vec<&[u8]> = if bytewise {
                std::iter::once(&down[..k])
                    .chain(down[k..].chunks(1))
                    .collect()
            } else {
                vec![&down[..k], &down[k..]]
            };
            let (mut mark, mut fed, mut waited) = (None, 0, false);
            for p in pieces {
                c.from_tunnel(p, &mut o);
                fed += p.len();
                // The program sends SELECT once it has LOGIN's OK.
                if mark.is_none() && o.to_local.ends_with(b"Logged in\r\n") {
                    mark = Some(o.to_local.len());
                    // Not one line of the prefetched response is in yet.
                    waited = fed < first_line_end;
                    c.from_local(b"a2 SELECT INBOX\r\n", true, &mut o);
                }
            }
            let mark = mark.expect("LOGIN's OK came");
            assert_eq!(o.fail, None, "k={k}");
            assert_eq!(show(&o.to_local[mark..]), want, "k={k} bytewise={bytewise}");
            assert_eq!(
                show(&o.to_tunnel),
                "a1 LOGIN bob secret\r\nxstraw.1 SELECT INBOX\r\n",
                "k={k}"
            );
            let s = c.stats();
            assert_eq!(s.link_waits, 1 + u64::from(waited), "k={k}");
            assert_eq!(s.local_replies, 2 - u64::from(waited), "k={k}");
            assert_eq!(c.activity(), None, "k={k}");
        }
    }
}

#[test]
fn prefetch_records_uidvalidity_like_a_program_select() {
    let store: crate::partial::SharedStore = std::sync::Arc::new(crate::partial::MemStore::new());
    for split in [false, true] {
        let mut r = pf_rig();
        r.client = ClientAccel::new(&unselect_cache()).with_store(store.clone());
        let mut o = Output::default();
        r.client.start(&mut o);
        r.client
            .from_tunnel(format!("{GREETING}\r\n").as_bytes(), &mut o);
        if split {
            // The program's SELECT comes before our SELECT's reply.
            let o = r.client_takes(b"a1 LOGIN bob secret\r\n");
            r.take(o, true);
            while !r.c2s.is_empty() || !r.real.out.is_empty() {
                r.hop();
            }
            let down = std::mem::take(&mut r.s2c);
            let cut = down
                .windows(11)
                .position(|w| w == b"Logged in\r\n")
                .unwrap()
                + 11;
            let mut o = Output::default();
            r.client.from_tunnel(&down[..cut], &mut o);
            r.client.from_local(b"a2 SELECT INBOX\r\n", true, &mut o);
            assert_eq!(r.client.mailbox, None, "not yet");
            r.client.from_tunnel(&down[cut..], &mut o);
            assert!(show(&o.to_local).ends_with(&select_inbox_reply("a2")));
        } else {
            login_then_select(&mut r);
        }
        assert_eq!(
            r.client.mailbox,
            Some(("INBOX".to_string(), 1)),
            "split={split}"
        );
        assert_eq!(r.client.user.as_deref(), Some("bob"));
    }
}

proptest! {
    #[test]
    fn hostile_bytes_after_a_prefetched_login_never_panic(
        data in proptest::collection::vec(any::<u8>(), 0..400),
        cut in 0usize..400,
        then in 0usize..4,
    ) {
        let mut c = ClientAccel::new(&unselect_cache());
        let mut o = Output::default();
        c.start(&mut o);
        c.from_local(b"a1 LOGIN bob secret\r\n", true, &mut o);
        let mut stream = format!("{GREETING}\r\na1 OK Logged in\r\n").into_bytes();
        stream.extend_from_slice(&data);
        let cut = cut.min(stream.len());
        c.from_tunnel(&stream[..cut], &mut o);
        let cmd: &[u8] = [
            &b"a2 SELECT INBOX\r\n"[..],
            b"a2 CLOSE\r\n",
            b"a2 NOOP\r\n",
            b"a2 EXAMINE INBOX\r\n",
        ][then];
        c.from_local(cmd, true, &mut o);
        c.from_tunnel(&stream[cut..], &mut o);
        c.from_tunnel(b"xstraw.1 OK done\r\nxstraw.2 NO no\r\n", &mut o);
    }
}

/// The server side holds LOGIN's tagged reply when straw's SELECT INBOX is
/// right behind it, until the SELECT's response starts: both leave in one
/// piece, whatever the session's cork (a fraction of a millisecond on a
/// fast link; tests/e2e/test_waits.py counted a SELECT wait at 512 kbit/s).
#[test]
fn server_side_holds_the_login_reply_until_the_prefetched_select_answers() {
    let mut s = ServerAccel::default();
    let mut o = Output::default();
    s.from_local(format!("{GREETING}\r\n").as_bytes(), true, &mut o);
    let mut o = Output::default();
    s.from_tunnel(b"a1 LOGIN bob secret\r\nxstraw.1 SELECT INBOX\r\n", &mut o);
    assert_eq!(
        o.to_local,
        b"a1 LOGIN bob secret\r\nxstraw.1 SELECT INBOX\r\n"
    );
    let mut o = Output::default();
    s.from_local(
        b"a1 OK [CAPABILITY IMAP4rev1 UNSELECT] Logged in\r\n",
        true,
        &mut o,
    );
    assert!(
        o.to_tunnel.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&o.to_tunnel)
    );
    assert!(!o.flush);
    s.from_local(b"* FLAGS (\\Seen)\r\n* 3 EXISTS\r\n", true, &mut o);
    assert_eq!(
        o.to_tunnel,
        b"a1 OK [CAPABILITY IMAP4rev1 UNSELECT] Logged in\r\n* FLAGS (\\Seen)\r\n* 3 EXISTS\r\n"
    );
    // A real server that closes instead: the held reply still goes.
    let mut s = ServerAccel::default();
    let mut o = Output::default();
    s.from_local(format!("{GREETING}\r\n").as_bytes(), true, &mut o);
    s.from_tunnel(b"a1 LOGIN bob secret\r\nxstraw.1 SELECT INBOX\r\n", &mut o);
    let mut o = Output::default();
    s.from_local(b"a1 OK Logged in\r\n", true, &mut o);
    s.local_eof(&mut o);
    assert_eq!(o.to_tunnel, b"a1 OK Logged in\r\n");
    assert!(o.flush);
}

// The conditional SELECT of a fresh install (UNSELECT not known yet).

/// A warm session whose post-login capabilities are not cached yet: the
/// client side asks for INBOX on condition.
fn cold_rig(post_caps: &str) -> Rig {
    let mut r = Rig::new(&warm_cache(), false);
    r.real.post_caps = post_caps.into();
    r.prog_take();
    r
}

#[test]
fn a_fresh_install_selects_ahead_once_logins_reply_shows_unselect() {
    let mut r = cold_rig(POST_CAPS_UNSELECT);
    let o = r.client_takes(b"a1 LOGIN bob secret\r\n");
    assert_eq!(
        show(&o.to_tunnel),
        "a1 LOGIN bob secret\r\nxstraw.1 XSTRAW-SELECT 1 INBOX\r\n"
    );
    r.take(o, true);
    // The server side keeps it until LOGIN's reply.
    let mut o = Output::default();
    r.server.from_tunnel(&std::mem::take(&mut r.c2s), &mut o);
    assert_eq!(show(&o.to_local), "a1 LOGIN bob secret\r\n");
    r.take(o, false);
    let flushes = r.flushes;
    r.pump();
    assert_eq!(
        r.flushes,
        flushes + 1,
        "LOGIN's reply leaves with the SELECT's"
    );
    let login = r.prog_take();
    assert!(login.starts_with("a1 OK [CAPABILITY "), "{login}");
    assert_eq!(
        commands(&r),
        ["a1 LOGIN bob secret\r\n", "xstraw.1 SELECT INBOX\r\n"]
    );
    let o = r.client_takes(b"a2 SELECT INBOX\r\n");
    assert!(o.to_tunnel.is_empty(), "nothing crosses");
    assert_eq!(show(&o.to_local), select_inbox_reply("a2"));
    assert_eq!(r.client.stats().link_waits, 1, "LOGIN only");
    assert!(r.fails.is_empty(), "{:?}", r.fails);
    // Learned for the next connection, which asks without condition.
    assert!(learned_authed_caps(&r).contains("UNSELECT"));
    assert!(next_login_sends(&r).ends_with("xstraw.1 SELECT INBOX\r\n"));
}

/// The post-login capability line `r`'s client side cached.
fn learned_authed_caps(r: &Rig) -> String {
    r.puts
        .iter()
        .find(|(k, _)| k == AUTHED_CAPABILITY_KEY)
        .map(|(_, v)| show(v))
        .expect("post-login capabilities cached")
}

/// What the next connection's client side sends for the program's LOGIN,
/// with what `r` cached.
fn next_login_sends(r: &Rig) -> String {
    let mut cache = warm_cache();
    cache.insert(
        AUTHED_CAPABILITY_KEY.into(),
        learned_authed_caps(r).into_bytes(),
    );
    let mut next = Rig::new(&cache, false);
    show(&next.client_takes(b"a1 LOGIN bob secret\r\n").to_tunnel)
}

#[test]
fn without_unselect_after_login_the_server_side_declines_and_nothing_is_selected() {
    let mut r = cold_rig(POST_CAPS);
    assert!(login_then_select(&mut r).ends_with("a2 OK [READ-WRITE] Select completed.\r\n"));
    assert_eq!(
        commands(&r),
        ["a1 LOGIN bob secret\r\n", "a2 SELECT INBOX\r\n"],
        "the real server never saw straw's SELECT"
    );
    // The program's CLOSE acts on its own selection: no UNSELECT, no failure.
    assert_eq!(r.says(b"a3 CLOSE\r\n"), "a3 OK Done.\r\n");
    assert_eq!(r.real.expunged, ["INBOX"]);
    assert_eq!(r.client.stats().link_waits, 3, "LOGIN, SELECT, CLOSE");
    assert!(r.fails.is_empty(), "{:?}", r.fails);
    // The list is cached now, and without UNSELECT the next login asks nothing.
    assert_eq!(next_login_sends(&r), "a1 LOGIN bob secret\r\n");
    assert!(!r.puts.iter().any(|(k, _)| k == COND_SELECT_DECLINED_KEY));
}

#[test]
fn the_conditional_select_keeps_commands_behind_it_in_order() {
    // A refused LOGIN: declined, and nothing is asked again.
    let mut r = cold_rig(POST_CAPS_UNSELECT);
    let got = r.says(b"a1 LOGIN bob wrong\r\na2 SELECT Other\r\n");
    assert_eq!(
        got,
        format!(
            "a1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\na2 BAD Error in IMAP command received by server.\r\n"
        )
    );
    assert_eq!(
        commands(&r),
        ["a1 LOGIN bob wrong\r\n", "a2 SELECT Other\r\n"]
    );
    // A program that pipelines another mailbox behind its LOGIN: straw's
    // SELECT goes first, the program's replaces it.
    let mut r = cold_rig(POST_CAPS_UNSELECT);
    let got = r.says(b"a1 LOGIN bob secret\r\na2 SELECT Other\r\n");
    assert!(
        got.ends_with(&format!(
            "{SELECT_OTHER}a2 OK [READ-WRITE] Select completed.\r\n"
        )),
        "{got}"
    );
    assert!(!got.contains("xstraw"), "{got}");
    assert_eq!(
        commands(&r),
        [
            "a1 LOGIN bob secret\r\n",
            "xstraw.1 SELECT INBOX\r\n",
            "a2 SELECT Other\r\n"
        ]
    );
    assert_eq!(r.says(b"a3 CLOSE\r\n"), "a3 OK Done.\r\n");
    assert_eq!(r.real.expunged, ["OTHER"]);
    assert!(r.fails.is_empty(), "{:?}", r.fails);
}

#[test]
fn a_conditional_select_out_of_place_or_malformed_is_declined() {
    for (cmd, note) in [
        ("xstraw.1 XSTRAW-SELECT 1 INBOX\r\n", true),
        ("a1 NOOP\r\nxstraw.1 XSTRAW-SELECT 1 INBOX\r\n", true),
        (
            "a1 LOGIN bob secret\r\nxstraw.1 XSTRAW-SELECT 2 Other\r\n",
            true,
        ),
        (
            "a1 LOGIN bob secret\r\nxstraw.1 XSTRAW-SELECT {3+}\r\nabc\r\n",
            true,
        ),
    ] {
        let mut s = ServerAccel::default();
        let mut o = Output::default();
        s.from_local(format!("{GREETING}\r\n").as_bytes(), true, &mut o);
        let mut o = Output::default();
        s.from_tunnel(cmd.as_bytes(), &mut o);
        assert!(!show(&o.to_local).contains("xstraw"), "{cmd:?}");
        assert!(
            show(&o.to_tunnel)
                .starts_with("xstraw.1 NO [XSTRAW-NOT-SELECTED] straw: not selected\r\n")
                || cmd.starts_with("a1 "),
            "{cmd:?}: {:?}",
            show(&o.to_tunnel)
        );
        assert_eq!(o.notes.is_empty(), !note, "{cmd:?}");
        assert!(o.fail.is_none(), "{cmd:?}");
    }
    // Behind LOGIN: the answer waits for LOGIN's reply, in reply order.
    let mut s = ServerAccel::default();
    let mut o = Output::default();
    s.from_local(format!("{GREETING}\r\n").as_bytes(), true, &mut o);
    let mut o = Output::default();
    s.from_tunnel(
        b"a1 LOGIN bob secret\r\nxstraw.1 XSTRAW-SELECT 1 INBOX\r\na2 NOOP\r\n",
        &mut o,
    );
    assert_eq!(
        show(&o.to_local),
        "a1 LOGIN bob secret\r\n",
        "the rest waits"
    );
    assert!(o.to_tunnel.is_empty());
    let mut o = Output::default();
    s.from_local(b"a1 OK Logged in\r\n", true, &mut o);
    assert_eq!(
        show(&o.to_tunnel),
        "a1 OK Logged in\r\nxstraw.1 NO [XSTRAW-NOT-SELECTED] straw: not selected\r\n",
        "no capability list: not selected"
    );
    assert!(o.flush);
    assert_eq!(show(&o.to_local), "a2 NOOP\r\n");
}

#[test]
fn an_older_server_side_passes_the_conditional_select_and_the_bad_is_swallowed() {
    let mut c = ClientAccel::new(&warm_cache());
    let mut o = Output::default();
    c.start(&mut o);
    c.from_tunnel(format!("{GREETING}\r\n").as_bytes(), &mut o);
    let mut o = Output::default();
    c.from_local(b"a1 LOGIN bob secret\r\n", true, &mut o);
    assert!(show(&o.to_tunnel).ends_with("xstraw.1 XSTRAW-SELECT 1 INBOX\r\n"));
    let mut o = Output::default();
    c.from_tunnel(
        b"a1 OK [CAPABILITY IMAP4rev1 UNSELECT] Logged in\r\n\
          xstraw.1 BAD Error in IMAP command XSTRAW-SELECT: Unknown command.\r\n",
        &mut o,
    );
    assert_eq!(
        show(&o.to_local),
        "a1 OK [CAPABILITY IMAP4rev1 UNSELECT LITERAL+] Logged in\r\n",
        "the BAD is swallowed"
    );
    let mut o = Output::default();
    c.from_local(b"a2 SELECT INBOX\r\n", true, &mut o);
    assert_eq!(
        show(&o.to_tunnel),
        "a2 SELECT INBOX\r\n",
        "the program's crosses"
    );
    assert!(o.fail.is_none());
}

#[test]
fn post_login_capabilities_ahead_of_logins_ok_count_too() {
    // Dovecot once the program asked CAPABILITY before LOGIN (straw's
    // client side checks its cached answer with the real server).
    let mut r = cold_rig(POST_CAPS_UNSELECT);
    r.real.caps_asked = Some(false);
    assert!(
        r.says(b"a0 CAPABILITY\r\n")
            .ends_with("a0 OK CAPABILITY completed\r\n")
    );
    let login = r.says(b"a1 LOGIN bob secret\r\n");
    assert!(
        login.starts_with("* CAPABILITY ") && login.ends_with("a1 OK Logged in\r\n"),
        "{login}"
    );
    assert_eq!(r.says(b"a2 SELECT INBOX\r\n"), select_inbox_reply("a2"));
    assert_eq!(
        commands(&r),
        [
            "a0 CAPABILITY\r\n",
            "a1 LOGIN bob secret\r\n",
            "xstraw.1 SELECT INBOX\r\n"
        ]
    );
    assert_eq!(r.client.stats().link_waits, 1, "LOGIN only");
    // The client side learned the post-login list from that line.
    let caps = learned_authed_caps(&r);
    assert!(caps.contains("UNSELECT") && caps.contains("MOVE"), "{caps}");
    // Without UNSELECT in that line: declined.
    let mut r = cold_rig(POST_CAPS);
    r.real.caps_asked = Some(false);
    r.says(b"a0 CAPABILITY\r\n");
    assert!(
        login_then_select_untagged(&mut r).ends_with("a2 OK [READ-WRITE] Select completed.\r\n")
    );
    assert!(!commands(&r).iter().any(|c| c.starts_with("xstraw")));
    assert!(r.fails.is_empty(), "{:?}", r.fails);
}

fn login_then_select_untagged(r: &mut Rig) -> String {
    let login = r.says(b"a1 LOGIN bob secret\r\n");
    assert!(login.ends_with("a1 OK Logged in\r\n"), "{login}");
    r.says(b"a2 SELECT INBOX\r\n")
}

#[test]
fn a_server_that_never_shows_its_capabilities_is_not_asked_again() {
    let mut r = cold_rig(POST_CAPS_UNSELECT);
    r.real.login_caps_hidden = true;
    let login = r.says(b"a1 LOGIN bob secret\r\n");
    assert_eq!(login, "a1 OK Logged in\r\n");
    assert_eq!(r.says(b"a2 SELECT INBOX\r\n"), select_inbox_reply("a2"));
    assert_eq!(
        commands(&r),
        ["a1 LOGIN bob secret\r\n", "a2 SELECT INBOX\r\n"],
        "declined: nothing to tell UNSELECT by"
    );
    assert!(r.fails.is_empty(), "{:?}", r.fails);
    let cache: Cache = warm_cache()
        .into_iter()
        .chain(r.puts.iter().cloned())
        .collect();
    assert!(cache.contains_key(COND_SELECT_DECLINED_KEY));
    let mut next = Rig::new(&cache, false);
    let o = next.client_takes(b"a1 LOGIN bob secret\r\n");
    assert_eq!(
        show(&o.to_tunnel),
        "a1 LOGIN bob secret\r\n",
        "not asked again"
    );
    // A refused login teaches nothing.
    let mut r = cold_rig(POST_CAPS_UNSELECT);
    r.real.login_caps_hidden = true;
    r.says(b"a1 LOGIN bob wrong\r\n");
    assert!(!r.puts.iter().any(|(k, _)| k == COND_SELECT_DECLINED_KEY));
}
