//! SQL for domains. A name may be claimed by several apps while pending, but verified for one
//! only (a partial unique index); only verified domains are published to edge nodes.

use serde::Serialize;
use sqlx::{AnyConnection, Row, any::AnyRow};

use super::{CLAIM_SECONDS, DnsState, Verification};
use crate::{
    apps::store::App,
    db::{self, Db},
    error::AppResult,
};

#[derive(Clone, Debug, Serialize)]
pub struct Domain {
    pub id: i64,
    pub app_id: i64,
    pub hostname: String,
    pub created_at: i64,
    pub verification: Verification,
    /// The value the TXT record must hold (none for domains verified before proofs existed).
    pub token: Option<String>,
    pub expires_at: i64,
    pub verification_checked_at: Option<i64>,
    pub verification_error: Option<String>,
    pub verified_at: Option<i64>,
    pub verified_by: Option<String>,
    pub dns: DnsState,
    pub dns_seen: Option<String>,
    pub dns_checked_at: Option<i64>,
    pub dns_error: Option<String>,
}

const COLUMNS: &str = "id, app_id, hostname, created_at, verification_state, verification_token, \
     verification_expires_at, verification_checked_at, verification_error, verified_at, verified_by, \
     dns_state, dns_seen, dns_checked_at, dns_error FROM domains";

fn from_row(row: &AnyRow) -> Result<Domain, sqlx::Error> {
    let expires_at: i64 = row.try_get("verification_expires_at")?;
    let stored: String = row.try_get("verification_state")?;
    let verification = match Verification::parse(&stored) {
        // A pending claim past its time is expired at once, whether or not the worker has
        // written that down yet.
        Some(Verification::Pending) if expires_at <= db::now() => Verification::Expired,
        Some(state) => state,
        None => Verification::Expired,
    };
    Ok(Domain {
        id: row.try_get("id")?,
        app_id: row.try_get("app_id")?,
        hostname: row.try_get("hostname")?,
        created_at: row.try_get("created_at")?,
        verification,
        token: row.try_get("verification_token")?,
        expires_at,
        verification_checked_at: row.try_get("verification_checked_at")?,
        verification_error: row.try_get("verification_error")?,
        verified_at: row.try_get("verified_at")?,
        verified_by: row.try_get("verified_by")?,
        dns: DnsState::parse(&row.try_get::<String, _>("dns_state")?),
        dns_seen: row.try_get("dns_seen")?,
        dns_checked_at: row.try_get("dns_checked_at")?,
        dns_error: row.try_get("dns_error")?,
    })
}

fn all(rows: &[AnyRow]) -> AppResult<Vec<Domain>> {
    Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
}

pub async fn of_app(db: &Db, app: &App) -> AppResult<Vec<Domain>> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} WHERE app_id = $1 ORDER BY id"))
        .bind(app.id)
        .fetch_all(db)
        .await?;
    all(&rows)
}

pub async fn find(db: &Db, app: &App, hostname: &str) -> AppResult<Option<Domain>> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} WHERE app_id = $1 AND hostname = $2"
    ))
    .bind(app.id)
    .bind(hostname)
    .fetch_optional(db)
    .await?;
    Ok(row.as_ref().map(from_row).transpose()?)
}

/// Domains of many apps in one query (no N+1 in listings).
pub async fn of_apps(db: &Db, app_ids: &[i64]) -> AppResult<Vec<Domain>> {
    if app_ids.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders: Vec<String> = (1..=app_ids.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT {COLUMNS} WHERE app_id IN ({}) ORDER BY id",
        placeholders.join(", ")
    );
    let mut query = sqlx::query(&sql);
    for id in app_ids {
        query = query.bind(*id);
    }
    all(&query.fetch_all(db).await?)
}

/// The names the app has claimed and not let expire: what an upload is checked against (a
/// certificate may be uploaded while its domains await their proof).
pub async fn claimed_hostnames(db: &Db, app: &App) -> AppResult<Vec<String>> {
    Ok(of_app(db, app)
        .await?
        .into_iter()
        .filter(|d| d.verification != Verification::Expired)
        .map(|d| d.hostname)
        .collect())
}

/// The app's verified domains: the only names an edge serves and a deployment checks.
pub async fn verified_hostnames(conn: &mut AnyConnection, app_id: i64) -> AppResult<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT hostname FROM domains WHERE app_id = $1 AND verification_state = 'verified' ORDER BY id",
    )
    .bind(app_id)
    .fetch_all(conn)
    .await?)
}

/// Verified claims of other apps whose names may overlap `hostname` (equal, a parent or a
/// parent's wildcard, or a name below it), as `(hostname, owner_id)`; the caller applies
/// `overlaps` and decides whose they are.
pub async fn verified_near(
    conn: &mut AnyConnection,
    app: &App,
    hostname: &str,
) -> AppResult<Vec<(String, i64)>> {
    let base = super::base(hostname);
    let mut names = Vec::new();
    let mut rest = base;
    loop {
        names.push(rest.to_string());
        names.push(format!("*.{rest}"));
        match rest.split_once('.') {
            Some((_, parent)) if parent.contains('.') => rest = parent,
            _ => break,
        }
    }
    let placeholders: Vec<String> = (3..names.len() + 3).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT d.hostname, a.owner_id FROM domains d JOIN apps a ON a.id = d.app_id \
         WHERE d.verification_state = 'verified' AND d.app_id <> $1 AND (d.hostname LIKE $2 OR d.hostname IN ({}))",
        placeholders.join(", ")
    );
    let mut query = sqlx::query_as(&sql).bind(app.id).bind(format!("%.{base}"));
    for name in names {
        query = query.bind(name);
    }
    Ok(query.fetch_all(conn).await?)
}

/// A new pending claim, or an expired one of the same app renewed with a fresh token.
pub async fn claim(db: &Db, app: &App, hostname: &str, token: &str) -> AppResult<Domain> {
    let now = db::now();
    let renewed = sqlx::query(
        "UPDATE domains SET verification_state = 'pending', verification_token = $1, verification_expires_at = $2, \
         verification_checked_at = NULL, verification_error = NULL, created_at = $3 \
         WHERE app_id = $4 AND hostname = $5 AND (verification_state = 'expired' OR \
         (verification_state = 'pending' AND verification_expires_at <= $3))",
    )
    .bind(token)
    .bind(now + CLAIM_SECONDS)
    .bind(now)
    .bind(app.id)
    .bind(hostname)
    .execute(db)
    .await?;
    if renewed.rows_affected() == 0 {
        sqlx::query(
            "INSERT INTO domains (app_id, hostname, created_at, verification_state, verification_token, verification_expires_at) \
             VALUES ($1, $2, $3, 'pending', $4, $5)",
        )
        .bind(app.id)
        .bind(hostname)
        .bind(now)
        .bind(token)
        .bind(now + CLAIM_SECONDS)
        .execute(db)
        .await
        .map_err(|e| {
            if db::is_unique_violation(&e) {
                crate::error::AppError::conflict(
                    "domain_exists",
                    format!("{hostname} is already a domain of this app."),
                )
                .on_field("hostname")
            } else {
                e.into()
            }
        })?;
    }
    Ok(find(db, app, hostname)
        .await?
        .expect("the claim was just written"))
}

/// Serialises decisions about claims (which overlap is verified first) on both databases: a
/// row lock on PostgreSQL, the write lock on SQLite. Call first inside the transaction.
pub async fn lock_claims(conn: &mut AnyConnection) -> AppResult<()> {
    sqlx::query("UPDATE settings SET value = value WHERE name = 'domain_claims_lock'")
        .execute(conn)
        .await?;
    Ok(())
}

/// Marks a pending claim verified; false when it was not pending (or another app's claim of
/// the same name was verified first: the unique index answers that).
pub async fn mark_verified(conn: &mut AnyConnection, id: i64, by: &str) -> AppResult<bool> {
    let now = db::now();
    let done = sqlx::query(
        "UPDATE domains SET verification_state = 'verified', verified_at = $1, verified_by = $2, \
         verification_checked_at = $1, verification_error = NULL \
         WHERE id = $3 AND verification_state <> 'verified'",
    )
    .bind(now)
    .bind(by)
    .bind(id)
    .execute(conn)
    .await;
    match done {
        Ok(done) => Ok(done.rows_affected() == 1),
        Err(e) if db::is_unique_violation(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Records a proof attempt that did not succeed.
pub async fn note_unproven(db: &Db, id: i64, error: &str) -> AppResult<()> {
    sqlx::query(
        "UPDATE domains SET verification_checked_at = $1, verification_error = $2 WHERE id = $3",
    )
    .bind(db::now())
    .bind(error)
    .bind(id)
    .execute(db)
    .await?;
    Ok(())
}

/// Records what a domain's DNS showed; a failed lookup keeps the last state and notes why.
pub async fn note_dns(
    db: &Db,
    id: i64,
    outcome: &Result<(DnsState, String), String>,
) -> AppResult<()> {
    let now = db::now();
    match outcome {
        Ok((state, seen)) => {
            sqlx::query(
                "UPDATE domains SET dns_state = $1, dns_seen = $2, dns_checked_at = $3, dns_error = NULL WHERE id = $4",
            )
            .bind(state.as_str())
            .bind(seen)
            .bind(now)
            .bind(id)
            .execute(db)
            .await?
        }
        Err(error) => {
            sqlx::query("UPDATE domains SET dns_checked_at = $1, dns_error = $2 WHERE id = $3")
                .bind(now)
                .bind(error)
                .bind(id)
                .execute(db)
                .await?
        }
    };
    Ok(())
}

/// Removes a domain; false when the app has no such domain.
pub async fn remove(db: &Db, app: &App, hostname: &str) -> AppResult<bool> {
    let done = sqlx::query("DELETE FROM domains WHERE app_id = $1 AND hostname = $2")
        .bind(app.id)
        .bind(hostname)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Pending claims past their 7 days, written down as expired: `(id, app, hostname)`.
pub async fn expire_claims(db: &Db) -> AppResult<Vec<(i64, String, String)>> {
    let now = db::now();
    let rows: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT d.id, a.name, d.hostname FROM domains d JOIN apps a ON a.id = d.app_id \
         WHERE d.verification_state = 'pending' AND d.verification_expires_at <= $1 LIMIT 100",
    )
    .bind(now)
    .fetch_all(db)
    .await?;
    let mut expired = Vec::new();
    for row in rows {
        let done = sqlx::query(
            "UPDATE domains SET verification_state = 'expired' WHERE id = $1 AND verification_state = 'pending'",
        )
        .bind(row.0)
        .execute(db)
        .await?;
        if done.rows_affected() == 1 {
            expired.push(row);
        }
    }
    Ok(expired)
}

/// Ids of domains whose DNS or (for pending claims) proof is due a recheck.
pub async fn due(db: &Db, dns_before: i64, proof_before: i64) -> AppResult<(Vec<i64>, Vec<i64>)> {
    let dns: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM domains WHERE verification_state <> 'expired' AND (dns_checked_at IS NULL OR dns_checked_at < $1) \
         ORDER BY dns_checked_at LIMIT 50",
    )
    .bind(dns_before)
    .fetch_all(db)
    .await?;
    let proofs: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM domains WHERE verification_state = 'pending' AND verification_expires_at > $1 \
         AND (verification_checked_at IS NULL OR verification_checked_at < $2) ORDER BY id LIMIT 50",
    )
    .bind(db::now())
    .bind(proof_before)
    .fetch_all(db)
    .await?;
    Ok((dns, proofs))
}

/// A domain and its app by the domain's id (for the worker).
pub async fn by_id(db: &Db, id: i64) -> AppResult<Option<Domain>> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(row.as_ref().map(from_row).transpose()?)
}
