//! `certdrop vault:rotate`: every key opens with the new identity only afterwards, and a
//! rotation killed midway leaves every key openable (and finishes when run again).

use certdrop::{accounts::Role, vault};
use reqwest::StatusCode;

use crate::{
    common::{TestApp, certdrop_command},
    db_test,
    pki::{self, Alg},
};

async fn sealed_keys(app: &TestApp) -> Vec<(String, String)> {
    sqlx::query_as::<_, (String, String)>(
        "SELECT sealed_key, vault_recipient FROM certificates ORDER BY id",
    )
    .fetch_all(&app.db)
    .await
    .unwrap()
}

fn identity_path(app: &TestApp) -> std::path::PathBuf {
    app.data_dir.path().join("vault-identity.age")
}

db_test! {
    async fn after_rotation_every_key_opens_with_the_new_identity_only(app) {
        let api = app.api_user("ann@example.com", Role::Customer).await;
        api.create_app("shop", &["www.example.com"]).await;
        let root = pki::root("Test Root");
        let mut keys = Vec::new();
        for alg in [Alg::P256, Alg::Rsa2048, Alg::Ed25519] {
            let leaf = pki::leaf(&["www.example.com"], &root, alg);
            assert_eq!(api.upload("shop", leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes(), b"").await.status, StatusCode::CREATED);
            keys.push(leaf.key_pem);
        }
        // A staff member's TOTP secret is sealed to the vault too.
        let staff_pw = app.user("sam@example.com", Role::Staff).await;
        let old = vault::read_identity(&identity_path(&app), None).unwrap();

        let out = certdrop_command(&["vault:rotate"], &app.server_env(), None);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("Resealed 4 secret(s)"), "{}", String::from_utf8_lossy(&out.stdout));

        let new = vault::read_identity(&identity_path(&app), None).unwrap();
        assert_ne!(new.to_public().to_string(), old.to_public().to_string());
        let remaining: Vec<_> = std::fs::read_dir(app.data_dir.path()).unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("vault-identity"))
            .collect();
        assert_eq!(remaining, ["vault-identity.age"], "the old identity is retired");
        for ((sealed, recipient), key) in sealed_keys(&app).await.iter().zip(&keys) {
            assert_eq!(recipient, &new.to_public().to_string());
            assert_eq!(vault::open_with(std::slice::from_ref(&new), sealed).unwrap().pem(), key.as_str());
            assert!(vault::open_with(std::slice::from_ref(&old), sealed).is_err(), "the old identity opens nothing");
            assert!(app.vault.open(sealed).is_ok(), "the running server picks up the new identity");
        }
        let totp_recipient: String = sqlx::query_scalar("SELECT totp_vault_recipient FROM users WHERE email = 'sam@example.com'").fetch_one(&app.db).await.unwrap();
        assert_eq!(totp_recipient, new.to_public().to_string());
        let token = app.api_anonymous()
            .post("/api/v1/tokens", serde_json::json!({"email": "sam@example.com", "password": staff_pw, "otp": app.otp("sam@example.com").await}))
            .await;
        assert_eq!(token.status, StatusCode::CREATED, "the second factor still works: {}", token.body);
        // A new upload on the running server is sealed to the new identity.
        let leaf = pki::leaf(&["www.example.com"], &root, Alg::P384);
        assert_eq!(api.upload("shop", leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes(), b"").await.status, StatusCode::CREATED);
        let (sealed, recipient) = sealed_keys(&app).await.pop().unwrap();
        assert_eq!(recipient, new.to_public().to_string());
        assert!(vault::open_with(&[new], &sealed).is_ok());
        assert_eq!(app.count("SELECT COUNT(*) FROM audit_events WHERE action = 'vault.rotated'").await, 1);
    }
}

db_test! {
    async fn a_rotation_killed_midway_leaves_every_key_openable(app) {
        let api = app.api_user("ann@example.com", Role::Customer).await;
        api.create_app("shop", &["www.example.com"]).await;
        let leaf = pki::leaf(&["www.example.com"], &pki::root("Test Root"), Alg::P256);
        assert_eq!(api.upload("shop", leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes(), b"").await.status, StatusCode::CREATED);
        // Many stored keys, so the rotation takes long enough to be interrupted.
        let rows = 3000;
        let mut tx = app.db.begin().await.unwrap();
        for i in 0..rows {
            sqlx::query(
                "INSERT INTO certificates (app_id, uploaded_by, common_name, sans, domains_covered, issuer, not_before, not_after, \
                 fingerprint_sha256, key_type, trusted, chain_len, warnings, chain_pem, sealed_key, vault_recipient, created_at) \
                 SELECT app_id, uploaded_by, common_name, sans, domains_covered, issuer, not_before, not_after, $1, key_type, trusted, \
                 chain_len, warnings, chain_pem, sealed_key, vault_recipient, created_at FROM certificates WHERE id = 1",
            )
            .bind(format!("copy-{i}"))
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
        let original: String = sqlx::query_scalar("SELECT vault_recipient FROM certificates WHERE id = 1").fetch_one(&app.db).await.unwrap();

        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_certdrop"))
            .arg("vault:rotate")
            .envs(app.server_env())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let moved = app.count(&format!("SELECT COUNT(*) FROM certificates WHERE vault_recipient <> '{original}'")).await;
            if moved > 0 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the rotation never started");
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        child.kill().unwrap(); // SIGKILL: no chance to clean up
        child.wait().unwrap();

        let moved = app.count(&format!("SELECT COUNT(*) FROM certificates WHERE vault_recipient <> '{original}'")).await;
        println!("killed after resealing {moved} of {} keys", rows + 1);
        assert!(moved < rows + 1, "the rotation was interrupted midway");
        let after_kill = vault::Vault::open_or_create(&identity_path(&app)).unwrap();
        for (sealed, _) in sealed_keys(&app).await {
            assert_eq!(after_kill.open(&sealed).unwrap().pem(), leaf.key_pem);
        }

        let out = certdrop_command(&["vault:rotate"], &app.server_env(), None);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let current = vault::read_identity(&identity_path(&app), None).unwrap();
        for (sealed, recipient) in sealed_keys(&app).await {
            assert_eq!(recipient, current.to_public().to_string());
            assert!(vault::open_with(std::slice::from_ref(&current), &sealed).is_ok());
        }
    }
}
