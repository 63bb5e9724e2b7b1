//! What every page shares: the layout's context (`Chrome`), rendering, flash messages, the
//! HTML error page, static assets, security headers and the Origin check on state changes.

use askama::Template;
use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{Html, IntoResponse, Redirect, Response},
};
use serde::{Deserialize, Serialize};
use tower_sessions::Session;

use crate::{
    accounts::User,
    error::{AppError, AppResult},
    state::AppState,
};

/// The signed-in user as the layout shows them.
#[derive(Clone, Debug)]
pub struct NavUser {
    pub email: String,
    pub is_staff: bool,
    pub is_admin: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Flash {
    pub kind: String,
    pub message: String,
}

/// The layout's context: who is signed in, the CSRF token for forms, a one-time message.
#[derive(Clone, Debug)]
pub struct Chrome {
    pub user: Option<NavUser>,
    pub csrf: String,
    pub flash: Option<Flash>,
    pub vault: VaultNotice,
}

/// What every page says about the vault: sealed (to everyone), or still a plain file at rest
/// (to admins, who can change that).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VaultNotice {
    Open,
    Sealed,
    Plain,
}

impl VaultNotice {
    pub fn of(vault: &crate::vault::Vault) -> Self {
        if vault.is_sealed() {
            VaultNotice::Sealed
        } else if vault.is_split() {
            VaultNotice::Open
        } else {
            VaultNotice::Plain
        }
    }
}

const FLASH_KEY: &str = "flash";

/// The body limit of the routes anyone may call before signing in (sign-in, sign-up, tokens,
/// node enrollment): their forms and JSON are a few hundred bytes, so a megabyte is an attack.
pub fn small_body() -> axum::extract::DefaultBodyLimit {
    axum::extract::DefaultBodyLimit::max(16 * 1024)
}

impl Chrome {
    /// Forms carry the session's CSRF token when signed in, else the visitor's cookie token
    /// (`anonymous`), so a page for a visitor who is not signed in stores no session.
    pub async fn new(
        session: &Session,
        user: Option<&User>,
        anonymous: Option<&crate::accounts::csrf::AnonymousToken>,
        vault: VaultNotice,
    ) -> AppResult<Self> {
        let csrf = crate::accounts::csrf::expected(session, anonymous).await?;
        // Remove only when present: a removal marks the session for saving, a write per page.
        let flash = session.get::<Flash>(FLASH_KEY).await?;
        if flash.is_some() {
            session.remove::<Flash>(FLASH_KEY).await?;
        }
        Ok(Self {
            user: user.map(|u| NavUser {
                email: u.email.clone(),
                is_staff: u.role.is_staff(),
                is_admin: u.role.is_admin(),
            }),
            csrf,
            flash,
            vault,
        })
    }

    pub fn vault_sealed(&self) -> bool {
        self.vault == VaultNotice::Sealed
    }

    /// Admins are told that keys are not sealed at rest until `vault:init`.
    pub fn vault_plain_to_admin(&self) -> bool {
        self.vault == VaultNotice::Plain && self.user.as_ref().is_some_and(|u| u.is_admin)
    }
}

/// Leaves a message for the next page the user sees (after a redirect).
pub async fn flash(session: &Session, kind: &str, message: impl Into<String>) -> AppResult<()> {
    session
        .insert(
            FLASH_KEY,
            Flash {
                kind: kind.into(),
                message: message.into(),
            },
        )
        .await
        .map_err(AppError::from)
}

pub fn render(page: &impl Template) -> AppResult<Response> {
    Ok(Html(page.render()?).into_response())
}

/// Renders a page with a status other than 200 (a form shown again with its errors).
pub fn render_status(status: StatusCode, page: &impl Template) -> AppResult<Response> {
    Ok((status, Html(page.render()?)).into_response())
}

/// Renders a page that shows a secret (a second factor's enrolment): a refused form on it is
/// shown in place, never kept in the session for `form_replay`.
pub fn render_secret(status: StatusCode, page: &impl Template) -> AppResult<Response> {
    let mut response = render_status(status, page)?;
    response.extensions_mut().insert(NoReplay);
    Ok(response)
}

pub fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// An error on an HTML page: the same `AppError`, shown as a page instead of JSON.
#[derive(Debug)]
pub struct PageError(pub AppError);

pub type PageResult = Result<Response, PageError>;

impl<E: Into<AppError>> From<E> for PageError {
    fn from(err: E) -> Self {
        Self(err.into())
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    title: &'a str,
    messages: Vec<String>,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let err = self.0;
        err.log();
        if err.status == StatusCode::UNAUTHORIZED {
            return Redirect::to("/login").into_response();
        }
        let page = ErrorPage {
            status: err.status.as_u16(),
            title: err.status.canonical_reason().unwrap_or("Error"),
            messages: err.errors.iter().map(|e| e.message.clone()).collect(),
        };
        let body = page
            .render()
            .unwrap_or_else(|_| "certdrop: something went wrong".into());
        let mut response = (err.status, Html(body)).into_response();
        if let Some(seconds) = err.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

pub async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../static/app.css"),
    )
}

/// The one script the pages use (the CSP allows scripts from this origin only, never inline).
pub async fn progress_script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../static/progress.js"),
    )
}

pub async fn not_found_page() -> PageError {
    PageError(AppError::not_found("page"))
}

/// Security headers on every response: a CSP without inline script, no framing, no referrer leak.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self' data:; script-src 'self'; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // `same-origin`, not `no-referrer`: under `no-referrer` Chromium sends `Origin: null` on our
    // own form posts, which the Origin check must refuse (found by the browser journeys).
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Every API answer that is an error has the `{"errors":[{"code","message"}]}` shape, even
/// when axum itself refused the request (unreadable JSON, wrong content type, bad path or
/// query): their plain-text reason becomes the message.
pub async fn api_error_shape(request: Request, next: Next) -> Response {
    let api = request.uri().path().starts_with("/api/");
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !api || is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_request",
        _ if status.is_server_error() => "internal",
        _ => "refused",
    };
    let message = if text.is_empty() || status.is_server_error() {
        status.canonical_reason().unwrap_or("Error").to_string()
    } else {
        text
    };
    let mut fixed = (
        status,
        axum::Json(serde_json::json!({"errors": [{"code": code, "message": message}]})),
    )
        .into_response();
    for name in [header::RETRY_AFTER, header::ALLOW] {
        if let Some(v) = parts.headers.get(&name) {
            fixed.headers_mut().insert(name, v.clone());
        }
    }
    fixed
}

/// A refused form shown on the page it came from (Post/Redirect/Get). A browser's form post
/// that is answered with a page of errors (4xx HTML) is redirected, 303, to the page that held
/// the form (its same-origin `Referer`), and that page's next GET shows the refused form once,
/// with its errors and values; a reload then shows the page afresh and re-posts nothing. The
/// answer is kept in the signed-in session only (a visitor without one gets it in place, as do
/// answers marked `NoReplay`, which hold something that must not be stored).
pub async fn form_replay(
    State(state): State<AppState>,
    session: Session,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path.starts_with("/api/") || path.starts_with("/static/") || session.id().is_none() {
        return next.run(request).await;
    }
    let here = request
        .uri()
        .path_and_query()
        .map_or_else(|| path.to_string(), |pq| pq.as_str().to_string());
    if request.method() == Method::GET {
        let navigation = request
            .headers()
            .get("sec-fetch-mode")
            .is_none_or(|v| v.as_bytes() == b"navigate");
        return match take_replay(&session, &here, navigation).await {
            Some(replay) => replay_response(replay),
            None => next.run(request).await,
        };
    }
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let back = request
        .headers()
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| same_origin_path(r, &state.base_origin));
    let response = next.run(request).await;
    let is_html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    let (Some(back), true, true, None) = (
        back,
        response.status().is_client_error(),
        is_html,
        response.extensions().get::<NoReplay>(),
    ) else {
        return response;
    };
    let (parts, body) = response.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 4 * 1024 * 1024).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let replay = Replay {
        path: back.clone(),
        at: crate::db::now(),
        status: parts.status.as_u16(),
        retry_after: parts
            .headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    match session.insert(REPLAY_KEY, replay).await {
        Ok(()) => Redirect::to(&back).into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "could not keep a refused form for its page");
            Response::from_parts(parts, axum::body::Body::from(body))
        }
    }
}

/// Marks an answer that `form_replay` must show in place, never keep in the session.
#[derive(Clone, Copy, Debug)]
pub struct NoReplay;

const REPLAY_KEY: &str = "form_replay";

#[derive(Serialize, Deserialize)]
struct Replay {
    path: String,
    at: i64,
    status: u16,
    retry_after: Option<String>,
    body: String,
}

/// How long a refused form waits for its page.
const REPLAY_SECONDS: i64 = 60;

/// The kept answer, once, if it is for this page and fresh. One kept for another page is
/// dropped when the browser navigates elsewhere, not by a script's fetch (a page's progress
/// poll may land between the redirect and the page it leads to).
async fn take_replay(session: &Session, here: &str, navigation: bool) -> Option<Replay> {
    let replay = session.get::<Replay>(REPLAY_KEY).await.ok()??;
    let mine = replay.path == here;
    if mine || navigation {
        let _ = session.remove::<Replay>(REPLAY_KEY).await;
    }
    (mine && crate::db::now() - replay.at <= REPLAY_SECONDS).then_some(replay)
}

fn replay_response(replay: Replay) -> Response {
    let status = StatusCode::from_u16(replay.status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
    let mut response = (status, Html(replay.body)).into_response();
    if let Some(v) = replay
        .retry_after
        .and_then(|v| HeaderValue::from_str(&v).ok())
    {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

/// The path (and query) of `referer` when it is a page of this site, else `None`.
fn same_origin_path(referer: &str, base_origin: &str) -> Option<String> {
    let url = url::Url::parse(referer).ok()?;
    if url.origin().ascii_serialization() != base_origin {
        return None;
    }
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    (safe_next(Some(&path)) == path).then_some(path)
}

/// Refuses a state-changing request that a browser says came from another origin.
/// Non-browser clients (the CLI, curl) send no Origin; they authenticate with a bearer token.
pub async fn origin_check(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, PageError> {
    if !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        check_origin(request.headers(), &state.base_origin)?;
    }
    Ok(next.run(request).await)
}

fn check_origin(headers: &HeaderMap, base_origin: &str) -> AppResult<()> {
    let refuse = |from: &str| {
        AppError::new(
            StatusCode::FORBIDDEN,
            crate::error::ErrorItem::new(
                "cross_origin",
                format!(
                    "This request came from {from}, not from certdrop at {base_origin}. \
                     Open certdrop at {base_origin} (CERTDROP_BASE_URL) and try again."
                ),
            ),
        )
    };
    match headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or(""))
    {
        Some(origin) if origin != base_origin => Err(refuse(origin)),
        Some(_) => Ok(()),
        None => match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
            Some("cross-site") | Some("same-site") => Err(refuse("another site")),
            _ => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_wrap_at_their_dots_and_stay_escaped() {
        let Ok(askama::filters::Safe(html)) = filters::wrap_dots("a.<b>.example", &()) else {
            unreachable!()
        };
        assert_eq!(html, "a.<wbr>&#60;b&#62;.<wbr>example");
    }

    #[test]
    fn commands_in_a_message_become_escaped_blocks_that_wrap_between_arguments() {
        let Ok(askama::filters::Safe(html)) = filters::commands(
            "Convert <it> with: `openssl x509 -in a&b.der` then upload.",
            &(),
        ) else {
            unreachable!()
        };
        assert_eq!(
            html,
            "Convert &#60;it&#62; with: <code class=\"cmd\"><span>openssl</span> <span>x509</span> \
             <span>-in</span> <span>a&#38;b.der</span></code> then upload."
        );
    }

    #[test]
    fn next_is_only_ever_a_path_on_this_site() {
        for bad in [
            "//evil.example/x",
            "/\t/127.0.0.1:8080/x",
            "/\\evil.example",
            "/x\r\nSet-Cookie: a=b",
            "/x\u{b}y",
            "https://evil.example",
            "/ /evil",
            "",
        ] {
            assert_eq!(safe_next(Some(bad)), "/apps", "{bad:?}");
        }
        assert_eq!(safe_next(Some("/tickets/3?x=1")), "/tickets/3?x=1");
        assert_eq!(safe_next(None), "/apps");
    }

    #[test]
    fn a_refused_form_goes_back_only_to_a_page_of_this_site() {
        let base = "http://127.0.0.1:8080";
        assert_eq!(
            same_origin_path("http://127.0.0.1:8080/apps/shop?x=1", base).as_deref(),
            Some("/apps/shop?x=1")
        );
        for other in [
            "https://127.0.0.1:8080/apps",
            "http://127.0.0.1:8081/apps",
            "http://evil.example/apps",
            "not a url",
            "http://127.0.0.1:8080//evil.example/x",
        ] {
            assert_eq!(same_origin_path(other, base), None, "{other}");
        }
    }

    #[test]
    fn a_foreign_origin_is_refused_and_a_missing_one_allowed() {
        let base = "http://127.0.0.1:8080";
        let mut headers = HeaderMap::new();
        assert!(check_origin(&headers, base).is_ok());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert_eq!(
            check_origin(&headers, base).unwrap_err().first_code(),
            "cross_origin"
        );
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(check_origin(&headers, base).is_ok());
        let mut headers = HeaderMap::new();
        headers.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(check_origin(&headers, base).is_err());
    }
}

/// Problems to show on a form: next to their field when they name one, above the form otherwise.
#[derive(Clone, Debug, Default)]
pub struct FormErrors(pub Vec<crate::error::ErrorItem>);

impl FormErrors {
    pub fn get(&self, field: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|e| e.field == Some(field))
            .map(|e| e.message.as_str())
    }

    pub fn general(&self) -> Vec<&crate::error::ErrorItem> {
        self.0.iter().filter(|e| e.field.is_none()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<AppError> for FormErrors {
    fn from(err: AppError) -> Self {
        Self(err.errors)
    }
}

/// Filters the templates use; `use crate::web::filters;` next to a template struct.
pub mod filters {
    /// A unix timestamp, however many references deep the template hands it over.
    pub trait Unix {
        fn unix(&self) -> i64;
    }

    impl Unix for i64 {
        fn unix(&self) -> i64 {
            *self
        }
    }

    impl<T: Unix + ?Sized> Unix for &T {
        fn unix(&self) -> i64 {
            (**self).unix()
        }
    }

    /// Unix seconds as `2026-11-24 06:35 UTC`.
    pub fn datetime<T: Unix>(at: T, _: &dyn askama::Values) -> askama::Result<String> {
        Ok(super::format_time(at.unix()))
    }

    /// A hostname that wraps at its dots on a narrow screen, not in the middle of a label:
    /// HTML-escaped, with a `<wbr>` after each dot.
    pub fn wrap_dots<T: std::fmt::Display>(
        name: T,
        _: &dyn askama::Values,
    ) -> askama::Result<askama::filters::Safe<String>> {
        let Ok(askama::filters::Safe(escaped)) =
            askama::filters::escape(name, askama::filters::Html);
        Ok(askama::filters::Safe(
            escaped.to_string().replace('.', ".<wbr>"),
        ))
    }

    /// A message whose commands are in backticks (`openssl x509 …`), as HTML: each command a
    /// block that one click selects whole (to copy) and that wraps only between its arguments,
    /// never in the middle of a flag. Everything is HTML-escaped.
    pub fn commands<T: std::fmt::Display>(
        message: T,
        _: &dyn askama::Values,
    ) -> askama::Result<askama::filters::Safe<String>> {
        let escape = |text: &str| {
            askama::filters::escape(text, askama::filters::Html)
                .map(|askama::filters::Safe(s)| s.to_string())
                .unwrap_or_default()
        };
        let message = message.to_string();
        let mut html = String::new();
        for (i, part) in message.split('`').enumerate() {
            if i % 2 == 0 {
                html.push_str(&escape(part));
            } else {
                let words: Vec<String> = part
                    .split(' ')
                    .filter(|w| !w.is_empty())
                    .map(|w| format!("<span>{}</span>", escape(w)))
                    .collect();
                html.push_str(&format!("<code class=\"cmd\">{}</code>", words.join(" ")));
            }
        }
        Ok(askama::filters::Safe(html))
    }

    /// Unix seconds as a calendar date, `2026-11-24`.
    pub fn date<T: Unix>(at: T, _: &dyn askama::Values) -> askama::Result<String> {
        let mut s = super::format_time(at.unix());
        s.truncate(10);
        Ok(s)
    }
}

pub fn format_time(unix: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(format).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// Unix seconds as RFC 3339, the format of every time in the JSON API.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// Adds `Retry-After` to a page answering "too many attempts".
pub fn with_retry_after(mut page: Response, seconds: Option<u64>) -> Response {
    if let Some(seconds) = seconds {
        page.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    page
}

/// A JSON body that may be left out entirely (`{}` assumed), for actions with optional fields.
pub fn optional_json<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> AppResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        AppError::bad_request(
            "invalid_json",
            format!("The request body is not the JSON expected: {e}"),
        )
    })
}

/// A `next` parameter is followed only to a path on this site: it starts with one `/`, and holds
/// no backslash, space or control character (browsers drop tabs and newlines, turning `/\t/host`
/// into `//host`), so no open redirect and no invalid `Location`.
pub fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && n.len() <= 2048
                && !n
                    .chars()
                    .any(|c| c == '\\' || c.is_whitespace() || c.is_control()) =>
        {
            n
        }
        _ => "/apps",
    }
}

/// Integer cents as money: `2000, "USD"` → `20.00 USD`.
pub fn money(cents: i64, currency: &str) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let cents = cents.unsigned_abs();
    format!("{sign}{}.{:02} {currency}", cents / 100, cents % 100)
}
