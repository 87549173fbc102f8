//! A drop longer than the resume grace period: each mail program hears it in
//! its protocol's terms (SMTP 421, POP3 -ERR) before its connection closes,
//! and a message whose end-of-data reply was lost on the link is never
//! reported as accepted.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use straw_tools::linksim::Link;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Server and client (protocol `proto`) on loopback through a linksim that
/// refuses reconnects for 4 s after a cut; grace 1 s on both sides.
async fn setup(
    name: &str,
    upstream: SocketAddr,
    proto: &str,
    extra: &str,
) -> (SocketAddr, Arc<Link>) {
    init_tracing();
    let keys = make_keys(name);
    let server_addr = free_port();
    let local = free_port();
    let (link, linksim_addr) = cutting_link(server_addr, Duration::from_secs(4));
    let mut scfg = server_config_proto(&keys, server_addr, upstream, proto);
    scfg.session.resume_grace_secs = 1;
    let ccfg = client_config_proto(
        &keys,
        linksim_addr,
        local,
        proto,
        &format!(
            "{extra}\n[session]\nresume_grace_secs = 1\nreconnect_min_ms = 50\nreconnect_max_ms = 200\n"
        ),
    );
    spawn_pair(scfg, ccfg, server_addr, local).await;
    (local, link)
}

/// A line-based fake server: `greeting`, then `answer(line)` for each line
/// (None: no reply). Each line received is also reported on the channel.
async fn fake_server(
    greeting: &'static str,
    answer: fn(&str, &mut bool) -> Option<String>,
) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(answer_lines(conn, greeting, answer, tx.clone()));
        }
    });
    (addr, rx)
}

/// One connection to [`fake_server`]: until the program hangs up.
async fn answer_lines(
    conn: TcpStream,
    greeting: &str,
    answer: fn(&str, &mut bool) -> Option<String>,
    seen: mpsc::UnboundedSender<String>,
) {
    let (r, mut w) = conn.into_split();
    let mut r = BufReader::new(r);
    if w.write_all(greeting.as_bytes()).await.is_err() {
        return;
    }
    let mut in_body = false;
    let mut buf = String::new();
    while r.read_line(&mut buf).await.unwrap_or(0) > 0 {
        let line = std::mem::take(&mut buf);
        let _ = seen.send(line.clone());
        if let Some(reply) = answer(&line, &mut in_body)
            && w.write_all(reply.as_bytes()).await.is_err()
        {
            return;
        }
    }
}

/// `f`, or a panic saying `what` after 10 s.
async fn within_10s<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("{what}"))
}

async fn read_line(r: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    within_10s("no reply within 10 s", r.read_line(&mut line))
        .await
        .unwrap();
    line
}

async fn expect_eof(r: &mut BufReader<TcpStream>) {
    let mut rest = String::new();
    let n = within_10s("connection still open", r.read_line(&mut rest))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0, "more after the link-lost reply: {rest:?}");
}

/// Once the real server has seen a line for which `reached` holds (`what`),
/// cuts the link; returns the program's next line and when the cut was.
async fn cut_once_seen(
    seen: &mut mpsc::UnboundedReceiver<String>,
    what: &str,
    reached: fn(&str) -> bool,
    link: &Link,
    r: &mut BufReader<TcpStream>,
) -> (String, Instant) {
    within_10s(&format!("{what} never reached the real server"), async {
        while !reached(&seen.recv().await.unwrap()) {}
    })
    .await;
    link.cut_all();
    let cut = Instant::now();
    let reply = read_line(r).await;
    eprintln!(
        "{:?} {:.2} s after the cut",
        reply.trim_end(),
        cut.elapsed().as_secs_f64()
    );
    (reply, cut)
}

fn smtp_answer(line: &str, in_body: &mut bool) -> Option<String> {
    if *in_body {
        if line == ".\r\n" {
            *in_body = false;
            // The real server accepts; the reply is lost with the link.
            return Some("250 2.0.0 accepted\r\n".into());
        }
        return None;
    }
    let verb = line
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    Some(match verb.as_str() {
        "EHLO" => "250-fake.example\r\n250 PIPELINING\r\n".into(),
        "DATA" | "XSTRAW-DATA" => {
            *in_body = true;
            "354 go ahead\r\n".into()
        }
        "QUIT" => "221 bye\r\n".into(),
        _ => "250 ok\r\n".into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_program_gets_421_when_end_of_data_reply_is_lost() {
    let (upstream, mut seen) = fake_server("220 fake ESMTP\r\n", smtp_answer).await;
    let (local, link) = setup("lost-smtp", upstream, "smtp", "").await;
    let s = TcpStream::connect(local).await.unwrap();
    let mut r = BufReader::new(s);
    assert!(read_line(&mut r).await.starts_with("220"));
    r.get_mut().write_all(b"EHLO me\r\n").await.unwrap();
    assert!(read_line(&mut r).await.starts_with("250-"));
    assert!(read_line(&mut r).await.starts_with("250 "));
    r.get_mut()
        .write_all(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n")
        .await
        .unwrap();
    assert!(read_line(&mut r).await.starts_with("250"));
    assert!(read_line(&mut r).await.starts_with("250"));
    r.get_mut()
        .write_all(b"DATA\r\nSubject: t\r\n\r\nhello\r\n")
        .await
        .unwrap();
    assert!(read_line(&mut r).await.starts_with("354"));
    // The end-of-data: cut the link the moment the real server has it, so
    // its 250 can't come back.
    r.get_mut().write_all(b".\r\n").await.unwrap();
    let (reply, cut) =
        cut_once_seen(&mut seen, "end-of-data", |l| l == ".\r\n", &link, &mut r).await;
    assert_eq!(
        reply,
        "421 4.4.2 straw: link to server lost, try again later\r\n"
    );
    assert!(
        cut.elapsed() >= Duration::from_millis(900),
        "before the grace period ended"
    );
    expect_eof(&mut r).await;
}

fn pop3_answer(line: &str, _: &mut bool) -> Option<String> {
    let verb = line
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    match verb.as_str() {
        // The reply to DELE never makes it back (the test cuts the link).
        "DELE" => None,
        _ => Some("+OK\r\n".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pop3_program_gets_err_when_link_is_lost() {
    let (upstream, mut seen) = fake_server("+OK fake POP3\r\n", pop3_answer).await;
    let (local, link) = setup("lost-pop3", upstream, "pop3", "[pop3]\nprefetch = false").await;
    let s = TcpStream::connect(local).await.unwrap();
    let mut r = BufReader::new(s);
    assert!(read_line(&mut r).await.starts_with("+OK"));
    r.get_mut()
        .write_all(b"USER bob\r\nPASS pw\r\n")
        .await
        .unwrap();
    assert!(read_line(&mut r).await.starts_with("+OK"));
    assert!(read_line(&mut r).await.starts_with("+OK"));
    r.get_mut().write_all(b"DELE 1\r\n").await.unwrap();
    let (reply, cut) =
        cut_once_seen(&mut seen, "DELE", |l| l.starts_with("DELE"), &link, &mut r).await;
    assert_eq!(reply, "-ERR straw: link lost\r\n");
    assert!(cut.elapsed() >= Duration::from_millis(900));
    expect_eof(&mut r).await;
}
