//! Keeps an OCSP staple for every certificate an edge pair serves, where the certificate names
//! a responder: fetched by the control plane (one fetch for both nodes), checked (`ocsp`),
//! refreshed halfway through its validity, and handed to the nodes with their configuration.
//! A failure is retried with backoff and never touches serving: the nodes keep the last good
//! staple until it expires, then serve without one.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use sqlx::Row;

use super::{backend, ocsp};
use crate::{db, state::AppState};

/// A responder's answer may be no larger than this.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// The longest wait before trying a failing responder again.
const MAX_BACKOFF_SECONDS: i64 = 3600;

pub async fn run(state: AppState) {
    loop {
        if let Err(err) = refresh_due(&state).await {
            tracing::warn!(
                error = format!("{err:#}"),
                "ocsp: could not refresh staples"
            );
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Served certificates never looked at, and staples due for a refresh.
async fn refresh_due(state: &AppState) -> anyhow::Result<()> {
    let rows = sqlx::query(
        "SELECT DISTINCT c.id, c.chain_pem, s.failures FROM certificates c JOIN edge_pairs p ON p.certificate_id = c.id \
         LEFT JOIN ocsp_staples s ON s.certificate_id = c.id \
         WHERE s.certificate_id IS NULL OR (s.responder_url IS NOT NULL AND s.refresh_at <= $1)",
    )
    .bind(db::now())
    .fetch_all(&state.db)
    .await?;
    for row in rows {
        let id: i64 = row.try_get("id")?;
        let failures = row.try_get::<Option<i64>, _>("failures")?.unwrap_or(0);
        refresh(state, id, &row.try_get::<String, _>("chain_pem")?, failures).await?;
    }
    Ok(())
}

async fn refresh(
    state: &AppState,
    cert_id: i64,
    chain_pem: &str,
    failures: i64,
) -> anyhow::Result<()> {
    let chain: Vec<CertificateDer> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    let (Some(leaf), Some(issuer)) = (chain.first(), chain.get(1)) else {
        return no_responder(state, cert_id).await;
    };
    let Some(url) = ocsp::responder_url(leaf) else {
        return no_responder(state, cert_id).await;
    };
    let now = db::now();
    let outcome = match ocsp::request(leaf, issuer) {
        Ok(request) => fetch(&url, request, state.config.allow_private_backends)
            .await
            .and_then(|answer| ocsp::check(&answer, leaf, issuer, now)),
        Err(why) => Err(why),
    };
    match outcome {
        Ok(staple) => {
            let half = staple.this_update + (staple.next_update - staple.this_update) / 2;
            let refresh_at = half.clamp(now + 60, (staple.next_update - 60).max(now + 60));
            let mut tx = state.db.begin().await?;
            sqlx::query(
                "INSERT INTO ocsp_staples (certificate_id, responder_url, response, this_update, next_update, fetched_at, refresh_at, failures, last_error) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 0, NULL) ON CONFLICT (certificate_id) DO UPDATE SET \
                 responder_url = excluded.responder_url, response = excluded.response, this_update = excluded.this_update, \
                 next_update = excluded.next_update, fetched_at = excluded.fetched_at, refresh_at = excluded.refresh_at, \
                 failures = 0, last_error = NULL",
            )
            .bind(cert_id)
            .bind(&url)
            .bind(STANDARD.encode(&staple.der))
            .bind(staple.this_update)
            .bind(staple.next_update)
            .bind(now)
            .bind(refresh_at)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE edge_pairs SET config_version = config_version + 1 WHERE certificate_id = $1")
                .bind(cert_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            state.config_changed.notify_waiters();
            tracing::info!(certificate = cert_id, responder = %url, next_update = staple.next_update, "ocsp: new staple");
        }
        Err(why) => {
            let backoff = (60i64 << failures.min(6)).min(MAX_BACKOFF_SECONDS);
            sqlx::query(
                "INSERT INTO ocsp_staples (certificate_id, responder_url, refresh_at, failures, last_error) VALUES ($1, $2, $3, 1, $4) \
                 ON CONFLICT (certificate_id) DO UPDATE SET responder_url = excluded.responder_url, refresh_at = excluded.refresh_at, \
                 failures = ocsp_staples.failures + 1, last_error = excluded.last_error",
            )
            .bind(cert_id)
            .bind(&url)
            .bind(now + backoff)
            .bind(&why)
            .execute(&state.db)
            .await?;
            tracing::warn!(certificate = cert_id, responder = %url, error = %why, retry_in_s = backoff, "ocsp: no staple; serving goes on without one");
        }
    }
    Ok(())
}

/// Marks a certificate that names no responder (or has no issuer to ask about): never fetched.
async fn no_responder(state: &AppState, cert_id: i64) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO ocsp_staples (certificate_id, responder_url, refresh_at) VALUES ($1, NULL, 0) \
         ON CONFLICT (certificate_id) DO NOTHING",
    )
    .bind(cert_id)
    .execute(&state.db)
    .await?;
    Ok(())
}

/// POSTs the request to the responder. The URL comes from a customer's certificate, so it is
/// held to the backends' address rules (no loopback, no link-local metadata) and no redirect
/// is followed.
async fn fetch(url: &str, request: Vec<u8>, allow_private: bool) -> Result<Vec<u8>, String> {
    let parsed =
        url::Url::parse(url).map_err(|e| format!("the responder URL {url} is not valid: {e}"))?;
    let host = parsed
        .host_str()
        .ok_or("the responder URL has no host")?
        .to_string();
    let port = parsed.port_or_known_default().unwrap_or(80);
    let lookup = tokio::net::lookup_host((host.trim_matches(['[', ']']), port));
    let found: Vec<std::net::SocketAddr> = tokio::time::timeout(Duration::from_secs(5), lookup)
        .await
        .map_err(|_| format!("{host} did not resolve in time"))?
        .map_err(|e| format!("{host} does not resolve: {e}"))?
        .collect();
    let allowed: Vec<std::net::SocketAddr> = found
        .iter()
        .filter(|a| backend::refusal(a.ip(), allow_private).is_none())
        .copied()
        .collect();
    if allowed.is_empty() {
        return Err(format!(
            "the responder {host} resolves to no address certdrop may reach"
        ));
    }
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .resolve_to_addrs(&host, &allowed)
        .build()
        .map_err(|e| format!("no HTTP client: {e}"))?;
    let mut resp = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/ocsp-request")
        .body(request)
        .send()
        .await
        .map_err(|e| format!("the responder {url} did not answer: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("the responder {url} answered {}", resp.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("the responder's answer broke off: {e}"))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_RESPONSE_BYTES {
            return Err(format!(
                "the responder's answer is larger than {MAX_RESPONSE_BYTES} bytes"
            ));
        }
    }
    Ok(body)
}
