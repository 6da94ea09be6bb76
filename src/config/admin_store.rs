//! `store.admin`: where the admin API's change log lives (the local data directory, or an S3,
//! GCS or Azure bucket shared by every replica) and how often replicas look for changes.
//!
//! Credentials are never read from the file: the object-store backends take them from the
//! environment and the instance / workload identity chains.

use crate::diag::FileError;
use crate::duration::PromDuration;
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::path::Path;
use std::time::Duration;

pub const DEFAULT_ADMIN_POLL_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_ADMIN_MAX_STALENESS: Duration = Duration::from_secs(300);
pub const MIN_ADMIN_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// A change must reach every replica within 2 s, so no replica may poll less often.
pub const MAX_ADMIN_POLL_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdminBackend {
    /// `<data_dir>/admin-log` on this machine (one replica).
    #[default]
    Local,
    S3,
    Gcs,
    Azure,
}

impl AdminBackend {
    pub const ALL: [AdminBackend; 4] = [
        AdminBackend::Local,
        AdminBackend::S3,
        AdminBackend::Gcs,
        AdminBackend::Azure,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AdminBackend::Local => "local",
            AdminBackend::S3 => "s3",
            AdminBackend::Gcs => "gcs",
            AdminBackend::Azure => "azure",
        }
    }

    fn parse(s: &str) -> Option<AdminBackend> {
        AdminBackend::ALL.into_iter().find(|b| b.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminStoreConfig {
    pub backend: AdminBackend,
    /// The bucket (S3, GCS) or container (Azure); `None` only for `local`.
    pub bucket: Option<String>,
    /// Key prefix inside the bucket: empty, or safe segments ending with `/`.
    pub prefix: String,
    /// A custom endpoint (MinIO, an emulator, a private endpoint); never with credentials.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub allow_http: bool,
    /// How often a replica looks for changes (100ms to 2s).
    pub poll_interval: Duration,
    /// How long a replica may go without reaching the store before it reports itself stale
    /// (at least twice `poll_interval`).
    pub max_staleness: Duration,
}

impl Default for AdminStoreConfig {
    fn default() -> Self {
        AdminStoreConfig {
            backend: AdminBackend::Local,
            bucket: None,
            prefix: String::new(),
            endpoint: None,
            region: None,
            allow_http: false,
            poll_interval: DEFAULT_ADMIN_POLL_INTERVAL,
            max_staleness: DEFAULT_ADMIN_MAX_STALENESS,
        }
    }
}

impl AdminStoreConfig {
    /// One line for `obsgate check`.
    pub fn describe(&self) -> String {
        let mut s = format!("admin store: {}", self.backend.as_str());
        match &self.bucket {
            Some(b) => s.push_str(&format!(" bucket {b}")),
            None => s.push_str(" (data_dir/admin-log)"),
        }
        if !self.prefix.is_empty() {
            s.push_str(&format!(" prefix {}", self.prefix));
        }
        if let Some(r) = &self.region {
            s.push_str(&format!(" region {r}"));
        }
        if let Some(e) = &self.endpoint {
            s.push_str(&format!(" endpoint {e}"));
        }
        s.push_str(&format!(
            " (poll {}, max staleness {})",
            humantime::format_duration(self.poll_interval),
            humantime::format_duration(self.max_staleness)
        ));
        s
    }
}

// ---------- raw (as written) ----------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdminStore {
    backend: Option<Spanned<String>>,
    bucket: Option<Spanned<String>>,
    prefix: Option<Spanned<String>>,
    endpoint: Option<Spanned<String>>,
    region: Option<Spanned<String>>,
    allow_http: Option<Spanned<bool>>,
    poll_interval: Option<Spanned<PromDuration>>,
    max_staleness: Option<Spanned<PromDuration>>,
}

/// `prod/` from `prod`, `prod/` or `a/b`; an error for anything that is not safe segments.
fn normalise_prefix(p: &str) -> Result<String, String> {
    if p.is_empty() {
        return Ok(String::new());
    }
    let bad = |why: &str| format!("store.admin.prefix {p:?}: {why}");
    if p.starts_with('/') {
        return Err(bad("must not start with /"));
    }
    let body = p.strip_suffix('/').unwrap_or(p);
    for seg in body.split('/') {
        if seg.is_empty() {
            return Err(bad("empty path segment (//)"));
        }
        if seg == "." || seg == ".." {
            return Err(bad("segments . and .. are not allowed"));
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(bad(
                "use segments of [A-Za-z0-9._-] separated by /, such as prod/obsgate/",
            ));
        }
    }
    Ok(format!("{body}/"))
}

fn valid_bucket(b: &str) -> bool {
    (3..=222).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        && b.as_bytes()[0].is_ascii_alphanumeric()
        && b.as_bytes()[b.len() - 1].is_ascii_alphanumeric()
}

/// Checks an endpoint URL; errors never show a `user:password@` part.
fn check_endpoint(e: &str, allow_http: bool) -> Result<(), String> {
    let shown = super::upstream::shown(e);
    let uri: http::Uri = e
        .parse()
        .map_err(|_| format!("store.admin.endpoint {shown:?} is not a valid URL"))?;
    let Some(auth) = uri.authority() else {
        return Err(format!(
            "store.admin.endpoint {shown:?} needs http:// or https:// and a host"
        ));
    };
    if auth.as_str().contains('@') {
        return Err(format!(
            "store.admin.endpoint {shown:?} must not contain credentials (they come from the environment)"
        ));
    }
    if auth.host().is_empty() {
        return Err(format!("store.admin.endpoint {shown:?} has no host"));
    }
    if uri.query().is_some() {
        return Err(format!(
            "store.admin.endpoint {shown:?} must not have a query string"
        ));
    }
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if allow_http => Ok(()),
        Some("http") => Err(format!(
            "store.admin.endpoint {shown:?} is plain http: set allow_http: true to allow it"
        )),
        None => Err(format!(
            "store.admin.endpoint {shown:?} needs http:// or https:// and a host"
        )),
        Some(_) => Err(format!(
            "store.admin.endpoint {shown:?}: scheme must be http or https"
        )),
    }
}

/// Validates `store.admin`; every error carries its file:line:col.
pub(super) fn build(
    path: &Path,
    raw: Option<Spanned<RawAdminStore>>,
    errors: &mut Vec<FileError>,
) -> AdminStoreConfig {
    let mut cfg = AdminStoreConfig::default();
    let Some(raw) = raw else { return cfg };
    let section = raw.referenced;
    let raw = raw.value;
    let mut err = |loc: &serde_saphyr::Location, msg: String| {
        errors.push(FileError::at(path, loc, msg));
    };

    if let Some(b) = &raw.backend {
        match AdminBackend::parse(&b.value) {
            Some(k) => cfg.backend = k,
            None => err(
                &b.referenced,
                format!(
                    "store.admin.backend: unknown backend {:?}; expected local, s3, gcs or azure",
                    b.value
                ),
            ),
        }
    }
    let backend = cfg.backend.as_str();
    let remote = cfg.backend != AdminBackend::Local;
    cfg.allow_http = raw.allow_http.as_ref().is_some_and(|a| a.value);

    match &raw.bucket {
        Some(b) if !remote => err(
            &b.referenced,
            "store.admin.bucket is only used by backends s3, gcs and azure (backend is local)"
                .to_string(),
        ),
        Some(b) if !valid_bucket(&b.value) => err(
            &b.referenced,
            format!(
                "store.admin.bucket {:?}: use 3-222 chars of [A-Za-z0-9._-], starting and ending with a letter or digit",
                b.value
            ),
        ),
        Some(b) => cfg.bucket = Some(b.value.clone()),
        None if remote => err(
            raw.backend
                .as_ref()
                .map(|b| &b.referenced)
                .unwrap_or(&section),
            format!("store.admin.bucket is required with backend {backend}"),
        ),
        None => {}
    }

    if let Some(p) = &raw.prefix {
        match normalise_prefix(&p.value) {
            Ok(p) => cfg.prefix = p,
            Err(m) => err(&p.referenced, m),
        }
    }

    for (name, v) in [("endpoint", &raw.endpoint), ("region", &raw.region)] {
        if let Some(v) = v
            && !remote
        {
            err(
                &v.referenced,
                format!(
                    "store.admin.{name} is only used by backends s3, gcs and azure (backend is local)"
                ),
            );
        }
    }
    if let Some(a) = &raw.allow_http
        && !remote
    {
        err(
            &a.referenced,
            "store.admin.allow_http is only used by backends s3, gcs and azure (backend is local)"
                .to_string(),
        );
    }
    if let Some(e) = &raw.endpoint
        && remote
    {
        match check_endpoint(&e.value, cfg.allow_http) {
            Ok(()) => cfg.endpoint = Some(e.value.clone()),
            Err(m) => err(&e.referenced, m),
        }
    }
    if let Some(r) = &raw.region
        && remote
    {
        if cfg.backend != AdminBackend::S3 {
            err(
                &r.referenced,
                format!("store.admin.region is only used by backend s3 (backend is {backend})"),
            );
        } else if r.value.is_empty()
            || r.value.len() > 64
            || !r
                .value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            err(
                &r.referenced,
                format!(
                    "store.admin.region {:?}: use [a-z0-9-] such as us-east-1",
                    r.value
                ),
            );
        } else {
            cfg.region = Some(r.value.clone());
        }
    }

    if let Some(pi) = &raw.poll_interval {
        let d = pi.value.0;
        if d < MIN_ADMIN_POLL_INTERVAL || d > MAX_ADMIN_POLL_INTERVAL {
            err(
                &pi.referenced,
                format!(
                    "store.admin.poll_interval must be from 100ms to 2s (a change must reach every replica within 2s), not {}",
                    humantime::format_duration(d)
                ),
            );
        } else {
            cfg.poll_interval = d;
        }
    }
    if let Some(ms) = &raw.max_staleness {
        cfg.max_staleness = ms.value.0;
    }
    if cfg.max_staleness < cfg.poll_interval * 2 {
        let loc = raw
            .max_staleness
            .as_ref()
            .map(|m| &m.referenced)
            .or(raw.poll_interval.as_ref().map(|p| &p.referenced))
            .unwrap_or(&section);
        err(
            loc,
            format!(
                "store.admin.max_staleness ({}) must be at least twice poll_interval ({})",
                humantime::format_duration(cfg.max_staleness),
                humantime::format_duration(cfg.poll_interval)
            ),
        );
    }
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, parse};
    use crate::diag::FileErrors;

    fn p(text: &str) -> Result<Config, FileErrors> {
        parse(Path::new("/etc/obsgate/gateway.yaml"), text)
    }

    fn admin(text: &str) -> AdminStoreConfig {
        p(text).unwrap_or_else(|e| panic!("{e}")).store.admin
    }

    #[test]
    fn absent_or_empty_section_is_local_with_defaults() {
        for text in [
            "{}",
            "store:\n  data_dir: d\n",
            "store:\n  admin:\n",
            "store:\n  admin: {}\n",
        ] {
            let a = admin(text);
            assert_eq!(a, AdminStoreConfig::default(), "{text}");
        }
        let a = AdminStoreConfig::default();
        assert_eq!(a.backend, AdminBackend::Local);
        assert_eq!(a.prefix, "");
        assert!(!a.allow_http && a.bucket.is_none() && a.endpoint.is_none());
        assert_eq!(a.poll_interval, Duration::from_secs(1));
        assert_eq!(a.max_staleness, Duration::from_secs(300));
        assert_eq!(
            a.describe(),
            "admin store: local (data_dir/admin-log) (poll 1s, max staleness 5m)"
        );
    }

    #[test]
    fn every_key_parses() {
        let a = admin(
            r#"
store:
  admin:
    backend: s3
    bucket: obsgate-admin
    prefix: prod/gw
    endpoint: "http://127.0.0.1:9000"
    region: us-east-1
    allow_http: true
    poll_interval: 500ms
    max_staleness: 1m
"#,
        );
        assert_eq!(
            a,
            AdminStoreConfig {
                backend: AdminBackend::S3,
                bucket: Some("obsgate-admin".into()),
                prefix: "prod/gw/".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: Some("us-east-1".into()),
                allow_http: true,
                poll_interval: Duration::from_millis(500),
                max_staleness: Duration::from_secs(60),
            }
        );
        assert_eq!(
            a.describe(),
            "admin store: s3 bucket obsgate-admin prefix prod/gw/ region us-east-1 endpoint http://127.0.0.1:9000 (poll 500ms, max staleness 1m)"
        );
        let a = admin("store:\n  admin: { backend: gcs, bucket: b-1, prefix: x/ }\n");
        assert_eq!((a.backend, a.prefix.as_str()), (AdminBackend::Gcs, "x/"));
        let a = admin("store:\n  admin: { backend: azure, bucket: container }\n");
        assert_eq!(
            a.describe(),
            "admin store: azure bucket container (poll 1s, max staleness 5m)"
        );
        assert_eq!(
            admin("store:\n  admin: { backend: local, prefix: a/b }\n").prefix,
            "a/b/"
        );
        // the edges of poll_interval and max_staleness
        let a = admin("store:\n  admin: { poll_interval: 100ms, max_staleness: 200ms }\n");
        assert_eq!(a.max_staleness, Duration::from_millis(200));
        assert_eq!(
            admin("store:\n  admin: { poll_interval: 2s }\n").poll_interval,
            Duration::from_secs(2)
        );
    }

    #[test]
    fn errors_are_located_and_say_what_is_wrong() {
        let cases: &[(&str, u32, &str)] = &[
            (
                "store:\n  admin:\n    backend: ftp\n",
                3,
                "unknown backend \"ftp\"",
            ),
            (
                "store:\n  admin:\n    backend: s3\n",
                3,
                "bucket is required with backend s3",
            ),
            (
                "store:\n  admin:\n    bucket: b-1\n",
                3,
                "bucket is only used by backends",
            ),
            (
                "store:\n  admin:\n    backend: s3\n    bucket: \"a b\"\n",
                4,
                "store.admin.bucket \"a b\"",
            ),
            (
                "store:\n  admin:\n    backend: s3\n    bucket: ab\n",
                4,
                "3-222 chars",
            ),
            (
                "store:\n  admin:\n    prefix: \"../x\"\n",
                3,
                "segments . and .. are not allowed",
            ),
            (
                "store:\n  admin:\n    prefix: \"a/../x\"\n",
                3,
                "segments . and .. are not allowed",
            ),
            (
                "store:\n  admin:\n    prefix: \"/abs\"\n",
                3,
                "must not start with /",
            ),
            (
                "store:\n  admin:\n    prefix: \"a//b\"\n",
                3,
                "empty path segment",
            ),
            (
                "store:\n  admin:\n    prefix: \"a b/\"\n",
                3,
                "[A-Za-z0-9._-]",
            ),
            (
                "store:\n  admin:\n    prefix: \"a/*\"\n",
                3,
                "[A-Za-z0-9._-]",
            ),
            (
                "store:\n  admin:\n    endpoint: \"https://e\"\n",
                3,
                "endpoint is only used by backends",
            ),
            (
                "store:\n  admin:\n    region: us-east-1\n",
                3,
                "region is only used by backends",
            ),
            (
                "store:\n  admin:\n    allow_http: true\n",
                3,
                "allow_http is only used by backends",
            ),
            (
                "store:\n  admin:\n    backend: s3\n    bucket: bbb\n    endpoint: \"http://127.0.0.1:9000\"\n",
                5,
                "is plain http: set allow_http: true",
            ),
            (
                "store:\n  admin:\n    backend: s3\n    bucket: bbb\n    endpoint: \"ftp://x\"\n",
                5,
                "scheme must be http or https",
            ),
            (
                "store:\n  admin:\n    backend: s3\n    bucket: bbb\n    endpoint: \"minio:9000\"\n",
                5,
                "needs http:// or https://",
            ),
            (
                "store:\n  admin:\n    backend: s3\n    bucket: bbb\n    endpoint: \"https://e/?x=1\"\n",
                5,
                "must not have a query string",
            ),
            (
                "store:\n  admin:\n    backend: gcs\n    bucket: bbb\n    region: us-east-1\n",
                5,
                "region is only used by backend s3",
            ),
            (
                "store:\n  admin:\n    backend: s3\n    bucket: bbb\n    region: \"US East\"\n",
                5,
                "use [a-z0-9-]",
            ),
            (
                "store:\n  admin:\n    poll_interval: 50ms\n",
                3,
                "from 100ms to 2s",
            ),
            (
                "store:\n  admin:\n    poll_interval: 3s\n",
                3,
                "from 100ms to 2s",
            ),
            (
                "store:\n  admin:\n    poll_interval: soon\n",
                3,
                "invalid duration",
            ),
            (
                "store:\n  admin:\n    poll_interval: 2s\n    max_staleness: 3s\n",
                4,
                "max_staleness (3s) must be at least twice poll_interval (2s)",
            ),
            (
                "store:\n  admin:\n    max_staleness: 1s\n",
                3,
                "at least twice poll_interval (1s)",
            ),
            (
                "store:\n  admin:\n    bucket_name: x\n",
                3,
                "unknown field `bucket_name`",
            ),
            ("store:\n  admin:\n    allow_http: maybe\n", 3, ""),
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
    fn an_endpoint_with_credentials_is_refused_without_echoing_them() {
        let e = p("store:\n  admin:\n    backend: s3\n    bucket: bbb\n    endpoint: \"https://AKIAEXAMPLE:s3cr3t@minio:9000\"\n")
            .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("must not contain credentials"), "{text}");
        assert!(text.contains("https://***@minio:9000"), "{text}");
        assert!(
            !text.contains("s3cr3t") && !text.contains("AKIAEXAMPLE"),
            "{text}"
        );
        assert_eq!(e.0[0].line, 5, "{e}");
    }

    #[test]
    fn prefixes_are_normalised() {
        assert_eq!(normalise_prefix(""), Ok(String::new()));
        assert_eq!(normalise_prefix("prod"), Ok("prod/".into()));
        assert_eq!(normalise_prefix("prod/"), Ok("prod/".into()));
        assert_eq!(normalise_prefix("a.b/c_d/e-f"), Ok("a.b/c_d/e-f/".into()));
        assert!(normalise_prefix("a/").is_ok());
        assert!(normalise_prefix("/").is_err());
        assert!(normalise_prefix("a//").is_err());
        assert!(normalise_prefix("./a").is_err());
    }
}
