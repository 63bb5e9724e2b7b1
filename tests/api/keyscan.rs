//! No plaintext private key anywhere: upload keys through every path that writes (with debug
//! logs on), then scan the data directory, the database and the logs for any fragment of any
//! uploaded key, in PEM, base64, hex or raw DER form — and for a staff member's TOTP secret.

use base64::{Engine, engine::general_purpose::STANDARD};
use certdrop::accounts::Role;
use reqwest::StatusCode;

use crate::{
    common::{Backend, Browser, ServerProcess, TestDatabase, certdrop_command, upload_form},
    pki::{self, Alg},
};

/// Every form in which public bytes (a certificate, which holds the public half of a key) may
/// legitimately be stored: a fragment found in here proves nothing.
pub fn public_forms(der: &[u8]) -> Vec<u8> {
    let mut out = der.to_vec();
    out.extend(hex::encode(der).into_bytes());
    out.extend(hex::encode_upper(der).into_bytes());
    for shift in 0..3 {
        out.extend(STANDARD.encode(&der[shift..]).into_bytes());
    }
    out
}

/// Fragments that would betray a key: its PEM lines, and windows of its DER as raw bytes,
/// base64 (at every alignment) and hex, less those that are public (EC and Ed25519 private
/// keys carry their public point, which the certificate carries too).
pub fn fragments(key_pem: &str, public: &[u8]) -> Vec<Vec<u8>> {
    fragments_of(key_pem)
        .into_iter()
        .filter(|n| !public.windows(n.len()).any(|w| w == n.as_slice()))
        .collect()
}

fn fragments_of(key_pem: &str) -> Vec<Vec<u8>> {
    let body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = STANDARD.decode(&body).unwrap();
    let mut out: Vec<Vec<u8>> = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 24)
        .map(|l| l.as_bytes().to_vec())
        .collect();
    // Skip the first bytes (the ASN.1 header is the same for every key of a type).
    for start in (24..der.len().saturating_sub(24)).step_by(16) {
        let window = &der[start..start + 24];
        out.push(window.to_vec());
        out.push(hex::encode(window).into_bytes());
        out.push(hex::encode_upper(window).into_bytes());
    }
    for shift in 0..3 {
        let b64 = STANDARD.encode(&der[24 + shift..]);
        for start in (0..b64.len().saturating_sub(32)).step_by(40) {
            out.push(b64.as_bytes()[start..start + 32].to_vec());
        }
    }
    out
}

pub fn find_any(haystack: &[u8], needles: &[Vec<u8>]) -> Option<usize> {
    needles
        .iter()
        .position(|n| haystack.windows(n.len()).any(|w| w == n.as_slice()))
}

pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

async fn scan(backend: Backend) {
    let data = tempfile::tempdir().unwrap();
    let Some(database) = TestDatabase::new(backend, data.path()).await else {
        return;
    };
    let env = vec![
        ("CERTDROP_DATA_DIR", data.path().display().to_string()),
        ("CERTDROP_DATABASE_URL", database.url.clone()),
    ];
    let mut server = ServerProcess::start(data.path(), &database.url, &[("RUST_LOG", "debug")]);
    let out = certdrop_command(
        &[
            "users:create",
            "--email",
            "ann@example.com",
            "--role",
            Role::Customer.as_str(),
            "--password-stdin",
        ],
        &env,
        Some("correct horse battery\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let anonymous = server.api(None);
    let token = anonymous
        .post(
            "/api/v1/tokens",
            serde_json::json!({"email": "ann@example.com", "password": "correct horse battery"}),
        )
        .await
        .json["token"]
        .as_str()
        .unwrap()
        .to_string();
    let api = server.api(Some(token));
    api.create_app("shop", &["www.example.com"]).await;

    let root = pki::root("Test Root");
    let inter = pki::intermediate("Test Intermediate", &root);
    let mut keys = Vec::new();
    let mut public = Vec::new();
    for alg in [Alg::P256, Alg::P384, Alg::Rsa2048, Alg::Ed25519] {
        let leaf = pki::leaf(&["www.example.com"], &inter, alg);
        let resp = api
            .upload(
                "shop",
                leaf.cert_pem.as_bytes(),
                leaf.key_pem.as_bytes(),
                inter.pem().as_bytes(),
            )
            .await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
        // The same upload again, and the key inside a bundle.
        api.upload(
            "shop",
            leaf.cert_pem.as_bytes(),
            leaf.key_pem.as_bytes(),
            b"",
        )
        .await;
        let bundle = format!("{}{}", leaf.cert_pem, leaf.key_pem);
        api.upload("shop", bundle.as_bytes(), b"", b"").await;
        public.extend(public_forms(&leaf.der));
        keys.push(leaf.key_pem);
    }
    // Refused uploads carrying keys: a mismatched key, an expired certificate, two keys.
    let leaf = pki::leaf(&["www.example.com"], &inter, Alg::P256);
    public.extend(public_forms(&leaf.der));
    let stranger = Alg::Rsa2048.key().serialize_pem();
    assert_eq!(
        api.upload("shop", leaf.cert_pem.as_bytes(), stranger.as_bytes(), b"")
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let both = format!("{}{}", leaf.key_pem, stranger);
    assert_eq!(
        api.upload("shop", leaf.cert_pem.as_bytes(), both.as_bytes(), b"")
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let old = pki::leaf_with(
        &["www.example.com"],
        &inter,
        Alg::P256,
        pki::Validity {
            from_days: -10,
            to_days: -1,
        },
    );
    public.extend(public_forms(&old.der));
    assert_eq!(
        api.upload("shop", old.cert_pem.as_bytes(), old.key_pem.as_bytes(), b"")
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    keys.extend([stranger, old.key_pem]);
    // The browser form: accepted, and refused.
    let browser = Browser::new(&server.address);
    assert_eq!(
        browser
            .log_in("ann@example.com", "correct horse battery")
            .await
            .status,
        StatusCode::SEE_OTHER
    );
    let form = upload_form(
        leaf.cert_pem.as_bytes(),
        leaf.key_pem.as_bytes(),
        b"",
        false,
    );
    let resp = browser
        .submit_multipart("/apps/shop/certs/new", "/apps/shop/certs", form)
        .await;
    assert_eq!(resp.status, StatusCode::SEE_OTHER, "{}", resp.body);
    let wrong = Alg::P384.key().serialize_pem();
    let form = upload_form(leaf.cert_pem.as_bytes(), wrong.as_bytes(), b"", false);
    let resp = browser
        .submit_multipart("/apps/shop/certs/new", "/apps/shop/certs", form)
        .await;
    assert_eq!(resp.status, StatusCode::UNPROCESSABLE_ENTITY);
    keys.extend([leaf.key_pem, wrong]);
    // A staff member's second factor: signs in through the browser with a code (and the
    // enrolment secret rests sealed, so it too must appear nowhere in the clear).
    let out = certdrop_command(
        &[
            "users:create",
            "--email",
            "sam@example.com",
            "--role",
            "staff",
            "--password-stdin",
        ],
        &env,
        Some("correct horse battery\n"),
    );
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let uri = printed
        .lines()
        .find(|l| l.starts_with("otpauth://"))
        .unwrap()
        .to_string();
    let totp_secret = uri
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("secret="))
        .unwrap()
        .to_string();
    let staff = Browser::new(&server.address);
    let resp = staff
        .log_in("sam@example.com", "correct horse battery")
        .await;
    let code = crate::common::Authenticator::from_text(&uri).code().await;
    let resp = staff
        .submit(resp.location(), "/login/second-factor", &[("otp", &code)])
        .await;
    assert_eq!(resp.status, StatusCode::SEE_OTHER, "{}", resp.body);

    let out = certdrop_command(&["vault:rotate"], &env, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop();

    let mut needles = Vec::new();
    for key in &keys {
        needles.extend(fragments(key, &public));
    }
    assert!(
        needles.len() > keys.len() * 10,
        "enough of each key is secret to look for"
    );
    needles.push(totp_secret.clone().into_bytes());
    needles.push(totp_secret.to_lowercase().into_bytes());
    let log = std::fs::read(&server.log).unwrap();
    assert!(
        log.len() > 1000 && String::from_utf8_lossy(&log).contains("DEBUG"),
        "debug logs were captured"
    );
    assert_eq!(
        find_any(&log, &needles),
        None,
        "a key fragment is in the log"
    );
    let files = files_under(data.path());
    assert!(files.iter().any(|f| f.ends_with("vault-identity.age")));
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        assert_eq!(
            find_any(&bytes, &needles),
            None,
            "a key fragment is in {}",
            file.display()
        );
    }
    if backend == Backend::Postgres {
        sqlx::any::install_default_drivers();
        let db = sqlx::AnyPool::connect(&database.url).await.unwrap();
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
        )
        .fetch_all(&db)
        .await
        .unwrap();
        assert!(tables.contains(&"certificates".to_string()));
        for table in tables {
            let rows: Vec<String> =
                sqlx::query_scalar(&format!("SELECT CAST(t AS TEXT) FROM {table} t"))
                    .fetch_all(&db)
                    .await
                    .unwrap();
            let dump = rows.join("\n");
            assert_eq!(
                find_any(dump.as_bytes(), &needles),
                None,
                "a key fragment is in table {table}"
            );
        }
        db.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_uploaded_key_is_found_in_logs_files_or_the_database_on_sqlite() {
    scan(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_uploaded_key_is_found_in_logs_files_or_the_database_on_postgres() {
    scan(Backend::Postgres).await;
}

#[test]
fn the_scanner_finds_a_key_where_there_is_one() {
    let key = Alg::P256.key().serialize_pem();
    let needles = fragments(&key, b"");
    assert!(find_any(key.as_bytes(), &needles).is_some());
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = STANDARD.decode(body).unwrap();
    assert!(find_any(&der, &needles).is_some(), "raw DER");
    assert!(
        find_any(hex::encode(&der).as_bytes(), &needles).is_some(),
        "hex"
    );
    let rewrapped = STANDARD.encode(&der[1..]);
    assert!(
        find_any(rewrapped.as_bytes(), &needles).is_some(),
        "base64 at another alignment"
    );
}
