//! What certdrop reads from an X.509 certificate: names, validity, key type, signature
//! algorithm, key identifiers and the SHA-256 fingerprint of its DER.

use sha2::{Digest, Sha256};
use x509_parser::{
    extensions::{GeneralName, ParsedExtension},
    oid_registry::{self, Oid},
    prelude::{FromDer, X509Certificate},
    public_key::PublicKey,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyType {
    Rsa(usize),
    EcP256,
    EcP384,
    /// Another curve, named by its OID.
    Ec(String),
    Ed25519,
    Other(String),
}

impl KeyType {
    /// `rsa-2048`, `ecdsa-p256`, `ecdsa-p384`, `ed25519`, …
    pub fn label(&self) -> String {
        match self {
            Self::Rsa(bits) => format!("rsa-{bits}"),
            Self::EcP256 => "ecdsa-p256".into(),
            Self::EcP384 => "ecdsa-p384".into(),
            Self::Ec(curve) => format!("ecdsa-{}", curve_name(curve)),
            Self::Ed25519 => "ed25519".into(),
            Self::Other(oid) => format!("unknown-{oid}"),
        }
    }

    /// Why this key is too weak to serve, if it is.
    pub fn weakness(&self) -> Option<String> {
        match self {
            Self::Rsa(bits) if *bits < 2048 => Some(format!(
                "The certificate's RSA key has {bits} bits; browsers require at least 2048. \
                 Generate a new key and have the certificate reissued: `openssl req -new -newkey rsa:2048 -nodes -keyout key.pem -out request.csr`"
            )),
            Self::Ec(curve) => Some(format!(
                "The certificate uses the elliptic curve {}, which browsers do not accept for TLS certificates. \
                 Use P-256 or P-384: `openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout key.pem -out request.csr`",
                curve_name(curve)
            )),
            Self::Other(oid) => Some(format!(
                "The certificate's key algorithm ({oid}) is not supported; use RSA (2048 bits or more), ECDSA P-256/P-384 or Ed25519."
            )),
            _ => None,
        }
    }
}

fn curve_name(oid: &str) -> &str {
    match oid {
        "1.3.132.0.35" => "p521",
        "1.3.132.0.10" => "secp256k1",
        other => other,
    }
}

/// The facts of one parsed certificate.
#[derive(Clone, Debug)]
pub struct CertInfo {
    pub der: Vec<u8>,
    pub subject: String,
    pub issuer: String,
    pub subject_raw: Vec<u8>,
    pub issuer_raw: Vec<u8>,
    pub common_name: String,
    /// DNS names of the subjectAltName extension (lower-cased).
    pub sans: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
    pub fingerprint: String,
    /// The subjectPublicKey bits, compared with a private key's public half.
    pub public_key: Vec<u8>,
    pub key_type: KeyType,
    pub signature_oid: String,
    pub is_ca: bool,
    pub subject_key_id: Option<Vec<u8>>,
    pub authority_key_id: Option<Vec<u8>>,
}

impl CertInfo {
    pub fn parse(der: &[u8]) -> Result<Self, String> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or("")
            .to_string();
        let mut sans = Vec::new();
        let mut subject_key_id = None;
        let mut authority_key_id = None;
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        if let GeneralName::DNSName(dns) = name {
                            sans.push(dns.to_ascii_lowercase());
                        }
                    }
                }
                ParsedExtension::SubjectKeyIdentifier(id) => subject_key_id = Some(id.0.to_vec()),
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    authority_key_id = aki.key_identifier.as_ref().map(|k| k.0.to_vec());
                }
                _ => {}
            }
        }
        let spki = cert.public_key();
        let key_type = key_type(&spki.algorithm.algorithm, spki);
        Ok(Self {
            der: der.to_vec(),
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            subject_raw: cert.subject().as_raw().to_vec(),
            issuer_raw: cert.issuer().as_raw().to_vec(),
            common_name,
            sans,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            fingerprint: hex::encode(Sha256::digest(der)),
            public_key: spki.subject_public_key.data.to_vec(),
            key_type,
            signature_oid: cert.signature_algorithm.algorithm.to_id_string(),
            is_ca: cert.is_ca(),
            subject_key_id,
            authority_key_id,
        })
    }

    pub fn self_signed(&self) -> bool {
        self.subject_raw == self.issuer_raw
    }

    /// The names a TLS client checks: the DNS SANs, or the Common Name when there are none.
    pub fn dns_names(&self) -> Vec<String> {
        if self.sans.is_empty() && !self.common_name.is_empty() {
            vec![self.common_name.to_ascii_lowercase()]
        } else {
            self.sans.clone()
        }
    }

    /// A short name for messages: the Common Name, else the first SAN, else the subject.
    pub fn display_name(&self) -> String {
        if !self.common_name.is_empty() {
            self.common_name.clone()
        } else {
            self.sans
                .first()
                .cloned()
                .unwrap_or_else(|| self.subject.clone())
        }
    }

    /// The name of a weak (MD5 or SHA-1) signature algorithm, if this certificate uses one.
    pub fn weak_signature(&self) -> Option<&'static str> {
        match self.signature_oid.as_str() {
            "1.2.840.113549.1.1.4" => Some("MD5 with RSA"),
            "1.2.840.113549.1.1.2" => Some("MD2 with RSA"),
            "1.2.840.113549.1.1.5" => Some("SHA-1 with RSA"),
            "1.2.840.10045.4.1" => Some("ECDSA with SHA-1"),
            "1.2.840.10040.4.3" => Some("DSA with SHA-1"),
            "1.3.14.3.2.29" => Some("SHA-1 with RSA (OIW)"),
            _ => None,
        }
    }

    /// True when `issuer` plausibly issued this certificate: names match, and key identifiers
    /// too when both are present. (The signature itself is checked by path building.)
    pub fn issued_by(&self, issuer: &CertInfo) -> bool {
        self.issuer_raw == issuer.subject_raw
            && match (&self.authority_key_id, &issuer.subject_key_id) {
                (Some(aki), Some(ski)) => aki == ski,
                _ => true,
            }
    }
}

fn key_type(alg: &Oid, spki: &x509_parser::x509::SubjectPublicKeyInfo) -> KeyType {
    if *alg == oid_registry::OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => 0,
        };
        return KeyType::Rsa(bits);
    }
    if *alg == oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|o| o.to_id_string())
            .unwrap_or_default();
        return match curve.as_str() {
            "1.2.840.10045.3.1.7" => KeyType::EcP256,
            "1.3.132.0.34" => KeyType::EcP384,
            _ => KeyType::Ec(curve),
        };
    }
    if alg.to_id_string() == "1.3.101.112" {
        return KeyType::Ed25519;
    }
    KeyType::Other(alg.to_id_string())
}
