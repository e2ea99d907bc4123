//! What the broadcast role's tests share.

use super::hub::Hub;
use crate::domain::{Channel, MessageText, UserName};
use crate::streams::chat::MessageStore;
use crate::streams::{StreamEvent, StreamKey};

/// Stores a message of `size` characters in `channel` and offers it to the hub,
/// as the bus would; its id.
pub(super) async fn store_and_offer(
    store: &MessageStore,
    channel: &Channel,
    hub: &Hub,
    key: &StreamKey,
    size: usize,
) -> i64 {
    let message = store
        .insert(
            channel,
            &UserName::parse("u").expect("user"),
            &MessageText::parse(&"x".repeat(size)).expect("text"),
        )
        .await
        .expect("insert");
    hub.offer(key, StreamEvent::encode(&message).expect("encode"));
    message.id
}
