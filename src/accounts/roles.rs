//! Role changes. Lowering a role takes one admin; raising one (to staff or admin) takes two: one
//! admin asks, another approves. Otherwise one admin could promote an account they control and
//! act as the "second person" of every two-person rule. The server shell (`certdrop users:create`
//! and `users:role`) stays the root of trust for one-admin installs.

use serde_json::json;
use sqlx::Row;

use super::{Role, User, store};
use crate::{
    audit::{self, Entry},
    db::{self, Db},
    error::{AppError, AppResult},
};

/// What a role change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleChange {
    Applied {
        from: Role,
        to: Role,
    },
    /// A raise waiting for another admin.
    Requested {
        to: Role,
    },
}

/// A raise of role waiting for a second admin.
#[derive(Clone, Debug)]
pub struct RoleRequest {
    pub requested: Role,
    pub requested_by: i64,
    pub requested_by_email: String,
    pub requested_at: i64,
}

/// How long a raise waits for its second admin.
pub const REQUEST_SECONDS: i64 = 24 * 3600;

/// Raises waiting for approval (all of them, or `user_id`'s), by user id, in one query. A
/// request counts only while its requester is still an admin and for `REQUEST_SECONDS`: a
/// demoted admin's request, or an old one, is nobody's second vote.
async fn requests_where(db: &Db, user_id: Option<i64>) -> AppResult<Vec<(i64, RoleRequest)>> {
    let rows = sqlx::query(
        "SELECT u.id, u.requested_role, u.role_requested_by, u.role_requested_at, r.email AS requested_by_email \
         FROM users u JOIN users r ON r.id = u.role_requested_by \
         WHERE u.requested_role IS NOT NULL AND r.role = 'admin' AND u.role_requested_at > $2 \
         AND ($1 IS NULL OR u.id = $1) ORDER BY u.id",
    )
    .bind(user_id)
    .bind(db::now() - REQUEST_SECONDS)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|row| {
            let role: String = row.try_get("requested_role")?;
            Ok((
                row.try_get("id")?,
                RoleRequest {
                    requested: Role::parse(&role)
                        .ok_or_else(|| sqlx::Error::Decode(format!("role {role}").into()))?,
                    requested_by: row.try_get("role_requested_by")?,
                    requested_by_email: row.try_get("requested_by_email")?,
                    requested_at: row.try_get("role_requested_at")?,
                },
            ))
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

/// Every raise waiting for a second admin.
pub async fn pending_requests(db: &Db) -> AppResult<Vec<(i64, RoleRequest)>> {
    requests_where(db, None).await
}

/// Changes `target`'s role as `admin` asks: at once when it lowers (or keeps) the role; for a
/// raise, records a request, or applies one another admin made for the same role.
pub async fn change(
    state: &crate::state::AppState,
    admin: &User,
    ip: Option<std::net::IpAddr>,
    target_id: i64,
    role: Role,
) -> AppResult<RoleChange> {
    let db = &state.db;
    admin.require_admin()?;
    if target_id == admin.id {
        return Err(AppError::conflict(
            "own_role",
            "You cannot change your own role; ask another admin.",
        ));
    }
    let target = store::find_user(db, target_id)
        .await?
        .ok_or_else(|| AppError::not_found("user"))?;
    let pending = requests_where(db, Some(target_id))
        .await?
        .pop()
        .map(|(_, r)| r);
    let now = db::now();
    if role.rank() > target.role.rank() {
        match pending {
            Some(p) if p.requested == role && p.requested_by == admin.id => {
                return Err(AppError::conflict(
                    "second_admin_required",
                    format!(
                        "You asked for {} to become {} already; another admin must approve it.",
                        target.email,
                        role.as_str()
                    ),
                ));
            }
            Some(p) if p.requested == role => {
                // Guarded on the requester still being an admin and the request still fresh,
                // as they are read above: a demotion in between voids it.
                let mut tx = db.begin().await?;
                let applied = sqlx::query(
                    "UPDATE users SET role = $1, requested_role = NULL, role_requested_by = NULL, role_requested_at = NULL \
                     WHERE id = $2 AND requested_role = $1 AND role_requested_by = $3 AND role = $4 AND role_requested_at > $5 \
                     AND EXISTS (SELECT 1 FROM users r WHERE r.id = $3 AND r.role = 'admin')",
                )
                .bind(role.as_str())
                .bind(target_id)
                .bind(p.requested_by)
                .bind(target.role.as_str())
                .bind(now - REQUEST_SECONDS)
                .execute(&mut *tx)
                .await?;
                if applied.rows_affected() != 1 {
                    return Err(AppError::conflict(
                        "role_changed_meanwhile",
                        "This account's role changed meanwhile; reload the page.",
                    ));
                }
                audit::record(
                    &mut *tx,
                    Entry::new(Some(admin), "user.role_changed", "user", target_id)
                        .detail(json!({
                            "from": target.role.as_str(),
                            "to": role.as_str(),
                            "requested_by": p.requested_by_email,
                        }))
                        .ip(ip),
                )
                .await?;
                // Their first authenticator is enrolled through a link to their own address,
                // not by whoever knows their password.
                if let Some(link) =
                    super::second_factor::issue_enrolment_link(&mut tx, &state.base_url, target_id)
                        .await?
                {
                    super::second_factor::mail_enrolment_link(&mut tx, &target, role, &link)
                        .await?;
                }
                tx.commit().await?;
                state.mail_wake.notify_one();
                return Ok(RoleChange::Applied {
                    from: target.role,
                    to: role,
                });
            }
            _ => {
                sqlx::query(
                    "UPDATE users SET requested_role = $1, role_requested_by = $2, role_requested_at = $3 WHERE id = $4",
                )
                .bind(role.as_str())
                .bind(admin.id)
                .bind(now)
                .bind(target_id)
                .execute(db)
                .await?;
                audit::record(
                    db,
                    Entry::new(Some(admin), "user.role_change_requested", "user", target_id)
                        .detail(json!({"from": target.role.as_str(), "to": role.as_str()}))
                        .ip(ip),
                )
                .await?;
                return Ok(RoleChange::Requested { to: role });
            }
        }
    }
    let mut tx = db.begin().await?;
    sqlx::query(
        "UPDATE users SET role = $1, requested_role = NULL, role_requested_by = NULL, role_requested_at = NULL WHERE id = $2",
    )
    .bind(role.as_str())
    .bind(target_id)
    .execute(&mut *tx)
    .await?;
    if !role.is_admin() {
        // A former admin's requests are nobody's vote any more.
        sqlx::query(
            "UPDATE users SET requested_role = NULL, role_requested_by = NULL, role_requested_at = NULL WHERE role_requested_by = $1",
        )
        .bind(target_id)
        .execute(&mut *tx)
        .await?;
    }
    audit::record(
        &mut *tx,
        Entry::new(Some(admin), "user.role_changed", "user", target_id)
            .detail(json!({"from": target.role.as_str(), "to": role.as_str()}))
            .ip(ip),
    )
    .await?;
    tx.commit().await?;
    Ok(RoleChange::Applied {
        from: target.role,
        to: role,
    })
}
