//! Request tracing with OpenTelemetry: the W3C trace context a client sends (`traceparent`,
//! `tracestate`) is continued, or a trace is started; each request gets a server span with
//! children for authentication, the query rewrite and the upstream call; spans are exported by
//! OTLP (HTTP/protobuf or gRPC) from a batch processor's own thread.
//!
//! With `tracing:` absent nothing here runs: the gateway holds no tracer and every request pays
//! one `Option` check.

use crate::config::{OtlpProtocol, TracingConfig};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use std::sync::Arc;
use std::time::Duration;

/// The response header that names the request's trace.
pub const TRACE_ID_HEADER: http::HeaderName = http::HeaderName::from_static("x-trace-id");
const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// Lowercase hex of `bytes` into `out` (twice as long): IDs are written on every traced
/// request, and `format!("{:032x}")` costs several times as much.
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0x0f)];
    }
}

/// The gateway's tracer and the provider that exports its spans.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    /// `tracing.continue_client_traces`
    continue_client: bool,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tracing")
    }
}

impl Tracing {
    /// Builds the exporter and the provider. Must run inside the Tokio runtime: the exporters'
    /// connections live on it, while the batch processor's thread hands them the spans.
    pub fn start(
        cfg: &TracingConfig,
        metrics: &crate::telemetry::Metrics,
    ) -> Result<Arc<Tracing>, String> {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
        let exporter = match cfg.protocol {
            OtlpProtocol::Http => {
                let client = ExportClient::new(cfg.timeout, cfg.ca_file.as_deref())?;
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_endpoint(cfg.endpoint.clone())
                    .with_timeout(cfg.timeout)
                    .with_headers(cfg.headers.iter().cloned().collect())
                    .with_http_client(client)
                    .build()
            }
            OtlpProtocol::Grpc => {
                let mut headers = HeaderMap::new();
                for (k, v) in &cfg.headers {
                    let name = http::HeaderName::from_bytes(k.as_bytes())
                        .map_err(|_| format!("tracing.headers: {k} is not valid gRPC metadata"))?;
                    let value = HeaderValue::from_str(v)
                        .map_err(|_| format!("tracing.headers: the value of {k} is not valid"))?;
                    headers.insert(name, value);
                }
                let metadata =
                    opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers);
                let mut b = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(cfg.endpoint.clone())
                    .with_timeout(cfg.timeout)
                    .with_metadata(metadata);
                if cfg.endpoint.starts_with("https://") {
                    use opentelemetry_otlp::tonic_types::transport::{
                        Certificate, ClientTlsConfig,
                    };
                    let mut tls = ClientTlsConfig::new().with_native_roots();
                    if let Some(ca) = &cfg.ca_file {
                        // checked here, so that a file that holds no usable certificate fails
                        // the start instead of every export
                        let pem = crate::tls::read_ca_pem(ca)
                            .map_err(|e| format!("tracing.ca_file: {e}"))?;
                        tls = tls.ca_certificate(Certificate::from_pem(pem));
                    }
                    b = b.with_tls_config(tls);
                }
                b.build()
            }
        }
        .map_err(|e| format!("tracing: cannot build the OTLP exporter: {e}"))?;
        let exporter = Counted {
            inner: exporter,
            spans_ok: metrics.trace_spans.with_label_values(&["success"]),
            spans_failed: metrics.trace_spans.with_label_values(&["failure"]),
            last_warning: std::sync::Mutex::new(None),
        };
        let ratio = Sampler::TraceIdRatioBased(cfg.sample_ratio);
        let sampler = if cfg.parent_based {
            Sampler::ParentBased(Box::new(ratio))
        } else {
            ratio
        };
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_service_name(cfg.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("obsgate");
        Ok(Arc::new(Tracing {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
            continue_client: cfg.continue_client_traces,
        }))
    }

    /// The server span of one request, continuing the client's trace context if it sent one.
    /// `parent_based: false` ignores the client's sampling flag, not its trace. The span's name
    /// and attributes are built only when the span is sampled: an unsampled request (most of
    /// them at the default `sample_ratio`) pays for its trace and span IDs, not for strings
    /// nobody will read. (The ratio sampler reads neither the name nor the attributes.)
    pub fn request(
        &self,
        headers: &HeaderMap,
        describe: impl FnOnce() -> (String, Vec<KeyValue>),
    ) -> RequestTrace {
        use opentelemetry::propagation::TextMapPropagator;
        let parent = if self.continue_client && headers.contains_key(TRACEPARENT) {
            self.propagator
                .extract(&opentelemetry_http::HeaderExtractor(headers))
        } else {
            Context::new()
        };
        let mut span = self
            .tracer
            .span_builder("request")
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &parent);
        if span.is_recording() {
            let (name, attrs) = describe();
            span.update_name(name);
            span.set_attributes(attrs);
        }
        let mut id = [0u8; 32];
        hex_into(&mut id, &span.span_context().trace_id().to_bytes());
        RequestTrace {
            cx: parent.with_span(span),
            tracer: self.tracer.clone(),
            id,
        }
    }

    /// Exports what is queued; called once at shutdown, off the runtime's threads.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::warn!("tracing: spans not exported at shutdown: {e}");
        }
    }
}

/// The OTLP exporter, counting the spans it exported and those it could not, and logging a
/// failure (at most once a minute: a receiver that is down fails every batch).
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    spans_ok: prometheus::IntCounter,
    spans_failed: prometheus::IntCounter,
    last_warning: std::sync::Mutex<Option<std::time::Instant>>,
}

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter
    for Counted<E>
{
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        let n = batch.len() as u64;
        let r = self.inner.export(batch).await;
        match &r {
            Ok(()) => self.spans_ok.inc_by(n),
            Err(e) => {
                self.spans_failed.inc_by(n);
                let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
                if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    *last = Some(std::time::Instant::now());
                    tracing::warn!(
                        spans = n,
                        "tracing: OTLP export failed (spans dropped; logged at most once a minute): {e}"
                    );
                }
            }
        }
        r
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// One request's trace: its server span, ended by [`RequestTrace::finish`] (or when dropped).
pub struct RequestTrace {
    cx: Context,
    tracer: SdkTracer,
    /// The trace ID in hex, written once.
    id: [u8; 32],
}

impl RequestTrace {
    /// The trace ID, 32 lowercase hex digits (also when the trace is not sampled).
    pub fn trace_id(&self) -> String {
        // hex digits are ASCII: never empty
        std::str::from_utf8(&self.id)
            .map(str::to_owned)
            .unwrap_or_default()
    }

    /// `X-Trace-Id` for the response.
    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.id).unwrap_or_else(|_| HeaderValue::from_static("-"))
    }

    /// A child span of the request's span.
    pub fn child(&self, name: &'static str, kind: SpanKind) -> ChildSpan {
        let parent = self.cx.span();
        if !parent.is_recording() {
            // the children of an unsampled span are unsampled too (the parent-based sampler
            // follows it, the ratio sampler decides on the same trace ID): no span is built,
            // and the upstream gets the request span's context
            return ChildSpan(Child::Unsampled(parent.span_context().clone()));
        }
        ChildSpan(Child::Recording(
            self.tracer
                .span_builder(name)
                .with_kind(kind)
                .start_with_context(&self.tracer, &self.cx),
        ))
    }

    pub fn set_attribute(&self, kv: KeyValue) {
        self.cx.span().set_attribute(kv);
    }

    /// Whether the request's span is sampled (its attributes are worth building).
    pub fn is_recording(&self) -> bool {
        self.cx.span().is_recording()
    }

    /// Ends the request's span with its status code (5xx marks it as an error).
    pub fn finish(self, status: u16) {
        let span = self.cx.span();
        if !span.is_recording() {
            span.end();
            return;
        }
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status >= 500 {
            span.set_status(Status::error(format!("HTTP {status}")));
        }
        span.end();
    }
}

/// A span inside a request: authentication, the rewrite of a query, the upstream call.
pub struct ChildSpan(Child);

// on the stack for one phase of one request: boxing would allocate for every sampled span
#[allow(clippy::large_enum_variant)]
enum Child {
    Recording(opentelemetry_sdk::trace::Span),
    /// A child of an unsampled request: nothing is recorded; the request span's context.
    Unsampled(SpanContext),
}

impl ChildSpan {
    /// Whether this span is sampled (its attributes are worth building).
    pub fn is_recording(&self) -> bool {
        match &self.0 {
            Child::Recording(s) => s.is_recording(),
            Child::Unsampled(_) => false,
        }
    }

    pub fn set_attribute(&mut self, kv: KeyValue) {
        if let Child::Recording(s) = &mut self.0 {
            s.set_attribute(kv);
        }
    }

    pub fn fail(&mut self, message: String) {
        if let Child::Recording(s) = &mut self.0 {
            s.set_status(Status::error(message));
        }
    }

    /// Writes this span's context as the `traceparent` (and the trace's `tracestate`) of the
    /// request sent upstream, replacing whatever the client sent.
    pub fn inject(&self, headers: &mut HeaderMap) {
        let sc: &SpanContext = match &self.0 {
            Child::Recording(s) => s.span_context(),
            Child::Unsampled(sc) => sc,
        };
        // 00-<trace id>-<span id>-<flags>
        let mut tp = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_into(&mut tp[3..35], &sc.trace_id().to_bytes());
        hex_into(&mut tp[36..52], &sc.span_id().to_bytes());
        hex_into(&mut tp[53..55], &[sc.trace_flags().to_u8()]);
        if let Ok(v) = HeaderValue::from_bytes(&tp) {
            headers.insert(TRACEPARENT, v);
        }
        let ts = sc.trace_state().header();
        match HeaderValue::try_from(ts) {
            Ok(v) if !v.is_empty() => {
                headers.insert(TRACESTATE, v);
            }
            _ => {
                headers.remove(TRACESTATE);
            }
        }
    }

    pub fn end(self) {
        if let Child::Recording(mut s) = self.0 {
            s.end();
        }
    }
}

/// The OTLP/HTTP exporter's client: hyper on the gateway's runtime. The batch processor calls
/// it from its own thread, so each export is spawned onto the runtime and awaited from there.
#[derive(Debug)]
struct ExportClient {
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        http_body_util::Full<Bytes>,
    >,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

/// Most of a collector's answer read (it is a small protobuf message).
const MAX_EXPORT_RESPONSE: usize = 1 << 20;

impl ExportClient {
    fn new(timeout: Duration, ca_file: Option<&std::path::Path>) -> Result<ExportClient, String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "tracing: the exporter must start on the runtime".to_string())?;
        let tls =
            crate::tls::client_config(ca_file).map_err(|e| format!("tracing.ca_file: {e}"))?;
        let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_timer(hyper_util::rt::TokioTimer::new())
                .build(https);
        Ok(ExportClient {
            client,
            runtime,
            timeout,
        })
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for ExportClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        use http_body_util::BodyExt;
        let client = self.client.clone();
        let timeout = self.timeout;
        let (parts, body) = request.into_parts();
        let request = http::Request::from_parts(parts, http_body_util::Full::new(body));
        let task = self.runtime.spawn(async move {
            let exchange = async {
                let response = client.request(request).await?;
                let (parts, body) = response.into_parts();
                let body = http_body_util::Limited::new(body, MAX_EXPORT_RESPONSE)
                    .collect()
                    .await?
                    .to_bytes();
                Ok::<_, opentelemetry_http::HttpError>(http::Response::from_parts(parts, body))
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {timeout:?}").into()),
            }
        });
        match task.await {
            Ok(r) => r,
            Err(e) => Err(format!("export task failed: {e}").into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m() -> crate::telemetry::Metrics {
        crate::telemetry::Metrics::new()
    }

    /// The provider's shutdown waits for the batch thread, whose exports run on the runtime:
    /// never on a runtime thread.
    async fn stop(t: Arc<Tracing>) {
        tokio::task::spawn_blocking(move || t.shutdown())
            .await
            .unwrap();
    }

    fn cfg(ratio: f64, parent_based: bool) -> TracingConfig {
        TracingConfig {
            // nothing listens here: these tests never wait for an export
            endpoint: "http://127.0.0.1:9/v1/traces".into(),
            protocol: OtlpProtocol::Http,
            sample_ratio: ratio,
            parent_based,
            continue_client_traces: true,
            service_name: "obsgate".into(),
            headers: vec![],
            timeout: Duration::from_millis(200),
            ca_file: None,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const PARENT_UNSAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

    fn traceparent_of(span: &ChildSpan) -> (String, HeaderMap) {
        let mut out = headers(&[(
            "traceparent",
            "00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-01",
        )]);
        span.inject(&mut out);
        (
            out.get("traceparent")
                .unwrap()
                .to_str()
                .unwrap()
                .to_string(),
            out,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_clients_trace_is_continued_and_its_sampling_followed() {
        let t = Tracing::start(&cfg(0.0, true), &m()).unwrap();
        let rt = t.request(
            &headers(&[("traceparent", PARENT), ("tracestate", "vendor=x")]),
            || ("GET /api/v1/query".into(), vec![]),
        );
        assert_eq!(rt.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(rt.header_value(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let up = rt.child("upstream", SpanKind::Client);
        let (tp, out) = traceparent_of(&up);
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "same trace");
        assert_ne!(
            parts[2], "00f067aa0ba902b7",
            "a span of ours is the parent upstream"
        );
        assert_eq!(
            parts[3], "01",
            "sampled parent: sampled, ratio 0 notwithstanding"
        );
        assert_eq!(out.get("tracestate").unwrap(), "vendor=x");
        up.end();
        rt.finish(200);
        stop(t).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_parent_based_the_ratio_decides() {
        let t = Tracing::start(&cfg(0.0, false), &m()).unwrap();
        let rt = t.request(&headers(&[("traceparent", PARENT)]), || {
            ("GET /x".into(), vec![])
        });
        assert_eq!(
            rt.trace_id(),
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "trace kept"
        );
        let (tp, _) = traceparent_of(&rt.child("upstream", SpanKind::Client));
        assert!(tp.ends_with("-00"), "{tp}: ratio 0 samples nothing");
        let t1 = Tracing::start(&cfg(1.0, true), &m()).unwrap();
        let rt = t1.request(&headers(&[("traceparent", PARENT_UNSAMPLED)]), || {
            ("GET /x".into(), vec![])
        });
        let (tp, _) = traceparent_of(&rt.child("upstream", SpanKind::Client));
        assert!(tp.ends_with("-00"), "{tp}: an unsampled parent is followed");
        stop(t).await;
        stop(t1).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_trace_without_or_with_a_broken_traceparent() {
        let t = Tracing::start(&cfg(1.0, true), &m()).unwrap();
        for h in [
            headers(&[]),
            headers(&[("traceparent", "garbage")]),
            headers(&[(
                "traceparent",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            )]),
            headers(&[(
                "traceparent",
                &format!("{PARENT}-extra-{}", "a".repeat(4000)),
            )]),
        ] {
            let rt = t.request(&h, || ("GET /x".into(), vec![]));
            let id = rt.trace_id();
            assert_eq!(id.len(), 32);
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
            assert_ne!(id, "0".repeat(32));
            assert_ne!(id, "4bf92f3577b34da6a3ce929d0e0e4736");
            let (tp, out) = traceparent_of(&rt.child("upstream", SpanKind::Client));
            assert!(tp.starts_with(&format!("00-{id}-")), "{tp}");
            assert!(tp.ends_with("-01"), "ratio 1: sampled");
            assert!(out.get("tracestate").is_none());
        }
        stop(t).await;
    }

    /// An unsampled request's name and attributes are never built; a sampled one's are.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_sampled_requests_build_their_description() {
        for (ratio, sampled) in [(0.0, false), (1.0, true)] {
            let t = Tracing::start(&cfg(ratio, true), &m()).unwrap();
            let mut built = false;
            let rt = t.request(&headers(&[]), || {
                built = true;
                ("GET /x".into(), vec![KeyValue::new("url.path", "/x")])
            });
            assert_eq!(built, sampled, "ratio {ratio}");
            assert_eq!(rt.is_recording(), sampled);
            let child = rt.child("auth", SpanKind::Internal);
            assert_eq!(child.is_recording(), sampled);
            // the trace ID is there either way (X-Trace-Id, audit lines)
            assert_eq!(rt.trace_id().len(), 32);
            child.end();
            rt.finish(200);
            stop(t).await;
        }
    }

    #[test]
    fn hex_matches_format() {
        let id: u128 = 0x4bf92f3577b34da6a3ce929d0e0e4736;
        let mut out = [0u8; 32];
        hex_into(&mut out, &id.to_be_bytes());
        assert_eq!(std::str::from_utf8(&out).unwrap(), format!("{id:032x}"));
        let mut out = [0u8; 4];
        hex_into(&mut out, &[0x0a, 0xf0]);
        assert_eq!(&out, b"0af0");
    }
}
