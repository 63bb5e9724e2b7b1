//! SQL for tickets and their timeline. State changes go through `transition`, a guarded update
//! that succeeds only from an allowed state, so two racing approvals yield one approval.

use serde::Serialize;
use sqlx::{AnyConnection, Row, any::AnyRow};

use super::state::{Source, TicketKind, TicketState};
use crate::{
    accounts::User,
    db::{self, Db},
    error::{AppError, AppResult},
};

#[derive(Clone, Debug, Serialize)]
pub struct Ticket {
    pub id: i64,
    pub app_id: i64,
    pub app: String,
    pub owner_id: i64,
    pub owner_email: String,
    pub kind: TicketKind,
    pub state: TicketState,
    pub certificate_id: Option<i64>,
    pub source: Source,
    /// `renewal` or `fallback` for the tickets certdrop opens itself.
    pub automatic: Option<String>,
    pub reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLUMNS: &str = "t.id, t.app_id, a.name AS app, a.owner_id, u.email AS owner_email, t.kind, t.state, \
    t.certificate_id, t.source, t.automatic, t.reason, t.created_at, t.updated_at";
const FROM: &str =
    "FROM tickets t JOIN apps a ON a.id = t.app_id JOIN users u ON u.id = a.owner_id";

fn from_row(row: &AnyRow) -> Result<Ticket, sqlx::Error> {
    let kind: String = row.try_get("kind")?;
    let state: String = row.try_get("state")?;
    Ok(Ticket {
        id: row.try_get("id")?,
        app_id: row.try_get("app_id")?,
        app: row.try_get("app")?,
        owner_id: row.try_get("owner_id")?,
        owner_email: row.try_get("owner_email")?,
        kind: TicketKind::parse(&kind)
            .ok_or_else(|| sqlx::Error::Decode(format!("kind {kind}").into()))?,
        state: TicketState::parse(&state)
            .ok_or_else(|| sqlx::Error::Decode(format!("state {state}").into()))?,
        certificate_id: row.try_get("certificate_id")?,
        source: Source::parse(&row.try_get::<String, _>("source")?)
            .ok_or_else(|| sqlx::Error::Decode("ticket source".into()))?,
        automatic: row.try_get("automatic")?,
        reason: row.try_get("reason")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// What a new ticket asks for.
pub struct NewTicket<'a> {
    pub app_id: i64,
    pub kind: TicketKind,
    pub certificate_id: Option<i64>,
    pub source: Source,
    /// `renewal` or `fallback` when certdrop opens it itself (for the app's owner).
    pub automatic: Option<&'a str>,
}

/// Inserts an open ticket; a second open ticket of the same kind for the app is a 409.
/// `opened_by` is the customer, or the app's owner for a ticket certdrop opens itself (its
/// timeline then names no actor).
pub async fn insert_open(
    conn: &mut AnyConnection,
    new: &NewTicket<'_>,
    opened_by: i64,
) -> AppResult<i64> {
    let now = db::now();
    let kind = new.kind;
    let id = sqlx::query_scalar::<_, i64>(
        "INSERT INTO tickets (app_id, kind, state, certificate_id, opened_by, created_at, updated_at, source, automatic) \
         VALUES ($1, $2, 'open', $3, $4, $5, $5, $6, $7) RETURNING id",
    )
    .bind(new.app_id)
    .bind(kind.as_str())
    .bind(new.certificate_id)
    .bind(opened_by)
    .bind(now)
    .bind(new.source.as_str())
    .bind(new.automatic)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| {
        if db::is_unique_violation(&e) {
            AppError::conflict(
                "ticket_exists",
                format!(
                    "This app already has an open {} ticket. Wait for staff to handle it, or cancel it first.",
                    kind.as_str()
                ),
            )
        } else {
            e.into()
        }
    })?;
    record_event(
        conn,
        id,
        new.automatic.is_none().then_some(opened_by),
        None,
        Some(TicketState::Open),
        None,
    )
    .await?;
    Ok(id)
}

pub async fn record_event(
    conn: &mut AnyConnection,
    ticket_id: i64,
    actor_id: Option<i64>,
    from: Option<TicketState>,
    to: Option<TicketState>,
    body: Option<&str>,
) -> AppResult<()> {
    let kind = if to.is_some() { "state" } else { "comment" };
    let event: i64 = sqlx::query_scalar(
        "INSERT INTO ticket_events (ticket_id, occurred_at, actor_id, kind, from_state, to_state, body) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(ticket_id)
    .bind(db::now())
    .bind(actor_id)
    .bind(kind)
    .bind(from.map(TicketState::as_str))
    .bind(to.map(TicketState::as_str))
    .bind(body)
    .fetch_one(&mut *conn)
    .await?;
    if let Some(to) = to {
        // The customer's webhooks hear of every move, in the same transaction.
        let (owner, app, ticket_kind): (i64, String, String) = sqlx::query_as(
            "SELECT a.owner_id, a.name, t.kind FROM tickets t JOIN apps a ON a.id = t.app_id WHERE t.id = $1",
        )
        .bind(ticket_id)
        .fetch_one(&mut *conn)
        .await?;
        let event_type = match to {
            TicketState::Open => "ticket.opened",
            TicketState::Approved => "ticket.approved",
            TicketState::Deploying => "ticket.deploying",
            TicketState::Deployed => "ticket.deployed",
            TicketState::Failed => "ticket.failed",
            TicketState::Rejected => "ticket.rejected",
            TicketState::Cancelled => "ticket.cancelled",
        };
        crate::webhooks::emit(
            conn,
            owner,
            event_type,
            &event.to_string(),
            serde_json::json!({
                "ticket_id": ticket_id,
                "app": app,
                "kind": ticket_kind,
                "from": from.map(TicketState::as_str),
                "state": to.as_str(),
                "reason": body,
            }),
        )
        .await?;
    }
    // The moves a deployment makes are steps of its live progress too.
    let step = match to {
        Some(TicketState::Approved) if from == Some(TicketState::Failed) => {
            Some(("Retry approved by staff".to_string(), true))
        }
        Some(TicketState::Approved) if actor_id.is_none() => {
            Some(("Started by certdrop itself".to_string(), true))
        }
        Some(TicketState::Approved) => Some(("Approved by staff".to_string(), true)),
        Some(TicketState::Deploying) => Some(("Deployment started".to_string(), true)),
        Some(TicketState::Deployed) => Some(("Deployed".to_string(), true)),
        Some(TicketState::Failed) => Some((
            format!("Failed: {}", body.unwrap_or("see the ticket")),
            false,
        )),
        _ => None,
    };
    if let (Some((label, ok)), Some(to)) = (step, to) {
        super::progress::record(
            conn,
            ticket_id,
            &format!("state:{}", to.as_str()),
            &label,
            ok,
        )
        .await?;
    }
    Ok(())
}

/// Moves a ticket to `to` if (and only if) it is in a state that allows it, recording the move
/// in its timeline. Returns the state it left, or a 409 that says where the ticket is.
///
/// The row is written before it is read: that takes the write lock first (SQLite) or the row
/// lock (PostgreSQL), so of two racing moves the second sees the first's result.
pub async fn transition(
    conn: &mut AnyConnection,
    id: i64,
    to: TicketState,
    actor_id: Option<i64>,
    reason: Option<&str>,
) -> AppResult<TicketState> {
    let touched = sqlx::query("UPDATE tickets SET updated_at = updated_at WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    if touched.rows_affected() == 0 {
        return Err(AppError::not_found("ticket"));
    }
    let from = current_state(conn, id)
        .await?
        .ok_or_else(|| AppError::not_found("ticket"))?;
    if !from.can_move_to(to) {
        return Err(refused_move(id, from, to));
    }
    let moved = sqlx::query(
        "UPDATE tickets SET state = $1, updated_at = $2, reason = COALESCE($3, reason) WHERE id = $4 AND state = $5",
    )
    .bind(to.as_str())
    .bind(db::now())
    .bind(reason)
    .bind(id)
    .bind(from.as_str())
    .execute(&mut *conn)
    .await?;
    if moved.rows_affected() != 1 {
        return Err(refused_move(id, from, to));
    }
    record_event(conn, id, actor_id, Some(from), Some(to), reason).await?;
    Ok(from)
}

fn refused_move(id: i64, now: TicketState, to: TicketState) -> AppError {
    // How far along the approval path a state is: a ticket already past `to` has been there.
    let step = |s: TicketState| match s {
        TicketState::Open => 0,
        TicketState::Approved => 1,
        TicketState::Deploying => 2,
        TicketState::Deployed | TicketState::Failed => 3,
        TicketState::Rejected | TicketState::Cancelled => -1,
    };
    let message = if now == to {
        format!("Ticket #{id} is already {}.", now.as_str())
    } else if step(to) > 0 && step(now) > step(to) {
        format!(
            "Ticket #{id} is already {} (it is {} now).",
            to.as_str(),
            now.as_str()
        )
    } else {
        format!(
            "Ticket #{id} is {} and cannot become {}{}.",
            now.as_str(),
            to.as_str(),
            if now.is_final() {
                " (it is closed)"
            } else {
                ""
            }
        )
    };
    AppError::conflict("invalid_transition", message)
}

async fn current_state(conn: &mut AnyConnection, id: i64) -> AppResult<Option<TicketState>> {
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM tickets WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(state.as_deref().and_then(TicketState::parse))
}

pub async fn find(db: &Db, id: i64) -> AppResult<Option<Ticket>> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} {FROM} WHERE t.id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(row.as_ref().map(from_row).transpose()?)
}

/// A ticket that must exist (it was just written, or named by a job).
pub async fn get(db: &Db, id: i64) -> AppResult<Ticket> {
    find(db, id)
        .await?
        .ok_or_else(|| AppError::not_found("ticket"))
}

/// A ticket if `user` may see it: tickets of their own apps, or any for staff. 404 otherwise.
pub async fn find_visible(db: &Db, user: &User, id: i64) -> AppResult<Ticket> {
    match find(db, id).await? {
        Some(t) if user.role.is_staff() || t.owner_id == user.id => Ok(t),
        _ => Err(AppError::not_found("ticket")),
    }
}

/// Filters for listings; empty means any.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct Filter {
    pub state: Option<String>,
    pub kind: Option<String>,
    pub app: Option<String>,
    pub customer: Option<String>,
    pub cursor: Option<String>,
}

fn some(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// The queue order: open tickets first, oldest first; then the others, newest first.
/// The cursor is `rank:key` of the last row shown.
pub async fn list(
    db: &Db,
    user: &User,
    filter: &Filter,
    limit: i64,
) -> AppResult<(Vec<Ticket>, Option<String>)> {
    let (rank, key) = match some(&filter.cursor).and_then(|c| c.split_once(':')) {
        Some((r, k)) => (
            r.parse::<i64>().map_err(|_| {
                AppError::bad_request(
                    "invalid_cursor",
                    "The cursor is not one this server gave out.",
                )
            })?,
            k.parse::<i64>().map_err(|_| {
                AppError::bad_request(
                    "invalid_cursor",
                    "The cursor is not one this server gave out.",
                )
            })?,
        ),
        None => (-1, i64::MIN),
    };
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS}, CASE WHEN t.state = 'open' THEN 0 ELSE 1 END AS q_rank, \
         CASE WHEN t.state = 'open' THEN t.id ELSE -t.id END AS q_key {FROM} \
         WHERE ($1 = 1 OR a.owner_id = $2) \
         AND ($3 IS NULL OR t.state = $3) AND ($4 IS NULL OR t.kind = $4) \
         AND ($5 IS NULL OR a.name = $5) AND ($6 IS NULL OR u.email = $6) \
         AND (CASE WHEN t.state = 'open' THEN 0 ELSE 1 END > $7 \
              OR (CASE WHEN t.state = 'open' THEN 0 ELSE 1 END = $7 AND CASE WHEN t.state = 'open' THEN t.id ELSE -t.id END > $8)) \
         ORDER BY q_rank, q_key LIMIT $9"
    ))
    .bind(i64::from(user.role.is_staff()))
    .bind(user.id)
    .bind(some(&filter.state))
    .bind(some(&filter.kind))
    .bind(some(&filter.app))
    .bind(some(&filter.customer).map(str::to_lowercase))
    .bind(rank)
    .bind(key)
    .bind(limit + 1)
    .fetch_all(db)
    .await?;
    let mut tickets = Vec::new();
    let mut last = None;
    for row in rows.iter().take(limit as usize) {
        tickets.push(from_row(row)?);
        last = Some(format!(
            "{}:{}",
            row.try_get::<i64, _>("q_rank")?,
            row.try_get::<i64, _>("q_key")?
        ));
    }
    let next = if rows.len() as i64 > limit {
        last
    } else {
        None
    };
    Ok((tickets, next))
}

#[derive(Clone, Debug, Serialize)]
pub struct TicketEvent {
    pub occurred_at: i64,
    pub actor_email: Option<String>,
    pub kind: String,
    pub from_state: Option<String>,
    pub to_state: Option<String>,
    pub body: Option<String>,
}

pub async fn events(db: &Db, ticket_id: i64) -> AppResult<Vec<TicketEvent>> {
    let rows = sqlx::query(
        "SELECT e.occurred_at, u.email AS actor_email, e.kind, e.from_state, e.to_state, e.body \
         FROM ticket_events e LEFT JOIN users u ON u.id = e.actor_id WHERE e.ticket_id = $1 ORDER BY e.id",
    )
    .bind(ticket_id)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(TicketEvent {
                occurred_at: row.try_get("occurred_at")?,
                actor_email: row.try_get("actor_email")?,
                kind: row.try_get("kind")?,
                from_state: row.try_get("from_state")?,
                to_state: row.try_get("to_state")?,
                body: row.try_get("body")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

/// The certificate an app serves now (its latest deployment), if any.
pub async fn deployed_certificate(conn: &mut AnyConnection, app_id: i64) -> AppResult<Option<i64>> {
    let row: Option<Option<i64>> = sqlx::query_scalar(
        "SELECT certificate_id FROM app_deployments WHERE app_id = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(app_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.flatten())
}

/// The certificate a rollback returns to: the latest deployed one other than the current.
pub async fn rollback_target(
    conn: &mut AnyConnection,
    app_id: i64,
    current: i64,
) -> AppResult<Option<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT certificate_id FROM app_deployments WHERE app_id = $1 AND certificate_id IS NOT NULL \
         AND certificate_id <> $2 AND certificate_id IN (SELECT id FROM certificates WHERE removed_at IS NULL) \
         ORDER BY id DESC LIMIT 1",
    )
    .bind(app_id)
    .bind(current)
    .fetch_optional(conn)
    .await?)
}

/// Staff and admins, who are mailed when a ticket opens.
pub async fn staff_emails(conn: &mut AnyConnection) -> AppResult<Vec<(i64, String)>> {
    let rows =
        sqlx::query("SELECT id, email FROM users WHERE role IN ('staff', 'admin') ORDER BY id")
            .fetch_all(conn)
            .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("id")?, r.try_get("email")?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
}
