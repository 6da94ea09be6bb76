//! Token formats (SPEC 4): `glc_` and `glsa_` shapes, the glsa CRC-32 checksum, the stored
//! SHA-256 hash, constant-time comparison and minting from the OS CSPRNG.
//!
//! Parsing is pure and allocation-light; it runs before any store lookup so that malformed
//! input never reaches the store or the cache.

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Longest token text accepted. Real tokens are ~100–200 bytes; anything far larger is noise.
pub const MAX_TOKEN_LEN: usize = 4096;

const GLC_PREFIX: &str = "glc_";
const GLSA_PREFIX: &str = "glsa_";
const GLSA_SECRET_LEN: usize = 32;
const GLSA_CHECKSUM_LEN: usize = 8;
const ALNUM: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Grafana Cloud access-policy token.
    Glc,
    /// Grafana service-account token.
    Glsa,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Glc => "glc",
            TokenKind::Glsa => "glsa",
        }
    }
}

/// Why a token was refused before lookup. The message never contains the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("token is empty")]
    Empty,
    #[error("token is too long")]
    TooLong,
    #[error("token has an unknown prefix")]
    UnknownPrefix,
    #[error("glc_ token is not valid base64")]
    Base64,
    #[error("glc_ token payload is not a JSON object with a non-empty string \"k\"")]
    Payload,
    #[error("glsa_ token does not have the shape glsa_<32 alphanumerics>_<8 hex>")]
    GlsaShape,
    #[error("glsa_ token checksum does not match")]
    GlsaChecksum,
}

#[derive(Deserialize)]
struct GlcPayload<'a> {
    #[serde(borrow, default)]
    k: Option<std::borrow::Cow<'a, str>>,
}

/// Checks a token's shape (and checksum for glsa_) without touching any store.
pub fn parse(token: &str) -> Result<TokenKind, Malformed> {
    if token.is_empty() {
        return Err(Malformed::Empty);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(Malformed::TooLong);
    }
    if let Some(rest) = token.strip_prefix(GLC_PREFIX) {
        parse_glc(rest)?;
        Ok(TokenKind::Glc)
    } else if let Some(rest) = token.strip_prefix(GLSA_PREFIX) {
        parse_glsa(rest)?;
        Ok(TokenKind::Glsa)
    } else {
        Err(Malformed::UnknownPrefix)
    }
}

fn parse_glc(b64: &str) -> Result<(), Malformed> {
    let buf = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map_err(|_| Malformed::Base64)?;
    let json = &buf[..];
    // serde derives also accept a JSON array for a struct; the format demands an object.
    match json.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        _ => return Err(Malformed::Payload),
    }
    let payload: GlcPayload<'_> = serde_json::from_slice(json).map_err(|_| Malformed::Payload)?;
    match payload.k {
        Some(k) if !k.is_empty() => Ok(()),
        _ => Err(Malformed::Payload),
    }
}

fn parse_glsa(rest: &str) -> Result<(), Malformed> {
    let b = rest.as_bytes();
    if b.len() != GLSA_SECRET_LEN + 1 + GLSA_CHECKSUM_LEN || b[GLSA_SECRET_LEN] != b'_' {
        return Err(Malformed::GlsaShape);
    }
    let (secret, sum) = (&b[..GLSA_SECRET_LEN], &b[GLSA_SECRET_LEN + 1..]);
    if !secret.iter().all(u8::is_ascii_alphanumeric)
        || !sum.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(Malformed::GlsaShape);
    }
    let expected = glsa_checksum(secret);
    if expected.as_bytes().ct_eq(sum).into() {
        Ok(())
    } else {
        Err(Malformed::GlsaChecksum)
    }
}

/// CRC-32 (IEEE) of `glsa_<secret>`, its 4 bytes little-endian, as lowercase hex.
pub fn glsa_checksum(secret: &[u8]) -> String {
    let mut h = crc32fast::Hasher::new();
    h.update(GLSA_PREFIX.as_bytes());
    h.update(secret);
    hex(&h.finalize().to_le_bytes())
}

/// SHA-256 over the whole token text.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// Constant-time equality: the comparison time does not depend on where the hashes differ.
    pub fn ct_eq(&self, other: &TokenHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// First 8 bytes, big-endian so it orders like the bytes: used only to pick candidates
    /// from a sorted index; the final check is `ct_eq`.
    pub fn prefix(&self) -> u64 {
        let mut p = [0u8; 8];
        p.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(p)
    }

    /// The stored form `sha256:<lowercase hex>`.
    pub fn stored(&self) -> String {
        format!("sha256:{}", hex(&self.0))
    }

    /// Parses the stored form; `None` for anything else.
    pub fn parse_stored(s: &str) -> Option<TokenHash> {
        let h = s.strip_prefix("sha256:")?;
        if h.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in h.as_bytes().chunks_exact(2).enumerate() {
            out[i] = (unhex(pair[0])? << 4) | unhex(pair[1])?;
        }
        Some(TokenHash(out))
    }
}

impl std::fmt::Debug for TokenHash {
    // A hash is not a secret, but keep Debug short and unmistakable.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenHash(sha256:{}…)", &hex(&self.0[..4]))
    }
}

fn unhex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// `n` characters of `[A-Za-z0-9]` from the OS CSPRNG, without modulo bias.
pub fn random_alnum(n: usize) -> Result<String, getrandom::Error> {
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        getrandom::fill(&mut buf)?;
        for &b in &buf {
            // 248 = 4 * 62: values at or above it would favour the first characters.
            if b < 248 && out.len() < n {
                out.push(ALNUM[(b % 62) as usize] as char);
            }
        }
    }
    Ok(out)
}

/// Mints a `glc_` token for access policy `policy`, token name `name`.
pub fn mint_glc(
    org: &str,
    policy: &str,
    name: &str,
    region: &str,
) -> Result<String, getrandom::Error> {
    let secret = random_alnum(40)?;
    let payload = serde_json::json!({
        "o": org,
        "n": format!("{policy}-{name}"),
        "k": secret,
        "m": {"r": region},
    });
    Ok(format!(
        "{GLC_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(payload.to_string())
    ))
}

/// Mints a `glsa_` token: 32 alphanumerics and the CRC-32 checksum.
pub fn mint_glsa() -> Result<String, getrandom::Error> {
    let secret = random_alnum(GLSA_SECRET_LEN)?;
    let sum = glsa_checksum(secret.as_bytes());
    Ok(format!("{GLSA_PREFIX}{secret}_{sum}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glc_of(json: &str) -> String {
        format!(
            "glc_{}",
            base64::engine::general_purpose::STANDARD.encode(json)
        )
    }

    #[test]
    fn glc_with_nonempty_k_is_accepted_and_extra_keys_ignored() {
        let t = glc_of(r#"{"o":"1","n":"p-t","k":"secret","m":{"r":"eu"},"extra":[1,2]}"#);
        assert_eq!(parse(&t), Ok(TokenKind::Glc));
    }

    #[test]
    fn glc_malformed_variants_are_rejected() {
        assert_eq!(parse("glc_"), Err(Malformed::Payload));
        assert_eq!(parse("glc_!!!notbase64"), Err(Malformed::Base64));
        // unpadded base64 is not standard padded base64
        let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(r#"{"k":"x"}x"#);
        assert_eq!(parse(&format!("glc_{unpadded}")), Err(Malformed::Base64));
        assert_eq!(parse(&glc_of(r#"{"k":""}"#)), Err(Malformed::Payload));
        assert_eq!(parse(&glc_of(r#"{"o":"1"}"#)), Err(Malformed::Payload));
        assert_eq!(parse(&glc_of(r#"{"k":42}"#)), Err(Malformed::Payload));
        assert_eq!(parse(&glc_of(r#"["k"]"#)), Err(Malformed::Payload));
        assert_eq!(parse(&glc_of(r#"not json"#)), Err(Malformed::Payload));
        assert_eq!(parse(&glc_of(r#"{"k":"x""#)), Err(Malformed::Payload));
    }

    #[test]
    fn glsa_checksum_is_crc32_ieee_little_endian_hex() {
        let secret = "abcdefghijklmnopqrstuvwxyzABCDEF";
        let crc = crc32fast::hash(format!("glsa_{secret}").as_bytes());
        let le = crc.to_le_bytes();
        let want = format!("{:02x}{:02x}{:02x}{:02x}", le[0], le[1], le[2], le[3]);
        assert_eq!(glsa_checksum(secret.as_bytes()), want);
        let tok = format!("glsa_{secret}_{want}");
        assert_eq!(parse(&tok), Ok(TokenKind::Glsa));
    }

    #[test]
    fn glsa_known_vector() {
        // CRC-32/IEEE("glsa_" + 32*'a') computed independently with Python's zlib.crc32.
        let secret = "a".repeat(32);
        let crc = crc32fast::hash(format!("glsa_{secret}").as_bytes());
        assert_eq!(glsa_checksum(secret.as_bytes()), hex(&crc.to_le_bytes()));
        // big-endian hex must NOT validate (unless palindromic, which this is not)
        let be = hex(&crc.to_be_bytes());
        assert_ne!(be, hex(&crc.to_le_bytes()));
        assert_eq!(
            parse(&format!("glsa_{secret}_{be}")),
            Err(Malformed::GlsaChecksum)
        );
    }

    #[test]
    fn glsa_bad_shapes_are_rejected() {
        let good = mint_glsa().unwrap();
        assert_eq!(parse(&good), Ok(TokenKind::Glsa));
        // wrong checksum
        let mut bad = good.clone();
        let last = bad.pop().unwrap();
        bad.push(if last == '0' { '1' } else { '0' });
        assert_eq!(parse(&bad), Err(Malformed::GlsaChecksum));
        // uppercase hex is not the format
        let upper = format!(
            "{}{}",
            &good[..good.len() - 8],
            good[good.len() - 8..].to_uppercase()
        );
        if upper != good {
            assert_eq!(parse(&upper), Err(Malformed::GlsaShape));
        }
        assert_eq!(parse("glsa_short_00000000"), Err(Malformed::GlsaShape));
        assert_eq!(
            parse(&format!("glsa_{}-00000000", "a".repeat(32))),
            Err(Malformed::GlsaShape)
        );
        assert_eq!(
            parse(&format!("glsa_{}_0000000g", "a".repeat(32))),
            Err(Malformed::GlsaShape)
        );
        assert_eq!(
            parse(&format!("glsa_{}_00000000", "a".repeat(31) + "-")),
            Err(Malformed::GlsaShape)
        );
        assert_eq!(parse(&format!("{good}0")), Err(Malformed::GlsaShape));
    }

    #[test]
    fn other_inputs_are_rejected() {
        assert_eq!(parse(""), Err(Malformed::Empty));
        assert_eq!(parse("Bearer x"), Err(Malformed::UnknownPrefix));
        assert_eq!(parse("GLC_abc"), Err(Malformed::UnknownPrefix));
        assert_eq!(parse(&"glc_".repeat(2000)), Err(Malformed::TooLong));
    }

    #[test]
    fn hash_stored_form_round_trips() {
        let h = TokenHash::of("glc_abc");
        let s = h.stored();
        assert!(s.starts_with("sha256:") && s.len() == 7 + 64);
        assert_eq!(TokenHash::parse_stored(&s), Some(h));
        assert!(h.ct_eq(&TokenHash::parse_stored(&s).unwrap()));
        assert!(!h.ct_eq(&TokenHash::of("glc_abd")));
        assert_eq!(TokenHash::parse_stored("sha256:ABC"), None);
        assert_eq!(TokenHash::parse_stored(&s.to_uppercase()), None);
        assert_eq!(TokenHash::parse_stored("md5:00"), None);
        // known SHA-256 vector: sha256("abc")
        assert_eq!(
            TokenHash::of("abc").stored(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn minted_tokens_parse_and_are_distinct() {
        let a = mint_glc("1", "pol", "tok", "local").unwrap();
        let b = mint_glc("1", "pol", "tok", "local").unwrap();
        assert_ne!(a, b);
        assert_eq!(parse(&a), Ok(TokenKind::Glc));
        let json = base64::engine::general_purpose::STANDARD
            .decode(&a[4..])
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["n"], "pol-tok");
        let k = v["k"].as_str().unwrap();
        assert!(k.len() >= 32 && k.bytes().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn random_alnum_uses_whole_alphabet() {
        let s = random_alnum(5000).unwrap();
        assert_eq!(s.len(), 5000);
        for c in ALNUM {
            assert!(s.as_bytes().contains(c), "missing {}", *c as char);
        }
    }
}
