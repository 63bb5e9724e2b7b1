//! The vault identity at rest. Until `vault:init` it is a plain file (mode 0600). After it, each
//! identity file holds the identity encrypted (ChaCha20-Poly1305) under a random 32-byte unseal
//! key that rests nowhere: it is split into Shamir shares held by people, and optionally also
//! wrapped by a hardware key over PKCS#11. Beside the identity, `<identity>.seal` says how the
//! vault is split (public facts: the split's id, K, N, and the token-wrapped key if any).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::{Engine, engine::general_purpose::STANDARD};
use chacha20poly1305::{
    ChaCha20Poly1305, KeyInit,
    aead::{Aead, Payload},
};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::shamir::{self, Share};

/// The line that starts a wrapped identity in an identity file.
pub const WRAPPED_PREFIX: &str = "CERTDROP-WRAPPED-IDENTITY-1:";
const AAD: &[u8] = b"certdrop vault identity";
const NONCE_BYTES: usize = 12;

/// The error every use of a sealed vault answers with (503 `vault_sealed` over HTTP).
#[derive(Debug, Clone, Copy)]
pub struct Sealed;

impl std::fmt::Display for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the vault is sealed")
    }
}

impl std::error::Error for Sealed {}

/// The key that wraps the identity files; in memory only, wiped when dropped.
#[derive(Clone)]
pub struct UnsealKey(Zeroizing<Vec<u8>>);

impl UnsealKey {
    pub fn generate() -> Self {
        let mut key = Zeroizing::new(vec![0u8; 32]);
        rand::rng().fill_bytes(&mut key);
        Self(key)
    }

    pub fn from_bytes(bytes: Zeroizing<Vec<u8>>) -> anyhow::Result<Self> {
        if bytes.len() != 32 {
            bail!("an unseal key is 32 bytes");
        }
        Ok(Self(bytes))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new_from_slice(&self.0).expect("32-byte key")
    }

    /// The identity's text, encrypted, as the line an identity file holds.
    pub fn wrap(&self, secret: &str) -> String {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher()
            .encrypt(
                (&nonce).into(),
                Payload {
                    msg: secret.as_bytes(),
                    aad: AAD,
                },
            )
            .expect("encryption in memory");
        let mut body = nonce.to_vec();
        body.extend(sealed);
        format!("{WRAPPED_PREFIX}{}", STANDARD.encode(body))
    }

    /// Opens a wrapped line; `None` when this key did not wrap it.
    pub fn unwrap(&self, line: &str) -> Option<Zeroizing<String>> {
        let body = STANDARD
            .decode(line.strip_prefix(WRAPPED_PREFIX)?.trim())
            .ok()?;
        if body.len() <= NONCE_BYTES {
            return None;
        }
        let (nonce, sealed) = body.split_at(NONCE_BYTES);
        let plain = self
            .cipher()
            .decrypt(
                nonce.into(),
                Payload {
                    msg: sealed,
                    aad: AAD,
                },
            )
            .ok()?;
        String::from_utf8(plain).ok().map(Zeroizing::new)
    }
}

impl std::fmt::Debug for UnsealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnsealKey(<not shown>)")
    }
}

/// How the vault rests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A plain identity file (before `vault:init`).
    Plain,
    /// Wrapped; K of N shares unseal it.
    Shamir,
    /// Wrapped; a PKCS#11 token unseals it at start (and the shares still do).
    Pkcs11,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Shamir => "shamir",
            Mode::Pkcs11 => "pkcs11",
        }
    }
}

/// `<identity>.seal`: how the vault is split. Nothing in it opens anything alone.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SealFile {
    pub version: u32,
    /// The split's id (8 hex digits), carried by each of its shares.
    pub set: String,
    pub threshold: u8,
    pub shares: u8,
    /// The unseal key, wrapped by the key the shares give back.
    pub key: String,
    /// The unseal key wrapped by the PKCS#11 token's AES key (base64), in `pkcs11` mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkcs11: Option<String>,
}

impl SealFile {
    pub fn path(identity: &Path) -> PathBuf {
        let mut name = identity.as_os_str().to_owned();
        name.push(".seal");
        PathBuf::from(name)
    }

    pub fn read(identity: &Path) -> anyhow::Result<Option<SealFile>> {
        let path = Self::path(identity);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| {
                format!("{} is not a certdrop seal file", path.display())
            })?)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn write(&self, identity: &Path) -> anyhow::Result<()> {
        let path = Self::path(identity);
        super::write_private(&path, serde_json::to_string_pretty(self)?.as_bytes())
    }

    pub fn mode(&self) -> Mode {
        if self.pkcs11.is_some() {
            Mode::Pkcs11
        } else {
            Mode::Shamir
        }
    }

    pub fn set_id(&self) -> u32 {
        u32::from_str_radix(&self.set, 16).unwrap_or(0)
    }

    /// Why `share` cannot count toward this split, if it cannot.
    pub fn refuses(&self, share: &Share) -> Option<&'static str> {
        if share.set != self.set_id() {
            Some(
                "This share belongs to another split of the vault (an earlier one, before a rekey, or another installation's).",
            )
        } else if share.threshold != self.threshold || share.index > self.shares {
            Some("This share does not match this vault's split (its threshold or index differ).")
        } else {
            None
        }
    }

    /// A new split of K of N of `key` (and the token's wrapping of it, with `pkcs11`): the seal
    /// file and the shares to hand out.
    pub fn new(
        key: &UnsealKey,
        threshold: u8,
        shares: u8,
        pkcs11: Option<&super::pkcs11::Pkcs11Config>,
    ) -> anyhow::Result<(SealFile, Vec<Share>)> {
        if !(1..=shares).contains(&threshold) || shares > shamir::MAX_SHARES {
            bail!(
                "choose 1 ≤ --threshold ≤ --shares ≤ {} (got {threshold} of {shares})",
                shamir::MAX_SHARES
            );
        }
        let pkcs11 = match pkcs11 {
            Some(token) => Some(STANDARD.encode(token.wrap(key.bytes(), true)?)),
            None => None,
        };
        let share_key = UnsealKey::generate();
        let set = shamir::new_set();
        let seal = SealFile {
            version: 1,
            set: format!("{set:08x}"),
            threshold,
            shares,
            key: share_key.wrap(&hex::encode(key.bytes())),
            pkcs11,
        };
        let shares = shamir::split(share_key.bytes(), threshold, shares, set);
        Ok((seal, shares))
    }

    /// The unseal key, given the key the shares combined into; `None` when they were not this
    /// split's right shares.
    fn open_key(&self, share_key: &UnsealKey) -> Option<UnsealKey> {
        let hex_key = share_key.unwrap(&self.key)?;
        let bytes = Zeroizing::new(hex::decode(hex_key.as_str()).ok()?);
        UnsealKey::from_bytes(bytes).ok()
    }

    /// The unseal key from the PKCS#11 token, in `pkcs11` mode.
    pub fn unseal_key_from_token(
        &self,
        token: &super::pkcs11::Pkcs11Config,
    ) -> anyhow::Result<UnsealKey> {
        let wrapped = self
            .pkcs11
            .as_deref()
            .context("this vault was not initialised with --pkcs11")?;
        let wrapped = STANDARD
            .decode(wrapped)
            .context("the seal file's pkcs11 field is not base64")?;
        UnsealKey::from_bytes(token.unwrap(&wrapped)?)
    }
}

/// The unseal key `shares` give, once they are at least the threshold of `seal`'s split, each
/// belongs to it, and together they open its wrapped key.
pub fn combine(seal: &SealFile, shares: &[Share]) -> anyhow::Result<UnsealKey> {
    if let Some(why) = shares.iter().find_map(|s| seal.refuses(s)) {
        bail!("{why}");
    }
    let mut distinct: Vec<Share> = Vec::new();
    for share in shares {
        if !distinct.iter().any(|d| d.index == share.index) {
            distinct.push(share.clone());
        }
    }
    if distinct.len() < seal.threshold as usize {
        bail!(
            "{} different share(s) given; this vault needs {}",
            distinct.len(),
            seal.threshold
        );
    }
    let share_key = UnsealKey::from_bytes(shamir::combine(&distinct[..seal.threshold as usize]))?;
    seal.open_key(&share_key)
        .context("these shares together do not open this vault")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapped_identity_opens_with_its_key_only() {
        let key = UnsealKey::generate();
        let line = key.wrap("AGE-SECRET-KEY-1EXAMPLE");
        assert!(line.starts_with(WRAPPED_PREFIX));
        assert!(!line.contains("AGE-SECRET-KEY"));
        assert_eq!(
            key.unwrap(&line).unwrap().as_str(),
            "AGE-SECRET-KEY-1EXAMPLE"
        );
        assert!(UnsealKey::generate().unwrap(&line).is_none());
        // A changed character anywhere in the body is refused.
        let mut tampered = line.clone().into_bytes();
        let at = WRAPPED_PREFIX.len() + 20;
        tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
        assert!(key.unwrap(&String::from_utf8(tampered).unwrap()).is_none());
    }

    #[test]
    fn k_shares_of_the_split_give_the_key_and_others_are_refused() {
        let key = UnsealKey::generate();
        let (seal, shares) = SealFile::new(&key, 2, 3, None).unwrap();
        let got = combine(&seal, &[shares[2].clone(), shares[0].clone()]).unwrap();
        assert_eq!(got.bytes(), key.bytes());
        // The same share twice is one share.
        assert!(combine(&seal, &[shares[1].clone(), shares[1].clone()]).is_err());
        let (_, other) = SealFile::new(&key, 2, 3, None).unwrap();
        // Right format, right split, wrong bytes: refused by the wrapped key, not by format.
        let mut forged = shares[1].clone();
        forged.data[0] ^= 1;
        assert!(combine(&seal, &[shares[0].clone(), forged]).is_err());
        assert!(combine(&seal, &[shares[0].clone(), other[1].clone()]).is_err());
        assert!(SealFile::new(&key, 4, 3, None).is_err());
        assert!(SealFile::new(&key, 0, 3, None).is_err());
        assert!(SealFile::new(&key, 2, 17, None).is_err());
    }
}
