//! Trust: does the served chain lead to a root in Mozilla's store (webpki-roots) or in
//! `CERTDROP_EXTRA_TRUST_ROOTS`? Path building and signature checks are rustls-webpki's.

use std::{path::Path, time::Duration};

use anyhow::Context;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime, pem::PemObject};
use webpki::{EndEntityCert, KeyUsage};

use super::x509::CertInfo;

pub struct TrustStore {
    anchors: Vec<TrustAnchor<'static>>,
}

impl std::fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrustStore({} anchors)", self.anchors.len())
    }
}

/// The outcome of path building.
#[derive(Debug, PartialEq, Eq)]
pub enum Trust {
    Trusted,
    /// An issuer is missing from the chain.
    Incomplete {
        missing: String,
    },
    /// Self-signed, an unknown root, or a chain that does not verify.
    Untrusted {
        reason: String,
    },
}

impl TrustStore {
    /// Mozilla's roots plus the PEM certificates of `extra` (a private PKI's roots).
    pub fn load(extra: Option<&Path>) -> anyhow::Result<Self> {
        let mut anchors: Vec<TrustAnchor<'static>> = webpki_roots::TLS_SERVER_ROOTS.to_vec();
        if let Some(path) = extra {
            let mut count = 0;
            for cert in CertificateDer::pem_file_iter(path).with_context(|| {
                format!("CERTDROP_EXTRA_TRUST_ROOTS: cannot read {}", path.display())
            })? {
                let cert = cert.with_context(|| {
                    format!("CERTDROP_EXTRA_TRUST_ROOTS: {} is not PEM", path.display())
                })?;
                let anchor = webpki::anchor_from_trusted_cert(&cert)
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "CERTDROP_EXTRA_TRUST_ROOTS: a certificate in {} is unusable: {e:?}",
                            path.display()
                        )
                    })?
                    .to_owned();
                anchors.push(anchor);
                count += 1;
            }
            anyhow::ensure!(
                count > 0,
                "CERTDROP_EXTRA_TRUST_ROOTS: {} holds no certificate",
                path.display()
            );
        }
        Ok(Self { anchors })
    }

    fn knows_subject(&self, name_raw: &[u8]) -> bool {
        let inner = strip_der_header(name_raw);
        self.anchors.iter().any(|a| a.subject.as_ref() == inner)
    }

    /// Builds a path from `served[0]` (the leaf) through `served[1..]` to a trust anchor, at
    /// `at` (unix seconds). `stripped` are uploaded certificates left out of the served chain.
    pub fn verify(&self, served: &[&CertInfo], stripped: &[&CertInfo], at: i64) -> Trust {
        let leaf_der = CertificateDer::from(served[0].der.as_slice());
        let intermediates: Vec<CertificateDer<'_>> = served[1..]
            .iter()
            .map(|c| CertificateDer::from(c.der.as_slice()))
            .collect();
        let time = UnixTime::since_unix_epoch(Duration::from_secs(at.max(0) as u64));
        let result = EndEntityCert::try_from(&leaf_der).and_then(|ee| {
            ee.verify_for_usage(
                rustls::crypto::aws_lc_rs::default_provider()
                    .signature_verification_algorithms
                    .all,
                &self.anchors,
                &intermediates,
                time,
                KeyUsage::server_auth(),
                None,
                None,
            )
            .map(|_| ())
        });
        let err = match result {
            Ok(()) => return Trust::Trusted,
            Err(err) => err,
        };
        let top = served.last().expect("the leaf at least");
        if top.self_signed() {
            let reason = if served.len() == 1 {
                "The certificate is self-signed, so browsers will not trust it.".to_string()
            } else {
                format!(
                    "The chain ends at {}, a root browsers do not trust.",
                    top.display_name()
                )
            };
            return Trust::Untrusted { reason };
        }
        if let Some(root) = stripped
            .iter()
            .find(|r| r.self_signed() && top.issued_by(r))
        {
            return Trust::Untrusted {
                reason: format!(
                    "The chain ends at the root {}, which is not in Mozilla's trust store (for a private PKI, add it to CERTDROP_EXTRA_TRUST_ROOTS).",
                    root.display_name()
                ),
            };
        }
        if matches!(err, webpki::Error::UnknownIssuer) && !self.knows_subject(&top.issuer_raw) {
            return Trust::Incomplete {
                missing: top.issuer.clone(),
            };
        }
        Trust::Untrusted {
            reason: format!("The chain does not verify ({err:?})."),
        }
    }
}

/// The contents of a DER TLV, without its tag and length (how webpki stores anchor subjects).
fn strip_der_header(der: &[u8]) -> &[u8] {
    if der.len() < 2 {
        return der;
    }
    let len_byte = der[1];
    let header = if len_byte & 0x80 == 0 {
        2
    } else {
        2 + (len_byte & 0x7f) as usize
    };
    der.get(header..).unwrap_or(der)
}
