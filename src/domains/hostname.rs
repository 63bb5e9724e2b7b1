//! Custom-domain hostnames: lower-cased, IDNA-checked (stored in ASCII/punycode), with a
//! wildcard `*.` allowed only as the whole first label; and the one rule for matching a
//! wildcard (it covers exactly one label: `*.example.com` never covers `example.com`).

/// Normalises a hostname typed by a user, or says what is wrong with it.
pub fn normalize(raw: &str) -> Result<String, String> {
    let trimmed = raw.trim().trim_end_matches('.');
    if trimmed.is_empty() {
        return Err("Enter a hostname such as www.example.com.".into());
    }
    if trimmed.contains("://") || trimmed.contains('/') {
        return Err(format!(
            "`{trimmed}` looks like a URL; enter only the hostname, such as www.example.com."
        ));
    }
    let (wildcard, rest) = match trimmed.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, trimmed),
    };
    if rest.contains('*') {
        return Err(
            "A wildcard is allowed only as the whole first label, as in *.example.com.".into(),
        );
    }
    let ascii = idna::domain_to_ascii_strict(rest).map_err(|_| {
        format!(
            "`{trimmed}` is not a valid hostname (check for spaces, underscores or stray symbols)."
        )
    })?;
    if ascii.len() > 253 - if wildcard { 2 } else { 0 } {
        return Err("A hostname is at most 253 characters long.".into());
    }
    let labels: Vec<&str> = ascii.split('.').collect();
    if labels.len() < 2 {
        return Err(format!(
            "`{trimmed}` is not a full domain name; use a name such as www.example.com."
        ));
    }
    for label in &labels {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok {
            return Err(format!("`{trimmed}` has an invalid label `{label}`."));
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(format!(
            "`{trimmed}` is an IP address; certdrop serves custom domain names only."
        ));
    }
    Ok(if wildcard {
        format!("*.{ascii}")
    } else {
        ascii
    })
}

/// True when a certificate name (possibly `*.x`) covers a hostname (possibly `*.x` itself).
/// A wildcard matches exactly one whole label.
pub fn covers(cert_name: &str, host: &str) -> bool {
    let cert_name = cert_name.trim_end_matches('.').to_ascii_lowercase();
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if cert_name == host {
        return true;
    }
    match cert_name.strip_prefix("*.") {
        Some(suffix) => match host.split_once('.') {
            Some((first, rest)) => !first.is_empty() && first != "*" && rest == suffix,
            None => false,
        },
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_lower_cased_and_idna_encoded() {
        assert_eq!(normalize(" WWW.Example.COM. ").unwrap(), "www.example.com");
        assert_eq!(
            normalize("bücher.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(normalize("*.Example.com").unwrap(), "*.example.com");
    }

    #[test]
    fn bad_hostnames_are_refused_with_a_reason() {
        for bad in [
            "",
            "localhost",
            "www.*.example.com",
            "a*.example.com",
            "*.com",
            "-a.example.com",
            "a_b.example.com",
            "https://example.com",
            "10.0.0.1",
            "exa mple.com",
        ] {
            assert!(normalize(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn a_wildcard_covers_exactly_one_label() {
        assert!(covers("*.example.com", "www.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("*.example.com", "a.b.example.com"));
        assert!(covers("www.example.com", "WWW.example.com"));
        assert!(covers("*.example.com", "*.example.com"));
        assert!(!covers("www.example.com", "*.example.com"));
    }
}
