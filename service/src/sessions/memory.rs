//! Upload sessions in this process's memory: the embedded default. Sessions do not survive
//! a restart and are not seen by other replicas; `BERTH_REDIS_URL` selects the shared store.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{LockToken, SessionError, SessionStore, UploadSession};

pub struct MemorySessions {
    idle_timeout: Duration,
    entries: Mutex<HashMap<String, Entry>>,
    leases: Mutex<HashMap<String, (LockToken, Instant)>>,
}

struct Entry {
    session: UploadSession,
    saved: Instant,
    lock: Option<(LockToken, Instant)>,
}

impl Entry {
    fn lock_held_by_other(&self, token: Option<&LockToken>, now: Instant) -> bool {
        match &self.lock {
            Some((held, expires)) => *expires > now && Some(held) != token,
            None => false,
        }
    }

    fn holds(&self, token: &LockToken, now: Instant) -> bool {
        matches!(&self.lock, Some((held, expires)) if held == token && *expires > now)
    }
}

impl MemorySessions {
    /// Sessions not saved for `idle_timeout` are gone.
    pub fn new(idle_timeout: Duration) -> MemorySessions {
        MemorySessions { idle_timeout, entries: Mutex::new(HashMap::new()), leases: Mutex::default() }
    }

    fn with_live<T>(&self, id: &str, f: impl FnOnce(&mut Entry, Instant) -> T) -> Option<T> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        // Expired sessions are dropped as they are met, and all of them now and then.
        if entries.len() > 64 && rand::random::<u8>() == 0 {
            entries.retain(|_, e| now.duration_since(e.saved) < self.idle_timeout);
        }
        match entries.get_mut(id) {
            Some(e) if now.duration_since(e.saved) < self.idle_timeout => Some(f(e, now)),
            Some(_) => {
                entries.remove(id);
                None
            }
            None => None,
        }
    }
}

#[async_trait]
impl SessionStore for MemorySessions {
    async fn lease(&self, key: &str, ttl: Duration) -> Result<Option<LockToken>, SessionError> {
        let now = Instant::now();
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        leases.retain(|_, (_, expires)| *expires > now);
        if leases.contains_key(key) {
            return Ok(None);
        }
        let token = LockToken::random();
        leases.insert(key.to_owned(), (token.clone(), now + ttl));
        Ok(Some(token))
    }

    async fn renew_lease(&self, key: &str, token: &LockToken, ttl: Duration) -> Result<bool, SessionError> {
        let now = Instant::now();
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        match leases.get_mut(key) {
            Some((held, expires)) if held == token && *expires > now => {
                *expires = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release_lease(&self, key: &str, token: &LockToken) -> Result<(), SessionError> {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        if leases.get(key).is_some_and(|(held, _)| held == token) {
            leases.remove(key);
        }
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn create(&self, session: &UploadSession) -> Result<(), SessionError> {
        let entry = Entry { session: session.clone(), saved: Instant::now(), lock: None };
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).insert(session.id.clone(), entry);
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<UploadSession>, SessionError> {
        Ok(self.with_live(id, |e, _| e.session.clone()))
    }

    async fn lock(&self, id: &str, ttl: Duration) -> Result<Option<LockToken>, SessionError> {
        Ok(self
            .with_live(id, |e, now| {
                if e.lock_held_by_other(None, now) {
                    return None;
                }
                let token = LockToken::random();
                e.lock = Some((token.clone(), now + ttl));
                Some(token)
            })
            .flatten())
    }

    async fn renew(&self, id: &str, token: &LockToken, ttl: Duration) -> Result<bool, SessionError> {
        Ok(self
            .with_live(id, |e, now| {
                let ours = e.holds(token, now);
                if ours {
                    // A session being written to is not idle.
                    e.lock = Some((token.clone(), now + ttl));
                    e.saved = now;
                }
                ours
            })
            .unwrap_or(false))
    }

    async fn save(&self, session: &UploadSession, token: &LockToken) -> Result<bool, SessionError> {
        Ok(self
            .with_live(&session.id, |e, now| {
                let ours = e.holds(token, now);
                if ours {
                    e.session = session.clone();
                    e.saved = now;
                }
                ours
            })
            .unwrap_or(false))
    }

    async fn unlock(&self, id: &str, token: &LockToken) -> Result<(), SessionError> {
        self.with_live(id, |e, _| {
            if matches!(&e.lock, Some((held, _)) if held == token) {
                e.lock = None;
            }
        });
        Ok(())
    }

    async fn delete(&self, id: &str) -> Result<(), SessionError> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        Ok(())
    }

    async fn ping(&self) -> Result<(), SessionError> {
        Ok(())
    }
}
