//! PromQL rewrite with `promql-parser`: the policy's matchers are ANDed into every vector and
//! matrix selector anywhere in the tree. A user's own matchers stay, and since matchers of one
//! selector are ANDed, none of them can widen what the policy allows.

use super::{LbacError, QueryLimits};
use crate::selector::{MatchOp, Matcher};
use promql_parser::label::{MatchOp as PMatchOp, Matcher as PMatcher, Matchers};
use promql_parser::parser::{self, Expr, VectorSelector};

fn to_parser_matcher(m: &Matcher) -> Result<PMatcher, LbacError> {
    let op = match m.op {
        MatchOp::Eq => PMatchOp::Equal,
        MatchOp::Neq => PMatchOp::NotEqual,
        // anchored exactly as promql-parser anchors the regexes it parses
        MatchOp::Re | MatchOp::Nre => {
            let re = regex::Regex::new(&format!("^(?:{})$", m.value)).map_err(|e| {
                LbacError::Forbidden(format!("label policy regex cannot be used: {e}"))
            })?;
            if m.op == MatchOp::Re {
                PMatchOp::Re(re)
            } else {
                PMatchOp::NotRe(re)
            }
        }
    };
    Ok(PMatcher::new(op, &m.name, &m.value))
}

fn restrict_selector(vs: &mut VectorSelector, policy: &[PMatcher]) {
    let Matchers {
        matchers,
        or_matchers,
    } = &mut vs.matchers;
    if or_matchers.is_empty() {
        matchers.extend(policy.iter().cloned());
    } else {
        // `{a="1" or b="2"}`: every alternative must carry the policy
        for group in or_matchers.iter_mut() {
            group.extend(policy.iter().cloned());
        }
        if !matchers.is_empty() {
            matchers.extend(policy.iter().cloned());
        }
    }
}

/// Calls `f` on every vector selector of the tree (matrix selectors included).
fn for_each_selector(e: &mut Expr, f: &mut impl FnMut(&mut VectorSelector)) {
    for_each_node(e, &mut |n| match n {
        Expr::VectorSelector(vs) => f(vs),
        Expr::MatrixSelector(ms) => f(&mut ms.vs),
        _ => {}
    });
}

/// Calls `f` on every node of the tree, children first.
fn for_each_node(e: &mut Expr, f: &mut impl FnMut(&mut Expr)) {
    match e {
        Expr::Aggregate(a) => {
            for_each_node(&mut a.expr, f);
            if let Some(p) = a.param.as_mut() {
                for_each_node(p, f);
            }
        }
        Expr::Unary(u) => for_each_node(&mut u.expr, f),
        Expr::Binary(b) => {
            for_each_node(&mut b.lhs, f);
            for_each_node(&mut b.rhs, f);
        }
        Expr::Paren(p) => for_each_node(&mut p.expr, f),
        Expr::Subquery(s) => for_each_node(&mut s.expr, f),
        Expr::Call(c) => {
            for a in c.args.args.iter_mut() {
                for_each_node(a, f);
            }
        }
        Expr::MatrixSelector(_)
        | Expr::VectorSelector(_)
        | Expr::NumberLiteral(_)
        | Expr::StringLiteral(_)
        | Expr::Extension(_) => {}
    }
    f(e)
}

/// The printer sorts matchers, and leaves out grouping that means nothing (`sum by () (x)` is
/// printed `sum(x)`, `a + ignoring () b` as `a + b`); normalizing both sides the same way makes
/// the trees comparable.
pub fn normalize(e: &mut Expr) {
    use promql_parser::parser::LabelModifier;
    for_each_node(e, &mut |n| match n {
        Expr::Aggregate(a) => {
            if matches!(&a.modifier, Some(LabelModifier::Include(l)) if l.labels.is_empty()) {
                a.modifier = None;
            }
        }
        Expr::Binary(b) => {
            if let Some(m) = b.modifier.as_mut()
                && matches!(&m.matching, Some(LabelModifier::Exclude(l)) if l.labels.is_empty())
            {
                m.matching = None;
            }
            if b.modifier
                .as_ref()
                .is_some_and(|m| *m == promql_parser::parser::BinModifier::default())
            {
                b.modifier = None;
            }
        }
        _ => {}
    });
    let key = |m: &PMatcher| (m.name.clone(), m.op.to_string(), m.value.clone());
    for_each_selector(e, &mut |vs| {
        vs.matchers.matchers.sort_by_key(key);
        for g in vs.matchers.or_matchers.iter_mut() {
            g.sort_by_key(key);
        }
    });
}

/// Whether every selector (every alternative of an `or` selector) carries all of `policy`.
pub fn is_restricted(e: &Expr, policy: &[PMatcher]) -> bool {
    let has_all = |ms: &[PMatcher]| policy.iter().all(|p| ms.contains(p));
    selectors(e).iter().all(|vs| {
        if vs.matchers.or_matchers.is_empty() {
            has_all(&vs.matchers.matchers)
        } else {
            // the printer writes only the alternatives: each must carry the policy itself
            vs.matchers.or_matchers.iter().all(|g| has_all(g))
        }
    })
}

/// Every selector in the tree, for checks.
pub fn selectors(e: &Expr) -> Vec<&VectorSelector> {
    fn go<'a>(e: &'a Expr, out: &mut Vec<&'a VectorSelector>) {
        match e {
            Expr::VectorSelector(vs) => out.push(vs),
            Expr::MatrixSelector(ms) => out.push(&ms.vs),
            Expr::Aggregate(a) => {
                go(&a.expr, out);
                if let Some(p) = &a.param {
                    go(p, out);
                }
            }
            Expr::Unary(u) => go(&u.expr, out),
            Expr::Binary(b) => {
                go(&b.lhs, out);
                go(&b.rhs, out);
            }
            Expr::Paren(p) => go(&p.expr, out),
            Expr::Subquery(s) => go(&s.expr, out),
            Expr::Call(c) => c.args.args.iter().for_each(|a| go(a, out)),
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
        }
    }
    let mut out = Vec::new();
    go(e, &mut out);
    out
}

/// Prometheus reads a backtick string raw (no escapes; a carriage return is dropped, as Go's
/// `strconv.Unquote` does), while `promql-parser` reads `\` in it as an escape and refuses
/// `` `a\.b` ``. Each raw string is therefore rewritten as the double-quoted string of the same
/// value before parsing. Strings and `#` comments are skipped as Prometheus's lexer skips them;
/// no recursion, one pass.
pub fn raw_strings_as_quoted(query: &str) -> std::borrow::Cow<'_, str> {
    use std::fmt::Write as _;
    if !query.contains('`') {
        return std::borrow::Cow::Borrowed(query);
    }
    let b = query.as_bytes();
    let mut out = String::with_capacity(query.len() + 16);
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'#' => i = super::promql_depth::comment_end(b, i),
            b'"' | b'\'' => i = super::promql_depth::quoted_end(b, i),
            b'`' => {
                let Some(len) = query[i + 1..].find('`') else {
                    // unterminated: left for the parser to refuse
                    break;
                };
                out.push_str(&query[copied..i]);
                out.push('"');
                for c in query[i + 1..i + 1 + len].chars() {
                    match c {
                        '\\' => out.push_str("\\\\"),
                        '"' => out.push_str("\\\""),
                        '\n' => out.push_str("\\n"),
                        '\t' => out.push_str("\\t"),
                        '\r' => {}
                        c if (c as u32) < 0x20 || c == '\u{7f}' => {
                            let _ = write!(out, "\\x{:02x}", c as u32);
                        }
                        c => out.push(c),
                    }
                }
                out.push('"');
                i += len + 2;
                copied = i;
            }
            _ => i += 1,
        }
    }
    if copied == 0 {
        return std::borrow::Cow::Borrowed(query);
    }
    out.push_str(&query[copied.min(query.len())..]);
    std::borrow::Cow::Owned(out)
}

/// Parses `query`, restricts every selector, prints the result. Unparsable → `BadQuery`; longer
/// or deeper than `limits` → `BadQuery` naming the limit, before anything recurses over it.
pub fn rewrite(query: &str, policy: &[Matcher], limits: &QueryLimits) -> Result<String, LbacError> {
    rewrite_as(query, policy, limits, false)
}

/// A series selector (`match[]`) is a PromQL vector selector; it must stay one.
pub fn rewrite_series_selector(
    sel: &str,
    policy: &[Matcher],
    limits: &QueryLimits,
) -> Result<String, LbacError> {
    rewrite_as(sel, policy, limits, true)
}

/// The checks, parse, rewrite and parse-back shared by queries and series selectors, each done
/// once (limits, raw strings, depth, regexes, all before promql-parser sees the text).
fn rewrite_as(
    text: &str,
    policy: &[Matcher],
    limits: &QueryLimits,
    series: bool,
) -> Result<String, LbacError> {
    limits.check_len(if series { "selector" } else { "query" }, text)?;
    let quoted = raw_strings_as_quoted(text);
    let query = quoted.as_ref();
    let unlimited_len = QueryLimits {
        max_bytes: usize::MAX,
        ..*limits
    };
    super::promql_depth::check(query, &unlimited_len)?;
    super::promql_depth::check_regexes(query)?;
    let mut expr = parser::parse(query).map_err(|e| {
        LbacError::BadQuery(if series {
            format!("invalid series selector: {e}")
        } else {
            format!("invalid PromQL: {e}")
        })
    })?;
    if series && !matches!(expr, Expr::VectorSelector(_)) {
        return Err(LbacError::BadQuery(format!(
            "match[] must be a series selector, got {text:?}"
        )));
    }
    let pm: Vec<PMatcher> = policy
        .iter()
        .map(to_parser_matcher)
        .collect::<Result<_, _>>()?;
    for_each_selector(&mut expr, &mut |vs| restrict_selector(vs, &pm));
    let printed = expr.to_string();
    // What is printed must parse back to the same tree (up to matcher order, which the printer
    // sorts) with every selector restricted; otherwise refuse rather than guess.
    let faithful = parser::parse(&printed).is_ok_and(|mut back| {
        let restricted = is_restricted(&back, &pm);
        normalize(&mut back);
        normalize(&mut expr);
        restricted && back == expr
    });
    if faithful {
        Ok(printed)
    } else {
        Err(LbacError::BadQuery(
            "query cannot be rewritten faithfully; simplify it".into(),
        ))
    }
}

/// The `match[]` to add when a series/labels request has none: the policy. Prometheus refuses a
/// selector whose every matcher matches the empty string (`{env!="dev"}`); `__name__=~".+"` is
/// then added, which every series satisfies, so the selection is exactly the policy's.
pub fn policy_selector(policy: &[Matcher]) -> String {
    let mut matchers = policy.to_vec();
    if matchers.iter().all(|m| m.matches(""))
        && let Ok(any_name) = Matcher::new("__name__", MatchOp::Re, ".+")
    {
        matchers.insert(0, any_name);
    }
    crate::selector::Selector::new(matchers).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::parse_selector;

    fn pol(s: &str) -> Vec<Matcher> {
        parse_selector(s).unwrap().matchers
    }

    fn rw(q: &str) -> String {
        rewrite(q, &pol(r#"{env="prod"}"#), &QueryLimits::default())
            .unwrap_or_else(|e| panic!("{q}: {e:?}"))
    }

    /// Every selector in the rewritten query carries env="prod" (outside any or-group, or in each).
    fn assert_restricted(out: &str, name: &str, value: &str) {
        let e = parser::parse(out).unwrap();
        let sels = selectors(&e);
        for vs in sels {
            let has = |ms: &[PMatcher]| {
                ms.iter()
                    .any(|m| m.name == name && m.op == PMatchOp::Equal && m.value == value)
            };
            let ok = if vs.matchers.or_matchers.is_empty() {
                has(&vs.matchers.matchers)
            } else {
                vs.matchers.or_matchers.iter().all(|g| has(g))
            };
            assert!(ok, "selector {vs} in {out} is not restricted");
        }
    }

    #[test]
    fn table_of_queries_all_get_restricted() {
        let cases = [
            "up",
            "up{job=\"api\"}",
            "{__name__=\"up\"}",
            "{__name__=~\"up|down\"}",
            "{job=~\".+\"}",
            "rate(http_requests_total[5m])",
            "sum by (job) (rate(http_requests_total{code=~\"5..\"}[5m]))",
            "sum without (instance) (up)",
            "topk(5, rate(x[1m]))",
            "quantile(0.9, rate(x[1m]))",
            "count_values(\"v\", up)",
            "histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m])))",
            "up / on(job) group_left(team) team_info",
            "a + b * c",
            "a and b or c unless d",
            "-up",
            "(up)",
            "((up + 1) * 2)",
            "max_over_time(rate(x[5m])[1h:1m])",
            "rate(x[5m] offset 1h)",
            "x @ 1700000000",
            "x @ start()",
            "x offset -5m",
            "absent(nonexistent{job=\"x\"})",
            "label_replace(up, \"a\", \"$1\", \"job\", \"(.*)\")",
            "vector(1) + up",
            "scalar(up) * 2",
            "time() - process_start_time_seconds",
            "up{env=\"dev\"}",
            "up{env!=\"prod\"}",
            "up{env=~\".*\"}",
            "up{env!~\"prod\"}",
            "up{env=\"prod\", env=\"dev\"}",
            "up{env=\"prod\"}",
            "sum(rate({__name__=~\".+_total\"}[1m]))",
            "up{job=\"a\\\"quoted\"}",
            "up{job=\"ünïcödé\"}",
            "sort_desc(sum by (a) (up))",
            "count(up) > bool 1",
            "sum(up) by (job) / ignoring(x) sum(up) by (job)",
            "rate(x[1m:10s])",
            "deriv(x[10m] @ end())",
            "sum by () (x)",
            "sum without () (rate(x[5m]))",
            "a + ignoring () b",
            "a / on () b",
            "count by () (up) > bool 1",
            "x{a=`a\\.b`}",
            "{instance =`api\\-server`} # `raw`",
        ];
        assert!(cases.len() >= 40);
        for q in cases {
            let out = rw(q);
            assert_restricted(&out, "env", "prod");
        }
    }

    #[test]
    fn user_matchers_on_policy_labels_cannot_widen() {
        // the user's matcher stays, the policy's is ANDed: env="dev" AND env="prod" selects nothing
        let out = rw("up{env=\"dev\"}");
        let e = parser::parse(&out).unwrap();
        let vs = selectors(&e)[0];
        let envs: Vec<String> = vs
            .matchers
            .matchers
            .iter()
            .filter(|m| m.name == "env")
            .map(|m| m.to_string())
            .collect();
        assert_eq!(envs.len(), 2, "{out}");
        assert!(envs.contains(&"env=\"prod\"".to_string()));
        // evaluated against label sets: nothing outside the policy can match
        let matches = |env: &str| {
            vs.matchers
                .matchers
                .iter()
                .all(|m| m.is_match(if m.name == "env" { env } else { "up" }))
        };
        assert!(!matches("dev") && !matches("prod"));
        let out = rw("up{env=~\".*\"}");
        let vs2 = parser::parse(&out).unwrap();
        let s = selectors(&vs2)[0].clone();
        let m = |env: &str| {
            s.matchers
                .matchers
                .iter()
                .all(|m| m.is_match(if m.name == "env" { env } else { "up" }))
        };
        assert!(m("prod") && !m("dev") && !m(""));
    }

    #[test]
    fn or_matchers_restrict_every_alternative() {
        // promql-parser accepts Prometheus 3's `or` inside selectors
        let out = rewrite(
            "{job=\"a\" or job=\"b\"}",
            &pol(r#"{env="prod"}"#),
            &QueryLimits::default(),
        )
        .unwrap();
        assert_restricted(&out, "env", "prod");
        assert_eq!(out.matches("env=\"prod\"").count(), 2, "{out}");
    }

    #[test]
    fn regex_and_multi_matcher_policies() {
        let out = rewrite(
            "sum(rate(x[5m]))",
            &pol(r#"{env=~"prod|stage", team!="ops"}"#),
            &QueryLimits::default(),
        )
        .unwrap();
        assert!(
            out.contains("env=~\"prod|stage\"") && out.contains("team!=\"ops\""),
            "{out}"
        );
    }

    #[test]
    fn unparsable_queries_are_bad_requests() {
        for q in [
            "",
            "up{",
            "sum(",
            "rate(x)",
            "up{env=\"x\"",
            "1 +",
            "{}",
            "x[5m",
            "}",
            "up @ bad",
        ] {
            assert!(
                matches!(
                    rewrite(q, &pol(r#"{env="prod"}"#), &QueryLimits::default()),
                    Err(LbacError::BadQuery(_))
                ),
                "{q:?}"
            );
        }
        let long = format!(
            "up{{a=\"{}\"}}",
            "x".repeat(crate::lbac::DEFAULT_MAX_QUERY_BYTES)
        );
        assert!(matches!(
            rewrite(&long, &pol(r#"{env="prod"}"#), &QueryLimits::default()),
            Err(LbacError::BadQuery(_))
        ));
    }

    #[test]
    fn long_query_with_many_selectors() {
        let q = (0..200)
            .map(|i| format!("rate(m{i}{{a=\"{i}\"}}[5m])"))
            .collect::<Vec<_>>()
            .join(" + ");
        let out = rw(&q);
        assert_eq!(selectors(&parser::parse(&out).unwrap()).len(), 200);
        assert_restricted(&out, "env", "prod");
    }

    #[test]
    fn printed_query_parses_back_to_the_same_tree() {
        for q in [
            "sum by (job) (rate(x{a=~\"b.*\"}[5m] offset 1m))",
            "x @ 1700000000",
            "max_over_time(x[1h:5m])",
        ] {
            let out = rw(q);
            let mut a = parser::parse(&out).unwrap();
            assert_eq!(a.to_string(), out, "printing is stable");
            let mut b = parser::parse(&a.to_string()).unwrap();
            normalize(&mut a);
            normalize(&mut b);
            assert_eq!(a, b, "{q} → {out}");
        }
    }

    #[test]
    fn series_selectors_must_be_selectors() {
        let p = pol(r#"{env="prod"}"#);
        assert_eq!(
            rewrite_series_selector("up", &p, &QueryLimits::default()).unwrap(),
            "up{env=\"prod\"}"
        );
        assert!(matches!(
            rewrite_series_selector("sum(up)", &p, &QueryLimits::default()),
            Err(LbacError::BadQuery(_))
        ));
        assert_eq!(policy_selector(&p), "{env=\"prod\"}");
        assert_eq!(
            policy_selector(&pol(r#"{env!="dev"}"#)),
            "{__name__=~\".+\", env!=\"dev\"}"
        );
    }

    /// Queries as deep as the deepest `lbac.max_query_depth` a config may set parse, rewrite,
    /// print, parse back, compare and drop within half a gateway worker's stack, even in a debug
    /// build; one level more is refused before parsing.
    #[test]
    fn the_deepest_allowed_query_of_every_shape_fits_half_a_worker_stack() {
        use crate::lbac::HARD_MAX_QUERY_DEPTH as D;
        let limits = QueryLimits {
            max_bytes: 16 << 20,
            max_depth: D,
        };
        // each builder takes the number of levels above the leaf
        type Builder = Box<dyn Fn(usize) -> String + Send>;
        let shapes: Vec<(&str, Builder)> = vec![
            (
                "nested sum",
                Box::new(|n| format!("{}up{}", "sum(".repeat(n), ")".repeat(n))),
            ),
            (
                "nested abs",
                Box::new(|n| format!("{}up{}", "abs(".repeat(n), ")".repeat(n))),
            ),
            (
                "parens",
                Box::new(|n| format!("{}up{}", "(".repeat(n), ")".repeat(n))),
            ),
            ("unary minus", Box::new(|n| format!("{}up", "-".repeat(n)))),
            (
                "unary minus, spaced",
                Box::new(|n| format!("{}up", "- ".repeat(n))),
            ),
            (
                "left chain",
                Box::new(|n| format!("up{}", " + up".repeat(n))),
            ),
            (
                "right chain",
                Box::new(|n| format!("up{}", " ^ up".repeat(n))),
            ),
            (
                "and chain",
                Box::new(|n| format!("up{}", " and up".repeat(n))),
            ),
            (
                "nested binary in parens",
                Box::new(|n| format!("{}up{}", "(up + ".repeat(n / 2), ")".repeat(n / 2))),
            ),
            (
                "subqueries",
                Box::new(|n| {
                    format!(
                        "{}up{}",
                        "max_over_time(".repeat(n / 2),
                        "[5m:1m])".repeat(n / 2)
                    )
                }),
            ),
        ];
        std::thread::Builder::new()
            .stack_size(crate::lbac::WORKER_STACK_BYTES / 2)
            .spawn(move || {
                let p = pol(r#"{env="prod"}"#);
                for (name, make) in &shapes {
                    let q = make(D - 1);
                    let d = crate::lbac::promql_depth::check(&q, &limits)
                        .unwrap_or_else(|e| panic!("{name}: {e:?}"));
                    assert!(d.is_some_and(|d| d <= D), "{name}: {d:?}");
                    let out = rewrite(&q, &p, &limits).unwrap_or_else(|e| panic!("{name}: {e:?}"));
                    assert!(out.contains("env=\"prod\""), "{name}");
                    let over = make(D + 1);
                    let e = rewrite(&over, &p, &limits).unwrap_err();
                    assert!(
                        matches!(&e, LbacError::BadQuery(m) if m.contains("lbac.max_query_depth")),
                        "{name}: {e:?}"
                    );
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn megabytes_of_nesting_are_refused_quickly_without_parsing() {
        let limits = QueryLimits {
            max_bytes: 16 << 20,
            max_depth: 512,
        };
        let p = pol(r#"{env="prod"}"#);
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || {
                for q in [
                    format!("{}up{}", "sum(".repeat(1 << 20), ")".repeat(1 << 20)),
                    format!("{}up", "-".repeat(4 << 20)),
                    format!("up{}", "+up".repeat(1 << 20)),
                    format!("{}up", "(".repeat(4 << 20)),
                ] {
                    assert!(rewrite(&q, &p, &limits).is_err());
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn backtick_strings_are_raw_as_prometheus_reads_them() {
        for (q, want) in [
            (r"x{a=`a\.b`}", r#"x{a="a\\.b"}"#),
            ("x{a=`q\"`}", r#"x{a="q\""}"#),
            ("x{a=`l1\nl2`}", r#"x{a="l1\nl2"}"#),
            ("x{a=`cr\r`}", r#"x{a="cr"}"#),
            (r#"x{a="`"} # `"#, r#"x{a="`"} # `"#),
            (r"x{a='`'} + y{b=`\`}", r#"x{a='`'} + y{b="\\"}"#),
            ("`unterminated", "`unterminated"),
        ] {
            assert_eq!(raw_strings_as_quoted(q), want, "{q}");
        }
        // the value Prometheus would read is the value the rewrite keeps
        let out = rw(r"x{a=~`a\.b\d`}");
        let e = parser::parse(&out).unwrap();
        let vs = selectors(&e)[0];
        assert!(
            vs.matchers
                .matchers
                .iter()
                .any(|m| m.name == "a" && m.value == r"a\.b\d"),
            "{out}"
        );
    }

    #[test]
    fn series_selectors_get_the_regex_budget_too() {
        let p = pol(r#"{env="prod"}"#);
        let e = rewrite_series_selector(r#"up{a=~"\\w{200}"}"#, &p, &QueryLimits::default())
            .unwrap_err();
        assert!(
            matches!(&e, LbacError::BadQuery(m) if m.contains("too complex")),
            "{e:?}"
        );
    }
}
