//! Webhook endpoints over HTTP: `/api/v1/webhooks[/{id}[/deliveries|/test]]` and the
//! `/account/webhooks` page. A user sees and changes only their own endpoints; the secret is
//! shown once, at creation.

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
use zeroize::Zeroizing;

use super::{EVENT_TYPES, store};
use crate::{
    accounts::{
        ApiUser, SignedIn, User,
        csrf::{CsrfForm, NoFields},
    },
    audit::{self, Entry},
    db::PageQuery,
    error::{AppError, AppResult, ErrorItem},
    state::AppState,
    vault::PlainKey,
    web::{self, Chrome, FormErrors, PageResult, filters, render_status, see_other},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/account/webhooks", get(page).post(create_page))
        .route("/account/webhooks/{id}/delete", post(delete_page))
        .route("/account/webhooks/{id}/test", post(test_page))
        .route("/api/v1/webhooks", get(list_api).post(create_api))
        .route("/api/v1/webhooks/{id}", axum::routing::delete(delete_api))
        .route("/api/v1/webhooks/{id}/deliveries", get(deliveries_api))
        .route("/api/v1/webhooks/{id}/test", post(test_api))
}

#[derive(Deserialize, Default)]
pub struct NewEndpoint {
    pub url: String,
    #[serde(default)]
    pub events: Vec<String>,
}

/// Registers an endpoint for `user`; returns it and its secret (shown this once).
async fn create(
    state: &AppState,
    user: &User,
    req: NewEndpoint,
) -> AppResult<(store::Endpoint, String)> {
    let mut errors = Vec::new();
    let url = url::Url::parse(req.url.trim()).ok().filter(|u| {
        matches!(u.scheme(), "https" | "http") && u.host_str().is_some() && u.username().is_empty()
    });
    match &url {
        None => errors.push(
            ErrorItem::new(
                "invalid_webhook_url",
                "Give the endpoint as https://host/path (http:// for a private network).",
            )
            .on("url"),
        ),
        Some(u) => {
            let port = u.port_or_known_default().unwrap_or(443);
            let host = u.host().expect("checked above");
            if let Err(why) = crate::edge::backend::check_host(
                &host,
                port,
                state.config.allow_private_backends,
                &[],
            )
            .await
            {
                errors.push(
                    ErrorItem::new(
                        "webhook_url_not_allowed",
                        why.replace("The backend", "The endpoint"),
                    )
                    .on("url"),
                );
            }
        }
    }
    let unknown: Vec<&String> = req
        .events
        .iter()
        .filter(|e| !EVENT_TYPES.contains(&e.as_str()))
        .collect();
    if req.events.is_empty() || !unknown.is_empty() {
        errors.push(
            ErrorItem::new(
                "invalid_events",
                format!(
                    "Choose the events to receive{}: {}.",
                    if unknown.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " (not events: {})",
                            unknown
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    },
                    EVENT_TYPES.join(", ")
                ),
            )
            .on("events"),
        );
    }
    if store::count_owned(&state.db, user.id).await? >= store::MAX_ENDPOINTS {
        errors.push(ErrorItem::new(
            "too_many_webhooks",
            format!(
                "You have {} endpoints already; remove one first.",
                store::MAX_ENDPOINTS
            ),
        ));
    }
    let Some(url) = url.filter(|_| errors.is_empty()) else {
        return Err(AppError::many(StatusCode::UNPROCESSABLE_ENTITY, errors));
    };
    let mut events = req.events;
    events.sort();
    events.dedup();
    let secret = super::new_secret();
    let sealed = state
        .vault
        .seal(&PlainKey::from_pem(Zeroizing::new(secret.clone())))?;
    let endpoint = store::create(&state.db, user.id, url.as_str(), &events, &sealed).await?;
    audit::record(
        &state.db,
        Entry::new(
            Some(user),
            "webhook.created",
            "webhook_endpoint",
            endpoint.id,
        )
        .detail(json!({"url": endpoint.url, "events": endpoint.events})),
    )
    .await?;
    Ok((endpoint, secret))
}

/// Queues a `webhook.test` message to one of `user`'s endpoints.
async fn send_test(state: &AppState, user: &User, id: i64) -> AppResult<String> {
    let endpoint = store::find_owned(&state.db, user.id, id).await?;
    let key = uuid::Uuid::new_v4().to_string();
    let event_id = super::message_id("webhook.test", &key);
    let payload = super::payload("webhook.test", json!({"endpoint_id": endpoint.id}));
    let mut conn = state.db.acquire().await?;
    store::queue(&mut conn, endpoint.id, &event_id, "webhook.test", &payload).await?;
    Ok(event_id)
}

fn endpoint_json(e: &store::Endpoint) -> Value {
    json!({"id": e.id, "url": e.url, "events": e.events, "created_at": web::rfc3339(e.created_at)})
}

fn delivery_json(d: &store::Delivery) -> Value {
    json!({
        "id": d.id,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "state": d.state,
        "attempts": d.attempts,
        "last_status": d.last_status,
        "last_error": d.last_error,
        "created_at": web::rfc3339(d.created_at),
        "delivered_at": d.delivered_at.map(web::rfc3339),
    })
}

// ---- JSON API ----

async fn create_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Json(req): Json<NewEndpoint>,
) -> AppResult<Response> {
    let (endpoint, secret) = create(&state, &user, req).await?;
    let mut body = endpoint_json(&endpoint);
    body["secret"] = json!(secret);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn list_api(State(state): State<AppState>, ApiUser(user): ApiUser) -> AppResult<Response> {
    let items: Vec<Value> = store::list_owned(&state.db, user.id)
        .await?
        .iter()
        .map(endpoint_json)
        .collect();
    Ok(Json(json!({"items": items, "events": EVENT_TYPES})).into_response())
}

async fn delete_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(id): Path<i64>,
) -> AppResult<Response> {
    store::delete_owned(&state.db, user.id, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn deliveries_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(id): Path<i64>,
    Query(q): Query<PageQuery>,
) -> AppResult<Response> {
    let endpoint = store::find_owned(&state.db, user.id, id).await?;
    let (items, next) = store::deliveries(&state.db, endpoint.id, q.page()?).await?;
    let items: Vec<Value> = items.iter().map(delivery_json).collect();
    Ok(Json(json!({"items": items, "next_cursor": next})).into_response())
}

async fn test_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(id): Path<i64>,
) -> AppResult<Response> {
    let event_id = send_test(&state, &user, id).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"event_id": event_id}))).into_response())
}

// ---- the page ----

struct EndpointView {
    endpoint: store::Endpoint,
    deliveries: Vec<store::Delivery>,
}

#[derive(Template)]
#[template(path = "accounts/webhooks.html")]
struct WebhooksPage {
    chrome: Chrome,
    endpoints: Vec<EndpointView>,
    event_types: Vec<&'static str>,
    new_secret: Option<String>,
    url: String,
    errors: FormErrors,
}

async fn render_page(
    state: &AppState,
    me: &SignedIn,
    status: StatusCode,
    new_secret: Option<String>,
    url: String,
    errors: FormErrors,
) -> PageResult {
    let mut endpoints = Vec::new();
    for endpoint in store::list_owned(&state.db, me.user.id).await? {
        let (deliveries, _) =
            store::deliveries(&state.db, endpoint.id, crate::db::Page::new(None, Some(5))?).await?;
        endpoints.push(EndpointView {
            endpoint,
            deliveries,
        });
    }
    let shows_secret = new_secret.is_some();
    let page = WebhooksPage {
        chrome: me.chrome().await?,
        endpoints,
        event_types: EVENT_TYPES.to_vec(),
        new_secret,
        url,
        errors,
    };
    // A page that shows a secret is never kept for a replay.
    Ok(match shows_secret {
        true => web::render_secret(status, &page)?,
        false => render_status(status, &page)?,
    })
}

async fn page(State(state): State<AppState>, me: SignedIn) -> PageResult {
    render_page(
        &state,
        &me,
        StatusCode::OK,
        None,
        String::new(),
        FormErrors::default(),
    )
    .await
}

async fn create_page(
    State(state): State<AppState>,
    me: SignedIn,
    CsrfForm(fields): CsrfForm<Vec<(String, String)>>,
) -> PageResult {
    let url = fields
        .iter()
        .find(|(k, _)| k == "url")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let events = fields
        .iter()
        .filter(|(k, _)| k == "events")
        .map(|(_, v)| v.clone())
        .collect();
    match create(
        &state,
        &me.user,
        NewEndpoint {
            url: url.clone(),
            events,
        },
    )
    .await
    {
        Ok((_, secret)) => {
            render_page(
                &state,
                &me,
                StatusCode::CREATED,
                Some(secret),
                String::new(),
                FormErrors::default(),
            )
            .await
        }
        Err(err) if err.status.is_client_error() => {
            let status = err.status;
            render_page(&state, &me, status, None, url, err.into()).await
        }
        Err(err) => Err(err.into()),
    }
}

async fn delete_page(
    State(state): State<AppState>,
    me: SignedIn,
    Path(id): Path<i64>,
    CsrfForm(_): CsrfForm<NoFields>,
) -> PageResult {
    store::delete_owned(&state.db, me.user.id, id).await?;
    web::flash(
        &me.session,
        "ok",
        "Endpoint removed; nothing more is sent to it.",
    )
    .await?;
    Ok(see_other("/account/webhooks"))
}

async fn test_page(
    State(state): State<AppState>,
    me: SignedIn,
    Path(id): Path<i64>,
    CsrfForm(_): CsrfForm<NoFields>,
) -> PageResult {
    send_test(&state, &me.user, id).await?;
    web::flash(
        &me.session,
        "ok",
        "Test event queued; its delivery shows below within seconds.",
    )
    .await?;
    Ok(see_other("/account/webhooks"))
}
