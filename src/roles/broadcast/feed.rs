//! One client's SSE body: `retry`, then (when resuming) the events after its
//! `Last-Event-ID` from the database, then the stream's shared frames it has not
//! seen, with a keep-alive comment whenever it is idle. No task and no queue per
//! client: the body itself reads the stream's ring of frames when hyper can write.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use prometheus::{IntCounter, IntGauge};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::hub::{Subscription, frame};
use crate::storage::to_api_error;
use crate::streams::{StreamKey, Streams};

/// History is replayed in pages of this many events.
const RESUME_PAGE: u32 = 500;
const RETRY: &[u8] = b"retry:2000\n\n";
const KEEPALIVE: &[u8] = b":\n\n";

pub struct FeedMetrics {
    pub clients: IntGauge,
    pub events: IntCounter,
    pub slow_disconnects: IntCounter,
}

enum Phase {
    Start,
    History,
    Live,
    Done,
}

pub struct Feed {
    phase: Phase,
    subscription: Subscription,
    key: StreamKey,
    streams: Streams,
    /// The last id sent; live frames at or below it are skipped.
    last_sent: i64,
    keepalive: Duration,
    idle: Pin<Box<Sleep>>,
    shutdown: CancellationToken,
    metrics: Arc<FeedMetrics>,
}

impl Feed {
    pub fn new(
        subscription: Subscription,
        key: StreamKey,
        streams: Streams,
        resume_after: Option<i64>,
        keepalive: Duration,
        shutdown: CancellationToken,
        metrics: Arc<FeedMetrics>,
    ) -> Self {
        metrics.clients.inc();
        Self {
            phase: Phase::Start,
            subscription,
            key,
            streams,
            last_sent: resume_after.unwrap_or(-1),
            keepalive,
            idle: Box::pin(tokio::time::sleep(keepalive)),
            shutdown,
            metrics,
        }
    }

    /// The next chunk to write, `None` to end the stream.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            match self.phase {
                Phase::Start => {
                    self.phase = if self.last_sent >= 0 {
                        Phase::History
                    } else {
                        Phase::Live
                    };
                    return Some(Bytes::from_static(RETRY));
                }
                Phase::History => {
                    // Only once the stream knows its position: then history and the
                    // live frames overlap rather than leave a gap.
                    tokio::select! {
                        biased;
                        () = self.shutdown.cancelled() => return None,
                        () = self.subscription.ready() => {}
                        () = &mut self.idle => return Some(self.keepalive_chunk()),
                    }
                    // Boxed: the query's state lives only while it runs, not in every
                    // connection's body for its whole life.
                    let page =
                        match Box::pin(self.streams.after(&self.key, self.last_sent, RESUME_PAGE))
                            .await
                        {
                            Ok(page) => page,
                            Err(error) => {
                                // The client reconnects and tries again; the log says why.
                                let _ = to_api_error(error, "reading history for a resume");
                                self.phase = Phase::Done;
                                return None;
                            }
                        };
                    if page.len() < RESUME_PAGE as usize {
                        self.phase = Phase::Live;
                    }
                    if page.is_empty() {
                        continue;
                    }
                    let mut chunk = BytesMut::new();
                    for event in &page {
                        chunk.extend_from_slice(&frame(event));
                        self.last_sent = event.id;
                    }
                    self.metrics.events.inc_by(page.len() as u64);
                    return Some(self.sent(chunk.freeze()));
                }
                Phase::Live => {
                    let received = tokio::select! {
                        biased;
                        () = self.shutdown.cancelled() => return None,
                        received = self.subscription.recv() => received,
                        () = &mut self.idle => return Some(self.keepalive_chunk()),
                    };
                    match received {
                        Ok(frame) => {
                            if frame.id <= self.last_sent {
                                continue;
                            }
                            self.last_sent = frame.id;
                            self.metrics.events.inc();
                            return Some(self.sent(frame.bytes.clone()));
                        }
                        Err(RecvError::Lagged(skipped)) => {
                            self.metrics.slow_disconnects.inc();
                            tracing::info!(skipped, "SSE client fell behind; disconnecting it");
                            self.phase = Phase::Done;
                        }
                        Err(RecvError::Closed) => self.phase = Phase::Done,
                    }
                }
                Phase::Done => return None,
            }
        }
    }

    fn sent(&mut self, chunk: Bytes) -> Bytes {
        self.idle.as_mut().reset(Instant::now() + self.keepalive);
        chunk
    }

    fn keepalive_chunk(&mut self) -> Bytes {
        self.sent(Bytes::from_static(KEEPALIVE))
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.metrics.clients.dec();
    }
}

/// The feed as a body stream.
pub fn body(feed: Feed) -> SyncStream<impl Stream<Item = Result<Bytes, Infallible>> + Send> {
    SyncStream(Mutex::new(Box::pin(futures_util::stream::unfold(
        feed,
        |mut feed| async move {
            let chunk = feed.next_chunk().await?;
            Some((Ok(chunk), feed))
        },
    ))))
}

/// warp wants a `Sync` body stream; a database read in flight is not `Sync`. The
/// body is only ever polled through `&mut`, so a mutex that is never contended
/// (`get_mut`, no locking) makes it so.
pub struct SyncStream<S>(Mutex<Pin<Box<S>>>);

impl<S: Stream> Stream for SyncStream<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        self.get_mut()
            .0
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
            .poll_next(cx)
    }
}
