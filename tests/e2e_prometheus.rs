//! End to end with real Prometheus servers from Debian's `prometheus` package:
//! a Prometheus in agent mode remote-writes through obsgate (Basic tenant:token, backend kind
//! `prometheus`) into a second Prometheus with the remote-write receiver; queries through
//! obsgate return the samples; a token without `metrics:write` gets 403.
//!
//! Skipped when `prometheus` is not installed, unless OBSGATE_E2E=1 (as in `.ci/run`), which
//! makes a missing binary a failure.

mod common;

use common::*;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn prometheus_binary() -> Option<String> {
    let found = Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match found {
        Ok(s) if s.success() => Some("prometheus".to_string()),
        _ => {
            if std::env::var("OBSGATE_E2E").as_deref() == Ok("1") {
                panic!(
                    "OBSGATE_E2E=1 but `prometheus` is not installed (apt-get install -y prometheus)"
                );
            }
            eprintln!("skipping: `prometheus` is not installed (apt-get install -y prometheus)");
            None
        }
    }
}

fn spawn(bin: &str, args: &[String], log: &std::path::Path, name: &'static str) -> Proc {
    let out = std::fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    let child = Command::new(bin)
        .args(args)
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap();
    let _ = name;
    Proc(child)
}

async fn wait_http(addr: std::net::SocketAddr, path: &str) {
    let ok = eventually(Duration::from_secs(30), || async {
        matches!(
            tokio::time::timeout(Duration::from_secs(2), client().request(get(addr, path, None))).await,
            Ok(Ok(r)) if r.status().is_success()
        )
    })
    .await;
    assert!(ok.is_some(), "{addr}{path} never became ready");
}

#[tokio::test]
async fn prometheus_agent_remote_writes_through_obsgate_and_queries_come_back() {
    let Some(prom) = prometheus_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (recv_port, agent_port, gw_port) = (free_port(), free_port(), free_port());
    let writer = glc("e2e-writer", "agent");
    let reader = glc("e2e-reader", "grafana");

    // receiver
    std::fs::write(d.join("recv.yml"), "global:\n  scrape_interval: 15s\n").unwrap();
    let _recv = spawn(
        &prom,
        &[
            format!("--config.file={}", d.join("recv.yml").display()),
            format!("--storage.tsdb.path={}", d.join("recv-data").display()),
            format!("--web.listen-address=127.0.0.1:{recv_port}"),
            "--web.enable-remote-write-receiver".into(),
        ],
        &d.join("recv.log"),
        "receiver",
    );

    // obsgate, as a user runs it: the binary with a config file
    std::fs::write(
        d.join("gateway.yaml"),
        format!(
            "server:\n  listen: \"127.0.0.1:{gw_port}\"\ncluster: local\nstore:\n  policy_files: [policies.yaml]\nbackends:\n  metrics:\n    kind: prometheus\n    url: \"http://127.0.0.1:{recv_port}\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("policies.yaml"),
        format!(
            "tenants:\n  - name: e2e\naccess_policies:\n  - name: e2e-writer\n    scopes: [metrics:write, metrics:read]\n    realms: [{{tenant: e2e}}]\n  - name: e2e-reader\n    scopes: [metrics:read]\n    realms: [{{tenant: e2e}}]\ntokens:\n  - {{name: agent, access_policy: e2e-writer, hash: \"{}\"}}\n  - {{name: grafana, access_policy: e2e-reader, hash: \"{}\"}}\n",
            hash(&writer),
            hash(&reader)
        ),
    )
    .unwrap();
    let _gw = spawn(
        env!("CARGO_BIN_EXE_obsgate"),
        &[
            "serve".into(),
            "--config".into(),
            d.join("gateway.yaml").display().to_string(),
        ],
        &d.join("obsgate.log"),
        "obsgate",
    );

    // agent: scrapes itself every second, remote-writes through obsgate with Basic tenant:token
    std::fs::write(
        d.join("agent.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  external_labels:\n    via: obsgate\nscrape_configs:\n  - job_name: agent-self\n    static_configs:\n      - targets: [\"127.0.0.1:{agent_port}\"]\nremote_write:\n  - url: \"http://127.0.0.1:{gw_port}/api/v1/push\"\n    basic_auth:\n      username: e2e\n      password: \"{writer}\"\n    queue_config:\n      batch_send_deadline: 1s\n"
        ),
    )
    .unwrap();
    let gw_addr: std::net::SocketAddr = format!("127.0.0.1:{gw_port}").parse().unwrap();
    wait_http(
        format!("127.0.0.1:{recv_port}").parse().unwrap(),
        "/-/ready",
    )
    .await;
    wait_http(gw_addr, "/ready").await;
    let _agent = spawn(
        &prom,
        &[
            "--enable-feature=agent".into(),
            format!("--config.file={}", d.join("agent.yml").display()),
            format!("--storage.agent.path={}", d.join("agent-data").display()),
            format!("--web.listen-address=127.0.0.1:{agent_port}"),
        ],
        &d.join("agent.log"),
        "agent",
    );

    // the samples arrive and a read-only token can query them through obsgate
    let q = "/prometheus/api/v1/query?query=up%7Bjob%3D%22agent-self%22%7D";
    let mut last = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut found = None;
    while std::time::Instant::now() < deadline {
        let r = send(&client(), get(gw_addr, q, Some(&basic("e2e", &reader)))).await;
        last = String::from_utf8_lossy(&r.body).to_string();
        if r.status == 200
            && r.json()["data"]["result"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        {
            found = Some(());
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if found.is_none() {
        for f in ["obsgate.log", "agent.log", "recv.log"] {
            eprintln!(
                "--- {f}\n{}",
                std::fs::read_to_string(d.join(f)).unwrap_or_default()
            );
        }
        panic!("no samples came back through obsgate; last answer: {last}");
    }
    let r = send(&client(), get(gw_addr, q, Some(&basic("e2e", &reader)))).await;
    let series = &r.json()["data"]["result"][0];
    assert_eq!(series["metric"]["via"], "obsgate", "{series}");
    assert_eq!(series["value"][1], "1", "{series}");

    // the agent's pushes were authorised and forwarded as remote writes
    let m = send(&client(), get(gw_addr, "/metrics", None)).await;
    let text = String::from_utf8_lossy(&m.body);
    assert!(
        text.lines().any(|l| l.starts_with(
            r#"obsgate_requests_total{backend="metrics",code="204",route="/api/v1/push"}"#
        ) || l.starts_with(
            r#"obsgate_requests_total{backend="metrics",code="200",route="/api/v1/push"}"#
        )),
        "{text}"
    );

    // a token without metrics:write is refused, and nothing without credentials gets in
    let r = send(
        &client(),
        post(gw_addr, "/api/v1/push", Some(&basic("e2e", &reader)), "x"),
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(r.error().contains("metrics:write"));
    assert_eq!(send(&client(), get(gw_addr, q, None)).await.status, 401);
    // a query with the writer's token for a tenant it does not have: 401 (unknown tenant)
    assert_eq!(
        send(&client(), get(gw_addr, q, Some(&basic("other", &writer))))
            .await
            .status,
        401
    );

    // no token text in obsgate's own log
    let log = std::fs::read_to_string(d.join("obsgate.log")).unwrap();
    assert!(
        !log.contains(&writer) && !log.contains(&reader),
        "tokens leaked into the log"
    );
}
