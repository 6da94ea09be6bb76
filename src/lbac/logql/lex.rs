//! LogQL tokens exactly as Loki's lexer (`lex.go` over its copy of Go's `text/scanner` in
//! `GoTokens` mode) makes them, comments included, with byte spans into the query.

use super::golang::{
    bytes_ok, is_digit, is_letter, is_number, is_space, loki_duration_ok, lower_for_keyword,
    prom_duration_ok, unquote,
};

/// The longest run of digits, `.` and unit letters read as one duration or byte size.
const MAX_UNIT_RUN: usize = 256;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RangeFn {
    Count,
    Rate,
    RateCounter,
    Bytes,
    BytesRate,
    Avg,
    Sum,
    Min,
    Max,
    Stdvar,
    Stddev,
    Quantile,
    First,
    Last,
    Absent,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum VecFn {
    Sum,
    Avg,
    Max,
    Min,
    Count,
    Stddev,
    Stdvar,
    Bottomk,
    Topk,
    Sort,
    SortDesc,
    ApproxTopk,
}

/// Loki's token types (`syntax.y`), the unused `[`/`.` ones included.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum T {
    Eof,
    Ident,
    Str,
    Number,
    Duration,
    Bytes,
    Range,
    Flag,
    Comma,
    Dot,
    LBrace,
    RBrace,
    Eq,
    Neq,
    Re,
    Nre,
    Npa,
    PipeExact,
    PipeMatch,
    PipePattern,
    Pipe,
    LParen,
    RParen,
    RBracket,
    By,
    Without,
    Bool,
    Offset,
    On,
    Ignoring,
    GroupLeft,
    GroupRight,
    Or,
    And,
    Unless,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    CmpEq,
    Gt,
    Gte,
    Lt,
    Lte,
    Json,
    Regexp,
    Logfmt,
    Unpack,
    Pattern,
    LabelFmt,
    LineFmt,
    Decolorize,
    Drop,
    Keep,
    Unwrap,
    RangeFn(RangeFn),
    VecFn(VecFn),
    Vector,
    LabelReplace,
    /// `bytes(`, `duration(`, `duration_seconds(` after `unwrap`.
    Conv,
    Ip,
}

/// A token: 12 bytes, as a 16 MiB query has millions.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Tok {
    pub t: T,
    start: u32,
    end: u32,
}

impl Tok {
    pub fn new(t: T, start: usize, end: usize) -> Tok {
        // lex() refuses texts of 4 GiB or more
        Tok {
            t,
            start: start as u32,
            end: end as u32,
        }
    }

    pub fn start(&self) -> usize {
        self.start as usize
    }

    pub fn end(&self) -> usize {
        self.end as usize
    }
}

/// A comment: `#…` and `//…` up to (not including) the newline, `/*…*/` whole.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Comment {
    pub start: usize,
    pub end: usize,
    pub block: bool,
}

pub struct Lexed {
    /// Ends with one `Eof`.
    pub toks: Vec<Tok>,
    pub comments: Vec<Comment>,
}

/// Words that are function tokens when `isFunction` holds and identifiers otherwise.
fn function_word(w: &str) -> Option<T> {
    use RangeFn as R;
    use VecFn as V;
    Some(match w {
        "rate" => T::RangeFn(R::Rate),
        "rate_counter" => T::RangeFn(R::RateCounter),
        "count_over_time" => T::RangeFn(R::Count),
        "bytes_rate" => T::RangeFn(R::BytesRate),
        "bytes_over_time" => T::RangeFn(R::Bytes),
        "avg_over_time" => T::RangeFn(R::Avg),
        "sum_over_time" => T::RangeFn(R::Sum),
        "min_over_time" => T::RangeFn(R::Min),
        "max_over_time" => T::RangeFn(R::Max),
        "stdvar_over_time" => T::RangeFn(R::Stdvar),
        "stddev_over_time" => T::RangeFn(R::Stddev),
        "quantile_over_time" => T::RangeFn(R::Quantile),
        "first_over_time" => T::RangeFn(R::First),
        "last_over_time" => T::RangeFn(R::Last),
        "absent_over_time" => T::RangeFn(R::Absent),
        "vector" => T::Vector,
        "sum" => T::VecFn(V::Sum),
        "avg" => T::VecFn(V::Avg),
        "max" => T::VecFn(V::Max),
        "min" => T::VecFn(V::Min),
        "count" => T::VecFn(V::Count),
        "stddev" => T::VecFn(V::Stddev),
        "stdvar" => T::VecFn(V::Stdvar),
        "bottomk" => T::VecFn(V::Bottomk),
        "topk" => T::VecFn(V::Topk),
        "sort" => T::VecFn(V::Sort),
        "sort_desc" => T::VecFn(V::SortDesc),
        "approx_topk" => T::VecFn(V::ApproxTopk),
        "label_replace" => T::LabelReplace,
        "bytes" | "duration" | "duration_seconds" => T::Conv,
        "ip" => T::Ip,
        _ => return None,
    })
}

/// Loki's `tokens` map (case-insensitive): keywords and operators.
fn keyword(w: &str) -> Option<T> {
    Some(match w {
        "," => T::Comma,
        "." => T::Dot,
        "{" => T::LBrace,
        "}" => T::RBrace,
        "=" => T::Eq,
        "!=" => T::Neq,
        "=~" => T::Re,
        "!~" => T::Nre,
        "!>" => T::Npa,
        "|=" => T::PipeExact,
        "|~" => T::PipeMatch,
        "|>" => T::PipePattern,
        "|" => T::Pipe,
        "unwrap" => T::Unwrap,
        "(" => T::LParen,
        ")" => T::RParen,
        "by" => T::By,
        "without" => T::Without,
        "bool" => T::Bool,
        "]" => T::RBracket,
        "offset" => T::Offset,
        "on" => T::On,
        "ignoring" => T::Ignoring,
        "group_left" => T::GroupLeft,
        "group_right" => T::GroupRight,
        "or" => T::Or,
        "and" => T::And,
        "unless" => T::Unless,
        "+" => T::Add,
        "-" => T::Sub,
        "*" => T::Mul,
        "/" => T::Div,
        "%" => T::Mod,
        "^" => T::Pow,
        "==" => T::CmpEq,
        ">" => T::Gt,
        ">=" => T::Gte,
        "<" => T::Lt,
        "<=" => T::Lte,
        "json" => T::Json,
        "regexp" => T::Regexp,
        "logfmt" => T::Logfmt,
        "unpack" => T::Unpack,
        "pattern" => T::Pattern,
        "label_format" => T::LabelFmt,
        "line_format" => T::LineFmt,
        "decolorize" => T::Decolorize,
        "drop" => T::Drop,
        "keep" => T::Keep,
        _ => return None,
    })
}

#[derive(Clone, Copy)]
enum Word {
    Function(T),
    Keyword(T),
}

/// [`function_word`] (first, as Loki looks them up) or [`keyword`] for a lowered word.
fn lookup(w: &[u8]) -> Option<Word> {
    // a cheap first cut by the first byte: almost every word of a query is neither
    let candidates: &[&str] = match *w.first()? {
        b'a' => &[
            "and",
            "avg",
            "avg_over_time",
            "absent_over_time",
            "approx_topk",
        ],
        b'b' => &[
            "by",
            "bool",
            "bytes",
            "bytes_rate",
            "bytes_over_time",
            "bottomk",
        ],
        b'c' => &["count", "count_over_time"],
        b'd' => &["decolorize", "drop", "duration", "duration_seconds"],
        b'f' => &["first_over_time"],
        b'g' => &["group_left", "group_right"],
        b'i' => &["ignoring", "ip"],
        b'j' => &["json"],
        b'k' => &["keep"],
        b'l' => &[
            "logfmt",
            "label_format",
            "line_format",
            "label_replace",
            "last_over_time",
        ],
        b'm' => &["max", "min", "max_over_time", "min_over_time"],
        b'o' => &["or", "on", "offset"],
        b'p' => &["pattern"],
        b'q' => &["quantile_over_time"],
        b'r' => &["rate", "rate_counter", "regexp"],
        b's' => &[
            "sum",
            "sort",
            "sort_desc",
            "stddev",
            "stdvar",
            "sum_over_time",
            "stddev_over_time",
            "stdvar_over_time",
        ],
        b't' => &["topk"],
        b'u' => &["unless", "unpack", "unwrap"],
        b'v' => &["vector"],
        b'w' => &["without"],
        _ => return None,
    };
    let k = *candidates.iter().find(|c| c.as_bytes() == w)?;
    match function_word(k) {
        Some(t) => Some(Word::Function(t)),
        None => keyword(k).map(Word::Keyword),
    }
}

/// An ASCII character that is neither a letter, a digit nor a quote, and what follows it:
/// Loki's two-character operators (`tokenNext`), its one-character ones, else an identifier
/// made of the character. Returns the token and its length.
fn punct(c: u8, next: u8) -> (T, usize) {
    let two = match (c, next) {
        (b'!', b'=') => Some(T::Neq),
        (b'=', b'~') => Some(T::Re),
        (b'!', b'~') => Some(T::Nre),
        (b'!', b'>') => Some(T::Npa),
        (b'|', b'=') => Some(T::PipeExact),
        (b'|', b'~') => Some(T::PipeMatch),
        (b'|', b'>') => Some(T::PipePattern),
        (b'=', b'=') => Some(T::CmpEq),
        (b'>', b'=') => Some(T::Gte),
        (b'<', b'=') => Some(T::Lte),
        _ => None,
    };
    if let Some(t) = two {
        return (t, 2);
    }
    let one = match c {
        b',' => T::Comma,
        b'.' => T::Dot,
        b'{' => T::LBrace,
        b'}' => T::RBrace,
        b'=' => T::Eq,
        b'|' => T::Pipe,
        b'(' => T::LParen,
        b')' => T::RParen,
        b']' => T::RBracket,
        b'+' => T::Add,
        b'-' => T::Sub,
        b'*' => T::Mul,
        b'/' => T::Div,
        b'%' => T::Mod,
        b'^' => T::Pow,
        b'>' => T::Gt,
        b'<' => T::Lt,
        _ => T::Ident,
    };
    (one, 1)
}

/// The word lowered as Go's `strings.ToLower` would, into `buf`, if the result can be a
/// keyword (ASCII, at most 20 characters).
fn keyword_lower<'b>(w: &str, buf: &'b mut [u8; 20]) -> Option<&'b [u8]> {
    let mut n = 0;
    if w.is_ascii() {
        let b = w.as_bytes();
        let dst = buf.get_mut(..b.len())?;
        for (d, c) in dst.iter_mut().zip(b) {
            *d = c.to_ascii_lowercase();
        }
        return Some(&buf[..b.len()]);
    }
    for c in w.chars() {
        let l = lower_for_keyword(c)?;
        *buf.get_mut(n)? = l as u8;
        n += 1;
    }
    Some(&buf[..n])
}

struct Lexer<'a> {
    src: &'a str,
    b: &'a [u8],
    i: usize,
}

fn is_duration_rune(c: char) -> bool {
    matches!(c, 'n' | 'u' | 'µ' | 'm' | 's' | 'h' | 'd' | 'w' | 'y')
}

fn is_bytes_rune(c: char) -> bool {
    matches!(c, 'B' | 'i' | 'k' | 'K' | 'M' | 'G' | 'T' | 'P')
}

impl Lexer<'_> {
    fn ch(&self, i: usize) -> Option<char> {
        match self.b.get(i) {
            Some(&c) if c < 0x80 => Some(c as char),
            Some(_) => self.src.get(i..).and_then(|s| s.chars().next()),
            None => None,
        }
    }

    /// Go's `tryScanDuration`/`tryScanBytes` run: the characters after `i` up to a space that
    /// are numbers, `.` or `unit` runes. Returns its end.
    ///
    /// The scan stops after [`MAX_UNIT_RUN`] bytes: otherwise a run like `.5.5.5…` would be
    /// rescanned (and validated) after every number in it, quadratic in its length. A duration
    /// or byte size that long is no duration obsgate accepts; what follows is then lexed as
    /// numbers and identifiers, which the grammar refuses (no selector can hide in a run of
    /// digits, dots and unit letters).
    fn run(&self, i: usize, unit: fn(char) -> bool) -> usize {
        let mut j = i;
        while let Some(c) = self.ch(j) {
            if is_space(c) || !(is_number(c) || unit(c) || c == '.') || j - i > MAX_UNIT_RUN {
                break;
            }
            j += c.len_utf8();
        }
        j
    }

    /// Go's `isFunction`: after optional spaces, `(`, or `by`/`without` then spaces then `(`.
    fn is_function(&self, i: usize) -> bool {
        let skip = |mut j: usize| {
            while let Some(c) = self.ch(j).filter(|c| is_space(*c)) {
                j += c.len_utf8();
            }
            j
        };
        let j = skip(i);
        if self.ch(j) == Some('(') {
            return true;
        }
        let mut word = String::new();
        let mut k = j;
        for n in 1..=7 {
            let Some(c) = self.ch(k) else { return false };
            k += c.len_utf8();
            match lower_for_keyword(c) {
                Some(l) => word.push(l),
                None => return false,
            }
            if (n == 2 && word == "by") || (n == 7 && word == "without") {
                return self.ch(skip(k)) == Some('(');
            }
        }
        false
    }

    /// Go's `scanEscape` after the backslash at `i`; returns the index after the escape.
    fn escape(&self, i: usize, quote: u8) -> Result<usize, String> {
        let bad = || "invalid char escape".to_string();
        let c = *self.b.get(i).ok_or_else(bad)?;
        let (start, base, n) = match c {
            b'a' | b'b' | b'f' | b'n' | b'r' | b't' | b'v' | b'\\' => return Ok(i + 1),
            c if c == quote => return Ok(i + 1),
            b'0'..=b'7' => (i, 8, 3),
            b'x' => (i + 1, 16, 2),
            b'u' => (i + 1, 16, 4),
            b'U' => (i + 1, 16, 8),
            _ => return Err(bad()),
        };
        for k in 0..n {
            match self.b.get(start + k) {
                Some(d) if (*d as char).is_digit(base) => {}
                _ => return Err(bad()),
            }
        }
        Ok(start + n)
    }

    /// Go's `scanString` from the opening quote at `i`: the end and the count of characters.
    fn quoted(&self, i: usize, quote: u8) -> Result<(usize, usize), String> {
        let mut j = i + 1;
        let mut n = 0;
        loop {
            match self.b.get(j) {
                None | Some(b'\n') => return Err("literal not terminated".into()),
                Some(&c) if c == quote => return Ok((j + 1, n)),
                Some(b'\\') => j = self.escape(j + 1, quote)?,
                Some(&c) if c < 0x80 => j += 1,
                Some(_) => j += self.ch(j).map_or(1, char::len_utf8),
            }
            n += 1;
        }
    }

    /// Go's `scanNumber` from `i` (a digit, or a `.` before one).
    fn number(&self, i: usize) -> Result<usize, String> {
        let b = self.b;
        let at = |j: usize| b.get(j).copied().unwrap_or(0);
        let lower = |c: u8| c | 0x20;
        let mut j = i;
        let mut base = 10u32;
        let mut prefix = 0u8;
        let mut digsep = 0;
        let mut invalid = false;
        let mut is_float = false;
        let mut seen_dot = at(j) == b'.';
        let digits = |j: &mut usize, base: u32, invalid: &mut bool| -> i32 {
            let mut ds = 0;
            loop {
                let c = at(*j);
                if c == b'_' {
                    ds |= 2;
                } else if base <= 10 && c.is_ascii_digit() {
                    ds |= 1;
                    if u32::from(c - b'0') >= base {
                        *invalid = true;
                    }
                } else if base == 16 && c.is_ascii_hexdigit() {
                    ds |= 1;
                } else {
                    return ds;
                }
                *j += 1;
            }
        };
        if !seen_dot {
            if at(j) == b'0' {
                j += 1;
                match lower(at(j)) {
                    b'x' => {
                        j += 1;
                        base = 16;
                        prefix = b'x';
                    }
                    b'o' => {
                        j += 1;
                        base = 8;
                        prefix = b'o';
                    }
                    // Loki's scanner reads `0b…` as binary only when no space or comment came
                    // before it, and a binary literal is no valid float or integer: refused
                    b'b' => return Err("binary literal".into()),
                    _ => {
                        base = 8;
                        prefix = b'0';
                        digsep = 1;
                    }
                }
            }
            digsep |= digits(&mut j, base, &mut invalid);
            if at(j) == b'.' {
                j += 1;
                seen_dot = true;
            }
        } else {
            j += 1;
        }
        if seen_dot {
            is_float = true;
            if prefix == b'o' {
                return Err("invalid radix point in octal literal".into());
            }
            digsep |= digits(&mut j, base, &mut invalid);
        }
        if digsep & 1 == 0 {
            return Err("literal has no digits".into());
        }
        let e = lower(at(j));
        if e == b'e' || (e == b'p' && prefix == b'x') {
            if e == b'e' && prefix != 0 && prefix != b'0' {
                return Err("exponent requires decimal mantissa".into());
            }
            j += 1;
            is_float = true;
            if matches!(at(j), b'+' | b'-') {
                j += 1;
            }
            let mut unused = false;
            let ds = digits(&mut j, 10, &mut unused);
            digsep |= ds;
            if ds & 1 == 0 {
                return Err("exponent has no digits".into());
            }
        } else if prefix == b'x' && is_float {
            return Err("hexadecimal mantissa requires a 'p' exponent".into());
        }
        if !is_float && invalid {
            return Err("invalid digit in octal literal".into());
        }
        if digsep & 2 != 0 && !separators_ok(&b[i..j]) {
            return Err("'_' must separate successive digits".into());
        }
        Ok(j)
    }

    /// One token after blanks and comments (`Eof` at the end).
    fn token(&mut self, comments: &mut Vec<Comment>) -> Result<Tok, String> {
        let b = self.b;
        loop {
            while matches!(b.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                self.i += 1;
            }
            let rest = &b[self.i.min(b.len())..];
            // `#` is Loki's own line comment (a token Go's scanner returns, skipped by `Lex`)
            if rest.starts_with(b"//") || rest.starts_with(b"#") {
                let end = memchr(b'\n', b, self.i).unwrap_or(b.len());
                comments.push(Comment {
                    start: self.i,
                    end,
                    block: false,
                });
                self.i = end;
            } else if rest.starts_with(b"/*") {
                let end = find(b, self.i + 2, b"*/").ok_or("comment not terminated")? + 2;
                comments.push(Comment {
                    start: self.i,
                    end,
                    block: true,
                });
                self.i = end;
            } else {
                break;
            }
        }
        let start = self.i;
        let tok = |t, end| Tok::new(t, start, end);
        let Some(c) = self.ch(start) else {
            return Ok(tok(T::Eof, start));
        };
        let next = start + c.len_utf8();
        if c == '_' || is_letter(c) {
            let mut j = next;
            while let Some(c) = self
                .ch(j)
                .filter(|c| *c == '_' || is_letter(*c) || is_digit(*c))
            {
                j += c.len_utf8();
            }
            self.i = j;
            return Ok(self.word(start, j));
        }
        if c.is_ascii_digit() || (c == '.' && self.ch(next).is_some_and(|d| d.is_ascii_digit())) {
            let end = self.number(start)?;
            self.i = end;
            let run = self.run(end, is_duration_rune);
            if run > end && run - end <= MAX_UNIT_RUN && loki_duration_ok(&self.src[start..run]) {
                self.i = run;
                return Ok(tok(T::Duration, run));
            }
            let run = self.run(end, is_bytes_rune);
            if run > end && run - end <= MAX_UNIT_RUN && bytes_ok(&self.src[start..run]) {
                self.i = run;
                return Ok(tok(T::Bytes, run));
            }
            return Ok(tok(T::Number, end));
        }
        match c {
            '"' | '`' => {
                let end = if c == '"' {
                    self.quoted(start, b'"')?.0
                } else {
                    memchr(b'`', b, next).ok_or("literal not terminated")? + 1
                };
                unquote(&self.src[start..end]).ok_or("invalid syntax")?;
                self.i = end;
                Ok(tok(T::Str, end))
            }
            '\'' => {
                // a Go char literal: Loki hands it to the grammar as an identifier
                let (end, n) = self.quoted(start, b'\'')?;
                if n != 1 {
                    return Err("invalid char literal".into());
                }
                self.i = end;
                Ok(tok(T::Ident, end))
            }
            '[' => {
                let close = memchr(b']', b, next).ok_or("missing closing ']' in duration")?;
                if !prom_duration_ok(&self.src[next..close]) {
                    return Err(format!(
                        "not a valid duration string: {:?}",
                        &self.src[next..close]
                    ));
                }
                self.i = close + 1;
                Ok(tok(T::Range, close + 1))
            }
            '-' => {
                if self.ch(next) == Some('-') {
                    // the run of letters and `-` must be a whole flag; a run longer than the
                    // longest flag is none, so the look-ahead stops there (a run of `-` would
                    // otherwise be rescanned from every `-`: quadratic)
                    const LONGEST_FLAG: usize = "--keep-empty".len();
                    let mut j = next;
                    while let Some(c) = self.ch(j).filter(|c| is_letter(*c) || *c == '-') {
                        j += c.len_utf8();
                        if j - start > LONGEST_FLAG {
                            break;
                        }
                    }
                    if matches!(&self.src[start..j], "--strict" | "--keep-empty") {
                        self.i = j;
                        return Ok(tok(T::Flag, j));
                    }
                }
                let run = self.run(next, is_duration_rune);
                if run > next
                    && run - next <= MAX_UNIT_RUN
                    && loki_duration_ok(&self.src[start..run])
                {
                    self.i = run;
                    return Ok(tok(T::Duration, run));
                }
                let (t, len) = punct(b'-', self.b.get(next).copied().unwrap_or(0));
                self.i = start + len;
                Ok(tok(t, self.i))
            }
            c if c.is_ascii() => {
                let (t, len) = punct(c as u8, self.b.get(next).copied().unwrap_or(0));
                self.i = start + len;
                Ok(tok(t, self.i))
            }
            _ => {
                self.i = next;
                Ok(self.word(start, next))
            }
        }
    }

    /// The rest of Loki's `Lex` for a word, or a non-ASCII character that is no token.
    fn word(&mut self, start: usize, end: usize) -> Tok {
        let text = &self.src[start..end];
        let mut buf = [0u8; 20];
        // a keyword is one punctuation character, or 2 to 18 letters and `_` (up to 3 bytes
        // each: U+212A lowers to `k`)
        let lower = if (2..=54).contains(&text.len()) || !text.as_bytes()[0].is_ascii_alphabetic() {
            keyword_lower(text, &mut buf)
        } else {
            None
        };
        let tok = |t, end| Tok::new(t, start, end);
        let word = lower.and_then(lookup);
        if let Some(Word::Function(t)) = word {
            return tok(if self.is_function(end) { t } else { T::Ident }, end);
        }
        // two-character operators (`tokenNext`); a word never combines with what follows it
        match word {
            Some(Word::Keyword(t)) => tok(t, end),
            _ => tok(T::Ident, end),
        }
    }
}

/// Go's `invalidSep`: the literal's `_`s each separate two digits (a base prefix counts as one).
fn separators_ok(x: &[u8]) -> bool {
    let lower = |c: u8| c | 0x20;
    let mut x1 = b' ';
    let mut d = b'.';
    let mut i = 0;
    if x.len() >= 2 && x[0] == b'0' {
        x1 = lower(x[1]);
        if matches!(x1, b'x' | b'o' | b'b') {
            d = b'0';
            i = 2;
        }
    }
    while i < x.len() {
        let p = d;
        d = x[i];
        if d == b'_' {
            if p != b'0' {
                return false;
            }
        } else if d.is_ascii_digit() || (x1 == b'x' && d.is_ascii_hexdigit()) {
            d = b'0';
        } else {
            if p == b'_' {
                return false;
            }
            d = b'.';
        }
        i += 1;
    }
    d != b'_'
}

fn memchr(c: u8, b: &[u8], from: usize) -> Option<usize> {
    b.get(from..)?
        .iter()
        .position(|x| *x == c)
        .map(|p| p + from)
}

fn find(b: &[u8], from: usize, pat: &[u8]) -> Option<usize> {
    b.get(from..)?
        .windows(pat.len())
        .position(|w| w == pat)
        .map(|p| p + from)
}

/// All tokens of `src`, or the lexer error that makes Loki refuse it.
pub fn lex(src: &str) -> Result<Lexed, String> {
    if u32::try_from(src.len()).is_err() {
        return Err("query too long".into());
    }
    if src.as_bytes().contains(&0) {
        return Err("invalid character NUL".into());
    }
    let mut lx = Lexer {
        src,
        b: src.as_bytes(),
        // Go's scanner skips a byte order mark at the very start
        i: if src.starts_with('\u{FEFF}') { 3 } else { 0 },
    };
    let mut toks = Vec::with_capacity(src.len() / 4 + 1);
    let mut comments = Vec::new();
    loop {
        let t = lx.token(&mut comments)?;
        toks.push(t);
        if t.t == T::Eof {
            return Ok(Lexed { toks, comments });
        }
    }
}
