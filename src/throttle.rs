//! Failed-authentication throttling: a token bucket per client address, drained by each 401.
//! A client whose bucket is empty gets 429 with `Retry-After` before any work on its token.
//!
//! Memory is bounded: buckets live in a moka cache of at most `max_clients` entries, and an
//! IPv6 client is keyed by its /64 (one subscriber's allocation), so a spray of random
//! addresses inside one prefix is one bucket. Only failures create buckets: a client that
//! never fails costs one cache lookup per request and no memory.

use crate::config::AuthThrottleConfig;
use moka::sync::Cache;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The bucket key: the IPv4 address, or the IPv6 address's /64. IPv4-mapped IPv6 addresses
/// count as their IPv4 address.
pub fn client_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4)),
            // the top bit set keeps /64 keys apart from IPv4 keys
            None => (u128::from(v6) & !((1u128 << 64) - 1)) | (1u128 << 127),
        },
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant, burst: f64, per_second: f64) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * per_second).min(burst);
        self.at = now;
    }
}

pub struct AuthThrottle {
    buckets: Cache<u128, Arc<Mutex<Bucket>>>,
    /// One bit per hash of a client key that has failed at some time: a client whose bit is
    /// clear has no bucket, and is answered without a cache lookup (which costs as much as the
    /// rest of a cached decision). Bits are never cleared; once most are set, every check
    /// looks up the cache, as without the filter.
    failed_once: Box<[AtomicU64]>,
    burst: f64,
    per_second: f64,
}

const FILTER_WORDS: usize = 1024; // 65,536 bits, 8 KiB

fn filter_bit(key: u128) -> (usize, u64) {
    let h = ((key as u64) ^ ((key >> 64) as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 48;
    ((h as usize) / 64 % FILTER_WORDS, 1u64 << (h % 64))
}

impl AuthThrottle {
    /// `None` when throttling is off (`burst: 0`).
    pub fn new(c: &AuthThrottleConfig) -> Option<AuthThrottle> {
        if c.burst == 0 || c.per_second <= 0.0 || c.max_clients == 0 {
            return None;
        }
        let burst = f64::from(c.burst);
        // an idle bucket is full again after burst/per_second: forgetting it then is exact
        let refill = Duration::from_secs_f64((burst / c.per_second).clamp(1.0, 86_400.0));
        Some(AuthThrottle {
            buckets: Cache::builder()
                .max_capacity(c.max_clients)
                .time_to_idle(refill)
                .build(),
            failed_once: (0..FILTER_WORDS).map(|_| AtomicU64::new(0)).collect(),
            burst,
            per_second: c.per_second,
        })
    }

    fn may_have_failed(&self, key: u128) -> bool {
        let (w, bit) = filter_bit(key);
        self.failed_once[w].load(Ordering::Relaxed) & bit != 0
    }

    /// `Err(seconds)` when this client has used up its failures: answer 429 with
    /// `Retry-After: seconds`. Does not change the bucket.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        // the cache is looked up and the clock read only for a client that may have failed
        let key = client_key(ip);
        if !self.may_have_failed(key) {
            return Ok(());
        }
        let Some(b) = self.buckets.get(&key) else {
            return Ok(());
        };
        self.check_bucket(&b, Instant::now())
    }

    #[cfg(test)]
    fn check_at(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        let key = client_key(ip);
        if !self.may_have_failed(key) {
            return Ok(());
        }
        let Some(b) = self.buckets.get(&key) else {
            return Ok(());
        };
        self.check_bucket(&b, now)
    }

    fn check_bucket(&self, b: &Arc<Mutex<Bucket>>, now: Instant) -> Result<(), u64> {
        let mut b = b.lock().unwrap_or_else(|p| p.into_inner());
        b.refill(now, self.burst, self.per_second);
        if b.tokens >= 1.0 {
            Ok(())
        } else {
            let wait = ((1.0 - b.tokens) / self.per_second).ceil();
            Err((wait as u64).max(1))
        }
    }

    /// Records one failed authentication (a 401) of this client.
    pub fn failed(&self, ip: IpAddr) {
        self.failed_at(ip, Instant::now())
    }

    fn failed_at(&self, ip: IpAddr, now: Instant) {
        let burst = self.burst;
        let key = client_key(ip);
        // set before the bucket exists: a check that sees the bucket also sees the bit
        let (w, bit) = filter_bit(key);
        self.failed_once[w].fetch_or(bit, Ordering::Relaxed);
        let b = self.buckets.get_with(key, || {
            Arc::new(Mutex::new(Bucket {
                tokens: burst,
                at: now,
            }))
        });
        let mut b = b.lock().unwrap_or_else(|p| p.into_inner());
        b.refill(now, self.burst, self.per_second);
        b.tokens = (b.tokens - 1.0).max(0.0);
    }

    /// Buckets held now (approximate: moka counts lazily).
    pub fn tracked(&self) -> u64 {
        self.buckets.run_pending_tasks();
        self.buckets.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(burst: u32, per_second: f64, max_clients: u64) -> AuthThrottle {
        AuthThrottle::new(&AuthThrottleConfig {
            burst,
            per_second,
            max_clients,
        })
        .unwrap()
    }

    #[test]
    fn a_client_gets_burst_failures_then_waits_for_the_refill() {
        let t = throttle(3, 0.5, 100);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(t.check_at(ip, t0), Ok(()));
            t.failed_at(ip, t0);
        }
        // empty: one token comes back after 2 s
        assert_eq!(t.check_at(ip, t0), Err(2));
        assert_eq!(t.check_at(ip, t0 + Duration::from_millis(1500)), Err(1));
        assert_eq!(t.check_at(ip, t0 + Duration::from_secs(2)), Ok(()));
        // other clients are not affected
        assert_eq!(t.check_at("192.0.2.8".parse().unwrap(), t0), Ok(()));
    }

    #[test]
    fn ipv6_clients_share_their_64_and_mapped_ipv4_is_ipv4() {
        let t = throttle(2, 1.0, 100);
        let t0 = Instant::now();
        t.failed_at("2001:db8:1:2::1".parse().unwrap(), t0);
        t.failed_at("2001:db8:1:2:ffff::9".parse().unwrap(), t0);
        assert_eq!(
            t.check_at("2001:db8:1:2:abcd::1".parse().unwrap(), t0),
            Err(1)
        );
        assert_eq!(t.check_at("2001:db8:1:3::1".parse().unwrap(), t0), Ok(()));
        t.failed_at("::ffff:198.51.100.1".parse().unwrap(), t0);
        t.failed_at("198.51.100.1".parse().unwrap(), t0);
        assert!(t.check_at("198.51.100.1".parse().unwrap(), t0).is_err());
        assert_ne!(
            client_key("0.0.0.1".parse().unwrap()),
            client_key("::1".parse().unwrap())
        );
    }

    #[test]
    fn a_spray_of_random_addresses_stays_within_max_clients() {
        let t = throttle(5, 1.0, 1000);
        let t0 = Instant::now();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..50_000 {
            // xorshift: a new /64 each time
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ip = IpAddr::V6(std::net::Ipv6Addr::from(u128::from(x) << 64 | 1));
            t.failed_at(ip, t0);
        }
        let n = t.tracked();
        assert!(n <= 1000, "{n} buckets held");
    }

    #[test]
    fn off_when_burst_is_zero() {
        assert!(
            AuthThrottle::new(&AuthThrottleConfig {
                burst: 0,
                per_second: 1.0,
                max_clients: 10
            })
            .is_none()
        );
    }

    #[test]
    fn the_filter_only_skips_clients_that_never_failed() {
        let t = throttle(1, 0.001, 100);
        let bad: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(!t.may_have_failed(client_key(bad)));
        t.failed(bad);
        assert!(t.may_have_failed(client_key(bad)));
        assert!(t.check(bad).is_err(), "its bucket is empty");
        // a client sharing the failed client's bit is looked up, and has no bucket
        let (w, bit) = filter_bit(client_key(bad));
        let twin = (1u32..)
            .map(|n| IpAddr::from(std::net::Ipv4Addr::from(n)))
            .find(|ip| *ip != bad && filter_bit(client_key(*ip)) == (w, bit))
            .unwrap();
        assert!(t.may_have_failed(client_key(twin)));
        assert_eq!(t.check(twin), Ok(()));
        // a client with a clear bit is never looked up (and fine)
        let other = (1u32..)
            .map(|n| IpAddr::from(std::net::Ipv4Addr::from(n)))
            .find(|ip| !t.may_have_failed(client_key(*ip)))
            .unwrap();
        assert_eq!(t.check(other), Ok(()));
        // IPv6 clients of one /64 share a key, so a bit
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff".parse().unwrap();
        t.failed(a);
        assert!(t.check(b).is_err());
    }
}
