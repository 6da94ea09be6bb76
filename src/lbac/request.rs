//! Applies a rewrite-mode restriction to a request: which parameter of which endpoint carries a
//! query, in the query string and in a form body alike, and which endpoints cannot be filtered.

use super::{LbacError, RewriteCache, logql, promql};
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Treatment {
    /// Rewrite every `query` parameter.
    Query,
    /// Rewrite every `query`; add one with the policy when there is none.
    QueryOrAdd,
    /// Rewrite every `match[]`; add one with the policy when there is none.
    Match,
    /// Reads no series data (e.g. `format_query`): forwarded as it is.
    Pass,
    /// Cannot be filtered here: refused for restricted tokens.
    Refuse,
}

impl Treatment {
    fn param(self) -> &'static str {
        match self {
            Treatment::Match => "match[]",
            _ => "query",
        }
    }
}

/// How a read route is handled in rewrite mode.
pub fn treatment(kind: BackendKind, route: &str) -> (Lang, Treatment) {
    match kind {
        BackendKind::Mimir | BackendKind::Prometheus => {
            let t = match route {
                "/prometheus/api/v1/query"
                | "/prometheus/api/v1/query_range"
                | "/prometheus/api/v1/query_exemplars" => Treatment::Query,
                "/prometheus/api/v1/series"
                | "/prometheus/api/v1/labels"
                | "/prometheus/api/v1/label/{name}/values" => Treatment::Match,
                "/prometheus/api/v1/format_query" => Treatment::Pass,
                // metadata, remote read, cardinality: no selector to restrict
                _ => Treatment::Refuse,
            };
            (Lang::PromQL, t)
        }
        BackendKind::Loki => {
            let t = match route {
                "/loki/api/v1/series" => Treatment::Match,
                "/loki/api/v1/format_query" => Treatment::Pass,
                _ => Treatment::QueryOrAdd,
            };
            (Lang::LogQL, t)
        }
        _ => (Lang::PromQL, Treatment::Refuse),
    }
}

/// What a rewrite is asked to do, with the cache that remembers the answers.
pub struct Rewriter<'a> {
    pub lang: Lang,
    pub treatment: Treatment,
    pub policy: &'a [Matcher],
    pub cache: &'a RewriteCache,
}

impl Rewriter<'_> {
    fn rewrite_one(&self, value: &str, policy_key: &str) -> Result<String, LbacError> {
        let (lang, t, policy) = (self.lang, self.treatment, self.policy);
        let key = format!("{lang:?}|{}|{policy_key}\u{0}{value}", t.param());
        self.cache.get_or_insert_with(key, || match (lang, t) {
            (Lang::PromQL, Treatment::Match) => promql::rewrite_series_selector(value, policy),
            (Lang::PromQL, _) => promql::rewrite(value, policy),
            (Lang::LogQL, _) => logql::rewrite(value, policy),
        })
    }
}

/// Rewrites every `param` in an urlencoded string; returns the new string and whether any was found.
fn rewrite_form(
    encoded: &[u8],
    rw: &Rewriter<'_>,
    policy_key: &str,
) -> Result<(String, bool), LbacError> {
    let param = rw.treatment.param();
    let mut found = false;
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(encoded) {
        if k == param {
            found = true;
            out.append_pair(&k, &rw.rewrite_one(&v, policy_key)?);
        } else {
            out.append_pair(&k, &v);
        }
    }
    Ok((out.finish(), found))
}

fn policy_param(lang: Lang, policy: &[Matcher]) -> String {
    match lang {
        Lang::PromQL => promql::policy_selector(policy),
        Lang::LogQL => logql::policy_selector(policy),
    }
}

fn is_form(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// The rewritten query string and body of a restricted read. The query is rewritten wherever
/// it appears (query string and form body), so a request carrying it in both places cannot let
/// either through unrestricted.
pub async fn apply<B>(
    headers: &mut http::HeaderMap,
    query_string: Option<&str>,
    body: B,
    rw: &Rewriter<'_>,
    route: &str,
) -> Result<(Option<String>, Option<Bytes>), LbacError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (lang, t, policy) = (rw.lang, rw.treatment, rw.policy);
    match t {
        Treatment::Refuse => {
            return Err(LbacError::Forbidden(format!(
                "{route} cannot be filtered by label policies and is refused for this token; {}",
                super::USE_HEADER_MODE
            )));
        }
        Treatment::Pass => return Ok((query_string.map(str::to_string), None)),
        _ => {}
    }
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
    } else if is_form(headers) {
        let (b, f) = rewrite_form(&bytes, rw, &policy_key)?;
        found |= f;
        Bytes::from(b)
    } else {
        return Err(LbacError::BadQuery(
            "a label-restricted read must carry its parameters in the query string or an application/x-www-form-urlencoded body".into(),
        ));
    };
    if !found && matches!(t, Treatment::Match | Treatment::QueryOrAdd) {
        let mut s = form_urlencoded::Serializer::new(qs);
        s.append_pair(t.param(), &policy_param(lang, policy));
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
        let (policy, cache) = (pol(), RewriteCache::default());
        let rw = Rewriter {
            lang,
            treatment: t,
            policy: &policy,
            cache: &cache,
        };
        let (q, b) = apply(
            &mut h,
            qs,
            Full::new(Bytes::from(body.to_string())),
            &rw,
            route,
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
}
