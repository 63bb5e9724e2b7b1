//! The deploy worker: carries out approved tickets on the app's edge pair. A job is durable (a
//! row), claimed with a lease renewed while it runs (so a control plane that dies mid-way hands
//! it to the next one), and idempotent step by step: it publishes a configuration once, waits
//! for both nodes to apply it, verifies each node by a real TLS handshake, and only then marks
//! the ticket deployed — once.

use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use sqlx::Row;

use super::{NodeState, custody, session_keys, store, verify};
use crate::{
    audit::{self, Entry},
    certs,
    db::{self},
    domains::hostname,
    mail,
    state::AppState,
    tickets::{
        self,
        state::{TicketKind, TicketState},
    },
    vault,
};

/// How long a claimed job is reserved; renewed while it runs.
const LEASE_SECONDS: i64 = 15;

#[derive(Debug, Clone)]
struct Job {
    id: i64,
    ticket_id: i64,
    pair_id: i64,
    target: Option<i64>,
    config_version: Option<i64>,
    /// 1, then one more for each retry of a failed deployment.
    run: i64,
}

pub async fn run(state: AppState) {
    loop {
        // Sealed, nothing here can open a key: wait for the unseal, failing nothing.
        state.vault.wait_unsealed().await;
        if let Err(err) = claim_due(&state).await {
            tracing::warn!(
                error = format!("{err:#}"),
                "deploy: could not look for jobs"
            );
        }
        tokio::select! {
            () = state.deploy_wake.notified() => {},
            () = tokio::time::sleep(Duration::from_secs(1)) => {},
        }
    }
}

async fn claim_due(state: &AppState) -> anyhow::Result<()> {
    let now = db::now();
    let rows = sqlx::query(
        "SELECT id, ticket_id, pair_id, target_certificate_id, config_version, run, state, lease_until FROM deploy_jobs \
         WHERE state = 'pending' OR (state = 'running' AND lease_until < $1) ORDER BY id LIMIT 10",
    )
    .bind(now)
    .fetch_all(&state.db)
    .await?;
    for row in rows {
        let id: i64 = row.try_get("id")?;
        let claimed = sqlx::query(
            "UPDATE deploy_jobs SET state = 'running', lease_until = $1, attempts = attempts + 1, updated_at = $2 \
             WHERE id = $3 AND state = $4 AND lease_until = $5",
        )
        .bind(now + LEASE_SECONDS)
        .bind(now)
        .bind(id)
        .bind(row.try_get::<String, _>("state")?)
        .bind(row.try_get::<i64, _>("lease_until")?)
        .execute(&state.db)
        .await?;
        if claimed.rows_affected() != 1 {
            continue;
        }
        let job = Job {
            id,
            ticket_id: row.try_get("ticket_id")?,
            pair_id: row.try_get("pair_id")?,
            target: row.try_get("target_certificate_id")?,
            config_version: row.try_get("config_version")?,
            run: row.try_get("run")?,
        };
        let state = state.clone();
        tokio::spawn(async move {
            tracing::info!(job = job.id, ticket = job.ticket_id, "deploy: started");
            match execute(&state, &job).await {
                Ok(()) => tracing::info!(job = job.id, ticket = job.ticket_id, "deploy: finished"),
                Err(err) => tracing::error!(
                    job = job.id,
                    error = format!("{err:#}"),
                    "deploy: interrupted; it will be retried"
                ),
            }
        });
    }
    Ok(())
}

/// A mail's idempotency key: once per run, so a retried deployment that fails again or
/// seals to new nodes says so again (the first run keeps the keys it always had).
fn mail_key(ticket_id: i64, run: &str, what: &str) -> String {
    match run {
        "1" => format!("ticket:{ticket_id}:{what}"),
        run => format!("ticket:{ticket_id}:run{run}:{what}"),
    }
}

impl Job {
    fn mail_key(&self, ticket_id: i64, what: &str) -> String {
        mail_key(ticket_id, &self.run.to_string(), what)
    }
}

async fn renew_lease(state: &AppState, job: &Job) -> anyhow::Result<()> {
    sqlx::query("UPDATE deploy_jobs SET lease_until = $1 WHERE id = $2 AND state = 'running'")
        .bind(db::now() + LEASE_SECONDS)
        .bind(job.id)
        .execute(&state.db)
        .await?;
    Ok(())
}

/// Runs a job to its end. An `Err` means "could not finish now" (the job is retried); a
/// deployment that fails on its merits ends the ticket as `failed` and returns `Ok`.
async fn execute(state: &AppState, job: &Job) -> anyhow::Result<()> {
    let ticket = tickets::store::find(&state.db, job.ticket_id)
        .await?
        .context("the job's ticket is gone")?;
    if !ticket.state.is_under_way() {
        return finish_job(state, job).await;
    }
    if ticket.state == TicketState::Approved {
        let mut tx = state.db.begin().await?;
        match tickets::store::transition(&mut tx, ticket.id, TicketState::Deploying, None, None)
            .await
        {
            Ok(_) => {
                audit::record(
                    &mut *tx,
                    Entry::new(None, "ticket.deploying", "ticket", ticket.id)
                        .app(&ticket.app)
                        .detail(json!({"pair_id": job.pair_id, "attempt": "started"})),
                )
                .await?;
                tx.commit().await?
            }
            Err(err) if err.first_code() == "invalid_transition" => {}
            Err(err) => return Err(err.into()),
        }
    }
    let version = match job.config_version {
        Some(v) => v,
        None => match publish(state, job, &ticket).await? {
            Ok(v) => v,
            Err(why) => return fail(state, job, &ticket, &why).await,
        },
    };
    renew_lease(state, job).await?;
    let outcome = match wait_until_applied(state, job, version).await? {
        Err(why) => Err(why),
        Ok(()) => verify_nodes(state, job, ticket.kind).await?,
    };
    match outcome {
        Ok(()) => succeed(state, job, &ticket).await,
        Err(why) => fail(state, job, &ticket, &why).await,
    }
}

/// Seals the key to both nodes and bumps the pair's configuration, once per job. Keys are
/// sealed only to confirmed nodes: `Ok(Err(why))` when a node of the pair is not (or stops
/// being, before the sealed copies are stored) confirmed.
async fn publish(
    state: &AppState,
    job: &Job,
    ticket: &tickets::store::Ticket,
) -> anyhow::Result<Result<i64, String>> {
    let pair = store::pair(&state.db, job.pair_id).await?;
    let mut sealed = Vec::new();
    if let Some(cert) = job.target {
        if let Err(refusal) = custody::require_confirmed(&pair) {
            return Ok(Err(refusal.message()));
        }
        let armored = certs::store::sealed_key_of(&state.db, cert).await?;
        let holders: Vec<(store::Node, String)> = pair
            .nodes
            .iter()
            .map(|n| (n.clone(), pair.node_name(n)))
            .collect();
        let vault = state.vault.clone();
        // Opened in memory only, sealed to each node's own recipient, wiped on drop.
        sealed = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<_>> {
            let key = vault.open(&armored)?;
            holders
                .into_iter()
                .map(|(node, name)| {
                    let recipient = node
                        .recipient
                        .clone()
                        .context("a confirmed node has no recipient")?;
                    Ok((node, name, vault::seal_to(&recipient, &key)?.armored))
                })
                .collect()
        })
        .await??;
    }
    let mut tx = state.db.begin().await?;
    let claimed = sqlx::query(
        "UPDATE deploy_jobs SET updated_at = $1 WHERE id = $2 AND config_version IS NULL",
    )
    .bind(db::now())
    .bind(job.id)
    .execute(&mut *tx)
    .await?;
    if claimed.rows_affected() == 0 {
        // Published already (by an earlier attempt that died before it could say so here).
        let v: i64 = sqlx::query_scalar("SELECT config_version FROM deploy_jobs WHERE id = $1")
            .bind(job.id)
            .fetch_one(&mut *tx)
            .await?;
        return Ok(Ok(v));
    }
    let before: Vec<i64> = match job.target {
        Some(cert) => {
            sqlx::query_scalar("SELECT node_id FROM node_keys WHERE certificate_id = $1")
                .bind(cert)
                .fetch_all(&mut *tx)
                .await?
        }
        None => Vec::new(),
    };
    for (node, name, armored) in &sealed {
        // Guarded on the node still being confirmed with the same recipient: a revocation or
        // replacement that lands after the pair was read above stops the deployment here.
        // ... and on its identity never having been revoked, anywhere.
        let stored = sqlx::query(
            "INSERT INTO node_keys (node_id, certificate_id, sealed_key) SELECT $1, $2, $3 \
             WHERE EXISTS (SELECT 1 FROM edge_nodes WHERE id = $1 AND state = 'confirmed' AND recipient = $4) \
             AND NOT EXISTS (SELECT 1 FROM node_revocations WHERE recipient_fingerprint = $5) \
             ON CONFLICT (node_id, certificate_id) DO UPDATE SET sealed_key = excluded.sealed_key",
        )
        .bind(node.id)
        .bind(job.target)
        .bind(armored)
        .bind(&node.recipient)
        .bind(&node.recipient_fingerprint)
        .execute(&mut *tx)
        .await?;
        if stored.rows_affected() != 1 {
            return Ok(Err(format!(
                "{name} stopped being a confirmed node (or its identity was revoked) during the deployment; its key was not sealed to it"
            )));
        }
        audit::record(
            &mut *tx,
            Entry::new(
                None,
                "key.sealed",
                "certificate",
                job.target.unwrap_or_default(),
            )
            .app(&ticket.app)
            .detail(json!({
                "node": name,
                "recipient_fingerprint": node.recipient_fingerprint,
                "ticket_id": ticket.id,
            })),
        )
        .await?;
    }
    let newly: Vec<&(store::Node, String, String)> = sealed
        .iter()
        .filter(|(n, _, _)| !before.contains(&n.id))
        .collect();
    if !newly.is_empty() {
        let mut lines = vec![format!(
            "The private key of certificate #{} of {} is now sealed to these edge servers, each confirmed by certdrop's administrators (it stays sealed in the vault as well):",
            job.target.unwrap_or_default(),
            ticket.app
        )];
        lines.extend(sealed.iter().map(|(node, name, _)| {
            format!(
                "{name}: key fingerprint {}, confirmed by {}",
                node.recipient_fingerprint.as_deref().unwrap_or(""),
                node.confirmed_by_label()
                    .unwrap_or_else(|| "an admin".into())
            )
        }));
        let mail = tickets::customer_mail(
            state,
            ticket,
            format!("{}: where your private key is sealed", ticket.app),
            lines,
        );
        mail::enqueue(&mut tx, &job.mail_key(ticket.id, "sealed"), &mail).await?;
    }
    // Visitors resume across both nodes from the first deployment on; a released pair's keys go.
    match job.target {
        Some(_) => {
            session_keys::rotate_if_due(&mut tx, &pair).await?;
        }
        None => session_keys::forget(&mut tx, pair.id).await?,
    }
    sqlx::query("UPDATE edge_pairs SET config_version = config_version + 1, certificate_id = $1 WHERE id = $2")
        .bind(job.target)
        .bind(job.pair_id)
        .execute(&mut *tx)
        .await?;
    let version: i64 = sqlx::query_scalar("SELECT config_version FROM edge_pairs WHERE id = $1")
        .bind(job.pair_id)
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query("UPDATE deploy_jobs SET config_version = $1 WHERE id = $2")
        .bind(version)
        .bind(job.id)
        .execute(&mut *tx)
        .await?;
    let label = match job.target {
        Some(_) => format!(
            "Key sealed to {} and configuration {version} published",
            sealed
                .iter()
                .map(|(_, name, _)| name.as_str())
                .collect::<Vec<_>>()
                .join(" and ")
        ),
        None => format!("Configuration {version} published: TLS removed"),
    };
    tickets::progress::record(&mut tx, job.ticket_id, "published", &label, true).await?;
    tx.commit().await?;
    state.config_changed.notify_waiters();
    state.mail_wake.notify_one();
    tracing::info!(job = job.id, version, "deploy: configuration published");
    Ok(Ok(version))
}

/// Waits for both nodes to report `version` applied. `Ok(Err(why))` when they do not in time.
async fn wait_until_applied(
    state: &AppState,
    job: &Job,
    version: i64,
) -> anyhow::Result<Result<(), String>> {
    let timeout = state.config.apply_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_renew = tokio::time::Instant::now();
    let mut noted = std::collections::HashSet::new();
    loop {
        let pair = store::pair(&state.db, job.pair_id).await?;
        for node in pair.nodes.iter().filter(|n| n.applied_version >= version) {
            let name = pair.node_name(node);
            if noted.insert(name.clone()) {
                let mut conn = state.db.acquire().await?;
                tickets::progress::record(
                    &mut conn,
                    job.ticket_id,
                    &format!("applied:{name}"),
                    &format!("{name} applied it"),
                    true,
                )
                .await?;
            }
        }
        let behind: Vec<String> = pair
            .nodes
            .iter()
            .filter(|n| n.state != NodeState::Revoked && n.applied_version < version)
            .map(|n| {
                format!(
                    "{}-{} ({})",
                    pair.name,
                    n.slot,
                    n.address.as_deref().unwrap_or("not enrolled")
                )
            })
            .collect();
        if behind.is_empty() {
            return Ok(Ok(()));
        }
        if tokio::time::Instant::now() > deadline {
            return Ok(Err(format!(
                "{} did not apply configuration {version} within {} s",
                behind.join(" and "),
                timeout.as_secs()
            )));
        }
        if last_renew.elapsed() > Duration::from_secs(5) {
            renew_lease(state, job).await?;
            last_renew = tokio::time::Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Handshakes with each node for each covered domain and records what each served.
async fn verify_nodes(
    state: &AppState,
    job: &Job,
    kind: TicketKind,
) -> anyhow::Result<Result<(), String>> {
    let pair = store::pair(&state.db, job.pair_id).await?;
    let app_id = pair.app_id.context("the pair lost its app")?;
    let mut conn = state.db.acquire().await?;
    let domains = crate::domains::store::verified_hostnames(&mut conn, app_id).await?;
    drop(conn);
    let (expected, names) = match job.target {
        Some(cert) => {
            let c: (String, String) =
                sqlx::query_as("SELECT fingerprint_sha256, sans FROM certificates WHERE id = $1")
                    .bind(cert)
                    .fetch_one(&state.db)
                    .await?;
            let sans: Vec<String> = serde_json::from_str(&c.1)?;
            let covered: Vec<String> = domains
                .iter()
                .filter(|d| sans.iter().any(|s| hostname::covers(s, d)))
                .cloned()
                .collect();
            (Some(c.0), covered)
        }
        None => (None, domains),
    };
    let mut problems = Vec::new();
    let now = db::now();
    // A revoked node is out of service: nothing is deployed to it or expected of it.
    for node in pair.nodes.iter().filter(|n| n.state != NodeState::Revoked) {
        let address = node.address.clone().unwrap_or_default();
        for domain in &names {
            let sni = verify::sni_for(domain);
            let result = verify::handshake(&address, &sni).await;
            let (fingerprint, error) = match (&expected, result) {
                (Some(want), Ok(served)) if &served.fingerprint_sha256 == want => {
                    (Some(served.fingerprint_sha256), None)
                }
                (Some(want), Ok(served)) => (
                    Some(served.fingerprint_sha256.clone()),
                    Some(format!(
                        "served leaf {} instead of the approved {want}",
                        served.fingerprint_sha256
                    )),
                ),
                (Some(_), Err(e)) => (None, Some(e)),
                // A removal is verified when the node no longer completes a handshake for the name.
                (None, Ok(served)) => (
                    Some(served.fingerprint_sha256),
                    Some("still serves a certificate after the removal".to_string()),
                ),
                (None, Err(_)) => (None, None),
            };
            if let Some(e) = &error {
                problems.push(format!(
                    "{}-{} ({address}) for {sni}: {e}",
                    pair.name, node.slot
                ));
            }
            let name = pair.node_name(node);
            let label = match (&error, &expected) {
                (Some(e), _) => format!("{name}: handshake for {sni}: {e}"),
                (None, Some(_)) => {
                    format!("{name}: TLS handshake for {sni} serves the approved certificate")
                }
                (None, None) => format!("{name}: no longer serves {sni}"),
            };
            let mut conn = state.db.acquire().await?;
            tickets::progress::record(
                &mut conn,
                job.ticket_id,
                &format!("verified:{name}:{sni}"),
                &label,
                error.is_none(),
            )
            .await?;
            drop(conn);
            sqlx::query(
                "INSERT INTO verifications (ticket_id, node_id, hostname, fingerprint_sha256, verified_at, error, run) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(job.ticket_id)
            .bind(node.id)
            .bind(&sni)
            .bind(fingerprint)
            .bind(now)
            .bind(error)
            .bind(job.run)
            .execute(&state.db)
            .await?;
        }
    }
    if names.is_empty() && kind != TicketKind::Remove {
        return Ok(Err(
            "the certificate covers none of the app's verified domains; nothing could be verified"
                .into(),
        ));
    }
    Ok(if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    })
}

async fn finish_job(state: &AppState, job: &Job) -> anyhow::Result<()> {
    sqlx::query("UPDATE deploy_jobs SET state = 'done', updated_at = $1 WHERE id = $2")
        .bind(db::now())
        .bind(job.id)
        .execute(&state.db)
        .await?;
    Ok(())
}

/// Marks the ticket deployed, records the app's new state, bills, mails — in one transaction.
async fn succeed(
    state: &AppState,
    job: &Job,
    ticket: &tickets::store::Ticket,
) -> anyhow::Result<()> {
    let dns_lines = match ticket.kind {
        TicketKind::Remove => Vec::new(),
        _ => crate::domains::instructions(state, ticket.app_id).await?,
    };
    let mut tx = state.db.begin().await?;
    match tickets::store::transition(&mut tx, ticket.id, TicketState::Deployed, None, None).await {
        Ok(_) => {}
        Err(err) if err.first_code() == "invalid_transition" => {
            drop(tx);
            return finish_job(state, job).await;
        }
        Err(err) => return Err(err.into()),
    }
    let now = db::now();
    sqlx::query(
        "INSERT INTO app_deployments (app_id, certificate_id, ticket_id, deployed_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(ticket.app_id)
    .bind(job.target)
    .bind(ticket.id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if ticket.kind == TicketKind::Remove {
        custody::release_pair(&mut tx, job.pair_id).await?;
    }
    crate::billing::record_deployment(&mut tx, state, ticket, job.pair_id, now).await?;
    let (subject, lines) = match ticket.kind {
        TicketKind::Remove => (
            format!("{}: TLS removed and edge pair released", ticket.app),
            vec![format!(
                "Your edge pair no longer serves {}; billing for it has stopped.",
                ticket.app
            )],
        ),
        _ => (
            format!("{}: certificate deployed and verified", ticket.app),
            [format!(
                "Your {} ticket for {} is deployed: both edge servers were checked with a TLS handshake and serve the approved certificate.",
                ticket.kind.as_str(),
                ticket.app
            )]
            .into_iter()
            .chain(dns_lines)
            .collect(),
        ),
    };
    // A renewal that worked is news to nobody: only its failure is mailed.
    if ticket.automatic.as_deref() != Some("renewal") {
        let mail = tickets::customer_mail(state, ticket, subject, lines);
        mail::enqueue(&mut tx, &format!("ticket:{}:deployed", ticket.id), &mail).await?;
    }
    crate::webhooks::emit(
        &mut tx,
        ticket.owner_id,
        "deployment.succeeded",
        &format!("{}:{}", ticket.id, job.run),
        json!({"ticket_id": ticket.id, "app": ticket.app, "kind": ticket.kind.as_str(), "certificate_id": job.target}),
    )
    .await?;
    audit::record(
        &mut *tx,
        Entry::new(None, "ticket.deployed", "ticket", ticket.id)
            .app(&ticket.app)
            .detail(json!({"pair_id": job.pair_id})),
    )
    .await?;
    sqlx::query("UPDATE deploy_jobs SET state = 'done', updated_at = $1 WHERE id = $2")
        .bind(now)
        .bind(job.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    state.mail_wake.notify_one();
    observe(state, ticket, "deployed").await
}

/// Counts a deployment that ended, with how long it took since its approval.
async fn observe(
    state: &AppState,
    ticket: &tickets::store::Ticket,
    outcome: &str,
) -> anyhow::Result<()> {
    if let Some(seconds) = tickets::progress::since_approval(&state.db, ticket.id).await? {
        state
            .metrics
            .deployment(ticket.kind.as_str(), outcome, seconds);
    }
    Ok(())
}

/// Ends the ticket as failed and puts the pair back to what it served before.
async fn fail(
    state: &AppState,
    job: &Job,
    ticket: &tickets::store::Ticket,
    why: &str,
) -> anyhow::Result<()> {
    let mut tx = state.db.begin().await?;
    let failure = Failure {
        run: job.run.to_string(),
        why,
        customer: "our edge servers did not confirm it, so it was rolled back",
        hint: "Check that both nodes of the pair run `certdrop edge` and reach the control plane; the ticket page shows each step and its time.",
    };
    if !record_failure(&mut tx, state, ticket, job.pair_id, &failure).await? {
        drop(tx);
        return finish_job(state, job).await;
    }
    sqlx::query("UPDATE deploy_jobs SET state = 'done', updated_at = $1 WHERE id = $2")
        .bind(db::now())
        .bind(job.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    state.config_changed.notify_waiters();
    state.mail_wake.notify_one();
    observe(state, ticket, "failed").await
}

/// Why a ticket failed, for its mails.
pub struct Failure<'a> {
    /// Tells the mails of one attempt from another's (`1`, `2`… for deployments).
    pub run: String,
    /// The technical reason, for staff and the ticket.
    pub why: &'a str,
    /// What happened, in the customer's words.
    pub customer: &'a str,
    /// What staff should check.
    pub hint: &'a str,
}

/// A ticket's failure, in the caller's transaction: the ticket ends `failed` with `why`, the
/// pair goes back to what it served before (a provision's pair back to the pool), the
/// customer reads what it means for their site, staff get the technical reason, webhooks and
/// the audit trail hear of it. `false` when the ticket had already moved on (nothing was done).
pub async fn record_failure(
    tx: &mut sqlx::AnyConnection,
    state: &AppState,
    ticket: &tickets::store::Ticket,
    pair_id: i64,
    failure: &Failure<'_>,
) -> anyhow::Result<bool> {
    let (run, why) = (failure.run.as_str(), failure.why);
    match tickets::store::transition(tx, ticket.id, TicketState::Failed, None, Some(why)).await {
        Ok(_) => {}
        Err(err) if err.first_code() == "invalid_transition" => return Ok(false),
        Err(err) => return Err(err.into()),
    }
    let previous = tickets::store::deployed_certificate(tx, ticket.app_id).await?;
    match ticket.kind {
        // Never deployed: the pair goes back to the free pool and serves nothing.
        TicketKind::Provision => {
            // Like any released pair: the next app on it starts with keys of its own.
            custody::release_pair(tx, pair_id).await?;
        }
        // Keep serving what was verified before.
        _ => {
            sqlx::query("UPDATE edge_pairs SET certificate_id = $1, config_version = config_version + 1 WHERE id = $2")
                .bind(previous)
                .bind(pair_id)
                .execute(&mut *tx)
                .await?;
        }
    }
    // The customer reads what it means for their site; staff get the technical reason.
    let serves = match ticket.kind {
        TicketKind::Provision => format!("{} serves nothing over TLS yet", ticket.app),
        _ => format!("{} keeps serving what it served before", ticket.app),
    };
    let mail = tickets::customer_mail(
        state,
        ticket,
        format!("Ticket #{} failed", ticket.id),
        vec![
            format!(
                "Your {} ticket for {} could not be completed: {}.",
                ticket.kind.as_str(),
                ticket.app,
                failure.customer
            ),
            format!(
                "Nothing is charged for it, and {serves}. Our staff have the technical details and will follow up."
            ),
        ],
    );
    mail::enqueue(tx, &mail_key(ticket.id, run, "failed"), &mail).await?;
    crate::webhooks::emit(
        tx,
        ticket.owner_id,
        "deployment.failed",
        &format!("{}:{run}", ticket.id),
        json!({"ticket_id": ticket.id, "app": ticket.app, "kind": ticket.kind.as_str(), "serves": serves}),
    )
    .await?;
    for (staff_id, email) in tickets::store::staff_emails(tx).await? {
        let mail = mail::Mail {
            to: email,
            subject: format!(
                "Ticket #{} failed: {} for {}",
                ticket.id,
                ticket.kind.as_str(),
                ticket.app
            ),
            paragraphs: vec![
                format!("Ticket #{} failed: {why}", ticket.id),
                failure.hint.into(),
            ],
            link: Some((
                tickets::ticket_link(state, ticket.id),
                format!("Ticket #{}", ticket.id),
            )),
        };
        mail::enqueue(
            tx,
            &mail_key(ticket.id, run, &format!("failed:{staff_id}")),
            &mail,
        )
        .await?;
    }
    audit::record(
        &mut *tx,
        Entry::new(None, "ticket.failed", "ticket", ticket.id)
            .app(&ticket.app)
            .outcome("failed")
            .detail(json!({"error": why})),
    )
    .await?;
    Ok(true)
}
