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

#[derive(Debug, Clone)]
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
    /// `service.name` of the spans.
    pub service_name: String,
    /// Sent with every export (a Tempo tenant's `X-Scope-OrgID`, an `Authorization`).
    /// Values are never printed.
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
}

impl TracingConfig {
    /// One line for `obsgate check`; header names only, never their values.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "tracing: OTLP/{} to {}, sample ratio {}{}, service.name {}",
            self.protocol.as_str(),
            self.endpoint,
            self.sample_ratio,
            if self.parent_based {
                " (a sampled traceparent is followed)"
            } else {
                " (the client's sampling flag is ignored)"
            },
            self.service_name
        );
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
    service_name: Option<Spanned<String>>,
    headers: Option<RawHeaders>,
    timeout: Option<PromDuration>,
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
                    endpoint.value
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
                    endpoint.value
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
    ok.then_some(TracingConfig {
        endpoint,
        protocol: raw.protocol,
        sample_ratio,
        parent_based: raw.parent_based.unwrap_or(true),
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
