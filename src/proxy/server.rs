//! Listeners: the shared one and each backend's dedicated one. HTTP/1.1 and HTTP/2 (h2c, or
//! ALPN over TLS) on one port, upgrades enabled, graceful shutdown that lets in-flight
//! requests finish.

use super::{Gateway, handle};
use crate::config::{BackendSlot, Config};
use crate::store::{Store, watch};
use crate::telemetry::Metrics;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch as tokio_watch;

/// A running gateway. Dropping it does not stop it; call [`Running::shutdown`].
pub struct Running {
    /// Bound addresses: `None` is the shared listener, `Some(slot)` a dedicated one.
    pub listeners: Vec<(Option<BackendSlot>, SocketAddr)>,
    pub gateway: Arc<Gateway>,
    shutdown: tokio_watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub fn shared_addr(&self) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(s, _)| s.is_none())
            .map(|(_, a)| *a)
            .expect("the shared listener always exists")
    }

    pub fn addr_for(&self, slot: BackendSlot) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(s, _)| *s == Some(slot))
            .map(|(_, a)| *a)
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.gateway.store
    }

    /// Stops accepting, lets in-flight requests finish (up to `server.shutdown_grace`), returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Policy(crate::diag::FileErrors),
    #[error("cannot listen on {addr}: {err}")]
    Bind {
        addr: SocketAddr,
        err: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
}

/// Loads the policy files, binds every listener and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let paths = config.store.policy_files.clone();
    let cluster = config.cluster.clone();
    let (loaded, initial) = {
        let (p, c) = (paths.clone(), cluster.clone());
        tokio::task::spawn_blocking(move || {
            (watch::stamps(&p), crate::store::load::load_files(&p, &c))
        })
        .await
        .map_err(|e| StartError::Setup(format!("policy load task failed: {e}")))?
    };
    let initial = initial.map_err(|e| {
        metrics.store_reloads.with_label_values(&["failure"]).inc();
        StartError::Policy(e)
    })?;
    metrics.store_reloads.with_label_values(&["success"]).inc();
    tracing::info!(counts = %initial.counts(), "policy set loaded");
    let store = Arc::new(Store::new(
        initial,
        config.cache.capacity,
        config.cache.ttl,
        metrics.clone(),
    ));
    let admin = crate::admin::Admin::open(&config.store.data_dir, &config.cluster)
        .map_err(|e| StartError::Setup(format!("cannot read the admin API's state: {e}")))?;
    let overlay = admin.initial_overlay();
    if !overlay.is_empty() {
        store.set_overlay(overlay);
    }
    let mut gateway =
        Gateway::new(config.clone(), store.clone(), metrics.clone()).map_err(StartError::Setup)?;
    gateway.admin = Some(admin);
    let gateway = Arc::new(gateway);

    let tls = match &config.server.tls {
        Some(t) => Some(tokio_rustls::TlsAcceptor::from(
            super::tls::server_config(t).map_err(StartError::Setup)?,
        )),
        None => None,
    };

    let mut binds: Vec<(Option<BackendSlot>, SocketAddr)> = vec![(None, config.server.listen)];
    for b in config.backends.iter() {
        if let Some(l) = b.listen {
            binds.push((Some(b.slot), l));
        }
    }
    let (tx, rx) = tokio_watch::channel(false);
    let mut listeners = Vec::new();
    let mut tasks = Vec::new();
    let mut sockets = Vec::new();
    for (slot, addr) in binds {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|err| StartError::Bind { addr, err })?;
        let local = l
            .local_addr()
            .map_err(|err| StartError::Bind { addr, err })?;
        listeners.push((slot, local));
        sockets.push((slot, l));
    }
    for (slot, l) in sockets {
        let local = l.local_addr().ok();
        tracing::info!(listener = slot.map(|s| s.as_str()).unwrap_or("shared"), addr = ?local, tls = tls.is_some(), "listening");
        tasks.push(tokio::spawn(accept_loop(
            l,
            slot,
            gateway.clone(),
            tls.clone(),
            rx.clone(),
            config.server.shutdown_grace,
        )));
    }
    tasks.push(tokio::spawn(watch::run(
        store.clone(),
        paths,
        cluster,
        metrics.clone(),
        config.store.poll_interval,
        loaded,
        rx.clone(),
    )));
    gateway.ready.store(true, Ordering::Release);
    Ok(Running {
        listeners,
        gateway,
        shutdown: tx,
        tasks,
    })
}

async fn accept_loop(
    listener: TcpListener,
    only: Option<BackendSlot>,
    gw: Arc<Gateway>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: tokio_watch::Receiver<bool>,
    grace: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let gw = gw.clone();
        let conn = Arc::new(super::Conn::new(peer));
        let svc = service_fn(move |req| {
            let gw = gw.clone();
            let conn = conn.clone();
            async move { Ok::<_, std::convert::Infallible>(handle(gw, only, conn, req).await) }
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        match tls.clone() {
            None => {
                tokio::spawn(async move {
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                });
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    let tls_stream = match tokio::time::timeout(
                        Duration::from_secs(10),
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, "TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(tls_stream), svc)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                });
            }
        }
    }
    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "shutting down: letting in-flight requests finish"
    );
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "shutdown grace period over; closing remaining connections"
        );
    }
}
