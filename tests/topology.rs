//! Upstream topology over real sockets: per-component endpoints, replicas, balancing, health
//! checks, retries, mirroring and DNS re-resolution, against several in-process recording
//! upstreams per component (see `/tmp/topo/contract.md` and SPEC 11).
//!
//! `Rep` is a replica that records every request but its health checks (`/ready`, counted
//! apart), can answer slowly, close the connection without answering, hang, or be stopped
//! (listener closed and every open connection dropped).

mod common;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use obsgate::proxy::server::Running;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

/// The longest any single await of a test may take.
const T: Duration = Duration::from_secs(10);

/// Fast active health checks.
const HC: &str =
    "{ path: /ready, interval: 200ms, timeout: 1s, unhealthy_after: 2, healthy_after: 1 }";

const QUERY: &str = "/prometheus/api/v1/query?query=up";

// ---------- a replica ----------

#[derive(Clone, Debug)]
struct Got {
    method: http::Method,
    path: String,
    path_and_query: String,
    headers: HeaderMap,
    body: Bytes,
}

/// What a replica does with a request (health checks excepted).
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    /// 200 `ok` (after the replica's delay and the request's `delay_ms=` query parameter).
    Answer = 0,
    /// Reads the whole request, then drops the connection without answering.
    CloseAfterRequest = 1,
    /// Reads the whole request and never answers.
    Hang = 2,
}

struct RepState {
    got: Mutex<Vec<Got>>,
    ready_checks: AtomicUsize,
    ready_status: AtomicU16,
    mode: AtomicU8,
    delay_ms: AtomicU64,
    inflight: AtomicUsize,
    /// Requests answered (a response was handed to the connection).
    answered: AtomicUsize,
}

struct Rep {
    addr: SocketAddr,
    st: Arc<RepState>,
    /// The accept loop and every connection: aborting them closes the port and the connections.
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Drop for Rep {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

struct Inflight(Arc<RepState>);

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Rep {
    async fn start() -> Rep {
        Rep::start_at("127.0.0.1:0".parse().unwrap()).await
    }

    /// A replica on this address (a stopped replica's port, to bring it back).
    async fn start_at(bind: SocketAddr) -> Rep {
        let l = TcpListener::bind(bind).await.unwrap();
        let addr = l.local_addr().unwrap();
        let st = Arc::new(RepState {
            got: Mutex::default(),
            ready_checks: AtomicUsize::new(0),
            ready_status: AtomicU16::new(200),
            mode: AtomicU8::new(Mode::Answer as u8),
            delay_ms: AtomicU64::new(0),
            inflight: AtomicUsize::new(0),
            answered: AtomicUsize::new(0),
        });
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (st2, tasks2) = (st.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = l.accept().await {
                let st = st2.clone();
                let kill = Arc::new(Notify::new());
                let conn = tokio::spawn(async move {
                    let k2 = kill.clone();
                    let svc = service_fn(move |req| rep_handle(st.clone(), k2.clone(), req));
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let serve = builder.serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = serve => {}
                        _ = kill.notified() => {}
                    }
                });
                tasks2.lock().unwrap().push(conn.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        Rep { addr, st, tasks }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    fn set_mode(&self, m: Mode) {
        self.st.mode.store(m as u8, Ordering::SeqCst);
    }

    fn set_ready(&self, code: u16) {
        self.st.ready_status.store(code, Ordering::SeqCst);
    }

    fn set_delay(&self, d: Duration) {
        self.st
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    fn got(&self) -> Vec<Got> {
        self.st.got.lock().unwrap().clone()
    }

    /// Requests received, health checks excepted.
    fn hits(&self) -> usize {
        self.st.got.lock().unwrap().len()
    }

    fn paths(&self) -> Vec<String> {
        self.got().into_iter().map(|g| g.path).collect()
    }

    fn ready_checks(&self) -> usize {
        self.st.ready_checks.load(Ordering::SeqCst)
    }

    fn inflight(&self) -> usize {
        self.st.inflight.load(Ordering::SeqCst)
    }

    fn answered(&self) -> usize {
        self.st.answered.load(Ordering::SeqCst)
    }

    /// How many times exactly this body arrived.
    fn arrivals(&self, body: &[u8]) -> usize {
        self.got().iter().filter(|g| g.body == body).count()
    }

    /// Closes the listener and drops every open connection; returns once the port refuses.
    async fn stop(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        let addr = self.addr;
        let refused = eventually(Duration::from_secs(3), || async move {
            tokio::net::TcpStream::connect(addr).await.is_err()
        })
        .await;
        assert!(
            refused.is_some(),
            "the stopped replica {addr} still accepts"
        );
    }
}

async fn rep_handle(
    st: Arc<RepState>,
    kill: Arc<Notify>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    if path == "/ready" || path == "/-/ready" {
        st.ready_checks.fetch_add(1, Ordering::SeqCst);
        let code = st.ready_status.load(Ordering::SeqCst);
        return Ok(Response::builder()
            .status(code)
            .body(Full::new(Bytes::from_static(b"ready")))
            .unwrap());
    }
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    st.inflight.fetch_add(1, Ordering::SeqCst);
    let _inflight = Inflight(st.clone());
    st.got.lock().unwrap().push(Got {
        method: parts.method.clone(),
        path,
        path_and_query: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts.headers.clone(),
        body,
    });
    let mode = st.mode.load(Ordering::SeqCst);
    if mode == Mode::CloseAfterRequest as u8 {
        kill.notify_one();
        return std::future::pending().await;
    }
    if mode == Mode::Hang as u8 {
        return std::future::pending().await;
    }
    let extra = parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("delay_ms="))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let delay = st.delay_ms.load(Ordering::SeqCst) + extra;
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    st.answered.fetch_add(1, Ordering::SeqCst);
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

/// An address with nothing listening.
fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A mirror that accepts connections and never reads from them nor answers.
struct BlackHole {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl BlackHole {
    async fn start() -> BlackHole {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        BlackHole { addr, task }
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An endpoint that accepts connections and closes them at once, before reading anything.
struct Slammer {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Slammer {
    async fn start() -> Slammer {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepts: Arc<AtomicUsize> = Arc::default();
        let a2 = accepts.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                a2.fetch_add(1, Ordering::SeqCst);
                drop(s);
            }
        });
        Slammer {
            addr,
            accepts,
            task,
        }
    }
}

impl Drop for Slammer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------- the gateway ----------

fn topo_policies() -> String {
    format!(
        r#"tenants:
  - name: team-a
access_policies:
  - name: pol-topo
    scopes: [metrics:read, metrics:write, logs:read, logs:write, logs:delete, rules:read, rules:write, alerts:read, alerts:write, traces:read, traces:write]
    realms:
      - tenant: team-a
tokens:
  - {{name: topo, access_policy: pol-topo, hash: "{}"}}
"#,
        hash(&tok("topo"))
    )
}

fn auth() -> String {
    basic("team-a", &tok("topo"))
}

async fn gateway(backends: &str) -> (Setup, Running) {
    let s = Setup::new(&gateway_yaml(backends, ""), &topo_policies());
    let r = tokio::time::timeout(T, s.start())
        .await
        .expect("gateway started");
    (s, r)
}

async fn stop_gateway(gw: Running) {
    tokio::time::timeout(Duration::from_secs(15), gw.shutdown())
        .await
        .expect("gateway shut down");
}

/// `"http://a", "http://b"` for a YAML flow list.
fn url_list(reps: &[&Rep]) -> String {
    reps.iter()
        .map(|r| format!("\"{}\"", r.url()))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn call(c: &TestClient, req: Request<Full<Bytes>>) -> Reply {
    tokio::time::timeout(T, send(c, req))
        .await
        .expect("the gateway answered in time")
}

async fn read(c: &TestClient, gw: SocketAddr) -> Reply {
    call(c, get(gw, QUERY, Some(&auth()))).await
}

async fn push(c: &TestClient, gw: SocketAddr, body: impl Into<Bytes>) -> Reply {
    call(c, post(gw, "/api/v1/push", Some(&auth()), body)).await
}

/// `n` sequential reads, each must answer 200.
async fn reads_ok(c: &TestClient, gw: SocketAddr, n: usize) {
    for i in 0..n {
        let r = read(c, gw).await;
        assert_eq!(r.status, StatusCode::OK, "read {i}: {:?}", r.body);
    }
}

fn body_of(tag: &str, i: usize, len: usize) -> Bytes {
    let prefix = format!("{tag}-{i}-");
    let mut v = b"abcdefghijklmnopqrstuvwxyz".repeat(len / 26 + 1);
    v.truncate(len.max(prefix.len()));
    v[..prefix.len()].copy_from_slice(prefix.as_bytes());
    Bytes::from(v)
}

// ---------- metrics text ----------

struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

fn parse_labels(mut rest: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (k, r) = rest.split_once("=\"")?;
        let mut v = String::new();
        let mut end = None;
        let mut chars = r.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        v.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = Some(i);
                    break;
                }
                c => v.push(c),
            }
        }
        out.push((k.trim().to_string(), v));
        rest = r[end? + 1..].trim_start_matches(',').trim_start();
    }
    Some(out)
}

fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            let value = value.parse().ok()?;
            let (name, labels) = match head.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.strip_suffix('}')?)?),
                None => (head, Vec::new()),
            };
            Some(Sample {
                name: name.to_string(),
                labels,
                value,
            })
        })
        .collect()
}

/// The sum over the series of `name` that have every label of `want`; `None` when none has.
fn metric(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let hits: Vec<f64> = samples(text)
        .into_iter()
        .filter(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
        })
        .map(|s| s.value)
        .collect();
    (!hits.is_empty()).then(|| hits.iter().sum())
}

async fn metrics_text(gw: SocketAddr) -> String {
    let r = call(&client(), get(gw, "/metrics", None)).await;
    assert_eq!(r.status, StatusCode::OK);
    String::from_utf8(r.body.to_vec()).unwrap()
}

fn healthy_of(text: &str, component: &str, endpoint: &str) -> Option<f64> {
    metric(
        text,
        "obsgate_upstream_endpoint_healthy",
        &[
            ("backend", "metrics"),
            ("component", component),
            ("endpoint", endpoint),
        ],
    )
}

/// Polls `/metrics` until `pred` holds (or 5 s pass); returns whether it did and the last text.
async fn poll_metrics(gw: SocketAddr, pred: impl Fn(&str) -> bool) -> (bool, String) {
    let t0 = Instant::now();
    loop {
        let text = metrics_text(gw).await;
        if pred(&text) {
            return (true, text);
        }
        if t0.elapsed() > Duration::from_secs(5) {
            return (false, text);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the gateway reports `endpoint` of `component` with health `want` (1 or 0).
async fn wait_health(gw: SocketAddr, component: &str, endpoint: &str, want: f64) {
    let (ok, last) = poll_metrics(gw, |t| healthy_of(t, component, endpoint) == Some(want)).await;
    assert!(
        ok,
        "{component} endpoint {endpoint} never reported healthy={want}:\n{}",
        last.lines()
            .filter(|l| l.contains("obsgate_upstream_endpoint_healthy"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

async fn wait_checked(reps: &[&Rep]) {
    let ok = eventually(Duration::from_secs(5), || async {
        reps.iter().all(|r| r.ready_checks() >= 2)
    })
    .await;
    assert!(
        ok.is_some(),
        "every replica got health checks: {:?}",
        reps.iter().map(|r| r.ready_checks()).collect::<Vec<_>>()
    );
}

// ---------- 1. routing and balancing ----------

#[tokio::test]
async fn reads_round_robin_exactly_evenly_over_three_query_frontend_replicas() {
    let q = [Rep::start().await, Rep::start().await, Rep::start().await];
    let dflt = Rep::start().await;
    let more = format!(
        "    components:\n      query_frontend: {{ urls: [{}] }}\n    balance: round_robin\n    health_check: {HC}\n",
        url_list(&[&q[0], &q[1], &q[2]])
    );
    let (_s, gw) = gateway(&backend("metrics", "mimir", &dflt.url(), &more)).await;
    let addr = gw.shared_addr();
    wait_checked(&[&q[0], &q[1], &q[2]]).await;
    let c = client();
    reads_ok(&c, addr, 30).await;
    let hits: Vec<usize> = q.iter().map(Rep::hits).collect();
    assert_eq!(
        hits,
        vec![10, 10, 10],
        "round robin over 3 healthy replicas"
    );
    assert_eq!(dflt.hits(), 0, "reads never go to the backend url");
    for r in &q {
        assert!(r.paths().iter().all(|p| p == "/prometheus/api/v1/query"));
    }
    stop_gateway(gw).await;
}

#[tokio::test]
async fn reads_spread_over_query_frontend_replicas_with_least_inflight() {
    let q = [Rep::start().await, Rep::start().await, Rep::start().await];
    for r in &q {
        r.set_delay(Duration::from_millis(15));
    }
    let dflt = Rep::start().await;
    let more = format!(
        "    components:\n      query_frontend: {{ urls: [{}] }}\n    balance: least_inflight\n    health_check: {HC}\n",
        url_list(&[&q[0], &q[1], &q[2]])
    );
    let (_s, gw) = gateway(&backend("metrics", "mimir", &dflt.url(), &more)).await;
    let addr = gw.shared_addr();
    wait_checked(&[&q[0], &q[1], &q[2]]).await;
    let workers: Vec<_> = (0..6)
        .map(|_| {
            tokio::spawn(async move {
                let c = client();
                let mut codes = Vec::new();
                for _ in 0..10 {
                    codes.push(read(&c, addr).await.status);
                }
                codes
            })
        })
        .collect();
    for w in workers {
        let codes = tokio::time::timeout(T, w).await.unwrap().unwrap();
        assert!(codes.iter().all(|c| *c == StatusCode::OK), "{codes:?}");
    }
    let hits: Vec<usize> = q.iter().map(Rep::hits).collect();
    assert_eq!(hits.iter().sum::<usize>(), 60, "{hits:?}");
    assert!(
        hits.iter().all(|h| *h >= 6),
        "every replica gets a fair share of 60 concurrent reads: {hits:?}"
    );
    assert_eq!(dflt.hits(), 0);
    stop_gateway(gw).await;
}

#[tokio::test]
async fn mimir_pushes_go_to_distributors_rules_to_ruler_unlisted_components_to_backend_url() {
    let d = [Rep::start().await, Rep::start().await];
    let q = [Rep::start().await, Rep::start().await, Rep::start().await];
    let ruler = Rep::start().await;
    let dflt = Rep::start().await;
    let more = format!(
        "    components:\n      distributor: {{ urls: [{}] }}\n      query_frontend: {{ urls: [{}] }}\n      ruler: {{ url: \"{}\" }}\n    balance: round_robin\n",
        url_list(&[&d[0], &d[1]]),
        url_list(&[&q[0], &q[1], &q[2]]),
        ruler.url()
    );
    let (_s, gw) = gateway(&backend("metrics", "mimir", &dflt.url(), &more)).await;
    let addr = gw.shared_addr();
    let c = client();
    for i in 0..4 {
        let r = push(&c, addr, body_of("push", i, 100)).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    let reads = [
        "/prometheus/api/v1/query?query=up",
        "/prometheus/api/v1/query_range?query=up&start=0&end=60&step=15",
        "/prometheus/api/v1/labels",
        "/prometheus/api/v1/series?match[]=up",
        "/prometheus/api/v1/status/buildinfo",
        "/prometheus/api/v1/label/job/values",
    ];
    for p in reads {
        let r = call(&c, get(addr, p, Some(&auth()))).await;
        assert_eq!(r.status, StatusCode::OK, "{p}: {:?}", r.body);
    }
    let rules = [
        "/prometheus/config/v1/rules",
        "/prometheus/config/v1/rules/ns",
        "/prometheus/api/v1/rules",
        "/prometheus/api/v1/alerts",
    ];
    for p in rules {
        let r = call(&c, get(addr, p, Some(&auth()))).await;
        assert_eq!(r.status, StatusCode::OK, "{p}: {:?}", r.body);
    }
    // alertmanager is not listed: the backend url serves it
    for p in ["/api/v1/alerts", "/alertmanager/api/v2/status"] {
        let r = call(&c, get(addr, p, Some(&auth()))).await;
        assert_eq!(r.status, StatusCode::OK, "{p}: {:?}", r.body);
    }

    let dp: Vec<String> = d.iter().flat_map(Rep::paths).collect();
    assert_eq!(dp, vec!["/api/v1/push"; 4], "pushes, and only pushes");
    assert!(
        d.iter().all(|r| r.hits() >= 1),
        "both distributors get pushes: {:?}",
        d.iter().map(Rep::hits).collect::<Vec<_>>()
    );
    let mut qp: Vec<String> = q.iter().flat_map(Rep::paths).collect();
    qp.sort();
    let mut want: Vec<String> = reads
        .iter()
        .map(|p| p.split('?').next().unwrap().to_string())
        .collect();
    want.sort();
    assert_eq!(qp, want, "every read and buildinfo, nothing else");
    assert_eq!(ruler.paths(), rules.to_vec());
    assert_eq!(
        dflt.paths(),
        vec!["/api/v1/alerts", "/alertmanager/api/v2/status"]
    );
    for r in d.iter().chain(&q).chain([&ruler, &dflt]) {
        for g in r.got() {
            assert_eq!(
                g.headers.get("x-scope-orgid").unwrap(),
                "team-a",
                "{}",
                g.path
            );
        }
    }
    stop_gateway(gw).await;
}

#[tokio::test]
async fn loki_push_goes_to_distributor_query_to_query_frontend_delete_to_compactor() {
    let d = Rep::start().await;
    let q = Rep::start().await;
    let x = Rep::start().await;
    let dflt = Rep::start().await;
    let more = format!(
        "    components:\n      distributor: {{ url: \"{}\" }}\n      query_frontend: {{ url: \"{}\" }}\n      compactor: {{ url: \"{}\" }}\n",
        d.url(),
        q.url(),
        x.url()
    );
    let (_s, gw) = gateway(&backend("logs", "loki", &dflt.url(), &more)).await;
    let addr = gw.shared_addr();
    let c = client();
    let a = auth();
    let r = call(&c, post(addr, "/loki/api/v1/push", Some(&a), "{}")).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    for p in [
        "/loki/api/v1/query?query=%7Bapp%3D%22x%22%7D",
        "/loki/api/v1/query_range?query=%7Bapp%3D%22x%22%7D",
        "/loki/api/v1/labels",
    ] {
        let r = call(&c, get(addr, p, Some(&a))).await;
        assert_eq!(r.status, StatusCode::OK, "{p}: {:?}", r.body);
    }
    let r = call(&c, get(addr, "/loki/api/v1/delete", Some(&a))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = call(
        &c,
        post(
            addr,
            "/loki/api/v1/delete?query=%7Bapp%3D%22x%22%7D&start=1",
            Some(&a),
            "",
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // the ruler is not listed: the backend url serves it
    let r = call(&c, get(addr, "/loki/api/v1/rules", Some(&a))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    assert_eq!(d.paths(), vec!["/loki/api/v1/push"]);
    assert_eq!(
        q.paths(),
        vec![
            "/loki/api/v1/query",
            "/loki/api/v1/query_range",
            "/loki/api/v1/labels"
        ]
    );
    assert_eq!(x.paths(), vec!["/loki/api/v1/delete"; 2]);
    assert_eq!(dflt.paths(), vec!["/loki/api/v1/rules"]);
    stop_gateway(gw).await;
}

// ---------- 2. failed replicas cost no read ----------

#[tokio::test]
async fn a_replica_killed_under_load_costs_no_read() {
    let q = [Rep::start().await, Rep::start().await, Rep::start().await];
    // the victim is slow, so that requests are in flight on it when it dies
    q[0].set_delay(Duration::from_millis(400));
    q[1].set_delay(Duration::from_millis(10));
    q[2].set_delay(Duration::from_millis(10));
    let dflt = Rep::start().await;
    let more = format!(
        "    components:\n      query_frontend: {{ urls: [{}] }}\n    health_check: {HC}\n",
        url_list(&[&q[0], &q[1], &q[2]])
    );
    let (_s, gw) = gateway(&backend("metrics", "mimir", &dflt.url(), &more)).await;
    let addr = gw.shared_addr();
    let done = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let done = done.clone();
            tokio::spawn(async move {
                let c = client();
                let mut codes = Vec::new();
                while !done.load(Ordering::SeqCst) {
                    let r = read(&c, addr).await;
                    codes.push((r.status, r.body));
                }
                codes
            })
        })
        .collect();
    let busy = eventually(Duration::from_secs(5), || async { q[0].inflight() >= 1 }).await;
    assert!(busy.is_some(), "the victim got requests under load");
    let before = q[1].hits() + q[2].hits();
    q[0].stop().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    done.store(true, Ordering::SeqCst);
    let mut all = Vec::new();
    for w in workers {
        all.extend(tokio::time::timeout(T, w).await.unwrap().unwrap());
    }
    let failed: Vec<_> = all.iter().filter(|(s, _)| *s != StatusCode::OK).collect();
    assert!(
        failed.is_empty(),
        "{} of {} reads failed: {failed:?}",
        failed.len(),
        all.len()
    );
    assert!(
        q[1].hits() + q[2].hits() > before + 10,
        "the survivors kept serving"
    );
    assert!(
        q[0].hits() > q[0].answered(),
        "reads were in flight on the victim when it died ({} got, {} answered)",
        q[0].hits(),
        q[0].answered()
    );
    assert_eq!(
        q.iter().map(Rep::answered).sum::<usize>(),
        all.len(),
        "every read was answered once by a replica"
    );
    assert_eq!(dflt.hits(), 0);
    stop_gateway(gw).await;
}

#[tokio::test]
async fn a_replica_that_closes_without_answering_costs_no_read() {
    let bad = Rep::start().await;
    bad.set_mode(Mode::CloseAfterRequest);
    let g = [Rep::start().await, Rep::start().await];
    let dflt = Rep::start().await;
    let more = format!(
        "    components:\n      query_frontend: {{ urls: [{}] }}\n    balance: round_robin\n",
        url_list(&[&bad, &g[0], &g[1]])
    );
    let (_s, gw) = gateway(&backend("metrics", "mimir", &dflt.url(), &more)).await;
    let addr = gw.shared_addr();
    let c = client();
    reads_ok(&c, addr, 12).await;
    assert!(bad.hits() >= 1, "the bad replica got reads");
    assert_eq!(
        g[0].hits() + g[1].hits(),
        12,
        "every read was answered once by a good replica"
    );
    stop_gateway(gw).await;
}

#[tokio::test]
async fn a_form_read_lost_by_a_replica_is_replayed_whole_on_another() {
    let bad = Rep::start().await;
    bad.set_mode(Mode::CloseAfterRequest);
    let g = [Rep::start().await, Rep::start().await];
    let dflt = Rep::start().await;
    let more = format!(
        "    components:\n      query_frontend: {{ urls: [{}] }}\n    balance: round_robin\n",
        url_list(&[&bad, &g[0], &g[1]])
    );
    let (_s, gw) = gateway(&backend("metrics", "mimir", &dflt.url(), &more)).await;
    let addr = gw.shared_addr();
    let c = client();
    for i in 0..6 {
        let req = Request::post(format!("http://{addr}/prometheus/api/v1/query"))
            .header("authorization", auth())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(format!(
                "query=sum%28rate%28http_requests_total%5B5m%5D%29%29&time={i}"
            ))))
            .unwrap();
        let r = call(&c, req).await;
        assert_eq!(r.status, StatusCode::OK, "read {i}: {:?}", r.body);
    }
    let lost = bad.got();
    assert!(!lost.is_empty(), "the bad replica got form reads");
    let good: Vec<Got> = g.iter().flat_map(Rep::got).collect();
    assert_eq!(good.len(), 6, "every read answered once by a good replica");
    for l in &lost {
        assert!(!l.body.is_empty());
        assert!(
            good.iter()
                .any(|x| x.method == l.method && x.path == l.path && x.body == l.body),
            "the lost read {:?} was sent again whole",
            l.body
        );
    }
    stop_gateway(gw).await;
}

#[tokio::test]
async fn a_replica_that_closes_on_accept_costs_no_read() {
    let bad = Slammer::start().await;
    let g = [Rep::start().await, Rep::start().await];
    let dflt = Rep::start().await;
    let more = format!(
        "    components:\n      query_frontend: {{ urls: [\"http://{}\", {}] }}\n    balance: round_robin\n",
        bad.addr,
        url_list(&[&g[0], &g[1]])
    );
    let (_s, gw) = gateway(&backend("metrics", "mimir", &dflt.url(), &more)).await;
    let addr = gw.shared_addr();
    let c = client();
    reads_ok(&c, addr, 12).await;
    assert!(
        bad.accepts.load(Ordering::SeqCst) >= 1,
        "the bad replica was tried"
    );
    assert_eq!(g[0].answered() + g[1].answered(), 12);
    stop_gateway(gw).await;
}

// ---------- 3. a write is never duplicated ----------

#[tokio::test]
async fn a_write_whose_connection_drops_after_the_body_is_502_and_never_sent_twice() {
    let a = Rep::start().await;
    a.set_mode(Mode::CloseAfterRequest);
    let b = Rep::start().await;
    let dflt = Rep::start().await;
    let more = format!(
        "    components:\n      distributor: {{ urls: [{}] }}\n    balance: round_robin\n",
        url_list(&[&a, &b])
    );
    let (_s, gw) = gateway(&backend("metrics", "mimir", &dflt.url(), &more)).await;
    let addr = gw.shared_addr();
    let c = client();
    let mut saw_502 = 0;
    for i in 0..6 {
        let body = body_of("write", i, 200 << 10);
        let r = push(&c, addr, body.clone()).await;
        let (at_a, at_b) = (a.arrivals(&body), b.arrivals(&body));
        match r.status {
            StatusCode::BAD_GATEWAY => {
                saw_502 += 1;
                assert_eq!(
                    (at_a, at_b),
                    (1, 0),
                    "push {i}: the body reached the dropping replica once and was not retried"
                );
            }
            StatusCode::OK => assert_eq!((at_a, at_b), (0, 1), "push {i}"),
            s => panic!("push {i}: unexpected {s}: {:?}", r.body),
        }
    }
    assert!(saw_502 >= 1, "a push was sent to the dropping replica");
    assert_eq!(dflt.hits(), 0);
    stop_gateway(gw).await;
}

#[tokio::test]
async fn a_write_to_a_refusing_replica_is_retried_on_the_other_and_arrives_once() {
    let dead = closed_port();
    let b = Rep::start().await;
    let dflt = Rep::start().await;
    let more = format!(
        "    components:\n      distributor: {{ urls: [\"http://{dead}\", \"{}\"] }}\n    balance: round_robin\n",
        b.url()
    );
    let (_s, gw) = gateway(&backend("metrics", "mimir", &dflt.url(), &more)).await;
    let addr = gw.shared_addr();
    let c = client();
    for i in 0..6 {
        let body = body_of("retry", i, 4096);
        let r = push(&c, addr, body.clone()).await;
        assert_eq!(r.status, StatusCode::OK, "push {i}: {:?}", r.body);
        assert_eq!(b.arrivals(&body), 1, "push {i} arrived exactly once");
    }
    assert_eq!(b.hits(), 6);
    assert_eq!(dflt.hits(), 0);
    // the refusing endpoint was really tried (the retry path ran)
    let text = metrics_text(addr).await;
    let dead_ep = dead.to_string();
    let refused = metric(
        &text,
        "obsgate_upstream_requests_total",
        &[
            ("backend", "metrics"),
            ("component", "distributor"),
            ("endpoint", &dead_ep),
            ("code", "connect_error"),
        ],
    );
    assert!(
        refused.is_some_and(|v| v >= 1.0),
        "connect_error counted for {dead_ep}: {refused:?}"
    );
    stop_gateway(gw).await;
}

// ---------- 4. health checks ----------

#[tokio::test]
async fn an_unready_endpoint_gets_no_reads_until_ready_and_all_unhealthy_are_still_tried() {
    let q = [Rep::start().await, Rep::start().await, Rep::start().await];
    let dflt = Rep::start().await;
    let more = format!(
        "    components:\n      query_frontend: {{ urls: [{}] }}\n    balance: round_robin\n    health_check: {HC}\n",
        url_list(&[&q[0], &q[1], &q[2]])
    );
    let (_s, gw) = gateway(&backend("metrics", "mimir", &dflt.url(), &more)).await;
    let addr = gw.shared_addr();
    let c = client();
    for r in &q {
        wait_health(addr, "query_frontend", &r.endpoint(), 1.0).await;
    }

    q[0].set_ready(503);
    wait_health(addr, "query_frontend", &q[0].endpoint(), 0.0).await;
    let before: Vec<usize> = q.iter().map(Rep::hits).collect();
    reads_ok(&c, addr, 12).await;
    let delta: Vec<usize> = q.iter().zip(&before).map(|(r, b)| r.hits() - b).collect();
    assert_eq!(
        delta[0], 0,
        "the unhealthy endpoint gets no reads: {delta:?}"
    );
    assert_eq!(delta[1] + delta[2], 12, "{delta:?}");
    assert!(delta[1] >= 1 && delta[2] >= 1, "{delta:?}");

    q[0].set_ready(200);
    wait_health(addr, "query_frontend", &q[0].endpoint(), 1.0).await;
    let before: Vec<usize> = q.iter().map(Rep::hits).collect();
    reads_ok(&c, addr, 12).await;
    let delta: Vec<usize> = q.iter().zip(&before).map(|(r, b)| r.hits() - b).collect();
    assert!(
        delta.iter().all(|d| *d >= 1),
        "healthy again, it gets reads again: {delta:?}"
    );

    for r in &q {
        r.set_ready(503);
    }
    for r in &q {
        wait_health(addr, "query_frontend", &r.endpoint(), 0.0).await;
    }
    let before: usize = q.iter().map(Rep::hits).sum();
    reads_ok(&c, addr, 6).await;
    assert_eq!(
        q.iter().map(Rep::hits).sum::<usize>() - before,
        6,
        "with every endpoint unhealthy, reads are still tried"
    );
    assert_eq!(dflt.hits(), 0);
    stop_gateway(gw).await;
}

// ---------- 5. DNS re-resolution ----------

#[tokio::test]
async fn dns_changes_move_reads_to_new_addresses_and_drain_in_flight_requests() {
    use obsgate::upstream::{Resolve, StaticResolver};
    let (a, b, cc) = (Rep::start().await, Rep::start().await, Rep::start().await);
    let dflt = Rep::start().await;
    let resolver = Arc::new(StaticResolver::new());
    resolver.set("qf.test", vec![a.addr, b.addr]);
    let more = format!(
        "    components:\n      query_frontend: {{ url: \"dns+http://qf.test:8080\" }}\n    balance: round_robin\n    dns_refresh: 200ms\n    health_check: {HC}\n"
    );
    let s = Setup::new(
        &gateway_yaml(&backend("metrics", "mimir", &dflt.url(), &more), ""),
        &topo_policies(),
    );
    let cfg = obsgate::config::load(&s.path("gateway.yaml")).unwrap();
    let dyn_resolver: Arc<dyn Resolve> = resolver.clone();
    let gw = tokio::time::timeout(
        T,
        obsgate::proxy::server::start_with(
            cfg,
            obsgate::proxy::server::StartOptions {
                resolver: Some(dyn_resolver),
            },
        ),
    )
    .await
    .expect("gateway started")
    .unwrap();
    let addr = gw.shared_addr();
    let c = client();
    wait_health(addr, "query_frontend", &a.endpoint(), 1.0).await;
    wait_health(addr, "query_frontend", &b.endpoint(), 1.0).await;
    reads_ok(&c, addr, 6).await;
    assert!(
        a.hits() >= 1 && b.hits() >= 1 && a.hits() + b.hits() == 6,
        "reads reach both resolved addresses: {} {}",
        a.hits(),
        b.hits()
    );

    // a slow read in flight on a or b while they are removed
    let slow = tokio::spawn(async move {
        let c = client();
        let t0 = Instant::now();
        let r = send(
            &c,
            get(addr, &format!("{QUERY}&delay_ms=2500"), Some(&auth())),
        )
        .await;
        (r.status, t0.elapsed())
    });
    let arrived = eventually(Duration::from_secs(3), || async {
        a.hits() + b.hits() == 7
    })
    .await;
    assert!(arrived.is_some(), "the slow read reached a or b");

    resolver.set("qf.test", vec![cc.addr]);
    let c2 = client();
    let moved = eventually(Duration::from_secs(5), || async {
        let r = read(&c2, addr).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        cc.hits() > 0
    })
    .await;
    assert!(moved.is_some(), "reads never reached the new address");
    assert!(
        !slow.is_finished(),
        "the slow read is still in flight when its endpoint is gone (else nothing was tested)"
    );
    let (a0, b0, c0) = (a.hits(), b.hits(), cc.hits());
    reads_ok(&c, addr, 10).await;
    assert_eq!(
        (a.hits() - a0, b.hits() - b0, cc.hits() - c0),
        (0, 0, 10),
        "after the change reads reach only the new address"
    );
    let (status, took) = tokio::time::timeout(T, slow).await.unwrap().unwrap();
    assert_eq!(status, StatusCode::OK, "the in-flight read was drained");
    assert!(took >= Duration::from_millis(2500), "{took:?}");
    assert_eq!(dflt.hits(), 0);
    stop_gateway(gw).await;
}

// ---------- 6. mirroring ----------

fn mirror_yaml(url: &str, fraction: &str, max_inflight: Option<usize>) -> String {
    let mut s = format!("    mirror:\n      - {{ url: \"{url}\", fraction: {fraction} }}\n");
    if let Some(n) = max_inflight {
        s.push_str(&format!("    mirror_max_inflight: {n}\n"));
    }
    s
}

fn push_with_headers(gw: SocketAddr, path: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::post(format!("http://{gw}{path}"))
        .header("authorization", auth())
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "snappy")
        .header("x-prometheus-remote-write-version", "0.1.0")
        .body(Full::new(body))
        .unwrap()
}

fn mirror_results(text: &str, mirror: &str, result: &str) -> f64 {
    metric(
        text,
        "obsgate_mirror_requests_total",
        &[
            ("backend", "metrics"),
            ("mirror", mirror),
            ("result", result),
        ],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn every_push_is_mirrored_with_path_body_and_tenant_and_reads_never_are() {
    let primary = Rep::start().await;
    let m = Rep::start().await;
    let (_s, gw) = gateway(&backend(
        "metrics",
        "mimir",
        &primary.url(),
        &mirror_yaml(&m.url(), "1.0", None),
    ))
    .await;
    let addr = gw.shared_addr();
    let c = client();
    let mut bodies = Vec::new();
    for i in 0..5 {
        let body = body_of("mirrored", i, 10_000);
        let r = call(&c, push_with_headers(addr, "/api/v1/push", body.clone())).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        bodies.push(body);
    }
    let otlp = body_of("otlp", 0, 300);
    let r = call(
        &c,
        push_with_headers(addr, "/otlp/v1/metrics", otlp.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    bodies.push(otlp);
    reads_ok(&c, addr, 3).await;
    let all = eventually(Duration::from_secs(5), || async { m.hits() >= 6 }).await;
    assert!(all.is_some(), "the mirror got {} of 6 writes", m.hits());
    // give stray copies of the reads time to arrive
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(m.hits(), 6, "reads are never mirrored: {:?}", m.paths());
    let prim = primary.got();
    for body in &bodies {
        let p = prim
            .iter()
            .find(|g| g.body == body)
            .expect("the primary got the write");
        let copies: Vec<Got> = m.got().into_iter().filter(|g| g.body == body).collect();
        assert_eq!(copies.len(), 1, "one copy of each write");
        let cp = &copies[0];
        assert_eq!(cp.method, http::Method::POST);
        assert_eq!(cp.path_and_query, p.path_and_query);
        assert_eq!(cp.headers.get("x-scope-orgid").unwrap(), "team-a");
        for h in [
            "content-type",
            "content-encoding",
            "x-prometheus-remote-write-version",
        ] {
            assert_eq!(cp.headers.get(h), p.headers.get(h), "{h}");
        }
        assert!(cp.headers.get("authorization").is_none());
    }
    assert_eq!(
        primary.hits(),
        9,
        "the primary got every write and read once"
    );
    let mep = m.endpoint();
    let (ok, last) = poll_metrics(addr, |t| mirror_results(t, &mep, "ok") == 6.0).await;
    assert!(ok, "obsgate_mirror_requests_total ok counts 6:\n{last}");
    stop_gateway(gw).await;
}

#[tokio::test]
async fn a_dead_mirror_changes_nothing_for_pushes_and_is_counted() {
    let primary = Rep::start().await;
    let dead = closed_port();
    let (_s, gw) = gateway(&backend(
        "metrics",
        "mimir",
        &primary.url(),
        &mirror_yaml(&format!("http://{dead}"), "1.0", None),
    ))
    .await;
    let addr = gw.shared_addr();
    let c = client();
    let t0 = Instant::now();
    for i in 0..10 {
        let body = body_of("dead-mirror", i, 1000);
        let t = Instant::now();
        let r = push(&c, addr, body).await;
        assert_eq!(r.status, StatusCode::OK, "push {i}: {:?}", r.body);
        assert!(t.elapsed() < Duration::from_secs(1), "push {i} slowed");
    }
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(primary.hits(), 10);
    let ep = dead.to_string();
    let (counted, last) = poll_metrics(addr, |t| {
        mirror_results(t, &ep, "error") + mirror_results(t, &ep, "dropped") == 10.0
    })
    .await;
    assert!(
        counted,
        "the 10 failed copies are counted (error or dropped):\n{last}"
    );
    assert_eq!(mirror_results(&last, &ep, "ok"), 0.0);
    stop_gateway(gw).await;
}

#[tokio::test]
async fn a_hanging_mirror_changes_nothing_for_pushes_and_is_counted() {
    let primary = Rep::start().await;
    let hole = BlackHole::start().await;
    let (_s, gw) = gateway(&backend(
        "metrics",
        "mimir",
        &primary.url(),
        &mirror_yaml(&format!("http://{}", hole.addr), "1.0", Some(2)),
    ))
    .await;
    let addr = gw.shared_addr();
    let c = client();
    let t0 = Instant::now();
    for i in 0..10 {
        // larger than socket buffers: a copy cannot be written out to the hole
        let body = body_of("hang-mirror", i, 4 << 20);
        let t = Instant::now();
        let r = push(&c, addr, body).await;
        assert_eq!(r.status, StatusCode::OK, "push {i}: {:?}", r.body);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "push {i} slowed: {:?}",
            t.elapsed()
        );
    }
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
    assert_eq!(primary.hits(), 10);
    let ep = hole.addr.to_string();
    let (counted, last) = poll_metrics(addr, |t| {
        mirror_results(t, &ep, "error") + mirror_results(t, &ep, "dropped") >= 8.0
    })
    .await;
    assert!(
        counted,
        "copies past mirror_max_inflight (2) are dropped and counted:\n{last}"
    );
    assert_eq!(mirror_results(&last, &ep, "ok"), 0.0);
    drop(hole);
    stop_gateway(gw).await;
}

#[tokio::test]
async fn a_mirror_with_fraction_zero_gets_nothing() {
    let primary = Rep::start().await;
    let m = Rep::start().await;
    let (_s, gw) = gateway(&backend(
        "metrics",
        "mimir",
        &primary.url(),
        &mirror_yaml(&m.url(), "0", None),
    ))
    .await;
    let addr = gw.shared_addr();
    let c = client();
    for i in 0..10 {
        let r = push(&c, addr, body_of("unmirrored", i, 100)).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(primary.hits(), 10);
    assert_eq!(m.hits(), 0, "fraction 0 copies nothing");
    let text = metrics_text(addr).await;
    let ep = m.endpoint();
    for result in ["ok", "error", "dropped"] {
        assert_eq!(mirror_results(&text, &ep, result), 0.0, "{result}");
    }
    stop_gateway(gw).await;
}

// ---------- 7. metrics ----------

#[tokio::test]
async fn metrics_count_upstream_requests_per_endpoint_and_durations_per_component() {
    let q = [Rep::start().await, Rep::start().await, Rep::start().await];
    let d = Rep::start().await;
    let dead = closed_port();
    let dflt = Rep::start().await;
    let more = format!(
        "    components:\n      query_frontend: {{ urls: [{}] }}\n      distributor: {{ urls: [\"http://{dead}\", \"{}\"] }}\n    balance: round_robin\n",
        url_list(&[&q[0], &q[1], &q[2]]),
        d.url()
    );
    let (_s, gw) = gateway(&backend("metrics", "mimir", &dflt.url(), &more)).await;
    let addr = gw.shared_addr();
    let c = client();
    reads_ok(&c, addr, 6).await;
    for i in 0..4 {
        let r = push(&c, addr, body_of("m", i, 100)).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    let text = metrics_text(addr).await;
    let upstream = |component: &str, endpoint: &str, code: &str| {
        metric(
            &text,
            "obsgate_upstream_requests_total",
            &[
                ("backend", "metrics"),
                ("component", component),
                ("endpoint", endpoint),
                ("code", code),
            ],
        )
    };
    for r in &q {
        assert!(r.hits() >= 1);
        assert_eq!(
            upstream("query_frontend", &r.endpoint(), "200"),
            Some(r.hits() as f64),
            "query_frontend {}:\n{text}",
            r.endpoint()
        );
        assert!(
            healthy_of(&text, "query_frontend", &r.endpoint()).is_some(),
            "endpoint health of {}",
            r.endpoint()
        );
        assert_eq!(
            metric(
                &text,
                "obsgate_upstream_inflight",
                &[
                    ("backend", "metrics"),
                    ("component", "query_frontend"),
                    ("endpoint", &r.endpoint()),
                ],
            ),
            Some(0.0),
            "nothing in flight on {}",
            r.endpoint()
        );
    }
    assert_eq!(d.hits(), 4);
    assert_eq!(
        upstream("distributor", &d.endpoint(), "200"),
        Some(4.0),
        "{text}"
    );
    assert!(
        upstream("distributor", &dead.to_string(), "connect_error").is_some_and(|v| v >= 1.0),
        "{text}"
    );
    assert_eq!(
        upstream("query_frontend", &d.endpoint(), "200"),
        None,
        "no series for an endpoint of another component"
    );
    let count = |component: &str| {
        metric(
            &text,
            "obsgate_request_duration_seconds_count",
            &[("backend", "metrics"), ("component", component)],
        )
    };
    assert_eq!(count("query_frontend"), Some(6.0), "{text}");
    assert_eq!(count("distributor"), Some(4.0), "{text}");
    assert!(
        text.lines().any(
            |l| l.starts_with("obsgate_request_duration_seconds_bucket{")
                && l.contains("component=\"query_frontend\"")
        ),
        "{text}"
    );
    stop_gateway(gw).await;
}

// ---------- 8. config errors ----------

const TOPOLOGY_YAML: &str = r#"backends:
  metrics:
    kind: mimir
    url: "http://127.0.0.1:9009"
    balance: round_robin
    components:
      distributor: { urls: ["http://127.0.0.1:9001", "http://127.0.0.1:9002"] }
      query_frontend: { url: "dns+http://qf.test:8080" }
    mirror:
      - { url: "http://127.0.0.1:9100", fraction: 0.5 }
  traces:
    kind: tempo
    url: "http://127.0.0.1:3200"
    components:
      distributor: { url: "http://127.0.0.1:4318" }
"#;

/// `TOPOLOGY_YAML` with line `line` (1-based) replaced.
fn with_line(line: usize, text: &str) -> String {
    let mut lines: Vec<&str> = TOPOLOGY_YAML.lines().collect();
    lines[line - 1] = text;
    lines.join("\n") + "\n"
}

#[test]
fn topology_config_errors_are_located_at_the_offending_line() {
    let path = Path::new("/etc/obsgate/gateway.yaml");
    if let Err(e) = obsgate::config::parse(path, TOPOLOGY_YAML) {
        panic!("the base config is valid: {e}");
    }
    let cases: [(usize, &str, &[&str]); 8] = [
        (
            8,
            r#"      ingester: { url: "http://127.0.0.1:1" }"#,
            &["ingester"],
        ),
        (
            15,
            r#"      querier: { url: "http://127.0.0.1:1" }"#,
            &["querier"],
        ),
        (
            7,
            r#"      distributor: { url: "http://127.0.0.1:1", urls: ["http://127.0.0.1:2"] }"#,
            &["url"],
        ),
        (7, r#"      distributor: { urls: [] }"#, &["urls"]),
        (
            8,
            r#"      query_frontend: { url: "dns+ftp://qf.test:8080" }"#,
            &["dns+ftp"],
        ),
        (5, "    balance: random", &["random"]),
        (
            10,
            r#"      - { url: "http://127.0.0.1:9100", fraction: 1.5 }"#,
            &["fraction", "1.5"],
        ),
        (
            10,
            r#"      - { url: "http://127.0.0.1:9100", fraction: -0.1 }"#,
            &["fraction", "-0.1"],
        ),
    ];
    for (line, text, words) in cases {
        let yaml = with_line(line, text);
        let e = match obsgate::config::parse(path, &yaml) {
            Ok(_) => panic!("accepted line {line}: {text}"),
            Err(e) => e,
        };
        let display = e.to_string();
        let prefix = format!("{}:{line}:", path.display());
        let located = display.lines().any(|l| {
            l.strip_prefix(&prefix).is_some_and(|rest| {
                let (col, msg) = rest.split_once(": ").unwrap_or(("", ""));
                !col.is_empty()
                    && col.chars().all(|c| c.is_ascii_digit())
                    && col != "0"
                    && words.iter().any(|w| msg.contains(w))
            })
        });
        assert!(
            located,
            "line {line} ({text}) → want {prefix}COL: …{words:?}…, got:\n{display}"
        );
    }
}

// ---------- review fixes ----------

#[tokio::test]
async fn remote_read_is_an_export_and_never_mirrored() {
    let primary = Rep::start().await;
    let m = Rep::start().await;
    let (_s, gw) = gateway(&backend(
        "metrics",
        "mimir",
        &primary.url(),
        &mirror_yaml(&m.url(), "1.0", None),
    ))
    .await;
    let addr = gw.shared_addr();
    let c = client();
    let r = call(
        &c,
        post(
            addr,
            "/prometheus/api/v1/read",
            Some(&auth()),
            "snappy-read",
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // a write afterwards is mirrored: the mirror works, and got only that
    let r = push(&c, addr, "a write").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let got = eventually(Duration::from_secs(5), || async { m.hits() >= 1 }).await;
    assert!(got.is_some(), "the write was mirrored");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        m.paths(),
        vec!["/api/v1/push"],
        "remote read is not a write"
    );
    assert_eq!(primary.hits(), 2);
    stop_gateway(gw).await;
}

#[tokio::test]
async fn an_http2_push_is_mirrored_whole() {
    // over HTTP/2 the client's body says it has ended with its last DATA frame, and hyper
    // never polls it to the end: the copy must still be completed
    let primary = Rep::start().await;
    let m = Rep::start().await;
    let (_s, gw) = gateway(&backend(
        "metrics",
        "mimir",
        &primary.url(),
        &mirror_yaml(&m.url(), "1.0", None),
    ))
    .await;
    let addr = gw.shared_addr();
    let c = h2c_client();
    let mut bodies = Vec::new();
    for i in 0..3 {
        let body = body_of("h2", i, 50_000);
        let r = call(&c, push_with_headers(addr, "/api/v1/push", body.clone())).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        bodies.push(body);
    }
    let all = eventually(Duration::from_secs(5), || async { m.hits() >= 3 }).await;
    assert!(all.is_some(), "the mirror got {} of 3 h2 writes", m.hits());
    for b in &bodies {
        assert_eq!(m.arrivals(b), 1, "each copy arrived whole, once");
    }
    let mep = m.endpoint();
    let (ok, last) = poll_metrics(addr, |t| mirror_results(t, &mep, "ok") == 3.0).await;
    assert!(ok, "three copies counted ok:\n{last}");
    stop_gateway(gw).await;
}

#[tokio::test]
async fn an_ejected_endpoint_without_active_checks_gets_a_trial_after_the_interval() {
    let a = Rep::start().await;
    let b = Rep::start().await;
    let a_addr = a.addr;
    let (_s, gw) = gateway(&backend(
        "metrics",
        "mimir",
        &b.url(),
        &format!(
            "    components:\n      query_frontend: {{ urls: [{}] }}\n    balance: round_robin\n    health_check: {{ enabled: false, interval: 300ms, unhealthy_after: 2 }}\n",
            url_list(&[&a, &b])
        ),
    ))
    .await;
    let addr = gw.shared_addr();
    let c = client();
    reads_ok(&c, addr, 4).await;
    assert_eq!(a.ready_checks() + b.ready_checks(), 0, "no active checks");
    a.stop().await;
    // connection failures eject a; every read is retried on b
    reads_ok(&c, addr, 8).await;
    wait_health(addr, "query_frontend", &a_addr.to_string(), 0.0).await;
    // a comes back on the same port: after the interval it gets a trial read, and is back
    let a2 = Rep::start_at(a_addr).await;
    let back = eventually(Duration::from_secs(10), || async {
        reads_ok(&c, addr, 2).await;
        a2.hits() > 0
    })
    .await;
    assert!(
        back.is_some(),
        "the ejected endpoint never got a trial read"
    );
    wait_health(addr, "query_frontend", &a_addr.to_string(), 1.0).await;
    stop_gateway(gw).await;
}

#[tokio::test]
async fn a_connect_timeout_is_504_not_502() {
    // a listener whose accept queue is full: connects hang (the SYN is dropped)
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let l = sock.listen(1).unwrap();
    let full_addr = l.local_addr().unwrap();
    let mut held = Vec::new();
    let mut hangs = false;
    for _ in 0..32 {
        match tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(full_addr),
        )
        .await
        {
            Ok(Ok(s)) => held.push(s),
            _ => {
                hangs = true;
                break;
            }
        }
    }
    assert!(hangs, "could not fill the accept queue");
    let (_s, gw) = gateway(&backend(
        "metrics",
        "mimir",
        &format!("http://{full_addr}"),
        "    connect_timeout: 300ms\n",
    ))
    .await;
    let addr = gw.shared_addr();
    let r = read(&client(), addr).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{:?}", r.body);
    let text = metrics_text(addr).await;
    assert_eq!(
        metric(
            &text,
            "obsgate_upstream_errors_total",
            &[("backend", "metrics"), ("kind", "timeout")]
        ),
        Some(1.0),
        "{text}"
    );
    drop(l);
    stop_gateway(gw).await;
}
