//! LogQL rewrite: every stream selector `{…}` of a log or metric query gets the policy's
//! matchers; every other byte of the query stays as it was.
//!
//! Only stream selectors read data, and outside strings and comments `{` opens nothing else in
//! LogQL. So a lexer that knows LogQL's strings (`"…"` with escapes, raw `` `…` ``) and
//! `#` line comments finds them all. Label filters after `|`, line filters, templates in
//! `line_format`/`label_format` strings and regexes with `{n}` are left alone.

use super::LbacError;
use crate::selector::{Matcher, MatchersText, valid_label_name};

pub const MAX_QUERY_LEN: usize = 128 * 1024;

fn bad(msg: impl Into<String>) -> LbacError {
    LbacError::BadQuery(format!("invalid LogQL: {}", msg.into()))
}

/// Skips a string starting at `i` (at its opening quote); returns the index after it.
fn skip_string(b: &[u8], i: usize) -> Result<usize, LbacError> {
    let q = b[i];
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            c if c == q => return Ok(j + 1),
            b'\\' if q == b'"' => j += 2,
            b'\n' if q == b'"' => return Err(bad("newline in a string")),
            _ => j += 1,
        }
    }
    Err(bad("unterminated string"))
}

/// Checks the inside of a stream selector: `name op "value"` separated by commas.
/// Returns whether it has at least one matcher (`{}` has none).
fn check_matchers(b: &[u8]) -> Result<bool, LbacError> {
    let ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    let mut i = 0;
    ws(&mut i);
    if i >= b.len() {
        return Ok(false);
    }
    loop {
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        let name = std::str::from_utf8(&b[start..i]).unwrap_or("");
        if !valid_label_name(name) {
            return Err(bad("expected a label name in a stream selector"));
        }
        ws(&mut i);
        match b.get(i..i + 2) {
            Some(b"=~") | Some(b"!=") | Some(b"!~") => i += 2,
            _ if b.get(i) == Some(&b'=') => i += 1,
            _ => return Err(bad("expected = != =~ or !~ in a stream selector")),
        }
        ws(&mut i);
        match b.get(i) {
            Some(b'"') | Some(b'`') => i = skip_string(b, i)?,
            _ => return Err(bad("expected a quoted value in a stream selector")),
        }
        ws(&mut i);
        match b.get(i) {
            None => return Ok(true),
            Some(b',') => {
                i += 1;
                ws(&mut i);
                if i >= b.len() {
                    return Err(bad("trailing ',' in a stream selector"));
                }
            }
            Some(_) => return Err(bad("expected ',' or '}' in a stream selector")),
        }
    }
}

/// Adds `policy` to every stream selector of `query`. Unparsable → `BadQuery`.
pub fn rewrite(query: &str, policy: &[Matcher]) -> Result<String, LbacError> {
    if query.len() > MAX_QUERY_LEN {
        return Err(LbacError::BadQuery(format!(
            "query is longer than {MAX_QUERY_LEN} bytes"
        )));
    }
    if query.trim().is_empty() {
        return Err(bad("empty query"));
    }
    let policy_text = MatchersText(policy).to_string();
    let spans = selector_spans(query)?;
    let mut out = String::with_capacity(query.len() + spans.len() * (policy_text.len() + 2));
    let mut copied = 0;
    for (open, close) in spans {
        let has_matchers = check_matchers(&query.as_bytes()[open + 1..close])?;
        out.push_str(&query[copied..close]);
        if has_matchers {
            out.push_str(", ");
        }
        out.push_str(&policy_text);
        copied = close;
    }
    out.push_str(&query[copied..]);
    Ok(out)
}

/// The stream selector to send when a labels/series request names none: just the policy.
pub fn policy_selector(policy: &[Matcher]) -> String {
    format!("{{{}}}", MatchersText(policy))
}

/// Byte offsets `(open, close)` of the `{` and `}` of every stream selector, skipping strings
/// and `#` comments. A `}` outside a selector, a `{` inside one, or an unterminated string or
/// selector is an error.
pub fn selector_spans(query: &str) -> Result<Vec<(usize, usize)>, LbacError> {
    let b = query.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' | b'`' => i = skip_string(b, i)?,
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'}' => return Err(bad("unbalanced '}'")),
            b'{' => {
                let mut j = i + 1;
                loop {
                    match b.get(j) {
                        None => return Err(bad("unterminated stream selector")),
                        Some(b'"') | Some(b'`') => j = skip_string(b, j)?,
                        Some(b'{') => return Err(bad("'{' inside a stream selector")),
                        Some(b'}') => break,
                        Some(_) => j += 1,
                    }
                }
                found.push((i, j));
                i = j + 1;
            }
            _ => i += 1,
        }
    }
    Ok(found)
}

/// The stream selectors of a query, as text, for checks.
pub fn stream_selectors(query: &str) -> Result<Vec<String>, LbacError> {
    Ok(selector_spans(query)?
        .into_iter()
        .map(|(o, c)| query[o..=c].to_string())
        .collect())
}

/// Undoes [`rewrite`] exactly, for checks: removes the policy text the rewriter inserted before
/// each selector's `}`. `None` if some selector does not end with it.
pub fn strip_policy(out: &str, policy: &[Matcher]) -> Option<String> {
    let inner = MatchersText(policy).to_string();
    let with_sep = format!(", {inner}");
    let mut restored = String::with_capacity(out.len());
    let mut copied = 0;
    for (open, close) in selector_spans(out).ok()? {
        let body = &out[open + 1..close];
        let cut = if body.ends_with(&with_sep)
            && !body[..body.len() - with_sep.len()].trim().is_empty()
        {
            with_sep.len()
        } else if body.ends_with(&inner) && body[..body.len() - inner.len()].trim().is_empty() {
            inner.len()
        } else {
            return None;
        };
        restored.push_str(&out[copied..close - cut]);
        copied = close;
    }
    restored.push_str(&out[copied..]);
    Some(restored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::parse_selector;

    fn pol() -> Vec<Matcher> {
        parse_selector(r#"{env="prod"}"#).unwrap().matchers
    }

    fn rw(q: &str) -> String {
        rewrite(q, &pol()).unwrap_or_else(|e| panic!("{q}: {e:?}"))
    }

    #[test]
    fn table_of_rewrites_is_exact() {
        let cases: &[(&str, &str)] = &[
            (r#"{app="x"}"#, r#"{app="x", env="prod"}"#),
            (r#"{}"#, r#"{env="prod"}"#),
            (r#"{ }"#, r#"{ env="prod"}"#),
            (
                r#"{app="x"} |= "error""#,
                r#"{app="x", env="prod"} |= "error""#,
            ),
            (
                r#"{app="x"} |~ "a{2}" != `b}`"#,
                r#"{app="x", env="prod"} |~ "a{2}" != `b}`"#,
            ),
            (
                r#"{app="x"} | json | env="dev""#,
                r#"{app="x", env="prod"} | json | env="dev""#,
            ),
            (
                r#"{app="x"} | logfmt | line_format "{{.msg}}""#,
                r#"{app="x", env="prod"} | logfmt | line_format "{{.msg}}""#,
            ),
            (
                r#"{app="x"} | label_format a="{{.b}}""#,
                r#"{app="x", env="prod"} | label_format a="{{.b}}""#,
            ),
            (
                r#"{app="q\"}"} |= "x""#,
                r#"{app="q\"}", env="prod"} |= "x""#,
            ),
            (r#"{app=`raw"}`}"#, r#"{app=`raw"}`, env="prod"}"#),
            (
                r#"rate({app="x"}[5m])"#,
                r#"rate({app="x", env="prod"}[5m])"#,
            ),
            (
                r#"sum by (level) (count_over_time({app="x"} | json [1m]))"#,
                r#"sum by (level) (count_over_time({app="x", env="prod"} | json [1m]))"#,
            ),
            (
                r#"sum(rate({a="1"}[1m])) / sum(rate({b="2"}[1m]))"#,
                r#"sum(rate({a="1", env="prod"}[1m])) / sum(rate({b="2", env="prod"}[1m]))"#,
            ),
            (r#"{env="dev"}"#, r#"{env="dev", env="prod"}"#),
            (r#"{env!="prod"}"#, r#"{env!="prod", env="prod"}"#),
            (r#"{env=~".*"}"#, r#"{env=~".*", env="prod"}"#),
            (r#"{ns!~"allowed"}"#, r#"{ns!~"allowed", env="prod"}"#),
            (r#"{app="ünïcödé"}"#, r#"{app="ünïcödé", env="prod"}"#),
            (
                "{app=\"x\"} # comment with {braces}\n|= \"y\"",
                "{app=\"x\", env=\"prod\"} # comment with {braces}\n|= \"y\"",
            ),
            (
                r#"{app="x"} | pattern "<ip> - {<_>}""#,
                r#"{app="x", env="prod"} | pattern "<ip> - {<_>}""#,
            ),
            (r#"vector(1)"#, r#"vector(1)"#),
            (
                r#"quantile_over_time(0.99, {a="b"} | unwrap latency [5m]) by (x)"#,
                r#"quantile_over_time(0.99, {a="b", env="prod"} | unwrap latency [5m]) by (x)"#,
            ),
            (r#"{a="b",c="d",}"#, r#"{a="b",c="d",, env="prod"}"#),
            (
                r#"label_replace(rate({a="b"}[1m]), "x", "$1", "y", "(.*)")"#,
                r#"label_replace(rate({a="b", env="prod"}[1m]), "x", "$1", "y", "(.*)")"#,
            ),
            (
                r#"{a="b"} |= "x" or {c="d"}"#,
                r#"{a="b", env="prod"} |= "x" or {c="d", env="prod"}"#,
            ),
        ];
        for (q, want) in cases {
            if want.contains(",, ") {
                // a trailing comma in a selector is not valid LogQL: refused, not rewritten
                assert!(rewrite(q, &pol()).is_err(), "{q}");
                continue;
            }
            assert_eq!(&rw(q), want, "{q}");
        }
        assert!(cases.len() >= 25);
    }

    #[test]
    fn unparsable_queries_are_bad_requests() {
        for q in [
            "",
            "{",
            "}",
            "{app=\"x\"",
            "{app=\"x}",
            "{app}",
            "{app=x}",
            "{1a=\"x\"}",
            "{a=\"b\" c=\"d\"}",
            "{a=\"b\"} |= \"unterminated",
            "{a=\"b\"} }",
            "{a={b}}",
            "{a==\"b\"}",
            "{a=\"b\"}\"\n\"",
        ] {
            assert!(
                matches!(rewrite(q, &pol()), Err(LbacError::BadQuery(_))),
                "{q:?} should be refused"
            );
        }
    }

    #[test]
    fn every_selector_carries_the_policy_in_many_shapes() {
        let q = (0..50)
            .map(|i| format!("count_over_time({{a=\"{i}\"}}[1m])"))
            .collect::<Vec<_>>()
            .join(" + ");
        let out = rw(&q);
        let sels = stream_selectors(&out).unwrap();
        assert_eq!(sels.len(), 50);
        assert!(sels.iter().all(|s| s.ends_with(", env=\"prod\"}")));
    }

    #[test]
    fn strip_policy_undoes_rewrite_exactly_even_with_lookalike_strings() {
        for q in [
            "{\r}",
            r#"{a="env=\"prod\"}"} |= "env=\"prod\"}""#,
            r#"{} or {a=", env=\"prod\"}"}"#,
            "rate({ }[1m])",
        ] {
            let out = rw(q);
            assert_eq!(
                strip_policy(&out, &pol()).as_deref(),
                Some(q),
                "{q} → {out}"
            );
        }
        assert_eq!(
            strip_policy(r#"{a="b"}"#, &pol()),
            None,
            "an unrestricted selector is detected"
        );
    }

    #[test]
    fn multi_matcher_policy_is_printed_with_escapes() {
        let p = parse_selector(r#"{env=~"prod|st\\.age", team!="a\"b"}"#)
            .unwrap()
            .matchers;
        assert_eq!(
            rewrite(r#"{app="x"}"#, &p).unwrap(),
            r#"{app="x", env=~"prod|st\\.age", team!="a\"b"}"#
        );
        assert_eq!(
            policy_selector(&p),
            r#"{env=~"prod|st\\.age", team!="a\"b"}"#
        );
    }
}
