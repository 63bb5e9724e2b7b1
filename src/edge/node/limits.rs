//! What a node allows a client, like nginx's defaults: a request head must arrive within
//! `--header-timeout` (60 s), a keep-alive connection may wait `--idle-timeout` (75 s) for its
//! next request, the backend has `--backend-timeout` (60 s) to answer, and at most
//! `--max-connections` connections are open at once (new ones are shed, with a log line).
//! A connection's clock is kept by `Watched` (bytes read) and `Activity` (requests open), and
//! enforced by `serve_watched`, so a slow or silent client never holds a connection forever.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub backend_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    /// nginx's defaults (client_header_timeout 60 s, keepalive_timeout 75 s,
    /// proxy_read_timeout 60 s); connections bounded by the open-file limit.
    pub fn defaults() -> Self {
        Self {
            header_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(75),
            backend_timeout: Duration::from_secs(60),
            max_connections: default_max_connections(),
        }
    }
}

/// Raises the soft open-file limit to the hard one (as nginx's worker_rlimit_nofile does) and
/// allows connections to use half of it less a reserve: each proxied connection needs a second
/// descriptor for its backend, and listeners, logs and the control plane need some too.
fn default_max_connections() -> usize {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    let files = match setrlimit(Resource::Nofile, raised) {
        Ok(()) => limit.maximum,
        Err(_) => limit.current,
    }
    .unwrap_or(1 << 20)
    .min(1 << 20);
    (files.saturating_sub(64) / 2).max(16) as usize
}

/// Open client connections, bounded by `--max-connections`: a lock-free count, since every TLS
/// worker takes and gives back a slot per connection (tokio's semaphore locks a mutex on every
/// release, which all the workers would queue on).
pub struct ConnectionSlots {
    open: AtomicUsize,
    max: usize,
}

/// One connection's slot, given back when dropped.
pub struct Slot(Arc<ConnectionSlots>);

impl ConnectionSlots {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// How many connections are open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A slot, or `None` when `max` connections are open.
    pub fn take(self: &Arc<Self>) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |open| {
                (open < self.max).then_some(open + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

const NONE: u64 = u64::MAX;

/// One connection's clock: how many requests are open, when it last fell idle, and when the
/// first byte of a next request head arrived.
pub struct Activity {
    start: Instant,
    open: AtomicUsize,
    served: AtomicUsize,
    idle_since_ms: AtomicU64,
    head_started_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            open: AtomicUsize::new(0),
            served: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(NONE),
        })
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// A request head was read: the connection is busy until its response is done.
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.open.fetch_add(1, Ordering::SeqCst);
        self.head_started_ms.store(NONE, Ordering::SeqCst);
        RequestGuard(self.clone())
    }

    fn read_some(&self) {
        if self.open.load(Ordering::SeqCst) == 0 {
            let _ = self.head_started_ms.compare_exchange(
                NONE,
                self.now_ms(),
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
    }

    /// When the connection must close if nothing changes: a head started must be complete by
    /// the header timeout; an idle one gets the idle timeout (the header timeout before its
    /// first request). `None` while a request is open.
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        if self.open.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let head = self.head_started_ms.load(Ordering::SeqCst);
        let (from, allowed) = if head != NONE {
            (head, limits.header_timeout)
        } else if self.served.load(Ordering::SeqCst) == 0 {
            (0, limits.header_timeout)
        } else {
            (
                self.idle_since_ms.load(Ordering::SeqCst),
                limits.idle_timeout,
            )
        };
        Some(self.start + Duration::from_millis(from) + allowed)
    }
}

/// Marks a request open until its response (body included) is done, however it ends.
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.served.fetch_add(1, Ordering::SeqCst);
        activity
            .idle_since_ms
            .store(activity.now_ms(), Ordering::SeqCst);
        activity.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request open until it is fully sent or dropped.
pub struct Tracked<B> {
    inner: B,
    _guard: RequestGuard,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, guard: RequestGuard) -> Self {
        Self {
            inner,
            _guard: guard,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A client connection whose reads are noted on its `Activity`.
pub struct Watched<T> {
    io: T,
    activity: Arc<Activity>,
}

impl<T> Watched<T> {
    pub fn new(io: T, activity: Arc<Activity>) -> Self {
        Self { io, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read_some();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Runs a connection until it ends or its client overstays a timeout; then `shut_down` asks it
/// to finish gracefully (HTTP/2 sends GOAWAY), and after a moment it is dropped (closed).
pub async fn serve_watched<C: Future>(
    conn: C,
    activity: Arc<Activity>,
    limits: Limits,
    shut_down: impl FnOnce(Pin<&mut C>),
) {
    let mut conn = std::pin::pin!(conn);
    loop {
        let wake = activity
            .deadline(&limits)
            .unwrap_or_else(|| Instant::now() + limits.header_timeout);
        tokio::select! {
            _ = conn.as_mut() => return,
            () = tokio::time::sleep_until(wake.into()) => {
                if activity.deadline(&limits).is_some_and(|d| d <= Instant::now()) {
                    shut_down(conn.as_mut());
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn.as_mut()).await;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_slots_stop_at_the_maximum_and_come_back_when_dropped() {
        let slots = ConnectionSlots::new(2);
        let (a, b) = (slots.take().unwrap(), slots.take().unwrap());
        assert!(slots.take().is_none());
        drop(a);
        let c = slots.take().unwrap();
        assert!(slots.take().is_none());
        drop((b, c));
        assert!(slots.take().is_some());
    }

    #[test]
    fn a_connection_gets_the_header_timeout_first_then_the_idle_timeout() {
        let limits = Limits {
            header_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(75),
            backend_timeout: Duration::from_secs(60),
            max_connections: 10,
        };
        let activity = Activity::new();
        let first = activity.deadline(&limits).unwrap();
        assert_eq!(first, activity.start + Duration::from_secs(60));
        let guard = activity.request_started();
        assert_eq!(activity.deadline(&limits), None, "busy: no deadline");
        drop(guard);
        let idle = activity.deadline(&limits).unwrap();
        assert!(idle >= activity.start + Duration::from_secs(75));
        activity.read_some();
        let head = activity.deadline(&limits).unwrap();
        assert!(
            head < idle,
            "a started head must finish within the header timeout"
        );
    }
}
