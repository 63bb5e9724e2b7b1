//! TLS session ticket keys, one set per edge pair: born here from the system's randomness,
//! sealed at birth to the recipients of both confirmed nodes of the pair (the control plane
//! keeps no way to open them, and never writes them anywhere in the clear), rotated every
//! 12 hours. Nodes get the newest key to issue tickets with and the previous one to accept
//! tickets issued before the rotation, so a visitor resumes on any worker of either node, and
//! after a node restarts. A revocation forgets the pair's keys at once.

use std::time::Duration;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use sqlx::AnyConnection;
use zeroize::Zeroizing;

use super::{custody, store};
use crate::{db, state::AppState, vault};

/// How long a key issues tickets; it is accepted for as long again after that.
pub const ROTATE_SECONDS: i64 = 12 * 3600;
/// A key: a 16-byte name (sent in each ticket, to pick the key) and a 32-byte AEAD key.
pub const KEY_BYTES: usize = 48;

/// Gives the pair a new key when it has none younger than `ROTATE_SECONDS`, sealed to its two
/// confirmed nodes, and keeps only that one and the one before. Returns whether it did (the
/// caller bumps the pair's configuration). A pair with a node that is not confirmed gets none.
pub async fn rotate_if_due(conn: &mut AnyConnection, pair: &store::Pair) -> anyhow::Result<bool> {
    if custody::require_confirmed(pair).is_err() {
        return Ok(false);
    }
    let recipients: Vec<String> = pair
        .nodes
        .iter()
        .filter_map(|n| n.recipient.clone())
        .collect();
    let [first, second] = recipients.as_slice() else {
        return Ok(false);
    };
    let mut secret = Zeroizing::new([0u8; KEY_BYTES]);
    SystemRandom::new()
        .fill(secret.as_mut())
        .map_err(|_| anyhow::anyhow!("the system's random source failed"))?;
    let sealed = vault::seal_secret_to(&recipients, secret.as_ref())?;
    drop(secret);
    let now = db::now();
    // Guarded like a sealed private key: only while both nodes are still confirmed with these
    // recipients (a revocation landing meanwhile wins), and only if no instance rotated first.
    let stored = sqlx::query(
        "INSERT INTO ticket_keys (pair_id, sealed, created_at) SELECT $1, $2, $3 \
         WHERE (SELECT COUNT(*) FROM edge_nodes WHERE pair_id = $1 AND state = 'confirmed' AND recipient IN ($4, $5)) = 2 \
         AND NOT EXISTS (SELECT 1 FROM ticket_keys WHERE pair_id = $1 AND created_at > $6)",
    )
    .bind(pair.id)
    .bind(&sealed)
    .bind(now)
    .bind(first)
    .bind(second)
    .bind(now - ROTATE_SECONDS)
    .execute(&mut *conn)
    .await?;
    if stored.rows_affected() != 1 {
        return Ok(false);
    }
    sqlx::query(
        "DELETE FROM ticket_keys WHERE pair_id = $1 AND id NOT IN \
         (SELECT id FROM ticket_keys WHERE pair_id = $1 ORDER BY id DESC LIMIT 2)",
    )
    .bind(pair.id)
    .execute(&mut *conn)
    .await?;
    tracing::info!(pair = %pair.name, "edge: new session ticket key sealed to the pair's nodes");
    Ok(true)
}

/// Forgets every key of the pair (a node was revoked, or the pair was released): tickets
/// issued with them stop resuming, and a new key comes once both nodes are confirmed.
pub async fn forget(conn: &mut AnyConnection, pair_id: i64) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM ticket_keys WHERE pair_id = $1")
        .bind(pair_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The keys a node gets, newest first (each sealed to both nodes of its pair); none while the
/// node is not confirmed (it could not open them).
pub async fn sealed_for(db: &db::Db, node_id: i64) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT k.sealed FROM ticket_keys k JOIN edge_nodes n ON n.pair_id = k.pair_id \
         WHERE n.id = $1 AND n.state = 'confirmed' ORDER BY k.id DESC LIMIT 2",
    )
    .bind(node_id)
    .fetch_all(db)
    .await?)
}

/// Rotates the keys of every serving pair when due; wakes once a minute.
pub async fn run(state: AppState) {
    loop {
        if let Err(err) = rotate_due(&state).await {
            tracing::warn!(
                error = format!("{err:#}"),
                "edge: could not rotate session ticket keys"
            );
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

async fn rotate_due(state: &AppState) -> anyhow::Result<()> {
    let due: Vec<i64> = sqlx::query_scalar(
        "SELECT p.id FROM edge_pairs p WHERE p.certificate_id IS NOT NULL \
         AND NOT EXISTS (SELECT 1 FROM ticket_keys k WHERE k.pair_id = p.id AND k.created_at > $1)",
    )
    .bind(db::now() - ROTATE_SECONDS)
    .fetch_all(&state.db)
    .await?;
    for pair_id in due {
        let pair = store::pair(&state.db, pair_id).await?;
        let mut tx = state.db.begin().await?;
        if rotate_if_due(&mut tx, &pair).await? {
            sqlx::query("UPDATE edge_pairs SET config_version = config_version + 1 WHERE id = $1")
                .bind(pair.id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            state.config_changed.notify_waiters();
        }
    }
    Ok(())
}
