//! A stored chat message, as the API, the bus and SSE carry it.

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub id: i64,
    pub channel: String,
    pub user: String,
    pub text: String,
    #[serde(with = "rfc3339")]
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

/// Microseconds: what both PostgreSQL and SQLite keep exactly.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

mod rfc3339 {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&value.to_rfc3339_opts(SecondsFormat::Micros, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}
