//! Policy files (SPEC 3) → validated [`Snapshot`]. Files are merged; every problem is reported
//! with its file, line and column, and all of them are collected rather than only the first.
//!
//! A file whose name ends in `.json` is JSON (serde_json, see [`super::json`]), any other YAML
//! (serde-saphyr). Both are read into the same document types and validated by the same code; a
//! set may mix them.

use super::json;
use super::{Snapshot, TokenOwner, TokenRecord};
use crate::config::Cidr;
use crate::diag::{FileError, FileErrors};
use crate::policy::{
    AccessPolicy, Realm, RealmTarget, Role, Scope, ServiceAccount, Status, Tenant, valid_name,
};
use crate::selector::RawSelector;
use crate::token::TokenHash;
use serde::{Deserialize, Deserializer};
use serde_saphyr::Location;
use std::cell::{Cell, OnceCell};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a value is in its file.
#[derive(Debug, Clone, Copy)]
enum Pos {
    /// serde-saphyr's line and column.
    Yaml(Location),
    /// A byte offset, turned into a line and column only if an error is reported there.
    Json(usize),
    /// Not kept: the first pass of [`load_texts`], whose errors are never reported.
    Unknown,
}

thread_local! {
    /// Whether located values keep their positions on this thread (see [`load_texts`]).
    static POSITIONS: Cell<bool> = const { Cell::new(true) };
}

/// Turns positions off until dropped.
struct WithoutPositions;

impl WithoutPositions {
    fn new() -> WithoutPositions {
        POSITIONS.set(false);
        WithoutPositions
    }
}

impl Drop for WithoutPositions {
    fn drop(&mut self) {
        POSITIONS.set(true);
    }
}

/// A value with its position, read from YAML or JSON (whichever is being parsed).
struct Spanned<T> {
    value: T,
    referenced: Pos,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if !POSITIONS.get() {
            return Ok(Spanned {
                value: T::deserialize(d)?,
                referenced: Pos::Unknown,
            });
        }
        if json::active() {
            let (value, at) = json::spanned(d)?;
            Ok(Spanned {
                value,
                referenced: Pos::Json(at),
            })
        } else {
            let s = serde_saphyr::Spanned::<T>::deserialize(d)?;
            Ok(Spanned {
                value: s.value,
                referenced: Pos::Yaml(s.referenced),
            })
        }
    }
}

/// One parsed file's name and text, which locate its errors.
struct Src<'a> {
    path: &'a Path,
    text: &'a str,
    /// Where each line starts, for JSON positions; built at the file's first error.
    lines: OnceCell<Vec<usize>>,
}

impl Src<'_> {
    fn error(&self, pos: &Pos, msg: impl Into<String>) -> FileError {
        match pos {
            Pos::Yaml(loc) => FileError::at(self.path, loc, msg),
            Pos::Unknown => FileError::whole(self.path, msg),
            Pos::Json(at) => {
                let lines = self.lines.get_or_init(|| json::line_starts(self.text));
                let (line, column) = json::line_col(self.text, lines, *at);
                FileError::new(self.path, line, column, msg)
            }
        }
    }
}

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
    fn at(&mut self, file: &Src, pos: &Pos, msg: impl Into<String>) {
        self.0.push(file.error(pos, msg));
    }
}

/// Parses one file's text, JSON if its name ends in `.json`, else YAML. A file with no content
/// (or, in YAML, only comments) is an empty set.
fn parse_file(path: &Path, text: &str) -> Result<RawFile, FileError> {
    if json::is_json(path) {
        if text.trim_start_matches('\u{feff}').trim().is_empty() {
            return Ok(RawFile::default());
        }
        return json::parse(path, text);
    }
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
///
/// The files are first parsed without the positions of their values: for YAML those cost a
/// quarter of the parse, and memory, and for JSON a second parse of each located value. A file
/// that does not parse is reported at once (the parser locates its own errors). A set that parses
/// but does not validate is parsed and validated again with positions, so that every error is
/// located; that second pass decides the result.
pub fn load_texts(files: &[(&Path, &str)], cluster: &str) -> Result<Snapshot, FileErrors> {
    let first = {
        let _off = WithoutPositions::new();
        parse_all(files)?
    };
    validate(first, cluster).or_else(|_| validate(parse_all(files)?, cluster))
}

/// Parses every file; the errors of all that fail.
fn parse_all<'a>(files: &[(&'a Path, &'a str)]) -> Result<Vec<(Src<'a>, RawFile)>, FileErrors> {
    let mut errs = Vec::new();
    let mut parsed = Vec::with_capacity(files.len());
    for (p, t) in files {
        match parse_file(p, t) {
            Ok(f) => parsed.push((
                Src {
                    path: p,
                    text: t,
                    lines: OnceCell::new(),
                },
                f,
            )),
            Err(e) => errs.push(e),
        }
    }
    if !errs.is_empty() {
        return Err(FileErrors(errs));
    }
    Ok(parsed)
}

/// Checks the parsed set and builds its snapshot; every error, located if positions were kept.
fn validate(parsed: Vec<(Src, RawFile)>, cluster: &str) -> Result<Snapshot, FileErrors> {
    let mut errs = Errs(Vec::new());

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
    fn resolve(&self, errs: &mut Errs, file: &Src, c: &Option<Spanned<String>>) -> String {
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
    file: &Src,
    loc: &Pos,
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

    // ---- JSON policy files ----

    fn load_json(text: &str) -> Result<Snapshot, FileErrors> {
        load_texts(&[(Path::new("p.json"), text)], "local")
    }

    const GOOD_JSON: &str = r#"{
  "clusters": [{"name": "other-dc"}],
  "tenants": [
    {"name": "team-a", "cluster": "local"},
    {"name": "team-s", "stack": "123"}
  ],
  "access_policies": [
    {
      "name": "team-a-rw",
      "scopes": ["metrics:read", "metrics:write"],
      "realms": [
        {
          "tenant": "team-a",
          "cluster": "local",
          "label_policies": [
            {"selector": "{env!=\"dev\", team=\"a\"}"},
            {"selector": [{"type": "EQ", "name": "env", "value": "prod"}]}
          ]
        },
        {"type": "stack", "identifier": "123"}
      ],
      "conditions": {"allowed_subnets": ["10.0.0.0/8", "::1/128"]}
    }
  ],
  "service_accounts": [{"name": "grafana-reader", "role": "Viewer", "org": "1"}],
  "tokens": [
    {"name": "team-a-ci", "access_policy": "team-a-rw", "expires_at": "2027-01-01T00:00:00Z", "hash": "HASH1"},
    {"name": "reader", "service_account": "grafana-reader", "hash": "HASH2"}
  ]
}
"#;

    /// Everything a snapshot holds, in a stable order, for comparing two loads.
    fn dump(s: &Snapshot) -> String {
        let mut tenants: Vec<_> = s.tenants.values().map(|t| format!("{t:?}")).collect();
        let mut policies: Vec<_> = s.policies.values().map(|p| format!("{p:?}")).collect();
        let mut sas: Vec<_> = s
            .service_accounts
            .values()
            .map(|a| format!("{a:?}"))
            .collect();
        let mut tokens: Vec<_> = s.tokens().iter().map(|t| format!("{t:?}")).collect();
        tenants.sort();
        policies.sort();
        sas.sort();
        tokens.sort();
        format!(
            "{:?}\n{tenants:?}\n{policies:?}\n{sas:?}\n{tokens:?}",
            s.clusters
        )
    }

    fn hashed(text: &str) -> String {
        text.replace("HASH1", &h("glc_one"))
            .replace("HASH2", &h("glsa_two"))
    }

    #[test]
    fn json_and_yaml_give_the_same_policy_set() {
        let y = load(&hashed(GOOD)).unwrap();
        let j = load_json(&hashed(GOOD_JSON)).unwrap();
        assert_eq!(j.counts(), y.counts());
        assert_eq!(dump(&j), dump(&y));
        assert!(dump(&j).contains("team-a-rw") && dump(&j).contains("Stack("));
        let rec = j.lookup(&TokenHash::of("glc_one")).unwrap();
        assert_eq!(rec.expires_at, Some(1798761600));
        // a byte-order mark, a .JSON name and an empty list written as null are accepted
        let bom = format!("\u{feff}{}", hashed(GOOD_JSON));
        let j2 = load_texts(&[(Path::new("P.JSON"), &bom)], "local").unwrap();
        assert_eq!(dump(&j2), dump(&y));
        assert_eq!(
            load_json("{\"tokens\": null, \"tenants\": []}")
                .unwrap()
                .counts(),
            Counts {
                clusters: 1,
                ..Counts::default()
            }
        );
    }

    #[test]
    fn the_example_json_file_is_the_example_yaml_file() {
        let y = load_texts(
            &[(
                Path::new("config/policies.yaml"),
                include_str!("../../config/policies.yaml"),
            )],
            "local",
        )
        .unwrap();
        let j = load_texts(
            &[(
                Path::new("config/policies.json"),
                include_str!("../../config/policies.json"),
            )],
            "local",
        )
        .unwrap();
        assert_eq!(j.counts().tokens, 3);
        assert_eq!(dump(&j), dump(&y));
    }

    #[test]
    fn a_failed_first_pass_leaves_positions_on() {
        assert!(load("tenants:\n  - name: x\n").is_err());
        assert!(POSITIONS.get());
        assert!(load_json("{\"tenants\": 1}").is_err());
        assert!(POSITIONS.get() && !json::active());
        assert!(load("tenants:\n  - name: team-x\n").is_ok());
        assert!(POSITIONS.get());
    }

    /// The first pass (no positions) must accept exactly what the second accepts and read the
    /// same set, since it decides every load that succeeds; and a file it cannot parse must get
    /// the very errors the second pass would give, since those are reported as they are.
    #[test]
    fn positions_do_not_change_what_loads() {
        let cases: &[(&str, &str)] = &[
            ("p.yaml", GOOD),
            ("p.json", GOOD_JSON),
            ("p.yaml", "tenants:\n  - name: 12345\n"),
            ("p.yaml", "tenants:\n  - name: !!str 12345\n"),
            ("p.yaml", "tenants:\n  - name: true\n"),
            ("p.yaml", "tenants:\n  - name: ~\n"),
            ("p.yaml", "tenants:\n  - &t {name: team-a}\n  - *t\n"),
            (
                "p.yaml",
                "tenants:\n  - &t {name: team-a}\n  - {<<: *t, name: team-b}\n",
            ),
            (
                "p.yaml",
                "tenants:\n  - name: team-a\n    cluster: &c local\n  - {name: team-b, cluster: *c}\n",
            ),
            ("p.yaml", "tenants:\n  - [team-a]\n"),
            ("p.yaml", "tenants:\n  - name: [team-a]\n"),
            ("p.yaml", "tenants:\n  - name: \"team-\\x61\"\n"),
            ("p.yaml", "---\ntenants: [{name: team-a}]\n...\n"),
            ("p.yaml", "tenants: [{name: team-a}]\n---\ntenants: []\n"),
            ("p.json", "{\"tenants\": [{\"name\": 12345}]}"),
            ("p.json", "{\"tenants\": [{\"name\": \"team-\\u0061\"}]}"),
            ("p.json", "{\"tenants\": [[\"team-a\"]]}"),
            ("p.json", "{\"tenants\": [{\"name\": null}]}"),
            ("p.json", "[[{\"name\": \"c1\"}], [{\"name\": \"team-a\"}]]"),
            // files that do not parse
            ("p.yaml", "tenants:\n  - name: team-a\n    colour: red\n"),
            (
                "p.yaml",
                "access_policies:\n  - name: pol\n    scopes: [metrics:read, metrics:fly]\n",
            ),
            (
                "p.yaml",
                "access_policies:\n  - name: pol\n    conditions: {allowed_subnets: [10.0.0.0/33]}\n",
            ),
            ("p.yaml", "tokens:\n  - name: t\n    status: on\n"),
            ("p.yaml", "tenants: [\n"),
            ("p.yaml", "tenants:\n  - name: [a, b]\n"),
            (
                "p.json",
                "{\"tenants\": [\n  {\"name\": \"team-a\",\n   \"colour\": \"red\"}]}",
            ),
            (
                "p.json",
                "{\"tokens\": [\n  {\"name\": 5, \"hash\": \"x\"}]}",
            ),
            ("p.json", "{\"tenants\":\n {\"name\": \"team-a\"}}"),
            (
                "p.json",
                "{\"access_policies\": [\n {\"name\": \"pol\",\n  \"scopes\": [\"metrics:read\", \"metrics:fly\"]}]}",
            ),
            (
                "p.json",
                "{\"access_policies\": [{\"name\": \"pol\", \"conditions\": {\n  \"allowed_subnets\": [\"10.0.0.0/8\", \"10.0.0.0/33\"]}}]}",
            ),
            (
                "p.json",
                "{\"access_policies\": [{\"name\": \"pol\", \"realms\": [{\"tenant\": \"*\",\n \"label_policies\": [\n  {\"selector\": 7}]}]}]}",
            ),
            (
                "p.json",
                "{\"tenants\": [\n {\"name\": \"a\"}\n {\"name\": \"b\"}]}",
            ),
            (
                "p.json",
                "{\"tokens\": [\n {\"name\": \"t\", \"status\": \"on\"}]}",
            ),
            (
                "p.json",
                "{\"tokens\": [\n {\"name\": \"t\", \"status\": \"active\", \"status\": \"x\"}]}",
            ),
            ("p.json", "{\"tokens\": [\n {\"name\": \"t"),
            ("p.json", "{}\n\n{}"),
        ];
        for (name, text) in cases {
            let text = hashed(text);
            let files = [(Path::new(name), text.as_str())];
            let without = {
                let _off = WithoutPositions::new();
                parse_all(&files)
            };
            let with = parse_all(&files);
            let (without, with) = match (without, with) {
                (Ok(a), Ok(b)) => (validate(a, "local"), validate(b, "local")),
                (Err(a), Err(b)) => {
                    assert_eq!(a, b, "{name}: {text}");
                    continue;
                }
                (a, b) => panic!(
                    "{name}: {text}: parses without positions: {}, with: {}",
                    a.is_ok(),
                    b.is_ok()
                ),
            };
            match (&without, &with) {
                (Ok(a), Ok(b)) => assert_eq!(dump(a), dump(b), "{name}: {text}"),
                (Err(_), Err(_)) => {}
                _ => panic!(
                    "{name}: {text}: without positions {:?}, with {:?}",
                    without.as_ref().map(dump),
                    with.as_ref().map(dump)
                ),
            }
        }
    }

    #[test]
    fn empty_json_files_are_empty_sets() {
        assert_eq!(load_json("").unwrap().counts().tokens, 0);
        assert_eq!(load_json(" \n\t\n").unwrap().counts().tokens, 0);
        assert_eq!(load_json("{}").unwrap().counts().tokens, 0);
    }

    #[test]
    fn yaml_and_json_files_mix() {
        let a = "tenants:\n  - name: team-a\naccess_policies:\n  - name: pol\n    realms: [{tenant: team-a}]\n";
        let b = format!(
            "{{\"tokens\": [\n  {{\"name\": \"t\", \"access_policy\": \"pol\", \"hash\": \"{}\"}}\n]}}",
            h("glc_t")
        );
        let s = load_texts(
            &[(Path::new("a.yaml"), a), (Path::new("b.json"), &b)],
            "local",
        )
        .unwrap();
        assert_eq!(s.counts().tokens, 1);
        // a name defined in the YAML file and again in the JSON file: located in the JSON file
        let c = "{\n  \"tenants\": [\n    {\"name\": \"team-a\"}\n  ]\n}\n";
        let e = load_texts(
            &[(Path::new("a.yaml"), a), (Path::new("c.json"), c)],
            "local",
        )
        .unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(
            e.0[0].to_string(),
            "c.json:3:14: tenant \"team-a\" is defined twice"
        );
    }

    #[test]
    fn json_semantic_errors_are_all_reported_with_lines() {
        let text = r#"{
"tenants": [
  {"name": "ab"},
  {"name": "team-a"},
  {"name": "team-a"}
],
"access_policies": [
  {"name": "pol", "scopes": ["metrics:read"], "realms": [
    {"tenant": "nobody"},
    {"tenant": "team-a", "cluster": "mars"},
    {"tenant": "team-a", "label_policies": [
      {"selector": "{env=~\"(\"}"}]},
    {"identifier": "1"}
  ]}
],
"service_accounts": [
  {"name": "sa", "role": "Viewer", "access_policy": "nope"}
],
"tokens": [
  {"name": "t1", "access_policy": "missing", "hash": "sha256:00"},
  {"name": "t2", "service_account": "ghost", "hash": "HASH",
   "expires_at": "tomorrow"},
  {"name": "t3", "hash": "HASH"},
  {"name": "t2", "access_policy": "pol", "hash": "HASH"}
]
}
"#
        .replace("HASH", &h("x"));
        let e = load_json(&text).unwrap_err();
        let got: Vec<(u32, u32, &str)> =
            e.0.iter()
                .map(|e| (e.line, e.column, e.message.as_str()))
                .collect();
        let has = |line: u32, col: u32, frag: &str| {
            got.iter()
                .any(|(l, c, m)| *l == line && *c == col && m.contains(frag))
        };
        assert!(has(3, 12, "invalid tenant name \"ab\""), "{got:?}");
        assert!(has(5, 12, "tenant \"team-a\" is defined twice"), "{got:?}");
        assert!(has(9, 16, "unknown tenant \"nobody\""), "{got:?}");
        assert!(has(10, 37, "unknown cluster \"mars\""), "{got:?}");
        assert!(
            has(10, 16, "is in cluster \"local\", not \"mars\""),
            "{got:?}"
        );
        assert!(has(12, 7, "invalid regular expression"), "{got:?}");
        assert!(has(13, 5, "a realm needs"), "{got:?}");
        assert!(has(17, 53, "unknown access policy \"nope\""), "{got:?}");
        assert!(has(20, 35, "unknown access policy \"missing\""), "{got:?}");
        assert!(has(20, 54, "invalid hash"), "{got:?}");
        assert!(has(21, 37, "unknown service account \"ghost\""), "{got:?}");
        assert!(has(22, 18, "invalid expires_at"), "{got:?}");
        assert!(has(23, 3, "exactly one of"), "{got:?}");
        assert!(has(24, 12, "token \"t2\" is defined twice"), "{got:?}");
        assert!(has(24, 50, "same hash as another token"), "{got:?}");
        assert_eq!(got.len(), 15, "{got:?}");
        assert!(
            e.to_string()
                .starts_with("p.json:3:12: invalid tenant name"),
            "{e}"
        );
    }

    /// The one error of a JSON text that does not parse: its line and message.
    fn json_err(text: &str) -> (u32, String) {
        let e = load_json(text).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].file, PathBuf::from("p.json"));
        assert!(e.0[0].column >= 1, "{e}");
        (e.0[0].line, e.0[0].message.clone())
    }

    #[test]
    fn json_parse_errors_are_located() {
        // unknown field, inside a located value inside another
        let (l, m) = json_err(
            "{\"access_policies\": [\n {\"name\": \"pol\", \"realms\": [\n  {\"tenant\": \"*\",\n   \"colour\": \"red\"}]}]}",
        );
        assert_eq!(l, 4);
        assert!(m.starts_with("unknown field `colour`"), "{m}");
        // unknown field at the top
        let (l, m) = json_err("{\n\"tenants\": [],\n\"users\": []}");
        assert_eq!(l, 3);
        assert!(m.starts_with("unknown field `users`"), "{m}");
        // wrong types
        let (l, m) = json_err("{\"tokens\": [\n  {\"name\": 5, \"hash\": \"x\"}]}");
        assert_eq!(l, 2);
        assert!(
            m.contains("invalid type: integer `5`, expected a string"),
            "{m}"
        );
        let (l, m) = json_err("{\"tenants\":\n {\"name\": \"team-a\"}}");
        assert_eq!(l, 2);
        assert!(m.contains("invalid type: map, expected a sequence"), "{m}");
        let (l, m) =
            json_err("{\"service_accounts\": [\n\n {\"name\": \"a\", \"role\": \"Root\"}]}");
        assert_eq!(l, 3);
        assert!(m.contains("unknown variant `Root`"), "{m}");
        // unknown scope, bad CIDR (checked while parsing, as in YAML)
        let (l, m) = json_err(
            "{\"access_policies\": [\n {\"name\": \"pol\",\n  \"scopes\": [\"metrics:read\", \"metrics:fly\"]}]}",
        );
        assert_eq!(l, 3);
        assert!(m.contains("unknown scope \"metrics:fly\""), "{m}");
        let (l, m) = json_err(
            "{\"access_policies\": [\n {\"name\": \"pol\", \"conditions\": {\n  \"allowed_subnets\": [\n   \"10.0.0.0/8\",\n   \"10.0.0.0/33\"]}}]}",
        );
        assert_eq!(l, 5);
        assert!(m.contains("10.0.0.0/33"), "{m}");
        // a selector that is neither text nor a matcher list
        let (l, m) = json_err(
            "{\"access_policies\": [{\"name\": \"pol\", \"realms\": [{\"tenant\": \"*\",\n \"label_policies\": [\n  {\"selector\": 7}]}]}]}",
        );
        assert_eq!(l, 3);
        assert!(m.contains("RawSelector"), "{m}");
        // syntax: a missing comma, a trailing comma, a bad literal, trailing characters
        let (l, m) = json_err("{\"tenants\": [\n {\"name\": \"a\"}\n {\"name\": \"b\"}]}");
        assert_eq!(l, 3);
        assert!(m.contains("expected `,` or `]`"), "{m}");
        let (l, _) = json_err("{\"tenants\": [\n {\"name\": \"team-a\"},\n]}");
        assert_eq!(l, 3);
        let (l, _) = json_err("{\"tokens\": [\n {\"name\": \"t\", \"status\": nul}]}");
        assert_eq!(l, 2);
        let (l, m) = json_err("{}\n\n{}");
        assert_eq!(l, 3);
        assert!(m.contains("trailing characters"), "{m}");
        let (_, m) = json_err("null");
        assert!(m.contains("invalid type: null"), "{m}");
        // the message carries no position of its own: the file:line:col prefix has it
        assert!(!m.contains(" at line "), "{m}");
    }

    #[test]
    fn truncated_json_is_an_error_at_its_end() {
        let full = hashed(GOOD_JSON);
        for cut in 1..full.trim_end().len() {
            let Some(part) = full.get(..cut) else {
                continue;
            };
            if part.trim().is_empty() {
                continue;
            }
            let e = load_json(part).expect_err(part);
            let last_line = part.split('\n').count() as u32;
            assert!(e.0[0].line <= last_line, "{cut}: {e}");
            assert!(e.0[0].line >= 1 && e.0[0].column >= 1, "{cut}: {e}");
        }
        let (l, m) = json_err("{\"tokens\": [\n {\"name\": \"t");
        assert_eq!(l, 2);
        assert!(m.contains("EOF"), "{m}");
    }

    #[test]
    fn deeply_nested_json_is_an_error_not_a_crash() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        // at the top (serde_json's recursion limit), inside a located value (skipped by a loop,
        // then refused by type), and inside a selector (buffered for the untagged enum: the limit)
        for text in [
            deep(100_000),
            format!("{{\"tokens\": [{}]}}", deep(100_000)),
            format!("{{\"tokens\": [{{\"name\": {}}}]}}", deep(100_000)),
            format!(
                "{{\"access_policies\": [{{\"name\": \"pol\", \"realms\": [{{\"tenant\": \"*\", \"label_policies\": [{{\"selector\": [{}]}}]}}]}}]}}",
                deep(100_000)
            ),
            format!(
                "{{\"access_policies\": [{{\"name\": \"pol\", \"realms\": [{{\"tenant\": \"*\", \"label_policies\": [{{\"selector\": {}}}]}}]}}]}}",
                "[".repeat(100_000)
            ),
            "{".repeat(100_000),
            "\"".repeat(3),
        ] {
            let e = load_json(&text).unwrap_err();
            assert_eq!(e.0.len(), 1, "{e}");
            assert_eq!(e.0[0].line, 1);
        }
        let (_, m) = json_err(&deep(200));
        assert!(
            m.contains("invalid type: sequence, expected a string"),
            "{m}"
        );
    }

    /// A small deterministic fuzz: bytes of a valid file deleted, duplicated or replaced (with
    /// JSON punctuation and multi-byte characters among them) give a set or located errors.
    #[test]
    fn mutated_json_never_panics() {
        let good = hashed(GOOD_JSON);
        let pieces = [
            "{", "}", "[", "]", ",", ":", "\"", "\\", "é", "😀", "\n", "0", "null", "\\u00e9",
            "\\ud800", " ",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for _ in 0..3000 {
            let mut t = good.clone();
            for _ in 0..1 + next(3) {
                let mut at = next(t.len());
                while !t.is_char_boundary(at) {
                    at -= 1;
                }
                match next(3) {
                    0 => {
                        let mut end = (at + 1 + next(8)).min(t.len());
                        while !t.is_char_boundary(end) {
                            end += 1;
                        }
                        t.replace_range(at..end, "");
                    }
                    1 => t.insert_str(at, pieces[next(pieces.len())]),
                    _ => {
                        let mut end = (at + 1).min(t.len());
                        while !t.is_char_boundary(end) {
                            end += 1;
                        }
                        t.replace_range(at..end, pieces[next(pieces.len())]);
                    }
                }
            }
            let lines = t.split('\n').count() as u32;
            if let Err(e) = load_json(&t) {
                for e in &e.0 {
                    assert!(e.line >= 1 && e.line <= lines && e.column >= 1, "{e}\n{t}");
                }
            }
        }
    }

    #[test]
    fn large_json_files_load() {
        let mut t = String::from(
            "{\"tenants\": [{\"name\": \"team-a\"}], \"access_policies\": [{\"name\": \"pol\"}], \"tokens\": [\n",
        );
        for i in 0..40_000 {
            if i > 0 {
                t += ",\n";
            }
            t += &format!(
                "{{\"name\": \"t{i}\", \"access_policy\": \"pol\", \"hash\": \"sha256:{:064x}\"}}",
                i + 1
            );
        }
        t += "]}";
        assert_eq!(load_json(&t).unwrap().counts().tokens, 40_000);
        // an error near the end is still located on its line
        let bad = t.replace(
            "\"t39998\", \"access_policy\": \"pol\"",
            "\"t39998\", \"access_policy\": \"lop\"",
        );
        let e = load_json(&bad).unwrap_err();
        assert_eq!((e.0[0].line, e.0[0].column), (40_000, 37), "{e}");
    }
}
