use super::*;
use flate2::Compression;
use flate2::write::GzEncoder;

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Client and server back to back; the origin's bytes are given per request.
struct Rig {
    c: ClientAccel,
    s: ServerAccel,
    /// What the browser received.
    browser: Vec<u8>,
    /// What the origin received.
    origin: Vec<u8>,
    fails: Vec<String>,
    crossed: usize,
}

impl Rig {
    fn new(policy: HttpPolicy) -> Self {
        Rig {
            c: ClientAccel::new(policy.clone()),
            s: ServerAccel::new(policy),
            browser: Vec::new(),
            origin: Vec::new(),
            fails: Vec::new(),
            crossed: 0,
        }
    }

    fn browser_sends(&mut self, d: &[u8]) {
        let mut o = Output::default();
        self.c.from_local(d, true, &mut o);
        self.fails.extend(o.fail.take());
        self.browser.extend_from_slice(&o.to_local);
        self.crossed += o.to_tunnel.len();
        let mut o2 = Output::default();
        self.s.from_tunnel(&o.to_tunnel, &mut o2);
        self.fails.extend(o2.fail.take());
        self.origin.extend_from_slice(&o2.to_local);
        self.server_out(o2);
    }

    fn server_out(&mut self, o: Output) {
        self.crossed += o.to_tunnel.len();
        let mut o3 = Output::default();
        self.c.from_tunnel(&o.to_tunnel, &mut o3);
        self.fails.extend(o3.fail);
        self.browser.extend_from_slice(&o3.to_local);
    }

    fn origin_sends(&mut self, d: &[u8]) -> Output {
        let mut o = Output::default();
        self.s.from_local(d, true, &mut o);
        self.fails.extend(o.fail.clone());
        let r = o.clone();
        self.server_out(o);
        r
    }

    /// Some side gave up, saying `why`.
    #[track_caller]
    fn assert_failed(&self, why: &str) {
        assert!(
            self.fails.iter().any(|f| f.contains(why)),
            "no failure with {why:?}: {:?}",
            self.fails
        );
    }

    fn take_browser(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.browser)).into_owned()
    }
}

fn policy() -> HttpPolicy {
    HttpPolicy {
        blocked_hosts: vec!["ads.example".into()],
        ..HttpPolicy::default()
    }
}

#[test]
fn parse_target_and_ssrf_guard() {
    assert_eq!(
        parse_target(b"GET http://Example.com:8080/x HTTP/1.1\r\n"),
        Some(("example.com".into(), 8080))
    );
    assert_eq!(
        parse_target(b"GET http://example.com HTTP/1.1\r\nHost: x\r\n\r\n"),
        Some(("example.com".into(), 80))
    );
    assert_eq!(
        parse_target(b"CONNECT [::1]:443 HTTP/1.1\r\n"),
        Some(("::1".into(), 443))
    );
    assert_eq!(parse_target(b"GET /x HTTP/1.1\r\n"), None);
    assert_eq!(parse_target(b"GET https://a/ HTTP/1.1\r\n"), None);
    assert_eq!(parse_target(b"GET http://u@a/ HTTP/1.1\r\n"), None);
    assert_eq!(parse_target(b"GET http://a"), None, "incomplete line");
    let p = HttpPolicy::default();
    for h in [
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.1",
        "localhost",
        "::1",
        "[::ffff:127.0.0.1]",
        "169.254.1.1",
        "fd00::1",
        "0.0.0.0",
    ] {
        assert!(!p.permits_target(h), "{h}");
    }
    assert!(p.permits_target("93.184.216.34"));
    assert!(p.permits_target("example.com"));
    let open = HttpPolicy {
        allow_private: true,
        ..HttpPolicy::default()
    };
    assert!(open.permits_target("127.0.0.1"));
    assert!(policy().is_blocked("ADS.example"));
    assert!(policy().is_blocked("x.ads.example"));
    assert!(!policy().is_blocked("badads.example"));
}

#[test]
fn blocked_host_gets_local_403() {
    let mut r = Rig::new(policy());
    r.browser_sends(b"GET http://x.ads.example/banner.gif HTTP/1.1\r\nHost: x.ads.example\r\n\r\n");
    let b = r.take_browser();
    assert!(b.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{b}");
    assert!(b.contains("Connection: close\r\n"));
    assert!(b.contains("x.ads.example is blocked"));
    assert_eq!(r.crossed, 0, "never crosses the link");
    assert_eq!(r.c.stats().local_replies, 1);
    assert_eq!(r.c.stats().link_waits, 0);
    // CONNECT to a blocked host too.
    let mut r = Rig::new(policy());
    r.browser_sends(b"CONNECT ads.example:443 HTTP/1.1\r\n\r\n");
    assert!(r.take_browser().starts_with("HTTP/1.1 403"));
    assert_eq!(r.crossed, 0);
}

#[test]
fn gzip_is_decoded_and_reframed_with_length() {
    let mut r = Rig::new(policy());
    r.browser_sends(
        b"GET http://example.com/page HTTP/1.1\r\nHost: example.com\r\nAccept-Encoding: br\r\nProxy-Connection: keep-alive\r\n\r\n",
    );
    assert_eq!(
        String::from_utf8_lossy(&r.origin),
        "GET /page HTTP/1.1\r\nHost: example.com\r\nAccept-Encoding: gzip\r\n\r\n"
    );
    let page = b"<html>hello hello hello hello</html>".repeat(50);
    let z = gz(&page);
    let mut resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
        z.len()
    )
    .into_bytes();
    resp.extend_from_slice(&z);
    // In two pieces: nothing crosses until the length is known.
    let o = r.origin_sends(&resp[..resp.len() / 2]);
    assert!(o.to_tunnel.is_empty());
    let o = r.origin_sends(&resp[resp.len() / 2..]);
    assert!(o.flush);
    let mut want = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n",
        page.len()
    )
    .into_bytes();
    want.extend_from_slice(&page);
    assert_eq!(r.take_browser().into_bytes(), want);
    assert!(r.fails.is_empty(), "{:?}", r.fails);
    assert_eq!(r.c.stats().link_waits, 1);
}

#[test]
fn big_gzip_streams_chunked_and_is_bulk() {
    let mut r = Rig::new(policy());
    r.browser_sends(b"GET http://example.com/big HTTP/1.1\r\n\r\n");
    assert!(String::from_utf8_lossy(&r.origin).contains("\r\nHost: example.com\r\n"));
    let page: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let z = gz(&page);
    // Chunked from the origin too.
    let mut resp =
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for c in z.chunks(7000) {
        chunk(&mut resp, c);
    }
    resp.extend_from_slice(b"0\r\n\r\n");
    let mut bulk = false;
    for piece in resp.chunks(3000) {
        bulk |= r.origin_sends(piece).bulk;
    }
    assert!(bulk);
    let b = std::mem::take(&mut r.browser);
    let head_end = b.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(
        &b[..head_end],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let mut f = Framing::Chunked(Chunk::Size);
    let mut inp = Input::default();
    inp.push(&b[head_end..]);
    let mut body = Vec::new();
    while let BodyEv::Data(d) = body_step(&mut f, &mut inp).unwrap().unwrap() {
        body.extend(d);
    }
    assert_eq!(body, page);
    assert!(inp.avail().is_empty());
    assert!(r.fails.is_empty(), "{:?}", r.fails);
}

#[test]
fn plain_chunked_and_pipelined_responses() {
    let mut r = Rig::new(policy());
    r.browser_sends(
        b"GET http://example.com/a HTTP/1.1\r\n\r\nHEAD http://example.com/b HTTP/1.1\r\n\r\nPOST http://example.com/c HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert_eq!(r.c.stats().link_waits, 1, "one pipelined wait");
    assert!(String::from_utf8_lossy(&r.origin).ends_with("POST /c HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\nAccept-Encoding: gzip\r\n\r\nabc"));
    r.origin_sends(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n");
    r.origin_sends(b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n");
    r.origin_sends(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
    );
    assert_eq!(
        r.take_browser(),
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n\
HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n\
HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
    );
    assert!(r.fails.is_empty(), "{:?}", r.fails);
}

#[test]
fn close_delimited_body_is_chunked_and_ended_by_local_closed() {
    let mut r = Rig::new(policy());
    r.browser_sends(b"GET http://example.com/ HTTP/1.0\r\n\r\n");
    r.origin_sends(b"HTTP/1.0 200 OK\r\n\r\nsome data");
    let mut o = Output::default();
    r.s.local_closed(&mut o);
    r.server_out(o);
    assert_eq!(
        r.take_browser(),
        "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nsome data\r\n0\r\n\r\n"
    );
}

/// A gzip-encoded 200 response whose header claims `len` bytes of `body`.
fn gzip_response(len: usize, body: &[u8]) -> Vec<u8> {
    let head =
        format!("HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {len}\r\n\r\n");
    [head.as_bytes(), body].concat()
}

#[test]
fn corrupt_gzip_fails_clearly() {
    let mut r = Rig::new(policy());
    r.browser_sends(b"GET http://example.com/ HTTP/1.1\r\n\r\n");
    let mut z = gz(b"hello world, hello world");
    let n = z.len();
    z[n - 6] ^= 0xff; // CRC/length trailer
    r.origin_sends(&gzip_response(n, &z));
    assert_eq!(r.fails.len(), 1);
    assert!(r.fails[0].contains("corrupt gzip"), "{}", r.fails[0]);
    // Garbage instead of gzip.
    let mut r = Rig::new(policy());
    r.browser_sends(b"GET http://example.com/ HTTP/1.1\r\n\r\n");
    r.origin_sends(
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 12\r\n\r\nnot gzip!!!!",
    );
    assert!(r.fails[0].contains("corrupt gzip"), "{:?}", r.fails);
    // Truncated gzip.
    let mut r = Rig::new(policy());
    r.browser_sends(b"GET http://example.com/ HTTP/1.1\r\n\r\n");
    let z = gz(&b"abcdefgh".repeat(1000));
    r.origin_sends(&gzip_response(z.len() / 2, &z[..z.len() / 2]));
    r.assert_failed("corrupt gzip");
}

#[test]
fn gzip_bomb_is_refused() {
    let p = HttpPolicy {
        max_decoded: 1 << 20,
        ..policy()
    };
    let mut r = Rig::new(p);
    r.browser_sends(b"GET http://example.com/ HTTP/1.1\r\n\r\n");
    let z = gz(&vec![0u8; 50 << 20]);
    assert!(z.len() < 100_000);
    r.origin_sends(&gzip_response(z.len(), &z));
    r.assert_failed("bomb guard");
}

#[test]
fn connect_is_raw_both_ways() {
    let mut r = Rig::new(policy());
    r.browser_sends(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
    assert_eq!(
        r.take_browser(),
        "HTTP/1.1 200 Connection established\r\n\r\n"
    );
    assert!(r.origin.is_empty());
    r.browser_sends(b"\x16\x03\x01 tls hello\r\n\r\n");
    assert_eq!(r.origin, b"\x16\x03\x01 tls hello\r\n\r\n");
    r.origin_sends(b"\x16\x03\x03 server hello");
    assert_eq!(r.take_browser().as_bytes(), b"\x16\x03\x03 server hello");
}

#[test]
fn private_target_refused_on_server_side() {
    let mut r = Rig::new(policy());
    r.browser_sends(b"GET http://127.0.0.1:6379/ HTTP/1.1\r\n\r\n");
    assert!(r.take_browser().starts_with("HTTP/1.1 403 Forbidden"));
    assert!(r.origin.is_empty());
}

#[test]
fn other_origin_gets_502_after_earlier_response() {
    let mut r = Rig::new(policy());
    r.browser_sends(
        b"GET http://a.example/ HTTP/1.1\r\n\r\nGET http://b.example/ HTTP/1.1\r\n\r\n",
    );
    assert!(r.browser.is_empty(), "502 waits for the first response");
    r.origin_sends(b"HTTP/1.1 204 No Content\r\n\r\n");
    let b = r.take_browser();
    assert!(
        b.starts_with("HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 502 Bad Gateway\r\n"),
        "{b}"
    );
    assert!(!String::from_utf8_lossy(&r.origin).contains("b.example"));
}

#[test]
fn non_proxy_and_garbage_requests() {
    let mut r = Rig::new(policy());
    r.browser_sends(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(r.take_browser().starts_with("HTTP/1.1 400 Bad Request"));
    let mut r = Rig::new(policy());
    r.browser_sends(&[0xff; 100_000]);
    assert!(r.take_browser().starts_with("HTTP/1.1 400 Bad Request"));
    assert_eq!(r.crossed, 0);
}

proptest::proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
        let mut c = ClientAccel::new(policy());
        let mut s = ServerAccel::new(policy());
        let mut o = Output::default();
        c.from_local(&data, true, &mut o);
        c.from_tunnel(&data, &mut o);
        s.from_tunnel(b"GET http://example.com/ HTTP/1.1\r\n\r\n", &mut o);
        s.from_local(&data, true, &mut o);
        s.local_closed(&mut o);
    }
}

fn lost(c: &mut ClientAccel) -> String {
    let mut out = Output::default();
    Accelerator::link_lost(c, &mut out);
    String::from_utf8_lossy(&out.to_local).into_owned()
}

#[test]
fn link_lost_before_the_response_is_a_502_page() {
    let mut r = Rig::new(policy());
    r.browser_sends(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert!(r.take_browser().is_empty());
    let page = lost(&mut r.c);
    assert!(page.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{page}");
    assert!(page.contains("Connection: close"));
}

#[test]
fn link_lost_mid_response_or_idle_just_closes() {
    let mut r = Rig::new(policy());
    r.browser_sends(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n");
    r.origin_sends(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf");
    assert!(r.take_browser().starts_with("HTTP/1.1 200 OK"));
    assert!(lost(&mut r.c).is_empty(), "no page inside a body");

    let mut idle = Rig::new(policy());
    assert!(lost(&mut idle.c).is_empty(), "nothing asked, nothing said");
}

#[test]
fn only_global_unicast_targets_pass_the_address_check() {
    let refused = [
        "64:ff9b::a9fe:a9fe", // NAT64 of 169.254.169.254
        "64:ff9b:1::a9fe:a9fe",
        "fec0::1",           // site-local
        "2002:a9fe:a9fe::1", // 6to4 of 169.254.169.254
        "2002:7f00:1::1",
        "::127.0.0.1",
        "::ffff:0:127.0.0.1",
        "::ffff:10.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "fd00::1",
        "ff02::1",
        "2001:db8::1",
        "2001::1", // TEREDO
        "198.18.0.1",
        "198.19.255.255",
        "192.0.0.8",
        "240.0.0.1",
        "255.255.255.255",
        "100.64.0.1",
        "169.254.169.254",
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "192.0.2.1",
        "0.1.2.3",
        "224.0.0.1",
    ];
    for a in refused {
        let ip: std::net::IpAddr = a.parse().unwrap();
        assert!(is_private_ip(ip), "{a} should be refused");
    }
    let allowed = [
        "93.184.216.34",
        "8.8.8.8",
        "198.20.0.1",
        "2606:4700::1111",
        "64:ff9b::808:808", // NAT64 of 8.8.8.8
        "2002:808:808::1",  // 6to4 of 8.8.8.8
        "::ffff:8.8.8.8",
    ];
    for a in allowed {
        let ip: std::net::IpAddr = a.parse().unwrap();
        assert!(!is_private_ip(ip), "{a} should pass");
    }
}

/// The browser was refused with an error page or the stream failed, naming `why`.
#[track_caller]
fn refused(r: &mut Rig, why: &str) {
    let page = r.take_browser();
    assert!(
        page.contains(why) || r.fails.iter().any(|f| f.contains(why)),
        "not refused for {why:?}: page {page:?}, fails {:?}",
        r.fails
    );
}

#[test]
fn ambiguous_framing_is_refused_rfc9112_6_3() {
    // Requests: Transfer-Encoding with Content-Length, two different
    // Content-Lengths, a final coding other than chunked, a bare LF.
    for req in [
        &b"POST http://example.com/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n"[..],
        b"POST http://example.com/ HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST http://example.com/ HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\nabcd",
        b"POST http://example.com/ HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        b"GET http://example.com/ HTTP/1.1\r\nX-A: a\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        let mut r = Rig::new(policy());
        r.browser_sends(req);
        assert!(
            r.origin.is_empty(),
            "forwarded: {:?}",
            String::from_utf8_lossy(&r.origin)
        );
        let bare_lf = req.windows(2).any(|w| w[0] != b'\r' && w[1] == b'\n');
        let why = if bare_lf {
            "malformed HTTP header"
        } else {
            "ambiguous HTTP framing"
        };
        refused(&mut r, why);
    }
    // Same Content-Length twice is one value.
    let mut r = Rig::new(policy());
    r.browser_sends(
        b"POST http://example.com/ HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert!(String::from_utf8_lossy(&r.origin).ends_with("\r\n\r\nabc"));
    assert!(r.fails.is_empty(), "{:?}", r.fails);
    // A response with both: Transfer-Encoding wins, Content-Length is not
    // forwarded next to the re-chunked body.
    let mut r = Rig::new(policy());
    r.browser_sends(b"GET http://example.com/ HTTP/1.1\r\n\r\n");
    r.origin_sends(
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    );
    let page = r.take_browser();
    assert!(
        !page.to_ascii_lowercase().contains("content-length"),
        "{page:?}"
    );
    assert!(page.ends_with("2\r\nhi\r\n0\r\n\r\n"), "{page:?}");
    assert!(r.fails.is_empty(), "{:?}", r.fails);
}
