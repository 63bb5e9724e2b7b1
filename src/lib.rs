//! certdrop: takes a customer's TLS key, certificate and chain safely to a pair of edge servers.
//! See README.md for the architecture and PRODUCT.md for the public surface.

/// Users, roles, passwords, sessions, CSRF, login rate limits and API tokens.
pub mod accounts;
/// Automatic certificates over ACME: account, orders, challenges, renewal and fallback.
pub mod acme;
/// Apps: a name, an owner and the backend their traffic reaches.
pub mod apps;
/// The append-only audit trail.
pub mod audit;
/// `certdrop backup`: the database and the vault identity, copied consistently.
pub mod backup;
/// Billing events, statements and exports.
pub mod billing;
/// Certificate intake: PEM, X.509 inspection, chain building, trust, the report and its codes.
pub mod certs;
/// The clap command tree: server verbs and client verbs.
pub mod cli;
/// The HTTP client behind the CLI's client verbs.
pub mod client;
/// One typed `Config`, from the environment.
pub mod config;
/// Pool, migrations, pagination.
pub mod db;
/// The little DER certdrop writes and reads by hand.
pub mod der;
/// Custom domains: claims, ownership proof (TXT), DNS targets and status, and who may serve a name.
pub mod domains;
/// Edge pairs, the deploy worker, handshake verification, session ticket keys, OCSP stapling,
/// and the edge node itself.
pub mod edge;
/// `AppError`: what users see versus what is logged.
pub mod error;
/// Entry points for the fuzzers and the replay of their corpus.
pub mod fuzz_entry;
/// The durable mail outbox, its sender and the expiry reminders.
pub mod mail;
/// Metrics in the Prometheus text format: this process's counters and the shared state.
pub mod metrics;
/// Router assembly, serving, workers and shutdown.
pub mod startup;
/// `AppState`: what every handler and worker can reach.
pub mod state;
/// Provisioning tickets: the state machine, the staff queue, comments.
pub mod tickets;
/// The sealed vault: the only road from a plaintext key to storage.
pub mod vault;
/// Layout context, rendering, security headers, the Origin check.
pub mod web;
/// Webhooks: endpoints, signed deliveries through a durable outbox, and their log.
pub mod webhooks;
