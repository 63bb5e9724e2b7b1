//! A ticket's deployment step by step, as it happens: approved, started, key sealed and
//! configuration published, each node applying it, each handshake, deployed or failed. The
//! ticket and app pages follow it live (`static/progress.js` polls `/tickets/{id}/progress`),
//! and the API shows it. Each step is written once (a repeat is a no-op), in milliseconds.

use serde::Serialize;
use sqlx::AnyConnection;

use crate::{db::Db, error::AppResult};

#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub label: String,
    pub ok: bool,
    /// RFC 3339.
    pub at: String,
    /// Since the step before (none for the first).
    pub took_ms: Option<i64>,
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Writes step `key` of a ticket once.
pub async fn record(
    conn: &mut AnyConnection,
    ticket_id: i64,
    key: &str,
    label: &str,
    ok: bool,
) -> AppResult<()> {
    sqlx::query(
        "INSERT INTO deploy_steps (ticket_id, step, label, ok, at_ms) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (ticket_id, step) DO NOTHING",
    )
    .bind(ticket_id)
    .bind(key)
    .bind(label)
    .bind(i64::from(ok))
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(())
}

/// Before a retry: the ticket's steps so far become the record of an earlier run (their keys
/// get a `runN:` prefix), so the new run writes its own steps and its nodes' state is its own.
pub async fn archive(conn: &mut AnyConnection, ticket_id: i64) -> AppResult<()> {
    let runs: i64 = sqlx::query_scalar("SELECT run FROM deploy_jobs WHERE ticket_id = $1")
        .bind(ticket_id)
        .fetch_optional(&mut *conn)
        .await?
        .unwrap_or(1);
    sqlx::query(
        "UPDATE deploy_steps SET step = $1 || step WHERE ticket_id = $2 AND step NOT LIKE 'run%'",
    )
    .bind(format!("run{runs}:"))
    .bind(ticket_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Seconds since the current run was approved (its `state:approved` step), if it was.
pub async fn since_approval(db: &Db, ticket_id: i64) -> AppResult<Option<f64>> {
    let at: Option<i64> = sqlx::query_scalar(
        "SELECT at_ms FROM deploy_steps WHERE ticket_id = $1 AND step = 'state:approved'",
    )
    .bind(ticket_id)
    .fetch_optional(db)
    .await?;
    Ok(at.map(|at| (now_ms() - at).max(0) as f64 / 1000.0))
}

/// The steps so far, oldest first, each with the time it took since the one before.
pub async fn steps(db: &Db, ticket_id: i64) -> AppResult<Vec<Step>> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT label, ok, at_ms FROM deploy_steps WHERE ticket_id = $1 ORDER BY at_ms, id",
    )
    .bind(ticket_id)
    .fetch_all(db)
    .await?;
    let mut before: Option<i64> = None;
    Ok(rows
        .into_iter()
        .map(|(label, ok, at_ms)| {
            let took_ms = before.map(|b| at_ms - b);
            before = Some(at_ms);
            Step {
                label,
                ok: ok != 0,
                at: crate::web::rfc3339(at_ms / 1000),
                took_ms,
            }
        })
        .collect())
}

/// The nodes (`pair-slot`) that applied the ticket's configuration.
pub async fn applied_nodes(db: &Db, ticket_id: i64) -> AppResult<Vec<String>> {
    let steps: Vec<String> = sqlx::query_scalar(
        "SELECT step FROM deploy_steps WHERE ticket_id = $1 AND step LIKE 'applied:%'",
    )
    .bind(ticket_id)
    .fetch_all(db)
    .await?;
    Ok(steps
        .into_iter()
        .filter_map(|s| s.strip_prefix("applied:").map(str::to_string))
        .collect())
}
