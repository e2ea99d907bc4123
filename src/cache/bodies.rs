//! In-process caches of ready-to-send response bodies, bounded in entries and in
//! bytes (moka: TinyLFU admission, LRU eviction, expiry after a fixed time).
//! Concurrent misses of one key are coalesced: one caller loads, the others wait
//! for its result, so a burst of requests after an expiry costs one load.

use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use moka::future::Cache;

/// What an entry weighs besides its body (key, bookkeeping).
const ENTRY_OVERHEAD: u32 = 128;

#[derive(Clone)]
pub struct BodyCache<K> {
    cache: Cache<K, Bytes>,
}

impl<K> BodyCache<K>
where
    K: Hash + Eq + Send + Sync + Clone + 'static,
{
    /// At most `max_entries` bodies and `max_bytes` bytes, each kept for `ttl`.
    pub fn new(name: &str, max_entries: u64, max_bytes: u64, ttl: Duration) -> Self {
        let max_entries = max_entries.max(1);
        let max_bytes = max_bytes.max(1);
        // Every entry weighs at least max_bytes / max_entries, so no more than
        // max_entries fit; and at least its body, so no more than max_bytes.
        let floor = u32::try_from(max_bytes.div_ceil(max_entries))
            .unwrap_or(u32::MAX)
            .max(ENTRY_OVERHEAD);
        let cache = Cache::builder()
            .name(name)
            .max_capacity(max_bytes)
            .weigher(move |_key: &K, body: &Bytes| {
                u32::try_from(body.len())
                    .unwrap_or(u32::MAX)
                    .saturating_add(ENTRY_OVERHEAD)
                    .max(floor)
            })
            .time_to_live(ttl)
            .build();
        Self { cache }
    }

    pub async fn get(&self, key: &K) -> Option<Bytes> {
        self.cache.get(key).await
    }

    /// The cached body, or the one `load` makes (cached when it succeeds). Callers
    /// that miss at the same time share one `load`; they all get its error too.
    pub async fn get_or_load<E, F>(&self, key: K, load: F) -> Result<Bytes, Arc<E>>
    where
        E: Send + Sync + 'static,
        F: Future<Output = Result<Bytes, E>>,
    {
        self.cache.try_get_with(key, load).await
    }

    /// Drops every entry (now, for readers; memory is freed in the background).
    pub fn clear(&self) {
        self.cache.invalidate_all();
    }

    /// Entries and weighed bytes, after pending evictions have run.
    pub async fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks().await;
        (self.cache.entry_count(), self.cache.weighted_size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_in_entries_and_in_bytes() {
        let cache: BodyCache<u32> = BodyCache::new("test", 100, 64 * 1024, Duration::from_secs(60));
        for key in 0..10_000u32 {
            let body = cache
                .get_or_load(key, async move { Ok::<_, ()>(Bytes::from(vec![b'x'; 10])) })
                .await
                .expect("loaded");
            assert_eq!(body.len(), 10);
        }
        let (entries, bytes) = cache.usage().await;
        assert!(entries <= 100, "{entries} entries");
        assert!(bytes <= 64 * 1024, "{bytes} bytes");

        // Big bodies: the byte bound decides.
        let cache: BodyCache<u32> = BodyCache::new("test", 100, 64 * 1024, Duration::from_secs(60));
        for key in 20_000..20_100u32 {
            cache
                .get_or_load(key, async move {
                    Ok::<_, ()>(Bytes::from(vec![b'y'; 8 * 1024]))
                })
                .await
                .expect("loaded");
        }
        let (entries, bytes) = cache.usage().await;
        assert!(bytes <= 64 * 1024, "{bytes} bytes");
        assert!(entries <= 8, "{entries} entries of 8 KiB in 64 KiB");
    }

    #[tokio::test]
    async fn concurrent_misses_load_once_and_errors_are_not_cached() {
        let cache: BodyCache<&'static str> =
            BodyCache::new("test", 10, 1024, Duration::from_secs(60));
        let loads = std::sync::atomic::AtomicU32::new(0);
        let load = || async {
            loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, ()>(Bytes::from_static(b"body"))
        };
        let results =
            futures_util::future::join_all((0..20).map(|_| cache.get_or_load("k", load()))).await;
        assert!(results.iter().all(|r| r.as_deref() == Ok(&b"body"[..])));
        assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 1);

        assert!(
            cache
                .get_or_load("e", async { Err::<Bytes, _>("down") })
                .await
                .is_err()
        );
        assert!(cache.get(&"e").await.is_none());
        cache.clear();
        assert!(cache.get(&"k").await.is_none());
    }
}
