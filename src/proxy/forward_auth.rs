//! The forward-auth endpoint: obsgate as the authorizer of another proxy (nginx
//! `auth_request`, Traefik `ForwardAuth`, Envoy `ext_authz` over HTTP).
//!
//! The proxy asks about a request it is carrying; obsgate reads that original request from
//! the question, makes the data plane's decision about it (the same `authorize`, route tables
//! and label-policy enforcement), and answers 200 with the headers the proxy copies upstream,
//! or the data plane's 401/403/404 with its JSON body. Nothing is forwarded.
//!
//! The original request comes in one of three forms:
//! - nginx: `X-Original-Method` + `X-Original-URI` on `/auth`;
//! - Traefik: `X-Forwarded-Method` + `X-Forwarded-Uri` on `/auth`;
//! - Envoy: `/auth<original path>?<original query>` with the original method.
//!
//! A question may carry more than one form (a client can add any header, and nginx and Traefik
//! pass the client's headers on): every form present must name the same request, or the
//! question is refused with 400. The proxy's own form is always present, so a client cannot
//! make obsgate decide about another request than the one the proxy carries.

use super::{AuditCtx, Enforcement, Failure, Gateway, authorize, count, deny, lbac_failure};
use crate::auth;
use crate::config::{BackendSlot, ForwardAuthForm};
use crate::route::{self, RouteMatch};
use crate::telemetry::Mode;
use crate::wire::{Body, Conn, empty};
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Where the forward-auth listener answers questions.
pub const AUTH_PATH: &str = "/auth";

/// Which proxy's form carried the original request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `/auth<original path>` with the original method (Envoy `ext_authz`, `path_prefix`).
    Envoy,
    /// `X-Original-Method` + `X-Original-URI` (nginx `auth_request`).
    Nginx,
    /// `X-Forwarded-Method` + `X-Forwarded-Uri` (Traefik `ForwardAuth`, Caddy).
    Traefik,
}

impl Form {
    fn describe(self) -> &'static str {
        match self {
            Form::Envoy => "the /auth/<path> form",
            Form::Nginx => "X-Original-Method/X-Original-URI",
            Form::Traefik => "X-Forwarded-Method/X-Forwarded-Uri",
        }
    }
}

/// The request the proxy asks about, borrowed from the question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original<'q> {
    /// The backend the question names (`/auth/-/<backend>…`): its route table alone.
    pub backend: Option<BackendSlot>,
    /// The question carries `X-Obsgate-Explain` (a second question asked only to hand on a
    /// refusal): never answered 200.
    pub explain: bool,
    pub method: Method,
    /// The path as the client sent it (what the route tables match).
    pub path: &'q str,
    pub query: Option<&'q str>,
    pub form: Form,
}

impl Original<'_> {
    fn same_request(&self, o: &Original<'_>) -> bool {
        self.method == o.method && self.path == o.path && self.query == o.query
    }
}

fn bad(message: impl Into<String>) -> Failure {
    Failure::BadRequest(message.into())
}

const MISSING: &str = "missing the original request: send X-Original-Method and X-Original-URI (nginx), X-Forwarded-Method and X-Forwarded-Uri (Traefik), or ask /auth/<original path> with the original method (Envoy)";

/// The headers of the two header forms, in the order of [`FormHeaders`]' slots, and the
/// client's tenant header (read by the decision: it must not be ambiguous either).
const FORM_HEADERS: [&str; 6] = [
    "x-original-method",
    "x-original-uri",
    "x-forwarded-method",
    "x-forwarded-uri",
    "x-scope-orgid",
    "x-obsgate-explain",
];

/// The form headers of a question, found in one pass over its headers (four hashed lookups of
/// custom header names cost more than the pass), each with whether it came more than once.
#[derive(Default)]
struct FormHeaders<'h>([(Option<&'h HeaderValue>, bool); 6]);

impl<'h> FormHeaders<'h> {
    fn scan(headers: &'h HeaderMap) -> FormHeaders<'h> {
        let mut f = FormHeaders::default();
        for (name, value) in headers {
            let i = match name.as_str() {
                "x-original-method" => 0,
                "x-original-uri" => 1,
                "x-forwarded-method" => 2,
                "x-forwarded-uri" => 3,
                "x-scope-orgid" => 4,
                "x-obsgate-explain" => 5,
                _ => continue,
            };
            let slot = &mut f.0[i];
            if slot.0.is_some() {
                slot.1 = true;
            } else {
                slot.0 = Some(value);
            }
        }
        f
    }

    /// Header `i`, which must appear at most once and be UTF-8 text without control
    /// characters or spaces (a request target never has them; raw non-ASCII letters, which
    /// nginx passes on in a query, are kept).
    fn one(&self, i: usize) -> Result<Option<&'h str>, Failure> {
        let name = FORM_HEADERS[i];
        let (v, twice) = self.0[i];
        let Some(v) = v else {
            return Ok(None);
        };
        if twice {
            return Err(bad(format!("{name} is given more than once")));
        }
        let b = v.as_bytes();
        if b.is_empty() {
            return Err(bad(format!("{name} is empty")));
        }
        // no early exit: the whole value is checked in one vectorised pass
        if b.iter()
            .fold(false, |bad, &c| bad | (c < 0x21) | (c == 0x7f))
        {
            return Err(bad(format!("{name} has a space or a control character")));
        }
        std::str::from_utf8(b)
            .map(Some)
            .map_err(|_| bad(format!("{name} is not UTF-8")))
    }
}

/// A request target as a client sends it to the proxy: a path starting with `/`, with an
/// optional query (no absolute form, no `*`), split at the first `?` as Go's and hyper's
/// servers split one. Only the path decides the route; a `#` is an ordinary byte, as the
/// proxy passes it on.
fn target<'s>(name: &str, s: &'s str) -> Result<(&'s str, Option<&'s str>), Failure> {
    if !s.starts_with('/') {
        return Err(bad(format!(
            "{name} must be the original request's path and query as the client sent it (starting with /)"
        )));
    }
    Ok(match s.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (s, None),
    })
}

fn method(name: &str, s: &str) -> Result<Method, Failure> {
    Method::from_bytes(s.as_bytes()).map_err(|_| bad(format!("{name} is not an HTTP method")))
}

/// What one header form of a question holds.
enum Read<'h> {
    Absent,
    /// One of its two headers: an error if no complete form is there.
    Half(Failure),
    Complete(Original<'h>),
}

/// One header form: both headers, or neither, or half. A header given twice, or not a
/// request's method or target, is an error whatever else the question holds.
fn header_form<'h>(found: &FormHeaders<'h>, form: Form, first: usize) -> Result<Read<'h>, Failure> {
    let (method_name, uri_name) = (FORM_HEADERS[first], FORM_HEADERS[first + 1]);
    Ok(match (found.one(first)?, found.one(first + 1)?) {
        (None, None) => Read::Absent,
        (Some(_), None) => Read::Half(bad(format!(
            "{uri_name} is missing ({method_name} was sent): the original request needs both"
        ))),
        (None, Some(_)) => Read::Half(bad(format!(
            "{method_name} is missing ({uri_name} was sent): the original request needs both"
        ))),
        (Some(m), Some(u)) => {
            let (path, query) = target(uri_name, u)?;
            Read::Complete(Original {
                backend: None,
                explain: false,
                method: method(method_name, m)?,
                path,
                query,
                form,
            })
        }
    })
}

/// Reads the original request from a question asked of `/auth` or `/auth/<path>`. `None`: the
/// question was asked of another path.
/// `only`: the one form read (`forward_auth.form`); `None`: every form, which must agree.
pub fn original<'q>(
    method: &Method,
    uri: &'q Uri,
    headers: &'q HeaderMap,
    only: Option<Form>,
) -> Option<Result<Original<'q>, Failure>> {
    let path = uri.path();
    let rest = path.strip_prefix(AUTH_PATH)?;
    // `/auth/-/<backend>`: the proxy names the backend it forwards to (no route starts `/-/`)
    let (backend, rest) = match rest.strip_prefix("/-/") {
        Some(r) => {
            let end = r.find('/').unwrap_or(r.len());
            let slot = BackendSlot::ALL
                .into_iter()
                .find(|s| s.as_str() == &r[..end])?;
            (Some(slot), &r[end..])
        }
        None => (None, rest),
    };
    // a fixed form: /auth/<path> is Envoy's alone, /auth the header forms'
    match only {
        Some(Form::Envoy) if rest.is_empty() => return None,
        Some(Form::Nginx | Form::Traefik) if !rest.is_empty() => return None,
        _ => {}
    }
    let envoy = if rest.is_empty() {
        if !matches!(*method, Method::GET | Method::HEAD | Method::POST) {
            return Some(Err(Failure::MethodNotAllowed(format!(
                "{AUTH_PATH} answers GET and POST, not {method}"
            ))));
        }
        None
    } else if rest.starts_with('/') {
        // hyper parsed the question's target: the path and query are the original's
        Some(Original {
            backend: None,
            explain: false,
            method: method.clone(),
            path: rest,
            query: uri.query(),
            form: Form::Envoy,
        })
    } else {
        // `/authx`: not ours
        return None;
    };
    Some(read_forms(envoy, headers, only).map(|mut o| {
        o.backend = backend;
        o
    }))
}

fn read_forms<'q>(
    envoy: Option<Original<'q>>,
    headers: &'q HeaderMap,
    only: Option<Form>,
) -> Result<Original<'q>, Failure> {
    let found = FormHeaders::scan(headers);
    // The decision reads the first X-Scope-OrgID; a proxy that replaces only the first one
    // (Envoy's allowed_upstream_headers) would send the backend a second, unchecked one.
    if found.0[4].1 {
        return Err(bad(
            "x-scope-orgid is given more than once: name several tenants in one value, a|b",
        ));
    }
    let read = |form: Form, first: usize| {
        if only.is_none_or(|o| o == form) {
            header_form(&found, form, first)
        } else {
            Ok(Read::Absent)
        }
    };
    let forms = [
        envoy.map_or(Read::Absent, Read::Complete),
        read(Form::Nginx, 0)?,
        read(Form::Traefik, 2)?,
    ];
    // Every complete form must name the same request. Half a form (a header a client added,
    // say) decides nothing: it is the answer only when no complete form is there.
    let mut half = None;
    let mut first: Option<Original<'q>> = None;
    for r in forms {
        match r {
            Read::Absent => {}
            Read::Half(e) => {
                half.get_or_insert(e);
            }
            Read::Complete(o) => match &first {
                None => first = Some(o),
                Some(f) if f.same_request(&o) => {}
                Some(f) => {
                    return Err(bad(format!(
                        "the original request is given twice and the two disagree ({} says {} {}, {} says {} {}); the proxy must set its own headers on every question (or set forward_auth.form)",
                        f.form.describe(),
                        f.method,
                        f.path,
                        o.form.describe(),
                        o.method,
                        o.path,
                    )));
                }
            },
        }
    }
    let mut first = first.ok_or_else(|| half.unwrap_or_else(|| bad(MISSING)))?;
    first.explain = found.0[5].0.is_some();
    Ok(first)
}

/// Every question on the forward-auth listener (after the gateway's own endpoints).
pub async fn handle(
    gw: Arc<Gateway>,
    conn: Arc<Conn>,
    req: Request<hyper::body::Incoming>,
) -> Response<Body> {
    let Some(t) = gw.tracing.as_ref() else {
        return answer_traced(
            &gw,
            conn.peer,
            conn.believe_forwarded,
            req.method(),
            req.uri(),
            req.headers(),
            None,
        );
    };
    // one server span per question, named after the question (the original request is an
    // attribute): a proxy's auth subrequest usually carries the client's traceparent
    let trace = super::request_trace(
        t,
        Mode::ForwardAuth,
        req.method(),
        req.uri().path(),
        None,
        conn.peer,
        req.headers(),
    );
    let mut r = answer_traced(
        &gw,
        conn.peer,
        conn.believe_forwarded,
        req.method(),
        req.uri(),
        req.headers(),
        Some(&trace),
    );
    r.headers_mut()
        .insert(crate::otel::TRACE_ID_HEADER, trace.header_value());
    trace.finish(r.status().as_u16());
    r
}

/// The answer to one question: the data plane's decision about the original request.
pub fn answer(
    gw: &Gateway,
    peer: SocketAddr,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Response<Body> {
    answer_traced(gw, peer, true, method, uri, headers, None)
}

/// [`answer`] on a connection whose forwarded headers may not be believed (a PROXY header that
/// named no client), with the question's trace: its ID goes into the audit line, the original
/// request and the decision into its span.
pub fn answer_traced(
    gw: &Gateway,
    peer: SocketAddr,
    believe_forwarded: bool,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    trace: Option<&crate::otel::RequestTrace>,
) -> Response<Body> {
    let start = Instant::now();
    let trusted = if believe_forwarded {
        &gw.config.client_ip.trusted_proxies[..]
    } else {
        &[]
    };
    let ip = auth::forward_auth_client_ip(peer.ip(), headers, trusted);
    let trace_id = trace.map(|t| t.trace_id());
    let _inflight = crate::telemetry::InflightRequest::start(&gw.metrics.inflight);
    let mode = Mode::ForwardAuth;
    let (backend, numbered, form) = gw
        .config
        .forward_auth
        .as_ref()
        .map_or((None, 0, None), |f| {
            (
                f.backend,
                f.numbered_label_policies,
                match f.form {
                    ForwardAuthForm::Auto => None,
                    ForwardAuthForm::Nginx => Some(Form::Nginx),
                    ForwardAuthForm::Traefik => Some(Form::Traefik),
                    ForwardAuthForm::Envoy => Some(Form::Envoy),
                },
            )
        });
    let orig = match original(method, uri, headers, form) {
        None => {
            let r = Failure::NotFound(format!(
                "the forward-auth listener answers {AUTH_PATH} and {AUTH_PATH}/<original path>, not {}",
                uri.path()
            ))
            .into_response();
            count(gw, mode, "none", "unmatched", None, r.status(), start);
            return r;
        }
        Some(Err(f)) => {
            let audit = AuditCtx {
                client_ip: Some(ip),
                trace_id,
                ..AuditCtx::default()
            };
            let r = deny(gw, mode, f, peer, "invalid", &audit);
            count(gw, mode, "none", "invalid", None, r.status(), start);
            return r;
        }
        Some(Ok(o)) => o,
    };
    let path = orig.path;
    // the backend whose table judges: the one the question names, else the listener's
    let backend = match (backend, orig.backend) {
        (Some(mine), Some(named)) if mine != named => {
            let r = Failure::NotFound(format!(
                "this forward-auth listener judges requests for backend {} only (forward_auth.backend), not {}",
                mine.as_str(),
                named.as_str()
            ))
            .into_response();
            count(gw, mode, "none", "unmatched", None, r.status(), start);
            return r;
        }
        (mine, named) => named.or(mine),
    };
    let (slot_label, route_label, component, resp) =
        match route::match_route(&gw.config.backends, backend, &orig.method, path) {
            None => {
                let r = match backend {
                    Some(b) if gw.config.backends.get(b).is_none() => {
                        Failure::NotFound(format!("backend {} is not configured", b.as_str()))
                    }
                    _ => Failure::NotFound(format!("no route for {} {path}", orig.method)),
                }
                .into_response();
                ("none", "unmatched", None, r)
            }
            Some(route) => {
                let mut audit = AuditCtx {
                    trace_id,
                    ..AuditCtx::default()
                };
                let r = match allow(gw, &route, &orig, ip, headers, numbered, &mut audit) {
                    Ok(r) => r,
                    Err(f) => deny(gw, mode, f, peer, route.name, &audit),
                };
                if let Some(t) = trace {
                    trace_answer(t, &orig, &route, &audit, &r);
                }
                (route.slot.as_str(), route.name, Some(route.component), r)
            }
        };
    count(
        gw,
        mode,
        slot_label,
        route_label,
        component,
        resp.status(),
        start,
    );
    resp
}

/// The question's span: the original request it was about, who asked, the decision.
fn trace_answer(
    t: &crate::otel::RequestTrace,
    orig: &Original<'_>,
    route: &RouteMatch<'_>,
    audit: &AuditCtx,
    r: &Response<Body>,
) {
    use opentelemetry::KeyValue;
    if !t.is_recording() {
        return;
    }
    t.set_attribute(KeyValue::new(
        "obsgate.original.method",
        orig.method.as_str().to_string(),
    ));
    t.set_attribute(KeyValue::new("obsgate.original.route", route.name));
    t.set_attribute(KeyValue::new("obsgate.backend", route.slot.as_str()));
    if let Some(ip) = audit.client_ip {
        t.set_attribute(KeyValue::new("client.address", ip.to_string()));
    }
    if let Some(id) = &audit.identity {
        t.set_attribute(KeyValue::new("obsgate.token", id.token_name.clone()));
        t.set_attribute(KeyValue::new("obsgate.policy", id.policy_name.clone()));
    }
    let tenant = audit.tenant.clone().or_else(|| {
        r.headers()
            .get(super::headers::X_SCOPE_ORGID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    });
    if let Some(tenant) = tenant {
        t.set_attribute(KeyValue::new("obsgate.tenant", tenant));
    }
    t.set_attribute(KeyValue::new(
        "obsgate.decision",
        if r.status() == StatusCode::OK {
            "allow"
        } else {
            "deny"
        },
    ));
}

/// The data plane's decision about a routed original request; allowed: 200 with the headers
/// the proxy copies upstream.
#[allow(clippy::too_many_arguments)]
fn allow(
    gw: &Gateway,
    route: &RouteMatch<'_>,
    orig: &Original<'_>,
    ip: std::net::IpAddr,
    headers: &HeaderMap,
    numbered: usize,
    audit: &mut AuditCtx,
) -> Result<Response<Body>, Failure> {
    audit.client_ip = Some(ip);
    let (org_id, enforcement) = authorize(gw, Mode::ForwardAuth, route, ip, headers, audit)?;
    // per-tenant controls: blocks and rate limits (in-flight limits are the proxy listeners'
    // alone: obsgate does not see when a request it allowed here ends). A question asked only
    // to hand on a refusal takes nothing from a rate limit.
    let check = if orig.explain {
        crate::controls::Check::Explain
    } else {
        crate::controls::Check::ForwardAuth
    };
    if let Err(f) = crate::controls::admit(
        gw.controls.as_deref(),
        route.scope,
        &org_id,
        audit.identity.as_deref(),
        check,
    ) {
        audit.tenant = Some(org_id);
        return Err(f);
    }
    if orig.explain {
        // asked again only to hand on a refusal, and now allowed (a refilled allowance, a
        // reload in between): a 200 here would reach the client as an empty success, with
        // nothing forwarded
        let mut r = crate::wire::error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the request was refused a moment ago and is allowed now: retry it",
        );
        r.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Ok(r);
    }
    match allowed(gw, route, &org_id, enforcement, numbered, orig.form) {
        Ok(r) => {
            gw.metrics.handles().allowed(Mode::ForwardAuth).inc();
            Ok(r)
        }
        Err(f) => {
            audit.tenant = Some(org_id);
            Err(f)
        }
    }
}

/// The 200 for an allowed question, unless its label policies cannot be handed to the proxy.
fn allowed(
    gw: &Gateway,
    route: &RouteMatch<'_>,
    org_id: &str,
    enforcement: Enforcement,
    numbered: usize,
    form: Form,
) -> Result<Response<Body>, Failure> {
    let values = match enforcement {
        Enforcement::None => Vec::new(),
        Enforcement::Headers(v) => v,
        // rewrite mode: a query cannot be rewritten by an authorizer that never sees it
        Enforcement::Rewrite(_) => {
            use crate::lbac::request::{Treatment, refused, treatment};
            let kind = gw
                .config
                .backends
                .get(route.slot)
                .map(|b| b.kind)
                .ok_or_else(|| Failure::NotFound("backend is not configured".into()))?;
            match treatment(kind, route.name).1 {
                Treatment::Pass => Vec::new(),
                Treatment::Refuse => return Err(lbac_failure(refused(route.name))),
                Treatment::Rewrite(_) => {
                    return Err(Failure::Forbidden {
                        reason: "label_policy",
                        message: format!(
                            "this token is restricted by label policies on {}; with lbac.mode: rewrite obsgate enforces them by rewriting the query, which forward-auth cannot do: use lbac.mode: header (the backend enforces X-Prom-Label-Policy), or send these reads through obsgate's proxy listener",
                            route.name
                        ),
                    });
                }
            }
        }
    };
    // nginx copies one value per header name: without numbered copies it would forward one
    // policy of several (1.22) or a joined, malformed one (1.23+), or none with the recipe
    if numbered == 0 && form == Form::Nginx && !values.is_empty() {
        return Err(Failure::Forbidden {
            reason: "label_policy",
            message: "this token is restricted by label policies, and nginx copies one value per header name: set forward_auth.numbered_label_policies and copy that many X-Prom-Label-Policy-<n> headers".into(),
        });
    }
    if numbered > 0 && values.len() > numbered {
        return Err(Failure::Forbidden {
            reason: "label_policy",
            message: format!(
                "this token's label policies need {} X-Prom-Label-Policy values, more than the {numbered} numbered headers (forward_auth.numbered_label_policies) the proxy copies",
                values.len()
            ),
        });
    }
    let org = HeaderValue::from_str(org_id)
        .map_err(|_| Failure::BadRequest("invalid tenant ID".into()))?;
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(super::headers::X_SCOPE_ORGID, org);
    if numbered > 0 {
        for (i, v) in values.iter().enumerate() {
            h.insert(numbered_name(i), v.clone());
        }
    }
    for v in values {
        h.append(super::headers::X_PROM_LABEL_POLICY, v);
    }
    Ok(r)
}

/// `x-prom-label-policy-<i+1>`, built once.
fn numbered_name(i: usize) -> HeaderName {
    static NAMES: OnceLock<Vec<HeaderName>> = OnceLock::new();
    let names = NAMES.get_or_init(|| {
        (1..=crate::config::MAX_NUMBERED_LABEL_POLICIES)
            .map(|n| {
                HeaderName::from_bytes(format!("x-prom-label-policy-{n}").as_bytes())
                    .expect("a valid header name")
            })
            .collect()
    });
    names[i].clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdrs(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    fn read(
        method: Method,
        uri: &str,
        pairs: &[(&str, &str)],
    ) -> Result<Original<'static>, String> {
        read_only(method, uri, pairs, None)
    }

    fn read_only(
        method: Method,
        uri: &str,
        pairs: &[(&str, &str)],
        only: Option<Form>,
    ) -> Result<Original<'static>, String> {
        // leaked: the parsed question outlives this helper in the tests
        let uri: &'static Uri = Box::leak(Box::new(uri.parse().unwrap()));
        let headers: &'static HeaderMap = Box::leak(Box::new(hdrs(pairs)));
        match original(&method, uri, headers, only) {
            None => Err("not ours".into()),
            Some(Ok(o)) => Ok(o),
            Some(Err(f)) => Err(format!("{} {}", f.status().as_u16(), f.message())),
        }
    }

    fn ok(o: Result<Original<'_>, String>) -> (Method, String, Form) {
        let o = o.unwrap();
        let target = match o.query {
            Some(q) => format!("{}?{q}", o.path),
            None => o.path.to_string(),
        };
        (o.method, target, o.form)
    }

    #[test]
    fn nginx_form() {
        let o = read(
            Method::GET,
            "/auth",
            &[
                ("x-original-method", "POST"),
                ("x-original-uri", "/api/v1/push?x=%2F"),
            ],
        );
        assert_eq!(
            ok(o),
            (Method::POST, "/api/v1/push?x=%2F".into(), Form::Nginx)
        );
    }

    #[test]
    fn traefik_form() {
        let o = read(
            Method::GET,
            "/auth",
            &[
                ("x-forwarded-method", "GET"),
                ("x-forwarded-uri", "/prometheus/api/v1/query?query=up"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "mimir.example"),
            ],
        );
        assert_eq!(
            ok(o),
            (
                Method::GET,
                "/prometheus/api/v1/query?query=up".into(),
                Form::Traefik
            )
        );
    }

    #[test]
    fn envoy_form_keeps_method_path_and_query() {
        let o = read(
            Method::DELETE,
            "/auth/loki/api/v1/delete?query=%7Ba%3D%22b%22%7D",
            &[],
        );
        assert_eq!(
            ok(o),
            (
                Method::DELETE,
                "/loki/api/v1/delete?query=%7Ba%3D%22b%22%7D".into(),
                Form::Envoy
            )
        );
        let o = read(Method::POST, "/auth/api/v1/push", &[]);
        assert_eq!(ok(o), (Method::POST, "/api/v1/push".into(), Form::Envoy));
        // the original path may itself start with /auth
        let o = read(Method::GET, "/auth/auth/x", &[]);
        assert_eq!(ok(o).1, "/auth/x");
    }

    #[test]
    fn forms_that_agree_are_one_request() {
        let o = read(
            Method::GET,
            "/auth",
            &[
                ("x-original-method", "GET"),
                ("x-original-uri", "/loki/api/v1/query?query=x"),
                ("x-forwarded-method", "GET"),
                ("x-forwarded-uri", "/loki/api/v1/query?query=x"),
            ],
        );
        assert_eq!(ok(o).2, Form::Nginx);
        let o = read(
            Method::POST,
            "/auth/api/v1/push",
            &[
                ("x-forwarded-method", "POST"),
                ("x-forwarded-uri", "/api/v1/push"),
            ],
        );
        assert_eq!(ok(o).2, Form::Envoy);
    }

    #[test]
    fn forms_that_disagree_are_refused() {
        // a client behind Traefik adds nginx's headers to be judged on a read while it writes
        let e = read(
            Method::GET,
            "/auth",
            &[
                ("x-original-method", "GET"),
                ("x-original-uri", "/prometheus/api/v1/query"),
                ("x-forwarded-method", "POST"),
                ("x-forwarded-uri", "/api/v1/push"),
            ],
        )
        .unwrap_err();
        assert!(
            e.starts_with("400 the original request is given twice"),
            "{e}"
        );
        // the same path with another method, or another query, disagrees too
        let e = read(
            Method::POST,
            "/auth/api/v1/push",
            &[
                ("x-forwarded-method", "GET"),
                ("x-forwarded-uri", "/api/v1/push"),
            ],
        )
        .unwrap_err();
        assert!(
            e.starts_with("400 the original request is given twice"),
            "{e}"
        );
        let e = read(
            Method::GET,
            "/auth/loki/api/v1/query?query=a",
            &[
                ("x-original-method", "GET"),
                ("x-original-uri", "/loki/api/v1/query?query=b"),
            ],
        )
        .unwrap_err();
        assert!(e.starts_with("400"), "{e}");
    }

    #[test]
    fn missing_and_malformed_parts_are_400_naming_them() {
        let e = read(Method::GET, "/auth", &[]).unwrap_err();
        assert!(e.starts_with("400 missing the original request"), "{e}");
        let e = read(Method::GET, "/auth", &[("x-original-uri", "/api/v1/push")]).unwrap_err();
        assert!(e.starts_with("400 x-original-method is missing"), "{e}");
        let e = read(Method::GET, "/auth", &[("x-forwarded-method", "GET")]).unwrap_err();
        assert!(e.starts_with("400 x-forwarded-uri is missing"), "{e}");
        for bad_uri in ["api/v1/push", "http://mimir/api/v1/push", "*"] {
            let e = read(
                Method::GET,
                "/auth",
                &[("x-original-method", "GET"), ("x-original-uri", bad_uri)],
            );
            assert!(
                matches!(&e, Err(m) if m.starts_with("400 x-original-uri must be")),
                "{bad_uri}: {e:?}"
            );
        }
        for (m, u, want) in [
            (
                "GET",
                "/a b",
                "x-original-uri has a space or a control character",
            ),
            (
                "GET",
                "/a\tb",
                "x-original-uri has a space or a control character",
            ),
            ("G E T", "/x", "x-original-method has a space"),
            ("G(T", "/x", "x-original-method is not an HTTP method"),
        ] {
            let e = read(
                Method::GET,
                "/auth",
                &[("x-original-method", m), ("x-original-uri", u)],
            )
            .unwrap_err();
            assert!(e.contains(want), "{m} {u}: {e}");
        }
        // raw non-ASCII letters and a fragment mark are passed on by nginx: read as they are
        let mut h = hdrs(&[("x-original-method", "GET")]);
        h.insert(
            "x-original-uri",
            HeaderValue::from_bytes("/loki/api/v1/query?query=café#x".as_bytes()).unwrap(),
        );
        let h: &'static HeaderMap = Box::leak(Box::new(h));
        let uri: &'static Uri = Box::leak(Box::new("/auth".parse().unwrap()));
        let o = original(&Method::GET, uri, h, None).unwrap().unwrap();
        assert_eq!(
            (o.path, o.query),
            ("/loki/api/v1/query", Some("query=café#x"))
        );
        // bytes that are not UTF-8
        let mut h = hdrs(&[("x-original-method", "GET")]);
        h.insert(
            "x-original-uri",
            HeaderValue::from_bytes(b"/x?q=\xff").unwrap(),
        );
        let h: &'static HeaderMap = Box::leak(Box::new(h));
        let e = original(&Method::GET, uri, h, None).unwrap().unwrap_err();
        assert!(e.message().contains("not UTF-8"), "{}", e.message());
        let e = read(
            Method::GET,
            "/auth",
            &[
                ("x-original-method", "GET"),
                ("x-original-uri", "/x"),
                ("x-original-uri", "/y"),
            ],
        )
        .unwrap_err();
        assert!(e.contains("x-original-uri is given more than once"), "{e}");
        let e = read(
            Method::GET,
            "/auth",
            &[("x-original-method", ""), ("x-original-uri", "/x")],
        )
        .unwrap_err();
        assert!(e.contains("x-original-method is empty"), "{e}");
    }

    #[test]
    fn half_a_form_is_ignored_next_to_a_complete_one_but_an_invalid_one_is_not() {
        // a client behind nginx sends X-Forwarded-Uri alone: nginx's form decides
        let o = read(
            Method::GET,
            "/auth",
            &[
                ("x-original-method", "GET"),
                ("x-original-uri", "/prometheus/api/v1/query?query=up"),
                ("x-forwarded-uri", "/api/v1/push"),
            ],
        );
        assert_eq!(ok(o).2, Form::Nginx);
        // half a form alone is still an error
        let e = read(Method::GET, "/auth", &[("x-forwarded-uri", "/api/v1/push")]).unwrap_err();
        assert!(e.contains("x-forwarded-method is missing"), "{e}");
        // a complete form the proxy set cannot be made invalid to let a client's form decide:
        // any invalid form is an error (Traefik's X-Forwarded-Uri for `OPTIONS *` is `*`)
        let e = read(
            Method::GET,
            "/auth",
            &[
                ("x-forwarded-method", "OPTIONS"),
                ("x-forwarded-uri", "*"),
                ("x-original-method", "GET"),
                ("x-original-uri", "/prometheus/api/v1/query"),
            ],
        )
        .unwrap_err();
        assert!(e.contains("x-forwarded-uri must be"), "{e}");
        let e = read(
            Method::POST,
            "/auth/api/v1/push",
            &[
                ("x-original-method", "GET"),
                ("x-original-uri", "/x"),
                ("x-original-uri", "/y"),
            ],
        )
        .unwrap_err();
        assert!(e.contains("given more than once"), "{e}");
    }

    #[test]
    fn two_tenant_headers_are_refused() {
        let e = read(
            Method::GET,
            "/auth/prometheus/api/v1/query",
            &[("x-scope-orgid", "team-a"), ("x-scope-orgid", "team-b")],
        )
        .unwrap_err();
        assert!(
            e.starts_with("400 x-scope-orgid is given more than once"),
            "{e}"
        );
        assert!(
            read(
                Method::GET,
                "/auth/prometheus/api/v1/query",
                &[("x-scope-orgid", "team-a|team-b")]
            )
            .is_ok()
        );
    }

    #[test]
    fn a_fixed_form_reads_only_its_own_headers() {
        let nginx_and_forged = [
            ("x-original-method", "POST"),
            ("x-original-uri", "/api/v1/push"),
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/prometheus/api/v1/query"),
        ];
        // auto: the two disagree
        assert!(read(Method::GET, "/auth", &nginx_and_forged).is_err());
        // nginx: the client's Traefik headers are not read at all
        let o = read_only(Method::GET, "/auth", &nginx_and_forged, Some(Form::Nginx));
        assert_eq!(ok(o), (Method::POST, "/api/v1/push".into(), Form::Nginx));
        let o = read_only(Method::GET, "/auth", &nginx_and_forged, Some(Form::Traefik));
        assert_eq!(ok(o).1, "/prometheus/api/v1/query");
        // the fixed form missing: the error names what to send, the other form does not stand in
        let e = read_only(
            Method::GET,
            "/auth",
            &[("x-forwarded-method", "GET"), ("x-forwarded-uri", "/x")],
            Some(Form::Nginx),
        )
        .unwrap_err();
        assert!(e.contains("missing the original request"), "{e}");
        // envoy: only /auth/<path>, headers ignored; /auth itself is not a question
        let o = read_only(
            Method::POST,
            "/auth/api/v1/push",
            &[("x-original-method", "GET"), ("x-original-uri", "/x")],
            Some(Form::Envoy),
        );
        assert_eq!(ok(o), (Method::POST, "/api/v1/push".into(), Form::Envoy));
        assert_eq!(
            read_only(Method::GET, "/auth", &nginx_and_forged, Some(Form::Envoy)).unwrap_err(),
            "not ours"
        );
        assert_eq!(
            read_only(Method::GET, "/auth/x", &[], Some(Form::Nginx)).unwrap_err(),
            "not ours"
        );
    }

    #[test]
    fn other_paths_and_methods() {
        assert_eq!(read(Method::GET, "/authz", &[]).unwrap_err(), "not ours");
        assert_eq!(read(Method::GET, "/", &[]).unwrap_err(), "not ours");
        let e = read(
            Method::PUT,
            "/auth",
            &[("x-original-method", "GET"), ("x-original-uri", "/x")],
        )
        .unwrap_err();
        assert!(e.starts_with("405"), "{e}");
        for m in [Method::GET, Method::POST, Method::HEAD] {
            assert!(
                read(
                    m.clone(),
                    "/auth",
                    &[("x-original-method", "GET"), ("x-original-uri", "/x")]
                )
                .is_ok(),
                "{m}"
            );
        }
    }
}
