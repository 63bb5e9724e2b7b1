//! Edge pairs: staff create them, two `certdrop edge` nodes enroll into each, an admin who did
//! not create the pair confirms each node (or the fleet key vouches for it), approval of a
//! provision ticket dedicates a free pair to an app, and the deploy worker seals keys to the
//! confirmed nodes only, rolls them out and verifies them by a real TLS handshake.
//! `node/` is the edge node itself.

pub mod backend;
pub mod custody;
pub mod deploy;
pub mod fleet;
pub mod node;
pub mod ocsp;
pub mod routes;
pub mod session_keys;
pub mod stapling;
pub mod store;
pub mod verify;
pub mod versions;

use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A node's age recipient as people compare it, like an ssh host key: `SHA256:` and the
/// unpadded base64 of the SHA-256 of the recipient's text.
pub fn recipient_fingerprint(recipient: &str) -> String {
    format!(
        "SHA256:{}",
        STANDARD_NO_PAD.encode(Sha256::digest(recipient.trim().as_bytes()))
    )
}

/// Where a node stands: a node holds keys only while `Confirmed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// An enrollment token was issued; no machine has used it yet.
    Awaiting,
    /// A machine enrolled with its recipient; inert until confirmed.
    Enrolled,
    Confirmed,
    /// Stolen or retired: it gets nothing more.
    Revoked,
}

impl NodeState {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "awaiting" => Some(Self::Awaiting),
            "enrolled" => Some(Self::Enrolled),
            "confirmed" => Some(Self::Confirmed),
            "revoked" => Some(Self::Revoked),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Awaiting => "awaiting",
            Self::Enrolled => "enrolled",
            Self::Confirmed => "confirmed",
            Self::Revoked => "revoked",
        }
    }
}

/// What one node must serve: everything it needs, with the key sealed to its own recipient.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeConfig {
    pub version: i64,
    pub pair: String,
    pub sites: Vec<Site>,
    /// Whether backends may be on loopback or link-local addresses
    /// (`CERTDROP_ALLOW_PRIVATE_BACKENDS`); the node enforces it on every connection.
    #[serde(default)]
    pub allow_private_backends: bool,
    /// The pair's TLS session ticket keys, newest first, each sealed to both of its nodes.
    #[serde(default)]
    pub session_ticket_keys: Vec<String>,
    /// ACME challenges the pair answers while a CA validates one of its app's orders.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub challenges: Vec<Challenge>,
}

/// One ACME challenge: `http-01` is answered on the plain-HTTP listener at
/// `/.well-known/acme-challenge/{token}`, `tls-alpn-01` by a handshake offering `acme-tls/1`
/// for `hostname`. The key authorization is public by design (the CA fetches it in the clear).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Challenge {
    pub kind: String,
    pub hostname: String,
    pub token: String,
    pub key_authorization: String,
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
    /// `Strict-Transport-Security: max-age` sent over TLS while `force_https` is on (0: none).
    #[serde(default)]
    pub hsts_max_age: i64,
    /// A checked OCSP response for the leaf (base64 DER), stapled until `ocsp_next_update`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ocsp_staple: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ocsp_next_update: Option<i64>,
}

/// Enrollment request of a node.
#[derive(Debug, Serialize, Deserialize)]
pub struct Enrollment {
    pub enroll_token: String,
    pub recipient: String,
    pub address: String,
    pub http_address: Option<String>,
    /// The fleet key's signature over `recipient`, where the operator uses one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Enrolled {
    pub node_id: i64,
    pub node_token: String,
    pub pair: String,
    /// `enrolled` (an admin must confirm it) or `confirmed` (the fleet key vouched for it).
    #[serde(default)]
    pub state: String,
}
