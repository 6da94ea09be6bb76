//! Located diagnostics for config and policy files: `FILE:LINE:COL: message`.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in one file, with a 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    pub file: PathBuf,
    pub line: u32,
    pub column: u32,
    pub message: String,
}

impl FileError {
    pub fn new(file: &Path, line: u32, column: u32, message: impl Into<String>) -> FileError {
        FileError {
            file: file.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }

    /// An error about the file as a whole (unreadable, missing): reported at 1:1.
    pub fn whole(file: &Path, message: impl Into<String>) -> FileError {
        FileError::new(file, 1, 1, message)
    }

    pub fn at(file: &Path, loc: &serde_saphyr::Location, message: impl Into<String>) -> FileError {
        FileError::new(
            file,
            loc.line().max(1) as u32,
            loc.column().max(1) as u32,
            message,
        )
    }

    /// Converts a serde-saphyr error into a located error with the bare message.
    pub fn from_yaml(file: &Path, err: &serde_saphyr::Error) -> FileError {
        let text = err.without_snippet().to_string();
        let first = text.lines().next().unwrap_or("invalid YAML").trim();
        let msg = first.strip_prefix("error: ").unwrap_or(first);
        let msg = strip_position_prefix(msg);
        let msg = strip_position_suffix(msg);
        match err.location() {
            Some(loc) => FileError::at(file, &loc, msg),
            None => FileError::whole(file, msg),
        }
    }
}

/// `line 5 column 10: bad value` → `bad value`.
fn strip_position_prefix(msg: &str) -> &str {
    if let Some(rest) = msg.strip_prefix("line ")
        && let Some(idx) = rest.find(": ")
    {
        let head = &rest[..idx];
        if head
            .split(" column ")
            .all(|p| p.chars().all(|c| c.is_ascii_digit()))
        {
            return &rest[idx + 2..];
        }
    }
    msg
}

/// `expected x at line 8, column 9` → `expected x` (the position is reported already).
fn strip_position_suffix(msg: &str) -> &str {
    if let Some(idx) = msg.rfind(" at line ") {
        let tail = &msg[idx + " at line ".len()..];
        if let Some((l, c)) = tail.split_once(", column ")
            && l.chars().all(|ch| ch.is_ascii_digit())
            && c.chars().all(|ch| ch.is_ascii_digit())
        {
            return &msg[..idx];
        }
    }
    msg
}

/// The longest message an error body or error line carries: a message that quotes what it
/// refuses (a 100 KiB regex, say) is cut, so no answer is larger than its question.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// `s` cut to at most [`MAX_MESSAGE_BYTES`] (at a character boundary), saying how long it was.
pub fn clip(s: &str) -> std::borrow::Cow<'_, str> {
    if s.len() <= MAX_MESSAGE_BYTES {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}… ({} bytes in all)", &s[..end], s.len()))
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            clip(&self.message)
        )
    }
}

/// Several located errors (a file can have many semantic problems at once).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileErrors(pub Vec<FileError>);

impl fmt::Display for FileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FileErrors {}

impl From<FileError> for FileErrors {
    fn from(e: FileError) -> Self {
        FileErrors(vec![e])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_position_prefix_only_when_numeric() {
        assert_eq!(strip_position_prefix("line 5 column 10: bad"), "bad");
        assert_eq!(strip_position_prefix("line of text: x"), "line of text: x");
        assert_eq!(strip_position_prefix("plain"), "plain");
        assert_eq!(
            strip_position_suffix("expected mapping at line 8, column 9"),
            "expected mapping"
        );
        assert_eq!(strip_position_suffix("a at line of b"), "a at line of b");
    }

    #[test]
    fn yaml_error_is_located_with_bare_message() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct T {
            a: u32,
        }
        let err = serde_saphyr::from_str::<T>("a: 1\nb: 2\n").unwrap_err();
        let fe = FileError::from_yaml(Path::new("x.yaml"), &err);
        assert_eq!(fe.line, 2);
        assert_eq!(fe.column, 1);
        assert!(
            fe.message.starts_with("unknown field `b`"),
            "{}",
            fe.message
        );
        assert!(fe.to_string().starts_with("x.yaml:2:1: unknown field"));
    }

    #[test]
    fn long_messages_are_clipped_at_a_character_boundary() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let c = clip(&long);
        assert!(c.len() < MAX_MESSAGE_BYTES + 40, "{}", c.len());
        assert!(c.ends_with(&format!("… ({} bytes in all)", long.len())));
    }
}
