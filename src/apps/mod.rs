//! Apps: a name, an owner and the backend URL their traffic reaches, and one TLS status each.
//! Every read goes through `store::find_visible`, so a customer never sees another's app.

pub mod routes;
pub mod status;
pub mod store;

use url::Url;

/// App names are like Heroku's: 3 to 30 lower-case letters, digits and dashes, starting with
/// a letter; they name the app in URLs and on the command line.
pub fn validate_name(raw: &str) -> Result<String, String> {
    let name = raw.trim().to_lowercase();
    let ok = (3..=30).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(name)
    } else {
        Err("An app name is 3 to 30 lower-case letters, digits and dashes, starting with a letter (e.g. shop-eu).".into())
    }
}

/// The backend is where the edge pair proxies to: http:// or https:// (re-encrypted), no
/// credentials, no query.
pub fn validate_backend(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let url = Url::parse(raw).map_err(|_| {
        format!("`{raw}` is not a URL; give the backend as http://HOST:PORT or https://HOST:PORT.")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "The backend must be http:// or https://, not {}://.",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("The backend URL needs a host, e.g. http://10.0.0.5:8000.".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("Leave credentials out of the backend URL.".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("The backend URL cannot have a query or fragment.".into());
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_follow_the_heroku_rule() {
        assert_eq!(validate_name("Shop-EU").unwrap(), "shop-eu");
        for bad in ["ab", "1shop", "shop_eu", "shop-", "a".repeat(31).as_str()] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backends_are_http_urls_without_credentials() {
        assert_eq!(
            validate_backend("http://10.0.0.5:8000/").unwrap(),
            "http://10.0.0.5:8000"
        );
        assert!(validate_backend("https://backend.internal").is_ok());
        assert!(validate_backend("ftp://x").is_err());
        assert!(validate_backend("http://user:pw@x").is_err());
        assert!(validate_backend("nonsense").is_err());
    }
}
