//! The edge's TLS as a returning visitor and a browser see it, checked with `openssl s_client`:
//! a session from one node resumes on the other node of the pair and after a restart (TLS 1.2
//! and 1.3 tickets sealed with the pair's shared keys), and both nodes staple the OCSP
//! response that `openssl ocsp`, run as the CA's responder, gives for the certificate.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    common::TestApp,
    db_test,
    edge::serve_shop,
    edge_support::{EdgeNode, echo_backend},
    pki::{self, Alg, Leaf},
};

/// `shop` serving www.example.com from a new pair, with `leaf` (chain: `chain_pem`) deployed.
async fn deployed(app: &TestApp, leaf: &Leaf, chain_pem: &str) -> [EdgeNode; 2] {
    serve_shop(app, echo_backend().await, &[], leaf, chain_pem.as_bytes())
        .await
        .0
}

/// One HTTPS request with `openssl s_client` (its session summary and what it printed);
/// `None` where openssl is absent.
fn s_client(dir: &std::path::Path, node: SocketAddr, extra: &[&str]) -> Option<String> {
    let connect = node.to_string();
    let mut args = vec![
        "s_client",
        "-connect",
        &connect,
        "-servername",
        "www.example.com",
        "-ign_eof",
    ];
    args.extend_from_slice(extra);
    let out = pki::openssl(
        dir,
        &args,
        Some(b"GET / HTTP/1.0\r\nHost: www.example.com\r\n\r\n"),
    )?;
    Some(String::from_utf8_lossy(&out).into_owned())
}

db_test! {
    async fn a_visitor_resumes_on_the_other_node_and_after_a_restart(app) {
        let root = pki::root("Resumption Root");
        let inter = pki::intermediate("Resumption Intermediate", &root);
        let leaf = pki::leaf(&["www.example.com"], &inter, Alg::P256);
        let [first, second] = deployed(&app, &leaf, &inter.pem()).await;
        let dir = tempfile::tempdir().unwrap();
        for version in ["-tls1_2", "-tls1_3"] {
            let session = format!("session{version}.pem");
            let Some(out) = s_client(dir.path(), first.tls, &[version, "-sess_out", &session]) else {
                return;
            };
            assert!(out.contains("New, TLSv1."), "{out}");
            assert!(out.contains("x-forwarded-proto"), "the request went through: {out}");
            let out = s_client(dir.path(), second.tls, &[version, "-sess_in", &session]).unwrap();
            assert!(out.contains("Reused, TLSv1."), "{version}: a session from node 1 resumes on node 2:\n{out}");
        }
        // After a restart the node opens the same keys from its sealed local copy.
        let first = first.restart(&app.address);
        let out = s_client(dir.path(), first.tls, &["-tls1_3", "-sess_in", "session-tls1_3.pem"]).unwrap();
        assert!(out.contains("Reused, TLSv1.3"), "resumes after a restart:\n{out}");
        // The keys are sealed to the nodes: the control plane's database holds no plaintext key.
        let sealed: Vec<String> = sqlx::query_scalar("SELECT sealed FROM ticket_keys")
            .fetch_all(&app.db)
            .await
            .unwrap();
        assert_eq!(sealed.len(), 1);
        assert!(sealed[0].starts_with("-----BEGIN AGE ENCRYPTED FILE-----"));
        drop(second);
    }
}

/// `openssl ocsp` answering for `ca` on a free loopback port, from an index listing `leaf`.
struct Responder {
    child: Child,
    url: String,
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn responder(dir: &std::path::Path, ca: &pki::Ca, leaf_der: &[u8], port: u16) -> Responder {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf_der).unwrap();
    let serial = hex::encode_upper(
        cert.raw_serial()
            .iter()
            .skip_while(|b| **b == 0)
            .copied()
            .collect::<Vec<u8>>(),
    );
    let expiry = cert.validity().not_after.to_datetime();
    let index = format!(
        "V\t{:02}{:02}{:02}{:02}{:02}{:02}Z\t\t{serial}\tunknown\t/CN=www.example.com\n",
        expiry.year() % 100,
        u8::from(expiry.month()),
        expiry.day(),
        expiry.hour(),
        expiry.minute(),
        expiry.second()
    );
    std::fs::write(dir.join("index.txt"), index).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("ca.key"), ca.issuer.key().serialize_pem()).unwrap();
    let child = Command::new("openssl")
        .args([
            "ocsp",
            "-index",
            "index.txt",
            "-port",
            &port.to_string(),
            "-rsigner",
            "ca.pem",
            "-rkey",
            "ca.key",
            "-CA",
            "ca.pem",
            "-ndays",
            "1",
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Responder {
        child,
        url: format!("http://127.0.0.1:{port}/"),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

db_test! {
    async fn both_nodes_staple_the_responders_answer(app) {
        let dir = tempfile::tempdir().unwrap();
        if pki::openssl(dir.path(), &["version"], None).is_none() {
            return;
        }
        let root = pki::root("Stapling Root");
        let inter = pki::intermediate("Stapling Intermediate", &root);
        let port = free_port();
        let leaf = pki::leaf_with_ocsp_responder(&["www.example.com"], &inter, &format!("http://127.0.0.1:{port}/"));
        let responder = responder(dir.path(), &inter, &leaf.der, port);
        let nodes = deployed(&app, &leaf, &inter.pem()).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &nodes {
            loop {
                let out = s_client(dir.path(), node.tls, &["-status"]).unwrap();
                if out.contains("OCSP Response Status: successful") {
                    assert!(out.contains("Cert Status: good"), "{out}");
                    break;
                }
                assert!(Instant::now() < deadline, "{} staples nothing from {}:\n{out}", node.tls, responder.url);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        let (next_update, error): (Option<i64>, Option<String>) =
            sqlx::query_as("SELECT next_update, last_error FROM ocsp_staples")
                .fetch_one(&app.db)
                .await
                .unwrap();
        assert!(next_update.unwrap() > certdrop::db::now() + 3600, "valid for a day");
        assert_eq!(error, None);

        // The responder goes away: both nodes go on serving, with the staple they hold.
        drop(responder);
        for node in &nodes {
            let out = s_client(dir.path(), node.tls, &["-status"]).unwrap();
            assert!(out.contains("OCSP Response Status: successful"), "{out}");
        }
    }
}

db_test! {
    async fn a_certificate_without_a_responder_is_served_without_a_staple(app) {
        let dir = tempfile::tempdir().unwrap();
        let root = pki::root("No OCSP Root");
        let inter = pki::intermediate("No OCSP Intermediate", &root);
        let leaf = pki::leaf(&["www.example.com"], &inter, Alg::P256);
        let nodes = deployed(&app, &leaf, &inter.pem()).await;
        let Some(out) = s_client(dir.path(), nodes[0].tls, &["-status"]) else {
            return;
        };
        assert!(out.contains("OCSP response: no response sent"), "{out}");
        assert!(out.contains("x-forwarded-proto"), "{out}");
    }
}
