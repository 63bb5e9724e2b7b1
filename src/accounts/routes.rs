//! Sign-up, sign-in and sign-out pages, API tokens (page and JSON), and the admin's user list.

use askama::Template;
use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use tower_sessions::Session;

use super::{
    ApiUser, Role, SignedIn, User, Viewer, csrf,
    csrf::CsrfForm,
    extract::{ClientIp, USER_KEY},
    normalize_email, password, roles,
    second_factor::{self, SESSION_FACTOR_AT},
    store, tokens,
};
use crate::{
    audit::{self, Entry},
    db::Page,
    error::{AppError, AppResult, ErrorItem},
    state::AppState,
    web::{self, Chrome, FormErrors, PageResult, filters, render, render_status, see_other},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/signup",
            get(signup_page).post(signup).layer(web::small_body()),
        )
        .route(
            "/login",
            get(login_page).post(login).layer(web::small_body()),
        )
        .route("/logout", post(logout))
        .route("/account/tokens", get(tokens_page).post(create_token_page))
        .route("/account/tokens/{id}/revoke", post(revoke_token_page))
        .route("/admin/users", get(users_page))
        .route("/admin/users/{id}/role", post(change_role))
        .route(
            "/api/v1/tokens",
            post(create_token_api)
                .layer(web::small_body())
                .get(list_tokens_api),
        )
        .route("/api/v1/tokens/{id}", delete(revoke_token_api))
}

fn bad_credentials() -> AppError {
    AppError::new(
        StatusCode::UNAUTHORIZED,
        ErrorItem::new(
            "bad_credentials",
            "Email or password is wrong. Check both and try again.",
        ),
    )
}

/// Checks a password for an email, rate limited, with the same work and answer whether or not
/// the account exists.
async fn authenticate(
    state: &AppState,
    ip: ClientIp,
    email: &str,
    password: SecretString,
) -> AppResult<User> {
    super::bounded_credentials(email, password.expose_secret())?;
    let ip_addr = ip.0.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
    let email = email.trim().to_lowercase();
    state.login_limiter.check(ip_addr, &email)?;
    let found = store::find_credentials(&state.db, &email).await?;
    let (user, hash) = match found {
        Some((user, hash)) => (Some(user), Some(hash)),
        None => (None, None),
    };
    let ok = password::verify(hash, password).await?;
    match (ok, user) {
        (true, Some(user)) if user.disabled_at.is_some() => {
            audit::record(
                &state.db,
                Entry::new(Some(&user), "user.login", "user", user.id)
                    .outcome("refused")
                    .detail(json!({"code": "account_disabled"}))
                    .ip(ip.0),
            )
            .await?;
            Err(super::manage::disabled())
        }
        (true, Some(user)) => {
            state.login_limiter.succeeded(ip_addr, &email);
            audit::record(
                &state.db,
                Entry::new(Some(&user), "user.login", "user", user.id).ip(ip.0),
            )
            .await?;
            Ok(user)
        }
        _ => {
            state.login_limiter.failed(ip_addr, &email);
            audit::record(
                &state.db,
                Entry::new(None, "user.login", "user", &email)
                    .outcome("refused")
                    .ip(ip.0),
            )
            .await?;
            Err(bad_credentials())
        }
    }
}

/// Starts a signed-in session under a new id (no fixation) with a new CSRF token; with the
/// time of the second factor that completed the sign-in, when there was one.
pub(super) async fn start_session(
    session: &Session,
    user: &User,
    second_factor_at: Option<i64>,
    ip: ClientIp,
) -> AppResult<()> {
    session.cycle_id().await?;
    session.remove::<PendingSignIn>(PENDING_KEY).await?;
    session.insert(USER_KEY, user.id).await?;
    super::manage::mark_session(session, user, ip).await?;
    if let Some(at) = second_factor_at {
        session.insert(SESSION_FACTOR_AT, at).await?;
    }
    csrf::renew(session).await?;
    Ok(())
}

/// A password that was right, waiting for its second factor (or for enrolment of one).
#[derive(Clone, Copy, Debug, serde::Serialize, Deserialize)]
pub(super) struct PendingSignIn {
    pub user_id: i64,
    pub at: i64,
}

pub(super) const PENDING_KEY: &str = "pending_sign_in";
/// How long a right password waits for its second factor.
pub(super) const PENDING_SECONDS: i64 = 600;

/// After the password: sign in at once, or ask for the second factor first (always for staff
/// and admins, who must enrol one if they have none; for customers who chose one).
async fn after_password(
    session: &Session,
    state: &AppState,
    user: &User,
    ip: ClientIp,
    next: &str,
) -> PageResult {
    if second_factor::needed(&state.db, user).await? == second_factor::Need::Nothing {
        start_session(session, user, None, ip).await?;
        return Ok(see_other(next));
    }
    session.cycle_id().await?;
    // Half signed in is signed in as nobody: whoever this session was before is forgotten.
    session.remove::<i64>(USER_KEY).await?;
    session.remove::<i64>(SESSION_FACTOR_AT).await?;
    session
        .insert(
            PENDING_KEY,
            PendingSignIn {
                user_id: user.id,
                at: crate::db::now(),
            },
        )
        .await?;
    let next: String = url::form_urlencoded::byte_serialize(next.as_bytes()).collect();
    Ok(see_other(&format!("/login/second-factor?next={next}")))
}

#[derive(Template)]
#[template(path = "accounts/login.html")]
struct LoginPage {
    chrome: Chrome,
    email: String,
    next: String,
    errors: FormErrors,
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

async fn login_page(viewer: Viewer, Query(q): Query<NextQuery>) -> PageResult {
    if viewer.user.is_some() {
        return Ok(see_other(web::safe_next(q.next.as_deref())));
    }
    Ok(render(&LoginPage {
        chrome: viewer.chrome().await?,
        email: String::new(),
        next: web::safe_next(q.next.as_deref()).to_string(),
        errors: FormErrors::default(),
    })?)
}

#[derive(Deserialize)]
struct LoginForm {
    email: String,
    password: SecretString,
    next: Option<String>,
}

async fn login(
    State(state): State<AppState>,
    viewer: Viewer,
    ip: ClientIp,
    CsrfForm(form): CsrfForm<LoginForm>,
) -> PageResult {
    match authenticate(&state, ip, &form.email, form.password).await {
        Ok(user) => {
            after_password(
                &viewer.session,
                &state,
                &user,
                ip,
                web::safe_next(form.next.as_deref()),
            )
            .await
        }
        Err(err) if err.status.is_client_error() => {
            let (status, retry_after) = (err.status, err.retry_after);
            let page = render_status(
                status,
                &LoginPage {
                    chrome: viewer.chrome().await?,
                    email: super::shown_email(form.email),
                    next: web::safe_next(form.next.as_deref()).to_string(),
                    errors: err.into(),
                },
            )?;
            Ok(web::with_retry_after(page, retry_after))
        }
        Err(err) => Err(err.into()),
    }
}

async fn logout(viewer: Viewer, CsrfForm(_): CsrfForm<csrf::NoFields>) -> PageResult {
    viewer.session.flush().await?;
    Ok(see_other("/login"))
}

#[derive(Template)]
#[template(path = "accounts/signup.html")]
struct SignupPage {
    chrome: Chrome,
    email: String,
    errors: FormErrors,
}

async fn signup_page(viewer: Viewer) -> PageResult {
    if viewer.user.is_some() {
        return Ok(see_other("/apps"));
    }
    Ok(render(&SignupPage {
        chrome: viewer.chrome().await?,
        email: String::new(),
        errors: FormErrors::default(),
    })?)
}

#[derive(Deserialize)]
struct SignupForm {
    email: String,
    password: SecretString,
    password_confirm: SecretString,
}

async fn signup(
    State(state): State<AppState>,
    viewer: Viewer,
    ip: ClientIp,
    CsrfForm(form): CsrfForm<SignupForm>,
) -> PageResult {
    // Nothing unbounded reaches zxcvbn, argon2 or the page.
    let result =
        if let Err(err) = super::bounded_credentials(&form.email, form.password.expose_secret()) {
            Err(err)
        } else {
            let mut errors = Vec::new();
            let email = normalize_email(&form.email)
                .map_err(|m| errors.push(ErrorItem::new("invalid_email", m).on("email")))
                .ok();
            if let Err(m) = super::check_new_password(form.password.expose_secret(), &form.email) {
                errors.push(ErrorItem::new("weak_password", m).on("password"));
            } else if form.password.expose_secret() != form.password_confirm.expose_secret() {
                errors.push(
                    ErrorItem::new(
                        "password_mismatch",
                        "The two passwords differ; type the same one twice.",
                    )
                    .on("password_confirm"),
                );
            }
            match (email, errors.is_empty()) {
                (Some(email), true) => {
                    let ip_addr = ip.0.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
                    match state.login_limiter.check(ip_addr, &email) {
                        Ok(()) => create_customer(&state, &email, form.password, ip).await,
                        Err(e) => Err(e),
                    }
                }
                _ => Err(AppError::many(StatusCode::UNPROCESSABLE_ENTITY, errors)),
            }
        };
    match result {
        Ok(user) => {
            start_session(&viewer.session, &user, None, ip).await?;
            web::flash(
                &viewer.session,
                "ok",
                "Welcome to certdrop. Create your first app to begin.",
            )
            .await?;
            Ok(see_other("/apps"))
        }
        Err(mut err) if err.status.is_client_error() => {
            for e in &mut err.errors {
                if e.code == "email_taken" {
                    e.field = Some("email");
                }
            }
            let status = err.status;
            Ok(render_status(
                status,
                &SignupPage {
                    chrome: viewer.chrome().await?,
                    email: super::shown_email(form.email),
                    errors: err.into(),
                },
            )?)
        }
        Err(err) => Err(err.into()),
    }
}

async fn create_customer(
    state: &AppState,
    email: &str,
    pw: SecretString,
    ip: ClientIp,
) -> AppResult<User> {
    let hash = password::hash(pw).await?;
    // The account, its confirmation mail and its audit entry together, or none of them.
    let mut tx = state.db.begin().await?;
    let user = store::create_user(&mut *tx, email, &hash, Role::Customer, false).await?;
    super::manage::send_verification(&mut tx, state, &user).await?;
    audit::record(
        &mut *tx,
        Entry::new(Some(&user), "user.signup", "user", user.id)
            .detail(json!({"role": "customer"}))
            .ip(ip.0),
    )
    .await?;
    tx.commit().await?;
    state.mail_wake.notify_one();
    Ok(user)
}

#[derive(Template)]
#[template(path = "accounts/tokens.html")]
struct TokensPage {
    chrome: Chrome,
    tokens: Vec<store::ApiToken>,
    new_token: Option<String>,
    errors: FormErrors,
    /// Staff and admins give a code to create a token.
    asks_code: bool,
}

async fn tokens_page(State(state): State<AppState>, me: SignedIn) -> PageResult {
    Ok(render(&TokensPage {
        chrome: me.chrome().await?,
        tokens: store::list_tokens(&state.db, me.user.id).await?,
        new_token: None,
        errors: FormErrors::default(),
        asks_code: me.user.role.is_staff(),
    })?)
}

#[derive(Deserialize)]
struct TokenForm {
    name: String,
    expires_in_days: Option<i64>,
    otp: Option<String>,
}

fn token_name(raw: &str) -> AppResult<String> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 80 {
        return Err(AppError::unprocessable(
            ErrorItem::new(
                "invalid_name",
                "Name the token (1 to 80 characters), e.g. \"laptop CLI\".",
            )
            .on("name"),
        ));
    }
    Ok(name.to_string())
}

/// How long a token lives unless asked otherwise, and at most.
pub const DEFAULT_TOKEN_DAYS: i64 = 90;
pub const MAX_TOKEN_DAYS: i64 = 365;

/// A token's lifetime in days, as asked (1 to 365; 90 when not said).
fn token_days(asked: Option<i64>) -> AppResult<i64> {
    match asked {
        None => Ok(DEFAULT_TOKEN_DAYS),
        Some(days) if (1..=MAX_TOKEN_DAYS).contains(&days) => Ok(days),
        Some(_) => Err(AppError::unprocessable(
            ErrorItem::new(
                "invalid_expiry",
                format!("A token lives from 1 to {MAX_TOKEN_DAYS} days; ask for fewer."),
            )
            .on("expires_in_days"),
        )),
    }
}

/// Issues a token for `days`; `second_factor_at` is when the caller last proved a second
/// factor, which staff and admin tokens need.
async fn issue_token(
    state: &AppState,
    user: &User,
    name: &str,
    ip: ClientIp,
    second_factor_at: Option<i64>,
    days: i64,
) -> AppResult<(tokens::NewToken, store::ApiToken)> {
    let token = tokens::generate();
    let expires_at = crate::db::now() + days * 86400;
    let row = store::insert_token(
        &state.db,
        user.id,
        name,
        &token,
        second_factor_at,
        expires_at,
    )
    .await?;
    audit::record(
        &state.db,
        Entry::new(Some(user), "token.created", "api_token", row.id)
            .detail(json!({"name": name, "hint": row.hint, "expires_at": expires_at}))
            .ip(ip.0),
    )
    .await?;
    Ok((token, row))
}

/// The new token is rendered straight into the response, never stored in the session.
async fn create_token_page(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    CsrfForm(form): CsrfForm<TokenForm>,
) -> PageResult {
    let issued = async {
        let name = token_name(&form.name)?;
        let days = token_days(form.expires_in_days)?;
        // A staff or admin token acts with their powers for months: it takes a code now, as
        // over the API, not just a signed-in browser.
        let factor_at = if me.user.role.is_staff() {
            second_factor::verify_given(
                &state,
                &me.user,
                ip,
                form.otp.as_deref(),
                "A staff or admin token takes the current code from your authenticator app: enter it with the token's name.",
            )
            .await?;
            let now = crate::db::now();
            let credential = second_factor::Credential::Session(me.session.clone());
            second_factor::mark_fresh(&state, &credential, now).await?;
            Some(now)
        } else {
            me.session.get::<i64>(SESSION_FACTOR_AT).await?
        };
        issue_token(&state, &me.user, &name, ip, factor_at, days).await
    }
    .await;
    let (new_token, errors, status) = match issued {
        Ok((token, _)) => (
            Some(token.secret.expose_secret().to_string()),
            FormErrors::default(),
            StatusCode::CREATED,
        ),
        Err(err) if err.status.is_client_error() => {
            let status = err.status;
            (None, err.into(), status)
        }
        Err(err) => return Err(err.into()),
    };
    Ok(render_status(
        status,
        &TokensPage {
            chrome: me.chrome().await?,
            tokens: store::list_tokens(&state.db, me.user.id).await?,
            new_token,
            errors,
            asks_code: me.user.role.is_staff(),
        },
    )?)
}

async fn revoke_token_page(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    Path(id): Path<i64>,
    CsrfForm(_): CsrfForm<csrf::NoFields>,
) -> PageResult {
    revoke(&state, &me.user, id, ip).await?;
    web::flash(
        &me.session,
        "ok",
        "Token revoked. Anything using it must sign in again.",
    )
    .await?;
    Ok(see_other("/account/tokens"))
}

async fn revoke(state: &AppState, user: &User, id: i64, ip: ClientIp) -> AppResult<()> {
    if !store::revoke_token(&state.db, user.id, id).await? {
        return Err(AppError::not_found("token"));
    }
    audit::record(
        &state.db,
        Entry::new(Some(user), "token.revoked", "api_token", id).ip(ip.0),
    )
    .await
}

#[derive(Deserialize)]
struct CreateTokenRequest {
    email: String,
    password: SecretString,
    otp: Option<String>,
    name: Option<String>,
    /// 1 to 365; 90 when not given.
    expires_in_days: Option<i64>,
}

/// The second factor a token request must carry: none for a customer without one; a code
/// (or recovery code) for everyone else. Returns when it was proved.
async fn token_second_factor(
    state: &AppState,
    user: &User,
    ip: ClientIp,
    otp: Option<&str>,
) -> AppResult<Option<i64>> {
    match second_factor::needed(&state.db, user).await? {
        second_factor::Need::Nothing => Ok(None),
        second_factor::Need::Enrolment => Err(second_factor::otp_required(
            "Staff and admin accounts need a second factor: open the enrolment link mailed to you when you were given your role, set up your authenticator in the browser, then create tokens with its code.",
        )),
        second_factor::Need::Code => {
            second_factor::verify_given(
                state,
                user,
                ip,
                otp,
                "This account signs in with a second factor: send the current code from your authenticator app as \"otp\".",
            )
            .await?;
            Ok(Some(crate::db::now()))
        }
    }
}

async fn create_token_api(
    State(state): State<AppState>,
    ip: ClientIp,
    Json(req): Json<CreateTokenRequest>,
) -> AppResult<Response> {
    let user = authenticate(&state, ip, &req.email, req.password).await?;
    let factor_at = token_second_factor(&state, &user, ip, req.otp.as_deref()).await?;
    let name = token_name(req.name.as_deref().unwrap_or("API token"))?;
    let days = token_days(req.expires_in_days)?;
    let (token, row) = issue_token(&state, &user, &name, ip, factor_at, days).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "token": token.secret.expose_secret(),
            "id": row.id,
            "name": row.name,
            "expires_at": row.expires_at,
            "email": user.email,
            "role": user.role,
        })),
    )
        .into_response())
}

async fn list_tokens_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
) -> AppResult<Response> {
    let items = store::list_tokens(&state.db, user.id).await?;
    Ok(Json(json!({"items": items, "next_cursor": null})).into_response())
}

async fn revoke_token_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ip: ClientIp,
    Path(id): Path<i64>,
) -> AppResult<StatusCode> {
    revoke(&state, &user, id, ip).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Template)]
#[template(path = "admin/users.html")]
struct UsersPage {
    chrome: Chrome,
    users: Vec<User>,
    requests: Vec<(i64, roles::RoleRequest)>,
    /// Second-factor resets waiting for another admin: user id, who asked.
    resets: Vec<(i64, String)>,
    me: i64,
    next_cursor: Option<String>,
    separation_of_duties: bool,
    errors: FormErrors,
}

impl UsersPage {
    fn reset_asked_by(&self, user_id: &i64) -> Option<&str> {
        self.resets
            .iter()
            .find(|(id, _)| id == user_id)
            .map(|(_, by)| by.as_str())
    }

    fn request_for(&self, user_id: &i64) -> Option<&roles::RoleRequest> {
        self.requests
            .iter()
            .find(|(id, _)| id == user_id)
            .map(|(_, r)| r)
    }
}

#[derive(Deserialize)]
struct CursorQuery {
    cursor: Option<String>,
}

pub(super) async fn render_users(
    state: &AppState,
    me: &SignedIn,
    cursor: Option<&str>,
    status: StatusCode,
    errors: FormErrors,
) -> PageResult {
    me.user.require_admin()?;
    let (users, next_cursor) = store::list_users(&state.db, Page::new(cursor, None)?).await?;
    Ok(render_status(
        status,
        &UsersPage {
            chrome: me.chrome().await?,
            users,
            requests: roles::pending_requests(&state.db).await?,
            resets: super::manage::pending_resets(&state.db).await?,
            me: me.user.id,
            next_cursor,
            separation_of_duties: state.config.separation_of_duties,
            errors,
        },
    )?)
}

async fn users_page(
    State(state): State<AppState>,
    me: SignedIn,
    Query(q): Query<CursorQuery>,
) -> PageResult {
    render_users(
        &state,
        &me,
        q.cursor.as_deref(),
        StatusCode::OK,
        FormErrors::default(),
    )
    .await
}

#[derive(Deserialize)]
struct RoleForm {
    role: String,
    otp: Option<String>,
}

/// Lowers a role at once; raising one waits for a second admin (see `roles`). Either way it
/// needs a second factor from the last ten minutes.
async fn change_role(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    Path(id): Path<i64>,
    CsrfForm(form): CsrfForm<RoleForm>,
) -> PageResult {
    me.user.require_admin()?;
    let role = Role::parse(&form.role).ok_or_else(|| {
        AppError::bad_request("invalid_role", "A role is customer, staff or admin.")
    })?;
    let credential = second_factor::Credential::Session(me.session.clone());
    let result = async {
        second_factor::require_fresh(&state, &me.user, &credential, ip, form.otp.as_deref())
            .await?;
        roles::change(&state, &me.user, ip.0, id, role).await
    }
    .await;
    let message = match result {
        Ok(roles::RoleChange::Applied { to, .. }) => format!("Role changed to {}.", to.as_str()),
        Ok(roles::RoleChange::Requested { to }) => format!(
            "Asked for the role {}: another admin must approve it on this page before it takes effect.",
            to.as_str()
        ),
        Err(err) if err.status.is_client_error() && err.status != StatusCode::FORBIDDEN => {
            let status = err.status;
            return render_users(&state, &me, None, status, err.into()).await;
        }
        Err(err) => return Err(err.into()),
    };
    web::flash(&me.session, "ok", message).await?;
    Ok(see_other("/admin/users"))
}
