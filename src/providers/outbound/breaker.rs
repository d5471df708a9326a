//! The circuit breaker of one provider account.
//!
//! **Closed**: every attempt goes through and its result is counted in a sliding window of
//! `window` (ten buckets, so memory stays fixed whatever the rate). When an attempt fails and
//! the window holds at least `minimum_calls` results of which at least `failure_rate` failed,
//! the breaker **opens**: attempts are refused at once, with the time left of `cool_down`, so
//! a provider that is down costs no socket, no timeout and no retry. The first attempt after
//! the cool-down finds it **half-open**: up to `half_open_calls` trial attempts go through (the
//! rest are still refused); one failure opens it again for another cool-down, and once that
//! many trials have succeeded it **closes** with an empty window.
//!
//! Failures are transport errors, timeouts and 5xx answers; any other answer is a success,
//! except 429, which counts as neither (rate limiting is the provider's flow control, not an
//! outage; its `Retry-After` is honoured instead). Results of attempts admitted in an earlier
//! state (a slow call that started before the breaker opened) are ignored, and a trial whose
//! attempt is dropped (its caller gave up) gives its slot back.
//!
//! Written here rather than taken from a crate: `failsafe` lets any number of calls through
//! while half-open and cannot say how long a refusal lasts; `tower-resilience-circuitbreaker`
//! keeps its state machine private behind a tower `Layer`, and its refusal carries no wait
//! either. The wait is what the caller's RetryInfo needs.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// When a breaker opens and how it recovers.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// How far back the failure rate looks.
    pub window: Duration,
    /// The share of failed attempts in the window (0.0 to 1.0) that opens the breaker.
    pub failure_rate: f64,
    /// Fewer results than this in the window never open it: one failure of one call is no
    /// outage.
    pub minimum_calls: u32,
    /// How long it stays open before it lets trial attempts through.
    pub cool_down: Duration,
    /// Trial attempts let through while half-open; this many successes close it.
    pub half_open_calls: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(30),
            failure_rate: 0.5,
            minimum_calls: 10,
            cool_down: Duration::from_secs(15),
            half_open_calls: 3,
        }
    }
}

impl BreakerConfig {
    pub(super) fn check(&self) -> Result<(), String> {
        if self.window.is_zero() || self.cool_down.is_zero() {
            return Err("the breaker's window and cool-down must be positive".into());
        }
        if !(self.failure_rate > 0.0 && self.failure_rate <= 1.0) {
            return Err(format!(
                "the breaker's failure rate must be in (0, 1], not {}",
                self.failure_rate
            ));
        }
        if self.minimum_calls == 0 || self.half_open_calls == 0 {
            return Err("the breaker's minimum calls and half-open calls must be positive".into());
        }
        Ok(())
    }
}

/// The breaker's state, as the `coffer_provider_breaker_state` gauge reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

/// What an attempt came to, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Success,
    Failure,
    /// Counts as neither (a 429).
    Neutral,
}

const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which slice of time (since the window's epoch) the counts belong to.
    slot: u64,
    ok: u32,
    failed: u32,
}

/// Counts over the last `window`, in `BUCKETS` slices: a result older than the window is
/// forgotten a slice at a time.
#[derive(Debug)]
struct Window {
    epoch: Instant,
    width: Duration,
    buckets: [Bucket; BUCKETS],
}

impl Window {
    fn new(window: Duration, now: Instant) -> Self {
        Self {
            epoch: now,
            width: (window / BUCKETS as u32).max(Duration::from_millis(1)),
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    fn slot(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.epoch).as_nanos() / self.width.as_nanos()) as u64
    }

    fn record(&mut self, now: Instant, failed: bool) {
        let slot = self.slot(now);
        let bucket = &mut self.buckets[(slot % BUCKETS as u64) as usize];
        if bucket.slot != slot {
            *bucket = Bucket {
                slot,
                ..Bucket::default()
            };
        }
        if failed {
            bucket.failed = bucket.failed.saturating_add(1);
        } else {
            bucket.ok = bucket.ok.saturating_add(1);
        }
    }

    /// (calls, failures) in the window ending now.
    fn totals(&self, now: Instant) -> (u32, u32) {
        let current = self.slot(now);
        self.buckets
            .iter()
            .filter(|b| b.slot + (BUCKETS as u64) > current && b.slot <= current)
            .fold((0u32, 0u32), |(calls, failed), b| {
                (
                    calls.saturating_add(b.ok).saturating_add(b.failed),
                    failed.saturating_add(b.failed),
                )
            })
    }
}

#[derive(Debug)]
enum State {
    Closed(Window),
    Open { until: Instant },
    HalfOpen { in_flight: u32, succeeded: u32 },
}

#[derive(Debug)]
struct Shared {
    state: State,
    /// Bumped at every transition, so a result from an attempt admitted in an earlier state is
    /// told apart and ignored.
    cycle: u64,
}

/// One account's breaker. Cheap to clone; clones share the state.
#[derive(Clone)]
pub(super) struct Breaker {
    config: Arc<BreakerConfig>,
    shared: Arc<Mutex<Shared>>,
    /// Told of every transition (the gauge and the log).
    on_change: Arc<dyn Fn(BreakerState) + Send + Sync>,
}

/// An admitted attempt. Report its result with [`Admitted::record`]; dropped unreported (its
/// caller gave up), a half-open trial gives its slot back.
pub(super) struct Admitted {
    breaker: Breaker,
    cycle: u64,
    trial: bool,
    done: bool,
}

impl Breaker {
    pub(super) fn new(
        config: BreakerConfig,
        on_change: Arc<dyn Fn(BreakerState) + Send + Sync>,
    ) -> Self {
        let window = Window::new(config.window, Instant::now());
        on_change(BreakerState::Closed);
        Self {
            config: Arc::new(config),
            shared: Arc::new(Mutex::new(Shared {
                state: State::Closed(window),
                cycle: 0,
            })),
            on_change,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // Nothing panics while holding the lock; a poisoned one still holds a usable state.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn state(&self) -> BreakerState {
        match self.lock().state {
            State::Closed(_) => BreakerState::Closed,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
        }
    }

    /// Lets an attempt through, or says how long to wait before asking again.
    pub(super) fn admit(&self) -> Result<Admitted, Duration> {
        let now = Instant::now();
        let mut shared = self.lock();
        let mut changed = None;
        if let State::Open { until } = shared.state {
            if now < until {
                return Err(until - now);
            }
            shared.state = State::HalfOpen {
                in_flight: 0,
                succeeded: 0,
            };
            shared.cycle += 1;
            changed = Some(BreakerState::HalfOpen);
        }
        let cycle = shared.cycle;
        let admitted = match &mut shared.state {
            State::Closed(_) => Ok(false),
            State::HalfOpen {
                in_flight,
                succeeded,
            } => {
                if *in_flight + *succeeded < self.config.half_open_calls {
                    *in_flight += 1;
                    Ok(true)
                } else {
                    // The trials are out; one of them decides soon.
                    Err(self.config.cool_down.min(Duration::from_secs(1)))
                }
            }
            State::Open { .. } => unreachable!("moved to half-open above"),
        };
        drop(shared);
        if let Some(state) = changed {
            tracing::info!(
                state = "half_open",
                "provider circuit breaker lets trial calls through"
            );
            (self.on_change)(state);
        }
        admitted.map(|trial| Admitted {
            breaker: self.clone(),
            cycle,
            trial,
            done: false,
        })
    }

    fn settle(&self, cycle: u64, trial: bool, verdict: Option<Verdict>) {
        let now = Instant::now();
        let mut shared = self.lock();
        if shared.cycle != cycle {
            return;
        }
        let config = &self.config;
        let next = match (&mut shared.state, verdict) {
            (State::Closed(window), Some(Verdict::Success)) => {
                window.record(now, false);
                None
            }
            (State::Closed(window), Some(Verdict::Failure)) => {
                window.record(now, true);
                let (calls, failed) = window.totals(now);
                (calls >= config.minimum_calls
                    && f64::from(failed) >= config.failure_rate * f64::from(calls))
                .then_some(BreakerState::Open)
            }
            (State::HalfOpen { .. }, Some(Verdict::Failure)) if trial => Some(BreakerState::Open),
            (
                State::HalfOpen {
                    in_flight,
                    succeeded,
                },
                Some(Verdict::Success),
            ) if trial => {
                *in_flight = in_flight.saturating_sub(1);
                *succeeded += 1;
                (*succeeded >= config.half_open_calls).then_some(BreakerState::Closed)
            }
            (State::HalfOpen { in_flight, .. }, Some(Verdict::Neutral) | None) if trial => {
                *in_flight = in_flight.saturating_sub(1);
                None
            }
            _ => None,
        };
        let Some(next) = next else { return };
        shared.cycle += 1;
        shared.state = match next {
            BreakerState::Open => State::Open {
                until: now + config.cool_down,
            },
            BreakerState::Closed => State::Closed(Window::new(config.window, now)),
            BreakerState::HalfOpen => unreachable!("half-open is entered by admit"),
        };
        drop(shared);
        match next {
            BreakerState::Open => tracing::warn!(
                state = "open",
                cool_down_ms = config.cool_down.as_millis() as u64,
                "provider circuit breaker opened: calls are refused until the cool-down ends"
            ),
            _ => tracing::info!(state = "closed", "provider circuit breaker closed"),
        }
        (self.on_change)(next);
    }
}

impl Admitted {
    pub(super) fn record(mut self, verdict: Verdict) {
        self.done = true;
        self.breaker.settle(self.cycle, self.trial, Some(verdict));
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if !self.done && self.trial {
            self.breaker.settle(self.cycle, self.trial, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(config: BreakerConfig) -> (Breaker, Arc<Mutex<Vec<BreakerState>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let breaker = Breaker::new(config, Arc::new(move |s| log.lock().unwrap().push(s)));
        (breaker, seen)
    }

    fn config() -> BreakerConfig {
        BreakerConfig {
            window: Duration::from_secs(60),
            failure_rate: 0.5,
            minimum_calls: 4,
            cool_down: Duration::from_millis(50),
            half_open_calls: 2,
        }
    }

    #[test]
    fn opens_at_the_failure_rate_once_the_window_holds_enough_calls() {
        let (b, _) = breaker(config());
        // Three failures: past the rate, but below the minimum number of calls.
        for _ in 0..3 {
            b.admit().unwrap().record(Verdict::Failure);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.admit().unwrap().record(Verdict::Failure);
        assert_eq!(b.state(), BreakerState::Open);
        let wait = b.admit().err().expect("refused while open");
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(50));
    }

    #[test]
    fn successes_keep_the_rate_below_the_threshold_and_429_counts_for_nothing() {
        let (b, _) = breaker(config());
        for _ in 0..10 {
            b.admit().unwrap().record(Verdict::Neutral);
        }
        for _ in 0..4 {
            b.admit().unwrap().record(Verdict::Success);
        }
        for _ in 0..3 {
            b.admit().unwrap().record(Verdict::Failure);
        }
        assert_eq!(b.state(), BreakerState::Closed, "3 of 7 failed");
        b.admit().unwrap().record(Verdict::Failure);
        assert_eq!(b.state(), BreakerState::Open, "4 of 8 failed");
    }

    #[test]
    fn half_open_limits_trials_reopens_on_failure_and_closes_on_successes() {
        let (b, seen) = breaker(config());
        for _ in 0..4 {
            b.admit().unwrap().record(Verdict::Failure);
        }
        std::thread::sleep(Duration::from_millis(60));
        let first = b.admit().expect("a trial after the cool-down");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let second = b.admit().expect("a second trial");
        assert!(b.admit().is_err(), "only two trials at once");
        // A trial whose caller gave up frees its slot.
        drop(second);
        let second = b.admit().expect("the freed slot");
        first.record(Verdict::Failure);
        assert_eq!(b.state(), BreakerState::Open);
        // The other trial of the failed cycle no longer counts.
        second.record(Verdict::Success);
        assert_eq!(b.state(), BreakerState::Open);

        std::thread::sleep(Duration::from_millis(60));
        let a = b.admit().unwrap();
        let c = b.admit().unwrap();
        a.record(Verdict::Success);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        c.record(Verdict::Success);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(
            *seen.lock().unwrap(),
            [
                BreakerState::Closed,
                BreakerState::Open,
                BreakerState::HalfOpen,
                BreakerState::Open,
                BreakerState::HalfOpen,
                BreakerState::Closed
            ]
        );
        // Closed again with an empty window: one failure does not reopen it.
        b.admit().unwrap().record(Verdict::Failure);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_slow_call_admitted_before_the_breaker_opened_does_not_count_after() {
        let (b, _) = breaker(config());
        let slow = b.admit().unwrap();
        for _ in 0..4 {
            b.admit().unwrap().record(Verdict::Failure);
        }
        assert_eq!(b.state(), BreakerState::Open);
        slow.record(Verdict::Success);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn old_results_leave_the_window() {
        let now = Instant::now();
        let mut w = Window::new(Duration::from_secs(10), now);
        w.record(now, true);
        w.record(now + Duration::from_secs(5), false);
        assert_eq!(w.totals(now + Duration::from_secs(5)), (2, 1));
        assert_eq!(w.totals(now + Duration::from_millis(10_500)), (1, 0));
        assert_eq!(w.totals(now + Duration::from_secs(16)), (0, 0));
        // A bucket reused for a later slice starts from zero.
        w.record(now + Duration::from_secs(20), true);
        assert_eq!(w.totals(now + Duration::from_secs(20)), (1, 1));
    }
}
