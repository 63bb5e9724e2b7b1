//! Edge pairs end to end: a control plane, two real `certdrop edge` processes and a backend on
//! loopback; provision → update → rollback → remove through the API, each step checked from
//! outside with verifying TLS clients (rustls here, curl as a second opinion).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use certdrop::accounts::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    common::{Api, confirm_node, require_or_skip},
    db_test,
    edge_support::{EdgeNode, echo_backend, get_json, https_client, roots, tls_check},
    keyscan,
    pki::{self, Alg},
};

pub async fn wait_ticket(api: &Api, id: i64, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let t = api.get(&format!("/api/v1/tickets/{id}")).await.json;
        let state = t["state"].as_str().unwrap_or("").to_string();
        if state == want {
            return t;
        }
        assert!(
            state != "failed" && state != "rejected",
            "ticket #{id} ended {state}: {}",
            t["reason"]
        );
        assert!(Instant::now() < deadline, "ticket #{id} is still {state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A pair created by `creator`, its two real nodes started and enrolled, then confirmed by
/// `confirmer` (an admin) with the fingerprints the nodes printed at start.
pub async fn start_pair(
    app_address: &str,
    creator: &Api,
    confirmer: &Api,
    name: &str,
) -> [EdgeNode; 2] {
    start_pair_with(app_address, creator, confirmer, name, &[]).await
}

/// `start_pair` with extra flags for both nodes.
pub async fn start_pair_with(
    app_address: &str,
    creator: &Api,
    confirmer: &Api,
    name: &str,
    flags: &[&str],
) -> [EdgeNode; 2] {
    start_pair_polling([app_address; 2], creator, confirmer, name, flags).await
}

/// `start_pair_with`, node 1 polling `control_planes[0]` and node 2 `control_planes[1]`.
pub async fn start_pair_polling(
    control_planes: [&str; 2],
    creator: &Api,
    confirmer: &Api,
    name: &str,
    flags: &[&str],
) -> [EdgeNode; 2] {
    let pair = creator
        .post("/api/v1/edge-pairs", json!({"name": name}))
        .await;
    assert_eq!(pair.status, StatusCode::CREATED, "{}", pair.body);
    let tokens: Vec<String> = pair.json["enroll_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let nodes = [
        EdgeNode::start_with(control_planes[0], &tokens[0], flags),
        EdgeNode::start_with(control_planes[1], &tokens[1], flags),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let pairs = creator.get("/api/v1/edge-pairs").await.json;
        let listed: Vec<Value> = pairs["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["nodes"]
            .as_array()
            .unwrap()
            .clone();
        if listed
            .iter()
            .all(|n| n["state"] == "enrolled" && !n["last_seen_at"].is_null())
        {
            break listed;
        }
        assert!(Instant::now() < deadline, "the nodes did not enroll");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for node in &nodes {
        let printed = node.fingerprint();
        let id = listed
            .iter()
            .find(|n| n["recipient_fingerprint"] == printed.as_str())
            .unwrap_or_else(|| panic!("no enrolled node shows {printed}"))["id"]
            .as_i64()
            .unwrap();
        confirm_node(confirmer, id, &printed).await;
    }
    nodes
}

/// An app `shop` of ann@example.com serving www.example.com through a new pair started with
/// `flags`, proxying to `backend`, with `leaf` (and `chain_pem`) provisioned by sam@example.com.
pub async fn serve_shop(
    app: &crate::common::TestApp,
    backend: std::net::SocketAddr,
    flags: &[&str],
    leaf: &pki::Leaf,
    chain_pem: &[u8],
) -> ([EdgeNode; 2], Api) {
    let (ops, keys) = app.crew().await;
    let nodes = start_pair_with(&app.address, ops, keys, "edge-x", flags).await;
    let ann = app.api_user("ann@example.com", Role::Customer).await;
    let created = ann
        .post(
            "/api/v1/apps",
            json!({"name": "shop", "backend_url": format!("http://{backend}")}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    ann.add_domain("shop", "www.example.com").await;
    let cert = ann.upload_id("shop", leaf, chain_pem).await;
    let ticket = ann.open_ticket("shop", "provision", Some(cert)).await;
    let sam = app.api_user("sam@example.com", Role::Staff).await;
    let resp = sam
        .post(&format!("/api/v1/tickets/{ticket}/approve"), json!({}))
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    wait_ticket(&ann, ticket, "deployed").await;
    (nodes, ann)
}

async fn open_and_approve(
    customer: &Api,
    staff: &Api,
    kind: &str,
    cert: Option<i64>,
) -> (i64, Value) {
    let resp = customer
        .post(
            "/api/v1/tickets",
            json!({"app": "shop", "kind": kind, "certificate_id": cert}),
        )
        .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
    let id = resp.json["id"].as_i64().unwrap();
    let resp = staff
        .post(&format!("/api/v1/tickets/{id}/approve"), json!({}))
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    (id, wait_ticket(customer, id, "deployed").await)
}

/// Both nodes serve `leaf` (and its intermediate) for every name, checked by verifying clients.
async fn assert_serving(nodes: &[EdgeNode; 2], root_pem: &str, leaf_fp: &str) {
    let roots = roots(root_pem);
    for node in nodes {
        for sni in ["www.example.com", "api.shop.example.com"] {
            let (chain, version) = tls_check(node.tls, sni, roots.clone())
                .await
                .unwrap_or_else(|e| panic!("{sni} on {}: {e}", node.tls));
            assert_eq!(chain[0], leaf_fp, "{sni} on {}", node.tls);
            assert_eq!(chain.len(), 2, "leaf and intermediate are served");
            assert!(version.contains("TLSv1_3"), "{version}");
        }
    }
}

/// `curl --resolve` against a node, as the old docs told customers to check.
fn curl_check(node: &EdgeNode, root_pem: &str) -> Option<Value> {
    let available = std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !require_or_skip("curl", available) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("root.pem");
    std::fs::write(&ca, root_pem).unwrap();
    let port = node.tls.port();
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "--http1.1",
            "--resolve",
            &format!("www.example.com:{port}:127.0.0.1"),
            "--cacert",
        ])
        .arg(&ca)
        .arg(format!("https://www.example.com:{port}/from-curl"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

db_test! {
    async fn provision_update_rollback_and_remove_end_to_end(app) {
        let staff = app.api_user("sam@example.com", Role::Staff).await;
        let (ops, keys) = app.crew().await;
        let nodes = start_pair(&app.address, ops, keys, "edge-a").await;
        let backend = echo_backend().await;
        let ann = app.api_user("ann@example.com", Role::Customer).await;
        let resp = ann.post("/api/v1/apps", json!({"name": "shop", "backend_url": format!("http://{backend}")})).await;
        assert_eq!(resp.status, StatusCode::CREATED);
        for host in ["www.example.com", "*.shop.example.com"] {
            ann.add_domain("shop", host).await;
        }
        let root = pki::root("Edge Test Root");
        let inter = pki::intermediate("Edge Test Intermediate", &root);
        let names = ["www.example.com", "*.shop.example.com"];
        let a = pki::leaf(&names, &inter, Alg::P256);
        let b = pki::leaf(&names, &inter, Alg::Rsa2048);
        let a_id = ann.upload_id("shop", &a, inter.pem().as_bytes()).await;

        // Provision: a dedicated pair, both nodes verified by handshake.
        let (_, ticket) = open_and_approve(&ann, &staff, "provision", Some(a_id)).await;
        let deployment = &ticket["deployment"];
        assert_eq!(deployment["pair"], "edge-a");
        for node in deployment["nodes"].as_array().unwrap() {
            assert_eq!(node["state"], "verified", "{deployment}");
            assert_eq!(node["fingerprint_sha256"], a.fingerprint());
            assert!(node["verified_at"].as_str().unwrap().ends_with('Z'));
        }
        assert!(deployment["verifications"].as_array().unwrap().len() >= 4, "two nodes × two names");
        // Every step was recorded as it happened, each with the time it took.
        let steps = ticket["progress"].as_array().unwrap();
        let labels: Vec<&str> = steps.iter().map(|s| s["label"].as_str().unwrap()).collect();
        for want in ["Approved by staff", "Deployment started", "Key sealed to edge-a-1 and edge-a-2 and configuration", "edge-a-1 applied it", "edge-a-2 applied it", "edge-a-1: TLS handshake for www.example.com serves the approved certificate", "Deployed"] {
            assert!(labels.iter().any(|l| l.starts_with(want)), "{want} missing from {labels:?}");
        }
        assert_eq!(labels.last(), Some(&"Deployed"), "{labels:?}");
        assert!(steps.iter().skip(1).all(|s| s["took_ms"].as_i64().is_some_and(|ms| ms >= 0)));
        assert_serving(&nodes, &root.pem(), &a.fingerprint()).await;

        // Through the proxy: HTTP/2 over TLS, with the forwarded headers.
        for node in &nodes {
            let client = https_client("www.example.com", node.tls, &root.pem(), true);
            let (status, version, echo) = get_json(&client, &format!("https://www.example.com:{}/hello?x=1", node.tls.port())).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(version, reqwest::Version::HTTP_2, "ALPN negotiates h2");
            assert_eq!(echo["path"], "/hello");
            assert_eq!(echo["x-forwarded-proto"], "https");
            assert_eq!(echo["x-forwarded-for"], "127.0.0.1");
            assert_eq!(echo["x-forwarded-port"], node.tls.port().to_string());
            if let Some(echo) = curl_check(node, &root.pem()) {
                assert_eq!(echo["x-forwarded-proto"], "https");
                assert_eq!(echo["path"], "/from-curl");
            }
        }
        // Plain HTTP is proxied until the app forces HTTPS, then redirected.
        let plain = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let resp = plain.get(format!("http://{}/plain", nodes[0].http)).header("host", "www.example.com").send().await.unwrap();
        assert_eq!(resp.json::<Value>().await.unwrap()["x-forwarded-proto"], "http");
        assert_eq!(ann.patch("/api/v1/apps/shop", json!({"force_https": true})).await, StatusCode::OK);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let resp = plain.get(format!("http://{}/plain?q=1", nodes[0].http)).header("host", "www.example.com").send().await.unwrap();
            if resp.status() == StatusCode::MOVED_PERMANENTLY {
                let location = resp.headers()["location"].to_str().unwrap().to_string();
                assert_eq!(location, format!("https://www.example.com:{}/plain?q=1", nodes[0].tls.port()));
                break;
            }
            assert!(Instant::now() < deadline, "force HTTPS never reached the node");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // Update under continuous load: no request fails while the certificate is swapped.
        let b_id = ann.upload_id("shop", &b, inter.pem().as_bytes()).await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut load = Vec::new();
        for (i, node) in nodes.iter().chain(nodes.iter()).chain(nodes.iter()).enumerate() {
            // Keep-alive clients (connections live across the swap) and fresh connections.
            let client = https_client("www.example.com", node.tls, &root.pem(), i % 3 != 2);
            let url = format!("https://www.example.com:{}/load", node.tls.port());
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            load.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let good = match client.get(&url).send().await {
                        Ok(r) => r.status() == StatusCode::OK && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    if good {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (_, ticket) = open_and_approve(&ann, &staff, "update", Some(b_id)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        for task in load {
            task.await.unwrap();
        }
        println!("update under load: {} requests, {} failed", ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
        assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed during the update");
        assert!(ok.load(Ordering::Relaxed) > 50);
        assert_eq!(ticket["deployment"]["nodes"][0]["fingerprint_sha256"], b.fingerprint());
        assert_serving(&nodes, &root.pem(), &b.fingerprint()).await;

        // A restarted node serves its sealed local copy and re-pulls.
        let [n1, n2] = nodes;
        let n1 = n1.restart(&app.address);
        let nodes = [n1, n2];
        assert_serving(&nodes, &root.pem(), &b.fingerprint()).await;

        // Rollback: back to the previously deployed certificate.
        let rollback = ann.post("/api/v1/tickets", json!({"app": "shop", "kind": "rollback"})).await;
        assert_eq!(rollback.json["certificate_id"], a_id, "{}", rollback.body);
        let id = rollback.json["id"].as_i64().unwrap();
        staff.post(&format!("/api/v1/tickets/{id}/approve"), json!({})).await;
        wait_ticket(&ann, id, "deployed").await;
        assert_serving(&nodes, &root.pem(), &a.fingerprint()).await;
        let certs = ann.get("/api/v1/apps/shop/certs").await.json;
        let status = |id: i64| certs["items"].as_array().unwrap().iter().find(|c| c["id"] == id).unwrap()["status"].clone();
        assert_eq!(status(a_id), "deployed");
        assert_eq!(status(b_id), "previous");

        // Remove: TLS stops on both nodes and the pair is free again.
        let (_, ticket) = open_and_approve(&ann, &staff, "remove", None).await;
        assert_eq!(ticket["deployment"]["nodes"][0]["state"], "verified");
        for node in &nodes {
            assert!(tls_check(node.tls, "www.example.com", roots(&root.pem())).await.is_err(), "no certificate is served any more");
        }
        assert_eq!(app.count("SELECT COUNT(*) FROM edge_pairs WHERE app_id IS NULL").await, 1);
        let kinds: Vec<String> = sqlx::query_scalar("SELECT kind FROM billing_events ORDER BY id").fetch_all(&app.db).await.unwrap();
        assert_eq!(kinds, ["edge_pair.provisioned", "edge_pair.released"], "update and rollback bill nothing");
        let shown = ann.get("/api/v1/apps/shop").await;
        assert_eq!(shown.json["tls_status"]["state"], "removed", "{}", shown.body);
        assert_eq!(ann.delete("/api/v1/apps/shop").await.status, StatusCode::NO_CONTENT, "a released app can be deleted");

        // No plaintext key in either node's data directory.
        let mut public = Vec::new();
        let mut needles = Vec::new();
        for leaf in [&a, &b] {
            public.extend(keyscan::public_forms(&leaf.der));
        }
        for leaf in [&a, &b] {
            needles.extend(keyscan::fragments(&leaf.key_pem, &public));
        }
        for node in &nodes {
            let files = keyscan::files_under(node.data_dir.path());
            assert!(files.iter().any(|f| f.ends_with("config.json")));
            for file in files {
                let bytes = std::fs::read(&file).unwrap();
                assert_eq!(keyscan::find_any(&bytes, &needles), None, "a key fragment is in {}", file.display());
            }
            let log = std::fs::read(&node.log).unwrap();
            assert_eq!(keyscan::find_any(&log, &needles), None, "a key fragment is in the node's log");
        }
    }
}

/// The control plane is killed in the middle of a deployment (configuration published, one node
/// still to apply it); after a restart the job finishes once: no second deployment, no second
/// bill, no lost ticket. Meanwhile the node that had applied it keeps serving.
async fn a_deployment_survives_a_control_plane_crash(backend: crate::common::Backend) {
    use crate::common::{ServerProcess, TestDatabase, cli_user};
    let data = tempfile::tempdir().unwrap();
    let Some(database) = TestDatabase::new(backend, data.path()).await else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let env = [("CERTDROP_LISTEN", listen.as_str())];
    let mut server = ServerProcess::start(data.path(), &database.url, &env);
    let cli_env = vec![
        ("CERTDROP_DATA_DIR", data.path().display().to_string()),
        ("CERTDROP_DATABASE_URL", database.url.clone()),
    ];
    let ann = server.api(
        cli_user(&server.address, &cli_env, "ann@example.com", "customer")
            .await
            .token,
    );
    let staff = cli_user(&server.address, &cli_env, "sam@example.com", "staff").await;
    let ops = cli_user(&server.address, &cli_env, "ops@example.com", "staff").await;
    let keys = cli_user(&server.address, &cli_env, "keys@example.com", "admin").await;
    let nodes = start_pair(&server.address, &ops, &keys, "edge-k").await;
    let backend_addr = echo_backend().await;
    ann.post(
        "/api/v1/apps",
        json!({"name": "shop", "backend_url": format!("http://{backend_addr}")}),
    )
    .await;
    ann.add_domain("shop", "www.example.com").await;
    let root = pki::root("Crash Test Root");
    let leaf = pki::leaf(&["www.example.com"], &root, Alg::P256);
    let cert = ann.upload_id("shop", &leaf, b"").await;
    let id = ann.open_ticket("shop", "provision", Some(cert)).await;

    // Node 2 is frozen, so the deployment cannot finish before the crash.
    nodes[1].signal("-STOP");
    assert_eq!(
        staff
            .post(&format!("/api/v1/tickets/{id}/approve"), json!({}))
            .await
            .status,
        StatusCode::OK
    );
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
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(
        "SELECT COUNT(*) FROM deploy_jobs WHERE state = 'running' AND config_version IS NOT NULL",
    )
    .await
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the deployment never published its configuration"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Node 1 has applied it; then the control plane dies without any chance to clean up.
    let roots = roots(&root.pem());
    let deadline = Instant::now() + Duration::from_secs(10);
    while tls_check(nodes[0].tls, "www.example.com", roots.clone())
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "node 1 never applied the configuration"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    assert_eq!(
        count("SELECT COUNT(*) FROM tickets WHERE state = 'deploying'").await,
        1,
        "killed mid-deployment"
    );

    // With the control plane away, node 1 keeps serving its last good configuration.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (chain, _) = tls_check(nodes[0].tls, "www.example.com", roots.clone())
        .await
        .unwrap();
    assert_eq!(chain[0], leaf.fingerprint());

    nodes[1].signal("-CONT");
    let server = ServerProcess::start(data.path(), &database.url, &env);
    let ann = server.api(ann.token.clone());
    let ticket = wait_ticket(&ann, id, "deployed").await;
    for node in ticket["deployment"]["nodes"].as_array().unwrap() {
        assert_eq!(node["state"], "verified");
    }
    for node in &nodes {
        let (chain, _) = tls_check(node.tls, "www.example.com", roots.clone())
            .await
            .unwrap();
        assert_eq!(chain[0], leaf.fingerprint());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        count("SELECT COUNT(*) FROM deploy_jobs WHERE state = 'done' AND attempts = 2").await,
        1,
        "claimed again once, after the crash"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM app_deployments").await,
        1,
        "deployed once"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM billing_events").await,
        1,
        "billed once"
    );
    assert_eq!(
        count("SELECT config_version FROM edge_pairs").await,
        1,
        "the configuration was published once"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM ticket_events WHERE to_state = 'deployed'").await,
        1
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM mail_outbox WHERE idempotency_key LIKE '%:deployed'").await,
        1,
        "mailed once"
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_survives_a_control_plane_crash_on_sqlite() {
    a_deployment_survives_a_control_plane_crash(crate::common::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_survives_a_control_plane_crash_on_postgres() {
    a_deployment_survives_a_control_plane_crash(crate::common::Backend::Postgres).await;
}

/// A deployment that fails because a node is down (it never applies the configuration) is
/// rolled back; once the node is back, staff retry it and it deploys, once. Only staff retry,
/// only a failed ticket, and the failed run stays on record.
async fn a_failed_deployment_is_retried_once_its_cause_is_fixed(backend: crate::common::Backend) {
    let Some(app) =
        crate::common::TestApp::spawn_with(backend, |c| c.apply_timeout = Duration::from_secs(3))
            .await
    else {
        return;
    };
    let root = pki::root("Retry Root");
    let a = pki::leaf(&["www.example.com"], &root, Alg::P256);
    let ([one, two], ann) = serve_shop(&app, echo_backend().await, &[], &a, b"").await;
    let tess = app.api_user("tess@example.com", Role::Staff).await;
    let b = pki::leaf(&["www.example.com"], &root, Alg::Rsa2048);
    let b_id = ann.upload_id("shop", &b, b"").await;
    let ticket = ann.open_ticket("shop", "update", Some(b_id)).await;
    let mut two = two;
    two.child.kill().unwrap();
    two.child.wait().unwrap();
    let resp = tess
        .post(&format!("/api/v1/tickets/{ticket}/approve"), json!({}))
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    let deadline = Instant::now() + Duration::from_secs(30);
    let failed = loop {
        let t = ann.get(&format!("/api/v1/tickets/{ticket}")).await.json;
        if t["state"] == "failed" {
            break t;
        }
        assert!(Instant::now() < deadline, "the deployment never ended: {t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        failed["reason"].as_str().unwrap().contains("edge-x-2"),
        "{failed}"
    );
    let states: Vec<&str> = failed["deployment"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["not_verified", "not_applied"], "{failed}");
    let roots = roots(&root.pem());
    let (served, _) = tls_check(one.tls, "www.example.com", roots.clone())
        .await
        .unwrap();
    assert_eq!(
        served[0],
        a.fingerprint(),
        "rolled back to what it served before"
    );

    // Only staff retry, and only a failed ticket; approving it again is not the way.
    let resp = ann
        .post(&format!("/api/v1/tickets/{ticket}/retry"), json!({}))
        .await;
    assert_eq!(resp.status, StatusCode::FORBIDDEN, "{}", resp.body);
    let resp = tess
        .post(&format!("/api/v1/tickets/{ticket}/approve"), json!({}))
        .await;
    assert_eq!(
        (resp.status, resp.code()),
        (StatusCode::CONFLICT, "invalid_transition")
    );
    assert!(resp.body.contains("tickets:retry"), "{}", resp.body);

    // The node comes back and catches up; the retry deploys both nodes.
    let two = two.restart(&app.address);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pairs = tess.get("/api/v1/edge-pairs").await.json;
        let pair = pairs["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "edge-x")
            .unwrap()
            .clone();
        if pair["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["applied_version"] == pair["config_version"])
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the node never caught up: {pair}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Staff retry from the ticket page, which offers it with what stands in the way.
    let page_staff = app.signed_in_browser("tom@example.com", Role::Staff).await;
    let path = format!("/tickets/{ticket}");
    let page = page_staff.get(&path).await;
    assert!(
        page.body.contains("Retry deployment")
            && page
                .body
                .contains(&format!("action=\"/tickets/{ticket}/retry\"")),
        "{}",
        page.body
    );
    let resp = page_staff
        .submit_from(&path, &format!("/tickets/{ticket}/retry"), &[("otp", "")])
        .await;
    assert_eq!(
        (resp.status, resp.location()),
        (StatusCode::SEE_OTHER, path.as_str()),
        "{}",
        resp.body
    );
    let done = wait_ticket(&ann, ticket, "deployed").await;
    for node in done["deployment"]["nodes"].as_array().unwrap() {
        assert_eq!(
            node["state"], "verified",
            "the new run's outcome, not the old one's: {done}"
        );
        assert_eq!(node["fingerprint_sha256"], b.fingerprint());
    }
    for node in [&one, &two] {
        let (served, _) = tls_check(node.tls, "www.example.com", roots.clone())
            .await
            .unwrap();
        assert_eq!(served[0], b.fingerprint());
    }
    let steps: Vec<&str> = done["progress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["label"].as_str().unwrap())
        .collect();
    let failed_at = steps
        .iter()
        .position(|s| s.starts_with("Failed:"))
        .expect("the failed run stays");
    let retried_at = steps
        .iter()
        .position(|s| *s == "Retry approved by staff")
        .unwrap();
    assert!(
        failed_at < retried_at && steps.last() == Some(&"Deployed"),
        "{steps:?}"
    );
    let mails = |key: String| {
        let db = app.db.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM mail_outbox WHERE idempotency_key = $1",
            )
            .bind(key)
            .fetch_one(&db)
            .await
            .unwrap()
        }
    };
    for key in ["failed", "run2:approved", "deployed"] {
        assert_eq!(mails(format!("ticket:{ticket}:{key}")).await, 1, "{key}");
    }
    assert_eq!(
        app.count(
            "SELECT COUNT(*) FROM audit_events WHERE action = 'ticket.retried' AND outcome = 'ok'"
        )
        .await,
        1
    );
    let resp = tess
        .post(&format!("/api/v1/tickets/{ticket}/retry"), json!({}))
        .await;
    assert_eq!(
        (resp.status, resp.code()),
        (StatusCode::CONFLICT, "invalid_transition")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_deployment_is_retried_once_its_cause_is_fixed_on_sqlite() {
    a_failed_deployment_is_retried_once_its_cause_is_fixed(crate::common::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_deployment_is_retried_once_its_cause_is_fixed_on_postgres() {
    a_failed_deployment_is_retried_once_its_cause_is_fixed(crate::common::Backend::Postgres).await;
}
