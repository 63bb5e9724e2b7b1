//! Ticket pages (the customer's list, the staff queue, the ticket page with its report, diff,
//! deployment and thread) and `/api/v1/tickets`.

use askama::Template;
use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Start,
    state::{Source, TicketKind, TicketState},
    store::{self, Filter, Ticket, TicketEvent},
};
use crate::{
    accounts::{
        ApiCredential, ApiUser, SignedIn, User, csrf::CsrfForm, csrf::NoFields, extract::ClientIp,
        second_factor::Credential,
    },
    apps,
    certs::{self, store::Certificate},
    edge::{self, store::Verification},
    error::{AppError, AppResult, ErrorItem},
    state::AppState,
    web::{self, Chrome, FormErrors, PageResult, filters, render, render_status, see_other},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tickets", get(tickets_page).post(open_page))
        .route("/apps/{app}/provision", get(provision_page))
        .route("/staff/tickets", get(queue_page))
        .route("/tickets/{id}", get(ticket_page))
        .route("/tickets/{id}/progress", get(progress_json))
        .route("/tickets/{id}/approve", post(approve_page))
        .route("/tickets/{id}/retry", post(retry_page))
        .route("/tickets/{id}/reject", post(reject_page))
        .route("/tickets/{id}/cancel", post(cancel_page))
        .route("/tickets/{id}/comments", post(comment_page))
        .route("/api/v1/tickets", get(list_api).post(open_api))
        .route("/api/v1/tickets/{id}", get(show_api))
        .route("/api/v1/tickets/{id}/approve", post(approve_api))
        .route("/api/v1/tickets/{id}/retry", post(retry_api))
        .route("/api/v1/tickets/{id}/reject", post(reject_api))
        .route("/api/v1/tickets/{id}/cancel", post(cancel_api))
        .route("/api/v1/tickets/{id}/comments", post(comment_api))
}

/// One node's deployment state for a ticket: its latest checks, all domains together.
#[derive(Clone, Debug)]
pub struct NodeCheck {
    pub node: String,
    pub address: String,
    pub state: &'static str,
    pub fingerprint_sha256: Option<String>,
    pub verified_at: Option<i64>,
    pub error: Option<String>,
}

/// The deployment part of a ticket: its pair and each node's verification.
pub async fn deployment(
    state: &AppState,
    ticket: &Ticket,
) -> AppResult<Option<(String, Vec<NodeCheck>, Vec<Verification>)>> {
    let Some(pair) = edge::store::job_pair(&state.db, ticket.id).await? else {
        return Ok(None);
    };
    let checks = edge::store::verifications(&state.db, ticket.id).await?;
    let applied = super::progress::applied_nodes(&state.db, ticket.id).await?;
    let nodes = pair
        .nodes
        .iter()
        .map(|n| {
            let mine: Vec<&Verification> = checks.iter().filter(|v| v.node_id == n.id).collect();
            let last = mine.iter().map(|v| v.verified_at).max();
            let latest: Vec<&&Verification> = mine
                .iter()
                .filter(|v| Some(v.verified_at) == last)
                .collect();
            let error = latest.iter().find_map(|v| v.error.clone());
            let name = format!("{}-{}", pair.name, n.slot);
            // Before (or without) a handshake: whether the node applied the configuration, and
            // for a deployment that ended without one, that it never got that far.
            let unverified = match (applied.contains(&name), ticket.state.is_under_way()) {
                (true, true) => "applied",
                (true, false) => "not_verified",
                (false, true) => "pending",
                (false, false) => "not_applied",
            };
            NodeCheck {
                address: n.address.clone().unwrap_or_default(),
                state: match (latest.is_empty(), &error) {
                    (true, _) => unverified,
                    (false, Some(_)) => "failed",
                    (false, None) => "verified",
                },
                node: name,
                fingerprint_sha256: latest.iter().find_map(|v| v.fingerprint_sha256.clone()),
                verified_at: last,
                error,
            }
        })
        .collect();
    Ok(Some((pair.name, nodes, checks)))
}

fn ticket_summary(ticket: &Ticket) -> Value {
    json!({
        "id": ticket.id,
        "app": ticket.app,
        "customer": ticket.owner_email,
        "kind": ticket.kind,
        "state": ticket.state,
        "certificate_id": ticket.certificate_id,
        "source": ticket.source,
        "automatic": ticket.automatic,
        "reason": ticket.reason,
        "created_at": web::rfc3339(ticket.created_at),
        "updated_at": web::rfc3339(ticket.updated_at),
    })
}

pub async fn ticket_json(state: &AppState, ticket: &Ticket) -> AppResult<Value> {
    let mut body = ticket_summary(ticket);
    body["progress"] = json!(super::progress::steps(&state.db, ticket.id).await?);
    if let Some((pair, nodes, checks)) = deployment(state, ticket).await? {
        body["deployment"] = json!({
            "pair": pair,
            "nodes": nodes.iter().map(|n| json!({
                "node": n.node,
                "address": n.address,
                "state": n.state,
                "fingerprint_sha256": n.fingerprint_sha256,
                "verified_at": n.verified_at.map(web::rfc3339),
                "error": n.error,
            })).collect::<Vec<_>>(),
            "verifications": checks.iter().map(|v| json!({
                "node": v.node,
                "hostname": v.hostname,
                "fingerprint_sha256": v.fingerprint_sha256,
                "verified_at": web::rfc3339(v.verified_at),
                "error": v.error,
            })).collect::<Vec<_>>(),
        });
    }
    Ok(body)
}

// ---- JSON API ----

#[derive(Deserialize)]
struct OpenRequest {
    app: String,
    kind: String,
    certificate_id: Option<i64>,
    /// `uploaded` (the default) or `acme`.
    source: Option<String>,
}

fn parse_source(raw: Option<&str>) -> AppResult<Source> {
    match raw.filter(|s| !s.is_empty()) {
        None => Ok(Source::Uploaded),
        Some(raw) => Source::parse(raw).ok_or_else(|| {
            AppError::unprocessable(
                ErrorItem::new(
                    "invalid_request",
                    "A ticket's source is \"uploaded\" (a certificate you uploaded, named by certificate_id) or \"acme\" (certdrop obtains one automatically).",
                )
                .on("source"),
            )
        }),
    }
}

fn parse_kind(raw: &str) -> AppResult<TicketKind> {
    TicketKind::parse(raw).ok_or_else(|| {
        AppError::unprocessable(ErrorItem::new(
            "invalid_kind",
            "A ticket kind is provision, update, rollback or remove.",
        ))
    })
}

async fn open_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ip: ClientIp,
    Json(req): Json<OpenRequest>,
) -> AppResult<Response> {
    let app = apps::store::find_visible(&state.db, &user, &req.app).await?;
    let ticket = super::open(
        &state,
        &user,
        ip,
        &app,
        parse_kind(&req.kind)?,
        req.certificate_id,
        parse_source(req.source.as_deref())?,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(ticket_json(&state, &ticket).await?),
    )
        .into_response())
}

async fn list_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Query(filter): Query<Filter>,
) -> AppResult<Response> {
    let (tickets, next) = store::list(&state.db, &user, &filter, 50).await?;
    // A listing carries no deployment details (one query for the page, not three per ticket);
    // `GET /api/v1/tickets/{id}` has them.
    let items: Vec<Value> = tickets.iter().map(ticket_summary).collect();
    Ok(Json(json!({"items": items, "next_cursor": next})).into_response())
}

async fn show_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(id): Path<i64>,
) -> AppResult<Response> {
    let ticket = store::find_visible(&state.db, &user, id).await?;
    Ok(Json(ticket_json(&state, &ticket).await?).into_response())
}

#[derive(Deserialize, Default)]
struct ApproveRequest {
    otp: Option<String>,
}

async fn approve_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ApiCredential(credential): ApiCredential,
    ip: ClientIp,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> AppResult<Response> {
    start_api(&state, &user, &credential, ip, id, &body, Start::Approve).await
}

async fn retry_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ApiCredential(credential): ApiCredential,
    ip: ClientIp,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> AppResult<Response> {
    start_api(&state, &user, &credential, ip, id, &body, Start::Retry).await
}

async fn start_api(
    state: &AppState,
    user: &User,
    credential: &Credential,
    ip: ClientIp,
    id: i64,
    body: &[u8],
    start: Start,
) -> AppResult<Response> {
    let req: ApproveRequest = crate::web::optional_json(body)?;
    let otp = req.otp.as_deref();
    let ticket = super::start_deployment(state, user, credential, ip, id, otp, start).await?;
    Ok(Json(ticket_json(state, &ticket).await?).into_response())
}

#[derive(Deserialize)]
struct ReasonRequest {
    reason: String,
}

async fn reject_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ip: ClientIp,
    Path(id): Path<i64>,
    Json(req): Json<ReasonRequest>,
) -> AppResult<Response> {
    let ticket = super::reject(&state, &user, ip, id, &req.reason).await?;
    Ok(Json(ticket_json(&state, &ticket).await?).into_response())
}

async fn cancel_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ip: ClientIp,
    Path(id): Path<i64>,
) -> AppResult<Response> {
    let ticket = super::cancel(&state, &user, ip, id).await?;
    Ok(Json(ticket_json(&state, &ticket).await?).into_response())
}

#[derive(Deserialize)]
struct CommentRequest {
    body: String,
}

async fn comment_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ip: ClientIp,
    Path(id): Path<i64>,
    Json(req): Json<CommentRequest>,
) -> AppResult<StatusCode> {
    super::comment(&state, &user, ip, id, &req.body).await?;
    Ok(StatusCode::CREATED)
}

// ---- pages ----

#[derive(Template)]
#[template(path = "tickets/list.html")]
struct ListPage {
    chrome: Chrome,
    staff_view: bool,
    tickets: Vec<Ticket>,
    filter: Filter,
    next_cursor: Option<String>,
    now: i64,
}

impl ListPage {
    fn next_link(&self, cursor: &str) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in [
            ("state", &self.filter.state),
            ("kind", &self.filter.kind),
            ("app", &self.filter.app),
            ("customer", &self.filter.customer),
        ] {
            if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
                query.append_pair(key, v);
            }
        }
        query.append_pair("cursor", cursor);
        let base = if self.staff_view {
            "/staff/tickets"
        } else {
            "/tickets"
        };
        format!("{base}?{}", query.finish())
    }

    fn waiting(&self, ticket: &Ticket) -> String {
        age(self.now - ticket.created_at)
    }

    fn selected(&self, field: &str, value: &str) -> bool {
        let current = match field {
            "state" => &self.filter.state,
            _ => &self.filter.kind,
        };
        current.as_deref() == Some(value)
    }
}

/// "3 h", "2 d": how long a ticket has waited.
pub fn age(seconds: i64) -> String {
    match seconds {
        s if s < 3600 => format!("{} min", (s / 60).max(0)),
        s if s < 86_400 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

async fn list_page(
    state: &AppState,
    me: &SignedIn,
    filter: Filter,
    staff_view: bool,
) -> PageResult {
    let (tickets, next_cursor) = store::list(&state.db, &me.user, &filter, 50).await?;
    Ok(render(&ListPage {
        chrome: me.chrome().await?,
        staff_view,
        tickets,
        filter,
        next_cursor,
        now: crate::db::now(),
    })?)
}

async fn tickets_page(
    State(state): State<AppState>,
    me: SignedIn,
    Query(filter): Query<Filter>,
) -> PageResult {
    list_page(&state, &me, filter, false).await
}

async fn queue_page(
    State(state): State<AppState>,
    me: SignedIn,
    Query(filter): Query<Filter>,
) -> PageResult {
    me.user.require_staff()?;
    list_page(&state, &me, filter, true).await
}

#[derive(Template)]
#[template(path = "tickets/show.html")]
struct TicketPage {
    chrome: Chrome,
    ticket: Ticket,
    is_staff: bool,
    is_owner: bool,
    proposed: Option<Certificate>,
    current: Option<Certificate>,
    chain: Vec<certs::intake::ChainEntry>,
    events: Vec<TicketEvent>,
    pair: Option<String>,
    nodes: Vec<NodeCheck>,
    checks: Vec<Verification>,
    sealed_to: Vec<edge::custody::SealedTo>,
    errors: FormErrors,
    monthly_price: String,
    progress: Vec<super::progress::Step>,
    /// For staff, while the ticket is open or failed: where it would deploy and what stands in the way.
    decision: Option<super::Decision>,
}

impl TicketPage {
    /// When a node last long-polled, as staff read it.
    fn seen(&self, node: &edge::store::Node) -> String {
        match node.last_seen_at {
            Some(at) => format!("seen {} s ago", (crate::db::now() - at).max(0)),
            None => "never seen".into(),
        }
    }
}

/// The live progress a page polls (session-authenticated, like the page itself).
async fn progress_json(
    State(state): State<AppState>,
    me: SignedIn,
    Path(id): Path<i64>,
) -> AppResult<Response> {
    let ticket = store::find_visible(&state.db, &me.user, id).await?;
    Ok(Json(json!({
        "state": ticket.state.as_str(),
        "done": !ticket.state.is_under_way(),
        "steps": super::progress::steps(&state.db, id).await?,
    }))
    .into_response())
}

async fn render_ticket(
    state: &AppState,
    me: &SignedIn,
    id: i64,
    status: StatusCode,
    errors: FormErrors,
) -> PageResult {
    let ticket = store::find_visible(&state.db, &me.user, id).await?;
    let proposed = match ticket.certificate_id {
        Some(cid) => Some(certs::store::find_visible(&state.db, &me.user, cid).await?),
        None => None,
    };
    let mut conn = state.db.acquire().await?;
    let current_id = store::deployed_certificate(&mut conn, ticket.app_id).await?;
    drop(conn);
    let current = match current_id {
        Some(cid) if Some(cid) != ticket.certificate_id => {
            Some(certs::store::find_visible(&state.db, &me.user, cid).await?)
        }
        _ => None,
    };
    let sealed_to = match &proposed {
        Some(cert) => edge::custody::sealed_to(&state.db, cert.app_id)
            .await?
            .remove(&cert.id)
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let decision = if me.user.role.is_staff()
        && matches!(ticket.state, TicketState::Open | TicketState::Failed)
    {
        Some(super::decision(state, &me.user, &ticket).await?)
    } else {
        None
    };
    let (pair, nodes, checks) = match deployment(state, &ticket).await? {
        Some((pair, nodes, checks)) => (Some(pair), nodes, checks),
        None => (None, Vec::new(), Vec::new()),
    };
    Ok(render_status(
        status,
        &TicketPage {
            chrome: me.chrome().await?,
            is_staff: me.user.role.is_staff(),
            is_owner: ticket.owner_id == me.user.id,
            chain: proposed
                .as_ref()
                .map(certs::routes::chain_entries)
                .unwrap_or_default(),
            proposed,
            current,
            events: store::events(&state.db, id).await?,
            ticket,
            pair,
            nodes,
            checks,
            sealed_to,
            errors,
            monthly_price: crate::web::money(state.config.pair_price_cents, &state.config.currency),
            progress: super::progress::steps(&state.db, id).await?,
            decision,
        },
    )?)
}

async fn ticket_page(
    State(state): State<AppState>,
    me: SignedIn,
    Path(id): Path<i64>,
) -> PageResult {
    render_ticket(&state, &me, id, StatusCode::OK, FormErrors::default()).await
}

#[derive(Deserialize)]
struct OpenForm {
    app: String,
    kind: String,
    certificate_id: Option<String>,
    source: Option<String>,
}

#[derive(Template)]
#[template(path = "tickets/provision.html")]
struct ProvisionPage {
    chrome: Chrome,
    app: apps::store::App,
    cert: crate::certs::store::Certificate,
    monthly_price: String,
}

#[derive(Deserialize)]
struct ProvisionQuery {
    certificate_id: i64,
}

/// Provisioning starts a monthly charge: the customer confirms it, with the price and the
/// certificate, before the ticket is opened.
async fn provision_page(
    State(state): State<AppState>,
    me: SignedIn,
    Path(name): Path<String>,
    Query(q): Query<ProvisionQuery>,
) -> PageResult {
    let app = apps::store::find_visible(&state.db, &me.user, &name).await?;
    let cert = crate::certs::store::find_visible(&state.db, &me.user, q.certificate_id).await?;
    if cert.app_id != app.id {
        return Err(AppError::not_found("certificate").into());
    }
    Ok(render(&ProvisionPage {
        chrome: me.chrome().await?,
        app,
        cert,
        monthly_price: web::money(state.config.pair_price_cents, &state.config.currency),
    })?)
}

async fn open_page(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    CsrfForm(form): CsrfForm<OpenForm>,
) -> PageResult {
    let app = apps::store::find_visible(&state.db, &me.user, &form.app).await?;
    let certificate_id = form
        .certificate_id
        .as_deref()
        .filter(|s| !s.is_empty())
        .and_then(|s| s.parse().ok());
    match super::open(
        &state,
        &me.user,
        ip,
        &app,
        parse_kind(&form.kind)?,
        certificate_id,
        parse_source(form.source.as_deref())?,
    )
    .await
    {
        Ok(ticket) => {
            web::flash(
                &me.session,
                "ok",
                format!(
                    "Ticket #{} opened; you will get an email when staff approve it.",
                    ticket.id
                ),
            )
            .await?;
            Ok(see_other(&format!("/tickets/{}", ticket.id)))
        }
        Err(err) if err.status.is_client_error() => {
            web::flash(&me.session, "error", err.message()).await?;
            Ok(see_other(&format!("/apps/{}", app.name)))
        }
        Err(err) => Err(err.into()),
    }
}

/// Runs a ticket action and shows the ticket again: with a message on success, with the error
/// next to the form otherwise.
async fn after_action(
    state: &AppState,
    me: &SignedIn,
    id: i64,
    result: AppResult<()>,
    done: &str,
) -> PageResult {
    match result {
        Ok(()) => {
            web::flash(&me.session, "ok", done).await?;
            Ok(see_other(&format!("/tickets/{id}")))
        }
        Err(err) if err.status.is_client_error() && err.status != StatusCode::NOT_FOUND => {
            let status = err.status;
            render_ticket(state, me, id, status, err.into()).await
        }
        Err(err) => Err(err.into()),
    }
}

#[derive(Deserialize)]
struct ApproveForm {
    otp: Option<String>,
}

async fn approve_page(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    Path(id): Path<i64>,
    CsrfForm(form): CsrfForm<ApproveForm>,
) -> PageResult {
    start_page(&state, &me, ip, id, form, Start::Approve).await
}

async fn retry_page(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    Path(id): Path<i64>,
    CsrfForm(form): CsrfForm<ApproveForm>,
) -> PageResult {
    start_page(&state, &me, ip, id, form, Start::Retry).await
}

async fn start_page(
    state: &AppState,
    me: &SignedIn,
    ip: ClientIp,
    id: i64,
    form: ApproveForm,
    start: Start,
) -> PageResult {
    let credential = Credential::Session(me.session.clone());
    let otp = form.otp.as_deref();
    let result = super::start_deployment(state, &me.user, &credential, ip, id, otp, start).await;
    let done = match start {
        Start::Approve => "Approved. The deployment has started; this page shows its progress.",
        Start::Retry => "Deploying again; this page shows its progress.",
    };
    after_action(state, me, id, result.map(|_| ()), done).await
}

#[derive(Deserialize)]
struct ReasonForm {
    reason: String,
}

async fn reject_page(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    Path(id): Path<i64>,
    CsrfForm(form): CsrfForm<ReasonForm>,
) -> PageResult {
    let result = super::reject(&state, &me.user, ip, id, &form.reason)
        .await
        .map(|_| ());
    after_action(
        &state,
        &me,
        id,
        result,
        "Rejected; the customer has been told why.",
    )
    .await
}

async fn cancel_page(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    Path(id): Path<i64>,
    CsrfForm(_): CsrfForm<NoFields>,
) -> PageResult {
    let result = super::cancel(&state, &me.user, ip, id).await.map(|_| ());
    after_action(&state, &me, id, result, "Ticket cancelled.").await
}

#[derive(Deserialize)]
struct CommentForm {
    body: String,
}

async fn comment_page(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    Path(id): Path<i64>,
    CsrfForm(form): CsrfForm<CommentForm>,
) -> PageResult {
    let result = super::comment(&state, &me.user, ip, id, &form.body).await;
    after_action(&state, &me, id, result, "Comment added.").await
}
