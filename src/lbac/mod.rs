//! Label-based access control in rewrite mode (SPEC 7): the policy's matchers are added to every
//! selector of a PromQL or LogQL query, so that a backend which knows nothing of label policies
//! returns only what the token may read.

pub mod logql;
pub mod promql;
pub mod promql_depth;
pub mod request;

use crate::selector::{MatchOp, Matcher, Selector};

/// Why a restricted read cannot go ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LbacError {
    /// The query does not parse (400).
    BadQuery(String),
    /// The restriction cannot be enforced on this request (403).
    Forbidden(String),
}

/// How much of a query the gateway will parse (SPEC 7): longer or deeper queries are refused with
/// 400 before anything recurses over them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueryLimits {
    /// `lbac.max_query_bytes`: longest query text, in bytes.
    pub max_bytes: usize,
    /// `lbac.max_query_depth`: deepest syntax tree (see [`depth`] for how levels count).
    pub max_depth: usize,
}

pub const DEFAULT_MAX_QUERY_BYTES: usize = 128 * 1024;
pub const DEFAULT_MAX_QUERY_DEPTH: usize = 512;
/// The largest `lbac.max_query_depth` a config may set: parsing, rewriting, printing and dropping
/// a tree this deep is tested to fit in half of a gateway worker's stack, in a debug build.
/// (Measured with promql-parser 0.11, the deepest recursion: a release build needs about 0.75 KiB
/// of stack per level of nested function calls, a debug build about 2.7 KiB.)
pub const HARD_MAX_QUERY_DEPTH: usize = 1024;
/// The stack of each gateway worker thread (`obsgate serve`).
pub const WORKER_STACK_BYTES: usize = 8 << 20;
/// The largest `lbac.max_query_bytes` a config may set.
pub const HARD_MAX_QUERY_BYTES: usize = 16 << 20;

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            max_bytes: DEFAULT_MAX_QUERY_BYTES,
            max_depth: DEFAULT_MAX_QUERY_DEPTH,
        }
    }
}

impl QueryLimits {
    /// The 400 for a query over `lbac.max_query_bytes`.
    pub fn check_len(&self, what: &str, query: &str) -> Result<(), LbacError> {
        if query.len() > self.max_bytes {
            return Err(LbacError::BadQuery(format!(
                "{what} is {} bytes long, over the limit lbac.max_query_bytes = {}",
                query.len(),
                self.max_bytes
            )));
        }
        Ok(())
    }

    /// The 400 for a query deeper than `lbac.max_query_depth`.
    pub fn too_deep(&self, what: &str) -> LbacError {
        LbacError::BadQuery(format!(
            "{what} is nested more deeply than the limit lbac.max_query_depth = {}",
            self.max_depth
        ))
    }
}

pub const USE_HEADER_MODE: &str = "use lbac.mode: header with a backend that enforces X-Prom-Label-Policy (Mimir or Loki with label-based access control)";

/// Rewritten queries, keyed by language, parameter kind, policy and query text. Dashboards send
/// the same query text again and again (only `start`/`end`/`time` change), and a PromQL parse
/// costs far more than a lookup. Bounded by bytes; results (refusals included) are pure
/// functions of the key, so a cached answer is always the answer.
pub struct RewriteCache {
    cache: moka::sync::Cache<String, Result<String, LbacError>>,
}

impl RewriteCache {
    pub fn new(max_bytes: u64) -> RewriteCache {
        let cache = moka::sync::Cache::builder()
            .weigher(|k: &String, v: &Result<String, LbacError>| {
                let n = k.len() + v.as_ref().map(String::len).unwrap_or(64) + 64;
                u32::try_from(n).unwrap_or(u32::MAX)
            })
            .max_capacity(max_bytes)
            .build();
        RewriteCache { cache }
    }

    pub fn get_or_insert_with(
        &self,
        key: String,
        f: impl FnOnce() -> Result<String, LbacError>,
    ) -> Result<String, LbacError> {
        if let Some(v) = self.cache.get(&key) {
            return v;
        }
        let v = f();
        self.cache.insert(key, v.clone());
        v
    }
}

impl Default for RewriteCache {
    fn default() -> Self {
        RewriteCache::new(32 << 20)
    }
}

/// Go's `regexp.QuoteMeta`: escapes every RE2 metacharacter.
pub fn quote_meta(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Turns the policy's selectors (OR between them) into one conjunction of matchers that selects
/// exactly the same series, or refuses.
///
/// One selector is used as it is. Several merge only when they are identical except for one label
/// `L` on which each has exactly one `=` or `=~` matcher: `{env="a"}` OR `{env="b"}` becomes
/// `env=~"a|b"` (values regex-quoted, alternatives grouped). Anything else cannot be expressed as
/// one selector and is refused.
pub fn merge_selectors(sels: &[&Selector]) -> Result<Vec<Matcher>, LbacError> {
    let refuse = || {
        LbacError::Forbidden(format!(
            "the token's label policies ({}) cannot be combined into one selector for query rewriting; {USE_HEADER_MODE}",
            sels.iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(" OR ")
        ))
    };
    match sels {
        [] => Err(LbacError::Forbidden("no label policy to apply".into())),
        [one] => Ok(one.matchers.clone()),
        [first, rest @ ..] => {
            // the candidate label: the one whose matchers differ between the selectors
            let differing: Vec<&str> = first
                .matchers
                .iter()
                .map(|m| m.name.as_str())
                .chain(
                    rest.iter()
                        .flat_map(|s| s.matchers.iter().map(|m| m.name.as_str())),
                )
                .filter(|name| {
                    let of = |s: &Selector| {
                        let mut v: Vec<String> = s
                            .matchers
                            .iter()
                            .filter(|m| m.name == *name)
                            .map(|m| m.to_string())
                            .collect();
                        v.sort();
                        v
                    };
                    let f = of(first);
                    rest.iter().any(|s| of(s) != f)
                })
                .collect();
            let label = match differing.first() {
                None => return Ok(first.matchers.clone()), // all identical
                Some(l) if differing.iter().all(|d| d == l) => *l,
                Some(_) => return Err(refuse()),
            };
            let mut alternatives = Vec::with_capacity(sels.len());
            for s in sels {
                let on_label: Vec<&Matcher> =
                    s.matchers.iter().filter(|m| m.name == label).collect();
                match on_label.as_slice() {
                    [m] if m.op == MatchOp::Eq => alternatives.push(quote_meta(&m.value)),
                    [m] if m.op == MatchOp::Re => alternatives.push(format!("(?:{})", m.value)),
                    _ => return Err(refuse()),
                }
            }
            let merged =
                Matcher::new(label, MatchOp::Re, &alternatives.join("|")).map_err(|_| refuse())?;
            let mut out: Vec<Matcher> = first
                .matchers
                .iter()
                .filter(|m| m.name != label)
                .cloned()
                .collect();
            out.push(merged);
            Ok(out)
        }
    }
}

/// The one restriction for a request over several tenants: every tenant must be restricted the
/// same way (a query cannot be rewritten differently per tenant).
pub fn restriction_for(
    tenants: usize,
    restricted: &[(&str, Vec<&Selector>)],
) -> Result<Option<Vec<Matcher>>, LbacError> {
    if restricted.is_empty() {
        return Ok(None);
    }
    if restricted.len() != tenants {
        return Err(LbacError::Forbidden(format!(
            "a query over several tenants where only some are restricted by label policies cannot be rewritten; query them separately or {USE_HEADER_MODE}"
        )));
    }
    let first = merge_selectors(&restricted[0].1)?;
    for (_, sels) in &restricted[1..] {
        if merge_selectors(sels)? != first {
            return Err(LbacError::Forbidden(format!(
                "the tenants of this query have different label policies; query them separately or {USE_HEADER_MODE}"
            )));
        }
    }
    Ok(Some(first))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::parse_selector;

    fn merged(sels: &[&str]) -> Result<String, LbacError> {
        let parsed: Vec<Selector> = sels.iter().map(|s| parse_selector(s).unwrap()).collect();
        let refs: Vec<&Selector> = parsed.iter().collect();
        merge_selectors(&refs).map(|m| Selector::new(m).to_string())
    }

    #[test]
    fn merges_only_when_exactly_equivalent() {
        assert_eq!(merged(&[r#"{env="a"}"#]).unwrap(), r#"{env="a"}"#);
        assert_eq!(
            merged(&[r#"{env="a"}"#, r#"{env="b"}"#]).unwrap(),
            r#"{env=~"a|b"}"#
        );
        assert_eq!(
            merged(&[r#"{env="a.b"}"#, r#"{env=~"c|d"}"#]).unwrap(),
            r#"{env=~"a\\.b|(?:c|d)"}"#
        );
        assert_eq!(
            merged(&[r#"{team="x", env="a"}"#, r#"{env="b", team="x"}"#]).unwrap(),
            r#"{team="x", env=~"a|b"}"#
        );
        assert_eq!(
            merged(&[r#"{env="a"}"#, r#"{env="a"}"#]).unwrap(),
            r#"{env="a"}"#
        );
        // different labels, negative matchers, extra matchers: not expressible as one selector
        assert!(matches!(
            merged(&[r#"{env="a"}"#, r#"{team="b"}"#]),
            Err(LbacError::Forbidden(_))
        ));
        assert!(matches!(
            merged(&[r#"{env!="a"}"#, r#"{env="b"}"#]),
            Err(LbacError::Forbidden(_))
        ));
        assert!(matches!(
            merged(&[r#"{env="a", x="1"}"#, r#"{env="b"}"#]),
            Err(LbacError::Forbidden(_))
        ));
        assert!(matches!(
            merged(&[r#"{env="a", env!="c"}"#, r#"{env="b"}"#]),
            Err(LbacError::Forbidden(_))
        ));
    }

    #[test]
    fn merged_regex_matches_exactly_the_union() {
        let parsed = [
            parse_selector(r#"{env="a.b"}"#).unwrap(),
            parse_selector(r#"{env=~"c+"}"#).unwrap(),
        ];
        let m = merge_selectors(&[&parsed[0], &parsed[1]]).unwrap();
        let s = Selector::new(m);
        for (v, want) in [
            ("a.b", true),
            ("axb", false),
            ("ccc", true),
            ("a.bc", false),
            ("", false),
            ("c", true),
        ] {
            let union = parsed.iter().any(|p| p.matches(|_| Some(v)));
            assert_eq!(union, want, "{v}");
            assert_eq!(s.matches(|_| Some(v)), want, "{v}");
        }
    }

    #[test]
    fn rewrite_cache_computes_once_per_key_refusals_included() {
        let cache = RewriteCache::new(1 << 20);
        let calls = std::cell::Cell::new(0);
        for _ in 0..3 {
            let v = cache.get_or_insert_with("k".into(), || {
                calls.set(calls.get() + 1);
                Ok("out".into())
            });
            assert_eq!(v, Ok("out".to_string()));
        }
        let bad = || {
            calls.set(calls.get() + 1);
            Err(LbacError::BadQuery("x".into()))
        };
        assert!(cache.get_or_insert_with("b".into(), bad).is_err());
        assert!(cache.get_or_insert_with("b".into(), bad).is_err());
        assert_eq!(calls.get(), 2);
    }

    #[test]
    fn quote_meta_is_go_compatible() {
        assert_eq!(
            quote_meta(r"a.b*c(d)|e[f]{g}^$\+?"),
            r"a\.b\*c\(d\)\|e\[f\]\{g\}\^\$\\\+\?"
        );
    }
}
#[cfg(test)]
mod proptests;
