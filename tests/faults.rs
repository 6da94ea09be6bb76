//! Fault injection over real sockets. Each test's name says what must hold: a backend that
//! dies mid-body, answers garbage, resets or hangs; a policy file truncated mid-write; a
//! data_dir that is full, read-only or gone; SIGTERM under load; thousands of idle connections.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const Q: &str = "/prometheus/api/v1/query?query=up";

fn auth() -> String {
    basic("team-a", &tok("rw"))
}

/// A fake backend: each accepted connection reads a request head and gets `behave(n)`, where
/// `n` counts connections from 0.
async fn fake_backend<F, Fut>(behave: F) -> SocketAddr
where
    F: Fn(usize, TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut s, _)) = l.accept().await {
            // read the head
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                }
            }
            tokio::spawn(behave(n, s));
            n += 1;
        }
    });
    addr
}

fn setup_for(url: &str, more: &str) -> Setup {
    Setup::new(
        &gateway_yaml(&backend("metrics", "mimir", url, more), ""),
        &policies(),
    )
}

#[tokio::test]
async fn a_backend_that_dies_mid_body_truncates_that_response_only() {
    let addr = fake_backend(|n, mut s| async move {
        if n == 0 {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n")
                .await;
            let _ = s.write_all(&[b'x'; 1000]).await;
            // and dies
        } else {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
        }
    })
    .await;
    let s = setup_for(&format!("http://{addr}"), "");
    let g = s.start().await;
    let gw = g.shared_addr();
    let c = client();
    let resp = c.request(get(gw, Q, Some(&auth()))).await.unwrap();
    assert_eq!(resp.status(), 200, "the head had arrived");
    let body = resp.into_body().collect().await;
    assert!(
        body.is_err(),
        "the client sees the truncation, not a short 'complete' body"
    );
    // the gateway carries on
    let r = send(&client(), get(gw, Q, Some(&auth()))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, Bytes::from_static(b"ok"));
    g.shutdown().await;
}

#[tokio::test]
async fn a_backend_answering_garbage_or_resetting_is_502() {
    let garbage = fake_backend(|_, mut s| async move {
        let _ = s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n").await;
    })
    .await;
    let reset = fake_backend(|_, s| async move {
        // RST instead of FIN. (Deprecated because a non-zero linger blocks on drop; zero
        // does not.)
        #[allow(deprecated)]
        let _ = s.set_linger(Some(Duration::ZERO));
        drop(s);
    })
    .await;
    for (what, addr) in [("garbage", garbage), ("reset", reset)] {
        let s = setup_for(&format!("http://{addr}"), "");
        let g = s.start().await;
        let gw = g.shared_addr();
        let r = send(&client(), get(gw, Q, Some(&auth()))).await;
        assert_eq!(r.status, 502, "{what}: {}", r.error());
        assert_eq!(r.json()["errorType"], "unavailable");
        g.shutdown().await;
    }
}

#[tokio::test]
async fn a_backend_that_hangs_is_504_after_the_route_class_timeout() {
    let hang = fake_backend(|_, s| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(s);
    })
    .await;
    let s = setup_for(
        &format!("http://{hang}"),
        "    timeout: 1s\n    write_timeout: 1s\n",
    );
    let g = s.start().await;
    let gw = g.shared_addr();
    for req in [
        get(gw, Q, Some(&auth())),
        post(gw, "/api/v1/push", Some(&auth()), b"x".to_vec()),
    ] {
        let t0 = Instant::now();
        let r = send(&client(), req).await;
        assert_eq!(r.status, 504, "{}", r.error());
        assert!(t0.elapsed() < Duration::from_secs(3));
    }
    g.shutdown().await;
}

#[tokio::test]
async fn a_policy_file_truncated_mid_write_keeps_the_last_good_set() {
    let up = Upstream::start().await;
    let s = setup_for(&up.url(), "");
    let g = s.start().await;
    let gw = g.shared_addr();
    let text = policies();
    // cut inside the token list: "tokens:\n  - {name: rw, access_po"
    let cut = text.find("{name: rw,").unwrap() + 15;
    std::fs::write(s.path("policies.yaml"), &text[..cut]).unwrap();
    let failed = eventually(Duration::from_secs(2), || async {
        g.gateway
            .metrics
            .store_reloads
            .with_label_values(&["failure"])
            .get()
            >= 1
    })
    .await;
    assert!(failed.is_some(), "the truncated file is refused");
    let r = send(&client(), get(gw, Q, Some(&auth()))).await;
    assert_eq!(r.status, 200, "the last good set is in force");
    g.shutdown().await;
}

fn with_admin(p: &str) -> String {
    p.replace(
        "access_policies:\n",
        "access_policies:\n  - name: admin\n    scopes: [admin]\n",
    )
    .replace(
        "tokens:\n",
        &format!(
            "tokens:\n  - {{name: admin, access_policy: admin, hash: \"{}\"}}\n",
            hash(&tok("admin"))
        ),
    )
}

async fn create_tenant(gw: SocketAddr, name: &str) -> Reply {
    send(
        &client(),
        post(
            gw,
            "/admin/api/v3/tenants",
            Some(&basic("", &tok("admin"))),
            serde_json::json!({"name": name}).to_string(),
        ),
    )
    .await
}

#[tokio::test]
async fn a_full_read_only_or_missing_data_dir_fails_admin_writes_cleanly_and_the_data_plane_carries_on()
 {
    let up = Upstream::start().await;
    let s = Setup::new(
        &gateway_yaml(&backend("metrics", "mimir", &up.url(), ""), ""),
        &with_admin(&policies()),
    );
    let g = s.start().await;
    let gw = g.shared_addr();
    let data = s.path("data");
    assert_eq!(create_tenant(gw, "before").await.status, 200);
    let log = data.join("admin-log/log");
    let state = files_text(&log);

    for (what, kind) in [
        ("full", std::io::ErrorKind::StorageFull),
        ("read-only", std::io::ErrorKind::ReadOnlyFilesystem),
    ] {
        obsgate::admin_store::inject_write_fault(&data, Some(kind));
        let r = create_tenant(gw, "during").await;
        assert_eq!(r.status, 503, "{what}: {}", r.error());
        assert!(r.error().contains("nothing was changed"), "{}", r.error());
        assert!(
            !r.error().contains(&*data.to_string_lossy()),
            "no path in the answer"
        );
        obsgate::admin_store::inject_write_fault(&data, None);
        // nothing changed: not listed, the store on disk untouched, no temp file left
        let r = send(
            &client(),
            get(
                gw,
                "/admin/api/v3/tenants/during",
                Some(&basic("", &tok("admin"))),
            ),
        )
        .await;
        assert_eq!(r.status, 404, "{what}");
        assert_eq!(files_text(&log), state);
        let leftovers: Vec<_> = std::fs::read_dir(&log)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{what}: {leftovers:?}");
        // the data plane carries on
        let r = send(&client(), get(gw, Q, Some(&auth()))).await;
        assert_eq!(r.status, 200, "{what}");
    }
    // the directory gone, a file in its place: the same
    std::fs::rename(&data, s.path("data.moved")).unwrap();
    std::fs::write(&data, "not a directory").unwrap();
    let r = create_tenant(gw, "during").await;
    assert_eq!(r.status, 503, "{}", r.error());
    let r = send(&client(), get(gw, Q, Some(&auth()))).await;
    assert_eq!(r.status, 200);
    // and once the disk is back, writes work again
    std::fs::remove_file(&data).unwrap();
    std::fs::rename(s.path("data.moved"), &data).unwrap();
    assert_eq!(create_tenant(gw, "after").await.status, 200);
    g.shutdown().await;
}

#[tokio::test]
async fn sigterm_under_load_lets_every_in_flight_request_finish() {
    let up = Upstream::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = gateway_yaml(&backend("metrics", "mimir", &up.url(), ""), "")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let s = Setup::new(&yaml, &policies());
    let mut child = Command::new(env!("CARGO_BIN_EXE_obsgate"))
        .args(["serve", "--config"])
        .arg(s.path("gateway.yaml"))
        .env("OBSGATE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let gw: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            TcpStream::connect(gw).await.is_ok()
        })
        .await
        .is_some()
    );
    // 20 requests that each take 3 s upstream, plus quick ones
    let mut slow = Vec::new();
    for _ in 0..20 {
        slow.push(tokio::spawn(async move {
            send(&client(), get(gw, &format!("{Q}&slow=1"), Some(&auth())))
                .await
                .status
        }));
    }
    assert!(
        eventually(Duration::from_secs(3), || async {
            up.requests().len() >= 20
        })
        .await
        .is_some()
    );
    let t0 = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    for h in slow {
        assert_eq!(h.await.unwrap(), 200, "an in-flight request was cut");
    }
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(t0.elapsed() >= Duration::from_secs(1), "it waited for them");
    assert!(
        TcpStream::connect(gw).await.is_err(),
        "and then stopped listening"
    );
}

#[tokio::test]
async fn thousands_of_idle_connections_do_not_stop_service() {
    let up = Upstream::start().await;
    let s = setup_for(&up.url(), "");
    let g = s.start().await;
    let gw = g.shared_addr();
    // 3000, or fewer if the open-file limit is low (each costs two descriptors here: both
    // ends live in this process)
    let soft_limit: usize = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(1024);
    let n = 3000.min(soft_limit.saturating_sub(200) / 2);
    let mut idle = Vec::new();
    for _ in 0..n {
        idle.push(TcpStream::connect(gw).await.unwrap());
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            g.gateway.metrics.connections.get() >= n as i64
        })
        .await
        .is_some(),
        "{}",
        g.gateway.metrics.connections.get()
    );
    let t0 = Instant::now();
    let r = send(&client(), get(gw, Q, Some(&auth()))).await;
    assert_eq!(r.status, 200);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    drop(idle);
    let closed = eventually(Duration::from_secs(5), || async {
        g.gateway.metrics.connections.get() < 10
    })
    .await;
    assert!(closed.is_some(), "{}", g.gateway.metrics.connections.get());
    g.shutdown().await;
}

/// `server.shutdown_delay`: after the signal, `/ready` says 503 while requests (on new
/// connections too) are still served; only then does obsgate stop accepting.
#[tokio::test]
async fn shutdown_delay_drains_with_ready_503_while_still_serving() {
    let up = Upstream::start().await;
    let yaml = gateway_yaml(&backend("metrics", "mimir", &up.url(), ""), "").replace(
        "  shutdown_grace: 10s\n",
        "  shutdown_grace: 10s\n  shutdown_delay: 1500ms\n",
    );
    let setup = Setup::new(&yaml, &policies());
    let gw = setup.start().await;
    let addr = gw.shared_addr();
    assert_eq!(send(&client(), get(addr, "/ready", None)).await.status, 200);
    let t0 = Instant::now();
    let stopping = tokio::spawn(gw.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // a fresh client: a new connection is still accepted during the delay
    assert_eq!(send(&client(), get(addr, "/ready", None)).await.status, 503);
    assert_eq!(send(&client(), get(addr, "/live", None)).await.status, 200);
    let r = send(
        &client(),
        get(
            addr,
            "/prometheus/api/v1/query?query=up",
            Some(&basic("team-a", &tok("rw"))),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "requests are served while draining");
    stopping.await.unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "waited the delay"
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "then stopped accepting"
    );
}
