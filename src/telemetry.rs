//! Metrics (`/metrics`, names prefixed `obsgate_`) and logging setup.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

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
    pub upstream_duration: HistogramVec,
    pub upstream_errors: IntCounterVec,
    pub inflight: IntGauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("metric definition is valid");
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric names are unique");
                m
            }};
        }
        Metrics {
            requests: reg!(IntCounterVec::new(
                Opts::new(
                    "obsgate_requests_total",
                    "Requests handled, by backend, route and status code."
                ),
                &["backend", "route", "code"]
            )),
            request_duration: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "obsgate_request_duration_seconds",
                    "Time from request to response headers, by backend."
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["backend"]
            )),
            auth_decisions: reg!(IntCounterVec::new(
                Opts::new(
                    "obsgate_auth_decisions_total",
                    "Authentication and authorization decisions."
                ),
                &["result", "reason"]
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
            registry,
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

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Installs the global log subscriber. `OBSGATE_LOG` overrides the configured level.
pub fn init_logging(level: &str) {
    let filter = std::env::var("OBSGATE_LOG")
        .ok()
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .or_else(|| tracing_subscriber::EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}
