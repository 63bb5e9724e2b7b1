//! Edge pairs for staff (page, `/api/v1/edge-pairs`) and the node-facing API: enrollment and
//! the long-polled configuration (which doubles as heartbeat and acknowledgement).

use std::time::Duration;

use askama::Template;
use axum::{
    Json, Router,
    extract::{FromRef, FromRequestParts, Path, Query, State},
    http::{StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;
use sqlx::Row;

use super::{Enrolled, Enrollment, NodeConfig, Site, custody, fleet, session_keys, store};
use crate::{
    accounts::{
        ApiCredential, ApiUser, SignedIn, User, csrf::CsrfForm, extract::ClientIp,
        second_factor::Credential,
    },
    audit::{self, Entry},
    domains::hostname,
    error::{AppError, AppResult, ErrorItem},
    state::AppState,
    web::{self, Chrome, FormErrors, PageResult, filters, render_status},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/staff/edge-pairs", get(pairs_page).post(create_pair_page))
        .route("/staff/edge-nodes/{id}/confirm", post(confirm_page))
        .route("/staff/edge-nodes/{id}/revoke", post(revoke_page))
        .route(
            "/staff/edge-nodes/{id}/enroll-token",
            post(enroll_token_page),
        )
        .route("/api/v1/edge-pairs", get(list_api).post(create_api))
        .route("/api/v1/edge-nodes/{id}", get(node_api))
        .route("/api/v1/edge-nodes/{id}/confirm", post(confirm_api))
        .route("/api/v1/edge-nodes/{id}/revoke", post(revoke_api))
        .route(
            "/api/v1/edge-nodes/{id}/enroll-token",
            post(enroll_token_api),
        )
        .route(
            "/api/v1/edge/enroll",
            post(enroll_api).layer(web::small_body()),
        )
        .route("/api/v1/edge/config", get(config_api))
}

fn validate_name(raw: &str) -> AppResult<String> {
    crate::apps::validate_name(raw).map_err(|_| {
        AppError::unprocessable(
            ErrorItem::new(
                "invalid_pair_name",
                "A pair name is 3 to 30 lower-case letters, digits and dashes, e.g. edge-eu-1.",
            )
            .on("name"),
        )
    })
}

async fn create(
    state: &AppState,
    user: &User,
    ip: ClientIp,
    name: &str,
) -> AppResult<(i64, String, [String; 2])> {
    user.require_staff()?;
    let name = validate_name(name)?;
    let (id, tokens) = store::create_pair(&state.db, &name, user.id).await?;
    audit::record(
        &state.db,
        Entry::new(Some(user), "edge_pair.created", "edge_pair", &name).ip(ip.0),
    )
    .await?;
    Ok((
        id,
        name,
        tokens.map(|t| t.secret.expose_secret().to_string()),
    ))
}

fn node_json(pair: &store::Pair, n: &store::Node) -> serde_json::Value {
    json!({
        "id": n.id,
        "node": pair.node_name(n),
        "state": n.state,
        "enrolled": n.enrolled,
        "recipient_fingerprint": n.recipient_fingerprint,
        "confirmed_by": n.confirmed_by_label(),
        "confirmed_at": n.confirmed_at.map(web::rfc3339),
        "address": n.address,
        // Only this address is published (DNS records, apps' targets), and only once confirmed.
        "confirmed_address": n.confirmed_address,
        "attestation": n.attestation.as_ref().map(|a| json!({
            "pair": a.pair,
            "slot": a.slot,
            "expires_at": web::rfc3339(a.expires_at),
        })),
        "last_seen_at": n.last_seen_at.map(web::rfc3339),
        "applied_version": n.applied_version,
        "in_sync": n.applied_version == pair.config_version,
    })
}

fn pair_json(pair: &store::Pair) -> serde_json::Value {
    json!({
        "id": pair.id,
        "name": pair.name,
        "app": pair.app,
        "created_by": pair.created_by_email,
        "free": pair.app_id.is_none() && pair.nodes.iter().all(|n| n.holds_keys()),
        "config_version": pair.config_version,
        "nodes": pair.nodes.iter().map(|n| node_json(pair, n)).collect::<Vec<_>>(),
    })
}

fn revocation_json(r: &custody::Revocation) -> serde_json::Value {
    json!({
        "node": r.node,
        "recipient_fingerprint": r.recipient_fingerprint,
        "revoked_by": r.revoked_by,
        "revoked_at": web::rfc3339(r.revoked_at),
        "affected_apps": r.apps(),
    })
}

#[derive(Deserialize)]
struct CreateRequest {
    name: String,
}

async fn create_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ip: ClientIp,
    Json(req): Json<CreateRequest>,
) -> AppResult<Response> {
    let (id, name, tokens) = create(&state, &user, ip, &req.name).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "name": name, "enroll_tokens": tokens})),
    )
        .into_response())
}

async fn list_api(State(state): State<AppState>, ApiUser(user): ApiUser) -> AppResult<Response> {
    user.require_staff()?;
    let pairs = store::list_pairs(&state.db).await?;
    Ok(
        Json(
            json!({"items": pairs.iter().map(pair_json).collect::<Vec<_>>(), "next_cursor": null}),
        )
        .into_response(),
    )
}

#[derive(Template)]
#[template(path = "edge/pairs.html")]
struct PairsPage {
    chrome: Chrome,
    pairs: Vec<store::Pair>,
    revocations: Vec<custody::Revocation>,
    created: Option<(String, Vec<String>)>,
    control_plane: String,
    errors: FormErrors,
    now: i64,
    is_admin: bool,
    fleet_key: bool,
    separation_of_duties: bool,
}

impl PairsPage {
    fn seen(&self, node: &store::Node) -> String {
        match node.last_seen_at {
            None => "never".into(),
            Some(at) => format!("{} ago", crate::tickets::routes::age(self.now - at)),
        }
    }

    fn healthy(&self, node: &store::Node) -> bool {
        node.last_seen_at.is_some_and(|at| self.now - at < 60)
    }
}

async fn render_pairs(
    state: &AppState,
    me: &SignedIn,
    status: StatusCode,
    created: Option<(String, Vec<String>)>,
    errors: FormErrors,
) -> PageResult {
    me.user.require_staff()?;
    Ok(render_status(
        status,
        &PairsPage {
            chrome: me.chrome().await?,
            pairs: store::list_pairs(&state.db).await?,
            revocations: custody::revocations(&state.db).await?,
            created,
            control_plane: state.base_url.as_str().trim_end_matches('/').to_string(),
            errors,
            now: crate::db::now(),
            is_admin: me.user.role.is_admin(),
            fleet_key: state.config.fleet_public_key.is_some(),
            separation_of_duties: state.config.separation_of_duties,
        },
    )?)
}

async fn pairs_page(State(state): State<AppState>, me: SignedIn) -> PageResult {
    render_pairs(&state, &me, StatusCode::OK, None, FormErrors::default()).await
}

/// Shows the pairs page again after a node action: with a message, or with the error.
async fn after_node_action<T>(
    state: &AppState,
    me: &SignedIn,
    result: AppResult<T>,
    done: impl FnOnce(T) -> String,
) -> PageResult {
    match result {
        Ok(value) => {
            web::flash(&me.session, "ok", done(value)).await?;
            Ok(web::see_other("/staff/edge-pairs"))
        }
        Err(err)
            if err.status.is_client_error()
                && err.status != StatusCode::FORBIDDEN
                && err.status != StatusCode::NOT_FOUND =>
        {
            // Shown above the list: the page has a form per node, so no one field to sit by.
            let status = err.status;
            let errors = err
                .errors
                .into_iter()
                .map(|mut e| {
                    e.field = None;
                    e
                })
                .collect();
            render_pairs(state, me, status, None, FormErrors(errors)).await
        }
        Err(err) => Err(err.into()),
    }
}

#[derive(Deserialize)]
struct ConfirmForm {
    recipient_fingerprint: String,
    /// The address the page showed beside the fingerprint.
    address: Option<String>,
    otp: Option<String>,
}

async fn confirm_page(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    Path(id): Path<i64>,
    CsrfForm(form): CsrfForm<ConfirmForm>,
) -> PageResult {
    let credential = Credential::Session(me.session.clone());
    let result = custody::confirm(
        &state,
        &me.user,
        &credential,
        ip,
        id,
        &form.recipient_fingerprint,
        form.address.as_deref(),
        form.otp.as_deref(),
    )
    .await;
    after_node_action(&state, &me, result, |n| {
        format!(
            "Node confirmed: keys may now be sealed to {}.",
            n.recipient_fingerprint.unwrap_or_default()
        )
    })
    .await
}

#[derive(Deserialize)]
struct OtpForm {
    otp: Option<String>,
}

async fn revoke_page(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    Path(id): Path<i64>,
    CsrfForm(form): CsrfForm<OtpForm>,
) -> PageResult {
    let credential = Credential::Session(me.session.clone());
    let result = custody::revoke(&state, &me.user, &credential, ip, id, form.otp.as_deref()).await;
    after_node_action(&state, &me, result, |r| {
        let apps = r.apps();
        if apps.is_empty() {
            format!("{} revoked. It held no customer's key.", r.node)
        } else {
            format!(
                "{} revoked. It held the keys of {}; their customers have been mailed to replace those certificates.",
                r.node,
                apps.join(", ")
            )
        }
    })
    .await
}

/// A replacement token is shown in this response only, like a new pair's.
async fn enroll_token_page(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    Path(id): Path<i64>,
    CsrfForm(_): CsrfForm<crate::accounts::csrf::NoFields>,
) -> PageResult {
    match custody::new_enroll_token(&state, &me.user, ip, id).await {
        Ok((name, token)) => {
            render_pairs(
                &state,
                &me,
                StatusCode::CREATED,
                Some((name, vec![token.secret.expose_secret().to_string()])),
                FormErrors::default(),
            )
            .await
        }
        Err(err) => after_node_action(&state, &me, Err::<(), _>(err), |_| String::new()).await,
    }
}

#[derive(Deserialize)]
struct CreateForm {
    name: String,
}

/// The tokens are shown in this response only, never stored in the clear.
async fn create_pair_page(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    CsrfForm(form): CsrfForm<CreateForm>,
) -> PageResult {
    match create(&state, &me.user, ip, &form.name).await {
        Ok((_, name, tokens)) => {
            render_pairs(
                &state,
                &me,
                StatusCode::CREATED,
                Some((name, tokens.to_vec())),
                FormErrors::default(),
            )
            .await
        }
        Err(err) if err.status.is_client_error() && err.status != StatusCode::FORBIDDEN => {
            let status = err.status;
            render_pairs(&state, &me, status, None, err.into()).await
        }
        Err(err) => Err(err.into()),
    }
}

// ---- the node-facing API ----

async fn enroll_api(
    State(state): State<AppState>,
    ip: ClientIp,
    Json(req): Json<Enrollment>,
) -> AppResult<Response> {
    // The canonical spelling: an identity written another way (upper case) is the same one.
    let Ok(recipient) = req.recipient.trim().parse::<age::x25519::Recipient>() else {
        return Err(AppError::unprocessable(ErrorItem::new(
            "invalid_recipient",
            "The node's age recipient is not valid.",
        )));
    };
    let recipient = recipient.to_string();
    if req.address.len() > 255
        || (req.address.parse::<std::net::SocketAddr>().is_err() && !req.address.contains(':'))
    {
        return Err(AppError::unprocessable(ErrorItem::new(
            "invalid_address",
            "Advertise the node as HOST:PORT.",
        )));
    }
    let (node_id, pair_name, slot) =
        store::slot_of_enroll_token(&state.db, &req.enroll_token).await?;
    let name = format!("{pair_name}-{slot}");
    let checked = async {
        custody::check_recipient(&state.db, &recipient, node_id).await?;
        // With a fleet key, only machines it vouches for, for this very slot, may enroll (the
        // token stays unspent).
        let Some(fleet) = &state.config.fleet_public_key else {
            return Ok(None);
        };
        let Some(attestation) = req.attestation.as_deref() else {
            return Err(AppError::unprocessable(ErrorItem::new(
                "attestation_required",
                format!(
                    "This installation admits only nodes vouched for by its fleet key: sign the node's recipient with `certdrop fleet:attest RECIPIENT --pair {pair_name} --slot {slot}` and start the node with --attestation FILE."
                ),
            )));
        };
        fleet
            .admits(attestation, &recipient, &pair_name, slot, crate::db::now())
            .map(Some)
            .map_err(|refusal| {
                let code = match refusal {
                    fleet::Refusal::OtherSlot { .. } => "attestation_other_slot",
                    fleet::Refusal::Expired => "attestation_expired",
                    _ => "attestation_invalid",
                };
                AppError::unprocessable(ErrorItem::new(code, refusal.to_string()))
            })
    }
    .await;
    let enrolled = match checked {
        Ok(claim) => {
            store::enroll(
                &state.db,
                node_id,
                &req.enroll_token,
                &recipient,
                &req.address,
                req.http_address.as_deref(),
                claim.as_ref(),
            )
            .await
        }
        Err(err) => Err(err),
    };
    // A refused identity is on the trail with its fingerprint: someone tried it.
    let (node, token) = match enrolled {
        Ok(done) => done,
        Err(err)
            if err.status == StatusCode::CONFLICT
                || err.status == StatusCode::UNPROCESSABLE_ENTITY =>
        {
            audit::record(
                &state.db,
                Entry::new(None, "edge_node.enrolled", "edge_node", &name)
                    .outcome("refused")
                    .detail(json!({
                        "code": err.first_code(),
                        "address": req.address,
                        "recipient_fingerprint": super::recipient_fingerprint(&recipient),
                    }))
                    .ip(ip.0),
            )
            .await?;
            return Err(err);
        }
        Err(err) => return Err(err),
    };
    let pair = store::pair(&state.db, node.pair_id).await?;
    audit::record(
        &state.db,
        Entry::new(
            None,
            "edge_node.enrolled",
            "edge_node",
            pair.node_name(&node),
        )
        .detail(json!({
            "address": req.address,
            "recipient_fingerprint": node.recipient_fingerprint,
            "state": node.state,
        }))
        .ip(ip.0),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(Enrolled {
            node_id: node.id,
            node_token: token.secret.expose_secret().to_string(),
            pair: pair.name,
            state: node.state.as_str().to_string(),
        }),
    )
        .into_response())
}

/// A node authenticated by its own token (never a user's).
pub struct NodeAuth(pub store::Node);

impl<S> FromRequestParts<S> for NodeAuth
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(AppError::unauthorized)?;
        if let Some(node) = store::node_by_token(&state.db, token.trim()).await? {
            return Ok(Self(node));
        }
        // A revoked node that still reaches us is told to wipe what it holds and stop serving.
        if store::has_wipe_order(&state.db, token.trim()).await? {
            return Err(AppError::new(
                StatusCode::GONE,
                ErrorItem::new(
                    "node_revoked",
                    "An admin revoked this edge node: wipe its configuration and keys and serve nothing more.",
                ),
            ));
        }
        Err(AppError::unauthorized())
    }
}

#[derive(Deserialize)]
struct ConfigQuery {
    /// The version the node has applied (0 when it has none).
    applied: Option<i64>,
    /// Seconds to wait for a newer version (long-poll), at most 25.
    wait: Option<u64>,
}

async fn current_version(state: &AppState, pair_id: i64) -> AppResult<i64> {
    Ok(
        sqlx::query_scalar("SELECT config_version FROM edge_pairs WHERE id = $1")
            .bind(pair_id)
            .fetch_one(&state.db)
            .await?,
    )
}

/// Long-poll: answers at once when the pair's configuration is newer than `applied`, else
/// waits up to `wait` seconds for `edge::versions` to see it change (a publish here wakes it
/// at once; one on another instance within 200 ms). Each call also records the node's
/// heartbeat.
async fn config_api(
    State(state): State<AppState>,
    NodeAuth(node): NodeAuth,
    Query(q): Query<ConfigQuery>,
) -> AppResult<Response> {
    let applied = q.applied.unwrap_or(0);
    store::heartbeat(&state.db, node.id, applied).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(q.wait.unwrap_or(25).min(25));
    let mut stopping = state.stopping.subscribe();
    let mut versions = state.pair_versions.subscribe();
    // The database first: the shared view may be up to 200 ms old.
    let mut version = current_version(&state, node.pair_id).await?;
    while version == applied && !*stopping.borrow() {
        tokio::select! {
            changed = versions.changed() => {
                if changed.is_err() {
                    break;
                }
                // Versions only grow; a view older than the database read is ignored.
                if let Some(v) = versions.borrow_and_update().get(&node.pair_id) {
                    version = version.max(*v);
                }
            }
            changed = stopping.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    Ok(Json(node_config(&state, &node, version).await?).into_response())
}

/// What `node` must serve at `version`: its pair's app, if any, with the key sealed to it. A
/// node gets only a copy sealed to its own recipient, and the deploy worker stores one only for
/// a confirmed node: an unconfirmed node has nothing to serve (and a node enrolled before
/// confirmation existed keeps serving what it already held until an admin confirms it).
async fn node_config(state: &AppState, node: &store::Node, version: i64) -> AppResult<NodeConfig> {
    let row = sqlx::query(
        "SELECT p.name AS pair, a.id AS app_id, a.name AS app, a.backend_url, a.force_https, a.hsts_max_age, c.id AS cert_id, c.chain_pem, c.sans, k.sealed_key, \
         s.response AS ocsp_staple, s.next_update AS ocsp_next_update \
         FROM edge_pairs p LEFT JOIN apps a ON a.id = p.app_id LEFT JOIN certificates c ON c.id = p.certificate_id \
         LEFT JOIN node_keys k ON k.certificate_id = c.id AND k.node_id = $1 \
         LEFT JOIN ocsp_staples s ON s.certificate_id = c.id AND s.next_update > $3 WHERE p.id = $2",
    )
    .bind(node.id)
    .bind(node.pair_id)
    .bind(crate::db::now())
    .fetch_one(&state.db)
    .await?;
    let pair: String = row.try_get("pair")?;
    let mut sites = Vec::new();
    if let (Some(app_id), Some(sealed_key)) = (
        row.try_get::<Option<i64>, _>("app_id")?,
        row.try_get::<Option<String>, _>("sealed_key")?,
    ) {
        let sans: Vec<String> =
            serde_json::from_str(&row.try_get::<String, _>("sans")?).unwrap_or_default();
        // Only names their owner has proved: a pending claim is never served.
        let mut conn = state.db.acquire().await?;
        let domains = crate::domains::store::verified_hostnames(&mut conn, app_id).await?;
        drop(conn);
        sites.push(Site {
            app: row.try_get("app")?,
            hostnames: domains
                .into_iter()
                .filter(|d| sans.iter().any(|s| hostname::covers(s, d)))
                .collect(),
            chain_pem: row.try_get("chain_pem")?,
            sealed_key,
            backend_url: row.try_get("backend_url")?,
            force_https: row.try_get::<i64, _>("force_https")? != 0,
            hsts_max_age: row.try_get("hsts_max_age")?,
            ocsp_staple: row.try_get("ocsp_staple")?,
            ocsp_next_update: row.try_get("ocsp_next_update")?,
        });
    }
    // The platform hostname, served with the platform's wildcard certificate whenever the
    // pair holds an app (before, or without, the app's own certificate).
    if let (Some(apps_domain), Some(app)) = (
        state.config.apps_domain.as_deref(),
        row.try_get::<Option<String>, _>("app")?,
    ) {
        let mut conn = state.db.acquire().await?;
        if let Some((chain_pem, sealed_key)) =
            crate::domains::platform::sealed_for(&mut conn, apps_domain, node.id).await?
        {
            sites.push(Site {
                hostnames: vec![format!("{app}.{apps_domain}")],
                app,
                chain_pem,
                sealed_key,
                backend_url: row.try_get("backend_url")?,
                force_https: row.try_get::<i64, _>("force_https")? != 0,
                hsts_max_age: row.try_get("hsts_max_age")?,
                ocsp_staple: None,
                ocsp_next_update: None,
            });
        }
    }
    let session_ticket_keys = session_keys::sealed_for(&state.db, node.id).await?;
    Ok(NodeConfig {
        version,
        pair,
        sites,
        allow_private_backends: state.config.allow_private_backends,
        session_ticket_keys,
        challenges: crate::acme::store::challenges_for(&state.db, node.pair_id).await?,
    })
}

// ---- node custody over the API (admins confirm and revoke; staff issue replacement tokens) ----

async fn node_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(id): Path<i64>,
) -> AppResult<Response> {
    user.require_staff()?;
    let node = store::node(&state.db, id).await?;
    let pair = store::pair(&state.db, node.pair_id).await?;
    let mut body = node_json(&pair, &node);
    body["pair"] = json!(pair.name);
    body["revocations"] = custody::revocations(&state.db)
        .await?
        .iter()
        .filter(|r| r.node_id == id)
        .map(revocation_json)
        .collect();
    Ok(Json(body).into_response())
}

#[derive(Deserialize, Default)]
struct ConfirmRequest {
    recipient_fingerprint: Option<String>,
    /// The address the admin checked, when they did: refused if the node's differs.
    address: Option<String>,
    otp: Option<String>,
}

async fn confirm_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ApiCredential(credential): ApiCredential,
    ip: ClientIp,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> AppResult<Response> {
    let req: ConfirmRequest = web::optional_json(&body)?;
    let node = custody::confirm(
        &state,
        &user,
        &credential,
        ip,
        id,
        req.recipient_fingerprint.as_deref().unwrap_or(""),
        req.address.as_deref(),
        req.otp.as_deref(),
    )
    .await?;
    let pair = store::pair(&state.db, node.pair_id).await?;
    Ok(Json(node_json(&pair, &node)).into_response())
}

#[derive(Deserialize, Default)]
struct OtpRequest {
    otp: Option<String>,
}

async fn revoke_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ApiCredential(credential): ApiCredential,
    ip: ClientIp,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> AppResult<Response> {
    let req: OtpRequest = web::optional_json(&body)?;
    let revocation =
        custody::revoke(&state, &user, &credential, ip, id, req.otp.as_deref()).await?;
    Ok(Json(revocation_json(&revocation)).into_response())
}

async fn enroll_token_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ip: ClientIp,
    Path(id): Path<i64>,
) -> AppResult<Response> {
    let (node, token) = custody::new_enroll_token(&state, &user, ip, id).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"node": node, "enroll_token": token.secret.expose_secret()})),
    )
        .into_response())
}
