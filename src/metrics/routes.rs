//! `/metrics`: to an admin's API token on the main listener, or to anyone on the private
//! `CERTDROP_METRICS_LISTEN` address; and the middleware that counts every answered request.

use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};

use crate::{accounts::ApiUser, error::AppResult, state::AppState};

/// The content type of the Prometheus text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(admin_metrics))
}

/// The router of `CERTDROP_METRICS_LISTEN`: `/metrics` alone, without a token (bind it to an
/// address only Prometheus reaches).
pub fn private_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn admin_metrics(state: State<AppState>, ApiUser(user): ApiUser) -> AppResult<Response> {
    user.require_admin()?;
    metrics(state).await
}

async fn metrics(State(state): State<AppState>) -> AppResult<Response> {
    let text = state.metrics.render(&state.db).await?;
    Ok(([(header::CONTENT_TYPE, TEXT_FORMAT)], text).into_response())
}

/// Counts each answer by its route template (`/apps/{app}`; `unmatched` for a 404 outside any
/// route), method and status, and times it.
pub async fn count_requests(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = request.method().as_str().to_string();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    state.metrics.request(
        &route,
        &method,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}
