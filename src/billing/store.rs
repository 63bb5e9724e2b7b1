//! SQL for billing events: insert (idempotent), page through, and stream a month's worth.

use futures::{Stream, StreamExt};
use sqlx::{AnyConnection, Row, any::AnyRow};

use super::statement::{Event, Month};
use crate::{
    db::{Db, Page},
    error::AppResult,
    tickets::store::Ticket,
};

#[allow(clippy::too_many_arguments)]
pub async fn insert(
    conn: &mut AnyConnection,
    key: &str,
    kind: &str,
    ticket: &Ticket,
    pair_id: i64,
    at: i64,
    unit_price_cents: i64,
    currency: &str,
) -> AppResult<()> {
    sqlx::query(
        "INSERT INTO billing_events (idempotency_key, kind, customer_id, customer_email, app_id, app, pair_id, pair, \
         occurred_at, unit_price_cents, currency) \
         SELECT $1, $2, $3, $4, $5, $6, p.id, p.name, $7, $8, $9 FROM edge_pairs p WHERE p.id = $10 \
         ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(key)
    .bind(kind)
    .bind(ticket.owner_id)
    .bind(&ticket.owner_email)
    .bind(ticket.app_id)
    .bind(&ticket.app)
    .bind(at)
    .bind(unit_price_cents)
    .bind(currency)
    .bind(pair_id)
    .execute(conn)
    .await?;
    Ok(())
}

const COLUMNS: &str = "id, kind, customer_id, customer_email, app_id, app, pair_id, pair, occurred_at, unit_price_cents, currency";

fn from_row(row: &AnyRow) -> Result<Event, sqlx::Error> {
    Ok(Event {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        customer_id: row.try_get("customer_id")?,
        customer: row.try_get("customer_email")?,
        app_id: row.try_get("app_id")?,
        app: row.try_get("app")?,
        pair_id: row.try_get("pair_id")?,
        pair: row.try_get("pair")?,
        occurred_at: row.try_get("occurred_at")?,
        unit_price_cents: row.try_get("unit_price_cents")?,
        currency: row.try_get("currency")?,
    })
}

/// Events, oldest first, of one customer (or all with `None`), optionally within a month.
pub async fn list(
    db: &Db,
    customer: Option<i64>,
    month: Option<Month>,
    page: Page,
) -> AppResult<(Vec<Event>, Option<String>)> {
    let (from, to) = month.map_or((i64::MIN, i64::MAX), |m| (m.start, m.end));
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM billing_events WHERE id > $1 AND ($2 IS NULL OR customer_id = $2) \
         AND occurred_at >= $3 AND occurred_at < $4 ORDER BY id LIMIT $5"
    ))
    .bind(page.after)
    .bind(customer)
    .bind(from)
    .bind(to)
    .bind(page.fetch_limit())
    .fetch_all(db)
    .await?;
    let events = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    Ok(page.finish(events, |e| e.id))
}

/// Every event that can touch `month` (anything before its end), sorted the way statements
/// read them, as a stream: rows are read as they are needed, never all at once.
pub fn stream_for_month(
    db: &Db,
    customer: Option<i64>,
    month: Month,
) -> impl Stream<Item = Result<Event, sqlx::Error>> + Send + '_ {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT {COLUMNS} FROM billing_events WHERE occurred_at < $1 AND ($2 IS NULL OR customer_id = $2) \
             ORDER BY app_id, pair_id, occurred_at, id"
        )
    });
    sqlx::query(SQL.as_str())
        .bind(month.end)
        .bind(customer)
        .fetch(db)
        .map(|row| row.and_then(|r| from_row(&r)))
}
