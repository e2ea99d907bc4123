//! An SSE client that stays connected in the background and reconnects with
//! `Last-Event-ID` whenever the stream breaks, as EventSource does.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::ensure;
use futures_util::StreamExt;

/// Pause before reconnecting (EventSource waits the stream's `retry:`, 2 s; shorter
/// here so that tests stay quick).
const RECONNECT_DELAY: Duration = Duration::from_millis(200);

pub struct Follower {
    ids: Arc<Mutex<Vec<i64>>>,
    /// Attempts that ended (a stream that broke, or a connection that failed).
    pub reconnects: Arc<AtomicUsize>,
    /// Attempts answered with something other than 200, or that failed to connect.
    pub refused: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Follower {
    /// Follows `url` (an SSE stream) with `client` until dropped.
    pub fn spawn(client: reqwest::Client, url: String) -> Self {
        let ids = Arc::new(Mutex::new(Vec::new()));
        let reconnects = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(follow(
            client,
            url,
            ids.clone(),
            reconnects.clone(),
            refused.clone(),
        ));
        Self {
            ids,
            reconnects,
            refused,
            task,
        }
    }

    /// The event ids received so far, in arrival order.
    pub fn received(&self) -> Vec<i64> {
        self.ids.lock().map(|ids| ids.clone()).unwrap_or_default()
    }

    pub fn received_len(&self) -> usize {
        self.ids.lock().map(|ids| ids.len()).unwrap_or_default()
    }

    pub fn forget(&self) {
        if let Ok(mut ids) = self.ids.lock() {
            ids.clear();
        }
    }

    /// Waits until `expected.len()` ids are in; then they must be exactly `expected`.
    pub async fn expect_exactly(&self, expected: &[i64], wait: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + wait;
        while self.received_len() < expected.len() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Anything extra (a duplicate) shows up shortly after.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let got = self.received();
        ensure!(got == expected, "got {got:?}, expected {expected:?}");
        Ok(())
    }
}

async fn follow(
    client: reqwest::Client,
    url: String,
    ids: Arc<Mutex<Vec<i64>>>,
    reconnects: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
) {
    let mut last: Option<i64> = None;
    loop {
        let mut request = client.get(&url).header("accept", "text/event-stream");
        if let Some(last) = last {
            request = request.header("last-event-id", last.to_string());
        }
        match request.send().await {
            Ok(response) if response.status() == 200 => {
                let mut stream = response.bytes_stream();
                let mut buffer = String::new();
                while let Some(Ok(chunk)) = stream.next().await {
                    buffer.push_str(&String::from_utf8_lossy(&chunk));
                    while let Some(end) = buffer.find("\n\n") {
                        let block: String = buffer.drain(..end + 2).collect();
                        if let Some(id) = block.lines().find_map(|l| l.strip_prefix("id:"))
                            && let Ok(id) = id.trim().parse::<i64>()
                        {
                            last = Some(id);
                            if let Ok(mut ids) = ids.lock() {
                                ids.push(id);
                            }
                        }
                    }
                }
            }
            _ => {
                refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        reconnects.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}
