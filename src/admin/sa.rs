//! Grafana service accounts (`reference/grafana-service-account-api.txt`): search with paging,
//! create (201), get, PATCH, and their `glsa_` tokens (list, create, delete). A disabled account's
//! tokens answer 401; roles map to scopes as SPEC 3 says. Authorization: `admin`.

use super::AdminService;
use super::state::{Collection, Tx};
use super::{
    Admin, ApiError, ApiResult, ApiState, authenticate, json_response, read_json, require_scope,
};
use crate::policy::Role;
use crate::token::{self, TokenHash};
use crate::wire::{Body, Conn};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;

pub const PREFIX: &str = "/api/serviceaccounts";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SaObj {
    pub name: String,
    pub role: Role,
    pub org_id: String,
    pub disabled: bool,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SaTokenObj {
    pub service_account: u64,
    pub name: String,
    pub hash: String,
    pub created: String,
    /// RFC 3339; `None` = never.
    pub expiration: Option<String>,
}

pub fn is_sa_path(path: &str) -> bool {
    path == PREFIX
        || path
            .strip_prefix(PREFIX)
            .is_some_and(|r| r.starts_with('/'))
}

fn role_of(v: &Value) -> Result<Option<Role>, ApiError> {
    match super::opt_str(v, "role")?.as_deref() {
        None => Ok(None),
        Some("Viewer") => Ok(Some(Role::Viewer)),
        Some("Editor") => Ok(Some(Role::Editor)),
        Some("Admin") => Ok(Some(Role::Admin)),
        Some(r) => Err(ApiError::bad(format!(
            "role {r:?}: use Viewer, Editor or Admin"
        ))),
    }
}

fn bool_of(v: &Value, key: &str) -> Result<Option<bool>, ApiError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::bad(format!("{key} must be true or false"))),
    }
}

fn login(name: &str) -> String {
    format!(
        "sa-{}",
        name.to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect::<String>()
    )
}

fn org_number(org: &str) -> Value {
    org.parse::<i64>()
        .map(Value::from)
        .unwrap_or_else(|_| Value::from(org))
}

fn view(id: u64, sa: &SaObj, tokens: usize) -> Value {
    json!({
        "id": id,
        "name": sa.name,
        "login": login(&sa.name),
        "orgId": org_number(&sa.org_id),
        "isDisabled": sa.disabled,
        "role": sa.role,
        "tokens": tokens,
        "createdAt": sa.created_at,
        "updatedAt": sa.updated_at,
        "avatarUrl": "",
        "teams": [],
    })
}

fn token_count(st: &ApiState, id: u64) -> usize {
    st.sa_tokens_of(id).count()
}

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

fn parse_id(s: &str) -> Result<u64, ApiError> {
    s.parse::<u64>()
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, format!("no service account {s:?}")))
}

async fn route(gw: &AdminService, admin: &Admin, actor: &str, req: Request<Incoming>) -> ApiResult {
    let path = req.uri().path().to_string();
    let rest = path.strip_prefix(PREFIX).unwrap_or("");
    let parts: Vec<&str> = rest.split('/').skip(1).collect();
    let method = req.method().clone();
    let q: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    match (method, parts.as_slice()) {
        (Method::GET, ["search"]) => search(admin, &q).await,
        (Method::POST, []) => {
            let body = read_json(req).await?;
            create(gw, admin, actor, body).await
        }
        (Method::GET, [id]) => {
            let id = parse_id(id)?;
            let st = admin.read().await?;
            let sa = st
                .data
                .service_accounts
                .get(&id)
                .ok_or_else(|| not_found(id))?;
            Ok(json_response(
                StatusCode::OK,
                &view(id, sa, token_count(&st.data, id)),
                None,
            ))
        }
        (Method::PATCH, [id]) => {
            let id = parse_id(id)?;
            let body = read_json(req).await?;
            patch(gw, admin, actor, id, body).await
        }
        (Method::GET, [id, "tokens"]) => {
            let id = parse_id(id)?;
            let st = admin.read().await?;
            let sa = st
                .data
                .service_accounts
                .get(&id)
                .ok_or_else(|| not_found(id))?;
            let now = chrono::Utc::now().timestamp();
            let list: Vec<Value> = st
                .data
                .sa_tokens_of(id)
                .filter_map(|tid| st.data.sa_tokens.get(tid).map(|t| (tid, t)))
                .map(|(tid, t)| {
                    let exp = t.expiration.as_deref().and_then(super::unix_of);
                    json!({
                        "id": tid,
                        "name": t.name,
                        "role": sa.role,
                        "created": t.created,
                        "expiration": t.expiration,
                        "secondsUntilExpiration": exp.map(|e| (e - now).max(0)).unwrap_or(0),
                        "hasExpired": exp.is_some_and(|e| e <= now),
                    })
                })
                .collect();
            Ok(json_response(StatusCode::OK, &Value::Array(list), None))
        }
        (Method::POST, [id, "tokens"]) => {
            let id = parse_id(id)?;
            let body = read_json(req).await?;
            create_token(admin, actor, id, body).await
        }
        (Method::DELETE, [id, "tokens", tid]) => {
            let id = parse_id(id)?;
            let tid = tid
                .parse::<u64>()
                .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "no such token"))?;
            delete_token(admin, actor, id, tid).await
        }
        (_, [] | ["search"] | [_] | [_, "tokens"] | [_, "tokens", _]) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed here",
        )),
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")),
    }
}

fn not_found(id: u64) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no service account {id}"))
}

async fn search(admin: &Admin, q: &HashMap<String, String>) -> ApiResult {
    let num = |k: &str, default: usize| -> Result<usize, ApiError> {
        match q.get(k).map(String::as_str) {
            None | Some("") => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| ApiError::bad(format!("{k} must be a positive integer"))),
        }
    };
    let per_page = num("perpage", 1000)?;
    let page = num("page", 1)?;
    let needle = q.get("query").map(|s| s.to_lowercase()).unwrap_or_default();
    let st = admin.read().await?;
    let matching: Vec<Value> = st
        .data
        .service_accounts
        .iter()
        .filter(|(_, sa)| sa.name.to_lowercase().contains(&needle))
        .map(|(id, sa)| view(*id, sa, token_count(&st.data, *id)))
        .collect();
    let total = matching.len();
    let shown: Vec<Value> = matching
        .into_iter()
        .skip(per_page.saturating_mul(page - 1))
        .take(per_page)
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"totalCount": total, "serviceAccounts": shown, "page": page, "perPage": per_page}),
        None,
    ))
}

async fn create(gw: &AdminService, admin: &Admin, actor: &str, body: Value) -> ApiResult {
    let name = super::opt_str(&body, "name")?
        .filter(|n| !n.trim().is_empty() && n.len() <= 190)
        .ok_or_else(|| ApiError::bad("name is required (at most 190 characters)"))?;
    let role = role_of(&body)?.unwrap_or(Role::Viewer);
    let disabled = bool_of(&body, "isDisabled")?.unwrap_or(false);
    let org_id = match body.get("orgId") {
        None | Some(Value::Null) => "1".to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => return Err(ApiError::bad("orgId must be a number or a string")),
    };
    let (id, sa) = admin
        .write(actor, |state| {
            if gw.store.file_set().service_accounts.contains_key(&name)
                || gw.store.snapshot().service_accounts.contains_key(&name)
            {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("service account {name:?} already exists"),
                ));
            }
            let mut tx = Tx::default();
            let id = state.next_id + 1;
            tx.next_id = Some(id);
            let now = now_secs();
            let sa = SaObj {
                name: name.clone(),
                role,
                org_id: org_id.clone(),
                disabled,
                created_at: now.clone(),
                updated_at: now,
            };
            tx.put(Collection::ServiceAccounts, id, &sa);
            Ok((tx, (id, sa)))
        })
        .await?;
    super::audit_cloud(actor, "create", "service_account", &name, &id.to_string());
    Ok(json_response(StatusCode::CREATED, &view(id, &sa, 0), None))
}

async fn patch(gw: &AdminService, admin: &Admin, actor: &str, id: u64, body: Value) -> ApiResult {
    let role = role_of(&body)?;
    let disabled = bool_of(&body, "isDisabled")?;
    let name = super::opt_str(&body, "name")?;
    let (sa, tokens) = admin
        .write(actor, |state| {
            let Some(current) = state.service_accounts.get(&id) else {
                return Err(not_found(id));
            };
            if let Some(n) = &name {
                if n.trim().is_empty() || n.len() > 190 {
                    return Err(ApiError::bad("name must be 1-190 characters"));
                }
                // file-defined names, and other accounts' (all in the set in force)
                let taken = gw.store.file_set().service_accounts.contains_key(n)
                    || gw.store.snapshot().service_accounts.contains_key(n);
                if taken && current.name != *n {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        format!("service account {n:?} already exists"),
                    ));
                }
            }
            let mut sa = current.clone();
            if let Some(n) = &name {
                sa.name = n.clone();
            }
            if let Some(r) = role {
                sa.role = r;
            }
            if let Some(d) = disabled {
                sa.disabled = d;
            }
            sa.updated_at = now_secs();
            let mut tx = Tx::default();
            tx.put(Collection::ServiceAccounts, id, &sa);
            Ok((tx, (sa, token_count(state, id))))
        })
        .await?;
    super::audit_cloud(
        actor,
        "update",
        "service_account",
        &sa.name,
        &id.to_string(),
    );
    Ok(json_response(StatusCode::OK, &view(id, &sa, tokens), None))
}

/// Grafana's `secondsToLive`; 0 or absent = never expires.
fn seconds_to_live(body: &Value) -> Result<i64, ApiError> {
    match body.get("secondsToLive") {
        None | Some(Value::Null) => Ok(0),
        Some(v) => v
            .as_i64()
            .filter(|n| (0..=MAX_SECONDS_TO_LIVE).contains(n))
            .ok_or_else(|| {
                ApiError::bad(format!(
                    "secondsToLive must be an integer from 0 to {MAX_SECONDS_TO_LIVE} (100 years)"
                ))
            }),
    }
}

/// When a token made `now` with `ttl` seconds to live expires (`None`: never). In range: `ttl`
/// is at most 100 years.
fn expiration_after(now: chrono::DateTime<chrono::Utc>, ttl: i64) -> Option<String> {
    (ttl > 0)
        .then(|| chrono::TimeDelta::try_seconds(ttl).and_then(|d| now.checked_add_signed(d)))
        .flatten()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// The longest `secondsToLive` accepted: 100 years.
const MAX_SECONDS_TO_LIVE: i64 = 100 * 365 * 24 * 3600;

async fn create_token(admin: &Admin, actor: &str, id: u64, body: Value) -> ApiResult {
    let name = super::opt_str(&body, "name")?
        .filter(|n| !n.trim().is_empty() && n.len() <= 190)
        .ok_or_else(|| ApiError::bad("name is required (at most 190 characters)"))?;
    let ttl = seconds_to_live(&body)?;
    let (tid, key) = admin
        .write(actor, |state| {
            if !state.service_accounts.contains_key(&id) {
                return Err(not_found(id));
            }
            if state
                .sa_tokens_of(id)
                .any(|tid| state.sa_tokens.get(tid).is_some_and(|t| t.name == name))
            {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("this service account has a token named {name:?}"),
                ));
            }
            let key = token::mint_glsa().map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("no randomness: {e}"),
                )
            })?;
            let mut tx = Tx::default();
            let tid = state.next_id + 1;
            tx.next_id = Some(tid);
            let now = chrono::Utc::now();
            tx.put(
                Collection::SaTokens,
                tid,
                &SaTokenObj {
                    service_account: id,
                    name: name.clone(),
                    hash: TokenHash::of(&key).stored(),
                    created: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    expiration: expiration_after(now, ttl),
                },
            );
            Ok((tx, (tid, key)))
        })
        .await?;
    super::audit_cloud(
        actor,
        "create",
        "service_account_token",
        &name,
        &tid.to_string(),
    );
    // the only time the key is ever shown
    Ok(json_response(
        StatusCode::OK,
        &json!({"id": tid, "name": name, "key": key}),
        None,
    ))
}

async fn delete_token(admin: &Admin, actor: &str, id: u64, tid: u64) -> ApiResult {
    let name = admin
        .write(actor, |state| {
            let Some(t) = state
                .sa_tokens
                .get(&tid)
                .filter(|t| t.service_account == id)
            else {
                return Err(ApiError::new(StatusCode::NOT_FOUND, "no such token"));
            };
            let mut tx = Tx::default();
            tx.delete(Collection::SaTokens, tid);
            Ok((tx, t.name.clone()))
        })
        .await?;
    super::audit_cloud(
        actor,
        "delete",
        "service_account_token",
        &name,
        &tid.to_string(),
    );
    Ok(json_response(
        StatusCode::OK,
        &json!({"message": "API key deleted"}),
        None,
    ))
}

/// Grafana writes service-account times to the second (`2022-03-21T14:35:33Z`).
fn now_secs() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The service-account body validators, for [`super::fuzz_bodies`].
pub(super) fn fuzz_bodies(v: &Value) {
    let _ = role_of(v);
    let _ = bool_of(v, "isDisabled");
    if let Ok(ttl) = seconds_to_live(v) {
        let _ = expiration_after(chrono::Utc::now(), ttl);
    }
}
