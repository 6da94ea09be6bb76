//! Label matchers and selectors: both policy forms (PromQL selector text and GEM matcher lists),
//! canonical printing `{name="value", …}`, anchored regexes, and matching a label set.

use serde::Deserialize;
use std::fmt;
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatchOp {
    Eq,
    Neq,
    Re,
    Nre,
}

impl MatchOp {
    pub fn symbol(self) -> &'static str {
        match self {
            MatchOp::Eq => "=",
            MatchOp::Neq => "!=",
            MatchOp::Re => "=~",
            MatchOp::Nre => "!~",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    /// For `=~`/`!~`: the value compiled fully anchored as Prometheus does (`^(?s:v)$`),
    /// on first use. Load only checks the syntax: compiling every policy's regexes up front
    /// costs seconds and hundreds of MiB at 10k policies.
    re: std::sync::OnceLock<Option<regex::Regex>>,
    /// The same regex in promql-parser's form (`^(?:v)$`), also compiled on first use, once.
    promql_re: std::sync::OnceLock<Option<regex::Regex>>,
}

impl PartialEq for Matcher {
    fn eq(&self, o: &Self) -> bool {
        self.name == o.name && self.op == o.op && self.value == o.value
    }
}
impl Eq for Matcher {}

impl Matcher {
    pub fn new(name: &str, op: MatchOp, value: &str) -> Result<Matcher, String> {
        if !valid_label_name(name) {
            return Err(format!("invalid label name {name:?}"));
        }
        if matches!(op, MatchOp::Re | MatchOp::Nre) {
            regex_syntax::Parser::new()
                .parse(&format!("^(?s:{value})$"))
                .map_err(|e| format!("invalid regular expression {value:?}: {e}"))?;
        }
        Ok(Matcher {
            name: name.to_string(),
            op,
            value: value.to_string(),
            re: std::sync::OnceLock::new(),
            promql_re: std::sync::OnceLock::new(),
        })
    }

    fn regex(&self) -> Option<&regex::Regex> {
        self.re
            .get_or_init(|| regex::Regex::new(&format!("^(?s:{})$", self.value)).ok())
            .as_ref()
    }

    /// For `=~`/`!~`: the regex as promql-parser anchors it (`^(?:v)$`).
    pub fn promql_regex(&self) -> Option<&regex::Regex> {
        match self.op {
            MatchOp::Re | MatchOp::Nre => self
                .promql_re
                .get_or_init(|| regex::Regex::new(&format!("^(?:{})$", self.value)).ok())
                .as_ref(),
            _ => None,
        }
    }

    /// Whether a label value (empty when the label is absent) satisfies the matcher.
    pub fn matches(&self, v: &str) -> bool {
        match self.op {
            MatchOp::Eq => v == self.value,
            MatchOp::Neq => v != self.value,
            // a regex that passed the syntax check but cannot be compiled: fail closed
            MatchOp::Re => self.regex().is_some_and(|re| re.is_match(v)),
            MatchOp::Nre => self.regex().is_some_and(|re| !re.is_match(v)),
        }
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.name, self.op.symbol())?;
        write_quoted(f, &self.value)
    }
}

/// A conjunction of matchers (AND).
#[derive(Debug, Clone)]
pub struct Selector {
    pub matchers: Vec<Matcher>,
    /// `path_escape` of the canonical text, computed on first use (header-mode LBAC sends it
    /// on every restricted read).
    path_escaped: OnceLock<Box<str>>,
}

impl PartialEq for Selector {
    fn eq(&self, other: &Selector) -> bool {
        self.matchers == other.matchers
    }
}

impl Eq for Selector {}

impl Selector {
    pub fn new(matchers: Vec<Matcher>) -> Selector {
        Selector {
            matchers,
            path_escaped: OnceLock::new(),
        }
    }

    /// The canonical text, path-escaped (Go's `url.PathEscape`), as `X-Prom-Label-Policy`
    /// carries it.
    pub fn path_escaped(&self) -> &str {
        self.path_escaped
            .get_or_init(|| path_escape(&self.to_string()).into_boxed_str())
    }

    /// Whether a label set satisfies every matcher (absent labels read as "").
    pub fn matches<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.matchers
            .iter()
            .all(|m| m.matches(get(&m.name).unwrap_or("")))
    }
}

impl fmt::Display for Selector {
    /// Canonical form `{name="value", other!~"re"}` with Go-style string escapes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{}}}", MatchersText(&self.matchers))
    }
}

/// Matchers printed as in a selector but without the braces: `name="value", other!~"re"`.
/// Prints a borrowed slice, so a policy is never cloned just to be written out.
pub struct MatchersText<'a>(pub &'a [Matcher]);

impl fmt::Display for MatchersText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, m) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{m}")?;
        }
        Ok(())
    }
}

fn write_quoted(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if (c as u32) < 0x20 || c == '\u{7f}' => write!(f, "\\x{:02x}", c as u32)?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")
}

pub fn valid_label_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// GEM matcher-list entry: `{type: EQ, name: env, value: prod}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatcher {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub value: String,
}

/// A label policy as written: selector text (Cloud form) or matcher list (GEM form).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawSelector {
    Text(String),
    List(Vec<RawMatcher>),
}

impl RawSelector {
    pub fn compile(&self) -> Result<Selector, String> {
        match self {
            RawSelector::Text(t) => parse_selector(t),
            RawSelector::List(list) => {
                if list.is_empty() {
                    return Err("label policy selector has no matchers".into());
                }
                let mut matchers = Vec::with_capacity(list.len());
                for m in list {
                    let op = match m.kind.as_str() {
                        "EQ" => MatchOp::Eq,
                        "NEQ" | "NE" => MatchOp::Neq,
                        "RE" => MatchOp::Re,
                        "NRE" => MatchOp::Nre,
                        other => {
                            return Err(format!(
                                "unknown matcher type {other:?}: expected EQ, NEQ, RE or NRE"
                            ));
                        }
                    };
                    matchers.push(Matcher::new(&m.name, op, &m.value)?);
                }
                Ok(Selector::new(matchers))
            }
        }
    }
}

/// Parses PromQL selector text: `{a="b", c=~"d"}` or `metric{…}` or a bare `metric`.
pub fn parse_selector(text: &str) -> Result<Selector, String> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
        text,
    };
    p.ws();
    let mut matchers = Vec::new();
    if p.peek()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c == b':')
    {
        let name = p.ident(true)?;
        matchers.push(Matcher::new("__name__", MatchOp::Eq, name).map_err(|e| p.err(&e))?);
        p.ws();
    }
    if p.peek() == Some(b'{') {
        p.i += 1;
        loop {
            p.ws();
            if p.peek() == Some(b'}') {
                p.i += 1;
                break;
            }
            let name = p.ident(false)?;
            p.ws();
            let op = p.op()?;
            p.ws();
            let value = p.string()?;
            matchers.push(Matcher::new(name, op, &value).map_err(|e| p.err(&e))?);
            p.ws();
            match p.peek() {
                Some(b',') => p.i += 1,
                Some(b'}') => {
                    p.i += 1;
                    break;
                }
                _ => return Err(p.err("expected ',' or '}'")),
            }
        }
    }
    p.ws();
    if p.i != p.s.len() {
        return Err(p.err("unexpected text after selector"));
    }
    if matchers.is_empty() {
        return Err(format!("selector {text:?} has no matchers"));
    }
    Ok(Selector::new(matchers))
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    text: &'a str,
}

impl<'a> Parser<'a> {
    fn err(&self, msg: &str) -> String {
        format!(
            "invalid selector {:?} at offset {}: {msg}",
            self.text, self.i
        )
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }
    fn ident(&mut self, metric: bool) -> Result<&'a str, String> {
        let start = self.i;
        while let Some(c) = self.peek() {
            let ok = c.is_ascii_alphanumeric() || c == b'_' || (metric && c == b':');
            if !ok || (self.i == start && c.is_ascii_digit()) {
                break;
            }
            self.i += 1;
        }
        if self.i == start {
            return Err(self.err("expected a label name"));
        }
        Ok(&self.text[start..self.i])
    }
    fn op(&mut self) -> Result<MatchOp, String> {
        let two = self.s.get(self.i..self.i + 2);
        let (op, n) = match two {
            Some(b"=~") => (MatchOp::Re, 2),
            Some(b"!=") => (MatchOp::Neq, 2),
            Some(b"!~") => (MatchOp::Nre, 2),
            _ if self.peek() == Some(b'=') => (MatchOp::Eq, 1),
            _ => return Err(self.err("expected one of = != =~ !~")),
        };
        self.i += n;
        Ok(op)
    }
    /// A Go/PromQL string literal: "…" or '…' with escapes, or `raw`.
    fn string(&mut self) -> Result<String, String> {
        let q = self
            .peek()
            .ok_or_else(|| self.err("expected a quoted string"))?;
        if !matches!(q, b'"' | b'\'' | b'`') {
            return Err(self.err("expected a quoted string"));
        }
        self.i += 1;
        let mut out = String::new();
        loop {
            let rest = &self.text[self.i..];
            let c = rest
                .chars()
                .next()
                .ok_or_else(|| self.err("unterminated string"))?;
            self.i += c.len_utf8();
            if c as u32 == q as u32 {
                return Ok(out);
            }
            if q == b'`' {
                out.push(c);
                continue;
            }
            if c == '\n' {
                return Err(self.err("newline in string"));
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            let e = self.peek().ok_or_else(|| self.err("unterminated escape"))?;
            self.i += 1;
            match e {
                b'a' => out.push('\u{07}'),
                b'b' => out.push('\u{08}'),
                b'f' => out.push('\u{0c}'),
                b'n' => out.push('\n'),
                b'r' => out.push('\r'),
                b't' => out.push('\t'),
                b'v' => out.push('\u{0b}'),
                b'\\' => out.push('\\'),
                b'"' if q == b'"' => out.push('"'),
                b'\'' if q == b'\'' => out.push('\''),
                b'x' => out.push(self.hex_char(2)?),
                b'u' => out.push(self.hex_char(4)?),
                b'U' => out.push(self.hex_char(8)?),
                b'0'..=b'7' => {
                    let digits = self
                        .s
                        .get(self.i - 1..self.i + 2)
                        .ok_or_else(|| self.err("bad octal escape"))?;
                    let mut v: u32 = 0;
                    for d in digits {
                        if !(b'0'..=b'7').contains(d) {
                            return Err(self.err("bad octal escape"));
                        }
                        v = v * 8 + u32::from(d - b'0');
                    }
                    self.i += 2;
                    out.push(
                        char::from_u32(v)
                            .filter(|_| v < 256)
                            .ok_or_else(|| self.err("bad octal escape"))?,
                    );
                }
                _ => return Err(self.err("unknown escape sequence")),
            }
        }
    }
    fn hex_char(&mut self, n: usize) -> Result<char, String> {
        let digits = self
            .text
            .get(self.i..self.i + n)
            .ok_or_else(|| self.err("short escape"))?;
        let v = u32::from_str_radix(digits, 16).map_err(|_| self.err("bad hex escape"))?;
        self.i += n;
        char::from_u32(v).ok_or_else(|| self.err("escape is not a valid character"))
    }
}

/// Percent-encodes like Go's `url.PathEscape`: everything but unreserved characters and
/// `$&+,/:;=@` is escaped, except that `/` is escaped too (PathEscape escapes it).
pub fn path_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for &b in s.as_bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'_' | b'.' | b'~' | b'$' | b'&' | b'+' | b':' | b'=' | b'@'
            );
        if keep {
            out.push(b as char);
        } else {
            out.push('%');
            out.push_str(&format!("{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_canonically() {
        let s = parse_selector(r#"{env!="dev", team="a"}"#).unwrap();
        assert_eq!(s.to_string(), r#"{env!="dev", team="a"}"#);
        let s = parse_selector(r#"up{job=~'a|b',x!~`c\d`}"#).unwrap();
        assert_eq!(s.to_string(), r#"{__name__="up", job=~"a|b", x!~"c\\d"}"#);
        let s = parse_selector(r#"{a="q\"uote\\ \x41\u00e9"}"#).unwrap();
        assert_eq!(s.matchers[0].value, "q\"uote\\ Aé");
        // what is printed parses back to the same selector
        assert_eq!(parse_selector(&s.to_string()).unwrap(), s);
    }

    #[test]
    fn rejects_bad_selectors() {
        for t in [
            "",
            "{}",
            "{a}",
            "{a=b}",
            "{a=\"b\"",
            "{1a=\"b\"}",
            "{a==\"b\"}",
            "{a=\"b\"} x",
            "{a=~\"(\"}",
            "{a=\"\\q\"}",
            "{a=\"b\" c=\"d\"}",
        ] {
            assert!(parse_selector(t).is_err(), "{t:?} should be rejected");
        }
    }

    #[test]
    fn gem_matcher_lists_compile() {
        let raw = RawSelector::List(vec![
            RawMatcher {
                kind: "EQ".into(),
                name: "env".into(),
                value: "prod".into(),
            },
            RawMatcher {
                kind: "NE".into(),
                name: "team".into(),
                value: "x".into(),
            },
            RawMatcher {
                kind: "NRE".into(),
                name: "ns".into(),
                value: "kube-.*".into(),
            },
        ]);
        let s = raw.compile().unwrap();
        assert_eq!(s.to_string(), r#"{env="prod", team!="x", ns!~"kube-.*"}"#);
        let bad = RawSelector::List(vec![RawMatcher {
            kind: "LIKE".into(),
            name: "a".into(),
            value: "b".into(),
        }]);
        assert!(bad.compile().unwrap_err().contains("unknown matcher type"));
    }

    #[test]
    fn regexes_are_fully_anchored() {
        let s = parse_selector(r#"{env=~"prod|stage"}"#).unwrap();
        let labels = |v: &'static str| move |n: &str| if n == "env" { Some(v) } else { None };
        assert!(s.matches(labels("prod")));
        assert!(s.matches(labels("stage")));
        assert!(!s.matches(labels("production")));
        assert!(!s.matches(labels("xprod")));
        let ne = parse_selector(r#"{env!="dev"}"#).unwrap();
        assert!(ne.matches(|_| None), "absent label reads as empty");
    }

    #[test]
    fn path_escape_matches_go() {
        // Go: url.PathEscape(`{env="prod", team=~"a|b/c"}`)
        assert_eq!(
            path_escape(r#"{env="prod", team=~"a|b/c"}"#),
            "%7Benv=%22prod%22%2C%20team=~%22a%7Cb%2Fc%22%7D"
        );
        assert_eq!(path_escape("a:b@c&d+e$f"), "a:b@c&d+e$f");
        assert_eq!(path_escape("é"), "%C3%A9");
    }
}
