//! Pooled connections, one pair of pools per endpoint: HTTP/1.1 (our own pool over hyper's
//! connection API) for ordinary requests and WebSocket upgrades, HTTP/2 (h2c or ALPN h2,
//! hyper-util's client) for gRPC, whose trailers need it.
//!
//! An endpoint of a `dns+` URL is one resolved address: its connector's resolver answers that
//! address whatever the name, so the URI keeps the host name (TLS server name, `Host` when the
//! client sent none) while the connection goes to the address DNS gave.

use crate::wire::{Body, BoxError};
use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub type HttpClient = Client<HttpsConnector<HttpConnector<EndpointResolver>>, Body>;

/// How an endpoint's connector finds its address.
#[derive(Clone)]
pub enum EndpointResolver {
    /// The system resolver, for an endpoint written as a host name or address.
    System(GaiResolver),
    /// One address resolved from a `dns+` URL.
    Fixed(SocketAddr),
}

type Addrs = std::vec::IntoIter<SocketAddr>;
type ResolveFuture = Pin<Box<dyn Future<Output = Result<Addrs, std::io::Error>> + Send>>;

impl tower_service::Service<Name> for EndpointResolver {
    type Response = Addrs;
    type Error = std::io::Error;
    type Future = ResolveFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), std::io::Error>> {
        match self {
            EndpointResolver::System(g) => g.poll_ready(cx),
            EndpointResolver::Fixed(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, name: Name) -> ResolveFuture {
        match self {
            EndpointResolver::System(g) => {
                let f = g.call(name);
                Box::pin(async move {
                    let addrs = f.await?;
                    Ok(addrs.collect::<Vec<_>>().into_iter())
                })
            }
            EndpointResolver::Fixed(a) => {
                let a = *a;
                Box::pin(async move { Ok(vec![a].into_iter()) })
            }
        }
    }
}

/// The connections of one endpoint: our own HTTP/1.1 pool (ordinary requests and WebSocket
/// upgrades) and hyper-util's pooled HTTP/2 client (gRPC, whose trailers need it).
pub struct Clients {
    pub http1: Arc<H1Pool>,
    pub http2: HttpClient,
}

/// What every endpoint's connector shares: TLS roots and timeouts.
#[derive(Clone)]
pub struct ClientSettings {
    pub tls: rustls::ClientConfig,
    pub connect_timeout: Duration,
}

fn connector(s: &ClientSettings, r: EndpointResolver) -> HttpConnector<EndpointResolver> {
    let mut c = HttpConnector::new_with_resolver(r);
    c.enforce_http(false);
    c.set_nodelay(true);
    c.set_connect_timeout(Some(s.connect_timeout));
    c.set_keepalive(Some(Duration::from_secs(60)));
    c
}

/// How long an idle upstream connection is kept, and how many per endpoint.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const MAX_IDLE: usize = 256;
/// How long a pooled connection that is not ready yet is waited for before it is dropped.
const READY_WAIT: Duration = Duration::from_millis(100);

impl Clients {
    /// `origin`: `scheme://authority` of the endpoint (what its connections are opened to).
    pub fn new(s: &ClientSettings, resolver: EndpointResolver, origin: http::Uri) -> Clients {
        let h1 = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(s.tls.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector(s, resolver.clone()));
        let h2 = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(s.tls.clone())
            .https_or_http()
            .enable_http2()
            .wrap_connector(connector(s, resolver));
        let http2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(h2);
        Clients {
            http1: Arc::new(H1Pool {
                connector: h1,
                host: host_header(&origin),
                origin,
                idle: Mutex::new(Vec::new()),
            }),
            http2,
        }
    }

    /// Sends a request (absolute URI for HTTP/2; HTTP/1 takes origin form or absolute) on a
    /// pooled connection.
    pub async fn send(
        &self,
        req: Request<Body>,
        grpc: bool,
    ) -> Result<Response<UpBody>, ClientError> {
        if grpc {
            return match self.http2.request(req).await {
                Ok(r) => Ok(r.map(UpBody::plain)),
                Err(e) => Err(ClientError {
                    connect: e.is_connect(),
                    inner: Box::new(e),
                }),
            };
        }
        self.http1.send(req).await
    }
}

/// `Host` as hyper-util's client writes it when the client sent none: the host, and the port
/// unless it is the scheme's default.
fn host_header(origin: &http::Uri) -> Option<HeaderValue> {
    let host = origin.host()?;
    let default = match origin.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    let v = match origin.port_u16() {
        Some(p) if p != default => format!("{host}:{p}"),
        _ => host.to_string(),
    };
    HeaderValue::from_str(&v).ok()
}

/// An upstream request failed; `connect`: no connection could be made (nothing was sent).
#[derive(Debug)]
pub struct ClientError {
    connect: bool,
    inner: BoxError,
}

impl ClientError {
    pub fn is_connect(&self) -> bool {
        self.connect
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.connect {
            "cannot connect"
        } else {
            "request failed"
        })
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.inner)
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Body>;

/// One endpoint's HTTP/1.1 connections: idle ones are reused newest first; a connection goes
/// back to the pool when its response body has been read to the end and its request body was
/// sent whole (see [`UpBody`]), so a request never waits behind another one's exchange.
///
/// It replaces hyper-util's pooled client for HTTP/1, whose checkout (a hash map keyed by
/// scheme and authority, a connect future raced against the checkout, a task spawned per
/// request to wait for the connection to be ready again) cost more than the rest of the
/// proxy's own work.
pub struct H1Pool {
    connector: HttpsConnector<HttpConnector<EndpointResolver>>,
    /// `scheme://authority` the connections go to.
    origin: http::Uri,
    host: Option<HeaderValue>,
    idle: Mutex<Vec<(Sender, Instant)>>,
}

impl H1Pool {
    /// Sends `req` (its URI may be absolute or origin form) on an idle connection or a new
    /// one. A request that an idle connection refused before writing any of it (the
    /// connection had just closed) is sent again on a new connection, as hyper-util does.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<Body>,
    ) -> Result<Response<UpBody>, ClientError> {
        if req.uri().scheme().is_some() {
            let pq = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
            *req.uri_mut() = http::Uri::from(pq);
        }
        if let Some(h) = &self.host
            && !req.headers().contains_key(http::header::HOST)
        {
            req.headers_mut().insert(http::header::HOST, h.clone());
        }
        // the connection may go back to the pool only once the request body was sent whole
        // too: an upstream that answers early (413, 429) still reads the rest of it
        let (req, sent) = if http_body::Body::is_end_stream(req.body()) {
            (req, None)
        } else {
            let flag = Arc::new(AtomicBool::new(false));
            let (parts, body) = req.into_parts();
            let body = http_body_util::BodyExt::boxed_unsync(SentBody {
                inner: body,
                done: flag.clone(),
            });
            (Request::from_parts(parts, body), Some(flag))
        };
        let mut tx = match self.checkout().await {
            Some(tx) => tx,
            None => self.connect().await?,
        };
        let resp = match tx.try_send_request(req).await {
            Ok(r) => r,
            Err(mut e) => match e.take_message() {
                // not sent: the pooled connection was closing; once more on a new one
                Some(req) => {
                    tx = self.connect().await?;
                    tx.send_request(req).await.map_err(|e| ClientError {
                        connect: false,
                        inner: Box::new(e),
                    })?
                }
                None => {
                    return Err(ClientError {
                        connect: false,
                        inner: Box::new(e.into_error()),
                    });
                }
            },
        };
        // an upgraded connection is the client's now
        let back = (resp.status() != http::StatusCode::SWITCHING_PROTOCOLS).then(|| Back {
            tx,
            pool: self.clone(),
            sent,
        });
        Ok(resp.map(|inner| UpBody { inner, back }))
    }

    /// The newest idle connection that is still open (and ready), if any.
    async fn checkout(&self) -> Option<Sender> {
        loop {
            let (mut tx, since) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
            if tx.is_closed() || since.elapsed() > IDLE_TIMEOUT {
                continue;
            }
            // a pooled connection has finished both its request and its response: it is ready
            // at once or about to be (its connection task has one step left); never wait long
            if tx.is_ready()
                || matches!(
                    tokio::time::timeout(READY_WAIT, tx.ready()).await,
                    Ok(Ok(()))
                )
            {
                return Some(tx);
            }
        }
    }

    async fn connect(&self) -> Result<Sender, ClientError> {
        use tower_service::Service;
        let connect_err = |e: BoxError| ClientError {
            connect: true,
            inner: e,
        };
        let io = self
            .connector
            .clone()
            .call(self.origin.clone())
            .await
            .map_err(connect_err)?;
        let (tx, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| connect_err(Box::new(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("upstream connection ended: {e}");
            }
        });
        Ok(tx)
    }

    fn release(&self, tx: Sender) {
        if tx.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= MAX_IDLE {
            // the oldest goes
            idle.remove(0);
        } else if idle
            .first()
            .is_some_and(|(_, t)| t.elapsed() > IDLE_TIMEOUT)
        {
            idle.remove(0);
        }
        idle.push((tx, Instant::now()));
    }

    /// Idle connections now (tests).
    pub fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// An upstream response body. Read to its end (or dropped when it had nothing left), it gives
/// its HTTP/1 connection back to the pool; dropped earlier, the connection is closed.
pub struct UpBody {
    inner: Incoming,
    back: Option<Back>,
}

/// What a finished response gives back: its connection, if the request body was sent whole.
struct Back {
    tx: Sender,
    pool: Arc<H1Pool>,
    /// `None`: the request had no body to send.
    sent: Option<Arc<AtomicBool>>,
}

/// A request body that says when it was sent to its end.
struct SentBody {
    inner: Body,
    done: Arc<AtomicBool>,
}

impl http_body::Body for SentBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = r {
            self.done.store(true, Ordering::Release);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.done.store(true, Ordering::Release);
        }
        end
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl UpBody {
    /// A body whose connection is not ours to give back (HTTP/2).
    pub fn plain(inner: Incoming) -> UpBody {
        UpBody { inner, back: None }
    }

    fn give_back(&mut self) {
        if let Some(b) = self.back.take()
            && b.sent.is_none_or(|f| f.load(Ordering::Acquire))
        {
            b.pool.release(b.tx);
        }
        // otherwise the sender is dropped: the connection closes once its request is done
    }
}

impl std::fmt::Debug for UpBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpBody")
            .field("pooled", &self.back.is_some())
            .finish()
    }
}

impl http_body::Body for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpBody {
    fn drop(&mut self) {
        if self.back.is_some() && http_body::Body::is_end_stream(&self.inner) {
            self.give_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An upstream that counts its connections and answers `body` (with `Connection: close`
    /// when `close`).
    async fn upstream(body: &'static str, close: bool) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let c = conns.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |_req: Request<Incoming>| async move {
                            let mut r = Response::new(http_body_util::Full::new(
                                Bytes::from_static(body.as_bytes()),
                            ));
                            if close {
                                r.headers_mut().insert(
                                    http::header::CONNECTION,
                                    HeaderValue::from_static("close"),
                                );
                            }
                            Ok::<_, std::convert::Infallible>(r)
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        (addr, conns)
    }

    fn clients(addr: std::net::SocketAddr) -> Clients {
        let s = ClientSettings {
            tls: crate::tls::client_config(None).unwrap(),
            connect_timeout: Duration::from_secs(2),
        };
        Clients::new(
            &s,
            EndpointResolver::Fixed(addr),
            format!("http://{addr}/").parse().unwrap(),
        )
    }

    fn get() -> Request<Body> {
        let mut r = Request::new(crate::wire::full(Bytes::new()));
        *r.uri_mut() = "/x?y=1".parse().unwrap();
        r
    }

    #[tokio::test]
    async fn connections_are_reused_once_the_body_was_read() {
        let (addr, conns) = upstream("hello", false).await;
        let c = clients(addr);
        for _ in 0..5 {
            let r = c.send(get(), false).await.unwrap();
            let b = r.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&b[..], b"hello");
            assert_eq!(c.http1.idle_count(), 1);
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
        // a response still being read holds its connection: a second request opens another
        let r1 = c.send(get(), false).await.unwrap();
        assert_eq!(c.http1.idle_count(), 0);
        let r2 = c.send(get(), false).await.unwrap();
        assert_eq!(conns.load(Ordering::SeqCst), 2);
        drop(r2.into_body().collect().await.unwrap());
        drop(r1.into_body().collect().await.unwrap());
        assert_eq!(c.http1.idle_count(), 2);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_closes_its_connection() {
        let (addr, conns) = upstream("hello", false).await;
        let c = clients(addr);
        let r = c.send(get(), false).await.unwrap();
        drop(r);
        assert_eq!(c.http1.idle_count(), 0);
        let r = c.send(get(), false).await.unwrap();
        drop(r.into_body().collect().await.unwrap());
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connections_the_upstream_closes_are_not_reused() {
        let (addr, conns) = upstream("bye", true).await;
        let c = clients(addr);
        for _ in 0..5 {
            let r = c.send(get(), false).await.unwrap();
            let b = r.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&b[..], b"bye");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn host_is_the_endpoints_unless_the_client_sent_one() {
        let origin: http::Uri = "http://example.com:8080/".parse().unwrap();
        assert_eq!(host_header(&origin).unwrap(), "example.com:8080");
        let origin: http::Uri = "https://example.com:443/".parse().unwrap();
        assert_eq!(host_header(&origin).unwrap(), "example.com");
        let origin: http::Uri = "http://example.com/".parse().unwrap();
        assert_eq!(host_header(&origin).unwrap(), "example.com");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let c = clients(addr);
        let e = c.send(get(), false).await.unwrap_err();
        assert!(e.is_connect());
        assert!(crate::wire::error_chain(&e).contains("cannot connect"));
    }
}
