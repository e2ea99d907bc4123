//! Every page in a real browser: headless Chromium driven over WebDriver (Debian's
//! `chromium` and `chromium-driver`), three independent browser sessions against one
//! hubbub. Screenshots of every page, light and dark, phone and desktop widths, go to
//! target/browser/; each browser's profile lives in a temp dir.

mod support;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use support::app::{TestApp, spawn_app};
use support::ports::free_port;

const XSS: &str = "<img src=x onerror=alert(1)>";
const TOKEN: &str = "browser-admin-token";
/// Three posts at once, then one a minute: the fourth post in the test is refused.
const CONFIG: &str = "[chat]\nrate_per_minute = 1\nrate_burst = 3\n\n[buffs]\nadmin_token = \"browser-admin-token\"\n";
/// The longest any single step may take.
const WAIT: Duration = Duration::from_secs(15);
/// The whole test, browsers included.
const WHOLE_TEST: Duration = Duration::from_secs(300);

const PAGES: &[(&str, &str)] = &[
    ("visitors", "/"),
    ("chat", "/chat/?channel=lobby"),
    ("buffs", "/buffs/"),
    ("dashboard", "/admin/buffs/"),
];

/// chromedriver in its own process group, so that the browsers it starts go with it
/// even when the test fails half-way.
struct Driver {
    child: std::process::Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on the process group this test created.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
    }
}

async fn chromedriver() -> Driver {
    let binary = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .or_else(|| which("chromedriver"))
        .expect("chromedriver (Debian: apt-get install chromium chromium-driver; tests/run does)");
    let port = free_port();
    let child = std::process::Command::new(binary)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start chromedriver");
    let driver = Driver { child, port };
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return driver;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("chromedriver did not listen on {port} within 10 s");
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.exists())
}

async fn browser(driver: &Driver, profile: &tempfile::TempDir) -> Client {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(str::to_owned)
        .or_else(|| which("chromium").map(|p| p.display().to_string()))
        .expect("chromium");
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-quic", "--no-first-run", "--window-size=1280,800",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    ClientBuilder::rustls()
        .expect("rustls")
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session")
}

/// A Chrome DevTools command through chromedriver (`goog/cdp/execute`): how the test
/// emulates a phone and the dark colour scheme.
#[derive(Debug)]
struct Cdp {
    command: &'static str,
    params: Value,
}

impl WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        let body = json!({ "cmd": self.command, "params": self.params });
        (http::Method::POST, Some(body.to_string()))
    }
}

async fn cdp(page: &Client, command: &'static str, params: Value) {
    page.issue_cmd(Cdp { command, params })
        .await
        .unwrap_or_else(|e| panic!("{command}: {e}"));
}

async fn wait_for(
    page: &Client,
    locator: Locator<'_>,
    what: &str,
) -> fantoccini::elements::Element {
    page.wait()
        .at_most(WAIT)
        .for_element(locator)
        .await
        .unwrap_or_else(|e| panic!("waiting for {what}: {e}"))
}

async fn css(page: &Client, selector: &str) -> fantoccini::elements::Element {
    page.find(Locator::Css(selector))
        .await
        .unwrap_or_else(|e| panic!("{selector}: {e}"))
}

async fn text_of(page: &Client, selector: &str) -> String {
    css(page, selector).await.text().await.expect("text")
}

async fn value_of(page: &Client, selector: &str) -> String {
    css(page, selector)
        .await
        .prop("value")
        .await
        .expect("value")
        .unwrap_or_default()
}

async fn count(page: &Client, selector: &str) -> usize {
    page.find_all(Locator::Css(selector))
        .await
        .expect("query")
        .len()
}

async fn type_into(page: &Client, selector: &str, text: &str) {
    let field = css(page, selector).await;
    field.clear().await.expect("clear");
    field.send_keys(text).await.expect("type");
}

async fn click(page: &Client, selector: &str) {
    css(page, selector).await.click().await.expect("click");
}

/// Waits until the page's connection indicator says its stream is open.
async fn live(page: &Client, what: &str) {
    wait_for(
        page,
        Locator::Css("#connection[data-state='live']"),
        &format!("{what} live"),
    )
    .await;
}

async fn send_chat(page: &Client, text: &str) {
    type_into(page, "#text", text).await;
    click(page, "#send-button").await;
}

fn message_xpath(text: &str, own: bool) -> String {
    let own = if own {
        "[contains(concat(' ', @class, ' '), ' own ')]"
    } else {
        "[not(contains(concat(' ', @class, ' '), ' own '))]"
    };
    format!(
        "//ol[@id='messages']/li{own}/p[@class='text'][. = {}]",
        xpath_literal(text)
    )
}

/// An XPath string literal for any text (quotes included).
fn xpath_literal(text: &str) -> String {
    if !text.contains('\'') {
        format!("'{text}'")
    } else {
        format!("concat('{}')", text.replace('\'', "', \"'\", '"))
    }
}

async fn script(page: &Client, source: &str) -> Value {
    page.execute(source, vec![]).await.expect("script")
}

#[tokio::test]
async fn every_page_works_in_a_real_browser() {
    // fantoccini's TLS stack is not used (WebDriver is plain HTTP on loopback), but
    // rustls wants one provider chosen when several are compiled in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::time::timeout(WHOLE_TEST, scenario())
        .await
        .expect("the browser test finished in time");
}

async fn scenario() {
    let started = std::time::Instant::now();
    let app = spawn_app(CONFIG).await.expect("app");
    let driver = chromedriver().await;
    let profiles = [(); 3].map(|()| tempfile::tempdir().expect("profile dir"));
    let alice = browser(&driver, &profiles[0]).await;
    let bob = browser(&driver, &profiles[1]).await;
    let carol = browser(&driver, &profiles[2]).await;

    let phase = |name: &str| eprintln!("browser: {name} done at {:?}", started.elapsed());
    phase("starting three browsers");
    chat(&app, &alice, &bob).await;
    phase("chat");
    buffs(&app, &alice, &bob, &carol).await;
    phase("buffs");
    visitor_page(&app, &alice).await;
    phase("visitor page");
    click_through_the_header(&carol).await;
    phase("header links");
    // Bob has posted and chosen an answer: his view shows what the pages can do.
    screenshots_and_checks(&app, &bob).await;
    phase("screenshots and checks");

    reconnects_spread_out(app, &bob).await;
    phase("reconnect after the server went away");
    for page in [alice, bob, carol] {
        page.close().await.expect("close");
    }
}

/// Channel from the address, history at once then live, own messages marked,
/// markup kept as text, and a 429 shown next to the input with the text kept.
async fn chat(app: &TestApp, alice: &Client, bob: &Client) {
    let lobby = app.url("/chat/?channel=lobby");
    for (page, name) in [(alice, "alice"), (bob, "bob")] {
        page.goto(&lobby).await.expect("open the chat");
        live(page, name).await;
        assert_eq!(value_of(page, "#channel").await, "lobby");
        assert_eq!(text_of(page, "#channel-title").await, "#lobby");
        type_into(page, "#user", name).await;
    }
    for text in ["hello from alice", XSS] {
        send_chat(alice, text).await;
        wait_for(bob, Locator::XPath(&message_xpath(text, false)), text).await;
        wait_for(alice, Locator::XPath(&message_xpath(text, true)), text).await;
    }
    // The markup arrived as text: no image element was created, no alert opened.
    assert!(
        bob.find_all(Locator::Css("#messages img"))
            .await
            .expect("query")
            .is_empty()
    );
    assert!(bob.get_alert_text().await.is_err(), "no alert dialog");
    // New messages from others are announced to screen readers.
    wait_for(
        bob,
        Locator::XPath("//div[@id='announcer'][starts-with(., 'alice: ')]"),
        "the announcement",
    )
    .await;
    // A busy chat is not read out line by line: five messages 0.2 s apart are said
    // in at most two announcements, the last one summing up.
    script(
        bob,
        r#"const region = document.getElementById("announcer");
           window.__said = [];
           new MutationObserver(() => { if (region.textContent) window.__said.push(region.textContent); })
             .observe(region, { childList: true, characterData: true, subtree: true });
           for (let i = 1; i <= 5; i += 1) setTimeout(() => hubbub.announce("carol: line " + i, "messages"), 200 * i);
           return null;"#,
    )
    .await;
    // (Alice's last message may still be waiting for its turn: it joins the sum.)
    wait_for(
        bob,
        Locator::XPath("//div[@id='announcer'][contains(., 'carol: line 5')]"),
        "the last announcement",
    )
    .await;
    let said = script(bob, "return window.__said;").await;
    let said: Vec<&str> = said
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        said.len() <= 2
            && said
                .iter()
                .any(|s| s.contains(" new messages; the latest: ")),
        "{said:?}"
    );

    send_chat(bob, "hi alice").await;
    wait_for(
        alice,
        Locator::XPath(&message_xpath("hi alice", false)),
        "bob's message",
    )
    .await;

    // A reload shows the history at once, ours still marked as ours.
    bob.refresh().await.expect("reload");
    for (text, own) in [
        ("hello from alice", false),
        (XSS, false),
        ("hi alice", true),
    ] {
        wait_for(bob, Locator::XPath(&message_xpath(text, own)), text).await;
    }
    live(bob, "bob after the reload").await;

    // The fourth post within the burst: 429, shown by the input, the text kept.
    send_chat(alice, "one too many").await;
    let error = wait_for(
        alice,
        Locator::XPath("//p[@id='text-error'][contains(., 'Too many messages')]"),
        "the 429 message",
    )
    .await;
    let shown = error.text().await.expect("text");
    assert!(shown.contains("send again in"), "{shown}");
    assert_eq!(value_of(alice, "#text").await, "one too many");
    assert!(
        !css(alice, "#send-button")
            .await
            .is_enabled()
            .await
            .expect("enabled"),
        "sending waits for the Retry-After"
    );
    assert_eq!(
        css(alice, "#text")
            .await
            .attr("aria-invalid")
            .await
            .expect("attr")
            .as_deref(),
        Some("true")
    );

    // The API's 400 naming a field is shown by that field.
    type_into(alice, "#channel", "no spaces allowed").await;
    click(alice, "#channel-form button").await;
    wait_for(
        alice,
        Locator::XPath("//p[@id='channel-error'][contains(., 'Channel must be')]"),
        "the channel error",
    )
    .await;
}

/// Records every EventSource the page makes: its address, when it was made and when
/// it first failed (`performance.now()` ms). Installed before the page's own scripts.
const STREAM_SPY: &str = r#"
window.__streams = [];
const NativeEventSource = window.EventSource;
window.EventSource = class extends NativeEventSource {
  constructor(url, init) {
    super(url, init);
    const entry = { url: String(url), made: performance.now(), failed: null };
    window.__streams.push(entry);
    this.addEventListener("error", () => { if (entry.failed === null) entry.failed = performance.now(); });
  }
};
"#;

/// The server goes away under an open chat: the page says so, closes its stream and
/// opens a new one itself after a jittered pause (not after the server's fixed
/// `retry`, at the same instant as every other page), resuming after the last
/// message it has. The pauses of many pages spread over seconds.
async fn reconnects_spread_out(app: TestApp, page: &Client) {
    cdp(
        page,
        "Page.addScriptToEvaluateOnNewDocument",
        json!({ "source": STREAM_SPY }),
    )
    .await;
    page.goto(&app.url("/chat/?channel=lobby"))
        .await
        .expect("open the chat");
    live(page, "the chat before the outage").await;
    let newest = css(page, "#messages li:last-child")
        .await
        .attr("data-id")
        .await
        .expect("attr")
        .expect("the newest message's id");

    app.stop().await;
    wait_for(
        page,
        Locator::Css("#connection[data-state='reconnecting']"),
        "the reconnecting state",
    )
    .await;
    let streams = tokio::time::timeout(WAIT, async {
        loop {
            let streams = script(page, "return window.__streams;").await;
            if streams.as_array().is_some_and(|s| s.len() >= 2) {
                return streams;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the page opened a new stream by itself");
    let failed = streams[0]["failed"]
        .as_f64()
        .expect("the first stream failed");
    let reopened = streams[1]["made"].as_f64().expect("a time");
    assert!(
        reopened - failed >= 450.0,
        "the first retry waits at least 0.5 s: {streams}"
    );
    let url = streams[1]["url"].as_str().expect("url");
    assert!(
        url.ends_with(&format!("last_event_id={newest}")),
        "resumes after the newest message ({newest}): {url}"
    );
    // What 10,000 pages cut off at once would wait before their first retry.
    let spread = script(
        page,
        "const waits = Array.from({ length: 2000 }, () => hubbub.backoff(0));         return [Math.min(...waits), Math.max(...waits)];",
    )
    .await;
    let (shortest, longest) = (
        spread[0].as_f64().expect("ms"),
        spread[1].as_f64().expect("ms"),
    );
    assert!(
        shortest >= 500.0 && longest <= 4000.0 && longest - shortest >= 3000.0,
        "first retries spread over 0.5 s to 4 s: {spread}"
    );
}

/// Two viewers see a buff created on the dashboard appear live; the dashboard shows
/// the API's errors per field; a choice is highlighted on one viewer only.
async fn buffs(app: &TestApp, admin: &Client, bob: &Client, carol: &Client) {
    for (page, name) in [(bob, "bob"), (carol, "carol")] {
        page.goto(&app.url("/buffs/")).await.expect("open buffs");
        live(page, name).await;
        wait_for(
            page,
            Locator::XPath("//p[@id='list-state'][contains(., 'No questions yet')]"),
            "the empty state",
        )
        .await;
    }
    admin
        .goto(&app.url("/admin/buffs/"))
        .await
        .expect("open the dashboard");
    live(admin, "the dashboard").await;

    let question = "Which team scores next?";
    type_into(admin, "#question", question).await;
    // A token no header can carry is named as the problem, not as a network failure.
    type_into(admin, "#token", "tökén").await;
    click(admin, "#create-button").await;
    wait_for(
        admin,
        Locator::XPath("//p[@id='token-error'][contains(., 'can only hold')]"),
        "the token's characters refused",
    )
    .await;
    type_into(admin, "#token", "not-the-token").await;
    let answers = admin
        .find_all(Locator::Css("#answers input"))
        .await
        .expect("answers");
    assert_eq!(answers.len(), 2, "two answer boxes to start with");
    answers[0].send_keys("Home").await.expect("type");
    answers[1].send_keys("home").await.expect("type");
    click(admin, "#create-button").await;
    wait_for(
        admin,
        Locator::XPath("//p[@id='token-error'][contains(., 'refused')]"),
        "the 401 by the token",
    )
    .await;

    type_into(admin, "#token", TOKEN).await;
    click(admin, "#create-button").await;
    wait_for(
        admin,
        Locator::XPath("//p[@id='answers-error'][contains(., 'same answer twice')]"),
        "the 400 by the answers",
    )
    .await;
    assert_eq!(text_of(admin, "#question-error").await, "");
    assert_eq!(text_of(admin, "#token-error").await, "");

    answers[1].clear().await.expect("clear");
    answers[1].send_keys("Away").await.expect("type");
    click(admin, "#add-answer").await;
    let third = admin
        .find_all(Locator::Css("#answers input"))
        .await
        .expect("answers");
    assert_eq!(third.len(), 3);
    third[2].send_keys("<b>Nobody</b>").await.expect("type");
    click(admin, "#create-button").await;
    wait_for(
        admin,
        Locator::XPath("//p[@id='create-state'][contains(., 'Sent to viewers')]"),
        "the confirmation",
    )
    .await;
    wait_for(
        admin,
        Locator::XPath(&format!(
            "//ol[@id='recent']/li/p[@class='question'][. = {}]",
            xpath_literal(question)
        )),
        "the new buff in the recent list",
    )
    .await;

    // The token is in this tab's sessionStorage, in no address and no markup.
    assert!(
        !admin
            .current_url()
            .await
            .expect("url")
            .as_str()
            .contains(TOKEN)
    );
    assert!(!admin.source().await.expect("source").contains(TOKEN));
    assert_eq!(
        script(
            admin,
            "return sessionStorage.getItem('hubbub.admin.token');"
        )
        .await,
        json!(TOKEN)
    );

    let legend = format!(
        "//ol[@id='buffs']/li[contains(@class, 'new')]//legend[starts-with(., {})]",
        xpath_literal(question)
    );
    for (page, name) in [(bob, "bob"), (carol, "carol")] {
        wait_for(
            page,
            Locator::XPath(&legend),
            &format!("the buff live for {name}"),
        )
        .await;
        wait_for(
            page,
            Locator::XPath("//div[@id='announcer'][starts-with(., 'New question: ')]"),
            "the announcement",
        )
        .await;
        wait_for(
            page,
            Locator::XPath("//ol[@id='buffs']/li[1]//label[span = '<b>Nobody</b>']"),
            "the markup answer shown as text",
        )
        .await;
        assert!(
            page.find_all(Locator::Css("#buffs .answers b"))
                .await
                .expect("query")
                .is_empty(),
            "answers are text"
        );
    }

    let away = "//ol[@id='buffs']/li[1]//label[span = 'Away']";
    bob.find(Locator::XPath(away))
        .await
        .expect("answer")
        .click()
        .await
        .expect("choose");
    assert_eq!(count(bob, "#buffs label.chosen").await, 1);
    assert_eq!(
        text_of(bob, "#buffs label.chosen").await,
        "Away",
        "the chosen answer is highlighted"
    );
    assert_eq!(
        count(carol, "#buffs label.chosen").await,
        0,
        "choices stay on the device"
    );
    // It survives a reload on that device.
    bob.refresh().await.expect("reload");
    wait_for(bob, Locator::Css("#buffs label.chosen"), "the kept choice").await;
}

/// The count of one's own visits, and totals that move while the page is open.
async fn visitor_page(app: &TestApp, alice: &Client) {
    alice.goto(&app.url("/")).await.expect("visitor page");
    alice.goto(&app.url("/")).await.expect("visitor page again");
    assert_eq!(text_of(alice, "#visits").await, "2");
    let before: i64 = text_of(alice, "#total-visits")
        .await
        .parse()
        .expect("a number");
    // Someone else's visit (from the test's own client) shows up without a reload.
    assert_eq!(app.get("/").await.status(), 200);
    let after = format!("//dd[@id='total-visits'][. = '{}']", before + 1);
    wait_for(alice, Locator::XPath(&after), "the totals to move").await;
    wait_for(
        alice,
        Locator::Css("#stats-state[data-state='live']"),
        "the live note",
    )
    .await;
}

/// The header's links, round and round: each page opens and goes live. A page that
/// kept its stream open after being left (the back/forward cache keeps pages) would
/// use up the browser's six HTTP/1.1 connections to the server within a few clicks.
async fn click_through_the_header(page: &Client) {
    for round in 0..3 {
        for (link, streams) in [
            ("/chat/", true),
            ("/buffs/", true),
            ("/admin/buffs/", true),
            ("/", false),
        ] {
            let what = format!("{link} (round {round})");
            // A click that navigates returns once the new page has loaded: bound both.
            let step = async {
                css(page, &format!("header.site a[href='{link}']"))
                    .await
                    .click()
                    .await
                    .expect("click");
                wait_for(
                    page,
                    Locator::Css(&format!("a[aria-current='page'][href='{link}']")),
                    &what,
                )
                .await;
                if streams {
                    live(page, &what).await;
                } else {
                    wait_for(page, Locator::Id("visits"), &what).await;
                }
            };
            tokio::time::timeout(WAIT, step)
                .await
                .unwrap_or_else(|_| panic!("{what} took over {WAIT:?}"));
        }
    }
}

/// Contrast of every visible text against its background (WCAG AA), labels on every
/// input, no positive tabindex, panels and cards drawn as surfaces, nothing wider
/// than the screen: run on each page in each colour scheme.
const ACCESSIBILITY: &str = r#"
const rgb = (s) => (s.match(/[\d.]+/g) || []).map(Number);
const lum = ([r, g, b]) => [r, g, b]
  .map((c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; })
  .reduce((sum, c, i) => sum + c * [0.2126, 0.7152, 0.0722][i], 0);
const background = (node) => {
  for (let e = node; e; e = e.parentElement) {
    const c = rgb(getComputedStyle(e).backgroundColor);
    if (c.length === 3 || (c.length === 4 && c[3] > 0)) return c;
  }
  return [255, 255, 255];
};
const problems = [];
for (const node of document.querySelectorAll("body *")) {
  const own = Array.from(node.childNodes).some((n) => n.nodeType === 3 && n.textContent.trim() !== "");
  if (!own || node.closest(".visually-hidden, [hidden], noscript, :disabled, .skip")) continue;
  const style = getComputedStyle(node);
  if (style.display === "none" || style.visibility === "hidden") continue;
  const [a, b] = [lum(rgb(style.color)), lum(background(node))];
  const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  const size = parseFloat(style.fontSize);
  const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
  if (ratio < (large ? 3 : 4.5)) problems.push(`contrast ${ratio.toFixed(2)}: <${node.tagName.toLowerCase()} class="${node.className}"> ${node.textContent.trim().slice(0, 40)}`);
}
for (const field of document.querySelectorAll("input, textarea, select")) {
  if (field.type !== "hidden" && field.labels.length === 0 && !field.getAttribute("aria-label")) problems.push(`no label: #${field.id}`);
}
for (const node of document.querySelectorAll("[tabindex]")) {
  if (Number(node.getAttribute("tabindex")) > 0) problems.push(`positive tabindex: #${node.id}`);
}
for (const node of document.querySelectorAll(".panel, .buff, .card, .chat")) {
  const style = getComputedStyle(node);
  if (parseFloat(style.borderTopWidth) === 0 || rgb(style.backgroundColor)[3] === 0) problems.push(`no surface: <${node.tagName.toLowerCase()} class="${node.className}">`);
}
if (document.documentElement.scrollWidth > window.innerWidth + 1) problems.push(`scrolls sideways: ${document.documentElement.scrollWidth} > ${window.innerWidth}`);
return { problems, background: getComputedStyle(document.body).backgroundColor, width: window.innerWidth };
"#;

async fn screenshots_and_checks(app: &TestApp, page: &Client) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../browser");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let mut backgrounds = std::collections::BTreeMap::new();
    for (width, height, mobile, form) in [(1280, 800, false, "desktop"), (390, 844, true, "phone")]
    {
        cdp(
            page,
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
        )
        .await;
        for scheme in ["light", "dark"] {
            cdp(
                page,
                "Emulation.setEmulatedMedia",
                json!({ "features": [{ "name": "prefers-color-scheme", "value": scheme }] }),
            )
            .await;
            for (name, path) in PAGES {
                page.goto(&app.url(path)).await.expect("open");
                if *name == "visitors" {
                    wait_for(page, Locator::Id("visits"), "the visitor page").await;
                } else {
                    live(page, name).await;
                }
                let report = script(page, ACCESSIBILITY).await;
                assert_eq!(report["problems"], json!([]), "{name} ({scheme}, {form})");
                assert_eq!(report["width"], json!(width), "{name} ({form})");
                backgrounds.insert(scheme, report["background"].clone());
                let png = page.screenshot().await.expect("screenshot");
                std::fs::write(dir.join(format!("{name}-{scheme}-{form}.png")), png)
                    .expect("write screenshot");
            }
        }
    }
    assert_ne!(
        backgrounds["light"], backgrounds["dark"],
        "prefers-color-scheme: dark changes the page"
    );
}
