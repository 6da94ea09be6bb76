//! The load benchmark's push upstream (`benches/load/`): like a Mimir distributor, it reads the
//! whole request body before it answers (nginx `return 200` answers without reading it), then
//! answers 200 "ok". Current-thread runtime, hyper's HTTP/1 server.
//!
//! `push_sink LISTEN_ADDR` (e.g. `127.0.0.1:9010`).

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(listen) = std::env::args().nth(1) else {
        return Err("usage: push_sink LISTEN_ADDR".into());
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(listen))
}

async fn serve(listen: String) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(sink);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

async fn sink(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    // the whole body, as a distributor reads it before decoding (an error ends the connection)
    let body = req.into_body().collect().await?;
    drop(body);
    let mut resp = Response::new(Full::new(Bytes::from_static(b"ok\n")));
    *resp.status_mut() = StatusCode::OK;
    Ok(resp)
}
