//! [`RedisStoreBuilder`]: URL, key prefix, outcome limit and timeouts.

use super::keys::KeyLayout;
use super::scripts::Scripts;
use super::{Inner, RedisStore};
use crate::store::{StoreError, DEFAULT_MAX_OUTCOME_BYTES};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::Arc;
use std::time::Duration;

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "idemq";
/// Default bound on one store operation (including waiting for a reconnect).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default bound on one connection attempt.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Configures and opens a [`RedisStore`].
///
/// ```no_run
/// # async fn demo() -> Result<(), idemq::StoreError> {
/// use idemq::store::redis::RedisStore;
/// use std::time::Duration;
///
/// let store = RedisStore::builder("rediss://app:secret@redis.internal:6380/0")
///     .prefix("payments-idemq")
///     .max_outcome_bytes(64 * 1024)
///     .timeout(Duration::from_millis(500))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    max_outcome_bytes: usize,
    timeout: Duration,
    connect_timeout: Duration,
}

impl std::fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("url", &redact(&self.url))
            .field("prefix", &self.prefix)
            .field("max_outcome_bytes", &self.max_outcome_bytes)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl RedisStoreBuilder {
    /// A builder for `url`: `redis://[user:password@]host[:port][/db]` or `rediss://…` for TLS.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: DEFAULT_PREFIX.into(),
            max_outcome_bytes: DEFAULT_MAX_OUTCOME_BYTES,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// First part of every key (default `idemq`); must not contain `{` or `}`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Largest outcome body `complete` accepts (default 1 MiB).
    pub fn max_outcome_bytes(mut self, limit: usize) -> Self {
        self.max_outcome_bytes = limit;
        self
    }

    /// Bound on one operation, including any wait for a reconnect (default 2 s). Past it the
    /// operation fails with [`StoreError::Timeout`]; it may still have been applied.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Bound on one connection attempt (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Connects, loads the scripts and returns the store.
    ///
    /// Fails with [`StoreError::InvalidConfig`] for a bad URL or prefix and with
    /// [`StoreError::Unavailable`] / [`StoreError::Timeout`] when Redis cannot be reached.
    pub async fn build(self) -> Result<RedisStore, StoreError> {
        let layout = KeyLayout::new(&self.prefix).map_err(StoreError::InvalidConfig)?;
        let client = redis::Client::open(self.url.as_str()).map_err(|e| {
            StoreError::InvalidConfig(format!("invalid Redis URL {}: {e}", redact(&self.url)))
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(4)
            .set_max_delay(Duration::from_secs(1));
        let scripts = Scripts::new();
        let connect = async {
            let mut conn = ConnectionManager::new_with_config(client, config).await?;
            // Loading up front keeps the first operations at one round trip; after a server
            // restart or SCRIPT FLUSH, `Script::invoke_async` reloads on NOSCRIPT.
            for script in scripts.all() {
                script.load_async(&mut conn).await?;
            }
            Ok::<_, redis::RedisError>(conn)
        };
        let bound = self.connect_timeout * 4 + self.timeout;
        let conn = match tokio::time::timeout(bound, connect).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(super::map_error("connect", e, self.timeout)),
            Err(_) => {
                return Err(StoreError::Timeout {
                    op: "connect",
                    after: bound,
                })
            }
        };
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conn,
                layout,
                scripts,
                max_outcome_bytes: self.max_outcome_bytes,
                timeout: self.timeout,
                url: redact(&self.url),
                prefix: self.prefix,
            }),
        })
    }
}

/// The URL with any password replaced by `***`, for logs and errors.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_string()
            };
            format!("{scheme}://{masked}@{host}{path}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact("rediss://app:s3cr@t@h:6380/0"),
            "rediss://app:***@h:6380/0"
        );
        assert_eq!(redact("redis://tok@h"), "redis://***@h");
        assert_eq!(redact("redis://h:6379/1"), "redis://h:6379/1");
    }
}
