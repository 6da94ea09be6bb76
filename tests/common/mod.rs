//! Test harness: an in-process recording upstream and a gateway started on ephemeral ports.
#![allow(dead_code)]

pub mod procs;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use obsgate::proxy::server::{Running, start};
use sha2::{Digest, Sha256};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: http::Method,
    pub uri: http::Uri,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body_len: usize,
    pub body_sha256: [u8; 32],
}

/// An upstream that records every request it gets. Behaviour by path:
/// `.../slow` waits 3 s; `/loki/api/v1/tail` with Upgrade answers 101 and echoes;
/// `application/grpc` answers with a message and `grpc-status` trailers; `?big=N` answers
/// N MiB; everything else answers 200 `ok` with hop-by-hop headers the gateway must strip.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start() -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let s2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = l.accept().await else {
                    return;
                };
                let seen = s2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| upstream_handle(seen.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.requests()
            .last()
            .cloned()
            .expect("the upstream received a request")
    }
}

type UpBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>;

async fn upstream_handle(
    seen: Arc<Mutex<Vec<Recorded>>>,
    mut req: Request<Incoming>,
) -> Result<Response<UpBody>, std::convert::Infallible> {
    let upgrade = req.headers().contains_key(http::header::UPGRADE);
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    seen.lock().unwrap().push(Recorded {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body_len: bytes.len(),
        body_sha256: Sha256::digest(&bytes).into(),
    });
    let path = parts.uri.path().to_string();
    if path.ends_with("/slow") || parts.uri.query().is_some_and(|q| q.contains("slow=1")) {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if let Some(up) = on_upgrade {
        tokio::spawn(async move {
            if let Ok(io) = up.await {
                let mut io = TokioIo::new(io);
                let mut buf = [0u8; 1024];
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        return Ok(Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Full::new(Bytes::new()).boxed_unsync())
            .unwrap());
    }
    if parts
        .headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
    {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", "all-good".parse().unwrap());
        let body = Full::new(Bytes::from_static(b"\x00\x00\x00\x00\x02hi"))
            .with_trailers(async move { Some(Ok(trailers)) })
            .boxed_unsync();
        return Ok(Response::builder()
            .header("content-type", "application/grpc")
            .body(body)
            .unwrap());
    }
    if let Some(mib) = parts
        .uri
        .query()
        .and_then(|q| q.strip_prefix("big="))
        .and_then(|n| n.parse::<usize>().ok())
    {
        let data = Bytes::from(vec![b'x'; mib << 20]);
        return Ok(Response::new(Full::new(data).boxed_unsync()));
    }
    Ok(Response::builder()
        .header("x-upstream", "yes")
        .header("connection", "x-up-hop")
        .header("x-up-hop", "1")
        .header("keep-alive", "timeout=5")
        .body(Full::new(Bytes::from_static(b"ok")).boxed_unsync())
        .unwrap())
}

pub fn glc(policy: &str, name: &str) -> String {
    let payload = format!(
        r#"{{"o":"1","n":"{policy}-{name}","k":"secret-{policy}-{name}","m":{{"r":"test"}}}}"#
    );
    format!(
        "glc_{}",
        base64::engine::general_purpose::STANDARD.encode(payload)
    )
}

pub fn hash(token: &str) -> String {
    obsgate::token::TokenHash::of(token).stored()
}

/// A temporary config directory with a gateway.yaml and one policies.yaml.
pub struct Setup {
    pub dir: tempfile::TempDir,
}

impl Setup {
    pub fn new(gateway_yaml: &str, policies_yaml: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("gateway.yaml"), gateway_yaml).unwrap();
        std::fs::write(dir.path().join("policies.yaml"), policies_yaml).unwrap();
        Setup { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces the policy file the way editors do: write a temp file, rename it over.
    pub fn replace_policies(&self, text: &str) {
        let tmp = self.path(".policies.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.path("policies.yaml")).unwrap();
    }

    pub async fn start(&self) -> Running {
        let cfg = obsgate::config::load(&self.path("gateway.yaml")).unwrap();
        start(cfg).await.unwrap()
    }
}

/// A gateway.yaml with `metrics` (mimir) and whatever extra YAML lines are given.
pub fn gateway_yaml(backends: &str, extra: &str) -> String {
    format!(
        "server:\n  listen: \"127.0.0.1:0\"\n  shutdown_grace: 10s\ncluster: local\nstore:\n  policy_files: [policies.yaml]\n  poll_interval: 100ms\nbackends:\n{backends}\n{extra}\n"
    )
}

pub fn backend(slot: &str, kind: &str, url: &str, more: &str) -> String {
    format!("  {slot}:\n    kind: {kind}\n    url: \"{url}\"\n{more}")
}

/// The policy set most tests use.
pub fn policies() -> String {
    format!(
        r#"tenants:
  - name: team-a
  - name: team-b
  - name: team-off
    status: inactive
access_policies:
  - name: pol-rw
    scopes: [metrics:read, metrics:write, logs:read, logs:write, traces:read, traces:write, profiles:write]
    realms:
      - tenant: team-a
  - name: pol-ro
    scopes: [metrics:read, logs:read]
    realms:
      - tenant: team-a
  - name: all-tenants
    scopes: [metrics:read]
    realms:
      - tenant: "*"
  - name: lbac
    scopes: [metrics:read, logs:read]
    realms:
      - tenant: team-a
        label_policies:
          - selector: '{{env="prod", team=~"a|b"}}'
  - name: local-only
    scopes: [metrics:read]
    realms: [{{tenant: team-a}}]
    conditions:
      allowed_subnets: ["127.0.0.1/32"]
  - name: vpn-only
    scopes: [metrics:read]
    realms: [{{tenant: team-a}}]
    conditions:
      allowed_subnets: ["10.0.0.0/8"]
  - name: pol-off
    status: inactive
    scopes: [metrics:read]
    realms: [{{tenant: team-a}}]
tokens:
  - {{name: rw, access_policy: pol-rw, hash: "{}"}}
  - {{name: ro, access_policy: pol-ro, hash: "{}"}}
  - {{name: all, access_policy: all-tenants, hash: "{}"}}
  - {{name: lbac, access_policy: lbac, hash: "{}"}}
  - {{name: local-only, access_policy: local-only, hash: "{}"}}
  - {{name: vpn-only, access_policy: vpn-only, hash: "{}"}}
  - {{name: revoked, access_policy: pol-rw, status: inactive, hash: "{}"}}
  - {{name: expired, access_policy: pol-rw, expires_at: "2020-01-01T00:00:00Z", hash: "{}"}}
  - {{name: policy-off, access_policy: pol-off, hash: "{}"}}
"#,
        hash(&tok("rw")),
        hash(&tok("ro")),
        hash(&tok("all")),
        hash(&tok("lbac")),
        hash(&tok("local-only")),
        hash(&tok("vpn-only")),
        hash(&tok("revoked")),
        hash(&tok("expired")),
        hash(&tok("policy-off")),
    )
}

pub fn tok(name: &str) -> String {
    glc("test", name)
}

pub fn basic(tenant: &str, token: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{tenant}:{token}"))
    )
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub fn client_from(ip: IpAddr) -> TestClient {
    let mut c = HttpConnector::new();
    c.set_local_address(Some(ip));
    Client::builder(TokioExecutor::new()).build(c)
}

pub fn h2c_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or("").to_string()
    }
}

pub async fn send(c: &TestClient, req: Request<Full<Bytes>>) -> Reply {
    let r = c.request(req).await.expect("gateway answered");
    let (p, b) = r.into_parts();
    let body = b.collect().await.unwrap().to_bytes();
    Reply {
        status: p.status,
        headers: p.headers,
        body,
    }
}

pub fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = Request::get(format!("http://{addr}{path}"));
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

pub fn post(
    addr: SocketAddr,
    path: &str,
    auth: Option<&str>,
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut b = Request::post(format!("http://{addr}{path}"));
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    b.body(Full::new(body.into())).unwrap()
}

/// Polls until `f` is true or `limit` passes; returns how long it took.
pub async fn eventually<F, Fut>(limit: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = std::time::Instant::now();
    while t0.elapsed() < limit {
        if f().await {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// A request as the holder of `tok(who)` (Bearer), with an optional JSON body.
pub async fn call(
    gw: SocketAddr,
    who: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Reply {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{gw}{path}"))
        .header("authorization", format!("Bearer {}", tok(who)))
        .body(Full::new(Bytes::from(
            body.map(|v| v.to_string()).unwrap_or_default(),
        )))
        .unwrap();
    send(&client(), req).await
}

/// Every file under `dir` (recursively), as text: what the admin store keeps on disk.
#[allow(dead_code)]
pub fn files_text(dir: &std::path::Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out += &String::from_utf8_lossy(&std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// A private CA and a server certificate for `localhost` it signed (PEM).
pub struct LocalhostPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn localhost_pki() -> LocalhostPki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    LocalhostPki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}
