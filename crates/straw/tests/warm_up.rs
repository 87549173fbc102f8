//! When the link comes up, the client fills each mail service's empty cache
//! with a short login-free connection of its own, so the program's first
//! connection is greeted locally; the cache is kept on disk, so a restarted
//! client neither warms up again nor waits for the greeting.
//! The upstreams are scripted stand-ins that record what they were sent.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use straw::config::ClientConfig;
use straw::tunnel::TunnelStats;

type Log = Arc<Mutex<Vec<Vec<String>>>>;

const IMAP_GREETING: &str = "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n";
const SMTP_GREETING: &str = "220 mx.test ESMTP\r\n";

/// An upstream that greets, answers every line by `answer` (reply, and
/// whether to hang up after it) and records, per connection, the lines it
/// was sent.
async fn scripted(greeting: &'static str, answer: fn(&str) -> (String, bool)) -> (SocketAddr, Log) {
    let log: Log = Arc::default();
    let log2 = log.clone();
    let addr = line_server(move || {
        let conn = {
            let mut g = log2.lock().unwrap();
            g.push(Vec::new());
            g.len() - 1
        };
        let log = log2.clone();
        let answer = move |line: &str| {
            let line = line.trim_end_matches(['\r', '\n']);
            log.lock().unwrap()[conn].push(line.to_owned());
            let (reply, bye) = answer(line);
            (reply.into_bytes(), bye)
        };
        (greeting.as_bytes().to_vec(), answer)
    })
    .await;
    (addr, log)
}

fn imap_answer(line: &str) -> (String, bool) {
    let (tag, cmd) = line.split_once(' ').unwrap_or((line, ""));
    match cmd.to_ascii_uppercase().as_str() {
        "CAPABILITY" => (
            format!("* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n{tag} OK done\r\n"),
            false,
        ),
        "LOGOUT" => (format!("* BYE bye\r\n{tag} OK done\r\n"), true),
        _ => (format!("{tag} OK done\r\n"), false),
    }
}

fn smtp_answer(line: &str) -> (String, bool) {
    let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
    match verb.as_str() {
        "EHLO" => (
            "250-mx.test hello\r\n250-PIPELINING\r\n250 8BITMIME\r\n".into(),
            false,
        ),
        "QUIT" => ("221 bye\r\n".into(), true),
        _ => ("250 ok\r\n".into(), false),
    }
}

struct Setup {
    keys: Keys,
    server: SocketAddr,
    imap_log: Log,
    smtp_log: Log,
}

async fn setup() -> Setup {
    let keys = make_keys("warm-up");
    let (imap, imap_log) = scripted(IMAP_GREETING, imap_answer).await;
    let (smtp, smtp_log) = scripted(SMTP_GREETING, smtp_answer).await;
    let server = free_port();
    let scfg = server_config_services(
        &keys,
        server,
        &[("imap", imap, "imap"), ("smtp", smtp, "smtp")],
    );
    tokio::spawn(async move {
        if let Err(e) = straw::server::run(scfg).await {
            panic!("server failed: {e:#}");
        }
    });
    wait_for_port(server).await;
    Setup {
        keys,
        server,
        imap_log,
        smtp_log,
    }
}

/// Starts a client (link always up) with both services and the cache in
/// `cache_dir`; returns the local IMAP and SMTP addresses and its stats.
async fn client(s: &Setup, name: &str) -> (SocketAddr, SocketAddr, Arc<TunnelStats>) {
    let (imap, smtp) = (free_port(), free_port());
    let text = format!(
        r#"
server = "{}"
server_public_key = "server.key.pub"
private_key = "client.key"
[cache]
dir = "cache"
[partial]
dir = "partial"
[[service]]
name = "imap"
protocol = "imap"
listen = "{imap}"
[[service]]
name = "smtp"
protocol = "smtp"
listen = "{smtp}"
"#,
        s.server
    );
    let path = s.keys.dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    let ccfg = ClientConfig::load(&path).unwrap();
    let stats = Arc::new(TunnelStats::default());
    let st = stats.clone();
    tokio::spawn(async move {
        let _ = straw::client::run_with_stats(ccfg, st).await;
    });
    wait_for_port(imap).await;
    wait_for_port(smtp).await;
    (imap, smtp, stats)
}

/// The connections that sent anything (`wait_for_port` opens empty ones).
fn talks(log: &Log) -> Vec<Vec<String>> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|c| !c.is_empty())
        .cloned()
        .collect()
}

/// A program's IMAP connection: greeting, CAPABILITY, LOGOUT. Checks it was
/// greeted from the cache, waits until the client has counted its local
/// replies, and returns what it read.
async fn cached_imap_program(addr: SocketAddr, stats: &TunnelStats) -> String {
    let got = fetch_session(addr, b"p1 CAPABILITY\r\np2 LOGOUT\r\n").await;
    let got = String::from_utf8(got).unwrap();
    assert!(
        got.starts_with("* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN"),
        "{got:?}"
    );
    wait_until("the program's connection to be counted", || {
        local_replies(stats) >= 2
    })
    .await;
    got
}

fn local_replies(stats: &TunnelStats) -> u64 {
    stats
        .local_replies
        .load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test(start_paused = true)]
async fn link_up_warms_empty_caches_and_the_cache_survives_a_restart() {
    init_tracing();
    let s = setup().await;
    let (imap, _smtp, stats) = client(&s, "client1").await;

    // One warm-up connection per service, with no login in it.
    wait_until("the warm-ups", || {
        talks(&s.imap_log).first().is_some_and(|c| c.len() == 2)
            && talks(&s.smtp_log).first().is_some_and(|c| c.len() == 2)
    })
    .await;
    assert_eq!(talks(&s.imap_log), [["W1 CAPABILITY", "W2 LOGOUT"]]);
    assert_eq!(talks(&s.smtp_log), [["EHLO localhost", "QUIT"]]);
    // Warm-ups are straw's own: not in the program's counts.
    assert_eq!(local_replies(&stats), 0);

    // The program's first connection is greeted and answered from the cache.
    let got = cached_imap_program(imap, &stats).await;
    assert!(got.contains("* CAPABILITY IMAP4rev1"), "{got:?}");

    // The cache reaches the disk; a restarted client doesn't warm up again.
    let dir = s.keys.dir.join("cache");
    wait_until("the cache files", || {
        dir.join("imap.cache").exists() && dir.join("smtp.cache").exists()
    })
    .await;
    let (imap_count, smtp_count) = (talks(&s.imap_log).len(), talks(&s.smtp_log).len());
    let (imap2, _, stats2) = client(&s, "client2").await;
    cached_imap_program(imap2, &stats2).await;
    // A window for a warm-up that must not come (of paused time: free).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let imap_talks = talks(&s.imap_log);
    assert_eq!(
        imap_talks.len(),
        imap_count + 1,
        "only the program's connection reached the IMAP server: {imap_talks:?}"
    );
    assert_eq!(imap_talks.last().unwrap(), &["p1 CAPABILITY", "p2 LOGOUT"]);
    assert_eq!(
        talks(&s.smtp_log).len(),
        smtp_count,
        "no second SMTP warm-up"
    );
}
