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
            "CAPABILITY" => self.reply(&[
                b"* CAPABILITY ",
                CAPS.as_bytes(),
                b"\r\n",
                t,
                b" OK Pre-login capabilities listed, post-login capabilities have more.\r\n",
            ]),
            "LOGIN" => self.reply(&[
                t,
                b" OK [CAPABILITY ",
                POST_CAPS.as_bytes(),
                b"] Logged in\r\n",
            ]),
            "SELECT" => self.reply(&[
                b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n* 2 EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY 1] UIDs valid\r\n",
                t,
                b" OK [READ-WRITE] Select completed.\r\n",
            ]),
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
            "NOOP" => self.reply(&[t, b" OK NOOP completed.\r\n"]),
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
        let mut r = Rig {
            client: ClientAccel::new(cache),
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
    assert!(r.puts.is_empty(), "nothing changed: {:?}", r.puts);
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
    // Server side flushed at each tagged reply (and the greeting).
    assert_eq!(r.flushes, 6);
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
    assert!(r.puts.is_empty(), "post-login caps are not cached");
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
    c.from_tunnel(b"a1 OK Logged in\r\n", &mut out);
    c.from_local(b"a2 FETCH 1 BODY[]\r\n", true, &mut out);
    out.clear();
    c.from_tunnel(b"* 1 FETCH (BODY[] {100}\r\nSubject: half", &mut out);
    assert!(out.fail.is_none(), "{:?}", out.fail);
    assert!(out.to_local.ends_with(b"half"));
    assert!(lost(&mut c).is_empty());
}
