use std::time::Duration;

use deadpool_redis::redis::{AsyncCommands, cmd};
use deadpool_redis::{Config, Pool, Runtime};

use super::CacheError;
use crate::configuration::{Secret, ServiceUrl};

/// Every Redis call is bounded: a hung Redis must not hold requests up.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);

#[derive(Clone)]
pub struct RedisCache {
    pool: Pool,
}

impl RedisCache {
    pub fn new(url: &ServiceUrl, password: Option<&Secret>) -> Result<Self, CacheError> {
        let url = match password {
            Some(password) => url
                .with_password(password.expose())
                .map_err(CacheError::Redis)?,
            None => url.url().clone(),
        };
        let mut config = Config::from_url(url.to_string());
        let mut pool = deadpool_redis::PoolConfig::new(32);
        pool.timeouts.wait = Some(CALL_TIMEOUT);
        pool.timeouts.create = Some(CALL_TIMEOUT * 4);
        pool.timeouts.recycle = Some(CALL_TIMEOUT);
        config.pool = Some(pool);
        // Pool creation only checks the configuration; connections are made lazily.
        let pool = config
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| CacheError::Redis(e.to_string()))?;
        Ok(Self { pool })
    }

    async fn with_connection<T, F, Fut>(&self, f: F) -> Result<T, CacheError>
    where
        F: FnOnce(deadpool_redis::Connection) -> Fut,
        Fut: Future<Output = Result<T, deadpool_redis::redis::RedisError>>,
    {
        let call = async {
            let connection = self
                .pool
                .get()
                .await
                .map_err(|e| CacheError::Redis(e.to_string()))?;
            f(connection)
                .await
                .map_err(|e| CacheError::Redis(e.to_string()))
        };
        tokio::time::timeout(CALL_TIMEOUT * 4, call)
            .await
            .map_err(|_| CacheError::Timeout)?
    }

    pub async fn get(&self, key: &str) -> Result<Option<String>, CacheError> {
        self.with_connection(|mut c| async move { c.get(key).await })
            .await
    }

    pub async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), CacheError> {
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.with_connection(|mut c| async move {
            cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(millis)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    pub async fn delete(&self, key: &str) -> Result<(), CacheError> {
        self.with_connection(|mut c| async move { c.del::<_, ()>(key).await })
            .await
    }

    pub async fn ping(&self) -> bool {
        self.with_connection(|mut c| async move { cmd("PING").query_async::<String>(&mut c).await })
            .await
            .is_ok()
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}
