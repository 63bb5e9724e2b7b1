//! Checks an upload (certificate field, private key field, optional chain field) and returns
//! either everything needed to store it, or every problem found. Plain values in, plain values
//! out: no HTTP, no database. The key leaves as a `PlainKey`, to be sealed at once.

use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};
use serde::Serialize;
use x509_parser::prelude::FromDer;
use zeroize::Zeroizing;

use super::{
    chain,
    codes::{self, BinaryFormat, problem},
    pem::{self, Block},
    trust::{Trust, TrustStore},
    x509::CertInfo,
};
use crate::{der, domains::hostname, error::ErrorItem, vault::PlainKey};

pub struct Upload<'a> {
    pub certificate: &'a [u8],
    pub private_key: &'a [u8],
    pub chain: &'a [u8],
    pub bypass: bool,
    /// The app's keys born in the vault (`id`, `csr::public_key_id`): a certificate issued for
    /// one of them needs no key in the upload.
    pub born: &'a [(i64, String)],
}

/// Where the key of an accepted upload is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyOrigin {
    /// In the upload; sealed now.
    Uploaded,
    /// Generated here for a CSR (`generated_keys.id`): sealed since its birth.
    Born(i64),
}

impl KeyOrigin {
    /// How the certificate lists show where it came from.
    pub fn source(self) -> &'static str {
        match self {
            Self::Uploaded => "uploaded",
            Self::Born(_) => "csr",
        }
    }
}

/// One certificate of the served chain, as reports show it.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ChainEntry {
    pub subject: String,
    pub issuer: String,
    pub not_after: i64,
    pub fingerprint_sha256: String,
}

/// What an accepted upload is, before it has an id.
#[derive(Clone, Debug)]
pub struct Inspection {
    pub common_name: String,
    pub sans: Vec<String>,
    pub domains_covered: Vec<String>,
    pub issuer: String,
    pub not_before: i64,
    pub not_after: i64,
    pub fingerprint_sha256: String,
    pub key_type: String,
    pub trusted: bool,
    pub chain: Vec<ChainEntry>,
    pub warnings: Vec<ErrorItem>,
    pub key_origin: KeyOrigin,
}

/// An accepted upload: its inspection, the served chain in PEM, and the key to seal (none
/// when it was born in the vault).
pub struct Accepted {
    pub inspection: Inspection,
    pub chain_pem: String,
    pub key: Option<PlainKey>,
}

/// A refused upload: every problem found, and the leaf's fingerprint when one was identified.
#[derive(Debug)]
pub struct Refused {
    pub errors: Vec<ErrorItem>,
    pub fingerprint: Option<String>,
}

const EXPIRES_SOON_SECONDS: i64 = 30 * 24 * 3600;

/// A private key block found in the upload, in memory wiped on drop.
struct KeyBlock {
    der: Zeroizing<Vec<u8>>,
    label: &'static str,
}

impl KeyBlock {
    /// A borrowed view for rustls (no copy of the key is made).
    fn as_der(&self) -> PrivateKeyDer<'_> {
        match self.label {
            "RSA PRIVATE KEY" => {
                PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(self.der.as_slice()))
            }
            "EC PRIVATE KEY" => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(self.der.as_slice())),
            _ => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.der.as_slice())),
        }
    }
}

#[derive(Default)]
struct Found {
    certs: Vec<CertInfo>,
    keys: Vec<KeyBlock>,
    encrypted: Option<bool>,
    saw_csr: bool,
    errors: Vec<ErrorItem>,
}

/// Recognises binary formats people upload instead of PEM.
fn sniff_binary(input: &[u8]) -> BinaryFormat {
    const PKCS7_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
    const PKCS7_SIGNED: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
    let head = &input[..input.len().min(64)];
    let contains = |needle: &[u8]| head.windows(needle.len()).any(|w| w == needle);
    if input.first() != Some(&0x30) {
        return BinaryFormat::Unknown;
    }
    if x509_parser::prelude::X509Certificate::from_der(input).is_ok() {
        return BinaryFormat::DerCertificate;
    }
    // PFX: SEQUENCE { INTEGER 3, ContentInfo { id-data … } }
    if contains(&[0x02, 0x01, 0x03]) && contains(PKCS7_DATA) {
        return BinaryFormat::Pkcs12;
    }
    if contains(PKCS7_SIGNED) {
        return BinaryFormat::Pkcs7;
    }
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(input));
    if rustls::crypto::aws_lc_rs::sign::any_supported_type(&der).is_ok()
        || rsa_public_bits(input).is_some()
    {
        return BinaryFormat::DerKey;
    }
    BinaryFormat::Unknown
}

fn collect(field: &'static str, input: &[u8], found: &mut Found) {
    if input.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    if !pem::looks_like_pem(input) {
        found
            .errors
            .push(codes::not_pem(field, sniff_binary(input)));
        return;
    }
    for block in pem::blocks(input) {
        classify(field, block, found);
    }
}

fn classify(field: &'static str, block: Block, found: &mut Found) {
    let label = block.label.as_str();
    let key_label: Option<&'static str> = match label {
        "PRIVATE KEY" => Some("PRIVATE KEY"),
        "RSA PRIVATE KEY" => Some("RSA PRIVATE KEY"),
        "EC PRIVATE KEY" => Some("EC PRIVATE KEY"),
        _ => None,
    };
    if label == "ENCRYPTED PRIVATE KEY" {
        found.encrypted.get_or_insert(false);
        return;
    }
    if key_label.is_some() && block.is_legacy_encrypted() {
        found.encrypted = Some(true);
        return;
    }
    match (label, block.der) {
        ("PKCS7", _) => found
            .errors
            .push(codes::not_pem(field, BinaryFormat::Pkcs7Pem)),
        ("CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST", _) => found.saw_csr = true,
        (_, None) if key_label.is_some() || label.ends_with("CERTIFICATE") => {
            found
                .errors
                .push(codes::not_pem(field, BinaryFormat::BadBase64));
        }
        ("CERTIFICATE" | "X509 CERTIFICATE" | "TRUSTED CERTIFICATE", Some(der)) => {
            match CertInfo::parse(&der) {
                Ok(info) => found.certs.push(info),
                Err(_) => found
                    .errors
                    .push(codes::not_pem(field, BinaryFormat::BadBase64)),
            }
        }
        (_, Some(der)) => {
            if let Some(label) = key_label {
                found.keys.push(KeyBlock { der, label });
            }
        }
        _ => {}
    }
}

/// The subjectPublicKey bits of a private key, or `None` when it cannot be read.
fn public_key_of(key: &PrivateKeyDer<'_>) -> Option<Vec<u8>> {
    if let Ok(signing) = rustls::crypto::aws_lc_rs::sign::any_supported_type(key) {
        let spki = signing.public_key()?;
        let (_, parsed) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki.as_ref()).ok()?;
        return Some(parsed.subject_public_key.data.to_vec());
    }
    // aws-lc refuses RSA keys under 2048 bits; read their public half from the structure, so
    // that such an upload is reported as `weak_key`, not as an unreadable key.
    match key {
        PrivateKeyDer::Pkcs1(k) => rsa_public_bits(k.secret_pkcs1_der()),
        PrivateKeyDer::Pkcs8(k) => rsa_public_bits(&pkcs8_inner(k.secret_pkcs8_der())?),
        _ => None,
    }
}

/// The privateKey OCTET STRING of a PKCS#8 PrivateKeyInfo (PKCS#1 for an RSA key).
fn pkcs8_inner(pkcs8: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    use x509_parser::der_parser::ber::BerObjectContent;
    let (_, seq) = x509_parser::der_parser::der::parse_der_sequence(pkcs8).ok()?;
    match &seq.as_sequence().ok()?.get(2)?.content {
        BerObjectContent::OctetString(inner) => Some(Zeroizing::new(inner.to_vec())),
        _ => None,
    }
}

/// RSAPublicKey { modulus, publicExponent } re-encoded from a PKCS#1 RSAPrivateKey.
fn rsa_public_bits(pkcs1: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::der_parser::ber::BerObjectContent;
    let (_, seq) = x509_parser::der_parser::der::parse_der_sequence(pkcs1).ok()?;
    let items = seq.as_sequence().ok()?;
    let (BerObjectContent::Integer(n), BerObjectContent::Integer(e)) =
        (&items.get(1)?.content, &items.get(2)?.content)
    else {
        return None;
    };
    let body = [der::encode(der::INTEGER, n), der::encode(der::INTEGER, e)].concat();
    Some(der::encode(der::SEQUENCE, &body))
}

/// Checks an upload against the app's domains at time `now` (unix seconds).
pub fn check(
    upload: &Upload<'_>,
    app_domains: &[String],
    trust: &TrustStore,
    now: i64,
) -> Result<Accepted, Refused> {
    let mut found = Found::default();
    collect("certificate", upload.certificate, &mut found);
    collect("private key", upload.private_key, &mut found);
    collect("chain", upload.chain, &mut found);
    let mut errors = std::mem::take(&mut found.errors);

    if found.certs.is_empty() {
        let message = if found.saw_csr {
            "This is a certificate signing request (CSR), not a certificate. Send the CSR to your certificate authority and upload the certificate it returns (-----BEGIN CERTIFICATE-----)."
        } else {
            "No certificate found. Paste or upload the PEM block that starts with -----BEGIN CERTIFICATE-----."
        };
        if !errors.iter().any(|e| e.field == Some("certificate")) {
            errors.push(problem(codes::NO_CERTIFICATE, message));
        }
    }
    // The same key pasted twice (say, in the bundle and in the key field) is one key.
    let mut keys: Vec<KeyBlock> = Vec::new();
    for key in found.keys {
        if !keys.iter().any(|k| k.der == key.der) {
            keys.push(key);
        }
    }
    if let Some(legacy) = found.encrypted {
        errors.push(codes::encrypted_key(legacy));
    }
    // No key given: the certificate may be the one a CA signed for a CSR certdrop made.
    let born = match (keys.is_empty(), found.encrypted) {
        (true, None) => found.certs.iter().enumerate().find_map(|(i, c)| {
            let id = super::csr::public_key_id(&c.public_key);
            upload
                .born
                .iter()
                .find(|(_, known)| *known == id)
                .map(|(key_id, _)| (i, *key_id))
        }),
        _ => None,
    };
    let key = match keys.len() {
        0 if found.encrypted.is_none() => {
            if born.is_none() && !errors.iter().any(|e| e.field == Some("private_key")) {
                errors.push(problem(
                    codes::NO_PRIVATE_KEY,
                    "No private key found. Add the key generated with your certificate request (the PEM block whose first line reads BEGIN PRIVATE KEY, or BEGIN RSA PRIVATE KEY). \
                     If certdrop generated the key (Generate a key and CSR), upload the certificate your CA signed for that CSR: no key is needed.",
                ));
            }
            None
        }
        0 => None,
        1 => keys.pop(),
        n => {
            errors.push(problem(
                codes::MULTIPLE_PRIVATE_KEYS,
                format!("The upload holds {n} different private keys; certdrop needs exactly the one that belongs to the certificate. Remove the others."),
            ));
            None
        }
    };
    // With no certificate at all, or with the certificate field unreadable (DER, PKCS#12…),
    // the leaf is unknown: checking the key or the domains against a chain certificate would
    // only add false errors to the one that matters.
    if found.certs.is_empty() || errors.iter().any(|e| e.field == Some("certificate")) {
        return Err(Refused {
            errors,
            fingerprint: None,
        });
    }

    let key_public = key.as_ref().map(|k| (k, public_key_of(&k.as_der())));
    let matching = key_public
        .as_ref()
        .and_then(|(_, public)| public.as_ref())
        .and_then(|public| found.certs.iter().position(|c| &c.public_key == public));
    let leaf = match (born, &key_public, matching) {
        (Some((i, _)), _, _) | (None, _, Some(i)) => i,
        (None, Some((_, None)), None) => {
            errors.push(problem(
                codes::NO_PRIVATE_KEY,
                "The private key could not be read as an RSA, ECDSA (P-256/P-384) or Ed25519 key. Export it again with: `openssl pkey -in key.pem -out key-clean.pem`",
            ));
            fallback_leaf(&found.certs)
        }
        (None, Some((_, Some(_))), None) => {
            let guess = fallback_leaf(&found.certs);
            errors.push(problem(
                codes::KEY_MISMATCH,
                format!(
                    "The private key does not belong to the certificate for {}. Upload the key you generated with this certificate's request. \
                     Compare them (the two must print the same) with: `openssl x509 -noout -pubkey -in certificate.pem | openssl sha256` and `openssl pkey -pubout -in key.pem | openssl sha256`",
                    found.certs[guess].display_name()
                ),
            ));
            guess
        }
        (None, None, None) => fallback_leaf(&found.certs),
    };
    let certs = &found.certs;
    let leaf_cert = &certs[leaf];

    if leaf_cert.not_after < now {
        errors.push(problem(
            codes::EXPIRED,
            format!(
                "The certificate for {} expired on {}. Renew it with your certificate authority and upload the new one.",
                leaf_cert.display_name(),
                crate::web::format_time(leaf_cert.not_after)
            ),
        ));
    }
    if leaf_cert.not_before > now {
        errors.push(problem(
            codes::NOT_YET_VALID,
            format!(
                "The certificate for {} is not valid before {}. Upload it after that time, or check the clock of the machine that issued it.",
                leaf_cert.display_name(),
                crate::web::format_time(leaf_cert.not_before)
            ),
        ));
    }
    if let Some(why) = leaf_cert.key_type.weakness() {
        errors.push(problem(codes::WEAK_KEY, why));
    }

    let names = leaf_cert.dns_names();
    let covered: Vec<String> = app_domains
        .iter()
        .filter(|d| names.iter().any(|n| hostname::covers(n, d)))
        .cloned()
        .collect();
    if covered.is_empty() {
        let message = if app_domains.is_empty() {
            "The app has no custom domains yet, so no certificate can serve it. Add the app's domains first, then upload again.".to_string()
        } else {
            format!(
                "The certificate covers {}, but none of the app's domains ({}). Upload the certificate issued for these domains, or add the right domains to the app. (A wildcard covers exactly one label: *.example.com does not cover example.com.)",
                if names.is_empty() {
                    "no names".to_string()
                } else {
                    names.join(", ")
                },
                app_domains.join(", ")
            )
        };
        errors.push(problem(codes::DOMAIN_MISMATCH, message));
    }

    let built = chain::build(certs, leaf, upload.bypass);
    let served: Vec<&CertInfo> = built.served.iter().map(|&i| &certs[i]).collect();
    let stripped: Vec<&CertInfo> = built.stripped.iter().map(|&i| &certs[i]).collect();
    for cert in &served {
        if let Some(alg) = cert.weak_signature() {
            errors.push(problem(
                codes::WEAK_SIGNATURE,
                format!(
                    "{} is signed with {alg}, which browsers reject. Ask your certificate authority to reissue it (and its chain) with SHA-256.",
                    cert.display_name()
                ),
            ));
        }
    }
    for cert in served.iter().skip(1) {
        if cert.not_after < now {
            errors.push(problem(
                codes::EXPIRED,
                format!(
                    "The intermediate certificate {} expired on {}. Download the current chain from your certificate authority.",
                    cert.display_name(),
                    crate::web::format_time(cert.not_after)
                ),
            ));
        }
    }

    let fingerprint = Some(leaf_cert.fingerprint.clone());
    if !errors.is_empty() {
        return Err(Refused {
            errors,
            fingerprint,
        });
    }

    let mut warnings = Vec::new();
    if built.reordered {
        warnings.push(ErrorItem::new(
            codes::CHAIN_REORDERED,
            "The certificates were not in serving order (leaf first, then each issuer); certdrop reordered them.",
        ));
    }
    if !built.stripped.is_empty() {
        let names: Vec<String> = stripped.iter().map(|c| c.display_name()).collect();
        warnings.push(ErrorItem::new(
            codes::CHAIN_STRIPPED,
            format!(
                "Left out of the served chain: {} (roots are already in browsers; other certificates were not part of this certificate's chain). Upload with bypass to keep the chain exactly as given.",
                names.join(", ")
            ),
        ));
    }
    // Trust is judged inside the leaf's validity, so that it says something about the chain.
    let trusted = match trust.verify(&served, &stripped, now) {
        Trust::Trusted => true,
        Trust::Incomplete { missing } => {
            warnings.push(ErrorItem::new(
                codes::CHAIN_INCOMPLETE,
                format!(
                    "The chain is missing the certificate of its issuer ({missing}), so many browsers will not trust it. Add the intermediate certificate(s) your certificate authority provided in the chain field."
                ),
            ));
            false
        }
        Trust::Untrusted { reason } => {
            warnings.push(ErrorItem::new(
                codes::UNTRUSTED,
                format!("{reason} Visitors will see a certificate warning unless their browsers trust its root."),
            ));
            false
        }
    };
    if covered.len() < app_domains.len() {
        let missing: Vec<&String> = app_domains
            .iter()
            .filter(|d| !covered.contains(d))
            .collect();
        warnings.push(ErrorItem::new(
            codes::DOMAIN_UNCOVERED,
            format!(
                "The certificate does not cover {} of the app's domains: {}. Those domains will not be served over HTTPS with it.",
                missing.len(),
                missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    if leaf_cert.not_after - now < EXPIRES_SOON_SECONDS {
        let days = (leaf_cert.not_after - now) / 86_400;
        warnings.push(ErrorItem::new(
            codes::EXPIRES_SOON,
            format!(
                "The certificate expires in {days} days ({}). Plan its renewal now.",
                crate::web::format_time(leaf_cert.not_after)
            ),
        ));
    }

    let mut chain_pem = String::new();
    for cert in &served {
        chain_pem.push_str(&pem::encode("CERTIFICATE", &cert.der));
    }
    // No errors means one usable key: in the upload, or born in the vault.
    let key_origin = match born {
        Some((_, id)) => KeyOrigin::Born(id),
        None => KeyOrigin::Uploaded,
    };
    let key = key.map(|key| {
        let key_pem: Zeroizing<String> = pem::encode(key.label, &key.der);
        PlainKey::from_pem(key_pem)
    });
    Ok(Accepted {
        inspection: Inspection {
            common_name: leaf_cert.common_name.clone(),
            sans: leaf_cert.sans.clone(),
            domains_covered: covered,
            issuer: leaf_cert.issuer.clone(),
            not_before: leaf_cert.not_before,
            not_after: leaf_cert.not_after,
            fingerprint_sha256: leaf_cert.fingerprint.clone(),
            key_type: leaf_cert.key_type.label(),
            trusted,
            chain: served
                .iter()
                .map(|c| ChainEntry {
                    subject: c.subject.clone(),
                    issuer: c.issuer.clone(),
                    not_after: c.not_after,
                    fingerprint_sha256: c.fingerprint.clone(),
                })
                .collect(),
            warnings,
            key_origin,
        },
        chain_pem,
        key,
    })
}

/// Without a key to match, the leaf is the first certificate that is not a CA.
fn fallback_leaf(certs: &[CertInfo]) -> usize {
    certs.iter().position(|c| !c.is_ca).unwrap_or(0)
}
