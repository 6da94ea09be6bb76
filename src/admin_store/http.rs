//! object_store's HTTP transport over hyper-util's pooled client with our rustls configuration
//! (ring, the system roots plus an optional CA file): the cloud backends need no reqwest.
//!
//! Timeouts come from the store's [`ClientOptions`] (`open` sets 5 s to connect and 10 s per
//! request); the request timeout covers the whole exchange, the response body included.

use async_trait::async_trait;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector as TcpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpRequestBody,
    HttpResponse, HttpResponseBody, HttpService,
};
use object_store::{ClientConfigKey, ClientOptions};
use std::error::Error;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds an [`HttpClient`] for each store that asks for one.
#[derive(Debug, Clone)]
pub struct HyperConnector {
    tls: rustls::ClientConfig,
}

impl HyperConnector {
    pub fn new(ca_file: Option<&Path>) -> Result<HyperConnector, String> {
        Ok(HyperConnector {
            tls: crate::tls::client_config(ca_file)?,
        })
    }
}

fn duration_option(o: &ClientOptions, key: ClientConfigKey, default: Duration) -> Duration {
    o.get_config_value(&key)
        .and_then(|v| humantime::parse_duration(&v).ok())
        .unwrap_or(default)
}

impl HttpConnector for HyperConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let allow_http = options
            .get_config_value(&ClientConfigKey::AllowHttp)
            .is_some_and(|v| {
                matches!(
                    v.to_ascii_lowercase().as_str(),
                    "1" | "true" | "on" | "yes" | "y"
                )
            });
        let mut tcp = TcpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_keepalive(Some(Duration::from_secs(60)));
        tcp.set_connect_timeout(Some(duration_option(
            options,
            ClientConfigKey::ConnectTimeout,
            CONNECT_TIMEOUT,
        )));
        let tls = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(self.tls.clone());
        let tls = if allow_http {
            tls.https_or_http()
        } else {
            tls.https_only()
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(tls.enable_http1().wrap_connector(tcp));
        Ok(HttpClient::new(HyperService {
            client,
            timeout: duration_option(options, ClientConfigKey::Timeout, REQUEST_TIMEOUT),
        }))
    }
}

struct HyperService {
    client: Client<HttpsConnector<TcpConnector>, HttpRequestBody>,
    timeout: Duration,
}

impl std::fmt::Debug for HyperService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HyperService")
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn timed_out(after: Duration) -> HttpError {
    let e = std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "no complete answer within {}",
            humantime::format_duration(after)
        ),
    );
    HttpError::new(HttpErrorKind::Timeout, e)
}

/// What went wrong, from the error's chain: a timeout, a connection cut mid-request, or
/// another failure of the request.
fn kind_of(e: &(dyn Error + 'static)) -> HttpErrorKind {
    let mut cur = Some(e);
    while let Some(x) = cur {
        if let Some(h) = x.downcast_ref::<hyper::Error>() {
            if h.is_timeout() {
                return HttpErrorKind::Timeout;
            }
            if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
                return HttpErrorKind::Interrupted;
            }
        }
        if let Some(io) = x.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            match io.kind() {
                TimedOut => return HttpErrorKind::Timeout,
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
                    return HttpErrorKind::Interrupted;
                }
                _ => {}
            }
        }
        cur = x.source();
    }
    HttpErrorKind::Request
}

#[async_trait]
impl HttpService for HyperService {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let resp = match tokio::time::timeout_at(deadline, self.client.request(req)).await {
            Err(_) => return Err(timed_out(self.timeout)),
            Ok(Err(e)) => {
                let kind = if e.is_connect() {
                    HttpErrorKind::Connect
                } else {
                    kind_of(&e)
                };
                return Err(HttpError::new(kind, e));
            }
            Ok(Ok(r)) => r,
        };
        let (parts, body) = resp.into_parts();
        let body = DeadlineBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            timeout: self.timeout,
        };
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)))
    }
}

/// A response body that fails with a timeout once the request's deadline has passed.
struct DeadlineBody {
    inner: hyper::body::Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl Body for DeadlineBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(timed_out(self.timeout))));
        }
        Pin::new(&mut self.inner).poll_frame(cx).map_err(|e| {
            let kind = kind_of(&e);
            HttpError::new(kind, e)
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
