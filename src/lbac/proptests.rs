//! Property tests for both rewriters over generated queries: the output parses, every selector
//! carries the policy, and (LogQL) every other byte is unchanged.

use super::{LbacError, logql, promql};
use crate::selector::{Matcher, parse_selector};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

const LABELS: &[&str] = &["env", "job", "team", "__name__", "instance", "le"];
const VALUES: &[&str] = &[
    "prod", "dev", ".*", ".+", "a|b", "x\\\"y", "ünï", "", "{}", "}", "a,b:c",
];
const OPS: &[&str] = &["=", "!=", "=~", "!~"];

fn matcher(r: &mut Rng) -> String {
    let op = r.pick(OPS);
    let mut v = r.pick(VALUES).to_string();
    if (op == "=~" || op == "!~") && v.contains('{') {
        v = ".*".into(); // keep regexes valid
    }
    format!("{}{}\"{}\"", r.pick(LABELS), op, v)
}

fn vector(r: &mut Rng) -> String {
    let n = r.below(3);
    let ms: Vec<String> = (0..n).map(|_| matcher(r)).collect();
    let name = r.pick(&["up", "http_requests_total", "x:y:z", ""]);
    if name.is_empty() && ms.is_empty() {
        return "up".into();
    }
    if ms.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{}}}", ms.join(", "))
    }
}

fn promql_expr(r: &mut Rng, depth: u32) -> String {
    if depth == 0 {
        return vector(r);
    }
    match r.below(9) {
        0 => vector(r),
        1 => format!("rate({}[5m])", vector(r)),
        2 => format!("sum by (job) ({})", promql_expr(r, depth - 1)),
        3 => format!(
            "({} {} {})",
            promql_expr(r, depth - 1),
            r.pick(&["+", "/", "and", "or", "unless", ">"]),
            promql_expr(r, depth - 1)
        ),
        4 => format!("max_over_time(({})[10m:1m])", promql_expr(r, depth - 1)),
        5 => format!("{} offset 5m", vector(r)),
        6 => format!("topk(3, {})", promql_expr(r, depth - 1)),
        7 => format!("histogram_quantile(0.9, {})", promql_expr(r, depth - 1)),
        _ => format!("-{}", promql_expr(r, depth - 1)),
    }
}

fn policy() -> Vec<Matcher> {
    parse_selector(r#"{env="prod", team=~"a|b"}"#)
        .unwrap()
        .matchers
}

#[test]
fn generated_promql_is_always_restricted_or_refused() {
    let pol = policy();
    let pm: Vec<promql_parser::label::Matcher> = vec![promql_parser::label::Matcher::new(
        promql_parser::label::MatchOp::Equal,
        "env",
        "prod",
    )];
    let mut r = Rng(0x9E37_79B9_7F4A_7C15);
    let mut rewritten = 0;
    for _ in 0..2000 {
        let q = promql_expr(&mut r, 3);
        match promql::rewrite(&q, &pol, &crate::lbac::QueryLimits::default()) {
            Ok(out) => {
                let back = promql_parser::parser::parse(&out)
                    .unwrap_or_else(|e| panic!("{q} → {out}: {e}"));
                assert!(promql::is_restricted(&back, &pm), "{q} → {out}");
                rewritten += 1;
            }
            // only unparsable input may be refused
            Err(LbacError::BadQuery(_)) => {
                assert!(promql_parser::parser::parse(&q).is_err(), "{q} was refused")
            }
            Err(e) => panic!("{q}: {e:?}"),
        }
    }
    assert!(
        rewritten > 1500,
        "the generator mostly makes valid queries ({rewritten})"
    );
}

fn logql_string(r: &mut Rng) -> String {
    let s = r.pick(&[
        "error",
        "a{2}",
        "}",
        "{",
        "\\\"quoted\\\"",
        "ünï",
        "{{.msg}}",
        "#not a comment",
        "// nor this",
        "/* nor this */",
        "'",
    ]);
    if r.below(2) == 0 {
        format!("\"{s}\"")
    } else {
        format!("`{}`", s.replace('\\', ""))
    }
}

fn stream(r: &mut Rng) -> String {
    // Loki wants one matcher that does not match the empty string
    let mut ms = vec![format!(
        "{}=\"{}\"",
        r.pick(&["app", "env", "ns"]),
        r.pick(&["x", "prod", "ünï", "a b"])
    )];
    for _ in 0..r.below(3) {
        let v = logql_string(r);
        ms.insert(
            r.below(ms.len() + 1),
            format!("{}{}{}", r.pick(&["app", "env", "ns"]), r.pick(OPS), v),
        );
    }
    format!("{{{}}}", ms.join(r.pick(&[", ", ",", " , "])))
}

fn log_query(r: &mut Rng) -> String {
    let mut q = stream(r);
    for _ in 0..r.below(5) {
        q += &match r.below(9) {
            0 => format!(" |= {}", logql_string(r)),
            1 => format!(" |~ {}", logql_string(r)),
            2 => format!(" != {} or {}", logql_string(r), logql_string(r)),
            3 => " | json".to_string(),
            4 => " | logfmt --strict".to_string(),
            5 => format!(" | env={}", logql_string(r)),
            6 => " | (level=\"error\" or status >= 500) and latency > 250ms".to_string(),
            7 => " | drop a, b=\"c\"".to_string(),
            _ => format!(" | line_format {}", logql_string(r)),
        };
    }
    q
}

fn logql_expr(r: &mut Rng, depth: u32) -> String {
    if depth == 0 {
        return log_query(r);
    }
    match r.below(6) {
        0 => log_query(r),
        1 => format!("count_over_time({} [5m])", log_query(r)),
        2 => format!("sum by (app) (rate({} [1m]))", log_query(r)),
        3 => format!("topk(3, bytes_over_time(({})[5m] offset 1h))", log_query(r)),
        4 => format!(
            "quantile_over_time(0.99, {} | unwrap duration(took) [5m]) by (app)",
            log_query(r)
        ),
        _ => format!(
            "sum(count_over_time({} [1m])) {} sum(rate({} [1m]))",
            log_query(r),
            r.pick(&["/", "+", "or", "and on (app)", ">= bool"]),
            log_query(r)
        ),
    }
}

#[test]
fn generated_logql_is_restricted_and_otherwise_byte_identical() {
    let pol = policy();
    let limits = crate::lbac::QueryLimits::default();
    let mut r = Rng(0xD1B5_4A32_D192_ED03);
    for i in 0..2000 {
        let q = logql_expr(&mut r, 2);
        let out = logql::rewrite(&q, &pol, &limits).unwrap_or_else(|e| panic!("{q}: {e:?}"));
        let sels = logql::stream_selectors(&out).unwrap();
        assert!(!sels.is_empty(), "{q}");
        for s in &sels {
            assert!(s.ends_with(r#"env="prod", team=~"a|b"}"#), "{s} in {out}");
        }
        // removing what was added gives back the query, byte for byte
        assert_eq!(logql::strip_policy(&out, &pol).as_deref(), Some(q.as_str()));
        // comments between stages are removed (a block comment leaves a space)
        let (commented, plain) = if i % 2 == 0 {
            (
                q.replace(" | ", " /* \" { */ | "),
                q.replace(" | ", "   | "),
            )
        } else {
            (q.replace(" | ", " # \" {\n| "), q.replace(" | ", " \n| "))
        };
        let out = logql::rewrite(&commented, &pol, &limits)
            .unwrap_or_else(|e| panic!("{commented}: {e:?}"));
        assert_eq!(logql::strip_policy(&out, &pol), Some(plain), "{commented}");
        assert_eq!(logql::stream_selectors(&out).unwrap().len(), sels.len());
    }
}
