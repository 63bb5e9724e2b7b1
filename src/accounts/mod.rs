//! Users, roles, passwords, sessions, CSRF, login rate limits and API tokens.
//! Never stores a password or a token in the clear; never says whether an email exists.

pub mod csrf;
pub mod extract;
pub mod forwarded;
pub mod manage;
pub mod manage_routes;
pub mod password;
pub mod ratelimit;
pub mod roles;
pub mod routes;
pub mod second_factor;
pub mod second_factor_routes;
pub mod session_store;
pub mod store;
pub mod tokens;
pub mod totp;

use serde::Serialize;

pub use extract::{ApiCredential, ApiUser, SignedIn, Viewer};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Customer,
    Staff,
    Admin,
}

impl Role {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "customer" => Some(Self::Customer),
            "staff" => Some(Self::Staff),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Staff => "staff",
            Self::Admin => "admin",
        }
    }

    /// Staff and admins see every customer's apps, tickets and certificates (never keys).
    pub fn is_staff(self) -> bool {
        matches!(self, Self::Staff | Self::Admin)
    }

    pub fn is_admin(self) -> bool {
        self == Self::Admin
    }

    /// customer < staff < admin: raising a role takes two admins, lowering one.
    pub fn rank(self) -> u8 {
        match self {
            Self::Customer => 0,
            Self::Staff => 1,
            Self::Admin => 2,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub role: Role,
    pub created_at: i64,
    /// Since when an admin has disabled the account: it signs in nowhere, its tokens stop.
    pub disabled_at: Option<i64>,
    /// When the owner clicked the link mailed at sign-up (accounts made otherwise: at once).
    pub email_verified_at: Option<i64>,
    /// Sessions count only while they carry this number (see `sessions`).
    pub session_epoch: i64,
}

impl User {
    /// Uploads, keys and tickets wait until the owner proved the address is theirs.
    pub fn require_verified(&self) -> crate::error::AppResult<()> {
        if self.email_verified_at.is_some() {
            return Ok(());
        }
        Err(crate::error::AppError::new(
            axum::http::StatusCode::FORBIDDEN,
            crate::error::ErrorItem::new(
                "email_unverified",
                format!(
                    "Confirm your email address first: open the link certdrop mailed to {} (your account page sends a new one).",
                    self.email
                ),
            ),
        ))
    }

    pub fn require_staff(&self) -> crate::error::AppResult<()> {
        if self.role.is_staff() {
            Ok(())
        } else {
            Err(crate::error::AppError::forbidden())
        }
    }

    pub fn require_admin(&self) -> crate::error::AppResult<()> {
        if self.role.is_admin() {
            Ok(())
        } else {
            Err(crate::error::AppError::forbidden())
        }
    }
}

/// Lower-cases and checks an email address; the message says what is wrong.
pub fn normalize_email(raw: &str) -> Result<String, &'static str> {
    let email = raw.trim().to_lowercase();
    if email.is_empty() {
        return Err("Enter your email address.");
    }
    if email.len() > MAX_EMAIL_BYTES || email.parse::<lettre::Address>().is_err() {
        return Err("That is not an email address; use the form name@example.com.");
    }
    Ok(email)
}

/// The longest email address (RFC 5321's path limit) and password certdrop reads.
pub const MAX_EMAIL_BYTES: usize = 254;
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Refuses credentials longer than any real one, before they reach the rate limiter, argon2,
/// zxcvbn or the audit trail: whoever is not signed in cannot make the server hold or store
/// more than this.
pub fn bounded_credentials(email: &str, password: &str) -> crate::error::AppResult<()> {
    let mut errors = Vec::new();
    if email.len() > MAX_EMAIL_BYTES {
        errors.push(
            crate::error::ErrorItem::new(
                "too_long",
                format!("An email address has at most {MAX_EMAIL_BYTES} characters."),
            )
            .on("email"),
        );
    }
    if password.len() > MAX_PASSWORD_BYTES {
        errors.push(
            crate::error::ErrorItem::new(
                "too_long",
                format!("A password has at most {MAX_PASSWORD_BYTES} bytes."),
            )
            .on("password"),
        );
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(crate::error::AppError::many(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            errors,
        ))
    }
}

/// A typed email address to fill a refused form with again: none when it was too long to be one.
pub fn shown_email(raw: String) -> String {
    if raw.len() > MAX_EMAIL_BYTES {
        String::new()
    } else {
        raw
    }
}

pub const MIN_PASSWORD_LEN: usize = 12;

/// A new password: at least 12 characters, at most 1024 bytes, and not easy to guess — zxcvbn
/// (common passwords, words, names, dates, repeats, keyboard runs, and the account's own email)
/// must estimate at least 10^10 guesses. The message says what to do instead.
pub fn check_new_password(password: &str, email: &str) -> Result<(), String> {
    let len = password.chars().count();
    if len < MIN_PASSWORD_LEN {
        return Err(format!(
            "Choose a password of at least {MIN_PASSWORD_LEN} characters (a few words make a good one)."
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "Choose a password of at most {MAX_PASSWORD_BYTES} bytes."
        ));
    }
    // zxcvbn's matching grows quickly with length; 100 characters decide it (as its authors advise).
    let head: String = password.chars().take(100).collect();
    let estimate = zxcvbn::zxcvbn(&head, &[email, "certdrop"]);
    if estimate.score() < zxcvbn::Score::Three {
        let why = estimate
            .feedback()
            .and_then(|f| f.warning())
            .map(|w| format!("{w} "))
            .unwrap_or_default();
        return Err(format!(
            "This password is too easy to guess. {why}Use three or four uncommon words, or a password manager's."
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_lower_cased_and_checked() {
        assert_eq!(
            normalize_email(" Ann@Example.COM ").unwrap(),
            "ann@example.com"
        );
        assert!(normalize_email("ann").is_err());
        assert!(normalize_email("").is_err());
    }

    #[test]
    fn short_and_guessable_passwords_are_refused() {
        assert!(check_new_password("short", "ann@example.com").is_err());
        assert!(check_new_password("correct horse battery", "ann@example.com").is_ok());
        for weak in [
            "aaaaaaaaaaaa",
            "password1234",
            "            ",
            "ann@example.com1",
        ] {
            let err = check_new_password(weak, "ann@example.com").unwrap_err();
            assert!(err.contains("too easy to guess"), "{weak}: {err}");
        }
    }
}
