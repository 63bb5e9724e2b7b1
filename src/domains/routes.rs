//! Domain forms on the app page, and `/api/v1/apps/{app}/domains`. Thin: the actions live in
//! `domains` (mod.rs); these extract, call one, and render.

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{DnsRecord, Target, Verification, store, store::Domain, txt_name};
use crate::{
    accounts::{ApiUser, SignedIn, User, csrf::CsrfForm, extract::ClientIp},
    apps::{self, routes::AppPageExtras, store::App},
    error::{AppError, AppResult},
    state::AppState,
    web::{self, PageResult, see_other},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/apps/{app}/domains", post(add_page))
        .route("/apps/{app}/domains/remove", post(remove_page))
        .route("/apps/{app}/domains/verify", post(verify_page))
        .route("/apps/{app}/domains/dns-check", post(dns_check_page))
        .route("/api/v1/apps/{app}/domains", get(list_api).post(add_api))
        .route(
            "/api/v1/apps/{app}/domains/{hostname}",
            get(show_api).delete(remove_api),
        )
        .route(
            "/api/v1/apps/{app}/domains/{hostname}/verify",
            post(verify_api),
        )
        .route(
            "/api/v1/apps/{app}/domains/{hostname}/dns-check",
            post(dns_check_api),
        )
}

async fn find(state: &AppState, app: &App, raw: &str) -> AppResult<Domain> {
    let host = super::hostname::normalize(raw).unwrap_or_else(|_| raw.trim().to_lowercase());
    store::find(&state.db, app, &host)
        .await?
        .ok_or_else(|| AppError::not_found("domain"))
}

// ---- JSON ----

#[derive(Serialize)]
pub struct DomainJson {
    hostname: String,
    created_at: String,
    verification: serde_json::Value,
    dns: serde_json::Value,
}

impl DomainJson {
    pub fn new(d: &Domain, target: &Target) -> Self {
        let pending = d.verification == Verification::Pending;
        Self {
            hostname: d.hostname.clone(),
            created_at: web::rfc3339(d.created_at),
            verification: json!({
                "state": d.verification,
                "txt_name": pending.then(|| txt_name(&d.hostname)),
                "txt_value": if pending { d.token.clone() } else { None },
                "expires_at": pending.then(|| web::rfc3339(d.expires_at)),
                "verified_at": d.verified_at.map(web::rfc3339),
                "method": d.verified_by,
                "checked_at": d.verification_checked_at.map(web::rfc3339),
                "last_error": if pending { d.verification_error.clone() } else { None },
            }),
            dns: json!({
                "state": d.dns,
                "target": target_text(target),
                "records": target.records(&d.hostname),
                "apex_records": if target.cname.is_some() { target.address_records(&d.hostname) } else { Vec::new() },
                "checked_at": d.dns_checked_at.map(web::rfc3339),
                "seen": d.dns_seen,
                "error": d.dns_error,
            }),
        }
    }
}

/// The target as one line: the CNAME target, or the addresses; `None` before there is one.
pub fn target_text(target: &Target) -> Option<String> {
    match (&target.cname, target.addresses.is_empty()) {
        (Some(cname), _) => Some(cname.clone()),
        (None, false) => Some(
            target
                .addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (None, true) => None,
    }
}

/// A record as a zone file line says it.
pub fn record_line(r: &DnsRecord) -> String {
    format!("{} {} {}", r.name, r.kind, r.value)
}

async fn list_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(name): Path<String>,
) -> AppResult<Response> {
    let app = apps::store::find_visible(&state.db, &user, &name).await?;
    let target = super::target(&state, &app).await?;
    let items: Vec<DomainJson> = store::of_app(&state.db, &app)
        .await?
        .iter()
        .map(|d| DomainJson::new(d, &target))
        .collect();
    Ok(Json(json!({"items": items, "next_cursor": null})).into_response())
}

async fn show_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path((name, host)): Path<(String, String)>,
) -> AppResult<Response> {
    let app = apps::store::find_visible(&state.db, &user, &name).await?;
    let domain = find(&state, &app, &host).await?;
    let target = super::target(&state, &app).await?;
    Ok(Json(DomainJson::new(&domain, &target)).into_response())
}

#[derive(Deserialize)]
struct AddRequest {
    hostname: String,
    override_reason: Option<String>,
}

async fn add_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ip: ClientIp,
    Path(name): Path<String>,
    Json(req): Json<AddRequest>,
) -> AppResult<Response> {
    let app = apps::store::find_visible(&state.db, &user, &name).await?;
    let domain = super::add(
        &state,
        &user,
        ip,
        &app,
        &req.hostname,
        req.override_reason.as_deref(),
    )
    .await?;
    let target = super::target(&state, &app).await?;
    Ok((StatusCode::CREATED, Json(DomainJson::new(&domain, &target))).into_response())
}

#[derive(Deserialize)]
struct RemoveQuery {
    confirm: Option<String>,
    override_reason: Option<String>,
}

async fn remove_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ip: ClientIp,
    Path((name, host)): Path<(String, String)>,
    Query(q): Query<RemoveQuery>,
) -> AppResult<StatusCode> {
    let app = apps::store::find_visible(&state.db, &user, &name).await?;
    super::remove(
        &state,
        &user,
        ip,
        &app,
        &host,
        q.confirm.as_deref(),
        q.override_reason.as_deref(),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
struct VerifyRequest {
    override_reason: Option<String>,
}

async fn verify_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ip: ClientIp,
    Path((name, host)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> AppResult<Response> {
    let req: VerifyRequest = web::optional_json(&body)?;
    let app = apps::store::find_visible(&state.db, &user, &name).await?;
    let domain = find(&state, &app, &host).await?;
    let domain = super::verify(
        &state,
        Some(&user),
        ip,
        &app,
        &domain,
        req.override_reason.as_deref(),
    )
    .await?;
    let target = super::target(&state, &app).await?;
    Ok(Json(DomainJson::new(&domain, &target)).into_response())
}

async fn dns_check_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path((name, host)): Path<(String, String)>,
) -> AppResult<Response> {
    let app = apps::store::find_visible(&state.db, &user, &name).await?;
    let domain = find(&state, &app, &host).await?;
    let domain = super::check_dns(&state, &app, &domain).await?;
    let target = super::target(&state, &app).await?;
    Ok(Json(DomainJson::new(&domain, &target)).into_response())
}

// ---- the app page's domain forms ----

#[derive(Deserialize)]
struct DomainForm {
    hostname: String,
    confirm: Option<String>,
    override_reason: Option<String>,
}

/// Runs a page action; a refusal shows the app page again with the problem (and, for a
/// served domain, the confirmation it asks for).
async fn page_action<F, Fut>(
    state: &AppState,
    me: &SignedIn,
    name: &str,
    form: &DomainForm,
    action: F,
) -> PageResult
where
    F: FnOnce(App, User) -> Fut,
    Fut: Future<Output = AppResult<String>>,
{
    let app = apps::store::find_visible(&state.db, &me.user, name).await?;
    match action(app.clone(), me.user.clone()).await {
        Ok(done) => {
            web::flash(&me.session, "ok", done).await?;
            Ok(see_other(&format!("/apps/{}#domains", app.name)))
        }
        Err(err) if err.status.is_client_error() => {
            let extras = AppPageExtras {
                hostname: form.hostname.trim().to_string(),
                confirm_removal: (err.first_code() == "confirmation_required")
                    .then(|| form.hostname.trim().to_string()),
            };
            apps::routes::render_app_page(state, me, app, err.status, extras, err.into()).await
        }
        Err(err) => Err(err.into()),
    }
}

async fn add_page(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    Path(name): Path<String>,
    CsrfForm(form): CsrfForm<DomainForm>,
) -> PageResult {
    let (state, form) = (&state, &form);
    page_action(state, &me, &name, form, move |app, user| async move {
        let d = super::add(
            state,
            &user,
            ip,
            &app,
            &form.hostname,
            form.override_reason.as_deref(),
        )
        .await?;
        Ok(format!(
            "{} added. Prove it is yours with the TXT record shown next to it.",
            d.hostname
        ))
    })
    .await
}

async fn remove_page(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    Path(name): Path<String>,
    CsrfForm(form): CsrfForm<DomainForm>,
) -> PageResult {
    let (state, form) = (&state, &form);
    page_action(state, &me, &name, form, move |app, user| async move {
        super::remove(
            state,
            &user,
            ip,
            &app,
            &form.hostname,
            form.confirm.as_deref(),
            form.override_reason.as_deref(),
        )
        .await?;
        Ok(format!("{} removed.", form.hostname.trim()))
    })
    .await
}

async fn verify_page(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    Path(name): Path<String>,
    CsrfForm(form): CsrfForm<DomainForm>,
) -> PageResult {
    let (state, form) = (&state, &form);
    page_action(state, &me, &name, form, move |app, user| async move {
        let domain = find(state, &app, &form.hostname).await?;
        let reason = form
            .override_reason
            .as_deref()
            .filter(|r| !r.trim().is_empty());
        let d = super::verify(state, Some(&user), ip, &app, &domain, reason).await?;
        Ok(format!(
            "{} is verified: it is served as soon as a deployed certificate covers it.",
            d.hostname
        ))
    })
    .await
}

async fn dns_check_page(
    State(state): State<AppState>,
    me: SignedIn,
    Path(name): Path<String>,
    CsrfForm(form): CsrfForm<DomainForm>,
) -> PageResult {
    let (state, form) = (&state, &form);
    page_action(state, &me, &name, form, move |app, _| async move {
        let domain = find(state, &app, &form.hostname).await?;
        let d = super::check_dns(state, &app, &domain).await?;
        Ok(match (&d.dns_error, &d.dns_seen) {
            (Some(error), _) => format!("{}: {error}", d.hostname),
            (None, Some(seen)) if !seen.is_empty() => {
                format!("{} {} ({seen}).", d.hostname, d.dns.label())
            }
            _ => format!("{}: {}.", d.hostname, d.dns.label()),
        })
    })
    .await
}
