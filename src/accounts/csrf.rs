//! CSRF protection for forms: a random token per signed-in session, sent back in a hidden field
//! and compared in constant time. A visitor who is not signed in gets their token in a cookie of
//! its own instead (double submit: another site can neither read nor set it), so showing the
//! sign-in page stores no session. (The Origin check in `web` is the second, independent guard.)

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

/// The session's CSRF token, created on first use.
pub async fn token(session: &Session) -> AppResult<String> {
    if let Some(token) = session.get::<String>(KEY).await? {
        return Ok(token);
    }
    renew(session).await
}

/// A fresh token (at sign-in, so a token seen before sign-in is worthless after it).
pub async fn renew(session: &Session) -> AppResult<String> {
    let token = super::tokens::random_secret();
    session.insert(KEY, &token).await?;
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

/// The one token a form must carry: a signed-in session's own (even one that is not yet
/// counted as staff), else the visitor's cookie token. A token seen before sign-in is worth
/// nothing after it; pages and the check ask this same question.
pub async fn expected(session: &Session, anonymous: Option<&AnonymousToken>) -> AppResult<String> {
    let signed_in = session
        .get::<i64>(super::extract::USER_KEY)
        .await?
        .is_some();
    match anonymous {
        Some(a) if !signed_in => Ok(a.0.clone()),
        _ => token(session).await,
    }
}

/// Checks a submitted token against the one `expected` says, in constant time.
pub async fn verify(
    session: &Session,
    anonymous: Option<&AnonymousToken>,
    submitted: Option<&str>,
) -> AppResult<()> {
    let Some(submitted) = submitted else {
        return Err(refused());
    };
    let expected = expected(session, anonymous).await?;
    if bool::from(expected.as_bytes().ct_eq(submitted.as_bytes())) {
        Ok(())
    } else {
        Err(refused())
    }
}

/// The CSRF token of a visitor who is not signed in, from its cookie (set by `anonymous_cookie`).
#[derive(Clone, Debug)]
pub struct AnonymousToken(pub String);

const COOKIE: &str = "certdrop_csrf";

async fn signed_in(session: Option<&Session>) -> bool {
    match session {
        Some(s) => matches!(s.get::<i64>(super::extract::USER_KEY).await, Ok(Some(_))),
        None => false,
    }
}

/// Gives each browser a CSRF token in a cookie of its own (HttpOnly, SameSite=Strict, Secure
/// behind https) and puts it in the request's extensions; API requests are left alone. A
/// request that signs someone in (always a POST) clears the cookie: from then on only the
/// session's own token counts.
pub async fn anonymous_cookie(
    axum::extract::State(state): axum::extract::State<crate::state::AppState>,
    mut request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if request.uri().path().starts_with("/api/") {
        return next.run(request).await;
    }
    let existing = request
        .headers()
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == COOKIE && value.len() == 43)
        .map(|(_, value)| value.to_string());
    let (token, fresh) = match existing {
        Some(token) => (token, false),
        None => (super::tokens::random_secret(), true),
    };
    request
        .extensions_mut()
        .insert(AnonymousToken(token.clone()));
    let session = (request.method() == axum::http::Method::POST)
        .then(|| request.extensions().get::<Session>().cloned())
        .flatten();
    let before = signed_in(session.as_ref()).await;
    let mut response = next.run(request).await;
    let cleared = !before && signed_in(session.as_ref()).await;
    if fresh || cleared {
        let secure = if state.base_url.scheme() == "https" {
            "; Secure"
        } else {
            ""
        };
        let value = if cleared {
            format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{secure}")
        } else {
            format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}")
        };
        if let Ok(value) = axum::http::HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .append(axum::http::header::SET_COOKIE, value);
        }
    }
    response
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
        let anonymous = parts.extensions.get::<AnonymousToken>().cloned();
        let session = Session::from_request_parts(&mut parts, state)
            .await
            .map_err(|_| AppError::internal(anyhow::anyhow!("session layer missing")))?;
        let bytes = Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(|_| AppError::bad_request("bad_form", "The form could not be read."))?;
        let field: TokenField = serde_urlencoded::from_bytes(&bytes).map_err(|_| refused())?;
        verify(&session, anonymous.as_ref(), field.csrf_token.as_deref()).await?;
        let value = serde_urlencoded::from_bytes(&bytes).map_err(|e| {
            AppError::bad_request("bad_form", format!("The form is missing a field: {e}"))
        })?;
        Ok(Self(value))
    }
}

/// For forms whose only field is the CSRF token (a delete button, sign out).
#[derive(Deserialize)]
pub struct NoFields {}
