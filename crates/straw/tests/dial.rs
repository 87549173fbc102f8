//! Dial on demand with idle hang-up: a POP3 check dials, the idle link is
//! hung up, and the next check redials and RESUMES the parked session, so
//! its handshake and compression warm-up cost fewer link bytes.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use straw::tunnel::TunnelStats;
use straw_tools::linksim::LinkParams;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A Dovecot-like POP3 server with one mailbox of three messages.
async fn pop3_server() -> std::net::SocketAddr {
    line_server(|| (b"+OK Dovecot ready.\r\n".to_vec(), pop3_answer)).await
}

fn pop3_answer(line: &str) -> (Vec<u8>, bool) {
    let verb = verb(line);
    if verb == "RETR" {
        return (
            message(line.split_whitespace().nth(1).unwrap_or("1")),
            false,
        );
    }
    if verb == "LIST"
        && let Some(n) = line.split_whitespace().nth(1)
    {
        return (format!("+OK {n} 1507\r\n").into_bytes(), false);
    }
    let reply: &[u8] = match verb.as_str() {
        "STAT" => b"+OK 3 4521\r\n",
        "UIDL" => b"+OK\r\n1 000001a4f3c2\r\n2 000001a4f3c3\r\n3 000001a4f3c4\r\n.\r\n",
        "LIST" => b"+OK 3 messages\r\n1 1507\r\n2 1507\r\n3 1507\r\n.\r\n",
        "PASS" => b"+OK Logged in.\r\n",
        "QUIT" => b"+OK Logging out.\r\n",
        _ => b"+OK\r\n",
    };
    (reply.to_vec(), verb == "QUIT")
}

/// A RETR reply: a typical small mail, different per message number.
fn message(n: &str) -> Vec<u8> {
    let mut m = format!(
        "+OK 1507 octets\r\nReturn-Path: <list-bounces@lists.example.org>\r\n\
         Received: from mx.example.org (mx.example.org [192.0.2.25])\r\n\tby mail.example.net with ESMTPS id {n}a7f3\r\n\
         \tfor <bob@example.net>; Tue, 3 Sep 2002 10:{n}:00 +0100\r\n\
         From: Alice Example <alice@lists.example.org>\r\nTo: bob@example.net\r\n\
         Subject: Re: weekly status, part {n}\r\nMessage-ID: <{n}.20020903@lists.example.org>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    );
    for i in 0..12 {
        m.push_str(&format!(
            "Line {i} of message {n}: the weekly status report covers the link budget and the mail queue.\r\n"
        ));
    }
    m.push_str(".\r\n");
    m.into_bytes()
}

/// What a mail program's periodic check does: log in, fetch message `n`.
async fn check(local: std::net::SocketAddr, n: u32) {
    let s = TcpStream::connect(local).await.unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let expect_ok = async |r: &mut BufReader<TcpStream>, line: &mut String| {
        line.clear();
        tokio::time::timeout(Duration::from_secs(20), r.read_line(line))
            .await
            .expect("POP3 reply timed out")
            .unwrap();
        assert!(line.starts_with("+OK"), "{line:?}");
    };
    expect_ok(&mut r, &mut line).await;
    r.get_mut()
        .write_all(format!("USER bob\r\nPASS secret\r\nSTAT\r\nRETR {n}\r\n").as_bytes())
        .await
        .unwrap();
    for _ in 0..4 {
        expect_ok(&mut r, &mut line).await;
    }
    loop {
        line.clear();
        r.read_line(&mut line).await.unwrap();
        assert!(!line.is_empty(), "RETR cut short");
        if line == ".\r\n" {
            break;
        }
    }
    r.get_mut().write_all(b"QUIT\r\n").await.unwrap();
    expect_ok(&mut r, &mut line).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_hangup_then_redial_resumes_warm() {
    init_tracing();
    let upstream = pop3_server().await;
    let keys = make_keys("dial");
    let server_addr = free_port();
    let local = free_port();
    let (link, linksim_addr) = linksim_to(
        server_addr,
        LinkParams::new(64_000, Duration::from_millis(100)),
    );
    let scfg = server_config_proto(&keys, server_addr, upstream, "pop3");
    let hook_log = keys.dir.join("hooks.log");
    let ccfg = client_config_proto(
        &keys,
        linksim_addr,
        local,
        "pop3",
        &format!(
            "[link]\ndial = \"on-demand\"\nidle_hangup_secs = 1\n\
             on_dial = \"echo dial >> {0}\"\non_hangup = \"echo hangup >> {0}\"\n\
             [session]\ninitial_rate_bps = 64000\n",
            hook_log.display()
        ),
    );
    tokio::spawn(async move {
        let _ = straw::server::run(scfg).await;
    });
    wait_for_port(server_addr).await;
    let stats = Arc::new(TunnelStats::default());
    let st = stats.clone();
    tokio::spawn(async move {
        let _ = straw::client::run_with_stats(ccfg, st).await;
    });
    // No port probe: a connection would dial. What must not happen has no
    // event to wait for, so this is a window of real time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stats.dials.load(Ordering::Relaxed),
        0,
        "dialled with nothing to carry"
    );

    // Real time, not paused: the dial and hang-up hooks are child processes,
    // which paused time would not wait for (it would jump to the timeouts).
    let hooks = || std::fs::read_to_string(&hook_log).unwrap_or_default();
    let link_bytes = || common::link_bytes(&link);
    check(local, 1).await;
    let first = link_bytes();
    // Two minutes idle in the brief; the hang-up comes after 1 s here.
    wait_until("the first hang-up", || hooks() == "dial\nhangup\n").await;
    assert_eq!(stats.dials.load(Ordering::Relaxed), 1);
    check(local, 2).await;
    let second = link_bytes() - first;
    wait_until("the second hang-up", || {
        hooks() == "dial\nhangup\ndial\nhangup\n"
    })
    .await;

    let dials = stats.dials.load(Ordering::Relaxed);
    let resumes = stats.resumes.load(Ordering::Relaxed);
    eprintln!(
        "dial-ups: {dials}, resumed: {resumes}; link bytes: first dial {first}, second dial {second}"
    );
    assert_eq!(dials, 2, "exactly two dial-ups");
    assert_eq!(resumes, 1, "the second dial resumed the parked session");
    assert!(second < first, "second dial {second} B vs first {first} B");
    assert_eq!(hooks(), "dial\nhangup\ndial\nhangup\n");
}
