//! SQL for stored certificates and the keys generated for CSRs. Visibility follows the app: a
//! customer reads only certificates of their own apps. No query here ever selects `sealed_key`
//! except `sealed_key_of` and `born_sealed_key`.

use serde::Serialize;
use sqlx::{Row, any::AnyRow};

use super::intake::{Inspection, KeyOrigin};
use crate::{
    accounts::User,
    apps::store::App,
    audit::{self, Entry},
    db::{self, Db, Page},
    error::{AppError, AppResult, ErrorItem},
    vault::SealedKey,
};

/// A warning as stored and reported.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Warning {
    pub code: String,
    pub message: String,
}

#[derive(Clone, Debug)]
pub struct Certificate {
    pub id: i64,
    pub app_id: i64,
    pub app: String,
    pub common_name: String,
    pub sans: Vec<String>,
    pub domains_covered: Vec<String>,
    pub issuer: String,
    pub not_before: i64,
    pub not_after: i64,
    pub fingerprint_sha256: String,
    pub key_type: String,
    pub trusted: bool,
    pub chain_len: i64,
    pub warnings: Vec<Warning>,
    pub chain_pem: String,
    pub created_at: i64,
    /// `uploaded` (with its key) or `csr` (its key born here).
    pub source: String,
    /// When certdrop renews it (ACME certificates only).
    pub renews_at: Option<i64>,
    /// When its owner removed it (its key is gone from the vault).
    pub removed_at: Option<i64>,
}

const COLUMNS: &str = "c.id, c.app_id, a.name AS app, c.common_name, c.sans, c.domains_covered, c.issuer, \
    c.not_before, c.not_after, c.fingerprint_sha256, c.key_type, c.trusted, c.chain_len, c.warnings, \
    c.chain_pem, c.created_at, c.source, c.renews_at, c.removed_at FROM certificates c JOIN apps a ON a.id = c.app_id";

fn json_list<T: serde::de::DeserializeOwned>(raw: &str) -> Result<Vec<T>, sqlx::Error> {
    serde_json::from_str(raw).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn from_row(row: &AnyRow) -> Result<Certificate, sqlx::Error> {
    Ok(Certificate {
        id: row.try_get("id")?,
        app_id: row.try_get("app_id")?,
        app: row.try_get("app")?,
        common_name: row.try_get("common_name")?,
        sans: json_list(&row.try_get::<String, _>("sans")?)?,
        domains_covered: json_list(&row.try_get::<String, _>("domains_covered")?)?,
        issuer: row.try_get("issuer")?,
        not_before: row.try_get("not_before")?,
        not_after: row.try_get("not_after")?,
        fingerprint_sha256: row.try_get("fingerprint_sha256")?,
        key_type: row.try_get("key_type")?,
        trusted: row.try_get::<i64, _>("trusted")? != 0,
        chain_len: row.try_get("chain_len")?,
        warnings: json_list(&row.try_get::<String, _>("warnings")?)?,
        chain_pem: row.try_get("chain_pem")?,
        created_at: row.try_get("created_at")?,
        source: row.try_get("source")?,
        renews_at: row.try_get("renews_at")?,
        removed_at: row.try_get("removed_at")?,
    })
}

/// Stores an accepted upload and its audit entry in one transaction. Uploading the same
/// certificate to the same app again returns the stored one (`false`: nothing new was created).
pub async fn insert(
    db: &Db,
    app: &App,
    user: &User,
    ip: Option<std::net::IpAddr>,
    inspection: &Inspection,
    chain_pem: &str,
    sealed: &SealedKey,
) -> AppResult<(Certificate, bool)> {
    let warnings: Vec<Warning> = inspection
        .warnings
        .iter()
        .map(|w: &ErrorItem| Warning {
            code: w.code.to_string(),
            message: w.message.clone(),
        })
        .collect();
    let mut tx = db.begin().await?;
    let (id, created) = insert_row(
        &mut tx,
        app.id,
        user.id,
        inspection,
        chain_pem,
        sealed,
        inspection.key_origin.source(),
    )
    .await?;
    if let KeyOrigin::Born(key_id) = inspection.key_origin {
        sqlx::query(
            "UPDATE generated_keys SET certificate_id = $1 WHERE id = $2 AND certificate_id IS NULL",
        )
        .bind(id)
        .bind(key_id)
        .execute(&mut *tx)
        .await?;
    }
    audit::record(
        &mut *tx,
        Entry::new(Some(user), "cert.uploaded", "certificate", id)
            .app(&app.name)
            .detail(serde_json::json!({
                "fingerprint_sha256": inspection.fingerprint_sha256,
                "new": created,
                "warnings": warnings.iter().map(|w| w.code.as_str()).collect::<Vec<_>>(),
            }))
            .ip(ip),
    )
    .await?;
    tx.commit().await?;
    Ok((find(db, id).await?, created))
}

/// Inserts a certificate row, once per app and leaf: its id, and whether it is new (`false`:
/// the app held that leaf already, and nothing was written). A removed one uploaded again comes
/// back with its newly sealed key.
pub async fn insert_row(
    conn: &mut sqlx::AnyConnection,
    app_id: i64,
    uploaded_by: i64,
    inspection: &Inspection,
    chain_pem: &str,
    sealed: &SealedKey,
    source: &str,
) -> AppResult<(i64, bool)> {
    let warnings: Vec<Warning> = inspection
        .warnings
        .iter()
        .map(|w: &ErrorItem| Warning {
            code: w.code.to_string(),
            message: w.message.clone(),
        })
        .collect();
    let inserted: Option<i64> = sqlx::query_scalar(
        "INSERT INTO certificates (app_id, uploaded_by, common_name, sans, domains_covered, issuer, \
         not_before, not_after, fingerprint_sha256, key_type, trusted, chain_len, warnings, chain_pem, \
         sealed_key, vault_recipient, created_at, source) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
         ON CONFLICT (app_id, fingerprint_sha256) DO UPDATE SET sealed_key = excluded.sealed_key, \
           vault_recipient = excluded.vault_recipient, removed_at = NULL WHERE certificates.removed_at IS NOT NULL \
         RETURNING id",
    )
    .bind(app_id)
    .bind(uploaded_by)
    .bind(&inspection.common_name)
    .bind(serde_json::to_string(&inspection.sans).expect("strings serialize"))
    .bind(serde_json::to_string(&inspection.domains_covered).expect("strings serialize"))
    .bind(&inspection.issuer)
    .bind(inspection.not_before)
    .bind(inspection.not_after)
    .bind(&inspection.fingerprint_sha256)
    .bind(&inspection.key_type)
    .bind(i64::from(inspection.trusted))
    .bind(inspection.chain.len().saturating_sub(1) as i64)
    .bind(serde_json::to_string(&warnings).expect("warnings serialize"))
    .bind(chain_pem)
    .bind(&sealed.armored)
    .bind(&sealed.recipient)
    .bind(db::now())
    .bind(source)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match inserted {
        Some(id) => (id, true),
        None => (
            sqlx::query_scalar(
                "SELECT id FROM certificates WHERE app_id = $1 AND fingerprint_sha256 = $2",
            )
            .bind(app_id)
            .bind(&inspection.fingerprint_sha256)
            .fetch_one(conn)
            .await?,
            false,
        ),
    })
}

async fn find(db: &Db, id: i64) -> AppResult<Certificate> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} WHERE c.id = $1"))
        .bind(id)
        .fetch_one(db)
        .await?;
    Ok(from_row(&row)?)
}

/// A certificate by id, if its app is visible to `user`; 404 otherwise.
pub async fn find_visible(db: &Db, user: &User, id: i64) -> AppResult<Certificate> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} WHERE c.id = $1 AND ($2 = 1 OR a.owner_id = $3)"
    ))
    .bind(id)
    .bind(i64::from(user.role.is_staff()))
    .bind(user.id)
    .fetch_optional(db)
    .await?;
    let mut cert = row
        .as_ref()
        .map(from_row)
        .transpose()?
        .ok_or_else(|| AppError::not_found("certificate"))?;
    cover_current_domains(db, std::slice::from_mut(&mut cert)).await?;
    Ok(cert)
}

/// What each certificate covers of its app's domains now, not at its upload: a domain removed
/// since drops out, one added since appears (one query for all of them).
async fn cover_current_domains(db: &Db, certs: &mut [Certificate]) -> AppResult<()> {
    let mut app_ids: Vec<i64> = certs.iter().map(|c| c.app_id).collect();
    app_ids.dedup();
    let domains = crate::domains::store::of_apps(db, &app_ids).await?;
    for cert in certs {
        cert.domains_covered = domains
            .iter()
            .filter(|d| {
                d.app_id == cert.app_id
                    && d.verification != crate::domains::Verification::Expired
                    && cert
                        .sans
                        .iter()
                        .any(|san| crate::domains::hostname::covers(san, &d.hostname))
            })
            .map(|d| d.hostname.clone())
            .collect();
    }
    Ok(())
}

/// An app's certificates, newest first.
pub async fn list_for_app(
    db: &Db,
    app: &App,
    page: Page,
) -> AppResult<(Vec<Certificate>, Option<String>)> {
    let before = if page.after == 0 {
        i64::MAX
    } else {
        page.after
    };
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} WHERE c.app_id = $1 AND c.removed_at IS NULL AND c.id < $2 ORDER BY c.id DESC LIMIT $3"
    ))
    .bind(app.id)
    .bind(before)
    .bind(page.fetch_limit())
    .fetch_all(db)
    .await?;
    let mut certs = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    cover_current_domains(db, &mut certs).await?;
    Ok(page.finish(certs, |c| c.id))
}

/// The sealed key of a certificate: for deployment only, never for display.
pub async fn sealed_key_of(db: &Db, certificate_id: i64) -> AppResult<String> {
    Ok(
        sqlx::query_scalar("SELECT sealed_key FROM certificates WHERE id = $1")
            .bind(certificate_id)
            .fetch_one(db)
            .await?,
    )
}

/// Each certificate's status within its app: `deployed` (served now), `deploying` (an approved
/// ticket is rolling it out), `pending` (an open ticket names it), `previous` (served before),
/// or `uploaded`.
/// The ticket each certificate waiting to be deployed waits in (`certificate id → ticket id`).
pub async fn waiting_tickets(
    db: &Db,
    app_id: i64,
) -> AppResult<std::collections::HashMap<i64, i64>> {
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT certificate_id, id FROM tickets WHERE app_id = $1 AND certificate_id IS NOT NULL \
         AND state IN ('open', 'approved', 'deploying')",
    )
    .bind(app_id)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().collect())
}

pub async fn statuses(
    db: &Db,
    app_id: i64,
) -> AppResult<std::collections::HashMap<i64, &'static str>> {
    let mut out = std::collections::HashMap::new();
    let deployed: Vec<Option<i64>> = sqlx::query_scalar(
        "SELECT certificate_id FROM app_deployments WHERE app_id = $1 ORDER BY id",
    )
    .bind(app_id)
    .fetch_all(db)
    .await?;
    for id in deployed.iter().flatten() {
        out.insert(*id, "previous");
    }
    let tickets = sqlx::query(
        "SELECT certificate_id, state FROM tickets WHERE app_id = $1 AND certificate_id IS NOT NULL \
         AND state IN ('open', 'approved', 'deploying') AND kind IN ('provision', 'update', 'rollback')",
    )
    .bind(app_id)
    .fetch_all(db)
    .await?;
    for row in tickets {
        let id: i64 = row.try_get("certificate_id")?;
        let state: String = row.try_get("state")?;
        out.insert(
            id,
            if state == "open" {
                "pending"
            } else {
                "deploying"
            },
        );
    }
    if let Some(Some(current)) = deployed.last() {
        out.insert(*current, "deployed");
    }
    Ok(out)
}

/// A key generated here for an app, and its CSR. The sealed key is never read for display.
#[derive(Clone, Debug)]
pub struct GeneratedKey {
    pub id: i64,
    pub app: String,
    pub key_type: String,
    pub subject: String,
    pub domains: Vec<String>,
    pub csr_pem: String,
    pub public_key_id: String,
    pub created_at: i64,
    /// The certificate a CA signed for it, once uploaded.
    pub certificate_id: Option<i64>,
}

const GENERATED_COLUMNS: &str = "g.id, a.name AS app, g.key_type, g.subject, g.domains, g.csr_pem, \
    g.public_key_sha256, g.created_at, g.certificate_id FROM generated_keys g JOIN apps a ON a.id = g.app_id";

fn generated_from_row(row: &AnyRow) -> Result<GeneratedKey, sqlx::Error> {
    Ok(GeneratedKey {
        id: row.try_get("id")?,
        app: row.try_get("app")?,
        key_type: row.try_get("key_type")?,
        subject: row.try_get("subject")?,
        domains: json_list(&row.try_get::<String, _>("domains")?)?,
        csr_pem: row.try_get("csr_pem")?,
        public_key_id: row.try_get("public_key_sha256")?,
        created_at: row.try_get("created_at")?,
        certificate_id: row.try_get("certificate_id")?,
    })
}

/// A CSR's key not completed by a certificate yet, at most this many per app.
pub const MAX_OPEN_GENERATED_KEYS: i64 = 20;

/// Stores a key generated for `app` (sealed at birth) with its audit entry, in one transaction.
pub async fn insert_generated(
    db: &Db,
    app: &App,
    user: &User,
    ip: Option<std::net::IpAddr>,
    generated: &super::csr::Generated,
    sealed: &SealedKey,
) -> AppResult<GeneratedKey> {
    let mut tx = db.begin().await?;
    let open: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM generated_keys WHERE app_id = $1 AND certificate_id IS NULL AND purpose = 'csr'",
    )
    .bind(app.id)
    .fetch_one(&mut *tx)
    .await?;
    if open >= MAX_OPEN_GENERATED_KEYS {
        return Err(AppError::conflict(
            "too_many_csrs",
            format!(
                "{} already has {open} CSRs waiting for their certificates. Upload the certificates your CA signed for them first.",
                app.name
            ),
        ));
    }
    let id = insert_generated_row(&mut tx, app.id, user.id, generated, sealed, "csr").await?;
    audit::record(
        &mut *tx,
        Entry::new(Some(user), "key.generated", "generated_key", id)
            .app(&app.name)
            .detail(serde_json::json!({
                "key_type": generated.kind.as_str(),
                "public_key_sha256": generated.public_key_id,
                "domains": generated.domains,
            }))
            .ip(ip),
    )
    .await?;
    tx.commit().await?;
    find_generated(db, app, id).await
}

/// Stores a key born here (`purpose`: `csr` or `acme`), sealed already: its id.
pub async fn insert_generated_row(
    conn: &mut sqlx::AnyConnection,
    app_id: i64,
    created_by: i64,
    generated: &super::csr::Generated,
    sealed: &SealedKey,
    purpose: &str,
) -> AppResult<i64> {
    Ok(sqlx::query_scalar(
        "INSERT INTO generated_keys (app_id, created_by, key_type, subject, domains, csr_pem, public_key_sha256, \
         sealed_key, vault_recipient, created_at, purpose) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
    )
    .bind(app_id)
    .bind(created_by)
    .bind(generated.kind.as_str())
    .bind(&generated.subject)
    .bind(serde_json::to_string(&generated.domains).expect("strings serialize"))
    .bind(&generated.csr_pem)
    .bind(&generated.public_key_id)
    .bind(&sealed.armored)
    .bind(&sealed.recipient)
    .bind(db::now())
    .bind(purpose)
    .fetch_one(conn)
    .await?)
}

/// One of `app`'s generated keys (the caller has checked the app is visible).
pub async fn find_generated(db: &Db, app: &App, id: i64) -> AppResult<GeneratedKey> {
    let row = sqlx::query(&format!(
        "SELECT {GENERATED_COLUMNS} WHERE g.id = $1 AND g.app_id = $2 AND g.purpose = 'csr'"
    ))
    .bind(id)
    .bind(app.id)
    .fetch_optional(db)
    .await?
    .ok_or_else(|| AppError::not_found("CSR"))?;
    Ok(generated_from_row(&row)?)
}

/// `app`'s generated keys, newest first.
pub async fn generated_of_app(
    db: &Db,
    app: &App,
    page: Page,
) -> AppResult<(Vec<GeneratedKey>, Option<String>)> {
    let before = if page.after == 0 {
        i64::MAX
    } else {
        page.after
    };
    let rows = sqlx::query(&format!(
        "SELECT {GENERATED_COLUMNS} WHERE g.app_id = $1 AND g.purpose = 'csr' AND g.id < $2 ORDER BY g.id DESC LIMIT $3"
    ))
    .bind(app.id)
    .bind(before)
    .bind(page.fetch_limit())
    .fetch_all(db)
    .await?;
    let keys = rows
        .iter()
        .map(generated_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page.finish(keys, |k| k.id))
}

/// What the intake matches a certificate without a key against: `(id, public key id)` of
/// each key born for `app`.
pub async fn born_keys(db: &Db, app_id: i64) -> AppResult<Vec<(i64, String)>> {
    Ok(
        sqlx::query_as("SELECT id, public_key_sha256 FROM generated_keys WHERE app_id = $1")
            .bind(app_id)
            .fetch_all(db)
            .await?,
    )
}

/// The sealed key of a generated key, to become its certificate's: never for display.
pub async fn born_sealed_key(db: &Db, id: i64) -> AppResult<SealedKey> {
    let (armored, recipient): (String, String) =
        sqlx::query_as("SELECT sealed_key, vault_recipient FROM generated_keys WHERE id = $1")
            .bind(id)
            .fetch_one(db)
            .await?;
    Ok(SealedKey { armored, recipient })
}
