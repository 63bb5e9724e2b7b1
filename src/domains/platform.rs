//! The platform hostname's certificate (dotCloud's "piggyback SSL"): where the operator sets
//! `CERTDROP_APPS_DOMAIN`, an admin uploads a wildcard certificate for `*.<apps domain>`
//! through the normal intake (its key sealed to the vault at once), and every edge pair that
//! holds an app also serves `<app>.<apps domain>` with it. The key is sealed to each confirmed
//! node of those pairs by `run` — never to any other recipient — and forgotten when a node is
//! revoked, like an app's own key.

use std::time::Duration;

use anyhow::Context;
use askama::Template;
use axum::{
    Json, Router,
    extract::{Multipart, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::json;
use sqlx::{AnyConnection, Row};

use super::{DnsRecord, Target};
use crate::{
    accounts::{ApiUser, SignedIn, User, csrf, extract::ClientIp},
    audit::{self, Entry},
    certs::routes::{check_and_seal, read_upload},
    db,
    error::{AppError, AppResult, ErrorItem},
    state::AppState,
    vault,
    web::{self, Chrome, FormErrors, PageResult, filters, render_status, see_other},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/platform", get(page).post(upload_page))
        .route(
            "/api/v1/platform/certificate",
            post(upload_api).get(show_api),
        )
        .route("/api/v1/platform/dns-records", get(records_api))
}

/// The platform certificate in use: the newest one uploaded for the configured apps domain.
pub struct PlatformCertificate {
    pub id: i64,
    pub apps_domain: String,
    pub common_name: String,
    pub not_after: i64,
    pub fingerprint_sha256: String,
    pub created_at: i64,
}

pub async fn current(db: &db::Db, apps_domain: &str) -> AppResult<Option<PlatformCertificate>> {
    let row = sqlx::query(
        "SELECT id, apps_domain, common_name, not_after, fingerprint_sha256, created_at FROM platform_certificates \
         WHERE apps_domain = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(apps_domain)
    .fetch_optional(db)
    .await?;
    Ok(match row {
        Some(r) => Some(PlatformCertificate {
            id: r.try_get("id")?,
            apps_domain: r.try_get("apps_domain")?,
            common_name: r.try_get("common_name")?,
            not_after: r.try_get("not_after")?,
            fingerprint_sha256: r.try_get("fingerprint_sha256")?,
            created_at: r.try_get("created_at")?,
        }),
        None => None,
    })
}

fn apps_domain(state: &AppState) -> AppResult<&str> {
    state.config.apps_domain.as_deref().ok_or_else(|| {
        AppError::conflict(
            "no_apps_domain",
            "No apps domain is configured: set CERTDROP_APPS_DOMAIN (e.g. apps.example.net) and restart, then upload its wildcard certificate.",
        )
    })
}

fn json_of(cert: &PlatformCertificate) -> serde_json::Value {
    json!({
        "id": cert.id,
        "apps_domain": cert.apps_domain,
        "common_name": cert.common_name,
        "not_after": crate::web::rfc3339(cert.not_after),
        "fingerprint_sha256": cert.fingerprint_sha256,
        "created_at": crate::web::rfc3339(cert.created_at),
    })
}

async fn show_api(State(state): State<AppState>, ApiUser(user): ApiUser) -> AppResult<Response> {
    user.require_staff()?;
    let domain = apps_domain(&state)?;
    let cert = current(&state.db, domain)
        .await?
        .ok_or_else(|| AppError::not_found("platform certificate"))?;
    Ok(Json(json_of(&cert)).into_response())
}

/// An admin uploads the wildcard certificate of the apps domain, with its key and chain, as
/// a customer uploads theirs: checked by the same intake, the key sealed to the vault at once.
async fn upload(
    state: &AppState,
    user: &User,
    ip: ClientIp,
    form: crate::certs::routes::UploadForm,
) -> AppResult<PlatformCertificate> {
    user.require_admin()?;
    let domain = apps_domain(state)?.to_string();
    let wildcard = format!("*.{domain}");
    let (inspection, chain_pem, sealed) =
        match check_and_seal(state, form, vec![wildcard.clone()], Vec::new()).await? {
            Ok(accepted) => accepted,
            Err(refused) => {
                return Err(AppError::many(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    refused.errors,
                ));
            }
        };
    if !inspection.domains_covered.contains(&wildcard) {
        return Err(AppError::unprocessable(ErrorItem::new(
            "domain_mismatch",
            format!(
                "The platform certificate must cover {wildcard} (a wildcard for the apps domain)."
            ),
        )));
    }
    let mut tx = state.db.begin().await?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO platform_certificates (apps_domain, uploaded_by, common_name, sans, not_after, fingerprint_sha256, chain_pem, sealed_key, vault_recipient, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
    )
    .bind(&domain)
    .bind(user.id)
    .bind(&inspection.common_name)
    .bind(serde_json::to_string(&inspection.sans).map_err(anyhow::Error::from)?)
    .bind(inspection.not_after)
    .bind(&inspection.fingerprint_sha256)
    .bind(&chain_pem)
    .bind(&sealed.armored)
    .bind(&sealed.recipient)
    .bind(db::now())
    .fetch_one(&mut *tx)
    .await?;
    audit::record(
        &mut *tx,
        Entry::new(
            Some(user),
            "platform_certificate.uploaded",
            "platform_certificate",
            id,
        )
        .detail(json!({"apps_domain": domain, "fingerprint_sha256": inspection.fingerprint_sha256}))
        .ip(ip.0),
    )
    .await?;
    tx.commit().await?;
    Ok(current(&state.db, &domain)
        .await?
        .context("the certificate was just stored")?)
}

async fn upload_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ip: ClientIp,
    multipart: Multipart,
) -> AppResult<Response> {
    let form = read_upload(multipart).await?;
    let cert = upload(&state, &user, ip, form).await?;
    Ok((StatusCode::CREATED, Json(json_of(&cert))).into_response())
}

/// The records the operator's zone must hold so that each app's platform hostname reaches its
/// pair: `<app>.<apps domain>` A/AAAA the pair's advertised addresses.
pub async fn records(state: &AppState) -> AppResult<Vec<DnsRecord>> {
    let Some(domain) = state.config.apps_domain.as_deref() else {
        return Ok(Vec::new());
    };
    let apps = crate::apps::store::holding_pairs(&state.db).await?;
    let targets = super::targets(state, &apps).await?;
    Ok(apps
        .iter()
        .flat_map(|app| {
            let target = Target {
                cname: None,
                addresses: targets[&app.id].addresses.clone(),
            };
            target.address_records(&format!("{}.{domain}", app.name))
        })
        .collect())
}

async fn records_api(State(state): State<AppState>, ApiUser(user): ApiUser) -> AppResult<Response> {
    user.require_staff()?;
    let items = records(&state).await?;
    Ok(Json(json!({"items": items, "next_cursor": null})).into_response())
}

#[derive(Template)]
#[template(path = "admin/platform.html")]
struct PlatformPage {
    chrome: Chrome,
    apps_domain: Option<String>,
    certificate: Option<PlatformCertificate>,
    records: Vec<String>,
    errors: FormErrors,
}

async fn render_page(
    state: &AppState,
    me: &SignedIn,
    status: StatusCode,
    errors: FormErrors,
) -> PageResult {
    me.user.require_admin()?;
    let apps_domain = state.config.apps_domain.clone();
    let certificate = match &apps_domain {
        Some(domain) => current(&state.db, domain).await?,
        None => None,
    };
    let records = records(state)
        .await?
        .iter()
        .map(super::routes::record_line)
        .collect();
    Ok(render_status(
        status,
        &PlatformPage {
            chrome: me.chrome().await?,
            apps_domain,
            certificate,
            records,
            errors,
        },
    )?)
}

async fn page(State(state): State<AppState>, me: SignedIn) -> PageResult {
    render_page(&state, &me, StatusCode::OK, FormErrors::default()).await
}

async fn upload_page(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    multipart: Multipart,
) -> PageResult {
    let form = read_upload(multipart).await?;
    csrf::verify(&me.session, None, form.csrf_token.as_deref()).await?;
    match upload(&state, &me.user, ip, form).await {
        Ok(cert) => {
            web::flash(
                &me.session,
                "ok",
                format!(
                    "The platform certificate for *.{} is stored, its key sealed; the edge pairs serve it within seconds.",
                    cert.apps_domain
                ),
            )
            .await?;
            Ok(see_other("/admin/platform"))
        }
        Err(err) if err.status.is_client_error() && err.status != StatusCode::FORBIDDEN => {
            render_page(&state, &me, err.status, err.into()).await
        }
        Err(err) => Err(err.into()),
    }
}

/// Seals the current platform key to every confirmed node of a pair that holds an app and
/// lacks it, then tells those pairs to fetch their configuration.
pub async fn run(state: AppState) {
    loop {
        // Sealed, nothing here can open a key: wait for the unseal, failing nothing.
        state.vault.wait_unsealed().await;
        if let Err(err) = seal_due(&state).await {
            tracing::warn!(
                error = format!("{err:#}"),
                "platform: could not seal the platform key to edge nodes"
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn seal_due(state: &AppState) -> anyhow::Result<()> {
    let Some(domain) = state.config.apps_domain.as_deref() else {
        return Ok(());
    };
    let Some(cert) = current(&state.db, domain).await? else {
        return Ok(());
    };
    let due: Vec<(i64, i64, String)> = sqlx::query_as(
        "SELECT n.id, n.pair_id, n.recipient FROM edge_nodes n JOIN edge_pairs p ON p.id = n.pair_id \
         WHERE p.app_id IS NOT NULL AND n.state = 'confirmed' AND n.recipient IS NOT NULL \
         AND NOT EXISTS (SELECT 1 FROM platform_node_keys k WHERE k.node_id = n.id AND k.platform_certificate_id = $1)",
    )
    .bind(cert.id)
    .fetch_all(&state.db)
    .await?;
    if due.is_empty() {
        return Ok(());
    }
    let sealed_key: String =
        sqlx::query_scalar("SELECT sealed_key FROM platform_certificates WHERE id = $1")
            .bind(cert.id)
            .fetch_one(&state.db)
            .await?;
    let vault = state.vault.clone();
    let recipients: Vec<String> = due.iter().map(|(_, _, r)| r.clone()).collect();
    let sealed: Vec<String> = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let key = vault.open(&sealed_key)?;
        recipients
            .iter()
            .map(|r| Ok(vault::seal_to(r, &key)?.armored))
            .collect()
    })
    .await??;
    let mut tx = state.db.begin().await?;
    for ((node, pair, recipient), armored) in due.iter().zip(sealed) {
        // Guarded on the node still being confirmed with the same recipient.
        let stored = sqlx::query(
            "INSERT INTO platform_node_keys (platform_certificate_id, node_id, sealed_key) SELECT $1, $2, $3 \
             WHERE EXISTS (SELECT 1 FROM edge_nodes WHERE id = $2 AND state = 'confirmed' AND recipient = $4) \
             ON CONFLICT (platform_certificate_id, node_id) DO NOTHING",
        )
        .bind(cert.id)
        .bind(node)
        .bind(&armored)
        .bind(recipient)
        .execute(&mut *tx)
        .await?;
        if stored.rows_affected() == 1 {
            audit::record(
                &mut *tx,
                Entry::new(None, "key.sealed", "platform_certificate", cert.id)
                    .detail(json!({"node_id": node})),
            )
            .await?;
            sqlx::query("UPDATE edge_pairs SET config_version = config_version + 1 WHERE id = $1")
                .bind(pair)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    state.config_changed.notify_waiters();
    Ok(())
}

/// What a node needs to serve the platform hostname: the chain and the key sealed to it.
pub async fn sealed_for(
    conn: &mut AnyConnection,
    apps_domain: &str,
    node_id: i64,
) -> AppResult<Option<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT c.chain_pem, k.sealed_key FROM platform_node_keys k JOIN platform_certificates c ON c.id = k.platform_certificate_id \
         WHERE k.node_id = $1 AND c.apps_domain = $2 ORDER BY c.id DESC LIMIT 1",
    )
    .bind(node_id)
    .bind(apps_domain)
    .fetch_optional(conn)
    .await?)
}

/// A revoked node loses its copies of the platform key.
pub async fn forget(conn: &mut AnyConnection, node_id: i64) -> AppResult<()> {
    sqlx::query("DELETE FROM platform_node_keys WHERE node_id = $1")
        .bind(node_id)
        .execute(conn)
        .await?;
    Ok(())
}
