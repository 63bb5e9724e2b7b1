//! The server-side vault verbs that change how the identity rests: `vault:init` splits it,
//! `vault:rekey` hands out new shares, and the offline verbs (`vault:rotate`) get the unseal key
//! from the token or from K shares on standard input.

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::json;

use super::{
    IdentityPaths, SealFile, UnsealKey, Vault, at_rest, pkcs11::Pkcs11Config, read_identity,
    seal_secret_to, shamir::Share, write_identity,
};
use crate::config::Config;

/// Whether the identity file already rests wrapped.
fn wrapped(path: &Path) -> anyhow::Result<bool> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
    );
    Ok(text.contains(at_rest::WRAPPED_PREFIX))
}

/// The identity files on disk: the current one, and a rotation's next and retired ones.
fn identity_files(paths: &IdentityPaths) -> Vec<std::path::PathBuf> {
    [paths.current.clone(), paths.next(), paths.retired()]
        .into_iter()
        .filter(|p| p.exists())
        .collect()
}

/// Splits the vault: a fresh unseal key wraps every identity file, and K of N shares of it are
/// returned to print once. The seal file is written first, so an interrupted run leaves files
/// that the same key opens, and running it again finishes.
pub fn init(
    config: &Config,
    threshold: u8,
    shares: u8,
    pkcs11: bool,
) -> anyhow::Result<Vec<Share>> {
    let path = &config.vault_identity;
    if SealFile::read(path)?.is_some() && wrapped(path)? {
        bail!(
            "the vault is split already ({}); `certdrop vault:rekey` hands out new shares",
            SealFile::path(path).display()
        );
    }
    // Creates the identity on a first run, and finishes a rotation's swap.
    let vault = Vault::open_or_create(path)?;
    let token = token_for(config, pkcs11)?;
    let key = UnsealKey::generate();
    let (seal, shares) = SealFile::new(&key, threshold, shares, token)?;
    let files = identity_files(vault.paths());
    let identities = files
        .iter()
        .map(|f| read_identity(f, None))
        .collect::<anyhow::Result<Vec<_>>>()?;
    seal.write(path)?;
    for (file, identity) in files.iter().zip(&identities) {
        write_identity(file, identity, Some(&key))?;
    }
    Ok(shares)
}

fn token_for(config: &Config, wanted: bool) -> anyhow::Result<Option<&Pkcs11Config>> {
    match (wanted, &config.vault_pkcs11) {
        (false, _) => Ok(None),
        (true, Some(token)) => Ok(Some(token)),
        (true, None) => bail!(
            "--pkcs11 needs CERTDROP_VAULT_PKCS11_MODULE, CERTDROP_VAULT_PKCS11_TOKEN and CERTDROP_VAULT_PKCS11_PIN"
        ),
    }
}

/// New shares (K of N) for the same unseal key: old shares stop counting at once. The token's
/// wrapping is kept, or added with `pkcs11`.
pub fn rekey(
    config: &Config,
    key: &UnsealKey,
    threshold: u8,
    shares: u8,
    pkcs11: bool,
) -> anyhow::Result<Vec<Share>> {
    let path = &config.vault_identity;
    let old = SealFile::read(path)?.context("the vault is not split; run `certdrop vault:init`")?;
    let token = token_for(config, pkcs11 || old.pkcs11.is_some())?;
    let (seal, shares) = SealFile::new(key, threshold, shares, token)?;
    seal.write(path)?;
    Ok(shares)
}

/// The unseal key for a verb run on the server: from the PKCS#11 token when this vault has one,
/// else from K shares, one per line, on standard input. `None` for a vault that is not split.
pub fn offline_key(config: &Config, input: &str) -> anyhow::Result<Option<UnsealKey>> {
    let path = &config.vault_identity;
    let Some(seal) = SealFile::read(path)? else {
        return Ok(None);
    };
    if let (Some(token), Some(_)) = (&config.vault_pkcs11, &seal.pkcs11) {
        match seal.unseal_key_from_token(token) {
            Ok(key) => return Ok(Some(key)),
            Err(err) => eprintln!(
                "The PKCS#11 token did not unseal the vault ({err:#}); reading shares from standard input."
            ),
        }
    }
    let mut shares = Vec::new();
    for (n, line) in input.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let share = Share::parse(line).with_context(|| {
            format!(
                "line {} is not a vault share (cdshare1-…): a character is wrong or missing",
                n + 1
            )
        })?;
        shares.push(share);
    }
    let key = at_rest::combine(&seal, &shares).with_context(|| {
        format!(
            "this vault needs {} of its {} shares on standard input, one per line",
            seal.threshold, seal.shares
        )
    })?;
    read_identity(path, Some(&key)).context("those shares do not open the vault identity")?;
    Ok(Some(key))
}

/// Prints shares once: in the clear, or each sealed to its key holder's age recipient.
pub fn print_shares(
    shares: &[Share],
    threshold: u8,
    recipients: &[String],
    as_json: bool,
) -> anyhow::Result<()> {
    if !recipients.is_empty() && recipients.len() != shares.len() {
        bail!(
            "give --recipient once per share ({} shares, {} recipients)",
            shares.len(),
            recipients.len()
        );
    }
    let texts = shares
        .iter()
        .enumerate()
        .map(|(i, share)| match recipients.get(i) {
            Some(r) => seal_secret_to(std::slice::from_ref(r), share.encode().as_bytes()),
            None => Ok(share.encode().to_string()),
        })
        .collect::<anyhow::Result<Vec<String>>>()?;
    if as_json {
        let mut out = json!({"shares": texts, "threshold": threshold});
        if !recipients.is_empty() {
            out["recipients"] = json!(recipients);
        }
        println!("{out}");
        return Ok(());
    }
    println!(
        "The vault is sealed at rest. {} of these {} shares unseal it; each is shown once, here. Give each to a different key holder:\n",
        threshold,
        shares.len()
    );
    for (i, text) in texts.iter().enumerate() {
        match recipients.get(i) {
            Some(r) => println!(
                "Share {} for {r} (open with `age -d -i KEY`):\n{text}",
                i + 1
            ),
            None => println!("Share {}: {text}", i + 1),
        }
    }
    println!(
        "\nFrom now on `certdrop serve` starts sealed: {threshold} key holders each run `certdrop vault:unseal` (or open /vault/unseal) to open it."
    );
    Ok(())
}

/// Reads standard input whole, for shares.
pub fn read_stdin() -> anyhow::Result<zeroize::Zeroizing<String>> {
    use std::io::Read;
    let mut input = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .read_to_string(&mut input)
        .context("reading shares from standard input")?;
    Ok(input)
}
