//! Listeners: the shared one and each backend's dedicated one. HTTP/1.1 and HTTP/2 (h2c, or
//! ALPN over TLS) on one port, upgrades enabled, graceful shutdown that lets in-flight
//! requests finish.

use super::proxy_protocol::{self, PrefixedStream};
use super::{Gateway, guard};
use crate::admin::AdminService;
use crate::config::{BackendSlot, Config};
use crate::store::{Store, watch};
use crate::telemetry::Metrics;
use crate::wire::{Body, Conn, error_response, full};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch as tokio_watch;

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The proxy: `None` the shared listener (admin API included), `Some(slot)` a backend's
    /// dedicated one.
    Proxy(Option<BackendSlot>),
    /// The forward-auth endpoint (`forward_auth.listen`).
    ForwardAuth,
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Role::Proxy(None) => "shared",
            Role::Proxy(Some(s)) => s.as_str(),
            Role::ForwardAuth => "forward_auth",
        }
    }

    /// Whether this listener's connections start with a PROXY protocol header.
    fn proxy_protocol(self, config: &Config) -> bool {
        match self {
            Role::Proxy(None) => config.server.proxy_protocol,
            Role::Proxy(Some(s)) => config.backends.get(s).is_some_and(|b| b.proxy_protocol),
            Role::ForwardAuth => config
                .forward_auth
                .as_ref()
                .is_some_and(|f| f.proxy_protocol),
        }
    }
}

/// A running gateway. Dropping it does not stop it; call [`Running::shutdown`].
pub struct Running {
    /// Bound addresses: `None` is the shared listener, `Some(slot)` a dedicated one.
    pub listeners: Vec<(Option<BackendSlot>, SocketAddr)>,
    /// The forward-auth listener's bound address, when `forward_auth` is configured.
    pub forward_auth: Option<SocketAddr>,
    pub gateway: Arc<Gateway>,
    pub services: Arc<Services>,
    shutdown: tokio_watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// DNS refresh and health check loops: stopped at shutdown.
    background: Vec<tokio::task::JoinHandle<()>>,
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

    /// Turns `/ready` to 503 and keeps serving for `server.shutdown_delay`, then stops
    /// accepting, lets in-flight requests finish (up to `server.shutdown_grace`), returns.
    pub async fn shutdown(self) {
        let delay = self.gateway.config.server.shutdown_delay;
        self.services.ready.store(false, Ordering::Release);
        if !delay.is_zero() {
            tracing::info!(
                ?delay,
                "shutting down: /ready answers 503, still serving for server.shutdown_delay"
            );
            tokio::time::sleep(delay).await;
        }
        let _ = self.shutdown.send(true);
        for t in &self.background {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        // the spans still queued go out now; the exporters need the runtime, so this waits
        // off its threads
        if let Some(t) = self.gateway.tracing.clone() {
            let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
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

/// The three services a listener dispatches to; none of them knows the others.
pub struct Services {
    /// Own endpoints: `/ready` says 200 once the store is loaded and upstreams resolved.
    pub ready: std::sync::atomic::AtomicBool,
    pub metrics: Arc<Metrics>,
    /// The admin API (shared listener only).
    pub admin: AdminService,
    /// The data plane.
    pub gateway: Arc<Gateway>,
}

/// Every request on every listener: framing → own endpoints → admin API (shared listener) →
/// data plane, or forward-auth on its listener.
pub async fn dispatch(
    svc: Arc<Services>,
    role: Role,
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> Response<Body> {
    if super::headers::framing_is_ambiguous(req.version(), req.headers()) {
        return closing(error_response(
            StatusCode::BAD_REQUEST,
            "bad_data",
            "ambiguous request framing: Transfer-Encoding must be one \"chunked\", without Content-Length",
        ));
    }
    // HTTP/1 heads over the limit (HTTP/2 header lists are limited by the h2 settings)
    if req.version() <= http::Version::HTTP_11
        && head_size(&req) as u64 > svc.gateway.config.limits.max_header_bytes
    {
        svc.metrics.limits.header_too_large.inc();
        return closing(error_response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too_large",
            "the request head is larger than limits.max_header_bytes",
        ));
    }
    if let Some(r) = own_endpoint(&svc, &req) {
        return r;
    }
    let only = match role {
        Role::Proxy(only) => only,
        Role::ForwardAuth => {
            return super::forward_auth::handle(svc.gateway.clone(), conn, req).await;
        }
    };
    // the admin API is served on the shared listener only (SPEC 9)
    let req = if only.is_none() {
        match svc.admin.serve(&conn, req).await {
            Ok(r) => return r,
            Err(req) => req,
        }
    } else {
        req
    };
    super::handle(svc.gateway.clone(), only, conn, req).await
}

/// An error after which the connection is closed (the request's framing or head is not to
/// be trusted for a next request).
fn closing(mut r: Response<Body>) -> Response<Body> {
    r.headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// `/live`, `/ready`, `/metrics`, without credentials, on every listener.
fn own_endpoint(svc: &Services, req: &Request<Incoming>) -> Option<Response<Body>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return None;
    }
    let text = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(full(body));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    match req.uri().path() {
        "/live" => Some(text(StatusCode::OK, "live\n")),
        "/ready" => Some(if svc.ready.load(Ordering::Acquire) {
            text(StatusCode::OK, "ready\n")
        } else {
            text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
        }),
        "/metrics" => {
            let mut r = Response::new(full(svc.metrics.render()));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            Some(r)
        }
        _ => None,
    }
}

/// What a caller may change about how the gateway runs (tests hand in a DNS resolver).
#[derive(Default)]
pub struct StartOptions {
    /// Resolves `dns+` backend URLs; `None`: the system resolver.
    pub resolver: Option<Arc<dyn crate::upstream::Resolve>>,
}

/// Loads the policy files, binds every listener and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    start_with(config, StartOptions::default()).await
}

/// [`start`], with [`StartOptions`].
pub async fn start_with(config: Config, options: StartOptions) -> Result<Running, StartError> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let paths = config.store.policy_files.clone();
    let cluster = config.cluster.clone();
    let (loaded, initial) = {
        let (p, c) = (paths.clone(), cluster.clone());
        tokio::task::spawn_blocking(move || {
            let loaded = (watch::stamps(&p), crate::store::load::load_files(&p, &c));
            crate::mem::release();
            loaded
        })
        .await
        .map_err(|e| StartError::Setup(format!("policy load task failed: {e}")))?
    };
    let initial = initial.map_err(|e| {
        metrics.store_reloads.with_label_values(&["failure"]).inc();
        StartError::Policy(e)
    })?;
    metrics.store_reloads.with_label_values(&["success"]).inc();
    // the first load is a success like any reload (dashboards show its age from here)
    metrics.store_last_success.set(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    );
    tracing::info!(counts = %initial.counts(), "policy set loaded");
    // per-tenant controls (store.controls_file): a file that does not load stops the start
    let controls =
        crate::controls::Controls::from_config(&config, &metrics).map_err(StartError::Policy)?;
    let store = Arc::new(Store::new(
        initial,
        config.cache.capacity,
        config.cache.ttl,
        metrics.clone(),
    ));
    let admin = crate::admin::Admin::open(&config, store.clone(), metrics.clone())
        .await
        .map_err(|e| StartError::Setup(format!("admin store: {e}")))?;
    let gateway = Arc::new(
        Gateway::new(config.clone(), store.clone(), metrics.clone())
            .map_err(StartError::Setup)?
            .with_controls(controls.clone()),
    );
    let services = Arc::new(Services {
        ready: std::sync::atomic::AtomicBool::new(false),
        metrics: metrics.clone(),
        admin: AdminService {
            config: config.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            admin: Some(admin.clone()),
            throttle: gateway.throttle.clone(),
        },
        gateway: gateway.clone(),
    });

    let tls = match &config.server.tls {
        Some(t) => Some(crate::tls::TlsReloader::new(t).map_err(StartError::Setup)?),
        None => None,
    };

    let mut binds: Vec<(Role, SocketAddr)> = vec![(Role::Proxy(None), config.server.listen)];
    for b in config.backends.iter() {
        if let Some(l) = b.listen {
            binds.push((Role::Proxy(Some(b.slot)), l));
        }
    }
    if let Some(fa) = &config.forward_auth {
        binds.push((Role::ForwardAuth, fa.listen));
        if config.client_ip.trusted_proxies.is_empty() {
            tracing::warn!(
                "forward_auth is on and client_ip.trusted_proxies is empty: the proxy asking is taken as the client, so allowed_subnets are checked against its address and one client's failed authentications throttle every client; list the proxy's address in client_ip.trusted_proxies"
            );
        }
    }
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (tx, rx) = tokio_watch::channel(false);
    let mut listeners = Vec::new();
    let mut forward_auth = None;
    let mut tasks = Vec::new();
    let mut sockets = Vec::new();
    for (role, addr) in binds {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|err| StartError::Bind { addr, err })?;
        let local = l
            .local_addr()
            .map_err(|err| StartError::Bind { addr, err })?;
        match role {
            Role::Proxy(slot) => listeners.push((slot, local)),
            Role::ForwardAuth => forward_auth = Some(local),
        }
        sockets.push((role, l));
    }
    for (role, l) in sockets {
        let local = l
            .local_addr()
            .map_or_else(|e| format!("unknown ({e})"), |a| a.to_string());
        let proxy_protocol = role.proxy_protocol(&config);
        tracing::info!(listener = role.label(), addr = %local, tls = tls.is_some(), proxy_protocol, "listening");
        tasks.push(tokio::spawn(accept_loop(
            l,
            role,
            services.clone(),
            tls.clone(),
            rx.clone(),
            config.server.shutdown_grace,
            open.clone(),
        )));
    }
    if let Some(t) = &tls {
        tasks.push(tokio::spawn(t.clone().watch(
            metrics.clone(),
            config.store.poll_interval,
            rx.clone(),
        )));
    }
    // other replicas' admin changes, every store.admin.poll_interval
    tasks.push(tokio::spawn(admin.run(rx.clone())));
    tasks.push(tokio::spawn(watch::run(
        store.clone(),
        paths,
        cluster,
        metrics.clone(),
        config.store.poll_interval,
        loaded,
        controls,
        rx.clone(),
    )));
    // dns+ URLs resolved once before the gateway says it is ready; then refreshed, and every
    // component with several endpoints checked, in the background
    let resolver = options
        .resolver
        .unwrap_or_else(|| Arc::new(crate::upstream::SystemResolver));
    let dns_refresh = {
        let c = config.clone();
        move |slot| {
            c.backends
                .get(slot)
                .map(|b| b.topology.dns_refresh)
                .unwrap_or(crate::config::upstream::DEFAULT_DNS_REFRESH)
        }
    };
    let background = gateway.upstreams.start(resolver, dns_refresh).await;
    services.ready.store(true, Ordering::Release);
    Ok(Running {
        listeners,
        forward_auth,
        gateway,
        services,
        shutdown: tx,
        tasks,
        background,
    })
}

/// hyper's HTTP/1 buffer limit (reads, and queued writes) per connection, unless
/// `limits.max_header_bytes` needs more.
const MAX_READ_BUF: usize = 256 << 10;

/// The size of an HTTP/1 request head as sent: request line, `name: value` lines, blank line
/// (whitespace around values as hyper keeps it). `limits.max_header_bytes` is checked against
/// it for every request, pipelined or not.
fn head_size<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| {
            a.as_str().len() + uri.scheme_str().map_or(0, |s| s.len() + 3)
        });
    let line = req.method().as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    let fields: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + 2 + v.len() + 2)
        .sum();
    line + fields + 2
}

async fn accept_loop(
    listener: TcpListener,
    role: Role,
    svc: Arc<Services>,
    tls: Option<Arc<crate::tls::TlsReloader>>,
    mut shutdown: tokio_watch::Receiver<bool>,
    grace: Duration,
    open: Arc<AtomicUsize>,
) {
    let gw = svc.gateway.clone();
    let limits = gw.config.limits.clone();
    let timeouts = guard::Timeouts {
        header_read: limits.header_read_timeout,
        idle: limits.idle_timeout,
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // the header-read timeout is ours (guard.rs), which answers 408 before closing
        .header_read_timeout(None)
        // so is the head's size limit (`head_too_large`, 431): hyper's buffer limit also
        // caps every read, and a 64 KiB cap made a 256 KiB push take six reads and six writes
        .max_buf_size(
            usize::try_from(limits.max_header_bytes)
                .unwrap_or(usize::MAX)
                .saturating_add(1)
                .max(MAX_READ_BUF),
        )
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes.min(u64::from(u32::MAX)) as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let proxy_protocol = role.proxy_protocol(&gw.config).then(|| ProxyProtocolGate {
        trusted: gw.config.client_ip.trusted_proxies.clone(),
        header_timeout: limits.header_read_timeout,
        counts: ProxyProtocolCounts::new(&gw.metrics),
        listener: role.label(),
    });
    let listener_ctx = Arc::new(ListenerCtx {
        role,
        services: svc.clone(),
        builder,
        timeouts,
        counters: gw.metrics.limits.clone(),
        proxy_protocol,
    });
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
        // PROXY protocol: a peer that is not a trusted proxy is closed before anything is read
        // or written (it could otherwise name any client address)
        if let Some(pp) = &listener_ctx.proxy_protocol
            && !pp.trusts(peer)
        {
            pp.counts.untrusted.inc();
            tracing::debug!(%peer, listener = pp.listener, "PROXY protocol: peer is not in client_ip.trusted_proxies; connection closed");
            drop(stream);
            continue;
        }
        // over the connection limit: a plain-HTTP client is told 503, a TLS one is closed
        if open.fetch_add(1, Ordering::AcqRel) >= limits.max_connections {
            open.fetch_sub(1, Ordering::AcqRel);
            gw.metrics.limits.max_connections.inc();
            if tls.is_none() {
                tokio::spawn(refuse_connection(stream));
            }
            continue;
        }
        let slot_guard = OpenConnection {
            open: open.clone(),
            gauge: gw.metrics.connections.clone(),
        };
        gw.metrics.connections.inc();
        let _ = stream.set_nodelay(true);
        let state = guard::ConnState::new();
        let watcher = graceful.watcher();
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        let ctx = listener_ctx.clone();
        tokio::spawn(async move {
            // counted against limits.max_connections from here, the PROXY header's read included
            let _slot = slot_guard;
            match &ctx.proxy_protocol {
                None => serve(&ctx, stream, Client::peer(peer), acceptor, state, watcher).await,
                Some(pp) => {
                    let mut stream = stream;
                    let Some((client, leftover)) = pp.read(&mut stream, peer).await else {
                        return;
                    };
                    let stream = PrefixedStream::new(leftover, stream);
                    serve(&ctx, stream, client, acceptor, state, watcher).await
                }
            }
        });
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

/// The address every check of a connection sees, and whether the `X-Forwarded-For` of a
/// trusted address is believed on it.
#[derive(Clone, Copy)]
struct Client {
    addr: SocketAddr,
    believe_forwarded: bool,
}

impl Client {
    fn peer(addr: SocketAddr) -> Client {
        Client {
            addr,
            believe_forwarded: true,
        }
    }
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

/// What every connection of one listener shares.
struct ListenerCtx {
    role: Role,
    services: Arc<Services>,
    builder: auto::Builder<TokioExecutor>,
    timeouts: guard::Timeouts,
    counters: Arc<crate::telemetry::LimitCounters>,
    /// `Some` on a listener with `proxy_protocol: true`.
    proxy_protocol: Option<ProxyProtocolGate>,
}

/// The TLS handshake (when the listener has TLS), then HTTP on the connection. `client` is the
/// address every check sees: the TCP peer, or the one its PROXY header carried.
async fn serve<I>(
    ctx: &ListenerCtx,
    io: I,
    client: Client,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<guard::ConnState>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Some(acceptor) = tls else {
        return serve_http(ctx, io, client, state, watcher).await;
    };
    let tls_stream = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(io)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(peer = %client, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %client, "TLS handshake timed out");
            return;
        }
    };
    serve_http(ctx, tls_stream, client, state, watcher).await
}

async fn serve_http<I>(
    ctx: &ListenerCtx,
    io: I,
    client: Client,
    state: Arc<guard::ConnState>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let services = ctx.services.clone();
    let role = ctx.role;
    let mut conn = Conn::new(client.addr);
    conn.believe_forwarded = client.believe_forwarded;
    let conn = Arc::new(conn);
    let svc_state = state.clone();
    let svc = service_fn(move |req| {
        let services = services.clone();
        let conn = conn.clone();
        let request = svc_state.request_started();
        let state = svc_state.clone();
        async move {
            let resp = dispatch(services, role, conn, req).await;
            if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                state.mark_upgraded();
            } else if resp.status() == http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE {
                state.mark_own_431();
            }
            let (parts, body) = resp.into_parts();
            Ok::<_, std::convert::Infallible>(http::Response::from_parts(
                parts,
                guard::TrackedBody::wrap(body, request),
            ))
        }
    });
    let io = guard::Guarded::new(io, state, ctx.timeouts, ctx.counters.clone());
    let conn = ctx
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(peer = %client, "connection ended: {e}");
    }
}

/// A listener's PROXY protocol: who may send the header, how long it may take, what is counted.
struct ProxyProtocolGate {
    trusted: Vec<ipnet::IpNet>,
    header_timeout: Duration,
    counts: ProxyProtocolCounts,
    listener: &'static str,
}

/// `obsgate_proxy_protocol_total{result}`, resolved once per listener.
struct ProxyProtocolCounts {
    ok: prometheus::IntCounter,
    local: prometheus::IntCounter,
    untrusted: prometheus::IntCounter,
    malformed: prometheus::IntCounter,
    timeout: prometheus::IntCounter,
}

impl ProxyProtocolCounts {
    fn new(m: &Metrics) -> ProxyProtocolCounts {
        let c = |r: &str| m.proxy_protocol.with_label_values(&[r]);
        ProxyProtocolCounts {
            ok: c("ok"),
            local: c("local"),
            untrusted: c("untrusted"),
            malformed: c("malformed"),
            timeout: c("timeout"),
        }
    }
}

impl ProxyProtocolGate {
    fn trusts(&self, peer: SocketAddr) -> bool {
        let ip = crate::auth::canonical(peer.ip());
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// Reads the header within `limits.header_read_timeout`: the client address (the peer for
    /// v2 LOCAL and v1 UNKNOWN) and the bytes read after the header. `None`: close.
    async fn read(
        &self,
        stream: &mut tokio::net::TcpStream,
        peer: SocketAddr,
    ) -> Option<(Client, bytes::Bytes)> {
        let read = proxy_protocol::read_header(stream);
        match tokio::time::timeout(self.header_timeout, read).await {
            Ok(Ok((Some(client), rest))) => {
                self.counts.ok.inc();
                Some((Client::peer(client), rest))
            }
            Ok(Ok((None, rest))) => {
                self.counts.local.inc();
                // the balancer's own connection (v2 LOCAL), or one it could not describe: the
                // balancer is the client, and a TCP balancer writes no X-Forwarded-For, so any
                // such header came from behind it and is not believed
                Some((
                    Client {
                        addr: peer,
                        believe_forwarded: false,
                    },
                    rest,
                ))
            }
            Ok(Err(proxy_protocol::ReadError::Malformed(why))) => {
                self.counts.malformed.inc();
                tracing::debug!(%peer, listener = self.listener, reason = why, "PROXY protocol: no valid header; connection closed");
                None
            }
            Err(_) => {
                self.counts.timeout.inc();
                tracing::debug!(%peer, listener = self.listener, "PROXY protocol: no header within limits.header_read_timeout; connection closed");
                None
            }
        }
    }
}

/// One open client connection, counted against `limits.max_connections` until dropped.
struct OpenConnection {
    open: Arc<AtomicUsize>,
    gauge: prometheus::IntGauge,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

const RESPONSE_503: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 1\r\ncontent-type: application/json\r\ncontent-length: 81\r\n\r\n{\"status\":\"error\",\"errorType\":\"unavailable\",\"error\":\"too many open connections\"}\n";

/// Tells a client over the connection limit why it is turned away, then closes.
async fn refuse_connection(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(RESPONSE_503).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn head_size_is_the_head_as_sent() {
        let raw = "GET /api/v1/query?query=up HTTP/1.1\r\nhost: x\r\nx-a: 12345\r\n\r\n";
        let req = http::Request::builder()
            .uri("/api/v1/query?query=up")
            .header("host", "x")
            .header("x-a", "12345")
            .body(())
            .unwrap();
        assert_eq!(super::head_size(&req), raw.len());
    }

    #[test]
    fn the_503_is_well_formed() {
        super::super::guard::assert_static_response(super::RESPONSE_503);
    }
}
