//! Found by review of the issue-12 changes: an upstream that answers a push before reading it
//! must not hand its busy connection to the next request nor make the gateway answer twice;
//! the HTTP/1 head limit holds for pipelined heads and after a request that starts with `PRI `.

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn auth() -> String {
    basic("team-a", &tok("rw"))
}

/// Reads one HTTP/1 response (head + content-length body) from `s`, with `limit`.
async fn read_response(s: &mut TcpStream, carry: &mut Vec<u8>, limit: Duration) -> Option<String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(p) = find(carry, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&carry[..p + 4]).to_string();
            let len = content_length(&head).unwrap_or(0);
            while carry.len() < p + 4 + len {
                let mut b = [0u8; 65536];
                let n = tokio::time::timeout_at(deadline.into(), s.read(&mut b))
                    .await
                    .ok()?
                    .ok()?;
                if n == 0 {
                    return None;
                }
                carry.extend_from_slice(&b[..n]);
            }
            let all: Vec<u8> = carry.drain(..p + 4 + len).collect();
            return Some(String::from_utf8_lossy(&all).to_string());
        }
        let mut b = [0u8; 65536];
        let n = tokio::time::timeout_at(deadline.into(), s.read(&mut b))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        carry.extend_from_slice(&b[..n]);
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })
}

fn big_get(pad: usize) -> String {
    format!(
        "GET /prometheus/api/v1/query?query=up HTTP/1.1\r\nhost: x\r\nauthorization: {}\r\nx-big: {}\r\n\r\n",
        auth(),
        "a".repeat(pad)
    )
}

/// A first request starting with "PRI " makes the guard take the connection for HTTP/2: later
/// heads on it are not limited by the guard (hyper's buffer is 400 KiB).
#[tokio::test]
async fn pri_method_turns_off_the_head_limit() {
    let up = Upstream::start().await;
    let s = Setup::new(
        &gateway_yaml(
            &backend("metrics", "mimir", &up.url(), ""),
            "limits:\n  max_header_bytes: 8192\n",
        ),
        &policies(),
    );
    let g = s.start().await;
    let gw = g.shared_addr();
    let mut c = TcpStream::connect(gw).await.unwrap();
    c.write_all(b"PRI /x HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut carry = Vec::new();
    let r1 = read_response(&mut c, &mut carry, Duration::from_secs(5)).await;
    eprintln!("first: {:?}", r1.as_deref().map(|s| &s[..s.len().min(80)]));
    c.write_all(big_get(300_000).as_bytes()).await.unwrap();
    let r2 = read_response(&mut c, &mut carry, Duration::from_secs(5)).await;
    eprintln!("second: {:?}", r2.as_deref().map(|s| &s[..s.len().min(80)]));
    let seen = up.requests();
    let big = seen
        .iter()
        .filter_map(|r| r.headers.get("x-big").map(|v| v.len()))
        .max();
    eprintln!("upstream saw x-big of {big:?} bytes (limit 8192)");
    assert!(big.is_none(), "a 300 KB head got through a 8 KiB limit");
    g.shutdown().await;
}

/// Bytes of the next head read while a request is in flight are not counted.
#[tokio::test]
async fn pipelined_heads_are_not_limited() {
    let up = Upstream::start().await;
    let s = Setup::new(
        &gateway_yaml(
            &backend("metrics", "mimir", &up.url(), ""),
            "limits:\n  max_header_bytes: 8192\n",
        ),
        &policies(),
    );
    let g = s.start().await;
    let gw = g.shared_addr();
    // (a) small GET + 14 KB head in one write
    let mut c = TcpStream::connect(gw).await.unwrap();
    let mut all = format!(
        "GET /prometheus/api/v1/query?query=up HTTP/1.1\r\nhost: x\r\nauthorization: {}\r\n\r\n",
        auth()
    );
    all.push_str(&big_get(14_000));
    c.write_all(all.as_bytes()).await.unwrap();
    let mut carry = Vec::new();
    let r1 = read_response(&mut c, &mut carry, Duration::from_secs(5)).await;
    let r2 = read_response(&mut c, &mut carry, Duration::from_secs(5)).await;
    eprintln!(
        "(a) {:?} / {:?}",
        r1.as_deref().map(|s| &s[..s.len().min(20)]),
        r2.as_deref().map(|s| &s[..s.len().min(20)])
    );
    // (b) 1 MiB push + a big head in one write
    for pad in [40_000usize, 100_000, 200_000, 300_000] {
        let mut c = TcpStream::connect(gw).await.unwrap();
        let body = vec![b'x'; 1 << 20];
        let mut all = format!(
        "POST /api/v1/push HTTP/1.1\r\nhost: x\r\nauthorization: {}\r\ncontent-length: {}\r\n\r\n",
        auth(),
        body.len()
    )
    .into_bytes();
        all.extend_from_slice(&body);
        all.extend_from_slice(big_get(pad).as_bytes());
        let w = tokio::spawn(async move {
            let _ = c.write_all(&all).await;
            c
        });
        let mut c = w.await.unwrap();
        let mut carry = Vec::new();
        let r1 = read_response(&mut c, &mut carry, Duration::from_secs(5)).await;
        let r2 = read_response(&mut c, &mut carry, Duration::from_secs(5)).await;
        eprintln!(
            "(b) pad {pad}: {:?} / {:?}",
            r1.as_deref().map(|s| &s[..s.len().min(20)]),
            r2.as_deref().map(|s| &s[..s.len().min(20)])
        );
    }
    let sizes: Vec<usize> = up
        .requests()
        .iter()
        .filter_map(|r| r.headers.get("x-big").map(|v| v.len()))
        .collect();
    eprintln!("upstream saw x-big sizes {sizes:?} (limit 8192)");
    assert!(
        sizes.is_empty(),
        "heads over the limit reached the upstream: {sizes:?}"
    );
    g.shutdown().await;
}

/// A raw upstream: POST is answered 413 at once (keep-alive), then its body is read; other
/// requests get 200 "ok".
async fn early_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let c2 = conns.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            c2.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let p = loop {
                        if let Some(p) = find(&buf, b"\r\n\r\n") {
                            break p;
                        }
                        let mut b = [0u8; 65536];
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&b[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..p + 4]).to_string();
                    buf.drain(..p + 4);
                    let len = content_length(&head).unwrap_or(0);
                    let resp: &[u8] = if head.starts_with("POST") {
                        b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n"
                    } else {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                    };
                    if s.write_all(resp).await.is_err() {
                        return;
                    }
                    let mut left = len;
                    let take = left.min(buf.len());
                    buf.drain(..take);
                    left -= take;
                    while left > 0 {
                        let mut b = [0u8; 65536];
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                let t = n.min(left);
                                left -= t;
                                buf.extend_from_slice(&b[t..n]);
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, conns)
}

/// The upstream answers a push early; the client keeps sending its body after the answer.
/// (1) the guard counts the body as the next head and injects a 431 after the response;
/// (2) the pool hands the still-busy upstream connection to the next request, which waits for
///     the previous body (here: until its own deadline).
#[tokio::test]
async fn an_early_upstream_answer() {
    let (addr, conns) = early_upstream().await;
    let s = Setup::new(
        &gateway_yaml(
            &backend(
                "metrics",
                "mimir",
                &format!("http://{addr}"),
                "    timeout: 3s\n    write_timeout: 30s\n",
            ),
            "limits:\n  max_header_bytes: 8192\n  body_read_timeout: 20s\n",
        ),
        &policies(),
    );
    let g = s.start().await;
    let gw = g.shared_addr();
    let mut c = TcpStream::connect(gw).await.unwrap();
    let total = 1usize << 20;
    c.write_all(
        format!(
            "POST /api/v1/push HTTP/1.1\r\nhost: x\r\nauthorization: {}\r\ncontent-length: {total}\r\n\r\n",
            auth()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    c.write_all(&vec![b'x'; 1000]).await.unwrap();
    let mut carry = Vec::new();
    let r1 = read_response(&mut c, &mut carry, Duration::from_secs(5)).await;
    eprintln!(
        "push answered: {:?}",
        r1.as_deref().map(|s| &s[..s.len().min(40)])
    );
    // (2) a query from someone else, while the push body is still open
    let t0 = Instant::now();
    let r = send(
        &client(),
        get(gw, "/prometheus/api/v1/query?query=up", Some(&auth())),
    )
    .await;
    let waited = t0.elapsed();
    eprintln!(
        "query: {} after {waited:?} (upstream connections: {})",
        r.status,
        conns.load(Ordering::SeqCst)
    );
    // (1) the rest of the push body (100 KiB more)
    let _ = c.write_all(&vec![b'x'; 100 << 10]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut rest)).await;
    carry.extend_from_slice(&rest);
    let stray = String::from_utf8_lossy(&carry).to_string();
    eprintln!(
        "after the push's answer the client got: {:?}",
        &stray[..stray.len().min(60)]
    );
    assert!(
        r.status == 200 && waited < Duration::from_secs(1),
        "query waited {waited:?}: {}",
        r.status
    );
    assert!(
        stray.is_empty(),
        "stray bytes after the response: {stray:?}"
    );
    g.shutdown().await;
}
