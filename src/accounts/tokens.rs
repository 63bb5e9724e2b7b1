//! Random secrets handed out once: API tokens (`cdp_…`), edge enrollment and node tokens.
//! Only their SHA-256 hash is stored; the secret itself never reaches `Debug` or a log.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::TryRngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const PREFIX: &str = "cdp_";

/// A freshly generated token: the secret to show once, and what is stored.
pub struct NewToken {
    pub secret: SecretString,
    pub hash: String,
    /// The first characters after the prefix, to tell tokens apart in a listing.
    pub hint: String,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("hint", &self.hint)
            .finish_non_exhaustive()
    }
}

/// 32 random bytes from the operating system, base64url-encoded.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random source");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A random secret, prefixed so a leaked token is recognisable.
pub fn generate() -> NewToken {
    let secret = format!("{PREFIX}{}", random_secret());
    let hint = secret[..PREFIX.len() + 6].to_string();
    NewToken {
        hash: hash(&secret),
        secret: SecretString::from(secret),
        hint,
    }
}

/// Hex SHA-256 of a token, the only form in which a token is stored or looked up.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Constant-time comparison of a presented token with a stored hash.
pub fn matches(presented: &SecretString, stored_hash: &str) -> bool {
    hash(presented.expose_secret())
        .as_bytes()
        .ct_eq(stored_hash.as_bytes())
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_random_and_stored_as_hashes() {
        let a = generate();
        let b = generate();
        assert!(a.secret.expose_secret().starts_with("cdp_"));
        assert_ne!(a.secret.expose_secret(), b.secret.expose_secret());
        assert_eq!(a.hash.len(), 64);
        assert!(matches(&a.secret, &a.hash));
        assert!(!matches(&b.secret, &a.hash));
        assert!(!format!("{a:?}").contains(a.secret.expose_secret()));
    }
}
