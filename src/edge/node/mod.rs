//! `certdrop edge`: one edge node. It keeps its own age identity (never the vault's), enrolls
//! once with a single-use token, long-polls its configuration, opens its sealed keys in memory
//! only, and serves them: TLS 1.2/1.3 with SNI, HTTP/1.1 and HTTP/2, proxying to the app's
//! backend. It keeps serving its last good configuration when the control plane is away, and
//! after a restart it serves its sealed local copy before it has reached the control plane.

pub mod limits;
mod metrics;
mod proxy;
mod resumption;
mod sites;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::net::TcpListener;

use super::{Enrolled, Enrollment, NodeConfig};
use crate::vault;
pub use sites::Sites;

pub struct NodeArgs {
    pub control_plane: String,
    pub enroll_token: String,
    pub listen: SocketAddr,
    pub http_listen: Option<SocketAddr>,
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    /// The fleet key's signature over this node's recipient (`certdrop fleet:attest`).
    pub attestation: Option<String>,
    pub limits: limits::Limits,
    /// `--metrics-listen`: where Prometheus reads this node's metrics.
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Serialize, Deserialize)]
struct Credentials {
    control_plane: String,
    node_id: i64,
    node_token: String,
    pair: String,
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The node's running state: what it serves, and the identity that opens its keys.
pub struct Node {
    pub sites: ArcSwap<Sites>,
    identity: age::x25519::Identity,
    data_dir: PathBuf,
    /// The TLS port, for X-Forwarded-Port and redirects.
    pub tls_port: u16,
    pub limits: limits::Limits,
    /// One slot per open client connection (`--max-connections`).
    pub connections: Arc<limits::ConnectionSlots>,
    pub started: std::time::Instant,
    /// The second (since `started`) of the last "shedding connections" log line.
    pub last_shed_log: AtomicU64,
    /// This node's mark in `Via`, to recognise a request that loops back to it.
    pub hop: String,
    /// The control plane's policy on loopback and link-local backends.
    pub allow_private_backends: Arc<AtomicBool>,
    pub metrics: Arc<metrics::EdgeMetrics>,
}

impl Node {
    /// Opens the sealed keys of `config` and swaps the whole set in at once (keys and chains
    /// together); on any error the previous set keeps serving.
    fn apply(&self, config: &NodeConfig) -> anyhow::Result<()> {
        let sites = Sites::open(config, &self.identity)?;
        self.allow_private_backends
            .store(config.allow_private_backends, Ordering::Relaxed);
        self.sites.store(Arc::new(sites));
        write_private(
            &self.data_dir.join("config.json"),
            &serde_json::to_vec(config)?,
        )?;
        tracing::info!(
            version = config.version,
            sites = config.sites.len(),
            "edge: configuration applied"
        );
        Ok(())
    }

    /// Drops everything the node serves and holds (sites, keys, ticket keys) from memory and
    /// from its data dir: the control plane revoked it.
    fn wipe(&self) {
        self.sites.store(Arc::new(Sites::default()));
        let path = self.data_dir.join("config.json");
        if let Err(err) = std::fs::remove_file(&path)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::error!(error = %err, "edge: cannot remove {}", path.display());
        }
    }
}

/// The node's own age identity in `data_dir`, created (0600, in a 0700 directory) on first use.
pub fn load_identity(data_dir: &std::path::Path) -> anyhow::Result<age::x25519::Identity> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let identity_path = data_dir.join("node-identity.age");
    if !identity_path.exists() {
        vault::write_identity(&identity_path, &age::x25519::Identity::generate(), None)?;
    }
    vault::read_identity(&identity_path, None)
}

pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let identity = load_identity(&args.data_dir)?;
    // One node per data directory: a second process would split the traffic and the state.
    let lock_path = args.data_dir.join("node.lock");
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("cannot create {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        bail!(
            "another certdrop edge is running with the data dir {}; stop it first (or give this one its own --data-dir)",
            args.data_dir.display()
        );
    }
    // Like ssh's host key: the admin who confirms this node compares this line with the page.
    let recipient = identity.to_public().to_string();
    eprintln!(
        "certdrop edge: this node's key fingerprint is {} (recipient {recipient}).\n\
         An admin must confirm this fingerprint on the control plane's Edge pairs page before any key is sealed to this node.",
        super::recipient_fingerprint(&recipient)
    );

    // One TLS listener per core (SO_REUSEPORT): each serves its connections on its own
    // single-threaded runtime, like nginx's worker processes, with no cross-thread hand-offs.
    let first = proxy::bind_reuseport(args.listen)
        .with_context(|| format!("cannot listen on {} (--listen)", args.listen))?;
    let tls_addr = first.local_addr()?;
    let mut tls_listeners = vec![first];
    for _ in 1..std::thread::available_parallelism().map_or(1, |n| n.get()) {
        tls_listeners.push(proxy::bind_reuseport(tls_addr)?);
    }
    let http_listener = match args.http_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--http-listen)"))?,
        ),
        None => None,
    };
    let http_addr = http_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let metrics_listener = match args.metrics_listen {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let metrics_addr = metrics_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(40))
        .build()?;
    let creds = credentials(&args, &identity, tls_addr, http_addr, &http).await?;

    let hop = format!(
        "certdrop-edge-{}",
        &hex::encode(sha2::Sha256::digest(recipient.as_bytes()))[..12]
    );
    let node = Arc::new(Node {
        sites: ArcSwap::from_pointee(Sites::default()),
        identity,
        data_dir: args.data_dir.clone(),
        tls_port: tls_addr.port(),
        limits: args.limits,
        connections: limits::ConnectionSlots::new(args.limits.max_connections),
        started: std::time::Instant::now(),
        last_shed_log: AtomicU64::new(u64::MAX),
        hop,
        allow_private_backends: Arc::new(AtomicBool::new(false)),
        metrics: metrics::EdgeMetrics::new(),
    });
    let mut applied = 0;
    if let Ok(bytes) = std::fs::read(args.data_dir.join("config.json")) {
        match serde_json::from_slice::<NodeConfig>(&bytes)
            .map_err(anyhow::Error::from)
            .and_then(|c| node.apply(&c).map(|()| c.version))
        {
            Ok(version) => {
                applied = version;
                tracing::info!(version, "edge: serving the local copy of the configuration");
            }
            Err(err) => tracing::warn!(
                error = format!("{err:#}"),
                "edge: the local configuration could not be used"
            ),
        }
    }
    tracing::info!(
        tls = %tls_addr,
        http = ?http_addr,
        metrics = ?metrics_addr,
        pair = %creds.pair,
        max_connections = args.limits.max_connections,
        "certdrop edge is serving"
    );

    // One TLS configuration for every worker: tickets sealed with the pair's keys resume on
    // any of them, and on the other node.
    let acceptor = proxy::tls_acceptor(&node);
    for listener in tls_listeners {
        let (node, acceptor) = (node.clone(), acceptor.clone());
        std::thread::Builder::new()
            .name("edge-tls".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a TLS worker runtime");
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => proxy::serve_tls(listener, node, acceptor).await,
                        Err(err) => tracing::error!(error = %err, "edge: TLS worker cannot listen"),
                    }
                });
            })?;
    }
    let plain = http_listener.map(|l| tokio::spawn(proxy::serve_http(l, node.clone())));
    if let Some(listener) = metrics_listener {
        tokio::spawn(metrics::serve(
            listener,
            node.metrics.clone(),
            node.connections.clone(),
        ));
    }
    let poll = tokio::spawn(poll_config(node.clone(), creds, http, applied));
    crate::startup::shutdown_signal().await;
    poll.abort();
    drop(lock);
    if let Some(p) = plain {
        p.abort();
    }
    Ok(())
}

/// The node's credentials: saved ones, or new ones from spending the enrollment token.
async fn credentials(
    args: &NodeArgs,
    identity: &age::x25519::Identity,
    tls_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    http: &reqwest::Client,
) -> anyhow::Result<Credentials> {
    let path = args.data_dir.join("credentials.json");
    if let Ok(bytes) = std::fs::read(&path) {
        return serde_json::from_slice(&bytes)
            .context("credentials.json is damaged; remove the data dir and enroll again");
    }
    let control_plane = args.control_plane.trim_end_matches('/').to_string();
    let address = args
        .advertise
        .clone()
        .unwrap_or_else(|| tls_addr.to_string());
    let resp = http
        .post(format!("{control_plane}/api/v1/edge/enroll"))
        .json(&Enrollment {
            enroll_token: args.enroll_token.clone(),
            recipient: identity.to_public().to_string(),
            address,
            http_address: http_addr.map(|a| a.to_string()),
            attestation: args.attestation.clone(),
        })
        .send()
        .await
        .with_context(|| format!("cannot reach the control plane at {control_plane}"))?;
    if !resp.status().is_success() {
        bail!(
            "enrollment refused ({}): {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
    }
    let enrolled: Enrolled = resp.json().await?;
    if enrolled.state != "confirmed" {
        tracing::warn!(
            pair = %enrolled.pair,
            "edge: enrolled, waiting for an admin to confirm this node's fingerprint; it serves nothing until then"
        );
    }
    let creds = Credentials {
        control_plane,
        node_id: enrolled.node_id,
        node_token: enrolled.node_token,
        pair: enrolled.pair,
    };
    write_private(&path, &serde_json::to_vec(&creds)?)?;
    tracing::info!(pair = %creds.pair, "edge: enrolled");
    Ok(creds)
}

/// Long-polls the control plane; applies each new version; keeps the last good one on errors.
async fn poll_config(node: Arc<Node>, creds: Credentials, http: reqwest::Client, mut applied: i64) {
    let mut failures = 0u32;
    loop {
        let result = async {
            let resp = http
                .get(format!(
                    "{}/api/v1/edge/config?applied={applied}&wait=25",
                    creds.control_plane
                ))
                .bearer_auth(&creds.node_token)
                .send()
                .await?;
            if resp.status() == reqwest::StatusCode::GONE {
                return Ok(None);
            }
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
                anyhow::bail!(
                    "the control plane refused this node's credentials: it was revoked or replaced; an admin can tell on the Edge pairs page"
                );
            }
            let resp = resp.error_for_status()?;
            anyhow::Ok(Some(resp.json::<NodeConfig>().await?))
        }
        .await;
        match result {
            Ok(None) => {
                node.wipe();
                tracing::error!(
                    "edge: an admin revoked this node; it wiped its configuration and keys and serves nothing. Start a new machine (a fresh data dir) with a new enrollment token to replace it"
                );
                return;
            }
            Ok(Some(config)) => {
                failures = 0;
                if config.version != applied {
                    match node.apply(&config) {
                        Ok(()) => applied = config.version,
                        Err(err) => {
                            tracing::error!(
                                version = config.version,
                                error = format!("{err:#}"),
                                "edge: cannot apply configuration; keeping the previous one"
                            );
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                    }
                }
            }
            Err(err) => {
                failures += 1;
                let wait = Duration::from_millis(250 * 2u64.pow(failures.min(5)));
                tracing::warn!(
                    error = format!("{err:#}"),
                    retry_in_ms = wait.as_millis() as u64,
                    "edge: control plane unreachable; serving the last good configuration"
                );
                tokio::time::sleep(wait).await;
            }
        }
    }
}
