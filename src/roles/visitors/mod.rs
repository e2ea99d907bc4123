//! Role `visitors`: the visitor page, `/version` and `/api/stats`.

mod page;
mod salt;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use warp::reply::{Reply, Response};
use warp::{Filter, filters::BoxedFilter};

use crate::build_info::BUILD_INFO;
use crate::cache::Cache;
use crate::configuration::{Environment, Settings};
use crate::domain::{VisitorId, VisitorKey};
use crate::http::{ApiError, RequestMeta, request_meta, tagged};
use crate::metrics::Metrics;
use crate::storage::{Database, to_api_error};

pub use salt::SaltError;
use store::{Totals, VisitStore};

const ROLE: &str = "visitors";
const STATS_CACHE_KEY: &str = "hubbub:visitors:stats";

struct VisitorMetrics {
    visits: IntCounter,
    new_visitors: IntCounter,
    cache_hits: IntCounter,
    cache_misses: IntCounter,
    cache_errors: IntCounter,
}

pub struct Visitors {
    store: VisitStore,
    key: VisitorKey,
    cache: Cache,
    stats_ttl: Duration,
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
        cache: Cache,
        metrics: &Metrics,
    ) -> Result<Arc<Self>, VisitorsError> {
        let key = salt::load_or_create(settings, env).await?;
        Ok(Arc::new(Self {
            store: VisitStore::new(db),
            key,
            cache,
            stats_ttl: Duration::from_millis(settings.visitors.stats_cache_ms),
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
                cache_errors: metrics.counter(
                    "hubbub_stats_cache_errors_total",
                    "Visitor stats cache calls that failed (Redis down or slow)",
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
            .then(|role: Arc<Self>| async move {
                let reply = match role.stats().await {
                    Ok(totals) => warp::reply::json(&totals).into_response(),
                    Err(error) => error.into_response(),
                };
                tagged(ROLE, "/api/stats", reply)
            });
        page.or(version).unify().or(stats).unify().boxed()
    }

    async fn page(&self, meta: &RequestMeta) -> Response {
        if meta.head {
            // Uptime monitors probe with HEAD: the page's headers, and no visit.
            return warp::reply::with_header(warp::reply::html(""), "cache-control", "no-store")
                .into_response();
        }
        let visitor = VisitorId::derive(&self.key, meta.client_ip);
        match self.store.record(&visitor).await {
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
            Err(error) => to_api_error(error, "recording a visit").into_html_response(),
        }
    }

    /// Totals from the cache when fresh, else from the database (refilling the cache).
    async fn stats(&self) -> Result<Totals, ApiError> {
        match self.cache.get(STATS_CACHE_KEY).await {
            Ok(Some(cached)) => {
                if let Ok(totals) = serde_json::from_str::<Totals>(&cached) {
                    self.metrics.cache_hits.inc();
                    return Ok(totals);
                }
            }
            Ok(None) => {}
            Err(error) => {
                self.metrics.cache_errors.inc();
                tracing::debug!(%error, "stats cache unavailable; reading the database");
            }
        }
        self.metrics.cache_misses.inc();
        let totals = self
            .store
            .totals()
            .await
            .map_err(|e| to_api_error(e, "reading visit totals"))?;
        if let Ok(json) = serde_json::to_string(&totals)
            && let Err(error) = self.cache.set(STATS_CACHE_KEY, &json, self.stats_ttl).await
        {
            self.metrics.cache_errors.inc();
            tracing::debug!(%error, "could not refill the stats cache");
        }
        Ok(totals)
    }
}
