//! Client limits over real sockets: each test is named for what must hold. Slow heads get 408,
//! idle connections are closed, oversized heads 431, oversized bodies 413 (declared or
//! streamed), stalled bodies 408, connections over the limit 503, and each route class has its
//! own upstream timeout. Every limit hit is counted in obsgate_limit_hits_total.

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn setup(up: &Upstream, backend_more: &str, extra: &str) -> Setup {
    Setup::new(
        &gateway_yaml(&backend("metrics", "mimir", &up.url(), backend_more), extra),
        &policies(),
    )
}

fn auth() -> String {
    basic("team-a", &tok("rw"))
}

/// Reads until the peer closes (or `limit` passes); returns what arrived.
async fn read_all(s: &mut TcpStream, limit: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

async fn limit_hits(gw: SocketAddr, limit: &str) -> u64 {
    let r = send(&client(), get(gw, "/metrics", None)).await;
    let text = String::from_utf8_lossy(&r.body).to_string();
    text.lines()
        .find(|l| {
            l.starts_with("obsgate_limit_hits_total") && l.contains(&format!("limit=\"{limit}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_slow_request_head_gets_408_and_the_connection_closes() {
    let up = Upstream::start().await;
    let s = setup(&up, "", "limits:\n  header_read_timeout: 1s\n");
    let g = s.start().await;
    let gw = g.shared_addr();
    let mut c = TcpStream::connect(gw).await.unwrap();
    c.write_all(b"GET /prometheus/api/v1/query?query=up HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .unwrap();
    let t0 = Instant::now();
    let got = read_all(&mut c, Duration::from_secs(5)).await;
    assert!(
        got.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{got:?}"
    );
    assert!(got.contains("connection: close"), "{got:?}");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    // a connection that sends nothing at all is timed the same way
    let mut c = TcpStream::connect(gw).await.unwrap();
    let got = read_all(&mut c, Duration::from_secs(5)).await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got:?}");
    assert_eq!(limit_hits(gw, "header_timeout").await, 2);
    assert!(up.requests().is_empty());
    g.shutdown().await;
}

#[tokio::test]
async fn a_slow_head_on_a_kept_alive_connection_gets_408_too() {
    let up = Upstream::start().await;
    // the idle timeout is long: only the header-read timeout can end this connection soon
    let s = setup(
        &up,
        "",
        "limits:\n  header_read_timeout: 1s\n  idle_timeout: 60s\n",
    );
    let g = s.start().await;
    let gw = g.shared_addr();
    let mut c = TcpStream::connect(gw).await.unwrap();
    let req = format!(
        "GET /prometheus/api/v1/query?query=up HTTP/1.1\r\nhost: x\r\nauthorization: {}\r\n\r\n",
        auth()
    );
    c.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = c.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // at once, a second head that never completes
    c.write_all(b"GET /prometheus/api/v1/query HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let t0 = Instant::now();
    let got = read_all(&mut c, Duration::from_secs(5)).await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got:?}");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "timed from the head's first byte: {waited:?}"
    );
    g.shutdown().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_but_a_busy_one_is_not() {
    let up = Upstream::start().await;
    let s = setup(
        &up,
        "",
        "limits:\n  idle_timeout: 1s\n  header_read_timeout: 10s\n",
    );
    let g = s.start().await;
    let gw = g.shared_addr();
    let mut c = TcpStream::connect(gw).await.unwrap();
    let req = format!(
        "GET /prometheus/api/v1/query?query=up HTTP/1.1\r\nhost: x\r\nauthorization: {}\r\n\r\n",
        auth()
    );
    c.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = c.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // idle: closed after about a second, without a response
    let t0 = Instant::now();
    let rest = read_all(&mut c, Duration::from_secs(5)).await;
    assert_eq!(rest, "");
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    assert_eq!(limit_hits(gw, "idle_timeout").await, 1);

    // a request that takes longer than the idle timeout (the upstream sleeps 3 s) is not cut
    let r = send(
        &client(),
        get(
            gw,
            "/prometheus/api/v1/query?query=up&slow=1",
            Some(&auth()),
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    // HTTP/2 connections are closed when idle too
    let h2 = h2c_client();
    let r = send(
        &h2,
        get(gw, "/prometheus/api/v1/query?query=up", Some(&auth())),
    )
    .await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // the /metrics scrapes' own HTTP/1 connections may have idled out too: at least the h2 one
    let n = limit_hits(gw, "idle_timeout").await;
    assert!(n >= 2, "{n}");
    g.shutdown().await;
}

#[tokio::test]
async fn an_oversized_request_head_gets_431() {
    let up = Upstream::start().await;
    let s = setup(&up, "", "limits:\n  max_header_bytes: 8192\n");
    let g = s.start().await;
    let gw = g.shared_addr();
    let mut c = TcpStream::connect(gw).await.unwrap();
    let req = format!(
        "GET /prometheus/api/v1/query?query=up HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let _ = c.write_all(req.as_bytes()).await;
    let got = read_all(&mut c, Duration::from_secs(5)).await;
    assert!(got.starts_with("HTTP/1.1 431"), "{got:?}");
    assert_eq!(limit_hits(gw, "header_too_large").await, 1);
    // a head within the limit is served
    let r = send(
        &client(),
        Request::builder()
            .uri(format!("http://{gw}/prometheus/api/v1/query?query=up"))
            .header("authorization", auth())
            .header("x-fine", "a".repeat(4000))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(up.requests().len() == 1);
    // HTTP/2: the same limit on the header list
    let req = Request::builder()
        .uri(format!("http://{gw}/prometheus/api/v1/query?query=up"))
        .header("authorization", auth())
        .header("x-big", "a".repeat(20_000))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = h2c_client().request(req).await;
    match r {
        Ok(r) => assert_eq!(r.status(), 431),
        Err(e) => panic!("{e:?}"),
    }
    assert!(up.requests().len() == 1);
    g.shutdown().await;
}

#[tokio::test]
async fn a_head_near_the_limit_sent_with_its_body_in_one_write_is_served() {
    // the head limit cuts reads while a head is read: the body bytes that arrive with the head
    // must not count as head
    let up = Upstream::start().await;
    let s = setup(&up, "", "limits:\n  max_header_bytes: 8192\n");
    let g = s.start().await;
    let gw = g.shared_addr();
    let body = vec![b'x'; 256 << 10];
    let mut c = TcpStream::connect(gw).await.unwrap();
    let mut head = format!(
        "POST /api/v1/push HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: {}\r\ncontent-length: {}\r\n",
        auth(),
        body.len()
    );
    head.push_str(&format!("x-pad: {}\r\n\r\n", "p".repeat(8000 - head.len())));
    assert!(head.len() <= 8192 && head.len() > 8000, "{}", head.len());
    let mut all = head.into_bytes();
    all.extend_from_slice(&body);
    c.write_all(&all).await.unwrap();
    let got = read_all(&mut c, Duration::from_secs(5)).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
    let seen = up.requests();
    assert_eq!(seen.last().map(|r| r.body_len), Some(body.len()));
    assert_eq!(limit_hits(gw, "header_too_large").await, 0);
    g.shutdown().await;
}

#[tokio::test]
async fn oversized_bodies_get_413_whether_declared_or_streamed() {
    let up = Upstream::start().await;
    let s = setup(
        &up,
        "    max_write_body_bytes: 1000\n",
        "lbac:\n  mode: rewrite\nlimits:\n  max_read_body_bytes: 2000\n",
    );
    let g = s.start().await;
    let gw = g.shared_addr();
    // declared: refused before anything is forwarded
    let r = send(
        &client(),
        post(gw, "/api/v1/push", Some(&auth()), vec![0u8; 1001]),
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.error());
    assert!(r.error().contains("1000 bytes"), "{}", r.error());
    assert!(up.requests().is_empty());
    // at the limit: forwarded
    let r = send(
        &client(),
        post(gw, "/api/v1/push", Some(&auth()), vec![0u8; 1000]),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().body_len, 1000);

    // streamed (chunked, no length): cut off when it goes over
    let mut c = TcpStream::connect(gw).await.unwrap();
    let head = format!(
        "POST /api/v1/push HTTP/1.1\r\nhost: x\r\nauthorization: {}\r\ntransfer-encoding: chunked\r\n\r\n",
        auth()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..3 {
        let _ = c
            .write_all(format!("{:x}\r\n{}\r\n", 600, "b".repeat(600)).as_bytes())
            .await;
    }
    let _ = c.write_all(b"0\r\n\r\n").await;
    let got = read_all(&mut c, Duration::from_secs(5)).await;
    assert!(got.starts_with("HTTP/1.1 413"), "{got:?}");

    // a read's form body (rewrite mode reads it): the read limit
    let form = format!("query={}", "x".repeat(2100));
    let r = send(
        &client(),
        Request::builder()
            .method("POST")
            .uri(format!("http://{gw}/prometheus/api/v1/query"))
            .header("authorization", basic("team-a", &tok("lbac")))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.error());
    assert_eq!(limit_hits(gw, "body_too_large").await, 3);
    g.shutdown().await;
}

#[tokio::test]
async fn a_stalled_request_body_gets_408() {
    let up = Upstream::start().await;
    let s = setup(&up, "", "limits:\n  body_read_timeout: 1s\n");
    let g = s.start().await;
    let gw = g.shared_addr();
    let mut c = TcpStream::connect(gw).await.unwrap();
    let head = format!(
        "POST /api/v1/push HTTP/1.1\r\nhost: x\r\nauthorization: {}\r\ncontent-length: 100\r\n\r\n0123456789",
        auth()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let got = read_all(&mut c, Duration::from_secs(6)).await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got:?}");
    assert!(got.contains("stalled"), "{got:?}");
    assert_eq!(limit_hits(gw, "body_timeout").await, 1);
    g.shutdown().await;
}

#[tokio::test]
async fn a_slow_steady_body_is_not_cut_and_a_stall_counts_from_the_last_bytes() {
    let up = Upstream::start().await;
    let s = setup(&up, "", "limits:\n  body_read_timeout: 1s\n");
    let g = s.start().await;
    let gw = g.shared_addr();
    // 100 bytes, 10 every 600 ms: 5.4 s in all, never 1 s without progress
    let mut c = TcpStream::connect(gw).await.unwrap();
    let head = format!(
        "POST /api/v1/push HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: {}\r\ncontent-length: 100\r\n\r\n",
        auth()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..10 {
        c.write_all(b"0123456789").await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let got = read_all(&mut c, Duration::from_secs(5)).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
    // progress for 1.8 s, then a stall: 408 one timeout after the last bytes, not after the first
    let mut c = TcpStream::connect(gw).await.unwrap();
    c.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..4 {
        c.write_all(b"0123456789").await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let last = Instant::now() - Duration::from_millis(600);
    let got = read_all(&mut c, Duration::from_secs(6)).await;
    let after = last.elapsed();
    assert!(got.starts_with("HTTP/1.1 408"), "{got:?}");
    assert!(
        after >= Duration::from_millis(950) && after < Duration::from_millis(2500),
        "408 came {after:?} after the last bytes"
    );
    assert_eq!(limit_hits(gw, "body_timeout").await, 1);
    g.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_limit_get_503_and_the_limit_frees_up() {
    let up = Upstream::start().await;
    let s = setup(
        &up,
        "",
        "limits:\n  max_connections: 2\n  header_read_timeout: 30s\n",
    );
    let g = s.start().await;
    let gw = g.shared_addr();
    let a = TcpStream::connect(gw).await.unwrap();
    let b = TcpStream::connect(gw).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = TcpStream::connect(gw).await.unwrap();
    let got = read_all(&mut c, Duration::from_secs(5)).await;
    assert!(got.starts_with("HTTP/1.1 503"), "{got:?}");
    assert!(got.contains("retry-after: 1"), "{got:?}");
    drop((a, b));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = send(
        &client(),
        get(gw, "/prometheus/api/v1/query?query=up", Some(&auth())),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(limit_hits(gw, "max_connections").await, 1);
    g.shutdown().await;
}

#[tokio::test]
async fn each_route_class_has_its_own_upstream_timeout() {
    let up = Upstream::start().await;
    // the upstream answers "slow=1" after 3 s
    let s = setup(&up, "    timeout: 10s\n    write_timeout: 1s\n", "");
    let g = s.start().await;
    let gw = g.shared_addr();
    let t0 = Instant::now();
    let r = send(
        &client(),
        post(gw, "/api/v1/push?slow=1", Some(&auth()), b"x".to_vec()),
    )
    .await;
    assert_eq!(r.status, 504, "{}", r.error());
    assert!(t0.elapsed() < Duration::from_millis(2500));
    let r = send(
        &client(),
        get(
            gw,
            "/prometheus/api/v1/query?query=up&slow=1",
            Some(&auth()),
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    g.shutdown().await;
}
