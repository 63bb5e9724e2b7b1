//! Webhooks: events reach a customer's endpoint signed per Standard Webhooks, once each,
//! retried after a failure, logged with each answer; refused toward private addresses unless
//! the installation allows them; another customer's endpoints are invisible.

use std::sync::{Arc, Mutex};

use axum::{Router, http::HeaderMap, http::StatusCode as AxumStatus};
use certdrop::accounts::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{common::TestApp, db_test};

/// What an endpoint received: the headers that matter and the body.
#[derive(Clone, Debug)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

/// A receiver on loopback that answers 500 to its first `fail_first` requests, then 204.
async fn receiver(fail_first: usize) -> (String, Arc<Mutex<Vec<Received>>>) {
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let seen = got.clone();
    let app = Router::new().fallback(move |headers: HeaderMap, body: String| {
        let seen = seen.clone();
        async move {
            let header = |n: &str| {
                headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            let mut seen = seen.lock().unwrap();
            seen.push(Received {
                id: header("webhook-id"),
                timestamp: header("webhook-timestamp"),
                signature: header("webhook-signature"),
                body,
            });
            if seen.len() <= fail_first {
                AxumStatus::INTERNAL_SERVER_ERROR
            } else {
                AxumStatus::NO_CONTENT
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hooks/certdrop"), got)
}

async fn wait_for(got: &Arc<Mutex<Vec<Received>>>, n: usize, seconds: u64) -> Vec<Received> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        let now = got.lock().unwrap().clone();
        if now.len() >= n || std::time::Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

db_test! {
    async fn events_reach_the_endpoint_signed_once_each_and_retried_after_a_failure(app) {
        let (url, got) = receiver(1).await;
        let ann = app.api_user("ann@example.com", Role::Customer).await;
        let resp = ann.post("/api/v1/webhooks", json!({"url": url, "events": ["ticket.opened", "ticket.cancelled"]})).await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
        let secret = resp.json["secret"].as_str().unwrap().to_string();
        let endpoint = resp.json["id"].as_i64().unwrap();
        assert!(secret.starts_with("whsec_"));
        assert!(ann.get("/api/v1/webhooks").await.json["items"][0].get("secret").is_none(), "shown once");
        // Another customer sees none of it.
        let bob = app.api_user("bob@example.com", Role::Customer).await;
        assert_eq!(bob.get("/api/v1/webhooks").await.json["items"], json!([]));
        assert_eq!(bob.get(&format!("/api/v1/webhooks/{endpoint}/deliveries")).await.status, StatusCode::NOT_FOUND);
        assert_eq!(bob.delete(&format!("/api/v1/webhooks/{endpoint}")).await.status, StatusCode::NOT_FOUND);

        ann.create_app("shop", &["www.example.com"]).await;
        let leaf = crate::pki::leaf(&["www.example.com"], &crate::pki::root("Hook Root"), crate::pki::Alg::P256);
        let cert = ann.upload_id("shop", &leaf, b"").await;
        let ticket = ann.open_ticket("shop", "provision", Some(cert)).await;
        // The first try gets 500; the retry 5 s later is delivered, with the same id.
        let seen = wait_for(&got, 2, 20).await;
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0].id, seen[1].id, "a retry is the same message");
        for r in &seen {
            let expected = certdrop::webhooks::signature(&secret, &r.id, r.timestamp.parse().unwrap(), &r.body).unwrap();
            assert_eq!(r.signature, expected, "signed with the endpoint's secret");
            let body: Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(body["type"], "ticket.opened");
            assert_eq!(body["data"]["ticket_id"], ticket);
            assert_eq!(body["data"]["app"], "shop");
        }
        let log = ann.get(&format!("/api/v1/webhooks/{endpoint}/deliveries")).await.json;
        assert_eq!(log["items"][0]["state"], "delivered", "{log}");
        assert_eq!(log["items"][0]["attempts"], 2);
        assert_eq!(log["items"][0]["last_status"], 204);

        // An event not asked for is not sent; one asked for is, once.
        let resp = ann.post(&format!("/api/v1/tickets/{ticket}/cancel"), json!({})).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
        let seen = wait_for(&got, 3, 10).await;
        assert_eq!(seen.len(), 3);
        let body: Value = serde_json::from_str(&seen[2].body).unwrap();
        assert_eq!(body["type"], "ticket.cancelled");
        // A test event, on demand.
        let resp = ann.post(&format!("/api/v1/webhooks/{endpoint}/test"), json!({})).await;
        assert_eq!(resp.status, StatusCode::ACCEPTED);
        let seen = wait_for(&got, 4, 10).await;
        assert!(seen[3].body.contains("webhook.test"), "{seen:?}");
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        assert_eq!(got.lock().unwrap().len(), 4, "nothing sent twice");

        let resp = ann.delete(&format!("/api/v1/webhooks/{endpoint}")).await;
        assert_eq!(resp.status, StatusCode::NO_CONTENT);
        // The signing secret is sealed like a key: never in the database as text.
        assert_eq!(app.count(&format!("SELECT COUNT(*) FROM webhook_endpoints WHERE secret_sealed LIKE '%{}%'", &secret[6..20])).await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_on_loopback_or_link_local_is_refused_unless_allowed() {
    let app = TestApp::spawn_with(crate::common::Backend::Sqlite, |c| {
        c.allow_private_backends = false
    })
    .await
    .unwrap();
    let ann = app.api_user("ann@example.com", Role::Customer).await;
    // The backends' rules: loopback and link-local (cloud metadata) are refused.
    for url in [
        "http://127.0.0.1:9/x",
        "http://169.254.169.254/latest",
        "http://[::1]/hook",
    ] {
        let resp = ann
            .post(
                "/api/v1/webhooks",
                json!({"url": url, "events": ["ticket.opened"]}),
            )
            .await;
        assert_eq!(
            (resp.status, resp.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "webhook_url_not_allowed"),
            "{url}: {}",
            resp.body
        );
    }
    let resp = ann
        .post(
            "/api/v1/webhooks",
            json!({"url": "ftp://example.com", "events": ["nope"]}),
        )
        .await;
    let codes: Vec<&str> = resp.json["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["invalid_webhook_url", "invalid_events"]);
}

db_test! {
    async fn a_customer_adds_an_endpoint_and_sends_a_test_event_from_the_page(app) {
        let (url, got) = receiver(0).await;
        let browser = app.signed_in_browser("ann@example.com", Role::Customer).await;
        let page = browser.submit_from("/account/webhooks", "/account/webhooks", &[("url", &url), ("events", "ticket.opened"), ("events", "ticket.failed")]).await;
        assert_eq!(page.status, StatusCode::CREATED, "{}", page.body);
        assert!(page.body.contains("whsec_") && page.body.contains("ticket.failed"), "the secret, once");
        assert!(!browser.get("/account/webhooks").await.body.contains("whsec_"), "never again");
        let refused = browser.submit_from("/account/webhooks", "/account/webhooks", &[("url", "not a url")]).await;
        assert_eq!(refused.status, StatusCode::SEE_OTHER, "back to the page with its errors");
        let again = browser.get("/account/webhooks").await;
        assert!(again.body.contains("id=\"url-error\"") && again.body.contains("id=\"events-error\""), "{}", again.body);
        let id: i64 = app.count("SELECT MAX(id) FROM webhook_endpoints").await;
        let resp = browser.submit("/account/webhooks", &format!("/account/webhooks/{id}/test"), &[]).await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER);
        let seen = wait_for(&got, 1, 10).await;
        assert!(seen[0].body.contains("webhook.test"));
        // The delivery log shows the endpoint's answer.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !browser.get("/account/webhooks").await.body.contains("delivered") {
            assert!(std::time::Instant::now() < deadline, "the log never showed the delivery");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}
