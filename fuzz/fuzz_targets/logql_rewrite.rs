//! No panic and no stack overflow on any input, deep and long ones included (see `deep_gen.rs`:
//! an input starting with 0xFF is a program that nests wrappers up to 2047 deep and splices
//! Go, Loki and Prometheus comments, char literals and selectors in). Run on a 2 MiB stack with
//! `max_depth` 1024. Whatever the rewriter accepts has as many stream selectors as the input,
//! each ending with the policy; removing the policy gives the input without its comments (the
//! input itself when it has none), and rewriting that gives the same output.
#![no_main]

#[path = "deep_gen.rs"]
mod deep_gen;

use deep_gen::{LIMITS, Lang};
use libfuzzer_sys::fuzz_target;
use obsgate::lbac::logql;
use obsgate::selector::{MatchersText, parse_selector};

const LOGQL: Lang = Lang {
    frames: &[
        ("", ""),
        // for a label-filter core (`x="1"`)
        ("{a=\"b\"} | ", ""),
        // for a line-filter core (`"a"`)
        ("{a=\"b\"} |= ", ""),
        ("sum(count_over_time({a=\"b\"} | ", " [1m]))"),
        ("count_over_time(", "[1m])"),
        ("sum by (a) (", ")"),
        ("", " # c\n"),
        ("/* c */", ""),
    ],
    wrappers: &[
        ("sum(", ")"),
        ("(", ")"),
        ("", " + count_over_time({a=\"b\"}[1m])"),
        ("count_over_time({a=\"b\"}[1m]) + ", ""),
        ("", " - -1"),
        ("-1 * ", ""),
        ("", " or vector(1)"),
        ("", " > bool 1"),
        ("", " ^ 2"),
        ("2 ^ ", ""),
        ("sum by (a) (", ")"),
        ("topk(1, ", ")"),
        ("label_replace(", ", \"a\", \"b\", \"c\", \"d\")"),
        ("rate(", ")"),
        ("", "[1m]"),
        ("(", ")[1m]"),
        // inside a pipeline
        ("", " or x=\"1\""),
        ("", " and x=\"1\""),
        ("", ", x=\"1\""),
        ("", " x=\"1\""),
        ("", " or \"a\""),
        ("", " |= \"a\""),
        ("", " | json"),
        ("", " | x=\"1\""),
        // comments between levels
        ("", " /* c */"),
        ("/* ( */", ""),
        ("", " // c\n"),
        ("", " # )\n"),
        ("'\"' ", ""),
        // LogQL has no unary operator (only signed literals): runs of signs
        ("-", ""),
        ("- ", ""),
        ("+", ""),
    ],
};

fn check(q: String) {
    let policy = parse_selector(r#"{env="prod"}"#).unwrap().matchers;
    // `, <policy>}`, or `{<policy>}` for a selector that had no matcher
    let tail = format!("{}}}", MatchersText(&policy));
    if let Ok(out) = logql::rewrite(&q, &policy, &LIMITS) {
        let sels = logql::stream_selectors(&out).expect("the output parses");
        let before = logql::stream_selectors(&q).expect("the accepted input parses");
        assert_eq!(sels.len(), before.len(), "{out}");
        for s in &sels {
            assert!(
                s.ends_with(&tail),
                "a selector without the policy: {s} in {out}"
            );
        }
        let restored =
            logql::strip_policy(&out, &policy).expect("every selector carries the policy");
        if !q.contains(['#', '/']) {
            assert_eq!(restored, q, "only the policy was added");
        }
        let again = logql::rewrite(&restored, &policy, &LIMITS);
        assert_eq!(
            again.as_deref().ok(),
            Some(out.as_str()),
            "the input without its comments rewrites to the same output: {restored:?}"
        );
    }
    if let Ok(out) = logql::rewrite_series_selector(&q, &policy, &LIMITS) {
        let sels = logql::stream_selectors(&out).expect("the output parses");
        assert_eq!(sels.len(), 1, "{out}");
        assert!(logql::strip_policy(&out, &policy).is_some(), "{out}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(q) = deep_gen::query(data, &LOGQL) else {
        return;
    };
    deep_gen::on_small_stack(move || check(q));
});
