//! Static assets compiled into the binary, so nothing is fetched from elsewhere.
//!
//! Pages refer to them as `/assets/<name>?v=<digest of the content>`: such a URL
//! never changes meaning, so browsers may keep it for a year, and a deployment
//! that changes a file changes its URL. A request whose `v` is not this build's
//! digest (an old page, another version during a rolling deployment, no `v`) gets
//! the current file with `no-cache` and an ETag, so nothing stale is kept.

use std::sync::LazyLock;

use sha2::{Digest, Sha256};
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::{Reply, Response};
use warp::{Filter, filters::BoxedFilter};

use super::tagged;

const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const SVG: &str = "image/svg+xml";

const FILES: &[(&str, &str, &str)] = &[
    ("hubbub.css", CSS, include_str!("../../assets/hubbub.css")),
    ("hubbub.js", JS, include_str!("../../assets/hubbub.js")),
    ("visitors.js", JS, include_str!("../../assets/visitors.js")),
    ("chat.js", JS, include_str!("../../assets/chat.js")),
    ("buffs.js", JS, include_str!("../../assets/buffs.js")),
    (
        "dashboard.js",
        JS,
        include_str!("../../assets/dashboard.js"),
    ),
    ("icon.svg", SVG, include_str!("../../assets/icon.svg")),
];

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
    /// First 12 hex digits of the SHA-256 of the body.
    version: String,
    /// `"<version>"`, the ETag.
    etag: String,
}

static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    FILES
        .iter()
        .map(|&(name, content_type, body)| {
            let digest = hex::encode(Sha256::digest(body.as_bytes()));
            let version = digest[..12].to_owned();
            let etag = format!("\"{version}\"");
            Asset {
                name,
                content_type,
                body,
                version,
                etag,
            }
        })
        .collect()
});

fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|asset| asset.name == name)
}

/// The URL pages use for an asset: `/assets/<name>?v=<version>`. Every name a page
/// asks for is one of ours (the unit test below checks them all); an unknown name
/// gets the plain path, which answers 404.
pub fn url(name: &str) -> String {
    match find(name) {
        Some(asset) => format!("/assets/{}?v={}", asset.name, asset.version),
        None => format!("/assets/{name}"),
    }
}

pub fn routes() -> BoxedFilter<(Response,)> {
    warp::path!("assets" / String)
        .and(warp::get())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::optional::<String>("if-none-match"))
        .and_then(
            |name: String, query: String, if_none_match: Option<String>| async move {
                let Some(asset) = find(&name) else {
                    return Err(warp::reject::not_found());
                };
                Ok(tagged(
                    "none",
                    "/assets/{name}",
                    serve(asset, &query, if_none_match.as_deref()),
                ))
            },
        )
        .boxed()
}

fn serve(asset: &Asset, query: &str, if_none_match: Option<&str>) -> Response {
    let versioned = query
        .split('&')
        .any(|pair| pair.strip_prefix("v=") == Some(asset.version.as_str()));
    let cache_control = if versioned {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let not_modified = if_none_match.is_some_and(|tags| {
        tags.split(',')
            .any(|tag| tag.trim().trim_start_matches("W/") == asset.etag)
    });
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        warp::reply::with_header(asset.body, header::CONTENT_TYPE, asset.content_type)
            .into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    if let Ok(etag) = HeaderValue::from_str(&asset.etag) {
        headers.insert(header::ETAG, etag);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_content_digests() {
        for asset in ASSETS.iter() {
            assert_eq!(asset.version.len(), 12);
            assert!(asset.version.bytes().all(|b| b.is_ascii_hexdigit()));
            assert_eq!(
                url(asset.name),
                format!("/assets/{}?v={}", asset.name, asset.version)
            );
        }
        assert_eq!(url("nope.css"), "/assets/nope.css");
    }

    #[test]
    fn only_this_builds_version_is_immutable() {
        let asset = find("hubbub.css").expect("asset");
        let cache = |query: &str| {
            serve(asset, query, None).headers()[header::CACHE_CONTROL]
                .to_str()
                .expect("ascii")
                .to_owned()
        };
        assert_eq!(
            cache(&format!("v={}", asset.version)),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(cache("v=000000000000"), "no-cache");
        assert_eq!(cache(""), "no-cache");
        let etag = asset.etag.clone();
        assert_eq!(
            serve(asset, "", Some(&etag)).status(),
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            serve(asset, "", Some("\"other\", W/\"x\"")).status(),
            StatusCode::OK
        );
    }
}
