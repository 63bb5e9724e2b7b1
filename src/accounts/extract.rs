//! Who is asking: `Viewer` (a browser, signed in or not), `SignedIn` (a browser that must be
//! signed in), `ApiUser` (a bearer token), and `ClientIp`.

use std::net::{IpAddr, SocketAddr};

use axum::{
    extract::{ConnectInfo, FromRef, FromRequestParts},
    http::{header, request::Parts},
};
use tower_sessions::Session;

use super::{
    User,
    csrf::AnonymousToken,
    second_factor::{self, ApiTokenId, Credential, SESSION_FACTOR_AT},
    store, tokens,
};
use crate::{
    error::AppError,
    state::AppState,
    web::{Chrome, PageError},
};

pub const USER_KEY: &str = "user_id";

/// A browser request: its session, when signed in its user, and its cookie CSRF token.
pub struct Viewer {
    pub session: Session,
    pub user: Option<User>,
    pub anonymous: Option<AnonymousToken>,
    pub vault: crate::web::VaultNotice,
}

impl Viewer {
    pub async fn chrome(&self) -> Result<Chrome, AppError> {
        Chrome::new(
            &self.session,
            self.user.as_ref(),
            self.anonymous.as_ref(),
            self.vault,
        )
        .await
    }
}

impl<S> FromRequestParts<S> for Viewer
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let session = Session::from_request_parts(parts, &state)
            .await
            .map_err(|_| AppError::internal(anyhow::anyhow!("session layer missing")))?;
        let user_id = session.get::<i64>(USER_KEY).await?;
        let mut user = match user_id {
            Some(id) => store::find_user(&state.db, id).await?,
            None => None,
        };
        // A disabled account's sessions, and sessions from before a password change, a reset
        // or "sign out everywhere", are over: the session is forgotten.
        if let Some(u) = &user
            && !super::manage::session_counts(&session, u).await?
        {
            session.flush().await?;
            user = None;
        }
        // Staff and admins act only from a session that proved a second factor (one that
        // signed in as a customer and was promoted since must sign in again).
        if user.as_ref().is_some_and(|u| u.role.is_staff())
            && session.get::<i64>(SESSION_FACTOR_AT).await?.is_none()
        {
            user = None;
        }
        if user.is_some() {
            keep_alive(&session);
        }
        let anonymous = parts.extensions.get::<AnonymousToken>().cloned();
        Ok(Self {
            session,
            user,
            anonymous,
            vault: crate::web::VaultNotice::of(&state.vault),
        })
    }
}

/// Sessions expire after `SESSION_IDLE` without activity. Saving on every request would cost
/// a write per page, so the expiry is pushed forward at most once every `SESSION_REFRESH`.
pub const SESSION_IDLE: time::Duration = time::Duration::hours(12);
const SESSION_REFRESH: time::Duration = time::Duration::hours(1);

fn keep_alive(session: &Session) {
    let remaining = session.expiry_date() - time::OffsetDateTime::now_utc();
    if remaining < SESSION_IDLE - SESSION_REFRESH {
        session.set_expiry(Some(tower_sessions::Expiry::OnInactivity(SESSION_IDLE)));
    }
}

/// A browser request from a signed-in user; others are sent to the sign-in page.
pub struct SignedIn {
    pub session: Session,
    pub user: User,
    pub vault: crate::web::VaultNotice,
}

impl SignedIn {
    pub async fn chrome(&self) -> Result<Chrome, AppError> {
        Chrome::new(&self.session, Some(&self.user), None, self.vault).await
    }
}

impl<S> FromRequestParts<S> for SignedIn
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let viewer = Viewer::from_request_parts(parts, state).await?;
        match viewer.user {
            Some(user) => Ok(Self {
                session: viewer.session,
                user,
                vault: viewer.vault,
            }),
            None => Err(PageError(AppError::unauthorized())),
        }
    }
}

/// An API request authenticated by `Authorization: Bearer cdp_…`. A staff or admin token
/// counts only if it was created with a second factor. The token's id is left in the request's
/// extensions (`ApiTokenId`) for the fresh-second-factor rule.
pub struct ApiUser(pub User);

impl<S> FromRequestParts<S> for ApiUser
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(AppError::unauthorized)?;
        let hash = tokens::hash(presented.trim());
        let owner = match store::user_for_token(&state.db, &hash).await? {
            store::TokenLookup::Live(owner) => owner,
            store::TokenLookup::Expired(at) => {
                return Err(AppError::new(
                    axum::http::StatusCode::UNAUTHORIZED,
                    crate::error::ErrorItem::new(
                        "token_expired",
                        format!(
                            "This token expired on {}: create a new one (`certdrop login`, or API tokens in the browser).",
                            crate::web::format_time(at)
                        ),
                    ),
                ));
            }
            store::TokenLookup::Unknown => return Err(AppError::unauthorized()),
        };
        if owner.user.disabled_at.is_some() {
            return Err(super::manage::disabled());
        }
        if owner.user.role.is_staff() && owner.second_factor_at.is_none() {
            return Err(second_factor::otp_required(
                "This token was created without a second factor, which staff and admin accounts need: create a new one with your authenticator code (`certdrop login` asks for it).",
            ));
        }
        parts.extensions.insert(ApiTokenId(owner.token_id));
        Ok(Self(owner.user))
    }
}

/// The client's address: the socket's peer, or behind a trusted proxy the address it forwarded for.
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub Option<IpAddr>);

impl<S> FromRequestParts<S> for ClientIp
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() else {
            return Ok(Self(None));
        };
        let proxies = &AppState::from_ref(state).config.trusted_proxies;
        Ok(Self(Some(super::forwarded::client_ip(
            peer.ip(),
            &parts.headers,
            proxies,
        ))))
    }
}

/// The credential of an API request, for the fresh-second-factor rule; put it after `ApiUser`
/// in a handler's arguments.
pub struct ApiCredential(pub Credential);

impl<S: Send + Sync> FromRequestParts<S> for ApiCredential {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<ApiTokenId>()
            .map(|id| Self(Credential::Token(id.0)))
            .ok_or_else(AppError::unauthorized)
    }
}
