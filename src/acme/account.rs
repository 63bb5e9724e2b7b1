//! certdrop's account with the CA: created on first use, its credentials (the account key
//! within) sealed in the vault at once and opened in memory only when an order runs.

use anyhow::Context;
use base64::Engine;
use instant_acme::{Account, AccountBuilder, AccountCredentials, ExternalAccountKey, NewAccount};
use secrecy::ExposeSecret;
use zeroize::Zeroizing;

use crate::{config::AcmeConfig, db, state::AppState, vault::PlainKey};

fn builder(acme: &AcmeConfig) -> anyhow::Result<AccountBuilder> {
    Ok(match &acme.ca_roots {
        Some(path) => Account::builder_with_root(path)
            .with_context(|| format!("CERTDROP_ACME_CA_ROOTS: cannot use {}", path.display()))?,
        None => Account::builder()?,
    })
}

/// The account for the configured directory: the stored one, or a new one (stored sealed; if
/// another instance stored one first, that one is used).
pub async fn get(state: &AppState, acme: &AcmeConfig) -> Result<Account, instant_acme::Error> {
    let directory = acme.directory.as_str();
    let stored: Option<String> =
        sqlx::query_scalar("SELECT sealed_credentials FROM acme_accounts WHERE directory = $1")
            .bind(directory)
            .fetch_optional(&state.db)
            .await
            .map_err(other)?;
    if let Some(sealed) = stored {
        let vault = state.vault.clone();
        let plain = tokio::task::spawn_blocking(move || vault.open(&sealed))
            .await
            .map_err(other)?
            .map_err(other)?;
        let credentials: AccountCredentials = serde_json::from_str(plain.pem()).map_err(other)?;
        return builder(acme)
            .map_err(other)?
            .from_credentials(credentials)
            .await;
    }
    let contact = acme.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let eab = match &acme.eab {
        Some((kid, key)) => Some(ExternalAccountKey::new(
            kid.clone(),
            &Zeroizing::new(
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(key.expose_secret().trim_end_matches('='))
                    .map_err(|_| {
                        other(anyhow::anyhow!(
                            "CERTDROP_ACME_EAB_HMAC_KEY is not base64url, as CAs give it"
                        ))
                    })?,
            ),
        )),
        None => None,
    };
    let (account, credentials) = builder(acme)
        .map_err(other)?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            directory.to_string(),
            eab.as_ref(),
        )
        .await?;
    let plain = PlainKey::from_pem(Zeroizing::new(
        serde_json::to_string(&credentials).map_err(other)?,
    ));
    let vault = state.vault.clone();
    let sealed = tokio::task::spawn_blocking(move || vault.seal(&plain))
        .await
        .map_err(other)?
        .map_err(other)?;
    let mut tx = state.db.begin().await.map_err(other)?;
    let stored = sqlx::query(
        "INSERT INTO acme_accounts (directory, account_url, sealed_credentials, vault_recipient, created_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (directory) DO NOTHING",
    )
    .bind(directory)
    .bind(account.id())
    .bind(&sealed.armored)
    .bind(&sealed.recipient)
    .bind(db::now())
    .execute(&mut *tx)
    .await
    .map_err(other)?;
    if stored.rows_affected() == 1 {
        crate::audit::record(
            &mut *tx,
            crate::audit::Entry::new(None, "acme.account_created", "acme_account", account.id())
                .detail(serde_json::json!({"directory": directory, "contact": acme.email})),
        )
        .await
        .map_err(other)?;
        tx.commit().await.map_err(other)?;
        tracing::info!(directory, account = account.id(), "acme: account created");
        return Ok(account);
    }
    drop(tx);
    Box::pin(get(state, acme)).await
}

/// Forgets the account the CA no longer knows (a CA reset, a deactivation): the next order
/// creates a new one.
pub async fn forget(state: &AppState, acme: &AcmeConfig) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM acme_accounts WHERE directory = $1")
        .bind(acme.directory.as_str())
        .execute(&state.db)
        .await?;
    Ok(())
}

fn other(err: impl Into<anyhow::Error>) -> instant_acme::Error {
    instant_acme::Error::Other(err.into().into())
}
