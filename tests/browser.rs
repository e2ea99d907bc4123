//! The demo page in a real browser: headless Chromium driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`). Screenshots go to target/browser/.

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use support::app::{TestApp, spawn_app};
use support::ports::free_port;

const XSS: &str = "<img src=x onerror=alert(1)>";

struct Driver {
    child: std::process::Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
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
        .spawn()
        .expect("start chromedriver");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Driver { child, port }
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
                "--disable-quic", "--no-first-run", "--window-size=1000,800",
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

async fn join(page: &Client, app: &TestApp, user: &str) {
    page.goto(&app.url("/chat/")).await.expect("open /chat/");
    page.find(Locator::Id("user"))
        .await
        .expect("user")
        .send_keys(user)
        .await
        .expect("type");
    page.find(Locator::Css("#join button"))
        .await
        .expect("join")
        .click()
        .await
        .expect("click");
    page.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#send:not([hidden])"))
        .await
        .expect("joined");
    // Wait for the EventSource to be open before anyone sends.
    page.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::XPath(
            "//p[@id='status'][starts-with(., 'Connected')]",
        ))
        .await
        .expect("connected");
}

async fn screenshot(page: &Client, name: &str) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../browser");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let png = page.screenshot().await.expect("screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
}

#[tokio::test]
async fn two_pages_chat_live_text_stays_text_and_the_visitor_page_counts() {
    // fantoccini's TLS stack is not used (WebDriver is plain HTTP on loopback), but
    // rustls wants one provider chosen when several are compiled in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let app = spawn_app("").await.expect("app");
    let driver = chromedriver().await;
    let (profile_a, profile_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let alice = browser(&driver, &profile_a).await;
    let bob = browser(&driver, &profile_b).await;
    join(&alice, &app, "alice").await;
    join(&bob, &app, "bob").await;

    for text in ["hello from alice", XSS] {
        alice
            .find(Locator::Id("text"))
            .await
            .expect("text")
            .send_keys(text)
            .await
            .expect("type");
        alice
            .find(Locator::Css("#send button"))
            .await
            .expect("send")
            .click()
            .await
            .expect("click");
        let xpath = format!(
            "//ol[@id='messages']/li/span[@class='text'][. = {}]",
            xpath_literal(text)
        );
        bob.wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::XPath(&xpath))
            .await
            .unwrap_or_else(|_| panic!("bob sees {text:?}"));
    }
    // The markup arrived as text: no image element was created, no alert opened.
    assert!(
        bob.find_all(Locator::Css("#messages img"))
            .await
            .expect("query")
            .is_empty()
    );
    assert!(bob.get_alert_text().await.is_err(), "no alert dialog");
    screenshot(&alice, "chat-alice").await;
    screenshot(&bob, "chat-bob").await;

    alice.goto(&app.url("/")).await.expect("visitor page");
    alice.goto(&app.url("/")).await.expect("visitor page again");
    let count = alice
        .find(Locator::Id("visits"))
        .await
        .expect("count")
        .text()
        .await
        .expect("text");
    assert_eq!(count, "2");
    screenshot(&alice, "visitors").await;

    alice.close().await.expect("close");
    bob.close().await.expect("close");
    app.stop().await;
}

/// An XPath string literal for any text (quotes included).
fn xpath_literal(text: &str) -> String {
    if !text.contains('\'') {
        format!("'{text}'")
    } else {
        format!("concat('{}')", text.replace('\'', "', \"'\", '"))
    }
}
