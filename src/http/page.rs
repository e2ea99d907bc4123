//! The frame every HTML page shares: head, header with the links between the pages,
//! footer, the live region for announcements, and the scripts. Roles give only
//! their page's `<main>` content; everything in it that came from a user or an
//! operator must already be escaped (`html::escape`).

use warp::http::header;
use warp::reply::{Reply, Response};

use super::assets;
use super::html::escape;
use crate::build_info::BuildInfo;

/// The pages in the header, in order: (section, path, label).
const SECTIONS: &[(Section, &str, &str)] = &[
    (Section::Home, "/", "Home"),
    (Section::Chat, "/chat/", "Chat"),
    (Section::Buffs, "/buffs/", "Buffs"),
    (Section::Dashboard, "/admin/buffs/", "Dashboard"),
];

/// Which header link is the current page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Home,
    Chat,
    Buffs,
    Dashboard,
}

pub struct Page<'a> {
    /// Shown in the tab after "hubbub · "; plain text.
    pub title: &'a str,
    pub section: Section,
    /// The content of `<main>`: trusted markup.
    pub main: &'a str,
    /// Asset names of the page's own scripts, run after `hubbub.js`, in order.
    pub scripts: &'a [&'a str],
    /// Markup before the version line in the footer (the owner), or empty.
    pub footer: &'a str,
}

impl Page<'_> {
    pub fn render(&self, build: &BuildInfo) -> String {
        let mut nav = String::new();
        for (section, path, label) in SECTIONS {
            let current = if *section == self.section {
                " aria-current=\"page\""
            } else {
                ""
            };
            nav.push_str(&format!("<li><a href=\"{path}\"{current}>{label}</a></li>"));
        }
        let mut scripts = format!(
            "<script src=\"{}\" defer></script>",
            assets::url("hubbub.js")
        );
        for name in self.scripts {
            scripts.push_str(&format!(
                "\n<script src=\"{}\" defer></script>",
                assets::url(name)
            ));
        }
        let separator = if self.footer.is_empty() { "" } else { " · " };
        format!(
            "<!doctype html>
<html lang=\"en\">
<head>
<meta charset=\"utf-8\">
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">
<meta name=\"color-scheme\" content=\"light dark\">
<title>{title} · hubbub</title>
<link rel=\"icon\" href=\"{icon}\" type=\"image/svg+xml\">
<link rel=\"stylesheet\" href=\"{css}\">
{scripts}
</head>
<body>
<a class=\"skip\" href=\"#main\">Skip to content</a>
<header class=\"site\">
<nav aria-label=\"Pages\">
<a class=\"brand\" href=\"/\"><img src=\"{icon}\" alt=\"\" width=\"24\" height=\"24\">hubbub</a>
<ul>{nav}</ul>
</nav>
</header>
<main id=\"main\" tabindex=\"-1\">
{main}
</main>
<footer class=\"site\">
<p>{footer}{separator}hubbub {version} (build {build}, commit {commit})</p>
</footer>
<div id=\"announcer\" class=\"visually-hidden\" aria-live=\"polite\" aria-atomic=\"true\"></div>
</body>
</html>
",
            title = escape(self.title),
            icon = assets::url("icon.svg"),
            css = assets::url("hubbub.css"),
            main = self.main,
            footer = self.footer,
            version = escape(build.version),
            build = escape(build.build),
            commit = escape(build.commit),
        )
    }
}

/// A page rendered once per process, as a response. `Cache-Control` is the
/// caller's: `no-cache` for a static page (it names this build's asset versions,
/// so it must be revalidated after a deployment).
pub fn response(html: &'static str, cache_control: &'static str) -> Response {
    warp::reply::with_header(
        warp::reply::html(html),
        header::CACHE_CONTROL,
        cache_control,
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUILD: BuildInfo = BuildInfo {
        version: "0.1.0",
        build: "7",
        commit: "abc",
    };

    #[test]
    fn frame_links_every_page_and_marks_the_current_one() {
        let html = Page {
            title: "Chat <1>",
            section: Section::Chat,
            main: "<h1>Chat</h1>",
            scripts: &["chat.js"],
            footer: "",
        }
        .render(&BUILD);
        assert!(html.contains("<title>Chat &lt;1&gt; · hubbub</title>"));
        assert!(html.contains("<a href=\"/chat/\" aria-current=\"page\">Chat</a>"));
        for path in ["/", "/buffs/", "/admin/buffs/"] {
            assert!(html.contains(&format!("<a href=\"{path}\">")), "{path}");
        }
        assert_eq!(html.matches("aria-current").count(), 1);
        let hubbub = html.find(&assets::url("hubbub.js")).expect("hubbub.js");
        let chat = html.find(&assets::url("chat.js")).expect("chat.js");
        assert!(hubbub < chat, "the shared script runs first");
        assert!(html.contains("<p>hubbub 0.1.0 (build 7, commit abc)</p>"));
        assert!(html.contains("<main id=\"main\" tabindex=\"-1\">\n<h1>Chat</h1>\n</main>"));
    }
}
