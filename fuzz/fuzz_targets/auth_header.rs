//! The Authorization and X-Forwarded-For parsers: no panic on any header bytes; credentials
//! that are accepted carry a non-empty token; the client IP is the peer unless the peer is a
//! trusted proxy.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use obsgate::auth;
use std::net::IpAddr;

fuzz_target!(|data: &[u8]| {
    // first byte splits the input into the two headers
    let Some((&cut, rest)) = data.split_first() else { return };
    let cut = (cut as usize).min(rest.len());
    let (authz, xff) = rest.split_at(cut);
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(authz) {
        h.insert(http::header::AUTHORIZATION, v);
    }
    if let Ok(v) = HeaderValue::from_bytes(xff) {
        h.insert("x-forwarded-for", v);
    }
    if let Ok(c) = auth::credentials(&h) {
        assert!(!c.token.is_empty());
    }
    let peer: IpAddr = "10.1.2.3".parse().unwrap();
    let untrusted: IpAddr = "192.0.2.1".parse().unwrap();
    let trusted = ["10.0.0.0/8".parse().unwrap()];
    assert_eq!(auth::client_ip(untrusted, &h, &trusted), untrusted);
    let _ = auth::client_ip(peer, &h, &trusted);
});
