//! Role `buffs`: staff create quiz questions (bearer token), viewers list and read
//! them; new buffs go out on the bus to the broadcast role's SSE stream. Also the
//! viewers' page (`/buffs/`) and the staff dashboard (`/admin/buffs/`).

mod auth;
mod invalidation;
mod lists;

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use prometheus::IntCounter;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::{Reply, Response};
use warp::{Filter, filters::BoxedFilter};

use crate::build_info::BUILD_INFO;
use crate::bus::Bus;
use crate::cache::Cache;
use crate::configuration::Settings;
use crate::domain::{Answers, Question};
use crate::http::page::{self, Page, Section};
use crate::http::{ApiError, FastFuture, FastRoutes, RequestMeta, body, request_meta, tagged};
use crate::metrics::Metrics;
use crate::storage::{Database, to_api_error};
use crate::streams::buffs::{self as store, Buff, BuffStore};
use crate::streams::outbox::{Outbox, RelayMetrics};

use auth::AdminTokens;
pub use invalidation::subscriptions;
use lists::{Freshness, ListCache, Usage, VERSION_KEY};

const ROLE: &str = "buffs";
const LIST_ROUTE: &str = "/api/buffs";
const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;
const VERSION_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long a create waits for its buff to come back on the bus (then every
/// instance has been told) before answering anyway.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBuff {
    question: String,
    answers: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    before: Option<String>,
    limit: Option<String>,
}

struct BuffMetrics {
    created: IntCounter,
    auth_failures: IntCounter,
    cache_hits: IntCounter,
    cache_misses: IntCounter,
}

pub struct Buffs {
    store: BuffStore,
    tokens: AdminTokens,
    /// Redis, where configured: the version key keeps instances without a shared bus
    /// (and older releases) in step.
    cache: Cache,
    lists: Arc<ListCache>,
    outbox: Arc<Outbox<Buff>>,
    /// How long a creation waits for the one before it (see
    /// `Outbox::append_in_order`).
    create_wait: Duration,
    body_limit: u64,
    metrics: BuffMetrics,
}

impl Buffs {
    pub fn new(
        settings: &Settings,
        db: Database,
        cache: Cache,
        bus: Bus,
        metrics: &Metrics,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, prometheus::Error> {
        let tokens = AdminTokens::from_secret(settings.buffs.admin_token.as_ref());
        if tokens.is_empty() {
            tracing::warn!("no buffs.admin_token_file configured: creating buffs is refused");
        }
        let freshness = if !bus.is_shared() && cache.is_shared() {
            Freshness::RedisVersion(cache.clone())
        } else {
            Freshness::Bus(bus.clone())
        };
        let lists = ListCache::new(
            freshness,
            Duration::from_secs(settings.buffs.cache_ttl_secs),
            Usage {
                entries: metrics.gauge(
                    "hubbub_buffs_cache_entries",
                    "Buff list pages held in the process's cache",
                )?,
                bytes: metrics.gauge(
                    "hubbub_buffs_cache_bytes",
                    "Bytes the process's buff list cache holds (bodies and overhead)",
                )?,
            },
        );
        invalidation::follow(&bus, lists.clone(), shutdown.clone());
        let outbox = Outbox::start(
            db.clone(),
            &store::OUTBOX,
            bus,
            RelayMetrics {
                published: metrics.counter(
                    "hubbub_buffs_published_total",
                    "Buffs the broker acknowledged",
                )?,
                failures: metrics.counter(
                    "hubbub_buffs_publish_failures_total",
                    "Buff publishes that failed (retried later)",
                )?,
                backlog: metrics.outbox_backlog("buffs"),
            },
            shutdown,
        );
        Ok(Arc::new(Self {
            store: BuffStore::new(db),
            tokens,
            cache,
            lists,
            outbox,
            create_wait: Duration::from_millis(settings.database.acquire_timeout_ms),
            body_limit: settings.http.body_limit,
            metrics: BuffMetrics {
                created: metrics.counter("hubbub_buffs_created_total", "Buffs created")?,
                auth_failures: metrics.counter(
                    "hubbub_auth_failures_total",
                    "Requests refused for a missing or wrong admin token",
                )?,
                cache_hits: metrics.counter(
                    "hubbub_buffs_cache_hits_total",
                    "Buff lists answered from the cache",
                )?,
                cache_misses: metrics.counter(
                    "hubbub_buffs_cache_misses_total",
                    "Buff lists read from the database",
                )?,
            },
        }))
    }

    pub fn routes(self: &Arc<Self>) -> BoxedFilter<(Response,)> {
        let with_role = {
            let role = self.clone();
            warp::any().map(move || role.clone())
        };
        let body_limit = self.body_limit;
        // `POST /buff` and `GET /buffs` are the old services' routes, kept for their clients.
        let create = |path: BoxedFilter<()>, template: &'static str| {
            path.and(warp::post())
                .and(with_role.clone())
                .and(request_meta())
                .and(warp::header::optional::<String>("authorization"))
                .and(body::json_deferred::<NewBuff>(body_limit))
                .then(
                    move |role: Arc<Self>,
                          meta: RequestMeta,
                          authorization: Option<String>,
                          body| async move {
                        let reply = match role
                            .create(&meta, authorization.as_deref(), template, body)
                            .await
                        {
                            Ok(reply) => reply,
                            Err(reply) => reply,
                        };
                        tagged(ROLE, template, reply)
                    },
                )
                .boxed()
        };
        let list = |path: BoxedFilter<()>, template: &'static str| {
            path.and(warp::get())
                .and(with_role.clone())
                .and(warp::query::raw().or(warp::any().map(String::new)).unify())
                .then(move |role: Arc<Self>, query: String| async move {
                    role.list_response(&query, template).await
                })
                .boxed()
        };
        let get = warp::path!("api" / "buffs" / String)
            .and(warp::get())
            .and(with_role.clone())
            .then(|id: String, role: Arc<Self>| async move {
                let reply = match role.get(&id).await {
                    Ok(reply) => reply,
                    Err(error) => error.into_response(),
                };
                tagged(ROLE, "/api/buffs/{id}", reply)
            });
        // The viewers' page is `/buffs/`; `/buffs` stays the old JSON list, except that
        // a browser navigating there (HTML first in Accept) is sent to the page.
        let viewer = warp::path!("buffs")
            .and(warp::get())
            .and(warp::path::full())
            .and(warp::header::optional::<String>("accept"))
            .and_then(
                |full: warp::path::FullPath, accept: Option<String>| async move {
                    if full.as_str() == "/buffs/" {
                        Ok(tagged(
                            ROLE,
                            "/buffs/",
                            page::response(VIEWER_PAGE.as_str(), "no-cache"),
                        ))
                    } else if accept.as_deref().is_some_and(prefers_html) {
                        let mut reply = warp::reply::with_header(
                            StatusCode::PERMANENT_REDIRECT,
                            header::LOCATION,
                            "/buffs/",
                        )
                        .into_response();
                        reply
                            .headers_mut()
                            .insert(header::VARY, HeaderValue::from_static("accept"));
                        Ok(tagged(ROLE, "/buffs", reply))
                    } else {
                        Err(warp::reject::not_found())
                    }
                },
            );
        let dashboard = warp::path!("admin" / "buffs").and(warp::get()).map(|| {
            tagged(
                ROLE,
                "/admin/buffs/",
                page::response(DASHBOARD_PAGE.as_str(), "no-cache"),
            )
        });
        // Reads first: they are nearly every request. The viewers' page comes
        // before the old `/buffs` list, which it shares a path with.
        list(warp::path!("api" / "buffs").boxed(), LIST_ROUTE)
            .or(get)
            .unify()
            .or(create(warp::path!("api" / "buffs").boxed(), "/api/buffs"))
            .unify()
            .or(viewer)
            .unify()
            .or(dashboard)
            .unify()
            .or(list(warp::path!("buffs").boxed(), "/buffs"))
            .unify()
            .or(create(warp::path!("buff").boxed(), "/buff"))
            .unify()
            .boxed()
    }

    /// The newest page of `/api/buffs`, as the viewers' page and the dashboard ask
    /// for it (no query, or only `limit`), answered ahead of warp's filters; other
    /// queries (`before`, anything unusual) take warp's route to the same code.
    pub fn fast_routes(self: &Arc<Self>, routes: FastRoutes) -> FastRoutes {
        let role = self.clone();
        routes.with(LIST_ROUTE, move |query| {
            let query = match query {
                None => String::new(),
                Some(query) if is_newest_page(query) => query.to_owned(),
                Some(_) => return None,
            };
            let role = role.clone();
            Some(
                Box::pin(async move { role.list_response(&query, LIST_ROUTE).await }) as FastFuture,
            )
        })
    }

    async fn list_response(&self, query: &str, template: &'static str) -> Response {
        let mut reply = match self.list(query).await {
            Ok(reply) => reply,
            Err(error) => error.into_response(),
        };
        if template == "/buffs" {
            // What a browser gets there depends on Accept (see `viewer`).
            reply
                .headers_mut()
                .insert(header::VARY, HeaderValue::from_static("accept"));
        }
        tagged(ROLE, template, reply)
    }

    async fn create(
        &self,
        meta: &RequestMeta,
        authorization: Option<&str>,
        route: &str,
        body: Result<NewBuff, ApiError>,
    ) -> Result<Response, Response> {
        // Authentication first: an unauthenticated caller learns nothing about input rules.
        if !self.tokens.allows(authorization) {
            self.metrics.auth_failures.inc();
            auth::log_failure(meta.client_ip, route);
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid admin bearer token is required",
            )
            .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"hubbub\""),
            );
            return Err(response);
        }
        let body = body.map_err(Reply::into_response)?;
        let question = Question::parse(&body.question)
            .map_err(|e| ApiError::invalid_field("question", &e.0).into_response())?;
        let answers = Answers::parse(&body.answers)
            .map_err(|e| ApiError::invalid_field("answers", &e.0).into_response())?;
        let created = self
            .outbox
            .append_in_order(self.create_wait, self.store.create(&question, &answers))
            .await;
        let Ok(created) = created else {
            tracing::warn!(
                "buff creations wait for the one before: the database is not keeping up"
            );
            return Err(ApiError::unavailable("database").into_response());
        };
        let buff = created.map_err(|e| to_api_error(e, "creating a buff").into_response())?;
        self.metrics.created.inc();
        // Before answering, every instance must stop serving lists without it: this
        // one at once, the others when the buff reaches them on the bus (waited for
        // here, bounded) or, without a shared bus, through the Redis version key.
        self.lists.invalidate();
        if self.cache.is_shared() {
            let version = uuid::Uuid::new_v4().to_string();
            if let Err(error) = self.cache.set(VERSION_KEY, &version, VERSION_TTL).await {
                tracing::warn!(%error, "could not invalidate the cached buff lists");
            }
        }
        if !self
            .lists
            .wait_until_announced(buff.id, ANNOUNCE_TIMEOUT)
            .await
        {
            tracing::warn!(
                id = buff.id,
                "a new buff did not come back on the bus in time; other instances may list it late"
            );
        }
        Ok(warp::reply::with_status(warp::reply::json(&buff), StatusCode::CREATED).into_response())
    }

    async fn list(&self, query: &str) -> Result<Response, ApiError> {
        let query: ListQuery = serde_urlencoded::from_str(query)
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?;
        let before = match query.before.as_deref() {
            None | Some("") => None,
            Some(text) => Some(parse_id(text, "before")?),
        };
        let limit = match query.limit.as_deref() {
            None | Some("") => DEFAULT_LIMIT,
            Some(text) => text
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::invalid_field("limit", "must be a number from 1 to 100")
                })?,
        };
        let load = async {
            let buffs = self
                .store
                .list(before, limit)
                .await
                .map_err(|e| to_api_error(e, "listing buffs"))?;
            serde_json::to_vec(&buffs)
                .map(Bytes::from)
                .map_err(|_| ApiError::internal())
        };
        // Only the newest page is cached: pages before an id come from the database.
        if before.is_some() {
            self.metrics.cache_misses.inc();
            return load.await.map(json_response);
        }
        let (body, hit) = self.lists.newest(limit, load).await?;
        if hit {
            self.metrics.cache_hits.inc();
        } else {
            self.metrics.cache_misses.inc();
        }
        Ok(json_response(body))
    }

    async fn get(&self, id: &str) -> Result<Response, ApiError> {
        let id = parse_id(id, "id")?;
        match self.store.get(id).await {
            Ok(Some(buff)) => Ok(warp::reply::json(&buff).into_response()),
            Ok(None) => Err(ApiError::not_found(format!("no buff with id {id}"))),
            Err(error) => Err(to_api_error(error, "reading a buff")),
        }
    }
}

/// `limit=N` alone: the newest page's query as the pages send it.
fn is_newest_page(query: &str) -> bool {
    query
        .strip_prefix("limit=")
        .is_some_and(|n| !n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether a request's Accept header puts HTML first, as a browser navigating does.
fn prefers_html(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .and_then(|range| range.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("text/html"))
}

/// The viewers' page, rendered once; `buffs.js` fills it and keeps it live.
static VIEWER_PAGE: LazyLock<String> = LazyLock::new(|| {
    Page {
        title: "Buffs",
        section: Section::Buffs,
        main: include_str!("../../../assets/pages/buffs.html"),
        scripts: &["buffs.js"],
        footer: "",
    }
    .render(&BUILD_INFO)
});

/// The staff dashboard, rendered once. It holds no secret: the admin token is
/// typed into it and kept in the tab's sessionStorage by `dashboard.js`.
static DASHBOARD_PAGE: LazyLock<String> = LazyLock::new(|| {
    Page {
        title: "Buffs dashboard",
        section: Section::Dashboard,
        main: include_str!("../../../assets/pages/dashboard.html"),
        scripts: &["dashboard.js"],
        footer: "",
    }
    .render(&BUILD_INFO)
});

fn parse_id(text: &str, field: &str) -> Result<i64, ApiError> {
    text.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::invalid_field(field, "must be a positive buff id"))
}

fn json_response(body: Bytes) -> Response {
    let mut response = Response::new(body.into());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::{is_newest_page, prefers_html};

    #[test]
    fn only_a_lone_limit_is_the_newest_pages_query() {
        assert!(is_newest_page("limit=20") && is_newest_page("limit=100"));
        for query in [
            "",
            "limit=",
            "limit=1000",
            "limit=2&before=3",
            "before=3",
            "limit=+2",
        ] {
            assert!(!is_newest_page(query), "{query}");
        }
    }

    #[test]
    fn browsers_navigating_prefer_html() {
        assert!(prefers_html(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        ));
        assert!(prefers_html("Text/HTML; q=1"));
        assert!(!prefers_html("*/*"));
        assert!(!prefers_html("application/json, text/html"));
        assert!(!prefers_html(""));
    }
}
