//! The Go library functions whose verdicts decide whether Loki accepts a query: `strconv`
//! (`ParseFloat`, `Atoi`, `Unquote` as Prometheus copies it), `time.ParseDuration`,
//! Prometheus' `model.ParseDuration`, `humanize.ParseBytes`, the Unicode classes of Go's
//! `text/scanner`, and Go RE2 regex syntax. Only acceptance matters here, values do not.

use regex_syntax::ast::{self, Ast};
use regex_syntax::hir::{Hir, HirKind, Look};
use std::borrow::Cow;
use std::sync::OnceLock;

/// Sorted, non-overlapping ranges of a Unicode general category, taken from `regex-syntax`.
fn category(name: &str) -> Vec<(char, char)> {
    let hir = regex_syntax::Parser::new()
        .parse(&format!(r"\p{{{name}}}"))
        .expect("a Unicode category regex-syntax knows");
    match hir.kind() {
        HirKind::Class(regex_syntax::hir::Class::Unicode(c)) => {
            c.ranges().iter().map(|r| (r.start(), r.end())).collect()
        }
        _ => unreachable!("\\p{{..}} is a class"),
    }
}

fn in_ranges(ranges: &[(char, char)], c: char) -> bool {
    ranges
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// Go's `unicode.IsLetter` (category L).
pub fn is_letter(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphabetic();
    }
    static L: OnceLock<Vec<(char, char)>> = OnceLock::new();
    in_ranges(L.get_or_init(|| category("L")), c)
}

/// Go's `unicode.IsDigit` (category Nd).
pub fn is_digit(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    static ND: OnceLock<Vec<(char, char)>> = OnceLock::new();
    in_ranges(ND.get_or_init(|| category("Nd")), c)
}

/// Go's `unicode.IsNumber` (categories Nd, Nl, No).
pub fn is_number(c: char) -> bool {
    c.is_numeric()
}

/// Go's `unicode.IsSpace`.
pub fn is_space(c: char) -> bool {
    c.is_whitespace()
}

/// Go's `unicode.ToLower` where the result is ASCII (the only case in which a word can turn
/// into one of LogQL's ASCII keywords): ASCII letters, U+0130 → `i` and U+212A (Kelvin) → `k`.
pub fn lower_for_keyword(c: char) -> Option<char> {
    match c {
        c if c.is_ascii() => Some(c.to_ascii_lowercase()),
        '\u{130}' => Some('i'),
        '\u{212A}' => Some('k'),
        _ => None,
    }
}

/// Prometheus' `strutil.Unquote` for a token text Go's scanner already delimited (`"…"` or
/// `` `…` ``): the bytes of the value (Go strings may hold invalid UTF-8 after `\x` escapes).
pub fn unquote(tok: &str) -> Option<Cow<'_, [u8]>> {
    let b = tok.as_bytes();
    if b.len() < 2 || b[0] != b[b.len() - 1] {
        return None;
    }
    let q = b[0];
    let s = &b[1..b.len() - 1];
    if q == b'`' {
        return (!s.contains(&b'`')).then_some(Cow::Borrowed(s));
    }
    if q != b'"' || s.contains(&b'\n') {
        return None;
    }
    if !s.contains(&b'\\') && !s.contains(&q) {
        return Some(Cow::Borrowed(s));
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == q {
            return None;
        }
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = *s.get(i + 1)?;
        i += 2;
        let simple = match e {
            b'a' => Some(7u8),
            b'b' => Some(8),
            b'f' => Some(12),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'v' => Some(11),
            b'\\' => Some(b'\\'),
            b'"' => Some(b'"'),
            _ => None,
        };
        if let Some(v) = simple {
            out.push(v);
            continue;
        }
        match e {
            b'x' | b'u' | b'U' => {
                let n = match e {
                    b'x' => 2,
                    b'u' => 4,
                    _ => 8,
                };
                let digits = s.get(i..i + n)?;
                let mut v: u32 = 0;
                for &d in digits {
                    v = (v << 4) | (d as char).to_digit(16)?;
                }
                i += n;
                if e == b'x' {
                    out.push(v as u8);
                } else {
                    if v > 0x10FFFF {
                        return None;
                    }
                    // surrogates are written as U+FFFD, as Go's utf8.EncodeRune does
                    let ch = char::from_u32(v).unwrap_or('\u{FFFD}');
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
            }
            b'0'..=b'7' => {
                let digits = s.get(i..i + 2)?;
                let mut v = u32::from(e - b'0');
                for &d in digits {
                    if !(b'0'..=b'7').contains(&d) {
                        return None;
                    }
                    v = (v << 3) | u32::from(d - b'0');
                }
                i += 2;
                if v > 255 {
                    return None;
                }
                out.push(v as u8);
            }
            _ => return None,
        }
    }
    Some(Cow::Owned(out))
}

/// `strconv.ParseFloat(s, 64)` succeeds, for the texts Go's scanner reads as numbers.
pub fn parse_float_ok(s: &str) -> bool {
    if s.contains('_') && !underscore_ok(s) {
        return false;
    }
    let b = s.as_bytes();
    if b.len() > 2 && b[0] == b'0' && (b[1] | 0x20) == b'x' {
        return hex_float_ok(&s[2..].replace('_', ""));
    }
    if b.is_empty()
        || !b
            .iter()
            .all(|&c| c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'e' | b'E' | b'+' | b'-'))
    {
        return false;
    }
    let clean: Cow<'_, str> = if s.contains('_') {
        Cow::Owned(s.replace('_', ""))
    } else {
        Cow::Borrowed(s)
    };
    match clean.parse::<f64>() {
        Ok(v) => v.is_finite(),
        Err(_) => false,
    }
}

/// Go's `underscoreOK`: every `_` follows a digit (or the base prefix) and precedes one.
fn underscore_ok(s: &str) -> bool {
    let b = s.as_bytes();
    let mut saw = b'^';
    let mut i = 0;
    let mut hex = false;
    if b.len() >= 2 && b[0] == b'0' && matches!(b[1] | 0x20, b'b' | b'o' | b'x') {
        i = 2;
        saw = b'0';
        hex = (b[1] | 0x20) == b'x';
    }
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_digit() || (hex && (b'a'..=b'f').contains(&(c | 0x20))) {
            saw = b'0';
        } else if c == b'_' {
            if saw != b'0' {
                return false;
            }
            saw = b'_';
        } else {
            if saw == b'_' {
                return false;
            }
            saw = b'!';
        }
        i += 1;
    }
    saw != b'_'
}

/// `0x` mantissa `p` exponent, with `_` between digits (Go's hexadecimal float syntax).
fn hex_float_ok(s: &str) -> bool {
    let Some(p) = s.find(['p', 'P']) else {
        return false;
    };
    let (mant, exp) = (&s[..p], &s[p + 1..]);
    let mut digits = 0usize;
    let mut value = 0f64;
    let mut frac_digits = 0i64;
    let mut seen_dot = false;
    for c in mant.chars() {
        match c {
            '.' if !seen_dot => seen_dot = true,
            '_' => {}
            c if c.is_ascii_hexdigit() => {
                digits += 1;
                value = value * 16.0 + f64::from(c.to_digit(16).unwrap_or(0));
                if seen_dot {
                    frac_digits += 1;
                }
            }
            _ => return false,
        }
    }
    if digits == 0 {
        return false;
    }
    let exp = exp.replace('_', "");
    let Ok(e) = exp.parse::<i64>() else {
        return false;
    };
    let e = e.saturating_sub(frac_digits.saturating_mul(4));
    let v = value * 2f64.powf(e.clamp(-5000, 5000) as f64);
    v.is_finite()
}

/// `strconv.Atoi(s)`: the value if `s` is a decimal integer in range.
pub fn atoi(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse::<i64>().ok()
}

/// Prometheus' `model.ParseDuration`.
pub fn prom_duration_ok(s: &str) -> bool {
    match s {
        "0" => return true,
        "" => return false,
        _ => {}
    }
    let b = s.as_bytes();
    let mut i = 0;
    let mut total: u128 = 0;
    let mut last_pos = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            return false;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let Ok(v) = s[start..i].parse::<u64>() else {
            return false;
        };
        let ustart = i;
        while i < b.len() && !b[i].is_ascii_digit() {
            i += 1;
        }
        let (pos, mult): (u32, u64) = match &s[ustart..i] {
            "ms" => (7, 1_000_000),
            "s" => (6, 1_000_000_000),
            "m" => (5, 60_000_000_000),
            "h" => (4, 3_600_000_000_000),
            "d" => (3, 86_400_000_000_000),
            "w" => (2, 604_800_000_000_000),
            "y" => (1, 31_536_000_000_000_000),
            _ => return false,
        };
        if pos <= last_pos {
            return false;
        }
        last_pos = pos;
        if u128::from(v) > (1u128 << 63) / u128::from(mult) {
            return false;
        }
        total += u128::from(v) * u128::from(mult);
        if total > (1u128 << 63) - 1 {
            return false;
        }
    }
    true
}

/// Go's `time.ParseDuration`.
pub fn go_duration_ok(s: &str) -> bool {
    let mut s = s.as_bytes();
    let mut neg = false;
    if let Some(&c) = s.first()
        && (c == b'-' || c == b'+')
    {
        neg = c == b'-';
        s = &s[1..];
    }
    if s == b"0" {
        return true;
    }
    if s.is_empty() {
        return false;
    }
    const MAX: u64 = 1 << 63;
    let mut d: u64 = 0;
    while !s.is_empty() {
        if !(s[0] == b'.' || s[0].is_ascii_digit()) {
            return false;
        }
        // leading int
        let mut v: u64 = 0;
        let mut i = 0;
        while i < s.len() && s[i].is_ascii_digit() {
            if v > MAX / 10 {
                return false;
            }
            v = v * 10 + u64::from(s[i] - b'0');
            if v > MAX {
                return false;
            }
            i += 1;
        }
        let pre = i > 0;
        s = &s[i..];
        let mut post = false;
        let mut f: u64 = 0;
        let mut scale: f64 = 1.0;
        if s.first() == Some(&b'.') {
            s = &s[1..];
            let mut i = 0;
            let mut overflow = false;
            while i < s.len() && s[i].is_ascii_digit() {
                if !overflow {
                    if f > (MAX - 1) / 10 {
                        overflow = true;
                    } else {
                        let y = f * 10 + u64::from(s[i] - b'0');
                        if y > MAX {
                            overflow = true;
                        } else {
                            f = y;
                            scale *= 10.0;
                        }
                    }
                }
                i += 1;
            }
            post = i > 0;
            s = &s[i..];
        }
        if !pre && !post {
            return false;
        }
        let mut i = 0;
        while i < s.len() && !(s[i] == b'.' || s[i].is_ascii_digit()) {
            i += 1;
        }
        if i == 0 {
            return false;
        }
        let unit: u64 = match &s[..i] {
            b"ns" => 1,
            b"us" | b"\xc2\xb5s" | b"\xce\xbcs" => 1_000,
            b"ms" => 1_000_000,
            b"s" => 1_000_000_000,
            b"m" => 60_000_000_000,
            b"h" => 3_600_000_000_000,
            _ => return false,
        };
        s = &s[i..];
        if v > MAX / unit {
            return false;
        }
        v *= unit;
        if f > 0 {
            v = v.saturating_add((f as f64 * (unit as f64 / scale)) as u64);
            if v > MAX {
                return false;
            }
        }
        d = d.saturating_add(v);
        if d > MAX {
            return false;
        }
    }
    neg || d < MAX
}

/// Loki's `parseDuration`: Prometheus' syntax first, then Go's.
pub fn loki_duration_ok(s: &str) -> bool {
    prom_duration_ok(s) || go_duration_ok(s)
}

/// `humanize.ParseBytes`.
pub fn bytes_ok(s: &str) -> bool {
    let mut runes = 0;
    for c in s.chars() {
        if !(is_digit(c) || c == '.' || c == ',') {
            break;
        }
        runes += 1;
    }
    // Go slices the byte string at the rune count: anything but ASCII there fails to parse
    let Some(num) = s.get(..runes) else {
        return false;
    };
    let num = num.replace(',', "");
    if !num.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
        return false;
    }
    let Ok(f) = num.parse::<f64>() else {
        return false;
    };
    if !f.is_finite() {
        return false;
    }
    let extra = s[runes..].trim().to_ascii_lowercase();
    let m: f64 = match extra.as_str() {
        "b" | "" => 1.0,
        "kib" | "ki" => 1024.0,
        "kb" | "k" => 1e3,
        "mib" | "mi" => 1024f64.powi(2),
        "mb" | "m" => 1e6,
        "gib" | "gi" => 1024f64.powi(3),
        "gb" | "g" => 1e9,
        "tib" | "ti" => 1024f64.powi(4),
        "tb" | "t" => 1e12,
        "pib" | "pi" => 1024f64.powi(5),
        "pb" | "p" => 1e15,
        "eib" | "ei" => 1024f64.powi(6),
        "eb" | "e" => 1e18,
        _ => return false,
    };
    f * m < 18_446_744_073_709_551_615.0
}

/// How a regex is used, which decides how Go parses it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReUse {
    /// A label matcher `=~`/`!~` (Prometheus: `syntax.Parse(v, Perl|DotNL)`).
    Matcher,
    /// A line filter `|~`/`!~` (`syntax.Parse(v, Perl)`).
    Line,
    /// `label_replace` (`regexp.Compile("^(?:" + v + ")$")`).
    LabelReplace,
    /// `| regexp "…"` (`regexp.Compile(v)`, at least one named group, names unique).
    Parser,
}

/// Go RE2 syntax, checked with `regex-syntax` plus the limits Go adds and the extensions Go
/// lacks: repeat counts over 1000 and the flags `x`, `u` and `R` are refused. Returns the
/// translated HIR (for [`matches_empty`]).
pub fn check_regex(v: &[u8], usage: ReUse) -> Result<Hir, String> {
    let v = std::str::from_utf8(v).map_err(|_| "invalid UTF-8 in regexp".to_string())?;
    let wrapped;
    let pattern = if usage == ReUse::LabelReplace {
        wrapped = format!("^(?:{v})$");
        wrapped.as_str()
    } else {
        v
    };
    let pattern = go_literals(pattern);
    let pattern = pattern.as_ref();
    let ast = ast::parse::ParserBuilder::new()
        .nest_limit(1000)
        .octal(false)
        .build()
        .parse(pattern)
        .map_err(|e| e.to_string())?;
    let mut checker = GoRestrictions {
        groups: 0,
        named: 0,
    };
    ast::visit(&ast, &mut checker)?;
    if usage == ReUse::Parser && (checker.groups == 0 || checker.named == 0) {
        return Err("at least one named capture must be supplied".into());
    }
    regex_syntax::hir::translate::TranslatorBuilder::new()
        .dot_matches_new_line(usage == ReUse::Matcher)
        .build()
        .translate(pattern, &ast)
        .map_err(|e| e.to_string())
}

/// Escapes what Go's RE2 parser reads literally but `regex-syntax` would not: a `{` that does
/// not start a repeat count (`{n}`, `{n,}`, `{n,m}`), and inside a class a `[` that does not
/// start `[:name:]` and the set operators `&&`, `~~`, `--`.
fn go_literals(p: &str) -> Cow<'_, str> {
    if p.contains("(?)") {
        // Go reads `(?)` as setting no flags
        return Cow::Owned(go_literals(&p.replace("(?)", "")).into_owned());
    }
    if !p.contains(['{', '[']) {
        return Cow::Borrowed(p);
    }
    let b = p.as_bytes();
    let mut out = String::with_capacity(p.len() + 8);
    let mut i = 0;
    let mut in_class = false;
    // an escape and, for `\p{…}`/`\x{…}`, its braces
    let escape = |i: usize, out: &mut String| -> usize {
        let c = p[i + 1..].chars().next().map_or(0, char::len_utf8);
        let mut j = i + 1 + c;
        if matches!(b.get(i + 1), Some(b'p' | b'P' | b'x')) && b.get(j) == Some(&b'{') {
            j = b[j..]
                .iter()
                .position(|&x| x == b'}')
                .map_or(b.len(), |k| j + k + 1);
        }
        out.push_str(&p[i..j]);
        j
    };
    while i < b.len() {
        let c = b[i];
        if c == b'\\' {
            i = escape(i, &mut out);
            continue;
        }
        if in_class {
            if c == b']' {
                in_class = false;
            } else if c == b'[' && b.get(i + 1) == Some(&b':') {
                if let Some(k) = p[i + 2..].find(":]") {
                    out.push_str(&p[i..i + 2 + k + 2]);
                    i += 2 + k + 2;
                    continue;
                }
                out.push('\\');
            } else if c == b'[' {
                out.push('\\');
            } else if matches!(c, b'&' | b'~' | b'-') && b.get(i + 1) == Some(&c) {
                out.push('\\');
                out.push(c as char);
                out.push('\\');
                out.push(c as char);
                i += 2;
                continue;
            }
        } else if c == b'[' {
            in_class = true;
            out.push('[');
            i += 1;
            if b.get(i) == Some(&b'^') {
                out.push('^');
                i += 1;
            }
            if b.get(i) == Some(&b']') {
                out.push_str("\\]");
                i += 1;
            }
            continue;
        } else if c == b'{' && !is_repeat(&b[i..]) {
            out.push('\\');
        }
        let ch = p[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&p[i..i + ch]);
        i += ch;
    }
    Cow::Owned(out)
}

/// Go's `parseRepeat`: `{n}`, `{n,}` or `{n,m}` at the start of `b`.
fn is_repeat(b: &[u8]) -> bool {
    let mut i = 1;
    let digits = |i: &mut usize| {
        let s = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i > s
    };
    if !digits(&mut i) {
        return false;
    }
    if b.get(i) == Some(&b',') {
        i += 1;
        digits(&mut i);
    }
    b.get(i) == Some(&b'}')
}

struct GoRestrictions {
    groups: usize,
    named: usize,
}

impl ast::Visitor for &mut GoRestrictions {
    type Output = ();
    type Err = String;

    fn finish(self) -> Result<(), String> {
        Ok(())
    }

    fn visit_pre(&mut self, a: &Ast) -> Result<(), String> {
        match a {
            Ast::Repetition(r) => {
                if let ast::RepetitionKind::Range(range) = &r.op.kind {
                    let (lo, hi) = match *range {
                        ast::RepetitionRange::Exactly(n) => (n, n),
                        ast::RepetitionRange::AtLeast(n) => (n, n),
                        ast::RepetitionRange::Bounded(a, b) => (a, b),
                    };
                    if lo > 1000 || hi > 1000 {
                        return Err("invalid repeat count".into());
                    }
                }
            }
            Ast::Group(g) => match &g.kind {
                ast::GroupKind::CaptureIndex(_) => self.groups += 1,
                ast::GroupKind::CaptureName { name, .. } => {
                    self.groups += 1;
                    self.named += 1;
                    if !name
                        .name
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'_')
                    {
                        return Err("invalid named capture".into());
                    }
                }
                ast::GroupKind::NonCapturing(flags) => check_flags(flags)?,
            },
            Ast::Flags(f) => check_flags(&f.flags)?,
            _ => {}
        }
        Ok(())
    }
}

fn check_flags(flags: &ast::Flags) -> Result<(), String> {
    for item in &flags.items {
        if let ast::FlagsItemKind::Flag(f) = &item.kind {
            match f {
                ast::Flag::CaseInsensitive
                | ast::Flag::MultiLine
                | ast::Flag::DotMatchesNewLine
                | ast::Flag::SwapGreed => {}
                _ => return Err("invalid or unsupported Perl syntax".into()),
            }
        }
    }
    Ok(())
}

/// Whether the regex matches the empty string as a whole (`^(?s:v)$` on `""`), as Prometheus'
/// `Matcher.Matches("")` decides. Iterative: the HIR may be nested a thousand levels deep.
pub fn matches_empty(h: &Hir) -> bool {
    enum Step<'a> {
        Enter(&'a Hir),
        All(usize),
        Any(usize),
    }
    let mut work = vec![Step::Enter(h)];
    let mut vals: Vec<bool> = Vec::new();
    while let Some(step) = work.pop() {
        match step {
            Step::Enter(h) => match h.kind() {
                HirKind::Empty => vals.push(true),
                HirKind::Literal(_) | HirKind::Class(_) => vals.push(false),
                HirKind::Look(l) => vals.push(!matches!(
                    l,
                    Look::WordAscii
                        | Look::WordUnicode
                        | Look::WordStartAscii
                        | Look::WordEndAscii
                        | Look::WordStartUnicode
                        | Look::WordEndUnicode
                )),
                HirKind::Repetition(r) if r.min == 0 => vals.push(true),
                HirKind::Repetition(r) => work.push(Step::Enter(&r.sub)),
                HirKind::Capture(c) => work.push(Step::Enter(&c.sub)),
                HirKind::Concat(xs) => {
                    work.push(Step::All(xs.len()));
                    work.extend(xs.iter().map(Step::Enter));
                }
                HirKind::Alternation(xs) => {
                    work.push(Step::Any(xs.len()));
                    work.extend(xs.iter().map(Step::Enter));
                }
            },
            Step::All(n) => {
                let all = vals.drain(vals.len() - n..).all(|b| b);
                vals.push(all);
            }
            Step::Any(n) => {
                let any = vals.drain(vals.len() - n..).any(|b| b);
                vals.push(any);
            }
        }
    }
    vals.pop().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_library_verdicts() {
        for (s, ok) in [
            ("1_000", true),
            ("1__0", false),
            ("0x1p3", true),
            ("0x1F", false),
            ("017", true),
            ("5.", true),
            ("1e400", false),
            ("0x_1p3", true),
            ("1_0.5", true),
            (".5", true),
            ("0x1.8p1", true),
            ("1e-400", true),
            ("0x1p-2000", true),
        ] {
            assert_eq!(parse_float_ok(s), ok, "ParseFloat {s}");
        }
        for (s, ok) in [
            ("-0", true),
            ("0", true),
            ("1.5h", true),
            ("-5m", true),
            (".5s", true),
            ("5.s", true),
            ("5µs", true),
            ("5μs", true),
            ("1d", false),
            ("-.5s", true),
            ("-", false),
            ("1h1h", true),
            ("5m.", false),
            ("9223372036854775807ns", true),
            ("9223372036854775808ns", false),
            ("-9223372036854775808ns", true),
        ] {
            assert_eq!(go_duration_ok(s), ok, "time.ParseDuration {s}");
        }
        for (s, ok) in [
            ("5m", true),
            ("1h30m", true),
            ("30m1h", false),
            ("1d", true),
            ("1.5h", false),
            ("0", true),
            ("", false),
            ("5", false),
            ("106751d", true),
            ("106752d", false),
        ] {
            assert_eq!(prom_duration_ok(s), ok, "model.ParseDuration {s}");
        }
        for (s, ok) in [
            ("5MB", true),
            ("5kB", true),
            ("1.5KiB", true),
            ("5k", true),
            ("1e3KB", false),
            ("5XB", false),
            ("99999999999999999999PB", false),
        ] {
            assert_eq!(bytes_ok(s), ok, "ParseBytes {s}");
        }
        assert_eq!(
            unquote(r#""a\x41\u00e9\101""#).as_deref(),
            Some("aAéA".as_bytes())
        );
        assert_eq!(unquote(r#""\400""#), None);
        assert_eq!(unquote(r#""\U00110000""#), None);
        assert_eq!(unquote(r#""\'""#), None);
        assert_eq!(unquote("`a\\b`").as_deref(), Some(&b"a\\b"[..]));
        assert!(is_letter('ü') && !is_letter('1') && is_digit('٣') && !is_digit('Ⅻ'));
    }

    #[test]
    fn regexes_as_go_sees_them() {
        let empty = |v: &str| matches_empty(&check_regex(v.as_bytes(), ReUse::Matcher).unwrap());
        assert!(empty(".*") && empty("") && empty("a|") && empty("(a?)") && empty("^$"));
        assert!(!empty(".+") && !empty("a") && !empty(r"\b") && !empty("[^a]"));
        assert!(check_regex(b"a)(b", ReUse::Matcher).is_err());
        assert!(check_regex(b"a)(b", ReUse::LabelReplace).is_ok());
        assert!(check_regex(b"a{1001}", ReUse::Line).is_err());
        assert!(check_regex(b"a{1000}", ReUse::Line).is_ok());
        assert!(check_regex(b"(?x)a", ReUse::Line).is_err());
        assert!(check_regex(b"(?i)a", ReUse::Line).is_ok());
        assert!(check_regex(b"(a)", ReUse::Parser).is_err());
        assert!(check_regex(b"(?P<a>x)", ReUse::Parser).is_ok());
        assert!(check_regex(b"(?P<a>x)(?P<a>y)", ReUse::Parser).is_err());
        assert!(check_regex(b"\xff", ReUse::Line).is_err());
        for ok in [
            "{",
            "{{.msg}}",
            "a{",
            "a{2",
            "a{,5}",
            "[[]",
            "[a&&b]",
            r"\p{Greek}{2}",
            "[[:alpha:]]{3}",
            "x{2,}",
        ] {
            assert!(check_regex(ok.as_bytes(), ReUse::Line).is_ok(), "{ok}");
        }
    }
}
