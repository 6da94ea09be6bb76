//! A LogQL parser that accepts what Loki's `syntax.y` (with goyacc's conflict resolution: shift
//! wins) and its parse-time checks accept, and records where the stream selectors are.
//!
//! No recursion anywhere: expressions use an explicit operator stack (shunting-yard), label
//! filter expressions another one, nested log ranges a counter. Every stack is bounded by the
//! depth limit, and depths are computed bottom-up exactly as the module docs define them.

use super::golang::{ReUse, atoi, check_regex, matches_empty, parse_float_ok};
use super::lex::{Comment, RangeFn, T, Tok, VecFn, lex};
use std::borrow::Cow;

/// What the text must be, as the Loki function that parses it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// `syntax.ParseExpr`: any query, every stream selector validated (it needs a matcher that
    /// does not match the empty string).
    Query,
    /// `syntax.ParseMatchers(s, false)` as the series endpoint uses it: a stream selector only,
    /// with at least one matcher, not validated.
    Series,
    /// The grammar and checks of `Query` without the selector validation.
    Any,
}

pub enum Error {
    Syntax(String),
    TooDeep,
}

impl From<String> for Error {
    fn from(s: String) -> Error {
        Error::Syntax(s)
    }
}

pub struct Parsed {
    /// Byte offsets of the `{` and `}` of every stream selector, in order.
    pub selectors: Vec<(usize, usize)>,
    pub comments: Vec<Comment>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// A log query (`logExpr`); `bare` when it is a stream selector without a pipeline.
    Log {
        bare: bool,
    },
    Sample,
    /// A `LiteralExpr` (a number, or an operation on two literals).
    Literal,
}

#[derive(Clone, Copy, Debug)]
struct Val {
    kind: Kind,
    depth: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Item {
    /// A binary operator: token, precedence, right-associative.
    Op(T, u8, bool),
    Paren,
    VecAgg(VecAggOpen),
    LabelReplace,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct VecAggOpen {
    f: VecFn,
    /// `by`/`without` before the arguments: `Some(has labels)`.
    grouping: Option<bool>,
    /// The first argument `NUMBER ,`: whether `strconv.Atoi` gives a positive integer.
    param: Option<bool>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum LfOp {
    Open,
    And,
    Or,
    /// `,` and two filters side by side: both `and`, and goyacc always shifts after them.
    Comma,
}

struct P<'a> {
    src: &'a str,
    toks: Vec<Tok>,
    pos: usize,
    mode: Mode,
    max_depth: usize,
    selectors: Vec<(usize, usize)>,
}

fn binop(t: T) -> Option<(u8, bool)> {
    Some(match t {
        T::Or => (1, false),
        T::And | T::Unless => (2, false),
        T::CmpEq | T::Neq | T::Lt | T::Lte | T::Gt | T::Gte => (3, false),
        T::Add | T::Sub => (4, false),
        T::Mul | T::Div | T::Mod => (5, false),
        T::Pow => (6, true),
        _ => return None,
    })
}

fn is_line_filter(t: T) -> bool {
    matches!(
        t,
        T::PipeExact | T::PipeMatch | T::PipePattern | T::Nre | T::Neq | T::Npa
    )
}

impl<'a> P<'a> {
    fn peek(&self) -> T {
        self.toks[self.pos].t
    }

    fn peek_at(&self, k: usize) -> T {
        self.toks.get(self.pos + k).map_or(T::Eof, |t| t.t)
    }

    fn next(&mut self) -> Tok {
        let t = self.toks[self.pos];
        if t.t != T::Eof {
            self.pos += 1;
        }
        t
    }

    fn unexpected(&self) -> Error {
        let t = self.toks[self.pos];
        if t.t == T::Eof {
            Error::Syntax("syntax error: unexpected end of query".into())
        } else {
            // at most 40 bytes of the token, cut at a character boundary
            let mut end = t.end().min(t.start() + 40);
            while !self.src.is_char_boundary(end) {
                end -= 1;
            }
            Error::Syntax(format!(
                "syntax error: unexpected {:?} at byte {}",
                &self.src[t.start()..end],
                t.start()
            ))
        }
    }

    fn expect(&mut self, t: T) -> Result<Tok, Error> {
        if self.peek() == t {
            Ok(self.next())
        } else {
            Err(self.unexpected())
        }
    }

    fn string(&mut self) -> Result<Cow<'a, [u8]>, Error> {
        let t = self.expect(T::Str)?;
        let src: &'a str = self.src;
        super::golang::unquote(&src[t.start()..t.end()])
            .ok_or_else(|| Error::Syntax("invalid string".into()))
    }

    fn text(&self, t: Tok) -> &'a str {
        let src: &'a str = self.src;
        &src[t.start()..t.end()]
    }

    fn depth(&self, d: usize) -> Result<usize, Error> {
        if d > self.max_depth {
            Err(Error::TooDeep)
        } else {
            Ok(d)
        }
    }

    fn regex(&self, v: &[u8], usage: ReUse) -> Result<regex_syntax::hir::Hir, Error> {
        check_regex(v, usage).map_err(|e| Error::Syntax(format!("invalid regexp: {e}")))
    }

    /// `{ matchers }`, recorded; validated in `Query` mode.
    fn selector(&mut self) -> Result<(), Error> {
        let open = self.expect(T::LBrace)?;
        let mut count = 0;
        let mut selective = false;
        if self.peek() != T::RBrace {
            loop {
                let (op, value) = self.matcher(self.mode == Mode::Query)?;
                count += 1;
                if !selective && self.mode == Mode::Query {
                    selective = match op {
                        T::Eq => !value.is_empty(),
                        T::Neq => value.is_empty(),
                        T::Re => !matches_empty(&self.regex(&value, ReUse::Matcher)?),
                        _ => matches_empty(&self.regex(&value, ReUse::Matcher)?),
                    };
                }
                if self.peek() != T::Comma {
                    break;
                }
                self.next();
            }
        }
        let close = self.expect(T::RBrace)?;
        match self.mode {
            Mode::Query if !selective => {
                return Err(Error::Syntax(
                    "queries require at least one regexp or equality matcher that does not have an empty-compatible value".into(),
                ));
            }
            Mode::Series if count == 0 => {
                return Err(Error::Syntax("0 matchers in a stream selector".into()));
            }
            _ => {}
        }
        self.selectors.push((open.start(), close.start()));
        Ok(())
    }

    /// `name op "value"` (Prometheus' `labels.NewMatcher`: regexes must compile).
    fn matcher(&mut self, need_value: bool) -> Result<(T, Cow<'a, [u8]>), Error> {
        self.expect(T::Ident)?;
        let op = self.next().t;
        if !matches!(op, T::Eq | T::Neq | T::Re | T::Nre) {
            self.pos -= 1;
            return Err(self.unexpected());
        }
        // the lexer checked the string; its value matters for regexes and validation only
        let value = if matches!(op, T::Re | T::Nre) || need_value {
            self.string()?
        } else {
            self.expect(T::Str)?;
            Cow::Borrowed(&b""[..])
        };
        if matches!(op, T::Re | T::Nre) {
            self.regex(&value, ReUse::Matcher)?;
        }
        Ok((op, value))
    }

    /// A log query's pipeline (possibly empty); stops before `| unwrap`. Returns its depth.
    fn pipeline(&mut self, base: usize) -> Result<(usize, bool), Error> {
        let mut depth = 1;
        let mut any = false;
        loop {
            let t = self.peek();
            if is_line_filter(t) {
                depth = depth.max(self.line_filter(base)?);
            } else if t == T::Pipe && self.peek_at(1) != T::Unwrap {
                self.next();
                depth = depth.max(self.stage(base)?);
            } else {
                return Ok((depth, any));
            }
            any = true;
        }
    }

    /// `|= "a" or ip("b") or …`: depth 1 plus one per `or`.
    fn line_filter(&mut self, base: usize) -> Result<usize, Error> {
        let op = self.next().t;
        let regex = matches!(op, T::PipeMatch | T::Nre);
        let mut n = 0;
        loop {
            n += 1;
            self.depth(base + n)?;
            if self.peek() == T::Ip {
                self.next();
                self.expect(T::LParen)?;
                self.string()?;
                self.expect(T::RParen)?;
            } else if regex {
                let s = self.string()?;
                self.regex(&s, ReUse::Line)?;
            } else {
                self.expect(T::Str)?;
            }
            if self.peek() != T::Or {
                return Ok(n);
            }
            self.next();
        }
    }

    /// One stage after `|`.
    fn stage(&mut self, base: usize) -> Result<usize, Error> {
        match self.peek() {
            T::Ident | T::LParen => return self.label_filter(base),
            _ => {}
        }
        match self.next().t {
            T::Logfmt => {
                while self.peek() == T::Flag {
                    self.next();
                }
                if self.peek() == T::Ident {
                    self.extractions()?;
                }
            }
            T::Json => {
                if self.peek() == T::Ident {
                    self.extractions()?;
                }
            }
            T::Regexp => {
                let s = self.string()?;
                self.regex(&s, ReUse::Parser)?;
            }
            T::Pattern => {
                let s = self.string()?;
                check_pattern(&s).map_err(|e| Error::Syntax(format!("invalid pattern: {e}")))?;
            }
            T::Unpack | T::Decolorize => {}
            T::LineFmt => {
                self.expect(T::Str)?;
            }
            T::LabelFmt => loop {
                self.expect(T::Ident)?;
                self.expect(T::Eq)?;
                match self.next().t {
                    T::Ident | T::Str => {}
                    _ => {
                        self.pos -= 1;
                        return Err(self.unexpected());
                    }
                }
                if self.peek() != T::Comma {
                    break;
                }
                self.next();
            },
            T::Drop | T::Keep => loop {
                self.expect(T::Ident)?;
                if matches!(self.peek(), T::Eq | T::Neq | T::Re | T::Nre) {
                    self.pos -= 1;
                    self.matcher(false)?;
                }
                if self.peek() != T::Comma {
                    break;
                }
                self.next();
            },
            _ => {
                self.pos -= 1;
                return Err(self.unexpected());
            }
        }
        Ok(1)
    }

    /// `name` or `name="expr"`, comma-separated (`json`/`logfmt` parameters).
    fn extractions(&mut self) -> Result<(), Error> {
        loop {
            self.expect(T::Ident)?;
            if self.peek() == T::Eq {
                self.next();
                self.expect(T::Str)?;
            }
            if self.peek() != T::Comma {
                return Ok(());
            }
            self.next();
        }
    }

    /// One label filter: `name op value`.
    fn label_filter_atom(&mut self) -> Result<(), Error> {
        self.expect(T::Ident)?;
        let op = self.next().t;
        let string_op = matches!(op, T::Eq | T::Neq | T::Re | T::Nre);
        let cmp_op = matches!(
            op,
            T::Gt | T::Gte | T::Lt | T::Lte | T::Neq | T::Eq | T::CmpEq
        );
        if !string_op && !cmp_op {
            self.pos -= 1;
            return Err(self.unexpected());
        }
        match self.peek() {
            T::Str if string_op => {
                self.pos -= 2;
                self.matcher(false)?;
            }
            T::Ip if matches!(op, T::Eq | T::Neq) => {
                self.next();
                self.expect(T::LParen)?;
                self.string()?;
                self.expect(T::RParen)?;
            }
            T::Duration | T::Bytes if cmp_op => {
                self.next();
            }
            T::Number | T::Add | T::Sub if cmp_op => {
                if self.next().t != T::Number {
                    let n = self.expect(T::Number)?;
                    self.literal(n)?;
                } else {
                    let n = self.toks[self.pos - 1];
                    self.literal(n)?;
                }
            }
            _ => return Err(self.unexpected()),
        }
        Ok(())
    }

    fn literal(&self, n: Tok) -> Result<(), Error> {
        if parse_float_ok(self.text(n)) {
            Ok(())
        } else {
            Err(Error::Syntax(format!(
                "unable to parse literal as a float: {}",
                self.text(n)
            )))
        }
    }

    /// A label filter expression: atoms joined by `and`, `or`, `,` or nothing, with
    /// parentheses; returns its depth (an atom is 1; parentheses and each join add 1).
    /// The tree is goyacc's: `and` binds tighter than `or`, both left-associative, and after
    /// `,` or a juxtaposition everything that follows is shifted (they group to the right).
    fn label_filter(&mut self, base: usize) -> Result<usize, Error> {
        let mut ops: Vec<LfOp> = Vec::new();
        let mut vals: Vec<usize> = Vec::new();
        let reduce = |ops: &mut Vec<LfOp>, vals: &mut Vec<usize>, p: &P<'_>| {
            ops.pop();
            let r = vals.pop().unwrap_or(1);
            let l = vals.pop().unwrap_or(1);
            p.depth(l.max(r) + 1 + base)
                .map(|_| vals.push(l.max(r) + 1))
        };
        loop {
            while self.peek() == T::LParen {
                self.next();
                ops.push(LfOp::Open);
                self.depth(base + ops.len() + 1)?;
            }
            self.label_filter_atom()?;
            vals.push(1);
            loop {
                let t = self.peek();
                let incoming = match t {
                    T::And => Some(LfOp::And),
                    T::Or => Some(LfOp::Or),
                    T::Comma | T::Ident | T::LParen => Some(LfOp::Comma),
                    _ => None,
                };
                if let Some(op) = incoming {
                    if matches!(t, T::And | T::Or | T::Comma) {
                        self.next();
                    }
                    while let Some(&top) = ops.last() {
                        let pop = matches!(
                            (top, op),
                            (LfOp::And, LfOp::And | LfOp::Or) | (LfOp::Or, LfOp::Or)
                        );
                        if !pop {
                            break;
                        }
                        reduce(&mut ops, &mut vals, self)?;
                    }
                    ops.push(op);
                    self.depth(base + ops.len() + 1)?;
                    break;
                }
                while matches!(ops.last(), Some(o) if *o != LfOp::Open) {
                    reduce(&mut ops, &mut vals, self)?;
                }
                if ops.is_empty() {
                    return Ok(vals.pop().unwrap_or(1));
                }
                // an open parenthesis: only `)` may come
                self.expect(T::RParen)?;
                ops.pop();
                let d = vals.pop().unwrap_or(1) + 1;
                self.depth(base + d)?;
                vals.push(d);
            }
        }
    }

    /// `| unwrap [conv(]label[)]` and its `| labelFilter` post-filters.
    fn unwrap(&mut self, base: usize) -> Result<usize, Error> {
        self.expect(T::Pipe)?;
        self.expect(T::Unwrap)?;
        if self.peek() == T::Conv {
            self.next();
            self.expect(T::LParen)?;
            self.expect(T::Ident)?;
            self.expect(T::RParen)?;
        } else {
            self.expect(T::Ident)?;
        }
        let mut depth = 1;
        while self.peek() == T::Pipe {
            self.next();
            match self.peek() {
                T::Ident | T::LParen => depth = depth.max(self.label_filter(base)?),
                _ => return Err(self.unexpected()),
            }
        }
        Ok(depth)
    }

    fn at_unwrap(&self) -> bool {
        self.peek() == T::Pipe && self.peek_at(1) == T::Unwrap
    }

    fn offset(&mut self) -> Result<(), Error> {
        if self.peek() == T::Offset {
            self.next();
            self.expect(T::Duration)?;
        }
        Ok(())
    }

    /// `logRangeExpr`; returns its depth and whether it has an `unwrap`.
    fn log_range(&mut self, base: usize) -> Result<(usize, bool), Error> {
        let mut outer = 0;
        while self.peek() == T::LParen && self.peek_at(1) == T::LParen {
            self.next();
            outer += 1;
            self.depth(base + outer + 1)?;
        }
        let inner = self.peek() == T::LParen;
        if inner {
            self.next();
        }
        let base = base + outer + usize::from(inner);
        self.selector()?;
        // the log query's depth (its deepest stage), then one per parenthesis around it
        let (mut query, mut before) = self.pipeline(base)?;
        let mut parens = outer;
        let mut unwrapped = false;
        if self.at_unwrap() {
            query = query.max(self.unwrap(base)?);
            before = true;
            unwrapped = true;
        }
        if inner && self.peek() == T::RParen {
            // `( selector … ) [range]`
            self.next();
            parens += 1;
            self.expect(T::Range)?;
            self.offset()?;
            if !before && self.at_unwrap() {
                query = query.max(self.unwrap(base)?);
                unwrapped = true;
            }
        } else {
            self.expect(T::Range)?;
            self.offset()?;
            if !before {
                query = query.max(self.pipeline(base)?.0);
                if self.at_unwrap() {
                    query = query.max(self.unwrap(base)?);
                    unwrapped = true;
                }
            }
            if inner {
                self.expect(T::RParen)?;
                parens += 1;
            }
        }
        for _ in 0..outer {
            self.expect(T::RParen)?;
        }
        let depth = query + parens;
        Ok((self.depth(depth)?, unwrapped))
    }

    /// `rangeOp ( [NUMBER ,] logRangeExpr ) [grouping]` with Loki's checks.
    fn range_aggregation(&mut self, f: RangeFn, base: usize) -> Result<Val, Error> {
        use RangeFn as R;
        self.next();
        self.expect(T::LParen)?;
        let mut param = None;
        if self.peek() == T::Number && self.peek_at(1) == T::Comma {
            param = Some(self.next());
            self.next();
        }
        let (depth, unwrapped) = self.log_range(base + 1)?;
        self.expect(T::RParen)?;
        let grouped = if matches!(self.peek(), T::By | T::Without) {
            self.grouping()?;
            true
        } else {
            false
        };
        let fail = |m: &str| Err(Error::Syntax(format!("{m} for {f:?}")));
        match param {
            Some(_) if f != R::Quantile => return fail("parameter not supported"),
            Some(p) if !parse_float_ok(self.text(p)) => return fail("invalid parameter"),
            None if f == R::Quantile => return fail("parameter required"),
            _ => {}
        }
        if grouped
            && !matches!(
                f,
                R::Avg | R::Stddev | R::Stdvar | R::Quantile | R::Max | R::Min | R::First | R::Last
            )
        {
            return fail("grouping not allowed");
        }
        let ok = if unwrapped {
            matches!(
                f,
                R::Avg
                    | R::Sum
                    | R::Max
                    | R::Min
                    | R::Stddev
                    | R::Stdvar
                    | R::Quantile
                    | R::Rate
                    | R::RateCounter
                    | R::Absent
                    | R::First
                    | R::Last
            )
        } else {
            matches!(f, R::Bytes | R::BytesRate | R::Count | R::Rate | R::Absent)
        };
        if !ok {
            return fail(if unwrapped {
                "invalid aggregation with unwrap"
            } else {
                "invalid aggregation without unwrap"
            });
        }
        Ok(Val {
            kind: Kind::Sample,
            depth: self.depth(depth + 1)?,
        })
    }

    /// `by|without ( [labels] )`; returns whether it names any label.
    fn grouping(&mut self) -> Result<bool, Error> {
        self.next();
        self.expect(T::LParen)?;
        let named = self.labels()?;
        self.expect(T::RParen)?;
        Ok(named)
    }

    /// `[label {, label}]` before a `)`.
    fn labels(&mut self) -> Result<bool, Error> {
        if self.peek() == T::RParen {
            return Ok(false);
        }
        loop {
            self.expect(T::Ident)?;
            if self.peek() != T::Comma {
                return Ok(true);
            }
            self.next();
        }
    }

    /// `[bool] [on|ignoring (labels) [group_left|group_right [(labels)]]]`
    fn bin_modifiers(&mut self) -> Result<(), Error> {
        if self.peek() == T::Bool {
            self.next();
        }
        if matches!(self.peek(), T::On | T::Ignoring) {
            self.next();
            self.expect(T::LParen)?;
            self.labels()?;
            self.expect(T::RParen)?;
            if matches!(self.peek(), T::GroupLeft | T::GroupRight) {
                self.next();
                if self.peek() == T::LParen {
                    self.next();
                    self.labels()?;
                    self.expect(T::RParen)?;
                }
            }
        }
        Ok(())
    }

    fn reduce_binop(&self, vals: &mut Vec<Val>, op: T) -> Result<(), Error> {
        let r = vals.pop().ok_or_else(|| self.unexpected())?;
        let l = vals.pop().ok_or_else(|| self.unexpected())?;
        if matches!(l.kind, Kind::Log { .. }) || matches!(r.kind, Kind::Log { .. }) {
            return Err(Error::Syntax(
                "a binary operation needs metric queries on both sides, not log queries".into(),
            ));
        }
        let logical = matches!(op, T::Or | T::And | T::Unless);
        if logical && (l.kind == Kind::Literal || r.kind == Kind::Literal) {
            return Err(Error::Syntax(
                "unexpected literal in a logical/set binary operation".into(),
            ));
        }
        let kind = if l.kind == Kind::Literal && r.kind == Kind::Literal {
            Kind::Literal
        } else {
            Kind::Sample
        };
        vals.push(Val {
            kind,
            depth: self.depth(l.depth.max(r.depth) + 1)?,
        });
        Ok(())
    }

    /// The whole query: `expr` then the end.
    fn expr(&mut self) -> Result<Val, Error> {
        let mut stack: Vec<Item> = Vec::new();
        let mut vals: Vec<Val> = Vec::new();
        'operand: loop {
            // every open item will sit above what follows: a lower bound of the depth
            self.depth(stack.len() + 1)?;
            let val = match self.peek() {
                T::LParen => {
                    self.next();
                    stack.push(Item::Paren);
                    continue 'operand;
                }
                T::VecFn(f) => {
                    self.next();
                    let grouping = if matches!(self.peek(), T::By | T::Without) {
                        Some(self.grouping()?)
                    } else {
                        None
                    };
                    self.expect(T::LParen)?;
                    let mut param = None;
                    if self.peek() == T::Number && self.peek_at(1) == T::Comma {
                        let n = self.next();
                        self.next();
                        param = Some(atoi(self.text(n)).is_some_and(|p| p > 0));
                    }
                    stack.push(Item::VecAgg(VecAggOpen { f, grouping, param }));
                    continue 'operand;
                }
                T::LabelReplace => {
                    self.next();
                    self.expect(T::LParen)?;
                    stack.push(Item::LabelReplace);
                    continue 'operand;
                }
                T::RangeFn(f) => self.range_aggregation(f, stack.len())?,
                T::Vector => {
                    self.next();
                    self.expect(T::LParen)?;
                    let n = self.expect(T::Number)?;
                    self.literal(n)?;
                    self.expect(T::RParen)?;
                    Val {
                        kind: Kind::Sample,
                        depth: self.depth(2)?,
                    }
                }
                T::Number => {
                    let n = self.next();
                    self.literal(n)?;
                    Val {
                        kind: Kind::Literal,
                        depth: 1,
                    }
                }
                T::Add | T::Sub => {
                    self.next();
                    let n = self.expect(T::Number)?;
                    self.literal(n)?;
                    Val {
                        kind: Kind::Literal,
                        depth: 1,
                    }
                }
                T::LBrace => {
                    self.selector()?;
                    let (depth, staged) = self.pipeline(stack.len())?;
                    Val {
                        kind: Kind::Log { bare: !staged },
                        depth: self.depth(depth)?,
                    }
                }
                _ => return Err(self.unexpected()),
            };
            vals.push(val);
            loop {
                if let Some((prec, right)) = binop(self.peek()) {
                    let op = self.next().t;
                    self.bin_modifiers()?;
                    while let Some(&Item::Op(top, tp, _)) = stack.last() {
                        if tp > prec || (tp == prec && !right) {
                            stack.pop();
                            self.reduce_binop(&mut vals, top)?;
                        } else {
                            break;
                        }
                    }
                    stack.push(Item::Op(op, prec, right));
                    continue 'operand;
                }
                while let Some(&Item::Op(top, _, _)) = stack.last() {
                    stack.pop();
                    self.reduce_binop(&mut vals, top)?;
                }
                let Some(item) = stack.pop() else {
                    let v = vals.pop().ok_or_else(|| self.unexpected())?;
                    if self.peek() != T::Eof {
                        return Err(self.unexpected());
                    }
                    return Ok(v);
                };
                let inner = vals.pop().ok_or_else(|| self.unexpected())?;
                let kind = match item {
                    Item::Paren => {
                        self.expect(T::RParen)?;
                        inner.kind
                    }
                    Item::VecAgg(open) => {
                        self.expect(T::RParen)?;
                        let mut grouping = open.grouping;
                        if grouping.is_none() && matches!(self.peek(), T::By | T::Without) {
                            grouping = Some(self.grouping()?);
                        }
                        self.vector_aggregation_checks(open, grouping, inner)?;
                        Kind::Sample
                    }
                    Item::LabelReplace => {
                        for _ in 0..3 {
                            self.expect(T::Comma)?;
                            self.expect(T::Str)?;
                        }
                        self.expect(T::Comma)?;
                        let re = self.string()?;
                        self.regex(&re, ReUse::LabelReplace)?;
                        self.expect(T::RParen)?;
                        if matches!(inner.kind, Kind::Log { .. }) {
                            return Err(Error::Syntax("label_replace needs a metric query".into()));
                        }
                        Kind::Sample
                    }
                    Item::Op(..) => unreachable!("operators were reduced"),
                };
                vals.push(Val {
                    kind,
                    depth: self.depth(inner.depth + 1)?,
                });
            }
        }
    }

    fn vector_aggregation_checks(
        &self,
        open: VecAggOpen,
        grouping: Option<bool>,
        inner: Val,
    ) -> Result<(), Error> {
        let fail = |m: &str| Err(Error::Syntax(format!("{m} for {:?}", open.f)));
        if matches!(inner.kind, Kind::Log { .. }) {
            return fail("a metric query is needed, not a log query,");
        }
        match open.f {
            VecFn::Bottomk | VecFn::Topk | VecFn::ApproxTopk => match open.param {
                None => return fail("parameter required"),
                Some(false) => return fail("invalid parameter (must be an integer > 0)"),
                Some(true) if open.f == VecFn::ApproxTopk && grouping.is_some() => {
                    return fail("grouping not allowed");
                }
                Some(true) => {}
            },
            _ if open.param.is_some() => return fail("unsupported parameter"),
            VecFn::Sort | VecFn::SortDesc if grouping == Some(true) => {
                return fail("grouping not allowed");
            }
            _ => {}
        }
        Ok(())
    }
}

/// Loki's `pattern.New` checks: parses, at least one named capture, no two captures side by
/// side, no name twice.
fn check_pattern(p: &[u8]) -> Result<(), String> {
    let p = std::str::from_utf8(p).map_err(|_| "invalid UTF-8".to_string())?;
    if p.is_empty() {
        return Err("empty pattern".into());
    }
    let b = p.as_bytes();
    let mut names: Vec<&str> = Vec::new();
    let mut last_capture = false;
    let mut i = 0;
    while i < b.len() {
        // `<name>`: longest match of '<' [A-Za-z_] [A-Za-z0-9_]* '>'
        if b[i] == b'<'
            && b.get(i + 1)
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
        {
            let mut j = i + 2;
            while b
                .get(j)
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
            {
                j += 1;
            }
            if b.get(j) == Some(&b'>') {
                if last_capture {
                    return Err("consecutive captures".into());
                }
                let name = &p[i + 1..j];
                if name != "_" {
                    if names.contains(&name) {
                        return Err(format!("duplicate capture name ({name})"));
                    }
                    names.push(name);
                }
                last_capture = true;
                i = j + 1;
                continue;
            }
        }
        last_capture = false;
        i += p[i..].chars().next().map_or(1, char::len_utf8);
    }
    if names.is_empty() {
        return Err("at least one capture is required".into());
    }
    Ok(())
}

/// Parses `src` as `mode` says, refusing what goes deeper than `max_depth`.
pub fn parse(src: &str, mode: Mode, max_depth: usize) -> Result<Parsed, Error> {
    let lexed = lex(src)?;
    let mut p = P {
        src,
        toks: lexed.toks,
        pos: 0,
        mode,
        max_depth,
        selectors: Vec::new(),
    };
    let v = p.expr()?;
    if mode == Mode::Series && v.kind != (Kind::Log { bare: true }) {
        return Err(Error::Syntax(
            "only a stream selector is allowed here (no pipeline, no metric query)".into(),
        ));
    }
    Ok(Parsed {
        selectors: p.selectors,
        comments: lexed.comments,
    })
}
