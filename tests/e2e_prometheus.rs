//! End to end with real Prometheus servers from Debian's `prometheus` package:
//! a Prometheus in agent mode remote-writes through obsgate (Basic tenant:token, backend kind
//! `prometheus`) into a second Prometheus with the remote-write receiver; queries through
//! obsgate return the samples; a token without `metrics:write` gets 403.
//!
//! Skipped when `prometheus` is not installed, unless OBSGATE_E2E=1 (as in `.ci/run`), which
//! makes a missing binary a failure.

mod common;

use common::*;
use std::time::Duration;

use common::procs::{Proc, agent, free_port, prometheus_binary, receiver, spawn, wait_http};

/// A receiver Prometheus, obsgate (the binary) in front of it, and agents writing through it.
struct Stack {
    dir: tempfile::TempDir,
    prom: String,
    recv_port: u16,
    gw: std::net::SocketAddr,
    procs: Vec<Proc>,
}

impl Stack {
    async fn start(prom: String, lbac_mode: &str, policies: &str) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let (recv, recv_port) = receiver(&prom, &d, "recv");
        let gw_port = free_port();
        std::fs::write(
            d.join("gateway.yaml"),
            format!(
                "server:\n  listen: \"127.0.0.1:{gw_port}\"\ncluster: local\nstore:\n  policy_files: [policies.yaml]\nbackends:\n  metrics:\n    kind: prometheus\n    url: \"http://127.0.0.1:{recv_port}\"\nlbac:\n  mode: {lbac_mode}\n"
            ),
        )
        .unwrap();
        std::fs::write(d.join("policies.yaml"), policies).unwrap();
        let gw_proc = spawn(
            env!("CARGO_BIN_EXE_obsgate"),
            &[
                "serve".into(),
                "--config".into(),
                d.join("gateway.yaml").display().to_string(),
            ],
            &d.join("obsgate.log"),
        );
        let gw: std::net::SocketAddr = format!("127.0.0.1:{gw_port}").parse().unwrap();
        wait_http(
            format!("127.0.0.1:{recv_port}").parse().unwrap(),
            "/-/ready",
        )
        .await;
        wait_http(gw, "/ready").await;
        Stack {
            dir,
            prom,
            recv_port,
            gw,
            procs: vec![recv, gw_proc],
        }
    }

    /// An agent scraping itself every second with `labels` as external labels, remote-writing
    /// through obsgate as tenant `tenant` with `token`.
    fn agent(&mut self, name: &str, labels: &str, tenant: &str, token: &str) {
        let p = agent(
            &self.prom,
            self.dir.path(),
            name,
            labels,
            self.gw,
            tenant,
            token,
        );
        self.procs.push(p);
    }

    fn dump_logs(&self) {
        for e in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "log") {
                eprintln!(
                    "--- {}\n{}",
                    e.path().display(),
                    std::fs::read_to_string(e.path()).unwrap_or_default()
                );
            }
        }
    }
}

/// GETs `path` (through `addr`) until `done` holds on the JSON answer, up to 60 s.
async fn poll_json(
    addr: std::net::SocketAddr,
    path: &str,
    auth: Option<&str>,
    done: impl Fn(&serde_json::Value) -> bool,
) -> Option<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let r = send(&client(), get(addr, path, auth)).await;
        let j = r.json();
        if r.status == 200 && done(&j) {
            return Some(j);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

fn results(j: &serde_json::Value) -> Vec<serde_json::Value> {
    j["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn rewrite_mode_with_real_prometheus_shows_a_prod_token_only_prod() {
    let Some(prom) = prometheus_binary() else {
        return;
    };
    let writer = glc("e2e-writer", "agents");
    let reader = glc("e2e-prod", "grafana");
    let policies = format!(
        "tenants:\n  - name: e2e\naccess_policies:\n  - name: e2e-writer\n    scopes: [metrics:write]\n    realms: [{{tenant: e2e}}]\n  - name: e2e-prod\n    scopes: [metrics:read]\n    realms:\n      - tenant: e2e\n        label_policies:\n          - selector: '{{env=\"prod\"}}'\ntokens:\n  - {{name: agents, access_policy: e2e-writer, hash: \"{}\"}}\n  - {{name: grafana, access_policy: e2e-prod, hash: \"{}\"}}\n",
        hash(&writer),
        hash(&reader)
    );
    let mut st = Stack::start(prom, "rewrite", &policies).await;
    st.agent("agent-prod", "    env: prod", "e2e", &writer);
    st.agent(
        "agent-dev",
        "    env: dev\n    dev_only: \"1\"",
        "e2e",
        &writer,
    );
    let recv: std::net::SocketAddr = format!("127.0.0.1:{}", st.recv_port).parse().unwrap();
    // both environments arrived at the backend (asked directly, not through obsgate)
    let both = poll_json(
        recv,
        &format!("/api/v1/query?query={}", enc("count by (env) (up)")),
        None,
        |j| results(j).len() == 2,
    )
    .await;
    if both.is_none() {
        st.dump_logs();
        panic!("both agents' series never reached the receiver");
    }
    let a = basic("e2e", &reader);
    let gw = st.gw;
    let only_prod = |j: &serde_json::Value| {
        let r = results(j);
        !r.is_empty() && r.iter().all(|s| s["metric"]["env"] == "prod")
    };
    // query and query_range
    let j = poll_json(
        gw,
        &format!("/prometheus/api/v1/query?query={}", enc("up")),
        Some(&a),
        |j| !results(j).is_empty(),
    )
    .await
    .unwrap();
    assert!(only_prod(&j), "{j}");
    let j = send(
        &client(),
        get(
            gw,
            &format!("/prometheus/api/v1/query?query={}", enc("up{env=\"dev\"}")),
            Some(&a),
        ),
    )
    .await
    .json();
    assert!(
        results(&j).is_empty(),
        "up{{env=\"dev\"}} must return nothing: {j}"
    );
    let j = send(
        &client(),
        get(
            gw,
            &format!(
                "/prometheus/api/v1/query?query={}",
                enc("count by (env) ({__name__=~\".+\"})")
            ),
            Some(&a),
        ),
    )
    .await
    .json();
    assert!(only_prod(&j), "{j}");
    // The range ends a minute in the future: the first samples can carry a
    // timestamp after the whole second `now` was truncated to.
    let now = chrono::Utc::now().timestamp();
    let j = poll_json(
        gw,
        &format!(
            "/prometheus/api/v1/query_range?query={}&start={}&end={}&step=1",
            enc("up"),
            now - 60,
            now + 60
        ),
        Some(&a),
        |j| !results(j).is_empty(),
    )
    .await
    .expect("query_range through obsgate never returned data");
    assert!(only_prod(&j), "{j}");
    // series, with and without match[]
    for path in [
        format!("/prometheus/api/v1/series?match[]={}", enc("up")),
        "/prometheus/api/v1/series".to_string(),
    ] {
        let j = send(&client(), get(gw, &path, Some(&a))).await.json();
        let data = j["data"].as_array().cloned().unwrap_or_default();
        assert!(
            !data.is_empty() && data.iter().all(|s| s["env"] == "prod"),
            "{path}: {j}"
        );
    }
    // label values and label names
    let j = send(
        &client(),
        get(gw, "/prometheus/api/v1/label/env/values", Some(&a)),
    )
    .await
    .json();
    assert_eq!(j["data"], serde_json::json!(["prod"]), "{j}");
    let j = send(&client(), get(gw, "/prometheus/api/v1/labels", Some(&a)))
        .await
        .json();
    let names = j["data"].as_array().cloned().unwrap_or_default();
    assert!(
        names.contains(&serde_json::json!("env"))
            && !names.contains(&serde_json::json!("dev_only")),
        "{j}"
    );
    // the same query in a form body is restricted too
    let req = http::Request::post(format!("http://{gw}/prometheus/api/v1/query"))
        .header("authorization", &a)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(http_body_util::Full::new(bytes::Bytes::from(format!(
            "query={}",
            enc("up{env=\"dev\"}")
        ))))
        .unwrap();
    let j = send(&client(), req).await.json();
    assert_eq!(j["status"], "success", "{j}");
    assert!(results(&j).is_empty(), "{j}");
}

#[tokio::test]
async fn prometheus_agent_remote_writes_through_obsgate_and_queries_come_back() {
    let Some(prom) = prometheus_binary() else {
        return;
    };
    let writer = glc("e2e-writer", "agent");
    let reader = glc("e2e-reader", "grafana");
    let policies = format!(
        "tenants:\n  - name: e2e\naccess_policies:\n  - name: e2e-writer\n    scopes: [metrics:write, metrics:read]\n    realms: [{{tenant: e2e}}]\n  - name: e2e-reader\n    scopes: [metrics:read]\n    realms: [{{tenant: e2e}}]\ntokens:\n  - {{name: agent, access_policy: e2e-writer, hash: \"{}\"}}\n  - {{name: grafana, access_policy: e2e-reader, hash: \"{}\"}}\n",
        hash(&writer),
        hash(&reader)
    );
    let mut st = Stack::start(prom, "header", &policies).await;
    // the agent scrapes itself every second and remote-writes through obsgate (Basic tenant:token)
    st.agent("agent-self", "    via: obsgate", "e2e", &writer);
    let gw = st.gw;

    // the samples arrive and a read-only token can query them through obsgate
    let q = "/prometheus/api/v1/query?query=up%7Bjob%3D%22agent-self%22%7D";
    let Some(j) = poll_json(gw, q, Some(&basic("e2e", &reader)), |j| {
        !results(j).is_empty()
    })
    .await
    else {
        st.dump_logs();
        panic!("no samples came back through obsgate");
    };
    let series = &results(&j)[0];
    assert_eq!(series["metric"]["via"], "obsgate", "{series}");
    assert_eq!(series["value"][1], "1", "{series}");

    // the agent's pushes were authorised and forwarded as remote writes
    let m = send(&client(), get(gw, "/metrics", None)).await;
    let text = String::from_utf8_lossy(&m.body);
    assert!(
        text.lines().any(|l| l.starts_with(
            r#"obsgate_requests_total{backend="metrics",code="204",mode="proxy",route="/api/v1/push"}"#
        ) || l.starts_with(
            r#"obsgate_requests_total{backend="metrics",code="200",mode="proxy",route="/api/v1/push"}"#
        )),
        "{text}"
    );

    // a token without metrics:write is refused, and nothing without credentials gets in
    let r = send(
        &client(),
        post(gw, "/api/v1/push", Some(&basic("e2e", &reader)), "x"),
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(r.error().contains("metrics:write"));
    assert_eq!(send(&client(), get(gw, q, None)).await.status, 401);
    // the writer's token for a tenant that does not exist: 401 (unknown tenant)
    assert_eq!(
        send(&client(), get(gw, q, Some(&basic("other", &writer))))
            .await
            .status,
        401
    );

    // no token text in obsgate's own log
    let log = std::fs::read_to_string(st.dir.path().join("obsgate.log")).unwrap();
    assert!(
        !log.contains(&writer) && !log.contains(&reader),
        "tokens leaked into the log"
    );
}
