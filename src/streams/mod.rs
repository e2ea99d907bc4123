//! Streams: the ordered, durable sequences that go live to viewers (one per chat
//! channel, and the buffs). What chat, buffs and broadcast share lives here, so the
//! roles never import each other:
//!
//! - **append** under the stream's ordering lock in one database call, which gives
//!   each event its id (ids commit in order within a stream) and its `seq`
//!   (1, 2, 3, … within the stream, no holes), see `chat.rs` and `buffs.rs`;
//! - **read** `after(id, limit)` for resume and backfill, and the stream's head;
//! - the **topic** each stream travels on over the bus, and the **payload**: the
//!   event's JSON, exactly as SSE carries it, with `id` and `seq` in it;
//! - the **outbox relay** (`outbox.rs`) that publishes appended events in order.

pub mod buffs;
pub mod chat;
pub mod outbox;

use bytes::Bytes;
use sea_orm::DbErr;
use serde::{Deserialize, Serialize};

use crate::domain::Channel;
use crate::storage::Database;

/// An event of a stream, as stored, published and sent.
pub trait StreamItem: Serialize + Send + Sync + 'static {
    fn id(&self) -> i64;
    fn seq(&self) -> i64;
    /// The bus topic it travels on.
    fn topic(&self) -> String;
}

const CHAT_PREFIX: &str = "hubbub/chat/";
const BUFFS_TOPIC: &str = "hubbub/buffs";

/// Which stream: a chat channel, or the buffs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StreamKey {
    Chat(Channel),
    Buffs,
}

fn chat_topic(channel: &str) -> String {
    format!("{CHAT_PREFIX}{channel}")
}

impl StreamKey {
    /// The bus topic this stream travels on.
    pub fn topic(&self) -> String {
        match self {
            Self::Chat(channel) => chat_topic(channel.as_str()),
            Self::Buffs => BUFFS_TOPIC.to_owned(),
        }
    }

    /// The stream a bus topic carries, if any.
    pub fn from_topic(topic: &str) -> Option<Self> {
        if topic == BUFFS_TOPIC {
            return Some(Self::Buffs);
        }
        let channel = topic.strip_prefix(CHAT_PREFIX)?;
        Channel::parse(channel).ok().map(Self::Chat)
    }
}

/// The topic filters that receive every stream.
pub fn all_topics() -> Vec<String> {
    vec![format!("{CHAT_PREFIX}+"), BUFFS_TOPIC.to_owned()]
}

/// The topic filter of the buffs stream alone (for instances that only need to
/// hear of new buffs, such as a buff-list cache).
pub fn buffs_topic() -> &'static str {
    BUFFS_TOPIC
}

/// One event: its id, its place in the stream, and its JSON (the bus payload and
/// the SSE `data`).
#[derive(Debug, Clone)]
pub struct StreamEvent {
    pub id: i64,
    pub seq: i64,
    pub json: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("not a stream event: {0}")]
    Json(#[from] serde_json::Error),
    #[error("a stream event must be one line of JSON")]
    Multiline,
    /// An event of the previous release (no `seq`), published by one of its
    /// processes during a rolling deployment: the event is in the database, and
    /// reading the stream from there puts it in its place.
    #[error("event {0} has no seq (published by the previous release)")]
    Unsequenced(i64),
}

#[derive(Deserialize)]
struct Header {
    id: i64,
    seq: Option<i64>,
}

impl StreamEvent {
    pub fn encode<T: StreamItem>(item: &T) -> Result<Self, serde_json::Error> {
        Ok(Self {
            id: item.id(),
            seq: item.seq(),
            json: Bytes::from(serde_json::to_vec(item)?),
        })
    }

    /// A payload received from the bus: one line of JSON with `id` and `seq`.
    pub fn decode(payload: Bytes) -> Result<Self, PayloadError> {
        // serde_json never writes a raw line break; anything with one is not ours
        // and could break the SSE framing.
        if payload.iter().any(|b| *b == b'\n' || *b == b'\r') {
            return Err(PayloadError::Multiline);
        }
        let Header { id, seq } = serde_json::from_slice(&payload)?;
        let seq = seq.ok_or(PayloadError::Unsequenced(id))?;
        Ok(Self {
            id,
            seq,
            json: payload,
        })
    }
}

/// Reads of any stream, for the broadcast role.
#[derive(Clone)]
pub struct Streams {
    chat: chat::MessageStore,
    buffs: buffs::BuffStore,
}

impl Streams {
    pub fn new(db: Database) -> Self {
        Self {
            chat: chat::MessageStore::new(db.clone()),
            buffs: buffs::BuffStore::new(db),
        }
    }

    /// Up to `limit` events of `key` with an id above `after`, in order.
    pub async fn after(
        &self,
        key: &StreamKey,
        after: i64,
        limit: u32,
    ) -> Result<Vec<StreamEvent>, DbErr> {
        match key {
            StreamKey::Chat(channel) => encode_all(self.chat.after(channel, after, limit).await?),
            StreamKey::Buffs => encode_all(self.buffs.after(after, limit).await?),
        }
    }

    /// The id and seq of the stream's last event (`(0, 0)` when it has none).
    pub async fn head(&self, key: &StreamKey) -> Result<(i64, i64), DbErr> {
        match key {
            StreamKey::Chat(channel) => self.chat.head(channel).await,
            StreamKey::Buffs => self.buffs.head().await,
        }
    }
}

fn encode_all<T: StreamItem>(items: Vec<T>) -> Result<Vec<StreamEvent>, DbErr> {
    items
        .iter()
        .map(|item| StreamEvent::encode(item).map_err(|e| DbErr::Custom(e.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_map_to_streams_and_back() {
        let general = StreamKey::Chat(Channel::parse("general").expect("channel"));
        assert_eq!(general.topic(), "hubbub/chat/general");
        assert_eq!(StreamKey::from_topic("hubbub/chat/general"), Some(general));
        assert_eq!(
            StreamKey::from_topic("hubbub/buffs"),
            Some(StreamKey::Buffs)
        );
        assert_eq!(StreamKey::from_topic("hubbub/chat/Bad"), None);
        assert_eq!(StreamKey::from_topic("other/topic"), None);
        for filter in all_topics() {
            assert!(crate::bus::topic_matches(
                &filter,
                &filter.replace('+', "x")
            ));
        }
    }

    #[test]
    fn payloads_must_be_one_line_with_id_and_seq() {
        let event =
            StreamEvent::decode(Bytes::from_static(br#"{"id":4,"seq":2,"x":"a"}"#)).expect("valid");
        assert_eq!((event.id, event.seq), (4, 2));
        assert!(StreamEvent::decode(Bytes::from_static(b"{\"id\":4,\n\"seq\":2}")).is_err());
        assert!(matches!(
            StreamEvent::decode(Bytes::from_static(br#"{"id":4,"channel":"a"}"#)),
            Err(PayloadError::Unsequenced(4))
        ));
        assert!(StreamEvent::decode(Bytes::from_static(b"nope")).is_err());
    }
}
