//! A stored chat message, as the API, the bus and SSE carry it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub id: i64,
    pub channel: String,
    pub user: String,
    pub text: String,
    #[serde(with = "crate::timestamp::rfc3339")]
    pub sent_at: DateTime<Utc>,
}

impl crate::outbox::OutboxRow for ChatMessage {
    fn id(&self) -> i64 {
        self.id
    }

    fn topic(&self) -> String {
        topic(&self.channel)
    }
}

/// The bus topic a channel's messages travel on.
pub fn topic(channel: &str) -> String {
    format!("hubbub/chat/{channel}")
}

/// The subscription that receives every channel.
pub const ALL_CHANNELS: &str = "hubbub/chat/+";
