//! Validated-and-sealed bundles per second in one thread (so: per core): the whole intake check
//! (PEM, X.509, key match, chain building, webpki trust) plus the age seal.
//! Run: `cargo bench --bench intake` (SECONDS may be set). Target: 500 per second per core.

use std::time::{Duration, Instant};

use anyhow::Context;

use certdrop::{
    certs::{
        intake::{Upload, check},
        trust::TrustStore,
    },
    vault::Vault,
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

fn ca(name: &str) -> CertificateParams {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, name);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca
}

/// A leaf signed by an intermediate of the leaf's algorithm, itself signed by a root that is
/// not uploaded (as a CA's chain file is).
fn bundle(leaf_alg: &'static rcgen::SignatureAlgorithm) -> (String, String, String) {
    let root =
        CertifiedIssuer::self_signed(ca("Bench Root"), KeyPair::generate().unwrap()).unwrap();
    let ca_key = match leaf_alg == &rcgen::PKCS_RSA_SHA256 {
        true => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap()
        }
        false => KeyPair::generate().unwrap(),
    };
    let issuer = CertifiedIssuer::signed_by(ca("Bench Intermediate"), ca_key, &root).unwrap();
    let key = match leaf_alg == &rcgen::PKCS_RSA_SHA256 {
        true => KeyPair::generate_rsa_for(leaf_alg, rcgen::RsaKeySize::_2048).unwrap(),
        false => KeyPair::generate_for(leaf_alg).unwrap(),
    };
    let mut params = CertificateParams::new(vec!["www.example.com".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "www.example.com");
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem(), issuer.pem())
}

fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::var("SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir()?;
    let vault = Vault::open_or_create(&dir.path().join("vault.age"))?;
    let trust = TrustStore::load(None)?;
    let domains = vec!["www.example.com".to_string()];
    for (label, alg) in [
        ("RSA-2048 leaf + intermediate", &rcgen::PKCS_RSA_SHA256),
        (
            "ECDSA P-256 leaf + intermediate",
            &rcgen::PKCS_ECDSA_P256_SHA256,
        ),
    ] {
        let (cert, key, chain) = bundle(alg);
        let served = check(
            &Upload {
                certificate: cert.as_bytes(),
                private_key: key.as_bytes(),
                chain: chain.as_bytes(),
                bypass: false,
                born: &[],
            },
            &domains,
            &trust,
            certdrop::db::now(),
        )
        .map_err(|r| anyhow::anyhow!("refused: {:?}", r.errors))?;
        assert_eq!(
            served.inspection.chain.len(),
            2,
            "leaf and intermediate are served"
        );
        let upload = Upload {
            certificate: cert.as_bytes(),
            private_key: key.as_bytes(),
            chain: chain.as_bytes(),
            bypass: false,
            born: &[],
        };
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let start = Instant::now();
        let mut done = 0u64;
        while Instant::now() < deadline {
            let accepted = check(&upload, &domains, &trust, certdrop::db::now())
                .map_err(|r| anyhow::anyhow!("refused: {:?}", r.errors))?;
            let key = accepted.key.context("the upload holds its key")?;
            std::hint::black_box(vault.seal(&key)?);
            done += 1;
        }
        let rate = done as f64 / start.elapsed().as_secs_f64();
        println!(
            "{label}: {rate:.0} validated-and-sealed bundles per second on one core ({done} in {seconds} s)"
        );
    }
    Ok(())
}
