//! A model of a production line powering on at once, the scenario the boot
//! policy's windows were chosen with: `devices` agents start within one
//! second against a server that serves `capacity` registrations at a time
//! (`service` each) and answers the rest at once with 503 and
//! `Retry-After`. The unit tests of the retry policy play it, and
//! `cargo bench --bench herd` prints its figures next to the measured ones.

use super::{Again, RetryPolicy, Streak};
use std::time::Duration;

/// How a refused device waits: after its `n`th consecutive refusal, a
/// refusal streak `age` old.
pub type Delay<'a> = dyn Fn(Streak, &mut fastrand::Rng) -> Duration + 'a;

/// One line played once: requests per device and the time until the last
/// registration ends.
pub fn herd(
    delay: &Delay<'_>,
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
    // Per device: consecutive refusals and when the first of them came.
    let mut streaks = vec![(0u32, Duration::ZERO); devices];
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
            let (n, since) = &mut streaks[device];
            if *n == 0 {
                *since = now;
            }
            *n += 1;
            let streak = Streak {
                n: *n,
                age: now - *since,
            };
            events.push(Reverse((now + delay(streak, &mut rng), device, false)));
        }
    }
    (requests as f64 / devices as f64, last)
}

/// The factory-line scenario: 4 at a time, 0.2 s each, `Retry-After: 2`
/// (the delay decides what to make of it). Mean requests per device and
/// mean ratio of the time until the last registration to the server-bound
/// ideal (devices × 0.2 s / 4), over eight lines.
pub fn line(devices: usize, delay: &Delay<'_>) -> (f64, f64) {
    let service = Duration::from_millis(200);
    let ideal = service * devices as u32 / 4;
    let runs: Vec<(f64, f64)> = (1..=8)
        .map(|seed| {
            let (per_device, wall) = herd(delay, devices, 4, service, seed);
            (per_device, wall.as_secs_f64() / ideal.as_secs_f64())
        })
        .collect();
    let mean = |f: fn(&(f64, f64)) -> f64| runs.iter().map(f).sum::<f64>() / runs.len() as f64;
    (mean(|r| r.0), mean(|r| r.1))
}

/// The factory-line scenario with the agent's own boot policy.
pub fn boot_line(devices: usize) -> (f64, f64) {
    let policy = RetryPolicy::boot();
    let refused = Again::Backoff(Some(Duration::from_secs(2)));
    line(devices, &|streak, rng| policy.delay(refused, streak, rng))
}
