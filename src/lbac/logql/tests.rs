use super::*;
use crate::selector::parse_selector;

fn pol() -> Vec<Matcher> {
    parse_selector(r#"{env="prod"}"#).unwrap().matchers
}

fn limits() -> QueryLimits {
    QueryLimits::default()
}

fn rw(q: &str) -> String {
    rewrite(q, &pol(), &limits()).unwrap_or_else(|e| panic!("{q}: {e:?}"))
}

/// Refused even with a policy that adds no selective matcher: Loki's rule that a selector needs
/// a matcher that does not match the empty string is checked on the rewritten query (the one
/// Loki reads), so only such a policy leaves `{}` or `{a!="b"}` without one.
fn refused(q: &str) -> bool {
    let negative = parse_selector(r#"{env!="dev"}"#).unwrap().matchers;
    matches!(
        rewrite(q, &negative, &limits()),
        Err(LbacError::BadQuery(_))
    )
}

#[test]
fn selectors_without_a_selective_matcher_get_one_from_the_policy() {
    for (q, want) in [
        ("{}", r#"{env="prod"}"#),
        ("{ }", r#"{ env="prod"}"#),
        ("{/* c */}", r#"{ env="prod"}"#),
        (r#"{ns!="allowed"}"#, r#"{ns!="allowed", env="prod"}"#),
        (
            r#"count_over_time({a=~".*"}[5m])"#,
            r#"count_over_time({a=~".*", env="prod"}[5m])"#,
        ),
    ] {
        assert_eq!(rw(q), want, "{q}");
    }
    // a policy with no selective matcher leaves them as Loki would refuse them
    assert!(refused("{}"));
    assert!(refused(r#"{ns!="allowed"}"#));
    let negative = parse_selector(r#"{env!="dev"}"#).unwrap().matchers;
    assert_eq!(
        rewrite(r#"{app="x"}"#, &negative, &limits()).unwrap(),
        r#"{app="x", env!="dev"}"#
    );
}

/// Every selector of the output carries the policy, and stripping it gives a query whose
/// rewrite is the output again.
fn assert_restricted(q: &str, out: &str) {
    let sels = stream_selectors(out).unwrap_or_else(|e| panic!("{q} → {out}: {e:?}"));
    for s in &sels {
        assert!(s.ends_with(r#", env="prod"}"#), "{s} in {out} (from {q})");
    }
    let stripped = strip_policy(out, &pol()).unwrap_or_else(|| panic!("{out}"));
    assert_eq!(rw(&stripped), out, "{q}");
    assert_eq!(
        stream_selectors(&stripped).unwrap().len(),
        sels.len(),
        "{q}"
    );
}

#[test]
fn table_of_rewrites_is_exact() {
    let cases: &[(&str, &str)] = &[
        (r#"{app="x"}"#, r#"{app="x", env="prod"}"#),
        (r#"{ app="x" }"#, r#"{ app="x" , env="prod"}"#),
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
        (
            r#"{env!="prod", a="b"}"#,
            r#"{env!="prod", a="b", env="prod"}"#,
        ),
        (r#"{env=~".+"}"#, r#"{env=~".+", env="prod"}"#),
        (
            r#"{ns!~"allowed", a=~"x"}"#,
            r#"{ns!~"allowed", a=~"x", env="prod"}"#,
        ),
        (r#"{app="ünïcödé"}"#, r#"{app="ünïcödé", env="prod"}"#),
        (
            "{app=\"x\"} # comment with {braces}\n|= \"y\"",
            "{app=\"x\", env=\"prod\"} \n|= \"y\"",
        ),
        (
            "{app=\"x\"} // comment \"quote\n|= \"y\"",
            "{app=\"x\", env=\"prod\"} \n|= \"y\"",
        ),
        (
            "{app=\"x\"}/* a \" b */|= \"y\"",
            "{app=\"x\", env=\"prod\"} |= \"y\"",
        ),
        (
            r#"{app="x"} | pattern "<ip> - {<_>}""#,
            r#"{app="x", env="prod"} | pattern "<ip> - {<_>}""#,
        ),
        (r#"vector(1)"#, r#"vector(1)"#),
        (r#"1 + 2 * 3"#, r#"1 + 2 * 3"#),
        (
            r#"quantile_over_time(0.99, {a="b"} | unwrap latency [5m]) by (x)"#,
            r#"quantile_over_time(0.99, {a="b", env="prod"} | unwrap latency [5m]) by (x)"#,
        ),
        (
            r#"label_replace(rate({a="b"}[1m]), "x", "$1", "y", "(.*)")"#,
            r#"label_replace(rate({a="b", env="prod"}[1m]), "x", "$1", "y", "(.*)")"#,
        ),
        (
            r#"rate(({a="b"} | json)[1m] offset 5m)"#,
            r#"rate(({a="b", env="prod"} | json)[1m] offset 5m)"#,
        ),
        (
            r#"sum(count_over_time({a="b"}[1m])) or on (x) group_left (y) sum(rate({c="d"}[1m]))"#,
            r#"sum(count_over_time({a="b", env="prod"}[1m])) or on (x) group_left (y) sum(rate({c="d", env="prod"}[1m]))"#,
        ),
        ("\u{feff}{a=\"b\"}", "\u{feff}{a=\"b\", env=\"prod\"}"),
        (
            r#"{a="b"} | json 'x', y="z" | '"'="q""#,
            r#"{a="b", env="prod"} | json 'x', y="z" | '"'="q""#,
        ),
    ];
    for (q, want) in cases {
        assert_eq!(&rw(q), want, "{q}");
        assert_restricted(q, want);
    }
    assert!(cases.len() >= 25);
}

#[test]
fn comment_and_char_literal_bypasses_are_refused_or_restricted() {
    // Each of these hid the second selector from the old lexer-only rewrite.
    let attacks = [
        "{env=\"prod\"} // \"\n{env=\"dev\"}",
        "{env=\"prod\"} /* \" */ {env=\"dev\"}",
        "'\"' {env=\"dev\"}",
        "{env=\"prod\"} | json '\"' {env=\"dev\"}",
        "{env=\"prod\"} |= \"x\" or {env=\"dev\"}",
        "{env=\"prod\"} /* \" */ |= \"x\"",
        "sum(count_over_time({env=\"prod\"}[1m])) /* \" */ + sum(count_over_time({env=\"dev\"}[1m]))",
        "sum(count_over_time({env=\"prod\"}[1m])) // \"\n+ sum(count_over_time({env=\"dev\"}[1m]))",
        "sum(count_over_time({env=\"prod\"}[1m])) # \"\n+ sum(count_over_time({env=\"dev\"}[1m]))",
        "count_over_time({env=\"prod\"} | x='\"' [1m]) + count_over_time({env=\"dev\"}[1m])",
        "count_over_time({env=\"prod\"} | '\"'=\"a\" [1m]) + count_over_time({env=\"dev\"}[1m])",
        "count_over_time({env=\"prod\"} | json '\"' [1m]) + count_over_time({env=\"dev\"}[1m])",
        "count_over_time({env=\"prod\"} | json '`' [1m]) + count_over_time({env=\"dev\"}[1m])",
        "count_over_time({env=\"prod\"} |= `//` [1m]) + count_over_time({env=\"dev\"}[1m]) // `",
        "count_over_time({env=\"prod\"} |= \"/*\" [1m]) + count_over_time({env=\"dev\"}[1m]) /* */",
        "{env=\"prod\"} /* unterminated \" {env=\"dev\"}",
        "{env=\"prod\"} |= '\"' {env=\"dev\"}",
        "{env=\"prod\"} |= ''\"'' {env=\"dev\"}",
        "{env=\"prod\"} |= 'ab' or \"{env=\\\"dev\\\"}\"",
        "count_over_time({env=\"prod\"}[1m]) + count_over_time({env=\"dev\"}[1m /* ]) */])",
        "count_over_time({env=\"prod\"}[1m]) # \\\n+ count_over_time({env=\"dev\"}[1m])",
        "count_over_time({env=\"prod\"}[1m]) //\r+ count_over_time({env=\"dev\"}[1m])",
        "{env=\"prod\"}\0{env=\"dev\"}",
        "{env=\"prod\"} |= \"\\\"\" or `\"` {env=\"dev\"}",
    ];
    let mut accepted = 0;
    for q in attacks {
        match rewrite(q, &pol(), &limits()) {
            Ok(out) => {
                accepted += 1;
                assert!(
                    !out.contains("/*") || out.contains("\"/*\""),
                    "comment left in {out}"
                );
                // every selector that Loki sees carries the policy: count the `{` of
                // selectors by the output's own parse and by the number of inserted policies
                let sels = stream_selectors(&out).unwrap();
                assert_eq!(sels.len(), out.matches(", env=\"prod\"}").count(), "{out}");
                assert_restricted(q, &out);
            }
            Err(LbacError::BadQuery(_)) => {}
            Err(e) => panic!("{q}: {e:?}"),
        }
    }
    assert!(accepted >= 5, "{accepted}");
    assert_eq!(
        rw(
            "sum(count_over_time({env=\"prod\"}[1m])) // \"\n+ sum(count_over_time({env=\"dev\"}[1m]))"
        ),
        "sum(count_over_time({env=\"prod\", env=\"prod\"}[1m])) \n+ sum(count_over_time({env=\"dev\", env=\"prod\"}[1m]))"
    );
}

#[test]
fn unparsable_queries_are_bad_requests() {
    let cases = [
        "",
        " ",
        "# only a comment",
        "{",
        "}",
        "{}",
        "{ }",
        r#"{a=~".*"}"#,
        r#"{a="", b!~"x"}"#,
        "{app=\"x\"",
        "{app=\"x}",
        "{app}",
        "{app=x}",
        "{1a=\"x\"}",
        "{a=\"b\" c=\"d\"}",
        "{a=\"b\",}",
        "{a=\"b\"} |= \"unterminated",
        "{a=\"b\"} }",
        "{a={b}}",
        "{a==\"b\"}",
        "{a=\"b\"}\"\n\"",
        "{app=\"x\"} |=",
        "sum(rate({a=\"b\"}",
        "sum(rate({a=\"b\"}[5m])",
        "up",
        "up{a=\"b\"}",
        "{a=\"b\"} @",
        "{a=\"b\"} ;",
        "{a=\"b\"} $",
        "{a=\"b\"} /* unterminated",
        "{a=\"b\"} |= `unterminated",
        "{a=\"b\"} |= 'x'",
        "{a=\"b\"} |= \"\\q\"",
        "{a=\"b\"} |= \"\\400\"",
        "{a=\"b\"}\0",
        "rate({a=\"b\"}[5minutes])",
        "rate({a=\"b\"}[5])",
        "rate({a=\"b\"}[ 5m ])",
        "rate({a=\"b\"}[1.5h])",
        "rate({a=\"b\"}[5m)",
        "rate({a=\"b\"})",
        "{a=~\"(\"}",
        "{a=\"b\"} |~ \"(\"",
        "{a=\"b\"} | x=~\"[\"",
        "{a=\"b\"} | regexp \"(a)\"",
        "{a=\"b\"} | pattern \"<_>\"",
        "{a=\"b\"} | pattern \"<a><b>\"",
        "label_replace(rate({a=\"b\"}[1m]), \"x\", \"$1\", \"y\", \"(\")",
        "count_over_time({a=\"b\"}[1m]) by (x)",
        "sum_over_time({a=\"b\"}[1m])",
        "count_over_time({a=\"b\"} | unwrap x [1m])",
        "quantile_over_time({a=\"b\"} | unwrap x [1m])",
        "rate(0.5, {a=\"b\"}[1m])",
        "topk(rate({a=\"b\"}[1m]))",
        "topk(0, rate({a=\"b\"}[1m]))",
        "topk(1.5, rate({a=\"b\"}[1m]))",
        "sum(5, rate({a=\"b\"}[1m]))",
        "sort by (a) (rate({a=\"b\"}[1m]))",
        "approx_topk by (a) (5, rate({a=\"b\"}[1m]))",
        "{a=\"b\"} + 1",
        "{a=\"b\"} or {c=\"d\"}",
        "sum({a=\"b\"})",
        "1 or rate({a=\"b\"}[1m])",
        "- - 1",
        "1 -0",
        "0x10",
        "089",
        "0b1",
        "1e",
        "{a=\"b\"} | x > 0x10",
        "{a=\"b\"} | x > 5kb",
        "{a=\"b\"} | unwrap x",
        "rate({a=\"b\"} | unwrap x | json [1m])",
        "sum /* c */ (rate({a=\"b\"}[5m]))",
        "{a=\"b\"} | logfmt --strictx",
        "{on=\"x\"}",
        "{a=\"b\"} | json on",
        "vector(x)",
        "vector()",
        "(({a=\"b\"}))[5m]",
        "rate((({a=\"b\"}))[5m])",
        "{a=\"b\"} | drop a=5",
        "rate({a=\"b\"}[5m]) offset 5m",
        "sum(rate({a=\"b\"}[5m])) by (a) by (b)",
    ];
    for q in cases {
        assert!(refused(q), "{q:?} should be refused");
    }
}

fn corpus(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| serde_json::from_str::<String>(l).unwrap())
        .collect()
}

/// Queries from Loki's parser tests and query docs that Loki's parser accepts.
#[test]
fn loki_valid_queries_are_accepted_and_restricted() {
    let valid = corpus(include_str!("testdata/valid.jsonl"));
    assert!(valid.len() >= 150, "{}", valid.len());
    for q in &valid {
        let out = rw(q);
        assert_restricted(q, &out);
        assert_eq!(
            stream_selectors(&out).unwrap().len(),
            stream_selectors(q).unwrap().len(),
            "{q}"
        );
    }
}

/// Loki's parser-test error cases and truncations of the valid queries, all refused by Loki.
#[test]
fn loki_invalid_queries_are_refused() {
    let invalid = corpus(include_str!("testdata/invalid.jsonl"));
    assert!(invalid.len() >= 150, "{}", invalid.len());
    for q in &invalid {
        assert!(refused(q), "{q:?} should be refused");
    }
}

#[test]
fn series_selectors_are_stream_selectors_only() {
    let l = limits();
    let s = |q: &str| rewrite_series_selector(q, &pol(), &l);
    assert_eq!(s(r#"{a="b"}"#).unwrap(), r#"{a="b", env="prod"}"#);
    assert_eq!(s(r#"{a=~".*"}"#).unwrap(), r#"{a=~".*", env="prod"}"#);
    assert_eq!(s(r#"({a="b"})"#).unwrap(), r#"({a="b", env="prod"})"#);
    assert_eq!(s("{}").unwrap(), r#"{env="prod"}"#);
    assert_eq!(s(" { } ").unwrap(), r#"{env="prod"}"#);
    for q in [
        "{\t}",
        r#"{a="b"} |= "x""#,
        r#"rate({a="b"}[1m])"#,
        r#"{a="b"} {c="d"}"#,
        "1",
        "",
        r#"{a=~"("}"#,
    ] {
        assert!(
            matches!(s(q), Err(LbacError::BadQuery(_))),
            "{q:?} should be refused"
        );
    }
}

#[test]
fn policy_that_cannot_be_written_back_is_refused() {
    // `on` is a LogQL keyword: a selector with it does not parse in Loki
    let p = parse_selector(r#"{on="x"}"#).unwrap().matchers;
    let r = rewrite(r#"{a="b"}"#, &p, &limits());
    assert!(
        matches!(&r, Err(LbacError::BadQuery(m)) if m.contains("\"on\"")),
        "{r:?}"
    );
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
        "{a=\"b\"\r}",
        r#"{a="env=\"prod\"}"} |= "env=\"prod\"}""#,
        r#"{a="b", c=", env=\"prod\"}"}"#,
        "rate({a=\"b\" }[1m])",
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
        rewrite(r#"{app="x"}"#, &p, &limits()).unwrap(),
        r#"{app="x", env=~"prod|st\\.age", team!="a\"b"}"#
    );
    assert_eq!(
        policy_selector(&p),
        r#"{env=~"prod|st\\.age", team!="a\"b"}"#
    );
}

/// Queries of depth exactly `d` in every nesting shape.
fn shapes(d: usize) -> Vec<(&'static str, String)> {
    let rep = |s: &str, n: usize| s.repeat(n);
    let sel = r#"{a="b"}"#;
    vec![
        (
            "nested sum",
            format!(
                "{}count_over_time({sel}[1m]){}",
                rep("sum(", d - 2),
                rep(")", d - 2)
            ),
        ),
        (
            "nested parens",
            format!("{}1{}", rep("(", d - 1), rep(")", d - 1)),
        ),
        (
            "nested label_replace",
            format!(
                "{}vector(1){}",
                rep("label_replace(", d - 2),
                rep(r#", "a", "b", "c", "d")"#, d - 2)
            ),
        ),
        ("left-assoc chain", format!("1{}", rep(" + 1", d - 1))),
        ("right-assoc chain", format!("1{}", rep(" ^ 1", d - 1))),
        ("signed literals", format!("-1{}", rep(" - -1", d - 1))),
        (
            "metric chain",
            format!(
                "count_over_time({sel}[1m]){}",
                rep(" or count_over_time({a=\"b\"}[1m])", d - 2)
            ),
        ),
        (
            "label filter parens",
            format!("{sel} | {}x=\"y\"{}", rep("(", d - 1), rep(")", d - 1)),
        ),
        (
            "label filter or chain",
            format!("{sel} | x=\"y\"{}", rep(" or x=\"y\"", d - 1)),
        ),
        (
            "label filter comma chain",
            format!("{sel} | x=\"y\"{}", rep(", x=\"y\"", d - 1)),
        ),
        (
            "label filter juxtaposition",
            format!("{sel} | x=\"y\"{}", rep(" x=\"y\"", d - 1)),
        ),
        (
            "line filter or chain",
            format!("{sel} |= \"a\"{}", rep(" or \"b\"", d - 1)),
        ),
        (
            "log range parens",
            format!(
                "count_over_time({}{sel}[1m]{})",
                rep("(", d - 2),
                rep(")", d - 2)
            ),
        ),
        (
            "unwrap filters in a range",
            format!(
                "sum_over_time({sel} | unwrap x | {}n > 1{} [1m])",
                rep("(", d - 2),
                rep(")", d - 2)
            ),
        ),
    ]
}

#[test]
fn depth_is_counted_as_documented_and_bounded_on_a_small_stack() {
    let lim = QueryLimits {
        max_bytes: 16 << 20,
        max_depth: crate::lbac::HARD_MAX_QUERY_DEPTH,
    };
    let handle = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let d = lim.max_depth;
            for (name, q) in shapes(d) {
                let out = rewrite(&q, &pol(), &lim)
                    .unwrap_or_else(|e| panic!("{name} at depth {d}: {e:?}"));
                assert_eq!(
                    out.matches(", env=\"prod\"}").count(),
                    q.matches("{a=\"b\"}").count(),
                    "{name}"
                );
            }
            for (name, q) in shapes(d + 1) {
                match rewrite(&q, &pol(), &lim) {
                    Err(LbacError::BadQuery(m)) => {
                        assert!(m.contains("lbac.max_query_depth"), "{name}: {m}")
                    }
                    other => panic!("{name} at depth {}: {other:?}", d + 1),
                }
            }
            // far deeper than any limit, and unbalanced: refused, quickly, without recursion
            let deep = format!("{}1", "(".repeat(4 << 20));
            assert!(rewrite(&deep, &pol(), &lim).is_err());
            let deep = format!("{{a=\"b\"}} | {}x=\"y\"", "(".repeat(4 << 20));
            assert!(rewrite(&deep, &pol(), &lim).is_err());
        })
        .unwrap();
    handle.join().unwrap();
    // small depths, exactly
    let at = |q: &str, max_depth: usize| {
        rewrite(
            q,
            &pol(),
            &QueryLimits {
                max_bytes: 1 << 20,
                max_depth,
            },
        )
        .is_ok()
    };
    for (q, d) in [
        (r#"{a="b"}"#, 1),
        (r#"{a="b"} | json | logfmt |= "x""#, 1),
        (r#"{a="b"} |= "x" or "y""#, 2),
        (r#"{a="b"} | x="1" or y="2" and z="3""#, 3),
        (r#"{a="b"} | (x="1")"#, 2),
        ("rate({a=\"b\"}[1m])", 2),
        ("rate(({a=\"b\"})[1m])", 3),
        ("sum(rate({a=\"b\"}[1m]))", 3),
        ("vector(1)", 2),
        ("1", 1),
        ("-1", 1),
        ("(1)", 2),
        ("1 + 2 * 3", 3),
        ("1 * 2 + 3", 3),
        ("2 ^ 3 ^ 4", 3),
    ] {
        assert!(at(q, d), "{q} at depth {d}");
        assert!(!at(q, d - 1), "{q} deeper than {}", d - 1);
    }
}

#[test]
fn long_queries_are_linear() {
    // 16 MiB: one log query with a long pipeline and many matchers, plus long lists
    let mut q = String::from("sum by (");
    q.push_str(
        &(0..20_000)
            .map(|i| format!("l{i}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    q.push_str(") (count_over_time({app=\"x\"");
    for i in 0..20_000 {
        q.push_str(&format!(", m{i}=~\"v{i}.*\""));
    }
    q.push('}');
    // debug builds are ~20× slower: they check a 1 MiB query against a proportionate budget
    let size = if cfg!(debug_assertions) {
        1 << 20
    } else {
        16 << 20
    };
    while q.len() < size - 200 {
        q.push_str(" |= \"abc\" | json | x=\"y\" or n > 5 | line_format \"{{.a}}\"");
    }
    q.push_str(" [1m]))");
    let lim = QueryLimits {
        max_bytes: 16 << 20,
        max_depth: 2048,
    };
    let t = std::time::Instant::now();
    let out = rewrite(&q, &pol(), &lim).unwrap();
    let took = t.elapsed();
    assert_eq!(out.len(), q.len() + ", env=\"prod\"".len());
    let budget = if cfg!(debug_assertions) { 10.0 } else { 1.0 };
    assert!(took.as_secs_f64() < budget, "{took:?}");
    // too long for the limit: refused before parsing
    let small = QueryLimits {
        max_bytes: 1000,
        max_depth: 2048,
    };
    assert!(matches!(
        rewrite(&q, &pol(), &small),
        Err(LbacError::BadQuery(m)) if m.contains("lbac.max_query_bytes")
    ));
}

/// Differential check against another implementation, for development: reads JSON strings
/// (one per line) from `$LOGQL_DIFF_IN`, writes `ok open:close …` or `err …` per line to
/// `$LOGQL_DIFF_OUT`. `$LOGQL_DIFF_MODE=series` parses as a series selector.
#[test]
#[ignore]
fn differential_dump() {
    let (Ok(input), Ok(output)) = (
        std::env::var("LOGQL_DIFF_IN"),
        std::env::var("LOGQL_DIFF_OUT"),
    ) else {
        return;
    };
    let mode = if std::env::var("LOGQL_DIFF_MODE").as_deref() == Ok("series") {
        Mode::Series
    } else {
        Mode::Query
    };
    let mut out = String::new();
    for line in std::fs::read_to_string(input).unwrap().lines() {
        let q: String = serde_json::from_str(line).unwrap();
        match parse::parse(&q, mode, 100_000) {
            Ok(p) => {
                out.push_str("ok");
                for (o, c) in p.selectors {
                    out.push_str(&format!(" {o}:{c}"));
                }
                out.push('\n');
            }
            Err(parse::Error::Syntax(m)) => {
                out.push_str(&format!("err {}\n", serde_json::to_string(&m).unwrap()))
            }
            Err(parse::Error::TooDeep) => out.push_str("err \"too deep\"\n"),
        }
    }
    std::fs::write(output, out).unwrap();
}

/// Runs of digits, dots and unit letters were rescanned and revalidated after every number in
/// them (quadratic: 128 KiB took 47 s); the look-ahead is now bounded. Without the bound this
/// test runs for minutes in a debug build.
#[test]
fn runs_of_numbers_and_units_are_lexed_in_linear_time() {
    for unit in [".5", "1.", "1h.", "5m", "1KiB.", "-1"] {
        let q = format!("{{a=\"b\"}} | x > {}", unit.repeat(64 * 1024 / unit.len()));
        assert!(refused(&q), "{unit}");
    }
    // a duration or byte size of ordinary length is still one
    assert!(!refused(r#"{a="b"} | x > 1h30m15s100ms"#));
    assert!(!refused(r#"{a="b"} | x > 1.5KiB"#));
}
