//! OCSP (RFC 6960) as far as stapling needs it, pure functions only: where a certificate's
//! responder is, the request for its status, and the checks a response must pass before an
//! edge may staple it — the right certificate, status good, inside its validity window, and
//! signed by the issuer or by a responder the issuer delegated to. A response that fails any
//! check is never stapled (a bad staple breaks browsers; no staple never does).

use crate::der::{
    BIT_STRING, ENUMERATED, GENERALIZED_TIME, INTEGER, OCTET_STRING, OID, SEQUENCE, children,
    encode as der, expect,
};
use aws_lc_rs::{digest, signature};
use x509_parser::{
    certificate::X509Certificate, extensions::ParsedExtension, oid_registry, prelude::FromDer,
    x509::SubjectPublicKeyInfo,
};

/// A response fit to staple, and when it stops being so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staple {
    pub der: Vec<u8>,
    pub this_update: i64,
    pub next_update: i64,
}

/// The OCSP responder a certificate names (its Authority Information Access), if any.
pub fn responder_url(leaf_der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(leaf_der).ok()?;
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityInfoAccess(aia) => {
                aia.accessdescs
                    .iter()
                    .find_map(|d| match (&d.access_method, &d.access_location) {
                        (m, x509_parser::extensions::GeneralName::URI(uri))
                            if *m == oid_registry::OID_PKIX_ACCESS_DESCRIPTOR_OCSP
                                && (uri.starts_with("http://") || uri.starts_with("https://")) =>
                        {
                            Some(uri.to_string())
                        }
                        _ => None,
                    })
            }
            _ => None,
        })
}

// OIDs as their DER content bytes.
const SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
const SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const OCSP_BASIC: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];

/// The issuer's name and key, as a CertID hashes them.
struct Issuer<'a> {
    name_der: &'a [u8],
    key_bits: &'a [u8],
    spki: SubjectPublicKeyInfo<'a>,
}

fn parse_pair<'a>(
    leaf_der: &'a [u8],
    issuer_der: &'a [u8],
) -> Result<(X509Certificate<'a>, X509Certificate<'a>), String> {
    let (_, leaf) = X509Certificate::from_der(leaf_der).map_err(|e| format!("leaf: {e}"))?;
    let (_, issuer) = X509Certificate::from_der(issuer_der).map_err(|e| format!("issuer: {e}"))?;
    if leaf.issuer().as_raw() != issuer.subject().as_raw() {
        return Err("the chain's first certificate did not issue the leaf".into());
    }
    Ok((leaf, issuer))
}

fn issuer_of<'a>(issuer: &'a X509Certificate<'a>) -> Issuer<'a> {
    Issuer {
        name_der: issuer.subject().as_raw(),
        key_bits: &issuer.public_key().subject_public_key.data,
        spki: issuer.public_key().clone(),
    }
}

/// A CertID; `null_params` writes the hash algorithm's absent parameters as NULL, as most do.
fn cert_id(
    hash: &'static digest::Algorithm,
    hash_oid: &[u8],
    null_params: bool,
    issuer: &Issuer,
    serial: &[u8],
) -> Vec<u8> {
    let params: &[u8] = if null_params { &[0x05, 0x00] } else { &[] };
    let algorithm = der(SEQUENCE, &[&der(OID, hash_oid)[..], params].concat());
    der(
        SEQUENCE,
        &[
            algorithm,
            der(OCTET_STRING, digest::digest(hash, issuer.name_der).as_ref()),
            der(OCTET_STRING, digest::digest(hash, issuer.key_bits).as_ref()),
            der(INTEGER, serial),
        ]
        .concat(),
    )
}

/// The DER of a minimal OCSP request for the leaf (SHA-1 CertID, as every responder reads).
pub fn request(leaf_der: &[u8], issuer_der: &[u8]) -> Result<Vec<u8>, String> {
    let (leaf, issuer) = parse_pair(leaf_der, issuer_der)?;
    let id = cert_id(
        &digest::SHA1_FOR_LEGACY_USE_ONLY,
        SHA1,
        true,
        &issuer_of(&issuer),
        leaf.raw_serial(),
    );
    let request_list = der(SEQUENCE, &der(SEQUENCE, &id));
    Ok(der(SEQUENCE, &der(SEQUENCE, &request_list)))
}

fn generalized_time(content: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(content).ok()?;
    let digits = text.strip_suffix('Z')?;
    let digits = digits.split('.').next()?;
    if digits.len() != 14 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| digits[r].parse::<u32>().ok();
    let date = time::Date::from_calendar_date(
        n(0..4)? as i32,
        time::Month::try_from(n(4..6)? as u8).ok()?,
        n(6..8)? as u8,
    )
    .ok()?;
    let at = date
        .with_hms(n(8..10)? as u8, n(10..12)? as u8, n(12..14)? as u8)
        .ok()?;
    Some(at.assume_utc().unix_timestamp())
}

/// Checks `response` (DER, as the responder sent it) for the leaf at `now` (unix seconds).
pub fn check(
    response: &[u8],
    leaf_der: &[u8],
    issuer_der: &[u8],
    now: i64,
) -> Result<Staple, String> {
    let (leaf, issuer_cert) = parse_pair(leaf_der, issuer_der)?;
    let issuer = issuer_of(&issuer_cert);
    let malformed = || "the responder's answer is not a well-formed OCSP response".to_string();
    let outer =
        children(expect(response, SEQUENCE).ok_or_else(malformed)?).ok_or_else(malformed)?;
    match outer.first() {
        Some((ENUMERATED, [0], _)) => {}
        Some((ENUMERATED, [status], _)) => {
            return Err(format!(
                "the responder refused the request (status {status})"
            ));
        }
        _ => return Err(malformed()),
    }
    let bytes = outer
        .get(1)
        .filter(|(tag, _, _)| *tag == 0xa0)
        .and_then(|(_, c, _)| children(expect(c, SEQUENCE)?))
        .ok_or_else(malformed)?;
    let basic = match bytes.as_slice() {
        [(OID, oid, _), (OCTET_STRING, basic, _)] if *oid == OCSP_BASIC => *basic,
        _ => return Err("the response is not a basic OCSP response".into()),
    };
    let basic = children(expect(basic, SEQUENCE).ok_or_else(malformed)?).ok_or_else(malformed)?;
    let [
        (SEQUENCE, tbs, tbs_whole),
        (SEQUENCE, sig_alg, _),
        (BIT_STRING, sig_bits, _),
        more @ ..,
    ] = basic.as_slice()
    else {
        return Err(malformed());
    };
    let sig_alg = match children(sig_alg).as_deref() {
        Some([(OID, oid, _), ..]) => *oid,
        _ => return Err(malformed()),
    };
    let signature = match sig_bits.split_first() {
        Some((0, bits)) => bits,
        _ => return Err(malformed()),
    };
    let certs: Vec<&[u8]> = match more.first() {
        Some((0xa0, c, _)) => expect(c, SEQUENCE)
            .and_then(children)
            .map(|list| list.into_iter().map(|(_, _, whole)| whole).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    if !signed_by_issuer_or_delegate(&issuer, sig_alg, tbs_whole, signature, &certs) {
        return Err(
            "the response is not signed by the certificate's issuer or its OCSP responder".into(),
        );
    }

    let mut fields = children(tbs).ok_or_else(malformed)?.into_iter().peekable();
    fields.next_if(|(tag, _, _)| *tag == 0xa0); // version
    fields.next(); // responderID
    fields.next(); // producedAt
    let responses = fields
        .next()
        .filter(|(tag, _, _)| *tag == SEQUENCE)
        .and_then(|(_, c, _)| children(c))
        .ok_or_else(malformed)?;
    for (_, single, _) in responses {
        let parts = children(single).ok_or_else(malformed)?;
        let [
            (SEQUENCE, id, id_whole),
            (status, _, _),
            (GENERALIZED_TIME, this, _),
            rest @ ..,
        ] = parts.as_slice()
        else {
            return Err(malformed());
        };
        let hash_oid = match children(id).as_deref() {
            Some([(SEQUENCE, alg, _), ..]) => match children(alg).as_deref() {
                Some([(OID, oid, _), ..]) => *oid,
                _ => return Err(malformed()),
            },
            _ => return Err(malformed()),
        };
        let hash = match hash_oid {
            SHA1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            SHA256 => &digest::SHA256,
            _ => continue,
        };
        // Same algorithm, names and key hashed, same serial: byte for byte the CertID we would send
        // (parameters of the hash algorithm may be absent or NULL).
        let ours =
            [true, false].map(|null| cert_id(hash, hash_oid, null, &issuer, leaf.raw_serial()));
        if !ours.iter().any(|id| id.as_slice() == *id_whole) {
            continue;
        }
        match *status {
            0x80 => {}
            0xa1 => return Err("the CA says this certificate is revoked".into()),
            _ => return Err("the CA does not know this certificate (status unknown)".into()),
        }
        let this_update = generalized_time(this).ok_or_else(malformed)?;
        let next_update = match rest.first() {
            Some((0xa0, next, _)) => expect(next, GENERALIZED_TIME)
                .and_then(generalized_time)
                .ok_or_else(malformed)?,
            // No nextUpdate: "newer information is always available"; staple it for a day.
            _ => this_update + 86_400,
        };
        if this_update > now + 300 {
            return Err("the response is dated in the future".into());
        }
        if next_update <= now {
            return Err("the response has expired (its nextUpdate has passed)".into());
        }
        return Ok(Staple {
            der: response.to_vec(),
            this_update,
            next_update,
        });
    }
    Err("the response does not cover this certificate".into())
}

/// Signed by the issuer itself, or by a certificate in the response that the issuer signed and
/// marked for OCSP signing (a delegated responder).
fn signed_by_issuer_or_delegate(
    issuer: &Issuer,
    sig_alg: &[u8],
    message: &[u8],
    signature: &[u8],
    certs: &[&[u8]],
) -> bool {
    if verify(&issuer.spki, sig_alg, message, signature) {
        return true;
    }
    certs.iter().any(|der| {
        let Ok((_, delegate)) = X509Certificate::from_der(der) else {
            return false;
        };
        let for_ocsp = delegate
            .extended_key_usage()
            .ok()
            .flatten()
            .is_some_and(|eku| eku.value.ocsp_signing);
        for_ocsp
            && delegate.issuer().as_raw() == issuer.name_der
            && verify(
                &issuer.spki,
                delegate.signature_algorithm.algorithm.as_bytes(),
                delegate.tbs_certificate.as_ref(),
                &delegate.signature_value.data,
            )
            && verify(delegate.public_key(), sig_alg, message, signature)
    })
}

/// Verifies a signature made with the key of `spki` by the algorithm `sig_alg` (OID bytes).
fn verify(spki: &SubjectPublicKeyInfo, sig_alg: &[u8], message: &[u8], signature: &[u8]) -> bool {
    const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|oid| oid.as_bytes().to_vec());
    let algorithm: &dyn signature::VerificationAlgorithm = match (sig_alg, curve.as_deref()) {
        // sha1/sha256/sha384/sha512 WithRSAEncryption
        ([0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05], _) => {
            &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY
        }
        ([0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b], _) => {
            &signature::RSA_PKCS1_2048_8192_SHA256
        }
        ([0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c], _) => {
            &signature::RSA_PKCS1_2048_8192_SHA384
        }
        ([0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d], _) => {
            &signature::RSA_PKCS1_2048_8192_SHA512
        }
        // ecdsa-with-SHA256 / SHA384
        ([0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02], Some(P256)) => {
            &signature::ECDSA_P256_SHA256_ASN1
        }
        ([0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02], Some(P384)) => {
            &signature::ECDSA_P384_SHA256_ASN1
        }
        ([0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03], Some(P256)) => {
            &signature::ECDSA_P256_SHA384_ASN1
        }
        ([0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03], Some(P384)) => {
            &signature::ECDSA_P384_SHA384_ASN1
        }
        ([0x2b, 0x65, 0x70], _) => &signature::ED25519,
        _ => return false,
    };
    algorithm
        .verify_sig(&spki.subject_public_key.data, message, signature)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generalized_times_are_read_as_utc() {
        assert_eq!(generalized_time(b"20261130120000Z"), Some(1_796_040_000));
        assert_eq!(generalized_time(b"20261130120000.5Z"), Some(1_796_040_000));
        assert_eq!(generalized_time(b"20261130120000"), None);
        assert_eq!(generalized_time(b"2026113012000xZ"), None);
    }

    fn leaf_and_issuer(ca_name: &str) -> (Vec<u8>, Vec<u8>) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, ca_name);
        let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["www.example.com".to_string()])
            .unwrap()
            .signed_by(&rcgen::KeyPair::generate().unwrap(), &ca)
            .unwrap();
        (leaf.der().to_vec(), ca.der().to_vec())
    }

    #[test]
    fn a_request_names_the_leaf_by_its_issuer_and_serial() {
        let (leaf, issuer) = leaf_and_issuer("OCSP Test CA");
        let req = request(&leaf, &issuer).unwrap();
        let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
        assert!(
            req.windows(cert.raw_serial().len())
                .any(|w| w == cert.raw_serial())
        );
        // Not the issuer of this leaf: refused before anything is sent.
        let (_, other) = leaf_and_issuer("Another CA");
        assert!(request(&leaf, &other).is_err());
        assert_eq!(responder_url(&leaf), None);
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let (leaf, issuer) = leaf_and_issuer("OCSP Test CA");
        for junk in [
            &b""[..],
            b"\x30\x03\x0a\x01\x00",
            b"\x30\x00",
            b"\x30\x03\x0a\x01\x06",
            b"\x30\x0a\x0a\x01\x00\xa0\x05\x30\x03\x06\x01\x00",
            &[0xff; 40],
        ] {
            assert!(check(junk, &leaf, &issuer, 0).is_err());
        }
        assert!(
            check(b"\x30\x03\x0a\x01\x06", &leaf, &issuer, 0)
                .unwrap_err()
                .contains("status 6")
        );
    }
}
