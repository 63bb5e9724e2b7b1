//! The ACME worker. Orders are durable rows claimed with a lease (a control plane that dies
//! mid-way hands the order to the next, which resumes the CA's order by its URL): it orders
//! the certificate, publishes the challenges to the pair and waits until both nodes answer
//! them, tells the CA to look, finalizes with the key born for the order, and hands the
//! certificate to the deploy worker in the same transaction that stores it. A CA's refusal
//! ends the ticket `failed` with the CA's words; a CA out of reach (or rate limiting) is tried
//! again later, with a growing wait. Every `scan_interval` it also opens the renewals and
//! fallbacks that are due, as tickets of their own.

use std::time::Duration;

use instant_acme::{
    AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, pem::PemObject};
use serde_json::json;
use sqlx::Row;

use super::{
    account,
    store::{self, ORDER_COLUMNS, Order},
};
use crate::{
    audit::{self, Entry},
    certs::{self, csr},
    config::{AcmeChallenge, AcmeConfig},
    db,
    edge::{self, Challenge, NodeState},
    mail,
    state::AppState,
    tickets::{
        self,
        state::{Source, TicketKind, TicketState},
        store::{NewTicket, Ticket},
    },
};

/// How long a claimed order is reserved; renewed while it runs.
const LEASE_SECONDS: i64 = 60;
/// Tries of an order the CA could not take (unreachable, rate limited) before it fails.
const MAX_ATTEMPTS: i64 = 6;
/// How long the CA gets to validate, and to issue.
const CA_PATIENCE: Duration = Duration::from_secs(90);
/// After an automatic ticket failed, the wait before certdrop tries that certificate again
/// (the CA's rate limits count failed validations too).
const AUTOMATIC_RETRY_SECONDS: i64 = 6 * 3600;

pub async fn run(state: AppState) {
    let Some(acme) = state.config.acme.clone() else {
        return;
    };
    let mut last_scan: Option<tokio::time::Instant> = None;
    loop {
        // Sealed, nothing here can open a key: wait for the unseal, failing nothing.
        state.vault.wait_unsealed().await;
        if let Err(err) = claim_due(&state, &acme).await {
            tracing::warn!(
                error = format!("{err:#}"),
                "acme: could not look for orders"
            );
        }
        if last_scan.is_none_or(|at| at.elapsed() >= acme.scan_interval) {
            last_scan = Some(tokio::time::Instant::now());
            if let Err(err) = scan(&state, &acme).await {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "acme: could not look for renewals"
                );
            }
        }
        tokio::select! {
            () = state.acme_wake.notified() => {},
            () = tokio::time::sleep(Duration::from_secs(1)) => {},
        }
    }
}

async fn claim_due(state: &AppState, acme: &AcmeConfig) -> anyhow::Result<()> {
    let now = db::now();
    let rows = sqlx::query(&format!(
        "SELECT {ORDER_COLUMNS}, state, lease_until FROM acme_orders \
         WHERE (state = 'pending' AND not_before <= $1) OR (state = 'running' AND lease_until < $1) ORDER BY id LIMIT 10"
    ))
    .bind(now)
    .fetch_all(&state.db)
    .await?;
    for row in rows {
        let mut order = store::order_from_row(&row)?;
        let claimed = sqlx::query(
            "UPDATE acme_orders SET state = 'running', lease_until = $1, attempts = attempts + 1, updated_at = $2 \
             WHERE id = $3 AND state = $4 AND lease_until = $5",
        )
        .bind(now + LEASE_SECONDS)
        .bind(now)
        .bind(order.id)
        .bind(row.try_get::<String, _>("state")?)
        .bind(row.try_get::<i64, _>("lease_until")?)
        .execute(&state.db)
        .await?;
        if claimed.rows_affected() != 1 {
            continue;
        }
        order.attempts += 1;
        let (state, acme) = (state.clone(), acme.clone());
        tokio::spawn(async move {
            tracing::info!(
                order = order.id,
                ticket = order.ticket_id,
                "acme: order started"
            );
            if let Err(err) = execute(&state, &acme, &order).await {
                tracing::error!(
                    order = order.id,
                    error = format!("{err:#}"),
                    "acme: order interrupted; it will be resumed"
                );
            }
        });
    }
    Ok(())
}

/// Why an order stopped short of its certificate.
enum Stop {
    /// The CA (or certdrop's checks) refused it: the ticket fails with this reason.
    Refused(String),
    /// Could not finish now (the CA out of reach, rate limiting, a database hiccup): later.
    Later(String),
    /// The CA no longer knows certdrop's account: a new one is made, and the order tried again.
    AccountGone(String),
}

impl From<instant_acme::Error> for Stop {
    fn from(err: instant_acme::Error) -> Self {
        match err {
            instant_acme::Error::Api(problem) => {
                let kind = problem
                    .r#type
                    .as_deref()
                    .unwrap_or("")
                    .trim_start_matches("urn:ietf:params:acme:error:")
                    .to_string();
                let said = format!(
                    "the certificate authority said: {} ({kind})",
                    problem.detail.as_deref().unwrap_or("no detail")
                );
                match kind.as_str() {
                    "rateLimited" | "serverInternal" | "badNonce" => Stop::Later(said),
                    "accountDoesNotExist" => Stop::AccountGone(said),
                    _ => Stop::Refused(said),
                }
            }
            instant_acme::Error::Timeout(_) => {
                Stop::Later("the certificate authority did not finish in time".into())
            }
            other => Stop::Later(format!(
                "the certificate authority could not be reached: {other}"
            )),
        }
    }
}

impl From<crate::error::AppError> for Stop {
    fn from(err: crate::error::AppError) -> Self {
        Stop::Later(err.message())
    }
}

impl From<sqlx::Error> for Stop {
    fn from(err: sqlx::Error) -> Self {
        Stop::Later(format!("database: {err}"))
    }
}

impl From<anyhow::Error> for Stop {
    fn from(err: anyhow::Error) -> Self {
        Stop::Later(format!("{err:#}"))
    }
}

async fn execute(state: &AppState, acme: &AcmeConfig, order: &Order) -> anyhow::Result<()> {
    let ticket = tickets::store::find(&state.db, order.ticket_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the order's ticket is gone"))?;
    if ticket.state != TicketState::Approved {
        // Cancelled, or carried on by an earlier attempt: nothing more to order.
        sqlx::query("UPDATE acme_orders SET state = 'done', updated_at = $1 WHERE id = $2")
            .bind(db::now())
            .bind(order.id)
            .execute(&state.db)
            .await?;
        return Ok(());
    }
    match issue(state, acme, order, &ticket).await {
        Ok(()) => Ok(()),
        Err(Stop::Refused(why)) => refuse(state, order, &ticket, &why).await,
        Err(Stop::AccountGone(why)) => {
            // The CA's order belonged to the old account: the next attempt orders anew.
            account::forget(state, acme).await?;
            sqlx::query("UPDATE acme_orders SET order_url = NULL WHERE id = $1")
                .bind(order.id)
                .execute(&state.db)
                .await?;
            postpone(state, order, &ticket, &why).await
        }
        Err(Stop::Later(why)) => postpone(state, order, &ticket, &why).await,
    }
}

async fn step(
    state: &AppState,
    ticket_id: i64,
    key: &str,
    label: &str,
    ok: bool,
) -> Result<(), Stop> {
    let mut conn = state.db.acquire().await?;
    tickets::progress::record(&mut conn, ticket_id, key, label, ok).await?;
    Ok(())
}

async fn renew_lease(state: &AppState, order: &Order) -> Result<(), Stop> {
    sqlx::query("UPDATE acme_orders SET lease_until = $1 WHERE id = $2 AND state = 'running'")
        .bind(db::now() + LEASE_SECONDS)
        .bind(order.id)
        .execute(&state.db)
        .await?;
    Ok(())
}

/// Orders, proves, finalizes and stores the certificate, then queues its deployment.
async fn issue(
    state: &AppState,
    acme: &AcmeConfig,
    order: &Order,
    ticket: &Ticket,
) -> Result<(), Stop> {
    let account = account::get(state, acme).await?;
    let key_id = match order.generated_key_id {
        Some(id) => id,
        None => born_key(state, order, ticket).await?,
    };
    let (csr_pem, names): (String, String) =
        sqlx::query_as("SELECT csr_pem, domains FROM generated_keys WHERE id = $1")
            .bind(key_id)
            .fetch_one(&state.db)
            .await?;
    let names: Vec<String> = serde_json::from_str(&names).map_err(anyhow::Error::from)?;
    let mut ca_order = match &order.order_url {
        Some(url) => account.order(url.clone()).await?,
        None => {
            let identifiers: Vec<Identifier> =
                names.iter().map(|n| Identifier::Dns(n.clone())).collect();
            let ca_order = account.new_order(&NewOrder::new(&identifiers)).await?;
            sqlx::query("UPDATE acme_orders SET order_url = $1 WHERE id = $2")
                .bind(ca_order.url())
                .bind(order.id)
                .execute(&state.db)
                .await?;
            step(
                state,
                ticket.id,
                "acme:ordered",
                &format!("Certificate ordered from the CA for {}", names.join(", ")),
                true,
            )
            .await?;
            ca_order
        }
    };
    if ca_order.state().status == OrderStatus::Pending {
        prove(state, acme, order, ticket, &mut ca_order).await?;
    }
    let status = ca_order.state().status;
    if status == OrderStatus::Invalid {
        return Err(Stop::Refused(why_invalid(&mut ca_order).await));
    }
    if status == OrderStatus::Ready {
        let csr = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("the stored CSR is not PEM: {e}"))?;
        ca_order.finalize_csr(csr.as_ref()).await?;
    }
    renew_lease(state, order).await?;
    let chain = ca_order
        .poll_certificate(&RetryPolicy::new().timeout(CA_PATIENCE))
        .await?;
    let renews_at = renewal_time(&account, &chain).await;
    complete(state, order, ticket, key_id, &chain, renews_at).await
}

/// Generates the order's key inside certdrop (sealed to the vault before it is stored) with
/// its CSR for the app's verified domains that ACME can prove.
async fn born_key(state: &AppState, order: &Order, ticket: &Ticket) -> Result<i64, Stop> {
    let mut conn = state.db.acquire().await?;
    let names =
        super::orderable(crate::domains::store::verified_hostnames(&mut conn, order.app_id).await?);
    drop(conn);
    if names.is_empty() {
        return Err(Stop::Refused(format!(
            "{} has no verified domain a certificate authority can check over HTTP or TLS (wildcards need DNS-01)",
            ticket.app
        )));
    }
    let vault = state.vault.clone();
    let (generated, sealed) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let generated = csr::generate(csr::KeyKind::P256, &[], &names)?;
        let sealed = vault.seal(&generated.key)?;
        Ok((generated, sealed))
    })
    .await
    .map_err(anyhow::Error::from)??;
    let mut tx = state.db.begin().await?;
    let id = certs::store::insert_generated_row(
        &mut tx,
        order.app_id,
        ticket.owner_id,
        &generated,
        &sealed,
        "acme",
    )
    .await?;
    sqlx::query("UPDATE acme_orders SET generated_key_id = $1 WHERE id = $2")
        .bind(id)
        .bind(order.id)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut *tx,
        Entry::new(None, "key.generated", "generated_key", id)
            .app(&ticket.app)
            .detail(json!({
                "purpose": "acme",
                "ticket_id": ticket.id,
                "public_key_sha256": generated.public_key_id,
                "domains": generated.domains,
            })),
    )
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// The challenge the pair answers: the configured one, or TLS-ALPN-01 when a node has no
/// plain-HTTP listener.
async fn challenge_kind(
    state: &AppState,
    acme: &AcmeConfig,
    pair_id: i64,
) -> Result<AcmeChallenge, Stop> {
    let pair = edge::store::pair(&state.db, pair_id).await?;
    let all_http = pair
        .nodes
        .iter()
        .filter(|n| n.state != NodeState::Revoked)
        .all(|n| n.http_address.is_some());
    Ok(match acme.challenge {
        AcmeChallenge::Http01 if !all_http => AcmeChallenge::TlsAlpn01,
        kind => kind,
    })
}

fn challenge_type(kind: AcmeChallenge) -> ChallengeType {
    match kind {
        AcmeChallenge::Http01 => ChallengeType::Http01,
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    }
}

/// Publishes the pending authorizations' challenges to both nodes, waits until both answer
/// them, tells the CA to look, and waits for its verdict.
async fn prove(
    state: &AppState,
    acme: &AcmeConfig,
    order: &Order,
    ticket: &Ticket,
    ca_order: &mut instant_acme::Order,
) -> Result<(), Stop> {
    let kind = challenge_kind(state, acme, order.pair_id).await?;
    let mut wanted = Vec::new();
    let mut authorizations = ca_order.authorizations();
    while let Some(next) = authorizations.next().await {
        let mut authz = next?;
        let hostname = authz.identifier().to_string();
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(Stop::Refused(format!(
                    "the certificate authority's authorization for {hostname} is {other:?}"
                )));
            }
        }
        let challenge = authz.challenge(challenge_type(kind)).ok_or_else(|| {
            Stop::Refused(format!(
                "the certificate authority offers no {} challenge for {hostname}",
                kind.as_str()
            ))
        })?;
        wanted.push(Challenge {
            kind: kind.as_str().to_string(),
            hostname,
            token: challenge.token.clone(),
            key_authorization: challenge.key_authorization().as_str().to_string(),
        });
    }
    if !wanted.is_empty() {
        let version = store::publish_challenges(&state.db, order, &wanted).await?;
        state.config_changed.notify_waiters();
        wait_until_answering(state, order, version).await?;
        step(
            state,
            ticket.id,
            "acme:challenges",
            &format!(
                "Both nodes answer the {} challenge for {}",
                kind.as_str(),
                wanted
                    .iter()
                    .map(|c| c.hostname.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            true,
        )
        .await?;
        let mut authorizations = ca_order.authorizations();
        while let Some(next) = authorizations.next().await {
            let mut authz = next?;
            if authz.status != AuthorizationStatus::Pending {
                continue;
            }
            if let Some(mut challenge) = authz.challenge(challenge_type(kind)) {
                challenge.set_ready().await?;
            }
        }
    }
    renew_lease(state, order).await?;
    let status = ca_order
        .poll_ready(&RetryPolicy::new().timeout(CA_PATIENCE))
        .await;
    let mut conn = state.db.acquire().await?;
    store::clear_challenges(&mut conn, order).await?;
    drop(conn);
    state.config_changed.notify_waiters();
    status?;
    Ok(())
}

/// Waits for both nodes of the order's pair to apply the configuration with its challenges.
async fn wait_until_answering(state: &AppState, order: &Order, version: i64) -> Result<(), Stop> {
    let deadline = tokio::time::Instant::now() + state.config.apply_timeout;
    loop {
        let pair = edge::store::pair(&state.db, order.pair_id).await?;
        let behind: Vec<String> = pair
            .nodes
            .iter()
            .filter(|n| n.state != NodeState::Revoked && n.applied_version < version)
            .map(|n| pair.node_name(n))
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Stop::Refused(format!(
                "{} did not take the ACME challenges within {} s, so the certificate authority was not asked to check",
                behind.join(" and "),
                state.config.apply_timeout.as_secs()
            )));
        }
        renew_lease(state, order).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the CA said about an order it found invalid: each failed challenge's error.
async fn why_invalid(ca_order: &mut instant_acme::Order) -> String {
    let mut problems = Vec::new();
    let mut authorizations = ca_order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        let hostname = authz.identifier().to_string();
        for challenge in &authz.challenges {
            if let Some(problem) = &challenge.error {
                problems.push(format!(
                    "{hostname}: {}",
                    problem.detail.as_deref().unwrap_or("validation failed")
                ));
            }
        }
    }
    match problems.is_empty() {
        true => "the certificate authority found the order invalid".into(),
        false => format!(
            "the certificate authority could not validate {}",
            problems.join("; ")
        ),
    }
}

/// When to renew: inside the CA's suggested window where it publishes one (ARI, RFC 9773),
/// else at two thirds of the certificate's life.
async fn renewal_time(account: &instant_acme::Account, chain_pem: &str) -> Option<i64> {
    let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()?
        .ok()?;
    if let Ok(id) = instant_acme::CertificateIdentifier::try_from(&leaf)
        && let Ok((info, _)) = account.renewal_info(&id).await
    {
        let (start, end) = (
            info.suggested_window.start.unix_timestamp(),
            info.suggested_window.end.unix_timestamp(),
        );
        // A moment chosen at random inside the window, as RFC 9773 asks, spreads the load.
        return Some(start + (rand::random::<u64>() % (end - start).max(1) as u64) as i64);
    }
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).ok()?;
    let (from, to) = (
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    );
    Some(from + (to - from) * 2 / 3)
}

/// Stores the issued certificate (through the intake's checks, with the key born for it) and
/// queues its deployment, in one transaction.
async fn complete(
    state: &AppState,
    order: &Order,
    ticket: &Ticket,
    key_id: i64,
    chain_pem: &str,
    renews_at: Option<i64>,
) -> Result<(), Stop> {
    let app = crate::apps::store::find_by_id(&state.db, order.app_id).await?;
    let public_key_id: String =
        sqlx::query_scalar("SELECT public_key_sha256 FROM generated_keys WHERE id = $1")
            .bind(key_id)
            .fetch_one(&state.db)
            .await?;
    let domains = crate::domains::store::claimed_hostnames(&state.db, &app).await?;
    // The chain as the CA sent it, in the certificate field (a bundle, as uploads may be).
    let form = certs::routes::UploadForm::issued(chain_pem.as_bytes());
    let (inspection, served_pem, sealed) =
        match certs::routes::check_and_seal(state, form, domains, vec![(key_id, public_key_id)])
            .await?
        {
            Ok(accepted) => accepted,
            Err(refused) => {
                return Err(Stop::Refused(format!(
                    "the issued certificate did not pass certdrop's checks: {}",
                    refused
                        .errors
                        .iter()
                        .map(|e| e.message.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                )));
            }
        };
    let mut tx = state.db.begin().await?;
    let (cert_id, _) = certs::store::insert_row(
        &mut tx,
        app.id,
        ticket.owner_id,
        &inspection,
        &served_pem,
        &sealed,
        "acme",
    )
    .await?;
    sqlx::query("UPDATE certificates SET renews_at = $1 WHERE id = $2")
        .bind(renews_at)
        .bind(cert_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE generated_keys SET certificate_id = $1 WHERE id = $2")
        .bind(cert_id)
        .bind(key_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE tickets SET certificate_id = $1 WHERE id = $2")
        .bind(cert_id)
        .bind(ticket.id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE acme_orders SET state = 'done', certificate_id = $1, error = NULL, updated_at = $2 WHERE id = $3",
    )
    .bind(cert_id)
    .bind(db::now())
    .bind(order.id)
    .execute(&mut *tx)
    .await?;
    edge::store::create_job(&mut tx, ticket.id, order.pair_id, Some(cert_id)).await?;
    tickets::progress::record(
        &mut tx,
        ticket.id,
        "acme:issued",
        &format!(
            "Certificate issued by {}, valid until {}",
            inspection.issuer,
            crate::web::format_time(inspection.not_after)
        ),
        true,
    )
    .await?;
    audit::record(
        &mut *tx,
        Entry::new(None, "cert.issued", "certificate", cert_id)
            .app(&ticket.app)
            .detail(json!({
                "ticket_id": ticket.id,
                "fingerprint_sha256": inspection.fingerprint_sha256,
                "issuer": inspection.issuer,
                "renews_at": renews_at.map(crate::web::rfc3339),
            })),
    )
    .await?;
    tx.commit().await?;
    state.deploy_wake.notify_one();
    tracing::info!(
        order = order.id,
        certificate = cert_id,
        "acme: certificate issued"
    );
    Ok(())
}

/// Ends the order and its ticket as failed, with the CA's reason.
async fn refuse(state: &AppState, order: &Order, ticket: &Ticket, why: &str) -> anyhow::Result<()> {
    let mut tx = state.db.begin().await?;
    store::clear_challenges(&mut tx, order).await?;
    let failure = edge::deploy::Failure {
        run: format!("acme{}", order.run),
        why,
        customer: "the certificate authority did not issue the certificate",
        hint: "The certificate authority's words say what it could not check: usually a domain whose DNS does not point at the edge pair yet, or a node it cannot reach on port 80 (HTTP-01) or 443 (TLS-ALPN-01). Fix that, then retry the ticket.",
    };
    edge::deploy::record_failure(&mut tx, state, ticket, order.pair_id, &failure).await?;
    sqlx::query(
        "UPDATE acme_orders SET state = 'failed', error = $1, updated_at = $2 WHERE id = $3",
    )
    .bind(why)
    .bind(db::now())
    .bind(order.id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    state.config_changed.notify_waiters();
    state.mail_wake.notify_one();
    tracing::warn!(
        order = order.id,
        ticket = ticket.id,
        why,
        "acme: order failed"
    );
    Ok(())
}

/// Puts the order back for later, waiting longer each time; after `MAX_ATTEMPTS` it fails.
async fn postpone(
    state: &AppState,
    order: &Order,
    ticket: &Ticket,
    why: &str,
) -> anyhow::Result<()> {
    if order.attempts >= MAX_ATTEMPTS {
        let why = format!("{why} (after {} tries)", order.attempts);
        return refuse(state, order, ticket, &why).await;
    }
    let wait = (30 * 4_i64.pow(order.attempts.saturating_sub(1) as u32)).min(6 * 3600);
    let mut tx = state.db.begin().await?;
    store::clear_challenges(&mut tx, order).await?;
    sqlx::query(
        "UPDATE acme_orders SET state = 'pending', not_before = $1, lease_until = 0, error = $2, updated_at = $3 WHERE id = $4",
    )
    .bind(db::now() + wait)
    .bind(why)
    .bind(db::now())
    .bind(order.id)
    .execute(&mut *tx)
    .await?;
    tickets::progress::record(
        &mut tx,
        ticket.id,
        &format!("acme:wait:{}", order.attempts),
        &format!("Not now: {why}; trying again in {wait} s"),
        false,
    )
    .await?;
    tx.commit().await?;
    state.config_changed.notify_waiters();
    tracing::warn!(order = order.id, why, wait, "acme: order postponed");
    Ok(())
}

/// Opens the renewals and fallbacks that are due: the app's pair serves an ACME certificate
/// past its renewal time, or (for apps that opted in) an uploaded one within
/// `fallback_days` of expiry; never while another ticket of the app is under way, and not
/// again within a few hours of a failed attempt for the same certificate.
async fn scan(state: &AppState, acme: &AcmeConfig) -> anyhow::Result<()> {
    let now = db::now();
    let rows = sqlx::query(
        "SELECT a.id AS app_id, a.name AS app, a.owner_id, p.id AS pair_id, c.id AS cert_id, c.source, c.not_after \
         FROM apps a JOIN edge_pairs p ON p.app_id = a.id JOIN certificates c ON c.id = p.certificate_id \
         WHERE ((c.source = 'acme' AND c.renews_at <= $1) OR (c.source <> 'acme' AND a.acme_fallback = 1 AND c.not_after <= $2)) \
         AND NOT EXISTS (SELECT 1 FROM tickets t WHERE t.app_id = a.id AND t.state IN ('open', 'approved', 'deploying')) \
         AND NOT EXISTS (SELECT 1 FROM acme_orders o JOIN tickets t ON t.id = o.ticket_id \
             WHERE o.replaces_certificate_id = c.id AND t.automatic IS NOT NULL AND t.state = 'failed' AND t.updated_at > $3) \
         ORDER BY a.id LIMIT 100",
    )
    .bind(now)
    .bind(now + acme.fallback_days * 86400)
    .bind(now - AUTOMATIC_RETRY_SECONDS)
    .fetch_all(&state.db)
    .await?;
    for row in rows {
        let not_after: i64 = row.try_get("not_after")?;
        let app: String = row.try_get("app")?;
        let renewal = row.try_get::<String, _>("source")? == "acme";
        let due = Due {
            app_id: row.try_get("app_id")?,
            owner_id: row.try_get("owner_id")?,
            pair_id: row.try_get("pair_id")?,
            certificate_id: row.try_get("cert_id")?,
            why: (!renewal).then(|| {
                format!(
                    "The certificate {app} serves expires on {}, and no update is under way.",
                    crate::web::format_time(not_after)
                )
            }),
            app,
        };
        let mut conn = state.db.acquire().await?;
        let verified = crate::domains::store::verified_hostnames(&mut conn, due.app_id).await?;
        drop(conn);
        // Nothing to prove, or a wildcard an ACME certificate would leave unserved: no swap.
        if !super::replaceable(&verified) {
            continue;
        }
        let opened = async {
            let mut tx = state.db.begin().await?;
            open_automatic(&mut tx, state, &due).await?;
            tx.commit().await?;
            anyhow::Ok(())
        };
        match opened.await {
            Ok(()) => {
                state.mail_wake.notify_one();
                state.acme_wake.notify_one();
            }
            Err(err) => tracing::warn!(
                app = %due.app,
                error = format!("{err:#}"),
                "acme: could not open a renewal or fallback"
            ),
        }
    }
    Ok(())
}

/// A certificate that is due for renewal or fallback.
pub struct Due {
    pub app_id: i64,
    pub app: String,
    pub owner_id: i64,
    pub pair_id: i64,
    pub certificate_id: i64,
    /// `None` for a renewal; for a fallback, what happened to the uploaded certificate, in the
    /// words of the mail that tells the customer and staff.
    pub why: Option<String>,
}

/// Opens and starts an automatic update ticket for `due` in the caller's transaction (wake the
/// workers once it is committed): no staff approval (the pair and the bill were approved with
/// the app's provision), and the key is sealed only to the pair's confirmed nodes by the deploy
/// worker, as always. Returns the ticket.
pub async fn open_automatic(
    tx: &mut sqlx::AnyConnection,
    state: &AppState,
    due: &Due,
) -> anyhow::Result<i64> {
    let reason = match due.why {
        None => "renewal",
        Some(_) => "fallback",
    };
    let new = NewTicket {
        app_id: due.app_id,
        kind: TicketKind::Update,
        certificate_id: None,
        source: Source::Acme,
        automatic: Some(reason),
    };
    let id = tickets::store::insert_open(tx, &new, due.owner_id).await?;
    tickets::store::transition(tx, id, TicketState::Approved, None, None).await?;
    store::queue_order(tx, id, due.app_id, due.pair_id).await?;
    audit::record(
        &mut *tx,
        Entry::new(None, "ticket.opened", "ticket", id)
            .app(&due.app)
            .detail(json!({"kind": "update", "source": "acme", "automatic": reason, "replaces": due.certificate_id})),
    )
    .await?;
    if let Some(why) = &due.why {
        let lines = vec![
            format!(
                "{why} As {} opted in to the automatic fallback, certdrop is replacing it with a certificate from its certificate authority now; the site stays up throughout.",
                due.app
            ),
            "Uploading a new certificate (and opening an update ticket for it) takes over again at any time.".into(),
        ];
        let owner: String = sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
            .bind(due.owner_id)
            .fetch_one(&mut *tx)
            .await?;
        let mut to = vec![(format!("owner:{}", due.owner_id), owner)];
        to.extend(
            tickets::store::staff_emails(tx)
                .await?
                .into_iter()
                .map(|(staff, email)| (format!("staff:{staff}"), email)),
        );
        for (who, email) in to {
            let mail = mail::Mail {
                to: email,
                subject: format!("{}: replacing its certificate automatically", due.app),
                paragraphs: lines.clone(),
                link: Some((tickets::ticket_link(state, id), format!("Ticket #{id}"))),
            };
            mail::enqueue(tx, &format!("ticket:{id}:fallback:{who}"), &mail).await?;
        }
    }
    tracing::info!(app = %due.app, ticket = id, reason, "acme: automatic ticket opened");
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(kind: &str, detail: &str) -> Stop {
        let problem: instant_acme::Problem = serde_json::from_value(json!({
            "type": format!("urn:ietf:params:acme:error:{kind}"),
            "detail": detail,
            "status": 400,
        }))
        .unwrap();
        Stop::from(instant_acme::Error::Api(problem))
    }

    #[test]
    fn the_cas_refusals_end_the_ticket_in_its_words_and_its_hiccups_are_tried_again() {
        match problem("unauthorized", "Incorrect TXT record") {
            Stop::Refused(why) => assert_eq!(
                why,
                "the certificate authority said: Incorrect TXT record (unauthorized)"
            ),
            _ => panic!("a refusal"),
        }
        for kind in ["rateLimited", "serverInternal", "badNonce"] {
            assert!(matches!(problem(kind, "later"), Stop::Later(_)), "{kind}");
        }
        assert!(matches!(
            problem("accountDoesNotExist", "gone"),
            Stop::AccountGone(_)
        ));
        assert!(matches!(
            Stop::from(instant_acme::Error::Timeout(None)),
            Stop::Later(_)
        ));
    }

    #[test]
    fn only_an_app_without_wildcards_can_be_taken_over_by_an_acme_certificate() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(crate::acme::replaceable(&names(&[
            "a.example",
            "b.example"
        ])));
        assert!(!crate::acme::replaceable(&names(&[
            "a.example",
            "*.example"
        ])));
        assert!(!crate::acme::replaceable(&[]));
        assert_eq!(
            crate::acme::orderable(names(&["*.x.example", "x.example"])),
            names(&["x.example"])
        );
    }
}
