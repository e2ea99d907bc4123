//! The visitor page, rendered on the server with every value escaped.

use crate::build_info::BuildInfo;
use crate::http::html::escape;

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
    format!(
        "<!doctype html>
<html lang=\"en\">
<head>
<meta charset=\"utf-8\">
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">
<title>hubbub visitors</title>
<link rel=\"stylesheet\" href=\"/assets/hubbub.css\">
</head>
<body>
<main>
<h1>Welcome</h1>
<p>You have visited this page <span class=\"count\" id=\"visits\">{visits}</span> {times}.</p>
<dl class=\"stats\">
<dt>Unique visitors</dt><dd id=\"unique-visitors\">{unique}</dd>
<dt>Total visits</dt><dd id=\"total-visits\">{total}</dd>
</dl>
</main>
<footer>
<p>Run by {owner_html} · hubbub {version} (build {build}, commit {commit})</p>
</footer>
</body>
</html>
",
        visits = visit.visits,
        unique = visit.totals.unique_visitors,
        total = visit.totals.total_visits,
        version = escape(build.version),
        build = escape(build.build),
        commit = escape(build.commit),
    )
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
    }
}
