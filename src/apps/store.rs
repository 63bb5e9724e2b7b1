//! SQL for apps. Visibility is decided here: customers see their own apps only.

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
    /// An uploaded certificate near expiry is replaced by an ACME one (`acme::worker`).
    pub acme_fallback: bool,
    pub created_at: i64,
}

const APP_COLUMNS: &str = "a.id, a.name, a.owner_id, u.email AS owner_email, a.backend_url, \
                           a.force_https, a.hsts_max_age, a.acme_fallback, a.created_at FROM apps a JOIN users u ON u.id = a.owner_id";

fn app_from_row(row: &AnyRow) -> Result<App, sqlx::Error> {
    Ok(App {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        owner_id: row.try_get("owner_id")?,
        owner_email: row.try_get("owner_email")?,
        backend_url: row.try_get("backend_url")?,
        force_https: row.try_get::<i64, _>("force_https")? != 0,
        hsts_max_age: row.try_get("hsts_max_age")?,
        acme_fallback: row.try_get::<i64, _>("acme_fallback")? != 0,
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

pub async fn find_by_id(db: &Db, id: i64) -> AppResult<App> {
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

/// Every app that holds an edge pair, by name (the platform's DNS records).
pub async fn holding_pairs(db: &Db) -> AppResult<Vec<App>> {
    let rows = sqlx::query(&format!(
        "SELECT {APP_COLUMNS} WHERE a.id IN (SELECT app_id FROM edge_pairs WHERE app_id IS NOT NULL) ORDER BY a.name"
    ))
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(app_from_row).collect::<Result<_, _>>()?)
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
    pub acme_fallback: Option<bool>,
}

pub async fn update(db: &Db, app: &App, changes: &Changes) -> AppResult<()> {
    sqlx::query(
        "UPDATE apps SET force_https = COALESCE($1, force_https), backend_url = COALESCE($2, backend_url), \
         hsts_max_age = COALESCE($3, hsts_max_age), acme_fallback = COALESCE($5, acme_fallback) WHERE id = $4",
    )
    .bind(changes.force_https.map(i64::from))
    .bind(changes.backend_url.as_deref())
    .bind(changes.hsts_max_age)
    .bind(app.id)
    .bind(changes.acme_fallback.map(i64::from))
    .execute(db)
    .await?;
    Ok(())
}
