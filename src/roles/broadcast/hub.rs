//! Fan-out inside one broadcast instance: one channel per active stream (a chat
//! channel, or the buffs), created when its first client arrives and removed
//! when its last one leaves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

/// One event of a stream: its id and its JSON, encoded once for every client.
#[derive(Debug)]
pub struct Item {
    pub id: i64,
    pub json: String,
}

/// How far a client may fall behind before it is cut off (it then resumes from
/// history, so nothing is lost; others are never slowed down by it).
pub const CLIENT_BUFFER: usize = 1024;

#[derive(Clone, Default)]
pub struct Hub {
    channels: Arc<Mutex<HashMap<String, broadcast::Sender<Arc<Item>>>>>,
}

/// A client's live feed; leaving the channel when dropped.
pub struct Subscription {
    pub receiver: broadcast::Receiver<Arc<Item>>,
    /// Weak, so a reset (dropping the hub's sender) still ends this receiver.
    sender: broadcast::WeakSender<Arc<Item>>,
    hub: Hub,
    stream: String,
}

impl Hub {
    pub fn subscribe(&self, stream: &str) -> Subscription {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let sender = channels
            .entry(stream.to_owned())
            .or_insert_with(|| broadcast::channel(CLIENT_BUFFER).0);
        Subscription {
            receiver: sender.subscribe(),
            sender: sender.downgrade(),
            hub: self.clone(),
            stream: stream.to_owned(),
        }
    }

    /// Delivers an item to the clients of `stream`, if it has any here.
    pub fn deliver(&self, stream: &str, item: Item) {
        let channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = channels.get(stream) {
            let _ = sender.send(Arc::new(item));
        }
    }

    /// Cuts every client off (they reconnect and resume from history): used when
    /// messages may have been dropped before reaching the hub.
    pub fn disconnect_all(&self) {
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    #[cfg(test)]
    pub fn active_channels(&self) -> usize {
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut channels = self.hub.channels.lock().unwrap_or_else(|e| e.into_inner());
        // Our receiver is still alive here, so "only us" is a count of one. After
        // `disconnect_all` the entry may be a newer channel: that one is not ours.
        let ours = self.sender.upgrade();
        if channels.get(&self.stream).is_some_and(|sender| {
            ours.as_ref().is_some_and(|ours| sender.same_channel(ours))
                && sender.receiver_count() <= 1
        }) {
            channels.remove(&self.stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: i64) -> Item {
        Item {
            id,
            json: "{}".into(),
        }
    }

    #[tokio::test]
    async fn channels_come_and_go_with_their_clients() {
        let hub = Hub::default();
        let mut a = hub.subscribe("a");
        let b1 = hub.subscribe("b");
        let b2 = hub.subscribe("b");
        assert_eq!(hub.active_channels(), 2);
        hub.deliver("a", item(1));
        hub.deliver("c", item(2));
        assert_eq!(a.receiver.recv().await.expect("message").id, 1);
        drop(b1);
        assert_eq!(hub.active_channels(), 2, "b still has a client");
        drop(b2);
        assert_eq!(hub.active_channels(), 1);
        drop(a);
        assert_eq!(hub.active_channels(), 0);
    }

    #[tokio::test]
    async fn a_client_cut_off_by_a_reset_does_not_remove_its_successor() {
        let hub = Hub::default();
        let mut old = hub.subscribe("a");
        hub.disconnect_all();
        assert!(
            old.receiver.recv().await.is_err(),
            "the old client is cut off"
        );
        let mut new = hub.subscribe("a");
        drop(old);
        hub.deliver("a", item(7));
        assert_eq!(new.receiver.recv().await.expect("still delivered").id, 7);
    }
}
