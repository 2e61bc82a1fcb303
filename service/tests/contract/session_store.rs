//! The `SessionStore` contract.

use std::sync::Arc;
use std::time::Duration;

use berth::oci::Algorithm;
use berth::sessions::{LockToken, SessionStore, UploadSession};
use berth::storage::UploadHandle;

use crate::tlssupport::TlsFront;
use crate::urlsupport::socket_of;

/// Idle timeout the factories give their stores.
/// Idle timeout of the stores under test. The timing cases leave a second or more of slack on
/// each side: the suite shares two cores with 1 GiB uploads.
pub const IDLE: Duration = Duration::from_millis(2000);

fn session() -> UploadSession {
    UploadSession {
        id: uuid::Uuid::new_v4().to_string(),
        repository: "a/b".into(),
        algorithm: Algorithm::Sha256,
        offset: 0,
        hash_state: vec![1, 2, 3, 255],
        handle: UploadHandle(serde_json::json!({"parts": [1, 2]})),
        created_at: 42,
    }
}

pub async fn sessions_round_trip(store: Arc<dyn SessionStore>) {
    let s = session();
    assert_eq!(store.get(&s.id).await.unwrap(), None);
    store.create(&s).await.unwrap();
    assert_eq!(store.get(&s.id).await.unwrap(), Some(s.clone()));
    store.ping().await.unwrap();
}

pub async fn one_lock_holder_at_a_time(store: Arc<dyn SessionStore>) {
    let s = session();
    store.create(&s).await.unwrap();
    let token = store.lock(&s.id, Duration::from_secs(30)).await.unwrap().expect("first lock");
    assert_eq!(store.lock(&s.id, Duration::from_secs(30)).await.unwrap(), None);
    store.unlock(&s.id, &LockToken("someone else".into())).await.unwrap();
    assert_eq!(store.lock(&s.id, Duration::from_secs(30)).await.unwrap(), None, "a stranger cannot unlock");
    store.unlock(&s.id, &token).await.unwrap();
    assert!(store.lock(&s.id, Duration::from_secs(30)).await.unwrap().is_some());
    assert_eq!(store.lock("no-such-session", Duration::from_secs(30)).await.unwrap(), None);
}

pub async fn only_the_lock_holder_saves(store: Arc<dyn SessionStore>) {
    let mut s = session();
    store.create(&s).await.unwrap();
    s.offset = 100;
    assert!(!store.save(&s, &LockToken("nobody".into())).await.unwrap());
    assert_eq!(store.get(&s.id).await.unwrap().unwrap().offset, 0);
    let token = store.lock(&s.id, Duration::from_secs(30)).await.unwrap().unwrap();
    assert!(store.save(&s, &token).await.unwrap());
    assert_eq!(store.get(&s.id).await.unwrap().unwrap().offset, 100);
}

pub async fn an_unrenewed_lock_expires(store: Arc<dyn SessionStore>) {
    let s = session();
    store.create(&s).await.unwrap();
    let ttl = Duration::from_millis(200);
    let stale = store.lock(&s.id, ttl).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fresh = store.lock(&s.id, Duration::from_secs(30)).await.unwrap().expect("expired lock is free");
    assert!(!store.renew(&s.id, &stale, ttl).await.unwrap());
    assert!(!store.save(&s, &stale).await.unwrap());
    assert!(store.save(&s, &fresh).await.unwrap());
}

pub async fn renewing_keeps_the_lock(store: Arc<dyn SessionStore>) {
    let s = session();
    store.create(&s).await.unwrap();
    let ttl = Duration::from_millis(1500);
    let token = store.lock(&s.id, ttl).await.unwrap().unwrap();
    // Held longer than both the lock's time to live and the session's idle timeout.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(store.renew(&s.id, &token, ttl).await.unwrap());
        // Saving keeps the session alive past its idle timeout too.
        assert!(store.save(&s, &token).await.unwrap());
    }
    assert_eq!(store.lock(&s.id, ttl).await.unwrap(), None);
}

pub async fn deleted_sessions_are_gone(store: Arc<dyn SessionStore>) {
    let s = session();
    store.create(&s).await.unwrap();
    store.delete(&s.id).await.unwrap();
    store.delete(&s.id).await.unwrap();
    assert_eq!(store.get(&s.id).await.unwrap(), None);
}

pub async fn idle_sessions_expire(store: Arc<dyn SessionStore>) {
    let s = session();
    store.create(&s).await.unwrap();
    tokio::time::sleep(IDLE / 2).await;
    assert!(store.get(&s.id).await.unwrap().is_some());
    tokio::time::sleep(IDLE).await;
    assert_eq!(store.get(&s.id).await.unwrap(), None);
}

pub async fn leases_have_one_holder_and_expire(store: Arc<dyn SessionStore>) {
    let key = format!("upstream-blob:{}", uuid::Uuid::new_v4());
    let ttl = Duration::from_millis(600);
    let token = store.lease(&key, ttl).await.unwrap().expect("a free lease");
    assert_eq!(store.lease(&key, ttl).await.unwrap(), None, "one holder at a time");
    let other = format!("{key}-other");
    assert!(store.lease(&other, ttl).await.unwrap().is_some(), "leases are per key");
    assert!(!store.renew_lease(&key, &LockToken("stranger".into()), ttl).await.unwrap());
    store.release_lease(&key, &LockToken("stranger".into())).await.unwrap();
    assert_eq!(store.lease(&key, ttl).await.unwrap(), None, "a stranger cannot release it");
    // Renewed, it outlives its ttl; released, it is free at once.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(store.renew_lease(&key, &token, ttl).await.unwrap());
    }
    assert_eq!(store.lease(&key, ttl).await.unwrap(), None);
    store.release_lease(&key, &token).await.unwrap();
    let next = store.lease(&key, ttl).await.unwrap().expect("released");
    // Not renewed, it expires.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(!store.renew_lease(&key, &next, ttl).await.unwrap(), "expired");
    assert!(store.lease(&key, ttl).await.unwrap().is_some(), "free again");
    assert_eq!(store.get(&key).await.unwrap(), None, "a lease is no session");
}

async fn memory() -> (Arc<dyn SessionStore>, ()) {
    (Arc::new(berth::sessions::memory::MemorySessions::new(IDLE)), ())
}

/// The whole case list, for every backend.
macro_rules! session_store_contract {
    ($backend:ident, $make:ident) => {
        contract!(
            $backend,
            $make,
            [
                sessions_round_trip,
                one_lock_holder_at_a_time,
                only_the_lock_holder_saves,
                an_unrenewed_lock_expires,
                renewing_keeps_the_lock,
                deleted_sessions_are_gone,
                idle_sessions_expire,
                leases_have_one_holder_and_expire,
            ]
        );
    };
}

session_store_contract!(memory, memory);

async fn redis() -> (Arc<dyn SessionStore>, ()) {
    let store = berth::sessions::redis::RedisSessions::connect(
        &crate::redissupport::url(),
        None,
        &crate::redissupport::fresh_prefix(),
        IDLE,
    )
    .unwrap();
    (Arc::new(store), ())
}

session_store_contract!(redis, redis);

/// `rediss://` to a Redis behind a TLS front whose certificate a private CA signed.
async fn redis_tls(ca: bool) -> (Arc<dyn SessionStore>, TlsFront) {
    let front = TlsFront::start(socket_of(&crate::redissupport::url())).await;
    let url = format!("rediss://{}", front.addr);
    let ca_file = ca.then_some(front.ca_file.as_path());
    let store =
        berth::sessions::redis::RedisSessions::connect(&url, ca_file, &crate::redissupport::fresh_prefix(), IDLE)
            .unwrap();
    (Arc::new(store), front)
}

async fn redis_private_ca() -> (Arc<dyn SessionStore>, TlsFront) {
    redis_tls(true).await
}

session_store_contract!(redis_private_ca, redis_private_ca);

#[tokio::test]
async fn redis_over_tls_refuses_a_certificate_it_cannot_trust() {
    let (untrusting, front) = redis_tls(false).await;
    assert!(untrusting.ping().await.is_err(), "a certificate from an unknown CA is refused");
    assert_eq!(front.handshakes(), 0);
    let (trusting, front) = redis_tls(true).await;
    trusting.ping().await.unwrap();
    assert!(front.handshakes() > 0, "the session store went through TLS");
}
