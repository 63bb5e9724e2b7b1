//! The edge node's metrics, on `--metrics-listen` in the Prometheus text format: connections
//! open, handshakes (full or resumed), the fatal alert each failed handshake ends with, the
//! backends' latency and responses by status class. Every handle is registered once at start,
//! so counting on the request path is an atomic add.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, header, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use rustls::HandshakeKind;

use super::limits::ConnectionSlots;

const METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// Seconds to a backend's response head.
const UPSTREAM_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

/// The alerts a failed handshake can end with, as rustls chooses them.
const ALERTS: [&str; 8] = [
    "access_denied",
    "decode_error",
    "decrypt_error",
    "handshake_failure",
    "illegal_parameter",
    "no_application_protocol",
    "protocol_version",
    "unexpected_message",
];

pub struct EdgeMetrics {
    recorder: PrometheusRecorder,
    open: Gauge,
    full: Counter,
    resumed: Counter,
    alerts: Vec<Counter>,
    other_alert: Counter,
    upstream: Histogram,
    /// 1xx to 5xx.
    classes: [Counter; 5],
}

impl EdgeMetrics {
    pub fn new() -> Arc<Self> {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&UPSTREAM_BUCKETS)
            .expect("fixed buckets are valid")
            .build_recorder();
        let counter = |name: &'static str, labels: Vec<Label>| {
            recorder.register_counter(&Key::from_parts(name, labels), &METADATA)
        };
        recorder.describe_gauge(
            "certdrop_edge_connections_open".into(),
            None,
            "Client connections open now (TLS and plain HTTP).".into(),
        );
        recorder.describe_counter(
            "certdrop_edge_tls_handshakes_total".into(),
            None,
            "TLS handshakes completed, full or resumed (a ticket or a session id).".into(),
        );
        recorder.describe_counter(
            "certdrop_edge_tls_alerts_sent_total".into(),
            None,
            "Handshakes that failed, by the fatal alert rustls sends for the failure.".into(),
        );
        recorder.describe_histogram(
            "certdrop_edge_upstream_duration_seconds".into(),
            Some(Unit::Seconds),
            "Time from forwarding a request to the backend's response head.".into(),
        );
        recorder.describe_counter(
            "certdrop_edge_responses_total".into(),
            None,
            "Responses to clients, by status class (the node's own errors included).".into(),
        );
        let kind = |k: &'static str| {
            counter(
                "certdrop_edge_tls_handshakes_total",
                vec![Label::new("kind", k)],
            )
        };
        let alert = |a: &'static str| {
            counter(
                "certdrop_edge_tls_alerts_sent_total",
                vec![Label::new("alert", a)],
            )
        };
        let class = |c: &'static str| {
            counter(
                "certdrop_edge_responses_total",
                vec![Label::new("class", c)],
            )
        };
        Arc::new(Self {
            open: recorder
                .register_gauge(&Key::from_name("certdrop_edge_connections_open"), &METADATA),
            full: kind("full"),
            resumed: kind("resumed"),
            alerts: ALERTS.iter().map(|a| alert(a)).collect(),
            other_alert: alert("internal_error"),
            upstream: recorder.register_histogram(
                &Key::from_name("certdrop_edge_upstream_duration_seconds"),
                &METADATA,
            ),
            classes: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            recorder,
        })
    }

    pub fn handshake(&self, kind: Option<HandshakeKind>) {
        match kind {
            Some(HandshakeKind::Resumed) => self.resumed.increment(1),
            _ => self.full.increment(1),
        }
    }

    /// A handshake that failed with `err` (a client that hung up or timed out gets no alert).
    pub fn handshake_failed(&self, err: &std::io::Error) {
        let Some(tls) = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        else {
            return;
        };
        let alert = match tls {
            rustls::Error::AlertReceived(_) => return,
            rustls::Error::InvalidMessage(_) => "decode_error",
            rustls::Error::DecryptError => "decrypt_error",
            rustls::Error::PeerMisbehaved(_) => "illegal_parameter",
            rustls::Error::NoApplicationProtocol => "no_application_protocol",
            rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. } => "unexpected_message",
            rustls::Error::PeerIncompatible(why) if format!("{why:?}").contains("Version") => {
                "protocol_version"
            }
            rustls::Error::PeerIncompatible(_) => "handshake_failure",
            // No certificate for the name the client asked for.
            rustls::Error::General(_) => "access_denied",
            _ => "",
        };
        match ALERTS.iter().position(|a| *a == alert) {
            Some(i) => self.alerts[i].increment(1),
            None => self.other_alert.increment(1),
        }
    }

    pub fn upstream(&self, seconds: f64) {
        self.upstream.record(seconds);
    }

    pub fn response(&self, status: u16) {
        if let Some(counter) = self.classes.get(usize::from(status / 100).wrapping_sub(1)) {
            counter.increment(1);
        }
    }

    fn render(&self, connections: &ConnectionSlots) -> String {
        self.open.set(connections.open() as f64);
        self.recorder.handle().render()
    }
}

/// Serves `/metrics` on `addr` (any path answers the same).
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<EdgeMetrics>,
    connections: Arc<ConnectionSlots>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let (metrics, connections) = (metrics.clone(), connections.clone());
        tokio::spawn(async move {
            let service = service_fn(move |_: Request<Incoming>| {
                let text = metrics.render(&connections);
                async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header(
                                header::CONTENT_TYPE,
                                "text/plain; version=0.0.4; charset=utf-8",
                            )
                            .body(Full::new(bytes::Bytes::from(text)))
                            .expect("a valid response"),
                    )
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// Binds `--metrics-listen`.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (--metrics-listen)"))
}
