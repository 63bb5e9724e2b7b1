//! `certdrop backup`: refused into a directory others can open; on SQLite a consistent online
//! copy that, used as a data directory, serves the restored keys from two real edge nodes.

use std::{os::unix::fs::PermissionsExt, process::Command};

use certdrop::accounts::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    common::{Api, Backend, ServerProcess, TestApp},
    db_test,
    edge::{start_pair, wait_ticket},
    edge_support::{roots, tls_check},
    pki,
};

fn backup(app: &TestApp, to: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_certdrop"))
        .args(["backup", "--to"])
        .arg(to)
        .envs(app.server_env())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

db_test! {
    async fn a_backup_is_private_complete_and_never_overwrites_one(app) {
        let parent = tempfile::tempdir().unwrap();
        let open = parent.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (ok, text) = backup(&app, &open);
        assert!(!ok && text.contains("mode 755") && text.contains("chmod 700"), "{text}");
        assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0, "nothing written there");

        let to = parent.path().join("nightly");
        let (ok, text) = backup(&app, &to);
        assert!(ok, "{text}");
        assert_eq!(std::fs::metadata(&to).unwrap().permissions().mode() & 0o777, 0o700);
        let manifest: Value = serde_json::from_slice(&std::fs::read(to.join("backup.json")).unwrap()).unwrap();
        let files: Vec<&str> = manifest["files"].as_array().unwrap().iter().map(|f| f["file"].as_str().unwrap()).collect();
        for file in &files {
            let mode = std::fs::metadata(to.join(file)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{file}");
        }
        match app.backend() {
            Backend::Sqlite => assert_eq!(files, ["vault-identity.age", "certdrop.db"]),
            Backend::Postgres => {
                assert_eq!(files, ["vault-identity.age"]);
                assert!(text.contains("pg_dump"), "{text}");
            }
        }
        let (ok, text) = backup(&app, &to);
        assert!(!ok && text.contains("already holds a backup"), "{text}");
    }
}

/// Backed up while serving, restored as a fresh data directory: a new control plane process
/// opens the restored keys and deploys one to a new pair, whose nodes serve it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_serves_its_keys() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let (ops, keys) = app.crew().await;
    let (ops, keys) = (ops.clone(), keys.clone());
    let ann = app.api_user("ann@example.com", Role::Customer).await;
    let sam = app.api_user("sam@example.com", Role::Staff).await;
    ann.create_app("shop", &["www.example.com"]).await;
    let root = pki::root("Backup Root");
    let leaf = pki::leaf(&["www.example.com"], &root, pki::Alg::P256);
    let cert = ann.upload_id("shop", &leaf, b"").await;

    let saved = tempfile::tempdir().unwrap();
    let to = saved.path().join("backup");
    let (ok, text) = backup(&app, &to);
    assert!(ok, "{text}");

    let restored = tempfile::tempdir().unwrap();
    for file in ["certdrop.db", "vault-identity.age"] {
        std::fs::copy(to.join(file), restored.path().join(file)).unwrap();
    }
    let url = format!("sqlite://{}", restored.path().join("certdrop.db").display());
    let server = ServerProcess::start(restored.path(), &url, &[]);
    let at = |api: &Api| Api {
        base: server.address.clone(),
        zone: None,
        ..api.clone()
    };
    let (ops, keys, ann, sam) = (at(&ops), at(&keys), at(&ann), at(&sam));
    let nodes = start_pair(&server.address, &ops, &keys, "edge-restored").await;
    let ticket = ann.open_ticket("shop", "provision", Some(cert)).await;
    let resp = sam
        .post(&format!("/api/v1/tickets/{ticket}/approve"), json!({}))
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    wait_ticket(&ann, ticket, "deployed").await;
    for node in &nodes {
        let (chain, _) = tls_check(node.tls, "www.example.com", roots(&root.pem()))
            .await
            .unwrap();
        assert_eq!(chain[0], leaf.fingerprint(), "the restored key serves");
    }
}
