//! Events counted per key over a window: failed logins, per user and per client address (past
//! the limit, logins from that user or address are refused until the window ends), and the
//! tokens already told that they lack a scope. With Redis configured the counts are shared by
//! every replica, so spreading guesses over replicas does not help.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::ConnectionManager;

/// Keys counted in memory at most, before single failures are forgotten.
const MEMORY_KEYS: usize = 100_000;

pub struct Limiter {
    max_failures: u32,
    window: Duration,
    counts: Counts,
}

enum Counts {
    Memory(Mutex<HashMap<String, (u32, Instant)>>),
    Redis { connection: ConnectionManager, prefix: String },
}

/// KEYS: counter. ARGV: window in ms. Counts one failure, starting the window on the first.
const COUNT: &str = r#"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"#;

impl Limiter {
    pub fn in_memory(max_failures: u32, window: Duration) -> Limiter {
        Limiter { max_failures, window, counts: Counts::Memory(Mutex::new(HashMap::new())) }
    }

    /// Counts kept in Redis under `<prefix><namespace>:`, shared by every replica.
    pub fn in_redis(
        max_failures: u32,
        window: Duration,
        url: &str,
        ca_file: Option<&std::path::Path>,
        prefix: &str,
        namespace: &str,
    ) -> Result<Limiter, String> {
        let client = crate::sessions::redis::client(url, ca_file)?;
        let connection = ConnectionManager::new_lazy_with_config(client, redis::aio::ConnectionManagerConfig::new())
            .map_err(|e| format!("cannot set up Redis connection: {e}"))?;
        let prefix = format!("{prefix}{namespace}:");
        Ok(Limiter { max_failures, window, counts: Counts::Redis { connection, prefix } })
    }

    /// Failures at which a key is refused.
    pub fn max_failures(&self) -> u32 {
        self.max_failures
    }

    /// How long logins for these keys (`user:…`, `addr:…`) stay refused, if they are.
    pub async fn blocked(&self, keys: &[String]) -> Option<Duration> {
        match &self.counts {
            Counts::Memory(counts) => {
                let counts = counts.lock().unwrap_or_else(|e| e.into_inner());
                keys.iter()
                    .filter_map(|k| counts.get(k))
                    .filter(|(n, since)| *n >= self.max_failures && since.elapsed() < self.window)
                    .map(|(_, since)| self.window.saturating_sub(since.elapsed()))
                    .max()
            }
            Counts::Redis { connection, prefix } => {
                let mut connection = connection.clone();
                let mut longest = None;
                for key in keys {
                    let key = format!("{prefix}{key}");
                    // When Redis is away, nobody is blocked: logins still need the password.
                    let count: Option<u32> = connection.get(&key).await.unwrap_or(None);
                    if count.is_some_and(|n| n >= self.max_failures) {
                        let left: i64 = connection.pttl(&key).await.unwrap_or(0);
                        let left = Duration::from_millis(left.max(1000) as u64);
                        longest = longest.max(Some(left));
                    }
                }
                longest
            }
        }
    }

    /// How many failures `key` has within the window.
    pub async fn failures(&self, key: &str) -> u32 {
        match &self.counts {
            Counts::Memory(counts) => {
                let counts = counts.lock().unwrap_or_else(|e| e.into_inner());
                counts.get(key).filter(|(_, since)| since.elapsed() < self.window).map_or(0, |(n, _)| *n)
            }
            Counts::Redis { connection, prefix } => {
                let mut connection = connection.clone();
                connection.get::<_, Option<u32>>(format!("{prefix}{key}")).await.unwrap_or(None).unwrap_or(0)
            }
        }
    }

    /// Counts one failed login for each key.
    pub async fn failed(&self, keys: &[String]) {
        match &self.counts {
            Counts::Memory(counts) => {
                let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
                counts.retain(|_, (_, since)| since.elapsed() < self.window);
                if counts.len() >= MEMORY_KEYS {
                    // A flood of distinct keys (made-up user names): forget the single
                    // failures first, which are what such a flood is made of.
                    counts.retain(|_, (n, _)| *n > 1);
                }
                for key in keys {
                    let entry = counts.entry(key.clone()).or_insert((0, Instant::now()));
                    entry.0 += 1;
                }
            }
            Counts::Redis { connection, prefix } => {
                let script = redis::Script::new(COUNT);
                let mut connection = connection.clone();
                for key in keys {
                    let counted: Result<i64, _> = script
                        .key(format!("{prefix}{key}"))
                        .arg(self.window.as_millis() as u64)
                        .invoke_async(&mut connection)
                        .await;
                    if let Err(e) = counted {
                        tracing::warn!(error = %e, "could not count a failed login in Redis");
                    }
                }
            }
        }
    }

    /// Forgets the failures of a user who just logged in.
    pub async fn succeeded(&self, key: &str) {
        match &self.counts {
            Counts::Memory(counts) => {
                counts.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
            }
            Counts::Redis { connection, prefix } => {
                let mut connection = connection.clone();
                let _: Result<(), _> = connection.del(format!("{prefix}{key}")).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_limit_kicks_in_and_ends() {
        let limiter = Limiter::in_memory(3, Duration::from_millis(300));
        let keys = vec!["user:a".to_owned(), "addr:1.2.3.4".to_owned()];
        for _ in 0..2 {
            limiter.failed(&keys).await;
        }
        assert_eq!(limiter.blocked(&keys).await, None);
        limiter.failed(&keys).await;
        assert!(limiter.blocked(&keys).await.is_some());
        assert!(limiter.blocked(&["addr:1.2.3.4".to_owned()]).await.is_some(), "the address alone is blocked");
        assert_eq!(limiter.blocked(&["user:b".to_owned()]).await, None);
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(limiter.blocked(&keys).await, None, "the window ended");
    }
}
