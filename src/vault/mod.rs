//! The sealed vault: the only road from a plaintext private key to storage. A key is sealed with
//! age to the vault identity's recipient the moment it is validated; only the sealed (armored)
//! bytes are stored. `PlainKey` lives in zeroizing memory and never prints itself.

pub mod admin;
pub mod at_rest;
pub mod pkcs11;
pub mod rotate;
pub mod routes;
pub mod shamir;

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

pub use at_rest::{Mode, SealFile, Sealed, UnsealKey};

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

/// Writes `bytes` to `path`, mode 0600, atomically (temp file, fsync, rename).
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = suffixed(path, "tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot move {} into place", path.display()))?;
    Ok(())
}

/// Writes an identity file: the identity in the clear, or wrapped by `key` once the vault is
/// split (`vault:init`).
pub fn write_identity(
    path: &Path,
    identity: &Identity,
    key: Option<&UnsealKey>,
) -> anyhow::Result<()> {
    let secret = identity.to_string();
    let body = match key {
        Some(key) => Zeroizing::new(format!(
            "# certdrop vault identity, sealed at rest: unseal it with its shares (certdrop vault:unseal)\n# created: {}\n# public key: {}\n{}\n",
            crate::web::rfc3339(crate::db::now()),
            identity.to_public(),
            key.wrap(secret.expose_secret())
        )),
        None => Zeroizing::new(format!(
            "# created: {}\n# public key: {}\n{}\n",
            crate::web::rfc3339(crate::db::now()),
            identity.to_public(),
            secret.expose_secret()
        )),
    };
    write_private(path, body.as_bytes())
}

/// Reads an identity file, refusing one that other users can read. A wrapped identity needs
/// the unseal key: without it the answer is [`Sealed`].
pub fn read_identity(path: &Path, key: Option<&UnsealKey>) -> anyhow::Result<Identity> {
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
        .find(|l| l.starts_with("AGE-SECRET-KEY-") || l.starts_with(at_rest::WRAPPED_PREFIX))
        .with_context(|| {
            format!(
                "{} holds no age identity (AGE-SECRET-KEY-…)",
                path.display()
            )
        })?;
    let plain;
    let line = if line.starts_with(at_rest::WRAPPED_PREFIX) {
        let key = key.ok_or(Sealed)?;
        plain = key
            .unwrap(line)
            .ok_or_else(|| anyhow::Error::new(WrongKey))?;
        plain.as_str()
    } else {
        line
    };
    Identity::from_str(line)
        .map_err(|e| anyhow::anyhow!("{}: not a valid age identity: {e}", path.display()))
}

/// The unseal key given does not open the identity files (wrong shares, another split).
#[derive(Debug, Clone, Copy)]
pub struct WrongKey;

impl std::fmt::Display for WrongKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("these shares do not open the vault identity")
    }
}

impl std::error::Error for WrongKey {}

struct Loaded {
    /// Seals new keys.
    primary: Identity,
    recipient: String,
    /// Everything that may open a key: the primary, and a rotation's next and retired ones.
    all: Vec<Identity>,
    stamp: Option<std::time::SystemTime>,
}

/// What the vault holds in memory: nothing while sealed.
#[derive(Default)]
struct Open {
    loaded: Option<Loaded>,
    /// The unseal key, kept while unsealed so that a rotation's new files can be read.
    key: Option<UnsealKey>,
}

/// Where an unseal stands, as `GET /api/v1/vault` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Status {
    pub sealed: bool,
    pub mode: Mode,
    pub threshold: Option<u8>,
    pub shares: Option<u8>,
    pub progress: usize,
}

/// What giving one share did.
#[derive(Debug)]
pub enum Unseal {
    /// Counted; more are needed.
    Progress(usize),
    /// The vault is open (now, or already was).
    Unsealed,
}

/// Why a share was not taken.
#[derive(Debug)]
pub enum UnsealRefusal {
    /// Not a share, or not one of this vault's split: never counted.
    InvalidShare(&'static str),
    /// K shares were given and together they open nothing: progress starts again.
    Failed,
    /// The vault is a plain file: there is nothing to unseal.
    NotSplit,
}

/// The server's vault: seals with the current identity, opens with any identity on disk.
/// It notices when `vault:rotate` replaced the identity file and reloads it before sealing.
/// Once split (`vault:init`) it starts sealed and holds nothing until unsealed.
pub struct Vault {
    paths: IdentityPaths,
    open: RwLock<Open>,
    /// Shares given toward an unseal so far.
    shares: std::sync::Mutex<Vec<shamir::Share>>,
    unsealed: tokio::sync::watch::Sender<bool>,
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
    /// is picked up: its next and retired identities still open keys. A split vault starts
    /// sealed.
    pub fn open_or_create(path: &Path) -> anyhow::Result<Self> {
        let paths = IdentityPaths {
            current: path.to_path_buf(),
        };
        let split = SealFile::read(path)?.is_some();
        if !path.exists() {
            if paths.next().exists() {
                // A rotation stopped between its two renames: finish the swap.
                std::fs::rename(paths.next(), path)?;
            } else if split {
                bail!(
                    "{} is missing but {} says the vault was split: restore the identity file from a backup",
                    path.display(),
                    SealFile::path(path).display()
                );
            } else {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                write_identity(path, &Identity::generate(), None)?;
                tracing::info!(path = %path.display(), "created a new vault identity");
            }
        }
        let loaded = match split {
            true => None,
            false => Some(Self::load(&paths, None)?),
        };
        Ok(Self {
            paths,
            unsealed: tokio::sync::watch::Sender::new(loaded.is_some()),
            open: RwLock::new(Open { loaded, key: None }),
            shares: Default::default(),
        })
    }

    fn load(paths: &IdentityPaths, key: Option<&UnsealKey>) -> anyhow::Result<Loaded> {
        let primary = read_identity(&paths.current, key)?;
        let mut all = vec![primary.clone()];
        for extra in [paths.next(), paths.retired()] {
            if extra.exists() {
                all.push(read_identity(&extra, key)?);
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
        let (current, key) = {
            let open = self.open.read().expect("vault lock");
            let Some(loaded) = &open.loaded else {
                return Err(Sealed.into());
            };
            (loaded.stamp, open.key.clone())
        };
        if on_disk != current || self.paths.next().exists() || self.paths.retired().exists() {
            match Self::load(&self.paths, key.as_ref()) {
                Ok(fresh) => {
                    let mut open = self.open.write().expect("vault lock");
                    if open.loaded.is_some() {
                        open.loaded = Some(fresh);
                    }
                }
                // `vault:init` or `vault:rekey` wrapped the files under a key this process
                // does not hold: what it loaded still opens every key until it restarts.
                Err(err) if err.is::<Sealed>() || err.is::<WrongKey>() => {
                    let mut open = self.open.write().expect("vault lock");
                    if let Some(loaded) = open.loaded.as_mut() {
                        loaded.stamp = on_disk;
                    }
                }
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    pub fn paths(&self) -> &IdentityPaths {
        &self.paths
    }

    fn with_loaded<T>(&self, f: impl FnOnce(&Loaded) -> T) -> anyhow::Result<T> {
        let open = self.open.read().expect("vault lock");
        open.loaded.as_ref().map(f).ok_or_else(|| Sealed.into())
    }

    /// The recipient new keys are sealed to.
    pub fn recipient(&self) -> anyhow::Result<String> {
        self.reload_if_changed()?;
        self.with_loaded(|l| l.recipient.clone())
    }

    pub fn seal(&self, key: &PlainKey) -> anyhow::Result<SealedKey> {
        let recipient = self.recipient()?;
        seal_to(&recipient, key)
    }

    pub fn open(&self, sealed: &str) -> anyhow::Result<PlainKey> {
        match self.with_loaded(|l| open_with(&l.all, sealed))? {
            Ok(key) => Ok(key),
            Err(_) => {
                self.reload_if_changed()?;
                self.with_loaded(|l| open_with(&l.all, sealed))?
            }
        }
    }

    #[doc(hidden)]
    pub fn primary_identity(&self) -> Identity {
        self.with_loaded(|l| l.primary.clone())
            .expect("an unsealed vault")
    }

    /// Whether `vault:init` split the vault (its identity rests wrapped).
    pub fn is_split(&self) -> bool {
        SealFile::path(&self.paths.current).exists()
    }

    pub fn is_sealed(&self) -> bool {
        self.open.read().expect("vault lock").loaded.is_none()
    }

    /// Completes once the vault is unsealed (at once when it is).
    pub async fn wait_unsealed(&self) {
        let mut rx = self.unsealed.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }

    pub fn status(&self) -> anyhow::Result<Status> {
        let seal = SealFile::read(&self.paths.current)?;
        Ok(Status {
            sealed: self.is_sealed(),
            mode: seal.as_ref().map_or(Mode::Plain, SealFile::mode),
            threshold: seal.as_ref().map(|s| s.threshold),
            shares: seal.as_ref().map(|s| s.shares),
            progress: self.shares.lock().expect("shares lock").len(),
        })
    }

    /// Opens the vault with `key`, proving it on the identity files.
    pub fn unseal_with(&self, key: UnsealKey) -> anyhow::Result<()> {
        let loaded = Self::load(&self.paths, Some(&key))?;
        let mut open = self.open.write().expect("vault lock");
        open.loaded = Some(loaded);
        open.key = Some(key);
        drop(open);
        self.shares.lock().expect("shares lock").clear();
        self.unsealed.send_replace(true);
        Ok(())
    }

    /// Counts one key holder's share; the threshold-th opens the vault, or starts again.
    pub fn give_share(&self, text: &str) -> Result<Unseal, UnsealRefusal> {
        let seal = SealFile::read(&self.paths.current)
            .ok()
            .flatten()
            .ok_or(UnsealRefusal::NotSplit)?;
        if !self.is_sealed() {
            return Ok(Unseal::Unsealed);
        }
        let share = shamir::Share::parse(text).ok_or(UnsealRefusal::InvalidShare(
            "That is not a certdrop vault share (cdshare1-…): a character is wrong or missing. Paste it again exactly as it was printed.",
        ))?;
        if let Some(why) = seal.refuses(&share) {
            return Err(UnsealRefusal::InvalidShare(why));
        }
        let given = {
            let mut shares = self.shares.lock().expect("shares lock");
            if !shares.iter().any(|s| s.index == share.index) {
                shares.push(share);
            }
            if shares.len() < seal.threshold as usize {
                return Ok(Unseal::Progress(shares.len()));
            }
            std::mem::take(&mut *shares)
        };
        let key = at_rest::combine(&seal, &given).map_err(|_| UnsealRefusal::Failed)?;
        match self.unseal_with(key) {
            Ok(()) => Ok(Unseal::Unsealed),
            Err(err) => {
                tracing::warn!(error = format!("{err:#}"), "vault: shares did not unseal");
                Err(UnsealRefusal::Failed)
            }
        }
    }

    /// Says at start how the vault rests, and unseals it with the PKCS#11 token when one is
    /// configured and this vault was wrapped by it. Returns whether the token unsealed it.
    pub fn start(&self, token: Option<&pkcs11::Pkcs11Config>) -> bool {
        let seal = match SealFile::read(&self.paths.current) {
            Ok(Some(seal)) => seal,
            Ok(None) => {
                tracing::warn!(
                    path = %self.paths.current.display(),
                    "the vault identity rests in the clear: customer keys are not sealed at rest (on this disk or in backups) until an operator runs `certdrop vault:init`"
                );
                return false;
            }
            Err(err) => {
                tracing::error!(error = format!("{err:#}"), "vault: unreadable seal file");
                return false;
            }
        };
        if let (Some(token), Some(_)) = (token, &seal.pkcs11) {
            match seal
                .unseal_key_from_token(token)
                .and_then(|key| self.unseal_with(key))
            {
                Ok(()) => {
                    tracing::info!("vault: unsealed by the PKCS#11 token");
                    return true;
                }
                Err(err) => tracing::error!(
                    error = format!("{err:#}"),
                    "vault: the PKCS#11 token did not unseal the vault; its key holders can, with their shares"
                ),
            }
        }
        tracing::warn!(
            threshold = seal.threshold,
            shares = seal.shares,
            "vault: sealed; {} of its {} key holders unseal it (`certdrop vault:unseal`, or /vault/unseal)",
            seal.threshold,
            seal.shares
        );
        false
    }

    /// Forgets the identity and the unseal key at once (the emergency button). A plain vault
    /// cannot be sealed: its identity rests on disk.
    pub fn seal_now(&self) -> Result<(), UnsealRefusal> {
        if SealFile::read(&self.paths.current).ok().flatten().is_none() {
            return Err(UnsealRefusal::NotSplit);
        }
        let mut open = self.open.write().expect("vault lock");
        // Dropping wipes: identities zeroize themselves, the key is Zeroizing.
        *open = Open::default();
        drop(open);
        self.shares.lock().expect("shares lock").clear();
        self.unsealed.send_replace(false);
        Ok(())
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
