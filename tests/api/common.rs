//! The test harness: the real server on port 0, on a fresh database per test (a temporary
//! SQLite file, or a new PostgreSQL database dropped at the end), and clients that act like a
//! browser (cookies, CSRF tokens) or like the CLI (a bearer token).

use std::sync::Arc;

use std::collections::HashMap;

use certdrop::{
    accounts::{
        Role, password, second_factor, store,
        totp::{self, TotpSecret},
    },
    config::Config,
    db::Db,
    startup::Application,
};
use reqwest::{StatusCode, cookie::Jar, redirect::Policy};
use secrecy::SecretString;
use serde_json::Value;
use tempfile::TempDir;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs a test body once on SQLite and once on PostgreSQL (when CERTDROP_TEST_POSTGRES_URL is set).
#[macro_export]
macro_rules! db_test {
    ($(#[$meta:meta])* async fn $name:ident($app:ident) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(#[$meta])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let $app = $crate::common::TestApp::spawn($crate::common::Backend::Sqlite)
                    .await
                    .expect("SQLite is always available");
                $body
            }
            $(#[$meta])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some($app) = $crate::common::TestApp::spawn($crate::common::Backend::Postgres).await else {
                    return;
                };
                $body
            }
        }
    };
}

/// Whether an outside program a test needs may be missing (fresh machine) or must be present (CI).
pub fn require_or_skip(what: &str, available: bool) -> bool {
    if available {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{what} is required under CI=true (.ci/run installs it)");
    }
    eprintln!("skipping: {what} is not available on this machine");
    false
}

/// A PostgreSQL database made for one test, dropped when the test ends.
struct PgDatabase {
    admin_url: String,
    name: String,
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                sqlx::any::install_default_drivers();
                if let Ok(mut conn) =
                    <sqlx::AnyConnection as sqlx::Connection>::connect(&admin_url).await
                {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

async fn create_pg_database() -> Option<(String, PgDatabase)> {
    let admin_url = match std::env::var("CERTDROP_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            require_or_skip("PostgreSQL (CERTDROP_TEST_POSTGRES_URL)", false);
            return None;
        }
    };
    sqlx::any::install_default_drivers();
    let name = format!("certdrop_t_{}", uuid::Uuid::new_v4().simple());
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin_url)
        .await
        .expect("connect to CERTDROP_TEST_POSTGRES_URL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    let mut url = url::Url::parse(&admin_url).expect("CERTDROP_TEST_POSTGRES_URL is a URL");
    url.set_path(&name);
    Some((url.to_string(), PgDatabase { admin_url, name }))
}

/// A fresh database for one test: a SQLite file in `dir`, or a new PostgreSQL database.
pub struct TestDatabase {
    pub url: String,
    pub backend: certdrop::config::DbBackend,
    _pg: Option<PgDatabase>,
}

impl TestDatabase {
    pub async fn new(backend: Backend, dir: &std::path::Path) -> Option<Self> {
        Some(match backend {
            Backend::Sqlite => Self {
                url: format!("sqlite://{}", dir.join("certdrop.db").display()),
                backend: certdrop::config::DbBackend::Sqlite,
                _pg: None,
            },
            Backend::Postgres => {
                let (url, db) = create_pg_database().await?;
                Self {
                    url,
                    backend: certdrop::config::DbBackend::Postgres,
                    _pg: Some(db),
                }
            }
        })
    }
}

/// An authenticator app as its owner holds it: the enrolled secret, and the last step it gave
/// a code for (the server accepts each code once, so the next code is of a later step).
pub struct Authenticator {
    secret: TotpSecret,
    last_step: std::sync::Mutex<i64>,
}

impl Authenticator {
    pub fn new(secret: TotpSecret) -> Self {
        Self {
            secret,
            last_step: std::sync::Mutex::new(0),
        }
    }

    /// From what `certdrop users:create` printed (its `otpauth://…secret=…` line) or a page's key.
    pub fn from_text(text: &str) -> Self {
        let secret = text
            .split(|c: char| c == '?' || c == '&' || c.is_whitespace())
            .find_map(|part| part.strip_prefix("secret="))
            .unwrap_or(text.trim());
        Self::new(TotpSecret::from_base32(secret).expect("a base32 TOTP secret"))
    }

    /// The next code the server will accept: the current step's, or the next step's when the
    /// current one was used already (waiting when both were).
    pub async fn code(&self) -> String {
        loop {
            let now = totp::step_of(time::OffsetDateTime::now_utc().unix_timestamp());
            {
                let mut last = self.last_step.lock().unwrap();
                let step = now.max(*last + 1);
                if step <= now + 1 {
                    *last = step;
                    return self.secret.code_at_step(step);
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
}

pub struct TestApp {
    pub address: String,
    pub db: Db,
    pub vault: Arc<certdrop::vault::Vault>,
    pub state: certdrop::state::AppState,
    pub data_dir: TempDir,
    pub database: TestDatabase,
    authenticators: std::sync::Mutex<HashMap<String, Arc<Authenticator>>>,
    crew: tokio::sync::OnceCell<(Api, Api)>,
    /// The DNS server certdrop asks (`CERTDROP_DNS_RESOLVER`); tests edit its zone.
    pub dns: crate::dns_server::TestDns,
    _server: tokio::task::JoinHandle<()>,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Option<Self> {
        Self::spawn_with(backend, |_| {}).await
    }

    /// Spawns with a configuration adjusted by `tweak` (e.g. an SMTP URL).
    pub async fn spawn_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Option<Self> {
        // TEST_LOG=debug shows the server's logs in a failing test's output.
        if let Ok(filter) = std::env::var("TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let data_dir = tempfile::tempdir().expect("temp dir");
        let database = TestDatabase::new(backend, data_dir.path()).await?;
        let mut config = Config::for_data_dir(data_dir.path()).expect("default config");
        config.database_url = SecretString::from(database.url.clone());
        config.db_backend = database.backend;
        // Backends and edge nodes all live on loopback here.
        config.allow_private_backends = true;
        let dns = crate::dns_server::TestDns::start();
        config.dns_resolver = Some(dns.addr);
        tweak(&mut config);
        let app = Application::build(config)
            .await
            .expect("build the application");
        let address = format!("http://{}", app.address());
        let db = app.state().db.clone();
        let vault = app.state().vault.clone();
        let state = app.state().clone();
        let server = tokio::spawn(async move {
            app.run_until(std::future::pending())
                .await
                .expect("server runs");
        });
        Some(Self {
            address,
            db,
            vault,
            state,
            data_dir,
            database,
            authenticators: Default::default(),
            crew: Default::default(),
            dns,
            _server: server,
        })
    }

    /// The database engine this app runs on, to spawn another like it.
    pub fn backend(&self) -> Backend {
        match self.database.backend {
            certdrop::config::DbBackend::Sqlite => Backend::Sqlite,
            certdrop::config::DbBackend::Postgres => Backend::Postgres,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// The environment a `certdrop` server verb needs to act on this app's database.
    pub fn server_env(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "CERTDROP_DATA_DIR",
                self.data_dir.path().display().to_string(),
            ),
            ("CERTDROP_DATABASE_URL", self.database.url.clone()),
        ]
    }

    /// Creates a user directly in the database, with a second factor for staff and admins as
    /// `certdrop users:create` enrols one; returns the password.
    pub async fn user(&self, email: &str, role: Role) -> String {
        let pw = self.user_without_second_factor(email, role).await;
        if role.is_staff() {
            let id: i64 = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
                .bind(email)
                .fetch_one(&self.db)
                .await
                .unwrap();
            let (secret, _) = second_factor::enrol_now(&self.db, &self.vault, id)
                .await
                .unwrap();
            self.authenticators
                .lock()
                .unwrap()
                .insert(email.to_string(), Arc::new(Authenticator::new(secret)));
        }
        pw
    }

    /// Creates a user with no second factor (a staff member then enrols at first sign-in).
    pub async fn user_without_second_factor(&self, email: &str, role: Role) -> String {
        let pw = format!("pw-{}-long-enough", uuid::Uuid::new_v4().simple());
        let hash = password::hash(SecretString::from(pw.clone()))
            .await
            .unwrap();
        store::create_user(&self.db, email, &hash, role, true)
            .await
            .unwrap();
        pw
    }

    /// The authenticator of a user created by `user` with a second factor.
    pub fn authenticator(&self, email: &str) -> Arc<Authenticator> {
        self.authenticators.lock().unwrap()[email].clone()
    }

    /// The next authenticator code of `email`.
    pub async fn otp(&self, email: &str) -> String {
        self.authenticator(email).code().await
    }

    /// A user with an API client signed in as them (with their code, for staff and admins).
    pub async fn api_user(&self, email: &str, role: Role) -> Api {
        let pw = self.user(email, role).await;
        let otp = match role.is_staff() {
            true => Some(self.otp(email).await),
            false => None,
        };
        let resp = self
            .api_anonymous()
            .post(
                "/api/v1/tokens",
                serde_json::json!({"email": email, "password": pw, "otp": otp}),
            )
            .await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
        Api {
            base: self.address.clone(),
            token: Some(resp.json["token"].as_str().unwrap().to_string()),
            http: reqwest::Client::new(),
            zone: Some(self.dns.zone.clone()),
        }
    }

    pub fn api_anonymous(&self) -> Api {
        Api {
            base: self.address.clone(),
            token: None,
            http: reqwest::Client::new(),
            zone: Some(self.dns.zone.clone()),
        }
    }

    pub fn browser(&self) -> Browser {
        Browser::new(&self.address)
    }

    /// A browser signed in as a new user of `role`.
    pub async fn signed_in_browser(&self, email: &str, role: Role) -> Browser {
        let pw = self.user(email, role).await;
        let browser = self.browser();
        self.log_in(&browser, email, &pw).await;
        browser
    }

    /// Signs `browser` in: the password, then the authenticator code when one is asked for.
    pub async fn log_in(&self, browser: &Browser, email: &str, password: &str) {
        let resp = browser.log_in(email, password).await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER, "{}", resp.body);
        if resp.location().starts_with("/login/second-factor") {
            let code = self.otp(email).await;
            let resp = browser
                .submit(resp.location(), "/login/second-factor", &[("otp", &code)])
                .await;
            assert_eq!(resp.status, StatusCode::SEE_OTHER, "{}", resp.body);
        }
    }

    /// The id of the account at `email`.
    pub async fn user_id(&self, email: &str) -> i64 {
        sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
            .bind(email)
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(&self.db)
            .await
            .unwrap()
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
    pub json: Value,
}

impl Resp {
    pub async fn read(resp: reqwest::Response) -> Self {
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap();
        let json = serde_json::from_str(&body).unwrap_or(Value::Null);
        Self {
            status,
            headers,
            body,
            json,
        }
    }

    pub fn location(&self) -> &str {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The first error code of an API error body.
    pub fn code(&self) -> &str {
        self.json["errors"][0]["code"].as_str().unwrap_or("")
    }
}

/// A JSON API client, optionally with a bearer token.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: Option<String>,
    pub http: reqwest::Client,
    /// The zone of the test's DNS server, where the owner publishes ownership proofs.
    pub zone: Option<crate::dns_server::DnsZone>,
}

impl Api {
    /// An anonymous client of the server at `base`.
    pub fn new(base: &str) -> Self {
        Self {
            base: base.to_string(),
            token: None,
            http: reqwest::Client::new(),
            zone: None,
        }
    }

    /// Proves ownership of a claimed domain as its owner would: publishes the TXT record the
    /// API asks for in the test's DNS zone, then asks certdrop to verify it.
    pub async fn prove_domain(&self, app: &str, hostname: &str) {
        let path = format!("/api/v1/apps/{app}/domains/{hostname}");
        let domain = self.get(&path).await;
        assert_eq!(domain.status, StatusCode::OK, "{}", domain.body);
        let v = &domain.json["verification"];
        if v["state"] == "verified" {
            return;
        }
        self.zone.as_ref().expect("a client of a TestApp").txt(
            v["txt_name"].as_str().unwrap(),
            v["txt_value"].as_str().unwrap(),
        );
        let resp = self
            .post(&format!("{path}/verify"), serde_json::json!({}))
            .await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
        assert_eq!(resp.json["verification"]["state"], "verified");
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        Resp::read(self.req(reqwest::Method::GET, path).send().await.unwrap()).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        Resp::read(
            self.req(reqwest::Method::POST, path)
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        Resp::read(
            self.req(reqwest::Method::DELETE, path)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn create_app(&self, name: &str, domains: &[&str]) {
        let resp = self
            .post(
                "/api/v1/apps",
                serde_json::json!({"name": name, "backend_url": "http://127.0.0.1:9"}),
            )
            .await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
        for d in domains {
            self.add_domain(name, d).await;
        }
    }

    /// Adds a domain to an app and proves it is the owner's, as a customer would.
    pub async fn add_domain(&self, app: &str, hostname: &str) {
        let resp = self
            .post(
                &format!("/api/v1/apps/{app}/domains"),
                serde_json::json!({"hostname": hostname}),
            )
            .await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
        self.prove_domain(app, resp.json["hostname"].as_str().unwrap())
            .await;
    }
}

/// Acts like a browser: keeps cookies, does not follow redirects, reads CSRF tokens from forms.
pub struct Browser {
    pub base: String,
    pub http: reqwest::Client,
    pub jar: Arc<Jar>,
}

impl Browser {
    pub fn new(base: &str) -> Self {
        let jar = Arc::new(Jar::default());
        Self {
            base: base.to_string(),
            http: reqwest::Client::builder()
                .cookie_provider(jar.clone())
                .redirect(Policy::none())
                .build()
                .unwrap(),
            jar,
        }
    }

    /// Posts a multipart form with the CSRF token of the page at `form_page`.
    pub async fn submit_multipart(
        &self,
        form_page: &str,
        action: &str,
        form: reqwest::multipart::Form,
    ) -> Resp {
        let token = self.csrf(form_page).await;
        Resp::read(
            self.http
                .post(format!("{}{action}", self.base))
                .header("origin", &self.base)
                .multipart(form.text("csrf_token", token))
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Resp {
        Resp::read(
            self.http
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// The CSRF token in the forms of a page.
    pub async fn csrf(&self, path: &str) -> String {
        let page = self.get(path).await;
        csrf_in(&page.body).unwrap_or_else(|| panic!("no CSRF token on {path}: {}", page.body))
    }

    /// Posts a form as is (add `csrf_token` yourself, or leave it out to test the refusal).
    pub async fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> Resp {
        Resp::read(
            self.http
                .post(format!("{}{path}", self.base))
                .header("origin", &self.base)
                .form(fields)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// Posts a form with the CSRF token of the page at `form_page`.
    pub async fn submit(&self, form_page: &str, action: &str, fields: &[(&str, &str)]) -> Resp {
        let token = self.csrf(form_page).await;
        let mut all = vec![("csrf_token", token.as_str())];
        all.extend_from_slice(fields);
        self.post_form(action, &all).await
    }

    /// Posts a form from the page at `form_page` as Chromium does: with its CSRF token and that
    /// page as the `Referer`.
    pub async fn submit_from(
        &self,
        form_page: &str,
        action: &str,
        fields: &[(&str, &str)],
    ) -> Resp {
        let token = self.csrf(form_page).await;
        let mut all = vec![("csrf_token", token.as_str())];
        all.extend_from_slice(fields);
        Resp::read(
            self.http
                .post(format!("{}{action}", self.base))
                .header("origin", &self.base)
                .header("referer", format!("{}{form_page}", self.base))
                .form(&all)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn log_in(&self, email: &str, password: &str) -> Resp {
        self.submit(
            "/login",
            "/login",
            &[("email", email), ("password", password)],
        )
        .await
    }

    pub fn session_cookie(&self) -> Option<String> {
        use reqwest::cookie::CookieStore;
        let url = self.base.parse().unwrap();
        let cookies = self.jar.cookies(&url)?;
        cookies
            .to_str()
            .ok()?
            .split("; ")
            .find_map(|c| c.strip_prefix("certdrop_session=").map(str::to_string))
    }
}

pub fn csrf_in(html: &str) -> Option<String> {
    let marker = "name=\"csrf_token\" value=\"";
    let start = html.find(marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(html[start..end].to_string())
}

/// A multipart upload of certificate, key and chain (any may be empty).
pub fn upload_form(
    certificate: &[u8],
    private_key: &[u8],
    chain: &[u8],
    bypass: bool,
) -> reqwest::multipart::Form {
    let mut form = reqwest::multipart::Form::new()
        .part(
            "certificate",
            reqwest::multipart::Part::bytes(certificate.to_vec()).file_name("certificate.pem"),
        )
        .part(
            "private_key",
            reqwest::multipart::Part::bytes(private_key.to_vec()).file_name("key.pem"),
        );
    if !chain.is_empty() {
        form = form.part(
            "chain",
            reqwest::multipart::Part::bytes(chain.to_vec()).file_name("chain.pem"),
        );
    }
    if bypass {
        form = form.text("bypass", "true");
    }
    form
}

impl Api {
    pub async fn multipart(&self, path: &str, form: reqwest::multipart::Form) -> Resp {
        Resp::read(
            self.req(reqwest::Method::POST, path)
                .multipart(form)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn upload(
        &self,
        app: &str,
        certificate: &[u8],
        private_key: &[u8],
        chain: &[u8],
    ) -> Resp {
        self.multipart(
            &format!("/api/v1/apps/{app}/certs"),
            upload_form(certificate, private_key, chain, false),
        )
        .await
    }
}

impl Resp {
    /// Every error or warning code of a body.
    pub fn codes(&self, key: &str) -> Vec<String> {
        self.json[key]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|e| e["code"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// `certdrop` run as a separate process, as an operator runs it, with its log in a file.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub address: String,
    pub log: std::path::PathBuf,
    /// The DNS server this process asks.
    pub dns: crate::dns_server::TestDns,
}

impl ServerProcess {
    /// Starts `certdrop serve` on port 0 and waits until it says where it listens.
    pub fn start(data_dir: &std::path::Path, database_url: &str, env: &[(&str, &str)]) -> Self {
        let log = data_dir.with_extension(format!("{}.log", uuid::Uuid::new_v4().simple()));
        let file = std::fs::File::create(&log).unwrap();
        let dns = crate::dns_server::TestDns::start();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_certdrop"))
            .arg("serve")
            .env("CERTDROP_DATA_DIR", data_dir)
            .env("CERTDROP_DATABASE_URL", database_url)
            .env("CERTDROP_LISTEN", "127.0.0.1:0")
            .env("CERTDROP_ALLOW_PRIVATE_BACKENDS", "true")
            .env("CERTDROP_DNS_RESOLVER", dns.addr.to_string())
            .envs(env.iter().copied())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains("certdrop is serving")) {
                let addr = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("address="))
                    .expect("the serving line names its address");
                return Self {
                    child,
                    address: format!("http://{addr}"),
                    log,
                    dns,
                };
            }
            if std::time::Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
                let _ = child.kill();
                let _ = child.wait();
                panic!("certdrop serve did not start:\n{text}");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait for the graceful exit.
    pub fn stop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    pub fn api(&self, token: Option<String>) -> Api {
        Api {
            token,
            zone: Some(self.dns.zone.clone()),
            ..Api::new(&self.address)
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Runs the `certdrop` binary to completion with `env`, feeding `stdin`.
pub fn certdrop_command(
    args: &[&str],
    env: &[(&str, String)],
    stdin: Option<&str>,
) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_certdrop"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

impl TestApp {
    /// The people who run the edge fleet here: a staff member who creates pairs and an admin
    /// who confirms their nodes (neither may then approve deployments to those pairs).
    pub async fn crew(&self) -> &(Api, Api) {
        self.crew
            .get_or_init(|| async {
                (
                    self.api_user("ops@certdrop.test", Role::Staff).await,
                    self.api_user("keys@certdrop.test", Role::Admin).await,
                )
            })
            .await
    }

    /// A staff member's API client, and a confirmed edge pair whose two nodes are not running
    /// (for tests of the control plane alone). Returns the staff client.
    pub async fn staff_with_idle_pair(&self, staff_email: &str) -> Api {
        let staff = self.api_user(staff_email, Role::Staff).await;
        self.idle_pair("pair-a").await;
        staff
    }

    /// A pair created by the crew's staff member, its nodes enrolled with recipients made here
    /// and confirmed by the crew's admin after comparing fingerprints.
    pub async fn idle_pair(&self, name: &str) {
        let (ops, keys) = self.crew().await;
        let pair = ops
            .post("/api/v1/edge-pairs", serde_json::json!({"name": name}))
            .await;
        assert_eq!(pair.status, StatusCode::CREATED, "{}", pair.body);
        for token in pair.json["enroll_tokens"].as_array().unwrap() {
            let recipient = age::x25519::Identity::generate().to_public().to_string();
            let resp = self
                .api_anonymous()
                .post(
                    "/api/v1/edge/enroll",
                    serde_json::json!({"enroll_token": token, "recipient": recipient, "address": "192.0.2.1:443"}),
                )
                .await;
            assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
            let id = resp.json["node_id"].as_i64().unwrap();
            confirm_node(keys, id, &certdrop::edge::recipient_fingerprint(&recipient)).await;
        }
    }
}

/// An admin confirms node `id` with the fingerprint they compared.
pub async fn confirm_node(admin: &Api, id: i64, fingerprint: &str) {
    let resp = admin
        .post(
            &format!("/api/v1/edge-nodes/{id}/confirm"),
            serde_json::json!({"recipient_fingerprint": fingerprint}),
        )
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    assert_eq!(resp.json["state"], "confirmed");
}

impl Api {
    /// A JSON PATCH, read whole.
    pub async fn patch_json(&self, path: &str, body: Value) -> Resp {
        Resp::read(
            self.req(reqwest::Method::PATCH, path)
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// A JSON PATCH; returns the status.
    pub async fn patch(&self, path: &str, body: Value) -> StatusCode {
        self.req(reqwest::Method::PATCH, path)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status()
    }
}

impl Api {
    /// Uploads a generated leaf and its key (and `chain`) to `app`; returns the certificate id.
    pub async fn upload_id(&self, app: &str, leaf: &crate::pki::Leaf, chain: &[u8]) -> i64 {
        let resp = self
            .upload(
                app,
                leaf.cert_pem.as_bytes(),
                leaf.key_pem.as_bytes(),
                chain,
            )
            .await;
        assert!(resp.status.is_success(), "{}", resp.body);
        resp.json["id"].as_i64().unwrap()
    }

    /// Opens a ticket; returns its id.
    pub async fn open_ticket(&self, app: &str, kind: &str, certificate_id: Option<i64>) -> i64 {
        let resp = self
            .post(
                "/api/v1/tickets",
                serde_json::json!({"app": app, "kind": kind, "certificate_id": certificate_id}),
            )
            .await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
        resp.json["id"].as_i64().unwrap()
    }
}

/// A user created as an operator does (`certdrop users:create`, password "correct horse
/// battery"), signed in over the API: with the password and, for staff and admins, a code from
/// the authenticator that the command's `otpauth://` line enrols.
pub async fn cli_user(base: &str, env: &[(&str, String)], email: &str, role: &str) -> Api {
    let out = certdrop_command(
        &[
            "users:create",
            "--email",
            email,
            "--role",
            role,
            "--password-stdin",
        ],
        env,
        Some("correct horse battery\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    let otp = match printed.lines().find(|l| l.starts_with("otpauth://totp/")) {
        Some(uri) => Some(Authenticator::from_text(uri).code().await),
        None => None,
    };
    let mut api = Api::new(base);
    let resp = api
        .post(
            "/api/v1/tokens",
            serde_json::json!({"email": email, "password": "correct horse battery", "otp": otp}),
        )
        .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
    api.token = Some(resp.json["token"].as_str().unwrap().to_string());
    api
}
