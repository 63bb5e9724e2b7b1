//! The stable error and warning codes of an upload (PRODUCT.md), each with a message that says
//! what to do next. Messages never quote key material.

use crate::error::ErrorItem;

pub const NOT_PEM: &str = "not_pem";
pub const NO_CERTIFICATE: &str = "no_certificate";
pub const NO_PRIVATE_KEY: &str = "no_private_key";
pub const MULTIPLE_PRIVATE_KEYS: &str = "multiple_private_keys";
pub const ENCRYPTED_PRIVATE_KEY: &str = "encrypted_private_key";
pub const KEY_MISMATCH: &str = "key_mismatch";
pub const EXPIRED: &str = "expired";
pub const NOT_YET_VALID: &str = "not_yet_valid";
pub const WEAK_KEY: &str = "weak_key";
pub const WEAK_SIGNATURE: &str = "weak_signature";
pub const DOMAIN_MISMATCH: &str = "domain_mismatch";
pub const TOO_LARGE: &str = "too_large";

pub const CHAIN_REORDERED: &str = "chain_reordered";
pub const CHAIN_STRIPPED: &str = "chain_stripped";
pub const CHAIN_INCOMPLETE: &str = "chain_incomplete";
pub const UNTRUSTED: &str = "untrusted";
pub const DOMAIN_UNCOVERED: &str = "domain_uncovered";
pub const EXPIRES_SOON: &str = "expires_soon";

/// The largest upload accepted, all fields together.
pub const MAX_UPLOAD_BYTES: usize = 1024 * 1024;

/// Which form field a problem concerns, so the page can show it next to that field.
pub fn field_of(code: &str) -> Option<&'static str> {
    match code {
        NO_PRIVATE_KEY | MULTIPLE_PRIVATE_KEYS | ENCRYPTED_PRIVATE_KEY | KEY_MISMATCH => {
            Some("private_key")
        }
        NO_CERTIFICATE | EXPIRED | NOT_YET_VALID | WEAK_KEY | DOMAIN_MISMATCH => {
            Some("certificate")
        }
        _ => None,
    }
}

pub fn problem(code: &'static str, message: impl Into<String>) -> ErrorItem {
    let item = ErrorItem::new(code, message);
    match field_of(code) {
        Some(field) => item.on(field),
        None => item,
    }
}

/// What binary format a non-PEM upload is, and the openssl command that converts it.
pub fn not_pem(field: &str, format: BinaryFormat) -> ErrorItem {
    let (what, fix) = match format {
        BinaryFormat::Pkcs12 => (
            "a PKCS#12 / PFX bundle",
            "`openssl pkcs12 -in bundle.pfx -nokeys -out certificate.pem` and `openssl pkcs12 -in bundle.pfx -nocerts -nodes -out key.pem`",
        ),
        BinaryFormat::Pkcs7 => (
            "a PKCS#7 (.p7b) bundle",
            "`openssl pkcs7 -inform der -in bundle.p7b -print_certs -out chain.pem`",
        ),
        BinaryFormat::Pkcs7Pem => (
            "a PKCS#7 (.p7b) bundle in PEM armour",
            "`openssl pkcs7 -in bundle.p7b -print_certs -out chain.pem`",
        ),
        BinaryFormat::DerCertificate => (
            "a DER (binary) certificate",
            "`openssl x509 -inform der -in certificate.der -out certificate.pem`",
        ),
        BinaryFormat::DerKey => (
            "a DER (binary) private key",
            "`openssl pkey -inform der -in key.der -out key.pem`",
        ),
        BinaryFormat::Unknown => (
            "binary data that is not PEM",
            "`openssl x509 -inform der -in FILE -out certificate.pem` (for a certificate) or `openssl pkey -inform der -in FILE -out key.pem` (for a key)",
        ),
        BinaryFormat::BadBase64 => (
            "a PEM block whose contents are damaged",
            "open the file in a text editor and copy it again, from -----BEGIN to -----END inclusive",
        ),
    };
    ErrorItem::new(
        NOT_PEM,
        format!("The {field} field holds {what}; certdrop takes PEM text. Convert it with: {fix}"),
    )
    .on(match field {
        "private key" => "private_key",
        "chain" => "chain",
        _ => "certificate",
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryFormat {
    Pkcs12,
    Pkcs7,
    Pkcs7Pem,
    DerCertificate,
    DerKey,
    Unknown,
    BadBase64,
}

pub fn encrypted_key(legacy: bool) -> ErrorItem {
    let fix = if legacy {
        "`openssl rsa -in encrypted.key -out key.pem` (or `openssl ec -in encrypted.key -out key.pem` for an EC key)"
    } else {
        "`openssl pkey -in encrypted.key -out key.pem`"
    };
    problem(
        ENCRYPTED_PRIVATE_KEY,
        format!(
            "The private key is protected by a passphrase, so the edge servers could not use it. \
             Remove the passphrase (you will be asked for it) with: {fix} — then upload key.pem."
        ),
    )
}
