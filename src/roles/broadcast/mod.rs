//! Role `broadcast`: Server-Sent Events of new chat messages, with resume from
//! history (`Last-Event-ID`), so a client can reconnect to any instance and lose
//! nothing.

mod hub;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use prometheus::{IntCounter, IntGauge};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use warp::http::header;
use warp::reply::{Reply, Response};
use warp::sse::Event;
use warp::{Filter, filters::BoxedFilter};

use crate::bus::Bus;
use crate::configuration::Settings;
use crate::domain::Channel;
use crate::http::{ApiError, tagged};
use crate::metrics::Metrics;
use crate::roles::chat::message::{ALL_CHANNELS, ChatMessage};
use crate::roles::chat::store::MessageStore;
use crate::storage::{Database, to_api_error};

use hub::{Hub, Subscription};

const ROLE: &str = "broadcast";
/// History is replayed in pages of this many messages.
const RESUME_PAGE: u32 = 500;
/// What EventSource waits before reconnecting.
const RETRY: Duration = Duration::from_secs(2);
/// Events queued per client between its task and its connection.
const CONNECTION_QUEUE: usize = 64;

/// The topics this role needs from the bus.
pub fn subscriptions() -> Vec<String> {
    vec![ALL_CHANNELS.to_owned()]
}

struct BroadcastMetrics {
    clients: IntGauge,
    events: IntCounter,
    slow_disconnects: IntCounter,
}

pub struct Broadcast {
    hub: Hub,
    store: MessageStore,
    keepalive: Duration,
    shutdown: CancellationToken,
    metrics: BroadcastMetrics,
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    last_event_id: Option<String>,
}

impl Broadcast {
    /// Builds the role and starts moving bus messages into the hub.
    pub fn new(
        settings: &Settings,
        db: Database,
        bus: &Bus,
        metrics: &Metrics,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, prometheus::Error> {
        let hub = Hub::default();
        tokio::spawn(dispatch(bus.subscribe(), hub.clone(), shutdown.clone()));
        Ok(Arc::new(Self {
            hub,
            store: MessageStore::new(db),
            keepalive: Duration::from_secs(settings.broadcast.keepalive_secs),
            shutdown,
            metrics: BroadcastMetrics {
                clients: metrics.gauge("hubbub_sse_clients", "Connected SSE clients")?,
                events: metrics
                    .counter("hubbub_sse_events_sent_total", "SSE message events sent")?,
                slow_disconnects: metrics.counter(
                    "hubbub_sse_slow_client_disconnects_total",
                    "SSE clients cut off for falling behind",
                )?,
            },
        }))
    }

    pub fn routes(self: &Arc<Self>) -> BoxedFilter<(Response,)> {
        let role = self.clone();
        warp::path!("api" / "chat" / String / "events")
            .and(warp::get())
            .and(warp::header::optional::<String>("last-event-id"))
            .and(
                warp::query::<EventsQuery>()
                    .or(warp::any().map(|| EventsQuery {
                        last_event_id: None,
                    }))
                    .unify(),
            )
            .map(
                move |channel: String, header_id: Option<String>, query: EventsQuery| {
                    let reply = match role.events(&channel, header_id.or(query.last_event_id)) {
                        Ok(reply) => reply,
                        Err(error) => error.into_response(),
                    };
                    tagged(ROLE, "/api/chat/{channel}/events", reply)
                },
            )
            .boxed()
    }

    fn events(
        self: &Arc<Self>,
        channel: &str,
        last_event_id: Option<String>,
    ) -> Result<Response, ApiError> {
        let channel =
            Channel::parse(channel).map_err(|e| ApiError::invalid_field("channel", e.0))?;
        let resume_after =
            match last_event_id.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(text) => Some(text.parse::<i64>().ok().filter(|id| *id >= 0).ok_or_else(
                    || ApiError::invalid_field("Last-Event-ID", "must be a message id"),
                )?),
            };
        // Live first, then history: nothing posted in between can fall in a gap.
        let subscription = self.hub.subscribe(channel.as_str());
        let (events, queue) = mpsc::channel::<Event>(CONNECTION_QUEUE);
        tokio::spawn(
            self.clone()
                .feed(subscription, channel, resume_after, events),
        );
        let stream = futures_util::stream::unfold(queue, |mut queue| async move {
            queue
                .recv()
                .await
                .map(|event| (Ok::<_, Infallible>(event), queue))
        });
        let stream =
            futures_util::stream::once(async { Ok(Event::default().retry(RETRY)) }).chain(stream);
        let reply = warp::sse::reply(
            warp::sse::keep_alive()
                .interval(self.keepalive)
                .stream(stream),
        );
        let reply = warp::reply::with_header(reply, header::CACHE_CONTROL, "no-cache");
        Ok(warp::reply::with_header(reply, "x-accel-buffering", "no").into_response())
    }

    /// One client's feed: history after `resume_after`, then live messages not yet
    /// sent. Ends when the client leaves, falls behind, or the process shuts down.
    async fn feed(
        self: Arc<Self>,
        mut subscription: Subscription,
        channel: Channel,
        resume_after: Option<i64>,
        events: mpsc::Sender<Event>,
    ) {
        self.metrics.clients.inc();
        let _connected = scopeguard(&self.metrics.clients);
        let mut last_sent = resume_after.unwrap_or(0);
        if let Some(after) = resume_after {
            loop {
                let page = match self
                    .store
                    .after(channel.as_str(), last_sent.max(after), RESUME_PAGE)
                    .await
                {
                    Ok(page) => page,
                    Err(error) => {
                        // The client reconnects and tries again; say why in the log only.
                        let _ = to_api_error(error, "reading history for a resume");
                        return;
                    }
                };
                let full = page.len() == RESUME_PAGE as usize;
                for message in page {
                    last_sent = message.id;
                    if !self.send(&events, &message).await {
                        return;
                    }
                }
                if !full {
                    break;
                }
            }
        }
        loop {
            let received = tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = events.closed() => return,
                received = subscription.receiver.recv() => received,
            };
            match received {
                Ok(message) => {
                    if message.id <= last_sent {
                        continue;
                    }
                    last_sent = message.id;
                    if !self.send(&events, &message).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    self.metrics.slow_disconnects.inc();
                    tracing::info!(skipped, channel = %channel, "SSE client fell behind; disconnecting it");
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    async fn send(&self, events: &mpsc::Sender<Event>, message: &ChatMessage) -> bool {
        let Ok(event) = Event::default()
            .id(message.id.to_string())
            .event("message")
            .json_data(message)
        else {
            return true;
        };
        // A client that cannot take events for this long is treated as gone.
        match tokio::time::timeout(Duration::from_secs(30), events.send(event)).await {
            Ok(Ok(())) => {
                self.metrics.events.inc();
                true
            }
            _ => false,
        }
    }
}

/// Decrements the client gauge when the feed ends, however it ends.
fn scopeguard(gauge: &IntGauge) -> impl Drop + '_ {
    struct Guard<'a>(&'a IntGauge);
    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    Guard(gauge)
}

/// Moves chat messages from the bus into the hub.
async fn dispatch(
    mut bus: broadcast::Receiver<crate::bus::BusMessage>,
    hub: Hub,
    shutdown: CancellationToken,
) {
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => return,
            received = bus.recv() => received,
        };
        match received {
            Ok(bus_message) => {
                if !bus_message.topic.starts_with("hubbub/chat/") {
                    continue;
                }
                match serde_json::from_slice::<ChatMessage>(&bus_message.payload) {
                    Ok(message) => hub.deliver(message),
                    Err(error) => {
                        tracing::warn!(%error, topic = %bus_message.topic, "ignoring a malformed chat message")
                    }
                }
            }
            // Messages were dropped before reaching the hub: cut every client off so
            // each reconnects and resumes from history instead of missing them.
            Err(broadcast::error::RecvError::Lagged(skipped)) => {
                tracing::warn!(
                    skipped,
                    "broadcast dispatcher fell behind the bus; resetting clients"
                );
                hub.disconnect_all();
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
