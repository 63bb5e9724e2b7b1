//! The control plane under attack and faults: no open redirect, no lockout of an account by a
//! stranger, no guessable passwords, private files whoever runs first, and honest answers when
//! the database is gone or storage is full.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use certdrop::accounts::Role;
use reqwest::StatusCode;
use serde_json::json;

use crate::{
    common::{Api, Backend, Browser, TestApp, certdrop_command},
    db_test,
    pki::{self, Alg},
};

db_test! {
    async fn next_never_leaves_the_site_nor_breaks_the_redirect(app) {
        let browser = app.signed_in_browser("ann@example.com", Role::Customer).await;
        let port = app.address.rsplit(':').next().unwrap().to_string();
        for next in [
            format!("/%09/127.0.0.1:{port}/x"),
            "/%0d%0aSet-Cookie:%20a=b".to_string(),
            "/%0bx".to_string(),
            "//evil.example/".to_string(),
            "/%5Cevil.example".to_string(),
        ] {
            let resp = browser.get(&format!("/login?next={next}")).await;
            assert_eq!(resp.status, StatusCode::SEE_OTHER, "{next}");
            assert_eq!(resp.location(), "/apps", "{next}");
        }
        assert_eq!(browser.get("/login?next=/tickets").await.location(), "/tickets");
    }
}

/// A client whose requests come from `ip` (any 127.x address reaches a loopback server).
fn client_from(ip: &str, base: &str) -> Api {
    let mut api = Api::new(base);
    api.http = reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    api
}

db_test! {
    async fn a_stranger_guessing_a_password_never_locks_its_owner_out(app) {
        let pw = app.user("ann@example.com", Role::Customer).await;
        let stranger = client_from("127.0.0.2", &app.address);
        let guess = json!({"email": "ann@example.com", "password": "guess guess guess"});
        for _ in 0..5 {
            assert_eq!(stranger.post("/api/v1/tokens", guess.clone()).await.status, StatusCode::UNAUTHORIZED);
        }
        let slowed = stranger.post("/api/v1/tokens", guess.clone()).await;
        assert_eq!(slowed.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(slowed.headers["retry-after"], "1");
        // The stranger waits longer and longer; the owner, from their own address, signs in.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(stranger.post("/api/v1/tokens", guess.clone()).await.status, StatusCode::UNAUTHORIZED);
        assert_eq!(stranger.post("/api/v1/tokens", guess.clone()).await.headers["retry-after"], "2");
        let owner = client_from("127.0.0.3", &app.address);
        let resp = owner.post("/api/v1/tokens", json!({"email": "ann@example.com", "password": pw})).await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
        // The sign-in page says when to retry, in the header as well as the text.
        let mut browser = Browser::new(&app.address);
        browser.http = reqwest::Client::builder()
            .cookie_provider(browser.jar.clone())
            .redirect(reqwest::redirect::Policy::none())
            .local_address("127.0.0.2".parse::<IpAddr>().unwrap())
            .build()
            .unwrap();
        let page = browser.submit("/login", "/login", &[("email", "ann@example.com"), ("password", "guess guess guess")]).await;
        assert_eq!(page.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(page.headers.get("retry-after").is_some() && page.body.contains("Try again in"));
    }
}

db_test! {
    async fn guessable_passwords_are_refused_with_a_reason(app) {
        let browser = app.browser();
        for weak in ["aaaaaaaaaaaa", "password1234", "            ", "ann@example.com!"] {
            let resp = browser
                .submit("/signup", "/signup", &[("email", "ann@example.com"), ("password", weak), ("password_confirm", weak)])
                .await;
            assert_eq!(resp.status, StatusCode::UNPROCESSABLE_ENTITY, "{weak:?}");
            assert!(resp.body.contains("too easy to guess"), "{weak:?}");
        }
        assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 0);
        let out = certdrop_command(
            &["users:create", "--email", "sam@example.com", "--role", "staff", "--password-stdin"],
            &app.server_env(),
            Some("password1234\n"),
        );
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("too easy to guess"));
    }
}

#[cfg(unix)]
#[test]
fn files_are_private_whichever_command_runs_first() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("data");
    let out = certdrop_command(
        &[
            "users:create",
            "--email",
            "ada@example.com",
            "--role",
            "customer",
        ],
        &[("CERTDROP_DATA_DIR", data.display().to_string())],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "the data directory");
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            assert_eq!(mode(&path) & 0o077, 0, "{} is private", path.display());
        }
    }
}

/// A TCP relay the test can cut, standing between certdrop and PostgreSQL.
struct Relay {
    addr: SocketAddr,
    cut: Arc<tokio::sync::Notify>,
    up: Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    async fn start(to: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(tokio::sync::Notify::new());
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cut2, up2) = (cut.clone(), up.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // refused: dropped at once
                }
                let cut = cut2.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {},
                        () = cut.notified() => {},
                    }
                });
            }
        });
        Self { addr, cut, up }
    }

    fn stop(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.notify_waiters();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_gone_answers_are_quick_and_honest() {
    let Ok(admin_url) = std::env::var("CERTDROP_TEST_POSTGRES_URL") else {
        crate::common::require_or_skip("PostgreSQL (CERTDROP_TEST_POSTGRES_URL)", false);
        return;
    };
    let parsed = url::Url::parse(&admin_url).unwrap();
    let pg: SocketAddr = format!(
        "{}:{}",
        parsed.host_str().unwrap(),
        parsed.port().unwrap_or(5432)
    )
    .parse()
    .unwrap();
    let relay = Relay::start(pg).await;
    let relay_addr = relay.addr;
    let Some(app) = TestApp::spawn_with(Backend::Postgres, move |c| {
        let mut url =
            url::Url::parse(secrecy::ExposeSecret::expose_secret(&c.database_url)).unwrap();
        url.set_port(Some(relay_addr.port())).unwrap();
        url.set_host(Some("127.0.0.1")).unwrap();
        c.database_url = secrecy::SecretString::from(url.to_string());
    })
    .await
    else {
        return;
    };
    let ann = app.api_user("ann@example.com", Role::Customer).await;
    assert_eq!(ann.get("/api/v1/apps").await.status, StatusCode::OK);
    relay.stop();

    let start = Instant::now();
    let resp = ann.get("/api/v1/apps").await;
    assert_eq!(
        resp.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        resp.body
    );
    assert_eq!(resp.code(), "database_unavailable");
    assert!(resp.headers.get("retry-after").is_some());
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    // A browser gets a page that says so (not an empty 500).
    let browser = Browser::new(&app.address);
    let page = browser
        .submit(
            "/login",
            "/login",
            &[("email", "ann@example.com"), ("password", "whatever it is")],
        )
        .await;
    assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        page.body.contains("cannot reach its database"),
        "{}",
        page.body
    );
    let start = Instant::now();
    let ready = reqwest::get(app.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        start.elapsed() < Duration::from_millis(1800),
        "{:?}",
        start.elapsed()
    );
}

db_test! {
    async fn with_storage_full_uploads_answer_507_and_readyz_says_so(app) {
        if app.database.backend != certdrop::config::DbBackend::Sqlite {
            return; // SQLite lets a test cap the file; a full PostgreSQL disk cannot be faked here
        }
        let ann = app.api_user("ann@example.com", Role::Customer).await;
        ann.create_app("shop", &["www.example.com"]).await;
        assert_eq!(reqwest::get(app.url("/readyz")).await.unwrap().status(), StatusCode::OK);
        // Cap the database file at its current size on every pooled connection.
        let mut held = Vec::new();
        for _ in 0..8 {
            let mut conn = app.db.acquire().await.unwrap();
            let pages: i64 = sqlx::query_scalar("PRAGMA page_count").fetch_one(&mut *conn).await.unwrap();
            sqlx::query(&format!("PRAGMA max_page_count = {pages}")).execute(&mut *conn).await.unwrap();
            held.push(conn);
        }
        drop(held);
        // A certificate with a long chain kept as given: more than the file's free room.
        let root = pki::root("Full Root");
        let leaf = pki::leaf(&["www.example.com"], &root, Alg::P256);
        let chain: String = (0..40).map(|i| pki::root(&format!("Padding {i}")).pem()).collect();
        let form = crate::common::upload_form(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes(), chain.as_bytes(), true);
        let resp = ann.multipart("/api/v1/apps/shop/certs", form).await;
        assert_eq!(resp.status, StatusCode::INSUFFICIENT_STORAGE, "{}", resp.body);
        assert_eq!(resp.code(), "storage_full");
        assert_eq!(app.count("SELECT COUNT(*) FROM certificates").await, 0, "nothing half-stored");
        let ready = reqwest::get(app.url("/readyz")).await.unwrap();
        assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: serde_json::Value = ready.json().await.unwrap();
        assert_eq!(body["problem"], "storage full");
    }
}
