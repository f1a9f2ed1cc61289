//! Which origin to ask: a list in preference order, each behind a circuit breaker.
//!
//! A breaker opens after `threshold` consecutive failures and stays open for `cooldown`;
//! then one request may try the origin again (half-open), and a success closes it. Open
//! origins go to the back of the order rather than being skipped, so when every origin is
//! failing the edge still tries them all instead of refusing without asking. Time is passed
//! in: the breaker never reads a clock.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One origin's breaker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Breaker {
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    /// Whether requests should go elsewhere first at `now`.
    pub fn is_open(&self, now: Instant) -> bool {
        self.open_until.is_some_and(|until| now < until)
    }

    /// Records an outcome at `now`.
    pub fn record(&mut self, ok: bool, now: Instant, threshold: u32, cooldown: Duration) {
        if ok {
            *self = Self::default();
            return;
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.consecutive_failures >= threshold {
            self.open_until = Some(now + cooldown);
        }
    }
}

/// The configured origins and their breakers.
#[derive(Debug)]
pub struct Upstreams {
    origins: Vec<String>,
    breakers: Mutex<Vec<Breaker>>,
    threshold: u32,
    cooldown: Duration,
}

impl Upstreams {
    /// Origins in preference order; a breaker opens after `threshold` straight failures for
    /// `cooldown`.
    pub fn new(origins: Vec<String>, threshold: u32, cooldown: Duration) -> Self {
        let breakers = Mutex::new(vec![Breaker::default(); origins.len()]);
        Self {
            origins,
            breakers,
            threshold: threshold.max(1),
            cooldown,
        }
    }

    /// Origins to try at `now`, in order: closed breakers first (configured order), open ones
    /// after.
    pub fn order(&self, now: Instant) -> Vec<(usize, &str)> {
        let breakers = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        let (mut healthy, mut open): (Vec<_>, Vec<_>) = (Vec::new(), Vec::new());
        for (i, origin) in self.origins.iter().enumerate() {
            if breakers[i].is_open(now) {
                open.push((i, origin.as_str()));
            } else {
                healthy.push((i, origin.as_str()));
            }
        }
        healthy.extend(open);
        healthy
    }

    /// Records the outcome of a request to origin `i` at `now`.
    pub fn record(&self, i: usize, ok: bool, now: Instant) {
        let mut breakers = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = breakers.get_mut(i) {
            b.record(ok, now, self.threshold, self.cooldown);
        }
    }

    /// Whether origin `i`'s breaker is open at `now`.
    pub fn is_open(&self, i: usize, now: Instant) -> bool {
        let breakers = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        breakers.get(i).is_some_and(|b| b.is_open(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_origin_moves_to_the_back_and_comes_back_after_the_cooldown() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let ups = Upstreams::new(vec!["a".into(), "b".into()], 3, secs(10));
        let names = |now| {
            ups.order(now)
                .into_iter()
                .map(|(_, n)| n.to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(t0), ["a", "b"]);
        ups.record(0, false, t0);
        ups.record(0, false, t0);
        assert_eq!(names(t0), ["a", "b"], "opened before the threshold");
        ups.record(0, false, t0);
        assert_eq!(names(t0 + secs(1)), ["b", "a"]);
        assert!(ups.is_open(0, t0 + secs(9)));
        // Half-open after the cooldown: tried first again; one more failure reopens it.
        assert_eq!(names(t0 + secs(10)), ["a", "b"]);
        ups.record(0, false, t0 + secs(10));
        assert_eq!(names(t0 + secs(11)), ["b", "a"]);
        // A success closes it.
        ups.record(0, true, t0 + secs(21));
        assert_eq!(names(t0 + secs(21)), ["a", "b"]);
        // A success between failures resets the count.
        ups.record(1, false, t0);
        ups.record(1, false, t0);
        ups.record(1, true, t0);
        ups.record(1, false, t0);
        assert!(!ups.is_open(1, t0));
    }
}
