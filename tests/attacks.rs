//! Hostile requests over real sockets: path tricks cannot reach a route the table does not
//! grant, ambiguous framing is refused or re-framed, tenant IDs cannot inject headers, and no
//! token or secret shows up in logs, error bodies or metrics.

mod common;

use base64::Engine;
use common::*;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes on a fresh connection; returns the status code and everything read.
async fn raw(gw: SocketAddr, req: &str) -> (u16, String) {
    let mut c = TcpStream::connect(gw).await.unwrap();
    c.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), c.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

#[tokio::test]
async fn path_tricks_never_reach_a_route_the_table_does_not_grant() {
    let up = Upstream::start().await;
    let s = Setup::new(
        &gateway_yaml(&backend("metrics", "mimir", &up.url(), ""), ""),
        &policies(),
    );
    let g = s.start().await;
    let gw = g.shared_addr();
    let auth = basic("team-a", &tok("rw"));
    for path in [
        "/prometheus/api/v1/../../admin/api/v3/tenants",
        "/prometheus/api/v1/query/../../../api/v1/push",
        "/prometheus/api/v1/%2e%2e/%2e%2e/admin",
        "/prometheus/api/v1/%2E%2E/query",
        "/prometheus/api/v1/query%2f..%2f..%2fadmin",
        "/prometheus/api/v1/query%2F",
        "/prometheus/api/v1/label/..%2f..%2fadmin/values",
        "/prometheus/api/v1/label/%2e%2e/values",
        "//prometheus/api/v1/query",
        "/prometheus//api/v1/query",
        "/./prometheus/api/v1/query",
        "/prometheus/api/v1/query/",
        "/prometheus/api/v1/query/.",
        "/PROMETHEUS/api/v1/query",
        "/prometheus/api/v1/Query",
        "/prometheus/api/v1/query%00",
        "/prometheus/api/v1/query%5c..%5cadmin",
        "/prometheus/api/v1/query\\..\\admin",
        "/api/v1/push;/../../admin",
        "/api/v1/push%3b",
    ] {
        let (code, text) = raw(
            gw,
            &format!("GET {path}?query=up HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\nconnection: close\r\n\r\n"),
        )
        .await;
        assert!(code == 404 || code == 400, "{path}: {text}");
    }
    assert!(up.requests().is_empty(), "nothing was forwarded");
    // the canonical path works, and is forwarded as it is
    let (code, _) = raw(
        gw,
        &format!("GET /prometheus/api/v1/query?query=up HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\nconnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(up.last().uri.path(), "/prometheus/api/v1/query");
    g.shutdown().await;
}

#[tokio::test]
async fn ambiguous_framing_is_refused_and_content_length_never_travels_with_chunked() {
    let up = Upstream::start().await;
    let s = Setup::new(
        &gateway_yaml(&backend("metrics", "mimir", &up.url(), ""), ""),
        &policies(),
    );
    let g = s.start().await;
    let gw = g.shared_addr();
    let h = format!(
        "host: x\r\nauthorization: {}\r\nconnection: close\r\n",
        basic("team-a", &tok("rw"))
    );
    for (what, req) in [
        (
            "two lengths",
            format!(
                "POST /api/v1/push HTTP/1.1\r\n{h}content-length: 5\r\ncontent-length: 6\r\n\r\nhello!"
            ),
        ),
        (
            "a list of lengths",
            format!("POST /api/v1/push HTTP/1.1\r\n{h}content-length: 5, 5\r\n\r\nhello"),
        ),
        (
            "a signed length",
            format!("POST /api/v1/push HTTP/1.1\r\n{h}content-length: +5\r\n\r\nhello"),
        ),
        (
            "gzip only",
            format!("POST /api/v1/push HTTP/1.1\r\n{h}transfer-encoding: gzip\r\n\r\nhello"),
        ),
        (
            "chunked then identity",
            format!(
                "POST /api/v1/push HTTP/1.1\r\n{h}transfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "chunked twice",
            format!(
                "POST /api/v1/push HTTP/1.1\r\n{h}transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "chunked in HTTP/1.0",
            format!("POST /api/v1/push HTTP/1.0\r\n{h}transfer-encoding: chunked\r\n\r\n0\r\n\r\n"),
        ),
    ] {
        let (code, text) = raw(gw, &req).await;
        assert_eq!(code, 400, "{what}: {text}");
    }
    assert!(up.requests().is_empty());
    // Content-Length with Transfer-Encoding: hyper frames by chunked (RFC 9112 6.3) and drops
    // the length; the upstream gets one chunked body and no Content-Length, so the two cannot
    // disagree downstream
    // (no "connection: close" from the client here: the gateway closes by itself, as RFC 9112
    // requires after such a request, so nothing smuggled after it is read as a request)
    let keep = format!(
        "host: x\r\nauthorization: {}\r\n",
        basic("team-a", &tok("rw"))
    );
    let (code, text) = raw(
        gw,
        &format!("POST /api/v1/push HTTP/1.1\r\n{keep}content-length: 40\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nhost: x\r\n\r\n"),
    )
    .await;
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert_eq!(
        text.matches("HTTP/1.1 ").count(),
        1,
        "one response only: {text}"
    );
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_len, 5);
    assert!(
        !seen[0].headers.contains_key("content-length") || seen[0].headers["content-length"] == "5"
    );
    g.shutdown().await;
}

#[tokio::test]
async fn tenant_ids_cannot_inject_headers_or_reach_other_tenants() {
    let up = Upstream::start().await;
    let s = Setup::new(
        &gateway_yaml(&backend("metrics", "mimir", &up.url(), ""), ""),
        &policies(),
    );
    let g = s.start().await;
    let gw = g.shared_addr();
    let q = "/prometheus/api/v1/query?query=up";
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    for user in [
        "team-a\r\nx-evil: 1",
        "team-a\nx-evil: 1",
        "team-a\0",
        "team-a,team-b",
        "team-a|team-b",
        "team-a x-evil",
        "..",
        &"a".repeat(151),
    ] {
        let header = format!("Basic {}", b64(&format!("{user}:{}", tok("rw"))));
        let r = send(&client(), get(gw, q, Some(&header))).await;
        assert!(r.status == 401 || r.status == 403, "{user:?}: {}", r.status);
    }
    // X-Scope-OrgID from the client: the same rules; a comma list is not a tenant list
    for org in ["team-a, team-b", "team-a;x-evil=1", "team-b"] {
        let r = send(
            &client(),
            http::Request::builder()
                .uri(format!("http://{gw}{q}"))
                .header("authorization", format!("Bearer {}", tok("rw")))
                .header("x-scope-orgid", org)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await;
        assert!(r.status == 401 || r.status == 403, "{org:?}: {}", r.status);
    }
    assert!(up.requests().is_empty());
    // the credentials' tenant wins over a client's X-Scope-OrgID, which is replaced
    let r = send(
        &client(),
        http::Request::builder()
            .uri(format!("http://{gw}{q}"))
            .header("authorization", basic("team-a", &tok("rw")))
            .header("x-scope-orgid", "team-b")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    let orgs: Vec<_> = seen.headers.get_all("x-scope-orgid").iter().collect();
    assert_eq!(orgs, ["team-a"]);
    assert!(!seen.headers.contains_key("x-evil"));
    g.shutdown().await;
}

/// Secrets of a token: the whole text and, for glc_, the `k` field of its payload.
fn secrets_of(token: &str) -> Vec<String> {
    let mut out = vec![token.to_string()];
    if let Some(p) = token.strip_prefix("glc_")
        && let Ok(json) = base64::engine::general_purpose::STANDARD.decode(p)
        && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&json)
        && let Some(k) = v["k"].as_str()
    {
        out.push(k.to_string());
    }
    if let Some(rest) = token.strip_prefix("glsa_") {
        out.push(rest.split('_').next().unwrap_or("").to_string());
    }
    out
}

#[tokio::test]
async fn no_token_or_secret_appears_in_logs_error_bodies_or_metrics() {
    let up = Upstream::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin_policy = format!("  - name: admin\n    scopes: [admin]\n{}", "");
    let policies = policies()
        .replace(
            "access_policies:\n",
            &format!("access_policies:\n{admin_policy}"),
        )
        .replace(
            "tokens:\n",
            &format!(
                "tokens:\n  - {{name: admin, access_policy: admin, hash: \"{}\"}}\n",
                hash(&tok("admin"))
            ),
        );
    let yaml = gateway_yaml(&backend("metrics", "mimir", &up.url(), ""), "")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let s = Setup::new(&yaml, &policies);
    let log_path = s.path("obsgate.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_obsgate"))
        .args(["serve", "--config"])
        .arg(s.path("gateway.yaml"))
        // the most talkative level: what debug logs must not leak either
        .env("OBSGATE_LOG", "debug")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let gw: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let up_ok = eventually(Duration::from_secs(10), || async {
        TcpStream::connect(gw).await.is_ok()
    })
    .await;
    assert!(up_ok.is_some(), "gateway did not start");

    let q = "/prometheus/api/v1/query?query=up";
    let valid = tok("rw");
    let unknown = tok("nobody-knows-this-one");
    let malformed = "glc_SECRETmalformed!!value".to_string();
    let glsa = "glsa_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA_00000000".to_string();
    let mut secrets = Vec::new();
    for t in [&valid, &unknown, &malformed, &glsa, &tok("admin")] {
        secrets.extend(secrets_of(t));
    }
    let mut bodies = Vec::new();
    for (auth, expect) in [
        (format!("Bearer {valid}"), 200),
        (basic("team-a", &valid), 200),
        (format!("Bearer team-a:{valid}"), 200),
        (basic("team-b", &valid), 403),
        (basic("team-a", &unknown), 401),
        (format!("Bearer {malformed}"), 401),
        (format!("Bearer {glsa}"), 401),
        (
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("team-a:{malformed}"))
            ),
            401,
        ),
    ] {
        secrets.push(auth.clone());
        let r = send(&client(), get(gw, q, Some(&auth))).await;
        assert_eq!(r.status, expect, "{}", r.error());
        bodies.push(String::from_utf8_lossy(&r.body).to_string());
        for (_, v) in r.headers.iter() {
            bodies.push(String::from_utf8_lossy(v.as_bytes()).to_string());
        }
    }
    // an admin call that mints a token: the text goes to the caller once, nowhere else
    let r = send(
        &client(),
        post(
            gw,
            "/admin/api/v3/tokens",
            Some(&basic("", &tok("admin"))),
            serde_json::json!({"name": "minted", "access_policy": "pol-ro"}).to_string(),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.error());
    let minted = r.json()["token"].as_str().unwrap().to_string();
    secrets.extend(secrets_of(&minted));
    let r = send(&client(), get(gw, q, Some(&basic("team-a", &minted)))).await;
    assert_eq!(r.status, 200);
    let metrics = send(&client(), get(gw, "/metrics", None)).await;
    bodies.push(String::from_utf8_lossy(&metrics.body).to_string());

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logs.contains("request denied"),
        "the audit lines are there:\n{logs}"
    );
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret is in the logs: {secret}"
        );
        for b in &bodies {
            assert!(
                !b.contains(secret.as_str()),
                "a secret is in a response: {secret}"
            );
        }
    }
    // nor does the admin store keep the minted token's text
    let state = files_text(&s.path("data/admin-log"));
    assert!(
        state.contains("sha256:"),
        "the admin store holds the change"
    );
    for secret in secrets_of(&minted) {
        assert!(!state.contains(&secret));
    }
}
