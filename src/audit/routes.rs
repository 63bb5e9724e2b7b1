//! The admin's audit page: browse and filter the trail, newest first.

use askama::Template;
use axum::{
    Router,
    extract::{Query, State},
    routing::get,
};

use super::{AuditEvent, Filter, list};
use crate::{
    accounts::SignedIn,
    db::Page,
    state::AppState,
    web::{Chrome, PageResult, filters, render},
};

pub fn router() -> Router<AppState> {
    Router::new().route("/admin/audit", get(audit_page))
}

#[derive(Template)]
#[template(path = "admin/audit.html")]
struct AuditPage {
    chrome: Chrome,
    filter: Filter,
    events: Vec<AuditEvent>,
    next_cursor: Option<String>,
}

impl AuditPage {
    fn next_link(&self, cursor: &str) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in [
            ("action", &self.filter.action),
            ("actor", &self.filter.actor),
            ("app", &self.filter.app),
            ("object", &self.filter.object),
        ] {
            if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
                query.append_pair(key, v);
            }
        }
        query.append_pair("cursor", cursor);
        format!("/admin/audit?{}", query.finish())
    }
}

#[derive(serde::Deserialize)]
struct AuditQuery {
    #[serde(flatten)]
    filter: Filter,
    cursor: Option<String>,
}

async fn audit_page(
    State(state): State<AppState>,
    me: SignedIn,
    Query(q): Query<AuditQuery>,
) -> PageResult {
    me.user.require_admin()?;
    let (events, next_cursor) = list(
        &state.db,
        &q.filter,
        Page::new(q.cursor.as_deref(), Some(100))?,
    )
    .await?;
    Ok(render(&AuditPage {
        chrome: me.chrome().await?,
        filter: q.filter,
        events,
        next_cursor,
    })?)
}
