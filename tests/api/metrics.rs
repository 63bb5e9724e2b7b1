//! `/metrics`: an admin's token (or the private listener) reads, in the Prometheus text format
//! that `promtool check metrics` accepts, what this process counted and what the database says.

use std::io::Write;

use certdrop::accounts::Role;
use reqwest::StatusCode;

use crate::{
    common::{Resp, TestApp, require_or_skip},
    db_test,
    edge::serve_shop,
    edge_support::{echo_backend, get_json, https_client},
    pki,
};

/// `promtool check metrics` on `text` (its lint included), when promtool is there.
fn promtool_accepts(text: &str) {
    let available = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !require_or_skip("promtool (Debian package prometheus)", available) {
        return;
    }
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the series `name{…}` whose labels include every one of `labels`.
fn value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

db_test! {
    async fn metrics_count_requests_and_deployments_and_read_the_shared_state(app) {
        let anonymous = app.api_anonymous().get("/metrics").await;
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{}", anonymous.body);
        let cat = app.api_user("cat@example.com", Role::Customer).await;
        assert_eq!(cat.get("/metrics").await.status, StatusCode::FORBIDDEN);
        let ada = app.api_user("ada@example.com", Role::Admin).await;

        let root = pki::root("Metrics Root");
        let leaf = pki::leaf(&["www.example.com"], &root, pki::Alg::P256);
        let (_nodes, shop) = serve_shop(&app, echo_backend().await, &[], &leaf, b"").await;
        let not_after = shop.get("/api/v1/apps/shop/certs").await.json["items"][0]["not_after"].as_str().unwrap().to_string();
        let not_after = time::OffsetDateTime::parse(&not_after, &time::format_description::well_known::Rfc3339).unwrap().unix_timestamp();

        let resp = ada.get("/metrics").await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
        assert!(resp.headers["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
        let text = resp.body;
        // Requests by route template (never the path), method and status.
        assert!(value(&text, "certdrop_http_requests_total", &["route=\"/api/v1/apps/{app}/certs\"", "method=\"GET\"", "status=\"200\""]).unwrap() >= 1.0, "{text}");
        assert!(!text.contains("route=\"/api/v1/apps/shop"), "paths are not labels");
        assert_eq!(value(&text, "certdrop_deployment_duration_seconds_count", &["kind=\"provision\"", "outcome=\"deployed\""]), Some(1.0), "{text}");
        assert_eq!(value(&text, "certdrop_tickets", &["state=\"deployed\""]), Some(1.0));
        assert_eq!(value(&text, "certdrop_tickets", &["state=\"open\""]), Some(0.0));
        assert!(value(&text, "certdrop_mail_outbox_pending", &[]).is_some());
        assert_eq!(value(&text, "certdrop_certificate_expiration_timestamp_seconds", &["app=\"shop\"", "pair=\"edge-x\""]), Some(not_after as f64), "{text}");
        for node in ["edge-x-1", "edge-x-2"] {
            let age = value(&text, "certdrop_edge_node_last_seen_age_seconds", &[&format!("node=\"{node}\"")]).unwrap_or_else(|| panic!("{node}: {text}"));
            assert!(age < 60.0, "{node} polls: {age}");
        }
        assert!(!text.contains("ann@example.com"), "no customer's email in a label");
        promtool_accepts(&text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_private_metrics_listener_answers_without_a_token() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let app = TestApp::spawn_with(crate::common::Backend::Sqlite, move |c| {
        c.metrics_listen = Some(addr)
    })
    .await
    .unwrap();
    let resp = Resp::read(
        reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    assert!(
        resp.body.contains("certdrop_tickets{state=\"open\"} 0"),
        "{}",
        resp.body
    );
    let other = Resp::read(
        reqwest::get(format!("http://{addr}/api/v1/apps"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        other.status,
        StatusCode::NOT_FOUND,
        "nothing else is served there"
    );
    promtool_accepts(&resp.body);
    drop(app);
}

db_test! {
    async fn an_edge_node_counts_handshakes_alerts_backend_latency_and_responses(app) {
        let root = pki::root("Edge Metrics Root");
        let leaf = pki::leaf(&["www.example.com"], &root, pki::Alg::P256);
        let (nodes, _) = serve_shop(&app, echo_backend().await, &["--metrics-listen", "127.0.0.1:0"], &leaf, b"").await;
        let node = &nodes[0];
        let client = https_client("www.example.com", node.tls, &root.pem(), false);
        for _ in 0..3 {
            let (status, _, _) = get_json(&client, &format!("https://www.example.com:{}/", node.tls.port())).await;
            assert_eq!(status, StatusCode::OK);
        }
        // Plain HTTP sent to the TLS port: the handshake ends with a decode_error alert.
        {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut tcp = tokio::net::TcpStream::connect(node.tls).await.unwrap();
            tcp.write_all(b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n").await.unwrap();
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
            assert_eq!(answer.first(), Some(&21), "a TLS alert record: {answer:?}");
        }

        let url = format!("http://{}/metrics", node.metrics.expect("the node says where its metrics are"));
        // The alert is counted as the node closes that connection: on a busy machine, a moment later.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let text = loop {
            let resp = Resp::read(reqwest::get(&url).await.unwrap()).await;
            assert_eq!(resp.status, StatusCode::OK);
            if value(&resp.body, "certdrop_edge_tls_alerts_sent_total", &["alert=\"decode_error\""]) == Some(1.0)
                || std::time::Instant::now() > deadline
            {
                break resp.body;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        let full = value(&text, "certdrop_edge_tls_handshakes_total", &["kind=\"full\""]).unwrap();
        let resumed = value(&text, "certdrop_edge_tls_handshakes_total", &["kind=\"resumed\""]).unwrap();
        assert!(full >= 1.0 && full + resumed >= 3.0, "{text}");
        assert_eq!(value(&text, "certdrop_edge_tls_alerts_sent_total", &["alert=\"decode_error\""]), Some(1.0), "{text}");
        assert!(value(&text, "certdrop_edge_responses_total", &["class=\"2xx\""]).unwrap() >= 3.0);
        assert!(value(&text, "certdrop_edge_upstream_duration_seconds_count", &[]).unwrap() >= 3.0);
        assert!(value(&text, "certdrop_edge_connections_open", &[]).is_some());
        promtool_accepts(&text);
    }
}
