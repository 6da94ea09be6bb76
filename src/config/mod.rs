//! `gateway.yaml` → typed [`Config`] (SPEC 2). Values are validated while they are deserialized,
//! so every error carries the file, line and column of the offending node.

use crate::diag::{FileError, FileErrors};
use crate::duration::PromDuration;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod admin_store;
pub mod tracing;
pub mod upstream;
pub use admin_store::{AdminBackend, AdminStoreConfig};
pub use tracing::{OtlpProtocol, TracingConfig};
pub use upstream::{Balance, Component, HealthCheck, Mirror, Topology, UpstreamUrl};

pub const DEFAULT_CONFIG_PATH: &str = "config/gateway.yaml";
/// Upstream response-header timeout when a backend does not set `timeout`.
pub const DEFAULT_BACKEND_TIMEOUT: Duration = Duration::from_secs(120);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct Config {
    /// The config file itself, and the directory relative paths resolve against.
    pub path: PathBuf,
    pub dir: PathBuf,
    pub server: ServerConfig,
    pub cluster: String,
    pub store: StoreConfig,
    pub backends: Backends,
    pub lbac: LbacMode,
    /// `lbac.max_query_bytes` and `lbac.max_query_depth`: how much of a query rewrite mode parses.
    pub lbac_limits: crate::lbac::QueryLimits,
    pub client_ip: ClientIpConfig,
    pub cache: CacheConfig,
    pub auth_throttle: AuthThrottleConfig,
    pub limits: Limits,
    pub log: LogConfig,
    /// `forward_auth`: the listener that answers another proxy's authorization questions.
    pub forward_auth: Option<ForwardAuthConfig>,
    /// `tracing`: OpenTelemetry traces exported by OTLP (`None`: off, no cost).
    pub tracing: Option<TracingConfig>,
}

/// Most numbered `X-Prom-Label-Policy-<n>` copies `forward_auth.numbered_label_policies` may ask for.
pub const MAX_NUMBERED_LABEL_POLICIES: usize = 64;

#[derive(Debug, Clone)]
pub struct ForwardAuthConfig {
    pub listen: SocketAddr,
    /// Only this backend's route table (`None`: every configured backend, in the shared
    /// listener's order).
    pub backend: Option<BackendSlot>,
    /// Also answer the label-policy values as `X-Prom-Label-Policy-1` … `-n`, for proxies that
    /// copy one value per header name (nginx); more values than this are refused. 0: off.
    pub numbered_label_policies: usize,
    /// `forward_auth.form`: which form of question is read (`auto`: every form, which must agree).
    pub form: ForwardAuthForm,
    /// `forward_auth.proxy_protocol`: connections start with a PROXY protocol header.
    pub proxy_protocol: bool,
}

/// The form of question the forward-auth listener reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardAuthForm {
    /// Every form; the forms a question holds must name the same request.
    #[default]
    Auto,
    /// `X-Original-Method` + `X-Original-URI` on `/auth` only.
    Nginx,
    /// `X-Forwarded-Method` + `X-Forwarded-Uri` on `/auth` only.
    Traefik,
    /// `/auth/<original path>` with the original method only.
    Envoy,
}

impl ForwardAuthForm {
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardAuthForm::Auto => "auto",
            ForwardAuthForm::Nginx => "nginx",
            ForwardAuthForm::Traefik => "traefik",
            ForwardAuthForm::Envoy => "envoy",
        }
    }
}

impl ForwardAuthConfig {
    /// One line for `obsgate check`.
    pub fn describe(&self, lbac: LbacMode) -> String {
        let mut s = format!(
            "forward_auth: listen {}, form {}, routes of {}",
            self.listen,
            self.form.as_str(),
            self.backend.map_or(
                "the backend the question names (/auth/-/<backend>), else every configured backend",
                |b| b.as_str()
            )
        );
        if self.numbered_label_policies > 0 {
            s += &format!(
                ", X-Prom-Label-Policy-1..{} as well",
                self.numbered_label_policies
            );
        }
        if lbac == LbacMode::Rewrite {
            s += " (lbac.mode is rewrite: reads restricted by label policies are refused here)";
        }
        s
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    /// How long in-flight requests may run after SIGTERM before connections are cut.
    pub shutdown_grace: Duration,
    /// After SIGTERM, how long obsgate keeps serving (and accepting) with `/ready` answering
    /// 503, before it stops accepting: load balancers take it out of rotation first.
    pub shutdown_delay: Duration,
    /// `server.proxy_protocol`: connections to the shared listener start with a PROXY
    /// protocol header (v1 or v2), accepted from `client_ip.trusted_proxies` only.
    pub proxy_protocol: bool,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub policy_files: Vec<PathBuf>,
    pub data_dir: PathBuf,
    /// How often policy files are checked for changes.
    pub poll_interval: Duration,
    /// `store.admin`: where the admin API's change log lives (absent: the local data dir).
    pub admin: AdminStoreConfig,
    /// `store.controls_file`: per-tenant controls (blocks, rate and in-flight limits), watched
    /// like the policy files; see `crate::controls`.
    pub controls_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendSlot {
    Metrics,
    Logs,
    Traces,
    Profiles,
}

impl BackendSlot {
    pub const ALL: [BackendSlot; 4] = [
        BackendSlot::Metrics,
        BackendSlot::Logs,
        BackendSlot::Traces,
        BackendSlot::Profiles,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BackendSlot::Metrics => "metrics",
            BackendSlot::Logs => "logs",
            BackendSlot::Traces => "traces",
            BackendSlot::Profiles => "profiles",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Mimir,
    Prometheus,
    Loki,
    Tempo,
    Pyroscope,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Mimir => "mimir",
            BackendKind::Prometheus => "prometheus",
            BackendKind::Loki => "loki",
            BackendKind::Tempo => "tempo",
            BackendKind::Pyroscope => "pyroscope",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Backend {
    pub slot: BackendSlot,
    pub kind: BackendKind,
    /// Which endpoints serve which component, and how they are chosen and checked.
    pub topology: Topology,
    pub listen: Option<SocketAddr>,
    /// `backends.<slot>.proxy_protocol`: connections to `listen` start with a PROXY header.
    pub proxy_protocol: bool,
    pub ca_file: Option<PathBuf>,
    /// Time allowed for the upstream's response headers (504 past it), for reads.
    pub timeout: Duration,
    /// The same for writes (pushes) and for long exports (remote read, block upload, streaming).
    pub write_timeout: Duration,
    pub export_timeout: Duration,
    pub connect_timeout: Duration,
    /// Largest request body of a write to this backend (413 above).
    pub max_write_body_bytes: u64,
}

/// Limits on clients (all configurable under `limits:`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// An HTTP/1 request head must arrive within this (408 past it).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// Largest request head (431 above).
    pub max_header_bytes: u64,
    /// Largest request body of a read (a form-encoded query) (413 above).
    pub max_read_body_bytes: u64,
    /// Default for each backend's `max_write_body_bytes`.
    pub max_write_body_bytes: u64,
    /// A request body may pause at most this long (408 past it).
    pub body_read_timeout: Duration,
    /// Client connections open at once, over every listener (503 above).
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            max_header_bytes: 64 << 10,
            max_read_body_bytes: 1 << 20,
            max_write_body_bytes: 64 << 20,
            body_read_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Backends {
    pub metrics: Option<Backend>,
    pub logs: Option<Backend>,
    pub traces: Option<Backend>,
    pub profiles: Option<Backend>,
}

impl Backends {
    pub fn get(&self, slot: BackendSlot) -> Option<&Backend> {
        match slot {
            BackendSlot::Metrics => self.metrics.as_ref(),
            BackendSlot::Logs => self.logs.as_ref(),
            BackendSlot::Traces => self.traces.as_ref(),
            BackendSlot::Profiles => self.profiles.as_ref(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Backend> {
        BackendSlot::ALL.into_iter().filter_map(|s| self.get(s))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LbacMode {
    #[default]
    Header,
    Rewrite,
}

#[derive(Debug, Clone, Default)]
pub struct ClientIpConfig {
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub capacity: u64,
    pub ttl: Duration,
}

/// Failed-authentication throttling per client address (IPv6: per /64).
#[derive(Debug, Clone)]
pub struct AuthThrottleConfig {
    /// 401s a client may get in a row; 0 turns throttling off.
    pub burst: u32,
    /// How fast that allowance comes back.
    pub per_second: f64,
    /// Client addresses tracked at most (least recently used forgotten first).
    pub max_clients: u64,
}

impl Default for AuthThrottleConfig {
    fn default() -> Self {
        AuthThrottleConfig {
            burst: 20,
            per_second: 1.0,
            max_clients: 65_536,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A `tracing` filter directive such as `info` or `obsgate=debug,info`.
    pub level: String,
    /// `log.format`: `text` (one line per event, `key=value` fields) or `json` (one JSON
    /// object per line, the fields as keys).
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

// ---------- raw (as written) ----------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    // Sections are optional and may be left empty (`backends:` with nothing under it).
    #[serde(default)]
    server: Option<RawServer>,
    #[serde(default)]
    cluster: Option<Spanned<String>>,
    #[serde(default)]
    store: Option<RawStore>,
    #[serde(default)]
    backends: Option<RawBackends>,
    #[serde(default)]
    lbac: Option<RawLbac>,
    #[serde(default)]
    client_ip: Option<RawClientIp>,
    #[serde(default)]
    cache: Option<RawCache>,
    #[serde(default)]
    auth_throttle: Option<RawAuthThrottle>,
    #[serde(default)]
    limits: Option<RawLimits>,
    #[serde(default)]
    log: Option<RawLog>,
    #[serde(default)]
    forward_auth: Option<Spanned<RawForwardAuth>>,
    #[serde(default)]
    tracing: Option<Spanned<tracing::RawTracing>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForwardAuth {
    listen: Option<SocketAddr>,
    backend: Option<Spanned<String>>,
    numbered_label_policies: Option<Spanned<usize>>,
    #[serde(default)]
    form: ForwardAuthForm,
    proxy_protocol: Option<Spanned<bool>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<SocketAddr>,
    tls: Option<RawTls>,
    shutdown_grace: Option<PromDuration>,
    shutdown_delay: Option<PromDuration>,
    proxy_protocol: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: String,
    key_file: String,
    client_ca_file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(default)]
    policy_files: Option<Vec<String>>,
    data_dir: Option<String>,
    poll_interval: Option<PromDuration>,
    admin: Option<Spanned<admin_store::RawAdminStore>>,
    controls_file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBackends {
    metrics: Option<Spanned<RawBackend>>,
    logs: Option<Spanned<RawBackend>>,
    traces: Option<Spanned<RawBackend>>,
    profiles: Option<Spanned<RawBackend>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    kind: Spanned<BackendKind>,
    url: Option<Spanned<String>>,
    components: Option<Spanned<upstream::RawComponents>>,
    balance: Option<Spanned<String>>,
    health_check: Option<Spanned<upstream::RawHealthCheck>>,
    dns_refresh: Option<Spanned<PromDuration>>,
    mirror: Option<Vec<Spanned<upstream::RawMirror>>>,
    mirror_max_inflight: Option<Spanned<u64>>,
    listen: Option<SocketAddr>,
    proxy_protocol: Option<Spanned<bool>>,
    ca_file: Option<String>,
    timeout: Option<PromDuration>,
    write_timeout: Option<PromDuration>,
    export_timeout: Option<PromDuration>,
    connect_timeout: Option<PromDuration>,
    max_write_body_bytes: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLbac {
    #[serde(default)]
    mode: LbacMode,
    max_query_bytes: Option<u64>,
    max_query_depth: Option<u64>,
}

impl Default for RawLbac {
    fn default() -> Self {
        RawLbac {
            mode: LbacMode::Header,
            max_query_bytes: None,
            max_query_depth: None,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawClientIp {
    #[serde(default)]
    trusted_proxies: Option<Vec<Cidr>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCache {
    capacity: Option<u64>,
    ttl: Option<PromDuration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    header_read_timeout: Option<PromDuration>,
    idle_timeout: Option<PromDuration>,
    max_header_bytes: Option<u64>,
    max_read_body_bytes: Option<u64>,
    max_write_body_bytes: Option<u64>,
    body_read_timeout: Option<PromDuration>,
    max_connections: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuthThrottle {
    burst: Option<u32>,
    per_second: Option<f64>,
    max_clients: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
    #[serde(default)]
    format: LogFormat,
}

/// A CIDR (`10.0.0.0/8`) or a bare address (taken as /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub IpNet);

impl Cidr {
    pub fn parse(s: &str) -> Result<IpNet, String> {
        let s = s.trim();
        if let Ok(n) = s.parse::<IpNet>() {
            // `10.1.2.3/8` is almost certainly a mistake for `10.0.0.0/8`; keep the network.
            return Ok(n.trunc());
        }
        if let Ok(a) = s.parse::<std::net::IpAddr>() {
            return Ok(IpNet::from(a));
        }
        Err(format!(
            "invalid CIDR {s:?}: expected an address or address/prefix such as 10.0.0.0/8"
        ))
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Cidr::parse(&s).map(Cidr).map_err(serde::de::Error::custom)
    }
}

/// Reads and validates a config file. Every error is located `FILE:LINE:COL`.
pub fn load(path: &Path) -> Result<Config, FileErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| FileError::whole(path, format!("cannot read config: {e}")))?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<Config, FileErrors> {
    let raw: RawConfig = if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        serde_saphyr::from_str("{}")
    } else {
        serde_saphyr::from_str(text)
    }
    .map_err(|e| FileError::from_yaml(path, &e))?;
    let (raw_server, raw_store, raw_backends) = (
        raw.server.unwrap_or_default(),
        raw.store.unwrap_or_default(),
        raw.backends.unwrap_or_default(),
    );
    let (raw_lbac, raw_client_ip, raw_cache, raw_log) = (
        raw.lbac.unwrap_or_default(),
        raw.client_ip.unwrap_or_default(),
        raw.cache.unwrap_or_default(),
        raw.log.unwrap_or_default(),
    );
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };
    let resolve = |p: &str| -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        }
    };
    let mut errors = Vec::new();

    let cluster = match raw.cluster {
        Some(c) => {
            if !crate::policy::valid_name(&c.value, 1, 64) {
                errors.push(FileError::at(
                    path,
                    &c.referenced,
                    format!(
                        "invalid cluster name {:?}: use 1-64 chars of [a-z0-9_-]",
                        c.value
                    ),
                ));
            }
            c.value
        }
        None => "local".to_string(),
    };

    // a listener with proxy_protocol takes the header from trusted proxies only
    let no_trusted = raw_client_ip
        .trusted_proxies
        .as_ref()
        .is_none_or(|t| t.is_empty());
    let server_proxy_protocol = proxy_protocol(
        path,
        raw_server.proxy_protocol,
        "server",
        no_trusted,
        &mut errors,
    );
    let tls = raw_server.tls.map(|t| TlsConfig {
        cert_file: resolve(&t.cert_file),
        key_file: resolve(&t.key_file),
        client_ca_file: t.client_ca_file.as_deref().map(resolve),
    });
    let server = ServerConfig {
        listen: raw_server
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
        tls,
        shutdown_grace: raw_server
            .shutdown_grace
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(30)),
        shutdown_delay: raw_server
            .shutdown_delay
            .map(|d| d.0)
            .unwrap_or(Duration::ZERO),
        proxy_protocol: server_proxy_protocol,
    };

    let raw_limits = raw.limits.unwrap_or_default();
    let d = Limits::default();
    let limits = Limits {
        header_read_timeout: raw_limits
            .header_read_timeout
            .map(|x| x.0)
            .unwrap_or(d.header_read_timeout),
        idle_timeout: raw_limits
            .idle_timeout
            .map(|x| x.0)
            .unwrap_or(d.idle_timeout),
        max_header_bytes: raw_limits.max_header_bytes.unwrap_or(d.max_header_bytes),
        max_read_body_bytes: raw_limits
            .max_read_body_bytes
            .unwrap_or(d.max_read_body_bytes),
        max_write_body_bytes: raw_limits
            .max_write_body_bytes
            .unwrap_or(d.max_write_body_bytes),
        body_read_timeout: raw_limits
            .body_read_timeout
            .map(|x| x.0)
            .unwrap_or(d.body_read_timeout),
        max_connections: raw_limits.max_connections.unwrap_or(d.max_connections),
    };
    for (name, zero) in [
        ("header_read_timeout", limits.header_read_timeout.is_zero()),
        ("idle_timeout", limits.idle_timeout.is_zero()),
        ("body_read_timeout", limits.body_read_timeout.is_zero()),
        ("max_connections", limits.max_connections == 0),
        ("max_read_body_bytes", limits.max_read_body_bytes == 0),
        ("max_write_body_bytes", limits.max_write_body_bytes == 0),
    ] {
        if zero {
            errors.push(FileError::whole(
                path,
                format!("limits.{name} must be greater than 0"),
            ));
        }
    }
    if limits.max_read_body_bytes > crate::lbac::request::MAX_FORM_BODY as u64 {
        errors.push(FileError::whole(
            path,
            format!(
                "limits.max_read_body_bytes must be at most {} (16 MiB)",
                crate::lbac::request::MAX_FORM_BODY
            ),
        ));
    }
    use crate::lbac::{
        DEFAULT_MAX_QUERY_BYTES, DEFAULT_MAX_QUERY_DEPTH, HARD_MAX_QUERY_BYTES,
        HARD_MAX_QUERY_DEPTH, QueryLimits,
    };
    let max_query_bytes = raw_lbac
        .max_query_bytes
        .unwrap_or(DEFAULT_MAX_QUERY_BYTES as u64);
    let max_query_depth = raw_lbac
        .max_query_depth
        .unwrap_or(DEFAULT_MAX_QUERY_DEPTH as u64);
    if max_query_bytes == 0 || max_query_bytes > HARD_MAX_QUERY_BYTES as u64 {
        errors.push(FileError::whole(
            path,
            format!("lbac.max_query_bytes must be from 1 to {HARD_MAX_QUERY_BYTES}"),
        ));
    }
    if max_query_depth == 0 || max_query_depth > HARD_MAX_QUERY_DEPTH as u64 {
        errors.push(FileError::whole(
            path,
            format!(
                "lbac.max_query_depth must be from 1 to {HARD_MAX_QUERY_DEPTH} (deeper queries could overflow the stack)"
            ),
        ));
    }
    let lbac_limits = QueryLimits {
        max_bytes: usize::try_from(max_query_bytes.min(HARD_MAX_QUERY_BYTES as u64))
            .unwrap_or(HARD_MAX_QUERY_BYTES),
        max_depth: usize::try_from(max_query_depth.min(HARD_MAX_QUERY_DEPTH as u64))
            .unwrap_or(HARD_MAX_QUERY_DEPTH),
    };
    // hyper reads a head into a buffer of at least 8 KiB
    if limits.max_header_bytes < 8192 || limits.max_header_bytes > (16 << 20) {
        errors.push(FileError::whole(
            path,
            "limits.max_header_bytes must be from 8192 to 16777216",
        ));
    }
    let mut backends = Backends::default();
    let slots = [
        (
            BackendSlot::Metrics,
            raw_backends.metrics,
            &[BackendKind::Mimir, BackendKind::Prometheus][..],
        ),
        (
            BackendSlot::Logs,
            raw_backends.logs,
            &[BackendKind::Loki][..],
        ),
        (
            BackendSlot::Traces,
            raw_backends.traces,
            &[BackendKind::Tempo][..],
        ),
        (
            BackendSlot::Profiles,
            raw_backends.profiles,
            &[BackendKind::Pyroscope][..],
        ),
    ];
    let mut listens: Vec<SocketAddr> = vec![server.listen];
    for (slot, rb, kinds) in slots {
        let Some(rb) = rb else { continue };
        let loc = rb.referenced;
        let rb = rb.value;
        if !kinds.contains(&rb.kind.value) {
            let allowed: Vec<_> = kinds.iter().map(|k| k.as_str()).collect();
            errors.push(FileError::at(
                path,
                &rb.kind.referenced,
                format!(
                    "backend {} cannot be of kind {}: expected {}",
                    slot.as_str(),
                    rb.kind.value.as_str(),
                    allowed.join(" or ")
                ),
            ));
            continue;
        }
        let Some(topology) = upstream::build(
            path,
            slot.as_str(),
            rb.kind.value,
            &loc,
            upstream::RawTopology {
                url: rb.url,
                components: rb.components,
                balance: rb.balance,
                health_check: rb.health_check,
                dns_refresh: rb.dns_refresh,
                mirror: rb.mirror,
                mirror_max_inflight: rb.mirror_max_inflight,
            },
            &mut errors,
        ) else {
            continue;
        };
        if let Some(l) = rb.listen {
            if l.port() != 0 && listens.contains(&l) {
                errors.push(FileError::at(
                    path,
                    &loc,
                    format!(
                        "backend {}: listen address {l} is already used by another listener",
                        slot.as_str()
                    ),
                ));
            }
            listens.push(l);
        }
        let pp_key = format!("backends.{}", slot.as_str());
        if let Some(pp) = &rb.proxy_protocol
            && pp.value
            && rb.listen.is_none()
        {
            errors.push(FileError::at(
                path,
                &pp.referenced,
                format!(
                    "{pp_key}.proxy_protocol applies to the backend's own listener: set {pp_key}.listen too (server.proxy_protocol is the shared listener's)"
                ),
            ));
        }
        let b = Backend {
            slot,
            kind: rb.kind.value,
            topology,
            listen: rb.listen,
            proxy_protocol: rb.listen.is_some()
                && proxy_protocol(path, rb.proxy_protocol, &pp_key, no_trusted, &mut errors),
            ca_file: rb.ca_file.as_deref().map(resolve),
            timeout: rb.timeout.map(|d| d.0).unwrap_or(DEFAULT_BACKEND_TIMEOUT),
            write_timeout: rb
                .write_timeout
                .map(|d| d.0)
                .unwrap_or(DEFAULT_WRITE_TIMEOUT),
            export_timeout: rb
                .export_timeout
                .map(|d| d.0)
                .unwrap_or(DEFAULT_EXPORT_TIMEOUT),
            connect_timeout: rb
                .connect_timeout
                .map(|d| d.0)
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            max_write_body_bytes: rb
                .max_write_body_bytes
                .unwrap_or(limits.max_write_body_bytes),
        };
        match slot {
            BackendSlot::Metrics => backends.metrics = Some(b),
            BackendSlot::Logs => backends.logs = Some(b),
            BackendSlot::Traces => backends.traces = Some(b),
            BackendSlot::Profiles => backends.profiles = Some(b),
        }
    }

    let cache = CacheConfig {
        capacity: raw_cache.capacity.unwrap_or(100_000),
        ttl: raw_cache
            .ttl
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(60)),
    };
    let raw_throttle = raw.auth_throttle.unwrap_or_default();
    let defaults = AuthThrottleConfig::default();
    let auth_throttle = AuthThrottleConfig {
        burst: raw_throttle.burst.unwrap_or(defaults.burst),
        per_second: raw_throttle.per_second.unwrap_or(defaults.per_second),
        max_clients: raw_throttle.max_clients.unwrap_or(defaults.max_clients),
    };
    if !(auth_throttle.per_second.is_finite() && auth_throttle.per_second > 0.0) {
        errors.push(FileError::whole(
            path,
            format!(
                "auth_throttle.per_second must be a positive number, not {}",
                auth_throttle.per_second
            ),
        ));
    }
    if auth_throttle.max_clients == 0 {
        errors.push(FileError::whole(
            path,
            "auth_throttle.max_clients must be at least 1 (set burst: 0 to turn throttling off)",
        ));
    }
    let forward_auth = raw
        .forward_auth
        .and_then(|f| forward_auth(path, f, &backends, &mut listens, no_trusted, &mut errors));
    let admin = admin_store::build(path, raw_store.admin, &mut errors);
    let tracing = raw
        .tracing
        .and_then(|t| tracing::build(path, t, &mut errors));
    let level = raw_log.level.unwrap_or_else(|| "info".to_string());
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        errors.push(FileError::whole(
            path,
            format!("log.level {level:?} is not a valid log filter"),
        ));
    }

    if !errors.is_empty() {
        return Err(FileErrors(errors));
    }
    Ok(Config {
        path: path.to_path_buf(),
        dir: dir.clone(),
        server,
        cluster,
        store: StoreConfig {
            policy_files: raw_store
                .policy_files
                .unwrap_or_default()
                .iter()
                .map(|p| resolve(p))
                .collect(),
            data_dir: resolve(raw_store.data_dir.as_deref().unwrap_or("data")),
            poll_interval: raw_store
                .poll_interval
                .map(|d| d.0)
                .unwrap_or(Duration::from_millis(250)),
            admin,
            controls_file: raw_store.controls_file.as_deref().map(resolve),
        },
        backends,
        lbac: raw_lbac.mode,
        lbac_limits,
        client_ip: ClientIpConfig {
            trusted_proxies: raw_client_ip
                .trusted_proxies
                .unwrap_or_default()
                .into_iter()
                .map(|c| c.0)
                .collect(),
        },
        cache,
        auth_throttle,
        limits,
        log: LogConfig {
            level,
            format: raw_log.format,
        },
        forward_auth,
        tracing,
    })
}

/// `forward_auth`: its listener must be free, its backend configured.
fn forward_auth(
    path: &Path,
    raw: Spanned<RawForwardAuth>,
    backends: &Backends,
    listens: &mut Vec<SocketAddr>,
    no_trusted: bool,
    errors: &mut Vec<FileError>,
) -> Option<ForwardAuthConfig> {
    let loc = raw.referenced;
    let raw = raw.value;
    let before = errors.len();
    let Some(listen) = raw.listen else {
        errors.push(FileError::at(
            path,
            &loc,
            "forward_auth.listen is required (the address the forward-auth endpoint listens on)",
        ));
        return None;
    };
    if listen.port() != 0 && listens.contains(&listen) {
        errors.push(FileError::at(
            path,
            &loc,
            format!("forward_auth: listen address {listen} is already used by another listener"),
        ));
    }
    listens.push(listen);
    let backend = raw.backend.and_then(|b| {
        let slot = BackendSlot::ALL.into_iter().find(|s| s.as_str() == b.value);
        match slot {
            None => {
                errors.push(FileError::at(
                    path,
                    &b.referenced,
                    format!(
                        "forward_auth.backend {:?} is not a backend: use metrics, logs, traces or profiles",
                        b.value
                    ),
                ));
                None
            }
            Some(s) if backends.get(s).is_none() => {
                errors.push(FileError::at(
                    path,
                    &b.referenced,
                    format!(
                        "forward_auth.backend {} is not configured under backends",
                        b.value
                    ),
                ));
                None
            }
            s => s,
        }
    });
    let numbered = raw.numbered_label_policies.map_or(0, |n| {
        if n.value > MAX_NUMBERED_LABEL_POLICIES {
            errors.push(FileError::at(
                path,
                &n.referenced,
                format!(
                    "forward_auth.numbered_label_policies must be at most {MAX_NUMBERED_LABEL_POLICIES}, not {}",
                    n.value
                ),
            ));
        }
        n.value
    });
    if raw.form == ForwardAuthForm::Nginx && numbered == 0 {
        errors.push(FileError::at(
            path,
            &loc,
            "forward_auth.form nginx needs numbered_label_policies (e.g. 4): nginx copies one value per header name, so a token with label policies would reach the backend without them",
        ));
    }
    let proxy_protocol =
        proxy_protocol(path, raw.proxy_protocol, "forward_auth", no_trusted, errors);
    (errors.len() == before).then_some(ForwardAuthConfig {
        listen,
        backend,
        numbered_label_policies: numbered,
        form: raw.form,
        proxy_protocol,
    })
}

/// A listener's `proxy_protocol` (`key` is its section): `true` needs
/// `client_ip.trusted_proxies`, the only peers whose PROXY header is read.
fn proxy_protocol(
    path: &Path,
    raw: Option<Spanned<bool>>,
    key: &str,
    no_trusted: bool,
    errors: &mut Vec<FileError>,
) -> bool {
    let Some(pp) = raw else { return false };
    if pp.value && no_trusted {
        errors.push(FileError::at(
            path,
            &pp.referenced,
            format!(
                "{key}.proxy_protocol needs client_ip.trusted_proxies: PROXY headers are accepted from those addresses only, so every connection would be closed (list the load balancer's addresses)"
            ),
        ));
    }
    pp.value
}

impl Config {
    /// The listeners that expect a PROXY protocol header: (name, configured address).
    pub fn proxy_protocol_listeners(&self) -> Vec<(String, SocketAddr)> {
        let mut v = Vec::new();
        if self.server.proxy_protocol {
            v.push(("server".to_string(), self.server.listen));
        }
        for b in self.backends.iter() {
            if let (true, Some(l)) = (b.proxy_protocol, b.listen) {
                v.push((format!("backends.{}", b.slot.as_str()), l));
            }
        }
        if let Some(fa) = self.forward_auth.as_ref().filter(|f| f.proxy_protocol) {
            v.push(("forward_auth".to_string(), fa.listen));
        }
        v
    }

    /// One line for `obsgate check`, when a listener expects PROXY headers.
    pub fn describe_proxy_protocol(&self) -> Option<String> {
        let l = self.proxy_protocol_listeners();
        if l.is_empty() {
            return None;
        }
        let names: Vec<String> = l.iter().map(|(n, a)| format!("{n} ({a})")).collect();
        Some(format!(
            "proxy_protocol: PROXY protocol v1/v2 header expected on {}; read from client_ip.trusted_proxies only, other peers are closed",
            names.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Config, FileErrors> {
        parse(Path::new("/etc/obsgate/gateway.yaml"), text)
    }

    #[test]
    fn full_example_parses_and_resolves_paths() {
        let c = p(r#"
server:
  listen: "127.0.0.1:9999"
  tls:
    cert_file: certs/gw.pem
    key_file: /abs/key.pem
cluster: local
store:
  policy_files: [policies.yaml]
  data_dir: data
backends:
  metrics:
    kind: mimir
    url: "http://127.0.0.1:9009"
    listen: "127.0.0.1:8081"
  logs: { kind: loki, url: "http://127.0.0.1:3100/base/" }
lbac:
  mode: rewrite
client_ip:
  trusted_proxies: ["10.0.0.0/8", "192.168.1.1"]
cache:
  capacity: 10
  ttl: 5m
"#)
        .unwrap();
        assert_eq!(c.server.listen.port(), 9999);
        let tls = c.server.tls.unwrap();
        assert_eq!(tls.cert_file, PathBuf::from("/etc/obsgate/certs/gw.pem"));
        assert_eq!(tls.key_file, PathBuf::from("/abs/key.pem"));
        assert_eq!(
            c.store.policy_files,
            vec![PathBuf::from("/etc/obsgate/policies.yaml")]
        );
        assert_eq!(c.store.data_dir, PathBuf::from("/etc/obsgate/data"));
        let m = c.backends.metrics.unwrap();
        assert_eq!(m.kind, BackendKind::Mimir);
        assert_eq!(m.listen.unwrap().port(), 8081);
        assert_eq!(
            c.backends.logs.unwrap().topology.default_urls[0].base_path,
            "/base"
        );
        assert_eq!(c.lbac, LbacMode::Rewrite);
        assert_eq!(c.client_ip.trusted_proxies.len(), 2);
        assert_eq!(c.cache.ttl, Duration::from_secs(300));
    }

    #[test]
    fn unknown_key_is_located_error() {
        let e = p("server:\n  listen: \"127.0.0.1:1\"\n  lisen: x\n").unwrap_err();
        assert_eq!(e.0[0].line, 3);
        assert!(e.0[0].message.contains("unknown field `lisen`"), "{}", e);
        assert!(e.to_string().starts_with("/etc/obsgate/gateway.yaml:3:"));
    }

    #[test]
    fn bad_values_are_located_errors() {
        let e = p("cache:\n  ttl: 5 minutes\n").unwrap_err();
        assert_eq!(
            (e.0[0].line, e.0[0].message.contains("invalid duration")),
            (2, true),
            "{e}"
        );
        let e = p("client_ip:\n  trusted_proxies: [\"10.0.0.0/99\"]\n").unwrap_err();
        assert!(e.0[0].message.contains("invalid CIDR"), "{e}");
        let e = p("backends:\n  logs: { kind: mimir, url: \"http://x\" }\n").unwrap_err();
        assert!(e.0[0].message.contains("cannot be of kind mimir"), "{e}");
        assert_eq!(e.0[0].line, 2);
        let e = p("backends:\n  metrics:\n    kind: mimir\n    url: \"ftp://x\"\n").unwrap_err();
        assert_eq!(e.0[0].line, 4, "{e}");
        let e = p("lbac:\n  mode: sometimes\n").unwrap_err();
        assert_eq!(e.0[0].line, 2, "{e}");
        let e = p("server:\n  listen: nowhere\n").unwrap_err();
        assert_eq!(e.0[0].line, 2, "{e}");
    }

    #[test]
    fn query_limits_default_and_bounds() {
        let c = p("lbac:\n  mode: rewrite\n").unwrap();
        assert_eq!(c.lbac_limits, crate::lbac::QueryLimits::default());
        assert_eq!(c.lbac_limits.max_bytes, 131072);
        assert_eq!(c.lbac_limits.max_depth, 512);
        let c = p("lbac:\n  max_query_bytes: 4096\n  max_query_depth: 64\n").unwrap();
        assert_eq!(c.lbac, LbacMode::Header);
        assert_eq!(
            (c.lbac_limits.max_bytes, c.lbac_limits.max_depth),
            (4096, 64)
        );
        for bad in [
            "lbac:\n  max_query_depth: 0\n",
            "lbac:\n  max_query_depth: 1025\n",
            "lbac:\n  max_query_bytes: 0\n",
            "lbac:\n  max_query_bytes: 16777217\n",
        ] {
            let e = p(bad).unwrap_err();
            assert!(e.to_string().contains("lbac.max_query_"), "{bad}: {e}");
        }
        let e = p("lbac:\n  max_query_depth: -1\n").unwrap_err();
        assert_eq!(e.0[0].line, 2, "{e}");
    }

    #[test]
    fn empty_sections_and_empty_file_mean_defaults() {
        let c = p("server:\nbackends:\nstore:\n  policy_files:\nclient_ip:\n").unwrap();
        assert!(c.backends.metrics.is_none() && c.store.policy_files.is_empty());
        assert_eq!(p("# nothing\n").unwrap().cluster, "local");
    }

    #[test]
    fn defaults_apply() {
        let c = p("{}").unwrap();
        assert_eq!(c.cluster, "local");
        assert_eq!(c.cache.capacity, 100_000);
        assert_eq!(c.lbac, LbacMode::Header);
        assert!(c.backends.metrics.is_none());
        assert_eq!(
            (
                c.auth_throttle.burst,
                c.auth_throttle.per_second,
                c.auth_throttle.max_clients
            ),
            (20, 1.0, 65_536)
        );
    }

    #[test]
    fn auth_throttle_values_are_checked() {
        let c = p("auth_throttle:\n  burst: 5\n  per_second: 0.5\n  max_clients: 10\n").unwrap();
        assert_eq!(
            (
                c.auth_throttle.burst,
                c.auth_throttle.per_second,
                c.auth_throttle.max_clients
            ),
            (5, 0.5, 10)
        );
        let e = p("auth_throttle:\n  per_second: 0\n").unwrap_err();
        assert!(
            e.to_string().contains("per_second must be a positive"),
            "{e}"
        );
        let e = p("auth_throttle:\n  max_clients: 0\n").unwrap_err();
        assert!(
            e.to_string().contains("max_clients must be at least 1"),
            "{e}"
        );
        let e = p("auth_throttle:\n  burst: -1\n").unwrap_err();
        assert_eq!(e.0[0].line, 2, "{e}");
        let e = p("auth_throttle:\n  rate: 1\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `rate`"), "{e}");
    }

    #[test]
    fn forward_auth_section() {
        assert!(p("").unwrap().forward_auth.is_none());
        let c = p(
            "backends:\n  logs: { kind: loki, url: \"http://l:3100\" }\nforward_auth:\n  listen: \"127.0.0.1:8090\"\n  backend: logs\n  numbered_label_policies: 4\n",
        )
        .unwrap();
        let fa = c.forward_auth.as_ref().unwrap();
        assert_eq!(fa.listen.port(), 8090);
        assert_eq!(fa.backend, Some(BackendSlot::Logs));
        assert_eq!(fa.numbered_label_policies, 4);
        assert!(fa.describe(c.lbac).contains("routes of logs"));
        let c = p("forward_auth:\n  listen: \"127.0.0.1:8090\"\n").unwrap();
        let fa = c.forward_auth.unwrap();
        assert_eq!((fa.backend, fa.numbered_label_policies), (None, 0));
        assert_eq!(fa.form, ForwardAuthForm::Auto);
        let c = p("forward_auth:\n  listen: \"127.0.0.1:8090\"\n  form: nginx\n  numbered_label_policies: 2\n").unwrap();
        assert_eq!(c.forward_auth.unwrap().form, ForwardAuthForm::Nginx);
        let e = p("forward_auth:\n  listen: \"127.0.0.1:8090\"\n  form: nginx\n").unwrap_err();
        assert!(
            e.to_string().contains("needs numbered_label_policies"),
            "{e}"
        );
        let e = p("forward_auth:\n  listen: \"127.0.0.1:8090\"\n  form: haproxy\n").unwrap_err();
        assert_eq!(e.0[0].line, 3, "{e}");

        // errors, each located
        let e = p("forward_auth: {}\n").unwrap_err();
        assert!(
            e.to_string().contains("forward_auth.listen is required"),
            "{e}"
        );
        assert_eq!(e.0[0].line, 1, "{e}");
        let e = p(
            "server:\n  listen: \"127.0.0.1:8080\"\nforward_auth:\n  listen: \"127.0.0.1:8080\"\n",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("already used by another listener"),
            "{e}"
        );
        let e = p("forward_auth:\n  listen: \"127.0.0.1:8090\"\n  backend: traces\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("forward_auth.backend traces is not configured"),
            "{e}"
        );
        assert_eq!(e.0[0].line, 3, "{e}");
        let e = p("forward_auth:\n  listen: \"127.0.0.1:8090\"\n  backend: mimir\n").unwrap_err();
        assert!(e.to_string().contains("is not a backend"), "{e}");
        let e = p("forward_auth:\n  listen: \"127.0.0.1:8090\"\n  numbered_label_policies: 65\n")
            .unwrap_err();
        assert!(e.to_string().contains("at most 64"), "{e}");
        let e = p("forward_auth:\n  listen: \"127.0.0.1:8090\"\n  lisen: x\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `lisen`"), "{e}");
        let e = p("forward_auth:\n  listen: nowhere\n").unwrap_err();
        assert_eq!(e.0[0].line, 2, "{e}");
    }

    #[test]
    fn topology_parses_components_balance_health_and_mirrors() {
        // an unknown backend slot is an error
        assert!(p("backends:\n  metrics_shadow_is_not_a_key: null\n").is_err());
        let c = p(r#"
backends:
  metrics:
    kind: mimir
    url: "http://mimir:8080"
    components:
      distributor: { urls: ["http://distributor-0:8080", "https://distributor-1/base/"] }
      query_frontend: { url: "dns+http://query-frontend-headless.mimir.svc:8080" }
    balance: round_robin
    health_check: { path: /ready, interval: 5s, timeout: 1s, unhealthy_after: 3, healthy_after: 2 }
    dns_refresh: 30s
    mirror:
      - { url: "http://mimir-next:8080", fraction: 0.25 }
    mirror_max_inflight: 7
"#)
        .unwrap();
        let t = &c.backends.metrics.unwrap().topology;
        let d = t.urls_of(Component::Distributor);
        assert_eq!(d.len(), 2);
        assert_eq!(d[1].scheme, http::uri::Scheme::HTTPS);
        assert_eq!(d[1].base_path, "/base");
        assert_eq!(d[1].host_port(), ("distributor-1".to_string(), 443));
        let q = &t.urls_of(Component::QueryFrontend)[0];
        assert!(q.dns);
        assert_eq!(
            q.host_port(),
            ("query-frontend-headless.mimir.svc".to_string(), 8080)
        );
        // not listed: the backend's url
        assert_eq!(
            t.urls_of(Component::Ruler)[0].authority.as_str(),
            "mimir:8080"
        );
        assert_eq!(t.balance, Balance::RoundRobin);
        assert_eq!(
            (
                t.health_check.interval,
                t.health_check.timeout,
                t.health_check.unhealthy_after,
                t.health_check.healthy_after,
                t.health_check.explicit
            ),
            (Duration::from_secs(5), Duration::from_secs(1), 3, 2, true)
        );
        assert_eq!(t.dns_refresh, Duration::from_secs(30));
        assert_eq!(t.mirrors[0].fraction, 0.25);
        assert_eq!(t.mirror_max_inflight, 7);
    }

    #[test]
    fn topology_defaults_and_url_only_backends() {
        let c = p("backends:\n  metrics: { kind: prometheus, url: \"http://127.0.0.1:9090\" }\n")
            .unwrap();
        let t = &c.backends.metrics.unwrap().topology;
        assert!(t.components.is_empty());
        assert_eq!(t.balance, Balance::LeastInflight);
        assert_eq!(
            t.health_check.path, "/-/ready",
            "Prometheus's readiness path"
        );
        assert!(!t.health_check.explicit);
        assert_eq!(t.dns_refresh, Duration::from_secs(10));
        assert_eq!(t.mirror_max_inflight, 100);
        let c = p("backends:\n  logs: { kind: loki, url: \"http://l:3100\" }\n").unwrap();
        assert_eq!(
            c.backends.logs.unwrap().topology.health_check.path,
            "/ready"
        );
        // url may be left out when every component of the kind is listed
        let c = p(r#"
backends:
  traces:
    kind: tempo
    components:
      distributor: { url: "http://d:4318" }
      query_frontend: { url: "http://q:3200" }
"#)
        .unwrap();
        assert!(c.backends.traces.unwrap().topology.default_urls.is_empty());
    }

    #[test]
    fn topology_errors_point_at_their_line() {
        let cases: &[(&str, u32, &str)] = &[
            (
                "backends:\n  metrics:\n    kind: mimir\n    url: \"http://m\"\n    components:\n      ingester: { url: \"http://i\" }\n",
                6,
                "unknown component \"ingester\"",
            ),
            (
                "backends:\n  traces:\n    kind: tempo\n    url: \"http://t\"\n    components:\n      querier: { url: \"http://q\" }\n",
                6,
                "unknown component \"querier\"",
            ),
            (
                "backends:\n  metrics:\n    kind: mimir\n    url: \"http://m\"\n    components:\n      distributor: { url: \"http://a\", urls: [\"http://b\"] }\n",
                6,
                "not both",
            ),
            (
                "backends:\n  metrics:\n    kind: mimir\n    url: \"http://m\"\n    components:\n      distributor: { urls: [] }\n",
                6,
                "at least one URL",
            ),
            (
                "backends:\n  metrics:\n    kind: mimir\n    url: \"http://m\"\n    components:\n      distributor:\n        urls:\n          - \"http://a\"\n          - \"dns+ftp://b\"\n",
                9,
                "scheme must be",
            ),
            (
                "backends:\n  metrics:\n    kind: mimir\n    url: \"http://m\"\n    balance: random\n",
                5,
                "unknown balance \"random\"",
            ),
            (
                "backends:\n  metrics:\n    kind: mimir\n    url: \"http://m\"\n    mirror:\n      - { url: \"http://x\", fraction: 1.5 }\n",
                6,
                "fraction must be from 0 to 1",
            ),
            (
                "backends:\n  metrics:\n    kind: mimir\n    url: \"http://m\"\n    mirror:\n      - { url: \"dns+http://x\" }\n",
                6,
                "dns+ URLs are not allowed",
            ),
            (
                "backends:\n  metrics:\n    kind: mimir\n    url: \"http://m\"\n    health_check:\n      interval: 0s\n",
                6,
                "interval must be greater than 0",
            ),
            (
                "backends:\n  metrics:\n    kind: mimir\n    url: \"http://m\"\n    health_check: { unhealthy_after: 0 }\n",
                5,
                "unhealthy_after must be from 1",
            ),
            (
                "backends:\n  metrics:\n    kind: mimir\n    url: \"http://m\"\n    health_check: { path: ready }\n",
                5,
                "must be a path",
            ),
            (
                "backends:\n  metrics:\n    kind: mimir\n    url: \"http://m\"\n    dns_refresh: 10ms\n",
                5,
                "dns_refresh must be at least 100ms",
            ),
            (
                "backends:\n  metrics:\n    kind: mimir\n    components:\n      distributor: { url: \"http://d\" }\n",
                3,
                "needs url",
            ),
            (
                "backends:\n  metrics:\n    kind: mimir\n    url: \"http://user:pw@m\"\n",
                4,
                "\"http://***@m\" must not contain credentials",
            ),
            (
                "backends:\n  metrics:\n    kind: mimir\n    url: \"http://m:8080\"\n    components:\n      distributor: { url: \"dns+http://d:80\" }\n    mirror:\n      - { url: \"http://d\" }\n",
                8,
                "is also an endpoint of this backend",
            ),
            (
                "backends:\n  metrics:\n    kind: mimir\n    url: \"http://m\"\n    components:\n      distributor: { url: \"http://d\", weight: 2 }\n",
                6,
                "unknown field `weight`",
            ),
        ];
        for (text, line, needle) in cases {
            let e = p(text).unwrap_err();
            assert!(
                e.0.iter()
                    .any(|x| x.line == *line && x.message.contains(needle)),
                "want line {line} {needle:?} in:\n{e}\nfor:\n{text}"
            );
            assert!(
                e.to_string().starts_with("/etc/obsgate/gateway.yaml:"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_component_may_have_its_own_health_check_over_the_backends() {
        let c = p(r#"
backends:
  traces:
    kind: tempo
    url: "http://tempo:3200"
    health_check: { interval: 3s, unhealthy_after: 4 }
    components:
      distributor:
        urls: ["http://d-0:4318", "http://d-1:4318"]
        health_check: { enabled: false }
      query_frontend:
        url: "http://qf:3200"
        health_check: { path: /api/echo }
"#)
        .unwrap();
        let t = c.backends.traces.unwrap().topology;
        let d = t.health_of(Component::Distributor);
        assert!(!d.enabled);
        let q = t.health_of(Component::QueryFrontend);
        assert_eq!(
            (q.path.as_str(), q.interval, q.unhealthy_after, q.enabled),
            ("/api/echo", Duration::from_secs(3), 4, true),
            "the component's keys over the backend's"
        );
        let e = p("backends:\n  traces:\n    kind: tempo\n    url: \"http://t\"\n    components:\n      distributor:\n        url: \"http://d\"\n        health_check: { timeout: 0s }\n").unwrap_err();
        assert_eq!(e.0[0].line, 8, "{e}");
    }

    #[test]
    fn proxy_protocol_per_listener() {
        let c = p("").unwrap();
        assert!(!c.server.proxy_protocol && c.proxy_protocol_listeners().is_empty());
        assert!(c.describe_proxy_protocol().is_none());
        let c = p(r#"
server: { listen: "127.0.0.1:8080", proxy_protocol: true }
client_ip: { trusted_proxies: ["10.0.0.0/8"] }
backends:
  metrics: { kind: mimir, url: "http://m", listen: "127.0.0.1:8081", proxy_protocol: true }
  logs: { kind: loki, url: "http://l", listen: "127.0.0.1:8082", proxy_protocol: false }
  traces: { kind: tempo, url: "http://t", listen: "127.0.0.1:8083" }
forward_auth: { listen: "127.0.0.1:8090", proxy_protocol: true }
"#)
        .unwrap();
        assert!(c.server.proxy_protocol);
        assert!(c.backends.metrics.as_ref().unwrap().proxy_protocol);
        assert!(!c.backends.logs.as_ref().unwrap().proxy_protocol);
        assert!(!c.backends.traces.as_ref().unwrap().proxy_protocol);
        assert!(c.forward_auth.as_ref().unwrap().proxy_protocol);
        let names: Vec<String> = c
            .proxy_protocol_listeners()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["server", "backends.metrics", "forward_auth"]);
        let d = c.describe_proxy_protocol().unwrap();
        assert!(d.contains("server (127.0.0.1:8080), backends.metrics (127.0.0.1:8081), forward_auth (127.0.0.1:8090)"), "{d}");

        // without trusted proxies every connection would be closed: each one located
        let e = p("server:\n  proxy_protocol: true\n").unwrap_err();
        assert_eq!((e.0[0].line, e.0.len()), (2, 1), "{e}");
        assert!(
            e.to_string()
                .contains("server.proxy_protocol needs client_ip.trusted_proxies"),
            "{e}"
        );
        let e = p("client_ip:\n  trusted_proxies: []\nforward_auth:\n  listen: \"127.0.0.1:8090\"\n  proxy_protocol: true\n").unwrap_err();
        assert_eq!(e.0[0].line, 5, "{e}");
        assert!(
            e.to_string().contains("forward_auth.proxy_protocol needs"),
            "{e}"
        );
        let e = p("backends:\n  metrics:\n    kind: mimir\n    url: \"http://m\"\n    listen: \"127.0.0.1:8081\"\n    proxy_protocol: true\n").unwrap_err();
        assert_eq!(e.0[0].line, 6, "{e}");
        assert!(
            e.to_string()
                .contains("backends.metrics.proxy_protocol needs"),
            "{e}"
        );
        // false needs nothing
        assert!(
            !p("server:\n  proxy_protocol: false\n")
                .unwrap()
                .server
                .proxy_protocol
        );
        // on a backend without its own listener: located
        let e = p("client_ip:\n  trusted_proxies: [10.0.0.1]\nbackends:\n  logs:\n    kind: loki\n    url: \"http://l\"\n    proxy_protocol: true\n").unwrap_err();
        assert_eq!((e.0[0].line, e.0.len()), (7, 1), "{e}");
        assert!(
            e.to_string().contains("set backends.logs.listen too"),
            "{e}"
        );
        // not a boolean, or a typo: located
        let e = p("server:\n  proxy_protocol: v2\n").unwrap_err();
        assert_eq!(e.0[0].line, 2, "{e}");
        let e = p("server:\n  proxy_protocols: true\n").unwrap_err();
        assert!(
            e.to_string().contains("unknown field `proxy_protocols`"),
            "{e}"
        );
    }

    #[test]
    fn the_example_configs_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut files = vec![dir.join("gateway.yaml")];
        for e in std::fs::read_dir(dir.join("examples")).unwrap() {
            files.push(e.unwrap().path());
        }
        assert!(files.len() >= 4, "{files:?}");
        for f in files {
            let c = load(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            assert!(c.backends.iter().count() >= 1, "{}", f.display());
        }
    }
}
