//! The message bus between roles: MQTT (Mosquitto) in production, an in-process
//! channel in the embedded mode. Publishing returns once the message is safely
//! handed over (the broker's PUBACK for MQTT); subscribers get every message on
//! the topics the process subscribed to.

mod in_process;
mod mqtt;

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::broadcast;

pub use in_process::InProcessBus;
pub use mqtt::{Acknowledgement as MqttAcknowledgement, MqttBus};

use crate::configuration::Settings;
use crate::metrics::Metrics;

/// Messages received but not yet taken by a slow local consumer before it lags.
const RECEIVE_BUFFER: usize = 4096;

#[derive(Debug, Clone)]
pub struct BusMessage {
    pub topic: String,
    pub payload: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("the broker did not acknowledge within {0:?}")]
    Timeout(Duration),
    #[error("the bus is shut down")]
    Closed,
    #[error("not connected to the broker")]
    NotConnected,
    #[error("the connection to the broker ended before its acknowledgement")]
    Disconnected,
    #[error("mqtt: {0}")]
    Mqtt(String),
    #[error("mqtt.ca_file: {0}")]
    Tls(String),
}

/// A queued publish's acknowledgement (see [`Bus::queue`]).
pub enum Acknowledgement {
    /// In process: delivered when queued.
    Done,
    Mqtt(MqttAcknowledgement),
}

impl Acknowledgement {
    pub async fn wait(self) -> Result<(), BusError> {
        match self {
            Self::Done => Ok(()),
            Self::Mqtt(ack) => ack.wait().await,
        }
    }
}

#[derive(Clone)]
pub enum Bus {
    InProcess(InProcessBus),
    Mqtt(MqttBus),
}

impl Bus {
    /// MQTT when `mqtt.url` is set, else in process. `subscriptions` are topic
    /// filters this process receives (re-subscribed after every reconnect).
    pub fn from_settings(
        settings: &Settings,
        subscriptions: Vec<String>,
        metrics: &Metrics,
    ) -> Result<Self, BusError> {
        match &settings.mqtt.url {
            Some(_) => Ok(Self::Mqtt(MqttBus::connect(
                &settings.mqtt,
                subscriptions,
                metrics,
            )?)),
            None => Ok(Self::InProcess(InProcessBus::new(subscriptions))),
        }
    }

    pub async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), BusError> {
        match self {
            Self::InProcess(bus) => {
                bus.publish(topic, payload);
                Ok(())
            }
            Self::Mqtt(bus) => bus.publish(topic, payload).await,
        }
    }

    /// Queues a publish and returns what completes with its acknowledgement.
    /// Publishes queued one after the other (each `queue` awaited before the
    /// next) go out in that order; futures of `publish` polled together need not,
    /// as tokio's cooperative budget can make one of them wait its turn again.
    pub async fn queue(&self, topic: &str, payload: Bytes) -> Result<Acknowledgement, BusError> {
        match self {
            Self::InProcess(bus) => {
                bus.publish(topic, payload);
                Ok(Acknowledgement::Done)
            }
            Self::Mqtt(bus) => bus.queue(topic, payload).await.map(Acknowledgement::Mqtt),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<BusMessage> {
        match self {
            Self::InProcess(bus) => bus.subscribe(),
            Self::Mqtt(bus) => bus.subscribe(),
        }
    }

    /// Fires when the subscriptions were re-established after a reconnect, so what
    /// was published meanwhile may have been missed (never, in process).
    pub fn resubscribed(&self) -> broadcast::Receiver<()> {
        match self {
            // A sender that is dropped at once: the receiver just never fires.
            Self::InProcess(_) => broadcast::channel(1).1,
            Self::Mqtt(bus) => bus.resubscribed(),
        }
    }

    /// Whether messages can flow both ways now: connected and, where this process
    /// subscribes, every subscription granted (always, in process).
    pub fn is_connected(&self) -> bool {
        match self {
            Self::InProcess(_) => true,
            Self::Mqtt(bus) => bus.is_connected(),
        }
    }

    /// Whether a publish can go out now (always, in process).
    pub fn can_publish(&self) -> bool {
        match self {
            Self::InProcess(_) => true,
            Self::Mqtt(bus) => bus.can_publish(),
        }
    }

    /// Says goodbye to the broker (MQTT); publishes still waiting fail.
    pub async fn close(&self) {
        if let Self::Mqtt(bus) = self {
            bus.close().await;
        }
    }

    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Mqtt(_))
    }
}

/// Whether an MQTT topic filter (`+`, `#`) matches a topic.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::topic_matches;

    #[test]
    fn filters() {
        assert!(topic_matches("hubbub/chat/+", "hubbub/chat/general"));
        assert!(!topic_matches("hubbub/chat/+", "hubbub/chat/a/b"));
        assert!(!topic_matches("hubbub/chat/+", "hubbub/buffs"));
        assert!(topic_matches("hubbub/#", "hubbub/buffs"));
        assert!(topic_matches("hubbub/buffs", "hubbub/buffs"));
        assert!(!topic_matches("hubbub/buffs", "hubbub/buffs/x"));
    }
}
