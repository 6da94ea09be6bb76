//! The monitoring shipped in deploy/: the Grafana dashboard (deploy/grafana/obsgate.json) and the
//! Prometheus rules (deploy/prometheus/alerts.yaml, unit-tested by alerts.test.yaml) query only
//! metrics obsgate exports (`Metrics::exported_names`, or `up`), every query parses as PromQL,
//! the dashboard is importable as it is (a data source variable, panel ids, ref ids), and every
//! alert says how bad it is and what to do. The README's metrics table lists exactly the metrics
//! exported.
//!
//! With `promtool` installed (Debian's `prometheus` package) the rules are also checked and their
//! unit tests run; without it that part is skipped, unless OBSGATE_E2E=1 (as in `.ci/run`),
//! which makes it a failure.

use obsgate::telemetry::Metrics;
use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr, VectorSelector};
use promql_parser::util::{ExprVisitor, walk_expr};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

const DASHBOARD: &str = "deploy/grafana/obsgate.json";
const ALERTS: &str = "deploy/prometheus/alerts.yaml";
const ALERT_TESTS: &str = "deploy/prometheus/alerts.test.yaml";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every series name obsgate's `/metrics` can show.
fn exported() -> BTreeSet<String> {
    Metrics::new().exported_names().into_iter().collect()
}

/// Fails with every problem found, one a line.
fn assert_none(what: &str, problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

/// The vector selectors of an expression, those inside range selectors included.
#[derive(Default)]
struct Selectors(Vec<VectorSelector>);

impl ExprVisitor for Selectors {
    type Error = ();
    fn pre_visit(&mut self, e: &Expr) -> Result<bool, ()> {
        match e {
            Expr::VectorSelector(vs) => self.0.push(vs.clone()),
            Expr::MatrixSelector(ms) => self.0.push(ms.vs.clone()),
            _ => {}
        }
        Ok(true)
    }
}

/// Parses `expr` and returns its selectors, or why it does not parse.
fn selectors(expr: &str) -> Result<Vec<VectorSelector>, String> {
    let parsed = parser::parse(expr).map_err(|e| format!("does not parse as PromQL: {e}"))?;
    let mut v = Selectors::default();
    let _ = walk_expr(&mut v, &parsed);
    Ok(v.0)
}

/// The metric names of a selector that are not in `known`: its name, a `__name__="…"` matcher,
/// or a `__name__=~"…"` matcher that matches none of `known`.
fn unknown_names(vs: &VectorSelector, known: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(n) = &vs.name
        && !known.contains(n)
    {
        out.push(n.clone());
    }
    for m in vs
        .matchers
        .matchers
        .iter()
        .chain(vs.matchers.or_matchers.iter().flatten())
    {
        if m.name != "__name__" {
            continue;
        }
        match &m.op {
            MatchOp::Equal if !known.contains(&m.value) => out.push(m.value.clone()),
            MatchOp::Re(_) if !known.iter().any(|k| m.is_match(k)) => {
                out.push(format!("{} (a regex matching no exported metric)", m.value))
            }
            _ => {}
        }
    }
    out
}

/// The label names a selector matches on.
fn matcher_labels(vs: &VectorSelector) -> BTreeSet<&str> {
    vs.matchers
        .matchers
        .iter()
        .chain(vs.matchers.or_matchers.iter().flatten())
        .map(|m| m.name.as_str())
        .collect()
}

/// Checks one query: it parses, and names only `known` metrics. `at` says where it is.
fn check_query(at: &str, expr: &str, known: &BTreeSet<String>, problems: &mut Vec<String>) {
    match selectors(expr) {
        Err(e) => problems.push(format!("{at}: {e}\n    expr: {expr}")),
        Ok(sels) => {
            for vs in &sels {
                for n in unknown_names(vs, known) {
                    problems.push(format!(
                        "{at}: metric `{n}` is not exported by obsgate (Metrics::exported_names) nor `up`\n    expr: {expr}"
                    ));
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------- Grafana

/// What the dashboard's variables and Grafana's own stand for while its queries are checked.
fn grafana_values(dashboard: &Value) -> HashMap<String, String> {
    let mut vars: HashMap<String, String> = [
        ("__rate_interval", "1m"),
        ("__interval", "30s"),
        ("__interval_ms", "30000"),
        ("__range", "6h"),
        ("__range_s", "21600"),
        ("__range_ms", "21600000"),
        ("__from", "1700000000000"),
        ("__to", "1700021600000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let Some(name) = v["name"].as_str() else {
            continue;
        };
        let value = match v["type"].as_str() {
            Some("datasource") => "prometheus".to_string(),
            // a label value; also a valid regex for =~
            Some("query") => format!("{name}-value"),
            // textbox, constant, custom, interval: what it holds now
            _ => v["current"]["value"]
                .as_str()
                .or(v["query"].as_str())
                .unwrap_or_default()
                .split(',')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string(),
        };
        vars.insert(name.to_string(), value);
    }
    vars
}

/// `text` with Grafana's variable references (`$name`, `${name}`, `${name:format}`,
/// `[[name]]`) replaced by `vars`; an unknown one is an error.
fn substitute(text: &str, vars: &HashMap<String, String>) -> Result<String, String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(['$', '[']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        // (the name, the length of the reference), or None: not a reference
        let reference = if let Some(t) = tail.strip_prefix("${") {
            let end = t
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ in {text:?}"))?;
            Some((t[..end].split(':').next().unwrap_or_default(), end + 3))
        } else if let Some(t) = tail.strip_prefix("[[") {
            let end = t
                .find("]]")
                .ok_or_else(|| format!("unclosed [[ in {text:?}"))?;
            Some((t[..end].split(':').next().unwrap_or_default(), end + 4))
        } else if let Some(t) = tail.strip_prefix('$') {
            let end = t.find(|c| !word(c)).unwrap_or(t.len());
            (end > 0).then(|| (&t[..end], end + 1))
        } else {
            None
        };
        match reference {
            None => {
                out.push_str(&tail[..1]);
                rest = &tail[1..];
            }
            Some((name, len)) => {
                let value = vars
                    .get(name)
                    .ok_or_else(|| format!("unknown variable {:?}", &tail[..len]))?;
                out.push_str(value);
                rest = &tail[len..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Every panel of the dashboard, those inside rows (collapsed or not) included.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// Whether a `datasource` field names the `datasource` variable.
fn uses_datasource_variable(ds: &Value) -> bool {
    let r = |s: &str| s == "$datasource" || s == "${datasource}";
    match ds {
        Value::String(s) => r(s),
        Value::Object(o) => o.get("uid").and_then(Value::as_str).is_some_and(r),
        _ => false,
    }
}

/// The query of a `label_values(selector, label)` variable, as PromQL: its selector.
fn label_values_selector(query: &str) -> Option<&str> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    let (sel, _label) = inner.rsplit_once(',')?;
    Some(sel.trim())
}

#[test]
fn dashboard_queries_name_only_exported_metrics() {
    let text = read(DASHBOARD);
    let d: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"));
    let mut known = exported();
    known.insert("up".to_string());
    let vars = grafana_values(&d);
    let fixed_range = regex::Regex::new(r"\[\s*[0-9]").unwrap();
    // string literals (label values, regexes) are not ranges
    let strings = regex::Regex::new(r#""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`"#).unwrap();
    let mut problems = Vec::new();

    for key in ["uid", "title"] {
        if d[key].as_str().is_none_or(str::is_empty) {
            problems.push(format!("the dashboard has no {key}"));
        }
    }
    if d["schemaVersion"].as_u64().is_none_or(|v| v < 36) {
        problems.push(format!(
            "schemaVersion {} (want 36 or later: Grafana 9.4+)",
            d["schemaVersion"]
        ));
    }

    // variables: a Prometheus data source, and job and instance from label_values
    let list = d["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let var = |name: &str| list.iter().find(|v| v["name"] == name);
    match var("datasource") {
        Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
        _ => problems
            .push("no variable `datasource` of type datasource with query \"prometheus\"".into()),
    }
    for name in ["job", "instance"] {
        let Some(v) = var(name) else {
            problems.push(format!("no variable `{name}`"));
            continue;
        };
        if !uses_datasource_variable(&v["datasource"]) {
            problems.push(format!(
                "variable `{name}`: its datasource is not $datasource"
            ));
        }
        let q = v["query"]["query"].as_str().or(v["query"].as_str());
        match q.and_then(label_values_selector) {
            None => problems.push(format!(
                "variable `{name}`: want a query label_values(<selector>, {name}), not {:?}",
                v["query"]
            )),
            Some(sel) => match substitute(sel, &vars) {
                Err(e) => problems.push(format!("variable `{name}`: {e}")),
                Ok(sel) => check_query(&format!("variable `{name}`"), &sel, &known, &mut problems),
            },
        }
    }

    // panels
    let mut ids = BTreeMap::new();
    let mut queries = 0;
    for p in all_panels(&d) {
        let title = p["title"].as_str().unwrap_or("");
        let at = format!("panel {} {title:?}", p["id"]);
        match p["id"].as_u64() {
            None => problems.push(format!("{at}: no numeric id")),
            Some(id) => {
                if let Some(other) = ids.insert(id, title) {
                    problems.push(format!("{at}: id {id} is also panel {other:?}'s"));
                }
            }
        }
        let g = &p["gridPos"];
        let (x, w, h) = (g["x"].as_u64(), g["w"].as_u64(), g["h"].as_u64());
        if !matches!((x, w, h), (Some(x), Some(w), Some(h)) if w > 0 && h > 0 && x + w <= 24) {
            problems.push(format!("{at}: gridPos {g} is not inside the 24 columns"));
        }
        if p["type"] == "row" {
            continue;
        }
        if title.is_empty() {
            problems.push(format!("{at}: no title"));
        }
        if p["description"]
            .as_str()
            .is_none_or(|s| s.trim().is_empty())
        {
            problems.push(format!("{at}: no description"));
        }
        if !uses_datasource_variable(&p["datasource"]) {
            problems.push(format!(
                "{at}: datasource {} is not the variable ${{datasource}}",
                p["datasource"]
            ));
        }
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("{at}: no targets"));
        }
        let mut ref_ids = BTreeSet::new();
        for t in &targets {
            let ref_id = t["refId"].as_str().unwrap_or("");
            let at = format!("{at} target {ref_id:?}");
            if ref_id.is_empty() || !ref_ids.insert(ref_id) {
                problems.push(format!("{at}: refId missing or repeated in the panel"));
            }
            if !t["datasource"].is_null() && !uses_datasource_variable(&t["datasource"]) {
                problems.push(format!(
                    "{at}: datasource is not the variable ${{datasource}}"
                ));
            }
            let Some(raw) = t["expr"].as_str().filter(|e| !e.trim().is_empty()) else {
                problems.push(format!("{at}: no expr"));
                continue;
            };
            queries += 1;
            if fixed_range.is_match(&strings.replace_all(raw, "\"\"")) {
                problems.push(format!(
                    "{at}: a fixed range: use $__rate_interval (or $__interval)\n    expr: {raw}"
                ));
            }
            let expr = match substitute(raw, &vars) {
                Ok(e) => e,
                Err(e) => {
                    problems.push(format!("{at}: {e}\n    expr: {raw}"));
                    continue;
                }
            };
            check_query(&at, &expr, &known, &mut problems);
            // every selector follows the job and instance pickers
            for vs in selectors(&expr).unwrap_or_default() {
                let labels = matcher_labels(&vs);
                if !(labels.contains("job") && labels.contains("instance")) {
                    problems.push(format!(
                        "{at}: selector {vs} does not filter on job and instance (job=~\"$job\", instance=~\"$instance\")\n    expr: {raw}"
                    ));
                }
            }
        }
    }
    assert!(queries > 0, "{DASHBOARD}: no queries found");

    // annotations that query Prometheus
    for a in d["annotations"]["list"].as_array().into_iter().flatten() {
        let Some(raw) = a["expr"].as_str() else {
            continue;
        };
        let at = format!("annotation {}", a["name"]);
        if !uses_datasource_variable(&a["datasource"]) {
            problems.push(format!(
                "{at}: datasource is not the variable ${{datasource}}"
            ));
        }
        match substitute(raw, &vars) {
            Ok(expr) => check_query(&at, &expr, &known, &mut problems),
            Err(e) => problems.push(format!("{at}: {e}")),
        }
    }
    assert_none(DASHBOARD, problems);
}

// ---------------------------------------------------------------------------------- Prometheus

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    interval: Option<String>,
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    alert: Option<String>,
    record: Option<String>,
    expr: String,
    #[serde(default, rename = "for")]
    #[allow(dead_code)]
    for_: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    keep_firing_for: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// The parts of a `promtool test rules` file read here.
#[derive(Deserialize)]
struct RuleTestFile {
    rule_files: Vec<String>,
    tests: Vec<RuleTestGroup>,
}

#[derive(Deserialize)]
struct RuleTestGroup {
    #[serde(default)]
    alert_rule_test: Vec<AlertTest>,
}

#[derive(Deserialize)]
struct AlertTest {
    alertname: String,
    #[serde(default)]
    exp_alerts: Vec<serde::de::IgnoredAny>,
}

#[test]
fn alert_rules_name_only_exported_metrics_and_say_what_to_do() {
    let file: RuleFile =
        serde_saphyr::from_str(&read(ALERTS)).unwrap_or_else(|e| panic!("{ALERTS}: {e}"));
    let mut known = exported();
    known.insert("up".to_string());
    for r in file.groups.iter().flat_map(|g| &g.rules) {
        if let Some(rec) = &r.record {
            known.insert(rec.clone());
        }
    }
    let mut problems = Vec::new();
    if !file.groups.iter().any(|g| g.name == "obsgate") {
        problems.push("no rule group named obsgate".to_string());
    }
    let mut alerts = BTreeSet::new();
    for g in &file.groups {
        for r in &g.rules {
            let at = match (&r.alert, &r.record) {
                (Some(a), None) => format!("group {} alert {a}", g.name),
                (None, Some(rec)) => {
                    if !rec.contains(':') {
                        problems.push(format!(
                            "group {} record {rec}: a recorded name has a colon (level:metric:operations)",
                            g.name
                        ));
                    }
                    format!("group {} record {rec}", g.name)
                }
                _ => {
                    problems.push(format!(
                        "group {}: a rule with both or neither of alert and record: {}",
                        g.name, r.expr
                    ));
                    continue;
                }
            };
            check_query(&at, &r.expr, &known, &mut problems);
            let Some(name) = &r.alert else { continue };
            if !alerts.insert(name.clone()) {
                problems.push(format!("{at}: the name is used twice"));
            }
            match r.labels.get("severity").map(String::as_str) {
                Some("critical" | "warning" | "info") => {}
                other => problems.push(format!(
                    "{at}: severity label {other:?}, want critical, warning or info"
                )),
            }
            for key in ["summary", "description", "runbook"] {
                if r.annotations.get(key).is_none_or(|s| s.trim().is_empty()) {
                    problems.push(format!("{at}: no {key} annotation"));
                }
            }
        }
    }

    // every alert fires in at least one promtool test, and the tests name only real alerts
    let tests: RuleTestFile =
        serde_saphyr::from_str(&read(ALERT_TESTS)).unwrap_or_else(|e| panic!("{ALERT_TESTS}: {e}"));
    if !tests.rule_files.iter().any(|f| f == "alerts.yaml") {
        problems.push(format!(
            "{ALERT_TESTS}: rule_files does not load alerts.yaml"
        ));
    }
    let cases: Vec<&AlertTest> = tests
        .tests
        .iter()
        .flat_map(|t| &t.alert_rule_test)
        .collect();
    let tested: BTreeSet<&str> = cases.iter().map(|c| c.alertname.as_str()).collect();
    for t in tested {
        if !alerts.contains(t) {
            problems.push(format!(
                "{ALERT_TESTS}: tests alert {t}, which {ALERTS} does not define"
            ));
        }
    }
    for a in &alerts {
        if !cases
            .iter()
            .any(|c| &c.alertname == a && !c.exp_alerts.is_empty())
        {
            problems.push(format!("alert {a}: no test in {ALERT_TESTS} makes it fire"));
        }
    }
    assert_none(ALERTS, problems);
}

/// `promtool check rules` and `promtool test rules`, as `.ci/run` runs them.
#[test]
fn promtool_checks_and_tests_the_rules() {
    if std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_err()
    {
        if std::env::var("OBSGATE_E2E").as_deref() == Ok("1") {
            panic!("OBSGATE_E2E=1 but promtool is not installed (Debian: the prometheus package)");
        }
        eprintln!("promtool not installed: skipping promtool check/test rules");
        return;
    }
    for (cmd, file) in [("check", ALERTS), ("test", ALERT_TESTS)] {
        let out = std::process::Command::new("promtool")
            .args([cmd, "rules", file])
            .current_dir(root())
            .output()
            .expect("promtool runs");
        assert!(
            out.status.success(),
            "promtool {cmd} rules {file} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ------------------------------------------------------------------------------------- README

/// The README's "Metrics (`GET /metrics`)" section lists every metric exported (a histogram by
/// its family name), and nothing else.
#[test]
fn readme_metrics_table_lists_every_exported_metric() {
    let readme = read("README.md");
    let start = readme
        .find("## Metrics (`GET /metrics`)")
        .expect("README has a section \"## Metrics (`GET /metrics`)\"");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let documented: BTreeSet<&str> = regex::Regex::new(r"`(obsgate_[a-z0-9_]+)`")
        .unwrap()
        .captures_iter(section)
        .map(|c| c.get(1).unwrap().as_str())
        .collect();
    let names = exported();
    let families: BTreeSet<String> = names
        .iter()
        .filter_map(|n| match n.strip_suffix("_bucket") {
            Some(base) => Some(base.to_string()),
            None => {
                let hist = ["_sum", "_count"].iter().any(|s| {
                    n.strip_suffix(s)
                        .is_some_and(|b| names.contains(&format!("{b}_bucket")))
                });
                (!hist).then(|| n.clone())
            }
        })
        .collect();
    let mut problems = Vec::new();
    for f in &families {
        if !documented.contains(f.as_str()) {
            problems.push(format!(
                "`{f}` is exported but not in the README's metrics table"
            ));
        }
    }
    for d in &documented {
        if !families.contains(*d) {
            problems.push(format!(
                "`{d}` is in the README's metrics table but obsgate does not export it"
            ));
        }
    }
    assert_none("README.md, Metrics (`GET /metrics`)", problems);
}

#[test]
fn grafana_variables_are_substituted() {
    let vars: HashMap<String, String> = [("job", "j"), ("__rate_interval", "1m")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        substitute(r#"rate(x{job=~"$job"}[$__rate_interval])"#, &vars).unwrap(),
        r#"rate(x{job=~"j"}[1m])"#
    );
    assert_eq!(
        substitute(r#"x{job=~"${job:regex}", a="[[job]]"}[5m:1m]"#, &vars).unwrap(),
        r#"x{job=~"j", a="j"}[5m:1m]"#
    );
    assert_eq!(substitute("a $ b", &vars).unwrap(), "a $ b");
    assert!(substitute("x{a=\"$nope\"}", &vars).is_err());
    assert!(substitute("x{a=\"${}\"}", &vars).is_err());
}

#[test]
fn metric_names_are_found_wherever_a_query_names_them() {
    let known: BTreeSet<String> = ["obsgate_a_total".to_string()].into();
    let unknown = |e: &str| -> Vec<String> {
        selectors(e)
            .unwrap()
            .iter()
            .flat_map(|vs| unknown_names(vs, &known))
            .collect()
    };
    assert!(
        unknown(r#"sum(rate(obsgate_a_total[1m])) / sum(rate({__name__=~"obsgate_a.*"}[1m]))"#)
            .is_empty()
    );
    assert_eq!(
        unknown("max_over_time(obsgate_b[5m:1m]) or obsgate_a_total offset 5m"),
        ["obsgate_b"]
    );
    assert_eq!(unknown(r#"{__name__="obsgate_c"}"#), ["obsgate_c"]);
    assert_eq!(unknown(r#"count({__name__=~"obsgate_z.*"})"#).len(), 1);
    assert!(unknown(r#"{__name__!="obsgate_z", job="x"}"#).is_empty());
}
