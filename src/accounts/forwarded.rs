//! Who the client is behind a load balancer. The socket's peer is the client unless it is one
//! of the operator's proxies (`CERTDROP_TRUSTED_PROXIES`, CIDRs): then the client is the
//! nearest address in `X-Forwarded-For` (or RFC 7239 `Forwarded: for=`) that is not a trusted
//! proxy itself, read from the right, since each proxy appends what it saw. Headers from
//! anyone else are ignored, so nobody spoofs their way out of a rate limit. Pure functions.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Parses `CERTDROP_TRUSTED_PROXIES`: CIDRs or bare addresses, separated by commas or spaces.
pub fn parse_trusted(raw: &str) -> anyhow::Result<Vec<IpNet>> {
    raw.split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    anyhow::anyhow!(
                        "CERTDROP_TRUSTED_PROXIES: `{s}` is not an address or CIDR; use e.g. 10.0.0.0/8,fd00::/8"
                    )
                })
        })
        .collect()
}

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    let ip = ip.to_canonical();
    proxies.iter().any(|net| net.contains(&ip))
}

/// The addresses a request passed through, nearest the client first, as the proxies said.
fn forwarded_chain(headers: &HeaderMap) -> Vec<IpAddr> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_string())
            .collect()
    };
    let xff = values("x-forwarded-for");
    if !xff.is_empty() {
        return xff.iter().filter_map(|s| parse_node(s)).collect();
    }
    values("forwarded")
        .iter()
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                k.eq_ignore_ascii_case("for").then(|| parse_node(v))?
            })
        })
        .collect()
}

/// One hop: `192.0.2.1`, `192.0.2.1:4711`, `"[2001:db8::1]:4711"` or `2001:db8::1`.
fn parse_node(raw: &str) -> Option<IpAddr> {
    let raw = raw.trim().trim_matches('"');
    if let Ok(ip) = raw.parse() {
        return Some(ip);
    }
    if let Some(rest) = raw.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (host, port) = raw.rsplit_once(':')?;
    port.chars()
        .all(|c| c.is_ascii_digit())
        .then(|| host.parse().ok())?
}

/// The client's address: `peer`, or, when `peer` is a trusted proxy, the first address from
/// the right of the forwarded chain that is not one (a chain of only proxies: its leftmost).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, proxies: &[IpNet]) -> IpAddr {
    if !trusted(peer, proxies) {
        return peer;
    }
    let chain = forwarded_chain(headers);
    chain
        .iter()
        .rev()
        .find(|ip| !trusted(**ip, proxies))
        .or(chain.first())
        .copied()
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        let proxies = parse_trusted("10.0.0.0/8, fd00::/8 192.0.2.9").unwrap();
        let lb: IpAddr = "10.0.0.5".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        let xff = headers(&[("x-forwarded-for", "198.51.100.1, 198.51.100.2")]);
        // The proxy appended what it saw last: the client is the rightmost untrusted address.
        assert_eq!(
            client_ip(lb, &xff, &proxies),
            "198.51.100.2".parse::<IpAddr>().unwrap()
        );
        // A spoofed header from anyone else is ignored.
        assert_eq!(client_ip(stranger, &xff, &proxies), stranger);
        assert_eq!(client_ip(stranger, &xff, &[]), stranger);
        // Proxies behind proxies are skipped; a header split over lines is one list.
        let split = headers(&[
            ("x-forwarded-for", "198.51.100.7"),
            ("x-forwarded-for", "10.1.1.1, 192.0.2.9"),
        ]);
        assert_eq!(
            client_ip(lb, &split, &proxies),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // RFC 7239, with ports, quotes and IPv6.
        let fwd = headers(&[(
            "forwarded",
            "for=192.0.2.60;proto=http, for=\"[2001:db8:cafe::17]:4711\"",
        )]);
        assert_eq!(
            client_ip(lb, &fwd, &proxies),
            "2001:db8:cafe::17".parse::<IpAddr>().unwrap()
        );
        // No header, or garbage: the proxy itself.
        assert_eq!(client_ip(lb, &HeaderMap::new(), &proxies), lb);
        assert_eq!(
            client_ip(lb, &headers(&[("x-forwarded-for", "nonsense")]), &proxies),
            lb
        );
        // IPv4-mapped peers are matched as IPv4.
        let mapped: IpAddr = "::ffff:10.0.0.5".parse().unwrap();
        assert_eq!(
            client_ip(mapped, &xff, &proxies),
            "198.51.100.2".parse::<IpAddr>().unwrap()
        );
        assert!(parse_trusted("10.0.0.0/33").is_err());
        assert!(parse_trusted("").unwrap().is_empty());
    }
}
