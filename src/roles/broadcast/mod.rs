//! Role `broadcast`: Server-Sent Events of new chat messages and new buffs, with
//! resume from history (`Last-Event-ID`), so a client can reconnect to any
//! instance and lose nothing.

mod hub;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use prometheus::{IntCounter, IntGauge};
use sea_orm::DbErr;
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use warp::http::header;
use warp::reply::{Reply, Response};
use warp::sse::Event;
use warp::{Filter, filters::BoxedFilter};

use crate::bus::{Bus, BusMessage};
use crate::configuration::Settings;
use crate::domain::Channel;
use crate::http::{ApiError, tagged};
use crate::metrics::Metrics;
use crate::roles::buffs::buff::TOPIC as BUFFS_TOPIC;
use crate::roles::buffs::store::BuffStore;
use crate::roles::chat::message::ALL_CHANNELS;
use crate::roles::chat::store::MessageStore;
use crate::storage::{Database, to_api_error};

use hub::{Hub, Item, Subscription};

const ROLE: &str = "broadcast";
/// History is replayed in pages of this many events.
const RESUME_PAGE: u32 = 500;
/// What EventSource waits before reconnecting.
const RETRY: Duration = Duration::from_secs(2);
/// Events queued per client between its task and its connection.
const CONNECTION_QUEUE: usize = 64;
const CHAT_PREFIX: &str = "hubbub/chat/";
const BUFFS_STREAM: &str = "buffs";

/// The topics this role needs from the bus.
pub fn subscriptions() -> Vec<String> {
    vec![ALL_CHANNELS.to_owned(), BUFFS_TOPIC.to_owned()]
}

/// Which stream a bus topic feeds: `chat:<channel>` or `buffs`.
fn stream_of(topic: &str) -> Option<String> {
    if topic == BUFFS_TOPIC {
        Some(BUFFS_STREAM.to_owned())
    } else {
        topic
            .strip_prefix(CHAT_PREFIX)
            .map(|channel| format!("chat:{channel}"))
    }
}

/// Where a stream's history comes from when a client resumes.
#[derive(Clone)]
enum History {
    Chat(Channel),
    Buffs,
}

struct BroadcastMetrics {
    clients: IntGauge,
    events: IntCounter,
    slow_disconnects: IntCounter,
}

pub struct Broadcast {
    hub: Hub,
    messages: MessageStore,
    buffs: BuffStore,
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
        tokio::spawn(dispatch(
            bus.subscribe(),
            bus.resubscribed(),
            hub.clone(),
            shutdown.clone(),
        ));
        Ok(Arc::new(Self {
            hub,
            messages: MessageStore::new(db.clone()),
            buffs: BuffStore::new(db),
            keepalive: Duration::from_secs(settings.broadcast.keepalive_secs),
            shutdown,
            metrics: BroadcastMetrics {
                clients: metrics.gauge("hubbub_sse_clients", "Connected SSE clients")?,
                events: metrics.counter("hubbub_sse_events_sent_total", "SSE events sent")?,
                slow_disconnects: metrics.counter(
                    "hubbub_sse_slow_client_disconnects_total",
                    "SSE clients cut off for falling behind",
                )?,
            },
        }))
    }

    pub fn routes(self: &Arc<Self>) -> BoxedFilter<(Response,)> {
        let last_event_id = warp::header::optional::<String>("last-event-id")
            .and(
                warp::query::<EventsQuery>()
                    .or(warp::any().map(|| EventsQuery {
                        last_event_id: None,
                    }))
                    .unify(),
            )
            .map(|header: Option<String>, query: EventsQuery| header.or(query.last_event_id));
        let chat = {
            let role = self.clone();
            warp::path!("api" / "chat" / String / "events")
                .and(warp::get())
                .and(last_event_id)
                .map(move |channel: String, last: Option<String>| {
                    let reply = Channel::parse(&channel)
                        .map_err(|e| ApiError::invalid_field("channel", &e.0))
                        .and_then(|channel| {
                            let stream = format!("chat:{channel}");
                            role.events(stream, History::Chat(channel), last)
                        });
                    tagged(
                        ROLE,
                        "/api/chat/{channel}/events",
                        reply.unwrap_or_else(Reply::into_response),
                    )
                })
        };
        let buffs = {
            let role = self.clone();
            warp::path!("api" / "buffs" / "events")
                .and(warp::get())
                .and(last_event_id)
                .map(move |last: Option<String>| {
                    let reply = role.events(BUFFS_STREAM.to_owned(), History::Buffs, last);
                    tagged(
                        ROLE,
                        "/api/buffs/events",
                        reply.unwrap_or_else(Reply::into_response),
                    )
                })
        };
        chat.or(buffs).unify().boxed()
    }

    fn events(
        self: &Arc<Self>,
        stream: String,
        history: History,
        last_event_id: Option<String>,
    ) -> Result<Response, ApiError> {
        let resume_after =
            match last_event_id.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(text) => Some(text.parse::<i64>().ok().filter(|id| *id >= 0).ok_or_else(
                    || ApiError::invalid_field("Last-Event-ID", "must be an event id"),
                )?),
            };
        // Live first, then history: nothing published in between can fall in a gap.
        let subscription = self.hub.subscribe(&stream);
        let (events, queue) = mpsc::channel::<Event>(CONNECTION_QUEUE);
        tokio::spawn(
            self.clone()
                .feed(subscription, history, resume_after, events),
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

    async fn history_after(&self, history: &History, after: i64) -> Result<Vec<Item>, DbErr> {
        let encode = |id: i64, json: Result<String, serde_json::Error>| {
            json.map(|json| Item { id, json })
                .map_err(|e| DbErr::Custom(e.to_string()))
        };
        match history {
            History::Chat(channel) => self
                .messages
                .after(channel.as_str(), after, RESUME_PAGE)
                .await?
                .into_iter()
                .map(|m| encode(m.id, serde_json::to_string(&m)))
                .collect(),
            History::Buffs => self
                .buffs
                .after(after, RESUME_PAGE)
                .await?
                .into_iter()
                .map(|b| encode(b.id, serde_json::to_string(&b)))
                .collect(),
        }
    }

    /// One client's feed: history after `resume_after`, then live events not yet
    /// sent. Ends when the client leaves, falls behind, or the process shuts down.
    async fn feed(
        self: Arc<Self>,
        mut subscription: Subscription,
        history: History,
        resume_after: Option<i64>,
        events: mpsc::Sender<Event>,
    ) {
        self.metrics.clients.inc();
        let _connected = ClientGuard(&self.metrics.clients);
        let mut last_sent = resume_after.unwrap_or(0);
        if resume_after.is_some() {
            loop {
                let page = match self.history_after(&history, last_sent).await {
                    Ok(page) => page,
                    Err(error) => {
                        // The client reconnects and tries again; the log says why.
                        let _ = to_api_error(error, "reading history for a resume");
                        return;
                    }
                };
                let full = page.len() == RESUME_PAGE as usize;
                for item in page {
                    last_sent = item.id;
                    if !self.send(&events, &item).await {
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
                Ok(item) => {
                    if item.id <= last_sent {
                        continue;
                    }
                    last_sent = item.id;
                    if !self.send(&events, &item).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    self.metrics.slow_disconnects.inc();
                    tracing::info!(skipped, "SSE client fell behind; disconnecting it");
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    async fn send(&self, events: &mpsc::Sender<Event>, item: &Item) -> bool {
        let event = Event::default()
            .id(item.id.to_string())
            .event("message")
            .data(item.json.as_str());
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
struct ClientGuard<'a>(&'a IntGauge);

impl Drop for ClientGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Deserialize)]
struct WithId {
    id: i64,
}

/// Moves events from the bus into the hub, encoded once for all clients.
async fn dispatch(
    mut bus: broadcast::Receiver<BusMessage>,
    mut resubscribed: broadcast::Receiver<()>,
    hub: Hub,
    shutdown: CancellationToken,
) {
    let mut resets_open = true;
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => return,
            reset = resubscribed.recv(), if resets_open => {
                match reset {
                    // Messages published while we were not subscribed never reach us:
                    // every client reconnects and resumes from the database instead.
                    Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        tracing::info!("resubscribed to the bus; clients resume from history");
                        hub.disconnect_all();
                    }
                    Err(broadcast::error::RecvError::Closed) => resets_open = false,
                }
                continue;
            }
            received = bus.recv() => received,
        };
        match received {
            Ok(message) => {
                let Some(stream) = stream_of(&message.topic) else {
                    continue;
                };
                let json = String::from_utf8_lossy(&message.payload).into_owned();
                match serde_json::from_str::<WithId>(&json) {
                    Ok(WithId { id }) => hub.deliver(&stream, Item { id, json }),
                    Err(error) => {
                        tracing::warn!(%error, topic = %message.topic, "ignoring a malformed bus message")
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

#[cfg(test)]
mod tests {
    use super::stream_of;

    #[test]
    fn topics_map_to_streams() {
        assert_eq!(
            stream_of("hubbub/chat/general").as_deref(),
            Some("chat:general")
        );
        assert_eq!(stream_of("hubbub/buffs").as_deref(), Some("buffs"));
        assert_eq!(stream_of("other/topic"), None);
    }
}
