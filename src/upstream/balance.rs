//! Choosing an endpoint: a pure function of each endpoint's health and requests in flight.

use crate::config::Balance;

/// What the balancer knows of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub healthy: bool,
    pub inflight: usize,
}

/// Picks an endpoint among `cands`, never `exclude` (the one a retry is moving away from).
/// Only healthy endpoints are eligible, unless none is: then every endpoint is (an
/// unhealthy-looking endpoint is better than a certain 503). `ticket` is the round-robin
/// counter's value for this request; `random(n)` returns a number below `n`.
pub fn choose(
    cands: &[Candidate],
    balance: Balance,
    exclude: Option<usize>,
    ticket: usize,
    mut random: impl FnMut(usize) -> usize,
) -> Option<usize> {
    let allowed = |i: usize| Some(i) != exclude;
    let healthy = (0..cands.len())
        .filter(|&i| allowed(i) && cands[i].healthy)
        .count();
    let only_healthy = healthy > 0;
    let eligible = |i: usize| allowed(i) && (!only_healthy || cands[i].healthy);
    let count = if only_healthy {
        healthy
    } else {
        (0..cands.len()).filter(|&i| allowed(i)).count()
    };
    let nth = |k: usize| (0..cands.len()).filter(|&i| eligible(i)).nth(k);
    match count {
        0 => None,
        1 => nth(0),
        _ => match balance {
            Balance::RoundRobin => nth(ticket % count),
            Balance::LeastInflight => {
                let a = random(count) % count;
                let mut b = random(count - 1) % (count - 1);
                if b >= a {
                    b += 1;
                }
                let (ia, ib) = (nth(a)?, nth(b)?);
                Some(if cands[ib].inflight < cands[ia].inflight {
                    ib
                } else {
                    ia
                })
            }
        },
    }
}

/// A fast per-thread random number below `n` (xorshift64*, seeded from the OS once per
/// thread). Balancing needs spread, not secrecy.
pub fn random_below(n: usize) -> usize {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut b = [0u8; 8];
            let _ = getrandom::fill(&mut b);
            u64::from_le_bytes(b) | 1
        });
    }
    if n <= 1 {
        return 0;
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as usize % n
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(healthy: bool, inflight: usize) -> Candidate {
        Candidate { healthy, inflight }
    }

    #[test]
    fn round_robin_cycles_over_healthy_endpoints_only() {
        let cands = [c(true, 0), c(false, 0), c(true, 0), c(true, 0)];
        let picks: Vec<_> = (0..6)
            .map(|t| choose(&cands, Balance::RoundRobin, None, t, |_| 0).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 2, 3, 0, 2, 3]);
    }

    #[test]
    fn every_endpoint_unhealthy_means_every_endpoint_is_tried() {
        let cands = [c(false, 0), c(false, 0), c(false, 0)];
        let picks: Vec<_> = (0..3)
            .map(|t| choose(&cands, Balance::RoundRobin, None, t, |_| 0).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2]);
        assert!(choose(&cands, Balance::LeastInflight, None, 0, |_| 0).is_some());
    }

    #[test]
    fn power_of_two_choices_takes_the_less_loaded_of_two() {
        let cands = [c(true, 5), c(true, 1), c(true, 9)];
        // random draws a=0, b=0 → b becomes 1: endpoints 0 and 1 compared
        assert_eq!(
            choose(&cands, Balance::LeastInflight, None, 0, |_| 0),
            Some(1)
        );
        // a=2, b=0: endpoints 2 and 0 compared
        let mut draws = [2usize, 0].into_iter();
        assert_eq!(
            choose(&cands, Balance::LeastInflight, None, 0, |_| draws
                .next()
                .unwrap()),
            Some(0)
        );
        // an unhealthy endpoint is never compared while a healthy one exists
        let cands = [c(false, 0), c(true, 7), c(true, 3)];
        for t in 0..20 {
            let pick = choose(&cands, Balance::LeastInflight, None, 0, |n| (t * 7) % n).unwrap();
            assert_eq!(pick, 2, "draw {t}");
        }
    }

    #[test]
    fn the_excluded_endpoint_is_never_chosen() {
        let cands = [c(true, 0), c(true, 0)];
        for t in 0..10 {
            for b in [Balance::RoundRobin, Balance::LeastInflight] {
                assert_eq!(choose(&cands, b, Some(0), t, |n| t % n), Some(1));
            }
        }
        // a retry away from the only healthy endpoint goes to an unhealthy one
        let cands = [c(true, 0), c(false, 0)];
        assert_eq!(
            choose(&cands, Balance::RoundRobin, Some(0), 0, |_| 0),
            Some(1)
        );
        // nothing else to go to
        assert_eq!(
            choose(&[c(true, 0)], Balance::RoundRobin, Some(0), 0, |_| 0),
            None
        );
        assert_eq!(choose(&[], Balance::LeastInflight, None, 0, |_| 0), None);
    }

    #[test]
    fn least_inflight_spreads_evenly_with_random_draws() {
        let cands = [c(true, 0), c(true, 0), c(true, 0), c(true, 0)];
        let mut hits = [0usize; 4];
        for _ in 0..40_000 {
            hits[choose(&cands, Balance::LeastInflight, None, 0, random_below).unwrap()] += 1;
        }
        for h in hits {
            assert!((8_000..12_000).contains(&h), "{hits:?}");
        }
    }
}
