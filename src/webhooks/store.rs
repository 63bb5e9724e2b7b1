//! SQL for webhook endpoints and their deliveries. An endpoint belongs to one user; no query
//! here returns another user's endpoint, and only `sealed_secret` reads the sealed secret.

use serde::Serialize;
use sqlx::AnyConnection;

use crate::{
    db::{self, Db, Page},
    error::{AppError, AppResult},
    vault::SealedKey,
};

#[derive(Clone, Debug, Serialize)]
pub struct Endpoint {
    pub id: i64,
    pub url: String,
    pub events: Vec<String>,
    pub created_at: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Delivery {
    pub id: i64,
    pub event_id: String,
    pub event_type: String,
    pub state: String,
    pub attempts: i64,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
}

type EndpointRow = (i64, String, String, i64);

fn endpoint(row: EndpointRow) -> Endpoint {
    Endpoint {
        id: row.0,
        url: row.1,
        events: serde_json::from_str(&row.2).unwrap_or_default(),
        created_at: row.3,
    }
}

pub async fn create(
    db: &Db,
    owner_id: i64,
    url: &str,
    events: &[String],
    sealed: &SealedKey,
) -> AppResult<Endpoint> {
    let now = db::now();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO webhook_endpoints (owner_id, url, events, secret_sealed, vault_recipient, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(owner_id)
    .bind(url)
    .bind(serde_json::to_string(events).expect("strings serialize"))
    .bind(&sealed.armored)
    .bind(&sealed.recipient)
    .bind(now)
    .fetch_one(db)
    .await?;
    find_owned(db, owner_id, id).await
}

/// Endpoints a user may have at once.
pub const MAX_ENDPOINTS: i64 = 10;

pub async fn count_owned(db: &Db, owner_id: i64) -> AppResult<i64> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM webhook_endpoints WHERE owner_id = $1")
            .bind(owner_id)
            .fetch_one(db)
            .await?,
    )
}

pub async fn list_owned(db: &Db, owner_id: i64) -> AppResult<Vec<Endpoint>> {
    let rows: Vec<EndpointRow> = sqlx::query_as(
        "SELECT id, url, events, created_at FROM webhook_endpoints WHERE owner_id = $1 ORDER BY id",
    )
    .bind(owner_id)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(endpoint).collect())
}

/// One of the user's endpoints; 404 for any other.
pub async fn find_owned(db: &Db, owner_id: i64, id: i64) -> AppResult<Endpoint> {
    let row: Option<EndpointRow> = sqlx::query_as(
        "SELECT id, url, events, created_at FROM webhook_endpoints WHERE id = $1 AND owner_id = $2",
    )
    .bind(id)
    .bind(owner_id)
    .fetch_optional(db)
    .await?;
    row.map(endpoint)
        .ok_or_else(|| AppError::not_found("webhook endpoint"))
}

pub async fn delete_owned(db: &Db, owner_id: i64, id: i64) -> AppResult<()> {
    let done = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1 AND owner_id = $2")
        .bind(id)
        .bind(owner_id)
        .execute(db)
        .await?;
    if done.rows_affected() == 0 {
        return Err(AppError::not_found("webhook endpoint"));
    }
    Ok(())
}

/// The endpoint's URL and sealed secret, for a delivery only.
pub async fn sealed_secret(db: &Db, endpoint_id: i64) -> AppResult<Option<(String, String)>> {
    Ok(
        sqlx::query_as("SELECT url, secret_sealed FROM webhook_endpoints WHERE id = $1")
            .bind(endpoint_id)
            .fetch_optional(db)
            .await?,
    )
}

/// Queues one message for one endpoint (a repeat of the same message id is a no-op).
pub async fn queue(
    conn: &mut AnyConnection,
    endpoint_id: i64,
    event_id: &str,
    event_type: &str,
    payload: &str,
) -> AppResult<()> {
    let now = db::now();
    sqlx::query(
        "INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, payload, state, next_attempt_at, created_at) \
         VALUES ($1, $2, $3, $4, 'pending', $5, $5) ON CONFLICT (endpoint_id, event_id) DO NOTHING",
    )
    .bind(endpoint_id)
    .bind(event_id)
    .bind(event_type)
    .bind(payload)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// An endpoint's deliveries, newest first.
pub async fn deliveries(
    db: &Db,
    endpoint_id: i64,
    page: Page,
) -> AppResult<(Vec<Delivery>, Option<String>)> {
    let before = if page.after == 0 {
        i64::MAX
    } else {
        page.after
    };
    type Row = (
        i64,
        String,
        String,
        String,
        i64,
        Option<i64>,
        Option<String>,
        i64,
        Option<i64>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, event_id, event_type, state, attempts, last_status, last_error, created_at, delivered_at \
         FROM webhook_deliveries WHERE endpoint_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
    )
    .bind(endpoint_id)
    .bind(before)
    .bind(page.fetch_limit())
    .fetch_all(db)
    .await?;
    let items = rows
        .into_iter()
        .map(|r| Delivery {
            id: r.0,
            event_id: r.1,
            event_type: r.2,
            state: r.3,
            attempts: r.4,
            last_status: r.5,
            last_error: r.6,
            created_at: r.7,
            delivered_at: r.8,
        })
        .collect();
    Ok(page.finish(items, |d| d.id))
}
