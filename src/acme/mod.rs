//! Automatic certificates over ACME (RFC 8555, with `instant-acme`). A provision or update
//! ticket may ask for one instead of an upload: once staff approve it (the pair and the bill),
//! the worker orders the certificate for the app's verified domains, publishes the CA's
//! challenges to the app's own edge pair (HTTP-01 on the nodes' plain-HTTP listener,
//! TLS-ALPN-01 on their TLS listener), finalizes with a key born here and sealed in the vault
//! at once, and hands the certificate to the deploy worker like any other. Renewal (two thirds
//! of the lifetime, or the CA's ARI window) and the fallback for uploaded certificates (near
//! expiry, or removed) are tickets certdrop opens itself.

pub mod account;
pub mod store;
pub mod worker;

use sqlx::AnyConnection;

use crate::{
    apps::store::App,
    error::{AppError, AppResult, ErrorItem},
    state::AppState,
};

/// The names an ACME certificate can be ordered for among `domains`: wildcards need DNS-01,
/// which certdrop does not run.
pub fn orderable(domains: Vec<String>) -> Vec<String> {
    domains
        .into_iter()
        .filter(|d| !d.starts_with("*."))
        .collect()
}

/// Whether an ACME certificate can take over every one of `verified` (an app's verified
/// domains): there is one, and none is a wildcard it would leave unserved.
pub fn replaceable(verified: &[String]) -> bool {
    !verified.is_empty() && verified.iter().all(|d| !d.starts_with("*."))
}

/// Refuses, saying why and what to do, an ACME ticket that could not be carried out.
pub async fn check_orderable(
    state: &AppState,
    conn: &mut AnyConnection,
    app: &App,
    certificate_id: Option<i64>,
) -> AppResult<()> {
    if certificate_id.is_some() {
        return Err(AppError::unprocessable(
            ErrorItem::new(
                "invalid_request",
                "certdrop obtains an automatic certificate itself: leave certificate_id out, or ask for source \"uploaded\" to deploy that certificate.",
            )
            .on("certificate_id"),
        ));
    }
    if state.config.acme.is_none() {
        return Err(AppError::conflict(
            "acme_disabled",
            "This certdrop has no ACME certificate authority configured (CERTDROP_ACME_DIRECTORY), so it cannot obtain certificates itself. Upload a certificate (or generate a CSR for your CA) instead.",
        ));
    }
    let verified = crate::domains::store::verified_hostnames(conn, app.id).await?;
    if verified.is_empty() {
        return Err(AppError::conflict(
            "domain_unverified",
            format!(
                "None of {}'s domains is verified yet, so no certificate authority would issue for them. On the app page, create the TXT record shown for each domain and choose “Verify” (or `certdrop domains:verify HOST --app {}`), then open the ticket again.",
                app.name, app.name
            ),
        ));
    }
    let wildcards: Vec<&String> = verified.iter().filter(|d| d.starts_with("*.")).collect();
    if !wildcards.is_empty() {
        return Err(AppError::unprocessable(ErrorItem::new(
            "acme_wildcard",
            format!(
                "{} {} a wildcard: a certificate authority proves a wildcard only through a DNS-01 challenge, which certdrop does not run. Upload a certificate that covers {} (or generate a CSR for your CA), or remove the wildcard from the app.",
                wildcards.iter().map(|w| w.as_str()).collect::<Vec<_>>().join(", "),
                if wildcards.len() == 1 { "is" } else { "are" },
                if wildcards.len() == 1 { "it" } else { "them" },
            ),
        ).on("source")));
    }
    Ok(())
}
