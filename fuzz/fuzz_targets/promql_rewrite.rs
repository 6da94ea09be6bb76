//! No panic and no stack overflow on any input, deep and long ones included (see `deep_gen.rs`:
//! an input starting with 0xFF is a program that nests wrappers up to 2047 deep and splices
//! comments and literals in). Run on a 2 MiB stack with `max_depth` 1024. What the rewriter
//! accepts comes out parsable and restricted, with a tree no deeper than the limit; and the
//! depth scanner (`promql_depth`) measures what promql-parser builds: never less, and exactly
//! where no unary operator is folded away.
#![no_main]

#[path = "deep_gen.rs"]
mod deep_gen;

use deep_gen::{LIMITS, Lang};
use libfuzzer_sys::fuzz_target;
use obsgate::lbac::{QueryLimits, promql, promql_depth};
use obsgate::selector::parse_selector;
use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{self, Expr};

const PROMQL: Lang = Lang {
    frames: &[
        ("", ""),
        ("sum by (job) (", ")"),
        ("histogram_quantile(0.9, ", ")"),
        ("max_over_time(", "[5m:1m])"),
        ("", " offset 5m"),
        ("", " # c\n"),
        ("# c\n", ""),
        ("count_values(\"v\", ", ")"),
    ],
    wrappers: &[
        ("sum(", ")"),
        ("abs(", ")"),
        ("(", ")"),
        ("-", ""),
        ("- ", ""),
        ("+", ""),
        ("up + ", ""),
        ("", " + up"),
        ("up ^ ", ""),
        ("", " ^ up"),
        ("", " or up"),
        ("up or ", ""),
        ("", " and on() up"),
        ("up unless ", ""),
        ("", " > bool 1"),
        ("", " / ignoring(a) group_left up"),
        ("up atan2 ", ""),
        ("max_over_time(", "[5m:1m])"),
        ("(", ")[5m:1m]"),
        ("rate(", "[5m])"),
        ("topk(1, ", ")"),
        ("sum by (a) (", ")"),
        ("sum(", ") without (a)"),
        ("quantile(0.5, ", ")"),
        ("label_replace(", ", \"a\", \"b\", \"c\", \"d\")"),
        ("clamp(", ", 0, 1)"),
        ("vector(", ")"),
        ("scalar(", ")"),
        ("1 - ", ""),
        ("", " offset 1m"),
        ("", " @ start()"),
        ("# (\n(", ")"),
        ("sum(\n", "\n)"),
        ("(", " # )\n)"),
    ],
};

/// Depth as `lbac.max_query_depth` counts it, over the parsed tree (which folds a unary minus
/// into a number literal and drops a unary plus, so it can only be lower).
fn depth(e: &Expr) -> usize {
    match e {
        Expr::Aggregate(a) => 1 + depth(&a.expr).max(a.param.as_deref().map_or(0, depth)),
        Expr::Unary(u) => 1 + depth(&u.expr),
        Expr::Binary(b) => 1 + depth(&b.lhs).max(depth(&b.rhs)),
        Expr::Paren(p) => 1 + depth(&p.expr),
        Expr::Subquery(s) => 1 + depth(&s.expr),
        Expr::Call(c) => match c.args.args.iter().map(|a| depth(a)).max() {
            Some(d) => 1 + d,
            None => 1,
        },
        Expr::NumberLiteral(_)
        | Expr::StringLiteral(_)
        | Expr::VectorSelector(_)
        | Expr::MatrixSelector(_)
        | Expr::Extension(_) => 1,
    }
}

fn check(q: String) {
    let policy = parse_selector(r#"{env="prod", team=~"a|b"}"#)
        .unwrap()
        .matchers;
    let pm = vec![Matcher::new(MatchOp::Equal, "env", "prod")];
    if let Ok(out) = promql::rewrite(&q, &policy, &LIMITS) {
        let back = parser::parse(&out).expect("rewritten query parses");
        assert!(
            promql::is_restricted(&back, &pm),
            "unrestricted selector in {out}"
        );
        let d = depth(&back);
        assert!(d <= LIMITS.max_depth, "accepted a tree {d} deep: {q:?}");
    }
    // the same parse and drop as above for anything that is not a selector: only short ones
    if q.len() <= 512 {
        if let Ok(out) = promql::rewrite_series_selector(&q, &policy, &LIMITS) {
            let back = parser::parse(&out).expect("rewritten selector parses");
            assert!(
                matches!(back, Expr::VectorSelector(_)),
                "not a selector: {out}"
            );
            assert!(
                promql::is_restricted(&back, &pm),
                "unrestricted selector {out}"
            );
        }
    }
    // The depth scanner against the parser's tree, with no limit in the way: never lower (a
    // deeper tree would pass the limit), and equal where no unary operator can be folded away
    // (else a query within the limit could be refused). Short queries only: the parse of a
    // deep one is slow under the sanitizer.
    if q.len() <= 4096 {
        let unlimited = QueryLimits {
            max_bytes: LIMITS.max_bytes,
            max_depth: 1 << 20,
        };
        let measured = promql_depth::check(&q, &unlimited);
        let q2 = q.clone();
        let real = deep_gen::on_big_stack(move || parser::parse(&q2).ok().map(|e| depth(&e)));
        if let (Ok(Some(m)), Some(d)) = (&measured, real) {
            assert!(
                d <= *m,
                "the scanner measured {m}, the tree is {d} deep: {q:?}"
            );
            if !q.contains(['-', '+']) {
                assert_eq!(
                    d, *m,
                    "the scanner measured {m}, the tree is {d} deep: {q:?}"
                );
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(q) = deep_gen::query(data, &PROMQL) else {
        return;
    };
    deep_gen::on_small_stack(move || check(q));
});
