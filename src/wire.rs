//! What the gateway's three services (its own endpoints, the admin API, the data plane) and
//! the upstream clients share: the body type, error responses, what is known about a client
//! connection, and error-chain helpers.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use std::net::SocketAddr;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// One body type for everything the gateway sends and receives: streams pass through boxed.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body. Boxing it allocates nothing (the boxed value has no size).
pub fn empty() -> Body {
    http_body_util::Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn incoming(b: Incoming) -> Body {
    b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()
}

pub const THROTTLED_MESSAGE: &str =
    "too many failed authentications from this address; retry later";

/// 429 with `Retry-After`, for a client past its failed-authentication allowance.
pub fn throttled_response(retry_after_secs: u64) -> Response<Body> {
    let mut r = error_response(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_requests",
        THROTTLED_MESSAGE,
    );
    r.headers_mut().insert(
        http::header::RETRY_AFTER,
        HeaderValue::from(retry_after_secs),
    );
    r
}

pub fn error_response(status: StatusCode, error_type: &str, message: &str) -> Response<Body> {
    let message = crate::diag::clip(message);
    let body = serde_json::json!({"status": "error", "errorType": error_type, "error": message})
        .to_string();
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::UNAUTHORIZED {
        h.insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"obsgate\""),
        );
    }
    r
}

/// What is known about a client connection, computed once when it is accepted.
pub struct Conn {
    pub peer: SocketAddr,
    /// The peer's address as an `X-Forwarded-For` entry.
    pub xff: HeaderValue,
    /// `false` on a PROXY-protocol connection whose header named no client (v2 `LOCAL`, v1
    /// `UNKNOWN`): the balancer is the peer, and forwarded headers are not believed.
    pub believe_forwarded: bool,
}

impl Conn {
    pub fn new(peer: SocketAddr) -> Conn {
        Conn {
            peer,
            xff: HeaderValue::from_str(&crate::auth::canonical(peer.ip()).to_string())
                .expect("an IP address is a valid header value"),
            believe_forwarded: true,
        }
    }

    /// The proxies whose `X-Forwarded-For` is believed on this connection.
    pub fn trusted<'a>(&self, configured: &'a [ipnet::IpNet]) -> &'a [ipnet::IpNet] {
        if self.believe_forwarded {
            configured
        } else {
            &[]
        }
    }
}

/// Whether an upstream error was a timeout (connect timeout included).
pub fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        if err.to_string().contains("timed out") {
            return true;
        }
        cur = err.source();
    }
    false
}

/// `outer: inner: innermost` for logs.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        s.push_str(": ");
        s.push_str(&err.to_string());
        cur = err.source();
    }
    s
}
