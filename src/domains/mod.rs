//! Custom domains and who may serve them. A domain is claimed `pending`; its owner proves
//! control with a TXT record `_certdrop-challenge.<domain>` holding the claim's token, and only
//! then is it `verified` and published to the app's edge pair. The first claim of a name to be
//! verified wins; a verified claim blocks overlapping claims by other customers (the same name,
//! a name above or below it, wildcards included); an unproven claim expires after 7 days. Staff
//! may verify without proof, or change a customer's domains, only with an audited reason.
//! Each domain also carries what its DNS points at, against the target certdrop tells the
//! customer to create (a CNAME to the app's platform hostname, or the pair's addresses).

pub mod dns;
pub mod hostname;
pub mod platform;
pub mod routes;
pub mod store;
pub mod worker;

use std::net::IpAddr;

use rand::TryRngCore;
use serde::Serialize;
use serde_json::json;

use crate::{
    accounts::{User, extract::ClientIp},
    apps::store::App,
    audit::{self, Entry},
    error::{AppError, AppResult, ErrorItem},
    state::AppState,
};
use store::Domain;

/// How long a claim may wait for its proof.
pub const CLAIM_SECONDS: i64 = 7 * 24 * 3600;
/// The label under which the TXT proof is published.
pub const TXT_LABEL: &str = "_certdrop-challenge";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verification {
    Pending,
    Verified,
    Expired,
}

impl Verification {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "pending" => Some(Self::Pending),
            "verified" => Some(Self::Verified),
            "expired" => Some(Self::Expired),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Verified => "verified",
            Self::Expired => "expired",
        }
    }
}

/// Where a domain's DNS pointed when last checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DnsState {
    Unchecked,
    NoRecord,
    PointsHere,
    PointsElsewhere,
}

impl DnsState {
    pub fn parse(raw: &str) -> Self {
        match raw {
            "no_record" => Self::NoRecord,
            "points_here" => Self::PointsHere,
            "points_elsewhere" => Self::PointsElsewhere,
            _ => Self::Unchecked,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unchecked => "unchecked",
            Self::NoRecord => "no_record",
            Self::PointsHere => "points_here",
            Self::PointsElsewhere => "points_elsewhere",
        }
    }

    /// As the app page says it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Unchecked => "not checked yet",
            Self::NoRecord => "no record",
            Self::PointsHere => "points here",
            Self::PointsElsewhere => "points elsewhere",
        }
    }
}

/// A name without its wildcard label: `*.a.example` → `a.example`.
pub fn base(hostname: &str) -> &str {
    hostname.strip_prefix("*.").unwrap_or(hostname)
}

/// Where the TXT proof of `hostname` lives (a wildcard is proved at its base name).
pub fn txt_name(hostname: &str) -> String {
    format!("{TXT_LABEL}.{}", base(hostname))
}

/// Whether two claimed names overlap: the same name, or one at or below the other (so a
/// wildcard overlaps every name it or its base could cover: `*.a.example` and `a.example`,
/// `*.www.a.example` and `www.a.example`).
pub fn overlaps(a: &str, b: &str) -> bool {
    let (a, b) = (base(a), base(b));
    a == b || a.ends_with(&format!(".{b}")) || b.ends_with(&format!(".{a}"))
}

fn new_token() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random source works");
    format!("certdrop-verify={}", hex::encode(bytes))
}

/// What certdrop asks customers to point their domains at.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Target {
    /// The app's platform hostname, where `CERTDROP_APPS_DOMAIN` is set: the CNAME target.
    pub cname: Option<String>,
    /// The addresses the app's edge pair advertises (A/AAAA targets), once it holds one.
    pub addresses: Vec<IpAddr>,
}

/// One DNS record a customer should create.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DnsRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub name: String,
    pub value: String,
}

impl Target {
    /// The records that point `hostname` here: a CNAME to the platform hostname, else A/AAAA
    /// records for the pair's addresses (none until the app holds a pair).
    pub fn records(&self, hostname: &str) -> Vec<DnsRecord> {
        match &self.cname {
            Some(cname) => vec![DnsRecord {
                kind: "CNAME",
                name: hostname.to_string(),
                value: cname.clone(),
            }],
            None => self.address_records(hostname),
        }
    }

    /// A and AAAA records for the pair's addresses: the answer at a zone apex, where a CNAME
    /// is not allowed.
    pub fn address_records(&self, hostname: &str) -> Vec<DnsRecord> {
        self.addresses
            .iter()
            .map(|ip| DnsRecord {
                kind: if ip.is_ipv4() { "A" } else { "AAAA" },
                name: hostname.to_string(),
                value: ip.to_string(),
            })
            .collect()
    }

    /// Says how a domain that resolves to `seen` stands against this target.
    pub fn judge(&self, seen: &dns::Resolved) -> DnsState {
        if seen.is_empty() {
            return DnsState::NoRecord;
        }
        let via_cname = self
            .cname
            .as_ref()
            .is_some_and(|c| seen.cnames.iter().any(|s| s.eq_ignore_ascii_case(c)));
        let via_addresses = !seen.addresses.is_empty()
            && !self.addresses.is_empty()
            && seen.addresses.iter().all(|a| self.addresses.contains(a));
        if via_cname || via_addresses {
            DnsState::PointsHere
        } else {
            DnsState::PointsElsewhere
        }
    }
}

/// The app's platform hostname (`<app>.<CERTDROP_APPS_DOMAIN>`), where one is configured.
pub fn platform_hostname(state: &AppState, app: &App) -> Option<String> {
    state
        .config
        .apps_domain
        .as_ref()
        .map(|domain| format!("{}.{domain}", app.name))
}

/// The app's DNS target: its platform hostname and the addresses its pair advertises.
pub async fn target(state: &AppState, app: &App) -> AppResult<Target> {
    let mut targets = targets(state, std::slice::from_ref(app)).await?;
    Ok(targets.remove(&app.id).unwrap_or_default())
}

/// The DNS targets of many apps, by app id, in one query (listings).
pub async fn targets(
    state: &AppState,
    apps: &[App],
) -> AppResult<std::collections::HashMap<i64, Target>> {
    let ids: Vec<i64> = apps.iter().map(|a| a.id).collect();
    let mut conn = state.db.acquire().await?;
    let hosts = crate::edge::store::advertised_hosts_of_apps(&mut conn, &ids).await?;
    drop(conn);
    let mut targets = std::collections::HashMap::new();
    for app in apps {
        let mine: Vec<String> = hosts
            .iter()
            .filter(|(id, _)| *id == app.id)
            .map(|(_, host)| host.clone())
            .collect();
        let target = Target {
            cname: platform_hostname(state, app),
            addresses: addresses_of(state, &mine).await,
        };
        targets.insert(app.id, target);
    }
    Ok(targets)
}

/// The addresses of advertised hosts (IP literals, or names looked up); a name that does not
/// resolve now simply adds none.
pub async fn addresses_of(state: &AppState, hosts: &[String]) -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    for host in hosts {
        for ip in state.dns.addresses(host).await.unwrap_or_default() {
            if !addresses.contains(&ip) {
                addresses.push(ip);
            }
        }
    }
    addresses
}

/// For the "deployed" mail: the records that point the app's proved domains at its pair,
/// with what each pointed at when last checked.
pub async fn instructions(state: &AppState, app_id: i64) -> AppResult<Vec<String>> {
    let app = crate::apps::store::find_by_id(&state.db, app_id).await?;
    let target = target(state, &app).await?;
    let mut lines = Vec::new();
    for domain in store::of_app(&state.db, &app).await? {
        if domain.verification != Verification::Verified {
            continue;
        }
        let records: Vec<String> = target
            .records(&domain.hostname)
            .iter()
            .map(routes::record_line)
            .collect();
        if !records.is_empty() {
            lines.push(format!(
                "{} (DNS {} when last checked)",
                records.join(" and "),
                domain.dns.label()
            ));
        }
    }
    if !lines.is_empty() {
        lines.insert(
            0,
            "To send visitors there, each domain needs this DNS record at your DNS provider (one that already points here needs nothing):".into(),
        );
    }
    Ok(lines)
}

/// The name a DNS check looks up for `hostname` (a wildcard is checked at a name it covers).
fn probe_name(hostname: &str) -> String {
    match hostname.strip_prefix("*.") {
        Some(rest) => format!("certdrop-dns-check.{rest}"),
        None => hostname.to_string(),
    }
}

// ---- the actions ----

/// Who is changing an app's domains: its owner, or staff with a reason (audited). `None`
/// for the owner, `Some(reason)` for an override.
fn acting_for(user: &User, app: &App, override_reason: Option<&str>) -> AppResult<Option<String>> {
    if app.owner_id == user.id {
        return Ok(None);
    }
    if !user.role.is_staff() {
        return Err(AppError::forbidden());
    }
    match override_reason.map(str::trim) {
        Some(reason) if !reason.is_empty() => Ok(Some(reason.to_string())),
        _ => Err(AppError::new(
            axum::http::StatusCode::FORBIDDEN,
            ErrorItem::new(
                "override_reason_required",
                format!(
                    "{}'s domains belong to its owner, {}. Staff change them only through a ticket, or with an override reason that is audited (override_reason).",
                    app.name, app.owner_email
                ),
            )
            .on("override_reason"),
        )),
    }
}

/// The verified claim of another app that stops `app` from holding `hostname`: the same name
/// anywhere, or an overlapping name of another customer (unless staff override that).
async fn blocking_claim(
    conn: &mut sqlx::AnyConnection,
    app: &App,
    hostname: &str,
    overridden: bool,
) -> AppResult<Option<String>> {
    Ok(store::verified_near(conn, app, hostname)
        .await?
        .into_iter()
        .find(|(other, owner)| {
            other == hostname
                || (*owner != app.owner_id && !overridden && overlaps(other, hostname))
        })
        .map(|(other, _)| other))
}

fn taken(hostname: &str, other: &str) -> AppError {
    let why = if other == hostname {
        format!("{hostname} is verified by another app")
    } else {
        format!("{other}, which overlaps {hostname}, is verified by another customer")
    };
    AppError::conflict(
        "domain_taken",
        format!("{why}; a verified name blocks overlapping claims. If the domain is yours, contact support: staff can review it."),
    )
    .on_field("hostname")
}

/// Claims a domain for `app`: pending until proven, not published to any edge before.
pub async fn add(
    state: &AppState,
    user: &User,
    ip: ClientIp,
    app: &App,
    raw: &str,
    override_reason: Option<&str>,
) -> AppResult<Domain> {
    let reason = acting_for(user, app, override_reason)?;
    let host = hostname::normalize(raw).map_err(|m| {
        AppError::unprocessable(ErrorItem::new("invalid_hostname", m).on("hostname"))
    })?;
    if let Some(apps_domain) = &state.config.apps_domain
        && (base(&host) == apps_domain || base(&host).ends_with(&format!(".{apps_domain}")))
    {
        return Err(AppError::unprocessable(
            ErrorItem::new(
                "reserved_domain",
                format!("Names under {apps_domain} are the platform's own; your app already answers at its platform hostname. Add your own domain instead."),
            )
            .on("hostname"),
        ));
    }
    if let Some(existing) = store::find(&state.db, app, &host).await?
        && existing.verification != Verification::Expired
    {
        return Err(AppError::conflict(
            "domain_exists",
            format!("{host} is already a domain of this app."),
        )
        .on_field("hostname"));
    }
    let mut conn = state.db.acquire().await?;
    if let Some(other) = blocking_claim(&mut conn, app, &host, reason.is_some()).await? {
        return Err(taken(&host, &other));
    }
    drop(conn);
    let domain = store::claim(&state.db, app, &host, &new_token()).await?;
    audit::record(
        &state.db,
        Entry::new(Some(user), "domain.added", "domain", &host)
            .app(&app.name)
            .detail(json!({"verification": "pending", "override_reason": reason}))
            .ip(ip.0),
    )
    .await?;
    Ok(domain)
}

/// Whether the app's edge pair serves `hostname` now (verified and covered by its certificate).
async fn served_now(state: &AppState, app: &App, domain: &Domain) -> AppResult<bool> {
    if domain.verification != Verification::Verified {
        return Ok(false);
    }
    let mut conn = state.db.acquire().await?;
    let sans = crate::edge::store::served_names(&mut conn, app.id).await?;
    Ok(sans
        .iter()
        .any(|san| hostname::covers(san, &domain.hostname)))
}

/// Removes a domain. One the edge serves now is removed only when `confirm` repeats its name,
/// because visitors lose HTTPS for it at once.
pub async fn remove(
    state: &AppState,
    user: &User,
    ip: ClientIp,
    app: &App,
    raw: &str,
    confirm: Option<&str>,
    override_reason: Option<&str>,
) -> AppResult<()> {
    let reason = acting_for(user, app, override_reason)?;
    let host = hostname::normalize(raw).unwrap_or_else(|_| raw.trim().to_lowercase());
    let Some(domain) = store::find(&state.db, app, &host).await? else {
        return Err(AppError::not_found("domain"));
    };
    let served = served_now(state, app, &domain).await?;
    let confirmed = confirm
        .and_then(|c| hostname::normalize(c).ok())
        .is_some_and(|c| c == host);
    if served && !confirmed {
        return Err(AppError::conflict(
            "confirmation_required",
            format!(
                "{host} is served over HTTPS by {}'s edge servers now. Removing it stops that at once: visitors to https://{host} get a connection error, while the certificate stays stored and the edge pair stays provisioned (and billed) for the app's other domains. To go ahead, confirm with the name (--confirm {host}, or ?confirm={host}).",
                app.name
            ),
        ));
    }
    if !store::remove(&state.db, app, &host).await? {
        return Err(AppError::not_found("domain"));
    }
    if domain.verification == Verification::Verified {
        republish(state, app).await?;
    }
    audit::record(
        &state.db,
        Entry::new(Some(user), "domain.removed", "domain", &host)
            .app(&app.name)
            .detail(json!({"was_served": served, "override_reason": reason}))
            .ip(ip.0),
    )
    .await
}

/// Tells the app's edge pair (if it has one) to fetch its configuration again.
pub async fn republish(state: &AppState, app: &App) -> AppResult<()> {
    if crate::edge::store::bump_config_of_app(&state.db, app.id).await? {
        state.config_changed.notify_waiters();
    }
    Ok(())
}

/// Checks a pending claim's proof now (or, for staff with a reason, verifies it without one).
/// `user` is `None` when the worker checks on its schedule.
pub async fn verify(
    state: &AppState,
    user: Option<&User>,
    ip: ClientIp,
    app: &App,
    domain: &Domain,
    override_reason: Option<&str>,
) -> AppResult<Domain> {
    let reason = match (override_reason.map(str::trim), user) {
        (None, _) => None,
        (Some(_), None) => return Err(AppError::forbidden()),
        (Some(reason), Some(user)) => {
            user.require_staff()?;
            if reason.is_empty() {
                return Err(AppError::unprocessable(
                    ErrorItem::new(
                        "override_reason_required",
                        "Say why the domain is verified without its owner's proof; the reason is audited.",
                    )
                    .on("override_reason"),
                ));
            }
            Some(reason.to_string())
        }
    };
    let host = &domain.hostname;
    match domain.verification {
        Verification::Verified => return Ok(domain.clone()),
        Verification::Expired => {
            return Err(AppError::conflict(
                "claim_expired",
                format!(
                    "The claim on {host} expired unproven after 7 days. Add the domain again to get a new token."
                ),
            ));
        }
        Verification::Pending => {}
    }
    let method = match &reason {
        Some(reason) => format!("staff override: {reason}"),
        None => {
            let name = txt_name(host);
            let token = domain.token.clone().unwrap_or_default();
            let found = match state.dns.txt(&name).await {
                Ok(found) => found,
                Err(e) => {
                    store::note_unproven(&state.db, domain.id, &e).await?;
                    return Err(unproven(e));
                }
            };
            if !found.iter().any(|value| value.trim() == token) {
                let seen = if found.is_empty() {
                    "none is published yet".to_string()
                } else {
                    format!("found {}", found.join(", "))
                };
                let message = format!(
                    "No TXT record {name} with the value {token} ({seen}). Create it at your DNS provider, then check again; new records can take a few minutes to appear."
                );
                store::note_unproven(&state.db, domain.id, &message).await?;
                return Err(unproven(message));
            }
            "TXT record".to_string()
        }
    };
    let mut tx = state.db.begin().await?;
    store::lock_claims(&mut tx).await?;
    if let Some(other) = blocking_claim(&mut tx, app, host, reason.is_some()).await? {
        return Err(taken(host, &other));
    }
    if !store::mark_verified(&mut tx, domain.id, &method).await? {
        drop(tx);
        // Verified meanwhile (the worker found the same proof), or by another app first.
        return match store::find(&state.db, app, host).await? {
            Some(now) if now.verification == Verification::Verified => Ok(now),
            _ => Err(AppError::conflict(
                "domain_taken",
                format!("{host} was verified by another app first."),
            )),
        };
    }
    audit::record(
        &mut *tx,
        Entry::new(user, "domain.verified", "domain", host)
            .app(&app.name)
            .detail(json!({"method": method, "override_reason": reason}))
            .ip(ip.0),
    )
    .await?;
    tx.commit().await?;
    republish(state, app).await?;
    Ok(store::find(&state.db, app, host)
        .await?
        .unwrap_or_else(|| domain.clone()))
}

fn unproven(message: String) -> AppError {
    AppError::unprocessable(ErrorItem::new("verification_failed", message))
}

/// Looks the domain up now and records where it points.
pub async fn check_dns(state: &AppState, app: &App, domain: &Domain) -> AppResult<Domain> {
    let target = target(state, app).await?;
    let outcome = state
        .dns
        .resolve(&probe_name(&domain.hostname))
        .await
        .map(|seen| (target.judge(&seen), seen.describe()));
    store::note_dns(&state.db, domain.id, &outcome).await?;
    Ok(store::find(&state.db, app, &domain.hostname)
        .await?
        .unwrap_or_else(|| domain.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_overlap_at_and_below_each_other() {
        for (a, b) in [
            ("www.a.example", "www.a.example"),
            ("www.a.example", "*.a.example"),
            ("www.a.example", "a.example"),
            ("www.a.example", "*.www.a.example"),
            ("a.example", "*.a.example"),
            ("a.example", "deep.www.a.example"),
        ] {
            assert!(overlaps(a, b), "{a} / {b}");
            assert!(overlaps(b, a), "{b} / {a}");
        }
        for (a, b) in [
            ("www.a.example", "shop.a.example"),
            ("a.example", "b.example"),
            ("a.example", "xa.example"),
            ("*.a.example", "*.b.a2.example"),
        ] {
            assert!(!overlaps(a, b), "{a} / {b}");
        }
    }

    #[test]
    fn proofs_live_at_the_base_name() {
        assert_eq!(txt_name("*.a.example"), "_certdrop-challenge.a.example");
        assert_eq!(
            txt_name("www.a.example"),
            "_certdrop-challenge.www.a.example"
        );
    }

    #[test]
    fn a_domain_points_here_by_cname_or_by_the_pairs_addresses_only() {
        let target = Target {
            cname: Some("shop.apps.example.net".into()),
            addresses: vec!["192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap()],
        };
        let seen = |cnames: &[&str], addresses: &[&str]| dns::Resolved {
            cnames: cnames.iter().map(|c| c.to_string()).collect(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        };
        assert_eq!(target.judge(&seen(&[], &[])), DnsState::NoRecord);
        assert_eq!(
            target.judge(&seen(&["shop.apps.example.net"], &["192.0.2.9"])),
            DnsState::PointsHere
        );
        assert_eq!(
            target.judge(&seen(&[], &["192.0.2.2", "192.0.2.1"])),
            DnsState::PointsHere
        );
        assert_eq!(
            target.judge(&seen(&[], &["192.0.2.1", "198.51.100.7"])),
            DnsState::PointsElsewhere
        );
        assert_eq!(
            target.judge(&seen(&["old.host.example"], &["198.51.100.7"])),
            DnsState::PointsElsewhere
        );
        assert_eq!(
            target.records("www.shop.example")[0].value,
            "shop.apps.example.net"
        );
        assert_eq!(target.address_records("shop.example").len(), 2);
    }
}
