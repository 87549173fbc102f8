//! Message-level resume (issue 5): a POP3 RETR cut off for longer than the
//! grace period leaves its body in the client's partial store, and the next
//! RETR of the same message moves only the rest over the link, byte-exact.
//! Fake POP3 upstream in process; linksim cuts the link mid-message and
//! refuses reconnects for 2 s (grace is 1 s, so the session is given up).

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

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
    line_server(move || {
        let big = big.clone();
        let answer = move |line: &str| {
            let msgs = [
                b"Subject: small\r\n\r\nhi\r\n".to_vec(),
                big.lock().unwrap().clone(),
            ];
            let n = line
                .split_whitespace()
                .nth(1)
                .and_then(|n| n.parse::<usize>().ok());
            let reply: Vec<u8> = match (verb(line).as_str(), n) {
                ("STAT", _) => format!("+OK 2 {}\r\n", msgs[0].len() + msgs[1].len()).into(),
                ("UIDL", None) => b"+OK\r\n1 uid-small\r\n2 uid-big\r\n.\r\n".to_vec(),
                ("UIDL", Some(n @ 1..=2)) => {
                    format!("+OK {n} uid-{}\r\n", ["small", "big"][n - 1]).into()
                }
                ("LIST", None) => {
                    format!("+OK\r\n1 {}\r\n2 {}\r\n.\r\n", msgs[0].len(), msgs[1].len()).into()
                }
                ("RETR", Some(n @ 1..=2)) => {
                    let m = &msgs[n - 1];
                    let mut o = format!("+OK {} octets\r\n", m.len()).into_bytes();
                    o.extend(dot_stuffed(m));
                    o
                }
                ("QUIT", _) => return (b"+OK bye\r\n".to_vec(), true),
                ("USER" | "PASS" | "NOOP", _) => b"+OK\r\n".to_vec(),
                _ => b"-ERR unknown command\r\n".to_vec(),
            };
            (reply, false)
        };
        (b"+OK fake POP3 ready\r\n".to_vec(), answer)
    })
    .await
}

/// A straw client instance with its own listener and the shared partial dir.
async fn client(s: &CutSetup, max_bytes: u64) -> Client {
    let extra = resume_client_extra(&s.partial_dir, &format!("max_bytes = {max_bytes}\n"));
    spawn_client(&s.keys, s.linksim, "pop3", &extra).await
}

const SESSION: &[u8] = b"USER bob\r\nPASS pw\r\nRETR 2\r\nQUIT\r\n";

/// A whole session: login, `RETR 2`, QUIT; everything the program got.
async fn fetch(local: SocketAddr) -> Vec<u8> {
    fetch_session(local, SESSION).await
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

/// First attempt: cut mid-message; grace expires; the connection closes
/// without the terminating dot. Returns (body bytes the program got, body
/// wire length).
async fn first_attempt(c: &Client, s: &CutSetup, mail: &[u8], cut_frac: f64) -> (usize, usize) {
    let full = expected(mail);
    let body_at = full.windows(8).position(|w| w == b"octets\r\n").unwrap() + 8;
    let body_len = dot_stuffed(mail).len();
    let got = fetch_cut(
        c.local,
        &s.link,
        body_at + (body_len as f64 * cut_frac) as usize,
        SESSION,
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

/// The cut setting (see [`cut_setup`]) with a fake POP3 server serving
/// `mail` (shared, so that a test may change it).
async fn setup(name: &str, mail: Arc<Mutex<Vec<u8>>>) -> CutSetup {
    cut_setup(name, fake_pop3(mail).await, "pop3").await
}

/// Link bytes of a clean fetch of `mail` on a session of its own (a run
/// on the same session would compress against the earlier one).
async fn clean_wire(name: &str, mail: &[u8]) -> u64 {
    let s = setup(name, Arc::new(Mutex::new(mail.to_vec()))).await;
    let c = client(&s, 64 << 20).await;
    s.clean_run_wire(fetch(c.local), &expected(mail), c).await
}

#[tokio::test(start_paused = true)]
async fn pop3_retr_after_grace_expiry_fetches_only_the_rest() {
    let mail = big_mail(0);
    let full_wire = clean_wire("mresume-grace-clean", &mail).await;
    let s = setup("mresume-grace", Arc::new(Mutex::new(mail.clone()))).await;
    let c = client(&s, 64 << 20).await;

    let ((kept, body_len), first_wire) =
        link_bytes_during(&s.link, first_attempt(&c, &s, &mail, 0.4)).await;
    wait_dials(&c.stats, 2).await;

    let (got, second_wire) = link_bytes_during(&s.link, fetch(c.local)).await;
    assert!(got == expected(&mail), "second attempt not byte-exact");
    assert_eq!(
        partial_files(&s.partial_dir),
        0,
        "partial deleted when complete"
    );
    let remaining = 1.0 - kept as f64 / body_len as f64;
    eprintln!(
        "pop3 resume: message {} B ({body_len} B stuffed); clean run {full_wire} link B; \
         cut run {first_wire} link B, program had {kept} B ({:.1}%)",
        mail.len(),
        100.0 * (1.0 - remaining),
    );
    assert_resume_cost(full_wire, first_wire, second_wire, remaining);
}

#[tokio::test(start_paused = true)]
async fn pop3_partial_survives_a_client_restart() {
    let mail = big_mail(1);
    let s = setup("mresume-restart", Arc::new(Mutex::new(mail.clone()))).await;
    let c = client(&s, 64 << 20).await;
    let (kept, body_len) = first_attempt(&c, &s, &mail, 0.5).await;
    c.task.abort();
    let _ = c.task.await;
    while s.link.is_refusing() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A fresh instance finds the partial file and uses it.
    let c2 = client(&s, 64 << 20).await;
    wait_dials(&c2.stats, 1).await;
    let (got, second_wire) = link_bytes_during(&s.link, fetch(c2.local)).await;
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

#[tokio::test(start_paused = true)]
async fn pop3_changed_message_is_fetched_whole_and_exact() {
    let changed = big_mail(3);
    let clean = clean_wire("mresume-changed-clean", &changed).await;
    let shared = Arc::new(Mutex::new(big_mail(2)));
    let s = setup("mresume-changed", shared.clone()).await;
    let c = client(&s, 64 << 20).await;
    first_attempt(&c, &s, &big_mail(2), 0.4).await;
    // Same UIDL, different bytes (a server that rewrote the message).
    *shared.lock().unwrap() = changed.clone();
    wait_dials(&c.stats, 1).await;
    while s.link.is_refusing() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_dials(&c.stats, 2).await;
    s.assert_full_refetch("pop3", fetch(c.local), &expected(&changed), clean)
        .await;
}

#[tokio::test(start_paused = true)]
async fn pop3_partial_store_over_its_bound_keeps_nothing_and_refetches_exactly() {
    let mail = big_mail(4);
    let s = setup("mresume-bound", Arc::new(Mutex::new(mail.clone()))).await;
    // 64 KiB bound: the 40% of a 300 KB body the cut leaves doesn't fit.
    let c = client(&s, 64 * 1024).await;
    let full = expected(&mail);
    let body_at = full.windows(8).position(|w| w == b"octets\r\n").unwrap() + 8;
    let got = fetch_cut(c.local, &s.link, body_at + 120_000, SESSION).await;
    assert!(full.starts_with(&got) && got.len() > body_at + 100_000);
    assert_eq!(partial_files(&s.partial_dir), 0, "evicted past the bound");
    wait_dials(&c.stats, 2).await;
    assert!(fetch(c.local).await == full, "refetch not byte-exact");
}
