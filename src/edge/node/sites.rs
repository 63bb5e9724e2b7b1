//! What a node serves, opened from its configuration: per hostname (exact, or a wildcard that
//! covers exactly one label) the certified key and where to proxy. Keys are opened from their
//! age envelope in memory only.

use std::{collections::HashMap, sync::Arc};

use anyhow::Context;
use rustls::{server::ClientHello, sign::CertifiedKey};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::{edge::NodeConfig, vault};

pub struct Site {
    pub app: String,
    pub certified: Arc<CertifiedKey>,
    /// The same key with an OCSP staple, and the unix second the staple expires.
    pub stapled: Option<(Arc<CertifiedKey>, i64)>,
    pub backend: String,
    pub force_https: bool,
    pub hsts_max_age: i64,
    /// Why the backend's address may not be proxied to, when it is an IP it may not be.
    pub backend_refusal: Option<&'static str>,
}

#[derive(Default)]
pub struct Sites {
    exact: HashMap<String, Arc<Site>>,
    /// `example.com` for a site serving `*.example.com`.
    wildcard: HashMap<String, Arc<Site>>,
    /// The app's own site, for clients that send no SNI.
    default: Option<Arc<Site>>,
    /// The pair's session ticket keys, swapped in with the sites.
    pub tickets: super::resumption::TicketKeys,
    /// ACME `http-01` answers by token.
    http_challenges: HashMap<String, String>,
    /// ACME `tls-alpn-01` certificates by hostname, made here for the CA's handshake only.
    alpn_challenges: HashMap<String, Arc<CertifiedKey>>,
}

/// The ALPN protocol of an ACME `tls-alpn-01` validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The self-signed certificate RFC 8737 asks for: the hostname, and the SHA-256 of the key
/// authorization in the critical acmeIdentifier extension. Its throwaway key lives in memory.
fn alpn_challenge_cert(
    hostname: &str,
    key_authorization: &str,
    provider: &rustls::crypto::CryptoProvider,
) -> anyhow::Result<CertifiedKey> {
    use sha2::Digest;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_string()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(
        &sha2::Sha256::digest(key_authorization.as_bytes()),
    )];
    let cert = params.self_signed(&key)?;
    let der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| anyhow::anyhow!(e))?;
    // Not `from_der`: its consistency check parses the certificate, and rejects the critical
    // acmeIdentifier extension it does not know.
    let signing_key = provider.key_provider.load_private_key(der)?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing_key))
}

impl std::fmt::Debug for Sites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sites")
            .field("exact", &self.exact.keys())
            .field("wildcard", &self.wildcard.keys())
            .finish()
    }
}

impl Sites {
    pub fn open(config: &NodeConfig, identity: &age::x25519::Identity) -> anyhow::Result<Self> {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let mut sites = Self {
            tickets: super::resumption::TicketKeys::open(&config.session_ticket_keys, identity),
            ..Self::default()
        };
        for challenge in &config.challenges {
            match challenge.kind.as_str() {
                "http-01" => {
                    sites
                        .http_challenges
                        .insert(challenge.token.clone(), challenge.key_authorization.clone());
                }
                "tls-alpn-01" => {
                    let certified = alpn_challenge_cert(
                        &challenge.hostname,
                        &challenge.key_authorization,
                        &provider,
                    )
                    .with_context(|| {
                        format!("the tls-alpn-01 challenge for {}", challenge.hostname)
                    })?;
                    sites
                        .alpn_challenges
                        .insert(challenge.hostname.clone(), Arc::new(certified));
                }
                other => tracing::warn!(kind = other, "edge: unknown ACME challenge kind ignored"),
            }
        }
        for site in &config.sites {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(site.chain_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("{}: the chain is not PEM", site.app))?;
            let key = vault::open_with(std::slice::from_ref(identity), &site.sealed_key)
                .with_context(|| {
                    format!("{}: this node cannot open the key sealed to it", site.app)
                })?;
            let der = PrivateKeyDer::from_pem_slice(key.pem().as_bytes())
                .with_context(|| format!("{}: the key is not PEM", site.app))?;
            let certified = CertifiedKey::from_der(chain, der, &provider)
                .with_context(|| format!("{}: key and certificate do not match", site.app))?;
            // A staple is a bonus: one that cannot be read is left out, never a reason not to serve.
            let stapled = match (&site.ocsp_staple, site.ocsp_next_update) {
                (Some(staple), Some(next_update)) => {
                    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, staple)
                        .inspect_err(|_| {
                            tracing::warn!(app = %site.app, "edge: the OCSP staple is not base64; serving without it");
                        })
                        .ok()
                        .map(|der| {
                            let mut with_staple = certified.clone();
                            with_staple.ocsp = Some(der);
                            (Arc::new(with_staple), next_update)
                        })
                }
                _ => None,
            };
            let backend_refusal = url::Url::parse(&site.backend_url)
                .ok()
                .and_then(|u| match u.host()? {
                    url::Host::Ipv4(ip) => Some(std::net::IpAddr::V4(ip)),
                    url::Host::Ipv6(ip) => Some(std::net::IpAddr::V6(ip)),
                    url::Host::Domain(_) => None,
                })
                .and_then(|ip| crate::edge::backend::refusal(ip, config.allow_private_backends));
            let entry = Arc::new(Site {
                app: site.app.clone(),
                certified: Arc::new(certified),
                stapled,
                backend: site.backend_url.trim_end_matches('/').to_string(),
                force_https: site.force_https,
                hsts_max_age: site.hsts_max_age,
                backend_refusal,
            });
            // The first site is the app's own certificate; the platform hostname's comes after.
            sites.default.get_or_insert_with(|| entry.clone());
            for host in &site.hostnames {
                match host.strip_prefix("*.") {
                    Some(suffix) => sites.wildcard.insert(suffix.to_string(), entry.clone()),
                    None => sites.exact.insert(host.clone(), entry.clone()),
                };
            }
        }
        Ok(sites)
    }

    /// The site for a client that sent no SNI: a dedicated pair serves one app, so that app's
    /// own certificate (as nginx's default server would).
    pub fn only(&self) -> Option<Arc<Site>> {
        self.default.clone()
    }

    /// The site for a TLS client hello's SNI (or its absence).
    pub fn for_sni(&self, sni: Option<&str>) -> Option<Arc<Site>> {
        match sni {
            Some(name) => self.lookup(name),
            None => self.only(),
        }
    }

    /// The key authorization to answer `GET /.well-known/acme-challenge/{token}` with.
    pub fn http_challenge(&self, token: &str) -> Option<&str> {
        self.http_challenges.get(token).map(String::as_str)
    }

    /// The site for a hostname: an exact match first, then a wildcard one label up.
    pub fn lookup(&self, host: &str) -> Option<Arc<Site>> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if let Some(site) = self.exact.get(&host) {
            return Some(site.clone());
        }
        let (first, rest) = host.split_once('.')?;
        if first.is_empty() {
            return None;
        }
        self.wildcard.get(rest).cloned()
    }
}

/// Picks the certificate by SNI from whatever set is current at handshake time.
#[derive(Debug)]
pub struct Resolver(pub Arc<super::Node>);

impl std::fmt::Debug for super::Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("tls_port", &self.tls_port)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Site {
    /// The certified key to serve now: stapled while the staple is valid, else without.
    pub fn certified_now(&self) -> Arc<CertifiedKey> {
        match &self.stapled {
            Some((stapled, next_update)) if unix_now() < *next_update => stapled.clone(),
            _ => self.certified.clone(),
        }
    }
}

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sites = self.0.sites.load();
        // A CA validating tls-alpn-01 offers only `acme-tls/1`, and gets only the challenge.
        if hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN))
        {
            let name = hello.server_name()?.to_ascii_lowercase();
            return sites.alpn_challenges.get(&name).cloned();
        }
        sites
            .for_sni(hello.server_name())
            .map(|s| s.certified_now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_alpn_challenge_is_answered_with_a_certificate_carrying_the_key_authorization() {
        let config = NodeConfig {
            version: 1,
            pair: "p".into(),
            sites: Vec::new(),
            allow_private_backends: false,
            session_ticket_keys: Vec::new(),
            challenges: vec![
                crate::edge::Challenge {
                    kind: "tls-alpn-01".into(),
                    hostname: "www.shop.test".into(),
                    token: "t1".into(),
                    key_authorization: "t1.thumb".into(),
                },
                crate::edge::Challenge {
                    kind: "http-01".into(),
                    hostname: "www.shop.test".into(),
                    token: "t2".into(),
                    key_authorization: "t2.thumb".into(),
                },
            ],
        };
        let sites = Sites::open(&config, &age::x25519::Identity::generate()).unwrap();
        assert_eq!(sites.http_challenge("t2"), Some("t2.thumb"));
        assert_eq!(sites.http_challenge("t1"), None);
        let certified = sites.alpn_challenges.get("www.shop.test").unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&certified.cert[0]).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("the acmeIdentifier extension");
        assert!(ext.critical);
        use sha2::Digest;
        assert!(ext.value.ends_with(&sha2::Sha256::digest(b"t1.thumb")));
    }
}
