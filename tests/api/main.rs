//! Integration tests: the real server on port 0, each test on SQLite and on PostgreSQL.

mod common;

mod account_life;
mod accounts;
mod acme;
mod apps;
mod attacks;
mod backup;
mod billing;
mod browser;
mod certs;
mod cli;
mod cluster;
mod csr;
mod custody;
mod dns_server;
mod domains;
mod edge;
mod edge_limits;
mod edge_support;
mod edge_tls;
mod fuzz_corpus;
mod hardening;
mod health;
mod keyscan;
mod mail;
mod metrics;
mod pebble;
mod pki;
mod smtp;
mod systemd;
mod tickets;
mod vault;
mod vault_seal;
mod webhooks;
