//! Builds the application from its configuration: database, cache, roles, the
//! public and admin listeners; runs it until told to stop.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use warp::http::header;
use warp::reply::{Reply, Response};
use warp::{Filter, filters::BoxedFilter};

use crate::bus::{Bus, BusError};
use crate::cache::{Cache, CacheError};
use crate::configuration::{Environment, Settings};
use crate::domain::Role;
use crate::http::client_ip::TrustedProxies;
use crate::http::health::{self, Check};
use crate::http::middleware::Shared;
use crate::http::{ApiError, FastRoutes, assets, error::recover, server, tagged};
use crate::lifecycle;
use crate::metrics::Metrics;
use crate::roles::broadcast::{self, Broadcast};
use crate::roles::buffs::{self, Buffs};
use crate::roles::chat::Chat;
use crate::roles::visitors::{Visitors, VisitorsError};
use crate::storage::{Database, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cache: {0}")]
    Cache(#[from] CacheError),
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("visitors: {0}")]
    Visitors(#[from] VisitorsError),
    #[error("cannot listen on {key} = {addr}: {source}")]
    Listen {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("role `{0}` needs the bus, which was not set up")]
    NoBus(Role),
}

pub struct Application {
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    roles: BTreeSet<Role>,
    public: (TcpListener, BoxedFilter<(Response,)>),
    /// The public listener's hot reads, answered ahead of `public`'s filters.
    fast: FastRoutes,
    admin: (TcpListener, BoxedFilter<(Response,)>),
    shared: Arc<Shared>,
    drain: Duration,
    shutdown: CancellationToken,
    bus: Option<Bus>,
}

impl Application {
    pub async fn build(
        settings: Settings,
        env: Environment,
        requested: &[Role],
    ) -> Result<Self, StartupError> {
        // `serve` with no roles serves all of them.
        let roles: BTreeSet<Role> = if requested.is_empty() {
            Role::ALL.into_iter().collect()
        } else {
            requested.iter().copied().collect()
        };

        let metrics = Metrics::new()?;
        let db = Database::connect_waiting(&settings, &env, lifecycle::notify_status).await?;
        if settings.database.migrate_on_start {
            db.migrate_waiting(&settings, lifecycle::notify_status)
                .await?;
        }
        let cache = Cache::from_settings(&settings)?;
        let shutdown = CancellationToken::new();
        let needs_bus = roles.iter().any(|r| *r != Role::Visitors);
        let bus = if needs_bus {
            let mut subscriptions = if roles.contains(&Role::Broadcast) {
                broadcast::subscriptions()
            } else {
                Vec::new()
            };
            if roles.contains(&Role::Buffs) {
                // New buffs invalidate every instance's cached buff lists.
                subscriptions.extend(buffs::subscriptions());
                subscriptions.sort();
                subscriptions.dedup();
            }
            Some(Bus::from_settings(&settings, subscriptions, &metrics)?)
        } else {
            None
        };

        let mut checks = vec![{
            let db = db.clone();
            Check::new("database", true, move || {
                let db = db.clone();
                async move { db.ping().await }.boxed()
            })
        }];
        if let Some(bus) = bus.as_ref().filter(|b| b.is_shared()) {
            // Chat keeps working without the broker (the outbox holds messages);
            // a broadcast instance without it delivers nothing live, so it is not ready.
            let bus = bus.clone();
            let required = roles.contains(&Role::Broadcast);
            checks.push(Check::new("mqtt", required, move || {
                let connected = bus.is_connected();
                async move { connected }.boxed()
            }));
        }
        if cache.is_shared() {
            let cache = cache.clone();
            checks.push(Check::new("redis", false, move || {
                let cache = cache.clone();
                async move { cache.ping().await }.boxed()
            }));
        }

        let mut public = health::routes(checks).or(assets::routes()).unify().boxed();
        let mut fast = FastRoutes::default();
        for role in &roles {
            let routes = match role {
                Role::Visitors => {
                    let visitors = Visitors::new(&settings, &env, db.clone(), &metrics).await?;
                    fast = visitors.fast_routes(fast);
                    visitors.routes()
                }
                Role::Chat => match &bus {
                    Some(bus) => Chat::new(
                        &settings,
                        db.clone(),
                        &cache,
                        bus.clone(),
                        &metrics,
                        shutdown.clone(),
                    )?
                    .routes(),
                    None => return Err(StartupError::NoBus(Role::Chat)),
                },
                Role::Broadcast => match &bus {
                    Some(bus) => {
                        Broadcast::new(&settings, db.clone(), bus, &metrics, shutdown.clone())?
                            .routes()
                    }
                    None => return Err(StartupError::NoBus(Role::Broadcast)),
                },
                Role::Buffs => match &bus {
                    Some(bus) => {
                        let buffs = Buffs::new(
                            &settings,
                            db.clone(),
                            cache.clone(),
                            bus.clone(),
                            &metrics,
                            shutdown.clone(),
                        )?;
                        fast = buffs.fast_routes(fast);
                        buffs.routes()
                    }
                    None => return Err(StartupError::NoBus(Role::Buffs)),
                },
            };
            public = public.or(routes).unify().boxed();
        }
        let public = public
            .recover(recover)
            .unify()
            .map(|reply: Response| reply)
            .boxed();
        let admin = admin_routes(metrics.clone());

        let public_listener = bind("http.listen", settings.http.listen).await?;
        let admin_listener = bind("admin.listen", settings.admin.listen).await?;
        let public_addr = local_addr("http.listen", &public_listener, settings.http.listen)?;
        let admin_addr = local_addr("admin.listen", &admin_listener, settings.admin.listen)?;

        Ok(Self {
            public_addr,
            admin_addr,
            roles,
            public: (public_listener, public),
            fast,
            admin: (admin_listener, admin),
            shared: Arc::new(Shared {
                trusted_proxies: TrustedProxies::new(settings.http.trusted_proxies.clone()),
                metrics: metrics.http.clone(),
            }),
            drain: Duration::from_secs(settings.shutdown_timeout_secs),
            shutdown,
            bus,
        })
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Serves until `stop` resolves, then drains for up to `shutdown_timeout_secs`.
    pub async fn run_until(self, stop: impl Future<Output = ()>) {
        let shutdown = self.shutdown;
        let mut servers = JoinSet::new();
        let (listener, app) = self.public;
        servers.spawn(server::serve(
            listener,
            app,
            self.fast,
            self.shared.clone(),
            shutdown.clone(),
            self.drain,
        ));
        let (listener, app) = self.admin;
        servers.spawn(server::serve(
            listener,
            app,
            FastRoutes::default(),
            self.shared,
            shutdown.clone(),
            self.drain,
        ));
        let roles: Vec<&str> = self.roles.iter().map(|r| r.as_str()).collect();
        tracing::info!(
            public = %self.public_addr,
            admin = %self.admin_addr,
            roles = ?roles,
            "hubbub is serving"
        );
        lifecycle::notify_ready();
        stop.await;
        lifecycle::notify_stopping();
        shutdown.cancel();
        while let Some(result) = servers.join_next().await {
            if let Err(error) = result {
                tracing::error!(%error, "a listener task failed");
            }
        }
        if let Some(bus) = self.bus {
            bus.close().await;
        }
        tracing::info!("hubbub stopped");
    }
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Listen { key, addr, source })
}

fn local_addr(
    key: &'static str,
    listener: &TcpListener,
    addr: SocketAddr,
) -> Result<SocketAddr, StartupError> {
    listener
        .local_addr()
        .map_err(|source| StartupError::Listen { key, addr, source })
}

/// The admin listener: `/metrics` and nothing else.
fn admin_routes(metrics: Metrics) -> BoxedFilter<(Response,)> {
    warp::path!("metrics")
        .and(warp::get())
        .map(move || {
            let reply = match metrics.render() {
                Ok(text) => warp::reply::with_header(
                    text,
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )
                .into_response(),
                Err(error) => {
                    tracing::error!(%error, "rendering metrics failed");
                    ApiError::internal().into_response()
                }
            };
            tagged("admin", "/metrics", reply)
        })
        .recover(recover)
        .unify()
        .boxed()
}
