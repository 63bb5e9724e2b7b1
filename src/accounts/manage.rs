//! What a person does with an account over its life, and what admins do to others': change a
//! password, reset a forgotten one by a mailed single-use link, prove an email address, see and
//! end sessions; disable and enable an account, reset a second factor (two admins). Every change
//! that should end other sessions moves the account's session epoch on: a session carries the
//! epoch it was signed in under and counts only while it is the account's, on every instance at
//! once. Each action runs in one transaction with its audit entry and mail.

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::json;
use sqlx::Row;
use tower_sessions::Session;

use super::{User, extract::ClientIp, password, second_factor, store, tokens};
use crate::{
    audit::{self, Entry},
    db::{self, Db},
    error::{AppError, AppResult, ErrorItem},
    mail::{self, Mail},
    state::AppState,
};

/// The session key holding the account's session epoch at sign-in.
pub const SESSION_EPOCH_KEY: &str = "session_epoch";
/// When and from where a session signed in, for the account's list of sessions.
pub const SESSION_SIGNED_IN_KEY: &str = "signed_in";

/// How long a password-reset link works.
pub const RESET_SECONDS: i64 = 3600;

/// Records in a new signed-in session what the list of sessions shows and what keeps it valid.
pub async fn mark_session(session: &Session, user: &User, ip: ClientIp) -> AppResult<()> {
    session
        .insert(SESSION_EPOCH_KEY, user.session_epoch)
        .await?;
    let from = ip.0.map(|ip| ip.to_string()).unwrap_or_default();
    session
        .insert(SESSION_SIGNED_IN_KEY, (db::now(), from))
        .await?;
    Ok(())
}

/// Whether a session still counts for `user`: not disabled, and signed in under the account's
/// current epoch.
pub async fn session_counts(session: &Session, user: &User) -> AppResult<bool> {
    let epoch = session.get::<i64>(SESSION_EPOCH_KEY).await?.unwrap_or(0);
    Ok(user.disabled_at.is_none() && epoch == user.session_epoch)
}

/// 403 `account_disabled`.
pub fn disabled() -> AppError {
    AppError::new(
        axum::http::StatusCode::FORBIDDEN,
        ErrorItem::new(
            "account_disabled",
            "This account is disabled. Ask an admin of this certdrop installation to enable it.",
        ),
    )
}

/// Ends every other session of `user` and every API token but `keep_token`, in the caller's
/// transaction: the epoch moves on (so sessions on every instance stop at their next request)
/// and their rows go. Returns the new epoch.
async fn end_others(
    conn: &mut sqlx::AnyConnection,
    user_id: i64,
    keep_session: Option<&str>,
    keep_token: Option<i64>,
) -> AppResult<i64> {
    let epoch: i64 = sqlx::query_scalar(
        "UPDATE users SET session_epoch = session_epoch + 1 WHERE id = $1 RETURNING session_epoch",
    )
    .bind(user_id)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND id <> $2")
        .bind(user_id)
        .bind(keep_session.unwrap_or(""))
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE api_tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL AND id <> $3",
    )
    .bind(db::now())
    .bind(user_id)
    .bind(keep_token.unwrap_or(0))
    .execute(&mut *conn)
    .await?;
    Ok(epoch)
}

/// The stored key of the session `session` (its id's hash), if it is stored.
fn session_key(session: &Session) -> Option<String> {
    session.id().map(|id| tokens::hash(&id.to_string()))
}

/// Checks a new password and its confirmation.
fn new_password(new: &SecretString, confirm: &SecretString, email: &str) -> AppResult<()> {
    if let Err(m) = super::check_new_password(new.expose_secret(), email) {
        return Err(AppError::unprocessable(
            ErrorItem::new("weak_password", m).on("new_password"),
        ));
    }
    if new.expose_secret() != confirm.expose_secret() {
        return Err(AppError::unprocessable(
            ErrorItem::new(
                "password_mismatch",
                "The two new passwords differ; type the same one twice.",
            )
            .on("new_password_confirm"),
        ));
    }
    Ok(())
}

fn password_mail(user: &User, state: &AppState, what: &str) -> Mail {
    Mail {
        to: user.email.clone(),
        subject: "certdrop: your password was changed".into(),
        paragraphs: vec![
            format!(
                "The password of your certdrop account {} was {what}. Every other browser session and every API token of the account was ended.",
                user.email
            ),
            "If this was not you, reset your password at once from the sign-in page and tell your certdrop administrators.".into(),
        ],
        link: Some((format!("{}login", state.base_url), "Sign in".into())),
    }
}

/// What a change of password needs: the current password, a second factor when the account
/// has one, and a new password.
pub struct PasswordChange<'a> {
    pub current: SecretString,
    pub new: SecretString,
    pub confirm: SecretString,
    pub otp: Option<&'a str>,
}

/// Changes `user`'s password. Every other session and API token of the account ends; the
/// caller's own session (`session`) or token (`token`) goes on. The owner is mailed.
pub async fn change_password(
    state: &AppState,
    user: &User,
    ip: ClientIp,
    session: Option<&Session>,
    token: Option<i64>,
    change: PasswordChange<'_>,
) -> AppResult<()> {
    super::bounded_credentials(&user.email, change.current.expose_secret())?;
    super::bounded_credentials(&user.email, change.new.expose_secret())?;
    let limit_ip = ip.0.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
    let limit_key = format!("password-change:{}", user.email);
    state.login_limiter.check(limit_ip, &limit_key)?;
    let (_, hash) = store::find_credentials(&state.db, &user.email)
        .await?
        .ok_or_else(AppError::unauthorized)?;
    if !password::verify(Some(hash), change.current).await? {
        state.login_limiter.failed(limit_ip, &limit_key);
        return Err(AppError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            ErrorItem::new(
                "bad_credentials",
                "That is not your current password. Type it again (or sign out and use “Forgot your password?”).",
            )
            .on("current_password"),
        ));
    }
    if second_factor::enabled_at(&state.db, user.id)
        .await?
        .is_some()
    {
        second_factor::verify_given(
            state,
            user,
            ip,
            change.otp,
            "Changing the password of an account with a second factor takes the current code from your authenticator app.",
        )
        .await?;
    }
    new_password(&change.new, &change.confirm, &user.email)?;
    let hash = password::hash(change.new).await?;
    let keep = session.and_then(session_key);
    let mut tx = state.db.begin().await?;
    sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
        .bind(&hash)
        .bind(user.id)
        .execute(&mut *tx)
        .await?;
    let epoch = end_others(&mut tx, user.id, keep.as_deref(), token).await?;
    audit::record(
        &mut *tx,
        Entry::new(Some(user), "user.password_changed", "user", user.id).ip(ip.0),
    )
    .await?;
    mail::enqueue(
        &mut tx,
        &format!("user:{}:password_changed:{epoch}", user.id),
        &password_mail(user, state, "changed"),
    )
    .await?;
    tx.commit().await?;
    state.login_limiter.succeeded(limit_ip, &limit_key);
    if let Some(session) = session {
        session.insert(SESSION_EPOCH_KEY, epoch).await?;
    }
    state.mail_wake.notify_one();
    Ok(())
}

/// Mails a single-use link (an hour) to reset the password of the account at `email`, if there
/// is one that is not disabled. Says nothing either way: the caller answers the same.
pub async fn request_reset(state: &AppState, ip: ClientIp, email: &str) -> AppResult<()> {
    let Ok(email) = super::normalize_email(email) else {
        return Ok(());
    };
    let limit_ip = ip.0.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
    let limit_key = format!("password-reset:{email}");
    state.login_limiter.check(limit_ip, &limit_key)?;
    // Counted as a failure so that asking again and again from one place backs off.
    state.login_limiter.failed(limit_ip, &limit_key);
    let Some(user) = store::find_user_by_email(&state.db, &email).await? else {
        return Ok(());
    };
    if user.disabled_at.is_some() {
        return Ok(());
    }
    let token = tokens::generate();
    let mut tx = state.db.begin().await?;
    sqlx::query("UPDATE users SET reset_token_hash = $1, reset_expires_at = $2 WHERE id = $3")
        .bind(&token.hash)
        .bind(db::now() + RESET_SECONDS)
        .bind(user.id)
        .execute(&mut *tx)
        .await?;
    let link = format!(
        "{}password/reset/{}",
        state.base_url,
        token.secret.expose_secret()
    );
    let mail = Mail {
        to: user.email.clone(),
        subject: "certdrop: reset your password".into(),
        paragraphs: vec![
            format!(
                "Someone asked to reset the password of the certdrop account {}. Open the link below within an hour to choose a new one; it works once.",
                user.email
            ),
            "If it was not you, ignore this mail: your password stays as it is.".into(),
        ],
        link: Some((link, "Choose a new password".into())),
    };
    mail::enqueue(
        &mut tx,
        &format!("user:{}:reset:{}", user.id, token.hash),
        &mail,
    )
    .await?;
    audit::record(
        &mut *tx,
        Entry::new(None, "user.password_reset_requested", "user", user.id).ip(ip.0),
    )
    .await?;
    tx.commit().await?;
    state.mail_wake.notify_one();
    Ok(())
}

fn reset_link_invalid() -> AppError {
    AppError::new(
        axum::http::StatusCode::NOT_FOUND,
        ErrorItem::new(
            "reset_link_invalid",
            "This password-reset link is unknown, already used or expired (links work for an hour): ask for a new one from the sign-in page.",
        ),
    )
}

/// The account a reset link's token opens, while it is valid.
pub async fn reset_link_user(db: &Db, token: &str) -> AppResult<User> {
    let id: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM users WHERE reset_token_hash = $1 AND reset_expires_at > $2 AND disabled_at IS NULL",
    )
    .bind(tokens::hash(token))
    .bind(db::now())
    .fetch_optional(db)
    .await?;
    match id {
        Some(id) => store::find_user(db, id)
            .await?
            .ok_or_else(reset_link_invalid),
        None => Err(reset_link_invalid()),
    }
}

/// Sets a new password through a reset link (once): every session and token of the account
/// ends, the address counts as proved, and a staff account still gives its second factor at
/// the next sign-in (nothing here signs anyone in).
pub async fn reset_password(
    state: &AppState,
    ip: ClientIp,
    token: &str,
    new: SecretString,
    confirm: SecretString,
) -> AppResult<User> {
    let user = reset_link_user(&state.db, token).await?;
    super::bounded_credentials(&user.email, new.expose_secret())?;
    new_password(&new, &confirm, &user.email)?;
    let hash = password::hash(new).await?;
    let mut tx = state.db.begin().await?;
    let done = sqlx::query(
        "UPDATE users SET password_hash = $1, reset_token_hash = NULL, reset_expires_at = NULL, \
         email_verified_at = COALESCE(email_verified_at, $2) \
         WHERE id = $3 AND reset_token_hash = $4 AND reset_expires_at > $2",
    )
    .bind(&hash)
    .bind(db::now())
    .bind(user.id)
    .bind(tokens::hash(token))
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() != 1 {
        return Err(reset_link_invalid());
    }
    let epoch = end_others(&mut tx, user.id, None, None).await?;
    audit::record(
        &mut *tx,
        Entry::new(Some(&user), "user.password_reset", "user", user.id).ip(ip.0),
    )
    .await?;
    mail::enqueue(
        &mut tx,
        &format!("user:{}:password_changed:{epoch}", user.id),
        &password_mail(&user, state, "reset through a link mailed to this address"),
    )
    .await?;
    tx.commit().await?;
    state.mail_wake.notify_one();
    Ok(user)
}

/// Mails `user` a link that proves the address is theirs (a new one replaces the last), in the
/// caller's transaction.
pub async fn send_verification(
    conn: &mut sqlx::AnyConnection,
    state: &AppState,
    user: &User,
) -> AppResult<()> {
    let token = tokens::generate();
    sqlx::query(
        "UPDATE users SET verify_token_hash = $1 WHERE id = $2 AND email_verified_at IS NULL",
    )
    .bind(&token.hash)
    .bind(user.id)
    .execute(&mut *conn)
    .await?;
    let mail = Mail {
        to: user.email.clone(),
        subject: "certdrop: confirm your email address".into(),
        paragraphs: vec![
            format!(
                "Welcome to certdrop. Confirm that {} is your address: until you do, the account can look around but not upload certificates or open tickets.",
                user.email
            ),
            "If you did not sign up, ignore this mail.".into(),
        ],
        link: Some((
            format!(
                "{}account/verify/{}",
                state.base_url,
                token.secret.expose_secret()
            ),
            "Confirm my address".into(),
        )),
    };
    mail::enqueue(
        conn,
        &format!("user:{}:verify:{}", user.id, token.hash),
        &mail,
    )
    .await
}

/// Marks the address proved by the link's token (once); the account it belongs to.
pub async fn verify_email(state: &AppState, ip: ClientIp, token: &str) -> AppResult<User> {
    let mut tx = state.db.begin().await?;
    let id: Option<i64> = sqlx::query_scalar(
        "UPDATE users SET email_verified_at = $1, verify_token_hash = NULL \
         WHERE verify_token_hash = $2 AND email_verified_at IS NULL RETURNING id",
    )
    .bind(db::now())
    .bind(tokens::hash(token))
    .fetch_optional(&mut *tx)
    .await?;
    let Some(id) = id else {
        return Err(AppError::new(
            axum::http::StatusCode::NOT_FOUND,
            ErrorItem::new(
                "verify_link_invalid",
                "This confirmation link is unknown or was used already. Sign in: your account page sends a new one if your address is not confirmed yet.",
            ),
        ));
    };
    audit::record(
        &mut *tx,
        Entry::new(None, "user.email_verified", "user", id).ip(ip.0),
    )
    .await?;
    tx.commit().await?;
    store::find_user(&state.db, id)
        .await?
        .ok_or_else(|| AppError::not_found("user"))
}

/// One signed-in session of an account, as its list shows it.
#[derive(Clone, Debug, Serialize)]
pub struct SessionInfo {
    /// The stored key (the hash of the cookie's id): names the session, opens nothing.
    pub id: String,
    pub signed_in_at: Option<i64>,
    pub from: Option<String>,
    pub expires_at: i64,
    pub current: bool,
}

/// `user`'s live sessions, newest first; `current` marks the caller's.
pub async fn sessions(db: &Db, user: &User, current: &Session) -> AppResult<Vec<SessionInfo>> {
    let current = session_key(current);
    let rows = sqlx::query(
        "SELECT id, data, expires_at FROM sessions WHERE user_id = $1 AND expires_at > $2 ORDER BY expires_at DESC LIMIT 100",
    )
    .bind(user.id)
    .bind(db::now())
    .fetch_all(db)
    .await?;
    let mut out = Vec::new();
    for row in &rows {
        let data: serde_json::Value =
            serde_json::from_str(&row.try_get::<String, _>("data")?).unwrap_or_default();
        if data[SESSION_EPOCH_KEY].as_i64().unwrap_or(0) != user.session_epoch {
            continue;
        }
        let id: String = row.try_get("id")?;
        let signed_in = &data[SESSION_SIGNED_IN_KEY];
        out.push(SessionInfo {
            current: current.as_deref() == Some(id.as_str()),
            id,
            signed_in_at: signed_in[0].as_i64(),
            from: signed_in[1]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            expires_at: row.try_get("expires_at")?,
        });
    }
    Ok(out)
}

/// Ends one of `user`'s own sessions; false when no such session is theirs.
pub async fn end_session(state: &AppState, user: &User, ip: ClientIp, id: &str) -> AppResult<bool> {
    let done = sqlx::query("DELETE FROM sessions WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user.id)
        .execute(&state.db)
        .await?;
    if done.rows_affected() == 1 {
        audit::record(
            &state.db,
            Entry::new(Some(user), "user.session_ended", "user", user.id).ip(ip.0),
        )
        .await?;
    }
    Ok(done.rows_affected() == 1)
}

/// Signs `user` out everywhere: every session (the caller's too) ends at once.
pub async fn sign_out_everywhere(state: &AppState, user: &User, ip: ClientIp) -> AppResult<()> {
    let mut tx = state.db.begin().await?;
    let epoch: i64 = sqlx::query_scalar(
        "UPDATE users SET session_epoch = session_epoch + 1 WHERE id = $1 RETURNING session_epoch",
    )
    .bind(user.id)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM sessions WHERE user_id = $1")
        .bind(user.id)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut *tx,
        Entry::new(Some(user), "user.signed_out_everywhere", "user", user.id)
            .detail(json!({"epoch": epoch}))
            .ip(ip.0),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Disables (or enables again) another account: a disabled one signs in nowhere, and its
/// sessions and tokens stop at once. An admin's action, with a fresh second factor.
pub async fn set_disabled(
    state: &AppState,
    admin: &User,
    credential: &second_factor::Credential,
    ip: ClientIp,
    target_id: i64,
    disable: bool,
    otp: Option<&str>,
) -> AppResult<User> {
    admin.require_admin()?;
    if target_id == admin.id {
        return Err(AppError::conflict(
            "own_account",
            "You cannot disable your own account; ask another admin.",
        ));
    }
    second_factor::require_fresh(state, admin, credential, ip, otp).await?;
    let target = store::find_user(&state.db, target_id)
        .await?
        .ok_or_else(|| AppError::not_found("user"))?;
    let mut tx = state.db.begin().await?;
    if disable {
        sqlx::query("UPDATE users SET disabled_at = $1 WHERE id = $2 AND disabled_at IS NULL")
            .bind(db::now())
            .bind(target_id)
            .execute(&mut *tx)
            .await?;
        end_others(&mut tx, target_id, None, None).await?;
    } else {
        sqlx::query("UPDATE users SET disabled_at = NULL WHERE id = $1")
            .bind(target_id)
            .execute(&mut *tx)
            .await?;
    }
    let action = if disable {
        "user.disabled"
    } else {
        "user.enabled"
    };
    audit::record(
        &mut *tx,
        Entry::new(Some(admin), action, "user", target_id)
            .detail(json!({"email": target.email}))
            .ip(ip.0),
    )
    .await?;
    tx.commit().await?;
    store::find_user(&state.db, target_id)
        .await?
        .ok_or_else(|| AppError::not_found("user"))
}

/// What a second-factor reset did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reset {
    /// Asked for; another admin must approve.
    Requested,
    Done,
}

/// Resets another account's second factor (a lost phone): one admin asks, a second approves
/// within 24 hours. Then its authenticator, recovery codes, sessions and tokens are gone; a
/// staff account enrols again through a link mailed to it, a customer signs in with the
/// password alone until they turn one on again.
pub async fn reset_second_factor(
    state: &AppState,
    admin: &User,
    credential: &second_factor::Credential,
    ip: ClientIp,
    target_id: i64,
    otp: Option<&str>,
) -> AppResult<Reset> {
    admin.require_admin()?;
    if target_id == admin.id {
        return Err(AppError::conflict(
            "own_account",
            "You cannot reset your own second factor; ask another admin (or use a recovery code).",
        ));
    }
    second_factor::require_fresh(state, admin, credential, ip, otp).await?;
    let target = store::find_user(&state.db, target_id)
        .await?
        .ok_or_else(|| AppError::not_found("user"))?;
    let now = db::now();
    let mut tx = state.db.begin().await?;
    // A request counts while its admin still is one, for a day, and never for its own author.
    let pending: Option<i64> = sqlx::query_scalar(
        "SELECT u.second_factor_reset_by FROM users u JOIN users r ON r.id = u.second_factor_reset_by \
         WHERE u.id = $1 AND r.role = 'admin' AND u.second_factor_reset_at > $2",
    )
    .bind(target_id)
    .bind(now - super::roles::REQUEST_SECONDS)
    .fetch_optional(&mut *tx)
    .await?;
    match pending {
        Some(by) if by != admin.id => {}
        Some(_) => {
            return Err(AppError::conflict(
                "second_admin_required",
                format!(
                    "You asked to reset the second factor of {} already; another admin must approve it.",
                    target.email
                ),
            ));
        }
        None => {
            sqlx::query(
                "UPDATE users SET second_factor_reset_by = $1, second_factor_reset_at = $2 WHERE id = $3",
            )
            .bind(admin.id)
            .bind(now)
            .bind(target_id)
            .execute(&mut *tx)
            .await?;
            audit::record(
                &mut *tx,
                Entry::new(
                    Some(admin),
                    "user.second_factor_reset_requested",
                    "user",
                    target_id,
                )
                .detail(json!({"email": target.email}))
                .ip(ip.0),
            )
            .await?;
            tx.commit().await?;
            return Ok(Reset::Requested);
        }
    }
    sqlx::query(
        "UPDATE users SET totp_sealed = NULL, totp_vault_recipient = NULL, totp_enabled_at = NULL, totp_last_step = 0, \
         second_factor_failures = 0, second_factor_locked_at = NULL, second_factor_reset_by = NULL, second_factor_reset_at = NULL \
         WHERE id = $1",
    )
    .bind(target_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(target_id)
        .execute(&mut *tx)
        .await?;
    end_others(&mut tx, target_id, None, None).await?;
    if target.role.is_staff()
        && let Some(link) =
            second_factor::issue_enrolment_link(&mut tx, &state.base_url, target_id).await?
    {
        second_factor::mail_enrolment_link(&mut tx, &target, target.role, &link).await?;
    }
    audit::record(
        &mut *tx,
        Entry::new(Some(admin), "user.second_factor_reset", "user", target_id)
            .detail(json!({"email": target.email}))
            .ip(ip.0),
    )
    .await?;
    tx.commit().await?;
    state.mail_wake.notify_one();
    Ok(Reset::Done)
}

/// Pending second-factor resets, by user id: who asked.
pub async fn pending_resets(db: &Db) -> AppResult<Vec<(i64, String)>> {
    Ok(sqlx::query_as(
        "SELECT u.id, r.email FROM users u JOIN users r ON r.id = u.second_factor_reset_by \
         WHERE r.role = 'admin' AND u.second_factor_reset_at > $1",
    )
    .bind(db::now() - super::roles::REQUEST_SECONDS)
    .fetch_all(db)
    .await?)
}
