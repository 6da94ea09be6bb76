//! The gateway over real sockets, against an in-process recording upstream.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn gateway_with(
    up: &Upstream,
    extra_backends: &str,
    extra: &str,
) -> (Setup, obsgate::proxy::server::Running) {
    let backends = format!(
        "{}{}",
        backend("metrics", "mimir", &up.url(), ""),
        extra_backends
    );
    let s = Setup::new(&gateway_yaml(&backends, extra), &policies());
    let r = s.start().await;
    (s, r)
}

fn assert_json_error(r: &Reply, status: StatusCode, error_type: &str) {
    assert_eq!(r.status, status, "body: {:?}", r.body);
    let j = r.json();
    assert_eq!(j["status"], "error", "{j}");
    assert_eq!(j["errorType"], error_type, "{j}");
    assert!(j["error"].as_str().is_some_and(|m| !m.is_empty()), "{j}");
    assert_eq!(r.headers.get("content-type").unwrap(), "application/json");
    if status == StatusCode::UNAUTHORIZED {
        assert_eq!(
            r.headers.get("www-authenticate").unwrap(),
            "Basic realm=\"obsgate\""
        );
    } else {
        assert!(r.headers.get("www-authenticate").is_none());
    }
}

// ---------- SPEC 5.3, row by row ----------

#[tokio::test]
async fn row1_unknown_route_is_404_and_never_forwarded() {
    let up = Upstream::start().await;
    let (_s, gw) = gateway_with(&up, "", "").await;
    let c = client();
    let a = basic("team-a", &tok("rw"));
    for path in [
        "/admin",
        "/api/v1/query",
        "/prometheus/api/v1/query/../../admin",
        "/loki/api/v1/query",
        "/api/v1/push/",
    ] {
        let r = send(&c, get(gw.shared_addr(), path, Some(&a))).await;
        assert_json_error(&r, StatusCode::NOT_FOUND, "not_found");
    }
    // a known path with a method outside the table
    let r = send(&c, get(gw.shared_addr(), "/api/v1/push", Some(&a))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(up.requests().is_empty(), "nothing reached the backend");
    gw.shutdown().await;
}

#[tokio::test]
async fn row2_missing_or_malformed_credentials_are_401() {
    let up = Upstream::start().await;
    let (_s, gw) = gateway_with(&up, "", "").await;
    let c = client();
    let addr = gw.shared_addr();
    let q = "/prometheus/api/v1/query?query=up";
    assert_json_error(
        &send(&c, get(addr, q, None)).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    for bad in [
        "Bearer".to_string(),
        "Digest abc".to_string(),
        "Basic %%%".to_string(),
        "Bearer glc_notbase64!".to_string(),
        "Bearer glsa_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa_00000000".to_string(),
        "Bearer sometoken".to_string(),
        basic("team-a", "glc_e30="), // {} has no k
    ] {
        let r = send(&c, get(addr, q, Some(&bad))).await;
        assert_json_error(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    assert!(up.requests().is_empty());
    gw.shutdown().await;
}

#[tokio::test]
async fn row3_unknown_revoked_expired_and_inactive_policy_tokens_are_401_alike() {
    let up = Upstream::start().await;
    let (_s, gw) = gateway_with(&up, "", "").await;
    let c = client();
    let addr = gw.shared_addr();
    let q = "/prometheus/api/v1/query?query=up";
    let mut messages = Vec::new();
    for t in [
        tok("unknown"),
        tok("revoked"),
        tok("expired"),
        tok("policy-off"),
    ] {
        let r = send(&c, get(addr, q, Some(&basic("team-a", &t)))).await;
        assert_json_error(&r, StatusCode::UNAUTHORIZED, "unauthorized");
        messages.push(r.body.clone());
    }
    assert!(
        messages.windows(2).all(|w| w[0] == w[1]),
        "a 401 never says whether a token exists"
    );
    assert!(up.requests().is_empty());
    gw.shutdown().await;
}

#[tokio::test]
async fn row4_client_outside_allowed_subnets_is_403_from_127_0_0_2() {
    let up = Upstream::start().await;
    let (_s, gw) = gateway_with(&up, "", "").await;
    let addr = gw.shared_addr();
    let q = "/prometheus/api/v1/query?query=up";
    let a = basic("team-a", &tok("local-only"));
    let r = send(&client(), get(addr, q, Some(&a))).await;
    assert_eq!(r.status, StatusCode::OK, "127.0.0.1 is allowed");
    let other = client_from("127.0.0.2".parse().unwrap());
    let r = send(&other, get(addr, q, Some(&a))).await;
    assert_json_error(&r, StatusCode::FORBIDDEN, "forbidden");
    assert!(r.error().contains("127.0.0.2"), "{}", r.error());
    assert_eq!(up.requests().len(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn row5_unresolvable_unknown_inactive_tenants_are_401() {
    let up = Upstream::start().await;
    let (_s, gw) = gateway_with(&up, "", "").await;
    let c = client();
    let addr = gw.shared_addr();
    let q = "/prometheus/api/v1/query?query=up";
    // "all" has a wildcard realm: no default tenant
    let r = send(&c, get(addr, q, Some(&format!("Bearer {}", tok("all"))))).await;
    assert_json_error(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(r.error().contains("X-Scope-OrgID"));
    for t in ["nobody", "team-off", "team-a|nobody", "bad tenant", ".."] {
        let r = send(&c, get(addr, q, Some(&basic(t, &tok("all"))))).await;
        assert_json_error(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    assert!(up.requests().is_empty());
    gw.shutdown().await;
}

#[tokio::test]
async fn row6_tenant_outside_realms_is_403() {
    let up = Upstream::start().await;
    let (_s, gw) = gateway_with(&up, "", "").await;
    let c = client();
    let r = send(
        &c,
        get(
            gw.shared_addr(),
            "/prometheus/api/v1/query?query=up",
            Some(&basic("team-b", &tok("rw"))),
        ),
    )
    .await;
    assert_json_error(&r, StatusCode::FORBIDDEN, "forbidden");
    assert!(r.error().contains("team-b"));
    let r = send(
        &c,
        get(
            gw.shared_addr(),
            "/prometheus/api/v1/query?query=up",
            Some(&basic("team-a|team-b", &tok("rw"))),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(up.requests().is_empty());
    gw.shutdown().await;
}

#[tokio::test]
async fn row7_missing_scope_is_403_naming_it() {
    let up = Upstream::start().await;
    let (_s, gw) = gateway_with(&up, "", "").await;
    let r = send(
        &client(),
        post(
            gw.shared_addr(),
            "/api/v1/push",
            Some(&basic("team-a", &tok("ro"))),
            "x",
        ),
    )
    .await;
    assert_json_error(&r, StatusCode::FORBIDDEN, "forbidden");
    assert!(r.error().contains("metrics:write"), "{}", r.error());
    assert!(up.requests().is_empty());
    gw.shutdown().await;
}

#[tokio::test]
async fn row8_label_policies_header_mode_sets_header_and_rewrite_mode_rewrites_or_400s() {
    let up = Upstream::start().await;
    let (_s, gw) = gateway_with(&up, "", "").await;
    let mut req = get(
        gw.shared_addr(),
        "/prometheus/api/v1/query?query=up",
        Some(&basic("team-a", &tok("lbac"))),
    );
    req.headers_mut()
        .insert("x-prom-label-policy", "team-a:%7B%7D".parse().unwrap());
    let r = send(&client(), req).await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = up.last();
    let vals: Vec<_> = seen.headers.get_all("x-prom-label-policy").iter().collect();
    assert_eq!(
        vals,
        vec!["team-a:%7Benv=%22prod%22%2C%20team=~%22a%7Cb%22%7D"]
    );
    // writes are not label-restricted
    let lbac_write = send(
        &client(),
        post(
            gw.shared_addr(),
            "/api/v1/push",
            Some(&basic("team-a", &tok("rw"))),
            "x",
        ),
    )
    .await;
    assert_eq!(lbac_write.status, StatusCode::OK);
    assert!(up.last().headers.get("x-prom-label-policy").is_none());
    gw.shutdown().await;

    let up = Upstream::start().await;
    let (_s, gw) = gateway_with(&up, "", "lbac:\n  mode: rewrite\n").await;
    let r = send(
        &client(),
        get(
            gw.shared_addr(),
            "/prometheus/api/v1/query?query=up",
            Some(&basic("team-a", &tok("lbac"))),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = up.last();
    assert!(seen.headers.get("x-prom-label-policy").is_none());
    assert_eq!(
        seen.uri.query(),
        Some("query=up%7Benv%3D%22prod%22%2Cteam%3D%7E%22a%7Cb%22%7D"),
        "rewrite mode adds the policy to the query"
    );
    // an unparsable query is a 400 in rewrite mode
    let r = send(
        &client(),
        get(
            gw.shared_addr(),
            "/prometheus/api/v1/query?query=sum(",
            Some(&basic("team-a", &tok("lbac"))),
        ),
    )
    .await;
    assert_json_error(&r, StatusCode::BAD_REQUEST, "bad_data");
    assert_eq!(up.requests().len(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn label_policies_with_plain_prometheus_in_header_mode_fail_closed() {
    let up = Upstream::start().await;
    let s = Setup::new(
        &gateway_yaml(&backend("metrics", "prometheus", &up.url(), ""), ""),
        &policies(),
    );
    let gw = s.start().await;
    let r = send(
        &client(),
        get(
            gw.shared_addr(),
            "/prometheus/api/v1/query?query=up",
            Some(&basic("team-a", &tok("lbac"))),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(up.requests().is_empty());
    gw.shutdown().await;
}

#[tokio::test]
async fn row9_dead_backend_is_502_and_slow_backend_is_504() {
    // a port with nothing listening
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let up = Upstream::start().await;
    let logs = backend("logs", "loki", &up.url(), "    timeout: 500ms\n");
    let backends = format!(
        "{}{}",
        backend("metrics", "mimir", &format!("http://{dead}"), ""),
        logs
    );
    let s = Setup::new(&gateway_yaml(&backends, ""), &policies());
    let gw = s.start().await;
    let c = client();
    let r = send(
        &c,
        post(
            gw.shared_addr(),
            "/api/v1/push",
            Some(&basic("team-a", &tok("rw"))),
            "x",
        ),
    )
    .await;
    assert_json_error(&r, StatusCode::BAD_GATEWAY, "unavailable");
    let t0 = std::time::Instant::now();
    let r = send(
        &c,
        get(
            gw.shared_addr(),
            "/loki/api/v1/query?query=x&slow=1",
            Some(&basic("team-a", &tok("rw"))),
        ),
    )
    .await;
    assert_json_error(&r, StatusCode::GATEWAY_TIMEOUT, "timeout");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "the backend's timeout applies, not the upstream's 3 s"
    );
    gw.shutdown().await;
}

// ---------- forwarding ----------

#[tokio::test]
async fn forwarding_sets_tenant_strips_credentials_and_hop_by_hop_and_appends_xff() {
    let up = Upstream::start().await;
    let (_s, gw) = gateway_with(&up, "", "").await;
    let req = Request::post(format!(
        "http://{}/api/prom/push?a=1&b=%20x",
        gw.shared_addr()
    ))
    .header("authorization", format!("Bearer team-a:{}", tok("rw")))
    .header("x-scope-orgid", "team-b")
    .header("x-prom-label-policy", "team-a:%7B%7D")
    .header("connection", "x-hop")
    .header("x-hop", "secret")
    .header("keep-alive", "timeout=1")
    .header("proxy-authorization", "Basic abc")
    .header("x-forwarded-for", "192.0.2.7")
    .header("x-custom", "kept")
    .header("content-type", "application/x-protobuf")
    .body(Full::new(Bytes::from_static(b"payload")))
    .unwrap();
    let r = send(&client(), req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], b"ok");
    assert_eq!(r.headers.get("x-upstream").unwrap(), "yes");
    assert!(
        r.headers.get("x-up-hop").is_none(),
        "response headers named by Connection are removed"
    );
    assert!(r.headers.get("keep-alive").is_none());
    let seen = up.last();
    assert_eq!(seen.method, http::Method::POST);
    assert_eq!(
        seen.uri.path(),
        "/api/v1/push",
        "/api/prom/push is forwarded as /api/v1/push"
    );
    assert_eq!(seen.uri.query(), Some("a=1&b=%20x"));
    let h = &seen.headers;
    assert_eq!(
        h.get("x-scope-orgid").unwrap(),
        "team-a",
        "credentials' tenant wins and the client's header is replaced"
    );
    assert_eq!(h.get_all("x-scope-orgid").iter().count(), 1);
    for gone in [
        "authorization",
        "x-prom-label-policy",
        "x-hop",
        "keep-alive",
        "proxy-authorization",
    ] {
        assert!(h.get(gone).is_none(), "{gone} must not be forwarded");
    }
    assert_eq!(h.get("x-custom").unwrap(), "kept");
    assert_eq!(h.get("content-type").unwrap(), "application/x-protobuf");
    assert_eq!(h.get("x-forwarded-for").unwrap(), "192.0.2.7, 127.0.0.1");
    assert_eq!(seen.body_len, 7);
    gw.shutdown().await;
}

#[tokio::test]
async fn multi_tenant_header_is_normalised() {
    let up = Upstream::start().await;
    let (_s, gw) = gateway_with(&up, "", "").await;
    let mut req = get(
        gw.shared_addr(),
        "/prometheus/api/v1/query?query=up",
        Some(&format!("Bearer {}", tok("all"))),
    );
    req.headers_mut()
        .insert("x-scope-orgid", "team-b|team-a".parse().unwrap());
    let r = send(&client(), req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        up.last().headers.get("x-scope-orgid").unwrap(),
        "team-a|team-b"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn default_tenant_is_used_when_the_realms_name_exactly_one() {
    let up = Upstream::start().await;
    let (_s, gw) = gateway_with(&up, "", "").await;
    let r = send(
        &client(),
        get(
            gw.shared_addr(),
            "/prometheus/api/v1/labels",
            Some(&format!("Bearer {}", tok("ro"))),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(up.last().headers.get("x-scope-orgid").unwrap(), "team-a");
    gw.shutdown().await;
}

#[tokio::test]
async fn multi_mib_bodies_stream_both_ways() {
    let up = Upstream::start().await;
    let (_s, gw) = gateway_with(&up, "", "").await;
    let body: Vec<u8> = (0..(8 << 20)).map(|i| (i % 251) as u8).collect();
    let want: [u8; 32] = Sha256::digest(&body).into();
    let r = send(
        &client(),
        post(
            gw.shared_addr(),
            "/api/v1/push",
            Some(&basic("team-a", &tok("rw"))),
            body,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = up.last();
    assert_eq!(seen.body_len, 8 << 20);
    assert_eq!(seen.body_sha256, want);
    let r = send(
        &client(),
        get(
            gw.shared_addr(),
            "/prometheus/api/v1/query?big=6",
            Some(&basic("team-a", &tok("rw"))),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), 6 << 20);
    gw.shutdown().await;
}

#[tokio::test]
async fn h2c_requests_are_served() {
    let up = Upstream::start().await;
    let (_s, gw) = gateway_with(&up, "", "").await;
    let r = send(
        &h2c_client(),
        get(
            gw.shared_addr(),
            "/prometheus/api/v1/query?query=up",
            Some(&basic("team-a", &tok("rw"))),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], b"ok");
    let r = send(
        &h2c_client(),
        get(gw.shared_addr(), "/prometheus/api/v1/query?query=up", None),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    gw.shutdown().await;
}

#[tokio::test]
async fn grpc_over_h2c_keeps_trailers() {
    let up = Upstream::start().await;
    let traces = backend("traces", "tempo", &up.url(), "");
    let (_s, gw) = gateway_with(&up, &traces, "").await;
    let req = Request::post(format!(
        "http://{}/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        gw.shared_addr()
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header("authorization", basic("team-a", &tok("rw")))
    .body(Full::new(Bytes::from_static(b"\x00\x00\x00\x00\x00")))
    .unwrap();
    let resp = h2c_client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("trailers reach the client");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(trailers.get("grpc-message").unwrap(), "all-good");
    assert_eq!(&collected.to_bytes()[..], b"\x00\x00\x00\x00\x02hi");
    let seen = up.last();
    assert_eq!(
        seen.version,
        http::Version::HTTP_2,
        "gRPC goes upstream over HTTP/2"
    );
    assert_eq!(seen.headers.get("te").unwrap(), "trailers");
    assert_eq!(seen.headers.get("x-scope-orgid").unwrap(), "team-a");
    gw.shutdown().await;
}

#[tokio::test]
async fn websocket_upgrade_for_loki_tail_carries_bytes_both_ways() {
    let up = Upstream::start().await;
    let logs = backend("logs", "loki", &up.url(), "");
    let (_s, gw) = gateway_with(&up, &logs, "").await;
    let mut s = tokio::net::TcpStream::connect(gw.shared_addr())
        .await
        .unwrap();
    let req = format!(
        "GET /loki/api/v1/tail?query=%7Bapp%3D%22x%22%7D HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: {}\r\n\r\n",
        basic("team-a", &tok("rw"))
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed before the 101");
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    s.write_all(b"frame-bytes").await.unwrap();
    let mut echo = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"frame-bytes");
    let seen = up.last();
    assert_eq!(seen.headers.get("upgrade").unwrap(), "websocket");
    assert_eq!(seen.headers.get("x-scope-orgid").unwrap(), "team-a");
    assert!(seen.headers.get("authorization").is_none());
    gw.shutdown().await;
}

/// A query with the `vpn-only` token (allowed from 10.0.0.0/8 only) carrying `xff`.
fn vpn_query(addr: std::net::SocketAddr, xff: &str) -> Request<Full<Bytes>> {
    let mut req = get(
        addr,
        "/prometheus/api/v1/query?query=up",
        Some(&basic("team-a", &tok("vpn-only"))),
    );
    req.headers_mut()
        .insert("x-forwarded-for", xff.parse().unwrap());
    req
}

#[tokio::test]
async fn trusted_proxy_xff_decides_the_client_ip() {
    let up = Upstream::start().await;
    // without trusted proxies the peer (127.0.0.1) is the client: vpn-only refuses
    let (_s, gw) = gateway_with(&up, "", "").await;
    let r = send(&client(), vpn_query(gw.shared_addr(), "10.1.2.3")).await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "X-Forwarded-For from an untrusted peer is ignored"
    );
    gw.shutdown().await;

    let (_s, gw) = gateway_with(
        &up,
        "",
        "client_ip:\n  trusted_proxies: [\"127.0.0.1/32\"]\n",
    )
    .await;
    let addr = gw.shared_addr();
    let r = send(&client(), vpn_query(addr, "203.0.113.1, 10.1.2.3")).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "right-most untrusted entry is 10.1.2.3"
    );
    let r = send(&client(), vpn_query(addr, "10.1.2.3, 203.0.113.1")).await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "a spoofed left entry does not help"
    );
    // a request from 127.0.0.2 (not trusted) is judged by its own address
    let r = send(
        &client_from("127.0.0.2".parse().unwrap()),
        vpn_query(addr, "10.1.2.3"),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    gw.shutdown().await;
}

#[tokio::test]
async fn dedicated_listener_serves_only_its_backend() {
    let up = Upstream::start().await;
    let logs = backend("logs", "loki", &up.url(), "    listen: \"127.0.0.1:0\"\n");
    let (_s, gw) = gateway_with(&up, &logs, "").await;
    let logs_addr = gw.addr_for(obsgate::config::BackendSlot::Logs).unwrap();
    let a = basic("team-a", &tok("rw"));
    let c = client();
    assert_eq!(
        send(&c, get(logs_addr, "/loki/api/v1/labels", Some(&a)))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        send(
            &c,
            get(logs_addr, "/prometheus/api/v1/query?query=up", Some(&a))
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        send(&c, get(logs_addr, "/ready", None)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(&c, get(gw.shared_addr(), "/loki/api/v1/labels", Some(&a)))
            .await
            .status,
        StatusCode::OK
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn tempo_prefix_is_stripped_and_absent_backends_answer_404() {
    let up = Upstream::start().await;
    let traces = backend("traces", "tempo", &up.url(), "");
    let (_s, gw) = gateway_with(&up, &traces, "").await;
    let a = basic("team-a", &tok("rw"));
    let r = send(
        &client(),
        get(gw.shared_addr(), "/tempo/api/search?tags=x", Some(&a)),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(up.last().uri.path(), "/api/search");
    // profiles is not configured
    let r = send(&client(), post(gw.shared_addr(), "/ingest", Some(&a), "x")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    gw.shutdown().await;
}

#[tokio::test]
async fn own_endpoints_need_no_credentials_and_metrics_count_requests() {
    let up = Upstream::start().await;
    let (_s, gw) = gateway_with(&up, "", "").await;
    let c = client();
    let addr = gw.shared_addr();
    assert_eq!(
        send(&c, get(addr, "/live", None)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(&c, get(addr, "/ready", None)).await.status,
        StatusCode::OK
    );
    let secret = tok("rw");
    send(
        &c,
        get(
            addr,
            "/prometheus/api/v1/query?query=up",
            Some(&basic("team-a", &secret)),
        ),
    )
    .await;
    send(
        &c,
        post(
            addr,
            "/api/v1/push",
            Some(&basic("team-a", &tok("ro"))),
            "x",
        ),
    )
    .await;
    send(
        &c,
        get(
            addr,
            "/prometheus/api/v1/query?query=up",
            Some(&basic("team-a", &tok("unknown"))),
        ),
    )
    .await;
    let m = send(&c, get(addr, "/metrics", None)).await;
    let text = String::from_utf8(m.body.to_vec()).unwrap();
    for want in [
        r#"obsgate_requests_total{backend="metrics",code="200",mode="proxy",route="/prometheus/api/v1/query"} 1"#,
        r#"obsgate_requests_total{backend="metrics",code="403",mode="proxy",route="/api/v1/push"} 1"#,
        r#"obsgate_auth_decisions_total{mode="proxy",reason="missing_scope",result="deny"} 1"#,
        r#"obsgate_auth_decisions_total{mode="proxy",reason="invalid_token",result="deny"} 1"#,
        r#"obsgate_auth_decisions_total{mode="proxy",reason="ok",result="allow"} 1"#,
        r#"obsgate_store_reloads_total{result="success"} 1"#,
        r#"obsgate_store_objects{kind="tokens"} 9"#,
        "obsgate_request_duration_seconds_bucket",
        "obsgate_upstream_duration_seconds_bucket{backend=\"metrics\"",
        "obsgate_token_cache_misses_total",
        "obsgate_token_cache_hits_total",
    ] {
        assert!(text.contains(want), "missing {want}\n{text}");
    }
    assert!(
        !text.contains(&secret) && !text.contains("team-a"),
        "no tokens or tenants in metrics"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let up = Upstream::start().await;
    let (_s, gw) = gateway_with(&up, "", "").await;
    let addr = gw.shared_addr();
    let inflight = tokio::spawn(async move {
        send(
            &client(),
            get(
                addr,
                "/prometheus/api/v1/query?query=up&slow=1",
                Some(&basic("team-a", &tok("rw"))),
            ),
        )
        .await
    });
    // let the request reach the upstream
    assert!(
        eventually(Duration::from_secs(2), || async {
            !up.requests().is_empty()
        })
        .await
        .is_some()
    );
    let t0 = std::time::Instant::now();
    gw.shutdown().await;
    let r = inflight.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "the in-flight request completed");
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "shutdown waited for it"
    );
    // new connections are refused after shutdown
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
