//! A small Server-Sent Events client for tests: message events with their ids.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::Value;

pub struct SseClient {
    stream: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buffer: String,
    pub headers: reqwest::header::HeaderMap,
}

#[derive(Debug, Clone)]
pub struct SseMessage {
    pub id: i64,
    pub data: Value,
}

impl SseClient {
    /// Opens `url` (resuming after `last_event_id` via the header when given).
    pub async fn connect(url: &str, last_event_id: Option<i64>) -> anyhow::Result<Self> {
        let client = reqwest::Client::new();
        let mut request = client.get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await?;
        anyhow::ensure!(response.status() == 200, "SSE status {}", response.status());
        let headers = response.headers().clone();
        Ok(Self {
            stream: Box::pin(response.bytes_stream()),
            buffer: String::new(),
            headers,
        })
    }

    /// The next `message` event, or `None` after `wait` without one (or at the end).
    pub async fn next_message(&mut self, wait: Duration) -> Option<SseMessage> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(message) = parse_block(&block) {
                    return Some(message);
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk.ok()?));
        }
    }

    /// Ids of the next `n` messages (fewer if `wait` passes between two).
    pub async fn ids(&mut self, n: usize, wait: Duration) -> Vec<i64> {
        let mut ids = Vec::new();
        while ids.len() < n {
            match self.next_message(wait).await {
                Some(message) => ids.push(message.id),
                None => break,
            }
        }
        ids
    }

    /// Whether the server ended the stream within `wait`.
    pub async fn ended(&mut self, wait: Duration) -> bool {
        matches!(
            tokio::time::timeout(wait, async {
                loop {
                    match self.stream.next().await {
                        None | Some(Err(_)) => return,
                        Some(Ok(_)) => {}
                    }
                }
            })
            .await,
            Ok(())
        )
    }
}

fn parse_block(block: &str) -> Option<SseMessage> {
    let (mut id, mut event, mut data) = (None, None, String::new());
    for line in block.lines() {
        if let Some(value) = line.strip_prefix("id:") {
            id = value.trim().parse().ok();
        } else if let Some(value) = line.strip_prefix("event:") {
            event = Some(value.trim().to_owned());
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push_str(value.strip_prefix(' ').unwrap_or(value));
        }
    }
    if event.as_deref() != Some("message") {
        return None;
    }
    Some(SseMessage {
        id: id?,
        data: serde_json::from_str(&data).ok()?,
    })
}
