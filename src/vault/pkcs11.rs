//! Auto-unseal with a hardware key over PKCS#11: an AES-256 key that never leaves the token
//! (HSM, YubiHSM, a cloud HSM, SoftHSM2 in tests) wraps the vault's unseal key with AES-GCM, so a
//! control plane that can reach its token unseals itself at each start.

use std::path::PathBuf;

use anyhow::{Context, bail};
use cryptoki::{
    context::{CInitializeArgs, CInitializeFlags, Pkcs11},
    mechanism::{Mechanism, aead::GcmParams},
    object::{Attribute, KeyType, ObjectClass, ObjectHandle},
    session::{Session, UserType},
    types::AuthPin,
};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

const IV_BYTES: usize = 12;
/// Binds a wrapped unseal key to its use.
const AAD: &[u8] = b"certdrop vault unseal key";

/// `CERTDROP_VAULT_PKCS11_*`: where the token is and which key on it wraps the vault.
#[derive(Clone, Debug)]
pub struct Pkcs11Config {
    /// `CERTDROP_VAULT_PKCS11_MODULE`: the PKCS#11 library (e.g. `/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// `CERTDROP_VAULT_PKCS11_TOKEN`: the token's label.
    pub token: String,
    /// `CERTDROP_VAULT_PKCS11_PIN` (or `…_PIN_FILE`): the user PIN.
    pub pin: SecretString,
    /// `CERTDROP_VAULT_PKCS11_KEY`: the label of the AES key (created by `vault:init --pkcs11`).
    pub key: String,
}

impl Pkcs11Config {
    fn session(&self) -> anyhow::Result<(Pkcs11, Session)> {
        let pkcs11 = Pkcs11::new(&self.module).with_context(|| {
            format!(
                "cannot load the PKCS#11 module {} (CERTDROP_VAULT_PKCS11_MODULE)",
                self.module.display()
            )
        })?;
        pkcs11
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .context("initialising the PKCS#11 module")?;
        let slot = pkcs11
            .get_slots_with_token()?
            .into_iter()
            .find(|slot| {
                pkcs11
                    .get_token_info(*slot)
                    .is_ok_and(|info| info.label().trim_end() == self.token)
            })
            .with_context(|| {
                format!(
                    "no PKCS#11 token labelled `{}` (CERTDROP_VAULT_PKCS11_TOKEN) is present",
                    self.token
                )
            })?;
        let session = pkcs11.open_rw_session(slot)?;
        let pin = AuthPin::from(self.pin.expose_secret().to_string());
        session
            .login(UserType::User, Some(&pin))
            .context("the token refused CERTDROP_VAULT_PKCS11_PIN")?;
        Ok((pkcs11, session))
    }

    fn find_key(&self, session: &Session) -> anyhow::Result<Option<ObjectHandle>> {
        let found = session.find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Label(self.key.as_bytes().to_vec()),
        ])?;
        if found.len() > 1 {
            bail!(
                "the token holds {} AES keys labelled `{}`; keep one (CERTDROP_VAULT_PKCS11_KEY)",
                found.len(),
                self.key
            );
        }
        Ok(found.into_iter().next())
    }

    /// Wraps `secret` with the token's key; `create` makes the key (AES-256, never extractable)
    /// when the token has none under that label.
    pub fn wrap(&self, secret: &[u8], create: bool) -> anyhow::Result<Vec<u8>> {
        let (_pkcs11, session) = self.session()?;
        let key = match self.find_key(&session)? {
            Some(key) => key,
            None if create => session
                .generate_key(
                    &Mechanism::AesKeyGen,
                    &[
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Sensitive(true),
                        Attribute::Extractable(false),
                        Attribute::Encrypt(true),
                        Attribute::Decrypt(true),
                        Attribute::ValueLen(32.into()),
                        Attribute::Label(self.key.as_bytes().to_vec()),
                    ],
                )
                .context("creating the AES key on the token")?,
            None => bail!(
                "the token has no AES key labelled `{}` (CERTDROP_VAULT_PKCS11_KEY)",
                self.key
            ),
        };
        let mut iv = [0u8; IV_BYTES];
        rand::rng().fill_bytes(&mut iv);
        let mut out = iv.to_vec();
        let params = GcmParams::new(&mut iv, AAD, 128.into())?;
        out.extend(session.encrypt(&Mechanism::AesGcm(params), key, secret)?);
        Ok(out)
    }

    /// Opens what `wrap` made.
    pub fn unwrap(&self, wrapped: &[u8]) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        if wrapped.len() <= IV_BYTES {
            bail!("the wrapped unseal key is too short");
        }
        let (_pkcs11, session) = self.session()?;
        let key = self.find_key(&session)?.with_context(|| {
            format!(
                "the token has no AES key labelled `{}` (CERTDROP_VAULT_PKCS11_KEY)",
                self.key
            )
        })?;
        let mut iv = [0u8; IV_BYTES];
        iv.copy_from_slice(&wrapped[..IV_BYTES]);
        let params = GcmParams::new(&mut iv, AAD, 128.into())?;
        let plain = session
            .decrypt(&Mechanism::AesGcm(params), key, &wrapped[IV_BYTES..])
            .context("the token's key does not open this vault's unseal key")?;
        Ok(Zeroizing::new(plain))
    }
}
