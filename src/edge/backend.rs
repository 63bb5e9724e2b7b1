//! Where an app's backend may be. Never a cloud metadata address (link-local IPv4, AWS's
//! `fd00:ec2::254`, Alibaba's, Azure's), whatever the operator allows. Never the machine itself
//! (loopback), IPv6 link-local addresses, "this network" or unspecified addresses, broadcast or
//! multicast — unless the operator allows private backends
//! (`CERTDROP_ALLOW_PRIVATE_BACKENDS=true`, for one-host setups and loopback tests); ordinary
//! private ranges (10/8, 192.168/16, fc00::/7) are allowed, since backends often live there.
//! The control plane checks when a backend URL is saved; each node checks every address it
//! connects to, so a DNS change cannot slip past. Pure functions plus one lookup.

use std::net::{IpAddr, SocketAddr};

/// Where clouds answer with a machine's credentials (instance metadata): never a backend,
/// whatever the operator allows. Link-local IPv4 (169.254/16: AWS, GCP, Azure, OpenStack,
/// DigitalOcean, Oracle) is refused as a whole; these are the others.
const METADATA: [IpAddr; 4] = [
    // AWS IMDS over IPv6.
    IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    // Alibaba Cloud.
    IpAddr::V4(std::net::Ipv4Addr::new(100, 100, 100, 200)),
    // Azure's wire server.
    IpAddr::V4(std::net::Ipv4Addr::new(168, 63, 129, 16)),
    // Oracle Cloud's older metadata address.
    IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 0, 192)),
];

/// Why `ip` may not be a backend, if it may not.
pub fn refusal(ip: IpAddr, allow_private: bool) -> Option<&'static str> {
    let ip = ip.to_canonical();
    if ip.is_unspecified() {
        return Some("an unspecified address");
    }
    if METADATA.contains(&ip) || matches!(ip, IpAddr::V4(v4) if v4.is_link_local()) {
        return Some("a cloud metadata address (where a machine's credentials are served)");
    }
    if ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255]) {
        return Some("a multicast or broadcast address");
    }
    if allow_private {
        return None;
    }
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() => Some("a loopback address (the machine itself)"),
        IpAddr::V4(v4) if v4.octets()[0] == 0 => Some("a \"this network\" address"),
        IpAddr::V6(v6) if v6.is_loopback() => Some("a loopback address (the machine itself)"),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("a link-local address"),
        _ => None,
    }
}

/// Checks what a backend host resolves to now (an IP literal as it is); a host that does not
/// resolve here passes (it may resolve only on the edge's network, where the node checks it).
pub async fn check_host(
    host: &url::Host<&str>,
    port: u16,
    allow_private: bool,
    own: &[SocketAddr],
) -> Result<(), String> {
    let addrs: Vec<SocketAddr> = match host {
        url::Host::Ipv4(ip) => vec![SocketAddr::new(IpAddr::V4(*ip), port)],
        url::Host::Ipv6(ip) => vec![SocketAddr::new(IpAddr::V6(*ip), port)],
        url::Host::Domain(name) => {
            let lookup = tokio::net::lookup_host((*name, port));
            match tokio::time::timeout(std::time::Duration::from_secs(2), lookup).await {
                Ok(Ok(found)) => found.collect(),
                _ => Vec::new(),
            }
        }
    };
    for addr in addrs {
        if let Some(why) = refusal(addr.ip(), allow_private) {
            return Err(format!(
                "The backend {host} resolves to {}, {why}: certdrop does not proxy there. Give the address your app listens on in its network.",
                addr.ip()
            ));
        }
        let ip = addr.ip().to_canonical();
        let itself = own.iter().any(|o| {
            o.port() == addr.port()
                && (o.ip() == ip || (o.ip().is_unspecified() && ip.is_loopback()))
        });
        if itself {
            return Err(format!(
                "The backend {host}:{port} is certdrop itself; give your app's own address."
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_itself_and_metadata_are_refused_unless_allowed() {
        for bad in [
            "127.0.0.1",
            "127.5.6.7",
            "::1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "::",
            "::ffff:127.0.0.1",
            "fe80::1",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            let ip: IpAddr = bad.parse().unwrap();
            assert!(refusal(ip, false).is_some(), "{bad}");
        }
        for good in [
            "10.0.0.5",
            "192.168.1.10",
            "203.0.113.7",
            "fd00::1",
            "2001:db8::1",
        ] {
            assert_eq!(refusal(good.parse().unwrap(), false), None, "{good}");
        }
        assert_eq!(refusal("127.0.0.1".parse().unwrap(), true), None);
        // Cloud metadata, whatever the override, in any spelling.
        for metadata in [
            "169.254.169.254",
            "169.254.170.2",
            "fd00:ec2::254",
            "100.100.100.200",
            "168.63.129.16",
            "192.0.0.192",
            "::ffff:169.254.169.254",
            "::ffff:100.100.100.200",
        ] {
            let ip: IpAddr = metadata.parse().unwrap();
            for allow_private in [false, true] {
                assert!(
                    refusal(ip, allow_private).is_some_and(|w| w.contains("metadata")),
                    "{metadata} allowed={allow_private}"
                );
            }
        }
        // Its neighbours are ordinary private addresses (Tailscale's 100.64/10, say).
        for fine in ["100.100.100.201", "100.64.0.1", "fd00:ec2::255"] {
            assert_eq!(refusal(fine.parse().unwrap(), false), None, "{fine}");
        }
        assert!(
            refusal("0.0.0.0".parse().unwrap(), true).is_some(),
            "never unspecified"
        );
    }

    #[tokio::test]
    async fn integer_and_dotless_forms_are_the_same_addresses() {
        // The URL parser normalises 2130706433 and 0 to dotted IPv4, which is what is checked.
        for raw in ["http://2130706433:80/", "http://0/", "http://[::1]:5432"] {
            let url = url::Url::parse(raw).unwrap();
            let host = url.host().unwrap();
            assert!(
                check_host(&host, url.port_or_known_default().unwrap(), false, &[])
                    .await
                    .is_err(),
                "{raw}"
            );
        }
        let own: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let url = url::Url::parse("http://127.0.0.1:8080").unwrap();
        let err = check_host(&url.host().unwrap(), 8080, true, &[own])
            .await
            .unwrap_err();
        assert!(err.contains("certdrop itself"), "{err}");
    }
}
