//! Provisioning tickets: customers open them, staff approve or reject them, the deploy worker
//! carries approved ones out. Every move is a guarded update in one transaction with its
//! timeline entry, audit entry and mails, so no path can skip a step or lose a notification.

pub mod progress;
pub mod routes;
pub mod state;
pub mod store;

use serde_json::json;

use self::{
    state::{Source, TicketKind, TicketState},
    store::{NewTicket, Ticket},
};
use crate::{
    accounts::{
        User,
        extract::ClientIp,
        second_factor::{self, Credential},
    },
    apps::store::App,
    audit::{self, Entry},
    certs, edge,
    error::{AppError, AppResult, ErrorItem},
    mail::{self, Mail},
    state::AppState,
};

pub fn ticket_link(state: &AppState, id: i64) -> String {
    format!("{}tickets/{id}", state.base_url)
}

/// The message a customer gets when their ticket moves.
pub fn customer_mail(
    state: &AppState,
    ticket: &Ticket,
    subject: String,
    paragraphs: Vec<String>,
) -> Mail {
    Mail {
        to: ticket.owner_email.clone(),
        subject,
        paragraphs,
        link: Some((
            ticket_link(state, ticket.id),
            format!("Ticket #{}", ticket.id),
        )),
    }
}

/// Opens a ticket for one of the caller's own apps, after checking it makes sense now.
pub async fn open(
    state: &AppState,
    user: &User,
    ip: ClientIp,
    app: &App,
    kind: TicketKind,
    certificate_id: Option<i64>,
    source: Source,
) -> AppResult<Ticket> {
    // Keys and tickets wait until the owner proved the address certdrop mails is theirs.
    user.require_verified()?;
    if app.owner_id != user.id {
        return Err(AppError::new(
            axum::http::StatusCode::FORBIDDEN,
            ErrorItem::new("forbidden", "Only the app's owner opens its tickets."),
        ));
    }
    let mut conn = state.db.acquire().await?;
    let serving = store::deployed_certificate(&mut conn, app.id).await?;
    let holds_pair = edge::store::pair_of_app(&mut conn, app.id).await?.is_some();
    let certificate_id = match kind {
        TicketKind::Provision | TicketKind::Update => {
            let id = match source {
                Source::Acme => {
                    crate::acme::check_orderable(state, &mut conn, app, certificate_id).await?;
                    None
                }
                Source::Uploaded => {
                    Some(deployable_upload(state, user, &mut conn, app, certificate_id).await?)
                }
            };
            if kind == TicketKind::Provision && (holds_pair || serving.is_some()) {
                return Err(AppError::conflict(
                    "already_provisioned",
                    "This app already has its edge pair; open an update ticket to change its certificate.",
                ));
            }
            if kind == TicketKind::Update {
                match serving {
                    None => {
                        return Err(AppError::conflict(
                            "not_provisioned",
                            "This app serves no certificate yet; open a provision ticket first.",
                        ));
                    }
                    Some(current) if Some(current) == id => {
                        return Err(AppError::conflict(
                            "already_deployed",
                            "This certificate is the one the app already serves.",
                        ));
                    }
                    Some(_) => {}
                }
            }
            id
        }
        _ if source == Source::Acme => {
            return Err(AppError::unprocessable(
                ErrorItem::new(
                    "invalid_request",
                    "Only provision and update tickets can ask for an automatic (ACME) certificate.",
                )
                .on("source"),
            ));
        }
        TicketKind::Rollback => {
            let current = serving.ok_or_else(|| {
                AppError::conflict(
                    "not_provisioned",
                    "This app serves no certificate, so there is nothing to roll back.",
                )
            })?;
            Some(store::rollback_target(&mut conn, app.id, current).await?.ok_or_else(|| {
                AppError::conflict(
                    "nothing_to_roll_back",
                    "This app has served only its current certificate; there is no earlier one to return to.",
                )
            })?)
        }
        TicketKind::Remove => {
            if !holds_pair {
                return Err(AppError::conflict(
                    "not_provisioned",
                    "This app has no edge pair, so there is nothing to remove.",
                ));
            }
            None
        }
    };
    drop(conn);

    let mut tx = state.db.begin().await?;
    let new = NewTicket {
        app_id: app.id,
        kind,
        certificate_id,
        source,
        automatic: None,
    };
    let id = store::insert_open(&mut tx, &new, user.id).await?;
    for (staff_id, email) in store::staff_emails(&mut tx).await? {
        let mail = Mail {
            to: email,
            subject: format!("Ticket #{id}: {} for {}", kind.as_str(), app.name),
            paragraphs: vec![
                format!(
                    "{} opened a {} ticket for the app {}.",
                    user.email,
                    kind.as_str(),
                    app.name
                ),
                "Review the certificate and approve or reject it in the staff queue.".into(),
            ],
            link: Some((ticket_link(state, id), format!("Ticket #{id}"))),
        };
        mail::enqueue(&mut tx, &format!("ticket:{id}:opened:{staff_id}"), &mail).await?;
    }
    audit::record(
        &mut *tx,
        Entry::new(Some(user), "ticket.opened", "ticket", id)
            .app(&app.name)
            .detail(json!({"kind": kind.as_str(), "certificate_id": certificate_id, "source": source.as_str()}))
            .ip(ip.0),
    )
    .await?;
    tx.commit().await?;
    state.mail_wake.notify_one();
    store::get(&state.db, id).await
}

/// The uploaded certificate `certificate_id` of `app`, if it can be deployed now: present,
/// not removed, not expired, and covering at least one verified domain.
async fn deployable_upload(
    state: &AppState,
    user: &User,
    conn: &mut sqlx::AnyConnection,
    app: &App,
    certificate_id: Option<i64>,
) -> AppResult<i64> {
    let id = certificate_id.ok_or_else(|| {
        AppError::unprocessable(ErrorItem::new(
            "certificate_required",
            "Name the uploaded certificate to deploy (certificate_id).",
        ))
    })?;
    let cert = certs::store::find_visible(&state.db, user, id).await?;
    if cert.app_id != app.id {
        return Err(AppError::not_found("certificate"));
    }
    if cert.removed_at.is_some() {
        return Err(AppError::conflict(
            "certificate_removed",
            "This certificate was removed (its key is gone); upload it again to deploy it.",
        ));
    }
    if cert.not_after < crate::db::now() {
        return Err(AppError::unprocessable(ErrorItem::new(
            "expired",
            "This certificate has expired since it was uploaded; upload a current one.",
        )));
    }
    let verified = crate::domains::store::verified_hostnames(conn, app.id).await?;
    if !verified.iter().any(|d| {
        cert.sans
            .iter()
            .any(|san| crate::domains::hostname::covers(san, d))
    }) {
        return Err(AppError::conflict(
            "domain_unverified",
            format!(
                "None of the domains this certificate covers is verified yet, so the edge servers would have nothing to serve. On the app page, create the TXT record shown for each domain and choose “Verify” (or `certdrop domains:verify HOST --app {}`), then open the ticket again.",
                app.name
            ),
        ));
    }
    Ok(id)
}

/// How a deployment starts: staff approve an open ticket, or retry a failed one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Approves an open ticket: assigns a free pair (provision) and queues the deployment.
    Approve,
    /// Retries a failed ticket's deployment, with every check of an approval (it seals the key
    /// again): a provision gets a free pair again (its pair went back to the pool when it
    /// failed), and the ticket's job runs again. The earlier run stays in the ticket's progress
    /// and history.
    Retry,
}

impl Start {
    fn action(self) -> &'static str {
        match self {
            Start::Approve => "ticket.approved",
            Start::Retry => "ticket.retried",
        }
    }

    /// The state a ticket must be in for this start, and what to say when it is not.
    fn check(self, ticket: &Ticket) -> AppResult<()> {
        let id = ticket.id;
        match (self, ticket.state) {
            (Start::Approve, TicketState::Failed) => Err(AppError::conflict(
                "invalid_transition",
                format!(
                    "Ticket #{id} was approved and its deployment failed; retry the deployment instead (the \"Retry deployment\" button, or `certdrop tickets:retry {id}`)."
                ),
            )),
            (Start::Retry, s) if s != TicketState::Failed => Err(AppError::conflict(
                "invalid_transition",
                format!(
                    "Only a failed deployment can be retried; ticket #{id} is {}.",
                    s.as_str()
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// Starts a ticket's deployment (`Start::Approve` or `Start::Retry`). It needs a second factor
/// from the last ten minutes (`otp` refreshes it), a pair whose nodes are both confirmed, and —
/// for a key's deployment — an approver who did not create or confirm that pair. Refusals are
/// audited.
pub async fn start_deployment(
    state: &AppState,
    staff: &User,
    credential: &Credential,
    ip: ClientIp,
    id: i64,
    otp: Option<&str>,
    start: Start,
) -> AppResult<Ticket> {
    // A ticket the caller cannot see is a 404 before it is a 403, as for any object.
    let ticket = store::find_visible(&state.db, staff, id).await?;
    let result = start_visible(state, staff, credential, ip, &ticket, otp, start).await;
    if let Err(err) = &result
        && err.status.is_client_error()
    {
        audit::record(
            &state.db,
            Entry::new(Some(staff), start.action(), "ticket", id)
                .app(&ticket.app)
                .refused(err)
                .ip(ip.0),
        )
        .await?;
    }
    result?;
    store::get(&state.db, id).await
}

async fn start_visible(
    state: &AppState,
    staff: &User,
    credential: &Credential,
    ip: ClientIp,
    ticket: &Ticket,
    otp: Option<&str>,
    start: Start,
) -> AppResult<()> {
    staff.require_staff()?;
    start.check(ticket)?;
    second_factor::require_fresh(state, staff, credential, ip, otp).await?;
    let id = ticket.id;
    let seals_key = ticket.kind != TicketKind::Remove;
    if ticket.kind != TicketKind::Provision {
        let mut conn = state.db.acquire().await?;
        if let Some(pair_id) = edge::store::pair_of_app(&mut conn, ticket.app_id).await? {
            drop(conn);
            let pair = edge::store::pair(&state.db, pair_id).await?;
            if seals_key {
                edge::custody::require_confirmed(&pair)?;
                edge::custody::check_separation(state, staff, &pair)?;
            }
        }
    }
    let not_vouched_by = state.config.separation_of_duties.then_some(staff.id);
    let mut tx = state.db.begin().await?;
    if start == Start::Retry {
        // The failed run's steps stay on the page, ahead of the new run's.
        progress::archive(&mut tx, id).await?;
    }
    store::transition(&mut tx, id, TicketState::Approved, Some(staff.id), None).await?;
    let pair = match ticket.kind {
        TicketKind::Provision => {
            match edge::store::assign_free_pair(&mut tx, ticket.app_id, not_vouched_by).await? {
                Some(pair) => pair,
                None => {
                    drop(tx);
                    return Err(no_free_pair(state, not_vouched_by).await);
                }
            }
        }
        _ => edge::store::pair_of_app(&mut tx, ticket.app_id)
            .await?
            .ok_or_else(|| {
                AppError::conflict(
                    "not_provisioned",
                    "This app no longer holds an edge pair; reject the ticket.",
                )
            })?,
    };
    let run = match (ticket.source, ticket.certificate_id) {
        // Nothing issued yet: certdrop orders the certificate first, then deploys it.
        (Source::Acme, None) => {
            crate::acme::store::queue_order(&mut tx, id, ticket.app_id, pair).await?
        }
        _ => {
            edge::store::create_job(
                &mut tx,
                id,
                pair,
                ticket.certificate_id.filter(|_| seals_key),
            )
            .await?
        }
    };
    let (subject, key) = match start {
        Start::Approve => (
            format!("Ticket #{id} approved: deploying {}", ticket.app),
            format!("ticket:{id}:approved"),
        ),
        Start::Retry => (
            format!("Ticket #{id}: deploying {} again", ticket.app),
            format!("ticket:{id}:run{run}:approved"),
        ),
    };
    let first = match start {
        Start::Approve => format!(
            "Staff approved your {} ticket for {}.",
            ticket.kind.as_str(),
            ticket.app
        ),
        Start::Retry => format!(
            "Staff are deploying your {} ticket for {} again, after the earlier attempt failed.",
            ticket.kind.as_str(),
            ticket.app
        ),
    };
    let mail = customer_mail(
        state,
        ticket,
        subject,
        vec![
            first,
            "certdrop is deploying it to the app's edge pair now and will write again once both servers are verified.".into(),
        ],
    );
    mail::enqueue(&mut tx, &key, &mail).await?;
    audit::record(
        &mut *tx,
        Entry::new(Some(staff), start.action(), "ticket", id)
            .app(&ticket.app)
            .detail(json!({"pair_id": pair, "run": run}))
            .ip(ip.0),
    )
    .await?;
    tx.commit().await?;
    state.mail_wake.notify_one();
    state.deploy_wake.notify_one();
    state.acme_wake.notify_one();
    Ok(())
}

/// Why no pair could be dedicated: none is free and confirmed, or the free ones are the
/// approver's own (separation of duties).
/// What staff see before approving: the pair the deployment would go to and its nodes, the
/// reasons approving cannot succeed now (the refusals `approve` answers), and warnings about
/// what would make the deployment fail.
pub struct Decision {
    pub pair: Option<edge::store::Pair>,
    pub blockers: Vec<String>,
    pub warnings: Vec<String>,
}

/// A node that has not long-polled for this long is down (a poll lasts at most 25 s).
const NODE_DOWN_AFTER: i64 = 40;

pub async fn decision(state: &AppState, staff: &User, ticket: &Ticket) -> AppResult<Decision> {
    let not_vouched_by = state.config.separation_of_duties.then_some(staff.id);
    let mut blockers = Vec::new();
    let mut conn = state.db.acquire().await?;
    let pair_id = match ticket.kind {
        TicketKind::Provision => edge::store::free_pair_for(&mut conn, not_vouched_by).await?,
        _ => edge::store::pair_of_app(&mut conn, ticket.app_id).await?,
    };
    drop(conn);
    let pair = match pair_id {
        Some(id) => Some(edge::store::pair(&state.db, id).await?),
        None if ticket.kind == TicketKind::Provision => {
            blockers.push(no_free_pair(state, not_vouched_by).await.message());
            None
        }
        None => {
            blockers.push("This app no longer holds an edge pair; reject the ticket.".into());
            None
        }
    };
    let mut warnings = Vec::new();
    if let Some(pair) = &pair {
        if !matches!(ticket.kind, TicketKind::Provision | TicketKind::Remove) {
            for check in [
                edge::custody::require_confirmed(pair),
                edge::custody::check_separation(state, staff, pair),
            ] {
                if let Err(err) = check {
                    blockers.push(err.message());
                }
            }
        }
        let now = crate::db::now();
        for node in pair
            .nodes
            .iter()
            .filter(|n| n.state != edge::NodeState::Revoked)
        {
            let name = pair.node_name(node);
            match node.last_seen_at {
                Some(at) if now - at <= NODE_DOWN_AFTER => {}
                Some(at) => warnings.push(format!(
                    "{name} was last seen {} s ago: the deployment fails unless it is back within {} s of approval.",
                    now - at,
                    state.config.apply_timeout.as_secs()
                )),
                None => warnings.push(format!(
                    "{name} has never reached the control plane: start it before approving, or the deployment fails."
                )),
            }
        }
    }
    Ok(Decision {
        pair,
        blockers,
        warnings,
    })
}

async fn no_free_pair(state: &AppState, not_vouched_by: Option<i64>) -> AppError {
    let free_but_own = match not_vouched_by {
        Some(_) => edge::store::list_pairs(&state.db).await.map(|pairs| {
            pairs
                .iter()
                .any(|p| p.app_id.is_none() && p.nodes.iter().all(|n| n.holds_keys()))
        }),
        None => Ok(false),
    };
    match free_but_own {
        Ok(true) => AppError::conflict(
            "separation_of_duties",
            "The free edge pairs were created or confirmed by you: another staff member must approve this ticket (two-person rule).",
        ),
        Ok(false) => AppError::conflict(
            "no_free_pair",
            "No free edge pair: a pair is free when no app holds it and an admin confirmed both its nodes. Create a pair \
             (Edge pairs page or `certdrop edge-pairs:create`), start its two nodes, have an admin confirm them, then approve again.",
        ),
        Err(err) => err,
    }
}

pub async fn reject(
    state: &AppState,
    staff: &User,
    ip: ClientIp,
    id: i64,
    reason: &str,
) -> AppResult<Ticket> {
    let ticket = store::find_visible(&state.db, staff, id).await?;
    staff.require_staff()?;
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > 2000 {
        return Err(AppError::unprocessable(
            ErrorItem::new(
                "reason_required",
                "Say why the ticket is rejected (up to 2000 characters): the customer reads it.",
            )
            .on("reason"),
        ));
    }
    let mut tx = state.db.begin().await?;
    store::transition(
        &mut tx,
        id,
        TicketState::Rejected,
        Some(staff.id),
        Some(reason),
    )
    .await?;
    let mail = customer_mail(
        state,
        &ticket,
        format!("Ticket #{id} rejected"),
        vec![
            format!(
                "Staff rejected your {} ticket for {}.",
                ticket.kind.as_str(),
                ticket.app
            ),
            format!("Reason: {reason}"),
            "Fix what the reason says and open a new ticket.".into(),
        ],
    );
    mail::enqueue(&mut tx, &format!("ticket:{id}:rejected"), &mail).await?;
    audit::record(
        &mut *tx,
        Entry::new(Some(staff), "ticket.rejected", "ticket", id)
            .app(&ticket.app)
            .detail(json!({"reason": reason}))
            .ip(ip.0),
    )
    .await?;
    tx.commit().await?;
    state.mail_wake.notify_one();
    store::get(&state.db, id).await
}

/// The customer withdraws their own open ticket.
pub async fn cancel(state: &AppState, user: &User, ip: ClientIp, id: i64) -> AppResult<Ticket> {
    let ticket = store::find_visible(&state.db, user, id).await?;
    if ticket.owner_id != user.id {
        return Err(AppError::forbidden());
    }
    let mut tx = state.db.begin().await?;
    store::transition(&mut tx, id, TicketState::Cancelled, Some(user.id), None).await?;
    audit::record(
        &mut *tx,
        Entry::new(Some(user), "ticket.cancelled", "ticket", id)
            .app(&ticket.app)
            .ip(ip.0),
    )
    .await?;
    tx.commit().await?;
    store::get(&state.db, id).await
}

/// Adds a comment; a staff comment is mailed to the customer.
pub async fn comment(
    state: &AppState,
    user: &User,
    ip: ClientIp,
    id: i64,
    body: &str,
) -> AppResult<()> {
    let ticket = store::find_visible(&state.db, user, id).await?;
    let body = body.trim();
    if body.is_empty() || body.chars().count() > 5000 {
        return Err(AppError::unprocessable(
            ErrorItem::new(
                "comment_required",
                "Write a comment of 1 to 5000 characters.",
            )
            .on("body"),
        ));
    }
    let mut tx = state.db.begin().await?;
    store::record_event(&mut tx, id, Some(user.id), None, None, Some(body)).await?;
    if user.role.is_staff() && user.id != ticket.owner_id {
        let mail = customer_mail(
            state,
            &ticket,
            format!("New comment on ticket #{id}"),
            vec![
                format!(
                    "{} commented on your {} ticket for {}:",
                    user.email,
                    ticket.kind.as_str(),
                    ticket.app
                ),
                body.to_string(),
            ],
        );
        let key = format!("ticket:{id}:comment:{}", uuid::Uuid::new_v4());
        mail::enqueue(&mut tx, &key, &mail).await?;
    }
    audit::record(
        &mut *tx,
        Entry::new(Some(user), "ticket.commented", "ticket", id)
            .app(&ticket.app)
            .ip(ip.0),
    )
    .await?;
    tx.commit().await?;
    state.mail_wake.notify_one();
    Ok(())
}
