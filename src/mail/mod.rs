//! Mail: messages are written to a durable outbox table in the same transaction as the change
//! they report (so a crash or an SMTP outage loses none), then sent by `worker` through lettre.
//! A message never carries key material: only names, states and links.

pub mod reminders;
pub mod worker;

use askama::Template;
use sqlx::AnyConnection;

use crate::{db, error::AppResult};

/// One message: a title, a few paragraphs and an optional link, as plain text and HTML.
#[derive(Clone, Debug)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub paragraphs: Vec<String>,
    pub link: Option<(String, String)>,
}

#[derive(Template)]
#[template(path = "mail/message.txt")]
struct TextBody<'a> {
    mail: &'a Mail,
}

#[derive(Template)]
#[template(path = "mail/message.html")]
struct HtmlBody<'a> {
    mail: &'a Mail,
}

/// Queues a message once: a second call with the same `key` does nothing.
pub async fn enqueue(conn: &mut AnyConnection, key: &str, mail: &Mail) -> AppResult<()> {
    let text = TextBody { mail }.render()?;
    let html = HtmlBody { mail }.render()?;
    let now = db::now();
    sqlx::query(
        "INSERT INTO mail_outbox (idempotency_key, to_address, subject, text_body, html_body, state, next_attempt_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $6) ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(key)
    .bind(&mail.to)
    .bind(&mail.subject)
    .bind(text)
    .bind(html)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}
