//! Static assets compiled into the binary, so nothing is fetched from elsewhere.

use warp::http::header;
use warp::reply::{Reply, Response};
use warp::{Filter, filters::BoxedFilter};

use super::tagged;

const ASSETS: &[(&str, &str, &str)] = &[
    (
        "hubbub.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/hubbub.css"),
    ),
    (
        "chat.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/chat.css"),
    ),
    (
        "chat.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/chat.js"),
    ),
];

pub fn routes() -> BoxedFilter<(Response,)> {
    warp::path!("assets" / String)
        .and(warp::get())
        .and_then(|name: String| async move {
            let Some((_, content_type, body)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
                return Err(warp::reject::not_found());
            };
            let reply = warp::reply::with_header(*body, header::CONTENT_TYPE, *content_type);
            let reply =
                warp::reply::with_header(reply, header::CACHE_CONTROL, "public, max-age=3600");
            Ok(tagged("none", "/assets/{name}", reply.into_response()))
        })
        .boxed()
}
