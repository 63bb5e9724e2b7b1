//! Certificate intake through the HTTP API: every error and warning code, and what is stored.

use certdrop::accounts::Role;
use reqwest::StatusCode;

use crate::{
    common::{Api, Resp, TestApp},
    db_test,
    pki::{self, Alg, Validity},
};

async fn customer_with_app(app: &TestApp, domains: &[&str]) -> Api {
    let api = app.api_user("ann@example.com", Role::Customer).await;
    api.create_app("shop", domains).await;
    api
}

/// Asserts a refusal with `code` (among others) and that nothing was stored.
async fn assert_refused(app: &TestApp, resp: &Resp, status: StatusCode, code: &str) {
    assert_eq!(resp.status, status, "{}", resp.body);
    assert!(
        resp.codes("errors").contains(&code.to_string()),
        "expected {code} in {}",
        resp.body
    );
    for e in resp.json["errors"].as_array().unwrap() {
        assert!(!e["message"].as_str().unwrap().is_empty());
    }
    assert_eq!(
        app.count("SELECT COUNT(*) FROM certificates").await,
        0,
        "a refused upload stores nothing"
    );
}

db_test! {
    async fn a_good_bundle_is_accepted_with_its_report(app) {
        let api = customer_with_app(&app, &["www.example.com", "example.com"]).await;
        let root = pki::root("Test Root");
        let inter = pki::intermediate("Test Intermediate", &root);
        let leaf = pki::leaf(&["www.example.com", "example.com"], &inter, Alg::P256);
        let resp = api.upload("shop", leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes(), inter.pem().as_bytes()).await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
        let r = &resp.json;
        assert_eq!(r["common_name"], "www.example.com");
        assert_eq!(r["sans"], serde_json::json!(["www.example.com", "example.com"]));
        assert_eq!(r["domains_covered"], serde_json::json!(["www.example.com", "example.com"]));
        assert_eq!(r["key_type"], "ecdsa-p256");
        assert_eq!(r["chain_len"], 1);
        assert_eq!(r["fingerprint_sha256"], leaf.fingerprint());
        assert!(r["issuer"].as_str().unwrap().contains("Test Intermediate"));
        assert!(r["not_after"].as_str().unwrap().ends_with('Z'));
        assert_eq!(r["trusted"], false, "the test root is not Mozilla's");
        assert_eq!(resp.codes("warnings"), ["chain_incomplete"]);
        let sealed: String = sqlx::query_scalar("SELECT sealed_key FROM certificates").fetch_one(&app.db).await.unwrap();
        assert!(sealed.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"));
        let detail: String = sqlx::query_scalar("SELECT detail FROM audit_events WHERE action = 'cert.uploaded'")
            .fetch_one(&app.db).await.unwrap();
        assert!(detail.contains(&leaf.fingerprint()));
    }
}

db_test! {
    async fn every_supported_key_type_is_accepted_and_named(app) {
        let api = customer_with_app(&app, &["www.example.com"]).await;
        let root = pki::root("Test Root");
        for (alg, label) in [(Alg::P256, "ecdsa-p256"), (Alg::P384, "ecdsa-p384"), (Alg::Rsa2048, "rsa-2048"), (Alg::Ed25519, "ed25519")] {
            let leaf = pki::leaf(&["www.example.com"], &root, alg);
            let resp = api.upload("shop", leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes(), b"").await;
            assert_eq!(resp.status, StatusCode::CREATED, "{label}: {}", resp.body);
            assert_eq!(resp.json["key_type"], label);
        }
    }
}

db_test! {
    async fn a_mismatched_key_is_refused_for_every_key_type(app) {
        let api = customer_with_app(&app, &["www.example.com"]).await;
        let root = pki::root("Test Root");
        for alg in [Alg::P256, Alg::P384, Alg::Rsa2048, Alg::Ed25519] {
            let leaf = pki::leaf(&["www.example.com"], &root, alg);
            let other = alg.key().serialize_pem();
            let resp = api.upload("shop", leaf.cert_pem.as_bytes(), other.as_bytes(), b"").await;
            assert_refused(&app, &resp, StatusCode::UNPROCESSABLE_ENTITY, "key_mismatch").await;
            assert!(resp.body.contains("openssl pkey -pubout"));
        }
    }
}

db_test! {
    async fn pkcs1_and_sec1_keys_are_read_and_mismatches_caught(app) {
        let api = customer_with_app(&app, &["www.example.com"]).await;
        let root = pki::root("Test Root");
        let dir = tempfile::tempdir().unwrap();
        for (alg, tool, label) in [(Alg::Rsa2048, "rsa", "RSA PRIVATE KEY"), (Alg::P256, "ec", "EC PRIVATE KEY"), (Alg::P384, "ec", "EC PRIVATE KEY")] {
            let leaf = pki::leaf(&["www.example.com"], &root, alg);
            let name = pki::write(dir.path(), "key.pem", leaf.key_pem.as_bytes());
            let mut args = vec![tool, "-in", name.as_str()];
            if tool == "rsa" {
                args.push("-traditional");
            }
            let Some(traditional) = pki::openssl(dir.path(), &args, None) else { return };
            assert!(String::from_utf8_lossy(&traditional).contains(label));
            let resp = api.upload("shop", leaf.cert_pem.as_bytes(), &traditional, b"").await;
            assert_eq!(resp.status, StatusCode::CREATED, "{label}: {}", resp.body);

            let other = pki::leaf(&["www.example.com"], &root, alg);
            let name = pki::write(dir.path(), "other.pem", other.key_pem.as_bytes());
            let mut args = vec![tool, "-in", name.as_str()];
            if tool == "rsa" {
                args.push("-traditional");
            }
            let other_traditional = pki::openssl(dir.path(), &args, None).unwrap();
            let before = app.count("SELECT COUNT(*) FROM certificates").await;
            let resp = api.upload("shop", leaf.cert_pem.as_bytes(), &other_traditional, b"").await;
            assert_eq!(resp.status, StatusCode::UNPROCESSABLE_ENTITY);
            assert_eq!(resp.code(), "key_mismatch", "{label}");
            assert_eq!(app.count("SELECT COUNT(*) FROM certificates").await, before);
        }
    }
}

db_test! {
    async fn a_missing_certificate_or_key_is_named(app) {
        let api = customer_with_app(&app, &["www.example.com"]).await;
        let leaf = pki::leaf(&["www.example.com"], &pki::root("Test Root"), Alg::P256);
        let resp = api.upload("shop", b"", leaf.key_pem.as_bytes(), b"").await;
        assert_refused(&app, &resp, StatusCode::UNPROCESSABLE_ENTITY, "no_certificate").await;
        let resp = api.upload("shop", leaf.cert_pem.as_bytes(), b"", b"").await;
        assert_refused(&app, &resp, StatusCode::UNPROCESSABLE_ENTITY, "no_private_key").await;
        let resp = api.upload("shop", b"just some text\n", b"", b"").await;
        assert_refused(&app, &resp, StatusCode::UNPROCESSABLE_ENTITY, "not_pem").await;
    }
}

db_test! {
    async fn two_different_keys_are_refused(app) {
        let api = customer_with_app(&app, &["www.example.com"]).await;
        let leaf = pki::leaf(&["www.example.com"], &pki::root("Test Root"), Alg::P256);
        let keys = format!("{}{}", leaf.key_pem, Alg::P256.key().serialize_pem());
        let resp = api.upload("shop", leaf.cert_pem.as_bytes(), keys.as_bytes(), b"").await;
        assert_refused(&app, &resp, StatusCode::UNPROCESSABLE_ENTITY, "multiple_private_keys").await;
        // The same key twice (in the bundle and in the key field) is one key.
        let bundle = format!("{}{}", leaf.cert_pem, leaf.key_pem);
        let resp = api.upload("shop", bundle.as_bytes(), leaf.key_pem.as_bytes(), b"").await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
    }
}

db_test! {
    async fn a_bundle_holding_the_key_with_crlf_and_bag_attributes_is_accepted(app) {
        let api = customer_with_app(&app, &["www.example.com"]).await;
        let root = pki::root("Test Root");
        let inter = pki::intermediate("Test Intermediate", &root);
        let leaf = pki::leaf(&["www.example.com"], &inter, Alg::Rsa2048);
        let bundle = format!(
            "Bag Attributes\n    localKeyID: 01 02 03 04\nsubject=/CN=www.example.com\n{}\n\n{}\nBag Attributes\n    friendlyName: key\n{}",
            leaf.cert_pem, inter.pem(), leaf.key_pem
        )
        .replace('\n', "\r\n");
        let resp = api.upload("shop", bundle.as_bytes(), b"", b"").await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
        assert_eq!(resp.json["chain_len"], 1);
        let chain: String = sqlx::query_scalar("SELECT chain_pem FROM certificates").fetch_one(&app.db).await.unwrap();
        assert!(!chain.contains("PRIVATE KEY"), "the key inside a bundle is never stored with the chain");
    }
}

db_test! {
    async fn passphrase_protected_keys_are_refused_with_the_command_that_strips_it(app) {
        let api = customer_with_app(&app, &["www.example.com"]).await;
        let leaf = pki::leaf(&["www.example.com"], &pki::root("Test Root"), Alg::Rsa2048);
        // Legacy PEM encryption, as written by `openssl rsa -aes128` of old.
        let label = "RSA PRIVATE KEY";
        let legacy = format!("-----BEGIN {label}-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,0123456789ABCDEF0123456789ABCDEF\n\nbm90IGEgcmVhbCBrZXkgYnV0IGVuY3J5cHRlZA==\n-----END {label}-----\n");
        let resp = api.upload("shop", leaf.cert_pem.as_bytes(), legacy.as_bytes(), b"").await;
        assert_refused(&app, &resp, StatusCode::UNPROCESSABLE_ENTITY, "encrypted_private_key").await;
        assert!(resp.body.contains("openssl rsa -in encrypted.key -out key.pem"));

        let dir = tempfile::tempdir().unwrap();
        let name = pki::write(dir.path(), "key.pem", leaf.key_pem.as_bytes());
        let Some(pkcs8) = pki::openssl(dir.path(), &["pkcs8", "-topk8", "-in", &name, "-v2", "aes256", "-passout", "pass:secret"], None) else { return };
        assert!(String::from_utf8_lossy(&pkcs8).contains("ENCRYPTED PRIVATE KEY"));
        let resp = api.upload("shop", leaf.cert_pem.as_bytes(), &pkcs8, b"").await;
        assert_refused(&app, &resp, StatusCode::UNPROCESSABLE_ENTITY, "encrypted_private_key").await;
        assert!(resp.body.contains("openssl pkey -in encrypted.key -out key.pem"));

        let legacy_real = pki::openssl(dir.path(), &["rsa", "-in", &name, "-aes128", "-traditional", "-passout", "pass:secret"], None).unwrap();
        assert!(String::from_utf8_lossy(&legacy_real).contains("Proc-Type: 4,ENCRYPTED"));
        let resp = api.upload("shop", leaf.cert_pem.as_bytes(), &legacy_real, b"").await;
        assert_refused(&app, &resp, StatusCode::UNPROCESSABLE_ENTITY, "encrypted_private_key").await;
    }
}

db_test! {
    async fn binary_formats_are_named_with_the_openssl_command_that_converts_them(app) {
        let api = customer_with_app(&app, &["www.example.com"]).await;
        let root = pki::root("Test Root");
        let leaf = pki::leaf(&["www.example.com"], &root, Alg::Rsa2048);
        let resp = api.upload("shop", &leaf.der, leaf.key_pem.as_bytes(), b"").await;
        assert_refused(&app, &resp, StatusCode::UNPROCESSABLE_ENTITY, "not_pem").await;
        assert!(resp.body.contains("DER (binary) certificate") && resp.body.contains("openssl x509 -inform der"));
        // With a PEM chain beside the DER certificate, the answer is the same one error: the
        // chain's intermediate is not mistaken for the leaf (no false key or domain mismatch).
        let inter = pki::intermediate("Test Intermediate", &root);
        let resp = api.upload("shop", &leaf.der, leaf.key_pem.as_bytes(), inter.pem().as_bytes()).await;
        assert_eq!(resp.codes("errors"), ["not_pem"], "{}", resp.body);

        let dir = tempfile::tempdir().unwrap();
        let cert = pki::write(dir.path(), "cert.pem", leaf.cert_pem.as_bytes());
        let key = pki::write(dir.path(), "key.pem", leaf.key_pem.as_bytes());
        let Some(der_key) = pki::openssl(dir.path(), &["pkey", "-in", &key, "-outform", "der"], None) else { return };
        let resp = api.upload("shop", leaf.cert_pem.as_bytes(), &der_key, b"").await;
        assert_refused(&app, &resp, StatusCode::UNPROCESSABLE_ENTITY, "not_pem").await;
        assert!(resp.body.contains("DER (binary) private key"), "{}", resp.body);

        let pfx = pki::openssl(dir.path(), &["pkcs12", "-export", "-in", &cert, "-inkey", &key, "-passout", "pass:", "-out", "-"], None).unwrap();
        let resp = api.upload("shop", &pfx, b"", b"").await;
        assert_refused(&app, &resp, StatusCode::UNPROCESSABLE_ENTITY, "not_pem").await;
        assert!(resp.body.contains("PKCS#12") && resp.body.contains("openssl pkcs12"), "{}", resp.body);

        let p7b = pki::openssl(dir.path(), &["crl2pkcs7", "-nocrl", "-certfile", &cert, "-outform", "der"], None).unwrap();
        let resp = api.upload("shop", &p7b, leaf.key_pem.as_bytes(), b"").await;
        assert_refused(&app, &resp, StatusCode::UNPROCESSABLE_ENTITY, "not_pem").await;
        assert!(resp.body.contains("PKCS#7") && resp.body.contains("openssl pkcs7 -inform der"), "{}", resp.body);

        let p7b_pem = pki::openssl(dir.path(), &["crl2pkcs7", "-nocrl", "-certfile", &cert], None).unwrap();
        let resp = api.upload("shop", &p7b_pem, leaf.key_pem.as_bytes(), b"").await;
        assert_refused(&app, &resp, StatusCode::UNPROCESSABLE_ENTITY, "not_pem").await;
        assert!(resp.body.contains("openssl pkcs7 -in bundle.p7b -print_certs"), "{}", resp.body);
    }
}

db_test! {
    async fn expired_and_not_yet_valid_certificates_are_refused(app) {
        let api = customer_with_app(&app, &["www.example.com"]).await;
        let root = pki::root("Test Root");
        let old = pki::leaf_with(&["www.example.com"], &root, Alg::P256, Validity { from_days: -100, to_days: -1 });
        let resp = api.upload("shop", old.cert_pem.as_bytes(), old.key_pem.as_bytes(), b"").await;
        assert_refused(&app, &resp, StatusCode::UNPROCESSABLE_ENTITY, "expired").await;
        let early = pki::leaf_with(&["www.example.com"], &root, Alg::P256, Validity { from_days: 2, to_days: 90 });
        let resp = api.upload("shop", early.cert_pem.as_bytes(), early.key_pem.as_bytes(), b"").await;
        assert_refused(&app, &resp, StatusCode::UNPROCESSABLE_ENTITY, "not_yet_valid").await;
    }
}

db_test! {
    async fn weak_keys_and_weak_signatures_are_refused(app) {
        let api = customer_with_app(&app, &["www.example.com"]).await;
        let dir = tempfile::tempdir().unwrap();
        let subj = ["-subj", "/CN=www.example.com", "-addext", "subjectAltName=DNS:www.example.com", "-days", "30", "-nodes"];
        let mut args = vec!["req", "-x509", "-newkey", "rsa:1024", "-sha256", "-keyout", "k1.pem", "-out", "c1.pem"];
        args.extend(subj);
        if pki::openssl(dir.path(), &args, None).is_none() {
            return;
        }
        let (cert, key) = (std::fs::read(dir.path().join("c1.pem")).unwrap(), std::fs::read(dir.path().join("k1.pem")).unwrap());
        let resp = api.upload("shop", &cert, &key, b"").await;
        assert_refused(&app, &resp, StatusCode::UNPROCESSABLE_ENTITY, "weak_key").await;
        assert!(resp.body.contains("1024 bits"));
        assert_eq!(resp.codes("errors"), ["weak_key"], "the key is read, and it matches");

        let mut args = vec!["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521", "-sha512", "-keyout", "k2.pem", "-out", "c2.pem"];
        args.extend(subj);
        pki::openssl(dir.path(), &args, None).unwrap();
        let (cert, key) = (std::fs::read(dir.path().join("c2.pem")).unwrap(), std::fs::read(dir.path().join("k2.pem")).unwrap());
        let resp = api.upload("shop", &cert, &key, b"").await;
        assert_refused(&app, &resp, StatusCode::UNPROCESSABLE_ENTITY, "weak_key").await;
        assert!(resp.body.contains("p521"));
        assert_eq!(resp.codes("errors"), ["weak_key"]);

        let mut args = vec!["req", "-x509", "-newkey", "rsa:2048", "-sha1", "-keyout", "k3.pem", "-out", "c3.pem"];
        args.extend(subj);
        pki::openssl(dir.path(), &args, None).unwrap();
        let (cert, key) = (std::fs::read(dir.path().join("c3.pem")).unwrap(), std::fs::read(dir.path().join("k3.pem")).unwrap());
        let resp = api.upload("shop", &cert, &key, b"").await;
        assert_refused(&app, &resp, StatusCode::UNPROCESSABLE_ENTITY, "weak_signature").await;
        assert!(resp.body.contains("SHA-1"));

        // A SHA-1 signature on an intermediate (issued by a SHA-256 root), above a SHA-256 leaf.
        let run = |args: &[&str]| pki::openssl(dir.path(), args, None).unwrap();
        pki::write(dir.path(), "ca.cnf", b"basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign\n");
        pki::write(dir.path(), "leaf.cnf", b"subjectAltName=DNS:www.example.com\n");
        run(&["req", "-x509", "-newkey", "rsa:2048", "-sha256", "-keyout", "root.key", "-out", "root.pem", "-subj", "/CN=Modern Root", "-days", "30", "-nodes"]);
        run(&["req", "-new", "-newkey", "rsa:2048", "-keyout", "ca.key", "-out", "ca.csr", "-subj", "/CN=Old Intermediate", "-nodes"]);
        run(&["x509", "-req", "-in", "ca.csr", "-CA", "root.pem", "-CAkey", "root.key", "-CAcreateserial", "-sha1", "-days", "30", "-extfile", "ca.cnf", "-out", "ca.pem"]);
        run(&["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=www.example.com", "-nodes"]);
        run(&["x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-sha256", "-days", "30", "-extfile", "leaf.cnf", "-out", "leaf.pem"]);
        let read = |n: &str| std::fs::read(dir.path().join(n)).unwrap();
        let resp = api.upload("shop", &read("leaf.pem"), &read("leaf.key"), &read("ca.pem")).await;
        assert_refused(&app, &resp, StatusCode::UNPROCESSABLE_ENTITY, "weak_signature").await;
        assert!(resp.body.contains("Old Intermediate"), "{}", resp.body);
    }
}

db_test! {
    async fn a_certificate_for_none_of_the_apps_domains_is_refused(app) {
        let api = customer_with_app(&app, &["www.example.com"]).await;
        let root = pki::root("Test Root");
        let leaf = pki::leaf(&["other.example.org"], &root, Alg::P256);
        let resp = api.upload("shop", leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes(), b"").await;
        assert_refused(&app, &resp, StatusCode::UNPROCESSABLE_ENTITY, "domain_mismatch").await;

        // A wildcard covers exactly one label: *.example.org never covers example.org.
        api.create_app("apex", &["example.org"]).await;
        let wild = pki::leaf(&["*.example.org"], &root, Alg::P256);
        let resp = api.upload("apex", wild.cert_pem.as_bytes(), wild.key_pem.as_bytes(), b"").await;
        assert_refused(&app, &resp, StatusCode::UNPROCESSABLE_ENTITY, "domain_mismatch").await;
        assert!(resp.body.contains("exactly one label"));
    }
}

db_test! {
    async fn every_problem_is_reported_at_once(app) {
        let api = customer_with_app(&app, &["www.example.com"]).await;
        let root = pki::root("Test Root");
        let old = pki::leaf_with(&["other.example.org"], &root, Alg::P256, Validity { from_days: -100, to_days: -1 });
        let resp = api.upload("shop", old.cert_pem.as_bytes(), Alg::P256.key().serialize_pem().as_bytes(), b"").await;
        assert_eq!(resp.status, StatusCode::UNPROCESSABLE_ENTITY);
        let codes = resp.codes("errors");
        for code in ["key_mismatch", "expired", "domain_mismatch"] {
            assert!(codes.contains(&code.to_string()), "{code} missing from {codes:?}");
        }
    }
}

db_test! {
    async fn an_upload_over_one_mebibyte_is_refused_with_413(app) {
        let api = customer_with_app(&app, &["www.example.com"]).await;
        let big = vec![b'A'; 1024 * 1024 + 10];
        let resp = api.upload("shop", &big, b"", b"").await;
        assert_refused(&app, &resp, StatusCode::PAYLOAD_TOO_LARGE, "too_large").await;
        let huge = vec![b'A'; 3 * 1024 * 1024];
        let resp = api.upload("shop", &huge, b"", b"").await;
        assert_refused(&app, &resp, StatusCode::PAYLOAD_TOO_LARGE, "too_large").await;
    }
}

db_test! {
    async fn a_chain_out_of_order_is_reordered_and_roots_and_strangers_are_stripped(app) {
        let api = customer_with_app(&app, &["www.example.com"]).await;
        let root = pki::root("Test Root");
        let inter = pki::intermediate("Test Intermediate", &root);
        let stranger = pki::root("Unrelated Root");
        let leaf = pki::leaf(&["www.example.com"], &inter, Alg::P256);
        let bundle = format!("{}{}{}", root.pem(), inter.pem(), leaf.cert_pem);
        let resp = api.upload("shop", bundle.as_bytes(), leaf.key_pem.as_bytes(), stranger.pem().as_bytes()).await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
        let warnings = resp.codes("warnings");
        assert!(warnings.contains(&"chain_reordered".to_string()), "{warnings:?}");
        assert!(warnings.contains(&"chain_stripped".to_string()), "{warnings:?}");
        assert!(warnings.contains(&"untrusted".to_string()), "{warnings:?}");
        assert_eq!(resp.json["chain_len"], 1);
        let chain: String = sqlx::query_scalar("SELECT chain_pem FROM certificates").fetch_one(&app.db).await.unwrap();
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2, "leaf and intermediate only");
        let info = api.get(&format!("/api/v1/certs/{}", resp.json["id"])).await;
        assert!(info.json["chain"][0]["subject"].as_str().unwrap().contains("www.example.com"));
        assert!(info.json["chain"][1]["subject"].as_str().unwrap().contains("Test Intermediate"));
    }
}

db_test! {
    async fn bypass_keeps_the_chain_exactly_as_uploaded(app) {
        let api = customer_with_app(&app, &["www.example.com"]).await;
        let root = pki::root("Test Root");
        let inter = pki::intermediate("Test Intermediate", &root);
        let leaf = pki::leaf(&["www.example.com"], &inter, Alg::P256);
        let chain = format!("{}{}", inter.pem(), root.pem());
        let form = crate::common::upload_form(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes(), chain.as_bytes(), true);
        let resp = api.multipart("/api/v1/apps/shop/certs", form).await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
        assert_eq!(resp.json["chain_len"], 2, "the root is kept with bypass");
        assert!(!resp.codes("warnings").contains(&"chain_stripped".to_string()));
    }
}

db_test! {
    async fn a_missing_intermediate_and_a_self_signed_certificate_are_untrusted_warnings(app) {
        let api = customer_with_app(&app, &["www.example.com"]).await;
        let root = pki::root("Test Root");
        let inter = pki::intermediate("Test Intermediate", &root);
        let leaf = pki::leaf(&["www.example.com"], &inter, Alg::P256);
        let resp = api.upload("shop", leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes(), b"").await;
        assert_eq!(resp.status, StatusCode::CREATED);
        assert_eq!(resp.json["trusted"], false);
        assert_eq!(resp.codes("warnings"), ["chain_incomplete"]);
        assert!(resp.body.contains("Test Intermediate"));

        let own = pki::self_signed(&["www.example.com"]);
        let resp = api.upload("shop", own.cert_pem.as_bytes(), own.key_pem.as_bytes(), b"").await;
        assert_eq!(resp.status, StatusCode::CREATED);
        assert_eq!(resp.json["trusted"], false);
        assert_eq!(resp.codes("warnings"), ["untrusted"]);
        assert!(resp.body.contains("self-signed"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_to_an_extra_trust_root_is_trusted() {
    let root = pki::root("Private Root");
    let inter = pki::intermediate("Private Intermediate", &root);
    let roots = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(roots.path(), root.pem()).unwrap();
    let path = roots.path().to_path_buf();
    let app = TestApp::spawn_with(crate::common::Backend::Sqlite, |c| {
        c.extra_trust_roots = Some(path)
    })
    .await
    .unwrap();
    let api = customer_with_app(&app, &["www.example.com"]).await;
    let leaf = pki::leaf(&["www.example.com"], &inter, Alg::Rsa2048);
    let resp = api
        .upload(
            "shop",
            leaf.cert_pem.as_bytes(),
            leaf.key_pem.as_bytes(),
            inter.pem().as_bytes(),
        )
        .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
    assert_eq!(resp.json["trusted"], true, "{}", resp.body);
    assert!(resp.codes("warnings").is_empty(), "{}", resp.body);
}

db_test! {
    async fn uncovered_domains_and_near_expiry_are_warned_about(app) {
        let api = customer_with_app(&app, &["www.example.com", "api.example.com"]).await;
        let root = pki::root("Test Root");
        let leaf = pki::leaf_with(&["www.example.com"], &root, Alg::P256, Validity { from_days: -1, to_days: 10 });
        let resp = api.upload("shop", leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes(), b"").await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
        let warnings = resp.codes("warnings");
        assert!(warnings.contains(&"domain_uncovered".to_string()) && warnings.contains(&"expires_soon".to_string()), "{warnings:?}");
        assert!(resp.body.contains("api.example.com"));
        assert_eq!(resp.json["domains_covered"], serde_json::json!(["www.example.com"]));
    }
}

db_test! {
    async fn uploading_the_same_certificate_again_returns_the_stored_one(app) {
        let api = customer_with_app(&app, &["www.example.com"]).await;
        let leaf = pki::leaf(&["www.example.com"], &pki::root("Test Root"), Alg::P256);
        let first = api.upload("shop", leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes(), b"").await;
        let again = api.upload("shop", leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes(), b"").await;
        assert_eq!(first.status, StatusCode::CREATED);
        assert_eq!(again.status, StatusCode::OK);
        assert_eq!(first.json["id"], again.json["id"]);
        assert_eq!(app.count("SELECT COUNT(*) FROM certificates").await, 1);
    }
}

db_test! {
    async fn certificates_are_private_to_their_app_and_keys_to_their_owner(app) {
        let ann = customer_with_app(&app, &["www.example.com"]).await;
        let leaf = pki::leaf(&["www.example.com"], &pki::root("Test Root"), Alg::P256);
        let id = ann.upload_id("shop", &leaf, b"").await;
        let bob = app.api_user("bob@example.com", Role::Customer).await;
        assert_eq!(bob.get(&format!("/api/v1/certs/{id}")).await.status, StatusCode::NOT_FOUND);
        assert_eq!(bob.get("/api/v1/apps/shop/certs").await.status, StatusCode::NOT_FOUND);
        let other = pki::leaf(&["www.example.com"], &pki::root("Test Root"), Alg::P256);
        let resp = bob.upload("shop", other.cert_pem.as_bytes(), other.key_pem.as_bytes(), b"").await;
        assert_eq!(resp.status, StatusCode::NOT_FOUND);

        let staff = app.api_user("sam@example.com", Role::Staff).await;
        let info = staff.get(&format!("/api/v1/certs/{id}")).await;
        assert_eq!(info.status, StatusCode::OK);
        assert!(!info.body.contains("PRIVATE KEY") && !info.body.contains("AGE ENCRYPTED"), "staff never see key material");
        let resp = staff.upload("shop", other.cert_pem.as_bytes(), other.key_pem.as_bytes(), b"").await;
        assert_eq!(resp.status, StatusCode::FORBIDDEN);
        let listed = staff.get("/api/v1/apps/shop/certs").await;
        assert_eq!(listed.json["items"].as_array().unwrap().len(), 1);
    }
}

db_test! {
    async fn refusals_are_audited_with_their_codes_and_never_key_bytes(app) {
        let api = customer_with_app(&app, &["www.example.com"]).await;
        let leaf = pki::leaf(&["www.example.com"], &pki::root("Test Root"), Alg::P256);
        let other = Alg::P256.key().serialize_pem();
        api.upload("shop", leaf.cert_pem.as_bytes(), other.as_bytes(), b"").await;
        let detail: String = sqlx::query_scalar("SELECT detail FROM audit_events WHERE action = 'cert.refused'")
            .fetch_one(&app.db).await.unwrap();
        assert!(detail.contains("key_mismatch") && detail.contains(&leaf.fingerprint()), "{detail}");
        assert!(!detail.contains("PRIVATE"));
    }
}

db_test! {
    async fn a_customer_uploads_through_the_browser_and_reads_the_report(app) {
        let browser = app.signed_in_browser("ann@example.com", Role::Customer).await;
        browser.submit("/apps", "/apps", &[("name", "shop"), ("backend_url", "http://10.0.0.5:8000")]).await;
        browser.submit("/apps/shop", "/apps/shop/domains", &[("hostname", "www.example.com")]).await;
        let page = browser.get("/apps/shop").await;
        assert!(page.body.contains("No certificates yet"));
        let token = browser.csrf("/apps/shop/certs/new").await;
        let root = pki::root("Test Root");
        let leaf = pki::leaf(&["www.example.com"], &root, Alg::P256);
        let wrong = Alg::P256.key().serialize_pem();
        let send = |key: String| {
            let form = crate::common::upload_form(leaf.cert_pem.as_bytes(), key.as_bytes(), b"", false).text("csrf_token", token.clone());
            browser.http.post(format!("{}/apps/shop/certs", app.address)).header("origin", &app.address).multipart(form).send()
        };
        let refused = send(wrong).await.unwrap();
        assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body = refused.text().await.unwrap();
        assert!(body.contains("id=\"private_key-error\"") && body.contains("does not belong"), "the error sits next to the key field");
        assert!(!body.contains("BEGIN PRIVATE KEY-----\n"), "a refused key is never echoed back");
        let first_line = leaf.cert_pem.lines().nth(1).unwrap();
        assert!(body.contains(first_line), "the certificate comes back filled in, to fix rather than choose again");
        let accepted = send(leaf.key_pem.clone()).await.unwrap();
        assert_eq!(accepted.status(), StatusCode::SEE_OTHER);
        let location = accepted.headers()["location"].to_str().unwrap().to_string();
        let report = browser.get(&location).await;
        assert!(report.body.contains(&leaf.fingerprint()) && report.body.contains("chain_incomplete"));
        let form = crate::common::upload_form(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes(), b"", false);
        let no_csrf = browser.http.post(format!("{}/apps/shop/certs", app.address)).multipart(form).send().await.unwrap();
        assert_eq!(no_csrf.status(), StatusCode::FORBIDDEN);
    }
}
