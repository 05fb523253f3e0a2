//! The one retry policy for every network step: exponential backoff with full
//! jitter, a cap on each delay, an overall deadline, and the server's
//! `Retry-After` honoured when it sends one.

use std::future::Future;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Upper bound of the first delay; doubles with every attempt.
    pub base_delay: Duration,
    /// No single delay is longer than this (except what Retry-After asks for,
    /// which is still bounded by the deadline).
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
    /// whole production line may be hitting the server at once.
    pub fn boot() -> Self {
        RetryPolicy {
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(300),
            deadline: Duration::from_secs(30 * 60),
            max_attempts: u32::MAX,
        }
    }

    /// The upper bound of the jittered delay before attempt `attempt + 1`.
    fn backoff_ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// Full jitter: anywhere between zero and the ceiling, so a line of
    /// devices booting together does not hit the server in lockstep.
    fn jittered_delay(&self, attempt: u32) -> Duration {
        let ceiling = self.backoff_ceiling(attempt).as_millis() as u64;
        Duration::from_millis(fastrand::u64(0..=ceiling))
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
        let delay = server_delay.unwrap_or_else(|| policy.jittered_delay(attempt));
        let elapsed = started.elapsed();
        if attempt >= policy.max_attempts || elapsed + delay > policy.deadline {
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
        for attempt in 1..50 {
            assert!(policy.jittered_delay(attempt) <= policy.backoff_ceiling(attempt));
        }
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
