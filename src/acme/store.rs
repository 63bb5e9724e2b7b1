//! SQL for ACME orders and the challenges a pair answers.

use sqlx::{AnyConnection, Row};

use crate::{
    db::{self, Db},
    edge::Challenge,
    error::AppResult,
};

/// An order as the worker runs it.
#[derive(Clone, Debug)]
pub struct Order {
    pub id: i64,
    pub ticket_id: i64,
    pub app_id: i64,
    pub pair_id: i64,
    pub replaces: Option<i64>,
    pub run: i64,
    pub attempts: i64,
    pub order_url: Option<String>,
    pub generated_key_id: Option<i64>,
}

pub const ORDER_COLUMNS: &str = "id, ticket_id, app_id, pair_id, replaces_certificate_id, run, attempts, order_url, generated_key_id";

pub fn order_from_row(row: &sqlx::any::AnyRow) -> Result<Order, sqlx::Error> {
    Ok(Order {
        id: row.try_get("id")?,
        ticket_id: row.try_get("ticket_id")?,
        app_id: row.try_get("app_id")?,
        pair_id: row.try_get("pair_id")?,
        replaces: row.try_get("replaces_certificate_id")?,
        run: row.try_get("run")?,
        attempts: row.try_get("attempts")?,
        order_url: row.try_get("order_url")?,
        generated_key_id: row.try_get("generated_key_id")?,
    })
}

/// Queues the ACME order of an approved ticket on `pair_id` (again, as its next run, after a
/// failure); returns the run. The certificate the app serves now is the one it replaces.
pub async fn queue_order(
    conn: &mut AnyConnection,
    ticket_id: i64,
    app_id: i64,
    pair_id: i64,
) -> AppResult<i64> {
    let now = db::now();
    let replaces = crate::tickets::store::deployed_certificate(conn, app_id).await?;
    let run: Option<i64> = sqlx::query_scalar(
        "INSERT INTO acme_orders (ticket_id, app_id, pair_id, replaces_certificate_id, state, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, 'pending', $5, $5) \
         ON CONFLICT (ticket_id) DO UPDATE SET pair_id = excluded.pair_id, state = 'pending', \
           run = acme_orders.run + 1, attempts = 0, not_before = 0, lease_until = 0, order_url = NULL, \
           generated_key_id = NULL, certificate_id = NULL, error = NULL, updated_at = excluded.updated_at \
         WHERE acme_orders.state IN ('done', 'failed') \
         RETURNING run",
    )
    .bind(ticket_id)
    .bind(app_id)
    .bind(pair_id)
    .bind(replaces)
    .bind(now)
    .fetch_optional(conn)
    .await?;
    run.ok_or_else(|| {
        crate::error::AppError::conflict(
            "invalid_transition",
            format!("Ticket #{ticket_id}'s certificate is still being ordered."),
        )
    })
}

/// The challenges `pair_id`'s nodes answer now.
pub async fn challenges_for(db: &Db, pair_id: i64) -> AppResult<Vec<Challenge>> {
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT kind, hostname, token, key_authorization FROM acme_challenges WHERE pair_id = $1 ORDER BY id",
    )
    .bind(pair_id)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(kind, hostname, token, key_authorization)| Challenge {
            kind,
            hostname,
            token,
            key_authorization,
        })
        .collect())
}

/// Replaces `order`'s challenges with `challenges` and publishes them to its pair: returns the
/// configuration version both nodes must apply before the CA is told to look.
pub async fn publish_challenges(
    db: &Db,
    order: &Order,
    challenges: &[Challenge],
) -> AppResult<i64> {
    let mut tx = db.begin().await?;
    sqlx::query("DELETE FROM acme_challenges WHERE order_id = $1")
        .bind(order.id)
        .execute(&mut *tx)
        .await?;
    for c in challenges {
        sqlx::query(
            "INSERT INTO acme_challenges (order_id, pair_id, kind, hostname, token, key_authorization, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(order.id)
        .bind(order.pair_id)
        .bind(&c.kind)
        .bind(&c.hostname)
        .bind(&c.token)
        .bind(&c.key_authorization)
        .bind(db::now())
        .execute(&mut *tx)
        .await?;
    }
    let version = bump(&mut tx, order.pair_id).await?;
    tx.commit().await?;
    Ok(version)
}

/// Takes `order`'s challenges off its pair (once, when there were any).
pub async fn clear_challenges(conn: &mut AnyConnection, order: &Order) -> AppResult<()> {
    let gone = sqlx::query("DELETE FROM acme_challenges WHERE order_id = $1")
        .bind(order.id)
        .execute(&mut *conn)
        .await?;
    if gone.rows_affected() > 0 {
        bump(conn, order.pair_id).await?;
    }
    Ok(())
}

async fn bump(conn: &mut AnyConnection, pair_id: i64) -> AppResult<i64> {
    sqlx::query("UPDATE edge_pairs SET config_version = config_version + 1 WHERE id = $1")
        .bind(pair_id)
        .execute(&mut *conn)
        .await?;
    Ok(
        sqlx::query_scalar("SELECT config_version FROM edge_pairs WHERE id = $1")
            .bind(pair_id)
            .fetch_one(&mut *conn)
            .await?,
    )
}

/// The last renewal of a certificate, as its JSON shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Renewal {
    pub at: String,
    /// `running`, `succeeded` or `failed`.
    pub outcome: &'static str,
    pub error: Option<String>,
}

/// The latest renewal (or fallback) of each of `certificate_ids`: the automatic ticket that
/// replaces (or tried to replace) it.
pub async fn last_renewals(
    db: &Db,
    certificate_ids: &[i64],
) -> AppResult<std::collections::HashMap<i64, Renewal>> {
    let mut out = std::collections::HashMap::new();
    if certificate_ids.is_empty() {
        return Ok(out);
    }
    let list = certificate_ids
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let rows: Vec<(i64, String, Option<String>, i64)> = sqlx::query_as(&format!(
        "SELECT o.replaces_certificate_id, t.state, t.reason, t.updated_at FROM acme_orders o \
         JOIN tickets t ON t.id = o.ticket_id \
         WHERE t.automatic IS NOT NULL AND o.replaces_certificate_id IN ({list}) ORDER BY o.id"
    ))
    .fetch_all(db)
    .await?;
    for (cert, state, reason, at) in rows {
        let outcome = match state.as_str() {
            "deployed" => "succeeded",
            "failed" | "rejected" | "cancelled" => "failed",
            _ => "running",
        };
        out.insert(
            cert,
            Renewal {
                at: crate::web::rfc3339(at),
                outcome,
                error: (outcome == "failed").then_some(reason).flatten(),
            },
        );
    }
    Ok(out)
}
