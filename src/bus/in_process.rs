use bytes::Bytes;
use tokio::sync::broadcast;

use super::{BusMessage, RECEIVE_BUFFER, topic_matches};

/// The embedded bus: one process, one channel; same delivery as MQTT would give.
#[derive(Clone)]
pub struct InProcessBus {
    sender: broadcast::Sender<BusMessage>,
    subscriptions: std::sync::Arc<Vec<String>>,
}

impl InProcessBus {
    pub fn new(subscriptions: Vec<String>) -> Self {
        let (sender, _) = broadcast::channel(RECEIVE_BUFFER);
        Self {
            sender,
            subscriptions: std::sync::Arc::new(subscriptions),
        }
    }

    pub fn publish(&self, topic: &str, payload: Bytes) {
        if self.subscriptions.iter().any(|f| topic_matches(f, topic)) {
            // No receiver yet is fine: nobody is listening in this process.
            let _ = self.sender.send(BusMessage {
                topic: topic.to_owned(),
                payload,
            });
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<BusMessage> {
        self.sender.subscribe()
    }
}
