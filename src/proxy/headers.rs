//! Header hygiene (SPEC 6): hop-by-hop headers (RFC 9110 §7.6.1, and every header the
//! `Connection` header names) are removed in both directions; the client's credentials,
//! tenant and label-policy headers never reach the backend.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;

/// Hop-by-hop headers that are always removed. `static`, not `const`: a `const` array is built
/// and dropped again at every use.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

pub const X_SCOPE_ORGID: HeaderName = HeaderName::from_static("x-scope-orgid");
pub const X_PROM_LABEL_POLICY: HeaderName = HeaderName::from_static("x-prom-label-policy");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Headers only the gateway may set.
static GATEWAY_OWNED: [HeaderName; 3] = [header::AUTHORIZATION, X_SCOPE_ORGID, X_PROM_LABEL_POLICY];

fn connection_tokens(h: &HeaderMap) -> Vec<HeaderName> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        // the common option names a header already in HOP_BY_HOP: skip parsing it
        .filter(|t| !t.eq_ignore_ascii_case("keep-alive"))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect()
}

/// A WebSocket-style upgrade: `Connection: upgrade` with an `Upgrade` header.
/// HTTP/1 request framing that two parsers could read two ways (request smuggling): a
/// `Transfer-Encoding` together with a `Content-Length`, or any `Transfer-Encoding` other than
/// one `chunked`. hyper refuses most such requests itself (400); these it would accept.
pub fn framing_is_ambiguous(version: http::Version, h: &HeaderMap) -> bool {
    if version >= http::Version::HTTP_2 {
        return false;
    }
    let mut te = h.get_all(http::header::TRANSFER_ENCODING).iter();
    let Some(first) = te.next() else {
        return false;
    };
    te.next().is_some()
        || h.contains_key(http::header::CONTENT_LENGTH)
        || !first
            .to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"))
}

pub fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE) && connection_tokens(h).contains(&header::UPGRADE)
}

pub fn is_grpc(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Removes the hop-by-hop headers and `also`. One pass over the names present (a request has
/// a handful) instead of one lookup per name that could be there.
fn strip_hop_by_hop(h: &mut HeaderMap, also: &[HeaderName]) {
    // the names to remove, on the stack for the usual handful (no allocation per request)
    const ON_STACK: usize = 8;
    let mut few: [Option<HeaderName>; ON_STACK] = Default::default();
    let mut n = 0;
    let mut more: Vec<HeaderName> = Vec::new();
    let mut doom = |name: HeaderName| {
        if n < ON_STACK {
            few[n] = Some(name);
            n += 1;
        } else {
            more.push(name);
        }
    };
    if h.contains_key(header::CONNECTION) {
        for t in connection_tokens(h) {
            doom(t);
        }
    }
    for name in h.keys() {
        if HOP_BY_HOP.contains(name) || also.contains(name) {
            doom(name.clone());
        }
    }
    for name in few.into_iter().flatten().chain(more) {
        h.remove(name);
    }
}

/// Cleans the forwarded request. For an upgrade, `Connection: upgrade` and `Upgrade` are kept
/// (they are the request's point); for gRPC, `TE: trailers` is kept (HTTP/2 needs it).
pub fn clean_request(h: &mut HeaderMap, upgrade: bool, grpc: bool) {
    let upgrade_value = if upgrade {
        h.get(header::UPGRADE).cloned()
    } else {
        None
    };
    let te_trailers = grpc
        && h.get_all(header::TE).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        });
    strip_hop_by_hop(h, &GATEWAY_OWNED);
    if let Some(u) = upgrade_value {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, u);
    }
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Cleans the backend's response. A 101 keeps `Connection`/`Upgrade` for the client.
pub fn clean_response(h: &mut HeaderMap, switching: bool) {
    let upgrade_value = if switching {
        h.get(header::UPGRADE).cloned()
    } else {
        None
    };
    strip_hop_by_hop(h, &[]);
    if let Some(u) = upgrade_value {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, u);
    }
}

/// The connecting peer's address as a header value, computed once per connection.
pub fn peer_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&crate::auth::canonical(ip).to_string())
        .expect("an IP address is a valid header value")
}

/// Appends the connecting peer's address (`peer`, from [`peer_value`]) to `X-Forwarded-For`,
/// folding earlier values into one header, as nginx's `$proxy_add_x_forwarded_for` does.
pub fn append_forwarded_for(h: &mut HeaderMap, peer: &HeaderValue) {
    if !h.contains_key(&X_FORWARDED_FOR) {
        h.insert(X_FORWARDED_FOR, peer.clone());
        return;
    }
    let ip = peer.to_str().unwrap_or_default();
    let prior: Vec<String> = h
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let value = if prior.is_empty() {
        ip.to_string()
    } else {
        format!("{}, {ip}", prior.join(", "))
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.insert(X_FORWARDED_FOR, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn request_loses_hop_by_hop_named_and_gateway_owned_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "gzip"),
            ("trailer", "x"),
            ("proxy-authorization", "Basic x"),
            ("authorization", "Bearer glc_x"),
            ("x-scope-orgid", "evil"),
            ("x-prom-label-policy", "team-a:%7B%7D"),
            ("content-type", "application/x-protobuf"),
            ("x-custom", "kept"),
        ]);
        clean_request(&mut h, false, false);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, vec!["content-type", "x-custom"]);
    }

    #[test]
    fn upgrade_and_grpc_keep_what_they_need() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("authorization", "x"),
        ]);
        assert!(is_upgrade(&h));
        clean_request(&mut h, true, false);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert!(h.get("authorization").is_none());
        let mut g = map(&[
            ("te", "trailers"),
            ("content-type", "application/grpc+proto"),
        ]);
        assert!(is_grpc(&g));
        clean_request(&mut g, false, true);
        assert_eq!(g.get("te").unwrap(), "trailers");
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
        ]);
        append_forwarded_for(&mut h, &peer_value("127.0.0.1".parse().unwrap()));
        assert_eq!(
            h.get("x-forwarded-for").unwrap(),
            "1.1.1.1, 2.2.2.2, 127.0.0.1"
        );
        let mut e = HeaderMap::new();
        append_forwarded_for(&mut e, &peer_value("::ffff:10.0.0.1".parse().unwrap()));
        assert_eq!(e.get("x-forwarded-for").unwrap(), "10.0.0.1");
    }
}
