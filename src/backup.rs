//! `certdrop backup --to DIR`: a consistent copy of what a control plane cannot lose — the
//! SQLite database (copied online with `VACUUM INTO`, while `serve` runs) and the vault
//! identity, without which no stored key opens. Keys stay sealed in the copy; the target must
//! be a directory only certdrop's user can open (0700), since it holds the vault identity.
//! Restoring is using the directory as `CERTDROP_DATA_DIR`.

use std::{
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use crate::{
    config::{Config, DbBackend},
    db,
};

/// The file names a restored data directory uses (the defaults of `CERTDROP_DATA_DIR`).
pub const DATABASE_FILE: &str = "certdrop.db";
pub const IDENTITY_FILE: &str = "vault-identity.age";

/// What a backup wrote: each file with its size, and whether the database is among them (on
/// PostgreSQL it is `pg_dump`'s job).
pub struct Backup {
    pub dir: PathBuf,
    pub files: Vec<(String, u64)>,
    pub database_included: bool,
}

/// Writes the backup into `to` (created 0700 when missing; refused when it is open to others or
/// already holds a backup).
pub async fn run(config: &Config, to: &Path) -> anyhow::Result<Backup> {
    prepare_target(to)?;
    let mut files = Vec::new();
    // The identity first: a database copy without it could open nothing.
    // A rotation left half done leaves its other identities beside it: they go too.
    let paths = crate::vault::IdentityPaths {
        current: config.vault_identity.clone(),
    };
    let identities = [
        (paths.current.clone(), IDENTITY_FILE.to_string()),
        (paths.next(), format!("{IDENTITY_FILE}.next")),
        (paths.retired(), format!("{IDENTITY_FILE}.retired")),
        // A split vault's identity rests wrapped: the backup holds nothing its shares do not
        // open, and the seal file says how they do.
        (
            crate::vault::SealFile::path(&paths.current),
            format!("{IDENTITY_FILE}.seal"),
        ),
    ];
    if !config.vault_identity.is_file() {
        bail!(
            "there is no vault identity at {} (CERTDROP_VAULT_IDENTITY): run the backup where `certdrop serve` runs",
            config.vault_identity.display()
        );
    }
    for (from, name) in identities.iter().filter(|(from, _)| from.is_file()) {
        let bytes = zeroize::Zeroizing::new(
            std::fs::read(from).with_context(|| format!("cannot read {}", from.display()))?,
        );
        write_private(&to.join(name), &bytes)?;
        files.push((name.clone(), bytes.len() as u64));
    }
    let database_included = config.db_backend == DbBackend::Sqlite;
    if database_included {
        let target = to.join(DATABASE_FILE);
        let pool = db::connect(config).await?;
        sqlx::query("VACUUM INTO $1")
            .bind(target.display().to_string())
            .execute(&pool)
            .await
            .with_context(|| format!("cannot copy the database into {}", target.display()))?;
        pool.close().await;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))?;
        files.push((DATABASE_FILE.into(), std::fs::metadata(&target)?.len()));
    }
    write_manifest(to, &files, config.db_backend)?;
    Ok(Backup {
        dir: to.to_path_buf(),
        files,
        database_included,
    })
}

fn prepare_target(to: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(to) {
        Ok(meta) if !meta.is_dir() => bail!("{} is not a directory", to.display()),
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode != 0o700 {
                bail!(
                    "{} is mode {mode:o}, open to other users; a backup holds the vault identity. \
                     Run `chmod 700 {}`, or name a directory that does not exist yet (it is created 0700).",
                    to.display(),
                    to.display()
                );
            }
            if to.join(DATABASE_FILE).exists() || to.join(IDENTITY_FILE).exists() {
                bail!(
                    "{} already holds a backup; name a new directory for this one",
                    to.display()
                );
            }
            Ok(())
        }
        Err(_) => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(to)
            .with_context(|| format!("cannot create {}", to.display())),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

/// `backup.json`: when, by which version, and each file's size and SHA-256, to check a copy.
fn write_manifest(to: &Path, files: &[(String, u64)], backend: DbBackend) -> anyhow::Result<()> {
    let mut listed = Vec::new();
    for (name, size) in files {
        let digest = Sha256::digest(std::fs::read(to.join(name))?);
        listed
            .push(serde_json::json!({"file": name, "bytes": size, "sha256": hex::encode(digest)}));
    }
    let manifest = serde_json::json!({
        "created_at": crate::web::rfc3339(db::now()),
        "certdrop": env!("CARGO_PKG_VERSION"),
        "database": match backend {
            DbBackend::Sqlite => "sqlite: certdrop.db",
            DbBackend::Postgres => "postgresql: not included; back it up with pg_dump",
        },
        "files": listed,
    });
    write_private(
        &to.join("backup.json"),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )
}
