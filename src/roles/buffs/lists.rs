//! The newest page of buffs for each `limit`, ready to send, in process. Only these
//! pages are cached (what every viewer polls); a page `before` some id is read from
//! the database each time, so no client can fill the cache with pages of its own
//! making. Every entry belongs to a generation; a new buff starts a new one, and
//! what was loaded under an older generation is never served again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use prometheus::IntGauge;
use tokio::sync::{Mutex, watch};

use crate::bus::Bus;
use crate::cache::{BodyCache, Cache};
use crate::http::ApiError;

/// Pages kept: one per `limit` per generation, with room for a stale generation.
const MAX_ENTRIES: u64 = 256;
/// Bytes kept: 100 buffs of the largest size are about 250 KiB.
const MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Bumped on every create where instances share Redis but no bus.
pub const VERSION_KEY: &str = "hubbub:buffs:version";

/// How this instance learns that another one created a buff.
pub enum Freshness {
    /// Every instance receives each new buff on the bus (MQTT), or there is one
    /// process (the in-process bus). While not subscribed, the cache is bypassed.
    Bus(Bus),
    /// Instances share Redis but no bus: the version key, read on each request,
    /// says whether another instance created a buff. Bypassed while Redis fails.
    RedisVersion(Cache),
}

pub struct ListCache {
    pages: BodyCache<(u64, u32)>,
    generation: AtomicU64,
    freshness: Freshness,
    /// The Redis version the current generation belongs to.
    version: Mutex<Option<String>>,
    /// The highest buff id seen on the bus.
    seen: watch::Sender<i64>,
    usage: Usage,
}

/// What the cache holds, as metrics (updated whenever a page is loaded).
pub struct Usage {
    pub entries: IntGauge,
    pub bytes: IntGauge,
}

impl ListCache {
    pub fn new(freshness: Freshness, ttl: Duration, usage: Usage) -> Arc<Self> {
        Arc::new(Self {
            pages: BodyCache::new("buff-lists", MAX_ENTRIES, MAX_BYTES, ttl),
            generation: AtomicU64::new(0),
            freshness,
            version: Mutex::new(None),
            seen: watch::Sender::new(0),
            usage,
        })
    }

    /// Every cached page is out of date from now on.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.pages.clear();
    }

    /// A buff arrived on the bus: pages are out of date, and a creator waiting for
    /// its buff to have gone round learns it has.
    pub fn buff_arrived(&self, id: Option<i64>) {
        self.invalidate();
        if let Some(id) = id {
            self.seen.send_if_modified(|seen| {
                let newer = id > *seen;
                *seen = (*seen).max(id);
                newer
            });
        }
    }

    /// Waits (up to `timeout`) until buff `id` came back on the shared bus, that is
    /// until the broker has handed it to every instance; at once without one.
    pub async fn wait_until_announced(&self, id: i64, timeout: Duration) -> bool {
        let Freshness::Bus(bus) = &self.freshness else {
            return true;
        };
        if !bus.is_shared() || !bus.is_connected() {
            return true;
        }
        let mut seen = self.seen.subscribe();
        tokio::time::timeout(timeout, seen.wait_for(|seen| *seen >= id))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The newest `limit` buffs' JSON: cached when this instance can tell it is
    /// current, else (and on a miss) from `load`.
    pub async fn newest<F>(&self, limit: u32, load: F) -> Result<(Bytes, bool), ApiError>
    where
        F: Future<Output = Result<Bytes, ApiError>>,
    {
        let Some(generation) = self.current_generation().await else {
            return load.await.map(|body| (body, false));
        };
        let key = (generation, limit);
        if let Some(body) = self.pages.get(&key).await {
            return Ok((body, true));
        }
        let loaded = self
            .pages
            .get_or_load(key, load)
            .await
            .map(|body| (body, false))
            .map_err(|error| (*error).clone());
        let (entries, bytes) = self.pages.usage().await;
        self.usage
            .entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.usage
            .bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        loaded
    }

    /// The generation to read and fill, or `None` when the cache cannot be trusted.
    async fn current_generation(&self) -> Option<u64> {
        match &self.freshness {
            Freshness::Bus(bus) if !bus.is_connected() => None,
            Freshness::Bus(_) => Some(self.generation.load(Ordering::SeqCst)),
            Freshness::RedisVersion(cache) => {
                let version = match cache.get(VERSION_KEY).await {
                    Ok(version) => version,
                    Err(error) => {
                        tracing::debug!(%error, "buff version unavailable; reading the database");
                        return None;
                    }
                };
                let mut known = self.version.lock().await;
                if *known != version {
                    self.invalidate();
                    *known = version;
                }
                Some(self.generation.load(Ordering::SeqCst))
            }
        }
    }
}
