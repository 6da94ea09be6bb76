//! Per-tenant controls (`store.controls_file`): an incident switch that blocks a tenant's reads,
//! writes or rule changes, and rate and in-flight limits per tenant and per token.
//!
//! The file is read like a policy file (YAML, or JSON when its name ends in `.json`; unknown keys
//! are errors; every error located `FILE:LINE:COL`), checked by `obsgate check`, and reloaded by
//! the policy files' poll loop and on SIGHUP. A file that does not load leaves the controls in
//! force as they were.
//!
//! Checks run after the token is authenticated and its policy allowed the request, before
//! anything is forwarded, in this order: blocks (every tenant of the request), rate limits (the
//! token's, then each tenant's), in-flight limits (the token's, then each tenant's; proxy
//! listeners only). A request refused by any check takes nothing from any budget.
//!
//! State (a rate bucket, an in-flight count) exists only for the entries the file names, so
//! memory is bounded by the file: the `"*"` entry is one budget shared by every tenant without
//! an entry of its own. A reload keeps the state of entries that are still there (a changed
//! rate keeps the bucket's fill). In-flight counts are shared by the old and the new set, and
//! each permit gives back exactly what it took, so a count never goes negative or leaks.
//!
//! Hot path: with no `controls_file`, [`admit`] is one pointer check. With one, a lock-free
//! load of the set in force, a hash lookup per tenant and for the token, one compare-and-swap
//! per rate limit (GCRA: a bucket is one atomic "theoretical arrival time") and one per
//! in-flight limit. A response carries its in-flight permits in its body, which releases them
//! when it has been sent or dropped; a response with no permit is not wrapped.

use crate::diag::{FileError, FileErrors};
use crate::duration::PromDuration;
use crate::policy::{Identity, Scope, valid_name};
use crate::proxy::Failure;
use crate::store::json;
use crate::store::watch::{FileStamp, stamp};
use crate::telemetry::Metrics;
use crate::wire::{Body, BoxError, error_response};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus::IntCounter;
use serde::{Deserialize, Deserializer};
use std::cell::OnceCell;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The name of the entry for every tenant without an entry of its own.
pub const ANY_TENANT: &str = "*";
/// Bounds of `rate_limit.requests_per_second`.
pub const MIN_RATE: f64 = 0.001;
pub const MAX_RATE: f64 = 1_000_000_000.0;
/// Largest `rate_limit.burst` and `max_inflight`.
pub const MAX_BURST: u64 = 1_000_000;
pub const MAX_INFLIGHT: u64 = 1_000_000;
/// Longest `block.message`.
pub const MAX_MESSAGE_BYTES: usize = 1024;

// ---------------------------------------------------------------------------------------------
// Classes and reasons

/// What a request does, as far as blocks are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Every route whose scope is `*:read` (and the one route without a scope, Mimir's
    /// `status/buildinfo`, a read).
    Reads = 0,
    /// `*:write`, `*:delete`, `metrics:import`.
    Writes = 1,
    /// `rules:*` and `alerts:*`, reads and writes: the ruler and the Alertmanager.
    Rules = 2,
}

impl Class {
    /// The class of a route by its scope.
    pub fn of(scope: Option<Scope>) -> Class {
        use Scope::*;
        match scope {
            Some(RulesRead | RulesWrite | AlertsRead | AlertsWrite) => Class::Rules,
            Some(
                MetricsWrite | MetricsDelete | MetricsImport | LogsWrite | LogsDelete | TracesWrite
                | TracesDelete | ProfilesWrite | AccessPoliciesWrite | AccessPoliciesDelete,
            ) => Class::Writes,
            Some(
                MetricsRead | LogsRead | TracesRead | ProfilesRead | AccessPoliciesRead | Admin,
            )
            | None => Class::Reads,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Reads => "reads",
            Class::Writes => "writes",
            Class::Rules => "rules",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    fn describe(self) -> &'static str {
        match self {
            Class::Reads => "reads",
            Class::Writes => "writes",
            Class::Rules => "rule and alert requests",
        }
    }

    const ALL: [Class; 3] = [Class::Reads, Class::Writes, Class::Rules];
}

/// Why the controls refused a request: the `reason` of the audit line, of
/// `obsgate_auth_decisions_total{result="deny"}` and of `obsgate_tenant_controls_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    BlockedReads = 0,
    BlockedWrites = 1,
    BlockedRules = 2,
    TenantRate = 3,
    TenantInflight = 4,
    TokenRate = 5,
    TokenInflight = 6,
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::BlockedReads,
        Reason::BlockedWrites,
        Reason::BlockedRules,
        Reason::TenantRate,
        Reason::TenantInflight,
        Reason::TokenRate,
        Reason::TokenInflight,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BlockedReads => "blocked_reads",
            Reason::BlockedWrites => "blocked_writes",
            Reason::BlockedRules => "blocked_rules",
            Reason::TenantRate => "tenant_rate",
            Reason::TenantInflight => "tenant_inflight",
            Reason::TokenRate => "token_rate",
            Reason::TokenInflight => "token_inflight",
        }
    }

    fn blocked(c: Class) -> Reason {
        match c {
            Class::Reads => Reason::BlockedReads,
            Class::Writes => Reason::BlockedWrites,
            Class::Rules => Reason::BlockedRules,
        }
    }
}

/// A request the controls refused: its status, JSON error message and `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub status: StatusCode,
    pub message: String,
    /// `Retry-After`, whole seconds.
    pub retry_after: Option<u64>,
}

impl Refusal {
    /// The JSON error's `errorType`, by status.
    pub fn error_type(&self) -> &'static str {
        match self.status.as_u16() {
            400 => "bad_data",
            401 => "unauthorized",
            404 => "not_found",
            405 => "method_not_allowed",
            408 | 504 => "timeout",
            413 => "too_large",
            429 => "too_many_requests",
            500..=599 => "unavailable",
            _ => "forbidden",
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let mut r = error_response(self.status, self.error_type(), &self.message);
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

// ---------------------------------------------------------------------------------------------
// The set in force

/// Nanoseconds on a monotonic clock shared by every set (buckets outlive reloads).
fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A block: which classes, and how they are answered.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Block {
    classes: u8,
    status: StatusCode,
    message: Option<String>,
    retry_after: Option<u64>,
}

impl Block {
    fn covers(&self, c: Class) -> bool {
        self.classes & c.bit() != 0
    }

    fn refusal(&self, tenant: &str, c: Class) -> Refusal {
        Refusal {
            reason: Reason::blocked(c),
            status: self.status,
            message: match &self.message {
                Some(m) => m.clone(),
                None => format!("{} of tenant {tenant:?} are blocked for now", c.describe()),
            },
            retry_after: self.retry_after,
        }
    }
}

/// A token bucket as GCRA: one atomic "theoretical arrival time" (`tat`, see [`now_ns`]). A
/// request is allowed if, after it, `tat` is at most `burst` intervals ahead of now.
#[derive(Debug)]
struct Rate {
    per_second: f64,
    burst: u64,
    /// Nanoseconds per request (1 / rate).
    interval: u64,
    /// `burst × interval`: how far ahead of now `tat` may be.
    tolerance: u64,
    tat: Arc<AtomicU64>,
}

impl Rate {
    fn new(per_second: f64, burst: u64) -> Rate {
        let interval = ((1e9 / per_second).round() as u64).max(1);
        Rate {
            per_second,
            burst,
            interval,
            tolerance: interval.saturating_mul(burst),
            tat: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Takes one request's worth (or, `consume: false`, only tells whether it could).
    /// `Err(seconds)`: none is left; one will be in that many whole seconds (at least 1).
    fn take(&self, now: u64, consume: bool) -> Result<(), u64> {
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let next = tat.max(now).saturating_add(self.interval);
            let ahead = next - now;
            if ahead > self.tolerance {
                return Err(retry_secs(ahead - self.tolerance));
            }
            if !consume {
                return Ok(());
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }

    /// Gives back one request's worth taken by [`Rate::take`] (the request was refused later).
    fn refund(&self) {
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_sub(self.interval))
            });
    }

    /// This rate's bucket for the next set: the same one when nothing changed, else one as full
    /// (in requests) as this one is now, under the new parameters.
    fn carried_into(&self, next: &mut Rate, now: u64) {
        if self.interval == next.interval && self.tolerance == next.tolerance {
            next.tat = self.tat.clone();
            return;
        }
        let debt = self.tat.load(Ordering::Acquire).saturating_sub(now);
        let used = debt as f64 / self.interval as f64;
        let new_debt = ((used * next.interval as f64) as u64).min(next.tolerance);
        next.tat = Arc::new(AtomicU64::new(now.saturating_add(new_debt)));
    }
}

/// Whole seconds until `ns` nanoseconds have passed, at least 1.
fn retry_secs(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000).max(1)
}

/// An in-flight limit: the count is shared across reloads, the limit is the set's.
#[derive(Debug)]
struct Inflight {
    limit: usize,
    count: Arc<AtomicUsize>,
}

impl Inflight {
    fn new(limit: usize) -> Inflight {
        Inflight {
            limit,
            count: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn acquire(&self) -> Option<Permit> {
        let limit = self.limit;
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c < limit).then_some(c + 1)
            })
            .ok()
            .map(|_| Permit(self.count.clone()))
    }
}

/// One request counted in an in-flight limit until dropped.
#[derive(Debug)]
pub struct Permit(Arc<AtomicUsize>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The controls of one tenant, the `"*"` entry or one token.
#[derive(Debug, Default)]
struct Entry {
    block: Option<Block>,
    rate: Option<Rate>,
    inflight: Option<Inflight>,
}

impl Entry {
    fn blocks(&self) -> u8 {
        self.block.as_ref().map_or(0, |b| b.classes)
    }

    fn carry(&mut self, prev: &Entry, now: u64) {
        if let (Some(next), Some(old)) = (&mut self.rate, &prev.rate) {
            old.carried_into(next, now);
        }
        if let (Some(next), Some(old)) = (&mut self.inflight, &prev.inflight) {
            next.count = old.count.clone();
        }
    }
}

/// One validated controls file, with the state of its limits.
#[derive(Debug, Default)]
pub struct ControlSet {
    tenants: HashMap<String, Entry>,
    any_tenant: Option<Entry>,
    tokens: HashMap<String, Entry>,
}

/// A tenant of a request and the entry that controls it (its own, or `"*"`'s).
struct Controlled<'s> {
    tenant: &'s str,
    entry: &'s Entry,
    shared: bool,
}

/// The entries of a request's tenants (`a|b`), in its order; `"*"`'s at most once, as it is one
/// budget however many of its tenants a request names.
struct Entries<'s> {
    set: &'s ControlSet,
    tenants: std::str::Split<'s, char>,
    any_seen: bool,
}

impl<'s> Iterator for Entries<'s> {
    type Item = Controlled<'s>;
    fn next(&mut self) -> Option<Controlled<'s>> {
        for tenant in self.tenants.by_ref() {
            if let Some(entry) = self.set.tenants.get(tenant) {
                return Some(Controlled {
                    tenant,
                    entry,
                    shared: false,
                });
            }
            if let Some(entry) = &self.set.any_tenant
                && !self.any_seen
            {
                self.any_seen = true;
                return Some(Controlled {
                    tenant,
                    entry,
                    shared: true,
                });
            }
        }
        None
    }
}

impl ControlSet {
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty() && self.any_tenant.is_none() && self.tokens.is_empty()
    }

    fn entries<'s>(&'s self, org_id: &'s str) -> Entries<'s> {
        Entries {
            set: self,
            tenants: org_id.split('|'),
            any_seen: false,
        }
    }

    fn tenant_entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.tenants
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .chain(self.any_tenant.iter().map(|e| (ANY_TENANT, e)))
    }

    /// Tenant entries (the `"*"` one included) with a block in force.
    pub fn blocks_active(&self) -> usize {
        self.tenant_entries()
            .filter(|(_, e)| e.blocks() != 0)
            .count()
    }

    /// The tenant entries (`"*"` included) with a block in force, sorted, and what they block.
    pub fn blocked(&self) -> Vec<(String, Vec<Class>)> {
        let mut v: Vec<(String, Vec<Class>)> = self
            .tenant_entries()
            .filter(|(_, e)| e.blocks() != 0)
            .map(|(n, e)| {
                (
                    n.to_string(),
                    Class::ALL
                        .into_iter()
                        .filter(|c| e.blocks() & c.bit() != 0)
                        .collect(),
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Notes on the names a policy set does not define (for `obsgate check`: a typo in an
    /// incident blocks nothing). Tenants and tokens made through the admin API are not in the
    /// policy files, so these are notes, not errors.
    pub fn unknown_names(&self, files: &crate::store::Snapshot) -> Vec<String> {
        let mut notes: Vec<String> = self
            .tenants
            .keys()
            .filter(|t| !files.tenants.contains_key(t.as_str()))
            .map(|t| format!("tenant {t:?} is not defined in the policy files"))
            .collect();
        let tokens: std::collections::HashSet<&str> =
            files.tokens().iter().map(|t| t.name.as_str()).collect();
        notes.extend(
            self.tokens
                .keys()
                .filter(|t| !tokens.contains(t.as_str()))
                .map(|t| format!("token {t:?} is not defined in the policy files")),
        );
        notes.extend(self.escapes_from_any());
        notes.sort();
        notes
    }

    /// Tenants whose own entry leaves out a limit the `"*"` entry sets: an entry replaces
    /// `"*"` whole, so adding one (a block during an incident, say) lifts that limit for it.
    pub fn escapes_from_any(&self) -> Vec<String> {
        let Some(any) = &self.any_tenant else {
            return Vec::new();
        };
        let mut notes: Vec<String> = self
            .tenants
            .iter()
            .filter_map(|(t, e)| {
                let mut lifted = Vec::new();
                if any.rate.is_some() && e.rate.is_none() {
                    lifted.push("rate_limit");
                }
                if any.inflight.is_some() && e.inflight.is_none() {
                    lifted.push("max_inflight");
                }
                (!lifted.is_empty()).then(|| {
                    format!(
                        "tenant {t:?} has its own entry without {}: the \"*\" entry's {} no longer applies to it",
                        lifted.join(" and "),
                        lifted.join(" and ")
                    )
                })
            })
            .collect();
        notes.sort();
        notes
    }

    /// Takes over the state of `prev`'s entries that are still here (by name).
    fn carry(&mut self, prev: &ControlSet) {
        let now = now_ns();
        for (name, e) in &mut self.tenants {
            if let Some(old) = prev.tenants.get(name) {
                e.carry(old, now);
            }
        }
        if let (Some(e), Some(old)) = (&mut self.any_tenant, &prev.any_tenant) {
            e.carry(old, now);
        }
        for (name, e) in &mut self.tokens {
            if let Some(old) = prev.tokens.get(name) {
                e.carry(old, now);
            }
        }
    }
}

impl fmt::Display for ControlSet {
    /// `2 tenant entries, 1 token entry; blocks in force: team-a (reads), * (writes, rules);
    /// 2 rate limits, 1 in-flight limit`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let tenants = self.tenants.len() + usize::from(self.any_tenant.is_some());
        let all = || {
            self.tenant_entries()
                .map(|(_, e)| e)
                .chain(self.tokens.values())
        };
        let rates = all().filter(|e| e.rate.is_some()).count();
        let inflight = all().filter(|e| e.inflight.is_some()).count();
        write!(
            f,
            "{}, {}; ",
            plural(tenants, "tenant entry", "tenant entries"),
            plural(self.tokens.len(), "token entry", "token entries")
        )?;
        let blocked = self.blocked();
        if blocked.is_empty() {
            write!(f, "no block in force")?;
        } else {
            write!(f, "blocks in force: ")?;
            for (i, (name, classes)) in blocked.iter().enumerate() {
                let cs: Vec<&str> = classes.iter().map(|c| c.as_str()).collect();
                write!(
                    f,
                    "{}{name} ({})",
                    if i > 0 { ", " } else { "" },
                    cs.join(", ")
                )?;
            }
        }
        write!(
            f,
            "; {}, {}",
            plural(rates, "rate limit", "rate limits"),
            plural(inflight, "in-flight limit", "in-flight limits")
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Admission

/// Which checks apply where a request is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The proxy listeners: blocks, rate limits and in-flight limits.
    Proxy,
    /// A forward-auth question: blocks and rate limits. The request is then forwarded by another
    /// proxy, so obsgate cannot know when it ends: in-flight limits do not apply.
    ForwardAuth,
    /// A forward-auth question asked again only to hand on a refusal (`X-Obsgate-Explain`):
    /// as [`Check::ForwardAuth`], but it takes nothing from any rate limit.
    Explain,
}

/// An admitted request's in-flight permits, held until its response has been sent.
#[derive(Debug, Default)]
pub struct Admission {
    permits: Vec<Permit>,
}

impl Admission {
    /// No permit (no controls, or none of them limits this request in flight).
    pub const NONE: Admission = Admission {
        permits: Vec::new(),
    };

    /// Permits held (tests).
    pub fn permits(&self) -> usize {
        self.permits.len()
    }

    /// The response, its body holding the permits until it has been sent or dropped. A request
    /// with no permit gets its response back untouched.
    pub fn hold(self, resp: Response<Body>) -> Response<Body> {
        if self.permits.is_empty() {
            return resp;
        }
        use http_body_util::BodyExt;
        resp.map(|inner| {
            Held {
                inner,
                permits: Some(self.permits),
            }
            .boxed_unsync()
        })
    }
}

/// A response body that holds in-flight permits until it ends, fails or is dropped.
struct Held {
    inner: Body,
    permits: Option<Vec<Permit>>,
}

impl HttpBody for Held {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        // the last frame handed over (hyper may not ask again), the end, or a failure
        let done = match &r {
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            Poll::Ready(_) => true,
            Poll::Pending => false,
        };
        if done {
            self.permits = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The controls' decision about an allowed request (`org_id`: its tenants, `a|b`). With no
/// controls file this is one pointer check.
#[inline]
pub fn admit(
    controls: Option<&Controls>,
    scope: Option<Scope>,
    org_id: &str,
    identity: Option<&Identity>,
    check: Check,
) -> Result<Admission, Failure> {
    match controls {
        None => Ok(Admission::NONE),
        Some(c) => c
            .admit(
                Class::of(scope),
                org_id,
                identity.map(|i| i.token_name.as_str()),
                check,
            )
            .map_err(|r| Failure::Controlled(Box::new(r))),
    }
}

// ---------------------------------------------------------------------------------------------
// The live controls

/// The controls in force, reloaded from their file.
pub struct Controls {
    path: PathBuf,
    set: ArcSwap<ControlSet>,
    /// The file's stamp at the last load; held while a reload runs (one at a time).
    stamp: Mutex<FileStamp>,
    refused: [IntCounter; 7],
    metrics: Arc<Metrics>,
}

impl fmt::Debug for Controls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Controls")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Controls {
    /// The controls of `store.controls_file`, loaded; `None` when the key is not set.
    pub fn from_config(
        config: &crate::config::Config,
        metrics: &Arc<Metrics>,
    ) -> Result<Option<Arc<Controls>>, FileErrors> {
        match &config.store.controls_file {
            None => Ok(None),
            Some(p) => Controls::open(p, metrics.clone()).map(Some),
        }
    }

    /// Loads the file (an error: the gateway does not start), counting the load.
    pub fn open(path: &Path, metrics: Arc<Metrics>) -> Result<Arc<Controls>, FileErrors> {
        let st = stamp(path);
        let set = match load(path) {
            Ok(s) => s,
            Err(e) => {
                metrics
                    .controls_reloads
                    .with_label_values(&["failure"])
                    .inc();
                return Err(e);
            }
        };
        let refused =
            Reason::ALL.map(|r| metrics.controls_refused.with_label_values(&[r.as_str()]));
        let c = Controls {
            path: path.to_path_buf(),
            set: ArcSwap::from_pointee(ControlSet::default()),
            stamp: Mutex::new(st),
            refused,
            metrics,
        };
        tracing::info!(file = %path.display(), controls = %set, "per-tenant controls loaded");
        c.install(set);
        Ok(Arc::new(c))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The set in force.
    pub fn current(&self) -> arc_swap::Guard<Arc<ControlSet>> {
        self.set.load()
    }

    fn install(&self, mut set: ControlSet) {
        for note in set.escapes_from_any() {
            tracing::warn!(file = %self.path.display(), "per-tenant controls: {note}");
        }
        set.carry(&self.set.load());
        let m = &self.metrics;
        m.controls_blocks_active.set(set.blocks_active() as i64);
        m.controls_reloads.with_label_values(&["success"]).inc();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        m.controls_last_success
            .set(i64::try_from(now).unwrap_or(i64::MAX));
        self.set.store(Arc::new(set));
    }

    /// Reads the file again. On success the new set is in force (with the state of the entries
    /// it keeps); on failure the set in force stays, each error is logged and the failure
    /// counted.
    pub fn reload(&self) -> Result<(), FileErrors> {
        let mut st = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        *st = stamp(&self.path);
        self.reload_locked()
    }

    fn reload_locked(&self) -> Result<(), FileErrors> {
        match load(&self.path) {
            Ok(set) => {
                tracing::info!(file = %self.path.display(), controls = %set, "per-tenant controls reloaded");
                self.install(set);
                Ok(())
            }
            Err(errs) => {
                self.metrics
                    .controls_reloads
                    .with_label_values(&["failure"])
                    .inc();
                for e in &errs.0 {
                    tracing::error!(file = %e.file.display(), line = e.line, column = e.column, "controls reload failed: {}", e.message);
                }
                tracing::warn!(
                    errors = errs.0.len(),
                    "keeping the per-tenant controls in force"
                );
                Err(errs)
            }
        }
    }

    /// One turn of the poll loop: reloads if the file changed since the last load, or always
    /// when `forced` (SIGHUP). Blocking (reads the file).
    pub fn poll(&self, forced: bool) {
        let mut st = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        // stamp before reading: a write during the read changes it again, seen next turn
        let now = stamp(&self.path);
        if !forced && now == *st {
            return;
        }
        *st = now;
        let _ = self.reload_locked();
    }

    /// The decision about an allowed request of `class` for the tenants `org_id` (`a|b`) with
    /// the token named `token`.
    pub fn admit(
        &self,
        class: Class,
        org_id: &str,
        token: Option<&str>,
        check: Check,
    ) -> Result<Admission, Refusal> {
        let set = self.set.load();
        if set.is_empty() {
            return Ok(Admission::NONE);
        }
        let r = decide(&set, class, org_id, token, check);
        if let Err(refusal) = &r {
            self.refused[refusal.reason as usize].inc();
        }
        r
    }
}

/// The checks, in order: blocks, rates, in-flight limits. A refusal gives back what the checks
/// before it took.
fn decide(
    set: &ControlSet,
    class: Class,
    org_id: &str,
    token: Option<&str>,
    check: Check,
) -> Result<Admission, Refusal> {
    decide_at(set, class, org_id, token, check, now_ns())
}

fn decide_at(
    set: &ControlSet,
    class: Class,
    org_id: &str,
    token: Option<&str>,
    check: Check,
    now: u64,
) -> Result<Admission, Refusal> {
    // 1. blocks: the first blocked tenant answers
    for c in set.entries(org_id) {
        if let Some(b) = &c.entry.block
            && b.covers(class)
        {
            return Err(b.refusal(c.tenant, class));
        }
    }
    let token = token.and_then(|t| set.tokens.get(t));
    // 2. rate limits: the token's, then each tenant's
    let consume = check != Check::Explain;
    let token_rate = token.and_then(|e| e.rate.as_ref());
    if let Some(r) = token_rate
        && let Err(secs) = r.take(now, consume)
    {
        return Err(Refusal {
            reason: Reason::TokenRate,
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "this token is over its rate limit of {} requests per second (burst {}); retry after {secs} s",
                r.per_second, r.burst
            ),
            retry_after: Some(secs),
        });
    }
    let refund = |tenants_taken: usize| {
        if !consume {
            return;
        }
        if let Some(r) = token_rate {
            r.refund();
        }
        for c in set.entries(org_id).take(tenants_taken) {
            if let Some(r) = &c.entry.rate {
                r.refund();
            }
        }
    };
    for (i, c) in set.entries(org_id).enumerate() {
        if let Some(r) = &c.entry.rate
            && let Err(secs) = r.take(now, consume)
        {
            refund(i);
            return Err(Refusal {
                reason: Reason::TenantRate,
                status: StatusCode::TOO_MANY_REQUESTS,
                message: format!(
                    "tenant {:?} is over {} rate limit of {} requests per second (burst {}); retry after {secs} s",
                    c.tenant,
                    if c.shared {
                        "the shared (\"*\")"
                    } else {
                        "its"
                    },
                    r.per_second,
                    r.burst
                ),
                retry_after: Some(secs),
            });
        }
    }
    if check != Check::Proxy {
        return Ok(Admission::NONE);
    }
    // 3. in-flight limits: the token's, then each tenant's
    let mut permits = Vec::new();
    if let Some(l) = token.and_then(|e| e.inflight.as_ref()) {
        match l.acquire() {
            Some(p) => permits.push(p),
            None => {
                refund(usize::MAX);
                return Err(Refusal {
                    reason: Reason::TokenInflight,
                    status: StatusCode::TOO_MANY_REQUESTS,
                    message: format!(
                        "this token has as many requests in flight as it may (max_inflight: {}); retry when one has finished",
                        l.limit
                    ),
                    retry_after: Some(1),
                });
            }
        }
    }
    for c in set.entries(org_id) {
        if let Some(l) = &c.entry.inflight {
            match l.acquire() {
                Some(p) => permits.push(p),
                None => {
                    drop(permits);
                    refund(usize::MAX);
                    return Err(Refusal {
                        reason: Reason::TenantInflight,
                        status: StatusCode::TOO_MANY_REQUESTS,
                        message: format!(
                            "tenant {:?} has as many requests in flight as {} (max_inflight: {}); retry when one has finished",
                            c.tenant,
                            if c.shared {
                                "the tenants without an entry may share (\"*\")"
                            } else {
                                "it may"
                            },
                            l.limit
                        ),
                        retry_after: Some(1),
                    });
                }
            }
        }
    }
    Ok(Admission { permits })
}

// ---------------------------------------------------------------------------------------------
// The file

/// Where a value is in its file.
#[derive(Debug, Clone, Copy)]
enum Pos {
    Yaml(serde_saphyr::Location),
    /// A byte offset in a JSON file.
    Json(usize),
}

/// A value and where it is.
struct At<T> {
    value: T,
    pos: Pos,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for At<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if json::active() {
            let (value, at) = json::spanned(d)?;
            Ok(At {
                value,
                pos: Pos::Json(at),
            })
        } else {
            let s = serde_saphyr::Spanned::<T>::deserialize(d)?;
            Ok(At {
                value: s.value,
                pos: Pos::Yaml(s.referenced),
            })
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default, deserialize_with = "null_as_empty")]
    tenants: Vec<RawTenant>,
    #[serde(default, deserialize_with = "null_as_empty")]
    tokens: Vec<RawToken>,
}

fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    tenant: At<String>,
    block: Option<RawBlock>,
    rate_limit: Option<RawRate>,
    max_inflight: Option<At<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    token: At<String>,
    rate_limit: Option<RawRate>,
    max_inflight: Option<At<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBlock {
    #[serde(default)]
    reads: bool,
    #[serde(default)]
    writes: bool,
    #[serde(default)]
    rules: bool,
    status: Option<At<u16>>,
    message: Option<At<String>>,
    retry_after: Option<At<PromDuration>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    requests_per_second: At<f64>,
    burst: Option<At<u64>>,
}

/// The file being validated: its name and text locate errors.
struct Src<'a> {
    path: &'a Path,
    text: &'a str,
    lines: OnceCell<Vec<usize>>,
    errors: Vec<FileError>,
}

impl Src<'_> {
    fn error(&mut self, pos: Pos, msg: impl Into<String>) {
        let e = match pos {
            Pos::Yaml(loc) => FileError::at(self.path, &loc, msg),
            Pos::Json(at) => {
                let lines = self.lines.get_or_init(|| json::line_starts(self.text));
                let (line, column) = json::line_col(self.text, lines, at);
                FileError::new(self.path, line, column, msg)
            }
        };
        self.errors.push(e);
    }

    fn rate(&mut self, r: Option<RawRate>) -> Option<Rate> {
        let r = r?;
        let rps = r.requests_per_second;
        if !(rps.value.is_finite() && (MIN_RATE..=MAX_RATE).contains(&rps.value)) {
            self.error(
                rps.pos,
                format!(
                    "requests_per_second must be between {MIN_RATE} and {MAX_RATE} (to stop traffic, use a block)"
                ),
            );
            return None;
        }
        let burst = match r.burst {
            None => (rps.value.ceil() as u64).clamp(1, MAX_BURST),
            Some(b) if (1..=MAX_BURST).contains(&b.value) => b.value,
            Some(b) => {
                self.error(b.pos, format!("burst must be between 1 and {MAX_BURST}"));
                return None;
            }
        };
        Some(Rate::new(rps.value, burst))
    }

    fn inflight(&mut self, m: Option<At<u64>>) -> Option<Inflight> {
        let m = m?;
        if !(1..=MAX_INFLIGHT).contains(&m.value) {
            self.error(
                m.pos,
                format!(
                    "max_inflight must be between 1 and {MAX_INFLIGHT} (to stop traffic, use a block)"
                ),
            );
            return None;
        }
        Some(Inflight::new(
            usize::try_from(m.value).unwrap_or(usize::MAX),
        ))
    }

    fn block(&mut self, b: Option<RawBlock>) -> Option<Block> {
        let b = b?;
        let classes = (u8::from(b.reads) * Class::Reads.bit())
            | (u8::from(b.writes) * Class::Writes.bit())
            | (u8::from(b.rules) * Class::Rules.bit());
        let status = match b.status {
            None => StatusCode::SERVICE_UNAVAILABLE,
            Some(s) => match StatusCode::from_u16(s.value) {
                Ok(st) if (400..=599).contains(&s.value) => st,
                _ => {
                    self.error(s.pos, "status must be an HTTP status from 400 to 599");
                    return None;
                }
            },
        };
        let message = match b.message {
            None => None,
            Some(m) if m.value.trim().is_empty() => {
                self.error(m.pos, "message is empty (leave it out for the default one)");
                return None;
            }
            Some(m) if m.value.len() > MAX_MESSAGE_BYTES => {
                self.error(
                    m.pos,
                    format!("message is longer than {MAX_MESSAGE_BYTES} bytes"),
                );
                return None;
            }
            Some(m) => Some(m.value),
        };
        let retry_after = match b.retry_after {
            None => None,
            Some(d) if d.value.0.is_zero() => {
                self.error(
                    d.pos,
                    "retry_after must be at least 1s (leave it out for no Retry-After)",
                );
                return None;
            }
            // whole seconds, rounded up
            Some(d) => Some(
                d.value
                    .0
                    .as_secs()
                    .saturating_add(u64::from(d.value.0.subsec_nanos() > 0)),
            ),
        };
        Some(Block {
            classes,
            status,
            message,
            retry_after,
        })
    }
}

/// Reads and validates a controls file (the state of its limits is fresh).
pub fn load(path: &Path) -> Result<ControlSet, FileErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| FileError::whole(path, format!("cannot read controls file: {e}")))?;
    parse(path, &text)
}

/// Parses and validates a controls file's text: YAML, or JSON when the name ends in `.json`.
/// Every error is located; all of them are reported.
pub fn parse(path: &Path, text: &str) -> Result<ControlSet, FileErrors> {
    let raw: RawFile = if json::is_json(path) {
        if text.trim_start_matches('\u{feff}').trim().is_empty() {
            RawFile::default()
        } else {
            json::parse(path, text)?
        }
    } else {
        let meaningful = text.lines().any(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#') && t != "---"
        });
        if meaningful {
            serde_saphyr::from_str(text).map_err(|e| FileError::from_yaml(path, &e))?
        } else {
            RawFile::default()
        }
    };
    let mut src = Src {
        path,
        text,
        lines: OnceCell::new(),
        errors: Vec::new(),
    };
    let mut set = ControlSet::default();
    for t in raw.tenants {
        let name = t.tenant;
        let entry = Entry {
            block: src.block(t.block),
            rate: src.rate(t.rate_limit),
            inflight: src.inflight(t.max_inflight),
        };
        if name.value == ANY_TENANT {
            if set.any_tenant.is_some() {
                src.error(name.pos, "tenant \"*\" has two entries");
            } else {
                set.any_tenant = Some(entry);
            }
        } else if !valid_name(&name.value, 3, 64) {
            src.error(
                name.pos,
                format!(
                    "invalid tenant name {:?}: use 3-64 chars of [a-z0-9_-], or \"*\" for every tenant without an entry",
                    name.value
                ),
            );
        } else {
            match set.tenants.entry(name.value) {
                std::collections::hash_map::Entry::Occupied(o) => {
                    src.error(name.pos, format!("tenant {:?} has two entries", o.key()))
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(entry);
                }
            }
        }
    }
    for t in raw.tokens {
        let name = t.token;
        let entry = Entry {
            block: None,
            rate: src.rate(t.rate_limit),
            inflight: src.inflight(t.max_inflight),
        };
        if !valid_name(&name.value, 1, 255) {
            src.error(
                name.pos,
                format!(
                    "invalid token name {:?}: a token's name (as in the policy files), 1-255 chars of [a-z0-9_-]",
                    name.value
                ),
            );
        } else {
            match set.tokens.entry(name.value) {
                std::collections::hash_map::Entry::Occupied(o) => {
                    src.error(name.pos, format!("token {:?} has two entries", o.key()))
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(entry);
                }
            }
        }
    }
    if src.errors.is_empty() {
        Ok(set)
    } else {
        Err(FileErrors(src.errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn yaml(text: &str) -> Result<ControlSet, FileErrors> {
        parse(Path::new("controls.yaml"), text)
    }

    fn errs(r: Result<ControlSet, FileErrors>) -> Vec<String> {
        match r {
            Ok(_) => panic!("expected errors"),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    const EXAMPLE: &str = r#"
tenants:
  - tenant: team-a              # a tenant name
    block:
      reads: true
      writes: false
      rules: false
      status: 503
      message: "team-a reads are paused: INC-1234"
      retry_after: 5m
    rate_limit: { requests_per_second: 50, burst: 100 }
    max_inflight: 20
  - tenant: "*"
    rate_limit: { requests_per_second: 5 }
tokens:
  - token: team-a-ci
    rate_limit: { requests_per_second: 10, burst: 20 }
    max_inflight: 4
"#;

    #[test]
    fn parses_the_documented_shape() {
        let s = yaml(EXAMPLE).unwrap();
        let a = &s.tenants["team-a"];
        let b = a.block.as_ref().unwrap();
        assert_eq!(b.classes, Class::Reads.bit());
        assert_eq!(b.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            b.message.as_deref(),
            Some("team-a reads are paused: INC-1234")
        );
        assert_eq!(b.retry_after, Some(300));
        let r = a.rate.as_ref().unwrap();
        assert_eq!((r.burst, r.interval, r.tolerance), (100, SEC / 50, 2 * SEC));
        assert_eq!(a.inflight.as_ref().unwrap().limit, 20);
        // burst defaults to the rate, rounded up
        assert_eq!(
            s.any_tenant.as_ref().unwrap().rate.as_ref().unwrap().burst,
            5
        );
        let t = &s.tokens["team-a-ci"];
        assert_eq!(t.inflight.as_ref().unwrap().limit, 4);
        assert_eq!(s.blocks_active(), 1);
        assert_eq!(
            s.to_string(),
            "2 tenant entries, 1 token entry; blocks in force: team-a (reads); 3 rate limits, 2 in-flight limits"
        );
        // defaults of a block
        let s = yaml("tenants:\n  - tenant: team-b\n    block: { writes: true, rules: true }\n")
            .unwrap();
        let b = s.tenants["team-b"].block.as_ref().unwrap();
        assert_eq!(
            (b.status.as_u16(), b.message.as_deref(), b.retry_after),
            (503, None, None)
        );
        assert_eq!(
            s.blocked(),
            vec![("team-b".to_string(), vec![Class::Writes, Class::Rules])]
        );
        // sub-second retry_after rounds up to whole seconds
        let s =
            yaml("tenants:\n  - tenant: team-b\n    block: { reads: true, retry_after: 1500ms }\n")
                .unwrap();
        assert_eq!(
            s.tenants["team-b"].block.as_ref().unwrap().retry_after,
            Some(2)
        );
    }

    #[test]
    fn empty_files_are_no_controls() {
        for t in ["", "# nothing\n", "---\n", "tenants:\ntokens:\n"] {
            assert!(yaml(t).unwrap().is_empty(), "{t:?}");
        }
        for t in ["", "  ", "{}", r#"{"tenants": null}"#] {
            assert!(parse(Path::new("c.json"), t).unwrap().is_empty(), "{t:?}");
        }
        let s = yaml("tenants:\n  - tenant: team-a\n    block: { reads: false }\n").unwrap();
        assert_eq!(s.blocks_active(), 0, "a block with no class blocks nothing");
    }

    #[test]
    fn errors_are_located_and_all_reported() {
        let e = errs(yaml(
            "tenants:\n  - tenant: team-a\n    block: { reads: true, status: 302 }\n    max_inflight: 0\n  - tenant: team-a\n  - tenant: X\n    rate_limit: { requests_per_second: 0 }\ntokens:\n  - token: ci\n    rate_limit: { requests_per_second: 1, burst: 0 }\n  - token: ci\n",
        ));
        assert_eq!(
            e,
            vec![
                "controls.yaml:3:35: status must be an HTTP status from 400 to 599",
                "controls.yaml:4:19: max_inflight must be between 1 and 1000000 (to stop traffic, use a block)",
                "controls.yaml:5:13: tenant \"team-a\" has two entries",
                "controls.yaml:7:40: requests_per_second must be between 0.001 and 1000000000 (to stop traffic, use a block)",
                "controls.yaml:6:13: invalid tenant name \"X\": use 3-64 chars of [a-z0-9_-], or \"*\" for every tenant without an entry",
                "controls.yaml:10:50: burst must be between 1 and 1000000",
                "controls.yaml:11:12: token \"ci\" has two entries",
            ],
        );
        // unknown keys, at any level
        let e = errs(yaml(
            "tenants:\n  - tenant: team-a\n    block:\n      read: true\n",
        ));
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("controls.yaml:4:7: unknown field `read`"),
            "{e:?}"
        );
        let e = errs(yaml("tenant:\n  - tenant: team-a\n"));
        assert!(
            e[0].starts_with("controls.yaml:1:1: unknown field `tenant`"),
            "{e:?}"
        );
        let e = errs(yaml(
            "tenants:\n  - tenant: team-a\n    block: { reads: true, retry_after: 0 }\n    rate_limit: { requests_per_second: 1, brust: 2 }\n",
        ));
        assert!(e[0].starts_with("controls.yaml:4:"), "{e:?}");
        assert!(e[0].contains("unknown field `brust`"), "{e:?}");
        let e = errs(yaml(
            "tenants:\n  - tenant: team-a\n    block: { reads: true, retry_after: 0 }\n",
        ));
        assert_eq!(
            e,
            [
                "controls.yaml:3:40: retry_after must be at least 1s (leave it out for no Retry-After)"
            ]
        );
        let e = errs(yaml(
            "tenants:\n  - tenant: team-a\n    block: { reads: true, retry_after: soon }\n",
        ));
        assert!(e[0].starts_with("controls.yaml:3:"), "{e:?}");
        assert!(e[0].contains("invalid duration"), "{e:?}");
        let e = errs(yaml("tenants:\n  - tenant: \"*\"\n  - tenant: \"*\"\n"));
        assert_eq!(e, ["controls.yaml:3:13: tenant \"*\" has two entries"]);
        let e = errs(yaml(
            "tenants:\n  - tenant: team-a\n    block: { reads: true, message: \"  \" }\n",
        ));
        assert!(e[0].contains("message is empty"), "{e:?}");
        // a missing required key
        let e = errs(yaml("tenants:\n  - block: { reads: true }\n"));
        assert!(e[0].starts_with("controls.yaml:2:"), "{e:?}");
        assert!(e[0].contains("tenant"), "{e:?}");
    }

    #[test]
    fn json_files_are_read_and_located_alike() {
        let p = Path::new("controls.json");
        let s = parse(
            p,
            r#"{"tenants": [{"tenant": "team-a", "block": {"writes": true, "status": 429, "retry_after": "30s"}}],
 "tokens": [{"token": "ci", "max_inflight": 2}]}"#,
        )
        .unwrap();
        let b = s.tenants["team-a"].block.as_ref().unwrap();
        assert_eq!(
            (b.classes, b.status.as_u16(), b.retry_after),
            (Class::Writes.bit(), 429, Some(30))
        );
        let e = errs(parse(
            p,
            "{\"tenants\": [\n  {\"tenant\": \"team-a\", \"block\": {\"reads\": true, \"status\": 600}},\n  {\"tenant\": \"team-a\"}\n]}",
        ));
        assert_eq!(
            e,
            [
                "controls.json:2:59: status must be an HTTP status from 400 to 599",
                "controls.json:3:14: tenant \"team-a\" has two entries",
            ]
        );
        let e = errs(parse(
            p,
            "{\"tenants\": [{\"tenant\": \"team-a\", \"nope\": 1}]}",
        ));
        assert!(e[0].starts_with("controls.json:1:"), "{e:?}");
        assert!(e[0].contains("unknown field `nope`"), "{e:?}");
    }

    #[test]
    fn classes_by_scope() {
        use Scope::*;
        for (s, c) in [
            (Some(MetricsRead), Class::Reads),
            (Some(LogsRead), Class::Reads),
            (Some(TracesRead), Class::Reads),
            (Some(ProfilesRead), Class::Reads),
            (None, Class::Reads),
            (Some(MetricsWrite), Class::Writes),
            (Some(MetricsDelete), Class::Writes),
            (Some(MetricsImport), Class::Writes),
            (Some(LogsWrite), Class::Writes),
            (Some(LogsDelete), Class::Writes),
            (Some(TracesWrite), Class::Writes),
            (Some(TracesDelete), Class::Writes),
            (Some(ProfilesWrite), Class::Writes),
            (Some(RulesRead), Class::Rules),
            (Some(RulesWrite), Class::Rules),
            (Some(AlertsRead), Class::Rules),
            (Some(AlertsWrite), Class::Rules),
        ] {
            assert_eq!(Class::of(s), c, "{s:?}");
        }
    }

    #[test]
    fn gcra_bucket_allows_the_burst_then_the_rate_and_computes_retry_after() {
        let r = Rate::new(2.0, 3); // one every 500 ms, 3 at once
        let t0 = 10 * SEC;
        for _ in 0..3 {
            assert_eq!(r.take(t0, true), Ok(()));
        }
        // empty: the next one is 500 ms away, which is 1 whole second
        assert_eq!(r.take(t0, true), Err(1));
        assert_eq!(r.take(t0 + SEC / 2 - 1, true), Err(1));
        assert_eq!(r.take(t0 + SEC / 2, true), Ok(()));
        assert_eq!(r.take(t0 + SEC / 2, true), Err(1));
        // a peek takes nothing
        assert_eq!(r.take(t0 + SEC, false), Ok(()));
        assert_eq!(r.take(t0 + SEC, true), Ok(()));
        assert_eq!(r.take(t0 + SEC, true), Err(1));
        // a refund gives one back
        r.refund();
        assert_eq!(r.take(t0 + SEC, true), Ok(()));
        // idle long enough: full again, never more than the burst
        let later = t0 + 3600 * SEC;
        for _ in 0..3 {
            assert_eq!(r.take(later, true), Ok(()));
        }
        assert!(r.take(later, true).is_err());
        // a slow rate: Retry-After counts whole seconds until one is there
        let slow = Rate::new(0.1, 1); // one every 10 s
        assert_eq!(slow.take(t0, true), Ok(()));
        assert_eq!(slow.take(t0, true), Err(10));
        assert_eq!(slow.take(t0 + 2 * SEC + 1, true), Err(8));
        assert_eq!(slow.take(t0 + 10 * SEC, true), Ok(()));
        assert_eq!(retry_secs(0), 1);
        assert_eq!(retry_secs(1), 1);
        assert_eq!(retry_secs(SEC), 1);
        assert_eq!(retry_secs(SEC + 1), 2);
    }

    #[test]
    fn inflight_permits_count_until_dropped() {
        let l = Inflight::new(2);
        let a = l.acquire().unwrap();
        let b = l.acquire().unwrap();
        assert!(l.acquire().is_none());
        drop(a);
        let c = l.acquire().unwrap();
        assert_eq!(l.count.load(Ordering::Acquire), 2);
        drop((b, c));
        assert_eq!(l.count.load(Ordering::Acquire), 0);
    }

    fn set(text: &str) -> ControlSet {
        yaml(text).unwrap()
    }

    #[test]
    fn blocks_by_class_first_blocked_tenant_answers() {
        let s = set(
            "tenants:\n  - tenant: team-a\n    block: { reads: true, status: 503, message: paused, retry_after: 1m }\n  - tenant: team-b\n    block: { reads: true, writes: true, status: 403 }\n",
        );
        let d = |class, org| decide_at(&s, class, org, None, Check::Proxy, SEC);
        let r = d(Class::Reads, "team-a").unwrap_err();
        assert_eq!(
            (
                r.reason,
                r.status.as_u16(),
                r.message.as_str(),
                r.retry_after
            ),
            (Reason::BlockedReads, 503, "paused", Some(60))
        );
        assert!(d(Class::Writes, "team-a").is_ok());
        assert!(d(Class::Rules, "team-a").is_ok());
        assert!(d(Class::Reads, "team-c").is_ok());
        // federated: blocked if any tenant is; the first blocked one (in order) answers
        let r = d(Class::Writes, "team-a|team-b").unwrap_err();
        assert_eq!(
            (r.reason, r.status.as_u16(), r.retry_after),
            (Reason::BlockedWrites, 403, None)
        );
        assert_eq!(r.message, "writes of tenant \"team-b\" are blocked for now");
        let r = d(Class::Reads, "team-a|team-b").unwrap_err();
        assert_eq!(r.message, "paused");
        assert!(d(Class::Reads, "team-c|team-d").is_ok());
        // "*" blocks tenants without an entry only
        let s =
            set("tenants:\n  - tenant: \"*\"\n    block: { rules: true }\n  - tenant: team-a\n");
        let d = |org| decide_at(&s, Class::Rules, org, None, Check::Proxy, SEC);
        assert!(d("team-a").is_ok());
        let r = d("team-x").unwrap_err();
        assert_eq!(r.reason, Reason::BlockedRules);
        assert_eq!(
            r.message,
            "rule and alert requests of tenant \"team-x\" are blocked for now"
        );
        assert!(d("team-a|team-x").is_err());
        let resp = r.into_response();
        assert_eq!(resp.status(), 503);
        assert!(resp.headers().get("retry-after").is_none());
    }

    #[test]
    fn rate_limits_per_tenant_and_token_refund_on_refusal() {
        let s = set(
            "tenants:\n  - tenant: team-a\n    rate_limit: { requests_per_second: 1, burst: 2 }\n  - tenant: team-b\n    rate_limit: { requests_per_second: 1, burst: 1 }\ntokens:\n  - token: ci\n    rate_limit: { requests_per_second: 1, burst: 3 }\n",
        );
        let now = 100 * SEC;
        let d = |org, tok, check| decide_at(&s, Class::Reads, org, tok, check, now);
        // team-b's one is taken; then a|b: a takes one, b refuses, a's is given back
        assert!(d("team-b", None, Check::Proxy).is_ok());
        let r = d("team-a|team-b", Some("ci"), Check::Proxy).unwrap_err();
        assert_eq!((r.reason, r.retry_after), (Reason::TenantRate, Some(1)));
        assert!(
            r.message
                .contains("tenant \"team-b\" is over its rate limit"),
            "{}",
            r.message
        );
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        // team-a still has its 2, the token its 3
        assert!(d("team-a", Some("ci"), Check::Proxy).is_ok());
        assert!(d("team-a", Some("ci"), Check::Proxy).is_ok());
        let r = d("team-a", Some("ci"), Check::Proxy).unwrap_err();
        assert_eq!(r.reason, Reason::TenantRate);
        // the token: one left, then refused before any tenant is charged
        assert!(d("team-c", Some("ci"), Check::Proxy).is_ok());
        let r = d("team-c", Some("ci"), Check::Proxy).unwrap_err();
        assert_eq!(r.reason, Reason::TokenRate);
        assert!(
            r.message.starts_with("this token is over its rate limit"),
            "{}",
            r.message
        );
        // forward-auth is rate limited too; an explain question only looks
        assert!(d("team-c", None, Check::Explain).is_ok());
        assert_eq!(
            d("team-a", None, Check::Explain).unwrap_err().reason,
            Reason::TenantRate
        );
        let later = |org| decide_at(&s, Class::Reads, org, None, Check::Explain, now + SEC);
        assert!(later("team-a").is_ok());
        assert!(later("team-a").is_ok(), "explain questions take nothing");
    }

    #[test]
    fn any_tenant_is_one_shared_budget_charged_once_per_request() {
        let s = set(
            "tenants:\n  - tenant: \"*\"\n    rate_limit: { requests_per_second: 1, burst: 2 }\n    max_inflight: 1\n",
        );
        let now = 5 * SEC;
        let a = decide_at(&s, Class::Reads, "team-x|team-y", None, Check::Proxy, now).unwrap();
        assert_eq!(a.permits(), 1, "one permit for the shared entry");
        let r = decide_at(&s, Class::Reads, "team-z", None, Check::Proxy, now).unwrap_err();
        assert_eq!(r.reason, Reason::TenantInflight);
        assert!(r.message.contains("may share (\"*\")"), "{}", r.message);
        drop(a);
        assert!(decide_at(&s, Class::Reads, "team-z", None, Check::Proxy, now).is_ok());
        let r = decide_at(&s, Class::Reads, "team-z", None, Check::Proxy, now).unwrap_err();
        assert_eq!(r.reason, Reason::TenantRate);
    }

    #[test]
    fn inflight_limits_hold_until_the_admission_is_dropped_and_refund_rates() {
        let s = set(
            "tenants:\n  - tenant: team-a\n    max_inflight: 2\n    rate_limit: { requests_per_second: 1, burst: 10 }\ntokens:\n  - token: ci\n    max_inflight: 1\n",
        );
        let now = 7 * SEC;
        let d = |tok, check| decide_at(&s, Class::Writes, "team-a", tok, check, now);
        let a = d(Some("ci"), Check::Proxy).unwrap();
        assert_eq!(a.permits(), 2);
        let r = d(Some("ci"), Check::Proxy).unwrap_err();
        assert_eq!((r.reason, r.retry_after), (Reason::TokenInflight, Some(1)));
        let b = d(None, Check::Proxy).unwrap();
        let r = d(None, Check::Proxy).unwrap_err();
        assert_eq!((r.reason, r.retry_after), (Reason::TenantInflight, Some(1)));
        // forward-auth: no in-flight limit there
        assert_eq!(d(None, Check::ForwardAuth).unwrap().permits(), 0);
        drop(a);
        let c = d(Some("ci"), Check::Proxy).unwrap();
        drop((b, c));
        let e = &s.tenants["team-a"];
        assert_eq!(
            e.inflight.as_ref().unwrap().count.load(Ordering::Acquire),
            0
        );
        // 10 in the bucket: 3 admitted + 1 forward-auth took 4; the 3 refusals gave theirs back
        let rate = e.rate.as_ref().unwrap();
        let mut left = 0;
        while rate.take(now, true).is_ok() {
            left += 1;
        }
        assert_eq!(left, 6);
    }

    #[test]
    fn held_response_releases_permits_when_its_body_ends_or_is_dropped() {
        use http_body_util::BodyExt;
        let s = set("tenants:\n  - tenant: team-a\n    max_inflight: 1\n");
        let count = s.tenants["team-a"].inflight.as_ref().unwrap().count.clone();
        let a = decide_at(&s, Class::Reads, "team-a", None, Check::Proxy, SEC).unwrap();
        let resp = a.hold(Response::new(crate::wire::full("body")));
        assert_eq!(count.load(Ordering::Acquire), 1, "held past the headers");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let body = rt.block_on(async {
            let mut b = resp.into_body();
            let mut out = Vec::new();
            while let Some(f) = b.frame().await {
                if let Ok(d) = f.unwrap().into_data() {
                    out.extend_from_slice(&d);
                }
            }
            assert_eq!(count.load(Ordering::Acquire), 0, "released at the end");
            out
        });
        assert_eq!(body, b"body");
        let a = decide_at(&s, Class::Reads, "team-a", None, Check::Proxy, SEC).unwrap();
        let resp = a.hold(Response::new(crate::wire::full("body")));
        assert_eq!(count.load(Ordering::Acquire), 1);
        drop(resp);
        assert_eq!(count.load(Ordering::Acquire), 0, "released when dropped");
        // no permit: the response is not wrapped
        let resp = Admission::NONE.hold(Response::new(crate::wire::full("x")));
        assert_eq!(resp.body().size_hint().exact(), Some(1));
    }

    #[test]
    fn refusals_answer_json_with_retry_after() {
        let r = Refusal {
            reason: Reason::TenantRate,
            status: StatusCode::TOO_MANY_REQUESTS,
            message: "slow down".into(),
            retry_after: Some(3),
        };
        assert_eq!(r.error_type(), "too_many_requests");
        let resp = r.into_response();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "3");
        assert_eq!(resp.headers()["content-type"], "application/json");
        for (s, t) in [
            (503, "unavailable"),
            (403, "forbidden"),
            (451, "forbidden"),
            (400, "bad_data"),
            (504, "timeout"),
        ] {
            let r = Refusal {
                reason: Reason::BlockedReads,
                status: StatusCode::from_u16(s).unwrap(),
                message: String::new(),
                retry_after: None,
            };
            assert_eq!(r.error_type(), t, "{s}");
        }
    }

    #[test]
    fn reload_keeps_the_state_of_entries_still_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("controls.yaml");
        let v1 = "tenants:\n  - tenant: team-a\n    rate_limit: { requests_per_second: 1, burst: 2 }\n    max_inflight: 2\n  - tenant: team-b\n    max_inflight: 1\ntokens:\n  - token: ci\n    max_inflight: 1\n";
        std::fs::write(&path, v1).unwrap();
        let m = Arc::new(Metrics::new());
        let c = Controls::open(&path, m.clone()).unwrap();
        assert_eq!(m.controls_reloads.with_label_values(&["success"]).get(), 1);
        assert!(m.controls_last_success.get() > 0);
        let a = |org: &str, tok| c.admit(Class::Reads, org, tok, Check::Proxy);
        let held_a = a("team-a", None).unwrap();
        let held_b = a("team-b", Some("ci")).unwrap();
        assert!(a("team-a", None).is_ok(), "second of the burst");
        assert_eq!(a("team-a", None).unwrap_err().reason, Reason::TenantRate);
        assert_eq!(
            m.controls_refused.with_label_values(&["tenant_rate"]).get(),
            1
        );
        // same entries, a new in-flight limit for team-a, a block on team-b, team-c added
        std::fs::write(&path, "tenants:\n  - tenant: team-a\n    rate_limit: { requests_per_second: 1, burst: 2 }\n    max_inflight: 1\n  - tenant: team-b\n    max_inflight: 1\n    block: { writes: true }\n  - tenant: team-c\n    max_inflight: 1\ntokens:\n  - token: ci\n    max_inflight: 1\n").unwrap();
        c.reload().unwrap();
        assert_eq!(m.controls_blocks_active.get(), 1);
        // the bucket kept its state: still empty
        assert_eq!(a("team-a", None).unwrap_err().reason, Reason::TenantRate);
        // the in-flight counts too: team-a has 1 (now its limit), team-b 1, the token 1
        let cur = c.current();
        assert_eq!(
            cur.tenants["team-a"]
                .inflight
                .as_ref()
                .unwrap()
                .count
                .load(Ordering::Acquire),
            1
        );
        assert_eq!(
            a("team-b", None).unwrap_err().reason,
            Reason::TenantInflight
        );
        assert_eq!(
            a("team-c", Some("ci")).unwrap_err().reason,
            Reason::TokenInflight
        );
        drop(held_b);
        assert!(
            a("team-c", Some("ci")).is_ok(),
            "a permit from before the reload is given back to the same count"
        );
        drop(held_a);
        for (name, e) in &cur.tenants {
            assert_eq!(
                e.inflight.as_ref().unwrap().count.load(Ordering::Acquire),
                0,
                "{name}"
            );
        }
        // a broken file keeps the set in force and counts a failure
        std::fs::write(
            &path,
            "tenants:\n  - tenant: team-a\n    max_inflight: -1\n",
        )
        .unwrap();
        assert!(c.reload().is_err());
        assert_eq!(m.controls_reloads.with_label_values(&["failure"]).get(), 1);
        assert_eq!(m.controls_blocks_active.get(), 1);
        assert!(c.current().tenants.contains_key("team-c"));
        // poll: unchanged file, nothing; SIGHUP (forced), a reload attempt
        c.poll(false);
        assert_eq!(m.controls_reloads.with_label_values(&["failure"]).get(), 1);
        c.poll(true);
        assert_eq!(m.controls_reloads.with_label_values(&["failure"]).get(), 2);
        // removing an entry and adding it back: a fresh count, never negative
        std::fs::write(&path, "tenants:\n").unwrap();
        c.poll(false);
        assert!(c.current().is_empty());
        assert_eq!(m.controls_blocks_active.get(), 0);
        assert!(a("team-a", None).is_ok());
    }

    #[test]
    fn a_changed_rate_keeps_the_bucket_fill_in_requests() {
        let old = Rate::new(1.0, 4);
        let now = 50 * SEC;
        for _ in 0..4 {
            old.take(now, true).unwrap();
        }
        // all 4 used; the new rate is twice as fast with room for 8: 4 are left
        let mut next = Rate::new(2.0, 8);
        old.carried_into(&mut next, now);
        let mut n = 0;
        while next.take(now, true).is_ok() {
            n += 1;
        }
        assert_eq!(n, 4);
        // unchanged parameters share the very bucket
        let mut same = Rate::new(1.0, 4);
        old.carried_into(&mut same, now);
        assert!(Arc::ptr_eq(&same.tat, &old.tat));
    }

    #[test]
    fn an_unreadable_file_is_an_error_at_1_1() {
        let e = errs(load(Path::new("/nonexistent/controls.yaml")));
        assert!(
            e[0].starts_with("/nonexistent/controls.yaml:1:1: cannot read controls file"),
            "{e:?}"
        );
    }
}

#[cfg(test)]
mod escapes {
    use super::*;

    #[test]
    fn an_entry_that_leaves_out_a_limit_of_star_is_named() {
        let s = parse(
            Path::new("c.yaml"),
            "tenants:\n  - tenant: \"*\"\n    rate_limit: { requests_per_second: 5 }\n    max_inflight: 10\n  - tenant: team-a\n    block: { writes: true }\n  - tenant: team-b\n    rate_limit: { requests_per_second: 50 }\n  - tenant: team-c\n    rate_limit: { requests_per_second: 50 }\n    max_inflight: 3\n",
        )
        .unwrap();
        let notes = s.escapes_from_any();
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[0].contains("\"team-a\"") && notes[0].contains("rate_limit and max_inflight"),
            "{notes:?}"
        );
        assert!(
            notes[1].contains("\"team-b\"") && notes[1].contains("without max_inflight"),
            "{notes:?}"
        );
        let none = parse(
            Path::new("c.yaml"),
            "tenants:\n  - tenant: team-a\n    block: { writes: true }\n",
        )
        .unwrap();
        assert!(
            none.escapes_from_any().is_empty(),
            "no \"*\" entry: nothing escapes"
        );
    }
}
