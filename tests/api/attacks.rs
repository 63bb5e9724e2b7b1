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
        let (a2_id, c3, c4) = (user_id(&app, "a2@example.com").await, user_id(&app, "c3@example.com").await, user_id(&app, "c4@example.com").await);
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
        assert_eq!(requested_by, user_id(&app, "a1@example.com").await, "a1's request stands, waiting for another admin");
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

async fn user_id(app: &TestApp, email: &str) -> i64 {
    sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
        .bind(email)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

async fn role_of(app: &TestApp, email: &str) -> String {
    sqlx::query_scalar("SELECT role FROM users WHERE email = $1")
        .bind(email)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

/// Waits until `sql` counts at least `want`.
async fn wait_count(app: &TestApp, sql: &str, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.count(sql).await < want {
        assert!(Instant::now() < deadline, "never reached {want}: {sql}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
