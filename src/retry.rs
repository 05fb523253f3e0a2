//! The one retry policy for every network step: exponential backoff with full
//! jitter, a cap on the jitter, an overall deadline, and the server's
//! `Retry-After` as a floor.
//!
//! `Retry-After` is not a schedule: a production line of devices refused
//! together and told "2 seconds" would all come back in the same second, be
//! refused together again, and stay in lockstep. So the jitter is added on
//! top of whatever the server asks for, and it grows with every consecutive
//! refusal until it spreads the line over the server's pace. The figures
//! (first ceiling, cap) come from the model in the tests below, which plays
//! 500 devices against a server that takes 4 at a time.

use std::future::Future;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Ceiling of the first jitter; doubles with every consecutive failure.
    pub base_delay: Duration,
    /// The jitter never exceeds this; with `Retry-After` the delay is at
    /// most the server's value plus this (and still bounded by the deadline).
    pub max_delay: Duration,
    /// No new attempt starts after this much time.
    pub deadline: Duration,
    /// At most this many attempts.
    pub max_attempts: u32,
}

impl RetryPolicy {
    /// A technician at a terminal wants a quick answer.
    pub fn interactive() -> Self {
        RetryPolicy {
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
            deadline: Duration::from_secs(60),
            max_attempts: 4,
        }
    }

    /// First boot: nobody is watching, the network may come up late and a
    /// whole production line may be hitting the server at once. A cap of a
    /// few seconds keeps both a herd's tail short (the last devices are not
    /// asleep in minute-long windows while the server idles) and the wait
    /// for a network that comes up late.
    pub fn boot() -> Self {
        RetryPolicy {
            base_delay: Duration::from_secs(4),
            max_delay: Duration::from_secs(12),
            deadline: Duration::from_secs(30 * 60),
            max_attempts: u32::MAX,
        }
    }

    /// The upper bound of the jitter before attempt `attempt + 1`.
    fn backoff_ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// The delay after `attempt` consecutive failures: the server's floor
    /// (`Retry-After`, else nothing) plus full jitter, anywhere between zero
    /// and the ceiling. Saturating: a server may ask for any number of
    /// seconds, up to `u64::MAX`, and is then given up on (deadline).
    fn delay(&self, attempt: u32, floor: Option<Duration>, rng: &mut fastrand::Rng) -> Duration {
        let ceiling = self.backoff_ceiling(attempt).as_millis() as u64;
        floor
            .unwrap_or(Duration::ZERO)
            .saturating_add(Duration::from_millis(rng.u64(0..=ceiling)))
    }
}

/// How an attempt failed, as far as retrying is concerned.
pub trait Retryable: Sized {
    /// `None`: final, do not retry. `Some(None)`: retry after a backoff.
    /// `Some(Some(d))`: the server asked for `d` (Retry-After).
    fn retry_hint(&self) -> Option<Option<Duration>>;

    /// Whether the server may have received and acted on the failed attempt
    /// (it went out, but no answer came back).
    fn may_have_been_received(&self) -> bool {
        false
    }

    /// This failure, as the last of attempts of which an earlier one may
    /// have been received: whoever decides what the failure means must not
    /// take it for a clean refusal.
    fn after_possibly_received(self) -> Self {
        self
    }
}

/// Runs `op` until it succeeds, fails finally, or the policy runs out; each
/// failed attempt is one log line with the reason and the next delay.
pub async fn retry<T, E, F, Fut>(policy: &RetryPolicy, what: &str, mut op: F) -> Result<T, E>
where
    E: Retryable + std::fmt::Display,
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let mut rng = fastrand::Rng::new();
    let mut attempt = 0;
    let mut maybe_received = false;
    let last = |error: E, earlier_maybe_received: bool| {
        if earlier_maybe_received {
            error.after_possibly_received()
        } else {
            error
        }
    };
    loop {
        attempt += 1;
        let error = match op(attempt).await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let Some(server_delay) = error.retry_hint() else {
            return Err(last(error, maybe_received));
        };
        let elapsed = started.elapsed();
        let remaining = policy.deadline.saturating_sub(elapsed);
        // The last attempt may come early (at the deadline) but never
        // before the server said.
        let delay = policy.delay(attempt, server_delay, &mut rng).min(remaining);
        if attempt >= policy.max_attempts
            || server_delay.unwrap_or(Duration::ZERO) > remaining
            || remaining.is_zero()
        {
            tracing::warn!(
                "{what}: attempt {attempt} failed: {error}; giving up after {:.1}s",
                elapsed.as_secs_f64()
            );
            return Err(last(error, maybe_received));
        }
        maybe_received |= error.may_have_been_received();
        tracing::warn!(
            "{what}: attempt {attempt} failed: {error}; retrying in {:.1}s",
            delay.as_secs_f64()
        );
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[derive(Debug)]
    struct Failure(Option<Option<Duration>>);
    impl std::fmt::Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "failure {:?}", self.0)
        }
    }
    impl Retryable for Failure {
        fn retry_hint(&self) -> Option<Option<Duration>> {
            self.0
        }
    }

    fn fast_policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
            deadline: Duration::from_secs(5),
            max_attempts,
        }
    }

    #[test]
    fn the_largest_retry_after_does_not_overflow() {
        // Found by fuzzing: `Retry-After: 18446744073709551615` panicked
        // ("overflow when adding durations") in the retry loop.
        let mut rng = fastrand::Rng::with_seed(1);
        for attempt in 1..=40 {
            let delay = RetryPolicy::boot().delay(attempt, Some(Duration::MAX), &mut rng);
            assert_eq!(delay, Duration::MAX);
        }
    }

    #[test]
    fn ceilings_double_and_stop_at_the_cap() {
        let policy = RetryPolicy {
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(10),
            deadline: Duration::from_secs(100),
            max_attempts: 100,
        };
        let ceilings: Vec<u64> = (1..=6)
            .map(|a| policy.backoff_ceiling(a).as_secs())
            .collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 10, 10]);
        assert_eq!(policy.backoff_ceiling(200), Duration::from_secs(10));
    }

    #[test]
    fn retry_after_is_a_floor_with_jitter_that_grows() {
        let policy = RetryPolicy::boot();
        let mut rng = fastrand::Rng::with_seed(7);
        let floor = Duration::from_secs(2);
        for attempt in 1..=8 {
            let delays: Vec<Duration> = (0..200)
                .map(|_| policy.delay(attempt, Some(floor), &mut rng))
                .collect();
            let ceiling = floor + policy.backoff_ceiling(attempt);
            assert!(delays.iter().all(|d| *d >= floor && *d <= ceiling));
            // Full jitter: the delays use the whole window, not a corner of it.
            let widest = *delays.iter().max().unwrap() - *delays.iter().min().unwrap();
            assert!(
                widest * 10 >= policy.backoff_ceiling(attempt) * 8,
                "{attempt}: {widest:?}"
            );
        }
        assert_eq!(policy.backoff_ceiling(1), Duration::from_secs(4));
        assert_eq!(policy.backoff_ceiling(30), policy.max_delay);
    }

    /// The largest share of `delays` that fall within any one second.
    fn densest_second(delays: &mut [Duration]) -> f64 {
        delays.sort();
        let most = (0..delays.len())
            .map(|i| {
                delays[i..]
                    .iter()
                    .take_while(|d| **d < delays[i] + Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap_or(0);
        most as f64 / delays.len() as f64
    }

    #[test]
    fn a_thousand_refused_devices_do_not_come_back_in_the_same_second() {
        let policy = RetryPolicy::boot();
        let mut rng = fastrand::Rng::with_seed(11);
        let retry_after = Some(Duration::from_secs(2));
        for attempt in [1, 2, 3, 6] {
            let mut delays: Vec<Duration> = (0..1000)
                .map(|_| policy.delay(attempt, retry_after, &mut rng))
                .collect();
            let densest = densest_second(&mut delays);
            // Evenly spread over the jitter window, each second would get
            // 1/window of them; allow half as much again for chance.
            let at_most = 1.5 / policy.backoff_ceiling(attempt).as_secs_f64();
            assert!(
                densest <= at_most,
                "after refusal {attempt}, {:.0}% come back within one second",
                densest * 100.0
            );
        }
        // What honouring Retry-After exactly did: everybody in one second.
        let mut exact = vec![Duration::from_secs(2); 1000];
        assert_eq!(densest_second(&mut exact), 1.0);
    }

    /// What a herd does to a small server: `devices` agents start within a
    /// second against a server that serves `capacity` registrations at a time
    /// (`service` each) and answers the rest at once with 503 and
    /// `Retry-After`. Returns requests per device and the time until the last
    /// one is registered.
    fn herd(
        delay: impl Fn(u32, &mut fastrand::Rng) -> Duration,
        devices: usize,
        capacity: usize,
        service: Duration,
        seed: u64,
    ) -> (f64, Duration) {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let mut rng = fastrand::Rng::with_seed(seed);
        // (when, device, is the end of a registration)
        let mut events = BinaryHeap::new();
        for device in 0..devices {
            let start = Duration::from_millis(rng.u64(0..1000));
            events.push(Reverse((start, device, false)));
        }
        let mut refusals = vec![0u32; devices];
        let (mut serving, mut requests, mut last) = (0, 0, Duration::ZERO);
        while let Some(Reverse((now, device, finished))) = events.pop() {
            last = now;
            if finished {
                serving -= 1;
                continue;
            }
            requests += 1;
            if serving < capacity {
                serving += 1;
                events.push(Reverse((now + service, device, true)));
            } else {
                refusals[device] += 1;
                let next = now + delay(refusals[device], &mut rng);
                events.push(Reverse((next, device, false)));
            }
        }
        (requests as f64 / devices as f64, last)
    }

    /// The figures of `RetryPolicy::boot` were chosen with this model: the
    /// factory-line scenario (500 devices, 4 at a time, 0.2 s each,
    /// `Retry-After: 2`) stays within 4 requests per device and twice the
    /// time the server needs anyway, where honouring Retry-After exactly
    /// keeps the herd in lockstep.
    #[test]
    fn a_production_line_is_spread_over_the_servers_pace() {
        let policy = RetryPolicy::boot();
        let retry_after = Some(Duration::from_secs(2));
        let service = Duration::from_millis(200);
        let ideal = service * 500 / 4;
        for seed in 1..=5 {
            let (per_device, wall) = herd(
                |refusals, rng| policy.delay(refusals, retry_after, rng),
                500,
                4,
                service,
                seed,
            );
            eprintln!("seed {seed}: {per_device:.2} requests per device, all registered after {wall:.1?} (ideal {ideal:?})");
            assert!(per_device <= 4.0, "{per_device:.2} requests per device");
            assert!(wall <= ideal * 2, "{wall:?} against the ideal {ideal:?}");
        }
        let (lockstep, _) = herd(|_, _| Duration::from_secs(2), 500, 4, service, 1);
        assert!(
            lockstep > 8.0,
            "{lockstep:.2} requests per device in lockstep"
        );
    }

    #[tokio::test]
    async fn retries_transient_failures_until_success() {
        let calls = Cell::new(0);
        let result = retry(&fast_policy(5), "test", |_| {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n < 3 {
                    Err(Failure(Some(None)))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(result.unwrap(), 3);
    }

    #[tokio::test]
    async fn final_failures_are_not_retried() {
        let calls = Cell::new(0);
        let result: Result<(), _> = retry(&fast_policy(5), "test", |_| {
            calls.set(calls.get() + 1);
            async { Err(Failure(None)) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.get(), 1);
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts() {
        let calls = Cell::new(0);
        let result: Result<(), _> = retry(&fast_policy(3), "test", |_| {
            calls.set(calls.get() + 1);
            async { Err(Failure(Some(None))) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.get(), 3);
    }

    #[tokio::test]
    async fn the_last_attempt_comes_at_the_deadline_not_after_it() {
        let policy = RetryPolicy {
            base_delay: Duration::from_secs(1000),
            max_delay: Duration::from_secs(1000),
            deadline: Duration::from_millis(300),
            max_attempts: 100,
        };
        let started = Instant::now();
        let calls = Cell::new(0);
        let result: Result<(), _> = retry(&policy, "test", |_| {
            calls.set(calls.get() + 1);
            async { Err(Failure(Some(None))) }
        })
        .await;
        assert!(result.is_err());
        assert!((2..=3).contains(&calls.get()), "{} attempts", calls.get());
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_retry_after_beyond_the_deadline_ends_the_retries() {
        let calls = Cell::new(0);
        let result: Result<(), _> = retry(&fast_policy(10), "test", |_| {
            calls.set(calls.get() + 1);
            async { Err(Failure(Some(Some(Duration::from_secs(60))))) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.get(), 1);
    }
}
