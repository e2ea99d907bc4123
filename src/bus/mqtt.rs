use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use prometheus::IntGauge;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS, SubscribeFilter,
    TlsConfiguration, Transport,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::sync::{Mutex, broadcast, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{BusError, BusMessage, RECEIVE_BUFFER};
use crate::configuration::MqttSettings;
use crate::metrics::Metrics;

/// How long a publish waits for the broker's PUBACK.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Publishes waiting for their PUBACK. rumqttc assigns packet ids as it sends, in
/// the order publishes were queued, so waiters queue in that order and are matched
/// to ids when the event loop reports each outgoing publish.
#[derive(Default)]
struct Pending {
    unassigned: VecDeque<oneshot::Sender<()>>,
    in_flight: HashMap<u16, oneshot::Sender<()>>,
}

struct Shared {
    pending: Mutex<Pending>,
    connected: AtomicBool,
    connected_gauge: IntGauge,
    incoming: broadcast::Sender<BusMessage>,
    /// Fires each time the subscriptions are in place again after a (re)connect:
    /// whatever was published while they were not may have been missed.
    resubscribed: broadcast::Sender<()>,
}

#[derive(Clone)]
pub struct MqttBus {
    client: AsyncClient,
    shared: Arc<Shared>,
    /// Stops the event loop when the last clone is dropped.
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
        let port = url.port().unwrap_or(if tls { 8883 } else { 1883 });
        let client_id = settings.client_id.clone().unwrap_or_else(|| {
            format!(
                "hubbub-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            )
        });
        let mut options = MqttOptions::new(client_id, host, port);
        options
            .set_keep_alive(Duration::from_secs(10))
            .set_clean_session(true)
            .set_max_packet_size(256 * 1024, 256 * 1024);
        if let Some(username) = &settings.username {
            let password = settings
                .password
                .as_ref()
                .map(|p| p.expose().to_owned())
                .unwrap_or_default();
            options.set_credentials(username.clone(), password);
        }
        if tls {
            options.set_transport(Transport::tls_with_config(tls_config(
                settings.ca_file.as_deref(),
            )?));
        }
        let (client, event_loop) = AsyncClient::new(options, 1024);
        let (incoming, _) = broadcast::channel(RECEIVE_BUFFER);
        let (resubscribed, _) = broadcast::channel(16);
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            connected: AtomicBool::new(false),
            connected_gauge: metrics
                .gauge(
                    "hubbub_mqtt_connected",
                    "1 while connected to the MQTT broker",
                )
                .map_err(|e| BusError::Mqtt(e.to_string()))?,
            incoming,
            resubscribed,
        });
        let stop = CancellationToken::new();
        tokio::spawn(run_event_loop(
            event_loop,
            client.clone(),
            shared.clone(),
            subscriptions,
            stop.clone(),
        ));
        Ok(Self {
            client,
            shared,
            _stop: Arc::new(stop.drop_guard()),
        })
    }

    pub async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), BusError> {
        let (acked, ack) = oneshot::channel();
        {
            let mut pending = self.shared.pending.lock().await;
            pending.unassigned.push_back(acked);
            // Never wait for queue space while holding the lock: the event loop needs
            // it to make progress. A full queue (broker away) is an error to retry.
            if let Err(error) =
                self.client
                    .try_publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
            {
                pending.unassigned.pop_back();
                return Err(BusError::Mqtt(error.to_string()));
            }
        }
        match tokio::time::timeout(ACK_TIMEOUT, ack).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(BusError::Closed),
            Err(_) => Err(BusError::Timeout(ACK_TIMEOUT)),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<BusMessage> {
        self.shared.incoming.subscribe()
    }

    /// Connected, and (when this process subscribes) subscribed.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    pub fn resubscribed(&self) -> broadcast::Receiver<()> {
        self.shared.resubscribed.subscribe()
    }
}

fn mark_connected(shared: &Shared) {
    shared.connected.store(true, Ordering::Relaxed);
    shared.connected_gauge.set(1);
}

fn tls_config(ca_file: Option<&std::path::Path>) -> Result<TlsConfiguration, BusError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certificates = CertificateDer::pem_file_iter(path)
                .map_err(|e| BusError::Tls(format!("{}: {e}", path.display())))?;
            for certificate in certificates {
                let certificate =
                    certificate.map_err(|e| BusError::Tls(format!("{}: {e}", path.display())))?;
                roots
                    .add(certificate)
                    .map_err(|e| BusError::Tls(format!("{}: {e}", path.display())))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| BusError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}

async fn run_event_loop(
    mut event_loop: EventLoop,
    client: AsyncClient,
    shared: Arc<Shared>,
    subscriptions: Vec<String>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => break,
            event = event_loop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(100);
                tracing::info!("connected to the MQTT broker");
                if subscriptions.is_empty() {
                    mark_connected(&shared);
                } else {
                    // A clean session forgets subscriptions: make them on every connect,
                    // and count as connected only once the broker confirmed them.
                    let filters = subscriptions
                        .iter()
                        .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                    if let Err(error) = client.try_subscribe_many(filters) {
                        tracing::error!(%error, "could not subscribe");
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                mark_connected(&shared);
                let _ = shared.resubscribed.send(());
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let _ = shared.incoming.send(BusMessage {
                    topic: publish.topic,
                    payload: publish.payload,
                });
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                let mut pending = shared.pending.lock().await;
                if let Some(waiter) = pending.in_flight.remove(&ack.pkid) {
                    let _ = waiter.send(());
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let mut pending = shared.pending.lock().await;
                // A retransmission after a reconnect reuses its id: already matched.
                if !pending.in_flight.contains_key(&pkid)
                    && let Some(waiter) = pending.unassigned.pop_front()
                {
                    pending.in_flight.insert(pkid, waiter);
                }
            }
            Ok(_) => {}
            Err(error) => {
                if shared.connected.swap(false, Ordering::Relaxed) {
                    tracing::warn!(%error, "lost the MQTT broker; reconnecting");
                } else {
                    tracing::debug!(%error, "MQTT broker still unreachable");
                }
                shared.connected_gauge.set(0);
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    shared.connected.store(false, Ordering::Relaxed);
    shared.connected_gauge.set(0);
}
