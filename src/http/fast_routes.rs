//! Hot read routes answered ahead of warp's filter tree. A role registers an exact
//! path and a handler; the middleware gives it GET and HEAD requests for that path
//! (after client address and request id, before warp), and the handler either
//! answers, from the same code its warp route runs, or declines (a query it does
//! not take), and then the request goes through warp unchanged. Headers, metrics and
//! the access log are the middleware's, whichever way a request goes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use warp::http::{Method, Request};
use warp::reply::Response;

/// A fast route's answer, tagged like its warp route (see [`super::tagged`]).
pub type FastFuture = Pin<Box<dyn Future<Output = Response> + Send>>;

/// Given the raw query (`None` without a `?`), the answer, or `None` to leave the
/// request to warp.
type Handler = dyn Fn(Option<&str>) -> Option<FastFuture> + Send + Sync;

/// The public listener's fast routes: a handful, matched in order.
#[derive(Clone, Default)]
pub struct FastRoutes {
    routes: Arc<[(&'static str, Arc<Handler>)]>,
}

impl FastRoutes {
    /// Adds `path` (exact: no trailing slash, no percent-encoding).
    #[must_use]
    pub fn with(
        self,
        path: &'static str,
        handler: impl Fn(Option<&str>) -> Option<FastFuture> + Send + Sync + 'static,
    ) -> Self {
        let mut routes = self.routes.to_vec();
        routes.push((path, Arc::new(handler)));
        Self {
            routes: routes.into(),
        }
    }

    /// The answer to `request`, if a fast route takes it. HEAD has already been
    /// rewritten to GET by the middleware; hyper leaves the body out.
    pub fn answer<B>(&self, request: &Request<B>) -> Option<FastFuture> {
        if request.method() != Method::GET || self.routes.is_empty() {
            return None;
        }
        let uri = request.uri();
        let path = uri.path();
        self.routes
            .iter()
            .find(|(route, _)| *route == path)
            .and_then(|(_, handler)| handler(uri.query()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::reply::Reply;

    fn routes() -> FastRoutes {
        FastRoutes::default().with("/api/stats", |query| {
            query
                .is_none()
                .then(|| Box::pin(async { "fast".into_response() }) as FastFuture)
        })
    }

    fn request(method: Method, uri: &str) -> Request<()> {
        let mut request = Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = uri.parse().expect("uri");
        request
    }

    #[test]
    fn only_get_on_the_exact_path_and_what_the_handler_takes() {
        let routes = routes();
        assert!(routes.answer(&request(Method::GET, "/api/stats")).is_some());
        for (method, uri) in [
            (Method::POST, "/api/stats"),
            (Method::GET, "/api/stats/"),
            (Method::GET, "/api/stat%73"),
            (Method::GET, "/api/stats?x=1"),
            (Method::GET, "/api/stats?"),
            (Method::GET, "/"),
        ] {
            assert!(routes.answer(&request(method, uri)).is_none(), "{uri}");
        }
        assert!(
            FastRoutes::default()
                .answer(&request(Method::GET, "/api/stats"))
                .is_none()
        );
    }
}
