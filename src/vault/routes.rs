//! The vault's seal status, unseal (a share is the credential: no account) and the emergency
//! seal, over the API and in the browser. Every share given, unseal and seal is audited; a share
//! never is.

use askama::Template;
use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::{Status, Unseal, UnsealRefusal};
use crate::{
    accounts::{
        ApiCredential, ApiUser, Viewer,
        csrf::CsrfForm,
        extract::ClientIp,
        second_factor::{self},
    },
    audit::{self, Entry},
    error::{AppError, AppResult, ErrorItem},
    state::AppState,
    web::{self, Chrome, FormErrors, PageResult, filters, render_status, see_other},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/vault", get(status_api))
        .route(
            "/api/v1/vault/unseal",
            post(unseal_api).layer(web::small_body()),
        )
        .route("/api/v1/vault/seal", post(seal_api))
        .route(
            "/vault/unseal",
            get(unseal_page)
                .post(unseal_submit)
                .layer(web::small_body()),
        )
}

/// The rate limiter's account key for unseal attempts (per client address).
const LIMIT_KEY: &str = "vault-unseal";

fn status(state: &AppState) -> AppResult<Status> {
    Ok(state.vault.status()?)
}

async fn status_api(State(state): State<AppState>) -> AppResult<Json<Status>> {
    Ok(Json(status(&state)?))
}

/// Counts one share, as the API and the page both do.
async fn give(state: &AppState, ip: ClientIp, share: &str) -> AppResult<Status> {
    let limit_ip = ip.0.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
    state.login_limiter.check(limit_ip, LIMIT_KEY)?;
    let vault = state.vault.clone();
    let share = share.to_string();
    let given = tokio::task::spawn_blocking(move || vault.give_share(&share))
        .await
        .map_err(|e| AppError::internal(e.into()))?;
    let (action, detail, refusal) = match given {
        Ok(Unseal::Unsealed) => ("vault.unsealed", json!({"by": "shares"}), None),
        Ok(Unseal::Progress(n)) => ("vault.share_accepted", json!({"progress": n}), None),
        Err(UnsealRefusal::InvalidShare(why)) => (
            "vault.share_refused",
            json!({}),
            Some(AppError::unprocessable(ErrorItem::new("invalid_share", why).on("share"))),
        ),
        Err(UnsealRefusal::Failed) => (
            "vault.unseal_failed",
            json!({}),
            Some(AppError::unprocessable(ErrorItem::new(
                "unseal_failed",
                "Those shares together do not open this vault (one was changed, or is not this vault's). Progress is back to 0: start again, each key holder giving their share.",
            ).on("share"))),
        ),
        Err(UnsealRefusal::NotSplit) => return Err(not_split()),
    };
    let mut entry = Entry::new(None, action, "vault", "vault")
        .detail(detail)
        .ip(ip.0);
    if refusal.is_some() {
        entry.outcome = "refused";
        state.login_limiter.failed(limit_ip, LIMIT_KEY);
    }
    audit::record(&state.db, entry).await?;
    match refusal {
        Some(err) => Err(err),
        None => status(state),
    }
}

fn not_split() -> AppError {
    AppError::conflict(
        "vault_not_split",
        "This vault is not split: its identity is a plain file on disk, so there is nothing to unseal or seal. Run `certdrop vault:init` on the server to seal it at rest.",
    )
}

#[derive(Deserialize)]
struct ShareRequest {
    share: SecretString,
}

async fn unseal_api(
    State(state): State<AppState>,
    ip: ClientIp,
    Json(req): Json<ShareRequest>,
) -> AppResult<Json<Status>> {
    Ok(Json(give(&state, ip, req.share.expose_secret()).await?))
}

#[derive(Deserialize, Default)]
struct OtpRequest {
    otp: Option<String>,
}

/// The emergency button: the identity leaves memory at once (admin, fresh second factor).
async fn seal_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ApiCredential(credential): ApiCredential,
    ip: ClientIp,
    body: axum::body::Bytes,
) -> AppResult<Response> {
    user.require_admin()?;
    let req: OtpRequest = web::optional_json(&body)?;
    second_factor::require_fresh(&state, &user, &credential, ip, req.otp.as_deref()).await?;
    state.vault.seal_now().map_err(|_| not_split())?;
    audit::record(
        &state.db,
        Entry::new(Some(&user), "vault.sealed", "vault", "vault").ip(ip.0),
    )
    .await?;
    tracing::warn!(by = %user.email, "vault: sealed by an admin");
    Ok(Json(status(&state)?).into_response())
}

#[derive(Template)]
#[template(path = "vault/unseal.html")]
struct UnsealPage {
    chrome: Chrome,
    status: Status,
    errors: FormErrors,
}

async fn unseal_page(State(state): State<AppState>, viewer: Viewer) -> PageResult {
    Ok(render_status(
        StatusCode::OK,
        &UnsealPage {
            chrome: viewer.chrome().await?,
            status: status(&state)?,
            errors: FormErrors::default(),
        },
    )?)
}

#[derive(Deserialize)]
struct ShareForm {
    share: SecretString,
}

async fn unseal_submit(
    State(state): State<AppState>,
    viewer: Viewer,
    ip: ClientIp,
    CsrfForm(form): CsrfForm<ShareForm>,
) -> PageResult {
    match give(&state, ip, form.share.expose_secret()).await {
        Ok(now) => {
            let message = match now.sealed {
                false => "The vault is unsealed.".to_string(),
                true => format!(
                    "Share accepted: {} of {} given.",
                    now.progress,
                    now.threshold.unwrap_or(0)
                ),
            };
            web::flash(&viewer.session, "ok", message).await?;
            Ok(see_other("/vault/unseal"))
        }
        Err(err) if err.status == StatusCode::UNPROCESSABLE_ENTITY => {
            let code = err.status;
            Ok(render_status(
                code,
                &UnsealPage {
                    chrome: viewer.chrome().await?,
                    status: status(&state)?,
                    errors: err.into(),
                },
            )?)
        }
        Err(err) => Err(err.into()),
    }
}
