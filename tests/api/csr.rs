//! Keys born in the vault: certdrop generates the key and a CSR, a CA (openssl, in the test)
//! signs it, the certificate is uploaded alone and deployed to two real edge nodes.

use certdrop::accounts::Role;
use reqwest::StatusCode;
use serde_json::json;

use crate::{
    common::upload_form,
    db_test,
    edge::{start_pair, wait_ticket},
    edge_support::{roots, tls_check},
    keyscan, pki,
};

db_test! {
    async fn a_key_generated_here_is_completed_by_its_signed_certificate_and_deployed(app) {
        let dir = tempfile::tempdir().unwrap();
        // The CA: openssl, as a customer's certificate authority would be.
        let Some(_) = pki::openssl(dir.path(), &["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=CSR Test CA", "-days", "30"], None) else {
            return;
        };
        let (ops, keys) = app.crew().await;
        let nodes = start_pair(&app.address, ops, keys, "edge-csr").await;
        let ann = app.api_user("ann@example.com", Role::Customer).await;
        ann.create_app("shop", &["www.example.com", "example.com"]).await;

        // Refusals say what was wrong: the key type, a name that is not the app's, the subject.
        let resp = ann.post("/api/v1/apps/shop/csrs", json!({"key_type": "dsa", "domains": ["other.example.net"], "subject": "CN"})).await;
        assert_eq!(resp.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", resp.body);
        let fields: Vec<&str> = resp.json["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap_or("")).collect();
        assert_eq!(fields, ["key_type", "subject", "domains"], "{}", resp.body);
        assert!(resp.body.contains("other.example.net is not among shop's domains"), "{}", resp.body);
        // Only the owner: staff never handle key material, and another customer sees nothing.
        let staff = app.api_user("sam@example.com", Role::Staff).await;
        assert_eq!(staff.post("/api/v1/apps/shop/csrs", json!({})).await.status, StatusCode::FORBIDDEN);
        let bob = app.api_user("bob@example.com", Role::Customer).await;
        assert_eq!(bob.post("/api/v1/apps/shop/csrs", json!({})).await.status, StatusCode::NOT_FOUND);

        let resp = ann.post("/api/v1/apps/shop/csrs", json!({"subject": "/C=US/O=Shop Inc"})).await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
        let csr = resp.json;
        assert_eq!(csr["key_type"], "p256");
        assert_eq!(csr["domains"], json!(["www.example.com", "example.com"]));
        assert_eq!(csr["subject"], "CN=www.example.com, C=US, O=Shop Inc");
        assert!(!resp.body.contains("PRIVATE KEY"), "only the CSR is ever shown");
        let rsa = ann.post("/api/v1/apps/shop/csrs", json!({"key_type": "rsa2048", "domains": ["example.com"]})).await;
        assert_eq!((rsa.status, rsa.json["key_type"].as_str()), (StatusCode::CREATED, Some("rsa2048")), "{}", rsa.body);
        assert_eq!(ann.get("/api/v1/apps/shop/csrs").await.json["items"].as_array().unwrap().len(), 2);

        // The CA signs the request; its text names what was asked.
        std::fs::write(dir.path().join("req.csr"), csr["csr_pem"].as_str().unwrap()).unwrap();
        let text = String::from_utf8(pki::openssl(dir.path(), &["req", "-in", "req.csr", "-noout", "-text", "-verify"], None).unwrap()).unwrap();
        assert!(text.contains("DNS:www.example.com") && text.contains("DNS:example.com"), "{text}");
        pki::openssl(dir.path(), &["x509", "-req", "-in", "req.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "30", "-copy_extensions", "copyall", "-out", "signed.pem"], None).unwrap();
        let signed = std::fs::read(dir.path().join("signed.pem")).unwrap();
        let ca_pem = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();

        // A certificate for a key nobody generated, without its key: the missing key is named.
        let stranger = pki::leaf(&["www.example.com"], &pki::root("Stranger"), pki::Alg::P256);
        let resp = ann.multipart("/api/v1/apps/shop/certs", upload_form(stranger.cert_pem.as_bytes(), b"", b"", false)).await;
        assert_eq!(resp.codes("errors"), ["no_private_key"], "{}", resp.body);
        assert!(resp.body.contains("certdrop generated the key"), "{}", resp.body);
        // Bob cannot complete Ann's key with her certificate on his own app.
        bob.create_app("blog", &["blog.example.org"]).await;
        let resp = bob.multipart("/api/v1/apps/blog/certs", upload_form(&signed, b"", b"", false)).await;
        assert!(resp.codes("errors").contains(&"no_private_key".to_string()), "{}", resp.body);

        // The signed certificate alone completes the bundle.
        let resp = ann.multipart("/api/v1/apps/shop/certs", upload_form(&signed, b"", ca_pem.as_bytes(), false)).await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
        assert_eq!(resp.json["source"], "csr");
        let cert_id = resp.json["id"].as_i64().unwrap();
        let fingerprint = resp.json["fingerprint_sha256"].as_str().unwrap().to_string();
        let done = ann.get(&format!("/api/v1/apps/shop/csrs/{}", csr["id"])).await.json;
        assert_eq!(done["certificate_id"], cert_id);

        // Deployed like any certificate: both nodes serve it, its key opened only on them.
        let ticket = ann.open_ticket("shop", "provision", Some(cert_id)).await;
        let resp = staff.post(&format!("/api/v1/tickets/{ticket}/approve"), json!({})).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
        wait_ticket(&ann, ticket, "deployed").await;
        for node in &nodes {
            let (chain, _) = tls_check(node.tls, "www.example.com", roots(&ca_pem)).await.unwrap();
            assert_eq!(chain[0], fingerprint);
        }

        // No plaintext private key anywhere the server wrote: database, files, logs.
        let marker = [b"PRIVATE KEY-----".to_vec()];
        for file in keyscan::files_under(app.data_dir.path()) {
            let bytes = std::fs::read(&file).unwrap_or_default();
            assert_eq!(keyscan::find_any(&bytes, &marker), None, "{}", file.display());
        }
        let dump: Vec<String> = sqlx::query_scalar("SELECT sealed_key FROM generated_keys").fetch_all(&app.db).await.unwrap();
        assert!(dump.iter().all(|k| k.starts_with("-----BEGIN AGE ENCRYPTED FILE-----")), "sealed at birth");
        assert_eq!(app.count("SELECT COUNT(*) FROM audit_events WHERE action = 'key.generated'").await, 2);
    }
}
