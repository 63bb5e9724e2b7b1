//! Keys born in the vault, over HTTP: generate a key and CSR for an app (page and
//! `POST /api/v1/apps/{app}/csrs`), list and show them. The key is generated off the async
//! runtime and sealed before anything is stored; only the CSR (public) is ever shown.

use askama::Template;
use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    csr::{self, KeyKind},
    store::{self, GeneratedKey},
};
use crate::{
    accounts::{ApiUser, SignedIn, User, csrf::CsrfForm, extract::ClientIp},
    apps::{self, store::App},
    db::PageQuery,
    error::{AppError, AppResult, ErrorItem},
    state::AppState,
    web::{self, Chrome, FormErrors, PageResult, filters, render, see_other},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/apps/{app}/csrs", axum::routing::post(generate_page))
        .route("/apps/{app}/csrs/{id}", get(csr_page))
        .route("/api/v1/apps/{app}/csrs", get(list_api).post(generate_api))
        // PRODUCT.md's spelling of the same action.
        .route("/api/v1/apps/{app}/csr", axum::routing::post(generate_api))
        .route("/api/v1/apps/{app}/csrs/{id}", get(show_api))
}

/// What a customer asks for; every field is optional.
#[derive(Deserialize, Default)]
pub struct GenerateRequest {
    pub key_type: Option<String>,
    pub subject: Option<String>,
    /// The Common Name, when it is not in `subject` (the first domain otherwise).
    pub common_name: Option<String>,
    /// The names to ask for: the app's domains when empty.
    #[serde(default)]
    pub domains: Vec<String>,
}

/// Generates a key for `app` (its owner only, like an upload), seals it at once and stores it
/// with its CSR. The requested names must be the app's own domains.
async fn generate(
    state: &AppState,
    user: &User,
    ip: ClientIp,
    app: &App,
    req: GenerateRequest,
) -> AppResult<GeneratedKey> {
    // Keys and tickets wait until the owner proved the address certdrop mails is theirs.
    user.require_verified()?;
    if app.owner_id != user.id {
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            ErrorItem::new(
                "forbidden",
                "Only the app's owner generates its keys; staff never handle key material.",
            ),
        ));
    }
    let app_domains = crate::domains::store::claimed_hostnames(&state.db, app).await?;
    let mut errors = Vec::new();
    let kind = KeyKind::parse(req.key_type.as_deref().unwrap_or(""))
        .map_err(|e| errors.push(e))
        .ok();
    let subject = csr::parse_subject(req.subject.as_deref().unwrap_or(""))
        .map(|mut subject| {
            if let Some(cn) = req
                .common_name
                .as_deref()
                .map(str::trim)
                .filter(|c| !c.is_empty())
                && !subject.iter().any(|(name, _)| *name == "CN")
            {
                subject.insert(0, ("CN", cn.to_string()));
            }
            subject
        })
        .map_err(|e| errors.push(e))
        .ok();
    let asked: Vec<String> = req
        .domains
        .iter()
        .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
        .filter(|d| !d.is_empty())
        .collect();
    let domains = if asked.is_empty() {
        app_domains.clone()
    } else {
        asked
    };
    let strangers: Vec<&String> = domains
        .iter()
        .filter(|d| !app_domains.contains(d))
        .collect();
    if app_domains.is_empty() {
        errors.push(
            ErrorItem::new(
                "invalid_request",
                format!(
                    "{} has no domains yet: add them on the app page first, then generate the CSR.",
                    app.name
                ),
            )
            .on("domains"),
        );
    } else if !strangers.is_empty() {
        errors.push(
            ErrorItem::new(
                "invalid_request",
                format!(
                    "{} {} not among {}'s domains ({}). Add {} to the app first, or leave the field empty for all of them.",
                    strangers.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                    if strangers.len() == 1 { "is" } else { "are" },
                    app.name,
                    app_domains.join(", "),
                    if strangers.len() == 1 { "it" } else { "them" },
                ),
            )
            .on("domains"),
        );
    }
    let (Some(kind), Some(subject), true) = (kind, subject, errors.is_empty()) else {
        return Err(AppError::many(StatusCode::UNPROCESSABLE_ENTITY, errors));
    };
    let vault = state.vault.clone();
    let (generated, sealed) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let generated = csr::generate(kind, &subject, &domains)?;
        let sealed = vault.seal(&generated.key)?;
        Ok((generated, sealed))
    })
    .await
    .map_err(|e| AppError::internal(anyhow::anyhow!("key generation task: {e}")))?
    .map_err(AppError::internal)?;
    store::insert_generated(&state.db, app, user, ip.0, &generated, &sealed).await
}

pub fn csr_json(key: &GeneratedKey) -> Value {
    json!({
        "id": key.id,
        "app": key.app,
        "key_type": key.key_type,
        "subject": key.subject,
        "domains": key.domains,
        "csr_pem": key.csr_pem,
        "public_key_sha256": key.public_key_id,
        "created_at": web::rfc3339(key.created_at),
        "certificate_id": key.certificate_id,
    })
}

// ---- JSON API ----

async fn generate_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ip: ClientIp,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> AppResult<Response> {
    let app = apps::store::find_visible(&state.db, &user, &name).await?;
    let req: GenerateRequest = web::optional_json(&body)?;
    let key = generate(&state, &user, ip, &app, req).await?;
    Ok((StatusCode::CREATED, Json(csr_json(&key))).into_response())
}

async fn list_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(name): Path<String>,
    Query(q): Query<PageQuery>,
) -> AppResult<Response> {
    let app = apps::store::find_visible(&state.db, &user, &name).await?;
    let (keys, next) = store::generated_of_app(&state.db, &app, q.page()?).await?;
    let items: Vec<Value> = keys.iter().map(csr_json).collect();
    Ok(Json(json!({"items": items, "next_cursor": next})).into_response())
}

async fn show_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path((name, id)): Path<(String, i64)>,
) -> AppResult<Response> {
    let app = apps::store::find_visible(&state.db, &user, &name).await?;
    let key = store::find_generated(&state.db, &app, id).await?;
    Ok(Json(csr_json(&key)).into_response())
}

// ---- pages ----

#[derive(Deserialize)]
struct GenerateForm {
    key_type: Option<String>,
    subject: Option<String>,
    /// One name per line (or separated by commas or spaces).
    domains: Option<String>,
}

async fn generate_page(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    Path(name): Path<String>,
    CsrfForm(form): CsrfForm<GenerateForm>,
) -> PageResult {
    let app = apps::store::find_visible(&state.db, &me.user, &name).await?;
    let req = GenerateRequest {
        key_type: form.key_type,
        subject: form.subject,
        domains: form
            .domains
            .unwrap_or_default()
            .split(|c: char| c == ',' || c.is_whitespace())
            .map(str::to_string)
            .collect(),
        common_name: None,
    };
    match generate(&state, &me.user, ip, &app, req).await {
        Ok(key) => {
            web::flash(
                &me.session,
                "ok",
                "Key generated and sealed in the vault. Send the CSR below to your certificate authority.",
            )
            .await?;
            Ok(see_other(&format!("/apps/{}/csrs/{}", app.name, key.id)))
        }
        Err(err) if err.status.is_client_error() && err.status != StatusCode::NOT_FOUND => {
            web::flash(&me.session, "error", err.message()).await?;
            Ok(see_other(&format!("/apps/{}/certs/new#generate", app.name)))
        }
        Err(err) => Err(err.into()),
    }
}

#[derive(Template)]
#[template(path = "certs/csr.html")]
struct CsrPage {
    chrome: Chrome,
    app: App,
    key: GeneratedKey,
    errors: FormErrors,
}

async fn csr_page(
    State(state): State<AppState>,
    me: SignedIn,
    Path((name, id)): Path<(String, i64)>,
) -> PageResult {
    let app = apps::store::find_visible(&state.db, &me.user, &name).await?;
    let key = store::find_generated(&state.db, &app, id).await?;
    Ok(render(&CsrPage {
        chrome: me.chrome().await?,
        app,
        key,
        errors: FormErrors::default(),
    })?)
}
