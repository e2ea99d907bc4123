use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most entries kept; beyond that the least recently used go first.
const MAX_ENTRIES: u64 = 10_000;
/// Most bytes of keys and values kept.
const MAX_BYTES: u64 = 16 * 1024 * 1024;

/// In-process cache for the embedded mode, bounded in entries and bytes; each
/// entry expires after its own time to live.
#[derive(Clone)]
pub struct MemoryCache {
    entries: moka::sync::Cache<String, Arc<(Instant, String)>>,
}

impl Default for MemoryCache {
    fn default() -> Self {
        let floor = u32::try_from(MAX_BYTES.div_ceil(MAX_ENTRIES)).unwrap_or(u32::MAX);
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(MAX_BYTES)
                .weigher(move |key: &String, value: &Arc<(Instant, String)>| {
                    u32::try_from(key.len() + value.1.len())
                        .unwrap_or(u32::MAX)
                        .max(floor)
                })
                .build(),
        }
    }
}

impl MemoryCache {
    pub fn get(&self, key: &str) -> Option<String> {
        self.entries
            .get(key)
            .filter(|entry| entry.0 > Instant::now())
            .map(|entry| entry.1.clone())
    }

    pub fn set(&self, key: &str, value: &str, ttl: Duration) {
        let expires = Instant::now() + ttl;
        self.entries
            .insert(key.to_owned(), Arc::new((expires, value.to_owned())));
    }

    pub fn delete(&self, key: &str) {
        self.entries.invalidate(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_can_be_deleted() {
        let cache = MemoryCache::default();
        cache.set("a", "1", Duration::from_secs(60));
        cache.set("b", "2", Duration::ZERO);
        assert_eq!(cache.get("a").as_deref(), Some("1"));
        assert_eq!(cache.get("b"), None);
        cache.delete("a");
        assert_eq!(cache.get("a"), None);
    }

    #[test]
    fn many_keys_stay_within_the_bound() {
        let cache = MemoryCache::default();
        for i in 0..(MAX_ENTRIES * 3) {
            cache.set(&format!("key-{i}"), "v", Duration::from_secs(60));
        }
        cache.entries.run_pending_tasks();
        let entries = cache.entries.entry_count();
        assert!(entries <= MAX_ENTRIES, "{entries} entries");
        assert!(cache.entries.weighted_size() <= MAX_BYTES);
    }
}
