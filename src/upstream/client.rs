//! Pooled clients, one pair per endpoint: HTTP/1.1 for ordinary requests and WebSocket
//! upgrades, HTTP/2 (h2c or ALPN h2) for gRPC, whose trailers need it.
//!
//! An endpoint of a `dns+` URL is one resolved address: its connector's resolver answers that
//! address whatever the name, so the URI keeps the host name (TLS server name, `Host` when the
//! client sent none) while the connection goes to the address DNS gave.

use crate::wire::Body;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

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

/// The pair of pooled clients of one endpoint.
pub struct Clients {
    pub http1: HttpClient,
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

impl Clients {
    pub fn new(s: &ClientSettings, resolver: EndpointResolver) -> Clients {
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
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(h1);
        let http2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(h2);
        Clients { http1, http2 }
    }
}
