//! Delivers queued webhook messages: claims due ones with a lease (so one instance sends each),
//! signs them, checks where the URL resolves now (the backends' rules: no loopback, link-local
//! — cloud metadata — or unspecified address, unless `CERTDROP_ALLOW_PRIVATE_BACKENDS`) and
//! connects to that checked address only, then records the answer. A 2xx delivers; anything else is retried after 5 s,
//! 30 s, 2 min, 10 min, 30 min, 1 h, 2 h, 4 h, then the delivery is marked failed.

use std::time::Duration;

use anyhow::Context;

use super::store;
use crate::{db, state::AppState};

const BACKOFF: [i64; 8] = [5, 30, 120, 600, 1800, 3600, 7200, 14400];
const LEASE_SECONDS: i64 = 30;

pub async fn run(state: AppState) {
    loop {
        // Sealed, nothing here can open a key: wait for the unseal, failing nothing.
        state.vault.wait_unsealed().await;
        if let Err(err) = deliver_due(&state).await {
            tracing::warn!(
                error = format!("{err:#}"),
                "webhooks: could not look for deliveries"
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Sends what is due now; returns how many were tried.
pub async fn deliver_due(state: &AppState) -> anyhow::Result<usize> {
    let now = db::now();
    let due: Vec<(i64, i64, String, String, i64)> = sqlx::query_as(
        "SELECT id, endpoint_id, event_id, payload, attempts FROM webhook_deliveries \
         WHERE state = 'pending' AND next_attempt_at <= $1 AND lease_until < $1 ORDER BY id LIMIT 20",
    )
    .bind(now)
    .fetch_all(&state.db)
    .await?;
    let mut tried = 0;
    for (id, endpoint, event_id, payload, attempts) in due {
        let claimed = sqlx::query(
            "UPDATE webhook_deliveries SET lease_until = $1, attempts = attempts + 1 \
             WHERE id = $2 AND state = 'pending' AND attempts = $3",
        )
        .bind(now + LEASE_SECONDS)
        .bind(id)
        .bind(attempts)
        .execute(&state.db)
        .await?;
        if claimed.rows_affected() != 1 {
            continue;
        }
        tried += 1;
        let outcome = send(state, endpoint, &event_id, &payload).await;
        let (status, error) = match &outcome {
            Ok(status) if (200..300).contains(status) => (Some(i64::from(*status)), None),
            Ok(status) => (
                Some(i64::from(*status)),
                Some(format!("the endpoint answered {status}")),
            ),
            Err(err) => (None, Some(format!("{err:#}"))),
        };
        let attempt = usize::try_from(attempts).unwrap_or(0);
        let (next_state, next_at) = match (&error, BACKOFF.get(attempt)) {
            (None, _) => ("delivered", now),
            (Some(_), Some(wait)) => ("pending", db::now() + wait),
            (Some(_), None) => ("failed", now),
        };
        sqlx::query(
            "UPDATE webhook_deliveries SET state = $1, next_attempt_at = $2, lease_until = 0, last_status = $3, \
             last_error = $4, delivered_at = CASE WHEN $1 = 'delivered' THEN $5 ELSE delivered_at END WHERE id = $6",
        )
        .bind(next_state)
        .bind(next_at)
        .bind(status)
        .bind(&error)
        .bind(db::now())
        .bind(id)
        .execute(&state.db)
        .await?;
    }
    Ok(tried)
}

/// POSTs one signed message; the endpoint's HTTP status, or why it could not be reached.
async fn send(
    state: &AppState,
    endpoint: i64,
    event_id: &str,
    payload: &str,
) -> anyhow::Result<u16> {
    let (url, sealed) = store::sealed_secret(&state.db, endpoint)
        .await?
        .context("the endpoint was removed")?;
    let vault = state.vault.clone();
    let secret = tokio::task::spawn_blocking(move || vault.open(&sealed)).await??;
    let timestamp = db::now();
    let signature = super::signature(secret.pem(), event_id, timestamp, payload)?;
    let parsed = url::Url::parse(&url)?;
    let host = parsed
        .host_str()
        .context("the URL has no host")?
        .to_string();
    let port = parsed
        .port_or_known_default()
        .context("the URL has no port")?;
    let lookup = tokio::net::lookup_host((host.trim_matches(['[', ']']), port));
    let addrs: Vec<std::net::SocketAddr> = tokio::time::timeout(Duration::from_secs(5), lookup)
        .await
        .context("resolving the endpoint's host timed out")?
        .with_context(|| format!("{host} does not resolve"))?
        .collect();
    let addr = *addrs
        .first()
        .with_context(|| format!("{host} resolves to nothing"))?;
    for a in &addrs {
        if let Some(why) =
            crate::edge::backend::refusal(a.ip(), state.config.allow_private_backends)
        {
            anyhow::bail!(
                "{host} resolves to {}, {why}: certdrop does not send webhooks there",
                a.ip()
            );
        }
    }
    // Pinned to the address just checked, so a second lookup cannot point elsewhere.
    let client = reqwest::Client::builder()
        .resolve(&host, addr)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()?;
    let resp = client
        .post(parsed)
        .header("content-type", "application/json")
        .header("user-agent", "certdrop-webhooks")
        .header("webhook-id", event_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(payload.to_string())
        .send()
        .await?;
    Ok(resp.status().as_u16())
}
