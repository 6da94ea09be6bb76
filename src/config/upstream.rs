//! The upstream topology of a backend (`components`, `balance`, `health_check`, `dns_refresh`,
//! `mirror`): which endpoints serve which kind of request, and how they are chosen.

use super::BackendKind;
use crate::diag::FileError;
use crate::duration::PromDuration;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;
use std::path::Path;
use std::time::Duration;

pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(10);
pub const DEFAULT_MIRROR_MAX_INFLIGHT: usize = 100;

/// The part of a Mimir/Loki/Tempo/Pyroscope deployment a route is served by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Distributor,
    QueryFrontend,
    Querier,
    Ruler,
    Alertmanager,
    Compactor,
}

impl Component {
    pub const ALL: [Component; 6] = [
        Component::Distributor,
        Component::QueryFrontend,
        Component::Querier,
        Component::Ruler,
        Component::Alertmanager,
        Component::Compactor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Component::Distributor => "distributor",
            Component::QueryFrontend => "query_frontend",
            Component::Querier => "querier",
            Component::Ruler => "ruler",
            Component::Alertmanager => "alertmanager",
            Component::Compactor => "compactor",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    fn parse(s: &str) -> Option<Component> {
        Component::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The components whose routes a backend kind has.
    pub fn of_kind(kind: BackendKind) -> &'static [Component] {
        use Component::*;
        match kind {
            BackendKind::Mimir | BackendKind::Prometheus => {
                &[Distributor, QueryFrontend, Ruler, Alertmanager, Compactor]
            }
            BackendKind::Loki => &[Distributor, QueryFrontend, Querier, Ruler, Compactor],
            BackendKind::Tempo | BackendKind::Pyroscope => &[Distributor, QueryFrontend],
        }
    }
}

/// One URL of an endpoint set as written: `http(s)://host:port/base` is one endpoint;
/// `dns+http(s)://name:port/base` is every address `name` resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Prepended to every forwarded path (no trailing `/`).
    pub base_path: String,
    /// `dns+`: resolved (and re-resolved) to one endpoint per address.
    pub dns: bool,
}

impl UpstreamUrl {
    /// `host:port` with the scheme's default port filled in.
    pub fn host_port(&self) -> (String, u16) {
        let host = self
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port =
            self.authority
                .port_u16()
                .unwrap_or(if self.scheme == http::uri::Scheme::HTTPS {
                    443
                } else {
                    80
                });
        (host, port)
    }
}

/// The URL as it may be shown: a `user:password@` part is replaced by `***@`.
pub(super) fn shown(s: &str) -> String {
    let start = s.find("://").map(|i| i + 3).unwrap_or(0);
    let end = s[start..]
        .find(['/', '?', '#'])
        .map(|i| start + i)
        .unwrap_or(s.len());
    match s[start..end].rfind('@') {
        Some(at) => format!("{}***{}", &s[..start], &s[start + at..]),
        None => s.to_string(),
    }
}

pub fn parse_upstream_url(s: &str, allow_dns: bool) -> Result<UpstreamUrl, String> {
    // errors show the URL without a password
    let url = shown(s);
    let (rest, dns) = match s.strip_prefix("dns+") {
        Some(r) if allow_dns => (r, true),
        Some(_) => return Err(format!("url {url:?}: dns+ URLs are not allowed here")),
        None => (s, false),
    };
    let uri: http::Uri = rest
        .parse()
        .map_err(|e| format!("invalid backend url {url:?}: {e}"))?;
    let scheme = uri.scheme().cloned().ok_or_else(|| {
        format!("backend url {url:?} needs http://, https://, dns+http:// or dns+https://")
    })?;
    if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
        return Err(format!(
            "backend url {url:?}: scheme must be http, https, dns+http or dns+https"
        ));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("backend url {url:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("backend url {url:?} must not contain credentials"));
    }
    if authority.host().is_empty() {
        return Err(format!("backend url {url:?} has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("backend url {url:?} must not have a query string"));
    }
    let base_path = uri.path().trim_end_matches('/').to_string();
    Ok(UpstreamUrl {
        scheme,
        authority,
        base_path,
        dns,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// Power of two choices: two random healthy endpoints, the one with fewer requests in flight.
    #[default]
    LeastInflight,
    RoundRobin,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
    /// Written in the config: then every component is checked, even one with one endpoint.
    pub explicit: bool,
    /// `enabled: false`: no active checks (connection failures still eject an endpoint, and
    /// its next response brings it back).
    pub enabled: bool,
}

impl HealthCheck {
    pub fn default_for(kind: BackendKind) -> HealthCheck {
        HealthCheck {
            path: match kind {
                BackendKind::Prometheus => "/-/ready".to_string(),
                _ => "/ready".to_string(),
            },
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            unhealthy_after: 2,
            healthy_after: 1,
            explicit: false,
            enabled: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    pub url: UpstreamUrl,
    /// Share of write requests copied, 0.0 to 1.0.
    pub fraction: f64,
}

/// Where each component's requests go.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// The backend's `url`: components not listed (empty when every component is listed).
    pub default_urls: Vec<UpstreamUrl>,
    /// Listed components and their URLs.
    pub components: Vec<(Component, Vec<UpstreamUrl>)>,
    pub balance: Balance,
    pub health_check: HealthCheck,
    /// Components with a `health_check` of their own (merged over the backend's).
    pub component_health: Vec<(Component, HealthCheck)>,
    pub dns_refresh: Duration,
    pub mirrors: Vec<Mirror>,
    pub mirror_max_inflight: usize,
}

impl Topology {
    /// A backend with one URL and nothing else (as in tests and `url`-only configs).
    pub fn single(url: UpstreamUrl, kind: BackendKind) -> Topology {
        Topology {
            default_urls: vec![url],
            components: Vec::new(),
            balance: Balance::default(),
            health_check: HealthCheck::default_for(kind),
            component_health: Vec::new(),
            dns_refresh: DEFAULT_DNS_REFRESH,
            mirrors: Vec::new(),
            mirror_max_inflight: DEFAULT_MIRROR_MAX_INFLIGHT,
        }
    }

    /// The health check of `c`: its own, else the backend's.
    pub fn health_of(&self, c: Component) -> &HealthCheck {
        self.component_health
            .iter()
            .find(|(k, _)| *k == c)
            .map(|(_, h)| h)
            .unwrap_or(&self.health_check)
    }

    /// The URLs that serve `c`.
    pub fn urls_of(&self, c: Component) -> &[UpstreamUrl] {
        self.components
            .iter()
            .find(|(k, _)| *k == c)
            .map(|(_, u)| u.as_slice())
            .unwrap_or(&self.default_urls)
    }
}

impl std::fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dns = if self.dns { "dns+" } else { "" };
        write!(
            f,
            "{dns}{}://{}{}",
            self.scheme, self.authority, self.base_path
        )
    }
}

impl super::Backend {
    /// One line per backend for `obsgate check`: where each component's requests go.
    pub fn describe_topology(&self) -> String {
        let t = &self.topology;
        let mut parts = Vec::new();
        for &c in Component::of_kind(self.kind) {
            let urls: Vec<String> = t.urls_of(c).iter().map(|u| u.to_string()).collect();
            parts.push(format!("{} → {}", c.as_str(), urls.join(" ")));
        }
        let mut s = format!(
            "backend {} ({}): {}; balance {}",
            self.slot.as_str(),
            self.kind.as_str(),
            parts.join(", "),
            match t.balance {
                Balance::LeastInflight => "least_inflight",
                Balance::RoundRobin => "round_robin",
            }
        );
        for m in &t.mirrors {
            s.push_str(&format!("; mirror {} ({}%)", m.url, m.fraction * 100.0));
        }
        s
    }
}

// ---------- raw (as written) ----------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawComponent {
    url: Option<Spanned<String>>,
    urls: Option<Spanned<Vec<Spanned<String>>>>,
    health_check: Option<Spanned<RawHealthCheck>>,
}

/// `components:` keeps each name's location, for "unknown component" errors.
pub(super) struct RawComponents(Vec<(Spanned<String>, Spanned<RawComponent>)>);

impl<'de> Deserialize<'de> for RawComponents {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawComponents;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of component name to { url } or { urls }")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<RawComponents, A::Error> {
                let mut v = Vec::new();
                while let Some(k) = m.next_key::<Spanned<String>>()? {
                    let val = m.next_value::<Spanned<RawComponent>>()?;
                    v.push((k, val));
                }
                Ok(RawComponents(v))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthCheck {
    enabled: Option<bool>,
    path: Option<Spanned<String>>,
    interval: Option<Spanned<PromDuration>>,
    timeout: Option<Spanned<PromDuration>>,
    unhealthy_after: Option<Spanned<u32>>,
    healthy_after: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMirror {
    url: Spanned<String>,
    fraction: Option<Spanned<f64>>,
}

/// The topology keys of a raw backend.
pub(super) struct RawTopology {
    pub url: Option<Spanned<String>>,
    pub components: Option<Spanned<RawComponents>>,
    pub balance: Option<Spanned<String>>,
    pub health_check: Option<Spanned<RawHealthCheck>>,
    pub dns_refresh: Option<Spanned<PromDuration>>,
    pub mirror: Option<Vec<Spanned<RawMirror>>>,
    pub mirror_max_inflight: Option<Spanned<u64>>,
}

/// Validates the topology of one backend; every error carries its file:line:col.
pub(super) fn build(
    path: &Path,
    slot: &str,
    kind: BackendKind,
    backend_loc: &serde_saphyr::Location,
    raw: RawTopology,
    errors: &mut Vec<FileError>,
) -> Option<Topology> {
    let before = errors.len();
    let url_list = |s: &Spanned<String>, allow_dns: bool, errors: &mut Vec<FileError>| {
        match parse_upstream_url(&s.value, allow_dns) {
            Ok(u) => Some(u),
            Err(m) => {
                errors.push(FileError::at(path, &s.referenced, m));
                None
            }
        }
    };
    let default_urls: Vec<UpstreamUrl> = raw
        .url
        .as_ref()
        .and_then(|u| url_list(u, true, errors))
        .into_iter()
        .collect();

    let allowed = Component::of_kind(kind);
    let mut components: Vec<(Component, Vec<UpstreamUrl>)> = Vec::new();
    let mut component_checks: Vec<(Component, RawHealthCheck)> = Vec::new();
    if let Some(cs) = raw.components {
        for (name, rc) in cs.value.0 {
            let Some(c) = Component::parse(&name.value).filter(|c| allowed.contains(c)) else {
                let names: Vec<&str> = allowed.iter().map(|c| c.as_str()).collect();
                errors.push(FileError::at(
                    path,
                    &name.referenced,
                    format!(
                        "backend {slot} (kind {}): unknown component {:?}; expected one of {}",
                        kind.as_str(),
                        name.value,
                        names.join(", ")
                    ),
                ));
                continue;
            };
            if components.iter().any(|(k, _)| *k == c) {
                errors.push(FileError::at(
                    path,
                    &name.referenced,
                    format!("backend {slot}: component {} is listed twice", c.as_str()),
                ));
                continue;
            }
            let rc_loc = rc.referenced;
            let rc = rc.value;
            if let Some(h) = rc.health_check {
                component_checks.push((c, h.value));
            }
            let urls: Vec<UpstreamUrl> = match (rc.url, rc.urls) {
                (Some(u), None) => url_list(&u, true, errors).into_iter().collect(),
                (None, Some(us)) => {
                    if us.value.is_empty() {
                        errors.push(FileError::at(
                            path,
                            &us.referenced,
                            format!(
                                "backend {slot}: component {}: urls must list at least one URL",
                                c.as_str()
                            ),
                        ));
                    }
                    let mut out = Vec::new();
                    for u in &us.value {
                        if let Some(x) = url_list(u, true, errors) {
                            if out.contains(&x) {
                                errors.push(FileError::at(
                                    path,
                                    &u.referenced,
                                    format!(
                                        "backend {slot}: URL {:?} is listed twice",
                                        shown(&u.value)
                                    ),
                                ));
                            }
                            out.push(x);
                        }
                    }
                    out
                }
                (Some(u), Some(_)) => {
                    errors.push(FileError::at(
                        path,
                        &u.referenced,
                        format!(
                            "backend {slot}: component {}: give url or urls, not both",
                            c.as_str()
                        ),
                    ));
                    Vec::new()
                }
                (None, None) => {
                    errors.push(FileError::at(
                        path,
                        &rc_loc,
                        format!("backend {slot}: component {} needs url or urls", c.as_str()),
                    ));
                    Vec::new()
                }
            };
            components.push((c, urls));
        }
    }
    if raw.url.is_none() {
        let missing: Vec<&str> = allowed
            .iter()
            .filter(|c| !components.iter().any(|(k, _)| k == *c))
            .map(|c| c.as_str())
            .collect();
        if !missing.is_empty() {
            errors.push(FileError::at(
                path,
                backend_loc,
                format!(
                    "backend {slot} needs url: it is where components not listed under components go ({})",
                    missing.join(", ")
                ),
            ));
        }
    }

    let balance = match &raw.balance {
        None => Balance::LeastInflight,
        Some(b) => match b.value.as_str() {
            "least_inflight" => Balance::LeastInflight,
            "round_robin" => Balance::RoundRobin,
            other => {
                errors.push(FileError::at(
                    path,
                    &b.referenced,
                    format!(
                        "backend {slot}: unknown balance {other:?}; expected least_inflight or round_robin"
                    ),
                ));
                Balance::LeastInflight
            }
        },
    };

    let health_check = match raw.health_check {
        Some(h) => health_from(path, slot, HealthCheck::default_for(kind), h.value, errors),
        None => HealthCheck::default_for(kind),
    };
    let mut component_health = Vec::new();
    for (c, h) in component_checks {
        component_health.push((c, health_from(path, slot, health_check.clone(), h, errors)));
    }

    let dns_refresh = match raw.dns_refresh {
        Some(d) if d.value.0 < Duration::from_millis(100) => {
            errors.push(FileError::at(
                path,
                &d.referenced,
                format!("backend {slot}: dns_refresh must be at least 100ms"),
            ));
            DEFAULT_DNS_REFRESH
        }
        Some(d) => d.value.0,
        None => DEFAULT_DNS_REFRESH,
    };

    let mut mirrors = Vec::new();
    for m in raw.mirror.unwrap_or_default() {
        let m = m.value;
        let Some(url) = url_list(&m.url, false, errors) else {
            continue;
        };
        let fraction = match m.fraction {
            None => 1.0,
            Some(f) if f.value.is_finite() && (0.0..=1.0).contains(&f.value) => f.value,
            Some(f) => {
                errors.push(FileError::at(
                    path,
                    &f.referenced,
                    format!(
                        "backend {slot}: mirror fraction must be from 0 to 1, not {}",
                        f.value
                    ),
                ));
                continue;
            }
        };
        let primary = default_urls
            .iter()
            .chain(components.iter().flat_map(|(_, u)| u.iter()))
            .any(|p| p.scheme == url.scheme && p.host_port() == url.host_port());
        if primary {
            errors.push(FileError::at(
                path,
                &m.url.referenced,
                format!(
                    "backend {slot}: mirror {} is also an endpoint of this backend: every mirrored write would arrive twice",
                    shown(&m.url.value)
                ),
            ));
            continue;
        }
        if mirrors.iter().any(|x: &Mirror| x.url == url) {
            errors.push(FileError::at(
                path,
                &m.url.referenced,
                format!(
                    "backend {slot}: mirror {:?} is listed twice",
                    shown(&m.url.value)
                ),
            ));
            continue;
        }
        mirrors.push(Mirror { url, fraction });
    }
    let mirror_max_inflight = match raw.mirror_max_inflight {
        None => DEFAULT_MIRROR_MAX_INFLIGHT,
        Some(n) if n.value == 0 || n.value > 100_000 => {
            errors.push(FileError::at(
                path,
                &n.referenced,
                format!("backend {slot}: mirror_max_inflight must be from 1 to 100000"),
            ));
            DEFAULT_MIRROR_MAX_INFLIGHT
        }
        Some(n) => n.value as usize,
    };

    (errors.len() == before).then_some(Topology {
        default_urls,
        components,
        balance,
        health_check,
        component_health,
        dns_refresh,
        mirrors,
        mirror_max_inflight,
    })
}

/// A `health_check` block over `base` (the defaults, or the backend's for a component's own).
fn health_from(
    path: &Path,
    slot: &str,
    base: HealthCheck,
    h: RawHealthCheck,
    errors: &mut Vec<FileError>,
) -> HealthCheck {
    let mut health_check = base;
    health_check.explicit = true;
    if let Some(e) = h.enabled {
        health_check.enabled = e;
    }
    if let Some(p) = h.path {
        let ok = p.value.starts_with('/')
            && p.value.parse::<http::uri::PathAndQuery>().is_ok()
            && !p.value.contains('#');
        if ok {
            health_check.path = p.value;
        } else {
            errors.push(FileError::at(
                path,
                &p.referenced,
                format!(
                    "backend {slot}: health_check.path {:?} must be a path starting with /",
                    p.value
                ),
            ));
        }
    }
    let positive = |d: Option<Spanned<PromDuration>>,
                    name: &str,
                    default: Duration,
                    errors: &mut Vec<FileError>| match d {
        Some(d) if d.value.0.is_zero() => {
            errors.push(FileError::at(
                path,
                &d.referenced,
                format!("backend {slot}: health_check.{name} must be greater than 0"),
            ));
            default
        }
        Some(d) => d.value.0,
        None => default,
    };
    health_check.interval = positive(h.interval, "interval", health_check.interval, errors);
    health_check.timeout = positive(h.timeout, "timeout", health_check.timeout, errors);
    for (v, name, target) in [
        (
            h.unhealthy_after,
            "unhealthy_after",
            &mut health_check.unhealthy_after,
        ),
        (
            h.healthy_after,
            "healthy_after",
            &mut health_check.healthy_after,
        ),
    ] {
        if let Some(v) = v {
            if v.value == 0 || v.value > 1000 {
                errors.push(FileError::at(
                    path,
                    &v.referenced,
                    format!("backend {slot}: health_check.{name} must be from 1 to 1000"),
                ));
            } else {
                *target = v.value;
            }
        }
    }
    health_check
}
