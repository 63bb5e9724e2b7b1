//! The `certdrop` binary as a user runs it: server verbs on the database, client verbs over HTTP.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use serde_json::Value;

use crate::{common::TestApp, db_test};

fn certdrop(
    app: &TestApp,
    config_dir: &std::path::Path,
    args: &[&str],
    stdin: Option<&str>,
) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_certdrop"));
    cmd.args(args)
        .envs(app.server_env())
        .env("CERTDROP_URL", &app.address)
        .env("CERTDROP_CONFIG_DIR", config_dir)
        .env_remove("CERTDROP_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

db_test! {
    async fn the_cli_creates_a_user_logs_in_and_manages_apps_and_domains(app) {
        let config = tempfile::tempdir().unwrap();
        let dir = config.path();
        let (ok, out, err) = certdrop(&app, dir, &["users:create", "--email", "ann@example.com", "--role", "customer"], None);
        assert!(ok, "{err}");
        let password = out.lines().find_map(|l| l.split(": ").nth(1)).unwrap().trim().to_string();
        assert!(password.len() >= 12);
        let (ok, _, err) = certdrop(&app, dir, &["users:create", "--email", "ann@example.com", "--role", "customer"], None);
        assert!(!ok && err.contains("already exists"), "{err}");

        let (ok, out, err) = certdrop(&app, dir, &["login", "--email", "ann@example.com", "--password-stdin"], Some(&format!("{password}\n")));
        assert!(ok, "{err}");
        assert!(out.contains("Signed in"));
        assert!(!out.contains("cdp_"), "the token is not printed");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("credentials.json")).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the credentials file is private");
        }

        let (ok, out, err) = certdrop(&app, dir, &["apps:create", "shop", "--backend", "http://10.0.0.5:8000"], None);
        assert!(ok, "{err}");
        assert!(out.contains("Created shop"));
        let (ok, _, err) = certdrop(&app, dir, &["domains:add", "www.example.com", "--app", "shop"], None);
        assert!(ok, "{err}");
        let (ok, out, _) = certdrop(&app, dir, &["apps", "--json"], None);
        assert!(ok);
        let apps: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(apps[0]["domains"][0], "www.example.com");
        let (ok, out, _) = certdrop(&app, dir, &["domains", "--app", "shop"], None);
        assert!(ok && out.contains("www.example.com") && out.contains("Domain"));
        let (ok, _, err) = certdrop(&app, dir, &["domains:add", "bad host", "--app", "shop"], None);
        assert!(!ok && err.contains("invalid_hostname"), "{err}");
        let (ok, _, _) = certdrop(&app, dir, &["domains:remove", "www.example.com", "--app", "shop"], None);
        assert!(ok);
        let (ok, out, _) = certdrop(&app, dir, &["domains", "--app", "shop"], None);
        assert!(ok && out.contains("No domains yet"));
    }
}

#[test]
fn serve_refuses_a_bad_database_url_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_certdrop"))
        .arg("serve")
        .env("CERTDROP_DATA_DIR", dir.path())
        .env("CERTDROP_DATABASE_URL", "mysql://root@localhost/x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CERTDROP_DATABASE_URL: unsupported scheme `mysql`"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_certdrop"))
        .arg("serve")
        .env("CERTDROP_DATA_DIR", dir.path())
        .env("CERTDROP_LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("CERTDROP_LISTEN"));
    // A database that cannot be opened is named, path and all.
    let missing = dir.path().join("no-such-dir").join("certdrop.db");
    let out = Command::new(env!("CARGO_BIN_EXE_certdrop"))
        .args([
            "users:create",
            "--email",
            "x@example.com",
            "--role",
            "customer",
        ])
        .env("CERTDROP_DATA_DIR", dir.path())
        .env(
            "CERTDROP_DATABASE_URL",
            format!("sqlite://{}", missing.display()),
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&missing.display().to_string()),
        "{err}"
    );
}

db_test! {
    async fn the_cli_uploads_a_certificate_and_shows_it_like_heroku_certs(app) {
        let config = tempfile::tempdir().unwrap();
        let dir = config.path();
        let (ok, out, _) = certdrop(&app, dir, &["users:create", "--email", "ann@example.com", "--role", "customer"], None);
        assert!(ok);
        let password = out.lines().find_map(|l| l.split(": ").nth(1)).unwrap().trim().to_string();
        assert!(certdrop(&app, dir, &["login", "--email", "ann@example.com", "--password-stdin"], Some(&password)).0);
        assert!(certdrop(&app, dir, &["apps:create", "shop", "--backend", "http://10.0.0.5:8000"], None).0);
        let (ok, added, err) = certdrop(&app, dir, &["domains:add", "www.example.com", "--app", "shop"], None);
        assert!(ok, "{err}");
        // The CLI says which TXT record proves the domain, and how to check it.
        let record = added.lines().find(|l| l.trim_start().starts_with("_certdrop-challenge.www.example.com TXT")).unwrap_or_else(|| panic!("{added}"));
        let token = record.split('"').nth(1).unwrap().to_string();
        assert!(added.contains("certdrop domains:verify www.example.com --app shop"), "{added}");

        let root = crate::pki::root("Test Root");
        let inter = crate::pki::intermediate("Test Intermediate", &root);
        let leaf = crate::pki::leaf(&["www.example.com"], &inter, crate::pki::Alg::Rsa2048);
        let files = tempfile::tempdir().unwrap();
        let crt = crate::pki::write(files.path(), "server.crt", leaf.cert_pem.as_bytes());
        let chain = crate::pki::write(files.path(), "chain.pem", inter.pem().as_bytes());
        let key = crate::pki::write(files.path(), "server.key", leaf.key_pem.as_bytes());
        let path = |n: &str| files.path().join(n).display().to_string();
        // Uploaded before the domain is proved: stored, reported, and no ticket yet.
        let (ok, out, err) = certdrop(&app, dir, &["certs:add", &path(&crt), &path(&chain), &path(&key), "--app", "shop"], None);
        assert!(!ok, "{out}");
        assert!(out.contains("www.example.com") && out.contains("rsa-2048") && out.contains(&leaf.fingerprint()), "{out}");
        assert!(out.contains("chain_incomplete"), "warnings are shown: {out}");
        assert!(err.contains("no ticket was opened") && err.contains(&token) && err.contains("certdrop certs:deploy 1 --app shop"), "{err}");
        assert_eq!(app.count("SELECT COUNT(*) FROM tickets").await, 0);

        // Proved with the record, then deployed as the CLI said.
        let (ok, _, err) = certdrop(&app, dir, &["domains:verify", "www.example.com", "--app", "shop"], None);
        assert!(!ok && err.contains("verification_failed"), "{err}");
        app.dns.txt("_certdrop-challenge.www.example.com", &token);
        let (ok, out, err) = certdrop(&app, dir, &["domains:verify", "www.example.com", "--app", "shop"], None);
        assert!(ok && out.contains("is verified"), "{err}");
        let (ok, out, err) = certdrop(&app, dir, &["domains", "--app", "shop"], None);
        assert!(ok && out.contains("verified") && out.contains("DNS"), "{out}{err}");
        let (ok, out, err) = certdrop(&app, dir, &["certs:deploy", "1", "--app", "shop"], None);
        assert!(ok && out.contains("Ticket #1 opened (provision)"), "{out}{err}");
        let (ok, out, _) = certdrop(&app, dir, &["certs", "--app", "shop"], None);
        assert!(ok);
        for column in ["Common Name", "Domains", "Expires", "Trusted", "Status", "www.example.com", " no "] {
            assert!(out.contains(column), "{column} missing from:\n{out}");
        }
        let (ok, out, _) = certdrop(&app, dir, &["certs:info", "--app", "shop", "--json"], None);
        assert!(ok);
        let info: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(info["chain"].as_array().unwrap().len(), 2);
        let (ok, out, _) = certdrop(&app, dir, &["certs:info", "--app", "shop"], None);
        assert!(ok && out.contains("Fingerprint (SHA-256):  ") && out.contains("Trusted:                no"), "{out}");

        // The key may come first; it is told from the certificates by what it holds, so no
        // misleading chain warning appears.
        let other = crate::pki::leaf(&["www.example.com"], &inter, crate::pki::Alg::P256);
        let other_crt = crate::pki::write(files.path(), "other.crt", other.cert_pem.as_bytes());
        let other_key = crate::pki::write(files.path(), "other.key", other.key_pem.as_bytes());
        let (_, out, err) = certdrop(&app, dir, &["certs:add", &path(&other_key), &path(&other_crt), &path(&chain), "--app", "shop", "--json"], None);
        let report: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}{err}"));
        assert_eq!(report["fingerprint_sha256"], other.fingerprint());
        let codes: Vec<&str> = report["warnings"].as_array().unwrap().iter().map(|w| w["code"].as_str().unwrap()).collect();
        assert!(!codes.contains(&"chain_reordered"), "{codes:?}");
        // A forgotten key is said plainly, not in clap's words.
        let (ok, _, err) = certdrop(&app, dir, &["certs:add", &path(&other_crt), "--app", "shop"], None);
        assert!(!ok && err.contains("the private key is missing") && !err.contains("values required"), "{err}");

        let wrong = crate::pki::write(files.path(), "wrong.key", crate::pki::Alg::P256.key().serialize_pem().as_bytes());
        let (ok, _, err) = certdrop(&app, dir, &["certs:add", &path(&crt), &path(&wrong), "--app", "shop"], None);
        assert!(!ok && err.contains("key_mismatch"), "{err}");

        // A key born in the vault: the CSR comes out, the signed certificate goes in alone.
        let csr = files.path().join("req.csr");
        let (ok, out, err) = certdrop(&app, dir, &["certs:generate", "--app", "shop", "--out", &csr.display().to_string()], None);
        assert!(ok && out.is_empty() && err.contains("sealed in the vault") && err.contains("certs:add CRT [CHAIN...] --app shop"), "{out}{err}");
        let Some(_) = crate::pki::openssl(files.path(), &["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=CLI CSR CA", "-days", "30"], None) else {
            return;
        };
        crate::pki::openssl(files.path(), &["x509", "-req", "-in", "req.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "30", "-copy_extensions", "copyall", "-out", "signed.pem"], None).unwrap();
        let signed = files.path().join("signed.pem").display().to_string();
        let ca = files.path().join("ca.pem").display().to_string();
        let (_, out, err) = certdrop(&app, dir, &["certs:add", &signed, &ca, "--app", "shop", "--json"], None);
        let report: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}{err}"));
        assert_eq!(report["source"], "csr", "{report}");
        let (ok, out, _) = certdrop(&app, dir, &["certs", "--app", "shop"], None);
        assert!(ok && out.contains("Source") && out.contains("csr"), "{out}");
    }
}

db_test! {
    async fn staff_made_on_the_server_get_a_second_factor_that_the_cli_login_asks_for(app) {
        let config = tempfile::tempdir().unwrap();
        let dir = config.path();
        let (ok, out, err) = certdrop(&app, dir, &["users:create", "--email", "sam@example.com", "--role", "staff"], None);
        assert!(ok, "{err}");
        let password = out.lines().find_map(|l| l.strip_prefix("Password (shown once, keep it safe): ")).unwrap().trim().to_string();
        let uri = out.lines().find(|l| l.starts_with("otpauth://totp/certdrop:sam%40example.com?secret=")).unwrap_or_else(|| panic!("no otpauth line:\n{out}"));
        let recovery: Vec<&str> = out.lines().map(str::trim).filter(|l| l.len() == 14 && l.matches('-').count() == 2).collect();
        assert_eq!(recovery.len(), 10, "{out}");
        let authenticator = crate::common::Authenticator::from_text(uri);

        let login = |otp: Option<String>| {
            let mut args = vec!["login".to_string(), "--email".into(), "sam@example.com".into(), "--password-stdin".into()];
            if let Some(code) = otp {
                args.extend(["--otp".to_string(), code]);
            }
            args
        };
        let args = login(None);
        let (ok, _, err) = certdrop(&app, dir, &args.iter().map(String::as_str).collect::<Vec<_>>(), Some(&format!("{password}\n")));
        assert!(!ok && err.contains("otp_required"), "without a code: {err}");
        let args = login(Some(authenticator.code().await));
        let (ok, out, err) = certdrop(&app, dir, &args.iter().map(String::as_str).collect::<Vec<_>>(), Some(&format!("{password}\n")));
        assert!(ok, "{err}");
        assert!(out.contains("Signed in"));
        let (ok, out, err) = certdrop(&app, dir, &["edge-pairs"], None);
        assert!(ok && out.contains("No edge pairs"), "{out}{err}");

        // One-admin installs raise roles from the server shell.
        let (ok, _, err) = certdrop(&app, dir, &["users:create", "--email", "cid@example.com", "--role", "customer"], None);
        assert!(ok, "{err}");
        let (ok, out, err) = certdrop(&app, dir, &["users:role", "--email", "cid@example.com", "--role", "admin"], None);
        assert!(ok && out.contains("is now admin (was customer)"), "{out}{err}");
        assert_eq!(app.count("SELECT COUNT(*) FROM audit_events WHERE action = 'user.role_changed' AND detail LIKE '%cli%'").await, 1);
    }
}

#[test]
fn a_fleet_key_attests_an_edge_machine_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_certdrop"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let key = dir.path().join("fleet.key");
    let (ok, out, err) = run(&["fleet:keygen", "--out", key.to_str().unwrap()]);
    assert!(ok, "{err}");
    let public = out
        .lines()
        .find_map(|l| l.strip_prefix("CERTDROP_FLEET_PUBLIC_KEY="))
        .unwrap()
        .to_string();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let (ok, _, err) = run(&["fleet:keygen", "--out", key.to_str().unwrap()]);
    assert!(
        !ok && err.contains("must not exist"),
        "an existing key is never overwritten: {err}"
    );

    let node = dir.path().join("node");
    let (ok, out, err) = run(&["edge:identity", "--data-dir", node.to_str().unwrap()]);
    assert!(ok, "{err}");
    let recipient = out
        .lines()
        .find_map(|l| l.strip_prefix("recipient "))
        .unwrap()
        .to_string();
    let fingerprint = out
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint "))
        .unwrap()
        .to_string();
    assert_eq!(
        fingerprint,
        certdrop::edge::recipient_fingerprint(&recipient)
    );
    let (_, again, _) = run(&["edge:identity", "--data-dir", node.to_str().unwrap()]);
    assert_eq!(again, out, "the identity is kept");

    let (ok, attestation, err) = run(&[
        "fleet:attest",
        &recipient,
        "--key",
        key.to_str().unwrap(),
        "--pair",
        "pair-a",
        "--slot",
        "2",
        "--valid-hours",
        "2",
    ]);
    assert!(ok, "{err}");
    let public = certdrop::edge::fleet::FleetPublicKey::parse(&public).unwrap();
    let now = certdrop::db::now();
    let claim = public
        .admits(attestation.trim(), &recipient, "pair-a", 2, now)
        .unwrap();
    assert!((claim.expires_at - now - 7200).abs() < 60, "{claim:?}");
    assert!(
        public
            .admits(attestation.trim(), &recipient, "pair-a", 1, now)
            .is_err(),
        "another slot"
    );
    assert!(
        public
            .admits(attestation.trim(), &recipient, "pair-a", 2, now + 7300)
            .is_err(),
        "expired"
    );
    let (ok, _, err) = run(&[
        "fleet:attest",
        &recipient,
        "--key",
        key.to_str().unwrap(),
        "--pair",
        "pair-a",
        "--slot",
        "3",
    ]);
    assert!(!ok && err.contains("--slot"), "{err}");
}

db_test! {
    async fn staff_see_whose_ticket_it_is_and_follow_an_approval_to_its_end(app) {
        // A customer's provision ticket, and a confirmed pair of running nodes.
        let (ops, keys) = app.crew().await;
        let _nodes = crate::edge::start_pair(&app.address, ops, keys, "edge-cli").await;
        let backend = crate::edge_support::echo_backend().await;
        let ann = app.api_user("ann@example.com", certdrop::accounts::Role::Customer).await;
        let resp = ann.post("/api/v1/apps", serde_json::json!({"name": "shop", "backend_url": format!("http://{backend}")})).await;
        assert_eq!(resp.status, reqwest::StatusCode::CREATED);
        ann.add_domain("shop", "www.example.com").await;
        let leaf = crate::pki::leaf(&["www.example.com"], &crate::pki::root("CLI Root"), crate::pki::Alg::P256);
        let cert = ann.upload_id("shop", &leaf, b"").await;
        let id = ann.open_ticket("shop", "provision", Some(cert)).await;

        // A staff member signs in on the CLI with their second factor.
        let config = tempfile::tempdir().unwrap();
        let dir = config.path();
        let (ok, out, err) = certdrop(&app, dir, &["users:create", "--email", "sam@example.com", "--role", "staff"], None);
        assert!(ok, "{err}");
        let password = out.lines().find_map(|l| l.strip_prefix("Password (shown once, keep it safe): ")).unwrap().trim().to_string();
        let uri = out.lines().find(|l| l.starts_with("otpauth://totp/")).unwrap();
        let code = crate::common::Authenticator::from_text(uri).code().await;
        let (ok, _, err) = certdrop(&app, dir, &["login", "--email", "sam@example.com", "--password-stdin", "--otp", &code], Some(&format!("{password}\n")));
        assert!(ok, "{err}");

        let (ok, out, err) = certdrop(&app, dir, &["tickets"], None);
        assert!(ok && out.contains("Customer") && out.contains("ann@example.com"), "{out}{err}");
        let (ok, out, err) = certdrop(&app, dir, &["tickets:approve", &id.to_string(), "--wait"], None);
        assert!(ok, "{out}{err}");
        assert!(out.contains(&format!("Ticket #{id} is deployed")), "{out}");
        assert_eq!(app.count(&format!("SELECT COUNT(*) FROM tickets WHERE id = {id} AND state = 'deployed'")).await, 1);
    }
}
