//! Keys born in the vault: a private key generated here for an app, and the certificate signing
//! request (CSR) the customer sends to their CA, so that they never hold the key. Plain values
//! in and out: the key leaves only as a `PlainKey` (wiped on drop), to be sealed at once.

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::codes::problem;
use crate::{domains::hostname, error::ErrorItem, vault::PlainKey};

/// The key types certdrop generates: what every browser and CA accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    P256,
    Rsa2048,
}

impl KeyKind {
    pub fn parse(raw: &str) -> Result<Self, ErrorItem> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "" | "p256" | "p-256" | "ecdsa" | "ecdsa-p256" => Ok(Self::P256),
            "rsa2048" | "rsa-2048" | "rsa" => Ok(Self::Rsa2048),
            other => Err(problem(
                INVALID_REQUEST,
                format!(
                    "Unknown key type `{other}`: choose p256 (ECDSA P-256, the default) or rsa2048."
                ),
            )
            .on("key_type")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::P256 => "p256",
            Self::Rsa2048 => "rsa2048",
        }
    }
}

const INVALID_REQUEST: &str = "invalid_request";

/// The subject attributes a CSR may carry, as openssl names them.
const ATTRIBUTES: [&str; 6] = ["CN", "O", "OU", "L", "ST", "C"];

/// Reads a subject as openssl writes it (`/C=US/O=Acme/CN=www.example.com`) or as a list
/// (`C=US, O=Acme`). Empty means "CN = the first domain".
pub fn parse_subject(raw: &str) -> Result<Vec<(&'static str, String)>, ErrorItem> {
    let refuse = |why: String| {
        problem(
            INVALID_REQUEST,
            format!("{why} Write the subject as `/C=US/O=Example Inc/CN=www.example.com` (attributes: CN, O, OU, L, ST, C)."),
        )
        .on("subject")
    };
    let raw = raw.trim();
    let parts: Vec<&str> = if raw.starts_with('/') {
        raw.split('/').collect()
    } else {
        raw.split(',').collect()
    };
    let mut subject = Vec::new();
    for part in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let Some((name, value)) = part.split_once('=') else {
            return Err(refuse(format!("`{part}` is not NAME=VALUE.")));
        };
        let name = name.trim().to_ascii_uppercase();
        let Some(name) = ATTRIBUTES.iter().find(|a| **a == name) else {
            return Err(refuse(format!(
                "`{name}` is not a subject attribute certdrop writes."
            )));
        };
        let value = value.trim();
        if value.is_empty() || value.len() > 64 || value.chars().any(char::is_control) {
            return Err(refuse(format!(
                "The value of {name} must be 1 to 64 printable characters."
            )));
        }
        if *name == "C" && !(value.len() == 2 && value.chars().all(|c| c.is_ascii_uppercase())) {
            return Err(refuse(format!(
                "C is a two-letter country code such as US, not `{value}`."
            )));
        }
        subject.push((*name, value.to_string()));
    }
    Ok(subject)
}

/// What a generated key is known by: the SHA-256 of its subjectPublicKey bits, hex. A
/// certificate whose public key has the same id was issued for it.
pub fn public_key_id(subject_public_key: &[u8]) -> String {
    hex::encode(Sha256::digest(subject_public_key))
}

/// A generated key and its CSR.
pub struct Generated {
    pub kind: KeyKind,
    /// The names the CSR asks for, normalised.
    pub domains: Vec<String>,
    pub csr_pem: String,
    pub subject: String,
    pub public_key_id: String,
    pub key: PlainKey,
}

/// Generates a key of `kind` and a CSR for `domains` (the first is the Common Name unless the
/// subject names one). CPU-heavy for RSA: call it off the async runtime.
pub fn generate(
    kind: KeyKind,
    subject: &[(&'static str, String)],
    domains: &[String],
) -> anyhow::Result<Generated> {
    use rcgen::{CertificateParams, DnType, KeyPair};
    let names: Vec<String> = domains
        .iter()
        .map(|d| hostname::normalize(d).map_err(|why| anyhow::anyhow!(why)))
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(!names.is_empty(), "a CSR needs at least one domain");
    let key = Zeroizing::new(match kind {
        KeyKind::P256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
        KeyKind::Rsa2048 => KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)?,
    });
    let mut params = CertificateParams::new(names.clone())?;
    let mut dn = rcgen::DistinguishedName::new();
    if !subject.iter().any(|(name, _)| *name == "CN") {
        dn.push(DnType::CommonName, names[0].clone());
    }
    for (name, value) in subject {
        let kind = match *name {
            "CN" => DnType::CommonName,
            "O" => DnType::OrganizationName,
            "OU" => DnType::OrganizationalUnitName,
            "L" => DnType::LocalityName,
            "ST" => DnType::StateOrProvinceName,
            _ => DnType::CountryName,
        };
        dn.push(kind, value.clone());
    }
    params.distinguished_name = dn;
    let csr = params.serialize_request(&*key)?;
    let mut shown: Vec<String> = Vec::new();
    if !subject.iter().any(|(name, _)| *name == "CN") {
        shown.push(format!("CN={}", names[0]));
    }
    shown.extend(subject.iter().map(|(n, v)| format!("{n}={v}")));
    Ok(Generated {
        kind,
        domains: names,
        csr_pem: csr.pem()?,
        subject: shown.join(", "),
        public_key_id: public_key_id(rcgen::PublicKeyData::der_bytes(&*key)),
        key: PlainKey::from_pem(Zeroizing::new(key.serialize_pem())),
    })
}

#[cfg(test)]
mod tests {
    use x509_parser::prelude::FromDer;

    use super::*;

    #[test]
    fn subjects_are_read_in_openssl_and_list_form_and_refused_with_the_way_to_write_them() {
        let want = vec![("C", "US".to_string()), ("O", "Acme Inc".to_string())];
        assert_eq!(parse_subject("/C=US/O=Acme Inc").unwrap(), want);
        assert_eq!(parse_subject("c=US, o = Acme Inc").unwrap(), want);
        assert!(parse_subject("").unwrap().is_empty());
        for bad in ["CN", "X=1", "C=usa", "O="] {
            let err = parse_subject(bad).unwrap_err();
            assert_eq!(err.field, Some("subject"), "{bad}");
            assert!(err.message.contains("/C=US/O="), "{bad}: {}", err.message);
        }
    }

    #[test]
    fn a_csr_names_its_domains_and_its_key_matches_it() {
        for kind in [KeyKind::P256, KeyKind::Rsa2048] {
            let domains = ["www.example.com".to_string(), "example.com".to_string()];
            let subject = parse_subject("/O=Acme").unwrap();
            let generated = generate(kind, &subject, &domains).unwrap();
            let block = crate::certs::pem::blocks(generated.csr_pem.as_bytes()).remove(0);
            assert_eq!(block.label, "CERTIFICATE REQUEST");
            let der = block.der.unwrap();
            let (_, csr) =
                x509_parser::certification_request::X509CertificationRequest::from_der(&der)
                    .unwrap();
            let info = &csr.certification_request_info;
            assert_eq!(
                public_key_id(&info.subject_pki.subject_public_key.data),
                generated.public_key_id
            );
            let text = info.subject.to_string();
            assert!(
                text.contains("CN=www.example.com") && text.contains("O=Acme"),
                "{text}"
            );
            assert_eq!(generated.subject, "CN=www.example.com, O=Acme");
            let key = crate::certs::pem::blocks(generated.key.pem().as_bytes()).remove(0);
            assert_eq!(
                key.label, "PRIVATE KEY",
                "PKCS#8, as the edge nodes read it"
            );
        }
    }
}
