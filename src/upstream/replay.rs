//! A request body that can be sent a second time.
//!
//! The first attempt streams the client's body through, keeping a copy of what it read while
//! that stays under a cap (reads: `limits.max_read_body_bytes`; writes: nothing). A second
//! attempt replays the copy and then continues with the rest of the client's body. A body
//! whose read bytes were not all kept cannot be replayed, and [`ReplayBody::retry`] says so.

use crate::wire::{Body, BoxError};
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

struct Shared {
    /// The client's body; `None` once it has ended.
    inner: Option<Body>,
    /// Which attempt may read: an older attempt's body fails instead of stealing frames.
    generation: u32,
    kept: Vec<Bytes>,
    kept_bytes: usize,
    trailers: Option<HeaderMap>,
    cap: usize,
    /// Everything read from the client so far is in `kept` (and `trailers`).
    replayable: bool,
}

pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    generation: u32,
    /// Kept chunks this attempt has sent.
    next: usize,
    trailers_sent: bool,
}

fn lock(s: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl ReplayBody {
    /// `cap`: bytes kept for a replay (0: only an untouched body can be sent again).
    pub fn new(body: Body, cap: usize) -> ReplayBody {
        ReplayBody {
            shared: Arc::new(Mutex::new(Shared {
                inner: Some(body),
                generation: 0,
                kept: Vec::new(),
                kept_bytes: 0,
                trailers: None,
                cap,
                replayable: true,
            })),
            generation: 0,
            next: 0,
            trailers_sent: false,
        }
    }

    /// The body of a second attempt, if everything the first one read was kept. From then on
    /// the first attempt's body fails if it is read again.
    pub fn retry(&self) -> Option<ReplayBody> {
        let mut s = lock(&self.shared);
        if !s.replayable {
            return None;
        }
        s.generation = s.generation.wrapping_add(1);
        Some(ReplayBody {
            shared: self.shared.clone(),
            generation: s.generation,
            next: 0,
            trailers_sent: false,
        })
    }

    /// Whether any of the client's body has been read (or its end seen).
    #[cfg(test)]
    fn touched(&self) -> bool {
        let s = lock(&self.shared);
        s.inner.is_none() || !s.kept.is_empty() || !s.replayable
    }
}

impl HttpBody for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut s = lock(&this.shared);
        if s.generation != this.generation {
            return Poll::Ready(Some(Err("request body was handed to a retry".into())));
        }
        if let Some(c) = s.kept.get(this.next) {
            let c = c.clone();
            this.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(c))));
        }
        let Some(inner) = s.inner.as_mut() else {
            if !this.trailers_sent
                && let Some(t) = s.trailers.clone()
            {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                s.inner = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                s.replayable = false;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    if d.is_empty() {
                        // nothing to keep (an HTTP/2 client may send many empty frames)
                    } else if s.replayable && s.kept_bytes + d.len() <= s.cap {
                        s.kept_bytes += d.len();
                        s.kept.push(d.clone());
                        this.next = s.kept.len();
                    } else {
                        s.replayable = false;
                    }
                } else if let Some(t) = frame.trailers_ref()
                    && s.replayable
                {
                    s.trailers = Some(t.clone());
                    this.trailers_sent = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = lock(&self.shared);
        if s.generation != self.generation || self.next < s.kept.len() {
            return false;
        }
        match &s.inner {
            Some(b) => b.is_end_stream(),
            None => self.trailers_sent || s.trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        let s = lock(&self.shared);
        let unsent: usize = s.kept.iter().skip(self.next).map(Bytes::len).sum();
        let rest = s
            .inner
            .as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_else(|| SizeHint::with_exact(0));
        let mut h = SizeHint::new();
        h.set_lower(rest.lower() + unsent as u64);
        if let Some(u) = rest.upper() {
            h.set_upper(u + unsent as u64);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    use super::super::test_body as body;

    async fn read_all(b: ReplayBody) -> Result<Vec<u8>, BoxError> {
        Ok(b.collect().await?.to_bytes().to_vec())
    }

    #[tokio::test]
    async fn a_read_partly_sent_is_replayed_whole_on_the_second_attempt() {
        let first = ReplayBody::new(body(&["query=", "up", "&time=1"], false), 1024);
        let mut first = Box::pin(first);
        // the first attempt reads one chunk, then its connection dies
        let f = std::future::poll_fn(|cx| first.as_mut().poll_frame(cx)).await;
        assert_eq!(f.unwrap().unwrap().into_data().unwrap(), "query=");
        let second = first.retry().expect("everything read was kept");
        assert_eq!(read_all(second).await.unwrap(), b"query=up&time=1");
        // the first attempt's body, if hyper polls it again, fails rather than steal frames
        let again = std::future::poll_fn(|cx| first.as_mut().poll_frame(cx)).await;
        assert!(again.unwrap().is_err());
    }

    #[tokio::test]
    async fn an_untouched_body_can_always_be_sent_again_and_keeps_its_length() {
        let b = ReplayBody::new(crate::wire::full("abc"), 0);
        assert!(!b.touched());
        assert_eq!(b.size_hint().exact(), Some(3));
        let again = b.retry().unwrap();
        assert_eq!(again.size_hint().exact(), Some(3));
        assert_eq!(read_all(again).await.unwrap(), b"abc");
    }

    #[tokio::test]
    async fn a_write_that_was_read_cannot_be_sent_again() {
        let b = ReplayBody::new(body(&["sample"], false), 0);
        let mut b = Box::pin(b);
        let _ = std::future::poll_fn(|cx| b.as_mut().poll_frame(cx)).await;
        assert!(b.touched());
        assert!(b.retry().is_none());
    }

    #[tokio::test]
    async fn a_body_over_the_cap_or_broken_cannot_be_replayed() {
        let b = ReplayBody::new(body(&["12345", "67890"], false), 8);
        let mut b = Box::pin(b);
        let _ = std::future::poll_fn(|cx| b.as_mut().poll_frame(cx)).await;
        assert!(b.retry().is_some());
        let b = ReplayBody::new(body(&["12345", "67890"], false), 8);
        let b2 = b.retry().unwrap(); // generation 1 reads it all
        assert_eq!(read_all(b2).await.unwrap(), b"1234567890");
        assert!(b.retry().is_none(), "10 bytes were read, 8 could be kept");
        let b = ReplayBody::new(body(&["x"], true), 8);
        let b2 = b.retry().unwrap();
        assert!(read_all(b2).await.is_err());
        assert!(b.retry().is_none());
    }
}
