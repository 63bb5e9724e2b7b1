//! Metrics in the Prometheus text format (rendered by `metrics-exporter-prometheus`): what this
//! process counted (requests by route and status, deployments' durations), and, at each scrape,
//! what the shared database says for every instance (tickets by state, the mail backlog, each
//! served certificate's expiry, each edge node's last contact). Served at `/metrics` to an
//! admin's token, or to anyone who reaches `CERTDROP_METRICS_LISTEN` (a private address).
//! Labels never carry a secret, a query string or a customer's email.

pub mod routes;

use ::metrics::{Key, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

use crate::{db::Db, error::AppResult};

/// Seconds; a deployment takes about 0.2 s on a LAN and fails after the apply timeout (60 s).
const DURATION_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

const METADATA: Metadata<'static> =
    Metadata::new(module_path!(), ::metrics::Level::INFO, Some(module_path!()));

/// This process's counters and histograms.
pub struct Metrics {
    recorder: PrometheusRecorder,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&DURATION_BUCKETS)
            .expect("fixed buckets are valid")
            .build_recorder();
        recorder.describe_counter(
            "certdrop_http_requests_total".into(),
            None,
            "HTTP requests answered, by route template, method and status.".into(),
        );
        recorder.describe_histogram(
            "certdrop_http_request_duration_seconds".into(),
            Some(Unit::Seconds),
            "Time to answer HTTP requests, by route template.".into(),
        );
        recorder.describe_histogram(
            "certdrop_deployment_duration_seconds".into(),
            Some(Unit::Seconds),
            "From approval to deployed or failed, by ticket kind and outcome.".into(),
        );
        Self { recorder }
    }

    /// One answered request. `route` is the matched route template (`/apps/{app}`), never the
    /// path itself, so that the series stay few.
    pub fn request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let labels = [
            Label::new("route", route.to_string()),
            Label::new("method", method.to_string()),
            Label::new("status", status.to_string()),
        ];
        self.recorder
            .register_counter(
                &Key::from_parts("certdrop_http_requests_total", labels.to_vec()),
                &METADATA,
            )
            .increment(1);
        self.recorder
            .register_histogram(
                &Key::from_parts(
                    "certdrop_http_request_duration_seconds",
                    vec![Label::new("route", route.to_string())],
                ),
                &METADATA,
            )
            .record(seconds);
    }

    /// A deployment that ended (`outcome`: deployed or failed) after `seconds`.
    pub fn deployment(&self, kind: &str, outcome: &str, seconds: f64) {
        let labels = vec![
            Label::new("kind", kind.to_string()),
            Label::new("outcome", outcome.to_string()),
        ];
        self.recorder
            .register_histogram(
                &Key::from_parts("certdrop_deployment_duration_seconds", labels),
                &METADATA,
            )
            .record(seconds);
    }

    /// Everything, as a scrape reads it: this process's metrics, then the database's now.
    pub async fn render(&self, db: &Db) -> AppResult<String> {
        let mut text = self.recorder.handle().render();
        text.push_str(&shared_state(db).await?);
        Ok(text)
    }
}

/// The state every instance shares, read from the database at scrape time into a recorder of
/// its own (so a certificate no longer served, or a node removed, leaves no stale series).
async fn shared_state(db: &Db) -> AppResult<String> {
    let recorder = PrometheusBuilder::new().build_recorder();
    let gauge = |name: &'static str, help: &'static str, unit: Option<Unit>| {
        recorder.describe_gauge(name.into(), unit, help.into());
    };
    let set = |name: &'static str, labels: Vec<Label>, value: f64| {
        recorder
            .register_gauge(&Key::from_parts(name, labels), &METADATA)
            .set(value);
    };
    let now = crate::db::now();

    gauge("certdrop_tickets", "Tickets, by state.", None);
    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, COUNT(*) FROM tickets GROUP BY state")
            .fetch_all(db)
            .await?;
    for state in [
        "open",
        "approved",
        "deploying",
        "deployed",
        "failed",
        "rejected",
        "cancelled",
    ] {
        let n = counts
            .iter()
            .find(|(s, _)| s == state)
            .map_or(0, |(_, n)| *n);
        set(
            "certdrop_tickets",
            vec![Label::new("state", state)],
            n as f64,
        );
    }

    gauge(
        "certdrop_mail_outbox_pending",
        "Mails queued and not yet accepted by the SMTP server.",
        None,
    );
    gauge(
        "certdrop_mail_outbox_oldest_age_seconds",
        "Age of the oldest mail not yet sent (0 when none waits).",
        Some(Unit::Seconds),
    );
    let (pending, oldest): (i64, Option<i64>) =
        sqlx::query_as("SELECT COUNT(*), MIN(created_at) FROM mail_outbox WHERE state <> 'sent'")
            .fetch_one(db)
            .await?;
    set("certdrop_mail_outbox_pending", Vec::new(), pending as f64);
    set(
        "certdrop_mail_outbox_oldest_age_seconds",
        Vec::new(),
        oldest.map_or(0, |at| (now - at).max(0)) as f64,
    );

    // cert-manager's `certmanager_certificate_expiration_timestamp_seconds`, which people
    // already alert on (`… - time() < 14 * 86400`).
    gauge(
        "certdrop_certificate_expiration_timestamp_seconds",
        "When each served certificate expires (unix seconds), by app and edge pair.",
        Some(Unit::Seconds),
    );
    gauge(
        "certdrop_certificate_renewal_timestamp_seconds",
        "When certdrop renews each served ACME certificate (unix seconds), by app and edge pair.",
        Some(Unit::Seconds),
    );
    let served: Vec<(String, String, i64, i64, Option<i64>)> = sqlx::query_as(
        "SELECT a.name, p.name, c.id, c.not_after, c.renews_at FROM edge_pairs p \
         JOIN apps a ON a.id = p.app_id JOIN certificates c ON c.id = p.certificate_id",
    )
    .fetch_all(db)
    .await?;
    for (app, pair, id, not_after, renews_at) in served {
        let labels = vec![
            Label::new("app", app),
            Label::new("pair", pair),
            Label::new("certificate_id", id.to_string()),
        ];
        if let Some(at) = renews_at {
            set(
                "certdrop_certificate_renewal_timestamp_seconds",
                labels.clone(),
                at as f64,
            );
        }
        set(
            "certdrop_certificate_expiration_timestamp_seconds",
            labels,
            not_after as f64,
        );
    }

    gauge(
        "certdrop_edge_node_last_seen_age_seconds",
        "Seconds since each enrolled edge node last polled the control plane (a poll lasts at most 25 s).",
        Some(Unit::Seconds),
    );
    let nodes: Vec<(String, i64, i64, String)> = sqlx::query_as(
        "SELECT p.name, n.slot, n.last_seen_at, n.state FROM edge_nodes n \
         JOIN edge_pairs p ON p.id = n.pair_id WHERE n.last_seen_at IS NOT NULL AND n.state <> 'revoked'",
    )
    .fetch_all(db)
    .await?;
    for (pair, slot, seen, state) in nodes {
        set(
            "certdrop_edge_node_last_seen_age_seconds",
            vec![
                Label::new("node", format!("{pair}-{slot}")),
                Label::new("state", state),
            ],
            (now - seen).max(0) as f64,
        );
    }
    Ok(recorder.handle().render())
}
