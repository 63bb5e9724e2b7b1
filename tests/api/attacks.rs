//! What an attacker tried against custody and accounts, each reproduced and now refused: a
//! replayed or copied fleet attestation, a revoked identity confirmed again, a self-declared
//! address published, sealed copies outliving their pair, a demoted admin's vote, wrong codes
//! from many addresses, tokens without a code or an end, a raised account enrolled by whoever
//! knows its password, everyone behind one load balancer, a CSRF token from before sign-in,
//! unbounded input before sign-in, and cloud metadata addresses.

use std::time::{Duration, Instant};

use certdrop::accounts::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    common::{Api, Backend, TestApp, confirm_node},
    custody::{attest, enroll},
    db_test,
    pki::{self, Alg},
};

fn recipient() -> (age::x25519::Identity, String) {
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    (identity, recipient)
}

fn fingerprint(recipient: &str) -> String {
    certdrop::edge::recipient_fingerprint(recipient)
}

/// A new pair's two enrollment tokens.
async fn new_pair(creator: &Api, name: &str) -> Vec<Value> {
    let pair = creator
        .post("/api/v1/edge-pairs", json!({"name": name}))
        .await;
    assert_eq!(pair.status, StatusCode::CREATED, "{}", pair.body);
    pair.json["enroll_tokens"].as_array().unwrap().clone()
}

async fn node_ids(api: &Api, pair: &str) -> Vec<i64> {
    let pairs = api.get("/api/v1/edge-pairs").await.json;
    pairs["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pair)
        .unwrap()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_i64().unwrap())
        .collect()
}

async fn new_token(staff: &Api, node: i64) -> Value {
    let resp = staff
        .post(
            &format!("/api/v1/edge-nodes/{node}/enroll-token"),
            json!({}),
        )
        .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
    resp.json["enroll_token"].clone()
}

/// Item 1: with a fleet key, a copy of an attested machine's identity and attestation gets
/// nothing: not its slot again after a revocation, not another slot or pair, not after expiry.
async fn a_copied_attested_identity_is_refused_everywhere(backend: Backend) {
    let (private, public) = certdrop::edge::fleet::generate().unwrap();
    let Some(app) = TestApp::spawn_with(backend, move |c| c.fleet_public_key = Some(public)).await
    else {
        return;
    };
    let (ops, keys) = app.crew().await;
    let tokens = new_pair(ops, "fleet-a").await;
    let (_, one) = recipient();
    let (_, two) = recipient();
    let one_attestation = attest(&private, &one, "fleet-a", 1, 3600);
    let resp = enroll(&app, &tokens[0], &one, Some(one_attestation.clone())).await;
    assert_eq!(resp.json["state"], "confirmed", "{}", resp.body);
    let two_attestation = attest(&private, &two, "fleet-a", 2, 3600);
    // An attestation names its slot: slot 1's does not admit the machine to slot 2.
    let resp = enroll(
        &app,
        &tokens[1],
        &two,
        Some(attest(&private, &two, "fleet-a", 1, 3600)),
    )
    .await;
    assert_eq!(
        (resp.status, resp.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "attestation_other_slot"),
        "{}",
        resp.body
    );
    // Nor does an expired one, or a bare signature of the old format.
    let resp = enroll(
        &app,
        &tokens[1],
        &two,
        Some(attest(&private, &two, "fleet-a", 2, -1)),
    )
    .await;
    assert_eq!(resp.code(), "attestation_expired", "{}", resp.body);
    let resp = enroll(&app, &tokens[1], &two, Some("bm90IGEgc2lnbmF0dXJl".into())).await;
    assert_eq!(resp.code(), "attestation_invalid", "{}", resp.body);
    let resp = enroll(&app, &tokens[1], &two, Some(two_attestation.clone())).await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
    let ids = node_ids(ops, "fleet-a").await;
    let shown = ops
        .get(&format!("/api/v1/edge-nodes/{}", ids[0]))
        .await
        .json;
    assert_eq!(shown["confirmed_by"], "the fleet key");
    assert_eq!(
        shown["attestation"]["pair"], "fleet-a",
        "the node says what vouched for it: {shown}"
    );
    assert_eq!(shown["attestation"]["slot"], 1);
    assert!(shown["attestation"]["expires_at"].is_string());

    // (a) An admin revokes node 1; staff issue a new token for its slot; the copied identity
    // comes back, with its old attestation or a fresh one: refused, forever.
    let resp = keys
        .post(&format!("/api/v1/edge-nodes/{}/revoke", ids[0]), json!({}))
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    let token = new_token(ops, ids[0]).await;
    for attestation in [
        one_attestation.clone(),
        attest(&private, &one, "fleet-a", 1, 3600),
    ] {
        let resp = enroll(&app, &token, &one, Some(attestation)).await;
        assert_eq!(
            (resp.status, resp.code()),
            (StatusCode::CONFLICT, "recipient_revoked"),
            "{}",
            resp.body
        );
    }
    // Spelled in capitals, it is the same identity.
    let resp = enroll(
        &app,
        &token,
        &one.to_uppercase(),
        Some(attest(&private, &one, "fleet-a", 1, 3600)),
    )
    .await;
    assert_eq!(resp.code(), "recipient_revoked", "{}", resp.body);

    // (b) Staff make a new pair and enroll node 2's identity (copied to fresh data dirs) in it,
    // with its own attestation or a fresh one for the new slot: the identity is in use.
    let tokens_b = new_pair(ops, "fleet-b").await;
    for attestation in [
        two_attestation.clone(),
        attest(&private, &two, "fleet-b", 1, 3600),
    ] {
        let resp = enroll(&app, &tokens_b[0], &two, Some(attestation)).await;
        assert_eq!(
            (resp.status, resp.code()),
            (StatusCode::CONFLICT, "recipient_in_use"),
            "{}",
            resp.body
        );
    }
    // One new machine in both slots of a pair: the second slot is refused.
    let (_, three) = recipient();
    let resp = enroll(
        &app,
        &tokens_b[0],
        &three,
        Some(attest(&private, &three, "fleet-b", 1, 3600)),
    )
    .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
    let resp = enroll(
        &app,
        &tokens_b[1],
        &three,
        Some(attest(&private, &three, "fleet-b", 2, 3600)),
    )
    .await;
    assert_eq!(resp.code(), "recipient_in_use", "{}", resp.body);
    // A fresh machine with slot 1's attestation of another pair is refused for its slot.
    let (_, four) = recipient();
    let resp = enroll(
        &app,
        &tokens_b[1],
        &four,
        Some(attest(&private, &four, "fleet-a", 2, 3600)),
    )
    .await;
    assert_eq!(resp.code(), "attestation_other_slot", "{}", resp.body);
    let listed = &ops.get("/api/v1/edge-pairs").await.json["items"];
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["free"] == false),
        "no pair is free: {listed}"
    );
    // Every refusal is on the trail with the identity it tried.
    let refused: Vec<String> = sqlx::query_scalar(
        "SELECT detail FROM audit_events WHERE action = 'edge_node.enrolled' AND outcome = 'refused' ORDER BY id",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert!(
        refused
            .iter()
            .any(|d| d.contains("recipient_revoked") && d.contains(&fingerprint(&one))),
        "{refused:?}"
    );
    assert!(
        refused.iter().any(|d| d.contains("recipient_in_use")),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_attested_identity_is_refused_everywhere_on_sqlite() {
    a_copied_attested_identity_is_refused_everywhere(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_attested_identity_is_refused_everywhere_on_postgres() {
    a_copied_attested_identity_is_refused_everywhere(Backend::Postgres).await;
}

db_test! {
    /// Items 2 and 3: without a fleet key, a revoked identity is never confirmed again, and
    /// only a confirmed node's confirmed address is ever published.
    async fn a_revoked_identity_is_never_confirmed_again_and_only_confirmed_addresses_are_published(app) {
        let (ops, keys) = app.crew().await;
        let tokens = new_pair(ops, "pair-a").await;
        let (_, one) = recipient();
        let (_, two) = recipient();
        for (token, r, address) in [(&tokens[0], &one, "192.0.2.1:443"), (&tokens[1], &two, "192.0.2.2:443")] {
            let resp = app.api_anonymous()
                .post("/api/v1/edge/enroll", json!({"enroll_token": token, "recipient": r, "address": address}))
                .await;
            assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
        }
        let ids = node_ids(ops, "pair-a").await;
        // The address is part of what is confirmed: a changed one is refused.
        let resp = keys
            .post(&format!("/api/v1/edge-nodes/{}/confirm", ids[0]), json!({"recipient_fingerprint": fingerprint(&one), "address": "192.0.2.9:443"}))
            .await;
        assert_eq!((resp.status, resp.code()), (StatusCode::CONFLICT, "address_changed"), "{}", resp.body);
        confirm_node(keys, ids[0], &fingerprint(&one)).await;
        confirm_node(keys, ids[1], &fingerprint(&two)).await;
        let shown = ops.get(&format!("/api/v1/edge-nodes/{}", ids[0])).await.json;
        assert_eq!(shown["confirmed_address"], "192.0.2.1:443");

        // The pair is dedicated to an app (as an approval does): its DNS target is the
        // confirmed addresses.
        let ann = app.api_user("ann@example.com", Role::Customer).await;
        ann.create_app("shop", &["www.example.com"]).await;
        sqlx::query("UPDATE edge_pairs SET app_id = (SELECT id FROM apps WHERE name = 'shop') WHERE name = 'pair-a'")
            .execute(&app.db).await.unwrap();
        let target = |app_json: Value| app_json["dns_target"]["addresses"].clone();
        assert_eq!(target(ann.get("/api/v1/apps/shop").await.json), json!(["192.0.2.1", "192.0.2.2"]));

        // Revoked, then a new token: the same identity is refused, with or without confirming.
        let resp = keys.post(&format!("/api/v1/edge-nodes/{}/revoke", ids[0]), json!({})).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
        let token = new_token(ops, ids[0]).await;
        let resp = app.api_anonymous()
            .post("/api/v1/edge/enroll", json!({"enroll_token": token, "recipient": one, "address": "192.0.2.1:443"}))
            .await;
        assert_eq!((resp.status, resp.code()), (StatusCode::CONFLICT, "recipient_revoked"), "{}", resp.body);
        // However it came to be enrolled (say, before this rule), an admin cannot confirm it.
        sqlx::query("UPDATE edge_nodes SET state = 'enrolled', recipient = $1, address = '192.0.2.1:443', node_token_hash = 'x', enroll_token_hash = NULL WHERE id = $2")
            .bind(&one).bind(ids[0]).execute(&app.db).await.unwrap();
        let other_admin = app.api_user("ada@example.com", Role::Admin).await;
        let resp = other_admin
            .post(&format!("/api/v1/edge-nodes/{}/confirm", ids[0]), json!({"recipient_fingerprint": fingerprint(&one)}))
            .await;
        assert_eq!((resp.status, resp.code()), (StatusCode::CONFLICT, "recipient_revoked"), "{}", resp.body);
        sqlx::query("UPDATE edge_nodes SET state = 'revoked', recipient = NULL, node_token_hash = NULL WHERE id = $1")
            .bind(ids[0]).execute(&app.db).await.unwrap();

        // A new machine enrolls with an address of its own choosing: not published until an
        // admin confirms it, and then only that address.
        let token = new_token(ops, ids[0]).await;
        let (_, fresh) = recipient();
        let resp = app.api_anonymous()
            .post("/api/v1/edge/enroll", json!({"enroll_token": token, "recipient": fresh, "address": "127.0.0.99:443"}))
            .await;
        assert_eq!(resp.json["state"], "enrolled", "{}", resp.body);
        assert_eq!(target(ann.get("/api/v1/apps/shop").await.json), json!(["192.0.2.2"]), "the unconfirmed address is not published");
        let listed = ops.get("/api/v1/edge-pairs").await.json;
        let node = &listed["items"][0]["nodes"][0];
        assert_eq!(node["address"], "127.0.0.99:443");
        assert!(node["confirmed_address"].is_null(), "{node}");
        confirm_node(&other_admin, ids[0], &fingerprint(&fresh)).await;
        assert_eq!(target(ann.get("/api/v1/apps/shop").await.json), json!(["127.0.0.99", "192.0.2.2"]));
        // A later change of address (however it happens) needs a new confirmation.
        sqlx::query("UPDATE edge_nodes SET address = '127.0.0.98:443' WHERE id = $1").bind(ids[0]).execute(&app.db).await.unwrap();
        assert_eq!(target(ann.get("/api/v1/apps/shop").await.json), json!(["192.0.2.2"]));
    }
}

db_test! {
    /// Item 5: a demoted admin's pending request for a raise is nobody's vote, and a request
    /// waits 24 hours at most.
    async fn a_demoted_admins_pending_role_request_does_not_count(app) {
        let a1 = app.signed_in_browser("a1@example.com", Role::Admin).await;
        let a2 = app.signed_in_browser("a2@example.com", Role::Admin).await;
        app.user("c3@example.com", Role::Customer).await;
        app.user("c4@example.com", Role::Customer).await;
        let (a2_id, c3, c4) = (app.user_id("a2@example.com").await, app.user_id("c3@example.com").await, app.user_id("c4@example.com").await);
        // a2 asks for c3 to be admin; a1 demotes a2; a1's approval is then only a new request.
        let resp = a2.submit("/admin/users", &format!("/admin/users/{c3}/role"), &[("role", "admin")]).await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER);
        let resp = a1.submit("/admin/users", &format!("/admin/users/{a2_id}/role"), &[("role", "customer")]).await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER);
        assert_eq!(role_of(&app, "a2@example.com").await, "customer");
        let resp = a1.submit("/admin/users", &format!("/admin/users/{c3}/role"), &[("role", "admin")]).await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER);
        assert_eq!(role_of(&app, "c3@example.com").await, "customer", "a demoted admin's request is void");
        let requested_by: i64 = sqlx::query_scalar("SELECT role_requested_by FROM users WHERE id = $1").bind(c3).fetch_one(&app.db).await.unwrap();
        assert_eq!(requested_by, app.user_id("a1@example.com").await, "a1's request stands, waiting for another admin");
        let page = a1.get("/admin/users").await;
        assert!(!page.body.contains("a2@example.com asked"), "the void request is not shown as one");

        // A request older than 24 hours does not count either.
        let a5 = app.signed_in_browser("a5@example.com", Role::Admin).await;
        let resp = a5.submit("/admin/users", &format!("/admin/users/{c4}/role"), &[("role", "staff")]).await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER);
        sqlx::query("UPDATE users SET role_requested_at = role_requested_at - 90000 WHERE id = $1").bind(c4).execute(&app.db).await.unwrap();
        let resp = a1.submit("/admin/users", &format!("/admin/users/{c4}/role"), &[("role", "staff")]).await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER);
        assert_eq!(role_of(&app, "c4@example.com").await, "customer", "an expired request is void");
        // A fresh one from another admin is applied.
        let resp = a5.submit("/admin/users", &format!("/admin/users/{c4}/role"), &[("role", "staff")]).await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER);
        assert_eq!(role_of(&app, "c4@example.com").await, "staff");
    }
}

async fn role_of(app: &TestApp, email: &str) -> String {
    sqlx::query_scalar("SELECT role FROM users WHERE email = $1")
        .bind(email)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

db_test! {
    /// Item 4: releasing a pair deletes every copy sealed to its nodes, and the nodes drop what
    /// they held; a revoked node that still reaches the control plane wipes itself.
    async fn sealed_copies_end_with_the_pair_and_a_revoked_node_wipes_itself(app) {
        let backend = crate::edge_support::echo_backend().await;
        let root = pki::root("Release Root");
        let leaf = pki::leaf(&["www.example.com"], &root, Alg::P256);
        let (nodes, ann) = crate::edge::serve_shop(&app, backend, &[], &leaf, b"").await;
        let cert = ann.get("/api/v1/apps/shop/certs").await.json["items"][0]["id"].as_i64().unwrap();
        assert_eq!(app.count("SELECT COUNT(*) FROM node_keys").await, 2);
        let staff = app.api_user("sid@example.com", Role::Staff).await;

        let remove = ann.open_ticket("shop", "remove", None).await;
        let resp = staff.post(&format!("/api/v1/tickets/{remove}/approve"), json!({})).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
        crate::edge::wait_ticket(&ann, remove, "deployed").await;
        assert_eq!(app.count("SELECT COUNT(*) FROM node_keys").await, 0, "no copy outlives the pair");
        assert_eq!(app.count("SELECT COUNT(*) FROM platform_node_keys").await, 0);
        assert_eq!(app.count("SELECT COUNT(*) FROM ticket_keys").await, 0);
        let shown = ann.get(&format!("/api/v1/certs/{cert}")).await.json;
        assert_eq!(shown["sealed_to"], json!([]), "{shown}");
        // Both nodes hold nothing sealed any more, on disk either.
        for node in &nodes {
            let path = node.data_dir.path().join("config.json");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let config = std::fs::read_to_string(&path).unwrap_or_default();
                if !config.is_empty() && !config.contains("AGE ENCRYPTED") {
                    break;
                }
                assert!(Instant::now() < deadline, "{} still holds sealed keys: {config}", path.display());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        // The pair serves the app again, then an admin revokes node 1 while it runs: it is told
        // to wipe its configuration and keys, and stops serving; node 2 serves on.
        let again = ann.upload_id("shop", &pki::leaf(&["www.example.com"], &root, Alg::P256), b"").await;
        let provision = ann.open_ticket("shop", "provision", Some(again)).await;
        let resp = staff.post(&format!("/api/v1/tickets/{provision}/approve"), json!({})).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
        crate::edge::wait_ticket(&ann, provision, "deployed").await;
        let roots = crate::edge_support::roots(&root.pem());
        crate::edge_support::tls_check(nodes[0].tls, "www.example.com", roots.clone()).await.unwrap();
        let (_, keys) = app.crew().await;
        let ids = node_ids(keys, "edge-x").await;
        let resp = keys.post(&format!("/api/v1/edge-nodes/{}/revoke", ids[0]), json!({})).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = std::fs::read_to_string(&nodes[0].log).unwrap_or_default();
            if log.contains("an admin revoked this node") {
                break;
            }
            assert!(Instant::now() < deadline, "node 1 was never told: {log}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!nodes[0].data_dir.path().join("config.json").exists(), "its local copy is wiped");
        assert!(
            crate::edge_support::tls_check(nodes[0].tls, "www.example.com", roots.clone()).await.is_err(),
            "a revoked node serves nothing"
        );
        crate::edge_support::tls_check(nodes[1].tls, "www.example.com", roots).await.unwrap();
    }
}

/// Posts JSON as a client behind the load balancer at 127.0.0.1 that forwarded for `client`.
async fn post_from(app: &TestApp, client: &str, path: &str, body: Value) -> crate::common::Resp {
    crate::common::Resp::read(
        reqwest::Client::new()
            .post(app.url(path))
            .header("x-forwarded-for", format!("203.0.113.250, {client}"))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// A six-digit code none of whose accepted steps (now, and one either side) gives.
fn wrong_code(secret: &certdrop::accounts::totp::TotpSecret) -> String {
    let now = certdrop::accounts::totp::step_of(certdrop::db::now());
    let valid: Vec<String> = (now - 1..=now + 1)
        .map(|s| secret.code_at_step(s))
        .collect();
    (0..)
        .map(|n: u32| format!("{n:06}"))
        .find(|c| !valid.contains(c))
        .unwrap()
}

fn behind_a_proxy(c: &mut certdrop::config::Config) {
    c.trusted_proxies = certdrop::accounts::forwarded::parse_trusted("127.0.0.1/32").unwrap();
}

/// Item 6: wrong codes from many addresses add up per account; at the cap only a recovery
/// code opens it, and the owner is mailed once. Item 9: behind a trusted proxy each client is
/// limited by its own address, and a spoofed header from anyone else changes nothing.
async fn wrong_codes_from_many_addresses_lock_the_authenticator(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, behind_a_proxy).await else {
        return;
    };
    let pw = app
        .user_without_second_factor("sam@example.com", Role::Staff)
        .await;
    let sam_id = app.user_id("sam@example.com").await;
    let (secret, codes) = certdrop::accounts::second_factor::enrol_now(&app.db, &app.vault, sam_id)
        .await
        .unwrap();
    let token = |otp: &str| json!({"email": "sam@example.com", "password": pw, "otp": otp});
    let cap = certdrop::accounts::second_factor::ACCOUNT_FAILURE_CAP;
    for i in 0..cap {
        let resp = post_from(
            &app,
            &format!("198.51.100.{i}"),
            "/api/v1/tokens",
            token(&wrong_code(&secret)),
        )
        .await;
        let want = if i + 1 < cap {
            "otp_invalid"
        } else {
            "second_factor_locked"
        };
        assert_eq!(
            (resp.status, resp.code()),
            (StatusCode::UNAUTHORIZED, want),
            "attempt {i}: {}",
            resp.body
        );
    }
    // Now even the right code is refused, from anywhere; the owner was mailed, once.
    let authenticator = crate::common::Authenticator::new(secret);
    let resp = post_from(
        &app,
        "192.0.2.77",
        "/api/v1/tokens",
        token(&authenticator.code().await),
    )
    .await;
    assert_eq!(resp.code(), "second_factor_locked", "{}", resp.body);
    let resp = post_from(
        &app,
        "192.0.2.78",
        "/api/v1/tokens",
        token(&wrong_code(
            &certdrop::accounts::totp::TotpSecret::generate(),
        )),
    )
    .await;
    assert_eq!(resp.code(), "second_factor_locked", "{}", resp.body);
    let mails: Vec<String> = sqlx::query_scalar("SELECT text_body FROM mail_outbox WHERE to_address = 'sam@example.com' AND subject LIKE '%blocked%'")
        .fetch_all(&app.db).await.unwrap();
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert!(mails[0].contains("recovery codes"), "{}", mails[0]);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM audit_events WHERE action = 'user.second_factor_locked'")
            .await,
        1
    );
    // A recovery code opens it again; then the authenticator works.
    let resp = post_from(&app, "192.0.2.79", "/api/v1/tokens", token(&codes[0])).await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
    let resp = post_from(
        &app,
        "192.0.2.80",
        "/api/v1/tokens",
        token(&authenticator.code().await),
    )
    .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
    // The audit trail names the forwarded client, not the proxy.
    let ips: Vec<Option<String>> = sqlx::query_scalar("SELECT source_ip FROM audit_events WHERE action = 'user.second_factor' ORDER BY id LIMIT 1")
        .fetch_all(&app.db).await.unwrap();
    assert_eq!(ips, [Some("198.51.100.0".to_string())]);

    // Item 9: six wrong passwords from one client behind the proxy slow that client only.
    app.user("ann@example.com", Role::Customer).await;
    let wrong = json!({"email": "ann@example.com", "password": "not the password at all"});
    for _ in 0..5 {
        let resp = post_from(&app, "198.51.100.200", "/api/v1/tokens", wrong.clone()).await;
        assert_eq!(resp.code(), "bad_credentials", "{}", resp.body);
    }
    let resp = post_from(&app, "198.51.100.200", "/api/v1/tokens", wrong.clone()).await;
    assert_eq!(resp.status, StatusCode::TOO_MANY_REQUESTS, "{}", resp.body);
    let resp = post_from(&app, "198.51.100.201", "/api/v1/tokens", wrong.clone()).await;
    assert_eq!(
        resp.code(),
        "bad_credentials",
        "another client behind the same balancer is not locked out"
    );

    // Without trusted proxies, a forwarding header is the client's own words: ignored.
    let Some(direct) = TestApp::spawn(backend).await else {
        return;
    };
    direct.user("ann@example.com", Role::Customer).await;
    for i in 0..5 {
        let resp = post_from(
            &direct,
            &format!("198.51.100.{i}"),
            "/api/v1/tokens",
            wrong.clone(),
        )
        .await;
        assert_eq!(resp.code(), "bad_credentials", "{}", resp.body);
    }
    let resp = post_from(&direct, "198.51.100.99", "/api/v1/tokens", wrong).await;
    assert_eq!(
        resp.status,
        StatusCode::TOO_MANY_REQUESTS,
        "a spoofed header does not escape the limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_codes_from_many_addresses_lock_the_authenticator_on_sqlite() {
    wrong_codes_from_many_addresses_lock_the_authenticator(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_codes_from_many_addresses_lock_the_authenticator_on_postgres() {
    wrong_codes_from_many_addresses_lock_the_authenticator(Backend::Postgres).await;
}

db_test! {
    /// Item 7: a staff or admin token made in the browser takes a code; every token expires.
    async fn tokens_take_a_code_for_staff_and_always_expire(app) {
        let browser = app.signed_in_browser("ada@example.com", Role::Admin).await;
        let resp = browser.submit("/account/tokens", "/account/tokens", &[("name", "laptop")]).await;
        assert_eq!(resp.status, StatusCode::UNAUTHORIZED, "{}", resp.body);
        assert!(resp.body.contains("otp-error"), "the page asks for the code");
        assert_eq!(app.count("SELECT COUNT(*) FROM api_tokens").await, 0);
        let code = app.otp("ada@example.com").await;
        let resp = browser.submit("/account/tokens", "/account/tokens", &[("name", "laptop"), ("otp", &code), ("expires_in_days", "30")]).await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
        let (fresh, expires): (Option<i64>, i64) = sqlx::query_as("SELECT second_factor_at, expires_at FROM api_tokens").fetch_one(&app.db).await.unwrap();
        let now = certdrop::db::now();
        assert!(fresh.is_some_and(|at| now - at < 60));
        assert!((expires - now - 30 * 86400).abs() < 60, "{expires}");
        let page = browser.get("/account/tokens").await;
        assert!(page.body.contains("Expires") && page.body.contains("Last used"), "the list shows both");

        // Over the API: 90 days unless asked; 1 to 365.
        let pw = app.user("cid@example.com", Role::Customer).await;
        let anon = app.api_anonymous();
        let ask = |days: Option<i64>| json!({"email": "cid@example.com", "password": pw, "expires_in_days": days});
        for bad in [0, 366, -3] {
            let resp = anon.post("/api/v1/tokens", ask(Some(bad))).await;
            assert_eq!((resp.status, resp.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_expiry"), "{bad}");
        }
        let resp = anon.post("/api/v1/tokens", ask(None)).await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
        assert!((resp.json["expires_at"].as_i64().unwrap() - now - 90 * 86400).abs() < 60, "{}", resp.body);
        let mut cid = app.api_anonymous();
        cid.token = Some(resp.json["token"].as_str().unwrap().to_string());
        assert_eq!(cid.get("/api/v1/apps").await.status, StatusCode::OK);
        let listed = cid.get("/api/v1/tokens").await.json;
        assert!(listed["items"][0]["expires_at"].is_i64() && listed["items"][0]["last_used_at"].is_i64(), "{listed}");
        // Past its expiry a token is refused, and says why.
        sqlx::query("UPDATE api_tokens SET expires_at = $1 WHERE id = $2").bind(now - 1).bind(resp.json["id"].as_i64().unwrap()).execute(&app.db).await.unwrap();
        let refused = cid.get("/api/v1/apps").await;
        assert_eq!((refused.status, refused.code()), (StatusCode::UNAUTHORIZED, "token_expired"), "{}", refused.body);
    }
}

db_test! {
    /// Item 8: an account raised to staff enrols its first authenticator only through the link
    /// mailed to its own address, not with its password alone.
    async fn a_raised_account_enrols_only_through_its_mailed_link(app) {
        let pw = app.user("c2@example.com", Role::Customer).await;
        let c2 = app.user_id("c2@example.com").await;
        let a1 = app.signed_in_browser("a1@example.com", Role::Admin).await;
        let a2 = app.signed_in_browser("a2@example.com", Role::Admin).await;
        for admin in [&a1, &a2] {
            let resp = admin.submit("/admin/users", &format!("/admin/users/{c2}/role"), &[("role", "staff")]).await;
            assert_eq!(resp.status, StatusCode::SEE_OTHER);
        }
        assert_eq!(role_of(&app, "c2@example.com").await, "staff");

        // Whoever knows the password signs in first: no authenticator can be set up.
        let thief = app.browser();
        let resp = thief.log_in("c2@example.com", &pw).await;
        assert!(resp.location().starts_with("/login/second-factor"), "{}", resp.location());
        let page = thief.get(resp.location()).await;
        assert!(page.body.contains("link") && !page.body.contains("totp-secret"), "{}", page.body);
        let secret = certdrop::accounts::totp::TotpSecret::generate().base32().to_string();
        let theirs = crate::common::Authenticator::from_text(&secret);
        // (The page shows no form; they post one of their own.)
        let resp = thief.submit("/login", "/login/second-factor", &[("otp", &theirs.code().await), ("secret", &secret)]).await;
        assert_eq!(resp.status, StatusCode::FORBIDDEN, "{}", resp.body);
        assert!(resp.body.contains("enrolment_link_required"), "{}", resp.body);
        assert_eq!(app.count("SELECT COUNT(*) FROM users WHERE email = 'c2@example.com' AND totp_enabled_at IS NOT NULL").await, 0);
        assert_eq!(thief.get("/staff/tickets").await.location(), "/login");

        // The owner opens the link from their mailbox, signs in and enrols.
        let mail: String = sqlx::query_scalar("SELECT text_body FROM mail_outbox WHERE to_address = 'c2@example.com' AND subject LIKE '%authenticator%'")
            .fetch_one(&app.db).await.unwrap();
        let link = mail.split_whitespace().find(|w| w.contains("/account/enrol/")).unwrap_or_else(|| panic!("{mail}"));
        let path = &link[link.find("/account/enrol/").unwrap()..];
        let owner = app.browser();
        let resp = owner.get(path).await;
        assert_eq!((resp.status, resp.location()), (StatusCode::SEE_OTHER, "/login"));
        let resp = owner.log_in("c2@example.com", &pw).await;
        let page = owner.get(resp.location()).await;
        let shown = page.body.split("id=\"totp-secret\">").nth(1).unwrap_or_else(|| panic!("{}", page.body)).split('<').next().unwrap().to_string();
        let mine = crate::common::Authenticator::from_text(&shown);
        let done = owner.submit("/login/second-factor", "/login/second-factor", &[("otp", &mine.code().await), ("secret", &shown)]).await;
        assert_eq!(done.status, StatusCode::OK, "{}", done.body);
        assert_eq!(owner.get("/staff/tickets").await.status, StatusCode::OK);
        // The link worked once.
        assert_eq!(app.browser().get(path).await.status, StatusCode::NOT_FOUND);
    }
}

db_test! {
    /// Item 10: the visitor's CSRF token from before sign-in is worthless after it.
    async fn a_csrf_token_from_before_sign_in_is_refused_after_it(app) {
        let pw = app.user("ann@example.com", Role::Customer).await;
        let browser = app.browser();
        let before = browser.csrf("/login").await;
        let resp = browser.log_in("ann@example.com", &pw).await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER);
        let cleared = resp.headers.get_all("set-cookie").iter().any(|v| {
            let v = v.to_str().unwrap();
            v.starts_with("certdrop_csrf=;") && v.contains("Max-Age=0")
        });
        assert!(cleared, "sign-in clears the visitor's cookie token: {:?}", resp.headers);
        let created = browser.submit("/apps", "/apps", &[("name", "shop"), ("backend_url", "http://10.0.0.5:8000")]).await;
        assert_eq!(created.status, StatusCode::SEE_OTHER, "{}", created.body);
        let resp = browser
            .post_form("/apps/shop/settings", &[("csrf_token", &before), ("backend_url", "http://10.6.6.6:80")])
            .await;
        assert_eq!(resp.status, StatusCode::FORBIDDEN, "{}", resp.body);
        assert_eq!(app.count("SELECT COUNT(*) FROM apps WHERE backend_url LIKE '%10.6.6.6%'").await, 0);
        let resp = browser.submit("/apps/shop", "/apps/shop/settings", &[("backend_url", "http://10.0.0.7:80")]).await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER, "the session's own token works: {}", resp.body);
    }
}

db_test! {
    /// Item 11: nothing unbounded is read, hashed, limited or stored before sign-in.
    async fn unauthenticated_fields_are_bounded_before_any_work(app) {
        let anon = app.api_anonymous();
        let huge = "a".repeat(1_000_000) + "@example.com";
        let resp = anon.post("/api/v1/tokens", json!({"email": huge, "password": "x"})).await;
        assert_eq!(resp.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", resp.body);
        let long = "a".repeat(300) + "@example.com";
        let resp = anon.post("/api/v1/tokens", json!({"email": long, "password": "x"})).await;
        assert_eq!((resp.status, resp.code()), (StatusCode::UNPROCESSABLE_ENTITY, "too_long"), "{}", resp.body);
        let resp = anon.post("/api/v1/tokens", json!({"email": "ann@example.com", "password": "p".repeat(1025)})).await;
        assert_eq!(resp.code(), "too_long", "{}", resp.body);
        assert_eq!(app.count("SELECT COUNT(*) FROM audit_events").await, 0, "nothing reached the audit trail");
        let browser = app.browser();
        let resp = browser.submit("/signup", "/signup", &[("email", &long), ("password", "a long enough password 1"), ("password_confirm", "a long enough password 1")]).await;
        assert_eq!(resp.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(!resp.body.contains(&long), "a refused address is not echoed back");
        let resp = browser.submit("/login", "/login", &[("email", &long), ("password", "x")]).await;
        assert_eq!(resp.status, StatusCode::UNPROCESSABLE_ENTITY);
        let resp = app.api_anonymous().post("/api/v1/edge/enroll", json!({"enroll_token": "x".repeat(20_000), "recipient": "r", "address": "a:1"})).await;
        assert_eq!(resp.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 0);
    }
}

/// Item 12: cloud metadata addresses are refused as backends and webhook URLs, whatever the
/// operator allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_metadata_addresses_are_never_backends() {
    for allow_private in [false, true] {
        let app = TestApp::spawn_with(Backend::Sqlite, move |c| {
            c.allow_private_backends = allow_private
        })
        .await
        .unwrap();
        let ann = app.api_user("ann@example.com", Role::Customer).await;
        for url in [
            "http://[fd00:ec2::254]/",
            "http://100.100.100.200/",
            "http://168.63.129.16/",
            "http://169.254.169.254/latest",
            "http://[::ffff:169.254.169.254]/",
        ] {
            let resp = ann
                .post("/api/v1/apps", json!({"name": "shop", "backend_url": url}))
                .await;
            assert_eq!(
                (resp.status, resp.code()),
                (StatusCode::UNPROCESSABLE_ENTITY, "backend_not_allowed"),
                "{url} allowed={allow_private}: {}",
                resp.body
            );
            assert!(resp.body.contains("metadata"), "{}", resp.body);
            let resp = ann
                .post(
                    "/api/v1/webhooks",
                    json!({"url": url, "events": ["ticket.opened"]}),
                )
                .await;
            assert_eq!(
                resp.code(),
                "webhook_url_not_allowed",
                "{url}: {}",
                resp.body
            );
        }
    }
}
