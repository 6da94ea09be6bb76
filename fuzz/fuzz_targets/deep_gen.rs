//! Shared by `promql_rewrite` and `logql_rewrite`: turns a fuzz input into a query, deep and
//! long ones included, and runs checks on a thread whose stack is small enough that a query the
//! depth limit should have stopped overflows it (and crashes the fuzzer) instead of passing.
//!
//! An input that does not start with [`PROGRAM`] is the query itself, as it always was (so the
//! plain seeds and the corpus keep their meaning). One that does is a small program:
//!
//! ```text
//! 0xFF  frame  wrap_a  wrap_b  pattern  count_lo  count_hi  splices  [pos_lo pos_hi kind]×splices  core…
//! ```
//!
//! The query is `frame.open + W(count) + frame.close`, where `W(0)` is the core text (the rest of
//! the input) and `W(n) = w.open + W(n-1) + w.close`, `w` being wrapper `wrap_a` or `wrap_b` of
//! the language's table as bit `n % 8` of `pattern` says. `count` is `count_lo % 64` when bit 7
//! of `count_hi` is clear, else `(count_hi & 7) << 8 | count_lo` (up to 2047, past the 1024
//! levels the checks allow). Then each splice inserts a piece of text (comments of Go,
//! Loki and Prometheus, char literals, quotes, selectors…) at `pos / 65536` of the query's
//! length, so that comment and literal tricks land inside deep queries too.

#![allow(dead_code)]

use obsgate::lbac::QueryLimits;

/// Marks a program input; a query cannot start with it (it is not UTF-8).
pub const PROGRAM: u8 = 0xFF;

/// What every fuzz target allows: the deepest limit a config may set, and a length limit far
/// above what a program makes.
pub const LIMITS: QueryLimits = QueryLimits {
    max_bytes: 1 << 20,
    max_depth: 1024,
};

/// The checks run on a thread with this stack: the rewriters must fit a query of
/// [`LIMITS`]`.max_depth` levels (a gateway worker has 8 MiB, of which a release build needs
/// under 1 MiB for 1024 levels); a depth the limit did not stop overflows it.
pub const STACK: usize = 2 << 20;

pub struct Lang {
    /// (open, close) around the whole query.
    pub frames: &'static [(&'static str, &'static str)],
    /// (open, close) around the query so far, once per level.
    pub wrappers: &'static [(&'static str, &'static str)],
}

/// Pieces spliced into the query: comments in every style either language might be thought to
/// have, quotes and char literals that could hide or reveal them, and selectors that must not
/// escape the policy.
pub const SPLICES: &[&str] = &[
    "// x\n",
    "//",
    "/* x */",
    "/*",
    "*/",
    "/* \" */",
    "# x\n",
    "#",
    "\n",
    " ",
    "\t",
    "'x'",
    "'\"'",
    "'\\''",
    "'",
    "\"",
    "`",
    "\\",
    "\"a\"",
    "`a`",
    "{env=\"dev\"}",
    " or {env=\"dev\"}",
    "{env=\"dev\"} // \"\n",
    "{env=\"dev\"} /* \" */",
    " /* \" */ or {env=\"dev\"}",
    " // \"\n{env=\"dev\"}",
    "(",
    ")",
    "[5m]",
    "[5m:1m]",
    "-",
    "+",
    " or ",
    " and ",
    " | ",
    " |= \"a\"",
    " | x=\"1\"",
    ",",
    "}",
    "{",
    "\u{feff}",
    "\u{a0}",
];

/// The query an input stands for (`None`: not UTF-8).
pub fn query(data: &[u8], lang: &Lang) -> Option<String> {
    let Some((&PROGRAM, prog)) = data.split_first() else {
        return std::str::from_utf8(data).ok().map(str::to_string);
    };
    let byte = |i: usize| prog.get(i).copied().unwrap_or(0);
    let frame = lang.frames[byte(0) as usize % lang.frames.len()];
    let wa = lang.wrappers[byte(1) as usize % lang.wrappers.len()];
    let wb = lang.wrappers[byte(2) as usize % lang.wrappers.len()];
    let pattern = byte(3);
    // half the programs shallow (cheap, for the splices), half up to 2047 levels
    let count = if byte(5) & 0x80 == 0 {
        byte(4) as usize % 64
    } else {
        (byte(4) as usize | (byte(5) as usize & 7) << 8) % 2048
    };
    let splices = (byte(6) % 8) as usize;
    let core_at = (7 + 3 * splices).min(prog.len());
    let core = std::str::from_utf8(&prog[core_at..]).ok()?;

    let pick = |n: usize| if pattern >> (n % 8) & 1 == 0 { wa } else { wb };
    let mut q = String::new();
    q.push_str(frame.0);
    for n in 0..count {
        q.push_str(pick(n).0);
    }
    q.push_str(core);
    for n in (0..count).rev() {
        q.push_str(pick(n).1);
    }
    q.push_str(frame.1);

    for s in 0..splices {
        let at = 7 + 3 * s;
        let pos = byte(at) as usize | (byte(at + 1) as usize) << 8;
        let piece = SPLICES[byte(at + 2) as usize % SPLICES.len()];
        let mut i = q.len() * pos / 65536;
        while !q.is_char_boundary(i) {
            i += 1;
        }
        q.insert_str(i, piece);
    }
    Some(q)
}

/// Runs `f` on a thread with a [`STACK`]-sized stack; a panic there is a panic here.
pub fn on_small_stack<F: FnOnce() + Send + 'static>(f: F) {
    let t = std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(f)
        .expect("spawn the checking thread");
    if let Err(p) = t.join() {
        std::panic::resume_unwind(p);
    }
}

/// Runs `f` on a thread with a big stack, for checks that recurse over trees the limit did not
/// bound (the test's own oracle, not the code under test).
pub fn on_big_stack<T: Send + 'static, F: FnOnce() -> T + Send + 'static>(f: F) -> T {
    let t = std::thread::Builder::new()
        .stack_size(512 << 20)
        .spawn(f)
        .expect("spawn the oracle thread");
    match t.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}
