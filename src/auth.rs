//! Credentials (SPEC 5.1) and the client address (SPEC 5.4). No I/O.

use base64::Engine as _;
use http::HeaderMap;
use ipnet::IpNet;
use std::borrow::Cow;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials<'a> {
    pub token: Cow<'a, str>,
    /// The Basic/Bearer username, when present and non-empty.
    pub tenant: Option<Cow<'a, str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error("missing credentials: send Authorization: Bearer <token> or Basic <tenant:token>")]
    Missing,
    #[error(
        "malformed Authorization header: expected Bearer <token>, Bearer <tenant>:<token> or Basic base64(<tenant>:<token>)"
    )]
    Malformed,
}

impl CredentialsError {
    pub fn reason(self) -> &'static str {
        match self {
            CredentialsError::Missing => "missing_credentials",
            CredentialsError::Malformed => "malformed_credentials",
        }
    }
}

/// Longest Authorization value accepted before any decoding.
const MAX_AUTHORIZATION_LEN: usize = 8192;

fn split_tenant(s: &str) -> (Option<&str>, &str) {
    match s.split_once(':') {
        Some((tenant, token)) => ((!tenant.is_empty()).then_some(tenant), token),
        None => (None, s),
    }
}

/// Extracts credentials from the Authorization header. The token is not validated here.
pub fn credentials(headers: &HeaderMap) -> Result<Credentials<'_>, CredentialsError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(v) = values.next() else {
        return Err(CredentialsError::Missing);
    };
    if values.next().is_some() || v.len() > MAX_AUTHORIZATION_LEN {
        return Err(CredentialsError::Malformed);
    }
    let v = v.to_str().map_err(|_| CredentialsError::Malformed)?.trim();
    let (scheme, rest) = v.split_once(' ').ok_or(CredentialsError::Malformed)?;
    let rest = rest.trim();
    if rest.is_empty() {
        return Err(CredentialsError::Malformed);
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        let (tenant, token) = split_tenant(rest);
        if token.is_empty() {
            return Err(CredentialsError::Malformed);
        }
        Ok(Credentials {
            token: Cow::Borrowed(token),
            tenant: tenant.map(Cow::Borrowed),
        })
    } else if scheme.eq_ignore_ascii_case("basic") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| CredentialsError::Malformed)?;
        let mut text = String::from_utf8(raw).map_err(|_| CredentialsError::Malformed)?;
        let colon = text.find(':').ok_or(CredentialsError::Malformed)?;
        if colon + 1 == text.len() {
            return Err(CredentialsError::Malformed);
        }
        let tenant = (colon > 0).then(|| Cow::Owned(text[..colon].to_string()));
        // the token keeps the decoded buffer: no second copy of the secret
        text.drain(..=colon);
        Ok(Credentials {
            token: Cow::Owned(text),
            tenant,
        })
    } else {
        Err(CredentialsError::Malformed)
    }
}

/// The TCP peer, unless it is a trusted proxy: then the right-most `X-Forwarded-For` entry that
/// is not itself a trusted proxy. Unparsable entries stop the walk and the last trusted hop is
/// used (fail closed: never an address the client chose freely).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if trusted.is_empty() || !trusted.iter().any(|n| n.contains(&peer)) {
        return peer;
    }
    walk(peer, headers.get_all(X_FORWARDED_FOR), trusted)
}

const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: http::HeaderName = http::HeaderName::from_static("x-real-ip");

/// The walk of [`client_ip`] from a trusted `peer` (canonical) along `X-Forwarded-For`.
fn walk(
    peer: IpAddr,
    xff: http::header::GetAll<'_, http::HeaderValue>,
    trusted: &[IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let mut current = peer;
    // all X-Forwarded-For headers, in order, form one list, walked from its end. Split as
    // bytes: a proxy appends the client's address to whatever the client sent in the same
    // header, so a value with a non-ASCII byte on its left must not hide it.
    let entries = xff
        .iter()
        .rev()
        .flat_map(|v| v.as_bytes().rsplit(|b| *b == b','));
    for e in entries {
        let Some(ip) = std::str::from_utf8(e).ok().and_then(parse_xff_entry) else {
            return current;
        };
        let ip = canonical(ip);
        if !is_trusted(&ip) {
            return ip;
        }
        current = ip;
    }
    current
}

/// The client behind a forward-auth question: as [`client_ip`]; when the trusted peer sent no
/// `X-Forwarded-For`, the address in its `X-Real-IP` (nginx's and Traefik's header for the
/// client's address). An `X-Real-IP` given twice or unparsable is not believed: the peer.
pub fn forward_auth_client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let canon = canonical(peer);
    if trusted.is_empty() || !trusted.iter().any(|n| n.contains(&canon)) {
        return canon;
    }
    // one lookup: whether there is an X-Forwarded-For at all, and its values
    let xff = headers.get_all(X_FORWARDED_FOR);
    if xff.iter().next().is_some() {
        return walk(canon, xff, trusted);
    }
    let mut real = headers.get_all(X_REAL_IP).iter();
    match (real.next(), real.next()) {
        (Some(v), None) => v
            .to_str()
            .ok()
            .and_then(parse_xff_entry)
            .map(canonical)
            .unwrap_or(canon),
        _ => canon,
    }
}

fn parse_xff_entry(e: &str) -> Option<IpAddr> {
    let e = e.trim();
    if let Ok(ip) = e.parse() {
        return Some(ip);
    }
    // `[v6]:port` or `v4:port`
    if let Ok(sa) = e.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    None
}

/// IPv4-mapped IPv6 (`::ffff:10.0.0.1`) is treated as the IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(v).unwrap(),
        );
        m
    }

    fn basic(s: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    }

    #[test]
    fn bearer_forms() {
        let m = h("Bearer glc_abc");
        let c = credentials(&m).unwrap();
        assert_eq!((c.token.as_ref(), c.tenant), ("glc_abc", None));
        let m = h("bearer team-a:glc_abc");
        let c = credentials(&m).unwrap();
        assert_eq!(
            (c.token.as_ref(), c.tenant.as_deref()),
            ("glc_abc", Some("team-a"))
        );
        let m = h("Bearer :glc_abc");
        assert_eq!(credentials(&m).unwrap().tenant, None);
    }

    #[test]
    fn basic_forms() {
        let m = h(&basic("team-a:glc_abc"));
        let c = credentials(&m).unwrap();
        assert_eq!(
            (c.token.as_ref(), c.tenant.as_deref()),
            ("glc_abc", Some("team-a"))
        );
        let m = h(&basic(":glc_abc"));
        assert_eq!(credentials(&m).unwrap().tenant, None);
    }

    #[test]
    fn missing_and_malformed() {
        assert_eq!(
            credentials(&HeaderMap::new()),
            Err(CredentialsError::Missing)
        );
        for bad in [
            "Bearer",
            "Bearer ",
            "Token abc",
            "Basic !!!",
            "glc_abc",
            "Bearer team:",
        ] {
            assert_eq!(
                credentials(&h(bad)),
                Err(CredentialsError::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(
            credentials(&h(&basic("no-colon"))),
            Err(CredentialsError::Malformed)
        );
        assert_eq!(
            credentials(&h(&basic("team:"))),
            Err(CredentialsError::Malformed)
        );
        let mut two = h("Bearer a");
        two.append(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer b"),
        );
        assert_eq!(credentials(&two), Err(CredentialsError::Malformed));
        let mut bin = HeaderMap::new();
        bin.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer \xff").unwrap(),
        );
        assert_eq!(credentials(&bin), Err(CredentialsError::Malformed));
    }

    fn xff(v: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for x in v {
            m.append("x-forwarded-for", HeaderValue::from_str(x).unwrap());
        }
        m
    }

    #[test]
    fn client_ip_ignores_xff_from_untrusted_peers() {
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(client_ip(peer, &xff(&["1.2.3.4"]), &trusted), peer);
        assert_eq!(client_ip(peer, &xff(&["1.2.3.4"]), &[]), peer);
    }

    #[test]
    fn client_ip_takes_rightmost_untrusted_entry() {
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let m = xff(&["6.6.6.6, 1.2.3.4, 10.0.0.7"]);
        assert_eq!(
            client_ip(peer, &m, &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        // several headers form one list
        let m = xff(&["6.6.6.6", "1.2.3.4"]);
        assert_eq!(
            client_ip(peer, &m, &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        // no header: the peer
        assert_eq!(client_ip(peer, &HeaderMap::new(), &trusted), peer);
        // garbage stops the walk at the last trusted hop
        let m = xff(&["1.2.3.4, garbage, 10.0.0.7"]);
        assert_eq!(
            client_ip(peer, &m, &trusted),
            "10.0.0.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(peer, &xff(&["[2001:db8::1]:443"]), &trusted),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn forward_auth_client_ip_reads_x_real_ip_when_no_xff() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let peer = ip("10.0.0.5");
        let real = |vals: &[&str]| {
            let mut m = HeaderMap::new();
            for v in vals {
                m.append("x-real-ip", HeaderValue::from_str(v).unwrap());
            }
            m
        };
        assert_eq!(
            forward_auth_client_ip(peer, &real(&["1.2.3.4"]), &trusted),
            ip("1.2.3.4")
        );
        // X-Forwarded-For wins: it is the list the proxy appended to
        let mut m = real(&["6.6.6.6"]);
        m.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        assert_eq!(forward_auth_client_ip(peer, &m, &trusted), ip("1.2.3.4"));
        // an untrusted peer is the client, whatever it says
        assert_eq!(
            forward_auth_client_ip(ip("8.8.8.8"), &real(&["1.2.3.4"]), &trusted),
            ip("8.8.8.8")
        );
        assert_eq!(
            forward_auth_client_ip(peer, &real(&["1.2.3.4"]), &[]),
            peer,
            "no trusted proxies: the peer"
        );
        // twice, or garbage: not believed
        assert_eq!(
            forward_auth_client_ip(peer, &real(&["1.2.3.4", "5.6.7.8"]), &trusted),
            peer
        );
        assert_eq!(
            forward_auth_client_ip(peer, &real(&["nope"]), &trusted),
            peer
        );
        assert_eq!(
            forward_auth_client_ip(peer, &HeaderMap::new(), &trusted),
            peer
        );
    }

    #[test]
    fn a_non_ascii_entry_left_of_the_proxys_does_not_hide_the_client() {
        // nginx's $proxy_add_x_forwarded_for: "<what the client sent>, <client address>"
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut m = HeaderMap::new();
        m.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff10.1.1.1, 203.0.113.9").unwrap(),
        );
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        assert_eq!(
            client_ip(peer, &m, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            forward_auth_client_ip(peer, &m, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn mapped_v6_is_v4() {
        let ip: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert_eq!(canonical(ip), "127.0.0.2".parse::<IpAddr>().unwrap());
    }
}
