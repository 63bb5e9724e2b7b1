//! App and domain pages, and `/api/v1/apps`. Page and API handlers share one function per action.

use askama::Template;
use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{store, store::App, validate_backend, validate_name};
use crate::{
    accounts::{ApiUser, SignedIn, User, csrf::CsrfForm, csrf::NoFields, extract::ClientIp},
    audit::{self, Entry},
    db::{Page, PageQuery},
    error::{AppError, AppResult, ErrorItem},
    state::AppState,
    web::{self, Chrome, FormErrors, PageResult, filters, render, render_status, see_other},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/apps", get(apps_page).post(create_app_page))
        .route("/apps/{app}", get(app_page))
        .route("/apps/{app}/delete", post(delete_app_page))
        .route("/api/v1/apps", get(list_apps_api).post(create_app_api))
        .route(
            "/api/v1/apps/{app}",
            get(show_app_api)
                .delete(delete_app_api)
                .patch(update_app_api),
        )
        .route("/apps/{app}/settings", post(settings_page))
}

// ---- the actions, shared by pages and API ----

async fn create_app(
    state: &AppState,
    user: &User,
    ip: ClientIp,
    name: &str,
    backend: &str,
) -> AppResult<App> {
    let mut errors = Vec::new();
    let name = validate_name(name)
        .map_err(|m| errors.push(ErrorItem::new("invalid_app_name", m).on("name")))
        .ok();
    let backend = validate_backend(backend)
        .map_err(|m| errors.push(ErrorItem::new("invalid_backend_url", m).on("backend_url")))
        .ok();
    let (Some(name), Some(backend)) = (name, backend) else {
        return Err(AppError::many(StatusCode::UNPROCESSABLE_ENTITY, errors));
    };
    backend_allowed(state, &backend).await?;
    let app = store::create(&state.db, user, &name, &backend).await?;
    audit::record(
        &state.db,
        Entry::new(Some(user), "app.created", "app", &app.name)
            .app(&app.name)
            .detail(json!({"backend_url": app.backend_url}))
            .ip(ip.0),
    )
    .await?;
    Ok(app)
}

/// Deletes an app, unless it holds an edge pair (remove its TLS first: that stops billing) or
/// a deployment is under way.
async fn delete_app(state: &AppState, user: &User, ip: ClientIp, app: &App) -> AppResult<()> {
    if app.owner_id != user.id && !user.role.is_staff() {
        return Err(AppError::forbidden());
    }
    let mut conn = state.db.acquire().await?;
    if crate::edge::store::pair_of_app(&mut conn, app.id)
        .await?
        .is_some()
    {
        return Err(AppError::conflict(
            "app_holds_pair",
            format!(
                "{} still holds its edge pair (and is billed for it). Open a remove ticket first (`certdrop certs:remove --app {}`); delete the app once it is deployed.",
                app.name, app.name
            ),
        ));
    }
    let busy: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM tickets WHERE app_id = $1 AND state IN ('approved', 'deploying')",
    )
    .bind(app.id)
    .fetch_one(&mut *conn)
    .await?;
    drop(conn);
    if busy > 0 {
        return Err(AppError::conflict(
            "deployment_in_progress",
            "A deployment for this app is under way; wait for it to finish, then delete the app.",
        ));
    }
    store::delete(&state.db, app).await?;
    audit::record(
        &state.db,
        Entry::new(Some(user), "app.deleted", "app", &app.name)
            .app(&app.name)
            .ip(ip.0),
    )
    .await
}

/// Changes the backend URL, "force HTTPS" and the HSTS max-age; a served app's edge pair picks
/// them up at once.
async fn update_app(
    state: &AppState,
    user: &User,
    ip: ClientIp,
    app: &App,
    mut changes: store::Changes,
) -> AppResult<()> {
    if app.owner_id != user.id {
        return Err(AppError::forbidden());
    }
    if let Some(raw) = &changes.backend_url {
        let backend = validate_backend(raw).map_err(|m| {
            AppError::unprocessable(ErrorItem::new("invalid_backend_url", m).on("backend_url"))
        })?;
        backend_allowed(state, &backend).await?;
        changes.backend_url = Some(backend);
    }
    if changes
        .hsts_max_age
        .is_some_and(|age| !(0..=MAX_HSTS_SECONDS).contains(&age))
    {
        return Err(AppError::unprocessable(
            ErrorItem::new(
                "invalid_hsts_max_age",
                "HSTS max-age is a number of seconds from 0 (off) to 63072000 (two years); 31536000 is one year.",
            )
            .on("hsts_max_age"),
        ));
    }
    store::update(&state.db, app, &changes).await?;
    crate::domains::republish(state, app).await?;
    audit::record(
        &state.db,
        Entry::new(Some(user), "app.updated", "app", &app.name)
            .app(&app.name)
            .detail(json!(changes))
            .ip(ip.0),
    )
    .await
}

/// Two years, the longest HSTS max-age browsers' preload lists ask for.
const MAX_HSTS_SECONDS: i64 = 2 * 365 * 24 * 3600;

/// Refuses a backend (already a valid URL) that resolves to where an edge must never proxy:
/// the machine itself, link-local addresses, certdrop's own listener or an edge node's.
async fn backend_allowed(state: &AppState, backend: &str) -> AppResult<()> {
    let refused = |message: String| {
        AppError::unprocessable(ErrorItem::new("backend_not_allowed", message).on("backend_url"))
    };
    let url = url::Url::parse(backend).map_err(|e| refused(e.to_string()))?;
    let (Some(host), Some(port)) = (url.host(), url.port_or_known_default()) else {
        return Ok(());
    };
    let mut own: Vec<std::net::SocketAddr> = crate::edge::store::node_addresses(&state.db).await?;
    own.push(state.config.listen);
    if let (Some(url::Host::Ipv4(ip)), Some(port)) = (
        state.base_url.host(),
        state.base_url.port_or_known_default(),
    ) {
        own.push((ip, port).into());
    }
    crate::edge::backend::check_host(&host, port, state.config.allow_private_backends, &own)
        .await
        .map_err(refused)
}

// ---- pages ----

struct AppRow {
    app: App,
    domains: Vec<String>,
    tls: super::status::TlsStatus,
}

#[derive(Template)]
#[template(path = "apps/list.html")]
struct AppsPage {
    chrome: Chrome,
    apps: Vec<AppRow>,
    next_cursor: Option<String>,
    is_staff: bool,
    name: String,
    backend_url: String,
    errors: FormErrors,
}

#[derive(Deserialize)]
struct CursorQuery {
    cursor: Option<String>,
}

async fn apps_listing(
    state: &AppState,
    user: &User,
    cursor: Option<&str>,
) -> AppResult<(Vec<AppRow>, Option<String>)> {
    let (apps, next) = store::list_visible(&state.db, user, Page::new(cursor, None)?).await?;
    let ids: Vec<i64> = apps.iter().map(|a| a.id).collect();
    let all_domains = crate::domains::store::of_apps(&state.db, &ids).await?;
    let mut statuses = super::status::of_apps(&state.db, &ids).await?;
    let rows = apps
        .into_iter()
        .map(|app| AppRow {
            tls: statuses
                .remove(&app.id)
                .unwrap_or(super::status::TlsStatus::NoTls),
            domains: all_domains
                .iter()
                .filter(|d| d.app_id == app.id)
                .map(|d| d.hostname.clone())
                .collect(),
            app,
        })
        .collect();
    Ok((rows, next))
}

async fn apps_page(
    State(state): State<AppState>,
    me: SignedIn,
    Query(q): Query<CursorQuery>,
) -> PageResult {
    let (apps, next_cursor) = apps_listing(&state, &me.user, q.cursor.as_deref()).await?;
    Ok(render(&AppsPage {
        chrome: me.chrome().await?,
        apps,
        next_cursor,
        is_staff: me.user.role.is_staff(),
        name: String::new(),
        backend_url: String::new(),
        errors: FormErrors::default(),
    })?)
}

#[derive(Deserialize)]
struct CreateAppForm {
    name: String,
    backend_url: String,
}

async fn create_app_page(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    CsrfForm(form): CsrfForm<CreateAppForm>,
) -> PageResult {
    match create_app(&state, &me.user, ip, &form.name, &form.backend_url).await {
        Ok(app) => {
            web::flash(
                &me.session,
                "ok",
                format!("App {} created. Add its domains next.", app.name),
            )
            .await?;
            Ok(see_other(&format!("/apps/{}", app.name)))
        }
        Err(err) if err.status.is_client_error() => {
            let (apps, next_cursor) = apps_listing(&state, &me.user, None).await?;
            Ok(render_status(
                err.status,
                &AppsPage {
                    chrome: me.chrome().await?,
                    apps,
                    next_cursor,
                    is_staff: me.user.role.is_staff(),
                    name: form.name,
                    backend_url: form.backend_url,
                    errors: err.into(),
                },
            )?)
        }
        Err(err) => Err(err.into()),
    }
}

#[derive(Template)]
#[template(path = "apps/show.html")]
struct AppPage {
    chrome: Chrome,
    app: App,
    domains: Vec<DomainView>,
    /// The DNS target customers point their domains at (a CNAME target or the pair's addresses).
    target: Option<String>,
    /// The app's platform hostname (`<app>.<CERTDROP_APPS_DOMAIN>`), where one is configured.
    platform_hostname: Option<String>,
    /// The viewer is not the owner (staff): domain changes need an audited reason.
    on_behalf: bool,
    certs: Vec<crate::certs::store::Certificate>,
    /// The last renewal (or fallback) of each listed certificate.
    renewals: std::collections::HashMap<i64, crate::acme::store::Renewal>,
    /// Whether certdrop can obtain certificates itself (an ACME directory is configured).
    acme: bool,
    statuses: std::collections::HashMap<i64, &'static str>,
    /// The ticket a pending or deploying certificate waits in, for a link from its status.
    waiting: std::collections::HashMap<i64, i64>,
    /// Whether the app holds an edge pair (TLS provisioned).
    provisioned: bool,
    tls: super::status::TlsStatus,
    /// The steps of the deployment under way, which the page follows live.
    progress: Vec<crate::tickets::progress::Step>,
    /// Whether an earlier certificate exists to roll back to.
    can_roll_back: bool,
    monthly_price: String,
    extras: AppPageExtras,
    /// Revoked nodes that held the key the app serves now: the customer should replace it.
    exposed: Vec<crate::edge::custody::Revocation>,
    errors: FormErrors,
}

/// One domain on the app page, with the records to create.
struct DomainView {
    domain: crate::domains::store::Domain,
    txt_name: String,
    /// Zone-file lines that point the domain here (none before there is a target).
    records: Vec<String>,
    /// At a zone apex, where a CNAME is not allowed: A/AAAA lines.
    apex_records: Vec<String>,
}

/// What a form left on the app page: the hostname typed, and a removal waiting for its
/// confirmation.
#[derive(Default)]
pub struct AppPageExtras {
    pub hostname: String,
    pub confirm_removal: Option<String>,
}

pub async fn render_app_page(
    state: &AppState,
    me: &SignedIn,
    app: App,
    status: StatusCode,
    extras: AppPageExtras,
    errors: FormErrors,
) -> PageResult {
    let target = crate::domains::target(state, &app).await?;
    let line = |r: &crate::domains::DnsRecord| crate::domains::routes::record_line(r);
    let domains = crate::domains::store::of_app(&state.db, &app)
        .await?
        .into_iter()
        .map(|domain| DomainView {
            txt_name: crate::domains::txt_name(&domain.hostname),
            records: target.records(&domain.hostname).iter().map(line).collect(),
            apex_records: match target.cname {
                Some(_) => target
                    .address_records(&domain.hostname)
                    .iter()
                    .map(line)
                    .collect(),
                None => Vec::new(),
            },
            domain,
        })
        .collect();
    let (certs, _) =
        crate::certs::store::list_for_app(&state.db, &app, Page::new(None, None)?).await?;
    let ids: Vec<i64> = certs.iter().map(|c| c.id).collect();
    let renewals = crate::acme::store::last_renewals(&state.db, &ids).await?;
    let statuses = crate::certs::store::statuses(&state.db, app.id).await?;
    let waiting = crate::certs::store::waiting_tickets(&state.db, app.id).await?;
    let mut conn = state.db.acquire().await?;
    let provisioned = crate::edge::store::pair_of_app(&mut conn, app.id)
        .await?
        .is_some();
    let can_roll_back = match crate::tickets::store::deployed_certificate(&mut conn, app.id).await?
    {
        Some(current) => crate::tickets::store::rollback_target(&mut conn, app.id, current)
            .await?
            .is_some(),
        None => false,
    };
    drop(conn);
    let tls = super::status::of_app(&state.db, app.id).await?;
    let progress = match &tls {
        super::status::TlsStatus::Deploying { ticket, .. } => {
            crate::tickets::progress::steps(&state.db, *ticket).await?
        }
        _ => Vec::new(),
    };
    let exposed = match statuses.iter().find(|(_, s)| **s == "deployed") {
        Some((served, _)) => crate::edge::custody::revocations_holding(&state.db, *served).await?,
        None => Vec::new(),
    };
    Ok(render_status(
        status,
        &AppPage {
            chrome: me.chrome().await?,
            target: crate::domains::routes::target_text(&target),
            platform_hostname: crate::domains::platform_hostname(state, &app),
            on_behalf: app.owner_id != me.user.id,
            app,
            domains,
            certs,
            renewals,
            acme: state.config.acme.is_some(),
            statuses,
            waiting,
            provisioned,
            tls,
            progress,
            can_roll_back,
            exposed,
            monthly_price: crate::web::money(state.config.pair_price_cents, &state.config.currency),
            extras,
            errors,
        },
    )?)
}

async fn app_page(
    State(state): State<AppState>,
    me: SignedIn,
    Path(name): Path<String>,
) -> PageResult {
    let app = store::find_visible(&state.db, &me.user, &name).await?;
    render_app_page(
        &state,
        &me,
        app,
        StatusCode::OK,
        AppPageExtras::default(),
        FormErrors::default(),
    )
    .await
}

impl AppPage {
    fn status(&self, cert: &crate::certs::store::Certificate) -> &'static str {
        crate::certs::routes::status(&self.statuses, cert)
    }
}

async fn delete_app_page(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    Path(name): Path<String>,
    CsrfForm(_): CsrfForm<NoFields>,
) -> PageResult {
    let app = store::find_visible(&state.db, &me.user, &name).await?;
    delete_app(&state, &me.user, ip, &app).await?;
    web::flash(&me.session, "ok", format!("App {} deleted.", app.name)).await?;
    Ok(see_other("/apps"))
}

// ---- JSON API ----

#[derive(Serialize)]
pub struct AppJson {
    name: String,
    backend_url: String,
    owner: String,
    force_https: bool,
    hsts_max_age: i64,
    /// Whether an uploaded certificate near expiry is replaced by an ACME one.
    acme_fallback: bool,
    domains: Vec<String>,
    platform_hostname: Option<String>,
    /// Where the app's domains should point: the CNAME target and the pair's addresses.
    dns_target: crate::domains::Target,
    /// The app's one TLS status (`state`, `label`, `ticket`).
    tls_status: serde_json::Value,
    created_at: String,
}

impl AppJson {
    fn new(
        app: App,
        domains: Vec<String>,
        dns_target: crate::domains::Target,
        tls: &super::status::TlsStatus,
    ) -> Self {
        Self {
            tls_status: tls.json(),
            platform_hostname: dns_target.cname.clone(),
            dns_target,
            name: app.name,
            backend_url: app.backend_url,
            owner: app.owner_email,
            force_https: app.force_https,
            hsts_max_age: app.hsts_max_age,
            acme_fallback: app.acme_fallback,
            domains,
            created_at: web::rfc3339(app.created_at),
        }
    }
}

async fn list_apps_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Query(q): Query<PageQuery>,
) -> AppResult<Response> {
    let (apps, next) = store::list_visible(&state.db, &user, q.page()?).await?;
    let ids: Vec<i64> = apps.iter().map(|a| a.id).collect();
    let all_domains = crate::domains::store::of_apps(&state.db, &ids).await?;
    let mut targets = crate::domains::targets(&state, &apps).await?;
    let statuses = super::status::of_apps(&state.db, &ids).await?;
    let items: Vec<AppJson> = apps
        .into_iter()
        .map(|app| {
            let domains = all_domains
                .iter()
                .filter(|d| d.app_id == app.id)
                .map(|d| d.hostname.clone())
                .collect();
            let target = targets.remove(&app.id).unwrap_or_default();
            let tls = statuses
                .get(&app.id)
                .cloned()
                .unwrap_or(super::status::TlsStatus::NoTls);
            AppJson::new(app, domains, target, &tls)
        })
        .collect();
    Ok(Json(json!({"items": items, "next_cursor": next})).into_response())
}

#[derive(Deserialize)]
struct CreateAppRequest {
    name: String,
    backend_url: String,
}

async fn create_app_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ip: ClientIp,
    Json(req): Json<CreateAppRequest>,
) -> AppResult<Response> {
    let app = create_app(&state, &user, ip, &req.name, &req.backend_url).await?;
    Ok((
        StatusCode::CREATED,
        Json(AppJson::new(
            app.clone(),
            Vec::new(),
            crate::domains::target(&state, &app).await?,
            &super::status::TlsStatus::NoTls,
        )),
    )
        .into_response())
}

async fn show_app_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(name): Path<String>,
) -> AppResult<Response> {
    let app = store::find_visible(&state.db, &user, &name).await?;
    let domains = crate::domains::store::of_app(&state.db, &app).await?;
    let target = crate::domains::target(&state, &app).await?;
    let mut conn = state.db.acquire().await?;
    let serving = crate::tickets::store::deployed_certificate(&mut conn, app.id).await?;
    let provisioned = crate::edge::store::pair_of_app(&mut conn, app.id)
        .await?
        .is_some();
    drop(conn);
    let tls = super::status::of_app(&state.db, app.id).await?;
    let mut body = serde_json::to_value(AppJson::new(
        app,
        domains.into_iter().map(|d| d.hostname).collect(),
        target,
        &tls,
    ))
    .map_err(anyhow::Error::from)?;
    body["provisioned"] = json!(provisioned);
    body["serving_certificate_id"] = json!(serving);
    body["pair_price"] = json!({
        "cents_per_month": state.config.pair_price_cents,
        "currency": state.config.currency,
    });
    Ok(Json(body).into_response())
}

async fn delete_app_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ip: ClientIp,
    Path(name): Path<String>,
) -> AppResult<StatusCode> {
    let app = store::find_visible(&state.db, &user, &name).await?;
    delete_app(&state, &user, ip, &app).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn update_app_api(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ip: ClientIp,
    Path(name): Path<String>,
    Json(changes): Json<store::Changes>,
) -> AppResult<Response> {
    let app = store::find_visible(&state.db, &user, &name).await?;
    update_app(&state, &user, ip, &app, changes).await?;
    let app = store::find_visible(&state.db, &user, &name).await?;
    let domains = crate::domains::store::of_app(&state.db, &app).await?;
    let target = crate::domains::target(&state, &app).await?;
    let tls = super::status::of_app(&state.db, app.id).await?;
    Ok(Json(AppJson::new(
        app,
        domains.into_iter().map(|d| d.hostname).collect(),
        target,
        &tls,
    ))
    .into_response())
}

#[derive(Deserialize)]
struct SettingsForm {
    backend_url: String,
    force_https: Option<String>,
    hsts_max_age: Option<String>,
    acme_fallback: Option<String>,
}

async fn settings_page(
    State(state): State<AppState>,
    me: SignedIn,
    ip: ClientIp,
    Path(name): Path<String>,
    CsrfForm(form): CsrfForm<SettingsForm>,
) -> PageResult {
    let app = store::find_visible(&state.db, &me.user, &name).await?;
    let hsts_max_age = match form.hsts_max_age.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(raw) => Some(raw.parse().unwrap_or(-1)),
    };
    let changes = store::Changes {
        force_https: Some(form.force_https.is_some()),
        backend_url: Some(form.backend_url),
        hsts_max_age,
        acme_fallback: Some(form.acme_fallback.is_some()),
    };
    match update_app(&state, &me.user, ip, &app, changes).await {
        Ok(()) => {
            web::flash(
                &me.session,
                "ok",
                "Settings saved; the edge servers pick them up within a second.",
            )
            .await?;
            Ok(see_other(&format!("/apps/{}", app.name)))
        }
        Err(err) if err.status.is_client_error() && err.status != StatusCode::FORBIDDEN => {
            render_app_page(
                &state,
                &me,
                app,
                err.status,
                AppPageExtras::default(),
                err.into(),
            )
            .await
        }
        Err(err) => Err(err.into()),
    }
}
