//! The visitor page, rendered on the server with every value escaped. The totals
//! keep moving while it is open: `visitors.js` polls `/api/stats`.

use crate::build_info::BuildInfo;
use crate::http::html::escape;
use crate::http::page::{Page, Section};

use super::store::Visit;

pub struct Owner<'a> {
    pub name: &'a str,
    pub url: Option<&'a str>,
}

pub fn render(visit: &Visit, owner: &Owner<'_>, build: &BuildInfo) -> String {
    let times = if visit.visits == 1 { "time" } else { "times" };
    let owner_html = match owner.url {
        Some(url) => format!(
            "<a href=\"{}\" rel=\"noopener\">{}</a>",
            escape(url),
            escape(owner.name)
        ),
        None => escape(owner.name),
    };
    let main = format!(
        "<h1>Welcome to hubbub</h1>
<p class=\"lead\">You have visited this page <span class=\"count\" id=\"visits\">{visits}</span> {times}.</p>
<section class=\"panel\" aria-labelledby=\"totals-heading\">
<h2 id=\"totals-heading\">Everyone so far</h2>
<dl class=\"stats\">
<div class=\"stat\"><dt>Unique visitors</dt><dd id=\"unique-visitors\">{unique}</dd><dd class=\"hint\">different people who opened this page</dd></div>
<div class=\"stat\"><dt>Total visits</dt><dd id=\"total-visits\">{total}</dd><dd class=\"hint\">page views by everyone, you included</dd></div>
</dl>
<p class=\"muted\"><span id=\"stats-state\" class=\"state\" data-state=\"idle\">Updated when the page opened.</span></p>
</section>
<section aria-labelledby=\"more-heading\">
<h2 id=\"more-heading\">While you are here</h2>
<ul class=\"cards\">
<li><a class=\"card\" href=\"/chat/\"><strong>Chat</strong><span>Talk with everyone watching, live.</span></a></li>
<li><a class=\"card\" href=\"/buffs/\"><strong>Buffs</strong><span>Answer the questions as they are asked.</span></a></li>
</ul>
</section>",
        visits = visit.visits,
        unique = visit.totals.unique_visitors,
        total = visit.totals.total_visits,
    );
    Page {
        title: "Welcome",
        section: Section::Home,
        main: &main,
        scripts: &["visitors.js"],
        footer: &format!("Run by {owner_html}"),
    }
    .render(build)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roles::visitors::store::Totals;

    #[test]
    fn owner_is_escaped() {
        let visit = Visit {
            visits: 1,
            totals: Totals {
                unique_visitors: 1,
                total_visits: 1,
            },
        };
        let build = BuildInfo {
            version: "0.1.0",
            build: "7",
            commit: "abc",
        };
        let page = render(
            &visit,
            &Owner {
                name: "<script>x</script>",
                url: Some("https://example.org/?a=1&b=\"2\""),
            },
            &build,
        );
        assert!(!page.contains("<script>x"));
        assert!(page.contains("&lt;script&gt;x&lt;/script&gt;"));
        assert!(page.contains("href=\"https://example.org/?a=1&amp;b=&quot;2&quot;\""));
        assert!(
            page.contains("visited this page <span class=\"count\" id=\"visits\">1</span> time.")
        );
        assert!(page.contains("Run by <a href="));
        assert!(page.contains("hubbub 0.1.0 (build 7, commit abc)"));
    }
}
