//! Fleet attestation: the operator's Ed25519 key vouches for an edge machine's age recipient.
//! With `CERTDROP_FLEET_PUBLIC_KEY` set, a node enrolls only with an attestation signed by that
//! key, and is then confirmed by it (no admin needed); the private key stays with the operator's
//! provisioning, never on the control plane. Pure functions: keys in, bytes out.

use anyhow::{Context, bail};
use aws_lc_rs::{
    rand::SystemRandom,
    signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use zeroize::Zeroizing;

/// What an attestation signs: a fixed context, so the signature means nothing elsewhere.
fn message(recipient: &str) -> Vec<u8> {
    format!("certdrop edge node attestation v1\n{}", recipient.trim()).into_bytes()
}

/// The operator's public key, as `CERTDROP_FLEET_PUBLIC_KEY` gives it (base64 of 32 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetPublicKey([u8; 32]);

impl FleetPublicKey {
    pub fn parse(raw: &str) -> anyhow::Result<Self> {
        let bytes = STANDARD
            .decode(raw.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok());
        match bytes {
            Some(b) => Ok(Self(b)),
            None => bail!(
                "CERTDROP_FLEET_PUBLIC_KEY is not an Ed25519 public key (base64 of 32 bytes); `certdrop fleet:keygen` prints one"
            ),
        }
    }

    pub fn encoded(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Whether `attestation` (base64) is this key's signature over `recipient`.
    pub fn verifies(&self, recipient: &str, attestation: &str) -> bool {
        let Ok(signature) = STANDARD.decode(attestation.trim()) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(&message(recipient), &signature)
            .is_ok()
    }
}

/// A new fleet key: the private key as PKCS#8 PEM (for the operator to keep offline) and the
/// public key to configure.
pub fn generate() -> anyhow::Result<(Zeroizing<String>, FleetPublicKey)> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| anyhow::anyhow!("cannot generate an Ed25519 key"))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| anyhow::anyhow!("cannot read the generated key"))?;
    let public = <[u8; 32]>::try_from(pair.public_key().as_ref()).context("public key length")?;
    let pem = crate::certs::pem::encode("PRIVATE KEY", pkcs8.as_ref());
    Ok((pem, FleetPublicKey(public)))
}

/// Signs `recipient` with the fleet private key (PKCS#8 PEM); the attestation in base64.
pub fn attest(private_pem: &str, recipient: &str) -> anyhow::Result<String> {
    if recipient.trim().parse::<age::x25519::Recipient>().is_err() {
        bail!("`{}` is not an age recipient (age1…)", recipient.trim());
    }
    let der = crate::certs::pem::blocks(private_pem.as_bytes())
        .into_iter()
        .find(|b| b.label == "PRIVATE KEY")
        .and_then(|b| b.der)
        .context("the fleet key file holds no PKCS#8 private key (PEM `PRIVATE KEY`)")?;
    let pair = Ed25519KeyPair::from_pkcs8(&der)
        .map_err(|_| anyhow::anyhow!("the fleet key file is not an Ed25519 key"))?;
    Ok(STANDARD.encode(pair.sign(&message(recipient)).as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attestation_verifies_for_its_recipient_only() {
        let (private, public) = generate().unwrap();
        let node = age::x25519::Identity::generate().to_public().to_string();
        let other = age::x25519::Identity::generate().to_public().to_string();
        let attestation = attest(&private, &node).unwrap();
        assert!(public.verifies(&node, &attestation));
        assert!(!public.verifies(&other, &attestation));
        assert!(!public.verifies(&node, "bm90IGEgc2lnbmF0dXJl"));
        let (_, stranger) = generate().unwrap();
        assert!(!stranger.verifies(&node, &attestation));
        assert_eq!(FleetPublicKey::parse(&public.encoded()).unwrap(), public);
        assert!(FleetPublicKey::parse("short").is_err());
        assert!(attest(&private, "not-a-recipient").is_err());
    }
}
