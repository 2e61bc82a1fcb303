//! Assembling the backends chosen by the settings and serving the API.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpServer, web};
use anyhow::Context;

use crate::api::{self, AppState};
use crate::auth::htpasswd::Htpasswd;
use crate::auth::limiter::Limiter;
use crate::auth::rules::AccessRules;
use crate::auth::token::{self, Tokens, TrustedIssuer};
use crate::auth::{Authorizer, Limits, Mode};
use crate::config::{AuthMode, Settings, StorageKind};
use crate::metadata::MetadataStore;
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
    let blobs: Arc<dyn BlobStore> = Arc::new(crate::storage::instrumented::Instrumented(blobs));
    let metadata: Arc<dyn MetadataStore> = Arc::new(crate::metadata::instrumented::Instrumented(Arc::new(metadata)));
    let sessions: Arc<dyn SessionStore> = match &settings.redis_url {
        Some(url) => Arc::new(
            RedisSessions::connect(
                url.expose(),
                settings.redis_ca_file.as_deref(),
                &settings.redis_prefix,
                policy.upload_idle_timeout,
            )
            .map_err(anyhow::Error::msg)
            .context("BERTH_REDIS_URL")?,
        ),
        None => Arc::new(MemorySessions::new(policy.upload_idle_timeout)),
    };
    let sessions: Arc<dyn SessionStore> = Arc::new(crate::sessions::instrumented::Instrumented(sessions));
    Ok(Registry::new(blobs, metadata, sessions, policy))
}

/// Builds the authorizer the settings ask for.
pub async fn build_authorizer(settings: &Settings) -> anyhow::Result<Authorizer> {
    let mode = match settings.auth {
        AuthMode::None => return Ok(Authorizer::none()),
        AuthMode::Basic => Mode::Basic,
        AuthMode::Token => Mode::Token,
    };
    let users = match &settings.htpasswd {
        Some(path) => Some(Htpasswd::load(path).map_err(anyhow::Error::msg).context("BERTH_HTPASSWD")?),
        None => None,
    };
    let rules = match &settings.access {
        Some(path) => AccessRules::load(path).map_err(anyhow::Error::msg).context("BERTH_ACCESS")?,
        None => AccessRules::logged_in_may_do_everything(),
    };
    let tokens = if mode == Mode::Token {
        let keys = token::load_keys(settings.token_key.as_deref(), &settings.data_dir).context("BERTH_TOKEN_KEY")?;
        if settings.token_key.is_none() && settings.redis_url.is_some() {
            // Redis means replicas; a key generated per data directory is a key per replica.
            tracing::warn!(
                "token mode without BERTH_TOKEN_KEY signs with a key generated into this replica's data \
                 directory: other replicas refuse its tokens unless they share that key file"
            );
        }
        let trusted = match (&settings.token_trusted_issuer, &settings.token_trusted_keys) {
            (Some(issuer), Some(source)) => Some(TrustedIssuer {
                issuer: issuer.clone(),
                audience: settings.token_trusted_audience.clone().unwrap_or_else(|| settings.service.clone()),
                keys: trusted_keys(source).await.context("BERTH_TOKEN_TRUSTED_KEYS")?,
            }),
            _ => None,
        };
        let ttl = Duration::from_secs(settings.token_ttl);
        Some(Tokens::new(&keys, &settings.token_issuer, &settings.service, ttl, trusted)?)
    } else {
        None
    };
    let counter = |max: u32, window: Duration, namespace: &str| match &settings.redis_url {
        Some(url) => Limiter::in_redis(
            max,
            window,
            url.expose(),
            settings.redis_ca_file.as_deref(),
            &settings.redis_prefix,
            namespace,
        )
        .map_err(anyhow::Error::msg),
        None => Ok(Limiter::in_memory(max, window)),
    };
    let limits = Limits {
        logins: counter(settings.login_max_failures, Duration::from_secs(settings.login_failure_window), "login")?,
        // A token lives at most `token_ttl`: remembering its refusals longer is useless.
        refused_scopes: counter(1, Duration::from_secs(settings.token_ttl), "refused-scope")?,
    };
    Ok(Authorizer::new(mode, users, rules, tokens, limits, settings.external_url.clone(), settings.service.clone()))
}

/// The external issuer's keys: fetched when `source` is a URL, read when it is a file.
async fn trusted_keys(source: &str) -> anyhow::Result<Vec<u8>> {
    if source.starts_with("https://") || source.starts_with("http://") {
        let response = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?
            .get(source)
            .send()
            .await
            .with_context(|| format!("cannot fetch {source}"))?
            .error_for_status()?;
        Ok(response.bytes().await?.to_vec())
    } else {
        std::fs::read(source).with_context(|| format!("cannot read {source}"))
    }
}

/// A server bound to its address and running in the background.
pub struct Running {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    pub registry: Registry,
    /// The `/metrics` server, when it listens on an address of its own.
    pub metrics: Option<ServerHandle>,
}

/// Binds `settings.listen` (port 0 picks a free port) and starts serving.
pub async fn start(settings: &Settings) -> anyhow::Result<(Running, Server)> {
    crate::install_crypto_provider();
    let registry = build_registry(settings).await?;
    let auth = build_authorizer(settings).await?;
    let listener =
        TcpListener::bind(&settings.listen).with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    if auth.mode() == Mode::None && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "authentication is off (BERTH_AUTH=none) on an address other hosts can reach");
    }
    let state =
        web::Data::new(AppState { registry: registry.clone(), auth, trust_forwarded: settings.trust_forwarded });
    let metrics_on_api = settings.metrics_listen.is_none();
    let mut server = HttpServer::new(move || {
        let app = App::new().app_data(state.clone()).wrap_fn(api::observe::request).configure(api::configure);
        if metrics_on_api { app.route("/metrics", web::get().to(api::observe::metrics)) } else { app }
    })
    .listen(listener)?
    .shutdown_timeout(settings.shutdown_timeout);
    if let Some(workers) = settings.workers {
        server = server.workers(workers);
    }
    let server = server.disable_signals().run();
    let handle = server.handle();
    let metrics = match &settings.metrics_listen {
        Some(address) => {
            let listener = TcpListener::bind(address)
                .with_context(|| format!("cannot listen on {address} (BERTH_METRICS_LISTEN)"))?;
            let metrics = HttpServer::new(|| App::new().route("/metrics", web::get().to(api::observe::metrics)))
                .listen(listener)?
                .workers(1)
                .disable_signals()
                .run();
            let metrics_handle = metrics.handle();
            tokio::spawn(metrics);
            Some(metrics_handle)
        }
        None => None,
    };
    Ok((Running { addr, handle, registry, metrics }, server))
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
    if let Some(metrics) = &running.metrics {
        metrics.stop(true).await;
    }
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
