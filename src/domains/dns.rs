//! Looking names up in the DNS, for ownership proofs (TXT) and for where a domain points
//! (CNAME chain and A/AAAA). One resolver per control plane, uncached, so "Check now" sees a
//! record the moment the customer's DNS serves it; `CERTDROP_DNS_RESOLVER` points it at one
//! server (tests run one on loopback), else the system's configuration is used.

use std::{net::IpAddr, net::SocketAddr, time::Duration};

use hickory_resolver::{
    ResolveError, TokioResolver,
    config::{NameServerConfigGroup, ResolverConfig, ResolverOpts},
    name_server::TokioConnectionProvider,
    proto::rr::{RData, RecordType},
};

/// The control plane's resolver, or why there is none (no usable system configuration).
pub struct Resolver(Result<TokioResolver, String>);

/// What a name resolves to: the CNAME chain followed, then the addresses at its end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    pub cnames: Vec<String>,
    pub addresses: Vec<IpAddr>,
}

impl Resolved {
    pub fn is_empty(&self) -> bool {
        self.cnames.is_empty() && self.addresses.is_empty()
    }

    /// How people read it: `CNAME a.example → 192.0.2.1, 192.0.2.2`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.cnames.iter().map(|c| format!("CNAME {c}")).collect();
        let addresses: Vec<String> = self.addresses.iter().map(IpAddr::to_string).collect();
        if !addresses.is_empty() {
            parts.push(addresses.join(", "));
        }
        parts.join(" → ")
    }
}

impl Resolver {
    pub fn new(server: Option<SocketAddr>) -> Self {
        let mut options = ResolverOpts::default();
        options.cache_size = 0;
        options.timeout = Duration::from_secs(2);
        options.attempts = 2;
        options.preserve_intermediates = true;
        let builder = match server {
            Some(addr) => Ok(TokioResolver::builder_with_config(
                ResolverConfig::from_parts(
                    None,
                    Vec::new(),
                    NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true),
                ),
                TokioConnectionProvider::default(),
            )),
            None => TokioResolver::builder_tokio().map_err(|e| {
                format!(
                    "the system's DNS configuration cannot be read ({e}); set CERTDROP_DNS_RESOLVER"
                )
            }),
        };
        Self(builder.map(|b| b.with_options(options).build()))
    }

    fn resolver(&self) -> Result<&TokioResolver, String> {
        self.0.as_ref().map_err(Clone::clone)
    }

    /// The TXT strings published at `name` (each record's strings joined); none is not an error.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, String> {
        match self.resolver()?.txt_lookup(fqdn(name)).await {
            Ok(found) => Ok(found
                .iter()
                .map(|txt| {
                    txt.iter()
                        .map(|part| String::from_utf8_lossy(part).into_owned())
                        .collect::<String>()
                })
                .collect()),
            Err(e) if nothing_there(&e) => Ok(Vec::new()),
            Err(e) => Err(failure(name, &e)),
        }
    }

    /// Follows `name`'s CNAME chain and collects the A and AAAA addresses at its end.
    pub async fn resolve(&self, name: &str) -> Result<Resolved, String> {
        let resolver = self.resolver()?;
        let mut resolved = Resolved::default();
        for kind in [RecordType::A, RecordType::AAAA] {
            match resolver.lookup(fqdn(name), kind).await {
                Ok(found) => {
                    for record in found.records() {
                        match record.data() {
                            RData::CNAME(target) => {
                                let target = target.0.to_ascii().trim_end_matches('.').to_string();
                                if !resolved.cnames.contains(&target) {
                                    resolved.cnames.push(target);
                                }
                            }
                            RData::A(a) => resolved.addresses.push(IpAddr::V4(a.0)),
                            RData::AAAA(a) => resolved.addresses.push(IpAddr::V6(a.0)),
                            _ => {}
                        }
                    }
                }
                Err(e) if nothing_there(&e) => {}
                Err(e) => return Err(failure(name, &e)),
            }
        }
        Ok(resolved)
    }

    /// The addresses of `host`, an IP literal or a name.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        match host.trim_matches(['[', ']']).parse::<IpAddr>() {
            Ok(ip) => Ok(vec![ip]),
            Err(_) => Ok(self.resolve(host).await?.addresses),
        }
    }
}

fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

fn nothing_there(e: &ResolveError) -> bool {
    e.is_no_records_found() || e.is_nx_domain()
}

fn failure(name: &str, e: &ResolveError) -> String {
    format!("the DNS lookup of {name} failed ({e}); try again in a minute")
}
