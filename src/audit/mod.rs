//! The audit trail: who did what to which object, from where, and how it ended.
//! Append-only: this module has an insert and reads, and no update or delete path exists.
//! Details never carry key material; callers pass fingerprints, never key bytes.

pub mod routes;

use std::net::IpAddr;

use serde::Serialize;
use serde_json::Value;
use sqlx::{Any, Executor, Row};

use crate::{
    accounts::User,
    db::{self, Db, Page},
    error::AppResult,
};

/// One thing to record. `outcome` is `ok`, `refused` or `failed`.
#[derive(Debug)]
pub struct Entry<'a> {
    pub actor: Option<&'a User>,
    pub action: &'a str,
    pub object_type: &'a str,
    pub object_id: String,
    pub app: Option<&'a str>,
    pub outcome: &'a str,
    pub detail: Value,
    pub source_ip: Option<IpAddr>,
}

impl<'a> Entry<'a> {
    pub fn new(
        actor: Option<&'a User>,
        action: &'a str,
        object_type: &'a str,
        object_id: impl ToString,
    ) -> Self {
        Self {
            actor,
            action,
            object_type,
            object_id: object_id.to_string(),
            app: None,
            outcome: "ok",
            detail: Value::Object(Default::default()),
            source_ip: None,
        }
    }

    pub fn app(mut self, app: &'a str) -> Self {
        self.app = Some(app);
        self
    }

    pub fn outcome(mut self, outcome: &'a str) -> Self {
        self.outcome = outcome;
        self
    }

    /// A refused attempt, with the code it was refused with (the attempt stays on the trail).
    pub fn refused(self, err: &crate::error::AppError) -> Self {
        self.outcome("refused")
            .detail(serde_json::json!({"code": err.first_code()}))
    }

    pub fn detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }

    pub fn ip(mut self, ip: Option<IpAddr>) -> Self {
        self.source_ip = ip;
        self
    }
}

/// Appends one entry, inside the caller's transaction when given one.
pub async fn record<'c, E: Executor<'c, Database = Any>>(ex: E, entry: Entry<'_>) -> AppResult<()> {
    sqlx::query(
        "INSERT INTO audit_events (occurred_at, actor_id, actor_email, action, object_type, \
         object_id, app, outcome, detail, source_ip) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(db::now())
    .bind(entry.actor.map(|u| u.id))
    .bind(entry.actor.map(|u| u.email.clone()))
    .bind(entry.action)
    .bind(entry.object_type)
    .bind(entry.object_id)
    .bind(entry.app)
    .bind(entry.outcome)
    .bind(entry.detail.to_string())
    .bind(entry.source_ip.map(|ip| ip.to_string()))
    .execute(ex)
    .await?;
    Ok(())
}

#[derive(Clone, Debug, Serialize)]
pub struct AuditEvent {
    pub id: i64,
    pub occurred_at: i64,
    pub actor_email: Option<String>,
    pub action: String,
    pub object_type: String,
    pub object_id: String,
    pub app: Option<String>,
    pub outcome: String,
    pub detail: String,
    pub source_ip: Option<String>,
}

/// Filters for browsing the trail; empty means "any".
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct Filter {
    pub action: Option<String>,
    pub actor: Option<String>,
    pub app: Option<String>,
    pub object: Option<String>,
}

fn some(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Newest first; the cursor is the last id seen.
pub async fn list(
    db: &Db,
    filter: &Filter,
    page: Page,
) -> AppResult<(Vec<AuditEvent>, Option<String>)> {
    let before = if page.after == 0 {
        i64::MAX
    } else {
        page.after
    };
    let rows = sqlx::query(
        "SELECT id, occurred_at, actor_email, action, object_type, object_id, app, outcome, detail, source_ip \
         FROM audit_events WHERE id < $1 \
         AND ($2 IS NULL OR action = $2) AND ($3 IS NULL OR actor_email = $3) \
         AND ($4 IS NULL OR app = $4) AND ($5 IS NULL OR object_id = $5) \
         ORDER BY id DESC LIMIT $6",
    )
    .bind(before)
    .bind(some(&filter.action))
    .bind(some(&filter.actor))
    .bind(some(&filter.app))
    .bind(some(&filter.object))
    .bind(page.fetch_limit())
    .fetch_all(db)
    .await?;
    let events = rows
        .iter()
        .map(|row| {
            Ok(AuditEvent {
                id: row.try_get("id")?,
                occurred_at: row.try_get("occurred_at")?,
                actor_email: row.try_get("actor_email")?,
                action: row.try_get("action")?,
                object_type: row.try_get("object_type")?,
                object_id: row.try_get("object_id")?,
                app: row.try_get("app")?,
                outcome: row.try_get("outcome")?,
                detail: row.try_get("detail")?,
                source_ip: row.try_get("source_ip")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(page.finish(events, |e| e.id))
}
