//! Key custody: which machines may ever hold a customer's key. A node holds keys only once it
//! is confirmed — by an admin who neither created its pair nor issued its token, after comparing
//! the recipient fingerprint the node printed at start, or by the fleet key. Revocation ends a
//! node's custody and tells the customers whose keys it held. Every confirmation, refusal and
//! revocation is audited with the recipient fingerprint. Nothing here ever sees a key.

use axum::http::StatusCode;
use serde::Serialize;
use serde_json::json;
use sqlx::Row;

use super::{NodeState, store};
use crate::{
    accounts::{
        User,
        extract::ClientIp,
        second_factor::{self, Credential},
        tokens::{self, NewToken},
    },
    audit::{self, Entry},
    db::{self, Db},
    error::{AppError, AppResult},
    mail::{self, Mail},
    state::AppState,
};

/// A fingerprint as typed or pasted: trimmed, with the `SHA256:` prefix whether or not given.
pub fn normalize_fingerprint(raw: &str) -> String {
    let raw = raw.trim();
    match raw.strip_prefix("SHA256:") {
        Some(rest) => format!("SHA256:{}", rest.trim()),
        None => format!("SHA256:{raw}"),
    }
}

/// 409 `recipient_in_use`: one identity, one slot.
pub fn recipient_in_use(recipient: &str, holder: Option<&str>) -> AppError {
    let held = holder.map_or("another edge node".to_string(), |h| {
        format!("edge node {h}")
    });
    AppError::conflict(
        "recipient_in_use",
        format!(
            "The identity {} is already {held}'s: every edge machine has an identity of its own, held by one slot. Give this machine its own data dir (a fresh identity) and enroll it again.",
            super::recipient_fingerprint(recipient)
        ),
    )
}

/// Refuses `recipient` for the node `node_id` when it was ever revoked, anywhere
/// (`recipient_revoked`, forever), or another node holds it (`recipient_in_use`). Enrollment,
/// confirmation and every sealing ask this; none asks whether a fleet key vouched for it.
pub async fn check_recipient(db: &Db, recipient: &str, node_id: i64) -> AppResult<()> {
    let fingerprint = super::recipient_fingerprint(recipient);
    let revoked: Option<String> = sqlx::query_scalar(
        "SELECT node FROM node_revocations WHERE recipient_fingerprint = $1 ORDER BY id LIMIT 1",
    )
    .bind(&fingerprint)
    .fetch_optional(db)
    .await?;
    if let Some(node) = revoked {
        return Err(AppError::conflict(
            "recipient_revoked",
            format!(
                "The identity {fingerprint} was revoked (as edge node {node}); a revoked identity never holds keys again. Give the machine a fresh identity (an empty data dir) and a new enrollment token."
            ),
        ));
    }
    let holder: Option<(String, i64)> = sqlx::query_as(
        "SELECT p.name, n.slot FROM edge_nodes n JOIN edge_pairs p ON p.id = n.pair_id \
         WHERE n.recipient = $1 AND n.id <> $2",
    )
    .bind(recipient)
    .bind(node_id)
    .fetch_optional(db)
    .await?;
    match holder {
        Some((pair, slot)) => Err(recipient_in_use(recipient, Some(&format!("{pair}-{slot}")))),
        None => Ok(()),
    }
}

/// Records a refused custody action (who tried what on which node, and why) and passes the
/// error on; the attempt is on the trail even though nothing changed.
async fn refused<T>(
    db: &Db,
    actor: &User,
    action: &str,
    node: &str,
    ip: ClientIp,
    result: AppResult<T>,
) -> AppResult<T> {
    if let Err(err) = &result
        && err.status.is_client_error()
        && err.status != StatusCode::NOT_FOUND
    {
        audit::record(
            db,
            Entry::new(Some(actor), action, "edge_node", node)
                .refused(err)
                .ip(ip.0),
        )
        .await?;
    }
    result
}

/// Confirms an enrolled node after the admin compared its recipient fingerprint.
#[allow(clippy::too_many_arguments)]
pub async fn confirm(
    state: &AppState,
    admin: &User,
    credential: &Credential,
    ip: ClientIp,
    node_id: i64,
    fingerprint: &str,
    address: Option<&str>,
    otp: Option<&str>,
) -> AppResult<store::Node> {
    let node = store::node(&state.db, node_id).await?;
    let pair = store::pair(&state.db, node.pair_id).await?;
    let name = pair.node_name(&node);
    let result = async {
        admin.require_admin()?;
        if state.config.fleet_public_key.is_some() {
            return Err(AppError::conflict(
                "fleet_attestation_required",
                "This installation confirms nodes with its fleet key (CERTDROP_FLEET_PUBLIC_KEY): start the node with an attestation instead.",
            ));
        }
        second_factor::require_fresh(state, admin, credential, ip, otp).await?;
        match node.state {
            NodeState::Enrolled => {}
            NodeState::Awaiting => {
                return Err(AppError::conflict(
                    "not_enrolled",
                    format!("{name} has not enrolled yet: start it with its enrollment token first."),
                ));
            }
            NodeState::Confirmed => {
                return Err(AppError::conflict(
                    "already_confirmed",
                    format!("{name} is confirmed already."),
                ));
            }
            NodeState::Revoked => {
                return Err(AppError::conflict(
                    "node_revoked",
                    format!("{name} is revoked; issue a new enrollment token to replace it."),
                ));
            }
        }
        if pair.created_by == Some(admin.id) || node.issued_by == Some(admin.id) {
            return Err(AppError::conflict(
                "self_confirmation",
                format!(
                    "You created pair {} or issued this node's token: another admin must confirm {name} (two-person rule).",
                    pair.name
                ),
            ));
        }
        let (Some(recipient), Some(expected)) = (&node.recipient, &node.recipient_fingerprint) else {
            return Err(AppError::internal(anyhow::anyhow!("an enrolled node has no recipient")));
        };
        check_recipient(&state.db, recipient, node.id).await?;
        // The address is part of what is confirmed: it is what DNS will be told to point at.
        if let Some(seen) = address.map(str::trim).filter(|a| !a.is_empty())
            && Some(seen) != node.address.as_deref()
        {
            return Err(AppError::conflict(
                "address_changed",
                format!(
                    "{name} now gives the address {}, not the {seen} you saw: reload the page and check it again.",
                    node.address.as_deref().unwrap_or("(none)")
                ),
            ));
        }
        if normalize_fingerprint(fingerprint) != *expected {
            return Err(AppError::conflict(
                "fingerprint_mismatch",
                format!(
                    "That is not the fingerprint {name} enrolled with. Read it from the node's own console (`certdrop edge` prints it at start); if they differ, someone else used its token: revoke {name} and issue a new token."
                ),
            )
            .on_field("recipient_fingerprint"));
        }
        let mut tx = state.db.begin().await?;
        let done = sqlx::query(
            "UPDATE edge_nodes SET state = 'confirmed', confirmed_by = $1, confirmed_via = 'admin', confirmed_at = $2, \
             confirmed_address = address WHERE id = $3 AND state = 'enrolled' AND recipient = $4 AND address = $5",
        )
        .bind(admin.id)
        .bind(db::now())
        .bind(node.id)
        .bind(recipient)
        .bind(&node.address)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(AppError::conflict(
                "node_changed",
                format!("{name} changed meanwhile; reload the page."),
            ));
        }
        audit::record(
            &mut *tx,
            Entry::new(Some(admin), "edge_node.confirmed", "edge_node", &name)
                .detail(json!({"recipient_fingerprint": expected, "pair": pair.name, "address": node.address}))
                .ip(ip.0),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
    .await;
    refused(&state.db, admin, "edge_node.confirmed", &name, ip, result).await?;
    store::node(&state.db, node_id).await
}

/// An app whose key a node held, and its owner to tell.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct HeldKey {
    pub app: String,
    pub certificate_id: i64,
    pub owner_email: String,
}

async fn held_keys(conn: &mut sqlx::AnyConnection, node_id: i64) -> AppResult<Vec<HeldKey>> {
    let rows = sqlx::query(
        "SELECT a.name AS app, c.id AS certificate_id, u.email AS owner_email FROM node_keys k \
         JOIN certificates c ON c.id = k.certificate_id JOIN apps a ON a.id = c.app_id \
         JOIN users u ON u.id = a.owner_id WHERE k.node_id = $1 ORDER BY a.name, c.id",
    )
    .bind(node_id)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(HeldKey {
                app: r.try_get("app")?,
                certificate_id: r.try_get("certificate_id")?,
                owner_email: r.try_get("owner_email")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

/// One revocation, as the edge pairs page and the API show it.
#[derive(Clone, Debug, Serialize)]
pub struct Revocation {
    pub node_id: i64,
    pub node: String,
    pub recipient_fingerprint: String,
    pub revoked_by: String,
    pub revoked_at: i64,
    pub affected: Vec<HeldKey>,
}

impl Revocation {
    /// The apps whose keys the node held, each once.
    pub fn apps(&self) -> Vec<&str> {
        let mut apps: Vec<&str> = self.affected.iter().map(|h| h.app.as_str()).collect();
        apps.dedup();
        apps
    }
}

/// Revokes a node (a stolen or retired machine): its credentials die, its sealed copies are
/// deleted, its pair is no longer free, and the customers whose keys it held are mailed.
pub async fn revoke(
    state: &AppState,
    admin: &User,
    credential: &Credential,
    ip: ClientIp,
    node_id: i64,
    otp: Option<&str>,
) -> AppResult<Revocation> {
    let node = store::node(&state.db, node_id).await?;
    let pair = store::pair(&state.db, node.pair_id).await?;
    let name = pair.node_name(&node);
    let result = async {
        admin.require_admin()?;
        second_factor::require_fresh(state, admin, credential, ip, otp).await?;
        let mut tx = state.db.begin().await?;
        // The node's credential now answers only "wipe what you hold", for a machine that
        // still reaches the control plane.
        sqlx::query(
            "INSERT INTO node_wipe_orders (token_hash, node_id, created_at) \
             SELECT node_token_hash, id, $2 FROM edge_nodes WHERE id = $1 AND node_token_hash IS NOT NULL AND state <> 'revoked'",
        )
        .bind(node.id)
        .bind(db::now())
        .execute(&mut *tx)
        .await?;
        let done = sqlx::query(
            "UPDATE edge_nodes SET state = 'revoked', node_token_hash = NULL, enroll_token_hash = NULL \
             WHERE id = $1 AND state <> 'revoked'",
        )
        .bind(node.id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(AppError::conflict(
                "node_revoked",
                format!("{name} is revoked already."),
            ));
        }
        let affected = held_keys(&mut tx, node.id).await?;
        sqlx::query("DELETE FROM node_keys WHERE node_id = $1")
            .bind(node.id)
            .execute(&mut *tx)
            .await?;
        crate::domains::platform::forget(&mut tx, node.id).await?;
        // Its pair's configuration changes (the ticket keys go), so the other node hears of it.
        sqlx::query("UPDATE edge_pairs SET config_version = config_version + 1 WHERE id = $1")
            .bind(pair.id)
            .execute(&mut *tx)
            .await?;
        super::session_keys::forget(&mut tx, pair.id).await?;
        let fingerprint = node.recipient_fingerprint.clone().unwrap_or_default();
        let now = db::now();
        sqlx::query(
            "INSERT INTO node_revocations (node_id, node, recipient_fingerprint, revoked_by, revoked_at, affected) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(node.id)
        .bind(&name)
        .bind(&fingerprint)
        .bind(admin.id)
        .bind(now)
        .bind(serde_json::to_string(&affected).map_err(anyhow::Error::from)?)
        .execute(&mut *tx)
        .await?;
        let mut told = Vec::new();
        for held in &affected {
            if told.contains(&(&held.app, &held.owner_email)) {
                continue;
            }
            told.push((&held.app, &held.owner_email));
            let mail = Mail {
                to: held.owner_email.clone(),
                subject: format!("{}: replace your certificate (an edge server was revoked)", held.app),
                paragraphs: vec![
                    format!(
                        "certdrop's administrators revoked the edge server {name} (key fingerprint {fingerprint}), which held the private key of a certificate of {}. A revoked server gets nothing more from certdrop, but it may have been stolen.",
                        held.app
                    ),
                    "To be safe, replace the certificate with one on a new private key: upload it on the app's page, which opens an update ticket.".into(),
                ],
                link: Some((
                    format!("{}apps/{}", state.base_url, held.app),
                    format!("Replace the certificate of {}", held.app),
                )),
            };
            mail::enqueue(
                &mut tx,
                &format!("node:{}:revoked:{now}:{}", node.id, held.app),
                &mail,
            )
            .await?;
        }
        audit::record(
            &mut *tx,
            Entry::new(Some(admin), "edge_node.revoked", "edge_node", &name)
                .detail(json!({
                    "recipient_fingerprint": fingerprint,
                    "pair": pair.name,
                    "apps": affected.iter().map(|h| h.app.as_str()).collect::<Vec<_>>(),
                }))
                .ip(ip.0),
        )
        .await?;
        tx.commit().await?;
        state.mail_wake.notify_one();
        Ok(Revocation {
            node_id: node.id,
            node: name.clone(),
            recipient_fingerprint: fingerprint,
            revoked_by: admin.email.clone(),
            revoked_at: now,
            affected,
        })
    }
    .await;
    refused(&state.db, admin, "edge_node.revoked", &name, ip, result).await
}

/// Releases a pair from its app, in the caller's transaction: it serves nothing, and every
/// copy of a key sealed to its nodes (customers' certificates, the platform certificate, the
/// ticket keys) is deleted with the release, so no key outlives the custody that justified it.
/// The bumped configuration tells both nodes to drop what they served and held.
pub async fn release_pair(conn: &mut sqlx::AnyConnection, pair_id: i64) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE edge_pairs SET app_id = NULL, certificate_id = NULL, config_version = config_version + 1 WHERE id = $1",
    )
    .bind(pair_id)
    .execute(&mut *conn)
    .await?;
    for table in ["node_keys", "platform_node_keys"] {
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE node_id IN (SELECT id FROM edge_nodes WHERE pair_id = $1)"
        ))
        .bind(pair_id)
        .execute(&mut *conn)
        .await?;
    }
    super::session_keys::forget(conn, pair_id).await
}

/// A new single-use enrollment token for a node that never enrolled or was revoked: the
/// machine that uses it starts inert, like any new node.
pub async fn new_enroll_token(
    state: &AppState,
    staff: &User,
    ip: ClientIp,
    node_id: i64,
) -> AppResult<(String, NewToken)> {
    staff.require_staff()?;
    let node = store::node(&state.db, node_id).await?;
    let pair = store::pair(&state.db, node.pair_id).await?;
    let name = pair.node_name(&node);
    let token = tokens::generate();
    let done = sqlx::query(
        "UPDATE edge_nodes SET state = 'awaiting', enroll_token_hash = $1, node_token_hash = NULL, recipient = NULL, \
         address = NULL, http_address = NULL, enrolled_at = NULL, last_seen_at = NULL, applied_version = 0, \
         issued_by = $2, confirmed_by = NULL, confirmed_via = NULL, confirmed_at = NULL \
         WHERE id = $3 AND state IN ('awaiting', 'revoked')",
    )
    .bind(&token.hash)
    .bind(staff.id)
    .bind(node.id)
    .execute(&state.db)
    .await?;
    if done.rows_affected() != 1 {
        return Err(AppError::conflict(
            "node_in_service",
            format!("{name} is enrolled; an admin must revoke it before it can be replaced."),
        ));
    }
    audit::record(
        &state.db,
        Entry::new(Some(staff), "edge_node.token_issued", "edge_node", &name).ip(ip.0),
    )
    .await?;
    Ok((name, token))
}

/// The latest revocations, newest first.
pub async fn revocations(db: &Db) -> AppResult<Vec<Revocation>> {
    let rows = sqlx::query(
        "SELECT r.node_id, r.node, r.recipient_fingerprint, u.email AS revoked_by, r.revoked_at, r.affected \
         FROM node_revocations r JOIN users u ON u.id = r.revoked_by ORDER BY r.id DESC LIMIT 100",
    )
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Revocation {
                node_id: r.try_get("node_id")?,
                node: r.try_get("node")?,
                recipient_fingerprint: r.try_get("recipient_fingerprint")?,
                revoked_by: r.try_get("revoked_by")?,
                revoked_at: r.try_get("revoked_at")?,
                affected: serde_json::from_str(&r.try_get::<String, _>("affected")?)
                    .unwrap_or_default(),
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

/// The revocations of nodes that held the key of `certificate_id`.
pub async fn revocations_holding(db: &Db, certificate_id: i64) -> AppResult<Vec<Revocation>> {
    Ok(revocations(db)
        .await?
        .into_iter()
        .filter(|r| {
            r.affected
                .iter()
                .any(|h| h.certificate_id == certificate_id)
        })
        .collect())
}

/// A node a certificate's key is sealed to now.
#[derive(Clone, Debug, Serialize)]
pub struct SealedTo {
    pub node: String,
    pub pair: String,
    pub recipient_fingerprint: String,
    pub confirmed_by: Option<String>,
    pub confirmed_at: Option<i64>,
}

/// Where the keys of an app's certificates are sealed now (besides the vault), by certificate.
pub async fn sealed_to(
    db: &Db,
    app_id: i64,
) -> AppResult<std::collections::HashMap<i64, Vec<SealedTo>>> {
    let rows = sqlx::query(
        "SELECT k.certificate_id, p.name AS pair, n.slot, n.recipient, n.confirmed_via, n.confirmed_at, u.email AS confirmed_by \
         FROM node_keys k JOIN certificates c ON c.id = k.certificate_id JOIN edge_nodes n ON n.id = k.node_id \
         JOIN edge_pairs p ON p.id = n.pair_id LEFT JOIN users u ON u.id = n.confirmed_by \
         WHERE c.app_id = $1 ORDER BY p.name, n.slot",
    )
    .bind(app_id)
    .fetch_all(db)
    .await?;
    let mut out: std::collections::HashMap<i64, Vec<SealedTo>> = Default::default();
    for r in &rows {
        let pair: String = r.try_get("pair")?;
        let via: Option<String> = r.try_get("confirmed_via")?;
        out.entry(r.try_get("certificate_id")?)
            .or_default()
            .push(SealedTo {
                node: format!("{pair}-{}", r.try_get::<i64, _>("slot")?),
                recipient_fingerprint: super::recipient_fingerprint(
                    &r.try_get::<Option<String>, _>("recipient")?
                        .unwrap_or_default(),
                ),
                pair,
                confirmed_by: store::confirmer(via.as_deref(), r.try_get("confirmed_by")?),
                confirmed_at: r.try_get("confirmed_at")?,
            });
    }
    Ok(out)
}

/// Refuses a deployment of a key to `pair` unless both its nodes are confirmed.
pub fn require_confirmed(pair: &store::Pair) -> AppResult<()> {
    let unconfirmed: Vec<String> = pair
        .nodes
        .iter()
        .filter(|n| !n.holds_keys())
        .map(|n| format!("{} ({})", pair.node_name(n), n.state.as_str()))
        .collect();
    if unconfirmed.is_empty() {
        return Ok(());
    }
    Err(AppError::conflict(
        "pair_not_confirmed",
        format!(
            "Keys are sealed only to confirmed edge nodes, and {} of pair {} {} not: an admin must confirm (or replace) {} on the Edge pairs page first.",
            unconfirmed.join(" and "),
            pair.name,
            if unconfirmed.len() == 1 { "is" } else { "are" },
            if unconfirmed.len() == 1 { "it" } else { "them" },
        ),
    ))
}

/// Separation of duties: the person who created a pair, issued a node's token or confirmed a
/// node does not approve deployments of customers' keys to it.
pub fn check_separation(state: &AppState, approver: &User, pair: &store::Pair) -> AppResult<()> {
    if state.config.separation_of_duties && pair.vouched_by(approver.id) {
        return Err(AppError::conflict(
            "separation_of_duties",
            format!(
                "You created or confirmed edge pair {}: another staff member must approve deployments of customers' keys to it (two-person rule).",
                pair.name
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_compared_with_or_without_their_prefix() {
        let fp = crate::edge::recipient_fingerprint("age1example");
        assert!(fp.starts_with("SHA256:"));
        assert_eq!(normalize_fingerprint(&fp), fp);
        assert_eq!(normalize_fingerprint(&format!(" {} ", &fp[7..])), fp);
    }
}
