//! SQL for edge pairs, their nodes, what they serve, deploy jobs and verifications.
//! Node credentials (enrollment and node tokens) are stored only as SHA-256 hashes.

use serde::Serialize;
use sqlx::{AnyConnection, Row};

use super::NodeState;
use crate::{
    accounts::tokens::{self, NewToken},
    db::{self, Db},
    error::{AppError, AppResult},
};

#[derive(Clone, Debug, Serialize)]
pub struct Node {
    pub id: i64,
    pub pair_id: i64,
    pub slot: i64,
    pub state: NodeState,
    pub enrolled: bool,
    pub recipient: Option<String>,
    pub recipient_fingerprint: Option<String>,
    pub address: Option<String>,
    pub http_address: Option<String>,
    pub last_seen_at: Option<i64>,
    pub applied_version: i64,
    /// Who issued the enrollment token this node used (the pair's creator, or a replacement's).
    pub issued_by: Option<i64>,
    pub confirmed_by: Option<i64>,
    pub confirmed_by_email: Option<String>,
    /// `admin` or `fleet_key`.
    pub confirmed_via: Option<String>,
    pub confirmed_at: Option<i64>,
    /// The address that was confirmed with the node: published only while it is the address.
    pub confirmed_address: Option<String>,
    /// What the fleet key's attestation named, when it confirmed the node.
    pub attestation: Option<super::fleet::Claim>,
}

impl Node {
    /// Whether keys may be sealed to this node now.
    pub fn holds_keys(&self) -> bool {
        self.state == NodeState::Confirmed && self.recipient.is_some()
    }

    /// Whether the node's address may be published (DNS records, an app's target): only a
    /// confirmed node's, and only the address that was confirmed with it.
    pub fn address_confirmed(&self) -> bool {
        self.state == NodeState::Confirmed
            && self.address.is_some()
            && self.address == self.confirmed_address
    }

    /// Who vouched for the node, as the pages and the API say it.
    pub fn confirmed_by_label(&self) -> Option<String> {
        confirmer(
            self.confirmed_via.as_deref(),
            self.confirmed_by_email.clone(),
        )
    }
}

/// Who confirmed a node: the fleet key, or the admin's email.
pub fn confirmer(via: Option<&str>, admin_email: Option<String>) -> Option<String> {
    match via {
        Some("fleet_key") => Some("the fleet key".into()),
        _ => admin_email,
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Pair {
    pub id: i64,
    pub name: String,
    pub app: Option<String>,
    pub app_id: Option<i64>,
    pub config_version: i64,
    pub certificate_id: Option<i64>,
    pub nodes: Vec<Node>,
    pub created_at: i64,
    pub created_by: Option<i64>,
    pub created_by_email: Option<String>,
}

impl Pair {
    pub fn node_name(&self, node: &Node) -> String {
        format!("{}-{}", self.name, node.slot)
    }

    /// Whether `user_id` created the pair, issued a node's token or confirmed a node.
    pub fn vouched_by(&self, user_id: i64) -> bool {
        self.created_by == Some(user_id)
            || self
                .nodes
                .iter()
                .any(|n| n.issued_by == Some(user_id) || n.confirmed_by == Some(user_id))
    }
}

fn node_from_row(row: &sqlx::any::AnyRow) -> Result<Node, sqlx::Error> {
    let state: String = row.try_get("state")?;
    let recipient: Option<String> = row.try_get("recipient")?;
    Ok(Node {
        id: row.try_get("id")?,
        pair_id: row.try_get("pair_id")?,
        slot: row.try_get("slot")?,
        state: NodeState::parse(&state)
            .ok_or_else(|| sqlx::Error::Decode(format!("node state {state}").into()))?,
        enrolled: row
            .try_get::<Option<String>, _>("node_token_hash")?
            .is_some(),
        recipient_fingerprint: recipient.as_deref().map(super::recipient_fingerprint),
        recipient,
        address: row.try_get("address")?,
        http_address: row.try_get("http_address")?,
        last_seen_at: row.try_get("last_seen_at")?,
        applied_version: row.try_get("applied_version")?,
        issued_by: row.try_get("issued_by")?,
        confirmed_by: row.try_get("confirmed_by")?,
        confirmed_by_email: row.try_get("confirmed_by_email")?,
        confirmed_via: row.try_get("confirmed_via")?,
        confirmed_at: row.try_get("confirmed_at")?,
        confirmed_address: row.try_get("confirmed_address")?,
        attestation: row
            .try_get::<Option<String>, _>("attestation")?
            .and_then(|a| serde_json::from_str(&a).ok()),
    })
}

const NODE_SELECT: &str = "SELECT n.id, n.pair_id, n.slot, n.state, n.node_token_hash, n.recipient, n.address, \
     n.http_address, n.last_seen_at, n.applied_version, n.issued_by, n.confirmed_by, cu.email AS confirmed_by_email, \
     n.confirmed_via, n.confirmed_at, n.confirmed_address, n.attestation \
     FROM edge_nodes n LEFT JOIN users cu ON cu.id = n.confirmed_by";

/// A new pair and its two single-use enrollment tokens (shown once).
pub async fn create_pair(db: &Db, name: &str, created_by: i64) -> AppResult<(i64, [NewToken; 2])> {
    let mut tx = db.begin().await?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO edge_pairs (name, created_at, created_by) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(name)
    .bind(db::now())
    .bind(created_by)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| {
        if db::is_unique_violation(&e) {
            AppError::conflict(
                "pair_name_taken",
                format!("An edge pair named {name} exists; choose another name."),
            )
            .on_field("name")
        } else {
            e.into()
        }
    })?;
    let tokens = [tokens::generate(), tokens::generate()];
    for (slot, token) in tokens.iter().enumerate() {
        sqlx::query(
            "INSERT INTO edge_nodes (pair_id, slot, enroll_token_hash, issued_by) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(slot as i64 + 1)
        .bind(&token.hash)
        .bind(created_by)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok((id, tokens))
}

/// Every pair with its nodes (two queries, not one per pair).
pub async fn list_pairs(db: &Db) -> AppResult<Vec<Pair>> {
    pairs_where(db, None).await
}

pub async fn pair(db: &Db, id: i64) -> AppResult<Pair> {
    pairs_where(db, Some(id))
        .await?
        .pop()
        .ok_or_else(|| AppError::not_found("edge pair"))
}

async fn pairs_where(db: &Db, id: Option<i64>) -> AppResult<Vec<Pair>> {
    let rows = sqlx::query(
        "SELECT p.id, p.name, a.name AS app, p.app_id, p.config_version, p.certificate_id, p.created_at, \
         p.created_by, u.email AS created_by_email \
         FROM edge_pairs p LEFT JOIN apps a ON a.id = p.app_id LEFT JOIN users u ON u.id = p.created_by \
         WHERE ($1 IS NULL OR p.id = $1) ORDER BY p.id",
    )
    .bind(id)
    .fetch_all(db)
    .await?;
    let nodes = sqlx::query(&format!(
        "{NODE_SELECT} WHERE ($1 IS NULL OR n.pair_id = $1) ORDER BY n.pair_id, n.slot"
    ))
    .bind(id)
    .fetch_all(db)
    .await?
    .iter()
    .map(node_from_row)
    .collect::<Result<Vec<_>, _>>()?;
    rows.iter()
        .map(|row| {
            let id: i64 = row.try_get("id")?;
            Ok(Pair {
                id,
                name: row.try_get("name")?,
                app: row.try_get("app")?,
                app_id: row.try_get("app_id")?,
                config_version: row.try_get("config_version")?,
                certificate_id: row.try_get("certificate_id")?,
                nodes: nodes.iter().filter(|n| n.pair_id == id).cloned().collect(),
                created_at: row.try_get("created_at")?,
                created_by: row.try_get("created_by")?,
                created_by_email: row.try_get("created_by_email")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

fn bad_enroll_token() -> AppError {
    AppError::new(
        axum::http::StatusCode::UNAUTHORIZED,
        crate::error::ErrorItem::new(
            "bad_enroll_token",
            "This enrollment token is unknown or already used. Ask staff for a new token for this node (Edge pairs page).",
        ),
    )
}

/// The slot an unspent enrollment token is for: `(node id, pair name, slot)`.
pub async fn slot_of_enroll_token(db: &Db, enroll_token: &str) -> AppResult<(i64, String, i64)> {
    sqlx::query_as(
        "SELECT n.id, p.name, n.slot FROM edge_nodes n JOIN edge_pairs p ON p.id = n.pair_id \
         WHERE n.enroll_token_hash = $1 AND n.state = 'awaiting'",
    )
    .bind(tokens::hash(enroll_token))
    .fetch_optional(db)
    .await?
    .ok_or_else(bad_enroll_token)
}

/// Spends an enrollment token (once) and records the node's recipient and addresses. The node
/// is inert (`enrolled`) until an admin confirms it, unless the fleet key attested it for this
/// slot (`attested`): then it is confirmed with the address it gave. A recipient another node
/// holds is refused by the database too (`recipient_in_use`), whatever raced.
pub async fn enroll(
    db: &Db,
    node_id: i64,
    enroll_token: &str,
    recipient: &str,
    address: &str,
    http_address: Option<&str>,
    attested: Option<&super::fleet::Claim>,
) -> AppResult<(Node, NewToken)> {
    let node_token = tokens::generate();
    let now = db::now();
    let (state, via, at, confirmed_address) = match attested {
        Some(_) => ("confirmed", Some("fleet_key"), Some(now), Some(address)),
        None => ("enrolled", None, None, None),
    };
    let attestation = attested
        .map(serde_json::to_string)
        .transpose()
        .map_err(anyhow::Error::from)?;
    let id: Option<i64> = sqlx::query_scalar(
        "UPDATE edge_nodes SET enroll_token_hash = NULL, node_token_hash = $1, recipient = $2, address = $3, \
         http_address = $4, enrolled_at = $5, last_seen_at = $5, state = $6, confirmed_via = $7, confirmed_at = $8, \
         confirmed_address = $9, attestation = $10 \
         WHERE id = $11 AND enroll_token_hash = $12 AND state = 'awaiting' RETURNING id",
    )
    .bind(&node_token.hash)
    .bind(recipient)
    .bind(address)
    .bind(http_address)
    .bind(now)
    .bind(state)
    .bind(via)
    .bind(at)
    .bind(confirmed_address)
    .bind(attestation)
    .bind(node_id)
    .bind(tokens::hash(enroll_token))
    .fetch_optional(db)
    .await
    .map_err(|e| {
        if db::is_unique_violation(&e) {
            super::custody::recipient_in_use(recipient, None)
        } else {
            e.into()
        }
    })?;
    let id = id.ok_or_else(bad_enroll_token)?;
    Ok((node(db, id).await?, node_token))
}

pub async fn node(db: &Db, id: i64) -> AppResult<Node> {
    let row = sqlx::query(&format!("{NODE_SELECT} WHERE n.id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await?
        .ok_or_else(|| AppError::not_found("edge node"))?;
    Ok(node_from_row(&row)?)
}

pub async fn node_by_token(db: &Db, token: &str) -> AppResult<Option<Node>> {
    let row = sqlx::query(&format!("{NODE_SELECT} WHERE n.node_token_hash = $1"))
        .bind(tokens::hash(token))
        .fetch_optional(db)
        .await?;
    Ok(row.as_ref().map(node_from_row).transpose()?)
}

/// Whether `token` is a revoked node's credential, which now only orders it to wipe.
pub async fn has_wipe_order(db: &Db, token: &str) -> AppResult<bool> {
    Ok(
        sqlx::query_scalar::<_, i64>("SELECT node_id FROM node_wipe_orders WHERE token_hash = $1")
            .bind(tokens::hash(token))
            .fetch_optional(db)
            .await?
            .is_some(),
    )
}

/// Records that a node is alive and which configuration version it has applied.
pub async fn heartbeat(db: &Db, node_id: i64, applied: i64) -> AppResult<()> {
    sqlx::query("UPDATE edge_nodes SET last_seen_at = $1, applied_version = $2 WHERE id = $3")
        .bind(db::now())
        .bind(applied)
        .bind(node_id)
        .execute(db)
        .await?;
    Ok(())
}

/// The free pair an approval by someone other than `not_vouched_by` would take: no app holds
/// it, both its nodes are confirmed, and (under separation of duties) that person neither
/// created it nor issued or confirmed a node of it.
pub async fn free_pair_for(
    conn: &mut AnyConnection,
    not_vouched_by: Option<i64>,
) -> AppResult<Option<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT p.id FROM edge_pairs p WHERE p.app_id IS NULL \
         AND (SELECT COUNT(*) FROM edge_nodes n WHERE n.pair_id = p.id AND n.state = 'confirmed') = 2 \
         AND ($1 IS NULL OR (COALESCE(p.created_by, 0) <> $1 AND NOT EXISTS (SELECT 1 FROM edge_nodes n \
              WHERE n.pair_id = p.id AND (COALESCE(n.issued_by, 0) = $1 OR COALESCE(n.confirmed_by, 0) = $1)))) \
         ORDER BY p.id LIMIT 1",
    )
    .bind(not_vouched_by)
    .fetch_optional(conn)
    .await?)
}

pub async fn assign_free_pair(
    conn: &mut AnyConnection,
    app_id: i64,
    not_vouched_by: Option<i64>,
) -> AppResult<Option<i64>> {
    // A concurrent approval may take the pair we picked: pick again a few times.
    for _ in 0..5 {
        let Some(pair) = free_pair_for(conn, not_vouched_by).await? else {
            return Ok(None);
        };
        let taken =
            sqlx::query("UPDATE edge_pairs SET app_id = $1 WHERE id = $2 AND app_id IS NULL")
                .bind(app_id)
                .bind(pair)
                .execute(&mut *conn)
                .await?;
        if taken.rows_affected() == 1 {
            return Ok(Some(pair));
        }
    }
    Ok(None)
}

pub async fn pair_of_app(conn: &mut AnyConnection, app_id: i64) -> AppResult<Option<i64>> {
    Ok(
        sqlx::query_scalar("SELECT id FROM edge_pairs WHERE app_id = $1")
            .bind(app_id)
            .fetch_optional(conn)
            .await?,
    )
}

/// A deploy job for an approved ticket (one per ticket).
/// Queues the ticket's deployment job: a new one, or — for a retry of a failed deployment —
/// the ticket's finished job again as its next run. Returns the run.
pub async fn create_job(
    conn: &mut AnyConnection,
    ticket_id: i64,
    pair_id: i64,
    target: Option<i64>,
) -> AppResult<i64> {
    let now = db::now();
    let run: Option<i64> = sqlx::query_scalar(
        "INSERT INTO deploy_jobs (ticket_id, pair_id, target_certificate_id, state, created_at, updated_at) \
         VALUES ($1, $2, $3, 'pending', $4, $4) \
         ON CONFLICT (ticket_id) DO UPDATE SET pair_id = excluded.pair_id, \
           target_certificate_id = excluded.target_certificate_id, state = 'pending', \
           config_version = NULL, lease_until = 0, run = deploy_jobs.run + 1, updated_at = excluded.updated_at \
         WHERE deploy_jobs.state = 'done' \
         RETURNING run",
    )
    .bind(ticket_id)
    .bind(pair_id)
    .bind(target)
    .bind(now)
    .fetch_optional(conn)
    .await?;
    run.ok_or_else(|| {
        AppError::conflict(
            "invalid_transition",
            format!("Ticket #{ticket_id}'s deployment is still running."),
        )
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct Verification {
    pub node_id: i64,
    pub node: String,
    pub address: Option<String>,
    pub hostname: String,
    pub fingerprint_sha256: Option<String>,
    pub verified_at: i64,
    pub error: Option<String>,
}

pub async fn verifications(db: &Db, ticket_id: i64) -> AppResult<Vec<Verification>> {
    let rows = sqlx::query(
        "SELECT v.node_id, p.name AS pair, n.slot, n.address, v.hostname, v.fingerprint_sha256, v.verified_at, v.error \
         FROM verifications v JOIN edge_nodes n ON n.id = v.node_id JOIN edge_pairs p ON p.id = n.pair_id \
         WHERE v.ticket_id = $1 AND v.run = (SELECT j.run FROM deploy_jobs j WHERE j.ticket_id = $1) ORDER BY v.id",
    )
    .bind(ticket_id)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Verification {
                node_id: r.try_get("node_id")?,
                node: format!(
                    "{}-{}",
                    r.try_get::<String, _>("pair")?,
                    r.try_get::<i64, _>("slot")?
                ),
                address: r.try_get("address")?,
                hostname: r.try_get("hostname")?,
                fingerprint_sha256: r.try_get("fingerprint_sha256")?,
                verified_at: r.try_get("verified_at")?,
                error: r.try_get("error")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

/// The pair a ticket's deploy job runs on, if the ticket was approved.
pub async fn job_pair(db: &Db, ticket_id: i64) -> AppResult<Option<Pair>> {
    let pair_id: Option<i64> =
        sqlx::query_scalar("SELECT pair_id FROM deploy_jobs WHERE ticket_id = $1")
            .bind(ticket_id)
            .fetch_optional(db)
            .await?;
    match pair_id {
        Some(id) => Ok(Some(pair(db, id).await?)),
        None => Ok(None),
    }
}

/// Bumps the configuration version of the pair serving `app_id`, if any, so its nodes fetch
/// the app's settings again. Returns whether a pair was told.
pub async fn bump_config_of_app(db: &Db, app_id: i64) -> AppResult<bool> {
    let done =
        sqlx::query("UPDATE edge_pairs SET config_version = config_version + 1 WHERE app_id = $1")
            .bind(app_id)
            .execute(db)
            .await?;
    Ok(done.rows_affected() > 0)
}

/// Where edge nodes listen (their advertised TLS and plain-HTTP addresses), so no app's backend
/// points back at an edge.
pub async fn node_addresses(db: &Db) -> AppResult<Vec<std::net::SocketAddr>> {
    let rows: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT address, http_address FROM edge_nodes WHERE address IS NOT NULL OR http_address IS NOT NULL",
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .flat_map(|(a, h)| [a, h])
        .flatten()
        .filter_map(|a| a.parse().ok())
        .collect())
}

/// `(app id, advertised host)` for the apps among `app_ids` that hold a pair: one query. Only
/// confirmed nodes at their confirmed addresses: a self-declared address is never published.
pub async fn advertised_hosts_of_apps(
    conn: &mut AnyConnection,
    app_ids: &[i64],
) -> AppResult<Vec<(i64, String)>> {
    if app_ids.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders: Vec<String> = (1..=app_ids.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT p.app_id, n.address FROM edge_pairs p JOIN edge_nodes n ON n.pair_id = p.id \
         WHERE p.app_id IN ({}) AND n.state = 'confirmed' AND n.address = n.confirmed_address ORDER BY p.app_id, n.slot",
        placeholders.join(", ")
    );
    let mut query = sqlx::query_as::<_, (i64, String)>(&sql);
    for id in app_ids {
        query = query.bind(*id);
    }
    Ok(query
        .fetch_all(conn)
        .await?
        .into_iter()
        .map(|(app, address)| (app, host_of(&address)))
        .collect())
}

/// The host of `host:port` (brackets of an IPv6 literal removed).
fn host_of(address: &str) -> String {
    let host = match address.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => address,
    };
    host.trim_matches(['[', ']']).to_string()
}

/// The names (SANs) of the certificate the app's pair serves now; none without one.
pub async fn served_names(conn: &mut AnyConnection, app_id: i64) -> AppResult<Vec<String>> {
    let sans: Option<String> = sqlx::query_scalar(
        "SELECT c.sans FROM edge_pairs p JOIN certificates c ON c.id = p.certificate_id WHERE p.app_id = $1",
    )
    .bind(app_id)
    .fetch_optional(conn)
    .await?;
    Ok(sans
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default())
}
