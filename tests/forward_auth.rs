//! The forward-auth listener (SPEC 13), in process: the three request forms, the data plane's
//! decision for every row of the decision table (checked against the proxy listener itself,
//! request by request), the answer headers, rewrite mode, bad questions, throttling, client
//! addresses under trusted proxies, and metrics.

mod common;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request};
use http_body_util::Full;
use std::net::SocketAddr;

fn fa_policies() -> String {
    format!(
        r#"{base}  - {{name: two-sel, access_policy: two-sel, hash: "{two}"}}
  - {{name: three-sel, access_policy: three-sel, hash: "{three}"}}
"#,
        base = policies().replace(
            "tokens:\n",
            r#"  - name: two-sel
    scopes: [metrics:read, logs:read]
    realms:
      - tenant: team-a
        label_policies:
          - selector: '{env="prod"}'
          - selector: '{team="a"}'
  - name: three-sel
    scopes: [metrics:read]
    realms:
      - tenant: team-a
        label_policies:
          - selector: '{a="1"}'
          - selector: '{b="2"}'
          - selector: '{c="3"}'
tokens:
"#
        ),
        two = hash(&tok("two-sel")),
        three = hash(&tok("three-sel")),
    )
}

struct Fa {
    _setup: Setup,
    gw: obsgate::proxy::server::Running,
    up: Upstream,
}

impl Fa {
    fn shared(&self) -> SocketAddr {
        self.gw.shared_addr()
    }
    fn fa(&self) -> SocketAddr {
        self.gw.forward_auth.expect("forward_auth listener bound")
    }
}

async fn start(extra: &str, fa_extra: &str) -> Fa {
    let up = Upstream::start().await;
    let backends = format!(
        "{}\n{}",
        backend("metrics", "mimir", &up.url(), ""),
        backend("logs", "loki", &up.url(), "")
    );
    let setup = Setup::new(
        &gateway_yaml(
            &backends,
            &format!(
                "forward_auth:\n  listen: \"127.0.0.1:0\"\n{fa_extra}\nclient_ip:\n  trusted_proxies: [\"127.0.0.1/32\"]\n{extra}"
            ),
        ),
        &fa_policies(),
    );
    let gw = setup.start().await;
    Fa {
        _setup: setup,
        gw,
        up,
    }
}

/// An nginx-form question about `method path` with these extra headers.
fn nginx_q(
    fa: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    let mut b = Request::get(format!("http://{fa}/auth"))
        .header("x-original-method", method)
        .header("x-original-uri", path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

fn values(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn allowed_questions_answer_200_with_the_headers_and_forward_nothing() {
    let t = start("", "").await;
    let c = client();
    // nginx form
    let r = send(
        &c,
        nginx_q(
            t.fa(),
            "GET",
            "/prometheus/api/v1/query?query=up",
            &[("authorization", &basic("team-a", &tok("ro")))],
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.error());
    assert!(r.body.is_empty());
    assert_eq!(values(&r.headers, "x-scope-orgid"), ["team-a"]);
    assert!(r.headers.get("x-prom-label-policy").is_none());
    // Traefik form
    let req = Request::get(format!("http://{}/auth", t.fa()))
        .header("x-forwarded-method", "POST")
        .header("x-forwarded-uri", "/loki/api/v1/push")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "logs.example")
        .header("authorization", format!("Bearer {}", tok("rw")))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(&c, req).await;
    assert_eq!(r.status, 200, "{}", r.error());
    assert_eq!(values(&r.headers, "x-scope-orgid"), ["team-a"]);
    // Envoy form: the original method and path under /auth, the query kept
    let req = Request::post(format!("http://{}/auth/api/v1/push?x=1", t.fa()))
        .header("authorization", basic("team-a", &tok("rw")))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(&c, req).await;
    assert_eq!(r.status, 200, "{}", r.error());
    // a POST question with a body (Envoy with_request_body) is answered the same way
    let req = Request::post(format!("http://{}/auth/api/v1/push", t.fa()))
        .header("authorization", basic("team-a", &tok("rw")))
        .body(Full::new(Bytes::from(vec![7u8; 64 << 10])))
        .unwrap();
    assert_eq!(send(&c, req).await.status, 200);
    // the X-Scope-OrgID header asks for the tenant, as on the data plane; federated reads too
    let r = send(
        &c,
        nginx_q(
            t.fa(),
            "GET",
            "/prometheus/api/v1/query?query=up",
            &[
                ("authorization", &format!("Bearer {}", tok("all"))),
                ("x-scope-orgid", "team-a|team-b"),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.error());
    assert_eq!(values(&r.headers, "x-scope-orgid"), ["team-a|team-b"]);
    assert!(t.up.requests().is_empty(), "forward-auth never forwards");
    t.gw.shutdown().await;
}

#[tokio::test]
async fn label_policy_values_are_the_data_planes_and_numbered_copies_are_bounded() {
    let t = start("", "  numbered_label_policies: 2").await;
    let c = client();
    for (who, n) in [("lbac", 1usize), ("two-sel", 2)] {
        let auth = basic("team-a", &tok(who));
        // the data plane's header values for this token and read
        let r = send(
            &c,
            get(t.shared(), "/prometheus/api/v1/query?query=up", Some(&auth)),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.error());
        let forwarded = values(&t.up.last().headers, "x-prom-label-policy");
        assert_eq!(forwarded.len(), n);
        // forward-auth answers exactly those values, and their numbered copies
        let r = send(
            &c,
            nginx_q(
                t.fa(),
                "GET",
                "/prometheus/api/v1/query?query=up",
                &[("authorization", &auth)],
            ),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.error());
        assert_eq!(
            values(&r.headers, "x-prom-label-policy"),
            forwarded,
            "{who}"
        );
        let numbered: Vec<String> = (1..=n)
            .flat_map(|i| values(&r.headers, &format!("x-prom-label-policy-{i}")))
            .collect();
        assert_eq!(numbered, forwarded, "{who}");
        assert!(
            r.headers
                .get(format!("x-prom-label-policy-{}", n + 1))
                .is_none()
        );
        // routes label policies do not apply to carry none
        let r = send(
            &c,
            nginx_q(
                t.fa(),
                "GET",
                "/prometheus/api/v1/status/buildinfo",
                &[("authorization", &auth)],
            ),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.error());
        assert!(r.headers.get("x-prom-label-policy").is_none());
        assert!(r.headers.get("x-prom-label-policy-1").is_none());
    }
    // three values, two numbered headers: refused rather than silently cut
    let r = send(
        &c,
        nginx_q(
            t.fa(),
            "GET",
            "/prometheus/api/v1/query?query=up",
            &[("authorization", &basic("team-a", &tok("three-sel")))],
        ),
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(
        r.error().contains("forward_auth.numbered_label_policies"),
        "{}",
        r.error()
    );
    t.gw.shutdown().await;
}

/// method, path, Authorization, other headers, the status both listeners answer
type Case<'a> = (
    &'a str,
    &'a str,
    Option<String>,
    Vec<(&'a str, &'a str)>,
    u16,
);

/// Every row of the decision table: forward-auth says what the proxy listener does, for the
/// same request from the same client.
#[tokio::test]
async fn every_decision_matches_the_data_plane() {
    // throttling off: this test fails many authentications on purpose
    let t = start(
        "auth_throttle:\n  burst: 0\n",
        "  numbered_label_policies: 4",
    )
    .await;
    let c = client();
    let malformed = "glc_not-base64!";
    let cases: Vec<Case> = vec![
        // route unknown
        (
            "GET",
            "/nope",
            Some(basic("team-a", &tok("rw"))),
            vec![],
            404,
        ),
        (
            "DELETE",
            "/prometheus/api/v1/query",
            Some(basic("team-a", &tok("rw"))),
            vec![],
            404,
        ),
        // credentials
        (
            "GET",
            "/prometheus/api/v1/query?query=up",
            None,
            vec![],
            401,
        ),
        (
            "GET",
            "/prometheus/api/v1/query?query=up",
            Some("Token x".into()),
            vec![],
            401,
        ),
        (
            "GET",
            "/prometheus/api/v1/query?query=up",
            Some(format!("Bearer {malformed}")),
            vec![],
            401,
        ),
        // token
        (
            "GET",
            "/prometheus/api/v1/query?query=up",
            Some(basic("team-a", &glc("test", "nobody"))),
            vec![],
            401,
        ),
        (
            "GET",
            "/prometheus/api/v1/query?query=up",
            Some(basic("team-a", &tok("revoked"))),
            vec![],
            401,
        ),
        (
            "GET",
            "/prometheus/api/v1/query?query=up",
            Some(basic("team-a", &tok("expired"))),
            vec![],
            401,
        ),
        (
            "GET",
            "/prometheus/api/v1/query?query=up",
            Some(basic("team-a", &tok("policy-off"))),
            vec![],
            401,
        ),
        // subnet: the client is 127.0.0.1 here (trusted, no forwarded address: the peer)
        (
            "GET",
            "/prometheus/api/v1/query?query=up",
            Some(basic("team-a", &tok("vpn-only"))),
            vec![],
            403,
        ),
        (
            "GET",
            "/prometheus/api/v1/query?query=up",
            Some(basic("team-a", &tok("local-only"))),
            vec![],
            200,
        ),
        (
            "GET",
            "/prometheus/api/v1/query?query=up",
            Some(basic("team-a", &tok("vpn-only"))),
            vec![("x-forwarded-for", "10.1.2.3")],
            200,
        ),
        (
            "GET",
            "/prometheus/api/v1/query?query=up",
            Some(basic("team-a", &tok("local-only"))),
            vec![("x-forwarded-for", "10.1.2.3")],
            403,
        ),
        // tenant
        (
            "GET",
            "/prometheus/api/v1/query?query=up",
            Some(basic("team-off", &tok("all"))),
            vec![],
            401,
        ),
        (
            "GET",
            "/prometheus/api/v1/query?query=up",
            Some(basic("nobody", &tok("all"))),
            vec![],
            401,
        ),
        (
            "GET",
            "/prometheus/api/v1/query?query=up",
            Some(format!("Bearer {}", tok("all"))),
            vec![],
            401,
        ),
        (
            "GET",
            "/prometheus/api/v1/query?query=up",
            Some(format!("Bearer {}", tok("all"))),
            vec![("x-scope-orgid", "team-b")],
            200,
        ),
        // realm
        (
            "GET",
            "/prometheus/api/v1/query?query=up",
            Some(basic("team-b", &tok("rw"))),
            vec![],
            403,
        ),
        (
            "GET",
            "/prometheus/api/v1/query?query=up",
            Some(format!("Bearer {}", tok("rw"))),
            vec![("x-scope-orgid", "team-a|team-b")],
            403,
        ),
        // scope
        (
            "POST",
            "/api/v1/push",
            Some(basic("team-a", &tok("ro"))),
            vec![],
            403,
        ),
        (
            "POST",
            "/api/v1/push",
            Some(basic("team-a", &tok("rw"))),
            vec![],
            200,
        ),
        (
            "GET",
            "/prometheus/api/v1/rules",
            Some(basic("team-a", &tok("rw"))),
            vec![],
            403,
        ),
        (
            "GET",
            "/loki/api/v1/query_range?query=%7Ba%3D%22b%22%7D",
            Some(basic("team-a", &tok("ro"))),
            vec![],
            200,
        ),
        (
            "POST",
            "/loki/api/v1/push",
            Some(basic("team-a", &tok("ro"))),
            vec![],
            403,
        ),
        // no scope needed
        (
            "GET",
            "/prometheus/api/v1/status/buildinfo",
            Some(basic("team-a", &tok("lbac"))),
            vec![],
            200,
        ),
        // label policies (header mode: the backend enforces them)
        (
            "GET",
            "/prometheus/api/v1/series?match[]=up",
            Some(basic("team-a", &tok("lbac"))),
            vec![],
            200,
        ),
    ];
    for (method, path, auth, extra, want) in cases {
        let mut data = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", t.shared()));
        let mut q = Request::get(format!("http://{}/auth", t.fa()))
            .header("x-original-method", method)
            .header("x-original-uri", path);
        if let Some(a) = &auth {
            data = data.header("authorization", a.as_str());
            q = q.header("authorization", a.as_str());
        }
        for (k, v) in &extra {
            data = data.header(*k, *v);
            q = q.header(*k, *v);
        }
        let d = send(&c, data.body(Full::new(Bytes::new())).unwrap()).await;
        let f = send(&c, q.body(Full::new(Bytes::new())).unwrap()).await;
        let what = format!("{method} {path} {extra:?}");
        assert_eq!(d.status.as_u16(), want, "data plane, {what}: {}", d.error());
        assert_eq!(f.status, d.status, "forward-auth, {what}: {}", f.error());
        if want == 200 {
            assert_eq!(
                values(&f.headers, "x-scope-orgid"),
                values(&t.up.last().headers, "x-scope-orgid"),
                "{what}"
            );
            assert!(f.body.is_empty());
        } else {
            // the same JSON body
            assert_eq!(f.json(), d.json(), "{what}");
            assert_eq!(
                f.headers.get("www-authenticate"),
                d.headers.get("www-authenticate"),
                "{what}"
            );
            assert_eq!(f.json()["status"], "error");
        }
    }
    t.gw.shutdown().await;
}

#[tokio::test]
async fn rewrite_mode_refuses_restricted_reads_and_names_header_mode() {
    let t = start("lbac:\n  mode: rewrite\n", "").await;
    let c = client();
    let ask = |path: &str, who: &str| {
        nginx_q(
            t.fa(),
            "GET",
            path,
            &[("authorization", &basic("team-a", &tok(who)))],
        )
    };
    let r = send(&c, ask("/prometheus/api/v1/query?query=up", "lbac")).await;
    assert_eq!(r.status, 403);
    assert!(r.error().contains("lbac.mode: header"), "{}", r.error());
    let r = send(
        &c,
        ask("/loki/api/v1/query_range?query=%7Ba%3D%22b%22%7D", "lbac"),
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(r.error().contains("lbac.mode: header"), "{}", r.error());
    // what the data plane refuses for restricted tokens in rewrite mode is refused here too
    let r = send(&c, ask("/prometheus/api/v1/metadata", "lbac")).await;
    assert_eq!(r.status, 403);
    assert!(r.error().contains("cannot be filtered"), "{}", r.error());
    // reads no series data: passes, as on the data plane
    let r = send(&c, ask("/prometheus/api/v1/format_query?query=up", "lbac")).await;
    assert_eq!(r.status, 200, "{}", r.error());
    assert!(r.headers.get("x-prom-label-policy").is_none());
    // unrestricted tokens are not affected
    let r = send(&c, ask("/prometheus/api/v1/query?query=up", "ro")).await;
    assert_eq!(r.status, 200, "{}", r.error());
    t.gw.shutdown().await;
}

#[tokio::test]
async fn a_plain_prometheus_in_header_mode_is_refused_with_advice_that_fits() {
    let up = Upstream::start().await;
    let setup = Setup::new(
        &gateway_yaml(
            &backend("metrics", "prometheus", &up.url(), ""),
            "forward_auth:\n  listen: \"127.0.0.1:0\"\n",
        ),
        &fa_policies(),
    );
    let gw = setup.start().await;
    let fa = gw.forward_auth.unwrap();
    let r = send(
        &client(),
        nginx_q(
            fa,
            "GET",
            "/prometheus/api/v1/query?query=up",
            &[("authorization", &basic("team-a", &tok("lbac")))],
        ),
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(
        r.error().contains("forward-auth cannot rewrite"),
        "{}",
        r.error()
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn one_backends_table_when_forward_auth_backend_is_set() {
    let t = start("", "  backend: logs").await;
    let c = client();
    let auth = basic("team-a", &tok("rw"));
    let r = send(
        &c,
        nginx_q(
            t.fa(),
            "POST",
            "/loki/api/v1/push",
            &[("authorization", &auth)],
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.error());
    let r = send(
        &c,
        nginx_q(t.fa(), "POST", "/api/v1/push", &[("authorization", &auth)]),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.error());
    assert!(
        r.error().contains("no route for POST /api/v1/push"),
        "{}",
        r.error()
    );
    t.gw.shutdown().await;
}

#[tokio::test]
async fn bad_questions_are_400_and_never_a_decision_about_another_request() {
    let t = start("", "").await;
    let c = client();
    let auth = basic("team-a", &tok("ro"));
    let q = |headers: &[(&str, &str)]| {
        let mut b =
            Request::get(format!("http://{}/auth", t.fa())).header("authorization", auth.as_str());
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Full::new(Bytes::new())).unwrap()
    };
    // no original request at all
    let r = send(&c, q(&[])).await;
    assert_eq!(r.status, 400);
    assert!(
        r.error().contains("missing the original request"),
        "{}",
        r.error()
    );
    // half of a form
    let r = send(&c, q(&[("x-original-uri", "/prometheus/api/v1/query")])).await;
    assert_eq!(r.status, 400);
    assert!(
        r.error().contains("x-original-method is missing"),
        "{}",
        r.error()
    );
    // a read-only token's holder behind Traefik adds nginx's headers naming a read while
    // Traefik names the write it carries
    let r = send(
        &c,
        q(&[
            ("x-original-method", "GET"),
            ("x-original-uri", "/prometheus/api/v1/query"),
            ("x-forwarded-method", "POST"),
            ("x-forwarded-uri", "/api/v1/push"),
        ]),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("disagree"), "{}", r.error());
    // not an origin-form target
    let r = send(
        &c,
        q(&[
            ("x-original-method", "GET"),
            ("x-original-uri", "http://x/y"),
        ]),
    )
    .await;
    assert_eq!(r.status, 400);
    // a traversal in the original path is not a route
    let r = send(
        &c,
        q(&[
            ("x-original-method", "GET"),
            (
                "x-original-uri",
                "/prometheus/api/v1/query/../../../admin/api/v3/tokens",
            ),
        ]),
    )
    .await;
    assert_eq!(r.status, 404);
    let r = send(
        &c,
        q(&[
            ("x-original-method", "GET"),
            ("x-original-uri", "/prometheus/api/v1/%2e%2e/query"),
        ]),
    )
    .await;
    assert_eq!(r.status, 404);
    // other methods and paths of the listener
    let req = Request::put(format!("http://{}/auth", t.fa()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&c, req).await.status, 405);
    let r = send(&c, get(t.fa(), "/admin/api/v3/tokens", Some(&auth))).await;
    assert_eq!(r.status, 404, "the admin API is not served here");
    let r = send(
        &c,
        get(t.fa(), "/prometheus/api/v1/query?query=up", Some(&auth)),
    )
    .await;
    assert_eq!(r.status, 404, "nor the data plane");
    // the gateway's own endpoints are
    assert_eq!(send(&c, get(t.fa(), "/ready", None)).await.status, 200);
    assert_eq!(send(&c, get(t.fa(), "/live", None)).await.status, 200);
    assert!(t.up.requests().is_empty());
    t.gw.shutdown().await;
}

#[tokio::test]
async fn failed_authentications_are_throttled_per_client_behind_the_proxy() {
    let t = start("auth_throttle:\n  burst: 3\n  per_second: 0.01\n", "").await;
    let c = client();
    let bad = basic("team-a", &glc("test", "nobody"));
    let good = basic("team-a", &tok("ro"));
    let from = |ip: &str, auth: &str| {
        nginx_q(
            t.fa(),
            "GET",
            "/prometheus/api/v1/query?query=up",
            &[("authorization", auth), ("x-forwarded-for", ip)],
        )
    };
    for _ in 0..3 {
        assert_eq!(send(&c, from("192.0.2.1", &bad)).await.status, 401);
    }
    let r = send(&c, from("192.0.2.1", &good)).await;
    assert_eq!(r.status, 429);
    assert!(r.headers.get("retry-after").is_some());
    // another client behind the same proxy is still served
    assert_eq!(send(&c, from("192.0.2.2", &good)).await.status, 200);
    // X-Real-IP names the client when there is no X-Forwarded-For
    let real = nginx_q(
        t.fa(),
        "GET",
        "/prometheus/api/v1/query?query=up",
        &[("authorization", &good), ("x-real-ip", "192.0.2.1")],
    );
    assert_eq!(send(&c, real).await.status, 429);

    let m = send(&c, get(t.shared(), "/metrics", None)).await;
    let text = String::from_utf8_lossy(&m.body).to_string();
    for want in [
        r#"obsgate_auth_decisions_total{mode="forward_auth",reason="invalid_token",result="deny"} 3"#,
        r#"obsgate_auth_decisions_total{mode="forward_auth",reason="throttled",result="deny"} 2"#,
        r#"obsgate_auth_decisions_total{mode="forward_auth",reason="ok",result="allow"} 1"#,
        r#"obsgate_requests_total{backend="metrics",code="429",mode="forward_auth",route="/prometheus/api/v1/query"} 2"#,
        r#"obsgate_requests_total{backend="metrics",code="401",mode="forward_auth",route="/prometheus/api/v1/query"} 3"#,
        r#"obsgate_request_duration_seconds_count{backend="metrics",component="query_frontend",mode="forward_auth"} 6"#,
    ] {
        assert!(text.contains(want), "missing {want} in\n{text}");
    }
    assert!(!text.contains("mode=\"proxy\",route=\"/prometheus/api/v1/query\""));
    t.gw.shutdown().await;
}

#[tokio::test]
async fn subnets_are_checked_against_the_client_the_proxy_names() {
    let t = start("", "").await;
    let c = client();
    let vpn = basic("team-a", &tok("vpn-only"));
    let ask = |headers: &[(&str, &str)]| {
        let mut h = vec![("authorization", vpn.as_str())];
        h.extend_from_slice(headers);
        nginx_q(t.fa(), "GET", "/prometheus/api/v1/query?query=up", &h)
    };
    assert_eq!(
        send(&c, ask(&[("x-real-ip", "10.9.9.9")])).await.status,
        200
    );
    assert_eq!(
        send(&c, ask(&[("x-real-ip", "192.0.2.9")])).await.status,
        403
    );
    // the proxy appended the real client after what the client claimed
    assert_eq!(
        send(&c, ask(&[("x-forwarded-for", "10.9.9.9, 192.0.2.9")]))
            .await
            .status,
        403
    );
    // from a peer that is not a trusted proxy, the headers are not believed
    let other = client_from("127.0.0.2".parse().unwrap());
    assert_eq!(
        send(&other, ask(&[("x-real-ip", "10.9.9.9")])).await.status,
        403
    );
    t.gw.shutdown().await;
}

/// The proxy configurations the README shows are the files in docs/forward-auth/ (nginx's is
/// the one tests/e2e_nginx.rs runs), and the YAML ones parse and ask obsgate's /auth.
#[test]
fn the_readme_shows_the_proxy_configurations_as_they_are() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for f in ["nginx.conf", "traefik.yaml", "envoy.yaml"] {
        let text = std::fs::read_to_string(root.join("docs/forward-auth").join(f)).unwrap();
        assert!(
            readme.contains(&text),
            "README.md does not show docs/forward-auth/{f} as it is"
        );
    }
    let yaml = |f: &str| -> serde_json::Value {
        let text = std::fs::read_to_string(root.join("docs/forward-auth").join(f)).unwrap();
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{f}: {e}"))
    };
    let t = yaml("traefik.yaml");
    let fa = &t["http"]["middlewares"]["obsgate-auth"]["forwardAuth"];
    assert!(fa["address"].as_str().unwrap().ends_with("/auth/-/metrics"));
    assert_eq!(fa["trustForwardHeader"], false);
    assert_eq!(
        fa["authResponseHeaders"],
        serde_json::json!(["X-Scope-OrgID", "X-Prom-Label-Policy"])
    );
    let e = yaml("envoy.yaml");
    let filters = &e["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["http_filters"];
    let names: Vec<&str> = filters
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "envoy.filters.http.header_mutation",
            "envoy.filters.http.ext_authz",
            "envoy.filters.http.router"
        ],
        "the client's label policies go before ext_authz appends obsgate's"
    );
    let authz = &filters[1]["typed_config"]["http_service"];
    assert_eq!(authz["path_prefix"], "/auth/-/metrics");
    assert_eq!(
        authz["authorization_response"]["allowed_upstream_headers_to_append"]["patterns"][0]["exact"],
        "x-prom-label-policy"
    );
}

/// The proxy names the backend it forwards to (`/auth/-/<backend>`): that backend's routes
/// judge, so a path another backend also serves is not judged by the wrong table.
#[tokio::test]
async fn the_question_can_name_the_backend() {
    let t = start("", "").await;
    let c = client();
    // pol-rw holds metrics:write and logs:write; "ro" only reads
    let rw = basic("team-a", &tok("rw"));
    let ask = |fa: SocketAddr, path: &str, method: &str, uri: &str, auth: &str| {
        Request::get(format!("http://{fa}{path}"))
            .header("x-original-method", method)
            .header("x-original-uri", uri)
            .header("authorization", auth)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    // /api/prom/push is a Mimir route: judged by the metrics table it is allowed, by the logs
    // table (a proxy forwarding it to Loki) it is no route at all
    assert_eq!(
        send(&c, ask(t.fa(), "/auth", "POST", "/api/prom/push", &rw))
            .await
            .status,
        200
    );
    assert_eq!(
        send(
            &c,
            ask(t.fa(), "/auth/-/metrics", "POST", "/api/prom/push", &rw)
        )
        .await
        .status,
        200
    );
    let r = send(
        &c,
        ask(t.fa(), "/auth/-/logs", "POST", "/api/prom/push", &rw),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.error());
    let r = send(
        &c,
        ask(t.fa(), "/auth/-/logs", "POST", "/loki/api/v1/push", &rw),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.error());
    // a backend that is not configured, or not a backend
    let r = send(&c, ask(t.fa(), "/auth/-/traces", "GET", "/api/search", &rw)).await;
    assert_eq!(r.status, 404);
    assert!(
        r.error().contains("backend traces is not configured"),
        "{}",
        r.error()
    );
    assert_eq!(
        send(&c, ask(t.fa(), "/auth/-/nope", "GET", "/api/search", &rw))
            .await
            .status,
        404
    );
    // the Envoy form with a named backend: path_prefix /auth/-/logs
    let req = Request::post(format!("http://{}/auth/-/logs/loki/api/v1/push", t.fa()))
        .header("authorization", rw.as_str())
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&c, req).await.status, 200);
    let req = Request::post(format!("http://{}/auth/-/logs/api/v1/push", t.fa()))
        .header("authorization", rw.as_str())
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&c, req).await.status, 404);
    t.gw.shutdown().await;

    // a listener fixed to one backend refuses questions naming another
    let t = start("", "  backend: metrics").await;
    let r = send(
        &c,
        ask(t.fa(), "/auth/-/logs", "POST", "/loki/api/v1/push", &rw),
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(r.error().contains("forward_auth.backend"), "{}", r.error());
    assert_eq!(
        send(
            &c,
            ask(t.fa(), "/auth/-/metrics", "POST", "/api/v1/push", &rw)
        )
        .await
        .status,
        200
    );
    t.gw.shutdown().await;
}

/// nginx copies one value per header name: a restricted read asked in nginx's form without
/// numbered copies configured is refused, not answered with values nginx would drop.
#[tokio::test]
async fn nginx_questions_need_numbered_copies_for_label_policies() {
    let t = start("", "").await;
    let c = client();
    let lbac = basic("team-a", &tok("lbac"));
    let r = send(
        &c,
        nginx_q(
            t.fa(),
            "GET",
            "/prometheus/api/v1/query?query=up",
            &[("authorization", &lbac)],
        ),
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(
        r.error().contains("numbered_label_policies"),
        "{}",
        r.error()
    );
    // Traefik copies every value: answered
    let req = Request::get(format!("http://{}/auth", t.fa()))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/prometheus/api/v1/query?query=up")
        .header("authorization", lbac.as_str())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(&c, req).await;
    assert_eq!(r.status, 200, "{}", r.error());
    assert_eq!(values(&r.headers, "x-prom-label-policy").len(), 1);
    // unrestricted reads in nginx's form are fine
    let r = send(
        &c,
        nginx_q(
            t.fa(),
            "GET",
            "/prometheus/api/v1/query?query=up",
            &[("authorization", &basic("team-a", &tok("ro")))],
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    t.gw.shutdown().await;
}

/// A question asked again only to hand on a refusal (`X-Obsgate-Explain`) is never answered
/// 200: the proxy would give the client an empty success and forward nothing.
#[tokio::test]
async fn a_second_question_for_a_refusal_is_never_a_200() {
    let t = start("", "").await;
    let c = client();
    let explain = |auth: &str| {
        nginx_q(
            t.fa(),
            "GET",
            "/prometheus/api/v1/query?query=up",
            &[("authorization", auth), ("x-obsgate-explain", "1")],
        )
    };
    let r = send(&c, explain(&basic("team-a", &tok("ro")))).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers.get("retry-after").unwrap(), "1");
    assert_eq!(r.json()["errorType"], "unavailable");
    // refusals are answered as they are
    let r = send(&c, explain(&basic("team-b", &tok("ro")))).await;
    assert_eq!(r.status, 403);
    let r = send(&c, explain(&basic("team-a", &glc("test", "nobody")))).await;
    assert_eq!(r.status, 401);
    t.gw.shutdown().await;
}
