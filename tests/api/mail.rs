//! Mail through a real SMTP listener: who gets what, with a working link; and mail queued while
//! SMTP is down is delivered, once, when it comes back.

use certdrop::{accounts::Role, config::Config};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::json;

use crate::{
    common::{Backend, TestApp},
    pki::{self, Alg},
    smtp::SmtpServer,
};

async fn app_with_smtp(backend: Backend, url: String) -> Option<TestApp> {
    TestApp::spawn_with(backend, move |c: &mut Config| {
        c.smtp_url = Some(SecretString::from(url))
    })
    .await
}

async fn ticket_for(app: &TestApp) -> (crate::common::Api, i64) {
    let ann = app.api_user("ann@example.com", Role::Customer).await;
    ann.create_app("shop", &["www.example.com"]).await;
    let leaf = pki::leaf(&["www.example.com"], &pki::root("Test Root"), Alg::P256);
    let cert = ann.upload_id("shop", &leaf, b"").await;
    (ann, cert)
}

async fn staff_are_mailed_when_a_ticket_opens_and_customers_when_it_moves(backend: Backend) {
    let smtp = SmtpServer::start(0).await;
    let Some(app) = app_with_smtp(backend, smtp.url()).await else {
        return;
    };
    let staff = app.staff_with_idle_pair("sam@example.com").await;
    app.api_user("ada@example.com", Role::Admin).await;
    let (ann, cert) = ticket_for(&app).await;
    let id = ann.open_ticket("shop", "provision", Some(cert)).await;

    let staff_mails = smtp
        .wait_for_all(&format!("Ticket #{id}: provision for shop"), 4)
        .await;
    let opened = &staff_mails[0];
    let mut recipients: Vec<String> = staff_mails.iter().flat_map(|m| m.to.clone()).collect();
    recipients.sort();
    assert_eq!(
        recipients,
        [
            "ada@example.com",
            "keys@certdrop.test",
            "ops@certdrop.test",
            "sam@example.com"
        ],
        "every staff member and admin (the pair's crew too), not the customer"
    );
    assert!(
        opened
            .data
            .contains(&format!("{}/tickets/{id}", app.address)),
        "a link to the ticket:\n{}",
        opened.data
    );
    assert!(
        opened.data.contains("text/plain") && opened.data.contains("text/html"),
        "plain text and HTML parts"
    );

    staff
        .post(&format!("/api/v1/tickets/{id}/approve"), json!({}))
        .await;
    let approved = smtp.wait_for(&format!("Ticket #{id} approved")).await;
    assert_eq!(approved.to, ["ann@example.com"]);
    assert!(
        approved
            .data
            .contains(&format!("{}/tickets/{id}", app.address))
    );

    // A second ticket, rejected: the customer reads the reason.
    ann.create_app("blog", &["blog.example.com"]).await;
    let leaf = pki::leaf(&["blog.example.com"], &pki::root("Test Root"), Alg::P256);
    let cert = ann.upload_id("blog", &leaf, b"").await;
    let id2 = ann.open_ticket("blog", "provision", Some(cert)).await;
    staff
        .post(
            &format!("/api/v1/tickets/{id2}/reject"),
            json!({"reason": "Add the intermediate certificate."}),
        )
        .await;
    let rejected = smtp.wait_for(&format!("Ticket #{id2} rejected")).await;
    assert_eq!(rejected.to, ["ann@example.com"]);
    assert!(rejected.data.contains("Add the intermediate certificate."));
    let sent = app
        .count("SELECT COUNT(*) FROM mail_outbox WHERE state = 'sent'")
        .await;
    assert_eq!(
        sent as usize,
        smtp.messages().len(),
        "each queued mail is sent exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_reaches_staff_and_customers_over_smtp_on_sqlite() {
    staff_are_mailed_when_a_ticket_opens_and_customers_when_it_moves(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_reaches_staff_and_customers_over_smtp_on_postgres() {
    staff_are_mailed_when_a_ticket_opens_and_customers_when_it_moves(Backend::Postgres).await;
}

async fn mail_queued_while_smtp_is_down_is_delivered_once_it_is_back(backend: Backend) {
    // A port with nothing listening on it: SMTP is down.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let Some(app) = app_with_smtp(backend, format!("smtp://127.0.0.1:{port}")).await else {
        return;
    };
    app.api_user("sam@example.com", Role::Staff).await;
    let (ann, cert) = ticket_for(&app).await;
    let resp = ann
        .post(
            "/api/v1/tickets",
            json!({"app": "shop", "kind": "provision", "certificate_id": cert}),
        )
        .await;
    assert_eq!(
        resp.status,
        StatusCode::CREATED,
        "the ticket opens even though mail cannot go out"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while app.count("SELECT COUNT(*) FROM mail_outbox WHERE attempts >= 1 AND state = 'pending' AND last_error IS NOT NULL").await == 0 {
        assert!(std::time::Instant::now() < deadline, "the first delivery attempt never failed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let smtp = SmtpServer::start(port).await;
    smtp.wait_for("provision for shop").await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(
        smtp.messages().len(),
        1,
        "delivered once, not once per attempt"
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM mail_outbox WHERE state = 'sent'")
            .await,
        1
    );
    smtp.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_survives_an_smtp_outage_on_sqlite() {
    mail_queued_while_smtp_is_down_is_delivered_once_it_is_back(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_survives_an_smtp_outage_on_postgres() {
    mail_queued_while_smtp_is_down_is_delivered_once_it_is_back(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_smtp_mail_is_written_to_the_outbox_directory() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    app.api_user("sam@example.com", Role::Staff).await;
    let (ann, cert) = ticket_for(&app).await;
    ann.post(
        "/api/v1/tickets",
        json!({"app": "shop", "kind": "provision", "certificate_id": cert}),
    )
    .await;
    let outbox = app.data_dir.path().join("outbox");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let files: Vec<_> = std::fs::read_dir(&outbox)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        if let Some(eml) = files
            .iter()
            .find(|p| p.extension().is_some_and(|e| e == "eml"))
        {
            let text = std::fs::read_to_string(eml).unwrap();
            assert!(
                text.contains("Subject: Ticket #1: provision for shop")
                    && text.contains("sam@example.com")
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no .eml in {}",
            outbox.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_reminders_go_out_once_per_threshold() {
    let smtp = SmtpServer::start(0).await;
    let app = app_with_smtp(Backend::Sqlite, smtp.url()).await.unwrap();
    let ann = app.api_user("ann@example.com", Role::Customer).await;
    ann.create_app("shop", &["www.example.com"]).await;
    let leaf = pki::leaf_with(
        &["www.example.com"],
        &pki::root("Test Root"),
        Alg::P256,
        pki::Validity {
            from_days: -1,
            to_days: 10,
        },
    );
    let cert = ann.upload_id("shop", &leaf, b"").await;
    // The certificate is served: as a deployed provision ticket leaves it.
    let mut tx = app.db.begin().await.unwrap();
    sqlx::query("INSERT INTO tickets (app_id, kind, state, certificate_id, opened_by, created_at, updated_at) VALUES (1, 'provision', 'deployed', $1, 1, 0, 0)")
        .bind(cert).execute(&mut *tx).await.unwrap();
    sqlx::query("INSERT INTO app_deployments (app_id, certificate_id, ticket_id, deployed_at) VALUES (1, $1, 1, 0)")
        .bind(cert).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        certdrop::mail::reminders::queue_due(&app.state)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        certdrop::mail::reminders::queue_due(&app.state)
            .await
            .unwrap(),
        0,
        "each reminder once"
    );
    let reminder = smtp.wait_for("expires within 14 days").await;
    assert_eq!(reminder.to, ["ann@example.com"]);
    assert!(
        reminder
            .data
            .contains(&format!("{}/apps/shop", app.address))
    );
}

/// A process that died holding a message (claimed, its lease run out) leaves it to the next
/// pass, which sends it once, under the Message-ID every attempt uses: this installation's.
async fn a_message_left_mid_send_is_sent_once_with_its_installation_message_id(backend: Backend) {
    let smtp = SmtpServer::start(0).await;
    let Some(app) = app_with_smtp(backend, smtp.url()).await else {
        return;
    };
    let mut tx = app.db.begin().await.unwrap();
    let mail = certdrop::mail::Mail {
        to: "ann@example.com".into(),
        subject: "Left mid-send".into(),
        paragraphs: vec!["Hello.".into()],
        link: None,
    };
    certdrop::mail::enqueue(&mut tx, "test:left-mid-send", &mail)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // As a killed instance leaves it: claimed ("sending"), its lease already over.
    sqlx::query("UPDATE mail_outbox SET state = 'sending', next_attempt_at = $1")
        .bind(certdrop::db::now() - 1)
        .execute(&app.db)
        .await
        .unwrap();
    let got = smtp.wait_for("Left mid-send").await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(smtp.messages().len(), 1, "sent once");
    let installation = certdrop::db::installation_id(&app.db).await.unwrap();
    let id_line = got
        .data
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("message-id:"))
        .unwrap()
        .to_string();
    assert!(
        id_line.contains(&format!(".{installation}@localhost>")),
        "{id_line}"
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM mail_outbox WHERE state = 'sent'")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_left_mid_send_is_sent_once_on_sqlite() {
    a_message_left_mid_send_is_sent_once_with_its_installation_message_id(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_left_mid_send_is_sent_once_on_postgres() {
    a_message_left_mid_send_is_sent_once_with_its_installation_message_id(Backend::Postgres).await;
}
