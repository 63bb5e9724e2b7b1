//! CSRF protection for forms: a random token per session, sent back in a hidden field and
//! compared in constant time. (The Origin check in `web` is the second, independent guard.)

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request},
    http::StatusCode,
};
use serde::{Deserialize, de::DeserializeOwned};
use subtle::ConstantTimeEq;
use tower_sessions::Session;

use crate::{
    error::{AppError, AppResult, ErrorItem},
    web::PageError,
};

const KEY: &str = "csrf";
pub const FIELD: &str = "csrf_token";

fn session_error(e: tower_sessions::session::Error) -> AppError {
    AppError::internal(anyhow::anyhow!("session: {e}"))
}

/// The session's CSRF token, created on first use.
pub async fn token(session: &Session) -> AppResult<String> {
    if let Some(token) = session.get::<String>(KEY).await.map_err(session_error)? {
        return Ok(token);
    }
    renew(session).await
}

/// A fresh token (at sign-in, so a token seen before sign-in is worthless after it).
pub async fn renew(session: &Session) -> AppResult<String> {
    let token = super::tokens::random_secret();
    session.insert(KEY, &token).await.map_err(session_error)?;
    Ok(token)
}

pub fn refused() -> AppError {
    AppError::new(
        StatusCode::FORBIDDEN,
        ErrorItem::new(
            "csrf_failed",
            "This form has expired or did not come from certdrop. Go back, reload the page and submit it again.",
        ),
    )
}

/// Checks a submitted token against the session's.
pub async fn verify(session: &Session, submitted: Option<&str>) -> AppResult<()> {
    let expected = session.get::<String>(KEY).await.map_err(session_error)?;
    match (expected, submitted) {
        (Some(expected), Some(submitted))
            if bool::from(expected.as_bytes().ct_eq(submitted.as_bytes())) =>
        {
            Ok(())
        }
        _ => Err(refused()),
    }
}

/// A URL-encoded form whose CSRF token has been checked; `T` need not declare the token field.
pub struct CsrfForm<T>(pub T);

#[derive(Deserialize)]
struct TokenField {
    csrf_token: Option<String>,
}

impl<S, T> FromRequest<S> for CsrfForm<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = PageError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let session = Session::from_request_parts(&mut parts, state)
            .await
            .map_err(|_| AppError::internal(anyhow::anyhow!("session layer missing")))?;
        let bytes = Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(|_| AppError::bad_request("bad_form", "The form could not be read."))?;
        let field: TokenField = serde_urlencoded::from_bytes(&bytes).map_err(|_| refused())?;
        verify(&session, field.csrf_token.as_deref()).await?;
        let value = serde_urlencoded::from_bytes(&bytes).map_err(|e| {
            AppError::bad_request("bad_form", format!("The form is missing a field: {e}"))
        })?;
        Ok(Self(value))
    }
}

/// For forms whose only field is the CSRF token (a delete button, sign out).
#[derive(Deserialize)]
pub struct NoFields {}
