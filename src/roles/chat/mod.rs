//! Role `chat`: post messages (stored first, then relayed to the bus), read history,
//! and the chat page.

mod batch;
mod rate_limit;

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus::IntCounter;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::{Filter, filters::BoxedFilter};

use crate::build_info::BUILD_INFO;
use crate::bus::Bus;
use crate::cache::Cache;
use crate::configuration::Settings;
use crate::domain::{Channel, MessageText, UserName};
use crate::http::page::{self, Page, Section};
use crate::http::{ApiError, RequestMeta, body, request_meta, tagged};
use crate::metrics::Metrics;
use crate::storage::{Database, to_api_error};
use crate::streams::chat::{self as store, MessageStore, NewPost};
use crate::streams::outbox::{Outbox, RelayMetrics};

use batch::{BatchMetrics, PostBatcher};
use rate_limit::RateLimiter;

const ROLE: &str = "chat";
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 200;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMessage {
    user: String,
    text: String,
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    before: Option<String>,
    limit: Option<String>,
}

pub struct Chat {
    store: MessageStore,
    batcher: PostBatcher,
    limiter: RateLimiter,
    posted: IntCounter,
    body_limit: u64,
}

impl Chat {
    /// Builds the role and starts its outbox relay.
    pub fn new(
        settings: &Settings,
        db: Database,
        cache: &Cache,
        bus: Bus,
        metrics: &Metrics,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, prometheus::Error> {
        let outbox = Outbox::start(
            db.clone(),
            &store::OUTBOX,
            bus,
            RelayMetrics {
                published: metrics.counter(
                    "hubbub_chat_messages_published_total",
                    "Chat messages the broker acknowledged",
                )?,
                failures: metrics.counter(
                    "hubbub_chat_publish_failures_total",
                    "Chat message publishes that failed (retried later)",
                )?,
                backlog: metrics.outbox_backlog("chat"),
            },
            shutdown,
        );
        let store = MessageStore::new(db);
        let batcher = PostBatcher::start(
            store.clone(),
            outbox.clone(),
            Duration::from_millis(settings.database.acquire_timeout_ms),
            BatchMetrics {
                statements: metrics.counter(
                    "hubbub_chat_insert_statements_total",
                    "Statements that stored chat messages (messages posted / statements is the mean batch size)",
                )?,
                waiting: metrics.gauge(
                    "hubbub_chat_posts_waiting",
                    "Chat posts waiting for a batch to be stored (the database is busy with the previous ones)",
                )?,
            },
        );
        Ok(Arc::new(Self {
            store,
            batcher,
            limiter: RateLimiter::new(
                settings.chat.rate_per_minute,
                settings.chat.rate_burst,
                settings.chat.rate_limit_ipv6_prefix,
                cache,
            ),
            posted: metrics.counter("hubbub_chat_messages_posted_total", "Chat messages stored")?,
            body_limit: settings.http.body_limit,
        }))
    }

    pub fn routes(self: &Arc<Self>) -> BoxedFilter<(Response,)> {
        let with_role = {
            let role = self.clone();
            warp::any().map(move || role.clone())
        };
        let post = warp::path!("api" / "chat" / String / "messages")
            .and(warp::post())
            .and(with_role.clone())
            .and(request_meta())
            .and(body::json_deferred::<NewMessage>(self.body_limit))
            .then(
                |channel: String,
                 role: Arc<Self>,
                 meta: RequestMeta,
                 body: Result<NewMessage, ApiError>| async move {
                    let reply = match role.post(&channel, &meta, body).await {
                        Ok(reply) => reply,
                        Err(error) => error.into_response(),
                    };
                    tagged(ROLE, "/api/chat/{channel}/messages", reply)
                },
            );
        let history = warp::path!("api" / "chat" / String / "messages")
            .and(warp::get())
            .and(with_role)
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .then(
                |channel: String, role: Arc<Self>, query: String| async move {
                    let reply = match role.history(&channel, &query).await {
                        Ok(reply) => reply,
                        Err(error) => error.into_response(),
                    };
                    tagged(ROLE, "/api/chat/{channel}/messages", reply)
                },
            );
        // `/chat` and `/chat/` alike (`?channel=` picks the channel); the page refers
        // to everything by absolute path.
        let page = warp::path("chat")
            .and(warp::path::end())
            .and(warp::get())
            .map(|| {
                tagged(
                    ROLE,
                    "/chat/",
                    page::response(CHAT_PAGE.as_str(), "no-cache"),
                )
            });
        post.or(history).unify().or(page).unify().boxed()
    }

    async fn post(
        &self,
        channel: &str,
        meta: &RequestMeta,
        body: Result<NewMessage, ApiError>,
    ) -> Result<Response, ApiError> {
        let channel =
            Channel::parse(channel).map_err(|e| ApiError::invalid_field("channel", &e.0))?;
        let body = body?;
        let user =
            UserName::parse(&body.user).map_err(|e| ApiError::invalid_field("user", &e.0))?;
        let text =
            MessageText::parse(&body.text).map_err(|e| ApiError::invalid_field("text", &e.0))?;
        if let Err(retry_after) = self.limiter.check(meta.client_ip).await {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many messages; try again in {retry_after} s"),
            )
            .with_retry_after(retry_after));
        }
        let message = self
            .batcher
            .insert(NewPost {
                channel,
                user,
                text,
            })
            .await?;
        self.posted.inc();
        Ok(
            warp::reply::with_status(warp::reply::json(&message), StatusCode::CREATED)
                .into_response(),
        )
    }

    async fn history(&self, channel: &str, query: &str) -> Result<Response, ApiError> {
        let channel =
            Channel::parse(channel).map_err(|e| ApiError::invalid_field("channel", &e.0))?;
        let query: HistoryQuery = serde_urlencoded::from_str(query)
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?;
        let before =
            match query.before.as_deref() {
                None | Some("") => None,
                Some(text) => Some(text.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(
                    || ApiError::invalid_field("before", "must be a positive message id"),
                )?),
            };
        let limit = match query.limit.as_deref() {
            None | Some("") => DEFAULT_LIMIT,
            Some(text) => text
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::invalid_field("limit", "must be a number from 1 to 200")
                })?,
        };
        let messages = self
            .store
            .history(&channel, before, limit)
            .await
            .map_err(|e| to_api_error(e, "reading chat history"))?;
        Ok(warp::reply::json(&messages).into_response())
    }
}

/// The chat page, rendered once: it is the same for everyone; `chat.js` does the rest.
static CHAT_PAGE: LazyLock<String> = LazyLock::new(|| {
    Page {
        title: "Chat",
        section: Section::Chat,
        main: include_str!("../../../assets/pages/chat.html"),
        scripts: &["chat.js"],
        footer: "",
    }
    .render(&BUILD_INFO)
});
