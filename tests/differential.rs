//! Differential test of the LBAC query rewrite (SPEC 7) against Grafana's own grammars.
//!
//! A corpus of PromQL and LogQL queries (real examples from the Prometheus and Loki docs and
//! tests in `tests/differential/corpus/`, grammar-based random queries, and mutations of both) is
//! rewritten by `obsgate::lbac::{promql,logql}::rewrite` with a label policy, and every verdict
//! and output is checked by `tests/differential/check.mjs` with `@prometheus-io/lezer-promql` and
//! `@grafana/lezer-logql`:
//!
//! - a query that obsgate accepts must parse in lezer (for LogQL after the lexical handling of
//!   Loki's own lexer that lezer lacks: `//` and `/* */` comments, `'x'` char literals);
//! - its output must parse too, and every selector that lezer finds in the output must carry
//!   every policy matcher;
//! - queries that lezer accepts and obsgate refuses ("false refusals") are counted and reported,
//!   not failed: the lezer grammars are looser than the real parsers.
//!
//! The full report goes to `target/differential-report.txt`. Needs node and
//! `tests/differential/node_modules` (`npm ci` there); without them the test is skipped, unless
//! `OBSGATE_DIFF=1` (as in `.ci/run`), then it fails.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use obsgate::lbac::{LbacError, QueryLimits};
use obsgate::selector::{MatchOp, Matcher, parse_selector};
use serde_json::{Value, json};

/// At least this many distinct queries per language.
const MIN_PER_LANG: usize = 2000;
const GENERATED_PER_LANG: usize = 1100;
const MUTATED_PER_LANG: usize = 1300;
const SEED: u64 = 0x0b5_9a7e_d1ff_2026;

// ---------------------------------------------------------------------------------------------
// Deterministic randomness (SplitMix64): the same corpus on every run and machine.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// True with probability `pct`/100.
    fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Lang {
    PromQL,
    LogQL,
}

impl Lang {
    fn name(self) -> &'static str {
        match self {
            Lang::PromQL => "promql",
            Lang::LogQL => "logql",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Docs corpus: one query per line; `//!` lines are comments; `json:` lines are JSON strings.

fn docs(lang: Lang) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/differential/corpus")
        .join(format!("{}_docs.txt", lang.name()));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with("//!"))
        .map(|l| match l.strip_prefix("json:") {
            Some(j) => serde_json::from_str::<String>(j)
                .unwrap_or_else(|e| panic!("{}: bad json line {l:?}: {e}", path.display())),
            None => l.to_string(),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Shared bits of both generators.

/// Label values, some with characters that matter to a lexer.
const VALUES: &[&str] = &[
    "prod",
    "dev",
    "api-server",
    "a b",
    "x\"y",
    "a\\b",
    "}",
    "{",
    "#",
    "//",
    "/*",
    "*/",
    "'",
    "`",
    "ä",
    "日本",
    "a,b",
    "=~",
    "\n",
    "%7B",
    "",
];
const REGEXES: &[&str] = &[
    ".+",
    "a|b",
    "4..",
    "prod|dev",
    "(?i)err.*",
    "[a-z]+",
    "x\\.y",
    ".*",
];

/// Go-style quoting (Prometheus and Loki read strings with Go's escapes): `"…"`, and when
/// `single` also `'…'` (PromQL only; Loki reads `'x'` as a char literal); `` `…` `` when it fits.
fn quote(r: &mut Rng, v: &str, single: bool) -> String {
    let style = r.below(if single { 4 } else { 3 });
    if style == 2 && !v.contains('`') {
        return format!("`{v}`");
    }
    let q = if style == 3 { '\'' } else { '"' };
    let mut s = String::new();
    s.push(q);
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            c if c == q => {
                s.push('\\');
                s.push(c);
            }
            c => s.push(c),
        }
    }
    s.push(q);
    s
}

/// White space between tokens: mostly a space, sometimes none, a newline, a tab or a `\r\n`.
fn ws(r: &mut Rng) -> &'static str {
    match r.below(20) {
        0 => "",
        1 => "\n",
        2 => "\t",
        3 => "\r\n",
        4 => "  ",
        _ => " ",
    }
}

fn labels(r: &mut Rng, pool: &[&str], max: usize, allow_empty: bool) -> String {
    let n = if allow_empty {
        r.below(max + 1)
    } else {
        1 + r.below(max)
    };
    let mut v: Vec<&str> = Vec::new();
    for _ in 0..n {
        let l = *r.pick(pool);
        if !v.contains(&l) {
            v.push(l);
        }
    }
    let mut s = v.join(", ");
    // PromQL allows a trailing comma in label lists, LogQL does not
    if !v.is_empty() && pool == PROM_LABELS && r.chance(5) {
        s.push(',');
    }
    s
}

// ---------------------------------------------------------------------------------------------
// PromQL generator: instant-vector expressions built from the grammar, valid by construction
// apart from rare corner cases (e.g. a label value that the regex engine refuses).

const METRICS: &[&str] = &[
    "up",
    "x",
    "http_requests_total",
    "node_cpu_seconds_total",
    "job:http_requests:rate5m",
    "go_gc_duration_seconds",
    "http_request_duration_seconds_bucket",
    "process_start_time_seconds",
    "sum_total",
    "by_metric",
];
const PROM_LABELS: &[&str] = &[
    "job", "instance", "env", "le", "code", "method", "team", "mode",
];
const RANGES: &[&str] = &["5m", "1m", "30s", "1h", "1h30m", "2d", "10m", "1w"];
const STEPS: &[&str] = &["", "1m", "30s", "5m"];

fn prom_matcher(r: &mut Rng, nonempty: bool) -> String {
    let name = *r.pick(PROM_LABELS);
    let (op, v) = if nonempty {
        ("=", r.pick(&VALUES[..4]).to_string())
    } else {
        match r.below(4) {
            0 => ("=", r.pick(VALUES).to_string()),
            1 => ("!=", r.pick(VALUES).to_string()),
            2 => ("=~", r.pick(REGEXES).to_string()),
            _ => ("!~", r.pick(REGEXES).to_string()),
        }
    };
    let name = if r.chance(5) {
        quote(r, name, true)
    } else {
        name.to_string()
    };
    format!("{name}{}{op}{}{}", ws(r), ws(r), quote(r, &v, true))
}

fn prom_selector(r: &mut Rng) -> String {
    let metric = *r.pick(METRICS);
    let mut ms: Vec<String> = Vec::new();
    let kind = r.below(10);
    let n = r.below(3);
    for i in 0..n {
        ms.push(prom_matcher(r, kind >= 7 && i == 0));
    }
    match kind {
        0..=2 => metric.to_string(),
        3..=6 => format!("{metric}{{{}}}", ms.join(",")),
        7 | 8 => {
            if ms.is_empty() {
                ms.push(prom_matcher(r, true));
            }
            format!("{{{}}}", ms.join(", "))
        }
        _ => {
            ms.insert(0, quote(r, &format!("{metric}.dotted"), false));
            format!("{{{}}}", ms.join(", "))
        }
    }
}

fn prom_modifiers(r: &mut Rng, e: String) -> String {
    let mut e = e;
    if r.chance(15) {
        e = format!("{e} offset {}", r.pick(&["5m", "1h", "-2m", "1d"]));
    }
    if r.chance(10) {
        e = format!(
            "{e} @ {}",
            r.pick(&["1609746000", "start()", "end()", "1.5e9"])
        );
    }
    e
}

fn prom_grouping(r: &mut Rng) -> String {
    format!(
        "{} ({})",
        if r.chance(70) { "by" } else { "without" },
        labels(r, PROM_LABELS, 3, true)
    )
}

fn prom_scalar(r: &mut Rng, depth: usize) -> String {
    match r.below(if depth == 0 { 2 } else { 5 }) {
        0 => r
            .pick(&["1", "0.5", "100", "1e3", "-2", "0x10", "Inf", "NaN"])
            .to_string(),
        1 => "time()".into(),
        2 => format!("scalar({})", prom_instant(r, depth - 1)),
        3 => format!("({})", prom_scalar(r, depth - 1)),
        _ => format!("{} * {}", prom_scalar(r, depth - 1), prom_scalar(r, 0)),
    }
}

fn prom_instant(r: &mut Rng, depth: usize) -> String {
    if depth == 0 {
        let s = prom_selector(r);
        return prom_modifiers(r, s);
    }
    let d = depth - 1;
    match r.below(16) {
        0 | 1 => {
            let s = prom_selector(r);
            prom_modifiers(r, s)
        }
        2 | 3 => {
            let f = r.pick(&[
                "rate",
                "irate",
                "increase",
                "delta",
                "deriv",
                "avg_over_time",
                "max_over_time",
                "min_over_time",
                "sum_over_time",
                "count_over_time",
                "changes",
                "resets",
                "last_over_time",
                "present_over_time",
                "stddev_over_time",
            ]);
            let sel = prom_selector(r);
            let range = format!("{sel}[{}]", r.pick(RANGES));
            format!("{f}({})", prom_modifiers(r, range))
        }
        4 => {
            let f = r.pick(&["max_over_time", "avg_over_time", "rate", "min_over_time"]);
            let inner = prom_instant(r, d);
            let sub = format!("({inner})[{}:{}]", r.pick(RANGES), r.pick(STEPS));
            format!("{f}({})", prom_modifiers(r, sub))
        }
        5 | 6 => {
            let op = r.pick(&[
                "sum", "avg", "min", "max", "count", "group", "stddev", "stdvar",
            ]);
            let inner = prom_instant(r, d);
            match r.below(3) {
                0 => format!("{op}({inner})"),
                1 => format!("{op} {}{}({inner})", prom_grouping(r), ws(r)),
                _ => format!("{op}({inner}) {}", prom_grouping(r)),
            }
        }
        7 => {
            let inner = prom_instant(r, d);
            let g = if r.chance(40) {
                format!(" {} ", prom_grouping(r))
            } else {
                String::new()
            };
            match r.below(4) {
                0 => format!("topk{g}({}, {inner})", r.pick(&["5", "1", "10"])),
                1 => format!("bottomk{g}(3, {inner})"),
                2 => format!("quantile{g}(0.9, {inner})"),
                _ => format!("count_values{g}(\"value\", {inner})"),
            }
        }
        8 | 9 => {
            let (op, bool_ok) = *r.pick(&[
                ("+", false),
                ("-", false),
                ("*", false),
                ("/", false),
                ("%", false),
                ("^", false),
                ("==", true),
                ("!=", true),
                (">", true),
                ("<", true),
                (">=", true),
                ("<=", true),
            ]);
            let b = if bool_ok && r.chance(30) { "bool " } else { "" };
            let a = prom_instant(r, d);
            if r.chance(30) {
                return format!("{a} {op} {b}{}", prom_scalar(r, d));
            }
            let c = prom_instant(r, d);
            let mut m = String::new();
            if r.chance(40) {
                let kw = if r.chance(50) { "on" } else { "ignoring" };
                m = format!("{kw}({}) ", labels(r, PROM_LABELS, 2, true));
                if r.chance(40) {
                    let g = if r.chance(50) {
                        "group_left"
                    } else {
                        "group_right"
                    };
                    m.push_str(g);
                    if r.chance(60) {
                        let _ = write!(m, "({})", labels(r, PROM_LABELS, 2, true));
                    }
                    m.push(' ');
                }
            }
            format!("{a} {op} {b}{m}{c}")
        }
        10 => {
            let op = r.pick(&["and", "or", "unless"]);
            let a = prom_instant(r, d);
            let c = prom_instant(r, d);
            let m = if r.chance(30) {
                format!("on({}) ", labels(r, PROM_LABELS, 2, true))
            } else {
                String::new()
            };
            format!("{a} {op} {m}{c}")
        }
        11 => {
            let f = r.pick(&[
                "abs",
                "ceil",
                "floor",
                "exp",
                "sqrt",
                "ln",
                "log2",
                "sort",
                "sort_desc",
                "timestamp",
                "absent",
            ]);
            format!("{f}({})", prom_instant(r, d))
        }
        12 => {
            let inner = prom_instant(r, d);
            match r.below(5) {
                0 => format!("clamp_max({inner}, 100)"),
                1 => format!("clamp({inner}, 0, 1)"),
                2 => format!("round({inner}, 0.5)"),
                3 => format!("label_replace({inner}, \"dst\", \"$1\", \"instance\", \"(.*):.*\")"),
                _ => format!("label_join({inner}, \"dst\", \",\", \"job\", \"instance\")"),
            }
        }
        13 => {
            let sel = prom_selector(r);
            format!(
                "histogram_quantile(0.9, sum by (le) (rate({sel}[{}])))",
                r.pick(RANGES)
            )
        }
        14 => format!("-{}", prom_instant(r, d)),
        _ => format!("({})", prom_instant(r, d)),
    }
}

fn gen_promql(r: &mut Rng) -> String {
    let depth = 1 + r.below(3);
    let mut q = if r.chance(5) {
        format!("vector({})", prom_scalar(r, 1))
    } else {
        prom_instant(r, depth)
    };
    if r.chance(5) {
        q = format!("# {}\n{q}", r.pick(&["note", "\"quoted", "{x}"]));
    }
    if r.chance(5) {
        q.push_str(" # trailing");
    }
    q
}

// ---------------------------------------------------------------------------------------------
// LogQL generator: log and metric queries from the grammar (pkg/logql/syntax/syntax.y).

const LOKI_LABELS: &[&str] = &[
    "app",
    "job",
    "namespace",
    "container",
    "env",
    "cluster",
    "level",
    "service_name",
];
const EXTRACTED: &[&str] = &[
    "status", "latency", "duration", "size", "msg", "path", "method",
];

fn loki_string(r: &mut Rng, v: &str) -> String {
    quote(r, v, false)
}

fn loki_selector(r: &mut Rng) -> String {
    let mut ms = Vec::new();
    let first = *r.pick(LOKI_LABELS);
    let v = r.pick(&VALUES[..4]).to_string();
    ms.push(format!("{first}{}={}{}", ws(r), ws(r), loki_string(r, &v)));
    for _ in 0..r.below(3) {
        let name = *r.pick(LOKI_LABELS);
        let (op, v) = match r.below(4) {
            0 => ("=", r.pick(VALUES).to_string()),
            1 => ("!=", r.pick(VALUES).to_string()),
            2 => ("=~", r.pick(REGEXES).to_string()),
            _ => ("!~", r.pick(REGEXES).to_string()),
        };
        ms.push(format!("{name}{op}{}", loki_string(r, &v)));
    }
    format!("{{{}{}{}}}", ws(r), ms.join(", "), ws(r))
}

fn loki_label_filter(r: &mut Rng, depth: usize) -> String {
    let l = *r.pick(EXTRACTED);
    let one = match r.below(7) {
        0 => {
            let v = r.pick(VALUES).to_string();
            format!("{l}{}{}", r.pick(&["=", "!="]), loki_string(r, &v))
        }
        1 => {
            let v = r.pick(REGEXES).to_string();
            format!("{l}{}{}", r.pick(&["=~", "!~"]), loki_string(r, &v))
        }
        2 => format!(
            "{l} {} {}",
            r.pick(&[">", ">=", "<", "<=", "==", "!="]),
            r.pick(&["5", "200", "0.5"])
        ),
        3 => format!(
            "{l} {} {}",
            r.pick(&[">", ">=", "<"]),
            r.pick(&["10s", "250ms", "1m"])
        ),
        4 => format!(
            "{l} {} {}",
            r.pick(&[">", "<=", "=="]),
            r.pick(&["20KB", "1MiB", "5B"])
        ),
        5 => "__error__=\"\"".to_string(),
        _ => format!("{l}{}ip(\"10.0.0.0/8\")", r.pick(&["=", "!="])),
    };
    if depth > 0 && r.chance(25) {
        let other = loki_label_filter(r, depth - 1);
        // Loki also takes two label filters side by side (`a="b" c="d"`, syntax.y's
        // `labelFilter labelFilter`), but lezer-logql does not: not generated.
        let j = r.pick(&[" and ", " or ", ", "]);
        if r.chance(30) {
            return format!("({one}{j}{other})");
        }
        return format!("{one}{j}{other}");
    }
    one
}

fn loki_stage(r: &mut Rng) -> String {
    match r.below(12) {
        0..=2 => {
            let op = r.pick(&["|=", "!=", "|~", "!~", "|>", "!>"]);
            let v = if op.contains('~') {
                r.pick(REGEXES).to_string()
            } else if op.contains('>') {
                "<_> error <_>".to_string()
            } else {
                r.pick(VALUES).to_string()
            };
            let mut s = format!("{op}{}{}", ws(r), loki_string(r, &v));
            if r.chance(15) {
                let w = r.pick(VALUES).to_string();
                let _ = write!(s, " or {}", loki_string(r, &w));
            }
            if r.chance(5) {
                s = format!("{} ip(\"192.168.0.0/16\")", r.pick(&["|=", "!="]));
            }
            s
        }
        3 => r
            .pick(&[
                "| json",
                "| logfmt",
                "| logfmt --strict",
                "| logfmt --keep-empty --strict",
                "| unpack",
                "| json status=\"response.code\", path",
                "| logfmt msg, level=\"lvl\"",
                "| regexp \"(?P<status>\\\\d+) (?P<path>\\\\S+)\"",
                "| pattern \"<_> <method> <path> <status>\"",
                "| pattern `<ip> - - <_> \"<method> <uri> <_>\" <status>`",
                "| decolorize",
            ])
            .to_string(),
        4..=6 => format!("| {}", loki_label_filter(r, 2)),
        7 => {
            let t = r.pick(&[
                "{{.msg}}",
                "{{ .status }} {{.path}}",
                "{{ __line__ | upper }}",
                "x}y{",
            ]);
            format!("| line_format {}", loki_string(r, t))
        }
        8 => {
            let t = r.pick(&["{{.msg}}", "{{.status}}-{{.path}}"]);
            format!("| label_format dst={}, a=path", loki_string(r, t))
        }
        9 => format!("| drop {}", labels(r, EXTRACTED, 2, false)),
        10 => format!("| keep {}", labels(r, EXTRACTED, 2, false)),
        _ => "| __error__ = \"\"".to_string(),
    }
}

fn loki_pipeline(r: &mut Rng, max: usize) -> String {
    let n = r.below(max + 1);
    (0..n)
        .map(|_| {
            let sep = if r.chance(10) { "\n  " } else { " " };
            format!("{sep}{}", loki_stage(r))
        })
        .collect::<String>()
}

fn loki_log(r: &mut Rng) -> String {
    let s = loki_selector(r);
    let p = loki_pipeline(r, 4);
    let q = format!("{s}{p}");
    if r.chance(5) { format!("({q})") } else { q }
}

fn loki_range_agg(r: &mut Rng) -> String {
    let range = format!("[{}]", r.pick(RANGES));
    let offset = if r.chance(15) {
        format!(" offset {}", r.pick(&["1h", "5m", "1d"]))
    } else {
        String::new()
    };
    if r.chance(60) {
        let op = r.pick(&[
            "count_over_time",
            "rate",
            "bytes_rate",
            "bytes_over_time",
            "absent_over_time",
        ]);
        let s = loki_selector(r);
        let p = loki_pipeline(r, 3);
        match r.below(3) {
            0 => format!("{op}({s}{p} {range}{offset})"),
            1 => format!("{op}({s}{range}{offset}{p})"),
            _ => format!("{op}(({s}{p}){range}{offset})"),
        }
    } else {
        let op = r.pick(&[
            "sum_over_time",
            "avg_over_time",
            "max_over_time",
            "min_over_time",
            "stddev_over_time",
            "stdvar_over_time",
            "first_over_time",
            "last_over_time",
            "rate",
            "quantile_over_time",
        ]);
        let s = loki_selector(r);
        let p = loki_pipeline(r, 2);
        let l = *r.pick(EXTRACTED);
        let unwrap = match r.below(3) {
            0 => format!("| unwrap {l}"),
            1 => format!("| unwrap duration({l})"),
            _ => format!("| unwrap bytes({l})"),
        };
        let err = if r.chance(30) {
            " | __error__=\"\""
        } else {
            ""
        };
        let param = if *op == "quantile_over_time" {
            "0.99, "
        } else {
            ""
        };
        // Loki allows a grouping only on these (RangeAggregationExpr.validate)
        let grouping_ok = [
            "avg_over_time",
            "stddev_over_time",
            "stdvar_over_time",
            "quantile_over_time",
            "max_over_time",
            "min_over_time",
            "first_over_time",
            "last_over_time",
        ]
        .contains(op);
        let grouping = if grouping_ok && r.chance(25) {
            format!(
                " {} ({})",
                r.pick(&["by", "without"]),
                labels(r, EXTRACTED, 2, true)
            )
        } else {
            String::new()
        };
        if offset.is_empty() {
            format!("{op}({param}{s}{p} {unwrap}{err} {range}){grouping}")
        } else {
            // Loki also takes `… | unwrap x [5m] offset 1h`, lezer-logql only this order
            format!("{op}({param}{s}{range}{offset}{p} {unwrap}{err}){grouping}")
        }
    }
}

fn loki_metric(r: &mut Rng, depth: usize) -> String {
    if depth == 0 {
        return loki_range_agg(r);
    }
    let d = depth - 1;
    match r.below(9) {
        0 | 1 => loki_range_agg(r),
        2 | 3 => {
            let op = r.pick(&["sum", "avg", "min", "max", "count", "stddev", "stdvar"]);
            let inner = loki_metric(r, d);
            let g = format!(
                "{} ({})",
                r.pick(&["by", "without"]),
                labels(r, LOKI_LABELS, 3, true)
            );
            match r.below(3) {
                0 => format!("{op}({inner})"),
                1 => format!("{op} {g} ({inner})"),
                _ => format!("{op}({inner}) {g}"),
            }
        }
        4 => {
            let inner = loki_metric(r, d);
            match r.below(3) {
                0 => format!("topk({}, {inner})", r.pick(&["5", "10"])),
                1 => format!("bottomk(3, {inner})"),
                _ => format!("{}({inner})", r.pick(&["sort", "sort_desc"])),
            }
        }
        5 | 6 => {
            let (op, cmp) = *r.pick(&[
                ("+", false),
                ("-", false),
                ("*", false),
                ("/", false),
                ("%", false),
                ("^", false),
                ("==", true),
                ("!=", true),
                (">", true),
                ("<", true),
                (">=", true),
                ("<=", true),
                ("and", false),
                ("or", false),
                ("unless", false),
            ]);
            let b = if cmp && r.chance(30) { "bool " } else { "" };
            let a = loki_metric(r, d);
            if !op.chars().all(|c| c.is_ascii_alphabetic()) && r.chance(30) {
                return format!("{a} {op} {b}{}", r.pick(&["1", "0.5", "100"]));
            }
            if op == "or" && r.chance(50) {
                return format!("{a} or vector(0)");
            }
            let c = loki_metric(r, d);
            let m = if r.chance(20) {
                format!("on({}) ", labels(r, LOKI_LABELS, 2, true))
            } else {
                String::new()
            };
            format!("{a} {op} {b}{m}{c}")
        }
        7 => format!(
            "label_replace({}, \"dst\", \"$1\", \"app\", \"(.*)\")",
            loki_metric(r, d)
        ),
        _ => format!("({})", loki_metric(r, d)),
    }
}

fn gen_logql(r: &mut Rng) -> String {
    let mut q = if r.chance(45) {
        loki_log(r)
    } else {
        let depth = r.below(3);
        loki_metric(r, depth)
    };
    // comments, all three kinds Loki's lexer skips
    match r.below(25) {
        0 => q = format!("# {}\n{q}", r.pick(&["note", "\"quoted", "{x}"])),
        1 => q.push_str(" # trailing \""),
        2 => q.push_str(" // trailing \""),
        3 => q = format!("/* {} */ {q}", r.pick(&["lead", "\" {", "'"])),
        _ => {}
    }
    q
}

// ---------------------------------------------------------------------------------------------
// Mutations: the ways a query is broken or smuggled.

/// A rough tokenization, for swapping adjacent tokens.
fn tokens(q: &str) -> Vec<String> {
    let cs: Vec<char> = q.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        let start = i;
        if c == '"' || c == '`' || c == '\'' {
            i += 1;
            while i < cs.len() && cs[i] != c {
                if cs[i] == '\\' && c != '`' {
                    i += 1;
                }
                i += 1;
            }
            i = (i + 1).min(cs.len());
        } else if c.is_alphanumeric() || c == '_' || c == ':' || c == '.' {
            while i < cs.len() && (cs[i].is_alphanumeric() || "_:.".contains(cs[i])) {
                i += 1;
            }
        } else if c.is_whitespace() {
            while i < cs.len() && cs[i].is_whitespace() {
                i += 1;
            }
        } else {
            i += 1;
            let two: String = cs[start..(start + 2).min(cs.len())].iter().collect();
            if [
                "=~", "!~", "!=", "|=", "|~", "|>", "!>", "==", ">=", "<=", "//", "/*", "*/",
            ]
            .contains(&two.as_str())
            {
                i += 1;
            }
        }
        out.push(cs[start..i].iter().collect());
    }
    out
}

fn insert_at(r: &mut Rng, q: &str, s: &str) -> String {
    let idx: Vec<usize> = q
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(q.len()))
        .collect();
    let at = *r.pick(&idx);
    format!("{}{s}{}", &q[..at], &q[at..])
}

/// A position right after a `}` or before a `{`, if there is one; else anywhere.
fn near_brace(r: &mut Rng, q: &str) -> usize {
    let cands: Vec<usize> = q
        .char_indices()
        .filter_map(|(i, c)| match c {
            '}' => Some(i + 1),
            '{' => Some(i),
            _ => None,
        })
        .collect();
    if cands.is_empty() {
        r.below(q.len() + 1).min(q.len())
    } else {
        *r.pick(&cands)
    }
}

fn fix_boundary(q: &str, mut at: usize) -> usize {
    at = at.min(q.len());
    while !q.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The second selector of a smuggling attempt: what should never run without the policy.
fn second(lang: Lang) -> &'static str {
    match lang {
        Lang::PromQL => "up{env=\"dev\"}",
        Lang::LogQL => "count_over_time({env=\"dev\"}[5m])",
    }
}

fn comment(r: &mut Rng, lang: Lang) -> String {
    let inner = *r.pick(&[
        "",
        "\"",
        "'",
        "`",
        "{",
        "}",
        "\" or {env=\"dev\"}",
        "*/",
        "/*",
        "#",
        "\\\"",
        "x",
    ]);
    let tail = if r.chance(50) {
        format!(" or {}", second(lang))
    } else {
        String::new()
    };
    match r.below(3) {
        0 => format!(" #{inner}\n{tail}"),
        1 => format!(" //{inner}\n{tail}"),
        _ => format!(" /*{inner}*/{tail}"),
    }
}

fn percent(r: &mut Rng, q: &str) -> String {
    let mut out = String::new();
    let double = r.chance(30);
    for c in q.chars() {
        let enc = match c {
            '{' => Some("%7B"),
            '}' => Some("%7D"),
            '"' => Some("%22"),
            '/' => Some("%2F"),
            '=' => Some("%3D"),
            '#' => Some("%23"),
            _ => None,
        };
        match enc {
            Some(e) if r.chance(60) => {
                if double {
                    out.push_str(&e.replace('%', "%25"));
                } else {
                    out.push_str(e);
                }
            }
            _ => out.push(c),
        }
    }
    out
}

fn mutate_once(r: &mut Rng, lang: Lang, q: &str) -> String {
    match r.below(14) {
        // truncation
        0 | 1 => {
            let at = fix_boundary(q, r.below(q.len().max(1)));
            q[..at].to_string()
        }
        // swap two adjacent non-blank tokens
        2 | 3 => {
            let mut t = tokens(q);
            let idx: Vec<usize> = (0..t.len()).filter(|&i| !t[i].trim().is_empty()).collect();
            if idx.len() >= 2 {
                let k = r.below(idx.len() - 1);
                t.swap(idx[k], idx[k + 1]);
            }
            t.concat()
        }
        // a stray quote, brace or backslash
        4 | 5 => {
            let s = *r.pick(&["\"", "'", "`", "{", "}", "{}", "\\", "\"}", "}{", "``"]);
            insert_at(r, q, s)
        }
        // a comment of any kind, maybe with a quote and a second selector behind it
        6..=8 => {
            let c = comment(r, lang);
            if r.chance(50) {
                let at = near_brace(r, q);
                format!("{}{c}{}", &q[..at], &q[at..])
            } else {
                insert_at(r, q, &c)
            }
        }
        // control characters
        9 => {
            let s = *r.pick(&["\n", "\r", "\0", "\t", "\r\n", "\u{b}", "\u{c}"]);
            insert_at(r, q, s)
        }
        // percent-encoding left undecoded in the query text
        10 => percent(r, q),
        // odd Unicode: fullwidth brace, zero-width space, no-break space, a letter
        11 => {
            let s = *r.pick(&["\u{ff5b}", "\u{200b}", "\u{a0}", "ä", "\u{feff}"]);
            insert_at(r, q, s)
        }
        // a second query glued on
        12 => format!("{q} or {}", second(lang)),
        // quotes swapped: "…" becomes '…' or `…`
        _ => {
            let to = *r.pick(&["'", "`"]);
            q.replacen('"', to, 2)
        }
    }
}

fn mutate(r: &mut Rng, lang: Lang, q: &str) -> String {
    let mut out = q.to_string();
    for _ in 0..1 + r.below(2) {
        out = mutate_once(r, lang, &out);
    }
    out
}

/// Known smuggling attempts, kept verbatim in the corpus.
fn bypasses(lang: Lang) -> Vec<String> {
    let v: &[&str] = match lang {
        Lang::LogQL => &[
            "{env=\"prod\"} /* \" */ or {env=\"dev\"}",
            "{app=\"a\"} /* \" */ |= \"x\"",
            "count_over_time({app=\"a\"}[5m]) /* \" */ or count_over_time({env=\"dev\"}[5m])",
            "count_over_time({app=\"a\"}[5m]) // \"\n or count_over_time({env=\"dev\"}[5m])",
            "count_over_time({app=\"a\"}[5m]) # \"\n or count_over_time({env=\"dev\"}[5m])",
            "count_over_time({app=\"a\"}[5m]) /* ` */ or count_over_time({env=\"dev\"}[5m])",
            "count_over_time({app=\"a\"}[5m]) /* ' */ or count_over_time({env=\"dev\"}[5m])",
            "count_over_time({app=\"a\" /* } */}[5m])",
            "count_over_time({app=\"a\" // }\n}[5m])",
            "count_over_time({app=\"a\", /* \"x\" */ job=\"b\"}[5m])",
            "sum(count_over_time({app=\"a\"}[5m])) /* { */ or sum(count_over_time({env=\"dev\"}[5m]))",
            "{app=\"a\"} |= \"/*\" or {env=\"dev\"} |= \"*/\"",
            "{app=\"a\"} |= `/*` /* ` */ or {env=\"dev\"}",
            "{app='a'}",
            "{app=\"a\"} |= 'x'",
            "{app=\"a\"} |= 'xy'",
            "count_over_time({app=\"a\"}[5m]) / '{' * count_over_time({env=\"dev\"}[5m])",
            "count_over_time({app=\"a\"}[5m /* */])",
            "count_over_time({app=\"a\"}[5m] /* [ */) or count_over_time({env=\"dev\"}[5m])",
            "%7Bapp%3D%22a%22%7D",
            "%257Bapp%253D%2522a%2522%257D",
            "{app=\"a\"} %2F%2F \"\n or {env=\"dev\"}",
            "{app=\"a\"}\0 or {env=\"dev\"}",
            "{app=\"a\"}\r# \"\r or count_over_time({env=\"dev\"}[5m])",
        ],
        Lang::PromQL => &[
            "x{env=\"prod\"} # \"\n or up{env=\"dev\"}",
            "x # {\n + up{env=\"dev\"}",
            "x{a=\"# \"} or up{env=\"dev\"}",
            "x /* \" */ or up{env=\"dev\"}",
            "x // \"\n or up{env=\"dev\"}",
            "x{a='\"'} or up{env=\"dev\"}",
            "x{a=`\"`} or up{env=\"dev\"}",
            "{__name__=\"up\", env=\"dev\"}",
            "{\"up\", env=\"dev\"}",
            "x{env=\"prod\"} or on() {__name__=~\".+\"}",
            "%7B__name__%3D%22up%22%7D",
            "up%7Benv%3D%22dev%22%7D",
            "up\0{env=\"dev\"}",
            "x\r# \"\r or up{env=\"dev\"}",
        ],
    };
    v.iter().map(|s| s.to_string()).collect()
}

struct Corpus {
    queries: Vec<(String, &'static str)>, // (query, origin)
}

fn build(lang: Lang, r: &mut Rng) -> Corpus {
    let mut seen = HashSet::new();
    let mut queries = Vec::new();
    let mut add = |q: String, origin: &'static str, queries: &mut Vec<(String, &'static str)>| {
        if seen.insert(q.clone()) {
            queries.push((q, origin));
            true
        } else {
            false
        }
    };
    for q in docs(lang) {
        add(q, "docs", &mut queries);
    }
    for q in bypasses(lang) {
        add(q, "bypass", &mut queries);
    }
    let mut n = 0;
    let mut tries = 0;
    while n < GENERATED_PER_LANG && tries < GENERATED_PER_LANG * 10 {
        tries += 1;
        let q = match lang {
            Lang::PromQL => gen_promql(r),
            Lang::LogQL => gen_logql(r),
        };
        if add(q, "generated", &mut queries) {
            n += 1;
        }
    }
    let base: Vec<String> = queries.iter().map(|(q, _)| q.clone()).collect();
    let mut n = 0;
    let mut tries = 0;
    while n < MUTATED_PER_LANG && tries < MUTATED_PER_LANG * 10 {
        tries += 1;
        let b = r.pick(&base).clone();
        let q = mutate(r, lang, &b);
        if add(q, "mutated", &mut queries) {
            n += 1;
        }
    }
    Corpus { queries }
}

// ---------------------------------------------------------------------------------------------
// Running obsgate and the checker.

fn rewrite(
    lang: Lang,
    q: &str,
    policy: &[Matcher],
    limits: &QueryLimits,
) -> Result<String, LbacError> {
    match lang {
        Lang::PromQL => obsgate::lbac::promql::rewrite(q, policy, limits),
        Lang::LogQL => obsgate::lbac::logql::rewrite(q, policy, limits),
    }
}

fn op_text(op: &MatchOp) -> &'static str {
    match op {
        MatchOp::Eq => "=",
        MatchOp::Neq => "!=",
        MatchOp::Re => "=~",
        MatchOp::Nre => "!~",
    }
}

struct Case {
    lang: Lang,
    query: String,
    origin: &'static str,
    policy: &'static str,
    result: Result<String, LbacError>,
}

fn node_ready(dir: &Path) -> Result<(), String> {
    if !dir.join("node_modules/@grafana/lezer-logql").is_dir()
        || !dir
            .join("node_modules/@prometheus-io/lezer-promql")
            .is_dir()
    {
        return Err(format!(
            "{} is missing (run `npm ci` there)",
            dir.join("node_modules").display()
        ));
    }
    match Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!("node --version failed: {:?}", o.status)),
        Err(e) => Err(format!("node not found: {e}")),
    }
}

fn short(s: &str, n: usize) -> String {
    let mut out: String = s.chars().take(n).collect();
    if s.chars().count() > n {
        out.push('…');
    }
    out
}

#[test]
fn rewrite_agrees_with_lezer_grammars() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/differential");
    if let Err(why) = node_ready(&dir) {
        if std::env::var("OBSGATE_DIFF").as_deref() == Ok("1") {
            panic!("differential: {why}, and OBSGATE_DIFF=1");
        }
        eprintln!("differential: skipped: {why} (set OBSGATE_DIFF=1 to make this a failure)");
        return;
    }

    let policies: [(&'static str, Vec<Matcher>); 2] = [
        (
            "{env=\"prod\"}",
            parse_selector(r#"{env="prod"}"#).unwrap().matchers,
        ),
        (
            "{env=\"prod\", team=~\"a|b\"}",
            parse_selector(r#"{env="prod", team=~"a|b"}"#)
                .unwrap()
                .matchers,
        ),
    ];
    let limits = QueryLimits::default();
    let mut rng = Rng(SEED);

    let mut cases: Vec<Case> = Vec::new();
    let mut sizes = BTreeMap::new();
    for lang in [Lang::PromQL, Lang::LogQL] {
        let corpus = build(lang, &mut rng);
        sizes.insert(lang, corpus.queries.len());
        for (k, (q, origin)) in corpus.queries.into_iter().enumerate() {
            // the two-matcher policy on every fourth query
            let which: &[usize] = if k % 4 == 0 { &[0, 1] } else { &[0] };
            for &p in which {
                let result = rewrite(lang, &q, &policies[p].1, &limits);
                cases.push(Case {
                    lang,
                    query: q.clone(),
                    origin,
                    policy: policies[p].0,
                    result,
                });
            }
        }
    }
    for (lang, n) in &sizes {
        assert!(
            *n >= MIN_PER_LANG,
            "{} corpus has {n} queries, fewer than {MIN_PER_LANG}",
            lang.name()
        );
    }

    // the checker's input
    let mut file = tempfile::NamedTempFile::new().unwrap();
    for (i, c) in cases.iter().enumerate() {
        let p = policies.iter().find(|(t, _)| *t == c.policy).unwrap();
        let policy: Vec<Value> =
            p.1.iter()
                .map(|m| json!([m.name, op_text(&m.op), m.value]))
                .collect();
        let (verdict, output) = match &c.result {
            Ok(o) => ("accepted", Value::String(o.clone())),
            Err(LbacError::BadQuery(_)) => ("bad_query", Value::Null),
            Err(LbacError::Forbidden(_)) => ("forbidden", Value::Null),
        };
        let rec = json!({"i": i, "lang": c.lang.name(), "query": c.query, "verdict": verdict,
                         "output": output, "policy": policy});
        writeln!(file, "{rec}").unwrap();
    }
    file.flush().unwrap();

    let out = Command::new("node")
        .arg(dir.join("check.mjs"))
        .arg(file.path())
        .current_dir(&dir)
        .output()
        .expect("running node");
    assert!(
        out.status.success(),
        "check.mjs failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), cases.len(), "one checker result per case");

    // verdicts
    let mut report = String::new();
    let mut summary = Vec::new();
    let mut accepted_unparsable = Vec::new(); // obsgate accepts, lezer cannot parse the input
    let mut violations = Vec::new(); // output does not parse, or a selector lacks the policy
    let mut all_false_refusals = Vec::new();
    // accepted, parsed by lezer, but refused by Prometheus' lexer (see `note` below)
    let mut lenient = Vec::new();
    for lang in [Lang::PromQL, Lang::LogQL] {
        let (mut n, mut acc, mut refused, mut refused_like_prometheus) = (0, 0, 0, 0);
        // reason -> (count, examples)
        let mut false_refusals: BTreeMap<String, (usize, Vec<String>)> = BTreeMap::new();
        let mut by_origin: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
        for (i, (c, r)) in cases.iter().zip(&results).enumerate() {
            if c.lang != lang {
                continue;
            }
            assert_eq!(r["i"], json!(i), "results in order");
            n += 1;
            let input_ok = r["input_ok"].as_bool().unwrap();
            // PromQL: a character lezer skips as white space but Prometheus' lexer refuses
            // (\v, \f, U+00A0, …); lezer's verdict stands, the difference is reported apart.
            let note = r["input_note"].as_str();
            let o = by_origin.entry(c.origin).or_default();
            o.0 += 1;
            match &c.result {
                Ok(output) => {
                    acc += 1;
                    o.1 += 1;
                    if let (true, Some(note)) = (input_ok, note) {
                        lenient.push(format!(
                            "[{}] {:?}\n      obsgate output: {:?}\n      {note}",
                            lang.name(),
                            c.query,
                            output
                        ));
                    }
                    if !input_ok {
                        accepted_unparsable.push(format!(
                            "[{}] {:?}\n      obsgate output: {:?}\n      lezer: {}",
                            lang.name(),
                            c.query,
                            output,
                            r["input_error"].as_str().unwrap_or("?")
                        ));
                    }
                    let output_ok = r["output_ok"].as_bool().unwrap_or(false);
                    let unrestricted = r["unrestricted"].as_array().cloned().unwrap_or_default();
                    // lezer must find at least the selectors obsgate restricted: otherwise the
                    // check above could pass by finding none (a renamed node, say)
                    let ours = match lang {
                        Lang::PromQL => promql_parser::parser::parse(output)
                            .map(|e| obsgate::lbac::promql::selectors(&e).len())
                            .unwrap_or(0),
                        Lang::LogQL => obsgate::lbac::logql::stream_selectors(output)
                            .map(|v| v.len())
                            .unwrap_or(0),
                    };
                    let found = r["selectors"].as_u64().unwrap_or(0) as usize;
                    if output_ok && found < ours {
                        violations.push(format!(
                            "[{}] query {:?}\n      output {:?}\n      lezer found {found} selectors, obsgate restricted {ours}",
                            lang.name(),
                            c.query,
                            output
                        ));
                    }
                    if !output_ok || !unrestricted.is_empty() {
                        violations.push(format!(
                            "[{}] policy {} query {:?}\n      output {:?}\n      {}",
                            lang.name(),
                            c.policy,
                            c.query,
                            output,
                            if !output_ok {
                                format!(
                                    "output does not parse: {}",
                                    r["output_error"].as_str().unwrap_or("?")
                                )
                            } else {
                                format!(
                                    "selectors without the policy: {}",
                                    unrestricted
                                        .iter()
                                        .map(|s| s["text"].to_string())
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                )
                            }
                        ));
                    }
                }
                Err(e) => {
                    refused += 1;
                    o.2 += 1;
                    if input_ok && note.is_some() {
                        refused_like_prometheus += 1;
                    } else if input_ok {
                        let (kind, msg) = match e {
                            LbacError::BadQuery(m) => ("400", m),
                            LbacError::Forbidden(m) => ("403", m),
                        };
                        all_false_refusals.push(format!(
                            "[{}] {kind} {msg}\n      {:?}",
                            lang.name(),
                            c.query
                        ));
                        let reason = format!("{kind} {}", short(msg, 60));
                        let entry = false_refusals.entry(reason).or_default();
                        entry.0 += 1;
                        if entry.1.len() < 3
                            && !entry.1.iter().any(|q| q == &format!("{:?}", c.query))
                        {
                            entry.1.push(format!("{:?}", c.query));
                        }
                    }
                }
            }
        }
        let f: usize = false_refusals.values().map(|(k, _)| k).sum();
        let start = report.len();
        let _ = writeln!(
            report,
            "differential: {} {n} queries, {acc} accepted, {refused} refused, {f} false refusals",
            lang.name()
        );
        let _ = writeln!(
            report,
            "  corpus: {} distinct queries; {n} checks (the two-matcher policy on every fourth)",
            sizes[&lang]
        );
        if refused_like_prometheus > 0 {
            let _ = writeln!(
                report,
                "  not counted as false refusals: {refused_like_prometheus} with a character that lezer skips as white space and Prometheus' lexer refuses"
            );
        }
        for (origin, (k, a, rf)) in &by_origin {
            let _ = writeln!(report, "  {origin}: {k} checks, {a} accepted, {rf} refused");
        }
        let mut reasons: Vec<_> = false_refusals.into_iter().collect();
        reasons.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(&b.0)));
        if !reasons.is_empty() {
            let _ = writeln!(
                report,
                "  false refusals (lezer parses, obsgate refuses), by reason:"
            );
        }
        for (reason, (k, examples)) in reasons {
            let _ = writeln!(report, "    {k:5}  {reason}");
            for e in examples {
                let _ = writeln!(report, "             e.g. {}", short(&e, 200));
            }
        }
        let _ = writeln!(report);
        summary.push(report[start..].to_string());
    }
    let _ = writeln!(
        report,
        "accepted by obsgate and parsed by lezer, but refused by Prometheus' lexer (not a failure: lezer's grammar is the reference here): {}",
        lenient.len()
    );
    for f in &lenient {
        let _ = writeln!(report, "  {f}");
    }
    let _ = writeln!(
        report,
        "\naccepted by obsgate but not parsed by lezer: {}",
        accepted_unparsable.len()
    );
    for f in &accepted_unparsable {
        let _ = writeln!(report, "  {f}");
    }
    let _ = writeln!(
        report,
        "\noutputs that do not parse or leave a selector without the policy: {}",
        violations.len()
    );
    for v in &violations {
        let _ = writeln!(report, "  {v}");
    }

    let _ = writeln!(
        report,
        "\nall false refusals (lezer parses, obsgate refuses): {}",
        all_false_refusals.len()
    );
    for f in &all_false_refusals {
        let _ = writeln!(report, "  {f}");
    }

    let report_path: PathBuf = root.join("target/differential-report.txt");
    let _ = std::fs::create_dir_all(report_path.parent().unwrap());
    std::fs::write(&report_path, &report).unwrap();
    for block in &summary {
        print!("{block}");
    }
    println!("differential: full report in {}", report_path.display());

    let mut failures = String::new();
    if !violations.is_empty() {
        let _ = writeln!(
            failures,
            "{} rewritten queries do not parse or leave a selector without the policy (first 20):",
            violations.len()
        );
        for v in violations.iter().take(20) {
            let _ = writeln!(failures, "  {v}");
        }
    }
    if !accepted_unparsable.is_empty() {
        let _ = writeln!(
            failures,
            "{} queries accepted by obsgate do not parse in lezer (first 20):",
            accepted_unparsable.len()
        );
        for f in accepted_unparsable.iter().take(20) {
            let _ = writeln!(failures, "  {f}");
        }
    }
    assert!(
        failures.is_empty(),
        "{failures}\n(full report in {})",
        report_path.display()
    );
}
