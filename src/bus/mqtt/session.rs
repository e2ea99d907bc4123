//! The connection task: connect, subscribe, publish with our own packet ids, match
//! every PUBACK to its publish, keep alive, and on any failure fail every
//! outstanding publish at once before reconnecting.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{
    Codec, ConnAck, Connect, ConnectReturnCode, Packet, PubAck, Publish, Subscribe,
    SubscribeFilter, SubscribeReasonCode,
};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::transport::{Endpoint, Transport};
use crate::bus::{BusError, BusMessage};

/// Largest packet either way.
const MAX_PACKET: usize = 256 * 1024;
/// Publishes awaiting their PUBACK on one connection.
const MAX_IN_FLIGHT: usize = 512;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnect attempts start fast and never wait longer than this, so a broker that
/// is back is used again within half a second.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// After the broker refused a subscription (its ACL), ask again this often.
const SUBSCRIBE_RETRY: Duration = Duration::from_secs(10);
/// How long a DISCONNECT may take to go out when the process stops.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

pub struct PublishRequest {
    pub topic: String,
    pub payload: Bytes,
    pub done: oneshot::Sender<Result<(), BusError>>,
}

pub struct Options {
    pub client_id: String,
    pub login: Option<(String, String)>,
    pub keep_alive: Duration,
    pub subscriptions: Vec<String>,
}

type Reader = FramedRead<ReadHalf<Transport>, Codec>;
type Writer = FramedWrite<WriteHalf<Transport>, Codec>;

fn codec() -> Codec {
    Codec {
        max_incoming_size: MAX_PACKET,
        max_outgoing_size: MAX_PACKET,
    }
}

pub async fn run(
    endpoint: Endpoint,
    options: Options,
    mut requests: mpsc::Receiver<PublishRequest>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let mut backoff = MIN_BACKOFF;
    let mut was_up = true;
    loop {
        let connected = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            connected = tokio::time::timeout(CONNECT_TIMEOUT, connect(&endpoint, &options)) => {
                connected.unwrap_or_else(|_| Err(SessionError::Io(std::io::ErrorKind::TimedOut.into())))
            }
        };
        match connected {
            Ok((reader, writer)) => {
                backoff = MIN_BACKOFF;
                was_up = true;
                tracing::info!(host = %endpoint.host, port = endpoint.port, "connected to the MQTT broker");
                let mut connection = Connection {
                    reader,
                    writer,
                    write_timeout: options.keep_alive,
                    in_flight: HashMap::new(),
                    next_id: 0,
                    subscribe_id: None,
                };
                let ended = connection
                    .serve(&options, &mut requests, &shared, &stop)
                    .await;
                shared.session.store(false, Ordering::Release);
                shared.ready.store(false, Ordering::Release);
                shared.connected_gauge.set(0);
                let failed = connection.fail_in_flight();
                match ended {
                    Ok(()) => break,
                    Err(error) => tracing::warn!(
                        %error,
                        failed_publishes = failed,
                        "lost the MQTT broker; reconnecting"
                    ),
                }
            }
            Err(error) => {
                if was_up {
                    tracing::warn!(%error, host = %endpoint.host, port = endpoint.port, "cannot connect to the MQTT broker; retrying");
                } else {
                    tracing::debug!(%error, "MQTT broker still unreachable");
                }
                was_up = false;
            }
        }
        // Back off; publishes asked for meanwhile fail at once (the outbox retries).
        let pause = tokio::time::sleep(backoff);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                () = &mut pause => break,
                Some(request) = requests.recv() => {
                    let _ = request.done.send(Err(BusError::NotConnected));
                }
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    shared.session.store(false, Ordering::Release);
    shared.ready.store(false, Ordering::Release);
    shared.connected_gauge.set(0);
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("mqtt packet: {0}")]
    Codec(#[from] rumqttc::mqttbytes::Error),
    #[error("the broker refused the connection: {0:?}")]
    Refused(ConnectReturnCode),
    #[error("the broker closed the connection")]
    Closed,
    #[error("the broker sent {0} first instead of CONNACK")]
    NoConnAck(&'static str),
    #[error("no PINGRESP within the keep-alive interval")]
    PingTimeout,
    #[error("the broker took nothing we wrote for {0:?}")]
    WriteStalled(Duration),
}

async fn connect(endpoint: &Endpoint, options: &Options) -> Result<(Reader, Writer), SessionError> {
    let transport = endpoint.connect().await?;
    let (read, write) = tokio::io::split(transport);
    let mut reader = FramedRead::new(read, codec());
    let mut writer = FramedWrite::new(write, codec());
    let mut connect = Connect::new(options.client_id.clone());
    connect.keep_alive = u16::try_from(options.keep_alive.as_secs()).unwrap_or(u16::MAX);
    // Clean session: the broker keeps nothing of ours between connections, so
    // packet ids are never carried from one connection to the next.
    connect.clean_session = true;
    if let Some((username, password)) = &options.login {
        connect.set_login(username.clone(), password.clone());
    }
    writer.send(Packet::Connect(connect)).await?;
    match reader.next().await {
        Some(Ok(Packet::ConnAck(ConnAck {
            code: ConnectReturnCode::Success,
            ..
        }))) => Ok((reader, writer)),
        Some(Ok(Packet::ConnAck(ConnAck { code, .. }))) => Err(SessionError::Refused(code)),
        Some(Ok(_)) => Err(SessionError::NoConnAck("another packet")),
        Some(Err(error)) => Err(error.into()),
        None => Err(SessionError::Closed),
    }
}

struct Connection {
    reader: Reader,
    writer: Writer,
    /// A write that makes no progress for this long means the broker is gone,
    /// even if its host still acknowledges TCP (a hung or frozen broker fills our
    /// send buffer; waiting on it would also stop the keep-alive check).
    write_timeout: Duration,
    /// Each publish on the wire, by its packet id, with the waiter it completes.
    in_flight: HashMap<u16, oneshot::Sender<Result<(), BusError>>>,
    next_id: u16,
    subscribe_id: Option<u16>,
}

impl Connection {
    /// A packet id used by nothing on this connection.
    fn allocate_id(&mut self) -> u16 {
        loop {
            self.next_id = self.next_id.wrapping_add(1);
            let id = self.next_id;
            if id != 0 && !self.in_flight.contains_key(&id) && self.subscribe_id != Some(id) {
                return id;
            }
        }
    }

    /// Queues a packet for the next flush, within the write timeout.
    async fn feed(&mut self, packet: Packet) -> Result<(), SessionError> {
        tokio::time::timeout(self.write_timeout, self.writer.feed(packet))
            .await
            .map_err(|_| SessionError::WriteStalled(self.write_timeout))??;
        Ok(())
    }

    /// Writes a packet out now, within the write timeout.
    async fn send(&mut self, packet: Packet) -> Result<(), SessionError> {
        tokio::time::timeout(self.write_timeout, self.writer.send(packet))
            .await
            .map_err(|_| SessionError::WriteStalled(self.write_timeout))??;
        Ok(())
    }

    async fn subscribe(&mut self, filters: &[String]) -> Result<(), SessionError> {
        let id = self.allocate_id();
        self.subscribe_id = Some(id);
        let mut subscribe = Subscribe::new_many(
            filters
                .iter()
                .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)),
        );
        subscribe.pkid = id;
        self.send(Packet::Subscribe(subscribe)).await
    }

    /// Fails every publish still waiting for its PUBACK; returns how many.
    fn fail_in_flight(&mut self) -> usize {
        let n = self.in_flight.len();
        for (_, waiter) in self.in_flight.drain() {
            let _ = waiter.send(Err(BusError::Disconnected));
        }
        n
    }

    async fn serve(
        &mut self,
        options: &Options,
        requests: &mut mpsc::Receiver<PublishRequest>,
        shared: &Shared,
        stop: &CancellationToken,
    ) -> Result<(), SessionError> {
        shared.session.store(true, Ordering::Release);
        let mut resubscribe_at: Option<Instant> = None;
        if options.subscriptions.is_empty() {
            shared.ready.store(true, Ordering::Release);
            shared.connected_gauge.set(1);
        } else {
            self.subscribe(&options.subscriptions).await?;
        }
        let mut ping = tokio::time::interval(options.keep_alive);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.reset();
        let mut awaiting_pong = false;
        let mut unflushed = false;
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => {
                    // A clean goodbye, but never a reason to hang the shutdown.
                    let _ = tokio::time::timeout(DISCONNECT_TIMEOUT, self.writer.send(Packet::Disconnect)).await;
                    return Ok(());
                }
                packet = self.reader.next() => {
                    let packet = packet.ok_or(SessionError::Closed)??;
                    match packet {
                        Packet::PubAck(PubAck { pkid }) => match self.in_flight.remove(&pkid) {
                            Some(waiter) => {
                                let _ = waiter.send(Ok(()));
                            }
                            None => tracing::debug!(pkid, "PUBACK for no publish of this connection"),
                        },
                        Packet::Publish(publish) => {
                            if publish.qos != QoS::AtMostOnce {
                                self.feed(Packet::PubAck(PubAck::new(publish.pkid))).await?;
                                unflushed = true;
                            }
                            let _ = shared.incoming.send(BusMessage {
                                topic: publish.topic,
                                payload: publish.payload,
                            });
                        }
                        Packet::SubAck(suback) if Some(suback.pkid) == self.subscribe_id => {
                            self.subscribe_id = None;
                            let refused: Vec<&str> = options
                                .subscriptions
                                .iter()
                                .zip(suback.return_codes.iter())
                                .filter(|(_, code)| matches!(code, SubscribeReasonCode::Failure))
                                .map(|(filter, _)| filter.as_str())
                                .collect();
                            if refused.is_empty()
                                && suback.return_codes.len() == options.subscriptions.len()
                            {
                                tracing::info!(filters = ?options.subscriptions, "subscribed");
                                shared.ready.store(true, Ordering::Release);
                                shared.connected_gauge.set(1);
                                let _ = shared.resubscribed.send(());
                            } else {
                                tracing::error!(
                                    refused = ?refused,
                                    "the MQTT broker refused subscriptions (check its ACL for this user); \
                                     this instance stays not ready and asks again every 10 s"
                                );
                                resubscribe_at = Some(Instant::now() + SUBSCRIBE_RETRY);
                            }
                        }
                        Packet::PingResp => awaiting_pong = false,
                        other => tracing::debug!(packet = ?other, "ignoring an MQTT packet"),
                    }
                }
                flushed = self.writer.flush(), if unflushed => {
                    flushed?;
                    unflushed = false;
                }
                Some(first) = requests.recv(), if self.in_flight.len() < MAX_IN_FLIGHT => {
                    // This publish and whatever else is queued, written together.
                    let mut next = Some(first);
                    while let Some(request) = next.take() {
                        if request.done.is_closed() {
                            // Its caller gave up (timeout): do not send it blind.
                        } else {
                            let id = self.allocate_id();
                            let mut publish =
                                Publish::from_bytes(request.topic, QoS::AtLeastOnce, request.payload);
                            publish.pkid = id;
                            self.in_flight.insert(id, request.done);
                            self.feed(Packet::Publish(publish)).await?;
                            unflushed = true;
                        }
                        if self.in_flight.len() < MAX_IN_FLIGHT {
                            next = requests.try_recv().ok();
                        }
                    }
                }
                _ = ping.tick() => {
                    if awaiting_pong {
                        return Err(SessionError::PingTimeout);
                    }
                    self.feed(Packet::PingReq).await?;
                    unflushed = true;
                    awaiting_pong = true;
                }
                () = sleep_until(resubscribe_at), if resubscribe_at.is_some() => {
                    resubscribe_at = None;
                    self.subscribe(&options.subscriptions).await?;
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}
