//! Sign-in sessions of the web UI: a cookie the server signs (HMAC-SHA256), naming the user, a
//! random nonce and an expiry, so that any replica sharing the key accepts it and none keeps
//! state; and the CSRF token of a session, an HMAC of its nonce, which every form that changes
//! something carries.
//!
//! A session is re-checked on every request: it must verify, be unexpired, and name a user the
//! htpasswd file still holds (removing a user ends their sessions at once). Signing out clears
//! the cookie; the value itself stays valid until it expires, as for any stateless session.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{KeyInit, Mac};
use sha2::{Digest as _, Sha256};

type Hmac = hmac::Hmac<Sha256>;

/// The cookie's name. `__Host-` would pin it to https; Berth also serves plain http.
pub const COOKIE: &str = "berth_session";

/// A verified session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    nonce: String,
    /// Seconds since the epoch.
    expires: u64,
}

/// The key sessions and CSRF tokens are signed with.
pub struct SessionKeys {
    key: Vec<u8>,
    ttl: Duration,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl SessionKeys {
    /// Keys derived from `secret` (`BERTH_UI_SESSION_KEY`, or the token signing key): every
    /// replica given the same secret accepts the others' sessions.
    pub fn derived(secret: &[u8], ttl: Duration) -> SessionKeys {
        let key = Sha256::new().chain_update(b"berth web UI sessions\0").chain_update(secret).finalize().to_vec();
        SessionKeys { key, ttl }
    }

    /// A key of this process only: sessions end when it does, and other replicas refuse them.
    pub fn random(ttl: Duration) -> SessionKeys {
        let mut key = vec![0u8; 32];
        rand::fill(&mut key[..]);
        SessionKeys { key, ttl }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn mac(&self, parts: &[&[u8]]) -> Hmac {
        let mut mac = Hmac::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        for part in parts {
            // Lengths first: no two part lists sign the same bytes.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// A new session for `user` (a fresh nonce at every sign-in) and its cookie value.
    pub fn issue(&self, user: &str) -> (Session, String) {
        let mut nonce = [0u8; 16];
        rand::fill(&mut nonce);
        let session = Session { user: user.to_owned(), nonce: hex::encode(nonce), expires: now() + self.ttl.as_secs() };
        let value = self.seal(&session);
        (session, value)
    }

    fn seal(&self, s: &Session) -> String {
        let (user, expires) = (B64.encode(&s.user), s.expires.to_string());
        let tag = self.mac(&[b"session", user.as_bytes(), s.nonce.as_bytes(), expires.as_bytes()]).finalize();
        format!("{user}.{}.{expires}.{}", s.nonce, B64.encode(tag.into_bytes()))
    }

    /// The session a cookie value carries, when its signature holds and it has not expired.
    pub fn open(&self, value: &str) -> Option<Session> {
        let mut parts = value.split('.');
        let (user, nonce, expires, tag) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let tag = B64.decode(tag).ok()?;
        self.mac(&[b"session", user.as_bytes(), nonce.as_bytes(), expires.as_bytes()]).verify_slice(&tag).ok()?;
        let expires: u64 = expires.parse().ok()?;
        if expires <= now() {
            return None;
        }
        let user = String::from_utf8(B64.decode(user).ok()?).ok()?;
        Some(Session { user, nonce: nonce.to_owned(), expires })
    }

    /// The CSRF token of `session`: forms that change something carry it.
    pub fn csrf(&self, session: &Session) -> String {
        B64.encode(self.mac(&[b"csrf", session.nonce.as_bytes()]).finalize().into_bytes())
    }

    /// Whether `token` is `session`'s CSRF token (compared in constant time).
    pub fn csrf_holds(&self, session: &Session, token: &str) -> bool {
        B64.decode(token).is_ok_and(|t| self.mac(&[b"csrf", session.nonce.as_bytes()]).verify_slice(&t).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> SessionKeys {
        SessionKeys::derived(b"a shared secret of enough bytes", Duration::from_secs(3600))
    }

    #[test]
    fn a_session_opens_with_its_key_only() {
        let (session, value) = keys().issue("alice");
        assert_eq!(keys().open(&value), Some(session.clone()), "another replica with the same secret");
        assert_eq!(session.user, "alice");
        let other = SessionKeys::derived(b"another secret", Duration::from_secs(3600));
        assert_eq!(other.open(&value), None);
        assert_eq!(SessionKeys::random(Duration::from_secs(60)).open(&value), None);
    }

    #[test]
    fn a_changed_or_expired_session_is_refused() {
        let k = keys();
        let (_, value) = k.issue("alice");
        let parts: Vec<&str> = value.split('.').collect();
        let forged = format!("{}.{}.{}.{}", B64.encode("admin"), parts[1], parts[2], parts[3]);
        assert_eq!(k.open(&forged), None, "another user");
        let later = format!("{}.{}.{}.{}", parts[0], parts[1], u64::MAX, parts[3]);
        assert_eq!(k.open(&later), None, "a later expiry");
        for bad in ["", "a.b.c", "a.b.c.d.e", &format!("{value}x")] {
            assert_eq!(k.open(bad), None, "{bad}");
        }
        let old = Session { user: "alice".into(), nonce: "00".into(), expires: now() - 1 };
        assert_eq!(k.open(&k.seal(&old)), None, "expired");
        let fresh = Session { expires: now() + 60, ..old };
        assert!(k.open(&k.seal(&fresh)).is_some());
    }

    #[test]
    fn a_csrf_token_belongs_to_one_session() {
        let k = keys();
        let (one, _) = k.issue("alice");
        let (two, _) = k.issue("alice");
        let token = k.csrf(&one);
        assert!(k.csrf_holds(&one, &token));
        assert!(!k.csrf_holds(&two, &token), "a new sign-in has a new token");
        assert!(!k.csrf_holds(&one, ""));
        assert!(!k.csrf_holds(&one, "not base64 !"));
    }
}
