//! Per-connection limits that hyper does not enforce the way we want, enforced on the client
//! connection's byte stream (below HTTP, above TLS):
//!
//! - **Header read timeout** (slowloris): an HTTP/1 request head must arrive completely within
//!   `header_read_timeout` of its first byte (of the connection's start, for the first request).
//!   Past it the client gets `408 Request Timeout` and the connection is closed.
//!   Deadlines are checked every quarter of the shorter timeout, so one is noticed at most
//!   that much late; no timer is touched per request.
//! - **Idle timeout**: a connection with no request in flight for `idle_timeout` is closed
//!   (HTTP/1 keep-alive and HTTP/2 alike; an upgraded connection, e.g. a Loki tail WebSocket,
//!   is exempt).
//!
//! The service marks requests in flight through [`ConnState`]; a request ends when hyper drops
//! its response body ([`TrackedBody`]), i.e. after the body was written.

use super::Body;
use crate::telemetry::LimitCounters;
use bytes::Bytes;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// What the service tells the connection about its requests.
pub struct ConnState {
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Requests started so far: a change tells the reader a request head was complete.
    started: AtomicU64,
    /// When the last request ended, in milliseconds since `epoch`.
    idle_since_ms: AtomicU64,
    /// An upgraded connection (WebSocket) is no longer HTTP: no timeouts apply.
    upgraded: AtomicBool,
    /// The service answered 431 itself (and counted it): the write below is not hyper's own.
    own_431: AtomicBool,
}

impl ConnState {
    pub fn new() -> Arc<ConnState> {
        Arc::new(ConnState {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            upgraded: AtomicBool::new(false),
            own_431: AtomicBool::new(false),
        })
    }

    /// A request head arrived: the service is handling it.
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.started.fetch_add(1, Ordering::AcqRel);
        RequestGuard(self.clone())
    }

    pub fn mark_upgraded(&self) {
        self.upgraded.store(true, Ordering::Release);
    }

    /// The service's own 431 (already counted) is about to be written.
    pub fn mark_own_431(&self) {
        self.own_431.store(true, Ordering::Release);
    }

    fn end_request(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.idle_since_ms.store(ms, Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Ends its request when dropped.
pub struct RequestGuard(Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.end_request();
    }
}

/// A response body that ends its request when hyper drops it (after writing it).
pub struct TrackedBody {
    inner: Body,
    _guard: RequestGuard,
}

impl TrackedBody {
    pub fn wrap(inner: Body, guard: RequestGuard) -> Body {
        use http_body_util::BodyExt;
        TrackedBody {
            inner,
            _guard: guard,
        }
        .boxed_unsync()
    }
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = super::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Proto {
    Unknown,
    Http1,
    Http2,
}

#[derive(Clone, Copy)]
pub struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
}

const RESPONSE_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: 91\r\n\r\n{\"status\":\"error\",\"errorType\":\"timeout\",\"error\":\"the request head did not arrive in time\"}\n";

/// The client connection's stream, with the header-read and idle deadlines.
pub struct Guarded<S> {
    inner: S,
    state: Arc<ConnState>,
    timeouts: Timeouts,
    counters: Arc<LimitCounters>,
    proto: Proto,
    /// An HTTP/1 head being read: since when, and `started` at that moment.
    head: Option<(Instant, u64)>,
    /// Fires every `period`: the deadlines are checked then, so that no timer is touched per
    /// request (a deadline is noticed at most one period late).
    timer: Pin<Box<Sleep>>,
    period: Duration,
}

impl<S> Guarded<S> {
    pub fn new(
        inner: S,
        state: Arc<ConnState>,
        timeouts: Timeouts,
        counters: Arc<LimitCounters>,
    ) -> Guarded<S> {
        let now = Instant::now();
        let period = (timeouts.header_read.min(timeouts.idle) / 4).max(Duration::from_millis(50));
        Guarded {
            inner,
            state,
            timeouts,
            counters,
            proto: Proto::Unknown,
            // the first request's head is timed from the connection's start
            head: Some((now, 0)),
            timer: Box::pin(tokio::time::sleep_until(now + period)),
            period,
        }
    }
}

enum Expired {
    Head,
    Idle,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let got = &buf.filled()[before..];
                if !got.is_empty() {
                    if this.proto == Proto::Unknown {
                        this.proto = if got.starts_with(b"PRI ") {
                            Proto::Http2
                        } else {
                            Proto::Http1
                        };
                    }
                    if this.proto != Proto::Http2
                        && this.state.in_flight.load(Ordering::Acquire) == 0
                    {
                        // the first bytes of a head: timed from now, unless this head is
                        // already being timed (a head noted before the last request began is
                        // stale: that request's head was complete)
                        let started = this.state.started.load(Ordering::Acquire);
                        if !matches!(this.head, Some((_, g)) if g == started) {
                            this.head = Some((Instant::now(), started));
                        }
                    }
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        if this.state.upgraded.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        loop {
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            this.timer.as_mut().reset(now + this.period);
            let started = this.state.started.load(Ordering::Acquire);
            if let Some((_, g)) = this.head
                && g != started
            {
                // a request began since: its head was complete
                this.head = None;
            }
            if this.proto == Proto::Http2 {
                this.head = None;
            }
            if this.state.in_flight.load(Ordering::Acquire) > 0 {
                continue;
            }
            let expired = if let Some((t, _)) = this.head {
                (now >= t + this.timeouts.header_read).then_some(Expired::Head)
            } else {
                let since = Duration::from_millis(this.state.idle_since_ms.load(Ordering::Acquire));
                (now >= this.state.epoch + since + this.timeouts.idle).then_some(Expired::Idle)
            };
            match expired {
                None => continue,
                Some(Expired::Head) => {
                    this.counters.header_timeout.inc();
                    // best effort: the 408 fits in the socket buffer
                    let _ = Pin::new(&mut this.inner).poll_write(cx, RESPONSE_408);
                    let _ = Pin::new(&mut this.inner).poll_flush(cx);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request head not received in time",
                    )));
                }
                Some(Expired::Idle) => {
                    this.counters.idle_timeout.inc();
                    // end of stream: hyper closes the connection cleanly
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // a response hyper writes on its own (no request in flight) is its answer to a head it
        // refused: count the oversized ones
        if this.proto != Proto::Http2
            && buf.starts_with(b"HTTP/1.1 431")
            && this.state.in_flight.load(Ordering::Acquire) == 0
            && !this.state.own_431.swap(false, Ordering::AcqRel)
        {
            this.counters.header_too_large.inc();
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.proto != Proto::Http2
            && bufs.first().is_some_and(|b| b.starts_with(b"HTTP/1.1 431"))
            && this.state.in_flight.load(Ordering::Acquire) == 0
            && !this.state.own_431.swap(false, Ordering::AcqRel)
        {
            this.counters.header_too_large.inc();
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The declared content length of a static response equals its body's length.
#[cfg(test)]
pub(crate) fn assert_static_response(r: &[u8]) {
    let text = std::str::from_utf8(r).expect("ASCII");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("content-length")
        .parse()
        .expect("a number");
    assert_eq!(len, body.len(), "{text}");
    serde_json::from_str::<serde_json::Value>(body).expect("a JSON body");
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_408_is_well_formed() {
        super::assert_static_response(super::RESPONSE_408);
    }
}
