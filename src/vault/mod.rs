//! The sealed vault: the only road from a plaintext private key to storage. A key is sealed with
//! age to the vault identity's recipient the moment it is validated; only the sealed (armored)
//! bytes are stored. `PlainKey` lives in zeroizing memory and never prints itself.

pub mod rotate;

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    str::FromStr,
    sync::RwLock,
};

use age::x25519::{Identity, Recipient};
use anyhow::{Context, bail};
use secrecy::ExposeSecret;
use zeroize::Zeroizing;

/// A private key in PEM, in memory only, wiped when dropped.
pub struct PlainKey(Zeroizing<String>);

impl PlainKey {
    pub fn from_pem(pem: Zeroizing<String>) -> Self {
        Self(pem)
    }

    pub fn pem(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for PlainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PlainKey(<sealed material, not shown>)")
    }
}

/// A key sealed with age (ASCII armour) and the recipient it is sealed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedKey {
    pub armored: String,
    pub recipient: String,
}

/// Seals to any age recipient (the vault's, or an edge node's own).
pub fn seal_to(recipient: &str, key: &PlainKey) -> anyhow::Result<SealedKey> {
    let parsed =
        Recipient::from_str(recipient).map_err(|e| anyhow::anyhow!("not an age recipient: {e}"))?;
    let armored = age::encrypt_and_armor(&parsed, key.pem().as_bytes()).context("sealing a key")?;
    Ok(SealedKey {
        armored,
        recipient: recipient.to_string(),
    })
}

/// Seals secret bytes (not a PEM key: a TLS session ticket key) to every recipient in one
/// envelope that each of them can open.
pub fn seal_secret_to(recipients: &[String], secret: &[u8]) -> anyhow::Result<String> {
    let parsed = recipients
        .iter()
        .map(|r| {
            Recipient::from_str(r)
                .map(|r| Box::new(r) as Box<dyn age::Recipient>)
                .map_err(|e| anyhow::anyhow!("not an age recipient: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let encryptor = age::Encryptor::with_recipients(parsed.iter().map(|r| r.as_ref()))
        .context("sealing a secret to no recipient")?;
    let mut armored = Vec::new();
    let mut writer = encryptor.wrap_output(age::armor::ArmoredWriter::wrap_output(
        &mut armored,
        age::armor::Format::AsciiArmor,
    )?)?;
    writer.write_all(secret)?;
    writer.finish()?.finish()?;
    String::from_utf8(armored).context("age armour is text")
}

/// Opens sealed bytes with any of `identities`, into memory that is wiped when dropped.
pub fn open_secret_with(
    identities: &[Identity],
    sealed: &str,
) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let decryptor = age::Decryptor::new_buffered(age::armor::ArmoredReader::new(sealed.as_bytes()))
        .context("reading a sealed key")?;
    let mut reader = decryptor
        .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
        .context("no identity here opens this sealed key")?;
    let mut plain = Zeroizing::new(Vec::new());
    reader
        .read_to_end(&mut plain)
        .context("opening a sealed key")?;
    Ok(plain)
}

/// Opens a sealed key with any of `identities`.
pub fn open_with(identities: &[Identity], sealed: &str) -> anyhow::Result<PlainKey> {
    let mut plain = open_secret_with(identities, sealed)?;
    let text =
        String::from_utf8(std::mem::take(&mut *plain)).context("a sealed key is not text")?;
    Ok(PlainKey(Zeroizing::new(text)))
}

/// Where the identity files of one vault live: the current one, and during a rotation the next
/// one and the retired one (both still able to open keys until the rotation finishes).
#[derive(Clone, Debug)]
pub struct IdentityPaths {
    pub current: PathBuf,
}

impl IdentityPaths {
    pub fn next(&self) -> PathBuf {
        suffixed(&self.current, "next")
    }

    pub fn retired(&self) -> PathBuf {
        suffixed(&self.current, "retired")
    }
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

/// Writes a new identity file, mode 0600, atomically (temp file, fsync, rename).
pub fn write_identity(path: &Path, identity: &Identity) -> anyhow::Result<()> {
    let tmp = suffixed(path, "tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let secret = identity.to_string();
    let body = Zeroizing::new(format!(
        "# created: {}\n# public key: {}\n{}\n",
        crate::web::rfc3339(crate::db::now()),
        identity.to_public(),
        secret.expose_secret()
    ));
    file.write_all(body.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot move the identity into {}", path.display()))?;
    Ok(())
}

/// Reads an identity file, refusing one that other users can read.
pub fn read_identity(path: &Path) -> anyhow::Result<Identity> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("cannot read the vault identity {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            bail!(
                "the vault identity {} is readable by other users (mode {:o}); run: `chmod 600 {}`",
                path.display(),
                mode & 0o777,
                path.display()
            );
        }
    }
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the vault identity {}", path.display()))?,
    );
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .with_context(|| {
            format!(
                "{} holds no age identity (AGE-SECRET-KEY-…)",
                path.display()
            )
        })?;
    Identity::from_str(line)
        .map_err(|e| anyhow::anyhow!("{}: not a valid age identity: {e}", path.display()))
}

struct Loaded {
    /// Seals new keys.
    primary: Identity,
    recipient: String,
    /// Everything that may open a key: the primary, and a rotation's next and retired ones.
    all: Vec<Identity>,
    stamp: Option<std::time::SystemTime>,
}

/// The server's vault: seals with the current identity, opens with any identity on disk.
/// It notices when `vault:rotate` replaced the identity file and reloads it before sealing.
pub struct Vault {
    paths: IdentityPaths,
    loaded: RwLock<Loaded>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("path", &self.paths.current)
            .finish_non_exhaustive()
    }
}

fn stamp(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Vault {
    /// Opens the identity at `path`, creating it (0600) on first start. An interrupted rotation
    /// is picked up: its next and retired identities still open keys.
    pub fn open_or_create(path: &Path) -> anyhow::Result<Self> {
        let paths = IdentityPaths {
            current: path.to_path_buf(),
        };
        if !path.exists() {
            if paths.next().exists() {
                // A rotation stopped between its two renames: finish the swap.
                std::fs::rename(paths.next(), path)?;
            } else {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                write_identity(path, &Identity::generate())?;
                tracing::info!(path = %path.display(), "created a new vault identity");
            }
        }
        let loaded = Self::load(&paths)?;
        Ok(Self {
            paths,
            loaded: RwLock::new(loaded),
        })
    }

    fn load(paths: &IdentityPaths) -> anyhow::Result<Loaded> {
        let primary = read_identity(&paths.current)?;
        let mut all = vec![primary.clone()];
        for extra in [paths.next(), paths.retired()] {
            if extra.exists() {
                all.push(read_identity(&extra)?);
            }
        }
        Ok(Loaded {
            recipient: primary.to_public().to_string(),
            primary,
            all,
            stamp: stamp(&paths.current),
        })
    }

    fn reload_if_changed(&self) -> anyhow::Result<()> {
        let on_disk = stamp(&self.paths.current);
        let current = self.loaded.read().expect("vault lock").stamp;
        if on_disk != current || self.paths.next().exists() || self.paths.retired().exists() {
            let fresh = Self::load(&self.paths)?;
            *self.loaded.write().expect("vault lock") = fresh;
        }
        Ok(())
    }

    pub fn paths(&self) -> &IdentityPaths {
        &self.paths
    }

    /// The recipient new keys are sealed to.
    pub fn recipient(&self) -> anyhow::Result<String> {
        self.reload_if_changed()?;
        Ok(self.loaded.read().expect("vault lock").recipient.clone())
    }

    pub fn seal(&self, key: &PlainKey) -> anyhow::Result<SealedKey> {
        self.reload_if_changed()?;
        let recipient = self
            .loaded
            .read()
            .expect("vault lock")
            .primary
            .to_public()
            .to_string();
        seal_to(&recipient, key)
    }

    pub fn open(&self, sealed: &str) -> anyhow::Result<PlainKey> {
        let first = {
            let loaded = self.loaded.read().expect("vault lock");
            open_with(&loaded.all, sealed)
        };
        match first {
            Ok(key) => Ok(key),
            Err(_) => {
                self.reload_if_changed()?;
                open_with(&self.loaded.read().expect("vault lock").all, sealed)
            }
        }
    }

    #[doc(hidden)]
    pub fn primary_identity(&self) -> Identity {
        self.loaded.read().expect("vault lock").primary.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PlainKey {
        PlainKey::from_pem(crate::certs::pem::encode(
            "PRIVATE KEY",
            b"not a key, only bytes",
        ))
    }

    #[test]
    fn a_key_sealed_by_the_vault_opens_with_its_identity_only() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open_or_create(&dir.path().join("id.age")).unwrap();
        let sealed = vault.seal(&key()).unwrap();
        assert!(
            sealed
                .armored
                .starts_with("-----BEGIN AGE ENCRYPTED FILE-----")
        );
        assert!(
            !sealed.armored.contains("bm90IGEga2V5"),
            "the body is not in the clear"
        );
        assert_eq!(vault.open(&sealed.armored).unwrap().pem(), key().pem());
        assert!(open_with(&[Identity::generate()], &sealed.armored).is_err());
        assert_eq!(
            format!("{:?}", key()),
            "PlainKey(<sealed material, not shown>)"
        );
    }

    #[cfg(unix)]
    #[test]
    fn an_identity_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.age");
        Vault::open_or_create(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Vault::open_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
