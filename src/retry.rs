//! The one retry policy for every network step: full jitter in windows that
//! depend on why the attempt failed, an overall deadline, and the server's
//! `Retry-After` as a floor. Three kinds of waits (see [`Again`]):
//!
//! * **The server is busy or failing** (429, 5xx, a broken connection):
//!   `Retry-After` is not a schedule there. A production line of devices
//!   refused together and told "2 seconds" would all come back in the same
//!   second, be refused together again, and stay in lockstep. So jitter is
//!   added on top of whatever the server asks for. In boot mode the first
//!   refusal spreads the line wide and later ones narrow it, so that the
//!   last devices are not asleep while the server idles; the windows come
//!   from the model in `model` (a line of devices against a server that
//!   takes 4 at a time), which the tests below play.
//! * **The server cannot be reached** (no connection came about: no route,
//!   no carrier, DNS, refused): short growing windows, and the kernel's
//!   network state is watched meanwhile (`network`), so that the attempt
//!   comes as soon as a link, address or route appears instead of when the
//!   window ends.
//! * **The server is working on it** ("assigning", "authorization pending"):
//!   that is progress, not load shedding. The next question comes when the
//!   server said, give or take a few per cent, and the wait does not grow.

pub mod model;
mod network;

use std::future::Future;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The ceilings of the jitter after the first, second, ... consecutive
    /// refusal or failure at the server (the last one repeats), on top of
    /// its `Retry-After`.
    pub refused: &'static [Duration],
    /// The same while the server cannot be reached; a change of the network
    /// ends the wait early.
    pub unreachable: &'static [Duration],
    /// The ceiling once the server has refused for [`DOWN_AFTER`]: it is
    /// down rather than busy, and asking every few seconds helps nobody.
    pub down: Duration,
    /// No new attempt starts after this much time.
    pub deadline: Duration,
    /// At most this many attempts.
    pub max_attempts: u32,
}

/// Why another attempt may succeed, and so how to wait for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Again {
    /// The server refused for load or failed (429, 5xx, a broken
    /// connection, no answer in time): back off with jitter, never before
    /// the server's `Retry-After` when it sent one.
    Backoff(Option<Duration>),
    /// No connection came about (no route, no carrier, DNS, refused): back
    /// off, and try again early when the network changes.
    Unreachable,
    /// The server is working on it and said "not yet": ask again when it
    /// said (`None`: [`DEFAULT_PACE`]), without growing.
    NotYet(Option<Duration>),
}

/// Consecutive failures of one kind: how many, and how long since the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streak {
    pub n: u32,
    pub age: Duration,
}

/// How long to wait for a server that says "not yet" without saying how
/// long: 2 s, what Microsoft's device SDK waits when DPS sends no
/// `Retry-After` (the service itself sends 3 s). A server that wants fewer
/// questions says so.
pub const DEFAULT_PACE: Duration = Duration::from_secs(2);

/// The most a "not yet" wait is stretched, in per cent: enough to keep
/// devices that asked together from staying together, and small enough that
/// the question, with its round trip, comes within 10 % of the server's pace.
const PACE_JITTER_PERCENT: u64 = 5;

/// A server that has refused every attempt for this long is down, not busy.
pub const DOWN_AFTER: Duration = Duration::from_secs(60);

const fn seconds<const N: usize>(s: [u64; N]) -> [Duration; N] {
    let mut windows = [Duration::ZERO; N];
    let mut i = 0;
    while i < N {
        windows[i] = Duration::from_secs(s[i]);
        i += 1;
    }
    windows
}

/// A technician at a terminal wants a quick answer: 1 s, doubling, at most 8 s.
const INTERACTIVE: [Duration; 4] = seconds([1, 2, 4, 8]);

/// First boot, refused by the server: a line of devices that powered on
/// together is spread over 20 s at the first refusal (about the time a
/// server that registers 20 devices a second needs for 500 of them), over
/// 8 s at the second and 4 s from then on, so that the stragglers come back
/// while the server still has their turn. In the model, 500 devices make
/// 2.9 requests each and finish at 1.46x the time the server needs anyway;
/// bigger lines finish as quickly but pay with requests (1000: 5.6 each),
/// because a device knows neither the size of its line nor the server's
/// capacity (see the tests).
const BOOT_REFUSED: [Duration; 3] = seconds([20, 8, 4]);

/// First boot, the server out of reach: the network usually comes up within
/// seconds, and its coming up ends the wait anyway.
const BOOT_UNREACHABLE: [Duration; 3] = seconds([4, 8, 12]);

impl RetryPolicy {
    /// A technician at a terminal wants a quick answer.
    pub fn interactive() -> Self {
        RetryPolicy {
            refused: &INTERACTIVE,
            unreachable: &INTERACTIVE,
            down: Duration::from_secs(8),
            deadline: Duration::from_secs(60),
            max_attempts: 4,
        }
    }

    /// First boot: nobody is at a terminal, the network may come up late and
    /// a whole production line may be hitting the server at once.
    pub fn boot() -> Self {
        RetryPolicy {
            refused: &BOOT_REFUSED,
            unreachable: &BOOT_UNREACHABLE,
            down: Duration::from_secs(12),
            deadline: Duration::from_secs(30 * 60),
            max_attempts: u32::MAX,
        }
    }

    /// The upper bound of the jitter after `streak` failures of the kind
    /// whose windows are `windows`.
    fn ceiling(&self, windows: &[Duration], streak: Streak) -> Duration {
        let nth = (streak.n.max(1) as usize).min(windows.len());
        let window = windows
            .get(nth.saturating_sub(1))
            .copied()
            .unwrap_or(self.down);
        if streak.age >= DOWN_AFTER {
            window.max(self.down)
        } else {
            window
        }
    }

    /// The delay before the next attempt, after a `streak` of failures of
    /// the same kind: a server's floor plus full jitter, anywhere between
    /// zero and the ceiling; or, for "not yet", the server's pace stretched
    /// by at most [`PACE_JITTER_PERCENT`]. Saturating: a server may ask for
    /// any number of seconds, up to `u64::MAX`, and is then given up on
    /// (deadline).
    pub fn delay(&self, again: Again, streak: Streak, rng: &mut fastrand::Rng) -> Duration {
        let mut jitter =
            |ceiling: Duration| Duration::from_millis(rng.u64(0..=ceiling.as_millis() as u64));
        match again {
            Again::Backoff(floor) => {
                let jitter = jitter(self.ceiling(self.refused, streak));
                floor.unwrap_or(Duration::ZERO).saturating_add(jitter)
            }
            Again::Unreachable => jitter(self.ceiling(self.unreachable, streak)),
            Again::NotYet(pace) => {
                let pace = pace.unwrap_or(DEFAULT_PACE);
                pace.saturating_add(jitter(pace / 100 * PACE_JITTER_PERCENT as u32))
            }
        }
    }
}

impl Again {
    /// What the server said the wait must be at least.
    fn floor(self) -> Duration {
        match self {
            Again::Backoff(Some(floor)) | Again::NotYet(Some(floor)) => floor,
            _ => Duration::ZERO,
        }
    }
}

/// How an attempt failed, as far as retrying is concerned.
pub trait Retryable: Sized {
    /// `None`: final, do not retry; else why and how to try again.
    fn retry_hint(&self) -> Option<Again>;

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
    // Opened before the first attempt, so that a change during an attempt
    // that then fails is not missed.
    let mut watch = network::Watch::open();
    let mut attempt = 0;
    // The failures of one kind in a row, and when the first of them came.
    let mut streak = None;
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
        if let Some(watch) = &mut watch {
            watch.forget();
        }
        let attempt_started = Instant::now();
        let error = match op(attempt).await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let Some(again) = error.retry_hint() else {
            return Err(last(error, maybe_received));
        };
        // Progress resets the backoff, and so does a failure of another
        // kind: a line that meets a busy server once its network is up
        // must be spread as much as one that had it all along.
        let streak = next_streak(&mut streak, again);
        let elapsed = started.elapsed();
        let remaining = policy.deadline.saturating_sub(elapsed);
        // The last attempt may come early (at the deadline) but never
        // before the server said.
        let delay = policy.delay(again, streak, &mut rng).min(remaining);
        if attempt >= policy.max_attempts || again.floor() > remaining || remaining.is_zero() {
            tracing::warn!(
                "{what}: attempt {attempt} failed: {error}; giving up after {:.1}s",
                elapsed.as_secs_f64()
            );
            return Err(last(error, maybe_received));
        }
        maybe_received |= error.may_have_been_received();
        let watch = watch.as_mut().filter(|_| again == Again::Unreachable);
        pause(what, attempt, &error, again, delay, watch, attempt_started).await;
    }
}

/// `streak` after one more failure of the kind `again`.
fn next_streak(streak: &mut Option<(Again, u32, Instant)>, again: Again) -> Streak {
    let now = Instant::now();
    if matches!(again, Again::NotYet(_)) {
        *streak = None;
        return Streak {
            n: 0,
            age: Duration::ZERO,
        };
    }
    let same_kind = |kind: &Again| std::mem::discriminant(kind) == std::mem::discriminant(&again);
    let (n, since) = match *streak {
        Some((kind, n, since)) if same_kind(&kind) => (n + 1, since),
        _ => (1, now),
    };
    *streak = Some((again, n, since));
    Streak {
        n,
        age: now - since,
    }
}

/// The wait after a failed attempt, announced in one log line: `delay`, or
/// less when `watch` sees the network change.
async fn pause(
    what: &str,
    attempt: u32,
    error: &impl std::fmt::Display,
    again: Again,
    delay: Duration,
    watch: Option<&mut network::Watch>,
    attempt_started: Instant,
) {
    let delay_s = delay.as_secs_f64();
    match watch {
        // Not a failure: the server is working on it.
        _ if matches!(again, Again::NotYet(_)) => {
            tracing::debug!("{what}: {error}; asking again in {delay_s:.1}s");
            tokio::time::sleep(delay).await;
        }
        Some(watch) => {
            tracing::warn!(
                "{what}: attempt {attempt} failed: {error}; retrying in {delay_s:.1}s, or as soon as the network changes"
            );
            if watch.wait(delay, attempt_started).await {
                tracing::info!("{what}: the network changed; trying again now");
            }
        }
        None => {
            tracing::warn!("{what}: attempt {attempt} failed: {error}; retrying in {delay_s:.1}s");
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[derive(Debug)]
    struct Failure(Option<Again>);
    impl std::fmt::Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "failure {:?}", self.0)
        }
    }
    impl Retryable for Failure {
        fn retry_hint(&self) -> Option<Again> {
            self.0
        }
    }

    const TRANSIENT: Failure = Failure(Some(Again::Backoff(None)));

    const FAST: [Duration; 3] = [
        Duration::from_millis(1),
        Duration::from_millis(2),
        Duration::from_millis(4),
    ];

    fn fast_policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            refused: &FAST,
            unreachable: &FAST,
            down: Duration::from_millis(4),
            deadline: Duration::from_secs(5),
            max_attempts,
        }
    }

    fn nth(n: u32) -> Streak {
        Streak {
            n,
            age: Duration::ZERO,
        }
    }

    #[test]
    fn the_largest_retry_after_does_not_overflow() {
        // Found by fuzzing: `Retry-After: 18446744073709551615` panicked
        // ("overflow when adding durations") in the retry loop.
        let mut rng = fastrand::Rng::with_seed(1);
        let policy = RetryPolicy::boot();
        for n in 1..=40 {
            for again in [
                Again::Backoff(Some(Duration::MAX)),
                Again::NotYet(Some(Duration::MAX)),
            ] {
                assert_eq!(policy.delay(again, nth(n), &mut rng), Duration::MAX);
            }
        }
    }

    #[test]
    fn each_failure_has_its_window_the_last_repeats_and_a_minute_means_down() {
        let policy = RetryPolicy::boot();
        let refused: Vec<u64> = (1..=5)
            .map(|n| policy.ceiling(policy.refused, nth(n)).as_secs())
            .collect();
        assert_eq!(refused, [20, 8, 4, 4, 4]);
        let unreachable: Vec<u64> = (1..=5)
            .map(|n| policy.ceiling(policy.unreachable, nth(n)).as_secs())
            .collect();
        assert_eq!(unreachable, [4, 8, 12, 12, 12]);
        let down = Streak {
            n: 30,
            age: DOWN_AFTER,
        };
        assert_eq!(policy.ceiling(policy.refused, down), policy.down);
        assert_eq!(policy.ceiling(&[], nth(1)), policy.down);
        let interactive = RetryPolicy::interactive();
        let windows: Vec<u64> = (1..=5)
            .map(|n| interactive.ceiling(interactive.refused, nth(n)).as_secs())
            .collect();
        assert_eq!(windows, [1, 2, 4, 8, 8]);
    }

    #[test]
    fn retry_after_is_a_floor_with_full_jitter_on_top() {
        let policy = RetryPolicy::boot();
        let mut rng = fastrand::Rng::with_seed(7);
        let floor = Duration::from_secs(2);
        for n in 1..=8 {
            let delays: Vec<Duration> = (0..200)
                .map(|_| policy.delay(Again::Backoff(Some(floor)), nth(n), &mut rng))
                .collect();
            let window = policy.ceiling(policy.refused, nth(n));
            assert!(delays.iter().all(|d| *d >= floor && *d <= floor + window));
            // Full jitter: the delays use the whole window, not a corner of it.
            let widest = *delays.iter().max().unwrap() - *delays.iter().min().unwrap();
            assert!(widest * 10 >= window * 8, "{n}: {widest:?}");
        }
    }

    #[test]
    fn not_yet_is_answered_at_the_servers_pace_without_growing() {
        let policy = RetryPolicy::boot();
        let mut rng = fastrand::Rng::with_seed(3);
        for n in [0, 1, 5, 30] {
            for (said, pace) in [(Some(1), 1000), (Some(3), 3000), (None, 2000)] {
                let again = Again::NotYet(said.map(Duration::from_secs));
                for _ in 0..200 {
                    let delay = policy.delay(again, nth(n), &mut rng).as_millis() as u64;
                    assert!(
                        (pace..=pace * 105 / 100).contains(&delay),
                        "{said:?}: {delay} ms"
                    );
                }
            }
        }
    }

    const DOUBLING: [Duration; 11] = seconds([1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]);

    /// A server that answers "not yet" between refusals is making progress:
    /// the next refusal starts from the first window again.
    #[tokio::test(start_paused = true)]
    async fn progress_starts_the_backoff_again() {
        let policy = RetryPolicy {
            refused: &DOUBLING,
            unreachable: &DOUBLING,
            down: Duration::from_secs(1000),
            deadline: Duration::from_secs(10_000),
            max_attempts: 100,
        };
        let not_yet = Again::NotYet(Some(Duration::from_millis(10)));
        for _ in 0..10 {
            let script = [
                TRANSIENT.0,
                TRANSIENT.0,
                TRANSIENT.0,
                TRANSIENT.0,
                Some(not_yet),
                TRANSIENT.0,
            ];
            let calls = Cell::new(0);
            let last_gap = Cell::new(Duration::ZERO);
            let previous = Cell::new(tokio::time::Instant::now());
            let result = retry(&policy, "test", |_| {
                let n = calls.get();
                calls.set(n + 1);
                last_gap.set(previous.get().elapsed());
                previous.set(tokio::time::Instant::now());
                async move { script.get(n).map_or(Ok(()), |again| Err(Failure(*again))) }
            })
            .await;
            assert!(result.is_ok());
            assert_eq!(calls.get(), 7);
            // The fifth refusal in a row would wait up to 16 s.
            assert!(
                last_gap.get() <= Duration::from_secs(1),
                "{:?}",
                last_gap.get()
            );
        }
    }

    #[test]
    fn a_streak_is_of_one_kind() {
        let mut streak = None;
        let refused = Again::Backoff(None);
        let n = |streak: &mut _, again| next_streak(streak, again).n;
        assert_eq!(n(&mut streak, Again::Unreachable), 1);
        assert_eq!(n(&mut streak, Again::Unreachable), 2);
        // The network came up and the server is busy: its first refusal.
        assert_eq!(n(&mut streak, refused), 1);
        assert_eq!(n(&mut streak, Again::Backoff(Some(DEFAULT_PACE))), 2);
        assert_eq!(n(&mut streak, Again::NotYet(None)), 0);
        assert_eq!(n(&mut streak, refused), 1);
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
        let refused = Again::Backoff(Some(Duration::from_secs(2)));
        for n in [1, 2, 3, 6] {
            let mut delays: Vec<Duration> = (0..1000)
                .map(|_| policy.delay(refused, nth(n), &mut rng))
                .collect();
            let densest = densest_second(&mut delays);
            // Evenly spread over the jitter window, each second would get
            // 1/window of them; allow half as much again for chance.
            let at_most = 1.5 / policy.ceiling(policy.refused, nth(n)).as_secs_f64();
            assert!(
                densest <= at_most,
                "after refusal {n}, {:.0}% come back within one second",
                densest * 100.0
            );
        }
        // What honouring Retry-After exactly did: everybody in one second.
        let mut exact = vec![Duration::from_secs(2); 1000];
        assert_eq!(densest_second(&mut exact), 1.0);
    }

    /// The earlier boot policy: 10 s, doubling, at most 12 s.
    const EARLIER: [Duration; 2] = seconds([10, 12]);

    /// The windows of `RetryPolicy::boot` were chosen with the model of a
    /// line (see docs/reliability.md): the first window decides how many
    /// requests a line makes, the later ones how long its tail is while the
    /// server idles. Honouring Retry-After exactly keeps the line in lockstep.
    #[test]
    fn a_production_line_is_spread_over_the_servers_pace() {
        let refused = Again::Backoff(Some(Duration::from_secs(2)));
        let earlier = RetryPolicy {
            refused: &EARLIER,
            ..RetryPolicy::boot()
        };
        let earlier = |streak, rng: &mut fastrand::Rng| earlier.delay(refused, streak, rng);
        // (devices, most requests per device, longest against the ideal)
        for (devices, most_requests, longest) in [(500, 3.0, 1.5), (1000, 6.0, 1.3)] {
            let (per_device, ratio) = model::boot_line(devices);
            let (earlier_per_device, earlier_ratio) = model::line(devices, &earlier);
            eprintln!(
                "{devices} devices: {per_device:.2} requests per device, {ratio:.2}x the ideal (windows of 10 s, then 12 s: {earlier_per_device:.2}, {earlier_ratio:.2}x)"
            );
            assert!(
                per_device <= most_requests,
                "{per_device:.2} requests per device"
            );
            assert!(ratio <= longest, "{ratio:.2}x the ideal");
            assert!(ratio < earlier_ratio - 0.1);
        }
        let lockstep = |_, _: &mut fastrand::Rng| Duration::from_secs(2);
        let (lockstep, _) = model::herd(&lockstep, 500, 4, Duration::from_millis(200), 1);
        assert!(
            lockstep > 8.0,
            "{lockstep:.2} requests per device in lockstep"
        );
    }

    /// Why no device-side policy meets both 3 requests per device and 1.5×
    /// the ideal for 500 and for 1000 devices: a device that knew the size
    /// of its line would spread it over shrinking windows sized for it
    /// (first retry within about N/25 s), and only just meets both; the same
    /// windows for the other size miss one of them. A real device knows
    /// neither the size of its line nor the server's capacity; the server's
    /// `Retry-After: 2` says nothing about either. The boot policy is sized
    /// for the documented line of 500.
    #[test]
    fn only_a_device_that_knew_its_line_would_meet_both_targets() {
        let knowing = |windows: &'static [u64]| {
            move |streak: Streak, rng: &mut fastrand::Rng| {
                let window = windows[(streak.n as usize).min(windows.len()) - 1];
                Duration::from_secs(2) + Duration::from_millis(rng.u64(0..=window * 1000))
            }
        };
        let for_500: &[u64] = &[20, 8, 3, 2];
        let for_1000: &[u64] = &[48, 20, 8, 3];
        let meets = |(per_device, ratio): (f64, f64)| per_device <= 3.0 && ratio <= 1.5;
        let figures = [
            model::line(500, &knowing(for_500)),
            model::line(1000, &knowing(for_1000)),
            model::line(1000, &knowing(for_500)),
            model::line(500, &knowing(for_1000)),
        ];
        eprintln!(
            "sized for 500: {:.2?} at 500, {:.2?} at 1000",
            figures[0], figures[2]
        );
        eprintln!(
            "sized for 1000: {:.2?} at 1000, {:.2?} at 500",
            figures[1], figures[3]
        );
        assert_eq!(
            figures.map(meets),
            [true, true, false, false],
            "{figures:.2?}"
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
                    Err(TRANSIENT)
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
            async { Err(TRANSIENT) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.get(), 3);
    }

    const LONG: [Duration; 1] = seconds([1000]);

    #[tokio::test]
    async fn the_last_attempt_comes_at_the_deadline_not_after_it() {
        let policy = RetryPolicy {
            refused: &LONG,
            deadline: Duration::from_millis(300),
            max_attempts: 100,
            ..RetryPolicy::boot()
        };
        let started = Instant::now();
        let calls = Cell::new(0);
        let result: Result<(), _> = retry(&policy, "test", |_| {
            calls.set(calls.get() + 1);
            async { Err(TRANSIENT) }
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
            async { Err(Failure(Some(Again::Backoff(Some(Duration::from_secs(60)))))) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.get(), 1);
    }
}
