//! The health state machine of one endpoint (pure), fed by active checks and by connection
//! failures of real requests.

/// Consecutive results and the current verdict.
#[derive(Debug, Clone, Default)]
pub struct Health {
    pub unhealthy: bool,
    failed_checks: u32,
    passed_checks: u32,
    connect_failures: u32,
}

/// Thresholds (`health_check.unhealthy_after` / `healthy_after`).
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub unhealthy_after: u32,
    pub healthy_after: u32,
}

/// A change of verdict, to be logged and exported once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    BecameUnhealthy,
    BecameHealthy,
}

impl Health {
    pub fn check_passed(&mut self, t: Thresholds) -> Option<Change> {
        self.failed_checks = 0;
        self.passed_checks = self.passed_checks.saturating_add(1);
        if self.unhealthy && self.passed_checks >= t.healthy_after {
            self.unhealthy = false;
            self.connect_failures = 0;
            return Some(Change::BecameHealthy);
        }
        None
    }

    pub fn check_failed(&mut self, t: Thresholds) -> Option<Change> {
        self.passed_checks = 0;
        self.failed_checks = self.failed_checks.saturating_add(1);
        self.eject_if(self.failed_checks >= t.unhealthy_after)
    }

    /// A request could not connect (refused, unreachable, connect timeout, TLS handshake).
    pub fn connect_failed(&mut self, t: Thresholds) -> Option<Change> {
        self.connect_failures = self.connect_failures.saturating_add(1);
        self.eject_if(self.connect_failures >= t.unhealthy_after)
    }

    /// A request got a response. Without active checks (a single endpoint), this is what
    /// brings an ejected endpoint back; with them, only passing checks do.
    pub fn responded(&mut self, active_checks: bool) -> Option<Change> {
        self.connect_failures = 0;
        if self.unhealthy && !active_checks {
            self.unhealthy = false;
            return Some(Change::BecameHealthy);
        }
        None
    }

    fn eject_if(&mut self, cond: bool) -> Option<Change> {
        if cond && !self.unhealthy {
            self.unhealthy = true;
            self.passed_checks = 0;
            return Some(Change::BecameUnhealthy);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        unhealthy_after: 2,
        healthy_after: 3,
    };

    #[test]
    fn unhealthy_after_consecutive_failed_checks_only() {
        let mut h = Health::default();
        assert_eq!(h.check_failed(T), None);
        assert_eq!(h.check_passed(T), None); // the run is broken
        assert_eq!(h.check_failed(T), None);
        assert_eq!(h.check_failed(T), Some(Change::BecameUnhealthy));
        assert!(h.unhealthy);
        assert_eq!(h.check_failed(T), None, "a change is reported once");
    }

    #[test]
    fn healthy_again_after_consecutive_passing_checks() {
        let mut h = Health::default();
        h.check_failed(T);
        h.check_failed(T);
        assert_eq!(h.check_passed(T), None);
        assert_eq!(h.check_passed(T), None);
        assert_eq!(h.check_failed(T), None);
        assert_eq!(h.check_passed(T), None);
        assert_eq!(h.check_passed(T), None);
        assert_eq!(h.check_passed(T), Some(Change::BecameHealthy));
        assert!(!h.unhealthy);
        assert_eq!(h.check_passed(T), None);
    }

    #[test]
    fn consecutive_connect_failures_eject_and_a_response_resets_the_run() {
        let mut h = Health::default();
        assert_eq!(h.connect_failed(T), None);
        assert_eq!(h.responded(true), None);
        assert_eq!(h.connect_failed(T), None);
        assert_eq!(h.connect_failed(T), Some(Change::BecameUnhealthy));
        // with active checks, a lucky response does not bring it back; checks do
        assert_eq!(h.responded(true), None);
        assert!(h.unhealthy);
        for _ in 0..2 {
            assert_eq!(h.check_passed(T), None);
        }
        assert_eq!(h.check_passed(T), Some(Change::BecameHealthy));
        // without active checks a response does
        h.connect_failed(T);
        assert_eq!(h.connect_failed(T), Some(Change::BecameUnhealthy));
        assert_eq!(h.responded(false), Some(Change::BecameHealthy));
    }
}
