//! HTTP plumbing shared by every role.

pub mod assets;
pub mod body;
pub mod client_ip;
pub mod error;
pub mod fast_routes;
pub mod health;
pub mod html;
pub mod middleware;
pub mod page;
pub mod server;
pub mod wire;
mod write_timeout;

pub use error::ApiError;
pub use fast_routes::{FastFuture, FastRoutes};
pub use middleware::{ConnectionWire, RequestMeta, tagged};

use warp::Filter;

/// The request's metadata, put there by the middleware.
pub fn request_meta() -> impl Filter<Extract = (RequestMeta,), Error = warp::Rejection> + Clone {
    warp::ext::get::<RequestMeta>()
}
