//! Retry timing shared by every loop that tries again later: the inbox workers, the sandbox's
//! deliveries and the provider calls. Attempts are counted in the database (an event's or a
//! delivery's `attempts`), so the delay is a function of that count rather than an in-memory
//! retry iterator.

use std::time::Duration;

/// Exponential backoff with full jitter: uniformly in [0, min(cap, base × 2^(attempts−1))],
/// where `unit` is uniform in [0, 1). Full jitter spreads the retries of events that failed
/// together (a provider outage) instead of bringing them back in a herd.
pub fn backoff(attempts: i32, base: Duration, cap: Duration, unit: f64) -> Duration {
    let exp = attempts.saturating_sub(1).clamp(0, 30) as u32;
    let ceiling = base.saturating_mul(1u32 << exp).min(cap);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// A uniform number in [0, 1) from the operating system's random source.
pub fn random_unit() -> f64 {
    let bits = getrandom::u64().unwrap_or(u64::MAX / 2);
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitters_below_it() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(3600);
        let top = |n| backoff(n, base, cap, 1.0);
        assert_eq!(top(1), Duration::from_secs(1));
        assert_eq!(top(2), Duration::from_secs(2));
        assert_eq!(top(5), Duration::from_secs(16));
        assert_eq!(top(13), cap, "2^12 s is past an hour");
        assert_eq!(top(1_000), cap, "no overflow");
        assert_eq!(backoff(5, base, cap, 0.0), Duration::ZERO);
        assert_eq!(backoff(5, base, cap, 0.5), Duration::from_secs(8));
        for _ in 0..100 {
            let u = random_unit();
            assert!((0.0..1.0).contains(&u), "{u}");
        }
    }
}
