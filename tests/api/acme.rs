//! Automatic certificates against Pebble, a real ACME server, through two real edge nodes:
//! HTTP-01 and TLS-ALPN-01 answered by the pair, a CA's refusal ending the ticket `failed` in
//! the CA's words and a retry that succeeds, renewal with no failed request, the fallback that
//! replaces an uploaded certificate near expiry, and no plaintext key of the ACME account or
//! of any certificate at rest.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use certdrop::{
    accounts::Role,
    config::{AcmeChallenge, AcmeConfig},
};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    common::{Api, Backend, TestApp, upload_form},
    edge::{start_pair, wait_ticket},
    edge_support::{EdgeNode, echo_backend, roots, tls_check},
    keyscan, pebble,
    pki::{self, Alg, Validity},
};

const HOST: &str = "www.shop.test";

/// A control plane whose ACME directory is a Pebble about to start, looking for renewals
/// every second.
async fn spawn(backend: Backend, challenge: AcmeChallenge) -> Option<(TestApp, pebble::Plan)> {
    let plan = pebble::plan()?;
    let mut acme = AcmeConfig::new(plan.directory.parse().unwrap());
    acme.ca_roots = Some(plan.ca_roots.clone());
    acme.email = Some("certs@certdrop.test".into());
    acme.challenge = challenge;
    acme.scan_interval = Duration::from_secs(1);
    let app = TestApp::spawn_with(backend, move |c| c.acme = Some(acme)).await?;
    Some((app, plan))
}

/// The customer's app `shop` with its domain verified and proxied to a live backend.
async fn shop(app: &TestApp) -> Api {
    let ann = app.api_user("ann@example.com", Role::Customer).await;
    let backend = echo_backend().await;
    let resp = ann
        .post(
            "/api/v1/apps",
            json!({"name": "shop", "backend_url": format!("http://{backend}")}),
        )
        .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
    ann.add_domain("shop", HOST).await;
    ann
}

/// Requests through node 1 until told to stop: (answered, failed).
fn keep_requesting(
    node: &EdgeNode,
    roots_pem: &[String],
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<(u64, u64)>) {
    let mut builder = reqwest::Client::builder()
        .resolve(HOST, node.tls)
        .tls_built_in_root_certs(false)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10));
    for pem in roots_pem {
        builder =
            builder.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
    }
    let client = builder.build().unwrap();
    let url = format!("https://{HOST}:{}/", node.tls.port());
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let task = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed request: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
        })
    };
    (stop, task)
}

/// The newest ticket certdrop opened itself for `shop` (`renewal` or `fallback`), once deployed.
async fn automatic_ticket_deployed(ann: &Api, reason: &str, after: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let list = ann.get("/api/v1/tickets?app=shop").await.json;
        let found = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["automatic"] == reason && t["id"].as_i64().unwrap() > after);
        if let Some(t) = found {
            let id = t["id"].as_i64().unwrap();
            return wait_ticket(ann, id, "deployed").await;
        }
        assert!(
            Instant::now() < deadline,
            "no {reason} ticket was opened: {list}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every key certdrop holds (the ACME account's and each certificate's) is sealed, and no
/// fragment of any of them is in the control plane's files, the nodes' files or the database.
async fn no_plaintext_keys(app: &TestApp, nodes: &[EdgeNode; 2], uploaded: &[&pki::Leaf]) {
    let sealed: Vec<String> = sqlx::query_scalar(
        "SELECT sealed_credentials FROM acme_accounts UNION ALL SELECT sealed_key FROM certificates WHERE removed_at IS NULL \
         UNION ALL SELECT sealed_key FROM generated_keys UNION ALL SELECT sealed_key FROM node_keys",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert!(sealed.len() > 3);
    assert!(
        sealed
            .iter()
            .all(|s| s.starts_with("-----BEGIN AGE ENCRYPTED FILE-----")),
        "sealed at birth"
    );
    let mut needles = vec![b"PRIVATE KEY-----".to_vec()];
    // The customer's own keys (removed or not), as the test made them.
    for leaf in uploaded {
        needles.extend(keyscan::fragments(
            &leaf.key_pem,
            &keyscan::public_forms(&leaf.der),
        ));
    }
    // The account key, as the vault opens it (instant-acme's credentials: PKCS#8, base64url).
    let account: String = sqlx::query_scalar("SELECT sealed_credentials FROM acme_accounts")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let credentials: Value = serde_json::from_str(app.vault.open(&account).unwrap().pem()).unwrap();
    let pkcs8 = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        credentials["key_pkcs8"].as_str().unwrap(),
    )
    .unwrap();
    needles.push(credentials["key_pkcs8"].as_str().unwrap().as_bytes()[..40].to_vec());
    needles.extend(keyscan::fragments(
        &certdrop::certs::pem::encode("PRIVATE KEY", &pkcs8),
        &[],
    ));
    let certs: Vec<(String, String)> =
        sqlx::query_as("SELECT sealed_key, chain_pem FROM certificates WHERE source = 'acme' AND removed_at IS NULL")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert!(!certs.is_empty());
    for (sealed_key, chain_pem) in &certs {
        let key = app.vault.open(sealed_key).unwrap();
        let leaf = rustls_pki_types::pem::PemObject::pem_slice_iter(chain_pem.as_bytes())
            .next()
            .map(|c: Result<rustls_pki_types::CertificateDer<'static>, _>| c.unwrap().to_vec())
            .unwrap();
        needles.extend(keyscan::fragments(key.pem(), &keyscan::public_forms(&leaf)));
    }
    let mut files = keyscan::files_under(app.data_dir.path());
    for node in nodes {
        files.extend(keyscan::files_under(node.data_dir.path()));
        files.push(node.log.clone());
    }
    for file in files {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert_eq!(
            keyscan::find_any(&bytes, &needles),
            None,
            "a key fragment in {}",
            file.display()
        );
    }
    // On PostgreSQL the database is not under the data directory: read what it holds as text.
    let text: Vec<String> = sqlx::query_scalar(
        "SELECT label FROM deploy_steps UNION ALL SELECT detail FROM audit_events UNION ALL SELECT text_body FROM mail_outbox \
         UNION ALL SELECT COALESCE(reason, '') FROM tickets UNION ALL SELECT COALESCE(error, '') FROM acme_orders",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        keyscan::find_any(text.join("\n").as_bytes(), &needles),
        None
    );
}

/// The `certdrop` command line, signed in as `api`'s user.
fn cli(app: &TestApp, api: &Api, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_certdrop"))
        .args(args)
        .env("CERTDROP_URL", &app.address)
        .env("CERTDROP_TOKEN", api.token.as_deref().unwrap())
        .env("CERTDROP_CONFIG_DIR", app.data_dir.path().join("cli"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn issued_over_http01_refused_retried_and_renewed(backend: Backend) {
    let Some((app, plan)) = spawn(backend, AcmeChallenge::Http01).await else {
        return;
    };
    let (ops, keys) = app.crew().await;
    let nodes = start_pair(&app.address, ops, keys, "edge-acme").await;
    // The CA checks HTTP-01 on node 1's plain-HTTP listener; certificates live 30 s, so the
    // renewal is due 20 s after each issuance.
    let pebble = plan.start(app.dns.addr, nodes[0].http.port(), nodes[1].tls.port(), 30);
    let ann = shop(&app).await;
    // Plain HTTP is redirected to https: the CA's HTTP-01 request is answered first.
    let resp = ann
        .patch_json("/api/v1/apps/shop", json!({"force_https": true}))
        .await;
    assert_eq!(resp.json["force_https"], true, "{}", resp.body);
    let staff = app.api_user("sam@example.com", Role::Staff).await;

    // What cannot be ordered is refused up front, saying why.
    for refused in [
        json!({"app": "shop", "kind": "provision", "source": "acme", "certificate_id": 1}),
        json!({"app": "shop", "kind": "rollback", "source": "acme"}),
        json!({"app": "shop", "kind": "provision", "source": "letsencrypt"}),
    ] {
        let resp = ann.post("/api/v1/tickets", refused).await;
        assert_eq!(
            resp.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            resp.body
        );
        assert_eq!(resp.codes("errors"), ["invalid_request"], "{}", resp.body);
    }

    // The customer asks from the command line.
    let (ok, out, err) = cli(&app, &ann, &["certs:auto", "--app", "shop"]);
    assert!(
        ok && out.contains("(provision, automatic certificate)"),
        "{out}{err}"
    );
    let ticket: i64 = out
        .split('#')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let opened = ann.get(&format!("/api/v1/tickets/{ticket}")).await.json;
    assert_eq!(
        (opened["source"].as_str(), opened["certificate_id"].as_i64()),
        (Some("acme"), None)
    );

    // The domain does not resolve to the pair yet: the CA refuses, in its own words.
    let resp = staff
        .post(&format!("/api/v1/tickets/{ticket}/approve"), json!({}))
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    let failed = wait_for_state(&ann, ticket, "failed").await;
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.contains("certificate authority") && reason.contains(HOST),
        "{reason}"
    );
    assert!(
        failed["progress"]
            .to_string()
            .contains("Certificate ordered from the CA"),
        "{failed}"
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM acme_challenges").await,
        0,
        "challenges are taken down"
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM billing_events").await,
        0,
        "nothing billed"
    );

    // DNS fixed, staff retry: ordered, proved by both nodes, issued, deployed, verified.
    app.dns.address(HOST, "127.0.0.1");
    let resp = staff
        .post(&format!("/api/v1/tickets/{ticket}/retry"), json!({}))
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    let deployed = wait_ticket(&ann, ticket, "deployed").await;
    let progress = deployed["progress"].to_string();
    assert!(
        progress.contains("Both nodes answer the http-01 challenge"),
        "{progress}"
    );
    assert!(progress.contains("Certificate issued by"), "{progress}");
    let cert_id = deployed["certificate_id"].as_i64().unwrap();
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("http://{}/", nodes[0].http))
        .header("host", HOST)
        .send()
        .await
        .unwrap();
    assert_eq!(
        plain.status(),
        StatusCode::MOVED_PERMANENTLY,
        "the app forces https"
    );
    let cert = ann.get(&format!("/api/v1/certs/{cert_id}")).await.json;
    assert_eq!(cert["source"], "acme");
    assert!(cert["renews_at"].is_string(), "{cert}");
    let root = pebble.issuing_root().await;
    for node in &nodes {
        let (chain, _) = tls_check(node.tls, HOST, roots(&root)).await.unwrap();
        assert_eq!(chain[0], cert["fingerprint_sha256"].as_str().unwrap());
    }
    assert_eq!(
        app.count("SELECT COUNT(*) FROM billing_events").await,
        1,
        "the provision is billed once"
    );

    // Renewal at two thirds of the life, with traffic flowing: no request fails.
    let (stop, load) = keep_requesting(&nodes[0], std::slice::from_ref(&root));
    let renewed = automatic_ticket_deployed(&ann, "renewal", ticket).await;
    stop.store(true, Ordering::Relaxed);
    let (answered, failed_requests) = load.await.unwrap();
    assert!(answered > 10, "{answered} requests answered");
    assert_eq!(failed_requests, 0, "no request fails during the renewal");
    let new_cert = renewed["certificate_id"].as_i64().unwrap();
    assert_ne!(new_cert, cert_id);
    let listed = ann.get("/api/v1/apps/shop/certs").await.json;
    let old = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == cert_id)
        .unwrap();
    assert_eq!(old["last_renewal"]["outcome"], "succeeded", "{old}");
    let fingerprint: String =
        sqlx::query_scalar("SELECT fingerprint_sha256 FROM certificates WHERE id = $1")
            .bind(new_cert)
            .fetch_one(&app.db)
            .await
            .unwrap();
    for node in &nodes {
        let (chain, _) = tls_check(node.tls, HOST, roots(&root)).await.unwrap();
        assert_eq!(chain[0], fingerprint);
    }
    // Renewals are mailed only when they fail; the billing is untouched.
    assert_eq!(
        app.count(&format!(
            "SELECT COUNT(*) FROM mail_outbox WHERE idempotency_key = 'ticket:{}:deployed'",
            renewed["id"]
        ))
        .await,
        0
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM billing_events").await, 1);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM audit_events WHERE action = 'acme.account_created'")
            .await,
        1,
        "one account, reused"
    );
    // Prometheus sees when the served certificate renews, next to when it expires.
    let metrics = keys.get("/metrics").await.body;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("certdrop_certificate_renewal_timestamp_seconds{")
                && l.contains("app=\"shop\"")
        ),
        "{metrics}"
    );
    let (ok, out, _) = cli(&app, &ann, &["certs", "--app", "shop"]);
    assert!(
        ok && out.contains("acme") && out.contains("last: succeeded") && out.contains("renews 20"),
        "{out}"
    );
    no_plaintext_keys(&app, &nodes, &[]).await;
}

async fn wait_for_state(api: &Api, id: i64, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let t = api.get(&format!("/api/v1/tickets/{id}")).await.json;
        if t["state"] == want {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "ticket #{id} is still {}: {t}",
            t["state"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn an_expiring_upload_falls_back_to_acme_over_tls_alpn01(backend: Backend) {
    let Some((app, plan)) = spawn(backend, AcmeChallenge::TlsAlpn01).await else {
        return;
    };
    let (ops, keys) = app.crew().await;
    let nodes = start_pair(&app.address, ops, keys, "edge-fallback").await;
    // TLS-ALPN-01 on node 2's TLS listener; HTTP-01 would go to a port nobody listens on.
    let pebble = plan.start(app.dns.addr, 9, nodes[1].tls.port(), 3600);
    let ann = shop(&app).await;
    app.dns.address(HOST, "127.0.0.1");
    let staff = app.api_user("sam@example.com", Role::Staff).await;
    assert_eq!(
        ann.get("/api/v1/apps/shop").await.json["acme_fallback"],
        true,
        "on by default"
    );

    // In the browser: the app page offers an automatic certificate, and the form's refusal
    // (no verified domain yet) comes back on the page in plain words.
    let cat = app
        .signed_in_browser("cat@example.com", Role::Customer)
        .await;
    let resp = cat
        .submit(
            "/apps",
            "/apps",
            &[("name", "blog"), ("backend_url", "http://127.0.0.1:9")],
        )
        .await;
    assert_eq!(resp.status, StatusCode::SEE_OTHER, "{}", resp.body);
    let page = cat.get("/apps/blog").await.body;
    assert!(
        page.contains("Request provisioning with an automatic certificate"),
        "{page}"
    );
    let resp = cat
        .submit(
            "/apps/blog",
            "/tickets",
            &[("app", "blog"), ("kind", "provision"), ("source", "acme")],
        )
        .await;
    assert_eq!(resp.status, StatusCode::SEE_OTHER, "{}", resp.body);
    let page = cat.get(resp.location()).await.body;
    assert!(page.contains("is verified yet"), "{page}");

    // The customer's own certificate, three days from expiry.
    let ca = pki::root("Customer CA");
    let leaf = pki::leaf_with(
        &[HOST],
        &ca,
        Alg::P256,
        Validity {
            from_days: -60,
            to_days: 3,
        },
    );
    let resp = ann
        .multipart(
            "/api/v1/apps/shop/certs",
            upload_form(
                leaf.cert_pem.as_bytes(),
                leaf.key_pem.as_bytes(),
                b"",
                false,
            ),
        )
        .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
    let uploaded = resp.json["id"].as_i64().unwrap();
    let ticket = ann.open_ticket("shop", "provision", Some(uploaded)).await;
    let resp = staff
        .post(&format!("/api/v1/tickets/{ticket}/approve"), json!({}))
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    wait_ticket(&ann, ticket, "deployed").await;
    let root = pebble.issuing_root().await;
    let (stop, load) = keep_requesting(&nodes[0], &[ca.pem(), root.clone()]);

    // Within a scan, certdrop replaces it: TLS-ALPN-01 answered by the pair, no failed request.
    let fallback = automatic_ticket_deployed(&ann, "fallback", ticket).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (answered, failed_requests) = load.await.unwrap();
    assert!(answered > 10, "{answered} requests answered");
    assert_eq!(failed_requests, 0, "no request fails during the switch");
    assert!(
        fallback["progress"].to_string().contains("tls-alpn-01"),
        "{fallback}"
    );
    let acme_cert = fallback["certificate_id"].as_i64().unwrap();
    let fingerprint: String =
        sqlx::query_scalar("SELECT fingerprint_sha256 FROM certificates WHERE id = $1")
            .bind(acme_cert)
            .fetch_one(&app.db)
            .await
            .unwrap();
    for node in &nodes {
        let (chain, _) = tls_check(node.tls, HOST, roots(&root)).await.unwrap();
        assert_eq!(chain[0], fingerprint);
    }
    let listed = ann.get("/api/v1/apps/shop/certs").await.json;
    let old = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == uploaded)
        .unwrap();
    assert_eq!(
        (
            old["source"].as_str(),
            old["last_renewal"]["outcome"].as_str()
        ),
        (Some("uploaded"), Some("succeeded")),
        "{old}"
    );
    // The customer and staff were told.
    let told: Vec<String> = sqlx::query_scalar(
        "SELECT to_address FROM mail_outbox WHERE idempotency_key LIKE $1 ORDER BY to_address",
    )
    .bind(format!("ticket:{}:fallback:%", fallback["id"]))
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert!(
        told.contains(&"ann@example.com".to_string())
            && told.contains(&"sam@example.com".to_string()),
        "{told:?}"
    );

    // A new upload takes over again, and is left alone (it is far from expiry).
    let fresh = pki::leaf(&[HOST], &ca, Alg::P256);
    let resp = ann
        .multipart(
            "/api/v1/apps/shop/certs",
            upload_form(
                fresh.cert_pem.as_bytes(),
                fresh.key_pem.as_bytes(),
                b"",
                false,
            ),
        )
        .await;
    let update = ann
        .open_ticket("shop", "update", resp.json["id"].as_i64())
        .await;
    staff
        .post(&format!("/api/v1/tickets/{update}/approve"), json!({}))
        .await;
    wait_ticket(&ann, update, "deployed").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let automatic = app
        .count("SELECT COUNT(*) FROM tickets WHERE automatic IS NOT NULL")
        .await;
    assert_eq!(
        automatic, 1,
        "no further fallback for a certificate far from expiry"
    );
    let (chain, _) = tls_check(nodes[1].tls, HOST, roots(&ca.pem()))
        .await
        .unwrap();
    assert_eq!(chain[0], fresh.fingerprint());
    let fresh_id = resp_id(&fresh, &app).await;

    // With the fallback off, a served certificate cannot be removed: it would leave nothing.
    let resp = ann
        .patch_json("/api/v1/apps/shop", json!({"acme_fallback": false}))
        .await;
    assert_eq!(resp.json["acme_fallback"], false, "{}", resp.body);
    let resp = ann.delete(&format!("/api/v1/certs/{fresh_id}")).await;
    assert_eq!(
        resp.codes("errors"),
        ["certificate_in_use"],
        "{}",
        resp.body
    );
    ann.patch("/api/v1/apps/shop", json!({"acme_fallback": true}))
        .await;

    // Removing a certificate the app does not serve wipes its key at once.
    let resp = ann.delete(&format!("/api/v1/certs/{uploaded}")).await;
    assert_eq!(
        (resp.status, &resp.json),
        (StatusCode::OK, &json!({"removed": true})),
        "{}",
        resp.body
    );
    let gone: String = sqlx::query_scalar("SELECT sealed_key FROM certificates WHERE id = $1")
        .bind(uploaded)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(gone, "", "its key is wiped");
    let resp = ann
        .post(
            "/api/v1/tickets",
            json!({"app": "shop", "kind": "update", "certificate_id": uploaded}),
        )
        .await;
    assert_eq!(
        resp.codes("errors"),
        ["certificate_removed"],
        "{}",
        resp.body
    );
    // Uploaded again, it comes back with its key sealed anew.
    let resp = ann
        .multipart(
            "/api/v1/apps/shop/certs",
            upload_form(
                leaf.cert_pem.as_bytes(),
                leaf.key_pem.as_bytes(),
                b"",
                false,
            ),
        )
        .await;
    assert_eq!(
        (
            resp.status,
            resp.json["id"].as_i64(),
            resp.json["removed_at"].is_null()
        ),
        (StatusCode::CREATED, Some(uploaded), true),
        "{}",
        resp.body
    );
    let resp = ann.delete(&format!("/api/v1/certs/{uploaded}")).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    // Staff never remove a customer's certificate.
    assert_eq!(
        staff
            .delete(&format!("/api/v1/certs/{fresh_id}"))
            .await
            .status,
        StatusCode::FORBIDDEN
    );

    // Removing the served one: the fallback replaces it, with traffic flowing and no failure.
    let (stop, load) = keep_requesting(&nodes[0], &[ca.pem(), root.clone()]);
    let resp = ann.delete(&format!("/api/v1/certs/{fresh_id}")).await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.body);
    let replacing = resp.json["replaced_by_ticket"].as_i64().unwrap();
    let replaced = wait_ticket(&ann, replacing, "deployed").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (answered, failed_requests) = load.await.unwrap();
    assert!(answered > 10, "{answered} requests answered");
    assert_eq!(
        failed_requests, 0,
        "no request fails while a removed certificate is replaced"
    );
    assert_eq!(replaced["automatic"], "fallback");
    let fingerprint: String =
        sqlx::query_scalar("SELECT fingerprint_sha256 FROM certificates WHERE id = $1")
            .bind(replaced["certificate_id"].as_i64().unwrap())
            .fetch_one(&app.db)
            .await
            .unwrap();
    for node in &nodes {
        let (chain, _) = tls_check(node.tls, HOST, roots(&root)).await.unwrap();
        assert_eq!(chain[0], fingerprint);
    }
    let listed = ann.get("/api/v1/apps/shop/certs").await.json;
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["id"] != fresh_id && c["id"] != uploaded),
        "removed ones are not listed: {listed}"
    );
    no_plaintext_keys(&app, &nodes, &[&leaf, &fresh]).await;
}

/// The id of the stored certificate `leaf`.
async fn resp_id(leaf: &pki::Leaf, app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT id FROM certificates WHERE fingerprint_sha256 = $1")
        .bind(leaf.fingerprint())
        .fetch_one(&app.db)
        .await
        .unwrap()
}

macro_rules! both_databases {
    ($($name:ident),*) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(crate::common::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(crate::common::Backend::Postgres).await;
            }
        }
    )*};
}

both_databases!(
    issued_over_http01_refused_retried_and_renewed,
    an_expiring_upload_falls_back_to_acme_over_tls_alpn01
);
