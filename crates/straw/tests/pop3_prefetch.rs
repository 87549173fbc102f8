//! POP3 RETR prefetch through a real straw pair: a lockstep program that
//! fetches message after message gets every reply byte-exact (also while a
//! served prefetch is still streaming in, when the reply's first part comes
//! out of the program's command and the rest out of the tunnel), and never
//! waits on the link more often than without the prefetch.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use straw_tools::linksim::LinkParams;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const MESSAGES: usize = 16;

/// Message `n` as the server stores it: ~6 KB that don't compress (so
/// each takes longer than a round trip to cross), some lines dot-stuffed.
fn mail(n: usize) -> Vec<u8> {
    let mut m = format!("From: a@example.org\r\nSubject: message {n}\r\n\r\n").into_bytes();
    let noise = random_bytes(80 * 64, n as u64);
    for (i, chunk) in noise.chunks(64).enumerate() {
        if i % 7 == 0 {
            m.push(b'.');
        }
        m.extend(chunk.iter().map(|b| b'A' + b % 26));
        m.extend_from_slice(b"\r\n");
    }
    m
}

/// The RETR reply for message `n`.
fn retr_reply(n: usize) -> Vec<u8> {
    let m = mail(n);
    let mut r = format!("+OK {} octets\r\n", m.len()).into_bytes();
    for l in m.split_inclusive(|&b| b == b'\n') {
        if l.starts_with(b".") {
            r.push(b'.');
        }
        r.extend_from_slice(l);
    }
    r.extend_from_slice(b".\r\n");
    r
}

fn list_reply() -> Vec<u8> {
    let mut r = format!("+OK {MESSAGES} messages\r\n").into_bytes();
    for n in 1..=MESSAGES {
        r.extend(format!("{n} {}\r\n", mail(n).len()).bytes());
    }
    r.extend_from_slice(b".\r\n");
    r
}

fn uidl_reply() -> Vec<u8> {
    let mut r = b"+OK\r\n".to_vec();
    for n in 1..=MESSAGES {
        r.extend(format!("{n} uid{n}\r\n").bytes());
    }
    r.extend_from_slice(b".\r\n");
    r
}

async fn pop3_server() -> std::net::SocketAddr {
    line_server(|| (b"+OK ready.\r\n".to_vec(), pop3_answer)).await
}

fn pop3_answer(line: &str) -> (Vec<u8>, bool) {
    let verb = verb(line);
    let n: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let reply = match verb.as_str() {
        "RETR" if (1..=MESSAGES).contains(&n) => retr_reply(n),
        "RETR" => b"-ERR no such message\r\n".to_vec(),
        "STAT" => format!("+OK {MESSAGES} 99999\r\n").into_bytes(),
        "LIST" if (1..=MESSAGES).contains(&n) => {
            format!("+OK {n} {}\r\n", mail(n).len()).into_bytes()
        }
        "LIST" => list_reply(),
        "UIDL" => uidl_reply(),
        "PASS" => b"+OK Logged in.\r\n".to_vec(),
        "QUIT" => b"+OK Logging out.\r\n".to_vec(),
        _ => b"+OK\r\n".to_vec(),
    };
    (reply, verb == "QUIT")
}

/// A lockstep program: USER, PASS, STAT, LIST, RETR 1..=last, QUIT, with a
/// `pause` before each RETR. Returns every byte it read.
async fn session(local: std::net::SocketAddr, last: usize, pause: Duration) -> Vec<u8> {
    let s = TcpStream::connect(local).await.unwrap();
    let mut r = BufReader::new(s);
    let mut saw = Vec::new();
    let mut read_reply = async |r: &mut BufReader<TcpStream>, multi: bool| {
        let mut first = true;
        loop {
            let mut line = Vec::new();
            tokio::time::timeout(Duration::from_secs(30), r.read_until(b'\n', &mut line))
                .await
                .expect("reply timed out")
                .unwrap();
            assert!(!line.is_empty(), "connection closed");
            saw.extend_from_slice(&line);
            if (first && !(multi && line.starts_with(b"+OK"))) || (!first && line == b".\r\n") {
                return;
            }
            first = false;
        }
    };
    read_reply(&mut r, false).await;
    let mut cmds: Vec<(String, bool)> = vec![
        ("USER bob".into(), false),
        ("PASS secret".into(), false),
        ("STAT".into(), false),
        ("LIST".into(), true),
    ];
    cmds.extend((1..=last).map(|n| (format!("RETR {n}"), true)));
    cmds.push(("QUIT".into(), false));
    for (c, multi) in cmds {
        if c.starts_with("RETR") {
            // The program files the last message first: the next, asked
            // ahead, is partly here when it asks for it.
            tokio::time::sleep(pause).await;
        }
        r.get_mut()
            .write_all(format!("{c}\r\n").as_bytes())
            .await
            .unwrap();
        read_reply(&mut r, multi).await;
    }
    saw
}

fn expected(last: usize) -> Vec<u8> {
    let mut e = b"+OK ready.\r\n+OK\r\n+OK Logged in.\r\n".to_vec();
    e.extend(format!("+OK {MESSAGES} 99999\r\n").bytes());
    e.extend(list_reply());
    for n in 1..=last {
        e.extend(retr_reply(n));
    }
    e.extend_from_slice(b"+OK Logging out.\r\n");
    e
}

#[tokio::test(start_paused = true)]
async fn pop3_retr_prefetch_is_byte_exact_through_the_driver() {
    init_tracing();
    let upstream = pop3_server().await;
    let keys = make_keys("pop3-prefetch");
    let server_addr = free_port();
    // Each ~6 KB reply takes longer to cross than a round trip: the next
    // one, asked with it, is on its way when the program asks.
    let (_link, linksim_addr) = linksim_to(
        server_addr,
        LinkParams::new(400_000, Duration::from_millis(15)),
    );
    let scfg = server_config_proto(&keys, server_addr, upstream, "pop3");
    tokio::spawn(async move {
        if let Err(e) = straw::server::run(scfg).await {
            panic!("server failed: {e:#}");
        }
    });
    wait_for_port(server_addr).await;
    let partial = temp_dir("pop3-prefetch-partial");
    let client = spawn_client(
        &keys,
        linksim_addr,
        "pop3",
        &format!("[session]\ninitial_rate_bps = 400000\n[partial]\ndir = {partial:?}\n"),
    )
    .await;
    let mut waits = Vec::new();
    // Up to the last message (nothing to ask ahead at the end), and one
    // short of it (QUIT throws a prefetch away).
    let runs = [
        (MESSAGES, 0),
        (MESSAGES, 60),
        (MESSAGES - 1, 60),
        (MESSAGES, 100),
    ];
    for (i, (last, pause)) in runs.into_iter().enumerate() {
        let before = client.stats.link_waits.load(Ordering::Relaxed);
        let saw = session(client.local, last, Duration::from_millis(pause)).await;
        assert!(saw == expected(last), "session {i}: not byte-exact");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let after = loop {
            let w = client.stats.link_waits.load(Ordering::Relaxed);
            if w > before || tokio::time::Instant::now() > deadline {
                break w;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        waits.push(after - before);
    }
    eprintln!("pop3 prefetch: link waits per session {waits:?} ({MESSAGES} RETRs each)");
    // Never more than without the prefetch (PASS, each RETR, QUIT; the
    // first session also waits for the greeting). How many fewer depends on
    // whether a prefetched reply's first bytes are already in when the
    // program asks, which here they mostly are not yet.
    assert!(waits[0] <= MESSAGES as u64 + 3, "waits {waits:?}");
    for w in &waits[1..] {
        assert!(*w <= MESSAGES as u64 + 2, "waits {waits:?}");
    }
}
