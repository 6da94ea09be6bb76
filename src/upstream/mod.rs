//! Upstreams (SPEC 11): a backend is a set of components, a component a set of endpoints, each
//! endpoint with its own connection pools, health and in-flight count. A request goes to the
//! component of its route, to an endpoint chosen by [`balance::choose`], and is retried once on
//! another endpoint when that cannot send a write twice.

pub mod balance;
pub mod client;
pub mod dns;
pub mod health;
pub mod mirror;
pub mod replay;

pub use dns::{Resolve, StaticResolver, SystemResolver};

use crate::config::{
    Backend, BackendSlot, Balance, Component, Config, HealthCheck, Topology, UpstreamUrl,
};
use crate::telemetry::Metrics;
use crate::wire::Body;
use arc_swap::ArcSwap;
use balance::Candidate;
pub use client::UpBody;
use client::{ClientSettings, Clients, EndpointResolver};
use health::{Change, Health, Thresholds};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, Version};
use prometheus::{IntCounter, IntGauge};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// How long one DNS lookup may take before the last known addresses are kept.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// One endpoint: an address with its own pools, health and in-flight count.
pub struct Endpoint {
    /// `host:port` as written, or the resolved `ip:port` of a `dns+` URL: the metrics label.
    pub label: String,
    /// Which URL of the component it comes from, and the address DNS gave (`dns+` only).
    key: (usize, Option<SocketAddr>),
    scheme: http::uri::Scheme,
    /// The URI authority requests carry (for a resolved endpoint: the name without the port,
    /// so that the connector's fixed address and port are used).
    authority: http::uri::Authority,
    base_path: String,
    /// Its connection pools, shared with the same address in other components of the backend.
    pub clients: Arc<Clients>,
    inflight: AtomicUsize,
    unhealthy: AtomicBool,
    /// A connection failure is counted in `health`: the next response must reset the run.
    failing: AtomicBool,
    /// When it was last ejected or failed while ejected (ms since [`clock_ms`]'s origin):
    /// without active checks, an ejected endpoint gets a trial request once `interval` passed.
    ejected_at_ms: std::sync::atomic::AtomicU64,
    health: Mutex<Health>,
    m: EndpointMetrics,
}

struct EndpointMetrics {
    labels: [String; 3],
    inflight: IntGauge,
    healthy: IntGauge,
    /// Status codes seen so far (a handful): a short list, no hashing per response.
    codes: RwLock<Vec<(u16, IntCounter)>>,
    /// Set when the endpoint left DNS: its series are gone and must not come back.
    removed: AtomicBool,
    connect_error: IntCounter,
    timeout: IntCounter,
    error: IntCounter,
}

impl EndpointMetrics {
    fn new(m: &Metrics, backend: &str, component: &str, endpoint: &str) -> EndpointMetrics {
        let l = [backend, component, endpoint];
        let code = |c: &str| {
            m.upstream_requests
                .with_label_values(&[backend, component, endpoint, c])
        };
        let healthy = m.endpoint_healthy.with_label_values(&l);
        healthy.set(1);
        EndpointMetrics {
            labels: l.map(str::to_string),
            inflight: m.upstream_inflight.with_label_values(&l),
            healthy,
            codes: RwLock::new(Vec::new()),
            removed: AtomicBool::new(false),
            connect_error: code("connect_error"),
            timeout: code("timeout"),
            error: code("error"),
        }
    }

    fn count_status(&self, m: &Metrics, status: u16) {
        if let Some((_, c)) = self
            .codes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(k, _)| *k == status)
        {
            c.inc();
            return;
        }
        if self.removed.load(Ordering::Acquire) {
            return;
        }
        let [b, c, e] = &self.labels;
        let counter = m
            .upstream_requests
            .with_label_values(&[b, c, e, &status.to_string()]);
        counter.inc();
        let mut codes = self.codes.write().unwrap_or_else(|e| e.into_inner());
        // bounded by the status codes that exist
        if codes.len() < 64 && !codes.iter().any(|(k, _)| *k == status) {
            codes.push((status, counter));
        }
    }

    /// Removes the endpoint's series (it is gone from DNS).
    fn remove(&self, m: &Metrics) {
        self.removed.store(true, Ordering::Release);
        let [b, c, e] = &self.labels;
        let l = [b.as_str(), c.as_str(), e.as_str()];
        let _ = m.endpoint_healthy.remove_label_values(&l);
        let _ = m.upstream_inflight.remove_label_values(&l);
        let codes: Vec<u16> = self
            .codes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, _)| *k)
            .collect();
        for code in codes
            .iter()
            .map(u16::to_string)
            .chain(["connect_error", "timeout", "error"].map(str::to_string))
        {
            let _ = m.upstream_requests.remove_label_values(&[b, c, e, &code]);
        }
    }
}

impl Endpoint {
    fn new(
        url: &UpstreamUrl,
        key: (usize, Option<SocketAddr>),
        pools: &ClientCache,
        metrics: &Metrics,
        backend: &str,
        component: &str,
    ) -> Result<Endpoint, String> {
        let (label, authority, resolver) = match key.1 {
            None => (
                url.authority.as_str().to_string(),
                url.authority.clone(),
                EndpointResolver::System(
                    hyper_util::client::legacy::connect::dns::GaiResolver::new(),
                ),
            ),
            Some(addr) => {
                let (host, _) = url.host_port();
                // an address literal would bypass the resolver: connect to the address itself
                let authority = if host.parse::<std::net::IpAddr>().is_ok() {
                    addr.to_string()
                } else {
                    host
                };
                (
                    addr.to_string(),
                    authority
                        .parse()
                        .map_err(|e| format!("endpoint {addr} of {}: {e}", url.authority))?,
                    EndpointResolver::Fixed(addr),
                )
            }
        };
        let m = EndpointMetrics::new(metrics, backend, component, &label);
        let clients = pools.get(&url.scheme, &authority, key.1, resolver)?;
        Ok(Endpoint {
            label,
            key,
            scheme: url.scheme.clone(),
            authority,
            base_path: url.base_path.clone(),
            clients,
            inflight: AtomicUsize::new(0),
            unhealthy: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            ejected_at_ms: std::sync::atomic::AtomicU64::new(0),
            health: Mutex::new(Health::default()),
            m,
        })
    }

    /// A request to this endpoint: its base path before `pq`; an absolute URI for HTTP/2
    /// (`grpc`), origin form for HTTP/1.
    pub fn request(
        &self,
        method: Method,
        version: Version,
        headers: HeaderMap,
        pq: &PathAndQuery,
        body: Body,
        grpc: bool,
    ) -> Result<Request<Body>, http::Error> {
        let full = if self.base_path.is_empty() {
            pq.clone()
        } else {
            let mut s = String::with_capacity(self.base_path.len() + pq.as_str().len());
            s.push_str(&self.base_path);
            s.push_str(pq.as_str());
            PathAndQuery::try_from(s)?
        };
        let uri = if grpc {
            http::Uri::builder()
                .scheme(self.scheme.clone())
                .authority(self.authority.clone())
                .path_and_query(full)
                .build()?
        } else {
            http::Uri::from(full)
        };
        let mut r = Request::new(body);
        *r.method_mut() = method;
        *r.uri_mut() = uri;
        *r.version_mut() = version;
        *r.headers_mut() = headers;
        Ok(r)
    }

    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        !self.unhealthy.load(Ordering::Relaxed)
    }

    /// Healthy, or (without active checks, which would bring it back) ejected long enough ago
    /// to deserve a trial request.
    fn eligible(&self, pool: &ComponentPool) -> bool {
        if self.is_healthy() {
            return true;
        }
        !pool.active_checks
            && clock_ms().saturating_sub(self.ejected_at_ms.load(Ordering::Relaxed))
                >= pool.health_check.interval.as_millis() as u64
    }

    fn health_event(
        &self,
        pool: &ComponentPool,
        f: impl FnOnce(&mut Health) -> Option<Change>,
        why: &str,
    ) {
        let change = {
            let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
            let c = f(&mut h);
            if h.unhealthy {
                // a failure while ejected restarts the wait before the next trial
                self.ejected_at_ms.store(clock_ms(), Ordering::Relaxed);
            }
            self.unhealthy.store(h.unhealthy, Ordering::Relaxed);
            c
        };
        match change {
            Some(Change::BecameUnhealthy) => {
                self.m.healthy.set(0);
                tracing::warn!(
                    backend = pool.backend,
                    component = pool.component.as_str(),
                    endpoint = %self.label,
                    reason = why,
                    "upstream endpoint unhealthy: no requests go to it while others are healthy"
                );
            }
            Some(Change::BecameHealthy) => {
                self.m.healthy.set(1);
                tracing::info!(
                    backend = pool.backend,
                    component = pool.component.as_str(),
                    endpoint = %self.label,
                    reason = why,
                    "upstream endpoint healthy again"
                );
            }
            None => {}
        }
    }
}

/// `scheme://authority` of the URI, and the resolved address of a `dns+` endpoint.
type PoolKey = (String, Option<SocketAddr>);

/// One pair of connection pools per address of a backend, whichever components use it.
pub struct ClientCache {
    settings: ClientSettings,
    pools: Mutex<HashMap<PoolKey, std::sync::Weak<Clients>>>,
}

impl ClientCache {
    fn new(settings: ClientSettings) -> ClientCache {
        ClientCache {
            settings,
            pools: Mutex::new(HashMap::new()),
        }
    }

    fn get(
        &self,
        scheme: &http::uri::Scheme,
        authority: &http::uri::Authority,
        addr: Option<SocketAddr>,
        resolver: EndpointResolver,
    ) -> Result<Arc<Clients>, String> {
        let key = (format!("{scheme}://{authority}"), addr);
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = pools.get(&key).and_then(std::sync::Weak::upgrade) {
            return Ok(c);
        }
        pools.retain(|_, w| w.strong_count() > 0);
        let origin = http::Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| format!("endpoint {}: {e}", key.0))?;
        let c = Arc::new(Clients::new(&self.settings, resolver, origin));
        pools.insert(key, Arc::downgrade(&c));
        Ok(c)
    }
}

/// Counts a request in flight to an endpoint until dropped (when the response body has been
/// sent, or the request failed). It also keeps a drained endpoint's pools alive until then.
pub struct InflightGuard(Arc<Endpoint>);

impl InflightGuard {
    fn new(ep: Arc<Endpoint>) -> InflightGuard {
        ep.inflight.fetch_add(1, Ordering::Relaxed);
        ep.m.inflight.inc();
        InflightGuard(ep)
    }

    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
        self.0.m.inflight.dec();
    }
}

/// One component of a backend: its URLs, endpoints now, and how requests are spread.
pub struct ComponentPool {
    pub backend: &'static str,
    pub component: Component,
    urls: Vec<UpstreamUrl>,
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    balance: Balance,
    ticket: AtomicUsize,
    /// Active health checks run (more than one endpoint possible, or `health_check` written).
    active_checks: bool,
    health_check: HealthCheck,
    thresholds: Thresholds,
    pools: Arc<ClientCache>,
    metrics: Arc<Metrics>,
    endpoints_gauge: IntGauge,
    /// The last DNS error logged per URL, so a lasting failure is logged once.
    dns_errors: Mutex<Vec<Option<String>>>,
}

impl ComponentPool {
    fn new(
        backend: &'static str,
        component: Component,
        urls: Vec<UpstreamUrl>,
        topo: &Topology,
        pools: Arc<ClientCache>,
        metrics: Arc<Metrics>,
    ) -> Result<ComponentPool, String> {
        let hc = topo.health_of(component).clone();
        let active_checks =
            hc.enabled && (hc.explicit || urls.len() > 1 || urls.iter().any(|u| u.dns));
        let mut eps = Vec::new();
        for (i, u) in urls.iter().enumerate() {
            if !u.dns {
                eps.push(Arc::new(Endpoint::new(
                    u,
                    (i, None),
                    &pools,
                    &metrics,
                    backend,
                    component.as_str(),
                )?));
            }
        }
        let endpoints_gauge = metrics
            .upstream_endpoints
            .with_label_values(&[backend, component.as_str()]);
        endpoints_gauge.set(eps.len() as i64);
        Ok(ComponentPool {
            backend,
            component,
            dns_errors: Mutex::new(vec![None; urls.len()]),
            urls,
            endpoints: ArcSwap::from_pointee(eps),
            balance: topo.balance,
            ticket: AtomicUsize::new(0),
            active_checks,
            thresholds: Thresholds {
                unhealthy_after: hc.unhealthy_after,
                healthy_after: hc.healthy_after,
            },
            health_check: hc,
            pools,
            metrics,
            endpoints_gauge,
        })
    }

    /// The endpoints now (a `dns+` URL's change on refresh).
    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    fn has_dns(&self) -> bool {
        self.urls.iter().any(|u| u.dns)
    }

    /// Picks an endpoint, never `exclude`.
    fn choose(&self, eps: &[Arc<Endpoint>], exclude: Option<usize>) -> Option<usize> {
        if eps.len() == 1 {
            return (exclude != Some(0)).then_some(0);
        }
        let ticket = match self.balance {
            Balance::RoundRobin => self.ticket.fetch_add(1, Ordering::Relaxed),
            Balance::LeastInflight => 0,
        };
        let cand = |e: &Arc<Endpoint>| Candidate {
            healthy: e.eligible(self),
            inflight: e.inflight(),
        };
        const N: usize = 16;
        if eps.len() <= N {
            let mut arr = [Candidate {
                healthy: false,
                inflight: 0,
            }; N];
            for (a, e) in arr.iter_mut().zip(eps) {
                *a = cand(e);
            }
            balance::choose(
                &arr[..eps.len()],
                self.balance,
                exclude,
                ticket,
                balance::random_below,
            )
        } else {
            let v: Vec<Candidate> = eps.iter().map(cand).collect();
            balance::choose(&v, self.balance, exclude, ticket, balance::random_below)
        }
    }

    /// Re-resolves the `dns+` URLs: new addresses become endpoints, vanished ones are removed
    /// (requests in flight to them finish: they hold their endpoint). A failed or empty answer
    /// keeps the addresses known so far.
    pub async fn refresh_dns(&self, resolver: &dyn Resolve) {
        let current = self.endpoints.load_full();
        let mut want: Vec<(usize, Option<SocketAddr>)> = Vec::new();
        for (i, u) in self.urls.iter().enumerate() {
            if !u.dns {
                want.push((i, None));
                continue;
            }
            let (host, port) = u.host_port();
            let answer = tokio::time::timeout(DNS_TIMEOUT, resolver.resolve(&host, port)).await;
            let error = match answer {
                Ok(Ok(mut addrs)) if !addrs.is_empty() => {
                    addrs.sort();
                    addrs.dedup();
                    want.extend(addrs.into_iter().map(|a| (i, Some(a))));
                    None
                }
                Ok(Ok(_)) => Some("no addresses".to_string()),
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no answer within {DNS_TIMEOUT:?}")),
            };
            let mut errs = self.dns_errors.lock().unwrap_or_else(|e| e.into_inner());
            match &error {
                Some(e) => {
                    want.extend(current.iter().filter(|ep| ep.key.0 == i).map(|ep| ep.key));
                    if errs[i].as_ref() != Some(e) {
                        tracing::warn!(
                            backend = self.backend,
                            component = self.component.as_str(),
                            name = %host,
                            error = %e,
                            kept = current.iter().filter(|ep| ep.key.0 == i).count(),
                            "DNS lookup failed; keeping the addresses known so far"
                        );
                    }
                }
                None if errs[i].is_some() => {
                    tracing::info!(
                        backend = self.backend,
                        component = self.component.as_str(),
                        name = %host,
                        "DNS lookup works again"
                    );
                }
                None => {}
            }
            errs[i] = error;
        }
        let same =
            want.len() == current.len() && want.iter().all(|k| current.iter().any(|e| e.key == *k));
        if same {
            return;
        }
        let mut next = Vec::with_capacity(want.len());
        for k in &want {
            if let Some(e) = current.iter().find(|e| e.key == *k) {
                next.push(e.clone());
                continue;
            }
            match Endpoint::new(
                &self.urls[k.0],
                *k,
                &self.pools,
                &self.metrics,
                self.backend,
                self.component.as_str(),
            ) {
                Ok(e) => {
                    tracing::info!(
                        backend = self.backend,
                        component = self.component.as_str(),
                        endpoint = %e.label,
                        "upstream endpoint added"
                    );
                    next.push(Arc::new(e));
                }
                Err(err) => tracing::warn!(
                    backend = self.backend,
                    component = self.component.as_str(),
                    error = %err,
                    "cannot use a resolved address"
                ),
            }
        }
        for gone in current.iter().filter(|e| !want.contains(&e.key)) {
            tracing::info!(
                backend = self.backend,
                component = self.component.as_str(),
                endpoint = %gone.label,
                inflight = gone.inflight(),
                "upstream endpoint removed; requests in flight to it finish"
            );
            // another endpoint with the same label (the address came back under another URL)
            // keeps the series
            if !next.iter().any(|e: &Arc<Endpoint>| e.label == gone.label) {
                gone.m.remove(&self.metrics);
            }
        }
        self.endpoints_gauge.set(next.len() as i64);
        self.endpoints.store(Arc::new(next));
    }

    /// One round of active checks, every endpoint at once.
    pub async fn check_health(&self) {
        let eps = self.endpoints.load_full();
        let checks = eps.iter().map(|e| async move {
            let result = self.probe(e).await;
            match result {
                Ok(()) => e.health_event(self, |h| h.check_passed(self.thresholds), "check passed"),
                Err(why) => e.health_event(self, |h| h.check_failed(self.thresholds), &why),
            }
        });
        futures_join_all(checks).await;
    }

    async fn probe(&self, e: &Endpoint) -> Result<(), String> {
        let pq = PathAndQuery::try_from(self.health_check.path.as_str())
            .map_err(|err| err.to_string())?;
        let req = e
            .request(
                Method::GET,
                Version::HTTP_11,
                HeaderMap::new(),
                &pq,
                crate::wire::full(bytes::Bytes::new()),
                false,
            )
            .map_err(|err| err.to_string())?;
        let r = tokio::time::timeout(self.health_check.timeout, async {
            let resp = e.clients.send(req, false).await?;
            let status = resp.status();
            // read the answer through (bounded by the timeout) so the connection is reused
            drain(resp.into_body()).await;
            Ok::<_, client::ClientError>(status)
        })
        .await;
        match r {
            Ok(Ok(s)) if s.is_success() => Ok(()),
            Ok(Ok(s)) => Err(format!(
                "{} answered {}",
                self.health_check.path,
                s.as_u16()
            )),
            Ok(Err(err)) => Err(crate::wire::error_chain(&err)),
            Err(_) => Err(format!(
                "{} did not answer within {:?}",
                self.health_check.path, self.health_check.timeout
            )),
        }
    }
}

/// Reads a response body to its end without keeping it (a health check or mirror answer of
/// any size costs no memory), so that its connection goes back to the pool.
pub(crate) async fn drain(mut body: UpBody) {
    use http_body_util::BodyExt;
    while let Some(Ok(_)) = body.frame().await {}
}

/// Milliseconds on a monotonic clock (since the first call).
fn clock_ms() -> u64 {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    ORIGIN
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// Runs futures concurrently to completion (a tiny `join_all`).
async fn futures_join_all<F: std::future::Future<Output = ()>>(fs: impl Iterator<Item = F>) {
    let mut set: Vec<std::pin::Pin<Box<F>>> = fs.map(Box::pin).collect();
    std::future::poll_fn(move |cx| {
        set.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if set.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

/// A request ready to go upstream, not yet bound to an endpoint.
pub struct Outgoing {
    pub method: Method,
    pub version: Version,
    pub headers: HeaderMap,
    /// Path (after the route's rewrites) and query, without an endpoint's base path.
    pub path_and_query: PathAndQuery,
    pub body: Body,
    pub grpc: bool,
    /// `Some(cap)`: a read, whose body (up to `cap` bytes) may be sent again after its
    /// connection was reset before a response. `None`: only a connection that failed before
    /// anything was sent allows a second attempt.
    pub replay_cap: Option<usize>,
}

/// Why no response came.
#[derive(Debug)]
pub enum SendError {
    /// The component has no endpoint (its DNS name never resolved).
    NoEndpoint,
    /// Nothing was sent; `timed_out`: the connect timeout passed (504, not 502).
    Connect {
        message: String,
        timed_out: bool,
    },
    Timeout,
    Failed(String),
    BadRequest,
}

/// A response and the endpoint it came from (its guard keeps it counted in flight).
pub struct Sent {
    pub response: Response<UpBody>,
    pub guard: InflightGuard,
    pub retried: bool,
}

enum Outcome {
    Response(Response<UpBody>),
    Connect { message: String, timed_out: bool },
    Timeout,
    Failed(String),
}

impl Outcome {
    /// The final attempt's outcome as the caller sees it.
    fn into_sent(self, guard: InflightGuard, retried: bool) -> Result<Sent, SendError> {
        match self {
            Outcome::Response(response) => Ok(Sent {
                response,
                guard,
                retried,
            }),
            Outcome::Connect { message, timed_out } => {
                Err(SendError::Connect { message, timed_out })
            }
            Outcome::Timeout => Err(SendError::Timeout),
            Outcome::Failed(e) => Err(SendError::Failed(e)),
        }
    }
}

impl ComponentPool {
    /// Sends a request to an endpoint of this component before `deadline`, retrying once on
    /// another endpoint when (a) the connection failed before anything was sent, or (b) it is
    /// a read whose whole body was kept and the connection closed before a response. A write
    /// is never sent twice once any of it reached an endpoint.
    pub async fn send(&self, out: Outgoing, deadline: Instant) -> Result<Sent, SendError> {
        let eps = self.endpoints.load_full();
        let Some(first) = self.choose(&eps, None) else {
            return Err(SendError::NoEndpoint);
        };
        let Outgoing {
            method,
            version,
            headers,
            path_and_query,
            body,
            grpc,
            replay_cap,
        } = out;
        if eps.len() == 1 {
            // nowhere else to go: no copy of the headers, no replay
            let req = eps[first]
                .request(method, version, headers, &path_and_query, body, grpc)
                .map_err(|_| SendError::BadRequest)?;
            let guard = InflightGuard::new(eps[first].clone());
            return self
                .attempt(&eps[first], req, grpc, deadline)
                .await
                .into_sent(guard, false);
        }
        let body = replay::ReplayBody::new(body, replay_cap.unwrap_or(0));
        let second_body =
            |b: &replay::ReplayBody| b.retry().map(http_body_util::BodyExt::boxed_unsync);
        let req = eps[first]
            .request(
                method.clone(),
                version,
                headers.clone(),
                &path_and_query,
                http_body_util::BodyExt::boxed_unsync(body.retry().ok_or(SendError::BadRequest)?),
                grpc,
            )
            .map_err(|_| SendError::BadRequest)?;
        let guard = InflightGuard::new(eps[first].clone());
        let (reason, first_error) = match self.attempt(&eps[first], req, grpc, deadline).await {
            Outcome::Response(response) => {
                return Ok(Sent {
                    response,
                    guard,
                    retried: false,
                });
            }
            Outcome::Timeout => return Err(SendError::Timeout),
            Outcome::Connect { message, timed_out } => {
                ("connect", SendError::Connect { message, timed_out })
            }
            Outcome::Failed(e) if replay_cap.is_some() => ("reset", SendError::Failed(e)),
            Outcome::Failed(e) => return Err(SendError::Failed(e)),
        };
        drop(guard);
        // a connect failure sent nothing; a reset read is sent again only if all of it was kept
        let Some(b) = second_body(&body) else {
            return Err(first_error);
        };
        let Some(second) = self.choose(&eps, Some(first)) else {
            return Err(first_error);
        };
        let req = eps[second]
            .request(method, version, headers, &path_and_query, b, grpc)
            .map_err(|_| SendError::BadRequest)?;
        self.metrics
            .upstream_retries
            .with_label_values(&[self.backend, self.component.as_str(), reason])
            .inc();
        tracing::debug!(
            backend = self.backend,
            component = self.component.as_str(),
            from = %eps[first].label,
            to = %eps[second].label,
            reason,
            "retrying on another endpoint"
        );
        let guard = InflightGuard::new(eps[second].clone());
        self.attempt(&eps[second], req, grpc, deadline)
            .await
            .into_sent(guard, true)
    }

    async fn attempt(
        &self,
        ep: &Endpoint,
        req: Request<Body>,
        grpc: bool,
        deadline: Instant,
    ) -> Outcome {
        match tokio::time::timeout_at(deadline, ep.clients.send(req, grpc)).await {
            Ok(Ok(r)) => {
                ep.m.count_status(&self.metrics, r.status().as_u16());
                // the common case (healthy, no failure run) takes no lock
                if ep.failing.load(Ordering::Relaxed) || !ep.is_healthy() {
                    ep.failing.store(false, Ordering::Relaxed);
                    ep.health_event(self, |h| h.responded(self.active_checks), "it answered");
                }
                Outcome::Response(r)
            }
            Ok(Err(e)) if e.is_connect() => {
                ep.m.connect_error.inc();
                let msg = crate::wire::error_chain(&e);
                ep.failing.store(true, Ordering::Relaxed);
                ep.health_event(self, |h| h.connect_failed(self.thresholds), &msg);
                Outcome::Connect {
                    timed_out: crate::wire::is_timeout(&e),
                    message: msg,
                }
            }
            Ok(Err(e)) if crate::wire::is_timeout(&e) => {
                ep.m.timeout.inc();
                Outcome::Timeout
            }
            Ok(Err(e)) => {
                ep.m.error.inc();
                Outcome::Failed(crate::wire::error_chain(&e))
            }
            Err(_) => {
                ep.m.timeout.inc();
                Outcome::Timeout
            }
        }
    }
}

/// The upstreams of one backend.
pub struct BackendUpstream {
    pub backend: Backend,
    pools: [Option<Arc<ComponentPool>>; Component::ALL.len()],
    pub mirrors: Vec<Arc<mirror::MirrorTarget>>,
}

impl BackendUpstream {
    fn new(b: &Backend, metrics: &Arc<Metrics>) -> Result<BackendUpstream, String> {
        let tls = crate::tls::client_config(b.ca_file.as_deref())?;
        let client_cache = Arc::new(ClientCache::new(ClientSettings {
            tls,
            connect_timeout: b.connect_timeout,
        }));
        let slot = b.slot.as_str();
        let mut pools: [Option<Arc<ComponentPool>>; Component::ALL.len()] = Default::default();
        for &c in Component::of_kind(b.kind) {
            let urls = b.topology.urls_of(c).to_vec();
            pools[c.index()] = Some(Arc::new(ComponentPool::new(
                slot,
                c,
                urls,
                &b.topology,
                client_cache.clone(),
                metrics.clone(),
            )?));
        }
        let mut mirrors = Vec::new();
        for m in &b.topology.mirrors {
            let ep = Endpoint::new(&m.url, (0, None), &client_cache, metrics, slot, "mirror")?;
            // a mirror is not balanced or checked: its series would only say "healthy"
            ep.m.remove(metrics);
            mirrors.push(Arc::new(mirror::MirrorTarget::new(
                Arc::new(ep),
                m.fraction,
                b.topology.mirror_max_inflight,
                metrics,
                slot,
            )));
        }
        Ok(BackendUpstream {
            backend: b.clone(),
            pools,
            mirrors,
        })
    }

    pub fn pool(&self, c: Component) -> Option<&Arc<ComponentPool>> {
        self.pools[c.index()].as_ref()
    }

    fn all_pools(&self) -> impl Iterator<Item = &Arc<ComponentPool>> {
        self.pools.iter().flatten()
    }
}

/// Every configured backend's upstreams.
pub struct Upstreams {
    backends: [Option<BackendUpstream>; 4],
}

fn slot_index(s: BackendSlot) -> usize {
    match s {
        BackendSlot::Metrics => 0,
        BackendSlot::Logs => 1,
        BackendSlot::Traces => 2,
        BackendSlot::Profiles => 3,
    }
}

impl Upstreams {
    pub fn new(config: &Config, metrics: &Arc<Metrics>) -> Result<Upstreams, String> {
        let mut backends: [Option<BackendUpstream>; 4] = Default::default();
        for b in config.backends.iter() {
            backends[slot_index(b.slot)] = Some(BackendUpstream::new(b, metrics)?);
        }
        Ok(Upstreams { backends })
    }

    pub fn get(&self, s: BackendSlot) -> Option<&BackendUpstream> {
        self.backends[slot_index(s)].as_ref()
    }

    fn pools(&self) -> impl Iterator<Item = &Arc<ComponentPool>> {
        self.backends.iter().flatten().flat_map(|b| b.all_pools())
    }

    /// Resolves every `dns+` URL once (bounded by the DNS timeout), then starts the DNS
    /// refresh and active health check loops. The loops end when the gateway is dropped.
    pub async fn start(
        &self,
        resolver: Arc<dyn Resolve>,
        dns_refresh: impl Fn(BackendSlot) -> Duration,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut first = Vec::new();
        for p in self.pools().filter(|p| p.has_dns()) {
            let r = resolver.clone();
            let p = p.clone();
            first.push(async move { p.refresh_dns(&*r).await });
        }
        futures_join_all(first.into_iter()).await;
        let mut tasks = Vec::new();
        for b in self.backends.iter().flatten() {
            let every = dns_refresh(b.backend.slot);
            for p in b.all_pools() {
                if p.has_dns() {
                    let weak = Arc::downgrade(p);
                    let r = resolver.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut tick = tokio::time::interval(every);
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        tick.tick().await;
                        loop {
                            tick.tick().await;
                            let Some(p) = weak.upgrade() else { return };
                            p.refresh_dns(&*r).await;
                        }
                    }));
                }
                if p.active_checks {
                    let weak = Arc::downgrade(p);
                    let every = p.health_check.interval;
                    tasks.push(tokio::spawn(async move {
                        let mut tick = tokio::time::interval(every);
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        loop {
                            tick.tick().await;
                            let Some(p) = weak.upgrade() else { return };
                            p.check_health().await;
                        }
                    }));
                }
            }
        }
        tasks
    }
}

#[cfg(test)]
pub(crate) fn test_body(parts: &[&'static str], fail: bool) -> Body {
    use bytes::Bytes;
    use http_body::Frame;
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A client body: these chunks, then an end (or an error).
    struct Chunks(VecDeque<&'static str>, bool);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = crate::wire::BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, crate::wire::BoxError>>> {
            Poll::Ready(match self.0.pop_front() {
                Some(c) => Some(Ok(Frame::data(Bytes::from_static(c.as_bytes())))),
                None if self.1 => {
                    self.1 = false;
                    Some(Err("client went away".into()))
                }
                None => None,
            })
        }
    }
    http_body_util::BodyExt::boxed_unsync(Chunks(parts.iter().copied().collect(), fail))
}
