//! Admin API, GEM/GET v3 dialect (`/admin/api/v3/`, SPEC 9): clusters (read), tenants, access
//! policies, tokens, features.
//!
//! Objects created here live in `store.data_dir/admin-state.json` (see [`crate::persist`]) and
//! are merged over the policy files into the set the data plane uses ([`Store::set_overlay`]),
//! so a change is in force before the response is sent. File-defined objects are listed and
//! readable but not writable (409). Every mutation needs `If-Match` (`"*"` or the object's
//! version; missing → 428, stale → 412), and mutations are serialised: of two PUTs with the same
//! `If-Match`, exactly one succeeds.

pub mod cloud;
pub mod sa;
pub mod state;
pub mod sync;

use state::{Collection, Tx};
pub use sync::Admin;

use crate::auth;
use crate::policy::{self, RealmTarget, Scope, Status, valid_name};
use crate::store::{Snapshot, TokenOwner};
use crate::telemetry::Mode;
use crate::token::{self, TokenHash};
use crate::wire::{Body, Conn, error_response, full};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Request bodies above this are refused (413): admin objects are small.
const MAX_BODY: usize = 1 << 20;
/// `created_at` of file-defined objects, as GET shows its built-in ones.
const EPOCH: &str = "1970-01-01T00:00:00Z";
/// v3's "no expiration".
const NO_EXPIRATION: &str = "0001-01-01T00:00:00Z";

/// Everything created through the API, as persisted.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ApiState {
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantObj>,
    #[serde(default)]
    pub access_policies: BTreeMap<String, PolicyObj>,
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenObj>,
    /// Cloud-dialect objects, by UUID.
    #[serde(default)]
    pub cloud_policies: BTreeMap<String, cloud::CloudPolicy>,
    #[serde(default)]
    pub cloud_tokens: BTreeMap<String, cloud::CloudToken>,
    /// Service accounts and their tokens, by numeric id (one counter for both).
    #[serde(default)]
    pub service_accounts: BTreeMap<u64, sa::SaObj>,
    #[serde(default)]
    pub sa_tokens: BTreeMap<u64, sa::SaTokenObj>,
    #[serde(default)]
    pub next_id: u64,
    /// Tokens by owner (Cloud policy id, service-account id): derived, never stored; kept by
    /// [`ApiState::apply`] and rebuilt by [`ApiState::reindex`] after a load.
    #[serde(skip)]
    pub owners: state::Owners,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantObj {
    pub version: u64,
    pub created_at: String,
    pub display_name: Option<String>,
    pub status: Status,
    pub cluster: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RealmObj {
    pub tenant: String,
    pub cluster: String,
    /// Canonical selector text of each label policy (GEM's realm field).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub label_policies: Vec<String>,
}

/// A selector as GEM writes it: a list of `{type, name, value}` matchers.
fn matcher_list(sel: &crate::selector::Selector) -> Value {
    use crate::selector::MatchOp;
    Value::Array(
        sel.matchers
            .iter()
            .map(|m| {
                let t = match m.op {
                    MatchOp::Eq => "EQ",
                    MatchOp::Neq => "NEQ",
                    MatchOp::Re => "RE",
                    MatchOp::Nre => "NRE",
                };
                json!({"type": t, "name": m.name, "value": m.value})
            })
            .collect(),
    )
}

/// Parses stored selector text; one that no longer parses matches nothing (fail closed).
fn stored_selector(text: &str) -> crate::selector::Selector {
    crate::selector::parse_selector(text).unwrap_or_else(|_| {
        crate::selector::parse_selector("{__obsgate_unparsable__=\"x\"}")
            .expect("static selector parses")
    })
}

fn realm_view(d: Dialect, tenant: &str, cluster: &str, lps: &[crate::selector::Selector]) -> Value {
    let mut v = json!({d.realm_key(): tenant, "cluster": cluster});
    if !lps.is_empty() {
        v["label_policies"] = Value::Array(
            lps.iter()
                .map(|s| json!({"selector": matcher_list(s)}))
                .collect(),
        );
    }
    v
}

/// The two GEM/GET dialects: v3 (`tenants`) and GEM's v1 (`instances`, DELETE with If-Match).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Dialect {
    V3,
    V1,
}

impl Dialect {
    fn prefix(self) -> &'static str {
        match self {
            Dialect::V3 => "/admin/api/v3/",
            Dialect::V1 => "/admin/api/v1/",
        }
    }
    fn tenants(self) -> &'static str {
        match self {
            Dialect::V3 => "tenants",
            Dialect::V1 => "instances",
        }
    }
    fn realm_key(self) -> &'static str {
        match self {
            Dialect::V3 => "tenant",
            Dialect::V1 => "instance",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyObj {
    pub version: u64,
    pub created_at: String,
    pub display_name: Option<String>,
    pub status: Status,
    pub realms: Vec<RealmObj>,
    pub scopes: Vec<String>,
    /// GEM v1's policy `expiration` (RFC 3339; `None` = never): the policy's tokens expire then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenObj {
    pub version: u64,
    pub created_at: String,
    pub created_by: String,
    pub display_name: Option<String>,
    pub status: Status,
    pub access_policy: String,
    /// RFC 3339; `None` = never expires.
    pub expiration: Option<String>,
    /// `sha256:<hex>`; the token text itself is never stored.
    pub hash: String,
}

fn audit_cloud(actor: &str, action: &str, kind: &str, name: &str, id: &str) {
    tracing::info!(target: "obsgate::audit", actor, action, kind, name, id, "admin change");
}

/// A stored expiration as a Unix time. It was validated when saved; one that no longer parses
/// counts as long expired (fail closed), never as "no expiration".
fn expiry(rfc3339: Option<&str>) -> Option<i64> {
    rfc3339.map(|e| unix_of(e).unwrap_or(i64::MIN))
}

/// An RFC 3339 time as stored: in UTC, to `precision`. `None` if it does not parse or if in UTC
/// it falls past year 9999 (RFC 3339 could not write it, and it would not parse again).
fn utc_time(text: &str, precision: chrono::SecondsFormat) -> Option<String> {
    let t = chrono::DateTime::parse_from_rfc3339(text)
        .ok()?
        .with_timezone(&chrono::Utc)
        .to_rfc3339_opts(precision, true);
    unix_of(&t).map(|_| t)
}

fn unix_of(rfc3339: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .ok()
        .map(|d| d.timestamp())
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// A failed admin call: status and message.
struct ApiError(StatusCode, String, Option<u64>);

impl ApiError {
    fn new(status: StatusCode, msg: impl Into<String>) -> ApiError {
        ApiError(status, msg.into(), None)
    }
    fn bad(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, msg)
    }
    fn response(self) -> Response<Body> {
        if let Some(secs) = self.2 {
            return crate::wire::throttled_response(secs);
        }
        let kind = match self.0.as_u16() {
            400 | 413 => "bad_data",
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not_found",
            405 => "method_not_allowed",
            409 => "conflict",
            412 => "precondition_failed",
            428 => "precondition_required",
            503 => "unavailable",
            _ => "internal",
        };
        error_response(self.0, kind, &self.1)
    }
}

type ApiResult = Result<Response<Body>, ApiError>;

fn json_response(status: StatusCode, v: &Value, etag: Option<u64>) -> Response<Body> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(v) = etag
        && let Ok(h) = HeaderValue::from_str(&format!("\"{v}\""))
    {
        r.headers_mut().insert(http::header::ETAG, h);
    }
    r
}

/// The OpenAPI 3 description of the admin API (kept in the repository, served as is).
pub const OPENAPI: &str = include_str!("../../openapi/admin-api.json");
pub const OPENAPI_PATH: &str = "/admin/api/openapi.json";

/// `GET /admin/api/openapi.json`: public, it describes the API and holds no secret.
pub fn openapi_response() -> Response<Body> {
    let mut r = Response::new(full(OPENAPI));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Which GEM/GET dialect a path is for, if any.
pub fn admin_dialect(path: &str) -> Option<Dialect> {
    [Dialect::V3, Dialect::V1]
        .into_iter()
        .find(|d| path.starts_with(d.prefix()) || path == d.prefix().trim_end_matches('/'))
}

/// Whether this request is for the GEM/GET admin API (v3 or v1).
/// The admin API as a service of its own: the store's writer and what it needs to
/// authenticate, nothing of the data plane.
pub struct AdminService {
    pub config: Arc<crate::config::Config>,
    pub store: Arc<crate::store::Store>,
    pub metrics: Arc<crate::telemetry::Metrics>,
    /// The admin API's state (`None`: the API answers 503).
    pub admin: Option<Arc<Admin>>,
    /// Failed-authentication throttling, shared with the data plane (`None`: off).
    pub throttle: Option<Arc<crate::throttle::AuthThrottle>>,
}

impl AdminService {
    /// Serves an admin path; `None` when the path is not the admin API's.
    pub async fn serve(
        &self,
        conn: &Conn,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Request<Incoming>> {
        let path = req.uri().path();
        if req.method() == Method::GET && path == OPENAPI_PATH {
            return Ok(openapi_response());
        }
        let (handler, label): (u8, &'static str) = if sa::is_sa_path(path) {
            (0, "/api/serviceaccounts")
        } else if cloud::is_cloud_path(path) {
            (1, "/api/v1/accesspolicies")
        } else if is_admin_path(path) {
            (2, "/admin/api/v3")
        } else {
            return Err(req);
        };
        let _inflight = crate::telemetry::InflightRequest::start(&self.metrics.inflight);
        let resp = match handler {
            0 => sa::handle(self, conn, req).await,
            1 => cloud::handle(self, conn, req).await,
            _ => handle(self, conn, req).await,
        };
        self.metrics
            .count_request(Mode::Proxy, "none", label, resp.status().as_u16());
        Ok(resp)
    }
}

pub fn is_admin_path(path: &str) -> bool {
    admin_dialect(path).is_some()
}

/// Entry point from the pipeline for `/admin/api/v3/…`.
pub async fn handle(gw: &AdminService, conn: &Conn, req: Request<Incoming>) -> Response<Body> {
    let Some(admin) = gw.admin.as_ref() else {
        return ApiError::new(StatusCode::NOT_FOUND, "the admin API is not enabled").response();
    };
    let actor = match authenticate(gw, conn, &req).and_then(|id| {
        require_scope(&id, &[])?;
        Ok(id.token_name.clone())
    }) {
        Ok(a) => a,
        Err(e) => return e.response(),
    };
    match route(gw, admin, &actor, req).await {
        Ok(r) => r,
        Err(e) => e.response(),
    }
}

/// The caller's token, checked like the data plane checks a token: known, active, not
/// expired, from an allowed subnet. Scopes are checked by the caller.
/// The caller's identity. Failed authentications count against the client's allowance, as on
/// the data plane; past it, 429 before any work on the token.
fn authenticate(
    gw: &AdminService,
    conn: &Conn,
    req: &Request<Incoming>,
) -> Result<Arc<policy::Identity>, ApiError> {
    let ip = auth::client_ip(
        conn.peer.ip(),
        req.headers(),
        conn.trusted(&gw.config.client_ip.trusted_proxies),
    );
    if let Some(t) = &gw.throttle
        && let Err(secs) = t.check(ip)
    {
        gw.metrics.denied(Mode::Proxy, "throttled");
        return Err(ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            crate::wire::THROTTLED_MESSAGE.to_string(),
            Some(secs),
        ));
    }
    let r = authenticate_token(gw, ip, req);
    if let (Err(e), Some(t)) = (&r, &gw.throttle)
        && e.0 == StatusCode::UNAUTHORIZED
    {
        t.failed(ip);
    }
    r
}

fn authenticate_token(
    gw: &AdminService,
    ip: std::net::IpAddr,
    req: &Request<Incoming>,
) -> Result<Arc<policy::Identity>, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, m);
    let creds = auth::credentials(req.headers()).map_err(|e| unauthorized(&e.to_string()))?;
    let hash = TokenHash::of(&creds.token);
    let snap = gw.store.snapshot();
    let Some(id) = gw.store.identify(&snap, &hash) else {
        token::parse(&creds.token).map_err(|e| unauthorized(&e.to_string()))?;
        return Err(unauthorized(policy::INVALID_TOKEN_MESSAGE));
    };
    let now = chrono::Utc::now().timestamp();
    if !id.active || id.expires_at.is_some_and(|e| now >= e) {
        return Err(unauthorized(policy::INVALID_TOKEN_MESSAGE));
    }
    if !id.allowed_subnets.is_empty() && !id.allowed_subnets.iter().any(|n| n.contains(&ip)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("client address {ip} is not in the access policy's allowed subnets"),
        ));
    }
    Ok(id)
}

/// `admin`, or one of `alternatives`: else 403 naming what is missing.
fn require_scope(id: &policy::Identity, alternatives: &[Scope]) -> Result<(), ApiError> {
    if id.scopes.contains(Scope::Admin) || alternatives.iter().any(|s| id.scopes.contains(*s)) {
        return Ok(());
    }
    let mut names = vec!["admin"];
    names.extend(alternatives.iter().map(|s| s.as_str()));
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        format!("missing scope {}", names.join(" or ")),
    ))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tenants,
    Policies,
    Tokens,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Tenants => "tenant",
            Kind::Policies => "access_policy",
            Kind::Tokens => "token",
        }
    }

    /// The list's `type`, as each dialect's reference shows it.
    fn list_type(self, d: Dialect) -> &'static str {
        match (d, self) {
            (Dialect::V1, Kind::Tenants) => "instance",
            (Dialect::V1, _) => "key",
            (Dialect::V3, k) => k.label(),
        }
    }
}

async fn route(gw: &AdminService, admin: &Admin, actor: &str, req: Request<Incoming>) -> ApiResult {
    let path = req.uri().path().to_string();
    let d = admin_dialect(&path).unwrap_or(Dialect::V3);
    let rest = path.strip_prefix(d.prefix()).unwrap_or("");
    let mut parts = rest.split('/');
    let (collection, name) = (parts.next().unwrap_or(""), parts.next());
    if parts.next().is_some() || name == Some("") {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no such admin endpoint",
        ));
    }
    let include_inactive = req.uri().query().is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "include-non-active" && v == "true")
    });
    let method = req.method().clone();
    let kind = match collection {
        "clusters" => return clusters(gw, &method, name),
        "features" if name.is_none() => {
            return only_get(&method).map(|_| {
                json_response(
                    StatusCode::OK,
                    &json!({
                        "name": "obsgate",
                        "version": env!("CARGO_PKG_VERSION"),
                        "features": {
                            "editable_access_policies": "v1",
                            "editable_tenants": "v1",
                            "editable_tokens": "v1",
                        }
                    }),
                    None,
                )
            });
        }
        c if c == d.tenants() => Kind::Tenants,
        "accesspolicies" => Kind::Policies,
        "tokens" => Kind::Tokens,
        // the v1 reference's DELETE example spells it `/admin/api/v1/token/{name}`
        "token" if d == Dialect::V1 && name.is_some() => Kind::Tokens,
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no such admin endpoint",
            ));
        }
    };
    match (method, name) {
        (Method::GET, None) => {
            let state = admin.read().await?;
            Ok(list(gw, &state.data, kind, include_inactive, d))
        }
        (Method::GET, Some(n)) => {
            let state = admin.read().await?;
            let (v, version) = get_one(gw, &state.data, kind, n, d).ok_or_else(|| {
                ApiError::new(StatusCode::NOT_FOUND, format!("no {} {n:?}", kind.label()))
            })?;
            Ok(json_response(StatusCode::OK, &v, Some(version)))
        }
        (Method::POST, None) => {
            let body = read_json(req).await?;
            create(gw, admin, actor, kind, body, d).await
        }
        (Method::DELETE, Some(n)) if d == Dialect::V1 => {
            let n = n.to_string();
            let if_match = if_match(req.headers())?;
            delete(gw, admin, actor, kind, &n, if_match).await
        }
        (Method::PUT, Some(n)) => {
            let n = n.to_string();
            let if_match = if_match(req.headers())?;
            let body = read_json(req).await?;
            update(gw, admin, actor, kind, &n, if_match, body, d).await
        }
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed here (v3 deletes are PUT with \"status\": \"inactive\")",
        )),
    }
}

fn only_get(m: &Method) -> Result<(), ApiError> {
    if m == Method::GET {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is allowed here",
        ))
    }
}

fn clusters(gw: &AdminService, method: &Method, name: Option<&str>) -> ApiResult {
    only_get(method)?;
    let snap = gw.store.snapshot();
    let view = |c: &str| json!({"name": c, "display_name": c, "created_at": EPOCH});
    match name {
        None => Ok(json_response(
            StatusCode::OK,
            &json!({"items": snap.clusters.iter().map(|c| view(c)).collect::<Vec<_>>(), "type": "cluster"}),
            None,
        )),
        Some(n) if snap.clusters.iter().any(|c| c == n) => {
            Ok(json_response(StatusCode::OK, &view(n), Some(0)))
        }
        Some(n) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no cluster {n:?}"),
        )),
    }
}

/// Whether `name` of `kind` is defined in a policy file (read-only here).
fn file_defined(files: &Snapshot, kind: Kind, name: &str) -> bool {
    match kind {
        Kind::Tenants => files.tenants.contains_key(name),
        Kind::Policies => files.policies.contains_key(name),
        Kind::Tokens => files.tokens().iter().any(|t| t.name == name),
    }
}

/// GEM/GET leave `display_name` out of an object that has none (the reference's examples).
fn omit_absent_display_name(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut()
        && o.get("display_name").is_some_and(Value::is_null)
    {
        o.remove("display_name");
    }
    v
}

fn tenant_view(name: &str, t: &TenantObj) -> Value {
    omit_absent_display_name(
        json!({"name": name, "display_name": t.display_name, "created_at": t.created_at,
               "status": t.status, "cluster": t.cluster}),
    )
}

fn policy_view(name: &str, p: &PolicyObj, d: Dialect) -> Value {
    let realms: Vec<Value> = p
        .realms
        .iter()
        .map(|r| {
            let lps: Vec<_> = r
                .label_policies
                .iter()
                .map(|t| stored_selector(t))
                .collect();
            realm_view(d, &r.tenant, &r.cluster, &lps)
        })
        .collect();
    let mut v = json!({"name": name, "display_name": p.display_name, "created_at": p.created_at,
                       "status": p.status, "realms": realms, "scopes": p.scopes});
    if d == Dialect::V1 {
        v["expiration"] = json!(p.expiration.as_deref().unwrap_or(NO_EXPIRATION));
    }
    omit_absent_display_name(v)
}

fn token_view(name: &str, t: &TokenObj) -> Value {
    omit_absent_display_name(
        json!({"name": name, "display_name": t.display_name, "created_by": t.created_by,
               "created_at": t.created_at, "status": t.status, "access_policy": t.access_policy,
               "expiration": t.expiration.as_deref().unwrap_or(NO_EXPIRATION)}),
    )
}

/// The API objects of a map: all of them, or the one named `only` (a lookup, not a scan).
fn pick<'a, V>(
    m: &'a BTreeMap<String, V>,
    only: Option<&str>,
) -> Box<dyn Iterator<Item = (&'a String, &'a V)> + 'a> {
    match only {
        Some(o) => Box::new(m.get_key_value(o).into_iter()),
        None => Box::new(m.iter()),
    }
}

/// Every object of `kind` (or the one named `only`): file-defined (version 0, read-only) and
/// API-created.
fn all_views(
    gw: &AdminService,
    state: &ApiState,
    kind: Kind,
    d: Dialect,
    only: Option<&str>,
) -> Vec<(String, Status, Value, u64)> {
    let files = gw.store.file_set();
    let wanted = |n: &str| only.is_none_or(|o| o == n);
    let mut out = Vec::new();
    match kind {
        Kind::Tenants => {
            for (n, t) in files.tenants.iter().filter(|(n, _)| wanted(n)) {
                let v = json!({"name": n, "created_at": EPOCH,
                               "status": t.status, "cluster": t.cluster});
                out.push((n.clone(), t.status, v, 0));
            }
            for (n, t) in pick(&state.tenants, only) {
                if !files.tenants.contains_key(n) {
                    out.push((n.clone(), t.status, tenant_view(n, t), t.version));
                }
            }
        }
        Kind::Policies => {
            for (n, p) in files.policies.iter().filter(|(n, _)| wanted(n)) {
                let realms: Vec<Value> = p
                    .realms
                    .iter()
                    .filter_map(|r| match &r.target {
                        RealmTarget::Tenant(t) => {
                            Some(realm_view(d, t, &r.cluster, &r.label_policies))
                        }
                        RealmTarget::AllTenants => {
                            Some(realm_view(d, "*", &r.cluster, &r.label_policies))
                        }
                        _ => None,
                    })
                    .collect();
                let mut v = json!({"name": n, "display_name": p.display_name, "created_at": EPOCH,
                           "status": p.status, "realms": realms,
                           "scopes": p.scopes.iter().map(Scope::as_str).collect::<Vec<_>>()});
                if d == Dialect::V1 {
                    v["expiration"] = json!(NO_EXPIRATION);
                }
                let v = omit_absent_display_name(v);
                out.push((n.clone(), p.status, v, 0));
            }
            for (n, p) in pick(&state.access_policies, only) {
                if !files.policies.contains_key(n) {
                    out.push((n.clone(), p.status, policy_view(n, p, d), p.version));
                }
            }
        }
        Kind::Tokens => {
            let file_tokens: std::collections::HashSet<&str> =
                files.tokens().iter().map(|t| t.name.as_str()).collect();
            for t in files.tokens().iter().filter(|t| wanted(&t.name)) {
                if let TokenOwner::Policy(ap) = &t.owner {
                    let exp = t
                        .expires_at
                        .and_then(|e| chrono::DateTime::from_timestamp(e, 0))
                        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_else(|| NO_EXPIRATION.to_string());
                    let v = json!({"name": t.name, "created_by": "policy file",
                                   "created_at": EPOCH, "status": t.status, "access_policy": ap,
                                   "expiration": exp});
                    out.push((t.name.clone(), t.status, v, 0));
                }
            }
            for (n, t) in pick(&state.tokens, only) {
                if !file_tokens.contains(n.as_str()) {
                    out.push((n.clone(), t.status, token_view(n, t), t.version));
                }
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn list(
    gw: &AdminService,
    state: &ApiState,
    kind: Kind,
    include_inactive: bool,
    d: Dialect,
) -> Response<Body> {
    let items: Vec<Value> = all_views(gw, state, kind, d, None)
        .into_iter()
        .filter(|(_, st, _, _)| include_inactive || *st == Status::Active)
        .map(|(_, _, v, _)| v)
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"items": items, "type": kind.list_type(d)}),
        None,
    )
}

fn get_one(
    gw: &AdminService,
    state: &ApiState,
    kind: Kind,
    name: &str,
    d: Dialect,
) -> Option<(Value, u64)> {
    all_views(gw, state, kind, d, Some(name))
        .into_iter()
        .find(|(n, _, _, _)| n == name)
        .map(|(_, _, v, ver)| (v, ver))
}

/// `If-Match`: `None` for `"*"`, else the version it names. Missing → 428.
fn if_match(h: &http::HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = h.get(http::header::IF_MATCH) else {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_REQUIRED,
            "If-Match is required: send the ETag of the object (\"<version>\") or \"*\"",
        ));
    };
    let s = v.to_str().unwrap_or("").trim();
    if s == "*" || s == "\"*\"" {
        return Ok(None);
    }
    s.trim_start_matches("W/")
        .trim_matches('"')
        .parse::<u64>()
        .map(Some)
        .map_err(|_| ApiError::bad(format!("If-Match {s:?} is not a version such as \"1\"")))
}

async fn read_json(req: Request<Incoming>) -> Result<Value, ApiError> {
    let body = http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request body over 1 MiB")
            } else {
                ApiError::bad("cannot read the request body")
            }
        })?
        .to_bytes();
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("request body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad("request body must be a JSON object"));
    }
    Ok(v)
}

fn opt_str(body: &Value, key: &str) -> Result<Option<String>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad(format!("{key} must be a string"))),
    }
}

fn status_of(body: &Value) -> Result<Option<Status>, ApiError> {
    match opt_str(body, "status")?.as_deref() {
        None => Ok(None),
        Some("active") => Ok(Some(Status::Active)),
        Some("inactive") => Ok(Some(Status::Inactive)),
        Some(s) => Err(ApiError::bad(format!(
            "status {s:?}: use \"active\" or \"inactive\""
        ))),
    }
}

/// A cluster named in a body: absent means this gateway's own.
fn cluster_of(snap: &Snapshot, body: &Value) -> Result<String, ApiError> {
    match opt_str(body, "cluster")? {
        None => Ok(snap.cluster.clone()),
        Some(c) if snap.clusters.contains(&c) => Ok(c),
        Some(c) => Err(ApiError::bad(format!("unknown cluster {c:?}"))),
    }
}

fn realms_of(snap: &Snapshot, body: &Value, d: Dialect) -> Result<Vec<RealmObj>, ApiError> {
    let realms = match body.get("realms") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::bad("realms must be an array")),
    };
    let mut out = Vec::new();
    for r in realms {
        let key = d.realm_key();
        let tenant = opt_str(r, key)?.ok_or_else(|| {
            ApiError::bad(format!(
                "every realm needs {key:?} (a {} name or \"*\")",
                d.realm_key()
            ))
        })?;
        let cluster = cluster_of(snap, r)?;
        if tenant != "*" && !snap.tenants.contains_key(&tenant) {
            return Err(ApiError::bad(format!(
                "realm names unknown tenant {tenant:?}"
            )));
        }
        if let Some(extra) = r.as_object().and_then(|o| {
            o.keys()
                .find(|k| *k != key && *k != "cluster" && *k != "label_policies")
        }) {
            return Err(ApiError::bad(format!("unknown realm field {extra:?}")));
        }
        let mut label_policies = Vec::new();
        match r.get("label_policies") {
            None | Some(Value::Null) => {}
            Some(Value::Array(lps)) => {
                for lp in lps {
                    let raw = lp
                        .get("selector")
                        .cloned()
                        .ok_or_else(|| ApiError::bad("every label policy needs a selector"))?;
                    let sel = serde_json::from_value::<crate::selector::RawSelector>(raw)
                        .map_err(|_| {
                            ApiError::bad(
                                "a selector is selector text or a list of {type, name, value}",
                            )
                        })?
                        .compile()
                        .map_err(|e| ApiError::bad(format!("label policy: {e}")))?;
                    label_policies.push(sel.to_string());
                }
            }
            Some(_) => return Err(ApiError::bad("label_policies must be a list")),
        }
        out.push(RealmObj {
            tenant,
            cluster,
            label_policies,
        });
    }
    Ok(out)
}

fn scopes_of(body: &Value) -> Result<Vec<String>, ApiError> {
    let scopes = match body.get("scopes") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::bad("scopes must be an array of strings")),
    };
    let mut out: Vec<String> = Vec::new();
    for s in scopes {
        let s = s
            .as_str()
            .ok_or_else(|| ApiError::bad("scopes must be an array of strings"))?;
        if Scope::parse(s).is_none() {
            return Err(ApiError::bad(format!("unknown scope {s:?}")));
        }
        if !out.iter().any(|x| x == s) {
            out.push(s.to_string());
        }
    }
    Ok(out)
}

fn expiration_of(body: &Value) -> Result<Option<String>, ApiError> {
    match opt_str(body, "expiration")? {
        None => Ok(None),
        Some(e) if e == NO_EXPIRATION => Ok(None),
        Some(e) => {
            let t = utc_time(&e, chrono::SecondsFormat::Secs).ok_or_else(|| {
                ApiError::bad(format!(
                    "expiration {e:?}: expected RFC 3339 such as 2027-01-01T00:00:00Z, up to year 9999"
                ))
            })?;
            Ok(Some(t))
        }
    }
}

fn audit(actor: &str, action: &str, kind: Kind, name: &str) {
    tracing::info!(target: "obsgate::audit", actor, action, kind = kind.label(), name, "admin change");
}

async fn create(
    gw: &AdminService,
    admin: &Admin,
    actor: &str,
    kind: Kind,
    body: Value,
    d: Dialect,
) -> ApiResult {
    let name = opt_str(&body, "name")?.ok_or_else(|| ApiError::bad("name is required"))?;
    // SPEC 3: 3-64 for tenants and policies, 1-255 for tokens
    let (min, max, what) = match kind {
        Kind::Tokens => (1, 255, "token"),
        _ => (3, 64, kind.label()),
    };
    if !valid_name(&name, min, max) {
        return Err(ApiError::bad(format!(
            "invalid {what} name {name:?}: use {min}-{max} chars of [a-z0-9_-]"
        )));
    }
    let display_name = opt_str(&body, "display_name")?;
    let (view, token_text) = admin
        .write(actor, |state| {
            let snap = gw.store.snapshot();
            let files = gw.store.file_set();
            let exists = file_defined(&files, kind, &name)
                || match kind {
                    Kind::Tenants => state.tenants.contains_key(&name),
                    // one namespace for access policies across the dialects
                    Kind::Policies => {
                        state.access_policies.contains_key(&name)
                            || snap.policies.contains_key(&name)
                    }
                    Kind::Tokens => state.tokens.contains_key(&name),
                };
            if exists {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "{} {name:?} already exists (an inactive one can be re-activated with PUT)",
                        kind.label()
                    ),
                ));
            }
            let mut tx = Tx::default();
            let now = now_rfc3339();
            let mut token_text = None;
            let view = match kind {
                Kind::Tenants => {
                    let t = TenantObj {
                        version: 1,
                        created_at: now,
                        display_name: display_name.clone(),
                        status: Status::Active,
                        cluster: cluster_of(&snap, &body)?,
                    };
                    tx.put(Collection::Tenants, &name, &t);
                    tenant_view(&name, &t)
                }
                Kind::Policies => {
                    let p = PolicyObj {
                        version: 1,
                        created_at: now,
                        display_name: display_name.clone(),
                        status: Status::Active,
                        realms: realms_of(&snap, &body, d)?,
                        scopes: scopes_of(&body)?,
                        // a v1 field; v3 policies have none
                        expiration: match d {
                            Dialect::V1 => expiration_of(&body)?,
                            Dialect::V3 => None,
                        },
                    };
                    tx.put(Collection::AccessPolicies, &name, &p);
                    policy_view(&name, &p, d)
                }
                Kind::Tokens => {
                    let ap = opt_str(&body, "access_policy")?
                        .ok_or_else(|| ApiError::bad("access_policy is required"))?;
                    if !snap.policies.contains_key(&ap) {
                        return Err(ApiError::bad(format!("unknown access policy {ap:?}")));
                    }
                    let text = token::mint_glc("", &ap, &name, "obsgate").map_err(|e| {
                        ApiError::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("no randomness: {e}"),
                        )
                    })?;
                    let t = TokenObj {
                        version: 1,
                        created_at: now,
                        created_by: actor.to_string(),
                        display_name: display_name.clone(),
                        status: Status::Active,
                        access_policy: ap,
                        expiration: expiration_of(&body)?,
                        hash: TokenHash::of(&text).stored(),
                    };
                    tx.put(Collection::Tokens, &name, &t);
                    token_text = Some(text);
                    token_view(&name, &t)
                }
            };
            Ok((tx, (view, token_text)))
        })
        .await?;
    audit(actor, "create", kind, &name);
    let mut view = view;
    if let (Some(text), Some(o)) = (token_text, view.as_object_mut()) {
        // the only time the token text is ever shown
        o.insert("token".into(), Value::String(text));
    }
    Ok(json_response(StatusCode::OK, &view, Some(1)))
}

/// The version of an API-created object that a PUT or DELETE may change: 409 if a policy file
/// defines it, 404 if there is none, 412 if `If-Match` names another version.
fn writable_version(
    gw: &AdminService,
    data: &ApiState,
    kind: Kind,
    name: &str,
    if_match: Option<u64>,
) -> Result<u64, ApiError> {
    if file_defined(&gw.store.file_set(), kind, name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "{} {name:?} is defined in a policy file and is read-only here",
                kind.label()
            ),
        ));
    }
    let current = match kind {
        Kind::Tenants => data.tenants.get(name).map(|t| t.version),
        Kind::Policies => data.access_policies.get(name).map(|p| p.version),
        Kind::Tokens => data.tokens.get(name).map(|t| t.version),
    }
    .ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no {} {name:?}", kind.label()),
        )
    })?;
    if let Some(v) = if_match
        && v != current
    {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            format!(
                "version {v} is stale: the {} is at version {current}",
                kind.label()
            ),
        ));
    }
    Ok(current)
}

#[allow(clippy::too_many_arguments)]
async fn update(
    gw: &AdminService,
    admin: &Admin,
    actor: &str,
    kind: Kind,
    name: &str,
    if_match: Option<u64>,
    body: Value,
    d: Dialect,
) -> ApiResult {
    let (view, version) = admin
        .write(actor, |state| {
            let snap = gw.store.snapshot();
            let current = writable_version(gw, state, kind, name, if_match)?;
            let status = status_of(&body)?;
            let mut tx = Tx::default();
            let view = match kind {
                Kind::Tenants => {
                    // a PUT replaces the object, as in the reference: what the body omits is
                    // cleared (display_name) or takes its create-time default (cluster); name
                    // and created_at cannot change, and an omitted status is kept
                    let mut t = state.tenants[name].clone();
                    t.cluster = cluster_of(&snap, &body)?;
                    t.display_name = opt_str(&body, "display_name")?;
                    if let Some(s) = status {
                        t.status = s;
                    }
                    t.version += 1;
                    tx.put(Collection::Tenants, name, &t);
                    tenant_view(name, &t)
                }
                Kind::Policies => {
                    // replaced as a whole, like a tenant: omitted realms or scopes become empty
                    let mut p = state.access_policies[name].clone();
                    p.realms = realms_of(&snap, &body, d)?;
                    p.scopes = scopes_of(&body)?;
                    p.display_name = opt_str(&body, "display_name")?;
                    if let Some(s) = status {
                        p.status = s;
                    }
                    p.version += 1;
                    tx.put(Collection::AccessPolicies, name, &p);
                    policy_view(name, &p, d)
                }
                // a token's policy and expiration are fixed at creation (the reference's
                // example PUTs only a status): what the body omits is kept
                Kind::Tokens => {
                    let mut t = state.tokens[name].clone();
                    if let Some(dn) = opt_str(&body, "display_name")? {
                        t.display_name = Some(dn);
                    }
                    if let Some(s) = status {
                        t.status = s;
                    }
                    t.version += 1;
                    tx.put(Collection::Tokens, name, &t);
                    token_view(name, &t)
                }
            };
            Ok((tx, (view, current + 1)))
        })
        .await?;
    audit(actor, "update", kind, name);
    Ok(json_response(StatusCode::OK, &view, Some(version)))
}

/// GEM v1's DELETE (hard, with `If-Match`). A deleted policy's tokens stop working (their owner
/// is gone: 401); a deleted tenant is no longer granted by any realm.
async fn delete(
    gw: &AdminService,
    admin: &Admin,
    actor: &str,
    kind: Kind,
    name: &str,
    if_match: Option<u64>,
) -> ApiResult {
    admin
        .write(actor, |state| {
            writable_version(gw, state, kind, name, if_match)?;
            let mut tx = Tx::default();
            let c = match kind {
                Kind::Tenants => Collection::Tenants,
                Kind::Policies => Collection::AccessPolicies,
                Kind::Tokens => Collection::Tokens,
            };
            tx.delete(c, name);
            Ok((tx, ()))
        })
        .await?;
    audit(actor, "delete", kind, name);
    let mut r = Response::new(full(bytes::Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    Ok(r)
}

/// Runs every admin body validator over one JSON body, for the fuzzer (`fuzz/`): none may
/// panic, and what they accept must be usable: stored label policies parse again, stored
/// expirations parse, subnets are CIDRs. `snap` provides the tenants and clusters realms name.
#[doc(hidden)]
pub fn fuzz_bodies(snap: &Snapshot, bytes: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
        return;
    };
    let _ = status_of(&v);
    let _ = cluster_of(snap, &v);
    let _ = opt_str(&v, "display_name");
    for d in [Dialect::V3, Dialect::V1] {
        if let Ok(realms) = realms_of(snap, &v, d) {
            for r in &realms {
                for lp in &r.label_policies {
                    assert!(
                        crate::selector::parse_selector(lp).is_ok(),
                        "stored label policy does not parse again: {lp:?}"
                    );
                }
                let lps: Vec<_> = r
                    .label_policies
                    .iter()
                    .map(|t| stored_selector(t))
                    .collect();
                let _ = realm_view(d, &r.tenant, &r.cluster, &lps);
            }
        }
    }
    if let Ok(scopes) = scopes_of(&v) {
        assert!(scopes.iter().all(|s| Scope::parse(s).is_some()));
    }
    if let Ok(Some(e)) = expiration_of(&v) {
        assert!(
            unix_of(&e).is_some(),
            "stored expiration does not parse: {e:?}"
        );
    }
    cloud::fuzz_bodies(&v);
    sa::fuzz_bodies(&v);
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_openapi_document_describes_every_dialect() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).expect("valid JSON");
        assert_eq!(doc["openapi"], "3.0.3");
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/admin/api/v3/tenants/{name}",
            "/admin/api/v1/instances/{name}",
            "/admin/api/v3/features",
            "/api/v1/accesspolicies/{accessPolicyId}",
            "/api/v1/tokens",
            "/api/serviceaccounts/search",
            "/api/serviceaccounts/{id}/tokens/{tokenId}",
        ] {
            assert!(paths.contains_key(p), "{p} is not described");
        }
        assert!(paths["/admin/api/v1/tokens/{name}"].get("delete").is_some());
        assert!(paths["/admin/api/v3/tokens/{name}"].get("delete").is_none());
    }
}
