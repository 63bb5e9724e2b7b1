//! What the fuzzers throw bytes at (`fuzz/`, run with `cargo fuzz`), and what the test suite
//! replays their corpus through on stable Rust: the PEM scanner, the whole certificate intake,
//! the configuration an edge node accepts, and hostname normalisation. Each entry takes any
//! bytes, must never panic, and checks the properties its part promises.

use std::sync::OnceLock;

use crate::{
    certs::{
        intake::{Upload, check},
        pem,
        trust::TrustStore,
    },
    domains::hostname,
    edge::{NodeConfig, node::Sites},
};

/// Any bytes: every block found re-encodes to the same block.
pub fn pem_scanner(data: &[u8]) {
    let _ = pem::looks_like_pem(data);
    for block in pem::blocks(data) {
        if let Some(der) = block.der {
            let again = pem::blocks(pem::encode(&block.label, &der).as_bytes());
            assert_eq!(again.len(), 1, "one block re-encodes to one block");
            assert_eq!(
                again[0].der.as_deref().map(|d| d.as_slice()),
                Some(der.as_slice())
            );
        }
    }
}

/// Certificate, key and chain fields separated by NUL bytes; the last byte's low bit is
/// `bypass`. An upload is either accepted or refused with at least one error.
pub fn intake(data: &[u8]) {
    static TRUST: OnceLock<TrustStore> = OnceLock::new();
    let trust = TRUST.get_or_init(|| TrustStore::load(None).expect("Mozilla's roots"));
    let mut fields = data.splitn(3, |b| *b == 0);
    let upload = Upload {
        certificate: fields.next().unwrap_or_default(),
        private_key: fields.next().unwrap_or_default(),
        chain: fields.next().unwrap_or_default(),
        bypass: data.last().is_some_and(|b| b & 1 == 1),
        born: &[],
    };
    let domains = ["www.example.com".to_string(), "*.example.org".to_string()];
    if let Err(refused) = check(&upload, &domains, trust, 1_790_000_000) {
        assert!(!refused.errors.is_empty(), "a refusal says why");
    }
}

/// Any bytes as a node's configuration: parsed, and if it parses, opened (failing cleanly on
/// keys the node cannot open) and looked up.
pub fn node_config(data: &[u8]) {
    static IDENTITY: OnceLock<age::x25519::Identity> = OnceLock::new();
    let identity = IDENTITY.get_or_init(age::x25519::Identity::generate);
    let Ok(config) = serde_json::from_slice::<NodeConfig>(data) else {
        return;
    };
    if let Ok(sites) = Sites::open(&config, identity) {
        for site in &config.sites {
            for host in &site.hostnames {
                let _ = sites.lookup(host);
            }
        }
        let _ = sites.for_sni(None);
    }
}

/// Any text as a typed hostname: a normalised name normalises to itself and covers itself.
pub fn hostname(data: &[u8]) {
    let raw = String::from_utf8_lossy(data);
    if let Ok(name) = hostname::normalize(&raw) {
        assert_eq!(
            hostname::normalize(&name).as_deref(),
            Ok(name.as_str()),
            "idempotent"
        );
        assert!(hostname::covers(&name, &name));
        assert!(name.len() <= 253 && name.is_ascii());
    }
}

/// Any text as a typed vault share: what parses re-encodes to itself. Any bytes as a secret to
/// split (K and N from the first two bytes): any K of its shares give it back.
pub fn vault_share(data: &[u8]) {
    use crate::vault::shamir::{self, Share};
    if let Some(share) = Share::parse(&String::from_utf8_lossy(data)) {
        let text = share.encode();
        assert_eq!(Share::parse(&text).as_ref(), Some(&share), "round trip");
    }
    if let [a, b, secret @ ..] = data {
        let n = a % shamir::MAX_SHARES + 1;
        let k = b % n + 1;
        let shares = shamir::split(secret, k, n, 1);
        let last: Vec<Share> = shares[(n - k) as usize..].to_vec();
        assert_eq!(
            *shamir::combine(&last),
            secret,
            "any K give the secret back"
        );
    }
}
