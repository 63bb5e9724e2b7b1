//! Pages and API for what `manage` does: a forgotten password, the email confirmation link,
//! the password and sessions on the Security page, and the admin's disable, enable and
//! second-factor reset of other accounts. Extraction and rendering only.

use askama::Template;
use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;

use super::{
    ApiCredential, ApiUser, SignedIn, Viewer,
    csrf::{self, CsrfForm},
    extract::ClientIp,
    manage::{self, PasswordChange, Reset},
    second_factor::Credential,
};
use crate::{
    error::{AppError, AppResult},
    state::AppState,
    web::{self, Chrome, FormErrors, PageResult, filters, render, render_secret, see_other},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/password/forgot",
            get(forgot_page)
                .post(forgot_submit)
                .layer(web::small_body()),
        )
        .route(
            "/password/reset/{token}",
            get(reset_page).post(reset_submit).layer(web::small_body()),
        )
        .route(
            "/account/verify/{token}",
            get(verify_page).post(verify_submit),
        )
        .route("/account/verify/resend", post(resend_verification))
        .route("/account/password", post(change_password_page))
        .route("/account/sessions/{id}/end", post(end_session_page))
        .route("/account/sessions/end-all", post(end_all_page))
        .route("/admin/users/{id}/disable", post(disable_page))
        .route("/admin/users/{id}/enable", post(enable_page))
        .route(
            "/admin/users/{id}/second-factor/reset",
            post(reset_second_factor_page),
        )
        .route(
            "/api/v1/password/forgot",
            post(forgot_api).layer(web::small_body()),
        )
        .route("/api/v1/account/password", post(change_password_api))
        .route("/api/v1/users/{id}/disable", post(disable_api))
        .route("/api/v1/users/{id}/enable", post(enable_api))
        .route(
            "/api/v1/users/{id}/second-factor/reset",
            post(reset_second_factor_api),
        )
}

// ---- a forgotten password ----

#[derive(Template)]
#[template(path = "accounts/password_forgot.html")]
struct ForgotPage {
    chrome: Chrome,
    sent: bool,
    errors: FormErrors,
}

async fn forgot_page(viewer: Viewer) -> PageResult {
    Ok(render(&ForgotPage {
        chrome: viewer.chrome().await?,
        sent: false,
        errors: FormErrors::default(),
    })?)
}

#[derive(Deserialize)]
struct ForgotForm {
    email: String,
}

/// The same answer whether or not an account uses the address.
async fn forgot_submit(
    State(state): State<AppState>,
    viewer: Viewer,
    ip: ClientIp,
    CsrfForm(form): CsrfForm<ForgotForm>,
) -> PageResult {
    let errors = match manage::request_reset(&state, ip, &form.email).await {
        Ok(()) => None,
        Err(err) if err.status.is_client_error() => Some(err),
        Err(err) => return Err(err.into()),
    };
    let status = errors.as_ref().map_or(StatusCode::OK, |e| e.status);
    Ok(web::render_status(
        status,
        &ForgotPage {
            chrome: viewer.chrome().await?,
            sent: errors.is_none(),
            errors: errors.map(Into::into).unwrap_or_default(),
        },
    )?)
}

async fn forgot_api(
    State(state): State<AppState>,
    ip: ClientIp,
    Json(form): Json<ForgotForm>,
) -> AppResult<Response> {
    manage::request_reset(&state, ip, &form.email).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"message": "If an account uses that address, certdrop has mailed it a link to choose a new password (valid for an hour)."})),
    )
        .into_response())
}

#[derive(Template)]
#[template(path = "accounts/password_reset.html")]
struct ResetPage {
    chrome: Chrome,
    token: String,
    email: String,
    staff: bool,
    errors: FormErrors,
}

async fn render_reset(
    state: &AppState,
    viewer: &Viewer,
    token: String,
    status: StatusCode,
    errors: FormErrors,
) -> PageResult {
    let user = manage::reset_link_user(&state.db, &token).await?;
    Ok(render_secret(
        status,
        &ResetPage {
            chrome: viewer.chrome().await?,
            token,
            email: user.email,
            staff: user.role.is_staff(),
            errors,
        },
    )?)
}

async fn reset_page(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(token): Path<String>,
) -> PageResult {
    render_reset(
        &state,
        &viewer,
        token,
        StatusCode::OK,
        FormErrors::default(),
    )
    .await
}

#[derive(Deserialize)]
struct ResetForm {
    new_password: SecretString,
    new_password_confirm: SecretString,
}

async fn reset_submit(
    State(state): State<AppState>,
    viewer: Viewer,
    ip: ClientIp,
    Path(token): Path<String>,
    CsrfForm(form): CsrfForm<ResetForm>,
) -> PageResult {
    match manage::reset_password(
        &state,
        ip,
        &token,
        form.new_password,
        form.new_password_confirm,
    )
    .await
    {
        Ok(_) => {
            // Whoever this browser was signed in as before is forgotten too.
            viewer.session.flush().await?;
            Ok(see_other("/login?reset=done"))
        }
        Err(err) if err.status == StatusCode::UNPROCESSABLE_ENTITY => {
            render_reset(&state, &viewer, token, err.status, err.into()).await
        }
        Err(err) => Err(err.into()),
    }
}

// ---- the email confirmation link ----

#[derive(Template)]
#[template(path = "accounts/verify.html")]
struct VerifyPage {
    chrome: Chrome,
    token: String,
    confirmed: Option<String>,
}

/// The link shows a button: a GET changes nothing.
async fn verify_page(viewer: Viewer, Path(token): Path<String>) -> PageResult {
    Ok(render(&VerifyPage {
        chrome: viewer.chrome().await?,
        token,
        confirmed: None,
    })?)
}

async fn verify_submit(
    State(state): State<AppState>,
    viewer: Viewer,
    ip: ClientIp,
    Path(token): Path<String>,
    CsrfForm(_): CsrfForm<csrf::NoFields>,
) -> PageResult {
    let user = manage::verify_email(&state, ip, &token).await?;
    Ok(render(&VerifyPage {
        chrome: viewer.chrome().await?,
        token: String::new(),
        confirmed: Some(user.email),
    })?)
}

async fn resend_verification(
    State(state): State<AppState>,
    me: SignedIn,
    CsrfForm(_): CsrfForm<csrf::NoFields>,
) -> PageResult {
    if me.user.email_verified_at.is_none() {
        let mut tx = state.db.begin().await?;
        manage::send_verification(&mut tx, &state, &me.user).await?;
        tx.commit().await?;
        state.mail_wake.notify_one();
    }
    web::flash(
        &me.session,
        "ok",
        format!(
            "A new confirmation link is on its way to {}.",
            me.user.email
        ),
    )
    .await?;
    Ok(see_other("/account/security"))
}

// ---- the password and sessions on the Security page ----

#[derive(Deserialize)]
struct PasswordForm {
    current_password: SecretString,
    new_password: SecretString,
    new_password_confirm: SecretString,
    /// Named apart from the second-factor card's field on the same page.
    password_otp: Option<String>,
}

async fn change_password_page(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    CsrfForm(form): CsrfForm<PasswordForm>,
) -> PageResult {
    let change = PasswordChange {
        current: form.current_password,
        new: form.new_password,
        confirm: form.new_password_confirm,
        otp: form.password_otp.as_deref(),
    };
    match manage::change_password(&state, &me.user, ip, Some(&me.session), None, change).await {
        Ok(()) => {
            web::flash(
                &me.session,
                "ok",
                "Password changed. Your other sessions and your API tokens have ended.",
            )
            .await?;
            Ok(see_other("/account/security"))
        }
        Err(mut err) if err.status.is_client_error() => {
            for e in &mut err.errors {
                if e.field == Some("otp") {
                    e.field = Some("password_otp");
                }
            }
            let status = err.status;
            super::second_factor_routes::render_security(&state, &me, None, status, err.into())
                .await
        }
        Err(err) => Err(err.into()),
    }
}

#[derive(Deserialize)]
struct PasswordRequest {
    current_password: SecretString,
    new_password: SecretString,
    otp: Option<String>,
}

/// Over the API the calling token goes on; every other token and every session ends.
async fn change_password_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ApiCredential(credential): ApiCredential,
    ip: ClientIp,
    Json(req): Json<PasswordRequest>,
) -> AppResult<StatusCode> {
    let token = match credential {
        Credential::Token(id) => Some(id),
        Credential::Session(_) => None,
    };
    let change = PasswordChange {
        current: req.current_password,
        confirm: req.new_password.clone(),
        new: req.new_password,
        otp: req.otp.as_deref(),
    };
    manage::change_password(&state, &user, ip, None, token, change).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn end_session_page(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    Path(id): Path<String>,
    CsrfForm(_): CsrfForm<csrf::NoFields>,
) -> PageResult {
    if !manage::end_session(&state, &me.user, ip, &id).await? {
        return Err(AppError::not_found("session").into());
    }
    web::flash(&me.session, "ok", "That session is signed out.").await?;
    Ok(see_other("/account/security#sessions"))
}

async fn end_all_page(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    CsrfForm(_): CsrfForm<csrf::NoFields>,
) -> PageResult {
    manage::sign_out_everywhere(&state, &me.user, ip).await?;
    me.session.flush().await?;
    Ok(see_other("/login"))
}

// ---- admins: disable, enable, reset a second factor ----

#[derive(Deserialize)]
struct OtpForm {
    otp: Option<String>,
}

/// After an admin's action on the Users page: a flash and back, or the page with the refusal.
async fn after_admin_action(
    state: &AppState,
    me: &SignedIn,
    result: AppResult<String>,
) -> PageResult {
    match result {
        Ok(message) => {
            web::flash(&me.session, "ok", message).await?;
            Ok(see_other("/admin/users"))
        }
        Err(err) if err.status.is_client_error() && err.status != StatusCode::FORBIDDEN => {
            let status = err.status;
            super::routes::render_users(state, me, None, status, err.into()).await
        }
        Err(err) => Err(err.into()),
    }
}

async fn set_disabled_page(
    state: AppState,
    me: SignedIn,
    ip: ClientIp,
    id: i64,
    disable: bool,
    otp: Option<String>,
) -> PageResult {
    let credential = Credential::Session(me.session.clone());
    let result = manage::set_disabled(
        &state,
        &me.user,
        &credential,
        ip,
        id,
        disable,
        otp.as_deref(),
    )
    .await
    .map(|u| {
        if disable {
            format!(
                "{} is disabled: its sessions and tokens have stopped.",
                u.email
            )
        } else {
            format!("{} is enabled again.", u.email)
        }
    });
    after_admin_action(&state, &me, result).await
}

async fn disable_page(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    Path(id): Path<i64>,
    CsrfForm(form): CsrfForm<OtpForm>,
) -> PageResult {
    set_disabled_page(state, me, ip, id, true, form.otp).await
}

async fn enable_page(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    Path(id): Path<i64>,
    CsrfForm(form): CsrfForm<OtpForm>,
) -> PageResult {
    set_disabled_page(state, me, ip, id, false, form.otp).await
}

fn reset_message(reset: Reset) -> &'static str {
    match reset {
        Reset::Requested => {
            "Asked for: another admin must approve the reset on this page before it takes effect."
        }
        Reset::Done => {
            "Second factor reset: its sessions and tokens have ended; a staff account enrols again through a mailed link."
        }
    }
}

async fn reset_second_factor_page(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    Path(id): Path<i64>,
    CsrfForm(form): CsrfForm<OtpForm>,
) -> PageResult {
    let credential = Credential::Session(me.session.clone());
    let result =
        manage::reset_second_factor(&state, &me.user, &credential, ip, id, form.otp.as_deref())
            .await
            .map(|r| reset_message(r).to_string());
    after_admin_action(&state, &me, result).await
}

#[derive(Deserialize, Default)]
struct OtpRequest {
    otp: Option<String>,
}

async fn set_disabled_api(
    state: AppState,
    user: super::User,
    credential: Credential,
    ip: ClientIp,
    id: i64,
    disable: bool,
    body: &[u8],
) -> AppResult<Response> {
    let req: OtpRequest = web::optional_json(body)?;
    let target = manage::set_disabled(
        &state,
        &user,
        &credential,
        ip,
        id,
        disable,
        req.otp.as_deref(),
    )
    .await?;
    Ok(Json(json!({
        "id": target.id,
        "email": target.email,
        "disabled_at": target.disabled_at.map(web::rfc3339),
    }))
    .into_response())
}

async fn disable_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ApiCredential(credential): ApiCredential,
    ip: ClientIp,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> AppResult<Response> {
    set_disabled_api(state, user, credential, ip, id, true, &body).await
}

async fn enable_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ApiCredential(credential): ApiCredential,
    ip: ClientIp,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> AppResult<Response> {
    set_disabled_api(state, user, credential, ip, id, false, &body).await
}

async fn reset_second_factor_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ApiCredential(credential): ApiCredential,
    ip: ClientIp,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> AppResult<Response> {
    let req: OtpRequest = web::optional_json(&body)?;
    let reset =
        manage::reset_second_factor(&state, &user, &credential, ip, id, req.otp.as_deref()).await?;
    let (status, state_word) = match reset {
        Reset::Requested => (StatusCode::ACCEPTED, "requested"),
        Reset::Done => (StatusCode::OK, "reset"),
    };
    Ok((
        status,
        Json(json!({"state": state_word, "message": reset_message(reset)})),
    )
        .into_response())
}
