//! The database pool, migrations and small helpers shared by every store.
//! One code path for SQLite and PostgreSQL: sqlx's `Any` driver, `$1` placeholders, portable SQL.
//! Only migrations differ per backend (identity columns), and a test keeps them otherwise equal.

use std::time::Duration;

use anyhow::Context;
use sqlx::{
    AnyPool,
    any::{AnyPoolOptions, install_default_drivers},
    migrate::Migrator,
};

use crate::config::{Config, DbBackend};

pub type Db = AnyPool;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// Connects to the configured database, creating the SQLite file when needed, and migrates it.
/// The data directory is made private (0700) first, whichever command runs first.
pub async fn connect(config: &Config) -> anyhow::Result<Db> {
    create_private_dir(&config.data_dir)?;
    install_default_drivers();
    let mut url = config.database_url().to_string();
    // Two seconds, then the request is answered 503 rather than left waiting.
    let options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(2));
    let options = match config.db_backend {
        DbBackend::Sqlite => {
            if !url.contains('?') {
                url.push_str("?mode=rwc");
            }
            // WAL lets readers proceed while one writer writes; sqlx waits out a busy database.
            options.max_connections(8).after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA foreign_keys = ON")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA busy_timeout = 10000")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            })
        }
        DbBackend::Postgres => options.max_connections(16),
    };
    let pool = options
        .connect(&url)
        .await
        .with_context(|| match config.db_backend {
            // The SQLite path is no secret, and the one thing people need to see when a
            // server verb runs from another directory than `serve` did.
            DbBackend::Sqlite => format!(
                "cannot open the SQLite database {} (CERTDROP_DATABASE_URL, by default under CERTDROP_DATA_DIR={}; run from the directory `certdrop serve` runs in, or set CERTDROP_DATA_DIR)",
                url.trim_start_matches("sqlite://").split('?').next().unwrap_or_default(),
                config.data_dir.display()
            ),
            DbBackend::Postgres => {
                "cannot connect to the PostgreSQL database named by CERTDROP_DATABASE_URL".into()
            }
        })?;
    let migrator = match config.db_backend {
        DbBackend::Sqlite => &SQLITE_MIGRATIONS,
        DbBackend::Postgres => &POSTGRES_MIGRATIONS,
    };
    migrator
        .run(&pool)
        .await
        .context("cannot run the database migrations")?;
    Ok(pool)
}

/// Creates the data directory if needed and makes it private to certdrop's user (0700).
pub fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create the data directory {} (CERTDROP_DATA_DIR)",
            dir.display()
        )
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict the permissions of {}", dir.display()))?;
    }
    Ok(())
}

/// This installation's id: random, made once, shared by every instance on the database.
pub async fn installation_id(db: &Db) -> anyhow::Result<String> {
    sqlx::query("INSERT INTO settings (name, value) VALUES ('installation_id', $1) ON CONFLICT (name) DO NOTHING")
        .bind(uuid::Uuid::new_v4().simple().to_string())
        .execute(db)
        .await?;
    Ok(
        sqlx::query_scalar("SELECT value FROM settings WHERE name = 'installation_id'")
            .fetch_one(db)
            .await?,
    )
}

/// The current time in unix seconds, the one timestamp format stored.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A database failure that is not a bug: it cannot be reached, or its storage is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trouble {
    Unavailable,
    Full,
}

/// Whether the data directory's file system has under 16 MiB free.
pub fn nearly_full(data_dir: &std::path::Path) -> bool {
    rustix::fs::statvfs(data_dir).is_ok_and(|fs| fs.f_bavail.saturating_mul(fs.f_frsize) < 16 << 20)
}

/// Whether `err` is a `Trouble` (mapped to 503 or 507), not a bug (500).
pub fn trouble(err: &sqlx::Error) -> Option<Trouble> {
    classify(err)
}

fn classify(err: &sqlx::Error) -> Option<Trouble> {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => Some(Trouble::Unavailable),
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // SQLite: SQLITE_FULL (13). PostgreSQL: disk_full (53100); connection failures
            // (08…), shutting down or not accepting connections (57P01-57P03).
            if code == "13" || code == "53100" || db.message().contains("database or disk is full")
            {
                Some(Trouble::Full)
            } else if code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03") {
                Some(Trouble::Unavailable)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// True when a database error is a unique-constraint violation (mapped to 409, never 500).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            db.is_unique_violation()
                || db.code().as_deref() == Some("23505")
                || db.message().contains("UNIQUE constraint failed")
        }
        _ => false,
    }
}

/// A listing's query string: `?cursor=…&limit=…`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct PageQuery {
    pub cursor: Option<String>,
    pub limit: Option<i64>,
}

impl PageQuery {
    pub fn page(&self) -> Result<Page, crate::error::AppError> {
        Page::new(self.cursor.as_deref(), self.limit)
    }
}

/// Cursor pagination: `limit` rows after `cursor` (an id), and the cursor of the next page.
#[derive(Clone, Copy, Debug)]
pub struct Page {
    pub after: i64,
    pub limit: i64,
}

impl Page {
    pub const MAX: i64 = 200;

    pub fn new(cursor: Option<&str>, limit: Option<i64>) -> Result<Self, crate::error::AppError> {
        let after = match cursor {
            None | Some("") => 0,
            Some(c) => c.parse().map_err(|_| {
                crate::error::AppError::bad_request(
                    "invalid_cursor",
                    "The cursor is not one this server gave out; start again without it.",
                )
            })?,
        };
        let limit = limit.unwrap_or(50);
        if !(1..=Self::MAX).contains(&limit) {
            return Err(crate::error::AppError::bad_request(
                "invalid_limit",
                format!("limit is a number of items from 1 to {}.", Self::MAX),
            ));
        }
        Ok(Self { after, limit })
    }

    /// Asks for one row more than shown, to know whether a next page exists.
    pub fn fetch_limit(&self) -> i64 {
        self.limit + 1
    }

    /// Trims the extra row and returns the next cursor, if any.
    pub fn finish<T>(&self, mut rows: Vec<T>, id: impl Fn(&T) -> i64) -> (Vec<T>, Option<String>) {
        if rows.len() as i64 > self.limit {
            rows.truncate(self.limit as usize);
            let next = rows.last().map(|r| id(r).to_string());
            (rows, next)
        } else {
            (rows, None)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_for_both_backends_differ_only_in_identity_columns() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut names: Vec<_> = std::fs::read_dir(root.join("sqlite"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert!(!names.is_empty());
        for name in names {
            let sqlite = std::fs::read_to_string(root.join("sqlite").join(&name)).unwrap();
            let postgres = std::fs::read_to_string(root.join("postgres").join(&name))
                .unwrap_or_else(|_| panic!("migrations/postgres/{name:?} is missing"));
            let sqlite = sqlite.replace(
                "INTEGER PRIMARY KEY AUTOINCREMENT",
                "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
            );
            assert_eq!(sqlite, postgres, "{name:?} differs beyond identity columns");
        }
    }
}
