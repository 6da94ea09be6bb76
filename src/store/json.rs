//! Policy files written as JSON (`*.json`): parsed by serde_json into the same document types as
//! YAML, and located alike.
//!
//! serde_json keeps no positions, so a located value (the loader's `Spanned<T>`) is first read as
//! a borrowed [`RawValue`]: a slice of the file's text, whose address is its offset in the file.
//! The value is then parsed from that slice by a fresh deserializer. An error in it has
//! serde_json's line and column *within the slice*: it is turned into an offset in the file and
//! set aside, and the deserializers around it carry only its message. The reported position is
//! therefore that of the innermost problem, as in YAML. Offsets become lines and columns only when
//! an error is reported. All this happens only in the loader's second pass, for a set that failed
//! to validate: the first pass reads every value directly, and serde_json locates its own errors.
//!
//! Bounds: serde_json's recursion limit (128 levels) stays on. Each located value starts a fresh
//! deserializer, but located values nest at most four deep in the schema (file, policy, realm,
//! label policy) and the skipping that finds a value's extent is a loop, not a recursion. The whole
//! text is capped at [`MAX_BYTES`], as YAML's scalar budget caps a YAML file.

use crate::diag::FileError;
use serde::de::{Deserialize, DeserializeOwned, Deserializer, Error as _};
use serde_json::value::RawValue;
use std::cell::{Cell, RefCell};
use std::path::Path;

/// The largest JSON policy file accepted (1 GiB, the YAML parser's scalar budget).
pub const MAX_BYTES: usize = 1 << 30;

thread_local! {
    /// Address and length of the JSON text being parsed on this thread, if any.
    static DOC: Cell<Option<(usize, usize)>> = const { Cell::new(None) };
    /// The innermost error of that parse: its byte offset in the text and its message.
    static INNER_ERROR: RefCell<Option<(usize, String)>> = const { RefCell::new(None) };
}

/// Clears the thread's parse state however the parse ends.
struct Parsing;

impl Drop for Parsing {
    fn drop(&mut self) {
        DOC.set(None);
        INNER_ERROR.take();
    }
}

/// True while [`parse`] runs on this thread: located values are then read the JSON way.
pub fn active() -> bool {
    DOC.get().is_some()
}

/// True for a path whose name ends in `.json` (any case).
pub fn is_json(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

/// Parses a whole JSON policy file. Errors are located at the innermost problem.
pub fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, FileError> {
    if text.len() > MAX_BYTES {
        return Err(FileError::whole(
            path,
            format!(
                "policy file is {} bytes, over the {} MiB limit",
                text.len(),
                MAX_BYTES >> 20
            ),
        ));
    }
    let body = text.strip_prefix('\u{feff}').unwrap_or(text);
    let body_start = text.len() - body.len();
    DOC.set(Some((text.as_ptr() as usize, text.len())));
    INNER_ERROR.take();
    let _parsing = Parsing;
    serde_json::from_str(body).map_err(|e| {
        let msg = bare_message(&e);
        let at = match INNER_ERROR.take() {
            Some((at, m)) if m == msg => at,
            _ => body_start + error_index(body, &e),
        };
        let lines = line_starts(text);
        let (line, column) = line_col(text, &lines, at);
        FileError::new(path, line, column, msg)
    })
}

/// Reads a located value during [`parse`]: the value and the byte offset of its first character.
pub fn spanned<'de, T, D>(d: D) -> Result<(T, usize), D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    let raw = <&'de RawValue>::deserialize(d)?;
    let s = raw.get();
    let start = offset_of(s);
    let mut de = serde_json::Deserializer::from_str(s);
    match T::deserialize(&mut de) {
        Ok(v) => Ok((v, start)),
        Err(e) => {
            let msg = bare_message(&e);
            INNER_ERROR.with_borrow_mut(|slot| {
                // the first one recorded is the innermost: outer values only pass it on
                if slot.is_none() {
                    *slot = Some((start + error_index(s, &e), msg.clone()));
                }
            });
            Err(D::Error::custom(msg))
        }
    }
}

/// Offset of `s` in the text being parsed (0 if it is not a slice of it, which cannot happen
/// with `from_str`).
fn offset_of(s: &str) -> usize {
    match DOC.get() {
        Some((base, len)) => {
            let off = (s.as_ptr() as usize).wrapping_sub(base);
            if off <= len { off } else { 0 }
        }
        None => 0,
    }
}

/// serde_json's message without its ` at line L column C` tail (the position is reported apart).
fn bare_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    if e.line() != 0
        && let Some(head) =
            text.strip_suffix(&format!(" at line {} column {}", e.line(), e.column()))
    {
        return head.to_string();
    }
    text
}

/// The byte index in `s` of the character serde_json's error points at. Its column counts the
/// bytes read on the line, the offending one included.
fn error_index(s: &str, e: &serde_json::Error) -> usize {
    if e.line() == 0 {
        return 0;
    }
    let mut line_start = 0;
    let mut line = 1;
    if e.line() > 1 {
        for (i, b) in s.bytes().enumerate() {
            if b == b'\n' {
                line += 1;
                if line == e.line() {
                    line_start = i + 1;
                    break;
                }
            }
        }
    }
    (line_start + e.column().saturating_sub(1)).min(s.len())
}

/// The byte offset at which each line of `text` starts.
pub fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(
            text.bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i + 1),
        )
        .collect()
}

/// 1-based line and column (in characters, as YAML positions are) of byte `at` of `text`.
pub fn line_col(text: &str, line_starts: &[usize], at: usize) -> (u32, u32) {
    let at = at.min(text.len());
    let line = line_starts.partition_point(|&s| s <= at).max(1);
    let start = line_starts[line - 1];
    // characters, not bytes: count the bytes that start one
    let column = text.as_bytes()[start..at]
        .iter()
        .filter(|&&b| (b as i8) >= -0x40)
        .count()
        + 1;
    (
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(column).unwrap_or(u32::MAX),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters_from_one() {
        let t = "ab\nçd\n\nx";
        let l = line_starts(t);
        assert_eq!(line_col(t, &l, 0), (1, 1));
        assert_eq!(line_col(t, &l, 1), (1, 2));
        assert_eq!(line_col(t, &l, 3), (2, 1));
        assert_eq!(line_col(t, &l, 5), (2, 2)); // after the two-byte ç
        assert_eq!(line_col(t, &l, 7), (3, 1));
        assert_eq!(line_col(t, &l, 8), (4, 1));
        assert_eq!(line_col(t, &l, 99), (4, 2));
    }

    #[test]
    fn json_extension_is_case_insensitive() {
        assert!(is_json(Path::new("a/b.json")));
        assert!(is_json(Path::new("B.JSON")));
        assert!(!is_json(Path::new("b.yaml")));
        assert!(!is_json(Path::new("json")));
    }

    #[test]
    fn parse_state_is_cleared_after_a_parse() {
        let _: Result<serde_json::Value, _> = parse(Path::new("x.json"), "{");
        assert!(!active());
        let v: serde_json::Value = parse(Path::new("x.json"), "\u{feff}[1]").unwrap();
        assert_eq!(v, serde_json::json!([1]));
        assert!(!active());
    }
}
