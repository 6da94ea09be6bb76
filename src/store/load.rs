//! Policy files (SPEC 3) → validated [`Snapshot`]. Files are merged; every problem is reported
//! with its file, line and column, and all of them are collected rather than only the first.

use super::{Snapshot, TokenOwner, TokenRecord};
use crate::config::Cidr;
use crate::diag::{FileError, FileErrors};
use crate::policy::{
    AccessPolicy, Realm, RealmTarget, Role, Scope, ServiceAccount, Status, Tenant, valid_name,
};
use crate::selector::RawSelector;
use crate::token::TokenHash;
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default, deserialize_with = "null_as_empty")]
    clusters: Vec<Spanned<RawCluster>>,
    #[serde(default, deserialize_with = "null_as_empty")]
    tenants: Vec<Spanned<RawTenant>>,
    #[serde(default, deserialize_with = "null_as_empty")]
    access_policies: Vec<Spanned<RawPolicy>>,
    #[serde(default, deserialize_with = "null_as_empty")]
    service_accounts: Vec<Spanned<RawServiceAccount>>,
    #[serde(default, deserialize_with = "null_as_empty")]
    tokens: Vec<Spanned<RawToken>>,
}

/// `tokens:` with nothing under it is an empty list, not an error.
fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    name: Spanned<String>,
    cluster: Option<Spanned<String>>,
    #[serde(default)]
    status: Status,
    org: Option<String>,
    stack: Option<String>,
    display_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: Spanned<String>,
    display_name: Option<String>,
    #[serde(default)]
    status: Status,
    #[serde(default)]
    scopes: Vec<Scope>,
    #[serde(default)]
    realms: Vec<Spanned<RawRealm>>,
    #[serde(default)]
    conditions: RawConditions,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConditions {
    #[serde(default)]
    allowed_subnets: Vec<Cidr>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RealmType {
    Org,
    Stack,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRealm {
    tenant: Option<Spanned<String>>,
    cluster: Option<Spanned<String>>,
    #[serde(rename = "type")]
    kind: Option<RealmType>,
    identifier: Option<String>,
    #[serde(default)]
    label_policies: Vec<Spanned<RawLabelPolicy>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLabelPolicy {
    selector: RawSelector,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServiceAccount {
    name: Spanned<String>,
    role: Role,
    org: Option<String>,
    #[serde(default)]
    disabled: bool,
    access_policy: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: Spanned<String>,
    access_policy: Option<Spanned<String>>,
    service_account: Option<Spanned<String>>,
    #[serde(default)]
    status: Status,
    expires_at: Option<Spanned<String>>,
    hash: Spanned<String>,
}

/// Counts of what a load produced, for `obsgate check` and the objects gauge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub clusters: usize,
    pub tenants: usize,
    pub access_policies: usize,
    pub service_accounts: usize,
    pub tokens: usize,
}

impl Counts {
    /// `(kind, count)` pairs, the kinds named as in the `obsgate_store_objects` metric.
    pub fn by_kind(&self) -> [(&'static str, usize); 5] {
        [
            ("clusters", self.clusters),
            ("tenants", self.tenants),
            ("access_policies", self.access_policies),
            ("service_accounts", self.service_accounts),
            ("tokens", self.tokens),
        ]
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} clusters, {} tenants, {} access policies, {} service accounts, {} tokens",
            self.clusters, self.tenants, self.access_policies, self.service_accounts, self.tokens
        )
    }
}

struct Errs(Vec<FileError>);

impl Errs {
    fn at(&mut self, file: &Path, loc: &Location, msg: impl Into<String>) {
        self.0.push(FileError::at(file, loc, msg));
    }
}

/// Parses one file's text. A file with no content (or only comments) is an empty set.
fn parse_file(path: &Path, text: &str) -> Result<RawFile, FileError> {
    let meaningful = text.lines().any(|l| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#') && t != "---"
    });
    if !meaningful {
        return Ok(RawFile::default());
    }
    serde_saphyr::from_str_with_options(text, yaml_options())
        .map_err(|e| FileError::from_yaml(path, &e))
}

/// Policy files are written by operators and can be large (100k tokens is 10M+ YAML nodes), so
/// the parser's size budget is raised well above its defaults (250k nodes, 1M events). Its limits
/// on aliases, anchors and nesting, which stop YAML bombs, stay as they are.
fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_events = 100_000_000;
    budget.max_nodes = 50_000_000;
    budget.max_total_scalar_bytes = 1 << 30;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// Reads, merges and validates policy files for a gateway in `cluster`.
pub fn load_files(paths: &[PathBuf], cluster: &str) -> Result<Snapshot, FileErrors> {
    let mut texts = Vec::with_capacity(paths.len());
    let mut errs = Errs(Vec::new());
    for p in paths {
        match std::fs::read_to_string(p) {
            Ok(t) => texts.push((p.clone(), t)),
            Err(e) => errs
                .0
                .push(FileError::whole(p, format!("cannot read policy file: {e}"))),
        }
    }
    if !errs.0.is_empty() {
        return Err(FileErrors(errs.0));
    }
    let refs: Vec<(&Path, &str)> = texts
        .iter()
        .map(|(p, t)| (p.as_path(), t.as_str()))
        .collect();
    load_texts(&refs, cluster)
}

/// Like [`load_files`], from text already in memory (used by tests and benches).
pub fn load_texts(files: &[(&Path, &str)], cluster: &str) -> Result<Snapshot, FileErrors> {
    let mut errs = Errs(Vec::new());
    let mut parsed: Vec<(&Path, RawFile)> = Vec::with_capacity(files.len());
    for (p, t) in files {
        match parse_file(p, t) {
            Ok(f) => parsed.push((p, f)),
            Err(e) => errs.0.push(e),
        }
    }
    if !errs.0.is_empty() {
        return Err(FileErrors(errs.0));
    }

    // clusters
    let mut clusters: HashSet<String> = HashSet::from([cluster.to_string()]);
    let mut cluster_defined: HashSet<String> = HashSet::new();
    for (file, f) in &parsed {
        for c in &f.clusters {
            let n = &c.value.name;
            if !valid_name(&n.value, 1, 64) {
                errs.at(
                    file,
                    &n.referenced,
                    format!(
                        "invalid cluster name {:?}: use 1-64 chars of [a-z0-9_-]",
                        n.value
                    ),
                );
            } else if !cluster_defined.insert(n.value.clone()) {
                errs.at(
                    file,
                    &n.referenced,
                    format!("cluster {:?} is defined twice", n.value),
                );
            }
            clusters.insert(n.value.clone());
        }
    }
    let known = Clusters {
        known: clusters,
        own: cluster.to_string(),
    };

    // tenants
    let mut tenants: HashMap<String, Tenant> = HashMap::new();
    for (file, f) in &parsed {
        for t in &f.tenants {
            let t = &t.value;
            let n = &t.name;
            let _ = &t.display_name;
            if !valid_name(&n.value, 3, 64) {
                errs.at(
                    file,
                    &n.referenced,
                    format!(
                        "invalid tenant name {:?}: use 3-64 chars of [a-z0-9_-]",
                        n.value
                    ),
                );
                continue;
            }
            let c = known.resolve(&mut errs, file, &t.cluster);
            let tenant = Tenant {
                name: n.value.clone(),
                cluster: c,
                status: t.status,
                org: t.org.clone(),
                stack: t.stack.clone(),
            };
            if tenants.insert(n.value.clone(), tenant).is_some() {
                errs.at(
                    file,
                    &n.referenced,
                    format!("tenant {:?} is defined twice", n.value),
                );
            }
        }
    }

    // access policies
    let mut policies: HashMap<String, Arc<AccessPolicy>> = HashMap::new();
    for (file, f) in &parsed {
        for p in &f.access_policies {
            let p = &p.value;
            let n = &p.name;
            if !valid_name(&n.value, 3, 64) {
                errs.at(
                    file,
                    &n.referenced,
                    format!(
                        "invalid access policy name {:?}: use 3-64 chars of [a-z0-9_-]",
                        n.value
                    ),
                );
                continue;
            }
            let mut realms = Vec::with_capacity(p.realms.len());
            for r in &p.realms {
                if let Some(realm) =
                    build_realm(&mut errs, file, &r.referenced, &r.value, &tenants, &known)
                {
                    realms.push(realm);
                }
            }
            let policy = AccessPolicy {
                name: n.value.clone(),
                display_name: p.display_name.clone(),
                status: p.status,
                scopes: p.scopes.iter().copied().collect(),
                realms: realms.into(),
                allowed_subnets: p
                    .conditions
                    .allowed_subnets
                    .iter()
                    .map(|c| c.0)
                    .collect::<Vec<_>>()
                    .into(),
                expires_at: None,
            };
            if policies.insert(n.value.clone(), Arc::new(policy)).is_some() {
                errs.at(
                    file,
                    &n.referenced,
                    format!("access policy {:?} is defined twice", n.value),
                );
            }
        }
    }

    // service accounts
    let mut service_accounts: HashMap<String, ServiceAccount> = HashMap::new();
    for (file, f) in &parsed {
        for sa in &f.service_accounts {
            let loc = sa.referenced;
            let sa = &sa.value;
            let n = &sa.name;
            if n.value.is_empty() || n.value.len() > 255 || n.value.chars().any(char::is_control) {
                errs.at(
                    file,
                    &n.referenced,
                    format!(
                        "invalid service account name {:?}: use 1-255 printable characters",
                        n.value
                    ),
                );
                continue;
            }
            if let Some(ap) = &sa.access_policy
                && !policies.contains_key(&ap.value)
            {
                errs.at(
                    file,
                    &ap.referenced,
                    format!("unknown access policy {:?}", ap.value),
                );
            }
            let org = match &sa.org {
                Some(o) if !o.is_empty() => o.clone(),
                _ if sa.access_policy.is_some() => String::new(),
                _ => {
                    errs.at(
                        file,
                        &loc,
                        format!(
                            "service account {:?} needs an org (its realm) or an access_policy",
                            n.value
                        ),
                    );
                    String::new()
                }
            };
            let acct = ServiceAccount {
                name: n.value.clone(),
                role: sa.role,
                org,
                disabled: sa.disabled,
                access_policy: sa.access_policy.as_ref().map(|a| a.value.clone()),
            };
            if service_accounts.insert(n.value.clone(), acct).is_some() {
                errs.at(
                    file,
                    &n.referenced,
                    format!("service account {:?} is defined twice", n.value),
                );
            }
        }
    }

    // tokens
    let mut tokens: Vec<TokenRecord> = Vec::new();
    let mut token_names: HashSet<String> = HashSet::new();
    let mut hashes: HashSet<[u8; 32]> = HashSet::new();
    for (file, f) in &parsed {
        for t in &f.tokens {
            let loc = t.referenced;
            let t = &t.value;
            let n = &t.name;
            let mut ok = true;
            if !valid_name(&n.value, 1, 255) {
                errs.at(
                    file,
                    &n.referenced,
                    format!(
                        "invalid token name {:?}: use 1-255 chars of [a-z0-9_-]",
                        n.value
                    ),
                );
                ok = false;
            } else if !token_names.insert(n.value.clone()) {
                errs.at(
                    file,
                    &n.referenced,
                    format!("token {:?} is defined twice", n.value),
                );
                ok = false;
            }
            let owner = match (&t.access_policy, &t.service_account) {
                (Some(ap), None) => {
                    if !policies.contains_key(&ap.value) {
                        errs.at(
                            file,
                            &ap.referenced,
                            format!("unknown access policy {:?}", ap.value),
                        );
                        ok = false;
                    }
                    TokenOwner::Policy(ap.value.clone())
                }
                (None, Some(sa)) => {
                    if !service_accounts.contains_key(&sa.value) {
                        errs.at(
                            file,
                            &sa.referenced,
                            format!("unknown service account {:?}", sa.value),
                        );
                        ok = false;
                    }
                    TokenOwner::ServiceAccount(sa.value.clone())
                }
                _ => {
                    errs.at(
                        file,
                        &loc,
                        format!(
                            "token {:?} needs exactly one of access_policy and service_account",
                            n.value
                        ),
                    );
                    continue;
                }
            };
            let hash = match TokenHash::parse_stored(t.hash.value.trim()) {
                Some(h) => h,
                None => {
                    errs.at(file, &t.hash.referenced, "invalid hash: expected sha256:<64 lowercase hex> (see `obsgate token hash`)");
                    continue;
                }
            };
            if !hashes.insert(hash.0) {
                errs.at(
                    file,
                    &t.hash.referenced,
                    format!("token {:?} has the same hash as another token", n.value),
                );
                ok = false;
            }
            let expires_at = match &t.expires_at {
                Some(e) => match chrono::DateTime::parse_from_rfc3339(e.value.trim()) {
                    Ok(d) => Some(d.timestamp()),
                    Err(_) => {
                        errs.at(file, &e.referenced, format!("invalid expires_at {:?}: expected RFC 3339 such as 2027-01-01T00:00:00Z", e.value));
                        ok = false;
                        None
                    }
                },
                None => None,
            };
            if ok {
                tokens.push(TokenRecord {
                    name: n.value.clone(),
                    owner,
                    status: t.status,
                    expires_at,
                    hash,
                });
            }
        }
    }

    if !errs.0.is_empty() {
        return Err(FileErrors(errs.0));
    }
    let mut clusters: Vec<String> = known.known.into_iter().collect();
    clusters.sort();
    Ok(Snapshot::new(
        cluster.to_string(),
        clusters,
        tenants,
        policies,
        service_accounts,
        tokens,
    ))
}

/// The clusters a policy set may name: the gateway's own plus those defined in the files.
struct Clusters {
    known: HashSet<String>,
    own: String,
}

impl Clusters {
    /// The named cluster (an error if unknown), or the gateway's own when none is named.
    fn resolve(&self, errs: &mut Errs, file: &Path, c: &Option<Spanned<String>>) -> String {
        match c {
            Some(c) => {
                if !self.known.contains(&c.value) {
                    errs.at(
                        file,
                        &c.referenced,
                        format!("unknown cluster {:?}", c.value),
                    );
                }
                c.value.clone()
            }
            None => self.own.clone(),
        }
    }
}

fn build_realm(
    errs: &mut Errs,
    file: &Path,
    loc: &Location,
    r: &RawRealm,
    tenants: &HashMap<String, Tenant>,
    clusters: &Clusters,
) -> Option<Realm> {
    let cluster = clusters.resolve(errs, file, &r.cluster);
    let target = match (&r.tenant, r.kind, &r.identifier) {
        (Some(t), None, None) => {
            if t.value == "*" {
                RealmTarget::AllTenants
            } else {
                match tenants.get(&t.value) {
                    None => {
                        errs.at(file, &t.referenced, format!("unknown tenant {:?}", t.value));
                        return None;
                    }
                    Some(ten) if ten.cluster != cluster => {
                        errs.at(
                            file,
                            &t.referenced,
                            format!(
                                "tenant {:?} is in cluster {:?}, not {:?}",
                                t.value, ten.cluster, cluster
                            ),
                        );
                        return None;
                    }
                    Some(_) => RealmTarget::Tenant(t.value.clone()),
                }
            }
        }
        (None, Some(kind), Some(id)) if !id.is_empty() => match kind {
            RealmType::Org => RealmTarget::Org(id.clone()),
            RealmType::Stack => RealmTarget::Stack(id.clone()),
        },
        _ => {
            errs.at(
                file,
                loc,
                "a realm needs either `tenant` or both `type` (org|stack) and `identifier`",
            );
            return None;
        }
    };
    let mut label_policies = Vec::with_capacity(r.label_policies.len());
    for lp in &r.label_policies {
        match lp.value.selector.compile() {
            Ok(s) => label_policies.push(s),
            Err(msg) => errs.at(file, &lp.referenced, msg),
        }
    }
    Some(Realm {
        target,
        cluster,
        label_policies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::TokenHash;

    fn load(text: &str) -> Result<Snapshot, FileErrors> {
        load_texts(&[(Path::new("p.yaml"), text)], "local")
    }

    fn h(t: &str) -> String {
        TokenHash::of(t).stored()
    }

    const GOOD: &str = r#"
clusters:
  - name: other-dc
tenants:
  - name: team-a
    cluster: local
  - name: team-s
    stack: "123"
access_policies:
  - name: team-a-rw
    scopes: [metrics:read, metrics:write]
    realms:
      - tenant: team-a
        cluster: local
        label_policies:
          - selector: '{env!="dev", team="a"}'
          - selector: [{type: EQ, name: env, value: prod}]
      - type: stack
        identifier: "123"
    conditions:
      allowed_subnets: ["10.0.0.0/8", "::1/128"]
service_accounts:
  - name: grafana-reader
    role: Viewer
    org: "1"
tokens:
  - name: team-a-ci
    access_policy: team-a-rw
    expires_at: 2027-01-01T00:00:00Z
    hash: "HASH1"
  - name: reader
    service_account: grafana-reader
    hash: "HASH2"
"#;

    #[test]
    fn valid_file_loads_with_counts() {
        let text = GOOD
            .replace("HASH1", &h("glc_one"))
            .replace("HASH2", &h("glsa_two"));
        let s = load(&text).unwrap();
        let c = s.counts();
        assert_eq!(
            (
                c.clusters,
                c.tenants,
                c.access_policies,
                c.service_accounts,
                c.tokens
            ),
            (2, 2, 1, 1, 2)
        );
        let rec = s.lookup(&TokenHash::of("glc_one")).unwrap();
        assert_eq!(rec.name, "team-a-ci");
        assert_eq!(rec.expires_at, Some(1798761600));
        assert!(s.lookup(&TokenHash::of("glc_other")).is_none());
        let id = s.resolve(s.lookup(&TokenHash::of("glsa_two")).unwrap());
        assert!(id.scopes.contains(Scope::MetricsRead) && !id.scopes.contains(Scope::MetricsWrite));
        assert_eq!(id.realms[0].target, RealmTarget::Org("1".into()));
    }

    #[test]
    fn empty_and_comment_only_files_are_empty_sets() {
        assert_eq!(load("").unwrap().counts().tokens, 0);
        assert_eq!(load("# nothing yet\n").unwrap().counts().tenants, 0);
    }

    #[test]
    fn semantic_errors_are_all_reported_with_lines() {
        let text = r#"tenants:
  - name: ab
  - name: team-a
  - name: team-a
access_policies:
  - name: pol
    scopes: [metrics:read]
    realms:
      - tenant: nobody
      - tenant: team-a
        cluster: mars
      - tenant: team-a
        label_policies:
          - selector: '{env=~"("}'
      - identifier: "1"
tokens:
  - name: t1
    access_policy: missing
    hash: "sha256:00"
  - name: t2
    service_account: ghost
    hash: "HASH"
    expires_at: tomorrow
  - name: t3
    hash: "HASH"
"#
        .replace("HASH", &h("x"));
        let e = load(&text).unwrap_err();
        let lines: Vec<(u32, &str)> = e.0.iter().map(|e| (e.line, e.message.as_str())).collect();
        let has = |line: u32, frag: &str| lines.iter().any(|(l, m)| *l == line && m.contains(frag));
        assert!(has(2, "invalid tenant name"), "{lines:?}");
        assert!(has(4, "defined twice"), "{lines:?}");
        assert!(has(9, "unknown tenant \"nobody\""), "{lines:?}");
        assert!(has(11, "unknown cluster \"mars\""), "{lines:?}");
        assert!(has(14, "invalid regular expression"), "{lines:?}");
        assert!(has(15, "a realm needs"), "{lines:?}");
        assert!(has(18, "unknown access policy"), "{lines:?}");
        assert!(has(19, "invalid hash"), "{lines:?}");
        assert!(has(21, "unknown service account"), "{lines:?}");
        assert!(has(23, "invalid expires_at"), "{lines:?}");
        assert!(has(24, "exactly one of"), "{lines:?}");
    }

    #[test]
    fn unknown_keys_and_scopes_are_located_errors() {
        let e = load("access_policies:\n  - name: pol\n    scopes: [metrics:read, metrics:fly]\n")
            .unwrap_err();
        assert_eq!(e.0[0].line, 3);
        assert!(
            e.0[0].message.contains("unknown scope \"metrics:fly\""),
            "{e}"
        );
        let e = load("tenants:\n  - name: team-a\n    colour: red\n").unwrap_err();
        assert_eq!((e.0[0].line, e.0[0].column), (3, 5));
        let e = load("tenants: [\n").unwrap_err();
        assert_eq!(e.0[0].line, 1);
    }

    #[test]
    fn names_defined_twice_across_files_are_errors() {
        let a = "tenants:\n  - name: team-a\n";
        let e = load_texts(
            &[(Path::new("a.yaml"), a), (Path::new("b.yaml"), a)],
            "local",
        )
        .unwrap_err();
        assert_eq!(e.0[0].file, PathBuf::from("b.yaml"));
        assert!(e.0[0].message.contains("defined twice"));
    }

    #[test]
    fn large_policy_files_load_past_the_parser_default_budget() {
        // 40k tokens is about 280k YAML nodes: over serde-saphyr's default budget of 250k
        let mut t =
            String::from("tenants: [{name: team-a}]\naccess_policies:\n  - name: pol\ntokens:\n");
        for i in 0..40_000 {
            t += &format!(
                "  - {{name: t{i}, access_policy: pol, hash: \"sha256:{:064x}\"}}\n",
                i + 1
            );
        }
        assert_eq!(load(&t).unwrap().counts().tokens, 40_000);
    }

    #[test]
    fn duplicate_hashes_are_errors() {
        let t = format!(
            "access_policies:\n  - name: pol\ntokens:\n  - name: a\n    access_policy: pol\n    hash: \"{0}\"\n  - name: b\n    access_policy: pol\n    hash: \"{0}\"\n",
            h("glc_x")
        );
        let e = load(&t).unwrap_err();
        assert!(e.0[0].message.contains("same hash"), "{e}");
    }
}
