//! Second factors: TOTP enrolment and checks (each code accepted once), recovery codes (each
//! used once), and the rule that sensitive actions need a second factor from the last ten
//! minutes. The TOTP secret is sealed to the vault like a private key and opened in memory only
//! to check a code; recovery codes are stored as SHA-256 hashes.

use axum::http::StatusCode;
use serde_json::json;
use sqlx::Row;
use tower_sessions::Session;
use zeroize::Zeroizing;

use super::{
    User,
    extract::ClientIp,
    tokens,
    totp::{self, TotpSecret},
};
use crate::{
    audit::{self, Entry},
    db::{self, Db},
    error::{AppError, AppResult, ErrorItem},
    state::AppState,
    vault::{PlainKey, Vault},
};

/// Wrong codes in a row, from anywhere, after which the authenticator's codes stop counting
/// for the account: only a recovery code (or an admin's reset) opens it again.
pub const ACCOUNT_FAILURE_CAP: i64 = 10;

/// How long a second factor counts as fresh for approving, confirming and changing roles.
pub const FRESH_SECONDS: i64 = 600;
/// The session key holding when this session last proved a second factor (unix seconds).
pub const SESSION_FACTOR_AT: &str = "second_factor_at";

/// What proved who the caller is, so a fresh second factor is tracked per credential: a
/// stolen token never profits from its owner's recent browser sign-in.
pub enum Credential {
    Session(Session),
    Token(i64),
}

/// The API token a request was authenticated with (set by the `ApiUser` extractor).
#[derive(Clone, Copy, Debug)]
pub struct ApiTokenId(pub i64);

pub fn otp_required(message: &str) -> AppError {
    AppError::new(
        StatusCode::UNAUTHORIZED,
        ErrorItem::new("otp_required", message).on("otp"),
    )
}

fn otp_invalid() -> AppError {
    AppError::new(
        StatusCode::UNAUTHORIZED,
        ErrorItem::new(
            "otp_invalid",
            "That code is wrong or was already used. Enter the current code from your authenticator app (each code works once), or one of your unused recovery codes.",
        )
        .on("otp"),
    )
}

fn second_factor_locked() -> AppError {
    AppError::new(
        StatusCode::UNAUTHORIZED,
        ErrorItem::new(
            "second_factor_locked",
            format!("After {ACCOUNT_FAILURE_CAP} wrong codes in a row, codes from this account's authenticator are blocked: enter one of your recovery codes instead (or ask an admin to reset your second factor)."),
        )
        .on("otp"),
    )
}

/// What signing in as a user takes besides the password.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// A customer who has not turned a second factor on.
    Nothing,
    /// Staff or an admin without an authenticator yet: they must enrol one first.
    Enrolment,
    /// A code from the user's authenticator (or a recovery code).
    Code,
}

/// Staff and admins always sign in with a second factor; customers when they turned one on.
pub async fn needed(db: &Db, user: &User) -> AppResult<Need> {
    Ok(
        match (enabled_at(db, user.id).await?, user.role.is_staff()) {
            (Some(_), _) => Need::Code,
            (None, true) => Need::Enrolment,
            (None, false) => Need::Nothing,
        },
    )
}

/// Verifies `otp` when one was given; otherwise answers `otp_required` saying `missing`.
pub async fn verify_given(
    state: &AppState,
    user: &User,
    ip: ClientIp,
    otp: Option<&str>,
    missing: &str,
) -> AppResult<Accepted> {
    match otp.map(str::trim).filter(|c| !c.is_empty()) {
        Some(code) => verify(state, user, ip, code).await,
        None => Err(otp_required(missing)),
    }
}

/// When the user's TOTP was confirmed, if it was.
pub async fn enabled_at(db: &Db, user_id: i64) -> AppResult<Option<i64>> {
    Ok(
        sqlx::query_scalar("SELECT totp_enabled_at FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(db)
            .await?
            .flatten(),
    )
}

fn open_secret(vault: &Vault, sealed: String) -> AppResult<TotpSecret> {
    let vault_key = vault.open(&sealed)?;
    TotpSecret::from_base32(vault_key.pem())
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("a stored TOTP secret is damaged")))
}

fn seal_secret(vault: &Vault, secret: &TotpSecret) -> AppResult<crate::vault::SealedKey> {
    Ok(vault.seal(&PlainKey::from_pem(Zeroizing::new(
        secret.base32().to_string(),
    )))?)
}

/// Replaces the recovery codes of a user with ten new ones, returned once.
async fn new_recovery_codes(
    conn: &mut sqlx::AnyConnection,
    user_id: i64,
) -> AppResult<Vec<Zeroizing<String>>> {
    let codes = totp::recovery_codes();
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    for code in &codes {
        sqlx::query(
            "INSERT INTO recovery_codes (user_id, code_hash, created_at) VALUES ($1, $2, $3)",
        )
        .bind(user_id)
        .bind(tokens::hash(code))
        .bind(db::now())
        .execute(&mut *conn)
        .await?;
    }
    Ok(codes)
}

fn already_enrolled() -> AppError {
    AppError::conflict(
        "already_enrolled",
        "This account already has an authenticator. Sign in with its code.",
    )
}

/// Enrols the authenticator the user just set up: `secret` (base32, as the enrolment page gave
/// it) with a code it shows. Nothing is stored before this succeeds, so showing the enrolment
/// page changes nothing. Returns the recovery codes, which are shown once.
pub async fn confirm_enrolment(
    state: &AppState,
    user: &User,
    ip: ClientIp,
    secret: &str,
    code: &str,
) -> AppResult<Vec<Zeroizing<String>>> {
    limit(state, ip, user)?;
    let secret = TotpSecret::from_base32(secret).ok_or_else(|| {
        AppError::bad_request(
            "invalid_secret",
            "The enrolment form was damaged; reload the page and scan the new code.",
        )
    })?;
    let now = db::now();
    let Some(step) = secret.matching_step(code, now) else {
        let (ip, key) = limit_key(ip, user);
        state.login_limiter.failed(ip, &key);
        return Err(otp_invalid());
    };
    let sealed = seal_secret(&state.vault, &secret)?;
    let mut tx = state.db.begin().await?;
    let done = sqlx::query(
        "UPDATE users SET totp_sealed = $1, totp_vault_recipient = $2, totp_enabled_at = $3, totp_last_step = $4, \
         enrolment_token_hash = NULL, enrolment_expires_at = NULL WHERE id = $5 AND totp_enabled_at IS NULL",
    )
    .bind(&sealed.armored)
    .bind(&sealed.recipient)
    .bind(now)
    .bind(step)
    .bind(user.id)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() != 1 {
        return Err(already_enrolled());
    }
    let codes = new_recovery_codes(&mut tx, user.id).await?;
    audit::record(
        &mut *tx,
        Entry::new(Some(user), "user.second_factor_enrolled", "user", user.id).ip(ip.0),
    )
    .await?;
    tx.commit().await?;
    Ok(codes)
}

/// How long a raised account's enrolment link works.
pub const ENROLMENT_LINK_SECONDS: i64 = 24 * 3600;

/// Gives a raised account with no authenticator yet a one-time link (24 h) to enrol its first
/// one, in the caller's transaction: knowing the password alone is not enough to take over a
/// staff account. A new link replaces any earlier one. `None` when the account has an
/// authenticator already. The link goes to the account's own address (`mail_enrolment_link`)
/// or, from the server shell, to the operator to hand over.
pub async fn issue_enrolment_link(
    conn: &mut sqlx::AnyConnection,
    base_url: &url::Url,
    user_id: i64,
) -> AppResult<Option<Zeroizing<String>>> {
    let token = tokens::generate();
    let done = sqlx::query(
        "UPDATE users SET enrolment_token_hash = $1, enrolment_expires_at = $2 \
         WHERE id = $3 AND totp_enabled_at IS NULL",
    )
    .bind(&token.hash)
    .bind(db::now() + ENROLMENT_LINK_SECONDS)
    .bind(user_id)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(None);
    }
    use secrecy::ExposeSecret;
    Ok(Some(Zeroizing::new(format!(
        "{base_url}account/enrol/{}",
        token.secret.expose_secret()
    ))))
}

/// Mails `user` the enrolment link that `issue_enrolment_link` made, in the same transaction.
pub async fn mail_enrolment_link(
    conn: &mut sqlx::AnyConnection,
    user: &User,
    role: super::Role,
    link: &str,
) -> AppResult<()> {
    let mail = crate::mail::Mail {
        to: user.email.clone(),
        subject: format!("certdrop: set up your authenticator ({})", role.as_str()),
        paragraphs: vec![
            format!(
                "Your certdrop account {} is now {}. Staff and admin accounts sign in with a second factor: open the link below within 24 hours, sign in with your password, and set up an authenticator app.",
                user.email,
                role.as_str()
            ),
            "The link works once. If it has expired, ask an admin to send a new one.".into(),
        ],
        link: Some((link.to_string(), "Set up your authenticator".into())),
    };
    crate::mail::enqueue(
        conn,
        &format!("user:{}:enrolment:{}", user.id, tokens::hash(link)),
        &mail,
    )
    .await
}

/// The user whose unexpired enrolment link this is (the `token` part of the link).
pub async fn enrolment_link_user(db: &Db, token: &str) -> AppResult<Option<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM users WHERE enrolment_token_hash = $1 AND enrolment_expires_at > $2 \
         AND totp_enabled_at IS NULL",
    )
    .bind(tokens::hash(token))
    .bind(db::now())
    .fetch_optional(db)
    .await?)
}

/// The session key remembering an opened enrolment link: `(user id, SHA-256 of its token)`.
pub const ENROLMENT_LINK_KEY: &str = "enrolment_link";

/// Whether this session opened `user`'s current, unexpired enrolment link.
pub async fn opened_enrolment_link(db: &Db, session: &Session, user: &User) -> AppResult<bool> {
    let Some((user_id, hash)) = session.get::<(i64, String)>(ENROLMENT_LINK_KEY).await? else {
        return Ok(false);
    };
    if user_id != user.id {
        return Ok(false);
    }
    let current: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM users WHERE id = $1 AND enrolment_token_hash = $2 AND enrolment_expires_at > $3",
    )
    .bind(user.id)
    .bind(hash)
    .bind(db::now())
    .fetch_optional(db)
    .await?;
    Ok(current.is_some())
}

pub fn enrolment_link_required() -> AppError {
    AppError::new(
        StatusCode::FORBIDDEN,
        ErrorItem::new(
            "enrolment_link_required",
            "This account must set up its authenticator through the one-time link mailed to its address when it was given its role: open that link, then sign in. If it has expired, ask an admin to send a new one.",
        ),
    )
}

/// Replaces a user's recovery codes with ten new ones (the old ones stop working).
pub async fn replace_recovery_codes(
    state: &AppState,
    user: &User,
    ip: ClientIp,
) -> AppResult<Vec<Zeroizing<String>>> {
    let mut tx = state.db.begin().await?;
    let codes = new_recovery_codes(&mut tx, user.id).await?;
    audit::record(
        &mut *tx,
        Entry::new(Some(user), "user.recovery_codes_replaced", "user", user.id).ip(ip.0),
    )
    .await?;
    tx.commit().await?;
    Ok(codes)
}

/// Enrols a user at once (the server shell's `users:create`): the secret and recovery codes.
pub async fn enrol_now(
    db: &Db,
    vault: &Vault,
    user_id: i64,
) -> AppResult<(TotpSecret, Vec<Zeroizing<String>>)> {
    let secret = TotpSecret::generate();
    let sealed = seal_secret(vault, &secret)?;
    let mut tx = db.begin().await?;
    sqlx::query(
        "UPDATE users SET totp_sealed = $1, totp_vault_recipient = $2, totp_enabled_at = $3 WHERE id = $4",
    )
    .bind(&sealed.armored)
    .bind(&sealed.recipient)
    .bind(db::now())
    .bind(user_id)
    .execute(&mut *tx)
    .await?;
    let codes = new_recovery_codes(&mut tx, user_id).await?;
    tx.commit().await?;
    Ok((secret, codes))
}

/// The rate-limit key of a user's second factor (apart from their password's).
fn limit_key(ip: ClientIp, user: &User) -> (std::net::IpAddr, String) {
    (
        ip.0.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
        format!("second-factor:{}", user.email),
    )
}

fn limit(state: &AppState, ip: ClientIp, user: &User) -> AppResult<()> {
    let (ip, key) = limit_key(ip, user);
    state.login_limiter.check(ip, &key)
}

/// Which kind of second factor was accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    Totp,
    /// A recovery code, now spent; `remaining` are left.
    RecoveryCode {
        remaining: i64,
    },
}

/// Checks a TOTP code or a recovery code of an enrolled user. Each TOTP code is accepted once
/// (a guarded update on the last step), each recovery code once (a guarded `used_at`).
pub async fn verify(
    state: &AppState,
    user: &User,
    ip: ClientIp,
    code: &str,
) -> AppResult<Accepted> {
    limit(state, ip, user)?;
    let row = sqlx::query(
        "SELECT totp_sealed, totp_enabled_at, second_factor_locked_at FROM users WHERE id = $1",
    )
    .bind(user.id)
    .fetch_one(&state.db)
    .await?;
    let locked = row
        .try_get::<Option<i64>, _>("second_factor_locked_at")?
        .is_some();
    let sealed = match (
        row.try_get::<Option<String>, _>("totp_sealed")?,
        row.try_get::<Option<i64>, _>("totp_enabled_at")?,
    ) {
        (Some(sealed), Some(_)) => sealed,
        _ => {
            return Err(otp_required(
                "This account has no authenticator yet: sign in in the browser to set one up.",
            ));
        }
    };
    let accepted = if totp::is_totp_code(code) {
        if locked {
            audit::record(
                &state.db,
                Entry::new(Some(user), "user.second_factor", "user", user.id)
                    .outcome("refused")
                    .detail(json!({"code": "second_factor_locked"}))
                    .ip(ip.0),
            )
            .await?;
            return Err(second_factor_locked());
        }
        let secret = open_secret(&state.vault, sealed)?;
        let step = secret.matching_step(code, db::now());
        match step {
            Some(step) => {
                sqlx::query(
                    "UPDATE users SET totp_last_step = $1 WHERE id = $2 AND totp_last_step < $1",
                )
                .bind(step)
                .bind(user.id)
                .execute(&state.db)
                .await?
                .rows_affected()
                    == 1
            }
            None => false,
        }
        .then_some(Accepted::Totp)
    } else {
        let used = sqlx::query(
            "UPDATE recovery_codes SET used_at = $1 WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL",
        )
        .bind(db::now())
        .bind(user.id)
        .bind(tokens::hash(&totp::normalize_recovery_code(code)))
        .execute(&state.db)
        .await?;
        if used.rows_affected() == 1 {
            let remaining: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL",
            )
            .bind(user.id)
            .fetch_one(&state.db)
            .await?;
            Some(Accepted::RecoveryCode { remaining })
        } else {
            None
        }
    };
    let (limit_ip, limit_key) = limit_key(ip, user);
    match accepted {
        Some(how) => {
            state.login_limiter.succeeded(limit_ip, &limit_key);
            sqlx::query(
                "UPDATE users SET second_factor_failures = 0, second_factor_locked_at = NULL \
                 WHERE id = $1 AND (second_factor_failures <> 0 OR second_factor_locked_at IS NOT NULL)",
            )
            .bind(user.id)
            .execute(&state.db)
            .await?;
            if let Accepted::RecoveryCode { remaining } = how {
                audit::record(
                    &state.db,
                    Entry::new(Some(user), "user.recovery_code_used", "user", user.id)
                        .detail(json!({"remaining": remaining}))
                        .ip(ip.0),
                )
                .await?;
            }
            Ok(how)
        }
        None => {
            state.login_limiter.failed(limit_ip, &limit_key);
            audit::record(
                &state.db,
                Entry::new(Some(user), "user.second_factor", "user", user.id)
                    .outcome("refused")
                    .ip(ip.0),
            )
            .await?;
            if count_failure(state, user, ip).await? {
                return Err(second_factor_locked());
            }
            Err(otp_invalid())
        }
    }
}

/// Counts a wrong code against the account, wherever it came from; at the cap, blocks the
/// authenticator's codes and mails the owner (once). Whether the account is blocked now.
async fn count_failure(state: &AppState, user: &User, ip: ClientIp) -> AppResult<bool> {
    let mut tx = state.db.begin().await?;
    let failures: i64 = sqlx::query_scalar(
        "UPDATE users SET second_factor_failures = second_factor_failures + 1 WHERE id = $1 \
         RETURNING second_factor_failures",
    )
    .bind(user.id)
    .fetch_one(&mut *tx)
    .await?;
    if failures < ACCOUNT_FAILURE_CAP {
        tx.commit().await?;
        return Ok(false);
    }
    let now = db::now();
    let locked_now = sqlx::query(
        "UPDATE users SET second_factor_locked_at = $1 WHERE id = $2 AND second_factor_locked_at IS NULL",
    )
    .bind(now)
    .bind(user.id)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if locked_now {
        audit::record(
            &mut *tx,
            Entry::new(Some(user), "user.second_factor_locked", "user", user.id)
                .detail(json!({"failures": failures}))
                .ip(ip.0),
        )
        .await?;
        let mail = crate::mail::Mail {
            to: user.email.clone(),
            subject: "certdrop: your authenticator codes are blocked".into(),
            paragraphs: vec![
                format!(
                    "Someone entered {failures} wrong authenticator codes in a row for your certdrop account {}. To protect it, codes from your authenticator no longer sign you in.",
                    user.email
                ),
                "Sign in with one of your recovery codes: that opens your authenticator again. If you have none left, ask an admin to reset your second factor.".into(),
                "If these attempts were not yours, someone knows your password: change it as soon as you are signed in.".into(),
            ],
            link: Some((format!("{}login", state.base_url), "Sign in".into())),
        };
        crate::mail::enqueue(
            &mut tx,
            &format!("user:{}:second_factor_locked:{now}", user.id),
            &mail,
        )
        .await?;
    }
    tx.commit().await?;
    if locked_now {
        state.mail_wake.notify_one();
    }
    Ok(true)
}

/// Demands a second factor from the last ten minutes on this credential, or a code now
/// (`otp`), which then refreshes the credential.
pub async fn require_fresh(
    state: &AppState,
    user: &User,
    credential: &Credential,
    ip: ClientIp,
    otp: Option<&str>,
) -> AppResult<()> {
    let now = db::now();
    let last: Option<i64> = match credential {
        Credential::Session(session) => session.get::<i64>(SESSION_FACTOR_AT).await?,
        Credential::Token(id) => {
            sqlx::query_scalar("SELECT second_factor_at FROM api_tokens WHERE id = $1")
                .bind(id)
                .fetch_optional(&state.db)
                .await?
                .flatten()
        }
    };
    if last.is_some_and(|at| now - at <= FRESH_SECONDS) {
        return Ok(());
    }
    verify_given(
        state,
        user,
        ip,
        otp,
        "This action needs a second factor from the last 10 minutes: enter the current code from your authenticator app.",
    )
    .await?;
    mark_fresh(state, credential, now).await
}

/// Records that `credential` proved a second factor at `at`.
pub async fn mark_fresh(state: &AppState, credential: &Credential, at: i64) -> AppResult<()> {
    match credential {
        Credential::Session(session) => session
            .insert(SESSION_FACTOR_AT, at)
            .await
            .map_err(AppError::from),
        Credential::Token(id) => {
            sqlx::query("UPDATE api_tokens SET second_factor_at = $1 WHERE id = $2")
                .bind(at)
                .bind(id)
                .execute(&state.db)
                .await?;
            Ok(())
        }
    }
}
