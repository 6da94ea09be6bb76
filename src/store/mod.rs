//! The policy store: an immutable [`Snapshot`] swapped atomically (no lock on the request
//! path) and a bounded cache of resolved tokens that never outlives the snapshot it came from.

pub(crate) mod json;
pub mod layered;
pub mod load;
pub mod watch;

use crate::policy::{
    AccessPolicy, Identity, Realm, RealmTarget, ScopeSet, ServiceAccount, Status, Tenant,
    default_tenant,
};
use crate::telemetry::Metrics;
use crate::token::TokenHash;
use arc_swap::ArcSwap;
use layered::Layered;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use load::Counts;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenOwner {
    Policy(String),
    ServiceAccount(String),
}

#[derive(Debug, Clone)]
pub struct TokenRecord {
    pub name: String,
    pub owner: TokenOwner,
    pub status: Status,
    /// Unix seconds; `None` = never.
    pub expires_at: Option<i64>,
    pub hash: TokenHash,
}

/// The tokens of a snapshot: a base sorted by hash (a binary search on the prefix, then a
/// constant-time compare) and a delta of admin changes since the base was built, keyed by hash.
#[derive(Debug, Clone, Default)]
struct TokenIndex {
    base: Arc<Vec<TokenRecord>>,
    delta: HashMap<[u8; 32], Option<TokenRecord>>,
    len: usize,
}

impl TokenIndex {
    fn new(mut tokens: Vec<TokenRecord>) -> TokenIndex {
        tokens.sort_unstable_by_key(|a| a.hash.0);
        TokenIndex {
            len: tokens.len(),
            base: Arc::new(tokens),
            delta: HashMap::new(),
        }
    }

    fn base_lookup(&self, h: &TokenHash) -> Option<&TokenRecord> {
        let p = h.prefix();
        let start = self.base.partition_point(|t| t.hash.prefix() < p);
        self.base[start..]
            .iter()
            .take_while(|t| t.hash.prefix() == p)
            .find(|t| t.hash.ct_eq(h))
    }

    fn lookup(&self, h: &TokenHash) -> Option<&TokenRecord> {
        match self.delta.get(&h.0) {
            Some(rec) => rec.as_ref().filter(|r| r.hash.ct_eq(h)),
            None => self.base_lookup(h),
        }
    }

    fn with_changes(
        &self,
        changes: impl IntoIterator<Item = ([u8; 32], Option<TokenRecord>)>,
    ) -> Self {
        let mut next = self.clone();
        for (k, v) in changes {
            let had = next.lookup(&TokenHash(k)).is_some();
            match (&v, had) {
                (Some(_), false) => next.len += 1,
                (None, true) => next.len -= 1,
                _ => {}
            }
            if v.is_none() && next.base_lookup(&TokenHash(k)).is_none() {
                next.delta.remove(&k);
            } else {
                next.delta.insert(k, v);
            }
        }
        if next.delta.len() > layered::fold_limit(next.base.len()) {
            let delta = std::mem::take(&mut next.delta);
            let mut all: Vec<TokenRecord> = next
                .base
                .iter()
                .filter(|t| !delta.contains_key(&t.hash.0))
                .cloned()
                .collect();
            all.extend(delta.into_values().flatten());
            next = TokenIndex::new(all);
        }
        next
    }
}

/// One consistent, validated policy set. Never mutated after it is built: an admin change
/// makes a new one that shares the unchanged part ([`Layered`]).
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub cluster: String,
    pub clusters: Vec<String>,
    pub tenants: Layered<String, Tenant>,
    pub policies: Layered<String, Arc<AccessPolicy>>,
    pub service_accounts: Layered<String, ServiceAccount>,
    tokens: TokenIndex,
}

impl Snapshot {
    pub fn new(
        cluster: String,
        clusters: Vec<String>,
        tenants: HashMap<String, Tenant>,
        policies: HashMap<String, Arc<AccessPolicy>>,
        service_accounts: HashMap<String, ServiceAccount>,
        tokens: Vec<TokenRecord>,
    ) -> Snapshot {
        Snapshot {
            generation: 0,
            cluster,
            clusters,
            tenants: tenants.into(),
            policies: policies.into(),
            service_accounts: service_accounts.into(),
            tokens: TokenIndex::new(tokens),
        }
    }

    /// An empty set for `cluster` (what runs before the first successful load).
    pub fn empty(cluster: &str) -> Snapshot {
        Snapshot::new(
            cluster.to_string(),
            vec![cluster.to_string()],
            HashMap::new(),
            HashMap::new(),
            HashMap::new(),
            Vec::new(),
        )
    }

    pub fn counts(&self) -> Counts {
        Counts {
            clusters: self.clusters.len(),
            tenants: self.tenants.len(),
            access_policies: self.policies.len(),
            service_accounts: self.service_accounts.len(),
            tokens: self.tokens.len,
        }
    }

    /// The tokens of a set built in one piece (a policy-file load). Admin changes made since
    /// are not in it: use [`Snapshot::lookup`] for those.
    pub fn tokens(&self) -> &[TokenRecord] {
        &self.tokens.base
    }

    /// Finds the token whose stored hash equals `h`. The index narrows candidates by prefix;
    /// the final equality is constant-time.
    pub fn lookup(&self, h: &TokenHash) -> Option<&TokenRecord> {
        self.tokens.lookup(h)
    }
    /// Flattens a token, its policy or service account into what `decide` needs.
    pub fn resolve(&self, rec: &TokenRecord) -> Identity {
        type Grant = (String, ScopeSet, Arc<[Realm]>, Arc<[ipnet::IpNet]>);
        let nothing = |name: &str| -> Grant {
            (
                name.to_string(),
                ScopeSet::default(),
                Arc::from(Vec::new()),
                Arc::from(Vec::new()),
            )
        };
        let of_policy = |p: &AccessPolicy| -> Grant {
            (
                p.name.clone(),
                p.scopes,
                p.realms.clone(),
                p.allowed_subnets.clone(),
            )
        };
        let mut active = rec.status == Status::Active;
        let mut policy_expiry = None;
        let (policy_name, scopes, realms, subnets): Grant = match &rec.owner {
            TokenOwner::Policy(name) => match self.policies.get(name) {
                Some(p) => {
                    active &= p.status == Status::Active;
                    policy_expiry = p.expires_at;
                    of_policy(p)
                }
                None => {
                    active = false;
                    nothing(name)
                }
            },
            TokenOwner::ServiceAccount(name) => match self.service_accounts.get(name) {
                None => {
                    active = false;
                    nothing(name)
                }
                Some(sa) => {
                    active &= !sa.disabled;
                    match sa.access_policy.as_ref().map(|p| self.policies.get(p)) {
                        Some(Some(p)) => {
                            active &= p.status == Status::Active;
                            of_policy(p)
                        }
                        // names a policy that is not there: fail closed
                        Some(None) => {
                            active = false;
                            nothing(name)
                        }
                        None => (
                            format!("serviceaccount:{}", sa.name),
                            ScopeSet::for_role(sa.role),
                            Arc::from(vec![Realm {
                                target: RealmTarget::Org(sa.org.clone()),
                                cluster: self.cluster.clone(),
                                label_policies: Vec::new(),
                            }]),
                            Arc::from(Vec::new()),
                        ),
                    }
                }
            },
        };
        let default_tenant = default_tenant(&realms, self.tenants.values(), &self.cluster);
        Identity {
            token_name: rec.name.clone(),
            policy_name,
            active,
            // the earlier of the token's expiration and its policy's
            expires_at: [rec.expires_at, policy_expiry].into_iter().flatten().min(),
            scopes,
            realms,
            allowed_subnets: subnets,
            default_tenant,
            generation: self.generation,
            usage: Default::default(),
        }
    }
}

/// The live store: current snapshot plus the resolved-token cache.
pub struct Store {
    snapshot: ArcSwap<Snapshot>,
    /// What the set in force is built from: the last good load of the policy files, and the
    /// objects created through the admin API.
    sources: std::sync::Mutex<Sources>,
    cache: moka::sync::Cache<[u8; 32], Arc<Identity>>,
    /// First/last use per token hash; survives snapshot changes (not restarts).
    usage: std::sync::Mutex<HashMap<[u8; 32], Arc<crate::policy::Usage>>>,
    next_generation: AtomicU64,
    metrics: Arc<Metrics>,
}

struct Sources {
    files: Arc<Snapshot>,
    admin: Overlay,
    /// `false` while the admin objects are withheld (the admin store is past its maximum
    /// staleness): only the policy files are in force.
    admin_in_force: bool,
}

/// Objects created through the admin API, in data-plane form, merged over the file-defined set.
/// A name defined in a policy file wins: the API refuses to create it, and a file that later
/// defines it shadows the API object (with a warning).
#[derive(Debug, Default, Clone)]
pub struct Overlay {
    pub tenants: HashMap<String, Tenant>,
    pub policies: HashMap<String, Arc<AccessPolicy>>,
    pub service_accounts: HashMap<String, ServiceAccount>,
    /// By hash: tokens are told apart by their secrets, not their names.
    pub tokens: HashMap<[u8; 32], TokenRecord>,
}

/// One change to the admin objects in force (`None` removes).
#[derive(Debug, Clone)]
pub enum Change {
    Tenant(String, Option<Tenant>),
    Policy(String, Option<AccessPolicy>),
    ServiceAccount(String, Option<ServiceAccount>),
    Token([u8; 32], Option<TokenRecord>),
}

impl Overlay {
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
            && self.policies.is_empty()
            && self.tokens.is_empty()
            && self.service_accounts.is_empty()
    }

    fn apply(&mut self, c: &Change) {
        fn put<K: std::hash::Hash + Eq, V>(m: &mut HashMap<K, V>, k: K, v: Option<V>) {
            match v {
                Some(v) => {
                    m.insert(k, v);
                }
                None => {
                    m.remove(&k);
                }
            }
        }
        match c.clone() {
            Change::Tenant(k, v) => put(&mut self.tenants, k, v),
            Change::Policy(k, v) => put(&mut self.policies, k, v.map(Arc::new)),
            Change::ServiceAccount(k, v) => put(&mut self.service_accounts, k, v),
            Change::Token(k, v) => put(&mut self.tokens, k, v),
        }
    }
}

/// The file-defined set with the overlay's objects added (O(n): at start, on a policy-file
/// change, and when the admin objects are put back in force).
fn merge(files: &Snapshot, overlay: &Overlay) -> Snapshot {
    let mut tenants: HashMap<String, Tenant> = files
        .tenants
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (name, t) in &overlay.tenants {
        if tenants.contains_key(name) {
            tracing::warn!(tenant = %name, "a policy file defines this tenant too; the file's definition is in force");
        } else {
            tenants.insert(name.clone(), t.clone());
        }
    }
    let mut policies: HashMap<String, Arc<AccessPolicy>> = files
        .policies
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (name, p) in &overlay.policies {
        if policies.contains_key(name) {
            tracing::warn!(policy = %name, "a policy file defines this access policy too; the file's definition is in force");
        } else {
            policies.insert(name.clone(), p.clone());
        }
    }
    let mut service_accounts: HashMap<String, ServiceAccount> = files
        .service_accounts
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (name, sa) in &overlay.service_accounts {
        if service_accounts.contains_key(name) {
            tracing::warn!(service_account = %name, "a policy file defines this service account too; the file's definition is in force");
        } else {
            service_accounts.insert(name.clone(), sa.clone());
        }
    }
    let mut tokens: Vec<TokenRecord> = files.tokens().to_vec();
    tokens.extend(
        overlay
            .tokens
            .values()
            .filter(|t| files.lookup(&t.hash).is_none())
            .cloned(),
    );
    Snapshot::new(
        files.cluster.clone(),
        files.clusters.clone(),
        tenants,
        policies,
        service_accounts,
        tokens,
    )
}

impl Store {
    pub fn new(
        initial: Snapshot,
        capacity: u64,
        ttl: std::time::Duration,
        metrics: Arc<Metrics>,
    ) -> Store {
        let store = Store {
            snapshot: ArcSwap::from_pointee(Snapshot::empty(&initial.cluster)),
            sources: std::sync::Mutex::new(Sources {
                files: Arc::new(Snapshot::empty(&initial.cluster)),
                admin: Overlay::default(),
                admin_in_force: true,
            }),
            cache: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            usage: std::sync::Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(1),
            metrics,
        };
        store.install(initial);
        store
    }

    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    fn sources(&self) -> std::sync::MutexGuard<'_, Sources> {
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rebuilds the set in force from the sources (O(n)).
    fn rebuild(&self, src: &mut Sources) {
        if !src.admin_in_force || src.admin.is_empty() {
            // nothing to merge: the file set itself is put in force, not a copy of it
            let files = std::mem::replace(&mut src.files, Arc::new(Snapshot::empty("")));
            let files = Arc::try_unwrap(files).unwrap_or_else(|a| merge(&a, &Overlay::default()));
            src.files = self.put_in_force(files);
        } else {
            let merged = merge(&src.files, &src.admin);
            self.put_in_force(merged);
        }
    }

    /// A new load of the policy files: merged with the admin API's objects and put in force.
    pub fn install(&self, files: Snapshot) {
        let mut src = self.sources();
        src.files = Arc::new(files);
        self.rebuild(&mut src);
    }

    /// Replaces every admin object (at start, after loading a checkpoint): O(n).
    pub fn set_overlay(&self, overlay: Overlay) {
        let mut src = self.sources();
        src.admin = overlay;
        self.rebuild(&mut src);
    }

    /// Admin objects changed: the set in force gets only these changes (O(√n), see
    /// [`layered`]), never a rebuild.
    pub fn apply(&self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        let mut src = self.sources();
        for c in changes {
            src.admin.apply(c);
        }
        if !src.admin_in_force {
            return;
        }
        let files = src.files.clone();
        let cur = self.snapshot.load_full();
        let mut tenants = Vec::new();
        let mut policies = Vec::new();
        let mut sas = Vec::new();
        let mut tokens = Vec::new();
        // a name a policy file defines is the file's: the API object stays shadowed
        for c in changes {
            match c {
                Change::Tenant(k, v) if !files.tenants.contains_key(k) => {
                    tenants.push((k.clone(), v.clone()))
                }
                Change::Policy(k, v) if !files.policies.contains_key(k) => {
                    policies.push((k.clone(), v.clone().map(Arc::new)))
                }
                Change::ServiceAccount(k, v) if !files.service_accounts.contains_key(k) => {
                    sas.push((k.clone(), v.clone()))
                }
                Change::Token(k, v) if files.lookup(&TokenHash(*k)).is_none() => {
                    tokens.push((*k, v.clone()))
                }
                _ => {}
            }
        }
        let next = Snapshot {
            generation: 0,
            cluster: cur.cluster.clone(),
            clusters: cur.clusters.clone(),
            tenants: cur.tenants.with_changes(tenants),
            policies: cur.policies.with_changes(policies),
            service_accounts: cur.service_accounts.with_changes(sas),
            tokens: cur.tokens.with_changes(tokens),
        };
        self.put_in_force(next);
    }

    /// Withholds (`false`) or restores (`true`) the admin objects: past the admin store's
    /// maximum staleness only the policy files are in force (fail closed).
    pub fn set_admin_in_force(&self, on: bool) {
        let mut src = self.sources();
        if src.admin_in_force != on {
            src.admin_in_force = on;
            self.rebuild(&mut src);
        }
    }

    /// The last good load of the policy files (the read-only part of the set in force).
    pub fn file_set(&self) -> Arc<Snapshot> {
        self.sources().files.clone()
    }

    /// Puts a new snapshot in force. Cached identities from older generations stop being
    /// served at once (each hit is checked against the generation), and are dropped.
    fn put_in_force(&self, mut snap: Snapshot) -> Arc<Snapshot> {
        snap.generation = self.next_generation.fetch_add(1, Ordering::SeqCst);
        let m = &self.metrics;
        for (kind, n) in snap.counts().by_kind() {
            m.store_objects.with_label_values(&[kind]).set(n as i64);
        }
        m.store_generation.set(snap.generation as i64);
        let snap = Arc::new(snap);
        self.snapshot.store(snap.clone());
        self.cache.invalidate_all();
        snap
    }

    /// Resolves a token hash against the snapshot in force, through the cache.
    /// Unknown tokens are never cached, so they cannot grow it.
    pub fn identify(&self, snap: &Snapshot, h: &TokenHash) -> Option<Arc<Identity>> {
        if let Some(id) = self.cache.get(&h.0)
            && id.generation == snap.generation
        {
            self.metrics.cache_hits.inc();
            return Some(id);
        }
        self.metrics.cache_misses.inc();
        let rec = snap.lookup(h)?;
        let mut id = snap.resolve(rec);
        // on a cache miss only: the hit path reuses the identity's handle
        id.usage = self
            .usage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(h.0)
            .or_default()
            .clone();
        let id = Arc::new(id);
        self.cache.insert(h.0, id.clone());
        Some(id)
    }

    /// `(firstUsedAt, lastUsedAt)` of a token (by its stored `sha256:` hash), if it was used
    /// since this process started.
    pub fn usage(&self, stored_hash: &str) -> Option<(i64, i64)> {
        let h = TokenHash::parse_stored(stored_hash)?;
        self.usage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&h.0)
            .and_then(|u| u.get())
    }

    pub fn cache_len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    fn snap(text: &str) -> Snapshot {
        load::load_texts(&[(Path::new("p.yaml"), text)], "local").unwrap()
    }

    fn policy_text(status: &str, hashes: &[&str]) -> String {
        let mut s = format!(
            "tenants:\n  - name: team-a\naccess_policies:\n  - name: pol\n    status: {status}\n    scopes: [metrics:read]\n    realms:\n      - tenant: team-a\ntokens:\n"
        );
        for (i, t) in hashes.iter().enumerate() {
            s += &format!(
                "  - name: t{i}\n    access_policy: pol\n    hash: \"{}\"\n",
                TokenHash::of(t).stored()
            );
        }
        s
    }

    #[test]
    fn lookup_finds_every_token_among_many() {
        let toks: Vec<String> = (0..500).map(|i| format!("glc_token{i}")).collect();
        let refs: Vec<&str> = toks.iter().map(String::as_str).collect();
        let s = snap(&policy_text("active", &refs));
        for (i, t) in toks.iter().enumerate() {
            assert_eq!(s.lookup(&TokenHash::of(t)).unwrap().name, format!("t{i}"));
        }
        assert!(s.lookup(&TokenHash::of("glc_nope")).is_none());
    }

    #[test]
    fn swap_revokes_cached_identity_immediately() {
        let m = Arc::new(Metrics::new());
        let store = Store::new(
            snap(&policy_text("active", &["glc_a"])),
            100,
            Duration::from_secs(600),
            m.clone(),
        );
        let h = TokenHash::of("glc_a");
        let s1 = store.snapshot();
        assert!(store.identify(&s1, &h).unwrap().active);
        assert!(store.identify(&s1, &h).unwrap().active);
        assert_eq!(m.cache_hits.get(), 1);
        // policy made inactive
        store.install(snap(&policy_text("inactive", &["glc_a"])));
        let s2 = store.snapshot();
        assert!(!store.identify(&s2, &h).unwrap().active);
        // token removed
        store.install(snap(&policy_text("active", &[])));
        let s3 = store.snapshot();
        assert!(store.identify(&s3, &h).is_none());
    }

    #[test]
    fn unknown_tokens_do_not_grow_the_cache() {
        let m = Arc::new(Metrics::new());
        let store = Store::new(
            snap(&policy_text("active", &["glc_a"])),
            100,
            Duration::from_secs(600),
            m,
        );
        let s = store.snapshot();
        for i in 0..1000 {
            assert!(
                store
                    .identify(&s, &TokenHash::of(&format!("glc_x{i}")))
                    .is_none()
            );
        }
        assert_eq!(store.cache_len(), 0);
    }

    #[test]
    fn service_account_resolution() {
        let text = format!(
            "tenants:\n  - name: team-a\n    org: \"7\"\naccess_policies:\n  - name: pol\n    scopes: [logs:read]\n    realms: [{{tenant: team-a}}]\nservice_accounts:\n  - name: viewer\n    role: Viewer\n    org: \"7\"\n  - name: off\n    role: Admin\n    org: \"7\"\n    disabled: true\n  - name: bound\n    role: Admin\n    access_policy: pol\ntokens:\n  - name: a\n    service_account: viewer\n    hash: \"{}\"\n  - name: b\n    service_account: off\n    hash: \"{}\"\n  - name: c\n    service_account: bound\n    hash: \"{}\"\n",
            TokenHash::of("glsa_a").stored(),
            TokenHash::of("glsa_b").stored(),
            TokenHash::of("glsa_c").stored()
        );
        let s = snap(&text);
        let a = s.resolve(s.lookup(&TokenHash::of("glsa_a")).unwrap());
        assert!(a.active && a.scopes.contains(crate::policy::Scope::MetricsRead));
        assert_eq!(a.default_tenant.as_deref(), Some("team-a"));
        let b = s.resolve(s.lookup(&TokenHash::of("glsa_b")).unwrap());
        assert!(!b.active, "disabled service account");
        let c = s.resolve(s.lookup(&TokenHash::of("glsa_c")).unwrap());
        assert_eq!(c.policy_name, "pol");
        assert!(
            c.scopes.contains(crate::policy::Scope::LogsRead)
                && !c.scopes.contains(crate::policy::Scope::Admin)
        );
    }
}
