//! Role `broadcast`: Server-Sent Events of new chat messages and new buffs, with
//! resume from history (`Last-Event-ID`), so a client can reconnect to any
//! instance and lose nothing. It knows streams (`crate::streams`), not the roles
//! that write them.

mod direct;
mod feed;
mod hub;
#[cfg(test)]
mod test_support;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::{Reply, Response};
use warp::{Filter, filters::BoxedFilter};

use crate::bus::{Bus, BusMessage};
use crate::configuration::Settings;
use crate::domain::Channel;
use crate::http::{ApiError, ConnectionWire, tagged};
use crate::metrics::Metrics;
use crate::storage::Database;
use crate::streams::{self, PayloadError, StreamEvent, StreamKey, Streams};

use feed::{Feed, FeedMetrics};
use hub::{Hub, HubMetrics, Refused};

const ROLE: &str = "broadcast";
/// How long a new client waits for its stream's position (one database read).
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// The topics this role needs from the bus.
pub fn subscriptions() -> Vec<String> {
    streams::all_topics()
}

pub struct Broadcast {
    hub: Hub,
    streams: Streams,
    keepalive: Duration,
    shutdown: CancellationToken,
    metrics: Arc<FeedMetrics>,
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
        let streams = Streams::new(db);
        let keepalive = Duration::from_secs(settings.broadcast.keepalive_secs);
        let events = metrics.counter("hubbub_sse_events_sent_total", "SSE events sent")?;
        let hub = Hub::new(
            streams.clone(),
            HubMetrics {
                streams: metrics.gauge(
                    "hubbub_broadcast_streams",
                    "Streams with at least one SSE client on this instance",
                )?,
                gaps: metrics.counter(
                    "hubbub_broadcast_gaps_total",
                    "Events found missing from the bus by their sequence number (read back from the database)",
                )?,
                backfills: metrics.counter(
                    "hubbub_broadcast_backfills_total",
                    "Reads of a stream from the database after a gap or a resubscription",
                )?,
                sent: events.clone(),
            },
            settings.broadcast.max_streams,
            keepalive,
            shutdown.clone(),
        );
        tokio::spawn(dispatch(
            bus.subscribe(),
            bus.resubscribed(),
            hub.clone(),
            shutdown.clone(),
        ));
        Ok(Arc::new(Self {
            hub,
            streams,
            keepalive,
            shutdown,
            metrics: Arc::new(FeedMetrics {
                clients: metrics.gauge("hubbub_sse_clients", "Connected SSE clients")?,
                events,
                slow_disconnects: metrics.counter(
                    "hubbub_sse_slow_client_disconnects_total",
                    "SSE clients cut off for falling behind before their first event",
                )?,
                catchups: metrics.counter(
                    "hubbub_sse_client_catchups_total",
                    "SSE clients that fell over 1,024 events behind and read them from the database, staying connected",
                )?,
            }),
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
            .map(|header: Option<String>, query: EventsQuery| header.or(query.last_event_id))
            .and(warp::ext::optional::<ConnectionWire>());
        let chat = {
            let role = self.clone();
            warp::path!("api" / "chat" / String / "events")
                .and(warp::get())
                .and(last_event_id)
                .then(
                    move |channel: String, last: Option<String>, wire: Option<ConnectionWire>| {
                        let role = role.clone();
                        async move {
                            let reply = match Channel::parse(&channel) {
                                Ok(channel) => {
                                    role.events(StreamKey::Chat(channel), last, wire).await
                                }
                                Err(e) => Err(ApiError::invalid_field("channel", &e.0)),
                            };
                            tagged(
                                ROLE,
                                "/api/chat/{channel}/events",
                                reply.unwrap_or_else(Reply::into_response),
                            )
                        }
                    },
                )
        };
        let buffs = {
            let role = self.clone();
            warp::path!("api" / "buffs" / "events")
                .and(warp::get())
                .and(last_event_id)
                .then(move |last: Option<String>, wire: Option<ConnectionWire>| {
                    let role = role.clone();
                    async move {
                        let reply = role.events(StreamKey::Buffs, last, wire).await;
                        tagged(
                            ROLE,
                            "/api/buffs/events",
                            reply.unwrap_or_else(Reply::into_response),
                        )
                    }
                })
        };
        chat.or(buffs).unify().boxed()
    }

    async fn events(
        &self,
        key: StreamKey,
        last_event_id: Option<String>,
        wire: Option<ConnectionWire>,
    ) -> Result<Response, ApiError> {
        let resume_after =
            match last_event_id.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(text) => Some(text.parse::<i64>().ok().filter(|id| *id >= 0).ok_or_else(
                    || ApiError::invalid_field("Last-Event-ID", "must be an event id"),
                )?),
            };
        // Live first, then history: nothing published in between can fall in a gap.
        let mut subscription = self.hub.subscribe(&key).map_err(|refused| match refused {
            Refused::TooManyStreams => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_streams",
                "this instance serves as many streams as it may (broadcast.max_streams); try again later",
            )
            .with_retry_after(5),
            Refused::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "this instance is stopping; try again",
            )
            .with_retry_after(1),
        })?;
        // The stream's task must know where the stream stands before the client
        // counts as connected: whatever is committed after the response starts is
        // then sent live (or was in the history the client reads).
        if tokio::time::timeout(READY_TIMEOUT, subscription.ready())
            .await
            .is_err()
        {
            return Err(ApiError::unavailable("database"));
        }
        let feed = Feed::new(
            subscription,
            key,
            self.streams.clone(),
            resume_after,
            self.keepalive,
            self.shutdown.clone(),
            self.metrics.clone(),
        )
        .with_wire(wire.map(|ConnectionWire(wire)| wire));
        let mut response = warp::reply::stream(feed::body(feed)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        Ok(response)
    }
}

/// Moves events from the bus to their streams' tasks. `biased`: a resubscription
/// is acted on before any message that arrived after it.
async fn dispatch(
    mut bus: broadcast::Receiver<BusMessage>,
    mut resubscribed: broadcast::Receiver<()>,
    hub: Hub,
    shutdown: CancellationToken,
) {
    let mut resets_open = true;
    loop {
        let received = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            reset = resubscribed.recv(), if resets_open => {
                match reset {
                    // Messages published while we were not subscribed never reach us:
                    // every active stream reads them back from the database.
                    Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        tracing::info!("resubscribed to the bus; streams catch up from the database");
                        hub.resync_all();
                    }
                    Err(broadcast::error::RecvError::Closed) => resets_open = false,
                }
                continue;
            }
            received = bus.recv() => received,
        };
        match received {
            Ok(message) => {
                let Some(key) = StreamKey::from_topic(&message.topic) else {
                    continue;
                };
                match StreamEvent::decode(message.payload) {
                    Ok(event) => hub.offer(&key, event),
                    Err(PayloadError::Unsequenced(_)) => hub.resync(&key),
                    Err(error) => {
                        tracing::warn!(%error, topic = %message.topic, "ignoring a malformed bus message");
                    }
                }
            }
            Err(broadcast::error::RecvError::Lagged(skipped)) => {
                tracing::warn!(
                    skipped,
                    "broadcast dispatcher fell behind the bus; streams catch up from the database"
                );
                hub.resync_all();
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
