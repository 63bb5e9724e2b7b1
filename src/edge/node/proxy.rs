//! The node's listeners: TLS (SNI picks the site, ALPN offers h2 and http/1.1) and optional
//! plain HTTP (a redirect to https when the app forces it, else a proxy), both proxying to the
//! app's backend with X-Forwarded-For, -Proto and -Port.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode, Uri, Version,
    body::{Frame, Incoming, SizeHint},
    header::{self, HeaderValue},
    service::service_fn,
};
use hyper_util::{
    client::legacy::{
        Client,
        connect::{HttpConnector, dns::Name},
    },
    rt::{TokioExecutor, TokioIo},
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{
    Node,
    limits::{Activity, Slot, Tracked, Watched, serve_watched},
    resumption::Ticketer,
    sites::{Resolver, Site},
};
use crate::edge::backend;

type Body = BoxBody<Bytes, hyper::Error>;
type Upstream = Client<hyper_rustls::HttpsConnector<HttpConnector<PolicyResolver>>, Inbound>;

/// Request headers a client may send, in all (nginx answers 400 past its 4 × 8 KB buffers).
const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Resolves backend hosts, keeping only the addresses `edge::backend` allows.
#[derive(Clone)]
struct PolicyResolver {
    allow_private: Arc<AtomicBool>,
}

impl tower::Service<Name> for PolicyResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private.load(Ordering::Relaxed);
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|a| backend::refusal(a.ip(), allow_private).is_none())
                .collect();
            if found.is_empty() {
                return Err(std::io::Error::other(format!(
                    "{} resolves to no address a backend may have",
                    name.as_str()
                )));
            }
            Ok(found.into_iter())
        })
    }
}

fn upstream(node: &Node) -> Upstream {
    let mut http = HttpConnector::new_with_resolver(PolicyResolver {
        allow_private: node.allow_private_backends.clone(),
    });
    http.enforce_http(false);
    http.set_connect_timeout(Some(node.limits.backend_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(https)
}

/// A client's request body on its way to the backend; notes whether reading it failed (a
/// malformed chunk), so the client hears 400 for its own mistake rather than 502.
struct Inbound {
    inner: Incoming,
    failed: Arc<AtomicBool>,
}

impl hyper::body::Body for Inbound {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(Some(Err(_)))) {
            self.failed.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// How many certdrop edges a request may pass through (a backend that is itself an app
/// behind certdrop is fine; a chain longer than this is a loop).
const MAX_HOPS: usize = 4;

/// Forwards one request to the site's backend.
async fn forward(
    mut req: Request<Incoming>,
    site: Arc<Site>,
    peer: SocketAddr,
    proto: &'static str,
    port: u16,
    node: Arc<Node>,
    client: Upstream,
) -> Result<Response<Body>, Infallible> {
    if req.headers().get_all(header::HOST).iter().count() > 1 {
        return Ok(text(
            StatusCode::BAD_REQUEST,
            "certdrop edge: a request has one Host header\n",
        ));
    }
    // Via marks each certdrop hop: this node's own mark coming back, or too many hops, is a loop.
    let hops: Vec<&str> = req
        .headers()
        .get_all(header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|h| h.contains("certdrop-edge-"))
        .collect();
    if hops.len() >= MAX_HOPS || hops.iter().any(|h| h.ends_with(&node.hop)) {
        tracing::warn!(app = %site.app, "edge: a request came back to this node; the backend points at an edge");
        return Ok(text(
            StatusCode::LOOP_DETECTED,
            "certdrop edge: this request looped back to the edge; the app's backend must not point at its edge servers\n",
        ));
    }
    if let Some(why) = &site.backend_refusal {
        tracing::warn!(app = %site.app, reason = %why, "edge: the backend address is not allowed");
        return Ok(text(
            StatusCode::BAD_GATEWAY,
            "certdrop edge: the app's backend address is not allowed\n",
        ));
    }
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("{}{path}", site.backend).parse::<Uri>() else {
        return Ok(text(
            StatusCode::BAD_REQUEST,
            "certdrop edge: bad request path\n",
        ));
    };
    // HTTP/2 carries the host in :authority; HTTP/1.1 to the backend needs a Host header.
    let host = req.headers().get(header::HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let headers = req.headers_mut();
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    headers.insert("x-forwarded-port", HeaderValue::from(port));
    if let Ok(v) = HeaderValue::from_str(&format!("1.1 {}", node.hop)) {
        headers.append(header::VIA, v);
    }
    if let Some(host) = host {
        headers.insert(header::HOST, host);
    }
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    let failed = Arc::new(AtomicBool::new(false));
    let req = req.map(|inner| Inbound {
        inner,
        failed: failed.clone(),
    });
    let timeout = node.limits.backend_timeout;
    let sent = std::time::Instant::now();
    match tokio::time::timeout(timeout, client.request(req)).await {
        Ok(Ok(resp)) => {
            node.metrics.upstream(sent.elapsed().as_secs_f64());
            let mut resp = resp.map(|b| b.boxed());
            for name in HOP_BY_HOP {
                resp.headers_mut().remove(name);
            }
            if proto == "https"
                && site.force_https
                && site.hsts_max_age > 0
                && let Ok(v) = HeaderValue::from_str(&format!("max-age={}", site.hsts_max_age))
            {
                resp.headers_mut()
                    .insert(header::STRICT_TRANSPORT_SECURITY, v);
            }
            Ok(resp)
        }
        Ok(Err(_)) if failed.load(Ordering::Relaxed) => Ok(text(
            StatusCode::BAD_REQUEST,
            "certdrop edge: the request body is malformed\n",
        )),
        Ok(Err(err)) => {
            tracing::warn!(app = %site.app, error = %err, "edge: the backend did not answer");
            Ok(text(
                StatusCode::BAD_GATEWAY,
                "certdrop edge: the app's backend did not answer\n",
            ))
        }
        Err(_) => {
            tracing::warn!(app = %site.app, timeout_s = timeout.as_secs(), "edge: the backend timed out");
            Ok(text(
                StatusCode::GATEWAY_TIMEOUT,
                "certdrop edge: the app's backend did not answer in time\n",
            ))
        }
    }
}

/// Takes a connection slot, or sheds the connection (saying so at most once a second).
fn admit(node: &Node) -> Option<Slot> {
    match node.connections.take() {
        Some(slot) => Some(slot),
        None => {
            let now = node.started.elapsed().as_secs();
            if node.last_shed_log.swap(now, Ordering::Relaxed) != now {
                tracing::warn!(
                    max_connections = node.limits.max_connections,
                    "edge: at --max-connections; closing new connections until some end"
                );
            }
            None
        }
    }
}

/// A listening socket with SO_REUSEPORT, so several workers can accept on the same port.
pub fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(1024)?;
    listener.into_std()
}

/// Stateful sessions kept for TLS 1.2 clients that do not take tickets (tickets need no room).
const SESSION_CACHE_ENTRIES: usize = 4096;

/// The node's TLS configuration: certificates by SNI, tickets sealed with the pair's keys.
pub fn tls_acceptor(node: &Arc<Node>) -> TlsAcceptor {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("TLS 1.2 and 1.3 are supported")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(node.clone())));
    // `acme-tls/1` last: only a CA validating tls-alpn-01 offers it (and nothing else).
    config.alpn_protocols = vec![
        b"h2".to_vec(),
        b"http/1.1".to_vec(),
        super::sites::ACME_TLS_ALPN.to_vec(),
    ];
    config.ticketer = Arc::new(Ticketer(node.clone()));
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    TlsAcceptor::from(Arc::new(config))
}

pub async fn serve_tls(listener: TcpListener, node: Arc<Node>, acceptor: TlsAcceptor) {
    let client = upstream(&node);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "edge: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(permit) = admit(&node) else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, node, client) = (acceptor.clone(), node.clone(), client.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let handshake = node.limits.header_timeout.min(Duration::from_secs(10));
            let tls = match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => return node.metrics.handshake_failed(&err),
                Err(_) => return,
            };
            node.metrics.handshake(tls.get_ref().1.handshake_kind());
            // The CA's tls-alpn-01 check ends with the handshake (RFC 8737).
            if tls.get_ref().1.alpn_protocol() == Some(super::sites::ACME_TLS_ALPN) {
                return;
            }
            let site = node.sites.load().for_sni(tls.get_ref().1.server_name());
            let Some(site) = site else { return };
            // ALPN already said which protocol: no need to sniff the first bytes.
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let activity = Activity::new();
            let io = TokioIo::new(Watched::new(tls, activity.clone()));
            let limits = node.limits;
            let service = {
                let activity = activity.clone();
                service_fn(move |req| {
                    let guard = activity.request_started();
                    let reply = forward(
                        req,
                        site.clone(),
                        peer,
                        "https",
                        node.tls_port,
                        node.clone(),
                        client.clone(),
                    );
                    let metrics = node.metrics.clone();
                    async move {
                        let resp = reply.await?;
                        metrics.response(resp.status().as_u16());
                        Ok::<_, Infallible>(resp.map(|b| Tracked::new(b, guard)))
                    }
                })
            };
            if h2 {
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_header_list_size(MAX_HEADER_BYTES as u32)
                    .serve_connection(io, service);
                serve_watched(conn, activity, limits, |c| c.graceful_shutdown()).await;
            } else {
                let conn = hyper::server::conn::http1::Builder::new()
                    .max_header_size(MAX_HEADER_BYTES)
                    .serve_connection(io, service);
                serve_watched(conn, activity, limits, |c| c.graceful_shutdown()).await;
            }
        });
    }
}

pub async fn serve_http(listener: TcpListener, node: Arc<Node>) {
    let client = upstream(&node);
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(80);
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some(permit) = admit(&node) else {
            continue;
        };
        let (node, client) = (node.clone(), client.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let activity = Activity::new();
            let limits = node.limits;
            let service = {
                let activity = activity.clone();
                service_fn(move |req: Request<Incoming>| {
                    let guard = activity.request_started();
                    let (node, client) = (node.clone(), client.clone());
                    async move {
                        let metrics = node.metrics.clone();
                        let resp = plain(req, peer, port, node, client).await?;
                        metrics.response(resp.status().as_u16());
                        Ok::<_, Infallible>(resp.map(|b| Tracked::new(b, guard)))
                    }
                })
            };
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http1().max_buf_size(MAX_HEADER_BYTES);
            builder
                .http2()
                .max_header_list_size(MAX_HEADER_BYTES as u32);
            let conn = builder
                .serve_connection(TokioIo::new(Watched::new(tcp, activity.clone())), service);
            serve_watched(conn, activity, limits, |c| c.graceful_shutdown()).await;
        });
    }
}

/// Plain HTTP: an ACME http-01 answer, a redirect to https when the app forces it, else the
/// proxy.
async fn plain(
    req: Request<Incoming>,
    peer: SocketAddr,
    port: u16,
    node: Arc<Node>,
    client: Upstream,
) -> Result<Response<Body>, Infallible> {
    // Answered before any redirect: the CA validates over plain HTTP. A token this node does
    // not hold goes on to the app (which may run its own ACME client).
    if let Some(token) = req
        .uri()
        .path()
        .strip_prefix("/.well-known/acme-challenge/")
        && let Some(answer) = node.sites.load().http_challenge(token)
    {
        return Ok(text(StatusCode::OK, answer.to_string()));
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name).to_string())
        .unwrap_or_default();
    let Some(site) = node.sites.load().lookup(&host) else {
        return Ok(text(
            StatusCode::NOT_FOUND,
            "certdrop edge: no site for this host\n",
        ));
    };
    if site.force_https {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let target = if node.tls_port == 443 {
            format!("https://{host}{path}")
        } else {
            format!("https://{host}:{}{path}", node.tls_port)
        };
        let mut resp = text(StatusCode::MOVED_PERMANENTLY, "Moved to https\n");
        if let Ok(v) = HeaderValue::from_str(&target) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        return Ok(resp);
    }
    forward(req, site, peer, "http", port, node, client).await
}
