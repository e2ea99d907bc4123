//! Role `visitors`: the visitor page, `/version` and `/api/stats`.

mod batch;
mod page;
mod salt;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prometheus::IntCounter;
use warp::http::header;
use warp::reply::{Reply, Response};
use warp::{Filter, filters::BoxedFilter};

use crate::build_info::BUILD_INFO;
use crate::cache::BodyCache;
use crate::configuration::{Environment, Settings};
use crate::domain::{VisitorId, VisitorKey, client_network};
use crate::http::{ApiError, FastFuture, FastRoutes, RequestMeta, request_meta, tagged};
use crate::metrics::Metrics;
use crate::storage::{Database, to_api_error};

use batch::{BatchSettings, VisitBatcher};
pub use salt::SaltError;
use store::VisitStore;

const ROLE: &str = "visitors";
const STATS_ROUTE: &str = "/api/stats";

struct VisitorMetrics {
    visits: IntCounter,
    new_visitors: IntCounter,
    cache_hits: IntCounter,
    cache_misses: IntCounter,
}

pub struct Visitors {
    store: VisitStore,
    batcher: VisitBatcher,
    key: VisitorKey,
    ipv6_prefix: u8,
    /// The `/api/stats` body, ready to send; `None` when `stats_cache_ms` is 0.
    stats_cache: Option<BodyCache<()>>,
    owner_name: String,
    owner_url: Option<String>,
    metrics: VisitorMetrics,
}

#[derive(Debug, thiserror::Error)]
pub enum VisitorsError {
    #[error(transparent)]
    Salt(#[from] SaltError),
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl Visitors {
    pub async fn new(
        settings: &Settings,
        env: &Environment,
        db: Database,
        metrics: &Metrics,
    ) -> Result<Arc<Self>, VisitorsError> {
        let key = salt::load_or_create(settings, env).await?;
        let store = VisitStore::new(db);
        let visitors = &settings.visitors;
        let batcher = VisitBatcher::start(
            store.clone(),
            BatchSettings {
                max_size: visitors.batch_max_size,
                max_wait: Duration::from_micros(visitors.batch_max_wait_us),
                max_in_flight: visitors.batch_max_in_flight,
                queue_timeout: Duration::from_millis(settings.database.acquire_timeout_ms),
            },
            metrics.counter(
                "hubbub_visit_batches_total",
                "Statements that recorded visits (each one commit for a batch of visits)",
            )?,
        );
        let stats_cache = (visitors.stats_cache_ms > 0).then(|| {
            BodyCache::new(
                "visitor-stats",
                1,
                4096,
                Duration::from_millis(visitors.stats_cache_ms),
            )
        });
        Ok(Arc::new(Self {
            store,
            batcher,
            key,
            ipv6_prefix: visitors.ipv6_prefix,
            stats_cache,
            owner_name: settings.visitors.owner_name.clone(),
            owner_url: settings.visitors.owner_url.clone(),
            metrics: VisitorMetrics {
                visits: metrics.counter("hubbub_visits_total", "Visits recorded")?,
                new_visitors: metrics.counter(
                    "hubbub_new_visitors_total",
                    "Visitors seen for the first time",
                )?,
                cache_hits: metrics.counter(
                    "hubbub_stats_cache_hits_total",
                    "Visitor stats answered from the cache",
                )?,
                cache_misses: metrics.counter(
                    "hubbub_stats_cache_misses_total",
                    "Visitor stats read from the database",
                )?,
            },
        }))
    }

    pub fn routes(self: &Arc<Self>) -> BoxedFilter<(Response,)> {
        let with_role = {
            let role = self.clone();
            warp::any().map(move || role.clone())
        };
        let page = warp::path::end()
            .and(warp::get())
            .and(with_role.clone())
            .and(request_meta())
            .then(|role: Arc<Self>, meta: RequestMeta| async move {
                tagged(ROLE, "/", role.page(&meta).await)
            });
        let version = warp::path!("version")
            .and(warp::get())
            .map(|| tagged(ROLE, "/version", warp::reply::json(&BUILD_INFO)));
        let stats = warp::path!("api" / "stats")
            .and(warp::get())
            .and(with_role)
            .then(|role: Arc<Self>| async move { role.stats_response().await });
        page.or(version).unify().or(stats).unify().boxed()
    }

    /// `/api/stats` without a query (what `visitors.js` and monitors ask), answered
    /// ahead of warp's filters; with one, warp's route gives the same answer.
    pub fn fast_routes(self: &Arc<Self>, routes: FastRoutes) -> FastRoutes {
        let role = self.clone();
        routes.with(STATS_ROUTE, move |query| {
            let role = role.clone();
            query
                .is_none()
                .then(|| Box::pin(async move { role.stats_response().await }) as FastFuture)
        })
    }

    async fn stats_response(&self) -> Response {
        let reply = match self.stats().await {
            Ok(body) => json_response(body),
            Err(error) => error.into_response(),
        };
        tagged(ROLE, STATS_ROUTE, reply)
    }

    async fn page(&self, meta: &RequestMeta) -> Response {
        if meta.head {
            // Uptime monitors probe with HEAD: the page's headers, and no visit.
            return warp::reply::with_header(warp::reply::html(""), "cache-control", "no-store")
                .into_response();
        }
        let client = client_network(meta.client_ip, self.ipv6_prefix);
        let visitor = VisitorId::derive(&self.key, client);
        match self.batcher.record(visitor).await {
            Ok(visit) => {
                self.metrics.visits.inc();
                if visit.is_first() {
                    self.metrics.new_visitors.inc();
                }
                let owner = page::Owner {
                    name: &self.owner_name,
                    url: self.owner_url.as_deref(),
                };
                let html = page::render(&visit, &owner, &BUILD_INFO);
                warp::reply::with_header(warp::reply::html(html), "cache-control", "no-store")
                    .into_response()
            }
            Err(error) => error.into_html_response(),
        }
    }

    /// The totals' JSON: from the in-process cache while fresh, else from the
    /// database (one read for all the requests that missed at once).
    async fn stats(&self) -> Result<Bytes, ApiError> {
        let load = async {
            self.metrics.cache_misses.inc();
            let totals = self
                .store
                .totals()
                .await
                .map_err(|e| to_api_error(e, "reading visit totals"))?;
            serde_json::to_vec(&totals)
                .map(Bytes::from)
                .map_err(|_| ApiError::internal())
        };
        let Some(cache) = &self.stats_cache else {
            return load.await;
        };
        if let Some(body) = cache.get(&()).await {
            self.metrics.cache_hits.inc();
            return Ok(body);
        }
        cache
            .get_or_load((), load)
            .await
            .map_err(|error| (*error).clone())
    }
}

fn json_response(body: Bytes) -> Response {
    let mut response = Response::new(body.into());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}
