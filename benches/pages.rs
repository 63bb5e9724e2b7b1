//! Requests per second for authenticated pages under concurrent load, on the embedded SQLite
//! default. Run: `cargo bench --bench pages` (CONCURRENCY and SECONDS may be set).
//! The load comes from the same process; compare figures as ratios taken in one run.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use certdrop::{
    accounts::{Role, password, store},
    config::Config,
    startup::Application,
};
use secrecy::SecretString;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let concurrency = env_or("CONCURRENCY", 32);
    let seconds = env_or("SECONDS", 5);
    let dir = tempfile::tempdir()?;
    let app = Application::build(Config::for_data_dir(dir.path())?).await?;
    let base = format!("http://{}", app.address());
    let db = app.state().db.clone();
    tokio::spawn(app.run_until(std::future::pending()));

    let hash = password::hash(SecretString::from("bench password 123".to_string())).await?;
    store::create_user(&db, "bench@example.com", &hash, Role::Customer, true).await?;
    let http = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let login = http
        .get(format!("{base}/login"))
        .send()
        .await?
        .text()
        .await?;
    let marker = "name=\"csrf_token\" value=\"";
    let start = login.find(marker).expect("csrf") + marker.len();
    let csrf = &login[start..start + login[start..].find('"').expect("csrf end")];
    let resp = http
        .post(format!("{base}/login"))
        .header("origin", &base)
        .form(&[
            ("csrf_token", csrf),
            ("email", "bench@example.com"),
            ("password", "bench password 123"),
        ])
        .send()
        .await?;
    assert_eq!(resp.status(), 303, "login");
    let token = reqwest::Client::new()
        .post(format!("{base}/api/v1/tokens"))
        .json(&serde_json::json!({"email": "bench@example.com", "password": "bench password 123"}))
        .send()
        .await?
        .json::<serde_json::Value>()
        .await?["token"]
        .as_str()
        .expect("token")
        .to_string();
    for i in 0..20 {
        reqwest::Client::new()
            .post(format!("{base}/api/v1/apps"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"name": format!("bench-app-{i}"), "backend_url": "http://10.0.0.9:9"}))
            .send()
            .await?;
    }

    for (label, path, bearer) in [
        ("GET /apps (session cookie, HTML)", "/apps", false),
        (
            "GET /api/v1/apps (bearer token, JSON)",
            "/api/v1/apps",
            true,
        ),
    ] {
        let done = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (http, url, token, done, failed) = (
                http.clone(),
                format!("{base}{path}"),
                token.clone(),
                done.clone(),
                failed.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let req = http.get(&url);
                    let req = if bearer { req.bearer_auth(&token) } else { req };
                    match req.send().await {
                        Ok(r) if r.status() == 200 => {
                            let _ = r.bytes().await;
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        let ok = done.load(Ordering::Relaxed);
        println!(
            "{label}: {:.0} requests/s ({ok} ok, {} failed, {concurrency} concurrent, {seconds} s)",
            ok as f64 / seconds as f64,
            failed.load(Ordering::Relaxed)
        );
    }
    Ok(())
}
