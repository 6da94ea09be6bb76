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
use crate::route::{self, RouteMatch};
use crate::telemetry::Mode;
use crate::wire::{Body, Conn, full};
use bytes::Bytes;
use http::header::HeaderName;
use http::uri::PathAndQuery;
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

/// The request the proxy asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    pub method: Method,
    pub target: PathAndQuery,
    pub form: Form,
}

fn bad(message: impl Into<String>) -> Failure {
    Failure::BadRequest(message.into())
}

const MISSING: &str = "missing the original request: send X-Original-Method and X-Original-URI (nginx), X-Forwarded-Method and X-Forwarded-Uri (Traefik), or ask /auth/<original path> with the original method (Envoy)";

/// A header that must appear at most once, as text.
fn one<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<Option<&'h str>, Failure> {
    let mut all = headers.get_all(name).iter();
    let Some(v) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(bad(format!("{name} is given more than once")));
    }
    let s = v
        .to_str()
        .map_err(|_| bad(format!("{name} is not printable ASCII")))?;
    if s.is_empty() {
        return Err(bad(format!("{name} is empty")));
    }
    Ok(Some(s))
}

/// A request target as a client sends it to the proxy: a path starting with `/`, with an
/// optional query, nothing else (no absolute form, no `*`, no fragment), parsed the way the
/// data plane's server parses one.
fn target(name: &str, s: &str) -> Result<PathAndQuery, Failure> {
    let invalid = || {
        bad(format!(
            "{name} must be the original request's path and query as the client sent it (starting with /)"
        ))
    };
    if !s.starts_with('/') || s.contains('#') {
        return Err(invalid());
    }
    PathAndQuery::from_maybe_shared(Bytes::copy_from_slice(s.as_bytes())).map_err(|_| invalid())
}

fn method(name: &str, s: &str) -> Result<Method, Failure> {
    Method::from_bytes(s.as_bytes()).map_err(|_| bad(format!("{name} is not an HTTP method")))
}

/// One header form: both headers or neither.
fn header_form(
    headers: &HeaderMap,
    form: Form,
    method_name: &'static str,
    uri_name: &'static str,
) -> Result<Option<Original>, Failure> {
    match (one(headers, method_name)?, one(headers, uri_name)?) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(bad(format!(
            "{uri_name} is missing ({method_name} was sent): the original request needs both"
        ))),
        (None, Some(_)) => Err(bad(format!(
            "{method_name} is missing ({uri_name} was sent): the original request needs both"
        ))),
        (Some(m), Some(u)) => Ok(Some(Original {
            method: method(method_name, m)?,
            target: target(uri_name, u)?,
            form,
        })),
    }
}

/// Reads the original request from a question asked of `/auth` or `/auth/<path>`. `None`: the
/// question was asked of another path.
pub fn original(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Option<Result<Original, Failure>> {
    let path = uri.path();
    let rest = path.strip_prefix(AUTH_PATH)?;
    let envoy = if rest.is_empty() {
        if !matches!(*method, Method::GET | Method::HEAD | Method::POST) {
            return Some(Err(Failure::MethodNotAllowed(format!(
                "{AUTH_PATH} answers GET and POST, not {method}"
            ))));
        }
        None
    } else if rest.starts_with('/') {
        let t = match uri.query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_string(),
        };
        match target("the path after /auth", &t) {
            Ok(target) => Some(Original {
                method: method.clone(),
                target,
                form: Form::Envoy,
            }),
            Err(e) => return Some(Err(e)),
        }
    } else {
        // `/authx`: not ours
        return None;
    };
    Some(read_forms(envoy, headers))
}

fn read_forms(envoy: Option<Original>, headers: &HeaderMap) -> Result<Original, Failure> {
    let nginx = header_form(headers, Form::Nginx, "x-original-method", "x-original-uri")?;
    let traefik = header_form(
        headers,
        Form::Traefik,
        "x-forwarded-method",
        "x-forwarded-uri",
    )?;
    let mut found = [envoy, nginx, traefik].into_iter().flatten();
    let first = found.next().ok_or_else(|| bad(MISSING))?;
    for other in found {
        if other.method != first.method || other.target != first.target {
            return Err(bad(format!(
                "the original request is given twice and the two disagree ({} says {} {}, {} says {} {}); the proxy must set its own headers on every question",
                first.form.describe(),
                first.method,
                first.target.path(),
                other.form.describe(),
                other.method,
                other.target.path(),
            )));
        }
    }
    Ok(first)
}

/// Every question on the forward-auth listener (after the gateway's own endpoints).
pub async fn handle(
    gw: Arc<Gateway>,
    conn: Arc<Conn>,
    req: Request<hyper::body::Incoming>,
) -> Response<Body> {
    answer(&gw, conn.peer, req.method(), req.uri(), req.headers())
}

/// The answer to one question: the data plane's decision about the original request.
pub fn answer(
    gw: &Gateway,
    peer: SocketAddr,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Response<Body> {
    let start = Instant::now();
    let _inflight = crate::telemetry::InflightRequest::start(&gw.metrics.inflight);
    let mode = Mode::ForwardAuth;
    let (backend, numbered) = gw
        .config
        .forward_auth
        .as_ref()
        .map_or((None, 0), |f| (f.backend, f.numbered_label_policies));
    let orig = match original(method, uri, headers) {
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
                client_ip: Some(client_ip(gw, peer, headers)),
                ..AuditCtx::default()
            };
            let r = deny(gw, mode, f, peer, "invalid", &audit);
            count(gw, mode, "none", "invalid", None, r.status(), start);
            return r;
        }
        Some(Ok(o)) => o,
    };
    let path = orig.target.path();
    let (slot_label, route_label, component, resp) =
        match route::match_route(&gw.config.backends, backend, &orig.method, path) {
            None => {
                let r = Failure::NotFound(format!("no route for {} {path}", orig.method))
                    .into_response();
                ("none", "unmatched", None, r)
            }
            Some(route) => {
                let mut audit = AuditCtx::default();
                let r = match allow(gw, &route, peer, headers, numbered, &mut audit) {
                    Ok(r) => r,
                    Err(f) => deny(gw, mode, f, peer, route.name, &audit),
                };
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

fn client_ip(gw: &Gateway, peer: SocketAddr, headers: &HeaderMap) -> std::net::IpAddr {
    auth::forward_auth_client_ip(peer.ip(), headers, &gw.config.client_ip.trusted_proxies)
}

/// The data plane's decision about a routed original request; allowed: 200 with the headers
/// the proxy copies upstream.
fn allow(
    gw: &Gateway,
    route: &RouteMatch<'_>,
    peer: SocketAddr,
    headers: &HeaderMap,
    numbered: usize,
    audit: &mut AuditCtx,
) -> Result<Response<Body>, Failure> {
    let ip = client_ip(gw, peer, headers);
    audit.client_ip = Some(ip);
    let (org_id, enforcement) = authorize(gw, Mode::ForwardAuth, route, ip, headers, audit)?;
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
    if numbered > 0 && values.len() > numbered {
        return Err(Failure::Forbidden {
            reason: "label_policy",
            message: format!(
                "this token's label policies need {} X-Prom-Label-Policy values, more than the {numbered} numbered headers (forward_auth.numbered_label_policies) the proxy copies",
                values.len()
            ),
        });
    }
    let org = HeaderValue::from_str(&org_id)
        .map_err(|_| Failure::BadRequest("invalid tenant ID".into()))?;
    gw.metrics.handles().allowed(Mode::ForwardAuth).inc();
    let mut r = Response::new(full(Bytes::new()));
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

    fn read(method: Method, uri: &str, pairs: &[(&str, &str)]) -> Result<Original, String> {
        let uri: Uri = uri.parse().unwrap();
        match original(&method, &uri, &hdrs(pairs)) {
            None => Err("not ours".into()),
            Some(Ok(o)) => Ok(o),
            Some(Err(f)) => Err(format!("{} {}", f.status().as_u16(), f.message())),
        }
    }

    fn ok(o: Result<Original, String>) -> (Method, String, Form) {
        let o = o.unwrap();
        (o.method, o.target.as_str().to_string(), o.form)
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
        for bad_uri in [
            "api/v1/push",
            "http://mimir/api/v1/push",
            "*",
            "/api/v1/push#frag",
            "/a b",
        ] {
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
        let e = read(
            Method::GET,
            "/auth",
            &[("x-original-method", "G E T"), ("x-original-uri", "/x")],
        )
        .unwrap_err();
        assert!(e.contains("is not an HTTP method"), "{e}");
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
