//! Hooks the buff-list cache to the bus: a new buff on `hubbub/buffs` (from any
//! instance) invalidates the cached pages, and so does a re-subscription after a
//! reconnect (what was published meanwhile may have been missed). The only place
//! that knows how new buffs travel; re-wire here if that changes.

use std::sync::Arc;

use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::lists::ListCache;
use crate::bus::Bus;
use crate::streams::buffs_topic;

/// The topics the buffs role must receive.
pub fn subscriptions() -> Vec<String> {
    vec![buffs_topic().to_owned()]
}

#[derive(Deserialize)]
struct Announced {
    id: i64,
}

/// Follows the bus until `shutdown`.
pub fn follow(bus: &Bus, lists: Arc<ListCache>, shutdown: CancellationToken) {
    let mut messages = bus.subscribe();
    let mut resubscribed = bus.resubscribed();
    tokio::spawn(async move {
        // The in-process bus never re-subscribes: its channel is closed at once.
        let mut may_resubscribe = true;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                message = messages.recv() => match message {
                    Ok(message) if message.topic == buffs_topic() => {
                        let id = serde_json::from_slice::<Announced>(&message.payload)
                            .ok()
                            .map(|a| a.id);
                        lists.buff_arrived(id);
                    }
                    Ok(_) => {}
                    // Fell behind: some of what was missed may have been buffs.
                    Err(RecvError::Lagged(_)) => lists.invalidate(),
                    Err(RecvError::Closed) => break,
                },
                again = resubscribed.recv(), if may_resubscribe => match again {
                    Ok(()) | Err(RecvError::Lagged(_)) => lists.invalidate(),
                    Err(RecvError::Closed) => may_resubscribe = false,
                },
            }
        }
    });
}
