//! Every pair's configuration version, watched once per control-plane instance: one query
//! every 200 ms (at once after a publish on this instance), shared by every waiting long-poll,
//! instead of one query per waiting node. A thousand nodes then cost the database what one
//! does, and a change made on another instance still reaches a node within about 200 ms.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::sync::watch;

use crate::state::AppState;

/// Pair id → configuration version, as last read.
pub type PairVersions = Arc<HashMap<i64, i64>>;

/// How often the versions are read again, for changes made on other instances.
const REFRESH: Duration = Duration::from_millis(200);

pub struct Versions {
    tx: watch::Sender<PairVersions>,
}

impl Default for Versions {
    fn default() -> Self {
        Self {
            tx: watch::channel(PairVersions::default()).0,
        }
    }
}

impl Versions {
    pub fn subscribe(&self) -> watch::Receiver<PairVersions> {
        self.tx.subscribe()
    }
}

/// The watcher: reads every pair's version and tells the long-polls when any changed.
pub async fn run(state: AppState) {
    loop {
        // Registered before the read, so a publish during it is not missed.
        let published = state.config_changed.notified();
        match sqlx::query_as::<_, (i64, i64)>("SELECT id, config_version FROM edge_pairs")
            .fetch_all(&state.db)
            .await
        {
            Ok(rows) => {
                let read: HashMap<i64, i64> = rows.into_iter().collect();
                state.pair_versions.tx.send_if_modified(|known| {
                    let changed = **known != read;
                    if changed {
                        *known = Arc::new(read);
                    }
                    changed
                });
            }
            Err(err) => tracing::warn!(error = %err, "edge: could not read the pairs' versions"),
        }
        tokio::select! {
            () = published => {},
            () = tokio::time::sleep(REFRESH) => {},
        }
    }
}
