//! Keeps domains true without anyone pressing a button: claims past their 7 days are written
//! down as expired, pending claims have their TXT proof looked for every few minutes (so a
//! customer who creates the record need not come back), and every domain's DNS is rechecked.
//! Several control planes may run it at once: every step is a guarded, repeatable update.

use std::time::Duration;

use serde_json::json;

use super::{check_dns, store, verify};
use crate::{
    accounts::extract::ClientIp,
    apps,
    audit::{self, Entry},
    db,
    error::AppResult,
    state::AppState,
};

/// How often a pending claim's proof is looked for.
const PROOF_EVERY: i64 = 5 * 60;
/// How often a domain's DNS is rechecked.
const DNS_EVERY: i64 = 15 * 60;

pub async fn run(state: AppState) {
    loop {
        if let Err(err) = tick(&state).await {
            err.log();
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
}

/// One pass over what is due (the loop runs it every 30 s; tests run it directly).
pub async fn tick(state: &AppState) -> AppResult<()> {
    for (id, app, hostname) in store::expire_claims(&state.db).await? {
        audit::record(
            &state.db,
            Entry::new(None, "domain.claim_expired", "domain", &hostname)
                .app(&app)
                .detail(json!({"domain_id": id})),
        )
        .await?;
    }
    let now = db::now();
    let (dns_due, proofs_due) = store::due(&state.db, now - DNS_EVERY, now - PROOF_EVERY).await?;
    for id in proofs_due {
        let Some((app, domain)) = with_app(state, id).await? else {
            continue;
        };
        // A proof not there yet is written on the claim for its owner to read; nothing more.
        if let Err(err) = verify(state, None, ClientIp(None), &app, &domain, None).await
            && err.status.is_server_error()
        {
            err.log();
        }
    }
    for id in dns_due {
        if let Some((app, domain)) = with_app(state, id).await? {
            check_dns(state, &app, &domain).await?;
        }
    }
    Ok(())
}

async fn with_app(
    state: &AppState,
    id: i64,
) -> AppResult<Option<(apps::store::App, store::Domain)>> {
    let Some(domain) = store::by_id(&state.db, id).await? else {
        return Ok(None);
    };
    let app = apps::store::find_by_id(&state.db, domain.app_id).await?;
    Ok(Some((app, domain)))
}
