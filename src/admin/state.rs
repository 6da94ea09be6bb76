//! Admin changes as data: a change is a list of operations, each the new value of one object
//! (or its removal), so that a write costs the same however many objects exist, and the same
//! change can be stored in the change log and applied by every replica.
//!
//! Applying an operation updates [`ApiState`] and yields the data-plane [`Change`]s it implies
//! (one or two per operation; a service account's rename also re-keys its tokens).

use super::{ApiState, PolicyObj, TenantObj, TokenObj, cloud, expiry, sa, stored_selector};
use crate::policy::{AccessPolicy, Realm, RealmTarget, Scope, Status, Tenant};
use crate::store::{Change, Overlay, TokenOwner, TokenRecord};
use crate::token::TokenHash;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// Which tokens each Cloud policy and service account owns, so that a name check, a delete or
/// a rename touches only the owner's tokens, never all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owners {
    pub cloud: HashMap<String, BTreeSet<String>>,
    pub sa: HashMap<u64, BTreeSet<u64>>,
}

/// Moves token `id` from `old` owner's set to `new` owner's (either may be absent).
fn relink<K: Eq + std::hash::Hash, V: Ord + Clone>(
    m: &mut HashMap<K, BTreeSet<V>>,
    old: Option<K>,
    new: Option<K>,
    id: &V,
) {
    if let Some(k) = old
        && let Some(set) = m.get_mut(&k)
    {
        set.remove(id);
        if set.is_empty() {
            m.remove(&k);
        }
    }
    if let Some(k) = new {
        m.entry(k).or_default().insert(id.clone());
    }
}

/// One of [`ApiState`]'s maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Collection {
    Tenants,
    AccessPolicies,
    Tokens,
    CloudPolicies,
    CloudTokens,
    ServiceAccounts,
    SaTokens,
}

/// The new value of one object (`v` absent: the object is removed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Op {
    pub c: Collection,
    pub k: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<Value>,
}

/// One entry of the change log: what one admin request changed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChangeDoc {
    pub ops: Vec<Op>,
    /// The service-account id counter after the change, when it moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_id: Option<u64>,
    /// Who made it (a token name, never a secret) and when: for operators reading the log.
    #[serde(default)]
    pub actor: String,
    #[serde(default)]
    pub at: String,
}

/// The operations an admin request plans, built from the state it read.
#[derive(Debug, Default)]
pub struct Tx {
    pub ops: Vec<Op>,
    pub next_id: Option<u64>,
}

impl Tx {
    pub fn put<T: Serialize>(&mut self, c: Collection, k: impl ToString, v: &T) {
        let v = serde_json::to_value(v).expect("admin objects serialise");
        self.ops.push(Op {
            c,
            k: k.to_string(),
            v: Some(v),
        });
    }

    pub fn delete(&mut self, c: Collection, k: impl ToString) {
        self.ops.push(Op {
            c,
            k: k.to_string(),
            v: None,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.next_id.is_none()
    }
}

fn tenant_rec(name: &str, t: &TenantObj) -> Tenant {
    Tenant {
        name: name.to_string(),
        cluster: t.cluster.clone(),
        status: t.status,
        org: None,
        stack: None,
    }
}

fn policy_rec(name: &str, p: &PolicyObj) -> AccessPolicy {
    AccessPolicy {
        name: name.to_string(),
        display_name: p.display_name.clone(),
        status: p.status,
        scopes: p.scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
        realms: p
            .realms
            .iter()
            .map(|r| Realm {
                target: if r.tenant == "*" {
                    RealmTarget::AllTenants
                } else {
                    RealmTarget::Tenant(r.tenant.clone())
                },
                cluster: r.cluster.clone(),
                label_policies: r
                    .label_policies
                    .iter()
                    .map(|t| stored_selector(t))
                    .collect(),
            })
            .collect::<Vec<_>>()
            .into(),
        allowed_subnets: Arc::from(Vec::new()),
        // GEM v1: the policy's tokens expire with it
        expires_at: expiry(p.expiration.as_deref()),
    }
}

fn cloud_policy_rec(p: &cloud::CloudPolicy, cluster: &str) -> AccessPolicy {
    AccessPolicy {
        name: p.name.clone(),
        display_name: Some(p.display_name.clone()),
        status: p.status,
        scopes: p.scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
        realms: p
            .realms
            .iter()
            .map(|r| Realm {
                target: if r.kind == "org" {
                    RealmTarget::Org(r.identifier.clone())
                } else {
                    RealmTarget::Stack(r.identifier.clone())
                },
                cluster: cluster.to_string(),
                // validated when saved; one that no longer parses matches nothing (a realm
                // left without its policies would be unrestricted: fail closed)
                label_policies: r
                    .label_policies
                    .iter()
                    .map(|s| stored_selector(s))
                    .collect(),
            })
            .collect::<Vec<_>>()
            .into(),
        allowed_subnets: p
            .allowed_subnets
            .iter()
            .filter_map(|s| crate::config::Cidr::parse(s).ok())
            .collect::<Vec<_>>()
            .into(),
        expires_at: None,
    }
}

fn sa_rec(s: &sa::SaObj) -> crate::policy::ServiceAccount {
    crate::policy::ServiceAccount {
        name: s.name.clone(),
        role: s.role,
        org: s.org_id.clone(),
        disabled: s.disabled,
        access_policy: None,
    }
}

/// A token record; `None` when its hash does not parse (it then matches nothing: fail closed).
fn token_rec(name: &str, t: &TokenObj) -> Option<TokenRecord> {
    Some(TokenRecord {
        name: name.to_string(),
        owner: TokenOwner::Policy(t.access_policy.clone()),
        status: t.status,
        expires_at: expiry(t.expiration.as_deref()),
        hash: TokenHash::parse_stored(&t.hash)?,
    })
}

fn hash_of(stored: &str) -> Option<[u8; 32]> {
    TokenHash::parse_stored(stored).map(|h| h.0)
}

impl ApiState {
    /// Rebuilds the derived indexes (after a checkpoint or an old state file is read).
    pub fn reindex(&mut self) {
        let mut o = Owners::default();
        for (id, t) in &self.cloud_tokens {
            o.cloud
                .entry(t.access_policy_id.clone())
                .or_default()
                .insert(id.clone());
        }
        for (id, t) in &self.sa_tokens {
            o.sa.entry(t.service_account).or_default().insert(*id);
        }
        self.owners = o;
    }

    /// The ids of a Cloud policy's tokens.
    pub fn cloud_tokens_of<'a>(&'a self, policy: &str) -> impl Iterator<Item = &'a String> + 'a {
        self.owners.cloud.get(policy).into_iter().flatten()
    }

    /// The ids of a service account's tokens.
    pub fn sa_tokens_of(&self, account: u64) -> impl Iterator<Item = &u64> + '_ {
        self.owners.sa.get(&account).into_iter().flatten()
    }

    fn cloud_token_rec(&self, t: &cloud::CloudToken) -> Option<TokenRecord> {
        let p = self.cloud_policies.get(&t.access_policy_id)?;
        Some(TokenRecord {
            name: t.name.clone(),
            owner: TokenOwner::Policy(p.name.clone()),
            status: Status::Active,
            expires_at: expiry(t.expires_at.as_deref()),
            hash: TokenHash::parse_stored(&t.hash)?,
        })
    }

    fn sa_token_rec(&self, t: &sa::SaTokenObj) -> Option<TokenRecord> {
        let owner = self.service_accounts.get(&t.service_account)?;
        Some(TokenRecord {
            name: t.name.clone(),
            owner: TokenOwner::ServiceAccount(owner.name.clone()),
            status: Status::Active,
            expires_at: expiry(t.expiration.as_deref()),
            hash: TokenHash::parse_stored(&t.hash)?,
        })
    }

    /// The data-plane objects these stand for (O(n): at start and after a checkpoint load).
    /// `cluster` is this gateway's: Cloud realms (org, stack) match tenants of it.
    pub fn overlay(&self, cluster: &str) -> Overlay {
        let mut o = Overlay::default();
        for (name, t) in &self.tenants {
            o.tenants.insert(name.clone(), tenant_rec(name, t));
        }
        for (name, p) in &self.access_policies {
            o.policies
                .insert(name.clone(), Arc::new(policy_rec(name, p)));
        }
        for p in self.cloud_policies.values() {
            o.policies
                .insert(p.name.clone(), Arc::new(cloud_policy_rec(p, cluster)));
        }
        for s in self.service_accounts.values() {
            o.service_accounts.insert(s.name.clone(), sa_rec(s));
        }
        let tokens = self
            .tokens
            .iter()
            .filter_map(|(n, t)| token_rec(n, t))
            .chain(
                self.cloud_tokens
                    .values()
                    .filter_map(|t| self.cloud_token_rec(t)),
            )
            .chain(self.sa_tokens.values().filter_map(|t| self.sa_token_rec(t)));
        for t in tokens {
            o.tokens.insert(t.hash.0, t);
        }
        o
    }

    /// Whether every operation of a change parses as its collection's type (what
    /// [`ApiState::apply`] will need): checked before a change is written.
    pub fn check(doc: &ChangeDoc) -> Result<(), String> {
        doc.ops.iter().try_for_each(|op| Parsed::of(op).map(|_| ()))
    }

    /// Applies one logged change; what changed in force is added to `out`. An operation whose
    /// value does not parse is an error and nothing of the change is applied.
    pub fn apply(
        &mut self,
        doc: &ChangeDoc,
        cluster: &str,
        out: &mut Vec<Change>,
    ) -> Result<(), String> {
        // parse everything first: a change is applied whole or not at all
        let mut parsed = Vec::with_capacity(doc.ops.len());
        for op in &doc.ops {
            parsed.push(Parsed::of(op)?);
        }
        for p in parsed {
            self.apply_one(p, cluster, out);
        }
        if let Some(n) = doc.next_id {
            self.next_id = self.next_id.max(n);
        }
        Ok(())
    }

    fn apply_one(&mut self, p: Parsed, cluster: &str, out: &mut Vec<Change>) {
        match p {
            Parsed::Tenant(k, v) => {
                out.push(Change::Tenant(
                    k.clone(),
                    v.as_ref().map(|t| tenant_rec(&k, t)),
                ));
                put(&mut self.tenants, k, v);
            }
            Parsed::Policy(k, v) => {
                out.push(Change::Policy(
                    k.clone(),
                    v.as_ref().map(|p| policy_rec(&k, p)),
                ));
                put(&mut self.access_policies, k, v);
            }
            Parsed::Token(k, v) => {
                let old = self.tokens.get(&k).and_then(|t| hash_of(&t.hash));
                let new = v.as_ref().and_then(|t| token_rec(&k, t));
                token_changes(old, new, out);
                put(&mut self.tokens, k, v);
            }
            Parsed::CloudPolicy(k, v) => {
                let old_name = self.cloud_policies.get(&k).map(|p| p.name.clone());
                let new_name = v.as_ref().map(|p| p.name.clone());
                if let Some(o) = &old_name
                    && new_name.as_ref() != Some(o)
                {
                    out.push(Change::Policy(o.clone(), None));
                }
                if let Some(p) = &v {
                    out.push(Change::Policy(
                        p.name.clone(),
                        Some(cloud_policy_rec(p, cluster)),
                    ));
                }
                put(&mut self.cloud_policies, k.clone(), v);
                // tokens resolve to the policy's name: a new name (the API never renames, and
                // never creates a token before its policy, but a log is read as written) is
                // given to the policy's tokens
                if old_name != new_name {
                    for t in self
                        .cloud_tokens_of(&k)
                        .filter_map(|id| self.cloud_tokens.get(id))
                    {
                        if let Some(h) = hash_of(&t.hash) {
                            out.push(Change::Token(h, self.cloud_token_rec(t)));
                        }
                    }
                }
            }
            Parsed::CloudToken(k, v) => {
                let old = self.cloud_tokens.get(&k).and_then(|t| hash_of(&t.hash));
                let new = v.as_ref().and_then(|t| self.cloud_token_rec(t));
                token_changes(old, new, out);
                let old_owner = self
                    .cloud_tokens
                    .get(&k)
                    .map(|o| o.access_policy_id.clone());
                let new_owner = v.as_ref().map(|t| t.access_policy_id.clone());
                relink(&mut self.owners.cloud, old_owner, new_owner, &k);
                put(&mut self.cloud_tokens, k, v);
            }
            Parsed::ServiceAccount(id, v) => {
                let old_name = self.service_accounts.get(&id).map(|s| s.name.clone());
                let new_name = v.as_ref().map(|s| s.name.clone());
                if let Some(o) = &old_name
                    && new_name.as_ref() != Some(o)
                {
                    out.push(Change::ServiceAccount(o.clone(), None));
                }
                if let Some(s) = &v {
                    out.push(Change::ServiceAccount(s.name.clone(), Some(sa_rec(s))));
                }
                put(&mut self.service_accounts, id, v);
                // a rename (PATCH name) re-keys the account's tokens, and only them
                if old_name != new_name {
                    for t in self
                        .sa_tokens_of(id)
                        .filter_map(|tid| self.sa_tokens.get(tid))
                    {
                        if let Some(h) = hash_of(&t.hash) {
                            out.push(Change::Token(h, self.sa_token_rec(t)));
                        }
                    }
                }
            }
            Parsed::SaToken(id, v) => {
                let old = self.sa_tokens.get(&id).and_then(|t| hash_of(&t.hash));
                let new = v.as_ref().and_then(|t| self.sa_token_rec(t));
                token_changes(old, new, out);
                let old_owner = self.sa_tokens.get(&id).map(|o| o.service_account);
                let new_owner = v.as_ref().map(|t| t.service_account);
                relink(&mut self.owners.sa, old_owner, new_owner, &id);
                put(&mut self.sa_tokens, id, v);
            }
        }
    }
}

fn token_changes(old: Option<[u8; 32]>, new: Option<TokenRecord>, out: &mut Vec<Change>) {
    if let Some(o) = old
        && new.as_ref().is_none_or(|n| n.hash.0 != o)
    {
        out.push(Change::Token(o, None));
    }
    if let Some(n) = new {
        out.push(Change::Token(n.hash.0, Some(n)));
    }
}

fn put<K: Ord, V>(m: &mut std::collections::BTreeMap<K, V>, k: K, v: Option<V>) {
    match v {
        Some(v) => {
            m.insert(k, v);
        }
        None => {
            m.remove(&k);
        }
    }
}

/// An operation with its value parsed into the collection's type.
enum Parsed {
    Tenant(String, Option<TenantObj>),
    Policy(String, Option<PolicyObj>),
    Token(String, Option<TokenObj>),
    CloudPolicy(String, Option<cloud::CloudPolicy>),
    CloudToken(String, Option<cloud::CloudToken>),
    ServiceAccount(u64, Option<sa::SaObj>),
    SaToken(u64, Option<sa::SaTokenObj>),
}

impl Parsed {
    fn of(op: &Op) -> Result<Parsed, String> {
        fn v<T: serde::de::DeserializeOwned>(op: &Op) -> Result<Option<T>, String> {
            op.v.as_ref()
                .map(|v| T::deserialize(v))
                .transpose()
                .map_err(|e| format!("{:?} {:?}: {e}", op.c, op.k))
        }
        let id = || {
            op.k.parse::<u64>()
                .map_err(|_| format!("{:?} key {:?} is not a number", op.c, op.k))
        };
        let k = op.k.clone();
        Ok(match op.c {
            Collection::Tenants => Parsed::Tenant(k, v(op)?),
            Collection::AccessPolicies => Parsed::Policy(k, v(op)?),
            Collection::Tokens => Parsed::Token(k, v(op)?),
            Collection::CloudPolicies => Parsed::CloudPolicy(k, v(op)?),
            Collection::CloudTokens => Parsed::CloudToken(k, v(op)?),
            Collection::ServiceAccounts => Parsed::ServiceAccount(id()?, v(op)?),
            Collection::SaTokens => Parsed::SaToken(id()?, v(op)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::{RealmObj, TokenObj};
    use crate::store::{Snapshot, Store};

    fn store() -> Store {
        Store::new(
            Snapshot::empty("local"),
            1000,
            std::time::Duration::from_secs(600),
            Arc::new(crate::telemetry::Metrics::new()),
        )
    }

    fn token(policy: &str, secret: &str, status: Status, exp: Option<&str>) -> TokenObj {
        TokenObj {
            version: 1,
            created_at: "2026-01-01T00:00:00Z".into(),
            created_by: "t".into(),
            display_name: None,
            status,
            access_policy: policy.into(),
            expiration: exp.map(str::to_string),
            hash: TokenHash::of(secret).stored(),
        }
    }

    /// What a snapshot says about every token, tenant, policy and service account.
    fn view(s: &Snapshot, secrets: &[String]) -> Vec<String> {
        let mut v: Vec<String> = secrets
            .iter()
            .map(|t| match s.lookup(&TokenHash::of(t)) {
                None => format!("{t}: none"),
                Some(r) => {
                    let id = s.resolve(r);
                    format!(
                        "{t}: {} {:?} active={} exp={:?} policy={}",
                        r.name, r.owner, id.active, id.expires_at, id.policy_name
                    )
                }
            })
            .collect();
        let mut ts: Vec<_> = s
            .tenants
            .iter()
            .map(|(k, t)| format!("tenant {k} {t:?}"))
            .collect();
        let mut ps: Vec<_> = s
            .policies
            .iter()
            .map(|(k, p)| format!("policy {k} {p:?}"))
            .collect();
        let mut ss: Vec<_> = s
            .service_accounts
            .iter()
            .map(|(k, a)| format!("sa {k} {a:?}"))
            .collect();
        ts.sort();
        ps.sort();
        ss.sort();
        v.extend(ts);
        v.extend(ps);
        v.extend(ss);
        v.push(format!("{:?}", s.counts()));
        v
    }

    /// Random admin changes applied one by one to the set in force give the same set as one
    /// rebuilt from the whole state: the incremental path loses and keeps nothing extra.
    #[test]
    fn incremental_changes_match_a_full_rebuild() {
        let mut x: u64 = 0x2545f4914f6cdd1d;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut state = ApiState::default();
        let live = store();
        // one secret per (object, variant): two objects never share a hash, as with real,
        // random secrets
        let mut secrets: Vec<String> = Vec::new();
        for v in 0..3 {
            secrets.extend((0..20).map(|n| format!("glc_tok{n}_{v}")));
            secrets.extend((0..10).map(|n| format!("glc_ct{n}_{v}")));
            secrets.extend((0..10).map(|n| format!("glc_sa{n}_{v}")));
        }
        for step in 0..3000 {
            let mut tx = Tx::default();
            for _ in 0..1 + rnd(3) {
                let k = rnd(6);
                match rnd(7) {
                    0 => {
                        let t = TenantObj {
                            version: 1,
                            created_at: "x".into(),
                            display_name: None,
                            status: if rnd(2) == 0 {
                                Status::Active
                            } else {
                                Status::Inactive
                            },
                            cluster: "local".into(),
                        };
                        if rnd(4) == 0 {
                            tx.delete(Collection::Tenants, format!("ten{k}"));
                        } else {
                            tx.put(Collection::Tenants, format!("ten{k}"), &t);
                        }
                    }
                    1 => {
                        let p = PolicyObj {
                            version: 1,
                            created_at: "x".into(),
                            display_name: None,
                            status: Status::Active,
                            realms: vec![RealmObj {
                                tenant: format!("ten{}", rnd(6)),
                                cluster: "local".into(),
                                label_policies: vec![],
                            }],
                            scopes: vec!["metrics:read".into()],
                            expiration: (rnd(3) == 0).then(|| "2030-01-01T00:00:00Z".into()),
                        };
                        if rnd(4) == 0 {
                            tx.delete(Collection::AccessPolicies, format!("pol{k}"));
                        } else {
                            tx.put(Collection::AccessPolicies, format!("pol{k}"), &p);
                        }
                    }
                    2 | 3 => {
                        let n = rnd(20);
                        let name = format!("tok{n}");
                        if rnd(4) == 0 {
                            tx.delete(Collection::Tokens, name);
                        } else {
                            let secret = &format!("glc_tok{n}_{}", rnd(3));
                            let st = if rnd(3) == 0 {
                                Status::Inactive
                            } else {
                                Status::Active
                            };
                            let exp = (rnd(3) == 0).then_some("2031-01-01T00:00:00Z");
                            tx.put(
                                Collection::Tokens,
                                name,
                                &token(&format!("pol{k}"), secret, st, exp),
                            );
                        }
                    }
                    4 => {
                        let p = cloud::CloudPolicy {
                            name: format!("cpol{k}"),
                            display_name: "d".into(),
                            region: "r".into(),
                            org_id: "1".into(),
                            scopes: vec!["logs:read".into()],
                            realms: vec![],
                            allowed_subnets: vec![],
                            status: Status::Active,
                            created_at: "x".into(),
                            updated_at: "x".into(),
                        };
                        if rnd(4) == 0 {
                            tx.delete(Collection::CloudPolicies, format!("id{k}"));
                        } else {
                            tx.put(Collection::CloudPolicies, format!("id{k}"), &p);
                        }
                    }
                    5 => {
                        let n = rnd(10);
                        let t = cloud::CloudToken {
                            name: format!("ct{k}"),
                            display_name: "d".into(),
                            access_policy_id: format!("id{}", rnd(6)),
                            expires_at: None,
                            hash: TokenHash::of(&format!("glc_ct{n}_{}", rnd(3))).stored(),
                            created_at: "x".into(),
                            updated_at: "x".into(),
                        };
                        if rnd(4) == 0 {
                            tx.delete(Collection::CloudTokens, format!("ct{n}"));
                        } else {
                            tx.put(Collection::CloudTokens, format!("ct{n}"), &t);
                        }
                    }
                    _ => {
                        if rnd(2) == 0 {
                            // renames included: the account's tokens follow
                            let s = sa::SaObj {
                                // unique per account, as the API keeps them
                                name: format!("sa{k}_{}", rnd(2)),
                                role: crate::policy::Role::Viewer,
                                org_id: "1".into(),
                                disabled: rnd(3) == 0,
                                created_at: "x".into(),
                                updated_at: "x".into(),
                            };
                            tx.put(Collection::ServiceAccounts, k, &s);
                        } else {
                            let n = rnd(10);
                            let t = sa::SaTokenObj {
                                service_account: rnd(6),
                                name: "n".into(),
                                hash: TokenHash::of(&format!("glc_sa{n}_{}", rnd(3))).stored(),
                                created: "x".into(),
                                expiration: None,
                            };
                            tx.put(Collection::SaTokens, 100 + n, &t);
                        }
                    }
                }
            }
            let doc = ChangeDoc {
                ops: tx.ops,
                next_id: None,
                actor: "t".into(),
                at: "x".into(),
            };
            // through JSON, as the log stores it
            let doc: ChangeDoc =
                serde_json::from_str(&serde_json::to_string(&doc).unwrap()).unwrap();
            let mut out = Vec::new();
            state.apply(&doc, "local", &mut out).unwrap();
            live.apply(&out);
            if step % 50 == 0 || step == 2999 {
                let mut again = state.clone();
                again.reindex();
                assert_eq!(
                    again.owners, state.owners,
                    "the owner index after step {step}"
                );
                let rebuilt = store();
                rebuilt.set_overlay(state.overlay("local"));
                assert_eq!(
                    view(&live.snapshot(), &secrets),
                    view(&rebuilt.snapshot(), &secrets),
                    "after step {step}"
                );
            }
        }
    }

    #[test]
    fn an_unreadable_change_is_refused_whole() {
        let mut state = ApiState::default();
        let mut tx = Tx::default();
        tx.put(
            Collection::Tokens,
            "ok",
            &token("p", "glc_a", Status::Active, None),
        );
        tx.ops.push(Op {
            c: Collection::Tenants,
            k: "bad".into(),
            v: Some(serde_json::json!({"version": "not a number"})),
        });
        let doc = ChangeDoc {
            ops: tx.ops,
            ..Default::default()
        };
        let mut out = Vec::new();
        assert!(state.apply(&doc, "local", &mut out).is_err());
        assert!(state.tokens.is_empty() && out.is_empty());
    }
}
