//! Pebble, a real ACME server (Debian package `pebble`), for the ACME tests. Its own HTTPS
//! certificate is made here; it resolves names with the test's DNS server and validates
//! HTTP-01 and TLS-ALPN-01 on the ports of real edge nodes. Its directory URL is fixed before
//! the control plane starts (its configuration needs it); Pebble itself starts once the
//! nodes' ports are known.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    common::require_or_skip,
    pki::{self, Alg},
};

/// A Pebble not started yet: where it will listen and the CA its HTTPS is signed by.
pub struct Plan {
    pub directory: String,
    /// The PEM file that trusts Pebble's HTTPS (`CERTDROP_ACME_CA_ROOTS`).
    pub ca_roots: PathBuf,
    port: u16,
    management: u16,
    dir: tempfile::TempDir,
}

pub struct Pebble {
    child: Child,
    management: u16,
    ca_roots: PathBuf,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plan, or `None` (the test skips) where Pebble is not installed.
pub fn plan() -> Option<Plan> {
    let installed = Command::new("pebble")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !require_or_skip("pebble (Debian package pebble)", installed) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::root("Pebble test HTTPS CA");
    let leaf = pki::leaf(&["localhost"], &ca, Alg::P256);
    std::fs::write(dir.path().join("https.pem"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.path().join("https.key"), &leaf.key_pem).unwrap();
    let ca_roots = dir.path().join("ca.pem");
    std::fs::write(&ca_roots, ca.pem()).unwrap();
    let port = free_port();
    Some(Plan {
        directory: format!("https://localhost:{port}/dir"),
        ca_roots,
        port,
        management: free_port(),
        dir,
    })
}

impl Plan {
    /// Starts Pebble: names resolved by `dns`, HTTP-01 checked on `http_port` and TLS-ALPN-01
    /// on `tls_port` of 127.0.0.1, certificates valid for `validity` seconds.
    pub fn start(self, dns: SocketAddr, http_port: u16, tls_port: u16, validity: u64) -> Pebble {
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{}", self.port),
            "managementListenAddress": format!("127.0.0.1:{}", self.management),
            "certificate": self.dir.path().join("https.pem"),
            "privateKey": self.dir.path().join("https.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity,
        }});
        let config_path = self.dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log = self.dir.path().join("pebble.log");
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &dns.to_string()])
            // No random sleeps or refused nonces: the test is about certdrop, not about luck.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            // Every order is validated afresh (renewals prove the domains again).
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::from(
                std::fs::File::create(log.with_extension("err")).unwrap(),
            ))
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "pebble did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Pebble {
            child,
            management: self.management,
            ca_roots: self.ca_roots,
            _dir: self.dir,
        }
    }
}

impl Pebble {
    /// The root Pebble issues under (random per run), for clients that verify what it issued.
    pub async fn issuing_root(&self) -> String {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&self.ca_roots).unwrap()).unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(ca)
            .build()
            .unwrap();
        client
            .get(format!("https://localhost:{}/roots/0", self.management))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
