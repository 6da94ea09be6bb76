//! Pooled upstream clients, one pair per backend: HTTP/1.1 for ordinary requests and WebSocket
//! upgrades, HTTP/2 (h2c or ALPN h2) for gRPC, whose trailers need it.

use super::Body;
use crate::config::Backend;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Duration;

pub type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

pub struct Upstream {
    pub backend: Backend,
    pub http1: HttpClient,
    pub http2: HttpClient,
}

fn connector(b: &Backend) -> HttpConnector {
    let mut c = HttpConnector::new();
    c.enforce_http(false);
    c.set_nodelay(true);
    c.set_connect_timeout(Some(b.connect_timeout));
    c.set_keepalive(Some(Duration::from_secs(60)));
    c
}

impl Upstream {
    pub fn new(backend: &Backend) -> Result<Upstream, String> {
        let tls = super::tls::client_config(backend.ca_file.as_deref())?;
        let h1 = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector(backend));
        let h2 = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http2()
            .wrap_connector(connector(backend));
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
        Ok(Upstream {
            backend: backend.clone(),
            http1,
            http2,
        })
    }
}
