//! Rate limits on password and second-factor checks (browser sign-in and API tokens), kept in
//! memory per instance. Two guards, neither of which lets a stranger lock an account:
//! - per client IP, a budget of attempts (30 in a burst, then one every 2 s), against one
//!   client trying many accounts (an IPv6 client is its /64: one subscriber's whole network);
//! - per (account, client IP) pair, an exponential backoff after failures: after 5 wrong
//!   answers, 1 s, then 2, 4, … up to 15 minutes between tries; a success clears it. Someone
//!   guessing from elsewhere slows only themselves, never the account's owner.

use std::{
    collections::HashMap,
    net::IpAddr,
    num::NonZeroU32,
    sync::Mutex,
    time::{Duration, Instant},
};

use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};

use crate::error::{AppError, AppResult};

/// Failures allowed before the backoff starts.
const FREE_FAILURES: u32 = 5;
/// The most (account, client) pairs remembered: a flood of made-up accounts cannot grow the
/// map past this (about 300 bytes each).
const MAX_PAIRS: usize = 50_000;
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);

struct Failures {
    count: u32,
    not_before: Instant,
}

pub struct LoginLimiter {
    by_ip: DefaultKeyedRateLimiter<IpAddr>,
    failures: Mutex<HashMap<(String, IpAddr), Failures>>,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        Self::new()
    }
}

/// The key a client is limited by: its IPv4 address, or the /64 its IPv6 address is in (a
/// single host is handed a whole /64 and may pick any address in it).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

/// "Try again in N seconds", N rounded up (and at least 1).
fn wait_error(wait: Duration) -> AppError {
    AppError::rate_limited((wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1))
}

impl LoginLimiter {
    pub fn new() -> Self {
        let per_ip = Quota::with_period(Duration::from_secs(2))
            .expect("non-zero period")
            .allow_burst(NonZeroU32::new(30).expect("non-zero"));
        Self {
            by_ip: RateLimiter::keyed(per_ip),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one attempt from the client's budget, unless the pair is backing off: then says
    /// how long to wait.
    pub fn check(&self, ip: IpAddr, account: &str) -> AppResult<()> {
        let ip = client_key(ip);
        let now = Instant::now();
        if let Some(f) = self
            .failures
            .lock()
            .expect("limiter lock")
            .get(&(account.to_string(), ip))
            && f.not_before > now
        {
            return Err(wait_error(f.not_before - now));
        }
        let clock = DefaultClock::default();
        self.by_ip
            .check_key(&ip)
            .map_err(|not_until| wait_error(not_until.wait_time_from(clock.now())))
    }

    /// A wrong password or code from this client for this account.
    pub fn failed(&self, ip: IpAddr, account: &str) {
        let ip = client_key(ip);
        let mut failures = self.failures.lock().expect("limiter lock");
        if failures.len() >= MAX_PAIRS {
            // Full: forget the pairs not backing off now; if that is not enough, this one
            // goes unremembered (the per-client budget still holds it back).
            let now = Instant::now();
            failures.retain(|_, f| f.not_before > now);
            if failures.len() >= MAX_PAIRS {
                return;
            }
        }
        let entry = failures
            .entry((account.to_string(), ip))
            .or_insert(Failures {
                count: 0,
                not_before: Instant::now(),
            });
        entry.count += 1;
        if entry.count >= FREE_FAILURES {
            let doublings = (entry.count - FREE_FAILURES).min(20);
            let backoff = Duration::from_secs(1u64 << doublings).min(MAX_BACKOFF);
            entry.not_before = Instant::now() + backoff;
        }
    }

    /// A right answer: the pair starts afresh.
    pub fn succeeded(&self, ip: IpAddr, account: &str) {
        let ip = client_key(ip);
        self.failures
            .lock()
            .expect("limiter lock")
            .remove(&(account.to_string(), ip));
    }

    /// Forgets what no longer limits anyone, so memory stays bounded.
    pub fn prune(&self) {
        self.by_ip.retain_recent();
        let stale = Instant::now() - MAX_BACKOFF;
        self.failures
            .lock()
            .expect("limiter lock")
            .retain(|_, f| f.not_before > stale);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_per_account_and_client_never_per_account_alone() {
        let limiter = LoginLimiter::new();
        let attacker: IpAddr = "192.0.2.1".parse().unwrap();
        let owner: IpAddr = "198.51.100.7".parse().unwrap();
        for _ in 0..5 {
            limiter.check(attacker, "ann@example.com").unwrap();
            limiter.failed(attacker, "ann@example.com");
        }
        let err = limiter.check(attacker, "ann@example.com").unwrap_err();
        assert_eq!(err.first_code(), "rate_limited");
        assert_eq!(err.retry_after, Some(1));
        limiter.failed(attacker, "ann@example.com");
        assert_eq!(
            limiter
                .check(attacker, "ann@example.com")
                .unwrap_err()
                .retry_after,
            Some(2),
            "doubling"
        );
        // The owner, elsewhere, is not locked out; nor is another account from the attacker.
        limiter.check(owner, "ann@example.com").unwrap();
        limiter.check(attacker, "bob@example.com").unwrap();
        limiter.succeeded(attacker, "ann@example.com");
        limiter.check(attacker, "ann@example.com").unwrap();
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        let limiter = LoginLimiter::new();
        // Five wrong answers from five addresses of one /64 are five from one client.
        for host in 1..=5 {
            let ip: IpAddr = format!("2001:db8:1:2::{host:x}").parse().unwrap();
            limiter.check(ip, "ann@example.com").unwrap();
            limiter.failed(ip, "ann@example.com");
        }
        let sibling: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert!(limiter.check(sibling, "ann@example.com").is_err());
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        limiter.check(elsewhere, "ann@example.com").unwrap();
        assert_eq!(
            client_key("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }
}
