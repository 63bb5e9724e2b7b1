//! Browser sessions kept in the database, so several certdrop instances share them and a
//! logout is final. The record is stored as JSON under the SHA-256 of its id: only the id
//! travels in the cookie, and a copy of the database signs nobody in. tower-sessions stores a
//! session only once it holds something (pages for visitors keep their CSRF token in a cookie).

use async_trait::async_trait;
use sqlx::Row;
use time::OffsetDateTime;
use tower_sessions::{
    SessionStore,
    session::{Id, Record},
    session_store::{self, Error},
};

use crate::db::{self, Db};

#[derive(Clone, Debug)]
pub struct DbSessionStore {
    db: Db,
}

/// What a session is stored under: never its id itself.
fn key(id: &Id) -> String {
    crate::accounts::tokens::hash(&id.to_string())
}

/// Whose session a record is, once signed in (for the account's list of sessions).
fn user_of(record: &Record) -> Option<i64> {
    record
        .data
        .get(super::extract::USER_KEY)
        .and_then(serde_json::Value::as_i64)
}

fn backend(err: sqlx::Error) -> Error {
    let mark = match db::trouble(&err) {
        Some(db::Trouble::Unavailable) => crate::error::UNAVAILABLE_MARK,
        Some(db::Trouble::Full) => crate::error::FULL_MARK,
        None => "",
    };
    Error::Backend(format!("{mark}{err}"))
}

impl DbSessionStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Removes expired sessions; run periodically by the server.
    pub async fn delete_expired(&self) -> anyhow::Result<u64> {
        let done = sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
            .bind(db::now())
            .execute(&self.db)
            .await?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl SessionStore for DbSessionStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        let data = serde_json::to_string(&record.data).map_err(|e| Error::Encode(e.to_string()))?;
        // A new id on the (astronomically unlikely) collision, never an overwrite.
        loop {
            let inserted = sqlx::query(
                "INSERT INTO sessions (id, data, expires_at, user_id) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(key(&record.id))
            .bind(&data)
            .bind(record.expiry_date.unix_timestamp())
            .bind(user_of(record))
            .execute(&self.db)
            .await
            .map_err(backend)?;
            if inserted.rows_affected() == 1 {
                return Ok(());
            }
            record.id = Id::default();
        }
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let data = serde_json::to_string(&record.data).map_err(|e| Error::Encode(e.to_string()))?;
        sqlx::query(
            "INSERT INTO sessions (id, data, expires_at, user_id) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET data = excluded.data, expires_at = excluded.expires_at, user_id = excluded.user_id",
        )
        .bind(key(&record.id))
        .bind(data)
        .bind(record.expiry_date.unix_timestamp())
        .bind(user_of(record))
        .execute(&self.db)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let row =
            sqlx::query("SELECT data, expires_at FROM sessions WHERE id = $1 AND expires_at > $2")
                .bind(key(id))
                .bind(db::now())
                .fetch_optional(&self.db)
                .await
                .map_err(backend)?;
        let Some(row) = row else { return Ok(None) };
        let data: String = row.try_get("data").map_err(backend)?;
        let expires_at: i64 = row.try_get("expires_at").map_err(backend)?;
        Ok(Some(Record {
            id: *id,
            data: serde_json::from_str(&data).map_err(|e| Error::Decode(e.to_string()))?,
            expiry_date: OffsetDateTime::from_unix_timestamp(expires_at)
                .map_err(|e| Error::Decode(e.to_string()))?,
        }))
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        sqlx::query("DELETE FROM sessions WHERE id = $1")
            .bind(key(id))
            .execute(&self.db)
            .await
            .map_err(backend)?;
        Ok(())
    }
}
