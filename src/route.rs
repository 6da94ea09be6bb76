//! Per-backend route tables (SPEC 6). A path that is not in a table answers 404 and is never
//! forwarded. Each route names its required scope, whether label policies apply, and the path
//! it is forwarded to.

use crate::config::{BackendKind, BackendSlot, Backends, Component};
use crate::policy::Scope;
use http::Method;
use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch<'a> {
    pub slot: BackendSlot,
    /// Route pattern, a fixed string: safe as a metrics label.
    pub name: &'static str,
    /// `None`: only a valid token is needed.
    pub scope: Option<Scope>,
    /// Whether label policies apply (metrics:read and logs:read routes).
    pub label_policies: bool,
    /// Path sent upstream (before the backend's base path is prepended).
    pub upstream_path: Cow<'a, str>,
    /// Which upstream timeout and body limit apply.
    pub class: RouteClass,
    /// The component of the backend that serves it (SPEC 11).
    pub component: Component,
}

impl RouteMatch<'_> {
    /// A write: its scope is a `*:write`, `*:delete`, `metrics:import` or `rules:write`. Only
    /// writes are mirrored (remote read and Tempo's streaming search are exports, not writes).
    pub fn is_write(&self) -> bool {
        is_write_scope(self.scope)
    }
}

fn is_write_scope(scope: Option<Scope>) -> bool {
    matches!(
        scope,
        Some(
            Scope::MetricsWrite
                | Scope::MetricsDelete
                | Scope::MetricsImport
                | Scope::LogsWrite
                | Scope::LogsDelete
                | Scope::TracesWrite
                | Scope::TracesDelete
                | Scope::ProfilesWrite
                | Scope::RulesWrite
                | Scope::AlertsWrite,
        )
    )
}

/// The component that serves a route of a backend kind: writes go to distributors, reads to
/// query-frontends, rule configuration to rulers, Alertmanager routes to the alertmanager,
/// block upload and log deletion to the compactor, Loki's tail to the queriers.
fn component_of(kind: BackendKind, name: &str, scope: Option<Scope>) -> Component {
    match (kind, scope) {
        (_, Some(Scope::RulesRead | Scope::RulesWrite)) => Component::Ruler,
        (_, Some(Scope::AlertsRead | Scope::AlertsWrite)) => Component::Alertmanager,
        (_, Some(Scope::MetricsImport | Scope::LogsDelete)) => Component::Compactor,
        (
            _,
            Some(
                Scope::MetricsWrite | Scope::LogsWrite | Scope::TracesWrite | Scope::ProfilesWrite,
            ),
        ) => Component::Distributor,
        (BackendKind::Loki, _) if name == "/loki/api/v1/tail" => Component::Querier,
        _ => Component::QueryFrontend,
    }
}

/// Routes grouped by how long they may take and how large their request bodies may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteClass {
    /// Queries and other reads: the backend's `timeout`, `limits.max_read_body_bytes`.
    Read,
    /// Pushes, deletes, rule changes: `write_timeout`, the backend's `max_write_body_bytes`.
    Write,
    /// Long exports and uploads (remote read, block upload, Tempo streaming search):
    /// `export_timeout`, `max_write_body_bytes`.
    Export,
}

impl RouteClass {
    fn of(name: &str, scope: Option<Scope>) -> RouteClass {
        match name {
            "/prometheus/api/v1/read"
            | "/api/v1/upload/block/*"
            | "/tempopb.StreamingQuerier/*" => RouteClass::Export,
            _ if is_write_scope(scope) => RouteClass::Write,
            _ => RouteClass::Read,
        }
    }
}

struct Hit {
    name: &'static str,
    scope: Option<Scope>,
}

fn hit(name: &'static str, scope: Scope) -> Option<Hit> {
    Some(Hit {
        name,
        scope: Some(scope),
    })
}

/// Refuses paths that a normalising upstream could resolve to another route: empty, `.` or
/// `..` segments, encoded dots, slashes or backslashes, and raw backslashes.
pub fn path_is_safe(path: &str) -> bool {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return false;
    }
    // one pass: raw backslashes, and %2e %2f %5c %00 in either case
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'\\' => return false,
            b'%' => {
                let pair = (
                    b.get(i + 1).map(u8::to_ascii_lowercase),
                    b.get(i + 2).map(u8::to_ascii_lowercase),
                );
                if matches!(
                    pair,
                    (Some(b'2'), Some(b'e' | b'f'))
                        | (Some(b'5'), Some(b'c'))
                        | (Some(b'0'), Some(b'0'))
                ) {
                    return false;
                }
            }
            _ => {}
        }
    }
    let segs = path[1..].split('/');
    let mut segs = segs.peekable();
    while let Some(s) = segs.next() {
        // a trailing slash gives one empty last segment; tables have none, so refuse too
        if s.is_empty() || s == "." || s == ".." {
            return path == "/" && segs.peek().is_none();
        }
    }
    true
}

/// A single path segment that a route captures (label name, trace ID, namespace…).
fn segment(s: &str) -> Option<&str> {
    (!s.is_empty() && !s.contains('/')).then_some(s)
}

fn is_read(m: &Method) -> bool {
    m == Method::GET || m == Method::POST || m == Method::HEAD
}

fn rules_crud(method: &Method, rest: &str, name: &'static str) -> Option<Hit> {
    // "" | "/<ns>" | "/<ns>/<group>"
    if !rest.is_empty() {
        let r = rest.strip_prefix('/')?;
        let mut parts = r.split('/');
        let n = parts.clone().count();
        if !(1..=2).contains(&n) || parts.any(|p| p.is_empty()) {
            return None;
        }
    }
    match *method {
        Method::GET => hit(name, Scope::RulesRead),
        Method::POST | Method::DELETE => hit(name, Scope::RulesWrite),
        _ => None,
    }
}

fn mimir(method: &Method, path: &str) -> Option<Hit> {
    let post = method == Method::POST;
    let get = method == Method::GET;
    match path {
        "/api/v1/push" if post => return hit("/api/v1/push", Scope::MetricsWrite),
        "/api/prom/push" if post => return hit("/api/prom/push", Scope::MetricsWrite),
        "/otlp/v1/metrics" if post => return hit("/otlp/v1/metrics", Scope::MetricsWrite),
        "/api/v1/push/influx/write" if post => {
            return hit("/api/v1/push/influx/write", Scope::MetricsWrite);
        }
        "/prometheus/api/v1/status/buildinfo" if get => {
            return Some(Hit {
                name: "/prometheus/api/v1/status/buildinfo",
                scope: None,
            });
        }
        "/prometheus/api/v1/rules" if get => {
            return hit("/prometheus/api/v1/rules", Scope::RulesRead);
        }
        "/prometheus/api/v1/alerts" if get => {
            return hit("/prometheus/api/v1/alerts", Scope::RulesRead);
        }
        "/api/v1/alerts" => {
            return hit(
                "/api/v1/alerts",
                if get {
                    Scope::AlertsRead
                } else {
                    Scope::AlertsWrite
                },
            );
        }
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("/prometheus/api/v1/") {
        if !is_read(method) {
            return None;
        }
        let name = match rest {
            "query" => "/prometheus/api/v1/query",
            "query_range" => "/prometheus/api/v1/query_range",
            "query_exemplars" => "/prometheus/api/v1/query_exemplars",
            "series" => "/prometheus/api/v1/series",
            "labels" => "/prometheus/api/v1/labels",
            "metadata" => "/prometheus/api/v1/metadata",
            "read" => "/prometheus/api/v1/read",
            "format_query" => "/prometheus/api/v1/format_query",
            _ => {
                if let Some(n) = rest
                    .strip_prefix("label/")
                    .and_then(|r| r.strip_suffix("/values"))
                {
                    segment(n)?;
                    "/prometheus/api/v1/label/{name}/values"
                } else if let Some(c) = rest.strip_prefix("cardinality/") {
                    if c.is_empty() {
                        return None;
                    }
                    "/prometheus/api/v1/cardinality/*"
                } else {
                    return None;
                }
            }
        };
        return hit(name, Scope::MetricsRead);
    }
    if let Some(rest) = path.strip_prefix("/prometheus/config/v1/rules") {
        return rules_crud(method, rest, "/prometheus/config/v1/rules");
    }
    if path == "/alertmanager" || path.starts_with("/alertmanager/") {
        return hit(
            "/alertmanager/*",
            if get {
                Scope::AlertsRead
            } else {
                Scope::AlertsWrite
            },
        );
    }
    if let Some(rest) = path.strip_prefix("/api/v1/upload/block/")
        && !rest.is_empty()
    {
        return hit("/api/v1/upload/block/*", Scope::MetricsImport);
    }
    None
}

fn loki(method: &Method, path: &str) -> Option<Hit> {
    let post = method == Method::POST;
    let get = method == Method::GET;
    match path {
        "/loki/api/v1/push" if post => return hit("/loki/api/v1/push", Scope::LogsWrite),
        "/otlp/v1/logs" if post => return hit("/otlp/v1/logs", Scope::LogsWrite),
        "/loki/api/v1/tail" if get => return hit("/loki/api/v1/tail", Scope::LogsRead),
        "/loki/api/v1/delete" => return hit("/loki/api/v1/delete", Scope::LogsDelete),
        "/prometheus/api/v1/rules" if get => {
            return hit("/prometheus/api/v1/rules", Scope::RulesRead);
        }
        "/prometheus/api/v1/alerts" if get => {
            return hit("/prometheus/api/v1/alerts", Scope::RulesRead);
        }
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("/loki/api/v1/rules") {
        return rules_crud(method, rest, "/loki/api/v1/rules");
    }
    let rest = path.strip_prefix("/loki/api/v1/")?;
    if !is_read(method) {
        return None;
    }
    let name = match rest {
        "query" => "/loki/api/v1/query",
        "query_range" => "/loki/api/v1/query_range",
        "label" => "/loki/api/v1/label",
        "labels" => "/loki/api/v1/labels",
        "series" => "/loki/api/v1/series",
        "index/stats" => "/loki/api/v1/index/stats",
        "index/volume" => "/loki/api/v1/index/volume",
        "index/volume_range" => "/loki/api/v1/index/volume_range",
        "patterns" => "/loki/api/v1/patterns",
        "detected_labels" => "/loki/api/v1/detected_labels",
        "detected_fields" => "/loki/api/v1/detected_fields",
        "format_query" => "/loki/api/v1/format_query",
        _ => {
            if let Some(n) = rest
                .strip_prefix("label/")
                .and_then(|r| r.strip_suffix("/values"))
            {
                segment(n)?;
                "/loki/api/v1/label/{name}/values"
            } else if let Some(n) = rest
                .strip_prefix("detected_field/")
                .and_then(|r| r.strip_suffix("/values"))
            {
                segment(n)?;
                "/loki/api/v1/detected_field/{name}/values"
            } else {
                return None;
            }
        }
    };
    hit(name, Scope::LogsRead)
}

fn tempo(method: &Method, path: &str) -> Option<Hit> {
    if method == Method::POST {
        return match path {
            "/v1/traces" => hit("/v1/traces", Scope::TracesWrite),
            "/otlp/v1/traces" => hit("/otlp/v1/traces", Scope::TracesWrite),
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export" => hit(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                Scope::TracesWrite,
            ),
            _ => {
                let m = path.strip_prefix("/tempopb.StreamingQuerier/")?;
                segment(m)?;
                hit("/tempopb.StreamingQuerier/*", Scope::TracesRead)
            }
        };
    }
    if method != Method::GET {
        return None;
    }
    let name = match path {
        "/api/search" => "/api/search",
        "/api/search/tags" => "/api/search/tags",
        "/api/v2/search/tags" => "/api/v2/search/tags",
        "/api/metrics/query" => "/api/metrics/query",
        "/api/metrics/query_range" => "/api/metrics/query_range",
        "/api/echo" => "/api/echo",
        _ => {
            if let Some(id) = path.strip_prefix("/api/traces/") {
                segment(id)?;
                "/api/traces/{id}"
            } else if let Some(id) = path.strip_prefix("/api/v2/traces/") {
                segment(id)?;
                "/api/v2/traces/{id}"
            } else if let Some(t) = path
                .strip_prefix("/api/search/tag/")
                .and_then(|r| r.strip_suffix("/values"))
            {
                segment(t)?;
                "/api/search/tag/{tag}/values"
            } else if let Some(t) = path
                .strip_prefix("/api/v2/search/tag/")
                .and_then(|r| r.strip_suffix("/values"))
            {
                segment(t)?;
                "/api/v2/search/tag/{tag}/values"
            } else {
                return None;
            }
        }
    };
    hit(name, Scope::TracesRead)
}

fn pyroscope(method: &Method, path: &str) -> Option<Hit> {
    match path {
        "/ingest" if method == Method::POST => return hit("/ingest", Scope::ProfilesWrite),
        "/pyroscope/ingest" if method == Method::POST => {
            return hit("/pyroscope/ingest", Scope::ProfilesWrite);
        }
        "/push.v1.PusherService/Push" if method == Method::POST => {
            return hit("/push.v1.PusherService/Push", Scope::ProfilesWrite);
        }
        _ => {}
    }
    if let Some(m) = path.strip_prefix("/querier.v1.QuerierService/") {
        segment(m)?;
        return (method == Method::POST).then_some(Hit {
            name: "/querier.v1.QuerierService/*",
            scope: Some(Scope::ProfilesRead),
        });
    }
    if !is_read(method) {
        return None;
    }
    let name = match path {
        "/pyroscope/render" => "/pyroscope/render",
        "/pyroscope/render-diff" => "/pyroscope/render-diff",
        "/pyroscope/labels" => "/pyroscope/labels",
        "/pyroscope/label-values" => "/pyroscope/label-values",
        _ => return None,
    };
    hit(name, Scope::ProfilesRead)
}

/// Matches one backend's table.
pub fn match_kind<'a>(
    slot: BackendSlot,
    kind: BackendKind,
    method: &Method,
    path: &'a str,
) -> Option<RouteMatch<'a>> {
    if !path_is_safe(path) {
        return None;
    }
    let (h, upstream_path): (Hit, Cow<'a, str>) = match kind {
        BackendKind::Mimir => {
            let h = mimir(method, path)?;
            let up = if h.name == "/api/prom/push" {
                Cow::Borrowed("/api/v1/push")
            } else {
                Cow::Borrowed(path)
            };
            (h, up)
        }
        BackendKind::Prometheus => {
            let h = mimir(method, path)?;
            let up = match h.name {
                "/api/v1/push" | "/api/prom/push" => Cow::Borrowed("/api/v1/write"),
                "/otlp/v1/metrics" => Cow::Borrowed("/api/v1/otlp/v1/metrics"),
                _ => Cow::Borrowed(
                    path.strip_prefix("/prometheus")
                        .filter(|p| p.starts_with('/'))
                        .unwrap_or(path),
                ),
            };
            (h, up)
        }
        BackendKind::Loki => (loki(method, path)?, Cow::Borrowed(path)),
        BackendKind::Tempo => {
            let inner = path
                .strip_prefix("/tempo")
                .filter(|p| p.starts_with('/'))
                .unwrap_or(path);
            (tempo(method, inner)?, Cow::Borrowed(inner))
        }
        BackendKind::Pyroscope => (pyroscope(method, path)?, Cow::Borrowed(path)),
    };
    let label_policies = matches!(h.scope, Some(Scope::MetricsRead) | Some(Scope::LogsRead));
    Some(RouteMatch {
        slot,
        name: h.name,
        scope: h.scope,
        label_policies,
        upstream_path,
        class: RouteClass::of(h.name, h.scope),
        component: component_of(kind, h.name, h.scope),
    })
}

/// Matches a request on a listener: the shared listener (`only: None`) tries the configured
/// backends in the order metrics, logs, traces, profiles, so shared paths go to metrics; a
/// dedicated listener serves its backend's table alone.
pub fn match_route<'a>(
    backends: &Backends,
    only: Option<BackendSlot>,
    method: &Method,
    path: &'a str,
) -> Option<RouteMatch<'a>> {
    let slots: &[BackendSlot] = match only {
        Some(ref s) => std::slice::from_ref(s),
        None => &BackendSlot::ALL,
    };
    slots
        .iter()
        .filter_map(|s| backends.get(*s))
        .find_map(|b| match_kind(b.slot, b.kind, method, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(kind: BackendKind, method: Method, path: &str) -> Option<(Option<Scope>, String, bool)> {
        match_kind(BackendSlot::Metrics, kind, &method, path)
            .map(|r| (r.scope, r.upstream_path.into_owned(), r.label_policies))
    }

    fn scope(kind: BackendKind, method: Method, path: &str) -> Option<Scope> {
        m(kind, method, path).and_then(|x| x.0)
    }

    use BackendKind::*;
    use Scope::*;

    #[test]
    fn mimir_table() {
        for p in [
            "/api/v1/push",
            "/otlp/v1/metrics",
            "/api/v1/push/influx/write",
            "/api/prom/push",
        ] {
            assert_eq!(scope(Mimir, Method::POST, p), Some(MetricsWrite), "{p}");
            assert_eq!(m(Mimir, Method::GET, p), None, "GET {p}");
        }
        assert_eq!(
            m(Mimir, Method::POST, "/api/prom/push").unwrap().1,
            "/api/v1/push"
        );
        for p in [
            "query",
            "query_range",
            "query_exemplars",
            "series",
            "labels",
            "label/job/values",
            "metadata",
            "read",
            "cardinality/label_names",
            "cardinality/active_series",
            "format_query",
        ] {
            let path = format!("/prometheus/api/v1/{p}");
            let r = m(Mimir, Method::GET, &path).unwrap_or_else(|| panic!("{path}"));
            assert_eq!((r.0, r.2), (Some(MetricsRead), true), "{path}");
            assert_eq!(scope(Mimir, Method::POST, &path), Some(MetricsRead));
            assert_eq!(m(Mimir, Method::DELETE, &path), None);
        }
        assert_eq!(
            m(Mimir, Method::GET, "/prometheus/api/v1/label//values"),
            None
        );
        assert_eq!(
            m(Mimir, Method::GET, "/prometheus/api/v1/label/a/b/values"),
            None
        );
        assert_eq!(
            m(Mimir, Method::GET, "/prometheus/api/v1/cardinality/"),
            None
        );
        for p in [
            "/prometheus/config/v1/rules",
            "/prometheus/config/v1/rules/ns",
            "/prometheus/config/v1/rules/ns/g",
        ] {
            assert_eq!(scope(Mimir, Method::GET, p), Some(RulesRead), "{p}");
            assert_eq!(scope(Mimir, Method::POST, p), Some(RulesWrite), "{p}");
            assert_eq!(scope(Mimir, Method::DELETE, p), Some(RulesWrite), "{p}");
            assert_eq!(m(Mimir, Method::PUT, p), None);
        }
        assert_eq!(
            m(Mimir, Method::GET, "/prometheus/config/v1/rules/a/b/c"),
            None
        );
        assert_eq!(m(Mimir, Method::GET, "/prometheus/config/v1/rulesx"), None);
        assert_eq!(
            scope(Mimir, Method::GET, "/prometheus/api/v1/rules"),
            Some(RulesRead)
        );
        assert_eq!(
            scope(Mimir, Method::GET, "/prometheus/api/v1/alerts"),
            Some(RulesRead)
        );
        assert_eq!(
            scope(Mimir, Method::GET, "/alertmanager/api/v2/silences"),
            Some(AlertsRead)
        );
        assert_eq!(
            scope(Mimir, Method::POST, "/alertmanager/api/v2/silences"),
            Some(AlertsWrite)
        );
        assert_eq!(
            scope(Mimir, Method::GET, "/api/v1/alerts"),
            Some(AlertsRead)
        );
        assert_eq!(
            scope(Mimir, Method::POST, "/api/v1/alerts"),
            Some(AlertsWrite)
        );
        assert_eq!(
            scope(Mimir, Method::POST, "/api/v1/upload/block/01H/start"),
            Some(MetricsImport)
        );
        let b = m(Mimir, Method::GET, "/prometheus/api/v1/status/buildinfo").unwrap();
        assert_eq!((b.0, b.2), (None, false));
        assert_eq!(
            m(Mimir, Method::GET, "/prometheus/api/v1/status/config"),
            None
        );
        assert_eq!(m(Mimir, Method::GET, "/admin/api/v3/tenants"), None);
        assert_eq!(m(Mimir, Method::GET, "/"), None);
    }

    #[test]
    fn prometheus_kind_rewrites() {
        assert_eq!(
            m(Prometheus, Method::POST, "/api/v1/push").unwrap().1,
            "/api/v1/write"
        );
        assert_eq!(
            m(Prometheus, Method::POST, "/api/prom/push").unwrap().1,
            "/api/v1/write"
        );
        assert_eq!(
            m(Prometheus, Method::POST, "/otlp/v1/metrics").unwrap().1,
            "/api/v1/otlp/v1/metrics"
        );
        assert_eq!(
            m(Prometheus, Method::GET, "/prometheus/api/v1/query")
                .unwrap()
                .1,
            "/api/v1/query"
        );
        assert_eq!(
            m(
                Prometheus,
                Method::GET,
                "/prometheus/api/v1/label/job/values"
            )
            .unwrap()
            .1,
            "/api/v1/label/job/values"
        );
        assert_eq!(
            m(Prometheus, Method::GET, "/api/v1/query"),
            None,
            "only the table's paths"
        );
    }

    #[test]
    fn loki_table() {
        assert_eq!(
            scope(Loki, Method::POST, "/loki/api/v1/push"),
            Some(LogsWrite)
        );
        assert_eq!(scope(Loki, Method::POST, "/otlp/v1/logs"), Some(LogsWrite));
        for p in [
            "query",
            "query_range",
            "label",
            "labels",
            "label/app/values",
            "series",
            "index/stats",
            "index/volume",
            "index/volume_range",
            "patterns",
            "detected_labels",
            "detected_fields",
            "detected_field/level/values",
            "format_query",
        ] {
            let path = format!("/loki/api/v1/{p}");
            let r = m(Loki, Method::GET, &path).unwrap_or_else(|| panic!("{path}"));
            assert_eq!((r.0, r.2), (Some(LogsRead), true), "{path}");
        }
        assert_eq!(
            scope(Loki, Method::GET, "/loki/api/v1/tail"),
            Some(LogsRead)
        );
        assert_eq!(
            scope(Loki, Method::POST, "/loki/api/v1/delete"),
            Some(LogsDelete)
        );
        assert_eq!(
            scope(Loki, Method::GET, "/loki/api/v1/delete"),
            Some(LogsDelete)
        );
        assert_eq!(
            scope(Loki, Method::GET, "/loki/api/v1/rules/ns/g"),
            Some(RulesRead)
        );
        assert_eq!(
            scope(Loki, Method::POST, "/loki/api/v1/rules/ns"),
            Some(RulesWrite)
        );
        assert_eq!(
            scope(Loki, Method::GET, "/prometheus/api/v1/rules"),
            Some(RulesRead)
        );
        assert_eq!(m(Loki, Method::GET, "/loki/api/v1/nope"), None);
        assert_eq!(m(Loki, Method::POST, "/loki/api/v1/tail"), None);
    }

    #[test]
    fn tempo_table_with_prefix() {
        for p in [
            "/api/traces/abc",
            "/api/v2/traces/abc",
            "/api/search",
            "/api/search/tags",
            "/api/v2/search/tags",
            "/api/search/tag/service.name/values",
            "/api/v2/search/tag/x/values",
            "/api/metrics/query",
            "/api/metrics/query_range",
            "/api/echo",
        ] {
            assert_eq!(scope(Tempo, Method::GET, p), Some(TracesRead), "{p}");
            let prefixed = format!("/tempo{p}");
            let r = m(Tempo, Method::GET, &prefixed).unwrap();
            assert_eq!((r.0, r.1.as_str(), r.2), (Some(TracesRead), p, false));
        }
        assert_eq!(
            scope(Tempo, Method::POST, "/tempopb.StreamingQuerier/Search"),
            Some(TracesRead)
        );
        for p in [
            "/v1/traces",
            "/otlp/v1/traces",
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        ] {
            assert_eq!(scope(Tempo, Method::POST, p), Some(TracesWrite), "{p}");
            assert_eq!(
                scope(Tempo, Method::POST, &format!("/tempo{p}")),
                Some(TracesWrite),
                "{p}"
            );
        }
        assert_eq!(m(Tempo, Method::GET, "/api/traces/"), None);
        assert_eq!(m(Tempo, Method::GET, "/tempox/api/echo"), None);
    }

    #[test]
    fn pyroscope_table() {
        for p in [
            "/ingest",
            "/pyroscope/ingest",
            "/push.v1.PusherService/Push",
        ] {
            assert_eq!(
                scope(Pyroscope, Method::POST, p),
                Some(ProfilesWrite),
                "{p}"
            );
        }
        assert_eq!(
            scope(
                Pyroscope,
                Method::POST,
                "/querier.v1.QuerierService/SelectMergeStacktraces"
            ),
            Some(ProfilesRead)
        );
        for p in [
            "/pyroscope/render",
            "/pyroscope/render-diff",
            "/pyroscope/labels",
            "/pyroscope/label-values",
        ] {
            assert_eq!(scope(Pyroscope, Method::GET, p), Some(ProfilesRead), "{p}");
        }
        assert_eq!(m(Pyroscope, Method::GET, "/pyroscope/other"), None);
    }

    #[test]
    fn unsafe_paths_never_match() {
        for p in [
            "/prometheus/api/v1/query/../../admin",
            "/alertmanager/../api/v1/push",
            "/alertmanager/%2e%2e/api/v1/push",
            "/alertmanager/x%2Fy",
            "//api/v1/push",
            "/api/v1//push",
            "/api/v1/push/",
            "/alertmanager/./x",
            "/alertmanager\\x",
            "api/v1/push",
        ] {
            assert!(!path_is_safe(p), "{p}");
            assert_eq!(m(Mimir, Method::POST, p), None, "{p}");
            assert_eq!(m(Mimir, Method::GET, p), None, "{p}");
        }
        assert!(path_is_safe("/api/v1/push"));
    }

    #[test]
    fn shared_listener_prefers_metrics_and_dedicated_serves_one_table() {
        let cfg = crate::config::parse(
            std::path::Path::new("g.yaml"),
            "backends:\n  metrics: {kind: mimir, url: \"http://m\"}\n  logs: {kind: loki, url: \"http://l\"}\n  traces: {kind: tempo, url: \"http://t\"}\n",
        )
        .unwrap();
        let b = &cfg.backends;
        let r = match_route(b, None, &Method::GET, "/prometheus/api/v1/rules").unwrap();
        assert_eq!(r.slot, BackendSlot::Metrics);
        let r = match_route(
            b,
            Some(BackendSlot::Logs),
            &Method::GET,
            "/prometheus/api/v1/rules",
        )
        .unwrap();
        assert_eq!(r.slot, BackendSlot::Logs);
        assert_eq!(
            match_route(b, None, &Method::GET, "/loki/api/v1/query")
                .unwrap()
                .slot,
            BackendSlot::Logs
        );
        assert_eq!(
            match_route(
                b,
                Some(BackendSlot::Metrics),
                &Method::GET,
                "/loki/api/v1/query"
            ),
            None
        );
        assert_eq!(
            match_route(b, None, &Method::POST, "/ingest"),
            None,
            "profiles backend absent"
        );
    }

    #[test]
    fn every_route_names_the_component_that_serves_it() {
        use Component::*;
        let c = |kind, method: Method, path: &str| {
            match_kind(BackendSlot::Metrics, kind, &method, path)
                .unwrap_or_else(|| panic!("{path} must route"))
                .component
        };
        for kind in [BackendKind::Mimir, BackendKind::Prometheus] {
            for p in [
                "/api/v1/push",
                "/api/prom/push",
                "/otlp/v1/metrics",
                "/api/v1/push/influx/write",
            ] {
                assert_eq!(c(kind, Method::POST, p), Distributor, "{p}");
            }
            for p in [
                "/prometheus/api/v1/query",
                "/prometheus/api/v1/series",
                "/prometheus/api/v1/label/job/values",
                "/prometheus/api/v1/cardinality/label_names",
                "/prometheus/api/v1/read",
                "/prometheus/api/v1/status/buildinfo",
            ] {
                assert_eq!(c(kind, Method::GET, p), QueryFrontend, "{p}");
            }
            for p in [
                "/prometheus/config/v1/rules/ns",
                "/prometheus/api/v1/rules",
                "/prometheus/api/v1/alerts",
            ] {
                assert_eq!(c(kind, Method::GET, p), Ruler, "{p}");
            }
            assert_eq!(
                c(kind, Method::POST, "/prometheus/config/v1/rules/ns"),
                Ruler
            );
            assert_eq!(
                c(kind, Method::GET, "/alertmanager/api/v2/alerts"),
                Alertmanager
            );
            assert_eq!(c(kind, Method::POST, "/api/v1/alerts"), Alertmanager);
            assert_eq!(
                c(kind, Method::POST, "/api/v1/upload/block/01H/start"),
                Compactor
            );
        }
        let l = BackendKind::Loki;
        assert_eq!(c(l, Method::POST, "/loki/api/v1/push"), Distributor);
        assert_eq!(c(l, Method::POST, "/otlp/v1/logs"), Distributor);
        assert_eq!(c(l, Method::GET, "/loki/api/v1/query_range"), QueryFrontend);
        assert_eq!(c(l, Method::GET, "/loki/api/v1/labels"), QueryFrontend);
        assert_eq!(c(l, Method::GET, "/loki/api/v1/tail"), Querier);
        assert_eq!(c(l, Method::GET, "/loki/api/v1/rules"), Ruler);
        assert_eq!(c(l, Method::GET, "/prometheus/api/v1/rules"), Ruler);
        assert_eq!(c(l, Method::POST, "/loki/api/v1/delete"), Compactor);
        let t = BackendKind::Tempo;
        assert_eq!(c(t, Method::POST, "/v1/traces"), Distributor);
        assert_eq!(
            c(
                t,
                Method::POST,
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
            ),
            Distributor
        );
        assert_eq!(c(t, Method::GET, "/tempo/api/traces/abc"), QueryFrontend);
        assert_eq!(
            c(t, Method::POST, "/tempopb.StreamingQuerier/Search"),
            QueryFrontend
        );
        let p = BackendKind::Pyroscope;
        assert_eq!(c(p, Method::POST, "/ingest"), Distributor);
        assert_eq!(
            c(p, Method::POST, "/push.v1.PusherService/Push"),
            Distributor
        );
        assert_eq!(c(p, Method::GET, "/pyroscope/render"), QueryFrontend);
        // every component a route names is one its kind has
        for kind in [
            BackendKind::Mimir,
            BackendKind::Prometheus,
            BackendKind::Loki,
            BackendKind::Tempo,
            BackendKind::Pyroscope,
        ] {
            let comps = Component::of_kind(kind);
            for (m, path) in [
                (Method::POST, "/api/v1/push"),
                (Method::GET, "/loki/api/v1/tail"),
                (Method::POST, "/loki/api/v1/delete"),
                (Method::GET, "/alertmanager/x"),
                (Method::POST, "/api/v1/upload/block/x"),
                (Method::GET, "/api/search"),
                (Method::POST, "/ingest"),
            ] {
                if let Some(r) = match_kind(BackendSlot::Metrics, kind, &m, path) {
                    assert!(comps.contains(&r.component), "{kind:?} {path}");
                }
            }
        }
    }
}
