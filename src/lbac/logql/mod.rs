//! LogQL rewrite (SPEC 7): every stream selector `{…}` of a log or metric query gets the
//! policy's matchers.
//!
//! # Parsing as Loki parses
//!
//! A query is rewritten only if it parses completely, the way Loki's `syntax.ParseExpr` (and,
//! for `match[]` of the series endpoint, `syntax.ParseMatchers(s, false)`) would accept it:
//! the lexer ([`lex`]) is Loki's `lex.go` over its copy of Go's `text/scanner` in `GoTokens`
//! mode, and the parser ([`parse`]) accepts the language of `syntax.y` with goyacc's conflict
//! resolution and the checks Loki's AST constructors and `validateExpr` make at parse time.
//! Read against grafana/loki at commit 65e30f8488e8a5ea2013c6881675f8103a8f6bc7 (`syntax.y`,
//! `lex.go`, `query_scanner.go`, `ast.go`, `parser.go`, `log/parser.go`, `log/pattern`).
//! What that means for the tricky parts:
//!
//! - Comments: `#…` (Loki's own) and Go's `//…` end at the newline, `/*…*/` must be closed.
//! - Strings: `"…"` with Go escapes (Prometheus' `strutil.Unquote`: `\'` is refused, octal at
//!   most `\377`), raw `` `…` ``. A char literal `'x'` (exactly one character or escape) is a
//!   Go `Char` token, which Loki's lexer hands to the grammar as an identifier (text with the
//!   quotes), so it is only ever a label name; `''`, `'ab'` and unterminated ones are scanner
//!   errors.
//! - A NUL byte anywhere is a scanner error; invalid UTF-8 cannot reach us (`&str`); a byte
//!   order mark at the very start is skipped, as Go's scanner does.
//! - Any other character that is no token (`@`, `:`, `$`, a non-breaking space, …) becomes a
//!   one-character identifier, as in Loki, which the grammar then refuses almost everywhere.
//! - Keywords are case-insensitive; function names (`rate`, `sum`, `ip`, `bytes`, …) are
//!   function tokens only when `(` or `by (`/`without (` follows, without comments between.
//! - Numbers, durations (`5m`, `1h30m`, `1.5h`, `-5m`, Prometheus' units first, Go's second),
//!   byte sizes (`5MB`, `1KiB`) and `[range]`s (Prometheus durations only) read as Loki reads
//!   them; number literals must then satisfy `strconv.ParseFloat` (so `0x10` is refused and
//!   `0x1p4` accepted), `topk`'s parameter `strconv.Atoi` and be positive.
//! - Regexes (stream and label matchers, `|~`/`!~` line filters, `label_replace`, `| regexp`)
//!   must be valid Go RE2: checked with the `regex` crate's parser (`regex-syntax`) plus Go's
//!   limits (repeat counts up to 1000, flags `imsU` only). Go and Rust differ in corners
//!   (Rust knows more Unicode properties, names capture groups more strictly): where they do,
//!   either the query is refused here or Loki refuses it, never a selector is missed.
//! - `ParseExpr` refuses `{}` and selectors whose every matcher matches the empty string
//!   (`{a=~".*"}`). That rule is applied to the rewritten query, the one Loki reads: a
//!   restricted user's `{}` becomes the policy selector and `{ns!="x"}` gets the policy's
//!   selective matcher, while a policy with none (`{env!="dev"}`) leaves them refused. For the series endpoint (`ParseMatchers` without validation)
//!   any non-empty selector is accepted, and a `match[]` that is `{}` once spaces are removed
//!   (Loki's "no matcher" special case) becomes the policy selector.
//! - Loki refuses queries of 128 KiB or more; here the length limit is `lbac.max_query_bytes`.
//!
//! # Depth
//!
//! `lbac.max_query_depth` bounds the syntax tree's depth, counted so:
//! - a leaf is 1: a stream selector with its pipeline (a log query), a number literal
//!   (including a signed one, `-1`: LogQL has no unary operator, only signed literals);
//! - within a log query's pipeline, a line filter `|= "a"` is 1 and each `or` alternative adds
//!   1 (`|= "a" or "b" or "c"` is 3); a label filter (`x="y"`, `n > 5`) is 1, each
//!   parenthesis adds 1, and each join of two label filters (`and`, `or`, `,`, or none) is a
//!   node 1 above its deeper side, in the tree Loki builds (`and` binds tighter than `or`; after
//!   `,` or a bare juxtaposition everything that follows is grouped to the right); the log
//!   query's depth is that of its deepest stage (`| unwrap`'s filters included), at least 1 — a
//!   stage itself adds nothing, so `{a="b"} | json | logfmt` is 1;
//! - a log range (`{…}[5m]`) is its log query's depth plus 1 per parenthesis around it;
//! - a range aggregation (`rate(…)`), vector aggregation (`sum(…)`), `label_replace(…)`,
//!   `vector(…)` (whose number is a leaf: depth 2) and a parenthesized expression each add 1
//!   above their content;
//! - a binary operation is 1 above its deeper operand, so a chain `a + b + c` of N operators
//!   (left- or right-associative) is N+1.
//!
//! The parser has no recursion at all (explicit stacks), so the depth limit bounds memory and
//! time only; any query up to [`crate::lbac::HARD_MAX_QUERY_DEPTH`] parses on a small stack.
//! Everything is linear in the query's length.
//!
//! # Output
//!
//! The query text with (1) every comment removed (a line comment up to, not including, its
//! newline; a block comment replaced by one space) and (2) `, <policy>` inserted before the
//! closing `}` of every stream selector; every other byte as it was. The output is parsed again
//! and must have the same selectors, each ending with the policy, and no comment left;
//! otherwise the query is refused ("cannot be rewritten faithfully", e.g. a policy label named
//! like a LogQL keyword).

pub(crate) mod golang;
mod lex;
mod parse;
#[cfg(test)]
mod tests;

use super::{HARD_MAX_QUERY_BYTES, HARD_MAX_QUERY_DEPTH, LbacError, QueryLimits};
use crate::selector::{Matcher, MatchersText};
use parse::{Mode, Parsed};

fn bad(msg: impl std::fmt::Display) -> LbacError {
    LbacError::BadQuery(format!("invalid LogQL: {msg}"))
}

fn parse_as(text: &str, mode: Mode, limits: &QueryLimits) -> Result<Parsed, LbacError> {
    parse::parse(text, mode, limits.max_depth).map_err(|e| match e {
        parse::Error::Syntax(m) => bad(m),
        parse::Error::TooDeep => limits.too_deep("query"),
    })
}

/// Whether the selector `{…}` at `(open, close)` has no matcher (only spaces and comments).
fn is_empty_selector(text: &str, parsed: &Parsed, (open, close): (usize, usize)) -> bool {
    let mut i = open + 1;
    for c in parsed
        .comments
        .iter()
        .filter(|c| c.start > open && c.end <= close)
    {
        if !text[i..c.start].trim().is_empty() {
            return false;
        }
        i = c.end;
    }
    text[i..close].trim().is_empty()
}

/// `text` without comments and with the policy before each selector's `}` (after `, ` when the
/// selector has matchers).
fn edit(text: &str, parsed: &Parsed, policy: &str) -> String {
    let with_sep = format!(", {policy}");
    let mut out = String::with_capacity(text.len() + parsed.selectors.len() * with_sep.len());
    let mut copied = 0;
    let mut comments = parsed.comments.iter().peekable();
    for &(open, close) in &parsed.selectors {
        let insert = if is_empty_selector(text, parsed, (open, close)) {
            policy
        } else {
            &with_sep
        };
        while let Some(c) = comments.next_if(|c| c.start < close) {
            out.push_str(&text[copied..c.start]);
            if c.block {
                out.push(' ');
            }
            copied = c.end;
        }
        out.push_str(&text[copied..close]);
        out.push_str(insert);
        copied = close;
    }
    for c in comments {
        out.push_str(&text[copied..c.start]);
        if c.block {
            out.push(' ');
        }
        copied = c.end;
    }
    out.push_str(&text[copied..]);
    out
}

/// Rewrites, then checks the output: same number of selectors, each ending with the policy.
///
/// The input must parse as LogQL; Loki's rule that a selector needs a matcher that does not
/// match the empty string (which `Mode::Query` applies) is applied to the output, the query
/// Loki will read: a restricted user may write `{}` or `{ns!="x"}` and gets what the policy
/// allows, unless the policy itself has no such matcher (then Loki would refuse it too).
fn rewrite_as(
    text: &str,
    policy: &[Matcher],
    limits: &QueryLimits,
    mode: Mode,
) -> Result<String, LbacError> {
    let input_mode = if mode == Mode::Query { Mode::Any } else { mode };
    let parsed = parse_as(text, input_mode, limits)?;
    let policy_text = MatchersText(policy).to_string();
    let out = edit(text, &parsed, &policy_text);
    // Loki's verdict on the query it will read
    let again = parse_as(&out, mode, limits)?;
    let faithful = again.comments.is_empty()
        && again.selectors.len() == parsed.selectors.len()
        && again
            .selectors
            .iter()
            .all(|&(open, close)| out[open + 1..close].ends_with(&policy_text));
    if !faithful {
        return Err(bad("query cannot be rewritten faithfully"));
    }
    Ok(out)
}

/// Adds `policy` to every stream selector of `query` (a log or metric query). Refuses (400)
/// what Loki would not parse, and what is longer or deeper than `limits`.
pub fn rewrite(query: &str, policy: &[Matcher], limits: &QueryLimits) -> Result<String, LbacError> {
    limits.check_len("query", query)?;
    rewrite_as(query, policy, limits, Mode::Query)
}

/// `match`/`match[]` of `/loki/api/v1/series`: a stream selector only (Loki's
/// `syntax.ParseMatchers(s, false)`), which gets the policy. `{}` (spaces aside), which Loki
/// reads as "every series", becomes the policy selector.
pub fn rewrite_series_selector(
    sel: &str,
    policy: &[Matcher],
    limits: &QueryLimits,
) -> Result<String, LbacError> {
    limits.check_len("series selector", sel)?;
    if sel.len() < 1024 && sel.replace(' ', "") == "{}" {
        return Ok(policy_selector(policy));
    }
    rewrite_as(sel, policy, limits, Mode::Series)
}

/// The stream selector to send when a labels/series request names none: just the policy.
pub fn policy_selector(policy: &[Matcher]) -> String {
    format!("{{{}}}", MatchersText(policy))
}

const TEST_LIMITS: QueryLimits = QueryLimits {
    max_bytes: HARD_MAX_QUERY_BYTES,
    max_depth: HARD_MAX_QUERY_DEPTH,
};

/// The stream selectors of a query as text, for checks (selectors are not validated, so a
/// policy-less `{}` inside an otherwise valid query is listed too). Unparsable → `BadQuery`.
pub fn stream_selectors(query: &str) -> Result<Vec<String>, LbacError> {
    let parsed = parse_as(query, Mode::Any, &TEST_LIMITS)?;
    Ok(parsed
        .selectors
        .iter()
        .map(|&(open, close)| query[open..=close].to_string())
        .collect())
}

/// Undoes [`rewrite`] exactly, for checks: removes the policy text inserted before each
/// selector's `}`, giving the query as rewritten but without the policy (so without its
/// comments). `None` if it does not parse or some selector does not end with the policy.
pub fn strip_policy(out: &str, policy: &[Matcher]) -> Option<String> {
    let inner = MatchersText(policy).to_string();
    let with_sep = format!(", {inner}");
    let parsed = parse::parse(out, Mode::Any, HARD_MAX_QUERY_DEPTH).ok()?;
    let mut restored = String::with_capacity(out.len());
    let mut copied = 0;
    for &(open, close) in &parsed.selectors {
        let body = &out[open + 1..close];
        let cut = if body.ends_with(&with_sep)
            && !body[..body.len() - with_sep.len()].trim().is_empty()
        {
            with_sep.len()
        } else if body.ends_with(&inner) && body[..body.len() - inner.len()].trim().is_empty() {
            inner.len()
        } else {
            return None;
        };
        restored.push_str(&out[copied..close - cut]);
        copied = close;
    }
    restored.push_str(&out[copied..]);
    Some(restored)
}
