//! Message-level resume for IMAP (issue 5): a `UID FETCH ... BODY.PEEK[]`
//! cut off for longer than the grace period leaves the literal's bytes in
//! the client's partial store, and the next fetch of the same message moves
//! only the rest over the link, byte-exact. Fake IMAP upstream in process;
//! linksim cuts the link mid-literal and refuses reconnects for 2 s (grace
//! is 1 s, so the session is given up).

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::*;

/// A ~300 KB MIME mail with a random "PNG" and a base64 text attachment.
fn big_mail(variant: u8) -> Vec<u8> {
    attachment_mail(
        &format!("Subject: attachments {variant}\r\n"),
        "Here they are.\r\n",
        17 + variant as u64,
    )
}

const GREETING: &[u8] = b"* OK [CAPABILITY IMAP4rev1 LITERAL+] fake IMAP ready\r\n";

/// The fake server's answer to one command line; None: close.
fn answer(line: &str, big: &[u8]) -> Option<Vec<u8>> {
    let w: Vec<&str> = line.trim_end().splitn(3, ' ').collect();
    let tag = w[0];
    let verb = w.get(1).unwrap_or(&"").to_ascii_uppercase();
    let args = w.get(2).unwrap_or(&"").to_ascii_uppercase();
    Some(match verb.as_str() {
        "LOGIN" => format!("{tag} OK Logged in\r\n").into_bytes(),
        "SELECT" => format!(
            "* 2 EXISTS\r\n* OK [UIDVALIDITY 1700000000] UIDs valid\r\n{tag} OK [READ-WRITE] Select completed.\r\n"
        )
        .into_bytes(),
        "UID" if args == "FETCH 11 (BODY.PEEK[])" => {
            let mut o = format!("* 2 FETCH (UID 11 BODY[] {{{}}}\r\n", big.len()).into_bytes();
            o.extend_from_slice(big);
            o.extend(format!(")\r\n{tag} OK Fetch completed.\r\n").bytes());
            o
        }
        "FETCH" if args == "2 (UID)" => {
            format!("* 2 FETCH (UID 11)\r\n{tag} OK Fetch completed.\r\n").into_bytes()
        }
        "FETCH" if args == "2 (RFC822)" => {
            let mut o = format!("* 2 FETCH (RFC822 {{{}}}\r\n", big.len()).into_bytes();
            o.extend_from_slice(big);
            o.extend(format!(")\r\n{tag} OK Fetch completed.\r\n").bytes());
            o
        }
        "LOGOUT" => return None,
        _ => format!("{tag} BAD Error in IMAP command {verb}: Unknown command.\r\n").into_bytes(),
    })
}

/// An IMAP server with one big message (UID 11, sequence number 2).
async fn fake_imap(big: Arc<Mutex<Vec<u8>>>) -> SocketAddr {
    line_server(move || {
        let big = big.clone();
        let reply = move |line: &str| {
            let msg = big.lock().unwrap().clone();
            match answer(line, &msg) {
                Some(reply) => (reply, false),
                None => {
                    let tag = line.split(' ').next().unwrap_or("*");
                    let bye = format!("* BYE Logging out\r\n{tag} OK Logout completed.\r\n");
                    (bye.into_bytes(), true)
                }
            }
        };
        (GREETING.to_vec(), reply)
    })
    .await
}

async fn client(s: &CutSetup) -> Client {
    let extra = resume_client_extra(&s.partial_dir, "");
    spawn_client(&s.keys, s.linksim, "imap", &extra).await
}

/// The mail program's whole session, pipelined.
const SESSION: &[u8] =
    b"a LOGIN bob pw\r\nb SELECT INBOX\r\nc UID FETCH 11 (BODY.PEEK[])\r\nd LOGOUT\r\n";

/// imaplib's `fetch(n, "(RFC822)")`: by sequence number, no UID asked.
const SEQ_SESSION: &[u8] =
    b"a LOGIN bob pw\r\nb SELECT INBOX\r\nc FETCH 2 (RFC822)\r\nd LOGOUT\r\n";

async fn fetch(local: SocketAddr) -> Vec<u8> {
    fetch_session(local, SESSION).await
}

/// What the program gets for [`SESSION`] straight from the fake server.
fn expected(mail: &[u8]) -> Vec<u8> {
    expected_session(mail, SESSION)
}

fn expected_session(mail: &[u8], session: &[u8]) -> Vec<u8> {
    let mut e = GREETING.to_vec();
    for l in session.split_inclusive(|&b| b == b'\n') {
        match answer(std::str::from_utf8(l).unwrap(), mail) {
            Some(r) => e.extend(r),
            None => e.extend_from_slice(b"* BYE Logging out\r\nd OK Logout completed.\r\n"),
        }
    }
    e
}

/// Cut mid-literal; grace expires; the connection closes without the
/// FETCH's tagged reply. Returns the literal bytes the program got.
async fn first_attempt(c: &Client, s: &CutSetup, mail: &[u8], cut_frac: f64) -> usize {
    first_attempt_session(c, s, mail, cut_frac, SESSION).await
}

async fn first_attempt_session(
    c: &Client,
    s: &CutSetup,
    mail: &[u8],
    cut_frac: f64,
    session: &[u8],
) -> usize {
    let full = expected_session(mail, session);
    let lit_at = full.windows(3).position(|w| w == b"}\r\n").unwrap() + 3;
    let got = fetch_cut(
        c.local,
        &s.link,
        lit_at + (mail.len() as f64 * cut_frac) as usize,
        session,
    )
    .await;
    assert!(full.starts_with(&got), "not a prefix of the real responses");
    assert!(got.len() < lit_at + mail.len(), "the whole literal arrived");
    assert!(
        !got.windows(4).any(|w| w == b"c OK"),
        "a cut FETCH must not look complete"
    );
    assert_eq!(partial_files(&s.partial_dir), 1, "partial literal kept");
    got.len() - lit_at
}

/// The cut setting (see [`cut_setup`]) with a fake IMAP server serving
/// `mail` (shared, so that a test may change it).
async fn setup(name: &str, mail: Arc<Mutex<Vec<u8>>>) -> CutSetup {
    cut_setup(name, fake_imap(mail).await, "imap").await
}

async fn clean_wire(name: &str, mail: &[u8]) -> u64 {
    let s = setup(name, Arc::new(Mutex::new(mail.to_vec()))).await;
    let c = client(&s).await;
    s.clean_run_wire(fetch(c.local), &expected(mail), c).await
}

// Real time: under paused time the resumed fetch hangs (reported, not yet understood).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_uid_fetch_after_grace_expiry_fetches_only_the_rest() {
    let mail = big_mail(0);
    let full_wire = clean_wire("imapres-clean", &mail).await;
    let s = setup("imapres-grace", Arc::new(Mutex::new(mail.clone()))).await;
    let c = client(&s).await;

    let (kept, first_wire) = link_bytes_during(&s.link, first_attempt(&c, &s, &mail, 0.4)).await;
    wait_dials(&c.stats, 2).await;

    let (got, second_wire) = link_bytes_during(&s.link, fetch(c.local)).await;
    assert!(got == expected(&mail), "second attempt not byte-exact");
    assert_eq!(partial_files(&s.partial_dir), 0, "partial deleted");
    let remaining = 1.0 - kept as f64 / mail.len() as f64;
    eprintln!(
        "imap resume: literal {} B; clean run {full_wire} link B; cut run {first_wire} link B, \
         program had {kept} B ({:.1}%)",
        mail.len(),
        100.0 * (1.0 - remaining),
    );
    assert_resume_cost(full_wire, first_wire, second_wire, remaining);
}

// Real time: under paused time the resumed fetch hangs (reported, not yet understood).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_changed_message_is_fetched_whole_and_exact() {
    let changed = big_mail(2);
    let clean = clean_wire("imapres-changed-clean", &changed).await;
    let shared = Arc::new(Mutex::new(big_mail(1)));
    let s = setup("imapres-changed", shared.clone()).await;
    let c = client(&s).await;
    first_attempt(&c, &s, &big_mail(1), 0.4).await;
    // Same UIDVALIDITY and UID, different bytes: a broken server, but the
    // hash check must still give the program the real ones.
    *shared.lock().unwrap() = changed.clone();
    wait_dials(&c.stats, 2).await;
    s.assert_full_refetch("imap", fetch(c.local), &expected(&changed), clean)
        .await;
}

// Real time: under paused time the resumed fetch hangs (reported, not yet understood).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_fetch_by_number_resumes_with_the_client_sides_uid_lookup() {
    let mail = big_mail(3);
    let s = setup("imapres-seq", Arc::new(Mutex::new(mail.clone()))).await;
    let c = client(&s).await;
    let kept = first_attempt_session(&c, &s, &mail, 0.3, SEQ_SESSION).await;
    wait_dials(&c.stats, 2).await;
    let (got, second_wire) = link_bytes_during(&s.link, fetch_session(c.local, SEQ_SESSION)).await;
    assert!(
        got == expected_session(&mail, SEQ_SESSION),
        "not byte-exact"
    );
    eprintln!(
        "imap resume by number: {kept} of {} B kept, second run {second_wire} link B",
        mail.len()
    );
    // What is left, sent compressed at worst about 1:1.
    assert!(
        (second_wire as usize) < mail.len() - kept + mail.len() / 10,
        "second run moved {second_wire} link bytes for {} missing",
        mail.len() - kept
    );
    assert_eq!(partial_files(&s.partial_dir), 0);
}
