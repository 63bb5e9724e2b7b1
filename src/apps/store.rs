//! SQL for apps and domains. Visibility is decided here: customers see their own apps only.

use serde::Serialize;
use sqlx::{Row, any::AnyRow};

use crate::{
    accounts::User,
    db::{self, Db, Page},
    error::{AppError, AppResult},
};

#[derive(Clone, Debug, Serialize)]
pub struct App {
    pub id: i64,
    pub name: String,
    pub owner_id: i64,
    pub owner_email: String,
    pub backend_url: String,
    pub force_https: bool,
    /// HSTS max-age the edge sends while HTTPS is forced (0: no HSTS).
    pub hsts_max_age: i64,
    pub created_at: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Domain {
    pub id: i64,
    pub hostname: String,
    pub created_at: i64,
}

const APP_COLUMNS: &str = "a.id, a.name, a.owner_id, u.email AS owner_email, a.backend_url, \
                           a.force_https, a.hsts_max_age, a.created_at FROM apps a JOIN users u ON u.id = a.owner_id";

fn app_from_row(row: &AnyRow) -> Result<App, sqlx::Error> {
    Ok(App {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        owner_id: row.try_get("owner_id")?,
        owner_email: row.try_get("owner_email")?,
        backend_url: row.try_get("backend_url")?,
        force_https: row.try_get::<i64, _>("force_https")? != 0,
        hsts_max_age: row.try_get("hsts_max_age")?,
        created_at: row.try_get("created_at")?,
    })
}

pub async fn create(db: &Db, owner: &User, name: &str, backend_url: &str) -> AppResult<App> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO apps (owner_id, name, backend_url, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(owner.id)
    .bind(name)
    .bind(backend_url)
    .bind(db::now())
    .fetch_one(db)
    .await
    .map_err(|e| {
        if db::is_unique_violation(&e) {
            AppError::conflict("app_name_taken", format!("The app name `{name}` is taken; choose another.")).on_field("name")
        } else {
            e.into()
        }
    })?;
    find_by_id(db, id).await
}

async fn find_by_id(db: &Db, id: i64) -> AppResult<App> {
    let row = sqlx::query(&format!("SELECT {APP_COLUMNS} WHERE a.id = $1"))
        .bind(id)
        .fetch_one(db)
        .await?;
    Ok(app_from_row(&row)?)
}

/// The app by name if `user` may see it: their own, or any for staff. Otherwise 404, so that
/// names of other customers' apps do not leak.
pub async fn find_visible(db: &Db, user: &User, name: &str) -> AppResult<App> {
    let row = sqlx::query(&format!(
        "SELECT {APP_COLUMNS} WHERE a.name = $1 AND ($2 = 1 OR a.owner_id = $3)"
    ))
    .bind(name)
    .bind(i64::from(user.role.is_staff()))
    .bind(user.id)
    .fetch_optional(db)
    .await?;
    row.as_ref()
        .map(app_from_row)
        .transpose()?
        .ok_or_else(|| AppError::not_found("app"))
}

/// The apps `user` may see, oldest first, one page at a time.
pub async fn list_visible(
    db: &Db,
    user: &User,
    page: Page,
) -> AppResult<(Vec<App>, Option<String>)> {
    let rows = sqlx::query(&format!(
        "SELECT {APP_COLUMNS} WHERE a.id > $1 AND ($2 = 1 OR a.owner_id = $3) ORDER BY a.id LIMIT $4"
    ))
    .bind(page.after)
    .bind(i64::from(user.role.is_staff()))
    .bind(user.id)
    .bind(page.fetch_limit())
    .fetch_all(db)
    .await?;
    let apps = rows
        .iter()
        .map(app_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page.finish(apps, |a| a.id))
}

pub async fn delete(db: &Db, app: &App) -> AppResult<()> {
    sqlx::query("DELETE FROM apps WHERE id = $1")
        .bind(app.id)
        .execute(db)
        .await?;
    Ok(())
}

/// What an update changes; `None` keeps the current value.
#[derive(Clone, Debug, Default, serde::Deserialize, Serialize)]
pub struct Changes {
    pub force_https: Option<bool>,
    pub backend_url: Option<String>,
    pub hsts_max_age: Option<i64>,
}

pub async fn update(db: &Db, app: &App, changes: &Changes) -> AppResult<()> {
    sqlx::query(
        "UPDATE apps SET force_https = COALESCE($1, force_https), backend_url = COALESCE($2, backend_url), \
         hsts_max_age = COALESCE($3, hsts_max_age) WHERE id = $4",
    )
    .bind(changes.force_https.map(i64::from))
    .bind(changes.backend_url.as_deref())
    .bind(changes.hsts_max_age)
    .bind(app.id)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn domains(db: &Db, app: &App) -> AppResult<Vec<Domain>> {
    let rows =
        sqlx::query("SELECT id, hostname, created_at FROM domains WHERE app_id = $1 ORDER BY id")
            .bind(app.id)
            .fetch_all(db)
            .await?;
    rows.iter()
        .map(|row| {
            Ok(Domain {
                id: row.try_get("id")?,
                hostname: row.try_get("hostname")?,
                created_at: row.try_get("created_at")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

/// Domains of many apps in one query (no N+1 in listings).
pub async fn domains_of(db: &Db, app_ids: &[i64]) -> AppResult<Vec<(i64, String)>> {
    if app_ids.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders: Vec<String> = (1..=app_ids.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT app_id, hostname FROM domains WHERE app_id IN ({}) ORDER BY id",
        placeholders.join(", ")
    );
    let mut query = sqlx::query(&sql);
    for id in app_ids {
        query = query.bind(*id);
    }
    let rows = query.fetch_all(db).await?;
    rows.iter()
        .map(|row| Ok((row.try_get("app_id")?, row.try_get("hostname")?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

pub async fn add_domain(db: &Db, app: &App, hostname: &str) -> AppResult<Domain> {
    let now = db::now();
    let inserted = sqlx::query_scalar::<_, i64>(
        "INSERT INTO domains (app_id, hostname, created_at) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(app.id)
    .bind(hostname)
    .bind(now)
    .fetch_one(db)
    .await;
    match inserted {
        Ok(id) => Ok(Domain {
            id,
            hostname: hostname.to_string(),
            created_at: now,
        }),
        Err(e) if db::is_unique_violation(&e) => {
            let owner: Option<i64> =
                sqlx::query_scalar("SELECT app_id FROM domains WHERE hostname = $1")
                    .bind(hostname)
                    .fetch_optional(db)
                    .await?;
            Err(if owner == Some(app.id) {
                AppError::conflict("domain_exists", format!("{hostname} is already a domain of this app."))
            } else {
                AppError::conflict(
                    "domain_taken",
                    format!(
                        "{hostname} is already attached to another app; a hostname serves one app only. \
                         Remove it there first, or contact support if the domain is yours."
                    ),
                )
            }
            .on_field("hostname"))
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes a domain; false when the app has no such domain.
pub async fn remove_domain(db: &Db, app: &App, hostname: &str) -> AppResult<bool> {
    let done = sqlx::query("DELETE FROM domains WHERE app_id = $1 AND hostname = $2")
        .bind(app.id)
        .bind(hostname)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}
