//! The customer, staff and admin journeys in a real headless Chromium (Debian's chromium and
//! chromedriver, driven over WebDriver), against the real server and two real edge nodes.
//! Screenshots of each main page land in target/screenshots/.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use certdrop::accounts::Role;
use fantoccini::{Client, ClientBuilder, Locator, key::Key};
use serde_json::json;

use crate::{
    common::{Authenticator, Backend, TestApp, require_or_skip},
    edge::start_pair,
    edge_support::echo_backend,
    pki::{self, Alg},
};

const LONG_DOMAIN: &str = "a-very-long-subdomain-label-that-keeps-going-and-going.another-rather-long-label.customer-example.com";

struct Chrome {
    driver: Child,
    client: Client,
    shots: PathBuf,
    downloads: tempfile::TempDir,
    base: String,
    /// The authenticator apps of the people signing in, by email.
    authenticators:
        std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<Authenticator>>>,
}

impl Drop for Chrome {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn find_program(candidates: &[&str]) -> Option<String> {
    candidates
        .iter()
        .find(|p| Path::new(p).exists())
        .map(|p| p.to_string())
}

impl Chrome {
    async fn start(base: &str) -> Option<Self> {
        let chromium = find_program(&["/usr/bin/chromium", "/usr/bin/chromium-browser"]);
        let driver = find_program(&["/usr/bin/chromedriver"]);
        if !require_or_skip(
            "chromium and chromedriver (apt-get install chromium chromium-driver)",
            chromium.is_some() && driver.is_some(),
        ) {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(driver.unwrap())
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let downloads = tempfile::tempdir().unwrap();
        let profile = downloads.path().join("profile");
        let caps = json!({
            "goog:chromeOptions": {
                "binary": chromium.unwrap(),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update", "--disable-quic",
                    "--no-first-run", "--disable-sync", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.display()),
                ],
                "prefs": {
                    "download.default_directory": downloads.path().display().to_string(),
                    "download.prompt_for_download": false,
                }
            }
        });
        let client = ClientBuilder::rustls()
            .unwrap()
            .capabilities(caps.as_object().unwrap().clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session");
        let shots = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join("screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        Some(Self {
            driver,
            client,
            shots,
            downloads,
            base: base.to_string(),
            authenticators: Default::default(),
        })
    }

    async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap();
    }

    async fn path(&self) -> String {
        self.client.current_url().await.unwrap().path().to_string()
    }

    async fn text(&self) -> String {
        self.client
            .find(Locator::Css("body"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn fill(&self, id: &str, value: &str) {
        let field = self
            .client
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|_| panic!("no #{id}"));
        field.clear().await.unwrap();
        field.send_keys(value).await.unwrap();
    }

    async fn element(&self, text: &str) -> fantoccini::elements::Element {
        let xpath = format!(
            "//button[contains(normalize-space(.), '{text}')] | //a[contains(normalize-space(.), '{text}')]"
        );
        match self.client.find(Locator::XPath(&xpath)).await {
            Ok(element) => element,
            Err(_) => panic!(
                "nothing to click named {text:?} on {}:\n{}",
                self.path().await,
                self.text().await
            ),
        }
    }

    /// Clicks a button or link by its text and waits for the next page to load.
    async fn click(&self, text: &str) {
        let element = self.element(text).await;
        self.client
            .execute("window.__certdrop_old_page = true;", vec![])
            .await
            .unwrap();
        element.click().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let loaded = self
                .client
                .execute("return window.__certdrop_old_page === undefined && document.readyState === 'complete';", vec![])
                .await
                .unwrap_or(json!(false));
            if loaded == json!(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "clicking {text:?} loaded no page"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn shot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    /// What a person needs of every page: each field labelled, each control reachable by
    /// keyboard, nothing wider than the screen.
    async fn check_page(&self, what: &str) {
        let problems = self
            .client
            .execute(
                r#"
                const problems = [];
                for (const el of document.querySelectorAll('input:not([type=hidden]), select, textarea')) {
                  if (!(el.labels && el.labels.length) && !el.getAttribute('aria-label')) problems.push('unlabelled ' + (el.id || el.name));
                }
                for (const el of document.querySelectorAll('a[href], button, input:not([type=hidden]), select, textarea')) {
                  if (el.tabIndex < 0) problems.push('not reachable by keyboard: ' + el.outerHTML.slice(0, 80));
                }
                // On a phone, a table that scrolls sideways hides columns: rows must be cards.
                if (window.innerWidth <= 640) {
                  for (const wrap of document.querySelectorAll('.table-wrap')) {
                    if (wrap.scrollWidth > wrap.clientWidth + 1) problems.push('a table hides columns: ' + (wrap.textContent || '').trim().slice(0, 60));
                  }
                }
                if (document.documentElement.scrollWidth > window.innerWidth + 1) {
                  const wide = [...document.querySelectorAll('body *')]
                    .filter(el => el.getBoundingClientRect().right > window.innerWidth + 1)
                    .map(el => el.tagName + '.' + el.className + ' ' + (el.id || '') + ' ' + (el.textContent || '').trim().slice(0, 40));
                  problems.push('wider than the screen: ' + document.documentElement.scrollWidth + ' > ' + window.innerWidth + ': ' + wide.slice(0, 5).join(' | '));
                }
                return problems;
                "#,
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(problems, json!([]), "{what}");
    }

    async fn sign_in(&self, email: &str, password: &str) {
        self.goto("/login").await;
        // By keyboard only: type, Tab to the next field, Enter to submit.
        self.client
            .find(Locator::Id("email"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let email_field = self.client.find(Locator::Id("email")).await.unwrap();
        email_field.send_keys(email).await.unwrap();
        email_field
            .send_keys(&char::from(Key::Tab).to_string())
            .await
            .unwrap();
        let active = self.client.active_element().await.unwrap();
        active.send_keys(password).await.unwrap();
        active
            .send_keys(&char::from(Key::Enter).to_string())
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match self.path().await.as_str() {
                "/apps" => return,
                "/login/second-factor" => break,
                other => assert!(
                    Instant::now() < deadline,
                    "still on {other} after the password"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The second factor: enrolment with the QR code the first time, a code afterwards.
        if let Ok(key) = self.client.find(Locator::Id("totp-secret")).await {
            assert!(
                self.client
                    .find(Locator::Css("figure.qr svg"))
                    .await
                    .is_ok(),
                "the QR code is shown"
            );
            self.check_page("authenticator enrolment").await;
            self.shot("00-enrol-second-factor").await;
            let secret = key.text().await.unwrap();
            self.authenticators.lock().unwrap().insert(
                email.to_string(),
                std::sync::Arc::new(Authenticator::from_text(&secret)),
            );
        }
        let authenticator = self.authenticators.lock().unwrap()[email].clone();
        self.fill("otp", &authenticator.code().await).await;
        let enrolling = self.text().await.contains("Set up your authenticator");
        if enrolling {
            self.click("Confirm and sign in").await;
            let codes = self
                .client
                .find_all(Locator::Css("#recovery-codes li"))
                .await
                .unwrap();
            assert_eq!(codes.len(), 10, "ten recovery codes are shown once");
            self.check_page("recovery codes").await;
            self.shot("00-recovery-codes").await;
            self.click("I have stored them").await;
        } else {
            self.click("Verify and sign in").await;
        }
        self.wait_for_path("/apps").await;
    }

    /// Remembers `email`'s authenticator (for an account enrolled outside the browser).
    fn know(&self, email: &str, authenticator: std::sync::Arc<Authenticator>) {
        self.authenticators
            .lock()
            .unwrap()
            .insert(email.to_string(), authenticator);
    }

    async fn sign_out(&self) {
        self.click("Sign out").await;
        self.wait_for_path("/login").await;
    }

    async fn wait_for_path(&self, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.path().await != want {
            assert!(
                Instant::now() < deadline,
                "still on {} instead of {want}: {}",
                self.path().await,
                self.text().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Reloads a page until its text contains `needle`.
    async fn wait_for_text(&self, path: &str, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.goto(path).await;
            let text = self.text().await;
            if text.contains(needle) {
                return;
            }
            assert!(!text.contains("failed"), "{path} shows a failure:\n{text}");
            assert!(
                Instant::now() < deadline,
                "{path} never showed {needle:?}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn upload(&self, app: &str, cert: &Path, key: &Path, chain: Option<&Path>) {
        self.goto(&format!("/apps/{app}/certs/new")).await;
        self.client
            .find(Locator::Id("certificate_file"))
            .await
            .unwrap()
            .send_keys(&cert.display().to_string())
            .await
            .unwrap();
        self.client
            .find(Locator::Id("private_key_file"))
            .await
            .unwrap()
            .send_keys(&key.display().to_string())
            .await
            .unwrap();
        if let Some(chain) = chain {
            self.client
                .find(Locator::Id("chain_file"))
                .await
                .unwrap()
                .send_keys(&chain.display().to_string())
                .await
                .unwrap();
        }
        self.click("Check and upload").await;
    }

    /// Each page at desktop and phone width: checked (`check_page`) and shot as
    /// `20-NAME-WIDTH`. Leaves the window at desktop width.
    async fn every_page_at_both_widths(&self, pages: &[(&str, &str)]) {
        for ((w, h), width) in [((1280, 1000), "desktop"), ((390, 844), "phone")] {
            self.client.set_window_size(w, h).await.unwrap();
            for (page, name) in pages {
                self.goto(page).await;
                self.check_page(&format!("{page} at {width} width")).await;
                self.shot(&format!("20-{name}-{width}")).await;
            }
        }
        self.client.set_window_size(1280, 1000).await.unwrap();
    }

    async fn approve_as_staff(&self, ticket_path: &str, staff_password: &str) {
        self.sign_in("sam@example.com", staff_password).await;
        self.goto(ticket_path).await;
        self.click("Approve and deploy").await;
        self.wait_for_text(ticket_path, "deployed").await;
        self.sign_out().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_customer_staff_and_admin_journeys_in_a_real_browser() {
    let root = pki::root("Browser Test Root");
    let roots_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(roots_file.path(), root.pem()).unwrap();
    let trust = roots_file.path().to_path_buf();
    let app = TestApp::spawn_with(Backend::Sqlite, move |c| c.extra_trust_roots = Some(trust))
        .await
        .unwrap();
    let Some(chrome) = Chrome::start(&app.address).await else {
        return;
    };
    // Sam (staff) has no authenticator yet: the first sign-in enrols one.
    let staff_pw = app
        .user_without_second_factor("sam@example.com", Role::Staff)
        .await;
    let admin_pw = app.user("ada@example.com", Role::Admin).await;
    chrome.know("ada@example.com", app.authenticator("ada@example.com"));
    let (ops, keys) = app.crew().await;
    let _nodes = start_pair(&app.address, ops, keys, "edge-web").await;
    let backend = echo_backend().await;

    let inter = pki::intermediate("Browser Test Intermediate", &root);
    let first = pki::leaf(&["www.example.com"], &inter, Alg::P256);
    let second = pki::leaf(&["www.example.com"], &inter, Alg::Rsa2048);
    let files = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| {
        let path = files.path().join(name);
        std::fs::write(&path, body).unwrap();
        path
    };
    let (cert1, key1) = (
        write("first.crt", &first.cert_pem),
        write("first.key", &first.key_pem),
    );
    let (cert2, key2) = (
        write("second.crt", &second.cert_pem),
        write("second.key", &second.key_pem),
    );
    let chain = write("chain.pem", &inter.pem());
    let wrong_key = write("wrong.key", &Alg::P256.key().serialize_pem());

    // 1. A customer signs up, creates an app with domains, uploads through the file inputs,
    //    reads the report, and requests provisioning, seeing the price.
    chrome.goto("/signup").await;
    chrome.check_page("sign-up page").await;
    chrome.shot("01-signup").await;
    chrome.fill("email", "ann@example.com").await;
    chrome.fill("password", "correct horse battery").await;
    chrome
        .fill("password_confirm", "correct horse battery")
        .await;
    chrome.click("Create account").await;
    chrome.wait_for_path("/apps").await;
    // The confirmation link mailed at sign-up: a page with one button.
    let mail: String = sqlx::query_scalar(
        "SELECT text_body FROM mail_outbox WHERE to_address = 'ann@example.com' AND subject LIKE '%confirm%'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    let link = mail
        .split_whitespace()
        .find(|w| w.contains("/account/verify/"))
        .unwrap();
    chrome
        .goto(&link[link.find("/account/verify/").unwrap()..])
        .await;
    chrome.click("Confirm my address").await;
    assert!(chrome.text().await.contains("is confirmed"));
    chrome.goto("/apps").await;
    assert!(chrome.text().await.contains("No apps yet"));
    chrome.check_page("empty apps page").await;
    chrome.shot("02-apps-empty").await;
    chrome.fill("name", "shop").await;
    chrome
        .fill("backend_url", &format!("http://{backend}"))
        .await;
    chrome.click("Create app").await;
    chrome.wait_for_path("/apps/shop").await;
    for host in ["www.example.com", LONG_DOMAIN] {
        chrome.fill("hostname", host).await;
        chrome.click("Add domain").await;
        chrome.wait_for_path("/apps/shop").await;
    }
    // A refused form comes back on its page (not on the POST's URL), and a reload posts nothing.
    chrome.fill("hostname", "not a host").await;
    chrome.click("Add domain").await;
    assert_eq!(chrome.path().await, "/apps/shop");
    assert!(
        chrome
            .client
            .find(Locator::Id("hostname-error"))
            .await
            .is_ok()
    );
    chrome.client.refresh().await.unwrap();
    assert_eq!(chrome.path().await, "/apps/shop");
    assert!(
        chrome
            .client
            .find(Locator::Id("hostname-error"))
            .await
            .is_err(),
        "a reload shows the page afresh"
    );
    assert!(chrome.text().await.contains("No certificates yet"));
    // Each domain waits for its proof; the page shows the TXT record to create, copyable.
    let page = chrome.text().await;
    let record = page
        .lines()
        .find(|l| l.starts_with("_certdrop-challenge.www.example.com TXT \""))
        .unwrap_or_else(|| panic!("the TXT record to create is shown:\n{page}"));
    let token = record.split('"').nth(1).unwrap().to_string();
    chrome.check_page("app page").await;
    chrome.shot("03-app").await;
    app.dns.txt("_certdrop-challenge.www.example.com", &token);
    chrome.click("Verify www.example.com").await;
    let page = chrome.text().await;
    assert!(page.contains("www.example.com is verified"), "{page}");
    chrome.shot("03b-domain-verified").await;
    chrome.upload("shop", &cert1, &key1, Some(&chain)).await;
    let report = chrome.text().await;
    assert!(chrome.path().await.starts_with("/certs/"), "{report}");
    assert!(
        report.contains("domain_uncovered") && report.contains(LONG_DOMAIN),
        "the warning is explained:\n{report}"
    );
    assert!(report.contains(&first.fingerprint()));
    let report_path = chrome.path().await;
    assert!(
        report.contains("Request provisioning with this certificate"),
        "the report offers the next step:\n{report}"
    );
    chrome.check_page("certificate report").await;
    chrome.shot("04-report").await;
    chrome.goto("/apps/shop").await;
    assert!(
        chrome.text().await.contains("20.00 USD per month"),
        "the price shows before provisioning"
    );
    // Provisioning is a monthly charge: it is confirmed, price in view, before the ticket opens.
    chrome.click("Request provisioning").await;
    assert_eq!(chrome.path().await, "/apps/shop/provision");
    let confirm = chrome.text().await;
    assert!(
        confirm.contains("20.00 USD per month") && confirm.contains(&first.fingerprint()),
        "{confirm}"
    );
    chrome.check_page("provisioning confirmation").await;
    chrome.shot("04b-confirm-provisioning").await;
    chrome
        .click("Confirm: request provisioning at 20.00 USD per month")
        .await;
    let ticket_one = chrome.path().await;
    assert!(ticket_one.starts_with("/tickets/"));
    let text = chrome.text().await;
    assert!(
        text.contains("20.00 USD per month") && text.contains("you will get an email"),
        "{text}"
    );
    chrome.check_page("ticket page").await;
    chrome.shot("05-ticket-open").await;
    // Back on the app page, the status and the certificate both lead to the ticket.
    chrome.goto("/apps/shop").await;
    let page = chrome.text().await;
    let number = ticket_one.trim_start_matches("/tickets/");
    assert!(
        page.contains(&format!(
            "Pending: provision ticket #{number} waits for staff"
        )) && page.contains(&format!("pending ticket #{number}")),
        "{page}"
    );
    chrome.sign_out().await;

    // 2. Staff find the ticket in the queue, review it, approve it and watch it deploy. Sam's
    //    first authenticator comes through the one-time link a new staff account is given.
    let sam_id: i64 = sqlx::query_scalar("SELECT id FROM users WHERE email = 'sam@example.com'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let mut conn = app.db.acquire().await.unwrap();
    let link = certdrop::accounts::second_factor::issue_enrolment_link(
        &mut conn,
        &app.state.base_url,
        sam_id,
    )
    .await
    .unwrap()
    .unwrap();
    drop(conn);
    chrome
        .goto(&link[link.find("/account/enrol/").unwrap()..])
        .await;
    chrome.sign_in("sam@example.com", &staff_pw).await;
    chrome.click("Staff queue").await;
    chrome.wait_for_path("/staff/tickets").await;
    assert!(chrome.text().await.contains("ann@example.com"));
    chrome.check_page("staff queue").await;
    chrome.shot("06-staff-queue").await;
    let id = ticket_one.trim_start_matches("/tickets/");
    chrome.click(&format!("#{id}")).await;
    chrome.wait_for_path(&ticket_one).await;
    let review = chrome.text().await;
    assert!(
        review.contains("Certificate to deploy")
            && review.contains(&first.fingerprint())
            && !review.contains("PRIVATE KEY")
    );
    chrome.shot("07-staff-review").await;
    chrome.click("Approve and deploy").await;
    // The page follows the deployment by itself: no navigation from here on.
    let deadline = Instant::now() + Duration::from_secs(60);
    let steps = loop {
        let steps = chrome
            .client
            .find(Locator::Css("[data-progress]"))
            .await
            .ok();
        let text = match steps {
            Some(list) => list.text().await.unwrap_or_default(),
            None => String::new(),
        };
        if text.contains("Deployed") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the progress never showed the end:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        steps.contains("applied it") && steps.contains("TLS handshake for www.example.com"),
        "{steps}"
    );
    assert_eq!(chrome.path().await, ticket_one);
    chrome.shot("07b-live-progress").await;
    chrome.wait_for_text(&ticket_one, "deployed").await;
    let done = chrome.text().await;
    assert_eq!(
        done.matches("verified").count(),
        2,
        "both nodes verified:\n{done}"
    );
    chrome.shot("08-deployed").await;
    chrome.sign_out().await;

    // 3. The customer sees the deployed certificate; a mismatched key is explained next to its
    //    field; a good one is approved as an update; then a rollback.
    chrome
        .sign_in("ann@example.com", "correct horse battery")
        .await;
    chrome.goto("/apps/shop").await;
    // Where to point DNS is on the app page now, and its status follows the zone.
    let page = chrome.text().await;
    assert!(
        page.contains("Serving www.example.com (certificate #"),
        "{page}"
    );
    assert!(
        !page.contains("Request rollback"),
        "nothing to roll back to after a first deployment"
    );
    assert!(page.contains("www.example.com A 127.0.0.1"), "{page}");
    chrome.click("Check DNS now for www.example.com").await;
    let page = chrome.text().await;
    assert!(page.contains("www.example.com: no record."), "{page}");
    app.dns.address("www.example.com", "127.0.0.1");
    chrome.click("Check DNS now for www.example.com").await;
    let page = chrome.text().await;
    assert!(
        page.contains("www.example.com points here (127.0.0.1)"),
        "{page}"
    );
    chrome.check_page("app page with DNS").await;
    chrome.shot("09a-dns-points-here").await;
    assert!(chrome.text().await.contains("deployed"));
    chrome.shot("09-app-deployed").await;
    chrome
        .upload("shop", &cert2, &wrong_key, Some(&chain))
        .await;
    let error = chrome
        .client
        .find(Locator::Id("private_key-error"))
        .await
        .expect("the error is next to the key field");
    let message = error.text().await.unwrap();
    assert!(
        message.contains("does not belong") && message.contains("openssl"),
        "{message}"
    );
    assert_eq!(
        chrome.path().await,
        "/apps/shop/certs/new",
        "a refused upload comes back on the upload page"
    );
    // The commands to check the pair are blocks one click selects whole, not prose.
    let mut commands = Vec::new();
    for code in error.find_all(Locator::Css("code.cmd")).await.unwrap() {
        commands.push(code.text().await.unwrap());
    }
    assert_eq!(
        commands,
        [
            "openssl x509 -noout -pubkey -in certificate.pem | openssl sha256",
            "openssl pkey -pubout -in key.pem | openssl sha256"
        ]
    );
    chrome.check_page("upload with an error").await;
    chrome.shot("10-upload-error").await;
    // No key at hand: certdrop generates it and shows the CSR to send to a CA.
    chrome.goto("/apps/shop/certs/new").await;
    chrome.click("Generate a key and CSR").await;
    let csr_path = chrome.path().await;
    assert!(csr_path.starts_with("/apps/shop/csrs/"), "{csr_path}");
    let page = chrome.text().await;
    assert!(
        page.contains("BEGIN CERTIFICATE REQUEST")
            && page.contains("Upload the certificate it returns")
            && !page.contains("PRIVATE KEY"),
        "{page}"
    );
    chrome.check_page("CSR page").await;
    chrome.shot("10b-csr").await;
    chrome.upload("shop", &cert2, &key2, Some(&chain)).await;
    assert!(chrome.path().await.starts_with("/certs/"));
    chrome.goto("/apps/shop").await;
    chrome.click("Request update").await;
    let ticket_two = chrome.path().await;
    chrome.sign_out().await;
    chrome.approve_as_staff(&ticket_two, &staff_pw).await;
    chrome
        .sign_in("ann@example.com", "correct horse battery")
        .await;
    chrome.goto("/apps/shop").await;
    chrome.click("Request rollback").await;
    let ticket_three = chrome.path().await;
    assert_ne!(ticket_three, ticket_two);
    chrome.sign_out().await;
    chrome.approve_as_staff(&ticket_three, &staff_pw).await;
    chrome
        .sign_in("ann@example.com", "correct horse battery")
        .await;
    chrome.goto("/tickets").await;
    let mut states = Vec::new();
    for badge in chrome
        .client
        .find_all(Locator::Css("tbody .badge"))
        .await
        .unwrap()
    {
        states.push(badge.text().await.unwrap());
    }
    assert_eq!(
        states,
        ["deployed", "deployed", "deployed"],
        "rollback, update and provision all deployed"
    );
    chrome.check_page("customer tickets").await;
    chrome.shot("11-tickets").await;
    // Readable on a phone, long domain included.
    chrome.client.set_window_size(390, 844).await.unwrap();
    for (page, name) in [
        ("/apps/shop", "12-phone-app"),
        (ticket_one.as_str(), "13-phone-ticket"),
        ("/apps", "14-phone-apps"),
        ("/tickets", "14c-phone-tickets"),
        ("/billing", "14d-phone-billing"),
    ] {
        chrome.goto(page).await;
        chrome.shot(name).await;
        chrome.check_page(&format!("{page} at phone width")).await;
    }
    chrome.client.set_window_size(1280, 1000).await.unwrap();
    // Removing the live domain asks first and says what will happen.
    chrome.goto("/apps/shop").await;
    chrome.click("Remove www.example.com").await;
    let page = chrome.text().await;
    assert!(
        page.contains("www.example.com is live.") && page.contains("stays provisioned"),
        "{page}"
    );
    chrome.check_page("removal confirmation").await;
    chrome.shot("14b-confirm-removal").await;
    chrome.click("Yes, stop serving www.example.com").await;
    let page = chrome.text().await;
    assert!(page.contains("www.example.com removed."), "{page}");
    chrome.sign_out().await;

    // 4. An admin downloads the month's billing CSV.
    chrome.sign_in("ada@example.com", &admin_pw).await;
    chrome.goto("/staff/edge-pairs").await;
    let pairs = chrome.text().await;
    assert!(
        pairs.contains("confirmed by keys@certdrop.test") && pairs.contains("Revoke edge-web-1"),
        "{pairs}"
    );
    chrome.check_page("edge pairs").await;
    chrome.shot("16-edge-pairs").await;
    chrome.click("Platform").await;
    assert!(chrome.text().await.contains("CERTDROP_APPS_DOMAIN"));
    chrome.check_page("platform").await;
    chrome.shot("17-platform").await;
    chrome.goto("/billing").await;
    assert!(chrome.text().await.contains("shop"));
    chrome.check_page("billing").await;
    chrome.shot("15-billing").await;
    chrome.element("Download CSV").await.click().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let csv = loop {
        let found = std::fs::read_dir(chrome.downloads.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "csv"));
        if let Some(path) = found {
            break std::fs::read_to_string(path).unwrap();
        }
        assert!(Instant::now() < deadline, "the CSV was not downloaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 1, "{csv}");
    assert_eq!(&rows[0][1], "ann@example.com");
    assert_eq!(&rows[0][2], "shop");

    // 5. Every page, at desktop and phone width: a screenshot each, nothing wider than the
    //    screen, no table hiding a column.
    let pages = [
        ("/apps", "apps"),
        ("/apps/shop", "app"),
        ("/apps/shop/certs/new", "upload"),
        (csr_path.as_str(), "csr"),
        (report_path.as_str(), "certificate"),
        (ticket_one.as_str(), "ticket"),
        ("/tickets", "tickets"),
        ("/staff/tickets", "staff-queue"),
        ("/staff/edge-pairs", "edge-pairs"),
        ("/admin/platform", "platform"),
        ("/admin/users", "users"),
        ("/admin/audit", "audit"),
        ("/billing", "billing"),
        ("/account/security", "security"),
        ("/account/tokens", "tokens"),
        ("/account/webhooks", "webhooks"),
    ];
    chrome.every_page_at_both_widths(&pages).await;
    chrome.sign_out().await;
    chrome
        .every_page_at_both_widths(&[("/login", "login"), ("/signup", "signup")])
        .await;
    chrome.client.clone().close().await.unwrap();
}
