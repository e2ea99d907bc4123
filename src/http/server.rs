//! Accepts connections, serves them through the middleware, drains on shutdown.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use super::fast_routes::FastRoutes;
use super::middleware::{Middleware, Shared};
use super::wire::Wire;
use super::write_timeout::WriteTimeout;

/// Clients that take longer than this to send their request headers are cut off
/// (slowloris protection when nothing sits in front of us).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that takes nothing we write for this long is gone (an SSE client that
/// stopped reading): its connection is closed and its memory freed.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `fast` and then `app` on `listener` until `shutdown` fires, then lets open
/// requests finish for up to `drain` before closing what is left.
pub async fn serve(
    listener: TcpListener,
    app: BoxedFilter<(Response,)>,
    fast: FastRoutes,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let service = warp::service(app);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (io, wire) = Wire::new(stream);
        let middleware = Middleware::new(service.clone(), fast.clone(), shared.clone(), peer, wire);
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(
                TokioIo::new(WriteTimeout::new(io, WRITE_STALL_TIMEOUT)),
                TowerToHyperService::new(middleware),
            );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            seconds = drain.as_secs(),
            "connections still open after the shutdown timeout; closing them"
        );
    }
}
