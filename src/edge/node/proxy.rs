//! The node's listeners: TLS (SNI picks the site, ALPN offers h2 and http/1.1) and optional
//! plain HTTP (a redirect to https when the app forces it, else a proxy), both proxying to the
//! app's backend with X-Forwarded-For, -Proto and -Port.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode, Uri, Version,
    body::Incoming,
    header::{self, HeaderValue},
    service::service_fn,
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{Node, sites::Resolver, sites::Site};

type Body = BoxBody<Bytes, hyper::Error>;
type Upstream = Client<hyper_rustls::HttpsConnector<HttpConnector>, Incoming>;

fn upstream() -> Upstream {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(https)
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
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

/// Forwards one request to the site's backend.
async fn forward(
    mut req: Request<Incoming>,
    site: Arc<Site>,
    peer: SocketAddr,
    proto: &'static str,
    port: u16,
    client: Upstream,
) -> Result<Response<Body>, Infallible> {
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
    if let Some(host) = host {
        headers.insert(header::HOST, host);
    }
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    match client.request(req).await {
        Ok(resp) => {
            let mut resp = resp.map(|b| b.boxed());
            for name in HOP_BY_HOP {
                resp.headers_mut().remove(name);
            }
            Ok(resp)
        }
        Err(err) => {
            tracing::warn!(app = %site.app, error = %err, "edge: the backend did not answer");
            Ok(text(
                StatusCode::BAD_GATEWAY,
                "certdrop edge: the app's backend did not answer\n",
            ))
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

pub async fn serve_tls(listener: TcpListener, node: Arc<Node>) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("TLS 1.2 and 1.3 are supported")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(node.clone())));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let client = upstream();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "edge: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, node, client) = (acceptor.clone(), node.clone(), client.clone());
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let site = node.sites.load().for_sni(tls.get_ref().1.server_name());
            let Some(site) = site else { return };
            let port = node.tls_port;
            let service = service_fn(move |req| {
                forward(req, site.clone(), peer, "https", port, client.clone())
            });
            // ALPN already said which protocol: no need to sniff the first bytes.
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let io = TokioIo::new(tls);
            let _ = if h2 {
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service)
                    .await
            } else {
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await
            };
        });
    }
}

pub async fn serve_http(listener: TcpListener, node: Arc<Node>) {
    let client = upstream();
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(80);
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (node, client) = (node.clone(), client.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let (node, client) = (node.clone(), client.clone());
                async move {
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
                    forward(req, site, peer, "http", port, client).await
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}
