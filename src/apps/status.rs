//! One TLS status per app, read from its tickets and deployments, so the apps list, the app
//! page, the CLI and the API all say the same thing: no TLS yet, a ticket waiting for staff, a
//! deployment under way, the certificate served now, a failure and why, or TLS removed.

use std::collections::HashMap;

use serde_json::{Value, json};
use sqlx::Row;

use crate::{db::Db, error::AppResult, web};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsStatus {
    NoTls,
    /// A ticket waits for staff (the app may serve a certificate meanwhile).
    Pending {
        ticket: i64,
        kind: String,
        serving: Option<i64>,
    },
    /// Approved: the deploy worker is rolling it out.
    Deploying {
        ticket: i64,
        kind: String,
        serving: Option<i64>,
    },
    Serving {
        certificate_id: i64,
        common_name: String,
        not_after: i64,
    },
    /// The newest ticket failed; the app serves what it served before, if anything.
    Failed {
        ticket: i64,
        kind: String,
        reason: String,
        serving: Option<i64>,
    },
    Removed,
}

impl TlsStatus {
    pub fn state(&self) -> &'static str {
        match self {
            Self::NoTls => "no_tls",
            Self::Pending { .. } => "pending",
            Self::Deploying { .. } => "deploying",
            Self::Serving { .. } => "serving",
            Self::Failed { .. } => "failed",
            Self::Removed => "removed",
        }
    }

    /// The status in one line, as people read it.
    pub fn label(&self) -> String {
        match self {
            Self::NoTls => "No TLS yet".into(),
            Self::Pending {
                ticket,
                kind,
                serving,
            } => format!(
                "Pending: {kind} ticket #{ticket} waits for staff{}",
                still_serving(*serving)
            ),
            Self::Deploying {
                ticket,
                kind,
                serving,
            } => format!(
                "Deploying: {kind} ticket #{ticket}{}",
                still_serving(*serving)
            ),
            Self::Serving {
                certificate_id,
                common_name,
                not_after,
            } => format!(
                "Serving {} (certificate #{certificate_id}), expires {}",
                if common_name.is_empty() {
                    "a certificate"
                } else {
                    common_name
                },
                &web::format_time(*not_after)[..10]
            ),
            Self::Failed {
                ticket,
                kind,
                reason,
                serving,
            } => format!(
                "Failed: {kind} ticket #{ticket}: {reason}{}",
                still_serving(*serving)
            ),
            Self::Removed => "Removed: TLS stopped, edge pair released".into(),
        }
    }

    /// The ticket to follow, when the status is about one.
    pub fn ticket(&self) -> Option<i64> {
        match self {
            Self::Pending { ticket, .. }
            | Self::Deploying { ticket, .. }
            | Self::Failed { ticket, .. } => Some(*ticket),
            _ => None,
        }
    }

    pub fn json(&self) -> Value {
        json!({"state": self.state(), "label": self.label(), "ticket": self.ticket()})
    }
}

fn still_serving(serving: Option<i64>) -> String {
    serving
        .map(|id| format!(" (serving certificate #{id} meanwhile)"))
        .unwrap_or_default()
}

/// The status of each app in `app_ids`, in two queries whatever their number.
pub async fn of_apps(db: &Db, app_ids: &[i64]) -> AppResult<HashMap<i64, TlsStatus>> {
    if app_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let placeholders: Vec<String> = (1..=app_ids.len()).map(|i| format!("${i}")).collect();
    let list = placeholders.join(", ");
    // Rejected and cancelled tickets changed nothing, so they never make the status.
    let tickets_sql = format!(
        "SELECT t.app_id, t.id, t.kind, t.state, t.reason FROM tickets t WHERE t.app_id IN ({list}) \
         AND t.id = (SELECT MAX(t2.id) FROM tickets t2 WHERE t2.app_id = t.app_id AND t2.state NOT IN ('rejected', 'cancelled'))"
    );
    let deployments_sql = format!(
        "SELECT d.app_id, d.certificate_id, c.common_name, c.not_after FROM app_deployments d \
         LEFT JOIN certificates c ON c.id = d.certificate_id WHERE d.app_id IN ({list}) \
         AND d.id = (SELECT MAX(d2.id) FROM app_deployments d2 WHERE d2.app_id = d.app_id)"
    );
    let (mut tickets, mut deployments) = (sqlx::query(&tickets_sql), sqlx::query(&deployments_sql));
    for id in app_ids {
        tickets = tickets.bind(*id);
        deployments = deployments.bind(*id);
    }
    let mut served: HashMap<i64, Option<(i64, String, i64)>> = HashMap::new();
    for row in deployments.fetch_all(db).await? {
        let cert: Option<i64> = row.try_get("certificate_id")?;
        let entry = match cert {
            Some(id) => Some((
                id,
                row.try_get::<Option<String>, _>("common_name")?
                    .unwrap_or_default(),
                row.try_get::<Option<i64>, _>("not_after")?
                    .unwrap_or_default(),
            )),
            None => None,
        };
        served.insert(row.try_get("app_id")?, entry);
    }
    let mut newest: HashMap<i64, (i64, String, String, Option<String>)> = HashMap::new();
    for row in tickets.fetch_all(db).await? {
        newest.insert(
            row.try_get("app_id")?,
            (
                row.try_get("id")?,
                row.try_get("kind")?,
                row.try_get("state")?,
                row.try_get("reason")?,
            ),
        );
    }
    Ok(app_ids
        .iter()
        .map(|id| {
            let deployed = served.get(id);
            let serving = deployed.and_then(|d| d.as_ref().map(|(id, _, _)| *id));
            let from_deployments = || match deployed {
                None => TlsStatus::NoTls,
                Some(None) => TlsStatus::Removed,
                Some(Some((certificate_id, common_name, not_after))) => TlsStatus::Serving {
                    certificate_id: *certificate_id,
                    common_name: common_name.clone(),
                    not_after: *not_after,
                },
            };
            let status = match newest.get(id) {
                Some((ticket, kind, state, _)) if state == "open" => TlsStatus::Pending {
                    ticket: *ticket,
                    kind: kind.clone(),
                    serving,
                },
                Some((ticket, kind, state, _)) if state == "approved" || state == "deploying" => {
                    TlsStatus::Deploying {
                        ticket: *ticket,
                        kind: kind.clone(),
                        serving,
                    }
                }
                Some((ticket, kind, state, reason)) if state == "failed" => TlsStatus::Failed {
                    ticket: *ticket,
                    kind: kind.clone(),
                    reason: reason.clone().unwrap_or_else(|| "see the ticket".into()),
                    serving,
                },
                _ => from_deployments(),
            };
            (*id, status)
        })
        .collect())
}

pub async fn of_app(db: &Db, app_id: i64) -> AppResult<TlsStatus> {
    Ok(of_apps(db, &[app_id])
        .await?
        .remove(&app_id)
        .unwrap_or(TlsStatus::NoTls))
}
