//! The pair wired back to back with a scripted OpenSMTPD-like server.

use super::reply::ReplyReader;
use super::*;
use crate::partial::SharedStore;
use crate::shared::lines::{MAX_LINE, trim_end};
use crate::test_util::{FakeServer, Inbox, Wired, assert_ends_with, assert_text};
use crate::{AccelStats, Accelerator, Cache, Output};
use proptest::prelude::*;

const GREETING: &[u8] = b"220 mx.example.org ESMTP OpenSMTPD\r\n";
const EHLO_REPLY: &[u8] = b"250-mx.example.org Hello client.local [127.0.0.1], pleased to meet you\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SIZE 36700160\r\n250-DSN\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250 HELP\r\n";
const SHOWN_EHLO: &[u8] = b"250-mx.example.org Hello client.local [127.0.0.1], pleased to meet you\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SIZE 36700160\r\n250-DSN\r\n250-AUTH PLAIN LOGIN\r\n250-HELP\r\n250 PIPELINING\r\n";
const RCPT_OK: &[u8] = b"250 2.1.5 Destination address valid: Recipient ok\r\n";
const QUEUED: &[u8] = b"250 2.0.0 7a3f1c2e Message accepted for delivery\r\n";
const REAL_BYE: &[u8] = b"221 2.0.0 Bye, see you soon\r\n";

#[derive(Debug, Clone, PartialEq)]
enum Mode {
    Cmd,
    Body,
    Sasl(u8),
}

/// A tiny OpenSMTPD-like server.
#[derive(Debug, Clone)]
struct FakeSmtpd {
    greeting: Vec<u8>,
    ehlo: Vec<u8>,
    refuse_data: bool,
    inbox: Inbox,
    mode: Mode,
    mail: bool,
    rcpts: usize,
    body: Vec<u8>,
    /// Bodies accepted, raw (still dot-stuffed, with the terminator).
    bodies: Vec<Vec<u8>>,
    seen: Vec<u8>,
    pipelined: bool,
}

impl FakeServer for FakeSmtpd {
    fn greeting(&self) -> &[u8] {
        &self.greeting
    }

    fn input(&mut self, data: &[u8]) -> Vec<u8> {
        self.seen.extend_from_slice(data);
        let waiting = self.inbox.push(data);
        // Lines of a message body come in a stream; only commands count.
        self.pipelined |= waiting && self.mode != Mode::Body;
        let mut out = Vec::new();
        while let Some(line) = self.inbox.next_line() {
            if self.mode == Mode::Body {
                self.body.extend_from_slice(&line);
                if line == b".\r\n" && (self.body.len() == 3 || self.body.ends_with(b"\r\n.\r\n")) {
                    self.bodies.push(std::mem::take(&mut self.body));
                    self.mode = Mode::Cmd;
                    self.mail = false;
                    self.rcpts = 0;
                    out.extend_from_slice(QUEUED);
                }
                continue;
            }
            let l = String::from_utf8_lossy(trim_end(&line)).to_string();
            out.extend(self.command(&l));
        }
        out
    }
}

impl FakeSmtpd {
    fn new() -> Self {
        Self {
            greeting: GREETING.to_vec(),
            ehlo: EHLO_REPLY.to_vec(),
            refuse_data: false,
            inbox: Inbox::default(),
            mode: Mode::Cmd,
            mail: false,
            rcpts: 0,
            body: Vec::new(),
            bodies: Vec::new(),
            seen: Vec::new(),
            pipelined: false,
        }
    }

    fn command(&mut self, l: &str) -> Vec<u8> {
        let s = |x: &str| x.as_bytes().to_vec();
        if let Mode::Sasl(left) = self.mode {
            if left > 1 {
                self.mode = Mode::Sasl(left - 1);
                return s("334 UGFzc3dvcmQ6\r\n");
            }
            self.mode = Mode::Cmd;
            return s("235 2.0.0 Authentication succeeded\r\n");
        }
        let up = l.to_ascii_uppercase();
        let verb = up.split(' ').next().unwrap_or("").to_string();
        match verb.as_str() {
            "EHLO" => {
                self.mail = false;
                self.ehlo.clone()
            }
            "HELO" => {
                s("250 mx.example.org Hello client.local [127.0.0.1], pleased to meet you\r\n")
            }
            "MAIL" if up.contains("BLOCKED") => s("553 5.1.8 Sender address rejected\r\n"),
            "MAIL" => {
                self.mail = true;
                s("250 2.0.0 Ok\r\n")
            }
            "RCPT" if !self.mail => {
                s("503 5.5.1 Invalid command: Must issue a MAIL command first\r\n")
            }
            "RCPT" if up.contains("NOBODY") => {
                s("550 5.1.1 Invalid recipient: <nobody@example.org>\r\n")
            }
            "RCPT" => {
                self.rcpts += 1;
                RCPT_OK.to_vec()
            }
            "DATA" if self.rcpts == 0 => {
                s("503 5.5.1 Invalid command: Must issue a RCPT command first\r\n")
            }
            "DATA" if self.refuse_data => s("451 4.3.0 Temporary failure, try again later\r\n"),
            "DATA" => {
                self.mode = Mode::Body;
                s("354 Enter mail, end with \".\" on a line by itself\r\n")
            }
            "RSET" => {
                self.mail = false;
                self.rcpts = 0;
                s("250 2.0.0 Reset state\r\n")
            }
            "NOOP" => s("250 2.0.0 Ok\r\n"),
            "QUIT" => REAL_BYE.to_vec(),
            "AUTH" if up == "AUTH PLAIN" => {
                self.mode = Mode::Sasl(1);
                s("334 \r\n")
            }
            "AUTH" if up == "AUTH LOGIN" => {
                self.mode = Mode::Sasl(2);
                s("334 VXNlcm5hbWU6\r\n")
            }
            _ => s("500 5.5.1 Invalid command: Command unrecognized\r\n"),
        }
    }
}

type Rig = Wired<ClientAccel, ServerAccel, FakeSmtpd>;

impl Rig {
    fn new(cache: &Cache, real: FakeSmtpd) -> Self {
        Self::with_stores(cache, real, None, None)
    }

    fn with_stores(
        cache: &Cache,
        real: FakeSmtpd,
        cs: Option<SharedStore>,
        ss: Option<SharedStore>,
    ) -> Self {
        let mut c = ClientAccel::new(cache);
        if let Some(st) = cs {
            c = c.with_store(st);
        }
        let mut s = ServerAccel::new();
        if let Some(st) = ss {
            s = s.with_store(st, "client-a");
        }
        Rig::wire(c, s, real)
    }
}

fn warm() -> Cache {
    let mut c = Cache::new();
    c.insert(GREETING_KEY.into(), GREETING.to_vec());
    c.insert(EHLO_KEY.into(), EHLO_REPLY.to_vec());
    c
}

/// A warm rig whose program has said EHLO (and had the cached answer).
fn after_ehlo() -> Rig {
    let mut rig = Rig::new(&warm(), FakeSmtpd::new());
    rig.send(b"EHLO c\r\n");
    rig
}

const BODY: &[u8] = b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\n..a dot-stuffed line\r\n...\r\nbye\r\n.\r\n";

/// What smtplib's `sendmail` writes, one element per wait-for-reply step.
fn smtplib_steps(body: &[u8]) -> Vec<Vec<u8>> {
    vec![
        b"ehlo client.local\r\n".to_vec(),
        b"mail FROM:<alice@example.org> size=97\r\n".to_vec(),
        b"rcpt TO:<bob@example.org>\r\n".to_vec(),
        b"data\r\n".to_vec(),
        body.to_vec(),
        b"quit\r\n".to_vec(),
    ]
}

fn real_saw(body: &[u8]) -> Vec<u8> {
    let mut v = b"ehlo client.local\r\nmail FROM:<alice@example.org> size=97\r\nrcpt TO:<bob@example.org>\r\nDATA\r\n".to_vec();
    v.extend_from_slice(body);
    v.extend_from_slice(b"quit\r\n");
    v
}

#[test]
fn smtp_smtplib_send_cold_then_warm_waits_at_most_2() {
    let mut cold = Rig::new(&Cache::new(), FakeSmtpd::new());
    assert_eq!(cold.program_saw, GREETING);
    let replies: Vec<Vec<u8>> = smtplib_steps(BODY).iter().map(|s| cold.send(s)).collect();
    assert_text(&replies[0], SHOWN_EHLO);
    assert_eq!(replies[1], MAIL_OK);
    assert_eq!(replies[2], RCPT_OK);
    assert_eq!(replies[3], DATA_GO);
    assert_eq!(replies[4], QUEUED);
    assert_eq!(replies[5], BYE);
    assert!(cold.fails.is_empty(), "{:?}", cold.fails);
    assert_eq!(
        cold.c.stats().link_waits,
        4,
        "greeting, EHLO, RCPT, end of data"
    );
    let cache = cold.cache();
    assert_eq!(cache.get(GREETING_KEY).unwrap(), GREETING);
    assert_eq!(cache.get(EHLO_KEY).unwrap(), EHLO_REPLY);

    let mut rig = Rig::new(&cache, FakeSmtpd::new());
    assert_eq!(rig.program_saw, GREETING);
    let warm: Vec<Vec<u8>> = smtplib_steps(BODY).iter().map(|s| rig.send(s)).collect();
    assert_eq!(warm, replies);
    assert!(rig.fails.is_empty(), "{:?}", rig.fails);
    assert!(rig.puts.is_empty());
    let st = rig.c.stats();
    assert!(st.link_waits <= 2, "waits {}", st.link_waits);
    assert_eq!(st.local_replies, 5, "greeting, EHLO, MAIL, DATA, QUIT");
    assert_text(&rig.real.seen, &real_saw(BODY));
    assert_eq!(rig.real.bodies, vec![BODY.to_vec()], "dot-stuffing intact");
    assert!(!rig.real.pipelined, "server side runs lockstep");
}

#[test]
fn smtp_greeting_checks() {
    // Text differs, same code: tolerated, cache updated.
    let mut cache = warm();
    cache.insert(
        GREETING_KEY.into(),
        b"220 old.example.org ESMTP\r\n".to_vec(),
    );
    let rig = Rig::new(&cache, FakeSmtpd::new());
    assert!(rig.fails.is_empty());
    assert_eq!(
        rig.puts,
        vec![(GREETING_KEY.to_string(), GREETING.to_vec())]
    );
    // Server now refuses service: fail loudly, remember it.
    let mut real = FakeSmtpd::new();
    real.greeting = b"554 5.3.2 mx.example.org not accepting mail\r\n".to_vec();
    let rig = Rig::new(&warm(), real.clone());
    assert_eq!(rig.fails.len(), 1);
    assert!(rig.fails[0].contains("554"), "{}", rig.fails[0]);
    assert_eq!(rig.puts[0].1, real.greeting);
    // A refusing greeting is never cached for serving.
    let rig = Rig::new(&Cache::new(), real.clone());
    assert_eq!(rig.program_saw, real.greeting);
    assert!(rig.puts.is_empty());
}

#[test]
fn smtp_ehlo_capabilities_changed_fail_and_update_cache() {
    let mut real = FakeSmtpd::new();
    real.ehlo = b"250-mx.example.org Hello\r\n250-8BITMIME\r\n250 SIZE 1000\r\n".to_vec();
    let mut rig = Rig::new(&warm(), real.clone());
    assert_text(&rig.send(b"EHLO client.local\r\n"), SHOWN_EHLO);
    rig.send(b"MAIL FROM:<a@example.org>\r\n");
    rig.send(b"RCPT TO:<b@example.org>\r\n");
    assert_eq!(rig.fails.len(), 1, "{:?}", rig.fails);
    assert!(rig.fails[0].contains("EHLO"));
    assert_eq!(rig.puts, vec![(EHLO_KEY.to_string(), real.ehlo.clone())]);
    // Only the first line (the echoed names) differs: fine.
    let mut real = FakeSmtpd::new();
    real.ehlo = EHLO_REPLY.to_vec();
    real.ehlo.splice(4..18, b"other.name".iter().copied());
    let mut rig = Rig::new(&warm(), real);
    rig.send(b"EHLO x\r\n");
    rig.send(b"RCPT TO:<b@example.org>\r\n");
    assert!(rig.fails.is_empty(), "{:?}", rig.fails);
}

#[test]
fn smtp_failed_mail_shows_at_every_rcpt() {
    let mut rig = after_ehlo();
    assert_eq!(rig.send(b"MAIL FROM:<blocked@example.org>\r\n"), MAIL_OK);
    let refusal = b"553 5.1.8 Sender address rejected\r\n";
    assert_eq!(rig.send(b"RCPT TO:<b@example.org>\r\n"), refusal);
    assert_eq!(rig.send(b"RCPT TO:<c@example.org>\r\n"), refusal);
    assert!(
        rig.send(b"DATA\r\n").starts_with(b"503"),
        "DATA gets the real answer"
    );
    assert!(rig.real.seen.ends_with(b"DATA\r\n"));
    // A new transaction starts clean.
    rig.send(b"RSET\r\n");
    rig.send(b"MAIL FROM:<a@example.org>\r\n");
    assert_eq!(rig.send(b"RCPT TO:<b@example.org>\r\n"), RCPT_OK);
    assert!(rig.fails.is_empty());
}

#[test]
fn smtp_refused_rcpts_mean_data_is_asked_for_real() {
    let mut rig = after_ehlo();
    rig.send(b"MAIL FROM:<a@example.org>\r\n");
    assert!(
        rig.send(b"RCPT TO:<nobody@example.org>\r\n")
            .starts_with(b"550")
    );
    let before = rig.c.stats().link_waits;
    assert!(rig.send(b"DATA\r\n").starts_with(b"503 5.5.1"));
    assert_eq!(rig.c.stats().link_waits, before + 1);
}

#[test]
fn smtp_refused_data_swallows_the_body_and_shows_at_end_of_data() {
    let mut real = FakeSmtpd::new();
    real.refuse_data = true;
    let mut rig = Rig::new(&warm(), real);
    rig.send(b"EHLO c\r\n");
    rig.send(b"MAIL FROM:<a@example.org>\r\n");
    rig.send(b"RCPT TO:<b@example.org>\r\n");
    assert_eq!(rig.send(b"DATA\r\n"), DATA_GO, "354 given locally");
    // Body in two reads: the refusal arrives while it's still coming.
    assert_eq!(rig.send(&BODY[..20]), b"");
    assert_eq!(
        rig.send(&BODY[20..]),
        b"451 4.3.0 Temporary failure, try again later\r\n"
    );
    assert_eq!(rig.send(b"QUIT\r\n"), BYE);
    assert!(rig.real.bodies.is_empty());
    assert!(
        rig.real
            .seen
            .ends_with(b"RCPT TO:<b@example.org>\r\nDATA\r\nQUIT\r\n"),
        "body never reached the server"
    );
    assert!(rig.fails.is_empty());

    // Body already complete when the refusal arrives (pipelined in one read).
    let mut real = FakeSmtpd::new();
    real.refuse_data = true;
    let mut c = ClientAccel::new(&warm());
    let mut o = Output::default();
    c.start(&mut o);
    c.from_tunnel(GREETING, &mut o);
    c.from_local(b"EHLO c\r\nMAIL FROM:<a>\r\nRCPT TO:<b>\r\n", true, &mut o);
    c.from_tunnel(EHLO_REPLY, &mut o);
    c.from_tunnel(b"250 2.0.0 Ok\r\n", &mut o);
    c.from_tunnel(RCPT_OK, &mut o);
    o.clear();
    c.from_local(b"DATA\r\nbody\r\n.\r\n", true, &mut o);
    assert_eq!(o.to_local, DATA_GO);
    assert_eq!(o.to_tunnel, b"XSTRAW-DATA\r\nbody\r\n.\r\n");
    o.clear();
    c.from_tunnel(b"451 4.3.0 Try later\r\n", &mut o);
    assert_eq!(o.to_local, b"451 4.3.0 Try later\r\n");
    assert!(o.fail.is_none());
}

#[test]
fn smtp_quit_is_real_while_a_message_is_unconfirmed() {
    let mut rig = after_ehlo();
    rig.send(b"MAIL FROM:<a@example.org>\r\n");
    rig.send(b"RCPT TO:<b@example.org>\r\n");
    rig.send(b"DATA\r\n");
    let mut tail = BODY.to_vec();
    tail.extend_from_slice(b"QUIT\r\n");
    let r = rig.send(&tail);
    let mut want = QUEUED.to_vec();
    want.extend_from_slice(REAL_BYE);
    assert_text(&r, &want);
}

#[test]
fn smtp_auth_passes_through_in_lockstep() {
    let mut rig = after_ehlo();
    assert_eq!(rig.send(b"AUTH LOGIN\r\n"), b"334 VXNlcm5hbWU6\r\n");
    // "RCPT" as a SASL response must not be read as a command.
    assert_eq!(rig.send(b"RCPT\r\n"), b"334 UGFzc3dvcmQ6\r\n");
    assert_eq!(
        rig.send(b"DATA\r\n"),
        b"235 2.0.0 Authentication succeeded\r\n"
    );
    assert_eq!(rig.send(b"AUTH PLAIN\r\n"), b"334 \r\n");
    assert!(rig.send(b"AGJvYgBzZWNyZXQ=\r\n").starts_with(b"235"));
    assert_ends_with(
        &rig.real.seen,
        b"AUTH LOGIN\r\nRCPT\r\nDATA\r\nAUTH PLAIN\r\nAGJvYgBzZWNyZXQ=\r\n",
    );
    assert!(rig.fails.is_empty());
}

#[test]
fn smtp_program_pipelining_groups() {
    let mut rig = after_ehlo();
    // RFC 2920 group: DATA last. No RCPT reply seen yet: DATA waits for real.
    let r = rig.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<nobody@example.org>\r\nDATA\r\n");
    let mut want = MAIL_OK.to_vec();
    want.extend_from_slice(RCPT_OK);
    want.extend_from_slice(b"550 5.1.1 Invalid recipient: <nobody@example.org>\r\n");
    want.extend_from_slice(b"354 Enter mail, end with \".\" on a line by itself\r\n");
    assert_text(&r, &want);
    assert_eq!(rig.send(BODY), QUEUED);
    assert_eq!(rig.real.bodies, vec![BODY.to_vec()]);
    assert_eq!(rig.send(b"QUIT\r\n"), BYE);
    assert!(rig.fails.is_empty());
}

#[test]
fn smtp_starttls_and_private_lines_never_reach_the_server() {
    let mut rig = after_ehlo();
    assert!(rig.send(b"STARTTLS\r\n").starts_with(b"454"));
    assert!(rig.send(SYNTH_DATA).starts_with(b"500"));
    assert_eq!(rig.real.seen, b"EHLO c\r\n");
    let mut c = ClientAccel::new(&warm());
    let mut o = Output::default();
    c.start(&mut o);
    c.from_local(b"BDAT 10 LAST\r\n", true, &mut o);
    assert!(o.fail.is_some());
}

#[test]
fn smtp_large_body_is_bulk_and_byte_exact() {
    let mut body = Vec::new();
    for i in 0..2000 {
        body.extend_from_slice(
            format!(
                "{}line {i} with some text\r\n",
                if i % 7 == 0 { ".." } else { "" }
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(b".\r\n");
    let mut rig = Rig::new(&warm(), FakeSmtpd::new());
    for s in smtplib_steps(&body) {
        rig.send(&s);
    }
    assert!(rig.client_bulk);
    assert_eq!(rig.real.bodies, vec![body]);
    assert!(rig.c.stats().link_waits <= 2);
}

#[test]
fn smtp_garbage_and_oversized_lines_fail_cleanly() {
    let mut c = ClientAccel::new(&warm());
    let mut o = Output::default();
    c.start(&mut o);
    c.from_local(&vec![b'M'; MAX_LINE + 1], false, &mut o);
    assert!(o.fail.as_deref().unwrap().contains("longer"));

    let mut c = ClientAccel::new(&warm());
    let mut o = Output::default();
    c.start(&mut o);
    c.from_tunnel(b"+OK this is POP3\r\n", &mut o);
    assert!(o.fail.is_some());

    let mut c = ClientAccel::new(&warm());
    let mut o = Output::default();
    c.start(&mut o);
    c.from_tunnel(GREETING, &mut o);
    c.from_tunnel(b"250 unasked\r\n", &mut o);
    assert!(o.fail.is_some());

    let mut s = ServerAccel::new();
    let mut o = Output::default();
    let mut long = Vec::new();
    for _ in 0..2000 {
        long.extend_from_slice(b"220-0123456789012345678901234567890123456789\r\n");
    }
    s.from_local(&long, true, &mut o);
    assert!(o.fail.as_deref().unwrap().contains("too long"));
    let mut s = ServerAccel::new();
    let mut o = Output::default();
    s.from_local(b"220 hi\r\n250 unasked\r\n", true, &mut o);
    assert!(o.fail.is_some());
    assert!(
        ReplyReader::default().feed(b"250-a\r\n251 b\r\n").is_err(),
        "codes must agree"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn smtp_any_split_of_each_step_gives_the_same_result(
        cuts in proptest::collection::vec(0usize..300, 0..16)
    ) {
        let steps = smtplib_steps(BODY);
        let mut rig = Rig::new(&warm(), FakeSmtpd::new());
        let mut off = 0;
        for s in &steps {
            let mut at: Vec<usize> = cuts.iter().filter(|&&c| c > off && c < off + s.len()).map(|c| c - off).collect();
            at.sort();
            let mut last = 0;
            for c in at.into_iter().chain([s.len()]) {
                rig.send(&s[last..c]);
                last = c;
            }
            off += s.len();
        }
        let mut want = GREETING.to_vec();
        for r in [SHOWN_EHLO, MAIL_OK, RCPT_OK, DATA_GO, QUEUED, BYE] {
            want.extend_from_slice(r);
        }
        prop_assert_eq!(&rig.program_saw, &want);
        prop_assert_eq!(&rig.real.seen, &real_saw(BODY));
        prop_assert!(rig.fails.is_empty());
        prop_assert!(rig.c.stats().link_waits <= 2);
    }
}

// ---------------------------------------------------------------- link lost

/// A client side with no cache, started: what it said so far in `out`.
fn started() -> (ClientAccel, Output) {
    let mut c = ClientAccel::new(&Cache::new());
    let mut out = Output::default();
    c.start(&mut out);
    (c, out)
}

/// The client side alone, fed by hand; returns what the program got.
fn client_says(c: &mut ClientAccel, program: &[u8], real: &[u8]) -> Vec<u8> {
    let mut out = Output::default();
    let mut got = Vec::new();
    if !program.is_empty() {
        c.from_local(program, true, &mut out);
        got.append(&mut out.to_local);
    }
    if !real.is_empty() {
        c.from_tunnel(real, &mut out);
        got.append(&mut out.to_local);
    }
    assert!(out.fail.is_none(), "{:?}", out.fail);
    got
}

fn link_lost(c: &mut ClientAccel) -> Vec<u8> {
    let mut out = Output::default();
    Accelerator::link_lost(c, &mut out);
    out.to_local
}

/// Up to an accepted recipient, with the message body sent.
fn client_with_body_sent() -> ClientAccel {
    let (mut c, _) = started();
    client_says(&mut c, b"", GREETING);
    client_says(&mut c, b"EHLO me\r\n", EHLO_REPLY);
    let got = client_says(
        &mut c,
        b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n",
        b"250 2.0.0 Ok\r\n",
    );
    assert_eq!(got, MAIL_OK);
    assert_eq!(client_says(&mut c, b"", RCPT_OK), RCPT_OK);
    let got = client_says(&mut c, b"DATA\r\nSubject: t\r\n\r\nbody\r\n.\r\n", b"");
    assert_eq!(got, DATA_GO, "354 answered locally");
    c
}

#[test]
fn link_lost_after_end_of_data_is_421_not_success() {
    let mut c = client_with_body_sent();
    // The real 354 came, the end-of-data reply never did.
    assert!(client_says(&mut c, b"", b"354 go ahead\r\n").is_empty());
    assert_eq!(link_lost(&mut c), LINK_LOST);
    // Nothing more afterwards, whatever arrives.
    let mut out = Output::default();
    c.from_tunnel(QUEUED, &mut out);
    assert!(out.to_local.is_empty());
}

#[test]
fn link_lost_mid_body_is_421_as_the_end_of_data_reply() {
    let (mut c, _) = started();
    client_says(&mut c, b"", GREETING);
    client_says(&mut c, b"EHLO me\r\n", EHLO_REPLY);
    client_says(
        &mut c,
        b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n",
        b"250 2.0.0 Ok\r\n",
    );
    client_says(&mut c, b"", RCPT_OK);
    client_says(&mut c, b"DATA\r\nSubject: t\r\n\r\nhalf a bo", b"");
    assert_eq!(link_lost(&mut c), LINK_LOST);
}

#[test]
fn link_lost_in_a_pipeline_answers_the_first_pending_reply_only() {
    let (mut c, _) = started();
    client_says(&mut c, b"", GREETING);
    client_says(&mut c, b"EHLO me\r\n", EHLO_REPLY);
    // RSET waits for its real reply; MAIL after it is answered locally but
    // must not be shown after the 421.
    let got = client_says(&mut c, b"RSET\r\nMAIL FROM:<a@x>\r\n", b"");
    assert!(got.is_empty());
    assert_eq!(link_lost(&mut c), LINK_LOST);
}

#[test]
fn link_lost_before_the_greeting_is_a_421_greeting() {
    let (mut c, out) = started();
    assert!(out.to_local.is_empty());
    assert_eq!(link_lost(&mut c), LINK_LOST);
}

#[test]
fn link_lost_after_quit_says_nothing() {
    let (mut c, _) = started();
    client_says(&mut c, b"", GREETING);
    assert_eq!(client_says(&mut c, b"QUIT\r\n", b""), BYE);
    assert!(link_lost(&mut c).is_empty());
}

// ---------------------------------------------------------------- resume

use crate::partial::MemStore;
use std::sync::Arc;

/// A dot-stuffed body of about `len` bytes, varied by `seed`.
fn long_body(len: usize, seed: u8) -> Vec<u8> {
    let mut b = format!("From: a@x\r\nTo: b@y\r\nSubject: long {seed}\r\n\r\n").into_bytes();
    let mut i = 0usize;
    while b.len() < len {
        b.extend(format!("line {i} of message {seed}: the quick brown fox\r\n").as_bytes());
        if i.is_multiple_of(50) {
            b.extend_from_slice(b"..a stuffed dot line\r\n");
        }
        i += 1;
    }
    b.extend_from_slice(b".\r\n");
    b
}

const ENVELOPE: &[u8] = b"EHLO me\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n";

struct Stores {
    c: Arc<MemStore>,
    s: Arc<MemStore>,
    /// The server side's counters after the last [`full_send`].
    server_stats: std::cell::Cell<AccelStats>,
}

impl Stores {
    fn new() -> Self {
        Self {
            c: Arc::new(MemStore::new()),
            s: Arc::new(MemStore::new()),
            server_stats: Default::default(),
        }
    }

    fn rig(&self, real: FakeSmtpd) -> Rig {
        Rig::with_stores(&warm(), real, Some(self.c.clone()), Some(self.s.clone()))
    }
}

/// A send whose link dies after the client sent `cut` body bytes: the
/// program gets the 421 as its end-of-data reply. Returns the real server.
fn cut_send(st: &Stores, body: &[u8], cut: usize) -> FakeSmtpd {
    let mut rig = st.rig(FakeSmtpd::new());
    rig.send(ENVELOPE);
    assert_eq!(rig.send(b"DATA\r\n"), DATA_GO);
    rig.send(&body[..cut]);
    assert_eq!(link_lost(&mut rig.c), LINK_LOST);
    assert!(rig.fails.is_empty(), "{:?}", rig.fails);
    rig.real
}

/// A whole send on a fresh connection: (end-of-data reply, body bytes the
/// client side put into the stream, the real server).
fn full_send(st: &Stores, body: &[u8], real: FakeSmtpd) -> (Vec<u8>, usize, FakeSmtpd) {
    let mut rig = st.rig(real);
    rig.send(ENVELOPE);
    assert_eq!(rig.send(b"DATA\r\n"), DATA_GO);
    let before = rig.c2s_bytes;
    let reply = rig.send(body);
    let sent = rig.c2s_bytes - before;
    assert_eq!(rig.send(b"QUIT\r\n"), BYE);
    assert!(rig.fails.is_empty(), "{:?}", rig.fails);
    st.server_stats.set(rig.s.stats());
    (reply, sent, rig.real)
}

#[test]
fn smtp_resume_sends_only_the_rest_and_delivers_once() {
    let st = Stores::new();
    let body = long_body(40_000, 1);
    let real = cut_send(&st, &body, 25_000);
    assert!(real.bodies.is_empty(), "nothing delivered");
    assert!(
        !String::from_utf8_lossy(&real.seen).contains("DATA"),
        "the real server never saw DATA for half a message"
    );
    assert_eq!(st.c.len(), 1, "client marked the unconfirmed message");
    let (reply, sent, real) = full_send(&st, &body, FakeSmtpd::new());
    assert_eq!(reply, QUEUED);
    assert_eq!(real.bodies, vec![body.clone()], "one whole message");
    assert!(
        sent < body.len() - 25_000 + 200,
        "resumed send put {sent} bytes in the stream for {} missing",
        body.len() - 25_000
    );
    assert!(st.c.is_empty(), "mark removed once confirmed");
    // Only the delivered-message record is left on the server side.
    assert_eq!(st.s.len(), 1);
    let resumed = st.server_stats.get();
    assert_eq!(resumed.message_resumes, 1);
    assert!(
        (20_000..=25_000).contains(&resumed.message_resume_bytes),
        "{resumed:?}"
    );
}

#[test]
fn smtp_resume_under_any_split_is_exact() {
    let body = long_body(6_000, 2);
    for cut in [
        0,
        10,
        1023,
        1024,
        1025,
        3000,
        body.len() - 3,
        body.len() - 1,
    ] {
        let st = Stores::new();
        cut_send(&st, &body, cut);
        let mut rig = st.rig(FakeSmtpd::new());
        rig.send(ENVELOPE);
        rig.send(b"DATA\r\n");
        let mut reply = Vec::new();
        for piece in body.chunks(97) {
            reply.extend(rig.send(piece));
        }
        assert_eq!(reply, QUEUED, "cut {cut}");
        assert_eq!(rig.real.bodies, vec![body.clone()], "cut {cut}");
        assert!(rig.fails.is_empty(), "cut {cut}: {:?}", rig.fails);
    }
}

#[test]
fn smtp_resume_changed_body_is_sent_whole() {
    let st = Stores::new();
    let body = long_body(20_000, 3);
    cut_send(&st, &body, 15_000);
    // Same envelope and first bytes (same id), different after them.
    let mut changed = body.clone();
    changed[5_000] = b'#';
    let (reply, sent, real) = full_send(&st, &changed, FakeSmtpd::new());
    assert_eq!(reply, QUEUED);
    assert_eq!(real.bodies, vec![changed.clone()]);
    assert!(sent >= changed.len(), "full send, {sent} bytes");
    // A different envelope is another message: nothing asked.
    let st = Stores::new();
    cut_send(&st, &body, 15_000);
    let mut rig = st.rig(FakeSmtpd::new());
    rig.send(b"EHLO me\r\nMAIL FROM:<other@x>\r\nRCPT TO:<b@y>\r\n");
    rig.send(b"DATA\r\n");
    assert_eq!(rig.send(&body), QUEUED);
    assert!(!String::from_utf8_lossy(&rig.real.seen).contains("XSTRAW"));
}

#[test]
fn smtp_resume_with_an_old_server_side_is_a_plain_full_send() {
    let st = Stores::new();
    let body = long_body(20_000, 4);
    cut_send(&st, &body, 15_000);
    // A server side without resume passes the line to the real server,
    // whose 500 means: send it all.
    let mut rig = Rig::with_stores(&warm(), FakeSmtpd::new(), Some(st.c.clone()), None);
    rig.send(ENVELOPE);
    assert_eq!(rig.send(b"DATA\r\n"), DATA_GO);
    assert_eq!(rig.send(&body), QUEUED);
    assert_eq!(rig.send(b"QUIT\r\n"), BYE);
    assert!(rig.fails.is_empty(), "{:?}", rig.fails);
    assert!(String::from_utf8_lossy(&rig.real.seen).contains("XSTRAW-RESUME 1 "));
    assert_eq!(rig.real.bodies, vec![body]);
    assert!(st.c.is_empty());
}

#[test]
fn smtp_delivered_message_whose_reply_was_lost_is_not_delivered_again() {
    let st = Stores::new();
    let body = long_body(8_000, 5);
    let mut rig = st.rig(FakeSmtpd::new());
    rig.send(ENVELOPE);
    rig.send(b"DATA\r\n");
    // The whole body crosses and is delivered; the reply never comes back.
    rig.deaf = true;
    assert!(rig.send(&body).is_empty());
    assert_eq!(rig.real.bodies, vec![body.clone()]);
    assert_eq!(link_lost(&mut rig.c), LINK_LOST, "unconfirmed is not done");
    // The retry gets the recorded reply; the real server sees no DATA.
    let (reply, sent, real) = full_send(&st, &body, FakeSmtpd::new());
    assert_eq!(reply, QUEUED);
    assert!(real.bodies.is_empty(), "delivered twice");
    let seen = String::from_utf8_lossy(&real.seen).to_string();
    assert!(seen.contains("RSET") && !seen.contains("DATA"), "{seen}");
    assert!(sent < 100, "{sent} bytes for a delivered message");
    assert!(st.c.is_empty());
    // The same message sent again after a confirmed send is a new message.
    let (reply, _, real) = full_send(&st, &body, FakeSmtpd::new());
    assert_eq!(reply, QUEUED);
    assert_eq!(real.bodies, vec![body]);
}

#[test]
fn smtp_kept_body_refused_at_data_shows_the_refusal() {
    let st = Stores::new();
    let mut real = FakeSmtpd::new();
    real.refuse_data = true;
    let (reply, _, real) = full_send(&st, BODY, real);
    assert_eq!(reply, b"451 4.3.0 Temporary failure, try again later\r\n");
    assert!(real.bodies.is_empty());
    assert!(st.c.is_empty() && st.s.is_empty());
}

// ------------------------------------------------- hostile kept bodies

/// A server side with a store, greeted by a real server that announces
/// `size` in its EHLO reply (none if 0), after `EHLO`.
fn kept_server(store: &Arc<MemStore>, size: u64) -> ServerAccel {
    let mut s = ServerAccel::new()
        .with_store(store.clone(), "client-a")
        .with_max_message(1 << 20);
    let mut out = Output::default();
    s.from_local(b"220 real ESMTP\r\n", true, &mut out);
    s.from_tunnel(b"EHLO me\r\n", &mut out);
    let ehlo = match size {
        0 => "250-real\r\n250 8BITMIME\r\n".to_owned(),
        n => format!("250-real\r\n250-SIZE {n}\r\n250 8BITMIME\r\n"),
    };
    s.from_local(ehlo.as_bytes(), true, &mut out);
    s
}

/// Feeds `total` body bytes (no final dot) in 64 KiB pieces; returns what
/// went to the client side and the most the accelerator ever held.
fn flood_body(s: &mut ServerAccel, store: &MemStore, total: usize) -> (Vec<u8>, usize) {
    let piece = b"x".repeat(64 * 1024 - 2);
    let mut to_tunnel = Vec::new();
    let mut most = 0;
    let mut sent = 0;
    while sent < total {
        let mut out = Output::default();
        s.from_tunnel(&piece, &mut out);
        s.from_tunnel(b"\r\n", &mut out);
        sent += piece.len() + 2;
        assert!(out.fail.is_none(), "{:?}", out.fail);
        to_tunnel.extend(out.to_tunnel);
        let kept = s.kept.as_ref().map_or(0, |k| k.buf.len());
        most = most.max(kept + s.inbuf.len() + store.bytes());
    }
    (to_tunnel, most)
}

/// Issue 12, item 2: `XSTRAW-DATA` with no recipient accepted used to put
/// the server side in kept-body mode, and the body grew without bound.
#[test]
fn kept_body_needs_an_accepted_recipient() {
    let store = Arc::new(MemStore::new());
    let mut s = kept_server(&store, 0);
    let mut out = Output::default();
    s.from_tunnel(b"XSTRAW-DATA\r\n", &mut out);
    assert_eq!(out.to_tunnel, b"503 5.5.1 straw: no valid recipients\r\n");
    let (_, most) = flood_body(&mut s, &store, 8 << 20);
    assert!(most < 70_000, "held {most} bytes of an 8 MiB body");
    // The end of the dropped body leaves the dialogue where it was.
    let mut out = Output::default();
    s.from_tunnel(b".\r\nNOOP\r\n", &mut out);
    assert_eq!(out.to_local, b"NOOP\r\n");
}

/// Issue 12, item 2: a kept body stops at the real server's SIZE (or the
/// configured maximum): the program gets a 552, the rest is dropped.
#[test]
fn kept_body_is_capped_by_size_and_by_the_limit() {
    for (size, limit) in [(300_000, 300_000), (0, 1 << 20), (8 << 20, 1 << 20)] {
        let store = Arc::new(MemStore::new());
        let mut s = kept_server(&store, size);
        let mut out = Output::default();
        s.from_tunnel(b"MAIL FROM:<a@x>\r\n", &mut out);
        s.from_local(b"250 ok\r\n", true, &mut out);
        s.from_tunnel(b"RCPT TO:<b@y>\r\n", &mut out);
        s.from_local(b"250 ok\r\n", true, &mut out);
        let mut out = Output::default();
        s.from_tunnel(b"XSTRAW-DATA\r\n", &mut out);
        assert!(out.to_tunnel.is_empty(), "kept: {:?}", out.to_tunnel);
        let (to_tunnel, most) = flood_body(&mut s, &store, 4 << 20);
        let refusal = format!("552 5.3.4 straw: message exceeds the limit of {limit} bytes\r\n");
        assert_eq!(String::from_utf8_lossy(&to_tunnel), refusal, "SIZE {size}");
        assert!(
            most <= 2 * limit as usize + 70_000,
            "held {most} bytes for a limit of {limit}"
        );
        assert_eq!(store.bytes(), 0, "the partial body is dropped");
        assert!(s.kept.is_none());
    }
}

/// A command that arrives behind one awaiting its reply is a link round
/// trip the program did not wait for; the server side's own (RSET for a
/// kept body, say) and a command sent when idle are not.
#[test]
fn commands_sent_ahead_count_waits_saved() {
    let mut s = ServerAccel::new();
    let mut o = Output::default();
    s.from_tunnel(b"EHLO boat\r\nMAIL FROM:<a@b>\r\n", &mut o);
    s.from_local(b"220 hi\r\n", true, &mut o);
    assert_eq!(o.to_local, b"EHLO boat\r\n");
    s.from_local(b"250 hi\r\n", true, &mut o);
    assert_eq!(o.to_local, b"EHLO boat\r\nMAIL FROM:<a@b>\r\n");
    s.from_local(b"250 ok\r\n", true, &mut o);
    assert_eq!(
        s.stats().link_waits_saved,
        2,
        "EHLO behind the greeting, MAIL behind EHLO"
    );
    s.from_tunnel(b"RCPT TO:<c@d>\r\n", &mut o);
    s.from_local(b"250 ok\r\n", true, &mut o);
    assert_eq!(s.stats().link_waits_saved, 2, "RCPT came alone");
}

/// A reply whose next command is already here (the client side answered
/// it itself: greeting, EHLO, MAIL) waits on the server side for that
/// command's reply, so a warm session's first wait crosses in one record,
/// one IP packet, not four.
#[test]
fn replies_ride_with_the_next_ones_while_commands_are_queued() {
    let mut s = ServerAccel::new();
    let mut o = Output::default();
    s.from_tunnel(b"EHLO me\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\n", &mut o);
    s.from_local(b"220 mx ESMTP\r\n", true, &mut o);
    assert!(o.to_tunnel.is_empty(), "held");
    assert!(!o.flush);
    assert_eq!(o.to_local, b"EHLO me\r\n", "lockstep");
    s.from_local(b"250-mx\r\n250 SIZE 1000\r\n", true, &mut o);
    s.from_local(b"250 2.1.0 Ok\r\n", true, &mut o);
    assert!(
        o.to_tunnel.is_empty() && !o.flush,
        "{:?}",
        String::from_utf8_lossy(&o.to_tunnel)
    );
    assert_eq!(
        o.to_local,
        b"EHLO me\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\n"
    );
    s.from_local(b"250 2.1.5 Ok\r\n", true, &mut o);
    assert_eq!(
        o.to_tunnel,
        b"220 mx ESMTP\r\n250-mx\r\n250 SIZE 1000\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
    );
    assert!(o.flush);

    // Nothing behind MAIL yet: its reply goes at once.
    let mut s = ServerAccel::new();
    let mut o = Output::default();
    s.from_local(b"220 mx ESMTP\r\n", true, &mut o);
    assert!(o.flush, "the greeting of a program that waits for it");
    s.from_tunnel(b"MAIL FROM:<a@x>\r\n", &mut o);
    let mut o = Output::default();
    s.from_local(b"553 5.1.8 no\r\n", true, &mut o);
    assert_eq!(o.to_tunnel, b"553 5.1.8 no\r\n");
    assert!(o.flush);

    // The pair's own lines are never waited behind (they may answer here).
    let mut s = ServerAccel::new();
    let mut o = Output::default();
    s.from_local(b"220 mx ESMTP\r\n", true, &mut o);
    s.from_tunnel(b"RCPT TO:<b@x>\r\nXSTRAW-DATA\r\n", &mut o);
    let mut o = Output::default();
    s.from_local(b"250 2.1.5 Ok\r\n", true, &mut o);
    assert_eq!(o.to_tunnel, b"250 2.1.5 Ok\r\n");
    assert!(o.flush);

    // The 354 the client side stood in for goes with the end-of-data reply;
    // a refusal at once.
    for (real, held) in [(&b"354 go\r\n"[..], true), (b"451 later\r\n", false)] {
        let mut s = ServerAccel::new();
        let mut o = Output::default();
        s.from_local(b"220 mx ESMTP\r\n", true, &mut o);
        s.from_tunnel(b"XSTRAW-DATA\r\nSubject: x\r\n", &mut o);
        let mut o = Output::default();
        s.from_local(real, true, &mut o);
        assert_eq!(o.to_tunnel.is_empty(), held);
        assert_eq!(o.flush, !held);
        s.from_tunnel(b"\r\nhi\r\n.\r\n", &mut o);
        if held {
            s.from_local(b"250 2.0.0 accepted\r\n", true, &mut o);
            assert_eq!(o.to_tunnel, b"354 go\r\n250 2.0.0 accepted\r\n");
            assert!(o.flush);
        }
    }

    // An end-of-data reply commits a message: never held, even with the
    // next transaction's MAIL already here.
    let mut s = ServerAccel::new();
    let mut o = Output::default();
    s.from_local(b"220 mx ESMTP\r\n", true, &mut o);
    s.from_tunnel(b"XSTRAW-DATA\r\nhi\r\n.\r\nMAIL FROM:<a@x>\r\n", &mut o);
    s.from_local(b"354 go\r\n", true, &mut o);
    let mut o = Output::default();
    s.from_local(b"250 2.0.0 accepted\r\n", true, &mut o);
    assert_eq!(o.to_tunnel, b"354 go\r\n250 2.0.0 accepted\r\n");
    assert!(o.flush);
    assert_eq!(o.to_local, b"MAIL FROM:<a@x>\r\n");

    // QUIT's reply waits for the stream's end (the session's cork).
    let mut s = ServerAccel::new();
    let mut o = Output::default();
    s.from_local(b"220 mx ESMTP\r\n", true, &mut o);
    s.from_tunnel(b"QUIT\r\n", &mut o);
    let mut o = Output::default();
    s.from_local(b"221 2.0.0 Bye\r\n", true, &mut o);
    assert_eq!(o.to_tunnel, b"221 2.0.0 Bye\r\n");
    assert!(!o.flush);

    // A long pipeline: what is held stays bounded.
    let mut s = ServerAccel::new();
    let mut o = Output::default();
    s.from_local(b"220 mx ESMTP\r\n", true, &mut o);
    s.from_tunnel(&b"NOOP\r\n".repeat(2000), &mut o);
    let mut o = Output::default();
    let mut most = 0;
    for _ in 0..1999 {
        s.from_local(b"250 2.0.0 Ok\r\n", true, &mut o);
        most = most.max(s.held.len());
    }
    assert!(most <= 4096, "{most}");
    assert!(o.flush && o.to_tunnel.len() >= 1999 * 14 - 4096);

    // A real server that closes instead of answering the RCPT.
    let mut s = ServerAccel::new();
    let mut o = Output::default();
    s.from_local(b"220 mx ESMTP\r\n", true, &mut o);
    s.from_tunnel(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\n", &mut o);
    let mut o = Output::default();
    s.from_local(b"250 2.1.0 Ok\r\n", true, &mut o);
    s.local_eof(&mut o);
    assert_eq!(o.to_tunnel, b"250 2.1.0 Ok\r\n");
    assert!(o.flush);
}
