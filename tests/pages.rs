//! The HTML pages over plain HTTP (what a browser test cannot check cheaply, and what
//! runs in the Nix build's test suite too): every page has the shared frame, a strict
//! Content-Security-Policy and nothing inline; every asset it names is served, cached
//! by version; the old `GET /buffs` JSON route still answers API clients.

mod support;

use reqwest::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH, LOCATION, VARY};
use support::app::{TestApp, spawn_app};

const PAGES: &[(&str, &str)] = &[
    ("/", "Home"),
    ("/chat/", "Chat"),
    ("/chat", "Chat"),
    ("/chat/?channel=lobby", "Chat"),
    ("/buffs/", "Buffs"),
    ("/admin/buffs/", "Dashboard"),
    ("/admin/buffs", "Dashboard"),
];

const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

/// Every value of `attr="…"` in the page.
fn attribute_values<'a>(html: &'a str, attr: &str) -> Vec<&'a str> {
    let needle = format!(" {attr}=\"");
    html.match_indices(&needle)
        .map(|(i, _)| {
            let rest = &html[i + needle.len()..];
            &rest[..rest.find('"').expect("closing quote")]
        })
        .collect()
}

async fn page(app: &TestApp, path: &str) -> (reqwest::header::HeaderMap, String) {
    let response = app.get(path).await;
    assert_eq!(response.status(), 200, "{path}");
    let headers = response.headers().clone();
    (headers, response.text().await.expect("html"))
}

#[tokio::test]
async fn every_page_shares_the_frame_and_a_strict_policy() {
    let app = spawn_app("").await.expect("app");
    let mut assets = std::collections::BTreeSet::new();
    for (path, current) in PAGES {
        let (headers, html) = page(&app, path).await;
        assert!(
            headers[CONTENT_TYPE]
                .to_str()
                .expect("ascii")
                .starts_with("text/html"),
            "{path}"
        );
        let csp = headers["content-security-policy"].to_str().expect("csp");
        let directives: Vec<&str> = csp.split(';').map(str::trim).collect();
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self'",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        ] {
            assert!(
                directives.contains(&directive),
                "{path}: {directive} in {csp}"
            );
        }
        assert!(!csp.contains("unsafe-") && !csp.contains("data:") && !csp.contains('*'));
        assert!(headers.contains_key(CACHE_CONTROL), "{path}");

        // The header links every page and marks this one.
        for link in ["/", "/chat/", "/buffs/", "/admin/buffs/"] {
            assert!(
                html.contains(&format!("<a href=\"{link}\"")),
                "{path} links {link}"
            );
        }
        assert_eq!(html.matches("aria-current=\"page\"").count(), 1, "{path}");
        assert!(
            html.contains(&format!("aria-current=\"page\">{current}</a>")),
            "{path}"
        );
        assert!(html.contains("<a class=\"skip\" href=\"#main\">"));
        assert!(html.contains("<main id=\"main\""));
        assert!(html.contains("id=\"announcer\"") && html.contains("aria-live=\"polite\""));
        assert!(
            html.contains("hubbub 0.1.0 (build "),
            "{path}: version in the footer"
        );

        // Nothing inline: no script body, no style attribute or element, no handler.
        assert!(
            !html.contains("<script>") && !html.contains("<style"),
            "{path}"
        );
        assert!(!html.contains(" style=\""), "{path}");
        let lower = html.to_lowercase();
        for (i, _) in lower.match_indices(" on") {
            let name: String = lower[i + 3..]
                .chars()
                .take_while(char::is_ascii_alphabetic)
                .collect();
            assert!(
                !lower[i + 3 + name.len()..].starts_with('='),
                "{path}: inline handler on{name}"
            );
        }
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "{path}"
        );

        // Every URL is a path on this origin; every asset is a versioned one of ours.
        for url in attribute_values(&html, "src")
            .into_iter()
            .chain(attribute_values(&html, "href"))
        {
            assert!(
                (url.starts_with('/') && !url.starts_with("//")) || url.starts_with('#'),
                "{path}: {url}"
            );
            if url.starts_with("/assets/") {
                assert!(url.contains("?v="), "{path}: {url} is versioned");
                assets.insert(url.to_owned());
            }
        }
        // Every form field has a label.
        for id in attribute_values(&html, "id") {
            let tag_start = html[..html.find(&format!("id=\"{id}\"")).expect("id")]
                .rfind('<')
                .expect("tag");
            let tag = &html[tag_start..];
            if tag.starts_with("<input") || tag.starts_with("<textarea") {
                assert!(
                    html.contains(&format!("<label for=\"{id}\"")),
                    "{path}: #{id} has a label"
                );
            }
        }
    }

    for url in &assets {
        let response = app.get(url).await;
        assert_eq!(response.status(), 200, "{url}");
        assert_eq!(
            response.headers()[CACHE_CONTROL],
            "public, max-age=31536000, immutable",
            "{url}"
        );
        let content_type = response.headers()[CONTENT_TYPE]
            .to_str()
            .expect("ascii")
            .to_owned();
        let body = response.text().await.expect("body");
        if url.contains(".js?") {
            assert!(content_type.starts_with("text/javascript"), "{url}");
            // User text is only ever inserted as text.
            for banned in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
                "http://",
                "https://",
            ] {
                assert!(!body.contains(banned), "{url} uses {banned}");
            }
        } else if url.contains(".css?") {
            assert!(content_type.starts_with("text/css"), "{url}");
            assert!(body.contains("prefers-color-scheme: dark"), "{url}");
            assert!(!body.contains("@import") && !body.contains("url("), "{url}");
        }
    }
    // hubbub.js, the page scripts, the stylesheet and the icon.
    assert_eq!(assets.len(), 7, "{assets:?}");
    app.stop().await;
}

#[tokio::test]
async fn assets_are_revalidated_unless_the_url_names_this_build() {
    let app = spawn_app("").await.expect("app");
    let (_, html) = page(&app, "/chat/").await;
    let versioned = attribute_values(&html, "href")
        .into_iter()
        .find(|url| url.starts_with("/assets/hubbub.css?v="))
        .expect("the stylesheet")
        .to_owned();

    for url in ["/assets/hubbub.css", "/assets/hubbub.css?v=0123456789ab"] {
        let response = app.get(url).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()[CACHE_CONTROL], "no-cache", "{url}");
        let etag = response.headers()[ETAG].clone();
        let again = app
            .client
            .get(app.url(url))
            .header(IF_NONE_MATCH, etag)
            .send()
            .await
            .expect("request");
        assert_eq!(again.status(), 304, "{url}");
        assert!(again.bytes().await.expect("body").is_empty());
    }
    let current = app.get(&versioned).await;
    assert_eq!(
        current.headers()[CACHE_CONTROL],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(app.get("/assets/chat.css").await.status(), 404);
    assert_eq!(app.get("/assets/..%2FCargo.toml").await.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn buffs_keep_the_old_json_route_and_send_browsers_to_the_page() {
    let app = spawn_app("").await.expect("app");
    let api = app.get("/buffs").await;
    assert_eq!(api.status(), 200);
    assert!(
        api.headers()[CONTENT_TYPE]
            .to_str()
            .expect("ascii")
            .starts_with("application/json")
    );
    assert_eq!(api.headers()[VARY], "accept");
    assert_eq!(api.text().await.expect("body"), "[]");

    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let browser = no_redirects
        .get(app.url("/buffs"))
        .header(ACCEPT, BROWSER_ACCEPT)
        .send()
        .await
        .expect("request");
    assert_eq!(browser.status(), 308);
    assert_eq!(browser.headers()[LOCATION], "/buffs/");
    assert_eq!(browser.headers()[VARY], "accept");

    // An API client that accepts HTML among others still gets JSON.
    let fetch = no_redirects
        .get(app.url("/buffs"))
        .header(ACCEPT, "application/json, text/html")
        .send()
        .await
        .expect("request");
    assert_eq!(fetch.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn the_dashboard_form_cannot_put_the_token_in_an_address() {
    let app = spawn_app("").await.expect("app");
    let (_, html) = page(&app, "/admin/buffs/").await;
    let start = html.find("<input id=\"token\"").expect("token input");
    let input = &html[start..start + html[start..].find('>').expect("end of tag")];
    assert!(input.contains("type=\"password\""), "{input}");
    // Without a name a field is never submitted, even if the script did not run.
    assert!(!input.contains(" name="), "{input}");
    assert!(html.contains("<form id=\"create\" method=\"post\""));
    app.stop().await;
}
