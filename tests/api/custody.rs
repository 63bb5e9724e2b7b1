//! Key custody against insiders: no single account gets a customer's key sealed to a recipient
//! that is not a confirmed edge node; revocation; the second factor (TOTP, replay, recovery
//! codes, freshness); the fleet key; separation of duties.

use certdrop::accounts::{Role, second_factor};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    common::{Api, Backend, TestApp, confirm_node},
    db_test,
    pki::{self, Alg},
};

/// A customer with an app, an uploaded certificate and an open provision ticket.
async fn customer_ticket(app: &TestApp) -> (Api, i64, i64) {
    let ann = app.api_user("ann@example.com", Role::Customer).await;
    ann.create_app("shop", &["www.example.com"]).await;
    let leaf = pki::leaf(&["www.example.com"], &pki::root("Custody Root"), Alg::P256);
    let cert = ann.upload_id("shop", &leaf, b"").await;
    let ticket = ann.open_ticket("shop", "provision", Some(cert)).await;
    (ann, cert, ticket)
}

/// Creates a pair as `creator` and enrolls both its nodes with recipients the caller holds
/// (an attacker's, say). Returns each node's id, node token and age identity.
async fn pair_with_own_nodes(
    app: &TestApp,
    creator: &Api,
    name: &str,
) -> Vec<(i64, String, age::x25519::Identity)> {
    let pair = creator
        .post("/api/v1/edge-pairs", json!({"name": name}))
        .await;
    assert_eq!(pair.status, StatusCode::CREATED, "{}", pair.body);
    let mut nodes = Vec::new();
    for token in pair.json["enroll_tokens"].as_array().unwrap() {
        let identity = age::x25519::Identity::generate();
        let resp = app
            .api_anonymous()
            .post(
                "/api/v1/edge/enroll",
                json!({"enroll_token": token, "recipient": identity.to_public().to_string(), "address": "192.0.2.1:443"}),
            )
            .await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
        assert_eq!(resp.json["state"], "enrolled", "a new node is inert");
        nodes.push((
            resp.json["node_id"].as_i64().unwrap(),
            resp.json["node_token"].as_str().unwrap().to_string(),
            identity,
        ));
    }
    nodes
}

fn fingerprint(identity: &age::x25519::Identity) -> String {
    certdrop::edge::recipient_fingerprint(&identity.to_public().to_string())
}

/// What a node gets from the control plane with its own token.
async fn node_config(app: &TestApp, node_token: &str) -> Value {
    let mut node = app.api_anonymous();
    node.token = Some(node_token.to_string());
    let resp = node.get("/api/v1/edge/config?applied=-1&wait=0").await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    resp.json
}

async fn refusals(app: &TestApp, action: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT detail FROM audit_events WHERE action = $1 AND outcome = 'refused' ORDER BY id",
    )
    .bind(action)
    .fetch_all(&app.db)
    .await
    .unwrap()
}

db_test! {
    async fn a_single_insider_never_gets_a_customer_key_sealed_to_their_own_recipients(app) {
        let (ann, _cert, ticket) = customer_ticket(&app).await;
        // 1. A staff member makes a pair and enrolls both nodes with recipients they hold.
        let mallory = app.api_user("mallory@example.com", Role::Staff).await;
        let rogue = pair_with_own_nodes(&app, &mallory, "rogue").await;
        let approve = format!("/api/v1/tickets/{ticket}/approve");
        let resp = mallory.post(&approve, json!({})).await;
        assert_eq!(resp.status, StatusCode::CONFLICT, "{}", resp.body);
        assert_eq!(resp.code(), "no_free_pair", "an unconfirmed pair is never free");
        assert_eq!(ann.get(&format!("/api/v1/tickets/{ticket}")).await.json["state"], "open");
        // Their nodes get nothing to serve, and certainly no sealed key.
        for (_, token, _) in &rogue {
            let config = node_config(&app, token).await;
            assert_eq!(config["sites"], json!([]), "{config}");
        }
        // They cannot confirm their own nodes: confirming takes an admin.
        let resp = mallory
            .post(&format!("/api/v1/edge-nodes/{}/confirm", rogue[0].0), json!({"recipient_fingerprint": fingerprint(&rogue[0].2)}))
            .await;
        assert_eq!(resp.status, StatusCode::FORBIDDEN);

        // 2. An admin alone: cannot confirm the nodes of a pair they created.
        let max = app.api_user("max@example.com", Role::Admin).await;
        let own = pair_with_own_nodes(&app, &max, "rogue-two").await;
        let resp = max
            .post(&format!("/api/v1/edge-nodes/{}/confirm", own[0].0), json!({"recipient_fingerprint": fingerprint(&own[0].2)}))
            .await;
        assert_eq!(resp.status, StatusCode::CONFLICT, "{}", resp.body);
        assert_eq!(resp.code(), "self_confirmation");
        // ... nor promote an account they control to act as the second admin.
        let puppet = app.api_user("puppet@example.com", Role::Customer).await;
        let puppet_id: i64 = sqlx::query_scalar("SELECT id FROM users WHERE email = 'puppet@example.com'").fetch_one(&app.db).await.unwrap();
        let max_browser = app.signed_in_browser("max.web@example.com", Role::Admin).await;
        let resp = max_browser.submit("/admin/users", &format!("/admin/users/{puppet_id}/role"), &[("role", "admin")]).await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER);
        assert_eq!(app.count("SELECT COUNT(*) FROM users WHERE email = 'puppet@example.com' AND role = 'customer'").await, 1, "only asked");
        let resp = puppet
            .post(&format!("/api/v1/edge-nodes/{}/confirm", own[0].0), json!({"recipient_fingerprint": fingerprint(&own[0].2)}))
            .await;
        assert_eq!(resp.status, StatusCode::FORBIDDEN);

        // 3. An honest admin compares fingerprints: a recipient other than the one the node
        //    printed is refused.
        let ada = app.api_user("ada@example.com", Role::Admin).await;
        let printed_by_real_node = fingerprint(&age::x25519::Identity::generate());
        let resp = ada
            .post(&format!("/api/v1/edge-nodes/{}/confirm", rogue[0].0), json!({"recipient_fingerprint": printed_by_real_node}))
            .await;
        assert_eq!(resp.status, StatusCode::CONFLICT);
        assert_eq!(resp.code(), "fingerprint_mismatch");

        // 4. Even if the honest admin is fooled into confirming the rogue pair, its creator
        //    cannot approve the deployment of a customer's key to it (separation of duties).
        for (id, _, identity) in &rogue {
            confirm_node(&ada, *id, &fingerprint(identity)).await;
        }
        let resp = mallory.post(&approve, json!({})).await;
        assert_eq!(resp.status, StatusCode::CONFLICT, "{}", resp.body);
        assert_eq!(resp.code(), "separation_of_duties");

        // Nothing was ever sealed to any node; the attempts are on the audit trail.
        assert_eq!(app.count("SELECT COUNT(*) FROM node_keys").await, 0);
        assert_eq!(app.count("SELECT COUNT(*) FROM audit_events WHERE action = 'key.sealed'").await, 0);
        for (_, token, _) in &rogue {
            assert_eq!(node_config(&app, token).await["sites"], json!([]));
        }
        let approvals = refusals(&app, "ticket.approved").await;
        assert_eq!(approvals, [r#"{"code":"no_free_pair"}"#, r#"{"code":"separation_of_duties"}"#]);
        let confirmations = refusals(&app, "edge_node.confirmed").await;
        assert_eq!(
            confirmations,
            [r#"{"code":"forbidden"}"#, r#"{"code":"self_confirmation"}"#, r#"{"code":"forbidden"}"#, r#"{"code":"fingerprint_mismatch"}"#]
        );
        let enrolled: String = sqlx::query_scalar("SELECT detail FROM audit_events WHERE action = 'edge_node.enrolled' ORDER BY id LIMIT 1").fetch_one(&app.db).await.unwrap();
        assert!(enrolled.contains(&fingerprint(&rogue[0].2)), "enrollment is audited with the fingerprint: {enrolled}");
        let confirmed: String = sqlx::query_scalar("SELECT detail FROM audit_events WHERE action = 'edge_node.confirmed' AND outcome = 'ok' ORDER BY id LIMIT 1").fetch_one(&app.db).await.unwrap();
        assert!(confirmed.contains(&fingerprint(&rogue[0].2)), "{confirmed}");
    }
}

db_test! {
    async fn a_key_is_sealed_only_to_confirmed_nodes_and_the_customer_sees_and_hears_where(app) {
        let (ann, cert, ticket) = customer_ticket(&app).await;
        let sam = app.staff_with_idle_pair("sam@example.com").await;
        let resp = sam.post(&format!("/api/v1/tickets/{ticket}/approve"), json!({})).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
        // The deploy worker seals the key to both confirmed nodes (they are not running, so
        // the deployment itself waits; the sealing is what matters here).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while app.count("SELECT COUNT(*) FROM node_keys").await < 2 {
            assert!(std::time::Instant::now() < deadline, "the key was never sealed to the nodes");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let shown = ann.get(&format!("/api/v1/certs/{cert}")).await.json;
        let sealed = shown["sealed_to"].as_array().unwrap();
        assert_eq!(sealed.len(), 2, "{shown}");
        assert_eq!(sealed[0]["pair"], "pair-a");
        assert_eq!(sealed[0]["node"], "pair-a-1");
        assert!(sealed[0]["recipient_fingerprint"].as_str().unwrap().starts_with("SHA256:"));
        assert_eq!(sealed[0]["confirmed_by"], "keys@certdrop.test");
        assert_eq!(ann.get("/api/v1/apps/shop/certs").await.json["items"][0]["sealed_to"], shown["sealed_to"]);
        let sealings: Vec<String> = sqlx::query_scalar("SELECT detail FROM audit_events WHERE action = 'key.sealed' ORDER BY id").fetch_all(&app.db).await.unwrap();
        assert_eq!(sealings.len(), 2);
        assert!(sealings[0].contains(sealed[0]["recipient_fingerprint"].as_str().unwrap()), "{}", sealings[0]);
        let mail: String = sqlx::query_scalar("SELECT text_body FROM mail_outbox WHERE idempotency_key = $1")
            .bind(format!("ticket:{ticket}:sealed"))
            .fetch_one(&app.db)
            .await
            .unwrap();
        assert!(mail.contains(sealed[1]["recipient_fingerprint"].as_str().unwrap()) && mail.contains("keys@certdrop.test"), "{mail}");

        // A job for a pair with an unconfirmed node (however it got queued) seals nothing.
        let bob = app.api_user("bob@example.com", Role::Customer).await;
        bob.create_app("blog", &["blog.example.com"]).await;
        let leaf = pki::leaf(&["blog.example.com"], &pki::root("Custody Root"), Alg::P256);
        let blog_cert = bob.upload_id("blog", &leaf, b"").await;
        let blog_ticket = bob.open_ticket("blog", "provision", Some(blog_cert)).await;
        let (ops, _) = app.crew().await;
        pair_with_own_nodes(&app, ops, "half").await;
        sqlx::query("UPDATE tickets SET state = 'approved' WHERE id = $1").bind(blog_ticket).execute(&app.db).await.unwrap();
        sqlx::query("UPDATE edge_pairs SET app_id = (SELECT id FROM apps WHERE name = 'blog') WHERE name = 'half'").execute(&app.db).await.unwrap();
        sqlx::query("INSERT INTO deploy_jobs (ticket_id, pair_id, target_certificate_id, state, created_at, updated_at) \
                     VALUES ($1, (SELECT id FROM edge_pairs WHERE name = 'half'), $2, 'pending', 0, 0)")
            .bind(blog_ticket).bind(blog_cert).execute(&app.db).await.unwrap();
        app.state.deploy_wake.notify_one();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let failed = loop {
            let t = bob.get(&format!("/api/v1/tickets/{blog_ticket}")).await.json;
            if t["state"] == "failed" {
                break t;
            }
            assert!(std::time::Instant::now() < deadline, "the job never ended: {t}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        assert!(failed["reason"].as_str().unwrap().contains("confirmed"), "{failed}");
        assert_eq!(app.count(&format!("SELECT COUNT(*) FROM node_keys WHERE certificate_id = {blog_cert}")).await, 0);
        // Each node says how far it got; the customer is told what it means for the site, in
        // plain words, and staff get the technical reason.
        for node in failed["deployment"]["nodes"].as_array().unwrap() {
            assert_eq!(node["state"], "not_applied", "{failed}");
        }
        let to_customer: String = sqlx::query_scalar("SELECT text_body FROM mail_outbox WHERE idempotency_key = $1")
            .bind(format!("ticket:{blog_ticket}:failed")).fetch_one(&app.db).await.unwrap();
        assert!(to_customer.contains("Nothing is charged") && !to_customer.contains("confirmed"), "{to_customer}");
        let to_staff: Vec<String> = sqlx::query_scalar("SELECT text_body FROM mail_outbox WHERE idempotency_key LIKE $1")
            .bind(format!("ticket:{blog_ticket}:failed:%")).fetch_all(&app.db).await.unwrap();
        assert!(!to_staff.is_empty() && to_staff.iter().all(|m| m.contains("confirmed")), "{to_staff:?}");
    }
}

db_test! {
    async fn a_revoked_node_gets_nothing_more_and_its_apps_customers_are_told(app) {
        let (ann, cert, ticket) = customer_ticket(&app).await;
        let sam = app.staff_with_idle_pair("sam@example.com").await;
        assert_eq!(sam.post(&format!("/api/v1/tickets/{ticket}/approve"), json!({})).await.status, StatusCode::OK);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while app.count("SELECT COUNT(*) FROM node_keys").await < 2 {
            assert!(std::time::Instant::now() < deadline, "the key was never sealed");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let (_, keys) = app.crew().await;
        let pairs = sam.get("/api/v1/edge-pairs").await.json;
        let node = pairs["items"][0]["nodes"][0].clone();
        let id = node["id"].as_i64().unwrap();

        // Only an admin revokes.
        assert_eq!(sam.post(&format!("/api/v1/edge-nodes/{id}/revoke"), json!({})).await.status, StatusCode::FORBIDDEN);
        let resp = keys.post(&format!("/api/v1/edge-nodes/{id}/revoke"), json!({})).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
        assert_eq!(resp.json["affected_apps"], json!(["shop"]));
        assert_eq!(resp.json["recipient_fingerprint"], node["recipient_fingerprint"]);
        assert_eq!(app.count(&format!("SELECT COUNT(*) FROM node_keys WHERE node_id = {id}")).await, 0, "its sealed copies are gone");
        assert_eq!(app.count(&format!("SELECT COUNT(*) FROM edge_nodes WHERE id = {id} AND node_token_hash IS NULL AND state = 'revoked'")).await, 1);
        let again = keys.post(&format!("/api/v1/edge-nodes/{id}/revoke"), json!({})).await;
        assert_eq!(again.code(), "node_revoked");

        // The customer's certificate no longer lists it; the customer is told to replace it.
        let sealed = ann.get(&format!("/api/v1/certs/{cert}")).await.json["sealed_to"].clone();
        assert_eq!(sealed.as_array().unwrap().len(), 1, "{sealed}");
        let mail: String = sqlx::query_scalar("SELECT text_body FROM mail_outbox WHERE idempotency_key LIKE $1")
            .bind(format!("node:{id}:revoked:%"))
            .fetch_one(&app.db)
            .await
            .unwrap();
        assert!(mail.contains("replace the certificate") && mail.contains(node["recipient_fingerprint"].as_str().unwrap()), "{mail}");

        // The pair is no longer free, and no key goes to it any more.
        let listed = &sam.get("/api/v1/edge-pairs").await.json["items"][0];
        assert_eq!(listed["nodes"][0]["state"], "revoked");
        assert_eq!(listed["free"], false);
        let revoked: String = sqlx::query_scalar("SELECT detail FROM audit_events WHERE action = 'edge_node.revoked' AND outcome = 'ok'").fetch_one(&app.db).await.unwrap();
        assert!(revoked.contains(node["recipient_fingerprint"].as_str().unwrap()) && revoked.contains("shop"), "{revoked}");
        let shown = sam.get(&format!("/api/v1/edge-nodes/{id}")).await.json;
        assert_eq!(shown["revocations"][0]["affected_apps"], json!(["shop"]));
        let page = app.signed_in_browser("sid@example.com", Role::Staff).await.get("/staff/edge-pairs").await;
        assert!(page.body.contains("Revoked nodes") && page.body.contains("href=\"/apps/shop\""), "the page lists the apps whose keys it held");

        // A replacement machine starts inert, and another admin confirms it.
        let token = sam.post(&format!("/api/v1/edge-nodes/{id}/enroll-token"), json!({})).await;
        assert_eq!(token.status, StatusCode::CREATED, "{}", token.body);
        let identity = age::x25519::Identity::generate();
        let enrolled = app.api_anonymous()
            .post("/api/v1/edge/enroll", json!({"enroll_token": token.json["enroll_token"], "recipient": identity.to_public().to_string(), "address": "192.0.2.1:443"}))
            .await;
        assert_eq!(enrolled.json["state"], "enrolled");
        let resp = sam.post(&format!("/api/v1/edge-nodes/{id}/confirm"), json!({"recipient_fingerprint": fingerprint(&identity)})).await;
        assert_eq!(resp.status, StatusCode::FORBIDDEN, "staff issued the token and cannot confirm");
        confirm_node(keys, id, &fingerprint(&identity)).await;
    }
}

db_test! {
    async fn totp_codes_are_checked_once_and_recovery_codes_work_once(app) {
        let pw = app.user_without_second_factor("sam@example.com", Role::Staff).await;
        let anon = app.api_anonymous();
        let token = |otp: Option<String>| json!({"email": "sam@example.com", "password": pw, "otp": otp});
        // Not enrolled yet: a staff account cannot get a token at all.
        let resp = anon.post("/api/v1/tokens", token(None)).await;
        assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
        assert_eq!(resp.code(), "otp_required");
        assert!(resp.body.contains("enrolment link"), "{}", resp.body);

        let id: i64 = sqlx::query_scalar("SELECT id FROM users WHERE email = 'sam@example.com'").fetch_one(&app.db).await.unwrap();
        let (secret, codes) = second_factor::enrol_now(&app.db, &app.vault, id).await.unwrap();
        assert_eq!(codes.len(), 10);
        let authenticator = crate::common::Authenticator::new(secret);
        assert_eq!(anon.post("/api/v1/tokens", token(None)).await.code(), "otp_required");
        // A code that cannot be the current one: the current code with its last digit changed.
        let current = authenticator.code().await;
        let last = current.chars().last().unwrap().to_digit(10).unwrap();
        let wrong_code = format!("{}{}", &current[..5], (last + 1) % 10);
        let wrong = anon.post("/api/v1/tokens", token(Some(wrong_code))).await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        assert_eq!(wrong.code(), "otp_invalid");
        let code = authenticator.code().await;
        assert_eq!(anon.post("/api/v1/tokens", token(Some(code.clone()))).await.status, StatusCode::CREATED);
        let replay = anon.post("/api/v1/tokens", token(Some(code))).await;
        assert_eq!(replay.status, StatusCode::UNAUTHORIZED, "a code is accepted once");
        assert_eq!(replay.code(), "otp_invalid");
        // A recovery code works once, in any case and spacing. (Another account: each account
        // has five password attempts in a burst, and sam has used them.)
        let sue_pw = app.user_without_second_factor("sue@example.com", Role::Staff).await;
        let sue_id: i64 = sqlx::query_scalar("SELECT id FROM users WHERE email = 'sue@example.com'").fetch_one(&app.db).await.unwrap();
        let (_, codes) = second_factor::enrol_now(&app.db, &app.vault, sue_id).await.unwrap();
        let recovery = codes[0].to_uppercase().replace('-', " ");
        let sue = |otp: &str| json!({"email": "sue@example.com", "password": sue_pw, "otp": otp});
        assert_eq!(anon.post("/api/v1/tokens", sue(&recovery)).await.status, StatusCode::CREATED);
        assert_eq!(anon.post("/api/v1/tokens", sue(&recovery)).await.code(), "otp_invalid");
        assert_eq!(app.count(&format!("SELECT COUNT(*) FROM recovery_codes WHERE user_id = {sue_id} AND used_at IS NULL")).await, 9);
        assert_eq!(app.count("SELECT COUNT(*) FROM audit_events WHERE action = 'user.recovery_code_used'").await, 1);
        assert!(app.count("SELECT COUNT(*) FROM audit_events WHERE action = 'user.second_factor' AND outcome = 'refused'").await >= 3);
        // The secret rests sealed, never in the clear.
        let sealed: String = sqlx::query_scalar("SELECT totp_sealed FROM users WHERE id = $1").bind(id).fetch_one(&app.db).await.unwrap();
        assert!(sealed.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"));
        assert!(!sealed.contains(authenticator_secret(&sealed, &app).as_str()));
    }
}

/// The base32 secret behind a sealed TOTP column, opened with the test's own vault handle.
fn authenticator_secret(sealed: &str, app: &TestApp) -> String {
    app.vault.open(sealed).unwrap().pem().to_string()
}

db_test! {
    async fn staff_enrol_a_second_factor_at_first_sign_in_and_sessions_without_one_are_not_staff(app) {
        let pw = app.user_without_second_factor("sam@example.com", Role::Staff).await;
        // Their first authenticator comes through a one-time link (as mailed when an account is
        // raised, or printed by `certdrop users:role`), opened in the browser that signs in.
        let sam_id: i64 = sqlx::query_scalar("SELECT id FROM users WHERE email = 'sam@example.com'").fetch_one(&app.db).await.unwrap();
        let mut conn = app.db.acquire().await.unwrap();
        let link = second_factor::issue_enrolment_link(&mut conn, &app.state.base_url, sam_id).await.unwrap().unwrap();
        drop(conn);
        let browser = app.browser();
        let path = &link[link.find("/account/enrol/").unwrap()..];
        assert_eq!(browser.get(path).await.location(), "/login");
        let resp = browser.log_in("sam@example.com", &pw).await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER);
        assert!(resp.location().starts_with("/login/second-factor"), "{}", resp.location());
        assert_eq!(browser.get("/staff/tickets").await.location(), "/login", "not signed in before the second factor");
        let page = browser.get(resp.location()).await;
        assert!(page.body.contains("<svg") && page.body.contains("id=\"totp-secret\""), "a QR code and the key");
        let secret = page.body.split("id=\"totp-secret\">").nth(1).unwrap().split('<').next().unwrap().to_string();
        let authenticator = crate::common::Authenticator::from_text(&secret);
        let wrong = browser.submit("/login/second-factor", "/login/second-factor", &[("otp", "12345"), ("secret", &secret)]).await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        assert!(wrong.body.contains("otp-error"), "the error is next to the code field");
        assert!(wrong.body.contains(&secret), "the page shown again keeps the secret the app scanned");
        assert_eq!(app.count("SELECT COUNT(*) FROM users WHERE totp_sealed IS NOT NULL").await, 0, "nothing is stored before a code confirms it");
        let code = authenticator.code().await;
        let done = browser.submit("/login/second-factor", "/login/second-factor", &[("otp", &code), ("secret", &secret)]).await;
        assert_eq!(done.status, StatusCode::OK, "{}", done.body);
        assert_eq!(done.body.matches("<li>").count(), 10, "ten recovery codes, shown once");
        assert_eq!(browser.get("/staff/tickets").await.status, StatusCode::OK);
        assert_eq!(app.count("SELECT COUNT(*) FROM users WHERE totp_enabled_at IS NOT NULL").await, 1);

        // A customer's session that is promoted to staff is not a staff session until it
        // proves a second factor; a customer's token is not a staff token either.
        let cid = app.signed_in_browser("cid@example.com", Role::Customer).await;
        let cid_api = {
            let pw = app.user("cat@example.com", Role::Customer).await;
            let t = app.api_anonymous().post("/api/v1/tokens", json!({"email": "cat@example.com", "password": pw})).await;
            let mut api = app.api_anonymous();
            api.token = Some(t.json["token"].as_str().unwrap().to_string());
            api
        };
        sqlx::query("UPDATE users SET role = 'staff' WHERE email IN ('cid@example.com', 'cat@example.com')").execute(&app.db).await.unwrap();
        assert_eq!(cid.get("/staff/tickets").await.location(), "/login");
        let resp = cid_api.get("/api/v1/tickets").await;
        assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
        assert_eq!(resp.code(), "otp_required");
    }
}

db_test! {
    async fn a_customer_may_turn_on_a_second_factor(app) {
        let pw = app.user("ann@example.com", Role::Customer).await;
        let browser = app.browser();
        app.log_in(&browser, "ann@example.com", &pw).await;
        let page = browser.get("/account/security").await;
        assert!(page.body.contains("Turn on") && page.body.contains("<svg"));
        let secret = page.body.split("id=\"totp-secret\">").nth(1).unwrap().split('<').next().unwrap().to_string();
        let authenticator = crate::common::Authenticator::from_text(&secret);
        let on = browser.submit("/account/security", "/account/security/enrol", &[("otp", &authenticator.code().await), ("secret", &secret)]).await;
        assert_eq!(on.status, StatusCode::OK, "{}", on.body);
        assert!(on.body.contains("recovery-codes"));
        // From now on the password alone is not enough, in the browser or for a token.
        let again = app.browser();
        let resp = again.log_in("ann@example.com", &pw).await;
        assert!(resp.location().starts_with("/login/second-factor"));
        let resp = app.api_anonymous().post("/api/v1/tokens", json!({"email": "ann@example.com", "password": pw})).await;
        assert_eq!(resp.code(), "otp_required");
        let resp = app.api_anonymous().post("/api/v1/tokens", json!({"email": "ann@example.com", "password": pw, "otp": authenticator.code().await})).await;
        assert_eq!(resp.status, StatusCode::CREATED);
    }
}

db_test! {
    async fn approving_needs_a_second_factor_from_the_last_ten_minutes(app) {
        let (ann, _cert, ticket) = customer_ticket(&app).await;
        let sam = app.staff_with_idle_pair("sam@example.com").await;
        // Sam's token proved a second factor an hour ago.
        sqlx::query("UPDATE api_tokens SET second_factor_at = second_factor_at - 3600").execute(&app.db).await.unwrap();
        let approve = format!("/api/v1/tickets/{ticket}/approve");
        let resp = sam.post(&approve, json!({})).await;
        assert_eq!(resp.status, StatusCode::UNAUTHORIZED, "{}", resp.body);
        assert_eq!(resp.code(), "otp_required");
        assert_eq!(ann.get(&format!("/api/v1/tickets/{ticket}")).await.json["state"], "open");
        let resp = sam.post(&approve, json!({"otp": app.otp("sam@example.com").await})).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
        let refused = refusals(&app, "ticket.approved").await;
        assert_eq!(refused, [r#"{"code":"otp_required"}"#]);
        // The code refreshed the token: the next action within ten minutes needs none.
        let fresh: i64 = sqlx::query_scalar("SELECT MAX(second_factor_at) FROM api_tokens").fetch_one(&app.db).await.unwrap();
        assert!(certdrop::db::now() - fresh < 60);
    }
}

/// The fleet key's attestation of `recipient` for `slot` of `pair`, valid for `seconds` (from
/// now; negative: expired already).
pub fn attest(private: &str, recipient: &str, pair: &str, slot: i64, seconds: i64) -> String {
    let claim = certdrop::edge::fleet::Claim {
        recipient: recipient.to_string(),
        pair: pair.to_string(),
        slot,
        expires_at: certdrop::db::now() + seconds,
    };
    certdrop::edge::fleet::attest(private, &claim).unwrap()
}

/// Enrolls a node with `token`, `recipient` and maybe an attestation.
pub async fn enroll(
    app: &TestApp,
    token: &Value,
    recipient: &str,
    attestation: Option<String>,
) -> crate::common::Resp {
    app.api_anonymous()
        .post(
            "/api/v1/edge/enroll",
            json!({"enroll_token": token, "recipient": recipient, "address": "192.0.2.1:443", "attestation": attestation}),
        )
        .await
}

async fn with_a_fleet_key_only_attested_nodes_enroll(backend: Backend) {
    let (private, public) = certdrop::edge::fleet::generate().unwrap();
    let Some(app) = TestApp::spawn_with(backend, move |c| c.fleet_public_key = Some(public)).await
    else {
        return;
    };
    let (ops, keys) = app.crew().await;
    let pair = ops
        .post("/api/v1/edge-pairs", json!({"name": "fleet-a"}))
        .await;
    let tokens = pair.json["enroll_tokens"].as_array().unwrap().clone();
    let machine = age::x25519::Identity::generate().to_public().to_string();
    let resp = enroll(&app, &tokens[0], &machine, None).await;
    assert_eq!(resp.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(resp.code(), "attestation_required");
    let stranger = age::x25519::Identity::generate().to_public().to_string();
    let other = attest(&private, &stranger, "fleet-a", 1, 3600);
    let resp = enroll(&app, &tokens[0], &machine, Some(other)).await;
    assert_eq!(
        resp.code(),
        "attestation_invalid",
        "an attestation of another machine"
    );
    // The token was never spent by the refusals; an attested machine is confirmed at once.
    for (slot, token) in (1..).zip(&tokens) {
        let machine = age::x25519::Identity::generate().to_public().to_string();
        let attestation = attest(&private, &machine, "fleet-a", slot, 3600);
        let resp = enroll(&app, token, &machine, Some(attestation)).await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
        assert_eq!(resp.json["state"], "confirmed");
    }
    let listed = &ops.get("/api/v1/edge-pairs").await.json["items"][0];
    assert_eq!(listed["free"], true);
    assert_eq!(listed["nodes"][0]["confirmed_by"], "the fleet key");
    let id = listed["nodes"][0]["id"].as_i64().unwrap();
    let resp = keys
        .post(
            &format!("/api/v1/edge-nodes/{id}/confirm"),
            json!({"recipient_fingerprint": "SHA256:x"}),
        )
        .await;
    assert_eq!(
        resp.code(),
        "fleet_attestation_required",
        "no hand confirmation beside the fleet key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_fleet_key_only_attested_nodes_enroll_on_sqlite() {
    with_a_fleet_key_only_attested_nodes_enroll(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_fleet_key_only_attested_nodes_enroll_on_postgres() {
    with_a_fleet_key_only_attested_nodes_enroll(Backend::Postgres).await;
}

/// The admin who confirmed the pair's nodes approves the first deployment to it: refused with
/// separation of duties on (the default), allowed with it off, which the admin pages warn of.
async fn separation_of_duties(backend: Backend, on: bool) {
    let Some(app) = TestApp::spawn_with(backend, move |c| c.separation_of_duties = on).await else {
        return;
    };
    let (_, _, ticket) = customer_ticket(&app).await;
    app.idle_pair("pair-a").await;
    let (_, keys) = app.crew().await;
    let resp = keys
        .post(&format!("/api/v1/tickets/{ticket}/approve"), json!({}))
        .await;
    let warning = "Separation of duties is off";
    let page = app
        .signed_in_browser("ada@example.com", Role::Admin)
        .await
        .get("/admin/users")
        .await;
    if on {
        assert_eq!(resp.status, StatusCode::CONFLICT, "{}", resp.body);
        assert_eq!(resp.code(), "separation_of_duties");
        assert!(!page.body.contains(warning));
    } else {
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
        assert!(page.body.contains(warning));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_confirming_admin_cannot_approve_on_sqlite() {
    separation_of_duties(Backend::Sqlite, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_confirming_admin_cannot_approve_on_postgres() {
    separation_of_duties(Backend::Postgres, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_person_install_may_turn_separation_of_duties_off() {
    separation_of_duties(Backend::Sqlite, false).await;
}

db_test! {
    async fn an_admin_confirms_and_revokes_nodes_on_the_edge_pairs_page(app) {
        let (ops, _) = app.crew().await;
        let nodes = pair_with_own_nodes(&app, ops, "edge-p").await;
        let ada = app.signed_in_browser("ada@example.com", Role::Admin).await;
        let page = ada.get("/staff/edge-pairs").await;
        let printed = fingerprint(&nodes[0].2);
        assert!(page.body.contains(&printed) && page.body.contains("Confirm node"), "the page shows what to compare");
        let action = format!("/staff/edge-nodes/{}/confirm", nodes[0].0);
        let wrong = ada.submit("/staff/edge-pairs", &action, &[("recipient_fingerprint", &fingerprint(&nodes[1].2))]).await;
        assert_eq!(wrong.status, StatusCode::CONFLICT);
        assert!(wrong.body.contains("fingerprint_mismatch") && wrong.body.contains("revoke"), "{}", wrong.body);
        let done = ada.submit("/staff/edge-pairs", &action, &[("recipient_fingerprint", printed.trim_start_matches("SHA256:"))]).await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
        let page = ada.get("/staff/edge-pairs").await;
        assert!(page.body.contains("confirmed by ada@example.com"), "{}", page.body);
        let revoke = format!("/staff/edge-nodes/{}/revoke", nodes[0].0);
        let done = ada.submit("/staff/edge-pairs", &revoke, &[]).await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
        let page = ada.get("/staff/edge-pairs").await;
        assert!(page.body.contains("edge-p-1 revoked. It held no customer&#x27;s key.") || page.body.contains("edge-p-1 revoked. It held no customer"), "{}", page.body);
        assert!(page.body.contains("Revoked nodes"));
        // A customer never reaches these actions.
        let ann = app.signed_in_browser("ann@example.com", Role::Customer).await;
        let refused = ann.submit("/apps", &format!("/staff/edge-nodes/{}/revoke", nodes[1].0), &[]).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert_eq!(app.count("SELECT COUNT(*) FROM edge_nodes WHERE state = 'revoked'").await, 1);
    }
}
