//! Edge pairs: staff create them, two `certdrop edge` nodes enroll into each, approval of a
//! provision ticket dedicates a free pair to an app, and the deploy worker rolls certificates
//! out to the pair and verifies them by a real TLS handshake. `node/` is the edge node itself.

pub mod deploy;
pub mod node;
pub mod routes;
pub mod store;
pub mod verify;

use serde::{Deserialize, Serialize};

/// What one node must serve: everything it needs, with the key sealed to its own recipient.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeConfig {
    pub version: i64,
    pub pair: String,
    pub sites: Vec<Site>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Site {
    pub app: String,
    /// The app's domains the certificate covers (wildcards included).
    pub hostnames: Vec<String>,
    /// Leaf first, then the served chain.
    pub chain_pem: String,
    /// The private key, sealed with age to this node's recipient only.
    pub sealed_key: String,
    pub backend_url: String,
    pub force_https: bool,
}

/// Enrollment request of a node.
#[derive(Debug, Serialize, Deserialize)]
pub struct Enrollment {
    pub enroll_token: String,
    pub recipient: String,
    pub address: String,
    pub http_address: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Enrolled {
    pub node_id: i64,
    pub node_token: String,
    pub pair: String,
}
