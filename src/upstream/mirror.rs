//! Mirroring writes: a copy of a fraction of the write requests goes to each mirror.
//!
//! The primary's body is teed: each frame read for the primary is also offered to every mirror
//! copy through a bounded channel, without waiting. A copy that cannot keep up, or whose
//! mirror is gone, is dropped (its request fails at the mirror rather than arrive truncated).
//! The primary never waits for a mirror and never sees a mirror's failure.

use super::Endpoint;
use crate::wire::{Body, BoxError};
use bytes::Bytes;
use http::{HeaderMap, Method, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use prometheus::IntCounter;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};

/// Frames a copy may lag behind the primary before it is dropped.
const COPY_BUFFER_FRAMES: usize = 256;

/// One configured mirror.
pub struct MirrorTarget {
    pub label: String,
    pub fraction: f64,
    pub endpoint: Arc<Endpoint>,
    inflight: Arc<Semaphore>,
    ok: IntCounter,
    error: IntCounter,
    dropped: IntCounter,
}

impl MirrorTarget {
    pub fn new(
        endpoint: Arc<Endpoint>,
        fraction: f64,
        max_inflight: usize,
        metrics: &crate::telemetry::Metrics,
        backend: &str,
    ) -> MirrorTarget {
        let label = format!("{}{}", endpoint.label, endpoint.base_path());
        let c = |r: &str| {
            metrics
                .mirror_requests
                .with_label_values(&[backend, label.as_str(), r])
        };
        MirrorTarget {
            ok: c("ok"),
            error: c("error"),
            dropped: c("dropped"),
            label: label.clone(),
            fraction,
            endpoint,
            inflight: Arc::new(Semaphore::new(max_inflight)),
        }
    }

    /// Whether this request is copied (random, by request).
    pub fn sampled(&self) -> bool {
        self.fraction >= 1.0
            || (self.fraction > 0.0
                && (super::balance::random_below(1 << 24) as f64)
                    < self.fraction * (1u64 << 24) as f64)
    }
}

enum Item {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
}

struct Sink {
    tx: mpsc::Sender<Item>,
    overflow: Arc<AtomicBool>,
}

/// The primary's body, offering every frame to the mirror copies.
pub struct TeeBody {
    inner: Body,
    sinks: Vec<Sink>,
}

impl TeeBody {
    fn offer(&mut self, item: impl Fn() -> Item) {
        self.sinks.retain(|s| match s.tx.try_send(item()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                s.overflow.store(true, Ordering::Release);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }
}

impl HttpBody for TeeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.offer(|| Item::Data(d.clone()));
                } else if let Some(t) = f.trailers_ref() {
                    this.offer(|| Item::Trailers(t.clone()));
                }
                // hyper stops polling a body that says it has ended (a Content-Length met, an
                // HTTP/2 stream's last frame), so its end is passed on here, not at `None`
                if this.inner.is_end_stream() {
                    this.offer(|| Item::End);
                    this.sinks.clear();
                }
            }
            Poll::Ready(None) => {
                this.offer(|| Item::End);
                this.sinks.clear();
            }
            // the copies end without their End: they fail rather than arrive truncated
            Poll::Ready(Some(Err(_))) => this.sinks.clear(),
            Poll::Pending => {}
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

/// The body of one mirror copy.
struct CopyBody {
    rx: mpsc::Receiver<Item>,
    hint: SizeHint,
    ended: bool,
    empty: bool,
}

impl HttpBody for CopyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Item::Data(d))) => Poll::Ready(Some(Ok(Frame::data(d)))),
            Poll::Ready(Some(Item::Trailers(t))) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Poll::Ready(Some(Item::End)) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(Some(Err(
                    "mirror copy dropped: the primary request's body did not complete here".into(),
                )))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.empty || self.ended
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// The request line and headers every copy repeats.
pub struct Head {
    pub method: Method,
    pub version: Version,
    pub headers: HeaderMap,
    pub path_and_query: http::uri::PathAndQuery,
    pub grpc: bool,
}

/// Starts a copy of the request to each sampled mirror and returns the primary's body, teed.
/// Copies over a mirror's `mirror_max_inflight` are dropped and counted.
pub fn start(targets: &[Arc<MirrorTarget>], head: &Head, body: Body, timeout: Duration) -> Body {
    let mut sinks = Vec::new();
    let empty = body.is_end_stream();
    let hint = body.size_hint();
    for t in targets {
        if !t.sampled() {
            continue;
        }
        let Ok(permit) = t.inflight.clone().try_acquire_owned() else {
            t.dropped.inc();
            continue;
        };
        let (tx, rx) = mpsc::channel(COPY_BUFFER_FRAMES);
        let overflow = Arc::new(AtomicBool::new(false));
        if empty {
            let _ = tx.try_send(Item::End);
        }
        let copy = CopyBody {
            rx,
            hint,
            ended: false,
            empty,
        };
        let req = match t.endpoint.request(
            head.method.clone(),
            head.version,
            head.headers.clone(),
            &head.path_and_query,
            copy.boxed_unsync(),
            head.grpc,
        ) {
            Ok(r) => r,
            Err(_) => {
                t.error.inc();
                continue;
            }
        };
        sinks.push(Sink {
            tx,
            overflow: overflow.clone(),
        });
        let t = t.clone();
        let grpc = head.grpc;
        tokio::spawn(async move {
            let _permit = permit;
            let result = tokio::time::timeout(timeout, async {
                let resp = t.endpoint.clients.send(req, grpc).await?;
                let ok = resp.status().is_success();
                // read the answer through, so the connection goes back to the pool
                super::drain(resp.into_body()).await;
                Ok::<bool, super::client::ClientError>(ok)
            })
            .await;
            match result {
                _ if overflow.load(Ordering::Acquire) => t.dropped.inc(),
                Ok(Ok(true)) => t.ok.inc(),
                Ok(Ok(false)) => t.error.inc(),
                Ok(Err(e)) => {
                    t.error.inc();
                    tracing::debug!(mirror = %t.label, error = %crate::wire::error_chain(&e), "mirror copy failed");
                }
                Err(_) => {
                    t.error.inc();
                    tracing::debug!(mirror = %t.label, "mirror copy timed out");
                }
            }
        });
    }
    if sinks.is_empty() {
        return body;
    }
    TeeBody { inner: body, sinks }.boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_copy_gets_every_frame_and_ends_only_when_the_primary_did() {
        let (tx, rx) = mpsc::channel(4);
        let overflow = Arc::new(AtomicBool::new(false));
        let tee = TeeBody {
            inner: crate::wire::full("payload"),
            sinks: vec![Sink {
                tx,
                overflow: overflow.clone(),
            }],
        };
        let copy = CopyBody {
            rx,
            hint: SizeHint::with_exact(7),
            ended: false,
            empty: false,
        };
        let primary = tee.collect().await.unwrap().to_bytes();
        assert_eq!(primary, "payload");
        assert_eq!(copy.collect().await.unwrap().to_bytes(), "payload");
        assert!(!overflow.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn a_copy_that_falls_behind_is_dropped_and_fails_instead_of_arriving_truncated() {
        let (tx, rx) = mpsc::channel(1);
        let overflow = Arc::new(AtomicBool::new(false));
        let tee = TeeBody {
            inner: super::super::test_body(&["a", "b", "c"], false),
            sinks: vec![Sink {
                tx,
                overflow: overflow.clone(),
            }],
        };
        // the primary reads everything at once; the copy's channel holds one frame
        assert_eq!(tee.collect().await.unwrap().to_bytes(), "abc");
        assert!(overflow.load(Ordering::Acquire));
        let copy = CopyBody {
            rx,
            hint: SizeHint::default(),
            ended: false,
            empty: false,
        };
        assert!(copy.collect().await.is_err());
    }

    #[tokio::test]
    async fn a_copy_ends_when_the_primary_body_says_it_ended_without_being_polled_to_none() {
        use http_body::Body as _;
        let (tx, rx) = mpsc::channel(4);
        let overflow = Arc::new(AtomicBool::new(false));
        let mut tee = TeeBody {
            inner: crate::wire::full("last frame"),
            sinks: vec![Sink {
                tx,
                overflow: overflow.clone(),
            }],
        };
        // what hyper does: poll one frame, see is_end_stream(), never poll again, drop
        let f = std::future::poll_fn(|cx| Pin::new(&mut tee).poll_frame(cx)).await;
        assert_eq!(f.unwrap().unwrap().into_data().unwrap(), "last frame");
        assert!(tee.is_end_stream());
        drop(tee);
        let copy = CopyBody {
            rx,
            hint: SizeHint::with_exact(10),
            ended: false,
            empty: false,
        };
        assert_eq!(copy.collect().await.unwrap().to_bytes(), "last frame");
    }
}
