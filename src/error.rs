//! `AppError`: what a user is told (a stable code and a message that says what to do next)
//! versus what is logged (the cause chain). Internal error text never reaches a client.

use std::borrow::Cow;

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

/// One problem found, as the API reports it: `{"code","message"}` (+ the form field it concerns).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ErrorItem {
    pub code: Cow<'static, str>,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
}

impl ErrorItem {
    pub fn new(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            field: None,
        }
    }

    pub fn on(mut self, field: &'static str) -> Self {
        self.field = Some(field);
        self
    }
}

#[derive(Debug)]
pub struct AppError {
    pub status: StatusCode,
    pub errors: Vec<ErrorItem>,
    pub retry_after: Option<u64>,
    /// The cause, for the log only.
    source: Option<anyhow::Error>,
}

pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    pub fn new(status: StatusCode, item: ErrorItem) -> Self {
        Self {
            status,
            errors: vec![item],
            retry_after: None,
            source: None,
        }
    }

    pub fn many(status: StatusCode, errors: Vec<ErrorItem>) -> Self {
        Self {
            status,
            errors,
            retry_after: None,
            source: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorItem::new(code, message))
    }

    pub fn unprocessable(item: ErrorItem) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, item)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, ErrorItem::new(code, message))
    }

    /// "Not found" is also the answer for objects that exist but belong to someone else.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorItem::new(
                "not_found",
                format!("No {what} by that name or id is visible to you."),
            ),
        )
    }

    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            ErrorItem::new(
                "forbidden",
                "Your role does not allow this. Ask an administrator if you need access.",
            ),
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorItem::new(
                "unauthorized",
                "Sign in first: send `Authorization: Bearer TOKEN` (run `certdrop login` to get one).",
            ),
        )
    }

    pub fn rate_limited(seconds: u64) -> Self {
        let mut err = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorItem::new(
                "rate_limited",
                format!("Too many attempts. Try again in {seconds} seconds."),
            ),
        );
        err.retry_after = Some(seconds);
        err
    }

    pub fn internal(source: anyhow::Error) -> Self {
        if source.is::<crate::vault::Sealed>() {
            return Self::vault_sealed();
        }
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            errors: vec![ErrorItem::new(
                "internal",
                "Something went wrong on our side. It has been logged; please try again.",
            )],
            retry_after: None,
            source: Some(source),
        }
    }

    /// 503 `vault_sealed`: what needs the vault waits until key holders unseal it.
    pub fn vault_sealed() -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            errors: vec![ErrorItem::new(
                "vault_sealed",
                "The vault is sealed: certdrop can neither seal nor open keys until its key holders unseal it (each runs `certdrop vault:unseal`, or opens /vault/unseal). Try again after that.",
            )],
            retry_after: Some(30),
            source: None,
        }
    }

    pub fn first_code(&self) -> &str {
        self.errors.first().map_or("", |e| &e.code)
    }

    pub fn message(&self) -> String {
        self.errors
            .iter()
            .map(|e| e.message.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Logs the cause of a server-side failure; client errors are logged at debug only.
    pub fn log(&self) {
        if self.status.is_server_error() {
            match &self.source {
                Some(source) => tracing::error!(error = format!("{source:#}"), "request failed"),
                None => tracing::error!(code = self.first_code(), "request failed"),
            }
        } else {
            tracing::debug!(
                status = self.status.as_u16(),
                code = self.first_code(),
                "request refused"
            );
        }
    }
}

impl From<anyhow::Error> for AppError {
    fn from(err: anyhow::Error) -> Self {
        Self::internal(err)
    }
}

impl From<sqlx::Error> for AppError {
    fn from(err: sqlx::Error) -> Self {
        let trouble = crate::db::trouble(&err);
        Self::database(trouble, anyhow::Error::new(err).context("database error"))
    }
}

/// Marks a session store error caused by the database being unreachable or full, so it is
/// answered like any other database trouble (the store's error type only carries text).
pub const UNAVAILABLE_MARK: &str = "[database unavailable]";
pub const FULL_MARK: &str = "[storage full]";

impl From<tower_sessions::session::Error> for AppError {
    fn from(err: tower_sessions::session::Error) -> Self {
        let text = err.to_string();
        let trouble = if text.contains(UNAVAILABLE_MARK) {
            Some(crate::db::Trouble::Unavailable)
        } else if text.contains(FULL_MARK) {
            Some(crate::db::Trouble::Full)
        } else {
            None
        };
        Self::database(trouble, anyhow::anyhow!("session: {text}"))
    }
}

impl AppError {
    /// 503 `database_unavailable` or 507 `storage_full` for database trouble, else 500.
    fn database(trouble: Option<crate::db::Trouble>, cause: anyhow::Error) -> Self {
        let mut err = match trouble {
            Some(crate::db::Trouble::Unavailable) => {
                let mut err = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorItem::new(
                        "database_unavailable",
                        "certdrop cannot reach its database just now; nothing was changed. Try again in a minute.",
                    ),
                );
                err.retry_after = Some(5);
                err
            }
            Some(crate::db::Trouble::Full) => Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                ErrorItem::new(
                    "storage_full",
                    "certdrop's storage is full, so nothing was saved. Try again once the operator has freed space.",
                ),
            ),
            None => return Self::internal(cause),
        };
        err.source = Some(cause);
        err
    }
}

impl From<askama::Error> for AppError {
    fn from(err: askama::Error) -> Self {
        Self::internal(anyhow::Error::new(err).context("rendering a page"))
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    errors: &'a [ErrorItem],
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        self.log();
        let mut response = (
            self.status,
            Json(ErrorBody {
                errors: &self.errors,
            }),
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl AppError {
    /// Ties every problem of this error to a form field (to show it next to that field).
    pub fn on_field(mut self, field: &'static str) -> Self {
        for e in &mut self.errors {
            e.field = Some(field);
        }
        self
    }
}

/// Shows what the user would be told (never the logged cause).
impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for AppError {}
