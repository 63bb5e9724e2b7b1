//! Fleet attestation: the operator's Ed25519 key vouches for an edge machine's age recipient
//! *in one slot, for a short while*. With `CERTDROP_FLEET_PUBLIC_KEY` set, a node enrolls only
//! with an attestation signed by that key for the pair and slot whose token it spends, before
//! the attestation expires, and is then confirmed by it (no admin needed). A copy of an attested
//! machine's files is worth nothing elsewhere: another slot or pair does not match, a revoked
//! recipient is refused forever, and the attestation expires. The private key stays with the
//! operator's provisioning, never on the control plane. Pure functions: keys in, bytes out.

use anyhow::{Context, bail};
use aws_lc_rs::{
    rand::SystemRandom,
    signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The longest an attestation may be valid: long enough to provision a machine, short enough
/// that a leaked one soon means nothing.
pub const MAX_VALIDITY_SECONDS: i64 = 7 * 24 * 3600;

/// What an attestation vouches for: this recipient, in this slot of this pair, until then.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub recipient: String,
    pub pair: String,
    pub slot: i64,
    /// Unix seconds.
    pub expires_at: i64,
}

impl Claim {
    /// What the fleet key signs: a fixed context and every field, one per line, so the
    /// signature means nothing elsewhere and no field can be moved into another.
    fn message(&self) -> Vec<u8> {
        format!(
            "certdrop edge node attestation v2\nrecipient {}\npair {}\nslot {}\nexpires {}",
            self.recipient.trim(),
            self.pair,
            self.slot,
            self.expires_at
        )
        .into_bytes()
    }
}

/// An attestation as it travels (`--attestation FILE`): base64 of this JSON.
#[derive(Serialize, Deserialize)]
struct Signed {
    #[serde(flatten)]
    claim: Claim,
    signature: String,
}

/// Why an attestation does not admit a node, in words for the node's operator.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not an attestation of this format (an old v1 signature, a damaged file).
    Malformed,
    /// Not the fleet key's signature, or not of this node's recipient.
    Invalid,
    /// Signed for another pair or slot.
    OtherSlot {
        pair: String,
        slot: i64,
    },
    Expired,
    /// Valid for longer than `MAX_VALIDITY_SECONDS`.
    TooLong,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed => f.write_str(
                "The attestation is not one certdrop reads: sign this node again with `certdrop fleet:attest RECIPIENT --pair PAIR --slot N --key FILE`.",
            ),
            Self::Invalid => f.write_str(
                "The attestation is not the fleet key's signature of this node's recipient: sign this node's own recipient (`certdrop edge:identity` prints it) with the fleet key.",
            ),
            Self::OtherSlot { pair, slot } => write!(
                f,
                "The attestation admits this machine to slot {slot} of pair {pair}, not to the slot this enrollment token is for: sign it for this node's pair and slot."
            ),
            Self::Expired => f.write_str(
                "The attestation has expired: sign the node again with `certdrop fleet:attest` just before it enrolls.",
            ),
            Self::TooLong => write!(
                f,
                "The attestation is valid for longer than {} days; sign it again with a shorter --valid-hours.",
                MAX_VALIDITY_SECONDS / 86400
            ),
        }
    }
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

    /// Checks `attestation` for `recipient` enrolling in `slot` of `pair` at `now`: the
    /// claim it signed when it admits the node.
    pub fn admits(
        &self,
        attestation: &str,
        recipient: &str,
        pair: &str,
        slot: i64,
        now: i64,
    ) -> Result<Claim, Refusal> {
        let signed: Signed = STANDARD
            .decode(attestation.trim())
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(Refusal::Malformed)?;
        let signature = STANDARD
            .decode(signed.signature.trim())
            .map_err(|_| Refusal::Malformed)?;
        let claim = signed.claim;
        if claim.recipient.trim() != recipient.trim()
            || UnparsedPublicKey::new(&ED25519, &self.0)
                .verify(&claim.message(), &signature)
                .is_err()
        {
            return Err(Refusal::Invalid);
        }
        if claim.pair != pair || claim.slot != slot {
            return Err(Refusal::OtherSlot {
                pair: claim.pair,
                slot: claim.slot,
            });
        }
        if claim.expires_at <= now {
            return Err(Refusal::Expired);
        }
        if claim.expires_at - now > MAX_VALIDITY_SECONDS {
            return Err(Refusal::TooLong);
        }
        Ok(claim)
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

/// Signs `claim` with the fleet private key (PKCS#8 PEM); the attestation in base64.
pub fn attest(private_pem: &str, claim: &Claim) -> anyhow::Result<String> {
    if claim
        .recipient
        .trim()
        .parse::<age::x25519::Recipient>()
        .is_err()
    {
        bail!(
            "`{}` is not an age recipient (age1…)",
            claim.recipient.trim()
        );
    }
    let der = crate::certs::pem::blocks(private_pem.as_bytes())
        .into_iter()
        .find(|b| b.label == "PRIVATE KEY")
        .and_then(|b| b.der)
        .context("the fleet key file holds no PKCS#8 private key (PEM `PRIVATE KEY`)")?;
    let pair = Ed25519KeyPair::from_pkcs8(&der)
        .map_err(|_| anyhow::anyhow!("the fleet key file is not an Ed25519 key"))?;
    let signature = STANDARD.encode(pair.sign(&claim.message()).as_ref());
    let signed = Signed {
        claim: Claim {
            recipient: claim.recipient.trim().to_string(),
            ..claim.clone()
        },
        signature,
    };
    Ok(STANDARD.encode(serde_json::to_vec(&signed)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(recipient: &str, pair: &str, slot: i64, expires_at: i64) -> Claim {
        Claim {
            recipient: recipient.into(),
            pair: pair.into(),
            slot,
            expires_at,
        }
    }

    #[test]
    fn an_attestation_admits_its_recipient_in_its_slot_until_it_expires() {
        let (private, public) = generate().unwrap();
        let node = age::x25519::Identity::generate().to_public().to_string();
        let other = age::x25519::Identity::generate().to_public().to_string();
        let now = 1_000_000;
        let attestation = attest(&private, &claim(&node, "pair-a", 1, now + 3600)).unwrap();
        let admitted = public
            .admits(&attestation, &node, "pair-a", 1, now)
            .unwrap();
        assert_eq!(admitted.expires_at, now + 3600);
        assert_eq!(
            public.admits(&attestation, &other, "pair-a", 1, now),
            Err(Refusal::Invalid)
        );
        for (pair, slot) in [("pair-a", 2), ("pair-b", 1)] {
            assert_eq!(
                public.admits(&attestation, &node, pair, slot, now),
                Err(Refusal::OtherSlot {
                    pair: "pair-a".into(),
                    slot: 1
                })
            );
        }
        assert_eq!(
            public.admits(&attestation, &node, "pair-a", 1, now + 3600),
            Err(Refusal::Expired)
        );
        let forever = attest(
            &private,
            &claim(&node, "pair-a", 1, now + MAX_VALIDITY_SECONDS + 1),
        )
        .unwrap();
        assert_eq!(
            public.admits(&forever, &node, "pair-a", 1, now),
            Err(Refusal::TooLong)
        );
        let (_, stranger) = generate().unwrap();
        assert_eq!(
            stranger.admits(&attestation, &node, "pair-a", 1, now),
            Err(Refusal::Invalid)
        );
        assert_eq!(FleetPublicKey::parse(&public.encoded()).unwrap(), public);
        assert!(FleetPublicKey::parse("short").is_err());
        assert!(attest(&private, &claim("not-a-recipient", "pair-a", 1, now)).is_err());
    }

    #[test]
    fn a_changed_field_or_an_old_signature_admits_nobody() {
        let (private, public) = generate().unwrap();
        let node = age::x25519::Identity::generate().to_public().to_string();
        let now = 1_000_000;
        let attestation = attest(&private, &claim(&node, "pair-a", 1, now + 60)).unwrap();
        // Moving the attestation to another slot by editing its JSON breaks the signature.
        let mut json: serde_json::Value =
            serde_json::from_slice(&STANDARD.decode(&attestation).unwrap()).unwrap();
        json["slot"] = 2.into();
        let edited = STANDARD.encode(serde_json::to_vec(&json).unwrap());
        assert_eq!(
            public.admits(&edited, &node, "pair-a", 2, now),
            Err(Refusal::Invalid)
        );
        // A bare v1 signature, or noise, is not an attestation any more.
        for malformed in ["bm90IGEgc2lnbmF0dXJl", "", "%%%"] {
            assert_eq!(
                public.admits(malformed, &node, "pair-a", 1, now),
                Err(Refusal::Malformed)
            );
        }
    }
}
