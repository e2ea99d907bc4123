//! Per-client posting limits: a token bucket shared by every instance in Redis when
//! Redis is configured, else (or while Redis is down) one per instance. A client is
//! its IPv4 address or its IPv6 network (`chat.rate_limit_ipv6_prefix`, a /64 by
//! default: one subscriber holds a whole /64, so per address it would hold 2^64
//! buckets).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use deadpool_redis::redis::Script;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::cache::Cache;
use crate::domain::{client_network, network_key};

/// How often the local limiter forgets clients whose bucket has refilled (a
/// forgotten client starts with a full bucket, exactly as if remembered).
const PRUNE_EVERY: Duration = Duration::from_secs(30);
/// Clients the local limiter holds before it prunes at once instead of waiting.
/// After such a prune it waits until the store has doubled again: a prune scans
/// every bucket, and when most are busy (a flood from many networks) pruning on
/// every check would cost O(clients) per post.
const PRUNE_ABOVE: usize = 100_000;

/// Redis token bucket. Time comes from Redis itself so instances with skewed
/// clocks agree. Returns 0 when allowed, else milliseconds until a token is due.
const TOKEN_BUCKET: &str = r"
local rate = tonumber(ARGV[1]) -- tokens per millisecond
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate) + 1000)
return wait
";

#[derive(Clone)]
pub struct RateLimiter {
    local: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    /// The store's size that triggers the next prune from `check`.
    prune_at: Arc<AtomicUsize>,
    /// Prunes run from `check` (for tests).
    #[cfg(test)]
    prunes: Arc<AtomicUsize>,
    shared: Option<(Cache, Arc<Script>)>,
    per_minute: u32,
    burst: u32,
    ipv6_prefix: u8,
}

/// `Err(seconds)` says when to retry.
pub type Verdict = Result<(), u64>;

impl RateLimiter {
    /// Starts pruning the local limiter in the background (ends when it is dropped).
    pub fn new(per_minute: u32, burst: u32, ipv6_prefix: u8, cache: &Cache) -> Self {
        let per_minute_nz = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        let burst_nz = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_minute(per_minute_nz).allow_burst(burst_nz);
        let local = Arc::new(governor::RateLimiter::keyed(quota));
        let prune_at = Arc::new(AtomicUsize::new(PRUNE_ABOVE));
        tokio::spawn(prune_periodically(
            Arc::downgrade(&local),
            Arc::downgrade(&prune_at),
        ));
        Self {
            local,
            prune_at,
            #[cfg(test)]
            prunes: Arc::default(),
            shared: cache
                .is_shared()
                .then(|| (cache.clone(), Arc::new(Script::new(TOKEN_BUCKET)))),
            per_minute: per_minute.max(1),
            burst: burst.max(1),
            ipv6_prefix,
        }
    }

    pub async fn check(&self, client: IpAddr) -> Verdict {
        if let Some((Cache::Redis(redis), script)) = &self.shared {
            let key = format!("hubbub:chat:rate:{}", network_key(client, self.ipv6_prefix));
            let rate = f64::from(self.per_minute) / 60_000.0;
            let call = async {
                let mut connection = redis.pool().get().await.map_err(|e| e.to_string())?;
                script
                    .key(&key)
                    .arg(rate)
                    .arg(self.burst)
                    .invoke_async::<u64>(&mut connection)
                    .await
                    .map_err(|e| e.to_string())
            };
            match tokio::time::timeout(Duration::from_millis(500), call).await {
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(wait_ms)) => return Err(wait_ms.div_ceil(1000).max(1)),
                Ok(Err(error)) => {
                    tracing::debug!(%error, "shared rate limit unavailable; limiting locally")
                }
                Err(_) => tracing::debug!("shared rate limit timed out; limiting locally"),
            }
        }
        let network = client_network(client, self.ipv6_prefix);
        let verdict = self.local.check_key(&network).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        });
        let size = self.local.len();
        let prune_at = self.prune_at.load(Ordering::Relaxed);
        // One caller prunes; the others go on.
        if size > prune_at
            && self
                .prune_at
                .compare_exchange(prune_at, usize::MAX, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.local.retain_recent();
            #[cfg(test)]
            self.prunes.fetch_add(1, Ordering::Relaxed);
            let left = self.local.len();
            self.prune_at
                .store(PRUNE_ABOVE.max(left.saturating_mul(2)), Ordering::Relaxed);
        }
        verdict
    }

    /// Clients the local limiter holds a bucket for.
    #[cfg(test)]
    fn local_clients(&self) -> usize {
        self.local.len()
    }
}

async fn prune_periodically(
    local: Weak<DefaultKeyedRateLimiter<IpAddr>>,
    prune_at: Weak<AtomicUsize>,
) {
    let mut every = tokio::time::interval(PRUNE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let (Some(local), Some(prune_at)) = (local.upgrade(), prune_at.upgrade()) else {
            break;
        };
        local.retain_recent();
        local.shrink_to_fit();
        // Unless `check` is pruning right now (it sets the threshold when done).
        let threshold = prune_at.load(Ordering::Relaxed);
        if threshold != usize::MAX {
            let _ = prune_at.compare_exchange(
                threshold,
                PRUNE_ABOVE.max(local.len().saturating_mul(2)),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::MemoryCache;

    #[tokio::test]
    async fn burst_then_refused_with_a_retry_time() {
        let limiter = RateLimiter::new(60, 3, 64, &Cache::Memory(MemoryCache::default()));
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        for _ in 0..3 {
            assert_eq!(limiter.check(a).await, Ok(()));
        }
        let refused = limiter.check(a).await.expect_err("over the burst");
        assert!((1..=2).contains(&refused), "{refused}");
        assert_eq!(limiter.check(b).await, Ok(()), "clients are limited apart");
    }

    #[tokio::test]
    async fn one_ipv6_network_is_one_client_and_idle_buckets_are_pruned() {
        // One token a minute: the loop below cannot earn a second one.
        let limiter = RateLimiter::new(1, 5, 64, &Cache::Memory(MemoryCache::default()));
        let mut allowed = 0;
        for host in 0..10_000u32 {
            let ip: IpAddr = format!("2001:db8:7:9:{:x}:{:x}::1", host >> 16, host & 0xffff)
                .parse()
                .expect("ip");
            if limiter.check(ip).await.is_ok() {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 5, "10,000 addresses of one /64 share one burst");
        assert_eq!(limiter.local_clients(), 1);
        let other: IpAddr = "2001:db8:7:a::1".parse().expect("ip");
        assert_eq!(
            limiter.check(other).await,
            Ok(()),
            "the next /64 is another client"
        );

        // A bucket that has refilled holds nothing worth keeping.
        let fast = RateLimiter::new(60_000, 1, 64, &Cache::Memory(MemoryCache::default()));
        for i in 0..1_000u32 {
            let ip: IpAddr = format!("198.51.{}.{}", i / 256, i % 256)
                .parse()
                .expect("ip");
            let _ = fast.check(ip).await;
        }
        assert_eq!(fast.local_clients(), 1_000);
        tokio::time::sleep(Duration::from_millis(20)).await;
        fast.local.retain_recent();
        assert_eq!(fast.local_clients(), 0);
    }

    #[tokio::test]
    async fn a_flood_of_busy_clients_is_not_scanned_on_every_check() {
        // No bucket refills during the test, so a prune frees nothing.
        let limiter = RateLimiter::new(1, 5, 64, &Cache::Memory(MemoryCache::default()));
        let clients = PRUNE_ABOVE + 2_000;
        for i in 0..clients {
            let ip = IpAddr::V6(std::net::Ipv6Addr::from(
                (0x2001_0db8_u128 << 96) | ((i as u128) << 64),
            ));
            let _ = limiter.check(ip).await;
        }
        assert_eq!(limiter.local_clients(), clients);
        let prunes = limiter.prunes.load(Ordering::Relaxed);
        assert!(
            prunes <= 1,
            "{prunes} full scans of {clients} busy buckets for 2,000 checks"
        );
    }
}
