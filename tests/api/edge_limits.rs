//! The edge under attack and faults, on loopback with short limits: silent, slow and idle
//! clients are cut off; a connection cap sheds; a silent backend gets 504; loops and
//! forbidden backends are refused; oversized and ambiguous requests get 4xx; one node per data
//! directory; HSTS while HTTPS is forced.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use certdrop::accounts::Role;
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    common::{Api, Backend, TestApp},
    edge::serve_shop,
    edge_support::{EdgeNode, echo_backend, https_client, roots},
    pki::{self, Alg},
};

/// An app served by a real pair started with `flags`, its backend at `backend`.
struct Served {
    nodes: [EdgeNode; 2],
    root_pem: String,
    ann: Api,
}

async fn serve(app: &TestApp, backend: SocketAddr, flags: &[&str]) -> Served {
    let root = pki::root("Limits Root");
    let leaf = pki::leaf(&["www.example.com"], &root, Alg::P256);
    let (nodes, ann) = serve_shop(app, backend, flags, &leaf, b"").await;
    Served {
        nodes,
        root_pem: root.pem(),
        ann,
    }
}

/// A TLS connection to `node` for www.example.com, handshake done, nothing sent.
async fn tls(
    node: SocketAddr,
    root_pem: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots(root_pem))
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(node).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("www.example.com".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// How long until the server closes `conn` (reads until EOF or an error), at most `within`.
async fn closed_after<S: tokio::io::AsyncRead + Unpin>(
    conn: &mut S,
    within: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(within.saturating_sub(start.elapsed()), conn.read(&mut buf))
            .await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

fn log_of(node: &EdgeNode) -> String {
    std::fs::read_to_string(&node.log).unwrap()
}

async fn silent_slow_and_idle_clients_are_cut_off(backend_kind: Backend) {
    let Some(app) = TestApp::spawn(backend_kind).await else {
        return;
    };
    let backend = echo_backend().await;
    let flags = [
        "--header-timeout",
        "2",
        "--idle-timeout",
        "3",
        "--max-connections",
        "6",
    ];
    let served = serve(&app, backend, &flags).await;
    let node = served.nodes[0].tls;

    // 1a. A TLS connection that never sends a request: closed at the header timeout.
    let mut silent = tls(node, &served.root_pem).await;
    let after = closed_after(&mut silent, Duration::from_secs(10))
        .await
        .expect("closed");
    assert!(
        after >= Duration::from_millis(1500) && after < Duration::from_secs(6),
        "{after:?}"
    );

    // 1b. Half a request head, then nothing: closed at the header timeout too.
    let mut slow = tls(node, &served.root_pem).await;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: www.example.com\r\n")
        .await
        .unwrap();
    let after = closed_after(&mut slow, Duration::from_secs(10))
        .await
        .expect("closed");
    assert!(after < Duration::from_secs(6), "{after:?}");

    // 1c. A keep-alive connection: served, then closed after the idle timeout.
    let mut idle = tls(node, &served.root_pem).await;
    idle.write_all(b"GET /once HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let after = closed_after(&mut idle, Duration::from_secs(12))
        .await
        .expect("closed");
    assert!(
        after >= Duration::from_millis(2500) && after < Duration::from_secs(8),
        "the idle timeout, not the header one: {after:?}"
    );

    // 1d. Past --max-connections, new connections are shed (and said so), the rest keep going,
    //     and once the slow ones are cut off new clients are served again.
    let mut hogs = Vec::new();
    for _ in 0..6 {
        hogs.push(tls(node, &served.root_pem).await);
    }
    let shed = tokio::net::TcpStream::connect(node).await.unwrap();
    let mut shed = shed;
    assert!(
        closed_after(&mut shed, Duration::from_secs(2))
            .await
            .is_some(),
        "shed at once"
    );
    assert!(
        log_of(&served.nodes[0]).contains("at --max-connections"),
        "a log line says so"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let client = https_client("www.example.com", node, &served.root_pem, false);
    let resp = client
        .get(format!("https://www.example.com:{}/again", node.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    drop(hogs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_slow_and_idle_clients_are_cut_off_on_sqlite() {
    silent_slow_and_idle_clients_are_cut_off(Backend::Sqlite).await;
}

/// A backend that accepts connections and never answers.
async fn silent_backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_backend_gets_a_504_at_the_backend_timeout() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let backend = silent_backend().await;
    let served = serve(&app, backend, &["--backend-timeout", "2"]).await;
    let node = served.nodes[0].tls;
    let client = https_client("www.example.com", node, &served.root_pem, false);
    let start = Instant::now();
    let resp = client
        .get(format!("https://www.example.com:{}/hang", node.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
}

/// A backend that forwards every request to `to` with its headers (a misconfigured proxy).
async fn forwarding_backend(to: SocketAddr) -> SocketAddr {
    use axum::{Router, body::Body, http::Request};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = reqwest::Client::new();
    let app = Router::new().fallback(move |req: Request<Body>| {
        let client = client.clone();
        async move {
            let mut out = client.get(format!("http://{to}{}", req.uri()));
            for (name, value) in req.headers() {
                out = out.header(name, value);
            }
            match out.send().await {
                Ok(resp) => (resp.status(), resp.text().await.unwrap_or_default()),
                Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()),
            }
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_and_backends_on_the_machine_itself_are_refused() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let echo = echo_backend().await;
    let served = serve(&app, echo, &[]).await;
    let node = &served.nodes[0];
    // The control plane refuses an edge node's own listener, and itself.
    let http_port = node.http;
    for backend in [
        format!("http://{http_port}"),
        format!("http://{}", node.tls),
        app.address.clone(),
    ] {
        let resp = served
            .ann
            .patch_json("/api/v1/apps/shop", json!({"backend_url": backend}))
            .await;
        assert_eq!(
            resp.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{backend}: {}",
            resp.body
        );
        assert_eq!(resp.code(), "backend_not_allowed");
    }
    // A backend that sends requests back to the edge: the node sees its own Via mark and
    // answers 508 at once, instead of recursing until it runs out of files.
    let looping = forwarding_backend(node.http).await;
    let resp = served
        .ann
        .patch_json(
            "/api/v1/apps/shop",
            json!({"backend_url": format!("http://{looping}")}),
        )
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let client = https_client("www.example.com", node.tls, &served.root_pem, false);
    let resp = client
        .get(format!("https://www.example.com:{}/loop", node.tls.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::LOOP_DETECTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_duplicate_and_malformed_requests_get_a_4xx() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let served = serve(&app, echo_backend().await, &[]).await;
    let node = served.nodes[0].tls;
    let exchange = |request: Vec<u8>| {
        let root = served.root_pem.clone();
        async move {
            let mut conn = tls(node, &root).await;
            let _ = conn.write_all(&request).await;
            let mut reply = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut reply)).await;
            String::from_utf8_lossy(&reply).into_owned()
        }
    };
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: www.example.com\r\nX-Big: {}\r\n\r\n",
        "a".repeat(420_000)
    );
    let reply = exchange(huge.into_bytes()).await;
    assert!(
        reply.starts_with("HTTP/1.1 431"),
        "{}",
        &reply[..reply.len().min(200)]
    );
    let twice = b"GET / HTTP/1.1\r\nHost: www.example.com\r\nHost: evil.example\r\nConnection: close\r\n\r\n".to_vec();
    let reply = exchange(twice).await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    let bad_chunk = b"POST / HTTP/1.1\r\nHost: www.example.com\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nFFFFFFFFFFFFFFFFFFFF\r\nx\r\n0\r\n\r\n".to_vec();
    let reply = exchange(bad_chunk).await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_per_data_dir_and_hsts_while_https_is_forced() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let served = serve(&app, echo_backend().await, &[]).await;
    let node = &served.nodes[0];
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_certdrop"))
        .args([
            "edge",
            "--control-plane",
            &app.address,
            "--enroll-token",
            "spent",
            "--listen",
        ])
        .arg(node.tls.to_string())
        .arg("--data-dir")
        .arg(node.data_dir.path())
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another certdrop edge is running"), "{err}");

    let client = https_client("www.example.com", node.tls, &served.root_pem, false);
    let url = format!("https://www.example.com:{}/", node.tls.port());
    let resp = client.get(&url).send().await.unwrap();
    assert!(
        resp.headers().get("strict-transport-security").is_none(),
        "no HSTS until HTTPS is forced"
    );
    let resp = served
        .ann
        .patch_json(
            "/api/v1/apps/shop",
            json!({"force_https": true, "hsts_max_age": 600}),
        )
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    assert_eq!(resp.json["hsts_max_age"], 600);
    let bad = served
        .ann
        .patch_json("/api/v1/apps/shop", json!({"hsts_max_age": -5}))
        .await;
    assert_eq!(bad.code(), "invalid_hsts_max_age");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = client.get(&url).send().await.unwrap();
        if let Some(v) = resp.headers().get("strict-transport-security") {
            assert_eq!(v, "max-age=600");
            break;
        }
        assert!(Instant::now() < deadline, "HSTS never came");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn backends_on_loopback_or_metadata_are_refused(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |c| c.allow_private_backends = false).await else {
        return;
    };
    let ann = app.api_user("ann@example.com", Role::Customer).await;
    for (i, bad) in [
        "http://127.0.0.1:5432",
        "http://[::1]:80",
        "http://169.254.169.254/latest",
        "http://0:80",
        "http://2130706433:80",
        "http://localhost:8080",
    ]
    .iter()
    .enumerate()
    {
        let resp = ann
            .post(
                "/api/v1/apps",
                json!({"name": format!("app-{i}"), "backend_url": bad}),
            )
            .await;
        assert_eq!(
            resp.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {}",
            resp.body
        );
        assert_eq!(resp.code(), "backend_not_allowed", "{bad}");
    }
    let resp = ann
        .post(
            "/api/v1/apps",
            json!({"name": "private", "backend_url": "http://10.0.0.5:8000"}),
        )
        .await;
    assert_eq!(
        resp.status,
        StatusCode::CREATED,
        "a private-network backend is fine: {}",
        resp.body
    );
    let resp = ann
        .patch_json(
            "/api/v1/apps/private",
            json!({"backend_url": "http://127.0.0.1:22"}),
        )
        .await;
    assert_eq!(resp.code(), "backend_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_on_loopback_or_metadata_are_refused_on_sqlite() {
    backends_on_loopback_or_metadata_are_refused(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_on_loopback_or_metadata_are_refused_on_postgres() {
    backends_on_loopback_or_metadata_are_refused(Backend::Postgres).await;
}
