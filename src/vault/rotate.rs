//! `certdrop vault:rotate`: reseal every stored key (and TOTP secret) to a fresh identity, then
//! retire the old one.
//! Each key is resealed in its own guarded update, so the pass can be interrupted at any point:
//! until the rotation finishes, the current, next and retired identity files all stay on disk
//! and the vault opens keys with any of them. Running it again completes the rotation.

use std::time::Duration;

use age::x25519::Identity;
use anyhow::Context;
use sqlx::Row;

use super::{IdentityPaths, UnsealKey, open_with, read_identity, seal_to, write_identity};
use crate::db::Db;

#[derive(Debug)]
pub struct Rotation {
    pub resealed: u64,
    pub recipient: String,
}

/// `key` opens (and wraps) the identity files of a split vault.
pub async fn rotate(
    db: &Db,
    paths: &IdentityPaths,
    key: Option<&UnsealKey>,
) -> anyhow::Result<Rotation> {
    let current = read_identity(&paths.current, key)?;
    let next = if paths.next().exists() {
        read_identity(&paths.next(), key)?
    } else {
        let fresh = Identity::generate();
        write_identity(&paths.next(), &fresh, key)?;
        fresh
    };
    let mut openers = vec![current.clone(), next.clone()];
    if paths.retired().exists() {
        openers.push(read_identity(&paths.retired(), key)?);
    }
    let recipient = next.to_public().to_string();

    let mut resealed = reseal_all(db, &openers, &recipient).await?;

    // Swap: the old identity stays on disk as "retired" until stragglers are resealed.
    write_identity(&paths.retired(), &current, key)?;
    std::fs::rename(paths.next(), &paths.current).context("installing the new vault identity")?;

    // Uploads in flight during the swap may have sealed to the old identity; give them time to
    // commit, then reseal them too.
    resealed += reseal_all(db, &openers, &recipient).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    resealed += reseal_all(db, &openers, &recipient).await?;

    std::fs::remove_file(paths.retired()).context("retiring the old vault identity")?;
    Ok(Rotation {
        resealed,
        recipient,
    })
}

/// What the vault seals: private keys of certificates (the platform's too), of CSRs and ACME
/// orders, the ACME account's credentials, webhook endpoints' signing secrets, and accounts'
/// TOTP secrets.
const SEALED_COLUMNS: [(&str, &str, &str); 6] = [
    ("acme_accounts", "sealed_credentials", "vault_recipient"),
    ("webhook_endpoints", "secret_sealed", "vault_recipient"),
    ("certificates", "sealed_key", "vault_recipient"),
    ("platform_certificates", "sealed_key", "vault_recipient"),
    ("generated_keys", "sealed_key", "vault_recipient"),
    ("users", "totp_sealed", "totp_vault_recipient"),
];

/// Reseals, one row at a time, every stored secret not yet sealed to `recipient`.
async fn reseal_all(db: &Db, openers: &[Identity], recipient: &str) -> anyhow::Result<u64> {
    let mut done = 0;
    for (table, sealed_column, recipient_column) in SEALED_COLUMNS {
        done += reseal_table(
            db,
            openers,
            recipient,
            table,
            sealed_column,
            recipient_column,
        )
        .await?;
    }
    Ok(done)
}

async fn reseal_table(
    db: &Db,
    openers: &[Identity],
    recipient: &str,
    table: &str,
    sealed_column: &str,
    recipient_column: &str,
) -> anyhow::Result<u64> {
    let mut done = 0;
    let mut after = 0i64;
    loop {
        let rows = sqlx::query(&format!(
            "SELECT id, {sealed_column} AS sealed FROM {table} \
             WHERE {sealed_column} IS NOT NULL AND {sealed_column} <> '' AND {recipient_column} <> $1 AND id > $2 ORDER BY id LIMIT 100"
        ))
        .bind(recipient)
        .bind(after)
        .fetch_all(db)
        .await?;
        if rows.is_empty() {
            return Ok(done);
        }
        for row in rows {
            let id: i64 = row.try_get("id")?;
            let sealed: String = row.try_get("sealed")?;
            after = id;
            let key = open_with(openers, &sealed).with_context(|| {
                format!("{table} {id}: its sealed secret opens with none of the vault identities")
            })?;
            let fresh = seal_to(recipient, &key)?;
            // Guarded on the old ciphertext: a concurrent change to the row is never overwritten.
            sqlx::query(&format!(
                "UPDATE {table} SET {sealed_column} = $1, {recipient_column} = $2 WHERE id = $3 AND {sealed_column} = $4"
            ))
            .bind(&fresh.armored)
            .bind(recipient)
            .bind(id)
            .bind(&sealed)
            .execute(db)
            .await?;
            done += 1;
        }
    }
}
