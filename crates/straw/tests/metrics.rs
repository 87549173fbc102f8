//! The server's Prometheus endpoint, scraped over HTTP while a real client
//! moves known bytes through a `tcp` service, and checked by `promtool`.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use straw::link::keys;
use straw_tools::linksim::{Link, LinkParams, bind_listener, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// GETs the endpoint; returns the status line, the content type and the body.
async fn scrape(addr: SocketAddr) -> (String, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: straw\r\nAccept: */*\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("no end of headers");
    let status = head.lines().next().unwrap().to_owned();
    let ctype = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap_or_default()
        .to_owned();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("no Content-Length")
        .parse()
        .unwrap();
    assert_eq!(length, body.len(), "Content-Length");
    (status, ctype, body.to_owned())
}

/// Samples by their full name with labels, as written.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_owned(), value.parse().unwrap())
        })
        .collect()
}

struct Rig {
    metrics: SocketAddr,
    local: SocketAddr,
    server_addr: SocketAddr,
    keys: Keys,
}

async fn start_with_metrics(name: &str) -> Rig {
    init_tracing();
    let echo = echo_server().await;
    let keys = make_keys(name);
    let (server_addr, local, metrics) = (free_port(), free_port(), free_port());
    let mut scfg = server_config(&keys, server_addr, echo);
    scfg.metrics.listen = Some(metrics);
    let ccfg = client_config(&keys, server_addr, local, "");
    spawn_pair(scfg, ccfg, server_addr, local).await;
    wait_for_port(metrics).await;
    Rig {
        metrics,
        local,
        server_addr,
        keys,
    }
}

/// Scrapes until `ok` holds for the samples (the server's counters follow
/// its sockets a moment after the client sees the bytes); panics after 10 s.
async fn scrape_until(
    addr: SocketAddr,
    what: &str,
    ok: impl Fn(&HashMap<String, f64>) -> bool,
) -> String {
    let mut last = String::new();
    for _ in 0..200 {
        let (_, _, body) = scrape(addr).await;
        if ok(&samples(&body)) {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}; last scrape:\n{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_counts_the_bytes_streams_and_handshakes_of_a_real_tunnel() {
    let r = start_with_metrics("metrics-count").await;
    let (status, ctype, _) = scrape(r.metrics).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");

    // The harness checked the client's port with a connection: one empty
    // stream through the tunnel. Counting from there, ours is one more.
    let opened = r#"straw_streams_opened_total{service="test"}"#;
    let before = scrape_until(r.metrics, "the harness's probe stream", |s| {
        s.get(opened) == Some(&1.0)
    })
    .await;
    let before = samples(&before);
    assert_eq!(
        before[r#"straw_raw_bytes_total{direction="up",service="test"}"#],
        0.0
    );

    // Known bytes through the `test` service (tcp) to an echo upstream.
    let sent = 123_457;
    let data = random_bytes(sent, 9);
    let back = tokio::time::timeout(Duration::from_secs(60), roundtrip(r.local, data.clone()))
        .await
        .expect("echo took over 60 s");
    assert!(back == data, "payload corrupted");

    let up = r#"straw_raw_bytes_total{direction="up",service="test"}"#;
    let down = r#"straw_raw_bytes_total{direction="down",service="test"}"#;
    let body = scrape_until(r.metrics, "the raw byte counts", |s| {
        s.get(up) == Some(&(sent as f64)) && s.get(down) == Some(&(sent as f64))
    })
    .await;
    let s = samples(&body);
    let get = |k: &str| *s.get(k).unwrap_or_else(|| panic!("no {k} in\n{body}"));
    assert_eq!(
        get(opened) - before[opened],
        1.0,
        "streams opened by our connection"
    );
    assert_eq!(get("straw_tunnels_connected"), 1.0);
    assert_eq!(get("straw_tunnels_parked"), 0.0);
    assert_eq!(get(r#"straw_handshakes_total{outcome="ok"}"#), 1.0);
    assert_eq!(get(r#"straw_handshakes_total{outcome="resumed"}"#), 0.0);
    assert_eq!(get(r#"straw_resumes_total{kind="tunnel"}"#), 0.0);

    // Per client: the same raw bytes inside the tunnel; random bytes don't
    // compress, so the wire carries at least as many.
    let client_pub = std::fs::read_to_string(r.keys.dir.join("client.key.pub")).unwrap();
    let key = keys::decode_key(client_pub.trim()).unwrap();
    let c = straw::metrics::client_label(&key);
    let raw_up = get(&format!(
        r#"straw_tunnel_raw_bytes_total{{client="{c}",direction="up"}}"#
    ));
    let raw_down = get(&format!(
        r#"straw_tunnel_raw_bytes_total{{client="{c}",direction="down"}}"#
    ));
    assert_eq!((raw_up, raw_down), (sent as f64, sent as f64));
    for dir in ["up", "down"] {
        let wire = get(&format!(
            r#"straw_tunnel_wire_bytes_total{{client="{c}",direction="{dir}"}}"#
        ));
        assert!(wire >= sent as f64, "wire {dir} {wire} < {sent}");
        assert!(wire < 2.0 * sent as f64, "wire {dir} {wire}");
    }
    // Wire bytes by service: the `test` stream's records carry at least its
    // bytes; with control and other they add up to the tunnel's wire bytes
    // less the encryption framing (18 bytes a record).
    let by_service = |s: &HashMap<String, f64>, dir: &str| -> (f64, f64, f64) {
        let prefix = format!(r#"straw_wire_bytes_total{{direction="{dir}","#);
        let sum = s
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v)
            .sum();
        let test = s[&format!(r#"{prefix}service="test"}}"#)];
        let tunnel =
            s[&format!(r#"straw_tunnel_wire_bytes_total{{client="{c}",direction="{dir}"}}"#)];
        (test, sum, tunnel)
    };
    let body = scrape_until(r.metrics, "wire bytes by service", |s| {
        ["up", "down"].iter().all(|d| {
            let (test, sum, tunnel) = by_service(s, d);
            test >= sent as f64 && sum <= tunnel && sum >= 0.95 * tunnel
        })
    })
    .await;
    for dir in ["up", "down"] {
        let (test, sum, tunnel) = by_service(&samples(&body), dir);
        eprintln!("wire {dir}: service test {test}, all services {sum}, tunnel {tunnel}");
        assert!(test < 1.1 * sent as f64, "{dir}: {test}");
    }
    let encode = get(r#"straw_codec_cpu_seconds_total{op="encode"}"#);
    let decode = get(r#"straw_codec_cpu_seconds_total{op="decode"}"#);
    assert!(encode > 0.0 && decode > 0.0, "codec cpu {encode} {decode}");
    assert!(
        encode < 60.0 && decode < 60.0,
        "codec cpu {encode} {decode}"
    );
    eprintln!(
        "{sent} B echoed: codec CPU encode {encode:.4} s, decode {decode:.4} s; \
         scrape {} B",
        body.len()
    );
    assert!(get("straw_process_open_fds") >= 3.0);
    assert!(get("straw_process_resident_memory_bytes") > 1e6);

    // An unknown client key is counted as refused, and nothing else moves.
    let stranger = keys::generate();
    let server_pub = std::fs::read_to_string(r.keys.dir.join("server.key.pub")).unwrap();
    let server_pub = keys::decode_key(server_pub.trim()).unwrap();
    let mut sock = TcpStream::connect(r.server_addr).await.unwrap();
    let refused =
        straw::link::noise::client_handshake(&mut sock, &stranger, &server_pub, b"").await;
    assert!(refused.is_err(), "an unknown key got a tunnel");
    let refused = r#"straw_handshakes_total{outcome="refused-unknown-key"}"#;
    let body = scrape_until(r.metrics, "the refused handshake", |s| {
        s.get(refused) == Some(&1.0)
    })
    .await;
    let s = samples(&body);
    assert_eq!(s[r#"straw_handshakes_total{outcome="ok"}"#], 1.0);
    assert_eq!(s["straw_tunnels_connected"], 1.0);
}

/// `promtool check metrics` (Debian package `prometheus`, installed by
/// scripts/deps) accepts a real scrape: names, types, HELP, suffixes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_a_real_scrape() {
    let r = start_with_metrics("metrics-promtool").await;
    let data = random_bytes(10_000, 3);
    assert!(roundtrip(r.local, data.clone()).await == data);
    let (_, _, body) = scrape(r.metrics).await;
    assert!(body.contains("straw_raw_bytes_total{"), "{body}");

    // Only GET and HEAD are answered with the metrics.
    for (request, status) in [
        ("HEAD / HTTP/1.1\r\n\r\n", "HTTP/1.1 200 OK"),
        (
            "POST /metrics HTTP/1.1\r\n\r\n",
            "HTTP/1.1 405 Method Not Allowed",
        ),
    ] {
        let mut sock = TcpStream::connect(r.metrics).await.unwrap();
        sock.write_all(request.as_bytes()).await.unwrap();
        let mut raw = String::new();
        sock.read_to_string(&mut raw).await.unwrap();
        assert!(raw.starts_with(status), "{request:?} got {raw:?}");
        assert!(
            raw.ends_with("\r\n\r\n"),
            "{request:?}: a body came: {raw:?}"
        );
    }

    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("promtool not found: run scripts/deps (it does `apt-get install prometheus`)")
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics: {report}\non:\n{body}"
    );
}

/// A cut link: the client's next connection takes the session back, which
/// shows as a resumed handshake and a tunnel resume; the old connection no
/// longer counts as connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_after_a_cut_is_counted() {
    init_tracing();
    let echo = echo_server().await;
    let keys = make_keys("metrics-resume");
    let (server_addr, local, metrics) = (free_port(), free_port(), free_port());
    let link = Link::new(LinkParams::new(20_000_000, Duration::from_millis(2)));
    let linksim = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let linksim_addr = linksim.local_addr().unwrap();
    tokio::spawn(serve(linksim, server_addr, link.clone()));
    let mut scfg = server_config(&keys, server_addr, echo);
    scfg.metrics.listen = Some(metrics);
    let ccfg = client_config(
        &keys,
        linksim_addr,
        local,
        "[session]\nreconnect_min_ms = 50\nreconnect_max_ms = 200\n",
    );
    spawn_pair(scfg, ccfg, server_addr, local).await;
    wait_for_port(metrics).await;

    let mut s = TcpStream::connect(local).await.unwrap();
    let mut buf = [0u8; 5];
    s.write_all(b"first").await.unwrap();
    s.read_exact(&mut buf).await.unwrap();
    link.cut_all();
    s.write_all(b"again").await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut buf))
        .await
        .expect("no echo after the cut")
        .unwrap();
    assert_eq!(&buf, b"again");

    let resumed = r#"straw_handshakes_total{outcome="resumed"}"#;
    let up = r#"straw_raw_bytes_total{direction="up",service="test"}"#;
    let body = scrape_until(metrics, "the resume", |s| {
        s.get(resumed) == Some(&1.0)
            && s.get("straw_tunnels_connected") == Some(&1.0)
            && s.get(up) == Some(&10.0)
    })
    .await;
    let s = samples(&body);
    assert_eq!(s[r#"straw_resumes_total{kind="tunnel"}"#], 1.0);
    assert_eq!(s[r#"straw_handshakes_total{outcome="ok"}"#], 1.0);
    assert_eq!(s["straw_tunnels_parked"], 0.0);
    assert_eq!(
        s[r#"straw_streams_opened_total{service="test"}"#], 2.0,
        "probe + ours"
    );
    assert_eq!(
        s[r#"straw_raw_bytes_total{direction="down",service="test"}"#],
        10.0
    );
}
