//! The newest page of buffs for each `limit`, ready to send, in process. Only these
//! pages are cached (what every viewer polls); a page `before` some id is read from
//! the database each time, so no client can fill the cache with pages of its own
//! making. Every entry belongs to a generation; a new buff starts a new one, and
//! what was loaded under an older generation is never served again.

use std::collections::BTreeSet;
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
/// Buff ids remembered as having come back on the bus, for creators waiting.
const ANNOUNCED_KEPT: usize = 4096;

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
    /// The buff ids most recently seen on the bus.
    seen: watch::Sender<Announced>,
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
            seen: watch::Sender::new(Announced::default()),
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
            self.seen.send_if_modified(|seen| seen.insert(id));
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
        tokio::time::timeout(timeout, seen.wait_for(|seen| seen.contains(id)))
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
    /// What was cached before such a spell is dropped too: a buff created meanwhile
    /// may never be announced (a missed message, a version key that could not be
    /// bumped, a Redis that comes back from its snapshot with the old version).
    async fn current_generation(&self) -> Option<u64> {
        match &self.freshness {
            Freshness::Bus(bus) if !bus.is_connected() => {
                self.invalidate();
                None
            }
            Freshness::Bus(_) => Some(self.generation.load(Ordering::SeqCst)),
            Freshness::RedisVersion(cache) => {
                let version = match cache.get(VERSION_KEY).await {
                    Ok(version) => version,
                    Err(error) => {
                        tracing::debug!(%error, "buff version unavailable; reading the database");
                        self.invalidate();
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

/// The ids of buffs seen on the bus, the newest `ANNOUNCED_KEPT`. Ids are not
/// announced in id order (buff 6 can commit, and go out, before buff 5), so a
/// creator waits for its own id, not for any id as high.
#[derive(Default)]
struct Announced(BTreeSet<i64>);

impl Announced {
    /// Whether `id` is new.
    fn insert(&mut self, id: i64) -> bool {
        let new = self.0.insert(id);
        if self.0.len() > ANNOUNCED_KEPT {
            self.0.pop_first();
        }
        new
    }

    /// Seen, or older than everything kept (forgotten after thousands of newer ones).
    fn contains(&self, id: i64) -> bool {
        self.0.contains(&id)
            || (self.0.len() == ANNOUNCED_KEPT && self.0.first().is_some_and(|first| id < *first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_creator_waits_for_its_own_buff_not_a_later_one() {
        let mut announced = Announced::default();
        assert!(announced.insert(6));
        assert!(!announced.contains(5), "buff 6 went out before buff 5");
        assert!(announced.insert(5));
        assert!(announced.contains(5) && announced.contains(6));
        assert!(!announced.insert(5), "seen again");
        for id in 100..(100 + ANNOUNCED_KEPT as i64) {
            announced.insert(id);
        }
        assert_eq!(announced.0.len(), ANNOUNCED_KEPT, "bounded");
        assert!(announced.contains(7), "forgotten, and older than all kept");
        assert!(!announced.contains(100 + ANNOUNCED_KEPT as i64));
    }
}
