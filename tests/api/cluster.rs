//! Three control planes on one PostgreSQL database, as an operator runs them behind a load
//! balancer: edge nodes long-poll two of them, the customer uses one, staff another. Every
//! deployment runs once, every mail goes once, a change made on one instance reaches a node
//! polling another within a second, a session works on every instance, and an instance killed
//! right after approving an update loses nothing.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    common::{Backend, Browser, ServerProcess, TestDatabase, cli_user},
    edge::{start_pair_polling, wait_ticket},
    edge_support::{echo_backend, roots, tls_check},
    pki::{self, Alg},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_control_planes_share_one_postgresql_database() {
    let data = tempfile::tempdir().unwrap();
    let Some(database) = TestDatabase::new(Backend::Postgres, data.path()).await else {
        return;
    };
    // One data directory: the instances share the vault identity (and the .eml outbox).
    let mut a = ServerProcess::start(data.path(), &database.url, &[]);
    let b = ServerProcess::start(data.path(), &database.url, &[]);
    let c = ServerProcess::start(data.path(), &database.url, &[]);
    let env = vec![
        ("CERTDROP_DATA_DIR", data.path().display().to_string()),
        ("CERTDROP_DATABASE_URL", database.url.clone()),
    ];
    let ann = a.api(
        cli_user(&a.address, &env, "ann@example.com", "customer")
            .await
            .token,
    );
    let sam = b.api(
        cli_user(&b.address, &env, "sam@example.com", "staff")
            .await
            .token,
    );
    let ops = cli_user(&a.address, &env, "ops@example.com", "staff").await;
    let keys = cli_user(&a.address, &env, "keys@example.com", "admin").await;
    let nodes = start_pair_polling([&b.address, &c.address], &ops, &keys, "edge-3", &[]).await;

    // A session made on one instance works on the others.
    let browser = Browser::new(&a.address);
    assert_eq!(
        browser
            .log_in("ann@example.com", "correct horse battery")
            .await
            .status,
        StatusCode::SEE_OTHER
    );
    for other in [&b.address, &c.address] {
        let page = browser
            .http
            .get(format!("{other}/apps"))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::OK, "signed in on {other}");
    }

    let backend = echo_backend().await;
    ann.post(
        "/api/v1/apps",
        json!({"name": "shop", "backend_url": format!("http://{backend}")}),
    )
    .await;
    ann.add_domain("shop", "www.example.com").await;
    let root = pki::root("Cluster Root");
    let first = pki::leaf(&["www.example.com"], &root, Alg::P256);
    let cert = ann.upload_id("shop", &first, b"").await;
    let provision = ann.open_ticket("shop", "provision", Some(cert)).await;
    let resp = sam
        .post(&format!("/api/v1/tickets/{provision}/approve"), json!({}))
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    wait_ticket(&ann, provision, "deployed").await;
    let roots = roots(&root.pem());
    for node in &nodes {
        let (chain, _) = tls_check(node.tls, "www.example.com", roots.clone())
            .await
            .unwrap();
        assert_eq!(chain[0], first.fingerprint());
    }

    // A change made on A reaches node 2, which polls C, within a second.
    let pair_version = |api: crate::common::Api| async move {
        let pairs = api.get("/api/v1/edge-pairs").await.json;
        let pair: Value = pairs["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "edge-3")
            .unwrap()
            .clone();
        (
            pair["config_version"].as_i64().unwrap(),
            pair["nodes"][1]["applied_version"].as_i64().unwrap_or(0),
        )
    };
    let (before, _) = pair_version(ops.clone()).await;
    let other_backend = echo_backend().await;
    let changed = Instant::now();
    let resp = ann
        .patch_json(
            "/api/v1/apps/shop",
            json!({"backend_url": format!("http://{other_backend}")}),
        )
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    loop {
        let (version, applied) = pair_version(ops.clone()).await;
        if version > before && applied == version {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(1),
            "node 2 (polling C) still at {applied} of {version}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "a change on A reached the node polling C in {} ms",
        changed.elapsed().as_millis()
    );

    // An update approved on A, and A killed at once: another instance finishes it, once.
    let second = pki::leaf(&["www.example.com"], &root, Alg::Rsa2048);
    let cert = ann.upload_id("shop", &second, b"").await;
    let update = ann.open_ticket("shop", "update", Some(cert)).await;
    let sam_on_a = a.api(sam.token.clone());
    let resp = sam_on_a
        .post(&format!("/api/v1/tickets/{update}/approve"), json!({}))
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let ann = b.api(ann.token.clone());
    wait_ticket(&ann, update, "deployed").await;
    for tls in [nodes[0].tls, nodes[1].tls] {
        let (chain, _) = tls_check(tls, "www.example.com", roots.clone())
            .await
            .unwrap();
        assert_eq!(chain[0], second.fingerprint());
    }

    sqlx::any::install_default_drivers();
    let db = sqlx::AnyPool::connect(&database.url).await.unwrap();
    let count = |sql: &'static str| {
        let db = db.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        count("SELECT COUNT(*) FROM app_deployments").await,
        2,
        "each ticket deployed once"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM ticket_events WHERE to_state = 'deployed'").await,
        2
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM billing_events").await,
        1,
        "one provision, billed once"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM deploy_jobs WHERE state <> 'done'").await,
        0
    );
    // Every mail goes once: each outbox row is sent, and written once as a file.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let unsent = count("SELECT COUNT(*) FROM mail_outbox WHERE state <> 'sent'").await;
        if unsent == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{unsent} mails never went");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows = count("SELECT COUNT(*) FROM mail_outbox").await;
    let files = std::fs::read_dir(data.path().join("outbox"))
        .unwrap()
        .count() as i64;
    assert_eq!(files, rows, "{rows} mails, {files} sent");
    db.close().await;
}
