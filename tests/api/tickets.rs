//! The ticket state machine through the API: every transition, every forbidden one, the
//! concurrent double approval, and the one-open-ticket rule.

use certdrop::accounts::Role;
use reqwest::StatusCode;
use serde_json::json;

use crate::{
    common::{Api, TestApp},
    db_test,
    pki::{self, Alg},
};

/// A customer with an app, a domain and one uploaded certificate; returns the certificate id.
async fn customer_with_cert(app: &TestApp, email: &str, name: &str) -> (Api, i64) {
    let api = app.api_user(email, Role::Customer).await;
    let host = format!("www.{name}.example.com");
    api.create_app(name, &[&host]).await;
    let leaf = pki::leaf(&[&host], &pki::root("Test Root"), Alg::P256);
    let resp = api
        .upload(name, leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes(), b"")
        .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
    (api, resp.json["id"].as_i64().unwrap())
}

async fn open(api: &Api, app: &str, kind: &str, cert: Option<i64>) -> crate::common::Resp {
    api.post(
        "/api/v1/tickets",
        json!({"app": app, "kind": kind, "certificate_id": cert}),
    )
    .await
}

db_test! {
    async fn a_customer_opens_a_ticket_and_staff_approve_it(app) {
        let (ann, cert) = customer_with_cert(&app, "ann@example.com", "shop").await;
        let staff = app.staff_with_idle_pair("sam@example.com").await;
        let resp = open(&ann, "shop", "provision", Some(cert)).await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
        assert_eq!(resp.json["state"], "open");
        assert_eq!(resp.json["kind"], "provision");
        assert_eq!(resp.json["certificate_id"], cert);
        let id = resp.json["id"].as_i64().unwrap();
        assert!(resp.json.get("deployment").is_none(), "no deployment before approval");

        let queue = staff.get("/api/v1/tickets?state=open").await;
        assert_eq!(queue.status, StatusCode::OK, "{}", queue.body);
        assert_eq!(queue.json["items"][0]["id"], id);
        let approved = staff.post(&format!("/api/v1/tickets/{id}/approve"), json!({})).await;
        assert_eq!(approved.status, StatusCode::OK, "{}", approved.body);
        assert!(["approved", "deploying"].contains(&approved.json["state"].as_str().unwrap()));
        assert_eq!(approved.json["deployment"]["pair"], "pair-a");
        assert_eq!(approved.json["deployment"]["nodes"].as_array().unwrap().len(), 2);
        assert_eq!(app.count("SELECT COUNT(*) FROM edge_pairs WHERE app_id IS NOT NULL").await, 1, "the pair is dedicated to the app");
        assert_eq!(app.count("SELECT COUNT(*) FROM deploy_jobs").await, 1);
        let history = app.count(&format!("SELECT COUNT(*) FROM ticket_events WHERE ticket_id = {id} AND kind = 'state'")).await;
        assert!(history >= 2);
        assert_eq!(app.count("SELECT COUNT(*) FROM audit_events WHERE action IN ('ticket.opened', 'ticket.approved')").await, 2);
    }
}

db_test! {
    async fn staff_reject_with_a_reason_and_customers_cancel_their_own(app) {
        let (ann, cert) = customer_with_cert(&app, "ann@example.com", "shop").await;
        let staff = app.staff_with_idle_pair("sam@example.com").await;
        let id = open(&ann, "shop", "provision", Some(cert)).await.json["id"].as_i64().unwrap();
        let resp = staff.post(&format!("/api/v1/tickets/{id}/reject"), json!({"reason": "  "})).await;
        assert_eq!(resp.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(resp.code(), "reason_required");
        let resp = staff.post(&format!("/api/v1/tickets/{id}/reject"), json!({"reason": "The chain is incomplete; add the intermediate."})).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
        assert_eq!(resp.json["state"], "rejected");
        assert_eq!(resp.json["reason"], "The chain is incomplete; add the intermediate.");

        let id = open(&ann, "shop", "provision", Some(cert)).await.json["id"].as_i64().unwrap();
        let resp = ann.post(&format!("/api/v1/tickets/{id}/cancel"), json!({})).await;
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.json["state"], "cancelled");
        assert_eq!(app.count("SELECT COUNT(*) FROM edge_pairs WHERE app_id IS NOT NULL").await, 0);
    }
}

db_test! {
    async fn forbidden_transitions_are_refused(app) {
        let (ann, cert) = customer_with_cert(&app, "ann@example.com", "shop").await;
        let staff = app.staff_with_idle_pair("sam@example.com").await;
        let id = open(&ann, "shop", "provision", Some(cert)).await.json["id"].as_i64().unwrap();

        let resp = ann.post(&format!("/api/v1/tickets/{id}/approve"), json!({})).await;
        assert_eq!(resp.status, StatusCode::FORBIDDEN, "a customer cannot approve");
        let resp = ann.post(&format!("/api/v1/tickets/{id}/reject"), json!({"reason": "no"})).await;
        assert_eq!(resp.status, StatusCode::FORBIDDEN);

        staff.post(&format!("/api/v1/tickets/{id}/reject"), json!({"reason": "Wrong certificate."})).await;
        let resp = staff.post(&format!("/api/v1/tickets/{id}/approve"), json!({})).await;
        assert_eq!(resp.status, StatusCode::CONFLICT, "a rejected ticket cannot be approved");
        assert_eq!(resp.code(), "invalid_transition");
        assert!(resp.body.contains("is rejected"));
        let resp = ann.post(&format!("/api/v1/tickets/{id}/cancel"), json!({})).await;
        assert_eq!(resp.status, StatusCode::CONFLICT);
        assert_eq!(app.count("SELECT COUNT(*) FROM deploy_jobs").await, 0);

        let id = open(&ann, "shop", "provision", Some(cert)).await.json["id"].as_i64().unwrap();
        let resp = staff.post(&format!("/api/v1/tickets/{id}/cancel"), json!({})).await;
        assert_eq!(resp.status, StatusCode::FORBIDDEN, "staff do not cancel a customer's ticket");
        staff.post(&format!("/api/v1/tickets/{id}/approve"), json!({})).await;
        let resp = staff.post(&format!("/api/v1/tickets/{id}/reject"), json!({"reason": "too late"})).await;
        assert_eq!(resp.status, StatusCode::CONFLICT, "an approved ticket cannot be rejected");
        let resp = ann.post(&format!("/api/v1/tickets/{id}/cancel"), json!({})).await;
        assert_eq!(resp.status, StatusCode::CONFLICT, "an approved ticket cannot be cancelled");
    }
}

db_test! {
    async fn another_customer_cannot_see_or_touch_a_ticket(app) {
        let (ann, cert) = customer_with_cert(&app, "ann@example.com", "shop").await;
        let id = open(&ann, "shop", "provision", Some(cert)).await.json["id"].as_i64().unwrap();
        let (bob, bob_cert) = customer_with_cert(&app, "bob@example.com", "bobs").await;
        assert_eq!(bob.get(&format!("/api/v1/tickets/{id}")).await.status, StatusCode::NOT_FOUND);
        assert_eq!(bob.post(&format!("/api/v1/tickets/{id}/comments"), json!({"body": "hi"})).await.status, StatusCode::NOT_FOUND);
        assert_eq!(bob.post(&format!("/api/v1/tickets/{id}/cancel"), json!({})).await.status, StatusCode::NOT_FOUND);
        assert_eq!(bob.post(&format!("/api/v1/tickets/{id}/approve"), json!({})).await.status, StatusCode::NOT_FOUND);
        assert!(bob.get("/api/v1/tickets").await.json["items"].as_array().unwrap().is_empty());
        // Nor open one on someone else's app, nor with someone else's certificate.
        assert_eq!(open(&bob, "shop", "provision", Some(cert)).await.status, StatusCode::NOT_FOUND);
        assert_eq!(open(&bob, "bobs", "provision", Some(cert)).await.status, StatusCode::NOT_FOUND);
        assert_eq!(open(&bob, "bobs", "provision", Some(bob_cert)).await.status, StatusCode::CREATED);
        let browser = app.signed_in_browser("cid@example.com", Role::Customer).await;
        assert_eq!(browser.get(&format!("/tickets/{id}")).await.status, StatusCode::NOT_FOUND);
        assert_eq!(app.count(&format!("SELECT COUNT(*) FROM ticket_events WHERE ticket_id = {id} AND kind = 'comment'")).await, 0);
    }
}

db_test! {
    async fn only_one_ticket_of_a_kind_is_open_per_app(app) {
        let (ann, cert) = customer_with_cert(&app, "ann@example.com", "shop").await;
        assert_eq!(open(&ann, "shop", "provision", Some(cert)).await.status, StatusCode::CREATED);
        let resp = open(&ann, "shop", "provision", Some(cert)).await;
        assert_eq!(resp.status, StatusCode::CONFLICT);
        assert_eq!(resp.code(), "ticket_exists");
        assert_eq!(app.count("SELECT COUNT(*) FROM tickets").await, 1);
        // Kinds that make no sense yet are refused with what to do instead.
        let resp = open(&ann, "shop", "update", Some(cert)).await;
        assert_eq!(resp.code(), "not_provisioned");
        let resp = open(&ann, "shop", "rollback", None).await;
        assert_eq!(resp.code(), "not_provisioned");
        let resp = open(&ann, "shop", "remove", None).await;
        assert_eq!(resp.code(), "not_provisioned");
        let resp = open(&ann, "shop", "provision", None).await;
        assert_eq!(resp.code(), "certificate_required");
        let resp = open(&ann, "shop", "upgrade", None).await;
        assert_eq!(resp.code(), "invalid_kind");
    }
}

db_test! {
    async fn two_staff_approving_at_once_yield_one_approval(app) {
        let (ann, cert) = customer_with_cert(&app, "ann@example.com", "shop").await;
        let sam = app.staff_with_idle_pair("sam@example.com").await;
        app.idle_pair("pair-b").await;
        let sue = app.api_user("sue@example.com", Role::Staff).await;
        let id = open(&ann, "shop", "provision", Some(cert)).await.json["id"].as_i64().unwrap();
        let path = format!("/api/v1/tickets/{id}/approve");
        let (a, b) = tokio::join!(sam.post(&path, json!({})), sue.post(&path, json!({})));
        let mut statuses = [a.status, b.status];
        statuses.sort();
        assert_eq!(statuses, [StatusCode::OK, StatusCode::CONFLICT], "{} / {}", a.body, b.body);
        let loser = if a.status == StatusCode::CONFLICT { &a } else { &b };
        assert!(loser.body.contains("already approved"), "{}", loser.body);
        assert_eq!(app.count("SELECT COUNT(*) FROM deploy_jobs").await, 1);
        assert_eq!(app.count("SELECT COUNT(*) FROM edge_pairs WHERE app_id IS NOT NULL").await, 1, "one pair taken");
        assert_eq!(app.count(&format!("SELECT COUNT(*) FROM ticket_events WHERE ticket_id = {id} AND to_state = 'approved'")).await, 1);
        assert_eq!(app.count("SELECT COUNT(*) FROM audit_events WHERE action = 'ticket.approved' AND outcome = 'ok'").await, 1);
    }
}

db_test! {
    async fn approval_without_a_free_pair_is_refused_and_leaves_the_ticket_open(app) {
        let (ann, cert) = customer_with_cert(&app, "ann@example.com", "shop").await;
        let staff = app.api_user("sam@example.com", Role::Staff).await;
        let id = open(&ann, "shop", "provision", Some(cert)).await.json["id"].as_i64().unwrap();
        let resp = staff.post(&format!("/api/v1/tickets/{id}/approve"), json!({})).await;
        assert_eq!(resp.status, StatusCode::CONFLICT);
        assert_eq!(resp.code(), "no_free_pair");
        assert!(resp.body.contains("Create a pair"));
        assert_eq!(staff.get(&format!("/api/v1/tickets/{id}")).await.json["state"], "open");
        // A pair whose nodes have not enrolled is not free either.
        staff.post("/api/v1/edge-pairs", json!({"name": "half-done"})).await;
        assert_eq!(staff.post(&format!("/api/v1/tickets/{id}/approve"), json!({})).await.code(), "no_free_pair");
    }
}

db_test! {
    async fn comments_form_a_thread_on_the_ticket_page(app) {
        let (_, cert) = customer_with_cert(&app, "ann@example.com", "shop").await;
        let _ = cert;
        let browser = crate::common::Browser::new(&app.address);
        let pw = {
            // ann exists already: give her a known password for the browser.
            let hash = certdrop::accounts::password::hash(secrecy::SecretString::from("ann password 123".to_string())).await.unwrap();
            sqlx::query("UPDATE users SET password_hash = $1 WHERE email = 'ann@example.com'").bind(hash).execute(&app.db).await.unwrap();
            "ann password 123"
        };
        browser.log_in("ann@example.com", pw).await;
        let resp = browser.submit("/apps/shop", "/tickets", &[("app", "shop"), ("kind", "provision"), ("certificate_id", &cert.to_string())]).await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER, "{}", resp.body);
        let ticket_path = resp.location().to_string();
        let page = browser.get(&ticket_path).await;
        assert!(page.body.contains("you will get an email when staff approve it"));
        let resp = browser.submit(&ticket_path, &format!("{ticket_path}/comments"), &[("body", "Please deploy before Friday.")]).await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER);
        let staff = app.signed_in_browser("sam@example.com", Role::Staff).await;
        let queue = staff.get("/staff/tickets").await;
        assert!(queue.body.contains("ann@example.com") && queue.body.contains("provision"));
        let page = staff.get(&ticket_path).await;
        assert!(page.body.contains("Please deploy before Friday.") && page.body.contains("Approve and deploy"));
        assert!(!page.body.contains("BEGIN PRIVATE KEY") && !page.body.contains("AGE ENCRYPTED"), "staff never see key material");
        let resp = staff.submit(&ticket_path, &format!("{ticket_path}/reject"), &[("reason", "")]).await;
        assert_eq!(resp.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(resp.body.contains("id=\"reason-error\""), "the error is next to the reason field");
        let resp = staff.submit(&ticket_path, &format!("{ticket_path}/comments"), &[("body", "Will do.")]).await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER);
        let page = browser.get(&ticket_path).await;
        assert!(page.body.contains("Will do.") && page.body.contains("sam@example.com"));
    }
}

db_test! {
    async fn staff_see_where_a_ticket_would_deploy_and_what_stands_in_the_way(app) {
        let (ann, cert) = customer_with_cert(&app, "ann@example.com", "shop").await;
        let id = open(&ann, "shop", "provision", Some(cert)).await.json["id"].as_i64().unwrap();
        let staff = app.signed_in_browser("sam@example.com", Role::Staff).await;

        // No free pair: approving cannot succeed, the page says why and the button is off.
        let page = staff.get(&format!("/tickets/{id}")).await;
        assert!(page.body.contains("Cannot approve now:") && page.body.contains("No free edge pair"), "{}", page.body);
        assert!(page.body.contains("disabled aria-describedby=\"decision\""), "{}", page.body);

        // A free pair, one of whose nodes stopped polling five minutes ago: the pair is named,
        // and staff are warned before they approve a deployment that would time out.
        app.idle_pair("edge-idle").await;
        sqlx::query("UPDATE edge_nodes SET last_seen_at = $1 WHERE slot = 1")
            .bind(certdrop::db::now() - 300)
            .execute(&app.db).await.unwrap();
        let page = staff.get(&format!("/tickets/{id}")).await;
        assert!(!page.body.contains("Cannot approve now:"), "{}", page.body);
        assert!(page.body.contains("It deploys to edge pair <strong>edge-idle</strong> (free now)"), "{}", page.body);
        assert!(page.body.contains("Check first:</strong> edge-idle-1 was last seen 30"), "{}", page.body);
        assert!(!page.body.contains("Check first:</strong> edge-idle-2"), "{}", page.body);
        assert!(!page.body.contains("disabled aria-describedby"), "{}", page.body);
        // The customer sees none of it.
        let customer_page = app.signed_in_browser("cy@example.com", Role::Customer).await.get(&format!("/tickets/{id}")).await;
        assert_eq!(customer_page.status, StatusCode::NOT_FOUND);
    }
}
