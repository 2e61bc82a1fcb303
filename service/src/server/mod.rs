//! Assembling the backends chosen by the settings and serving the API.

mod backends;

pub use backends::{Backend, Unreachable, build_registry, check_backends};

use std::net::{SocketAddr, TcpListener};
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
use crate::config::{AuthMode, Settings};
use crate::registry::Registry;

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

/// The key the web UI signs sign-ins with: `BERTH_UI_SESSION_KEY`, else (token mode) one
/// derived from the token signing key, which replicas share already, else one of this process.
fn ui_session_keys(settings: &Settings, mode: Mode) -> anyhow::Result<std::sync::Arc<crate::ui::SessionKeys>> {
    let ttl = Duration::from_secs(settings.ui_session_ttl);
    let keys = match &settings.ui_session_key {
        Some(secret) => crate::ui::SessionKeys::derived(secret.expose().as_bytes(), ttl),
        None if mode == Mode::Token => {
            let keys =
                token::load_keys(settings.token_key.as_deref(), &settings.data_dir).context("BERTH_TOKEN_KEY")?;
            crate::ui::SessionKeys::derived(keys.first().map_or(&[][..], Vec::as_slice), ttl)
        }
        None => {
            if settings.ui && mode != Mode::None && settings.redis_url.is_some() {
                // Redis means replicas; a key per process is a sign-in per replica.
                tracing::warn!(
                    "web UI sign-ins are signed with a key of this process: set BERTH_UI_SESSION_KEY so that \
                     every replica accepts them and they outlive a restart"
                );
            }
            crate::ui::SessionKeys::random(ttl)
        }
    };
    Ok(std::sync::Arc::new(keys))
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
    /// Whether the quota namespaces were counted at start.
    pub quotas_counted: bool,
}

/// Binds `settings.listen` (port 0 picks a free port) and starts serving. The addresses are
/// bound first: a port already taken fails the start before anything is created or migrated.
pub async fn start(settings: &Settings) -> anyhow::Result<(Running, Server)> {
    crate::install_crypto_provider();
    let listener = TcpListener::bind(&settings.listen)
        .with_context(|| format!("cannot listen on {} (BERTH_LISTEN)", settings.listen))?;
    let metrics_listener = match &settings.metrics_listen {
        Some(address) => Some(
            TcpListener::bind(address).with_context(|| format!("cannot listen on {address} (BERTH_METRICS_LISTEN)"))?,
        ),
        None => None,
    };
    let rule = if settings.fail_fast { Unreachable::Fail } else { Unreachable::Wait };
    let registry = build_registry(settings, rule).await?;
    // Counted before the first push; when the database is not there yet, the collector's task
    // counts them once it is.
    let quotas_counted = match registry.sync_quotas().await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot count quota usage yet; trying again in the background");
            false
        }
    };
    let auth = build_authorizer(settings).await?;
    let addr = listener.local_addr()?;
    if auth.mode() == Mode::None && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "authentication is off (BERTH_AUTH=none) on an address other hosts can reach");
    }
    if auth.mode() == Mode::Token && settings.external_url.is_none() {
        tracing::warn!(
            "token mode without BERTH_EXTERNAL_URL: the token realm clients are sent to (with their passwords) is \
             built from each request's Host header{}; set BERTH_EXTERNAL_URL to the URL clients use",
            if settings.trust_forwarded == crate::config::TrustForwarded::None { "" } else { " and forwarded headers" }
        );
    }
    let ui_sessions = ui_session_keys(settings, auth.mode())?;
    let state = web::Data::new(AppState {
        registry: registry.clone(),
        auth,
        proxies: settings.proxies(),
        external_url: settings.external_url.clone(),
        ui_sessions,
    });
    // Metrics say much about a registry (its traffic, its backends): on the API's address they
    // are public only while everything is (no authentication), or behind a token.
    let metrics_on_api = settings.metrics_listen.is_none() && (auth_off(settings) || settings.metrics_token.is_some());
    if settings.metrics_listen.is_none() && !metrics_on_api {
        tracing::info!(
            "/metrics is not served: with authentication on, set BERTH_METRICS_LISTEN to an address of its own, \
             or BERTH_METRICS_TOKEN to a token Prometheus sends"
        );
    }
    let token = settings.metrics_token.clone();
    let ui = settings.ui;
    let mut server = HttpServer::new(move || {
        let app =
            App::new().app_data(state.clone()).wrap_fn(api::observe::request).configure(api::configure).configure(
                |cfg| {
                    if ui {
                        crate::ui::configure(cfg)
                    }
                },
            );
        if metrics_on_api { app.route("/metrics", api::observe::metrics_route(token.clone())) } else { app }
    })
    .listen(listener)?
    .shutdown_timeout(settings.shutdown_timeout);
    if let Some(workers) = settings.workers {
        server = server.workers(workers);
    }
    let server = server.disable_signals().run();
    let handle = server.handle();
    let metrics = match metrics_listener {
        Some(listener) => {
            let token = settings.metrics_token.clone();
            let metrics =
                HttpServer::new(move || App::new().route("/metrics", api::observe::metrics_route(token.clone())))
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
    Ok((Running { addr, handle, registry, metrics, quotas_counted }, server))
}

fn auth_off(settings: &Settings) -> bool {
    settings.auth == AuthMode::None
}

/// Serves until SIGTERM or SIGINT, then lets requests in flight finish.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let (running, server) = start(&settings).await?;
    tracing::info!(addr = %running.addr, storage = ?settings.storage, "berth is serving");
    let janitor = running.registry.spawn_janitor();
    let lifecycle = running.registry.spawn_lifecycle(running.quotas_counted);
    let server = tokio::spawn(server);
    shutdown_signal().await;
    tracing::info!(grace_seconds = settings.shutdown_timeout, "shutting down: finishing requests in flight");
    running.handle.stop(true).await;
    if let Some(metrics) = &running.metrics {
        metrics.stop(true).await;
    }
    janitor.abort();
    for task in lifecycle {
        task.abort();
    }
    // What was pulled since the last flush is kept for retention's `keep_pulled_within`.
    running.registry.flush_pulls().await;
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
