//! `tracing:`: OpenTelemetry traces of the requests obsgate serves, exported by OTLP.

use crate::diag::FileError;
use crate::duration::PromDuration;
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::path::Path;
use std::time::Duration;

/// Default share of new traces (no sampled parent) that are recorded and exported.
pub const DEFAULT_SAMPLE_RATIO: f64 = 0.1;
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// How spans are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocol {
    /// OTLP/HTTP with protobuf bodies (`POST <endpoint>/v1/traces`), port 4318 by convention.
    #[default]
    Http,
    /// OTLP/gRPC (`TraceService/Export`), port 4317 by convention.
    Grpc,
}

impl OtlpProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::Http => "http",
            OtlpProtocol::Grpc => "grpc",
        }
    }
}

#[derive(Clone)]
pub struct TracingConfig {
    /// Where spans go. OTLP/HTTP: the full URL of the traces resource (`/v1/traces` is appended
    /// to a URL without a path); OTLP/gRPC: `http(s)://host:port`.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// Share (0–1) of requests without a sampled parent whose trace is recorded.
    pub sample_ratio: f64,
    /// A request whose `traceparent` says "sampled" (or "not sampled") is recorded (or not)
    /// whatever the ratio.
    pub parent_based: bool,
    /// Continue the trace a client's `traceparent` names (`false`: every request starts a new
    /// trace, and a client can neither join another trace nor choose its sampling).
    pub continue_client_traces: bool,
    /// `service.name` of the spans.
    pub service_name: String,
    /// Sent with every export (a Tempo tenant's `X-Scope-OrgID`, an `Authorization`).
    /// Values are never printed.
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    /// A CA (PEM) trusted for an `https://` endpoint besides the system's roots (a receiver
    /// with a private CA).
    pub ca_file: Option<std::path::PathBuf>,
}

/// Header values may be credentials: never printed, not even by `{:?}`.
impl std::fmt::Debug for TracingConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracingConfig")
            .field("endpoint", &redacted(&self.endpoint))
            .field("protocol", &self.protocol)
            .field("sample_ratio", &self.sample_ratio)
            .field("parent_based", &self.parent_based)
            .field("continue_client_traces", &self.continue_client_traces)
            .field("service_name", &self.service_name)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("timeout", &self.timeout)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// A URL as it may be printed: user information and query string replaced.
pub fn redacted(url: &str) -> String {
    let (url, query) = match url.split_once('?') {
        Some((u, _)) => (u, "?<redacted>"),
        None => (url, ""),
    };
    let out = match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            match authority.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://<redacted>@{host}{path}"),
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    };
    out + query
}

impl TracingConfig {
    /// One line for `obsgate check`; header names only, never their values.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "tracing: OTLP/{} to {}, sample ratio {}{}, service.name {}",
            self.protocol.as_str(),
            redacted(&self.endpoint),
            self.sample_ratio,
            match (self.continue_client_traces, self.parent_based) {
                (false, _) => " (client trace context ignored: every request starts a trace)",
                (true, true) => " (a client's trace is continued, its sampled flag followed)",
                (true, false) => " (a client's trace is continued, its sampling flag ignored)",
            },
            self.service_name
        );
        if let Some(ca) = &self.ca_file {
            s += &format!(", CA {}", ca.display());
        }
        if !self.headers.is_empty() {
            let names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
            s += &format!(", export headers {}", names.join(", "));
        }
        s
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTracing {
    endpoint: Option<Spanned<String>>,
    #[serde(default)]
    protocol: OtlpProtocol,
    sample_ratio: Option<Spanned<f64>>,
    parent_based: Option<bool>,
    continue_client_traces: Option<bool>,
    service_name: Option<Spanned<String>>,
    headers: Option<RawHeaders>,
    timeout: Option<PromDuration>,
    ca_file: Option<String>,
}

/// Validates `tracing:`; errors are located at the offending node.
pub(super) fn build(
    path: &Path,
    raw: Spanned<RawTracing>,
    errors: &mut Vec<FileError>,
) -> Option<TracingConfig> {
    let at = raw.referenced;
    let raw = raw.value;
    let Some(endpoint) = raw.endpoint else {
        errors.push(FileError::at(
            path,
            &at,
            "tracing.endpoint is required (e.g. http://tempo-distributor:4318 for OTLP/HTTP)",
        ));
        return None;
    };
    let mut ok = true;
    let url = match endpoint.value.parse::<http::Uri>() {
        Ok(u)
            if matches!(u.scheme_str(), Some("http" | "https"))
                && u.authority().is_some_and(|a| !a.host().is_empty()) =>
        {
            Some(u)
        }
        _ => {
            errors.push(FileError::at(
                path,
                &endpoint.referenced,
                format!(
                    "tracing.endpoint {:?} is not an http:// or https:// URL with a host",
                    redacted(&endpoint.value)
                ),
            ));
            ok = false;
            None
        }
    };
    let endpoint = match (url, raw.protocol) {
        // as OTEL_EXPORTER_OTLP_ENDPOINT: a bare base URL gets the signal's path
        (Some(u), OtlpProtocol::Http) if matches!(u.path(), "" | "/") && u.query().is_none() => {
            format!("{}/v1/traces", endpoint.value.trim_end_matches('/'))
        }
        (Some(u), OtlpProtocol::Grpc) if !matches!(u.path(), "" | "/") => {
            errors.push(FileError::at(
                path,
                &endpoint.referenced,
                format!(
                    "tracing.endpoint {:?}: an OTLP/gRPC endpoint is scheme://host:port, without a path",
                    redacted(&endpoint.value)
                ),
            ));
            ok = false;
            endpoint.value
        }
        _ => endpoint.value,
    };
    let sample_ratio = match raw.sample_ratio {
        Some(r) if !(r.value.is_finite() && (0.0..=1.0).contains(&r.value)) => {
            errors.push(FileError::at(
                path,
                &r.referenced,
                format!(
                    "tracing.sample_ratio must be between 0 and 1, not {}",
                    r.value
                ),
            ));
            ok = false;
            0.0
        }
        Some(r) => r.value,
        None => DEFAULT_SAMPLE_RATIO,
    };
    let service_name = match raw.service_name {
        Some(s) if s.value.trim().is_empty() => {
            errors.push(FileError::at(
                path,
                &s.referenced,
                "tracing.service_name must not be empty",
            ));
            ok = false;
            String::new()
        }
        Some(s) => s.value,
        None => "obsgate".to_string(),
    };
    let mut headers = Vec::new();
    for (k, v) in raw.headers.map(|h| h.0).unwrap_or_default() {
        let name_ok = http::HeaderName::from_bytes(k.value.as_bytes()).is_ok();
        let value_ok = http::HeaderValue::from_str(&v.value).is_ok();
        if !name_ok {
            errors.push(FileError::at(
                path,
                &k.referenced,
                format!("tracing.headers: {:?} is not a valid header name", k.value),
            ));
            ok = false;
        } else if !value_ok {
            // the value may be a credential: never echoed
            errors.push(FileError::at(
                path,
                &v.referenced,
                format!(
                    "tracing.headers: the value of {} is not a valid header value",
                    k.value
                ),
            ));
            ok = false;
        } else if headers
            .iter()
            .any(|(n, _): &(String, String)| n.eq_ignore_ascii_case(&k.value))
        {
            errors.push(FileError::at(
                path,
                &k.referenced,
                format!("tracing.headers: {} is given twice", k.value),
            ));
            ok = false;
        }
        // gRPC metadata keys are lowercase; HTTP header names are case-insensitive
        headers.push((k.value.to_ascii_lowercase(), v.value));
    }
    let timeout = raw.timeout.map(|d| d.0).unwrap_or(DEFAULT_EXPORT_TIMEOUT);
    if timeout.is_zero() {
        errors.push(FileError::at(path, &at, "tracing.timeout must be above 0"));
        ok = false;
    }
    // relative to the config file's directory, as every other path in it
    let ca_file = raw.ca_file.map(|f| {
        let f = Path::new(&f);
        if f.is_absolute() {
            f.to_path_buf()
        } else {
            path.parent().unwrap_or(Path::new(".")).join(f)
        }
    });
    ok.then_some(TracingConfig {
        ca_file,
        endpoint,
        protocol: raw.protocol,
        sample_ratio,
        parent_based: raw.parent_based.unwrap_or(true),
        continue_client_traces: raw.continue_client_traces.unwrap_or(true),
        service_name,
        headers,
        timeout,
    })
}

/// `headers:` as written, each name and value with its location.
pub(super) struct RawHeaders(Vec<(Spanned<String>, Spanned<String>)>);

impl<'de> Deserialize<'de> for RawHeaders {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{MapAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawHeaders;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of header name to value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<RawHeaders, A::Error> {
                let mut v = Vec::new();
                while let Some(k) = m.next_key::<Spanned<String>>()? {
                    v.push((k, m.next_value::<Spanned<String>>()?));
                }
                Ok(RawHeaders(v))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(yaml: &str) -> Result<Option<TracingConfig>, String> {
        crate::config::parse(Path::new("/etc/obsgate/gateway.yaml"), yaml)
            .map(|c| c.tracing)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_the_otlp_http_path() {
        assert!(parse("").unwrap().is_none(), "no section: tracing off");
        let t = parse("tracing:\n  endpoint: http://tempo:4318\n")
            .unwrap()
            .unwrap();
        assert_eq!(t.endpoint, "http://tempo:4318/v1/traces");
        assert_eq!(t.protocol, OtlpProtocol::Http);
        assert_eq!(t.sample_ratio, DEFAULT_SAMPLE_RATIO);
        assert!(t.parent_based);
        assert_eq!(t.service_name, "obsgate");
        assert_eq!(t.timeout, DEFAULT_EXPORT_TIMEOUT);
        assert_eq!(t.ca_file, None);
        // ca_file: relative to the config file's directory, or absolute
        let t = parse("tracing:\n  endpoint: https://tempo:4318\n  ca_file: certs/otlp-ca.pem\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            t.ca_file.as_deref(),
            Some(Path::new("/etc/obsgate/certs/otlp-ca.pem"))
        );
        assert!(t.describe().contains("CA /etc/obsgate/certs/otlp-ca.pem"));
        let t = parse("tracing:\n  endpoint: https://tempo:4318\n  ca_file: /ca.pem\n")
            .unwrap()
            .unwrap();
        assert_eq!(t.ca_file.as_deref(), Some(Path::new("/ca.pem")));
        let t = parse("tracing:\n  endpoint: https://otlp.example/otlp/v1/traces\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            t.endpoint, "https://otlp.example/otlp/v1/traces",
            "a path is kept"
        );
        let t = parse(
            "tracing:\n  endpoint: http://tempo:4317\n  protocol: grpc\n  sample_ratio: 0.25\n  parent_based: false\n  service_name: edge-gw\n  timeout: 3s\n  headers:\n    X-Scope-OrgID: ops\n    Authorization: Basic c2VjcmV0\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.endpoint, "http://tempo:4317");
        assert_eq!(t.protocol, OtlpProtocol::Grpc);
        assert_eq!(t.sample_ratio, 0.25);
        assert!(!t.parent_based);
        assert_eq!(t.service_name, "edge-gw");
        assert_eq!(t.timeout, Duration::from_secs(3));
        assert_eq!(
            t.headers,
            vec![
                ("x-scope-orgid".to_string(), "ops".to_string()),
                ("authorization".to_string(), "Basic c2VjcmV0".to_string())
            ]
        );
        let d = t.describe();
        assert!(d.contains("x-scope-orgid, authorization"), "{d}");
        assert!(
            !d.contains("c2VjcmV0"),
            "header values are never printed: {d}"
        );
    }

    #[test]
    fn credentials_in_the_endpoint_are_never_printed() {
        let t =
            parse("tracing:\n  endpoint: https://user:pa55@otlp.example/v1/traces?key=s3cr3t\n")
                .unwrap()
                .unwrap();
        for text in [t.describe(), format!("{t:?}")] {
            assert!(!text.contains("pa55") && !text.contains("s3cr3t"), "{text}");
            assert!(
                text.contains("https://<redacted>@otlp.example/v1/traces?<redacted>"),
                "{text}"
            );
        }
        let e = parse("tracing:\n  endpoint: \"ftp://user:pa55@h/\"\n").unwrap_err();
        assert!(!e.contains("pa55") && e.contains("<redacted>@h"), "{e}");
        assert_eq!(redacted("http://tempo:4318"), "http://tempo:4318");
        let t = parse("tracing:\n  endpoint: http://t\n  continue_client_traces: false\n")
            .unwrap()
            .unwrap();
        assert!(!t.continue_client_traces);
        assert!(t.describe().contains("every request starts a trace"));
    }

    #[test]
    fn mistakes_are_located() {
        for (yaml, line, msg) in [
            (
                "tracing:\n  protocol: http\n",
                2,
                "tracing.endpoint is required",
            ),
            (
                "tracing:\n  endpoint: tempo:4318\n",
                2,
                "not an http:// or https:// URL",
            ),
            (
                "tracing:\n  endpoint: ftp://tempo\n",
                2,
                "not an http:// or https:// URL",
            ),
            (
                "tracing:\n  endpoint: http://tempo:4317/v1/traces\n  protocol: grpc\n",
                2,
                "without a path",
            ),
            (
                "tracing:\n  endpoint: http://t\n  sample_ratio: 1.5\n",
                3,
                "between 0 and 1",
            ),
            (
                "tracing:\n  endpoint: http://t\n  sample_ratio: -0.1\n",
                3,
                "between 0 and 1",
            ),
            (
                "tracing:\n  endpoint: http://t\n  service_name: \"\"\n",
                3,
                "must not be empty",
            ),
            (
                "tracing:\n  endpoint: http://t\n  headers:\n    \"bad name\": x\n",
                4,
                "not a valid header name",
            ),
            (
                "tracing:\n  endpoint: http://t\n  headers:\n    a: x\n    A: y\n",
                5,
                "given twice",
            ),
            (
                "tracing:\n  endpoint: http://t\n  protocol: thrift\n",
                3,
                "thrift",
            ),
            (
                "tracing:\n  endpoint: http://t\n  sampler: always\n",
                3,
                "sampler",
            ),
        ] {
            let e = parse(yaml).expect_err(yaml);
            assert!(
                e.contains(&format!("gateway.yaml:{line}:")),
                "{yaml:?}: {e}"
            );
            assert!(e.contains(msg), "{yaml:?}: {e}");
        }
        // a header value may be a credential: its error never repeats it
        let e =
            parse("tracing:\n  endpoint: http://t\n  headers:\n    authorization: \"sec\\nret\"\n")
                .unwrap_err();
        assert!(e.contains("the value of authorization"), "{e}");
        assert!(!e.contains("sec"), "{e}");
    }

    #[test]
    fn log_format() {
        let c = crate::config::parse(Path::new("g.yaml"), "log:\n  format: json\n").unwrap();
        assert_eq!(c.log.format, crate::config::LogFormat::Json);
        let c = crate::config::parse(Path::new("g.yaml"), "").unwrap();
        assert_eq!(c.log.format, crate::config::LogFormat::Text);
        let e = crate::config::parse(Path::new("g.yaml"), "log:\n  format: logfmt\n").unwrap_err();
        assert!(e.to_string().contains("g.yaml:2:"), "{e}");
    }
}
