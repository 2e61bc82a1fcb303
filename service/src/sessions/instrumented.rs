//! A `SessionStore` that times every operation into the metrics and wraps it in a trace
//! span, around whichever store it is given.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{LockToken, SessionError, SessionStore, UploadSession};
use crate::metrics::{self, Metrics};

pub struct Instrumented(pub Arc<dyn SessionStore>);

async fn timed<T>(
    backend: &'static str,
    operation: &'static str,
    work: impl Future<Output = Result<T, SessionError>>,
) -> Result<T, SessionError> {
    let m = Metrics::get();
    let span = tracing::info_span!("sessions", otel.name = %format_args!("sessions.{operation}"), backend, operation);
    metrics::timed(span, (&m.session_seconds, &m.session_errors), backend, operation, work).await
}

#[async_trait]
impl SessionStore for Instrumented {
    fn kind(&self) -> &'static str {
        self.0.kind()
    }

    async fn create(&self, session: &UploadSession) -> Result<(), SessionError> {
        timed(self.kind(), "create", self.0.create(session)).await
    }

    async fn get(&self, id: &str) -> Result<Option<UploadSession>, SessionError> {
        timed(self.kind(), "get", self.0.get(id)).await
    }

    async fn lock(&self, id: &str, ttl: Duration) -> Result<Option<LockToken>, SessionError> {
        timed(self.kind(), "lock", self.0.lock(id, ttl)).await
    }

    async fn renew(&self, id: &str, token: &LockToken, ttl: Duration) -> Result<bool, SessionError> {
        timed(self.kind(), "renew", self.0.renew(id, token, ttl)).await
    }

    async fn save(&self, session: &UploadSession, token: &LockToken) -> Result<bool, SessionError> {
        timed(self.kind(), "save", self.0.save(session, token)).await
    }

    async fn unlock(&self, id: &str, token: &LockToken) -> Result<(), SessionError> {
        timed(self.kind(), "unlock", self.0.unlock(id, token)).await
    }

    async fn delete(&self, id: &str) -> Result<(), SessionError> {
        timed(self.kind(), "delete", self.0.delete(id)).await
    }

    async fn lease(&self, key: &str, ttl: Duration) -> Result<Option<LockToken>, SessionError> {
        timed(self.kind(), "lease", self.0.lease(key, ttl)).await
    }

    async fn renew_lease(&self, key: &str, token: &LockToken, ttl: Duration) -> Result<bool, SessionError> {
        timed(self.kind(), "renew_lease", self.0.renew_lease(key, token, ttl)).await
    }

    async fn release_lease(&self, key: &str, token: &LockToken) -> Result<(), SessionError> {
        timed(self.kind(), "release_lease", self.0.release_lease(key, token)).await
    }

    async fn ping(&self) -> Result<(), SessionError> {
        timed(self.kind(), "ping", self.0.ping()).await
    }
}
