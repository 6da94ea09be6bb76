//! The PROXY protocol (HAProxy's, versions 1 and 2) on listeners with `proxy_protocol: true`: a
//! load balancer that forwards TCP (AWS NLB, HAProxy `send-proxy-v2`, nginx stream
//! `proxy_protocol on`) writes one header before the client's bytes, naming the client's
//! address. Written by hand: a loop over a bounded buffer, no recursion, no allocation beyond
//! the caller's buffer, no panic on any input.
//!
//! - **v1** (text): `PROXY TCP4|TCP6|UNKNOWN <src> <dst> <sport> <dport>\r\n`, at most
//!   [`V1_MAX_LEN`] (107) bytes with the CRLF. Read strictly: single spaces, addresses of the
//!   family named (`TCP4` dotted quads without leading zeros, `TCP6` as Rust reads IPv6),
//!   ports decimal 0-65535 without sign or leading zero, printable ASCII only. `UNKNOWN` may be
//!   followed by anything printable up to the CRLF (the spec says to ignore it): the peer stays
//!   the client.
//! - **v2** (binary): the 12-byte signature, version 2, command `LOCAL` (the peer stays the
//!   client, the rest of the block is ignored) or `PROXY`. For `PROXY`, `TCP over IPv4` (`0x11`)
//!   and `TCP over IPv6` (`0x21`) carry the client; `UNSPEC` (`0x00`), `UDP` (`0x12`, `0x22`)
//!   and `UNIX` (`0x31`, `0x32`) are accepted and ignored like `LOCAL` (the spec lets a receiver
//!   use the real endpoints for them); any other family byte is refused. The address block
//!   must be long enough for its family. TLVs after the addresses are skipped, but their
//!   framing (type, 16-bit length, value) must add up to the block. The length after the
//!   16-byte fixed part is at most [`V2_MAX_BLOCK_LEN`] (4096) bytes, so a whole header is at
//!   most [`MAX_HEADER_LEN`] (4112) bytes.

use bytes::{Buf, Bytes};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Longest v1 header, `\r\n` included (the spec's bound).
pub const V1_MAX_LEN: usize = 107;
/// Longest v2 address block + TLVs accepted (the spec allows 65535; real senders use well under
/// 1 KiB: AWS NLB's VPC endpoint TLV, HAProxy's SSL TLVs).
pub const V2_MAX_BLOCK_LEN: usize = 4096;
/// Longest header of either version.
pub const MAX_HEADER_LEN: usize = 16 + V2_MAX_BLOCK_LEN;

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// What the bytes received so far are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A valid start of a header: more bytes are needed.
    Incomplete,
    /// A whole header of `consumed` bytes (the bytes after it are the client's). `client`:
    /// the address it carries; `None` for v1 `UNKNOWN`, v2 `LOCAL` and the v2 families that
    /// carry no TCP client (the peer is the client).
    Done {
        client: Option<SocketAddr>,
        consumed: usize,
    },
    /// Not a PROXY protocol header, or a broken one: the connection is to be closed.
    Malformed(&'static str),
}

/// Reads the header at the start of `buf`. Any bytes may follow it; a `Done` is decided by the
/// header's bytes alone, so a longer `buf` gives the same answer, and every strict prefix of a
/// header is `Incomplete`.
pub fn parse(buf: &[u8]) -> Parsed {
    match buf.first() {
        None => Parsed::Incomplete,
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Parsed::Malformed("not a PROXY protocol header"),
    }
}

fn parse_v1(buf: &[u8]) -> Parsed {
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] != V1_PREFIX[..n] {
        return Parsed::Malformed("not a PROXY protocol header");
    }
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(lf) = window.iter().position(|b| *b == b'\n') else {
        // no end yet: refuse early what can never become a header
        let body = &window[n..];
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if !body.iter().all(|b| (0x20..=0x7e).contains(b)) {
            return Parsed::Malformed("v1: a byte that is not printable ASCII");
        }
        if window.len() >= V1_MAX_LEN {
            return Parsed::Malformed("v1: no CRLF within 107 bytes");
        }
        return Parsed::Incomplete;
    };
    // "PROXY " + at least one byte + "\r\n"
    if lf < V1_PREFIX.len() + 1 || window[lf - 1] != b'\r' {
        return Parsed::Malformed("v1: the line does not end with CRLF");
    }
    let line = &window[V1_PREFIX.len()..lf - 1];
    if !line.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Parsed::Malformed("v1: a byte that is not printable ASCII");
    }
    let consumed = lf + 1;
    if let Some(rest) = line.strip_prefix(b"UNKNOWN") {
        // whatever follows UNKNOWN (after a space) is ignored
        return if rest.is_empty() || rest[0] == b' ' {
            Parsed::Done {
                client: None,
                consumed,
            }
        } else {
            Parsed::Malformed("v1: unknown protocol")
        };
    }
    let mut fields = line.split(|b| *b == b' ');
    let (Some(proto), Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Parsed::Malformed("v1: not five fields separated by single spaces");
    };
    let (src, _dst) = match proto {
        b"TCP4" => match (v4(src), v4(dst)) {
            (Some(s), Some(d)) => (IpAddr::V4(s), IpAddr::V4(d)),
            _ => return Parsed::Malformed("v1: TCP4 with an address that is not IPv4"),
        },
        b"TCP6" => match (v6(src), v6(dst)) {
            (Some(s), Some(d)) => (IpAddr::V6(s), IpAddr::V6(d)),
            _ => return Parsed::Malformed("v1: TCP6 with an address that is not IPv6"),
        },
        _ => return Parsed::Malformed("v1: unknown protocol"),
    };
    match (port(sport), port(dport)) {
        (Some(sport), Some(_)) => Parsed::Done {
            client: Some(SocketAddr::new(src, sport)),
            consumed,
        },
        _ => Parsed::Malformed("v1: a port that is not a decimal from 0 to 65535"),
    }
}

fn v4(s: &[u8]) -> Option<Ipv4Addr> {
    // Rust's parser takes exactly four decimal octets and refuses leading zeros
    std::str::from_utf8(s).ok()?.parse().ok()
}

fn v6(s: &[u8]) -> Option<Ipv6Addr> {
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// `0`, or 1-5 digits without a leading zero, at most 65535.
fn port(s: &[u8]) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || (s.len() > 1 && s[0] == b'0') {
        return None;
    }
    let mut v: u32 = 0;
    for b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(b - b'0');
    }
    u16::try_from(v).ok()
}

const CMD_LOCAL: u8 = 0x0;
const CMD_PROXY: u8 = 0x1;

fn parse_v2(buf: &[u8]) -> Parsed {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Parsed::Malformed("not a PROXY protocol header");
    }
    let Some(&ver_cmd) = buf.get(12) else {
        return Parsed::Incomplete;
    };
    if ver_cmd >> 4 != 2 {
        return Parsed::Malformed("v2: unsupported version");
    }
    let cmd = ver_cmd & 0x0f;
    if cmd != CMD_LOCAL && cmd != CMD_PROXY {
        return Parsed::Malformed("v2: unknown command");
    }
    let Some(&fam) = buf.get(13) else {
        return Parsed::Incomplete;
    };
    // LOCAL: the family is ignored, whatever it is
    if cmd == CMD_PROXY && !matches!(fam, 0x00 | 0x11 | 0x12 | 0x21 | 0x22 | 0x31 | 0x32) {
        return Parsed::Malformed("v2: unknown address family or transport");
    }
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        return Parsed::Incomplete;
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len > V2_MAX_BLOCK_LEN {
        return Parsed::Malformed("v2: header longer than 4112 bytes");
    }
    let consumed = 16 + len;
    let Some(block) = buf.get(16..consumed) else {
        return Parsed::Incomplete;
    };
    let ignored = Parsed::Done {
        client: None,
        consumed,
    };
    if cmd == CMD_LOCAL {
        return ignored;
    }
    // the address block each family needs
    let need = match fam {
        0x00 => 0,
        0x11 | 0x12 => 12,
        0x21 | 0x22 => 36,
        _ => 216,
    };
    if block.len() < need {
        return Parsed::Malformed("v2: address block shorter than its family needs");
    }
    let client = match fam {
        0x11 => {
            let ip = Ipv4Addr::new(block[0], block[1], block[2], block[3]);
            SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([block[8], block[9]]))
        }
        0x21 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&block[..16]);
            let ip = Ipv6Addr::from(a);
            SocketAddr::new(IpAddr::V6(ip), u16::from_be_bytes([block[32], block[33]]))
        }
        // UNSPEC, UDP, UNIX: accepted, the peer stays the client
        _ => return ignored,
    };
    if !tlvs_well_framed(&block[need..]) {
        return Parsed::Malformed("v2: TLVs do not add up to the header's length");
    }
    Parsed::Done {
        client: Some(client),
        consumed,
    }
}

/// Type (1 byte), length (2, big-endian), value: one after another to the block's end.
fn tlvs_well_framed(mut rest: &[u8]) -> bool {
    while !rest.is_empty() {
        let (Some(&hi), Some(&lo)) = (rest.get(1), rest.get(2)) else {
            return false;
        };
        let end = 3 + usize::from(u16::from_be_bytes([hi, lo]));
        match rest.get(end..) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    true
}

/// Why a header could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// Not a header, a broken one, or the connection ended or failed before a whole one.
    Malformed(&'static str),
}

/// The header that starts the stream: the address it carries (`None`: the peer is the
/// client), and the bytes read after it, which belong to the client's stream. Reads in chunks
/// into a buffer of 256 bytes that grows (×4) only while a v2 header needs it, never past
/// [`MAX_HEADER_LEN`]. The caller bounds the time.
pub async fn read_header<S: AsyncRead + Unpin>(
    io: &mut S,
) -> Result<(Option<SocketAddr>, Bytes), ReadError> {
    let mut buf = vec![0u8; 256];
    let mut filled = 0;
    loop {
        match parse(&buf[..filled]) {
            Parsed::Done { client, consumed } => {
                buf.truncate(filled);
                let mut rest = Bytes::from(buf);
                rest.advance(consumed);
                return Ok((client, rest));
            }
            Parsed::Malformed(why) => return Err(ReadError::Malformed(why)),
            Parsed::Incomplete => {}
        }
        if filled == buf.len() {
            if buf.len() >= MAX_HEADER_LEN {
                // parse refuses a header this long before it gets here
                return Err(ReadError::Malformed("header too long"));
            }
            buf.resize((buf.len() * 4).min(MAX_HEADER_LEN), 0);
        }
        match io.read(&mut buf[filled..]).await {
            Ok(0) => {
                return Err(ReadError::Malformed(if filled == 0 {
                    "connection closed before a PROXY header"
                } else {
                    "connection closed inside the PROXY header"
                }));
            }
            Ok(n) => filled += n,
            Err(_) => return Err(ReadError::Malformed("read error inside the PROXY header")),
        }
    }
}

/// A stream whose first bytes are `prefix` (read past the PROXY header), then `inner`'s.
/// Writes go to `inner` unchanged.
pub struct PrefixedStream<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> PrefixedStream<S> {
    pub fn new(prefix: Bytes, inner: S) -> PrefixedStream<S> {
        PrefixedStream { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PrefixedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PrefixedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Builds headers (tests and the fuzz target).
pub mod encode {
    use std::net::SocketAddr;

    /// A v1 header for `src` → `dst` (same family), or `PROXY UNKNOWN\r\n` when `None`.
    pub fn v1(addrs: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
        match addrs {
            None => b"PROXY UNKNOWN\r\n".to_vec(),
            Some((s, d)) => {
                let proto = if s.is_ipv4() { "TCP4" } else { "TCP6" };
                format!(
                    "PROXY {proto} {} {} {} {}\r\n",
                    s.ip(),
                    d.ip(),
                    s.port(),
                    d.port()
                )
                .into_bytes()
            }
        }
    }

    /// A v2 `PROXY` header over TCP for `src` → `dst` (same family) followed by `tlvs` (raw
    /// bytes), or a `LOCAL` one when `None`.
    pub fn v2(addrs: Option<(SocketAddr, SocketAddr)>, tlvs: &[u8]) -> Vec<u8> {
        let mut h = super::V2_SIGNATURE.to_vec();
        let mut block = Vec::new();
        match addrs {
            None => h.extend([0x20, 0x00]),
            Some((SocketAddr::V4(s), SocketAddr::V4(d))) => {
                h.extend([0x21, 0x11]);
                block.extend(s.ip().octets());
                block.extend(d.ip().octets());
                block.extend(s.port().to_be_bytes());
                block.extend(d.port().to_be_bytes());
            }
            Some((s, d)) => {
                let six = |a: SocketAddr| match a.ip() {
                    std::net::IpAddr::V6(v) => v.octets(),
                    std::net::IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
                };
                h.extend([0x21, 0x21]);
                block.extend(six(s));
                block.extend(six(d));
                block.extend(s.port().to_be_bytes());
                block.extend(d.port().to_be_bytes());
            }
        }
        block.extend_from_slice(tlvs);
        let len = u16::try_from(block.len()).unwrap_or(u16::MAX);
        h.extend(len.to_be_bytes());
        h.extend(block);
        h
    }

    /// One TLV: type, 16-bit length, value.
    pub fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
        let mut t = vec![kind];
        t.extend(u16::try_from(value.len()).unwrap_or(u16::MAX).to_be_bytes());
        t.extend_from_slice(value);
        t
    }
}

#[cfg(test)]
mod tests {
    use super::encode;
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn done(client: Option<&str>, consumed: usize) -> Parsed {
        Parsed::Done {
            client: client.map(sa),
            consumed,
        }
    }

    fn malformed(p: Parsed) -> bool {
        matches!(p, Parsed::Malformed(_))
    }

    /// Every strict prefix is Incomplete, the whole is `want`, and bytes after it change nothing.
    fn check_whole(h: &[u8], want: Parsed) {
        for i in 0..h.len() {
            assert_eq!(parse(&h[..i]), Parsed::Incomplete, "prefix {i} of {h:?}");
        }
        assert_eq!(parse(h), want, "{h:?}");
        let mut more = h.to_vec();
        more.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n\0\xff");
        assert_eq!(parse(&more), want, "{h:?} + request");
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let h = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\n";
        check_whole(h, done(Some("192.0.2.7:56324"), h.len()));
        let h = b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 0\r\n";
        check_whole(h, done(Some("[2001:db8::7]:65535"), h.len()));
        let h = b"PROXY TCP6 ::ffff:192.0.2.7 ::1 1 2\r\n";
        check_whole(h, done(Some("[::ffff:192.0.2.7]:1"), h.len()));
        check_whole(b"PROXY UNKNOWN\r\n", done(None, 15));
        let h = b"PROXY UNKNOWN ffff:f...:ffff ffff:f...:ffff 65535 65535\r\n";
        check_whole(h, done(None, h.len()));
        // the longest TCP6 header, and the spec's worst case (UNKNOWN with both addresses)
        let h = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        check_whole(
            h,
            done(Some("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"), 104),
        );
        let h = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(h.len(), V1_MAX_LEN);
        check_whole(h, done(None, V1_MAX_LEN));
    }

    #[test]
    fn v1_strictness() {
        for bad in [
            &b"PROXY TCP4  192.0.2.7 10.0.0.1 1 2\r\n"[..],
            b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2 \r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 1\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2 3\r\n",
            b"PROXY  TCP4 192.0.2.7 10.0.0.1 1 2\r\n",
            b"PROXY tcp4 192.0.2.7 10.0.0.1 1 2\r\n",
            b"PROXY TCP5 192.0.2.7 10.0.0.1 1 2\r\n",
            b"PROXY UDP4 192.0.2.7 10.0.0.1 1 2\r\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY \r\n",
            b"PROXY\r\n",
            // the family named
            b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 ::1 1 2\r\n",
            b"PROXY TCP6 192.0.2.7 ::1 1 2\r\n",
            b"PROXY TCP6 ::1 10.0.0.1 1 2\r\n",
            // addresses
            b"PROXY TCP4 192.0.2.07 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 192.0.2 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.256 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7/32 10.0.0.1 1 2\r\n",
            b"PROXY TCP6 [::1] ::1 1 2\r\n",
            b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
            // ports
            b"PROXY TCP4 192.0.2.7 10.0.0.1 65536 2\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 1 99999\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 -1 2\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 +1 2\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 01 2\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 1 0x2\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 1 \r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 100000 2\r\n",
            // line ends
            b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2\rx\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2\r\r\n",
            b"PROXY UNKNOWN \x01\r\n",
            b"PROXY UNKNOWN \xff\r\n",
            // not PROXY at all
            b"GET / HTTP/1.1\r\n\r\n",
            b"proxy TCP4 192.0.2.7 10.0.0.1 1 2\r\n",
            b"PROXX",
        ] {
            assert!(malformed(parse(bad)), "{:?}", String::from_utf8_lossy(bad));
        }
        // early refusals, before any CRLF
        assert!(malformed(parse(b"PROXY TCP4 1.2.3.4\x00")));
        assert!(malformed(parse(b"PROXY TCP4 1.2.3.4\r ")));
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r"),
            Parsed::Incomplete
        );
        assert_eq!(parse(b"PROX"), Parsed::Incomplete);
        assert_eq!(parse(b""), Parsed::Incomplete);
        assert_eq!(parse(b"P"), Parsed::Incomplete);
    }

    #[test]
    fn v1_oversize() {
        // 106 bytes without a CRLF: still possibly a header; 107: never
        let mut h = b"PROXY UNKNOWN ".to_vec();
        h.resize(106, b'a');
        assert_eq!(parse(&h), Parsed::Incomplete);
        h.push(b'a');
        assert!(malformed(parse(&h)));
        // a CRLF past byte 107 is not looked for
        h.extend_from_slice(b"\r\n");
        assert!(malformed(parse(&h)));
        // 105 + CRLF = 107: accepted
        let mut h = b"PROXY UNKNOWN ".to_vec();
        h.resize(105, b'a');
        h.extend_from_slice(b"\r\n");
        assert_eq!(parse(&h), done(None, 107));
        // 106 + CR: the LF would be byte 108
        let mut h = b"PROXY UNKNOWN ".to_vec();
        h.resize(106, b'a');
        h.extend_from_slice(b"\r\n");
        assert!(malformed(parse(&h)));
    }

    #[test]
    fn v2_shapes() {
        let s4 = sa("192.0.2.7:56324");
        let d4 = sa("10.0.0.1:443");
        let h = encode::v2(Some((s4, d4)), &[]);
        assert_eq!(h.len(), 28);
        check_whole(&h, done(Some("192.0.2.7:56324"), 28));
        let s6 = sa("[2001:db8::7]:1");
        let d6 = sa("[2001:db8::1]:65535");
        let h = encode::v2(Some((s6, d6)), &[]);
        assert_eq!(h.len(), 52);
        check_whole(&h, done(Some("[2001:db8::7]:1"), 52));
        // LOCAL, with or without a block (ignored, whatever the family byte says)
        let h = encode::v2(None, &[]);
        check_whole(&h, done(None, 16));
        let mut h = encode::v2(Some((s4, d4)), &[]);
        h[12] = 0x20;
        check_whole(&h, done(None, 28));
        h[13] = 0xff;
        check_whole(&h, done(None, 28));
        // TLVs: AWS's VPC endpoint ID (0xEA), a NOOP, an empty one; skipped
        let mut tlvs = encode::tlv(0xea, b"\x01vpce-0123456789abcdef0");
        tlvs.extend(encode::tlv(0x04, &[0; 5]));
        tlvs.extend(encode::tlv(0x02, b""));
        let h = encode::v2(Some((s4, d4)), &tlvs);
        check_whole(&h, done(Some("192.0.2.7:56324"), h.len()));
        let h = encode::v2(Some((s6, d6)), &tlvs);
        check_whole(&h, done(Some("[2001:db8::7]:1"), h.len()));
    }

    /// A v2 PROXY header with this family byte and a block of `len` zero bytes.
    fn v2_raw(fam: u8, len: usize) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend([0x21, fam]);
        h.extend(u16::try_from(len).unwrap().to_be_bytes());
        h.resize(16 + len, 0);
        h
    }

    #[test]
    fn v2_families_accepted_but_ignored() {
        for (fam, len) in [
            (0x00, 0),
            (0x00, 7),
            (0x12, 12),
            (0x22, 36),
            (0x31, 216),
            (0x32, 216),
        ] {
            let h = v2_raw(fam, len);
            check_whole(&h, done(None, 16 + len));
        }
    }

    #[test]
    fn v2_refusals() {
        let good = encode::v2(Some((sa("192.0.2.7:1"), sa("10.0.0.1:2"))), &[]);
        // signature
        for i in 0..12 {
            let mut h = good.clone();
            h[i] ^= 0x40;
            assert!(malformed(parse(&h)), "signature byte {i}");
            assert!(malformed(parse(&h[..=i])), "early, byte {i}");
        }
        // version 1 and 3 in the binary form; commands 2..15
        for vc in [0x11, 0x31, 0x01, 0xf1, 0x22, 0x2f] {
            let mut h = good.clone();
            h[12] = vc;
            assert!(malformed(parse(&h)), "ver/cmd {vc:#x}");
            assert!(malformed(parse(&h[..13])), "early ver/cmd {vc:#x}");
        }
        // families and transports outside the spec
        for fam in [0x01, 0x02, 0x10, 0x13, 0x20, 0x23, 0x30, 0x33, 0x41, 0xff] {
            let mut h = good.clone();
            h[13] = fam;
            assert!(malformed(parse(&h)), "family {fam:#x}");
            assert!(malformed(parse(&h[..14])), "early family {fam:#x}");
        }
        // blocks too short for the family
        for (fam, len) in [(0x11, 11), (0x21, 35), (0x21, 12), (0x12, 0), (0x31, 215)] {
            assert!(malformed(parse(&v2_raw(fam, len))), "{fam:#x} {len}");
        }
        // TLV framing that does not add up
        for tlvs in [&[0x04][..], &[0x04, 0x00], &[0x04, 0x00, 0x02, 0x00]] {
            let h = encode::v2(Some((sa("192.0.2.7:1"), sa("10.0.0.1:2"))), tlvs);
            assert!(malformed(parse(&h)), "{tlvs:?}");
        }
    }

    #[test]
    fn v2_size_bound() {
        // exactly the bound: accepted
        let tlv = encode::tlv(0x04, &vec![0; V2_MAX_BLOCK_LEN - 12 - 3]);
        let h = encode::v2(Some((sa("192.0.2.7:1"), sa("10.0.0.1:2"))), &tlv);
        assert_eq!(h.len(), MAX_HEADER_LEN);
        assert_eq!(parse(&h), done(Some("192.0.2.7:1"), MAX_HEADER_LEN));
        // one byte more: refused as soon as the length is read
        let tlv = encode::tlv(0x04, &vec![0; V2_MAX_BLOCK_LEN - 12 - 2]);
        let h = encode::v2(Some((sa("192.0.2.7:1"), sa("10.0.0.1:2"))), &tlv);
        assert!(malformed(parse(&h[..16])));
        let mut h = v2_raw(0x11, 12);
        h[14..16].copy_from_slice(&[0xff, 0xff]);
        assert!(malformed(parse(&h[..16])));
    }

    #[test]
    fn no_panic_on_short_or_odd_inputs() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..300 {
            for start in [
                &b""[..],
                b"PROXY ",
                b"PROXY TCP4 ",
                &V2_SIGNATURE,
                b"\r\n\r\n\0\r\nQUIT\n\x21",
            ] {
                let mut v = start.to_vec();
                for _ in 0..len {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    v.push(x as u8);
                }
                if let Parsed::Done { consumed, .. } = parse(&v) {
                    assert!(consumed <= v.len());
                }
            }
        }
    }

    /// Feeds `chunks` one read at a time.
    struct Chunks(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(mut c) = self.0.pop_front() {
                let n = c.len().min(buf.remaining());
                buf.put_slice(&c[..n]);
                if n < c.len() {
                    self.0.push_front(c.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// The header read whole, however it arrives, and every byte after it replayed.
    #[test]
    fn leftover_bytes_are_kept_at_every_split() {
        let req = b"GET /x HTTP/1.1\r\nhost: y\r\n\r\n".repeat(20);
        let s = sa("192.0.2.7:1");
        let d = sa("10.0.0.1:2");
        let big_tlv = encode::tlv(0x04, &[7u8; 1500]);
        for header in [
            encode::v1(Some((s, d))),
            encode::v1(None),
            encode::v2(Some((s, d)), &[]),
            encode::v2(None, &[]),
            encode::v2(Some((s, d)), &big_tlv),
        ] {
            let mut all = header.clone();
            all.extend_from_slice(&req);
            for cut in (1..all.len())
                .step_by(7)
                .chain([header.len(), header.len() + 1])
            {
                let chunks = vec![all[..cut].to_vec(), all[cut..].to_vec()];
                let mut io = PrefixedStream::new(Bytes::new(), Chunks(chunks.into()));
                let (client, left) = run(read_header(&mut io)).unwrap();
                assert_eq!(
                    client.is_some(),
                    header != encode::v1(None) && header.len() != 16
                );
                // the leftover, then the rest of the stream: exactly the request
                let mut rest = PrefixedStream::new(left, io);
                let mut got = Vec::new();
                run(rest.read_to_end(&mut got)).unwrap();
                assert_eq!(got, req, "header {} bytes, cut at {cut}", header.len());
            }
        }
    }

    #[test]
    fn read_header_errors() {
        let read = |chunks: Vec<&[u8]>| {
            let mut io = Chunks(chunks.into_iter().map(|c| c.to_vec()).collect());
            run(read_header(&mut io))
        };
        assert!(read(vec![]).is_err());
        assert!(read(vec![b"PROXY TCP4 1.2.3.4"]).is_err());
        assert!(read(vec![b"GET / HTTP/1.1\r\n\r\n"]).is_err());
        assert!(read(vec![&[b'a'; 5000]]).is_err());
        let mut h = V2_SIGNATURE.to_vec();
        h.extend([0x21, 0x11, 0x10, 0x01]);
        h.resize(10_000, 0);
        assert!(read(vec![&h]).is_err());
        // a small read buffer on the caller's side does not matter: one byte at a time
        let h = encode::v2(Some((sa("192.0.2.7:1"), sa("10.0.0.1:2"))), &[0x04, 0, 0]);
        let ones: Vec<&[u8]> = h.chunks(1).collect();
        assert_eq!(read(ones).unwrap().0, Some(sa("192.0.2.7:1")));
    }

    #[test]
    fn prefixed_stream_respects_small_buffers() {
        let mut io = PrefixedStream::new(
            Bytes::from_static(b"abcdef"),
            Chunks(vec![b"gh".to_vec()].into()),
        );
        let mut out = Vec::new();
        let mut b = [0u8; 4];
        loop {
            let n = run(io.read(&mut b)).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&b[..n]);
        }
        assert_eq!(out, b"abcdefgh");
    }
}
