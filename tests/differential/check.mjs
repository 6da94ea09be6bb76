// Differential check of obsgate's LBAC rewrite against Grafana's own lezer grammars.
//
//   node tests/differential/check.mjs FILE.jsonl
//
// Each input line: {"lang":"logql"|"promql","query":…,"verdict":"accepted"|"bad_query"|"forbidden",
//                   "output":…|null,"policy":[["env","=","prod"],…]}
// Each output line (same order): {"i":N,"input_ok":bool,"input_error":…|null,"input_note":…|null,
//                   "output_ok":bool|null,"output_error":…|null,"unrestricted":[…]|null}
//
// input_ok: the query parses with no error node. First the lexical handling of the real lexers
// that the lezer grammars lack is applied (lokiLex for LogQL, promLex for PromQL).
// unrestricted: the selectors lezer finds in the rewritten output whose matchers do not include
// every policy matcher.
//
// Written by tests/differential.rs; dependency-free beyond the two grammars and @lezer/*.

import { readFileSync } from 'node:fs';
import { parser as logqlParser } from '@grafana/lezer-logql';
import { parser as promqlParser } from '@prometheus-io/lezer-promql';

// ---------------------------------------------------------------------------------------------
// Go string literals, as Prometheus' util/strutil.Unquote reads them (Loki and Prometheus both
// use it): "…" and '…' with Go escapes, `…` raw. Returns the value, or null if Go refuses it.

const HEX = /^[0-9a-fA-F]$/;

function unquote(lit) {
  if (lit.length < 2) return null;
  const q = lit[0];
  if (q !== lit[lit.length - 1]) return null;
  const body = lit.slice(1, -1);
  if (q === '`') return body.includes('`') ? null : body;
  if (q !== '"' && q !== "'") return null;
  if (body.includes('\n')) return null;
  const bytes = [];
  const enc = new TextEncoder();
  let i = 0;
  while (i < body.length) {
    const c = body[i];
    if (c === q) return null;
    if (c !== '\\') {
      const cp = body.codePointAt(i);
      const s = String.fromCodePoint(cp);
      bytes.push(...enc.encode(s));
      i += s.length;
      continue;
    }
    if (i + 1 >= body.length) return null;
    const e = body[i + 1];
    i += 2;
    const simple = { a: 7, b: 8, f: 12, n: 10, r: 13, t: 9, v: 11, '\\': 92 };
    if (e in simple) {
      bytes.push(simple[e]);
    } else if (e === q) {
      bytes.push(q.charCodeAt(0));
    } else if (e === 'x' || e === 'u' || e === 'U') {
      const n = e === 'x' ? 2 : e === 'u' ? 4 : 8;
      const h = body.slice(i, i + n);
      if (h.length < n || ![...h].every((d) => HEX.test(d))) return null;
      i += n;
      const v = parseInt(h, 16);
      if (e === 'x') bytes.push(v);
      else if (v > 0x10ffff) return null;
      else if (v >= 0xd800 && v <= 0xdfff) bytes.push(0xef, 0xbf, 0xbd); // Go: RuneError
      else bytes.push(...enc.encode(String.fromCodePoint(v)));
    } else if (e >= '0' && e <= '7') {
      const o = e + body.slice(i, i + 2);
      if (o.length < 3 || ![...o].every((d) => d >= '0' && d <= '7')) return null;
      const v = parseInt(o, 8);
      if (v > 255) return null;
      i += 2;
      bytes.push(v);
    } else {
      return null;
    }
  }
  return new TextDecoder('utf-8', { fatal: false }).decode(new Uint8Array(bytes));
}

// ---------------------------------------------------------------------------------------------
// Loki's lexer (pkg/logql/syntax/lex.go over its copy of Go's text/scanner, Mode = GoTokens)
// does things that the lezer grammar does not:
//   - `//…` and `/*…*/` are comments (skipped like white space; an unterminated `/*` is an error);
//   - `#…` to the end of the line is a comment (lex.go's own case '#'; lezer-logql has a `#`
//     LineComment too, but we strip it here so that all three kinds are handled alike);
//   - `'…'` is a Go char literal: exactly one character or escape, else "invalid char literal"
//     (the whole query is refused). A valid one is not a string: lex.go has no case for
//     scanner.Char, so it falls through and is returned as an IDENTIFIER whose text is `'x'`
//     (quotes included). We mirror that by putting a plain identifier in its place;
//   - "…" strings: a newline or end of input before the closing quote is an error, and so is an
//     escape that Go does not know (`"\d"`); then strutil.Unquote must accept the literal;
//   - `[` starts a range: everything up to the next `]` is read raw (no strings, no comments) and
//     must be a Prometheus duration (model.ParseDuration), else the query is refused;
//   - a NUL character anywhere is an error ("invalid character NUL");
//   - identifiers are Go identifiers: Unicode letters, digits and `_` (lezer-logql: ASCII letters,
//     digits, `_` and `:`). One with a non-ASCII letter is replaced by an ASCII placeholder;
//   - any other rune that is not part of a token Loki knows (punctuation outside
//     `, . { } ( ) [ ] = | + - * / % ^ < >` and the two-rune operators, a lone `!` or `~`, `:`,
//     `@`, `$`, `;`, a fullwidth brace, a zero-width space, a BOM after the start, and the white
//     space that lezer skips but Go does not: \v, \f, U+0085, U+00A0, …) is returned by the
//     scanner as a token of its own, which lex.go turns into an IDENTIFIER: mirrored like a char
//     literal, by a placeholder identifier that lezer then accepts or refuses by position.
// Returns {ok:true, text} with comments replaced by a space, or {ok:false, error}.

// What lezer's std.whitespace skips beyond Go's and Prometheus' white space (space \t \n \r).
const EXTRA_SPACE = /[\v\f\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]/;

const PROM_DURATION = /^(?:0|(?=\d)(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?)$/;

function scanGoQuoted(src, i, quote) {
  // Go text/scanner scanString: returns {end, count} or {error}.
  let j = i + 1;
  let count = 0;
  for (;;) {
    if (j >= src.length || src[j] === '\n') return { error: 'literal not terminated' };
    const c = src[j];
    if (c === quote) return { end: j + 1, count };
    if (c === '\\') {
      const e = src[j + 1];
      if (e === undefined) return { error: 'literal not terminated' };
      if ('abfnrtv\\'.includes(e) || e === quote) j += 2;
      else if (e >= '0' && e <= '7') {
        const d = src.slice(j + 1, j + 4);
        if (d.length < 3 || ![...d].every((x) => x >= '0' && x <= '7')) return { error: 'invalid char escape' };
        j += 4;
      } else if (e === 'x' || e === 'u' || e === 'U') {
        const n = e === 'x' ? 2 : e === 'u' ? 4 : 8;
        const h = src.slice(j + 2, j + 2 + n);
        if (h.length < n || ![...h].every((x) => HEX.test(x))) return { error: 'invalid char escape' };
        j += 2 + n;
      } else return { error: 'invalid char escape' };
    } else {
      j += String.fromCodePoint(src.codePointAt(j)).length;
    }
    count++;
  }
}

const GO_LETTER = /^[\p{L}_]$/u;
const GO_IDENT_REST = /^[\p{L}\p{Nd}_]$/u;
const LOKI_PUNCT = ',.{}()[]=|+-*/%^<>';
const LOKI_OPS = ['!=', '=~', '!~', '!>', '|=', '|~', '|>', '==', '>=', '<='];

function lokiLex(src) {
  if (src.includes('\0')) return { ok: false, error: 'loki lexer: invalid character NUL' };
  if (src.startsWith('\ufeff')) src = src.slice(1); // text/scanner skips a leading BOM
  let out = '';
  let chars = 0;
  let i = 0;
  const placeholder = (kind) => ` __go_${kind}_${chars++} `;
  while (i < src.length) {
    const cp = src.codePointAt(i);
    const ch = String.fromCodePoint(cp);
    if (GO_LETTER.test(ch)) {
      let j = i + ch.length;
      for (;;) {
        const n = src.codePointAt(j);
        if (n === undefined || !GO_IDENT_REST.test(String.fromCodePoint(n))) break;
        j += String.fromCodePoint(n).length;
      }
      const ident = src.slice(i, j);
      out += /^[A-Za-z0-9_]+$/.test(ident) ? ident : placeholder('ident');
      i = j;
      continue;
    }
    if (LOKI_OPS.includes(src.slice(i, i + 2))) {
      out += src.slice(i, i + 2);
      i += 2;
      continue;
    }
    const c = src[i];
    const c2 = src[i + 1];
    if (c === '"') {
      const r = scanGoQuoted(src, i, '"');
      if (r.error) return { ok: false, error: `loki lexer: ${r.error}` };
      const lit = src.slice(i, r.end);
      if (unquote(lit) === null) return { ok: false, error: 'loki lexer: invalid syntax (strutil.Unquote)' };
      out += lit;
      i = r.end;
    } else if (c === '`') {
      const j = src.indexOf('`', i + 1);
      if (j < 0) return { ok: false, error: 'loki lexer: literal not terminated' };
      out += src.slice(i, j + 1);
      i = j + 1;
    } else if (c === "'") {
      const r = scanGoQuoted(src, i, "'");
      if (r.error) return { ok: false, error: `loki lexer: ${r.error}` };
      if (r.count !== 1) return { ok: false, error: 'loki lexer: invalid char literal' };
      out += ` __go_char_literal_${chars++} `;
      i = r.end;
    } else if (c === '/' && c2 === '/') {
      const j = src.indexOf('\n', i);
      out += ' ';
      i = j < 0 ? src.length : j;
    } else if (c === '/' && c2 === '*') {
      const j = src.indexOf('*/', i + 2);
      if (j < 0) return { ok: false, error: 'loki lexer: comment not terminated' };
      out += ' ';
      i = j + 2;
    } else if (c === '#') {
      const j = src.indexOf('\n', i);
      out += ' ';
      i = j < 0 ? src.length : j;
    } else if (c === '[') {
      const j = src.indexOf(']', i + 1);
      if (j < 0) return { ok: false, error: "loki lexer: missing closing ']' in duration" };
      const d = src.slice(i + 1, j);
      if (!PROM_DURATION.test(d)) return { ok: false, error: `loki lexer: bad range duration ${JSON.stringify(d)}` };
      out += src.slice(i, j + 1);
      i = j + 1;
    } else if (c === ' ' || c === '\t' || c === '\n' || c === '\r' || (c >= '0' && c <= '9') || LOKI_PUNCT.includes(c)) {
      out += c;
      i++;
    } else {
      // a rune of its own: lex.go returns it as an IDENTIFIER
      out += placeholder('rune');
      i += ch.length;
    }
  }
  return { ok: true, text: out };
}

// Prometheus' lexer (promql/parser/lex.go) differs from lezer-promql where it matters here:
//   - a `#` comment ends at \r as well as at \n (isEndOfLine); lezer's LineComment runs to \n,
//     so `x # \r or y` would hide `y` from lezer while Prometheus reads it. The comment is
//     replaced by a space, the \r kept;
//   - white space is only space, \t, \n and \r: any other character lezer skips (\v, \f,
//     U+00A0, …) is an "unexpected character" error in Prometheus. lezer's verdict is kept (the
//     brief for this check is lezer's grammar) and the difference is reported in input_note;
//   - "…" and '…' strings end at a newline with an error, and an escape Go does not know is an
//     error ("unknown escape sequence"); `…` is raw.
function promLex(src) {
  let out = '';
  let note = null;
  let i = 0;
  while (i < src.length) {
    const c = src[i];
    if (c === '"' || c === "'") {
      const r = scanGoQuoted(src, i, c);
      if (r.error) return { ok: false, error: `prometheus lexer: ${r.error}` };
      const lit = src.slice(i, r.end);
      if (unquote(lit) === null) return { ok: false, error: 'prometheus lexer: invalid syntax (strutil.Unquote)' };
      out += lit;
      i = r.end;
    } else if (c === '`') {
      const j = src.indexOf('`', i + 1);
      if (j < 0) return { ok: false, error: 'prometheus lexer: unterminated raw string' };
      out += src.slice(i, j + 1);
      i = j + 1;
    } else if (c === '#') {
      let j = i;
      while (j < src.length && src[j] !== '\n' && src[j] !== '\r') j++;
      out += ' ';
      i = j;
    } else {
      if (EXTRA_SPACE.test(c) && note === null) {
        note = `prometheus lexer: unexpected character U+${c.codePointAt(0).toString(16).padStart(4, '0')}`;
      }
      out += c;
      i++;
    }
  }
  return { ok: true, text: out, note };
}

// ---------------------------------------------------------------------------------------------
// Trees.

function firstError(tree, text) {
  let at = -1;
  tree.iterate({
    enter(n) {
      if (at >= 0) return false;
      if (n.type.isError) {
        at = n.from;
        return false;
      }
    },
  });
  if (at < 0) return null;
  return `lezer error at ${at}: ${JSON.stringify(text.slice(Math.max(0, at - 20), at))} ⚠ ${JSON.stringify(text.slice(at, at + 20))}`;
}

const OPS = {
  Eq: '=', Neq: '!=', Re: '=~', Nre: '!~', // lezer-logql
  EqlSingle: '=', EqlRegex: '=~', NeqRegex: '!~', // lezer-promql (Neq shared)
};

const children = (node) => {
  const out = [];
  for (let c = node.firstChild; c; c = c.nextSibling) out.push(c);
  return out;
};

// LogQL: Selector { "{" Matchers "}" }, Matchers { Matcher ("," Matcher)* },
// Matcher { Identifier (Eq|Neq|Re|Nre) String }.
function logqlSelectors(tree, text) {
  const found = [];
  tree.iterate({
    enter(n) {
      if (n.name !== 'Selector') return;
      const matchers = [];
      const sel = n.node;
      const walk = (node) => {
        for (const c of children(node)) {
          if (c.name === 'Matchers') walk(c);
          else if (c.name === 'Matcher') {
            const [name, op, value] = children(c);
            matchers.push([
              name ? text.slice(name.from, name.to) : null,
              op ? OPS[op.name] ?? op.name : null,
              value && value.name === 'String' ? unquote(text.slice(value.from, value.to)) : null,
            ]);
          }
        }
      };
      walk(sel);
      found.push({ text: text.slice(n.from, n.to), matchers });
    },
  });
  return found;
}

// PromQL: VectorSelector { Identifier LabelMatchers | Identifier | LabelMatchers }, wherever it is
// (alone, inside MatrixSelector, SubqueryExpr, function arguments, …). The metric name (an
// Identifier, or a lone QuotedLabelName inside the braces) counts as __name__="…".
function promqlSelectors(tree, text) {
  const found = [];
  const str = (node) => (node && node.name === 'StringLiteral' ? unquote(text.slice(node.from, node.to)) : null);
  tree.iterate({
    enter(n) {
      if (n.name !== 'VectorSelector') return;
      const matchers = [];
      for (const c of children(n.node)) {
        if (c.name === 'LabelMatchers') {
          for (const m of children(c)) {
            if (m.name === 'UnquotedLabelMatcher') {
              const [name, op, value] = children(m);
              const opNode = op ? op.firstChild : null;
              matchers.push([text.slice(name.from, name.to), opNode ? OPS[opNode.name] ?? opNode.name : null, str(value)]);
            } else if (m.name === 'QuotedLabelMatcher') {
              const [qname, op, value] = children(m);
              const opNode = op ? op.firstChild : null;
              matchers.push([str(qname.firstChild), opNode ? OPS[opNode.name] ?? opNode.name : null, str(value)]);
            } else if (m.name === 'QuotedLabelName') {
              matchers.push(['__name__', '=', str(m.firstChild)]);
            }
          }
        } else if (!c.type.isError) {
          matchers.push(['__name__', '=', text.slice(c.from, c.to)]);
        }
      }
      found.push({ text: text.slice(n.from, n.to), matchers });
      return false; // a selector has no selector inside
    },
  });
  return found;
}

function unrestricted(selectors, policy) {
  return selectors.filter(
    (s) => !policy.every(([pn, po, pv]) => s.matchers.some(([n, o, v]) => n === pn && o === po && v === pv)),
  );
}

// ---------------------------------------------------------------------------------------------

function check(rec) {
  const logql = rec.lang === 'logql';
  const P = logql ? logqlParser : promqlParser;
  const prepare = (text) => (logql ? lokiLex(text) : promLex(text));
  const parse = (text) => {
    const lx = prepare(text);
    if (!lx.ok) return { ok: false, error: lx.error };
    const tree = P.parse(lx.text);
    const err = firstError(tree, lx.text);
    return { ok: err === null, error: err, tree, text: lx.text, note: lx.note ?? null };
  };
  const res = { i: rec.i, input_ok: false, input_error: null, input_note: null, output_ok: null, output_error: null, unrestricted: null };
  const inp = parse(rec.query);
  res.input_ok = inp.ok;
  res.input_error = inp.error;
  res.input_note = inp.note ?? null;
  if (rec.verdict === 'accepted' && typeof rec.output === 'string') {
    const out = parse(rec.output);
    res.output_ok = out.ok;
    res.output_error = out.error;
    if (out.tree) {
      const sels = logql ? logqlSelectors(out.tree, out.text) : promqlSelectors(out.tree, out.text);
      res.selectors = sels.length;
      res.unrestricted = unrestricted(sels, rec.policy);
    }
  }
  return res;
}

const file = process.argv[2];
if (!file) {
  console.error('usage: node check.mjs FILE.jsonl');
  process.exit(2);
}
const lines = readFileSync(file, 'utf8').split('\n').filter((l) => l.length > 0);
const out = [];
lines.forEach((line, i) => {
  const rec = JSON.parse(line);
  rec.i = rec.i ?? i;
  out.push(JSON.stringify(check(rec)));
});
process.stdout.write(out.join('\n') + '\n');
