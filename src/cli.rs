//! The command tree. Server verbs act on the configured database directly; client verbs talk to
//! a server over the JSON API (see `client`).

use std::{io::Read, process::ExitCode};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};
use tracing_subscriber::EnvFilter;

use crate::{
    accounts::{self, Role, password, store},
    audit::{self, Entry},
    client,
    config::Config,
    db,
    startup::{Application, shutdown_signal},
};

#[derive(Parser)]
#[command(
    name = "certdrop",
    version,
    about = "TLS certificates from your hands to a pair of edge servers, safely."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How `vault:init` and `vault:rekey` split the vault, and how they print the shares.
#[derive(clap::Args)]
pub struct SplitArgs {
    /// How many shares (N, at most 16; default: one per --recipient, else 5).
    #[arg(long)]
    shares: Option<u8>,
    /// How many shares unseal it (K, default 3 or N when smaller).
    #[arg(long)]
    threshold: Option<u8>,
    /// Seal each share to one key holder's age recipient (give it N times), so no share is
    /// ever shown in the clear.
    #[arg(long = "recipient", value_name = "AGE_RECIPIENT")]
    recipients: Vec<String>,
    /// Also wrap the key with the PKCS#11 token (CERTDROP_VAULT_PKCS11_*), creating its AES
    /// key when absent: the control plane then unseals itself at start.
    #[arg(long)]
    pkcs11: bool,
    #[arg(long)]
    json: bool,
}

impl SplitArgs {
    /// K and N: N defaults to one share per recipient (else 5), K to 3 (or N when smaller).
    fn size(&self) -> (u8, u8) {
        let shares = self.shares.unwrap_or(match self.recipients.len() {
            0 => 5,
            n => u8::try_from(n).unwrap_or(u8::MAX),
        });
        (self.threshold.unwrap_or(shares.min(3)), shares)
    }

    fn print(&self, shares: &[crate::vault::shamir::Share], threshold: u8) -> anyhow::Result<()> {
        crate::vault::admin::print_shares(shares, threshold, &self.recipients, self.json)
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the web UI, the JSON API and the background workers.
    Serve,
    /// Create a user of any role (server side).
    #[command(name = "users:create")]
    UsersCreate {
        #[arg(long)]
        email: String,
        #[arg(long, value_parser = ["customer", "staff", "admin"])]
        role: String,
        /// Read the password from standard input instead of generating one.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a user's role from the server shell (server side): the root of trust for raising
    /// roles on one-admin installs (in the browser a raise takes two admins).
    #[command(name = "users:role")]
    UsersRole {
        #[arg(long)]
        email: String,
        #[arg(long, value_parser = ["customer", "staff", "admin"])]
        role: String,
    },
    /// Reseal every stored key to a new vault identity, then retire the old one (server side;
    /// a split vault takes K shares on stdin, one per line, or its PKCS#11 token).
    #[command(name = "vault:rotate")]
    VaultRotate,
    /// Seal the vault at rest (server side): wrap its identity with a fresh key, split that key
    /// into N shares of which K unseal it, and print the shares once.
    #[command(name = "vault:init")]
    VaultInit {
        #[command(flatten)]
        split: SplitArgs,
    },
    /// Hand out new shares (server side): K current shares on stdin, one per line; the old
    /// shares stop counting.
    #[command(name = "vault:rekey")]
    VaultRekey {
        #[command(flatten)]
        split: SplitArgs,
    },
    /// Give your share to a sealed control plane (read from stdin, or typed at the terminal).
    #[command(name = "vault:unseal")]
    VaultUnseal {
        /// The control plane (default: $CERTDROP_URL, the saved one, or http://127.0.0.1:8080).
        #[arg(long)]
        url: Option<String>,
    },
    /// Seal the running control plane now: the emergency button (admins, with a fresh code).
    #[command(name = "vault:seal")]
    VaultSeal {
        #[arg(long)]
        otp: Option<String>,
    },
    /// Back up the SQLite database (online) and the vault identity into DIR, mode 0700
    /// (server side; restore by using DIR as CERTDROP_DATA_DIR).
    Backup {
        #[arg(long, value_name = "DIR")]
        to: std::path::PathBuf,
    },
    /// Sign in to a certdrop server and remember an API token for the other verbs.
    Login {
        /// The server (default: $CERTDROP_URL, the saved one, or http://127.0.0.1:8080).
        #[arg(long)]
        url: Option<String>,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        password_stdin: bool,
        /// The authenticator code (staff and admins; asked for at the terminal otherwise).
        #[arg(long)]
        otp: Option<String>,
    },
    /// List your apps.
    Apps {
        #[arg(long)]
        json: bool,
    },
    /// Create an app.
    #[command(name = "apps:create")]
    AppsCreate {
        name: String,
        /// Where the edge servers send the app's traffic, e.g. http://10.0.0.5:8000
        #[arg(long)]
        backend: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete an app (type its name again with --confirm).
    #[command(name = "apps:delete")]
    AppsDelete {
        name: String,
        #[arg(long)]
        confirm: String,
    },
    /// List an app's custom domains.
    Domains {
        #[arg(long)]
        app: String,
        #[arg(long)]
        json: bool,
    },
    /// Claim a custom domain for an app (wildcards like *.example.com allowed); it is served
    /// once proved with the TXT record this prints.
    #[command(name = "domains:add")]
    DomainsAdd {
        hostname: String,
        #[arg(long)]
        app: String,
        /// Staff only: add to a customer's app, with this reason (audited).
        #[arg(long)]
        override_reason: Option<String>,
    },
    /// Check a domain's TXT proof now (staff: --override-reason verifies without it, audited).
    #[command(name = "domains:verify")]
    DomainsVerify {
        hostname: String,
        #[arg(long)]
        app: String,
        #[arg(long)]
        override_reason: Option<String>,
    },
    /// Look up where a domain points now.
    #[command(name = "domains:check")]
    DomainsCheck {
        hostname: String,
        #[arg(long)]
        app: String,
    },
    /// Remove a custom domain from an app; one served now needs --confirm HOST.
    #[command(name = "domains:remove")]
    DomainsRemove {
        hostname: String,
        #[arg(long)]
        app: String,
        /// Repeat the hostname to stop serving a live domain.
        #[arg(long)]
        confirm: Option<String>,
        /// Staff only: remove from a customer's app, with this reason (audited).
        #[arg(long)]
        override_reason: Option<String>,
    },
    /// List an app's certificates.
    Certs {
        #[arg(long)]
        app: String,
        #[arg(long)]
        json: bool,
    },
    /// Upload a certificate, its chain and key: CRT [CHAIN...] KEY.
    #[command(name = "certs:add")]
    CertsAdd {
        #[arg(required = true, num_args = 1.., value_name = "CRT [CHAIN...] KEY")]
        files: Vec<std::path::PathBuf>,
        #[arg(long)]
        app: String,
        /// Keep the chain exactly as given (no reordering or stripping).
        #[arg(long)]
        bypass: bool,
        #[arg(long)]
        json: bool,
    },
    /// Generate a key inside certdrop (sealed at birth) and print its CSR for your CA; then
    /// `certs:add CRT [CHAIN...]` with the certificate it returns, no key needed.
    #[command(name = "certs:generate")]
    CertsGenerate {
        #[arg(long)]
        app: String,
        /// p256 (ECDSA P-256, the default) or rsa2048.
        #[arg(long, default_value = "p256")]
        key_type: String,
        /// e.g. "/C=US/O=Example Inc" (the Common Name is the first domain unless given).
        #[arg(long)]
        subject: Option<String>,
        /// A name to ask for (repeat it); all of the app's domains when none.
        #[arg(long = "domain")]
        domains: Vec<String>,
        /// Write the CSR to this file instead of standard output.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Upload a new certificate for an app that already serves one, and open an update ticket.
    #[command(name = "certs:update")]
    CertsUpdate {
        #[arg(required = true, num_args = 1.., value_name = "CRT [CHAIN...] KEY")]
        files: Vec<std::path::PathBuf>,
        #[arg(long)]
        app: String,
        #[arg(long)]
        bypass: bool,
        #[arg(long)]
        json: bool,
    },
    /// Ask for an uploaded certificate to be deployed (a provision ticket, or an update
    /// ticket when the app already serves one).
    #[command(name = "certs:deploy")]
    CertsDeploy {
        /// The certificate's id, as `certdrop certs` shows it.
        id: i64,
        #[arg(long)]
        app: String,
    },
    /// Ask for an automatic certificate (ACME): a provision ticket, or an update when the app
    /// already serves one. Once staff approve, certdrop obtains it for the app's verified
    /// domains, deploys it, and renews it by itself.
    #[command(name = "certs:auto")]
    CertsAuto {
        #[arg(long)]
        app: String,
    },
    /// Admin: upload the apps domain's wildcard certificate (CRT [CHAIN...] KEY), served at
    /// every app's platform hostname.
    #[command(name = "platform:cert")]
    PlatformCert {
        #[arg(required = true, num_args = 1.., value_name = "CRT [CHAIN...] KEY")]
        files: Vec<std::path::PathBuf>,
    },
    /// Open a ticket to return to the previously deployed certificate.
    #[command(name = "certs:rollback")]
    CertsRollback {
        #[arg(long)]
        app: String,
    },
    /// Open a ticket to stop serving TLS and release the app's edge pair (stops billing).
    #[command(name = "certs:remove")]
    CertsRemove {
        #[arg(long)]
        app: String,
    },
    /// List tickets (yours; staff see all).
    Tickets {
        #[arg(long)]
        app: Option<String>,
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Approve an open ticket (staff).
    #[command(name = "tickets:approve")]
    TicketsApprove {
        id: i64,
        /// A current authenticator code (asked for when the last one is over 10 minutes old).
        #[arg(long)]
        otp: Option<String>,
        /// Follow the deployment to its end (deployed or failed) and exit non-zero on failure.
        #[arg(long)]
        wait: bool,
    },
    /// Deploy a failed ticket again, once its cause is fixed (staff; the same checks as approving).
    #[command(name = "tickets:retry")]
    TicketsRetry {
        id: i64,
        /// A current authenticator code (asked for when the last one is over 10 minutes old).
        #[arg(long)]
        otp: Option<String>,
        /// Follow the deployment to its end (deployed or failed) and exit non-zero on failure.
        #[arg(long)]
        wait: bool,
    },
    /// Reject an open ticket with a reason the customer reads (staff).
    #[command(name = "tickets:reject")]
    TicketsReject {
        id: i64,
        #[arg(long)]
        reason: String,
    },
    /// Create an edge pair and print its two enrollment tokens (staff).
    #[command(name = "edge-pairs:create")]
    EdgePairsCreate { name: String },
    /// List edge pairs and their nodes' health (staff).
    #[command(name = "edge-pairs")]
    EdgePairs {
        #[arg(long)]
        json: bool,
    },
    /// Confirm an enrolled node after comparing the fingerprint it printed at start (admin).
    #[command(name = "edge-nodes:confirm")]
    EdgeNodesConfirm {
        id: i64,
        /// The fingerprint the node printed, e.g. SHA256:…
        #[arg(long)]
        fingerprint: String,
        #[arg(long)]
        otp: Option<String>,
    },
    /// Revoke a node (a stolen or retired machine): it gets nothing more (admin).
    #[command(name = "edge-nodes:revoke")]
    EdgeNodesRevoke {
        id: i64,
        #[arg(long)]
        otp: Option<String>,
    },
    /// Issue a new enrollment token for a node that never enrolled or was revoked (staff).
    #[command(name = "edge-nodes:token")]
    EdgeNodesToken { id: i64 },
    /// Print this edge machine's key fingerprint and recipient, creating its identity if needed
    /// (server side, on the edge machine; for `fleet:attest`).
    #[command(name = "edge:identity")]
    EdgeIdentity {
        #[arg(long)]
        data_dir: std::path::PathBuf,
    },
    /// Create a fleet attestation key: the private key goes to FILE, the public key to
    /// CERTDROP_FLEET_PUBLIC_KEY (run on the operator's provisioning machine).
    #[command(name = "fleet:keygen")]
    FleetKeygen {
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Sign an edge node's recipient with the fleet key, for one slot of one pair and for a
    /// while; the node enrolls with --attestation (and the token of that slot).
    #[command(name = "fleet:attest")]
    FleetAttest {
        /// The node's age recipient (age1…), as `certdrop edge:identity` prints it.
        recipient: String,
        #[arg(long)]
        key: std::path::PathBuf,
        /// The pair the node joins, as the Edge pairs page names it.
        #[arg(long)]
        pair: String,
        /// Its slot in the pair: 1 or 2.
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..=2))]
        slot: i64,
        /// Hours until the attestation expires (at most a week).
        #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(i64).range(1..=168))]
        valid_hours: i64,
    },
    /// Run one edge node: a TLS terminator for its pair's app (server side).
    Edge {
        #[arg(long)]
        control_plane: String,
        #[arg(long)]
        enroll_token: String,
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        http_listen: Option<std::net::SocketAddr>,
        /// HOST:PORT the control plane reaches this node at (default: the --listen address).
        #[arg(long)]
        advertise: Option<String>,
        #[arg(long)]
        data_dir: std::path::PathBuf,
        /// A file holding the fleet key's attestation of this node (`certdrop fleet:attest`).
        #[arg(long)]
        attestation: Option<std::path::PathBuf>,
        /// Seconds the app's backend has to answer before the client gets 504.
        #[arg(long, default_value_t = 60)]
        backend_timeout: u64,
        /// Seconds a client has to send a request's head.
        #[arg(long, default_value_t = 60)]
        header_timeout: u64,
        /// Seconds a keep-alive connection may wait for its next request.
        #[arg(long, default_value_t = 75)]
        idle_timeout: u64,
        /// Client connections open at once (default: from the open-file limit).
        #[arg(long)]
        max_connections: Option<usize>,
        /// Serve this node's metrics (Prometheus text format) at http://ADDR/metrics; bind it
        /// to an address only Prometheus reaches.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// Export a month's billing statement for all customers (server side).
    #[command(name = "billing:export")]
    BillingExport {
        #[arg(long)]
        month: String,
        #[arg(long, default_value = "csv", value_parser = ["csv", "json"])]
        format: String,
    },
    /// Show a certificate's details (the newest one, or --id).
    #[command(name = "certs:info")]
    CertsInfo {
        #[arg(long)]
        app: String,
        #[arg(long)]
        id: Option<i64>,
        #[arg(long)]
        json: bool,
    },
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    // Whatever runs first (serve, users:create, an edge node) creates private files: the
    // database, its journal, mail and keys are for certdrop's user alone.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    crate::startup::install_crypto_provider();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("certdrop: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("certdrop: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve => {
            init_logging("info");
            let config = Config::from_env()?;
            let app = Application::build(config).await?;
            app.run_until(shutdown_signal()).await
        }
        Command::UsersCreate {
            email,
            role,
            password_stdin,
        } => {
            init_logging("warn");
            users_create(&email, &role, password_stdin).await
        }
        Command::UsersRole { email, role } => {
            init_logging("warn");
            users_role(&email, &role).await
        }
        Command::VaultRotate => {
            init_logging("warn");
            vault_rotate().await
        }
        Command::VaultInit { split } => {
            init_logging("warn");
            let config = Config::from_env()?;
            let (threshold, shares) = split.size();
            let printed = crate::vault::admin::init(&config, threshold, shares, split.pkcs11)?;
            let detail = serde_json::json!({"threshold": threshold, "shares": shares, "pkcs11": split.pkcs11});
            audit_vault(&config, "vault.split", detail).await?;
            split.print(&printed, threshold)
        }
        Command::VaultRekey { split } => {
            init_logging("warn");
            let config = Config::from_env()?;
            let (threshold, shares) = split.size();
            let input = crate::vault::admin::read_stdin()?;
            let key = crate::vault::admin::offline_key(&config, &input)?
                .context("the vault is not split; run `certdrop vault:init`")?;
            let printed =
                crate::vault::admin::rekey(&config, &key, threshold, shares, split.pkcs11)?;
            let detail = serde_json::json!({"threshold": threshold, "shares": shares});
            audit_vault(&config, "vault.rekeyed", detail).await?;
            split.print(&printed, threshold)
        }
        Command::Backup { to } => {
            init_logging("warn");
            backup(&to).await
        }
        Command::Edge {
            control_plane,
            enroll_token,
            listen,
            http_listen,
            advertise,
            data_dir,
            attestation,
            backend_timeout,
            header_timeout,
            idle_timeout,
            max_connections,
            metrics_listen,
        } => {
            init_logging("info");
            let defaults = crate::edge::node::limits::Limits::defaults();
            let seconds = |s: u64| std::time::Duration::from_secs(s.max(1));
            let limits = crate::edge::node::limits::Limits {
                header_timeout: seconds(header_timeout),
                idle_timeout: seconds(idle_timeout),
                backend_timeout: seconds(backend_timeout),
                max_connections: max_connections.unwrap_or(defaults.max_connections).max(1),
            };
            let attestation = attestation
                .map(|path| {
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("--attestation: cannot read {}", path.display()))
                        .map(|text| text.trim().to_string())
                })
                .transpose()?;
            crate::edge::node::run(crate::edge::node::NodeArgs {
                control_plane,
                enroll_token,
                listen,
                http_listen,
                advertise,
                data_dir,
                attestation,
                limits,
                metrics_listen,
            })
            .await
        }
        Command::EdgeIdentity { data_dir } => {
            let recipient = crate::edge::node::load_identity(&data_dir)?
                .to_public()
                .to_string();
            println!(
                "fingerprint {}\nrecipient {recipient}",
                crate::edge::recipient_fingerprint(&recipient)
            );
            Ok(())
        }
        Command::FleetKeygen { out } => fleet_keygen(&out),
        Command::FleetAttest {
            recipient,
            key,
            pair,
            slot,
            valid_hours,
        } => {
            let pem = zeroize::Zeroizing::new(
                std::fs::read_to_string(&key)
                    .with_context(|| format!("--key: cannot read {}", key.display()))?,
            );
            let claim = crate::edge::fleet::Claim {
                recipient,
                pair,
                slot,
                expires_at: crate::db::now() + valid_hours * 3600,
            };
            println!("{}", crate::edge::fleet::attest(&pem, &claim)?);
            Ok(())
        }
        Command::BillingExport { month, format } => {
            init_logging("warn");
            billing_export(&month, &format).await
        }
        other => {
            init_logging("warn");
            client::run(other).await
        }
    }
}

/// Reads one line (a password) from standard input.
pub fn read_stdin_secret() -> anyhow::Result<SecretString> {
    let mut buf = String::new();
    std::io::stdin()
        .read_to_string(&mut buf)
        .context("reading the password from standard input")?;
    let line = buf.lines().next().unwrap_or("").to_string();
    Ok(SecretString::from(line))
}

async fn users_create(email: &str, role: &str, password_stdin: bool) -> anyhow::Result<()> {
    let email = accounts::normalize_email(email).map_err(anyhow::Error::msg)?;
    let role = Role::parse(role).context("role must be customer, staff or admin")?;
    let (secret, generated) = if password_stdin {
        let secret = read_stdin_secret()?;
        if let Err(msg) = accounts::check_new_password(secret.expose_secret(), &email) {
            bail!(msg);
        }
        (secret, false)
    } else {
        (
            SecretString::from(accounts::tokens::random_secret()[..24].to_string()),
            true,
        )
    };
    let config = Config::from_env()?;
    std::fs::create_dir_all(&config.data_dir)?;
    let db = db::connect(&config).await?;
    let hash = password::hash(secret.clone()).await?;
    let user = store::create_user(&db, &email, &hash, role, true).await?;
    // Staff and admins sign in with a second factor: enrol it now, shown once to the operator.
    let second_factor = if role.is_staff() {
        let vault = crate::vault::Vault::open_or_create(&config.vault_identity)?;
        Some(
            accounts::second_factor::enrol_now(&db, &vault, user.id)
                .await
                .map_err(|e| anyhow::anyhow!(e.message()))?,
        )
    } else {
        None
    };
    audit::record(
        &db,
        Entry::new(None, "user.created", "user", user.id)
            .detail(serde_json::json!({"email": user.email, "role": role.as_str(), "via": "cli"})),
    )
    .await
    .map_err(|e| anyhow::anyhow!(e.message()))?;
    println!("Created {} user {}.", role.as_str(), user.email);
    if generated {
        println!(
            "Password (shown once, keep it safe): {}",
            secret.expose_secret()
        );
    }
    if let Some((totp, codes)) = second_factor {
        println!(
            "Second factor (shown once): add this to an authenticator app; sign-in asks for its codes."
        );
        println!("{}", totp.otpauth_uri(&user.email).as_str());
        println!("Recovery codes (each works once, shown once):");
        for code in &codes {
            println!("  {}", code.as_str());
        }
    }
    Ok(())
}

async fn users_role(email: &str, role: &str) -> anyhow::Result<()> {
    let email = accounts::normalize_email(email).map_err(anyhow::Error::msg)?;
    let role = Role::parse(role).context("role must be customer, staff or admin")?;
    let config = Config::from_env()?;
    let db = db::connect(&config).await?;
    let user = store::find_user_by_email(&db, &email)
        .await
        .map_err(|e| anyhow::anyhow!(e.message()))?
        .with_context(|| format!("no user {email}"))?;
    let before = store::set_role(&db, user.id, role)
        .await
        .map_err(|e| anyhow::anyhow!(e.message()))?
        .with_context(|| format!("no user {email}"))?;
    audit::record(
        &db,
        Entry::new(None, "user.role_changed", "user", user.id).detail(
            serde_json::json!({"from": before.as_str(), "to": role.as_str(), "via": "cli"}),
        ),
    )
    .await
    .map_err(|e| anyhow::anyhow!(e.message()))?;
    println!(
        "{email} is now {} (was {}).",
        role.as_str(),
        before.as_str()
    );
    // Staff and admins enrol their first authenticator only through a one-time link: the
    // operator at the shell hands it over (it is shown here only).
    if role.is_staff() {
        let base = match &config.base_url {
            Some(url) => url.clone(),
            None => url::Url::parse(&format!("http://{}/", config.listen))?,
        };
        let mut conn = db.acquire().await?;
        match accounts::second_factor::issue_enrolment_link(&mut conn, &base, user.id)
            .await
            .map_err(|e| anyhow::anyhow!(e.message()))?
        {
            Some(link) => println!(
                "They set up their authenticator through this one-time link (24 hours; give it to them, not to anyone else):\n  {}",
                link.as_str()
            ),
            None => println!("They sign in with the authenticator they have."),
        }
    }
    Ok(())
}

fn fleet_keygen(out: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    let (private, public) = crate::edge::fleet::generate()?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(out)
        .with_context(|| format!("cannot create {} (it must not exist yet)", out.display()))?;
    file.write_all(private.as_bytes())?;
    file.sync_all()?;
    println!(
        "Fleet key written to {} (keep it offline, with your provisioning).",
        out.display()
    );
    println!(
        "Configure the control plane with:\nCERTDROP_FLEET_PUBLIC_KEY={}",
        public.encoded()
    );
    Ok(())
}

async fn audit_vault(
    config: &Config,
    action: &str,
    detail: serde_json::Value,
) -> anyhow::Result<()> {
    let db = db::connect(config).await?;
    audit::record(
        &db,
        Entry::new(None, action, "vault", "vault").detail(detail),
    )
    .await?;
    Ok(())
}

async fn vault_rotate() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let db = db::connect(&config).await?;
    // Opening the vault first finishes a swap an earlier rotation left half done.
    let vault = crate::vault::Vault::open_or_create(&config.vault_identity)?;
    let key = match vault.is_split() {
        true => crate::vault::admin::offline_key(&config, &crate::vault::admin::read_stdin()?)?,
        false => None,
    };
    let rotation = crate::vault::rotate::rotate(&db, vault.paths(), key.as_ref()).await?;
    audit::record(
        &db,
        Entry::new(None, "vault.rotated", "vault", &rotation.recipient)
            .detail(serde_json::json!({"resealed": rotation.resealed, "via": "cli"})),
    )
    .await?;
    println!(
        "Resealed {} secret(s) (private keys and second-factor secrets) to the new vault identity {}; the old identity is retired.",
        rotation.resealed, rotation.recipient
    );
    Ok(())
}

async fn backup(to: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let done = crate::backup::run(&config, to).await?;
    for (file, bytes) in &done.files {
        println!("  {file}  {bytes} bytes");
    }
    println!(
        "Backed up to {} (mode 0700): the vault identity{} and backup.json with each file's SHA-256. Keys stay sealed; keep this directory as safe as the server. To restore, stop certdrop and use the directory as CERTDROP_DATA_DIR.",
        done.dir.display(),
        if done.database_included {
            " and the SQLite database"
        } else {
            ""
        }
    );
    if !done.database_included {
        println!(
            "The database is PostgreSQL: back it up with `pg_dump --format=custom --file=certdrop.dump \"$CERTDROP_DATABASE_URL\"` (restore with pg_restore); the vault identity above is what opens its keys."
        );
    }
    Ok(())
}

async fn billing_export(month: &str, format: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let month = crate::billing::statement::Month::parse(month)
        .with_context(|| format!("`{month}` is not a month; write it as YYYY-MM"))?;
    let config = Config::from_env()?;
    let db = db::connect(&config).await?;
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    crate::billing::routes::write_export(&db, None, month, format == "json", &mut out).await?;
    out.flush()?;
    Ok(())
}
