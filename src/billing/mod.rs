//! Billing: append-only events (this module inserts and reads; nothing updates or deletes
//! them), each with an idempotency key derived from its cause, and statements and exports
//! computed from them. Money is integer cents, never floats.

pub mod routes;
pub mod statement;
pub mod store;

use sqlx::AnyConnection;

use crate::{
    error::AppResult,
    state::AppState,
    tickets::{state::TicketKind, store::Ticket},
};

/// Records what a deployed ticket bills: a provision holds a pair from now, a removal releases
/// it. Updates and rollbacks bill nothing. The key is the ticket's, so a retried or concurrent
/// deployment of the same ticket can never bill twice.
pub async fn record_deployment(
    conn: &mut AnyConnection,
    state: &AppState,
    ticket: &Ticket,
    pair_id: i64,
    at: i64,
) -> AppResult<()> {
    let kind = match ticket.kind {
        TicketKind::Provision => statement::PROVISIONED,
        TicketKind::Remove => statement::RELEASED,
        TicketKind::Update | TicketKind::Rollback => return Ok(()),
    };
    store::insert(
        conn,
        &format!("ticket:{}:{kind}", ticket.id),
        kind,
        ticket,
        pair_id,
        at,
        state.config.pair_price_cents,
        &state.config.currency,
    )
    .await
}
