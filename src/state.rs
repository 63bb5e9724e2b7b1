//! `AppState`: what every handler and worker can reach. It sits low in the house so that
//! capabilities depend on it, not on `startup` (which only assembles routers and workers).

use std::sync::Arc;

use tokio::sync::Notify;
use url::Url;

use crate::{
    accounts::ratelimit::LoginLimiter, certs::trust::TrustStore, config::Config, db::Db,
    vault::Vault,
};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub config: Arc<Config>,
    /// Where users reach certdrop: links in mails, the Origin check, the cookie's `Secure`.
    pub base_url: Url,
    /// `scheme://host[:port]` of `base_url`, as browsers send it in `Origin`.
    pub base_origin: String,
    pub login_limiter: Arc<LoginLimiter>,
    pub vault: Arc<Vault>,
    pub trust: Arc<TrustStore>,
    /// Wakes the mail sender when a message is queued.
    pub mail_wake: Arc<Notify>,
    /// Wakes the deploy worker when a ticket is approved.
    pub deploy_wake: Arc<Notify>,
    /// Wakes the ACME worker when an order is queued.
    pub acme_wake: Arc<Notify>,
    /// Told when a pair's configuration changes here, so `pair_versions` is read at once.
    pub config_changed: Arc<Notify>,
    /// Every pair's configuration version, read once per instance for all long-polls.
    pub pair_versions: Arc<crate::edge::versions::Versions>,
    /// When this instance last answered 507 `storage_full` (unix seconds), for `/readyz`.
    pub storage_full_at: Arc<std::sync::atomic::AtomicI64>,
    /// Looks up TXT proofs and where domains point.
    pub dns: Arc<crate::domains::dns::Resolver>,
    /// What this process counts for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Turns true when the server begins to shut down, so long-polls answer at once.
    pub stopping: Arc<tokio::sync::watch::Sender<bool>>,
}
