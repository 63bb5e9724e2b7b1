//! Second-factor pages: the sign-in step after the password (a code, or enrolment with a QR
//! code for staff and admins who have none yet), and the account's security page (optional
//! enrolment for customers, new recovery codes).

use askama::Template;
use axum::{
    Router,
    extract::{Path, Query, State},
    http::StatusCode,
    routing::{get, post},
};
use serde::Deserialize;
use tower_sessions::Session;
use zeroize::Zeroizing;

use super::{
    SignedIn, User, Viewer,
    csrf::CsrfForm,
    extract::ClientIp,
    routes::{PENDING_KEY, PENDING_SECONDS, PendingSignIn, start_session},
    second_factor::{self, Accepted, Credential},
    store,
    totp::{self, TotpSecret},
};
use crate::{
    db,
    error::{AppError, AppResult},
    state::AppState,
    web::{self, Chrome, FormErrors, PageResult, filters, render, render_secret, see_other},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/login/second-factor",
            get(second_factor_page)
                .post(second_factor_submit)
                .layer(web::small_body()),
        )
        .route("/account/enrol/{token}", get(enrolment_link))
        .route("/account/security", get(security_page))
        .route("/account/security/enrol", post(enrol_submit))
        .route("/account/security/recovery-codes", post(new_codes_submit))
}

/// What an authenticator app needs to enrol: the QR code, and the same secret to type in. The
/// secret travels with the form (nothing is stored until a code from it is confirmed), and an
/// enrolment page shown again after a wrong code keeps the secret the app has scanned.
pub struct EnrolmentView {
    pub qr_svg: String,
    pub secret: Zeroizing<String>,
    pub uri: Zeroizing<String>,
}

impl EnrolmentView {
    fn new(shown: Option<&str>, email: &str) -> Self {
        let secret = shown
            .and_then(TotpSecret::from_base32)
            .unwrap_or_else(TotpSecret::generate);
        let uri = secret.otpauth_uri(email);
        Self {
            qr_svg: totp::qr_svg(&uri),
            secret: secret.base32(),
            uri,
        }
    }
}

#[derive(Template)]
#[template(path = "accounts/second_factor.html")]
struct SecondFactorPage {
    chrome: Chrome,
    email: String,
    next: String,
    enrolment: Option<EnrolmentView>,
    /// No authenticator yet, and this session did not come through the account's enrolment link.
    needs_link: bool,
    errors: FormErrors,
}

/// A raised account's one-time enrolment link: remembered in this browser's session, then on
/// to sign in with the password, after which the enrolment page opens.
async fn enrolment_link(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(token): Path<String>,
) -> PageResult {
    let Some(user_id) = second_factor::enrolment_link_user(&state.db, &token).await? else {
        return Err(AppError::new(
            StatusCode::NOT_FOUND,
            crate::error::ErrorItem::new(
                "enrolment_link_invalid",
                "This enrolment link is unknown, already used or expired (links work for 24 hours): ask an admin to send a new one.",
            ),
        )
        .into());
    };
    viewer
        .session
        .insert(
            second_factor::ENROLMENT_LINK_KEY,
            (user_id, crate::accounts::tokens::hash(&token)),
        )
        .await?;
    web::flash(
        &viewer.session,
        "ok",
        "Sign in with your password to set up your authenticator.",
    )
    .await?;
    Ok(see_other("/login"))
}

#[derive(Template)]
#[template(path = "accounts/recovery_codes.html")]
struct RecoveryCodesPage {
    chrome: Chrome,
    codes: Vec<Zeroizing<String>>,
    next: String,
}

/// The user whose password was right a moment ago, if the sign-in has not timed out.
async fn pending_user(state: &AppState, session: &Session) -> AppResult<Option<User>> {
    let pending = session.get::<PendingSignIn>(PENDING_KEY).await?;
    match pending {
        Some(p) if db::now() - p.at <= PENDING_SECONDS => {
            store::find_user(&state.db, p.user_id).await
        }
        _ => Ok(None),
    }
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

async fn render_step(
    state: &AppState,
    viewer: &Viewer,
    user: &User,
    next: &str,
    shown_secret: Option<&str>,
    status: StatusCode,
    errors: FormErrors,
) -> PageResult {
    let enrolled = second_factor::enabled_at(&state.db, user.id)
        .await?
        .is_some();
    let may_enrol =
        !enrolled && second_factor::opened_enrolment_link(&state.db, &viewer.session, user).await?;
    let enrolment = may_enrol.then(|| EnrolmentView::new(shown_secret, &user.email));
    render_secret(
        status,
        &SecondFactorPage {
            chrome: viewer.chrome().await?,
            email: user.email.clone(),
            next: next.to_string(),
            enrolment,
            needs_link: !enrolled && !may_enrol,
            errors,
        },
    )
    .map_err(Into::into)
}

async fn second_factor_page(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<NextQuery>,
) -> PageResult {
    let next = web::safe_next(q.next.as_deref());
    match pending_user(&state, &viewer.session).await? {
        Some(user) => {
            render_step(
                &state,
                &viewer,
                &user,
                next,
                None,
                StatusCode::OK,
                FormErrors::default(),
            )
            .await
        }
        None => Ok(see_other("/login")),
    }
}

#[derive(Deserialize)]
struct CodeForm {
    otp: String,
    next: Option<String>,
    /// The secret of an enrolment (from the enrolment page).
    secret: Option<String>,
}

async fn second_factor_submit(
    State(state): State<AppState>,
    viewer: Viewer,
    ip: ClientIp,
    CsrfForm(form): CsrfForm<CodeForm>,
) -> PageResult {
    let next = web::safe_next(form.next.as_deref()).to_string();
    let Some(user) = pending_user(&state, &viewer.session).await? else {
        web::flash(
            &viewer.session,
            "error",
            "Your sign-in timed out; enter your password again.",
        )
        .await?;
        return Ok(see_other("/login"));
    };
    let enrolled = second_factor::enabled_at(&state.db, user.id)
        .await?
        .is_some();
    let result = if enrolled {
        second_factor::verify(&state, &user, ip, &form.otp)
            .await
            .map(|how| (how, Vec::new()))
    } else if second_factor::opened_enrolment_link(&state.db, &viewer.session, &user).await? {
        let secret = form.secret.as_deref().unwrap_or("");
        second_factor::confirm_enrolment(&state, &user, ip, secret, &form.otp)
            .await
            .map(|codes| (Accepted::Totp, codes))
    } else {
        Err(second_factor::enrolment_link_required())
    };
    match result {
        Ok((how, codes)) => {
            start_session(&viewer.session, &user, Some(db::now()), ip).await?;
            if !codes.is_empty() {
                // Enrolled just now: the recovery codes are shown this once.
                let chrome = Chrome::new(&viewer.session, Some(&user), None, viewer.vault).await?;
                return show_codes(chrome, codes, &next);
            }
            if let Accepted::RecoveryCode { remaining } = how {
                web::flash(
                    &viewer.session,
                    "ok",
                    format!(
                        "Signed in with a recovery code; {remaining} left. Make new ones on your Security page if you are running low."
                    ),
                )
                .await?;
            }
            Ok(see_other(&next))
        }
        Err(err) if err.status.is_client_error() => {
            let status = err.status;
            let shown = form.secret.as_deref();
            render_step(&state, &viewer, &user, &next, shown, status, err.into()).await
        }
        Err(err) => Err(err.into()),
    }
}

#[derive(Template)]
#[template(path = "accounts/security.html")]
struct SecurityPage {
    chrome: Chrome,
    enabled_at: Option<i64>,
    remaining_codes: i64,
    enrolment: Option<EnrolmentView>,
    required: bool,
    email: String,
    email_verified: bool,
    sessions: Vec<super::manage::SessionInfo>,
    errors: FormErrors,
}

/// The Security page: second factor, email address, password, sessions.
pub(super) async fn render_security(
    state: &AppState,
    me: &SignedIn,
    shown_secret: Option<&str>,
    status: StatusCode,
    errors: FormErrors,
) -> PageResult {
    let enabled_at = second_factor::enabled_at(&state.db, me.user.id).await?;
    let enrolment = match enabled_at {
        Some(_) => None,
        None => Some(EnrolmentView::new(shown_secret, &me.user.email)),
    };
    let remaining_codes: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL",
    )
    .bind(me.user.id)
    .fetch_one(&state.db)
    .await?;
    render_secret(
        status,
        &SecurityPage {
            chrome: me.chrome().await?,
            enabled_at,
            remaining_codes,
            enrolment,
            required: me.user.role.is_staff(),
            email: me.user.email.clone(),
            email_verified: me.user.email_verified_at.is_some(),
            sessions: super::manage::sessions(&state.db, &me.user, &me.session).await?,
            errors,
        },
    )
    .map_err(Into::into)
}

async fn security_page(State(state): State<AppState>, me: SignedIn) -> PageResult {
    render_security(&state, &me, None, StatusCode::OK, FormErrors::default()).await
}

#[derive(Deserialize)]
struct OtpForm {
    otp: String,
    secret: Option<String>,
}

fn show_codes(chrome: Chrome, codes: Vec<Zeroizing<String>>, next: &str) -> PageResult {
    Ok(render(&RecoveryCodesPage {
        chrome,
        codes,
        next: next.to_string(),
    })?)
}

/// A customer (or anyone without one yet) sets up an authenticator from the account page.
async fn enrol_submit(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    CsrfForm(form): CsrfForm<OtpForm>,
) -> PageResult {
    let secret = form.secret.as_deref().unwrap_or("");
    match second_factor::confirm_enrolment(&state, &me.user, ip, secret, &form.otp).await {
        Ok(codes) => {
            second_factor::mark_fresh(&state, &Credential::Session(me.session.clone()), db::now())
                .await?;
            show_codes(me.chrome().await?, codes, "/account/security")
        }
        Err(err) if err.status.is_client_error() => {
            let status = err.status;
            render_security(&state, &me, form.secret.as_deref(), status, err.into()).await
        }
        Err(err) => Err(err.into()),
    }
}

/// Replaces the recovery codes (the old ones stop working), after a fresh second factor.
async fn new_codes_submit(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    CsrfForm(form): CsrfForm<OtpForm>,
) -> PageResult {
    let credential = Credential::Session(me.session.clone());
    let result = async {
        if second_factor::enabled_at(&state.db, me.user.id)
            .await?
            .is_none()
        {
            return Err(AppError::conflict(
                "not_enrolled",
                "Set up an authenticator first; recovery codes come with it.",
            ));
        }
        second_factor::require_fresh(&state, &me.user, &credential, ip, Some(&form.otp)).await?;
        second_factor::replace_recovery_codes(&state, &me.user, ip).await
    }
    .await;
    match result {
        Ok(codes) => show_codes(me.chrome().await?, codes, "/account/security"),
        Err(err) if err.status.is_client_error() => {
            let status = err.status;
            render_security(&state, &me, None, status, err.into()).await
        }
        Err(err) => Err(err.into()),
    }
}
