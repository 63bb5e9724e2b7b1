//! SQL for users and API tokens.

use sqlx::{Row, any::AnyRow};

use super::{Role, User, tokens::NewToken};
use crate::{
    db::{self, Db, Page},
    error::{AppError, AppResult},
};

/// The columns `user_from_row` reads, for `SELECT {USER_COLUMNS} FROM users`.
pub const USER_COLUMNS: &str =
    "id, email, role, created_at, disabled_at, email_verified_at, session_epoch";

fn user_from_row(row: &AnyRow) -> Result<User, sqlx::Error> {
    let role: String = row.try_get("role")?;
    Ok(User {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        role: Role::parse(&role)
            .ok_or_else(|| sqlx::Error::Decode(format!("role {role}").into()))?,
        created_at: row.try_get("created_at")?,
        disabled_at: row.try_get("disabled_at")?,
        email_verified_at: row.try_get("email_verified_at")?,
        session_epoch: row.try_get("session_epoch")?,
    })
}

/// A new account; `verified` when its address needs no proof (made at the server shell).
pub async fn create_user<'c, E: sqlx::Executor<'c, Database = sqlx::Any>>(
    db: E,
    email: &str,
    password_hash: &str,
    role: Role,
    verified: bool,
) -> AppResult<User> {
    let now = db::now();
    let row = sqlx::query(&format!(
        "INSERT INTO users (email, password_hash, role, created_at, email_verified_at) VALUES ($1, $2, $3, $4, $5) \
         RETURNING {USER_COLUMNS}"
    ))
    .bind(email)
    .bind(password_hash)
    .bind(role.as_str())
    .bind(now)
    .bind(verified.then_some(now))
    .fetch_one(db)
    .await
    .map_err(|e| {
        if db::is_unique_violation(&e) {
            AppError::conflict(
                "email_taken",
                "An account with this email already exists. Sign in instead, or use another email.",
            )
        } else {
            e.into()
        }
    })?;
    Ok(user_from_row(&row)?)
}

/// The user and their password hash, for a login attempt.
pub async fn find_credentials(db: &Db, email: &str) -> AppResult<Option<(User, String)>> {
    let row = sqlx::query(&format!(
        "SELECT {USER_COLUMNS}, password_hash FROM users WHERE email = $1"
    ))
    .bind(email)
    .fetch_optional(db)
    .await?;
    row.map(|row| Ok((user_from_row(&row)?, row.try_get("password_hash")?)))
        .transpose()
}

pub async fn find_user(db: &Db, id: i64) -> AppResult<Option<User>> {
    let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(row.as_ref().map(user_from_row).transpose()?)
}

pub async fn find_user_by_email(db: &Db, email: &str) -> AppResult<Option<User>> {
    let row = sqlx::query(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE email = $1"
    ))
    .bind(email)
    .fetch_optional(db)
    .await?;
    Ok(row.as_ref().map(user_from_row).transpose()?)
}

pub async fn list_users(db: &Db, page: Page) -> AppResult<(Vec<User>, Option<String>)> {
    let rows = sqlx::query(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE id > $1 ORDER BY id LIMIT $2"
    ))
    .bind(page.after)
    .bind(page.fetch_limit())
    .fetch_all(db)
    .await?;
    let users = rows
        .iter()
        .map(user_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page.finish(users, |u| u.id))
}

/// Changes a role; returns the previous one, or `None` when the user does not exist.
pub async fn set_role(db: &Db, user_id: i64, role: Role) -> AppResult<Option<Role>> {
    let mut tx = db.begin().await?;
    // Write first, so SQLite takes its write lock at the start of the transaction.
    let updated = sqlx::query("UPDATE users SET role = role WHERE id = $1")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    if updated.rows_affected() == 0 {
        return Ok(None);
    }
    let before: String = sqlx::query_scalar("SELECT role FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query("UPDATE users SET role = $1 WHERE id = $2")
        .bind(role.as_str())
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Role::parse(&before))
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ApiToken {
    pub id: i64,
    pub name: String,
    pub hint: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub expires_at: i64,
}

pub async fn insert_token(
    db: &Db,
    user_id: i64,
    name: &str,
    token: &NewToken,
    second_factor_at: Option<i64>,
    expires_at: i64,
) -> AppResult<ApiToken> {
    let now = db::now();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO api_tokens (user_id, name, token_hash, hint, created_at, second_factor_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(user_id)
    .bind(name)
    .bind(&token.hash)
    .bind(&token.hint)
    .bind(now)
    .bind(second_factor_at)
    .bind(expires_at)
    .fetch_one(db)
    .await?;
    Ok(ApiToken {
        id,
        name: name.to_string(),
        hint: token.hint.clone(),
        created_at: now,
        last_used_at: None,
        expires_at,
    })
}

/// A live token as the API sees it: whose it is, and whether it proved a second factor.
pub struct TokenOwner {
    pub user: User,
    pub token_id: i64,
    pub second_factor_at: Option<i64>,
}

/// What a presented token turned out to be.
pub enum TokenLookup {
    Live(TokenOwner),
    /// Past its expiry (unix seconds).
    Expired(i64),
    Unknown,
}

/// The owner of a live token; records when it was last used (at most once a minute).
pub async fn user_for_token(db: &Db, token_hash: &str) -> AppResult<TokenLookup> {
    let row = sqlx::query(
        "SELECT u.id, u.email, u.role, u.created_at, u.disabled_at, u.email_verified_at, u.session_epoch, \
         t.id AS token_id, t.token_hash, t.last_used_at, t.second_factor_at, t.expires_at \
         FROM api_tokens t JOIN users u ON u.id = t.user_id \
         WHERE t.token_hash = $1 AND t.revoked_at IS NULL",
    )
    .bind(token_hash)
    .fetch_optional(db)
    .await?;
    let Some(row) = row else {
        return Ok(TokenLookup::Unknown);
    };
    let now = db::now();
    let expires_at: i64 = row.try_get("expires_at")?;
    if expires_at <= now {
        return Ok(TokenLookup::Expired(expires_at));
    }
    let token_id: i64 = row.try_get("token_id")?;
    let last_used: Option<i64> = row.try_get("last_used_at")?;
    if last_used.is_none_or(|t| now - t >= 60) {
        sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
            .bind(now)
            .bind(token_id)
            .execute(db)
            .await?;
    }
    Ok(TokenLookup::Live(TokenOwner {
        user: user_from_row(&row)?,
        token_id,
        second_factor_at: row.try_get("second_factor_at")?,
    }))
}

pub async fn list_tokens(db: &Db, user_id: i64) -> AppResult<Vec<ApiToken>> {
    let rows = sqlx::query(
        "SELECT id, name, hint, created_at, last_used_at, expires_at FROM api_tokens \
         WHERE user_id = $1 AND revoked_at IS NULL ORDER BY id DESC LIMIT 200",
    )
    .bind(user_id)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(ApiToken {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                hint: row.try_get("hint")?,
                created_at: row.try_get("created_at")?,
                last_used_at: row.try_get("last_used_at")?,
                expires_at: row.try_get("expires_at")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

/// Revokes one of the user's own tokens; false when no such live token is theirs.
pub async fn revoke_token(db: &Db, user_id: i64, token_id: i64) -> AppResult<bool> {
    let done = sqlx::query(
        "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND user_id = $3 AND revoked_at IS NULL",
    )
    .bind(db::now())
    .bind(token_id)
    .bind(user_id)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}
