//! Message-level resume (issue 5): a POP3 RETR cut off for longer than the
//! grace period leaves its body in the client's partial store, and the next
//! RETR of the same message moves only the rest over the link, byte-exact.
//! Fake POP3 upstream in process; linksim cuts the link mid-message and
//! refuses reconnects for 2 s (grace is 1 s, so the session is given up).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use straw_tools::linksim::Link;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A ~300 KB MIME mail with a random "PNG" and a base64 text attachment,
/// like bob's attachment mail in the real peers.
fn big_mail(variant: u8) -> Vec<u8> {
    attachment_mail(
        &format!("Subject: attachments {variant}\r\n"),
        "Here they are.\r\n.dot line\r\n",
        7 + variant as u64,
    )
}

/// A POP3 server with one mailbox of two messages; message 2 is `big`.
async fn fake_pop3(big: Arc<Mutex<Vec<u8>>>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let big = big.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                let _ = w.write_all(b"+OK fake POP3 ready\r\n").await;
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let msgs = [
                        b"Subject: small\r\n\r\nhi\r\n".to_vec(),
                        big.lock().unwrap().clone(),
                    ];
                    let mut words = line.split_whitespace();
                    let verb = words.next().unwrap_or("").to_ascii_uppercase();
                    let n = words.next().and_then(|n| n.parse::<usize>().ok());
                    let reply: Vec<u8> = match (verb.as_str(), n) {
                        ("STAT", _) => {
                            format!("+OK 2 {}\r\n", msgs[0].len() + msgs[1].len()).into()
                        }
                        ("UIDL", None) => b"+OK\r\n1 uid-small\r\n2 uid-big\r\n.\r\n".to_vec(),
                        ("UIDL", Some(n @ 1..=2)) => {
                            format!("+OK {n} uid-{}\r\n", ["small", "big"][n - 1]).into()
                        }
                        ("LIST", None) => {
                            format!("+OK\r\n1 {}\r\n2 {}\r\n.\r\n", msgs[0].len(), msgs[1].len())
                                .into()
                        }
                        ("RETR", Some(n @ 1..=2)) => {
                            let m = &msgs[n - 1];
                            let mut o = format!("+OK {} octets\r\n", m.len()).into_bytes();
                            o.extend(dot_stuffed(m));
                            o
                        }
                        ("QUIT", _) => {
                            let _ = w.write_all(b"+OK bye\r\n").await;
                            return;
                        }
                        ("USER" | "PASS" | "NOOP", _) => b"+OK\r\n".to_vec(),
                        _ => b"-ERR unknown command\r\n".to_vec(),
                    };
                    if w.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

struct Setup {
    keys: Keys,
    link: Arc<Link>,
    linksim: SocketAddr,
    partial_dir: PathBuf,
}

/// Server (grace 1 s) behind a 1 Mbit/s linksim that refuses reconnects
/// for 2 s after a cut.
async fn setup(name: &str, upstream: SocketAddr) -> Setup {
    init_tracing();
    let keys = make_keys(name);
    let server_addr = free_port();
    let (link, linksim) = cutting_link(server_addr, Duration::from_secs(2));
    let mut scfg = server_config_proto(&keys, server_addr, upstream, "pop3");
    scfg.session.resume_grace_secs = 1;
    tokio::spawn(async move {
        let _ = straw::server::run(scfg).await;
    });
    wait_for_port(server_addr).await;
    let partial_dir = keys.dir.join("partial");
    Setup {
        keys,
        link,
        linksim,
        partial_dir,
    }
}

/// A straw client instance with its own listener and the shared partial dir.
async fn client(s: &Setup, max_bytes: u64) -> Client {
    let extra = resume_client_extra(&s.partial_dir, &format!("max_bytes = {max_bytes}\n"));
    spawn_client(&s.keys, s.linksim, "pop3", &extra).await
}

const SESSION: &[u8] = b"USER bob\r\nPASS pw\r\nRETR 2\r\nQUIT\r\n";

/// A whole session: login, `RETR 2`, QUIT; everything the program got.
async fn fetch(local: SocketAddr) -> Vec<u8> {
    let mut s = TcpStream::connect(local).await.unwrap();
    s.write_all(SESSION).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut got))
        .await
        .expect("fetch took over 30 s")
        .unwrap();
    got
}

/// The same session, with the link cut once the program has `cut_at`
/// bytes; returns what it got before its connection closed.
async fn fetch_cut(local: SocketAddr, link: &Link, cut_at: usize) -> Vec<u8> {
    let mut s = TcpStream::connect(local).await.unwrap();
    s.write_all(SESSION).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut cut = false;
    loop {
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
            .await
            .expect("connection neither moved nor closed for 20 s")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if !cut && got.len() >= cut_at {
            link.cut_all();
            cut = true;
        }
    }
    assert!(cut, "the fetch ended before the cut point");
    got
}

/// The program's bytes for [`SESSION`] straight from the fake server.
fn expected(mail: &[u8]) -> Vec<u8> {
    let mut e = b"+OK fake POP3 ready\r\n+OK\r\n+OK\r\n".to_vec();
    e.extend(format!("+OK {} octets\r\n", mail.len()).as_bytes());
    e.extend(dot_stuffed(mail));
    // No DELE in the session: straw answers the QUIT itself (the server's
    // "+OK bye" is checked and swallowed).
    e.extend_from_slice(b"+OK Logging out.\r\n");
    e
}

/// Waits for the client to have dialled `n` links (the session after a
/// given-up one), so that the next fetch doesn't race the redial.
async fn wait_dials(c: &Client, n: u64) {
    for _ in 0..400 {
        if c.stats.dials.load(std::sync::atomic::Ordering::Relaxed) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("client never redialled");
}

fn partial_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "part")
            })
            .count()
        })
        .unwrap_or(0)
}

/// First attempt: cut mid-message; grace expires; the connection closes
/// without the terminating dot. Returns (body bytes the program got, body
/// wire length).
async fn first_attempt(c: &Client, s: &Setup, mail: &[u8], cut_frac: f64) -> (usize, usize) {
    let full = expected(mail);
    let body_at = full.windows(8).position(|w| w == b"octets\r\n").unwrap() + 8;
    let body_len = dot_stuffed(mail).len();
    let got = fetch_cut(
        c.local,
        &s.link,
        body_at + (body_len as f64 * cut_frac) as usize,
    )
    .await;
    assert!(
        full.starts_with(&got),
        "what the program got is not a prefix of the real reply"
    );
    assert!(
        got.len() < body_at + body_len,
        "the whole body arrived despite the cut"
    );
    assert!(
        !got.ends_with(b"\r\n.\r\n"),
        "a cut RETR must not look complete"
    );
    assert_eq!(
        partial_files(&s.partial_dir),
        1,
        "partial body kept on disk"
    );
    (got.len() - body_at, body_len)
}

/// Link bytes of a clean fetch of `mail` on a session of its own (a run
/// on the same session would compress against the earlier one).
async fn clean_wire(name: &str, mail: &[u8]) -> u64 {
    let upstream = fake_pop3(Arc::new(Mutex::new(mail.to_vec()))).await;
    let s = setup(name, upstream).await;
    let c = client(&s, 64 << 20).await;
    let before = link_bytes(&s.link);
    assert!(
        fetch(c.local).await == expected(mail),
        "clean run not byte-exact"
    );
    assert_eq!(partial_files(&s.partial_dir), 0);
    c.task.abort();
    link_bytes(&s.link) - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pop3_retr_after_grace_expiry_fetches_only_the_rest() {
    let mail = big_mail(0);
    let full_wire = clean_wire("mresume-grace-clean", &mail).await;
    let upstream = fake_pop3(Arc::new(Mutex::new(mail.clone()))).await;
    let s = setup("mresume-grace", upstream).await;
    let c = client(&s, 64 << 20).await;

    let before = link_bytes(&s.link);
    let (kept, body_len) = first_attempt(&c, &s, &mail, 0.4).await;
    let first_wire = link_bytes(&s.link) - before;
    wait_dials(&c, 2).await;

    let before = link_bytes(&s.link);
    let got = fetch(c.local).await;
    let second_wire = link_bytes(&s.link) - before;
    assert!(got == expected(&mail), "second attempt not byte-exact");
    assert_eq!(
        partial_files(&s.partial_dir),
        0,
        "partial deleted when complete"
    );
    let remaining = 1.0 - kept as f64 / body_len as f64;
    let bound = remaining * full_wire as f64 + 0.10 * full_wire as f64;
    eprintln!(
        "pop3 resume: message {} B ({body_len} B stuffed); clean run {full_wire} link B; \
         cut run {first_wire} link B, program had {kept} B ({:.1}%); \
         second run {second_wire} link B (bound {bound:.0} = {:.1}% remaining + 10% of clean)",
        mail.len(),
        100.0 * (1.0 - remaining),
        100.0 * remaining
    );
    assert!(
        (second_wire as f64) <= bound,
        "second run moved {second_wire} link bytes, bound {bound:.0}"
    );
    // Both attempts together pay for the message about once.
    assert!(
        first_wire + second_wire <= full_wire + full_wire / 10,
        "cut run {first_wire} + second run {second_wire} > 110% of {full_wire}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pop3_partial_survives_a_client_restart() {
    let mail = big_mail(1);
    let upstream = fake_pop3(Arc::new(Mutex::new(mail.clone()))).await;
    let s = setup("mresume-restart", upstream).await;
    let c = client(&s, 64 << 20).await;
    let (kept, body_len) = first_attempt(&c, &s, &mail, 0.5).await;
    c.task.abort();
    let _ = c.task.await;
    while s.link.is_refusing() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A fresh instance finds the partial file and uses it.
    let c2 = client(&s, 64 << 20).await;
    wait_dials(&c2, 1).await;
    let before = link_bytes(&s.link);
    let got = fetch(c2.local).await;
    let second_wire = link_bytes(&s.link) - before;
    assert!(got == expected(&mail), "not byte-exact after restart");
    eprintln!(
        "pop3 resume after restart: {kept} of {body_len} B kept, second run {second_wire} link B"
    );
    // The body left is about half, sent compressed at worst ~1:1.
    assert!(
        (second_wire as usize) < body_len - kept + body_len / 10,
        "second run moved {second_wire} link bytes for {} missing",
        body_len - kept
    );
    assert_eq!(partial_files(&s.partial_dir), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pop3_changed_message_is_fetched_whole_and_exact() {
    let changed = big_mail(3);
    let clean = clean_wire("mresume-changed-clean", &changed).await;
    let shared = Arc::new(Mutex::new(big_mail(2)));
    let upstream = fake_pop3(shared.clone()).await;
    let s = setup("mresume-changed", upstream).await;
    let c = client(&s, 64 << 20).await;
    first_attempt(&c, &s, &big_mail(2), 0.4).await;
    // Same UIDL, different bytes (a server that rewrote the message).
    *shared.lock().unwrap() = changed.clone();
    wait_dials(&c, 1).await;
    while s.link.is_refusing() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_dials(&c, 2).await;
    let before = link_bytes(&s.link);
    let got = fetch(c.local).await;
    let wire = link_bytes(&s.link) - before;
    assert!(got == expected(&changed), "fallback not byte-exact");
    eprintln!("pop3 changed prefix: full transfer, {wire} link B (clean run {clean} link B)");
    assert!(wire * 10 >= clean * 8, "must have been a full transfer");
    assert_eq!(partial_files(&s.partial_dir), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pop3_partial_store_over_its_bound_keeps_nothing_and_refetches_exactly() {
    let mail = big_mail(4);
    let upstream = fake_pop3(Arc::new(Mutex::new(mail.clone()))).await;
    let s = setup("mresume-bound", upstream).await;
    // 64 KiB bound: the 40% of a 300 KB body the cut leaves doesn't fit.
    let c = client(&s, 64 * 1024).await;
    let full = expected(&mail);
    let body_at = full.windows(8).position(|w| w == b"octets\r\n").unwrap() + 8;
    let got = fetch_cut(c.local, &s.link, body_at + 120_000).await;
    assert!(full.starts_with(&got) && got.len() > body_at + 100_000);
    assert_eq!(partial_files(&s.partial_dir), 0, "evicted past the bound");
    wait_dials(&c, 2).await;
    assert!(fetch(c.local).await == full, "refetch not byte-exact");
}
