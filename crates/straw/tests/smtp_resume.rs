//! SMTP DATA message resume (issue 5): a send cut off for longer than the
//! grace period gets 421 at end of data; the real server got nothing. The
//! retry moves only the rest of the body over the link, and the real server
//! gets exactly one whole message. Fake SMTP server in process; linksim cuts
//! the link mid-body and refuses reconnects for 2 s (grace is 1 s).

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use straw::relay_store::RelayStore;
use straw::tunnel::TunnelStats;
use straw_tools::linksim::Link;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A ~300 KB MIME mail (text, base64 random "PNG", base64 text), CRLF.
fn big_mail() -> Vec<u8> {
    attachment_mail(
        "Subject: attachments\r\nMessage-ID: <resume.1@example.org>\r\n",
        "Here they are.\r\n.dot line\r\n",
        11,
    )
}

/// Bodies the fake server accepted (dot-stuffed, with the terminator), and
/// how many DATA commands it saw.
#[derive(Default)]
struct Seen {
    bodies: Vec<Vec<u8>>,
    datas: usize,
}

async fn fake_smtpd(seen: Arc<Mutex<Seen>>) -> SocketAddr {
    line_server(move || {
        let seen = seen.clone();
        // The body coming in after DATA; a cut mid-body delivers nothing.
        let mut body: Option<Vec<u8>> = None;
        let answer = move |line: &str| {
            if let Some(b) = body.as_mut() {
                b.extend_from_slice(line.as_bytes());
                if !(line == ".\r\n" && (b.len() == 3 || b.ends_with(b"\r\n.\r\n"))) {
                    return (Vec::new(), false);
                }
                seen.lock().unwrap().bodies.push(body.take().unwrap());
                return (b"250 2.0.0 queued as 42\r\n".to_vec(), false);
            }
            let reply: &[u8] = match verb(line).as_str() {
                "EHLO" => b"250-mx.test\r\n250-8BITMIME\r\n250 PIPELINING\r\n",
                "MAIL" | "RCPT" | "RSET" | "NOOP" => b"250 2.0.0 Ok\r\n",
                "DATA" => {
                    seen.lock().unwrap().datas += 1;
                    body = Some(Vec::new());
                    b"354 go ahead\r\n"
                }
                "QUIT" => return (b"221 2.0.0 bye\r\n".to_vec(), true),
                _ => b"500 5.5.1 unknown command\r\n",
            };
            (reply.to_vec(), false)
        };
        (b"220 mx.test ESMTP fake\r\n".to_vec(), answer)
    })
    .await
}

struct Setup {
    link: Arc<Link>,
    relay: Arc<RelayStore>,
    local: SocketAddr,
    stats: Arc<TunnelStats>,
}

/// Server (grace 1 s) behind a 1 Mbit/s linksim refusing reconnects for
/// 2 s after a cut; a client with its partial store.
async fn setup(name: &str, upstream: SocketAddr) -> Setup {
    init_tracing();
    let keys = make_keys(name);
    let server_addr = free_port();
    let (link, linksim) = cutting_link(server_addr, Duration::from_secs(2));
    let mut scfg = server_config_proto(&keys, server_addr, upstream, "smtp");
    scfg.session.resume_grace_secs = 1;
    let relay = Arc::new(RelayStore::new(64 << 20, Duration::from_secs(3600)));
    let r = relay.clone();
    tokio::spawn(async move {
        let _ = straw::server::run_with_relay(scfg, Some(r)).await;
    });
    wait_for_port(server_addr).await;
    let extra = resume_client_extra(&keys.dir.join("partial"), "");
    let c = spawn_client(&keys, linksim, "smtp", &extra).await;
    Setup {
        link,
        relay,
        local: c.local,
        stats: c.stats,
    }
}

async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
    let mut all = String::new();
    loop {
        let mut l = String::new();
        let n = tokio::time::timeout(Duration::from_secs(30), r.read_line(&mut l))
            .await
            .expect("no reply in 30 s")
            .unwrap_or(0);
        all.push_str(&l);
        if n == 0 || l.as_bytes().get(3) != Some(&b'-') {
            return all;
        }
    }
}

/// An smtplib-like send, one reply at a time; the body goes from its own
/// task. `cut`: cut the link once this many bytes went up it. Returns the
/// end-of-data reply.
async fn send(s: &Setup, body: &[u8], cut: Option<u64>) -> String {
    let sock = TcpStream::connect(s.local).await.unwrap();
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    assert!(reply(&mut r).await.starts_with("220"));
    for cmd in [
        "EHLO me\r\n",
        "MAIL FROM:<alice@example.org>\r\n",
        "RCPT TO:<bob@example.org>\r\n",
        "DATA\r\n",
    ] {
        w.write_all(cmd.as_bytes()).await.unwrap();
        let rep = reply(&mut r).await;
        assert!(
            rep.starts_with('2') || rep.starts_with("354"),
            "{cmd}: {rep}"
        );
    }
    let cutter = cut.map(|at| {
        let link = s.link.clone();
        let start = link.stats().snapshot().up.bytes;
        tokio::spawn(async move {
            while link.stats().snapshot().up.bytes - start < at {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            link.cut_all();
        })
    });
    let data = body.to_vec();
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&data).await;
        w
    });
    let eod = reply(&mut r).await;
    if let Some(c) = cutter {
        c.abort();
    }
    if let Ok(mut w) = writer.await
        && eod.starts_with('2')
    {
        w.write_all(b"QUIT\r\n").await.unwrap();
        assert!(reply(&mut r).await.starts_with("221"));
    }
    eod
}

#[tokio::test(start_paused = true)]
async fn smtp_data_cut_past_grace_resends_only_the_rest_and_delivers_once() {
    let mail = big_mail();
    let body = dot_stuffed(&mail);

    // A clean send on a pair of its own, for the link bytes of a full send.
    let clean_seen = Arc::new(Mutex::new(Seen::default()));
    let s = setup("smtpres-clean", fake_smtpd(clean_seen.clone()).await).await;
    let before = link_bytes(&s.link);
    let up_before = s.link.stats().snapshot().up.bytes;
    assert!(send(&s, &body, None).await.starts_with("250"));
    let clean = link_bytes(&s.link) - before;
    let clean_up = s.link.stats().snapshot().up.bytes - up_before;
    assert_eq!(clean_seen.lock().unwrap().bodies, vec![body.clone()]);

    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = setup("smtpres-cut", fake_smtpd(seen.clone()).await).await;
    let cut_at = clean_up * 45 / 100;
    let before = link_bytes(&s.link);
    let eod = send(&s, &body, Some(cut_at)).await;
    let first = link_bytes(&s.link) - before;
    assert!(eod.starts_with("421"), "cut send must get 421, got {eod:?}");
    {
        let seen = seen.lock().unwrap();
        assert!(seen.bodies.is_empty(), "half a message delivered");
        assert_eq!(
            seen.datas, 0,
            "the real server saw DATA before the body was whole"
        );
    }
    // What the server side holds (its only entry).
    let held = s.relay.body_bytes();
    assert!(
        held > 0 && s.relay.len() == 1,
        "server side kept the partial body"
    );
    wait_dials(&s.stats, 2).await;

    let before = link_bytes(&s.link);
    let retry = send(&s, &body, None).await;
    let second = link_bytes(&s.link) - before;
    assert!(retry.starts_with("250"), "retry: {retry:?}");
    assert_eq!(
        seen.lock().unwrap().bodies,
        vec![body.clone()],
        "exactly one whole message"
    );
    let missing = 1.0 - held as f64 / body.len() as f64;
    let bound = missing * clean as f64 + 0.10 * clean as f64;
    eprintln!(
        "smtp resume: message {} B ({} B stuffed); clean send {clean} link B ({clean_up} up); \
         link cut after {cut_at} up B, cut send {first} link B, program got {:?}, \
         server side held {held} B ({:.1}%); retry {second} link B, got {:?} \
         (bound {bound:.0} = {:.1}% missing + 10% of clean)",
        mail.len(),
        body.len(),
        eod.trim_end(),
        100.0 * (1.0 - missing),
        retry.trim_end(),
        100.0 * missing
    );
    assert!(
        (second as f64) <= bound,
        "retry moved {second} link bytes, bound {bound:.0}"
    );
}
