//! Applies a rewrite-mode restriction to a request: which parameter of which endpoint carries a
//! query, in the query string and in a form body alike, and which endpoints cannot be filtered.

use super::{LbacError, QueryLimits, RewriteCache, logql, promql};
use crate::config::BackendKind;
use crate::selector::Matcher;
use bytes::Bytes;
use http_body_util::BodyExt;

/// Largest form body ever read to find a query in it: a backstop behind the gateway's
/// `limits.max_read_body_bytes` (at most this), which is enforced before the body gets here.
pub const MAX_FORM_BODY: usize = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    PromQL,
    LogQL,
}

/// Which parameters of a read route carry a query or selector, and which others it may carry.
#[derive(Debug, PartialEq, Eq)]
pub struct Params {
    /// Read by the backend as a query (PromQL or LogQL): each one is rewritten.
    pub queries: &'static [&'static str],
    /// Read as series selectors (`match[]`; Loki also `match`): each one is rewritten, and must
    /// stay a plain selector.
    pub selectors: &'static [&'static str],
    /// Added with the policy as its value when the request carries none of the above (an empty
    /// value counts as none): labels and series endpoints then list only what the policy allows.
    pub add: Option<&'static str>,
    /// The other parameters the backend reads, none of which selects data; passed as they are.
    /// Any parameter in none of these lists is refused (403): it is not known to be harmless.
    pub others: &'static [&'static str],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Treatment {
    /// Rewrite the parameters as `Params` says.
    Rewrite(&'static Params),
    /// Reads no series data (e.g. `format_query`): forwarded as it is.
    Pass,
    /// Cannot be filtered here: refused for restricted tokens.
    Refuse,
}

const PROM_INSTANT: Params = Params {
    queries: &["query"],
    selectors: &[],
    add: None,
    others: &["time", "timeout", "limit", "lookback_delta", "stats"],
};
const PROM_RANGE: Params = Params {
    queries: &["query"],
    selectors: &[],
    add: None,
    others: &[
        "start",
        "end",
        "step",
        "timeout",
        "limit",
        "lookback_delta",
        "stats",
    ],
};
const PROM_EXEMPLARS: Params = Params {
    queries: &["query"],
    selectors: &[],
    add: None,
    others: &["start", "end"],
};
const PROM_SERIES: Params = Params {
    queries: &[],
    selectors: &["match[]"],
    add: Some("match[]"),
    others: &["start", "end", "limit"],
};
const LOKI_QUERY: Params = Params {
    queries: &["query"],
    selectors: &[],
    add: Some("query"),
    others: &["time", "limit", "direction"],
};
const LOKI_RANGE: Params = Params {
    queries: &["query"],
    selectors: &[],
    add: Some("query"),
    others: &[
        "start",
        "end",
        "since",
        "limit",
        "direction",
        "step",
        "interval",
    ],
};
const LOKI_LABELS: Params = Params {
    queries: &["query"],
    selectors: &[],
    add: Some("query"),
    others: &["start", "end", "since"],
};
const LOKI_SERIES: Params = Params {
    queries: &[],
    selectors: &["match", "match[]"],
    add: Some("match[]"),
    others: &["start", "end", "since"],
};
const LOKI_STATS: Params = Params {
    queries: &["query"],
    selectors: &[],
    add: Some("query"),
    others: &[
        "start",
        "end",
        "since",
        "limit",
        "direction",
        "step",
        "interval",
    ],
};
const LOKI_VOLUME_RANGE: Params = Params {
    queries: &["query"],
    selectors: &[],
    add: Some("query"),
    others: &[
        "start",
        "end",
        "since",
        "limit",
        "direction",
        "step",
        "interval",
        "aggregateBy",
        "targetLabels",
    ],
};
const LOKI_VOLUME: Params = Params {
    queries: &["query"],
    selectors: &[],
    add: Some("query"),
    others: &[
        "time",
        "start",
        "end",
        "since",
        "limit",
        "direction",
        "aggregateBy",
        "targetLabels",
    ],
};
const LOKI_PATTERNS: Params = Params {
    queries: &["query"],
    selectors: &[],
    add: Some("query"),
    others: &["start", "end", "since", "step"],
};
const LOKI_DETECTED: Params = Params {
    queries: &["query"],
    selectors: &[],
    add: Some("query"),
    others: &[
        "start",
        "end",
        "since",
        "step",
        "limit",
        "line_limit",
        "field_limit",
    ],
};
const LOKI_TAIL: Params = Params {
    queries: &["query"],
    selectors: &[],
    add: Some("query"),
    others: &["start", "since", "limit", "delay_for"],
};

/// How a read route is handled in rewrite mode.
pub fn treatment(kind: BackendKind, route: &str) -> (Lang, Treatment) {
    match kind {
        BackendKind::Mimir | BackendKind::Prometheus => {
            let t = match route {
                "/prometheus/api/v1/query" => Treatment::Rewrite(&PROM_INSTANT),
                "/prometheus/api/v1/query_range" => Treatment::Rewrite(&PROM_RANGE),
                "/prometheus/api/v1/query_exemplars" => Treatment::Rewrite(&PROM_EXEMPLARS),
                "/prometheus/api/v1/series"
                | "/prometheus/api/v1/labels"
                | "/prometheus/api/v1/label/{name}/values" => Treatment::Rewrite(&PROM_SERIES),
                "/prometheus/api/v1/format_query" => Treatment::Pass,
                // metadata, remote read, cardinality: no selector to restrict
                _ => Treatment::Refuse,
            };
            (Lang::PromQL, t)
        }
        BackendKind::Loki => {
            let t = match route {
                "/loki/api/v1/query" => Treatment::Rewrite(&LOKI_QUERY),
                "/loki/api/v1/query_range" => Treatment::Rewrite(&LOKI_RANGE),
                "/loki/api/v1/label"
                | "/loki/api/v1/labels"
                | "/loki/api/v1/label/{name}/values" => Treatment::Rewrite(&LOKI_LABELS),
                "/loki/api/v1/series" => Treatment::Rewrite(&LOKI_SERIES),
                "/loki/api/v1/index/stats" => Treatment::Rewrite(&LOKI_STATS),
                "/loki/api/v1/index/volume" => Treatment::Rewrite(&LOKI_VOLUME),
                "/loki/api/v1/index/volume_range" => Treatment::Rewrite(&LOKI_VOLUME_RANGE),
                "/loki/api/v1/patterns" => Treatment::Rewrite(&LOKI_PATTERNS),
                "/loki/api/v1/detected_labels"
                | "/loki/api/v1/detected_fields"
                | "/loki/api/v1/detected_field/{name}/values" => Treatment::Rewrite(&LOKI_DETECTED),
                "/loki/api/v1/tail" => Treatment::Rewrite(&LOKI_TAIL),
                "/loki/api/v1/format_query" => Treatment::Pass,
                // a read route added to the table without a decision here: refused
                _ => Treatment::Refuse,
            };
            (Lang::LogQL, t)
        }
        _ => (Lang::PromQL, Treatment::Refuse),
    }
}

/// What a rewrite is asked to do, with the cache that remembers the answers.
pub struct Rewriter<'a> {
    pub lang: Lang,
    pub params: &'static Params,
    pub policy: &'a [Matcher],
    pub limits: QueryLimits,
    pub cache: &'a RewriteCache,
}

#[derive(Clone, Copy, Debug)]
enum ParamKind {
    Query,
    Selector,
}

impl Rewriter<'_> {
    fn rewrite_one(
        &self,
        kind: ParamKind,
        value: &str,
        policy_key: &str,
    ) -> Result<String, LbacError> {
        let (lang, policy, limits) = (self.lang, self.policy, &self.limits);
        // the length limit first: an over-long value is not even hashed into the cache
        limits.check_len("query", value)?;
        let key = format!("{lang:?}|{kind:?}|{policy_key}\u{0}{value}");
        self.cache.get_or_insert_with(key, || {
            // promql-parser panics on some numbers (`x offset 1e20`: Duration::from_secs_f64);
            // a panic here must be the client's 400, not a dropped connection
            let run = || match (lang, kind) {
                (Lang::PromQL, ParamKind::Selector) => {
                    promql::rewrite_series_selector(value, policy, limits)
                }
                (Lang::PromQL, ParamKind::Query) => promql::rewrite(value, policy, limits),
                (Lang::LogQL, ParamKind::Selector) => {
                    logql::rewrite_series_selector(value, policy, limits)
                }
                (Lang::LogQL, ParamKind::Query) => logql::rewrite(value, policy, limits),
            };
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|_| {
                Err(LbacError::BadQuery(format!(
                    "invalid {lang:?}: the query cannot be parsed"
                )))
            })
        })
    }
}

/// Percent-decodes one `application/x-www-form-urlencoded` component as Go's
/// `url.QueryUnescape` does (`+` is a space); an invalid `%` escape is an error, as it is for
/// the backend, rather than a literal `%`.
fn unescape(raw: &[u8]) -> Result<String, LbacError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (
                    raw.get(i + 1).copied().and_then(hex),
                    raw.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                    _ => {
                        return Err(LbacError::BadQuery(
                            "invalid percent-encoding in the request parameters".into(),
                        ));
                    }
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| LbacError::BadQuery("request parameters are not valid UTF-8".into()))
}

/// Decodes an urlencoded string into its pairs, strictly (see [`unescape`]).
fn decode_form(encoded: &[u8]) -> Result<Vec<(String, String)>, LbacError> {
    let mut pairs = Vec::new();
    for part in encoded.split(|&c| c == b'&') {
        if part.is_empty() {
            continue;
        }
        if part.contains(&b';') {
            // Go's url.ParseQuery refuses `;` as a separator; what it would make of the pair
            // is not what we would
            return Err(LbacError::BadQuery(
                "';' in the request parameters; separate parameters with '&' and encode ';' as %3B"
                    .into(),
            ));
        }
        let (k, v) = match part.iter().position(|&c| c == b'=') {
            Some(eq) => (&part[..eq], &part[eq + 1..]),
            None => (part, &b""[..]),
        };
        pairs.push((unescape(k)?, unescape(v)?));
    }
    Ok(pairs)
}

/// Rewrites the parameters of an urlencoded string; returns the new string and whether a query
/// or selector parameter with a value was found.
fn rewrite_form(
    encoded: &[u8],
    rw: &Rewriter<'_>,
    policy_key: &str,
) -> Result<(String, bool), LbacError> {
    let p = rw.params;
    let mut found = false;
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in decode_form(encoded)? {
        let kind = if p.queries.contains(&k.as_str()) {
            ParamKind::Query
        } else if p.selectors.contains(&k.as_str()) {
            ParamKind::Selector
        } else if p.others.contains(&k.as_str()) {
            out.append_pair(&k, &v);
            continue;
        } else {
            return Err(LbacError::Forbidden(format!(
                "parameter {:?} is not allowed on a read restricted by label policies (allowed: {})",
                k.chars().take(64).collect::<String>(),
                p.queries
                    .iter()
                    .chain(p.selectors)
                    .chain(p.others)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        if v.trim().is_empty() && p.add.is_some() {
            // an empty query or selector reads everything: it is replaced by the policy
            continue;
        }
        found = true;
        out.append_pair(&k, &rw.rewrite_one(kind, &v, policy_key)?);
    }
    Ok((out.finish(), found))
}

fn policy_param(lang: Lang, policy: &[Matcher]) -> String {
    match lang {
        Lang::PromQL => promql::policy_selector(policy),
        Lang::LogQL => logql::policy_selector(policy),
    }
}

/// Whether the body is a form the backend reads, judged strictly: Go's `ParseMediaType` gives up
/// on a malformed or repeated parameter (and the backend then ignores the body) where a lenient
/// reading would find a form, so anything but the bare media type with at most a `charset` is
/// refused.
fn is_form(headers: &http::HeaderMap) -> bool {
    let mut values = headers.get_all(http::header::CONTENT_TYPE).iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return false;
    };
    let Ok(v) = v.to_str() else {
        return false;
    };
    let mut parts = v.split(';');
    let media = parts.next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return false;
    }
    match (parts.next(), parts.next()) {
        (None, _) => true,
        (Some(p), None) => p.trim().split_once('=').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("charset")
                && !v.is_empty()
                && v.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        }),
        _ => false,
    }
}

/// The rewritten query string and body of a restricted read. Every parameter that carries a
/// query or selector is rewritten wherever it appears (query string and form body), so a request
/// carrying one in both places cannot let either through unrestricted; a parameter the route is
/// not known to read harmlessly is refused.
pub async fn apply<B>(
    method: &http::Method,
    headers: &mut http::HeaderMap,
    query_string: Option<&str>,
    body: B,
    rw: &Rewriter<'_>,
) -> Result<(Option<String>, Option<Bytes>), LbacError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (lang, params, policy) = (rw.lang, rw.params, rw.policy);
    let policy_key = crate::selector::MatchersText(policy).to_string();
    let (mut qs, mut found) = match query_string {
        Some(q) => rewrite_form(q.as_bytes(), rw, &policy_key)?,
        None => (String::new(), false),
    };
    // the body: read (bounded) and rewritten if it is a form, refused if it is anything else
    let limited = http_body_util::Limited::new(body, MAX_FORM_BODY);
    let bytes = limited
        .collect()
        .await
        .map_err(|e| {
            LbacError::BadQuery(format!(
                "request body unreadable or larger than {MAX_FORM_BODY} bytes: {e}"
            ))
        })?
        .to_bytes();
    let new_body = if bytes.is_empty() {
        bytes
    } else if method != http::Method::POST {
        // Go's ParseForm reads a body only for POST, PUT and PATCH (and read routes are GET or
        // POST): a GET's body would be rewritten here and ignored there, so the backend would
        // see no selector at all
        return Err(LbacError::BadQuery(format!(
            "a label-restricted {method} request cannot carry a body; send its parameters in the query string, or POST them as a form"
        )));
    } else if is_form(headers) {
        let (b, f) = rewrite_form(&bytes, rw, &policy_key)?;
        found |= f;
        Bytes::from(b)
    } else {
        return Err(LbacError::BadQuery(
            "a label-restricted read must carry its parameters in the query string or an application/x-www-form-urlencoded body".into(),
        ));
    };
    if !found && let Some(add) = params.add {
        let mut s = form_urlencoded::Serializer::new(qs);
        s.append_pair(add, &policy_param(lang, policy));
        qs = s.finish();
    }
    headers.remove(http::header::CONTENT_LENGTH);
    if !new_body.is_empty() {
        headers.insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from(new_body.len()),
        );
    }
    Ok(((!qs.is_empty()).then_some(qs), Some(new_body)))
}

/// The 403 for a route that cannot be filtered in rewrite mode.
pub fn refused(route: &str) -> LbacError {
    LbacError::Forbidden(format!(
        "{route} cannot be filtered by label policies and is refused for this token; {}",
        super::USE_HEADER_MODE
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::parse_selector;
    use http_body_util::Full;

    fn pol() -> Vec<Matcher> {
        parse_selector(r#"{env="prod"}"#).unwrap().matchers
    }

    async fn run(
        qs: Option<&str>,
        body: &str,
        ctype: Option<&str>,
        kind: BackendKind,
        route: &str,
    ) -> Result<(Option<String>, String), LbacError> {
        let mut h = http::HeaderMap::new();
        if let Some(c) = ctype {
            h.insert("content-type", c.parse().unwrap());
        }
        let (lang, t) = treatment(kind, route);
        let params = match t {
            Treatment::Rewrite(p) => p,
            Treatment::Refuse => return Err(refused(route)),
            Treatment::Pass => return Ok((qs.map(str::to_string), String::new())),
        };
        let (policy, cache) = (pol(), RewriteCache::default());
        let rw = Rewriter {
            lang,
            params,
            policy: &policy,
            limits: QueryLimits::default(),
            cache: &cache,
        };
        let method = if body.is_empty() {
            http::Method::GET
        } else {
            http::Method::POST
        };
        let (q, b) = apply(
            &method,
            &mut h,
            qs,
            Full::new(Bytes::from(body.to_string())),
            &rw,
        )
        .await?;
        Ok((
            q,
            b.map(|b| String::from_utf8(b.to_vec()).unwrap())
                .unwrap_or_default(),
        ))
    }

    fn decoded(qs: &str, key: &str) -> Vec<String> {
        form_urlencoded::parse(qs.as_bytes())
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
            .collect()
    }

    #[tokio::test]
    async fn query_in_string_and_body_are_both_rewritten() {
        let (q, b) = run(
            Some("query=up&time=1"),
            "query=sum(rate(x%5B5m%5D))",
            Some("application/x-www-form-urlencoded"),
            BackendKind::Mimir,
            "/prometheus/api/v1/query",
        )
        .await
        .unwrap();
        assert_eq!(
            decoded(q.as_deref().unwrap(), "query"),
            ["up{env=\"prod\"}"]
        );
        assert_eq!(decoded(q.as_deref().unwrap(), "time"), ["1"]);
        assert_eq!(decoded(&b, "query"), ["sum(rate(x{env=\"prod\"}[5m]))"]);
    }

    #[tokio::test]
    async fn repeated_params_are_all_rewritten() {
        let (q, _) = run(
            Some("query=a&query=b"),
            "",
            None,
            BackendKind::Mimir,
            "/prometheus/api/v1/query",
        )
        .await
        .unwrap();
        assert_eq!(
            decoded(q.as_deref().unwrap(), "query"),
            ["a{env=\"prod\"}", "b{env=\"prod\"}"]
        );
    }

    #[tokio::test]
    async fn series_and_labels_get_a_match_when_none_is_given() {
        for route in [
            "/prometheus/api/v1/labels",
            "/prometheus/api/v1/label/{name}/values",
            "/prometheus/api/v1/series",
        ] {
            let (q, _) = run(Some("start=1"), "", None, BackendKind::Prometheus, route)
                .await
                .unwrap();
            assert_eq!(
                decoded(q.as_deref().unwrap(), "match[]"),
                ["{env=\"prod\"}"],
                "{route}"
            );
        }
        let (q, _) = run(
            Some("match[]=up&match[]={job=\"x\"}"),
            "",
            None,
            BackendKind::Mimir,
            "/prometheus/api/v1/series",
        )
        .await
        .unwrap();
        assert_eq!(
            decoded(q.as_deref().unwrap(), "match[]"),
            ["up{env=\"prod\"}", "{env=\"prod\",job=\"x\"}"]
        );
        // a match[] in the form body counts: none is added to the query string
        let (q, b) = run(
            None,
            "match%5B%5D=up",
            Some("application/x-www-form-urlencoded"),
            BackendKind::Mimir,
            "/prometheus/api/v1/series",
        )
        .await
        .unwrap();
        assert_eq!(q, None);
        assert_eq!(decoded(&b, "match[]"), ["up{env=\"prod\"}"]);
    }

    #[tokio::test]
    async fn loki_queries_and_added_selectors() {
        let (q, _) = run(
            Some("query=%7Bapp%3D%22x%22%7D%20%7C%3D%20%22e%22"),
            "",
            None,
            BackendKind::Loki,
            "/loki/api/v1/query_range",
        )
        .await
        .unwrap();
        assert_eq!(
            decoded(q.as_deref().unwrap(), "query"),
            ["{app=\"x\", env=\"prod\"} |= \"e\""]
        );
        for route in [
            "/loki/api/v1/labels",
            "/loki/api/v1/label/{name}/values",
            "/loki/api/v1/detected_labels",
            "/loki/api/v1/index/volume",
        ] {
            let (q, _) = run(None, "", None, BackendKind::Loki, route).await.unwrap();
            assert_eq!(
                decoded(q.as_deref().unwrap(), "query"),
                ["{env=\"prod\"}"],
                "{route}"
            );
        }
        let (q, _) = run(None, "", None, BackendKind::Loki, "/loki/api/v1/series")
            .await
            .unwrap();
        assert_eq!(
            decoded(q.as_deref().unwrap(), "match[]"),
            ["{env=\"prod\"}"]
        );
    }

    #[tokio::test]
    async fn unfilterable_endpoints_bad_bodies_and_bad_queries() {
        for route in [
            "/prometheus/api/v1/cardinality/*",
            "/prometheus/api/v1/read",
            "/prometheus/api/v1/metadata",
        ] {
            assert!(
                matches!(
                    run(None, "", None, BackendKind::Mimir, route).await,
                    Err(LbacError::Forbidden(_))
                ),
                "{route}"
            );
        }
        let r = run(
            None,
            "{\"query\":\"up\"}",
            Some("application/json"),
            BackendKind::Mimir,
            "/prometheus/api/v1/query",
        )
        .await;
        assert!(matches!(r, Err(LbacError::BadQuery(_))));
        let r = run(
            None,
            "--x\r\nContent-Disposition: form-data; name=\"query\"\r\n\r\nup\r\n--x--",
            Some("multipart/form-data; boundary=x"),
            BackendKind::Mimir,
            "/prometheus/api/v1/query",
        )
        .await;
        assert!(
            matches!(r, Err(LbacError::BadQuery(_))),
            "multipart bodies cannot smuggle a query"
        );
        let r = run(
            Some("query=sum("),
            "",
            None,
            BackendKind::Mimir,
            "/prometheus/api/v1/query",
        )
        .await;
        assert!(matches!(r, Err(LbacError::BadQuery(_))));
        let big = format!("query={}", "a".repeat(MAX_FORM_BODY + 1));
        let r = run(
            None,
            &big,
            Some("application/x-www-form-urlencoded"),
            BackendKind::Mimir,
            "/prometheus/api/v1/query",
        )
        .await;
        assert!(matches!(r, Err(LbacError::BadQuery(_))));
        let (q, _) = run(
            Some("query=up"),
            "",
            None,
            BackendKind::Mimir,
            "/prometheus/api/v1/format_query",
        )
        .await
        .unwrap();
        assert_eq!(q.as_deref(), Some("query=up"));
    }

    #[tokio::test]
    async fn loki_series_match_and_match_brackets_are_both_rewritten() {
        for qs in [
            "match=%7Benv%3D%22dev%22%7D",
            "match%5B%5D=%7Bapp%3D%22x%22%7D&match=%7Benv%3D%22dev%22%7D",
        ] {
            let (q, _) = run(Some(qs), "", None, BackendKind::Loki, "/loki/api/v1/series")
                .await
                .unwrap();
            let q = q.unwrap();
            let all: Vec<String> = decoded(&q, "match")
                .into_iter()
                .chain(decoded(&q, "match[]"))
                .collect();
            assert!(!all.is_empty(), "{q}");
            for s in &all {
                assert!(s.ends_with("env=\"prod\"}"), "{s} in {q}");
            }
            // nothing was added next to a given selector
            assert_eq!(all.len(), qs.split('&').count());
        }
        // in a form body too
        let (q, b) = run(
            None,
            "match=%7Benv%3D%22dev%22%7D",
            Some("application/x-www-form-urlencoded"),
            BackendKind::Loki,
            "/loki/api/v1/series",
        )
        .await
        .unwrap();
        assert_eq!(q, None);
        assert_eq!(decoded(&b, "match"), ["{env=\"dev\", env=\"prod\"}"]);
    }

    #[tokio::test]
    async fn unknown_parameters_are_refused_known_ones_pass() {
        let r = run(
            Some("query=up&selector=%7Benv%3D%22dev%22%7D"),
            "",
            None,
            BackendKind::Mimir,
            "/prometheus/api/v1/query",
        )
        .await;
        assert!(
            matches!(&r, Err(LbacError::Forbidden(m)) if m.contains("selector")),
            "{r:?}"
        );
        let r = run(
            Some("query=%7Ba%3D%22b%22%7D&match=%7Benv%3D%22dev%22%7D"),
            "",
            None,
            BackendKind::Loki,
            "/loki/api/v1/query_range",
        )
        .await;
        assert!(matches!(r, Err(LbacError::Forbidden(_))), "{r:?}");
        let (q, _) = run(
            Some("query=up&time=1&timeout=5s"),
            "",
            None,
            BackendKind::Mimir,
            "/prometheus/api/v1/query",
        )
        .await
        .unwrap();
        assert_eq!(decoded(q.as_deref().unwrap(), "timeout"), ["5s"]);
    }

    #[tokio::test]
    async fn bad_encodings_are_refused_and_empty_selectors_get_the_policy() {
        for qs in ["query=%7Bapp%3D%22x%22%7D%zz", "query=up%", "query=%E2%28"] {
            let r = run(Some(qs), "", None, BackendKind::Loki, "/loki/api/v1/query").await;
            assert!(matches!(r, Err(LbacError::BadQuery(_))), "{qs}: {r:?}");
        }
        let r = run(
            Some("query=up;match[]=x"),
            "",
            None,
            BackendKind::Mimir,
            "/prometheus/api/v1/query",
        )
        .await;
        assert!(matches!(r, Err(LbacError::BadQuery(_))), "{r:?}");
        let (q, _) = run(
            Some("query=&start=1"),
            "",
            None,
            BackendKind::Loki,
            "/loki/api/v1/labels",
        )
        .await
        .unwrap();
        assert_eq!(decoded(q.as_deref().unwrap(), "query"), ["{env=\"prod\"}"]);
    }

    #[tokio::test]
    async fn over_long_and_over_deep_queries_name_the_limit() {
        let long = format!("query=up%7Ba%3D%22{}%22%7D", "x".repeat(200_000));
        let r = run(
            Some(&long),
            "",
            None,
            BackendKind::Mimir,
            "/prometheus/api/v1/query",
        )
        .await;
        assert!(
            matches!(&r, Err(LbacError::BadQuery(m)) if m.contains("lbac.max_query_bytes")),
            "{r:?}"
        );
        let deep = format!("query={}up{}", "(".repeat(600), ")".repeat(600));
        let r = run(
            Some(&deep),
            "",
            None,
            BackendKind::Mimir,
            "/prometheus/api/v1/query",
        )
        .await;
        assert!(
            matches!(&r, Err(LbacError::BadQuery(m)) if m.contains("lbac.max_query_depth")),
            "{r:?}"
        );
    }

    /// A GET (or HEAD) with a form body: the backend ignores the body, so a selector in it must
    /// not count as the request's selector (the policy would never be added).
    #[tokio::test]
    async fn bodies_count_only_on_posts_with_a_plain_form_type() {
        let (policy, cache) = (pol(), RewriteCache::default());
        let (lang, t) = treatment(BackendKind::Mimir, "/prometheus/api/v1/label/{name}/values");
        let Treatment::Rewrite(params) = t else {
            panic!()
        };
        let rw = Rewriter {
            lang,
            params,
            policy: &policy,
            limits: QueryLimits::default(),
            cache: &cache,
        };
        let form = |ct: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("content-type", ct.parse().unwrap());
            h
        };
        for m in [http::Method::GET, http::Method::HEAD, http::Method::PUT] {
            let mut h = form("application/x-www-form-urlencoded");
            let r = apply(
                &m,
                &mut h,
                None,
                Full::new(Bytes::from_static(b"match%5B%5D=up")),
                &rw,
            )
            .await;
            assert!(matches!(r, Err(LbacError::BadQuery(_))), "{m}: {r:?}");
        }
        for ct in [
            "application/x-www-form-urlencoded; a=1; a=2",
            "application/x-www-form-urlencoded; charset=\"utf-8\"; x=y",
            "application/x-www-form-urlencoded;",
            "text/plain",
        ] {
            let mut h = form(ct);
            let r = apply(
                &http::Method::POST,
                &mut h,
                None,
                Full::new(Bytes::from_static(b"match%5B%5D=up")),
                &rw,
            )
            .await;
            assert!(matches!(r, Err(LbacError::BadQuery(_))), "{ct}: {r:?}");
        }
        for ct in [
            "application/x-www-form-urlencoded",
            "Application/X-WWW-Form-Urlencoded ; charset=UTF-8",
        ] {
            let mut h = form(ct);
            let (q, b) = apply(
                &http::Method::POST,
                &mut h,
                None,
                Full::new(Bytes::from_static(b"match%5B%5D=up")),
                &rw,
            )
            .await
            .unwrap();
            assert_eq!(q, None, "{ct}");
            assert_eq!(
                decoded(std::str::from_utf8(&b.unwrap()).unwrap(), "match[]"),
                ["up{env=\"prod\"}"]
            );
        }
    }

    #[tokio::test]
    async fn a_parser_panic_is_a_bad_query() {
        for q in ["x offset 1e20", "x[1e400]", "x offset NaN"] {
            let qs = format!("query={}", q.replace(' ', "+"));
            let r = run(
                Some(&qs),
                "",
                None,
                BackendKind::Mimir,
                "/prometheus/api/v1/query",
            )
            .await;
            assert!(matches!(r, Err(LbacError::BadQuery(_))), "{q}: {r:?}");
        }
        let q = format!("query=a{}", "é".repeat(20));
        let r = run(Some(&q), "", None, BackendKind::Loki, "/loki/api/v1/query").await;
        assert!(matches!(r, Err(LbacError::BadQuery(_))), "{r:?}");
    }
}
