//! Request tracing: the gateway continues or starts a W3C trace, hands its span to the backend
//! in `traceparent`, names the trace in `X-Trace-Id` and in audit lines, and exports its spans
//! by OTLP/HTTP and OTLP/gRPC to a receiver this test runs (decoding the protobuf it gets).

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
struct GotSpan {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    kind: i32,
    attrs: Vec<(String, String)>,
    error: bool,
    service: String,
}

impl GotSpan {
    fn attr(&self, k: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Got {
    spans: Vec<GotSpan>,
    /// (path, content-type, the export's own headers as received)
    exports: Vec<(String, String, http::HeaderMap)>,
}

/// An OTLP receiver: `POST /v1/traces` (HTTP/1.1, protobuf) and the gRPC `TraceService/Export`
/// (HTTP/2 cleartext), both decoded into spans.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Got>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn value_text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn record(got: &Mutex<Got>, req: ExportTraceServiceRequest) {
    let mut g = got.lock().unwrap();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
            .map(|a| value_text(&a.value))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                g.spans.push(GotSpan {
                    name: s.name.clone(),
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent: hex(&s.parent_span_id),
                    kind: s.kind,
                    attrs: s
                        .attributes
                        .iter()
                        .map(|a| (a.key.clone(), value_text(&a.value)))
                        .collect(),
                    error: s.status.as_ref().is_some_and(|st| st.code == 2),
                    service: service.clone(),
                });
            }
        }
    }
}

type RBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>;

async fn receive(
    got: Arc<Mutex<Got>>,
    req: Request<Incoming>,
) -> Result<Response<RBody>, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let ct = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    got.lock()
        .unwrap()
        .exports
        .push((parts.uri.path().to_string(), ct, parts.headers.clone()));
    if parts.uri.path() == GRPC_PATH {
        // one length-prefixed message, uncompressed
        assert!(bytes.len() >= 5 && bytes[0] == 0, "gRPC frame");
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        let msg = ExportTraceServiceRequest::decode(&bytes[5..5 + len]).expect("OTLP protobuf");
        record(&got, msg);
        let frames: Vec<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(hyper::body::Frame::data(Bytes::from_static(&[
                0, 0, 0, 0, 0,
            ]))),
            Ok(hyper::body::Frame::trailers({
                let mut t = http::HeaderMap::new();
                t.insert("grpc-status", "0".parse().unwrap());
                t
            })),
        ];
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        return Ok(Response::builder()
            .header("content-type", "application/grpc")
            .body(body.boxed_unsync())
            .unwrap());
    }
    assert_eq!(parts.uri.path(), "/v1/traces");
    let msg = ExportTraceServiceRequest::decode(&bytes[..]).expect("OTLP protobuf");
    record(&got, msg);
    Ok(Response::builder()
        .header("content-type", "application/x-protobuf")
        .body(Full::new(Bytes::new()).boxed_unsync())
        .unwrap())
}

impl Receiver {
    async fn start() -> Receiver {
        Receiver::serve(None).await
    }

    /// The same receiver behind TLS (ALPN h2 for gRPC, http/1.1 for OTLP/HTTP).
    async fn start_tls(cert_pem: &str, key_pem: &str) -> Receiver {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<_> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Receiver::serve(Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))).await
    }

    async fn serve(tls: Option<tokio_rustls::TlsAcceptor>) -> Receiver {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let got: Arc<Mutex<Got>> = Arc::default();
        let g2 = got.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = l.accept().await else {
                    return;
                };
                let got = g2.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| receive(got.clone(), req));
                    let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = match tls {
                        None => http.serve_connection(TokioIo::new(stream), svc).await,
                        // a client that does not trust the certificate fails the handshake
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(s) => http.serve_connection(TokioIo::new(s), svc).await,
                            Err(_) => return,
                        },
                    };
                });
            }
        });
        Receiver { addr, got, task }
    }

    fn spans(&self) -> Vec<GotSpan> {
        self.got.lock().unwrap().spans.clone()
    }
}

fn tracing_yaml(up: &Upstream, rx: &Receiver, protocol: &str, ratio: &str, more: &str) -> String {
    gateway_yaml(
        &backend("metrics", "mimir", &up.url(), ""),
        &format!(
            "tracing:\n  endpoint: \"http://{}\"\n  protocol: {protocol}\n  sample_ratio: {ratio}\n  service_name: gw-under-test\n  headers:\n    X-Scope-OrgID: ops\n{more}",
            rx.addr
        ),
    )
}

/// The response's `X-Trace-Id`.
fn trace_id_of(r: &Reply) -> String {
    r.headers
        .get("x-trace-id")
        .expect("an X-Trace-Id header")
        .to_str()
        .unwrap()
        .to_string()
}

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn traced_get(
    addr: SocketAddr,
    path: &str,
    who: &str,
    traceparent: Option<&str>,
) -> Request<Full<Bytes>> {
    let mut b = Request::get(format!("http://{addr}{path}"))
        .header("authorization", basic("team-a", &tok(who)));
    if let Some(tp) = traceparent {
        b = b
            .header("traceparent", tp)
            .header("tracestate", "vendor=abc");
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

/// (trace, parent span, flags) of the traceparent the upstream got.
fn upstream_traceparent(r: &Recorded) -> (String, String, String) {
    let tp = r
        .headers
        .get("traceparent")
        .expect("the upstream got a traceparent")
        .to_str()
        .unwrap()
        .to_string();
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!(p.len(), 4, "{tp}");
    assert_eq!(p[0], "00");
    (p[1].to_string(), p[2].to_string(), p[3].to_string())
}

fn assert_no_secret(spans: &[GotSpan]) {
    for s in spans {
        for (k, v) in &s.attrs {
            assert!(
                !v.contains("secret-"),
                "attribute {k} of {} carries a token: {v}",
                s.name
            );
            assert!(
                !v.contains("glc_"),
                "attribute {k} of {} carries a token: {v}",
                s.name
            );
        }
    }
}

#[tokio::test]
async fn otlp_http_continues_the_clients_trace_and_the_backend_continues_ours() {
    let up = Upstream::start().await;
    let rx = Receiver::start().await;
    // ratio 0: only the client's "sampled" flag gets this request recorded
    let setup = Setup::new(&tracing_yaml(&up, &rx, "http", "0", ""), &policies());
    let gw = setup.start().await;
    let addr = gw.shared_addr();
    let tp = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let r = send(
        &client(),
        traced_get(addr, "/prometheus/api/v1/query?query=up", "rw", Some(&tp)),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers.get("x-trace-id").unwrap(), CLIENT_TRACE);
    let (trace, parent, flags) = upstream_traceparent(&up.last());
    assert_eq!(trace, CLIENT_TRACE, "the backend joins the client's trace");
    assert_ne!(parent, CLIENT_SPAN, "with the gateway's span as its parent");
    assert_eq!(flags, "01");
    assert_eq!(up.last().headers.get("tracestate").unwrap(), "vendor=abc");

    // an unsampled request: a trace ID all the same, nothing exported
    let r = send(
        &client(),
        traced_get(addr, "/prometheus/api/v1/query?query=up", "rw", None),
    )
    .await;
    assert_eq!(r.status, 200);
    let unsampled = trace_id_of(&r);
    assert_eq!(unsampled.len(), 32);
    let (t2, _, f2) = upstream_traceparent(&up.last());
    assert_eq!((t2.as_str(), f2.as_str()), (unsampled.as_str(), "00"));

    gw.shutdown().await; // flushes the batch
    let spans = rx.spans();
    assert!(
        spans.iter().all(|s| s.trace_id == CLIENT_TRACE),
        "only the sampled trace is exported: {spans:#?}"
    );
    let server = spans
        .iter()
        .find(|s| s.kind == 2)
        .unwrap_or_else(|| panic!("a server span: {spans:#?}"));
    assert_eq!(server.name, "GET /prometheus/api/v1/query");
    assert_eq!(server.parent, CLIENT_SPAN, "continues the client's span");
    assert_eq!(server.service, "gw-under-test");
    assert_eq!(server.attr("http.route"), Some("/prometheus/api/v1/query"));
    assert_eq!(server.attr("http.response.status_code"), Some("200"));
    assert_eq!(server.attr("obsgate.tenant"), Some("team-a"));
    assert_eq!(server.attr("obsgate.token"), Some("rw"));
    assert_eq!(server.attr("obsgate.mode"), Some("proxy"));
    let auth = spans.iter().find(|s| s.name == "auth").expect("auth span");
    assert_eq!(auth.parent, server.span_id);
    assert_eq!(auth.attr("obsgate.decision"), Some("allow"));
    let upstream = spans
        .iter()
        .find(|s| s.name == "upstream")
        .expect("upstream span");
    assert_eq!(upstream.parent, server.span_id);
    assert_eq!(upstream.kind, 3, "client span");
    assert_eq!(
        upstream.span_id, parent,
        "the backend's parent is the upstream span"
    );
    assert_eq!(upstream.attr("http.response.status_code"), Some("200"));
    assert_eq!(upstream.attr("obsgate.backend"), Some("metrics"));
    assert_eq!(spans.len(), 3, "{spans:#?}");
    assert_no_secret(&spans);
    let exports = rx.got.lock().unwrap().exports.clone();
    assert!(!exports.is_empty());
    for (path, ct, h) in &exports {
        assert_eq!(path, "/v1/traces");
        assert_eq!(ct, "application/x-protobuf");
        assert_eq!(
            h.get("x-scope-orgid").unwrap(),
            "ops",
            "export headers are sent"
        );
    }
}

#[tokio::test]
async fn otlp_grpc_exports_new_traces_denials_and_rewrites() {
    let up = Upstream::start().await;
    let rx = Receiver::start().await;
    let yaml = tracing_yaml(&up, &rx, "grpc", "1", "lbac:\n  mode: rewrite\n");
    let setup = Setup::new(&yaml, &policies());
    let gw = setup.start().await;
    let addr = gw.shared_addr();
    // no traceparent: a new trace, sampled at ratio 1
    let r = send(
        &client(),
        traced_get(addr, "/prometheus/api/v1/query?query=up", "lbac", None),
    )
    .await;
    assert_eq!(r.status, 200);
    let new_trace = trace_id_of(&r);
    let (t, _, f) = upstream_traceparent(&up.last());
    assert_eq!((t.as_str(), f.as_str()), (new_trace.as_str(), "01"));
    // a client's traceparent that is not W3C: ignored, a new trace
    let r = send(
        &client(),
        traced_get(
            addr,
            "/prometheus/api/v1/query?query=up",
            "rw",
            Some("01-zz-zz-zz"),
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    let other = trace_id_of(&r);
    assert_ne!(other, new_trace);
    assert_eq!(
        upstream_traceparent(&up.last()).0,
        other,
        "the client's broken value is replaced"
    );
    // a denial: the trace has no upstream span, the server span says 403
    let seen = up.requests().len();
    let r = send(
        &client(),
        post(
            addr,
            "/api/v1/push",
            Some(&basic("team-a", &tok("ro"))),
            "x",
        ),
    )
    .await;
    assert_eq!(r.status, 403);
    let denied = trace_id_of(&r);
    assert_eq!(up.requests().len(), seen);
    // a 404 is traced too
    let r = send(&client(), traced_get(addr, "/nope", "rw", None)).await;
    assert_eq!(r.status, 404);
    assert!(r.headers.contains_key("x-trace-id"));

    gw.shutdown().await;
    let spans = rx.spans();
    let of = |trace: &str| -> Vec<GotSpan> {
        spans
            .iter()
            .filter(|s| s.trace_id == trace)
            .cloned()
            .collect()
    };
    let first = of(&new_trace);
    let names: Vec<&str> = first.iter().map(|s| s.name.as_str()).collect();
    for n in [
        "auth",
        "rewrite",
        "upstream",
        "GET /prometheus/api/v1/query",
    ] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }
    let server = first.iter().find(|s| s.kind == 2).unwrap();
    assert_eq!(server.parent, "", "a root span");
    let rewrite = first.iter().find(|s| s.name == "rewrite").unwrap();
    assert_eq!(rewrite.parent, server.span_id);
    let auth = first.iter().find(|s| s.name == "auth").unwrap();
    assert_eq!(auth.attr("obsgate.label_policies"), Some("rewrite"));
    let d = of(&denied);
    let dserver = d
        .iter()
        .find(|s| s.kind == 2)
        .expect("the denial's server span");
    assert_eq!(dserver.attr("http.response.status_code"), Some("403"));
    assert!(!dserver.error, "a 403 is the gateway working, not an error");
    let dauth = d.iter().find(|s| s.name == "auth").unwrap();
    assert_eq!(dauth.attr("obsgate.decision"), Some("deny"));
    assert_eq!(dauth.attr("obsgate.status"), Some("403"));
    assert!(d.iter().all(|s| s.name != "upstream"));
    assert!(
        spans
            .iter()
            .any(|s| s.name == "GET" && s.attr("http.response.status_code") == Some("404"))
    );
    assert_no_secret(&spans);
    let exports = rx.got.lock().unwrap().exports.clone();
    assert!(!exports.is_empty());
    for (path, ct, h) in &exports {
        assert_eq!(path, GRPC_PATH);
        assert!(ct.starts_with("application/grpc"), "{ct}");
        assert_eq!(
            h.get("x-scope-orgid").unwrap(),
            "ops",
            "export metadata is sent"
        );
    }
}

#[tokio::test]
async fn a_dead_backend_is_an_error_span() {
    let up = Upstream::start().await;
    let rx = Receiver::start().await;
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let yaml = gateway_yaml(
        &backend("metrics", "mimir", &format!("http://{dead}"), ""),
        &format!(
            "tracing:\n  endpoint: \"http://{}\"\n  sample_ratio: 1\n",
            rx.addr
        ),
    );
    drop(up);
    let setup = Setup::new(&yaml, &policies());
    let gw = setup.start().await;
    let r = send(
        &client(),
        traced_get(
            gw.shared_addr(),
            "/prometheus/api/v1/query?query=up",
            "rw",
            None,
        ),
    )
    .await;
    assert_eq!(r.status, 502);
    gw.shutdown().await;
    let spans = rx.spans();
    let upstream = spans
        .iter()
        .find(|s| s.name == "upstream")
        .expect("upstream span");
    assert!(upstream.error);
    let server = spans.iter().find(|s| s.kind == 2).unwrap();
    assert!(server.error, "a 502 marks the request's span as an error");
    assert_eq!(server.service, "obsgate", "default service.name");
}

#[tokio::test]
async fn without_tracing_the_clients_trace_context_passes_untouched() {
    let up = Upstream::start().await;
    let setup = Setup::new(
        &gateway_yaml(&backend("metrics", "mimir", &up.url(), ""), ""),
        &policies(),
    );
    let gw = setup.start().await;
    assert!(gw.gateway.tracing.is_none());
    let tp = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let r = send(
        &client(),
        traced_get(
            gw.shared_addr(),
            "/prometheus/api/v1/query?query=up",
            "rw",
            Some(&tp),
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(!r.headers.contains_key("x-trace-id"));
    assert_eq!(up.last().headers.get("traceparent").unwrap(), tp.as_str());
    assert_eq!(up.last().headers.get("tracestate").unwrap(), "vendor=abc");
    gw.shutdown().await;
}

#[tokio::test]
async fn forward_auth_questions_are_traced() {
    let up = Upstream::start().await;
    let rx = Receiver::start().await;
    let yaml = tracing_yaml(
        &up,
        &rx,
        "http",
        "0",
        "forward_auth:\n  listen: \"127.0.0.1:0\"\n",
    );
    let setup = Setup::new(&yaml, &policies());
    let gw = setup.start().await;
    let fa = gw.forward_auth.unwrap();
    let tp = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let q = Request::get(format!("http://{fa}/auth"))
        .header("authorization", basic("team-a", &tok("ro")))
        .header("x-original-method", "POST")
        .header("x-original-uri", "/api/v1/push")
        .header("traceparent", &tp)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(&client(), q).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.headers.get("x-trace-id").unwrap(), CLIENT_TRACE);
    gw.shutdown().await;
    let spans = rx.spans();
    let server = spans
        .iter()
        .find(|s| s.kind == 2)
        .expect("a span for the question");
    assert_eq!(server.trace_id, CLIENT_TRACE);
    assert_eq!(server.parent, CLIENT_SPAN);
    assert_eq!(server.attr("obsgate.mode"), Some("forward_auth"));
    assert_eq!(server.attr("http.response.status_code"), Some("403"));
    assert_eq!(server.attr("obsgate.original.method"), Some("POST"));
    assert_eq!(server.attr("obsgate.original.route"), Some("/api/v1/push"));
    assert_eq!(server.attr("obsgate.decision"), Some("deny"));
    assert_eq!(server.attr("obsgate.token"), Some("ro"));
    assert_eq!(server.attr("obsgate.tenant"), Some("team-a"));
}

/// `obsgate serve` as a user runs it: JSON logs whose audit line carries the trace ID the
/// client was given, and text logs with the same fields.
#[tokio::test]
async fn audit_lines_carry_the_trace_id_in_json_and_text_logs() {
    use std::io::BufRead;
    let up = Upstream::start().await;
    let rx = Receiver::start().await;
    for format in ["json", "text"] {
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let yaml = format!(
            "server:\n  listen: \"127.0.0.1:{port}\"\nstore:\n  policy_files: [policies.yaml]\nbackends:\n{}\ntracing:\n  endpoint: \"http://{}\"\n  sample_ratio: 0\nlog:\n  format: {format}\n",
            backend("metrics", "mimir", &up.url(), ""),
            rx.addr
        );
        let setup = Setup::new(&yaml, &policies());
        let mut child = KillOnDrop(
            std::process::Command::new(env!("CARGO_BIN_EXE_obsgate"))
                .args(["serve", "--config"])
                .arg(setup.path("gateway.yaml"))
                .env_remove("OBSGATE_LOG")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let ready = eventually(Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
        assert!(ready.is_some(), "obsgate serve listens");
        let r = send(
            &client(),
            post(
                addr,
                "/api/v1/push",
                Some(&basic("team-a", &tok("ro"))),
                "x",
            ),
        )
        .await;
        assert_eq!(r.status, 403);
        let trace_id = trace_id_of(&r);
        // give the audit line a moment to be written, then stop the process
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = child.0.kill();
        let stderr = child.0.stderr.take().unwrap();
        let lines: Vec<String> = std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect();
        let _ = child.0.wait();
        let all = lines.join("\n");
        assert!(!all.contains(&tok("ro")), "no token in the logs");
        if format == "json" {
            let mut audit = None;
            for l in &lines {
                let v: serde_json::Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("every line is one JSON object ({e}): {l}"));
                assert!(
                    v["timestamp"].is_string() && v["level"].is_string() && v["target"].is_string(),
                    "{l}"
                );
                if v["target"] == "obsgate::audit" {
                    audit = Some(v);
                }
            }
            let a = audit.unwrap_or_else(|| panic!("an audit line in {all}"));
            assert_eq!(a["message"], "request denied");
            assert_eq!(a["detail"], "missing scope metrics:write");
            assert_eq!(a["trace_id"], trace_id.as_str());
            assert_eq!(a["token"], "ro");
            assert_eq!(a["policy"], "pol-ro");
            assert_eq!(a["tenant"], "team-a");
            assert_eq!(a["client_ip"], "127.0.0.1");
            assert_eq!(a["route"], "/api/v1/push");
            assert_eq!(a["status"], 403);
            assert_eq!(a["reason"], "missing_scope");
            assert_eq!(a["mode"], "proxy");
        } else {
            let line = lines
                .iter()
                .find(|l| l.contains("obsgate::audit"))
                .unwrap_or_else(|| panic!("an audit line in {all}"));
            assert!(line.contains(&format!("trace_id=\"{trace_id}\"")), "{line}");
            assert!(
                line.contains("token=\"ro\"") && line.contains("status=403"),
                "{line}"
            );
            assert!(serde_json::from_str::<serde_json::Value>(line).is_err());
        }
    }
}

/// `obsgate serve` stopped however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_request_the_tenant_controls_refuse_says_so_in_its_auth_span() {
    let up = Upstream::start().await;
    let rx = Receiver::start().await;
    let yaml = tracing_yaml(&up, &rx, "http", "1", "").replace(
        "  poll_interval: 100ms\n",
        "  poll_interval: 100ms\n  controls_file: controls.yaml\n",
    );
    let setup = Setup::new(&yaml, &policies());
    std::fs::write(
        setup.path("controls.yaml"),
        "tenants:\n  - tenant: team-a\n    block: { reads: true, status: 503, message: incident }\n",
    )
    .unwrap();
    let gw = setup.start().await;
    let r = send(
        &client(),
        traced_get(
            gw.shared_addr(),
            "/prometheus/api/v1/query?query=up",
            "rw",
            None,
        ),
    )
    .await;
    assert_eq!(r.status, 503);
    let trace = trace_id_of(&r);
    assert!(up.requests().is_empty());
    gw.shutdown().await;
    let spans: Vec<GotSpan> = rx
        .spans()
        .into_iter()
        .filter(|s| s.trace_id == trace)
        .collect();
    let auth = spans.iter().find(|s| s.name == "auth").expect("auth span");
    assert_eq!(auth.attr("obsgate.decision"), Some("deny"));
    assert_eq!(auth.attr("obsgate.controls"), Some("blocked_reads"));
    assert_eq!(auth.attr("obsgate.status"), Some("503"));
    let server = spans.iter().find(|s| s.kind == 2).unwrap();
    assert_eq!(server.attr("obsgate.tenant"), Some("team-a"));
    assert!(server.error, "a 503 marks the request's span");
    assert!(spans.iter().all(|s| s.name != "upstream"));
}

/// `obsgate serve` on the single-threaded scheduler: SIGTERM exports the queued spans before
/// the process exits (the exporter runs on the runtime the shutdown must not block).
#[tokio::test]
async fn sigterm_exports_the_queued_spans_on_one_worker_thread() {
    let up = Upstream::start().await;
    let rx = Receiver::start().await;
    for protocol in ["http", "grpc"] {
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let yaml = format!(
            "server:\n  listen: \"127.0.0.1:{port}\"\nstore:\n  policy_files: [policies.yaml]\nbackends:\n{}\ntracing:\n  endpoint: \"http://{}\"\n  protocol: {protocol}\n  sample_ratio: 1\n",
            backend("metrics", "mimir", &up.url(), ""),
            rx.addr
        );
        let setup = Setup::new(&yaml, &policies());
        let mut child = KillOnDrop(
            std::process::Command::new(env!("CARGO_BIN_EXE_obsgate"))
                .args(["serve", "--config"])
                .arg(setup.path("gateway.yaml"))
                .env("TOKIO_WORKER_THREADS", "1")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(
            eventually(Duration::from_secs(20), || async {
                tokio::net::TcpStream::connect(addr).await.is_ok()
            })
            .await
            .is_some()
        );
        let r = send(
            &client(),
            traced_get(addr, "/prometheus/api/v1/query?query=up", "rw", None),
        )
        .await;
        assert_eq!(r.status, 200);
        let trace = trace_id_of(&r);
        // the batch is sent every 5 s: well before that, SIGTERM
        let t0 = std::time::Instant::now();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &child.0.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = tokio::task::spawn_blocking(move || {
            let s = child.0.wait().unwrap();
            (s, child)
        })
        .await
        .unwrap()
        .0;
        assert!(status.success(), "{protocol}: exit 0 after SIGTERM");
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "{protocol}: no stall at shutdown"
        );
        let spans: Vec<GotSpan> = rx
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace)
            .collect();
        assert_eq!(
            spans.len(),
            3,
            "{protocol}: server, auth and upstream spans: {spans:#?}"
        );
    }
}

/// `continue_client_traces: false` starts a trace of its own whatever the client sends, and a
/// receiver that is down costs the request nothing: the spans are counted as failed.
#[tokio::test]
async fn client_context_can_be_ignored_and_failed_exports_are_counted() {
    let up = Upstream::start().await;
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let yaml = gateway_yaml(
        &backend("metrics", "mimir", &up.url(), ""),
        &format!(
            "tracing:\n  endpoint: \"http://{dead}\"\n  sample_ratio: 1\n  continue_client_traces: false\n  timeout: 1s\n"
        ),
    );
    let setup = Setup::new(&yaml, &policies());
    let gw = setup.start().await;
    let g = gw.gateway.clone();
    let tp = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-00");
    let r = send(
        &client(),
        traced_get(
            gw.shared_addr(),
            "/prometheus/api/v1/query?query=up",
            "rw",
            Some(&tp),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "a dead receiver costs the request nothing");
    let own = trace_id_of(&r);
    assert_ne!(own, CLIENT_TRACE, "the client's trace is not continued");
    let (t, _, flags) = upstream_traceparent(&up.last());
    assert_eq!(
        (t.as_str(), flags.as_str()),
        (own.as_str(), "01"),
        "nor its sampling flag"
    );
    gw.shutdown().await;
    let failed = g.metrics.trace_spans.with_label_values(&["failure"]).get();
    let ok = g.metrics.trace_spans.with_label_values(&["success"]).get();
    assert_eq!((failed, ok), (3, 0), "three spans, none delivered");
    let text = String::from_utf8(g.metrics.render()).unwrap();
    assert!(
        text.contains("obsgate_trace_spans_exported_total{result=\"failure\"} 3"),
        "{text}"
    );
}

/// An `https://` receiver whose certificate a private CA signed: with `tracing.ca_file` naming
/// that CA, both protocols deliver; without it, the handshake fails and the spans are counted
/// as failed (the system roots do not know the CA). A file that holds no certificate stops the
/// start with an error naming the key.
#[tokio::test]
async fn https_receivers_with_a_private_ca_need_ca_file() {
    let pki = localhost_pki();
    let up = Upstream::start().await;
    for protocol in ["http", "grpc"] {
        for with_ca in [true, false] {
            let rx = Receiver::start_tls(&pki.cert_pem, &pki.key_pem).await;
            let ca_line = if with_ca {
                "  ca_file: otlp-ca.pem\n"
            } else {
                ""
            };
            let yaml = gateway_yaml(
                &backend("metrics", "mimir", &up.url(), ""),
                &format!(
                    "tracing:\n  endpoint: \"https://localhost:{}\"\n  protocol: {protocol}\n  sample_ratio: 1\n  timeout: 2s\n{ca_line}",
                    rx.addr.port()
                ),
            );
            let setup = Setup::new(&yaml, &policies());
            // relative to the config file's directory
            std::fs::write(setup.path("otlp-ca.pem"), &pki.ca_pem).unwrap();
            let gw = setup.start().await;
            let g = gw.gateway.clone();
            let r = send(
                &client(),
                traced_get(
                    gw.shared_addr(),
                    "/prometheus/api/v1/query?query=up",
                    "rw",
                    None,
                ),
            )
            .await;
            assert_eq!(r.status, 200);
            let id = trace_id_of(&r);
            gw.shutdown().await;
            let ok = g.metrics.trace_spans.with_label_values(&["success"]).get();
            let failed = g.metrics.trace_spans.with_label_values(&["failure"]).get();
            let spans = rx.spans();
            if with_ca {
                assert_eq!((ok, failed), (3, 0), "{protocol} with ca_file");
                assert_eq!(spans.len(), 3, "{protocol}: {spans:#?}");
                assert!(spans.iter().all(|s| s.trace_id == id));
            } else {
                assert_eq!((ok, failed), (0, 3), "{protocol} without ca_file");
                assert!(spans.is_empty(), "{protocol}: nothing gets through");
            }
        }
    }
    // a CA file that is not one stops the start, naming the key and the file
    for protocol in ["http", "grpc"] {
        let yaml = gateway_yaml(
            &backend("metrics", "mimir", &up.url(), ""),
            &format!(
                "tracing:\n  endpoint: \"https://localhost:4318\"\n  protocol: {protocol}\n  ca_file: otlp-ca.pem\n"
            ),
        );
        let setup = Setup::new(&yaml, &policies());
        std::fs::write(setup.path("otlp-ca.pem"), "not a certificate\n").unwrap();
        let config = obsgate::config::load(&setup.path("gateway.yaml")).unwrap();
        let err = match obsgate::proxy::server::start(config).await {
            Ok(_) => panic!("{protocol}: a start with a broken tracing.ca_file"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("tracing.ca_file"), "{protocol}: {err}");
        assert!(err.contains("otlp-ca.pem"), "{protocol}: {err}");
    }
}
