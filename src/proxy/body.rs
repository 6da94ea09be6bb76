//! Request bodies with a size limit and a read timeout. A body that goes over its limit or
//! pauses too long fails as a stream, and records why, so that the request can be answered
//! 413 or 408 rather than as an upstream failure.

use super::BoxError;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Why a body was cut off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    TooLarge,
    TimedOut,
}

/// Shared between a [`LimitedBody`] and the code that forwards it.
#[derive(Default)]
pub struct CutFlag(AtomicU8);

impl CutFlag {
    pub fn get(&self) -> Option<Cut> {
        match self.0.load(Ordering::Acquire) {
            1 => Some(Cut::TooLarge),
            2 => Some(Cut::TimedOut),
            _ => None,
        }
    }

    fn set(&self, c: Cut) {
        let v = match c {
            Cut::TooLarge => 1,
            Cut::TimedOut => 2,
        };
        let _ = self
            .0
            .compare_exchange(0, v, Ordering::AcqRel, Ordering::Acquire);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body larger than {0} bytes")]
    TooLarge(u64),
    #[error("request body stalled for more than {0:?}")]
    TimedOut(Duration),
    #[error("request body unreadable: {0}")]
    Read(#[from] hyper::Error),
}

pub struct LimitedBody {
    inner: Incoming,
    max: u64,
    seen: u64,
    timeout: Duration,
    /// Created when the body first has to wait (most bodies never do). Progress does not
    /// re-arm it (a timer-wheel update per chunk): it only notes when the body last had to
    /// wait after progress, and a timer that fires early is moved to that moment + `timeout`.
    timer: Option<Pin<Box<Sleep>>>,
    progressed: bool,
    /// When the body last had to wait after some progress (the stall's start).
    waiting_since: Option<Instant>,
    flag: Arc<CutFlag>,
    done: bool,
}

impl LimitedBody {
    pub fn new(inner: Incoming, max: u64, timeout: Duration, flag: Arc<CutFlag>) -> LimitedBody {
        LimitedBody {
            inner,
            max,
            seen: 0,
            timeout,
            timer: None,
            progressed: false,
            waiting_since: None,
            flag,
            done: false,
        }
    }

    fn fail(&mut self, c: Cut) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        self.flag.set(c);
        let e = match c {
            Cut::TooLarge => BodyError::TooLarge(self.max),
            Cut::TimedOut => BodyError::TimedOut(self.timeout),
        };
        Poll::Ready(Some(Err(Box::new(e))))
    }
}

impl HttpBody for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.seen = this.seen.saturating_add(d.len() as u64);
                    if this.seen > this.max {
                        return this.fail(Cut::TooLarge);
                    }
                }
                this.progressed = true;
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(Box::new(BodyError::Read(e)))))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let progressed = std::mem::take(&mut this.progressed);
                let Some(timer) = this.timer.as_mut() else {
                    let now = Instant::now();
                    this.waiting_since = Some(now);
                    let mut t = Box::pin(tokio::time::sleep_until(now + timeout));
                    if t.as_mut().poll(cx).is_ready() {
                        return this.fail(Cut::TimedOut);
                    }
                    this.timer = Some(t);
                    return Poll::Pending;
                };
                if progressed {
                    this.waiting_since = Some(Instant::now());
                }
                while timer.as_mut().poll(cx).is_ready() {
                    // the stall began later than the timer was set for: wait for the rest
                    let due = this.waiting_since.map(|t| t + timeout);
                    match due {
                        Some(d) if d > timer.deadline() => timer.as_mut().reset(d),
                        _ => return this.fail(Cut::TimedOut),
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that holds its endpoint's in-flight count until it has been sent (or the
/// client went away).
struct Guarded {
    inner: crate::upstream::UpBody,
    _guard: crate::upstream::InflightGuard,
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(|e| Box::new(e) as BoxError)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pub fn guarded(
    inner: crate::upstream::UpBody,
    guard: crate::upstream::InflightGuard,
) -> super::Body {
    use http_body_util::BodyExt;
    Guarded {
        inner,
        _guard: guard,
    }
    .boxed_unsync()
}
