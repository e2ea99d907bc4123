//! What every request goes through, whatever its role: client address and request
//! id, a panic guard, security headers, metrics and the access log.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::FutureExt;
use tower_service::Service;
use warp::http::{HeaderValue, Method, Request, header};
use warp::reply::{Reply, Response};

use super::client_ip::TrustedProxies;
use super::error::ApiError;
use super::fast_routes::FastRoutes;
use super::wire::Wire;
use crate::metrics::HttpMetrics;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A strict policy: everything from our own origin (no `data:` either: no page
/// needs it), no inline script or style, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// Facts about the request, for handlers (`warp::ext::get::<RequestMeta>()`).
#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub id: String,
    pub client_ip: IpAddr,
    pub peer: SocketAddr,
    /// Asked with HEAD (routed as GET): answer as GET would, but change nothing.
    pub head: bool,
}

/// The connection's socket, in the extensions of HTTP/1.1 requests (whose streamed
/// responses hyper sends chunked): for an SSE body that writes to it itself.
#[derive(Clone)]
pub struct ConnectionWire(pub Arc<Wire>);

/// The role and route template that answered, attached to the response so the
/// metrics never see raw paths.
#[derive(Debug, Clone, Copy)]
pub struct RouteTag {
    pub role: &'static str,
    pub route: &'static str,
}

/// Marks a reply with the route that produced it.
pub fn tagged(role: &'static str, route: &'static str, reply: impl Reply) -> Response {
    let mut response = reply.into_response();
    response.extensions_mut().insert(RouteTag { role, route });
    response
}

pub struct Shared {
    pub trusted_proxies: TrustedProxies,
    pub metrics: HttpMetrics,
}

/// Wraps the warp service of one connection.
#[derive(Clone)]
pub struct Middleware<S> {
    inner: S,
    fast: FastRoutes,
    shared: Arc<Shared>,
    peer: SocketAddr,
    wire: Arc<Wire>,
}

impl<S> Middleware<S> {
    pub fn new(
        inner: S,
        fast: FastRoutes,
        shared: Arc<Shared>,
        peer: SocketAddr,
        wire: Arc<Wire>,
    ) -> Self {
        Self {
            inner,
            fast,
            shared,
            peer,
            wire,
        }
    }
}

impl<S, B> Service<Request<B>> for Middleware<S>
where
    S: Service<Request<B>, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let started = Instant::now();
        let trusted = &self.shared.trusted_proxies;
        let forwarded = request
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok());
        let client_ip = trusted.client_ip(self.peer.ip(), forwarded);
        let id = trusted
            .contains(self.peer.ip())
            .then(|| request.headers().get(REQUEST_ID_HEADER))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .filter(|v| is_acceptable_request_id(v))
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let method = request.method().clone();
        // HEAD is answered as GET: hyper remembers the request was HEAD and sends the
        // headers without the body, so `curl -I` and monitors see what GET would give.
        if method == Method::HEAD {
            *request.method_mut() = Method::GET;
        }
        let meta = RequestMeta {
            id,
            client_ip,
            peer: self.peer,
            head: method == Method::HEAD,
        };
        let shared = self.shared.clone();
        // The hot cached reads skip warp's filters (and the request's extensions
        // warp's handlers read); everything else goes through them.
        if let Some(answer) = self.fast.answer(&request) {
            return Box::pin(async move {
                let response = guarded(answer.map(Ok), &meta.id).await;
                Ok(finish(response, &meta, &method, started, &shared))
            });
        }
        if request.version() == warp::http::Version::HTTP_11 {
            request
                .extensions_mut()
                .insert(ConnectionWire(self.wire.clone()));
        }
        request.extensions_mut().insert(meta.clone());
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = guarded(future, &meta.id).await;
            Ok(finish(response, &meta, &method, started, &shared))
        })
    }
}

/// A handler's response, or a 500 when it panicked (the connection stays up).
async fn guarded(
    future: impl Future<Output = Result<Response, Infallible>>,
    request_id: &str,
) -> Response {
    match AssertUnwindSafe(future).catch_unwind().await {
        Ok(Ok(response)) => response,
        Ok(Err(never)) => match never {},
        Err(_) => {
            tracing::error!(request_id = %request_id, "request handler panicked");
            ApiError::internal().into_response()
        }
    }
}

/// Request ids from a trusted proxy are believed only when short and plain.
fn is_acceptable_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn finish(
    mut response: Response,
    meta: &RequestMeta,
    method: &Method,
    started: Instant,
    shared: &Shared,
) -> Response {
    let headers = response.headers_mut();
    if let Ok(id) = HeaderValue::from_str(&meta.id) {
        headers.insert(REQUEST_ID_HEADER, id);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    let is_html = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if is_html {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
    }

    let tag = response
        .extensions()
        .get::<RouteTag>()
        .copied()
        .unwrap_or(RouteTag {
            role: "none",
            route: "unmatched",
        });
    let status = response.status();
    let method_label = method_label(method);
    let elapsed = started.elapsed();
    shared
        .metrics
        .requests
        .with_label_values(&[tag.role, tag.route, method_label, status.as_str()])
        .inc();
    shared
        .metrics
        .duration
        .with_label_values(&[tag.role, tag.route, method_label])
        .observe(elapsed.as_secs_f64());
    tracing::info!(
        target: crate::telemetry::access::TARGET,
        request_id = %meta.id,
        client_ip = %meta.client_ip,
        method = %method,
        route = tag.route,
        status = status.as_u16(),
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    response
}

/// Bounded label values: unknown methods would otherwise grow the metrics without end.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_checked() {
        assert!(is_acceptable_request_id("3f1c-ab_12.x"));
        assert!(!is_acceptable_request_id(""));
        assert!(!is_acceptable_request_id("a b"));
        assert!(!is_acceptable_request_id("x\r\nSet-Cookie: y"));
        assert!(!is_acceptable_request_id(&"a".repeat(129)));
    }
}
