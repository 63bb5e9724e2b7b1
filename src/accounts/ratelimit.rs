//! Rate limits on password checks (browser login and API token creation), per client IP and
//! per account, answering "try again in N seconds". Kept in memory, per instance.

use std::{net::IpAddr, num::NonZeroU32, time::Duration};

use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};

use crate::error::{AppError, AppResult};

pub struct LoginLimiter {
    by_ip: DefaultKeyedRateLimiter<IpAddr>,
    by_account: DefaultKeyedRateLimiter<String>,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl LoginLimiter {
    /// An IP may try 30 times in a burst, then once every 2 s; an account 5 times, then once
    /// every 12 s (5 a minute: slow enough to make guessing a 12-character password hopeless).
    pub fn new() -> Self {
        let per_ip = Quota::with_period(Duration::from_secs(2))
            .expect("non-zero period")
            .allow_burst(NonZeroU32::new(30).expect("non-zero"));
        let per_account = Quota::with_period(Duration::from_secs(12))
            .expect("non-zero period")
            .allow_burst(NonZeroU32::new(5).expect("non-zero"));
        Self {
            by_ip: RateLimiter::keyed(per_ip),
            by_account: RateLimiter::keyed(per_account),
        }
    }

    /// Takes one attempt from both budgets, or says how long to wait.
    pub fn check(&self, ip: IpAddr, email: &str) -> AppResult<()> {
        let clock = DefaultClock::default();
        let wait = |not_until: governor::NotUntil<_>| {
            let wait = not_until.wait_time_from(clock.now());
            AppError::rate_limited(wait.as_secs().max(1) + u64::from(wait.subsec_nanos() > 0))
        };
        self.by_ip.check_key(&ip).map_err(wait)?;
        self.by_account
            .check_key(&email.to_string())
            .map_err(wait)?;
        Ok(())
    }

    /// Forgets keys whose budget is full again, so memory stays bounded.
    pub fn prune(&self) {
        self.by_ip.retain_recent();
        self.by_account.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sixth_quick_attempt_on_one_account_waits() {
        let limiter = LoginLimiter::new();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..5 {
            limiter.check(ip, "ann@example.com").unwrap();
        }
        let err = limiter.check(ip, "ann@example.com").unwrap_err();
        assert_eq!(err.first_code(), "rate_limited");
        assert!(err.message().contains("Try again in"));
        limiter.check(ip, "bob@example.com").unwrap();
    }
}
