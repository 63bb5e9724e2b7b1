//! Sends the outbox: SMTP when `CERTDROP_SMTP_URL` is set, `.eml` files in `$DATA_DIR/outbox`
//! otherwise. A message is claimed with a lease (so two instances never send it together),
//! sent, and marked sent the moment the SMTP server accepts it; a failure is retried with
//! exponential backoff. A process killed between the server's acceptance and that mark (a
//! window of one database write) sends the message again after the lease, with the same
//! Message-ID — made of the outbox key and this installation's id — so receivers can drop it.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use lettre::{
    AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, MultiPart},
};
use secrecy::ExposeSecret;
use sqlx::Row;
use tokio::sync::Notify;

use crate::{config::Config, db, db::Db};

pub enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Files(AsyncFileTransport<Tokio1Executor>),
}

impl Transport {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        match &config.smtp_url {
            Some(url) => {
                let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose_secret())
                    .context("CERTDROP_SMTP_URL")?
                    .timeout(Some(Duration::from_secs(10)))
                    .build();
                tracing::info!("mail: sending through CERTDROP_SMTP_URL");
                Ok(Self::Smtp(transport))
            }
            None => {
                let dir = config.data_dir.join("outbox");
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                tracing::info!(outbox = %dir.display(), "mail: CERTDROP_SMTP_URL is not set; writing messages as .eml files");
                Ok(Self::Files(AsyncFileTransport::<Tokio1Executor>::new(dir)))
            }
        }
    }

    async fn send(&self, message: Message) -> anyhow::Result<()> {
        match self {
            Self::Smtp(t) => t.send(message).await.map(|_| ()).context("SMTP"),
            Self::Files(t) => t
                .send(message)
                .await
                .map(|_| ())
                .context("writing the .eml file"),
        }
    }
}

/// How long a claimed message is reserved for the instance sending it.
const LEASE_SECONDS: i64 = 60;

fn backoff(attempts: i64) -> i64 {
    (1i64 << attempts.clamp(1, 8)).min(300)
}

/// Sends due messages until the server stops; `wake` makes it look at once.
pub async fn run(db: Db, transport: Transport, from: Mailbox, wake: Arc<Notify>) {
    let installation = loop {
        match db::installation_id(&db).await {
            Ok(id) => break id,
            Err(err) => {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "mail: cannot read the installation id"
                );
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    let ids = MessageIds {
        installation,
        domain: from.email.domain().to_string(),
    };
    loop {
        if let Err(err) = deliver_due(&db, &transport, &from, &ids).await {
            tracing::warn!(error = format!("{err:#}"), "mail: delivery pass failed");
        }
        tokio::select! {
            () = wake.notified() => {},
            () = tokio::time::sleep(Duration::from_secs(1)) => {},
        }
    }
}

/// Message-IDs unique to this installation and stable across retries of one message.
pub struct MessageIds {
    installation: String,
    domain: String,
}

impl MessageIds {
    pub fn new(installation: &str, domain: &str) -> Self {
        Self {
            installation: installation.to_string(),
            domain: domain.to_string(),
        }
    }

    pub fn for_key(&self, key: &str) -> String {
        let digest = crate::accounts::tokens::hash(&format!("{}:{key}", self.installation));
        format!("<{}.{}@{}>", &digest[..32], self.installation, self.domain)
    }
}

async fn deliver_due(
    db: &Db,
    transport: &Transport,
    from: &Mailbox,
    ids: &MessageIds,
) -> anyhow::Result<()> {
    let now = db::now();
    let due = sqlx::query(
        "SELECT id, idempotency_key, to_address, subject, text_body, html_body, attempts, state, next_attempt_at \
         FROM mail_outbox WHERE state IN ('pending', 'sending') AND next_attempt_at <= $1 ORDER BY id LIMIT 20",
    )
    .bind(now)
    .fetch_all(db)
    .await?;
    for row in due {
        let id: i64 = row.try_get("id")?;
        let state: String = row.try_get("state")?;
        let next: i64 = row.try_get("next_attempt_at")?;
        let claimed = sqlx::query(
            "UPDATE mail_outbox SET state = 'sending', next_attempt_at = $1 WHERE id = $2 AND state = $3 AND next_attempt_at = $4",
        )
        .bind(now + LEASE_SECONDS)
        .bind(id)
        .bind(&state)
        .bind(next)
        .execute(db)
        .await?;
        if claimed.rows_affected() != 1 {
            continue; // another instance has it
        }
        let to: String = row.try_get("to_address")?;
        let key: String = row.try_get("idempotency_key")?;
        let attempts: i64 = row.try_get("attempts")?;
        let result = async {
            let message = Message::builder()
                .from(from.clone())
                .to(to.parse().with_context(|| format!("recipient {to}"))?)
                .subject(row.try_get::<String, _>("subject")?)
                // The same id on every attempt, so a receiver can drop a duplicate.
                .message_id(Some(ids.for_key(&key)))
                .multipart(MultiPart::alternative_plain_html(
                    row.try_get::<String, _>("text_body")?,
                    row.try_get::<String, _>("html_body")?,
                ))?;
            transport.send(message).await
        }
        .await;
        match result {
            Ok(()) => {
                sqlx::query("UPDATE mail_outbox SET state = 'sent', sent_at = $1, attempts = attempts + 1 WHERE id = $2")
                    .bind(db::now())
                    .bind(id)
                    .execute(db)
                    .await?;
                tracing::info!(mail = id, "mail: sent");
            }
            Err(err) => {
                let wait = backoff(attempts + 1);
                sqlx::query(
                    "UPDATE mail_outbox SET state = 'pending', attempts = attempts + 1, next_attempt_at = $1, last_error = $2 WHERE id = $3",
                )
                .bind(db::now() + wait)
                .bind(format!("{err:#}"))
                .bind(id)
                .execute(db)
                .await?;
                tracing::warn!(
                    mail = id,
                    retry_in_seconds = wait,
                    error = format!("{err:#}"),
                    "mail: delivery failed; will retry"
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_stable_per_message_and_unique_per_installation() {
        let ours = MessageIds::new("a1b2", "example.com");
        let theirs = MessageIds::new("c3d4", "example.com");
        assert_eq!(
            ours.for_key("ticket:1:approved"),
            ours.for_key("ticket:1:approved")
        );
        assert_ne!(
            ours.for_key("ticket:1:approved"),
            ours.for_key("ticket:2:approved")
        );
        assert_ne!(
            ours.for_key("ticket:1:approved"),
            theirs.for_key("ticket:1:approved")
        );
        assert!(ours.for_key("k").ends_with(".a1b2@example.com>"));
    }
}
