//! Per-tenant controls (`store.controls_file`), in process and through the binary: the
//! incident switch (blocks by class, federated requests, status/message/Retry-After), lifting a
//! block by editing the file and by SIGHUP, tenant and token rate limits, in-flight limits held
//! until the response body has been sent, forward-auth, a broken file on reload and at start,
//! `obsgate check`, and the metrics.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use obsgate::proxy::server::Running;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

const Q: &str = "/prometheus/api/v1/query?query=up";

/// The common policy set, plus `ruler` (rules and metrics reads for team-a).
fn policies_with_ruler() -> String {
    let p = policies().replacen(
        "tokens:\n",
        "  - name: pol-rules\n    scopes: [rules:read, rules:write, metrics:read]\n    realms:\n      - tenant: team-a\ntokens:\n",
        1,
    );
    format!(
        "{p}  - {{name: ruler, access_policy: pol-rules, hash: \"{}\"}}\n",
        hash(&tok("ruler"))
    )
}

/// A gateway.yaml with `store.controls_file: controls.yaml`.
fn controls_gateway(backends: &str, extra: &str) -> String {
    gateway_yaml(backends, extra).replace(
        "  poll_interval: 100ms\n",
        "  poll_interval: 100ms\n  controls_file: controls.yaml\n",
    )
}

struct Gw {
    setup: Setup,
    gw: Running,
    up: Upstream,
}

impl Gw {
    fn addr(&self) -> SocketAddr {
        self.gw.shared_addr()
    }

    /// Replaces the controls file the way editors do: a temp file renamed over it.
    fn replace_controls(&self, text: &str) {
        let tmp = self.setup.path(".controls.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.setup.path("controls.yaml")).unwrap();
    }

    async fn metrics(&self) -> String {
        let m = send(&client(), get(self.addr(), "/metrics", None)).await;
        String::from_utf8_lossy(&m.body).into_owned()
    }

    /// The value of the series whose line starts with `prefix` (0 when absent).
    async fn metric(&self, prefix: &str) -> f64 {
        value(&self.metrics().await, prefix)
    }
}

fn value(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn start(controls: &str, extra: &str) -> Gw {
    let up = Upstream::start().await;
    let setup = Setup::new(
        &controls_gateway(&backend("metrics", "mimir", &up.url(), ""), extra),
        &policies_with_ruler(),
    );
    std::fs::write(setup.path("controls.yaml"), controls).unwrap();
    let gw = setup.start().await;
    Gw { setup, gw, up }
}

fn as_(token: &str, tenant: &str, path: &str, addr: SocketAddr) -> Request<Full<Bytes>> {
    get(addr, path, Some(&basic(tenant, &tok(token))))
}

/// A read by the `all` token (every tenant) for `org` (`a|b` for several).
fn federated(addr: SocketAddr, org: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://{addr}{Q}"))
        .header("authorization", format!("Bearer {}", tok("all")))
        .header("x-scope-orgid", org)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn retry_after(r: &Reply) -> Option<u64> {
    r.headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

const BLOCK_READS: &str = r#"
tenants:
  - tenant: team-a
    block:
      reads: true
      status: 503
      message: "team-a reads are paused: INC-1234"
      retry_after: 5m
"#;

#[tokio::test]
async fn blocked_reads_are_refused_with_status_message_and_retry_after_while_writes_pass() {
    let g = start(BLOCK_READS, "").await;
    let (c, addr) = (client(), g.addr());
    let r = send(&c, as_("rw", "team-a", Q, addr)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.error(), "team-a reads are paused: INC-1234");
    assert_eq!(r.json()["errorType"], "unavailable");
    assert_eq!(retry_after(&r), Some(300));
    // a write of the same tenant and token passes, and a rules read (another class)
    let r = send(
        &c,
        post(
            addr,
            "/api/v1/push",
            Some(&basic("team-a", &tok("rw"))),
            "x",
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.error());
    let r = send(&c, as_("ruler", "team-a", "/prometheus/api/v1/rules", addr)).await;
    assert_eq!(r.status, 200, "{}", r.error());
    // another tenant's reads pass
    let r = send(&c, federated(addr, "team-b")).await;
    assert_eq!(r.status, 200, "{}", r.error());
    // nothing refused reached the backend
    assert!(
        g.up.requests()
            .iter()
            .all(|x| x.uri.path() != "/prometheus/api/v1/query"
                || x.headers["x-scope-orgid"] == "team-b"),
        "a blocked read was forwarded"
    );
    // unauthenticated requests are refused as before (401), before any control
    let r = send(&c, as_("nope", "team-a", Q, addr)).await;
    assert_eq!(r.status, 401);
    // the refusal went the denial path: counted with its reason
    let m = g.metrics().await;
    assert_eq!(
        value(
            &m,
            r#"obsgate_auth_decisions_total{mode="proxy",reason="blocked_reads",result="deny"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            r#"obsgate_tenant_controls_refused_total{reason="blocked_reads"}"#
        ),
        1.0
    );
    assert_eq!(value(&m, "obsgate_controls_blocks_active"), 1.0);

    // rules blocked, reads lifted: by editing the file, no restart
    g.replace_controls("tenants:\n  - tenant: team-a\n    block: { rules: true, status: 423 }\n");
    let lifted = eventually(Duration::from_secs(2), || async {
        send(&client(), as_("rw", "team-a", Q, addr)).await.status == 200
    })
    .await;
    assert!(lifted.is_some(), "the block is lifted within 2 s");
    let r = send(&c, as_("ruler", "team-a", "/prometheus/api/v1/rules", addr)).await;
    assert_eq!(r.status, 423);
    assert_eq!(
        r.error(),
        "rule and alert requests of tenant \"team-a\" are blocked for now"
    );
    assert_eq!(r.json()["errorType"], "forbidden");
    assert_eq!(retry_after(&r), None);
    assert_eq!(
        g.metric(r#"obsgate_tenant_controls_refused_total{reason="blocked_rules"}"#)
            .await,
        1.0
    );
    // the whole file emptied: nothing blocked
    g.replace_controls("# no controls\n");
    assert!(
        eventually(Duration::from_secs(2), || async {
            g.metric("obsgate_controls_blocks_active").await == 0.0
                && send(
                    &client(),
                    as_("ruler", "team-a", "/prometheus/api/v1/rules", addr),
                )
                .await
                .status
                    == 200
        })
        .await
        .is_some()
    );
    assert_eq!(
        g.metric(r#"obsgate_controls_reloads_total{result="success"}"#)
            .await,
        3.0,
        "the start and two reloads"
    );
    g.gw.shutdown().await;
}

#[tokio::test]
async fn a_federated_request_is_blocked_when_any_of_its_tenants_is() {
    let g = start(
        "tenants:\n  - tenant: team-b\n    block: { reads: true, status: 403 }\n  - tenant: team-a\n",
        "",
    )
    .await;
    let (c, addr) = (client(), g.addr());
    let r = send(&c, federated(addr, "team-a")).await;
    assert_eq!(r.status, 200, "{}", r.error());
    let r = send(&c, federated(addr, "team-a|team-b")).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error(), "reads of tenant \"team-b\" are blocked for now");
    let r = send(&c, federated(addr, "team-b|team-a")).await;
    assert_eq!(r.status, 403, "the order does not matter");
    let up_queries =
        g.up.requests()
            .iter()
            .filter(|x| x.uri.path() == "/prometheus/api/v1/query")
            .count();
    assert_eq!(up_queries, 1, "only team-a's read was forwarded");
    g.gw.shutdown().await;
}

#[tokio::test]
async fn a_tenant_rate_limit_answers_429_with_retry_after_and_spares_other_tenants() {
    // one request every 2 s, 2 at once
    let g = start(
        "tenants:\n  - tenant: team-a\n    rate_limit: { requests_per_second: 0.5, burst: 2 }\n",
        "",
    )
    .await;
    let (c, addr) = (client(), g.addr());
    // unauthenticated and refused requests take nothing from the tenant's budget
    for _ in 0..5 {
        assert_eq!(send(&c, as_("nope", "team-a", Q, addr)).await.status, 401);
        assert_eq!(
            send(&c, as_("vpn-only", "team-a", Q, addr)).await.status,
            403
        );
    }
    // two tokens of team-a share its budget
    assert_eq!(send(&c, as_("rw", "team-a", Q, addr)).await.status, 200);
    assert_eq!(send(&c, as_("ro", "team-a", Q, addr)).await.status, 200);
    let r = send(&c, as_("rw", "team-a", Q, addr)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.json()["errorType"], "too_many_requests");
    let secs = retry_after(&r).expect("Retry-After");
    assert!((1..=2).contains(&secs), "{secs}");
    assert!(
        r.error().starts_with(
            "tenant \"team-a\" is over its rate limit of 0.5 requests per second (burst 2)"
        ),
        "{}",
        r.error()
    );
    // another tenant is not limited
    for _ in 0..5 {
        assert_eq!(send(&c, federated(addr, "team-b")).await.status, 200);
    }
    // a federated request with the limited tenant is limited too
    assert_eq!(
        send(&c, federated(addr, "team-a|team-b")).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let m = g.metrics().await;
    assert_eq!(
        value(
            &m,
            r#"obsgate_tenant_controls_refused_total{reason="tenant_rate"}"#
        ),
        2.0
    );
    assert_eq!(
        value(
            &m,
            r#"obsgate_auth_decisions_total{mode="proxy",reason="tenant_rate",result="deny"}"#
        ),
        2.0
    );
    // a token is back after Retry-After
    tokio::time::sleep(Duration::from_secs(secs)).await;
    assert_eq!(send(&c, as_("rw", "team-a", Q, addr)).await.status, 200);
    g.gw.shutdown().await;
}

#[tokio::test]
async fn a_token_rate_limit_applies_to_that_token_only() {
    let g = start(
        "tokens:\n  - token: rw\n    rate_limit: { requests_per_second: 0.2, burst: 1 }\n",
        "",
    )
    .await;
    let (c, addr) = (client(), g.addr());
    assert_eq!(send(&c, as_("rw", "team-a", Q, addr)).await.status, 200);
    let r = send(&c, as_("rw", "team-a", Q, addr)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let secs = retry_after(&r).expect("Retry-After");
    assert!((4..=5).contains(&secs), "one every 5 s: {secs}");
    assert!(
        r.error().starts_with("this token is over its rate limit"),
        "{}",
        r.error()
    );
    // the same tenant with another token is not limited
    for _ in 0..3 {
        assert_eq!(send(&c, as_("ro", "team-a", Q, addr)).await.status, 200);
    }
    assert_eq!(
        g.metric(r#"obsgate_tenant_controls_refused_total{reason="token_rate"}"#)
            .await,
        1.0
    );
    g.gw.shutdown().await;
}

#[tokio::test]
async fn an_inflight_limit_refuses_the_third_concurrent_request_until_one_finishes() {
    let g = start("tenants:\n  - tenant: team-a\n    max_inflight: 2\n", "").await;
    let addr = g.addr();
    // two slow reads (the upstream waits 3 s before answering)
    let slow = format!("{Q}&slow=1");
    let spawn = |path: String| {
        tokio::spawn(async move { send(&client(), as_("rw", "team-a", &path, addr)).await })
    };
    let first = spawn(slow.clone());
    let second = spawn(slow.clone());
    assert!(
        eventually(Duration::from_secs(2), || async {
            g.up.requests().len() == 2
        })
        .await
        .is_some(),
        "both slow reads reached the upstream"
    );
    let r = send(&client(), as_("ro", "team-a", Q, addr)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&r), Some(1));
    assert!(r.error().contains("max_inflight"), "{}", r.error());
    // another tenant is not limited
    assert_eq!(send(&client(), federated(addr, "team-b")).await.status, 200);
    assert_eq!(first.await.unwrap().status, 200);
    // one has finished: a new one passes
    let passed = eventually(Duration::from_secs(1), || async {
        send(&client(), as_("ro", "team-a", Q, addr)).await.status == 200
    })
    .await;
    assert!(passed.is_some(), "a finished request gives its place back");
    assert_eq!(second.await.unwrap().status, 200);
    assert_eq!(
        g.metric(r#"obsgate_tenant_controls_refused_total{reason="tenant_inflight"}"#)
            .await,
        1.0
    );
    g.gw.shutdown().await;
}

/// An upstream whose responses send their headers and a first chunk at once, and the rest of
/// the body after `delay`.
async fn streaming_upstream(delay: Duration) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    let chunks = futures_util::stream::unfold(0u8, move |i| async move {
                        match i {
                            0 => Some((
                                Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(
                                    b"first ",
                                ))),
                                1,
                            )),
                            1 => {
                                tokio::time::sleep(delay).await;
                                Some((Ok(Frame::data(Bytes::from_static(b"last"))), 2))
                            }
                            _ => None,
                        }
                    });
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(StreamBody::new(chunks)))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn an_inflight_permit_is_held_until_the_response_body_has_been_sent() {
    let (up, task) = streaming_upstream(Duration::from_millis(1500)).await;
    let setup = Setup::new(
        &controls_gateway(
            &backend("metrics", "mimir", &format!("http://{up}"), ""),
            "",
        ),
        &policies(),
    );
    std::fs::write(
        setup.path("controls.yaml"),
        "tokens:\n  - token: rw\n    max_inflight: 1\n",
    )
    .unwrap();
    let gw = setup.start().await;
    let addr = gw.shared_addr();
    let c = client();
    // the first response's headers are here; its body is not finished
    let first = c.request(as_("rw", "team-a", Q, addr)).await.unwrap();
    assert_eq!(first.status(), 200);
    let r = send(&c, as_("rw", "team-a", Q, addr)).await;
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "still sending the first body"
    );
    assert_eq!(retry_after(&r), Some(1));
    assert!(
        r.error()
            .starts_with("this token has as many requests in flight as it may (max_inflight: 1)"),
        "{}",
        r.error()
    );
    let body = first.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"first last");
    // the body has been sent: the permit is back
    let ok = eventually(Duration::from_secs(2), || async {
        send(&client(), as_("rw", "team-a", Q, addr)).await.status == 200
    })
    .await;
    assert!(ok.is_some());
    // a client that goes away mid-body gives it back too
    let dropped = c.request(as_("rw", "team-a", Q, addr)).await.unwrap();
    assert_eq!(dropped.status(), 200);
    drop(dropped);
    let ok = eventually(Duration::from_secs(4), || async {
        send(&client(), as_("rw", "team-a", Q, addr)).await.status == 200
    })
    .await;
    assert!(ok.is_some(), "a dropped response releases its permit");
    gw.shutdown().await;
    task.abort();
}

#[tokio::test]
async fn forward_auth_refuses_a_blocked_tenant_and_applies_rate_limits() {
    let g = start(
        "tenants:\n  - tenant: team-a\n    block: { reads: true, retry_after: 1m }\n  - tenant: team-b\n    rate_limit: { requests_per_second: 0.1, burst: 1 }\n",
        "forward_auth:\n  listen: \"127.0.0.1:0\"\nclient_ip:\n  trusted_proxies: [\"127.0.0.1/32\"]\n",
    )
    .await;
    let fa = g.gw.forward_auth.expect("forward_auth listener");
    let c = client();
    let question = |method: &str, uri: &str, tenant: &str, token: &str, explain: bool| {
        let mut b = Request::get(format!("http://{fa}/auth/-/metrics"))
            .header("x-original-method", method)
            .header("x-original-uri", uri)
            .header("authorization", basic(tenant, &tok(token)));
        if explain {
            b = b.header("x-obsgate-explain", "1");
        }
        b.body(Full::new(Bytes::new())).unwrap()
    };
    let r = send(&c, question("GET", Q, "team-a", "rw", false)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.error(), "reads of tenant \"team-a\" are blocked for now");
    assert_eq!(retry_after(&r), Some(60));
    // writes of team-a pass
    let r = send(&c, question("POST", "/api/v1/push", "team-a", "rw", false)).await;
    assert_eq!(r.status, 200, "{}", r.error());
    // team-b: one question allowed, then 429 with Retry-After
    let b = |explain| question("GET", Q, "team-b", "all", explain);
    let r = send(&c, b(false)).await;
    assert_eq!(r.status, 200, "{}", r.error());
    let r = send(&c, b(false)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        retry_after(&r).is_some_and(|s| (9..=10).contains(&s)),
        "{:?}",
        r.headers
    );
    // asked again to hand on the refusal: the same 429, nothing taken
    let r = send(&c, b(true)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let m = g.metrics().await;
    assert_eq!(
        value(
            &m,
            r#"obsgate_auth_decisions_total{mode="forward_auth",reason="blocked_reads",result="deny"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            r#"obsgate_auth_decisions_total{mode="forward_auth",reason="tenant_rate",result="deny"}"#
        ),
        2.0
    );
    g.gw.shutdown().await;
}

#[tokio::test]
async fn a_broken_controls_file_on_reload_keeps_the_controls_in_force_and_counts_a_failure() {
    let g = start(BLOCK_READS, "").await;
    let addr = g.addr();
    assert_eq!(
        send(&client(), as_("rw", "team-a", Q, addr)).await.status,
        503
    );
    g.replace_controls("tenants:\n  - tenant: team-a\n    block: { reads: false }\n    bogus: 1\n");
    assert!(
        eventually(Duration::from_secs(2), || async {
            g.metric(r#"obsgate_controls_reloads_total{result="failure"}"#)
                .await
                >= 1.0
        })
        .await
        .is_some(),
        "the failed reload is counted"
    );
    assert_eq!(
        send(&client(), as_("rw", "team-a", Q, addr)).await.status,
        503,
        "the last good controls stay in force"
    );
    assert_eq!(g.metric("obsgate_controls_blocks_active").await, 1.0);
    // a deleted file keeps them too
    std::fs::remove_file(g.setup.path("controls.yaml")).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        send(&client(), as_("rw", "team-a", Q, addr)).await.status,
        503
    );
    // fixed: in force
    g.replace_controls("tenants:\n  - tenant: team-a\n    block: { reads: false }\n");
    assert!(
        eventually(Duration::from_secs(2), || async {
            send(&client(), as_("rw", "team-a", Q, addr)).await.status == 200
        })
        .await
        .is_some()
    );
    g.gw.shutdown().await;
}

#[tokio::test]
async fn the_gateway_does_not_start_with_a_broken_controls_file() {
    let s = Setup::new(&controls_gateway("", ""), &policies());
    std::fs::write(
        s.path("controls.yaml"),
        "tenants:\n  - tenant: team-a\n    max_inflight: 0\n",
    )
    .unwrap();
    let cfg = obsgate::config::load(&s.path("gateway.yaml")).unwrap();
    match obsgate::proxy::server::start(cfg).await {
        Err(obsgate::proxy::server::StartError::Policy(e)) => {
            let text = e.to_string();
            assert!(
                text.starts_with(&format!(
                    "{}:3:19: max_inflight must be between 1",
                    s.path("controls.yaml").display()
                )),
                "{text}"
            );
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("started with a broken controls file"),
    }
    // a missing file too
    std::fs::remove_file(s.path("controls.yaml")).unwrap();
    let cfg = obsgate::config::load(&s.path("gateway.yaml")).unwrap();
    assert!(obsgate::proxy::server::start(cfg).await.is_err());
}

#[tokio::test]
async fn metrics_are_registered_and_never_name_a_tenant_or_token() {
    let g = start(
        "tenants:\n  - tenant: team-a\n    block: { writes: true }\n  - tenant: \"*\"\n    block: { rules: true }\ntokens:\n  - token: rw\n    max_inflight: 5\n",
        "",
    )
    .await;
    let addr = g.addr();
    assert_eq!(
        send(
            &client(),
            post(
                addr,
                "/api/v1/push",
                Some(&basic("team-a", &tok("rw"))),
                "x"
            )
        )
        .await
        .status,
        503
    );
    assert_eq!(
        send(&client(), as_("rw", "team-a", Q, addr)).await.status,
        200
    );
    let m = g.metrics().await;
    for reason in [
        "blocked_reads",
        "blocked_writes",
        "blocked_rules",
        "tenant_rate",
        "tenant_inflight",
        "token_rate",
        "token_inflight",
    ] {
        assert!(
            m.contains(&format!(
                "obsgate_tenant_controls_refused_total{{reason=\"{reason}\"}}"
            )),
            "{reason}"
        );
    }
    assert_eq!(
        value(
            &m,
            r#"obsgate_tenant_controls_refused_total{reason="blocked_writes"}"#
        ),
        1.0
    );
    assert_eq!(value(&m, "obsgate_controls_blocks_active"), 2.0);
    assert_eq!(
        value(&m, r#"obsgate_controls_reloads_total{result="success"}"#),
        1.0
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    let last = value(&m, "obsgate_controls_last_success_timestamp_seconds");
    assert!((now - 60.0..=now + 1.0).contains(&last), "{last}");
    for name in ["team-a", "team-b", "\"rw\"", &tok("rw")] {
        assert!(!m.contains(name), "{name} in the metrics");
    }
    g.gw.shutdown().await;
}

fn obsgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_obsgate"))
}

#[test]
fn check_summarises_the_controls_and_prints_located_errors() {
    let s = Setup::new(&controls_gateway("", ""), &policies());
    std::fs::write(
        s.path("controls.yaml"),
        "tenants:\n  - tenant: team-a\n    block: { reads: true }\n  - tenant: team-typo\n    rate_limit: { requests_per_second: 10 }\ntokens:\n  - token: rw\n    max_inflight: 2\n",
    )
    .unwrap();
    let out = obsgate()
        .args(["check", "--config"])
        .arg(s.path("gateway.yaml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "controls {}: 2 tenant entries, 1 token entry; blocks in force: team-a (reads); 1 rate limit, 1 in-flight limit",
            s.path("controls.yaml").display()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("controls: note: tenant \"team-typo\" is not defined in the policy files"),
        "{stdout}"
    );

    // every error, located, exit 1
    std::fs::write(
        s.path("controls.yaml"),
        "tenants:\n  - tenant: team-a\n    block: { reads: true, status: 200 }\n  - tenant: team-a\ntokens:\n  - token: rw\n    max_inflight: 2\n    burst: 3\n",
    )
    .unwrap();
    let out = obsgate()
        .args(["check", "--config"])
        .arg(s.path("gateway.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let file = s.path("controls.yaml").display().to_string();
    // an unknown key stops the parse: that one error
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert!(
        lines[0].starts_with(&format!("{file}:8:5: unknown field `burst`")),
        "{stdout}"
    );
    std::fs::write(
        s.path("controls.yaml"),
        "tenants:\n  - tenant: team-a\n    block: { reads: true, status: 200 }\n  - tenant: team-a\n",
    )
    .unwrap();
    let out = obsgate()
        .args(["check", "--config"])
        .arg(s.path("gateway.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            format!("{file}:3:35: status must be an HTTP status from 400 to 599"),
            format!("{file}:4:13: tenant \"team-a\" has two entries"),
        ],
        "{stdout}"
    );
    // a JSON controls file is read as JSON
    let s = Setup::new(
        &controls_gateway("", "").replace("controls.yaml", "controls.json"),
        &policies(),
    );
    std::fs::write(
        s.path("controls.json"),
        "{\"tenants\": [{\"tenant\": \"team-a\", \"max_inflight\": -1}]}",
    )
    .unwrap();
    let out = obsgate()
        .args(["check", "--config"])
        .arg(s.path("gateway.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!("{}:1:", s.path("controls.json").display())),
        "{stdout}"
    );
}

fn wait_for_line(child: &mut std::process::Child, needle: &str) {
    use std::io::{BufRead, BufReader};
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while std::time::Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            let hit = l.contains(needle);
            seen.push(l);
            if hit {
                std::thread::spawn(move || while rx.recv().is_ok() {});
                return;
            }
        }
    }
    panic!("never saw {needle:?} in {seen:#?}");
}

#[tokio::test]
async fn sighup_lifts_a_block() {
    let up = Upstream::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // polling every hour: only SIGHUP can make the change visible within the test
    let yaml = controls_gateway(&backend("metrics", "mimir", &up.url(), ""), "")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
        .replace("poll_interval: 100ms", "poll_interval: 1h");
    let s = Setup::new(&yaml, &policies());
    std::fs::write(s.path("controls.yaml"), BLOCK_READS).unwrap();
    let mut child = Killed(
        obsgate()
            .args(["serve", "--config"])
            .arg(s.path("gateway.yaml"))
            .env("OBSGATE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_for_line(&mut child.0, "listening");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let status = || async { send(&client(), as_("rw", "team-a", Q, addr)).await.status };
    assert_eq!(status().await, 503);
    // the poll loop's first turn (at start) is behind us
    tokio::time::sleep(Duration::from_secs(1)).await;
    std::fs::write(s.path("controls.yaml"), "tenants:\n").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status().await, 503, "not polled for an hour");
    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let lifted = eventually(Duration::from_secs(2), || async { status().await == 200 }).await;
    assert!(lifted.is_some(), "SIGHUP reloads the controls file");
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let st = tokio::task::spawn_blocking(move || child.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(st.success(), "{st:?}");
}

/// A child process killed if the test fails before it stops it.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
