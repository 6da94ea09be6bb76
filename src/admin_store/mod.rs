//! The admin API's change log on an object store (the local data directory, S3, GCS or Azure),
//! shared by every replica. It needs nothing from the store but create-only puts
//! ([`PutMode::Create`]), reads, lists and deletes:
//!
//! - `<prefix>log/<seq:020>.json`: change `seq` (from 1), `{"seq", "write_id", "change"}`. Whoever
//!   creates the key first owns that number; entries are never rewritten nor deleted.
//! - `<prefix>checkpoints/<seq:020>.json`: the whole state as of change `seq`,
//!   `{"seq", "state"}`; only the newest few are kept.
//!
//! Every request to the store is reported to the observer (metrics), once: a GET when its body
//! is read, a LIST however many pages it takes. A GET answering "not found" and a put
//! answering "already exists" count as successful requests.

mod http;
#[cfg(test)]
mod tests;

pub use http::HyperConnector;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as Key;
use object_store::{ClientConfigKey, GetOptions, ObjectStore, PutMode, PutPayload, RetryConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A kind of request to the store, for the observer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreOp {
    Get,
    Put,
    List,
    Delete,
}

impl StoreOp {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreOp::Get => "get",
            StoreOp::Put => "put",
            StoreOp::List => "list",
            StoreOp::Delete => "delete",
        }
    }
}

/// Whose entry a sequence number holds after [`ChangeLog::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Ours: the change is in the log.
    Mine,
    /// Another writer's: ours is not in the log (catch up and try the next number).
    Taken,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store could not be used; nothing was written.
    #[error("{0}")]
    Unavailable(String),
    /// An entry that cannot be read back as written.
    #[error("{key} is corrupt: {detail}")]
    Corrupt { key: String, detail: String },
    /// A write whose outcome could not be learned: it may be in the log. It must not be sent
    /// again blindly; the next read tells.
    #[error("the write was not confirmed: {0}")]
    Unknown(String),
}

/// The observer of store requests: the kind, and whether it worked.
pub type Observer = Arc<dyn Fn(StoreOp, bool) + Send + Sync>;

/// The change log under a prefix of an object store. Cloning is cheap (shared handles).
#[derive(Clone)]
pub struct ChangeLog {
    store: Arc<dyn ObjectStore>,
    /// Empty or ending with `/`.
    prefix: String,
    /// The store's root directory when it is a local file system that does not fsync itself.
    local_root: Option<Arc<PathBuf>>,
    observer: Option<Observer>,
    /// The data directory of a local store, where tests inject write faults.
    fault_dir: Option<Arc<PathBuf>>,
    /// Whether a listing comes in key order (object stores: yes; a local directory walk:
    /// no), so that a long listing can stop early.
    listing_sorted: bool,
}

static FAULTS: std::sync::Mutex<Vec<(PathBuf, std::io::ErrorKind)>> =
    std::sync::Mutex::new(Vec::new());

/// Makes every write to the local admin store of `data_dir` fail with `kind` (or stop failing,
/// with `None`), as a full or read-only disk would. Test support.
#[doc(hidden)]
pub fn inject_write_fault(data_dir: &Path, kind: Option<std::io::ErrorKind>) {
    let mut f = FAULTS.lock().unwrap_or_else(|p| p.into_inner());
    f.retain(|(d, _)| d != data_dir);
    if let Some(k) = kind {
        f.push((data_dir.to_path_buf(), k));
    }
}

impl std::fmt::Debug for ChangeLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeLog")
            .field("store", &self.store.to_string())
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Response bodies above this are parsed on the blocking pool.
const PARSE_INLINE_MAX: usize = 64 << 10;
/// Log entries fetched at once while catching up.
const CONCURRENT_GETS: usize = 16;
/// Puts of one change when their outcome stays unknown and the entry is absent.
const PUT_ATTEMPTS: usize = 3;

#[derive(Serialize)]
struct EntryOut<'a, C> {
    seq: u64,
    write_id: &'a str,
    change: &'a C,
}

#[derive(Deserialize)]
struct EntryIn<C> {
    seq: u64,
    change: C,
}

#[derive(Deserialize)]
struct EntryHead {
    seq: u64,
    write_id: String,
}

#[derive(Serialize)]
struct CheckpointOut<'a, S> {
    seq: u64,
    state: &'a S,
}

#[derive(Deserialize)]
struct CheckpointIn<S> {
    seq: u64,
    state: S,
}

/// `op key: error`, cut to a bounded length (object_store errors may quote a response body).
fn unavailable(op: &str, key: &Key, e: &object_store::Error) -> StoreError {
    StoreError::Unavailable(crate::diag::clip(&format!("{op} {key}: {e}")).into_owned())
}

fn random_write_id() -> Result<String, StoreError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b)
        .map_err(|e| StoreError::Unavailable(format!("no randomness for a write id: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// An error that proves the request was refused as a whole (nothing written).
fn refused(e: &object_store::Error) -> bool {
    use object_store::Error::*;
    matches!(
        e,
        InvalidPath { .. }
            | NotSupported { .. }
            | NotImplemented { .. }
            | PermissionDenied { .. }
            | Unauthenticated { .. }
            | UnknownConfigurationKey { .. }
    )
}

impl ChangeLog {
    /// A log under `prefix` (`""` or `a/b/`; a missing final `/` is added).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> ChangeLog {
        let mut prefix = prefix.trim_start_matches('/').to_string();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        // object stores list in key order; the local filesystem walks a directory
        let listing_sorted = !store.to_string().starts_with("LocalFileSystem");
        ChangeLog {
            store,
            prefix,
            local_root: None,
            observer: None,
            fault_dir: None,
            listing_sorted,
        }
    }

    /// For a [`object_store::local::LocalFileSystem`] rooted at `root` that does not fsync
    /// (built without `with_fsync(true)`): each created entry, its directory and the
    /// directories up to `root` are fsynced before the write is acknowledged. ([`open`] builds
    /// its local store with `with_fsync(true)`, which also syncs the contents before they
    /// become visible, and does not need this.)
    pub fn with_local_root(mut self, root: PathBuf) -> ChangeLog {
        self.local_root = Some(Arc::new(root));
        self
    }

    /// Reports every request to the store: its kind and whether it worked.
    pub fn with_observer(mut self, observer: Observer) -> ChangeLog {
        self.observer = Some(observer);
        self
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn observe(&self, op: StoreOp, ok: bool) {
        if let Some(o) = &self.observer {
            o(op, ok);
        }
    }

    fn key(&self, dir: &str, seq: u64) -> Key {
        Key::from(format!("{}{dir}/{seq:020}.json", self.prefix))
    }

    fn log_key(&self, seq: u64) -> Key {
        self.key("log", seq)
    }

    fn checkpoint_key(&self, seq: u64) -> Key {
        self.key("checkpoints", seq)
    }

    /// The sequence number of a key listed under `dir`, if it is one of ours.
    fn seq_of(&self, dir: &str, key: &Key) -> Option<u64> {
        let name = key
            .as_ref()
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(dir)?
            .strip_prefix('/')?
            .strip_suffix(".json")?;
        (name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()))
            .then(|| name.parse().ok())
            .flatten()
    }

    /// One GET; `None` when there is no such key.
    async fn get(&self, key: &Key) -> Result<Option<Bytes>, StoreError> {
        let r = match self.store.get_opts(key, GetOptions::default()).await {
            Ok(g) => g.bytes().await,
            Err(e) => Err(e),
        };
        match r {
            Ok(b) => {
                self.observe(StoreOp::Get, true);
                Ok(Some(b))
            }
            Err(object_store::Error::NotFound { .. }) => {
                self.observe(StoreOp::Get, true);
                Ok(None)
            }
            Err(e) => {
                self.observe(StoreOp::Get, false);
                Err(unavailable("get", key, &e))
            }
        }
    }

    /// One create-only put.
    async fn put_create(&self, key: &Key, body: Bytes) -> object_store::Result<()> {
        let r = self
            .store
            .put_opts(key, PutPayload::from(body), PutMode::Create.into())
            .await;
        let ok = matches!(
            r,
            Ok(_)
                | Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. })
        );
        self.observe(StoreOp::Put, ok);
        r.map(|_| ())
    }

    /// Checks that the store honours create-only puts: a second create of one key must be
    /// refused. A server that ignores `If-None-Match: *` would let two replicas both take one
    /// sequence number, and their states would part for good. Two PUTs and a DELETE of a
    /// `probe/` key. `Ok(false)`: the store is not fit for the admin store.
    pub async fn honours_create_only(&self) -> Result<bool, StoreError> {
        let key = Key::from(format!("{}probe/{}", self.prefix, random_write_id()?));
        let body = Bytes::from_static(b"create-only probe");
        self.put_create(&key, body.clone())
            .await
            .map_err(|e| unavailable("put", &key, &e))?;
        let second = self.put_create(&key, body).await;
        let _ = self.delete(&key).await;
        match second {
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(true),
            Ok(()) => Ok(false),
            Err(e) => Err(unavailable("put", &key, &e)),
        }
    }

    /// One LIST (however many pages it takes): the sequence numbers under `dir` after `after`
    /// (all of them with `None`), sorted.
    async fn list(&self, dir: &str, after: Option<u64>) -> Result<Vec<u64>, StoreError> {
        self.list_at_most(dir, after, usize::MAX).await
    }

    /// Like [`ChangeLog::list`], reading no more than `limit` keys when the store lists in
    /// key order (a replica far behind does not page through the whole log per batch).
    async fn list_at_most(
        &self,
        dir: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let limit = if self.listing_sorted {
            limit
        } else {
            usize::MAX
        };
        let prefix = Key::from(format!("{}{dir}", self.prefix));
        let listing = match after {
            Some(a) => self
                .store
                .list_with_offset(Some(&prefix), &self.key(dir, a)),
            None => self.store.list(Some(&prefix)),
        };
        let metas: Vec<_> = match listing.take(limit).try_collect().await {
            Ok(m) => {
                self.observe(StoreOp::List, true);
                m
            }
            Err(e) => {
                self.observe(StoreOp::List, false);
                return Err(unavailable("list", &prefix, &e));
            }
        };
        let mut seqs: Vec<u64> = metas
            .iter()
            .filter_map(|m| self.seq_of(dir, &m.location))
            .filter(|s| after.is_none_or(|a| *s > a))
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        Ok(seqs)
    }

    /// One DELETE; a key already gone counts as deleted.
    async fn delete(&self, key: &Key) -> Result<(), StoreError> {
        let one = futures_util::stream::once(std::future::ready(Ok(key.clone()))).boxed();
        let r = match self.store.delete_stream(one).next().await {
            Some(Err(object_store::Error::NotFound { .. })) | Some(Ok(_)) | None => Ok(()),
            Some(Err(e)) => Err(e),
        };
        self.observe(StoreOp::Delete, r.is_ok());
        r.map_err(|e| unavailable("delete", key, &e))
    }

    /// Makes a created local file durable (see [`ChangeLog::with_local_root`]).
    async fn sync_local(&self, key: &Key) -> Result<(), String> {
        let Some(root) = self.local_root.clone() else {
            return Ok(());
        };
        let file = root.join(key.as_ref());
        let shown = file.display().to_string();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::File::open(&file)?.sync_all()?;
            let mut dir = file.parent();
            while let Some(d) = dir {
                std::fs::File::open(d)?.sync_all()?;
                if d == root.as_path() || !d.starts_with(root.as_path()) {
                    break;
                }
                dir = d.parent();
            }
            Ok(())
        })
        .await
        .map_err(|e| format!("{shown}: fsync did not run: {e}"))?
        .map_err(|e| format!("{shown}: fsync failed: {e}"))
    }

    /// Reads back entry `seq` after a put whose answer did not say it was ours.
    async fn read_head(&self, seq: u64, key: &Key) -> Result<Option<EntryHead>, StoreError> {
        let Some(body) = self.get(key).await? else {
            return Ok(None);
        };
        let head: EntryHead = serde_json::from_slice(&body).map_err(|e| StoreError::Corrupt {
            key: key.to_string(),
            detail: e.to_string(),
        })?;
        if head.seq != seq {
            return Err(StoreError::Corrupt {
                key: key.to_string(),
                detail: format!("it says it is entry {}", head.seq),
            });
        }
        Ok(Some(head))
    }

    /// Appends `change` as entry `seq`, unless another writer holds that number.
    ///
    /// The put is create-only. When its answer is not a plain success (already exists, a
    /// timeout, a reset connection), the entry is read back: our write id means the put (or
    /// one of object_store's retries) landed; another's means the number is taken; absent
    /// means it did not land, and the same bytes are put again (at most [`PUT_ATTEMPTS`] in
    /// all). When even that cannot be learned, [`StoreError::Unknown`]: the change may be in
    /// the log, and must not be sent again blindly.
    pub async fn append<C: Serialize>(&self, seq: u64, change: &C) -> Result<Appended, StoreError> {
        self.injected_fault()?;
        let key = self.log_key(seq);
        let write_id = random_write_id()?;
        let body = serde_json::to_vec(&EntryOut {
            seq,
            write_id: &write_id,
            change,
        })
        .map_err(|e| StoreError::Unavailable(format!("change {seq} cannot be serialised: {e}")))?;
        let body = Bytes::from(body);
        let mut last = String::new();
        for _ in 0..PUT_ATTEMPTS {
            let put_err = match self.put_create(&key, body.clone()).await {
                Ok(()) => return self.acknowledge(&key).await,
                Err(e) => e,
            };
            match self.read_head(seq, &key).await {
                Ok(Some(h)) if h.write_id == write_id => return self.acknowledge(&key).await,
                Ok(Some(_)) => return Ok(Appended::Taken),
                Ok(None) if refused(&put_err) => return Err(unavailable("put", &key, &put_err)),
                // not there: the put did not land; the same bytes again
                Ok(None) => last = crate::diag::clip(&format!("put {key}: {put_err}")).into_owned(),
                Err(e @ StoreError::Corrupt { .. }) => return Err(e),
                Err(read_err) => {
                    return Err(StoreError::Unknown(
                        crate::diag::clip(&format!(
                            "put {key}: {put_err}; reading it back: {read_err}"
                        ))
                        .into_owned(),
                    ));
                }
            }
        }
        // the last put may still land (a request that outlived its timeout)
        Err(StoreError::Unknown(last))
    }

    async fn acknowledge(&self, key: &Key) -> Result<Appended, StoreError> {
        match self.sync_local(key).await {
            Ok(()) => Ok(Appended::Mine),
            Err(e) => Err(StoreError::Unknown(format!(
                "{key} was written but not made durable: {e}"
            ))),
        }
    }

    /// The contiguous entries `after + 1`, `after + 2`, … (at most `max`).
    ///
    /// When nothing changed this costs one GET (of `after + 1`). Otherwise one LIST learns
    /// which entries follow, and those are fetched concurrently, in order, up to the first
    /// gap. An entry that cannot be read, does not parse or holds another number ends the
    /// batch there: the entries before it are returned, and the error is returned when it is
    /// the first one asked for.
    pub async fn read_after<C: DeserializeOwned>(
        &self,
        after: u64,
        max: usize,
    ) -> Result<Vec<(u64, C)>, StoreError> {
        let Some(first) = after.checked_add(1).filter(|_| max > 0) else {
            return Ok(Vec::new());
        };
        let Some(body) = self.get(&self.log_key(first)).await? else {
            return Ok(Vec::new());
        };
        let mut out = vec![(first, self.parse_entry(first, &body)?)];
        if max == 1 {
            return Ok(out);
        }
        let mut want = Vec::new();
        for s in self.list_at_most("log", Some(first), max).await? {
            if s != first + 1 + want.len() as u64 || want.len() + 1 >= max {
                break;
            }
            want.push(s);
        }
        let mut fetched = futures_util::stream::iter(want)
            .map(|s| async move { (s, self.get(&self.log_key(s)).await) })
            .buffered(CONCURRENT_GETS);
        while let Some((s, r)) = fetched.next().await {
            let Ok(Some(body)) = r else { break };
            match self.parse_entry(s, &body) {
                Ok(c) => out.push((s, c)),
                Err(_) => break,
            }
        }
        Ok(out)
    }

    fn parse_entry<C: DeserializeOwned>(&self, seq: u64, body: &[u8]) -> Result<C, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            key: self.log_key(seq).to_string(),
            detail,
        };
        let e: EntryIn<C> = serde_json::from_slice(body).map_err(|e| corrupt(e.to_string()))?;
        if e.seq != seq {
            return Err(corrupt(format!("it says it is entry {}", e.seq)));
        }
        Ok(e.change)
    }

    /// Stores the state as of change `seq`, create-only: `false` when that checkpoint exists
    /// already (every checkpoint of one number holds the same state, so whose it is does not
    /// matter). The state is serialised inline, on the calling task: it is borrowed, and
    /// callers with a large state call this from a task of its own.
    fn injected_fault(&self) -> Result<(), StoreError> {
        let Some(dir) = &self.fault_dir else {
            return Ok(());
        };
        let f = FAULTS.lock().unwrap_or_else(|p| p.into_inner());
        match f.iter().find(|(d, _)| d == dir.as_ref()) {
            Some((_, kind)) => Err(StoreError::Unavailable(format!(
                "{}: {}",
                dir.display(),
                std::io::Error::from(*kind)
            ))),
            None => Ok(()),
        }
    }

    pub async fn put_checkpoint<S: Serialize>(
        &self,
        seq: u64,
        state: &S,
    ) -> Result<bool, StoreError> {
        let key = self.checkpoint_key(seq);
        let body = serde_json::to_vec(&CheckpointOut { seq, state }).map_err(|e| {
            StoreError::Unavailable(format!("checkpoint {seq} cannot be serialised: {e}"))
        })?;
        match self.put_create(&key, Bytes::from(body)).await {
            Ok(()) => match self.sync_local(&key).await {
                Ok(()) => Ok(true),
                Err(e) => Err(StoreError::Unavailable(e)),
            },
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(unavailable("put", &key, &e)),
        }
    }

    /// The newest checkpoint: one LIST and one GET (a large one is parsed on the blocking
    /// pool). `None` when there is none.
    pub async fn latest_checkpoint<S: DeserializeOwned + Send + 'static>(
        &self,
    ) -> Result<Option<(u64, S)>, StoreError> {
        // a second round only if the newest was deleted between the LIST and the GET
        for _ in 0..2 {
            let Some(&seq) = self.list("checkpoints", None).await?.last() else {
                return Ok(None);
            };
            let key = self.checkpoint_key(seq);
            let Some(body) = self.get(&key).await? else {
                continue;
            };
            let large = body.len() > PARSE_INLINE_MAX;
            let parse = move || serde_json::from_slice::<CheckpointIn<S>>(&body);
            let parsed = if large {
                tokio::task::spawn_blocking(parse)
                    .await
                    .map_err(|e| StoreError::Unavailable(format!("parsing {key}: {e}")))?
            } else {
                parse()
            };
            let c = parsed.map_err(|e| StoreError::Corrupt {
                key: key.to_string(),
                detail: e.to_string(),
            })?;
            if c.seq != seq {
                return Err(StoreError::Corrupt {
                    key: key.to_string(),
                    detail: format!("it says it is checkpoint {}", c.seq),
                });
            }
            return Ok(Some((seq, c.state)));
        }
        Ok(None)
    }

    /// Deletes every checkpoint but the newest `keep` (log entries are never deleted); the
    /// number deleted.
    pub async fn prune_checkpoints(&self, keep: usize) -> Result<usize, StoreError> {
        let seqs = self.list("checkpoints", None).await?;
        let old = &seqs[..seqs.len().saturating_sub(keep)];
        for &s in old {
            self.delete(&self.checkpoint_key(s)).await?;
        }
        Ok(old.len())
    }
}

/// Retries inside one store request: few and short, so an unreachable store answers within
/// seconds (the admin API then answers 503) rather than minutes.
fn retry_config() -> RetryConfig {
    RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(15),
        ..RetryConfig::default()
    }
}

const TIMEOUT: &str = "10s";
const CONNECT_TIMEOUT: &str = "5s";

/// Opens the change log named by `store.admin`. Credentials come only from the environment
/// and the instance / workload identity chains of each cloud, never from the config file.
pub fn open(
    cfg: &crate::config::AdminStoreConfig,
    data_dir: &Path,
    ca_file: Option<&Path>,
) -> Result<ChangeLog, String> {
    use crate::config::AdminBackend;
    let store: Arc<dyn ObjectStore> = match cfg.backend {
        AdminBackend::Local => {
            let root = data_dir.join("admin-log");
            if !root.is_dir() {
                std::fs::create_dir_all(&root).map_err(|e| {
                    format!("{}: cannot create the admin store: {e}", root.display())
                })?;
                // the new directory's entry survives a power cut too
                std::fs::File::open(data_dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| format!("{}: fsync failed: {e}", data_dir.display()))?;
            }
            let fs = object_store::local::LocalFileSystem::new_with_prefix(&root)
                .map_err(|e| format!("{}: cannot open the admin store: {e}", root.display()))?
                .with_fsync(true);
            let mut log = ChangeLog::new(Arc::new(fs), &cfg.prefix);
            log.fault_dir = Some(Arc::new(data_dir.to_path_buf()));
            return Ok(log);
        }
        AdminBackend::S3 => {
            use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(cfg.bucket.as_deref().unwrap_or_default())
                .with_conditional_put(S3ConditionalPut::ETagMatch)
                .with_http_connector(HyperConnector::new(ca_file)?)
                .with_retry(retry_config())
                .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), TIMEOUT)
                .with_config(
                    AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                    CONNECT_TIMEOUT,
                );
            if let Some(r) = &cfg.region {
                b = b.with_region(r);
            }
            if let Some(e) = &cfg.endpoint {
                b = b.with_endpoint(e);
            }
            if cfg.allow_http {
                b = b.with_allow_http(true);
            }
            Arc::new(b.build().map_err(|e| build_error(cfg, e))?)
        }
        AdminBackend::Gcs => {
            use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
            let mut b = GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(cfg.bucket.as_deref().unwrap_or_default())
                .with_http_connector(HyperConnector::new(ca_file)?)
                .with_retry(retry_config())
                .with_config(GoogleConfigKey::Client(ClientConfigKey::Timeout), TIMEOUT)
                .with_config(
                    GoogleConfigKey::Client(ClientConfigKey::ConnectTimeout),
                    CONNECT_TIMEOUT,
                );
            if let Some(e) = &cfg.endpoint {
                b = b.with_base_url(e);
            }
            if cfg.allow_http {
                b = b.with_config(GoogleConfigKey::Client(ClientConfigKey::AllowHttp), "true");
            }
            Arc::new(b.build().map_err(|e| build_error(cfg, e))?)
        }
        AdminBackend::Azure => {
            use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
            let mut b = MicrosoftAzureBuilder::from_env()
                .with_container_name(cfg.bucket.as_deref().unwrap_or_default())
                .with_http_connector(HyperConnector::new(ca_file)?)
                .with_retry(retry_config())
                .with_config(AzureConfigKey::Client(ClientConfigKey::Timeout), TIMEOUT)
                .with_config(
                    AzureConfigKey::Client(ClientConfigKey::ConnectTimeout),
                    CONNECT_TIMEOUT,
                );
            if let Some(e) = &cfg.endpoint {
                b = b.with_endpoint(e.clone());
            }
            if cfg.allow_http {
                b = b.with_allow_http(true);
            }
            Arc::new(b.build().map_err(|e| build_error(cfg, e))?)
        }
    };
    Ok(ChangeLog::new(store, &cfg.prefix))
}

/// A builder's error names a missing or malformed setting (the config file holds no secret,
/// and object_store does not echo credential values).
fn build_error(cfg: &crate::config::AdminStoreConfig, e: object_store::Error) -> String {
    format!(
        "admin store ({} bucket {}): {e}",
        cfg.backend.as_str(),
        cfg.bucket.as_deref().unwrap_or_default()
    )
}
