//! The admin API's state, shared by every replica through the admin store's change log
//! ([`crate::admin_store::ChangeLog`]).
//!
//! - A write plans its operations against this replica's state and appends them as change
//!   `applied + 1` with a create-only put. Winning that number proves nothing else was written
//!   since the state the plan read: `If-Match` checks hold across replicas. Losing it (another
//!   replica took the number) catches up and plans again against the newer state.
//! - Every replica polls for the next number every `poll_interval` (one GET when nothing
//!   changed) and applies what it finds to its state and to the set in force, incrementally.
//! - Every [`CHECKPOINT_EVERY`] changes the writer of that change stores the whole state, so a
//!   new replica reads one checkpoint and fewer than [`CHECKPOINT_EVERY`] changes.
//! - Past `max_staleness` without a successful read, the admin objects are withdrawn from the
//!   set in force (fail closed) until a read succeeds again.

use super::ApiError;
use super::ApiState;
use super::state::{ChangeDoc, Tx};
use crate::admin_store::{Appended, ChangeLog, StoreError, StoreOp};
use crate::persist::Document;
use crate::store::{Change, Store};
use crate::telemetry::Metrics;
use http::StatusCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A checkpoint is written after every this many changes.
pub const CHECKPOINT_EVERY: u64 = 4096;
/// Checkpoints kept (older ones are deleted; log entries never are).
const CHECKPOINTS_KEPT: usize = 3;
/// Changes read per request batch while catching up.
const READ_BATCH: usize = 1024;
/// The longest an admin write waits for the store.
const WRITE_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts at a write that keeps losing its sequence number to other replicas.
const WRITE_ATTEMPTS: usize = 16;

/// This replica's copy of the admin state.
pub struct Local {
    pub data: ApiState,
    /// The last change applied (0: the checkpoint or the empty state).
    pub applied: u64,
    /// Whether the store was read once; until then writes answer 503.
    pub loaded: bool,
}

/// The admin API's state and the log it is kept in.
pub struct Admin {
    pub(super) state: tokio::sync::Mutex<Local>,
    pub(super) cluster: String,
    log: ChangeLog,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    poll_interval: Duration,
    max_staleness: Duration,
    started: Instant,
    /// Milliseconds since `started` of the last successful read or write of the store.
    last_success: AtomicU64,
    /// The admin objects are withdrawn (past `max_staleness`).
    stale: AtomicBool,
    /// The last store operation failed (an outage is logged once, at its start and end).
    failing: AtomicBool,
    /// A write's outcome was unknown: catch up before the next write.
    dirty: AtomicBool,
    in_force: std::sync::Mutex<()>,
    /// One admin write at a time on this replica.
    writer: tokio::sync::Mutex<()>,
}

/// 503 for a change that was not made. The store's error (addresses, bucket, keys) goes to
/// the log, not to the client.
fn unavailable(e: &StoreError) -> ApiError {
    tracing::warn!(error = %e, "admin write refused: the admin store is unavailable");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the admin store is unavailable; nothing was changed",
    )
}

impl Admin {
    /// Opens the admin store named by the config and loads it: the latest checkpoint, then
    /// every change after it. On first start with the local backend, a `data_dir/
    /// admin-state.json` left by an earlier version becomes checkpoint 0. A local store that
    /// cannot be read is an error (the gateway does not start rather than forget objects); a
    /// remote one that cannot be reached is retried in the background while the policy files
    /// serve, and admin writes answer 503 until it is read.
    pub async fn open(
        config: &crate::config::Config,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Admin>, String> {
        let cfg = &config.store.admin;
        let observer = {
            let m = metrics.clone();
            Arc::new(move |op: StoreOp, ok: bool| {
                m.admin_store_requests
                    .with_label_values(&[op.as_str()])
                    .inc();
                if !ok {
                    m.admin_store_errors.with_label_values(&[op.as_str()]).inc();
                }
            })
        };
        let log =
            crate::admin_store::open(cfg, &config.store.data_dir, None)?.with_observer(observer);
        let admin = Arc::new(Admin {
            state: tokio::sync::Mutex::new(Local {
                data: ApiState::default(),
                applied: 0,
                loaded: false,
            }),
            cluster: config.cluster.clone(),
            log,
            store,
            metrics,
            poll_interval: cfg.poll_interval,
            max_staleness: cfg.max_staleness,
            started: Instant::now(),
            last_success: AtomicU64::new(0),
            stale: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            in_force: std::sync::Mutex::new(()),
            writer: tokio::sync::Mutex::new(()),
        });
        let local = cfg.backend == crate::config::AdminBackend::Local;
        if !local {
            match admin.log.honours_create_only().await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(format!(
                        "the {} store does not honour create-only puts (If-None-Match: *): two replicas could both write one change; use a server that supports conditional writes",
                        cfg.backend.as_str()
                    ));
                }
                // checked at the next start; the first write would find out too
                Err(e) => {
                    tracing::warn!(error = %e, "the admin store could not be probed for create-only puts")
                }
            }
        }
        if let Err(e) = admin.migrate(&config.store.data_dir).await {
            let e = format!("cannot migrate admin-state.json into the admin store: {e}");
            if local {
                return Err(e);
            }
            // kept in place: the next start tries again
            tracing::error!("{e}");
        }
        let loaded = {
            let mut st = admin.state.lock().await;
            admin.load(&mut st).await
        };
        match loaded {
            Ok(()) => {}
            Err(e) if local => return Err(format!("cannot read the admin store: {e}")),
            Err(e) => {
                tracing::error!(error = %e, "the admin store cannot be read; the policy files serve, admin tokens are unknown and admin writes answer 503 until it can");
                admin.failing.store(true, Ordering::Relaxed);
            }
        }
        Ok(admin)
    }

    /// The state, for an admin read: 503 until the store was read once (an empty list would
    /// tell a client that nothing exists).
    pub(super) async fn read(&self) -> Result<tokio::sync::MutexGuard<'_, Local>, ApiError> {
        let st = self.state.lock().await;
        if !st.loaded {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the admin store has not been read yet; try again",
            ));
        }
        Ok(st)
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// A read or write of the store worked: the state is fresh.
    fn succeeded(&self) {
        self.last_success.store(self.now_ms(), Ordering::SeqCst);
        self.metrics
            .admin_store_last_success
            .set(chrono::Utc::now().timestamp());
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("the admin store is reachable again");
        }
        let _one_at_a_time = self.in_force.lock().unwrap_or_else(|e| e.into_inner());
        if self.stale.swap(false, Ordering::SeqCst) {
            tracing::info!("admin objects are in force again");
            self.metrics.admin_store_stale.set(0);
            self.store.set_admin_in_force(true);
        }
    }

    /// The store could not be used (each failed request is counted by the observer): logged
    /// at the start of an outage; past `max_staleness` the admin objects are withdrawn.
    fn failed(&self, e: &StoreError) {
        if matches!(e, StoreError::Corrupt { .. }) {
            self.metrics
                .admin_store_errors
                .with_label_values(&["apply"])
                .inc();
            self.stuck();
        }
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::error!(error = %e, "the admin store is unavailable: requests are served from memory, admin writes answer 503");
        }
        self.check_staleness();
    }

    /// Withdraws the admin objects past `max_staleness` without a successful read. Serialised
    /// with [`Admin::succeeded`] (which records the success before taking the same lock), so a
    /// success racing this check always has the last word.
    fn check_staleness(&self) {
        let _one_at_a_time = self.in_force.lock().unwrap_or_else(|e| e.into_inner());
        let age = self
            .now_ms()
            .saturating_sub(self.last_success.load(Ordering::SeqCst));
        if age > self.max_staleness.as_millis() as u64 && !self.stale.swap(true, Ordering::SeqCst) {
            tracing::error!(
                max_staleness = ?self.max_staleness,
                "the admin store was not read for longer than max_staleness: tokens known only from it are refused until it is read again"
            );
            self.metrics.admin_store_stale.set(1);
            self.store.set_admin_in_force(false);
        }
    }

    /// This replica cannot go on reading the log (an entry it cannot apply): it knows it is
    /// behind, so the admin objects are withdrawn at once, not after `max_staleness`.
    fn stuck(&self) {
        let _one_at_a_time = self.in_force.lock().unwrap_or_else(|e| e.into_inner());
        if !self.stale.swap(true, Ordering::SeqCst) {
            tracing::error!(
                "admin objects are withdrawn until this replica can read the admin store's next change (upgrade it, or fix the entry)"
            );
            self.metrics.admin_store_stale.set(1);
            self.store.set_admin_in_force(false);
        }
    }

    /// First start after an upgrade: the single-file state becomes checkpoint 0.
    async fn migrate(&self, data_dir: &std::path::Path) -> Result<(), String> {
        let doc = Document::new(data_dir, "admin-state");
        let path = doc.path();
        if !path.exists() {
            return Ok(());
        }
        let old = doc
            .load::<ApiState>()
            .map_err(|e| e.to_string())?
            .map(|v| v.data)
            .unwrap_or_default();
        let has_log = self
            .log
            .latest_checkpoint::<serde::de::IgnoredAny>()
            .await
            .map_err(|e| e.to_string())?
            .is_some()
            || !self
                .log
                .read_after::<serde::de::IgnoredAny>(0, 1)
                .await
                .map_err(|e| e.to_string())?
                .is_empty();
        if has_log {
            tracing::warn!(path = %path.display(), "admin-state.json is ignored: the admin store already holds a state");
            return Ok(());
        }
        self.log
            .put_checkpoint(0, &old)
            .await
            .map_err(|e| e.to_string())?;
        let moved = path.with_extension("json.migrated");
        std::fs::rename(&path, &moved).map_err(|e| format!("{}: {e}", path.display()))?;
        tracing::info!(from = %path.display(), to = %moved.display(), "admin state migrated into the admin store as checkpoint 0");
        Ok(())
    }

    /// Reads the latest checkpoint and every change after it, and puts the result in force.
    async fn load(&self, st: &mut Local) -> Result<(), StoreError> {
        let (seq, data) = match self.log.latest_checkpoint::<ApiState>().await {
            Ok(c) => {
                let (seq, mut data) = c.unwrap_or((0, ApiState::default()));
                data.reindex();
                (seq, data)
            }
            Err(e) => {
                self.failed(&e);
                return Err(e);
            }
        };
        let mut next = Local {
            data,
            applied: seq,
            loaded: true,
        };
        let mut changes = Vec::new();
        self.catch_up_into(&mut next, &mut changes).await?;
        let overlay = next.data.overlay(&self.cluster);
        *st = next;
        // withheld, if stale, until a read succeeds (below)
        self.store.set_overlay(overlay);
        self.metrics.admin_store_generation.set(st.applied as i64);
        self.succeeded();
        tracing::info!(checkpoint = seq, applied = st.applied, "admin store loaded");
        Ok(())
    }

    /// Reads and applies every change after `st.applied`; the data-plane changes are added
    /// to `out`.
    async fn catch_up_into(&self, st: &mut Local, out: &mut Vec<Change>) -> Result<(), StoreError> {
        loop {
            let batch = match self
                .log
                .read_after::<ChangeDoc>(st.applied, READ_BATCH)
                .await
            {
                Ok(b) => b,
                Err(e) => {
                    self.failed(&e);
                    return Err(e);
                }
            };
            let n = batch.len();
            for (seq, doc) in batch {
                self.apply_entry(st, seq, &doc, out)?;
            }
            if n < READ_BATCH {
                return Ok(());
            }
        }
    }

    fn apply_entry(
        &self,
        st: &mut Local,
        seq: u64,
        doc: &ChangeDoc,
        out: &mut Vec<Change>,
    ) -> Result<(), StoreError> {
        if seq != st.applied + 1 {
            return Ok(());
        }
        st.data.apply(doc, &self.cluster, out).map_err(|detail| {
            let e = StoreError::Corrupt {
                key: format!("log/{seq:020}.json"),
                detail,
            };
            // a change this version cannot read: this replica stops here (and turns stale)
            // rather than skip it
            self.metrics
                .admin_store_errors
                .with_label_values(&["apply"])
                .inc();
            tracing::error!(error = %e, "an admin change cannot be applied");
            e
        })?;
        st.applied = seq;
        Ok(())
    }

    /// Catches up with the log and puts what changed in force.
    async fn catch_up(&self, st: &mut Local) -> Result<(), StoreError> {
        if !st.loaded {
            return self.load(st).await;
        }
        let mut changes = Vec::new();
        let r = self.catch_up_into(st, &mut changes).await;
        self.store.apply(&changes);
        self.metrics.admin_store_generation.set(st.applied as i64);
        if r.is_ok() {
            self.succeeded();
        }
        r
    }

    /// Runs one admin write: `plan` reads the state and returns the operations to make and the
    /// answer to give. The operations are appended to the log and applied here before the
    /// answer is sent. If another replica wrote first, this replica catches up and plans again
    /// (an `If-Match` that held before may now answer 412). A refusal (412, 404, 409, 400) is
    /// made against the latest state too: one read of the store confirms nothing is newer.
    ///
    /// Writes on this replica are serialised by `writer`; the state itself is locked only to
    /// plan and to apply, never while the store is written, so polls and admin reads go on
    /// while a put is slow.
    pub(super) async fn write<T>(
        &self,
        actor: &str,
        mut plan: impl FnMut(&ApiState) -> Result<(Tx, T), ApiError>,
    ) -> Result<T, ApiError> {
        let _one_writer = self.writer.lock().await;
        {
            let mut st = self.state.lock().await;
            // behind for a known reason (never read, a write of unknown outcome, stale): read
            // first, so the plan sees the latest state
            let behind = !st.loaded
                || self.dirty.swap(false, Ordering::Relaxed)
                || self.stale.load(Ordering::Relaxed);
            if behind && let Err(e) = self.catch_up(&mut st).await {
                self.dirty.store(true, Ordering::Relaxed);
                return Err(unavailable(&e));
            }
        }
        let mut confirmed = false;
        for _ in 0..WRITE_ATTEMPTS {
            let (planned, seq) = {
                let st = self.state.lock().await;
                (plan(&st.data), st.applied + 1)
            };
            let (tx, out) = match planned {
                Ok((tx, out)) if !tx.is_empty() => (tx, out),
                refused => {
                    // refused (or nothing to do) against this replica's state: if another
                    // replica changed something since, catch up and plan again
                    if !confirmed && self.newer_than(seq - 1).await {
                        confirmed = true;
                        continue;
                    }
                    return refused.map(|(_, out)| out);
                }
            };
            let doc = ChangeDoc {
                ops: tx.ops,
                next_id: tx.next_id,
                actor: actor.to_string(),
                at: super::now_rfc3339(),
            };
            // a change this replica could not apply again is never written
            if let Err(detail) = ApiState::check(&doc) {
                tracing::error!(detail, "an admin change does not read back; not written");
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the change could not be encoded; nothing was changed",
                ));
            }
            // a store that stops answering must not hold the admin API: past WRITE_TIMEOUT
            // the outcome is unknown (and never sent again)
            let appended = tokio::time::timeout(WRITE_TIMEOUT, self.log.append(seq, &doc))
                .await
                .unwrap_or_else(|_| {
                    Err(StoreError::Unknown(format!(
                        "no answer within {WRITE_TIMEOUT:?}"
                    )))
                });
            match appended {
                Ok(Appended::Mine) => {
                    let mut st = self.state.lock().await;
                    if st.applied + 1 == seq {
                        let mut changes = Vec::new();
                        if let Err(e) = self.apply_entry(&mut st, seq, &doc, &mut changes) {
                            // checked above: a bug if reached; the replica is stale now
                            tracing::error!(error = %e, seq, "an admin change written here cannot be applied");
                            return Err(ApiError::new(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "the change was written but cannot be applied; this replica stopped reading the admin store",
                            ));
                        }
                        self.store.apply(&changes);
                        self.metrics.admin_store_generation.set(seq as i64);
                    }
                    // else: the poller read it back and applied it already
                    self.succeeded();
                    if seq % CHECKPOINT_EVERY == 0 && st.applied == seq {
                        self.checkpoint(seq, st.data.clone());
                    }
                    return Ok(out);
                }
                Ok(Appended::Taken) => {
                    let mut st = self.state.lock().await;
                    if let Err(e) = self.catch_up(&mut st).await {
                        self.dirty.store(true, Ordering::Relaxed);
                        return Err(unavailable(&e));
                    }
                }
                Err(e @ StoreError::Unknown(_)) => {
                    // it may be in the log: the next read applies it if so; it is never sent
                    // a second time
                    self.dirty.store(true, Ordering::Relaxed);
                    self.failed(&e);
                    tracing::warn!(error = %e, seq, "admin write of unknown outcome: the next read of the store settles it");
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the admin store did not confirm the change; it may have been made: read the object before trying again",
                    ));
                }
                Err(e) => {
                    self.dirty.store(true, Ordering::Relaxed);
                    self.failed(&e);
                    return Err(unavailable(&e));
                }
            }
        }
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "other replicas kept writing first; nothing was changed, try again",
        ))
    }

    /// Whether the store holds changes after `applied` (one GET); if so they are applied. A
    /// store that cannot be read says no: the refusal then stands on this replica's state.
    async fn newer_than(&self, applied: u64) -> bool {
        match self
            .log
            .read_after::<serde::de::IgnoredAny>(applied, 1)
            .await
        {
            Ok(found) if !found.is_empty() => {
                let mut st = self.state.lock().await;
                self.catch_up(&mut st).await.is_ok()
            }
            _ => false,
        }
    }

    /// Stores the whole state as of `seq`, in the background.
    fn checkpoint(&self, seq: u64, data: ApiState) {
        let log = self.log.clone();
        let rt = tokio::runtime::Handle::current();
        // serialising the whole state is CPU work: on the blocking pool, never on a worker
        tokio::task::spawn_blocking(move || {
            rt.block_on(async move {
            match log.put_checkpoint(seq, &data).await {
                Ok(_) => {
                    tracing::info!(seq, "admin store checkpoint written");
                    if let Err(e) = log.prune_checkpoints(CHECKPOINTS_KEPT).await {
                        tracing::warn!(error = %e, "old admin store checkpoints not deleted");
                    }
                }
                Err(e) => {
                    tracing::warn!(seq, error = %e, "admin store checkpoint not written; new replicas read more changes until the next one");
                }
            }
            })
        });
    }

    /// One poll: applies what other replicas wrote. The read is made without holding the
    /// state, so admin reads and writes never wait for a slow store.
    pub async fn poll(&self) {
        let applied = {
            let st = self.state.lock().await;
            st.loaded.then_some(st.applied)
        };
        let Some(applied) = applied else {
            let mut st = self.state.lock().await;
            if !st.loaded && self.load(&mut st).await.is_err() {
                self.check_staleness();
            }
            return;
        };
        let batch = match self.log.read_after::<ChangeDoc>(applied, READ_BATCH).await {
            Ok(b) => b,
            Err(e) => {
                self.failed(&e);
                return;
            }
        };
        if batch.is_empty() {
            self.succeeded();
            return;
        }
        let full = batch.len() == READ_BATCH;
        let mut st = self.state.lock().await;
        let mut changes = Vec::new();
        let mut r = Ok(());
        for (seq, doc) in &batch {
            if let Err(e) = self.apply_entry(&mut st, *seq, doc, &mut changes) {
                r = Err(e);
                break;
            }
        }
        self.store.apply(&changes);
        self.metrics.admin_store_generation.set(st.applied as i64);
        if r.is_err() {
            self.check_staleness();
        } else {
            if full {
                // far behind (after an outage): the rest in batches
                let _ = self.catch_up(&mut st).await;
            } else {
                self.succeeded();
            }
        }
    }

    /// Polls every `poll_interval` until `shutdown` turns true. Staleness is checked on its
    /// own clock, so a store that stops answering (a poll hanging until its timeout) still
    /// turns the admin objects stale within `max_staleness` + `poll_interval`.
    pub async fn run(self: Arc<Self>, shutdown: tokio::sync::watch::Receiver<bool>) {
        let polls = async {
            let mut tick = tokio::time::interval(self.poll_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                self.poll().await;
            }
        };
        let staleness = async {
            let mut tick = tokio::time::interval(self.poll_interval);
            loop {
                tick.tick().await;
                self.check_staleness();
            }
        };
        let mut shutdown = shutdown;
        tokio::select! {
            _ = polls => {}
            _ = staleness => {}
            _ = async { while shutdown.changed().await.is_ok() && !*shutdown.borrow() {} } => {}
        }
    }
}
