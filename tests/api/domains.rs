//! Domains that go live: ownership proved by a TXT record in a real DNS server on loopback,
//! the first verified claim winning and blocking overlaps, claims expiring, DNS status
//! following the zone, confirmation before a served domain is removed, and staff changing a
//! customer's domains only with an audited reason.

use certdrop::accounts::Role;
use reqwest::StatusCode;
use serde_json::json;

use crate::{
    common::{Api, TestApp, upload_form},
    db_test,
    edge::serve_shop,
    edge_support::echo_backend,
    pki::{self, Alg},
};

async fn customer(app: &TestApp, email: &str, app_name: &str) -> Api {
    let api = app.api_user(email, Role::Customer).await;
    let resp = api
        .post(
            "/api/v1/apps",
            json!({"name": app_name, "backend_url": "http://127.0.0.1:9"}),
        )
        .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
    api
}

async fn claim(api: &Api, app_name: &str, host: &str) -> serde_json::Value {
    let resp = api
        .post(
            &format!("/api/v1/apps/{app_name}/domains"),
            json!({"hostname": host}),
        )
        .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
    resp.json
}

db_test! {
    async fn a_claim_is_pending_until_a_txt_record_proves_it(app) {
        let ann = customer(&app, "ann@example.com", "shop").await;
        let d = claim(&ann, "shop", "www.a.example").await;
        let v = &d["verification"];
        assert_eq!(v["state"], "pending");
        assert_eq!(v["txt_name"], "_certdrop-challenge.www.a.example");
        let token = v["txt_value"].as_str().unwrap().to_string();
        assert!(token.starts_with("certdrop-verify=") && token.len() > 40, "{token}");
        assert!(v["expires_at"].as_str().is_some());

        // No record yet: refused, saying which record to create.
        let verify = "/api/v1/apps/shop/domains/www.a.example/verify";
        let resp = ann.post(verify, json!({})).await;
        assert_eq!(resp.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", resp.body);
        assert_eq!(resp.code(), "verification_failed");
        let message = resp.json["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains("_certdrop-challenge.www.a.example") && message.contains(&token), "{message}");

        // A record with another value does not prove it either; the claim says what was seen.
        app.dns.txt("_certdrop-challenge.www.a.example", "certdrop-verify=someone-elses");
        let resp = ann.post(verify, json!({})).await;
        assert_eq!(resp.code(), "verification_failed");
        assert!(resp.body.contains("someone-elses"), "{}", resp.body);
        let shown = ann.get("/api/v1/apps/shop/domains/www.a.example").await;
        assert!(shown.json["verification"]["last_error"].as_str().unwrap().contains("someone-elses"));

        // The right value, next to others, proves it.
        app.dns.txt("_certdrop-challenge.www.a.example", &token);
        let resp = ann.post(verify, json!({})).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
        assert_eq!(resp.json["verification"]["state"], "verified");
        assert_eq!(resp.json["verification"]["method"], "TXT record");
        assert_eq!(resp.json["verification"]["txt_value"], serde_json::Value::Null);
        // Verifying again is a no-op, not an error.
        assert_eq!(ann.post(verify, json!({})).await.status, StatusCode::OK);
        assert_eq!(app.count("SELECT COUNT(*) FROM audit_events WHERE action = 'domain.verified'").await, 1);

        // A wildcard is proved at its base name.
        let d = claim(&ann, "shop", "*.b.example").await;
        assert_eq!(d["verification"]["txt_name"], "_certdrop-challenge.b.example");
    }
}

db_test! {
    async fn the_first_verified_claim_wins_and_blocks_overlapping_claims(app) {
        let ann = customer(&app, "ann@example.com", "ann-shop").await;
        let bob = customer(&app, "bob@example.com", "bob-shop").await;
        // While pending, a name may be claimed by several customers: claiming proves nothing.
        let ann_claim = claim(&ann, "ann-shop", "www.a.example").await;
        claim(&bob, "bob-shop", "www.a.example").await;
        bob.prove_domain("bob-shop", "www.a.example").await;

        // Ann publishes her proof too late: the name is taken.
        app.dns.txt("_certdrop-challenge.www.a.example", ann_claim["verification"]["txt_value"].as_str().unwrap());
        let resp = ann.post("/api/v1/apps/ann-shop/domains/www.a.example/verify", json!({})).await;
        assert_eq!(resp.status, StatusCode::CONFLICT, "{}", resp.body);
        assert_eq!(resp.code(), "domain_taken");

        // Overlaps of a verified name are refused to other customers, as the red team tried.
        for host in ["*.a.example", "a.example", "*.www.a.example", "deep.www.a.example"] {
            let resp = ann.post("/api/v1/apps/ann-shop/domains", json!({"hostname": host})).await;
            assert_eq!(resp.status, StatusCode::CONFLICT, "{host}: {}", resp.body);
            assert_eq!(resp.code(), "domain_taken", "{host}");
        }
        // A sibling does not overlap; the owner of the verified name may claim around it.
        claim(&ann, "ann-shop", "shop.a.example").await;
        let resp = bob.post("/api/v1/apps", json!({"name": "bob-blog", "backend_url": "http://127.0.0.1:9"})).await;
        assert_eq!(resp.status, StatusCode::CREATED);
        claim(&bob, "bob-blog", "*.a.example").await;
        bob.prove_domain("bob-blog", "*.a.example").await;

        // A name verified first blocks an overlapping pending claim from being verified later.
        let carl = customer(&app, "carl@example.com", "carl-shop").await;
        let carl_claim = claim(&carl, "carl-shop", "x.c.example").await;
        claim(&ann, "ann-shop", "c.example").await;
        ann.prove_domain("ann-shop", "c.example").await;
        app.dns.txt("_certdrop-challenge.x.c.example", carl_claim["verification"]["txt_value"].as_str().unwrap());
        let resp = carl.post("/api/v1/apps/carl-shop/domains/x.c.example/verify", json!({})).await;
        assert_eq!(resp.code(), "domain_taken", "{}", resp.body);

        // Staff may override, with a reason that is audited.
        let sam = app.api_user("sam@example.com", Role::Staff).await;
        let resp = sam.post("/api/v1/apps/carl-shop/domains/x.c.example/verify", json!({"override_reason": ""})).await;
        assert_eq!(resp.code(), "override_reason_required", "{}", resp.body);
        let resp = sam.post("/api/v1/apps/carl-shop/domains/x.c.example/verify", json!({"override_reason": "ticket 42: c.example delegated x.c.example to carl"})).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
        assert_eq!(resp.json["verification"]["state"], "verified");
        let detail: String = sqlx::query_scalar("SELECT detail FROM audit_events WHERE action = 'domain.verified' AND object_id = 'x.c.example'")
            .fetch_one(&app.db).await.unwrap();
        assert!(detail.contains("ticket 42"), "{detail}");
        // A customer cannot override.
        claim(&carl, "carl-shop", "y.carl.example").await;
        let resp = carl.post("/api/v1/apps/carl-shop/domains/y.carl.example/verify", json!({"override_reason": "trust me"})).await;
        assert_eq!(resp.status, StatusCode::FORBIDDEN, "{}", resp.body);
    }
}

db_test! {
    async fn an_unproven_claim_expires_and_frees_the_name(app) {
        let ann = customer(&app, "ann@example.com", "ann-shop").await;
        let bob = customer(&app, "bob@example.com", "bob-shop").await;
        let first = claim(&ann, "ann-shop", "www.a.example").await;
        // Seven days pass (the test moves the claim's deadline instead of the clock).
        sqlx::query("UPDATE domains SET verification_expires_at = $1 WHERE hostname = 'www.a.example'")
            .bind(certdrop::db::now() - 1)
            .execute(&app.db).await.unwrap();
        let shown = ann.get("/api/v1/apps/ann-shop/domains/www.a.example").await;
        assert_eq!(shown.json["verification"]["state"], "expired");
        app.dns.txt("_certdrop-challenge.www.a.example", first["verification"]["txt_value"].as_str().unwrap());
        let resp = ann.post("/api/v1/apps/ann-shop/domains/www.a.example/verify", json!({})).await;
        assert_eq!(resp.code(), "claim_expired", "{}", resp.body);

        // Someone else proves it meanwhile; the expired claim cannot come back over it.
        claim(&bob, "bob-shop", "www.a.example").await;
        bob.prove_domain("bob-shop", "www.a.example").await;
        let resp = ann.post("/api/v1/apps/ann-shop/domains", json!({"hostname": "www.a.example"})).await;
        assert_eq!(resp.code(), "domain_taken", "{}", resp.body);

        // Claiming an expired name again gives a fresh token and seven more days.
        let other = claim(&ann, "ann-shop", "shop.b.example").await;
        sqlx::query("UPDATE domains SET verification_expires_at = $1 WHERE hostname = 'shop.b.example'")
            .bind(certdrop::db::now() - 1)
            .execute(&app.db).await.unwrap();
        let again = claim(&ann, "ann-shop", "shop.b.example").await;
        assert_eq!(again["verification"]["state"], "pending");
        assert_ne!(again["verification"]["txt_value"], other["verification"]["txt_value"]);
        assert_eq!(app.count("SELECT COUNT(*) FROM domains WHERE hostname = 'shop.b.example'").await, 1);
    }
}

db_test! {
    async fn dns_status_follows_the_zone_against_the_platform_hostname(app) {
        let app = TestApp::spawn_with(app.backend(), |c| c.apps_domain = Some("apps.example.net".into())).await.unwrap();
        let ann = customer(&app, "ann@example.com", "shop").await;
        let shown = ann.get("/api/v1/apps/shop").await;
        assert_eq!(shown.json["platform_hostname"], "shop.apps.example.net");
        assert_eq!(shown.json["dns_target"]["cname"], "shop.apps.example.net");

        let d = claim(&ann, "shop", "www.shop.example").await;
        assert_eq!(d["dns"]["state"], "unchecked");
        assert_eq!(d["dns"]["records"], json!([{"type": "CNAME", "name": "www.shop.example", "value": "shop.apps.example.net"}]));
        let check = "/api/v1/apps/shop/domains/www.shop.example/dns-check";
        let resp = ann.post(check, json!({})).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
        assert_eq!(resp.json["dns"]["state"], "no_record");
        assert!(resp.json["dns"]["checked_at"].as_str().is_some());

        app.dns.address("www.shop.example", "192.0.2.7");
        let resp = ann.post(check, json!({})).await;
        assert_eq!(resp.json["dns"]["state"], "points_elsewhere");
        assert_eq!(resp.json["dns"]["seen"], "192.0.2.7");

        app.dns.clear("www.shop.example");
        app.dns.cname("www.shop.example", "shop.apps.example.net");
        app.dns.address("shop.apps.example.net", "192.0.2.10");
        let resp = ann.post(check, json!({})).await;
        assert_eq!(resp.json["dns"]["state"], "points_here", "{}", resp.body);
        assert_eq!(resp.json["dns"]["seen"], "CNAME shop.apps.example.net → 192.0.2.10");

        // Names under the apps domain are the platform's.
        let resp = ann.post("/api/v1/apps/shop/domains", json!({"hostname": "evil.apps.example.net"})).await;
        assert_eq!(resp.code(), "reserved_domain", "{}", resp.body);
    }
}

db_test! {
    async fn a_served_domain_is_removed_only_when_confirmed_and_only_proved_names_are_served(app) {
        let root = pki::root("Domains Root");
        let leaf = pki::leaf(&["www.example.com", "api.example.com"], &root, Alg::P256);
        let (nodes, ann) = serve_shop(&app, echo_backend().await, &[], &leaf, b"").await;
        // The pair's addresses are the A targets (no apps domain here), and a domain that
        // resolves to them points here.
        let d = ann.get("/api/v1/apps/shop/domains/www.example.com").await;
        let listed = ann.get("/api/v1/apps").await;
        assert_eq!(listed.json["items"][0]["dns_target"], json!({"cname": null, "addresses": ["127.0.0.1"]}));
        assert_eq!(listed.json["items"][0]["tls_status"]["state"], "serving");
        assert!(listed.json["items"][0]["tls_status"]["label"].as_str().unwrap().starts_with("Serving www.example.com (certificate #"));
        assert_eq!(d.json["dns"]["records"][0]["type"], "A");
        assert_eq!(d.json["dns"]["records"][0]["value"], "127.0.0.1");
        // The "deployed" mail said the same.
        let mail: String = sqlx::query_scalar("SELECT text_body FROM mail_outbox WHERE idempotency_key LIKE 'ticket:%:deployed'")
            .fetch_one(&app.db).await.unwrap();
        assert!(mail.contains("www.example.com A 127.0.0.1"), "{mail}");
        app.dns.address("www.example.com", "127.0.0.1");
        let resp = ann.post("/api/v1/apps/shop/domains/www.example.com/dns-check", json!({})).await;
        assert_eq!(resp.json["dns"]["state"], "points_here", "{}", resp.body);

        // A claimed but unproven name is not served, though the certificate covers it.
        claim(&ann, "shop", "api.example.com").await;
        let roots = crate::edge_support::roots(&root.pem());
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert!(crate::edge_support::tls_check(nodes[0].tls, "api.example.com", roots.clone()).await.is_err());
        ann.prove_domain("shop", "api.example.com").await;
        let mut served = false;
        for _ in 0..50 {
            if crate::edge_support::tls_check(nodes[0].tls, "api.example.com", roots.clone()).await.is_ok() {
                served = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(served, "a proved name is published to the pair");

        // Removing a live domain asks for the name again, and says what will happen.
        let resp = ann.delete("/api/v1/apps/shop/domains/www.example.com").await;
        assert_eq!(resp.status, StatusCode::CONFLICT, "{}", resp.body);
        assert_eq!(resp.code(), "confirmation_required");
        assert!(resp.body.contains("--confirm www.example.com"), "{}", resp.body);
        let resp = ann.delete("/api/v1/apps/shop/domains/www.example.com?confirm=api.example.com").await;
        assert_eq!(resp.code(), "confirmation_required");
        let resp = ann.delete("/api/v1/apps/shop/domains/www.example.com?confirm=www.example.com").await;
        assert_eq!(resp.status, StatusCode::NO_CONTENT, "{}", resp.body);
        let detail: String = sqlx::query_scalar("SELECT detail FROM audit_events WHERE action = 'domain.removed'")
            .fetch_one(&app.db).await.unwrap();
        assert!(detail.contains("\"was_served\":true"), "{detail}");
        // A pending domain goes without confirmation.
        claim(&ann, "shop", "pending.example.com").await;
        assert_eq!(ann.delete("/api/v1/apps/shop/domains/pending.example.com").await.status, StatusCode::NO_CONTENT);
        // The pair is still held (and billed) for the remaining domain, and the certificate
        // says truthfully what it covers now.
        let shown = ann.get("/api/v1/apps/shop").await;
        assert_eq!(shown.json["provisioned"], true);
        let cert = ann.get(&format!("/api/v1/certs/{}", shown.json["serving_certificate_id"])).await;
        assert_eq!(cert.json["domains_covered"], json!(["api.example.com"]), "{}", cert.body);
    }
}

db_test! {
    async fn staff_change_a_customers_domains_only_with_an_audited_reason(app) {
        let ann = customer(&app, "ann@example.com", "shop").await;
        claim(&ann, "shop", "www.a.example").await;
        let sam = app.api_user("sam@example.com", Role::Staff).await;
        let resp = sam.post("/api/v1/apps/shop/domains", json!({"hostname": "evil.example"})).await;
        assert_eq!(resp.status, StatusCode::FORBIDDEN, "{}", resp.body);
        assert_eq!(resp.code(), "override_reason_required");
        let resp = sam.delete("/api/v1/apps/shop/domains/www.a.example").await;
        assert_eq!(resp.code(), "override_reason_required");
        assert_eq!(app.count("SELECT COUNT(*) FROM domains").await, 1);

        let resp = sam.post("/api/v1/apps/shop/domains", json!({"hostname": "help.a.example", "override_reason": "ticket 7: customer asked by phone"})).await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
        let resp = sam.delete("/api/v1/apps/shop/domains/www.a.example?override_reason=ticket%207").await;
        assert_eq!(resp.status, StatusCode::NO_CONTENT, "{}", resp.body);
        let reasons: Vec<String> = sqlx::query_scalar("SELECT detail FROM audit_events WHERE action IN ('domain.added', 'domain.removed') AND actor_email = 'sam@example.com' ORDER BY id")
            .fetch_all(&app.db).await.unwrap();
        assert_eq!(reasons.len(), 2);
        assert!(reasons[0].contains("customer asked by phone") && reasons[1].contains("ticket 7"), "{reasons:?}");
    }
}

db_test! {
    async fn a_ticket_waits_for_a_proved_domain(app) {
        let ann = customer(&app, "ann@example.com", "shop").await;
        claim(&ann, "shop", "www.example.com").await;
        let leaf = pki::leaf(&["www.example.com"], &pki::root("Ticket Root"), Alg::P256);
        let cert = ann.upload_id("shop", &leaf, b"").await;
        let resp = ann.post("/api/v1/tickets", json!({"app": "shop", "kind": "provision", "certificate_id": cert})).await;
        assert_eq!(resp.status, StatusCode::CONFLICT, "{}", resp.body);
        assert_eq!(resp.code(), "domain_unverified");
        ann.prove_domain("shop", "www.example.com").await;
        assert_eq!(ann.get("/api/v1/apps/shop").await.json["tls_status"]["label"], "No TLS yet");
        let resp = ann.post("/api/v1/tickets", json!({"app": "shop", "kind": "provision", "certificate_id": cert})).await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
        // The app's one status says so, the same in its page, the listing and the API.
        let ticket = resp.json["id"].as_i64().unwrap();
        let listed = ann.get("/api/v1/apps").await;
        let status = &listed.json["items"][0]["tls_status"];
        assert_eq!(status["state"], "pending");
        assert_eq!(status["ticket"], ticket);
        assert_eq!(status["label"], format!("Pending: provision ticket #{ticket} waits for staff"));
    }
}

db_test! {
    async fn every_app_answers_at_its_platform_hostname_with_the_platform_certificate(app) {
        let app = TestApp::spawn_with(app.backend(), |c| c.apps_domain = Some("apps.example.net".into())).await.unwrap();
        let root = pki::root("Platform Root");
        // An admin uploads the apps domain's wildcard through the same intake as customers.
        let (ops, keys) = app.crew().await;
        let narrow = pki::leaf(&["shop.apps.example.net"], &root, Alg::P256);
        let resp = keys.multipart("/api/v1/platform/certificate", upload_form(narrow.cert_pem.as_bytes(), narrow.key_pem.as_bytes(), b"", false)).await;
        assert_eq!(resp.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", resp.body);
        assert_eq!(resp.code(), "domain_mismatch");
        let platform = pki::leaf(&["*.apps.example.net"], &root, Alg::P256);
        let form = || upload_form(platform.cert_pem.as_bytes(), platform.key_pem.as_bytes(), b"", false);
        assert_eq!(ops.multipart("/api/v1/platform/certificate", form()).await.status, StatusCode::FORBIDDEN, "staff are not admins");
        let resp = keys.multipart("/api/v1/platform/certificate", form()).await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
        assert_eq!(resp.json["fingerprint_sha256"], platform.fingerprint());
        let stored: String = sqlx::query_scalar("SELECT sealed_key FROM platform_certificates").fetch_one(&app.db).await.unwrap();
        assert!(stored.contains("BEGIN AGE ENCRYPTED FILE") && !stored.contains("PRIVATE KEY"));

        // Once shop holds a pair, both nodes serve shop.apps.example.net with the platform
        // certificate and proxy it to shop's backend; www.example.com keeps its own.
        let leaf = pki::leaf(&["www.example.com"], &root, Alg::P256);
        let (nodes, _ann) = serve_shop(&app, echo_backend().await, &[], &leaf, b"").await;
        let roots = crate::edge_support::roots(&root.pem());
        for node in &nodes {
            let mut served = None;
            for _ in 0..100 {
                if let Ok((chain, _)) = crate::edge_support::tls_check(node.tls, "shop.apps.example.net", roots.clone()).await {
                    served = Some(chain[0].clone());
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            assert_eq!(served.as_deref(), Some(platform.fingerprint().as_str()), "the platform hostname is served");
            let (chain, _) = crate::edge_support::tls_check(node.tls, "www.example.com", roots.clone()).await.unwrap();
            assert_eq!(chain[0], leaf.fingerprint());
            let client = crate::edge_support::https_client("shop.apps.example.net", node.tls, &root.pem(), false);
            let resp = client.get(format!("https://shop.apps.example.net:{}/hello", node.tls.port())).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
        }
        assert_eq!(app.count("SELECT COUNT(*) FROM platform_node_keys").await, 2);
        // The operator learns which records the apps domain's zone needs, by API and on a page.
        let records = ops.get("/api/v1/platform/dns-records").await;
        assert_eq!(records.json["items"], json!([{"type": "A", "name": "shop.apps.example.net", "value": "127.0.0.1"}]), "{}", records.body);
        let admin = app.signed_in_browser("ada@example.com", Role::Admin).await;
        let page = admin.get("/admin/platform").await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(page.body.contains("shop.apps.example.net A 127.0.0.1") && page.body.contains(&platform.fingerprint()), "{}", page.body);
        let customer_page = app.signed_in_browser("cy@example.com", Role::Customer).await.get("/admin/platform").await;
        assert_eq!(customer_page.status, StatusCode::FORBIDDEN);

        // A revoked node loses its copy of the platform key with the rest, and is not sealed to again.
        let id: i64 = sqlx::query_scalar("SELECT id FROM edge_nodes ORDER BY id LIMIT 1").fetch_one(&app.db).await.unwrap();
        let resp = keys.post(&format!("/api/v1/edge-nodes/{id}/revoke"), json!({})).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        assert_eq!(app.count(&format!("SELECT COUNT(*) FROM platform_node_keys WHERE node_id = {id}")).await, 0);
        assert_eq!(app.count("SELECT COUNT(*) FROM platform_node_keys").await, 1);
    }
}

db_test! {
    async fn the_worker_verifies_proved_claims_checks_dns_and_writes_down_expired_ones(app) {
        let ann = customer(&app, "ann@example.com", "shop").await;
        let d = claim(&ann, "shop", "www.a.example").await;
        claim(&ann, "shop", "old.a.example").await;
        sqlx::query("UPDATE domains SET verification_expires_at = $1 WHERE hostname = 'old.a.example'")
            .bind(certdrop::db::now() - 1)
            .execute(&app.db).await.unwrap();
        app.dns.txt("_certdrop-challenge.www.a.example", d["verification"]["txt_value"].as_str().unwrap());

        // The customer never comes back: the worker finds the proof on its own.
        certdrop::domains::worker::tick(&app.state).await.unwrap();
        let www = ann.get("/api/v1/apps/shop/domains/www.a.example").await;
        assert_eq!(www.json["verification"]["state"], "verified", "{}", www.body);
        assert_eq!(www.json["dns"]["state"], "no_record");
        assert!(www.json["dns"]["checked_at"].as_str().is_some());
        assert_eq!(app.count("SELECT COUNT(*) FROM domains WHERE hostname = 'old.a.example' AND verification_state = 'expired'").await, 1);
        // Running again changes nothing and writes nothing twice.
        certdrop::domains::worker::tick(&app.state).await.unwrap();
        assert_eq!(app.count("SELECT COUNT(*) FROM audit_events WHERE action = 'domain.claim_expired'").await, 1);
        assert_eq!(app.count("SELECT COUNT(*) FROM audit_events WHERE action = 'domain.verified'").await, 1);
    }
}
