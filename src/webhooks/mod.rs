//! Webhooks: a customer registers endpoints (a URL and the events it wants) and certdrop POSTs
//! each event to them, signed per the Standard Webhooks spec (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>` with a per-endpoint secret
//! shown once and kept sealed in the vault). Events are queued in the same transaction as the
//! change they report (so never lost or doubled) and delivered by `worker.rs` with retries,
//! backoff, the backends' address rules, and a log of each answer.

pub mod routes;
pub mod store;
pub mod worker;

use base64::Engine;
use serde_json::{Value, json};
use sqlx::AnyConnection;

use crate::error::AppResult;

/// The events an endpoint may ask for.
pub const EVENT_TYPES: [&str; 10] = [
    "ticket.opened",
    "ticket.approved",
    "ticket.rejected",
    "ticket.cancelled",
    "ticket.deploying",
    "ticket.deployed",
    "ticket.failed",
    "deployment.succeeded",
    "deployment.failed",
    "certificate.expiring",
];

/// A new endpoint secret: `whsec_` and 32 random bytes in base64, as Standard Webhooks writes it.
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The `webhook-signature` header of a message: `v1,` and the base64 HMAC-SHA256, keyed with
/// the secret's bytes, of `{id}.{timestamp}.{body}`.
pub fn signature(secret: &str, id: &str, timestamp: i64, body: &str) -> anyhow::Result<String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))?;
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key);
    let tag = aws_lc_rs::hmac::sign(&key, format!("{id}.{timestamp}.{body}").as_bytes());
    Ok(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    ))
}

/// Queues `event_type` for each of `owner_id`'s endpoints that want it, in the caller's
/// transaction. `key` names the event (the same key twice is one event): the message id is
/// derived from it, so a retried transaction or worker never sends it twice.
pub async fn emit(
    conn: &mut AnyConnection,
    owner_id: i64,
    event_type: &str,
    key: &str,
    data: Value,
) -> AppResult<()> {
    let endpoints: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, events FROM webhook_endpoints WHERE owner_id = $1")
            .bind(owner_id)
            .fetch_all(&mut *conn)
            .await?;
    let payload = payload(event_type, data);
    let id = message_id(event_type, key);
    for (endpoint, events) in endpoints {
        let wanted: Vec<String> = serde_json::from_str(&events).unwrap_or_default();
        if wanted.iter().any(|w| w == event_type) {
            store::queue(conn, endpoint, &id, event_type, &payload).await?;
        }
    }
    Ok(())
}

/// A message's body: the type, when, and what happened.
pub fn payload(event_type: &str, data: Value) -> String {
    json!({
        "type": event_type,
        "timestamp": crate::web::rfc3339(crate::db::now()),
        "data": data,
    })
    .to_string()
}

/// The message id of the event named `key`: stable, so the same event is one message.
pub fn message_id(event_type: &str, key: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{event_type}:{key}"));
    format!("msg_{}", &hex::encode(digest)[..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let sig = signature(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(new_secret().starts_with("whsec_"));
        assert_ne!(new_secret(), new_secret());
    }
}
