//! PROXY protocol (v1 and v2) on listeners with `proxy_protocol: true`, over real sockets: the
//! carried client address is what `X-Forwarded-For`, `allowed_subnets`, the failed-auth
//! throttle and forward-auth see; LOCAL/UNKNOWN keep the peer; untrusted peers, malformed and
//! missing headers are closed without an answer; TLS comes after the header; the header counts
//! against max_connections; each result is counted; listeners without it are unchanged.

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use obsgate::proxy::proxy_protocol::encode;
use obsgate::proxy::server::Running;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const Q: &str = "/prometheus/api/v1/query?query=up";

/// A gateway.yaml: the metrics backend, `server_extra` lines under `server:`, the trusted
/// proxies, and `extra` top-level YAML.
fn yaml(up: &Upstream, server_extra: &str, trusted: &str, extra: &str) -> String {
    format!(
        "server:\n  listen: \"127.0.0.1:0\"\n  shutdown_grace: 1s\n{server_extra}cluster: local\nstore:\n  policy_files: [policies.yaml]\n  poll_interval: 100ms\nbackends:\n  metrics:\n    kind: mimir\n    url: \"{}\"\nclient_ip:\n  trusted_proxies: {trusted}\nlimits:\n  header_read_timeout: 1s\n{extra}\n",
        up.url()
    )
}

/// The shared listener expects PROXY headers; 127.0.0.1 (the tests' peer) is trusted.
async fn start_pp(up: &Upstream, extra: &str) -> (Setup, Running) {
    let s = Setup::new(
        &yaml(up, "  proxy_protocol: true\n", "[\"127.0.0.1/32\"]", extra),
        &policies(),
    );
    let g = s.start().await;
    (s, g)
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// v1 and v2 headers carrying `client` (to a made-up destination of the same family).
fn v1(client: &str) -> Vec<u8> {
    let c = sa(client);
    let d = if c.is_ipv4() {
        sa("10.0.0.1:8080")
    } else {
        sa("[2001:db8::1]:8080")
    };
    encode::v1(Some((c, d)))
}

fn v2(client: &str) -> Vec<u8> {
    let c = sa(client);
    let d = if c.is_ipv4() {
        sa("10.0.0.1:8080")
    } else {
        sa("[2001:db8::1]:8080")
    };
    // AWS NLB's VPC endpoint TLV, as a real one would send
    encode::v2(
        Some((c, d)),
        &encode::tlv(0xea, b"\x01vpce-0123456789abcdef0"),
    )
}

/// An HTTP/1.1 request for `path` with this Authorization (closing the connection after it).
fn request(path: &str, auth: Option<&str>, more: &str) -> Vec<u8> {
    let auth = auth
        .map(|a| format!("authorization: {a}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nhost: gw\r\n{auth}{more}connection: close\r\n\r\n").into_bytes()
}

fn bearer(who: &str) -> String {
    format!("Bearer {}", tok(who))
}

/// Connects from 127.0.0.1 (or `from`), writes each part as its own segment (a pause between
/// them), and reads until the gateway closes. Returns what was read (empty: closed without an
/// answer; a reset counts as the end).
async fn exchange_from(from: Option<IpAddr>, addr: SocketAddr, parts: &[&[u8]]) -> Vec<u8> {
    exchange_paced(from, addr, parts, Duration::from_millis(30)).await
}

async fn exchange_paced(
    from: Option<IpAddr>,
    addr: SocketAddr,
    parts: &[&[u8]],
    pause: Duration,
) -> Vec<u8> {
    let s = match from {
        None => TcpStream::connect(addr).await.unwrap(),
        Some(ip) => {
            let sock = TcpSocket::new_v4().unwrap();
            sock.bind(SocketAddr::new(ip, 0)).unwrap();
            sock.connect(addr).await.unwrap()
        }
    };
    s.set_nodelay(true).unwrap();
    let mut s = s;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(pause).await;
        }
        if s.write_all(p).await.is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the gateway neither answered nor closed within 10 s"),
        }
    }
}

async fn exchange(addr: SocketAddr, parts: &[&[u8]]) -> Vec<u8> {
    exchange_from(None, addr, parts).await
}

/// The status code of a raw HTTP/1.1 response (0: no response).
fn status(raw: &[u8]) -> u16 {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|t| t.strip_prefix("HTTP/1.1 "))
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// One request after `header`, in one write; the status.
async fn ask(addr: SocketAddr, header: &[u8], path: &str, auth: Option<&str>) -> u16 {
    let mut all = header.to_vec();
    all.extend(request(path, auth, ""));
    status(&exchange(addr, &[&all]).await)
}

/// The right-most `X-Forwarded-For` entry of the upstream's last request.
fn last_xff(up: &Upstream) -> String {
    let r = up.last();
    let all: Vec<String> = r
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    all.join(",").rsplit(',').next().unwrap().trim().to_string()
}

/// `obsgate_proxy_protocol_total{result}` now.
fn pp_count(g: &Running, result: &str) -> u64 {
    let text = String::from_utf8(g.services.metrics.render()).unwrap();
    let line = format!("obsgate_proxy_protocol_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn v1_and_v2_carry_the_client_address_to_x_forwarded_for() {
    let up = Upstream::start().await;
    let (_s, g) = start_pp(&up, "").await;
    let gw = g.shared_addr();
    let rw = bearer("rw");
    for (header, want) in [
        (v1("203.0.113.5:40000"), "203.0.113.5"),
        (v1("[2001:db8::5]:40000"), "2001:db8::5"),
        (v2("203.0.113.6:1"), "203.0.113.6"),
        (v2("[2001:db8::6]:65535"), "2001:db8::6"),
        // an IPv4-mapped IPv6 source is the IPv4 address
        (v2("[::ffff:203.0.113.7]:2"), "203.0.113.7"),
    ] {
        let mut all = header.clone();
        all.extend(request(Q, Some(&rw), "x-forwarded-for: 6.6.6.6\r\n"));
        let raw = exchange(gw, &[&all]).await;
        assert_eq!(status(&raw), 200, "{}", String::from_utf8_lossy(&raw));
        assert_eq!(last_xff(&up), want, "{}", String::from_utf8_lossy(&header));
        // what the client sent stays on the left
        let xff = up.last().headers["x-forwarded-for"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(xff.starts_with("6.6.6.6"), "{xff}");
    }
    assert_eq!(pp_count(&g, "ok"), 5);

    // HTTP/2 (h2c by prior knowledge) after the header: the preface is read from the bytes
    // replayed after the header
    let mut tcp = TcpStream::connect(gw).await.unwrap();
    tcp.write_all(&v2("198.51.100.9:7")).await.unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://{gw}{Q}"))
        .header("authorization", &rw)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = h2.send_request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().version, http::Version::HTTP_11);
    assert_eq!(last_xff(&up), "198.51.100.9");
    g.shutdown().await;
}

#[tokio::test]
async fn a_header_split_across_writes_or_sent_with_the_request_is_read_the_same() {
    let up = Upstream::start().await;
    let (_s, g) = start_pp(&up, "").await;
    let gw = g.shared_addr();
    let req = request(Q, Some(&bearer("rw")), "");
    for (header, want) in [
        (v1("203.0.113.10:1"), "203.0.113.10"),
        (v2("[2001:db8::10]:1"), "2001:db8::10"),
    ] {
        let n = header.len();
        let mut tail = header[n - 1..].to_vec();
        tail.extend_from_slice(&req[..10]);
        let whole = [header.clone(), req.clone()].concat();
        let splits: Vec<Vec<&[u8]>> = vec![
            // header, then the request
            vec![&header, &req],
            // the header in three pieces
            vec![&header[..3], &header[3..n / 2], &header[n / 2..], &req],
            // the header's last byte with the request's start, then the rest
            vec![&header[..n - 1], &tail, &req[10..]],
            // all in one
            vec![&whole],
        ];
        for parts in splits {
            let raw = exchange(gw, &parts).await;
            assert_eq!(status(&raw), 200, "{}", String::from_utf8_lossy(&raw));
            assert_eq!(last_xff(&up), want);
        }
        // one byte per write (within the 1 s header timeout)
        let mut bytes: Vec<&[u8]> = header.chunks(1).collect();
        bytes.push(&req);
        let raw = exchange_paced(None, gw, &bytes, Duration::from_millis(5)).await;
        assert_eq!(status(&raw), 200);
        assert_eq!(last_xff(&up), want);
    }
    // keep-alive: two requests after one header, both from the carried address
    let two = [
        v1("203.0.113.11:1"),
        request(Q, Some(&bearer("rw")), "").replace_close(),
        request(Q, Some(&bearer("rw")), ""),
    ]
    .concat();
    let raw = exchange(gw, &[&two]).await;
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    let seen = up.requests();
    for r in &seen[seen.len() - 2..] {
        assert_eq!(r.headers["x-forwarded-for"], "203.0.113.11");
    }
    g.shutdown().await;
}

trait KeepAlive {
    fn replace_close(self) -> Vec<u8>;
}

impl KeepAlive for Vec<u8> {
    /// The request without `connection: close`.
    fn replace_close(self) -> Vec<u8> {
        String::from_utf8(self)
            .unwrap()
            .replace("connection: close\r\n", "")
            .into_bytes()
    }
}

#[tokio::test]
async fn allowed_subnets_are_checked_against_the_carried_address() {
    let up = Upstream::start().await;
    let (_s, g) = start_pp(&up, "").await;
    let gw = g.shared_addr();
    // vpn-only: 10.0.0.0/8; local-only: 127.0.0.1/32 (the real peer)
    let vpn = bearer("vpn-only");
    let local = bearer("local-only");
    assert_eq!(ask(gw, &v1("10.1.2.3:5"), Q, Some(&vpn)).await, 200);
    assert_eq!(ask(gw, &v2("10.1.2.3:5"), Q, Some(&vpn)).await, 200);
    assert_eq!(ask(gw, &v1("192.0.2.7:5"), Q, Some(&vpn)).await, 403);
    assert_eq!(ask(gw, &v2("192.0.2.7:5"), Q, Some(&vpn)).await, 403);
    assert_eq!(ask(gw, &v2("[2001:db8::7]:5"), Q, Some(&vpn)).await, 403);
    // the proxy's own address no longer counts
    assert_eq!(ask(gw, &v1("10.1.2.3:5"), Q, Some(&local)).await, 403);
    assert_eq!(ask(gw, &v2("10.1.2.3:5"), Q, Some(&local)).await, 403);
    g.shutdown().await;
}

#[tokio::test]
async fn v2_local_and_v1_unknown_keep_the_peer() {
    let up = Upstream::start().await;
    let (_s, g) = start_pp(&up, "").await;
    let gw = g.shared_addr();
    let local = bearer("local-only");
    let vpn = bearer("vpn-only");
    for header in [encode::v2(None, &[]), encode::v1(None)] {
        assert_eq!(ask(gw, &header, Q, Some(&local)).await, 200);
        assert_eq!(last_xff(&up), "127.0.0.1");
        assert_eq!(ask(gw, &header, Q, Some(&vpn)).await, 403);
    }
    // v1 UNKNOWN with addresses after it: ignored too
    let h = b"PROXY UNKNOWN 10.1.2.3 10.0.0.1 1 2\r\n";
    assert_eq!(ask(gw, h, Q, Some(&local)).await, 200);
    assert_eq!(last_xff(&up), "127.0.0.1");
    // the balancer (trusted) writes no X-Forwarded-For of its own: one on a LOCAL or UNKNOWN
    // connection came from the client behind it and is not believed
    for header in [encode::v2(None, &[]), encode::v1(None)] {
        let mut all = header;
        all.extend(request(Q, Some(&vpn), "x-forwarded-for: 10.1.2.3\r\n"));
        assert_eq!(
            status(&exchange(gw, &[&all]).await),
            403,
            "a forged 10.1.2.3 is not believed"
        );
        let mut all = encode::v2(None, &[]);
        all.extend(request(Q, Some(&local), "x-forwarded-for: 10.1.2.3\r\n"));
        assert_eq!(
            status(&exchange(gw, &[&all]).await),
            200,
            "the client is the balancer"
        );
    }
    assert_eq!(pp_count(&g, "local"), 9);
    assert_eq!(pp_count(&g, "ok"), 0);
    g.shutdown().await;
}

#[tokio::test]
async fn the_carried_address_is_itself_subject_to_trusted_proxies() {
    let up = Upstream::start().await;
    // the load balancer (127.0.0.1) and a proxy tier behind it (10.9.0.0/16) are trusted
    let s = Setup::new(
        &yaml(
            &up,
            "  proxy_protocol: true\n",
            "[\"127.0.0.1/32\", \"10.9.0.0/16\"]",
            "",
        ),
        &policies(),
    );
    let g = s.start().await;
    let gw = g.shared_addr();
    let vpn = bearer("vpn-only");
    let ask_xff = |header: Vec<u8>, xff: &'static str| {
        let vpn = vpn.clone();
        async move {
            let mut all = header;
            all.extend(request(
                Q,
                Some(&vpn),
                &format!("x-forwarded-for: {xff}\r\n"),
            ));
            status(&exchange(gw, &[&all]).await)
        }
    };
    // carried 10.9.0.5 is a trusted proxy: its X-Forwarded-For names the client (not in 10/8)
    assert_eq!(ask_xff(v1("10.9.0.5:1"), "192.0.2.50").await, 403);
    assert_eq!(ask_xff(v1("10.9.0.5:1"), "10.1.1.1").await, 200);
    // carried 10.1.2.3 is not: what it sends is not believed
    assert_eq!(ask_xff(v2("10.1.2.3:1"), "192.0.2.50").await, 200);
    assert_eq!(ask_xff(v2("192.0.2.51:1"), "10.1.1.1").await, 403);
    g.shutdown().await;
}

#[tokio::test]
async fn the_throttle_keys_on_the_carried_address() {
    let up = Upstream::start().await;
    let (_s, g) = start_pp(&up, "auth_throttle:\n  burst: 2\n  per_second: 0.01\n").await;
    let gw = g.shared_addr();
    let bad = bearer("nobody");
    let good = bearer("rw");
    let a = "198.51.100.1:1000";
    let b = "198.51.100.2:1000";
    assert_eq!(ask(gw, &v1(a), Q, Some(&bad)).await, 401);
    assert_eq!(ask(gw, &v2(a), Q, Some(&bad)).await, 401);
    // A has used its allowance: even a good token waits
    assert_eq!(ask(gw, &v1(a), Q, Some(&good)).await, 429);
    assert_eq!(ask(gw, &v2(a), Q, Some(&good)).await, 429);
    // B comes over the same proxy peer and is not affected
    assert_eq!(ask(gw, &v1(b), Q, Some(&good)).await, 200);
    assert_eq!(ask(gw, &v2(b), Q, Some(&bad)).await, 401);
    assert_eq!(ask(gw, &v1(b), Q, Some(&good)).await, 200);
    // nor is the proxy itself (LOCAL: the peer is the client)
    assert_eq!(ask(gw, &encode::v2(None, &[]), Q, Some(&good)).await, 200);
    g.shutdown().await;
}

#[tokio::test]
async fn an_untrusted_peer_is_closed_without_a_read_or_an_answer() {
    let up = Upstream::start().await;
    // the metrics backend's own listener expects PROXY headers from 10.0.0.0/8 only; the
    // shared listener does not expect them
    let s = Setup::new(
        &yaml(&up, "", "[\"10.0.0.0/8\"]", "").replace(
            "    url: ",
            "    listen: \"127.0.0.1:0\"\n    proxy_protocol: true\n    url: ",
        ),
        &policies(),
    );
    let g = s.start().await;
    let dedicated = g.addr_for(obsgate::config::BackendSlot::Metrics).unwrap();
    let rw = bearer("rw");
    let mut all = v1("10.1.2.3:1");
    all.extend(request(Q, Some(&rw), ""));
    let t0 = Instant::now();
    assert_eq!(exchange(dedicated, &[&all]).await, b"");
    // nothing sent: closed at once, not after the header timeout
    assert_eq!(exchange(dedicated, &[]).await, b"");
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    assert!(up.requests().is_empty());
    assert_eq!(pp_count(&g, "untrusted"), 2);
    // the shared listener (no proxy_protocol) serves 127.0.0.1 as before
    let r = send(&client(), get(g.shared_addr(), Q, Some(&rw))).await;
    assert_eq!(r.status, 200);
    g.shutdown().await;

    // the same with 127.0.0.1 trusted and the connection coming from 127.0.0.2
    let (_s, g) = start_pp(&up, "").await;
    let gw = g.shared_addr();
    let from = Some(ip("127.0.0.2"));
    assert_eq!(exchange_from(from, gw, &[&all]).await, b"");
    assert_eq!(pp_count(&g, "untrusted"), 1);
    assert_eq!(status(&exchange_from(None, gw, &[&all]).await), 200);
    g.shutdown().await;
}

#[tokio::test]
async fn malformed_and_missing_headers_close_the_connection() {
    let up = Upstream::start().await;
    let (_s, g) = start_pp(&up, "").await;
    let gw = g.shared_addr();
    let req = request(Q, Some(&bearer("rw")), "");
    let mut bad_version = v2("10.1.2.3:1");
    bad_version[12] = 0x11;
    let mut bad_family = v2("10.1.2.3:1");
    bad_family[13] = 0x41;
    let mut too_long = b"PROXY UNKNOWN ".to_vec();
    too_long.resize(200, b'x');
    let malformed: Vec<Vec<u8>> = vec![
        // no header: the request itself
        vec![],
        b"PROXY TCP4 10.1.2.3 10.0.0.1 1 99999\r\n".to_vec(),
        b"PROXY TCP4 10.1.2.3  10.0.0.1 1 2\r\n".to_vec(),
        b"PROXY TCP6 10.1.2.3 10.0.0.1 1 2\r\n".to_vec(),
        b"PROXY TCP4 10.1.2.3 10.0.0.1 1 2\n".to_vec(),
        too_long,
        bad_version,
        bad_family,
        // a v2 length over the 4096-byte bound
        {
            let mut h = encode::v2(None, &[]);
            h[14..16].copy_from_slice(&4097u16.to_be_bytes());
            h
        },
    ];
    let n = malformed.len() as u64;
    for h in malformed {
        let mut all = h.clone();
        all.extend_from_slice(&req);
        let raw = exchange(gw, &[&all]).await;
        assert_eq!(raw, b"", "{:?}", String::from_utf8_lossy(&h));
    }
    // the client closing (its side) before a whole header: malformed too
    let mut c = TcpStream::connect(gw).await.unwrap();
    c.write_all(b"PROXY TCP4 1").await.unwrap();
    c.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty());
    assert_eq!(pp_count(&g, "malformed"), n + 1);
    // missing (nothing sent) or cut short: closed after limits.header_read_timeout (1 s)
    for parts in [&[][..], &[&b"PROXY TCP4 10.1.2.3"[..]][..]] {
        let t0 = Instant::now();
        assert_eq!(exchange(gw, parts).await, b"");
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }
    assert_eq!(pp_count(&g, "timeout"), 2);
    assert!(up.requests().is_empty());
    // and the listener still serves
    assert_eq!(
        ask(gw, &v1("10.1.2.3:1"), Q, Some(&bearer("rw"))).await,
        200
    );
    g.shutdown().await;
}

#[tokio::test]
async fn every_result_is_counted() {
    let up = Upstream::start().await;
    let (_s, g) = start_pp(&up, "").await;
    let gw = g.shared_addr();
    let rw = bearer("rw");
    assert_eq!(ask(gw, &v1("10.1.2.3:1"), Q, Some(&rw)).await, 200);
    assert_eq!(ask(gw, &v2("10.1.2.3:1"), Q, Some(&rw)).await, 200);
    assert_eq!(ask(gw, &encode::v2(None, &[]), Q, Some(&rw)).await, 200);
    assert_eq!(exchange_from(Some(ip("127.0.0.3")), gw, &[b"x"]).await, b"");
    assert_eq!(exchange(gw, &[b"GET / HTTP/1.1\r\n\r\n"]).await, b"");
    assert_eq!(exchange(gw, &[]).await, b"");
    // as /metrics shows them (asked over the PROXY listener itself, with a LOCAL header)
    let raw = exchange(
        gw,
        &[&[encode::v2(None, &[]), request("/metrics", None, "")].concat()],
    )
    .await;
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(status(&raw), 200);
    for (result, n) in [
        ("ok", 2),
        ("local", 2),
        ("untrusted", 1),
        ("malformed", 1),
        ("timeout", 1),
    ] {
        let line = format!("obsgate_proxy_protocol_total{{result=\"{result}\"}} {n}\n");
        assert!(text.contains(&line), "{line}");
    }
    g.shutdown().await;
}

#[tokio::test]
async fn a_listener_without_proxy_protocol_answers_a_proxy_line_400() {
    let up = Upstream::start().await;
    let s = Setup::new(&yaml(&up, "", "[\"127.0.0.1/32\"]", ""), &policies());
    let g = s.start().await;
    let gw = g.shared_addr();
    let mut all = v1("10.1.2.3:1");
    all.extend(request(Q, Some(&bearer("rw")), ""));
    let raw = exchange(gw, &[&all]).await;
    assert_eq!(status(&raw), 400, "{}", String::from_utf8_lossy(&raw));
    // a v2 header is no request either
    let mut all = v2("10.1.2.3:1");
    all.extend(request(Q, Some(&bearer("rw")), ""));
    let raw = exchange(gw, &[&all]).await;
    assert!(
        matches!(status(&raw), 0 | 400),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert!(up.requests().is_empty());
    // and nothing is counted
    assert_eq!(pp_count(&g, "malformed") + pp_count(&g, "ok"), 0);
    g.shutdown().await;
}

#[tokio::test]
async fn the_forward_auth_listener_reads_the_header() {
    let up = Upstream::start().await;
    let s = Setup::new(
        &yaml(
            &up,
            "",
            "[\"127.0.0.1/32\"]",
            "forward_auth:\n  listen: \"127.0.0.1:0\"\n  proxy_protocol: true\n",
        ),
        &policies(),
    );
    let g = s.start().await;
    let fa = g.forward_auth.unwrap();
    let question = |header: Vec<u8>| {
        let mut q = header;
        q.extend(request(
            "/auth",
            Some(&bearer("vpn-only")),
            &format!("x-original-method: GET\r\nx-original-uri: {Q}\r\n"),
        ));
        q
    };
    assert_eq!(
        status(&exchange(fa, &[&question(v1("10.1.2.3:1"))]).await),
        200
    );
    assert_eq!(
        status(&exchange(fa, &[&question(v2("192.0.2.7:1"))]).await),
        403
    );
    // without a header: closed
    assert_eq!(exchange(fa, &[&question(vec![])]).await, b"");
    assert_eq!(pp_count(&g, "ok"), 2);
    g.shutdown().await;
}

#[tokio::test]
async fn a_connection_reading_its_header_counts_against_max_connections() {
    let up = Upstream::start().await;
    let (_s, g) = start_pp(&up, "  max_connections: 1\n").await;
    let gw = g.shared_addr();
    // one connection that has not sent its header yet holds the only slot
    let mut waiting = TcpStream::connect(gw).await.unwrap();
    waiting.write_all(b"PROXY TCP4 ").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let raw = exchange(
        gw,
        &[&[v1("10.1.2.3:1"), request(Q, Some(&bearer("rw")), "")].concat()],
    )
    .await;
    assert_eq!(status(&raw), 503, "{}", String::from_utf8_lossy(&raw));
    // once it is closed (header timeout), the slot is free again
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), waiting.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    let ok = eventually(Duration::from_secs(3), move || async move {
        ask(gw, &v1("10.1.2.3:1"), Q, Some(&bearer("rw"))).await == 200
    })
    .await;
    assert!(ok.is_some());
    g.shutdown().await;
}

mod tls {
    use super::*;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    use std::sync::Arc;

    #[tokio::test]
    async fn the_header_comes_before_the_client_hello() {
        let pki = localhost_pki();
        let up = Upstream::start().await;
        let s = Setup::new(
            &yaml(
                &up,
                "  proxy_protocol: true\n  tls:\n    cert_file: gw.pem\n    key_file: gw-key.pem\n",
                "[\"127.0.0.1/32\"]",
                "",
            ),
            &policies(),
        );
        std::fs::write(s.path("gw.pem"), &pki.cert_pem).unwrap();
        std::fs::write(s.path("gw-key.pem"), &pki.key_pem).unwrap();
        let g = s.start().await;
        let gw = g.shared_addr();
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        for (header, want) in [
            (v2("203.0.113.20:1"), "203.0.113.20"),
            (v1("[2001:db8::20]:1"), "2001:db8::20"),
            (encode::v2(None, &[]), "127.0.0.1"),
        ] {
            let mut tcp = TcpStream::connect(gw).await.unwrap();
            tcp.write_all(&header).await.unwrap();
            let tls = connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap();
            let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .unwrap();
            tokio::spawn(conn);
            let req = Request::get(Q)
                .header("host", "localhost")
                .header("authorization", bearer("rw"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            assert_eq!(h1.send_request(req).await.unwrap().status(), 200);
            assert_eq!(last_xff(&up), want);
        }
        // a ClientHello without a header first is not a PROXY header: closed
        let tcp = TcpStream::connect(gw).await.unwrap();
        assert!(
            connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .is_err()
        );
        assert_eq!(pp_count(&g, "ok"), 2);
        assert_eq!(pp_count(&g, "local"), 1);
        assert_eq!(pp_count(&g, "malformed"), 1);
        g.shutdown().await;
    }
}

#[tokio::test]
async fn check_names_the_listeners_that_expect_proxy_headers() {
    let up = Upstream::start().await;
    let s = Setup::new(
        &yaml(
            &up,
            "  proxy_protocol: true\n",
            "[\"10.0.0.0/8\"]",
            "forward_auth:\n  listen: \"127.0.0.1:0\"\n",
        ),
        &policies(),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_obsgate"))
        .args(["check", "--config"])
        .arg(s.path("gateway.yaml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("proxy_protocol:"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("server (127.0.0.1:0)"), "{line}");
    assert!(!line.contains("forward_auth"), "{line}");
    // without trusted proxies: a located error, exit 1
    std::fs::write(
        s.path("gateway.yaml"),
        yaml(&up, "  proxy_protocol: true\n", "[]", ""),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_obsgate"))
        .args(["check", "--config"])
        .arg(s.path("gateway.yaml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("gateway.yaml:4:")
            && text.contains("server.proxy_protocol needs client_ip.trusted_proxies"),
        "{text}"
    );
}
