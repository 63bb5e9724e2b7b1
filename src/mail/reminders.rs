//! Expiry reminders: 30, 14 and 7 days before a deployed certificate expires, its owner is
//! mailed once per threshold (the outbox key makes each reminder unique). Runs hourly.

use std::time::Duration;

use sqlx::Row;

use super::{Mail, enqueue};
use crate::{db, state::AppState};

const THRESHOLDS: [i64; 3] = [7, 14, 30];

/// The reminder due for a certificate with `seconds_left`: the smallest threshold it is within.
pub fn due_threshold(seconds_left: i64) -> Option<i64> {
    THRESHOLDS
        .into_iter()
        .find(|days| seconds_left <= days * 86_400)
}

pub async fn run(state: AppState) {
    loop {
        if let Err(err) = queue_due(&state).await {
            tracing::warn!(error = format!("{err:#}"), "reminders: pass failed");
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// Queues the reminders due now; returns how many were new.
pub async fn queue_due(state: &AppState) -> anyhow::Result<u64> {
    let now = db::now();
    let rows = sqlx::query(
        "SELECT c.id, c.common_name, c.not_after, a.name AS app, a.owner_id, u.email FROM app_deployments d \
         JOIN (SELECT app_id, MAX(id) AS id FROM app_deployments GROUP BY app_id) latest ON latest.id = d.id \
         JOIN certificates c ON c.id = d.certificate_id JOIN apps a ON a.id = d.app_id JOIN users u ON u.id = a.owner_id \
         WHERE c.not_after > $1 AND c.not_after <= $2",
    )
    .bind(now)
    .bind(now + 30 * 86_400)
    .fetch_all(&state.db)
    .await?;
    let mut queued = 0;
    for row in rows {
        let id: i64 = row.try_get("id")?;
        let not_after: i64 = row.try_get("not_after")?;
        let Some(days) = due_threshold(not_after - now) else {
            continue;
        };
        let app: String = row.try_get("app")?;
        let mail = Mail {
            to: row.try_get("email")?,
            subject: format!("{app}: certificate expires within {days} days"),
            paragraphs: vec![
                format!(
                    "The certificate for {} served by {app} expires on {}.",
                    row.try_get::<String, _>("common_name")?,
                    crate::web::format_time(not_after)
                ),
                "Renew it with your certificate authority, upload the new one and request an update; staff will deploy it before the old one runs out.".into(),
            ],
            link: Some((format!("{}apps/{app}", state.base_url), format!("{app} in certdrop"))),
        };
        let mut conn = state.db.acquire().await?;
        let before: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM mail_outbox WHERE idempotency_key = $1")
                .bind(format!("expiry:{id}:{days}"))
                .fetch_one(&mut *conn)
                .await?;
        enqueue(&mut conn, &format!("expiry:{id}:{days}"), &mail).await?;
        crate::webhooks::emit(
            &mut conn,
            row.try_get("owner_id")?,
            "certificate.expiring",
            &format!("{id}:{days}"),
            serde_json::json!({
                "certificate_id": id,
                "app": app,
                "not_after": crate::web::rfc3339(not_after),
                "days": days,
            }),
        )
        .await?;
        queued += u64::from(before == 0);
    }
    if queued > 0 {
        state.mail_wake.notify_one();
    }
    Ok(queued)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smallest_threshold_within_reach_is_the_one_due() {
        assert_eq!(due_threshold(31 * 86_400), None);
        assert_eq!(due_threshold(30 * 86_400), Some(30));
        assert_eq!(due_threshold(20 * 86_400), Some(30));
        assert_eq!(due_threshold(10 * 86_400), Some(14));
        assert_eq!(due_threshold(86_400), Some(7));
    }
}
