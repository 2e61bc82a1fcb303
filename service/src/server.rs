//! Assembling the backends chosen by the settings and serving the API.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::{Server, ServerHandle, Service};
use actix_web::{App, HttpServer, web};
use anyhow::Context;

use crate::api::{self, AppState};
use crate::auth::Authorizer;
use crate::config::{Settings, StorageKind};
use crate::metadata::sql::SqlMetadata;
use crate::registry::Registry;
use crate::sessions::SessionStore;
use crate::sessions::memory::MemorySessions;
use crate::sessions::redis::RedisSessions;
use crate::storage::filesystem::FilesystemStore;
use crate::storage::s3::S3Store;
use crate::storage::{BlobStore, StorageError};

/// Builds the registry on the backends the settings name, applying migrations if asked.
pub async fn build_registry(settings: &Settings) -> anyhow::Result<Registry> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("cannot create data directory {}", settings.data_dir.display()))?;
    let blobs: Arc<dyn BlobStore> = match settings.storage {
        StorageKind::Filesystem => {
            let store = FilesystemStore::open(&settings.data_dir)
                .with_context(|| format!("cannot open blob directory under {}", settings.data_dir.display()))?;
            Arc::new(store)
        }
        StorageKind::S3 => {
            let (connection, options) = settings.s3();
            let bucket = options.bucket.clone();
            let store = S3Store::connect(&connection, options).await.map_err(anyhow::Error::msg)?;
            // A wrong bucket or credentials fail the start, naming the bucket; a store that is
            // down for now does not: requests get 503 until it is back.
            match store.ping().await {
                Err(StorageError::Unavailable(e)) => tracing::warn!(bucket, error = %e, "S3 store unreachable for now"),
                other => other.with_context(|| format!("cannot use S3 bucket {bucket:?}"))?,
            }
            Arc::new(store)
        }
    };
    let metadata = SqlMetadata::connect(&settings.database_url(), settings.migrate)
        .await
        .with_context(|| format!("cannot open metadata database {}", settings.masked().database_url()))?;
    let policy = settings.policy();
    let sessions: Arc<dyn SessionStore> = match &settings.redis_url {
        Some(url) => Arc::new(
            RedisSessions::connect(url.expose(), &settings.redis_prefix, policy.upload_idle_timeout)
                .map_err(anyhow::Error::msg)?,
        ),
        None => Arc::new(MemorySessions::new(policy.upload_idle_timeout)),
    };
    Ok(Registry::new(blobs, Arc::new(metadata), sessions, policy))
}

/// A server bound to its address and running in the background.
pub struct Running {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    pub registry: Registry,
}

/// Binds `settings.listen` (port 0 picks a free port) and starts serving.
pub async fn start(settings: &Settings) -> anyhow::Result<(Running, Server)> {
    let registry = build_registry(settings).await?;
    let listener =
        TcpListener::bind(&settings.listen).with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let state = web::Data::new(AppState { registry: registry.clone(), auth: Authorizer::none() });
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap_fn(|req, service| {
                let started = Instant::now();
                let (method, path, query) =
                    (req.method().clone(), req.path().to_owned(), req.query_string().to_owned());
                let response = service.call(req);
                async move {
                    let response = response.await?;
                    tracing::info!(
                        target: "berth::access",
                        method = %method,
                        path = %path,
                        query = %query,
                        status = response.status().as_u16(),
                        micros = started.elapsed().as_micros() as u64,
                        "request"
                    );
                    Ok(response)
                }
            })
            .configure(api::configure)
    })
    .listen(listener)?
    .shutdown_timeout(settings.shutdown_timeout);
    if let Some(workers) = settings.workers {
        server = server.workers(workers);
    }
    let server = server.disable_signals().run();
    let handle = server.handle();
    Ok((Running { addr, handle, registry }, server))
}

/// Serves until SIGTERM or SIGINT, then lets requests in flight finish.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let (running, server) = start(&settings).await?;
    tracing::info!(addr = %running.addr, storage = ?settings.storage, "berth is serving");
    let janitor = running.registry.spawn_janitor();
    let server = tokio::spawn(server);
    shutdown_signal().await;
    tracing::info!(grace_seconds = settings.shutdown_timeout, "shutting down: finishing requests in flight");
    running.handle.stop(true).await;
    janitor.abort();
    server.await.context("server task failed")?.context("server failed")?;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                return;
            }
            _ => tracing::warn!("cannot install signal handlers; stop with Ctrl-C"),
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    // Keep the type checker happy on every platform.
    tokio::time::sleep(Duration::ZERO).await;
}
