//! End to end upstream topology with real Prometheus servers from Debian's `prometheus`
//! package: obsgate (in-process, backend kind `prometheus`) sends pushes to a `distributor`
//! Prometheus and queries to three `query_frontend` Prometheus replicas (`least_inflight`,
//! active health checks on `/-/ready`).
//!
//! - a Prometheus agent remote-writes through obsgate: the samples land on the distributor only,
//!   and reads through obsgate go to the replicas (which have none of them);
//! - a query load through obsgate is spread over the three replicas; one replica is SIGKILLed in
//!   the middle of it and not a single query fails (retry on another endpoint), the endpoint is
//!   reported unhealthy, gets no more requests, and the two survivors keep serving.
//!
//! Skipped when `prometheus` is not installed, unless OBSGATE_E2E=1 (as in `.ci/run`), which
//! makes a missing binary a failure.

mod common;

use common::*;
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::procs::{Proc, agent, prometheus_binary, receiver, wait_http};

/// The temporary directory of the test's processes; prints the end of their logs when the test
/// panics.
struct Dir(tempfile::TempDir);

impl Dir {
    fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for e in std::fs::read_dir(self.0.path()).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "log") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                eprintln!("--- {} (last 30 lines)\n{tail}", e.path().display());
            }
        }
    }
}

/// A Prometheus server with the remote-write receiver and no scrape targets.
fn prometheus(bin: &str, dir: &std::path::Path, name: &str) -> (Proc, SocketAddr) {
    let (p, port) = receiver(bin, dir, name);
    (p, format!("127.0.0.1:{port}").parse().unwrap())
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn results(j: &serde_json::Value) -> Vec<serde_json::Value> {
    j["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// An instant query asked of a Prometheus directly (not through obsgate).
async fn direct_query(addr: SocketAddr, q: &str) -> serde_json::Value {
    let r = send(
        &client(),
        get(addr, &format!("/api/v1/query?query={}", enc(q)), None),
    )
    .await;
    assert_eq!(r.status, 200, "{addr} {q}: {:?}", r.body);
    r.json()
}

/// One sample of a metric in the text exposition format.
struct Sample {
    labels: HashMap<String, String>,
    value: f64,
}

/// The samples of metric `name` in `text` (exposition format).
fn samples(text: &str, name: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let mut labels = HashMap::new();
        let mut chars = rest.char_indices().peekable();
        let value_at = match chars.peek() {
            Some((_, '{')) => {
                chars.next();
                let mut end = None;
                loop {
                    let mut key = String::new();
                    for (_, c) in chars.by_ref() {
                        if c == '=' {
                            break;
                        }
                        key.push(c);
                    }
                    let key = key.trim_start_matches(',').trim().to_string();
                    if key.is_empty() {
                        break;
                    }
                    assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                    let mut val = String::new();
                    while let Some((_, c)) = chars.next() {
                        match c {
                            '\\' => match chars.next().map(|(_, c)| c) {
                                Some('n') => val.push('\n'),
                                Some(c) => val.push(c),
                                None => break,
                            },
                            '"' => break,
                            c => val.push(c),
                        }
                    }
                    labels.insert(key, val);
                    match chars.peek() {
                        Some((i, '}')) => {
                            end = Some(i + 1);
                            break;
                        }
                        Some((_, ',')) => {
                            chars.next();
                            if let Some((i, '}')) = chars.peek() {
                                end = Some(i + 1);
                                break;
                            }
                        }
                        _ => break,
                    }
                }
                match end {
                    Some(e) => e,
                    None => panic!("unparsable metric line: {line}"),
                }
            }
            Some((_, ' ')) => 0,
            _ => continue, // a longer name with this prefix
        };
        let value = rest[value_at..]
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no value in metric line: {line}"));
        out.push(Sample { labels, value });
    }
    out
}

/// The gateway's `/metrics`.
struct Metrics(String);

impl Metrics {
    async fn get(gw: SocketAddr) -> Metrics {
        let r = send(&client(), get(gw, "/metrics", None)).await;
        assert_eq!(r.status, 200);
        Metrics(String::from_utf8_lossy(&r.body).into_owned())
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        component: &'a str,
        endpoint: &'a str,
    ) -> impl Iterator<Item = Sample> + 'a {
        samples(&self.0, name).into_iter().filter(move |s| {
            s.labels.get("backend").map(String::as_str) == Some("metrics")
                && s.labels.get("component").map(String::as_str) == Some(component)
                && s.labels.get("endpoint").map(String::as_str) == Some(endpoint)
        })
    }

    /// `obsgate_upstream_requests_total` of one endpoint, summed over the codes `code` accepts.
    fn requests(&self, component: &str, endpoint: &str, code: impl Fn(&str) -> bool) -> f64 {
        self.matching("obsgate_upstream_requests_total", component, endpoint)
            .filter(|s| code(s.labels.get("code").map(String::as_str).unwrap_or("")))
            .map(|s| s.value)
            .sum()
    }

    fn ok(&self, component: &str, endpoint: &str) -> f64 {
        self.requests(component, endpoint, |c| c == "200")
    }

    fn all(&self, component: &str, endpoint: &str) -> f64 {
        self.requests(component, endpoint, |_| true)
    }

    /// `obsgate_upstream_endpoint_healthy`, if the endpoint has one.
    fn healthy(&self, component: &str, endpoint: &str) -> Option<f64> {
        self.matching("obsgate_upstream_endpoint_healthy", component, endpoint)
            .map(|s| s.value)
            .next()
    }

    /// The `obsgate_upstream_*` lines, for assertion messages.
    fn upstream_lines(&self) -> String {
        self.0
            .lines()
            .filter(|l| l.starts_with("obsgate_upstream_"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

const QUERY: &str = "/prometheus/api/v1/query?query=vector%281%29";

/// Concurrent tasks asking `QUERY` through the gateway until stopped; every answer that is not a
/// 200 `success` with the value 1 (or no answer) is a failure.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    first_failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(gw: SocketAddr, auth: String, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let first_failures = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..workers)
            .map(|_| {
                let (stop, ok, failed, first_failures, auth) = (
                    stop.clone(),
                    ok.clone(),
                    failed.clone(),
                    first_failures.clone(),
                    auth.clone(),
                );
                tokio::spawn(async move {
                    let c = client();
                    while !stop.load(Ordering::Relaxed) {
                        match query_once(&c, gw, &auth).await {
                            Ok(()) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                let mut f = first_failures.lock().unwrap();
                                if f.len() < 20 {
                                    f.push(e);
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            first_failures,
            tasks,
        }
    }

    async fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("a load task panicked");
        }
        let f = self.first_failures.lock().unwrap().clone();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            f,
        )
    }
}

async fn query_once(c: &TestClient, gw: SocketAddr, auth: &str) -> Result<(), String> {
    let t0 = std::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(15), async {
        let r = c
            .request(get(gw, QUERY, Some(auth)))
            .await
            .map_err(|e| format!("no answer: {e:?}"))?;
        let (p, b) = r.into_parts();
        let body = b
            .collect()
            .await
            .map_err(|e| format!("{}: body cut: {e:?}", p.status))?
            .to_bytes();
        Ok::<_, String>((p.status, body))
    })
    .await
    .map_err(|_| "no answer within 15 s".to_string())??;
    let (status, body) = r;
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let res = results(&j);
    if status == 200 && j["status"] == "success" && res.len() == 1 && res[0]["value"][1] == "1" {
        Ok(())
    } else {
        Err(format!(
            "after {:?}: {status} {}",
            t0.elapsed(),
            String::from_utf8_lossy(&body)
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_spread_over_replicas_and_survive_a_killed_replica_pushes_go_to_the_distributor() {
    let Some(bin) = prometheus_binary() else {
        return;
    };
    let t_start = std::time::Instant::now();
    let dir = Dir(tempfile::tempdir().unwrap());
    let d = dir.path();

    // three query_frontend replicas and a distributor
    let (mut replicas, mut replica_addrs) = (Vec::new(), Vec::new());
    for i in 1..=3 {
        let (p, a) = prometheus(&bin, d, &format!("qf{i}"));
        replicas.push(p);
        replica_addrs.push(a);
    }
    let (_distributor, dist) = prometheus(&bin, d, "distributor");
    for a in replica_addrs.iter().chain([&dist]) {
        wait_http(*a, "/-/ready").await;
    }
    let endpoints: Vec<String> = replica_addrs.iter().map(|a| a.to_string()).collect();
    let dist_ep = dist.to_string();

    // obsgate in front of them
    let writer = glc("topo-writer", "agent");
    let reader = glc("topo-reader", "grafana");
    let policies = format!(
        "tenants:\n  - name: e2e\naccess_policies:\n  - name: topo-writer\n    scopes: [metrics:write]\n    realms: [{{tenant: e2e}}]\n  - name: topo-reader\n    scopes: [metrics:read]\n    realms: [{{tenant: e2e}}]\ntokens:\n  - {{name: agent, access_policy: topo-writer, hash: \"{}\"}}\n  - {{name: grafana, access_policy: topo-reader, hash: \"{}\"}}\n",
        hash(&writer),
        hash(&reader)
    );
    let backends = format!(
        "  metrics:\n    kind: prometheus\n    url: \"http://{dist}\"\n    components:\n      distributor: {{ url: \"http://{dist}\" }}\n      query_frontend: {{ urls: [\"http://{}\", \"http://{}\", \"http://{}\"] }}\n    balance: least_inflight\n    health_check: {{ path: /-/ready, interval: 1s, timeout: 1s, unhealthy_after: 2, healthy_after: 1 }}\n",
        endpoints[0], endpoints[1], endpoints[2]
    );
    let setup = Setup::new(&gateway_yaml(&backends, ""), &policies);
    let running = setup.start().await;
    let gw = running.shared_addr();

    // every endpoint is checked (health_check is written explicitly) and reported healthy
    let all_healthy = eventually(Duration::from_secs(20), || async {
        let m = Metrics::get(gw).await;
        m.healthy("distributor", &dist_ep) == Some(1.0)
            && endpoints
                .iter()
                .all(|e| m.healthy("query_frontend", e) == Some(1.0))
    })
    .await;
    assert!(
        all_healthy.is_some(),
        "not every endpoint reported healthy:\n{}",
        Metrics::get(gw).await.upstream_lines()
    );

    // pushes: a Prometheus agent remote-writes through obsgate; the samples land on the
    // distributor, and on no replica
    let agent_proc = agent(&bin, d, "topo-agent", "", gw, "e2e", &writer);
    let arrived = eventually(Duration::from_secs(30), || async {
        !results(&direct_query(dist, "up{job=\"topo-agent\"}").await).is_empty()
    })
    .await;
    assert!(
        arrived.is_some(),
        "the agent's samples never reached the distributor:\n{}",
        Metrics::get(gw).await.upstream_lines()
    );
    drop(agent_proc);
    for a in &replica_addrs {
        let j = direct_query(*a, "count({__name__=~\".+\", job=\"topo-agent\"})").await;
        assert!(
            results(&j).is_empty(),
            "replica {a} got pushed samples: {j}"
        );
        let own = send(&client(), get(*a, "/metrics", None)).await;
        let own = String::from_utf8_lossy(&own.body).into_owned();
        let writes: f64 = samples(&own, "prometheus_http_requests_total")
            .iter()
            .filter(|s| s.labels.get("handler").map(String::as_str) == Some("/api/v1/write"))
            .map(|s| s.value)
            .sum();
        assert_eq!(writes, 0.0, "replica {a} received remote writes");
    }
    let m = Metrics::get(gw).await;
    assert!(
        m.requests("distributor", &dist_ep, |c| c.starts_with('2')) >= 1.0,
        "no successful push counted for the distributor:\n{}",
        m.upstream_lines()
    );
    for e in &endpoints {
        assert_eq!(
            m.all("query_frontend", e),
            0.0,
            "a replica got requests before any read:\n{}",
            m.upstream_lines()
        );
    }
    // reads go to the replicas, which have none of the pushed samples
    let auth = basic("e2e", &reader);
    let r = send(
        &client(),
        get(
            gw,
            &format!(
                "/prometheus/api/v1/query?query={}",
                enc("up{job=\"topo-agent\"}")
            ),
            Some(&auth),
        ),
    )
    .await;
    let j = r.json();
    assert_eq!(r.status, 200, "{j}");
    assert_eq!(j["status"], "success", "{j}");
    assert!(
        results(&j).is_empty(),
        "a read through obsgate reached the distributor: {j}"
    );
    let m = Metrics::get(gw).await;
    let replica_reads: f64 = endpoints.iter().map(|e| m.ok("query_frontend", e)).sum();
    assert_eq!(replica_reads, 1.0, "{}", m.upstream_lines());

    // query load over the replicas: every replica serves some of it
    let load = Load::start(gw, auth, 6);
    let min_each = 60.0;
    let spread = eventually(Duration::from_secs(20), || async {
        let m = Metrics::get(gw).await;
        endpoints
            .iter()
            .all(|e| m.ok("query_frontend", e) >= min_each)
    })
    .await;
    assert!(
        spread.is_some(),
        "the reads were not spread over the three replicas:\n{}",
        Metrics::get(gw).await.upstream_lines()
    );

    // SIGKILL one replica in the middle of the load
    let killed = endpoints[1].clone();
    let survivors = [endpoints[0].clone(), endpoints[2].clone()];
    replicas[1].kill();
    let down = eventually(Duration::from_secs(20), || async {
        Metrics::get(gw).await.healthy("query_frontend", &killed) == Some(0.0)
    })
    .await;
    assert!(
        down.is_some(),
        "the killed replica {killed} was never reported unhealthy:\n{}",
        Metrics::get(gw).await.upstream_lines()
    );
    eprintln!("{killed} reported unhealthy {down:?} after the kill");

    // the two survivors keep serving
    let progress = |base: Metrics| {
        let survivors = survivors.clone();
        async move {
            let ok = eventually(Duration::from_secs(20), || async {
                let m = Metrics::get(gw).await;
                survivors
                    .iter()
                    .all(|e| m.ok("query_frontend", e) >= base.ok("query_frontend", e) + min_each)
            })
            .await;
            assert!(
                ok.is_some(),
                "the surviving replicas stopped serving:\n{}",
                Metrics::get(gw).await.upstream_lines()
            );
        }
    };
    progress(Metrics::get(gw).await).await;
    // from here on (well after the unhealthy mark) no request is sent to the killed replica
    let before = Metrics::get(gw).await;
    let killed_before = before.all("query_frontend", &killed);
    progress(before).await;

    let (ok, failed, failures) = load.finish().await;
    let after = Metrics::get(gw).await;
    eprintln!(
        "{ok} queries, {failed} failed; {:?} in all\n{}",
        t_start.elapsed(),
        after.upstream_lines()
    );
    assert_eq!(
        failed, 0,
        "queries failed while a replica was killed: {failures:#?}"
    );
    assert_eq!(
        after.all("query_frontend", &killed),
        killed_before,
        "requests were still sent to the unhealthy {killed}:\n{}",
        after.upstream_lines()
    );
    // the kill was noticed by requests too, and they were answered by another replica
    assert!(
        after.requests("query_frontend", &killed, |c| c != "200") >= 1.0,
        "no failed upstream request to {killed} was counted (did the load hit the kill?):\n{}",
        after.upstream_lines()
    );
    for e in &survivors {
        assert_eq!(
            after.healthy("query_frontend", e),
            Some(1.0),
            "{}",
            after.upstream_lines()
        );
    }
    assert_eq!(after.healthy("query_frontend", &killed), Some(0.0));
    assert_eq!(after.healthy("distributor", &dist_ep), Some(1.0));
    let served: f64 = endpoints
        .iter()
        .map(|e| after.ok("query_frontend", e))
        .sum();
    assert_eq!(
        served,
        ok as f64 + 1.0,
        "every query answered is one 200 of a replica:\n{}",
        after.upstream_lines()
    );
    drop(running);
}
