//! The PROXY protocol header parser (v1 text, v2 binary): no panic on any bytes, and properties:
//! - a `Done` header is at most the input and at most `MAX_HEADER_LEN` bytes; re-parsed from its
//!   own bytes, or with other bytes after it, it gives the same answer; every strict prefix of
//!   it is `Incomplete`;
//! - the answers over the input's prefixes go `Incomplete`* then stay `Done` (the same one) or
//!   stay `Malformed`: more bytes never turn a refusal into a header;
//! - `Incomplete` only below the size bounds (107 bytes for v1, 4112 for v2);
//! - a header built from the input (v1 TCP4/TCP6/UNKNOWN, v2 PROXY v4/v6 with TLVs, LOCAL) is
//!   read back as exactly that header, carrying exactly its source address.
#![no_main]

use libfuzzer_sys::fuzz_target;
use obsgate::proxy::proxy_protocol::{MAX_HEADER_LEN, Parsed, V1_MAX_LEN, encode, parse};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// How many prefixes are walked (each parse is at most linear in the header).
const PREFIX_WALK: usize = 512;

fuzz_target!(|data: &[u8]| {
    check_any(data);
    check_built(data);
});

fn check_any(data: &[u8]) {
    let whole = parse(data);
    match whole {
        Parsed::Done { client, consumed } => {
            assert!(consumed <= data.len() && consumed <= MAX_HEADER_LEN);
            assert!(
                consumed >= 15,
                "no header is shorter than PROXY UNKNOWN CRLF"
            );
            let own = &data[..consumed];
            assert_eq!(parse(own), whole, "re-parsed from its own bytes");
            let mut more = own.to_vec();
            more.extend_from_slice(b"\r\n\r\n\0\r\nQUIT\nPROXY ");
            assert_eq!(parse(&more), whole, "bytes after the header change nothing");
            for i in 0..consumed.min(PREFIX_WALK) {
                assert_eq!(parse(&own[..i]), Parsed::Incomplete, "prefix {i}");
            }
            if data[0] == b'P' {
                assert!(consumed <= V1_MAX_LEN);
                assert!(own.ends_with(b"\r\n"));
            }
            if let Some(c) = client
                && data[0] == b'P'
            {
                // a v1 header names its family, and its source is the client
                let text = std::str::from_utf8(own).expect("v1 headers are ASCII");
                let mut f = text.trim_end().split(' ').skip(1);
                let fam = f.next();
                assert_eq!(fam, Some(if c.is_ipv4() { "TCP4" } else { "TCP6" }));
                assert_eq!(
                    f.next().and_then(|a| a.parse::<IpAddr>().ok()),
                    Some(c.ip())
                );
            }
        }
        Parsed::Incomplete => {
            assert!(data.len() < MAX_HEADER_LEN);
            if data.first() == Some(&b'P') {
                assert!(data.len() < V1_MAX_LEN);
            }
        }
        Parsed::Malformed(why) => assert!(!why.is_empty()),
    }
    // over the prefixes: Incomplete, then one answer that longer prefixes keep
    let mut settled: Option<Parsed> = None;
    for i in 0..=data.len().min(PREFIX_WALK) {
        let p = parse(&data[..i]);
        match (settled, p) {
            (None, Parsed::Incomplete) => {}
            (None, p) => settled = Some(p),
            (Some(Parsed::Malformed(_)), Parsed::Malformed(_)) => {}
            (Some(s), p) => assert_eq!(s, p, "prefix {i} of {} bytes", data.len()),
        }
    }
    if let Some(s) = settled {
        match (s, whole) {
            (Parsed::Malformed(_), Parsed::Malformed(_)) => {}
            (s, w) => assert_eq!(s, w),
        }
    }
}

/// Takes bytes from the front of the input (zeros past its end).
struct Take<'a>(&'a [u8]);

impl Take<'_> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.bytes())
    }
}

fn check_built(data: &[u8]) {
    let mut t = Take(data);
    let kind = t.u8() % 6;
    let v4 = |t: &mut Take| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(t.bytes::<4>())), t.u16());
    let v6 = |t: &mut Take| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(t.bytes::<16>())), t.u16());
    let (header, want) = match kind {
        0 | 1 => {
            let (s, d) = if kind == 0 {
                (v4(&mut t), v4(&mut t))
            } else {
                (v6(&mut t), v6(&mut t))
            };
            (encode::v1(Some((s, d))), Some(s))
        }
        2 => (encode::v1(None), None),
        3 | 4 => {
            let (s, d) = if kind == 3 {
                (v4(&mut t), v4(&mut t))
            } else {
                (v6(&mut t), v6(&mut t))
            };
            // TLVs from the rest: each a type, a value length (< 64), the value
            let mut tlvs = Vec::new();
            for _ in 0..(t.u8() % 8) {
                let k = t.u8();
                let len = usize::from(t.u8() % 64);
                let v: Vec<u8> = (0..len).map(|_| t.u8()).collect();
                tlvs.extend(encode::tlv(k, &v));
            }
            (encode::v2(Some((s, d)), &tlvs), Some(s))
        }
        _ => (encode::v2(None, &[]), None),
    };
    let want = Parsed::Done {
        client: want,
        consumed: header.len(),
    };
    assert_eq!(parse(&header), want, "{header:?}");
    for i in 0..header.len() {
        assert_eq!(
            parse(&header[..i]),
            Parsed::Incomplete,
            "prefix {i} of {header:?}"
        );
    }
    // the rest of the input after the header: still the same header
    let mut with_rest = header.clone();
    with_rest.extend_from_slice(t.0);
    assert_eq!(parse(&with_rest), want);
}
