//! The load benchmark's floor contestant (`benches/load/`): the cheapest reverse proxy one can
//! build from the same hyper and hyper-util versions and the same runtime and allocator choice
//! as obsgate (current-thread runtime, mimalloc, HTTP/1 server, pooled legacy client), with no
//! authentication, no limits, no metrics and no header hygiene. What obsgate costs above it is
//! obsgate's own work.
//!
//! Per request it only swaps the request's URI for one built from parts prepared at start-up
//! (scheme and authority parsed once, the request's own path-and-query reused: no string
//! formatting, no parsing), hands the request to the pooled client and returns the upstream's
//! response body unboxed; 502 if the upstream fails. The shared state is leaked once so that
//! neither a connection nor a request clones it.
//!
//! `floor_proxy LISTEN_ADDR UPSTREAM_ADDR` (e.g. `127.0.0.1:8081 127.0.0.1:9009`).

use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http_body_util::{Either, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;

/// obsgate's allocator (src/main.rs), so that the allocator is not part of the difference.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Body = Either<Incoming, Empty<Bytes>>;

struct Floor {
    client: Client<HttpConnector, Incoming>,
    scheme: Scheme,
    authority: Authority,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        return Err("usage: floor_proxy LISTEN_ADDR UPSTREAM_ADDR".into());
    };
    let authority: Authority = upstream.parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(listen, authority))
}

async fn serve(listen: String, authority: Authority) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let floor: &'static Floor = Box::leak(Box::new(Floor {
        client: Client::builder(TokioExecutor::new()).build(connector),
        scheme: Scheme::HTTP,
        authority,
    }));
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| forward(floor, req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

async fn forward(
    floor: &'static Floor,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(floor.scheme.clone());
    parts.authority = Some(floor.authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = match Uri::from_parts(parts) {
        Ok(u) => u,
        Err(_) => return Ok(status(StatusCode::BAD_REQUEST)),
    };
    Ok(match floor.client.request(req).await {
        Ok(resp) => resp.map(Either::Left),
        Err(_) => status(StatusCode::BAD_GATEWAY),
    })
}

fn status(code: StatusCode) -> Response<Body> {
    let mut r = Response::new(Either::Right(Empty::new()));
    *r.status_mut() = code;
    r
}
