//! One typed `Config`, read from the environment and validated at start.
//! It never logs a secret: the database and SMTP URLs are `SecretString`s.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

/// Which database engine a URL points at. Both run the same SQL through sqlx's `Any` driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbBackend {
    Sqlite,
    Postgres,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub database_url: SecretString,
    pub db_backend: DbBackend,
    pub listen: SocketAddr,
    /// `None` means "derive it from the bound address" (so port 0 works in tests).
    pub base_url: Option<Url>,
    pub vault_identity: PathBuf,
    pub smtp_url: Option<SecretString>,
    pub mail_from: String,
    pub extra_trust_roots: Option<PathBuf>,
    pub pair_price_cents: i64,
    pub currency: String,
    /// The person who created or confirmed a pair may not approve deployments of keys to it.
    /// Off only for one-person installs (`CERTDROP_SEPARATION_OF_DUTIES=false`).
    pub separation_of_duties: bool,
    /// With a fleet key, nodes enroll only with an attestation signed by it, which confirms them.
    pub fleet_public_key: Option<crate::edge::fleet::FleetPublicKey>,
    /// Backends may be on loopback or link-local addresses (one-host setups, loopback tests).
    pub allow_private_backends: bool,
    /// `CERTDROP_TRUSTED_PROXIES`: load balancers whose `X-Forwarded-For`/`Forwarded` name the
    /// client (rate limits, the audit trail); everyone else's forwarding headers are ignored.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `CERTDROP_APPS_DOMAIN`: each app answers at `<app>.<this>`, the CNAME target of its
    /// custom domains.
    pub apps_domain: Option<String>,
    /// `CERTDROP_DNS_RESOLVER`: the one DNS server certdrop asks (else the system's).
    pub dns_resolver: Option<SocketAddr>,
    /// `CERTDROP_DEPLOY_APPLY_TIMEOUT` (seconds): how long a deployment waits for both nodes of
    /// a pair to apply its configuration before it fails (and can be retried).
    pub apply_timeout: std::time::Duration,
    /// `CERTDROP_METRICS_LISTEN`: a second address serving `/metrics` without a token (for
    /// Prometheus, on a private network); without it `/metrics` takes an admin's API token.
    pub metrics_listen: Option<SocketAddr>,
    /// `CERTDROP_ACME_*`: automatic certificates; `None` (no directory set): ACME is off.
    pub acme: Option<AcmeConfig>,
    /// `CERTDROP_VAULT_PKCS11_*`: a hardware key that unseals the vault at start.
    pub vault_pkcs11: Option<crate::vault::pkcs11::Pkcs11Config>,
}

/// Where certdrop gets automatic certificates, and how.
#[derive(Clone, Debug)]
pub struct AcmeConfig {
    /// `CERTDROP_ACME_DIRECTORY`: the CA's directory URL (Let's Encrypt, its staging, Pebble…).
    pub directory: Url,
    /// `CERTDROP_ACME_EMAIL`: the account's contact, for the CA's expiry and policy notices.
    pub email: Option<String>,
    /// `CERTDROP_ACME_CA_ROOTS`: a PEM file trusted for the directory's own HTTPS (private CAs).
    pub ca_roots: Option<PathBuf>,
    /// `CERTDROP_ACME_EAB_KID` and `CERTDROP_ACME_EAB_HMAC_KEY` (base64url): an External Account
    /// Binding, for CAs that need one.
    pub eab: Option<(String, SecretString)>,
    /// `CERTDROP_ACME_CHALLENGE`: `http-01` (default; `tls-alpn-01` where a node has no plain
    /// HTTP listener) or `tls-alpn-01`.
    pub challenge: AcmeChallenge,
    /// `CERTDROP_ACME_FALLBACK_DAYS`: an uploaded certificate this close to expiry, with no
    /// update under way, is replaced by an ACME one (apps that opted in).
    pub fallback_days: i64,
    /// How often renewals and fallbacks are looked for.
    pub scan_interval: std::time::Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcmeChallenge {
    Http01,
    TlsAlpn01,
}

impl AcmeChallenge {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http01 => "http-01",
            Self::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

impl AcmeConfig {
    /// An ACME configuration for `directory` with every other setting at its default.
    pub fn new(directory: Url) -> Self {
        Self {
            directory,
            email: None,
            ca_roots: None,
            eab: None,
            challenge: AcmeChallenge::Http01,
            fallback_days: 7,
            scan_interval: std::time::Duration::from_secs(60),
        }
    }

    fn from_env() -> anyhow::Result<Option<Self>> {
        let Some(raw) = read_var("CERTDROP_ACME_DIRECTORY")? else {
            return Ok(None);
        };
        let directory = Url::parse(&raw)
            .ok()
            .filter(|u| matches!(u.scheme(), "https" | "http") && u.host_str().is_some())
            .ok_or_else(|| anyhow::anyhow!("CERTDROP_ACME_DIRECTORY: `{raw}` is not a URL; use e.g. https://acme-v02.api.letsencrypt.org/directory"))?;
        let mut acme = Self::new(directory);
        acme.email = read_var("CERTDROP_ACME_EMAIL")?;
        if let Some(email) = &acme.email
            && email.parse::<lettre::Address>().is_err()
        {
            bail!("CERTDROP_ACME_EMAIL: `{email}` is not an email address");
        }
        acme.ca_roots = read_var("CERTDROP_ACME_CA_ROOTS")?.map(PathBuf::from);
        if let Some(path) = acme.ca_roots.as_ref().filter(|p| !p.is_file()) {
            bail!(
                "CERTDROP_ACME_CA_ROOTS: {} is not a readable PEM file",
                path.display()
            );
        }
        acme.eab = match (
            read_var("CERTDROP_ACME_EAB_KID")?,
            read_var("CERTDROP_ACME_EAB_HMAC_KEY")?,
        ) {
            (Some(kid), Some(key)) => Some((kid, SecretString::from(key))),
            (None, None) => None,
            _ => bail!(
                "CERTDROP_ACME_EAB_KID and CERTDROP_ACME_EAB_HMAC_KEY go together: set both (from your CA's account page) or neither"
            ),
        };
        acme.challenge = match read_var("CERTDROP_ACME_CHALLENGE")?.as_deref() {
            None | Some("http-01") => AcmeChallenge::Http01,
            Some("tls-alpn-01") => AcmeChallenge::TlsAlpn01,
            Some(other) => {
                bail!("CERTDROP_ACME_CHALLENGE: `{other}` is neither http-01 nor tls-alpn-01")
            }
        };
        if let Some(raw) = read_var("CERTDROP_ACME_FALLBACK_DAYS")? {
            acme.fallback_days = raw
                .parse()
                .ok()
                .filter(|d| (1..=60).contains(d))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "CERTDROP_ACME_FALLBACK_DAYS: `{raw}` is not a number of days from 1 to 60"
                    )
                })?;
        }
        Ok(Some(acme))
    }
}

/// `CERTDROP_VAULT_PKCS11_MODULE`, `…_TOKEN`, `…_PIN` (or `…_PIN_FILE`) and `…_KEY`: all or
/// none.
fn pkcs11_from_env() -> anyhow::Result<Option<crate::vault::pkcs11::Pkcs11Config>> {
    let Some(module) = read_var("CERTDROP_VAULT_PKCS11_MODULE")? else {
        return Ok(None);
    };
    let need = |name: &str| -> anyhow::Result<String> {
        read_var(name)?.with_context(|| {
            format!("CERTDROP_VAULT_PKCS11_MODULE is set, so {name} is needed too")
        })
    };
    Ok(Some(crate::vault::pkcs11::Pkcs11Config {
        module: PathBuf::from(module),
        token: need("CERTDROP_VAULT_PKCS11_TOKEN")?,
        pin: SecretString::from(need("CERTDROP_VAULT_PKCS11_PIN")?),
        key: read_var("CERTDROP_VAULT_PKCS11_KEY")?.unwrap_or_else(|| "certdrop-vault".into()),
    }))
}

/// Reads a variable, or the contents of the file named by `NAME_FILE` (as vaultwarden allows).
fn read_var(name: &str) -> anyhow::Result<Option<String>> {
    if let Ok(value) = std::env::var(name) {
        let value = value.trim().to_string();
        return Ok((!value.is_empty()).then_some(value));
    }
    let file_var = format!("{name}_FILE");
    if let Ok(path) = std::env::var(&file_var) {
        let value = std::fs::read_to_string(&path)
            .with_context(|| format!("{file_var}: cannot read the file {path}"))?;
        let value = value.trim().to_string();
        return Ok((!value.is_empty()).then_some(value));
    }
    Ok(None)
}

/// The apps domain is a plain hostname (no wildcard): `apps.example.net`.
fn parse_apps_domain(raw: &str) -> anyhow::Result<String> {
    match crate::domains::hostname::normalize(raw) {
        Ok(name) if !name.starts_with("*.") => Ok(name),
        Ok(_) => {
            bail!("CERTDROP_APPS_DOMAIN: give the domain itself (apps.example.net), not a wildcard")
        }
        Err(why) => bail!("CERTDROP_APPS_DOMAIN: {why}"),
    }
}

/// A DNS server as `IP:PORT` (or an IP, port 53).
fn parse_dns_resolver(raw: &str) -> anyhow::Result<SocketAddr> {
    raw.parse()
        .or_else(|_| {
            raw.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .map_err(|_| {
            anyhow::anyhow!(
                "CERTDROP_DNS_RESOLVER: `{raw}` is not IP:PORT; use e.g. 127.0.0.53:53 or 9.9.9.9"
            )
        })
}

/// A whole number of seconds, 1 to 3600.
fn parse_seconds(name: &str, raw: &str) -> anyhow::Result<std::time::Duration> {
    match raw.parse::<u64>() {
        Ok(s) if (1..=3600).contains(&s) => Ok(std::time::Duration::from_secs(s)),
        _ => bail!("{name}: `{raw}` is not a number of seconds from 1 to 3600"),
    }
}

/// A `true`/`false` variable, or `default` when unset.
fn read_bool(name: &str, default: bool) -> anyhow::Result<bool> {
    match read_var(name)?.as_deref() {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => bail!("{name}: `{other}` is neither true nor false"),
    }
}

impl Config {
    /// Reads every setting of PRODUCT.md's configuration table from the environment.
    pub fn from_env() -> anyhow::Result<Self> {
        let data_dir = PathBuf::from(
            read_var("CERTDROP_DATA_DIR")?.unwrap_or_else(|| "./certdrop-data".into()),
        );
        let database_url = read_var("CERTDROP_DATABASE_URL")?;
        let listen = read_var("CERTDROP_LISTEN")?.unwrap_or_else(|| "127.0.0.1:8080".into());
        let base_url = read_var("CERTDROP_BASE_URL")?;
        let vault_identity = read_var("CERTDROP_VAULT_IDENTITY")?;
        let smtp_url = read_var("CERTDROP_SMTP_URL")?;
        let mail_from =
            read_var("CERTDROP_MAIL_FROM")?.unwrap_or_else(|| "certdrop@localhost".into());
        let extra_trust_roots = read_var("CERTDROP_EXTRA_TRUST_ROOTS")?;
        let price = read_var("CERTDROP_PAIR_PRICE_CENTS")?.unwrap_or_else(|| "2000".into());
        let currency = read_var("CERTDROP_CURRENCY")?.unwrap_or_else(|| "USD".into());
        let separation_of_duties = read_bool("CERTDROP_SEPARATION_OF_DUTIES", true)?;
        let allow_private_backends = read_bool("CERTDROP_ALLOW_PRIVATE_BACKENDS", false)?;
        let trusted_proxies = read_var("CERTDROP_TRUSTED_PROXIES")?
            .map(|raw| crate::accounts::forwarded::parse_trusted(&raw))
            .transpose()?
            .unwrap_or_default();
        let apps_domain = read_var("CERTDROP_APPS_DOMAIN")?
            .map(|raw| parse_apps_domain(&raw))
            .transpose()?;
        let dns_resolver = read_var("CERTDROP_DNS_RESOLVER")?
            .map(|raw| parse_dns_resolver(&raw))
            .transpose()?;
        let apply_timeout = read_var("CERTDROP_DEPLOY_APPLY_TIMEOUT")?
            .map(|raw| parse_seconds("CERTDROP_DEPLOY_APPLY_TIMEOUT", &raw))
            .transpose()?;
        let metrics_listen = read_var("CERTDROP_METRICS_LISTEN")?
            .map(|raw| {
                raw.parse::<SocketAddr>().map_err(|_| {
                    anyhow::anyhow!("CERTDROP_METRICS_LISTEN: `{raw}` is not an address and port; use e.g. 10.0.0.2:9180")
                })
            })
            .transpose()?;
        let fleet_public_key = read_var("CERTDROP_FLEET_PUBLIC_KEY")?
            .map(|raw| crate::edge::fleet::FleetPublicKey::parse(&raw))
            .transpose()?;
        let acme = AcmeConfig::from_env()?;
        let vault_pkcs11 = pkcs11_from_env()?;
        let mut config = Self::build(
            data_dir,
            database_url,
            &listen,
            base_url,
            vault_identity,
            smtp_url,
            mail_from,
            extra_trust_roots,
            &price,
            currency,
        )?;
        config.separation_of_duties = separation_of_duties;
        config.fleet_public_key = fleet_public_key;
        config.allow_private_backends = allow_private_backends;
        config.trusted_proxies = trusted_proxies;
        config.apps_domain = apps_domain;
        config.dns_resolver = dns_resolver;
        config.metrics_listen = metrics_listen;
        config.acme = acme;
        config.vault_pkcs11 = vault_pkcs11;
        if let Some(timeout) = apply_timeout {
            config.apply_timeout = timeout;
        }
        Ok(config)
    }

    /// A configuration for a data directory with every other setting at its default.
    pub fn for_data_dir(data_dir: &Path) -> anyhow::Result<Self> {
        Self::build(
            data_dir.to_path_buf(),
            None,
            "127.0.0.1:0",
            None,
            None,
            None,
            "certdrop@localhost".into(),
            None,
            "2000",
            "USD".into(),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        data_dir: PathBuf,
        database_url: Option<String>,
        listen: &str,
        base_url: Option<String>,
        vault_identity: Option<String>,
        smtp_url: Option<String>,
        mail_from: String,
        extra_trust_roots: Option<String>,
        price: &str,
        currency: String,
    ) -> anyhow::Result<Self> {
        let database_url = database_url
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("certdrop.db").display()));
        let db_backend = parse_database_url(&database_url)?;
        let listen: SocketAddr = listen.parse().map_err(|_| {
            anyhow::anyhow!(
                "CERTDROP_LISTEN: `{listen}` is not an address and port; use e.g. 127.0.0.1:8080"
            )
        })?;
        let base_url = base_url.map(|raw| parse_base_url(&raw)).transpose()?;
        let vault_identity = vault_identity
            .map(PathBuf::from)
            .unwrap_or_else(|| data_dir.join("vault-identity.age"));
        if let Some(raw) = &smtp_url {
            let url = Url::parse(raw).map_err(|_| {
                anyhow::anyhow!("CERTDROP_SMTP_URL is not a URL; use e.g. smtp://127.0.0.1:2525")
            })?;
            if !matches!(url.scheme(), "smtp" | "smtps") || url.host_str().is_none() {
                bail!(
                    "CERTDROP_SMTP_URL must be smtp://HOST[:PORT] or smtps://HOST[:PORT], got scheme `{}`",
                    url.scheme()
                );
            }
        }
        let mail_from = mail_from.trim().to_string();
        if mail_from.parse::<lettre::Address>().is_err() {
            bail!("CERTDROP_MAIL_FROM: `{mail_from}` is not an email address");
        }
        let extra_trust_roots = extra_trust_roots.map(PathBuf::from);
        if let Some(path) = extra_trust_roots.as_ref().filter(|p| !p.is_file()) {
            bail!(
                "CERTDROP_EXTRA_TRUST_ROOTS: {} is not a readable PEM file",
                path.display()
            );
        }
        let pair_price_cents: i64 = price.parse().ok().filter(|p| *p >= 0).ok_or_else(|| {
            anyhow::anyhow!(
                "CERTDROP_PAIR_PRICE_CENTS: `{price}` is not a whole number of cents (e.g. 2000 for 20.00)"
            )
        })?;
        let currency = currency.trim().to_string();
        if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_uppercase()) {
            bail!("CERTDROP_CURRENCY: `{currency}` is not an ISO 4217 code such as USD or EUR");
        }
        Ok(Self {
            data_dir,
            database_url: SecretString::from(database_url),
            db_backend,
            listen,
            base_url,
            vault_identity,
            smtp_url: smtp_url.map(SecretString::from),
            mail_from,
            extra_trust_roots,
            pair_price_cents,
            currency,
            separation_of_duties: true,
            fleet_public_key: None,
            allow_private_backends: false,
            trusted_proxies: Vec::new(),
            apps_domain: None,
            dns_resolver: None,
            apply_timeout: std::time::Duration::from_secs(60),
            metrics_listen: None,
            acme: None,
            vault_pkcs11: None,
        })
    }

    pub fn database_url(&self) -> &str {
        self.database_url.expose_secret()
    }
}

/// Which backend a database URL names; an error that says what is accepted otherwise.
pub fn parse_database_url(raw: &str) -> anyhow::Result<DbBackend> {
    let hint = "use sqlite://PATH or postgres://USER@HOST:PORT/DATABASE";
    let scheme = raw
        .split_once("://")
        .map(|(s, _)| s)
        .ok_or_else(|| anyhow::anyhow!("CERTDROP_DATABASE_URL is not a database URL; {hint}"))?;
    match scheme {
        "sqlite" => Ok(DbBackend::Sqlite),
        "postgres" | "postgresql" => {
            let url = Url::parse(raw).map_err(|_| {
                anyhow::anyhow!("CERTDROP_DATABASE_URL is not a valid PostgreSQL URL; {hint}")
            })?;
            if url.host_str().is_none_or(str::is_empty) {
                bail!("CERTDROP_DATABASE_URL names no PostgreSQL host; {hint}");
            }
            Ok(DbBackend::Postgres)
        }
        other => bail!("CERTDROP_DATABASE_URL: unsupported scheme `{other}`; {hint}"),
    }
}

fn parse_base_url(raw: &str) -> anyhow::Result<Url> {
    let url = Url::parse(raw).map_err(|_| {
        anyhow::anyhow!(
            "CERTDROP_BASE_URL: `{raw}` is not a URL; use e.g. https://certdrop.example.com"
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        bail!("CERTDROP_BASE_URL must be an http:// or https:// URL with a host, got `{raw}`");
    }
    if url.path() != "/" || url.query().is_some() {
        bail!(
            "CERTDROP_BASE_URL must be an origin without a path, e.g. https://certdrop.example.com"
        );
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_with_an_unknown_scheme_is_refused_with_a_hint() {
        let err = parse_database_url("mysql://root@localhost/db").unwrap_err();
        assert!(err.to_string().contains("unsupported scheme `mysql`"));
        assert!(parse_database_url("not a url").is_err());
        assert_eq!(
            parse_database_url("sqlite://x.db").unwrap(),
            DbBackend::Sqlite
        );
        assert_eq!(
            parse_database_url("postgres://postgres@127.0.0.1:5432/test").unwrap(),
            DbBackend::Postgres
        );
    }

    #[test]
    fn a_base_url_with_a_path_is_refused() {
        assert!(parse_base_url("https://example.com/certdrop").is_err());
        assert!(parse_base_url("ftp://example.com").is_err());
        assert!(parse_base_url("https://example.com").is_ok());
    }
}
