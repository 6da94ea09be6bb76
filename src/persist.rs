//! Crash-safe, versioned documents in `store.data_dir`. The admin API kept its state in one such
//! document (`admin-state.json`) before the admin store; it is read once, to migrate it.
//!
//! A document is one JSON file. A write goes to a temporary file in the same directory, is
//! fsynced, renamed over the document, and the directory is fsynced. A reader therefore sees
//! either the old or the new document, never a torn one, even after `kill -9` or a power cut
//! in the middle of a write. Every document carries a version that each write increases by one;
//! a write states the version it expects to replace, so two writers cannot silently overwrite
//! each other.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What is stored on disk: the payload and its version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Versioned<T> {
    pub version: u64,
    pub data: T,
}

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}: not a valid state document: {err}")]
    Corrupt { path: PathBuf, err: String },
    #[error("{path}: version {found} is in force, the write expected {expected}")]
    Conflict {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PersistError + '_ {
    move |err| PersistError::Io {
        path: path.to_path_buf(),
        err,
    }
}

/// One document: `<dir>/<name>.json`.
#[derive(Debug, Clone)]
pub struct Document {
    dir: PathBuf,
    name: String,
}

impl Document {
    /// `name` is a plain file stem (`[a-z0-9_-]`), chosen by the code, never by a request.
    pub fn new(dir: impl Into<PathBuf>, name: &str) -> Document {
        debug_assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        );
        Document {
            dir: dir.into(),
            name: name.to_string(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.name))
    }

    fn temp_path(&self) -> PathBuf {
        // one writer per document (the caller serialises writes); the pid keeps two processes
        // pointed at the same directory from sharing a temporary file
        self.dir
            .join(format!(".{}.json.tmp-{}", self.name, std::process::id()))
    }

    /// Reads the document. `Ok(None)` when it was never written. Temporary files are never
    /// read: an interrupted write did not become the document.
    pub fn load<T: DeserializeOwned>(&self) -> Result<Option<Versioned<T>>, PersistError> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| PersistError::Corrupt {
                path: path.clone(),
                err: e.to_string(),
            })
    }

    /// Removes temporary files left by interrupted writes. For the directory's owner, at
    /// startup (another process's write in progress would lose its temporary file).
    pub fn remove_stale_temps(&self) {
        let prefix = format!(".{}.json.tmp-", self.name);
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }

    /// Writes `data` as version `expected + 1` if the document on disk is at `expected`
    /// (0: not written yet). Returns the new version. The caller serialises writes to one
    /// document; the check guards against a second process on the same directory.
    pub fn save<T: Serialize>(&self, expected: u64, data: &T) -> Result<u64, PersistError> {
        let path = self.path();
        let found = match fs::read(&path) {
            Ok(b) => {
                #[derive(serde::Deserialize)]
                struct Head {
                    version: u64,
                }
                serde_json::from_slice::<Head>(&b)
                    .map_err(|e| PersistError::Corrupt {
                        path: path.clone(),
                        err: e.to_string(),
                    })?
                    .version
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io(&path)(e)),
        };
        if found != expected {
            return Err(PersistError::Conflict {
                path,
                expected,
                found,
            });
        }
        let version = expected + 1;
        let bytes = serde_json::to_vec(&Versioned { version, data }).map_err(|e| {
            PersistError::Corrupt {
                path: path.clone(),
                err: e.to_string(),
            }
        })?;
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let tmp = self.temp_path();
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, &path)?;
            // the rename is durable only once the directory entry is
            File::open(&self.dir)?.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io(&path)(e));
        }
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct State {
        items: Vec<String>,
    }

    #[test]
    fn versions_increase_and_stale_writes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let doc = Document::new(dir.path().join("data"), "state");
        assert!(doc.load::<State>().unwrap().is_none());
        let v1 = doc
            .save(
                0,
                &State {
                    items: vec!["a".into()],
                },
            )
            .unwrap();
        assert_eq!(v1, 1);
        let v2 = doc
            .save(
                1,
                &State {
                    items: vec!["a".into(), "b".into()],
                },
            )
            .unwrap();
        assert_eq!(v2, 2);
        // a writer that still believes version 1 is in force
        match doc.save(1, &State { items: vec![] }) {
            Err(PersistError::Conflict {
                expected: 1,
                found: 2,
                ..
            }) => {}
            other => panic!("expected a conflict, got {other:?}"),
        }
        let back = doc.load::<State>().unwrap().unwrap();
        assert_eq!(back.version, 2);
        assert_eq!(back.data.items, vec!["a", "b"]);
    }

    #[test]
    fn leftover_temporary_files_are_ignored_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let doc = Document::new(dir.path(), "state");
        doc.save(0, &State { items: vec![] }).unwrap();
        let stale = dir.path().join(".state.json.tmp-999999");
        fs::write(&stale, b"{\"version\": 7, \"data\": {\"items\": [\"torn").unwrap();
        let back = doc.load::<State>().unwrap().unwrap();
        assert_eq!(back.version, 1);
        doc.remove_stale_temps();
        assert!(!stale.exists());
        assert_eq!(doc.load::<State>().unwrap().unwrap().version, 1);
    }

    #[test]
    fn a_corrupt_document_is_an_error_not_an_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        let doc = Document::new(dir.path(), "state");
        fs::write(doc.path(), b"{\"version\": 3, \"da").unwrap();
        let e = doc.load::<State>().unwrap_err();
        assert!(e.to_string().contains("not a valid state document"), "{e}");
        // and no write replaces what could not be read
        assert!(matches!(
            doc.save(3, &State { items: vec![] }),
            Err(PersistError::Corrupt { .. })
        ));
    }
}
