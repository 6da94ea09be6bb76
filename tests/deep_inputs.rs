//! Deep and huge inputs against the real binary (`obsgate serve`), so that every query runs on
//! the gateway's own worker threads with their real stacks: a stack overflow there is no panic
//! but an abort of the whole process (SIGABRT, "has overflowed its stack"), which only a test
//! that watches the process can see.
//!
//! Each test sends one family of recursive inputs and then checks that the process is still
//! running (`try_wait()` is `None`), still answers `GET /ready` and still serves a normal
//! restricted query:
//! - PromQL and LogQL queries of every recursive shape exactly at `lbac.max_query_depth` (200,
//!   and the backend gets the query with the policy in every selector) and one level over it
//!   (400 naming `lbac.max_query_depth`), by query string and by form body;
//! - queries of 100k+ levels and of 1 MiB (400 naming `lbac.max_query_bytes` or
//!   `lbac.max_query_depth`, within 5 s), with the header and body limits raised so that they
//!   reach the LBAC layer; in a query string only up to 64 KiB can: hyper answers 414 to a
//!   longer request target (`http::Uri`'s limit), whatever `limits.max_header_bytes` says;
//! - `lbac.max_query_depth: 1024` (the maximum a config may set): every PromQL shape at 1024 is
//!   200 on the real worker stacks, and a config with 1025 is refused;
//! - a `glc_` token whose JSON nests 100k deep (401), admin API bodies nesting 100k deep (400),
//!   a label policy with a regex nesting 100k deep through the admin API (400);
//! - policy files nesting 100k deep (flow), 10k deep (block), alias bombs and a 100k-deep
//!   label-policy regex: `obsgate check` exits 1 with an error line, and a running gateway whose
//!   file is replaced by any of them keeps its last good set and counts a failed reload.
//!
//! Checked against the code before the limits (e6c1bd8), whose workers had tokio's 2 MiB
//! stacks: a PromQL query of `sum(` ×2000, `a+` ×2000, `(` ×60k, `-` ×100k, `or` ×20k, `^`
//! ×60k or `max_over_time(…[5m:1m])` ×5000 aborts `obsgate serve` (SIGABRT, "has overflowed
//! its stack"), which `Gateway::call`/`assert_alive` report as "THE GATEWAY DIED: signal: 6";
//! LogQL was not parsed for depth (deep queries were forwarded), so the one-over assertions
//! fail there (200, not 400).

mod common;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use obsgate::lbac::{logql, promql};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------- a backend that records query parameters ----------

#[derive(Debug, Clone)]
struct Seen {
    path: String,
    /// query string and form body, decoded, in that order
    params: Vec<(String, String)>,
}

/// Answers every request 200 with an empty Prometheus/Loki result, recording path and parameters
/// (the harness' `Upstream` keeps only a hash of the body, and the form body matters here).
struct Backend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    async fn start() -> Backend {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let s2 = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = l.accept().await {
                let seen = s2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let mut params: Vec<(String, String)> =
                                form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
                                    .into_owned()
                                    .collect();
                            params.extend(form_urlencoded::parse(&body).into_owned());
                            seen.lock().unwrap().push(Seen {
                                path: parts.uri.path().to_string(),
                                params,
                            });
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from_static(
                                        br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
                                    )))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .max_buf_size(64 << 20)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Backend { addr, seen, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the backend got a request")
    }

    /// The values of `key` in the last request the backend got.
    fn last_param(&self, key: &str) -> Vec<String> {
        self.last()
            .params
            .into_iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v)
            .collect()
    }
}

// ---------- a raw HTTP/1.1 client ----------

/// One request on a fresh connection, written as bytes: `http::Uri` refuses targets over 64 KiB,
/// and these tests send megabytes in the query string. Answers are read to the close.
async fn try_raw(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply, String> {
    let what = format!(
        "{method} {}… ({} bytes)",
        &target[..target.len().min(60)],
        target.len() + body.len()
    );
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("{what}: cannot connect: {e}"))?;
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    // a gateway that answers before reading everything may close early: read what it said
    let _ = s.write_all(head.as_bytes()).await;
    let _ = s.write_all(body).await;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut buf))
        .await
        .map_err(|_| format!("{what}: no answer within 60 s"))?
        .map_err(|e| format!("{what}: reading the answer: {e}"))?;
    parse_response(&buf).ok_or_else(|| {
        format!(
            "{what}: no HTTP response: {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(200)])
        )
    })
}

fn parse_response(buf: &[u8]) -> Option<Reply> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut headers = HeaderMap::new();
    for l in lines {
        let (k, v) = l.split_once(':')?;
        headers.append(
            HeaderName::from_bytes(k.trim().as_bytes()).ok()?,
            HeaderValue::from_str(v.trim()).ok()?,
        );
    }
    let mut body = buf[end + 4..].to_vec();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"))
    {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let nl = rest.windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..nl]).ok()?.trim(), 16).ok()?;
            rest = &rest[nl + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
        body = out;
    }
    Some(Reply {
        status: StatusCode::from_u16(status).ok()?,
        headers,
        body: Bytes::from(body),
    })
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

// ---------- the gateway as a process ----------

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

/// Rewrite mode, and header and body limits raised so that megabyte queries reach the LBAC layer
/// (the README's limits: `max_header_bytes` up to 16 MiB, `max_read_body_bytes` up to 16 MiB).
const BIG_LIMITS: &str = "limits:\n  max_header_bytes: 8388608\n  max_read_body_bytes: 8388608\nlbac:\n  mode: rewrite\n";

fn deep_policies() -> String {
    format!(
        r#"tenants:
  - name: team-a
access_policies:
  - name: prod
    scopes: [metrics:read, logs:read]
    realms:
      - tenant: team-a
        label_policies:
          - selector: '{{env="prod"}}'
  - name: admin
    scopes: [admin]
    conditions:
      allowed_subnets: ["127.0.0.0/8"]
tokens:
  - {{name: prod, access_policy: prod, hash: "{}"}}
  - {{name: admin, access_policy: admin, hash: "{}"}}
"#,
        hash(&tok("prod")),
        hash(&tok("admin")),
    )
}

fn prod_auth() -> String {
    format!("Bearer {}", tok("prod"))
}

struct Gateway {
    child: Child,
    addr: SocketAddr,
    setup: Setup,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `obsgate serve` with `metrics` (prometheus) and `logs` (loki) at `backend` and the
/// `lbac`/`limits` sections in `extra`; waits for `/ready`.
async fn serve(backend_url: &str, extra: &str, policies: &str) -> Gateway {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let backends = format!(
        "{}{}",
        backend("metrics", "prometheus", backend_url, ""),
        backend("logs", "loki", backend_url, "")
    );
    let yaml = gateway_yaml(&backends, extra).replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let setup = Setup::new(&yaml, policies);
    let log = std::fs::File::create(setup.path("obsgate.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_obsgate"))
        .args(["serve", "--config"])
        .arg(setup.path("gateway.yaml"))
        .env("OBSGATE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut g = Gateway {
        child,
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        setup,
    };
    let t0 = Instant::now();
    loop {
        if let Some(st) = g.child.try_wait().unwrap() {
            panic!("obsgate serve exited at start: {st}\n{}", g.log());
        }
        if let Ok(mut s) = TcpStream::connect(g.addr).await {
            let _ = s
                .write_all(b"GET /ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await;
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
            if buf.starts_with(b"HTTP/1.1 200") {
                return g;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "gateway not ready\n{}",
            g.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Gateway {
    /// One request; if it gets no answer, says whether the process died and how.
    async fn call(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        match try_raw(self.addr, method, target, headers, body).await {
            Ok(r) => r,
            Err(e) => {
                for _ in 0..40 {
                    if let Some(st) = self.child.try_wait().unwrap() {
                        panic!(
                            "{e}\nTHE GATEWAY DIED: {st}\n--- its log ---\n{}",
                            self.log()
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                panic!(
                    "{e} (the process is still running)\n--- its log ---\n{}",
                    self.log()
                );
            }
        }
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.setup.path("obsgate.log")).unwrap_or_default();
        let cut = text.len().saturating_sub(4000);
        let cut = (cut..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text[cut..].to_string()
    }

    /// The process is running, `/ready` is 200 and a normal restricted query is 200 with the
    /// policy added.
    async fn assert_alive(&mut self, be: &Backend, after: &str) {
        if let Some(st) = self.child.try_wait().unwrap() {
            panic!(
                "after {after}: the gateway process died: {st}\n--- its log ---\n{}",
                self.log()
            );
        }
        let r = self.call("GET", "/ready", &[], b"").await;
        assert_eq!(r.status, 200, "after {after}: /ready");
        let r = self
            .call(
                "GET",
                "/prometheus/api/v1/query?query=up",
                &[("authorization", &prod_auth())],
                b"",
            )
            .await;
        assert_eq!(
            r.status,
            200,
            "after {after}: a normal query: {}",
            r.error()
        );
        assert_eq!(
            be.last_param("query"),
            ["up{env=\"prod\"}"],
            "after {after}"
        );
    }

    async fn metric(&mut self, line_prefix: &str) -> f64 {
        let r = self.call("GET", "/metrics", &[], b"").await;
        String::from_utf8_lossy(&r.body)
            .lines()
            .find_map(|l| l.strip_prefix(line_prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

// ---------- queries ----------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Lang {
    PromQL,
    LogQL,
}

#[derive(Clone, Copy, Debug)]
enum How {
    Get,
    Post,
}

/// Sends `q` as `param` of `path` (query string or form body) with the restricted token.
async fn send_query(
    gw: &mut Gateway,
    path: &str,
    param: &str,
    q: &str,
    how: How,
) -> (Reply, Duration) {
    let auth = prod_auth();
    let t0 = Instant::now();
    let r = match how {
        How::Get => {
            gw.call(
                "GET",
                &format!("{path}?{}={}", enc(param), enc(q)),
                &[("authorization", &auth)],
                b"",
            )
            .await
        }
        How::Post => {
            gw.call(
                "POST",
                path,
                &[("authorization", &auth), FORM],
                format!("{}={}", enc(param), enc(q)).as_bytes(),
            )
            .await
        }
    };
    (r, t0.elapsed())
}

fn query_path(lang: Lang) -> &'static str {
    match lang {
        Lang::PromQL => "/prometheus/api/v1/query",
        Lang::LogQL => "/loki/api/v1/query_range",
    }
}

/// A query shape: `build(depth, leaf)` gives a query of exactly that depth (as
/// `lbac.max_query_depth` counts it) and how many selectors it has. `leaf` is a metric name
/// (PromQL) or a label value (LogQL), so that GET and POST send different queries and neither
/// is answered from the gateway's rewrite cache.
struct Shape {
    name: &'static str,
    lang: Lang,
    build: fn(usize, &str) -> (String, usize),
}

fn nest(open: &str, inner: &str, close: &str, n: usize) -> String {
    let mut s = String::with_capacity((open.len() + close.len()) * n + inner.len());
    for _ in 0..n {
        s.push_str(open);
    }
    s.push_str(inner);
    for _ in 0..n {
        s.push_str(close);
    }
    s
}

fn chain(leaf: &str, op: &str, n: usize) -> String {
    vec![leaf; n].join(op)
}

fn log_range(v: &str) -> String {
    format!("count_over_time({{a=\"{v}\"}}[1m])")
}

const PROMQL_SHAPES: &[Shape] = &[
    Shape {
        name: "nested sum(",
        lang: Lang::PromQL,
        build: |d, m| (nest("sum(", m, ")", d - 1), 1),
    },
    Shape {
        name: "nested abs(",
        lang: Lang::PromQL,
        build: |d, m| (nest("abs(", m, ")", d - 1), 1),
    },
    Shape {
        name: "nested parentheses",
        lang: Lang::PromQL,
        build: |d, m| (nest("(", m, ")", d - 1), 1),
    },
    Shape {
        name: "unary minus run",
        lang: Lang::PromQL,
        build: |d, m| (format!("{}{m}", "-".repeat(d - 1)), 1),
    },
    Shape {
        name: "a + b + c chain",
        lang: Lang::PromQL,
        build: |d, m| (chain(m, " + ", d), d),
    },
    Shape {
        name: "right-associative ^ chain",
        lang: Lang::PromQL,
        build: |d, m| (chain(m, " ^ ", d), d),
    },
    Shape {
        name: "or chain",
        lang: Lang::PromQL,
        build: |d, m| (chain(m, " or ", d), d),
    },
    Shape {
        name: "and chain",
        lang: Lang::PromQL,
        build: |d, m| (chain(m, " and ", d), d),
    },
    Shape {
        // each max_over_time(…[5m:1m]) adds 2 (a call and a subquery); a unary minus evens it
        name: "nested subqueries",
        lang: Lang::PromQL,
        build: |d, m| {
            let k = (d - 1) / 2;
            let sign = if (d - 1) % 2 == 1 { "-" } else { "" };
            (
                format!("{sign}{}", nest("max_over_time(", m, "[5m:1m])", k)),
                1,
            )
        },
    },
];

const LOGQL_SHAPES: &[Shape] = &[
    Shape {
        name: "nested sum(",
        lang: Lang::LogQL,
        build: |d, v| (nest("sum(", &log_range(v), ")", d - 2), 1),
    },
    Shape {
        name: "nested parentheses around a metric query",
        lang: Lang::LogQL,
        build: |d, v| (nest("(", &log_range(v), ")", d - 2), 1),
    },
    Shape {
        // LogQL has no unary operator: `-1` is a signed literal; a run of `- -1` is a chain
        name: "minus signed literals",
        lang: Lang::LogQL,
        build: |d, v| (format!("{}{}", log_range(v), " - -1".repeat(d - 2)), 1),
    },
    Shape {
        name: "+ chain of count_over_time",
        lang: Lang::LogQL,
        build: |d, v| (chain(&log_range(v), " + ", d - 1), d - 1),
    },
    Shape {
        name: "or chain of label filters",
        lang: Lang::LogQL,
        build: |d, v| {
            (
                format!("{{a=\"{v}\"}} | {}", chain("x=\"1\"", " or ", d)),
                1,
            )
        },
    },
    Shape {
        name: "nested parentheses of a label filter",
        lang: Lang::LogQL,
        build: |d, v| {
            (
                format!("{{a=\"{v}\"}} | {}", nest("(", "x=\"1\"", ")", d - 1)),
                1,
            )
        },
    },
    Shape {
        name: "or chain of line filters",
        lang: Lang::LogQL,
        build: |d, v| {
            (
                format!("{{a=\"{v}\"}} |= \"a\"{}", " or \"a\"".repeat(d - 1)),
                1,
            )
        },
    },
];

fn prod_policy() -> Vec<obsgate::selector::Matcher> {
    obsgate::selector::parse_selector(r#"{env="prod"}"#)
        .unwrap()
        .matchers
}

/// What the backend got for `sent` is `sent` with `env="prod"` in each of its `selectors`
/// selectors. PromQL is parsed back on a thread with a big stack (the test thread's is 2 MiB).
fn assert_restricted(lang: Lang, sent: &str, got: &str, selectors: usize) {
    match lang {
        Lang::PromQL => {
            let got = got.to_string();
            std::thread::Builder::new()
                .stack_size(256 << 20)
                .spawn(move || {
                    let e = promql_parser::parser::parse(&got)
                        .unwrap_or_else(|e| panic!("the backend got unparsable PromQL: {e}"));
                    let pm = [promql_parser::label::Matcher::new(
                        promql_parser::label::MatchOp::Equal,
                        "env",
                        "prod",
                    )];
                    assert!(promql::is_restricted(&e, &pm), "unrestricted: {got}");
                    assert_eq!(promql::selectors(&e).len(), selectors);
                })
                .unwrap()
                .join()
                .unwrap();
        }
        Lang::LogQL => {
            let sels = logql::stream_selectors(got).expect("the backend got valid LogQL");
            assert_eq!(sels.len(), selectors);
            for s in &sels {
                assert!(s.ends_with(r#", env="prod"}"#), "{s}");
            }
            assert_eq!(
                logql::strip_policy(got, &prod_policy()).as_deref(),
                Some(sent),
                "apart from the policy, the backend got what was sent"
            );
        }
    }
}

/// Every shape at `limit` is 200 and restricted, one level over is 400 naming the limit; by
/// query string and by form body.
async fn at_and_over(gw: &mut Gateway, be: &Backend, shapes: &[Shape], limit: usize) {
    for sh in shapes {
        for (how, leaf) in [(How::Get, "get"), (How::Post, "post")] {
            let leaf = match sh.lang {
                Lang::PromQL => format!("up_{leaf}"),
                Lang::LogQL => leaf.to_string(),
            };
            let what = format!("{:?} {} by {how:?}", sh.lang, sh.name);
            let (q, sels) = (sh.build)(limit, &leaf);
            let before = be.count();
            let (r, _) = send_query(gw, query_path(sh.lang), "query", &q, how).await;
            assert_eq!(
                r.status,
                200,
                "{what} at depth {limit} ({} bytes): {}",
                q.len(),
                r.error()
            );
            assert_eq!(be.count(), before + 1, "{what}: forwarded once");
            // the prometheus kind drops the /prometheus prefix
            assert!(
                query_path(sh.lang).ends_with(&be.last().path),
                "{what}: {}",
                be.last().path
            );
            let got = be.last_param("query");
            assert_eq!(got.len(), 1, "{what}");
            assert_restricted(sh.lang, &q, &got[0], sels);

            let (q, _) = (sh.build)(limit + 1, &leaf);
            let (r, _) = send_query(gw, query_path(sh.lang), "query", &q, how).await;
            assert_eq!(
                r.status,
                400,
                "{what} at depth {}: {}",
                limit + 1,
                r.error()
            );
            assert_eq!(r.json()["status"], "error", "{what}");
            assert_eq!(r.json()["errorType"], "bad_data", "{what}");
            assert!(
                r.error().contains("lbac.max_query_depth"),
                "{what} at depth {}: {}",
                limit + 1,
                r.error()
            );
            assert_eq!(be.count(), before + 1, "{what}: nothing forwarded");
        }
        gw.assert_alive(be, sh.name).await;
    }
}

#[tokio::test]
async fn promql_at_the_default_depth_limit_is_200_and_one_over_is_400() {
    let be = Backend::start().await;
    let mut gw = serve(&be.url(), BIG_LIMITS, &deep_policies()).await;
    at_and_over(&mut gw, &be, PROMQL_SHAPES, 512).await;
}

#[tokio::test]
async fn logql_at_the_default_depth_limit_is_200_and_one_over_is_400() {
    let be = Backend::start().await;
    let mut gw = serve(&be.url(), BIG_LIMITS, &deep_policies()).await;
    at_and_over(&mut gw, &be, LOGQL_SHAPES, 512).await;
}

#[tokio::test]
async fn the_maximum_depth_1024_is_200_on_the_real_worker_stacks() {
    let be = Backend::start().await;
    let extra = format!("{BIG_LIMITS}  max_query_depth: 1024\n");
    let mut gw = serve(&be.url(), &extra, &deep_policies()).await;
    at_and_over(&mut gw, &be, PROMQL_SHAPES, 1024).await;
    // and a config cannot go deeper
    std::fs::write(
        gw.setup.path("deeper.yaml"),
        std::fs::read_to_string(gw.setup.path("gateway.yaml"))
            .unwrap()
            .replace("max_query_depth: 1024", "max_query_depth: 1025"),
    )
    .unwrap();
    let (code, out) = check(&gw.setup.path("deeper.yaml"));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("lbac.max_query_depth"), "{out}");
}

/// A query that must be refused, the error it must name (`None`: any 400).
struct Huge {
    what: &'static str,
    lang: Lang,
    path: &'static str,
    param: &'static str,
    query: String,
    names: Option<&'static str>,
}

fn huge(
    what: &'static str,
    lang: Lang,
    path: &'static str,
    param: &'static str,
    query: String,
    names: Option<&'static str>,
) -> Huge {
    Huge {
        what,
        lang,
        path,
        param,
        query,
        names,
    }
}

async fn refuse_all(gw: &mut Gateway, be: &Backend, batch: &[Huge], batch_name: &str) {
    for h in batch {
        for how in [How::Get, How::Post] {
            let before = be.count();
            let (r, took) = send_query(gw, h.path, h.param, &h.query, how).await;
            let what = format!(
                "{:?} {} ({} bytes) by {how:?}",
                h.lang,
                h.what,
                h.query.len()
            );
            let target_len = h.path.len() + 2 + enc(h.param).len() + enc(&h.query).len();
            if matches!(how, How::Get) && target_len > MAX_TARGET {
                // hyper refuses a request target `http::Uri` cannot hold, whatever the limits
                assert_eq!(r.status, 414, "{what}: {}", r.error());
                assert_eq!(be.count(), before, "{what}: nothing forwarded");
                continue;
            }
            assert_eq!(r.status, 400, "{what}: {}", r.error());
            assert_eq!(r.json()["errorType"], "bad_data", "{what}");
            if let Some(limit) = h.names {
                assert!(r.error().contains(limit), "{what}: {}", r.error());
            }
            assert!(took < Duration::from_secs(5), "{what}: took {took:?}");
            assert_eq!(be.count(), before, "{what}: nothing forwarded");
            if let Some(st) = gw.child.try_wait().unwrap() {
                panic!("{what}: the gateway died: {st}\n{}", gw.log());
            }
        }
    }
    gw.assert_alive(be, batch_name).await;
}

/// The longest request target hyper accepts (`http::Uri`'s limit); longer ones are 414.
const MAX_TARGET: usize = 65534;

const BYTES: Option<&str> = Some("lbac.max_query_bytes");
const DEPTH: Option<&str> = Some("lbac.max_query_depth");

#[tokio::test]
async fn huge_queries_are_400_fast_with_default_limits() {
    let be = Backend::start().await;
    let mut gw = serve(&be.url(), BIG_LIMITS, &deep_policies()).await;
    const PQ: &str = "/prometheus/api/v1/query";
    const LQ: &str = "/loki/api/v1/query_range";
    use Lang::*;
    let rng = log_range("b");
    // 1 MiB: over lbac.max_query_bytes (128 KiB)
    let mib = 1 << 20;
    let over_bytes = vec![
        huge(
            "sum( ×256k",
            PromQL,
            PQ,
            "query",
            nest("sum(", "up", ")", mib / 5),
            BYTES,
        ),
        huge(
            "- ×1M",
            PromQL,
            PQ,
            "query",
            format!("{}up", "-".repeat(mib)),
            BYTES,
        ),
        huge(
            "a + a ×256k",
            PromQL,
            PQ,
            "query",
            chain("a", " + ", mib / 4),
            BYTES,
        ),
        huge(
            "match[] ( ×512k",
            PromQL,
            "/prometheus/api/v1/series",
            "match[]",
            nest("(", "up", ")", mib / 2),
            BYTES,
        ),
        huge(
            "sum( ×256k",
            LogQL,
            LQ,
            "query",
            nest("sum(", &rng, ")", mib / 5),
            BYTES,
        ),
        huge(
            "label filter ( ×512k",
            LogQL,
            LQ,
            "query",
            format!("{{a=\"b\"}} | {}", nest("(", "x=\"1\"", ")", mib / 2)),
            BYTES,
        ),
        huge(
            "series match ( ×512k",
            LogQL,
            "/loki/api/v1/series",
            "match",
            nest("(", "{a=\"b\"}", ")", mib / 2),
            BYTES,
        ),
    ];
    refuse_all(&mut gw, &be, &over_bytes, "1 MiB queries").await;
    // 100k levels under 128 KiB: over lbac.max_query_depth
    let k = 100_000;
    let deep = vec![
        huge(
            "- ×100k",
            PromQL,
            PQ,
            "query",
            format!("{}up", "-".repeat(k)),
            DEPTH,
        ),
        huge(
            "( ×60k",
            PromQL,
            PQ,
            "query",
            nest("(", "up", ")", 60_000),
            DEPTH,
        ),
        huge(
            "sum( ×25k",
            PromQL,
            PQ,
            "query",
            nest("sum(", "up", ")", 25_000),
            DEPTH,
        ),
        huge(
            "a+a ×60k",
            PromQL,
            PQ,
            "query",
            chain("a", "+", 60_000),
            DEPTH,
        ),
        huge(
            "a^a ×60k",
            PromQL,
            PQ,
            "query",
            chain("a", "^", 60_000),
            DEPTH,
        ),
        huge("( ×100k unclosed", PromQL, PQ, "query", "(".repeat(k), None),
        huge(
            "regex ( ×60k",
            PromQL,
            PQ,
            "query",
            format!("up{{a=~\"{}\"}}", nest("(", "a", ")", 60_000)),
            None,
        ),
        huge(
            "match[] ( ×60k",
            PromQL,
            "/prometheus/api/v1/labels",
            "match[]",
            nest("(", "up", ")", 60_000),
            None,
        ),
        huge(
            "( ×60k",
            LogQL,
            LQ,
            "query",
            nest("(", &rng, ")", 60_000),
            DEPTH,
        ),
        huge(
            "sum( ×25k",
            LogQL,
            LQ,
            "query",
            nest("sum(", &rng, ")", 25_000),
            DEPTH,
        ),
        huge(
            "label filter ( ×60k",
            LogQL,
            LQ,
            "query",
            format!("{{a=\"b\"}} | {}", nest("(", "x=\"1\"", ")", 60_000)),
            DEPTH,
        ),
        huge(
            "label filter or ×14k",
            LogQL,
            LQ,
            "query",
            format!("{{a=\"b\"}} | {}", chain("x=\"1\"", " or ", 14_000)),
            DEPTH,
        ),
        huge(
            "line filter or ×18k",
            LogQL,
            LQ,
            "query",
            format!("{{a=\"b\"}} |= \"a\"{}", " or \"a\"".repeat(18_000)),
            DEPTH,
        ),
        huge(
            "regex ( ×60k",
            LogQL,
            LQ,
            "query",
            format!("{{a=~\"{}\"}}", nest("(", "a", ")", 60_000)),
            None,
        ),
        huge(
            "line regex ( ×60k",
            LogQL,
            LQ,
            "query",
            format!("{{a=\"b\"}} |~ \"{}\"", nest("(", "a", ")", 60_000)),
            None,
        ),
        huge(
            "series match[] ( ×60k",
            LogQL,
            "/loki/api/v1/series",
            "match[]",
            nest("(", "{a=\"b\"}", ")", 60_000),
            None,
        ),
        huge(
            "labels query ( ×60k",
            LogQL,
            "/loki/api/v1/labels",
            "query",
            nest("(", "{a=\"b\"}", ")", 60_000),
            None,
        ),
    ];
    for h in deep.iter().filter(|h| h.names == DEPTH) {
        assert!(
            h.query.len() <= 131072,
            "{} fits lbac.max_query_bytes",
            h.what
        );
    }
    refuse_all(&mut gw, &be, &deep, "100k-level queries").await;
    // deep queries that fit in a request target (64 KiB), so that GET reaches the LBAC layer too
    let fits = vec![
        huge(
            "- ×60k",
            PromQL,
            PQ,
            "query",
            format!("{}up", "-".repeat(60_000)),
            DEPTH,
        ),
        huge(
            "sum( ×6500",
            PromQL,
            PQ,
            "query",
            nest("sum(", "up", ")", 6_500),
            DEPTH,
        ),
        huge(
            "( ×10k",
            PromQL,
            PQ,
            "query",
            nest("(", "up", ")", 10_000),
            DEPTH,
        ),
        huge(
            "a+a ×15k",
            PromQL,
            PQ,
            "query",
            chain("a", "+", 15_000),
            DEPTH,
        ),
        huge(
            "a^a ×15k",
            PromQL,
            PQ,
            "query",
            chain("a", "^", 15_000),
            DEPTH,
        ),
        huge(
            "subqueries ×2000",
            PromQL,
            PQ,
            "query",
            nest("max_over_time(", "up", "[5m:1m])", 2_000),
            DEPTH,
        ),
        huge(
            "sum( ×6000",
            LogQL,
            LQ,
            "query",
            nest("sum(", &rng, ")", 6_000),
            DEPTH,
        ),
        huge(
            "( ×10k",
            LogQL,
            LQ,
            "query",
            nest("(", &rng, ")", 10_000),
            DEPTH,
        ),
        huge(
            "label filter ( ×10k",
            LogQL,
            LQ,
            "query",
            format!("{{a=\"b\"}} | {}", nest("(", "x=\"1\"", ")", 10_000)),
            DEPTH,
        ),
        huge(
            "line filter or ×5000",
            LogQL,
            LQ,
            "query",
            format!("{{a=\"b\"}} |= \"a\"{}", " or \"a\"".repeat(5_000)),
            DEPTH,
        ),
    ];
    for h in &fits {
        let target = h.path.len() + 2 + enc(h.param).len() + enc(&h.query).len();
        assert!(
            target <= MAX_TARGET,
            "{} is {target} bytes as a target",
            h.what
        );
    }
    refuse_all(&mut gw, &be, &fits, "deep queries in the query string").await;
}

/// The LogQL lexer looked past each `--` for `--strict`/`--keep-empty` to the end of the run of
/// `-` and letters, so a run of n `-` cost n²/2 steps: 16k took 5 s in a debug build, and the
/// 128 KiB that `lbac.max_query_bytes` lets through would have held a worker for minutes. The
/// look-ahead now stops past the longest flag.
#[tokio::test]
async fn a_run_of_minus_signs_in_logql_is_refused_in_linear_time() {
    let be = Backend::start().await;
    let mut gw = serve(&be.url(), BIG_LIMITS, &deep_policies()).await;
    use Lang::*;
    let batch = vec![
        huge(
            "- ×131k",
            LogQL,
            "/loki/api/v1/query_range",
            "query",
            format!("{}1", "-".repeat(131_000)),
            None,
        ),
        huge(
            "- ×60k",
            LogQL,
            "/loki/api/v1/query_range",
            "query",
            format!("{}1", "-".repeat(60_000)),
            None,
        ),
        huge(
            "--a ×40k",
            LogQL,
            "/loki/api/v1/query_range",
            "query",
            "--a".repeat(40_000),
            None,
        ),
    ];
    refuse_all(&mut gw, &be, &batch, "runs of '-' in LogQL").await;
}

#[tokio::test]
async fn megabyte_deep_queries_are_400_by_depth_with_the_byte_limit_at_its_maximum() {
    let be = Backend::start().await;
    let extra = format!("{BIG_LIMITS}  max_query_bytes: 16777216\n");
    let mut gw = serve(&be.url(), &extra, &deep_policies()).await;
    const PQ: &str = "/prometheus/api/v1/query";
    const LQ: &str = "/loki/api/v1/query_range";
    use Lang::*;
    let mib = 1 << 20;
    let rng = log_range("b");
    let batch = vec![
        huge(
            "sum( ×200k",
            PromQL,
            PQ,
            "query",
            nest("sum(", "up", ")", mib / 5),
            DEPTH,
        ),
        huge(
            "abs( ×200k",
            PromQL,
            PQ,
            "query",
            nest("abs(", "up", ")", mib / 5),
            DEPTH,
        ),
        huge(
            "( ×500k",
            PromQL,
            PQ,
            "query",
            nest("(", "up", ")", mib / 2),
            DEPTH,
        ),
        huge(
            "- ×1M",
            PromQL,
            PQ,
            "query",
            format!("{}up", "-".repeat(mib)),
            DEPTH,
        ),
        huge(
            "a + a ×250k",
            PromQL,
            PQ,
            "query",
            chain("a", " + ", mib / 4),
            DEPTH,
        ),
        huge(
            "a ^ a ×250k",
            PromQL,
            PQ,
            "query",
            chain("a", " ^ ", mib / 4),
            DEPTH,
        ),
        huge(
            "a or a ×200k",
            PromQL,
            PQ,
            "query",
            chain("a", " or ", mib / 5),
            DEPTH,
        ),
        huge(
            "subqueries ×50k",
            PromQL,
            PQ,
            "query",
            nest("max_over_time(", "up", "[5m:1m])", mib / 22),
            DEPTH,
        ),
        huge(
            "sum( ×200k",
            LogQL,
            LQ,
            "query",
            nest("sum(", &rng, ")", mib / 5),
            DEPTH,
        ),
        huge(
            "( ×500k",
            LogQL,
            LQ,
            "query",
            nest("(", &rng, ")", mib / 2),
            DEPTH,
        ),
        huge(
            "+ chain ×30k",
            LogQL,
            LQ,
            "query",
            chain(&rng, " + ", mib / 32),
            DEPTH,
        ),
        huge(
            "label filter ( ×500k",
            LogQL,
            LQ,
            "query",
            format!("{{a=\"b\"}} | {}", nest("(", "x=\"1\"", ")", mib / 2)),
            DEPTH,
        ),
        huge(
            "label filter or ×100k",
            LogQL,
            LQ,
            "query",
            format!("{{a=\"b\"}} | {}", chain("x=\"1\"", " or ", mib / 10)),
            DEPTH,
        ),
    ];
    refuse_all(&mut gw, &be, &batch, "1 MiB deep queries").await;
    // 4 MB (7 MB form-encoded, under the 8 MiB body limit) still reaches the depth check
    let q = nest("sum(", "up", ")", 800_000);
    let (r, took) = send_query(&mut gw, PQ, "query", &q, How::Post).await;
    assert_eq!(r.status, 400, "{}", r.error());
    assert!(r.error().contains("lbac.max_query_depth"), "{}", r.error());
    assert!(took < Duration::from_secs(10), "took {took:?}");
    gw.assert_alive(&be, "a 4 MB query").await;
}

// ---------- tokens ----------

fn glc_of(json: &str) -> String {
    use base64::Engine as _;
    format!(
        "glc_{}",
        base64::engine::general_purpose::STANDARD.encode(json)
    )
}

#[tokio::test]
async fn a_token_whose_json_nests_100k_deep_is_401() {
    let be = Backend::start().await;
    let mut gw = serve(&be.url(), BIG_LIMITS, &deep_policies()).await;
    let k = 100_000;
    let tokens = [
        format!(
            r#"{{"o":"1","n":"p-t","k":"x","z":{}}}"#,
            nest("[", "", "]", k)
        ),
        format!(
            r#"{{"o":"1","n":"p-t","k":"x","z":{}}}"#,
            nest("{\"z\":", "1", "}", k)
        ),
        format!(
            r#"{{"o":"1","n":"p-t","k":"x","m":{}}}"#,
            nest("[", "", "]", k)
        ),
        nest("[", "", "]", k),
    ];
    for (i, json) in tokens.iter().enumerate() {
        let t = glc_of(json);
        for auth in [format!("Bearer {t}"), basic("team-a", &t)] {
            let r = gw
                .call(
                    "GET",
                    "/prometheus/api/v1/query?query=up",
                    &[("authorization", &auth)],
                    b"",
                )
                .await;
            assert_eq!(r.status, 401, "token {i}: {}", r.error());
            assert!(r.headers.contains_key("www-authenticate"));
        }
        // and on the admin API
        let r = gw
            .call(
                "GET",
                "/admin/api/v3/tenants",
                &[("authorization", &format!("Bearer {t}"))],
                b"",
            )
            .await;
        assert_eq!(r.status, 401, "admin, token {i}: {}", r.error());
        if let Some(st) = gw.child.try_wait().unwrap() {
            panic!("token {i}: the gateway died: {st}\n{}", gw.log());
        }
    }
    gw.assert_alive(&be, "deep tokens").await;
}

// ---------- admin API ----------

async fn admin(gw: &mut Gateway, method: &str, path: &str, body: &str) -> Reply {
    let auth = format!("Bearer {}", tok("admin"));
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    if matches!(method, "PUT" | "PATCH") {
        headers.push(("if-match", "*"));
    }
    gw.call(method, path, &headers, body.as_bytes()).await
}

#[tokio::test]
async fn admin_bodies_nested_100k_deep_are_400() {
    let be = Backend::start().await;
    let mut gw = serve(&be.url(), BIG_LIMITS, &deep_policies()).await;
    // objects to PUT to
    let r = admin(
        &mut gw,
        "POST",
        "/admin/api/v3/tenants",
        r#"{"name":"put-me"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.error());
    let r = admin(
        &mut gw,
        "POST",
        "/admin/api/v3/accesspolicies",
        r#"{"name":"put-me","scopes":["metrics:read"],"realms":[{"tenant":"team-a"}]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.error());
    let r = admin(
        &mut gw,
        "POST",
        "/api/serviceaccounts",
        r#"{"name":"put-me"}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.error());
    let sa = r.json()["id"].as_u64().unwrap();

    let k = 100_000;
    let bodies = [
        (
            "arrays in an unknown key",
            format!(r#"{{"name":"deep","z":{}}}"#, nest("[", "", "]", k)),
        ),
        (
            "objects in an unknown key",
            format!(r#"{{"name":"deep","z":{}}}"#, nest("{\"z\":", "1", "}", k)),
        ),
        (
            "arrays as the name",
            format!(r#"{{"name":{}}}"#, nest("[", "", "]", k)),
        ),
        (
            "arrays as realms",
            format!(
                r#"{{"name":"deep","scopes":["metrics:read"],"realms":{}}}"#,
                nest("[", "{}", "]", k)
            ),
        ),
        ("a bare array", nest("[", "", "]", k)),
        ("unclosed arrays", "[".repeat(k)),
    ];
    let targets = [
        ("POST", "/admin/api/v3/tenants".to_string()),
        ("PUT", "/admin/api/v3/tenants/put-me".to_string()),
        ("POST", "/admin/api/v3/accesspolicies".to_string()),
        ("PUT", "/admin/api/v3/accesspolicies/put-me".to_string()),
        ("POST", "/admin/api/v3/tokens".to_string()),
        ("POST", "/api/v1/accesspolicies?region=eu".to_string()),
        ("POST", "/api/v1/tokens?region=eu".to_string()),
        ("POST", "/api/serviceaccounts".to_string()),
        ("PATCH", format!("/api/serviceaccounts/{sa}")),
        ("POST", format!("/api/serviceaccounts/{sa}/tokens")),
    ];
    for (method, path) in &targets {
        for (what, body) in &bodies {
            let r = admin(&mut gw, method, path, body).await;
            assert_eq!(r.status, 400, "{method} {path} with {what}: {}", r.error());
        }
        if let Some(st) = gw.child.try_wait().unwrap() {
            panic!("{method} {path}: the gateway died: {st}\n{}", gw.log());
        }
    }
    gw.assert_alive(&be, "deep admin bodies").await;
}

/// `((((…a))))`, `n` deep: valid regex syntax, too deep for any regex parser's nesting limit.
fn deep_regex(n: usize) -> String {
    nest("(", "a", ")", n)
}

#[tokio::test]
async fn a_label_policy_regex_nested_100k_deep_through_the_admin_api_is_400() {
    let be = Backend::start().await;
    let mut gw = serve(&be.url(), BIG_LIMITS, &deep_policies()).await;
    let re = deep_regex(100_000);
    let text = serde_json::Value::String(format!("{{env=~\"{re}\"}}")).to_string();
    let list = format!(r#"[{{"type":"RE","name":"env","value":"{re}"}}]"#);
    let cases = [
        (
            "/admin/api/v3/accesspolicies",
            format!(
                r#"{{"name":"deep-re","scopes":["metrics:read"],"realms":[{{"tenant":"team-a","label_policies":[{{"selector":{text}}}]}}]}}"#
            ),
        ),
        (
            "/admin/api/v3/accesspolicies",
            format!(
                r#"{{"name":"deep-re","scopes":["metrics:read"],"realms":[{{"tenant":"team-a","label_policies":[{{"selector":{list}}}]}}]}}"#
            ),
        ),
        (
            "/api/v1/accesspolicies?region=eu",
            format!(
                r#"{{"name":"deep-re","scopes":["metrics:read"],"realms":[{{"type":"org","identifier":"1","labelPolicies":[{{"selector":{text}}}]}}]}}"#
            ),
        ),
    ];
    for (path, body) in &cases {
        let t0 = Instant::now();
        let r = admin(&mut gw, "POST", path, body).await;
        assert_eq!(r.status, 400, "{path}: {}", r.error());
        assert!(t0.elapsed() < Duration::from_secs(5));
        if let Some(st) = gw.child.try_wait().unwrap() {
            panic!("{path}: the gateway died: {st}\n{}", gw.log());
        }
    }
    // nothing was stored
    let r = admin(&mut gw, "GET", "/admin/api/v3/accesspolicies/deep-re", "").await;
    assert_eq!(r.status, 404, "{}", r.error());
    gw.assert_alive(&be, "a deep label-policy regex").await;
}

// ---------- policy files ----------

/// Policy files that must not load: (name, text). Each is the good set with one part replaced.
/// Deep values go under `selector:`, whose type (a selector text or a GEM list, an untagged
/// enum) makes serde buffer the whole value; under other keys a type mismatch or unknown field
/// stops the parser before it reads deeper.
fn bad_policy_files() -> Vec<(&'static str, String)> {
    let good = deep_policies();
    const SEL: &str = "'{env=\"prod\"}'";
    assert!(good.contains(SEL));
    let selector = |v: &str| good.replace(SEL, v);
    // the selector key is at column 12: the value's block lines start at 14
    let mut block_maps = String::from("\n");
    for i in 0..10_000 {
        // one space per level: 50 MB at two
        block_maps.push_str(&" ".repeat(14 + i));
        block_maps.push_str("a:\n");
    }
    // the classic one: 10 levels of 10 aliases, 10^10 strings
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
    let mut lol = String::from(
        "[&a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]",
    );
    for w in names.windows(2) {
        lol.push_str(&format!(
            ", &{} [{}]",
            w[1],
            vec![format!("*{}", w[0]); 10].join(",")
        ));
    }
    lol.push(']');
    // one the schema accepts: 100 realms of 100 label policies each, all aliases
    let mut realms = String::from(
        "realms:\n      - &r\n        tenant: team-a\n        label_policies:\n          - &lp {selector: '{env=\"prod\"}'}\n",
    );
    realms.push_str(&"          - *lp\n".repeat(99));
    realms.push_str(&"      - *r\n".repeat(99));
    let schema_bomb = good.replacen(
        "realms:\n      - tenant: team-a\n        label_policies:\n          - selector: '{env=\"prod\"}'\n",
        &realms,
        1,
    );
    assert_ne!(schema_bomb, good);
    vec![
        (
            "flow sequences 100k deep",
            selector(&nest("[", "", "]", 100_000)),
        ),
        (
            "unclosed flow sequences 100k deep",
            selector(&"[".repeat(100_000)),
        ),
        (
            "flow sequences 100k deep as the tenants",
            good.replacen(
                "tenants:\n  - name: team-a\n",
                &format!("tenants: {}\n", nest("[", "", "]", 100_000)),
                1,
            ),
        ),
        (
            "flow mappings 100k deep",
            selector(&nest("{a: ", "1", "}", 100_000)),
        ),
        (
            "block sequences 100k deep",
            selector(&format!("\n              {}x", "- ".repeat(100_000))),
        ),
        ("block mappings 10k deep", selector(&block_maps)),
        // refused once 1M events are recorded: about 6 s in a debug build, 0.5 s in release
        ("an alias bomb of 10^10 strings", selector(&lol)),
        ("an alias bomb of 10k label policies", schema_bomb),
        (
            "a label-policy regex 100k deep",
            selector(&format!("'{{env=~\"{}\"}}'", deep_regex(100_000))),
        ),
        (
            "a label-policy GEM list regex 100k deep",
            selector(&format!(
                "[{{type: RE, name: env, value: '{}'}}]",
                deep_regex(100_000)
            )),
        ),
    ]
}

/// The start of a long text, for assertion messages.
fn head(s: &str) -> &str {
    let mut n = s.len().min(2000);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    &s[..n]
}

/// Runs `obsgate check --config <cfg>`: (exit code, None if killed by a signal; output).
fn check(cfg: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_obsgate"))
        .args(["check", "--config"])
        .arg(cfg)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), format!("[{}] {text}", out.status))
}

#[tokio::test]
async fn check_refuses_deep_and_bomb_files_with_an_error_and_no_crash() {
    let be = Backend::start().await;
    let good_gw = gateway_yaml(
        &format!(
            "{}{}",
            backend("metrics", "prometheus", &be.url(), ""),
            backend("logs", "loki", &be.url(), "")
        ),
        BIG_LIMITS,
    );
    let s = Setup::new(&good_gw, &deep_policies());
    let (code, out) = check(&s.path("gateway.yaml"));
    assert_eq!(code, Some(0), "the good set passes: {out}");
    for (what, text) in bad_policy_files() {
        std::fs::write(s.path("policies.yaml"), &text).unwrap();
        let t0 = Instant::now();
        let (code, out) = check(&s.path("gateway.yaml"));
        assert_eq!(
            code,
            Some(1),
            "{what}: exit 1, not a signal: {}",
            head(&out)
        );
        assert!(
            out.contains("policies.yaml:"),
            "{what}: an error line naming the file: {}",
            head(&out)
        );
        assert!(!out.contains("panicked"), "{what}: {}", head(&out));
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{what}: {:?}",
            t0.elapsed()
        );
    }
    // a gateway config nesting 100k deep
    std::fs::write(s.path("policies.yaml"), deep_policies()).unwrap();
    let pf = "policy_files: [policies.yaml]";
    assert!(good_gw.contains(pf));
    for (what, text) in [
        ("a document", nest("[", "", "]", 100_000)),
        (
            "policy_files",
            good_gw.replace(
                pf,
                &format!("policy_files: {}", nest("[", "", "]", 100_000)),
            ),
        ),
        (
            "policy_files, unclosed",
            good_gw.replace(pf, &format!("policy_files: {}", "[".repeat(100_000))),
        ),
        (
            "policy_files, block sequences",
            good_gw.replace(pf, &format!("policy_files:\n    {}x", "- ".repeat(100_000))),
        ),
    ] {
        std::fs::write(s.path("deep-gateway.yaml"), text).unwrap();
        let (code, out) = check(&s.path("deep-gateway.yaml"));
        assert_eq!(code, Some(1), "gateway.yaml with {what}: {}", head(&out));
        assert!(out.contains("deep-gateway.yaml"), "{what}: {}", head(&out));
        assert!(!out.contains("panicked"), "{what}: {}", head(&out));
    }
}

#[tokio::test]
async fn reloading_deep_and_bomb_policy_files_keeps_the_last_good_set() {
    let be = Backend::start().await;
    let mut gw = serve(&be.url(), BIG_LIMITS, &deep_policies()).await;
    const FAILED: &str = "obsgate_store_reloads_total{result=\"failure\"}";
    for (what, text) in bad_policy_files() {
        let before = gw.metric(FAILED).await;
        gw.setup.replace_policies(&text);
        let t0 = Instant::now();
        while gw.metric(FAILED).await <= before {
            if let Some(st) = gw.child.try_wait().unwrap() {
                panic!("{what}: the gateway died: {st}\n{}", gw.log());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{what}: no failed reload counted\n{}",
                gw.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // the token of the last good set still works
        gw.assert_alive(&be, what).await;
    }
    // and a good file is still picked up: the admin token is gone from it
    gw.setup.replace_policies(
        &deep_policies()
            .lines()
            .filter(|l| !l.contains("name: admin, access_policy"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let t0 = Instant::now();
    while admin(&mut gw, "GET", "/admin/api/v3/tenants", "")
        .await
        .status
        != 401
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the good file was not loaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.assert_alive(&be, "a good file").await;
}
