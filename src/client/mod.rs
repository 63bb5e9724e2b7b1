//! The HTTP client behind the CLI's client verbs: finds the server and token ($CERTDROP_URL,
//! $CERTDROP_TOKEN, or the credentials file `certdrop login` writes), calls the JSON API and
//! prints tables (or JSON with `--json`). It never prints a token after `login`.

mod output;

use std::{
    io::{BufRead, IsTerminal, Write},
    path::PathBuf,
};

use anyhow::{Context, bail};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cli::{Command, read_stdin_secret};
use output::{Table, print_json};

const DEFAULT_URL: &str = "http://127.0.0.1:8080";

#[derive(Serialize, Deserialize)]
struct Credentials {
    url: String,
    email: String,
    token: String,
}

fn credentials_path() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("CERTDROP_CONFIG_DIR") {
        return Ok(PathBuf::from(dir).join("credentials.json"));
    }
    let base = std::env::var("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".config")))
        .context("cannot find a configuration directory; set CERTDROP_CONFIG_DIR")?;
    Ok(base.join("certdrop").join("credentials.json"))
}

fn load_credentials() -> Option<Credentials> {
    let path = credentials_path().ok()?;
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn save_credentials(creds: &Credentials) -> anyhow::Result<PathBuf> {
    let path = credentials_path()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(&serde_json::to_vec_pretty(creds)?)?;
    Ok(path)
}

/// A client for one server, with or without a token.
pub struct Client {
    pub base: String,
    token: Option<SecretString>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str, token: Option<SecretString>) -> anyhow::Result<Self> {
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::builder()
                .user_agent(concat!("certdrop-cli/", env!("CARGO_PKG_VERSION")))
                .build()?,
        })
    }

    /// The server and token from the environment or the credentials file.
    fn configured() -> anyhow::Result<Self> {
        let saved = load_credentials();
        let url = std::env::var("CERTDROP_URL")
            .ok()
            .or_else(|| saved.as_ref().map(|c| c.url.clone()))
            .unwrap_or_else(|| DEFAULT_URL.into());
        let token = std::env::var("CERTDROP_TOKEN")
            .ok()
            .or_else(|| saved.map(|c| c.token))
            .map(SecretString::from);
        if token.is_none() {
            bail!("not signed in: run `certdrop login` or set CERTDROP_TOKEN");
        }
        Self::new(&url, token)
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token.expose_secret());
        }
        req
    }

    /// Sends a request and returns its JSON body, or an error made of the server's messages.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the certdrop server at {}", self.base))?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if status.is_success() {
            if body.is_empty() || status == StatusCode::NO_CONTENT {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&body)
                .context("the server sent a response that is not JSON");
        }
        let messages = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("errors").cloned())
            .and_then(|e| e.as_array().cloned())
            .map(|errors| {
                errors
                    .iter()
                    .map(|e| {
                        format!(
                            "{}: {}",
                            e["code"].as_str().unwrap_or("error"),
                            e["message"].as_str().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n  ")
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        if status == StatusCode::UNAUTHORIZED && messages.contains("otp_required") {
            bail!("{messages}\n  (give the code from your authenticator app with --otp CODE)");
        }
        if status == StatusCode::UNAUTHORIZED {
            bail!("{messages}\n  (run `certdrop login` to sign in again)");
        }
        bail!("{messages}")
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.request(Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(self.request(Method::POST, path).json(&body))
            .await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.request(Method::DELETE, path)).await
    }

    /// Posts an action that needs a fresh second factor: with `otp` when given; otherwise,
    /// when the server asks for one and a person is at the terminal, with a code typed now.
    pub async fn post_fresh(
        &self,
        path: &str,
        mut body: Value,
        otp: Option<String>,
    ) -> anyhow::Result<Value> {
        if let Some(code) = &otp {
            body["otp"] = json!(code);
        }
        match self.post(path, body.clone()).await {
            Err(err)
                if otp.is_none()
                    && err.to_string().contains("otp_required")
                    && std::io::stdin().is_terminal() =>
            {
                body["otp"] = json!(prompt("Authenticator code")?);
                self.post(path, body).await
            }
            other => other,
        }
    }

    /// Every item of a paginated listing, following `next_cursor`.
    pub async fn list_all(&self, path: &str) -> anyhow::Result<Vec<Value>> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let url = match &cursor {
                Some(c) => format!("{path}{sep}cursor={}", urlencode(c)),
                None => path.to_string(),
            };
            let page = self.get(&url).await?;
            items.extend(page["items"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => return Ok(items),
            }
        }
    }
}

/// Polls a ticket until its deployment ends, printing each node's state as it changes; an
/// error when it failed.
/// `tickets:approve` (or, with `retry`, `tickets:retry`): starts the deployment and, with
/// `wait`, follows it to its end.
async fn start_deployment(
    id: i64,
    otp: Option<String>,
    wait: bool,
    retry: bool,
) -> anyhow::Result<()> {
    let client = Client::configured()?;
    let action = if retry { "retry" } else { "approve" };
    let t = client
        .post_fresh(&format!("/api/v1/tickets/{id}/{action}"), json!({}), otp)
        .await?;
    let (app, pair) = (output::s(&t["app"]), output::s(&t["deployment"]["pair"]));
    match retry {
        true => println!("Ticket #{id}: deploying {app} again to edge pair {pair}."),
        false => println!("Ticket #{id} approved; deploying {app} to edge pair {pair}."),
    }
    if wait {
        follow_deployment(&client, id).await?;
    }
    Ok(())
}

async fn follow_deployment(client: &Client, id: i64) -> anyhow::Result<()> {
    let mut last = String::new();
    loop {
        let t = client.get(&format!("/api/v1/tickets/{id}")).await?;
        let nodes: Vec<String> = t["deployment"]["nodes"]
            .as_array()
            .map(|nodes| {
                nodes
                    .iter()
                    .map(|n| format!("{} {}", output::s(&n["node"]), output::s(&n["state"])))
                    .collect()
            })
            .unwrap_or_default();
        let line = format!("  {}: {}", output::s(&t["state"]), nodes.join(", "));
        if line != last {
            println!("{line}");
            last = line;
        }
        match t["state"].as_str() {
            Some("deployed") => {
                println!("Ticket #{id} is deployed: both nodes verified by a TLS handshake.");
                return Ok(());
            }
            Some("failed") => bail!("ticket #{id} failed: {}", output::s(&t["reason"])),
            _ => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
        }
    }
}

/// How to start one edge node, on its own machine, with `token` (as the edge pairs page says).
fn edge_command(control_plane: &str, token: &str) -> String {
    format!(
        "certdrop edge --control-plane {control_plane} --enroll-token {token} --listen 0.0.0.0:443 --http-listen 0.0.0.0:80 --advertise PUBLIC_IP:443 --data-dir /var/lib/certdrop-edge    # on its own machine"
    )
}

fn domain_path(app: &str, hostname: &str) -> String {
    format!(
        "/api/v1/apps/{}/domains/{}",
        urlencode(app),
        urlencode(hostname)
    )
}

pub fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn prompt(label: &str) -> anyhow::Result<String> {
    eprint!("{label}: ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_string())
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Login {
            url,
            email,
            password_stdin,
            otp,
        } => login(url, email, password_stdin, otp).await,
        Command::VaultUnseal { url } => {
            let url = url
                .or_else(|| std::env::var("CERTDROP_URL").ok())
                .or_else(|| load_credentials().map(|c| c.url))
                .unwrap_or_else(|| DEFAULT_URL.into());
            let share = match std::io::stdin().is_terminal() {
                true => SecretString::from(
                    rpassword::prompt_password("Your share (cdshare1-…): ")
                        .context("reading the share")?,
                ),
                false => read_stdin_secret()?,
            };
            let status = Client::new(&url, None)?
                .post(
                    "/api/v1/vault/unseal",
                    json!({"share": share.expose_secret().trim()}),
                )
                .await?;
            match status["sealed"].as_bool() {
                Some(false) => println!("The vault at {url} is unsealed."),
                _ => println!(
                    "Share accepted: {} of {} given; the vault at {url} stays sealed until the rest are.",
                    status["progress"], status["threshold"]
                ),
            }
            Ok(())
        }
        Command::VaultSeal { otp } => {
            let client = Client::configured()?;
            client
                .post_fresh("/api/v1/vault/seal", json!({}), otp)
                .await?;
            println!(
                "The vault at {} is sealed: it holds no key until its key holders unseal it (`certdrop vault:unseal`).",
                client.base
            );
            Ok(())
        }
        Command::Apps { json } => {
            let items = Client::configured()?.list_all("/api/v1/apps").await?;
            if json {
                return print_json(&items);
            }
            let mut table = Table::new(&["Name", "TLS", "Domains", "Backend", "Owner"]);
            for app in &items {
                table.row(vec![
                    output::s(&app["name"]),
                    output::s(&app["tls_status"]["label"]),
                    output::list(&app["domains"]),
                    output::s(&app["backend_url"]),
                    output::s(&app["owner"]),
                ]);
            }
            table.print_or(
                "No apps yet. Create one with `certdrop apps:create NAME --backend URL`.",
            );
            Ok(())
        }
        Command::AppsCreate {
            name,
            backend,
            json,
        } => {
            let app = Client::configured()?
                .post(
                    "/api/v1/apps",
                    json!({"name": name, "backend_url": backend}),
                )
                .await?;
            if json {
                return print_json(&app);
            }
            println!(
                "Created {} → {}.\nNext: certdrop domains:add www.example.com --app {}",
                output::s(&app["name"]),
                output::s(&app["backend_url"]),
                output::s(&app["name"])
            );
            Ok(())
        }
        Command::AppsDelete { name, confirm } => {
            if confirm != name {
                bail!("to delete {name}, repeat its name: --confirm {name}");
            }
            Client::configured()?
                .delete(&format!("/api/v1/apps/{}", urlencode(&name)))
                .await?;
            println!("Deleted {name}.");
            Ok(())
        }
        Command::Domains { app, json } => {
            let items = Client::configured()?
                .list_all(&format!("/api/v1/apps/{}/domains", urlencode(&app)))
                .await?;
            if json {
                return print_json(&items);
            }
            let mut table = Table::new(&["Domain", "Verification", "DNS record to create", "DNS"]);
            for d in &items {
                table.row(vec![
                    output::s(&d["hostname"]),
                    output::s(&d["verification"]["state"]),
                    output::dns_records(&d["dns"]["records"]),
                    output::dns_status(&d["dns"]),
                ]);
            }
            table.print_or(&format!(
                "No domains yet. Add one with `certdrop domains:add HOST --app {app}`."
            ));
            for d in items
                .iter()
                .filter(|d| d["verification"]["state"] == "pending")
            {
                println!("\n{}", output::proof_steps(d, &app));
            }
            Ok(())
        }
        Command::DomainsAdd {
            hostname,
            app,
            override_reason,
        } => {
            let d = Client::configured()?
                .post(
                    &format!("/api/v1/apps/{}/domains", urlencode(&app)),
                    json!({"hostname": hostname, "override_reason": override_reason}),
                )
                .await?;
            println!(
                "Added {} to {app}.\n\n{}",
                output::s(&d["hostname"]),
                output::proof_steps(&d, &app)
            );
            Ok(())
        }
        Command::DomainsVerify {
            hostname,
            app,
            override_reason,
        } => {
            let d = Client::configured()?
                .post(
                    &format!("{}/verify", domain_path(&app, &hostname)),
                    json!({"override_reason": override_reason}),
                )
                .await?;
            println!(
                "{} is verified: it is served as soon as a deployed certificate covers it.",
                output::s(&d["hostname"])
            );
            Ok(())
        }
        Command::DomainsCheck { hostname, app } => {
            let d = Client::configured()?
                .post(
                    &format!("{}/dns-check", domain_path(&app, &hostname)),
                    json!({}),
                )
                .await?;
            println!(
                "{}: {}",
                output::s(&d["hostname"]),
                output::dns_status(&d["dns"])
            );
            let records = output::dns_records(&d["dns"]["records"]);
            if !records.is_empty() {
                println!("Record to create: {records}");
            }
            Ok(())
        }
        Command::DomainsRemove {
            hostname,
            app,
            confirm,
            override_reason,
        } => {
            let mut query = Vec::new();
            if let Some(confirm) = &confirm {
                query.push(format!("confirm={}", urlencode(confirm)));
            }
            if let Some(reason) = &override_reason {
                query.push(format!("override_reason={}", urlencode(reason)));
            }
            let path = domain_path(&app, &hostname);
            Client::configured()?
                .delete(&if query.is_empty() {
                    path
                } else {
                    format!("{path}?{}", query.join("&"))
                })
                .await?;
            println!("Removed {hostname} from {app}.");
            Ok(())
        }
        Command::Certs { app, json } => {
            let items = Client::configured()?
                .list_all(&format!("/api/v1/apps/{}/certs", urlencode(&app)))
                .await?;
            if json {
                return print_json(&items);
            }
            let mut table = Table::new(&[
                "ID",
                "Common Name",
                "Domains",
                "Expires",
                "Trusted",
                "Source",
                "Renewal",
                "Status",
            ]);
            for c in &items {
                table.row(vec![
                    output::s(&c["id"]),
                    output::s(&c["common_name"]),
                    output::list(&c["sans"]),
                    output::s(&c["not_after"]).chars().take(10).collect(),
                    output::yes_no(&c["trusted"]),
                    output::s(&c["source"]),
                    output::renewal(c),
                    output::s(&c["status"]),
                ]);
            }
            table.print_or(&format!(
                "No certificates yet. Upload one with `certdrop certs:add CRT [CHAIN...] KEY --app {app}`."
            ));
            Ok(())
        }
        Command::CertsAdd {
            files,
            app,
            bypass,
            json,
        } => upload_and_open(&app, &files, bypass, json, None).await,
        Command::CertsUpdate {
            files,
            app,
            bypass,
            json,
        } => upload_and_open(&app, &files, bypass, json, Some("update")).await,
        Command::CertsGenerate {
            app,
            key_type,
            subject,
            domains,
            out,
        } => {
            let csr = Client::configured()?
                .post(
                    &format!("/api/v1/apps/{}/csrs", urlencode(&app)),
                    json!({"key_type": key_type, "subject": subject, "domains": domains}),
                )
                .await?;
            let pem = output::s(&csr["csr_pem"]);
            match &out {
                Some(path) => std::fs::write(path, &pem)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => print!("{pem}"),
            }
            eprintln!(
                "Key #{} ({}) generated for {} and sealed in the vault; nobody holds it. Send the CSR{} to your certificate authority for {}, then upload what it returns: `certdrop certs:add CRT [CHAIN...] --app {app}` (no key needed).",
                output::s(&csr["id"]),
                output::s(&csr["key_type"]),
                output::s(&csr["app"]),
                out.as_ref()
                    .map(|p| format!(" ({})", p.display()))
                    .unwrap_or_default(),
                csr["domains"]
                    .as_array()
                    .map(|d| d.iter().map(output::s).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default(),
            );
            Ok(())
        }
        Command::PlatformCert { files } => {
            let client = Client::configured()?;
            let cert = upload(&client, "/api/v1/platform/certificate", &files, false).await?;
            println!(
                "Platform certificate for *.{} stored (expires {}, SHA-256 {}); its key is sealed, and the edge pairs serve it within seconds.",
                output::s(&cert["apps_domain"]),
                output::s(&cert["not_after"]),
                output::s(&cert["fingerprint_sha256"])
            );
            Ok(())
        }
        Command::CertsDeploy { id, app } => {
            deploy_uploaded(&Client::configured()?, &app, id, None, false).await
        }
        Command::CertsAuto { app } => {
            let client = Client::configured()?;
            let info = client
                .get(&format!("/api/v1/apps/{}", urlencode(&app)))
                .await?;
            let kind = match info["provisioned"] == true {
                true => "update",
                false => "provision",
            };
            let ticket = client
                .post(
                    "/api/v1/tickets",
                    json!({"app": app, "kind": kind, "source": "acme"}),
                )
                .await?;
            println!(
                "Ticket #{} opened ({kind}, automatic certificate); once staff approve it, certdrop obtains the certificate from its certificate authority, deploys it, and renews it by itself.",
                output::s(&ticket["id"])
            );
            Ok(())
        }
        Command::CertsRollback { app } => {
            open_ticket(&Client::configured()?, &app, "rollback", None).await
        }
        Command::CertsRemove { app } => {
            open_ticket(&Client::configured()?, &app, "remove", None).await
        }
        Command::Tickets { app, state, json } => {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            if let Some(app) = &app {
                query.append_pair("app", app);
            }
            if let Some(state) = &state {
                query.append_pair("state", state);
            }
            let items = Client::configured()?
                .list_all(&format!("/api/v1/tickets?{}", query.finish()))
                .await?;
            if json {
                return print_json(&items);
            }
            let mut table = Table::new(&[
                "ID",
                "App",
                "Customer",
                "Kind",
                "State",
                "Certificate",
                "Opened",
            ]);
            for t in &items {
                table.row(vec![
                    output::s(&t["id"]),
                    output::s(&t["app"]),
                    output::s(&t["customer"]),
                    output::s(&t["kind"]),
                    output::s(&t["state"]),
                    output::s(&t["certificate_id"]),
                    output::s(&t["created_at"]),
                ]);
            }
            table.print_or("No tickets.");
            Ok(())
        }
        Command::TicketsApprove { id, otp, wait } => start_deployment(id, otp, wait, false).await,
        Command::TicketsRetry { id, otp, wait } => start_deployment(id, otp, wait, true).await,
        Command::TicketsReject { id, reason } => {
            Client::configured()?
                .post(
                    &format!("/api/v1/tickets/{id}/reject"),
                    json!({"reason": reason}),
                )
                .await?;
            println!("Ticket #{id} rejected; the customer has been told why.");
            Ok(())
        }
        Command::EdgePairsCreate { name } => {
            let client = Client::configured()?;
            let pair = client
                .post("/api/v1/edge-pairs", json!({"name": name}))
                .await?;
            println!(
                "Created edge pair {}. Start its two nodes (each token works once):",
                output::s(&pair["name"])
            );
            for token in pair["enroll_tokens"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                println!("  {}", edge_command(&client.base, &output::s(&token)));
            }
            println!(
                "Each node prints its key fingerprint at start. An admin other than you compares it with `certdrop edge-pairs` and confirms the node (`certdrop edge-nodes:confirm ID --fingerprint SHA256:…`); until then no key is sealed to it."
            );
            Ok(())
        }
        Command::EdgePairs { json } => {
            let items = Client::configured()?.list_all("/api/v1/edge-pairs").await?;
            if json {
                return print_json(&items);
            }
            let mut table = Table::new(&[
                "Pair",
                "App",
                "Config",
                "Node",
                "ID",
                "State",
                "Fingerprint",
                "Address",
                "Last seen",
                "Applied",
            ]);
            for p in &items {
                for n in p["nodes"].as_array().cloned().unwrap_or_default() {
                    table.row(vec![
                        output::s(&p["name"]),
                        output::s(&p["app"]),
                        output::s(&p["config_version"]),
                        output::s(&n["node"]),
                        output::s(&n["id"]),
                        output::s(&n["state"]),
                        output::s(&n["recipient_fingerprint"]),
                        output::s(&n["address"]),
                        output::s(&n["last_seen_at"]),
                        output::s(&n["applied_version"]),
                    ]);
                }
            }
            table.print_or("No edge pairs. Create one with `certdrop edge-pairs:create NAME`.");
            Ok(())
        }
        Command::EdgeNodesConfirm {
            id,
            fingerprint,
            otp,
        } => {
            let node = Client::configured()?
                .post_fresh(
                    &format!("/api/v1/edge-nodes/{id}/confirm"),
                    json!({"recipient_fingerprint": fingerprint}),
                    otp,
                )
                .await?;
            println!(
                "{} confirmed: keys may now be sealed to {}.",
                output::s(&node["node"]),
                output::s(&node["recipient_fingerprint"])
            );
            Ok(())
        }
        Command::EdgeNodesRevoke { id, otp } => {
            let r = Client::configured()?
                .post_fresh(&format!("/api/v1/edge-nodes/{id}/revoke"), json!({}), otp)
                .await?;
            let apps: Vec<String> = r["affected_apps"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(output::s)
                .collect();
            println!("{} revoked; it gets nothing more.", output::s(&r["node"]));
            if !apps.is_empty() {
                println!(
                    "It held the keys of: {}. Their customers have been mailed to replace those certificates.",
                    apps.join(", ")
                );
            }
            Ok(())
        }
        Command::EdgeNodesToken { id } => {
            let client = Client::configured()?;
            let t = client
                .post(&format!("/api/v1/edge-nodes/{id}/enroll-token"), json!({}))
                .await?;
            println!(
                "New single-use token for {}:\n  {}",
                output::s(&t["node"]),
                edge_command(&client.base, &output::s(&t["enroll_token"]))
            );
            Ok(())
        }
        Command::CertsInfo { app, id, json } => {
            let client = Client::configured()?;
            let id = match id {
                Some(id) => id,
                None => {
                    let page = client
                        .get(&format!("/api/v1/apps/{}/certs?limit=1", urlencode(&app)))
                        .await?;
                    page["items"][0]["id"]
                        .as_i64()
                        .with_context(|| format!("{app} has no certificate yet"))?
                }
            };
            let cert = client.get(&format!("/api/v1/certs/{id}")).await?;
            if json {
                return print_json(&cert);
            }
            output::print_report(&cert);
            Ok(())
        }
        Command::Serve
        | Command::UsersCreate { .. }
        | Command::UsersRole { .. }
        | Command::VaultRotate
        | Command::VaultInit { .. }
        | Command::VaultRekey { .. }
        | Command::Backup { .. }
        | Command::Edge { .. }
        | Command::EdgeIdentity { .. }
        | Command::FleetKeygen { .. }
        | Command::FleetAttest { .. }
        | Command::BillingExport { .. } => {
            unreachable!("server verbs are dispatched in cli")
        }
    }
}

/// Uploads a certificate, then opens the ticket that deploys it: `provision` for an app that
/// serves nothing yet, `update` otherwise (or the kind asked for).
async fn upload_and_open(
    app: &str,
    files: &[PathBuf],
    bypass: bool,
    json: bool,
    kind: Option<&str>,
) -> anyhow::Result<()> {
    let client = Client::configured()?;
    let path = format!("/api/v1/apps/{}/certs", urlencode(app));
    let report = upload(&client, &path, files, bypass).await?;
    if json {
        print_json(&report)?;
    } else {
        output::print_report(&report);
    }
    let id = report["id"]
        .as_i64()
        .context("the upload answered no certificate id")?;
    deploy_uploaded(&client, app, id, kind, json).await
}

/// Opens the ticket that deploys uploaded certificate `id`: a provision ticket (after saying
/// its price) or an update. When none of its domains is proved yet, says how to prove them.
async fn deploy_uploaded(
    client: &Client,
    app: &str,
    id: i64,
    kind: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let info = client
        .get(&format!("/api/v1/apps/{}", urlencode(app)))
        .await?;
    let kind = kind.unwrap_or(if info["provisioned"] == true {
        "update"
    } else {
        "provision"
    });
    if kind == "provision" && !json {
        let price = &info["pair_price"];
        println!(
            "Provisioning gives {app} a dedicated edge pair for {} per month, prorated by the second until it is removed.",
            crate::web::money(
                price["cents_per_month"].as_i64().unwrap_or(0),
                price["currency"].as_str().unwrap_or("")
            )
        );
    }
    match open_ticket(client, app, kind, Some(id)).await {
        Err(err) if err.to_string().contains("domain_unverified") => {
            let domains = client
                .list_all(&format!("/api/v1/apps/{}/domains", urlencode(app)))
                .await?;
            let steps: Vec<String> = domains
                .iter()
                .filter(|d| d["verification"]["state"] == "pending")
                .map(|d| output::proof_steps(d, app))
                .collect();
            bail!(
                "Certificate #{id} is stored, but no ticket was opened: none of the domains it covers is proved yours yet.\n\n{}\n\nThen ask for it again with `certdrop certs:deploy {id} --app {app}`.",
                steps.join("\n\n")
            )
        }
        other => other,
    }
}

async fn open_ticket(
    client: &Client,
    app: &str,
    kind: &str,
    certificate_id: Option<i64>,
) -> anyhow::Result<()> {
    let ticket = client
        .post(
            "/api/v1/tickets",
            json!({"app": app, "kind": kind, "certificate_id": certificate_id}),
        )
        .await?;
    println!(
        "Ticket #{} opened ({kind}); you will get an email when staff approve it.",
        output::s(&ticket["id"])
    );
    Ok(())
}

/// The key file (absent when a bundle carries the key) and the certificate files, leaf first.
type SortedUpload = (Option<Vec<u8>>, Vec<Vec<u8>>);

/// Tells the key file from the certificates by what they hold, so `KEY CRT` works as well as
/// `CRT KEY` (and no key ends up read as a chain): a PEM file with a private key and no
/// certificate is the key; a bundle holding both counts as a certificate (the server finds its
/// key). Files that are all PEM certificates carry no key: the certificate may be for a key
/// certdrop generated (`certs:generate`). Otherwise the documented order holds: the last file
/// is the key.
fn sort_upload_files(files: Vec<(&PathBuf, Vec<u8>)>) -> anyhow::Result<SortedUpload> {
    let holds = |bytes: &[u8], label: &str| {
        String::from_utf8_lossy(bytes).contains(&format!("{label}-----"))
    };
    let (mut keys, mut certs): (Vec<_>, Vec<_>) = files
        .into_iter()
        .partition(|(_, b)| holds(b, "PRIVATE KEY") && !holds(b, "CERTIFICATE"));
    if keys.len() > 1 {
        let names: Vec<String> = keys.iter().map(|(p, _)| p.display().to_string()).collect();
        bail!(
            "give one private key, not {}: {}",
            keys.len(),
            names.join(", ")
        );
    }
    let bundled_key = certs.iter().any(|(_, b)| holds(b, "PRIVATE KEY"));
    let all_certificates = certs.iter().all(|(_, b)| holds(b, "CERTIFICATE"));
    if keys.is_empty() && !bundled_key && !all_certificates {
        if certs.len() < 2 {
            bail!(MISSING_KEY);
        }
        keys.push(certs.pop().expect("two files or more"));
    }
    Ok((
        keys.pop().map(|(_, b)| b),
        certs.into_iter().map(|(_, b)| b).collect(),
    ))
}

/// Uploads CRT [CHAIN...] KEY as the multipart form of a certificate upload at `path`.
pub async fn upload(
    client: &Client,
    path: &str,
    files: &[PathBuf],
    bypass: bool,
) -> anyhow::Result<Value> {
    let mut read = Vec::new();
    for path in files {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        read.push((path, bytes));
    }
    let (key, certs) = sort_upload_files(read)?;
    let (cert, chain) = certs
        .split_first()
        .context("give the certificate file too: CRT [CHAIN...] KEY")?;
    let mut form = reqwest::multipart::Form::new()
        .part("certificate", reqwest::multipart::Part::bytes(cert.clone()));
    let keyless = key.is_none();
    if let Some(key) = key {
        form = form.part("private_key", reqwest::multipart::Part::bytes(key));
    }
    for bytes in chain {
        form = form.part("chain", reqwest::multipart::Part::bytes(bytes.clone()));
    }
    if bypass {
        form = form.text("bypass", "true");
    }
    client
        .send(client.request(Method::POST, path).multipart(form))
        .await
        .map_err(
            |err| match keyless && format!("{err:#}").contains("no_private_key") {
                true => anyhow::anyhow!(MISSING_KEY),
                false => err,
            },
        )
}

const MISSING_KEY: &str = "the private key is missing: give the certificate, its chain if any, and the key, as in `certdrop certs:add server.crt chain.pem server.key --app A` (the key is checked and sealed at once); \
     for a key certdrop generated (`certdrop certs:generate`), give the certificate your CA signed for that request";

async fn login(
    url: Option<String>,
    email: Option<String>,
    password_stdin: bool,
    otp: Option<String>,
) -> anyhow::Result<()> {
    let url = url
        .or_else(|| std::env::var("CERTDROP_URL").ok())
        .or_else(|| load_credentials().map(|c| c.url))
        .unwrap_or_else(|| DEFAULT_URL.into());
    let email = match email {
        Some(e) => e,
        None => prompt("Email")?,
    };
    let password = if password_stdin {
        read_stdin_secret()?
    } else {
        SecretString::from(
            rpassword::prompt_password("Password: ").context("reading the password")?,
        )
    };
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "this machine".into());
    let client = Client::new(&url, None)?;
    let resp = client
        .post_fresh(
            "/api/v1/tokens",
            json!({"email": email, "password": password.expose_secret(), "name": format!("CLI on {host}")}),
            otp,
        )
        .await?;
    let token = resp["token"].as_str().context("the server sent no token")?;
    let path = save_credentials(&Credentials {
        url: url.clone(),
        email: output::s(&resp["email"]),
        token: token.to_string(),
    })?;
    println!(
        "Signed in to {url} as {}. Token saved to {}.",
        output::s(&resp["email"]),
        path.display()
    );
    Ok(())
}
