//! Password hashing with argon2id and explicit parameters, always off the async runtime, and
//! never more at once than the machine has cores (each takes 19 MiB: a flood of sign-ins
//! waits in line instead of taking the server's memory). Unknown emails are verified against
//! a dummy hash so timing does not reveal who exists.

use std::sync::OnceLock;

use anyhow::Context;
use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version,
    password_hash::SaltString,
};
use secrecy::{ExposeSecret, SecretString};

/// OWASP's argon2id recommendation: 19 MiB, 2 iterations, 1 lane.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// At most this many argon2 computations run at once.
fn permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(cores.max(2))
    })
}

pub async fn hash(password: SecretString) -> anyhow::Result<String> {
    let _permit = permits()
        .acquire()
        .await
        .context("password hashing queue")?;
    tokio::task::spawn_blocking(move || hash_blocking(&password))
        .await
        .context("password hashing task")?
}

fn hash_blocking(password: &SecretString) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    let hash = argon2()
        .hash_password(password.expose_secret().as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
    Ok(hash.to_string())
}

/// A fixed hash of a random password, computed once, verified against when no user matches.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let random = SecretString::from(uuid::Uuid::new_v4().to_string());
        hash_blocking(&random).expect("hashing a dummy password")
    })
}

/// True when `password` matches `stored`; with no stored hash, does the same work and says no.
pub async fn verify(stored: Option<String>, password: SecretString) -> anyhow::Result<bool> {
    let _permit = permits()
        .acquire()
        .await
        .context("password hashing queue")?;
    tokio::task::spawn_blocking(move || {
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| dummy_hash().to_string());
        let parsed = PasswordHash::new(&stored).map_err(|e| anyhow::anyhow!("stored hash: {e}"))?;
        let ok = argon2()
            .verify_password(password.expose_secret().as_bytes(), &parsed)
            .is_ok();
        Ok(known && ok)
    })
    .await
    .context("password verification task")?
}

/// Computes the dummy hash ahead of the first login, so that login is not slower than others.
pub async fn warm_up() {
    let _ = tokio::task::spawn_blocking(dummy_hash).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let hash = hash(SecretString::from("correct horse battery"))
            .await
            .unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(
            verify(Some(hash.clone()), "correct horse battery".into())
                .await
                .unwrap()
        );
        assert!(
            !verify(Some(hash), "wrong horse battery".into())
                .await
                .unwrap()
        );
        assert!(!verify(None, "anything at all".into()).await.unwrap());
    }
}
