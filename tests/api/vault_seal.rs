//! The vault sealed at rest, run as an operator runs it: `vault:init` splits the identity into
//! shares, `certdrop serve` starts sealed, key holders unseal it (API, CLI), an admin seals it
//! again, `vault:rekey` hands out new shares, a PKCS#11 token (SoftHSM2) unseals it at start,
//! and several control planes on one PostgreSQL are each unsealed at their own address.

use std::path::Path;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    common::{Api, Backend, ServerProcess, TestDatabase, certdrop_command, cli_user},
    edge::{start_pair, wait_ticket},
    edge_support::echo_backend,
    pki::{self, Alg},
};

/// Every file under `dir`, read whole: none may hold an age identity in the clear.
fn assert_no_identity_in_the_clear(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            assert_no_identity_in_the_clear(&path);
        } else {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains("AGE-SECRET-KEY-"),
                "{} holds an age identity in the clear",
                path.display()
            );
        }
    }
}

fn run_ok(args: &[&str], env: &[(&str, String)], stdin: Option<&str>) -> String {
    let out = certdrop_command(args, env, stdin);
    assert!(
        out.status.success(),
        "certdrop {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn shares_of(printed: &str) -> Vec<String> {
    let json: Value = serde_json::from_str(printed.trim()).expect("--json prints JSON");
    json["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

async fn give(server: &str, share: &str) -> crate::common::Resp {
    Api::new(server)
        .post("/api/v1/vault/unseal", json!({"share": share}))
        .await
}

async fn ready(server: &str) -> (StatusCode, Value) {
    let resp = Api::new(server).get("/readyz").await;
    (resp.status, resp.json)
}

fn free_listen() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

async fn sealed_at_rest_journey(backend: Backend) {
    let data = tempfile::tempdir().unwrap();
    let Some(database) = TestDatabase::new(backend, data.path()).await else {
        return;
    };
    let listen = free_listen();
    let env = [("CERTDROP_LISTEN", listen.as_str())];
    let cli_env = vec![
        ("CERTDROP_DATA_DIR", data.path().display().to_string()),
        ("CERTDROP_DATABASE_URL", database.url.clone()),
    ];
    let mut server = ServerProcess::start(data.path(), &database.url, &env);
    let (status, body) = ready(&server.address).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body["vault"]
            .as_str()
            .unwrap()
            .contains("not sealed at rest"),
        "the first run says plainly that keys are not sealed at rest: {body}"
    );
    let ann = server.api(
        cli_user(&server.address, &cli_env, "ann@example.com", "customer")
            .await
            .token,
    );
    let sam = cli_user(&server.address, &cli_env, "sam@example.com", "staff").await;
    let ops = cli_user(&server.address, &cli_env, "ops@example.com", "staff").await;
    let keys = cli_user(&server.address, &cli_env, "keys@example.com", "admin").await;
    let backend_addr = echo_backend().await;
    ann.post(
        "/api/v1/apps",
        json!({"name": "shop", "backend_url": format!("http://{backend_addr}")}),
    )
    .await;
    ann.add_domain("shop", "www.example.com").await;
    let root = pki::root("Sealed Vault Root");
    let leaf = pki::leaf(&["www.example.com"], &root, Alg::P256);
    let before_split = ann.upload_id("shop", &leaf, b"").await;
    server.stop();

    // The split: the identity rests wrapped; nothing on disk or in a backup opens a key.
    let shares = shares_of(&run_ok(
        &["vault:init", "--shares", "3", "--threshold", "2", "--json"],
        &cli_env,
        None,
    ));
    assert_eq!(shares.len(), 3);
    assert!(shares.iter().all(|s| s.starts_with("cdshare1-")));
    assert_no_identity_in_the_clear(data.path());
    let again = certdrop_command(&["vault:init", "--json"], &cli_env, None);
    assert!(!again.status.success(), "a split vault is not split again");
    let backup = tempfile::tempdir().unwrap();
    let backup_dir = backup.path().join("b");
    run_ok(
        &["backup", "--to", backup_dir.to_str().unwrap()],
        &cli_env,
        None,
    );
    assert!(backup_dir.join("vault-identity.age.seal").is_file());
    assert_no_identity_in_the_clear(&backup_dir);

    // A sealed start.
    let mut server = ServerProcess::start(data.path(), &database.url, &env);
    let anyone = Api::new(&server.address);
    assert_eq!(anyone.get("/healthz").await.status, StatusCode::OK);
    let (status, body) = ready(&server.address).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["sealed"], true);
    let seal = anyone.get("/api/v1/vault").await.json;
    assert_eq!(
        seal,
        json!({"sealed": true, "mode": "shamir", "threshold": 2, "shares": 3, "progress": 0})
    );
    let other = pki::leaf(&["www.example.com"], &root, Alg::P256);
    let refused = ann
        .upload(
            "shop",
            other.cert_pem.as_bytes(),
            other.key_pem.as_bytes(),
            b"",
        )
        .await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.body
    );
    assert_eq!(refused.code(), "vault_sealed");
    assert!(refused.body.contains("vault:unseal"), "{}", refused.body);
    let page = crate::common::Browser::new(&server.address)
        .get("/login")
        .await;
    assert!(
        page.body.contains("The vault is sealed"),
        "every page says so"
    );

    // Unseal: a malformed share is never counted, K−1 never unseal, a wrong combination starts
    // again.
    let typo = format!("{}0", &shares[0][..shares[0].len() - 1]);
    let resp = give(&server.address, &typo).await;
    assert_eq!(
        (resp.status, resp.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_share"),
        "{}",
        resp.body
    );
    let resp = give(&server.address, &shares[0]).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    assert_eq!(
        (resp.json["sealed"].clone(), resp.json["progress"].clone()),
        (json!(true), json!(1))
    );
    let resp = give(&server.address, &shares[0]).await;
    assert_eq!(resp.json["progress"], 1, "the same share twice counts once");
    let mut forged = certdrop::vault::shamir::Share::parse(&shares[1]).unwrap();
    forged.data[3] ^= 0x5a;
    let resp = give(&server.address, &forged.encode()).await;
    assert_eq!(
        (resp.status, resp.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "unseal_failed"),
        "{}",
        resp.body
    );
    let seal = anyone.get("/api/v1/vault").await.json;
    assert_eq!(
        (seal["sealed"].clone(), seal["progress"].clone()),
        (json!(true), json!(0))
    );
    give(&server.address, &shares[2]).await;
    let resp = give(&server.address, &shares[0]).await;
    assert_eq!(resp.json["sealed"], false, "{}", resp.body);
    assert_eq!(ready(&server.address).await.0, StatusCode::OK);

    // The key uploaded before the split deploys, sealed to both nodes.
    let _nodes = start_pair(&server.address, &ops, &keys, "edge-v").await;
    let ticket = ann
        .open_ticket("shop", "provision", Some(before_split))
        .await;
    let resp = sam
        .post(&format!("/api/v1/tickets/{ticket}/approve"), json!({}))
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    wait_ticket(&ann, ticket, "deployed").await;

    // Seal again (an admin with a fresh code), then unseal from the command line.
    assert_eq!(
        sam.post("/api/v1/vault/seal", json!({})).await.status,
        StatusCode::FORBIDDEN
    );
    let sealed = keys.post("/api/v1/vault/seal", json!({})).await;
    assert_eq!(sealed.status, StatusCode::OK, "{}", sealed.body);
    assert_eq!(sealed.json["sealed"], true);
    let refused = ann
        .upload(
            "shop",
            other.cert_pem.as_bytes(),
            other.key_pem.as_bytes(),
            b"",
        )
        .await;
    assert_eq!(refused.code(), "vault_sealed");
    for share in &shares[1..] {
        run_ok(
            &["vault:unseal", "--url", &server.address],
            &[],
            Some(share),
        );
    }
    assert_eq!(ready(&server.address).await.0, StatusCode::OK);

    // New shares: the old ones stop counting.
    let input = format!("{}\n{}\n", shares[0], shares[2]);
    let fresh = shares_of(&run_ok(
        &["vault:rekey", "--shares", "2", "--threshold", "2", "--json"],
        &cli_env,
        Some(&input),
    ));
    assert_eq!(fresh.len(), 2);
    keys.post("/api/v1/vault/seal", json!({})).await;
    let old = give(&server.address, &shares[0]).await;
    assert_eq!(old.code(), "invalid_share", "{}", old.body);
    give(&server.address, &fresh[0]).await;
    assert_eq!(give(&server.address, &fresh[1]).await.json["sealed"], false);
    server.stop();

    // Audited, never with a share.
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
        count("SELECT COUNT(*) FROM audit_events WHERE action = 'vault.unsealed'").await,
        3
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM audit_events WHERE action = 'vault.sealed'").await,
        2
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM audit_events WHERE action = 'vault.unseal_failed'").await,
        1
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM audit_events WHERE action IN ('vault.split', 'vault.rekeyed')")
            .await,
        2
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM audit_events WHERE detail LIKE '%cdshare1%'").await,
        0
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vault_sealed_at_rest_on_sqlite() {
    sealed_at_rest_journey(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vault_sealed_at_rest_on_postgres() {
    sealed_at_rest_journey(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_control_planes_on_postgresql_are_each_unsealed_at_their_own_address() {
    let data = tempfile::tempdir().unwrap();
    let Some(database) = TestDatabase::new(Backend::Postgres, data.path()).await else {
        return;
    };
    let cli_env = vec![
        ("CERTDROP_DATA_DIR", data.path().display().to_string()),
        ("CERTDROP_DATABASE_URL", database.url.clone()),
    ];
    let shares = shares_of(&run_ok(
        &["vault:init", "--shares", "2", "--threshold", "2", "--json"],
        &cli_env,
        None,
    ));
    let servers: Vec<ServerProcess> = (0..3)
        .map(|_| ServerProcess::start(data.path(), &database.url, &[]))
        .collect();
    for (i, server) in servers.iter().enumerate() {
        if i == 0 {
            // In the browser: the unseal page, one key holder after the other.
            let browser = crate::common::Browser::new(&server.address);
            let page = browser.get("/vault/unseal").await;
            assert!(page.body.contains("0</strong> of"), "{}", page.body);
            let wrong = browser
                .submit(
                    "/vault/unseal",
                    "/vault/unseal",
                    &[("share", "cdshare1-oops")],
                )
                .await;
            assert_eq!(wrong.status, StatusCode::UNPROCESSABLE_ENTITY);
            assert!(wrong.body.contains("wrong or missing"), "{}", wrong.body);
            for share in &shares {
                let resp = browser
                    .submit("/vault/unseal", "/vault/unseal", &[("share", share)])
                    .await;
                assert_eq!(resp.status, StatusCode::SEE_OTHER, "{}", resp.body);
            }
            assert!(
                browser
                    .get("/vault/unseal")
                    .await
                    .body
                    .contains("The vault is unsealed")
            );
        } else {
            for share in &shares {
                give(&server.address, share).await;
            }
        }
        assert_eq!(ready(&server.address).await.0, StatusCode::OK);
        for later in &servers[i + 1..] {
            let (status, body) = ready(&later.address).await;
            assert_eq!(
                status,
                StatusCode::SERVICE_UNAVAILABLE,
                "each instance is unsealed on its own"
            );
            assert_eq!(body["sealed"], true);
        }
    }
}

/// The PKCS#11 module of SoftHSM2, where Debian puts it.
fn softhsm_module() -> Option<&'static str> {
    [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
}

async fn auto_unseal_with_softhsm(backend: Backend) {
    let available = softhsm_module().is_some()
        && std::process::Command::new("softhsm2-util")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !crate::common::require_or_skip("softhsm2 (apt-get install softhsm2)", available) {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let Some(database) = TestDatabase::new(backend, data.path()).await else {
        return;
    };
    // A token of this test's own, in a directory of its own.
    let hsm = tempfile::tempdir().unwrap();
    let tokens = hsm.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = hsm.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    let init = std::process::Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            "certdrop",
            "--pin",
            "1234",
            "--so-pin",
            "5678",
        ])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let pin_file = hsm.path().join("pin");
    std::fs::write(&pin_file, "1234").unwrap();
    let token_env = [
        ("SOFTHSM2_CONF", conf.display().to_string()),
        (
            "CERTDROP_VAULT_PKCS11_MODULE",
            softhsm_module().unwrap().to_string(),
        ),
        ("CERTDROP_VAULT_PKCS11_TOKEN", "certdrop".to_string()),
        (
            "CERTDROP_VAULT_PKCS11_PIN_FILE",
            pin_file.display().to_string(),
        ),
    ];
    let mut cli_env = vec![
        ("CERTDROP_DATA_DIR", data.path().display().to_string()),
        ("CERTDROP_DATABASE_URL", database.url.clone()),
    ];
    cli_env.extend(token_env.iter().cloned());
    let shares = shares_of(&run_ok(
        &[
            "vault:init",
            "--pkcs11",
            "--shares",
            "2",
            "--threshold",
            "2",
            "--json",
        ],
        &cli_env,
        None,
    ));
    assert_no_identity_in_the_clear(data.path());

    // The control plane unseals itself at start through the token.
    let server_env: Vec<(&str, &str)> = token_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut server = ServerProcess::start(data.path(), &database.url, &server_env);
    let (status, body) = ready(&server.address).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seal = Api::new(&server.address).get("/api/v1/vault").await.json;
    assert_eq!(
        (seal["mode"].clone(), seal["sealed"].clone()),
        (json!("pkcs11"), json!(false))
    );
    // `vault:rotate` works with the token alone.
    run_ok(&["vault:rotate"], &cli_env, Some(""));
    server.stop();

    // The token is gone: the control plane starts sealed, and the shares still open it.
    std::fs::remove_dir_all(&tokens).unwrap();
    std::fs::create_dir(&tokens).unwrap();
    let server = ServerProcess::start(data.path(), &database.url, &server_env);
    assert_eq!(
        ready(&server.address).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    for share in &shares {
        give(&server.address, share).await;
    }
    assert_eq!(ready(&server.address).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pkcs11_token_unseals_at_start_and_shares_still_open_it_without_the_token_on_sqlite() {
    auto_unseal_with_softhsm(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pkcs11_token_unseals_at_start_and_shares_still_open_it_without_the_token_on_postgres() {
    auto_unseal_with_softhsm(Backend::Postgres).await;
}
