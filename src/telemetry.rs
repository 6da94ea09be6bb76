//! Metrics (`/metrics`, names prefixed `obsgate_`) and logging setup.

use crate::config::Component;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, OnceLock, RwLock};

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// How the gateway handled a request: as the proxy (the proxy listeners, the admin API
/// included) or as the authorizer of another proxy (the forward-auth listener). The `mode`
/// label of the request and decision metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Proxy = 0,
    ForwardAuth = 1,
}

impl Mode {
    pub const ALL: [Mode; 2] = [Mode::Proxy, Mode::ForwardAuth];
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Proxy => "proxy",
            Mode::ForwardAuth => "forward_auth",
        }
    }
}

/// Per-request handles, resolved once: `with_label_values` hashes its label strings with SipHash
/// and takes a lock on every call, which the request path should not pay.
pub struct Handles {
    /// `obsgate_auth_decisions_total{mode,result="allow",reason="ok"}` by [`Mode`].
    allowed: [IntCounter; 2],
    /// `obsgate_request_duration_seconds` by mode, backend label (see
    /// [`Handles::backend_index`]) and component (index of [`Component::ALL`], last = "none"),
    /// created on first use.
    request_duration: [[[OnceLock<Histogram>; COMPONENT_LABELS]; 5]; 2],
    request_duration_vec: HistogramVec,
    /// `obsgate_upstream_duration_seconds` by backend label.
    upstream_duration: [Histogram; 4],
    /// `obsgate_requests_total` by (route, mode and backend, code): route names are
    /// `&'static str`s of the route tables, so the key is their address.
    requests: RwLock<RequestCounters>,
}

type RequestCounters = HashMap<(usize, u8, u16), IntCounter, BuildHasherDefault<AddrHasher>>;

const BACKEND_LABELS: [&str; 5] = ["metrics", "logs", "traces", "profiles", "none"];
const COMPONENT_LABELS: usize = Component::ALL.len() + 1;

impl Handles {
    fn new(m: &Metrics) -> Handles {
        Handles {
            allowed: Mode::ALL.map(|mode| {
                m.auth_decisions
                    .with_label_values(&[mode.as_str(), "allow", "ok"])
            }),
            request_duration: Default::default(),
            request_duration_vec: m.request_duration.clone(),
            upstream_duration: [0, 1, 2, 3]
                .map(|i| m.upstream_duration.with_label_values(&[BACKEND_LABELS[i]])),
            requests: RwLock::new(HashMap::default()),
        }
    }

    fn backend_index(backend: &str) -> usize {
        BACKEND_LABELS
            .iter()
            .position(|b| *b == backend)
            .unwrap_or(BACKEND_LABELS.len() - 1)
    }

    /// `obsgate_auth_decisions_total{mode,result="allow",reason="ok"}`
    pub fn allowed(&self, mode: Mode) -> &IntCounter {
        &self.allowed[mode as usize]
    }

    /// The histogram of a mode, backend label and component (`None`: requests no component
    /// served: refused, unmatched, admin).
    pub fn request_duration(
        &self,
        mode: Mode,
        backend: &str,
        component: Option<Component>,
    ) -> &Histogram {
        let b = Self::backend_index(backend);
        let c = component.map_or(COMPONENT_LABELS - 1, Component::index);
        self.request_duration[mode as usize][b][c].get_or_init(|| {
            self.request_duration_vec.with_label_values(&[
                mode.as_str(),
                BACKEND_LABELS[b],
                component.map_or("none", Component::as_str),
            ])
        })
    }

    /// `None` for a label that is not a backend.
    pub fn upstream_duration(&self, backend: &str) -> Option<&Histogram> {
        self.upstream_duration.get(Self::backend_index(backend))
    }
}

/// Hashes the (address, backend, code) key of [`Handles::requests`]: a multiply, no SipHash.
#[derive(Default)]
pub struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(17) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn write_u8(&mut self, n: u8) {
        self.write_u64(n as u64);
    }
    fn write_u16(&mut self, n: u16) {
        self.write_u64(n as u64);
    }
}

/// Every metric the gateway exports. Labels never carry tokens, tenants or client addresses.
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub auth_decisions: IntCounterVec,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub store_reloads: IntCounterVec,
    pub store_objects: IntGaugeVec,
    pub store_generation: IntGauge,
    pub store_last_success: IntGauge,
    /// `obsgate_admin_store_generation`: the last change-log entry applied.
    pub admin_store_generation: IntGauge,
    /// `obsgate_admin_store_last_success_timestamp_seconds`
    pub admin_store_last_success: IntGauge,
    /// `obsgate_admin_store_errors_total{op}`
    pub admin_store_errors: IntCounterVec,
    /// `obsgate_admin_store_requests_total{op}`: every request made to the store.
    pub admin_store_requests: IntCounterVec,
    /// `obsgate_admin_store_stale`: 1 while past `max_staleness` (admin tokens refused).
    pub admin_store_stale: IntGauge,
    pub upstream_duration: HistogramVec,
    pub upstream_errors: IntCounterVec,
    pub inflight: IntGauge,
    /// `obsgate_upstream_requests_total{backend,component,endpoint,code}`
    pub upstream_requests: IntCounterVec,
    /// `obsgate_upstream_endpoint_healthy{backend,component,endpoint}`
    pub endpoint_healthy: IntGaugeVec,
    /// `obsgate_upstream_inflight{backend,component,endpoint}`
    pub upstream_inflight: IntGaugeVec,
    /// `obsgate_upstream_retries_total{backend,component,reason}`
    pub upstream_retries: IntCounterVec,
    /// `obsgate_upstream_endpoints{backend,component}`: endpoints known now (DNS changes it).
    pub upstream_endpoints: IntGaugeVec,
    /// `obsgate_mirror_requests_total{backend,mirror,result}`
    pub mirror_requests: IntCounterVec,
    /// `obsgate_limit_hits_total{limit}`, resolved once.
    pub limits: Arc<LimitCounters>,
    pub connections: IntGauge,
    pub tls_reloads: IntCounterVec,
    /// `obsgate_trace_spans_exported_total{result}`: spans handed to the OTLP receiver.
    pub trace_spans: IntCounterVec,
    /// `obsgate_tenant_controls_refused_total{reason}`: requests the per-tenant controls refused.
    pub controls_refused: IntCounterVec,
    /// `obsgate_controls_reloads_total{result}`: loads of `store.controls_file`.
    pub controls_reloads: IntCounterVec,
    /// `obsgate_controls_last_success_timestamp_seconds`
    pub controls_last_success: IntGauge,
    /// `obsgate_controls_blocks_active`: tenant entries with a block in force.
    pub controls_blocks_active: IntGauge,
    /// `obsgate_proxy_protocol_total{result}`: connections on listeners with `proxy_protocol`.
    pub proxy_protocol: IntCounterVec,
    handles: OnceLock<Handles>,
    /// Every family registered, with whether it is a histogram: see [`Metrics::exported_names`].
    families: Vec<(String, bool)>,
}

/// One counter per limit of `obsgate_limit_hits_total`.
pub struct LimitCounters {
    pub header_timeout: IntCounter,
    pub header_too_large: IntCounter,
    pub idle_timeout: IntCounter,
    pub body_too_large: IntCounter,
    pub body_timeout: IntCounter,
    pub max_connections: IntCounter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let mut families = Vec::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("metric definition is valid");
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric names are unique");
                let histogram = is_histogram(&m);
                let descs = prometheus::core::Collector::desc(&m);
                families.extend(descs.iter().map(|d| (d.fq_name.clone(), histogram)));
                m
            }};
        }
        let mut metrics = Metrics {
            requests: reg!(IntCounterVec::new(
                Opts::new(
                    "obsgate_requests_total",
                    "Requests handled, by mode (proxy, forward_auth), backend, route and status code."
                ),
                &["mode", "backend", "route", "code"]
            )),
            request_duration: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "obsgate_request_duration_seconds",
                    "Time from request to response headers, by mode (proxy, forward_auth), backend and the component of the route (none: no route matched)."
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["mode", "backend", "component"]
            )),
            auth_decisions: reg!(IntCounterVec::new(
                Opts::new(
                    "obsgate_auth_decisions_total",
                    "Authentication and authorization decisions, by mode (proxy, forward_auth), result and reason."
                ),
                &["mode", "result", "reason"]
            )),
            cache_hits: reg!(IntCounter::new(
                "obsgate_token_cache_hits_total",
                "Resolved-token cache hits."
            )),
            cache_misses: reg!(IntCounter::new(
                "obsgate_token_cache_misses_total",
                "Resolved-token cache misses."
            )),
            store_reloads: reg!(IntCounterVec::new(
                Opts::new(
                    "obsgate_store_reloads_total",
                    "Policy store loads and reloads, by result."
                ),
                &["result"]
            )),
            store_objects: reg!(IntGaugeVec::new(
                Opts::new(
                    "obsgate_store_objects",
                    "Objects in the policy set in force, by kind."
                ),
                &["kind"]
            )),
            store_generation: reg!(IntGauge::new(
                "obsgate_store_generation",
                "Generation of the policy set in force."
            )),
            store_last_success: reg!(IntGauge::new(
                "obsgate_store_last_success_timestamp_seconds",
                "Unix time of the last successful policy load."
            )),
            admin_store_generation: reg!(IntGauge::new(
                "obsgate_admin_store_generation",
                "Sequence number of the last admin change applied from the admin store."
            )),
            admin_store_last_success: reg!(IntGauge::new(
                "obsgate_admin_store_last_success_timestamp_seconds",
                "Unix time of the last successful read of the admin store."
            )),
            admin_store_errors: reg!(IntCounterVec::new(
                Opts::new(
                    "obsgate_admin_store_errors_total",
                    "Failed admin-store operations, by operation."
                ),
                &["op"]
            )),
            admin_store_requests: reg!(IntCounterVec::new(
                Opts::new(
                    "obsgate_admin_store_requests_total",
                    "Requests made to the admin store, by operation (get, put, list, delete)."
                ),
                &["op"]
            )),
            admin_store_stale: reg!(IntGauge::new(
                "obsgate_admin_store_stale",
                "1 while the admin store has not been read for longer than max_staleness: tokens known only from it are refused."
            )),
            upstream_duration: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "obsgate_upstream_duration_seconds",
                    "Upstream time to response headers, by backend."
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["backend"]
            )),
            upstream_errors: reg!(IntCounterVec::new(
                Opts::new(
                    "obsgate_upstream_errors_total",
                    "Upstream failures, by backend and kind (connect, timeout, other)."
                ),
                &["backend", "kind"]
            )),
            inflight: reg!(IntGauge::new(
                "obsgate_inflight_requests",
                "Requests being handled now."
            )),
            upstream_requests: reg!(IntCounterVec::new(
                Opts::new(
                    "obsgate_upstream_requests_total",
                    "Requests sent to upstream endpoints, by backend, component, endpoint and status code (connect_error, timeout, error: no response)."
                ),
                &["backend", "component", "endpoint", "code"]
            )),
            endpoint_healthy: reg!(IntGaugeVec::new(
                Opts::new(
                    "obsgate_upstream_endpoint_healthy",
                    "1 when an upstream endpoint is healthy (active checks and connection failures), else 0."
                ),
                &["backend", "component", "endpoint"]
            )),
            upstream_inflight: reg!(IntGaugeVec::new(
                Opts::new(
                    "obsgate_upstream_inflight",
                    "Requests in flight to each upstream endpoint."
                ),
                &["backend", "component", "endpoint"]
            )),
            upstream_retries: reg!(IntCounterVec::new(
                Opts::new(
                    "obsgate_upstream_retries_total",
                    "Requests sent a second time to another endpoint, by reason (connect: nothing was sent; reset: a read lost its connection before a response)."
                ),
                &["backend", "component", "reason"]
            )),
            upstream_endpoints: reg!(IntGaugeVec::new(
                Opts::new(
                    "obsgate_upstream_endpoints",
                    "Endpoints of each component now (a dns+ URL adds one per address)."
                ),
                &["backend", "component"]
            )),
            mirror_requests: reg!(IntCounterVec::new(
                Opts::new(
                    "obsgate_mirror_requests_total",
                    "Copies of writes sent to mirrors, by result (ok: 2xx answer, error: other answer or failure, dropped: over mirror_max_inflight or the copy could not keep up)."
                ),
                &["backend", "mirror", "result"]
            )),
            limits: {
                let v = reg!(IntCounterVec::new(
                    Opts::new(
                        "obsgate_limit_hits_total",
                        "Requests or connections stopped by a limit (header_timeout, header_too_large, idle_timeout, body_too_large, body_timeout, max_connections)."
                    ),
                    &["limit"]
                ));
                let c = |l: &str| v.with_label_values(&[l]);
                Arc::new(LimitCounters {
                    header_timeout: c("header_timeout"),
                    header_too_large: c("header_too_large"),
                    idle_timeout: c("idle_timeout"),
                    body_too_large: c("body_too_large"),
                    body_timeout: c("body_timeout"),
                    max_connections: c("max_connections"),
                })
            },
            tls_reloads: reg!(IntCounterVec::new(
                Opts::new(
                    "obsgate_tls_reloads_total",
                    "Reloads of the gateway's TLS certificate, key and client CA, by result."
                ),
                &["result"]
            )),
            trace_spans: reg!(IntCounterVec::new(
                Opts::new(
                    "obsgate_trace_spans_exported_total",
                    "Spans exported to the OTLP receiver (tracing:), by result: success, or failure (the batch was dropped)."
                ),
                &["result"]
            )),
            proxy_protocol: reg!(IntCounterVec::new(
                Opts::new(
                    "obsgate_proxy_protocol_total",
                    "Connections on listeners with proxy_protocol, by result: ok (the header's client address is used), local (v2 LOCAL, v1 UNKNOWN: the peer is the client), untrusted (peer not in client_ip.trusted_proxies), malformed, timeout (these three closed)."
                ),
                &["result"]
            )),
            connections: reg!(IntGauge::new(
                "obsgate_open_connections",
                "Client connections open now, on every listener."
            )),
            controls_refused: reg!(IntCounterVec::new(
                Opts::new(
                    "obsgate_tenant_controls_refused_total",
                    "Requests refused by the per-tenant controls (store.controls_file), by reason: blocked_reads, blocked_writes, blocked_rules, tenant_rate, tenant_inflight, token_rate, token_inflight."
                ),
                &["reason"]
            )),
            controls_reloads: reg!(IntCounterVec::new(
                Opts::new(
                    "obsgate_controls_reloads_total",
                    "Loads and reloads of the per-tenant controls file, by result."
                ),
                &["result"]
            )),
            controls_last_success: reg!(IntGauge::new(
                "obsgate_controls_last_success_timestamp_seconds",
                "Unix time of the last successful load of the per-tenant controls file."
            )),
            controls_blocks_active: reg!(IntGauge::new(
                "obsgate_controls_blocks_active",
                "Tenant entries of the per-tenant controls (\"*\" included) with a block in force."
            )),
            registry,
            handles: OnceLock::new(),
            families: Vec::new(),
        };
        metrics.families = families;
        metrics
    }

    /// The name of every series family `/metrics` can show, children or not yet: a histogram's
    /// `_bucket`, `_sum` and `_count`, the name of any other metric (the dashboard and alert
    /// rules in deploy/ are checked against it).
    pub fn exported_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for (name, histogram) in &self.families {
            if *histogram {
                names.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}")));
            } else {
                names.push(name.clone());
            }
        }
        names
    }

    /// Handles for the request path, resolved on first use.
    pub fn handles(&self) -> &Handles {
        self.handles.get_or_init(|| Handles::new(self))
    }

    /// `obsgate_auth_decisions_total{mode,result="deny",reason}` +1.
    pub fn denied(&self, mode: Mode, reason: &str) {
        self.auth_decisions
            .with_label_values(&[mode.as_str(), "deny", reason])
            .inc();
    }

    /// `obsgate_requests_total{mode,backend,route,code}` +1. `route` is a route-table name.
    pub fn count_request(&self, mode: Mode, backend: &'static str, route: &'static str, code: u16) {
        let h = self.handles();
        let key = (
            route.as_ptr() as usize,
            (Handles::backend_index(backend) as u8) | ((mode as u8) << 4),
            code,
        );
        if let Some(c) = h
            .requests
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            c.inc();
            return;
        }
        let c = self.requests.with_label_values(&[
            mode.as_str(),
            backend,
            route,
            http::StatusCode::from_u16(code)
                .map(|c| c.as_str().to_owned())
                .unwrap_or_else(|_| code.to_string())
                .as_str(),
        ]);
        c.inc();
        let mut map = h.requests.write().unwrap_or_else(|e| e.into_inner());
        // bounded: route names × backends × codes seen; a pathological mix stays small
        if map.len() < 4096 {
            map.insert(key, c);
        }
    }

    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(8192);
        let enc = TextEncoder::new();
        // encoding into a Vec cannot fail for well-formed metric families
        let _ = enc.encode(&self.registry.gather(), &mut buf);
        buf
    }
}

fn is_histogram<T: 'static>(_: &T) -> bool {
    let t = std::any::TypeId::of::<T>();
    t == std::any::TypeId::of::<Histogram>() || t == std::any::TypeId::of::<HistogramVec>()
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Counts a request in `obsgate_inflight_requests` until dropped: a request whose client went
/// away (its future dropped mid-way) is uncounted too.
pub struct InflightRequest<'a>(&'a IntGauge);

impl InflightRequest<'_> {
    pub fn start(gauge: &IntGauge) -> InflightRequest<'_> {
        gauge.inc();
        InflightRequest(gauge)
    }
}

impl Drop for InflightRequest<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Installs the global log subscriber. `OBSGATE_LOG` overrides the configured level.
///
/// `text`: one line per event, `key=value` fields. `json`: one JSON object per line with
/// `timestamp`, `level`, `target` and every field of the event as a key (an audit line's
/// `token`, `policy`, `tenant`, `client_ip`, `route`, `status`, `reason`, `trace_id` …).
pub fn init_logging(level: &str, format: crate::config::LogFormat) {
    let filter = std::env::var("OBSGATE_LOG")
        .ok()
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .or_else(|| tracing_subscriber::EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_writer(std::io::stderr);
    let _ = match format {
        crate::config::LogFormat::Text => b
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        crate::config::LogFormat::Json => b
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_ansi(false)
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(m: &Metrics, name: &str, labels: &str) -> Option<String> {
        let text = String::from_utf8(m.render()).unwrap();
        let prefix = format!("{name}{{{labels}}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
    }

    #[test]
    fn cached_request_counters_land_in_the_labelled_series() {
        let m = Metrics::new();
        static PUSH: &str = "/api/v1/push";
        static QUERY: &str = "/prometheus/api/v1/query";
        let p = Mode::Proxy;
        m.count_request(p, "metrics", PUSH, 204);
        m.count_request(p, "metrics", PUSH, 204); // from the cache
        m.count_request(p, "metrics", PUSH, 403);
        m.count_request(p, "logs", QUERY, 204);
        m.count_request(p, "none", "unmatched", 404);
        m.count_request(Mode::ForwardAuth, "metrics", PUSH, 204);
        let v = |l: &str| value(&m, "obsgate_requests_total", l);
        assert_eq!(
            v(r#"backend="metrics",code="204",mode="proxy",route="/api/v1/push""#).as_deref(),
            Some("2")
        );
        assert_eq!(
            v(r#"backend="metrics",code="204",mode="forward_auth",route="/api/v1/push""#)
                .as_deref(),
            Some("1"),
            "the mode is part of the cached key"
        );
        assert_eq!(
            v(r#"backend="metrics",code="403",mode="proxy",route="/api/v1/push""#).as_deref(),
            Some("1")
        );
        assert_eq!(
            v(r#"backend="logs",code="204",mode="proxy",route="/prometheus/api/v1/query""#)
                .as_deref(),
            Some("1")
        );
        assert_eq!(
            v(r#"backend="none",code="404",mode="proxy",route="unmatched""#).as_deref(),
            Some("1")
        );
        {
            let _a = InflightRequest::start(&m.inflight);
            let _b = InflightRequest::start(&m.inflight);
            assert_eq!(m.inflight.get(), 2);
        }
        assert_eq!(m.inflight.get(), 0, "dropped requests are uncounted");
        m.handles().allowed(Mode::ForwardAuth).inc();
        assert_eq!(
            value(
                &m,
                "obsgate_auth_decisions_total",
                r#"mode="forward_auth",reason="ok",result="allow""#
            )
            .as_deref(),
            Some("1")
        );
        m.denied(Mode::Proxy, "invalid_token");
        assert_eq!(
            value(
                &m,
                "obsgate_auth_decisions_total",
                r#"mode="proxy",reason="invalid_token",result="deny""#
            )
            .as_deref(),
            Some("1")
        );
        m.handles()
            .request_duration(p, "traces", Some(Component::QueryFrontend))
            .observe(0.001);
        m.handles().request_duration(p, "none", None).observe(0.001);
        m.handles()
            .request_duration(Mode::ForwardAuth, "none", None)
            .observe(0.001);
        assert_eq!(
            value(
                &m,
                "obsgate_request_duration_seconds_count",
                r#"backend="traces",component="query_frontend",mode="proxy""#
            )
            .as_deref(),
            Some("1")
        );
        assert_eq!(
            value(
                &m,
                "obsgate_request_duration_seconds_count",
                r#"backend="none",component="none",mode="proxy""#
            )
            .as_deref(),
            Some("1")
        );
        assert_eq!(
            value(
                &m,
                "obsgate_request_duration_seconds_count",
                r#"backend="none",component="none",mode="forward_auth""#
            )
            .as_deref(),
            Some("1")
        );
        assert!(m.handles().upstream_duration("none").is_none());
    }
}
