//! The access model (tenants, access policies, realms, scopes, service accounts, tokens) and
//! [`decide`]: one pure function over plain data that applies the rules of SPEC 5.3 from
//! "token active" onwards. It does no I/O and is tested without sockets.

use crate::selector::Selector;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// `[a-z0-9_-]{min,max}`.
pub fn valid_name(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

macro_rules! scopes {
    ($($v:ident = $s:literal),* $(,)?) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum Scope { $($v),* }
        impl Scope {
            pub const ALL: &'static [Scope] = &[$(Scope::$v),*];
            pub fn as_str(self) -> &'static str { match self { $(Scope::$v => $s),* } }
            pub fn parse(s: &str) -> Option<Scope> { match s { $($s => Some(Scope::$v),)* _ => None } }
        }
    };
}

scopes! {
    MetricsRead = "metrics:read", MetricsWrite = "metrics:write", MetricsDelete = "metrics:delete",
    MetricsImport = "metrics:import",
    LogsRead = "logs:read", LogsWrite = "logs:write", LogsDelete = "logs:delete",
    TracesRead = "traces:read", TracesWrite = "traces:write", TracesDelete = "traces:delete",
    ProfilesRead = "profiles:read", ProfilesWrite = "profiles:write",
    RulesRead = "rules:read", RulesWrite = "rules:write",
    AlertsRead = "alerts:read", AlertsWrite = "alerts:write",
    Admin = "admin",
    AccessPoliciesRead = "accesspolicies:read", AccessPoliciesWrite = "accesspolicies:write",
    AccessPoliciesDelete = "accesspolicies:delete",
}

impl Scope {
    fn bit(self) -> u32 {
        1u32 << (self as u8)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Scope::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown scope {s:?}")))
    }
}

/// A set of scopes as a bitmask: membership is one AND.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScopeSet(u32);

impl ScopeSet {
    pub fn insert(&mut self, s: Scope) {
        self.0 |= s.bit();
    }
    pub fn contains(self, s: Scope) -> bool {
        self.0 & s.bit() != 0
    }
    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL
            .iter()
            .copied()
            .filter(move |s| self.contains(*s))
    }
    pub fn for_role(role: Role) -> ScopeSet {
        let mut set = ScopeSet::default();
        for s in Scope::ALL {
            let name = s.as_str();
            let read = name.ends_with(":read") && !name.starts_with("accesspolicies");
            let write = (name.ends_with(":write") || name.ends_with(":delete"))
                && !name.starts_with("accesspolicies");
            let grant = match role {
                Role::Viewer => read,
                Role::Editor => read || write,
                Role::Admin => read || write || *s == Scope::Admin,
            };
            if grant {
                set.insert(*s);
            }
        }
        set
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(it: I) -> Self {
        let mut s = ScopeSet::default();
        for x in it {
            s.insert(x);
        }
        s
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Active,
    Inactive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum Role {
    Viewer,
    Editor,
    Admin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub name: String,
    pub cluster: String,
    pub status: Status,
    pub org: Option<String>,
    pub stack: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RealmTarget {
    /// A named tenant.
    Tenant(String),
    /// `tenant: "*"`: every tenant of the cluster.
    AllTenants,
    /// Cloud-style realm: tenants whose `org` equals the identifier.
    Org(String),
    /// Cloud-style realm: tenants whose `stack` equals the identifier.
    Stack(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Realm {
    pub target: RealmTarget,
    pub cluster: String,
    pub label_policies: Vec<Selector>,
}

impl Realm {
    /// Whether this realm covers `t` (which the caller has checked is in this gateway's cluster).
    pub fn matches(&self, t: &Tenant) -> bool {
        if self.cluster != t.cluster {
            return false;
        }
        match &self.target {
            RealmTarget::Tenant(n) => *n == t.name,
            RealmTarget::AllTenants => true,
            RealmTarget::Org(id) => t.org.as_deref() == Some(id.as_str()),
            RealmTarget::Stack(id) => t.stack.as_deref() == Some(id.as_str()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPolicy {
    pub name: String,
    pub display_name: Option<String>,
    pub status: Status,
    pub scopes: ScopeSet,
    pub realms: Arc<[Realm]>,
    pub allowed_subnets: Arc<[IpNet]>,
    /// Unix seconds past which the policy's tokens stop working (GEM v1's policy
    /// `expiration`); `None` = never.
    pub expires_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub name: String,
    pub role: Role,
    pub org: String,
    pub disabled: bool,
    pub access_policy: Option<String>,
}

/// What a token is resolved to: everything `decide` needs, flattened. Cached by token hash.
#[derive(Debug, Clone)]
pub struct Identity {
    pub token_name: String,
    /// The access policy's name, or `serviceaccount:<name>` for a service account without one.
    pub policy_name: String,
    /// Token active, its policy active, its service account enabled.
    pub active: bool,
    /// Unix seconds; `None` = never.
    pub expires_at: Option<i64>,
    pub scopes: ScopeSet,
    pub realms: Arc<[Realm]>,
    pub allowed_subnets: Arc<[IpNet]>,
    /// The one concrete tenant the realms name, used when the request names none.
    pub default_tenant: Option<String>,
    /// Snapshot generation this identity was resolved against.
    pub generation: u64,
    /// When the token was first and last used (shared by every identity of one token).
    pub usage: Arc<Usage>,
}

/// First and last use of a token, Unix seconds (0 = never). Updated on the request path with at
/// most one relaxed store per token per second: no lock, no allocation.
#[derive(Debug, Default)]
pub struct Usage {
    first: std::sync::atomic::AtomicI64,
    last: std::sync::atomic::AtomicI64,
}

impl Usage {
    pub fn touch(&self, now: i64) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.last.load(Relaxed) != now {
            self.last.store(now, Relaxed);
            let _ = self.first.compare_exchange(0, now, Relaxed, Relaxed);
        }
    }

    /// `(first, last)`, or `None` if never used.
    pub fn get(&self) -> Option<(i64, i64)> {
        use std::sync::atomic::Ordering::Relaxed;
        let first = self.first.load(Relaxed);
        (first != 0).then(|| (first, self.last.load(Relaxed).max(first)))
    }
}

/// What the request says, already parsed; no strings left to re-check except tenant IDs.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// Scope the route requires; `None` for routes that only need a valid token.
    pub scope: Option<Scope>,
    /// Whether label policies apply to this route (metrics:read / logs:read routes).
    pub label_policies_apply: bool,
    pub client_ip: IpAddr,
    /// Tenant from the Basic/Bearer username, when non-empty.
    pub tenant_from_credentials: Option<&'a str>,
    /// The client's X-Scope-OrgID header, if any.
    pub org_id_header: Option<&'a str>,
    pub now_unix: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow<'a> {
    /// Sorted, deduplicated tenant IDs.
    pub tenants: Vec<String>,
    /// The value for X-Scope-OrgID: tenants joined by `|`.
    pub org_id: String,
    /// For each tenant restricted by label policies (only on routes where they apply): the
    /// selectors it may read (OR between them).
    /// Borrowed from the identity and snapshot: nothing is cloned on the request path.
    pub label_policies: Vec<(&'a str, Vec<&'a Selector>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    InvalidToken,
    SubnetNotAllowed,
    NoTenant,
    InvalidTenant,
    UnknownTenant,
    TenantNotInRealm,
    MissingScope,
}

impl DenyReason {
    /// Low-cardinality label for metrics. A 401 never distinguishes unknown/expired/revoked.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::InvalidToken => "invalid_token",
            DenyReason::SubnetNotAllowed => "subnet_not_allowed",
            DenyReason::NoTenant => "no_tenant",
            DenyReason::InvalidTenant => "invalid_tenant",
            DenyReason::UnknownTenant => "unknown_tenant",
            DenyReason::TenantNotInRealm => "tenant_not_in_realm",
            DenyReason::MissingScope => "missing_scope",
        }
    }
    pub fn status(self) -> u16 {
        match self {
            DenyReason::InvalidToken
            | DenyReason::NoTenant
            | DenyReason::InvalidTenant
            | DenyReason::UnknownTenant => 401,
            DenyReason::SubnetNotAllowed
            | DenyReason::TenantNotInRealm
            | DenyReason::MissingScope => 403,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deny {
    pub reason: DenyReason,
    /// Safe to show the client: names what is missing, never a secret.
    pub message: String,
}

impl Deny {
    fn new(reason: DenyReason, message: impl Into<String>) -> Deny {
        Deny {
            reason,
            message: message.into(),
        }
    }
    pub fn status(&self) -> u16 {
        self.reason.status()
    }
}

pub const INVALID_TOKEN_MESSAGE: &str = "invalid, expired or revoked token";
pub const MAX_TENANT_ID_LEN: usize = 150;

/// A tenant ID as dskit accepts it: `[A-Za-z0-9!._*'()-]`, at most 150 bytes, not `.`/`..`.
pub fn valid_tenant_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_TENANT_ID_LEN
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!._*'()-".contains(&c))
}

/// Splits `a|b` into sorted, deduplicated tenant IDs; `None` if any part is invalid.
pub fn parse_tenant_ids(s: &str) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(1);
    for part in s.split('|') {
        if !valid_tenant_id(part) {
            return None;
        }
        out.push(part.to_string());
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

/// Applies SPEC 5.3 from "token active" to the label policies, in the table's order.
/// Tenants by name, as `decide` reads them.
pub trait Tenants {
    fn tenant(&self, name: &str) -> Option<&Tenant>;
}

impl Tenants for HashMap<String, Tenant> {
    fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.get(name)
    }
}

impl Tenants for crate::store::layered::Layered<String, Tenant> {
    fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.get(name)
    }
}

pub fn decide<'a>(
    id: &'a Identity,
    tenants: &'a (impl Tenants + ?Sized),
    cluster: &str,
    req: &RequestFacts<'_>,
) -> Result<Allow<'a>, Deny> {
    // token, policy and service account active; token not expired
    if !id.active || id.expires_at.is_some_and(|e| req.now_unix >= e) {
        return Err(Deny::new(DenyReason::InvalidToken, INVALID_TOKEN_MESSAGE));
    }
    // client address inside allowed_subnets, when set
    if !id.allowed_subnets.is_empty()
        && !id
            .allowed_subnets
            .iter()
            .any(|n| n.contains(&req.client_ip))
    {
        return Err(Deny::new(
            DenyReason::SubnetNotAllowed,
            format!(
                "client address {} is not in the access policy's allowed subnets",
                req.client_ip
            ),
        ));
    }
    // tenant resolvable; every tenant known, active, in this cluster
    let requested = req
        .tenant_from_credentials
        .filter(|t| !t.is_empty())
        .or(req.org_id_header.map(str::trim).filter(|t| !t.is_empty()))
        .or(id.default_tenant.as_deref());
    let Some(requested) = requested else {
        return Err(Deny::new(
            DenyReason::NoTenant,
            "no tenant: send X-Scope-OrgID or use Basic auth with the tenant as username",
        ));
    };
    let Some(ids) = parse_tenant_ids(requested) else {
        return Err(Deny::new(
            DenyReason::InvalidTenant,
            "invalid tenant ID: use [A-Za-z0-9!._*'()-], at most 150 bytes, several joined by |",
        ));
    };
    let mut found: Vec<&'a Tenant> = Vec::with_capacity(ids.len());
    for t in &ids {
        match tenants.tenant(t) {
            Some(ten) if ten.status == Status::Active && ten.cluster == cluster => found.push(ten),
            _ => {
                return Err(Deny::new(
                    DenyReason::UnknownTenant,
                    format!("unknown or inactive tenant {t:?}"),
                ));
            }
        }
    }
    // every tenant inside one of the policy's realms
    for t in &found {
        if !id.realms.iter().any(|r| r.matches(t)) {
            return Err(Deny::new(
                DenyReason::TenantNotInRealm,
                format!("the access policy does not grant tenant {:?}", t.name),
            ));
        }
    }
    // route's scope in the policy's scopes
    if let Some(s) = req.scope
        && !id.scopes.contains(s)
    {
        return Err(Deny::new(
            DenyReason::MissingScope,
            format!("missing scope {}", s.as_str()),
        ));
    }
    // label policies: the union over every matching realm; unrestricted if one has none
    let mut label_policies = Vec::new();
    if req.label_policies_apply {
        for t in &found {
            let mut set: Vec<&'a Selector> = Vec::new();
            let mut unrestricted = false;
            for r in id.realms.iter().filter(|r| r.matches(t)) {
                if r.label_policies.is_empty() {
                    unrestricted = true;
                    break;
                }
                for s in &r.label_policies {
                    if !set.contains(&s) {
                        set.push(s);
                    }
                }
            }
            if !unrestricted {
                label_policies.push((t.name.as_str(), set));
            }
        }
    }
    let org_id = ids.join("|");
    Ok(Allow {
        tenants: ids,
        org_id,
        label_policies,
    })
}

/// The one concrete tenant named by the realms, when there is exactly one and no wildcard.
pub fn default_tenant<'a>(
    realms: &[Realm],
    tenants: impl Iterator<Item = &'a Tenant> + Clone,
    cluster: &str,
) -> Option<String> {
    if realms.iter().any(|r| r.target == RealmTarget::AllTenants) {
        return None;
    }
    let mut one: Option<&Tenant> = None;
    for t in tenants.filter(|t| t.cluster == cluster && t.status == Status::Active) {
        if realms.iter().any(|r| r.matches(t)) {
            if one.is_some() {
                return None;
            }
            one = Some(t);
        }
    }
    one.map(|t| t.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::parse_selector;

    fn tenant(name: &str, cluster: &str, status: Status) -> Tenant {
        Tenant {
            name: name.into(),
            cluster: cluster.into(),
            status,
            org: Some("1".into()),
            stack: None,
        }
    }

    fn world() -> HashMap<String, Tenant> {
        let mut m = HashMap::new();
        for t in [
            tenant("team-a", "local", Status::Active),
            tenant("team-b", "local", Status::Active),
            tenant("gone", "local", Status::Inactive),
            tenant("far", "other-dc", Status::Active),
        ] {
            m.insert(t.name.clone(), t);
        }
        let mut s = tenant("stacked", "local", Status::Active);
        s.stack = Some("123".into());
        s.org = Some("9".into());
        m.insert(s.name.clone(), s);
        m
    }

    fn realm(target: RealmTarget, lp: &[&str]) -> Realm {
        Realm {
            target,
            cluster: "local".into(),
            label_policies: lp.iter().map(|s| parse_selector(s).unwrap()).collect(),
        }
    }

    fn ident(scopes: &[Scope], realms: Vec<Realm>) -> Identity {
        Identity {
            token_name: "t".into(),
            policy_name: "p".into(),
            active: true,
            expires_at: None,
            scopes: scopes.iter().copied().collect(),
            realms: realms.into(),
            allowed_subnets: Arc::from(Vec::new()),
            default_tenant: None,
            generation: 1,
            usage: Default::default(),
        }
    }

    fn facts<'a>(scope: Option<Scope>, tenant: Option<&'a str>) -> RequestFacts<'a> {
        RequestFacts {
            scope,
            label_policies_apply: false,
            client_ip: "127.0.0.1".parse().unwrap(),
            tenant_from_credentials: tenant,
            org_id_header: None,
            now_unix: 1_000,
        }
    }

    fn reason(r: Result<Allow<'_>, Deny>) -> DenyReason {
        r.unwrap_err().reason
    }

    #[test]
    fn allows_when_everything_matches() {
        let id = ident(
            &[Scope::MetricsWrite],
            vec![realm(RealmTarget::Tenant("team-a".into()), &[])],
        );
        let w = world();
        let a = decide(
            &id,
            &w,
            "local",
            &facts(Some(Scope::MetricsWrite), Some("team-a")),
        )
        .unwrap();
        assert_eq!(a.org_id, "team-a");
        assert!(a.label_policies.is_empty());
    }

    #[test]
    fn inactive_or_expired_identity_is_401_with_one_message() {
        let mut id = ident(
            &[Scope::MetricsRead],
            vec![realm(RealmTarget::AllTenants, &[])],
        );
        id.active = false;
        let d = decide(&id, &world(), "local", &facts(None, Some("team-a"))).unwrap_err();
        assert_eq!(
            (d.status(), d.message.as_str()),
            (401, INVALID_TOKEN_MESSAGE)
        );
        id.active = true;
        id.expires_at = Some(1_000);
        let d2 = decide(&id, &world(), "local", &facts(None, Some("team-a"))).unwrap_err();
        assert_eq!(d, d2, "expired and revoked look the same");
        id.expires_at = Some(1_001);
        assert!(decide(&id, &world(), "local", &facts(None, Some("team-a"))).is_ok());
    }

    #[test]
    fn subnet_outside_is_403_and_checked_before_tenant() {
        let mut id = ident(
            &[Scope::MetricsRead],
            vec![realm(RealmTarget::AllTenants, &[])],
        );
        id.allowed_subnets = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()].into();
        // no tenant at all: the subnet row comes first
        assert_eq!(
            reason(decide(&id, &world(), "local", &facts(None, None))),
            DenyReason::SubnetNotAllowed
        );
        let mut f = facts(None, Some("team-a"));
        f.client_ip = "10.1.2.3".parse().unwrap();
        assert!(decide(&id, &world(), "local", &f).is_ok());
        f.client_ip = "::1".parse().unwrap();
        assert!(decide(&id, &world(), "local", &f).is_ok());
    }

    #[test]
    fn tenant_resolution_order_and_failures_are_401() {
        let mut id = ident(
            &[Scope::MetricsRead],
            vec![realm(RealmTarget::AllTenants, &[])],
        );
        let w = world();
        assert_eq!(
            reason(decide(&id, &w, "local", &facts(None, None))),
            DenyReason::NoTenant
        );
        // header used when credentials carry none
        let mut f = facts(None, None);
        f.org_id_header = Some("team-b");
        assert_eq!(decide(&id, &w, "local", &f).unwrap().org_id, "team-b");
        // credentials' username wins over the header
        f.tenant_from_credentials = Some("team-a");
        assert_eq!(decide(&id, &w, "local", &f).unwrap().org_id, "team-a");
        // default tenant last
        id.default_tenant = Some("team-a".into());
        assert_eq!(
            decide(&id, &w, "local", &facts(None, None)).unwrap().org_id,
            "team-a"
        );
        for bad in ["a b", "..", "x\ny", &"a".repeat(151), "a||b", "a;b"] {
            assert_eq!(
                reason(decide(&id, &w, "local", &facts(None, Some(bad)))),
                DenyReason::InvalidTenant,
                "{bad:?}"
            );
        }
        for t in ["nobody", "gone", "far", "team-a|nobody"] {
            assert_eq!(
                reason(decide(&id, &w, "local", &facts(None, Some(t)))),
                DenyReason::UnknownTenant,
                "{t}"
            );
        }
        assert_eq!(DenyReason::UnknownTenant.status(), 401);
    }

    #[test]
    fn multi_tenant_is_sorted_deduplicated_and_each_checked() {
        let id = ident(
            &[Scope::MetricsRead],
            vec![
                realm(RealmTarget::Tenant("team-a".into()), &[]),
                realm(RealmTarget::Tenant("team-b".into()), &[]),
            ],
        );
        let w = world();
        let a = decide(&id, &w, "local", &facts(None, Some("team-b|team-a|team-b"))).unwrap();
        assert_eq!(a.org_id, "team-a|team-b");
        let id = ident(
            &[Scope::MetricsRead],
            vec![realm(RealmTarget::Tenant("team-a".into()), &[])],
        );
        let d = decide(&id, &world(), "local", &facts(None, Some("team-a|team-b"))).unwrap_err();
        assert_eq!((d.reason, d.status()), (DenyReason::TenantNotInRealm, 403));
        assert!(d.message.contains("team-b"));
    }

    #[test]
    fn realms_of_other_clusters_never_match_and_cloud_realms_do() {
        let mut r = realm(RealmTarget::AllTenants, &[]);
        r.cluster = "other-dc".into();
        let id = ident(&[Scope::MetricsRead], vec![r]);
        assert_eq!(
            reason(decide(&id, &world(), "local", &facts(None, Some("team-a")))),
            DenyReason::TenantNotInRealm
        );
        let id = ident(
            &[Scope::MetricsRead],
            vec![realm(RealmTarget::Stack("123".into()), &[])],
        );
        assert!(decide(&id, &world(), "local", &facts(None, Some("stacked"))).is_ok());
        assert_eq!(
            reason(decide(&id, &world(), "local", &facts(None, Some("team-a")))),
            DenyReason::TenantNotInRealm
        );
        let id = ident(
            &[Scope::MetricsRead],
            vec![realm(RealmTarget::Org("1".into()), &[])],
        );
        assert!(decide(&id, &world(), "local", &facts(None, Some("team-a"))).is_ok());
        assert_eq!(
            reason(decide(
                &id,
                &world(),
                "local",
                &facts(None, Some("stacked"))
            )),
            DenyReason::TenantNotInRealm
        );
    }

    #[test]
    fn missing_scope_is_403_naming_the_scope_and_comes_after_realms() {
        let id = ident(
            &[Scope::MetricsRead],
            vec![realm(RealmTarget::Tenant("team-a".into()), &[])],
        );
        let d = decide(
            &id,
            &world(),
            "local",
            &facts(Some(Scope::MetricsWrite), Some("team-a")),
        )
        .unwrap_err();
        assert_eq!((d.reason, d.status()), (DenyReason::MissingScope, 403));
        assert!(d.message.contains("metrics:write"));
        // wrong tenant and wrong scope: the realm row is reported
        let d = decide(
            &id,
            &world(),
            "local",
            &facts(Some(Scope::MetricsWrite), Some("team-b")),
        )
        .unwrap_err();
        assert_eq!(d.reason, DenyReason::TenantNotInRealm);
        // a route without scope needs only a valid token
        assert!(decide(&id, &world(), "local", &facts(None, Some("team-a"))).is_ok());
    }

    #[test]
    fn label_policies_union_over_matching_realms_unless_one_is_unrestricted() {
        let id = ident(
            &[Scope::MetricsRead],
            vec![
                realm(RealmTarget::Tenant("team-a".into()), &[r#"{env="prod"}"#]),
                realm(RealmTarget::AllTenants, &[r#"{team="a"}"#]),
                realm(RealmTarget::Tenant("team-b".into()), &[]),
            ],
        );
        let mut f = facts(Some(Scope::MetricsRead), Some("team-a|team-b"));
        f.label_policies_apply = true;
        let w = world();
        let a = decide(&id, &w, "local", &f).unwrap();
        assert_eq!(a.label_policies.len(), 1, "team-b is unrestricted");
        assert_eq!(a.label_policies[0].0, "team-a");
        assert_eq!(a.label_policies[0].1.len(), 2);
        f.label_policies_apply = false;
        assert!(
            decide(&id, &world(), "local", &f)
                .unwrap()
                .label_policies
                .is_empty()
        );
    }

    #[test]
    fn role_scopes() {
        let v = ScopeSet::for_role(Role::Viewer);
        assert!(
            v.contains(Scope::MetricsRead)
                && v.contains(Scope::RulesRead)
                && !v.contains(Scope::MetricsWrite)
        );
        let e = ScopeSet::for_role(Role::Editor);
        assert!(
            e.contains(Scope::LogsDelete)
                && e.contains(Scope::TracesWrite)
                && !e.contains(Scope::Admin)
        );
        let a = ScopeSet::for_role(Role::Admin);
        assert!(a.contains(Scope::Admin) && a.contains(Scope::MetricsRead));
    }

    #[test]
    fn default_tenant_only_when_exactly_one() {
        let w = world();
        let one = [realm(RealmTarget::Tenant("team-a".into()), &[])];
        assert_eq!(
            default_tenant(&one, w.values(), "local"),
            Some("team-a".into())
        );
        let two = [
            realm(RealmTarget::Tenant("team-a".into()), &[]),
            realm(RealmTarget::Tenant("team-b".into()), &[]),
        ];
        assert_eq!(default_tenant(&two, w.values(), "local"), None);
        assert_eq!(
            default_tenant(&[realm(RealmTarget::AllTenants, &[])], w.values(), "local"),
            None
        );
        let stack = [realm(RealmTarget::Stack("123".into()), &[])];
        assert_eq!(
            default_tenant(&stack, w.values(), "local"),
            Some("stacked".into())
        );
    }

    #[test]
    fn tenant_id_rules_follow_dskit() {
        assert!(valid_tenant_id("a-b_c.d!e*f'g(h)"));
        assert!(!valid_tenant_id("."));
        assert!(!valid_tenant_id(".."));
        assert!(!valid_tenant_id(""));
        assert!(!valid_tenant_id("a/b"));
        assert!(valid_tenant_id(&"a".repeat(150)));
        assert_eq!(
            parse_tenant_ids("b|a|b"),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(parse_tenant_ids("a|"), None);
    }
}
