//! A PKI generated at run time for each test (no key is ever committed): roots, intermediates
//! and leaves with rcgen, and the formats only openssl writes (PKCS#12, PKCS#7, SHA-1
//! signatures, passphrase-protected keys) through the openssl command when it is installed.

use std::{io::Write, process::Command};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SignatureAlgorithm,
};
use time::{Duration, OffsetDateTime};

use crate::common::require_or_skip;

pub struct Ca {
    pub issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "certdrop test PKI");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.not_before = OffsetDateTime::now_utc() - Duration::days(30);
    params.not_after = OffsetDateTime::now_utc() + Duration::days(3650);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params
}

pub fn root(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    Ca {
        issuer: CertifiedIssuer::self_signed(ca_params(name), key).unwrap(),
    }
}

pub fn intermediate(name: &str, parent: &Ca) -> Ca {
    let key = KeyPair::generate().unwrap();
    Ca {
        issuer: CertifiedIssuer::signed_by(ca_params(name), key, &parent.issuer).unwrap(),
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Alg {
    P256,
    P384,
    Rsa2048,
    Ed25519,
}

impl Alg {
    fn algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            Self::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Self::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
            Self::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }

    pub fn key(self) -> KeyPair {
        match self {
            Self::Rsa2048 => {
                KeyPair::generate_rsa_for(self.algorithm(), rcgen::RsaKeySize::_2048).unwrap()
            }
            _ => KeyPair::generate_for(self.algorithm()).unwrap(),
        }
    }
}

pub struct Leaf {
    pub cert_pem: String,
    /// PKCS#8 PEM.
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Leaf {
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&self.der))
    }
}

/// Validity of a leaf relative to now, in days.
#[derive(Clone, Copy)]
pub struct Validity {
    pub from_days: i64,
    pub to_days: i64,
}

pub const VALID: Validity = Validity {
    from_days: -1,
    to_days: 90,
};

pub fn leaf(names: &[&str], issuer: &Ca, alg: Alg) -> Leaf {
    leaf_with(names, issuer, alg, VALID)
}

pub fn leaf_with(names: &[&str], issuer: &Ca, alg: Alg, validity: Validity) -> Leaf {
    leaf_built(names, issuer, alg, validity, |_| {})
}

/// A leaf whose Authority Information Access names an OCSP responder at `url`.
pub fn leaf_with_ocsp_responder(names: &[&str], issuer: &Ca, url: &str) -> Leaf {
    leaf_built(names, issuer, Alg::P256, VALID, |params| {
        // SEQUENCE { SEQUENCE { id-ad-ocsp, [6] uniformResourceIdentifier } }
        let mut location = vec![0x86, url.len() as u8];
        location.extend_from_slice(url.as_bytes());
        let mut access = vec![0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01];
        access.extend(location);
        let mut description = vec![0x30, access.len() as u8];
        description.extend(access);
        let mut content = vec![0x30, description.len() as u8];
        content.extend(description);
        params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 5, 5, 7, 1, 1],
                content,
            ));
    })
}

fn leaf_built(
    names: &[&str],
    issuer: &Ca,
    alg: Alg,
    validity: Validity,
    tweak: impl FnOnce(&mut CertificateParams),
) -> Leaf {
    let key = alg.key();
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    tweak(&mut params);
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.not_before = OffsetDateTime::now_utc() + Duration::days(validity.from_days);
    params.not_after = OffsetDateTime::now_utc() + Duration::days(validity.to_days);
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer.issuer).unwrap();
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().to_vec(),
    }
}

/// A self-signed leaf (no CA at all).
pub fn self_signed(names: &[&str]) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.not_before = OffsetDateTime::now_utc() - Duration::days(1);
    params.not_after = OffsetDateTime::now_utc() + Duration::days(90);
    let cert = params.self_signed(&key).unwrap();
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().to_vec(),
    }
}

/// Runs openssl with `args` in `dir`; `None` (after printing why) when openssl is absent.
pub fn openssl(dir: &std::path::Path, args: &[&str], stdin: Option<&[u8]>) -> Option<Vec<u8>> {
    let available = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !require_or_skip("openssl", available) {
        return None;
    }
    let mut child = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(out.stdout)
}

/// Writes `contents` to `dir/name` and returns the name (for openssl arguments).
pub fn write(dir: &std::path::Path, name: &str, contents: &[u8]) -> String {
    std::fs::write(dir.join(name), contents).unwrap();
    name.to_string()
}
