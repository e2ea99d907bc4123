//! The MQTT bus: our own small MQTT 3.1.1 client over rumqttc's packet codec.
//!
//! Why not rumqttc's client: it assigns packet ids inside its event loop and, on a
//! clean-session reconnect, silently forgets queued and in-flight publishes, so a
//! caller cannot tell which PUBACK belongs to which publish (a waiter could be
//! completed by another message's PUBACK, or wait forever). Here one task owns the
//! connection: it gives each publish its packet id as it writes it, completes that
//! publish's waiter with the PUBACK carrying that id and nothing else, and when the
//! connection ends fails every outstanding waiter at once. Packet ids live and die
//! with a connection (clean session), so an id is never confused across
//! connections. Subscriptions are checked against the SUBACK's return codes.

mod session;
mod transport;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use prometheus::IntGauge;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{BusError, BusMessage, RECEIVE_BUFFER};
use crate::configuration::MqttSettings;
use crate::metrics::Metrics;
use session::{Options, PublishRequest};
use transport::Endpoint;

/// How long a publish may wait for the broker's PUBACK (a safety net: a lost
/// connection fails it at once).
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Publishes queued for the connection task.
const REQUEST_QUEUE: usize = 1024;
/// How long `close` waits for the connection task to say goodbye.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A queued publish's PUBACK, to wait for.
pub struct Acknowledgement {
    acked: oneshot::Receiver<Result<(), BusError>>,
    deadline: tokio::time::Instant,
}

impl Acknowledgement {
    pub async fn wait(self) -> Result<(), BusError> {
        match tokio::time::timeout_at(self.deadline, self.acked).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(BusError::Closed),
            Err(_) => Err(BusError::Timeout(ACK_TIMEOUT)),
        }
    }
}

struct Shared {
    /// The session is up: publishes can go out.
    session: AtomicBool,
    /// The session is up and every subscription was granted.
    ready: AtomicBool,
    connected_gauge: IntGauge,
    incoming: broadcast::Sender<BusMessage>,
    /// Fires each time the subscriptions are in place again after a (re)connect:
    /// whatever was published while they were not may have been missed.
    resubscribed: broadcast::Sender<()>,
}

#[derive(Clone)]
pub struct MqttBus {
    requests: mpsc::Sender<PublishRequest>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    task: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
    /// Stops the connection task when the last clone is dropped.
    _stop: Arc<DropGuard>,
}

impl MqttBus {
    pub fn connect(
        settings: &MqttSettings,
        subscriptions: Vec<String>,
        metrics: &Metrics,
    ) -> Result<Self, BusError> {
        let url = settings
            .url
            .as_ref()
            .ok_or_else(|| BusError::Mqtt("mqtt.url is not set".into()))?
            .url();
        let tls = url.scheme() == "mqtts";
        let host = url
            .host_str()
            .ok_or_else(|| BusError::Mqtt("mqtt.url has no host".into()))?;
        // An IPv6 literal comes bracketed from the URL; the socket wants it bare.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = url.port().unwrap_or(if tls { 8883 } else { 1883 });
        let endpoint = Endpoint::new(host, port, tls, settings.ca_file.as_deref())?;
        let client_id = settings.client_id.clone().unwrap_or_else(|| {
            format!(
                "hubbub-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            )
        });
        let login = settings.username.as_ref().map(|username| {
            let password = settings
                .password
                .as_ref()
                .map(|p| p.expose().to_owned())
                .unwrap_or_default();
            (username.clone(), password)
        });
        let (incoming, _) = broadcast::channel(RECEIVE_BUFFER);
        let (resubscribed, _) = broadcast::channel(16);
        let shared = Arc::new(Shared {
            session: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            connected_gauge: metrics
                .gauge(
                    "hubbub_mqtt_connected",
                    "1 while connected to the MQTT broker (and subscribed, where the process subscribes)",
                )
                .map_err(|e| BusError::Mqtt(e.to_string()))?,
            incoming,
            resubscribed,
        });
        let (requests, queue) = mpsc::channel(REQUEST_QUEUE);
        let stop = CancellationToken::new();
        let task = tokio::spawn(session::run(
            endpoint,
            Options {
                client_id,
                login,
                keep_alive: Duration::from_secs(10),
                subscriptions,
            },
            queue,
            shared.clone(),
            stop.clone(),
        ));
        Ok(Self {
            requests,
            shared,
            stop: stop.clone(),
            task: Arc::new(std::sync::Mutex::new(Some(task))),
            _stop: Arc::new(stop.drop_guard()),
        })
    }

    /// Ends the session: publishes still waiting fail, the broker gets a
    /// DISCONNECT (so it logs a clean goodbye, not a dropped connection). Waits
    /// for that at most a couple of seconds.
    pub async fn close(&self) {
        self.stop.cancel();
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, task).await;
        }
    }

    /// Publishes at QoS 1; `Ok` only once the broker acknowledged this very message.
    pub async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), BusError> {
        self.queue(topic, payload).await?.wait().await
    }

    /// Hands a QoS 1 publish to the connection, which writes publishes in the
    /// order they were queued; returns once it is queued, with what completes
    /// when the broker acknowledges it.
    pub async fn queue(&self, topic: &str, payload: Bytes) -> Result<Acknowledgement, BusError> {
        if !self.can_publish() {
            return Err(BusError::NotConnected);
        }
        let (done, acked) = oneshot::channel();
        let request = PublishRequest {
            topic: topic.to_owned(),
            payload,
            done,
        };
        // One deadline for the wait for room and the wait for the PUBACK.
        let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
        match tokio::time::timeout_at(deadline, self.requests.send(request)).await {
            Ok(Ok(())) => Ok(Acknowledgement { acked, deadline }),
            Ok(Err(_)) => Err(BusError::Closed),
            Err(_) => Err(BusError::Timeout(ACK_TIMEOUT)),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<BusMessage> {
        self.shared.incoming.subscribe()
    }

    /// Connected, and (when this process subscribes) every subscription granted.
    pub fn is_connected(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire)
    }

    /// The session is up, whatever became of the subscriptions.
    pub fn can_publish(&self) -> bool {
        self.shared.session.load(Ordering::Acquire)
    }

    pub fn resubscribed(&self) -> broadcast::Receiver<()> {
        self.shared.resubscribed.subscribe()
    }
}
