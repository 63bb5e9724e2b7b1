//! A customer removes a certificate: its key is wiped from the vault and it is never deployed
//! again. One the app serves is replaced first, by the ACME fallback where the app opted in
//! (as on Scalingo: "if you delete it, a Let's Encrypt certificate will automatically and
//! immediately replace it"); without a fallback it must be replaced or removed by a ticket.

use axum::http::StatusCode;
use serde_json::json;

use super::store::Certificate;
use crate::{
    accounts::{User, extract::ClientIp},
    acme,
    audit::{self, Entry},
    db,
    error::{AppError, AppResult, ErrorItem},
    state::AppState,
};

/// What a removal did.
pub enum Removal {
    /// Gone: its key is wiped.
    Removed,
    /// The app served it: the fallback ticket replacing it (its key is wiped already; the
    /// nodes keep serving their own sealed copies until the replacement is verified).
    Replacing(i64),
}

pub async fn remove(
    state: &AppState,
    user: &User,
    ip: ClientIp,
    cert: &Certificate,
) -> AppResult<Removal> {
    let app = crate::apps::store::find_by_id(&state.db, cert.app_id).await?;
    if app.owner_id != user.id {
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            ErrorItem::new(
                "forbidden",
                "Only the app's owner removes its certificates.",
            ),
        ));
    }
    if cert.removed_at.is_some() {
        return Ok(Removal::Removed);
    }
    let mut tx = state.db.begin().await?;
    // A write first: SQLite then holds the write lock for the reads below (no stale snapshot).
    sqlx::query("UPDATE certificates SET removed_at = removed_at WHERE id = $1")
        .bind(cert.id)
        .execute(&mut *tx)
        .await?;
    let under_way: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM tickets WHERE app_id = $1 AND state IN ('open', 'approved', 'deploying') ORDER BY id LIMIT 1",
    )
    .bind(app.id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(ticket) = under_way {
        return Err(AppError::conflict(
            "ticket_under_way",
            format!(
                "Ticket #{ticket} of {} is under way; remove the certificate once it has ended.",
                app.name
            ),
        ));
    }
    let pair: Option<(i64, Option<i64>)> =
        sqlx::query_as("SELECT id, certificate_id FROM edge_pairs WHERE app_id = $1")
            .bind(app.id)
            .fetch_optional(&mut *tx)
            .await?;
    let mut removal = Removal::Removed;
    if let Some((pair_id, Some(served))) = pair
        && served == cert.id
    {
        let verified = crate::domains::store::verified_hostnames(&mut tx, app.id).await?;
        if state.config.acme.is_none() || !app.acme_fallback || !acme::replaceable(&verified) {
            return Err(AppError::conflict(
                "certificate_in_use",
                format!(
                    "{} serves this certificate. Deploy another first (upload one and open an update ticket{}), or open a remove ticket to stop serving TLS.",
                    app.name,
                    if state.config.acme.is_some() {
                        ", or switch to an automatic certificate"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let due = acme::worker::Due {
            app_id: app.id,
            app: app.name.clone(),
            owner_id: app.owner_id,
            pair_id,
            certificate_id: cert.id,
            why: Some(format!("You removed the certificate {} serves.", app.name)),
        };
        removal = Removal::Replacing(acme::worker::open_automatic(&mut tx, state, &due).await?);
    }
    sqlx::query(
        "UPDATE certificates SET removed_at = $1, sealed_key = '', vault_recipient = '' WHERE id = $2",
    )
    .bind(db::now())
    .bind(cert.id)
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut *tx,
        Entry::new(Some(user), "cert.removed", "certificate", cert.id)
            .app(&app.name)
            .detail(json!({
                "fingerprint_sha256": cert.fingerprint_sha256,
                "replaced_by_ticket": match removal { Removal::Replacing(t) => Some(t), Removal::Removed => None },
            }))
            .ip(ip.0),
    )
    .await?;
    tx.commit().await?;
    state.mail_wake.notify_one();
    state.acme_wake.notify_one();
    Ok(removal)
}
