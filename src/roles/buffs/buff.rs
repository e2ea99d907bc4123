//! A buff as the API, the bus and SSE carry it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The bus topic new buffs travel on.
pub const TOPIC: &str = "hubbub/buffs";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buff {
    pub id: i64,
    pub question: String,
    pub answers: Vec<String>,
    #[serde(with = "crate::timestamp::rfc3339")]
    pub created_at: DateTime<Utc>,
}

impl crate::outbox::OutboxRow for Buff {
    fn id(&self) -> i64 {
        self.id
    }

    fn topic(&self) -> String {
        TOPIC.to_owned()
    }
}
