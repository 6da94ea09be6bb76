//! How deep a PromQL query's syntax tree is, found without building the tree and without
//! recursion, so that a query too deep to parse safely is refused before `promql-parser` (whose
//! parser actions, printer, comparisons and `Drop` all recurse over the tree) ever sees it.
//!
//! Depth, as `lbac.max_query_depth` counts it: a selector, number or string is 1; a function
//! call or aggregation, a parenthesis, a unary `-`/`+`, a binary operator and a subquery each add
//! one level above their deepest operand. So `up` is 1, `-up` and `sum(up)` are 2,
//! `a + b + c` is 3, and `rate(x[5m])` is 2 (a range selector is a selector).
//!
//! The scanner reads tokens as `promql-parser`'s lexer does (strings with `\` escapes in all three
//! quote styles, `#` comments, case-insensitive keywords that may also be metric names) and
//! applies the grammar's precedences (`or` < `and unless` < comparisons < `+ -` < `* / % atan2`
//! < `^`, right-associative; unary binds like `*`; `[…]`, `offset` and `@` bind tightest) with an
//! explicit operator stack, as a shunting-yard parser would, keeping depths instead of trees.
//! Every tree the parser can build, even from a query that turns out invalid half way, is one
//! the scanner has measured. Where the scanner cannot follow the text (the query is malformed),
//! it falls back to a bound that holds for any text: the tree cannot have more levels than the
//! query has operator, bracket and word tokens.

use super::{LbacError, QueryLimits};

#[derive(Clone, Copy)]
enum Op {
    Bin {
        prec: u8,
    },
    Unary,
    Paren,
    /// A call or aggregation: the deepest argument so far, and whether it has one.
    Call {
        deepest: u32,
        args: u32,
    },
}

const UNARY_PREC: u8 = 5;
const POW_PREC: u8 = 6;

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
    vals: Vec<u32>,
    ops: Vec<Op>,
    max: u32,
    limit: u32,
}

/// Why the scanner stopped.
enum Stop {
    TooDeep,
    /// The scanner cannot follow the text; the parser will explain what is wrong.
    Malformed,
}

fn is_alpha(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

fn binary_prec(word: &str) -> Option<u8> {
    match word {
        "or" => Some(1),
        "and" | "unless" => Some(2),
        "atan2" => Some(5),
        _ => None,
    }
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "avg",
    "count",
    "min",
    "max",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "count_values",
    "quantile",
    "limitk",
    "limit_ratio",
];

impl Scan<'_> {
    fn push(&mut self, v: u32) -> Result<(), Stop> {
        if v > self.limit {
            return Err(Stop::TooDeep);
        }
        self.max = self.max.max(v);
        self.vals.push(v);
        Ok(())
    }

    fn pop(&mut self) -> Result<u32, Stop> {
        self.vals.pop().ok_or(Stop::Malformed)
    }

    /// Skips whitespace and `#` comments.
    fn skip_blank(&mut self) {
        while self.i < self.b.len() {
            match self.b[self.i] {
                c if c.is_ascii_whitespace() => self.i += 1,
                b'#' => {
                    while self.i < self.b.len() && !matches!(self.b[self.i], b'\n' | b'\r') {
                        self.i += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_blank();
        self.b.get(self.i).copied()
    }

    /// A quoted string starting at `i` (any of the three quotes; `\` escapes in each, as the
    /// lexer reads them).
    fn skip_string(&mut self) -> Result<(), Stop> {
        let q = self.b[self.i];
        let mut j = self.i + 1;
        while j < self.b.len() {
            match self.b[j] {
                b'\\' => j += 2,
                c if c == q => {
                    self.i = j + 1;
                    return Ok(());
                }
                _ => j += 1,
            }
        }
        Err(Stop::Malformed)
    }

    fn word(&mut self) -> String {
        let start = self.i;
        while self.i < self.b.len() && is_ident(self.b[self.i]) {
            self.i += 1;
        }
        String::from_utf8_lossy(&self.b[start..self.i]).to_ascii_lowercase()
    }

    /// A number or duration, as the lexer's `scan_number` and duration rules read it.
    fn number(&mut self) {
        let b = self.b;
        let mut hex = false;
        if b.get(self.i) == Some(&b'0') && matches!(b.get(self.i + 1), Some(b'x' | b'X')) {
            hex = true;
            self.i += 2;
        }
        let digit = |c: u8| {
            if hex {
                c.is_ascii_hexdigit()
            } else {
                c.is_ascii_digit()
            }
        };
        while self.i < b.len() && digit(b[self.i]) {
            self.i += 1;
        }
        if b.get(self.i) == Some(&b'.') {
            self.i += 1;
            while self.i < b.len() && digit(b[self.i]) {
                self.i += 1;
            }
        }
        if matches!(b.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(b.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
        }
        // the rest of a number, exponent or duration (`1h30m`, `5ms`): none of it nests
        while self.i < b.len() && (b[self.i].is_ascii_alphanumeric() || b[self.i] == b'.') {
            self.i += 1;
        }
    }

    /// `(label, "label", …)` after `by`, `without`, `on`, `ignoring`, `group_left/right`, or
    /// `(number)` after `fill…`: nothing in it nests.
    fn skip_list(&mut self) -> Result<(), Stop> {
        if self.peek() != Some(b'(') {
            return Err(Stop::Malformed);
        }
        self.i += 1;
        loop {
            match self.peek() {
                None | Some(b'(') => return Err(Stop::Malformed),
                Some(b')') => {
                    self.i += 1;
                    return Ok(());
                }
                Some(b'"' | b'\'' | b'`') => self.skip_string()?,
                Some(_) => self.i += 1,
            }
        }
    }

    /// `{…}` of a selector: strings and matchers, nothing that nests.
    fn skip_braces(&mut self) -> Result<(), Stop> {
        self.i += 1;
        loop {
            match self.peek() {
                None | Some(b'{') => return Err(Stop::Malformed),
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                Some(b'"' | b'\'' | b'`') => self.skip_string()?,
                Some(_) => self.i += 1,
            }
        }
    }

    /// Reduces operators of the stack that bind at least as tightly as an operator of `prec`.
    fn reduce_for(&mut self, prec: u8) -> Result<(), Stop> {
        while let Some(&top) = self.ops.last() {
            let q = match top {
                Op::Bin { prec: q } => q,
                Op::Unary => UNARY_PREC,
                Op::Paren | Op::Call { .. } => break,
            };
            // `^` is right-associative, everything else left
            if q > prec || (q == prec && prec != POW_PREC) {
                self.reduce_one()?;
            } else {
                break;
            }
        }
        Ok(())
    }

    fn reduce_one(&mut self) -> Result<(), Stop> {
        match self.ops.pop() {
            Some(Op::Bin { .. }) => {
                let r = self.pop()?;
                let l = self.pop()?;
                self.push(l.max(r) + 1)
            }
            Some(Op::Unary) => {
                let v = self.pop()?;
                self.push(v + 1)
            }
            _ => Err(Stop::Malformed),
        }
    }

    /// Reduces up to the innermost open group.
    fn reduce_group(&mut self) -> Result<(), Stop> {
        while let Some(Op::Bin { .. } | Op::Unary) = self.ops.last() {
            self.reduce_one()?;
        }
        Ok(())
    }

    /// After a binary operator: `bool`, `on(…)`/`ignoring(…)`, `group_left/right[(…)]`,
    /// `fill…(n)`.
    fn binary_modifiers(&mut self) -> Result<(), Stop> {
        loop {
            let save = self.i;
            if !self.peek().is_some_and(is_alpha) {
                return Ok(());
            }
            let w = self.word();
            match w.as_str() {
                "bool" => {}
                "on" | "ignoring" | "fill" | "fill_left" | "fill_right" => self.skip_list()?,
                "group_left" | "group_right" => {
                    if self.peek() == Some(b'(') {
                        self.skip_list()?;
                    }
                }
                _ => {
                    self.i = save;
                    return Ok(());
                }
            }
        }
    }

    /// Scans one operand (prefix operators, then a primary). Returns with the operand's value
    /// pushed, or with a group opened (then the caller scans the group's first operand).
    fn operand(&mut self) -> Result<bool, Stop> {
        match self.peek() {
            None => Err(Stop::Malformed),
            Some(b'-' | b'+') => {
                self.i += 1;
                self.ops.push(Op::Unary);
                Ok(false)
            }
            Some(b'(') => {
                self.i += 1;
                self.ops.push(Op::Paren);
                Ok(false)
            }
            Some(b'{') => {
                self.skip_braces()?;
                self.push(1)?;
                Ok(true)
            }
            Some(b'"' | b'\'' | b'`') => {
                self.skip_string()?;
                self.push(1)?;
                Ok(true)
            }
            Some(c) if c.is_ascii_digit() || c == b'.' => {
                self.number();
                self.push(1)?;
                Ok(true)
            }
            Some(c) if is_alpha(c) || c == b':' => {
                let w = self.word();
                if AGGREGATIONS.contains(&w.as_str())
                    && matches!(self.peek(), Some(c) if is_alpha(c))
                {
                    let save = self.i;
                    let m = self.word();
                    if m == "by" || m == "without" {
                        self.skip_list()?;
                    } else {
                        self.i = save;
                    }
                }
                match self.peek() {
                    Some(b'(') => {
                        self.i += 1;
                        self.ops.push(Op::Call {
                            deepest: 0,
                            args: 0,
                        });
                        // `time()`: no argument
                        if self.peek() == Some(b')') {
                            self.i += 1;
                            self.ops.pop();
                            self.push(1)?;
                            return Ok(true);
                        }
                        Ok(false)
                    }
                    Some(b'{') => {
                        self.skip_braces()?;
                        self.push(1)?;
                        Ok(true)
                    }
                    _ => {
                        self.push(1)?;
                        Ok(true)
                    }
                }
            }
            Some(_) => Err(Stop::Malformed),
        }
    }

    /// After an operand: postfix modifiers, then a binary operator, `,`, `)` or the end.
    /// Returns false at the end of the query.
    fn after_operand(&mut self) -> Result<bool, Stop> {
        loop {
            let Some(c) = self.peek() else {
                return Ok(false);
            };
            match c {
                b'[' => {
                    let mut subquery = false;
                    self.i += 1;
                    loop {
                        match self.b.get(self.i) {
                            None | Some(b'[') => return Err(Stop::Malformed),
                            Some(b']') => break,
                            Some(b':') => subquery = true,
                            _ => {}
                        }
                        self.i += 1;
                    }
                    self.i += 1;
                    if subquery {
                        let v = self.pop()?;
                        self.push(v + 1)?;
                    }
                }
                b'@' => {
                    self.i += 1;
                    match self.peek() {
                        Some(b'+' | b'-') => {
                            self.i += 1;
                            self.peek();
                            self.number();
                        }
                        Some(c) if c.is_ascii_digit() || c == b'.' => self.number(),
                        Some(c) if is_alpha(c) => {
                            self.word();
                            if self.peek() != Some(b'(') {
                                return Err(Stop::Malformed);
                            }
                            self.i += 1;
                            if self.peek() != Some(b')') {
                                return Err(Stop::Malformed);
                            }
                            self.i += 1;
                        }
                        _ => return Err(Stop::Malformed),
                    }
                }
                b',' => {
                    self.i += 1;
                    self.reduce_group()?;
                    let v = self.pop()?;
                    match self.ops.last_mut() {
                        Some(Op::Call { deepest, args }) => {
                            *deepest = (*deepest).max(v);
                            *args += 1;
                        }
                        _ => return Err(Stop::Malformed),
                    }
                    return Ok(true);
                }
                b')' => {
                    self.i += 1;
                    self.reduce_group()?;
                    let v = self.pop()?;
                    match self.ops.pop() {
                        Some(Op::Paren) => self.push(v + 1)?,
                        Some(Op::Call { deepest, .. }) => self.push(deepest.max(v) + 1)?,
                        _ => return Err(Stop::Malformed),
                    }
                    // more postfix or an operator may follow the group
                }
                c if is_alpha(c) => {
                    let save = self.i;
                    let w = self.word();
                    if let Some(p) = binary_prec(&w) {
                        self.reduce_for(p)?;
                        self.ops.push(Op::Bin { prec: p });
                        self.binary_modifiers()?;
                        return Ok(true);
                    }
                    match w.as_str() {
                        "offset" => {
                            if matches!(self.peek(), Some(b'+' | b'-')) {
                                self.i += 1;
                            }
                            match self.peek() {
                                Some(c) if c.is_ascii_digit() || c == b'.' => self.number(),
                                _ => return Err(Stop::Malformed),
                            }
                        }
                        "by" | "without" => self.skip_list()?,
                        _ => {
                            self.i = save;
                            return Err(Stop::Malformed);
                        }
                    }
                }
                _ => {
                    let two = self.b.get(self.i..self.i + 2);
                    let (prec, len) = match (c, two) {
                        (_, Some(b"==" | b"!=" | b"<=" | b">=")) => (3, 2),
                        (b'<' | b'>', _) => (3, 1),
                        (b'+' | b'-', _) => (4, 1),
                        (b'*' | b'/' | b'%', _) => (5, 1),
                        (b'^', _) => (POW_PREC, 1),
                        _ => return Err(Stop::Malformed),
                    };
                    self.i += len;
                    self.reduce_for(prec)?;
                    self.ops.push(Op::Bin { prec });
                    self.binary_modifiers()?;
                    return Ok(true);
                }
            }
        }
    }

    fn run(&mut self) -> Result<(), Stop> {
        loop {
            // prefix operators and open groups until an operand is complete
            while !self.operand()? {}
            if !self.after_operand()? {
                break;
            }
        }
        self.reduce_group()?;
        if !self.ops.is_empty() || self.vals.len() != 1 {
            return Err(Stop::Malformed);
        }
        Ok(())
    }
}

/// A bound on the depth of any tree built from `query`, whatever the text: every level of a
/// tree needs a token of its own (an operator, a bracket, a comma-separated word or literal).
fn token_bound(query: &str) -> usize {
    let b = query.as_bytes();
    let mut n = 0;
    let mut prev_word = false;
    for &c in b {
        let word = is_ident(c) || c == b'.';
        if word && !prev_word {
            n += 1;
        }
        if !word && !c.is_ascii_whitespace() {
            n += 1;
        }
        prev_word = word;
    }
    n
}

/// The most regex matchers (`=~`, `!~`) one PromQL query may have.
pub const MAX_REGEX_MATCHERS: usize = 64;
/// The largest compiled program one of them may need (the `regex` crate's `size_limit`; its
/// default is 10 MiB). promql-parser compiles every regex matcher, twice per rewrite, and the
/// cost of compiling grows with this size: `\w{200}` (15 bytes of text, Unicode classes)
/// takes a third of a second at the default limit.
pub const MAX_REGEX_PROGRAM_BYTES: usize = 1 << 20;

/// Refuses regex matchers that would cost too much to compile, before promql-parser compiles
/// them without a budget: more than [`MAX_REGEX_MATCHERS`], or one whose compiled program is
/// over [`MAX_REGEX_PROGRAM_BYTES`] (our own compile stops at that size, so this check's cost
/// is bounded too). The literals are found as the lexer finds them: the string after `=~` or
/// `!~`, outside strings and `#` comments.
/// The end of a `#` comment starting at `i` (Prometheus's lexer ends it at `\n` or `\r`).
pub(crate) fn comment_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && !matches!(b[i], b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// The index after a string whose opening quote is at `i`, `\` escaping the next byte (as
/// promql-parser's lexer reads all three quotes); past the end if it is unterminated.
pub(crate) fn quoted_end(b: &[u8], i: usize) -> usize {
    let q = b[i];
    let mut j = i + 1;
    while j < b.len() && b[j] != q {
        j += if b[j] == b'\\' { 2 } else { 1 };
    }
    j + 1
}

pub fn check_regexes(query: &str) -> Result<(), LbacError> {
    let b = query.as_bytes();
    let mut found = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'#' => i = comment_end(b, i),
            b'"' | b'\'' | b'`' => i = quoted_end(b, i),
            b'=' | b'!' if b.get(i + 1) == Some(&b'~') => {
                i += 2;
                while i < b.len() && b[i].is_ascii_whitespace() {
                    i += 1;
                }
                let Some(&q @ (b'"' | b'\'' | b'`')) = b.get(i) else {
                    continue;
                };
                let start = i;
                i = quoted_end(b, i);
                found += 1;
                if found > MAX_REGEX_MATCHERS {
                    return Err(LbacError::BadQuery(format!(
                        "the query has more than {MAX_REGEX_MATCHERS} regex matchers"
                    )));
                }
                let Some(lit) = query.get(start..i.min(b.len())) else {
                    continue;
                };
                // a single-quoted literal as the double-quoted one of the same value
                let requoted;
                let lit = if q == b'\'' && lit.len() >= 2 {
                    let mut t = String::with_capacity(lit.len() + 2);
                    t.push('"');
                    let mut chars = lit[1..lit.len() - 1].chars();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => match chars.next() {
                                Some('\'') => t.push('\''),
                                Some(n) => {
                                    t.push('\\');
                                    t.push(n);
                                }
                                None => t.push('\\'),
                            },
                            '"' => t.push_str("\\\""),
                            c => t.push(c),
                        }
                    }
                    t.push('"');
                    requoted = t;
                    requoted.as_str()
                } else {
                    lit
                };
                // what does not unquote is left to the parser to refuse
                let Some(value) = super::logql::golang::unquote(lit) else {
                    continue;
                };
                let Ok(value) = std::str::from_utf8(&value) else {
                    continue;
                };
                if let Err(regex::Error::CompiledTooBig(_)) =
                    regex::RegexBuilder::new(&format!("^(?:{value})$"))
                        .size_limit(MAX_REGEX_PROGRAM_BYTES)
                        .build()
                {
                    return Err(LbacError::BadQuery(format!(
                        "a regex matcher of the query is too complex (its compiled form is over {MAX_REGEX_PROGRAM_BYTES} bytes)"
                    )));
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Checks `query` against `limits` (length, then depth). Returns the depth the scanner measured,
/// or `None` when it could not follow a malformed query that is still small enough to hand to
/// the parser for its error message.
pub fn check(query: &str, limits: &QueryLimits) -> Result<Option<usize>, LbacError> {
    limits.check_len("query", query)?;
    let mut s = Scan {
        b: query.as_bytes(),
        i: 0,
        vals: Vec::new(),
        ops: Vec::new(),
        max: 0,
        limit: u32::try_from(limits.max_depth).unwrap_or(u32::MAX),
    };
    match s.run() {
        Ok(()) => Ok(Some(s.max as usize)),
        Err(Stop::TooDeep) => Err(limits.too_deep("query")),
        Err(Stop::Malformed) if token_bound(query) <= limits.max_depth => Ok(None),
        Err(Stop::Malformed) => Err(LbacError::BadQuery(
            "invalid PromQL: the query does not parse".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth(q: &str) -> usize {
        let limits = QueryLimits {
            max_bytes: 1 << 20,
            max_depth: 100_000,
        };
        check(q, &limits)
            .unwrap_or_else(|e| panic!("{q}: {e:?}"))
            .unwrap_or_else(|| panic!("{q}: scanner could not follow"))
    }

    #[test]
    fn depths_follow_the_definition() {
        for (q, d) in [
            ("up", 1),
            ("1", 1),
            ("\"s\"", 1),
            ("-up", 2),
            ("- - up", 3),
            ("+up", 2),
            ("(up)", 2),
            ("sum(up)", 2),
            ("sum by (a) (up)", 2),
            ("sum(up) by (a)", 2),
            ("rate(x[5m])", 2),
            ("max_over_time(x[5m:1m])", 3),
            ("a + b", 2),
            ("a + b + c", 3),
            ("a + b * c", 3),
            ("a * b + c", 3),
            ("a ^ b ^ c", 3),
            ("-a ^ b", 3),
            ("-a * b", 3),
            ("a or b and c", 3),
            ("a / on(x) group_left(y) b", 2),
            ("a > bool b", 2),
            ("topk(5, x)", 2),
            ("time()", 1),
            ("x offset -5m", 1),
            ("x @ start()", 1),
            ("x @ 1700000000", 1),
            ("rate(x[5m] offset 1h)", 2),
            (
                "histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m])))",
                4,
            ),
            ("sum without () (x)", 2),
            ("a and on() b", 2),
            ("{__name__=\"a\", b=~\"(c\"} # (((\n + 1", 2),
            ("by + offset", 2),
            ("sum(x) / sum(y)", 3),
            ("1e-3 + 0x1e-3", 3),
            ("a atan2 b", 2),
            ("a == b != c", 3),
        ] {
            assert_eq!(depth(q), d, "{q}");
        }
    }

    #[test]
    fn the_limit_is_exact_for_each_shape() {
        let limits = QueryLimits {
            max_bytes: 1 << 20,
            max_depth: 40,
        };
        type Builder = fn(usize) -> String;
        let shapes: [(&str, Builder); 6] = [
            ("sum", |n| {
                format!("{}up{}", "sum(".repeat(n), ")".repeat(n))
            }),
            ("paren", |n| format!("{}up{}", "(".repeat(n), ")".repeat(n))),
            ("unary", |n| format!("{}up", "-".repeat(n))),
            ("chain", |n| format!("up{}", " + up".repeat(n))),
            ("pow", |n| format!("up{}", " ^ up".repeat(n))),
            ("subquery", |n| {
                format!(
                    "{}up{}",
                    "max_over_time(".repeat(n / 2),
                    "[5m:])".repeat(n / 2)
                )
            }),
        ];
        for (name, make) in shapes {
            // levels above the leaf: n (subquery: two per step)
            let at = make(39);
            let over = make(if name == "subquery" { 41 } else { 40 });
            if name == "subquery" {
                let q = make(38);
                assert!(check(&q, &limits).is_ok(), "{name}");
            } else {
                assert_eq!(check(&at, &limits).unwrap(), Some(40), "{name}");
            }
            let e = check(&over, &limits).unwrap_err();
            assert!(
                matches!(&e, LbacError::BadQuery(m) if m.contains("lbac.max_query_depth")),
                "{name}: {e:?}"
            );
        }
    }

    #[test]
    fn malformed_deep_input_is_refused_without_parsing() {
        let limits = QueryLimits::default();
        for q in [
            format!("{}up", "(".repeat(100_000)),
            format!("{}up{})", "-(".repeat(50_000), ")".repeat(49_999)),
            format!("{}up )", "-".repeat(100_000)),
            format!("up{} +", " + up".repeat(50_000)),
            "{".repeat(100_000),
        ] {
            let limits = QueryLimits {
                max_bytes: 1 << 20,
                ..limits
            };
            assert!(check(&q, &limits).is_err());
        }
        // a small malformed query is left to the parser for its message
        assert_eq!(check("sum(", &limits).unwrap(), None);
    }

    #[test]
    fn costly_or_numerous_regexes_are_refused_before_parsing() {
        assert!(check_regexes(r#"up{a=~"a.+", b!~'c|d', c=`x`} # =~ "((("#).is_ok());
        let e = check_regexes(r#"up{a=~"\\w{200}"}"#).unwrap_err();
        assert!(
            matches!(&e, LbacError::BadQuery(m) if m.contains("too complex")),
            "{e:?}"
        );
        let many = (0..=MAX_REGEX_MATCHERS)
            .map(|i| format!("l{i}=~\"a\""))
            .collect::<Vec<_>>()
            .join(",");
        let e = check_regexes(&format!("up{{{many}}}")).unwrap_err();
        assert!(
            matches!(&e, LbacError::BadQuery(m) if m.contains("regex matchers")),
            "{e:?}"
        );
    }
}
