//! What the edge tests run: real `certdrop edge` processes, a small backend that echoes the
//! headers it receives, and TLS clients that verify against the test PKI like a browser would.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{Json, Router, http::HeaderMap};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A backend on loopback that answers every request with the headers it received.
pub async fn echo_backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(|headers: HeaderMap, uri: axum::http::Uri| async move {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        Json(json!({
            "path": uri.path(),
            "host": get("host"),
            "x-forwarded-for": get("x-forwarded-for"),
            "x-forwarded-proto": get("x-forwarded-proto"),
            "x-forwarded-port": get("x-forwarded-port"),
        }))
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// One `certdrop edge` process.
pub struct EdgeNode {
    pub child: Child,
    pub tls: SocketAddr,
    pub http: SocketAddr,
    /// Where `--metrics-listen` serves, when given.
    pub metrics: Option<SocketAddr>,
    pub data_dir: tempfile::TempDir,
    pub log: std::path::PathBuf,
}

impl EdgeNode {
    /// A node started with extra flags (timeouts, limits).
    pub fn start_with(control_plane: &str, token: &str, flags: &[&str]) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let log = data_dir.path().with_extension("edge.log");
        Self::spawn(
            control_plane,
            token,
            data_dir,
            log,
            "127.0.0.1:0",
            "127.0.0.1:0",
            flags,
        )
    }

    fn spawn(
        control_plane: &str,
        token: &str,
        data_dir: tempfile::TempDir,
        log: std::path::PathBuf,
        listen: &str,
        http_listen: &str,
        flags: &[&str],
    ) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) as usize;
        let mut child = Command::new(env!("CARGO_BIN_EXE_certdrop"))
            .args([
                "edge",
                "--control-plane",
                control_plane,
                "--enroll-token",
                token,
                "--listen",
                listen,
                "--http-listen",
                http_listen,
                "--data-dir",
            ])
            .arg(data_dir.path())
            .args(flags)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(line) = text[start.min(text.len())..]
                .lines()
                .find(|l| l.contains("certdrop edge is serving"))
            {
                let field = |name: &str| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(name))
                        .map(|v| {
                            v.trim_start_matches("Some(")
                                .trim_end_matches(')')
                                .parse::<SocketAddr>()
                                .unwrap()
                        })
                        .unwrap()
                };
                return Self {
                    tls: field("tls="),
                    http: field("http="),
                    metrics: line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("metrics=Some("))
                        .map(|v| v.trim_end_matches(')').parse().unwrap()),
                    child,
                    data_dir,
                    log,
                };
            }
            if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
                let _ = child.kill();
                let _ = child.wait();
                panic!("certdrop edge did not start:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills and starts the node again on the same data directory and ports (it must not need
    /// its spent token).
    pub fn restart(self, control_plane: &str) -> Self {
        let mut this = self;
        let _ = this.child.kill();
        let _ = this.child.wait();
        let data_dir = std::mem::replace(&mut this.data_dir, tempfile::tempdir().unwrap());
        let (tls, http) = (this.tls.to_string(), this.http.to_string());
        Self::spawn(
            control_plane,
            "spent-token",
            data_dir,
            this.log.clone(),
            &tls,
            &http,
            &[],
        )
    }

    /// The key fingerprint the node printed at start, as an admin reads it off its console.
    pub fn fingerprint(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap();
        text.split_whitespace()
            .find(|w| w.starts_with("SHA256:"))
            .unwrap_or_else(|| panic!("the node printed no fingerprint:\n{text}"))
            .to_string()
    }

    pub fn signal(&self, signal: &str) {
        Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
    }
}

impl Drop for EdgeNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn roots(root_pem: &str) -> Arc<rustls::RootCertStore> {
    let mut store = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        store.add(cert.unwrap()).unwrap();
    }
    Arc::new(store)
}

/// A verifying TLS handshake (chain to `roots`, name `sni`): the served chain's fingerprints,
/// leaf first, and the negotiated protocol version.
pub async fn tls_check(
    addr: SocketAddr,
    sni: &str,
    roots: Arc<rustls::RootCertStore>,
) -> Result<(Vec<String>, String), String> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, session) = tls.get_ref();
    let chain = session
        .peer_certificates()
        .unwrap()
        .iter()
        .map(|c| hex::encode(Sha256::digest(c.as_ref())))
        .collect();
    Ok((chain, format!("{:?}", session.protocol_version().unwrap())))
}

/// An HTTPS client that resolves `host` to the node and trusts the test root.
pub fn https_client(
    host: &str,
    node: SocketAddr,
    root_pem: &str,
    keep_alive: bool,
) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .resolve(host, node)
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(root_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(10));
    if !keep_alive {
        builder = builder.pool_max_idle_per_host(0);
    }
    builder.build().unwrap()
}

pub async fn get_json(
    client: &reqwest::Client,
    url: &str,
) -> (reqwest::StatusCode, reqwest::Version, Value) {
    let resp = client.get(url).send().await.unwrap();
    let (status, version) = (resp.status(), resp.version());
    (status, version, resp.json().await.unwrap_or(Value::Null))
}
