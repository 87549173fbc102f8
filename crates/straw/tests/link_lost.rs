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

/// How a fake real server answers a line; the flag is its own state (in a
/// message body, say).
type Answer = fn(&str, &mut bool) -> Option<String>;

/// What a test holds: the program's connection, the link to cut, and the
/// lines the real server has received.
struct Rig {
    program: BufReader<TcpStream>,
    link: Arc<Link>,
    seen: mpsc::UnboundedReceiver<String>,
}

/// A fake real server (see [`fake_server`]) behind a server and client
/// (protocol `proto`) on loopback through a linksim that refuses reconnects
/// for 4 s after a cut, grace 1 s on both sides; and a program connected.
async fn setup(
    name: &str,
    greeting: &'static str,
    answer: Answer,
    proto: &str,
    extra: &str,
) -> Rig {
    init_tracing();
    let (upstream, seen) = fake_server(greeting, answer).await;
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
    let program = BufReader::new(TcpStream::connect(local).await.unwrap());
    Rig {
        program,
        link,
        seen,
    }
}

/// A line-based fake server: `greeting`, then `answer(line)` for each line
/// (None: no reply). Each line received is also reported on the channel.
async fn fake_server(
    greeting: &'static str,
    answer: Answer,
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
    answer: Answer,
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

impl Rig {
    async fn read_line(&mut self) -> String {
        let mut line = String::new();
        within_10s("no reply within 10 s", self.program.read_line(&mut line))
            .await
            .unwrap();
        line
    }

    async fn send(&mut self, lines: &[u8]) {
        self.program.get_mut().write_all(lines).await.unwrap();
    }

    /// Sends `lines` (if any), then reads one reply line per entry of
    /// `expect`, each starting with that entry.
    async fn exchange(&mut self, lines: &[u8], expect: &[&str]) {
        self.send(lines).await;
        for prefix in expect {
            let reply = self.read_line().await;
            assert!(reply.starts_with(prefix), "{reply:?}: expected {prefix}");
        }
    }

    /// Once the real server has seen a line for which `reached` holds
    /// (`what`), cuts the link; returns the program's next line and when the
    /// cut was.
    async fn cut_once_seen(&mut self, what: &str, reached: fn(&str) -> bool) -> (String, Instant) {
        let seen = &mut self.seen;
        within_10s(&format!("{what} never reached the real server"), async {
            while !reached(&seen.recv().await.unwrap()) {}
        })
        .await;
        self.link.cut_all();
        let cut = Instant::now();
        let reply = self.read_line().await;
        eprintln!(
            "{what}: {:?} {:.2} s after the cut",
            reply.trim_end(),
            cut.elapsed().as_secs_f64()
        );
        (reply, cut)
    }

    async fn expect_eof(&mut self) {
        let mut rest = String::new();
        let n = within_10s("connection still open", self.program.read_line(&mut rest))
            .await
            .unwrap_or(0);
        assert_eq!(n, 0, "more after the link-lost reply: {rest:?}");
    }
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
    let greeting = "220 fake ESMTP\r\n";
    let mut rig = setup("lost-smtp", greeting, smtp_answer, "smtp", "").await;
    rig.exchange(b"", &["220"]).await;
    rig.exchange(b"EHLO me\r\n", &["250-", "250 "]).await;
    rig.exchange(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n", &["250", "250"])
        .await;
    rig.exchange(b"DATA\r\nSubject: t\r\n\r\nhello\r\n", &["354"])
        .await;
    // The end-of-data: cut the link the moment the real server has it, so
    // its 250 can't come back.
    rig.send(b".\r\n").await;
    let (reply, cut) = rig.cut_once_seen("end-of-data", |l| l == ".\r\n").await;
    assert_eq!(
        reply,
        "421 4.4.2 straw: link to server lost, try again later\r\n"
    );
    assert!(
        cut.elapsed() >= Duration::from_millis(900),
        "before the grace period ended"
    );
    rig.expect_eof().await;
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
    let greeting = "+OK fake POP3\r\n";
    let extra = "[pop3]\nprefetch = false";
    let mut rig = setup("lost-pop3", greeting, pop3_answer, "pop3", extra).await;
    rig.exchange(b"", &["+OK"]).await;
    rig.exchange(b"USER bob\r\nPASS pw\r\n", &["+OK", "+OK"])
        .await;
    rig.send(b"DELE 1\r\n").await;
    let (reply, cut) = rig.cut_once_seen("DELE", |l| l.starts_with("DELE")).await;
    assert_eq!(reply, "-ERR straw: link lost\r\n");
    assert!(cut.elapsed() >= Duration::from_millis(900));
    rig.expect_eof().await;
}
