//! The forward-auth listener's reading of a question (`/auth…` path, method, the nginx and
//! Traefik headers, the tenant header, the client-address headers): no panic on any bytes, and
//! what it accepts is consistent: the original path starts with `/` and comes from the form it
//! names, a fixed form is the only form read, and an untrusted peer is always the client.
#![no_main]

use http::{HeaderMap, HeaderValue, Method, Uri};
use libfuzzer_sys::fuzz_target;
use obsgate::auth;
use obsgate::proxy::forward_auth::{Form, original};
use std::net::IpAddr;

const HEADERS: [&str; 7] = [
    "x-original-method",
    "x-original-uri",
    "x-forwarded-method",
    "x-forwarded-uri",
    "x-scope-orgid",
    "x-forwarded-for",
    "x-real-ip",
];

fuzz_target!(|data: &[u8]| {
    // newline-separated parts: the question's method, the path after /auth, then header values
    let mut parts = data.split(|b| *b == b'\n');
    let method = parts
        .next()
        .and_then(|m| Method::from_bytes(m).ok())
        .unwrap_or(Method::GET);
    let Some(Ok(rest)) = parts.next().map(std::str::from_utf8) else {
        return;
    };
    let Ok(uri) = format!("/auth{rest}").parse::<Uri>() else {
        return;
    };
    let mut h = HeaderMap::new();
    for name in HEADERS {
        let Some(v) = parts.next() else { break };
        // an empty part: the header is absent; a part starting with 0x01: given twice
        if v.is_empty() {
            continue;
        }
        let (twice, v) = match v.split_first() {
            Some((1, r)) => (true, r),
            _ => (false, v),
        };
        if let Ok(v) = HeaderValue::from_bytes(v) {
            h.append(name, v.clone());
            if twice {
                h.append(name, v);
            }
        }
    }
    for only in [None, Some(Form::Nginx), Some(Form::Traefik), Some(Form::Envoy)] {
        let Some(Ok(o)) = original(&method, &uri, &h, only) else {
            continue;
        };
        assert!(o.path.starts_with('/'), "{:?}", o.path);
        if let Some(f) = only {
            assert_eq!(o.form, f);
        }
        match o.form {
            Form::Envoy => assert!(uri.path().ends_with(o.path)),
            Form::Nginx => assert!(
                h.get("x-original-uri")
                    .is_some_and(|v| v.as_bytes().starts_with(o.path.as_bytes()))
            ),
            Form::Traefik => assert!(
                h.get("x-forwarded-uri")
                    .is_some_and(|v| v.as_bytes().starts_with(o.path.as_bytes()))
            ),
        }
        // two tenant headers are never accepted
        assert!(h.get_all("x-scope-orgid").iter().count() <= 1);
    }
    let untrusted: IpAddr = "192.0.2.1".parse().unwrap();
    let trusted = ["10.0.0.0/8".parse().unwrap()];
    assert_eq!(auth::forward_auth_client_ip(untrusted, &h, &trusted), untrusted);
    let _ = auth::forward_auth_client_ip("10.1.2.3".parse().unwrap(), &h, &trusted);
});
