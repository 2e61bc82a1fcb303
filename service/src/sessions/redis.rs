//! Upload sessions in Redis, shared by every replica.
//!
//! Keys, under a configurable prefix:
//! - `<prefix>session:<id>`: the session as JSON, expiring after the idle timeout; every
//!   save and every lock renewal pushes the expiry back.
//! - `<prefix>lock:<id>`: the lock holder's token, expiring after the lock's TTL, so that a
//!   replica that dies holding it blocks the upload for no longer than that.
//! - `<prefix>lease:<key>`: a lease with no session behind it (the upstream fetch of a blob),
//!   its holder's token, expiring after its TTL.
//!
//! Every check-and-change (lock only an existing session, save or renew only with the
//! current token) is one Lua script, so it is atomic in Redis.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use super::{LockToken, SessionError, SessionStore, UploadSession};

pub struct RedisSessions {
    connection: ConnectionManager,
    prefix: String,
    idle_timeout: Duration,
    lock: Script,
    renew: Script,
    save: Script,
    unlock: Script,
}

/// KEYS: session, lock. ARGV: token, lock TTL in ms.
const LOCK: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"#;

/// KEYS: session, lock. ARGV: token, lock TTL in ms, idle timeout in ms.
const RENEW: &str = r#"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#;

/// KEYS: session, lock. ARGV: token, session JSON, idle timeout in ms.
const SAVE: &str = r#"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"#;

/// KEYS: lock. ARGV: token.
const UNLOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"#;

/// KEYS: lease. ARGV: token, TTL in ms.
const RENEW_LEASE: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

fn unavailable(e: redis::RedisError) -> SessionError {
    if e.is_io_error() || e.is_connection_refusal() || e.is_timeout() || e.is_connection_dropped() {
        SessionError::Unavailable(e.to_string())
    } else {
        SessionError::Other(e.to_string())
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().max(1) as u64
}

/// A client for `url` (`redis://…` or `rediss://…`); over TLS it trusts the CA certificates
/// in `ca_file` when one is given, the system roots otherwise.
pub fn client(url: &str, ca_file: Option<&Path>) -> Result<redis::Client, String> {
    let Some(path) = ca_file else {
        return redis::Client::open(url).map_err(|e| format!("invalid Redis URL: {e}"));
    };
    let pem = std::fs::read(path).map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
    redis::Client::build_with_tls(url, redis::TlsCertificates { client_tls: None, root_cert: Some(pem) })
        .map_err(|e| format!("invalid Redis URL or CA file: {e}"))
}

impl RedisSessions {
    /// Connects to `url` (see [`client`]). The connection is made lazily and re-made after
    /// any failure, so a Redis that is down at start or goes away later only fails the
    /// requests made meanwhile.
    pub fn connect(
        url: &str,
        ca_file: Option<&Path>,
        prefix: &str,
        idle_timeout: Duration,
    ) -> Result<RedisSessions, String> {
        let client = client(url, ca_file)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("cannot set up Redis connection: {e}"))?;
        Ok(RedisSessions {
            connection,
            prefix: prefix.to_owned(),
            idle_timeout,
            lock: Script::new(LOCK),
            renew: Script::new(RENEW),
            save: Script::new(SAVE),
            unlock: Script::new(UNLOCK),
        })
    }

    fn session_key(&self, id: &str) -> String {
        format!("{}session:{id}", self.prefix)
    }

    fn lease_key(&self, key: &str) -> String {
        format!("{}lease:{key}", self.prefix)
    }

    fn lock_key(&self, id: &str) -> String {
        format!("{}lock:{id}", self.prefix)
    }
}

fn encode(session: &UploadSession) -> Result<String, SessionError> {
    serde_json::to_string(session).map_err(|e| SessionError::Other(e.to_string()))
}

#[async_trait]
impl SessionStore for RedisSessions {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn create(&self, session: &UploadSession) -> Result<(), SessionError> {
        let mut connection = self.connection.clone();
        let _: () = connection
            .pset_ex(self.session_key(&session.id), encode(session)?, millis(self.idle_timeout))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<UploadSession>, SessionError> {
        let mut connection = self.connection.clone();
        let json: Option<String> = connection.get(self.session_key(id)).await.map_err(unavailable)?;
        json.map(|j| serde_json::from_str(&j).map_err(|e| SessionError::Other(format!("corrupt session {id}: {e}"))))
            .transpose()
    }

    async fn lock(&self, id: &str, ttl: Duration) -> Result<Option<LockToken>, SessionError> {
        let token = LockToken::random();
        let mut connection = self.connection.clone();
        let locked: i64 = self
            .lock
            .key(self.session_key(id))
            .key(self.lock_key(id))
            .arg(&token.0)
            .arg(millis(ttl))
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok((locked == 1).then_some(token))
    }

    async fn renew(&self, id: &str, token: &LockToken, ttl: Duration) -> Result<bool, SessionError> {
        let mut connection = self.connection.clone();
        let renewed: i64 = self
            .renew
            .key(self.session_key(id))
            .key(self.lock_key(id))
            .arg(&token.0)
            .arg(millis(ttl))
            .arg(millis(self.idle_timeout))
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(renewed == 1)
    }

    async fn save(&self, session: &UploadSession, token: &LockToken) -> Result<bool, SessionError> {
        let mut connection = self.connection.clone();
        let saved: i64 = self
            .save
            .key(self.session_key(&session.id))
            .key(self.lock_key(&session.id))
            .arg(&token.0)
            .arg(encode(session)?)
            .arg(millis(self.idle_timeout))
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(saved == 1)
    }

    async fn unlock(&self, id: &str, token: &LockToken) -> Result<(), SessionError> {
        let mut connection = self.connection.clone();
        let _: i64 = self
            .unlock
            .key(self.lock_key(id))
            .arg(&token.0)
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn lease(&self, key: &str, ttl: Duration) -> Result<Option<LockToken>, SessionError> {
        let token = LockToken::random();
        let mut connection = self.connection.clone();
        let taken: Option<String> = redis::cmd("SET")
            .arg(self.lease_key(key))
            .arg(&token.0)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl))
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(taken.is_some().then_some(token))
    }

    async fn renew_lease(&self, key: &str, token: &LockToken, ttl: Duration) -> Result<bool, SessionError> {
        let mut connection = self.connection.clone();
        let renewed: i64 = Script::new(RENEW_LEASE)
            .key(self.lease_key(key))
            .arg(&token.0)
            .arg(millis(ttl))
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(renewed == 1)
    }

    async fn release_lease(&self, key: &str, token: &LockToken) -> Result<(), SessionError> {
        let mut connection = self.connection.clone();
        let _: i64 = self
            .unlock
            .key(self.lease_key(key))
            .arg(&token.0)
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn delete(&self, id: &str) -> Result<(), SessionError> {
        let mut connection = self.connection.clone();
        let _: () = connection.del(&[self.session_key(id), self.lock_key(id)]).await.map_err(unavailable)?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), SessionError> {
        let mut connection = self.connection.clone();
        let _: String = redis::cmd("PING").query_async(&mut connection).await.map_err(unavailable)?;
        Ok(())
    }
}
