//! FETCH resume: the pair back to back with a fake real server.

use std::sync::Arc;

use super::framer::content;
use super::*;
use crate::partial::{MemStore, PartialStore, SharedStore};
use crate::{Accelerator, Cache, Output};

/// The big message: UID 11 at sequence number 5.
const SEQ: u32 = 5;
const UID: u32 = 11;

fn body(variant: u8, len: usize) -> Vec<u8> {
    let mut v = format!("Subject: big {variant}\r\n\r\n").into_bytes();
    let mut x = 0x1234_5678u32 ^ variant as u32;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(b'A' + (x % 26) as u8);
        if x.is_multiple_of(70) {
            v.extend_from_slice(b"\r\n");
        }
    }
    v
}

/// A real server that knows LOGIN, SELECT, FETCH and UID FETCH of one big
/// message (UID 11, seq 5) and `FETCH 1:* (UID)`; anything else is BAD.
struct FakeImap {
    inbuf: Vec<u8>,
    out: Vec<u8>,
    body: Vec<u8>,
    /// Command lines it read.
    seen: Vec<String>,
}

impl FakeImap {
    fn new(body: Vec<u8>) -> Self {
        FakeImap {
            inbuf: Vec::new(),
            out: b"* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n".to_vec(),
            body,
            seen: Vec::new(),
        }
    }

    fn feed(&mut self, data: &[u8]) {
        self.inbuf.extend_from_slice(data);
        while let Some(i) = self.inbuf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.inbuf.drain(..=i).collect();
            let text = String::from_utf8(content(&line).to_vec()).unwrap();
            self.seen.push(text.clone());
            self.answer(&text);
        }
    }

    fn answer(&mut self, text: &str) {
        let w: Vec<&str> = text.splitn(3, ' ').collect();
        let (tag, verb) = (w[0], w.get(1).copied().unwrap_or("").to_ascii_uppercase());
        let args = w.get(2).copied().unwrap_or("").to_ascii_uppercase();
        let mut r = Vec::new();
        let fetch = |by_uid: bool, args: &str, r: &mut Vec<u8>, body: &[u8]| {
            let (set, items) = args.split_once(' ').unwrap();
            let n: u32 = set.parse().unwrap_or(0);
            if (by_uid && n != UID) || (!by_uid && n != SEQ) {
                return;
            }
            let uid = if by_uid || items.contains("UID") {
                format!("UID {UID} ")
            } else {
                String::new()
            };
            let item = if items.contains("RFC822") {
                "RFC822"
            } else {
                "BODY[]"
            };
            r.extend(format!("* {SEQ} FETCH ({uid}{item} {{{}}}\r\n", body.len()).bytes());
            r.extend_from_slice(body);
            r.extend_from_slice(b" FLAGS (\\Seen))\r\n");
        };
        match verb.as_str() {
            "LOGIN" => r.extend(format!("{tag} OK Logged in\r\n").bytes()),
            "SELECT" | "EXAMINE" => r.extend(
                format!("* 7 EXISTS\r\n* OK [UIDVALIDITY 1700000000] UIDs valid\r\n{tag} OK [READ-WRITE] Select completed.\r\n")
                    .bytes(),
            ),
            "FETCH" if args == format!("{SEQ} (UID)") => {
                r.extend(format!("* {SEQ} FETCH (UID {UID})\r\n{tag} OK Fetch completed.\r\n").bytes());
            }
            "FETCH" if args == "1:* (UID)" => {
                for s in 1..=7 {
                    r.extend(format!("* {s} FETCH (UID {})\r\n", s + 6).bytes());
                }
                r.extend(format!("{tag} OK Fetch completed.\r\n").bytes());
            }
            "FETCH" => {
                fetch(false, &args, &mut r, &self.body);
                r.extend(format!("{tag} OK Fetch completed.\r\n").bytes());
            }
            "UID" if args.starts_with("FETCH ") => {
                fetch(true, &args[6..], &mut r, &self.body);
                r.extend(format!("{tag} OK Fetch completed.\r\n").bytes());
            }
            "LOGOUT" => r.extend(format!("* BYE bye\r\n{tag} OK Logout completed.\r\n").bytes()),
            _ => r.extend(
                format!("{tag} BAD Error in IMAP command {verb}: Unknown command.\r\n").bytes(),
            ),
        }
        self.out.extend(r);
    }
}

/// Client side, server side (or none: an older server side that passes
/// everything on) and the fake, pumped until quiet.
struct Rig {
    client: ClientAccel,
    server: Option<ServerAccel>,
    real: FakeImap,
    prog: Vec<u8>,
    notes: Vec<String>,
    /// Bytes from the server side to the client side.
    down: usize,
    /// Pieces the server side's and the real server's bytes come in.
    chunk: usize,
    /// Stop delivering to the client side past this many bytes (a cut).
    budget: Option<usize>,
}

impl Rig {
    fn new(store: &SharedStore, real: FakeImap, old_server: bool) -> Self {
        Self::with_cache(store, real, old_server, &Cache::new())
    }

    fn with_cache(store: &SharedStore, real: FakeImap, old_server: bool, cache: &Cache) -> Self {
        let mut r = Rig {
            client: ClientAccel::new(cache).with_store(store.clone()),
            server: (!old_server).then(ServerAccel::default),
            real,
            prog: Vec::new(),
            notes: Vec::new(),
            down: 0,
            chunk: usize::MAX,
            budget: None,
        };
        let mut o = Output::default();
        r.client.start(&mut o);
        r.prog.extend_from_slice(&o.to_local);
        r
    }

    fn check(&mut self, o: &mut Output) {
        assert_eq!(o.fail, None, "accelerator failed");
        self.notes.append(&mut o.notes);
    }

    /// The program sends `input`; runs until nothing moves. Returns false
    /// if the budget ran out (the cut happened).
    fn run(&mut self, input: &[u8]) -> bool {
        let mut o = Output::default();
        self.client.from_local(input, true, &mut o);
        self.check(&mut o);
        self.prog.extend_from_slice(&o.to_local);
        let mut up = std::mem::take(&mut o.to_tunnel);
        let mut down = Vec::new();
        loop {
            let mut moved = false;
            if !up.is_empty() {
                let d = std::mem::take(&mut up);
                match &mut self.server {
                    Some(s) => {
                        let mut o = Output::default();
                        s.from_tunnel(&d, &mut o);
                        self.check(&mut o);
                        self.real.feed(&o.to_local);
                        down.extend_from_slice(&o.to_tunnel);
                    }
                    None => self.real.feed(&d),
                }
                moved = true;
            }
            if !self.real.out.is_empty() {
                let d = std::mem::take(&mut self.real.out);
                for piece in d.chunks(self.chunk) {
                    match &mut self.server {
                        Some(s) => {
                            let mut o = Output::default();
                            s.from_local(piece, true, &mut o);
                            self.check(&mut o);
                            self.real.feed(&o.to_local);
                            down.extend_from_slice(&o.to_tunnel);
                        }
                        None => down.extend_from_slice(piece),
                    }
                }
                moved = true;
            }
            if !down.is_empty() {
                let d = std::mem::take(&mut down);
                for piece in d.chunks(self.chunk) {
                    let mut piece = piece;
                    let mut cut = false;
                    if let Some(b) = &mut self.budget {
                        let k = piece.len().min(*b);
                        *b -= k;
                        cut = k < piece.len();
                        piece = &piece[..k];
                    }
                    self.down += piece.len();
                    let mut o = Output::default();
                    self.client.from_tunnel(piece, &mut o);
                    self.check(&mut o);
                    self.prog.extend_from_slice(&o.to_local);
                    up.extend_from_slice(&o.to_tunnel);
                    if cut {
                        return false;
                    }
                }
                moved = true;
            }
            if !moved {
                return true;
            }
        }
    }
}

const LOGIN: &[u8] = b"a LOGIN bob pw\r\nb SELECT INBOX\r\n";

fn mem() -> (Arc<MemStore>, SharedStore) {
    let m = Arc::new(MemStore::new());
    (m.clone(), m)
}

fn key() -> String {
    resume::key("bob", "INBOX", 1_700_000_000, UID, "BODY[]")
}

/// What the program gets straight from the real server for `cmds`.
fn direct(body: &[u8], cmds: &[u8]) -> Vec<u8> {
    let mut f = FakeImap::new(body.to_vec());
    f.feed(cmds);
    f.out
}

/// First attempt: the fetch is cut after `keep` body bytes reached the
/// program; the client keeps them.
fn cut(store: &SharedStore, body: &[u8], fetch: &[u8], keep: usize) -> Vec<u8> {
    let mut r = Rig::new(store, FakeImap::new(body.to_vec()), false);
    assert!(r.run(LOGIN));
    let before = r.prog.len();
    let head = format!("* {SEQ} FETCH (UID {UID} BODY[] {{{}}}\r\n", body.len());
    r.budget = Some(head.len() + keep);
    assert!(!r.run(fetch), "the cut never happened");
    let mut o = Output::default();
    r.client.link_lost(&mut o);
    assert!(
        o.to_local.is_empty(),
        "nothing may be written inside a literal"
    );
    r.prog.split_off(before)
}

/// The fetch most tests resume: by UID, the whole message.
const UID_FETCH: &str = "c UID FETCH 11 (BODY.PEEK[])\r\n";

fn session(fetch: &str) -> Vec<u8> {
    [LOGIN, fetch.as_bytes(), b"z LOGOUT\r\n"].concat()
}

/// A session that fetches with `fetch` from a server holding `msg`, with
/// resume on `store`: the program must get exactly what the real server
/// would have sent it.
fn fetch_exactly(store: &SharedStore, msg: &[u8], fetch: &str) -> Rig {
    let mut r = Rig::new(store, FakeImap::new(msg.to_vec()), false);
    assert!(r.run(&session(fetch)));
    assert!(r.prog == direct(msg, &session(fetch)), "not byte-exact");
    r
}

/// [`UID_FETCH`] of `was` cut after `kept` bytes; then, resuming, of `now`
/// (exactly: see [`fetch_exactly`]).
fn cut_then_fetch(store: &SharedStore, was: &[u8], kept: usize, now: &[u8]) -> Rig {
    cut(store, was, UID_FETCH.as_bytes(), kept);
    fetch_exactly(store, now, UID_FETCH)
}

#[test]
fn uid_fetch_resume_sends_only_the_rest_and_is_exact() {
    let b = body(0, 40_000);
    let (m, store) = mem();
    let fetch = UID_FETCH;
    let got = cut(&store, &b, fetch.as_bytes(), 15_000);
    assert!(got.ends_with(&b[..15_000]));
    assert_eq!(m.get(&key()).unwrap(), &b[..15_000], "prefix kept");

    let r = fetch_exactly(&store, &b, fetch);
    assert!(
        r.down < 40_000 - 15_000 + 1_000,
        "{} bytes crossed for 25000 missing",
        r.down
    );
    assert!(r.notes.iter().any(|n| n.contains("resumed")));
    let st = r.server.as_ref().unwrap().stats();
    assert_eq!((st.message_resumes, st.message_resume_bytes), (1, 15_000));
    assert!(m.is_empty(), "partial removed once complete");
    assert!(
        !r.real.seen.iter().any(|l| l.contains("XSTRAW")),
        "the request never reaches the real server"
    );
}

#[test]
fn seq_fetch_uses_uids_the_program_learned() {
    let b = body(1, 30_000);
    let (m, store) = mem();
    // First attempt: a FETCH by number that asks for the UID too.
    cut(&store, &b, b"c FETCH 5 (UID RFC822)\r\n", 10_000);
    // (less the client side's own UID lookup answer, which used budget)
    let kept = m.get(&key()).expect("RFC822 keyed as BODY[]");
    assert!(kept.len() > 9_900 && b.starts_with(&kept));
    // The program learns the UIDs, then fetches by number.
    let s = [LOGIN, b"c FETCH 1:* (UID)\r\n"].concat();
    let mut r = Rig::new(&store, FakeImap::new(b.clone()), false);
    assert!(r.run(&s));
    let before = r.down;
    assert!(r.run(b"d FETCH 5 BODY[]\r\nz LOGOUT\r\n"));
    let all = [s.as_slice(), b"d FETCH 5 BODY[]\r\nz LOGOUT\r\n"].concat();
    assert!(r.prog == direct(&b, &all), "not byte-exact");
    let down = r.down - before;
    assert!(
        down < 20_000 + 600,
        "{down} bytes crossed for 20000 missing"
    );
    assert!(m.is_empty());
}

#[test]
fn changed_prefix_falls_back_to_full() {
    let (m, store) = mem();
    let r = cut_then_fetch(&store, &body(2, 30_000), 12_000, &body(3, 30_000));
    assert!(r.down > 30_000, "must be a full transfer");
    assert!(r.notes.iter().any(|n| n.contains("differs")));
    assert_eq!(r.server.as_ref().unwrap().stats().message_resumes, 0);
    assert!(m.is_empty(), "left: {:?}", m.get(&key()).map(|v| v.len()));
}

#[test]
fn shorter_literal_than_the_prefix_falls_back_to_full() {
    let (_m, store) = mem();
    cut_then_fetch(&store, &body(4, 30_000), 20_000, &body(4, 10_000));
}

#[test]
fn old_server_side_means_a_full_transfer() {
    let b = body(5, 30_000);
    let (m, store) = mem();
    let fetch = UID_FETCH;
    cut(&store, &b, fetch.as_bytes(), 12_000);
    let prefix = m.get(&key()).unwrap();
    let s = [LOGIN, fetch.as_bytes()].concat();
    let mut r = Rig::new(&store, FakeImap::new(b.clone()), true);
    assert!(r.run(&s));
    assert!(r.down > 30_000, "must be a full transfer");
    assert!(m.is_empty());
    // Once refused, no more offers on this connection.
    m.put(&key(), &prefix);
    assert!(r.run(b"d UID FETCH 11 (BODY.PEEK[])\r\n"));
    // The real server's BAD for the request never reaches the program.
    let all = [s.as_slice(), b"d UID FETCH 11 (BODY.PEEK[])\r\n"].concat();
    assert!(r.prog == direct(&b, &all), "not byte-exact");
    let offers = r
        .real
        .seen
        .iter()
        .filter(|l| l.contains("XSTRAW-PARTIAL"))
        .count();
    assert_eq!(offers, 1, "no more offers once refused");
}

#[test]
fn request_before_another_command_is_not_resumed() {
    let (m, store) = mem();
    let fetch = UID_FETCH;
    let b = body(6, 30_000);
    cut(&store, &b, fetch.as_bytes(), 12_000);
    // A server side given a request followed by NOOP answers NOT-RESUMED.
    let mut s = ServerAccel::default();
    let mut o = Output::default();
    s.from_local(b"* OK hi\r\n", true, &mut o);
    let req = resume::request("xstraw.1", UID, "BODY[]", &m.get(&key()).unwrap());
    let mut o = Output::default();
    s.from_tunnel(&[req.as_slice(), b"n NOOP\r\n"].concat(), &mut o);
    assert_eq!(o.to_local, b"n NOOP\r\n");
    assert_eq!(
        o.to_tunnel,
        b"xstraw.1 NO [XSTRAW-NOT-RESUMED] straw: not resumed\r\n"
    );
    let mut o = Output::default();
    s.from_tunnel(b"x XSTRAW-PARTIAL 1 junk\r\n", &mut o);
    assert!(o.to_local.is_empty());
    assert!(o.to_tunnel.starts_with(b"x BAD [XSTRAW-REFUSED]"));
}

#[test]
fn splice_is_exact_under_any_chunking() {
    let b = body(7, 9_000);
    let fetch = UID_FETCH;
    for chunk in [1, 2, 3, 7, 100, 599, 4096, usize::MAX] {
        for keep in [600, 5_000, 8_999] {
            let (m, store) = mem();
            cut(&store, &b, fetch.as_bytes(), keep);
            let mut r = Rig::new(&store, FakeImap::new(b.clone()), false);
            r.chunk = chunk;
            assert!(r.run(&session(fetch)));
            assert!(
                r.prog == direct(&b, &session(fetch)),
                "not exact: chunk {chunk}, keep {keep}"
            );
            assert!(r.down < 9_000 - keep + 600, "chunk {chunk}, keep {keep}");
            assert!(m.is_empty());
        }
    }
}

#[test]
fn small_literals_and_other_mailboxes_are_not_kept() {
    let (m, store) = mem();
    cut(
        &store,
        &body(8, 1_500),
        b"c UID FETCH 11 (BODY.PEEK[])\r\n",
        1_000,
    );
    assert!(m.is_empty(), "below STORE_MIN");
    // Another UIDVALIDITY (a recreated mailbox) never matches the key.
    assert_ne!(
        resume::key("bob", "INBOX", 1, UID, "BODY[]"),
        resume::key("bob", "INBOX", 2, UID, "BODY[]")
    );
}

#[test]
fn seq_fetch_asks_for_the_uid_itself() {
    let b = body(9, 30_000);
    let (m, store) = mem();
    // imaplib's `fetch(n, "(RFC822)")`: no UID in the response; the client
    // side's own lookup keys the literal.
    let fetch = "c FETCH 5 (RFC822)\r\n";
    let mut r = Rig::new(&store, FakeImap::new(b.clone()), false);
    assert!(r.run(LOGIN));
    let head = format!("* {SEQ} FETCH (RFC822 {{{}}}\r\n", b.len());
    r.budget = Some(head.len() + 10_000);
    assert!(!r.run(fetch.as_bytes()));
    let kept = m.get(&key()).unwrap();
    assert!(kept.len() > 9_900 && b.starts_with(&kept));
    assert!(
        r.prog.ends_with(&[head.as_bytes(), &kept].concat()),
        "the lookup's answer never reaches the program"
    );
    // Pipelined: waits for SELECT, then for the UID, then offers.
    let r = fetch_exactly(&store, &b, fetch);
    assert!(r.down < 20_000 + 600, "{} bytes crossed", r.down);
    assert!(m.is_empty());
}

#[test]
fn resumed_answer_without_its_literal_fails_the_connection() {
    let (m, store) = mem();
    m.put(&key(), &body(10, 5_000)[..4_000]);
    let mut c = ClientAccel::new(&Cache::new()).with_store(store);
    let mut o = Output::default();
    c.start(&mut o);
    c.from_tunnel(b"* OK ready\r\n", &mut o);
    c.from_local(LOGIN, true, &mut o);
    c.from_tunnel(
        b"a OK in\r\nxstraw.1 NO [XSTRAW-NOT-SELECTED] straw: not selected\r\n\
          * OK [UIDVALIDITY 1700000000] x\r\nb OK sel\r\n",
        &mut o,
    );
    let mut o = Output::default();
    c.from_local(b"c UID FETCH 11 (BODY.PEEK[])\r\n", true, &mut o);
    assert!(
        o.to_tunnel
            .starts_with(b"xstraw.2 XSTRAW-PARTIAL 1 11 BODY[] 4000 ")
    );
    let mut o = Output::default();
    c.from_tunnel(
        b"xstraw.2 OK [XSTRAW-RESUMED] straw: resumed\r\n* 5 FETCH (FLAGS (\\Seen))\r\n",
        &mut o,
    );
    assert!(o.fail.is_some(), "a splice with no literal must fail");
    // The real response passes; nothing is spliced anywhere.
    assert_eq!(o.to_local, b"* 5 FETCH (FLAGS (\\Seen))\r\n");
}

#[test]
fn a_select_inbox_asked_with_the_login_keys_resume_like_the_programs_own() {
    let b = body(0, 40_000);
    let (_m, store) = mem();
    cut(&store, &b, UID_FETCH.as_bytes(), 15_000);
    // A server known to offer UNSELECT: the prefetch is on.
    let mut cache = Cache::new();
    cache.insert(
        AUTHED_CAPABILITY_KEY.into(),
        b"* CAPABILITY IMAP4rev1 UNSELECT".to_vec(),
    );
    let mut r = Rig::with_cache(&store, FakeImap::new(b.clone()), false, &cache);
    assert!(r.run(b"a LOGIN bob pw\r\n"));
    assert!(r.run(b"b SELECT INBOX\r\n"));
    assert_eq!(r.real.seen, ["a LOGIN bob pw", "xstraw.1 SELECT INBOX"]);
    let before = (r.prog.len(), r.down);
    assert!(r.run(UID_FETCH.as_bytes()));
    assert!(
        r.down - before.1 < 40_000 - 15_000 + 1_000,
        "{} bytes crossed for 25000 missing",
        r.down - before.1
    );
    let want = direct(&b, UID_FETCH.as_bytes());
    let greeting = want.iter().position(|&c| c == b'\n').unwrap() + 1;
    assert!(r.prog[before.0..] == want[greeting..], "not byte-exact");
}
