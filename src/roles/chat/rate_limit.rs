//! Per-client posting limits: a token bucket shared by every instance in Redis when
//! Redis is configured, else (or while Redis is down) one per instance.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::redis::Script;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::cache::Cache;

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
    shared: Option<(Cache, Arc<Script>)>,
    per_minute: u32,
    burst: u32,
}

/// `Err(seconds)` says when to retry.
pub type Verdict = Result<(), u64>;

impl RateLimiter {
    pub fn new(per_minute: u32, burst: u32, cache: &Cache) -> Self {
        let per_minute_nz = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        let burst_nz = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_minute(per_minute_nz).allow_burst(burst_nz);
        Self {
            local: Arc::new(governor::RateLimiter::keyed(quota)),
            shared: cache
                .is_shared()
                .then(|| (cache.clone(), Arc::new(Script::new(TOKEN_BUCKET)))),
            per_minute: per_minute.max(1),
            burst: burst.max(1),
        }
    }

    pub async fn check(&self, client: IpAddr) -> Verdict {
        if let Some((Cache::Redis(redis), script)) = &self.shared {
            let key = format!("hubbub:chat:rate:{client}");
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
        self.local.check_key(&client).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::MemoryCache;

    #[tokio::test]
    async fn burst_then_refused_with_a_retry_time() {
        let limiter = RateLimiter::new(60, 3, &Cache::Memory(MemoryCache::default()));
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        for _ in 0..3 {
            assert_eq!(limiter.check(a).await, Ok(()));
        }
        let refused = limiter.check(a).await.expect_err("over the burst");
        assert!((1..=2).contains(&refused), "{refused}");
        assert_eq!(limiter.check(b).await, Ok(()), "clients are limited apart");
    }
}
