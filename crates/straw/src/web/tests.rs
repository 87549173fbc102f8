use super::*;
use crate::tunnel::TunnelStats;

fn board() -> Arc<Board> {
    Arc::new(Board::new(
        "sat.example:7700".into(),
        1.5,
        300.0,
        Arc::new(TunnelStats::default()),
        crate::tunnel::now(),
    ))
}

const PORT: u16 = 1180;

fn req(text: &str) -> Request {
    parse_head(text.as_bytes())
        .expect("parses")
        .expect("complete")
        .0
}

fn get(path: &str, host: &str) -> Request {
    req(&format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"))
}

fn post(host: &str, origin: Option<&str>, ctype: &str, body: &str) -> (Request, Vec<u8>) {
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    let text = format!(
        "POST /hold/release HTTP/1.1\r\nHost: {host}\r\n{origin}Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (r, n) = parse_head(text.as_bytes()).unwrap().unwrap();
    (r, text.as_bytes()[n..].to_vec())
}

fn status_of(r: Result<Option<(Request, usize)>, Response>) -> u16 {
    r.expect_err("refused").status
}

#[test]
fn a_request_head_is_parsed_when_complete() {
    let text = b"GET /status.json?t=1 HTTP/1.1\r\nHost: 127.0.0.1:1180\r\nAccept: */*\r\n\r\nrest";
    assert_eq!(parse_head(&text[..20]).unwrap(), None);
    let (r, n) = parse_head(text).unwrap().unwrap();
    assert_eq!(n, text.len() - 4);
    assert_eq!(r.method, "GET");
    assert_eq!(r.path, "/status.json");
    assert_eq!(r.host.as_deref(), Some("127.0.0.1:1180"));
    assert_eq!(r.content_length, 0);
}

#[test]
fn oversized_and_malformed_requests_are_refused() {
    // No end of head within the limit.
    let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(HEAD_MAX));
    assert_eq!(status_of(parse_head(long.as_bytes())), 431);
    let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(HEAD_MAX));
    assert_eq!(status_of(parse_head(long.as_bytes())), 431);
    let many = format!(
        "GET / HTTP/1.1\r\n{}\r\n",
        "X: 1\r\n".repeat(HEADERS_MAX + 1)
    );
    assert_eq!(status_of(parse_head(many.as_bytes())), 431);
    let body = format!(
        "POST /hold/release HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        BODY_MAX + 1
    );
    assert_eq!(status_of(parse_head(body.as_bytes())), 413);
    let chunked = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(status_of(parse_head(chunked.as_bytes())), 411);
    for bad in [
        "GET\r\n\r\n",
        "GET / HTTP/1.1 extra\r\n\r\n",
        "GET http://evil/ HTTP/1.1\r\n\r\n",
        "GET / SPDY/3\r\n\r\n",
        "GET / HTTP/1.1\r\nno colon\r\n\r\n",
        "GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ] {
        assert_eq!(status_of(parse_head(bad.as_bytes())), 400, "{bad:?}");
    }
    let not_utf8 = b"GET / HTTP/1.1\r\nHost: \xff\r\n\r\n";
    assert_eq!(status_of(parse_head(not_utf8)), 400);
}

#[test]
fn only_loopback_names_with_our_port_are_served() {
    let b = board();
    for host in [
        "127.0.0.1:1180",
        "localhost:1180",
        "LOCALHOST:1180",
        "[::1]:1180",
    ] {
        assert_eq!(answer(&b, PORT, &get("/", host), b"").status, 200, "{host}");
    }
    // DNS rebinding: another name that resolves here, or another port.
    for host in [
        "evil.example:1180",
        "127.0.0.1:1181",
        "127.0.0.1",
        "127.0.0.2:1180",
        "",
    ] {
        assert_eq!(answer(&b, PORT, &get("/", host), b"").status, 403, "{host}");
    }
    let no_host = req("GET / HTTP/1.0\r\n\r\n");
    assert_eq!(answer(&b, PORT, &no_host, b"").status, 403);
}

#[test]
fn paths_and_methods() {
    let b = board();
    let h = "127.0.0.1:1180";
    assert_eq!(answer(&b, PORT, &get("/nope", h), b"").status, 404);
    assert_eq!(answer(&b, PORT, &get("/hold/release", h), b"").status, 405);
    let r = answer(
        &b,
        PORT,
        &req(&format!("DELETE / HTTP/1.1\r\nHost: {h}\r\n\r\n")),
        b"",
    );
    assert_eq!(r.status, 405);
    assert_eq!(r.extra, vec![("Allow", "GET, HEAD".to_owned())]);
    // HEAD: the headers of GET, no body.
    let r = answer(
        &b,
        PORT,
        &req(&format!("HEAD / HTTP/1.1\r\nHost: {h}\r\n\r\n")),
        b"",
    );
    let wire = String::from_utf8(r.to_bytes(true)).unwrap();
    assert!(wire.ends_with("\r\n\r\n"));
    assert!(wire.contains(&format!("Content-Length: {}\r\n", r.body.len())));
}

#[test]
fn release_needs_our_origin_a_form_and_a_plain_id() {
    let b = board();
    let h = "localhost:1180";
    let form = "application/x-www-form-urlencoded";
    let cases = [
        (None, form, "id=abc", 403),
        (Some("http://evil.example"), form, "id=abc", 403),
        (Some("http://127.0.0.1:1180"), form, "id=abc", 403),
        (Some("null"), form, "id=abc", 403),
        (Some("http://localhost:1180"), "text/plain", "id=abc", 415),
        (Some("http://localhost:1180"), form, "x=1", 400),
        (Some("http://localhost:1180"), form, "id=a%20b", 400),
        (Some("http://localhost:1180"), form, "id=", 400),
        // Accepted; this client holds nothing ashore.
        (Some("http://localhost:1180"), form, "id=h-17.2", 501),
    ];
    for (origin, ctype, body, want) in cases {
        let (r, body) = post(h, origin, ctype, body);
        let got = answer(&b, PORT, &r, &body);
        assert_eq!(got.status, want, "{origin:?} {ctype} {body:?}");
    }
    let (r, body) = post(h, Some("http://localhost:1180"), form, "id=h1");
    assert_eq!(
        answer(&b, PORT, &r, &body).body,
        b"this client holds nothing ashore ([pop3] hold_over_bytes is not set)\n"
    );
}

#[test]
fn every_answer_is_uncached_and_allows_only_our_inline_script_and_style() {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let b = board();
    let page = answer(&b, PORT, &get("/", "127.0.0.1:1180"), b"");
    let wire = String::from_utf8(page.to_bytes(false)).unwrap();
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(page::SCRIPT));
    let csp = wire
        .lines()
        .find_map(|l| l.strip_prefix("Content-Security-Policy: "))
        .expect("a CSP");
    assert!(csp.starts_with("default-src 'none'; "), "{csp}");
    assert!(
        csp.contains(&format!("script-src 'sha256-{hash}';")),
        "{csp}"
    );
    assert!(!csp.contains("unsafe"), "{csp}");
    assert!(wire.contains(&format!("<script>{}</script>", page::SCRIPT)));
    assert!(wire.contains(&format!("<style>{}</style>", page::STYLE)));
    for r in [
        page,
        answer(&b, PORT, &get("/x", "127.0.0.1:1180"), b""),
        answer(&b, PORT, &get("/", "evil:1180"), b""),
    ] {
        let wire = String::from_utf8(r.to_bytes(false)).unwrap();
        assert!(wire.contains("\r\nCache-Control: no-store\r\n"), "{wire}");
        assert!(wire.contains("\r\nContent-Security-Policy: "), "{wire}");
    }
}

#[test]
fn the_page_reads_without_script_and_escapes_what_it_shows() {
    let b = Arc::new(Board::new(
        "<img src=x>".into(),
        1.5,
        300.0,
        Arc::new(TunnelStats::default()),
        crate::tunnel::now(),
    ));
    let html = String::from_utf8(answer(&b, PORT, &get("/", "127.0.0.1:1180"), b"").body).unwrap();
    assert!(
        html.contains("client \u{2192} &lt;img src=x&gt;"),
        "escaped"
    );
    assert!(!html.contains("<img"));
    assert!(html.contains("id=\"link-state\">DOWN</span>"));
    assert!(html.contains("Link DOWN: not dialled yet."));
    assert!(html.contains("no connections open"));
    assert!(html.contains("no messages held"));
    assert!(html.contains("<svg viewBox"));
    assert!(html.contains("data-live=\"0\""));
}

#[test]
fn held_messages_are_listed_with_a_release_form_each() {
    let list: Vec<serde_json::Value> = serde_json::from_str(
        r#"[{"id": "h-1", "from": "Ann <ann@example.org>", "subject": "<b>charts</b>", "size": 2400000, "state": "held"},
            {"id": 7, "from": null, "subject": "x", "size": "big", "state": "releasing"}]"#,
    )
    .unwrap();
    let mut o = String::new();
    page::held_list(&mut o, &list);
    assert!(o.contains("<td>Ann &lt;ann@example.org&gt;</td>"), "{o}");
    assert!(o.contains("&lt;b&gt;charts&lt;/b&gt;"), "{o}");
    assert!(
        o.contains("<td class=\"num\">2.4 MB</td><td>held</td>"),
        "{o}"
    );
    assert!(o.contains("name=\"id\" value=\"h-1\""), "{o}");
    assert!(o.contains("name=\"id\" value=\"7\""), "{o}");
    assert_eq!(
        o.matches("<form method=\"post\" action=\"/hold/release\"")
            .count(),
        2
    );
    assert!(!o.contains("no messages held"));
    let mut o = String::new();
    page::held_list(&mut o, &[]);
    assert!(o.contains("no messages held"));
}

#[test]
fn status_json_is_the_snapshot_plus_history() {
    let b = board();
    let r = answer(&b, PORT, &get("/status.json", "[::1]:1180"), b"");
    assert_eq!(r.content_type, "application/json");
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    // The snapshot's fields, as the control socket gives them.
    let snap: crate::status::Snapshot = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(snap.server, "sat.example:7700");
    assert_eq!(v["history"]["bucket_mins"], 5);
    assert_eq!(
        v["history"]["buckets"].as_array().unwrap().len(),
        page::CHART_BUCKETS
    );
}

#[tokio::test]
async fn the_driver_answers_over_tcp_and_bounds_connections() {
    let l = serve("127.0.0.1:0".parse().unwrap(), board())
        .await
        .unwrap();
    let port = l.addr.port();
    let ask = |text: String| async move {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let _ = s.write_all(text.as_bytes()).await;
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got).await;
        String::from_utf8_lossy(&got).into_owned()
    };
    let ok = ask(format!(
        "GET /status.json HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    ))
    .await;
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    let big = ask(format!(
        "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
        "a".repeat(20_000)
    ))
    .await;
    assert!(big.starts_with("HTTP/1.1 431 "), "{big}");
    // A body is read to its Content-Length.
    let body = "id=m1";
    let rel = ask(format!(
        "POST /hold/release HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://127.0.0.1:{port}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ))
    .await;
    assert!(rel.starts_with("HTTP/1.1 501 "), "{rel}");
    // Idle connections hold every slot: the next is closed unanswered.
    let mut idle = Vec::new();
    for _ in 0..CONNECTIONS_MAX {
        idle.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = ask(format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n")).await;
    assert_eq!(refused, "");
    drop(idle);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = ask(format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n")).await;
    assert!(again.starts_with("HTTP/1.1 200 OK\r\n"), "{again}");
}

#[tokio::test(start_paused = true)]
async fn a_slow_peer_is_cut_off() {
    let l = serve("127.0.0.1:0".parse().unwrap(), board())
        .await
        .unwrap();
    let mut s = TcpStream::connect(l.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(PEER_TIME + Duration::from_secs(1)).await;
    let mut got = Vec::new();
    let n = s.read_to_end(&mut got).await.unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
}

#[test]
fn release_button_releases_a_held_message_in_the_hold_record() {
    let p = std::env::temp_dir().join(format!("straw-web-release-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&p);
    let holds = crate::holds::HoldFile::open(&p).unwrap();
    let info = straw_proto::pop3::hold::HeldInfo {
        size: 300_000,
        from: "shore@example.org".into(),
        subject: "charts".into(),
        date: "today".into(),
    };
    let service = holds.for_service("pop3");
    service.stub_delivered("bob", "u1", &info);
    let id = service.id("bob", "u1");
    let b = board();
    b.set_holds(holds.clone());

    let form = "application/x-www-form-urlencoded";
    let (r, body) = post(
        "localhost:1180",
        Some("http://localhost:1180"),
        form,
        &format!("id={id}"),
    );
    let got = answer(&b, PORT, &r, &body);
    assert_eq!(got.status, 200, "{:?}", String::from_utf8_lossy(&got.body));
    assert!(String::from_utf8_lossy(&got.body).contains("charts"));
    assert_eq!(holds.list()[0].state, crate::holds::HoldState::Released);
    // Twice, or an unknown id: refused with the hold record's reason.
    let (r, body) = post(
        "localhost:1180",
        Some("http://localhost:1180"),
        form,
        "id=nope",
    );
    assert_eq!(answer(&b, PORT, &r, &body).status, 409);
    let _ = std::fs::remove_file(&p);
}
