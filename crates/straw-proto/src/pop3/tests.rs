//! The pair wired back to back with a scripted Dovecot-like server.

use super::*;
use crate::test_util::{FakeServer, Inbox, Wired, assert_ends_with, assert_text};
use proptest::prelude::*;

const GREETING: &[u8] = b"+OK Dovecot ready.\r\n";

/// A tiny Dovecot-like POP3 server.
#[derive(Debug, Clone)]
pub(crate) struct FakeDovecot {
    greeting: Vec<u8>,
    inbox: Inbox,
    user: Option<String>,
    authed: bool,
    sasl: bool,
    msgs: Vec<Vec<u8>>,
    deleted: Vec<bool>,
    /// Everything the real server received.
    seen: Vec<u8>,
    /// Saw a second command before answering the first (not lockstep).
    pipelined: bool,
}

fn stuff(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in msg.split_inclusive(|&b| b == b'\n') {
        if l.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(l);
    }
    out.extend_from_slice(b".\r\n");
    out
}

impl FakeServer for FakeDovecot {
    fn greeting(&self) -> &[u8] {
        &self.greeting
    }

    fn input(&mut self, data: &[u8]) -> Vec<u8> {
        self.seen.extend_from_slice(data);
        self.pipelined |= self.inbox.push(data);
        let mut out = Vec::new();
        while let Some(line) = self.inbox.next_line() {
            let line = String::from_utf8_lossy(text::trim_end(&line)).to_string();
            out.extend(self.command(&line));
        }
        out
    }
}

impl FakeDovecot {
    fn new(n: usize) -> Self {
        let msgs = (1..=n)
            .map(|i| {
                format!(
                    "From: a@example.org\r\nSubject: m{i}\r\n\r\nline one\r\n.leading dot\r\n..two dots\r\n.\r\nend {}\r\n",
                    "x".repeat(i * 50)
                )
                .into_bytes()
            })
            .collect();
        Self {
            greeting: GREETING.to_vec(),
            inbox: Inbox::default(),
            user: None,
            authed: false,
            sasl: false,
            msgs,
            deleted: vec![false; n],
            seen: Vec::new(),
            pipelined: false,
        }
    }

    fn live(&self) -> impl Iterator<Item = (usize, &Vec<u8>)> {
        self.msgs
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.deleted[*i])
            .map(|(i, m)| (i + 1, m))
    }

    fn msg(&self, arg: Option<&str>) -> Option<usize> {
        let n: usize = arg?.parse().ok()?;
        (n >= 1 && n <= self.msgs.len() && !self.deleted[n - 1]).then_some(n)
    }

    fn command(&mut self, line: &str) -> Vec<u8> {
        if std::mem::take(&mut self.sasl) {
            self.authed = true;
            return b"+OK Logged in.\r\n".to_vec();
        }
        let mut parts = line.split(' ');
        let cmd = parts.next().unwrap_or("").to_ascii_uppercase();
        let arg = parts.next();
        let s = |x: &str| x.as_bytes().to_vec();
        match (self.authed, cmd.as_str()) {
            (_, "CAPA") => s(
                "+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\nSTLS\r\nUSER\r\nSASL PLAIN LOGIN\r\n.\r\n",
            ),
            (_, "QUIT") => s("+OK Logging out.\r\n"),
            (false, "USER") => {
                if arg == Some("nobody") {
                    return s("-ERR [AUTH] No such user.\r\n");
                }
                self.user = arg.map(String::from);
                s("+OK\r\n")
            }
            (false, "PASS") => {
                if self.user.take().as_deref() == Some("bob") && arg == Some("secret") {
                    self.authed = true;
                    s("+OK Logged in.\r\n")
                } else {
                    s("-ERR [AUTH] Authentication failed.\r\n")
                }
            }
            (false, "AUTH") if arg == Some("PLAIN") => {
                self.sasl = true;
                s("+ \r\n")
            }
            (false, _) => s("-ERR Unknown command.\r\n"),
            (true, "STAT") => {
                let (n, sz) = self
                    .live()
                    .fold((0, 0), |(n, sz), (_, m)| (n + 1, sz + m.len()));
                s(&format!("+OK {n} {sz}\r\n"))
            }
            (true, "LIST") | (true, "UIDL") => {
                let row = |i: usize, m: &Vec<u8>| {
                    if cmd == "LIST" {
                        format!("{i} {}", m.len())
                    } else {
                        format!("{i} uid-{i}")
                    }
                };
                match arg {
                    Some(a) => match self.msg(Some(a)) {
                        Some(i) => s(&format!("+OK {}\r\n", row(i, &self.msgs[i - 1]))),
                        None => s("-ERR There's no message.\r\n"),
                    },
                    None => {
                        let mut o = format!("+OK {} messages:\r\n", self.live().count());
                        for (i, m) in self.live() {
                            o += &format!("{}\r\n", row(i, m));
                        }
                        o += ".\r\n";
                        s(&o)
                    }
                }
            }
            (true, "RETR") | (true, "TOP") => match self.msg(arg) {
                Some(i) => {
                    let m = &self.msgs[i - 1];
                    let mut o = format!("+OK {} octets\r\n", m.len()).into_bytes();
                    o.extend(stuff(m));
                    o
                }
                None => s("-ERR There's no message 99.\r\n"),
            },
            (true, "DELE") => match self.msg(arg) {
                Some(i) => {
                    self.deleted[i - 1] = true;
                    s("+OK Marked to be deleted.\r\n")
                }
                None => s("-ERR There's no message.\r\n"),
            },
            (true, "RSET") => {
                self.deleted.iter_mut().for_each(|d| *d = false);
                s("+OK\r\n")
            }
            (true, "NOOP") => s("+OK\r\n"),
            _ => s("-ERR Unknown command.\r\n"),
        }
    }
}

/// Program ↔ client accel ⇄ server accel ↔ fake Dovecot, run synchronously.
type Rig = Wired<ClientAccel, ServerAccel, FakeDovecot>;

impl Rig {
    fn new(cfg: Pop3Config, cache: &Cache, real: FakeDovecot) -> Self {
        Self::with_store(cfg, cache, real, None)
    }

    fn with_store(
        cfg: Pop3Config,
        cache: &Cache,
        real: FakeDovecot,
        store: Option<crate::partial::SharedStore>,
    ) -> Self {
        let c = ClientAccel::new(cfg, cache);
        let c = match store {
            Some(s) => c.with_store(s),
            None => c,
        };
        Rig::wire(c, ServerAccel::new(), real)
    }
}

/// What a program talking straight to the server would see.
fn direct(mut real: FakeDovecot, steps: &[&[u8]]) -> Vec<u8> {
    let mut saw = real.greeting.clone();
    for s in steps {
        saw.extend(real.input(s));
    }
    saw
}

fn session() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = [
        "USER bob\r\n",
        "PASS secret\r\n",
        "STAT\r\n",
        "UIDL\r\n",
        "LIST\r\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    for i in 1..=10 {
        v.push(format!("RETR {i}\r\n").into_bytes());
    }
    v.push(b"QUIT\r\n".to_vec());
    v
}

fn warm() -> Cache {
    let mut c = Cache::new();
    c.insert(GREETING_KEY.into(), GREETING.to_vec());
    c
}

const PF: Pop3Config = Pop3Config {
    prefetch: true,
    prefetch_retr_max_bytes: 0,
    prefetch_retr_depth: 1,
    prefetch_first: false,
};

#[test]
fn pop3_cold_then_warm_session_is_exact_and_waits_at_most_12() {
    let steps = session();
    let refs: Vec<&[u8]> = steps.iter().map(|s| s.as_slice()).collect();
    let expected = direct(FakeDovecot::new(10), &refs);

    let mut cold = Rig::new(PF, &Cache::new(), FakeDovecot::new(10));
    for s in &steps {
        cold.send(s);
    }
    assert_text(&cold.program_saw, &expected);
    assert!(cold.fails.is_empty(), "{:?}", cold.fails);
    assert_eq!(
        cold.c.stats().link_waits,
        12,
        "greeting + PASS + 10 RETR (QUIT without DELE is local)"
    );
    let cache = cold.cache();
    assert_eq!(cache.get(GREETING_KEY).unwrap(), GREETING);

    let mut rig = Rig::new(PF, &cache, FakeDovecot::new(10));
    assert_eq!(
        rig.program_saw, GREETING,
        "greeting served before the real one"
    );
    for s in &steps {
        rig.send(s);
    }
    assert_text(&rig.program_saw, &expected);
    assert!(rig.fails.is_empty(), "{:?}", rig.fails);
    let st = rig.c.stats();
    assert!(st.link_waits <= 12, "waits {}", st.link_waits);
    assert_eq!(st.link_waits, 11, "PASS + 10 RETR");
    assert_eq!(
        st.local_replies, 6,
        "greeting, USER, STAT, UIDL, LIST, QUIT"
    );
    let mut want = b"USER bob\r\nPASS secret\r\nSTAT\r\nUIDL\r\nLIST\r\n".to_vec();
    for i in 1..=10 {
        want.extend(format!("RETR {i}\r\n").bytes());
    }
    want.extend(b"QUIT\r\n");
    assert_eq!(
        rig.real.seen, want,
        "STAT/UIDL/LIST asked once, by the prefetch"
    );
    assert!(!rig.real.pipelined, "server side runs lockstep");
    assert!(rig.tunnel_bulk, "RETR replies are bulk");
    assert!(rig.puts.is_empty(), "nothing changed: no cache writes");
}

#[test]
fn pop3_without_prefetch_forwards_stat() {
    let mut rig = Rig::new(Pop3Config::default(), &warm(), FakeDovecot::new(2));
    rig.send(b"USER bob\r\n");
    rig.send(b"PASS secret\r\n");
    assert!(rig.send(b"STAT\r\n").starts_with(b"+OK 2 "));
    assert_eq!(rig.real.seen, b"USER bob\r\nPASS secret\r\nSTAT\r\n");
    assert_eq!(rig.c.stats().link_waits, 2);
}

#[test]
fn pop3_greeting_text_change_is_tolerated_and_cached() {
    let mut cache = warm();
    cache.insert(GREETING_KEY.into(), b"+OK old text.\r\n".to_vec());
    let rig = Rig::new(PF, &cache, FakeDovecot::new(1));
    assert_eq!(rig.program_saw, b"+OK old text.\r\n");
    assert!(rig.fails.is_empty());
    assert_eq!(
        rig.puts,
        vec![(GREETING_KEY.to_string(), GREETING.to_vec())]
    );
}

#[test]
fn pop3_greeting_now_err_fails_and_is_cached() {
    let mut real = FakeDovecot::new(1);
    real.greeting = b"-ERR [SYS/TEMP] Maintenance.\r\n".to_vec();
    let rig = Rig::new(PF, &warm(), real);
    assert_eq!(rig.fails.len(), 1);
    assert!(rig.fails[0].contains("Maintenance"), "{}", rig.fails[0]);
}

#[test]
fn pop3_apop_greeting_is_never_served_from_cache() {
    let apop = b"+OK Dovecot ready. <1896.697170952@dbc.mtview.ca.us>\r\n".to_vec();
    // Cold: the APOP greeting passes, and the cache learns not to serve one.
    let mut real = FakeDovecot::new(1);
    real.greeting = apop.clone();
    let rig = Rig::new(PF, &Cache::new(), real.clone());
    assert_eq!(rig.program_saw, apop);
    assert!(rig.fails.is_empty());
    assert_eq!(rig.puts, vec![(GREETING_KEY.to_string(), Vec::new())]);
    // A cached APOP greeting (or an empty entry) is never served.
    for cached in [apop.clone(), Vec::new()] {
        let mut cache = Cache::new();
        cache.insert(GREETING_KEY.into(), cached);
        let mut c = ClientAccel::new(PF, &cache);
        let mut o = Output::default();
        c.start(&mut o);
        assert!(o.to_local.is_empty());
        assert_eq!(c.stats().link_waits, 1);
    }
    // Served a plain cached greeting but the server now uses APOP: fail.
    let rig = Rig::new(PF, &warm(), real);
    assert_eq!(rig.fails.len(), 1, "{:?}", rig.fails);
    assert!(rig.fails[0].contains("APOP"));
    assert_eq!(rig.puts, vec![(GREETING_KEY.to_string(), Vec::new())]);
}

#[test]
fn pop3_failed_pass_is_the_real_reply_and_prefetch_is_dropped() {
    let steps: [&[u8]; 5] = [
        b"USER bob\r\n",
        b"PASS wrong\r\n",
        b"USER bob\r\n",
        b"PASS secret\r\n",
        b"STAT\r\n",
    ];
    let expected = direct(FakeDovecot::new(3), &steps);
    let mut rig = Rig::new(PF, &warm(), FakeDovecot::new(3));
    assert_eq!(rig.send(steps[0]), b"+OK\r\n");
    assert_eq!(
        rig.send(steps[1]),
        b"-ERR [AUTH] Authentication failed.\r\n"
    );
    for s in &steps[2..] {
        rig.send(s);
    }
    assert_text(&rig.program_saw, &expected);
    // STAT after the second login is asked for real: the prefetch was made
    // before it and is never reused.
    assert_ends_with(&rig.real.seen, b"USER bob\r\nPASS secret\r\nSTAT\r\n");
    assert!(rig.fails.is_empty());
}

#[test]
fn pop3_rejected_user_shows_as_failed_pass() {
    let mut rig = Rig::new(PF, &warm(), FakeDovecot::new(1));
    assert_eq!(rig.send(b"USER nobody\r\n"), b"+OK\r\n");
    assert_eq!(rig.send(b"PASS x\r\n"), b"-ERR [AUTH] No such user.\r\n");
    assert!(rig.fails.is_empty());
    // USER rejected and no PASS behind it: straw's +OK was a lie: fail.
    let mut rig = Rig::new(PF, &warm(), FakeDovecot::new(1));
    rig.send(b"USER nobody\r\n");
    rig.send(b"NOOP\r\n");
    assert_eq!(rig.fails.len(), 1);
}

#[test]
fn pop3_capa_drops_stls_keeps_pipelining_and_stls_is_refused_locally() {
    let mut rig = Rig::new(PF, &warm(), FakeDovecot::new(1));
    let capa = rig.send(b"CAPA\r\n");
    assert_text(
        &capa,
        b"+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\nUSER\r\nSASL PLAIN LOGIN\r\n.\r\n",
    );
    assert_eq!(
        rewrite_capa(b"+OK\r\nSTLS\r\nUSER\r\n.\r\n"),
        b"+OK\r\nUSER\r\nPIPELINING\r\n.\r\n"
    );
    assert!(rig.send(b"STLS\r\n").starts_with(b"-ERR"));
    assert_eq!(rig.real.seen, b"CAPA\r\n", "STLS never reaches the server");
}

#[test]
fn pop3_dele_invalidates_prefetched_lists() {
    let steps: [&[u8]; 6] = [
        b"USER bob\r\n",
        b"PASS secret\r\n",
        b"STAT\r\n",
        b"DELE 1\r\n",
        b"STAT\r\n",
        b"LIST\r\n",
    ];
    let mut rig = Rig::new(PF, &warm(), FakeDovecot::new(3));
    for s in &steps {
        rig.send(s);
    }
    assert_text(&rig.program_saw, &direct(FakeDovecot::new(3), &steps));
    assert_ends_with(&rig.real.seen, b"LIST\r\nDELE 1\r\nSTAT\r\nLIST\r\n");
}

#[test]
fn pop3_auth_plain_continuation_is_opaque() {
    // "UIDL" is valid base64: as a SASL response it must not be read as a command.
    let steps: [&[u8]; 3] = [b"AUTH PLAIN\r\n", b"UIDL\r\n", b"STAT\r\n"];
    let mut rig = Rig::new(PF, &warm(), FakeDovecot::new(2));
    for s in &steps {
        rig.send(s);
    }
    assert_text(&rig.program_saw, &direct(FakeDovecot::new(2), &steps));
    assert!(rig.fails.is_empty());
}

#[test]
fn pop3_retr_streams_before_it_is_complete() {
    let mut c = ClientAccel::new(PF, &warm());
    let mut o = Output::default();
    c.start(&mut o);
    c.from_tunnel(GREETING, &mut o);
    c.from_local(b"RETR 1\r\n", true, &mut o);
    assert_eq!(o.to_tunnel, b"RETR 1\r\n");
    assert!(o.flush);
    o.clear();
    c.from_tunnel(b"+OK 9 octets\r\nSubj", &mut o);
    assert_eq!(o.to_local, b"+OK 9 octets\r\nSubj");
    o.clear();
    c.from_tunnel(b"ect\r\n\r\n.\r", &mut o);
    assert_eq!(o.to_local, b"ect\r\n\r\n.\r");
    o.clear();
    c.from_tunnel(b"\n", &mut o);
    assert_eq!(o.to_local, b"\n");
    assert_eq!(c.stats().link_waits, 1);
    // The server side marks RETR bulk and flushes at the end of the reply.
    let mut s = ServerAccel::new();
    let mut o = Output::default();
    s.from_local(GREETING, true, &mut o);
    s.from_tunnel(b"RETR 1\r\nNOOP\r\n", &mut o);
    assert_eq!(o.to_local, b"RETR 1\r\n", "lockstep");
    o.clear();
    s.from_local(b"+OK 9 octets\r\nab", false, &mut o);
    assert!(o.bulk && !o.flush);
    o.clear();
    s.from_local(b"c\r\n.\r\n", false, &mut o);
    assert!(o.flush);
    assert_eq!(o.to_local, b"NOOP\r\n", "next command after the full reply");
    assert_eq!(s.stats().link_waits_saved, 1, "NOOP came with RETR");
}

#[test]
fn pop3_program_leaving_mid_reply_abandons_the_stream() {
    let mid_retr = || {
        let mut c = ClientAccel::new(PF, &warm());
        let mut o = Output::default();
        c.start(&mut o);
        c.from_tunnel(GREETING, &mut o);
        c.from_local(b"RETR 1\r\n", true, &mut o);
        c.from_tunnel(b"+OK 300000 octets\r\nSubj", &mut o);
        c
    };
    // Closed mid-RETR without QUIT: nobody will read the rest.
    let mut c = mid_retr();
    let mut o = Output::default();
    c.local_eof(&mut o);
    assert!(o.abandoned);
    // QUIT first, nothing deleted: the QUIT commits nothing, and the rest
    // of the RETR is read by no one: stopped too.
    let mut c = mid_retr();
    let mut o = Output::default();
    c.from_local(b"QUIT\r\n", true, &mut o);
    o.clear();
    c.local_eof(&mut o);
    assert!(o.abandoned);
    // A DELE before QUIT: the QUIT must reach the real server (it commits
    // the deletion), so the end of input is a goodbye, not a reset.
    let mut c = mid_retr();
    let mut o = Output::default();
    c.from_local(b"DELE 2\r\nQUIT\r\n", true, &mut o);
    o.clear();
    c.local_eof(&mut o);
    assert!(!o.abandoned);
    // Nothing on its way: a plain end of input.
    let mut c = ClientAccel::new(PF, &warm());
    let mut o = Output::default();
    c.start(&mut o);
    c.from_tunnel(GREETING, &mut o);
    o.clear();
    c.local_eof(&mut o);
    assert!(!o.abandoned);
}

#[test]
fn pop3_garbage_and_oversized_lines_fail_cleanly() {
    let mut c = ClientAccel::new(PF, &warm());
    let mut o = Output::default();
    c.start(&mut o);
    c.from_local(&vec![b'A'; MAX_LINE + 10], false, &mut o);
    assert!(o.fail.as_deref().unwrap().contains("longer"));

    let mut c = ClientAccel::new(PF, &warm());
    let mut o = Output::default();
    c.start(&mut o);
    c.from_tunnel(b"HTTP/1.1 400 Bad\r\n", &mut o);
    assert!(o.fail.is_some());
    let mut o = Output::default();
    c.from_tunnel(b"+OK more\r\n", &mut o);
    c.from_local(b"NOOP\r\n", true, &mut o);
    assert!(
        o.to_local.is_empty() && o.to_tunnel.is_empty(),
        "dead after failing"
    );

    let mut s = ServerAccel::new();
    let mut o = Output::default();
    s.from_local(GREETING, true, &mut o);
    s.from_local(b"-ERR Disconnected for inactivity.\r\n", true, &mut o);
    assert!(o.fail.is_some(), "unasked reply");
    let mut s = ServerAccel::new();
    let mut o = Output::default();
    s.from_local(&vec![b'+'; MAX_LINE + 1], true, &mut o);
    assert!(o.fail.is_some());
    let mut s = ServerAccel::new();
    let mut o = Output::default();
    s.from_tunnel(&vec![b'x'; MAX_LINE + 1], &mut o);
    s.from_local(GREETING, true, &mut o);
    assert!(o.fail.is_some());
}

#[test]
fn pop3_program_pipelining_everything_at_once() {
    let steps = session();
    let refs: Vec<&[u8]> = steps.iter().map(|s| s.as_slice()).collect();
    let all: Vec<u8> = steps.concat();
    let mut rig = Rig::new(PF, &warm(), FakeDovecot::new(10));
    rig.send(&all);
    assert_text(&rig.program_saw, &direct(FakeDovecot::new(10), &refs));
    assert!(!rig.real.pipelined);
    assert_eq!(rig.c.stats().link_waits, 1, "one batch, one wait");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn pop3_any_split_of_the_program_stream_gives_the_same_result(
        cuts in proptest::collection::vec(0usize..400, 0..12)
    ) {
        let steps = session();
        let refs: Vec<&[u8]> = steps.iter().map(|s| s.as_slice()).collect();
        let all: Vec<u8> = steps.concat();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % all.len()).collect();
        cuts.sort();
        let mut rig = Rig::new(PF, &warm(), FakeDovecot::new(10));
        let mut last = 0;
        for c in cuts.into_iter().chain([all.len()]) {
            rig.send(&all[last..c]);
            last = c;
        }
        prop_assert_eq!(&rig.program_saw, &direct(FakeDovecot::new(10), &refs));
        let mut want = b"USER bob\r\nPASS secret\r\nSTAT\r\nUIDL\r\nLIST\r\n".to_vec();
        for i in 1..=10 {
            want.extend(format!("RETR {i}\r\n").bytes());
        }
        want.extend(b"QUIT\r\n");
        prop_assert_eq!(&rig.real.seen, &want);
        prop_assert!(rig.fails.is_empty());
    }
}

#[test]
fn pop3_batch_replies_cross_together() {
    // The login batch's replies (USER, PASS, prefetched STAT/UIDL/LIST)
    // leave the server side as one unit, so the program never waits on a
    // reply that is already on its way.
    let mut s = ServerAccel::new();
    let mut o = Output::default();
    s.from_local(GREETING, true, &mut o);
    o.clear();
    s.from_tunnel(b"USER a\r\nPASS b\r\nSTAT\r\nUIDL\r\nLIST\r\n", &mut o);
    assert_eq!(o.to_local, b"USER a\r\n");
    let replies: [&[u8]; 5] = [
        b"+OK\r\n",
        b"+OK Logged in.\r\n",
        b"+OK 1 10\r\n",
        b"+OK\r\n1 x\r\n.\r\n",
        b"+OK 1 messages:\r\n1 10\r\n.\r\n",
    ];
    let mut crossed = Vec::new();
    for (i, r) in replies.iter().enumerate() {
        o.clear();
        s.from_local(r, true, &mut o);
        crossed.extend_from_slice(&o.to_tunnel);
        if i < replies.len() - 1 {
            assert!(o.to_tunnel.is_empty() && !o.flush, "reply {i} left alone");
        } else {
            assert!(o.flush);
        }
    }
    assert_eq!(crossed, replies.concat());
}

// ---------------------------------------------------------------- link lost

fn lost(c: &mut ClientAccel) -> Vec<u8> {
    let mut out = Output::default();
    Accelerator::link_lost(c, &mut out);
    out.to_local
}

fn logged_in() -> ClientAccel {
    let mut c = ClientAccel::new(
        Pop3Config {
            prefetch: false,
            prefetch_retr_max_bytes: 0,
            prefetch_retr_depth: 1,
            prefetch_first: false,
        },
        &Cache::new(),
    );
    let mut out = Output::default();
    c.start(&mut out);
    c.from_tunnel(GREETING, &mut out);
    assert_eq!(out.to_local, GREETING);
    out.clear();
    c.from_local(b"USER bob\r\nPASS x\r\n", true, &mut out);
    c.from_tunnel(b"+OK\r\n+OK Logged in.\r\n", &mut out);
    assert!(out.fail.is_none());
    c
}

#[test]
fn link_lost_waiting_for_a_reply_is_err() {
    let mut c = logged_in();
    let mut out = Output::default();
    c.from_local(b"DELE 1\r\n", true, &mut out);
    assert!(out.to_local.is_empty());
    assert_eq!(lost(&mut c), LINK_LOST);
    // A reply arriving late is not shown after the -ERR.
    c.from_tunnel(b"+OK deleted\r\n", &mut out);
    assert!(out.to_local.is_empty());
}

#[test]
fn link_lost_mid_retr_just_closes() {
    let mut c = logged_in();
    let mut out = Output::default();
    c.from_local(b"RETR 1\r\n", true, &mut out);
    c.from_tunnel(b"+OK 300 octets\r\nFrom: a\r\n\r\nfirst line\r\n", &mut out);
    assert!(!out.to_local.is_empty(), "RETR streams");
    assert!(!out.to_local.ends_with(b".\r\n"));
    // No -ERR inside the message, and no terminating dot either.
    assert!(lost(&mut c).is_empty());
}

#[test]
fn link_lost_between_commands_is_err() {
    let mut c = logged_in();
    assert_eq!(lost(&mut c), LINK_LOST);
}

// ------------------------------------------------------- message resume

use crate::partial::{MemStore, PartialStore, SharedStore};
use std::sync::Arc;

/// A ~40 KB message with dot-stuffed lines, as message 1 of three.
fn big_server(variant: u8) -> FakeDovecot {
    let mut real = FakeDovecot::new(3);
    let mut m = b"From: a@example.org\r\nSubject: big\r\n\r\n".to_vec();
    for i in 0..1000 {
        m.extend(format!(".line {i} of the big message, variant {variant}\r\n").as_bytes());
    }
    real.msgs[0] = m;
    real
}

/// The program's bytes for a login and `RETR 1` straight to the server.
fn direct_retr(real: FakeDovecot, login: &[&[u8]]) -> Vec<u8> {
    let mut steps = login.to_vec();
    steps.push(b"RETR 1\r\n");
    direct(real, &steps)
}

const LOGIN: [&[u8]; 2] = [b"USER bob\r\n", b"PASS secret\r\n"];

/// First attempt: log in, `RETR 1`, and the link dies after `keep` bytes of
/// the server side's reply stream reached the client side. Returns what
/// the program saw.
fn cut_attempt(cfg: Pop3Config, real: FakeDovecot, store: &SharedStore, keep: usize) -> Vec<u8> {
    let mut r = Rig::with_store(cfg, &warm(), real, Some(store.clone()));
    for l in LOGIN {
        r.send(l);
    }
    let mut o = Output::default();
    r.c.from_local(b"RETR 1\r\n", true, &mut o);
    let mut s2c = Vec::new();
    let mut so = Output::default();
    r.s.from_tunnel(&std::mem::take(&mut o.to_tunnel), &mut so);
    r.serve(so, &mut s2c);
    assert!(s2c.len() > keep, "reply shorter than the cut point");
    r.c.from_tunnel(&s2c[..keep], &mut o);
    r.collect(&mut o);
    let mut o = Output::default();
    r.c.link_lost(&mut o);
    r.collect(&mut o);
    assert!(r.fails.is_empty(), "{:?}", r.fails);
    r.program_saw
}

/// A fresh pair with `store`: log in, `RETR 1`; returns the rig and the
/// bytes the server side sent for the RETR.
fn second_attempt(
    cfg: Pop3Config,
    real: FakeDovecot,
    store: &SharedStore,
    login: &[&[u8]],
) -> (Rig, usize) {
    second_attempt_chunked(cfg, real, store, login, usize::MAX)
}

/// As [`second_attempt`], the server side's bytes arriving `chunk` at a time.
fn second_attempt_chunked(
    cfg: Pop3Config,
    real: FakeDovecot,
    store: &SharedStore,
    login: &[&[u8]],
    chunk: usize,
) -> (Rig, usize) {
    let mut r = Rig::with_store(cfg, &warm(), real, Some(store.clone()));
    r.server_chunk = chunk;
    for l in login {
        r.send(l);
    }
    let mut o = Output::default();
    r.c.from_local(b"RETR 1\r\n", true, &mut o);
    // Carry by hand, counting what crosses towards the client.
    let mut down = 0;
    loop {
        r.collect(&mut o);
        let up = std::mem::take(&mut o.to_tunnel);
        if up.is_empty() {
            break;
        }
        let mut so = Output::default();
        r.s.from_tunnel(&up, &mut so);
        let mut s2c = Vec::new();
        r.serve(so, &mut s2c);
        down += s2c.len();
        for piece in s2c.chunks(chunk) {
            r.c.from_tunnel(piece, &mut o);
        }
    }
    (r, down)
}

fn mem() -> (Arc<MemStore>, SharedStore) {
    let m = Arc::new(MemStore::new());
    let s: SharedStore = m.clone();
    (m, s)
}

#[test]
fn retr_resume_sends_only_the_rest_and_is_exact() {
    let (mem, store) = mem();
    let full = direct_retr(big_server(0), &LOGIN);
    let saw = cut_attempt(PF, big_server(0), &store, 20_000);
    assert!(full.starts_with(&saw) && saw.len() > 10_000);
    assert!(!saw.ends_with(b"\r\n.\r\n"), "no terminator after a cut");
    let key = resume::key("bob", "uid-1");
    let kept = mem.get(&key).expect("partial kept");
    assert!(kept.len() > 10_000);

    let (r, down) = second_attempt(PF, big_server(0), &store, &LOGIN);
    assert_text(&r.program_saw, &full);
    assert!(r.fails.is_empty(), "{:?}", r.fails);
    let body_len = stuff(&big_server(0).msgs[0]).len();
    assert!(
        down < body_len - kept.len() + 200,
        "{down} bytes crossed for {} missing",
        body_len - kept.len()
    );
    assert!(mem.is_empty(), "partial deleted once complete");
    let st = r.s.stats();
    assert_eq!(st.message_resumes, 1);
    assert_eq!(st.message_resume_bytes, kept.len() as u64, "{st:?}");
}

#[test]
fn retr_resume_with_changed_prefix_falls_back_to_full() {
    let (mem, store) = mem();
    cut_attempt(PF, big_server(0), &store, 20_000);
    let full = direct_retr(big_server(1), &LOGIN);
    let (r, down) = second_attempt(PF, big_server(1), &store, &LOGIN);
    assert_text(&r.program_saw, &full);
    assert!(down > stuff(&big_server(1).msgs[0]).len());
    assert!(mem.is_empty());
    assert_eq!(
        r.s.stats().message_resumes,
        0,
        "a changed message is no resume"
    );
}

#[test]
fn retr_resume_without_prefetch_asks_uidl_first() {
    let cfg = Pop3Config {
        prefetch: false,
        prefetch_retr_max_bytes: 0,
        prefetch_retr_depth: 1,
        prefetch_first: false,
    };
    let (mem, store) = mem();
    let full = direct_retr(big_server(0), &LOGIN);
    let saw = cut_attempt(cfg, big_server(0), &store, 15_000);
    assert!(full.starts_with(&saw));
    let kept = mem
        .get(&resume::key("bob", "uid-1"))
        .expect("keyed by our own UIDL 1");
    let (r, down) = second_attempt(cfg, big_server(0), &store, &LOGIN);
    assert_text(&r.program_saw, &full);
    let missing = stuff(&big_server(0).msgs[0]).len() - kept.len();
    assert!(down < missing + 200, "{down} for {missing}");
    assert!(mem.is_empty());
    // The real server saw our UIDL 1 each time, never the private line.
    let seen = String::from_utf8_lossy(&r.real.seen).into_owned();
    assert!(seen.contains("UIDL 1\r\nRETR 1\r\n"), "{seen}");
    assert!(!seen.contains("XSTRAW"), "{seen}");
}

#[test]
fn retr_resume_uses_the_programs_uidl_listing() {
    let cfg = Pop3Config {
        prefetch: false,
        prefetch_retr_max_bytes: 0,
        prefetch_retr_depth: 1,
        prefetch_first: false,
    };
    let (mem, store) = mem();
    cut_attempt(cfg, big_server(0), &store, 15_000);
    let kept = mem.get(&resume::key("bob", "uid-1")).unwrap();
    let login: [&[u8]; 3] = [b"USER bob\r\n", b"PASS secret\r\n", b"UIDL\r\n"];
    let full = direct_retr(big_server(0), &login);
    let (r, down) = second_attempt(cfg, big_server(0), &store, &login);
    assert_text(&r.program_saw, &full);
    let missing = stuff(&big_server(0).msgs[0]).len() - kept.len();
    assert!(down < missing + 300, "{down} for {missing}");
    let seen = String::from_utf8_lossy(&r.real.seen).into_owned();
    assert!(!seen.contains("UIDL 1"), "UIDL already known: {seen}");
}

#[test]
fn retr_resume_against_an_old_server_side_is_a_full_transfer() {
    // An older server side passes the private line to the real server.
    let (_mem, store) = mem();
    cut_attempt(PF, big_server(0), &store, 15_000);
    let mut c = ClientAccel::new(PF, &warm()).with_store(store.clone());
    let mut real = big_server(0);
    let mut saw = Vec::new();
    let mut o = Output::default();
    c.start(&mut o);
    let mut input: Vec<&[u8]> = LOGIN.to_vec();
    input.push(b"RETR 1\r\n");
    input.push(b"RETR 1\r\n");
    let greet = real.greeting.clone();
    c.from_tunnel(&greet, &mut o);
    for l in input {
        c.from_local(l, true, &mut o);
        let up = std::mem::take(&mut o.to_tunnel);
        let down = real.input(&up);
        c.from_tunnel(&down, &mut o);
        saw.append(&mut o.to_local);
        assert!(o.fail.is_none(), "{:?}", o.fail);
    }
    let mut want = LOGIN.to_vec();
    want.push(b"RETR 1\r\n");
    want.push(b"RETR 1\r\n");
    assert!(
        saw == direct(big_server(0), &want),
        "not the real server's bytes"
    );
    let seen = String::from_utf8_lossy(&real.seen).into_owned();
    assert_eq!(seen.matches("XSTRAW").count(), 1, "tried once: {seen}");
}

#[test]
fn retr_cut_before_the_body_keeps_nothing_useful() {
    let (mem, store) = mem();
    cut_attempt(PF, big_server(0), &store, 5);
    let (r, _) = second_attempt(PF, big_server(0), &store, &LOGIN);
    assert_text(&r.program_saw, &direct_retr(big_server(0), &LOGIN));
    assert!(mem.is_empty());
}

#[test]
fn retr_waiting_for_its_uidl_keeps_pipelined_replies_in_order() {
    let cfg = Pop3Config {
        prefetch: false,
        prefetch_retr_max_bytes: 0,
        prefetch_retr_depth: 1,
        prefetch_first: false,
    };
    let (mem, store) = mem();
    cut_attempt(cfg, big_server(0), &store, 15_000);
    // Another message of the same account in the store, too.
    mem.put(&resume::key("bob", "uid-3"), &[b'x'; 600]);
    let steps: [&[u8]; 4] = [
        b"USER bob\r\n",
        b"PASS secret\r\n",
        b"RETR 2\r\nRETR 1\r\nSTAT\r\nRETR 3\r\n",
        b"QUIT\r\n",
    ];
    let want = direct(big_server(0), &steps);
    let mut r = Rig::with_store(cfg, &warm(), big_server(0), Some(store.clone()));
    for s in steps {
        r.send(s);
    }
    assert!(r.fails.is_empty(), "{:?}", r.fails);
    assert!(
        r.program_saw == want,
        "not the real server's bytes, in order"
    );
    // uid-1 resumed and done; uid-3's junk prefix failed the check and was
    // replaced by the real body, then removed when it completed.
    assert!(mem.is_empty(), "{} left", mem.len());
}

#[test]
fn retr_resume_splices_whatever_the_chunking() {
    let full = direct_retr(big_server(0), &LOGIN);
    for chunk in [1, 2, 5, 17, 512, 4096] {
        let (mem, store) = mem();
        cut_attempt(PF, big_server(0), &store, 9_000 + chunk);
        let (r, _) = second_attempt_chunked(PF, big_server(0), &store, &LOGIN, chunk);
        assert!(r.fails.is_empty(), "chunk {chunk}: {:?}", r.fails);
        assert!(r.program_saw == full, "chunk {chunk}: not byte-exact");
        assert!(mem.is_empty());
    }
}

#[test]
fn retr_pipelined_with_the_login_uses_the_prefetched_uidl() {
    let (mem, store) = mem();
    cut_attempt(PF, big_server(0), &store, 15_000);
    let kept = mem.get(&resume::key("bob", "uid-1")).unwrap();
    let steps: [&[u8]; 2] = [
        b"USER bob\r\nPASS secret\r\nRETR 1\r\nRETR 2\r\n",
        b"QUIT\r\n",
    ];
    let want = direct(big_server(0), &steps);
    let mut r = Rig::with_store(PF, &warm(), big_server(0), Some(store.clone()));
    let before = r.real.seen.len();
    r.send(steps[0]);
    r.send(steps[1]);
    assert!(r.fails.is_empty(), "{:?}", r.fails);
    assert!(r.program_saw == want, "not the real server's bytes");
    let seen = String::from_utf8_lossy(&r.real.seen[before..]).into_owned();
    assert!(
        !seen.contains("UIDL 1"),
        "prefetched UIDL was on its way: {seen}"
    );
    assert!(mem.is_empty() && kept.len() > 10_000);
    // Without anything stored, nothing waits and nothing extra is asked.
    let empty: SharedStore = Arc::new(MemStore::new());
    let mut r = Rig::with_store(PF, &warm(), big_server(0), Some(empty));
    r.send(steps[0]);
    let seen = String::from_utf8_lossy(&r.real.seen).into_owned();
    assert!(
        !seen.contains("UIDL 1") && !seen.contains("XSTRAW"),
        "{seen}"
    );
}

// ------------------------------------------------------- RETR prefetch

const PFR: Pop3Config = Pop3Config {
    prefetch: true,
    prefetch_retr_max_bytes: DEFAULT_PREFETCH_RETR_MAX_BYTES,
    prefetch_retr_depth: 1,
    prefetch_first: false,
};

/// The benchmark's poplib session: USER, PASS, STAT, LIST, RETR 1..10, QUIT.
fn bench_session() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = ["USER bob\r\n", "PASS secret\r\n", "STAT\r\n", "LIST\r\n"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    for i in 1..=10 {
        v.push(format!("RETR {i}\r\n").into_bytes());
    }
    v.push(b"QUIT\r\n".to_vec());
    v
}

fn refs(steps: &[Vec<u8>]) -> Vec<&[u8]> {
    steps.iter().map(|s| s.as_slice()).collect()
}

/// How often the real server was asked `line`.
fn asked(real: &FakeDovecot, line: &str) -> usize {
    String::from_utf8_lossy(&real.seen).matches(line).count()
}

#[test]
fn retr_prefetch_bench_session_waits_drop_and_bytes_are_exact() {
    let steps = bench_session();
    // 12 messages: RETR 10 prefetches 11, which QUIT then throws away.
    for n in [10, 12] {
        let expected = direct(FakeDovecot::new(n), &refs(&steps));
        let mut cold = Rig::new(PFR, &Cache::new(), FakeDovecot::new(n));
        for s in &steps {
            cold.send(s);
        }
        assert_text(&cold.program_saw, &expected);
        assert!(cold.fails.is_empty(), "{:?}", cold.fails);
        assert_eq!(
            cold.c.stats().link_waits,
            3,
            "greeting + PASS + RETR 1 (QUIT without DELE is local)"
        );

        let mut rig = Rig::new(PFR, &cold.cache(), FakeDovecot::new(n));
        for s in &steps {
            rig.send(s);
        }
        assert_text(&rig.program_saw, &expected);
        assert!(rig.fails.is_empty(), "{:?}", rig.fails);
        let st = rig.c.stats();
        assert_eq!(st.link_waits, 2, "PASS + RETR 1 (was 12)");
        assert_eq!(
            st.local_replies, 14,
            "greeting, USER, STAT, LIST, RETR 2..10, QUIT"
        );
        for i in 1..=10 {
            assert_eq!(asked(&rig.real, &format!("RETR {i}\r\n")), 1, "RETR {i}");
        }
        assert_eq!(asked(&rig.real, "RETR 11\r\n"), usize::from(n > 10));
        assert_eq!(asked(&rig.real, "XSTRAW"), 0);
        assert!(!rig.real.pipelined, "server side still runs lockstep");
    }
}

#[test]
fn retr_prefetch_without_it_is_one_wait_per_retr() {
    let steps = bench_session();
    let mut rig = Rig::new(PF, &warm(), FakeDovecot::new(10));
    for s in &steps {
        rig.send(s);
    }
    assert_eq!(rig.c.stats().link_waits, 11, "PASS + 10 RETR");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn retr_prefetch_any_split_of_the_program_stream_is_exact(
        cuts in proptest::collection::vec(0usize..400, 0..12),
        depth in 1u32..5,
        first in any::<bool>(),
    ) {
        let steps = bench_session();
        let all: Vec<u8> = steps.concat();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % all.len()).collect();
        cuts.sort();
        let cfg = Pop3Config { prefetch_retr_depth: depth, prefetch_first: first, ..PFR };
        let mut rig = Rig::new(cfg, &warm_first(), FakeDovecot::new(10));
        let mut last = 0;
        for c in cuts.into_iter().chain([all.len()]) {
            rig.send(&all[last..c]);
            last = c;
        }
        prop_assert_eq!(&rig.program_saw, &direct(FakeDovecot::new(10), &refs(&steps)));
        let mut want = b"USER bob\r\nPASS secret\r\nSTAT\r\nUIDL\r\nLIST\r\n".to_vec();
        if first {
            want.extend(b"LIST 1\r\n");
        }
        for i in 1..=10 {
            want.extend(format!("RETR {i}\r\n").bytes());
        }
        want.extend(b"QUIT\r\n");
        prop_assert_eq!(&rig.real.seen, &want, "each RETR asked once, in order");
        prop_assert!(rig.fails.is_empty());
    }
}

/// Three messages asked ahead, as straw's config has it by default.
const PFR3: Pop3Config = Pop3Config {
    prefetch_retr_depth: 3,
    ..PFR
};

#[test]
fn retr_prefetch_three_ahead_bench_session_is_exact_and_asks_each_once() {
    let steps = bench_session();
    for n in [10, 12] {
        let expected = direct(FakeDovecot::new(n), &refs(&steps));
        let mut rig = Rig::new(PFR3, &warm(), FakeDovecot::new(n));
        for s in &steps {
            rig.send(s);
        }
        assert_text(&rig.program_saw, &expected);
        assert!(rig.fails.is_empty(), "{:?}", rig.fails);
        assert_eq!(rig.c.stats().link_waits, 2, "PASS + RETR 1");
        for i in 1..=10 {
            assert_eq!(asked(&rig.real, &format!("RETR {i}\r\n")), 1, "RETR {i}");
        }
        // RETR 10 asked for 11 and 12 ahead (when they exist); QUIT ends it.
        assert_eq!(asked(&rig.real, "RETR 11\r\n"), usize::from(n > 10));
        assert_eq!(asked(&rig.real, "RETR 12\r\n"), usize::from(n > 10));
        assert_eq!(asked(&rig.real, "RETR 13\r\n"), 0);
    }
}

#[test]
fn retr_prefetch_three_ahead_keeps_a_run_of_three_within_the_cap() {
    let mut c = listed(PFR3, &[10, 10, 10, 10, 10, 10]);
    let mut o = Output::default();
    c.from_local(b"RETR 1\r\n", true, &mut o);
    assert_eq!(o.to_tunnel, b"RETR 1\r\nRETR 2\r\nRETR 3\r\nRETR 4\r\n");
    o.clear();
    c.from_tunnel(b"+OK\r\na\r\n.\r\n+OK\r\nb\r\n.\r\n", &mut o);
    assert_eq!(
        o.to_local, b"+OK\r\na\r\n.\r\n",
        "2 is held for the program"
    );
    o.clear();
    // The program's RETR 2 is served here and one more is asked ahead.
    c.from_local(b"RETR 2\r\n", true, &mut o);
    assert_eq!(o.to_local, b"+OK\r\nb\r\n.\r\n");
    assert_eq!(o.to_tunnel, b"RETR 5\r\n");
    o.clear();
    // Messages 3 and 4 arrive; 3 is claimed, 6 asked; past 6 nothing.
    c.from_tunnel(b"+OK\r\nc\r\n.\r\n+OK\r\nd\r\n.\r\n", &mut o);
    c.from_local(b"RETR 3\r\n", true, &mut o);
    assert_eq!(o.to_local, b"+OK\r\nc\r\n.\r\n");
    assert_eq!(o.to_tunnel, b"RETR 6\r\n");
    o.clear();
    c.from_local(b"RETR 4\r\n", true, &mut o);
    assert_eq!(o.to_local, b"+OK\r\nd\r\n.\r\n");
    assert!(o.to_tunnel.is_empty(), "no message 7");

    // The cap bounds the sizes asked ahead together: 25 bytes, messages of
    // 10: two ahead, not three.
    let cfg = Pop3Config {
        prefetch_retr_max_bytes: 25,
        ..PFR3
    };
    let mut c = listed(cfg, &[10, 10, 10, 10, 10]);
    let mut o = Output::default();
    c.from_local(b"RETR 1\r\n", true, &mut o);
    assert_eq!(o.to_tunnel, b"RETR 1\r\nRETR 2\r\nRETR 3\r\n");
    // ... and the run stops at a message that doesn't fit.
    let mut c = listed(PFR3, &[10, 10, 70_000, 10]);
    let mut o = Output::default();
    c.from_local(b"RETR 1\r\n", true, &mut o);
    assert_eq!(o.to_tunnel, b"RETR 1\r\nRETR 2\r\n");
}

#[test]
fn retr_prefetch_three_ahead_all_cut_short_when_the_program_goes_elsewhere() {
    for (cmd, want) in [
        (&b"QUIT\r\n"[..], &b"QUIT\r\n"[..]),
        (b"RETR 5\r\n", b"RETR 5\r\n"),
        (b"DELE 3\r\n", b"DELE 3\r\n"),
    ] {
        let mut c = listed(PFR3, &[10, 10, 10, 10, 10]);
        let mut o = Output::default();
        c.from_local(b"RETR 1\r\n", true, &mut o);
        // 1 and half of 2 are in: 2 is still arriving, 3 and 4 not begun.
        c.from_tunnel(b"+OK\r\na\r\n.\r\n+OK\r\nb", &mut o);
        o.clear();
        c.from_local(cmd, true, &mut o);
        let sent = String::from_utf8_lossy(&o.to_tunnel).into_owned();
        assert!(
            sent.contains("XSTRAW-ABORT 2\r\nXSTRAW-ABORT 3\r\nXSTRAW-ABORT 4\r\n"),
            "{}: {sent}",
            String::from_utf8_lossy(cmd)
        );
        assert!(sent.contains(std::str::from_utf8(want).unwrap()), "{sent}");
        assert!(c.pf_retr.is_empty());
        assert!(o.fail.is_none(), "{:?}", o.fail);
    }
}

#[test]
fn retr_prefetch_three_ahead_stopped_when_the_program_leaves_after_quit() {
    // The program reads 2 of 6 and says QUIT (answered here: nothing was
    // deleted); messages 3-5 were asked ahead and still arrive.
    let mut c = listed(PFR3, &[10, 10, 10, 10, 10, 10]);
    let mut o = Output::default();
    c.from_local(b"RETR 1\r\n", true, &mut o);
    c.from_tunnel(b"+OK\r\na\r\n.\r\n+OK\r\nb\r\n.\r\n", &mut o);
    c.from_local(b"RETR 2\r\nQUIT\r\n", true, &mut o);
    assert!(o.to_local.ends_with(b"+OK Logging out.\r\n"));
    o.clear();
    // It closes: the stream is reset, so the peer stops sending them.
    c.local_eof(&mut o);
    assert!(o.abandoned);
}

#[test]
fn retr_prefetch_fetchmail_retr_dele_interleave() {
    let mut steps: Vec<Vec<u8>> = vec![b"USER bob\r\n".to_vec(), b"PASS secret\r\n".to_vec()];
    for i in 1..=10 {
        steps.push(format!("RETR {i}\r\n").into_bytes());
        steps.push(format!("DELE {i}\r\n").into_bytes());
    }
    steps.push(b"QUIT\r\n".to_vec());
    let mut rig = Rig::new(PFR, &warm(), FakeDovecot::new(10));
    for s in &steps {
        rig.send(s);
    }
    assert_text(
        &rig.program_saw,
        &direct(FakeDovecot::new(10), &refs(&steps)),
    );
    assert!(rig.fails.is_empty(), "{:?}", rig.fails);
    let seen = String::from_utf8_lossy(&rig.real.seen).into_owned();
    assert!(
        seen.contains("RETR 1\r\nRETR 2\r\nDELE 1\r\nRETR 3\r\nDELE 2\r\n"),
        "{seen}"
    );
    for i in 1..=10 {
        assert_eq!(asked(&rig.real, &format!("RETR {i}\r\n")), 1, "RETR {i}");
    }
    // DELE commits: each is a real round trip; RETR 2..10 are not.
    let st = rig.c.stats();
    assert_eq!(st.link_waits, 1 + 1 + 10 + 1, "PASS, RETR 1, 10 DELE, QUIT");
}

#[test]
fn retr_prefetch_dele_of_the_prefetched_message_discards_it() {
    let steps: Vec<Vec<u8>> = [
        "USER bob\r\n",
        "PASS secret\r\n",
        "RETR 1\r\n",
        "DELE 2\r\n",
        "RETR 2\r\n",
        "RETR 3\r\n",
        "QUIT\r\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let mut rig = Rig::new(PFR, &warm(), FakeDovecot::new(4));
    let mut got = Vec::new();
    for s in &steps {
        got.push(rig.send(s));
    }
    assert_text(
        &rig.program_saw,
        &direct(FakeDovecot::new(4), &refs(&steps)),
    );
    assert!(
        got[4].starts_with(b"-ERR"),
        "RETR of a deleted message fails, as for real"
    );
    assert!(rig.fails.is_empty(), "{:?}", rig.fails);
    // The prefetched RETR 2 was thrown away; the program's went for real
    // (and asked RETR 3 ahead, served from that).
    assert_eq!(asked(&rig.real, "RETR 2\r\n"), 2);
    assert_eq!(asked(&rig.real, "RETR 3\r\n"), 1);
}

#[test]
fn retr_prefetch_respects_the_size_cap_and_zero_disables() {
    let real = FakeDovecot::new(4);
    let size2 = real.msgs[1].len() as u64;
    let steps: [&[u8]; 4] = [
        b"USER bob\r\n",
        b"PASS secret\r\n",
        b"RETR 1\r\n",
        b"RETR 2\r\n",
    ];
    for (cap, prefetched) in [(size2 - 1, false), (size2, true), (0, false)] {
        let cfg = Pop3Config {
            prefetch: true,
            prefetch_retr_max_bytes: cap,
            prefetch_retr_depth: 1,
            prefetch_first: false,
        };
        let mut rig = Rig::new(cfg, &warm(), real.clone());
        for s in &steps[..3] {
            rig.send(s);
        }
        let seen = String::from_utf8_lossy(&rig.real.seen).into_owned();
        assert_eq!(
            seen.ends_with("RETR 1\r\nRETR 2\r\n"),
            prefetched,
            "cap {cap}: {seen}"
        );
        rig.send(steps[3]);
        assert_text(&rig.program_saw, &direct(real.clone(), &steps));
        assert_eq!(asked(&rig.real, "RETR 2\r\n"), 1);
    }
}

#[test]
fn retr_prefetch_without_list_data_does_nothing() {
    // No login prefetch and no LIST from the program: sizes unknown.
    let cfg = Pop3Config {
        prefetch: false,
        prefetch_retr_max_bytes: DEFAULT_PREFETCH_RETR_MAX_BYTES,
        prefetch_retr_depth: 1,
        prefetch_first: false,
    };
    let mut rig = Rig::new(cfg, &warm(), FakeDovecot::new(3));
    for s in [&b"USER bob\r\n"[..], b"PASS secret\r\n", b"RETR 1\r\n"] {
        rig.send(s);
    }
    assert_eq!(asked(&rig.real, "RETR 2"), 0);
    // The program's own LIST is enough; past the last message, nothing.
    rig.send(b"LIST\r\n");
    rig.send(b"RETR 2\r\n");
    assert_eq!(asked(&rig.real, "RETR 3\r\n"), 1, "prefetched");
    rig.send(b"RETR 3\r\n");
    assert_eq!(
        asked(&rig.real, "RETR 3\r\n"),
        1,
        "served from the prefetch"
    );
    assert_eq!(asked(&rig.real, "RETR 4"), 0, "no message 4");
}

#[test]
fn retr_prefetch_err_reply_is_what_the_program_gets() {
    // Message 2 vanishes after LIST (another session expunged it).
    let steps: [&[u8]; 5] = [
        b"USER bob\r\n",
        b"PASS secret\r\n",
        b"LIST\r\n",
        b"RETR 1\r\n",
        b"RETR 2\r\n",
    ];
    let mut rig = Rig::new(PFR, &warm(), FakeDovecot::new(3));
    for s in &steps[..3] {
        rig.send(s);
    }
    rig.real.deleted[1] = true;
    rig.send(steps[3]);
    let got = rig.send(steps[4]);
    assert_eq!(got, b"-ERR There's no message 99.\r\n");
    assert_eq!(asked(&rig.real, "RETR 2\r\n"), 1, "not asked again");
    assert!(rig.fails.is_empty(), "{:?}", rig.fails);
}

/// A client side logged in with LIST known (messages of `sizes`), by hand.
fn listed(cfg: Pop3Config, sizes: &[usize]) -> ClientAccel {
    let mut c = ClientAccel::new(cfg, &warm());
    let mut o = Output::default();
    c.start(&mut o);
    c.from_tunnel(GREETING, &mut o);
    c.from_local(b"USER bob\r\nPASS x\r\n", true, &mut o);
    assert_eq!(
        o.to_tunnel,
        b"USER bob\r\nPASS x\r\nSTAT\r\nUIDL\r\nLIST\r\n"
    );
    let mut replies = b"+OK\r\n+OK Logged in.\r\n+OK 1 1\r\n+OK\r\n".to_vec();
    for i in 1..=sizes.len() {
        replies.extend(format!("{i} u{i}\r\n").bytes());
    }
    replies.extend(b".\r\n+OK\r\n");
    for (i, s) in sizes.iter().enumerate() {
        replies.extend(format!("{} {s}\r\n", i + 1).bytes());
    }
    replies.extend(b".\r\n");
    c.from_tunnel(&replies, &mut o);
    assert!(o.fail.is_none(), "{:?}", o.fail);
    c
}

#[test]
fn retr_prefetch_streams_to_a_program_that_asked_before_it_arrived() {
    let mut c = listed(PFR, &[10, 10, 10]);
    let base = c.stats();
    let mut o = Output::default();
    c.from_local(b"RETR 1\r\n", true, &mut o);
    assert_eq!(o.to_tunnel, b"RETR 1\r\nRETR 2\r\n");
    assert!(o.flush);
    o.clear();
    c.from_tunnel(b"+OK 3 octets\r\nab\r\n.\r\n", &mut o);
    assert_eq!(o.to_local, b"+OK 3 octets\r\nab\r\n.\r\n");
    o.clear();
    // RETR 2 is on its way, none of it here yet: the program waits for it.
    c.from_local(b"RETR 2\r\n", true, &mut o);
    assert_eq!(o.to_tunnel, b"RETR 3\r\n", "asks ahead again, not RETR 2");
    assert!(o.to_local.is_empty());
    assert_eq!(c.stats().link_waits, base.link_waits + 2);
    o.clear();
    c.from_tunnel(b"+OK 3 octets\r\ncd", &mut o);
    assert_eq!(o.to_local, b"+OK 3 octets\r\ncd", "streamed as it comes");
    o.clear();
    c.from_tunnel(b"\r\n.\r\n+OK 3 octets\r\nef\r\n", &mut o);
    assert_eq!(o.to_local, b"\r\n.\r\n", "RETR 3 held: not asked yet");
    o.clear();
    c.from_local(b"RETR 3\r\n", true, &mut o);
    assert_eq!(o.to_local, b"+OK 3 octets\r\nef\r\n");
    assert!(o.to_tunnel.is_empty(), "no message 4");
    assert_eq!(
        c.stats().link_waits,
        base.link_waits + 2,
        "first bytes were here: not a wait"
    );
    o.clear();
    c.from_tunnel(b".\r\n", &mut o);
    assert_eq!(o.to_local, b".\r\n");
}

#[test]
fn retr_prefetch_pipelined_by_the_program_is_one_wait() {
    let mut c = listed(PFR, &[10, 10, 10]);
    let base = c.stats();
    let mut o = Output::default();
    c.from_local(b"RETR 1\r\nRETR 2\r\nRETR 3\r\n", true, &mut o);
    assert_eq!(o.to_tunnel, b"RETR 1\r\nRETR 2\r\nRETR 3\r\n");
    c.from_tunnel(
        b"+OK\r\na\r\n.\r\n+OK\r\nb\r\n.\r\n+OK\r\nc\r\n.\r\n",
        &mut o,
    );
    assert_eq!(
        o.to_local,
        b"+OK\r\na\r\n.\r\n+OK\r\nb\r\n.\r\n+OK\r\nc\r\n.\r\n"
    );
    assert_eq!(c.stats().link_waits, base.link_waits + 1);
}

#[test]
fn retr_prefetch_holds_one_message_within_its_bound() {
    // LIST says 100 bytes; the reply is far longer (LIST lied, or the
    // mailbox changed): the held prefetch never passes its bound, is
    // dropped and cut short, and the program's RETR 2 goes for real.
    let mut c = listed(PFR, &[10, 100, 10]);
    let mut o = Output::default();
    c.from_local(b"RETR 1\r\n", true, &mut o);
    assert_eq!(o.to_tunnel, b"RETR 1\r\nRETR 2\r\n");
    c.from_tunnel(b"+OK\r\na\r\n.\r\n+OK\r\n", &mut o);
    o.clear();
    let line = [b'x'; 98];
    let mut most = 0;
    for _ in 0..100 {
        c.from_tunnel(&line, &mut o);
        c.from_tunnel(b"\r\n", &mut o);
        most = most.max(c.pf_retr.front().map_or(0, |p| p.buf.len()));
    }
    assert!(most <= 2 * 100 + 1024, "held {most}");
    assert!(c.pf_retr.is_empty(), "dropped");
    assert_eq!(o.to_tunnel, b"XSTRAW-ABORT 2\r\n");
    assert!(o.to_local.is_empty());
    o.clear();
    // The server side ends it (here right at a line start) and acknowledges.
    c.from_tunnel(b".\r\n+OK\r\n", &mut o);
    c.from_local(b"RETR 2\r\n", true, &mut o);
    assert_eq!(o.to_tunnel, b"RETR 2\r\nRETR 3\r\n", "asked for real");
    assert!(o.fail.is_none(), "{:?}", o.fail);
    c.from_tunnel(b"+OK\r\nreal\r\n.\r\n", &mut o);
    assert_eq!(o.to_local, b"+OK\r\nreal\r\n.\r\n");
}

#[test]
fn retr_prefetch_program_commands_with_straws_verbs_are_refused() {
    let mut c = listed(PFR, &[10]);
    let mut o = Output::default();
    c.from_local(b"XSTRAW-ABORT 1\r\nXSTRAW-PARTIAL 1 1 x\r\n", true, &mut o);
    assert!(o.to_tunnel.is_empty());
    assert_eq!(
        o.to_local,
        b"-ERR Unknown command.\r\n-ERR Unknown command.\r\n"
    );
}

// ------------------------------------------------ RETR prefetch: abort

/// Messages 1..6, message 2 about 30 KB.
fn big_second() -> FakeDovecot {
    let mut real = FakeDovecot::new(6);
    let mut m = b"From: a@example.org\r\nSubject: big\r\n\r\n".to_vec();
    for i in 0..700 {
        m.extend(format!(".line {i} of the second message\r\n").as_bytes());
    }
    real.msgs[1] = m;
    real
}

/// The server side's bytes for the commands in `o.to_local`, one lockstep
/// step: the real server's whole reply, and what the server side then asks.
fn upstream(r: &mut Rig, o: &mut Output) -> Vec<u8> {
    let cmds = std::mem::take(&mut o.to_local);
    r.real.input(&cmds)
}

#[test]
fn retr_prefetch_quit_mid_stream_is_cut_short_in_band() {
    let steps: [&[u8]; 4] = [
        b"USER bob\r\n",
        b"PASS secret\r\n",
        b"RETR 1\r\n",
        b"QUIT\r\n",
    ];
    let mut r = Rig::new(PFR, &warm(), big_second());
    r.send(steps[0]);
    r.send(steps[1]);
    let mut c = Output::default();
    r.c.from_local(steps[2], true, &mut c);
    assert_eq!(c.to_tunnel, b"RETR 1\r\nRETR 2\r\n");
    let mut s = Output::default();
    r.s.from_tunnel(&c.to_tunnel, &mut s);
    c.to_tunnel.clear();
    let reply1 = upstream(&mut r, &mut s);
    r.s.from_local(&reply1, true, &mut s);
    assert_eq!(s.to_local, b"RETR 2\r\n", "the prefetch goes upstream next");
    let reply2 = upstream(&mut r, &mut s);
    assert!(reply2.len() > 20_000);
    // A first piece of RETR 2 crosses (ending mid-line), then QUIT.
    r.s.from_local(&reply2[..5_001], false, &mut s);
    let mut down = std::mem::take(&mut s.to_tunnel);
    r.c.from_tunnel(&down, &mut c);
    r.collect(&mut c);
    r.c.from_local(steps[3], true, &mut c);
    assert_eq!(c.to_tunnel, b"XSTRAW-ABORT 2\r\nQUIT\r\n");
    r.s.from_tunnel(&std::mem::take(&mut c.to_tunnel), &mut s);
    assert!(
        s.to_local.is_empty(),
        "QUIT waits for the upstream reply's end"
    );
    let cut = std::mem::take(&mut s.to_tunnel);
    assert!(s.flush && !cut.is_empty() && cut.len() <= 5, "{cut:?}");
    // The rest of the message is read upstream and dropped.
    r.s.from_local(&reply2[5_001..], true, &mut s);
    assert_eq!(s.to_local, b"QUIT\r\n");
    assert_eq!(
        s.notes,
        vec![format!(
            "POP3 prefetched RETR cut short: {} bytes of it not sent",
            reply2.len() - 5_001
        )]
    );
    let bye = upstream(&mut r, &mut s);
    r.s.from_local(&bye, true, &mut s);
    let after: Vec<u8> = [cut, std::mem::take(&mut s.to_tunnel)].concat();
    assert_eq!(after, [&b"\r\n.\r\n"[..], ABORT_ACK, &bye].concat());
    down.extend_from_slice(&after);
    r.c.from_tunnel(&after, &mut c);
    r.collect(&mut c);
    assert!(r.fails.is_empty(), "{:?}", r.fails);
    assert_text(&r.program_saw, &direct(big_second(), &steps));
    assert!(
        down.len() < reply1.len() + 5_100,
        "{} bytes crossed, message 2 is {}",
        down.len(),
        reply2.len()
    );
    assert_eq!(asked(&r.real, "XSTRAW"), 0, "never upstream");
}

#[test]
fn retr_prefetch_still_queued_is_never_asked_upstream() {
    // A pipelining program: QUIT right behind RETR 1, while it streams.
    let steps: [&[u8]; 4] = [
        b"USER bob\r\n",
        b"PASS secret\r\n",
        b"RETR 1\r\n",
        b"QUIT\r\n",
    ];
    let mut r = Rig::new(PFR, &warm(), big_second());
    r.send(steps[0]);
    r.send(steps[1]);
    let mut c = Output::default();
    r.c.from_local(steps[2], true, &mut c);
    let mut s = Output::default();
    r.s.from_tunnel(&std::mem::take(&mut c.to_tunnel), &mut s);
    assert_eq!(s.to_local, b"RETR 1\r\n", "RETR 2 queued behind it");
    let reply1 = upstream(&mut r, &mut s);
    r.s.from_local(&reply1[..20], false, &mut s);
    r.c.from_tunnel(&std::mem::take(&mut s.to_tunnel), &mut c);
    r.c.from_local(steps[3], true, &mut c);
    assert_eq!(c.to_tunnel, b"XSTRAW-ABORT 2\r\nQUIT\r\n");
    r.s.from_tunnel(&std::mem::take(&mut c.to_tunnel), &mut s);
    r.s.from_local(&reply1[20..], true, &mut s);
    assert_eq!(s.to_local, b"QUIT\r\n", "RETR 2 skipped");
    let bye = upstream(&mut r, &mut s);
    r.s.from_local(&bye, true, &mut s);
    let tail = std::mem::take(&mut s.to_tunnel);
    assert!(tail.ends_with(&[PREFETCH_ABORTED, ABORT_ACK, &bye].concat()));
    r.c.from_tunnel(&tail, &mut c);
    r.collect(&mut c);
    assert!(r.fails.is_empty(), "{:?}", r.fails);
    assert_text(&r.program_saw, &direct(big_second(), &steps));
    assert_eq!(asked(&r.real, "RETR 2"), 0);
}

#[test]
fn retr_prefetch_abort_against_an_old_server_side_is_sent_once() {
    // An older server side passes the line on; the real server's -ERR
    // (after the whole prefetched reply) says so.
    let mut c = ClientAccel::new(PFR, &warm());
    let mut real = big_second();
    let mut o = Output::default();
    c.start(&mut o);
    c.from_tunnel(GREETING, &mut o);
    let mut saw = Vec::new();
    let mut lockstep = |c: &mut ClientAccel, o: &mut Output, input: &[u8], keep: usize| {
        c.from_local(input, true, o);
        let up = std::mem::take(&mut o.to_tunnel);
        let down = real.input(&up);
        let keep = keep.min(down.len());
        c.from_tunnel(&down[..keep], o);
        down[keep..].to_vec()
    };
    for l in LOGIN {
        lockstep(&mut c, &mut o, l, usize::MAX);
    }
    // RETR 1 and part of the prefetched RETR 2 arrive; the program skips to 4.
    let r1 = direct(big_second(), &[LOGIN[0], LOGIN[1], b"RETR 1\r\n"]).len()
        - direct(big_second(), &LOGIN).len();
    let rest = lockstep(&mut c, &mut o, b"RETR 1\r\n", r1 + 3_000);
    saw.append(&mut o.to_local);
    c.from_local(b"RETR 4\r\n", true, &mut o);
    assert_eq!(o.to_tunnel, b"XSTRAW-ABORT 2\r\nRETR 4\r\nRETR 5\r\n");
    let up = std::mem::take(&mut o.to_tunnel);
    let down = [rest, real.input(&up)].concat();
    c.from_tunnel(&down, &mut o);
    assert!(c.abort_refused);
    // Message 5 is held; skipping to 6 forgets it, with no abort line now.
    c.from_local(b"RETR 6\r\nQUIT\r\n", true, &mut o);
    assert_eq!(o.to_tunnel, b"RETR 6\r\nQUIT\r\n");
    let up = std::mem::take(&mut o.to_tunnel);
    let down = real.input(&up);
    c.from_tunnel(&down, &mut o);
    saw.append(&mut o.to_local);
    assert!(o.fail.is_none(), "{:?}", o.fail);
    let steps: [&[u8]; 5] = [
        LOGIN[0],
        LOGIN[1],
        b"RETR 1\r\n",
        b"RETR 4\r\n",
        b"RETR 6\r\nQUIT\r\n",
    ];
    let want = direct(big_second(), &steps);
    assert_text(&saw, &want);
}

// ------------------------------------------- RETR prefetch: message resume

/// Messages 1..3, message 2 about 30 KB (fits the default cap).
fn big2() -> FakeDovecot {
    let mut real = big_second();
    real.msgs.truncate(3);
    real.deleted.truncate(3);
    real
}

#[test]
fn retr_prefetch_is_skipped_while_a_partial_of_it_is_stored() {
    let (mem, store) = mem();
    mem.put(&resume::key("bob", "uid-2"), &[b'x'; 600]);
    let mut r = Rig::with_store(PFR, &warm(), big2(), Some(store));
    for l in LOGIN {
        r.send(l);
    }
    r.send(b"RETR 1\r\n");
    assert!(r.real.seen.ends_with(b"RETR 1\r\n"), "not asked ahead");
    // The program's own RETR 2 offers the stored prefix (it differs here).
    r.send(b"RETR 2\r\n");
    let steps: [&[u8]; 4] = [LOGIN[0], LOGIN[1], b"RETR 1\r\n", b"RETR 2\r\n"];
    assert_text(&r.program_saw, &direct(big2(), &steps));
    assert!(mem.is_empty());
}

#[test]
fn retr_prefetch_cut_by_the_link_is_kept_and_resumed() {
    let (mem, store) = mem();
    let mut r = Rig::with_store(PFR, &warm(), big2(), Some(store.clone()));
    for l in LOGIN {
        r.send(l);
    }
    let mut o = Output::default();
    r.c.from_local(b"RETR 1\r\n", true, &mut o);
    assert_eq!(o.to_tunnel, b"RETR 1\r\nRETR 2\r\n");
    let mut so = Output::default();
    r.s.from_tunnel(&std::mem::take(&mut o.to_tunnel), &mut so);
    let mut s2c = Vec::new();
    r.serve(so, &mut s2c);
    let first = direct(big2(), &[LOGIN[0], LOGIN[1], b"RETR 1\r\n"]);
    let r1 = first.len() - direct(big2(), &LOGIN).len();
    r.c.from_tunnel(&s2c[..r1 + 15_000], &mut o);
    r.collect(&mut o);
    assert_text(&r.program_saw, &first);
    // The link dies; the program never asked for message 2.
    let mut o = Output::default();
    r.c.link_lost(&mut o);
    r.collect(&mut o);
    assert!(r.program_saw.ends_with(LINK_LOST));
    let kept = mem
        .get(&resume::key("bob", "uid-2"))
        .expect("prefetched body kept");
    assert!(kept.len() > 14_000);
    // Next session: RETR 2 fetches only the rest, byte-exact.
    let mut r = Rig::with_store(PFR, &warm(), big2(), Some(store));
    for l in LOGIN {
        r.send(l);
    }
    let before = r.program_saw.len();
    let mut o = Output::default();
    r.c.from_local(b"RETR 2\r\n", true, &mut o);
    let mut so = Output::default();
    r.s.from_tunnel(&std::mem::take(&mut o.to_tunnel), &mut so);
    let mut s2c = Vec::new();
    r.serve(so, &mut s2c);
    r.c.from_tunnel(&s2c, &mut o);
    r.collect(&mut o);
    let steps: [&[u8]; 3] = [LOGIN[0], LOGIN[1], b"RETR 2\r\n"];
    let want = direct(big2(), &steps);
    assert_text(
        &r.program_saw[before..],
        &want[direct(big2(), &LOGIN).len()..],
    );
    let body = stuff(&big2().msgs[1]).len();
    assert!(
        s2c.len() < body - kept.len() + 1_000,
        "{} crossed for {} missing",
        s2c.len(),
        body - kept.len()
    );
    assert!(mem.is_empty(), "partial removed once complete");
}

#[test]
fn retr_prefetch_served_completes_and_leaves_no_partial() {
    let (mem, store) = mem();
    let steps: [&[u8]; 5] = [
        LOGIN[0],
        LOGIN[1],
        b"RETR 1\r\n",
        b"RETR 2\r\n",
        b"QUIT\r\n",
    ];
    let mut r = Rig::with_store(PFR, &warm(), big2(), Some(store));
    r.server_chunk = 1000;
    for s in steps {
        r.send(s);
    }
    assert_text(&r.program_saw, &direct(big2(), &steps));
    assert_eq!(asked(&r.real, "RETR 2\r\n"), 1);
    assert!(mem.is_empty());
}

#[test]
fn retr_end_waits_for_the_next_retrs_status_line_to_cross_with_it() {
    let mut s = ServerAccel::new();
    let mut o = Output::default();
    s.from_local(GREETING, true, &mut o);
    s.from_tunnel(b"RETR 1\r\nRETR 2\r\nNOOP\r\n", &mut o);
    assert_eq!(o.to_local, b"RETR 1\r\n");
    o.clear();
    s.from_local(b"+OK 9 octets\r\nab", true, &mut o);
    assert_eq!(o.to_tunnel, b"+OK 9 octets\r\nab", "streams");
    o.clear();
    s.from_local(b"c\r\n.\r\n", true, &mut o);
    assert_eq!(o.to_local, b"RETR 2\r\n");
    assert!(
        o.to_tunnel.is_empty() && !o.flush,
        "end held for RETR 2's start"
    );
    o.clear();
    s.from_local(b"+OK 3 oc", true, &mut o);
    assert!(o.to_tunnel.is_empty(), "status line not complete yet");
    s.from_local(b"tets\r\nxy", true, &mut o);
    assert_eq!(o.to_tunnel, b"c\r\n.\r\n+OK 3 octets\r\nxy");
    assert!(o.flush);
    o.clear();
    // RETR 2 ends; the next command is not bulk: nothing to wait for.
    s.from_local(b"\r\n.\r\n", true, &mut o);
    assert_eq!(o.to_tunnel, b"\r\n.\r\n");
    assert!(o.flush);
    assert_eq!(o.to_local, b"NOOP\r\n");
}

/// QUIT commits the session's DELEs: with one, it waits for the real reply;
/// without, it is answered locally, still sent, and a failing real reply is
/// noted (the program is gone, nothing was to be committed).
#[test]
fn quit_is_local_only_without_a_dele() {
    let login: [&[u8]; 2] = [b"USER bob\r\n", b"PASS secret\r\n"];
    // With a DELE: the real reply, one wait.
    let mut rig = Rig::new(PF, &warm(), FakeDovecot::new(3));
    for s in login {
        rig.send(s);
    }
    rig.send(b"DELE 1\r\n");
    let before = rig.c.stats();
    let mut o = Output::default();
    rig.c.from_local(b"QUIT\r\n", true, &mut o);
    assert!(
        o.to_local.is_empty(),
        "QUIT after DELE must wait for the server"
    );
    assert_eq!(o.to_tunnel, b"QUIT\r\n");
    assert_eq!(rig.c.stats().link_waits, before.link_waits + 1);

    // Without: +OK at once, QUIT still reaches the server.
    let mut rig = Rig::new(PF, &warm(), FakeDovecot::new(3));
    for s in login {
        rig.send(s);
    }
    rig.send(b"RETR 1\r\n");
    let before = rig.c.stats();
    let mut o = Output::default();
    rig.c.from_local(b"QUIT\r\n", true, &mut o);
    assert_eq!(o.to_local, QUIT_OK);
    assert_eq!(o.to_tunnel, b"QUIT\r\n");
    assert_eq!(rig.c.stats().link_waits, before.link_waits);
    let mut o2 = Output::default();
    rig.c.from_tunnel(
        b"-ERR [SYS/TEMP] Mailbox is in inconsistent state\r\n",
        &mut o2,
    );
    assert!(o2.to_local.is_empty() && o2.fail.is_none());
    assert!(
        o2.notes
            .iter()
            .any(|n| n.contains("QUIT was answered locally")),
        "{:?}",
        o2.notes
    );
}

#[test]
fn quit_after_any_dele_like_command_waits_for_the_server() {
    let login: [&[u8]; 2] = [b"USER bob\r\n", b"PASS secret\r\n"];
    // `DELE\t1` (a server may take it as DELE), an unknown command, and a
    // DELE followed by a new login that clears straw's own DELE list: in
    // each case the real server may commit at QUIT, so its reply is awaited.
    let cases: [&[&[u8]]; 3] = [
        &[b"DELE\t1\r\n"],
        &[b"XTND XMIT\r\n"],
        &[b"DELE 1\r\n", b"USER bob\r\n", b"PASS secret\r\n"],
    ];
    for case in cases {
        let mut rig = Rig::new(PF, &warm(), FakeDovecot::new(3));
        for s in login.iter().chain(case) {
            rig.send(s);
        }
        let mut o = Output::default();
        rig.c.from_local(b"QUIT\r\n", true, &mut o);
        assert!(
            o.to_local.is_empty(),
            "QUIT after {case:?} must wait for the server, got {:?}",
            String::from_utf8_lossy(&o.to_local)
        );
        assert_eq!(o.to_tunnel, b"QUIT\r\n");
    }
}

// Hold ashore (see `hold`): a big message's RETR brings a stub, its DELE
// is answered here, a released one is presented as one more message.

use super::hold::{HoldConfig, HoldStore, MemHolds, held_uidl};

const OVER: u64 = 50_000;

/// A MIME mail with a text part and a base64 attachment, `kb` KB long.
fn big_mail(from: &str, kb: usize) -> Vec<u8> {
    let mut m = format!(
        "From: {from}\r\nTo: bob@example.org\r\nSubject: the plot\r\nDate: Mon, 09 Sep 2002 10:00:00 +0000\r\n\
         Message-ID: <big.1@example.org>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\npreamble\r\n--b1\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
         Here it is, caf=C3=A9.\r\n.a line with a dot\r\n--b1\r\n\
         Content-Type: image/png; name=\"plot.png\"\r\nContent-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"plot.png\"\r\n\r\n"
    );
    while m.len() < kb * 1024 {
        m.push_str("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA\r\n");
    }
    m.push_str("--b1--\r\n");
    m.into_bytes()
}

/// Three messages; the second is 60 KB (over OVER, under the RETR
/// prefetch cap).
fn held_server(from: &str) -> FakeDovecot {
    let mut real = FakeDovecot::new(3);
    real.msgs[1] = big_mail(from, 60);
    real
}

fn hold_rig(real: FakeDovecot, store: &Arc<MemHolds>, except: &[&str]) -> Rig {
    let c = ClientAccel::new(PFR, &warm()).with_hold(HoldConfig {
        over_bytes: OVER,
        except_from: except.iter().map(|s| s.to_ascii_lowercase()).collect(),
        bits_per_sec: 2400,
        cost_per_minute: 1.5,
        store: store.clone(),
    });
    Rig::wire(c, ServerAccel::new(), real)
}

fn login(rig: &mut Rig) {
    rig.send(b"USER bob\r\n");
    rig.send(b"PASS secret\r\n");
}

fn reply_text(r: &[u8]) -> String {
    String::from_utf8_lossy(r).into_owned()
}

#[test]
fn hold_retr_of_a_big_message_brings_a_stub_and_its_dele_stays_local() {
    let store = Arc::new(MemHolds::default());
    let mut rig = hold_rig(held_server("Alice <alice@example.org>"), &store, &[]);
    login(&mut rig);
    let uidl = reply_text(&rig.send(b"UIDL\r\n"));
    assert_eq!(
        uidl,
        format!(
            "+OK 3 messages:\r\n1 uid-1\r\n2 uid-2{}\r\n3 uid-3\r\n.\r\n",
            hold::UIDL_SUFFIX
        )
    );
    assert_eq!(
        reply_text(&rig.send(b"UIDL 2\r\n")),
        "+OK 2 uid-2~straw-held\r\n"
    );
    // Sizes are the real ones.
    let list = reply_text(&rig.send(b"LIST\r\n"));
    let real = held_server("Alice <alice@example.org>");
    let rows: String = (1..=3)
        .map(|i| format!("{i} {}\r\n", real.msgs[i - 1].len()))
        .collect();
    assert_eq!(list, format!("+OK 3 messages:\r\n{rows}.\r\n"));
    // RETR 1 takes no RETR 2 along: it would be held.
    let one = rig.send(b"RETR 1\r\n");
    assert!(one.starts_with(b"+OK"));
    assert_eq!(
        asked(&rig.real, "RETR 2\r\n"),
        0,
        "held messages are never prefetched"
    );
    let stub = rig.send(b"RETR 2\r\n");
    assert_eq!(
        asked(&rig.real, "RETR 3\r\n"),
        1,
        "the next one comes along"
    );
    let text = reply_text(&stub);
    assert!(stub.len() < 8 * 1024, "{}", stub.len());
    assert!(text.starts_with("+OK"), "{text}");
    assert!(
        text.contains("\r\nSubject: [held ashore] the plot\r\n"),
        "{text}"
    );
    assert!(
        text.contains("\r\nMessage-ID: <big.1@example.org>\r\n"),
        "{text}"
    );
    let id = store.id("bob", "uid-2");
    assert!(text.contains(&format!("straw hold release {id}")), "{text}");
    assert!(text.contains("plot.png (image/png,"), "{text}");
    assert!(
        text.contains("Here it is, café.\r\n..a line with a dot\r\n"),
        "dot-stuffed: {text}"
    );
    assert!(text.ends_with("\r\n.\r\n"));
    // The stub is recorded, held.
    let e = store.entries();
    assert_eq!(e.len(), 1);
    assert_eq!(
        (e[0].0.as_str(), e[0].1.as_str(), e[0].2),
        ("bob", "uid-2", false)
    );
    assert_eq!(e[0].3.subject, "the plot");
    assert_eq!(e[0].3.from, "Alice <alice@example.org>");
    assert_eq!(
        e[0].3.size,
        held_server("Alice <alice@example.org>").msgs[1].len() as u64
    );
    // DELE of the stub: answered here, never sent; QUIT still local.
    let dele = reply_text(&rig.send(b"DELE 2\r\n"));
    assert!(
        dele.starts_with("+OK straw: message 2 stays on the server"),
        "{dele}"
    );
    rig.send(b"QUIT\r\n");
    let seen = reply_text(&rig.real.seen);
    assert!(!seen.contains("DELE"), "{seen}");
    assert!(!rig.real.deleted[1]);
    assert!(rig.fails.is_empty(), "{:?}", rig.fails);
}

#[test]
fn hold_released_message_is_one_more_number_with_its_own_uidl() {
    let store = Arc::new(MemHolds::default());
    let mut rig = hold_rig(held_server("alice@example.org"), &store, &[]);
    login(&mut rig);
    rig.send(b"RETR 2\r\n");
    rig.send(b"QUIT\r\n");
    store.release("bob", "uid-2");

    let mut rig = hold_rig(held_server("alice@example.org"), &store, &[]);
    login(&mut rig);
    let real = held_server("alice@example.org");
    let size = real.msgs[1].len();
    let total: usize = real.msgs.iter().map(Vec::len).sum();
    assert_eq!(
        reply_text(&rig.send(b"STAT\r\n")),
        format!("+OK 4 {}\r\n", total + size)
    );
    let uidl = reply_text(&rig.send(b"UIDL\r\n"));
    assert!(
        uidl.ends_with("2 uid-2~straw-held\r\n3 uid-3\r\n4 uid-2\r\n.\r\n"),
        "{uidl}"
    );
    let list = reply_text(&rig.send(b"LIST\r\n"));
    assert!(list.ends_with(&format!("4 {size}\r\n.\r\n")), "{list}");
    assert_eq!(reply_text(&rig.send(b"UIDL 4\r\n")), "+OK 4 uid-2\r\n");
    assert_eq!(
        reply_text(&rig.send(b"LIST 4\r\n")),
        format!("+OK 4 {size}\r\n")
    );
    // RETR 4 is the real RETR 2: the original, byte-exact.
    let got = rig.send(b"RETR 4\r\n");
    let want = direct(
        held_server("alice@example.org"),
        &[b"USER bob\r\n", b"PASS secret\r\n", b"RETR 2\r\n"],
    );
    assert_ends_with(&want, &got);
    assert_eq!(
        got.len(),
        want.len() - GREETING.len() - "+OK\r\n+OK Logged in.\r\n".len()
    );
    assert_eq!(rig.c.activity(), None);
    // Delivered in full once: no longer presented.
    assert!(store.released("bob").is_empty());
    // DELE 4 deletes the real message 2 (the program has the original).
    assert_eq!(
        reply_text(&rig.send(b"DELE 4\r\n")),
        "+OK Marked to be deleted.\r\n"
    );
    assert!(rig.real.deleted[1]);
    assert_eq!(
        reply_text(&rig.send(b"STAT\r\n")),
        format!("+OK 2 {}\r\n", total - size)
    );
    let uidl = reply_text(&rig.send(b"UIDL\r\n"));
    assert_eq!(uidl, "+OK 2 messages:\r\n1 uid-1\r\n3 uid-3\r\n.\r\n");
    // With a DELE sent, QUIT's reply is the real one.
    rig.send(b"QUIT\r\n");
    assert!(
        reply_text(&rig.real.seen).contains("DELE 2\r\nSTAT"),
        "{}",
        reply_text(&rig.real.seen)
    );
    assert!(rig.fails.is_empty(), "{:?}", rig.fails);
}

#[test]
fn hold_released_message_gone_from_the_mailbox_is_forgotten() {
    let store = Arc::new(MemHolds::default());
    store.stub_delivered("bob", "uid-9", &Default::default());
    store.release("bob", "uid-9");
    let mut rig = hold_rig(held_server("a@b"), &store, &[]);
    login(&mut rig);
    assert!(reply_text(&rig.send(b"STAT\r\n")).starts_with("+OK 3 "));
    assert!(store.entries().is_empty());
}

#[test]
fn hold_allow_listed_sender_gets_the_original() {
    let store = Arc::new(MemHolds::default());
    let from = "The Captain <Captain@Example.ORG>";
    let mut rig = hold_rig(held_server(from), &store, &["captain@example.org"]);
    login(&mut rig);
    let got = rig.send(b"RETR 2\r\n");
    let want = direct(
        held_server(from),
        &[b"USER bob\r\n", b"PASS secret\r\n", b"RETR 2\r\n"],
    );
    assert_ends_with(&want, &got);
    assert!(got.len() > 60 * 1024);
    assert!(store.entries().is_empty());
    assert!(rig.fails.is_empty(), "{:?}", rig.fails);
}

#[test]
fn hold_waits_for_the_login_listings_when_the_program_pipelines() {
    let store = Arc::new(MemHolds::default());
    let mut rig = hold_rig(held_server("a@example.org"), &store, &[]);
    let got =
        reply_text(&rig.send(b"USER bob\r\nPASS secret\r\nSTAT\r\nRETR 2\r\nDELE 2\r\nQUIT\r\n"));
    assert!(got.contains("Subject: [held ashore] the plot"), "{got}");
    assert!(got.contains("+OK straw: message 2 stays"), "{got}");
    assert!(!reply_text(&rig.real.seen).contains("DELE"));
    assert!(rig.fails.is_empty(), "{:?}", rig.fails);
}

#[test]
fn hold_activity_says_stub() {
    let store = Arc::new(MemHolds::default());
    let mut c = ClientAccel::new(PF, &warm()).with_hold(HoldConfig {
        over_bytes: 10,
        except_from: vec![],
        bits_per_sec: 2400,
        cost_per_minute: 1.5,
        store,
    });
    let mut out = Output::default();
    c.start(&mut out);
    c.from_tunnel(GREETING, &mut out);
    c.from_local(b"USER bob\r\nPASS x\r\n", true, &mut out);
    c.from_tunnel(
        b"+OK\r\n+OK in\r\n+OK 2 150\r\n+OK\r\n1 a\r\n2 b\r\n.\r\n+OK\r\n1 5\r\n2 145\r\n.\r\n",
        &mut out,
    );
    out.clear();
    c.from_local(b"RETR 2\r\n", true, &mut out);
    assert!(
        reply_text(&out.to_tunnel).starts_with("XSTRAW-HOLD 1 "),
        "{}",
        reply_text(&out.to_tunnel)
    );
    c.from_tunnel(hold::HELD, &mut out);
    let a = c.activity().unwrap();
    assert_eq!(a.what, "POP3 RETR 2 of 2 (held ashore, stub)");
    assert_eq!(a.total, None);
}

#[test]
fn hold_capa_offers_no_sasl_so_programs_log_in_with_user_pass() {
    let store = Arc::new(MemHolds::default());
    let mut rig = hold_rig(held_server("a@b"), &store, &[]);
    let capa = reply_text(&rig.send(b"CAPA\r\n"));
    assert_eq!(
        capa,
        "+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\nUSER\r\n.\r\n"
    );
}

#[test]
fn hold_uidl_of_long_uidls_is_bounded_distinct_and_stable() {
    let a = "x".repeat(70);
    let b = format!("{}y", "x".repeat(69));
    let (ha, hb) = (held_uidl(&a), held_uidl(&b));
    assert!(ha.len() <= 70 && hb.len() <= 70);
    assert_ne!(ha, hb);
    assert_eq!(ha, held_uidl(&a));
    assert!(ha.ends_with(hold::UIDL_SUFFIX));
    assert_eq!(held_uidl("abc"), "abc~straw-held");
}

#[test]
fn hold_request_round_trips_and_bad_ones_are_refused() {
    let l = hold::request("ab12", 51200, 100, 300, &["a@b".into(), "c@d".into()]);
    let r = hold::parse_request(&l).unwrap();
    assert_eq!(r.except, vec!["a@b".to_owned(), "c@d".to_owned()]);
    assert!(hold::parse_request(b"XSTRAW-HOLD 2 ab 1 2 3\r\n").is_err());
    assert!(hold::parse_request(b"XSTRAW-HOLD 1 a/b 1 2 3\r\n").is_err());
    assert!(hold::parse_request(b"XSTRAW-HOLD 1 ab 1 2\r\n").is_err());
    assert_eq!(
        hold::addresses("Cap <Cap@X.org>, b@y"),
        vec!["cap@x.org", "b@y"]
    );
}

#[test]
fn hold_top_of_a_held_message_is_the_stub_cut_to_its_lines() {
    let store = Arc::new(MemHolds::default());
    let mut rig = hold_rig(held_server("a@example.org"), &store, &[]);
    login(&mut rig);
    // mutt reads headers with TOP n 0: the stub's, nothing recorded.
    let head = reply_text(&rig.send(b"TOP 2 0\r\n"));
    assert!(
        head.contains("\r\nSubject: [held ashore] the plot\r\n"),
        "{head}"
    );
    assert!(head.ends_with("8bit\r\n\r\n.\r\n"), "{head}");
    assert!(store.entries().is_empty());
    // fetchmail reads whole messages with TOP n 99999999: the whole stub.
    let all = reply_text(&rig.send(b"TOP 2 99999999\r\n"));
    assert!(all.contains("straw hold release"), "{all}");
    assert_eq!(store.entries().len(), 1);
    let seen = reply_text(&rig.real.seen);
    assert!(!seen.contains("TOP 2"), "asked upstream as RETR: {seen}");
    assert!(rig.fails.is_empty(), "{:?}", rig.fails);
}

#[test]
fn hold_top_of_an_allowed_sender_is_the_original_cut() {
    let store = Arc::new(MemHolds::default());
    let mut rig = hold_rig(held_server("cap@x.org"), &store, &["cap@x.org"]);
    login(&mut rig);
    let got = rig.send(b"TOP 2 2\r\n");
    let mut real = held_server("cap@x.org");
    real.authed = true;
    let msg = real.msgs[1].clone();
    let want = [
        &format!("+OK {} octets\r\n", msg.len()).into_bytes()[..],
        &stuff(&stub::top_of(&msg, 2)),
    ]
    .concat();
    assert_text(&got, &want);
    assert!(reply_text(&got).ends_with("\r\npreamble\r\n--b1\r\n.\r\n"));
    assert!(store.entries().is_empty());
}

#[test]
fn hold_released_message_read_with_top_counts_only_when_whole() {
    let store = Arc::new(MemHolds::default());
    let mut rig = hold_rig(held_server("a@example.org"), &store, &[]);
    login(&mut rig);
    rig.send(b"TOP 2 99999999\r\n");
    store.release("bob", "uid-2");
    let mut rig = hold_rig(held_server("a@example.org"), &store, &[]);
    login(&mut rig);
    // (The fake server answers any TOP whole, so a header-only TOP cannot
    // be told apart here.)
    let got = rig.send(b"TOP 4 99999999\r\n");
    let want = direct(
        held_server("a@example.org"),
        &[b"USER bob\r\n", b"PASS secret\r\n", b"TOP 2 99999999\r\n"],
    );
    assert_ends_with(&want, &got);
    assert!(store.released("bob").is_empty(), "delivered whole");
    assert!(rig.fails.is_empty(), "{:?}", rig.fails);
}

#[test]
fn hold_against_an_old_server_side_carries_the_message_and_asks_no_more() {
    let store = Arc::new(MemHolds::default());
    let mut c = ClientAccel::new(PF, &warm()).with_hold(HoldConfig {
        over_bytes: 10,
        except_from: vec![],
        bits_per_sec: 2400,
        cost_per_minute: 1.5,
        store: store.clone(),
    });
    let mut out = Output::default();
    c.start(&mut out);
    c.from_tunnel(GREETING, &mut out);
    c.from_local(b"USER bob\r\nPASS x\r\n", true, &mut out);
    c.from_tunnel(
        b"+OK\r\n+OK in\r\n+OK 2 150\r\n+OK\r\n1 a\r\n2 b\r\n.\r\n+OK\r\n1 5\r\n2 145\r\n.\r\n",
        &mut out,
    );
    out.clear();
    c.from_local(b"RETR 2\r\n", true, &mut out);
    // The old server side passed the request line to the real server.
    c.from_tunnel(
        b"-ERR Unknown command.\r\n+OK\r\nthe original\r\n.\r\n",
        &mut out,
    );
    assert_eq!(reply_text(&out.to_local), "+OK\r\nthe original\r\n.\r\n");
    assert!(store.entries().is_empty());
    assert!(out.notes.iter().any(|n| n.contains("older straw")));
    out.clear();
    c.from_local(b"RETR 2\r\n", true, &mut out);
    assert_eq!(reply_text(&out.to_tunnel), "RETR 2\r\n", "asked once only");
    assert!(out.fail.is_none());
}

// ------------------------------------------- message 1 asked with the login

/// A cache that remembers bob's last session began with `RETR 1`.
fn warm_first() -> Cache {
    let mut c = warm();
    c.insert(format!("{FIRST_RETR_KEY}bob"), b"1".to_vec());
    c
}

/// As straw's config has it by default.
const PFR_FIRST: Pop3Config = Pop3Config {
    prefetch_first: true,
    ..PFR3
};

#[test]
fn first_retr_asked_with_the_login_makes_the_bench_session_one_wait() {
    let steps = bench_session();
    for n in [10, 12] {
        let expected = direct(FakeDovecot::new(n), &refs(&steps));
        let mut rig = Rig::new(PFR_FIRST, &warm_first(), FakeDovecot::new(n));
        for s in &steps {
            rig.send(s);
        }
        assert_text(&rig.program_saw, &expected);
        assert!(rig.fails.is_empty(), "{:?}", rig.fails);
        // Without it: PASS + RETR 1 (retr_prefetch_three_ahead_bench_session...).
        assert_eq!(rig.c.stats().link_waits, 1, "PASS only");
        for i in 1..=10 {
            assert_eq!(asked(&rig.real, &format!("RETR {i}\r\n")), 1, "RETR {i}");
        }
        assert_eq!(
            asked(&rig.real, "LIST 1\r\n"),
            1,
            "the server side's size check"
        );
        assert_eq!(asked(&rig.real, "XSTRAW"), 0, "straw's verbs stay in straw");
    }
}

#[test]
fn first_retr_over_the_cap_is_refused_and_the_programs_retr_crosses() {
    let steps = bench_session();
    // Message 1 of the fake is ~120 bytes: a cap below it refuses it.
    let cfg = Pop3Config {
        prefetch_retr_max_bytes: 100,
        ..PFR_FIRST
    };
    let expected = direct(FakeDovecot::new(3), &refs(&steps));
    let mut rig = Rig::new(cfg, &warm_first(), FakeDovecot::new(3));
    for s in &steps {
        rig.send(s);
    }
    assert_text(&rig.program_saw, &expected);
    assert!(rig.fails.is_empty(), "{:?}", rig.fails);
    assert_eq!(asked(&rig.real, "LIST 1\r\n"), 1);
    assert_eq!(asked(&rig.real, "RETR 1\r\n"), 1, "only the program's own");
    assert!(!String::from_utf8_lossy(&rig.program_saw).contains("straw"));
    // Every message is over that cap: PASS and each RETR wait, as without it.
    assert_eq!(rig.c.stats().link_waits, 11, "PASS + 10 RETR");
}

#[test]
fn first_retr_not_wanted_is_cut_short_and_the_program_gets_its_choice() {
    let steps: Vec<Vec<u8>> = [
        "USER bob\r\n",
        "PASS secret\r\n",
        "UIDL\r\n",
        "RETR 2\r\n",
        "RETR 1\r\n",
        "QUIT\r\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let expected = direct(FakeDovecot::new(3), &refs(&steps));
    let mut rig = Rig::new(PFR_FIRST, &warm_first(), FakeDovecot::new(3));
    for s in &steps {
        rig.send(s);
    }
    assert_text(&rig.program_saw, &expected);
    assert!(rig.fails.is_empty(), "{:?}", rig.fails);
    assert_eq!(asked(&rig.real, "RETR 2\r\n"), 1);
    // The login's RETR 1 was answered here already (the rig is lockstep),
    // so the program's later RETR 1 is asked again: never served stale.
    assert_eq!(asked(&rig.real, "RETR 1\r\n"), 2);
}

#[test]
fn first_retr_with_hold_ashore_is_not_asked() {
    let mut c = ClientAccel::new(PFR_FIRST, &warm_first()).with_hold(HoldConfig {
        over_bytes: OVER,
        except_from: Vec::new(),
        bits_per_sec: 2400,
        cost_per_minute: 1.5,
        store: Arc::new(MemHolds::default()),
    });
    let mut o = Output::default();
    c.start(&mut o);
    c.from_tunnel(GREETING, &mut o);
    c.from_local(b"USER bob\r\nPASS x\r\n", true, &mut o);
    assert!(
        !String::from_utf8_lossy(&o.to_tunnel).contains("XSTRAW"),
        "{:?}",
        String::from_utf8_lossy(&o.to_tunnel)
    );
}

/// The program asks `RETR 1` before anything of the login's replies came:
/// it waits for the conditional reply's status line, then is served from it
/// (or, refused, sends its own RETR).
#[test]
fn first_retr_asked_before_its_status_line_waits_for_it() {
    for refused in [false, true] {
        let mut c = ClientAccel::new(PFR_FIRST, &warm_first());
        let mut o = Output::default();
        c.start(&mut o);
        c.from_tunnel(GREETING, &mut o);
        o = Output::default();
        c.from_local(b"USER bob\r\nPASS x\r\nRETR 1\r\n", true, &mut o);
        assert_eq!(
            o.to_tunnel,
            format!("USER bob\r\nPASS x\r\nSTAT\r\nUIDL\r\nLIST\r\n{UPTO_VERB} 1 {DEFAULT_PREFETCH_RETR_MAX_BYTES}\r\n")
                .as_bytes(),
            "the program's RETR 1 waits"
        );
        o = Output::default();
        c.from_tunnel(
            b"+OK\r\n+OK Logged in.\r\n+OK 1 9\r\n+OK\r\n1 u1\r\n.\r\n+OK\r\n1 9\r\n.\r\n",
            &mut o,
        );
        assert!(
            o.to_tunnel.is_empty(),
            "{:?}",
            String::from_utf8_lossy(&o.to_tunnel)
        );
        let status: &[u8] = if refused {
            UPTO_REFUSED
        } else {
            b"+OK 9 octets\r\n"
        };
        c.from_tunnel(status, &mut o);
        if refused {
            assert_eq!(
                o.to_tunnel, b"RETR 1\r\n",
                "refused: the program's own RETR"
            );
            c.from_tunnel(b"+OK 9 octets\r\nhi there\r\n.\r\n", &mut o);
        } else {
            assert!(o.to_tunnel.starts_with(b"RETR 2") || o.to_tunnel.is_empty());
            c.from_tunnel(b"hi there\r\n.\r\n", &mut o);
        }
        assert!(
            o.to_local.ends_with(b"+OK 9 octets\r\nhi there\r\n.\r\n"),
            "{:?}",
            String::from_utf8_lossy(&o.to_local)
        );
        assert!(!String::from_utf8_lossy(&o.to_local).contains("straw"));
    }
}

/// The server side alone: `LIST n` first, then `RETR n` only if it fits;
/// a refusal or an abort in the line's place, and the next command goes on.
#[test]
fn server_side_retr_upto_checks_the_size_first() {
    let start = || {
        let mut s = ServerAccel::new();
        let mut o = Output::default();
        s.from_local(GREETING, true, &mut o);
        (s, Output::default())
    };
    // Fits: RETR 1 follows, its reply streams.
    let (mut s, mut o) = start();
    s.from_tunnel(format!("{UPTO_VERB} 1 100\r\n").as_bytes(), &mut o);
    assert_eq!(o.to_local, b"LIST 1\r\n");
    o = Output::default();
    s.from_local(b"+OK 1 50\r\n", true, &mut o);
    assert_eq!(o.to_local, b"RETR 1\r\n");
    assert!(
        o.to_tunnel.is_empty(),
        "the LIST reply is the server side's own"
    );
    s.from_local(b"+OK 50 octets\r\nbody\r\n.\r\n", true, &mut o);
    assert_eq!(o.to_tunnel, b"+OK 50 octets\r\nbody\r\n.\r\n");

    // Too big, or no such message: refused, and the next command goes.
    for list_reply in [&b"+OK 1 500\r\n"[..], b"-ERR There's no message.\r\n"] {
        let (mut s, mut o) = start();
        s.from_tunnel(format!("{UPTO_VERB} 1 100\r\nNOOP\r\n").as_bytes(), &mut o);
        o = Output::default();
        s.from_local(list_reply, true, &mut o);
        assert_eq!(o.to_local, b"NOOP\r\n");
        s.from_local(b"+OK\r\n", true, &mut o);
        assert_eq!(o.to_tunnel, [UPTO_REFUSED, b"+OK\r\n"].concat());
    }

    // Aborted while its LIST is out: answered as an aborted prefetch.
    let (mut s, mut o) = start();
    s.from_tunnel(format!("{UPTO_VERB} 1 100\r\n").as_bytes(), &mut o);
    s.from_tunnel(format!("{ABORT_VERB} 1\r\n").as_bytes(), &mut o);
    o = Output::default();
    s.from_local(b"+OK 1 50\r\n", true, &mut o);
    assert!(
        o.to_local.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&o.to_local)
    );
    assert_eq!(o.to_tunnel, [PREFETCH_ABORTED, ABORT_ACK].concat());

    // Malformed: refused without asking.
    let (mut s, mut o) = start();
    s.from_tunnel(format!("{UPTO_VERB} one\r\n").as_bytes(), &mut o);
    assert!(o.to_local.is_empty());
    assert_eq!(o.to_tunnel, UPTO_REFUSED);
}

/// Asked only for an account whose last session began with `RETR 1`: the
/// first session learns it, one that began elsewhere forgets it.
#[test]
fn first_retr_is_asked_only_after_a_session_that_began_with_it() {
    let steps = bench_session();
    let mut first = Rig::new(PFR_FIRST, &warm(), FakeDovecot::new(3));
    for s in &steps[..5] {
        first.send(s);
    }
    assert_eq!(
        asked(&first.real, "LIST 1\r\n"),
        0,
        "nothing remembered yet"
    );
    let cache = first.cache();
    assert_eq!(
        cache
            .get(&format!("{FIRST_RETR_KEY}bob"))
            .map(Vec::as_slice),
        Some(&b"1"[..])
    );

    let mut warm = warm();
    warm.extend(cache);
    let elsewhere: Vec<Vec<u8>> = ["USER bob\r\n", "PASS secret\r\n", "RETR 3\r\n", "QUIT\r\n"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    let expected = direct(FakeDovecot::new(3), &refs(&elsewhere));
    let mut second = Rig::new(PFR_FIRST, &warm, FakeDovecot::new(3));
    for s in &elsewhere {
        second.send(s);
    }
    assert_text(&second.program_saw, &expected);
    assert_eq!(asked(&second.real, "LIST 1\r\n"), 1, "remembered: asked");
    let cache = second.cache();
    assert_eq!(
        cache
            .get(&format!("{FIRST_RETR_KEY}bob"))
            .map(Vec::as_slice),
        Some(&b""[..])
    );

    warm.extend(cache);
    let mut third = Rig::new(PFR_FIRST, &warm, FakeDovecot::new(3));
    for s in &elsewhere {
        third.send(s);
    }
    assert_eq!(
        asked(&third.real, "LIST 1\r\n"),
        0,
        "forgotten after RETR 3"
    );
    assert!(third.fails.is_empty(), "{:?}", third.fails);
}
