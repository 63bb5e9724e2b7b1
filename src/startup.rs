//! Builds the state and the router, binds (port 0 works, for tests), runs the server and its
//! background workers until a shutdown signal, then stops gracefully.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Request, State},
    http::{StatusCode, Uri},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::{net::TcpListener, sync::Notify};
use tower::ServiceBuilder;
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::{DefaultOnResponse, TraceLayer},
};
use tower_sessions::{Expiry, SessionManagerLayer, cookie::SameSite};
use tracing::Level;
use url::Url;

use crate::{
    accounts::{self, Viewer, ratelimit::LoginLimiter, session_store::DbSessionStore},
    apps, audit, billing,
    certs::{self, trust::TrustStore},
    config::Config,
    db, domains, edge,
    error::AppError,
    mail,
    state::AppState,
    tickets,
    vault::Vault,
    web::{self, PageError},
};

pub struct Application {
    listener: TcpListener,
    /// `CERTDROP_METRICS_LISTEN`, bound.
    metrics_listener: Option<TcpListener>,
    state: AppState,
    mail: Option<(mail::worker::Transport, lettre::message::Mailbox)>,
}

/// Uploads are at most 1 MiB of key material; the multipart envelope gets some room on top.
pub const MAX_BODY_BYTES: usize = 1024 * 1024 + 64 * 1024;

impl Application {
    /// Prepares the data directory and database and binds the listener; nothing is served yet.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        install_crypto_provider();
        db::create_private_dir(&config.data_dir)?;
        let vault = Vault::open_or_create(&config.vault_identity)?;
        let unsealed_by_token = vault.start(config.vault_pkcs11.as_ref());
        let trust = TrustStore::load(config.extra_trust_roots.as_deref())?;
        let db = db::connect(&config).await?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {} (CERTDROP_LISTEN)", config.listen))?;
        let local = listener.local_addr()?;
        let metrics_listener =
            match config.metrics_listen {
                Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
                    format!("cannot listen on {addr} (CERTDROP_METRICS_LISTEN)")
                })?),
                None => None,
            };
        let base_url = match &config.base_url {
            Some(url) => url.clone(),
            None => {
                Url::parse(&format!("http://{local}")).context("base URL from the bound address")?
            }
        };
        let base_origin = base_url.origin().ascii_serialization();
        accounts::password::warm_up().await;
        let config_dns = config.dns_resolver;
        let state = AppState {
            db,
            config: Arc::new(config),
            base_url,
            base_origin,
            login_limiter: Arc::new(LoginLimiter::new()),
            vault: Arc::new(vault),
            trust: Arc::new(trust),
            mail_wake: Arc::new(Notify::new()),
            deploy_wake: Arc::new(Notify::new()),
            acme_wake: Arc::new(Notify::new()),
            config_changed: Arc::new(Notify::new()),
            pair_versions: Arc::default(),
            storage_full_at: Arc::new(std::sync::atomic::AtomicI64::new(0)),
            stopping: Arc::new(tokio::sync::watch::channel(false).0),
            dns: Arc::new(crate::domains::dns::Resolver::new(config_dns)),
            metrics: Arc::new(crate::metrics::Metrics::new()),
        };
        if unsealed_by_token {
            crate::audit::record(
                &state.db,
                crate::audit::Entry::new(None, "vault.unsealed", "vault", "vault")
                    .detail(serde_json::json!({"by": "pkcs11"})),
            )
            .await?;
        }
        let transport = mail::worker::Transport::from_config(&state.config)?;
        let from: lettre::message::Mailbox = state
            .config
            .mail_from
            .parse()
            .context("CERTDROP_MAIL_FROM")?;
        Ok(Self {
            listener,
            metrics_listener,
            state,
            mail: Some((transport, from)),
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests.
    pub async fn run_until(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let mut workers = spawn_workers(&self.state);
        if let Some((transport, from)) = self.mail.take() {
            workers.push(tokio::spawn(mail::worker::run(
                self.state.db.clone(),
                transport,
                from,
                self.state.mail_wake.clone(),
            )));
        }
        if let Some(listener) = self.metrics_listener.take() {
            let metrics = crate::metrics::routes::private_router(self.state.clone());
            workers.push(tokio::spawn(async move {
                if let Err(err) = axum::serve(listener, metrics).await {
                    tracing::error!(error = %err, "the metrics listener stopped");
                }
            }));
        }
        let router = router(self.state.clone());
        tracing::info!(
            address = %self.address(),
            base_url = %self.state.base_url,
            database = ?self.state.config.db_backend,
            "certdrop is serving"
        );
        let served = axum::serve(
            self.listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown({
            let stopping = self.state.stopping.clone();
            async move {
                shutdown.await;
                stopping.send_replace(true);
            }
        })
        .await;
        for worker in workers {
            worker.abort();
        }
        served.context("the HTTP server stopped with an error")
    }
}

fn spawn_workers(state: &AppState) -> Vec<tokio::task::JoinHandle<()>> {
    let sessions = DbSessionStore::new(state.db.clone());
    let limiter = state.login_limiter.clone();
    vec![
        tokio::spawn(edge::deploy::run(state.clone())),
        tokio::spawn(crate::acme::worker::run(state.clone())),
        tokio::spawn(edge::versions::run(state.clone())),
        tokio::spawn(crate::webhooks::worker::run(state.clone())),
        tokio::spawn(edge::session_keys::run(state.clone())),
        tokio::spawn(edge::stapling::run(state.clone())),
        tokio::spawn(domains::worker::run(state.clone())),
        tokio::spawn(domains::platform::run(state.clone())),
        tokio::spawn(mail::reminders::run(state.clone())),
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(300));
            loop {
                tick.tick().await;
                if let Err(err) = sessions.delete_expired().await {
                    tracing::warn!(
                        error = format!("{err:#}"),
                        "could not delete expired sessions"
                    );
                }
                limiter.prune();
            }
        }),
    ]
}

pub fn router(state: AppState) -> Router {
    let secure_cookie = state.base_url.scheme() == "https";
    let sessions = SessionManagerLayer::new(DbSessionStore::new(state.db.clone()))
        .with_name("certdrop_session")
        .with_http_only(true)
        .with_same_site(SameSite::Strict)
        .with_secure(secure_cookie)
        .with_expiry(Expiry::OnInactivity(accounts::extract::SESSION_IDLE));
    let trace = TraceLayer::new_for_http()
        .make_span_with(|req: &Request| {
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            // The path only: a query string is never logged.
            tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path())
        })
        .on_response(DefaultOnResponse::new().level(Level::INFO));
    Router::new()
        .route("/", get(home))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/static/app.css", get(web::stylesheet))
        .route("/static/progress.js", get(web::progress_script))
        .route("/api/v1/openapi.json", get(openapi))
        .merge(accounts::routes::router())
        .merge(accounts::second_factor_routes::router())
        .merge(accounts::manage_routes::router())
        .merge(crate::vault::routes::router())
        .merge(apps::routes::router())
        .merge(domains::routes::router())
        .merge(domains::platform::router())
        .merge(audit::routes::router())
        .merge(certs::routes::router())
        .merge(certs::csr_routes::router())
        .merge(tickets::routes::router())
        .merge(edge::routes::router())
        .merge(billing::routes::router())
        .merge(crate::metrics::routes::router())
        .merge(crate::webhooks::routes::router())
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::routes::count_requests,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            web::form_replay,
        ))
        // Inside the sessions layer: it sees whether a request signed someone in.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            accounts::csrf::anonymous_cookie,
        ))
        .layer(sessions)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            web::origin_check,
        ))
        .layer(middleware::from_fn(web::api_error_shape))
        .layer(middleware::from_fn(web::security_headers))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            note_storage_full,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(trace)
                .layer(PropagateRequestIdLayer::x_request_id()),
        )
        .with_state(state)
}

async fn home(viewer: Viewer) -> Response {
    web::see_other(if viewer.user.is_some() {
        "/apps"
    } else {
        "/login"
    })
}

/// Remembers when an answer was 507 `storage_full`, so `/readyz` says so for a while.
async fn note_storage_full(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    if response.status() == StatusCode::INSUFFICIENT_STORAGE {
        state
            .storage_full_at
            .store(db::now(), std::sync::atomic::Ordering::Relaxed);
    }
    response
}

/// Ready when the database answers within a second and storage is not full (no 507 in the last
/// 30 seconds, and at least 16 MiB free where the data directory is).
/// Ready when the database answers, storage has room and the vault is unsealed; the JSON says
/// which is not, and how the vault rests.
async fn readyz(State(state): State<AppState>) -> Response {
    let query = sqlx::query_scalar::<_, i64>("SELECT 1").fetch_one(&state.db);
    let full = db::now()
        - state
            .storage_full_at
            .load(std::sync::atomic::Ordering::Relaxed)
        < 30
        || db::nearly_full(&state.config.data_dir);
    let problem = match tokio::time::timeout(Duration::from_secs(1), query).await {
        Ok(Ok(_)) if full => Some("storage full"),
        Ok(Ok(_)) => None,
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "readiness check failed");
            Some("database unavailable")
        }
        Err(_) => Some("database unavailable"),
    };
    let sealed = state.vault.is_sealed();
    let problem = problem.or(sealed.then_some("vault sealed"));
    let vault = match state.vault.is_split() {
        true => "sealed at rest",
        false => {
            "not sealed at rest: the vault identity is a plain file until `certdrop vault:init`"
        }
    };
    let status = match problem {
        Some(_) => StatusCode::SERVICE_UNAVAILABLE,
        None => StatusCode::OK,
    };
    (
        status,
        Json(serde_json::json!({
            "ready": problem.is_none(),
            "problem": problem,
            "sealed": sealed,
            "vault": vault,
        })),
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        include_str!("../static/openapi.json"),
    )
        .into_response()
}

async fn fallback(uri: Uri) -> Response {
    if uri.path().starts_with("/api/") {
        AppError::not_found("route").into_response()
    } else {
        PageError(AppError::not_found("page")).into_response()
    }
}

/// One TLS provider (aws-lc-rs) for the whole process, whichever library builds a TLS config.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Completes on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
