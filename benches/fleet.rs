//! A thousand edge nodes on one control plane: enrolls NODES simulated nodes (half as many
//! pairs) that long-poll `certdrop serve` on PostgreSQL as `certdrop edge` does, then changes
//! CHANGES pairs' configurations at once and prints how long each of their nodes took to get the
//! new version (p50/p99/max), the control plane's RSS and CPU, and the database connections it
//! used. Targets: p99 < 1 s, RSS < 300 MB, connections bounded by the pool (16).
//! Run: `BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench fleet`
//! (or with CERTDROP_TEST_POSTGRES_URL set; NODES, CHANGES may be set). It creates and drops a
//! database of its own.

use std::{
    io::Write,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The control plane under test, in a process of its own so its RSS and CPU are its own.
struct Server {
    child: Child,
    address: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(data_dir: &std::path::Path, database_url: &str) -> anyhow::Result<Server> {
    let log = data_dir.join("serve.log");
    let file = std::fs::File::create(&log)?;
    let child = Command::new(env!("CARGO_BIN_EXE_certdrop"))
        .arg("serve")
        .env("CERTDROP_DATA_DIR", data_dir)
        .env("CERTDROP_DATABASE_URL", database_url)
        .env("CERTDROP_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn,certdrop=info")
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()?;
    let mut server = Server {
        child,
        address: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(addr) = text
            .lines()
            .find(|l| l.contains("certdrop is serving"))
            .and_then(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("address="))
            })
        {
            server.address = format!("http://{addr}");
            return Ok(server);
        }
        if Instant::now() > deadline {
            bail!("certdrop serve did not start:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A staff member's API token, made as an operator would: `users:create`, then a token with
/// the authenticator code.
async fn staff_token(
    http: &reqwest::Client,
    server: &Server,
    data_dir: &std::path::Path,
    database_url: &str,
) -> anyhow::Result<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_certdrop"))
        .args([
            "users:create",
            "--email",
            "ops@fleet.test",
            "--role",
            "staff",
            "--password-stdin",
        ])
        .env("CERTDROP_DATA_DIR", data_dir)
        .env("CERTDROP_DATABASE_URL", database_url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(b"correct horse battery\n")?;
    let out = child.wait_with_output()?;
    let printed = String::from_utf8_lossy(&out.stdout);
    let secret = printed
        .split(|c: char| c == '?' || c == '&' || c.is_whitespace())
        .find_map(|p| p.strip_prefix("secret="))
        .context("users:create printed no otpauth secret")?;
    let secret = certdrop::accounts::totp::TotpSecret::from_base32(secret).context("base32")?;
    let step = certdrop::accounts::totp::step_of(certdrop::db::now());
    let resp: Value = http
        .post(format!("{}/api/v1/tokens", server.address))
        .json(&json!({"email": "ops@fleet.test", "password": "correct horse battery", "otp": secret.code_at_step(step)}))
        .send()
        .await?
        .json()
        .await?;
    resp["token"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no token: {resp}"))
}

/// The process's resident memory (kB) and CPU time (s) so far, from /proc.
fn usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of /proc/PID/stat (11 and 12 after the name).
    (rss, (ticks(11) + ticks(12)) / 100.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Some(admin_url) = std::env::var("BENCH_POSTGRES_URL")
        .ok()
        .or_else(|| std::env::var("CERTDROP_TEST_POSTGRES_URL").ok())
    else {
        println!("fleet: skipped (set BENCH_POSTGRES_URL to a PostgreSQL server)");
        return Ok(());
    };
    let nodes = env_or("NODES", 1000).max(2) / 2 * 2;
    let changes = env_or("CHANGES", 100).min(nodes / 2);
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(&admin_url).await?;
    let name = format!("certdrop_fleet_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await?;
    let mut url = url::Url::parse(&admin_url)?;
    url.set_path(&format!("/{name}"));
    let database_url = url.to_string();
    let data = tempfile::tempdir()?;
    let result = run(&database_url, &name, data.path(), &admin, nodes, changes).await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&admin)
        .await?;
    result
}

async fn run(
    database_url: &str,
    database: &str,
    data_dir: &std::path::Path,
    admin: &sqlx::AnyPool,
    nodes: usize,
    changes: usize,
) -> anyhow::Result<()> {
    let server = start_server(data_dir, database_url)?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(nodes + 64)
        .timeout(Duration::from_secs(60))
        .build()?;
    let token = staff_token(&http, &server, data_dir, database_url).await?;

    // Enrollment, as `certdrop edge` does it: a pair's two tokens, spent by two machines.
    let started = Instant::now();
    let mut enrolled: Vec<(String, String)> = Vec::new(); // (pair, node token)
    for i in 0..nodes / 2 {
        let pair: Value = http
            .post(format!("{}/api/v1/edge-pairs", server.address))
            .bearer_auth(&token)
            .json(&json!({"name": format!("fleet-{i}")}))
            .send()
            .await?
            .json()
            .await?;
        for (slot, enroll) in pair["enroll_tokens"]
            .as_array()
            .context("enroll tokens")?
            .iter()
            .enumerate()
        {
            let recipient = age::x25519::Identity::generate().to_public().to_string();
            let node: Value = http
                .post(format!("{}/api/v1/edge/enroll", server.address))
                .json(&json!({
                    "enroll_token": enroll,
                    "recipient": recipient,
                    "address": format!("192.0.2.{}:{}", slot + 1, 10_000 + i),
                }))
                .send()
                .await?
                .json()
                .await?;
            enrolled.push((
                format!("fleet-{i}"),
                node["node_token"]
                    .as_str()
                    .context("node token")?
                    .to_string(),
            ));
        }
    }
    println!(
        "fleet: {} pairs, {} nodes enrolled in {:.1} s",
        nodes / 2,
        enrolled.len(),
        started.elapsed().as_secs_f64()
    );

    // Every node long-polls; each notes when it received each version.
    let received: Arc<Mutex<Vec<(String, i64, Instant)>>> = Arc::default();
    let mut tasks = Vec::new();
    for (pair, node_token) in enrolled {
        let (http, base, received) = (http.clone(), server.address.clone(), received.clone());
        tasks.push(tokio::spawn(async move {
            let mut applied = 0i64;
            loop {
                let resp = http
                    .get(format!(
                        "{base}/api/v1/edge/config?applied={applied}&wait=25"
                    ))
                    .bearer_auth(&node_token)
                    .send()
                    .await;
                let Ok(resp) = resp else {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                };
                let Ok(config) = resp.json::<Value>().await else {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                };
                let version = config["version"].as_i64().unwrap_or(applied);
                if version != applied {
                    received
                        .lock()
                        .unwrap()
                        .push((pair.clone(), version, Instant::now()));
                    applied = version;
                }
            }
        }));
    }
    // Let every node reach its first long wait.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = server.child.id();
    let (rss_idle, cpu_before) = usage(pid);
    let window = Instant::now();

    // Change CHANGES pairs at once, as deployments do (one statement: a common instant).
    let targets: Vec<String> = (0..changes)
        .map(|i| format!("fleet-{}", i * (nodes / 2) / changes))
        .collect();
    let list = targets
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(",");
    let pool = sqlx::AnyPool::connect(database_url).await?;
    let changed_at = Instant::now();
    sqlx::query(&format!(
        "UPDATE edge_pairs SET config_version = config_version + 1000 WHERE name IN ({list})"
    ))
    .execute(&pool)
    .await?;
    let expected = targets.len() * 2;
    let deadline = changed_at + Duration::from_secs(30);
    let latencies = loop {
        let got: Vec<f64> = received
            .lock()
            .unwrap()
            .iter()
            .filter(|(pair, version, at)| {
                *at >= changed_at && *version >= 1000 && targets.contains(pair)
            })
            .map(|(_, _, at)| at.duration_since(changed_at).as_secs_f64())
            .collect();
        if got.len() >= expected || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    pool.close().await;
    let connections: i64 = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = '{database}'"
    ))
    .fetch_one(admin)
    .await?;
    // Keep polling idle a little longer, to see the steady cost of a thousand waiting nodes.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rss, cpu_after) = usage(pid);
    let cpu = (cpu_after - cpu_before) / window.elapsed().as_secs_f64();
    for t in tasks {
        t.abort();
    }

    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "fleet: {changes} pairs changed at once: {}/{} nodes got it; fan-out p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (target p99 < 1000)",
        latencies.len(),
        expected,
        percentile(&sorted, 0.5) * 1000.0,
        percentile(&sorted, 0.99) * 1000.0,
        sorted.last().copied().unwrap_or(f64::NAN) * 1000.0,
    );
    println!(
        "fleet: control plane RSS {} MB after polling ({} MB idle before the change; target < 300), CPU {:.0}% of one core over {:.0} s with {nodes} nodes waiting",
        rss / 1024,
        rss_idle / 1024,
        cpu * 100.0,
        window.elapsed().as_secs_f64()
    );
    println!(
        "fleet: database connections open to its database: {connections} (the pool allows 16 per instance)"
    );
    if latencies.len() < expected {
        bail!("{} nodes never got the change", expected - latencies.len());
    }
    Ok(())
}
