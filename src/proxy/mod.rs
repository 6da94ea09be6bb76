//! The request pipeline: one pass, front to back.
//!
//! route → credentials → token shape → store (cached) → `policy::decide` → label-policy
//! headers → header hygiene → forward (streaming, upgrades, trailers) → metrics and audit.

pub mod body;
pub mod forward_auth;
pub use crate::wire::{
    Body, BoxError, Conn, THROTTLED_MESSAGE, error_response, full, incoming, throttled_response,
};
pub mod guard;
pub mod headers;
pub mod proxy_protocol;
pub mod server;

use crate::auth;
use crate::config::{BackendSlot, Config, LbacMode};
use crate::policy::{self, RequestFacts};
use crate::route::{self, RouteClass, RouteMatch};
use crate::store::Store;
use crate::telemetry::{Metrics, Mode};
use crate::token::{self, TokenHash};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Shared state of a running gateway.
pub struct Gateway {
    pub config: Arc<Config>,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub upstreams: crate::upstream::Upstreams,
    rewrite_cache: crate::lbac::RewriteCache,
    /// Failed-authentication throttling, shared with the admin API (`None`: off).
    pub throttle: Option<Arc<crate::throttle::AuthThrottle>>,
    /// Per-tenant controls (`store.controls_file`; `None`: not configured).
    pub controls: Option<Arc<crate::controls::Controls>>,
    /// OpenTelemetry request tracing (`None`: `tracing:` is not configured).
    pub tracing: Option<Arc<crate::otel::Tracing>>,
}

impl Gateway {
    pub fn new(
        config: Arc<Config>,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
    ) -> Result<Gateway, String> {
        let upstreams = crate::upstream::Upstreams::new(&config, &metrics)?;
        let throttle = crate::throttle::AuthThrottle::new(&config.auth_throttle).map(Arc::new);
        let tracing = match &config.tracing {
            Some(t) => Some(crate::otel::Tracing::start(t, &metrics)?),
            None => None,
        };
        Ok(Gateway {
            tracing,
            config,
            store,
            metrics,
            upstreams,
            throttle,
            controls: None,
            rewrite_cache: crate::lbac::RewriteCache::default(),
        })
    }
}

impl Gateway {
    /// The per-tenant controls in force (see `src/controls.rs`).
    pub fn with_controls(mut self, controls: Option<Arc<crate::controls::Controls>>) -> Gateway {
        self.controls = controls;
        self
    }
}

/// What went wrong, mapped to a status code in one place.
#[derive(Debug)]
pub enum Failure {
    NotFound(String),
    Unauthorized {
        reason: &'static str,
        message: String,
    },
    Forbidden {
        reason: &'static str,
        message: String,
    },
    BadRequest(String),
    BadGateway(String),
    GatewayTimeout(String),
    /// Too many failed authentications from this client: retry after this many seconds.
    Throttled(u64),
    PayloadTooLarge(String),
    RequestTimeout(String),
    MethodNotAllowed(String),
    /// Refused by the per-tenant controls: a block, a rate or an in-flight limit.
    Controlled(Box<crate::controls::Refusal>),
}

impl Failure {
    fn status(&self) -> StatusCode {
        match self {
            Failure::NotFound(_) => StatusCode::NOT_FOUND,
            Failure::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Failure::Forbidden { .. } => StatusCode::FORBIDDEN,
            Failure::BadRequest(_) => StatusCode::BAD_REQUEST,
            Failure::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Failure::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Failure::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            Failure::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Failure::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Failure::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Failure::Controlled(r) => r.status,
        }
    }

    fn error_type(&self) -> &'static str {
        match self {
            Failure::NotFound(_) => "not_found",
            Failure::Unauthorized { .. } => "unauthorized",
            Failure::Forbidden { .. } => "forbidden",
            Failure::BadRequest(_) => "bad_data",
            Failure::BadGateway(_) => "unavailable",
            Failure::GatewayTimeout(_) => "timeout",
            Failure::Throttled(_) => "too_many_requests",
            Failure::PayloadTooLarge(_) => "too_large",
            Failure::RequestTimeout(_) => "timeout",
            Failure::MethodNotAllowed(_) => "method_not_allowed",
            Failure::Controlled(r) => r.error_type(),
        }
    }

    fn message(&self) -> &str {
        match self {
            Failure::NotFound(m)
            | Failure::BadRequest(m)
            | Failure::BadGateway(m)
            | Failure::GatewayTimeout(m)
            | Failure::PayloadTooLarge(m)
            | Failure::RequestTimeout(m)
            | Failure::MethodNotAllowed(m) => m,
            Failure::Unauthorized { message, .. } | Failure::Forbidden { message, .. } => message,
            Failure::Throttled(_) => THROTTLED_MESSAGE,
            Failure::Controlled(r) => &r.message,
        }
    }

    /// Prometheus-API-style JSON error; 401s carry `WWW-Authenticate`, 429s `Retry-After`.
    pub fn into_response(self) -> Response<Body> {
        match self {
            Failure::Throttled(secs) => throttled_response(secs),
            Failure::Controlled(r) => r.into_response(),
            f => error_response(f.status(), f.error_type(), f.message()),
        }
    }
}

/// How the label policies of an allowed read are enforced.
enum Enforcement {
    /// Unrestricted, or not a read that label policies apply to.
    None,
    /// Header mode: `X-Prom-Label-Policy` values.
    Headers(Vec<HeaderValue>),
    /// Rewrite mode: these matchers are added to every selector of the query.
    Rewrite(Vec<crate::selector::Matcher>),
}

fn lbac_failure(e: crate::lbac::LbacError) -> Failure {
    match e {
        crate::lbac::LbacError::BadQuery(m) => Failure::BadRequest(m),
        crate::lbac::LbacError::Forbidden(m) => Failure::Forbidden {
            reason: "label_policy",
            message: m,
        },
    }
}

/// Who asked, for the audit line of a denied request. Never the token.
#[derive(Default)]
struct AuditCtx {
    client_ip: Option<IpAddr>,
    identity: Option<Arc<policy::Identity>>,
    tenant: Option<String>,
    /// The request's trace ID when tracing is on.
    trace_id: Option<String>,
}

/// The data plane: every request that is not the gateway's own endpoint or the admin API.
pub async fn handle(
    gw: Arc<Gateway>,
    only: Option<BackendSlot>,
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> Response<Body> {
    let start = Instant::now();
    let peer = conn.peer;
    let _inflight = crate::telemetry::InflightRequest::start(&gw.metrics.inflight);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let matched = route::match_route(&gw.config.backends, only, &method, &path);
    let trace = gw.tracing.as_ref().map(|t| {
        let route = matched.as_ref().map(|r| (r.name, r.slot.as_str()));
        request_trace(t, Mode::Proxy, &method, &path, route, peer, req.headers())
    });
    let (slot_label, route_label, component, mut resp) = match matched {
        None => {
            let r = Failure::NotFound(format!("no route for {method} {path}")).into_response();
            ("none", "unmatched", None, r)
        }
        Some(route) => {
            let slot = route.slot;
            let name = route.name;
            let component = route.component;
            let mut audit = AuditCtx {
                trace_id: trace.as_ref().map(|t| t.trace_id()),
                ..AuditCtx::default()
            };
            let r = match authorize_and_forward(&gw, route, &conn, req, &mut audit, trace.as_ref())
                .await
            {
                Ok(r) => r,
                Err(f) => deny(&gw, Mode::Proxy, f, peer, name, &audit),
            };
            (slot.as_str(), name, Some(component), r)
        }
    };
    if let Some(t) = trace {
        resp.headers_mut()
            .insert(crate::otel::TRACE_ID_HEADER, t.header_value());
        t.finish(resp.status().as_u16());
    }
    count(
        &gw,
        Mode::Proxy,
        slot_label,
        route_label,
        component,
        resp.status(),
        start,
    );
    resp
}

/// The server span of a request: `METHOD route` (the route pattern, never the raw path, names
/// it), with what is known before authentication (built only when the request is sampled).
fn request_trace(
    t: &crate::otel::Tracing,
    mode: Mode,
    method: &http::Method,
    path: &str,
    route: Option<(&'static str, &'static str)>,
    peer: SocketAddr,
    headers: &http::HeaderMap,
) -> crate::otel::RequestTrace {
    use opentelemetry::KeyValue;
    t.request(headers, || {
        let mut attrs = vec![
            KeyValue::new("http.request.method", method.as_str().to_string()),
            KeyValue::new("url.path", path.to_string()),
            KeyValue::new("network.peer.address", peer.ip().to_string()),
            KeyValue::new("obsgate.mode", mode.as_str()),
        ];
        let name = match route {
            Some((name, backend)) => {
                attrs.push(KeyValue::new("http.route", name));
                attrs.push(KeyValue::new("obsgate.backend", backend));
                format!("{method} {name}")
            }
            None => method.as_str().to_string(),
        };
        (name, attrs)
    })
}

/// `obsgate_requests_total` and `obsgate_request_duration_seconds` for one request.
fn count(
    gw: &Gateway,
    mode: Mode,
    slot_label: &'static str,
    route_label: &'static str,
    component: Option<crate::config::Component>,
    code: StatusCode,
    start: Instant,
) {
    gw.metrics
        .count_request(mode, slot_label, route_label, code.as_u16());
    gw.metrics
        .handles()
        .request_duration(mode, slot_label, component)
        .observe(start.elapsed().as_secs_f64());
}

/// The response to a failed request: a failed authentication counts against the client's
/// allowance, a denial is counted and written to the audit log.
fn deny(
    gw: &Gateway,
    mode: Mode,
    f: Failure,
    peer: SocketAddr,
    route: &str,
    audit: &AuditCtx,
) -> Response<Body> {
    if let (Failure::Unauthorized { .. }, Some(t), Some(ip)) = (&f, &gw.throttle, audit.client_ip) {
        t.failed(ip);
    }
    log_denial(gw, mode, &f, peer, route, audit);
    f.into_response()
}

fn log_denial(gw: &Gateway, mode: Mode, f: &Failure, peer: SocketAddr, route: &str, a: &AuditCtx) {
    let (reason, status) = match f {
        Failure::Unauthorized { reason, .. } => (*reason, 401),
        Failure::Forbidden { reason, .. } => (*reason, 403),
        Failure::BadRequest(_) => ("bad_request", 400),
        Failure::Controlled(r)
            if matches!(
                r.reason,
                crate::controls::Reason::BlockedReads
                    | crate::controls::Reason::BlockedWrites
                    | crate::controls::Reason::BlockedRules
            ) =>
        {
            (r.reason.as_str(), r.status.as_u16())
        }
        // over a rate or in-flight limit: counted, logged at debug level only (a client past its
        // limit is flooding; a line per refusal would be a second flood, into the logs)
        Failure::Controlled(r) => {
            gw.metrics.denied(mode, r.reason.as_str());
            tracing::debug!(
                target: "obsgate::audit",
                mode = mode.as_str(),
                token = a.identity.as_ref().map(|i| i.token_name.as_str()).unwrap_or("-"),
                tenant = a.tenant.as_deref().unwrap_or("-"),
                client_ip = ?a.client_ip,
                route,
                reason = r.reason.as_str(),
                "request over a per-tenant limit: 429"
            );
            return;
        }
        // counted, not logged line by line: a throttled client is one that is flooding us
        Failure::Throttled(_) => {
            gw.metrics.denied(mode, "throttled");
            tracing::debug!(client_ip = ?a.client_ip, route, mode = mode.as_str(), "failed-authentication throttle: 429");
            return;
        }
        // upstream failures are not authorization decisions
        _ => return,
    };
    gw.metrics.denied(mode, reason);
    tracing::info!(
        target: "obsgate::audit",
        mode = mode.as_str(),
        token = a.identity.as_ref().map(|i| i.token_name.as_str()).unwrap_or("-"),
        policy = a.identity.as_ref().map(|i| i.policy_name.as_str()).unwrap_or("-"),
        tenant = a.tenant.as_deref().unwrap_or("-"),
        client_ip = %a.client_ip.unwrap_or_else(|| auth::canonical(peer.ip())),
        route,
        status,
        reason,
        detail = f.message(),
        trace_id = a.trace_id.as_deref().unwrap_or("-"),
        "request denied"
    );
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn unauthorized(reason: &'static str, message: impl Into<String>) -> Failure {
    Failure::Unauthorized {
        reason,
        message: message.into(),
    }
}

/// Phases 3 and 4: authenticate the token, decide with the policy, choose how its label
/// policies are enforced. Returns the tenant header value and the enforcement.
fn authorize(
    gw: &Gateway,
    mode: Mode,
    route: &RouteMatch<'_>,
    client_ip: IpAddr,
    headers: &http::HeaderMap,
    audit: &mut AuditCtx,
) -> Result<(String, Enforcement), Failure> {
    // a client past its failed-authentication allowance: 429 before any work on its token
    if let Some(t) = &gw.throttle
        && let Err(secs) = t.check(client_ip)
    {
        return Err(Failure::Throttled(secs));
    }
    let creds = auth::credentials(headers).map_err(|e| unauthorized(e.reason(), e.to_string()))?;
    // A token whose hash is in the store is one that was issued: its shape was checked
    // then. Only an unknown token is parsed, to tell "malformed" from "invalid".
    let hash = TokenHash::of(&creds.token);
    let snap = gw.store.snapshot();
    let Some(id) = gw.store.identify(&snap, &hash) else {
        token::parse(&creds.token).map_err(|e| unauthorized("malformed_token", e.to_string()))?;
        return Err(unauthorized("invalid_token", policy::INVALID_TOKEN_MESSAGE));
    };
    audit.identity = Some(id.clone());
    let org_hdr = headers
        .get(headers::X_SCOPE_ORGID)
        .and_then(|v| v.to_str().ok());
    let facts = RequestFacts {
        scope: route.scope,
        label_policies_apply: route.label_policies,
        client_ip,
        tenant_from_credentials: creds.tenant.as_deref(),
        org_id_header: org_hdr,
        now_unix: now_unix(),
    };
    let allow = match policy::decide(&id, &snap.tenants, &snap.cluster, &facts) {
        Ok(a) => a,
        Err(d) => {
            audit.tenant = creds
                .tenant
                .as_deref()
                .or(org_hdr)
                .or(id.default_tenant.as_deref())
                .map(str::to_string);
            return Err(if d.status() == 401 {
                unauthorized(d.reason.as_str(), d.message)
            } else {
                Failure::Forbidden {
                    reason: d.reason.as_str(),
                    message: d.message,
                }
            });
        }
    };
    // first/last use, as the Cloud API reports them: allowed requests only
    id.usage.touch(facts.now_unix);
    // the tenant for the audit line is set here only for a refusal: a caller that can still
    // refuse an allowed request sets it itself (one string copy fewer per allowed answer)
    match enforce_label_policies(
        gw,
        mode,
        route.slot,
        allow.tenants.len(),
        &allow.label_policies,
    ) {
        Ok(enforcement) => Ok((allow.org_id, enforcement)),
        Err(f) => {
            audit.tenant = Some(allow.org_id);
            Err(f)
        }
    }
}

/// The data plane for one routed request, phase by phase: authorize → prepare (limits, label
/// enforcement, headers) → send (endpoint choice, retry, mirror) → respond.
async fn authorize_and_forward(
    gw: &Gateway,
    route: RouteMatch<'_>,
    conn: &Conn,
    mut req: Request<Incoming>,
    audit: &mut AuditCtx,
    trace: Option<&crate::otel::RequestTrace>,
) -> Result<Response<Body>, Failure> {
    let client_ip: IpAddr = auth::client_ip(
        conn.peer.ip(),
        req.headers(),
        conn.trusted(&gw.config.client_ip.trusted_proxies),
    );
    audit.client_ip = Some(client_ip);
    let auth_span = trace.map(|t| t.child("auth", opentelemetry::trace::SpanKind::Internal));
    let authorized = authorize(gw, Mode::Proxy, &route, client_ip, req.headers(), audit);
    // per-tenant controls: blocks, rate and in-flight limits (src/controls.rs)
    let decided = authorized.and_then(|(org_id, enforcement)| {
        audit.tenant = Some(org_id.clone());
        let admitted = crate::controls::admit(
            gw.controls.as_deref(),
            route.scope,
            &org_id,
            audit.identity.as_deref(),
            crate::controls::Check::Proxy,
        )?;
        Ok((org_id, enforcement, admitted))
    });
    if let (Some(mut s), Some(t)) = (auth_span, trace) {
        let r = match &decided {
            Ok((o, e, _)) => Ok((o.as_str(), e)),
            Err(f) => Err(f),
        };
        trace_decision(&mut s, t, r, audit, client_ip);
        s.end();
    }
    let (org_id, enforcement, admitted) = decided?;
    gw.metrics.handles().allowed(Mode::Proxy).inc();
    let up = gw.upstreams.get(route.slot).ok_or_else(|| {
        Failure::NotFound(format!("backend {} is not configured", route.slot.as_str()))
    })?;
    let upgrade = headers::is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let prepared = prepare(
        gw,
        up,
        &route,
        conn,
        req,
        &org_id,
        enforcement,
        upgrade,
        trace,
    )
    .await?;
    let sent = send(gw, up, &route, prepared, trace).await?;
    // in-flight permits are held until the response body has been sent
    Ok(admitted.hold(respond(sent, client_upgrade)))
}

/// The auth span's outcome, and who asked on the request's span (names, never a token).
fn trace_decision(
    s: &mut crate::otel::ChildSpan,
    t: &crate::otel::RequestTrace,
    r: Result<(&str, &Enforcement), &Failure>,
    audit: &AuditCtx,
    client_ip: IpAddr,
) {
    use opentelemetry::KeyValue;
    if !t.is_recording() {
        return;
    }
    t.set_attribute(KeyValue::new("client.address", client_ip.to_string()));
    if let Some(id) = &audit.identity {
        t.set_attribute(KeyValue::new("obsgate.token", id.token_name.clone()));
        t.set_attribute(KeyValue::new("obsgate.policy", id.policy_name.clone()));
    }
    match r {
        Ok((org_id, enforcement)) => {
            t.set_attribute(KeyValue::new("obsgate.tenant", org_id.to_string()));
            s.set_attribute(KeyValue::new("obsgate.decision", "allow"));
            s.set_attribute(KeyValue::new(
                "obsgate.label_policies",
                match enforcement {
                    Enforcement::None => "none",
                    Enforcement::Headers(_) => "header",
                    Enforcement::Rewrite(_) => "rewrite",
                },
            ));
        }
        Err(f) => {
            if let Some(tenant) = &audit.tenant {
                t.set_attribute(KeyValue::new("obsgate.tenant", tenant.clone()));
            }
            s.set_attribute(KeyValue::new("obsgate.decision", "deny"));
            s.set_attribute(KeyValue::new(
                "obsgate.status",
                i64::from(f.status().as_u16()),
            ));
            if let Failure::Controlled(r) = f {
                s.set_attribute(KeyValue::new("obsgate.controls", r.reason.as_str()));
            }
        }
    }
}

/// A request ready for an endpoint, and what deciding its fate later needs.
struct Prepared {
    out: crate::upstream::Outgoing,
    cut: Arc<body::CutFlag>,
    max_body: u64,
    timeout: std::time::Duration,
}

/// Phase 5: the body's limits, label-policy enforcement (headers or a rewritten query), and
/// the forwarded headers.
#[allow(clippy::too_many_arguments)]
async fn prepare(
    gw: &Gateway,
    up: &crate::upstream::BackendUpstream,
    route: &RouteMatch<'_>,
    conn: &Conn,
    req: Request<Incoming>,
    org_id: &str,
    enforcement: Enforcement,
    upgrade: bool,
    trace: Option<&crate::otel::RequestTrace>,
) -> Result<Prepared, Failure> {
    let b = &up.backend;
    let grpc = req.version() == http::Version::HTTP_2 && headers::is_grpc(req.headers());
    let (mut parts, body) = req.into_parts();
    // the body's limits: refused at once when its declared length is over, cut off when it
    // goes over or stalls while streaming (then answered 413 / 408, not as a backend failure)
    let limits = &gw.config.limits;
    let (max_body, timeout) = match route.class {
        RouteClass::Read => (limits.max_read_body_bytes, b.timeout),
        RouteClass::Write => (b.max_write_body_bytes, b.write_timeout),
        RouteClass::Export => (b.max_write_body_bytes, b.export_timeout),
    };
    // hyper knows the declared length (HTTP/1 Content-Length or HTTP/2 content-length)
    if let Some(len) = http_body::Body::size_hint(&body).exact()
        && len > max_body
    {
        gw.metrics.limits.body_too_large.inc();
        return Err(Failure::PayloadTooLarge(format!(
            "request body of {len} bytes is over this route's limit of {max_body} bytes"
        )));
    }
    let cut = Arc::new(body::CutFlag::default());
    let body = body::LimitedBody::new(body, max_body, limits.body_read_timeout, cut.clone());
    let mut label_values = Vec::new();
    let (query, body): (Option<String>, Body) = match enforcement {
        Enforcement::None => (parts.uri.query().map(str::to_string), body.boxed_unsync()),
        Enforcement::Headers(v) => {
            label_values = v;
            (parts.uri.query().map(str::to_string), body.boxed_unsync())
        }
        Enforcement::Rewrite(policy) => {
            use crate::lbac::request::{Rewriter, Treatment, apply, refused, treatment};
            let (lang, t) = treatment(b.kind, route.name);
            match t {
                Treatment::Pass => (parts.uri.query().map(str::to_string), body.boxed_unsync()),
                Treatment::Refuse => return Err(lbac_failure(refused(route.name))),
                Treatment::Rewrite(params) => {
                    let qs = parts.uri.query().map(str::to_string);
                    let rw = Rewriter {
                        lang,
                        params,
                        policy: &policy,
                        limits: gw.config.lbac_limits,
                        cache: &gw.rewrite_cache,
                    };
                    let mut span =
                        trace.map(|t| t.child("rewrite", opentelemetry::trace::SpanKind::Internal));
                    let rewritten =
                        apply(&parts.method, &mut parts.headers, qs.as_deref(), body, &rw).await;
                    if let Some(s) = span.as_mut()
                        && s.is_recording()
                        && let Err(e) = &rewritten
                    {
                        s.fail(match e {
                            crate::lbac::LbacError::BadQuery(m)
                            | crate::lbac::LbacError::Forbidden(m) => m.clone(),
                        });
                    }
                    if let Some(s) = span {
                        s.end();
                    }
                    let (q, new_body) = rewritten.map_err(|e| match cut.get() {
                        Some(c) => cut_failure(gw, c, max_body),
                        None => lbac_failure(e),
                    })?;
                    (q, full(new_body.unwrap_or_default()))
                }
            }
        }
    };
    let path_and_query = {
        let mut s = String::with_capacity(
            route.upstream_path.len() + query.as_deref().map_or(0, |q| q.len() + 1),
        );
        s.push_str(&route.upstream_path);
        if let Some(q) = &query {
            s.push('?');
            s.push_str(q);
        }
        http::uri::PathAndQuery::try_from(s)
            .map_err(|_| Failure::BadRequest("request path cannot be forwarded".into()))?
    };
    headers::clean_request(&mut parts.headers, upgrade, grpc);
    if grpc {
        // HTTP/2 carries the authority in the URI; a Host header would conflict with it
        parts.headers.remove(http::header::HOST);
    }
    let org = HeaderValue::from_str(org_id)
        .map_err(|_| Failure::BadRequest("invalid tenant ID".into()))?;
    parts.headers.insert(headers::X_SCOPE_ORGID, org);
    for v in label_values {
        parts.headers.append(headers::X_PROM_LABEL_POLICY, v);
    }
    headers::append_forwarded_for(&mut parts.headers, &conn.xff);
    Ok(Prepared {
        out: crate::upstream::Outgoing {
            method: parts.method,
            version: if grpc {
                http::Version::HTTP_2
            } else {
                http::Version::HTTP_11
            },
            headers: parts.headers,
            path_and_query,
            body,
            grpc,
            replay_cap: (route.class == RouteClass::Read)
                .then(|| usize::try_from(max_body).unwrap_or(usize::MAX)),
        },
        cut,
        max_body,
        timeout,
    })
}

fn cut_failure(gw: &Gateway, c: body::Cut, max_body: u64) -> Failure {
    match c {
        body::Cut::TooLarge => {
            gw.metrics.limits.body_too_large.inc();
            Failure::PayloadTooLarge(format!(
                "request body is over this route's limit of {max_body} bytes"
            ))
        }
        body::Cut::TimedOut => {
            gw.metrics.limits.body_timeout.inc();
            Failure::RequestTimeout(format!(
                "request body stalled for more than {:?}",
                gw.config.limits.body_read_timeout
            ))
        }
    }
}

/// Phase 6: mirror a write, choose an endpoint of the route's component and send, retrying
/// once where that is safe; upstream failures become 502/504.
async fn send(
    gw: &Gateway,
    up: &crate::upstream::BackendUpstream,
    route: &RouteMatch<'_>,
    mut p: Prepared,
    trace: Option<&crate::otel::RequestTrace>,
) -> Result<crate::upstream::Sent, Failure> {
    use crate::upstream::SendError;
    let backend = up.backend.slot.as_str();
    let component = route.component.as_str();
    let pool = up.pool(route.component).ok_or_else(|| {
        Failure::NotFound(format!(
            "backend {backend} has no component {component} for this route"
        ))
    })?;
    // the upstream span is the parent the backend's own spans hang from (a mirror's copy
    // carries the same traceparent)
    let mut span = trace.map(|t| {
        let s = t.child("upstream", opentelemetry::trace::SpanKind::Client);
        s.inject(&mut p.out.headers);
        s
    });
    if route.is_write() && !up.mirrors.is_empty() {
        let head = crate::upstream::mirror::Head {
            method: p.out.method.clone(),
            version: p.out.version,
            headers: p.out.headers.clone(),
            path_and_query: p.out.path_and_query.clone(),
            grpc: p.out.grpc,
        };
        let body = std::mem::replace(&mut p.out.body, full(Bytes::new()));
        p.out.body = crate::upstream::mirror::start(&up.mirrors, &head, body, p.timeout);
    }
    let t0 = Instant::now();
    let deadline = tokio::time::Instant::from_std(t0) + p.timeout;
    let result = pool.send(p.out, deadline).await;
    if let Some(h) = gw.metrics.handles().upstream_duration(backend) {
        h.observe(t0.elapsed().as_secs_f64());
    }
    if let Some(mut s) = span.take() {
        trace_upstream(&mut s, backend, component, &result);
        s.end();
    }
    let (kind, failure) = match result {
        Ok(sent) => {
            tracing::debug!(backend, component, route = route.name, endpoint = %sent.guard.endpoint().label, status = sent.response.status().as_u16(), retried = sent.retried, "forwarded");
            return Ok(sent);
        }
        Err(e) => {
            if matches!(e, SendError::Timeout) {
                gw.metrics
                    .upstream_errors
                    .with_label_values(&[backend, "timeout"])
                    .inc();
            }
            // the client's body, not the backend, ended the request
            if let Some(c) = p.cut.get() {
                return Err(cut_failure(gw, c, p.max_body));
            }
            match e {
                SendError::Timeout => {
                    let t = p.timeout;
                    tracing::warn!(backend, component, route = route.name, timeout = ?t, "upstream timed out");
                    // counted above
                    return Err(Failure::GatewayTimeout(format!(
                        "backend {backend} did not answer within {t:?}"
                    )));
                }
                SendError::Connect {
                    message,
                    timed_out: true,
                } => {
                    tracing::warn!(backend, component, route = route.name, kind = "timeout", error = %message, "upstream request failed");
                    (
                        "timeout",
                        Failure::GatewayTimeout(format!("backend {backend} timed out")),
                    )
                }
                SendError::Connect { message: msg, .. } => {
                    tracing::warn!(backend, component, route = route.name, kind = "connect", error = %msg, "upstream request failed");
                    (
                        "connect",
                        Failure::BadGateway(format!("backend {backend} is unreachable")),
                    )
                }
                SendError::NoEndpoint => {
                    tracing::warn!(
                        backend,
                        component,
                        route = route.name,
                        "no endpoint known for this component (DNS has not resolved)"
                    );
                    (
                        "connect",
                        Failure::BadGateway(format!(
                            "backend {backend} ({component}) has no reachable endpoint"
                        )),
                    )
                }
                SendError::Failed(msg) => {
                    tracing::warn!(backend, component, route = route.name, kind = "other", error = %msg, "upstream request failed");
                    (
                        "other",
                        Failure::BadGateway(format!("backend {backend} failed to answer")),
                    )
                }
                SendError::BadRequest => {
                    return Err(Failure::BadRequest(
                        "request path cannot be forwarded".into(),
                    ));
                }
            }
        }
    };
    gw.metrics
        .upstream_errors
        .with_label_values(&[backend, kind])
        .inc();
    Err(failure)
}

fn trace_upstream(
    s: &mut crate::otel::ChildSpan,
    backend: &'static str,
    component: &'static str,
    result: &Result<crate::upstream::Sent, crate::upstream::SendError>,
) {
    use opentelemetry::KeyValue;
    if !s.is_recording() {
        return;
    }
    s.set_attribute(KeyValue::new("obsgate.backend", backend));
    s.set_attribute(KeyValue::new("obsgate.component", component));
    match result {
        Ok(sent) => {
            s.set_attribute(KeyValue::new(
                "server.address",
                sent.guard.endpoint().label.to_string(),
            ));
            let code = sent.response.status().as_u16();
            s.set_attribute(KeyValue::new("http.response.status_code", i64::from(code)));
            s.set_attribute(KeyValue::new("obsgate.retried", sent.retried));
            if code >= 500 {
                s.fail(format!("HTTP {code}"));
            }
        }
        Err(e) => s.fail(match e {
            crate::upstream::SendError::NoEndpoint => "no endpoint".to_string(),
            crate::upstream::SendError::Connect { message, .. } => message.clone(),
            crate::upstream::SendError::Timeout => "timed out".to_string(),
            crate::upstream::SendError::Failed(m) => m.clone(),
            crate::upstream::SendError::BadRequest => "request cannot be forwarded".to_string(),
        }),
    }
}

/// Phase 7: the response, cleaned of hop-by-hop headers, its body counted in flight to its
/// endpoint until sent; a 101 joins the client's and the endpoint's upgraded connections.
fn respond(
    sent: crate::upstream::Sent,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<Body> {
    let crate::upstream::Sent {
        response: mut resp,
        guard,
        ..
    } = sent;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_up) = client_upgrade {
            let upstream_up = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                let _guard = guard;
                match tokio::try_join!(client_up, upstream_up) {
                    Ok((c, u)) => {
                        let mut c = hyper_util::rt::TokioIo::new(c);
                        let mut u = hyper_util::rt::TokioIo::new(u);
                        let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                    }
                    Err(e) => tracing::debug!("upgrade failed: {e}"),
                }
            });
        }
        let (mut parts, _) = resp.into_parts();
        headers::clean_response(&mut parts.headers, true);
        return Response::from_parts(parts, full(Bytes::new()));
    }
    let (mut parts, body) = resp.into_parts();
    headers::clean_response(&mut parts.headers, false);
    Response::from_parts(parts, body::guarded(body, guard))
}

/// Decides how the label policies of the restricted tenants of an allowed read are enforced.
/// Header mode: one `X-Prom-Label-Policy: <tenant>:<PathEscape(selector)>` value per selector.
/// Rewrite mode: one merged restriction for the query. Where neither can be enforced, the
/// request is refused (fail closed).
fn enforce_label_policies(
    gw: &Gateway,
    mode: Mode,
    slot: BackendSlot,
    tenants: usize,
    restricted: &[(&str, Vec<&crate::selector::Selector>)],
) -> Result<Enforcement, Failure> {
    if restricted.is_empty() {
        return Ok(Enforcement::None);
    }
    let refuse = |message: &str| Failure::Forbidden {
        reason: "label_policy",
        message: message.to_string(),
    };
    match gw.config.lbac {
        // A plain Prometheus ignores X-Prom-Label-Policy: sending it would let every series through.
        LbacMode::Header if up_kind(gw, slot) == Some(crate::config::BackendKind::Prometheus) => {
            Err(refuse(match mode {
                Mode::Proxy => {
                    "this token is restricted by label policies, and a plain Prometheus backend does not enforce X-Prom-Label-Policy; set lbac.mode: rewrite"
                }
                Mode::ForwardAuth => {
                    "this token is restricted by label policies, and a plain Prometheus backend does not enforce X-Prom-Label-Policy; forward-auth cannot rewrite queries: send these reads through obsgate's proxy listener with lbac.mode: rewrite"
                }
            }))
        }
        LbacMode::Header => {
            let mut values = Vec::new();
            for (tenant, selectors) in restricted {
                for s in selectors {
                    let escaped = s.path_escaped();
                    let mut v = String::with_capacity(tenant.len() + 1 + escaped.len());
                    v.push_str(tenant);
                    v.push(':');
                    v.push_str(escaped);
                    values.push(
                        HeaderValue::try_from(v)
                            .map_err(|_| refuse("label policy cannot be encoded"))?,
                    );
                }
            }
            Ok(Enforcement::Headers(values))
        }
        LbacMode::Rewrite => {
            match crate::lbac::restriction_for(tenants, restricted).map_err(lbac_failure)? {
                Some(m) => Ok(Enforcement::Rewrite(m)),
                None => Ok(Enforcement::None),
            }
        }
    }
}

fn up_kind(gw: &Gateway, slot: BackendSlot) -> Option<crate::config::BackendKind> {
    gw.upstreams.get(slot).map(|u| u.backend.kind)
}
