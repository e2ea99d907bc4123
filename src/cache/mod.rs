//! A small key/value cache with expiry: Redis when configured (shared by every
//! instance), otherwise in process. Callers treat every error as a miss and go
//! to the database, so a Redis outage degrades speed, never correctness.

mod bodies;
mod memory;
mod redis;

use std::time::Duration;

pub use bodies::BodyCache;
pub use memory::MemoryCache;
pub use redis::RedisCache;

use crate::configuration::Settings;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis: {0}")]
    Redis(String),
    #[error("redis did not answer in time")]
    Timeout,
}

#[derive(Clone)]
pub enum Cache {
    Memory(MemoryCache),
    Redis(RedisCache),
}

impl Cache {
    pub fn from_settings(settings: &Settings) -> Result<Self, CacheError> {
        match &settings.redis.url {
            Some(url) => Ok(Self::Redis(RedisCache::new(
                url,
                settings.redis.password.as_ref(),
            )?)),
            None => Ok(Self::Memory(MemoryCache::default())),
        }
    }

    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Redis(_))
    }

    pub async fn get(&self, key: &str) -> Result<Option<String>, CacheError> {
        match self {
            Self::Memory(cache) => Ok(cache.get(key)),
            Self::Redis(cache) => cache.get(key).await,
        }
    }

    pub async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), CacheError> {
        match self {
            Self::Memory(cache) => {
                cache.set(key, value, ttl);
                Ok(())
            }
            Self::Redis(cache) => cache.set(key, value, ttl).await,
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), CacheError> {
        match self {
            Self::Memory(cache) => {
                cache.delete(key);
                Ok(())
            }
            Self::Redis(cache) => cache.delete(key).await,
        }
    }

    /// Whether the cache answers; the in-process one always does.
    pub async fn ping(&self) -> bool {
        match self {
            Self::Memory(_) => true,
            Self::Redis(cache) => cache.ping().await,
        }
    }
}
