//! Grafana Cloud dialect (`reference/grafana-cloud-api-access-policies-and-tokens.md`):
//! `/api/v1/accesspolicies` and `/api/v1/tokens`, with UUID ids, camelCase fields, a required
//! `region`, list filters, and `pageSize`/`pageCursor` paging. Updates are `POST` to the object;
//! deletes are hard (204). Authorization: `accesspolicies:read|write|delete`, or `admin`.

use super::AdminService;
use super::state::{Collection, Tx};
use super::{
    Admin, ApiError, ApiResult, ApiState, authenticate, json_response, now_rfc3339, read_json,
    require_scope,
};
use crate::config::Cidr;
use crate::policy::{Scope, Status};
use crate::token::{self, TokenHash};
use crate::wire::{Body, Conn};
use base64::Engine as _;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;

pub const POLICIES: &str = "/api/v1/accesspolicies";
pub const TOKENS: &str = "/api/v1/tokens";
const MAX_PAGE: usize = 500;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CloudRealm {
    #[serde(rename = "type")]
    pub kind: String,
    pub identifier: String,
    #[serde(default)]
    pub label_policies: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CloudPolicy {
    pub name: String,
    pub display_name: String,
    pub region: String,
    pub org_id: String,
    pub scopes: Vec<String>,
    pub realms: Vec<CloudRealm>,
    pub allowed_subnets: Vec<String>,
    pub status: Status,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CloudToken {
    pub name: String,
    pub display_name: String,
    pub access_policy_id: String,
    pub expires_at: Option<String>,
    pub hash: String,
    pub created_at: String,
    pub updated_at: String,
}

/// Whether a request is for this dialect.
pub fn is_cloud_path(path: &str) -> bool {
    [POLICIES, TOKENS]
        .iter()
        .any(|p| path == *p || path.strip_prefix(p).is_some_and(|r| r.starts_with('/')))
}

fn uuid_v4() -> Result<String, ApiError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("no randomness: {e}"),
        )
    })?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = token::hex(&b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

fn valid_cloud_name(s: &str) -> bool {
    (1..=255).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn policy_view(id: &str, p: &CloudPolicy) -> Value {
    let mut v = json!({
        "id": id,
        "orgId": p.org_id,
        "name": p.name,
        "displayName": p.display_name,
        "scopes": p.scopes,
        "realms": p.realms.iter().map(|r| json!({
            "type": r.kind,
            "identifier": r.identifier,
            "labelPolicies": r.label_policies.iter().map(|s| json!({"selector": s})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "createdAt": p.created_at,
        "updatedAt": p.updated_at,
        "status": p.status,
    });
    if !p.allowed_subnets.is_empty() {
        v["conditions"] = json!({"allowedSubnets": p.allowed_subnets});
    }
    v
}

fn token_view(id: &str, t: &CloudToken, usage: Option<(i64, i64)>) -> Value {
    let ts = |u: i64| {
        chrono::DateTime::from_timestamp(u, 0)
            .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    };
    json!({
        "id": id,
        "accessPolicyId": t.access_policy_id,
        "name": t.name,
        "displayName": t.display_name,
        "expiresAt": t.expires_at,
        "firstUsedAt": usage.and_then(|u| ts(u.0)),
        "lastUsedAt": usage.and_then(|u| ts(u.1)),
        "createdAt": t.created_at,
        "updatedAt": t.updated_at,
    })
}

/// The query string as a map (last value wins); `region` is required on every call.
fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn region(q: &HashMap<String, String>) -> Result<String, ApiError> {
    match q.get("region") {
        Some(r) if !r.is_empty() => Ok(r.clone()),
        _ => Err(ApiError::bad("the region query parameter is required")),
    }
}

/// `pageSize` (default and maximum 500) and the id after which the page starts.
fn paging(q: &HashMap<String, String>) -> Result<(usize, Option<String>), ApiError> {
    let size = match q.get("pageSize").map(String::as_str) {
        None | Some("") => MAX_PAGE,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => return Err(ApiError::bad("pageSize must be an integer from 1 to 500")),
        },
    };
    let after = match q.get("pageCursor").map(String::as_str) {
        None | Some("") => None,
        Some(c) => Some(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| ApiError::bad("invalid pageCursor"))?,
        ),
    };
    Ok((size, after))
}

/// One page of `items` (sorted by id), with `metadata.pagination`.
fn page(
    path: &str,
    q: &HashMap<String, String>,
    items: Vec<(String, Value)>,
    size: usize,
    after: Option<String>,
) -> Value {
    let rest: Vec<(String, Value)> = items
        .into_iter()
        .filter(|(id, _)| after.as_ref().is_none_or(|a| id > a))
        .collect();
    let more = rest.len() > size;
    let shown: Vec<(String, Value)> = rest.into_iter().take(size).collect();
    let cursor = (more && !shown.is_empty()).then(|| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(shown.last().map(|x| &x.0).unwrap())
    });
    let next = cursor.as_ref().map(|c| {
        let mut qs = form_urlencoded::Serializer::new(String::new());
        for (k, v) in q {
            if k != "pageCursor" {
                qs.append_pair(k, v);
            }
        }
        qs.append_pair("pageCursor", c);
        format!("{path}?{}", qs.finish())
    });
    json!({
        "items": shown.into_iter().map(|x| x.1).collect::<Vec<_>>(),
        "metadata": {"pagination": {"pageSize": size, "pageCursor": cursor, "nextPage": next}},
    })
}

pub async fn handle(gw: &AdminService, conn: &Conn, req: Request<Incoming>) -> Response<Body> {
    let Some(admin) = gw.admin.as_ref() else {
        return ApiError::new(StatusCode::NOT_FOUND, "the admin API is not enabled").response();
    };
    match route(gw, conn, admin, req).await {
        Ok(r) => r,
        Err(e) => e.response(),
    }
}

async fn route(gw: &AdminService, conn: &Conn, admin: &Admin, req: Request<Incoming>) -> ApiResult {
    let path = req.uri().path().to_string();
    let (collection, id) = if let Some(r) = path.strip_prefix(POLICIES) {
        (POLICIES, r.strip_prefix('/'))
    } else if let Some(r) = path.strip_prefix(TOKENS) {
        (TOKENS, r.strip_prefix('/'))
    } else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such endpoint"));
    };
    if id.is_some_and(|i| i.is_empty() || i.contains('/')) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such endpoint"));
    }
    let needed = match *req.method() {
        Method::GET => Scope::AccessPoliciesRead,
        Method::POST => Scope::AccessPoliciesWrite,
        Method::DELETE => Scope::AccessPoliciesDelete,
        _ => {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET, POST or DELETE",
            ));
        }
    };
    let who = authenticate(gw, conn, &req)?;
    require_scope(&who, &[needed])?;
    let actor = who.token_name.clone();
    let q = query(&req);
    let region = region(&q)?;
    let method = req.method().clone();
    let id = id.map(str::to_string);
    match (collection, method, id) {
        (POLICIES, Method::GET, None) => list_policies(admin, &q, &region).await,
        (POLICIES, Method::GET, Some(id)) => {
            let st = admin.read().await?;
            let p = policy_in(&st.data, &id, &region)?;
            Ok(json_response(StatusCode::OK, &policy_view(&id, p), None))
        }
        (POLICIES, Method::POST, id) => {
            let body = read_json(req).await?;
            save_policy(gw, admin, &actor, id, &region, body).await
        }
        (POLICIES, Method::DELETE, Some(id)) => delete(admin, &actor, true, &id, &region).await,
        (TOKENS, Method::GET, None) => list_tokens(gw, admin, &q, &region).await,
        (TOKENS, Method::GET, Some(id)) => {
            let st = admin.read().await?;
            let t = token_in(&st.data, &id, &region)?;
            let usage = gw.store.usage(&t.hash);
            Ok(json_response(
                StatusCode::OK,
                &token_view(&id, t, usage),
                None,
            ))
        }
        (TOKENS, Method::POST, id) => {
            let body = read_json(req).await?;
            save_token(gw, admin, &actor, id, &region, body).await
        }
        (TOKENS, Method::DELETE, Some(id)) => delete(admin, &actor, false, &id, &region).await,
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "DELETE needs an object id",
        )),
    }
}

fn not_found(what: &str, id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no {what} {id:?} in this region"),
    )
}

fn policy_in<'a>(st: &'a ApiState, id: &str, region: &str) -> Result<&'a CloudPolicy, ApiError> {
    st.cloud_policies
        .get(id)
        .filter(|p| p.region == region)
        .ok_or_else(|| not_found("access policy", id))
}

fn token_in<'a>(st: &'a ApiState, id: &str, region: &str) -> Result<&'a CloudToken, ApiError> {
    st.cloud_tokens
        .get(id)
        .filter(|t| {
            st.cloud_policies
                .get(&t.access_policy_id)
                .is_some_and(|p| p.region == region)
        })
        .ok_or_else(|| not_found("token", id))
}

async fn list_policies(admin: &Admin, q: &HashMap<String, String>, region: &str) -> ApiResult {
    let (size, after) = paging(q)?;
    let realm_type = q.get("realmType").filter(|s| !s.is_empty());
    let realm_id = q.get("realmIdentifier").filter(|s| !s.is_empty());
    if let Some(t) = realm_type
        && t != "org"
        && t != "stack"
    {
        return Err(ApiError::bad("realmType must be org or stack"));
    }
    if realm_id.is_some() && realm_type.is_none() {
        return Err(ApiError::bad("realmIdentifier requires realmType"));
    }
    let status = status_filter(q.get("status"))?;
    let st = admin.read().await?;
    let items: Vec<(String, Value)> = st
        .data
        .cloud_policies
        .iter()
        .filter(|(_, p)| p.region == region)
        .filter(|(_, p)| q.get("name").is_none_or(|n| n.is_empty() || *n == p.name))
        .filter(|(_, p)| status.is_none_or(|s| p.status == s))
        .filter(|(_, p)| {
            realm_type.is_none_or(|t| {
                p.realms
                    .iter()
                    .any(|r| r.kind == *t && realm_id.is_none_or(|i| r.identifier == *i))
            })
        })
        .map(|(id, p)| (id.clone(), policy_view(id, p)))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &page(POLICIES, q, items, size, after),
        None,
    ))
}

fn status_filter(s: Option<&String>) -> Result<Option<Status>, ApiError> {
    match s.map(String::as_str) {
        None | Some("") => Ok(None),
        Some("active") => Ok(Some(Status::Active)),
        Some("inactive") => Ok(Some(Status::Inactive)),
        Some(x) => Err(ApiError::bad(format!(
            "status {x:?}: use active or inactive"
        ))),
    }
}

fn time_filter(q: &HashMap<String, String>, key: &str) -> Result<Option<i64>, ApiError> {
    match q.get(key).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|d| Some(d.timestamp()))
            .map_err(|_| ApiError::bad(format!("{key} must be an ISO 8601 UTC time"))),
    }
}

async fn list_tokens(
    gw: &AdminService,
    admin: &Admin,
    q: &HashMap<String, String>,
    region: &str,
) -> ApiResult {
    let (size, after) = paging(q)?;
    let realm_type = q.get("accessPolicyRealmType").filter(|s| !s.is_empty());
    let realm_id = q
        .get("accessPolicyRealmIdentifier")
        .filter(|s| !s.is_empty());
    if realm_id.is_some() && realm_type.is_none() {
        return Err(ApiError::bad(
            "accessPolicyRealmIdentifier requires accessPolicyRealmType",
        ));
    }
    let policy_status = status_filter(q.get("accessPolicyStatus"))?;
    let before = time_filter(q, "expiresBefore")?;
    let after_t = time_filter(q, "expiresAfter")?;
    let filter = |k: &str, v: &str| q.get(k).is_none_or(|f| f.is_empty() || f == v);
    let st = admin.read().await?;
    let items: Vec<(String, Value)> = st
        .data
        .cloud_tokens
        .iter()
        .filter_map(|(id, t)| {
            let p = st.data.cloud_policies.get(&t.access_policy_id)?;
            let exp = t.expires_at.as_deref().and_then(super::unix_of);
            let keep = p.region == region
                && filter("accessPolicyId", &t.access_policy_id)
                && filter("accessPolicyName", &p.name)
                && filter("name", &t.name)
                && policy_status.is_none_or(|s| p.status == s)
                && realm_type.is_none_or(|rt| {
                    p.realms
                        .iter()
                        .any(|r| r.kind == *rt && realm_id.is_none_or(|i| r.identifier == *i))
                })
                && before.is_none_or(|b| exp.is_some_and(|e| e < b))
                && after_t.is_none_or(|a| exp.is_some_and(|e| e > a));
            keep.then(|| (id.clone(), token_view(id, t, gw.store.usage(&t.hash))))
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &page(TOKENS, q, items, size, after),
        None,
    ))
}

fn str_field(body: &Value, key: &str) -> Result<Option<String>, ApiError> {
    super::opt_str(body, key)
}

fn realms_from(body: &Value) -> Result<Vec<CloudRealm>, ApiError> {
    let Some(Value::Array(a)) = body.get("realms") else {
        return Err(ApiError::bad("realms is required (a list of realms)"));
    };
    let mut out = Vec::new();
    for r in a {
        let kind = str_field(r, "type")?.unwrap_or_default();
        if kind != "org" && kind != "stack" {
            return Err(ApiError::bad("realm type must be org or stack"));
        }
        let identifier = str_field(r, "identifier")?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::bad("every realm needs an identifier"))?;
        let mut label_policies = Vec::new();
        match r.get("labelPolicies") {
            None | Some(Value::Null) => {}
            Some(Value::Array(lps)) => {
                for lp in lps {
                    let sel = str_field(lp, "selector")?
                        .ok_or_else(|| ApiError::bad("every label policy needs a selector"))?;
                    crate::selector::parse_selector(&sel)
                        .map_err(|e| ApiError::bad(format!("label policy {sel:?}: {e}")))?;
                    label_policies.push(sel);
                }
            }
            Some(_) => return Err(ApiError::bad("labelPolicies must be a list")),
        }
        out.push(CloudRealm {
            kind,
            identifier,
            label_policies,
        });
    }
    Ok(out)
}

fn scopes_from(body: &Value) -> Result<Vec<String>, ApiError> {
    let Some(Value::Array(a)) = body.get("scopes") else {
        return Err(ApiError::bad("scopes is required (a list of scopes)"));
    };
    let mut out: Vec<String> = Vec::new();
    for s in a {
        let s = s
            .as_str()
            .ok_or_else(|| ApiError::bad("scopes must be strings"))?;
        if Scope::parse(s).is_none() {
            return Err(ApiError::bad(format!("unknown scope {s:?}")));
        }
        if !out.iter().any(|x| x == s) {
            out.push(s.to_string());
        }
    }
    Ok(out)
}

/// `conditions.allowedSubnets`; `None` when the body does not mention conditions.
/// `null`, `{}` or `[]` remove them.
fn subnets_from(body: &Value) -> Result<Option<Vec<String>>, ApiError> {
    let c = match body.get("conditions") {
        None => return Ok(None),
        Some(Value::Null) => return Ok(Some(Vec::new())),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(ApiError::bad("conditions must be an object")),
    };
    let list = match c.get("allowedSubnets") {
        None | Some(Value::Null) => return Ok(Some(Vec::new())),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::bad("allowedSubnets must be a list")),
    };
    let mut out = Vec::new();
    for s in list {
        let s = s
            .as_str()
            .ok_or_else(|| ApiError::bad("allowedSubnets must be strings"))?;
        let net = Cidr::parse(s).map_err(ApiError::bad)?;
        out.push(net.to_string());
    }
    Ok(Some(out))
}

fn display_name(body: &Value) -> Result<Option<String>, ApiError> {
    match str_field(body, "displayName")? {
        Some(d) if d.is_empty() || d.len() > 255 => {
            Err(ApiError::bad("displayName must be 1-255 characters"))
        }
        d => Ok(d),
    }
}

async fn save_policy(
    gw: &AdminService,
    admin: &Admin,
    actor: &str,
    id: Option<String>,
    region: &str,
    body: Value,
) -> ApiResult {
    let (id, p) = admin
        .write(actor, |state| {
            let mut tx = Tx::default();
            let now = now_rfc3339();
            let (id, p) = match &id {
                None => {
                    let name = str_field(&body, "name")?.unwrap_or_default();
                    if !valid_cloud_name(&name) {
                        return Err(ApiError::bad("name must be 1-255 characters of [a-z0-9_-]"));
                    }
                    // one namespace with the other dialects' policies (all in the set in force)
                    let snap = gw.store.snapshot();
                    if snap.policies.contains_key(&name)
                        || super::file_defined(&gw.store.file_set(), super::Kind::Policies, &name)
                        || state.access_policies.contains_key(&name)
                    {
                        return Err(ApiError::new(
                            StatusCode::CONFLICT,
                            format!("an access policy named {name:?} exists"),
                        ));
                    }
                    let realms = realms_from(&body)?;
                    // the org realm's identifier; for stack realms only, the org their tenants
                    // belong to (as Grafana Cloud reports a stack policy's org); empty if
                    // neither tells
                    let org_id = realms
                        .iter()
                        .find(|r| r.kind == "org")
                        .map(|r| r.identifier.clone())
                        .or_else(|| {
                            realms.iter().find_map(|r| {
                                snap.tenants
                                    .values()
                                    .find(|t| t.stack.as_deref() == Some(r.identifier.as_str()))
                                    .and_then(|t| t.org.clone())
                            })
                        })
                        .unwrap_or_default();
                    let p = CloudPolicy {
                        display_name: display_name(&body)?.unwrap_or_else(|| name.clone()),
                        name,
                        region: region.to_string(),
                        org_id,
                        scopes: scopes_from(&body)?,
                        realms,
                        allowed_subnets: subnets_from(&body)?.unwrap_or_default(),
                        status: Status::Active,
                        created_at: now.clone(),
                        updated_at: now,
                    };
                    (uuid_v4()?, p)
                }
                Some(id) => {
                    let mut p = policy_in(state, id, region)?.clone();
                    let status = super::status_of(&body)?;
                    if body.get("realms").is_some() {
                        p.realms = realms_from(&body)?;
                    }
                    if body.get("scopes").is_some() {
                        p.scopes = scopes_from(&body)?;
                    }
                    if let Some(s) = subnets_from(&body)? {
                        p.allowed_subnets = s;
                    }
                    if let Some(d) = display_name(&body)? {
                        p.display_name = d;
                    }
                    if let Some(s) = status {
                        p.status = s;
                    }
                    p.updated_at = now;
                    (id.clone(), p)
                }
            };
            tx.put(Collection::CloudPolicies, &id, &p);
            Ok((tx, (id, p)))
        })
        .await?;
    super::audit_cloud(actor, "save", "access_policy", &p.name, &id);
    Ok(json_response(StatusCode::OK, &policy_view(&id, &p), None))
}

async fn save_token(
    gw: &AdminService,
    admin: &Admin,
    actor: &str,
    id: Option<String>,
    region: &str,
    body: Value,
) -> ApiResult {
    let (id, t, text) = admin
        .write(actor, |state| {
            let mut tx = Tx::default();
            let now = now_rfc3339();
            let mut text = None;
            let (id, t) = match &id {
                None => {
                    let name = str_field(&body, "name")?.unwrap_or_default();
                    if !valid_cloud_name(&name) {
                        return Err(ApiError::bad("name must be 1-255 characters of [a-z0-9_-]"));
                    }
                    let ap = str_field(&body, "accessPolicyId")?
                        .ok_or_else(|| ApiError::bad("accessPolicyId is required"))?;
                    let policy = policy_in(state, &ap, region)
                        .map_err(|_| ApiError::bad(format!("unknown accessPolicyId {ap:?}")))?;
                    if state
                        .cloud_tokens_of(&ap)
                        .any(|id| state.cloud_tokens.get(id).is_some_and(|t| t.name == name))
                    {
                        return Err(ApiError::new(
                            StatusCode::CONFLICT,
                            format!("a token named {name:?} exists for this access policy"),
                        ));
                    }
                    let minted = token::mint_glc(&policy.org_id, &policy.name, &name, region)
                        .map_err(|e| {
                            ApiError::new(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                format!("no randomness: {e}"),
                            )
                        })?;
                    let t = CloudToken {
                        display_name: display_name(&body)?.unwrap_or_else(|| name.clone()),
                        name,
                        access_policy_id: ap,
                        expires_at: expires_at_of(&body)?.flatten(),
                        hash: TokenHash::of(&minted).stored(),
                        created_at: now.clone(),
                        updated_at: now,
                    };
                    text = Some(minted);
                    (uuid_v4()?, t)
                }
                Some(id) => {
                    let mut t = token_in(state, id, region)?.clone();
                    if let Some(e) = expires_at_of(&body)? {
                        t.expires_at = e;
                    }
                    if let Some(d) = display_name(&body)? {
                        t.display_name = d;
                    }
                    t.updated_at = now;
                    (id.clone(), t)
                }
            };
            tx.put(Collection::CloudTokens, &id, &t);
            Ok((tx, (id, t, text)))
        })
        .await?;
    super::audit_cloud(actor, "save", "token", &t.name, &id);
    let mut v = token_view(&id, &t, gw.store.usage(&t.hash));
    if let Some(text) = text {
        // the only time the token text is ever shown
        v["token"] = Value::String(text);
    }
    Ok(json_response(StatusCode::OK, &v, None))
}

async fn delete(admin: &Admin, actor: &str, policy: bool, id: &str, region: &str) -> ApiResult {
    let name = admin
        .write(actor, |state| {
            let mut tx = Tx::default();
            let name = if policy {
                let name = policy_in(state, id, region)?.name.clone();
                tx.delete(Collection::CloudPolicies, id);
                // its tokens go with it
                for tid in state.cloud_tokens_of(id) {
                    tx.delete(Collection::CloudTokens, tid);
                }
                name
            } else {
                let name = token_in(state, id, region)?.name.clone();
                tx.delete(Collection::CloudTokens, id);
                name
            };
            Ok((tx, name))
        })
        .await?;
    super::audit_cloud(
        actor,
        "delete",
        if policy { "access_policy" } else { "token" },
        &name,
        id,
    );
    let mut r = Response::new(crate::wire::full(bytes::Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    Ok(r)
}

/// `expiresAt`: absent (`None`), `null` (never), or an RFC 3339 time up to year 9999.
fn expires_at_of(body: &Value) -> Result<Option<Option<String>>, ApiError> {
    match body.get("expiresAt") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) => super::utc_time(s, chrono::SecondsFormat::Millis)
            .map(|t| Some(Some(t)))
            .ok_or_else(|| ApiError::bad("expiresAt must be an ISO 8601 UTC time up to year 9999")),
        Some(_) => Err(ApiError::bad("expiresAt must be a string")),
    }
}

/// The Cloud dialect's body validators, for [`super::fuzz_bodies`].
pub(super) fn fuzz_bodies(v: &Value) {
    if let Ok(realms) = realms_from(v) {
        for r in &realms {
            for lp in &r.label_policies {
                assert!(crate::selector::parse_selector(lp).is_ok(), "{lp:?}");
            }
        }
    }
    let _ = scopes_from(v);
    if let Ok(Some(subnets)) = subnets_from(v) {
        for s in &subnets {
            assert!(crate::config::Cidr::parse(s).is_ok(), "{s:?}");
        }
    }
    let _ = display_name(v);
    let _ = str_field(v, "name").map(|n| n.map(|n| valid_cloud_name(&n)));
    if let Ok(Some(Some(e))) = expires_at_of(v) {
        assert!(super::unix_of(&e).is_some(), "{e:?}");
    }
}
